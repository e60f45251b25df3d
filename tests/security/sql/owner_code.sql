-- No code the owner of an attached table chose runs with the extension's
-- privileges. Each attack below makes wfx_sec_app superuser if its function
-- ever runs as a superuser; `superusers` must stay empty.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE FUNCTION workflow.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE wfx_sec_app SUPERUSER';
  END IF;
  RETURN true;
END $$;
-- 1. A run_id of the owner's own type with an implicit cast to text (the
--    review's reproduction). The DDL watcher refuses the column change.
CREATE TYPE workflow.rid AS (v text);
CREATE FUNCTION workflow.rid_text(workflow.rid) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM workflow.escalate(); RETURN ($1).v; END$$;
CREATE CAST (workflow.rid AS text) WITH FUNCTION workflow.rid_text(workflow.rid) AS IMPLICIT;
ALTER TABLE workflow.workflow_events ALTER COLUMN run_id TYPE workflow.rid USING ROW(run_id)::workflow.rid;
RESET SESSION AUTHORIZATION;
-- The trigger checks the types too, for when event triggers do not fire
-- (here: disabled by the superuser, as single-user mode would).
ALTER EVENT TRIGGER workflow_ext_guard_logs DISABLE;
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE workflow.workflow_events ALTER COLUMN run_id TYPE workflow.rid USING ROW(run_id)::workflow.rid;
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id)
VALUES ('x1', 'run_created', NULL, ROW('rx')), ('x2', 'step_created', 's1', ROW('rx'));
RESET SESSION AUTHORIZATION;
-- A monitoring role drilling into stuck runs reads the log as the
-- extension's owner: refused before the read.
GRANT EXECUTE ON FUNCTION workflow_ext.stuck_runs(interval) TO wfx_sec_monitor;
GRANT USAGE ON SCHEMA workflow_ext TO wfx_sec_monitor;
SET SESSION AUTHORIZATION wfx_sec_monitor;
SELECT run_id FROM workflow_ext.stuck_runs('0');
RESET SESSION AUTHORIZATION;
-- replay and scan (as the caller, here a superuser) refuse the source too.
SELECT * FROM workflow_ext.scan('workflow.workflow_events');
SELECT * FROM superusers;
-- Back as it was.
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE workflow.workflow_events ALTER COLUMN run_id TYPE varchar USING (run_id).v;
RESET SESSION AUTHORIZATION;
ALTER EVENT TRIGGER workflow_ext_guard_logs ENABLE ALWAYS;

-- 2. attach runs nothing of the owner's as superuser: a trigger of the
--    owner's is refused before attach touches the table; a CHECK
--    constraint and an index expression run when attach numbers the rows,
--    as the owner.
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE SCHEMA trap;
CREATE TABLE trap.events (id varchar PRIMARY KEY, run_id varchar NOT NULL, type varchar NOT NULL,
                          correlation_id varchar);
INSERT INTO trap.events (id, run_id, type, correlation_id) VALUES ('t1', 'r', 'run_created', NULL);
CREATE FUNCTION workflow.on_update() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN PERFORM workflow.escalate(); RETURN NEW; END$$;
CREATE TRIGGER owner_trigger BEFORE UPDATE ON trap.events
  FOR EACH ROW EXECUTE FUNCTION workflow.on_update();
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
DROP TRIGGER owner_trigger ON trap.events;
CREATE FUNCTION workflow.checked(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
  $$BEGIN RETURN workflow.escalate(); END$$;
ALTER TABLE trap.events ADD CONSTRAINT owner_check CHECK (workflow.checked(id));
CREATE INDEX owner_expression ON trap.events ((workflow.checked(id || run_id)));
RESET SESSION AUTHORIZATION;
-- Refused: the planner folds such functions whenever it plans a query on
-- the table (also in the extension's privileged reads).
SELECT workflow_ext.attach('trap.events') AS numbered;
-- Were they let through, attach's numbering would run them as the owner:
-- check_log's refusal taken away for the length of one attach.
SELECT pg_get_functiondef('workflow_ext.check_log(regclass, boolean, oid[])'::regprocedure) AS check_log_def \gset
CREATE OR REPLACE FUNCTION workflow_ext.check_log(log regclass, attaching boolean, created oid[] DEFAULT '{}')
RETURNS void LANGUAGE sql AS 'SELECT';
SELECT workflow_ext.attach('trap.events') AS numbered;
SELECT * FROM superusers;
SELECT workflow_ext.detach('trap.events');
:check_log_def
\g
SELECT * FROM superusers;
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP CONSTRAINT owner_check;
DROP INDEX trap.owner_expression;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events') AS numbered;
-- A rule of the owner's is refused at attach as well.
SELECT workflow_ext.detach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE RULE owner_rule AS ON UPDATE TO trap.events DO ALSO SELECT workflow.escalate();
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SELECT * FROM superusers;
-- 3. A CHECK constraint runs as whoever writes a row; on Citus,
--    distribute(), undistribute() and attach of a distributed table have
--    Citus copy the rows as the caller, a superuser. So a CHECK constraint
--    of the table, or of a domain a column is of, may call only PostgreSQL's
--    functions that anyone may call and that are not volatile: a reserved
--    one (lo_import: it would read a server file into a large object), or
--    an owner's function through a domain, is refused at attach and by the
--    DDL watcher. now() and comparisons stay allowed.
SET SESSION AUTHORIZATION wfx_sec_app;
DROP RULE owner_rule ON trap.events;
ALTER TABLE trap.events ADD CONSTRAINT owner_builtin
  CHECK (pg_catalog.lo_import('/etc/hostname', 424242) > 0) NOT VALID;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP CONSTRAINT owner_builtin;
CREATE DOMAIN workflow.trapped_text AS text CHECK (workflow.checked(VALUE));
ALTER TABLE trap.events ADD COLUMN note workflow.trapped_text;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP COLUMN note;
ALTER TABLE trap.events ADD COLUMN created_at timestamptz DEFAULT now()
  CHECK (created_at <= now() + interval '1 day');
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events') AS numbered;
-- Once attached, the DDL watcher refuses such a constraint.
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events ADD CONSTRAINT owner_builtin
  CHECK (pg_catalog.lo_import('/etc/hostname', 424242) > 0) NOT VALID;
RESET SESSION AUTHORIZATION;
SELECT count(*) AS large_objects FROM pg_largeobject_metadata WHERE oid = 424242;
SELECT * FROM superusers;
SELECT workflow_ext.detach('trap.events');
-- A CHECK constraint added to a column's domain after the attach: the DDL
-- watcher checks the logs after ALTER DOMAIN too.
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE DOMAIN workflow.later_text AS text;
ALTER TABLE trap.events ADD COLUMN later workflow.later_text;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events') AS numbered;
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER DOMAIN workflow.later_text ADD CONSTRAINT trapped CHECK (workflow.checked(VALUE)) NOT VALID;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.detach('trap.events');
SELECT * FROM superusers;
-- A domain reached through an array, a composite type, or a conversion in a
-- CHECK constraint, a generated column or an index expression is checked as
-- well: writing such a row evaluates its CHECK constraints.
SET SESSION AUTHORIZATION wfx_sec_app;
CREATE DOMAIN workflow.trapped_item AS text CHECK (workflow.checked(VALUE));
ALTER TABLE trap.events ADD COLUMN items workflow.trapped_item[];
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP COLUMN items;
CREATE TYPE workflow.trapped_pair AS (first workflow.trapped_item, second text);
ALTER TABLE trap.events ADD COLUMN pair workflow.trapped_pair;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP COLUMN pair;
ALTER TABLE trap.events ADD CONSTRAINT converted CHECK (type::text::workflow.trapped_item IS NOT NULL);
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP CONSTRAINT converted;
ALTER TABLE trap.events ADD COLUMN generated text
  GENERATED ALWAYS AS ((id::text::workflow.trapped_item)::text) STORED;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events DROP COLUMN generated;
CREATE INDEX converted_index ON trap.events ((type::text::workflow.trapped_item));
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events');
SET SESSION AUTHORIZATION wfx_sec_app;
DROP INDEX trap.converted_index;
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.attach('trap.events') AS numbered;
-- Attached, the DDL watcher refuses the array column.
SET SESSION AUTHORIZATION wfx_sec_app;
ALTER TABLE trap.events ADD COLUMN items workflow.trapped_item[];
RESET SESSION AUTHORIZATION;
SELECT workflow_ext.detach('trap.events');
SELECT * FROM superusers;
