#!/usr/bin/env bash
# `make bench`: release build, a dedicated cluster (scripts/postgresql.conf,
# port 54316), the side-by-side run of bench/bench.py, BENCHMARKS.md.
# WFX_BENCH_SMOKE=1: the installed build, the test cluster, tiny sizes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg.sh   # PG_CONFIG
if [ -z "${WFX_BENCH_SMOKE:-}" ] && [ "$PG_MAJOR" != 15 ]; then
  # Its cluster (port 54316) and BENCHMARKS.md are PostgreSQL 15's; the smoke
  # run uses the major's own project cluster and works on every major.
  echo "bench: the full benchmark runs on PostgreSQL 15 only (PG=$PG_MAJOR: make bench-smoke)" >&2
  exit 2
fi
bash scripts/setup.sh
if [ -n "${WFX_BENCH_SMOKE:-}" ]; then
  bash scripts/cluster.sh stop >/dev/null   # never replace the .so under a live cluster
  cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
  bash scripts/cluster.sh start
  eval "$(bash scripts/cluster.sh env)"; export PGHOST PGPORT PGUSER
  exec python3 bench/bench.py --smoke
fi
bash scripts/cluster.sh stop >/dev/null
WFX_PORT=54316 WFX_PGDATA="$ROOT/.pgbench-cluster" bash scripts/cluster.sh stop >/dev/null
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
export WFX_PORT=54316 WFX_PGDATA="$ROOT/.pgbench-cluster"
bash scripts/cluster.sh start
eval "$(bash scripts/cluster.sh env)"; export PGHOST PGPORT PGUSER
python3 bench/bench.py --out BENCHMARKS.md
bash scripts/cluster.sh stop
