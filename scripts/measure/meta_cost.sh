#!/usr/bin/env bash
# Redis-side cost of one `FCALL sluice_publish` with and without engine meta, read
# from INFO commandstats (usec_per_call of cmdstat_fcall), in interleaved rounds so
# machine noise hits both alike. Starts its own redis-server on $PORT (default
# 6419, no persistence) and stops it at the end.
#
#   scripts/measure/meta_cost.sh                 # this tree's library, without vs with meta
#   BASE=main scripts/measure/meta_cost.sh       # also: BASE's library vs this one, both without meta
#
# Env: N calls per run (20000), ROUNDS (5), PORT (6419).
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${PORT:-6419}; N=${N:-20000}; ROUNDS=${ROUNDS:-5}
PAY='{"bid":99.1,"ask":99.2,"size":1500,"ts":1700000000000}'
META='{"source":"feed-1","trace":"4bf92f3577b34da6a3ce929d0e0e4736"}'
dir=$(mktemp -d)
render() { sed 's/__HISTORY_SIZE__/10000/; s/__HISTORY_TTL__/86400/'; }
render < node/src/broker/redis/sluice.lua > "$dir/new.lua"
if [[ -n "${BASE:-}" ]]; then
    git show "$BASE:node/src/broker/redis/sluice.lua" | render > "$dir/base.lua"
fi
redis-server --port "$P" --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'redis-cli -p "$P" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p "$P" ping >/dev/null 2>&1; do sleep 0.1; done
load() { redis-cli -p "$P" FUNCTION LOAD REPLACE "$(cat "$1")" >/dev/null; }
per_call() {
    redis-cli -p "$P" INFO commandstats | tr -d '\r' | grep '^cmdstat_fcall:' |
        sed 's/.*usec_per_call=\([0-9.]*\).*/\1/'
}
run() { # label, FCALL arguments after the topic
    local label=$1; shift
    redis-cli -p "$P" CONFIG RESETSTAT >/dev/null
    redis-benchmark -p "$P" -n "$N" -c 1 FCALL sluice_publish 1 bench.meta "$@" >/dev/null
    echo "$label $(per_call)"
}
load "$dir/new.lua"
# The stream to its steady state (trimmed at 10000 entries) first.
redis-benchmark -p "$P" -n 12000 -c 1 FCALL sluice_publish 1 bench.meta "$PAY" >/dev/null
for r in $(seq "$ROUNDS"); do
    load "$dir/new.lua"
    run "round $r without-meta" "$PAY"
    run "round $r with-meta" "$PAY" delta '' "$META"
    if [[ -n "${BASE:-}" ]]; then
        load "$dir/base.lua"
        run "round $r base-without-meta" "$PAY"
    fi
done | tee "$dir/out"
echo "median us/call over $ROUNDS rounds of $N calls:"
for label in without-meta with-meta base-without-meta; do
    vals=$(awk -v l="$label" '$3 == l {print $4}' "$dir/out" | sort -n)
    [[ -z "$vals" ]] && continue
    n=$(echo "$vals" | wc -l)
    echo "  $label $(echo "$vals" | sed -n "$(( (n + 1) / 2 ))p")"
done
