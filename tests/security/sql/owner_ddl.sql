-- The owner of an attached table cannot remove the protection without an
-- error: every command below fails and changes nothing.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE workflow.workflow_events DISABLE TRIGGER workflow_ext_validate_insert;
ALTER TABLE workflow.workflow_events ENABLE REPLICA TRIGGER workflow_ext_validate_insert;
ALTER TABLE workflow.workflow_events ENABLE TRIGGER workflow_ext_append_only;
ALTER TABLE workflow.workflow_events DISABLE TRIGGER ALL;
ALTER TABLE workflow.workflow_events DISABLE TRIGGER workflow_ext_no_truncate;
DROP TRIGGER workflow_ext_append_only ON workflow.workflow_events;
DROP TRIGGER workflow_ext_validate_insert ON workflow.workflow_events;
ALTER TRIGGER workflow_ext_no_truncate ON workflow.workflow_events RENAME TO mine;
CREATE FUNCTION workflow.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
-- A BEFORE trigger of its own would fire after the validator and could
-- change the row it admitted.
CREATE TRIGGER zz_after_validation BEFORE INSERT ON workflow.workflow_events
  FOR EACH ROW EXECUTE FUNCTION workflow.noop();
CREATE TABLE workflow.child () INHERITS (workflow.workflow_events);
CREATE TABLE workflow.parent (LIKE workflow.workflow_events);
ALTER TABLE workflow.workflow_events INHERIT workflow.parent;
CREATE RULE sneak AS ON INSERT TO workflow.workflow_events DO INSTEAD NOTHING;
CREATE DOMAIN workflow.anything AS jsonb;
ALTER TABLE workflow.workflow_events ALTER COLUMN payload TYPE workflow.anything;
ALTER TABLE workflow.workflow_events ALTER COLUMN seq TYPE text;
ALTER TABLE workflow.workflow_events ALTER COLUMN seq TYPE numeric;
ALTER TABLE workflow.workflow_events RENAME COLUMN run_id TO run;
ALTER TABLE workflow.workflow_events DROP COLUMN seq;
-- Functions of one's own where the planner folds them (and so would run
-- them in the extension's privileged reads of the log).
CREATE FUNCTION workflow.folded() RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$BEGIN RETURN 'x'; END$$;
CREATE INDEX folded_expression ON workflow.workflow_events ((run_id || workflow.folded()));
CREATE INDEX folded_predicate ON workflow.workflow_events (run_id) WHERE type <> workflow.folded();
ALTER TABLE workflow.workflow_events ADD CONSTRAINT folded_check CHECK (type <> workflow.folded());
ALTER TABLE workflow.workflow_events ALTER COLUMN spec_version SET DEFAULT length(workflow.folded());
CREATE STATISTICS workflow.folded_stats ON (run_id || workflow.folded()), type FROM workflow.workflow_events;
-- PostgreSQL's own functions are fine.
CREATE INDEX lower_run ON workflow.workflow_events (lower(run_id));
DROP INDEX workflow.lower_run;
-- The extension's creation index renamed away.
ALTER INDEX workflow.workflow_events_entity_creation_unique RENAME TO weaker;
-- Still protected: the triggers as attach left them, the extension's index.
RESET SESSION AUTHORIZATION;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'workflow.workflow_events'::regclass AND NOT tgisinternal ORDER BY 1;
SELECT workflow_ext.creation_index_of('workflow.workflow_events') IS NOT NULL AS creation_index_intact;
SET SESSION AUTHORIZATION wfx_sec_app;
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('x', 'run_completed', NULL, 'wrun_none');
UPDATE workflow.workflow_events SET type = 'run_failed';
TRUNCATE workflow.workflow_events;
DELETE FROM workflow.workflow_events WHERE id = 'wevt_03';
-- An upsert or a MERGE that would change a stored event is an UPDATE too.
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('wevt_03', 'step_created', 's1', 'wrun_1')
ON CONFLICT (id) DO UPDATE SET type = 'step_completed';
MERGE INTO workflow.workflow_events e USING (VALUES ('wevt_03')) v(id) ON e.id = v.id
WHEN MATCHED THEN UPDATE SET type = 'step_completed';
MERGE INTO workflow.workflow_events e USING (VALUES ('wevt_03')) v(id) ON e.id = v.id
WHEN MATCHED THEN DELETE;
-- Under session_replication_role = replica (a superuser's setting) the
-- triggers still fire: they are ENABLE ALWAYS.
RESET SESSION AUTHORIZATION;
SET session_replication_role = replica;
UPDATE workflow.workflow_events SET type = 'run_failed';
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('y', 'run_completed', NULL, 'wrun_none');
RESET session_replication_role;
SET SESSION AUTHORIZATION wfx_sec_app;

-- A weaker index renamed onto the name (no session setting switches the
-- watcher off any more): the extension's is put back, and the package's
-- definition is what detach will restore.
SET workflow_ext.restoring_creation_index = on;
CREATE UNIQUE INDEX weaker ON workflow.workflow_events (run_id, correlation_id, type) WHERE type = 'step_created';
DROP INDEX workflow.workflow_events_entity_creation_unique;
ALTER INDEX workflow.weaker RENAME TO workflow_events_entity_creation_unique;
RESET workflow_ext.restoring_creation_index;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.creation_index_of('workflow.workflow_events') IS NOT NULL AS creation_index_intact;
SELECT replaced_index_definition FROM workflow_ext.attached_logs WHERE log = 'workflow.workflow_events'::regclass;

-- A missing creation index (dropped by the owner, or between a migration's
-- DROP and CREATE): a duplicate creation is refused, not stored, and the
-- run goes on.
SET SESSION AUTHORIZATION wfx_sec_app;
DROP INDEX workflow.workflow_events_entity_creation_unique;
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('dup', 'step_created', 's1', 'wrun_1');
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('dup', 'run_created', NULL, 'wrun_1');
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES ('next', 'step_started', 's1', 'wrun_1')
RETURNING id, seq;
-- A package migration recreates it: the extension's comes back.
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
  (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created', 'attr_set');
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.creation_index_of('workflow.workflow_events') IS NOT NULL AS creation_index_intact;
SELECT replaced_index_definition FROM workflow_ext.attached_logs WHERE log = 'workflow.workflow_events'::regclass;
SELECT run_id, seq, id, type FROM workflow.workflow_events ORDER BY run_id, seq;

SELECT * FROM superusers;
