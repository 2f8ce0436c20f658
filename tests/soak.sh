#!/usr/bin/env bash
# Soak: SOAK_SECONDS (default 600) of mixed ingest and HTTP load on two release replicas
# of order-service sharing one database and one durable consumer. Replica A runs the whole
# time; replica B is restarted (SIGTERM, start, wait for /readyz) every SOAK_RESTART_EVERY
# seconds (default 120). Every SOAK_SAMPLE_EVERY seconds (default 60) it prints, for each
# replica, VmRSS, the cache's bytes, VmRSS minus the cache, threads and open descriptors.
#
# It fails when, for the same process, between its first sample at or after minute 2 and
# the end (for A: minute 2 to the end; for B: its last life):
# - VmRSS minus the cache's bytes grew by more than SOAK_MAX_RSS_GROWTH_MIB (32) plus
#   SOAK_INDEX_BYTES_PER_ORDER (400) for each order cached meanwhile (the cache's index:
#   about 200 bytes an order are measured), or
# - its open descriptors grew by more than SOAK_MAX_FD_GROWTH (32);
# and when a replica exits on its own or not 0 on SIGTERM, a load run reports an error,
# or at the end the consumer has anything pending or the caches differ from the table.
#
# Lost orders: it fails when a message the stream confirmed (a PubAck: the stream holds it)
# was neither stored nor dead-lettered. The stream is read back message by message, and the
# sets are compared, not the counts: every stream message must be a stored order with the
# same bytes (orders.body is the published text) or a dead letter with its stream sequence;
# every stored order and dead letter must come from a stream message; and the pusher's
# confirmed, non-duplicate PubAcks (its --json summaries) must not outnumber the stream's
# messages. SOAK_TAMPER_SQL, when set, runs against the soak database just before that
# comparison: a way to prove the check fails (e.g. "DELETE FROM orders WHERE ctid IN
# (SELECT ctid FROM orders LIMIT 1)").
#
# Ingest: target/release/pusher, SOAK_RATE messages/s (default 300), 5 % invalid of every
# kind, 5 % republished. HTTP: target/release/loadtest on A for the whole run and on B in
# runs of 15 s between its restarts, SOAK_HTTP_RATE requests/s each (default 300).
# The servers: DATABASE_URL's PostgreSQL (SOAK_PG_ADMIN_URL to name another) and NATS_URL
# (or SOAK_NATS_URL). Its own database, stream, subject and consumer (random names), loopback
# only; everything it started is stopped and removed on exit. Run by `make soak`; not part of
# `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_RESTART_EVERY=${SOAK_RESTART_EVERY:-120}
SOAK_SAMPLE_EVERY=${SOAK_SAMPLE_EVERY:-60}
SOAK_RATE=${SOAK_RATE:-300}
SOAK_HTTP_RATE=${SOAK_HTTP_RATE:-300}
SOAK_MAX_RSS_GROWTH_MIB=${SOAK_MAX_RSS_GROWTH_MIB:-32}
SOAK_INDEX_BYTES_PER_ORDER=${SOAK_INDEX_BYTES_PER_ORDER:-400}
SOAK_MAX_FD_GROWTH=${SOAK_MAX_FD_GROWTH:-32}
# The baseline sample is taken at this many seconds (minute 2, or earlier for short runs).
SOAK_BASELINE_AT=${SOAK_BASELINE_AT:-$((SOAK_SECONDS < 240 ? SOAK_SECONDS / 4 : 120))}
NATS_URL=${SOAK_NATS_URL:-${NATS_URL:-nats://127.0.0.1:4222}}

BIN=target/release
for tool in order-service pusher loadtest; do
    if [ ! -x "$BIN/$tool" ]; then
        echo "soak: $BIN/$tool is missing: cargo build --release -p order-service -p pusher -p loadtest" >&2
        exit 2
    fi
done
for tool in psql curl python3; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is needed" >&2; exit 2; }
done

with_dbname() { # url dbname
    python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit, urlunsplit
parts = urlsplit(sys.argv[1])
print(urlunsplit(parts._replace(path="/" + sys.argv[2])))
PY
}
# The server of DATABASE_URL (as `make services` provides it), its `postgres` database.
PG_ADMIN_URL=${SOAK_PG_ADMIN_URL:-$(with_dbname "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}" postgres)}

tag=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
DB=soak_$tag
STREAM=SOAK_$tag
SUBJECT=soak_$tag
CONSUMER=soak_$tag
WORK=$(mktemp -d "${TMPDIR:-/tmp}/order-service-soak.XXXXXX")
DB_URL=$(with_dbname "$PG_ADMIN_URL" "$DB")
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT_A=$(free_port)
PORT_B=$(free_port)
URL_A=http://127.0.0.1:$PORT_A
URL_B=http://127.0.0.1:$PORT_B

started=$SECONDS
failures=()
fail() {
    echo "soak: FAIL: $*"
    failures+=("$*")
}
elapsed() { echo $((SECONDS - started)); }

# --- NATS: JetStream API requests over the plain protocol (no CLI needed) -----------------
nats_host_port() {
    local first=${NATS_URL%%,*}
    first=${first#nats://}
    echo "${first%%/*}"
}
js_api() { # subject suffix, e.g. STREAM.DELETE.NAME; prints the JSON reply
    python3 - "$(nats_host_port)" "$1" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
s.recv(4096)  # INFO
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.soak 1\r\n'
          + f"PUB $JS.API.{sys.argv[2]} _INBOX.soak 0\r\n\r\n".encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit(1)
    data += chunk
    start = data.find(b"MSG _INBOX.soak")
    if start < 0:
        continue
    head_end = data.find(b"\r\n", start)
    if head_end < 0:
        continue
    size = int(data[start:head_end].split()[-1])
    body = data[head_end + 2:head_end + 2 + size]
    if len(body) == size:
        print(body.decode())
        break
PY
}
delete_stream() {
    js_api "STREAM.DELETE.$STREAM" >/dev/null 2>&1 || true
}
consumer_numbers() { # prints "num_pending num_ack_pending"
    js_api "CONSUMER.INFO.$STREAM.$CONSUMER" |
        python3 -c 'import json, sys; c = json.load(sys.stdin); print(c["num_pending"], c["num_ack_pending"])'
}
stream_dump() { # prints "sequence md5 nats-msg-id" for every message in the stream
    python3 - "$(nats_host_port)" "$STREAM" "soak-dump" <<'PY'
# Prints "sequence md5 msg-id" for every message in a JetStream stream, read through a
# pull consumer with AckNone created for this (the stream is deleted afterwards anyway).
import hashlib, json, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
stream, consumer = sys.argv[2], sys.argv[3]
s = socket.create_connection((host, int(port)), timeout=30)
buf = b""
def fill():
    global buf
    chunk = s.recv(1 << 20)
    if not chunk:
        sys.exit("stream dump: NATS closed the connection")
    buf += chunk
def line():
    global buf
    while b"\r\n" not in buf:
        fill()
    head, buf = buf.split(b"\r\n", 1)
    return head.decode()
def take(n):
    global buf
    while len(buf) < n + 2:
        fill()
    data, buf = buf[:n], buf[n + 2:]
    return data
def message():
    """(subject, reply, headers bytes, payload bytes) of the next MSG/HMSG."""
    while True:
        head = line()
        if head.startswith("PING"):
            s.sendall(b"PONG\r\n")
        elif head.startswith("-ERR"):
            sys.exit(f"stream dump: {head}")
        elif head.startswith("MSG "):
            parts = head.split()
            return parts[1], (parts[3] if len(parts) == 5 else None), b"", take(int(parts[-1]))
        elif head.startswith("HMSG "):
            parts = head.split()
            total = take(int(parts[-1]))
            hlen = int(parts[-2])
            return parts[1], (parts[3] if len(parts) == 6 else None), total[:hlen], total[hlen:]
line()  # INFO
s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nPING\r\n'
          b"SUB _INBOX.dump.api 1\r\nSUB _INBOX.dump.msgs 2\r\n")
def api(subject, body):
    data = json.dumps(body).encode()
    s.sendall(f"PUB $JS.API.{subject} _INBOX.dump.api {len(data)}\r\n".encode() + data + b"\r\n")
    while True:
        subject_, _, _, payload = message()
        if subject_ == "_INBOX.dump.api":
            reply = json.loads(payload)
            if "error" in reply:
                sys.exit(f"stream dump: {subject}: {reply['error']}")
            return reply
total = api(f"STREAM.INFO.{stream}", {})["state"]["messages"]
api(f"CONSUMER.CREATE.{stream}.{consumer}", {"stream_name": stream, "config": {
    "durable_name": consumer, "ack_policy": "none", "deliver_policy": "all", "max_waiting": 1}})
seen, deadline = 0, time.monotonic() + 600
out = sys.stdout
while seen < total:
    if time.monotonic() > deadline:
        sys.exit(f"stream dump: read {seen} of {total} messages in 600 s")
    request = json.dumps({"batch": 1000, "expires": 2_000_000_000}).encode()
    s.sendall(f"PUB $JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer} _INBOX.dump.msgs {len(request)}\r\n".encode()
              + request + b"\r\n")
    got = 0
    while got < 1000:
        subject, reply, headers, payload = message()
        if subject != "_INBOX.dump.msgs" and reply is None:
            continue
        if reply is None or not reply.startswith("$JS.ACK."):
            break  # a status (404 no messages, 408 timeout): this request is over
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        tokens = reply.split(".")
        sequence = int(tokens[-4])
        msg_id = "-"
        for header in headers.split(b"\r\n")[1:]:
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"nats-msg-id":
                msg_id = value.strip().decode(errors="replace")
        out.write(f"{sequence} {hashlib.md5(payload).hexdigest()} {msg_id}\n")
        got += 1
        seen += 1
api(f"CONSUMER.DELETE.{stream}.{consumer}", {})
print(f"stream dump: {seen} messages", file=sys.stderr)
PY
}

# --- processes we start, and cleanup ---------------------------------------------------------
declare -A PID
PUSHER_PID=
LOAD_A_PID=
LOAD_B_LOOP_PID=
cleanup() {
    local status=$?
    for pid in "$LOAD_B_LOOP_PID" "$LOAD_A_PID" "$PUSHER_PID" "${PID[A]:-}" "${PID[B]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "$LOAD_B_LOOP_PID" "$LOAD_A_PID" "$PUSHER_PID" "${PID[A]:-}" "${PID[B]:-}"; do
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    delete_stream
    if [ $status -ne 0 ] || [ ${#failures[@]} -gt 0 ]; then
        echo "soak: logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_replica() { # name port
    local name=$1 port=$2
    DATABASE_URL=$DB_URL NATS_URL=$NATS_URL NATS_STREAM=$STREAM NATS_SUBJECT=$SUBJECT \
        NATS_CONSUMER=$CONSUMER HTTP_ADDR=127.0.0.1:$port HTTP_WORKERS=4 RUST_LOG=info \
        "$BIN/order-service" >>"$WORK/replica-$name.log" 2>&1 &
    PID[$name]=$!
    local deadline=$((SECONDS + 60))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            tail -n 20 "$WORK/replica-$name.log"
            echo "soak: replica $name exited while starting" >&2
            exit 1
        fi
        if [ $SECONDS -gt $deadline ]; then
            echo "soak: replica $name not ready in 60 s" >&2
            exit 1
        fi
        sleep 0.2
    done
}

stop_replica() { # name; SIGTERM, expect exit 0 within 30 s
    local name=$1 pid=${PID[$1]} status=0
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -gt $deadline ]; then
            kill -9 "$pid" 2>/dev/null || true
            fail "replica $name (pid $pid) did not exit within 30 s of SIGTERM"
            break
        fi
        sleep 0.1
    done
    wait "$pid" || status=$?
    [ $status -eq 0 ] || fail "replica $name (pid $pid) exited $status after SIGTERM"
    PID[$name]=
}

metric() { # url name
    curl -s --max-time 5 "$1/metrics" | awk -v name="$2" '$1 == name { print $2; exit }'
}
digest() {
    curl -s --max-time 5 "$1/metrics" | sed -n 's/^order_service_cache_digest_info{digest="\([^"]*\)".*/\1/p'
}

declare -A BASE_PID BASE_NET BASE_FDS BASE_ORDERS LAST_NET LAST_FDS LAST_PID LAST_ORDERS
sample() { # minute label
    local line="[$(printf '%4d' "$(elapsed)") s]"
    for name in A B; do
        local pid=${PID[$name]:-} url
        [ "$name" = A ] && url=$URL_A || url=$URL_B
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            line+=" | $name down"
            continue
        fi
        local rss fds threads cache net orders
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
        fds=$(ls "/proc/$pid/fd" | wc -l)
        cache=$(metric "$url" order_service_cache_bytes)
        cache=${cache%.*}
        net=$((rss - ${cache:-0} / 1024))
        orders=$(metric "$url" order_service_cache_orders)
        orders=${orders:-0}
        line+=" | $name pid $pid VmRSS $((rss / 1024)) MiB, cache $((${cache:-0} / 1048576)) MiB, VmRSS-cache $((net / 1024)) MiB, threads $threads, fds $fds, cached $orders"
        if [ "$(elapsed)" -ge "$SOAK_BASELINE_AT" ] && [ "${BASE_PID[$name]:-}" != "$pid" ]; then
            BASE_PID[$name]=$pid
            BASE_NET[$name]=$net
            BASE_FDS[$name]=$fds
            BASE_ORDERS[$name]=$orders
            line+=" (baseline)"
        fi
        LAST_PID[$name]=$pid
        LAST_NET[$name]=$net
        LAST_FDS[$name]=$fds
        LAST_ORDERS[$name]=$orders
    done
    echo "$line"
}

# --- start -------------------------------------------------------------------------------------
echo "soak: $SOAK_SECONDS s, database $DB, stream $STREAM, replicas on :$PORT_A (A) and :$PORT_B (B), logs in $WORK"
psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
start_replica A "$PORT_A"
start_replica B "$PORT_B"

# Orders to read from the start.
"$BIN/pusher" --nats-url "$NATS_URL" --nats-stream "$STREAM" --nats-subject "$SUBJECT" \
    --count 5000 --seed 1 --json >"$WORK/pusher-initial.json" 2>>"$WORK/pusher.log"
deadline=$((SECONDS + 60))
until [ "$(metric "$URL_A" order_service_cache_orders)" = 5000 ] && [ "$(metric "$URL_B" order_service_cache_orders)" = 5000 ]; do
    [ $SECONDS -lt $deadline ] || { echo "soak: the first 5000 orders were not cached in 60 s" >&2; exit 1; }
    sleep 0.2
done

"$BIN/pusher" --nats-url "$NATS_URL" --nats-stream "$STREAM" --nats-subject "$SUBJECT" \
    --count forever --rate "$SOAK_RATE" --invalid 0.05 --invalid-kind all --duplicates 0.05 \
    --json >"$WORK/pusher.json" 2>>"$WORK/pusher.log" &
PUSHER_PID=$!

"$BIN/loadtest" --url "$URL_A" --connections 8 --rate "$SOAK_HTTP_RATE" --unknown 0.05 \
    --duration "${SOAK_SECONDS}s" --json >"$WORK/loadtest-A.json" 2>>"$WORK/loadtest.log" &
LOAD_A_PID=$!

# B's load runs in 15 s pieces, paused while B restarts (the flag file).
PAUSE=$WORK/pause-B
(
    run=
    trap '[ -n "$run" ] && kill "$run" 2>/dev/null; exit 0' TERM
    n=0
    while true; do
        while [ -e "$PAUSE" ]; do sleep 0.2; done
        n=$((n + 1))
        touch "$WORK/loading-B"
        "$BIN/loadtest" --url "$URL_B" --connections 8 --rate "$SOAK_HTTP_RATE" --unknown 0.05 \
            --duration 15s --json >"$WORK/loadtest-B-$n.json" 2>>"$WORK/loadtest.log" &
        run=$!
        wait $run && echo ok >"$WORK/loadtest-B-$n.status" || echo "failed $?" >"$WORK/loadtest-B-$n.status"
        rm -f "$WORK/loading-B"
    done
) &
LOAD_B_LOOP_PID=$!

sample
next_sample=$((started + SOAK_SAMPLE_EVERY))
next_restart=$((started + SOAK_RESTART_EVERY))
restarts=0
while [ $((SECONDS - started)) -lt "$SOAK_SECONDS" ]; do
    sleep 1
    for name in A B; do
        pid=${PID[$name]:-}
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            fail "replica $name (pid $pid) exited on its own; log tail:"
            tail -n 20 "$WORK/replica-$name.log"
            exit 1
        fi
    done
    if [ $SECONDS -ge $next_sample ]; then
        sample
        next_sample=$((next_sample + SOAK_SAMPLE_EVERY))
    fi
    if [ $SECONDS -ge $next_restart ] && [ $((SECONDS - started + 30)) -lt "$SOAK_SECONDS" ]; then
        touch "$PAUSE"
        while [ -e "$WORK/loading-B" ]; do sleep 0.2; done
        t0=$SECONDS
        stop_replica B
        start_replica B "$PORT_B"
        restarts=$((restarts + 1))
        echo "[$(printf '%4d' "$(elapsed)") s] restarted B (SIGTERM, start, /readyz 200) in $((SECONDS - t0)) s: pid ${PID[B]}"
        rm -f "$PAUSE"
        next_restart=$((next_restart + SOAK_RESTART_EVERY))
    fi
done
sample

# --- stop the load, let ingest settle, check --------------------------------------------------
kill -INT "$PUSHER_PID"
wait "$PUSHER_PID" || true
PUSHER_PID=
kill -TERM "$LOAD_B_LOOP_PID" 2>/dev/null || true
wait "$LOAD_B_LOOP_PID" 2>/dev/null || true
LOAD_B_LOOP_PID=
load_a_status=0
wait "$LOAD_A_PID" || load_a_status=$?
LOAD_A_PID=

echo "pusher: $(cat "$WORK/pusher.json")"
echo "loadtest A: $(cat "$WORK/loadtest-A.json")"
[ $load_a_status -eq 0 ] || fail "loadtest on A exited $load_a_status"
b_runs=$(ls "$WORK"/loadtest-B-*.status 2>/dev/null | wc -l)
b_failed=$(grep -L '^ok' "$WORK"/loadtest-B-*.status 2>/dev/null | wc -l)
echo "loadtest B: $b_runs runs of 15 s, $b_failed failed"
for f in $(grep -L '^ok' "$WORK"/loadtest-B-*.status 2>/dev/null); do
    json=${f%.status}.json
    # The run cut short by the end of the soak (killed, no report) is not a failure.
    [ -s "$json" ] || continue
    fail "loadtest on B: $(cat "$json")"
done

deadline=$((SECONDS + 60))
until [ "$(consumer_numbers)" = "0 0" ]; do
    if [ $SECONDS -gt $deadline ]; then
        fail "the consumer still has messages pending or unacked 60 s after the load: $(consumer_numbers)"
        break
    fi
    sleep 0.5
done
deadline=$((SECONDS + 60))
while :; do
    a=$(metric "$URL_A" order_service_cache_orders)
    b=$(metric "$URL_B" order_service_cache_orders)
    rows=$(psql -tA "$DB_URL" -c "SELECT count(*) FROM orders")
    if [ "$a" = "$rows" ] && [ "$b" = "$rows" ] && [ "$(digest "$URL_A")" = "$(digest "$URL_B")" ]; then
        break
    fi
    if [ $SECONDS -gt $deadline ]; then
        fail "caches differ from the table after 60 s: A $a, B $b, rows $rows"
        break
    fi
    sleep 0.5
done
rejected=$(psql -tA "$DB_URL" -c "SELECT count(*) FROM rejected_messages")
in_stream=$(js_api "STREAM.INFO.$STREAM" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"]["messages"])')
echo "end: $in_stream messages in the stream, $rows orders stored, $rejected dead letters; both caches hold $a with digest $(digest "$URL_A"); B restarted $restarts times"
# The counts may differ without a loss (a message republished outside the stream's 2-minute
# duplicate window is in the stream twice and stored once), so compare the sets.
if [ -n "${SOAK_TAMPER_SQL:-}" ]; then
    echo "soak: SOAK_TAMPER_SQL: $SOAK_TAMPER_SQL"
    psql -q -v ON_ERROR_STOP=1 "$DB_URL" -c "$SOAK_TAMPER_SQL"
fi
stream_dump >"$WORK/stream.txt" 2>>"$WORK/stream-dump.log" || fail "could not read the stream back: $(tail -n 1 "$WORK/stream-dump.log")"
psql -tA -F ' ' -v ON_ERROR_STOP=1 "$DB_URL" \
    -c "SELECT md5(coalesce(body, data::text)), order_uid FROM orders" >"$WORK/stored.txt"
psql -tA -v ON_ERROR_STOP=1 "$DB_URL" \
    -c "SELECT coalesce(stream_sequence::text, 'null') FROM rejected_messages" >"$WORK/dead-letters.txt"
if ! python3 - "$WORK" <<'PY'; then
import json, sys
from collections import Counter

work = sys.argv[1]
stream = {}  # sequence -> (md5, msg id)
for line in open(f"{work}/stream.txt"):
    sequence, md5, msg_id = line.rstrip("\n").split(" ", 2)
    stream[int(sequence)] = (md5, msg_id)
stored = {}  # md5 of the stored body -> order_uid
for line in open(f"{work}/stored.txt"):
    if line.strip():
        md5, uid = line.rstrip("\n").split(" ", 1)
        stored[md5] = uid
letters = Counter(line.strip() for line in open(f"{work}/dead-letters.txt") if line.strip())
no_sequence = letters.pop("null", 0)
letter_sequences = {int(s) for s in letters}
problems = []

lost = [(seq, msg_id) for seq, (md5, msg_id) in sorted(stream.items())
        if md5 not in stored and seq not in letter_sequences]
if lost:
    problems.append(f"{len(lost)} confirmed message(s) neither stored nor dead-lettered "
                    f"(sequence, Nats-Msg-Id; first 10): {lost[:10]}")
published = {md5 for md5, _ in stream.values()}
phantoms = [uid for md5, uid in stored.items() if md5 not in published]
if phantoms:
    problems.append(f"{len(phantoms)} stored order(s) whose bytes no stream message has (first 10): {phantoms[:10]}")
unknown = sorted(letter_sequences - set(stream))
if unknown:
    problems.append(f"{len(unknown)} dead letter(s) with a sequence the stream does not have (first 10): {unknown[:10]}")

# The pusher's own record: every confirmed PubAck that was not a duplicate added one
# message to the stream (a lost ack, resent and then reported duplicate, can only lower
# this bound), so the stream cannot hold fewer.
confirmed_new = sent = failed = 0
for name in ("pusher-initial.json", "pusher.json"):
    summary = json.loads(open(f"{work}/{name}").read().strip().splitlines()[-1])
    confirmed_new += summary["confirmed"] - summary["duplicates"]
    sent += summary["sent"]
    failed += summary["failed"]
if len(stream) < confirmed_new:
    problems.append(f"the pusher had {confirmed_new} new messages confirmed, the stream holds {len(stream)}")
if len(stream) > sent:
    problems.append(f"the stream holds {len(stream)} messages, the pusher sent {sent}")

doubled = sum(1 for n in letters.values() if n > 1)
print(f"sets: {len(stream)} stream messages (pusher: {sent} sent, {confirmed_new} confirmed new, {failed} failed) "
      f"= {len(stream) - len(lost)} accounted for by {len(stored)} stored orders and "
      f"{len(letter_sequences)} dead-lettered sequences; {len(lost)} lost; "
      f"dead letters without a sequence {no_sequence}, sequences dead-lettered twice {doubled}")
for problem in problems:
    print(f"soak: FAIL: {problem}")
sys.exit(1 if problems else 0)
PY
    fail "the stream, the orders and the dead letters do not match (above; files in $WORK)"
fi

for name in A B; do
    [ -n "${BASE_PID[$name]:-}" ] || continue
    if [ "${BASE_PID[$name]}" != "${LAST_PID[$name]}" ]; then
        continue
    fi
    net_growth_kib=$((LAST_NET[$name] - BASE_NET[$name]))
    new_orders=$((LAST_ORDERS[$name] - BASE_ORDERS[$name]))
    bound_kib=$((SOAK_MAX_RSS_GROWTH_MIB * 1024 + new_orders * SOAK_INDEX_BYTES_PER_ORDER / 1024))
    per_order=$((new_orders > 0 ? net_growth_kib * 1024 / new_orders : 0))
    fd_growth=$((LAST_FDS[$name] - BASE_FDS[$name]))
    echo "growth of $name (pid ${LAST_PID[$name]}) from its baseline: VmRSS-cache $((net_growth_kib / 1024)) MiB for $new_orders more orders ($per_order bytes an order; bound $((bound_kib / 1024)) MiB), fds $fd_growth (bound $SOAK_MAX_FD_GROWTH)"
    [ $net_growth_kib -le $bound_kib ] || fail "$name: VmRSS minus the cache grew by $((net_growth_kib / 1024)) MiB (bound $((bound_kib / 1024)) MiB)"
    [ $fd_growth -le "$SOAK_MAX_FD_GROWTH" ] || fail "$name: open descriptors grew by $fd_growth"
done

stop_replica A
stop_replica B
if [ ${#failures[@]} -gt 0 ]; then
    echo "soak: FAILED after $(elapsed) s: ${#failures[@]} problem(s)"
    exit 1
fi
echo "soak: passed in $(elapsed) s"
