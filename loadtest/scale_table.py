#!/usr/bin/env python3
"""Markdown tables from loadtest/bench-scale.sh and bench-mixed.sh results.

    python3 loadtest/scale_table.py scale loadtest/results/scale-20261201
    python3 loadtest/scale_table.py mixed loadtest/results/mixed-20261201
"""
import glob
import json
import os
import statistics
import sys


def load(d, pattern):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, pattern)))]


def spread(xs, fmt="{:.1f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    med = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def cell(runs):
    """(all-masters CPU µs/publish, command µs/publish, per-master shares)."""
    cpu = [r["redis_cpu_us_per_publish_all_masters"] for r in runs]
    cmd = [sum(m["cmd_us_per_publish"] for m in r["masters"]) for r in runs]
    return cpu, cmd


def scale(d):
    rows = {}
    for r in load(d, "topics-*.json") + load(d, "uniform-*.json") + load(d, "high-*.json"):
        b = r["bench"]
        kind = b["label"].split("-")[0]
        rows.setdefault((kind, b["topology"], b["nodes"]), []).append(r)
    print("| nodes following | one Redis: CPU µs/publish | one Redis: cmd µs/publish | "
          "Cluster (3 masters summed): CPU µs/publish | Cluster: cmd µs/publish | loss, dup |")
    print("|---|---|---|---|---|---|")
    base = {}
    for n in sorted({k[2] for k in rows if k[0] == "topics"}):
        cols = []
        lossdup = []
        for topo in ("single", "cluster"):
            runs = rows.get(("topics", topo, n), [])
            cpu, cmd = cell(runs)
            if n == 0:
                base[topo] = (cpu, cmd)
            cols += [spread(cpu), spread(cmd)]
            if n > 0:
                lossdup.append(f'{sum(r["lost"] for r in runs)}, {sum(r["duplicated"] for r in runs)}')
        print(f"| {n} | " + " | ".join(cols) + f" | {' / '.join(lossdup) if lossdup else 'n/a (nothing reads)'} |")
    print()
    print("Ratios against 0 nodes, run by run (same round k):")
    for topo in ("single", "cluster"):
        for n in sorted({k[2] for k in rows if k[0] == "topics" and k[2] > 0}):
            zero = {r["bench"]["label"].rsplit("-", 1)[1]: r for r in rows.get(("topics", topo, 0), [])}
            ratios_cpu, ratios_cmd = [], []
            for r in rows.get(("topics", topo, n), []):
                z = zero.get(r["bench"]["label"].rsplit("-", 1)[1])
                if not z:
                    continue
                ratios_cpu.append(r["redis_cpu_us_per_publish_all_masters"] / z["redis_cpu_us_per_publish_all_masters"])
                ratios_cmd.append(sum(m["cmd_us_per_publish"] for m in r["masters"]) /
                                  sum(m["cmd_us_per_publish"] for m in z["masters"]))
            print(f"- {topo}, {n} node(s): CPU {spread(ratios_cpu, '{:.2f}')}×, cmd {spread(ratios_cmd, '{:.2f}')}×")
    print()
    print("Growth from 1 to 4 nodes, per added node, run by run: (x(4) - x(1)) / 3 µs:")
    for topo in ("single", "cluster"):
        one = {r["bench"]["label"].rsplit("-", 1)[1]: r for r in rows.get(("topics", topo, 1), [])}
        g_cpu, g_cmd = [], []
        for r in rows.get(("topics", topo, 4), []):
            o = one.get(r["bench"]["label"].rsplit("-", 1)[1])
            if not o:
                continue
            g_cpu.append((r["redis_cpu_us_per_publish_all_masters"] - o["redis_cpu_us_per_publish_all_masters"]) / 3)
            g_cmd.append((sum(m["cmd_us_per_publish"] for m in r["masters"]) -
                          sum(m["cmd_us_per_publish"] for m in o["masters"])) / 3)
        print(f"- {topo}: CPU {spread(g_cpu, '{:+.2f}')} µs, cmd {spread(g_cmd, '{:+.2f}')} µs")
    print()
    print("| Cluster run | master | share of publishes | CPU µs/publish | cmd µs/publish |")
    print("|---|---|---|---|---|")
    for key in sorted(k for k in rows if k[1] == "cluster"):
        for r in rows[key]:
            for m in r["masters"]:
                print(f'| {r["bench"]["label"]} | {m["master"]} | {m["publish_share"]:.3f} | '
                      f'{m["cpu_us_per_publish"]} | {m["cmd_us_per_publish"]} |')
    print()
    print("| high rate run | load before | publishes/s | deliveries/s (owed 100k) | p50 ms | p99 ms | "
          "max ms | lost | dup | CPU % node / Redis (all masters) / loadtest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(k for k in rows if k[0] == "high"):
        for r in rows[key]:
            l = r["latency_ms"]
            cpu = r["cpu_percent"]
            redis_pct = sum(m["cpu_us_per_publish"] for m in r["masters"]) * r["publishes_per_sec"] / 1e4
            print(f'| {r["bench"]["label"]} | {r["bench"]["loadavg_before"]} | {r["publishes_per_sec"]} | '
                  f'{r["deliveries_per_sec"]} | {l["p50"]} | {l["p99"]} | {l["max"]} | {r["lost"]} | '
                  f'{r["duplicated"]} | {cpu.get("server")} / {redis_pct:.0f} / {cpu["loadtest"]} |')
    print()
    print("Load average before each run:", ", ".join(
        f'{r["bench"]["label"]} {r["bench"]["loadavg_before"].split()[0]}' for v in rows.values() for r in v))


def mixed(d):
    runs = load(d, "mixed-r*.json")
    classes = ("market", "private", "mobile_foreground", "mobile_background")
    print("| class | clients | p50 ms | p99 ms | owed | received | lost | conflated | "
          "latest state missing | bytes/min per client |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in classes:
        t = [r["classes"][c]["tally"] for r in runs]
        lat = [r["classes"][c]["delta_latency_ms"] for r in runs]
        print(f"| {c} | {t[0]['clients']} | {spread([x['p50'] for x in lat], '{:.2f}')} | "
              f"{spread([x['p99'] for x in lat], '{:.2f}')} | {spread([x['owed'] for x in t], '{:.0f}')} | "
              f"{spread([x['received'] for x in t], '{:.0f}')} | {sum(x['lost'] for x in t)} | "
              f"{spread([x['conflated'] for x in t], '{:.0f}')} | {sum(x['latest_missing'] for x in t)} | "
              f"{spread([x['bytes_per_min_per_client'] for x in t], '{:.0f}')} |")
    a = [r["alerts"] for r in runs]
    print()
    print(f"- deliveries/s: {spread([r['deliveries_per_sec'] for r in runs], '{:.0f}')}; "
          f"duplicated {sum(r['duplicated'] for r in runs)}, out of order {sum(r['out_of_order'] for r in runs)}, "
          f"misrouted {sum(r['misrouted'] for r in runs)}, connect errors {sum(r['connect_errors'] for r in runs)}")
    print(f"- alerts: {sum(x['timed'] for x in a)} of {sum(x['published'] for x in a)} received; "
          f"p50 {spread([x['latency_ms']['p50'] for x in a], '{:.2f}')} ms, "
          f"p99 {spread([x['latency_ms']['p99'] for x in a], '{:.2f}')} ms")
    print(f"- foreground deltas p50: {spread([r['foreground_delta_p50_ms'] for r in runs], '{:.2f}')} ms; "
          f"goal (alert p99 ≤ deltas p50) met in {sum(bool(r['goal_alert_p99_le_delta_p50']) for r in runs)} "
          f"of {len(runs)} runs")
    bg = [r["bytes_per_min_per_client"]["mobile_background"] for r in runs]
    fg = [r["bytes_per_min_per_client"]["mobile_foreground"] for r in runs]
    print(f"- mobile bytes/min: background {spread(bg, '{:.0f}')}, foreground {spread(fg, '{:.0f}')}, "
          f"ratio {spread([b / f for b, f in zip(bg, fg) if f], '{:.2f}')}")
    print(f"- CPU % node / loadtest: {spread([r['cpu_percent'].get('server') for r in runs])} / "
          f"{spread([r['cpu_percent']['loadtest'] for r in runs])}; load before: "
          + ", ".join(r["bench"]["loadavg_before"] for r in runs))


if __name__ == "__main__":
    {"scale": scale, "mixed": mixed}[sys.argv[1]](sys.argv[2])
