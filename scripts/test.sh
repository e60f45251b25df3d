#!/usr/bin/env bash
# The README's test command (`make test`): every suite, against real
# PostgreSQL 15. Safe to run again; does its own set-up.
#   1. unit + #[pg_test] tests:   cargo pgrx test pg15 (as the postgres user)
#   2. pg_regress suite:          tests/pg_regress (SQL surface, errors, matrix)
#   3. concurrency suite:         tests/concurrency (≥16 real sessions, pytest)
#   4. client examples:           examples/{node,python,rust} --check (16 connections each)
#   5. fault suite:               tests/faults (killed sessions, crashed server,
#                                 timeouts; on a cluster of its own, port 54317)
#   6. benchmark smoke:           bench/bench.py --smoke (the scripts still work)
# Pick suites with WFX_SUITES="pgrx regress concurrency clients faults bench" (default: all).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
export USER="${USER:-$(id -un)}"      # pgrx-tests needs $USER
SUITES="${WFX_SUITES:-pgrx regress concurrency clients faults bench}"
PGXS=/usr/lib/postgresql/15/lib/pgxs
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
failed=0; passed=0

bash scripts/setup.sh
# Installing a new .so under a running cluster can crash its backends
# (SIGBUS on the replaced mapping): stop the project cluster first.
bash scripts/cluster.sh stop >/dev/null
WFX_PORT=54317 WFX_PGDATA="$ROOT/.pgcluster-faults" bash scripts/cluster.sh stop >/dev/null

run_suite() {  # name, command...
  local name="$1"; shift
  echo "==> $name"
  if "$@"; then passed=$((passed + 1)); echo "==> $name: passed"
  else failed=$((failed + 1)); echo "==> $name: FAILED"; fi
}

pgrx_tests() {
  # initdb refuses root: pgrx runs its temporary cluster as `postgres`, in a
  # directory that user can reach, removed first (pgrx issue #1671).
  local pgdata=/tmp/workflow_ext_pgrx_test
  rm -rf "$pgdata"
  if [ "$(id -u)" -eq 0 ]; then
    cargo pgrx test pg15 --runas postgres --pgdata "$pgdata"
  else
    cargo pgrx test pg15
  fi
}

installed=""
install_extension() {
  # `cargo pgrx test` installed its own (pg_test) build; put the real one
  # back, with the cluster stopped (see above).
  [ -n "$installed" ] && return 0
  bash scripts/cluster.sh stop >/dev/null
  cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
  bash scripts/cluster.sh start
  installed=1
}

regress() {
  local out="$ROOT/target/regress"
  rm -rf "$out"; mkdir -p "$out"; chmod 777 "$out"
  eval "$(bash scripts/cluster.sh env)"
  "$PGXS/src/test/regress/pg_regress" \
    --bindir=/usr/lib/postgresql/15/bin --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --inputdir="$ROOT/tests/pg_regress" --outputdir="$out" --dbname=wfx_regress \
    --schedule="$ROOT/tests/pg_regress/schedule" \
    || { cat "$out/regression.diffs" 2>/dev/null | head -200; return 1; }
}

concurrency() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  python3 -m pytest -q -s -p no:cacheprovider tests/concurrency
}

clients() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  local ok=0
  echo "-- node-postgres";  (cd examples/node && node worker.js --check) || ok=1
  echo "-- psycopg 3";      python3 examples/python/worker.py --check || ok=1
  echo "-- tokio-postgres"; cargo run -q --release --manifest-path examples/rust/Cargo.toml -- --check || ok=1
  return $ok
}

faults() {
  python3 -m pytest -q -s -p no:cacheprovider tests/faults
}

bench_smoke() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  python3 bench/bench.py --smoke
}

for s in $SUITES; do
  case "$s" in
    pgrx) run_suite "cargo pgrx test (unit + #[pg_test])" pgrx_tests ;;
    regress) install_extension; run_suite "pg_regress" regress ;;
    concurrency) install_extension; run_suite "concurrency (pytest)" concurrency ;;
    clients) install_extension; run_suite "client examples" clients ;;
    faults) install_extension; run_suite "faults (pytest)" faults ;;
    bench) install_extension; run_suite "benchmark smoke" bench_smoke ;;
    *) echo "unknown suite $s"; exit 2 ;;
  esac
done
# Leave the machine as we found it (the demo cluster is `make demo`'s).
bash scripts/cluster.sh stop >/dev/null
echo
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
