#!/usr/bin/env bash
# Redis CPU per publish with 0, 1, 2 and 3 nodes following the published topics,
# for one build of the node: the live path's cost per node (BENCHMARKS.md, "Live path").
#
#   loadtest/bench-live.sh SLUICE_BINARY LOADTEST_BINARY [LABEL]
#
# Starts its own Redis servers (ports 6391: measured, 6392: a decoy) and nodes
# (18081..18083). "0 nodes" runs the same clients on a node of the decoy Redis, so
# the measured Redis takes exactly the same publishes with nothing reading them.
# Prints one line per node count: LABEL nodes=N redis_cpu_us_per_publish=X (INFO
# cpu) cmd_us_per_publish=Y (INFO commandstats).
# Knobs (environment): CLIENTS (2000), TOPICS (1000), RATE (5000), DURATION (10s).
set -euo pipefail

node_bin=${1:?sluice binary}
lt=${2:?sluice-loadtest binary}
label=${3:-run}
clients=${CLIENTS:-2000}
topics=${TOPICS:-1000}
rate=${RATE:-5000}
duration=${DURATION:-10s}
source "$(dirname "$0")/lib.sh"

# A previous run's servers may still be exiting.
wait_ports_free 6391 6392
start_redis 6391
start_redis 6392
wait_redis 6391 6392

start_node() { # port redis_port
    REDIS_URL="redis://127.0.0.1:$2" SLUICE_BIND="127.0.0.1:$1" SLUICE_NODE_ID="n$1" SLUICE_AUTH=off \
        "$node_bin" >"$work/node-$1.log" 2>&1 &
    node_pids+=($!)
    wait_ready "$1" 600 "$work/node-$1.log"
}

# Load this build's function library into the measured Redis (a node does that at
# start-up; FLUSHALL keeps functions).
start_node 18081 6391
for p in "${node_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done

# "warm" is a discarded first run at 0: a fresh Redis pays for growing its memory
# (page faults) on its first streams, which inflated the first figure by 40 %.
for n in warm 0 1 2 3; do
    warm=$n
    [ "$n" = warm ] && n=0
    redis-cli -p 6391 flushall >/dev/null
    redis-cli -p 6392 flushall >/dev/null
    node_pids=()
    urls=()
    if [ "$n" -eq 0 ]; then
        start_node 18081 6392
        urls+=(--url ws://127.0.0.1:18081/ws)
    else
        for i in $(seq 1 "$n"); do
            start_node $((18080 + i)) 6391
            urls+=(--url "ws://127.0.0.1:$((18080 + i))/ws")
        done
    fi
    redis-cli -p 6391 config resetstat >/dev/null
    out=$("$lt" topics "${urls[@]}" --redis redis://127.0.0.1:6391 --clients "$clients" \
        --topics "$topics" --rate "$rate" --duration "$duration" --publishers 1 --calibrate 0 \
        --json --quiet 2>"$work/lt-$n.log" | tail -1)
    [ -n "${KEEP:-}" ] && { echo "$out"; cat "$work/lt-$n.log"; }
    cpu=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["redis_cpu_us_per_publish"])')
    pubs=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["publishes_per_sec"])')
    # Redis time inside commands per publish (INFO commandstats, less noisy than
    # INFO cpu but blind to socket writes): FCALL (the publish and its
    # PUBLISH/SPUBLISH) plus the reads nodes make (XREAD, FCALL_RO); see lib.sh.
    cmd=$(cmd_us_per_publish 6391 "$out")
    [ "$warm" = warm ] ||
    echo "$label nodes=$n redis_cpu_us_per_publish=$cpu cmd_us_per_publish=$cmd publishes_per_sec=$pubs"
    for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
