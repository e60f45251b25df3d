-- workflow_ext 0.5.0 -> 0.5.1 (ALTER EXTENSION workflow_ext UPDATE).
--
-- attach numbers a table's existing rows by a table rewrite (ALTER TABLE
-- ... ALTER COLUMN seq TYPE bigint USING workflow_ext.seq_in_run(...)),
-- which writes every row once and rebuilds the indexes in bulk, where it
-- used an UPDATE (a second version of every row and an entry in every
-- index). Same seqs; the UPDATE remains for a table without an index on
-- run_id or outside READ COMMITTED.

-- The seq attach gives an existing row of `log`: its position among its
-- run's rows by id (src/features/attach.rs). Called by attach's table
-- rewrite only; `numbering` tells one attach from the next. Internal.
CREATE FUNCTION workflow_ext.seq_in_run(log oid, run_index oid, numbering bigint, run_id text, id text)
RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'seq_in_run_wrapper';

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
-- extension owner) and is not executable by PUBLIC (finalize.sql). Nothing
-- the table's owner chose runs with those rights: check_log refuses what
-- would (other triggers, rules, inheritance, column types), and the
-- statements that write the table run as its owner.
CREATE OR REPLACE FUNCTION workflow_ext.attach(log regclass, accept_existing boolean DEFAULT false)
RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel_name name;
    rel_schema oid;
    index_base text;
    seq_type regtype;
    bad_runs bigint;
    worst text;
    numbered bigint := 0;
    own_index record;
    replaced text;
    added text[] := '{}';
    seq_added boolean := false;
    def text;
    clock text;
    owner_role oid;
    run_index oid;
    grant_usage boolean;
    grant_execute boolean;
BEGIN
    IF log IS NULL OR accept_existing IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN log IS NULL THEN 'log' ELSE 'accept_existing' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Names by OID, never parsed again: any legal identifier works.
    SELECT c.relname, c.relnamespace INTO rel_name, rel_schema FROM pg_class c WHERE c.oid = log;
    IF rel_name IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', log::oid USING ERRCODE = 'undefined_table';
    END IF;
    -- Nothing is written between the audit and the trigger.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);

    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        PERFORM workflow_ext.keep_creation_index_of(log);
        RETURN 0;
    END IF;
    -- Before anything reads the table: what may be attached, and the
    -- column types (no cast, operator or trigger of the owner's runs here).
    PERFORM workflow_ext.check_log(log, attaching => true);
    SELECT a.atttypid::regtype INTO seq_type
      FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'seq' AND a.attnum > 0 AND NOT a.attisdropped;

    -- The audit: scan() replays every run with the writer's rules.
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
    SELECT d.creations, d.first INTO bad_runs, worst FROM workflow_ext.duplicate_creations(log) d;
    IF bad_runs > 0 THEN
        RAISE EXCEPTION 'cannot attach "%": it holds duplicate creations', log
            USING ERRCODE = 'unique_violation',
                  DETAIL = format('%s creation(s) stored more than once: %s.', bad_runs, worst),
                  HINT = 'The creation index allows one of each. Delete the later copies (as world-postgres''s '
                         'migration 0010 does: it keeps the first), then attach again.';
    END IF;

    -- A dense seq per run, in replay order (the DevKit's: by id, ULIDs sort
    -- by bytes); kept in a seq column the table may already have. The
    -- statements that write the table run as its owner (execute_as_owner):
    -- its constraints, index expressions and generated columns are code the
    -- owner chose.
    IF seq_type IS NULL THEN
        PERFORM workflow_ext.execute_as_owner(log, format('ALTER TABLE %s ADD COLUMN seq bigint', log));
        -- Numbered by a table rewrite that computes each row's seq
        -- (seq_in_run, src/features/attach.rs): every row written once and
        -- the indexes rebuilt in bulk. It reads each run's ids from an
        -- index on run_id, and in READ COMMITTED sees what the rewrite sees;
        -- without those, an UPDATE numbers the rows (a second version of
        -- each row and an entry in every index: several times slower).
        SELECT i.indexrelid INTO run_index
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
               JOIN pg_attribute a ON a.attrelid = log AND a.attnum = i.indkey[0]
         WHERE i.indrelid = log AND a.attname = 'run_id' AND am.amname = 'btree'
           AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid AND i.indisready
         ORDER BY i.indnatts, i.indexrelid LIMIT 1;
        IF current_setting('transaction_isolation') = 'read committed' AND run_index IS NOT NULL THEN
            -- The rewrite runs as the table's owner, who may lack the
            -- schema and the function: granted for this statement only
            -- (and rolled back with it on any error).
            SELECT c.relowner INTO owner_role FROM pg_class c WHERE c.oid = log;
            grant_usage := NOT has_schema_privilege(owner_role, 'workflow_ext', 'USAGE');
            grant_execute := NOT has_function_privilege(owner_role,
                'workflow_ext.seq_in_run(oid, oid, bigint, text, text)', 'EXECUTE');
            IF grant_usage THEN
                EXECUTE format('GRANT USAGE ON SCHEMA workflow_ext TO %s', owner_role::regrole);
            END IF;
            IF grant_execute THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION workflow_ext.seq_in_run(oid, oid, bigint, text, text) TO %s',
                               owner_role::regrole);
            END IF;
            PERFORM workflow_ext.execute_as_owner(log, format(
                'ALTER TABLE %s ALTER COLUMN seq TYPE bigint USING workflow_ext.seq_in_run(%s, %s, %s, '
                'run_id::pg_catalog.text, id::pg_catalog.text)',
                log, log::oid, run_index, (random() * 9e18)::bigint));
            IF grant_usage THEN
                EXECUTE format('REVOKE USAGE ON SCHEMA workflow_ext FROM %s', owner_role::regrole);
            END IF;
            IF grant_execute THEN
                EXECUTE format('REVOKE EXECUTE ON FUNCTION workflow_ext.seq_in_run(oid, oid, bigint, text, text) FROM %s',
                               owner_role::regrole);
            END IF;
            EXECUTE format('SELECT count(*) FROM %s', log) INTO numbered;
        ELSE
            numbered := workflow_ext.execute_as_owner(log, format(
                'UPDATE %1$s t SET seq = o.n FROM (SELECT ctid AS row_id, row_number() OVER '
                '(PARTITION BY run_id ORDER BY id::text COLLATE "C") AS n FROM %1$s) o WHERE t.ctid = o.row_id', log));
        END IF;
        -- Not NOT NULL: the trigger stamps every row, and a table left
        -- without it (DROP EXTENSION … CASCADE drops the trigger) must stay
        -- writable by a package that does not know seq.
        seq_added := true;
    END IF;
    -- Index names from the table's, cut to whole characters so that both
    -- suffixes fit in 63 bytes.
    index_base := rel_name;
    WHILE octet_length(index_base) > 40 LOOP
        index_base := left(index_base, -1);
    END LOOP;
    EXECUTE format('CREATE UNIQUE INDEX %I ON %s (run_id, seq)', index_base || '_wfx_run_seq', log);
    added := added || format('%I.%I', (SELECT nspname FROM pg_namespace WHERE oid = rel_schema),
                             index_base || '_wfx_run_seq');
    -- An entity's last event in one backward index step (the trigger's read).
    EXECUTE format('CREATE INDEX %I ON %s (run_id, correlation_id, seq) WHERE correlation_id IS NOT NULL',
                   index_base || '_wfx_entity_seq', log);
    added := added || format('%I.%I', (SELECT nspname FROM pg_namespace WHERE oid = rel_schema),
                             index_base || '_wfx_entity_seq');

    -- The table's own creation index of that name (the DevKit's, without
    -- run_created) gives way to the extension's, a superset; detach puts it
    -- back.
    SELECT i.indexrelid::regclass AS idx, i.indrelid INTO own_index
      FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
     WHERE c.relname = 'workflow_events_entity_creation_unique' AND c.relnamespace = rel_schema;
    IF own_index.idx IS NOT NULL AND own_index.indrelid <> log THEN
        RAISE EXCEPTION 'index "workflow_events_entity_creation_unique" of schema "%" belongs to another table',
                        (SELECT nspname FROM pg_namespace WHERE oid = rel_schema)
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Attach tables of one schema one at a time: the index name is per schema.';
    END IF;
    IF own_index.idx IS NOT NULL THEN
        replaced := pg_get_indexdef(own_index.idx);
        EXECUTE format('DROP INDEX %s', own_index.idx);
    END IF;
    def := workflow_ext.create_creation_index(log);

    -- The run rows: state as the writer's rules leave it, next seq, and
    -- the run's clocks from its events (created_at, if the table has one),
    -- so that monitoring tells the age and idle time of runs older than
    -- the attach: the first event's time, the last one's, and for a
    -- finished run the last one's as its end. A timestamp without time
    -- zone (the DevKit's, written by now() in UTC sessions) is read as
    -- UTC, never in this session's TimeZone.
    SELECT CASE a.atttypid WHEN 'timestamp'::regtype THEN '(%s(created_at) AT TIME ZONE ''UTC'')'
                           ELSE '%s(created_at)' END
      INTO clock
      FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'created_at' AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format(
        'INSERT INTO workflow_ext.runs (log, run_id, state, last_seq, created_at, finished_at, last_event_at) '
        'SELECT $1, r.run_id, r.state, r.last_seq, coalesce(r.first_at, now()), '
        '       CASE WHEN r.state IN (''completed'', ''failed'', ''cancelled'') THEN coalesce(r.last_at, now()) END, '
        '       coalesce(r.last_at, now()) '
        '  FROM (SELECT run_id::text AS run_id, workflow_ext.run_state(array_agg(type::text ORDER BY seq)) AS state, '
        '               max(seq) AS last_seq, %s AS first_at, %s AS last_at FROM %s WHERE run_id IS NOT NULL GROUP BY run_id) r '
        ' WHERE r.state IS NOT NULL',
        coalesce(format(clock, 'min'), 'NULL::timestamptz'), coalesce(format(clock, 'max'), 'NULL::timestamptz'), log)
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

    -- Registered last: from here on the DDL watcher guards the table.
    INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, replaced_index,
                                   creation_index, added_indexes)
    VALUES (log, accept_existing, seq_added, numbered, replaced, def, added);
    RETURN numbered;
END
$$;

REVOKE ALL ON FUNCTION workflow_ext.seq_in_run(oid, oid, bigint, text, text) FROM PUBLIC;
