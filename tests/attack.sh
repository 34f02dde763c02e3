#!/usr/bin/env bash
# `make attack`: the attack checks of tests/attack.rs against the real chatd, one at a
# time, each with its own chatd; every check prints a PASS or FAIL line with its figures.
# Needs testssl.sh and slowhttptest (Debian packages), and root for the disk-full check
# (a tmpfs in a mount namespace of its own). ATTACKS="name ..." runs only those checks.
set -uo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
JOBS=${JOBS:-2}
ATTACKS=${ATTACKS:-"attack_tls_testssl attack_slowloris attack_slow_body attack_slow_read
    attack_slow_read_large attack_silent_connections attack_slow_websockets attack_disk_full"}

# The checks open thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$CARGO" test -j"$JOBS" --test attack --no-run || exit 1

passed=0
failed=0
for name in $ATTACKS; do
    echo "== $name"
    log=$(mktemp)
    # Each check bounds its own waits; the outer limit only stops a hung process.
    timeout --kill-after=10 600 "$CARGO" test -q -j"$JOBS" --test attack -- \
        --ignored --exact "$name" --nocapture --test-threads=1 >"$log" 2>&1
    rc=$?
    grep -E '^(PASS|FAIL) ' "$log"
    if [ "$rc" -eq 0 ] && grep -q '^PASS ' "$log"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        if ! grep -q '^FAIL ' "$log"; then
            echo "FAIL $name: stopped early (exit $rc); its output:"
            tail -n 40 "$log"
        fi
    fi
    rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
