-- replay(run_id, source): one row per anomaly, on the extension's table and
-- on a table shaped like the DevKit's workflow.workflow_events.
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
  id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp NOT NULL DEFAULT now(), run_id varchar NOT NULL, payload jsonb);
-- One run per anomaly code, events in id order (the DevKit's replay order).
INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) VALUES
  -- clean
  ('wevt_A01', 'wrun_clean', 'run_created', NULL), ('wevt_A02', 'wrun_clean', 'run_started', NULL),
  ('wevt_A03', 'wrun_clean', 'step_created', 'step_1'), ('wevt_A04', 'wrun_clean', 'step_started', 'step_1'),
  ('wevt_A05', 'wrun_clean', 'step_completed', 'step_1'), ('wevt_A06', 'wrun_clean', 'run_completed', NULL),
  -- vercel/workflow#2039: a second step_created after the step completed
  ('wevt_B01', 'wrun_2039', 'run_created', NULL), ('wevt_B02', 'wrun_2039', 'run_started', NULL),
  ('wevt_B03', 'wrun_2039', 'step_created', 'step_1'), ('wevt_B04', 'wrun_2039', 'step_started', 'step_1'),
  ('wevt_B05', 'wrun_2039', 'step_completed', 'step_1'), ('wevt_B06', 'wrun_2039', 'step_created', 'step_1'),
  -- vercel/workflow#2983: a second run_created
  ('wevt_C01', 'wrun_2983', 'run_created', NULL), ('wevt_C02', 'wrun_2983', 'run_created', NULL),
  -- no run_created at all
  ('wevt_D01', 'wrun_norun', 'run_started', NULL), ('wevt_D02', 'wrun_norun', 'step_created', 'step_1'),
  -- run_created not first
  ('wevt_E01', 'wrun_late', 'step_created', 'step_1'), ('wevt_E02', 'wrun_late', 'run_created', NULL),
  -- an event for an entity never created
  ('wevt_F01', 'wrun_orphan', 'run_created', NULL), ('wevt_F02', 'wrun_orphan', 'wait_completed', 'wait_1'),
  -- vercel/workflow#2331: a late step_started after step_completed
  ('wevt_G01', 'wrun_2331', 'run_created', NULL), ('wevt_G02', 'wrun_2331', 'run_started', NULL),
  ('wevt_G03', 'wrun_2331', 'step_created', 'step_1'), ('wevt_G04', 'wrun_2331', 'step_started', 'step_1'),
  ('wevt_G05', 'wrun_2331', 'step_completed', 'step_1'), ('wevt_G06', 'wrun_2331', 'step_started', 'step_1'),
  -- a creation after the run finished
  ('wevt_H01', 'wrun_done', 'run_created', NULL), ('wevt_H02', 'wrun_done', 'run_cancelled', NULL),
  ('wevt_H03', 'wrun_done', 'step_created', 'step_9'),
  -- step_retrying while pending, and an unknown type
  ('wevt_I01', 'wrun_illegal', 'run_created', NULL), ('wevt_I02', 'wrun_illegal', 'step_created', 'step_1'),
  ('wevt_I03', 'wrun_illegal', 'step_retrying', 'step_1'), ('wevt_I04', 'wrun_illegal', 'step_exploded', 'step_1'),
  -- several anomalies in one run: each offending event reported once
  ('wevt_J01', 'wrun_many', 'run_created', NULL), ('wevt_J02', 'wrun_many', 'step_created', 'step_1'),
  ('wevt_J03', 'wrun_many', 'step_created', 'step_1'), ('wevt_J04', 'wrun_many', 'step_completed', 'step_1'),
  ('wevt_J05', 'wrun_many', 'step_started', 'step_1'), ('wevt_J06', 'wrun_many', 'step_completed', 'step_1'),
  ('wevt_J07', 'wrun_many', 'step_started', 'step_1');
SELECT r.run_id, x.seq, x.event_id, x.event_type, x.correlation_id, x.anomaly, x.detail
  FROM (SELECT DISTINCT run_id FROM workflow.workflow_events) r,
       workflow_ext.replay(r.run_id, 'workflow.workflow_events') x
 ORDER BY r.run_id, x.seq;
-- A clean run and an unknown run return no rows.
SELECT count(*) FROM workflow_ext.replay('wrun_clean', 'workflow.workflow_events');
SELECT count(*) FROM workflow_ext.replay('wrun_unknown', 'workflow.workflow_events');
-- The extension's own log: what the writer accepted replays clean.
SELECT count(*) AS anomalies FROM (SELECT DISTINCT run_id FROM workflow_ext.events) r, workflow_ext.replay(r.run_id) x;
-- Sources with a seq column: gaps and duplicates of positions.
CREATE TABLE seq_events (id text, run_id text, seq bigint, type text, correlation_id text, created_at timestamptz DEFAULT now());
INSERT INTO seq_events (id, run_id, seq, type, correlation_id) VALUES
  ('e1', 'r', 1, 'run_created', NULL), ('e2', 'r', 2, 'run_started', NULL),
  ('e3', 'r', 4, 'step_created', 's'), ('e4', 'r', 4, 'step_started', 's'),
  ('e5', 'r', 5, 'step_completed', 's');
SELECT * FROM workflow_ext.replay('r', 'seq_events');
-- scan: one row per run with anomalies.
SELECT * FROM workflow_ext.scan('workflow.workflow_events') ORDER BY run_id;
SELECT * FROM workflow_ext.scan() ORDER BY run_id;
SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events', now() - interval '1 hour');
SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events', now() + interval '1 hour');
-- Bad sources get clear errors, and a source name cannot inject SQL.
CREATE TABLE not_events (id text, run_id text);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'not_events')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'no_such_table')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'workflow_ext.events_pkey')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'seq_events; DROP TABLE seq_events')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'seq_events"; DROP TABLE seq_events; --')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r'' OR 1=1 --', 'seq_events')$$);
SELECT try($$SELECT * FROM workflow_ext.replay(NULL)$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', NULL)$$);
SELECT try($$SELECT * FROM workflow_ext.scan('not_events')$$);
SELECT try($$SELECT * FROM workflow_ext.scan('not_events', now())$$);
-- seq is read as bigint: a source whose seq is of another type than smallint,
-- integer or bigint is refused before any row is read (42804), not mid-stream.
CREATE TABLE text_seq_events (id text, run_id text, seq text, type text, correlation_id text);
INSERT INTO text_seq_events SELECT id, run_id, seq::text, type, correlation_id FROM seq_events;
INSERT INTO text_seq_events VALUES ('e6', 'r', 'six', 'step_created', 't');
CREATE TABLE numeric_seq_events (id text, run_id text, seq numeric, type text, correlation_id text);
INSERT INTO numeric_seq_events SELECT id, run_id, seq, type, correlation_id FROM seq_events;
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'text_seq_events')$$);
SELECT try($$SELECT * FROM workflow_ext.scan('text_seq_events')$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r', 'numeric_seq_events')$$);
SELECT try($$SELECT * FROM workflow_ext.scan('numeric_seq_events')$$);
-- An integer (int4) seq is read: the same findings as the bigint one.
CREATE TABLE int_seq_events (id text, run_id text, seq integer, type text, correlation_id text);
INSERT INTO int_seq_events SELECT id, run_id, seq, type, correlation_id FROM seq_events;
SELECT * FROM workflow_ext.replay('r', 'int_seq_events');
SELECT run_id, events, anomalies, first_anomaly FROM workflow_ext.scan('int_seq_events');
-- Rows with a NULL run_id are a run of their own, with since as without it:
-- audited whole when one of its rows is at or after since.
CREATE TABLE null_run_events (id text, run_id text, type text, correlation_id text, created_at timestamptz DEFAULT now());
INSERT INTO null_run_events (id, run_id, type, correlation_id, created_at) VALUES
  ('n1', NULL, 'run_created', NULL, now() - interval '2 days'), ('n2', NULL, 'run_started', NULL, now()),
  ('o1', 'r_old', 'run_started', NULL, now() - interval '2 days'), ('r1', 'r_new', 'run_started', NULL, now());
SELECT run_id, events, anomalies, first_anomaly FROM workflow_ext.scan('null_run_events') ORDER BY run_id;
SELECT run_id, events, anomalies, first_anomaly FROM workflow_ext.scan('null_run_events', now() - interval '1 hour') ORDER BY run_id;
UPDATE null_run_events SET created_at = now() - interval '2 days' WHERE id = 'n2';
SELECT run_id, events, anomalies, first_anomaly FROM workflow_ext.scan('null_run_events', now() - interval '1 hour') ORDER BY run_id;
-- A table with an awkward name is quoted, not spliced.
CREATE TABLE "Odd ""Name""; x" (LIKE seq_events);
INSERT INTO "Odd ""Name""; x" SELECT * FROM seq_events;
SELECT count(*) FROM workflow_ext.replay('r', '"Odd ""Name""; x"');
SELECT to_regclass('seq_events') IS NOT NULL AS seq_events_still_there;
-- The caller needs SELECT on the source: the audit shows nothing it may not read.
SET client_min_messages = warning;
DROP ROLE IF EXISTS wfx_auditor;
RESET client_min_messages;
CREATE ROLE wfx_auditor;
SELECT workflow_ext.grant_access('wfx_auditor', 'reader');
GRANT USAGE ON SCHEMA workflow TO wfx_auditor;
SET ROLE wfx_auditor;
SELECT try($$SELECT * FROM workflow_ext.replay('wrun_2039', 'workflow.workflow_events')$$);
SELECT try($$SELECT * FROM workflow_ext.scan('workflow.workflow_events')$$);
SELECT count(*) FROM workflow_ext.replay('run-1');
RESET ROLE;
DROP OWNED BY wfx_auditor;
DROP ROLE wfx_auditor;
