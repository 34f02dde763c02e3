#!/usr/bin/env bash
# `make bench`: builds release binaries, starts chatd with a bench configuration and the
# reference peers (Node.js `ws`, nginx), runs the scenarios with chatbench, prints the
# table and writes bench/results/latest.json. Everything listens on 127.0.0.1, every
# run is bounded in time, every process started here is stopped by its PID.
#
#   SCENARIO=all|idle|fanout|fanout-aligned|fanout-max|rooms|ingest|ingest-rate|http|static|login-storm|slow|burst|stuck
#                   (several, separated by commas: SCENARIO=idle,fanout,ingest)
#   BENCH_QUICK=1   small N and short T, for development
#   BENCH_DB=sqlite|postgres|both  chatd's database: its SQLite file (the default), a
#                   PostgreSQL started here (bench/common.sh, start_postgres), or each
#                   chatd run on both, alternating, then side by side with ratios
#   BENCH_PG_STATEMENTS=1  load pg_stat_statements and print PostgreSQL's costliest
#                   statements after each chatd run on it
#   BENCH_PERF=fanout  perf record on chatd during that scenario (idle, fanout or ingest; 1
#                   means fanout); BENCH_PERF_ARGS / BENCH_PERF_REPORT pass flags to perf
#   BENCH_REPEAT=3  run each chatd scenario this many times (a fresh chatd each time),
#                   to quote medians on a noisy machine
#   BENCH_PERFSTAT=1  count chatd's instructions (user, kernel) over each of its runs with
#                   `perf stat`: a figure that other load on the machine does not move
#   BENCH_REF=0     skip the reference peers (Node.js ws, nginx) while iterating on chatd
#   BENCH_NICE=-10  run the bench (servers, peers, clients) at this nice value, so other
#                   load on a shared machine skews the figures less (negative needs root)
#   BENCH_DB_SYNC=normal  chatd with db_synchronous = normal (what the fsync of every
#                   commit costs); the default is chatd's own (full); SQLite only
#
# It fails if chatd does not exit 0 on SIGTERM after a scenario, logs an error, or any
# run lost a delivery, failed a connection, saw a close it did not expect or lacks its
# figures (`chatbench check`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCENARIO=${SCENARIO:-all}
SCENARIOS="all idle fanout fanout-aligned fanout-max rooms ingest ingest-rate http static login-storm slow burst stuck"
for one in ${SCENARIO//,/ }; do
    case " $SCENARIOS " in
        *" $one "*) ;;
        *) echo "bench: unknown SCENARIO=$one (one of: $SCENARIOS)" >&2; exit 2 ;;
    esac
done
QUICK=${BENCH_QUICK:-0}
REPEAT=${BENCH_REPEAT:-1}
REF=${BENCH_REF:-1}
case "${BENCH_DB:=sqlite}" in
    sqlite|postgres) DBS=$BENCH_DB ;;
    both) DBS="sqlite postgres" ;;
    *) echo "bench: unknown BENCH_DB=$BENCH_DB (sqlite, postgres or both)" >&2; exit 2 ;;
esac
# Every chatd run of a scenario: REPEAT rounds, each on every database in turn, so that
# drift on a shared machine hits both backends alike.
CHATD_RUNS=$(for _ in $(seq 1 "$REPEAT"); do echo $DBS; done)

# TARGET_DIR, CARGO, JOBS; say, write_chatd_config, scenario_sizes, wait_port, exited
source bench/common.sh

if [ -n "${BENCH_NICE:-}" ] && [ "$BENCH_NICE" != 0 ]; then
    # Children inherit it: chatd, the peers, chatbench and wrk all run at this priority.
    renice -n "$BENCH_NICE" -p $$ >/dev/null
    say "running at nice $BENCH_NICE"
fi

# --- tools ---------------------------------------------------------------------------
# wrk and nginx for the HTTP reference, Node.js and npm for the ws reference peer
# (Debian's nodejs is recent enough for it).
source .ci/apt_install.sh
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ "$BENCH_DB" != sqlite ] && ! pg_bin >/dev/null; then
    need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    apt_install "${need_apt[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

say "building release binaries"
$CARGO build --release -j"$JOBS" -p chatd -p chatbench
# BENCH_CHATD=/path/to/chatd measures another build (A/B comparisons).
CHATD=${BENCH_CHATD:-$TARGET_DIR/release/chatd}
BENCH=$TARGET_DIR/release/chatbench

say "installing the reference peer (npm ci)"
(cd bench/node-ws && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# --- temp dir, config, processes -------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatbench.XXXXXX")
CHATD_PID="" NODE_PID="" NGINX_PID="" PERF_PID="" PG_PID=""
cleanup() {
    for pid in $PERF_PID ${STAT_PID:-} $CHATD_PID $NODE_PID $NGINX_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $PERF_PID ${STAT_PID:-} $CHATD_PID $NODE_PID $NGINX_PID; do
        wait "$pid" 2>/dev/null || true
    done
    stop_postgres
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/public" bench/results
cat > "$TMP/public/index.html" <<'HTML'
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatd bench</title></head>
<body><h1>chatd</h1><p>A small static file for the HTTP benchmark: chatd and nginx serve
the same bytes.</p></body></html>
HTML
# The stuck scenario's answer: larger than the kernel buffers of both ends (about 4 MiB
# on loopback), within chatd's largest static file (8 MiB).
head -c $((6 << 20)) /dev/zero > "$TMP/public/big.bin"
write_chatd_config "$TMP/chatd.conf" "$CHATD"
if [ "$BENCH_DB" != sqlite ]; then
    say "PostgreSQL for chatd: ${PG_SETTINGS[*]}, everything else default"
    start_postgres "$(pg_bin)" "$BENCH"
    say "postgres pid $PG_PID on 127.0.0.1:$PG_PORT ($("$PG_BIN/postgres" --version)), directory $PG_DIR"
    write_chatd_config "$TMP/chatd-pg.conf" "$CHATD" "$PG_URL"
fi

# Each scenario gets a fresh chatd (same database, secret and certificate, so the
# cached tokens stay valid): memory figures start from a clean heap, and every
# scenario ends with the SIGTERM check.
RUNS=0
FAILURES=()
STAT_PID=""
# chatd on the database $db (sqlite or postgres; the scenario loops set it): its own
# config, tokens (the accounts are registered in each database) and result label
# (chatd, chatd-pg); on PostgreSQL chatbench also measures the postmaster's tree.
start_chatd() {
    RUNS=$((RUNS + 1))
    local config=$TMP/chatd.conf
    CHATD_LABEL=chatd DB_ARGS=() TOKENS=$TMP/tokens.json
    if [ "${db:-sqlite}" = postgres ]; then
        config=$TMP/chatd-pg.conf CHATD_LABEL=chatd-pg TOKENS=$TMP/tokens-pg.json
        DB_ARGS=(--db-pid "$PG_PID")
        pg_statements_reset
    fi
    : >"$TMP/chatd.$RUNS.out"
    CHATD_DATABASE_PASSWORD=${PG_PASSWORD:-} "$CHATD" --config "$config" \
        >"$TMP/chatd.$RUNS.out" 2>"$TMP/chatd.$RUNS.err" &
    CHATD_PID=$!
    CHATD_PORT=$(wait_port "$TMP/chatd.$RUNS.out" "$CHATD_PID")
    if [ "${BENCH_PERFSTAT:-0}" = 1 ] && command -v perf >/dev/null; then
        perf stat -x, -e ${BENCH_PERFSTAT_EVENTS:-instructions:u,instructions:k,cycles:u,cycles:k} -p "$CHATD_PID" \
            -o "$TMP/perfstat.$RUNS" 2>/dev/null &
        STAT_PID=$!
    fi
    CHATD_ARGS=(--addr "127.0.0.1:$CHATD_PORT" --server-pid "$CHATD_PID" --label "$CHATD_LABEL"
        "${DB_ARGS[@]}" "${COMMON[@]}" --tokens "$TOKENS")
}
# Stops chatd with SIGTERM: it must exit 0 (within 15 s) and have logged no error.
stop_chatd() {
    local what=$1 rc=0
    if [ -n "$STAT_PID" ]; then
        kill -INT "$STAT_PID"; wait "$STAT_PID" || true
        STAT_PID=""
        printf '%s: chatd instructions (user, kernel), cycles (user, kernel): %s\n' "$what" \
            "$(grep -E "instructions|cycles" "$TMP/perfstat.$RUNS" | cut -d, -f1 | paste -sd' ')" \
            | tee -a bench/results/perfstat.txt >&2
    fi
    kill -TERM "$CHATD_PID"
    for _ in $(seq 1 150); do
        exited "$CHATD_PID" && break
        sleep 0.1
    done
    if ! exited "$CHATD_PID"; then
        FAILURES+=("$what: chatd still running 15 s after SIGTERM")
        kill -KILL "$CHATD_PID" 2>/dev/null || true
    fi
    wait "$CHATD_PID" || rc=$?
    CHATD_PID=""
    if [ "$rc" != 0 ]; then
        FAILURES+=("$what: chatd exited $rc on SIGTERM")
    fi
    if grep -qiE 'panick|error' "$TMP/chatd.$RUNS.err"; then
        FAILURES+=("$what: chatd logged: $(grep -iE 'panick|error' "$TMP/chatd.$RUNS.err" | head -3)")
    fi
    echo "chatd ($CHATD_LABEL) exited $rc on SIGTERM after $what" >&2
    if [ "$CHATD_LABEL" = chatd-pg ] && [ "${BENCH_PG_STATEMENTS:-0}" = 1 ]; then
        say "PostgreSQL's costliest statements during $what (bench/results/pg-statements-$what.txt)"
        pg_statements_top | tee "bench/results/pg-statements-$what.txt" >&2
    fi
}

RESULTS=bench/results/latest.json
rm -f "$RESULTS"
COMMON=(--ca "$TMP/cert.pem" --results "$RESULTS" --users 100)

for db in $DBS; do
    say "accounts ($db): register and log in the bench users once (the certificate is made here)"
    start_chatd
    "$BENCH" accounts --addr "127.0.0.1:$CHATD_PORT" --ca "$TMP/cert.pem" --tokens "$TOKENS" --users 100
    stop_chatd accounts
done

# The Node.js peer, fresh for each scenario as chatd is (memory figures start from a
# clean heap): sets NODE_PID and NODE_ARGS.
start_node() {
    : >"$TMP/node.out"
    node bench/node-ws/server.js "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/node.out" 2>"$TMP/node.err" &
    NODE_PID=$!
    local port
    port=$(wait_port "$TMP/node.out" "$NODE_PID")
    say "node ws pid $NODE_PID on 127.0.0.1:$port ($(node --version))"
    NODE_ARGS=(--addr "127.0.0.1:$port" --server-pid "$NODE_PID" --label node --mode raw "${COMMON[@]}"
        --tokens "$TMP/tokens.json")
}
stop_node() {
    kill -TERM "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
}

NGINX_PORT=$("$BENCH" free-port)
mkdir -p "$TMP/nginx/logs"
cat > "$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
user root;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    types { text/html html; }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        # The suites in chatd's order, the server's choice: like for like.
        ssl_prefer_server_ciphers on;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
        root $TMP/public;
    }
}
CONF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
NGINX_PID=$!
NGINX_WORKER=""
for _ in $(seq 1 50); do
    NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1 || true)
    [ -n "$NGINX_WORKER" ] && break
    sleep 0.1
done
say "nginx master $NGINX_PID worker ${NGINX_WORKER:-?} on 127.0.0.1:$NGINX_PORT ($("$NGINX" -v 2>&1 | sed 's/.*: //'))"


scenario_sizes "$QUICK"

# BENCH_PERF=<scenario> (1 means fanout): perf record on chatd during that scenario, top
# functions to bench/results/perf-<scenario>.txt. BENCH_PERF_ARGS adds perf record flags
# (e.g. "-e instructions:u", "--call-graph dwarf"), BENCH_PERF_REPORT perf report flags.
perf_start() {
    local want=${BENCH_PERF:-0}
    [ "$want" = 1 ] && want=fanout
    if [ "$want" = "$1" ] && command -v perf >/dev/null; then
        perf record ${BENCH_PERF_ARGS:-} -p "$CHATD_PID" -o "$TMP/perf.data" 2>"$TMP/perf.err" &
        PERF_PID=$!
    fi
}
perf_stop() {
    [ -n "$PERF_PID" ] || return 0
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true
    PERF_PID=""
    say "perf: chatd's top functions during $1 (bench/results/perf-$1.txt)"
    perf report -i "$TMP/perf.data" --stdio ${BENCH_PERF_REPORT:---no-children} \
        --percent-limit 0.5 2>/dev/null | grep -E '^ +[0-9]' | head -"${BENCH_PERF_LINES:-60}" \
        | tee "bench/results/perf-$1.txt"
}

# Every chatbench run is bounded (its own phases are timed; this is the backstop).
bench() { timeout --kill-after=10 900 "$BENCH" "$@"; }
want() { [ "$SCENARIO" = all ] || [[ ",$SCENARIO," == *",$1,"* ]]; }

if want idle; then
    for db in $CHATD_RUNS; do
        start_chatd
        perf_start idle
        say "idle: chatd (pid $CHATD_PID, $db)"; bench idle "${CHATD_ARGS[@]}" "${IDLE[@]}"
        perf_stop idle
        stop_chatd idle
    done
    if [ "$REF" = 1 ]; then
        start_node
        say "idle: node ws"; bench idle "${NODE_ARGS[@]}" "${IDLE[@]}"
        stop_node
    fi
fi
if want fanout; then
    for db in $CHATD_RUNS; do
        start_chatd
        perf_start fanout
        say "fanout: chatd (pid $CHATD_PID, $db)"; bench fanout "${CHATD_ARGS[@]}" "${FANOUT[@]}" "${WARM[@]}"
        perf_stop fanout
        stop_chatd fanout
    done
    if [ "$REF" = 1 ]; then
        start_node
        say "fanout: node ws"; bench fanout "${NODE_ARGS[@]}" "${FANOUT[@]}" "${WARM[@]}"
        stop_node
    fi
fi
if want fanout-aligned; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "fanout, senders aligned: chatd (pid $CHATD_PID, $db)"
        bench fanout "${CHATD_ARGS[@]}" "${FANOUT[@]}" "${WARM[@]}" --aligned true
        stop_chatd fanout-aligned
    done
    if [ "$REF" = 1 ]; then
        start_node
        say "fanout, senders aligned: node ws"
        bench fanout "${NODE_ARGS[@]}" "${FANOUT[@]}" "${WARM[@]}" --aligned true
        stop_node
    fi
fi
if want fanout-max; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "fanout max: chatd (pid $CHATD_PID, $db)"; bench fanout "${CHATD_ARGS[@]}" "${FANMAX[@]}" "${WARM[@]}"
        stop_chatd fanout-max
    done
    if [ "$REF" = 1 ]; then
        start_node
        say "fanout max: node ws"; bench fanout "${NODE_ARGS[@]}" "${FANMAX[@]}" "${WARM[@]}"
        stop_node
    fi
fi
if want rooms; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "rooms: chatd (pid $CHATD_PID, $db)"; bench rooms "${CHATD_ARGS[@]}" "${ROOMS[@]}" "${WARM[@]}"
        stop_chatd rooms
    done
fi
if want ingest; then
    for db in $CHATD_RUNS; do
        start_chatd
        perf_start ingest
        say "ingest: chatd (pid $CHATD_PID, $db)"; bench ingest "${CHATD_ARGS[@]}" "${INGEST[@]}"
        perf_stop ingest
        stop_chatd ingest
    done
fi
if want ingest-rate; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "ingest at a fixed rate: chatd (pid $CHATD_PID, $db)"; bench ingest "${CHATD_ARGS[@]}" "${INGEST_RATE[@]}"
        stop_chatd ingest-rate
    done
fi
if want http; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "http: chatd (pid $CHATD_PID, $db)"; bench http "${CHATD_ARGS[@]}" "${HTTP[@]}"
        stop_chatd http
    done
fi
if want static; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "static file, wrk $WRK: chatd (pid $CHATD_PID, $db)"
        bench static --label "$CHATD_LABEL" --server-pid "$CHATD_PID" --results "$RESULTS" \
            --url "https://127.0.0.1:$CHATD_PORT/" --wrk-args "$WRK"
        stop_chatd static
    done
    if [ "$REF" = 1 ]; then
        say "static file, wrk $WRK: nginx"
        bench static --label nginx --server-pid "$NGINX_PID,${NGINX_WORKER:-$NGINX_PID}" --results "$RESULTS" \
            --url "https://127.0.0.1:$NGINX_PORT/" --wrk-args "$WRK"
    fi
fi
if want login-storm; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "login storm: chatd (pid $CHATD_PID, $db)"; bench login-storm "${CHATD_ARGS[@]}" "${STORM[@]}" "${WARM[@]}"
        stop_chatd login-storm
    done
fi

if want slow; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "slow consumers: chatd (pid $CHATD_PID, $db)"
        bench slow "${CHATD_ARGS[@]}" "${SLOW[@]}" "${WARM[@]}" --max-outbound-bytes "$MAX_OUTBOUND_BYTES"
        stop_chatd slow
    done
fi
if want burst; then
    for db in $CHATD_RUNS; do
        start_chatd
        say "connection burst: chatd (pid $CHATD_PID, $db)"
        bench burst "${CHATD_ARGS[@]}" "${BURST[@]}" --header-timeout "$HEADER_TIMEOUT_SECS"
        stop_chatd burst
    done
fi
if want stuck; then
    for db in $CHATD_RUNS; do
        # Its own idle timeout, short, so the window it measures is seconds, not a minute.
        CHATD_IDLE_TIMEOUT_SECS=$STUCK_IDLE_SECS start_chatd
        say "stuck HTTP readers: chatd (pid $CHATD_PID, $db)"
        bench stuck "${CHATD_ARGS[@]}" "${STUCK[@]}" --path /big.bin --idle-timeout "$STUCK_IDLE_SECS"
        stop_chatd stuck
    done
fi

say "results ($RESULTS)"
for db in $DBS; do
    label=chatd
    [ "$db" = sqlite ] || label=chatd-pg
    say "chatd on $db ($label)"
    "$BENCH" report --results "$RESULTS" --primary "$label"
    if [ "$REPEAT" -gt 1 ]; then
        say "medians of the $REPEAT runs of each chatd scenario on $db"
        "$BENCH" report --results "$RESULTS" --median true --primary "$label"
    fi
done
if [ "$BENCH_DB" = both ]; then
    say "chatd on SQLite and on PostgreSQL, medians side by side (ratio = PostgreSQL / SQLite)"
    "$BENCH" report --results "$RESULTS" --compare true --labels chatd,chatd-pg
fi

# Kept: latest.json is replaced by the next run.
ARCHIVE=bench/results/run-$(date -u +%Y%m%dT%H%M%SZ).json
cp "$RESULTS" "$ARCHIVE"
say "results kept as $ARCHIVE"
"$BENCH" check --results "$RESULTS" || FAILURES+=("a scenario lost deliveries, failed connections, saw unexpected closes or lacks figures")

# --- stop the peers by PID -------------------------------------------------------------
kill -QUIT "$NGINX_PID" 2>/dev/null || true
wait "$NGINX_PID" 2>/dev/null || true
NGINX_PID=""
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'bench: %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
say "chatd exited 0 on SIGTERM after every scenario ($RUNS runs); results in $RESULTS"
