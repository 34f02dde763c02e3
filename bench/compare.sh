#!/usr/bin/env bash
# Before and after: measures several chatd builds with today's chatbench, alternating
# the builds run by run (a fresh chatd each time, one database and token cache for all),
# so that drift on a noisy machine hits every build alike, then prints each build's
# medians side by side (`chatbench report --compare true`).
#
#   bench/compare.sh REV|BINARY ...      e.g. bench/compare.sh HEAD~3 HEAD
#   COMPARE_SCENARIOS=idle,fanout,ingest,http   (any of idle fanout rooms ingest http)
#   COMPARE_ROUNDS=3                     runs of each scenario per build
#   BENCH_QUICK=1                        small sizes, as in make bench
#
# A revision is checked out in a temporary worktree and built (release) into
# target/compare; a path to an executable is measured as it is. The scenario sizes and
# the chatd configuration are those of make bench (bench/common.sh). Results land in
# bench/results/compare.json. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${COMPARE_ROUNDS:-3}
IFS=, read -r -a SCENARIOS <<<"${COMPARE_SCENARIOS:-idle,fanout,ingest,http}"
source bench/common.sh
scenario_sizes "${BENCH_QUICK:-0}"

if [ $# -lt 1 ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatd-compare.XXXXXX")
CHATD_PID=""
cleanup() {
    if [ -n "$CHATD_PID" ]; then
        kill "$CHATD_PID" 2>/dev/null || true
        wait "$CHATD_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    git worktree prune
}
trap cleanup EXIT

say "building chatbench"
$CARGO build --release -j"$JOBS" -p chatbench
BENCH=$TARGET_DIR/release/chatbench

# Each argument becomes a binary in $TMP and a label for the results.
BINARIES=() LABELS=()
for what in "$@"; do
    if [ -f "$what" ] && [ -x "$what" ]; then
        label=$(basename "$what")
        cp "$what" "$TMP/chatd-$label"
    else
        rev=$(git rev-parse --short "$what^{commit}")
        label=$rev
        say "building chatd at $what ($rev)"
        build_revision "$rev" "$TMP/src-$rev" "$TMP/chatd-$label"
    fi
    BINARIES+=("$TMP/chatd-$label")
    LABELS+=("$label")
done

mkdir -p bench/results
RESULTS=bench/results/compare.json
rm -f "$RESULTS"
FAILURES=()

# Every build has a directory of its own (configuration, certificate, secret, database,
# token cache): a newer build migrates the database to a schema an older one refuses.
dir_of() { echo "$TMP/run-$1"; }

# Starts build number $1; sets CHATD_PID, CHATD_PORT and DIR.
start_chatd() {
    DIR=$(dir_of "$1")
    write_chatd_config "$DIR/chatd.conf" "${BINARIES[$1]}"
    : >"$DIR/chatd.out"
    "${BINARIES[$1]}" --config "$DIR/chatd.conf" >"$DIR/chatd.out" 2>"$DIR/chatd.err" &
    CHATD_PID=$!
    CHATD_PORT=$(wait_port "$DIR/chatd.out" "$CHATD_PID") || {
        cat "$DIR/chatd.err" >&2
        return 1
    }
}
# SIGTERM: the build must exit 0 within 15 s.
stop_chatd() {
    local rc=0
    kill -TERM "$CHATD_PID"
    for _ in $(seq 1 150); do
        exited "$CHATD_PID" && break
        sleep 0.1
    done
    exited "$CHATD_PID" || kill -KILL "$CHATD_PID" 2>/dev/null || true
    wait "$CHATD_PID" || rc=$?
    CHATD_PID=""
    [ "$rc" = 0 ] || FAILURES+=("$1: chatd exited $rc on SIGTERM")
}

for i in "${!BINARIES[@]}"; do
    dir=$(dir_of "$i")
    mkdir -p "$dir/public"
    echo '<!doctype html><title>chatd</title><p>compare</p>' > "$dir/public/index.html"
    say "accounts for ${LABELS[$i]}: register and log in the bench users once"
    start_chatd "$i"
    "$BENCH" accounts --addr "127.0.0.1:$CHATD_PORT" --ca "$dir/cert.pem" \
        --tokens "$dir/tokens.json" --users 100
    stop_chatd "${LABELS[$i]} accounts"
done

for round in $(seq 1 "$ROUNDS"); do
    for scenario in "${SCENARIOS[@]}"; do
        case $scenario in
            idle) flags=("${IDLE[@]}") ;;
            fanout) flags=("${FANOUT[@]}" "${WARM[@]}") ;;
            rooms) flags=("${ROOMS[@]}" "${WARM[@]}") ;;
            ingest) flags=("${INGEST[@]}") ;;
            http) flags=("${HTTP[@]}") ;;
            *) echo "compare: unknown scenario $scenario" >&2; exit 2 ;;
        esac
        for i in "${!BINARIES[@]}"; do
            say "round $round/$ROUNDS, $scenario: ${LABELS[$i]}"
            start_chatd "$i"
            timeout --kill-after=10 600 "$BENCH" "$scenario" --addr "127.0.0.1:$CHATD_PORT" \
                --ca "$DIR/cert.pem" --tokens "$DIR/tokens.json" --users 100 \
                --server-pid "$CHATD_PID" --label "${LABELS[$i]}" --results "$RESULTS" \
                "${flags[@]}" >/dev/null ||
                FAILURES+=("${LABELS[$i]} $scenario: chatbench failed")
            stop_chatd "${LABELS[$i]} $scenario"
        done
    done
done

say "medians of $ROUNDS runs ($RESULTS)"
"$BENCH" report --results "$RESULTS" --compare true
# A run that lost deliveries or failed connections would skew its build's medians.
"$BENCH" check --results "$RESULTS" || FAILURES+=("a run lost deliveries or failed connections")
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'compare: %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
