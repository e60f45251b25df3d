-- The log is append-only for every role, on every path.
SELECT seq FROM workflow_ext.append_suspension_event('ao-run', NULL, 'run_created');
SELECT try($$UPDATE workflow_ext.events SET payload = '{}' WHERE run_id = 'ao-run'$$);
SELECT try($$DELETE FROM workflow_ext.events WHERE run_id = 'ao-run'$$);
SELECT try($$TRUNCATE workflow_ext.events$$);
-- Also under session_replication_role = replica (triggers are ENABLE ALWAYS).
SET session_replication_role = replica;
SELECT try($$UPDATE workflow_ext.events SET payload = '{}' WHERE run_id = 'ao-run'$$);
SELECT try($$DELETE FROM workflow_ext.events WHERE run_id = 'ao-run'$$);
SELECT try($$TRUNCATE workflow_ext.events$$);
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-run', 's1', 'step_started')$$);
RESET session_replication_role;
SELECT count(*) FROM workflow_ext.events WHERE run_id = 'ao-run';
-- A plain INSERT gets its id and seq assigned, and is checked like append_event.
INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload)
  VALUES ('ao-run', 's1', 'step_created', '{"stepName": "s1"}')
  RETURNING seq, id ~ '^wevt_' AS id_assigned;
-- A client-chosen id is kept; a seq equal to the next one is accepted.
INSERT INTO workflow_ext.events (id, run_id, seq, type) VALUES ('client-id-1', 'ao-run', 3, 'run_started') RETURNING id, seq;
-- Several rows in one statement are checked one after the other.
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES
  ('ao-run', 's1', 'step_started'), ('ao-run', 's1', 'step_completed') RETURNING seq, type;
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-run', 's1', 'step_started')$$);
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-run', 's1', 'step_created')$$);
SELECT try($$INSERT INTO workflow_ext.events (run_id, type) VALUES ('ao-run', 'run_created')$$);
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-other', 's1', 'step_created')$$);
-- A statement that fails half-way writes none of its rows, and leaves no gap.
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-run', 's2', 'step_created'), ('ao-run', 's2', 'step_completed')$$);
SELECT seq FROM workflow_ext.append_event('ao-run', 's3', 'step_created');
-- COPY goes through the same trigger.
COPY workflow_ext.events (run_id, correlation_id, type) FROM stdin;
ao-run	s3	step_started
\.
SELECT seq, type, correlation_id FROM workflow_ext.events WHERE run_id = 'ao-run' ORDER BY seq;
-- A duplicate creation's 23505 carries the index's name in its constraint
-- field, through append_event as through a plain INSERT (clients such as
-- world-postgres match on it).
SELECT try($$SELECT workflow_ext.append_event('ao-run', 's1', 'step_created')$$, 'constraint');
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('ao-run', 's1', 'step_created')$$, 'constraint');
