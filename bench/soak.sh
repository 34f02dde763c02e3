#!/usr/bin/env bash
# `make soak` / `make soak-ci`: one chatd (release build, the bench configuration, in a
# temp dir, on 127.0.0.1) under `chatbench soak` for SOAK_SECS with SOAK_CLIENTS clients
# churning, then until it is idle again. Fails unless chatd exits 0 on SIGTERM, logged no
# error, and every figure of the run passes `chatbench check` (no lost or duplicated
# message, no unexpected close, memory, descriptors and gauges back to idle).
#
#   SOAK_SECS=1800     the load's length in seconds
#   SOAK_CLIENTS=2000  clients churning
#   SOAK_USERS=200     accounts they are spread over (registered once, tokens reused)
#   SOAK_ROOMS=100     rooms in the pool
#   SOAK_ARGS="..."    more chatbench soak flags (bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SOAK_SECS:-1800}
CLIENTS=${SOAK_CLIENTS:-2000}
USERS=${SOAK_USERS:-200}
ROOMS=${SOAK_ROOMS:-100}

# TARGET_DIR, CARGO, JOBS; say, write_chatd_config, wait_port, exited
source bench/common.sh

say "building release binaries"
$CARGO build --release -j"$JOBS" -p chatd -p chatbench
CHATD=$TARGET_DIR/release/chatd
BENCH=$TARGET_DIR/release/chatbench

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatsoak.XXXXXX")
CHATD_PID=""
cleanup() {
    if [ -n "$CHATD_PID" ]; then
        kill "$CHATD_PID" 2>/dev/null || true
        wait "$CHATD_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/public" bench/results
echo '<!doctype html><title>chatd soak</title>' > "$TMP/public/index.html"
write_chatd_config "$TMP/chatd.conf" "$CHATD"
# Every client holds a descriptor on each side.
ulimit -n "$(ulimit -Hn)" || true

: >"$TMP/chatd.out"
"$CHATD" --config "$TMP/chatd.conf" >"$TMP/chatd.out" 2>"$TMP/chatd.err" &
CHATD_PID=$!
PORT=$(wait_port "$TMP/chatd.out" "$CHATD_PID")
say "chatd pid $CHATD_PID on 127.0.0.1:$PORT: $CLIENTS clients for $SECS s"

RESULTS=bench/results/soak-latest.json
rm -f "$RESULTS"
# Bounded twice: the soak's own phases (the load, at most a minute to bring every
# client back, at most 90 s to settle) and this backstop.
# shellcheck disable=SC2086
timeout --kill-after=10 $((SECS + 600)) "$BENCH" soak --addr "127.0.0.1:$PORT" --ca "$TMP/cert.pem" \
    --server-pid "$CHATD_PID" --tokens "$TMP/tokens.json" --users "$USERS" --results "$RESULTS" \
    --secs "$SECS" --clients "$CLIENTS" --rooms "$ROOMS" ${SOAK_ARGS:-} || rc=$?

FAILURES=()
[ "${rc:-0}" = 0 ] || FAILURES+=("chatbench soak exited ${rc}")
kill -TERM "$CHATD_PID"
for _ in $(seq 1 150); do
    exited "$CHATD_PID" && break
    sleep 0.1
done
if ! exited "$CHATD_PID"; then
    FAILURES+=("chatd still running 15 s after SIGTERM")
    kill -KILL "$CHATD_PID" 2>/dev/null || true
fi
chatd_rc=0
wait "$CHATD_PID" || chatd_rc=$?
CHATD_PID=""
[ "$chatd_rc" = 0 ] || FAILURES+=("chatd exited $chatd_rc on SIGTERM")
if grep -qiE 'panick|error' "$TMP/chatd.err"; then
    FAILURES+=("chatd logged: $(grep -iE 'panick|error' "$TMP/chatd.err" | head -3)")
fi

ARCHIVE=bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ).json
[ -f "$RESULTS" ] && cp "$RESULTS" "$ARCHIVE" && say "results kept as $ARCHIVE"
"$BENCH" check --results "$RESULTS" || FAILURES+=("the soak's figures fail chatbench check")
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'soak: %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
say "soak passed: chatd exited 0 on SIGTERM, logged no error; results in $RESULTS"
