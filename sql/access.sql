-- Access: PUBLIC gets nothing (finalize.sql); grant_access is the documented
-- way to open the extension to a role, one kind of access at a time.
-- SECURITY INVOKER: GRANT and REVOKE run with the caller's rights, so only
-- who may grant these privileges anyway (the extension owner, a superuser)
-- can use it; it is no way around anything.
--
--   writer    USAGE on the schema; SELECT, INSERT on events; EXECUTE on
--             append_event, append_suspension_event(s), join_arrive
--   reader    USAGE; SELECT on events; EXECUTE on replay, scan
--   migrator  USAGE; SELECT on bootstraps; EXECUTE on bootstrap,
--             bootstrap_begin, bootstrap_end
--   monitor   membership in pg_monitor (metrics, stuck_runs,
--             counters_since_start, attached_logs)
CREATE FUNCTION workflow_ext.grant_access(role regrole, access text, revoke boolean DEFAULT false)
RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verb text := CASE WHEN revoke THEN 'REVOKE' ELSE 'GRANT' END;
    dir text := CASE WHEN revoke THEN 'FROM' ELSE 'TO' END;
    stmt text;
BEGIN
    IF role IS NULL OR access IS NULL OR revoke IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN role IS NULL THEN 'role' WHEN access IS NULL THEN 'access'
                                                   ELSE 'revoke' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF access NOT IN ('writer', 'reader', 'migrator', 'monitor') THEN
        RAISE EXCEPTION 'unknown access "%"', access
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The kinds of access are writer, reader, migrator and monitor.';
    END IF;
    FOREACH stmt IN ARRAY CASE access
        WHEN 'writer' THEN ARRAY[
            'USAGE ON SCHEMA workflow_ext',
            'SELECT, INSERT ON workflow_ext.events',
            'EXECUTE ON FUNCTION workflow_ext.append_event(text, text, text, jsonb), '
            'workflow_ext.append_suspension_event(text, text, text, jsonb), '
            'workflow_ext.append_suspension_events(text, text[], text[], jsonb[]), '
            'workflow_ext.join_arrive(text, text, text, integer)']
        WHEN 'reader' THEN ARRAY[
            'USAGE ON SCHEMA workflow_ext',
            'SELECT ON workflow_ext.events',
            'EXECUTE ON FUNCTION workflow_ext.replay(text, regclass), workflow_ext.scan(regclass, timestamptz)']
        WHEN 'migrator' THEN ARRAY[
            'USAGE ON SCHEMA workflow_ext',
            'SELECT ON workflow_ext.bootstraps',
            'EXECUTE ON FUNCTION workflow_ext.bootstrap(text, text), '
            'workflow_ext.bootstrap_begin(text, interval, text), workflow_ext.bootstrap_end(text)']
        WHEN 'monitor' THEN ARRAY['pg_monitor']
    END
    LOOP
        EXECUTE format('%s %s %s %s', verb, stmt, dir, role);
    END LOOP;
END
$$;
