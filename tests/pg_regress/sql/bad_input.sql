-- Every bad input gets its documented SQLSTATE and writes nothing.
SELECT count(*) AS events_before FROM workflow_ext.events \gset
SELECT workflow_ext.append_suspension_event('bad-run', NULL, 'run_created') IS NOT NULL AS created;
SELECT count(*) AS events_before FROM workflow_ext.events \gset
CREATE TEMP TABLE cases (name text, stmt text);
INSERT INTO cases VALUES
  ('NULL run id',            $$SELECT workflow_ext.append_suspension_event(NULL, 's', 'step_created')$$),
  ('empty run id',           $$SELECT workflow_ext.append_suspension_event('', 's', 'step_created')$$),
  ('256-byte run id',        $$SELECT workflow_ext.append_suspension_event(repeat('r', 256), NULL, 'run_created')$$),
  ('256-byte correlation',   $$SELECT workflow_ext.append_suspension_event('bad-run', repeat('c', 256), 'step_created')$$),
  ('empty correlation',      $$SELECT workflow_ext.append_suspension_event('bad-run', '', 'step_created')$$),
  ('NULL type',              $$SELECT workflow_ext.append_suspension_event('bad-run', 's', NULL)$$),
  ('unknown type',           $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_create')$$),
  ('upper-case type',        $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'STEP_CREATED')$$),
  ('non-suspension type',    $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_completed')$$),
  ('NULL correlation, step', $$SELECT workflow_ext.append_suspension_event('bad-run', NULL, 'step_created')$$),
  ('correlation on run',     $$SELECT workflow_ext.append_suspension_event('bad-run', 'x', 'run_created')$$),
  ('array payload',          $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', '[1, 2]')$$),
  ('string payload',         $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', '"x"')$$),
  ('number payload',         $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', '1')$$),
  ('null-json payload',      $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', 'null')$$),
  ('oversized payload',      $$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', jsonb_build_object('x', repeat('p', 5000000)))$$),
  ('append_event NULL run',  $$SELECT workflow_ext.append_event(NULL, NULL, 'run_started')$$),
  ('append_event bad type',  $$SELECT workflow_ext.append_event('bad-run', NULL, 'run_begun')$$),
  ('append_event no corr',   $$SELECT workflow_ext.append_event('bad-run', NULL, 'step_started')$$),
  ('append_event bad json',  $$SELECT workflow_ext.append_event('bad-run', NULL, 'run_started', '[]')$$),
  ('raw INSERT NULL type',   $$INSERT INTO workflow_ext.events (run_id, type) VALUES ('bad-run', NULL)$$),
  ('raw INSERT empty run',   $$INSERT INTO workflow_ext.events (run_id, type) VALUES ('', 'run_started')$$),
  ('raw INSERT array json',  $$INSERT INTO workflow_ext.events (run_id, type, payload) VALUES ('bad-run', 'run_started', '[]')$$),
  ('raw INSERT long id',     $$INSERT INTO workflow_ext.events (id, run_id, type) VALUES (repeat('i', 300), 'bad-run', 'run_started')$$),
  ('raw INSERT wrong seq',   $$INSERT INTO workflow_ext.events (run_id, seq, type) VALUES ('bad-run', 99, 'run_started')$$),
  ('join NULL member',       $$SELECT workflow_ext.join_arrive('bad-run', 'j', NULL, 2)$$),
  ('join zero expected',     $$SELECT workflow_ext.join_arrive('bad-run', 'j', 'm', 0)$$),
  ('join NULL expected',     $$SELECT workflow_ext.join_arrive('bad-run', 'j', 'm', NULL)$$),
  ('purge NULL',             $$SELECT workflow_ext.purge_runs(NULL)$$),
  ('purge negative',         $$SELECT workflow_ext.purge_runs('-1 day')$$);
SELECT name, try(stmt) AS result FROM cases ORDER BY name;
SELECT count(*) - :events_before AS rows_written FROM workflow_ext.events;
SELECT count(*) AS joins_written FROM workflow_ext.joins WHERE run_id = 'bad-run';
-- The payload limit is a setting (superuser only).
SET workflow_ext.max_payload_bytes = 100;
SELECT try($$SELECT workflow_ext.append_suspension_event('bad-run', 's', 'step_created', jsonb_build_object('x', repeat('p', 200)))$$);
RESET workflow_ext.max_payload_bytes;
