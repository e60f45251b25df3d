-- One active owner per hook token, database-wide (issue #14).
-- try(stmt, 'constraint') (fixture_extension) shows the SQLSTATE and the
-- constraint an error names.
SELECT (workflow_ext.append_event(r, NULL, 'run_created')).seq FROM unnest(ARRAY['tok_a', 'tok_b', 'tok_c']) r;
SELECT (workflow_ext.append_event(r, NULL, 'run_started')).seq FROM unnest(ARRAY['tok_a', 'tok_b', 'tok_c']) r;
-- Run a takes token T.
SELECT inserted FROM workflow_ext.append_suspension_event('tok_a', 'hook_1', 'hook_created', '{"token": "T"}');
-- Every write path of another run is refused with 23505 on the token's constraint.
SELECT try($$SELECT workflow_ext.append_event('tok_b', 'hook_1', 'hook_created', '{"token": "T"}')$$, 'constraint');
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload) VALUES ('tok_b', 'hook_1', 'hook_created', '{"token": "T"}')$$, 'constraint');
SELECT try($$SELECT workflow_ext.append_suspension_event('tok_b', 'hook_1', 'hook_created', '{"token": "T"}')$$, 'constraint');
-- So does a second hook of the same run.
SELECT try($$SELECT workflow_ext.append_event('tok_a', 'hook_2', 'hook_created', '{"token": "T"}')$$, 'constraint');
-- Nothing was written for the losers; the loser records the DevKit's outcome.
SELECT count(*) AS hook_rows_b FROM workflow_ext.events WHERE run_id = 'tok_b';
SELECT seq FROM workflow_ext.append_event('tok_b', 'hook_1', 'hook_conflict', '{"token": "T"}');
-- Redelivered creations return the stored event: the owner's hook_created,
-- the loser's hook_conflict.
SELECT e.type, s.inserted FROM workflow_ext.append_suspension_event('tok_a', 'hook_1', 'hook_created', '{"token": "T"}') s
  JOIN workflow_ext.events e ON e.id = s.event_id;
SELECT e.type, s.inserted FROM workflow_ext.append_suspension_event('tok_b', 'hook_1', 'hook_created', '{"token": "T"}') s
  JOIN workflow_ext.events e ON e.id = s.event_id;
SELECT token, run_id, correlation_id FROM workflow_ext.hook_tokens ORDER BY token;
-- hook_disposed releases the token: run c takes it.
SELECT seq FROM workflow_ext.append_event('tok_a', 'hook_1', 'hook_disposed');
SELECT inserted FROM workflow_ext.append_suspension_event('tok_c', 'hook_9', 'hook_created', '{"token": "T"}');
-- The run's terminal event releases all its hooks' tokens.
SELECT inserted FROM workflow_ext.append_suspension_event('tok_c', 'hook_8', 'hook_created', '{"token": "U"}');
SELECT token, run_id FROM workflow_ext.hook_tokens ORDER BY token;
SELECT seq FROM workflow_ext.append_event('tok_c', NULL, 'run_completed');
SELECT count(*) AS tokens_left FROM workflow_ext.hook_tokens;
SELECT inserted FROM workflow_ext.append_suspension_event('tok_a', 'hook_3', 'hook_created', '{"token": "U"}');
-- A hook without a token, and a token that is not a string, take nothing.
SELECT inserted FROM workflow_ext.append_suspension_event('tok_a', 'hook_4', 'hook_created', '{"token": 7}');
SELECT inserted FROM workflow_ext.append_suspension_event('tok_a', 'hook_5', 'hook_created');
-- Derived state: rebuilt from the log, it is the same.
CREATE TEMP TABLE before AS SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens;
SELECT workflow_ext.rebuild_hook_tokens() AS tokens;
SELECT count(*) AS differences FROM (
  (SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens EXCEPT SELECT * FROM before)
  UNION ALL (SELECT * FROM before EXCEPT SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens)) d;
-- The log is clean by the audit's account too.
SELECT count(*) AS anomalies FROM workflow_ext.scan();
-- The audit finds past damage: a DevKit-shaped log where two runs' hooks held
-- token X at once (run m2 took it while m1's hook was active), and a run whose
-- two hooks held Y at once; m3 took X only after m1's run finished.
CREATE TABLE devkit_tok (id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
                         created_at timestamp NOT NULL, run_id varchar NOT NULL, payload jsonb);
INSERT INTO devkit_tok VALUES
  ('wevt_m1_1', 'run_created',   NULL, '2026-01-01 10:00', 'm1', NULL),
  ('wevt_m1_2', 'run_started',   NULL, '2026-01-01 10:00', 'm1', NULL),
  ('wevt_m1_3', 'hook_created',  'h',  '2026-01-01 10:01', 'm1', '{"token": "X"}'),
  ('wevt_m1_4', 'run_completed', NULL, '2026-01-01 10:05', 'm1', NULL),
  ('wevt_m2_1', 'run_created',   NULL, '2026-01-01 10:00', 'm2', NULL),
  ('wevt_m2_2', 'run_started',   NULL, '2026-01-01 10:00', 'm2', NULL),
  ('wevt_m2_3', 'hook_created',  'h',  '2026-01-01 10:02', 'm2', '{"token": "X"}'),
  ('wevt_m2_4', 'hook_created',  'g',  '2026-01-01 10:03', 'm2', '{"token": "Y"}'),
  ('wevt_m2_5', 'hook_created',  'k',  '2026-01-01 10:04', 'm2', '{"token": "Y"}'),
  ('wevt_m3_1', 'run_created',   NULL, '2026-01-01 10:00', 'm3', NULL),
  ('wevt_m3_2', 'run_started',   NULL, '2026-01-01 10:00', 'm3', NULL),
  ('wevt_m3_3', 'hook_created',  'h',  '2026-01-01 10:06', 'm3', '{"token": "X"}');
SELECT seq, event_id, anomaly, detail FROM workflow_ext.replay('m2', 'devkit_tok');
SELECT count(*) AS m3_anomalies FROM workflow_ext.replay('m3', 'devkit_tok');
SELECT run_id, events, anomalies, first_seq, first_anomaly FROM workflow_ext.scan('devkit_tok') ORDER BY 1;
-- The table is internal: PUBLIC cannot read or write it, nor rebuild it.
SET client_min_messages = warning;
DROP ROLE IF EXISTS wfx_tok;
RESET client_min_messages;
CREATE ROLE wfx_tok;
SELECT workflow_ext.grant_access('wfx_tok', 'writer');
SET ROLE wfx_tok;
SELECT try($$SELECT * FROM workflow_ext.hook_tokens$$, 'constraint');
SELECT try($$DELETE FROM workflow_ext.hook_tokens$$, 'constraint');
SELECT try($$SELECT workflow_ext.rebuild_hook_tokens()$$, 'constraint');
RESET ROLE;
DROP OWNED BY wfx_tok;
DROP ROLE wfx_tok;
