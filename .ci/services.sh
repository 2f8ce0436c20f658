#!/usr/bin/env bash
# `make services`: PostgreSQL and NATS for `make run` and `make test`.
# Uses the servers that answer at DATABASE_URL and NATS_URL; where none does,
# starts a private one under target/services on that port (installing the
# Debian package first when it is missing and we are root with apt-get), and
# creates the database when it is absent. `stop` stops the private ones.
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
DIR=$PWD/target/services

read -r PG_HOST PG_PORT PG_USER PG_DB < <(python3 - "$DATABASE_URL" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres", (u.path or "/orders").lstrip("/") or "orders")
PY
)
read -r NATS_HOST NATS_PORT < <(python3 - "${NATS_URL%%,*}" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 4222)
PY
)

say() { echo "services: $*"; }

answers() { # host port
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

need_package() { # binary-glob package
    if compgen -G "$1" >/dev/null; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "$2 is not installed; installing it with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        say "$2 is not installed. Install it with: sudo apt-get install -y $2 (then run make again)" >&2
        exit 1
    fi
}

as_postgres() { # run a PostgreSQL server binary, which refuses to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    if answers "$PG_HOST" "$PG_PORT"; then
        say "PostgreSQL answers at $PG_HOST:$PG_PORT"
    else
        need_package '/usr/lib/postgresql/*/bin/initdb' postgresql
        local bin
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        mkdir -p "$DIR"
        if [ ! -f "$DIR/pg/PG_VERSION" ]; then
            say "creating a private PostgreSQL cluster in $DIR/pg"
            mkdir -p "$DIR/pg"
            [ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg" && chmod o+x "$PWD/target" "$DIR"
            as_postgres "$bin/initdb" -D "$DIR/pg" -U "$PG_USER" --auth=trust -E UTF8 >/dev/null
        fi
        say "starting a private PostgreSQL on $PG_HOST:$PG_PORT"
        touch "$DIR/pg.log"
        [ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg.log"
        as_postgres "$bin/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w \
            -o "-h $PG_HOST -p $PG_PORT -k $DIR/pg" start >/dev/null
    fi
    if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atc \
        "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
        say "creating database $PG_DB"
        createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
    fi
}

start_nats() {
    if answers "$NATS_HOST" "$NATS_PORT"; then
        say "NATS answers at $NATS_HOST:$NATS_PORT"
        return
    fi
    need_package '/usr/*bin/nats-server' nats-server
    mkdir -p "$DIR/nats"
    say "starting a private NATS with JetStream on $NATS_HOST:$NATS_PORT"
    nohup nats-server -js -sd "$DIR/nats" -a "$NATS_HOST" -p "$NATS_PORT" \
        -l "$DIR/nats.log" -P "$DIR/nats.pid" >/dev/null 2>&1 &
    for _ in $(seq 50); do answers "$NATS_HOST" "$NATS_PORT" && return; sleep 0.1; done
    say "NATS did not start; see $DIR/nats.log" >&2
    exit 1
}

stop() {
    if [ -f "$DIR/pg/postmaster.pid" ]; then
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        as_postgres "$bin/pg_ctl" -D "$DIR/pg" -m fast stop && say "stopped the private PostgreSQL"
    fi
    if [ -f "$DIR/nats.pid" ]; then
        kill "$(cat "$DIR/nats.pid")" 2>/dev/null && say "stopped the private NATS"
        rm -f "$DIR/nats.pid"
    fi
}

case "${1:-start}" in
    start) start_postgres; start_nats ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
