#!/usr/bin/env bash
# make bench: the project's measured figures, in one run, printed as a table
# and written to target/bench/REPORT.md with the machine, the versions and the
# command behind every figure.
#
#   ingest   BENCH_ORDERS orders (default 100000) published by pusher, timed
#            until both of two service instances hold all of them in their
#            cache; beside it PostgreSQL's own COPY of the same rows into an
#            identical table, as the reference.
#   serve    GET /orders/{id} at 32 connections with loadtest and wrk, and the
#            same bodies served as static files by a private nginx (1 worker).
#   restore  restart of one instance with every order in the database: time
#            to /readyz 200, resident memory, bytes of cached JSON.
#
# It uses PostgreSQL at DATABASE_URL's server and NATS at NATS_URL (start
# them with `make services`), creates its own database, stream and consumer
# (names bench_*), starts its own processes on free loopback ports, bounds
# every wait, and removes all of it on exit, failure or Ctrl-C.
#
# Knobs: BENCH_ORDERS (100000), BENCH_SECONDS per serve run (10),
# BENCH_CONNECTIONS (32); serve under ingest: BENCH_UNDER_INGEST_RATE
# (20000/s), BENCH_UNDER_ORDERS (BENCH_ORDERS), BENCH_UNDER_RUNS (1);
# restore at scale: BENCH_RESTORE_ORDERS (1000000; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N=${BENCH_ORDERS:-100000}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
CARGO=${CARGO:-cargo}

OUT=$ROOT/target/bench
WORK=$OUT/work
TAG=bench_$(date +%Y%m%d%H%M%S)_$$
DB=$TAG
STREAM=BENCH_${TAG#bench_}
SUBJECT=bench.${TAG#bench_}
CONSUMER=$TAG

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------

read -r PG_HOST PG_PORT PG_USER < <(python3 - "$DATABASE_URL" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres")
PY
)
read -r NATS_HOST NATS_PORT < <(python3 - "${NATS_URL%%,*}" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 4222)
PY
)
BENCH_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB"
psql_admin() { psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_bench() { psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -v ON_ERROR_STOP=1 "$@"; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        answers 127.0.0.1 "$port" || { echo "$port"; return; }
    done
    die "no free loopback port found"
}

# One request to the NATS server over its text protocol; prints the reply.
# (There is no NATS command-line client here; this is all the JetStream API
# the script needs: deleting its stream.)
nats_request() { # subject payload
    local subject=$1 payload=$2 line
    exec 3<>"/dev/tcp/$NATS_HOST/$NATS_PORT" || return 1
    printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\nPUB %s _INBOX.bench %d\r\n%s\r\n' \
        "$subject" "${#payload}" "$payload" >&3
    while IFS= read -r -t 5 line <&3; do
        case $line in
            MSG*) IFS= read -r -t 5 line <&3; printf '%s\n' "${line%$'\r'}"; break ;;
            PING*) printf 'PONG\r\n' >&3 ;;
        esac
    done
    exec 3<&-
}

nats_version() { # from the INFO line the server greets a client with
    local info=
    exec 3<>"/dev/tcp/$NATS_HOST/$NATS_PORT" || return 0
    IFS= read -r -t 5 info <&3 || true
    exec 3<&-
    sed -n 's/.*"version":"\([^"]*\)".*/\1/p' <<<"$info"
}

# The number after `name ` in a Prometheus text body on stdin (0 if absent).
metric() { awk -v name="$1" '$1 == name { print $2; found = 1; exit } END { if (!found) print 0 }'; }

json() { # file python-expression-on-d
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

now() { date +%s.%N; }
elapsed_since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.3f}')" "$1"; }
calc() { python3 -c "print(format($1, '$2'))"; }

# ---------------------------------------------------------------------------
# Tools: wrk and nginx from Debian when missing (as services.sh does)
# ---------------------------------------------------------------------------

need_package() { # command package
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "$2 is not installed; installing it with apt-get"
        local made_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            # Debian starts an installed daemon at once (nginx on port 80):
            # a policy of 101 forbids it; we run our own private nginx.
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
        [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
        command -v "$1" >/dev/null || die "installing $2 did not provide $1"
    else
        die "$2 is not installed. Install it with: sudo apt-get install -y $2 (then run make bench again)"
    fi
}

need_package curl curl
need_package wrk wrk
need_package nginx nginx
PATH=$PATH:/usr/sbin

answers "$PG_HOST" "$PG_PORT" || die "no PostgreSQL answers at $PG_HOST:$PG_PORT: run \`make services\` first"
answers "$NATS_HOST" "$NATS_PORT" || die "no NATS answers at $NATS_HOST:$NATS_PORT: run \`make services\` first"

say "building the release binaries (cargo build --release --workspace)"
$CARGO build --release --workspace --locked >&2
SERVICE_BIN=$ROOT/target/release/order-service
PUSHER_BIN=$ROOT/target/release/pusher
LOADTEST_BIN=$ROOT/target/release/loadtest

# ---------------------------------------------------------------------------
# Clean-up of everything the script starts or creates
# ---------------------------------------------------------------------------

declare -A SERVICE_PID SERVICE_URL
NGINX_PID=
rm -rf "$WORK"
mkdir -p "$WORK"

stop_pid() { # pid: SIGTERM, up to 20 s, then SIGKILL
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for name in "${!SERVICE_PID[@]}"; do stop_pid "${SERVICE_PID[$name]}"; done
    [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
    psql_admin -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    nats_request "\$JS.API.STREAM.DELETE.$STREAM" '' >/dev/null 2>&1 || true
    rm -rf "$WORK"
    [ "$status" = 0 ] || say "failed (exit $status); service logs are in $OUT/logs"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# The service instances
# ---------------------------------------------------------------------------

mkdir -p "$OUT/logs"
psql_admin -qc "CREATE DATABASE $DB" >/dev/null

start_service() { # name: starts an instance, sets SERVICE_PID/URL, waits for "listening on"
    local name=$1 log=$OUT/logs/service-$1.log
    DATABASE_URL=$BENCH_DATABASE_URL NATS_URL=$NATS_URL NATS_STREAM=$STREAM \
        NATS_SUBJECT=$SUBJECT NATS_CONSUMER=$CONSUMER HTTP_ADDR=127.0.0.1:0 RUST_LOG=info \
        "$SERVICE_BIN" >"$log" 2>&1 &
    SERVICE_PID[$name]=$!
    local url=
    for _ in $(seq 600); do
        url=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$url" ] && break
        kill -0 "${SERVICE_PID[$name]}" 2>/dev/null || die "service $name exited; see $log"
        sleep 0.1
    done
    [ -n "$url" ] || die "service $name did not listen within 60 s; see $log"
    SERVICE_URL[$name]=$url
}

wait_ready() { # name timeout-seconds
    local deadline=$((SECONDS + $2))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "${SERVICE_URL[$1]}/readyz")" = 200 ]; do
        [ $SECONDS -lt $deadline ] || die "service $1 not ready within $2 s"
        sleep 0.01
    done
}

cache_orders() { curl -sf "${SERVICE_URL[$1]}/metrics" | metric order_service_cache_orders; }

say "starting two service instances (database $DB, stream $STREAM)"
start_service a
start_service b
wait_ready a 60
wait_ready b 60

# ---------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------

PUSH_CMD="pusher --count $N --seed 1"
say "ingest: $PUSH_CMD → two instances"
t0=$(now)
NATS_URL=$NATS_URL NATS_STREAM=$STREAM NATS_SUBJECT=$SUBJECT \
    timeout 600 "$PUSHER_BIN" --count "$N" --seed 1 --json >"$WORK/pusher.json"
deadline=$((SECONDS + 120 + N / 200))
until [ "$(cache_orders a)" -ge "$N" ] && [ "$(cache_orders b)" -ge "$N" ]; do
    [ $SECONDS -lt $deadline ] || die "ingest: not all $N orders cached in time (a: $(cache_orders a), b: $(cache_orders b))"
    sleep 0.05
done
INGEST_S=$(elapsed_since "$t0")
STORED=$(psql_bench -Atc "SELECT count(*) FROM orders")
[ "$STORED" = "$N" ] || die "ingest: $STORED rows stored, expected $N"
INGEST_RATE=$(calc "$N / $INGEST_S" '.0f')
PUBLISH_RATE=$(json "$WORK/pusher.json" "round(d['confirmed_per_second'])")
PUBLISH_S=$(json "$WORK/pusher.json" "round(d['elapsed_seconds'], 2)")
say "ingest: $N orders in both caches after $INGEST_S s ($INGEST_RATE orders/s); pusher confirmed $PUBLISH_RATE/s"

say "ingest reference: COPY of the same rows into an identical table"
psql_bench -qc "\\copy (SELECT order_uid, data, body, received_at FROM orders) TO '$WORK/orders.copy'"
psql_bench -qc "CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)"
COPY_MS=$(psql_bench -c '\timing on' \
    -c "\\copy orders_copy (order_uid, data, body, received_at) FROM '$WORK/orders.copy'" |
    sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1)
COPY_S=$(calc "$COPY_MS / 1000" '.3f')
COPY_RATE=$(calc "$N / $COPY_S" '.0f')
INGEST_RATIO=$(calc "$INGEST_RATE / $COPY_RATE" '.2f')
COPY_MB=$(calc "$(stat -c %s "$WORK/orders.copy") / 1e6" '.1f')
say "ingest reference: COPY $N rows in $COPY_S s ($COPY_RATE rows/s); service/COPY = $INGEST_RATIO"

# ---------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------

URL_A=${SERVICE_URL[a]}
say "serve: sampling ids and exporting the same bodies for nginx"
psql_bench -qc "CREATE TABLE bench_sample AS SELECT order_uid FROM orders ORDER BY random() LIMIT 10000"
psql_bench -Atc "SELECT order_uid FROM bench_sample" >"$WORK/ids.txt"
{
    echo 'local ids = {'
    sed 's/.*/"&",/' "$WORK/ids.txt"
    echo '}'
    echo 'request = function()'
    echo '  return wrk.format("GET", "/orders/" .. ids[math.random(#ids)])'
    echo 'end'
} >"$WORK/random-order.lua"

# nginx serves each sampled order's stored body: the bytes the service sends.
# Bodies may hold newlines and tabs, so rows and fields are split on NUL bytes
# (U+0000 is the one character an order can never contain).
mkdir -p "$WORK/www/orders" "$WORK/nginx/tmp"
psql_bench -At --field-separator-zero --record-separator-zero \
    -c "SELECT order_uid, coalesce(body, data::text) FROM orders JOIN bench_sample USING (order_uid)" |
    python3 -c '
import sys
fields = sys.stdin.buffer.read().split(b"\0")
for uid, body in zip(fields[0::2], fields[1::2]):
    with open(sys.argv[1] + "/" + uid.decode(), "wb") as f:
        f.write(body)
' "$WORK/www/orders"
chmod -R a+rX "$WORK/www"
sample=$(head -n 1 "$WORK/ids.txt")
curl -sf "$URL_A/orders/$sample" -o "$WORK/sample-service.json"
cmp -s "$WORK/sample-service.json" "$WORK/www/orders/$sample" ||
    die "serve: the exported body of $sample differs from what the service sends"

NGINX_PORT=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<EOF
# A private nginx for make bench: one worker, loopback only, static files.
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx/stderr.log" &
NGINX_PID=$!
NGINX_URL=http://127.0.0.1:$NGINX_PORT
for _ in $(seq 100); do
    curl -sf "$NGINX_URL/orders/$sample" -o "$WORK/sample-nginx.json" && break
    sleep 0.05
done
cmp -s "$WORK/sample-service.json" "$WORK/sample-nginx.json" ||
    die "serve: nginx does not serve the sample body ($(cat "$WORK/nginx/stderr.log" "$WORK/nginx/error.log" 2>/dev/null | tail -n 3))"

run_loadtest() { # url output: the same 10000 ids as wrk (nginx has no GET /orders to sample)
    # Exit 1 means some requests failed: that is a result, reported as errors.
    local status=0
    timeout $((SECONDS_PER_RUN + 60)) "$LOADTEST_BIN" --url "$1" --connections "$CONNECTIONS" \
        --duration "${SECONDS_PER_RUN}s" --ids "$WORK/ids.txt" --json >"$2" || status=$?
    [ "$status" -le 1 ] || die "loadtest against $1 failed (exit $status)"
    [ "$status" = 0 ] || say "loadtest against $1: some requests failed: $(json "$2" "'; '.join(d['error_samples'][:3])")"
}
run_wrk() { # url output
    timeout $((SECONDS_PER_RUN + 60)) wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
        -s "$WORK/random-order.lua" "$1" >"$2"
}
wrk_rate() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$1"; }
wrk_pct() { awk -v p="$2" '$1 == p { print $2 }' "$1"; }
wrk_errors() {
    local non2xx socket
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$1")
    socket=$(sed -n 's/.*Socket errors:.*connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1+\2+\3+\4/p' "$1")
    calc "${non2xx:-0} + ${socket:-0}" 'd'
}

say "serve: loadtest → service (${SECONDS_PER_RUN} s, $CONNECTIONS connections)"
run_loadtest "$URL_A" "$WORK/loadtest-service.json"
say "serve: wrk → service"
run_wrk "$URL_A" "$WORK/wrk-service.txt"
say "serve: loadtest → nginx"
run_loadtest "$NGINX_URL" "$WORK/loadtest-nginx.json"
say "serve: wrk → nginx"
run_wrk "$NGINX_URL" "$WORK/wrk-nginx.txt"

LT_RATE=$(json "$WORK/loadtest-service.json" "round(d['requests_per_second'])")
LT_P50=$(json "$WORK/loadtest-service.json" "d['latency_ms']['p50']")
LT_P99=$(json "$WORK/loadtest-service.json" "d['latency_ms']['p99']")
LT_P999=$(json "$WORK/loadtest-service.json" "d['latency_ms']['p99_9']")
LT_MAX=$(json "$WORK/loadtest-service.json" "d['latency_ms']['max']")
LT_ERR=$(json "$WORK/loadtest-service.json" "d['errors'] + d['unexpected']")
LT_ERR_SAMPLE=$(json "$WORK/loadtest-service.json" "(d['error_samples'] or [''])[0]")
LTN_RATE=$(json "$WORK/loadtest-nginx.json" "round(d['requests_per_second'])")
LTN_P50=$(json "$WORK/loadtest-nginx.json" "d['latency_ms']['p50']")
LTN_P99=$(json "$WORK/loadtest-nginx.json" "d['latency_ms']['p99']")
LTN_MAX=$(json "$WORK/loadtest-nginx.json" "d['latency_ms']['max']")
LTN_ERR=$(json "$WORK/loadtest-nginx.json" "d['errors'] + d['unexpected']")
LT_RATIO=$(calc "$LT_RATE / $LTN_RATE" '.2f')
WRK_RATE=$(calc "$(wrk_rate "$WORK/wrk-service.txt")" '.0f')
WRK_P50=$(wrk_pct "$WORK/wrk-service.txt" 50%)
WRK_P99=$(wrk_pct "$WORK/wrk-service.txt" 99%)
WRK_ERR=$(wrk_errors "$WORK/wrk-service.txt")
NGX_RATE=$(calc "$(wrk_rate "$WORK/wrk-nginx.txt")" '.0f')
NGX_P50=$(wrk_pct "$WORK/wrk-nginx.txt" 50%)
NGX_P99=$(wrk_pct "$WORK/wrk-nginx.txt" 99%)
NGX_ERR=$(wrk_errors "$WORK/wrk-nginx.txt")
SERVE_RATIO=$(calc "$WRK_RATE / $NGX_RATE" '.2f')
BODY_BYTES=$(stat -c %s "$WORK/sample-service.json")
N_SAMPLED=$(wc -l <"$WORK/ids.txt")
stop_pid "$NGINX_PID"
NGINX_PID=

# serve under ingest: the same wrk run while pusher publishes UNDER_N more
# orders at UNDER_RATE/s (seed 2, then 3, ...: new uids), which both
# instances store and cache. The tail of this run moves a lot with whatever
# else the 2 cores do, so it can be repeated (BENCH_UNDER_RUNS): the row then
# gives the median and every run's p99.
UNDER_RATE=${BENCH_UNDER_INGEST_RATE:-20000}
UNDER_N=${BENCH_UNDER_ORDERS:-$N}
UNDER_RUNS=${BENCH_UNDER_RUNS:-1}
UNDER_CMD="pusher --count $UNDER_N --seed 2 --rate $UNDER_RATE, with wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s"
[ "$UNDER_RUNS" = 1 ] || UNDER_CMD="$UNDER_CMD; $UNDER_RUNS runs, seeds 2-$((UNDER_RUNS + 1))"
N_STORED=$N
for run in $(seq "$UNDER_RUNS"); do
    say "serve under ingest ($run/$UNDER_RUNS): wrk → service while pusher --count $UNDER_N --seed $((run + 1)) --rate $UNDER_RATE"
    NATS_URL=$NATS_URL NATS_STREAM=$STREAM NATS_SUBJECT=$SUBJECT \
        timeout 600 "$PUSHER_BIN" --count "$UNDER_N" --seed $((run + 1)) --rate "$UNDER_RATE" --json \
        >"$WORK/pusher-under-$run.json" &
    UNDER_PUSHER=$!
    run_wrk "${SERVICE_URL[a]}" "$WORK/wrk-under-$run.txt"
    wait "$UNDER_PUSHER" || die "serve under ingest: pusher failed"
    N_STORED=$((N_STORED + UNDER_N))
    deadline=$((SECONDS + 120 + UNDER_N / 200))
    until [ "$(cache_orders a)" -ge "$N_STORED" ] && [ "$(cache_orders b)" -ge "$N_STORED" ]; do
        [ $SECONDS -lt $deadline ] || die "serve under ingest: not all $N_STORED orders cached in time"
        sleep 0.05
    done
    say "serve under ingest ($run/$UNDER_RUNS): $(wrk_rate "$WORK/wrk-under-$run.txt") req/s, p99 $(wrk_pct "$WORK/wrk-under-$run.txt" 99%)"
done
# The median over the runs of each figure (wrk's latencies carry units).
read -r UNDER_WRK_RATE UNDER_P50 UNDER_P99 UNDER_P99_ALL UNDER_ERR UNDER_RATE_DONE < <(
    for run in $(seq "$UNDER_RUNS"); do
        f=$WORK/wrk-under-$run.txt
        echo "$(wrk_rate "$f") $(wrk_pct "$f" 50%) $(wrk_pct "$f" 99%) $(wrk_errors "$f") $(json "$WORK/pusher-under-$run.json" "d['confirmed_per_second']")"
    done | python3 -c '
import re, statistics, sys
def ms(text):
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
runs = [line.split() for line in sys.stdin]
median = statistics.median
p99s = [ms(r[2]) for r in runs]
print(round(median(float(r[0]) for r in runs)),
      f"{median(ms(r[1]) for r in runs):.2f}ms",
      f"{median(p99s):.2f}ms",
      ",".join(f"{p:.2f}" for p in p99s),
      sum(int(r[3]) for r in runs),
      round(median(float(r[4]) for r in runs)))
')
UNDER_DETAIL="p50 $UNDER_P50, p99 $UNDER_P99, errors $UNDER_ERR; pusher confirmed $UNDER_RATE_DONE msgs/s meanwhile"
[ "$UNDER_RUNS" = 1 ] || UNDER_DETAIL="median of $UNDER_RUNS runs: $UNDER_DETAIL; each run's p99 (ms) $UNDER_P99_ALL"
say "serve under ingest: $UNDER_WRK_RATE req/s, p99 $UNDER_P99, errors $UNDER_ERR; pusher confirmed $UNDER_RATE_DONE/s"

# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------

say "restore: restarting instance b with $N_STORED orders in the database"
stop_pid "${SERVICE_PID[b]}"
t0=$(now)
start_service b
wait_ready b 600
RESTORE_S=$(elapsed_since "$t0")
RESTORE_RATE=$(calc "$N_STORED / $RESTORE_S" '.0f')
RESTORED=$(cache_orders b)
[ "$RESTORED" = "$N_STORED" ] || die "restore: instance b caches $RESTORED orders, expected $N_STORED"
RSS_KB=$(awk '/^VmRSS:/ { print $2 }' "/proc/${SERVICE_PID[b]}/status")
RSS_MB=$(calc "$RSS_KB / 1024" '.0f')
CACHE_BYTES=$(curl -sf "${SERVICE_URL[b]}/metrics" | metric order_service_cache_bytes)
CACHE_MB=$(calc "$CACHE_BYTES / 1e6" '.1f')
say "restore: ready after $RESTORE_S s ($RESTORE_RATE orders/s), VmRSS $RSS_MB MiB, cached JSON $CACHE_MB MB"

# restore at scale: BIG orders in all (default a million). The rows beyond N
# are copies of one stored order under new uids, written by SQL (publishing a
# million through NATS would only time the ingest again). Both instances stop
# first, so no listener loads them as they are written.
BIG=${BENCH_RESTORE_ORDERS:-1000000}
if [ "$BIG" -gt "$N_STORED" ]; then
    say "restore at scale: writing $((BIG - N_STORED)) more rows with SQL"
    stop_pid "${SERVICE_PID[a]}"
    stop_pid "${SERVICE_PID[b]}"
    psql_bench -qc "INSERT INTO orders (order_uid, data, body)
        SELECT 'big' || g, replace(o.body, o.order_uid, 'big' || g)::jsonb, replace(o.body, o.order_uid, 'big' || g)
        FROM (SELECT order_uid, body FROM orders WHERE body IS NOT NULL LIMIT 1) AS o,
             generate_series(1, $((BIG - N_STORED))) AS g" \
        -c "VACUUM ANALYZE orders"
    t0=$(now)
    psql_bench -Atc "SELECT id, order_uid, body FROM orders" >/dev/null
    BIG_REF_S=$(elapsed_since "$t0")
    t0=$(now)
    start_service b
    wait_ready b 600
    BIG_S=$(elapsed_since "$t0")
    [ "$(cache_orders b)" = "$BIG" ] || die "restore at scale: instance b caches $(cache_orders b) orders, expected $BIG"
    BIG_RATE=$(calc "$BIG / $BIG_S" '.0f')
    BIG_RATIO=$(calc "$BIG_S / $BIG_REF_S" '.2f')
    BIG_RSS_MB=$(calc "$(awk '/^VmRSS:/ { print $2 }' "/proc/${SERVICE_PID[b]}/status") / 1024" '.0f')
    BIG_CACHE_MIB=$(calc "$(curl -sf "${SERVICE_URL[b]}/metrics" | metric order_service_cache_bytes) / 1048576" '.0f')
    BIG_MEM_RATIO=$(calc "$BIG_RSS_MB / $BIG_CACHE_MIB" '.2f')
    say "restore at scale: $BIG orders ready after $BIG_S s ($BIG_RATE orders/s; psql SELECT of the same columns $BIG_REF_S s, ratio $BIG_RATIO); VmRSS $BIG_RSS_MB MiB for $BIG_CACHE_MIB MiB of JSON ($BIG_MEM_RATIO x)"
fi

# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
CORES=$(nproc)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
RUSTC=$(rustc --version 2>/dev/null || echo unknown)
PG_VERSION=$(psql_admin -Atc 'SHOW server_version')
NATS_VERSION=$(nats_version)
WRK_VERSION=$( (wrk -v 2>&1 || true) | head -n 1 | awk '{ print $2 }')
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')

ROWS=(
    "ingest|pusher → NATS → 2 instances, all cached|$INGEST_RATE orders/s|$N orders in $INGEST_S s; pusher itself confirmed $PUBLISH_RATE msgs/s ($PUBLISH_S s)|$PUSH_CMD"
    "ingest|PostgreSQL COPY, same rows, identical table|$COPY_RATE rows/s|$N rows ($COPY_MB MB) in $COPY_S s; service/COPY = $INGEST_RATIO|\\copy orders_copy (order_uid, data, body, received_at) FROM file (exported with \\copy … TO)"
    "serve|loadtest → service|$LT_RATE req/s|p50 $LT_P50 ms, p99 $LT_P99 ms, p99.9 $LT_P999 ms, max $LT_MAX ms, errors $LT_ERR; service/nginx = $LT_RATIO|loadtest --connections $CONNECTIONS --duration ${SECONDS_PER_RUN}s --ids ids.txt"
    "serve|loadtest → nginx, same bodies as files|$LTN_RATE req/s|p50 $LTN_P50 ms, p99 $LTN_P99 ms, max $LTN_MAX ms, errors $LTN_ERR|loadtest --connections $CONNECTIONS --duration ${SECONDS_PER_RUN}s --ids ids.txt"
    "serve|wrk → service|$WRK_RATE req/s|p50 $WRK_P50, p99 $WRK_P99, errors $WRK_ERR; service/nginx = $SERVE_RATIO|wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency -s random-order.lua"
    "serve|wrk → nginx, same bodies as files|$NGX_RATE req/s|p50 $NGX_P50, p99 $NGX_P99, errors $NGX_ERR; 1 worker, sendfile|wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency -s random-order.lua"
    "serve|wrk → service during ingest|$UNDER_WRK_RATE req/s|$UNDER_DETAIL|$UNDER_CMD"
    "restore|restart to /readyz 200|$RESTORE_RATE orders/s|$N_STORED orders in $RESTORE_S s; VmRSS $RSS_MB MiB; cached JSON $CACHE_MB MB|restart one instance, poll /readyz every 10 ms"
)
if [ -n "${BIG_S:-}" ]; then
    ROWS+=(
        "restore|restart to /readyz 200, $BIG orders|$BIG_RATE orders/s|$BIG_S s; psql SELECT id, order_uid, body to /dev/null $BIG_REF_S s (service/psql $BIG_RATIO x)|BENCH_RESTORE_ORDERS=$BIG; start one instance, poll /readyz every 10 ms"
        "memory|VmRSS with $BIG orders cached|$BIG_RSS_MB MiB|$BIG_CACHE_MIB MiB of JSON cached: $BIG_MEM_RATIO x|/proc/PID/status after the restore"
    )
fi

print_table() {
    printf '\n%-8s %-44s %-18s %s\n' scenario measurement figure detail
    printf '%-8s %-44s %-18s %s\n' -------- -------------------------------------------- ------------------ ------
    local row scenario what figure detail command
    for row in "${ROWS[@]}"; do
        IFS='|' read -r scenario what figure detail command <<<"$row"
        # (printf pads bytes: the arrow is three of them, shown as one.)
        printf '%-8s %-44s %-18s %s\n' "$scenario" "${what//→/->}" "$figure" "$detail"
    done
    printf '\n'
}

write_report() {
    echo "# make bench"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` (loadtest/bench.sh) at commit $COMMIT."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| CPU | $CPU, $CORES cores |"
    echo "| memory | $MEM |"
    echo "| kernel | $(uname -sr) |"
    echo "| Rust | $RUSTC (release build) |"
    echo "| PostgreSQL | $PG_VERSION |"
    echo "| NATS | nats-server $NATS_VERSION |"
    echo "| wrk | $WRK_VERSION |"
    echo "| nginx | $NGINX_VERSION |"
    echo
    echo "Everything runs on this one machine: the load generators share the $CORES cores"
    echo "with the service, PostgreSQL and NATS, so the figures are a floor, not a ceiling."
    echo
    echo "| scenario | measurement | figure | detail | command |"
    echo "|---|---|---|---|---|"
    local row scenario what figure detail command
    for row in "${ROWS[@]}"; do
        IFS='|' read -r scenario what figure detail command <<<"$row"
        echo "| $scenario | $what | **$figure** | $detail | \`$command\` |"
    done
    echo
    echo "- ingest: the clock starts when pusher starts and stops when both instances"
    echo "  report \`order_service_cache_orders\` = $N (so it covers publish, fetch,"
    echo "  validation, the committed INSERTs, NOTIFY and both caches). The COPY reference"
    echo "  loads the same $N rows into \`CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)\`"
    echo "  (same columns and primary key, no trigger); its time is psql's \`\\timing\`."
    echo "- serve: $CONNECTIONS connections for ${SECONDS_PER_RUN} s each, random ids out of $N_SAMPLED"
    echo "  stored ones; bodies are $BODY_BYTES bytes for the first sampled order. nginx serves the"
    echo "  exact bytes the service sends (checked with cmp) from files."
    if [ "$LT_ERR" != 0 ]; then
        echo "- loadtest → service had $LT_ERR failed requests, e.g. \`$LT_ERR_SAMPLE\`."
    fi
    echo "- restore: from the spawn of the process to the first \`/readyz\` 200, which the"
    echo "  service answers once its cache holds every stored order."
}

print_table
write_report >"$OUT/REPORT.md"
say "wrote $OUT/REPORT.md"
