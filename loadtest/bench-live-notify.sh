#!/usr/bin/env bash
# Option (a) of the live path, measured for the choice in BENCHMARKS.md ("Live
# path"): `sluice_publish` appends a notification to one of 16 partition streams
# (instead of SPUBLISH), and each "node" is a reader (live-notify/reader.py) of all
# 16 with one blocking `XREAD COUNT 1000 BLOCK 1000` from its last ids. Redis CPU per
# publish with 0..3 readers, publishes as in bench-live.sh.
#
#   loadtest/bench-live-notify.sh SLUICE_BINARY LOADTEST_BINARY
set -euo pipefail

node_bin=${1:?sluice binary}
lt=${2:?sluice-loadtest binary}
here=$(cd "$(dirname "$0")" && pwd)
clients=${CLIENTS:-2000}
topics=${TOPICS:-1000}
rate=${RATE:-5000}
duration=${DURATION:-10s}
source "$here/lib.sh"

# The library with its SPUBLISH line replaced by the partitioned XADD.
python3 - "$here/../node/src/broker/redis/sluice.lua" "$work/notify.lua" <<'PY'
import sys
src = open(sys.argv[1]).read()
start = src.index("    redis.call('SPUBLISH'")
end = src.index("\n    if not exp", start)
notify = ("    redis.call('XADD', 'sluice:notify:' .. (string.byte(topic, #topic) % 16), "
          "'MAXLEN', '~', '10000', '*', 't', topic, 's', seq_str)")
out = src[:start] + notify + src[end:]
out = out.replace('__HISTORY_SIZE__', '10000', 1).replace('__HISTORY_TTL__', '86400', 1)
open(sys.argv[2], 'w').write(out)
PY

# A previous run's servers may still be exiting.
wait_ports_free 6391 6392
start_redis 6391
start_redis 6392
wait_redis 6391 6392
redis-cli -p 6391 -x function load replace <"$work/notify.lua" >/dev/null
# The clients are served by a node of the decoy Redis (they only give the
# publisher the same topics as bench-live.sh).
REDIS_URL=redis://127.0.0.1:6392 SLUICE_BIND=127.0.0.1:18081 SLUICE_AUTH=off "$node_bin" >"$work/node.log" 2>&1 &
pids+=($!)
wait_ready 18081 600 "$work/node.log"

# "warm" is a discarded first run at 0: a fresh Redis pays for growing its memory
# (page faults) on its first streams, which inflated the first figure by 40 %.
for n in warm 0 1 2 3; do
    warm=$n
    [ "$n" = warm ] && n=0
    redis-cli -p 6391 flushall >/dev/null
    readers=()
    for i in $(seq 1 "$n"); do
        python3 "$here/live-notify/reader.py" 6391 16 &
        readers+=($!)
        pids+=($!)
    done
    redis-cli -p 6391 config resetstat >/dev/null
    out=$("$lt" topics --url ws://127.0.0.1:18081/ws --redis redis://127.0.0.1:6391 --clients "$clients" \
        --topics "$topics" --rate "$rate" --duration "$duration" --publishers 1 --calibrate 0 \
        --json --quiet 2>"$work/lt-$n.log" | tail -1)
    cpu=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["redis_cpu_us_per_publish"])')
    # As in bench-live.sh: FCALL (with its XADD) plus the readers' XREADs, per publish.
    cmd=$(cmd_us_per_publish 6391 "$out")
    [ "$warm" = warm ] ||
    echo "notify-streams readers=$n redis_cpu_us_per_publish=$cpu cmd_us_per_publish=$cmd"
    for p in "${readers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
