#!/usr/bin/env bash
# The Sluice-only part of the benchmark: many topics (Zipf), reconnect storms (a
# node killed, a node drained) and idle memory, each RUNS times, JSON results in
# OUT_DIR. Starts its own Redis (port 6391) and nodes (18081, 18082).
#
#   loadtest/bench-sluice.sh OUT_DIR [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"; runs="${2:-3}"
mkdir -p "$out"
lt=target/release/sluice-loadtest
redis_port=6391 redis="redis://127.0.0.1:6391"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A reconnect storm opens thousands of connections at once: the kernel's accept
# queue (net.core.somaxconn, 4096 by default) must hold them, as on any server
# that expects one. The node asks for 65535; the kernel caps it at this value.
if [[ "$(cat /proc/sys/net/core/somaxconn)" -lt 65535 ]]; then
    sysctl -qw net.core.somaxconn=65535 2>/dev/null || echo "bench-sluice: could not raise net.core.somaxconn; storms may see SYN retransmits" >&2
fi
echo "net.core.somaxconn=$(cat /proc/sys/net/core/somaxconn)" >"$out/sysctl.txt"

redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

node() { # node PORT -> pid
    REDIS_URL="$redis" SLUICE_BIND="127.0.0.1:$1" SLUICE_NODE_ID="bench-$1" \
        SLUICE_MAX_CONNECTIONS=1000000 SLUICE_MAX_CONNECTIONS_PER_IP=1000000 SLUICE_DRAIN_SECONDS=2 \
        RUST_LOG=warn target/release/sluice >>"$out/node-$1.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$pid"
}
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
last_json() { grep '^{' | tail -1; }

for r in $(seq "$runs"); do
    echo "== topics, run $r" >&2
    a=$(node 18081)
    $lt topics --url ws://127.0.0.1:18081/ws --redis "$redis" --clients 5000 --topics 1000 --rate 20000 \
        --duration 10s --publishers 8 --server-pid "$a" --json --quiet | last_json >"$out/topics-$r.json"
    stop "$a"

    for action in kill drain; do
        echo "== storm ($action), run $r" >&2
        a=$(node 18081); b=$(node 18082)
        $lt storm --url ws://127.0.0.1:18081/ws --url ws://127.0.0.1:18082/ws --redis "$redis" \
            --clients 5000 --rate 20 --duration 12s --action-at 4s --"$action"-pid "$a" --drain 20s \
            --server-pid "$b" --json --quiet | last_json >"$out/storm-$action-$r.json"
        stop "$a"; stop "$b"
    done

    for n in 5000 19000; do
        echo "== idle $n, run $r" >&2
        a=$(node 18081)
        $lt idle --url ws://127.0.0.1:18081/ws --clients "$n" --topics 1000 --pid "$a" --hold 5s --settle 3s \
            --json --quiet | last_json >"$out/idle-$n-$r.json"
        stop "$a"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
def med(files, key):
    vals = []
    for f in files:
        r = json.loads(f.read_text())
        for k in key.split("."):
            r = r.get(k) if isinstance(r, dict) else None
        if isinstance(r, (int, float)):
            vals.append(r)
    return (statistics.median(vals), min(vals), max(vals)) if vals else None
rows = {
    "topics": ("topics-*.json", ["publishes_per_sec", "deliveries_per_sec", "latency_ms.p99", "lost", "duplicated",
                                 "redis_cpu_us_per_publish", "redis_cpu_us_per_xadd", "cpu_percent.server"]),
    "storm-kill": ("storm-kill-*.json", ["all_resubscribed_ms", "all_caught_up_ms", "reconnect_resume_per_sec",
                                         "lost", "duplicated", "delivered", "expected"]),
    "storm-drain": ("storm-drain-*.json", ["all_resubscribed_ms", "all_caught_up_ms", "reconnect_resume_per_sec",
                                           "lost", "duplicated", "delivered", "expected"]),
    "idle-5000": ("idle-5000-*.json", ["rss_per_connection_bytes", "still_connected"]),
    "idle-19000": ("idle-19000-*.json", ["rss_per_connection_bytes", "still_connected"]),
}
summary = {}
for name, (glob, keys) in rows.items():
    files = sorted(out.glob(glob))
    summary[name] = {k: med(files, k) for k in keys}
    print(name, json.dumps(summary[name]))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PY
