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
--   monitor   USAGE; EXECUTE on metrics, stuck_runs, counters_since_start,
--             counters_on_every_node;
--             SELECT on attached_logs: workflow_ext's numbers and nothing
--             else (0.4 granted all of pg_monitor, which reads every
--             session's query text; a role granted monitor then keeps
--             pg_monitor until it is revoked by hand)
-- A revoke keeps what another kind the role holds shares with it (USAGE,
-- SELECT on events): PostgreSQL keeps one grant, not one per kind.
CREATE FUNCTION workflow_ext.grant_access(role regrole, access text, revoke boolean DEFAULT false)
RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verb text := CASE WHEN revoke THEN 'REVOKE' ELSE 'GRANT' END;
    dir text := CASE WHEN revoke THEN 'FROM' ELSE 'TO' END;
    -- What each kind grants, one privilege per row: a revoke must see which
    -- of them another kind shares.
    items CONSTANT text[][] := ARRAY[
        ['writer', 'USAGE ON SCHEMA workflow_ext'],
        ['writer', 'SELECT ON workflow_ext.events'],
        ['writer', 'INSERT ON workflow_ext.events'],
        ['writer', 'EXECUTE ON FUNCTION workflow_ext.append_event(text, text, text, jsonb)'],
        ['writer', 'EXECUTE ON FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb)'],
        ['writer', 'EXECUTE ON FUNCTION workflow_ext.append_suspension_events(text, text[], text[], jsonb[])'],
        ['writer', 'EXECUTE ON FUNCTION workflow_ext.join_arrive(text, text, text, integer)'],
        ['reader', 'USAGE ON SCHEMA workflow_ext'],
        ['reader', 'SELECT ON workflow_ext.events'],
        ['reader', 'EXECUTE ON FUNCTION workflow_ext.replay(text, regclass)'],
        ['reader', 'EXECUTE ON FUNCTION workflow_ext.scan(regclass, timestamptz)'],
        ['migrator', 'USAGE ON SCHEMA workflow_ext'],
        ['migrator', 'SELECT ON workflow_ext.bootstraps'],
        ['migrator', 'EXECUTE ON FUNCTION workflow_ext.bootstrap(text, text)'],
        ['migrator', 'EXECUTE ON FUNCTION workflow_ext.bootstrap_begin(text, interval, text)'],
        ['migrator', 'EXECUTE ON FUNCTION workflow_ext.bootstrap_end(text)'],
        ['monitor', 'USAGE ON SCHEMA workflow_ext'],
        ['monitor', 'EXECUTE ON FUNCTION workflow_ext.metrics(interval)'],
        ['monitor', 'EXECUTE ON FUNCTION workflow_ext.stuck_runs(interval)'],
        ['monitor', 'EXECUTE ON FUNCTION workflow_ext.counters_since_start()'],
        ['monitor', 'EXECUTE ON FUNCTION workflow_ext.counters_on_every_node()'],
        ['monitor', 'SELECT ON workflow_ext.attached_logs']];
    -- The other kinds the role holds (granted to it directly, not through a
    -- membership), each known by a privilege only that kind grants. Their
    -- shared privileges survive a revoke of this kind.
    kept text[] := '{}';
    i int;
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
    IF revoke THEN
        SELECT coalesce(array_agg(items[j][2]), '{}') INTO kept
          FROM generate_subscripts(items, 1) j
         WHERE items[j][1] <> access
           AND (   (items[j][1] = 'writer' AND EXISTS (
                     SELECT FROM pg_class c, aclexplode(c.relacl) a
                      WHERE c.oid = 'workflow_ext.events'::regclass
                        AND a.grantee = role AND a.privilege_type = 'INSERT'))
                OR (items[j][1] = 'reader' AND EXISTS (
                     SELECT FROM pg_proc p, aclexplode(p.proacl) a
                      WHERE p.oid = 'workflow_ext.replay(text, regclass)'::regprocedure
                        AND a.grantee = role AND a.privilege_type = 'EXECUTE'))
                OR (items[j][1] = 'migrator' AND EXISTS (
                     SELECT FROM pg_proc p, aclexplode(p.proacl) a
                      WHERE p.oid = 'workflow_ext.bootstrap(text, text)'::regprocedure
                        AND a.grantee = role AND a.privilege_type = 'EXECUTE'))
                OR (items[j][1] = 'monitor' AND EXISTS (
                     SELECT FROM pg_proc p, aclexplode(p.proacl) a
                      WHERE p.oid = 'workflow_ext.metrics(interval)'::regprocedure
                        AND a.grantee = role AND a.privilege_type = 'EXECUTE')));
    END IF;
    FOR i IN 1 .. array_length(items, 1) LOOP
        CONTINUE WHEN items[i][1] <> access OR items[i][2] = ANY (kept);
        EXECUTE format('%s %s %s %s', verb, items[i][2], dir, role);
    END LOOP;
END
$$;
