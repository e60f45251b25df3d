-- Runs last: triggers and privileges.

-- The events trigger is the single validator of the log (src/append.rs).
-- ENABLE ALWAYS: it also fires under session_replication_role = replica,
-- which otherwise silences ordinary triggers.
CREATE TRIGGER events_validate_insert
    BEFORE INSERT ON workflow_ext.events
    FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_before_insert();
-- AFTER, so only rows the validator admitted (and an ON CONFLICT skip never)
-- take or release tokens.
CREATE TRIGGER events_hook_tokens
    AFTER INSERT ON workflow_ext.events
    FOR EACH ROW
    WHEN (NEW.type IN ('hook_created', 'hook_disposed', 'run_completed', 'run_failed', 'run_cancelled'))
    EXECUTE FUNCTION workflow_ext.events_track_hook_tokens();
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON workflow_ext.events
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON workflow_ext.events
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change();
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_validate_insert;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_hook_tokens;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Privileges -----------------------------------------------------------------
-- (SECURITY DEFINER and search_path choices are explained in functions.sql.)
REVOKE ALL ON FUNCTION workflow_ext.events_before_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.events_refuse_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.purge_runs(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.events_track_hook_tokens() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.rebuild_hook_tokens() FROM PUBLIC;
-- attach/detach change another table's triggers and indexes and register it
-- in the internal logs table (see attach.sql): for a superuser or the roles
-- it grants them to. The helpers are internal.
REVOKE ALL ON FUNCTION workflow_ext.attach(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.detach(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.create_creation_index(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.keep_creation_index_of(regclass) FROM PUBLIC;

-- Tables: the log is readable and appendable (through the trigger) by
-- PUBLIC; REVOKE these and grant them to your application role to narrow
-- it. UPDATE/DELETE/TRUNCATE are refused by the triggers whatever the grants.
-- runs, joins and join_members are internal: no PUBLIC rights at all.
GRANT USAGE ON SCHEMA workflow_ext TO PUBLIC;
GRANT SELECT, INSERT ON workflow_ext.events TO PUBLIC;
REVOKE ALL ON workflow_ext.runs, workflow_ext.joins, workflow_ext.join_members, workflow_ext.hook_tokens FROM PUBLIC;
REVOKE ALL ON workflow_ext.logs FROM PUBLIC;
GRANT SELECT ON workflow_ext.attached_logs TO PUBLIC;
GRANT SELECT ON workflow_ext.bootstraps TO PUBLIC;
