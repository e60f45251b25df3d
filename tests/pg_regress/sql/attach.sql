-- attach / detach: the extension's guarantees on an existing table shaped
-- like the DevKit's workflow.workflow_events (varchar columns, client-minted
-- ids, payload_cbor, spec_version, the package's own creation index).
CREATE SCHEMA adopt;
CREATE TABLE adopt.workflow_events (
  id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
  payload jsonb, payload_cbor bytea, spec_version integer);
-- world-postgres 4.1.4+'s index (migration 0010): no run_created, NULLs distinct.
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON adopt.workflow_events
  (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
CREATE TEMP TABLE pkg_index AS
  SELECT pg_get_indexdef('adopt.workflow_events_entity_creation_unique'::regclass) AS def;
-- A past with anomalies: a vercel/workflow#2331 late start and a second run_created. Ids
-- out of insertion order: replay order is by id.
INSERT INTO adopt.workflow_events (id, run_id, type, correlation_id, spec_version) VALUES
  ('wevt_A03', 'wrun_ok', 'step_created', 'step_1', 3),
  ('wevt_A01', 'wrun_ok', 'run_created', NULL, 3),
  ('wevt_A02', 'wrun_ok', 'run_started', NULL, 3),
  ('wevt_B01', 'wrun_late', 'run_created', NULL, 3), ('wevt_B02', 'wrun_late', 'run_started', NULL, 3),
  ('wevt_B03', 'wrun_late', 'step_created', 's', 3), ('wevt_B04', 'wrun_late', 'step_started', 's', 3),
  ('wevt_B05', 'wrun_late', 'step_completed', 's', 3), ('wevt_B06', 'wrun_late', 'step_started', 's', 3),
  ('wevt_C01', 'wrun_twice', 'run_created', NULL, 3), ('wevt_C02', 'wrun_twice', 'run_created', NULL, 3),
  ('wevt_D01', 'wrun_done', 'run_created', NULL, 3), ('wevt_D02', 'wrun_done', 'run_started', NULL, 3),
  ('wevt_D03', 'wrun_done', 'run_completed', NULL, 3);

-- A dry run first: what attach would find and do, under ACCESS SHARE only,
-- writing nothing.
BEGIN;
SELECT finding, runs, events, detail FROM workflow_ext.attach_dry_run('adopt.workflow_events')
 WHERE finding <> 'audit_seconds';
SELECT mode FROM pg_locks WHERE relation = 'adopt.workflow_events'::regclass AND pid = pg_backend_pid();
COMMIT;
SELECT (SELECT detail FROM workflow_ext.attach_dry_run('adopt.workflow_events') WHERE finding = 'audit_seconds')::numeric >= 0
       AS timed;

-- The audit refuses a past with anomalies and names the worst runs; nothing changed.
\set VERBOSITY default
SELECT workflow_ext.attach('adopt.workflow_events');
\set VERBOSITY terse
SELECT count(*) AS seq_columns FROM pg_attribute WHERE attrelid = 'adopt.workflow_events'::regclass AND attname = 'seq';
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'adopt.workflow_events'::regclass;
SELECT def = (SELECT def FROM pkg_index) AS index_untouched
  FROM (SELECT pg_get_indexdef('adopt.workflow_events_entity_creation_unique'::regclass) AS def) d;

-- Accepting the past, except duplicate creations, which the creation
-- index cannot hold.
\set VERBOSITY default
SELECT workflow_ext.attach('adopt.workflow_events', accept_existing => true) AS numbered;
\set VERBOSITY terse
DELETE FROM adopt.workflow_events WHERE id = 'wevt_C02';
-- Existing rows numbered per run in replay order (by id).
SELECT workflow_ext.attach('adopt.workflow_events', accept_existing => true) AS numbered;
SELECT run_id, seq, id, type FROM adopt.workflow_events ORDER BY run_id, seq;
SELECT log, accept_existing, seq_added, rows_numbered, replaced_index_definition IS NOT NULL AS replaced_own_index
  FROM workflow_ext.attached_logs ORDER BY log::text;
SELECT run_id, state, last_seq, finished_at IS NOT NULL AS finished
  FROM workflow_ext.runs WHERE log = 'adopt.workflow_events'::regclass ORDER BY run_id;
-- Attaching again changes nothing.
SELECT workflow_ext.attach('adopt.workflow_events') AS numbered_again;

-- The package's insert shape, now checked: client ids kept, seq stamped.
INSERT INTO adopt.workflow_events (id, type, correlation_id, created_at, run_id, payload, payload_cbor, spec_version)
VALUES ('wevt_A04', 'step_started', 'step_1', default, 'wrun_ok', default, '\xa0', 3) RETURNING id, seq;
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id)
VALUES ('wevt_A05', 'step_completed', 'step_1', 'wrun_ok') RETURNING id, seq;
\set VERBOSITY default
-- vercel/workflow#2331: a late start.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A06', 'step_started', 'step_1', 'wrun_ok');
-- A creation after the run finished.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_D04', 'step_created', 's', 'wrun_done');
-- vercel/workflow#2039: a second step_created, and a second run_created: the index's own 23505.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A07', 'step_created', 'step_1', 'wrun_ok');
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A08', 'run_created', NULL, 'wrun_ok');
-- An event for an entity never created; a run never created.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A09', 'wait_completed', 'w', 'wrun_ok');
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_X01', 'run_started', NULL, 'wrun_none');
\set VERBOSITY terse
-- Bad input writes nothing, with the writer's own SQLSTATEs.
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('', 'run_created', NULL, 'r')$$);
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_Y', 'step_create', 's', 'wrun_ok')$$);
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id, seq) VALUES ('wevt_Y', 'wait_created', 'w', 'wrun_ok', 99)$$);
-- Spec 5: a keyed attr_set resolves once (the index's 23505, which the
-- package maps to EntityConflictError); unkeyed ones repeat; noop fills a
-- position in any state.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id, spec_version) VALUES
  ('wevt_A10', 'attr_set', 'color', 'wrun_ok', 7), ('wevt_A11', 'attr_set', NULL, 'wrun_ok', 7),
  ('wevt_A12', 'attr_set', NULL, 'wrun_ok', 7), ('wevt_D05', 'noop', NULL, 'wrun_done', 7);
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A13', 'attr_set', 'color', 'wrun_ok')$$);
-- COPY goes through the same trigger: a bad row anywhere writes nothing.
COPY adopt.workflow_events (id, type, correlation_id, run_id) FROM stdin;
wevt_E01	run_created	\N	wrun_copy
wevt_E02	run_started	\N	wrun_copy
\.
COPY adopt.workflow_events (id, type, correlation_id, run_id) FROM stdin;
wevt_E03	step_created	s	wrun_copy
wevt_E04	step_completed	s	wrun_copy
\.
SELECT run_id, seq, id, type, correlation_id FROM adopt.workflow_events
 WHERE run_id IN ('wrun_ok', 'wrun_done', 'wrun_copy') ORDER BY run_id, seq;
-- The new rows replay clean; the accepted past is still reported.
SELECT run_id, anomalies, first_anomaly FROM workflow_ext.scan('adopt.workflow_events') ORDER BY run_id;

-- Append-only, for every role (a clean-up DELETE that matches nothing passes).
SELECT try($$UPDATE adopt.workflow_events SET payload = '{}'$$);
SELECT try($$DELETE FROM adopt.workflow_events WHERE run_id = 'wrun_ok'$$);
SELECT try($$DELETE FROM adopt.workflow_events WHERE false$$);
SELECT try($$TRUNCATE adopt.workflow_events$$);
SET session_replication_role = replica;
SELECT try($$DELETE FROM adopt.workflow_events$$);
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A14', 'step_started', 'step_1', 'wrun_ok')$$);
RESET session_replication_role;

-- Two attached tables are independent: the same run id, its own seqs.
CREATE TABLE adopt.other_events (id text PRIMARY KEY, run_id text NOT NULL, type text NOT NULL, correlation_id text);
SELECT try($$SELECT workflow_ext.attach('adopt.other_events')$$);
CREATE SCHEMA adopt2;
CREATE TABLE adopt2.workflow_events (LIKE adopt.workflow_events INCLUDING DEFAULTS);
ALTER TABLE adopt2.workflow_events DROP COLUMN seq;
SELECT workflow_ext.attach('adopt2.workflow_events') AS numbered;
INSERT INTO adopt2.workflow_events (id, type, correlation_id, run_id) VALUES
  ('wevt_Z01', 'run_created', NULL, 'wrun_ok'), ('wevt_Z02', 'step_created', 'step_1', 'wrun_ok') RETURNING run_id, seq;
SELECT max(seq) AS adopt_wrun_ok_last_seq FROM adopt.workflow_events WHERE run_id = 'wrun_ok';

-- A package migration that drops and recreates the creation index
-- (world-postgres 5.0's 0014) gets the extension's back, in the same transaction.
BEGIN;
DROP INDEX IF EXISTS "adopt"."workflow_events_entity_creation_unique";
CREATE UNIQUE INDEX IF NOT EXISTS "workflow_events_entity_creation_unique"
	ON "adopt"."workflow_events" ("run_id", "correlation_id", "type")
	WHERE "type" IN ('step_created', 'hook_created', 'wait_created', 'attr_set');
COMMIT;
SELECT indnullsnotdistinct, pg_get_expr(indpred, indrelid) LIKE '%run_created%' AS covers_run_created
  FROM pg_index WHERE indexrelid = 'adopt.workflow_events_entity_creation_unique'::regclass;
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A15', 'run_created', NULL, 'wrun_ok')$$);

-- Errors: SQLSTATEs of the README.
SELECT try($$SELECT workflow_ext.attach(NULL)$$);
SELECT try($$SELECT workflow_ext.attach('adopt.workflow_events', NULL)$$);
CREATE VIEW adopt.events_view AS SELECT * FROM adopt.workflow_events;
SELECT try($$SELECT workflow_ext.attach('adopt.events_view')$$);
CREATE TABLE adopt.no_type (id text, run_id text, correlation_id text);
SELECT try($$SELECT workflow_ext.attach('adopt.no_type')$$);
CREATE TABLE adopt.text_seq (id text, run_id text, type text, correlation_id text, seq text);
SELECT try($$SELECT workflow_ext.attach('adopt.text_seq')$$);
SELECT try($$SELECT workflow_ext.detach('adopt.no_type')$$);
SELECT try($$SELECT workflow_ext.detach('workflow_ext.events')$$);
CREATE ROLE wfx_attach_nobody;
SELECT workflow_ext.grant_access('wfx_attach_nobody', 'writer');
SET ROLE wfx_attach_nobody;
SELECT try($$SELECT workflow_ext.attach('pg_catalog.pg_class')$$);
SELECT try($$SELECT workflow_ext.detach('pg_catalog.pg_class')$$);
SELECT try($$SELECT count(*) FROM workflow_ext.attached_logs$$);
-- A writer of an attached table needs no grant on workflow_ext at all: the
-- trigger runs as the extension owner.
RESET ROLE;
CREATE ROLE wfx_package_role;
GRANT USAGE ON SCHEMA adopt TO wfx_package_role;
GRANT INSERT, SELECT ON adopt.workflow_events TO wfx_package_role;
SET ROLE wfx_package_role;
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_P01', 'run_created', NULL, 'wrun_pkg') RETURNING seq;
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_P02', 'run_completed', NULL, 'wrun_pkg')$$);
SELECT try($$SELECT * FROM workflow_ext.runs$$);
RESET ROLE;
DROP OWNED BY wfx_package_role;
DROP ROLE wfx_package_role;
DROP OWNED BY wfx_attach_nobody;
DROP ROLE wfx_attach_nobody;

-- A dropped attached table leaves no registration or run rows.
DROP TABLE adopt2.workflow_events;
SELECT count(*) AS registrations FROM workflow_ext.logs WHERE relation::text LIKE 'adopt2.%' OR relation::oid::text = relation::text;
SELECT count(*) AS run_rows FROM workflow_ext.runs WHERE log::oid::text = log::text;

-- detach: triggers, the extension's indexes, the seq column and run rows
-- gone; the package's own index back (the same definition, reprinted).
DROP VIEW adopt.events_view;
SELECT workflow_ext.detach('adopt.workflow_events');
SELECT count(*) AS seq_columns FROM pg_attribute WHERE attrelid = 'adopt.workflow_events'::regclass AND attname = 'seq' AND NOT attisdropped;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'adopt.workflow_events'::regclass;
SELECT indexrelid::regclass AS index, indisunique, indnullsnotdistinct FROM pg_index
 WHERE indrelid = 'adopt.workflow_events'::regclass ORDER BY 1;
SELECT count(*) AS run_rows FROM workflow_ext.runs WHERE log = 'adopt.workflow_events'::regclass;
SELECT log FROM workflow_ext.attached_logs ORDER BY 1;
-- The table is the package's again: unchecked, and its index has its old meaning.
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A16', 'step_started', 'step_1', 'wrun_ok');
INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A17', 'run_created', NULL, 'wrun_ok');
SELECT try($$INSERT INTO adopt.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_A18', 'step_created', 'step_1', 'wrun_ok')$$);
DELETE FROM adopt.workflow_events WHERE id IN ('wevt_A16', 'wevt_A17');
-- Attaching again numbers the rows anew (the seq column went with detach).
SELECT workflow_ext.attach('adopt.workflow_events', accept_existing => true) AS numbered;
SELECT workflow_ext.detach('adopt.workflow_events');
DROP SCHEMA adopt CASCADE;
