#!/usr/bin/env bash
# make bench: the project's measured figures, in one run. Every block prints
# its command, the machine (nproc, CPU model, load average) and its figures
# with the targets, and appends them to target/bench/REPORT.md; at the end
# bench-chart draws target/bench/bench.svg (throughput against the
# references, latency percentiles of the service against nginx).
#
#   backlog, one instance   BENCH_BACKLOG orders (100000, pusher's mix) wait
#       in the stream; ONE instance with the defaults is started and timed
#       until every order is stored and the last one is served. Beside it a
#       COPY of the same rows into a table with every column the service
#       writes, without the trigger. Target: >= 0.6x COPY.
#   backlog, two instances  the same backlog through a second consumer into a
#       second database, two instances. Target: >= 0.8x COPY.
#   serve   GET /orders/{id} at BENCH_CONNECTIONS (32) with loadtest and wrk,
#       and the same bytes as files from a private nginx, with 1 worker and
#       with `worker_processes auto`.
#   tail    BENCH_TAIL_ORDERS (2000) freshly ingested orders, wrk -t1 -c32
#       -dBENCH_TAIL_SECONDS (8) with a random id, BENCH_TAIL_ROUNDS (3)
#       rounds alternating with nginx; then 256 connections, gzip clients,
#       404s and 304s (If-None-Match with each order's ETag).
#   serve under ingest  wrk while pusher publishes rate x (window + 3 s)
#       orders, so publishing covers the whole wrk window; every ack of the
#       stream is counted meanwhile (double acks, acks of redeliveries).
#   restore  restart to /readyz 200; then BENCH_RESTORE_ORDERS (1000000) of
#       the pusher's mix written by SQL (0 skips it) and a restart.
#   bounded  (when `order-service --help` lists --cache-max-bytes) the
#       restore's orders with CACHE_MAX_BYTES = 10% of their bytes, ids drawn
#       from a Zipf(1.0) over a shuffled list, against the unbounded instance.
#       The bounded instance first serves BENCH_BOUNDED_WARMUP (300) seconds
#       of the same reads (another seed), unmeasured: a hit ratio is a steady
#       state. S3-FIFO keeps an order once it returns while its uid is still
#       in the ghost list, and the orders at the edge of the hot set return
#       about once in a million reads, so the ratio climbs for a few million
#       (0.756 after 60 s here, about 600,000 reads; 0.811 after 300 s).
#       Then closed loop, open loop at half that rate, and hits (one
#       connection) idle, beside 32 connections reading cached orders, and
#       beside 32 of unknown ids.
#
# Duplicates are measured where they can occur: the consumer's deliveries
# and redeliveries (JetStream consumer info), the service's duplicates_total
# and orders_stored_total, and the acks themselves. A check that fails is
# reported and makes the run exit 1 after the report is written.
#
# It uses PostgreSQL at DATABASE_URL's server and NATS at NATS_URL (start
# them with `make services`), creates its own databases, stream and consumers
# (names bench_*), starts its own processes on free loopback ports, bounds
# every wait, and removes all of it on exit, failure or Ctrl-C.
#
# BENCH_ONLY=backlog runs the two backlog blocks alone, then the chart and
# the verdict.
#
# A small run (under 2 minutes): BENCH_BACKLOG=5000 BENCH_SECONDS=2
# BENCH_TAIL_SECONDS=2 BENCH_TAIL_ROUNDS=1 BENCH_RESTORE_ORDERS=30000
# BENCH_UNDER_INGEST_RATE=2000 BENCH_BOUNDED_WARMUP=5 make bench
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N=${BENCH_BACKLOG:-${BENCH_ORDERS:-100000}}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
TAIL_N=${BENCH_TAIL_ORDERS:-2000}
TAIL_SECONDS=${BENCH_TAIL_SECONDS:-8}
TAIL_ROUNDS=${BENCH_TAIL_ROUNDS:-3}
UNDER_RATE=${BENCH_UNDER_INGEST_RATE:-20000}
UNDER_SECONDS=${BENCH_UNDER_SECONDS:-$SECONDS_PER_RUN}
UNDER_RUNS=${BENCH_UNDER_RUNS:-1}
BIG=${BENCH_RESTORE_ORDERS:-1000000}
BOUNDED_SECONDS=${BENCH_BOUNDED_SECONDS:-$SECONDS_PER_RUN}
BOUNDED_WARMUP=${BENCH_BOUNDED_WARMUP:-300}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
CARGO=${CARGO:-cargo}
FULL_SIZE=
[ "$N" = 100000 ] && [ "$SECONDS_PER_RUN" = 10 ] && [ "$TAIL_SECONDS" = 8 ] && [ "$BIG" = 1000000 ] && FULL_SIZE=1

OUT=$ROOT/target/bench
WORK=$OUT/work
REPORT=$OUT/REPORT.md
TAG=bench_$(date +%Y%m%d%H%M%S)_$$
DB=$TAG
DB_ONE=${TAG}_one
STREAM=BENCH_${TAG#bench_}
SUBJECT=bench.${TAG#bench_}
CONSUMER=$TAG
HELPER=(python3 "$ROOT/loadtest/bench-helper.py")

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
helper() { "${HELPER[@]}" "$@"; }

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
db_url() { echo "postgres://$PG_USER@$PG_HOST:$PG_PORT/$1"; }
psql_admin() { psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_db() { local db=$1; shift; psql -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$db" -v ON_ERROR_STOP=1 "$@"; }
psql_bench() { psql_db "$DB" "$@"; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        answers 127.0.0.1 "$port" || { echo "$port"; return; }
    done
    die "no free loopback port found"
}

# Clock readings are bash's $EPOCHREALTIME (no process started: on 2 busy
# cores starting python to read the clock took up to a second).
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
calc() { python3 -c "print(format($1, '$2'))"; }
machine() { echo "nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), load average $(cut -d' ' -f1-3 /proc/loadavg)"; }

# ---------------------------------------------------------------------------
# Blocks: each prints and appends its command, machine and figures
# ---------------------------------------------------------------------------

FAILURES=()
BLOCK_ROWS=()
BLOCK_NOTES=()
block_start() { # title command
    BLOCK_TITLE=$1
    BLOCK_COMMAND=$2
    BLOCK_MACHINE=$(machine)
    BLOCK_ROWS=()
    BLOCK_NOTES=()
    say "== $BLOCK_TITLE: $BLOCK_COMMAND"
    say "   machine: $BLOCK_MACHINE"
}
row() { BLOCK_ROWS+=("$1|$2|$3"); } # measurement figure detail
note() { BLOCK_NOTES+=("$1"); }
# target what value op limit: a figure against its target, met or missed
# (a missed target is reported, not an error: the bench measures).
target() {
    local verdict
    if python3 -c "import sys; v, l = float(sys.argv[1]), float(sys.argv[3]); sys.exit(0 if (v >= l if sys.argv[2] == '>=' else v <= l) else 1)" "$2" "$3" "$4"; then
        verdict=met
    else
        verdict=MISSED
    fi
    note "target: $1 = $2, target $3 $4: $verdict"
}
# check what condition-as-python-expr: a correctness check; a failure is
# reported and fails the run at the end.
check() {
    if python3 -c "import sys; sys.exit(0 if ($2) else 1)"; then
        note "check: $1: ok"
    else
        note "check: $1: FAILED"
        FAILURES+=("$BLOCK_TITLE: $1")
    fi
}
block_end() {
    local r m f d n
    {
        printf '\n%s\n' "$BLOCK_TITLE"
        printf '  command: %s\n  machine: %s\n' "$BLOCK_COMMAND" "$BLOCK_MACHINE"
        for r in "${BLOCK_ROWS[@]}"; do
            IFS='|' read -r m f d <<<"$r"
            printf '  %-46s %-20s %s\n' "${m//→/->}" "$f" "$d"
        done
        for n in "${BLOCK_NOTES[@]}"; do printf '  %s\n' "$n"; done
    } >&2
    {
        printf '\n## %s\n\n' "$BLOCK_TITLE"
        # shellcheck disable=SC2016 # the backquotes are Markdown
        printf -- '- command: `%s`\n- machine: %s\n\n' "$BLOCK_COMMAND" "$BLOCK_MACHINE"
        if [ "${#BLOCK_ROWS[@]}" -gt 0 ]; then
            echo "| measurement | figure | detail |"
            echo "|---|---|---|"
            for r in "${BLOCK_ROWS[@]}"; do
                IFS='|' read -r m f d <<<"$r"
                echo "| $m | **$f** | $d |"
            done
            echo
        fi
        for n in "${BLOCK_NOTES[@]}"; do echo "- $n"; done
    } >>"$REPORT"
}
# The chart's input: throughput bars and latency series.
bar() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT/chart-throughput.tsv"; } # label value reference(0/1)
latency_series() { # label wrk-output
    local j
    j=$(helper wrk "$2")
    printf '%s\t%s\n' "$1" "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("\t".join(str(d[k]) for k in ("p50","p75","p90","p99")))' "$j")" >>"$OUT/chart-latency.tsv"
}

# The chart, REPORT.md's last lines and the verdict: at the end of the run
# (or after the backlog blocks with BENCH_ONLY=backlog).
finish_report() {
    local SIZES f
    SIZES="backlog $N, runs of ${SECONDS_PER_RUN} s, tail ${TAIL_ROUNDS}x${TAIL_SECONDS} s"
    [ -n "$FULL_SIZE" ] || SIZES="$SIZES (a small run)"
    helper chart-json "$OUT/chart.json" "make bench, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT, nproc $(nproc); $SIZES" \
        "$OUT/chart-throughput.tsv" "Latency percentiles, wrk -t1 -c32, random ids" "$OUT/chart-latency.tsv"
    "$CHART_BIN" "$OUT/chart.json" "$OUT/bench.svg"
    {
        echo
        echo "![make bench](bench.svg)"
    } >>"$REPORT"
    if [ -n "$FULL_SIZE" ]; then
        # A full-size run refreshes the chart the README shows.
        cp "$OUT/bench.svg" "$ROOT/loadtest/bench.svg"
        say "copied the chart to loadtest/bench.svg (commit it with the README's figures)"
    fi
    say "wrote $REPORT and $OUT/bench.svg"
    if [ "${#FAILURES[@]}" -gt 0 ]; then
        {
            echo
            echo "## Failed checks"
            echo
            for f in "${FAILURES[@]}"; do echo "- $f"; done
        } >>"$REPORT"
        for f in "${FAILURES[@]}"; do say "FAILED: $f"; done
        exit 1
    fi
}

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
CHART_BIN=$ROOT/target/release/bench-chart

# ---------------------------------------------------------------------------
# Clean-up of everything the script starts or creates
# ---------------------------------------------------------------------------

declare -A SERVICE_PID SERVICE_URL
NGINX_PIDS=()
ACK_WATCHER=
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT/logs"
rm -f "$OUT/chart-throughput.tsv" "$OUT/chart-latency.tsv"
: >"$OUT/chart-throughput.tsv"
: >"$OUT/chart-latency.tsv"

stop_pid() { # pid: SIGTERM, up to 20 s, then SIGKILL
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_service() { stop_pid "${SERVICE_PID[$1]}"; unset "SERVICE_PID[$1]"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for name in "${!SERVICE_PID[@]}"; do stop_pid "${SERVICE_PID[$name]}"; done
    for pid in "${NGINX_PIDS[@]}"; do stop_pid "$pid"; done
    [ -n "$ACK_WATCHER" ] && stop_pid "$ACK_WATCHER"
    psql_admin -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    psql_admin -qc "DROP DATABASE IF EXISTS $DB_ONE WITH (FORCE)" >/dev/null 2>&1 || true
    helper nats-request "$NATS_URL" "\$JS.API.STREAM.DELETE.$STREAM" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    [ "$status" = 0 ] || say "failed (exit $status); service logs are in $OUT/logs"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# The service instances
# ---------------------------------------------------------------------------

# start_service name database consumer [VAR=value...]: an instance with the
# defaults but for where it finds its servers and where it listens. Its
# address is the C1 start-up line on stdout ({"http_addr": ...}) or, from
# builds before that line, the "listening on" log line.
start_service() {
    local name=$1 db=$2 consumer=$3 log=$OUT/logs/service-$1.log
    shift 3
    # Emptied here, not only by the child's redirection: the loop below
    # could otherwise read the address a previous instance left (the child
    # truncates when it runs, which under load can be after the first look).
    : >"$log.stdout"
    : >"$log"
    env DATABASE_URL="$(db_url "$db")" NATS_URL="$NATS_URL" NATS_STREAM="$STREAM" \
        NATS_SUBJECT="$SUBJECT" NATS_CONSUMER="$consumer" HTTP_ADDR=127.0.0.1:0 RUST_LOG=info "$@" \
        "$SERVICE_BIN" >"$log.stdout" 2>"$log" &
    SERVICE_PID[$name]=$!
    local url=
    for _ in $(seq 600); do
        url=$(sed -n 's/.*"http_addr":"\([0-9.:]*\)".*/http:\/\/\1/p' "$log.stdout" | head -n 1)
        [ -n "$url" ] || url=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$url" ] && break
        kill -0 "${SERVICE_PID[$name]}" 2>/dev/null || die "service $name exited; see $log"
        sleep 0.02
    done
    [ -n "$url" ] || die "service $name did not listen within 12 s; see $log"
    SERVICE_URL[$name]=$url
}

wait_ready() { # name timeout-seconds
    local deadline=$((SECONDS + $2))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "${SERVICE_URL[$1]}/readyz")" = 200 ]; do
        [ $SECONDS -lt $deadline ] || die "service $1 not ready within $2 s"
        sleep 0.01
    done
}

metrics() { curl -sf "${SERVICE_URL[$1]}/metrics" >"$WORK/metrics-$1.txt" || : >"$WORK/metrics-$1.txt"; }
metric_of() { # name metric-prefix
    metrics "$1"
    helper metric "$2" "$WORK/metrics-$1.txt"
}
# (curl and awk, no Python: this is polled while ingest is timed.)
cache_orders() {
    curl -sf "${SERVICE_URL[$1]}/metrics" |
        awk '$1 == "order_service_cache_orders" { print $2; found = 1; exit } END { if (!found) print 0 }'
}
vmrss_mib() { calc "$(awk '/^VmRSS:/ { print $2 }' "/proc/${SERVICE_PID[$1]}/status") / 1024" '.0f'; }

wait_cached() { # count timeout-seconds name...
    local want=$1 deadline=$((SECONDS + $2)) name
    shift 2
    for name in "$@"; do
        until [ "$(cache_orders "$name")" -ge "$want" ]; do
            [ $SECONDS -lt $deadline ] || die "not all $want orders cached by $name in time ($(cache_orders "$name"))"
            sleep 0.05
        done
    done
}

wait_served() { # uid timeout-seconds name...
    local uid=$1 deadline=$((SECONDS + $2)) name
    shift 2
    for name in "$@"; do
        until [ "$(curl -s -o /dev/null -w '%{http_code}' "${SERVICE_URL[$name]}/orders/$uid")" = 200 ]; do
            [ $SECONDS -lt $deadline ] || die "$uid not served by $name in time"
            sleep 0.01
        done
    done
}

# The columns the service writes (every one but generated identities), for
# the COPY reference.
written_columns() {
    psql_db "$1" -Atc "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
        FROM information_schema.columns
        WHERE table_name = 'orders' AND table_schema = 'public' AND is_identity = 'NO' AND is_generated = 'NEVER'"
}

# copy_reference database: exports the stored rows and times a COPY of them
# into orders_copy (LIKE orders INCLUDING ALL: same columns, defaults,
# constraints and indexes; LIKE never copies triggers); sets COPY_S/RATE.
copy_reference() {
    local db=$1 cols copy_ms rows
    cols=$(written_columns "$db")
    psql_db "$db" -qc "\\copy (SELECT $cols FROM orders) TO '$WORK/orders.copy'"
    psql_db "$db" -qc "CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)" -c CHECKPOINT
    copy_ms=$(psql_db "$db" -c '\timing on' -c "\\copy orders_copy ($cols) FROM '$WORK/orders.copy'" |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1)
    rows=$(psql_db "$db" -Atc "SELECT count(*) FROM orders_copy")
    COPY_S=$(calc "$copy_ms / 1000" '.3f')
    COPY_RATE=$(calc "$rows / $COPY_S" '.0f')
    COPY_MB=$(calc "$(stat -c %s "$WORK/orders.copy") / 1e6" '.1f')
    COPY_COLS=$cols
    psql_db "$db" -qc "DROP TABLE orders_copy"
    rm -f "$WORK/orders.copy"
}

# duplicates consumer database names...: where a duplicate can occur. The
# consumer's deliveries beyond the stream's messages are redeliveries; an
# order stored twice would show as orders_stored_total summed over the
# instances above the row count; duplicates_total counts the redelivered
# orders found already stored. Adds rows and checks to the block.
duplicates() {
    local consumer=$1 db=$2 info delivered redelivered ack_pending pending stored dups received rows name
    shift 2
    info=$(helper consumer "$NATS_URL" "$STREAM" "$consumer")
    # Acks are sent after the commit, so they can trail the caches a moment.
    for _ in $(seq 100); do
        [ "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ack_pending"])' "$info")" = 0 ] && break
        sleep 0.05
        info=$(helper consumer "$NATS_URL" "$STREAM" "$consumer")
    done
    read -r delivered redelivered ack_pending pending < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["delivered"], d["redelivered"], d["ack_pending"], d["pending"])' "$info")
    stored=0 dups=0 received=0
    for name in "$@"; do
        metrics "$name"
        stored=$((stored + $(helper metric 'order_service_orders_stored_total ' "$WORK/metrics-$name.txt")))
        dups=$((dups + $(helper metric 'order_service_duplicates_total ' "$WORK/metrics-$name.txt")))
        received=$((received + $(helper metric 'order_service_messages_received_total ' "$WORK/metrics-$name.txt")))
    done
    rows=$(psql_db "$db" -Atc "SELECT count(*) FROM orders")
    row "duplicates: deliveries by the consumer" "$delivered" "of which redelivered: $redelivered; still unacked: $ack_pending; undelivered: $pending; messages_received_total (all instances) $received"
    row "duplicates: duplicates_total" "$dups" "orders_stored_total (all instances) $stored; rows $rows"
    check "every delivery acked (ack_pending = 0, pending = 0)" "$ack_pending == 0 and $pending == 0"
    check "each row stored once (sum of orders_stored_total = rows)" "$stored == $rows"
    check "duplicates only from redeliveries (duplicates_total <= deliveries - messages)" "$dups <= $delivered - $rows"
}

# ---------------------------------------------------------------------------
# The report's head
# ---------------------------------------------------------------------------

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
{
    echo "# make bench"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` (loadtest/bench.sh) at commit $COMMIT."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| CPU | $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), nproc $(nproc) |"
    echo "| memory | $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| kernel | $(uname -sr) |"
    echo "| Rust | $(rustc --version 2>/dev/null || echo unknown) (release build) |"
    echo "| PostgreSQL | $(psql_admin -Atc 'SHOW server_version') |"
    echo "| nginx | $(nginx -v 2>&1 | sed 's/.*nginx\///') |"
    echo "| wrk | $( (wrk -v 2>&1 || true) | head -n 1 | awk '{ print $2 }') |"
    echo
    echo "Everything runs on this one machine: the load generators share the cores"
    echo "with the service, PostgreSQL and NATS. Compare the ratios, not the absolute figures."
    echo "Sizes: BENCH_BACKLOG=$N BENCH_SECONDS=$SECONDS_PER_RUN BENCH_TAIL_ORDERS=$TAIL_N"
    echo "BENCH_TAIL_SECONDS=$TAIL_SECONDS BENCH_TAIL_ROUNDS=$TAIL_ROUNDS BENCH_UNDER_INGEST_RATE=$UNDER_RATE"
    echo "BENCH_UNDER_RUNS=$UNDER_RUNS BENCH_RESTORE_ORDERS=$BIG."
} >"$REPORT"

psql_admin -qc "CREATE DATABASE $DB" -c "CREATE DATABASE $DB_ONE" >/dev/null

# ---------------------------------------------------------------------------
# backlog: the orders wait in the stream before any instance starts
# ---------------------------------------------------------------------------

say "backlog: pusher --print --count $N --seed 1, then pusher --from it (no instance running)"
"$PUSHER_BIN" --print --count "$N" --seed 1 >"$WORK/backlog.jsonl"
LAST_UID=$(helper last-uid "$WORK/backlog.jsonl")
env NATS_URL="$NATS_URL" NATS_STREAM="$STREAM" NATS_SUBJECT="$SUBJECT" \
    timeout 900 "$PUSHER_BIN" --from "$WORK/backlog.jsonl" --json >"$WORK/pusher-backlog.json"
PUBLISH_RATE=$(helper json "$WORK/pusher-backlog.json" "round(d['confirmed_per_second'])")
[ "$(helper json "$WORK/pusher-backlog.json" "d['failed']")" = 0 ] || die "backlog: pusher failed to publish some orders"

# backlog_run title database consumer target names...: starts the instances
# at once and times them until every order is cached by each and the last
# published order is served by each.
backlog_run() {
    local title=$1 db=$2 consumer=$3 goal=$4 t0 t1 t_stored s rate ratio name
    shift 4
    block_start "$title" "$N orders waiting (pusher --count $N --seed 1, pusher's mix); $# instance(s) with the defaults; clock from the spawn to every order stored and $LAST_UID served by each"
    t0=$EPOCHREALTIME
    for name in "$@"; do start_service "$name" "$db" "$consumer"; done
    wait_cached "$N" $((120 + N / 200)) "$@"
    t_stored=$EPOCHREALTIME
    wait_served "$LAST_UID" 60 "$@"
    t1=$EPOCHREALTIME
    s=$(elapsed "$t0" "$t1")
    t_stored=$(elapsed "$t0" "$t_stored")
    rate=$(calc "$N / $s" '.0f')
    [ "$(psql_db "$db" -Atc "SELECT count(*) FROM orders")" = "$N" ] || die "$title: not $N rows stored"
    copy_reference "$db"
    ratio=$(calc "$rate / $COPY_RATE" '.2f')
    row "$# instance(s): backlog drained, all served" "$rate orders/s" "$N orders in $s s (all cached at $t_stored s); the backlog was published at $PUBLISH_RATE msgs/s beforehand"
    row "PostgreSQL COPY, same rows, same run" "$COPY_RATE rows/s" "$N rows ($COPY_MB MB) in $COPY_S s into orders_copy (LIKE orders INCLUDING ALL, no trigger), columns $COPY_COLS; psql \\timing"
    target "service / COPY" "$ratio" ">=" "$goal"
    duplicates "$consumer" "$db" "$@"
    block_end
    bar "$title" "$rate" 0
    bar "COPY of the same rows" "$COPY_RATE" 1
}

backlog_run "backlog, one instance" "$DB_ONE" "${CONSUMER}_one" 0.6 one
stop_service one
psql_admin -qc "DROP DATABASE $DB_ONE WITH (FORCE)" >/dev/null
helper nats-request "$NATS_URL" "\$JS.API.CONSUMER.DELETE.$STREAM.${CONSUMER}_one" >/dev/null
backlog_run "backlog, two instances" "$DB" "$CONSUMER" 0.8 a b
N_STORED=$N
if [ "${BENCH_ONLY:-}" = backlog ]; then
    say "BENCH_ONLY=backlog: skipping the other blocks"
    FULL_SIZE= # a partial run never refreshes the README's chart
    finish_report
    exit 0
fi

# ---------------------------------------------------------------------------
# nginx: the same bytes as files, one worker and `worker_processes auto`
# ---------------------------------------------------------------------------

URL_A=${SERVICE_URL[a]}
mkdir -p "$WORK/www/orders"
# Bodies may hold newlines and tabs, so rows and fields are split on NUL
# bytes (U+0000 is the one character an order can never contain).
export_bodies() { # file-of-ids
    psql_bench -qc "CREATE TEMP TABLE wanted (order_uid text)" \
        -c "\\copy wanted FROM '$1'" \
        -At --field-separator-zero --record-separator-zero \
        -c "SELECT order_uid, coalesce(body, data::text) FROM orders JOIN wanted USING (order_uid)" |
        helper export-bodies "$WORK/www/orders"
    chmod -R a+rX "$WORK/www"
}

start_nginx() { # workers -> sets NGINX_URL
    local workers=$1 dir=$WORK/nginx-$1 port
    port=$(free_port)
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
# A private nginx for make bench: loopback only, static files.
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $WORK/www;
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>"$dir/stderr.log" &
    NGINX_PIDS+=($!)
    NGINX_URL=http://127.0.0.1:$port
    for _ in $(seq 100); do answers 127.0.0.1 "$port" && return; sleep 0.05; done
    die "nginx ($workers workers) did not start: $(tail -n 3 "$dir/stderr.log" "$dir/error.log" 2>/dev/null)"
}

same_bytes() { # uid: the service and both nginx answer the same body
    curl -sf "$URL_A/orders/$1" -o "$WORK/sample-service.json"
    curl -sf "$NGINX1_URL/orders/$1" -o "$WORK/sample-nginx.json" || die "nginx does not serve $1"
    cmp -s "$WORK/sample-service.json" "$WORK/sample-nginx.json" || die "the exported body of $1 differs from what the service sends"
    curl -sf "$NGINXA_URL/orders/$1" -o "$WORK/sample-nginx.json" || die "nginx (auto) does not serve $1"
}

start_nginx 1
NGINX1_URL=$NGINX_URL
start_nginx auto
NGINXA_URL=$NGINX_URL
NGINX_AUTO_WORKERS=$(pgrep -c -P "${NGINX_PIDS[1]}" || true)

run_wrk() { # output seconds connections script url [wrk args...]
    local out=$1 seconds=$2 connections=$3 script=$4 url=$5
    shift 5
    timeout $((seconds + 60)) wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$script" "$@" "$url" >"$out"
}
wrk_field() { helper wrk-field "$1" "$2"; }
wrk_summary() { helper wrk-summary "$1"; }
wrk_errors() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["non_2xx_3xx"] + d["socket_errors"])' "$(helper wrk "$1")"; }

run_loadtest() { # url output [args]: exit 1 (some requests failed) is a result
    local url=$1 out=$2 status=0
    shift 2
    timeout $((SECONDS_PER_RUN + BOUNDED_SECONDS + BOUNDED_WARMUP + 120)) "$LOADTEST_BIN" --url "$url" --json "$@" >"$out" || status=$?
    [ "$status" -le 1 ] || die "loadtest against $url failed (exit $status)"
    [ "$status" = 0 ] || say "loadtest against $url: some requests failed: $(helper json "$out" "'; '.join(d['error_samples'][:3])")"
}
lt() { helper json "$1" "$2"; }

# ---------------------------------------------------------------------------
# serve: random ids of the backlog
# ---------------------------------------------------------------------------

psql_bench -Atc "SELECT order_uid FROM orders ORDER BY random() LIMIT 10000" >"$WORK/ids.txt"
export_bodies "$WORK/ids.txt"
same_bytes "$(head -n 1 "$WORK/ids.txt")"
helper lua "$WORK/ids.txt" "$WORK/random-order.lua"
N_SAMPLED=$(wc -l <"$WORK/ids.txt")
BODY_BYTES=$(stat -c %s "$WORK/sample-service.json")

block_start "serve" "loadtest --connections $CONNECTIONS --duration ${SECONDS_PER_RUN}s --ids ids.txt; wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s --latency -s random-order.lua ($N_SAMPLED random ids of the backlog)"
run_loadtest "$URL_A" "$WORK/lt-service.json" --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --ids "$WORK/ids.txt"
run_loadtest "$NGINX1_URL" "$WORK/lt-nginx.json" --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --ids "$WORK/ids.txt"
run_wrk "$WORK/wrk-service.txt" "$SECONDS_PER_RUN" "$CONNECTIONS" "$WORK/random-order.lua" "$URL_A"
run_wrk "$WORK/wrk-nginx1.txt" "$SECONDS_PER_RUN" "$CONNECTIONS" "$WORK/random-order.lua" "$NGINX1_URL"
run_wrk "$WORK/wrk-nginxa.txt" "$SECONDS_PER_RUN" "$CONNECTIONS" "$WORK/random-order.lua" "$NGINXA_URL"
LT_RATE=$(lt "$WORK/lt-service.json" "round(d['requests_per_second'])")
LTN_RATE=$(lt "$WORK/lt-nginx.json" "round(d['requests_per_second'])")
WRK_RATE=$(calc "$(wrk_field "$WORK/wrk-service.txt" rate)" '.0f')
NGX1_RATE=$(calc "$(wrk_field "$WORK/wrk-nginx1.txt" rate)" '.0f')
NGXA_RATE=$(calc "$(wrk_field "$WORK/wrk-nginxa.txt" rate)" '.0f')
row "loadtest → service" "$LT_RATE req/s" "$(lt "$WORK/lt-service.json" "'p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.1f ms, errors %d' % (d['latency_ms']['p50'], d['latency_ms']['p99'], d['latency_ms']['p99_9'], d['latency_ms']['max'], d['errors'] + d['unexpected'])"); service / nginx (1 worker) = $(calc "$LT_RATE / $LTN_RATE" '.2f')"
row "loadtest → nginx, 1 worker" "$LTN_RATE req/s" "$(lt "$WORK/lt-nginx.json" "'p50 %.2f ms, p99 %.2f ms, max %.1f ms, errors %d' % (d['latency_ms']['p50'], d['latency_ms']['p99'], d['latency_ms']['max'], d['errors'] + d['unexpected'])")"
row "wrk → service" "$WRK_RATE req/s" "$(wrk_summary "$WORK/wrk-service.txt")"
row "wrk → nginx, 1 worker" "$NGX1_RATE req/s" "$(wrk_summary "$WORK/wrk-nginx1.txt")"
row "wrk → nginx, worker_processes auto ($NGINX_AUTO_WORKERS)" "$NGXA_RATE req/s" "$(wrk_summary "$WORK/wrk-nginxa.txt")"
target "wrk: service / nginx (1 worker)" "$(calc "$WRK_RATE / $NGX1_RATE" '.2f')" ">=" 0.85
note "wrk: service / nginx (worker_processes auto, $NGINX_AUTO_WORKERS workers) = $(calc "$WRK_RATE / $NGXA_RATE" '.2f') (no target)"
note "bodies: $BODY_BYTES bytes for the first sampled order; nginx serves the exact bytes the service sends (checked with cmp), sendfile on"
block_end
bar "serve: service (wrk)" "$WRK_RATE" 0
bar "serve: nginx, 1 worker" "$NGX1_RATE" 1
bar "serve: nginx, auto ($NGINX_AUTO_WORKERS)" "$NGXA_RATE" 1

# ---------------------------------------------------------------------------
# tail: 2,000 freshly ingested orders at random (issue 12's measurement)
# ---------------------------------------------------------------------------

"$PUSHER_BIN" --print --count "$TAIL_N" --seed 5 >"$WORK/tail.jsonl"
helper uids "$WORK/tail.jsonl" >"$WORK/tail-ids.txt"
env NATS_URL="$NATS_URL" NATS_STREAM="$STREAM" NATS_SUBJECT="$SUBJECT" \
    timeout 300 "$PUSHER_BIN" --from "$WORK/tail.jsonl" --json >"$WORK/pusher-tail.json"
N_STORED=$((N_STORED + TAIL_N))
wait_cached "$N_STORED" 120 a b
export_bodies "$WORK/tail-ids.txt"
same_bytes "$(tail -n 1 "$WORK/tail-ids.txt")"
helper lua "$WORK/tail-ids.txt" "$WORK/tail.lua"
for i in $(seq "$TAIL_N"); do echo "unknown${i}x$RANDOM"; done >"$WORK/unknown-ids.txt"
helper lua "$WORK/unknown-ids.txt" "$WORK/unknown.lua"
ETAGS=$(helper etags "$URL_A" "$WORK/tail-ids.txt" "$WORK/etag.lua")

TAIL_CMD="wrk -t1 -c32 -d${TAIL_SECONDS}s --latency -s tail.lua ($TAIL_N ids published just before, one at random per request)"
block_start "tail: $TAIL_N fresh orders at random" "$TAIL_CMD; $TAIL_ROUNDS rounds alternating service, nginx 1 worker, nginx auto"
for r in $(seq "$TAIL_ROUNDS"); do
    run_wrk "$WORK/tail-service-$r.txt" "$TAIL_SECONDS" 32 "$WORK/tail.lua" "$URL_A"
    run_wrk "$WORK/tail-nginx1-$r.txt" "$TAIL_SECONDS" 32 "$WORK/tail.lua" "$NGINX1_URL"
    run_wrk "$WORK/tail-nginxa-$r.txt" "$TAIL_SECONDS" 32 "$WORK/tail.lua" "$NGINXA_URL"
done
fields() { # name field: each round's value
    local r
    for r in $(seq "$TAIL_ROUNDS"); do wrk_field "$WORK/tail-$1-$r.txt" "$2"; done | tr '\n' ' '
}
# shellcheck disable=SC2046 # word splitting intended: one argument per round
{
    T_RATE=$(helper median $(fields service rate))
    T1_RATE=$(helper median $(fields nginx1 rate))
    TA_RATE=$(helper median $(fields nginxa rate))
    T_P99=$(helper median $(fields service p99))
    T1_P99=$(helper median $(fields nginx1 p99))
}
T_ERR=0
for r in $(seq "$TAIL_ROUNDS"); do T_ERR=$((T_ERR + $(wrk_errors "$WORK/tail-service-$r.txt"))); done
row "wrk → service" "$(calc "$T_RATE" '.0f') req/s" "median of $TAIL_ROUNDS; each: $(fields service rate)req/s; p99 median $T_P99 ms (each: $(fields service p99)ms); errors $T_ERR"
row "wrk → nginx, 1 worker" "$(calc "$T1_RATE" '.0f') req/s" "median of $TAIL_ROUNDS; p99 median $T1_P99 ms"
row "wrk → nginx, worker_processes auto ($NGINX_AUTO_WORKERS)" "$(calc "$TA_RATE" '.0f') req/s" "median of $TAIL_ROUNDS"
target "service / nginx (1 worker), medians" "$(calc "$T_RATE / $T1_RATE" '.2f')" ">=" 0.85
note "service / nginx (worker_processes auto) = $(calc "$T_RATE / $TA_RATE" '.2f') (no target)"
target "service p99 at 32 connections, median of $TAIL_ROUNDS (ms)" "$T_P99" "<=" 2
block_end
bar "tail: service (median)" "$T_RATE" 0
bar "tail: nginx, 1 worker (median)" "$T1_RATE" 1
latency_series "service (tail, wrk -c32, round 1)" "$WORK/tail-service-1.txt"
latency_series "nginx, 1 worker" "$WORK/tail-nginx1-1.txt"
latency_series "nginx, auto ($NGINX_AUTO_WORKERS workers)" "$WORK/tail-nginxa-1.txt"

# The rest of issue 12's table, on the same orders. Statuses come from the
# service's own http_requests_total (wrk counts only non-2xx/3xx).
route_status() { metric_of a "order_service_http_requests_total{route=\"/orders/{order_uid}\",status=\"$1\"}"; }
block_start "tail: connections, gzip, 404s, 304s" "wrk -t1 -c256 / -H 'Accept-Encoding: gzip' / unknown ids / If-None-Match, -d${TAIL_SECONDS}s each, the $TAIL_N fresh orders"
run_wrk "$WORK/c256-service.txt" "$TAIL_SECONDS" 256 "$WORK/tail.lua" "$URL_A"
run_wrk "$WORK/c256-nginx1.txt" "$TAIL_SECONDS" 256 "$WORK/tail.lua" "$NGINX1_URL"
C256_ERR=$(wrk_errors "$WORK/c256-service.txt")
row "256 connections → service" "$(calc "$(wrk_field "$WORK/c256-service.txt" rate)" '.0f') req/s" "$(wrk_summary "$WORK/c256-service.txt")"
row "256 connections → nginx, 1 worker" "$(calc "$(wrk_field "$WORK/c256-nginx1.txt" rate)" '.0f') req/s" "$(wrk_summary "$WORK/c256-nginx1.txt")"
target "256 connections: errors" "$C256_ERR" "<=" 0
target "256 connections: p99 (ms)" "$(wrk_field "$WORK/c256-service.txt" p99)" "<=" 20

GZIP_HEADER=$(curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' "$URL_A/orders/$(head -n 1 "$WORK/tail-ids.txt")" | tr -d '\r' | sed -n 's/^[Cc]ontent-[Ee]ncoding: *//p')
run_wrk "$WORK/gzip-service.txt" "$TAIL_SECONDS" 32 "$WORK/tail.lua" "$URL_A" -H 'Accept-Encoding: gzip'
G_RATE=$(wrk_field "$WORK/gzip-service.txt" rate)
G_BYTES=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d.get("bytes_per_second", 0) / max(d["rate"], 1)))' "$(helper wrk "$WORK/gzip-service.txt")")
row "gzip clients → service" "$(calc "$G_RATE" '.0f') req/s" "$(wrk_summary "$WORK/gzip-service.txt"); Content-Encoding: ${GZIP_HEADER:-none (the service sent identity)}; about $G_BYTES bytes a response on the wire"
target "gzip / identity rate (median above)" "$(calc "$G_RATE / $T_RATE" '.2f')" ">=" 1.0

before=$(route_status 404)
run_wrk "$WORK/404-service.txt" "$TAIL_SECONDS" 32 "$WORK/unknown.lua" "$URL_A"
N404=$(($(route_status 404) - before))
R404=$(wrk_field "$WORK/404-service.txt" rate)
row "404s → service (unknown ids)" "$(calc "$R404" '.0f') req/s" "p50 $(wrk_field "$WORK/404-service.txt" p50) ms, p99 $(wrk_field "$WORK/404-service.txt" p99) ms; the service counted $N404 404s of $(wrk_field "$WORK/404-service.txt" requests) requests"
target "404 / 200 rate" "$(calc "$R404 / $T_RATE" '.2f')" ">=" 1.0

if [ "$ETAGS" -gt 0 ]; then
    before=$(route_status 304)
    run_wrk "$WORK/304-service.txt" "$TAIL_SECONDS" 32 "$WORK/etag.lua" "$URL_A"
    N304=$(($(route_status 304) - before))
    R304=$(wrk_field "$WORK/304-service.txt" rate)
    row "304s → service (If-None-Match: its ETag)" "$(calc "$R304" '.0f') req/s" "p50 $(wrk_field "$WORK/304-service.txt" p50) ms, p99 $(wrk_field "$WORK/304-service.txt" p99) ms; the service counted $N304 304s of $(wrk_field "$WORK/304-service.txt" requests) requests; $ETAGS of $TAIL_N orders had an ETag"
    target "304 / 200 rate" "$(calc "$R304 / $T_RATE" '.2f')" ">=" 1.0
else
    # No ETag to send back: If-None-Match: * still asks the question (a
    # service without conditional requests answers 200 with the body).
    sed 's/wrk.format("GET", "\/orders\/" .. ids\[math.random(#ids)\])/wrk.format("GET", "\/orders\/" .. ids[math.random(#ids)], {["If-None-Match"] = "*"})/' \
        "$WORK/tail.lua" >"$WORK/etag.lua"
    before=$(route_status 304)
    run_wrk "$WORK/304-service.txt" "$TAIL_SECONDS" 32 "$WORK/etag.lua" "$URL_A"
    N304=$(($(route_status 304) - before))
    R304=$(wrk_field "$WORK/304-service.txt" rate)
    row "304s → service (If-None-Match: *)" "$(calc "$R304" '.0f') req/s" "the service sends no ETag, so If-None-Match: * was sent; it counted $N304 304s of $(wrk_field "$WORK/304-service.txt" requests) requests"
    target "304 / 200 rate" "$(calc "$R304 / $T_RATE" '.2f')" ">=" 1.0
fi
block_end

# ---------------------------------------------------------------------------
# serve under ingest: publishing covers the whole wrk window
# ---------------------------------------------------------------------------

UNDER_N=$((UNDER_RATE * (UNDER_SECONDS + 3)))
UNDER_CMD="pusher --count $UNDER_N --rate $UNDER_RATE (rate x (window + 3 s)), wrk -t1 -c$CONNECTIONS -d${UNDER_SECONDS}s --latency -s random-order.lua started 1 s after pusher"
block_start "serve under ingest" "$UNDER_CMD; $UNDER_RUNS run(s)"
rm -f "$WORK/acks.json" "$WORK/acks.json.ready"
# (exec: $! is then python itself, which a SIGTERM must reach.)
"${HELPER[@]}" watch-acks "$NATS_URL" "$STREAM" "$WORK/acks.json" &
ACK_WATCHER=$!
for _ in $(seq 100); do [ -e "$WORK/acks.json.ready" ] && break; sleep 0.05; done
info0=$(helper consumer "$NATS_URL" "$STREAM" "$CONSUMER")
for run in $(seq "$UNDER_RUNS"); do
    t_pub=$EPOCHREALTIME
    env NATS_URL="$NATS_URL" NATS_STREAM="$STREAM" NATS_SUBJECT="$SUBJECT" \
        timeout 900 "$PUSHER_BIN" --count "$UNDER_N" --seed $((100 + run)) --rate "$UNDER_RATE" --json \
        >"$WORK/pusher-under-$run.json" &
    pusher_pid=$!
    sleep 1
    t_wrk=$EPOCHREALTIME
    run_wrk "$WORK/wrk-under-$run.txt" "$UNDER_SECONDS" "$CONNECTIONS" "$WORK/random-order.lua" "$URL_A"
    t_wrk_end=$EPOCHREALTIME
    running_at_end=no
    kill -0 "$pusher_pid" 2>/dev/null && running_at_end=yes
    wait "$pusher_pid" || die "serve under ingest: pusher failed"
    t_pub_end=$EPOCHREALTIME
    N_STORED=$((N_STORED + UNDER_N))
    wait_cached "$N_STORED" $((120 + UNDER_N / 200)) a b
    cover=$(python3 -c 'import sys; a,b,c,d = map(float, sys.argv[1:]); print(f"publishing from {a-b:+.1f} s to {d-b:+.1f} s of the wrk window [0, {c-b:.1f}] s")' "$t_pub" "$t_wrk" "$t_wrk_end" "$t_pub_end")
    row "run $run: wrk → service during ingest" "$(calc "$(wrk_field "$WORK/wrk-under-$run.txt" rate)" '.0f') req/s" "$(wrk_summary "$WORK/wrk-under-$run.txt"); pusher confirmed $(helper json "$WORK/pusher-under-$run.json" "round(d['confirmed_per_second'])") msgs/s; $cover"
    check "run $run: publishing covered the whole wrk window (pusher still running when wrk ended)" "'$running_at_end' == 'yes'"
done
# shellcheck disable=SC2046
if [ "$UNDER_RUNS" -gt 1 ]; then
    note "median over the runs: $(helper median $(for r in $(seq "$UNDER_RUNS"); do wrk_field "$WORK/wrk-under-$r.txt" rate; done)) req/s, p99 $(helper median $(for r in $(seq "$UNDER_RUNS"); do wrk_field "$WORK/wrk-under-$r.txt" p99; done)) ms"
fi
duplicates "$CONSUMER" "$DB" a b
info1=$(helper consumer "$NATS_URL" "$STREAM" "$CONSUMER")
sleep 0.5
stop_pid "$ACK_WATCHER"
ACK_WATCHER=
[ -s "$WORK/acks.json" ] || die "serve under ingest: the ack counter wrote nothing"
ACKS=$(cat "$WORK/acks.json")
read -r ACKED TERMS ACK_REDEL DOUBLE SEQ_TWICE PROGRESS NAKS < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["acks"], d["terms"], d["acks_of_redeliveries"], d["double_acks_same_delivery"], d["stream_sequences_acked_twice"], d["progress"], d["naks"])' "$ACKS")
DELIVERED_HERE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[2])["delivered"] - json.loads(sys.argv[1])["delivered"])' "$info0" "$info1")
row "acks seen on \$JS.ACK.$STREAM.>" "$ACKED" "for $DELIVERED_HERE deliveries in this block; terms (dead letters) $TERMS; acks of a redelivery $ACK_REDEL; progress acks (+WPI) $PROGRESS; naks $NAKS"
row "double acks" "$DOUBLE" "the same delivery acked twice; stream sequences acked twice (by any delivery) $SEQ_TWICE"
check "no delivery acked twice" "$DOUBLE == 0"
check "every delivery of the block acked once" "$ACKED + $TERMS == $DELIVERED_HERE"
block_end
bar "under ingest: service (wrk)" "$(wrk_field "$WORK/wrk-under-1.txt" rate)" 0
latency_series "service during ingest (run 1)" "$WORK/wrk-under-1.txt"

for pid in "${NGINX_PIDS[@]}"; do stop_pid "$pid"; done
NGINX_PIDS=()

# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------

block_start "restore" "restart one instance with $N_STORED orders stored; poll /readyz every 10 ms"
stop_service b
t0=$EPOCHREALTIME
start_service b "$DB" "$CONSUMER"
wait_ready b 600
t1=$EPOCHREALTIME
RESTORE_S=$(elapsed "$t0" "$t1")
RESTORED=$(cache_orders b)
[ "$RESTORED" = "$N_STORED" ] || die "restore: instance b caches $RESTORED orders, expected $N_STORED"
row "restart to /readyz 200" "$(calc "$N_STORED / $RESTORE_S" '.0f') orders/s" "$N_STORED orders in $RESTORE_S s; VmRSS $(vmrss_mib b) MiB; cached JSON $(calc "$(metric_of b 'order_service_cache_bytes ') / 1e6" '.1f') MB"
block_end

# restore at scale: BIG orders in all, the rows beyond those stored so far
# generated by pusher (its varied mix: 1-5 items, every field drawn) and
# written by SQL (publishing a million through NATS would only time the
# ingest again). Both instances stop first, so no listener loads them.
BIG_S=
if [ "$BIG" -gt "$N_STORED" ]; then
    MORE=$((BIG - N_STORED))
    block_start "restore at scale" "pusher --print --count $MORE --seed 9 | COPY into a staging table, INSERT INTO orders SELECT; then start one instance, poll /readyz every 10 ms"
    stop_service a
    stop_service b
    "$PUSHER_BIN" --print --count "$MORE" --seed 9 |
        psql_bench -qc "CREATE UNLOGGED TABLE bench_staging (body text)" \
            -c "\\copy bench_staging (body) FROM pstdin WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
    psql_bench -qc "INSERT INTO orders (order_uid, data, body)
            SELECT body::jsonb->>'order_uid', body::jsonb, body FROM bench_staging
            ON CONFLICT (order_uid) DO NOTHING" \
        -c "DROP TABLE bench_staging" -c "VACUUM ANALYZE orders"
    BIG=$(psql_bench -Atc "SELECT count(*) FROM orders")
    t0=$EPOCHREALTIME
    psql_bench -Atc "SELECT order_uid, body FROM orders" >/dev/null
    t1=$EPOCHREALTIME
    BIG_REF_S=$(elapsed "$t0" "$t1")
    t0=$EPOCHREALTIME
    start_service b "$DB" "$CONSUMER"
    wait_ready b 600
    t1=$EPOCHREALTIME
    BIG_S=$(elapsed "$t0" "$t1")
    [ "$(cache_orders b)" = "$BIG" ] || die "restore at scale: instance b caches $(cache_orders b) orders, expected $BIG"
    BIG_RSS_MB=$(vmrss_mib b)
    BIG_CACHE_MIB=$(calc "$(metric_of b 'order_service_cache_bytes ') / 1048576" '.0f')
    row "restart to /readyz 200, $BIG orders" "$(calc "$BIG / $BIG_S" '.0f') orders/s" "$BIG_S s; psql SELECT order_uid, body to /dev/null $BIG_REF_S s (service / psql time $(calc "$BIG_S / $BIG_REF_S" '.2f'))"
    row "VmRSS with $BIG orders cached" "$BIG_RSS_MB MiB" "$BIG_CACHE_MIB MiB of JSON cached: $(calc "$BIG_RSS_MB / $BIG_CACHE_MIB" '.2f') x"
    block_end
fi

# ---------------------------------------------------------------------------
# bounded: CACHE_MAX_BYTES = 10% of the bodies, Zipf reads (issue 11)
# ---------------------------------------------------------------------------

if ! "$SERVICE_BIN" --help 2>/dev/null | grep -q -- '--cache-max-bytes'; then
    block_start "bounded" "order-service --help | grep -- --cache-max-bytes"
    note "skipped: service has no --cache-max-bytes"
    block_end
elif [ -z "$BIG_S" ]; then
    block_start "bounded" "needs the restore at scale (BENCH_RESTORE_ORDERS above the orders stored)"
    note "skipped: BENCH_RESTORE_ORDERS=$BIG is not above the $N_STORED orders already stored"
    block_end
else
    BODY_TOTAL=$(psql_bench -Atc "SELECT sum(octet_length(coalesce(body, data::text))) FROM orders")
    BUDGET=$((BODY_TOTAL / 10))
    # Popularity is independent of age: a shuffled list, ranked by Zipf.
    psql_bench -Atc "SELECT order_uid FROM orders ORDER BY random()" >"$WORK/all-ids.txt"
    # Each run draws its own ids (--seed): a measured run that replayed the
    # warm-up's sequence would find the ids the warm-up just loaded.
    ZIPF=(--zipf 1.0 --ids "$WORK/all-ids.txt" --connections "$CONNECTIONS")
    ZCMD="loadtest --zipf 1.0 --ids all-ids.txt ($BIG ids, shuffled) --connections $CONNECTIONS --duration ${BOUNDED_SECONDS}s --seed N"
    block_start "bounded" "$ZCMD; unbounded instance, then one with CACHE_MAX_BYTES=$BUDGET (10% of $BODY_TOTAL body bytes), measured after ${BOUNDED_WARMUP} s of the same reads (another seed); then the same reads at half the bounded rate (--rate), and hits idle, beside reads of cached orders and beside a storm of unknown ids"
    run_loadtest "${SERVICE_URL[b]}" "$WORK/zipf-unbounded.json" "${ZIPF[@]}" --duration "${BOUNDED_SECONDS}s" --seed 1
    U_RATE=$(lt "$WORK/zipf-unbounded.json" "round(d['requests_per_second'])")
    stop_service b
    t0=$EPOCHREALTIME
    start_service c "$DB" "$CONSUMER" CACHE_MAX_BYTES="$BUDGET"
    wait_ready c 600
    t1=$EPOCHREALTIME
    C_READY_S=$(elapsed "$t0" "$t1")
    run_loadtest "${SERVICE_URL[c]}" "$WORK/zipf-warmup.json" "${ZIPF[@]}" --duration "${BOUNDED_WARMUP}s" --seed 2
    # measured COMMAND...: runs it between two scrapes of c, metrics-c-before.txt
    # and metrics-c.txt, which miss_q and counted compare
    measured() {
        metrics c
        cp "$WORK/metrics-c.txt" "$WORK/metrics-c-before.txt"
        "$@"
        metrics c
    }
    miss_q() { helper histogram-quantile order_service_cache_miss_duration_seconds "$1" "$WORK/metrics-c-before.txt" "$WORK/metrics-c.txt"; }
    counted() { echo $(($(helper metric "$1" "$WORK/metrics-c.txt") - $(helper metric "$1" "$WORK/metrics-c-before.txt"))); }
    measured run_loadtest "${SERVICE_URL[c]}" "$WORK/zipf-bounded.json" "${ZIPF[@]}" --duration "${BOUNDED_SECONDS}s" --seed 3
    MISS_P50=$(miss_q 0.5)
    MISS_P99=$(miss_q 0.99)
    hits=$(counted order_service_cache_hits_total)
    miss=$(counted order_service_cache_misses_total)
    C_BYTES=$(helper metric 'order_service_cache_bytes ' "$WORK/metrics-c.txt")
    B_RATE=$(lt "$WORK/zipf-bounded.json" "round(d['requests_per_second'])")
    C_RSS=$(vmrss_mib c)
    HIT_RATIO=$(calc "$hits / max($hits + $miss, 1)" '.3f')
    PER_STATUS=$(lt "$WORK/zipf-bounded.json" "'; '.join('%s: %d, p50 %.2f ms, p99 %.2f ms' % (s, d['status'][s], l['p50'], l['p99']) for s, l in d['latency_by_status_ms'].items())")
    # Open loop at half the saturating rate: latency at a stated load.
    HALF_RATE=$((B_RATE / 2))
    measured run_loadtest "${SERVICE_URL[c]}" "$WORK/zipf-half.json" "${ZIPF[@]}" --duration "${BOUNDED_SECONDS}s" --seed 4 --rate "$HALF_RATE"
    HALF_P50=$(miss_q 0.5)
    HALF_P99=$(miss_q 0.99)
    HALF_MISSES=$(counted order_service_cache_misses_total)
    # Hits: one connection at 200/s over the 50 hottest ids (the list's
    # first: Zipf ranks by list order), idle, then beside 32 connections
    # reading cached orders, then beside 32 connections of unknown ids.
    head -n 50 "$WORK/all-ids.txt" >"$WORK/hot-ids.txt"
    HITTER=(--ids "$WORK/hot-ids.txt" --connections 1 --rate 200 --duration 5s)
    run_loadtest "${SERVICE_URL[c]}" "$WORK/hits-idle.json" "${HITTER[@]}"
    # beside NAME LOADTEST-ARGS: the hitter, 1 s into 7 s of 32 connections
    beside() {
        local name=$1 pid
        shift
        timeout 60 "$LOADTEST_BIN" --url "${SERVICE_URL[c]}" --json --connections "$CONNECTIONS" \
            --duration 7s "$@" >"$WORK/$name.json" &
        pid=$!
        sleep 1
        run_loadtest "${SERVICE_URL[c]}" "$WORK/hits-$name.json" "${HITTER[@]}"
        wait "$pid" || say "$name: some requests failed (503s count here): $(lt "$WORK/$name.json" "d['status']")"
    }
    # The same load of cached orders (the 1,000 hottest), then unknown ids.
    head -n 1000 "$WORK/all-ids.txt" >"$WORK/warm-ids.txt"
    beside cached --ids "$WORK/warm-ids.txt"
    measured beside storm --unknown 1 --ids "$WORK/all-ids.txt"
    hit_p99() { lt "$1" "round(d['latency_ms']['p99'], 2)"; }
    IDLE_P99=$(hit_p99 "$WORK/hits-idle.json")
    CACHED_P99=$(hit_p99 "$WORK/hits-cached.json")
    STORM_P99=$(hit_p99 "$WORK/hits-storm.json")
    row "unbounded, Zipf reads" "$U_RATE req/s" "$(lt "$WORK/zipf-unbounded.json" "'p50 %.2f ms, p99 %.2f ms' % (d['latency_ms']['p50'], d['latency_ms']['p99'])"); start-up to ready $BIG_S s (restore at scale)"
    row "bounded, Zipf reads" "$B_RATE req/s" "per status: $PER_STATUS; hits $hits, misses $miss (cache_hits_total, cache_misses_total)"
    row "bounded: misses as the service times them" "p50 ≤ $MISS_P50 ms, p99 ≤ $MISS_P99 ms" "order_service_cache_miss_duration_seconds over the run: the bucket bound each quantile falls under (from asking a loader to its answer; a miss's HTTP latency adds the socket)"
    row "bounded, Zipf reads at half that rate (open loop)" "$(lt "$WORK/zipf-half.json" "round(d['requests_per_second'])") req/s" "misses p50 ≤ $HALF_P50 ms, p99 ≤ $HALF_P99 ms ($HALF_MISSES misses); all requests $(lt "$WORK/zipf-half.json" "'p50 %.2f ms, p99 %.2f ms' % (d['latency_ms']['p50'], d['latency_ms']['p99'])")"
    row "hits beside a storm of unknown ids" "p99 $STORM_P99 ms" "one connection at 200/s over the 50 hottest ids, beside $CONNECTIONS connections of unknown ids: $(lt "$WORK/storm.json" "'%d req/s, %s' % (d['requests_per_second'], d['status'])"); loader busy (503) $(counted order_service_loader_busy_total)"
    row "hits beside as many reads of cached orders" "p99 $CACHED_P99 ms" "the same, beside $CONNECTIONS connections reading the 1,000 hottest ids: $(lt "$WORK/cached.json" "'%d req/s, %s' % (d['requests_per_second'], d['status'])"); idle p99 $IDLE_P99 ms"
    row "bounded: start-up to ready" "$C_READY_S s" "unbounded: $BIG_S s"
    row "bounded: VmRSS" "$C_RSS MiB" "budget $(calc "$BUDGET / 1048576" '.0f') MiB; order_service_cache_bytes $C_BYTES"
    target "hit ratio" "$HIT_RATIO" ">=" 0.8
    target "bounded / unbounded rate" "$(calc "$B_RATE / $U_RATE" '.2f')" ">=" 0.5
    target "VmRSS (MiB) against 1.25 x budget + 64 MiB" "$C_RSS" "<=" "$(calc "1.25 * $BUDGET / 1048576 + 64" '.0f')"
    check "cache_bytes within the budget" "$C_BYTES <= $BUDGET"
    target "misses p99 at half the saturating rate (ms, bucket bound)" "${HALF_P99#>}" "<=" 10
    target "misses p99 at saturation (closed loop; ms, bucket bound)" "${MISS_P99#>}" "<=" 10
    target "hits p99 beside the storm / beside cached reads" "$(calc "$STORM_P99 / max($CACHED_P99, 0.01)" '.2f')" "<=" 2
    note "hits p99 beside the storm / idle = $(calc "$STORM_P99 / max($IDLE_P99, 0.01)" '.2f') (no target: it measures $CONNECTIONS more clients on $(nproc) cores, misses or not)"
    note "hits and misses both answer 200, so loadtest's p50/p99 per status mix them; the miss rows are the service's own histogram"
    note "at saturation the service, PostgreSQL and $CONNECTIONS client threads share $(nproc) cores: a miss waits for a loader thread to be scheduled among the others, a hit does not (README, Performance)"
    block_end
    bar "bounded 10%: service (Zipf)" "$B_RATE" 0
    bar "unbounded: service (Zipf)" "$U_RATE" 1
fi

# ---------------------------------------------------------------------------
# The chart, and the verdict
# ---------------------------------------------------------------------------

finish_report
