# shellcheck shell=bash
# What the benchmark and smoke scripts share; they source it (`source loadtest/lib.sh`
# from the repository root, or `source "$(dirname "$0")/lib.sh"`).
#
# Sourcing makes `work` (a fresh temporary directory) and the arrays `pids` and
# `node_pids`, and installs an EXIT trap that kills every pid in both (nodes first),
# waits for them and removes `work`. A script that needs more on exit defines its
# own trap and calls `lib_cleanup` from it.

work="$(mktemp -d)"
pids=()
node_pids=()

lib_cleanup() {
    for p in "${node_pids[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap lib_cleanup EXIT

# start_redis PORT [redis-server args...]: a throwaway Redis on 127.0.0.1:PORT
# (no RDB, no AOF, files in $work), logged to $work/redis-PORT.log; its pid joins
# `pids`. Returns at once: `wait_redis` waits for it.
start_redis() {
    local port=$1
    shift
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" "$@" \
        >"$work/redis-$port.log" 2>&1 &
    pids+=($!)
}

# wait_redis PORT...: returns once every Redis named answers PING.
wait_redis() {
    local port
    for port in "$@"; do
        until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    done
}

# wait_ports_free PORT...: waits while another Redis still answers on any of them
# (one a previous run left stopping).
wait_ports_free() {
    local port
    for port in "$@"; do
        while redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.2; done
    done
}

# wait_ready PORT [TRIES [LOG]]: polls the node's /ready every 0.1 s until it
# answers 200; after TRIES polls (default 100) prints why on stderr, with the last
# lines of LOG when given, and exits the script with status 1.
wait_ready() {
    local port=$1 tries=${2:-100} log=${3:-}
    for _ in $(seq "$tries"); do
        curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$(basename "$0"): the node on port $port did not become ready" >&2
    [ -n "$log" ] && tail -20 "$log" >&2
    exit 1
}

# cmd_us_per_publish PORT REPORT_JSON: Redis time inside commands per successful
# publish, from `INFO commandstats` of the Redis on PORT (since its last
# `CONFIG RESETSTAT`): FCALL (the publish with what it calls) plus the reads
# nodes make (XREAD, FCALL_RO). Less noisy than INFO cpu, blind to socket writes.
cmd_us_per_publish() {
    redis-cli -p "$1" info commandstats | REPORT="$2" python3 -c '
import json, os, sys
r = json.loads(os.environ["REPORT"])
pubs = r["published"] - r["publish_errors"]
usec = {}
for line in sys.stdin:
    if line.startswith("cmdstat_"):
        name, rest = line.strip()[8:].split(":", 1)
        usec[name] = float(dict(kv.split("=") for kv in rest.split(","))["usec"])
print("%.2f" % ((usec.get("fcall", 0) + usec.get("xread", 0) + usec.get("fcall_ro", 0)) / pubs))'
}
