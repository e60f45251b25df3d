-- An ordinary application role: may append, join and read; may not write
-- the internal tables, change the log, or purge.
SET client_min_messages = warning;
DROP ROLE IF EXISTS wfx_app;
RESET client_min_messages;
CREATE ROLE wfx_app LOGIN;
-- Secure by default: a role with no grants reads and writes nothing.
SET ROLE wfx_app;
SELECT try($$SELECT count(*) FROM workflow_ext.events$$);
SELECT try($$SELECT workflow_ext.append_event('someone-elses-run', NULL, 'run_cancelled')$$);
SELECT try($$SELECT * FROM workflow_ext.append_suspension_event('r', NULL, 'run_created')$$);
SELECT try($$INSERT INTO workflow_ext.events (run_id, type) VALUES ('r', 'run_created')$$);
SELECT try($$SELECT workflow_ext.join_arrive('r', 'j', 'm', 1)$$);
SELECT try($$SELECT * FROM workflow_ext.replay('r')$$);
SELECT try($$SELECT * FROM workflow_ext.scan()$$);
SELECT try($$SELECT workflow_ext.bootstrap('b@v1', 'SELECT 1')$$);
SELECT try($$SELECT * FROM workflow_ext.metrics()$$);
SELECT try($$SELECT workflow_ext.grant_access('wfx_app', 'writer')$$);
RESET ROLE;
-- The recipe: a writer (append, join, read back), here also a reader.
SELECT workflow_ext.grant_access('wfx_app', 'writer');
SELECT workflow_ext.grant_access('wfx_app', 'reader');
SELECT try($$SELECT workflow_ext.grant_access('wfx_app', 'superuser')$$);
SELECT try($$SELECT workflow_ext.grant_access(NULL, 'writer')$$);
SET ROLE wfx_app;
-- Granted: neither the migrator's nor the monitor's functions.
SELECT try($$SELECT workflow_ext.bootstrap('b@v1', 'SELECT 1')$$);
SELECT try($$SELECT * FROM workflow_ext.metrics()$$);
SELECT seq, inserted FROM workflow_ext.append_suspension_event('priv-run', NULL, 'run_created');
SELECT seq FROM workflow_ext.append_event('priv-run', NULL, 'run_started');
SELECT workflow_ext.join_arrive('priv-run', 'j', 'm', 1);
SELECT count(*) FROM workflow_ext.events WHERE run_id = 'priv-run';
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('priv-run', 's', 'step_created') RETURNING seq;
SELECT try($$INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('priv-run', 's', 'step_completed')$$);
SELECT try($$UPDATE workflow_ext.events SET payload = '{}'$$);
SELECT try($$DELETE FROM workflow_ext.events$$);
SELECT try($$TRUNCATE workflow_ext.events$$);
SELECT try($$SELECT * FROM workflow_ext.runs$$);
SELECT try($$UPDATE workflow_ext.runs SET last_seq = 0$$);
SELECT try($$INSERT INTO workflow_ext.runs (run_id, state, last_seq) VALUES ('x', 'pending', 1)$$);
SELECT try($$SELECT * FROM workflow_ext.joins$$);
SELECT try($$UPDATE workflow_ext.joins SET arrived = 0$$);
SELECT try($$DELETE FROM workflow_ext.join_members$$);
SELECT try($$SELECT workflow_ext.purge_runs('0')$$);
SELECT try($$ALTER TABLE workflow_ext.events DISABLE TRIGGER events_validate_insert$$);
SELECT try($$SET session_replication_role = replica$$);
-- Look-alike objects earlier on the search_path, even ahead of pg_catalog,
-- change nothing: the write path qualifies every name (operators included),
-- every other function pins search_path = pg_catalog, pg_temp. Each
-- look-alike would corrupt the result if it were used: `=` matches
-- everything, `+` and `-` jump by 1000, now() is the epoch, unnest returns
-- nothing, `text` is an integer.
RESET ROLE;
CREATE SCHEMA wfx_evil AUTHORIZATION wfx_app;
SET ROLE wfx_app;
CREATE TABLE wfx_evil.events (LIKE workflow_ext.events);
CREATE TABLE wfx_evil.runs (run_id text, state text, last_seq bigint);
CREATE FUNCTION wfx_evil.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR wfx_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = wfx_evil.texteq_evil);
CREATE FUNCTION wfx_evil.plus_evil(bigint, integer) RETURNS bigint LANGUAGE sql AS 'SELECT $1 OPERATOR(pg_catalog.+) 1000';
CREATE OPERATOR wfx_evil.+ (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = wfx_evil.plus_evil);
CREATE FUNCTION wfx_evil.minus_evil(bigint, integer) RETURNS bigint LANGUAGE sql AS 'SELECT $1 OPERATOR(pg_catalog.-) 1000';
CREATE OPERATOR wfx_evil.- (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = wfx_evil.minus_evil);
CREATE FUNCTION wfx_evil.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT 'epoch'::timestamptz$$;
CREATE FUNCTION wfx_evil.unnest(text[], text[], jsonb[]) RETURNS TABLE (c text, t text, p jsonb)
    LANGUAGE sql AS 'SELECT NULL::text, NULL::text, NULL::jsonb WHERE false';
CREATE FUNCTION wfx_evil.unnest(text[], text[]) RETURNS TABLE (c text, t text)
    LANGUAGE sql AS 'SELECT NULL::text, NULL::text WHERE false';
CREATE DOMAIN wfx_evil.text AS integer;
SET search_path = wfx_evil, pg_catalog, public;
SELECT seq, inserted FROM workflow_ext.append_suspension_event('priv-run', 's2', 'step_created');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('priv-run', 's2', 'step_created');
SELECT seq FROM workflow_ext.append_event('priv-run', 's2', 'step_started');
SELECT correlation_id, seq, inserted FROM workflow_ext.append_suspension_events('priv-run',
    ARRAY['s3', 's2', 's4'], ARRAY['step_created', 'step_created', 'step_created']);
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('priv-run', 's3', 'step_started')
    RETURNING seq;
SELECT count(*) AS evil_rows FROM wfx_evil.events;
RESET search_path;
SELECT seq, type, correlation_id FROM workflow_ext.events WHERE run_id = 'priv-run' ORDER BY seq;
RESET ROLE;
SELECT last_seq, last_event_at > 'epoch' AS stamped_now FROM workflow_ext.runs WHERE run_id = 'priv-run';
-- An attached table on the caller's search_path: the validator's plans are
-- made while the table is visible there, then the path changes so that a
-- look-alike holding a forged creation comes first (a kept plan is parsed
-- again under the new path). The validator still reads the real table: its
-- statements name the table with its schema.
CREATE SCHEMA wfx_app_s;
CREATE TABLE wfx_app_s.dk (id varchar PRIMARY KEY, run_id varchar NOT NULL, type varchar NOT NULL,
                           correlation_id varchar);
INSERT INTO wfx_app_s.dk VALUES ('wevt_1', 'dkrun', 'run_created', NULL);
SELECT workflow_ext.attach('wfx_app_s.dk');
CREATE TABLE wfx_evil.dk (id varchar, run_id varchar, type varchar, correlation_id varchar, seq bigint);
INSERT INTO wfx_evil.dk VALUES ('wevt_f', 'dkrun', 'step_created', 'ghost', 2);
SET search_path = wfx_app_s, pg_catalog;
INSERT INTO wfx_app_s.dk (id, run_id, type, correlation_id) VALUES ('wevt_2', 'dkrun', 'step_created', 'real')
    RETURNING seq;
SET search_path = wfx_evil, wfx_app_s, pg_catalog;
SELECT public.try($$INSERT INTO wfx_app_s.dk (id, run_id, type, correlation_id)
                    VALUES ('wevt_3', 'dkrun', 'step_started', 'ghost')$$);
RESET search_path;
SELECT count(*) AS dk_rows FROM wfx_app_s.dk;
DROP SCHEMA wfx_app_s CASCADE;
DROP SCHEMA wfx_evil CASCADE;
-- Writer revoked: what the role's reader access shares with it (USAGE,
-- SELECT on events) stays, the rest goes.
SELECT workflow_ext.grant_access('wfx_app', 'writer', revoke => true);
SELECT has_schema_privilege('wfx_app', 'workflow_ext', 'USAGE') AS usage,
       has_table_privilege('wfx_app', 'workflow_ext.events', 'SELECT') AS "select",
       has_table_privilege('wfx_app', 'workflow_ext.events', 'INSERT') AS "insert",
       has_function_privilege('wfx_app', 'workflow_ext.append_event(text, text, text, jsonb)', 'EXECUTE') AS append,
       has_function_privilege('wfx_app', 'workflow_ext.scan(regclass, timestamptz)', 'EXECUTE') AS scan;
-- A role that may read the log and call the function but not insert may
-- not append, not even a creation that is stored (answered without a
-- statement, src/write/creation_probe.rs, under the grants the statement would
-- need: 42501 as before).
GRANT USAGE ON SCHEMA workflow_ext TO wfx_app;
GRANT SELECT ON workflow_ext.events TO wfx_app;
GRANT EXECUTE ON FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb) TO wfx_app;
SET ROLE wfx_app;
SELECT try($$SELECT * FROM workflow_ext.append_suspension_event('priv-run', NULL, 'run_created')$$);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb) FROM wfx_app;
-- Reader revoked too: the role is back to nothing.
SELECT workflow_ext.grant_access('wfx_app', 'reader', revoke => true);
SET ROLE wfx_app;
SELECT try($$SELECT count(*) FROM workflow_ext.events$$);
RESET ROLE;
SELECT count(*) AS privileges_left
  FROM (SELECT FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.relnamespace = 'workflow_ext'::regnamespace AND a.grantee = 'wfx_app'::regrole
        UNION ALL
        SELECT FROM pg_proc p, aclexplode(p.proacl) a
         WHERE p.pronamespace = 'workflow_ext'::regnamespace AND a.grantee = 'wfx_app'::regrole
        UNION ALL
        SELECT FROM pg_namespace n, aclexplode(n.nspacl) a
         WHERE n.nspname = 'workflow_ext' AND a.grantee = 'wfx_app'::regrole) x;
-- A monitoring role: metrics and stuck runs, not the log.
CREATE ROLE wfx_monitor;
SELECT workflow_ext.grant_access('wfx_monitor', 'monitor');
SET ROLE wfx_monitor;
SELECT log, runs_pending + runs_running >= 0 AS counted FROM workflow_ext.metrics() WHERE log = 'workflow_ext.events';
SELECT count(*) >= 0 AS listed FROM workflow_ext.stuck_runs('0 s');
SELECT count(*) > 0 AS logs_listed FROM workflow_ext.attached_logs;
SELECT try($$SELECT count(*) FROM workflow_ext.events$$);
SELECT try($$SELECT * FROM workflow_ext.replay('priv-run')$$);
RESET ROLE;
DROP OWNED BY wfx_monitor;
DROP ROLE wfx_monitor;
DROP OWNED BY wfx_app;
DROP ROLE wfx_app;
