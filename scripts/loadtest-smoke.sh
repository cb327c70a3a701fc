#!/usr/bin/env bash
# A short fan-out run of sluice-loadtest against a real node and Redis: 200
# clients, 50 publishes/s for 3 s. Fails unless every one of the 30000 deliveries
# owed arrived exactly once, in order, with no connect error. Then a short `mixed`
# run (auth on, a second node on port SMOKE_NODE_PORT+1): every class subscribed,
# nothing lost or repeated, alerts timed, background sessions got their latest
# state. Run by .ci/run.
#
#   scripts/loadtest-smoke.sh            (builds the release binaries first)
# Needs redis-server on PATH. Ports: SMOKE_REDIS_PORT (6411), SMOKE_NODE_PORT (18190).
set -euo pipefail
cd "$(dirname "$0")/.."

redis_port="${SMOKE_REDIS_PORT:-6411}"
node_port="${SMOKE_NODE_PORT:-18190}"
clients=200 rate=50 seconds=3
source loadtest/lib.sh

cargo build --release -q -p sluice-node -p sluice-loadtest

start_redis "$redis_port"
REDIS_URL="redis://127.0.0.1:$redis_port" SLUICE_BIND="127.0.0.1:$node_port" SLUICE_NODE_ID=smoke \
    RUST_LOG=warn target/release/sluice >"$work/node.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")

wait_ready "$node_port" 100 "$work/node.log"

target/release/sluice-loadtest fanout --url "ws://127.0.0.1:$node_port/ws" \
    --redis "redis://127.0.0.1:$redis_port" --clients "$clients" --rate "$rate" \
    --duration "${seconds}s" --server-pid "$node_pid" --json --quiet >"$work/out.txt"

python3 - "$work/out.txt" "$clients" "$rate" "$seconds" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
r = json.loads(lines[-1])
clients, rate, seconds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
owed = clients * rate * seconds
checks = {
    "scenario is fanout": r["scenario"] == "fanout",
    f"published {rate * seconds}": r["published"] == rate * seconds and r["publish_errors"] == 0,
    f"expected {owed}": r["expected"] == owed,
    "delivered all": r["delivered"] == owed,
    "lost 0": r["lost"] == 0,
    "duplicated 0": r["duplicated"] == 0,
    "out of order 0": r["out_of_order"] == 0,
    "connect errors 0": r["connect_errors"] == 0,
    "latency measured": 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"],
}
for name, ok in checks.items():
    print(f"loadtest-smoke: {'ok  ' if ok else 'FAIL'} {name}")
print("loadtest-smoke:", json.dumps({k: r[k] for k in ("delivered", "lost", "duplicated", "deliveries_per_sec", "latency_ms")}))
sys.exit(0 if all(checks.values()) else 1)
PY

# --- mixed traffic with auth on (issue 14 part 7) ---
auth_port=$((node_port + 1))
secret="loadtest-smoke-secret-0123456789abcdef"
REDIS_URL="redis://127.0.0.1:$redis_port" SLUICE_BIND="127.0.0.1:$auth_port" SLUICE_NODE_ID=smoke-auth \
    SLUICE_AUTH=required SLUICE_JWT_SECRET="$secret" RUST_LOG=warn target/release/sluice \
    >"$work/node-auth.log" 2>&1 &
pids+=($!)
wait_ready "$auth_port" 100 "$work/node-auth.log"
SLUICE_JWT_SECRET="$secret" target/release/sluice-loadtest mixed \
    --url "ws://127.0.0.1:$auth_port/ws" --redis "redis://127.0.0.1:$redis_port" \
    --clients 100 --topics 10 --rate 200 --duration 2s --json --quiet >"$work/mixed.txt"

python3 - "$work/mixed.txt" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
r = json.loads(lines[-1])
cl = r["classes"]
checks = {
    "scenario is mixed": r["scenario"] == "mixed",
    "published 400": r["published"] == 400 and r["publish_errors"] == 0,
    "connect errors 0": r["connect_errors"] == 0,
    "lost 0 (latest state of conflated topics included)": r["lost"] == 0,
    "duplicated 0": r["duplicated"] == 0,
    "out of order 0": r["out_of_order"] == 0,
    "misrouted 0": r["misrouted"] == 0,
    "clients per class 50/30/18/2": [cl[c]["tally"]["clients"] for c in
        ("market", "private", "mobile_background", "mobile_foreground")] == [50, 30, 18, 2],
    "market and private delivered": cl["market"]["tally"]["received"] > 0 and cl["private"]["tally"]["received"] > 0,
    "alerts timed": r["alerts"]["timed"] == r["alerts"]["published"] > 0,
}
for name, ok in checks.items():
    print(f"loadtest-smoke: {'ok  ' if ok else 'FAIL'} mixed: {name}")
print("loadtest-smoke: mixed", json.dumps({k: r[k] for k in ("delivered", "lost", "duplicated", "alerts", "bytes_per_min_per_client")}))
sys.exit(0 if all(checks.values()) else 1)
PY
