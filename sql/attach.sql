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
