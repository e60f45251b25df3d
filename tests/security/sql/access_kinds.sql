-- grant_access(role, 'monitor') gives workflow_ext's numbers and nothing
-- else: not pg_monitor, which reads every session's query text.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT workflow_ext.grant_access('wfx_sec_login', 'monitor');
SELECT pg_has_role('wfx_sec_login', 'pg_monitor', 'member') AS in_pg_monitor,
       pg_has_role('wfx_sec_login', 'pg_read_all_stats', 'member') AS reads_all_stats;
SET SESSION AUTHORIZATION wfx_sec_login;
SELECT log, runs_pending + runs_running >= 0 AS counted FROM workflow_ext.metrics() ORDER BY 1;
SELECT count(*) >= 0 AS lists_logs FROM workflow_ext.attached_logs;
-- Nothing of the log.
SELECT count(*) FROM workflow_ext.events;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.grant_access('wfx_sec_login', 'monitor', revoke => true);
SELECT has_function_privilege('wfx_sec_login', 'workflow_ext.metrics(interval)', 'EXECUTE') AS metrics_left;
-- Tear down: roles are cluster-wide.
SET client_min_messages = warning;
DROP SCHEMA workflow CASCADE;
DROP SCHEMA trap CASCADE;
DROP SCHEMA upper CASCADE;
REVOKE ALL ON SCHEMA workflow_ext FROM wfx_sec_monitor;
REVOKE ALL ON FUNCTION workflow_ext.stuck_runs(interval) FROM wfx_sec_monitor;
REVOKE CREATE ON DATABASE wfx_security FROM wfx_sec_app;
DROP ROLE wfx_sec_app;
DROP ROLE wfx_sec_monitor;
DROP ROLE wfx_sec_login;
