#!/usr/bin/env bash
# chatd's user-space instructions per fan-out delivery, counted by callgrind: a figure
# that other load on the machine does not move (CPU time does), for machines without
# hardware counters (where BENCH_PERFSTAT cannot count).
#
#   bench/callgrind.sh [REV|BINARY ...]     default: the current release build
#   CALLGRIND_MEMBERS=500 CALLGRIND_SENDERS=2 CALLGRIND_RATE=5   (5,000 deliveries/s)
#
# For each build: chatd runs under `valgrind --tool=callgrind --instr-atstart=no`,
# `callgrind_control -i on` switches counting on, a fanout runs for 4 s; then the same
# with a fresh chatd for 12 s. The difference of the two totals over the difference of
# the deliveries is the cost of one delivery: start-up, handshakes and joins, the same
# in both runs, cancel out. A revision is built into target/compare (as compare.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MEMBERS=${CALLGRIND_MEMBERS:-500}
SENDERS=${CALLGRIND_SENDERS:-2}
RATE=${CALLGRIND_RATE:-5}
source bench/common.sh
source .ci/apt_install.sh
command -v valgrind >/dev/null || apt_install valgrind

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatd-callgrind.XXXXXX")
CHATD_PID=""
cleanup() {
    if [ -n "$CHATD_PID" ]; then
        kill "$CHATD_PID" 2>/dev/null || true
        wait "$CHATD_PID" 2>/dev/null || true
    fi
    [ -n "${CALLGRIND_KEEP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

$CARGO build --release -j"$JOBS" -p chatd -p chatbench
BENCH=$TARGET_DIR/release/chatbench
[ $# -gt 0 ] || set -- "$TARGET_DIR/release/chatd"

# Prints the binary to measure for a revision or a path.
binary_of() {
    if [ -f "$1" ] && [ -x "$1" ]; then
        echo "$1"
        return
    fi
    local rev
    rev=$(git rev-parse --short "$1^{commit}")
    build_revision "$rev" "$TMP/src-$rev" "$TMP/chatd-$rev"
    echo "$TMP/chatd-$rev"
}

# One counted fanout of $2 seconds against the build $1 in directory $3: prints
# "instructions deliveries".
counted_run() {
    local binary=$1 secs=$2 dir=$3 out="$3/callgrind.$2"
    write_chatd_config "$dir/chatd.conf" "$binary"
    : >"$dir/chatd.out"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$binary" --config "$dir/chatd.conf" >"$dir/chatd.out" 2>"$dir/chatd.err" &
    CHATD_PID=$!
    local port
    port=$(wait_port "$dir/chatd.out" "$CHATD_PID")
    callgrind_control -i on "$CHATD_PID" >/dev/null
    rm -f "$dir/result.json"
    timeout --kill-after=10 300 "$BENCH" fanout --addr "127.0.0.1:$port" --ca "$dir/cert.pem" \
        --tokens "$dir/tokens.json" --users 100 --server-pid "$CHATD_PID" \
        --results "$dir/result.json" --members "$MEMBERS" --senders "$SENDERS" \
        --rate "$RATE" --duration "$secs" --warmup 0 >"$dir/fanout.out" 2>&1 || {
        echo "callgrind: the ${secs} s fanout failed:" >&2
        cat "$dir/fanout.out" >&2
        return 1
    }
    callgrind_control -i off "$CHATD_PID" >/dev/null
    kill -TERM "$CHATD_PID"
    wait "$CHATD_PID" || true
    CHATD_PID=""
    local instructions deliveries
    instructions=$(grep -E '^totals:' "$out" | head -1 | awk '{print $2}')
    deliveries=$(grep -o '"deliveries_received": *[0-9]*' "$dir/result.json" | head -1 | grep -o '[0-9]*$')
    echo "$instructions $deliveries"
}

printf '%-24s %18s\n' "build" "instructions/delivery"
for what in "$@"; do
    binary=$(binary_of "$what")
    dir="$TMP/run-$(basename "$binary")"
    mkdir -p "$dir/public"
    echo '<!doctype html><title>chatd</title>' > "$dir/public/index.html"
    # The accounts first, without valgrind (argon2 under it would take minutes).
    write_chatd_config "$dir/chatd.conf" "$binary"
    : >"$dir/chatd.out"
    "$binary" --config "$dir/chatd.conf" >"$dir/chatd.out" 2>"$dir/chatd.err" &
    CHATD_PID=$!
    "$BENCH" accounts --addr "127.0.0.1:$(wait_port "$dir/chatd.out" "$CHATD_PID")" \
        --ca "$dir/cert.pem" --tokens "$dir/tokens.json" --users 100 >&2
    kill -TERM "$CHATD_PID"
    wait "$CHATD_PID" || true
    CHATD_PID=""
    read -r short_i short_d < <(counted_run "$binary" 4 "$dir")
    read -r long_i long_d < <(counted_run "$binary" 12 "$dir")
    if [ "$long_d" -le "$short_d" ]; then
        echo "callgrind: the longer run delivered no more than the shorter one" >&2
        exit 1
    fi
    printf '%-24s %18d\n' "$what" $(((long_i - short_i) / (long_d - short_d)))
done
