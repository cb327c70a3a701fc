#!/usr/bin/env python3
"""Draws the latency-versus-load plot from the JSON results of `latency` runs
(each holds its ramp as "points"): p50 and p99 against deliveries per second, one
line per system, log-log. Needs matplotlib (pip install matplotlib).

    python3 loadtest/plot.py loadtest/results/<run>/latency-*.json -o docs/latency-vs-load.png
"""
import argparse, json, sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--output", default="latency-vs-load.png")
    ap.add_argument("--title", default="Latency vs load: one topic, 1000 subscribers, loopback, 2 cores")
    args = ap.parse_args()
    by_system = defaultdict(list)
    for f in args.files:
        r = json.load(open(f))
        if "points" not in r:
            print(f"{f}: no ramp points, skipped", file=sys.stderr)
            continue
        by_system[r["system"]].extend(r["points"])
    if not by_system:
        sys.exit("no latency results with points")
    fig, (ax50, ax99) = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    for system, pts in sorted(by_system.items()):
        # Several runs: keep, per offered rate, the median point.
        per_rate = defaultdict(list)
        for p in pts:
            per_rate[p["offered_rate"]].append(p)
        rows = []
        for rate in sorted(per_rate):
            ps = sorted(per_rate[rate], key=lambda p: p["p99_ms"])
            rows.append(ps[len(ps) // 2])
        x = [max(p["deliveries_per_sec"], 1) for p in rows]
        for ax, key in ((ax50, "p50_ms"), (ax99, "p99_ms")):
            ax.plot(x, [max(p[key], 0.001) for p in rows], marker="o", label=system)
            bad = [(xi, p[key]) for xi, p in zip(x, rows) if not p["sustained"]]
            if bad:
                ax.scatter([b[0] for b in bad], [max(b[1], 0.001) for b in bad], marker="x", color="black", zorder=5)
    for ax, name in ((ax50, "p50"), (ax99, "p99")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("deliveries per second (measured)")
        ax.set_ylabel(f"{name} latency, ms (from scheduled send)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(args.title + "\n× = step not sustained (lost, fell behind, or p99 over the bound)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(args.output)


if __name__ == "__main__":
    main()
