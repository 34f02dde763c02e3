# Shared by bench/run.sh, bench/compare.sh and bench/callgrind.sh (sourced from the
# repository's root): the build settings, the chatd bench configuration, the scenario
# sizes, building a revision, and waiting for a server's port or a process's exit.

# Build settings, each overridable from the environment.
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
CARGO=${CARGO:-cargo}
JOBS=${JOBS:-2}

say() { printf '\n== %s\n' "$*" >&2; }

# chatd's defaults, written into the bench config and told to the robustness scenarios
# (slow compares its memory with max_outbound_bytes, burst waits for the header timeout).
MAX_OUTBOUND_BYTES=1048576
HEADER_TIMEOUT_SECS=10
# The stuck scenario's chatd runs with this idle_timeout_secs (CHATD_IDLE_TIMEOUT_SECS).
STUCK_IDLE_SECS=5

# Writes the bench configuration for the chatd binary $2 to the file $1: loopback, port
# 0, limits raised so that the bench (one client address, many connections, high
# request rates) measures the server rather than its abuse protection. Password hashing
# cost and db_synchronous stay at their defaults. Keys a build does not know (older
# builds, for before/after runs) are left out: chatd refuses unknown keys.
write_chatd_config() {
    local file=$1 binary=$2
    cat > "$file" <<CONF
host = 127.0.0.1
port = 0
cert_file = cert.pem
key_file = key.pem
secret_file = jwt.secret
db_path = chatd.db
public_dir = public
max_connections = 16000
max_connections_per_ip = 16000
http_rate_per_ip = 1000000/s burst 1000000
login_rate_per_ip = 1000000/s burst 1000000
password_hashes_per_sec = 1000
ws_rate = 1000000/s burst 1000000
ws_ping_secs = 5
access_log = false
log_level = warn
max_outbound_bytes = $MAX_OUTBOUND_BYTES
header_timeout_secs = $HEADER_TIMEOUT_SECS
CONF
    # BENCH_DB_SYNC=normal measures what the fsync of every commit costs.
    if [ -n "${BENCH_DB_SYNC:-}" ]; then
        echo "db_synchronous = $BENCH_DB_SYNC" >> "$file"
    fi
    if grep -q conn_rate_per_ip "$binary"; then
        echo 'conn_rate_per_ip = 1000000/s burst 1000000' >> "$file"
    fi
}

# The scenarios' flags: full size, or small and short with BENCH_QUICK=1.
scenario_sizes() {
    if [ "${1:-0}" = 1 ]; then
        IDLE=(--connections 500 --hold 6)
        FANOUT=(--members 100 --senders 5 --rate 20 --duration 3)
        FANMAX=(--members 100 --senders 5 --duration 2 --max true --max-start 20000 --max-limit 400000 --max-steps 6)
        ROOMS=(--rooms 50 --room-size 10 --rate 5 --duration 3)
        INGEST=(--connections 20 --window 8 --duration 3)
        HTTP=(--connections 20 --duration 3)
        WRK="-t1 -c100 -d3s"
        STORM=(--members 100 --senders 5 --rate 20 --duration 3)
        SLOW=(--members 100 --slow 10 --senders 10 --rate 20 --duration 10 --baseline 2)
        BURST=(--connections 1000 --silent 50 --hold 1)
        STUCK=(--connections 4)
        WARM=(--warmup 1)
    else
        IDLE=(--connections 10000 --hold 8)
        FANOUT=(--members 1000 --senders 10 --rate 10 --duration 10)
        FANMAX=(--members 1000 --senders 10 --duration 5 --max true --max-start 100000 --max-limit 8000000)
        ROOMS=(--rooms 1000 --room-size 10 --rate 5 --duration 10)
        INGEST=(--connections 100 --window 8 --duration 10)
        HTTP=(--connections 50 --duration 10)
        WRK="-t1 -c100 -d10s"
        STORM=(--members 1000 --senders 10 --rate 10 --duration 10 --login-rate 20)
        SLOW=(--members 1000 --slow 100 --senders 10 --rate 10 --duration 20)
        BURST=(--connections 10000 --silent 200 --hold 2)
        STUCK=(--connections 10)
        WARM=(--warmup 2)
    fi
}

# Waits for "listening on https://HOST:PORT" in a file; prints PORT. The caller empties
# the file before starting the process (`: >FILE`): the `>FILE` of a command started
# with `&` is applied by the child, possibly after this looks, and a file left from an
# earlier run would yield that run's port.
wait_port() {
    local file=$1 pid=$2
    for _ in $(seq 1 200); do
        if grep -q 'listening on https://' "$file" 2>/dev/null; then
            grep -o 'listening on https://[^ ]*' "$file" | head -1 | sed 's/.*://'
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; return 1; }
        sleep 0.1
    done
    echo "bench: no port from $file" >&2
    return 1
}

# Whether our child PID has exited (gone, or a zombie waiting for `wait`).
exited() {
    [ ! -e "/proc/$1" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" = Z ]
}

# Builds chatd as of git revision $1 in a temporary worktree at $2 (release, into
# $TARGET_DIR/compare, so that revisions share their dependencies' builds) and copies
# the binary to $3. The worktree is removed whether the build worked or not.
build_revision() {
    local rev=$1 tree=$2 dest=$3 rc=0
    git worktree add --detach --quiet "$tree" "$rev"
    (cd "$tree" && CARGO_TARGET_DIR="$TARGET_DIR/compare" $CARGO build --release -j"$JOBS" -p chatd) >&2 || rc=$?
    [ "$rc" != 0 ] || cp "$TARGET_DIR/compare/release/chatd" "$dest" || rc=$?
    git worktree remove --force "$tree"
    return "$rc"
}
