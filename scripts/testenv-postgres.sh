#!/usr/bin/env bash
# Start the PostgreSQL 15 server edgefleet's tests use (as root, Debian 12). Called by
# scripts/testenv.sh; runs alone too: `bash scripts/testenv-postgres.sh`.
#
# THIS IS A TEST CLUSTER: initdb -A trust lets any local user connect as any role without
# a password. It listens only on its own unix socket dir and 127.0.0.1:$PORT. Never point
# a real hub at it.
#
#   data dir   $STATE/postgres/data   (owned by the `postgres` user; the server refuses root)
#   socket     $STATE/postgres/run    (unix socket .s.PGSQL.$PORT)
#   port       127.0.0.1:55432        (EDGEFLEET_PG_PORT)
#   database   edgefleet_test         (role postgres; tests create one database per test)
#   url        postgresql://postgres@127.0.0.1:55432/edgefleet_test
#
# Idempotent: initdb only when the data dir has no cluster, start only when the server
# does not answer, createdb only when the database is missing. Prints what it did.
set -euo pipefail

STATE=${EDGEFLEET_TESTENV_DIR:-/var/lib/edgefleet-testenv}
PG_PORT=${EDGEFLEET_PG_PORT:-55432}
PG_BIN=${EDGEFLEET_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_DIR=$STATE/postgres
PG_DATA=$PG_DIR/data
PG_RUN=$PG_DIR/run
PG_DB=edgefleet_test

pglog() { printf 'testenv: postgres: %s\n' "$*" >&2; }
pgdie() {
    printf 'testenv: FAILED: postgres: %s\n' "$*" >&2
    exit 1
}

# Run a command as the postgres user (the server and its tools refuse root).
as_pg() { runuser -u postgres -- "$@"; }

pg_ready() { as_pg "$PG_BIN/pg_isready" -q -h "$PG_RUN" -p "$PG_PORT"; }

pg_init() {
    [[ -x $PG_BIN/initdb ]] || pgdie "$PG_BIN/initdb missing (apt-get install postgresql)"
    id postgres >/dev/null 2>&1 || pgdie "no postgres user (apt-get install postgresql)"
    mkdir -p "$PG_DIR" "$PG_RUN"
    chown postgres:postgres "$PG_DIR" "$PG_RUN"
    chmod 0700 "$PG_DIR"
    [[ -f $PG_DATA/PG_VERSION ]] && return 0
    pglog "initdb $PG_DATA (TEST cluster: -A trust, no passwords)"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
        >"$PG_DIR/initdb.log" 2>&1 || pgdie "initdb failed; see $PG_DIR/initdb.log"
}

pg_start() {
    if pg_ready; then
        pglog "already running on $PG_RUN and 127.0.0.1:$PG_PORT"
        return 0
    fi
    pglog "starting on $PG_RUN and 127.0.0.1:$PG_PORT (log: $PG_DIR/server.log)"
    # A stale pid file from a killed server would make pg_ctl refuse.
    if [[ -f $PG_DATA/postmaster.pid ]] && ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        rm -f "$PG_DATA/postmaster.pid"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $PG_PORT -k $PG_RUN -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" \
        start >/dev/null 2>&1 </dev/null 9>&- || pgdie "pg_ctl start failed; see $PG_DIR/server.log"
    local deadline=$((SECONDS + 60))
    until pg_ready; do
        ((SECONDS < deadline)) || pgdie "server not ready after 60 s; see $PG_DIR/server.log"
        sleep 0.2
    done
}

pg_createdb() {
    local have
    have=$(as_pg "$PG_BIN/psql" -h "$PG_RUN" -p "$PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") || pgdie "psql cannot connect"
    if [[ $have == 1 ]]; then
        pglog "database $PG_DB exists"
        return 0
    fi
    pglog "creating database $PG_DB"
    as_pg "$PG_BIN/createdb" -h "$PG_RUN" -p "$PG_PORT" -U postgres "$PG_DB" ||
        pgdie "createdb $PG_DB failed"
}

start_postgres() {
    pg_init
    pg_start
    pg_createdb
    pglog "ready: postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB (socket dir $PG_RUN)"
}

# Sourced by testenv.sh: only define the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    [[ $(id -u) == 0 ]] || pgdie "run as root (it starts the server as the postgres user)"
    start_postgres
fi
