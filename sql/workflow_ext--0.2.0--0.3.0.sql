-- workflow_ext 0.2.0 → 0.3.0 (ALTER EXTENSION workflow_ext UPDATE).
-- Keep in step with sql/schema.sql, sql/functions.sql, sql/attach.sql and
-- sql/finalize.sql: the upgrade test compares an upgraded install with a
-- fresh one, object by object.

-- Spec 5+'s sealed-log filler (the new label is not used in this script:
-- an enum value added in a transaction is usable only after it commits).
ALTER TYPE workflow_ext.event_type ADD VALUE 'noop';

-- A keyed attr_set (spec 5) resolves once: the creation index covers it.
DROP INDEX workflow_ext.workflow_events_entity_creation_unique;
CREATE UNIQUE INDEX workflow_events_entity_creation_unique
    ON workflow_ext.events (run_id, correlation_id, type) NULLS NOT DISTINCT
    WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created')
       OR (type = 'attr_set' AND correlation_id IS NOT NULL);

-- Runs of every protected log, keyed by (log, run_id); the existing rows
-- are workflow_ext.events's.
ALTER TABLE workflow_ext.runs DROP CONSTRAINT runs_pkey;
ALTER TABLE workflow_ext.runs ALTER COLUMN run_id SET NOT NULL;
ALTER TABLE workflow_ext.runs ADD COLUMN log regclass NOT NULL DEFAULT 'workflow_ext.events'::regclass;
ALTER TABLE workflow_ext.runs ALTER COLUMN log DROP DEFAULT;
ALTER TABLE workflow_ext.runs ADD CONSTRAINT runs_pkey PRIMARY KEY (log, run_id);
-- The time of a run's last append, for monitoring (runs finished before the
-- update keep it NULL-free: their created_at or finish time).
ALTER TABLE workflow_ext.runs ADD COLUMN last_event_at timestamptz NOT NULL DEFAULT now();
UPDATE workflow_ext.runs SET last_event_at = coalesce(finished_at, created_at);
CREATE INDEX runs_active ON workflow_ext.runs (log, created_at)
    WHERE finished_at IS NULL;

-- The protected logs (as in schema.sql).
CREATE TABLE workflow_ext.logs (
    relation        regclass    PRIMARY KEY,
    accept_existing boolean     NOT NULL,  -- attached with anomalies in its past
    seq_added       boolean     NOT NULL,  -- attach added the seq column (detach drops it)
    numbered        bigint      NOT NULL,  -- existing rows attach numbered
    replaced_index  text,                  -- the table's own creation index attach replaced (detach restores it)
    creation_index  text        NOT NULL,  -- the extension's creation index, as pg_get_indexdef prints it
    added_indexes   text[]      NOT NULL,  -- the other indexes attach created
    attached_at     timestamptz NOT NULL DEFAULT now(),
    attached_by     text        NOT NULL DEFAULT session_user
);
INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, creation_index, added_indexes)
VALUES ('workflow_ext.events', false, false, 0,
        pg_catalog.pg_get_indexdef('workflow_ext.workflow_events_entity_creation_unique'::regclass), '{}');
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.logs', 'WHERE relation <> ''workflow_ext.events''::regclass');

CREATE FUNCTION workflow_ext.run_state(types text[]) RETURNS text
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'run_state_wrapper';

-- sql/attach.sql as released in 0.3.0 ------------------------------------------
-- Protecting an existing event table in place (attach / detach). Runs after
-- functions.sql: it calls scan() and run_state().
--
-- workflow_ext.events is one protected log among others: every log has the
-- same BEFORE INSERT trigger (events_before_insert, reading state from the
-- table it fires on), its runs in workflow_ext.runs keyed by (log, run_id),
-- and the creation index named workflow_events_entity_creation_unique.

-- The extension's creation index on `log`: one run_created per run
-- (NULLS NOT DISTINCT), one step/wait/hook creation and one keyed attr_set
-- per run and correlation id. The name is the one the DevKit's world-postgres
-- maps to EntityConflictError. Internal (not executable by PUBLIC).
CREATE FUNCTION workflow_ext.create_creation_index(log regclass) RETURNS text
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    idx regclass;
BEGIN
    EXECUTE format(
        'CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON %s (run_id, correlation_id, type) '
        'NULLS NOT DISTINCT WHERE type IN (''run_created'', ''step_created'', ''wait_created'', ''hook_created'') '
        'OR (type = ''attr_set'' AND correlation_id IS NOT NULL)', log);
    SELECT i.indexrelid INTO idx
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = 'workflow_events_entity_creation_unique';
    RETURN pg_get_indexdef(idx);
END
$$;

-- Puts the extension's guarantees on an existing event table (the DevKit's
-- workflow.workflow_events, or any table with id, run_id, type and
-- correlation_id columns): audits the rows already there, numbers them in
-- replay order into a seq column, replaces the table's own creation index
-- by the extension's, and installs the validating and append-only triggers.
-- Returns the number of existing rows numbered (0 when already attached:
-- attaching again only restores a creation index a migration replaced).
--
-- SECURITY INVOKER: the DDL runs with the caller's rights (the caller must
-- own the table), and the registration writes workflow_ext.logs and runs,
-- which only their owner may write; so attach needs a superuser (or the
-- extension owner) and is not executable by PUBLIC (finalize.sql).
CREATE FUNCTION workflow_ext.attach(log regclass, accept_existing boolean DEFAULT false)
RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    rel_name name;
    rel_schema name;
    seq_type regtype;
    bad_runs bigint;
    worst text;
    numbered bigint := 0;
    own_index record;
    replaced text;
    added text[] := '{}';
    seq_added boolean := false;
    def text;
BEGIN
    IF log IS NULL OR accept_existing IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN log IS NULL THEN 'log' ELSE 'accept_existing' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind, c.relname, n.nspname INTO kind, rel_name, rel_schema
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = log;
    IF kind IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', log::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF kind <> 'r' THEN
        RAISE EXCEPTION '"%" is not a table', log
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Only a plain table can be attached: its rows are checked by a row trigger.';
    END IF;
    -- Nothing is written between the audit and the trigger.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);

    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        PERFORM workflow_ext.keep_creation_index_of(log);
        RETURN 0;
    END IF;
    SELECT a.atttypid::regtype INTO seq_type
      FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'seq' AND a.attnum > 0 AND NOT a.attisdropped;
    IF seq_type IS NOT NULL AND seq_type <> 'bigint'::regtype THEN
        RAISE EXCEPTION 'column "seq" of "%" is %, not bigint', log, seq_type
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Rename the column; attach adds a bigint seq of its own.';
    END IF;

    -- The audit: scan() checks the shape (42703 for a missing column) and
    -- replays every run with the writer's rules.
    SELECT count(*), string_agg(format('run "%s" (%s anomalies, first: %s at %s)',
                                       s.run_id, s.anomalies, s.first_anomaly, s.first_seq), ', ')
                     FILTER (WHERE s.rank <= 5)
      INTO bad_runs, worst
      FROM (SELECT sc.*, row_number() OVER (ORDER BY sc.anomalies DESC, sc.run_id) AS rank
              FROM workflow_ext.scan(log) sc) s;
    IF bad_runs > 0 AND NOT accept_existing THEN
        RAISE EXCEPTION '"%" has anomalies', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('%s run(s) with anomalies; the worst: %s.', bad_runs, worst),
                  HINT = format('Inspect them with workflow_ext.replay(run_id, %L), or pass accept_existing => true '
                                'to protect only new rows.', log::text);
    END IF;

    -- An accepted past may hold what the creation index cannot: say which.
    EXECUTE format(
        'SELECT count(*), string_agg(format(''%%s of run "%%s"%%s (%%s rows)'', k.type, k.run_id, '
        '       coalesce('' for "'' || k.correlation_id || ''"'', ''''), k.n), '', '') FILTER (WHERE k.rank <= 5) '
        '  FROM (SELECT run_id::text, correlation_id::text, type::text, count(*) AS n, '
        '               row_number() OVER (ORDER BY run_id::text, correlation_id::text, type::text) AS rank '
        '          FROM %s WHERE type::text IN (''run_created'', ''step_created'', ''wait_created'', ''hook_created'') '
        '             OR (type::text = ''attr_set'' AND correlation_id IS NOT NULL) '
        '         GROUP BY 1, 2, 3 HAVING count(*) > 1) k', log)
        INTO bad_runs, worst;
    IF bad_runs > 0 THEN
        RAISE EXCEPTION 'cannot attach "%": it holds duplicate creations', log
            USING ERRCODE = 'unique_violation',
                  DETAIL = format('%s creation(s) stored more than once: %s.', bad_runs, worst),
                  HINT = 'The creation index allows one of each. Delete the later copies (as world-postgres''s '
                         'migration 0010 does: it keeps the first), then attach again.';
    END IF;

    -- A dense seq per run, in replay order (the DevKit's: by id, ULIDs sort
    -- by bytes); kept in a seq column the table may already have.
    IF seq_type IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN seq bigint', log);
        EXECUTE format(
            'UPDATE %1$s t SET seq = o.n FROM (SELECT ctid AS row_id, row_number() OVER '
            '(PARTITION BY run_id ORDER BY id::text COLLATE "C") AS n FROM %1$s) o WHERE t.ctid = o.row_id', log);
        GET DIAGNOSTICS numbered = ROW_COUNT;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN seq SET NOT NULL', log);
        seq_added := true;
    END IF;
    EXECUTE format('CREATE UNIQUE INDEX %I ON %s (run_id, seq)', left(rel_name, 50) || '_wfx_run_seq', log);
    added := added || format('%I.%I', rel_schema, left(rel_name, 50) || '_wfx_run_seq');
    -- An entity's last event in one backward index step (the trigger's read).
    EXECUTE format('CREATE INDEX %I ON %s (run_id, correlation_id, seq) WHERE correlation_id IS NOT NULL',
                   left(rel_name, 50) || '_wfx_entity_seq', log);
    added := added || format('%I.%I', rel_schema, left(rel_name, 50) || '_wfx_entity_seq');

    -- The table's own creation index of that name (the DevKit's, without
    -- run_created) gives way to the extension's, a superset; detach puts it
    -- back.
    SELECT i.indexrelid::regclass AS idx, i.indrelid INTO own_index
      FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
     WHERE c.relname = 'workflow_events_entity_creation_unique' AND c.relnamespace = rel_schema::regnamespace;
    IF own_index.idx IS NOT NULL AND own_index.indrelid <> log THEN
        RAISE EXCEPTION 'index "workflow_events_entity_creation_unique" of schema "%" belongs to another table', rel_schema
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Attach tables of one schema one at a time: the index name is per schema.';
    END IF;
    IF own_index.idx IS NOT NULL THEN
        replaced := pg_get_indexdef(own_index.idx);
        EXECUTE format('DROP INDEX %s', own_index.idx);
    END IF;
    def := workflow_ext.create_creation_index(log);

    -- The run rows: state as the writer's rules leave it, next seq, the
    -- time of the last event (created_at, if the table has one).
    EXECUTE format(
        'INSERT INTO workflow_ext.runs (log, run_id, state, last_seq, finished_at, last_event_at) '
        'SELECT $1, r.run_id, r.state, r.last_seq, CASE WHEN r.state IN (''completed'', ''failed'', ''cancelled'') THEN now() END, '
        '       coalesce(r.last_at, now()) '
        '  FROM (SELECT run_id::text AS run_id, workflow_ext.run_state(array_agg(type::text ORDER BY seq)) AS state, '
        '               max(seq) AS last_seq, %s AS last_at FROM %s WHERE run_id IS NOT NULL GROUP BY run_id) r '
        ' WHERE r.state IS NOT NULL',
        CASE WHEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'created_at'
                                                      AND a.attnum > 0 AND NOT a.attisdropped)
             THEN 'max(created_at)::timestamptz' ELSE 'NULL::timestamptz' END, log)
        USING log;

    EXECUTE format('CREATE TRIGGER workflow_ext_validate_insert BEFORE INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_before_insert()', log);
    -- Row-level, so a package migration's clean-up DELETE that finds no
    -- duplicate (the log has none now) still runs.
    EXECUTE format('CREATE TRIGGER workflow_ext_append_only BEFORE UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_refuse_change()', log);
    EXECUTE format('CREATE TRIGGER workflow_ext_no_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change()', log);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER workflow_ext_validate_insert, '
                   'ENABLE ALWAYS TRIGGER workflow_ext_append_only, ENABLE ALWAYS TRIGGER workflow_ext_no_truncate', log);

    INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, replaced_index,
                                   creation_index, added_indexes)
    VALUES (log, accept_existing, seq_added, numbered, replaced, def, added);
    RETURN numbered;
END
$$;

-- Removes what attach added, except the rows: the triggers, the indexes,
-- the seq column it added, the run rows; the table's own creation index is
-- put back as it was (or none, if it had none). SECURITY INVOKER and not
-- executable by PUBLIC, like attach.
CREATE FUNCTION workflow_ext.detach(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a workflow_ext.logs;
    idx text;
BEGIN
    IF log IS NULL THEN
        RAISE EXCEPTION 'log must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF log = 'workflow_ext.events'::regclass THEN
        RAISE EXCEPTION 'cannot detach workflow_ext.events'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'The extension''s own log is always protected.';
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);
    -- First, so the index watcher no longer guards the table.
    DELETE FROM workflow_ext.logs l WHERE l.relation = log RETURNING * INTO a;
    IF a.relation IS NULL THEN
        RAISE EXCEPTION '"%" is not attached', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'workflow_ext.attached_logs lists the attached tables.';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS workflow_ext_validate_insert ON %1$s; '
                   'DROP TRIGGER IF EXISTS workflow_ext_append_only ON %1$s; '
                   'DROP TRIGGER IF EXISTS workflow_ext_no_truncate ON %1$s', log);
    EXECUTE format('DROP INDEX IF EXISTS %I.workflow_events_entity_creation_unique',
                   (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = log));
    IF a.replaced_index IS NOT NULL THEN
        EXECUTE a.replaced_index;
    END IF;
    FOREACH idx IN ARRAY a.added_indexes LOOP
        EXECUTE format('DROP INDEX IF EXISTS %s', idx);
    END LOOP;
    IF a.seq_added THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN seq', log);
    END IF;
    DELETE FROM workflow_ext.runs r WHERE r.log = detach.log;
END
$$;

-- If `log`'s creation index is no longer the extension's (a package
-- migration dropped and recreated it, as world-postgres 5.0's 0014 does),
-- puts the extension's back. Its own CREATE INDEX fires the index watcher
-- again: a transaction-local flag stops that recursion. workflow_ext.events
-- is left alone (its index is the extension's own, from schema.sql).
-- Internal.
CREATE FUNCTION workflow_ext.keep_creation_index_of(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    idx regclass;
    want text;
BEGIN
    IF log = 'workflow_ext.events'::regclass
       OR current_setting('workflow_ext.restoring_creation_index', true) = 'on' THEN
        RETURN;
    END IF;
    SELECT l.creation_index INTO want FROM workflow_ext.logs l WHERE l.relation = log;
    SELECT i.indexrelid INTO idx
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = 'workflow_events_entity_creation_unique';
    IF want IS NULL OR (idx IS NOT NULL AND pg_get_indexdef(idx) = want) THEN
        RETURN;
    END IF;
    PERFORM set_config('workflow_ext.restoring_creation_index', 'on', true);
    IF idx IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', idx);
    END IF;
    UPDATE workflow_ext.logs l SET creation_index = workflow_ext.create_creation_index(log)
     WHERE l.relation = log;
    PERFORM set_config('workflow_ext.restoring_creation_index', 'off', true);
END
$$;

-- Event trigger (ddl_command_end, CREATE INDEX): a migration that recreates
-- an attached table's creation index gets the extension's back at the end of
-- that statement, in its own transaction. SECURITY DEFINER: the migration's
-- role may not read workflow_ext.logs; it only ever drops and recreates the
-- index of a table attach registered, with fixed statements.
CREATE FUNCTION workflow_ext.on_create_index() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT DISTINCT i.indrelid::regclass
               FROM pg_event_trigger_ddl_commands() d
               JOIN pg_index i ON i.indexrelid = d.objid
               JOIN pg_class c ON c.oid = d.objid
               JOIN workflow_ext.logs l ON l.relation = i.indrelid
              WHERE d.classid = 'pg_class'::regclass AND c.relname = 'workflow_events_entity_creation_unique'
    LOOP
        PERFORM workflow_ext.keep_creation_index_of(t);
    END LOOP;
END
$$;

-- Event trigger (sql_drop): a dropped attached table leaves no registration
-- or run rows behind. SECURITY DEFINER for the internal tables.
CREATE FUNCTION workflow_ext.on_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM workflow_ext.runs r
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.log::oid = d.objid;
    DELETE FROM workflow_ext.logs l
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND l.relation::oid = d.objid;
END
$$;

CREATE EVENT TRIGGER workflow_ext_keep_creation_index ON ddl_command_end
    WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION workflow_ext.on_create_index();
CREATE EVENT TRIGGER workflow_ext_forget_dropped ON sql_drop
    EXECUTE FUNCTION workflow_ext.on_drop();

-- What is protected, with the options attach was given.
CREATE VIEW workflow_ext.attached_logs AS
SELECT relation AS log, accept_existing, seq_added, numbered AS rows_numbered,
       replaced_index AS replaced_index_definition, attached_at, attached_by
  FROM workflow_ext.logs;

-- sql/monitoring.sql as released in 0.3.0 ---------------------------------------
-- Monitoring: what an operator scrapes (metrics) and drills into
-- (stuck_runs). Both read the active runs through runs_active, so their
-- cost follows the runs not finished yet, not the size of the log; readable
-- by pg_monitor (finalize.sql). SECURITY DEFINER: they read the internal
-- runs table and the logs, which a monitoring role may not; they return
-- counts and the ids of stuck runs, never payloads.

-- The write path's counters since the server started (src/metrics.rs):
-- `appended` (events the validator admitted, also in transactions that rolled
-- back later), one row per anomaly code refused, and runs_completed /
-- runs_failed / runs_cancelled (runs that reached that state). No rows unless
-- workflow_ext is in shared_preload_libraries.
CREATE FUNCTION workflow_ext.counters_since_start() RETURNS TABLE (counter text, value bigint)
    LANGUAGE c VOLATILE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'counters_since_start_wrapper';

-- The active entities a run's events (in log order) leave, by the writer's
-- rules (src/metrics.rs): "<kind> <correlation id> (<state>)". Pure.
CREATE FUNCTION workflow_ext.active_entities_of(types text[], correlation_ids text[]) RETURNS text[]
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'active_entities_of_wrapper';

-- One row per protected log: its runs not finished yet by state, how many of
-- them had no append for longer than `idle`, the age of the oldest, and the
-- rows inserted into the log since the statistics were last reset.
CREATE FUNCTION workflow_ext.metrics(idle interval DEFAULT '1 hour')
RETURNS TABLE (log text, runs_pending bigint, runs_running bigint, runs_idle bigint,
               oldest_active_run_seconds double precision, events_inserted bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.relation::text,
           count(r.run_id) FILTER (WHERE r.state = 'pending'),
           count(r.run_id) FILTER (WHERE r.state = 'running'),
           count(r.run_id) FILTER (WHERE r.last_event_at < now() - idle),
           coalesce(extract(epoch FROM now() - min(r.created_at))::double precision, 0),
           coalesce((SELECT s.n_tup_ins FROM pg_stat_all_tables s WHERE s.relid = l.relation), 0)
      FROM workflow_ext.logs l
      LEFT JOIN workflow_ext.runs r ON r.log = l.relation AND r.finished_at IS NULL
     GROUP BY l.relation
$$;

-- The runs not finished and without an append for longer than `idle`, oldest
-- append first: where they stand, their last event, and their active
-- entities (the steps still running, waits still waiting, hooks active).
CREATE FUNCTION workflow_ext.stuck_runs(idle interval DEFAULT '1 hour')
RETURNS TABLE (log text, run_id text, state text, idle_for interval, last_event_type text,
               last_event_at timestamptz, events bigint, active_entities text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF idle IS NULL THEN
        RAISE EXCEPTION 'idle must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR r IN SELECT x.log, x.run_id, x.state, x.last_event_at, x.last_seq
               FROM workflow_ext.runs x
              WHERE x.finished_at IS NULL AND x.last_event_at < now() - idle
              ORDER BY x.last_event_at, x.log, x.run_id
    LOOP
        log := r.log::text;
        run_id := r.run_id;
        state := r.state;
        idle_for := now() - r.last_event_at;
        last_event_at := r.last_event_at;
        events := r.last_seq;
        EXECUTE format(
            'SELECT (array_agg(type::text ORDER BY seq DESC))[1], '
            '       workflow_ext.active_entities_of(array_agg(type::text ORDER BY seq), '
            '                                      array_agg(correlation_id::text ORDER BY seq)) '
            '  FROM %s WHERE run_id = $1', r.log)
            INTO last_event_type, active_entities USING r.run_id;
        RETURN NEXT;
    END LOOP;
END
$$;

-- sql/access.sql as released in 0.3.0 ------------------------------------------
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

-- Privileges (as in finalize.sql). Updating from 0.2.0 REVOKES what PUBLIC had
-- (SELECT and INSERT on events, USAGE on the schema, EXECUTE on the append,
-- join, bootstrap and audit functions): grant your roles the README's recipe
-- before or right after the update.
REVOKE ALL ON FUNCTION workflow_ext.attach(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.detach(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.create_creation_index(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.keep_creation_index_of(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.grant_access(regrole, text, boolean) FROM PUBLIC;
-- Secure by default: PUBLIC gets nothing of the schema. Payloads are often
-- personal data, and an append is an action on someone's run: the owner
-- grants a writer, a reader and a migrator role what they need (the README's
-- recipe, tested in tests/pg_regress/sql/privileges.sql). Functions are
-- executable by PUBLIC unless revoked, so the ones that read or write the
-- log, join, bootstrap or audit are revoked; the pure helpers (new_event_id,
-- checked_event_type, run_state, active_entities_of) stay executable, and
-- are only reachable with USAGE on the schema. UPDATE/DELETE/TRUNCATE of a
-- log are refused by the triggers whatever the grants. runs, logs, joins,
-- join_members and hook_tokens are internal: no rights for anyone but the
-- owner.
REVOKE ALL ON SCHEMA workflow_ext FROM PUBLIC;
REVOKE ALL ON workflow_ext.events, workflow_ext.bootstraps, workflow_ext.attached_logs FROM PUBLIC;
REVOKE ALL ON workflow_ext.runs, workflow_ext.logs, workflow_ext.joins, workflow_ext.join_members,
              workflow_ext.hook_tokens FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.append_event(text, text, text, jsonb),
                       workflow_ext.append_suspension_event(text, text, text, jsonb),
                       workflow_ext.append_suspension_events(text, text[], text[], jsonb[]),
                       workflow_ext.join_arrive(text, text, text, integer),
                       workflow_ext.bootstrap(text, text),
                       workflow_ext.bootstrap_begin(text, interval, text),
                       workflow_ext.bootstrap_end(text),
                       workflow_ext.replay(text, regclass),
                       workflow_ext.scan(regclass, timestamptz),
                       workflow_ext.metrics(interval),
                       workflow_ext.stuck_runs(interval),
                       workflow_ext.counters_since_start() FROM PUBLIC;
-- Monitoring: pg_monitor (PostgreSQL's predefined role for monitoring
-- agents, e.g. prometheus-postgres-exporter) may call the monitoring
-- functions and list the protected logs; nothing else.
GRANT USAGE ON SCHEMA workflow_ext TO pg_monitor;
GRANT EXECUTE ON FUNCTION workflow_ext.metrics(interval), workflow_ext.stuck_runs(interval),
                          workflow_ext.counters_since_start() TO pg_monitor;
GRANT SELECT ON workflow_ext.attached_logs TO pg_monitor;
