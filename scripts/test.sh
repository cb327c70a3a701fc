#!/usr/bin/env bash
# Runs every test of the workspace, integration tests against Redis included.
#
# Redis for the integration tests, in order of preference:
#   SLUICE_TEST_REDIS_URL=redis://host:port   an existing server (no Docker needed)
#   SLUICE_TEST_REDIS_IMAGE / _TAG            a Docker image to start per test
#   redis:7.0 if Docker has it, else a local image built here from Debian's
#   redis-server package (no registry needed): scripts/build-redis-image.sh
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${SLUICE_TEST_REDIS_URL:-}" && -z "${SLUICE_TEST_REDIS_IMAGE:-}" ]]; then
    if ! docker info >/dev/null 2>&1; then
        echo "scripts/test.sh: no Docker daemon: start Docker, or set SLUICE_TEST_REDIS_URL=redis://host:port" >&2
        exit 1
    fi
    if docker image inspect redis:7.0 >/dev/null 2>&1; then
        export SLUICE_TEST_REDIS_IMAGE=redis SLUICE_TEST_REDIS_TAG=7.0
    else
        scripts/build-redis-image.sh
        export SLUICE_TEST_REDIS_IMAGE=sluice/redis-local SLUICE_TEST_REDIS_TAG=7.0
    fi
fi
echo "scripts/test.sh: Redis for integration tests: ${SLUICE_TEST_REDIS_URL:-image ${SLUICE_TEST_REDIS_IMAGE}:${SLUICE_TEST_REDIS_TAG:-7.0}}"
exec cargo test --workspace "$@"
