-- workflow_ext 0.5.1 -> 0.6.0 (ALTER EXTENSION workflow_ext UPDATE).
--
-- attach_concurrently: attach a table without stopping its writers (the
-- steps are in sql/attach.sql). attach builds its indexes from the one
-- source attach_concurrently also uses (attach_statement), seeds its run
-- rows with seed_runs, and detach gives a creation index an undone
-- concurrent attach rebuilt its name back.

-- The base of the names of the indexes attach adds to `log`: the table's
-- name, cut to whole characters so that every suffix fits in 63 bytes.
-- Internal.
CREATE FUNCTION workflow_ext.index_base(log regclass) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text;
BEGIN
    SELECT c.relname INTO base FROM pg_class c WHERE c.oid = log;
    WHILE octet_length(base) > 40 LOOP
        base := left(base, -1);
    END LOOP;
    RETURN base;
END
$$;

-- The DDL attach runs on `log`, one step at a time, plain or CONCURRENTLY
-- (attach_concurrently has a background worker run those at the top level:
-- src/pg/background.rs): the one source of the extension's indexes on an
-- attached table.
--   creation    the creation index: one run_created per run (NULLS NOT
--               DISTINCT), one step/wait/hook creation and one keyed
--               attr_set per run and correlation id, named
--               workflow_events_entity_creation_unique (the name the
--               DevKit's world-postgres maps to EntityConflictError);
--               built concurrently under <base>_wfx_creation, renamed when
--               the triggers go in;
--   run_seq     (run_id, seq), unique: the dense seq;
--   entity_seq  an entity's last event in one backward index step (the
--               trigger's read);
--   restore     the table's own creation index, which a concurrent attach
--               dropped, rebuilt when the attach is undone;
--   drop:<oid>  DROP INDEX CONCURRENTLY of one of those, left invalid by a
--               failed concurrent build.
-- Internal (not executable by PUBLIC).
CREATE FUNCTION workflow_ext.attach_statement(log regclass, step text, online boolean) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := workflow_ext.index_base(log);
    how text := '';
    idx regclass;
    def text;
BEGIN
    IF online THEN
        how := 'CONCURRENTLY ';
    END IF;
    CASE
    WHEN step = 'creation' THEN
        RETURN format('CREATE UNIQUE INDEX %s%I ON %s (run_id, correlation_id, type) NULLS NOT DISTINCT '
                      'WHERE type IN (''run_created'', ''step_created'', ''wait_created'', ''hook_created'') '
                      'OR (type = ''attr_set'' AND correlation_id IS NOT NULL)',
                      how, CASE WHEN online THEN base || '_wfx_creation'
                                ELSE 'workflow_events_entity_creation_unique' END, log);
    WHEN step = 'run_seq' THEN
        RETURN format('CREATE UNIQUE INDEX %s%I ON %s (run_id, seq)', how, base || '_wfx_run_seq', log);
    WHEN step = 'entity_seq' THEN
        RETURN format('CREATE INDEX %s%I ON %s (run_id, correlation_id, seq) WHERE correlation_id IS NOT NULL',
                      how, base || '_wfx_entity_seq', log);
    WHEN step = 'restore' THEN
        -- The table's own creation index an interrupted concurrent attach
        -- dropped, rebuilt from its definition under <base>_wfx_restore
        -- (detach gives it its name back).
        SELECT l.replaced_index INTO def FROM workflow_ext.logs l WHERE l.relation = log;
        IF def IS NULL OR position('CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON ' IN def) <> 1 THEN
            RAISE EXCEPTION 'no creation index of "%" to restore', log USING ERRCODE = 'undefined_object';
        END IF;
        RETURN format('CREATE UNIQUE INDEX %s%I ON ', how, base || '_wfx_restore')
               || substr(def, length('CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON ') + 1);
    WHEN step LIKE 'drop:%' THEN
        -- Only an index of this table with one of the names above.
        SELECT i.indexrelid INTO idx
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indexrelid = substr(step, 6)::oid AND i.indrelid = log
           AND c.relname IN (base || '_wfx_creation', base || '_wfx_run_seq', base || '_wfx_entity_seq',
                             base || '_wfx_restore');
        IF idx IS NULL THEN
            RAISE EXCEPTION 'no index of attach to drop: %', step USING ERRCODE = 'undefined_object';
        END IF;
        RETURN format('DROP INDEX %s%s', how, idx);
    ELSE
        RAISE EXCEPTION 'unknown attach step "%"', step USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$$;

-- Builds the extension's creation index on `log` (attach_statement's
-- `creation`) and returns its definition. Internal.
CREATE OR REPLACE FUNCTION workflow_ext.create_creation_index(log regclass) RETURNS text
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    idx regclass;
BEGIN
    EXECUTE workflow_ext.attach_statement(log, 'creation', false);
    SELECT i.indexrelid INTO idx
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = 'workflow_events_entity_creation_unique';
    RETURN pg_get_indexdef(idx);
END
$$;

-- The run rows of `log`'s runs `run_ids` (NULL: every run), from their
-- numbered events: state as the writer's rules leave it, next seq, and
-- the run's clocks from its events (created_at, if the table has one), so
-- that monitoring tells the age and idle time of runs older than the
-- attach: the first event's time, the last one's, and for a finished run
-- the last one's as its end. A timestamp without time zone (the DevKit's,
-- written by now() in UTC sessions) is read as UTC, never in this
-- session's TimeZone. A run without run_created gets no row (its events
-- are orphans: attach_dry_run). Reads only columns whose types
-- check_log_columns admitted. Internal.
CREATE FUNCTION workflow_ext.seed_runs(log regclass, run_ids text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    clock text;
BEGIN
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
        '               max(seq) AS last_seq, %s AS first_at, %s AS last_at FROM %s '
        '         WHERE %s GROUP BY run_id) r '
        ' WHERE r.state IS NOT NULL',
        coalesce(format(clock, 'min'), 'NULL::timestamptz'), coalesce(format(clock, 'max'), 'NULL::timestamptz'), log,
        CASE WHEN run_ids IS NULL THEN 'run_id IS NOT NULL' ELSE 'run_id::text = ANY ($2)' END)
        USING log, run_ids;
END
$$;

-- Refuses to attach `log` when scan() finds anomalies in its rows, unless
-- `accept_existing`: 55000 naming the worst five runs. attach and
-- attach_concurrently's audit. Internal.
CREATE FUNCTION workflow_ext.refuse_anomalies(log regclass, accept_existing boolean) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad_runs bigint;
    worst text;
BEGIN
    IF accept_existing THEN
        RETURN;
    END IF;
    SELECT count(*), string_agg(format('run "%s" (%s anomalies, first: %s at %s)',
                                       s.run_id, s.anomalies, s.first_anomaly, s.first_seq), ', ')
                     FILTER (WHERE s.rank <= 5)
      INTO bad_runs, worst
      FROM (SELECT sc.*, row_number() OVER (ORDER BY sc.anomalies DESC, sc.run_id) AS rank
              FROM workflow_ext.scan(log) sc) s;
    IF bad_runs > 0 THEN
        RAISE EXCEPTION '"%" has anomalies', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('%s run(s) with anomalies; the worst: %s.', bad_runs, worst),
                  HINT = format('Inspect them with workflow_ext.replay(run_id, %L), or pass accept_existing => true '
                                'to protect only new rows.', log::text);
    END IF;
END
$$;

-- Refuses to attach `log` when it holds creations the creation index
-- cannot hold (duplicate_creations): 23505 naming the first five. attach
-- and attach_concurrently. Internal.
CREATE FUNCTION workflow_ext.refuse_duplicate_creations(log regclass) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    creations bigint;
    first text;
BEGIN
    SELECT d.creations, d.first INTO creations, first FROM workflow_ext.duplicate_creations(log) d;
    IF creations > 0 THEN
        RAISE EXCEPTION 'cannot attach "%": it holds duplicate creations', log
            USING ERRCODE = 'unique_violation',
                  DETAIL = format('%s creation(s) stored more than once: %s.', creations, first),
                  HINT = 'The creation index allows one of each. Delete the later copies (as world-postgres''s '
                         'migration 0010 does: it keeps the first), then attach again.';
    END IF;
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
    numbered bigint := 0;
    own_index record;
    replaced text;
    added text[] := '{}';
    seq_added boolean := false;
    def text;
    owner_role oid;
    run_index oid;
    grant_usage boolean;
    grant_execute boolean;
    redistribute boolean := false;
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
    -- A table Citus distributes already: its rows come back to the
    -- coordinator for the attach, and go out again at its end
    -- (undistribute_to_attach, sql/citus.sql).
    IF workflow_ext.distributed_by_citus(log) THEN
        log := workflow_ext.undistribute_to_attach(log);
        redistribute := true;
        PERFORM workflow_ext.check_log(log, attaching => true);
    END IF;
    SELECT a.atttypid::regtype INTO seq_type
      FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'seq' AND a.attnum > 0 AND NOT a.attisdropped;

    -- The audit: scan() replays every run with the writer's rules.
    PERFORM workflow_ext.refuse_anomalies(log, accept_existing);

    -- An accepted past may hold what the creation index cannot: say which.
    PERFORM workflow_ext.refuse_duplicate_creations(log);

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
    index_base := workflow_ext.index_base(log);
    EXECUTE workflow_ext.attach_statement(log, 'run_seq', false);
    added := added || format('%I.%I', (SELECT nspname FROM pg_namespace WHERE oid = rel_schema),
                             index_base || '_wfx_run_seq');
    EXECUTE workflow_ext.attach_statement(log, 'entity_seq', false);
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

    PERFORM workflow_ext.seed_runs(log, NULL);

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
    IF redistribute THEN
        PERFORM workflow_ext.distribute(log);
    END IF;
    RETURN numbered;
END
$$;

-- Takes `log`'s ACCESS EXCLUSIVE lock for one of attach's short steps,
-- waiting at most lock_timeout each time (500 ms when it is 0) and trying
-- up to 20 times: writers queue behind a waiting ACCESS EXCLUSIVE request,
-- so a long wait would stop them. Internal.
CREATE FUNCTION workflow_ext.lock_for_attach(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tries constant integer := 20;
BEGIN
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '500ms', true);
    END IF;
    FOR attempt IN 1..tries LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = tries THEN
                RAISE EXCEPTION 'could not lock "%" for attach', log
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = format('%s attempts each waited lock_timeout (%s) behind other transactions.',
                                          tries, current_setting('lock_timeout')),
                          HINT = 'Long transactions on the table hold it; try again when they have ended.';
            END IF;
            RAISE NOTICE 'attach of %: waiting for the table lock (attempt % of %)', log, attempt, tries;
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
END
$$;

-- Numbers the existing rows (seq NULL) of `log`'s runs `run_ids` (NULL:
-- the rows without a run id) in replay order, as the table's owner
-- (src/features/attach.rs). Internal.
CREATE FUNCTION workflow_ext.number_runs(log regclass, run_ids text[]) RETURNS bigint
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'number_runs_wrapper';

-- Adopts `log`'s runs `run_ids` during a concurrent attach: takes each
-- run's lock by inserting its run row (as the write path does for a new
-- run; a run that has a row already was adopted, or created since, and is
-- left alone), numbers its existing rows and seeds its run row from them.
-- Called by attach_concurrently for every run and by the trigger for a
-- run its writer reaches first. Returns the rows numbered. Internal.
CREATE FUNCTION workflow_ext.adopt_runs(log regclass, run_ids text[]) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    adopted text[];
    numbered bigint;
BEGIN
    WITH placed AS (
        INSERT INTO workflow_ext.runs (log, run_id, state, last_seq)
        SELECT adopt_runs.log, r, 'pending', 0 FROM unnest(run_ids) r WHERE r IS NOT NULL
            ON CONFLICT ON CONSTRAINT runs_pkey DO NOTHING RETURNING runs.run_id)
    SELECT array_agg(p.run_id) INTO adopted FROM placed p;
    IF adopted IS NULL THEN
        RETURN 0;
    END IF;
    numbered := workflow_ext.number_runs(log, adopted);
    -- The placeholder rows give way to the seeded ones (same transaction:
    -- the lock stays).
    DELETE FROM workflow_ext.runs r WHERE r.log = adopt_runs.log AND r.run_id = ANY (adopted);
    PERFORM workflow_ext.seed_runs(log, adopted);
    RETURN numbered;
END
$$;

-- Up to `how_many` distinct run ids of `log` after `after` (NULL: from the
-- first), in the order of its index on run_id, one index probe each.
-- Internal.
CREATE FUNCTION workflow_ext.run_ids_after(log regclass, after text, how_many integer) RETURNS text[]
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids text[];
BEGIN
    EXECUTE format(
        'WITH RECURSIVE r(run_id) AS ('
        '    (SELECT run_id FROM %1$s WHERE %2$s ORDER BY run_id LIMIT 1) '
        '  UNION ALL '
        '    SELECT (SELECT t.run_id FROM %1$s t WHERE t.run_id > r.run_id ORDER BY t.run_id LIMIT 1) '
        '      FROM r WHERE r.run_id IS NOT NULL) '
        'SELECT array_agg(x.run_id::text ORDER BY x.run_id) '
        '  FROM (SELECT r.run_id FROM r WHERE r.run_id IS NOT NULL LIMIT $2) x',
        log, CASE WHEN after IS NULL THEN 'run_id IS NOT NULL' ELSE 'run_id > $1' END)
        INTO ids USING after, how_many;
    RETURN ids;
END
$$;

-- Whether `log` has a valid index of attach's `step` (under the name the
-- concurrent build gives it). Internal.
CREATE FUNCTION workflow_ext.attach_index_valid(log regclass, step text) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(bool_or(i.indisvalid AND i.indisready), false)
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = workflow_ext.index_base(log) || '_wfx_' || step
$$;

-- What attach_concurrently checks before it touches anything, under
-- ACCESS SHARE: what attach checks (the audit and the duplicate creations
-- included), and an index on run_id (each run's rows are read through it).
-- Internal.
CREATE FUNCTION workflow_ext.attach_concurrently_check(log regclass, accept_existing boolean) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF log IS NULL OR accept_existing IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN log IS NULL THEN 'log' ELSE 'accept_existing' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF workflow_ext.in_transaction_block() THEN
        RAISE EXCEPTION 'attach_concurrently cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'CALL it on its own: it commits between its steps, as CREATE INDEX CONCURRENTLY does.';
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', log);
    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        RAISE EXCEPTION '"%" is attached already', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A concurrent attach that was interrupted is undone by workflow_ext.detach; then call it again.';
    END IF;
    PERFORM workflow_ext.check_log(log, attaching => true);
    -- Citus keeps a distributed table's rows in its shards, where no
    -- concurrent step reaches them.
    IF workflow_ext.distributed_by_citus(log) THEN
        RAISE EXCEPTION 'cannot attach "%" concurrently: Citus distributes it', log
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'attach_concurrently numbers and checks a table''s rows where they are; Citus keeps them in its shards.',
                  HINT = format('Attach it with workflow_ext.attach(%L): it brings the rows to the coordinator, attaches '
                                'the table and distributes it again, in one transaction, while writers wait.', log::text);
    END IF;
    IF EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'seq' AND a.attnum > 0
                                            AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '"%" has a seq column already', log
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A concurrent attach numbers the rows into a seq column it adds.',
                  HINT = 'Use workflow_ext.attach, which keeps an existing seq column.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
                              JOIN pg_attribute a ON a.attrelid = log AND a.attnum = i.indkey[0]
                    WHERE i.indrelid = log AND a.attname = 'run_id' AND am.amname = 'btree'
                      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid) THEN
        RAISE EXCEPTION '"%" has no index on run_id', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A concurrent attach reads each run''s rows through a btree index whose first column is run_id.',
                  HINT = format('CREATE INDEX CONCURRENTLY ON %s (run_id), then call it again.', log);
    END IF;
    -- Refused before anything changes, as attach refuses (the audit after
    -- the numbering covers the rows written meanwhile).
    PERFORM workflow_ext.refuse_anomalies(log, accept_existing);
    PERFORM workflow_ext.refuse_duplicate_creations(log);
    IF EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = log)
                                        AND c.relname IN (workflow_ext.index_base(log) || '_wfx_creation',
                                                          workflow_ext.index_base(log) || '_wfx_restore')) THEN
        RAISE EXCEPTION 'an interrupted attach of "%" left its indexes behind', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'workflow_ext.detach undoes it; then call attach_concurrently again.';
    END IF;
END
$$;

-- Step 2 (module comment above): under a short ACCESS EXCLUSIVE lock, the
-- seq column, the creation index swapped in, the triggers in their
-- adopting form (their arguments: 'adopting' and this transaction's id, by
-- which a REPEATABLE READ writer tells whether its snapshot saw the rows
-- being adopted), the registration. Internal.
CREATE FUNCTION workflow_ext.attach_concurrently_begin(log regclass, accept_existing boolean) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := workflow_ext.index_base(log);
    schema_name name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = log);
    own_index record;
    replaced text;
BEGIN
    PERFORM workflow_ext.lock_for_attach(log);
    -- Again under the lock: nothing changed since the check.
    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        RAISE EXCEPTION '"%" is attached already', log USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM workflow_ext.check_log(log, attaching => true);
    PERFORM workflow_ext.execute_as_owner(log, format('ALTER TABLE %s ADD COLUMN seq bigint', log));
    SELECT i.indexrelid::regclass AS idx, i.indrelid INTO own_index
      FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
     WHERE c.relname = 'workflow_events_entity_creation_unique'
       AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = log);
    IF own_index.idx IS NOT NULL AND own_index.indrelid <> log THEN
        RAISE EXCEPTION 'index "workflow_events_entity_creation_unique" of schema "%" belongs to another table',
                        schema_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Attach tables of one schema one at a time: the index name is per schema.';
    END IF;
    -- The table's own index goes (its definition kept for detach; an
    -- undo rebuilds it concurrently): a second unique index on the same
    -- keys would answer a duplicate with its own name, which the package
    -- does not map.
    IF own_index.idx IS NOT NULL THEN
        replaced := pg_get_indexdef(own_index.idx);
        EXECUTE format('DROP INDEX %s', own_index.idx);
    END IF;
    EXECUTE format('ALTER INDEX %I.%I RENAME TO workflow_events_entity_creation_unique',
                   schema_name, base || '_wfx_creation');
    EXECUTE format('CREATE TRIGGER workflow_ext_validate_insert BEFORE INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_before_insert(''adopting'', %L)',
                   log, (txid_current() % 4294967296)::text);
    EXECUTE format('CREATE TRIGGER workflow_ext_append_only BEFORE UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_refuse_change()', log);
    EXECUTE format('CREATE TRIGGER workflow_ext_no_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change()', log);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER workflow_ext_validate_insert, '
                   'ENABLE ALWAYS TRIGGER workflow_ext_append_only, ENABLE ALWAYS TRIGGER workflow_ext_no_truncate', log);
    INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, replaced_index,
                                   creation_index, added_indexes)
    VALUES (log, accept_existing, true, 0, replaced,
            pg_get_indexdef(format('%I.workflow_events_entity_creation_unique', schema_name)::regclass),
            ARRAY[format('%I.%I', schema_name, base || '_wfx_run_seq'),
                  format('%I.%I', schema_name, base || '_wfx_entity_seq')]);
END
$$;

-- Step 5: after the audit, under a short ACCESS EXCLUSIVE lock, the
-- validating trigger in its final form (no adopting). Internal.
CREATE FUNCTION workflow_ext.attach_concurrently_finish(log regclass, numbered bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a workflow_ext.logs;
BEGIN
    PERFORM workflow_ext.lock_for_attach(log);
    -- Unregistered for the few statements that swap the trigger (the DDL
    -- watcher refuses dropping it from a registered log).
    DELETE FROM workflow_ext.logs l WHERE l.relation = log RETURNING * INTO a;
    IF a.relation IS NULL THEN
        RAISE EXCEPTION '"%" was detached during its attach', log USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE format('DROP TRIGGER workflow_ext_validate_insert ON %s', log);
    EXECUTE format('CREATE TRIGGER workflow_ext_validate_insert BEFORE INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_before_insert()', log);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER workflow_ext_validate_insert', log);
    a.numbered := numbered;
    INSERT INTO workflow_ext.logs SELECT a.*;
    PERFORM workflow_ext.check_log(log, attaching => false);
END
$$;

-- Undoes an interrupted or failed concurrent attach of `log` (also what
-- detach does for one): under a short ACCESS EXCLUSIVE lock, whatever of
-- it exists goes: triggers, seq column, run rows, registration, the
-- indexes it built (valid or not), and the table's own creation index gets
-- its name back. Internal.
CREATE FUNCTION workflow_ext.attach_concurrently_undo(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := workflow_ext.index_base(log);
    schema_name name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = log);
BEGIN
    PERFORM workflow_ext.lock_for_attach(log);
    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        PERFORM workflow_ext.detach(log);
    END IF;
    EXECUTE format('DROP INDEX IF EXISTS %I.%I', schema_name, base || '_wfx_creation');
END
$$;

-- Whether this call runs inside a transaction block (BEGIN … COMMIT),
-- where a procedure cannot commit. Internal.
CREATE FUNCTION workflow_ext.in_transaction_block() RETURNS boolean
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'in_transaction_block_wrapper';

-- attach_concurrently holds cancels off across each COMMIT and the entry
-- into the next step's exception block (src/pg/transaction.rs). Internal.
CREATE FUNCTION workflow_ext.hold_interrupts() RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'hold_interrupts_wrapper';

CREATE FUNCTION workflow_ext.resume_interrupts() RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'resume_interrupts_wrapper';

-- Background workers that run one of attach_statement's steps at the top
-- level (src/pg/background.rs): start one, poll it, stop it. Internal.
CREATE FUNCTION workflow_ext.start_top_level(log oid, step text) RETURNS integer
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'start_top_level_wrapper';

CREATE FUNCTION workflow_ext.top_level_finished(ticket integer) RETURNS boolean
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'top_level_finished_wrapper';

CREATE FUNCTION workflow_ext.stop_top_level(ticket integer) RETURNS void
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'stop_top_level_wrapper';

-- attach, without stopping the table's writers: the steps of the module
-- comment above, each committed; writers wait only for the two short
-- locked steps (lock_for_attach). Progress is reported in NOTICEs (phase,
-- rows numbered, rows/s). Not in a transaction block. A failure or a
-- cancel undoes everything (attach_concurrently_undo) and raises; if the
-- session dies instead, the table stays protected in its adopting form
-- and workflow_ext.detach undoes it. Like attach, for a superuser or the
-- extension owner (not executable by PUBLIC). Procedures with a SET
-- clause cannot commit, so this one qualifies every name; each step is a
-- function with its own search_path.
CREATE PROCEDURE workflow_ext.attach_concurrently(log regclass, accept_existing boolean DEFAULT false)
    LANGUAGE plpgsql
AS $$
DECLARE
    steps constant text[] := ARRAY['creation', 'begin', 'adopt', 'run_seq', 'entity_seq', 'audit', 'finish'];
    i integer := 1;
    step text;
    in_step boolean := false;
    step_done boolean := false;
    ticket integer;
    began boolean := false;
    attached boolean := false;
    failed boolean := false;
    batch text[];
    after text;
    numbered bigint := 0;
    started timestamptz := pg_catalog.clock_timestamp();
    phase_started timestamptz;
    reported timestamptz := pg_catalog.clock_timestamp();
    err_state text;
    err_message text;
    err_detail text;
    err_hint text;
BEGIN
    PERFORM workflow_ext.attach_concurrently_check(log, accept_existing);
    COMMIT;
    -- One iteration, one transaction: all its work in one block, so that
    -- an error or a cancel anywhere in it is caught (and the attach
    -- undone); only the COMMITs are outside, with interrupts held off.
    LOOP
        BEGIN
            PERFORM workflow_ext.resume_interrupts();
            IF i > pg_catalog.array_length(steps, 1) THEN
                attached := true;
                RAISE NOTICE 'attach of %: attached, % existing rows numbered in % s', log, numbered,
                    pg_catalog.round(extract(epoch FROM pg_catalog.clock_timestamp() - started)::numeric, 3);
            ELSE
                step := steps[i];
                IF NOT in_step THEN
                    in_step := true;
                    phase_started := pg_catalog.clock_timestamp();
                    RAISE NOTICE 'attach of %: %', log, CASE step
                        WHEN 'creation' THEN 'building the creation index concurrently'
                        WHEN 'begin' THEN 'installing the triggers (short lock)'
                        WHEN 'run_seq' THEN 'building the (run_id, seq) index concurrently'
                        WHEN 'entity_seq' THEN 'building the entity index concurrently'
                        WHEN 'adopt' THEN 'numbering the existing rows'
                        WHEN 'audit' THEN 'auditing every run'
                        ELSE 'finishing (short lock)' END;
                    IF step IN ('creation', 'run_seq', 'entity_seq') THEN
                        -- Started now, it waits for this transaction to end.
                        ticket := workflow_ext.start_top_level(log, step);
                    END IF;
                ELSIF step IN ('creation', 'run_seq', 'entity_seq') THEN
                    IF workflow_ext.top_level_finished(ticket) THEN
                        ticket := NULL;
                        IF NOT workflow_ext.attach_index_valid(log, step) THEN
                            RAISE EXCEPTION 'could not build the % index of "%" concurrently', step, log
                                USING ERRCODE = 'object_not_in_prerequisite_state',
                                      DETAIL = 'The background worker that built it stopped without finishing it; '
                                               'the server log has its error.',
                                      HINT = 'Correct what the server log names (attach_dry_run lists duplicate '
                                             'creations), then call attach_concurrently again.';
                        END IF;
                        step_done := true;
                    ELSE
                        PERFORM pg_catalog.pg_sleep(0.05);
                    END IF;
                ELSIF step = 'begin' THEN
                    PERFORM workflow_ext.attach_concurrently_begin(log, accept_existing);
                    began := true;
                    step_done := true;
                ELSIF step = 'adopt' THEN
                    batch := workflow_ext.run_ids_after(log, after, 200);
                    IF batch IS NOT NULL THEN
                        numbered := numbered + workflow_ext.adopt_runs(log, batch);
                        after := batch[pg_catalog.array_upper(batch, 1)];
                    ELSE
                        -- Rows without a run id: a closed set (the trigger refuses new ones).
                        numbered := numbered + workflow_ext.number_runs(log, NULL);
                        step_done := true;
                    END IF;
                    IF pg_catalog.clock_timestamp() - reported > interval '2 seconds' THEN
                        reported := pg_catalog.clock_timestamp();
                        RAISE NOTICE 'attach of %: % rows numbered, % rows/s', log, numbered,
                            pg_catalog.round(numbered / greatest(extract(epoch FROM reported - phase_started), 0.001));
                    END IF;
                ELSIF step = 'audit' THEN
                    IF EXISTS (SELECT FROM workflow_ext.unnumbered_rows(log)) THEN
                        RAISE EXCEPTION 'rows of "%" were left unnumbered', log
                            USING ERRCODE = 'serialization_failure',
                                  DETAIL = 'A writer whose snapshot predates the attach appended to a run being numbered.',
                                  HINT = 'Call attach_concurrently again.';
                    END IF;
                    PERFORM workflow_ext.refuse_anomalies(log, accept_existing);
                    step_done := true;
                ELSE
                    PERFORM workflow_ext.attach_concurrently_finish(log, numbered);
                    step_done := true;
                END IF;
                IF step_done THEN
                    RAISE NOTICE 'attach of %: % done in % s', log, step,
                        pg_catalog.round(extract(epoch FROM pg_catalog.clock_timestamp() - phase_started)::numeric, 3);
                    i := i + 1;
                    in_step := false;
                    step_done := false;
                END IF;
            END IF;
            -- Until the next iteration's first statement (src/pg/transaction.rs).
            PERFORM workflow_ext.hold_interrupts();
        EXCEPTION WHEN query_canceled OR OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                    err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            failed := true;
        END;
        EXIT WHEN failed OR attached;
        COMMIT;
    END LOOP;
    IF attached THEN
        PERFORM workflow_ext.resume_interrupts();
        RETURN;
    END IF;
    ROLLBACK;
    -- A worker still building is stopped; its build is left invalid.
    IF ticket IS NOT NULL THEN
        PERFORM workflow_ext.stop_top_level(ticket);
        WHILE NOT workflow_ext.top_level_finished(ticket) LOOP
            COMMIT;
            PERFORM pg_catalog.pg_sleep(0.05);
        END LOOP;
    END IF;
    COMMIT;
    -- The table's own creation index, dropped by the begin step, is rebuilt
    -- concurrently first (if that fails, detach rebuilds it under the lock).
    IF began AND EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log AND l.replaced_index IS NOT NULL) THEN
        RAISE NOTICE 'attach of %: undoing; rebuilding the table''s own creation index concurrently', log;
        ticket := workflow_ext.start_top_level(log, 'restore');
        COMMIT;
        WHILE NOT workflow_ext.top_level_finished(ticket) LOOP
            COMMIT;
            PERFORM pg_catalog.pg_sleep(0.05);
        END LOOP;
        COMMIT;
    END IF;
    PERFORM workflow_ext.attach_concurrently_undo(log);
    COMMIT;
    err_detail := CASE WHEN err_detail IS NULL OR err_detail = '' THEN '' ELSE err_detail || ' ' END
                  || pg_catalog.format('The attach stopped at its %s step and was undone.', step);
    IF err_hint IS NULL OR err_hint = '' THEN
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message, DETAIL = err_detail;
    END IF;
    RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_message, DETAIL = err_detail, HINT = err_hint;
END
$$;

-- Rows of `log` without a seq (an attach in progress numbers them); at
-- most one. Internal.
CREATE FUNCTION workflow_ext.unnumbered_rows(log regclass) RETURNS SETOF integer
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE format('SELECT 1 FROM %s WHERE seq IS NULL LIMIT 1', log);
END
$$;

-- Removes what attach added, except the rows: the triggers, the indexes,
-- the seq column it added, the run rows; the table's own creation index is
-- put back as it was (or none, if it had none). SECURITY INVOKER and not
-- executable by PUBLIC, like attach.
CREATE OR REPLACE FUNCTION workflow_ext.detach(log regclass) RETURNS void
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
    -- A log Citus distributes (workflow_ext.distribute()): its shards and
    -- run rows are on the workers.
    IF workflow_ext.distributed_by_citus(log) THEN
        RAISE EXCEPTION 'cannot detach a distributed log'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('Citus distributes %s.', log),
                  HINT = format('Undistribute it first: SELECT workflow_ext.undistribute(%L).', log::text);
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);
    -- First, so the DDL watcher no longer guards the table.
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
        -- An undone concurrent attach rebuilt it concurrently already.
        IF to_regclass(format('%I.%I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                         WHERE c.oid = log),
                              workflow_ext.index_base(log) || '_wfx_restore')) IS NOT NULL THEN
            EXECUTE format('ALTER INDEX %I.%I RENAME TO workflow_events_entity_creation_unique',
                           (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE c.oid = log),
                           workflow_ext.index_base(log) || '_wfx_restore');
        ELSE
            EXECUTE a.replaced_index;
        END IF;
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

REVOKE ALL ON PROCEDURE workflow_ext.attach_concurrently(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.index_base(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_statement(regclass, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.seed_runs(regclass, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.refuse_anomalies(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.refuse_duplicate_creations(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.lock_for_attach(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.number_runs(regclass, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.adopt_runs(regclass, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.run_ids_after(regclass, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_index_valid(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_concurrently_check(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_concurrently_begin(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_concurrently_finish(regclass, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.attach_concurrently_undo(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.in_transaction_block() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.hold_interrupts() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.resume_interrupts() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.start_top_level(oid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.top_level_finished(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.stop_top_level(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.unnumbered_rows(regclass) FROM PUBLIC;

-- The audit never JIT-compiles: with enable_sort off, a sort it still needs
-- (the hook-token check, a source without a (run_id, seq) index) looked
-- 10^10 expensive and was compiled on every call.
ALTER FUNCTION workflow_ext.replay(text, regclass) SET jit = off;
ALTER FUNCTION workflow_ext.scan(regclass, timestamptz) SET jit = off;

-- attach takes a table Citus distributes on the coordinator, attach_concurrently
-- refuses it (sql/attach.sql). Whether Citus distributes `rel` (pg_dist_partition: a distributed,
-- reference or Citus local table). Internal.
CREATE FUNCTION workflow_ext.distributed_by_citus(rel regclass) RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    distributed boolean := false;
BEGIN
    -- EXECUTE: pg_dist_partition exists only with Citus.
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
            INTO distributed USING rel;
    END IF;
    RETURN distributed;
END
$$;

CREATE OR REPLACE FUNCTION workflow_ext.check_log(log regclass, attaching boolean, created oid[] DEFAULT '{}')
RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    what text;
BEGIN
    SELECT c.relkind, c.relpersistence, c.relispartition INTO rel FROM pg_class c WHERE c.oid = log;
    IF rel.relkind IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', log::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF rel.relkind <> 'r' THEN
        RAISE EXCEPTION '"%" is not a table', log
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Only a plain table can be attached: its rows are checked by a row trigger.';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'cannot attach temporary table "%"', log
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A temporary table ends with its session, which would leave its registration behind.';
    END IF;
    what := CASE
        WHEN rel.relispartition THEN 'it is a partition'
        WHEN EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = log) THEN 'it inherits from another table'
        WHEN EXISTS (SELECT FROM pg_inherits h WHERE h.inhparent = log) THEN 'another table inherits from it'
        WHEN EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = log) THEN 'it has rules'
        WHEN EXISTS (SELECT FROM pg_trigger t
                      WHERE t.tgrelid = log AND NOT t.tgisinternal
                        AND (t.tgname NOT IN ('workflow_ext_validate_insert', 'workflow_ext_append_only',
                                              'workflow_ext_no_truncate')
                             OR t.tgfoid NOT IN ('workflow_ext.events_before_insert()'::regprocedure,
                                                 'workflow_ext.events_refuse_change()'::regprocedure)))
            THEN 'it has triggers of its own'
        -- The planner folds immutable functions with constant arguments
        -- in index expressions and predicates, CHECK constraints and
        -- statistics of a table it plans a query on: a function of the
        -- owner's there would run in whatever privileged context plans one.
        WHEN EXISTS (SELECT FROM pg_depend d
                      WHERE d.deptype = 'n'
                        AND ((d.classid = 'pg_class'::regclass
                              AND d.objid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = log))
                          OR (d.classid = 'pg_constraint'::regclass
                              AND d.objid IN (SELECT c.oid FROM pg_constraint c WHERE c.conrelid = log))
                          OR (d.classid = 'pg_attrdef'::regclass
                              AND d.objid IN (SELECT a.oid FROM pg_attrdef a WHERE a.adrelid = log))
                          OR (d.classid = 'pg_statistic_ext'::regclass
                              AND d.objid IN (SELECT x.oid FROM pg_statistic_ext x WHERE x.stxrelid = log)))
                        AND ((d.refclassid = 'pg_proc'::regclass
                              AND (SELECT p.pronamespace FROM pg_proc p WHERE p.oid = d.refobjid)
                                  NOT IN ('pg_catalog'::regnamespace, 'workflow_ext'::regnamespace))
                          OR (d.refclassid = 'pg_operator'::regclass
                              AND (SELECT o.oprnamespace FROM pg_operator o WHERE o.oid = d.refobjid)
                                  <> 'pg_catalog'::regnamespace)))
            THEN 'its indexes, constraints, defaults or statistics call functions of its own'
        -- A CHECK constraint runs whenever a row is written, as whoever
        -- writes it; on Citus, distribute(), undistribute() and attach of a
        -- distributed table have Citus copy the rows as the caller, a
        -- superuser. So the CHECK constraints that writing a row evaluates
        -- call only PostgreSQL's functions that anyone may call and that
        -- change nothing (not volatile): none that PostgreSQL reserves
        -- (lo_export, pg_read_file, …), none of the extension's. Those are
        -- the table's and those of every domain a row holds a value of: a
        -- column's type, followed through domains, arrays, composite and
        -- range types, and the types its constraints, defaults, generated
        -- columns and indexes convert to (pg_depend), each domain's own
        -- conversions in turn. (The functions are read from the
        -- expressions: pg_depend records no dependency on PostgreSQL's own,
        -- pinned, functions.)
        WHEN EXISTS (WITH RECURSIVE held(t) AS (
                         SELECT a.atttypid FROM pg_attribute a
                          WHERE a.attrelid = log AND a.attnum > 0 AND NOT a.attisdropped
                         UNION
                         SELECT d.refobjid FROM pg_depend d
                          WHERE d.refclassid = 'pg_type'::regclass
                            AND ((d.classid = 'pg_constraint'::regclass
                                  AND d.objid IN (SELECT c.oid FROM pg_constraint c WHERE c.conrelid = log))
                              OR (d.classid = 'pg_attrdef'::regclass
                                  AND d.objid IN (SELECT ad.oid FROM pg_attrdef ad WHERE ad.adrelid = log))
                              OR (d.classid = 'pg_class'::regclass
                                  AND d.objid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = log)))
                         UNION
                         SELECT inner_type.t FROM held JOIN pg_type ty ON ty.oid = held.t,
                           LATERAL (SELECT ty.typbasetype WHERE ty.typtype = 'd'
                                    UNION ALL SELECT ty.typelem WHERE ty.typelem <> 0
                                    UNION ALL SELECT a.atttypid FROM pg_attribute a
                                               WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                                    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid
                                    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = ty.oid
                                    UNION ALL SELECT d.refobjid FROM pg_constraint c
                                                JOIN pg_depend d ON d.classid = 'pg_constraint'::regclass
                                                                AND d.objid = c.oid
                                                                AND d.refclassid = 'pg_type'::regclass
                                               WHERE c.contypid = ty.oid) inner_type(t)),
                     checks(tree) AS (
                         SELECT c.conbin::text FROM pg_constraint c
                          WHERE c.contype = 'c' AND (c.conrelid = log OR c.contypid IN (SELECT t FROM held))),
                     called(f) AS (
                         SELECT m[2]::oid FROM checks, regexp_matches(checks.tree, ':(funcid|opfuncid) (\d+)', 'g') m
                         UNION
                         SELECT o.oprcode::oid FROM checks, regexp_matches(checks.tree, ':opno (\d+)', 'g') m
                           JOIN pg_operator o ON o.oid = m[1]::oid)
                     SELECT FROM called JOIN pg_proc p ON p.oid = called.f
                      WHERE p.pronamespace <> 'pg_catalog'::regnamespace OR p.provolatile = 'v'
                         OR NOT has_function_privilege('public', p.oid, 'EXECUTE'))
            THEN 'its CHECK constraints, or those of the domains it uses, call functions that are not '
                 'PostgreSQL''s, are volatile or are reserved'
        WHEN NOT attaching AND EXISTS (SELECT FROM pg_trigger t
                                        WHERE t.tgrelid = log AND NOT t.tgisinternal AND t.tgenabled <> 'A'
                                          AND t.oid <> ALL (created))
            THEN 'a trigger of workflow_ext is not ENABLE ALWAYS'
    END;
    IF what IS NOT NULL THEN
        RAISE EXCEPTION '"%" cannot be a protected log: %', log, what
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Each would let rows past the validating trigger, or run code of the table''s owner '
                           'where the extension reads the table; its triggers must fire under every '
                           'session_replication_role.',
                  HINT = CASE WHEN attaching THEN 'Remove them, then attach again.'
                              ELSE 'The table is attached to workflow_ext; detach it first (workflow_ext.detach).' END;
    END IF;
    PERFORM workflow_ext.check_log_columns(log, attaching);
END
$$;

-- The DDL watcher also checks the attached logs after ALTER DOMAIN: a CHECK
-- constraint added to the domain of a log's column is one of the log's
-- (check_log).
DROP EVENT TRIGGER workflow_ext_guard_logs;
CREATE EVENT TRIGGER workflow_ext_guard_logs ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'CREATE INDEX', 'CREATE TRIGGER', 'ALTER TRIGGER',
                 'CREATE RULE', 'ALTER RULE', 'CREATE TABLE', 'CREATE STATISTICS', 'ALTER STATISTICS',
                 'ALTER DOMAIN')
    EXECUTE FUNCTION workflow_ext.on_ddl_command_end();
ALTER EVENT TRIGGER workflow_ext_guard_logs ENABLE ALWAYS;

-- Citus (sql/citus.sql) ---------------------------------------------------

-- The run rows of logs that Citus distributes (workflow_ext.distribute(),
-- sql/citus.sql): the same columns as runs, keyed by the logical log's
-- name (an OID differs per node and does not survive a shard move) and
-- distributed by run_id, co-located with the logs, so a run's row and its
-- events are on one node and move together. The trigger writes the shard
-- of it next to the log's shard (src/pg/citus.rs). Empty without Citus.
CREATE TABLE workflow_ext.distributed_runs (
    run_id        text        NOT NULL,
    log           text        NOT NULL,  -- the log, as regclass prints it qualified
    state         text        NOT NULL,
    last_seq      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_event_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT distributed_runs_pkey PRIMARY KEY (run_id, log)
) WITH (fillfactor = 80);
-- The same for logs whose run_id is varchar (the DevKit's): Citus co-locates
-- only tables whose distribution columns have one type.
CREATE TABLE workflow_ext.distributed_runs_varchar (
    run_id        varchar     NOT NULL,
    log           text        NOT NULL,
    state         text        NOT NULL,
    last_seq      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_event_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT distributed_runs_varchar_pkey PRIMARY KEY (run_id, log)
) WITH (fillfactor = 80);

-- Scaling out with Citus (docs/scaling-out.md, "Citus"): a log distributed
-- by run_id, its run rows co-located in workflow_ext.distributed_runs, so
-- every per-run guarantee is kept on the node that holds the run
-- (src/pg/citus.rs).

-- The run table of distributed `log`: workflow_ext.distributed_runs, or
-- distributed_runs_varchar for a varchar run_id (Citus co-locates only
-- tables whose distribution columns have one type); NULL for another type.
-- Internal.
CREATE FUNCTION workflow_ext.run_table_of(log regclass) RETURNS regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE a.atttypid WHEN 'text'::regtype THEN 'workflow_ext.distributed_runs'::regclass
                           WHEN 'varchar'::regtype THEN 'workflow_ext.distributed_runs_varchar'::regclass END
      FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'run_id' AND NOT a.attisdropped
$$;

-- Distributes `log` (the own log, or an attached table) by run_id with
-- Citus, on the coordinator, together with its run table
-- (workflow_ext.distributed_runs, or distributed_runs_varchar for a varchar
-- run_id, distributed on first use, every log co-located with it), with
-- its events and their run rows; for the own log, also its fan-in tables
-- and hook tokens (distribute_own_log_tables). A unique constraint without run_id is replaced by one
-- that leads with it when it is the log's id alone (the own log's
-- events_id_key, the DevKit's primary key), else refused. Idempotent: a log
-- distributed by it already is left as it is.
CREATE FUNCTION workflow_ext.distribute(log regclass DEFAULT 'workflow_ext.events')
RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    run_table regclass;
    runs_group integer;
    log_group integer;
    u record;
    has_rows boolean;
BEGIN
    IF log IS NULL THEN
        RAISE EXCEPTION 'log must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'workflow_ext.distribute() distributes a log with Citus.',
                  HINT = 'Install Citus on every node, add ''citus'' first to shared_preload_libraries, '
                         'run CREATE EXTENSION citus in this database on every node and add the workers.';
    END IF;
    IF NOT EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        RAISE EXCEPTION '"%" is not a protected log', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Attach it first; workflow_ext.attached_logs lists the protected logs.';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'a log is distributed from the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator and call workflow_ext.distribute() there.';
    END IF;
    -- Citus copies the events as this caller: an attached log is still
    -- what attach admits (its CHECK constraints among it), whatever an older
    -- version let through. (The own log is the extension's.)
    IF log <> 'workflow_ext.events'::regclass THEN
        PERFORM workflow_ext.check_log(log, attaching => false);
    END IF;
    run_table := workflow_ext.run_table_of(log);
    IF run_table IS NULL THEN
        RAISE EXCEPTION 'cannot distribute % by its run_id', log
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A distributed log''s run_id is text or varchar.';
    END IF;
    -- Writers wait while the log and its run rows move.
    EXECUTE format('LOCK TABLE %s, %s IN ACCESS EXCLUSIVE MODE', log, run_table);
    SELECT p.colocationid INTO runs_group FROM pg_dist_partition p WHERE p.logicalrelid = run_table;
    SELECT p.colocationid INTO log_group FROM pg_dist_partition p WHERE p.logicalrelid = log;
    IF log_group IS NOT NULL THEN
        IF log_group = runs_group THEN
            PERFORM workflow_ext.distribute_own_log_tables(log);
            RETURN;
        END IF;
        RAISE EXCEPTION '% is distributed without its run table', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Citus distributes it, but not co-located with %s.', run_table),
                  HINT = CASE WHEN log = 'workflow_ext.events'::regclass
                              THEN 'Citus undistributes no table of an extension: drop the extension (its events with it), '
                                   'create it again and call workflow_ext.distribute().'
                              ELSE format('Undistribute it (SELECT workflow_ext.undistribute(%L)), then call workflow_ext.distribute().',
                                          log::text) END;
    END IF;
    -- A log with events: its run rows move into the run table, keyed by the
    -- log's name; Citus then copies the events into the new shards, whose
    -- triggers let those copies through unchanged (they were admitted and
    -- numbered here) because this transaction tells them so:
    -- workflow_ext.distributing, sent to the workers' sessions with Citus's
    -- SET LOCAL propagation, honoured only in a superuser's session
    -- (src/pg/citus.rs).
    EXECUTE format('SELECT EXISTS (SELECT FROM %s)', log) INTO has_rows;
    IF has_rows THEN
        IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user) THEN
            RAISE EXCEPTION 'a log with events is distributed by a superuser'
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('%s has events, which Citus copies into the shards past their triggers.', log),
                      HINT = 'Call workflow_ext.distribute() as a superuser.';
        END IF;
        EXECUTE format('INSERT INTO %s (run_id, log, state, last_seq, created_at, finished_at, last_event_at) '
                       'SELECT r.run_id, %L, r.state, r.last_seq, r.created_at, r.finished_at, r.last_event_at '
                       '  FROM workflow_ext.runs r WHERE r.log = %L::regclass', run_table, log::text, log);
        DELETE FROM workflow_ext.runs r WHERE r.log = distribute.log;
        PERFORM workflow_ext.announce_distribution(log::text);
    END IF;
    -- A distributed table's unique constraints must include run_id.
    FOR u IN SELECT i.indexrelid::regclass AS index, c.conname, c.contype,
                    (SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(i.indkey) WITH ORDINALITY k(att, n)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att) AS cols
               FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
              WHERE i.indrelid = log AND i.indisunique
                AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = log AND a.attname = 'run_id'
                                   AND a.attnum = ANY (i.indkey::int2[]))
    LOOP
        IF u.cols = ARRAY['id'] AND u.contype IN ('p', 'u') THEN
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s (run_id, id)',
                           log, u.conname, u.conname, CASE u.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END);
        ELSE
            RAISE EXCEPTION 'cannot distribute %: its unique index % does not include run_id', log, u.index
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Citus enforces a unique index of a distributed table only when it includes the distribution column.',
                      HINT = 'Add run_id to the index (or drop it), then call workflow_ext.distribute() again.';
        END IF;
    END LOOP;
    -- Citus refuses triggers on a distributed table unless told; ours are
    -- the ones it may keep (they touch the co-located shards only).
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    IF runs_group IS NULL THEN
        PERFORM create_distributed_table(run_table, 'run_id', colocate_with => 'none');
    END IF;
    PERFORM create_distributed_table(log, 'run_id', colocate_with => run_table::text);
    IF has_rows THEN
        -- Every later row of this transaction is an append again.
        PERFORM workflow_ext.announce_distribution('');
    END IF;
    PERFORM workflow_ext.distribute_own_log_tables(log);
END;
$$;

-- Undoes distribute() for an attached log, on the coordinator: Citus's
-- undistribute_table copies the rows into a new local table, drops the
-- distributed one and renames the copy, then puts back its indexes and
-- triggers (the copy, before them, is not re-validated); the log's
-- registration and run rows follow it to the new table (a new OID). The
-- primary key or unique constraint distribute() led with run_id stays so.
-- The own log is refused: Citus undistributes no table of an extension.
-- Nothing to do for a log Citus does not distribute. SECURITY INVOKER,
-- not executable by PUBLIC: it writes the registration, like attach.
CREATE FUNCTION workflow_ext.undistribute(log regclass DEFAULT 'workflow_ext.events')
RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    -- Citus says each step of its table conversion (NOTICE).
    SET client_min_messages = warning
AS $$
DECLARE
    registration workflow_ext.logs;
    run_table regclass;
    runs_group integer;
    log_group integer;
    name text;
    moved regclass;
BEGIN
    IF log IS NULL THEN
        RAISE EXCEPTION 'log must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'workflow_ext.undistribute() undoes workflow_ext.distribute().';
    END IF;
    IF log = 'workflow_ext.events'::regclass THEN
        RAISE EXCEPTION 'cannot undistribute workflow_ext.events'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Citus undistributes no table that belongs to an extension.',
                  HINT = 'To leave Citus with the own log''s events, copy them out (COPY … TO) before dropping the extension.';
    END IF;
    SELECT * INTO registration FROM workflow_ext.logs l WHERE l.relation = log;
    IF registration.relation IS NULL THEN
        RAISE EXCEPTION '"%" is not a protected log', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'workflow_ext.attached_logs lists the protected logs; Citus''s undistribute_table undistributes other tables.';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'a log is undistributed from the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator and call workflow_ext.undistribute() there.';
    END IF;
    SELECT p.colocationid INTO log_group FROM pg_dist_partition p WHERE p.logicalrelid = log;
    IF log_group IS NULL THEN
        RETURN;
    END IF;
    run_table := workflow_ext.run_table_of(log);
    -- Writers wait while the rows come back.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', log);
    IF run_table IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', run_table);
        SELECT p.colocationid INTO runs_group FROM pg_dist_partition p WHERE p.logicalrelid = run_table;
    END IF;
    name := log::text;
    -- Citus copies the rows back as this caller (see distribute()).
    PERFORM workflow_ext.check_log(log, attaching => false);
    -- Dropping the distributed table drops its registration (on_drop).
    PERFORM undistribute_table(log);
    moved := to_regclass(name);
    INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, replaced_index,
                                   creation_index, added_indexes, attached_at, attached_by)
    VALUES (moved, registration.accept_existing, registration.seq_added, registration.numbered,
            registration.replaced_index, registration.creation_index, registration.added_indexes,
            registration.attached_at, registration.attached_by);
    IF log_group IS NOT DISTINCT FROM runs_group THEN
        EXECUTE format('INSERT INTO workflow_ext.runs (log, run_id, state, last_seq, created_at, finished_at, last_event_at) '
                       'SELECT $1, r.run_id, r.state, r.last_seq, r.created_at, r.finished_at, r.last_event_at '
                       '  FROM %s r WHERE r.log = $2', run_table)
            -- By OID: Citus runs the SELECT on the workers, which do not
            -- know the new table.
            USING moved::oid, name;
        EXECUTE format('DELETE FROM %s r WHERE r.log = $1', run_table) USING name;
    ELSE
        -- Distributed by hand, without its run rows: seeded from its
        -- events, as attach seeds them.
        PERFORM workflow_ext.seed_runs(moved, NULL);
    END IF;
    -- What Citus put back is what attach had put there.
    PERFORM workflow_ext.check_log(moved, attaching => false);
END;
$$;

-- attach() of a table Citus distributes already by run_id (distributed
-- before it was attached), on the coordinator: Citus's undistribute_table
-- brings its rows back into a local table of the same name (a new OID,
-- returned), where attach audits and numbers them as for any table; attach
-- then distribute()s it again, all in attach's transaction. Internal.
CREATE FUNCTION workflow_ext.undistribute_to_attach(log regclass) RETURNS regclass
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    SET client_min_messages = warning
AS $$
DECLARE
    name text := log::text;
    has_rows boolean;
    placed text;
BEGIN
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'a distributed table is attached from the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator and call workflow_ext.attach() there.';
    END IF;
    -- Only what distribute() would make of it comes back as it was: a table
    -- hash-distributed by run_id. Another one (a reference table, a Citus
    -- local table, one distributed by another column) is not turned into
    -- that unasked.
    SELECT CASE WHEN p.partmethod = 'h' THEN 'distributed by ' || column_to_column_name(p.logicalrelid, p.partkey)
                WHEN p.repmodel = 't' THEN 'a reference table'
                WHEN p.colocationid = 0 THEN 'a Citus local table'
                ELSE 'a single-shard distributed table' END
      INTO placed
      FROM pg_dist_partition p WHERE p.logicalrelid = log;
    IF placed IS DISTINCT FROM 'distributed by run_id' THEN
        RAISE EXCEPTION 'cannot attach "%": Citus does not distribute it by run_id', log
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('It is %s; a protected log is distributed by run_id.', placed),
                  HINT = format('Undistribute it (SELECT undistribute_table(%L)), attach it, then call '
                                'workflow_ext.distribute(%L) if it is to be distributed.', log::text, log::text);
    END IF;
    -- distribute() takes events along as a superuser only: say so before
    -- the rows travel.
    -- (A select list: Citus cannot plan an empty one over a distributed table.)
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', log) INTO has_rows;
    IF has_rows AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user) THEN
        RAISE EXCEPTION 'a distributed table with events is attached by a superuser'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('%s has events, which attach distributes again past their triggers.', log),
                  HINT = 'Call workflow_ext.attach() as a superuser.';
    END IF;
    PERFORM undistribute_table(log);
    RETURN to_regclass(name);
END;
$$;

-- Sets workflow_ext.distributing (the log whose events Citus is copying into
-- its new shards, or '') for the rest of the transaction, here and in the
-- sessions Citus opens on the workers (its SET LOCAL propagation, which
-- Citus applies only inside a transaction block or a function called from
-- a query: hence a function of its own). Internal.
CREATE FUNCTION workflow_ext.announce_distribution(log text) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SET LOCAL citus.propagate_set_commands = 'local';
    EXECUTE format('SET LOCAL workflow_ext.distributing = %L', log);
END;
$$;

-- With the own log, the rest of its per-run state and its hook tokens: the
-- fan-in tables (joins, join_members) co-located with the run rows, so
-- join_arrive locks the run and counts its join on the run's node; and
-- workflow_ext.hook_tokens distributed by token (see
-- track_hook_tokens_on_shard). Attached logs have neither. (The append
-- functions are not made Citus distributed functions: delegated calls were
-- refused during a blocking shard split, docs/scaling-out.md.)
CREATE FUNCTION workflow_ext.distribute_own_log_tables(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
BEGIN
    IF log <> 'workflow_ext.events'::regclass THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['workflow_ext.joins', 'workflow_ext.join_members']::regclass[] LOOP
        IF NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = t) THEN
            PERFORM create_distributed_table(t, 'run_id', colocate_with => 'workflow_ext.distributed_runs');
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = 'workflow_ext.hook_tokens'::regclass) THEN
        PERFORM create_distributed_table('workflow_ext.hook_tokens', 'token', colocate_with => 'none');
    END IF;
END;
$$;

-- Hook tokens of the distributed own log (events_track_hook_tokens, on a
-- shard): distribute() distributes workflow_ext.hook_tokens by token, so one
-- token has one row on one node whichever worker holds the run, and its
-- primary key decides between racing creators there (a 23505 named
-- workflow_hook_token_unique, as on one node). The one rule that crosses
-- nodes: a token's row is written from the run's worker into the token's
-- shard, a nested distributed statement (allowed for this function only),
-- committed with the event by the run's worker. Citus prepares no such
-- nested write, so a transaction that does one refuses PREPARE TRANSACTION
-- (src/pg/citus.rs: a two-phase commit across workers would lose it).
-- hook_disposed and the run's terminal event release the run's tokens, found
-- in the run's hook_created events on this shard. Internal.
CREATE FUNCTION workflow_ext.track_hook_tokens_on_shard(
    shard_schema name, shard_name name, event_type text, run text, correlation text, event_id text, token text)
RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET citus.allow_nested_distributed_execution = on
AS $$
DECLARE
    held text[];
    held_token text;
BEGIN
    IF event_type = 'hook_created' THEN
        IF token IS NOT NULL THEN
            PERFORM workflow_ext.note_cross_node_write();
            INSERT INTO workflow_ext.hook_tokens (token, run_id, correlation_id, event_id)
            VALUES (token, run, correlation, event_id);
        END IF;
        RETURN;
    END IF;
    -- hook_disposed: that hook's token; a terminal event: the run's.
    EXECUTE format('SELECT array_agg(DISTINCT e.payload OPERATOR(pg_catalog.->>) ''token'') FROM %I.%I e '
                   ' WHERE e.run_id = $1 AND e.type = ''hook_created'' '
                   '   AND ($2::text IS NULL OR e.correlation_id = $2) '
                   '   AND pg_catalog.jsonb_typeof(e.payload OPERATOR(pg_catalog.->) ''token'') = ''string''',
                   shard_schema, shard_name)
        INTO held
        USING run, CASE WHEN event_type = 'hook_disposed' THEN correlation END;
    IF held IS NOT NULL THEN
        PERFORM workflow_ext.note_cross_node_write();
        -- One token at a time: each DELETE goes to the one shard of its token.
        FOREACH held_token IN ARRAY held LOOP
            DELETE FROM workflow_ext.hook_tokens h
             WHERE h.token = held_token AND h.run_id = run
               AND (event_type <> 'hook_disposed' OR h.correlation_id = correlation);
        END LOOP;
    END IF;
END;
$$;

-- Marks the transaction as holding a nested write to another node
-- (track_hook_tokens_on_shard): its PREPARE TRANSACTION is refused.
CREATE FUNCTION workflow_ext.note_cross_node_write() RETURNS void
    LANGUAGE c VOLATILE SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'note_cross_node_write_wrapper';

-- The rows inserted into the shards of distributed `log` on every node
-- since their statistics were reset (metrics().events_inserted of a
-- distributed log; a shard moved or split starts again at 0 on its new
-- node). A node that fails fails the call (58000).
CREATE FUNCTION workflow_ext.inserted_on_every_node(log regclass) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n record;
    total bigint := 0;
BEGIN
    FOR n IN SELECT r.nodeid, r.success, r.result
               FROM run_command_on_all_nodes(format(
                    'SELECT coalesce(sum(pg_catalog.pg_stat_get_tuples_inserted('
                    '           pg_catalog.shard_name(s.logicalrelid, s.shardid, false)::pg_catalog.regclass)), 0) '
                    '  FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_placement p USING (shardid) '
                    ' WHERE s.logicalrelid = %L::pg_catalog.regclass '
                    '   AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g)', log::text)) r
    LOOP
        IF NOT n.success THEN
            RAISE EXCEPTION 'the events count failed on node %', n.nodeid
                USING ERRCODE = 'system_error', DETAIL = n.result,
                      HINT = 'Each node counts the shards it holds: fix what the node reports and call it again.';
        END IF;
        total := total + n.result::bigint;
    END LOOP;
    RETURN total;
END;
$$;

-- The write path's counters (counters_since_start(): each server counts the
-- appends its own backends validate, and a distributed append is validated
-- on the worker that holds the run) of every node of the Citus formation,
-- read from the coordinator or any node: a row per node and counter. A node
-- that fails fails the call (58000).
CREATE FUNCTION workflow_ext.counters_on_every_node()
RETURNS TABLE (node text, counter text, value bigint)
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Read workflow_ext.counters_since_start() on the server.';
    END IF;
    FOR n IN SELECT r.nodeid, r.success, r.result, d.nodename || ':' || d.nodeport AS name
               FROM run_command_on_all_nodes(
                    'SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(c.counter, c.value)), ''[]'') '
                    '  FROM workflow_ext.counters_since_start() c') r
               JOIN pg_dist_node d ON d.nodeid = r.nodeid
              ORDER BY r.nodeid
    LOOP
        IF NOT n.success THEN
            RAISE EXCEPTION 'the counters failed on node %', n.name
                USING ERRCODE = 'system_error', DETAIL = n.result,
                      HINT = 'Each node reads its own counters: fix what the node reports and call it again.';
        END IF;
        RETURN QUERY SELECT n.name, e ->> 0, (e ->> 1)::bigint FROM json_array_elements(n.result::json) e;
    END LOOP;
END;
$$;

-- scan() of the shards of `log` this node holds: scan() of a distributed
-- log runs it on every node at once (src/pg/citus.rs) and merges what they
-- report. SECURITY INVOKER: it reads only what scan() lets the caller read.
CREATE FUNCTION workflow_ext.scan_local_shards(log regclass, since timestamptz)
RETURNS TABLE (run_id text, events bigint, anomalies bigint, first_seq bigint, first_anomaly text, first_detail text)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shard regclass;
BEGIN
    FOR shard IN
        SELECT shard_name(s.logicalrelid, s.shardid, false)::regclass
          FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
         WHERE s.logicalrelid = log
           AND p.groupid = (SELECT g.groupid FROM pg_dist_local_group g)
         ORDER BY s.shardid
    LOOP
        RETURN QUERY SELECT * FROM workflow_ext.scan(shard, since);
    END LOOP;
END;
$$;

-- purge_runs() of the distributed own log on this node's shards:
-- purge_runs() runs it on every node (src/features/retention.rs). Internal.
CREATE FUNCTION workflow_ext.purge_local_shards(older_than interval) RETURNS bigint
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'purge_local_shards_wrapper';

REVOKE ALL ON FUNCTION workflow_ext.distribute(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.announce_distribution(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.distribute_own_log_tables(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.run_table_of(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.undistribute(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.undistribute_to_attach(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.distributed_by_citus(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.purge_local_shards(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.inserted_on_every_node(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.track_hook_tokens_on_shard(name, name, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.note_cross_node_write() FROM PUBLIC;

-- metrics() and stuck_runs() read the run rows of distributed logs too.
CREATE OR REPLACE FUNCTION workflow_ext.metrics(idle interval DEFAULT '1 hour')
RETURNS TABLE (log text, runs_pending bigint, runs_running bigint, runs_idle bigint,
               oldest_active_run_seconds double precision, events_inserted bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The rows inserted into each distributed log's shards, on every node
    -- (sql/citus.sql); its own table on this node has none.
    shard_inserts jsonb := '{}';
    distributed record;
BEGIN
    IF EXISTS (SELECT FROM pg_extension e WHERE e.extname = 'citus') THEN
        -- EXECUTE: pg_dist_partition exists only with Citus.
        FOR distributed IN EXECUTE 'SELECT l.relation FROM workflow_ext.logs l '
                         ' WHERE l.relation IN (SELECT p.logicalrelid FROM pg_dist_partition p)' LOOP
            shard_inserts := shard_inserts
                || jsonb_build_object(distributed.relation::text,
                                      workflow_ext.inserted_on_every_node(distributed.relation));
        END LOOP;
    END IF;
    -- The run rows of a log Citus distributes are in distributed_runs, keyed
    -- by the log's name (sql/citus.sql; empty without Citus). PL/pgSQL, not
    -- SQL: Citus plans no distributed query with an SQL function's parameter.
    RETURN QUERY
    WITH spread AS (
        SELECT d.log,
               count(*) FILTER (WHERE d.state = 'pending') AS pending,
               count(*) FILTER (WHERE d.state = 'running') AS running,
               count(*) FILTER (WHERE d.last_event_at < now() - idle) AS idle_runs,
               min(d.created_at) AS oldest
          FROM (SELECT x.log, x.state, x.last_event_at, x.created_at
                  FROM workflow_ext.distributed_runs x WHERE x.finished_at IS NULL
                UNION ALL
                SELECT y.log, y.state, y.last_event_at, y.created_at
                  FROM workflow_ext.distributed_runs_varchar y WHERE y.finished_at IS NULL) d
         GROUP BY d.log)
    SELECT l.relation::text,
           count(r.run_id) FILTER (WHERE r.state = 'pending') + coalesce(max(s.pending), 0),
           count(r.run_id) FILTER (WHERE r.state = 'running') + coalesce(max(s.running), 0),
           count(r.run_id) FILTER (WHERE r.last_event_at < now() - idle) + coalesce(max(s.idle_runs), 0),
           coalesce(extract(epoch FROM now() - least(min(r.created_at), min(s.oldest)))::double precision, 0),
           coalesce((shard_inserts ->> l.relation::text)::bigint,
                    (SELECT t.n_tup_ins FROM pg_stat_all_tables t WHERE t.relid = l.relation), 0)
      FROM workflow_ext.logs l
      LEFT JOIN workflow_ext.runs r ON r.log = l.relation AND r.finished_at IS NULL
      LEFT JOIN spread s ON s.log = l.relation::text
     GROUP BY l.relation;
END
$$;

-- Hook tokens of the distributed own log are held across nodes.
CREATE OR REPLACE FUNCTION workflow_ext.events_track_hook_tokens() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- On a shard of the own log distributed by Citus, tokens are held in
    -- workflow_ext.hook_tokens distributed by token, across nodes.
    IF TG_RELID OPERATOR(pg_catalog.<>) 'workflow_ext.events'::regclass THEN
        -- Citus copying the events of the log distribute() distributes: the
        -- tokens they took are in hook_tokens already (sql/citus.sql).
        IF pg_catalog.current_setting('workflow_ext.distributing', true) = 'workflow_ext.events'
           AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) session_user) THEN
            RETURN NULL;
        END IF;
        PERFORM workflow_ext.track_hook_tokens_on_shard(
            TG_TABLE_SCHEMA, TG_TABLE_NAME, NEW.type::text, NEW.run_id, NEW.correlation_id, NEW.id,
            CASE WHEN pg_catalog.jsonb_typeof(NEW.payload OPERATOR(pg_catalog.->) 'token') = 'string'
                 THEN NEW.payload OPERATOR(pg_catalog.->>) 'token' END);
        RETURN NULL;
    END IF;
    IF NEW.type::text = 'hook_created' THEN
        IF pg_catalog.jsonb_typeof(NEW.payload OPERATOR(pg_catalog.->) 'token') = 'string' THEN
            INSERT INTO workflow_ext.hook_tokens (token, run_id, correlation_id, event_id)
            VALUES (NEW.payload OPERATOR(pg_catalog.->>) 'token', NEW.run_id, NEW.correlation_id, NEW.id);
        END IF;
    ELSIF NEW.type::text = 'hook_disposed' THEN
        DELETE FROM workflow_ext.hook_tokens
         WHERE run_id = NEW.run_id AND correlation_id = NEW.correlation_id;
    ELSE  -- the run's terminal event
        DELETE FROM workflow_ext.hook_tokens WHERE run_id = NEW.run_id;
    END IF;
    RETURN NULL;
END
$$;



CREATE OR REPLACE FUNCTION workflow_ext.stuck_runs(idle interval DEFAULT '1 hour')
RETURNS TABLE (log text, run_id text, state text, idle_for interval, last_event_type text,
               last_event_at timestamptz, events bigint, active_entities text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    checked regclass[] := ARRAY['workflow_ext.events'::regclass];
BEGIN
    IF idle IS NULL THEN
        RAISE EXCEPTION 'idle must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR r IN SELECT x.log, x.run_id, x.state, x.last_event_at, x.last_seq
               FROM workflow_ext.runs x
              WHERE x.finished_at IS NULL AND x.last_event_at < now() - idle
              UNION ALL
             -- A log Citus distributes (sql/citus.sql): its run rows by name.
             SELECT d.log::regclass, d.run_id, d.state, d.last_event_at, d.last_seq
               FROM workflow_ext.distributed_runs d
              WHERE d.finished_at IS NULL AND d.last_event_at < now() - idle
              UNION ALL
             SELECT v.log::regclass, v.run_id::text, v.state, v.last_event_at, v.last_seq
               FROM workflow_ext.distributed_runs_varchar v
              WHERE v.finished_at IS NULL AND v.last_event_at < now() - idle
              ORDER BY 4, 1, 2
    LOOP
        log := r.log::text;
        run_id := r.run_id;
        state := r.state;
        idle_for := now() - r.last_event_at;
        last_event_at := r.last_event_at;
        events := r.last_seq;
        -- What the log is decides which functions planning and running this
        -- read call, as the extension's owner: PostgreSQL's only. Once per
        -- log (the extension's own needs none).
        IF r.log <> ALL (checked) THEN
            PERFORM workflow_ext.check_log(r.log, attaching => false);
            checked := checked || r.log;
        END IF;
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

-- The monitor kind of access and pg_monitor read the counters of every node too.
CREATE OR REPLACE FUNCTION workflow_ext.grant_access(role regrole, access text, revoke boolean DEFAULT false)
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
REVOKE ALL ON FUNCTION workflow_ext.counters_on_every_node() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION workflow_ext.counters_on_every_node() TO pg_monitor;
-- Roles that hold the monitor kind already (grant_access knows it by
-- EXECUTE on metrics) get the new function with it.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::pg_catalog.regrole AS role
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'workflow_ext.metrics(interval)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> a.grantor
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION workflow_ext.counters_on_every_node() TO %s', r.role);
    END LOOP;
END
$$;
