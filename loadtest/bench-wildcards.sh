#!/usr/bin/env bash
# "Wildcards" (BENCHMARKS.md): fan-out at a fixed load on a node that holds 0, 100
# or 10,000 wildcard subscriptions on extra idle connections (none matching the
# measured topic), and one variant where 10 of the 10,000 match it (`bench.>` on 10
# of the holding connections, which then receive every message too).
# The variants alternate within each run, RUNS times, on one node per variant
# (started fresh, so nothing carries over). Prints one JSON line per measurement.
#
#   loadtest/bench-wildcards.sh          (RUNS=2 CLIENTS=1000 RATE=200 SECONDS_PER_RUN=10)
#   MODE=capacity loadtest/bench-wildcards.sh
#       the issue's measure instead: the capacity ramp (`sluice-loadtest latency`, the
#       highest rate whose p99 stays within 100 ms) with 0 and 10,000 wildcards held
# Needs redis-server on PATH and release builds of sluice and sluice-loadtest.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-2}" clients="${CLIENTS:-1000}" rate="${RATE:-200}" seconds="${SECONDS_PER_RUN:-10}"
redis_port="${BENCH_REDIS_PORT:-6431}" node_port="${BENCH_NODE_PORT:-18310}"
admin="bench-wildcards-admin-token-0123456789abcdef"
source loadtest/lib.sh

start_redis "$redis_port"
sleep 0.5

start_node() {
    REDIS_URL="redis://127.0.0.1:$redis_port" SLUICE_BIND="127.0.0.1:$node_port" SLUICE_NODE_ID=bench-wc \
        SLUICE_ADMIN_TOKEN="$admin" SLUICE_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=error \
        target/release/sluice >"$work/node.log" 2>&1 &
    node_pid=$!
    wait_ready "$node_port" 100 "$work/node.log"
}

mode="${MODE:-fixed}" variants="0 100 10000 10000m" hold_s=$((seconds + 15))
if [[ $mode == capacity ]]; then variants="0 10000" hold_s=600; fi

for run in $(seq "$runs"); do
    for variant in $variants; do
        patterns="${variant%m}" matching=0
        [[ $variant == *m ]] && matching=10
        start_node
        holder="" n=0
        if [[ $patterns -gt 0 ]]; then
            target/release/sluice-loadtest patterns --url "ws://127.0.0.1:$node_port/ws" \
                --connections 100 --patterns "$patterns" --matching "$matching" \
                --hold "${hold_s}s" >"$work/holder.json" &
            holder=$!
            # Every wildcard acked before the fan-out starts.
            for _ in $(seq 200); do
                n=$(curl -fsS "http://127.0.0.1:$node_port/metrics" | awk '/^sluice_subscribes_total/ {print $2}')
                [[ -n $n && ${n%.*} -ge $patterns ]] && break
                sleep 0.1
            done
        fi
        if [[ $mode == capacity ]]; then
            report=$(target/release/sluice-loadtest latency --url "ws://127.0.0.1:$node_port/ws" \
                --redis "redis://127.0.0.1:$redis_port" --clients "$clients" --payload 64 \
                --duration 5s --step-duration 3s --p99-bound-ms 100 --server-pid "$node_pid" \
                --json --quiet | tail -1)
            # The holders have no report to give here: end them now.
            [[ -n $holder ]] && kill "$holder" 2>/dev/null
        else
            report=$(target/release/sluice-loadtest fanout --url "ws://127.0.0.1:$node_port/ws" \
                --redis "redis://127.0.0.1:$redis_port" --clients "$clients" --rate "$rate" \
                --duration "${seconds}s" --server-pid "$node_pid" --json --quiet | tail -1)
        fi
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$node_pid/status")
        held=$(curl -fsS "http://127.0.0.1:$node_port/metrics" | awk '/^sluice_subscribes_total/ {print $2}')
        # The holders' connections end with the hold; their report says what the
        # matching wildcards received.
        holder_report="null"
        if [[ -n $holder ]]; then
            wait "$holder" 2>/dev/null || true
            holder_report=$(tail -1 "$work/holder.json" 2>/dev/null || echo null)
        fi
        echo "{\"run\":$run,\"patterns\":$patterns,\"matching\":$matching,\"subscribes_before_fanout\":${n:-0},\"subscribes_after\":$held,\"node_rss_kb\":$rss,\"holder\":${holder_report:-null},\"fanout\":$report}"
        kill "$node_pid"
        wait "$node_pid" 2>/dev/null || true
        redis-cli -p "$redis_port" FLUSHALL >/dev/null
    done
done
