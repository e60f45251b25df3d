#!/usr/bin/env bash
# A project-local PostgreSQL cluster (the major of scripts/pg.sh, 15 by
# default), owned and run by the `postgres` OS user (initdb and postgres
# refuse root).
#   scripts/cluster.sh start|stop|restart|status|psql [args]|env
# `env` is the one source of truth for where the cluster listens (socket
# directory and port): the test suites, benchmarks and examples ask it.
# Settings: WFX_PORT (default 54315), WFX_PGDATA (default <repo>/.pgcluster;
# falls back to /tmp when postgres cannot reach the repo, e.g. under /root).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/pg.sh"   # PG_BIN
BIN="$PG_BIN"
PORT="${WFX_PORT:-54315}"
DIR="${WFX_PGDATA:-$ROOT/.pgcluster}"

as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# postgres must be able to traverse every parent of the data directory.
if ! as_pg test -x "$(dirname "$DIR")" 2>/dev/null; then
  DIR="/tmp/workflow_ext_pgcluster_$(echo "$DIR" | md5sum | cut -c1-8)"
fi
DATA="$DIR/data"
SOCK="$DIR"
LOG="$DIR/server.log"

cmd="${1:-status}"; shift || true
case "$cmd" in
  env)
    echo "export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres" ;;
  start)
    mkdir -p "$DIR"; chown postgres:postgres "$DIR"; chmod 700 "$DIR"
    if [ ! -f "$DATA/PG_VERSION" ]; then
      as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
      cp "$ROOT/scripts/postgresql.conf" "$DATA/postgresql.auto.conf" 2>/dev/null || true
      chown postgres:postgres "$DATA/postgresql.auto.conf" 2>/dev/null || true
    fi
    if as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      echo "cluster: already running on port $PORT (socket $SOCK)"
    else
      # No Rust backtraces in error messages: they belong in bug reports, not in
      # every refused append.
      as_pg env -u RUST_BACKTRACE "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1" start >/dev/null
      echo "cluster: started on port $PORT (socket $SOCK, data $DATA)"
    fi ;;
  stop)
    if [ -f "$DATA/PG_VERSION" ]; then
      as_pg "$BIN/pg_ctl" -D "$DATA" -m "${1:-fast}" -w stop >/dev/null 2>&1 || true
    fi
    echo "cluster: stopped" ;;
  restart)
    "$0" stop; "$0" start ;;
  destroy)
    "$0" stop; rm -rf "$DIR"; echo "cluster: removed $DIR" ;;
  status)
    as_pg "$BIN/pg_ctl" -D "$DATA" status ;;
  psql)
    exec "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -X "$@" ;;
  *) echo "usage: $0 start|stop [mode]|restart|destroy|status|psql [args]|env" >&2; exit 2 ;;
esac
