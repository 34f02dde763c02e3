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
# builds, for before/after runs) are left out: chatd refuses unknown keys. $3, if given,
# is a postgres:// URL: the database instead of the SQLite file (its other keys stay at
# their defaults; the password comes from CHATD_DATABASE_PASSWORD).
write_chatd_config() {
    local file=$1 binary=$2 database=${3:-}
    cat > "$file" <<CONF
host = 127.0.0.1
port = 0
cert_file = cert.pem
key_file = key.pem
secret_file = jwt.secret
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
    if [ -n "$database" ]; then
        echo "database = $database" >> "$file"
    else
        echo "db_path = chatd.db" >> "$file"
    fi
    # BENCH_DB_SYNC=normal measures what the fsync of every commit costs (SQLite).
    if [ -n "${BENCH_DB_SYNC:-}" ] && [ -z "$database" ]; then
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
        INGEST_RATE=(--connections 20 --rate 2000 --duration 3)
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
        INGEST_RATE=(--connections 100 --rate 10000 --duration 10)
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

# --- PostgreSQL for BENCH_DB=postgres|both ---------------------------------------------
# A server of its own from Debian's binaries, in a temp dir, as the unprivileged user
# `nobody` when run as root (PostgreSQL refuses root), on a free loopback port: initdb
# with a superuser `chatd` and a random password (SCRAM-SHA-256 for every connection),
# then a database `chat`. The settings it is given are in PG_SETTINGS; everything else
# is PostgreSQL's default. BENCH_PG_STATEMENTS=1 also loads pg_stat_statements (reset
# by pg_statements_reset, listed by pg_statements_top).

# fsync and synchronous_commit are on, their defaults, written out because the figures
# depend on them: "acknowledged" means flushed to PostgreSQL's WAL. shared_buffers holds
# the bench's database (a few hundred MiB after the ingest runs) in memory.
PG_SETTINGS=(fsync=on synchronous_commit=on shared_buffers=512MB listen_addresses=127.0.0.1)

# The newest /usr/lib/postgresql/N/bin with postgres and initdb, or nothing.
pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Runs a command as the server's user (`nobody` when we are root).
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"
    else
        "$@"
    fi
}

# Starts PostgreSQL in a new directory under /tmp (the server's user must reach it).
# Sets PG_DIR, PG_PID (the postmaster: setpriv execs), PG_PORT, PG_PASSWORD, PG_URL.
start_postgres() {
    local bin=$1 port_tool=$2
    PG_DIR=$(mktemp -d /tmp/chatbench-pg.XXXXXX)
    PG_PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$PG_PASSWORD" > "$PG_DIR/pwfile"
    mkdir "$PG_DIR/sock"
    [ "$(id -u)" -ne 0 ] || chown -R nobody:nogroup "$PG_DIR"
    as_pg_user env HOME="$PG_DIR" "$bin/initdb" -D "$PG_DIR/data" -U chatd -E UTF8 --no-locale \
        --auth=scram-sha-256 --pwfile="$PG_DIR/pwfile" >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    rm -f "$PG_DIR/pwfile"
    PG_PORT=$("$port_tool" free-port)
    local settings=() s
    for s in "${PG_SETTINGS[@]}"; do settings+=(-c "$s"); done
    if [ "${BENCH_PG_STATEMENTS:-0}" = 1 ]; then
        settings+=(-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all)
    fi
    as_pg_user env HOME="$PG_DIR" "$bin/postgres" -D "$PG_DIR/data" -k "$PG_DIR/sock" \
        -p "$PG_PORT" "${settings[@]}" >"$PG_DIR/postgres.log" 2>&1 </dev/null &
    PG_PID=$!
    PG_BIN=$bin
    local ready=0
    for _ in $(seq 1 300); do
        if ! kill -0 "$PG_PID" 2>/dev/null; then
            cat "$PG_DIR/postgres.log" >&2
            return 1
        fi
        if pg_sql postgres "SELECT 1" >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [ "$ready" = 1 ] || { echo "bench: PostgreSQL did not start" >&2; cat "$PG_DIR/postgres.log" >&2; return 1; }
    pg_sql postgres "CREATE DATABASE chat" >/dev/null
    if [ "${BENCH_PG_STATEMENTS:-0}" = 1 ]; then
        pg_sql chat "CREATE EXTENSION pg_stat_statements" >/dev/null
    fi
    PG_URL="postgres://chatd@127.0.0.1:$PG_PORT/chat"
}

# psql against database $1 over loopback TCP with the password: the SQL $2.
pg_sql() {
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 \
        -p "$PG_PORT" -U chatd -d "$1" -c "$2"
}

pg_statements_reset() {
    [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] || return 0
    pg_sql chat "SELECT pg_stat_statements_reset()" >/dev/null
}

# The statements that took the most time since the last reset, to stdout.
pg_statements_top() {
    [ "${BENCH_PG_STATEMENTS:-0}" = 1 ] || return 0
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U chatd -d chat -c \
        "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
                round(mean_exec_time::numeric, 4) AS mean_ms, rows,
                left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
           FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15"
}

# Stops PostgreSQL by its PID (a fast shutdown, SIGKILL after 30 s) and removes its
# directory.
stop_postgres() {
    if [ -z "${PG_PID:-}" ]; then
        # initdb may have failed before the server started: its directory still goes.
        [ -z "${PG_DIR:-}" ] || rm -rf "$PG_DIR"
        return 0
    fi
    kill -INT "$PG_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do
        exited "$PG_PID" && break
        sleep 0.1
    done
    exited "$PG_PID" || kill -KILL "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
    PG_PID=""
    rm -rf "$PG_DIR"
}
