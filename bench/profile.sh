#!/usr/bin/env bash
# Where a backend's time goes: runs one pgbench client of a workload and
# records its backend with perf (Debian's linux-perf), then prints the split
# by binary and the top functions by own time. Needs a running cluster with
# the bench database (make bench leaves none running: start it with
# `WFX_PORT=54316 WFX_PGDATA=.pgbench-cluster scripts/cluster.sh start` and
# `python3 bench/bench.py --only append` to fill it) and PGHOST/PGPORT/PGUSER.
#   bench/profile.sh [--calls ROOT...] <pgbench script> [seconds] [database]
# --calls: record DWARF call graphs instead (Debian's postgres has no frame
# pointers through its static functions, and the Rust code none at all), and
# print where the time under each ROOT goes (bench/profile_tree.py), e.g.
#   bench/profile.sh --calls "PostgresMain append_suspension_event events_before_insert" s.sql
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
calls=""
if [ "${1:-}" = "--calls" ]; then calls="$2"; shift 2; fi
script="$1"; secs="${2:-8}"; db="${3:-wfx_bench}"
BIN="$(bash "$ROOT/scripts/pg.sh" get PG_BIN)"
out="$(mktemp -d)"
"$BIN/pgbench" -n -M prepared -c 1 -T "$((secs + 3))" -f "$script" "$db" > "$out/pgbench.txt" 2>&1 &
bench=$!
sleep 1.5
pid="$("$BIN/psql" -X -A -t -d "$db" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' LIMIT 1")"
if [ -n "$calls" ]; then
  perf record -q -F 700 --call-graph dwarf,32768 -p "$pid" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1
  wait "$bench"
  grep -E "^tps" "$out/pgbench.txt"
  perf script -i "$out/perf.data" -F ip,sym 2>/dev/null > "$out/perf.txt"
  # shellcheck disable=SC2086  # the roots are separate words
  python3 "$ROOT/bench/profile_tree.py" "$out/perf.txt" $calls
  rm -rf "$out"
  exit 0
fi
perf record -q -F 2000 -g -p "$pid" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1
wait "$bench"
grep -E "^tps" "$out/pgbench.txt"
echo "-- own time by binary"
perf report -i "$out/perf.data" --no-children --sort dso -g none 2>/dev/null | grep -E "^ +[0-9]" | head -6
echo "-- top functions by own time"
perf report -i "$out/perf.data" --no-children --sort dso,symbol -g none 2>/dev/null | grep -E "^ +[0-9]" | head -25
rm -rf "$out"
