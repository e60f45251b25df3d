#!/usr/bin/env bash
# Builds and installs Citus 13.2.2 into a PostgreSQL major (PG=15 default;
# Citus 13.2 supports 15-17) for tests/citus, and is safe to run again: it
# does nothing when that version is installed already.
#   bash scripts/citus.sh          build and install if missing
#   bash scripts/citus.sh check    exit 0 when installed, 1 when not
# The source, the first found of: $WFX_CITUS_TARBALL; ../shared/vendor/
# citus-13.2.2.tar.gz next to the project (machines without internet); the
# copy a previous build kept in ~/.cache/workflow_ext (a clone elsewhere on
# this machine built it: CI's clean clone); the upstream release archive.
# A local archive is checked against the vendored one's sha256 (GitHub's tag
# archives are not byte-stable, so a download is checked by its contents:
# the version in citus.control).
# Citus is a test dependency (AGPL-3.0): built next to the extension, never
# linked into it.
set -euo pipefail
. "$(dirname "$0")/pg.sh"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

CITUS_VERSION=13.2.2
# sha256 of `git archive --prefix=citus-13.2.2/ v13.2.2` (the vendored copy).
VENDOR_SHA256=dd2453caec20a830e5e63f1def5c5a98cb6f57ae510407cdcd800916fcdab430
UPSTREAM_URL="https://github.com/citusdata/citus/archive/refs/tags/v$CITUS_VERSION.tar.gz"

installed() {
  local ctl
  ctl="$("$PG_CONFIG" --sharedir)/extension/citus.control"
  [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$ctl" ] &&
    grep -q "default_version = '${CITUS_VERSION%.*}-" "$ctl"
}
if [ "${1:-}" = check ]; then installed; exit; fi
if installed; then exit 0; fi
case "$PG_MAJOR" in 15|16|17) ;; *)
  echo "citus: Citus $CITUS_VERSION supports PostgreSQL 15-17, not $PG_MAJOR" >&2; exit 1 ;;
esac

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Build dependencies (Debian 12), per ../shared/vendor/README.md.
pkgs=(libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev libssl-dev libselinux1-dev
      libxslt1-dev libpam0g-dev libreadline-dev libicu-dev autoconf flex bison make gcc)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "citus: installing build dependencies: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cache="${XDG_CACHE_HOME:-$HOME/.cache}/workflow_ext/citus-$CITUS_VERSION.tar.gz"
tarball=""
for t in "${WFX_CITUS_TARBALL:-}" "$ROOT/../shared/vendor/citus-$CITUS_VERSION.tar.gz" "$cache"; do
  if [ -n "$t" ] && [ -f "$t" ]; then tarball="$t"; break; fi
done
if [ -n "$tarball" ]; then
  echo "$VENDOR_SHA256  $tarball" | sha256sum -c --quiet -
  if [ "$tarball" != "$cache" ]; then
    mkdir -p "$(dirname "$cache")" && cp "$tarball" "$cache.tmp" && mv "$cache.tmp" "$cache"
  fi
else
  echo "citus: no local copy of Citus $CITUS_VERSION; fetching $UPSTREAM_URL"
  tarball="$work/citus.tar.gz"
  curl -fsSL -o "$tarball" "$UPSTREAM_URL"
fi
tar -xzf "$tarball" -C "$work"
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'citus-*' | head -1)"
grep -q "default_version = '${CITUS_VERSION%.*}-" "$src/src/backend/distributed/citus.control" ||
  { echo "citus: $tarball is not Citus $CITUS_VERSION" >&2; exit 1; }

# PostgreSQL 15.20 exports have_createdb_privilege() from
# commands/dbcommands.h; Citus 13.2.2 still defines a static copy for < 16,
# which no longer compiles. Keep the server's when its header declares it.
if grep -q 'have_createdb_privilege' "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
  sed -i 's/^have_createdb_privilege(void)$/citus_compat_unused_have_createdb_privilege(void)/' \
    "$src/src/include/pg_version_compat.h"
fi

echo "citus: building Citus $CITUS_VERSION for PostgreSQL $PG_MAJOR (about 3 minutes on 2 cores)"
(
  cd "$src"
  ./configure PG_CONFIG="$PG_CONFIG" --without-libcurl >"$work/configure.log" 2>&1 ||
    { tail -30 "$work/configure.log" >&2; exit 1; }
  make -s -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -40 "$work/make.log" >&2; exit 1; }
  $SUDO make -s install >"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; exit 1; }
)
installed || { echo "citus: installed, but $CITUS_VERSION is not what $PG_CONFIG sees" >&2; exit 1; }
echo "citus: Citus $CITUS_VERSION installed for PostgreSQL $PG_MAJOR"
