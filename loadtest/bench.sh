#!/usr/bin/env bash
# Runs the whole benchmark behind BENCHMARKS.md on this machine, in one go, and
# writes every JSON result, the summary tables and the plot under one directory:
#
#   loadtest/bench.sh [OUT_DIR]          (default loadtest/results/<UTC time>)
#   RUNS=3 SYSTEMS=sluice,baseline,nchan loadtest/bench.sh
#
# 1. fan-out capacity and latency at half load (the `latency` ramp: 1000
#    subscribers on one topic, 64-byte payloads, p99 bound 100 ms) for Sluice, the
#    raw baseline and every peer;
# 2. the same load for all (fanout at SAME_RATE publishes/s, default 20 = 20k
#    deliveries/s, which every peer sustains) to compare latency side by side;
# 3. Sluice alone: many topics (Zipf), reconnect storms (kill, drain), idle memory.
# Needs: redis-server, the peers' packages (loadtest/peers/peer.sh installs them),
# python3 with matplotlib for the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)}"
runs="${RUNS:-3}"
systems="${SYSTEMS:-sluice,baseline,nchan,socketio,socketioxide,fastapi}"
same_rate="${SAME_RATE:-20}"
mkdir -p "$out"
log() { printf '\n== %s ==\n' "$*" >&2; }

cargo build --release -q -p sluice-node -p sluice-loadtest
for p in ${systems//,/ }; do
    case "$p" in sluice|baseline) ;; *) loadtest/peers/peer.sh install "$p" ;; esac
done

log "fan-out capacity and latency at half load"
python3 loadtest/compare.py latency --no-build --runs "$runs" --systems "$systems" --out "$out/latency" \
    --clients 1000 --payload 64 --duration 5s --step-duration 3s --p99-bound-ms 100 --start-rate 25 --drain 4s --quiet
log "same load for all: $same_rate publishes/s to 1000 subscribers"
python3 loadtest/compare.py fanout --no-build --runs "$runs" --systems "$systems" --out "$out/same-load" \
    --clients 1000 --payload 64 --rate "$same_rate" --duration 10s --quiet
python3 loadtest/plot.py "$out"/latency/latency-*.json -o "$out/latency-vs-load.png"

log "Sluice: many topics, storms, idle memory"
loadtest/bench-sluice.sh "$out/sluice" "$runs"
echo "results in $out" >&2
