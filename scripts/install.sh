#!/usr/bin/env bash
# Builds and installs workflow_ext into the PostgreSQL named by scripts/pg.sh.
#   scripts/install.sh [--release]
# What `cargo pgrx install` writes, nothing more: the .so, the control file,
# the current version's install script (generated) and the upgrade scripts
# sql/workflow_ext--A--B.sql. Released versions' install scripts are not kept
# in the tree (only their upgrade scripts): tests/upgrade takes them from git
# history itself (docs/design.md, "Released versions").
# Never replace the .so under a live cluster (SIGBUS): callers stop it first.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg.sh
cargo pgrx install "$@" --pg-config "$PG_CONFIG" >/dev/null
