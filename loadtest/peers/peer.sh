#!/usr/bin/env bash
# peer.sh — installs, starts and stops the "peer" servers that the Sluice
# benchmark compares against (nchan, socketio, fastapi, socketioxide).
#
#   peer.sh list
#   peer.sh install <name>
#   peer.sh start <name> --port P [--redis redis://127.0.0.1:6379] [--workers 2]
#   peer.sh stop <name>
#   peer.sh status <name>
#
# Redis is NOT started here: the caller provides it (--redis).
# Run state (pids, logs, generated configs) lives in
#   ${PEER_RUN_DIR:-/tmp/sluice-peers}/<name>/
# Env knobs: PEER_RUN_DIR, PEER_PYTHON (python3), PEER_START_TIMEOUT (60 s),
# CARGO_TARGET_DIR (socketioxide build dir).
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_ROOT="${PEER_RUN_DIR:-/tmp/sluice-peers}"
PYTHON="${PEER_PYTHON:-python3}"
START_TIMEOUT="${PEER_START_TIMEOUT:-60}"
NAMES=(nchan socketio fastapi socketioxide)

NCHAN_MODULE_CANDIDATES=(
  /usr/lib/nginx/modules/ngx_nchan_module.so
  /usr/share/nginx/modules/ngx_nchan_module.so
)
SIOXIDE_DIR="$PEERS_DIR/socketioxide"
SIOXIDE_TARGET="${CARGO_TARGET_DIR:-$SIOXIDE_DIR/target}"
SIOXIDE_BIN="$SIOXIDE_TARGET/release/sluice-peer-socketioxide"

die() { echo "peer.sh: error: $*" >&2; exit 1; }
say() { echo "peer.sh: $*" >&2; }

is_known() {
  local n
  for n in "${NAMES[@]}"; do [[ "$n" == "$1" ]] && return 0; done
  return 1
}

# ---------------------------------------------------------------- install ---

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

apt_ensure() {  # apt_ensure pkg... — installs only the missing packages
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  say "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  # Keep package scripts from starting the distro's own nginx service on :80
  # (we only ever run nginx with our generated config).
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod +x "$policy" && added=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  ((added)) && as_root rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed"
}

pip_ensure() {  # pip_ensure "import a, b" requirement...
  local imports="$1"; shift
  "$PYTHON" -c "$imports" >/dev/null 2>&1 && return 0
  say "pip install $*"
  "$PYTHON" -m pip install -q --disable-pip-version-check "$@"
  "$PYTHON" -c "$imports" >/dev/null || die "python packages still missing after pip install: $*"
}

nchan_module() {
  local m
  for m in "${NCHAN_MODULE_CANDIDATES[@]}"; do [[ -f "$m" ]] && { echo "$m"; return 0; }; done
  m="$(dpkg -L libnginx-mod-nchan 2>/dev/null | grep 'ngx_nchan_module\.so$' | head -n1 || true)"
  [[ -n "$m" && -f "$m" ]] && { echo "$m"; return 0; }
  return 1
}

install_peer() {
  case "$1" in
    nchan)
      apt_ensure nginx libnginx-mod-nchan
      nchan_module >/dev/null || die "ngx_nchan_module.so not found after installing libnginx-mod-nchan"
      ;;
    socketio)
      pip_ensure "import socketio, engineio, uvicorn, redis, uvloop, httptools, websockets" \
        "python-socketio>=5.11" "uvicorn[standard]>=0.30" "redis>=5"
      ;;
    fastapi)
      pip_ensure "import fastapi, uvicorn, redis, uvloop, httptools, websockets" \
        "fastapi>=0.110" "uvicorn[standard]>=0.30" "redis>=5"
      ;;
    socketioxide)
      command -v cargo >/dev/null 2>&1 || die "cargo not found (a Rust toolchain is needed to build the socketioxide peer)"
      say "building socketioxide peer (cargo build --release, nice 10) into $SIOXIDE_TARGET"
      (cd "$SIOXIDE_DIR" && CARGO_TARGET_DIR="$SIOXIDE_TARGET" nice -n 10 cargo build --release --locked --quiet)
      [[ -x "$SIOXIDE_BIN" ]] || die "build produced no binary at $SIOXIDE_BIN"
      ;;
    *) die "unknown peer '$1' (known: ${NAMES[*]})" ;;
  esac
}

# ------------------------------------------------------------------ helpers ---

run_dir() { echo "$RUN_ROOT/$1"; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_status() {  # http_status METHOD URL [BODY] -> prints the status code (000 if unreachable)
  "$PYTHON" - "$@" <<'PY' 2>/dev/null || echo 000
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method)
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}

redis_numsub() {  # redis_numsub URL CHANNEL -> number of subscribers (-1 if unreachable)
  "$PYTHON" - "$1" "$2" <<'PY' 2>/dev/null || echo -1
import sys, redis
r = redis.Redis.from_url(sys.argv[1], socket_timeout=2)
print(dict(r.pubsub_numsub(sys.argv[2])).get(sys.argv[2].encode(), 0))
PY
}

redis_reachable() {
  "$PYTHON" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()
PY
}

redis_hostport() {  # prints "host port" of a redis:// URL
  "$PYTHON" - "$1" <<'PY'
import sys
from urllib.parse import urlparse
u = urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)
PY
}

# Launch "$@" in its own session/process group, logs to $log, pid to $pidfile.
launch() {
  local log="$1" pidfile="$2"; shift 2
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

fail_start() {
  local name="$1"; shift
  local dir; dir="$(run_dir "$name")"
  echo "peer.sh: error: $name did not become ready: $*" >&2
  local f
  for f in "$dir"/*.log; do
    [[ -s "$f" ]] || continue
    echo "---- last lines of $f ----" >&2
    tail -n 40 "$f" >&2
  done
  stop_peer "$name" >/dev/null 2>&1 || true
  exit 1
}

# ------------------------------------------------------------------- start ---

write_nginx_conf() {  # write_nginx_conf dir port redis_url workers
  local dir="$1" port="$2" redis="$3" workers="$4" module user_line="" nofile
  nofile="$(ulimit -n)"; [[ "$nofile" =~ ^[0-9]+$ ]] || nofile=65536
  module="$(nchan_module)" || die "nchan module not installed"
  if [[ $EUID -eq 0 ]]; then user_line="user $(id -un) $(id -gn);"; fi
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
# Generated by loadtest/peers/peer.sh — nchan peer (nginx + Nchan, Redis storage).
load_module $module;
$user_line
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $nofile;
pid $dir/nginx.pid;
error_log $dir/error.log notice;

events {
  worker_connections $nofile;
  multi_accept on;
}

http {
  access_log off;
  client_body_temp_path $dir/tmp/client_body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;

  keepalive_timeout 75s;
  keepalive_requests 1000000;   # the publisher reuses one keep-alive connection
  client_max_body_size 1m;
  client_body_buffer_size 64k;  # publish bodies stay in memory

  # Redis storage for every nchan channel: Nchan 1.3's upstream form (the
  # replacement for the deprecated nchan_redis_url + nchan_use_redis on).
  # Default nchan_redis_storage_mode = distributed: messages are stored in,
  # and fanned out through, Redis.
  upstream peer_redis {
    nchan_redis_server "$redis";
  }

  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    server_name _;

    location = /health {
      return 200 "ok\n";
    }

    # WebSocket subscriber: each published message is one text frame holding the body.
    location ~ "^/sub/([A-Za-z0-9_.:-]+)$" {
      nchan_subscriber websocket;
      nchan_channel_id "\$1";
      nchan_redis_pass peer_redis;
      nchan_subscriber_first_message newest;
    }

    # HTTP publisher: POST body becomes the message (201 = had subscribers, 202 = queued).
    location ~ "^/pub/([A-Za-z0-9_.:-]+)$" {
      nchan_publisher http;
      nchan_channel_id "\$1";
      nchan_redis_pass peer_redis;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }
  }
}
EOF
}

start_peer() {
  local name="$1"; shift
  is_known "$name" || die "unknown peer '$name' (known: ${NAMES[*]})"
  local port="" redis="redis://127.0.0.1:6379" workers=2
  while (($#)); do
    case "$1" in
      --port) port="${2:-}"; shift 2 ;;
      --redis) redis="${2:-}"; shift 2 ;;
      --workers) workers="${2:-}"; shift 2 ;;
      *) die "unknown option '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "--port P is required"
  [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer"

  install_peer "$name"

  local dir; dir="$(run_dir "$name")"
  mkdir -p "$dir"
  if alive "$(cat "$dir/pid" 2>/dev/null || true)"; then
    die "$name is already running (pid $(cat "$dir/pid")); run: peer.sh stop $name"
  fi
  port_in_use "$port" && die "port $port on 127.0.0.1 is already in use"
  redis_reachable "$redis" || die "Redis at $redis is not reachable (peer.sh does not start Redis)"
  rm -f "$dir"/*.log "$dir/pid" "$dir/nginx.pid"
  printf 'port=%s\nredis=%s\nworkers=%s\n' "$port" "$redis" "$workers" >"$dir/params"

  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

  local health="http://127.0.0.1:$port/health" numsub_channel=""
  case "$name" in
    nchan)
      write_nginx_conf "$dir" "$port" "$redis" "$workers"
      nginx -t -q -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" >>"$dir/error.log" 2>&1 \
        || fail_start "$name" "nginx -t rejected $dir/nginx.conf"
      launch "$dir/error.log" "$dir/pid" nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log"
      ;;
    socketio)
      launch "$dir/server.log" "$dir/pid" env PEER_REDIS_URL="$redis" \
        "$PYTHON" -m uvicorn sio_server:app --app-dir "$PEERS_DIR/socketio" \
        --host 127.0.0.1 --port "$port" --workers "$workers" \
        --no-access-log --log-level warning --backlog 4096
      numsub_channel="socketio"
      ;;
    fastapi)
      launch "$dir/server.log" "$dir/pid" env PEER_REDIS_URL="$redis" \
        "$PYTHON" -m uvicorn fastapi_server:app --app-dir "$PEERS_DIR/fastapi" \
        --host 127.0.0.1 --port "$port" --workers "$workers" \
        --no-access-log --log-level warning --backlog 4096
      numsub_channel="sluice-peer-fastapi.control"
      ;;
    socketioxide)
      launch "$dir/server.log" "$dir/pid" "$SIOXIDE_BIN" \
        --port "$port" --redis "$redis" --workers "$workers"
      ;;
  esac

  # Bounded readiness wait.
  local deadline=$((SECONDS + START_TIMEOUT)) pid; pid="$(cat "$dir/pid")"
  while :; do
    alive "$pid" || fail_start "$name" "process $pid exited"
    if [[ "$(http_status GET "$health")" == 200 ]]; then
      if [[ "$name" == nchan ]]; then
        # A probe publish exercises the Redis storage path (fails if Redis is unusable).
        local st; st="$(http_status POST "http://127.0.0.1:$port/pub/sluice-peer-probe" probe)"
        [[ "$st" == 201 || "$st" == 202 ]] && break
      elif [[ -n "$numsub_channel" ]]; then
        # every worker process holds its own Redis subscription on this channel
        (( $(redis_numsub "$redis" "$numsub_channel") >= workers )) && break
      else
        break
      fi
    fi
    ((SECONDS < deadline)) || fail_start "$name" "not ready after ${START_TIMEOUT}s on port $port"
    sleep 0.2
  done
  pgrep -P "$pid" >"$dir/worker_pids" 2>/dev/null || true
  say "$name ready on 127.0.0.1:$port (pid $pid, workers $workers, redis $redis, run dir $dir)"
}

# -------------------------------------------------------------------- stop ---

stop_peer() {
  local name="$1"
  is_known "$name" || die "unknown peer '$name' (known: ${NAMES[*]})"
  local dir pid; dir="$(run_dir "$name")"
  pid="$(cat "$dir/pid" 2>/dev/null || true)"
  if ! alive "$pid"; then
    rm -f "$dir/pid" "$dir/worker_pids"
    say "$name is not running"
    return 0
  fi
  # Each peer was launched with setsid: its pid is also its process-group id,
  # and the group holds the master/supervisor and all of its workers.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    say "$name did not exit after 10 s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$dir/pid" "$dir/worker_pids"
  say "$name stopped"
}

status_peer() {
  local name="$1" dir pid; dir="$(run_dir "$name")"
  pid="$(cat "$dir/pid" 2>/dev/null || true)"
  if alive "$pid"; then echo "$name running (pid $pid) $(tr '\n' ' ' <"$dir/params" 2>/dev/null)"
  else echo "$name stopped"; return 1
  fi
}

# -------------------------------------------------------------------- main ---

cmd="${1:-}"; shift || true
case "$cmd" in
  list) printf '%s\n' "${NAMES[@]}" ;;
  install) [[ $# -ge 1 ]] || die "usage: peer.sh install <name>"
           is_known "$1" || die "unknown peer '$1' (known: ${NAMES[*]})"
           install_peer "$1" ;;
  start) [[ $# -ge 1 ]] || die "usage: peer.sh start <name> --port P [--redis URL] [--workers N]"
         start_peer "$@" ;;
  stop) [[ $# -ge 1 ]] || die "usage: peer.sh stop <name>"
        stop_peer "$1" ;;
  status) [[ $# -ge 1 ]] || die "usage: peer.sh status <name>"
          status_peer "$1" ;;
  *) echo "usage: peer.sh list | install <name> | start <name> --port P [--redis URL] [--workers N] | stop <name> | status <name>" >&2
     exit 2 ;;
esac
