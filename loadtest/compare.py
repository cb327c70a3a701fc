#!/usr/bin/env python3
"""Runs one scenario against Sluice, the raw baseline and every peer, in one go, on
this machine, and prints a table of ratios.

    python3 loadtest/compare.py fanout --clients 1000 --rate 100 --duration 10s
    python3 loadtest/compare.py latency --clients 1000 --systems sluice,nchan --runs 3
    python3 loadtest/compare.py fanout --systems sluice,baseline -- --payload 256

Everything after the scenario that this script does not know goes to
`sluice-loadtest <scenario>` unchanged. For each system, each run: start it (and
stop it afterwards), run the load generator with --json, keep the JSON. Figures
are medians over --runs, with min..max as the spread. Results go to --out
(default loadtest/results/<UTC time>/): one JSON per run, summary.json, summary.md.

A Redis is started on --redis-port (loopback, no persistence) unless --redis is
given. Binaries are built in release mode unless --no-build.
"""
import argparse, json, os, signal, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ["nchan", "socketio", "socketioxide", "fastapi"]
ALL = ["sluice", "baseline"] + PEERS
PORTS = {"sluice": 18080, "baseline": 19100, "nchan": 18101, "socketio": 18102,
         "socketioxide": 18103, "fastapi": 18104}
RUN_DIR = Path(os.environ.get("PEER_RUN_DIR", "/tmp/sluice-peers"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_port(port, timeout=30.0):
    import socket
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Running:
    """A started system: how to stop it and which pids to measure."""

    def __init__(self, name, pids, stop):
        self.name, self.pids, self.stop = name, pids, stop


def start_system(name, redis_url, workers, env_extra):
    port = PORTS[name]
    if name == "sluice":
        env = dict(os.environ, REDIS_URL=redis_url, SLUICE_BIND=f"127.0.0.1:{port}",
                   SLUICE_NODE_ID="bench", SLUICE_MAX_CONNECTIONS="1000000",
                   SLUICE_MAX_CONNECTIONS_PER_IP="1000000", RUST_LOG="warn", **env_extra)
        p = subprocess.Popen([str(ROOT / "target/release/sluice")], env=env,
                             stdout=subprocess.DEVNULL, stderr=open("/tmp/sluice-bench-node.log", "w"))
        wait_port(port)
        for _ in range(100):  # ready = Redis connected and the library loaded
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        return Running(name, [p.pid], lambda: (p.send_signal(signal.SIGKILL), p.wait()))
    if name == "baseline":
        p = subprocess.Popen([str(ROOT / "target/release/sluice-loadtest"), "baseline-server",
                              "--bind", f"127.0.0.1:{port}", "--threads", str(workers),
                              # spec (default): the envelope Sluice sends; short: the one
                              # without ts and meta, as measured before 2026-12-02.
                              "--envelope", os.environ.get("BASELINE_ENVELOPE", "spec")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return Running(name, [p.pid], lambda: (p.kill(), p.wait()))
    peer = ROOT / "loadtest/peers/peer.sh"
    subprocess.run([str(peer), "start", name, "--port", str(port), "--redis", redis_url,
                    "--workers", str(workers)], check=True, stdout=sys.stderr)
    pids = []
    # peer.sh writes the launched process's pid (its workers are its children).
    for f in [RUN_DIR / name / "pid"]:
        try:
            pids.append(int(f.read_text().split()[0]))
        except (ValueError, IndexError):
            pass
    return Running(name, pids, lambda: subprocess.run([str(peer), "stop", name],
                                                      stdout=sys.stderr, stderr=sys.stderr))


def url_for(name):
    port = PORTS[name]
    return f"ws://127.0.0.1:{port}/ws" if name == "sluice" else f"ws://127.0.0.1:{port}"


def run_once(scenario, name, redis_url, running, passthrough):
    cmd = [str(ROOT / "target/release/sluice-loadtest"), scenario, "--system", name,
           "--url", url_for(name), "--redis", redis_url, "--json"]
    for pid in running.pids:
        cmd += ["--server-pid", str(pid)]
    cmd += passthrough
    log("$", " ".join(cmd))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [l for l in out.stdout.splitlines() if l.strip()]
    if out.returncode != 0 or not lines:
        return {"system": name, "scenario": scenario, "error": f"exit {out.returncode}"}
    return json.loads(lines[-1])


def get(r, path):
    for k in path.split("."):
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


METRICS = {
    "fanout": [("deliveries_per_sec", "deliveries/s", True), ("latency_ms.p50", "p50 ms", False),
               ("latency_ms.p99", "p99 ms", False), ("latency_ms.p999", "p99.9 ms", False),
               ("lost", "lost", False), ("duplicated", "dup", False), ("cpu_percent.server", "server CPU %", False)],
    "latency": [("max_deliveries_per_sec", "max deliveries/s", True), ("offered_rate", "measured at msg/s", True),
                ("latency_ms.p50", "p50 ms", False), ("latency_ms.p99", "p99 ms", False),
                ("latency_ms.p999", "p99.9 ms", False), ("lost", "lost", False)],
    "topics": [("publishes_per_sec", "publishes/s", True), ("deliveries_per_sec", "deliveries/s", True),
               ("latency_ms.p99", "p99 ms", False), ("lost", "lost", False),
               ("redis_cpu_us_per_publish", "Redis µs/publish", False), ("cpu_percent.server", "server CPU %", False)],
}


def summarise(scenario, results):
    """{system: {metric: (median, min, max)}}"""
    out = {}
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        row = {"runs": len(runs), "failed": len(runs) - len(ok)}
        for path, _, _ in METRICS.get(scenario, METRICS["fanout"]):
            vals = [v for v in (get(r, path) for r in ok) if isinstance(v, (int, float))]
            if vals:
                row[path] = (statistics.median(vals), min(vals), max(vals))
        out[name] = row
    return out


def table(scenario, summary):
    metrics = METRICS.get(scenario, METRICS["fanout"])
    head = ["system"] + [m[1] for m in metrics] + ["Sluice ÷ system (" + metrics[0][1] + ")"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = get(summary.get("sluice", {}), metrics[0][0])
    for name, row in summary.items():
        cells = [name + (f" ({row['failed']} failed)" if row["failed"] else "")]
        for path, _, _ in metrics:
            v = row.get(path)
            if v is None:
                cells.append("–")
            else:
                med, lo, hi = v
                fmt = (lambda x: f"{x:,.0f}") if abs(med) >= 100 else (lambda x: f"{x:.3g}")
                cells.append(fmt(med) + (f" ({fmt(lo)}–{fmt(hi)})" if hi != lo else ""))
        base = row.get(metrics[0][0])
        if ref and base and base[0]:
            cells.append(f"{ref[0] / base[0]:.2f}×")
        else:
            cells.append("–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["fanout", "topics", "latency"])
    ap.add_argument("--systems", default=",".join(ALL))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="worker processes/threads per system")
    ap.add_argument("--redis", help="an existing Redis URL (default: start one)")
    ap.add_argument("--redis-port", type=int, default=6390)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--node-env", action="append", default=[], help="KEY=VALUE for the Sluice node")
    args, passthrough = ap.parse_known_args()
    passthrough = [a for a in passthrough if a != "--"]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {ALL}")
    out_dir = Path(args.out or ROOT / "loadtest/results" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice-node", "-p", "sluice-loadtest"],
                       cwd=ROOT, check=True, stdout=sys.stderr)
    redis_proc = None
    redis_url = args.redis
    if not redis_url:
        redis_url = f"redis://127.0.0.1:{args.redis_port}"
        redis_proc = subprocess.Popen(["redis-server", "--port", str(args.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(args.redis_port)
    node_env = dict(kv.split("=", 1) for kv in args.node_env)
    results = {s: [] for s in systems}
    try:
        for run in range(args.runs):
            for name in systems:
                log(f"== {args.scenario} / {name} / run {run + 1} of {args.runs}")
                try:
                    running = start_system(name, redis_url, args.workers, node_env)
                except Exception as e:  # a peer that cannot start is reported, not fatal
                    log(f"{name}: could not start: {e}")
                    results[name].append({"system": name, "error": f"start: {e}"})
                    continue
                try:
                    time.sleep(1)
                    r = run_once(args.scenario, name, redis_url, running, passthrough)
                finally:
                    running.stop()
                    time.sleep(1)
                results[name].append(r)
                (out_dir / f"{args.scenario}-{name}-{run + 1}.json").write_text(json.dumps(r, indent=1))
    finally:
        if redis_proc:
            redis_proc.terminate()
            redis_proc.wait()
    summary = summarise(args.scenario, results)
    md = table(args.scenario, summary)
    (out_dir / "summary.json").write_text(json.dumps({"scenario": args.scenario, "args": passthrough,
                                                      "summary": summary}, indent=1))
    (out_dir / "summary.md").write_text(md + "\n")
    print(md)
    print(f"\nresults: {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
