#!/usr/bin/env bash
# Build the container images the compose file and the failover tests use, without any registry.
#
# Nothing is pulled: every image is assembled FROM scratch out of binaries on
# this host, with every shared library `ldd` lists for them and the loader,
# and built with the classic builder (DOCKER_BUILDKIT=0), like
# scripts/build-redis-image.sh. Users who can pull images use the Dockerfile
# instead; the runtime layout is the same (binaries in /usr/local/bin, uid 10001,
# port 8080, a HEALTHCHECK on /health).
#
#   sluice/node:local     target/release/sluice (the ENTRYPOINT) and
#                         target/release/sluice-demo-engine, debug info
#                         stripped; curl for health checks; /tmp; /etc/passwd
#                         and /etc/group with user 10001 (sluice); runs as 10001.
#   sluice/haproxy:local  Debian's haproxy (2.6) as /usr/local/sbin/haproxy,
#                         deploy/haproxy.cfg as /usr/local/etc/haproxy/haproxy.cfg
#                         (the official image's path; compose mounts over it);
#                         runs as 10001; `docker run IMAGE -v` prints the version.
#   sluice/redis-local:7.0  built by scripts/build-redis-image.sh.
#
# docker-compose.yml defaults to the official names redis:7.0 and haproxy:2.6.
# So that `scripts/build-images.sh && docker compose up` works here, the local
# Redis and HAProxy images are also tagged with those names -- but only when the
# name is free or already points at an earlier registry-free build (never over an
# image pulled from a registry). --no-alias skips that.
#
# Usage: scripts/build-images.sh [--no-build] [--force] [--no-alias]
#   --no-build  use the binaries already in target/release (default: first run
#               `cargo build --release -p sluice-node -p sluice-demo-engine --bins`, a no-op when fresh)
#   --force     rebuild every image even when its inputs have not changed
#   --no-alias  do not tag redis:7.0 / haproxy:2.6
#
# Environment:
#   SLUICE_NODE_IMAGE        node image       (default: sluice/node:local)
#   SLUICE_HAPROXY_IMAGE     HAProxy image    (default: sluice/haproxy:local)
#   SLUICE_TEST_REDIS_IMAGE  Redis image name (default: sluice/redis-local)
#   SLUICE_TEST_REDIS_TAG    Redis image tag  (default: 7.0)
#   CARGO_TARGET_DIR         where cargo puts target/ (default: ./target)
#
# Idempotent: each image carries a label with a hash of everything that went
# into it (binaries, libraries, config, this script's Dockerfile); an image whose
# label matches is left alone. Prints one line per image. Needs root or sudo only
# when haproxy has to be installed with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_IMAGE="${SLUICE_NODE_IMAGE:-sluice/node:local}"
HAPROXY_IMAGE="${SLUICE_HAPROXY_IMAGE:-sluice/haproxy:local}"
REDIS_REF="${SLUICE_TEST_REDIS_IMAGE:-sluice/redis-local}:${SLUICE_TEST_REDIS_TAG:-7.0}"
REDIS_ALIAS="redis:7.0"
HAPROXY_ALIAS="haproxy:2.6"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD=1
FORCE=0
ALIAS=1

for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --force) FORCE=1 ;;
        --no-alias) ALIAS=0 ;;
        -h|--help)
            sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) echo "build-images: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "build-images: $*" >&2; exit 1; }
say() { echo "build-images: $*"; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running? can this user use it?)"

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

# Marker put into every image's description, so aliases are only ever moved
# between registry-free builds (scripts/build-redis-image.sh uses the same words).
LOCAL_MARK="built without a registry"

# --- helpers ---------------------------------------------------------------

# new_context NAME: a fresh build context with an empty rootfs; sets CTX and ROOT.
CONTEXTS=()
cleanup() { for c in "${CONTEXTS[@]}"; do rm -rf "$c"; done; }
trap cleanup EXIT
new_context() {
    CTX=$(mktemp -d "${TMPDIR:-/tmp}/sluice-$1-image.XXXXXX")
    CONTEXTS+=("$CTX")
    ROOT="$CTX/rootfs"
    mkdir -p "$ROOT"
}

# copy_file SRC DEST_IN_IMAGE: dereference symlinks, keep mode.
copy_file() {
    mkdir -p "$ROOT$(dirname "$2")"
    cp -L --preserve=mode "$1" "$ROOT$2"
}

# copy_libs BIN...: every library ldd lists for the binaries, plus the loader.
copy_libs() {
    local bin out path
    declare -A libs=()
    for bin in "$@"; do
        out=$(ldd "$bin" 2>&1) || die "ldd failed for $bin: $out"
        if grep -q 'not found' <<<"$out"; then
            die "ldd reports missing libraries for $bin: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
        fi
        # "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        while read -r path; do
            [[ -n "$path" ]] && libs["$path"]=1
        done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
    done
    libs["/lib64/ld-linux-x86-64.so.2"]=1
    for path in "${!libs[@]}"; do
        [[ -e "$path" ]] || die "library $path listed by ldd does not exist"
        copy_file "$path" "$path"
    done
    LIB_COUNT=${#libs[@]}
}

# add_accounts: /etc/passwd and /etc/group with root and sluice (10001), /tmp.
add_accounts() {
    mkdir -p "$ROOT/etc" "$ROOT/tmp"
    chmod 1777 "$ROOT/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'sluice:x:10001:10001:sluice:/nonexistent:/sbin/nologin' >"$ROOT/etc/passwd"
    printf '%s\n' 'root:x:0:' 'sluice:x:10001:' >"$ROOT/etc/group"
    # glibc's defaults, made explicit: /etc/hosts first, then DNS (Docker's resolver).
    printf '%s\n' 'hosts: files dns' 'passwd: files' 'group: files' >"$ROOT/etc/nsswitch.conf"
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        copy_file /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
    fi
}

# inputs_hash: a hash over the context (file names, modes, contents).
inputs_hash() {
    (cd "$CTX" && find . -type f -printf '%P %m\n' | LC_ALL=C sort && \
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# up_to_date REF HASH: the image exists and was built from the same inputs.
up_to_date() {
    [[ $FORCE -eq 0 ]] || return 1
    local have
    have=$(docker image inspect --format '{{ index .Config.Labels "io.sluice.inputs" }}' "$1" 2>/dev/null) || return 1
    [[ "$have" == "$2" ]]
}

# build REF: classic builder, no pulls; the log is shown only on failure.
build() {
    local log
    if ! log=$(DOCKER_BUILDKIT=0 docker build --pull=false -t "$1" "$CTX" 2>&1); then
        echo "$log" >&2
        die "docker build of $1 failed"
    fi
}

size_of() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1000/1000}'; }

# alias REF ALIAS: tag REF as ALIAS unless ALIAS is an image from a registry.
ALIAS_NOTE=""
alias_tag() {
    ALIAS_NOTE=""
    [[ $ALIAS -eq 1 ]] || return 0
    local desc
    if desc=$(docker image inspect --format '{{ index .Config.Labels "org.opencontainers.image.description" }}' "$2" 2>/dev/null); then
        if [[ "$desc" != *"$LOCAL_MARK"* ]]; then
            ALIAS_NOTE=", not tagged $2 (that name is a pulled image; set the compose variable instead)"
            return 0
        fi
    fi
    docker tag "$1" "$2"
    ALIAS_NOTE=", also tagged $2"
}

# --- binaries ----------------------------------------------------------------

if [[ $BUILD -eq 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or pass --no-build)"
    cargo build --release -p sluice-node -p sluice-demo-engine --bins >&2 || die "cargo build failed"
fi
SLUICE_BIN="$TARGET_DIR/release/sluice"
ENGINE_BIN="$TARGET_DIR/release/sluice-demo-engine"
for b in "$SLUICE_BIN" "$ENGINE_BIN"; do
    [[ -x "$b" ]] || die "$b is missing: run cargo build --release -p sluice-node -p sluice-demo-engine --bins (or drop --no-build)"
done
CURL_BIN=$(command -v curl || true)
[[ -n "$CURL_BIN" ]] || die "curl is missing on this host (apt-get install curl): the image's health check uses it"

# --- sluice/node:local -------------------------------------------------------

new_context node
for b in "$SLUICE_BIN" "$ENGINE_BIN"; do
    copy_file "$b" "/usr/local/bin/$(basename "$b")"
    # Release builds carry line tables (profile.release debug = 1): keep the
    # symbols for backtraces, drop the rest.
    if command -v objcopy >/dev/null 2>&1; then
        objcopy --strip-debug "$ROOT/usr/local/bin/$(basename "$b")"
    fi
done
copy_file "$CURL_BIN" /usr/bin/curl
copy_libs "$SLUICE_BIN" "$ENGINE_BIN" "$CURL_BIN"
add_accounts
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
cat >"$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    SLUICE_BIND=0.0.0.0:8080 \\
    RUST_LOG=info
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \\
    CMD ["/usr/bin/curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/sluice"]
EOF
HASH=$(inputs_hash)
if up_to_date "$NODE_IMAGE" "$HASH"; then
    state="up to date"
else
    cat >>"$CTX/Dockerfile" <<EOF
LABEL org.opencontainers.image.title="sluice" \\
      org.opencontainers.image.description="Sluice node and demo engine from this host's release build, ${LOCAL_MARK}" \\
      org.opencontainers.image.version="${VERSION}" \\
      org.opencontainers.image.revision="${REVISION}" \\
      io.sluice.inputs="${HASH}"
EOF
    build "$NODE_IMAGE"
    state="built"
fi
docker run --rm "$NODE_IMAGE" --help >/dev/null 2>&1 || die "$NODE_IMAGE does not run: docker run --rm $NODE_IMAGE --help failed"
docker run --rm --entrypoint /usr/local/bin/sluice-demo-engine "$NODE_IMAGE" --help >/dev/null 2>&1 \
    || die "$NODE_IMAGE: sluice-demo-engine does not run"
docker run --rm --entrypoint /usr/bin/curl "$NODE_IMAGE" --version >/dev/null 2>&1 \
    || die "$NODE_IMAGE: curl (health check) does not run"
say "$NODE_IMAGE $state ($(size_of "$NODE_IMAGE"); sluice + sluice-demo-engine, ${LIB_COUNT} libraries; --help runs)"

# --- sluice/haproxy:local ----------------------------------------------------

HAPROXY_BIN=/usr/sbin/haproxy
installed_now=""
if [[ ! -x $HAPROXY_BIN ]]; then
    command -v apt-get >/dev/null 2>&1 || die "haproxy is missing and apt-get is not available"
    apt_install() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }
    cand=$(apt-cache policy haproxy 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z "$cand" || "$cand" == "(none)" ]]; then "${SUDO[@]}" apt-get update -qq >&2; fi
    if ! apt_install >&2; then
        "${SUDO[@]}" apt-get update -qq >&2
        apt_install >&2 || die "apt-get could not install haproxy"
    fi
    installed_now=", installed haproxy with apt-get"
    [[ -x $HAPROXY_BIN ]] || die "haproxy not found at $HAPROXY_BIN after install"
fi
HAPROXY_VERSION=$("$HAPROXY_BIN" -v | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p' | head -n1)
case "$HAPROXY_VERSION" in
    2.6.*) ;;
    *) echo "build-images: warning: haproxy is version '${HAPROXY_VERSION:-unknown}', not 2.6.x" >&2 ;;
esac
[[ -f deploy/haproxy.cfg ]] || die "deploy/haproxy.cfg is missing"

new_context haproxy
copy_file "$HAPROXY_BIN" /usr/local/sbin/haproxy
copy_libs "$HAPROXY_BIN"
add_accounts
copy_file deploy/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
mkdir -p "$ROOT/var/lib/haproxy" "$ROOT/run"
chmod 0777 "$ROOT/var/lib/haproxy" "$ROOT/run"
# Same command line as the official image (its entrypoint adds -W -db):
# master-worker, foreground; SIGUSR1 stops gracefully.
cat >"$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
EXPOSE 8080 8404
ENTRYPOINT ["/usr/local/sbin/haproxy"]
CMD ["-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
EOF
HASH=$(inputs_hash)
if up_to_date "$HAPROXY_IMAGE" "$HASH"; then
    state="up to date"
else
    cat >>"$CTX/Dockerfile" <<EOF
LABEL org.opencontainers.image.title="sluice local haproxy" \\
      org.opencontainers.image.description="haproxy ${HAPROXY_VERSION} from Debian's package, ${LOCAL_MARK}" \\
      org.opencontainers.image.version="${HAPROXY_VERSION}" \\
      io.sluice.inputs="${HASH}"
EOF
    build "$HAPROXY_IMAGE"
    state="built"
fi
docker run --rm "$HAPROXY_IMAGE" -v >/dev/null 2>&1 || die "$HAPROXY_IMAGE does not run: docker run --rm $HAPROXY_IMAGE -v failed"
check=$(docker run --rm "$HAPROXY_IMAGE" -c -f /usr/local/etc/haproxy/haproxy.cfg 2>&1) \
    || die "$HAPROXY_IMAGE: deploy/haproxy.cfg does not pass haproxy -c: $check"
alias_tag "$HAPROXY_IMAGE" "$HAPROXY_ALIAS"
say "$HAPROXY_IMAGE $state ($(size_of "$HAPROXY_IMAGE"); haproxy ${HAPROXY_VERSION}, ${LIB_COUNT} libraries; -v runs, config valid${installed_now})${ALIAS_NOTE}"

# --- Redis -------------------------------------------------------------------

redis_args=()
[[ $FORCE -eq 1 ]] && redis_args+=(--force)
redis_out=$(scripts/build-redis-image.sh "${redis_args[@]}") || die "scripts/build-redis-image.sh failed"
docker run --rm --entrypoint /usr/bin/redis-server "$REDIS_REF" --version >/dev/null 2>&1 \
    || die "$REDIS_REF does not run"
alias_tag "$REDIS_REF" "$REDIS_ALIAS"
if [[ "$redis_out" == *"already exists"* ]]; then state="up to date"; else state="built"; fi
say "$REDIS_REF $state ($(size_of "$REDIS_REF"); by scripts/build-redis-image.sh)${ALIAS_NOTE}"
