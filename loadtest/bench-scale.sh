#!/usr/bin/env bash
# Scale-out (issue 12 part 6): `topics` with 0, 1, 2 and 4 nodes following, against
# one Redis and against a loopback 3-master Redis Cluster, interleaved, then
# 20k publishes/s (100k deliveries/s) on one node of each. BENCHMARKS.md,
# "Scale-out: topics on 1, 2 and 4 nodes, one Redis and Cluster".
#
#   loadtest/bench-scale.sh SLUICE_BINARY LOADTEST_BINARY OUT_DIR
#
# Starts its own servers: one Redis (6451, measured), a decoy Redis (6452), a
# 3-master Cluster (7451-7453, no replicas), nodes on 18451-18454. "0 nodes" puts
# the same clients on a node of the decoy, so the measured Redis (or Cluster) takes
# the same publishes with nothing reading them. Every master's INFO cpu and
# commandstats are read around the publishing window (`topics --redis-info`).
# Writes one JSON per run into OUT_DIR and prints a summary.
# Knobs: RUNS (2), CLIENTS (5000), TOPICS (1000), RATE (5000), DURATION (10s),
# HIGH_RATE (20000), NODES ("0 1 2 4"), HIGH_ONLY (1: only the 20k publishes/s runs).
set -euo pipefail

node_bin=$(realpath "${1:?sluice binary}")
lt=$(realpath "${2:?sluice-loadtest binary}")
out=${3:?output directory}
runs=${RUNS:-2}
clients=${CLIENTS:-5000}
topics=${TOPICS:-1000}
rate=${RATE:-5000}
high_rate=${HIGH_RATE:-20000}
duration=${DURATION:-10s}
node_counts=${NODES:-0 1 2 4}
mkdir -p "$out"
source "$(dirname "$0")/lib.sh"

single=6451
decoy=6452
masters=(7451 7452 7453)
cluster_url="redis-cluster://127.0.0.1:${masters[0]}?node=127.0.0.1:${masters[1]}&node=127.0.0.1:${masters[2]}"

for port in $single $decoy "${masters[@]}"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "bench-scale: port $port is taken by another Redis" >&2
        exit 1
    fi
done
start_redis $single
start_redis $decoy
for port in "${masters[@]}"; do
    start_redis "$port" --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf" \
        --cluster-node-timeout 5000
done
wait_redis $single $decoy "${masters[@]}"
redis-cli --cluster create "${masters[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$work/cluster-create.log" 2>&1
for port in "${masters[@]}"; do
    until redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok'; do sleep 0.2; done
done

start_node() { # port redis_url
    REDIS_URL="$2" SLUICE_BIND="127.0.0.1:$1" SLUICE_NODE_ID="scale$1" SLUICE_AUTH=off \
        SLUICE_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn \
        "$node_bin" >>"$work/node-$1.log" 2>&1 &
    node_pids+=($!)
    wait_ready "$1" 300 "$work/node-$1.log"
}
stop_nodes() {
    for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    node_pids=()
}
flush() { # topology
    redis-cli -p $decoy flushall >/dev/null
    if [ "$1" = single ]; then
        redis-cli -p $single flushall >/dev/null
    else
        for port in "${masters[@]}"; do redis-cli -p "$port" flushall >/dev/null; done
    fi
}

# Load the function library everywhere (a node does that at start-up; FLUSHALL
# keeps functions).
start_node 18451 "redis://127.0.0.1:$single"
start_node 18452 "$cluster_url"
start_node 18453 "redis://127.0.0.1:$decoy"
stop_nodes

# run LABEL TOPOLOGY NODES RATE PUBLISHERS [ZIPF]
run() {
    local label=$1 topo=$2 n=$3 r=$4 publishers=$5 zipf=${6:-1}
    local url info urls=() spids=()
    if [ "$topo" = single ]; then
        url="redis://127.0.0.1:$single"
        info="127.0.0.1:$single"
    else
        url=$cluster_url
        info=$(printf '127.0.0.1:%s,' "${masters[@]}")
        info=${info%,}
    fi
    flush "$topo"
    if [ "$n" -eq 0 ]; then
        start_node 18451 "redis://127.0.0.1:$decoy"
        urls+=(--url ws://127.0.0.1:18451/ws)
    else
        for i in $(seq 1 "$n"); do
            start_node $((18450 + i)) "$url"
            urls+=(--url "ws://127.0.0.1:$((18450 + i))/ws")
        done
    fi
    for p in "${node_pids[@]}"; do spids+=(--server-pid "$p"); done
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$lt" topics "${urls[@]}" --redis "$url" --redis-info "$info" --clients "$clients" \
        --topics "$topics" --rate "$r" --duration "$duration" --publishers "$publishers" \
        --calibrate 0 --zipf "$zipf" "${spids[@]}" --json --quiet 2>"$work/lt.log" | tail -1 |
        LABEL=$label TOPO=$topo NODES=$n LOAD="$load" python3 -c '
import json, os, sys
r = json.load(sys.stdin)
r["bench"] = {"label": os.environ["LABEL"], "topology": os.environ["TOPO"],
              "nodes": int(os.environ["NODES"]), "loadavg_before": os.environ["LOAD"]}
print(json.dumps(r))' >"$out/$label.json" || { cat "$work/lt.log" >&2; exit 1; }
    stop_nodes
    python3 - "$out/$label.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bench"]
m = r.get("masters", [])
# With 0 nodes nothing reads the measured Redis: the clients' "lost" is by design.
print(f'{b["label"]:<24} load {b["loadavg_before"]:<15} pubs/s {r.get("publishes_per_sec")} '
      f'cpu/pub {r.get("redis_cpu_us_per_publish_all_masters")} '
      f'cmd/pub {round(sum(x["cmd_us_per_publish"] for x in m), 2)} '
      f'shares {[x["publish_share"] for x in m]} p99 {r["latency_ms"]["p99"]} '
      f'lost {r["lost"]} dup {r["duplicated"]} owed {r["expected"]}', flush=True)
PY
}

# A discarded warm-up per topology (a fresh Redis pays for growing its memory).
run warm-single single 0 "$rate" 1
run warm-cluster cluster 0 "$rate" 1
rm -f "$out"/warm-*.json
for k in $(seq 1 "$runs"); do
    [[ "${HIGH_ONLY:-0}" == 1 ]] && break
    for n in $node_counts; do
        for topo in single cluster; do
            run "topics-$topo-n$n-r$k" "$topo" "$n" "$rate" 1
        done
    done
    # The Cluster's shares with every topic equally likely (Zipf exponent 0).
    run "uniform-cluster-n1-r$k" cluster 1 "$rate" 1 0
done
for k in $(seq 1 "$runs"); do
    for topo in single cluster; do
        run "high-$topo-n1-r$k" "$topo" 1 "$high_rate" 4
    done
done
