#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process integration tests, Redis
# tests in containers, and the failover test through HAProxy in containers.
#
# Images (no registry needed: built here from Debian packages and this tree):
#   scripts/build-images.sh builds sluice/node:local, sluice/haproxy:local and the
#   local Redis image (also tagged redis:7.0 when that name is free).
# Redis for the tests, in order of preference:
#   SLUICE_TEST_REDIS_URL=redis://host:port   an existing server for the Redis tests
#                                             (the container tests still need Docker)
#   SLUICE_TEST_REDIS_IMAGE / _TAG            the image to start per test
#   otherwise redis:7.0 (the official image, or the local build under that name)
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
    echo "scripts/test.sh: no Docker daemon: the container tests need one (start Docker or set DOCKER_HOST)" >&2
    exit 1
fi
scripts/build-images.sh
# tests/tests/browser.rs drives headless Chromium through chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    sudo=(); ((EUID == 0)) || sudo=(sudo)
    command -v apt-get >/dev/null 2>&1 || { echo "scripts/test.sh: chromium and chromium-driver are missing and apt-get is not available" >&2; exit 1; }
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
if [[ -z "${SLUICE_TEST_REDIS_IMAGE:-}" ]]; then
    if docker image inspect redis:7.0 >/dev/null 2>&1; then
        export SLUICE_TEST_REDIS_IMAGE=redis SLUICE_TEST_REDIS_TAG=7.0
    else
        export SLUICE_TEST_REDIS_IMAGE=sluice/redis-local SLUICE_TEST_REDIS_TAG=7.0
    fi
fi
echo "scripts/test.sh: Redis for tests: ${SLUICE_TEST_REDIS_URL:-image ${SLUICE_TEST_REDIS_IMAGE}:${SLUICE_TEST_REDIS_TAG:-7.0}}"
exec cargo test --workspace --no-fail-fast "$@"
