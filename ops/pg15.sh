#!/usr/bin/env bash
# A Debian PostgreSQL 15 cluster for running the suite against a stock server (`make test-pg15`).
# Usage: ops/pg15.sh start|stop. Installs Debian's postgresql-15 when missing (needs root and apt).
# Data in .local/pg15, Unix socket in /tmp, port $PG15_PORT (5433), trust auth: local testing only.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PG15_PORT:-5433}
BIN=/usr/lib/postgresql/15/bin
DATA=$PWD/.local/pg15

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
  start)
    if [ ! -x "$BIN/postgres" ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
      mkdir -p "$DATA"
      [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
      as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 >/dev/null
    fi
    as_pg "$BIN/pg_ctl" -D "$DATA" -o "-p $PORT -k /tmp -c listen_addresses=''" -l "$DATA/server.log" -w start >/dev/null
    echo "postgresql://postgres@/postgres?host=/tmp&port=$PORT"
    ;;
  stop)
    [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
