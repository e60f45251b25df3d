#!/usr/bin/env bash
# A project-local PostgreSQL cluster (the major of scripts/pg.sh, 15 by
# default; PG=17 … another, each major its own cluster), owned and run by
# the `postgres` OS user (initdb and postgres refuse root).
#   scripts/cluster.sh start|stop|restart|status|psql [args]|env
# `env` is the one source of truth for where the cluster listens (socket
# directory and port): the test suites, benchmarks and examples ask it.
# Settings: WFX_PORT (default: the major's PG_PORT of scripts/pg.sh, 54315
# for 15, 544NN for NN), WFX_PGDATA (default: its PG_CLUSTER, <repo>/.pgcluster
# for 15, <repo>/.pgcluster-NN for NN; falls back to /tmp when postgres cannot
# reach the repo, e.g. under /root).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/pg.sh"   # PG_BIN, PG_PORT, PG_CLUSTER
BIN="$PG_BIN"
PORT="${WFX_PORT:-$PG_PORT}"
DIR="${WFX_PGDATA:-$PG_CLUSTER}"

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

# A data directory belongs to one major: never start, stop or inspect it with
# another major's binaries (the clusters of two majors never share one).
if [ -f "$DATA/PG_VERSION" ] && [ "$(cat "$DATA/PG_VERSION")" != "$PG_MAJOR" ]; then
  case "$cmd" in
    env) ;;
    *) echo "cluster: $DATA is a PostgreSQL $(cat "$DATA/PG_VERSION") cluster, not $PG_MAJOR (PG=$PG_MAJOR)" >&2
       exit 1 ;;
  esac
fi
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
      # workflow_ext's write-path counters (counters_since_start) live in
      # shared memory, which only a preloaded library gets: preload it once it
      # is installed (a cluster started before the first install runs without).
      preload=""
      if [ -f "$("$PG_CONFIG" --pkglibdir)/workflow_ext.so" ]; then
        preload="-c shared_preload_libraries=workflow_ext"
      fi
      # max_prepared_transactions: the regress suite prepares a transaction
      # (the run rows written back at PREPARE TRANSACTION).
      # No Rust backtraces in error messages: they belong in bug reports, not in
      # every refused append (the extension also ignores RUST_BACKTRACE). The
      # server keeps none of the caller's descriptors (a lock a build script
      # holds, say): 3-9 closed.
      as_pg env -u RUST_BACKTRACE "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c max_prepared_transactions=8 $preload" start >/dev/null \
        3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
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
