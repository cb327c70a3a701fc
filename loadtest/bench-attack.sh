#!/usr/bin/env bash
# "Under attack" (BENCHMARKS.md): honest fan-out clients measured on a quiet node
# and on the same node while `sluice-loadtest attack` runs against it (expansion
# bombs, forbidden-topic frames, slowloris sockets, subscribers that never read).
# Quiet and attacked runs alternate, RUNS times; the node's RSS is sampled every
# 0.5 s. Prints one JSON line per run and a table of medians.
#
#   loadtest/bench-attack.sh                 (RUNS=3 CLIENTS=1000 RATE=50 SECONDS=15)
# Needs redis-server on PATH. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-3}" clients="${CLIENTS:-1000}" rate="${RATE:-50}" seconds="${SECONDS_PER_RUN:-15}"
redis_port="${BENCH_REDIS_PORT:-6421}" node_port="${BENCH_NODE_PORT:-18290}"
admin="bench-attack-admin-token-0123456789abcdef"
source loadtest/lib.sh

cargo build --release -q -p sluice-node -p sluice-loadtest

start_redis "$redis_port"
REDIS_URL="redis://127.0.0.1:$redis_port" SLUICE_BIND="127.0.0.1:$node_port" SLUICE_NODE_ID=bench \
    SLUICE_ADMIN_TOKEN="$admin" SLUICE_HANDSHAKE_TIMEOUT=5 SLUICE_CONNECTION_TIMEOUT=10 SLUICE_HEARTBEAT_INTERVAL=2 \
    SLUICE_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=error target/release/sluice >"$work/node.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
wait_ready "$node_port" 100 "$work/node.log"

# Samples the node's RSS (kB) every 0.5 s into $1 until killed.
sample_rss() {
    while kill -0 "$node_pid" 2>/dev/null; do
        awk '/VmRSS/ {print $2}' "/proc/$node_pid/status" >>"$1"
        sleep 0.5
    done
}

fanout() {
    target/release/sluice-loadtest fanout --url "ws://127.0.0.1:$node_port/ws" \
        --redis "redis://127.0.0.1:$redis_port" --clients "$clients" --rate "$rate" \
        --duration "${seconds}s" --server-pid "$node_pid" --json --quiet | tail -1
}

for run in $(seq "$runs"); do
    for mode in quiet attacked; do
        rss="$work/rss-$run-$mode"
        : >"$rss"
        sample_rss "$rss" &
        sampler=$!
        if [[ $mode == attacked ]]; then
            target/release/sluice-loadtest attack --url "ws://127.0.0.1:$node_port/ws" \
                --duration "$((seconds + 8))s" --admin-token "$admin" >"$work/attack-$run.json" &
            attacker=$!
            sleep 3
        fi
        result="$(fanout)"
        if [[ $mode == attacked ]]; then wait "$attacker"; fi
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        python3 - "$result" "$rss" "$mode" "$run" "$work/attack-$run.json" <<'PY'
import json, os, sys
r = json.loads(sys.argv[1])
rss = [int(x) for x in open(sys.argv[2]).read().split()]
out = {"run": int(sys.argv[4]), "mode": sys.argv[3], "delivered": r["delivered"],
       "expected": r["expected"], "lost": r["lost"], "duplicated": r["duplicated"],
       "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
       "rss_max_mb": round(max(rss) / 1024, 1) if rss else None}
if sys.argv[3] == "attacked" and os.path.exists(sys.argv[5]):
    out["attack"] = json.loads(open(sys.argv[5]).read().splitlines()[-1])
print(json.dumps(out))
PY
    done
done | tee "$work/runs.jsonl"

python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(mode, k):
    return statistics.median(r[k] for r in rows if r["mode"] == mode)
print("\n| | quiet (median) | attacked (median) | ratio |\n|---|---|---|---|")
for k in ["p50_ms", "p99_ms", "rss_max_mb"]:
    q, a = med("quiet", k), med("attacked", k)
    print(f"| {k} | {q} | {a} | {a / q:.2f} |")
for k in ["lost", "duplicated"]:
    print(f"| {k} (sum) | {sum(r[k] for r in rows if r['mode']=='quiet')} | "
          f"{sum(r[k] for r in rows if r['mode']=='attacked')} | |")
PY
