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
# 15 is Debian 12's packages (scripts/setup.sh apt-installs them). Majors
# 16-18 are to live in a project-local build, <repo>/.pg/<major> (an
# ordinary `configure --prefix`); nothing builds them yet: setup.sh refuses
# a major whose pg_config is missing instead of guessing.

_pg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PG_MAJOR="${PG:-15}"
case "$PG_MAJOR" in
  15)
    PG_PACKAGED=debian
    PG_BIN=/usr/lib/postgresql/15/bin
    PG_PGXS=/usr/lib/postgresql/15/lib/pgxs ;;
  16|17|18)
    PG_PACKAGED=local
    PG_BIN="$_pg_root/.pg/$PG_MAJOR/bin"
    # A --prefix without "postgres" in it puts pgxs under lib/postgresql/;
    # ask pg_config when the build exists rather than rely on that rule.
    if [ -x "$PG_BIN/pg_config" ]; then
      PG_PGXS="$(dirname "$(dirname "$(dirname "$("$PG_BIN/pg_config" --pgxs)")")")"
    else
      PG_PGXS="$_pg_root/.pg/$PG_MAJOR/lib/postgresql/pgxs"
    fi ;;
  *)
    echo "pg.sh: PostgreSQL major '$PG_MAJOR' is not supported (PG=15, 16, 17 or 18)" >&2
    # Sourced: fail the caller; run: exit.
    return 2 2>/dev/null || exit 2 ;;
esac
PG_CONFIG="$PG_BIN/pg_config"
export PG_MAJOR PG_BIN PG_CONFIG PG_PGXS PG_PACKAGED
unset _pg_root

# Run (not sourced): answer a question.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-print}" in
    print)
      for k in PG_MAJOR PG_BIN PG_CONFIG PG_PGXS PG_PACKAGED; do echo "$k=${!k}"; done ;;
    get)
      case "${2:-}" in
        PG_MAJOR|PG_BIN|PG_CONFIG|PG_PGXS|PG_PACKAGED) echo "${!2}" ;;
        *) echo "usage: $0 get PG_MAJOR|PG_BIN|PG_CONFIG|PG_PGXS|PG_PACKAGED" >&2; exit 2 ;;
      esac ;;
    *) echo "usage: $0 print | get KEY" >&2; exit 2 ;;
  esac
fi
