#!/usr/bin/env bash
# `make package`: one Debian package per supported major,
# postgresql-<major>-workflow-ext_<version>_<arch>.deb in target/package/, from
# `cargo pgrx package` (a release build: the binary that is benchmarked).
#   scripts/package.sh [MAJOR ...]     default: 15 and every major of
#                                      scripts/pg-versions.txt
# Files land where Debian's (and the PGDG's) postgresql-<major> looks for
# extensions: /usr/lib/postgresql/<major>/lib and
# /usr/share/postgresql/<major>/extension, whatever tree the build's pg_config
# names (16-18 are built against the pinned PyPI builds of scripts/fetch_pg.sh).
# Each package carries what pgrx packages: the .so, the control file, the
# current version's install script and every upgrade script, so `ALTER
# EXTENSION workflow_ext UPDATE` works from each released version. Released
# versions' install scripts are not shipped (nor kept in the tree), as
# contrib ships one base script plus upgrades.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
majors="${*:-15 $(awk '$1 ~ /^[0-9]+$/ { print $1 }' scripts/pg-versions.txt)}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
arch="$(dpkg --print-architecture)"
out="$ROOT/target/package"
mkdir -p "$out"
for m in $majors; do
  pg_config="$(PG=$m bash scripts/pg.sh get PG_CONFIG)"
  [ -x "$pg_config" ] || { echo "package: no PostgreSQL $m at $pg_config (run scripts/setup.sh)" >&2; exit 1; }
  built="$out/build-pg$m"
  rm -rf "$built"
  cargo pgrx package --pg-config "$pg_config" --out-dir "$built" >/dev/null
  name="postgresql-$m-workflow-ext"
  stage="$out/$name"
  rm -rf "$stage"
  lib="$stage/usr/lib/postgresql/$m/lib"
  ext="$stage/usr/share/postgresql/$m/extension"
  mkdir -p "$lib" "$ext" "$stage/DEBIAN" "$stage/usr/share/doc/$name"
  find "$built" -name 'workflow_ext.so' -exec install -m 644 {} "$lib/" \;
  find "$built" \( -name 'workflow_ext.control' -o -name 'workflow_ext--*.sql' \) -exec install -m 644 {} "$ext/" \;
  [ -f "$lib/workflow_ext.so" ] && [ -f "$ext/workflow_ext.control" ] && [ -f "$ext/workflow_ext--$version.sql" ] \
    || { echo "package: cargo pgrx package did not produce the extension's files for $m" >&2; exit 1; }
  install -m 644 README.md "$stage/usr/share/doc/$name/README.md"
  cat > "$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: workflow_ext developers <workflow-ext@localhost>
Depends: postgresql-$m, libc6
Section: database
Priority: optional
Installed-Size: $(du -sk "$stage/usr" | cut -f1)
Description: workflow event-log invariants enforced inside PostgreSQL $m
 workflow_ext makes a durable-workflow engine's event log safe under racing
 workers: one creation per entity, only legal lifecycle transitions, a dense
 commit-ordered seq, an append-only log, exactly-once fan-in, a race-free
 schema bootstrap, and an audit that names every anomaly. CREATE EXTENSION
 workflow_ext; see /usr/share/doc/$name/README.md.
CONTROL
  dpkg-deb --root-owner-group --build "$stage" "$out/${name}_${version}_${arch}.deb" >/dev/null
  rm -rf "$stage" "$built"
  echo "package: $out/${name}_${version}_${arch}.deb"
done
