#!/usr/bin/env bash
# Installs everything workflow_ext needs on a fresh Debian 12 machine (root or
# sudo), and is safe to run again: each step checks before it acts.
#   - Debian packages: PostgreSQL 15 server + headers, libclang (bindgen), sudo
#     (cargo pgrx test --runas), contrib (amcheck), pg_isolation_regress lives
#     in postgresql-server-dev-15's pgxs tree.
#   - cargo-pgrx 0.18.1, initialised against the system PostgreSQL 15 so it
#     never tries to download PostgreSQL sources (no internet here).
# Which PostgreSQL: scripts/pg.sh (PG=15 default).
set -euo pipefail
. "$(dirname "$0")/pg.sh"

PGRX_VERSION=0.18.1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

pg_pkgs=()
if [ "$PG_PACKAGED" = debian ]; then
  pg_pkgs=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" postgresql-contrib)
elif [ ! -x "$PG_CONFIG" ]; then
  echo "setup: PostgreSQL $PG_MAJOR is expected at $PG_BIN (see scripts/pg.sh); it is not there" >&2
  exit 1
fi
need_pkgs=()
for p in "${pg_pkgs[@]}" libclang-dev clang sudo pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The Debian package starts a cluster on 5432; we never use it, and stopping it
# frees memory on a 2-core machine. Ignore failure (no systemd in containers).
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  $SUDO pg_ctlcluster "$PG_MAJOR" main stop 2>/dev/null || true
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes ~5 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -qs "pg$PG_MAJOR" "$HOME/.pgrx/config.toml"; then
  echo "setup: cargo pgrx init against PostgreSQL $PG_MAJOR ($PG_CONFIG)"
  cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG"
fi

# Client libraries used by the tests and examples, from their registries.
if [ -f "$(dirname "$0")/../tests/requirements.txt" ]; then
  python3 -m pip install -q -r "$(dirname "$0")/../tests/requirements.txt"
fi
# Node packages from their lock files: node-postgres for the Node example
# (examples/node); graphile-worker and the DevKit's world-postgres for the
# migrator race (tests/migrators). Node itself from Debian if missing.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
for pair in examples/node:pg tests/migrators:graphile-worker; do
  dir="$(dirname "$0")/../${pair%%:*}"
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules/${pair##*:}" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
  fi
done
echo "setup: ok"
