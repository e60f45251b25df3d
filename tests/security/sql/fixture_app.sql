-- Fixture for every later file of this suite (schedule): the extension, the
-- roles, and a DevKit-shaped table owned by the application's role
-- (NOSUPERUSER), which runs its own migrations, as world-postgres does.
\set SHOW_CONTEXT never
-- Roles are cluster-wide: a run that stopped half way left them behind.
SET client_min_messages = warning;
DROP ROLE IF EXISTS wfx_sec_app;
DROP ROLE IF EXISTS wfx_sec_monitor;
DROP ROLE IF EXISTS wfx_sec_login;
RESET client_min_messages;
CREATE EXTENSION workflow_ext;
CREATE ROLE wfx_sec_app LOGIN NOSUPERUSER;
CREATE ROLE wfx_sec_monitor LOGIN NOSUPERUSER;
CREATE ROLE wfx_sec_login LOGIN NOSUPERUSER;
GRANT CREATE ON DATABASE wfx_security TO wfx_sec_app;
-- Whether a role of this suite became superuser (each file ends with it).
CREATE VIEW public.superusers AS
  SELECT rolname FROM pg_roles WHERE rolname LIKE 'wfx\_sec\_%' AND rolsuper ORDER BY 1;
GRANT SELECT ON public.superusers TO PUBLIC;
-- The application's migration: its schema and event table.
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
  id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
  payload jsonb, payload_cbor bytea, spec_version integer);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
  (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) VALUES
  ('wevt_01', 'wrun_1', 'run_created', NULL), ('wevt_02', 'wrun_1', 'run_started', NULL),
  ('wevt_03', 'wrun_1', 'step_created', 's1');
RESET SESSION AUTHORIZATION;
-- The administrator attaches it (a superuser, as the README says).
SELECT workflow_ext.attach('workflow.workflow_events') AS numbered;
SELECT * FROM superusers;
