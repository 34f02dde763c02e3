#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for FUZZ_SECS seconds each,
# one at a time and with one worker, and prints libFuzzer's final figures. New inputs
# go to fuzz/target/corpus/<target> (the committed corpus is read, never written);
# a crash stops the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECS=${FUZZ_SECS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-http_request ws_frame chat_request config jwt session}
CARGO=${CARGO:-cargo}
export CARGO_BUILD_JOBS=${JOBS:-2}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    "$CARGO" install cargo-fuzz --locked
fi

# No sanitizer: chatd is safe Rust, and the C libraries (SQLite, aws-lc) are not built
# with one anyway; debug assertions and overflow checks stay on.
"$CARGO" +nightly fuzz build -s none
for target in $FUZZ_TARGETS; do
    work=target/corpus/$target
    log=target/fuzz-$target.log
    mkdir -p "$work"
    echo "== $target: ${FUZZ_SECS}s"
    if ! "$CARGO" +nightly fuzz run -s none --jobs 1 "$target" "$work" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECS" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "$target FAILED: input in fuzz/artifacts/$target/, log in fuzz/$log" >&2
        exit 1
    fi
    grep -aE '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
done
