#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/../../.."  # the repository root
ulimit -n 65536
OUT=./loadtest/results/framewriter-20261201/idle
mkdir -p $OUT
for run in 1 2; do
  for v in before after; do
    SLUICE_BIND=127.0.0.1:18280 SLUICE_MAX_CONNECTIONS=100000 SLUICE_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn \
      /tmp/fw-bin/sluice-$v > /dev/null 2>/tmp/fw-idle-node.log &
    pid=$!
    for i in $(seq 50); do curl -sf http://127.0.0.1:18280/ready >/dev/null && break; sleep 0.2; done
    echo "== idle $v run $run load $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 ./scripts/measure/idle_memory.py --pid $pid --url ws://127.0.0.1:18280/ws \
      --connections 5000 2>&1 | tee $OUT/idle-$v-$run.txt | tail -4
    kill $pid; wait $pid 2>/dev/null
  done
done
