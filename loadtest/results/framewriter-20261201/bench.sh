#!/usr/bin/env bash
# Before/after/baseline, interleaved, release binaries in /tmp/fw-bin.
set -u
cd "$(dirname "$0")/../../.."  # the repository root
OUT=loadtest/results/framewriter-20261201
mkdir -p $OUT
use() { cp --remove-destination /tmp/fw-bin/sluice-$1 target/release/sluice; }
for rate in 200 20; do
  for run in 1 2; do
    for v in before after; do
      use $v
      echo "== fanout rate $rate run $run $v load $(cut -d' ' -f1-3 /proc/loadavg)"
      python3 loadtest/compare.py fanout --no-build --runs 1 --systems sluice,baseline \
        --clients 1000 --payload 64 --rate $rate --duration 10s --out $OUT/fanout-$rate-$v-$run 2>/dev/null | sed -n '3,4p'
    done
  done
done
for run in 1 2; do
  for v in before after; do
    use $v
    systems=sluice; [ $v = after ] && systems=sluice,baseline
    echo "== latency run $run $v load $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 loadtest/compare.py latency --no-build --runs 1 --systems $systems \
      --clients 1000 --payload 64 --duration 5s --step-duration 3s --p99-bound-ms 100 \
      --out $OUT/capacity-$v-$run 2>/dev/null | sed -n '3,4p'
  done
done
use after
