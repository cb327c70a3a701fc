# Sluice node image for users with a container registry: builds `sluice` and
# `sluice-demo-engine` with the Rust toolchain image and runs them in Debian
# slim as a non-root user (uid 10001).
#
#   docker build -t sluice/node:local .
#   docker run --rm -p 8080:8080 sluice/node:local                 # one node, in-memory broker
#   docker run --rm -p 8080:8080 -e REDIS_URL=redis://host:6379 sluice/node:local
#   docker run --rm --entrypoint sluice-demo-engine -e REDIS_URL=... sluice/node:local
#
# Without a registry, scripts/build-images.sh builds an image with the same
# layout from the binaries built on the host. The base images can be swapped
# (e.g. for a mirror): --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...
#
# Layer caching: the `planner` stage reduces the workspace to its manifests,
# Cargo.lock and empty stubs for every target root, so the dependency build
# below is only redone when a manifest or the lock file changes, not on every
# source edit (the same trick as cargo-chef, without installing it).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- planner: manifests + stubs -----------------------------------------------
FROM ${RUST_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir /plan; \
    find . -path ./target -prune -o -type f \
        \( -name Cargo.toml -o -name Cargo.lock -o -name 'rust-toolchain*' -o -name build.rs -o -path './.cargo/*' \) \
        -exec cp --parents {} /plan/ \; ; \
    for f in $(find . -path ./target -prune -o -type f -name '*.rs' \
            \( -path '*/src/main.rs' -o -path '*/src/bin/*' -o -path '*/examples/*' -o -path '*/benches/*' \) -print); do \
        mkdir -p "/plan/$(dirname "$f")"; echo 'fn main() { }' > "/plan/$f"; \
    done; \
    for f in $(find . -path ./target -prune -o -type f -path '*/src/lib.rs' -print); do \
        mkdir -p "/plan/$(dirname "$f")"; : > "/plan/$f"; \
    done

# --- builder ---------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# 1. dependencies only (cached until a manifest or Cargo.lock changes)
COPY --from=planner /plan/ ./
RUN cargo build --release --locked -p sluice-node -p sluice-demo-engine --bins
# 2. the workspace itself; touch the sources so cargo does not take the stubs
#    built above for up to date
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p sluice-node -p sluice-demo-engine --bins \
    && mkdir /out \
    && cp target/release/sluice target/release/sluice-demo-engine /out/ \
    && objcopy --strip-debug /out/sluice \
    && objcopy --strip-debug /out/sluice-demo-engine

# --- runtime -----------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# curl is only for the HEALTHCHECK (slim has no HTTP client).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 sluice \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sluice
COPY --from=builder /out/sluice /out/sluice-demo-engine /usr/local/bin/
ENV SLUICE_BIND=0.0.0.0:8080 \
    RUST_LOG=info
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# /health answers 200 while the process serves (also while draining or when
# Redis is away: that is what /ready is for). Assumes the default port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
# SIGTERM (docker stop) drains: /ready turns 503 and sessions are closed with
# 1012 over SLUICE_DRAIN_SECONDS (default 10), so give `docker stop` -t 30.
ENTRYPOINT ["/usr/local/bin/sluice"]
