#!/usr/bin/env bash
# Build a local Redis 7.0 image without any container registry.
#
# The image is assembled FROM scratch out of Debian's `redis-server` package:
# /usr/bin/redis-server (and redis-cli when present), every shared library
# `ldd` lists for them, the loader /lib64/ld-linux-x86-64.so.2, an empty
# writable /data and /tmp. Nothing is pulled; the classic builder is used
# because BuildKit may try to resolve metadata from a registry.
#
# Usage: scripts/build-redis-image.sh [--force]
#   --force   rebuild even if the image already exists
#
# Environment:
#   SLUICE_TEST_REDIS_IMAGE  image name (default: sluice/redis-local)
#   SLUICE_TEST_REDIS_TAG    image tag  (default: 7.0)
#
# The image's CMD is the full command line, like the official image's
# convention of an executable first (`redis-server` is on PATH):
#   /usr/bin/redis-server --bind 0.0.0.0 --port 6379 --protected-mode no
#                         --dir /data --appendonly yes --save ""
# AOF is on (default fsync: everysec) so data survives `docker stop` +
# `docker start` of the same container; RDB snapshots are off (no fork noise).
# Redis logs to stdout, including "Ready to accept connections", which is the
# line testcontainers' Redis module waits for. To run with other settings,
# override the whole command, e.g. `redis-server --appendonly no`.
#
# If redis-server is missing it is installed with apt-get (needs root or sudo).
# Note: on a host where services may start (no /usr/sbin/policy-rc.d), the
# package's own redis service may start on 127.0.0.1:6379 after install.
set -euo pipefail

IMAGE="${SLUICE_TEST_REDIS_IMAGE:-sluice/redis-local}"
TAG="${SLUICE_TEST_REDIS_TAG:-7.0}"
REF="${IMAGE}:${TAG}"
FORCE=0

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help)
            sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) echo "build-redis-image: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "build-redis-image: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running? can this user use it?)"

if [[ $FORCE -eq 0 ]] && docker image inspect "$REF" >/dev/null 2>&1; then
    echo "build-redis-image: $REF already exists, nothing to do (use --force to rebuild)"
    exit 0
fi

# --- make sure redis-server is installed -----------------------------------
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
}

installed_now=""
if ! command -v redis-server >/dev/null 2>&1 && [[ ! -x /usr/bin/redis-server ]]; then
    command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available"
    # Update the package lists only when the package is not known yet, or
    # when installing from the current lists fails (stale lists).
    cand=$(apt-cache policy redis-server 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z "$cand" || "$cand" == "(none)" ]]; then
        "${SUDO[@]}" apt-get update -qq >&2
    fi
    if ! apt_install >&2; then
        "${SUDO[@]}" apt-get update -qq >&2
        apt_install >&2 || die "apt-get could not install redis-server"
    fi
    installed_now=" (installed redis-server with apt-get)"
fi

SERVER=/usr/bin/redis-server
[[ -x $SERVER ]] || SERVER=$(command -v redis-server)
[[ -x $SERVER ]] || die "redis-server not found after install"

VERSION=$("$SERVER" --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
case "$VERSION" in
    7.0.*) ;;
    *) echo "build-redis-image: warning: redis-server is version '${VERSION:-unknown}', not 7.0.x" >&2 ;;
esac

# --- assemble the root filesystem ------------------------------------------
CTX=$(mktemp -d "${TMPDIR:-/tmp}/sluice-redis-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
ROOT="$CTX/rootfs"
mkdir -p "$ROOT"

# copy_file SRC DEST_IN_IMAGE: dereference symlinks, keep mode.
copy_file() {
    mkdir -p "$ROOT$(dirname "$2")"
    cp -L --preserve=mode "$1" "$ROOT$2"
}

BINARIES=("$SERVER")
CLI=$(command -v redis-cli || true)
[[ -n "$CLI" && -x "$CLI" ]] && BINARIES+=("$CLI")

declare -A LIBS=()
for bin in "${BINARIES[@]}"; do
    copy_file "$bin" "/usr/bin/$(basename "$bin")"
    # Lines look like "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)",
    # "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)".
    out=$(ldd "$bin") || die "ldd failed for $bin"
    if grep -q 'not found' <<<"$out"; then
        die "ldd reports missing libraries for $bin: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    while read -r path; do
        [[ -n "$path" ]] && LIBS["$path"]=1
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
done
LIBS["/lib64/ld-linux-x86-64.so.2"]=1

for lib in "${!LIBS[@]}"; do
    [[ -e "$lib" ]] || die "library $lib listed by ldd does not exist"
    copy_file "$lib" "$lib"
done

mkdir -p "$ROOT/data" "$ROOT/tmp"
chmod 0777 "$ROOT/data"
chmod 1777 "$ROOT/tmp"

cat >"$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="sluice local redis" \\
      org.opencontainers.image.description="redis-server ${VERSION} from Debian's package, built without a registry" \\
      org.opencontainers.image.version="${VERSION}"
WORKDIR /data
EXPOSE 6379
CMD ["/usr/bin/redis-server", "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--dir", "/data", "--appendonly", "yes", "--save", ""]
EOF

if ! build_log=$(DOCKER_BUILDKIT=0 docker build --pull=false -t "$REF" "$CTX" 2>&1); then
    echo "$build_log" >&2
    die "docker build failed"
fi

echo "build-redis-image: built $REF from redis-server $VERSION (${#LIBS[@]} libraries)${installed_now}"
