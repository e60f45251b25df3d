#!/usr/bin/env bash
# The README's test command (`make test`): every suite, against real
# PostgreSQL 15, then the version matrix (see "Majors" below). Safe to run
# again; does its own set-up.
#   1. lint:                      cargo fmt --check (crate and examples/rust),
#                                 cargo clippy -D warnings over every target
#   2. unit + #[pg_test] tests:   cargo pgrx test pgNN (as the postgres user)
#   3. pg_regress suite:          tests/pg_regress (SQL surface, errors, matrix)
#   4. README's SQL:              tests/docs (every ```sql block of README.md
#                                 run, its claimed results and errors checked)
#   5. concurrency suite:         tests/concurrency (≥16 real sessions, pytest)
#   6. client examples:           examples/{node,python,rust} --check (16 connections each)
#   7. fault suite:               tests/faults (killed sessions, crashed server,
#                                 timeouts; on a cluster of its own, port 54317;
#                                 PostgreSQL 15 only)
#   8. benchmark smoke:           bench/bench.py --smoke (the scripts still work)
#   9. upgrade:                   tests/upgrade (0.1.0 → current equals a fresh
#                                 install; data intact; released scripts frozen)
#  10. migrators:                 tests/migrators (graphile-worker and the DevKit's
#                                 setup from npm, raced raw and in bootstrap_begin/end)
#  11. devkit:                    tests/devkit (the real @workflow/world-postgres from
#                                 npm driven on a table under attach())
#  12. replicas:                  tests/replicas (a streaming standby, a logical
#                                 subscriber, pg_dump/pg_restore; clusters of its own,
#                                 ports 54350-54359; PostgreSQL 15 only)
#  13. exporter:                  tests/exporter (prometheus-postgres-exporter with
#                                 monitoring/workflow_ext_queries.yaml, scraped; port 54360)
#  14. package:                   scripts/package.sh 15 (a release build) and
#                                 tests/package: the .deb installed with dpkg -i where
#                                 the source build was moved aside; port 54370
#  15. citus:                     tests/citus (a real Citus 13.2 cluster of its own:
#                                 a coordinator and two workers, ports 54380-54389;
#                                 Citus built by scripts/citus.sh; PostgreSQL 15-17:
#                                 `make test` runs it on 15, 16 and 17)
# Pick suites with WFX_SUITES="lint pgrx regress security upgrade docs concurrency migrators devkit
# replicas citus exporter package clients faults bench" (default: all, in that order; on 16-18 all
# but replicas, citus, exporter, package and faults; citus runs on 16 and 17 when asked for,
# and --matrix asks for it).
#
# Majors:
#   scripts/test.sh                       one major: PG (scripts/pg.sh, default 15),
#                                         its own cluster and port, its own install
#   scripts/test.sh --matrix "15 16 17 18"
#                                         15 with every suite, then each other major
#                                         with WFX_MATRIX_SUITES (default
#                                         "lint pgrx regress security concurrency"), one after
#                                         the other; ends with one summary line across
#                                         majors and a table (major, suite, result, seconds)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
export USER="${USER:-$(id -un)}"      # pgrx-tests needs $USER

pytest_suite() {  # tests/<suite>: pytest with the one configuration, tests/pytest.ini
  python3 -m pytest -c "$ROOT/tests/pytest.ini" -q -s "$@"
}

run_suite() {  # name, command...
  local name="$1"; shift
  local t0=$SECONDS result
  echo "==> $name"
  if "$@"; then passed=$((passed + 1)); result=passed
  else failed=$((failed + 1)); result=FAILED; fi
  echo "==> $name: $result ($((SECONDS - t0)) s, PostgreSQL $PG_MAJOR)"
  [ -z "${WFX_REPORT:-}" ] || echo "$PG_MAJOR $suite $result $((SECONDS - t0))" >> "$WFX_REPORT"
}


lint() {
  # #[pg_test] modules are cfg(any(test, feature = "pg_test")): the pg_test
  # feature compiles them into the lib; the cfg(test)-only unit tests
  # (lifecycle, validate, audit, event_id) need the test target, hence
  # --all-targets. --no-default-features: the pgNN feature is PG_MAJOR's.
  local ok=0
  echo "-- cargo fmt --check";          cargo fmt --check || ok=1
  echo "-- cargo fmt --check (examples/rust)"
  cargo fmt --check --manifest-path examples/rust/Cargo.toml || ok=1
  echo "-- cargo clippy -D warnings"
  cargo clippy --no-deps --all-targets --no-default-features --features "pg$PG_MAJOR pg_test" -- -D warnings || ok=1
  return $ok
}

pgrx_tests() {
  # initdb refuses root: pgrx runs its temporary cluster as `postgres`, in a
  # directory that user can reach, removed first (pgrx issue #1671).
  local pgdata="/tmp/workflow_ext_pgrx_test_$PG_MAJOR"
  rm -rf "$pgdata"
  if [ "$(id -u)" -eq 0 ]; then
    cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$pgdata"
  else
    cargo pgrx test "pg$PG_MAJOR"
  fi
}

installed=""
install_extension() {
  # `cargo pgrx test` installed its own (pg_test) build; put the real one
  # back, with the cluster stopped (see above).
  # A debug build, where `make install` and `make bench` build release. The
  # release profile (lto = "fat", codegen-units = 1) re-optimises the whole
  # crate graph, pgrx included, as one unit on one core after every source
  # change: many minutes per edit-and-test cycle on 2 cores, where debug is
  # incremental. The suites check behaviour, not speed; both profiles set
  # panic = "unwind", and debug adds overflow checks and debug assertions.
  # After `make test` the installed build is this debug one: `make install`
  # puts the release build back.
  [ -n "$installed" ] && return 0
  bash scripts/cluster.sh stop >/dev/null
  bash scripts/install.sh
  bash scripts/cluster.sh start
  installed=1
}

pg_regress_suite() {  # tests/<dir> (with its schedule), database name
  local dir="$1" db="$2" out="$ROOT/target/$1/pg$PG_MAJOR"
  rm -rf "$out"; mkdir -p "$out"; chmod 777 "$out"
  eval "$(bash scripts/cluster.sh env)"
  "$PG_PGXS/src/test/regress/pg_regress" \
    --bindir="$PG_BIN" --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --inputdir="$ROOT/tests/$dir" --outputdir="$out" --dbname="$db" \
    --schedule="$ROOT/tests/$dir/schedule" \
    || { cat "$out/regression.diffs" 2>/dev/null | head -200; return 1; }
}

regress() {
  pg_regress_suite pg_regress wfx_regress
}

security() {
  # Issue 28's reproductions, as the roles named: pg_regress (tests/security/
  # schedule), then the cancellation and backtrace checks (pytest).
  pg_regress_suite security wfx_security || return 1
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/security
}

upgrade() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/upgrade
}

migrators() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/migrators
}

devkit() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/devkit
}

docs() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/docs
}

concurrency() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  pytest_suite tests/concurrency
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

replicas() {
  pytest_suite tests/replicas
}

citus() {
  bash scripts/citus.sh && pytest_suite tests/citus
}

exporter() {
  pytest_suite tests/exporter
}

package() {
  bash scripts/package.sh 15 && pytest_suite tests/package
}

faults() {
  pytest_suite tests/faults
}

bench_smoke() {
  eval "$(bash scripts/cluster.sh env)"
  export PGHOST PGPORT PGUSER
  python3 bench/bench.py --smoke
}

# One major: PostgreSQL $1 (empty: $PG, else scripts/pg.sh's default), suites
# $2 (empty: every suite of that major), on its own cluster and port, with
# its own install. Returns non-zero if a suite failed; exits (2) on an
# unknown suite or one that runs on 15 only, and on any failure outside a
# suite (set -e). With WFX_REPORT set, appends "major suite result seconds"
# lines to that file, and its last line is the major's, not the summary.
run_major() {
  [ -z "$1" ] || export PG="$1"
  . scripts/pg.sh   # PG_MAJOR, PG_BIN, PG_CONFIG, PG_PGXS
  if [ "$PG_MAJOR" = 15 ]; then
    SUITES="${2:-lint pgrx regress security upgrade docs concurrency migrators devkit replicas citus exporter package clients faults bench}"
  else
    SUITES="${2:-lint pgrx regress security upgrade docs concurrency migrators devkit clients bench}"
    for s in $SUITES; do
      if [ "$s" = citus ]; then
        [ "$PG_MAJOR" != 18 ] && continue
        echo "test.sh: the citus suite runs on PostgreSQL 15 to 17 (Citus 13.2), not $PG_MAJOR" >&2
        exit 2
      fi
      if [ "$s" = faults ] || [ "$s" = replicas ] || [ "$s" = citus ] || [ "$s" = exporter ] || [ "$s" = package ]; then
        # Their clusters (faults: port 54317, .pgcluster-faults) are 15's.
        echo "test.sh: the $s suite runs on PostgreSQL 15 only (PG=$PG_MAJOR)" >&2
        exit 2
      fi
    done
  fi
  failed=0; passed=0

  # Every suite but lint installs a build into $PG_CONFIG's tree (cargo pgrx
  # test installs its own): those, and only those, touch the clusters.
  touches_pg=""
  for s in $SUITES; do [ "$s" = lint ] || touches_pg=1; done

  bash scripts/setup.sh
  if [ -n "$touches_pg" ]; then
    # Installing a new .so under a running cluster can crash its backends
    # (SIGBUS on the replaced mapping): stop this major's project cluster
    # first (and on 15 the fault suite's; another major's clusters run
    # another tree's .so and are left alone).
    bash scripts/cluster.sh stop >/dev/null
    if [ "$PG_MAJOR" = 15 ]; then
      WFX_PORT=54317 WFX_PGDATA="$ROOT/.pgcluster-faults" bash scripts/cluster.sh stop >/dev/null
    fi
  fi

  for suite in $SUITES; do
    case "$suite" in
      lint) run_suite "lint (cargo fmt, cargo clippy)" lint ;;
      pgrx) run_suite "cargo pgrx test (unit + #[pg_test])" pgrx_tests ;;
      regress) install_extension; run_suite "pg_regress" regress ;;
      security) install_extension; run_suite "security: owner, roles, cancellation (pg_regress + pytest)" security ;;
      upgrade) install_extension; run_suite "upgrade from released versions (pytest)" upgrade ;;
      docs) install_extension; run_suite "README SQL (pytest)" docs ;;
      concurrency) install_extension; run_suite "concurrency (pytest)" concurrency ;;
      migrators) install_extension; run_suite "real migrators raced (pytest + node)" migrators ;;
      devkit) install_extension; run_suite "the DevKit's world-postgres on an attached table (pytest + node)" devkit ;;
      clients) install_extension; run_suite "client examples" clients ;;
      replicas) install_extension; run_suite "replicas and backup (pytest)" replicas ;;
      citus) install_extension; run_suite "Citus: a coordinator and two workers (pytest)" citus ;;
      exporter) install_extension; run_suite "Prometheus exporter scraped (pytest)" exporter ;;
      package) install_extension; run_suite "Debian package built and installed (pytest)" package ;;
      faults) install_extension; run_suite "faults (pytest)" faults ;;
      bench) install_extension; run_suite "benchmark smoke" bench_smoke ;;
      *) echo "unknown suite $suite"; exit 2 ;;
    esac
  done
  # Leave the machine as we found it (the demo cluster is `make demo`'s).
  [ -z "$touches_pg" ] || bash scripts/cluster.sh stop >/dev/null
  echo
  if [ -z "${WFX_REPORT:-}" ]; then
    echo "suites: $passed passed, $failed failed"
  else
    # In a --matrix run the one summary line is the matrix's.
    echo "PostgreSQL $PG_MAJOR: $passed of $((passed + failed)) suites passed"
  fi
  [ "$failed" -eq 0 ]
}

if [ "${1:-}" != --matrix ]; then
  run_major "${PG:-}" "${WFX_SUITES:-}"
  exit
fi

# --matrix: run_major per major, one after the other, each in a subshell (its
# own variables, environment and set -e: a major that fails outside a suite
# ends there, not the matrix), each appending to one report; then the table
# and the summary.
majors="${2:-15 16 17 18}"
WFX_REPORT="$(mktemp /tmp/workflow_ext_matrix.XXXXXX)"
trap 'rm -f "$WFX_REPORT"' EXIT
start=$SECONDS
for m in $majors; do
  echo; echo "######## PostgreSQL $m"
  if [ "$m" = 15 ]; then suites="${WFX_SUITES:-}"
  elif [ "$m" = 16 ] || [ "$m" = 17 ]; then
    # Citus 13.2 supports 15-17: its suite runs on each of them.
    suites="${WFX_MATRIX_SUITES:-lint pgrx regress security concurrency citus}"
  else suites="${WFX_MATRIX_SUITES:-lint pgrx regress security concurrency}"; fi
  # Not `if ! ( … )`: set -e is off in a condition, inside the subshell too.
  set +e
  ( set -e; run_major "$m" "$suites" )
  rc=$?
  set -e
  # A run that fails outside a suite (set-up, install, an unknown suite)
  # still leaves a failed line.
  if [ "$rc" -ne 0 ]; then
    awk -v m="$m" '$1 == m && $3 != "passed"' "$WFX_REPORT" | grep -q . \
      || echo "$m aborted FAILED 0" >> "$WFX_REPORT"
  fi
done
echo
echo "PostgreSQL  suite          result  seconds"
awk '{ printf "%-11s %-14s %-7s %7d\n", $1, $2, $3, $4 }' "$WFX_REPORT"
p="$(awk '$3 == "passed"' "$WFX_REPORT" | wc -l)"
f="$(awk '$3 != "passed"' "$WFX_REPORT" | wc -l)"
echo "majors: $majors; $((SECONDS - start)) s in all"
echo
echo "suites: $p passed, $f failed"
[ "$f" -eq 0 ]
