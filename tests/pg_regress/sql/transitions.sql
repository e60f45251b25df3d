-- The whole transition matrix, through append_event, through a plain
-- INSERT, and through a plain INSERT into an attached DevKit-shaped table
-- (varchar columns, client-minted ids, no enum): every event type against
-- every state, each attempt rolled back so the next one starts from the same
-- state. All three paths must agree.
CREATE SCHEMA dk;
CREATE TABLE dk.workflow_events (id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL, payload jsonb, payload_cbor bytea,
  spec_version integer);
SELECT workflow_ext.attach('dk.workflow_events');
-- Appends one event to both logs.
CREATE FUNCTION both_logs(run text, corr text, t text) RETURNS void LANGUAGE sql AS $$
  SELECT workflow_ext.append_event(run, corr, t);
  INSERT INTO dk.workflow_events (id, run_id, correlation_id, type, spec_version)
  VALUES (workflow_ext.new_event_id(), run, corr, t, 3);
$$;
-- Each attempt: try(stmt, 'anomaly', undo => true) (fixture_extension), the
-- SQLSTATE and the anomaly named, every attempt rolled back.

-- Runs in every state (m-none has no run_created at all).
SELECT count(*) FROM (
  SELECT both_logs('m-' || s, NULL, 'run_created')
    FROM unnest(ARRAY['pending','running','completed','failed','cancelled']) s) x;
SELECT count(*) FROM (
  SELECT both_logs('m-' || s, NULL, 'run_started')
    FROM unnest(ARRAY['running','completed','failed']) s) x;
SELECT both_logs('m-completed', NULL, 'run_completed');
SELECT both_logs('m-failed', NULL, 'run_failed');
SELECT both_logs('m-cancelled', NULL, 'run_cancelled');

SELECT r.run AS run_state, t AS event,
       try(format('SELECT workflow_ext.append_event(%L, NULL, %L)', 'm-' || r.run, t), 'anomaly', undo => true) AS via_function,
       try(format('INSERT INTO workflow_ext.events (run_id, type) VALUES (%L, %L)', 'm-' || r.run, t), 'anomaly', undo => true) AS via_insert,
       try(format('INSERT INTO dk.workflow_events (id, run_id, type) VALUES (%L, %L, %L)',
                    workflow_ext.new_event_id(), 'm-' || r.run, t), 'anomaly', undo => true) AS via_attached
  FROM unnest(ARRAY['none','pending','running','completed','failed','cancelled']) WITH ORDINALITY r(run, o),
       unnest(ARRAY['run_created','run_started','run_completed','run_failed','run_cancelled','attr_set','noop']) t
 ORDER BY r.o, t;

-- Entities in every state, inside a live run (e-live) and a finished one (e-done).
CREATE TEMP TABLE entity_setup (corr text, steps text[]);
INSERT INTO entity_setup VALUES
  ('step-pending',   '{step_created}'),
  ('step-running',   '{step_created,step_started}'),
  ('step-completed', '{step_created,step_started,step_completed}'),
  ('step-failed',    '{step_created,step_started,step_failed}'),
  ('step-retried',   '{step_created,step_started,step_retrying}'),
  ('wait-waiting',   '{wait_created}'),
  ('wait-completed', '{wait_created,wait_completed}'),
  ('hook-active',    '{hook_created,hook_received}'),
  ('hook-disposed',  '{hook_created,hook_disposed}'),
  ('hook-conflict',  '{hook_conflict}'),
  ('attr-set',       '{attr_set}');
DO $$
DECLARE r text; s record; t text;
BEGIN
  FOREACH r IN ARRAY ARRAY['e-live', 'e-done'] LOOP
    PERFORM both_logs(r, NULL, 'run_created');
    PERFORM both_logs(r, NULL, 'run_started');
    FOR s IN SELECT * FROM entity_setup LOOP
      FOREACH t IN ARRAY s.steps LOOP
        PERFORM both_logs(r, s.corr, t);
      END LOOP;
    END LOOP;
  END LOOP;
  PERFORM both_logs('e-done', NULL, 'run_completed');
END $$;

SELECT r AS run, e.corr AS entity, t AS event,
       try(format('SELECT workflow_ext.append_event(%L, %L, %L)', r, e.corr, t), 'anomaly', undo => true) AS via_function,
       try(format('INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES (%L, %L, %L)', r, e.corr, t), 'anomaly', undo => true) AS via_insert,
       try(format('INSERT INTO dk.workflow_events (id, run_id, correlation_id, type) VALUES (%L, %L, %L, %L)',
                    workflow_ext.new_event_id(), r, e.corr, t), 'anomaly', undo => true) AS via_attached
  FROM unnest(ARRAY['e-live', 'e-done']) r,
       (SELECT corr FROM entity_setup UNION ALL SELECT unnest(ARRAY['step-none','wait-none','hook-none','attr-none'])) e,
       unnest(enum_range(NULL::workflow_ext.event_type)::text[]) t
 WHERE split_part(t, '_', 1) = split_part(e.corr, '-', 1)
 ORDER BY r, e.corr, t;

-- Nothing of the above was kept: each run's log is as it was set up, the
-- same in both logs.
SELECT run_id, count(*), max(seq) FROM workflow_ext.events
 WHERE run_id LIKE 'm-%' OR run_id LIKE 'e-%' GROUP BY run_id ORDER BY run_id;
SELECT (SELECT array_agg((run_id, seq, type::text, correlation_id) ORDER BY run_id, seq) FROM workflow_ext.events
         WHERE run_id LIKE 'm-%' OR run_id LIKE 'e-%')
     = (SELECT array_agg((run_id::text, seq, type::text, correlation_id::text) ORDER BY run_id, seq) FROM dk.workflow_events)
       AS same_logs;

-- The DevKit's exceptions: a step running when the run ended may still
-- finish; a second run_cancelled is accepted and changes nothing.
SELECT seq FROM workflow_ext.append_event('e-done', 'step-running', 'step_completed');
SELECT seq FROM workflow_ext.append_event('m-cancelled', NULL, 'run_cancelled');
-- The reported shapes: vercel/workflow#2039 and vercel/workflow#2331.
SELECT try($$SELECT workflow_ext.append_event('e-live', 'step-completed', 'step_created')$$);
SELECT try($$SELECT workflow_ext.append_event('e-live', 'step-completed', 'step_started')$$);
-- Messages name run, correlation id, attempted type and state.
SELECT try($$SELECT workflow_ext.append_event('e-live', 'step-pending', 'step_retrying')$$);
SELECT try($$SELECT workflow_ext.append_event('e-done', 'step-new', 'step_created')$$);
-- A keyed attr_set creates its attribute: after the run's terminal it is
-- refused as every creation is (issue #26).
SELECT try($$SELECT workflow_ext.append_event('e-done', 'attr-new', 'attr_set')$$);
SELECT try($$SELECT workflow_ext.append_event('e-live', 'step-none', 'step_started')$$);
