-- metrics() and stuck_runs(): the active runs of every protected log, read
-- through runs_active; counters_since_start(): the write path's counters in
-- shared memory (the project clusters preload workflow_ext).
CREATE SCHEMA mon;
CREATE TABLE mon.workflow_events (id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL);
SELECT workflow_ext.attach('mon.workflow_events');
CREATE TEMP TABLE counted_before AS SELECT * FROM workflow_ext.counters_since_start();
-- A pending run, a running one with a running step and a waiting wait, a finished one.
INSERT INTO mon.workflow_events (id, run_id, type, correlation_id) VALUES
  ('wevt_M01', 'mon-pending', 'run_created', NULL),
  ('wevt_M02', 'mon-running', 'run_created', NULL), ('wevt_M03', 'mon-running', 'run_started', NULL),
  ('wevt_M04', 'mon-running', 'step_created', 's1'), ('wevt_M05', 'mon-running', 'step_started', 's1'),
  ('wevt_M06', 'mon-running', 'step_created', 's2'), ('wevt_M07', 'mon-running', 'step_started', 's2'),
  ('wevt_M08', 'mon-running', 'step_completed', 's2'), ('wevt_M09', 'mon-running', 'wait_created', 'w1'),
  ('wevt_M10', 'mon-done', 'run_created', NULL), ('wevt_M11', 'mon-done', 'run_started', NULL),
  ('wevt_M12', 'mon-done', 'run_completed', NULL);
SELECT try($$INSERT INTO mon.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_M13', 'mon-running', 'step_started', 's2')$$);
SELECT try($$INSERT INTO mon.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_M14', 'mon-none', 'run_started', NULL)$$);
SELECT try($$INSERT INTO mon.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_M15', 'mon-done', 'bogus', NULL)$$);
-- What the write path counted meanwhile: 12 admitted, 3 refused by code,
-- one run finished.
SELECT a.counter, a.value - b.value AS delta
  FROM workflow_ext.counters_since_start() a JOIN counted_before b USING (counter)
 WHERE a.value <> b.value ORDER BY a.counter;
-- Nothing idle for an hour; every active run idle for 0 s (its last append
-- was an earlier transaction).
SELECT runs_pending, runs_running, runs_idle, oldest_active_run_seconds >= 0 AS aged
  FROM workflow_ext.metrics('1 hour') WHERE log = 'mon.workflow_events';
SELECT runs_idle FROM workflow_ext.metrics('0 s') WHERE log = 'mon.workflow_events';
SELECT run_id, state, last_event_type, events, active_entities, idle_for > '0 s' AS idle
  FROM workflow_ext.stuck_runs('0 s') WHERE log = 'mon.workflow_events' ORDER BY run_id;
SELECT count(*) AS stuck_for_an_hour FROM workflow_ext.stuck_runs('1 hour') WHERE log = 'mon.workflow_events';
SELECT try($$SELECT * FROM workflow_ext.stuck_runs(NULL)$$);
-- Every protected log has its row, an attached one too.
SELECT log FROM workflow_ext.metrics() ORDER BY log;
-- The rows inserted, from PostgreSQL's own statistics (refused rows never were).
SELECT pg_stat_force_next_flush();
SELECT events_inserted FROM workflow_ext.metrics() WHERE log = 'mon.workflow_events';
-- The finish of a run takes it out.
INSERT INTO mon.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_M16', 'mon-pending', 'run_cancelled', NULL);
SELECT runs_pending, runs_running FROM workflow_ext.metrics() WHERE log = 'mon.workflow_events';
SELECT a.counter, a.value - b.value AS delta
  FROM workflow_ext.counters_since_start() a JOIN counted_before b USING (counter)
 WHERE a.counter LIKE 'runs_%' ORDER BY a.counter;
SELECT run_id, last_event_at <= now() AS recorded FROM workflow_ext.stuck_runs('0 s')
 WHERE log = 'mon.workflow_events';
-- Both read only the active runs: their scan can use runs_active (on a
-- table this small the planner might rather read it all: not allowed here).
SET enable_seqscan = off;
CREATE FUNCTION plan_uses(q text, idx text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE line text;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
    IF strpos(line, idx) > 0 THEN RETURN true; END IF;
  END LOOP;
  RETURN false;
END $$;
SELECT plan_uses($$SELECT * FROM workflow_ext.runs r
                  WHERE r.log = 'mon.workflow_events'::regclass AND r.finished_at IS NULL$$, 'runs_active') AS uses_runs_active;
RESET enable_seqscan;
DROP FUNCTION plan_uses(text, text);
SELECT workflow_ext.detach('mon.workflow_events');
DROP SCHEMA mon CASCADE;
