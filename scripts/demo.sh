#!/usr/bin/env bash
# The demonstration run by `make demo`: concurrent workers race on the same
# run's suspension events (the shape of the DevKit's vercel/workflow#2039), first against a
# naive check-then-insert, then through workflow_ext.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
eval "$(bash "$ROOT/scripts/cluster.sh" env)"
export PGHOST PGPORT PGUSER
. "$ROOT/scripts/pg.sh"   # PG_BIN
BIN="$PG_BIN"
DB=workflow_demo
CLIENTS=${DEMO_CLIENTS:-16}
CALLS=${DEMO_CALLS:-200}
psql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB <<'SQL'
CREATE EXTENSION workflow_ext;
SELECT * FROM workflow_ext.append_suspension_event('demo-run', NULL, 'run_created');
-- The naive way, for comparison: look, then insert if absent.
CREATE TABLE naive_events (LIKE workflow_ext.events INCLUDING DEFAULTS);
CREATE FUNCTION naive_append(r text, c text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM naive_events WHERE run_id = r AND correlation_id = c) THEN
    PERFORM pg_sleep(0.001);  -- the gap between "look" and "insert" that a busy pod has anyway
    INSERT INTO naive_events (id, run_id, seq, type, correlation_id)
    VALUES (workflow_ext.new_event_id(), r, (SELECT count(*) + 1 FROM naive_events WHERE run_id = r), 'step_created', c);
  END IF;
END $$;
SQL

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/naive.sql" <<'EOF2'
\set step random(1, 40)
SELECT naive_append('demo-run', 'step_' || :step);
EOF2
cat > "$tmp/ext.sql" <<'EOF2'
\set step random(1, 40)
SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event('demo-run', 'step_' || :step, 'step_created', '{"stepName": "demo"}');
EOF2

echo
echo "== $CLIENTS workers x $CALLS calls race on 40 step ids of one run"
echo "-- naive check-then-insert:"
"$BIN/pgbench" -n -c "$CLIENTS" -j 2 -t "$CALLS" -f "$tmp/naive.sql" $DB 2>&1 | grep -E "number of transactions actually processed|tps" | sed 's/^/   /'
psql -d $DB -c "SELECT count(*) AS rows, count(DISTINCT correlation_id) AS steps,
                       count(*) - count(DISTINCT correlation_id) AS duplicate_step_created
                  FROM naive_events"
echo "-- workflow_ext.append_suspension_event:"
"$BIN/pgbench" -n -c "$CLIENTS" -j 2 -t "$CALLS" -f "$tmp/ext.sql" $DB 2>&1 | grep -E "number of transactions actually processed|tps" | sed 's/^/   /'
psql -d $DB <<'SQL'
SELECT count(*) AS rows, count(DISTINCT correlation_id) FILTER (WHERE type = 'step_created') AS steps,
       count(*) FILTER (WHERE type = 'step_created') - count(DISTINCT correlation_id) FILTER (WHERE type = 'step_created') AS duplicate_step_created,
       max(seq) = count(*) AND min(seq) = 1 AS seqs_dense
  FROM workflow_ext.events WHERE run_id = 'demo-run';
-- The log of the run, in commit order:
SELECT seq, type, correlation_id FROM workflow_ext.events WHERE run_id = 'demo-run' ORDER BY seq LIMIT 8;
-- A late start after completion (vercel/workflow#2331) is refused, with the state named:
SELECT * FROM workflow_ext.append_event('demo-run', NULL, 'run_started');
SELECT * FROM workflow_ext.append_event('demo-run', 'step_1', 'step_started');
SELECT * FROM workflow_ext.append_event('demo-run', 'step_1', 'step_completed');
-- The refusal is the outcome the demo expects: caught and shown. Anything
-- else (the late start accepted, another error) ends the demo with an error.
DO $$
DECLARE detail text;
BEGIN
  PERFORM workflow_ext.append_event('demo-run', 'step_1', 'step_started');
  RAISE EXCEPTION 'the late step_started was accepted';
EXCEPTION WHEN object_not_in_prerequisite_state THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
  RAISE NOTICE E'refused as expected: % %\n  DETAIL: %', SQLSTATE, SQLERRM, detail;
END $$;
SQL
echo
echo "Connect with:  $BIN/psql -h $PGHOST -p $PGPORT -U postgres $DB"
# Another major than the default: the make targets need PG again.
mk=""; [ "$PG_MAJOR" = 15 ] || mk=" PG=$PG_MAJOR"
echo "   (or: make psql$mk).  Stop the cluster with: make stop$mk"
