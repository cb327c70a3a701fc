#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on the nightly toolchain and fails on
# the first crash. Usage: fuzz/run.sh [SECONDS_PER_TARGET] (default 60).
# A crash leaves its input in fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=(client_frame topic stream_entry token ws_frame)
features=()
# The PROXY header parser may not be on this branch yet: fuzz it once it is.
if [[ -f ../node/src/net/proxy.rs || -f ../node/src/net/proxy/mod.rs ]]; then
    targets+=(proxy_header)
    features=(--features proxy)
fi

# One build for all targets (release, debug assertions, AddressSanitizer).
cargo +nightly fuzz build -O "${features[@]}"

summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    echo "== fuzz $t (${secs}s) =="
    # -rss_limit_mb: a parser that balloons memory counts as a crash too.
    if ! cargo +nightly fuzz run -O "${features[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz/run.sh: target $t crashed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || echo 'cov: ?')"
    summary+=("$t: ${runs} execs in ${secs}s, ${cov}, 0 crashes")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} passed, 0 failed"
