#!/usr/bin/env bash
# Builds and installs workflow_ext into the PostgreSQL named by scripts/pg.sh.
#   scripts/install.sh [--release]
# Besides what `cargo pgrx install` writes (the .so, the control file, the
# current version's script and the upgrade scripts sql/workflow_ext--A--B.sql),
# it installs the kept install scripts of released versions
# (sql/workflow_ext--<version>.sql), so `CREATE EXTENSION workflow_ext VERSION
# '<old>'` and the upgrade test work from a source install too.
# Never replace the .so under a live cluster (SIGBUS): callers stop it first.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg.sh
cargo pgrx install "$@" --pg-config "$PG_CONFIG" >/dev/null
ext_dir="$("$PG_CONFIG" --sharedir)/extension"
for f in sql/workflow_ext--*.sql; do
  case "$(basename "$f")" in
    workflow_ext--*--*.sql) ;;                 # upgrade scripts: pgrx copied them
    *) install -m 644 "$f" "$ext_dir/" ;;      # a released install script
  esac
done
