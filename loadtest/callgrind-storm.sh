#!/usr/bin/env bash
# Instructions a resume storm costs the node that takes it over, counted by
# callgrind (repeatable on a loaded machine, unlike time). For each node binary
# given: node A (plain) and node B (under callgrind) on a fresh Redis; CLIENTS
# clients on TOPICS topics follow on A; A is killed 4 s in and the counters of B
# are zeroed at that moment (callgrind_control -z); when every client has caught
# up, B's counters are dumped. Prints instructions (Ir) in that window, and per
# resume. Needs a release build with debug info (the default profile has it).
#
#   loadtest/callgrind-storm.sh OUT_DIR NAME=NODE_BINARY [NAME=NODE_BINARY…]
#   env: CLIENTS (500), TOPICS (1), REDIS_PORT (6393), RUNS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"; shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
lt=${LOADTEST:-target/release/sluice-loadtest}
clients=${CLIENTS:-500} topics=${TOPICS:-1} runs=${RUNS:-1}
redis_port=${REDIS_PORT:-6393} redis="redis://127.0.0.1:${REDIS_PORT:-6393}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

start() { # start PORT [valgrind args…] BINARY -> pid (of the node or of valgrind)
    local port=$1; shift
    REDIS_URL="$redis" SLUICE_BIND="127.0.0.1:$port" SLUICE_NODE_ID="cg-$port" \
        SLUICE_MAX_CONNECTIONS=100000 SLUICE_MAX_CONNECTIONS_PER_IP=100000 \
        RUST_LOG=warn "$@" >>"$out/node-$port.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$pid"
}

for r in $(seq "$runs"); do
    for spec in "$@"; do
        name=${spec%%=*} bin=${spec#*=}
        redis-cli -p "$redis_port" flushall >/dev/null
        cg="$out/callgrind-$name-$r.out"
        rm -f "$cg"*
        a=$(start 18191 "$bin")
        b=$(start 18192 valgrind --tool=callgrind --callgrind-out-file="$cg" "$bin")
        $lt storm --url ws://127.0.0.1:18191/ws --url ws://127.0.0.1:18192/ws --redis "$redis" \
            --clients "$clients" --topics "$topics" --rate 20 --duration 6s --action-at 4s \
            --action-cmd "kill -9 $a; callgrind_control -z $b >/dev/null" \
            --drain 120s --json --quiet | grep '^{' | tail -1 >"$out/storm-$name-$r.json"
        callgrind_control -d "$b" >/dev/null
        sleep 1
        kill -9 "$a" "$b" 2>/dev/null || true
        wait "$b" 2>/dev/null || true
        # The dump after the zeroing: the highest-numbered part file.
        part=$(ls -v "$cg".* 2>/dev/null | tail -1)
        ir=$(grep -m1 '^summary:' "$part" | awk '{print $2}')
        back=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("reconnected", 0))' "$out/storm-$name-$r.json")
        python3 - "$name" "$r" "$ir" "$back" "$part" <<'PY'
import sys
name, run, ir, back, part = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"{name} run {run}: {ir:,} Ir in the storm window, {back} resumes, "
      f"{ir / max(back, 1):,.0f} Ir per resume ({part})")
PY
    done
done
