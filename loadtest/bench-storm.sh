#!/usr/bin/env bash
# Resume storms, before and after a change, in one session: for each node binary
# given, for each storm shape (2000 clients on 20 topics, 5000 clients on 1), RUNS
# runs alternating between the binaries. Node A is killed 4 s in; every client
# resumes on node B. JSON results in OUT_DIR, a summary at the end (medians, min-max).
# Starts its own Redis (port $REDIS_PORT, default 6392) and nodes (18091, 18092).
#
#   loadtest/bench-storm.sh OUT_DIR RUNS NAME=NODE_BINARY [NAME=NODE_BINARY…]
#   e.g. loadtest/bench-storm.sh /tmp/storm 3 before=/tmp/sluice-before after=target/release/sluice
# NAME=baseline runs the raw baseline instead (two `baseline-server`s, both given
# every publication, clients moving from the killed one to the other without
# resume): the machine's reconnect ceiling under the same live fan-out, the peer the
# resume rate is compared with in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"; runs="$2"; shift 2
mkdir -p "$out"
lt=${LOADTEST:-target/release/sluice-loadtest}
redis_port=${REDIS_PORT:-6392} redis="redis://127.0.0.1:${REDIS_PORT:-6392}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
if [[ "$(cat /proc/sys/net/core/somaxconn)" -lt 65535 ]]; then
    sysctl -qw net.core.somaxconn=65535 2>/dev/null || echo "bench-storm: could not raise net.core.somaxconn" >&2
fi

redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

node() { # node BINARY PORT -> pid
    REDIS_URL="$redis" SLUICE_BIND="127.0.0.1:$2" SLUICE_NODE_ID="storm-$2" \
        SLUICE_MAX_CONNECTIONS=1000000 SLUICE_MAX_CONNECTIONS_PER_IP=1000000 \
        RUST_LOG=warn "$1" >>"$out/node-$2.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$2/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$pid"
}
raw() { # raw PORT -> pid of a baseline server
    "$lt" baseline-server --bind "127.0.0.1:$1" >>"$out/baseline-$1.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && break; sleep 0.1; done
    echo "$pid"
}
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
last_json() { grep '^{' | tail -1; }

for r in $(seq "$runs"); do
    for shape in 2000x20 5000x1; do
        clients=${shape%x*} topics=${shape#*x}
        for spec in "$@"; do
            name=${spec%%=*} bin=${spec#*=}
            echo "== storm $shape, $name, run $r" >&2
            redis-cli -p $redis_port flushall >/dev/null
            if [[ "$bin" == baseline ]]; then
                a=$(raw 18091); b=$(raw 18092) system=(--system baseline)
            else
                a=$(node "$bin" 18091); b=$(node "$bin" 18092) system=(--redis "$redis")
            fi
            $lt storm --url ws://127.0.0.1:18091/ws --url ws://127.0.0.1:18092/ws "${system[@]}" \
                --clients "$clients" --topics "$topics" --rate 20 --duration 12s --action-at 4s \
                --kill-pid "$a" --drain 20s --server-pid "$b" --json --quiet \
                | last_json >"$out/storm-$shape-$name-$r.json"
            stop "$a"; stop "$b"
        done
    done
done
python3 - "$out" "$@" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1]); names = [s.split("=", 1)[0] for s in sys.argv[2:]]
keys = ["reconnect_resume_per_sec", "all_caught_up_ms", "redis_storm_reads_total",
        "redis_storm_reads_per_topic", "redis_storm_reads.fcall_ro", "redis_storm_reads.hmget",
        "redis_storm_reads.xrevrange", "redis_storm_reads.xrange", "redis_storm_reads.hget",
        "lost", "duplicated", "expected"]
def get(r, key):
    for k in key.split("."):
        r = r.get(k, 0 if "." in key else None) if isinstance(r, dict) else None
    return r
summary = {}
for shape in ["2000x20", "5000x1"]:
    for name in names:
        files = sorted(out.glob(f"storm-{shape}-{name}-*.json"))
        rows = [json.loads(f.read_text()) for f in files if f.stat().st_size]
        s = {}
        for k in keys:
            vals = [v for v in (get(r, k) for r in rows) if isinstance(v, (int, float))]
            s[k] = [statistics.median(vals), min(vals), max(vals)] if vals else None
        summary[f"{shape} {name}"] = s
        print(shape, name, json.dumps(s))
    base = summary.get(f"{shape} baseline", {}).get("reconnect_resume_per_sec")
    for name in names:
        mine = summary[f"{shape} {name}"].get("reconnect_resume_per_sec")
        if base and mine and name != "baseline":
            ratio = mine[0] / base[0]
            summary[f"{shape} {name}"]["resume_rate_vs_baseline"] = round(ratio, 2)
            print(f"{shape} {name}: {mine[0]:.0f} resumes/s against the raw baseline's "
                  f"{base[0]:.0f} reconnects/s: {ratio:.2f}x")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PY
