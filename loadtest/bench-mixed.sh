#!/usr/bin/env bash
# Mixed traffic with auth on (issue 14 part 7): `sluice-loadtest mixed` against one
# node and one Redis, RUNS times. BENCHMARKS.md, "Mixed traffic".
#
#   loadtest/bench-mixed.sh SLUICE_BINARY LOADTEST_BINARY OUT_DIR
#
# Starts its own Redis (6461) and node (18461, SLUICE_AUTH=required with a
# generated secret). Writes one JSON per run into OUT_DIR and prints a summary.
# Knobs: RUNS (3), CLIENTS (1000), TOPICS (100 market topics), RATE (5000),
# DURATION (20s), TRADER_WATCH (5: market topics each trader watches on the session
# of its alerts; 0 for the plan before issue 14's alerts work), BIN_B (a second
# sluice binary: each run then measures both, interleaved, A first).
set -euo pipefail

node_bin=$(realpath "${1:?sluice binary}")
lt=$(realpath "${2:?sluice-loadtest binary}")
out=${3:?output directory}
runs=${RUNS:-3}
clients=${CLIENTS:-1000}
topics=${TOPICS:-100}
rate=${RATE:-5000}
duration=${DURATION:-20s}
watch=${TRADER_WATCH:-5}
bins=("$node_bin")
[ -n "${BIN_B:-}" ] && bins+=("$(realpath "$BIN_B")")
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=6461
node_port=18461
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
if redis-cli -p $port ping >/dev/null 2>&1; then
    echo "bench-mixed: port $port is taken by another Redis" >&2
    exit 1
fi
redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.1; done

for k in warm $(seq 1 "$runs"); do
for b in "${!bins[@]}"; do
    name="r$k"
    [ "${#bins[@]}" -gt 1 ] && name="r$k-$([ "$b" = 0 ] && echo a || echo b)"
    redis-cli -p $port flushall >/dev/null
    REDIS_URL="redis://127.0.0.1:$port" SLUICE_BIND="127.0.0.1:$node_port" SLUICE_NODE_ID=mixed \
        SLUICE_AUTH=required SLUICE_JWT_SECRET="$secret" SLUICE_MAX_CONNECTIONS_PER_IP=100000 \
        RUST_LOG=warn "${bins[$b]}" >>"$work/node.log" 2>&1 &
    node=$!
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$node_port/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    SLUICE_JWT_SECRET="$secret" "$lt" mixed --url "ws://127.0.0.1:$node_port/ws" \
        --redis "redis://127.0.0.1:$port" --clients "$clients" --topics "$topics" \
        --rate "$rate" --duration "$duration" --trader-watch "$watch" \
        --server-pid "$node" --json --quiet \
        2>"$work/lt.log" | tail -1 | LOAD="$load" BIN="${bins[$b]}" python3 -c '
import json, os, sys
r = json.load(sys.stdin)
r["bench"] = {"loadavg_before": os.environ["LOAD"], "binary": os.environ["BIN"]}
print(json.dumps(r))' >"$out/mixed-$name.json" || { cat "$work/lt.log" >&2; exit 1; }
    kill "$node"
    wait "$node" 2>/dev/null || true
    [ "$k" = warm ] && { rm -f "$out/mixed-$name.json"; continue; }
    python3 - "$out/mixed-$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["classes"]
p = lambda k: c[k]["delta_latency_ms"]
print(f'{sys.argv[1]}: load {r["bench"]["loadavg_before"]} deliveries/s {r["deliveries_per_sec"]} '
      f'lost {r["lost"]} dup {r["duplicated"]} ooo {r["out_of_order"]} '
      f'trader_watch {r.get("trader_watch")} first_error {r.get("first_error")}')
for k in ("market", "private", "mobile_foreground", "mobile_background"):
    t = c[k]["tally"]
    print(f'  {k:<18} clients {t["clients"]:>5} p50 {p(k)["p50"]:>8} p99 {p(k)["p99"]:>8} '
          f'owed {t["owed"]} received {t["received"]} lost {t["lost"]} conflated {t["conflated"]} '
          f'latest_missing {t["latest_missing"]} bytes/min {t["bytes_per_min_per_client"]}')
a = r["alerts"]
d = r["latency_ms"]
print(f'  alerts: {a["timed"]}/{a["published"]} p50 {a["latency_ms"]["p50"]} p99 {a["latency_ms"]["p99"]} '
      f'| foreground deltas p50 {d["p50"]} p99 {d["p99"]} | goal met {r["goal_alert_p99_le_delta_p50"]}')
s = r.get("publish_acked_ms")
if s:
    print(f'  publish stage (scheduled -> acked): deltas p50 {s["deltas"]["p50"]} p99 {s["deltas"]["p99"]} '
          f'alerts p50 {s["alerts"]["p50"]} p99 {s["alerts"]["p99"]}')
n = r.get("node_stage_ms")
if n:
    print(f'  node stage (has it -> written): alerts {n["alerts"]["timed"]} p50 {n["alerts"]["p50"]} '
          f'p99 {n["alerts"]["p99"]} | deltas (1 in 8) {n["deltas"]["timed"]} p50 {n["deltas"]["p50"]} '
          f'p99 {n["deltas"]["p99"]} | alert p99 <= delta p50: {r.get("goal_node_stage_alert_p99_le_delta_p50")}')
PY
done
done
