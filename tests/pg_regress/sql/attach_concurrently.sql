-- attach_concurrently: attach without stopping the writers (the writers
-- themselves: tests/concurrency/test_online_attach.py). Its NOTICEs carry
-- timings: hidden here.
SET client_min_messages = warning;
CREATE SCHEMA online;
CREATE TABLE online.workflow_events (
  id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
  payload jsonb, payload_cbor bytea, spec_version integer);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON online.workflow_events
  (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
-- Ids out of insertion order (replay order is by id); one orphan run, never
-- created.
INSERT INTO online.workflow_events (id, run_id, type, correlation_id, created_at) VALUES
  ('wevt_A03', 'wrun_a', 'step_created', 'step_1', '2026-01-01 00:00:03'),
  ('wevt_A01', 'wrun_a', 'run_created', NULL, '2026-01-01 00:00:01'),
  ('wevt_A02', 'wrun_a', 'run_started', NULL, '2026-01-01 00:00:02'),
  ('wevt_B01', 'wrun_b', 'run_created', NULL, '2026-01-01 00:00:04'),
  ('wevt_B02', 'wrun_b', 'run_started', NULL, '2026-01-01 00:00:05'),
  ('wevt_B03', 'wrun_b', 'run_completed', NULL, '2026-01-01 00:00:06'),
  ('wevt_O01', 'wrun_orphan', 'step_created', 'step_1', '2026-01-01 00:00:07');
CREATE TEMP VIEW online_shape AS
  SELECT 'column ' || attname AS what FROM pg_attribute
   WHERE attrelid = 'online.workflow_events'::regclass AND attnum > 0 AND NOT attisdropped
  UNION ALL SELECT 'index ' || c.relname || ': ' || workflow_ext.predicate_shape(pg_get_indexdef(c.oid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'online.workflow_events'::regclass
  UNION ALL SELECT 'trigger ' || tgname || ' (' || tgnargs || ' args)' FROM pg_trigger
   WHERE tgrelid = 'online.workflow_events'::regclass AND NOT tgisinternal
  UNION ALL SELECT 'registered' FROM workflow_ext.logs WHERE relation = 'online.workflow_events'::regclass
  UNION ALL SELECT 'run rows: ' || count(*) FROM workflow_ext.runs WHERE log = 'online.workflow_events'::regclass
  ORDER BY 1;
CREATE TEMP TABLE before AS SELECT * FROM online_shape;

-- What it needs: its own transactions, arguments, a btree index on run_id,
-- no seq column yet.
BEGIN;
CALL workflow_ext.attach_concurrently('online.workflow_events');
ROLLBACK;
CALL workflow_ext.attach_concurrently(NULL);
CALL workflow_ext.attach_concurrently('online.workflow_events');
CREATE INDEX workflow_events_run_id_index ON online.workflow_events (run_id);
CREATE TEMP TABLE with_index AS SELECT * FROM online_shape;
CREATE TABLE online.has_seq (id text, run_id text, type text, correlation_id text, seq bigint);
CREATE INDEX ON online.has_seq (run_id);
CALL workflow_ext.attach_concurrently('online.has_seq');

-- The orphan is an anomaly: refused before anything changes, as attach refuses.
CALL workflow_ext.attach_concurrently('online.workflow_events');
SELECT count(*) AS differences FROM ((TABLE online_shape EXCEPT TABLE with_index)
                                     UNION ALL (TABLE with_index EXCEPT TABLE online_shape)) d;

-- Accepted: numbered in replay order, run rows seeded from the events
-- (the orphan gets none), the trigger in its final form.
CALL workflow_ext.attach_concurrently('online.workflow_events', accept_existing => true);
SELECT run_id, seq, id, type FROM online.workflow_events ORDER BY run_id, seq;
SELECT run_id, state, last_seq, created_at, finished_at FROM workflow_ext.runs
 WHERE log = 'online.workflow_events'::regclass ORDER BY run_id;
SELECT * FROM online_shape;
SELECT rows_numbered, replaced_index_definition IS NOT NULL AS keeps_the_package_index
  FROM workflow_ext.attached_logs WHERE log = 'online.workflow_events'::regclass;
-- New rows are checked and numbered like any attached table's.
INSERT INTO online.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_A04', 'wrun_a', 'step_started', 'step_1');
INSERT INTO online.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_A05', 'wrun_a', 'step_created', 'step_1');
INSERT INTO online.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_B04', 'wrun_b', 'run_started', NULL);
SELECT run_id, seq, id, type FROM online.workflow_events WHERE run_id = 'wrun_a' ORDER BY seq;
CALL workflow_ext.attach_concurrently('online.workflow_events');

-- detach puts the table back as it was (with its run_id index).
SELECT workflow_ext.detach('online.workflow_events');
SELECT count(*) AS differences FROM ((TABLE online_shape EXCEPT TABLE with_index)
                                     UNION ALL (TABLE with_index EXCEPT TABLE online_shape)) d;
-- A session that died after the short locked step leaves the table protected
-- in its adopting form (steps 1 and 2 here, by hand): a writer's first append
-- to a run adopts it (the run's past numbered first), and detach undoes the
-- rest.
SELECT workflow_ext.attach_statement('online.workflow_events', 'creation', true) \gexec
SELECT workflow_ext.attach_concurrently_begin('online.workflow_events', true);
SELECT tgname, tgnargs FROM pg_trigger WHERE tgrelid = 'online.workflow_events'::regclass AND NOT tgisinternal
 ORDER BY 1;
INSERT INTO online.workflow_events (id, run_id, type, correlation_id) VALUES ('wevt_A06', 'wrun_a', 'step_completed', 'step_1');
SELECT run_id, seq, id, type FROM online.workflow_events WHERE run_id = 'wrun_a' ORDER BY seq;
SELECT count(*) FILTER (WHERE seq IS NULL) AS not_adopted_yet FROM online.workflow_events;
CALL workflow_ext.attach_concurrently('online.workflow_events');
SELECT workflow_ext.detach('online.workflow_events');
SELECT count(*) AS differences FROM ((TABLE online_shape EXCEPT TABLE with_index)
                                     UNION ALL (TABLE with_index EXCEPT TABLE online_shape)) d;
DROP SCHEMA online CASCADE;
RESET client_min_messages;
