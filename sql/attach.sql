-- Protecting an existing event table in place (attach / detach). Runs after
-- functions.sql: it calls scan() and run_state().
--
-- workflow_ext.events is one protected log among others: every log has the
-- same BEFORE INSERT trigger (events_before_insert, reading state from the
-- table it fires on), its runs in workflow_ext.runs keyed by (log, run_id),
-- and the creation index named workflow_events_entity_creation_unique.

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
CREATE FUNCTION workflow_ext.create_creation_index(log regclass) RETURNS text
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

-- An index predicate as PostgreSQL prints it, without the casts between
-- text, varchar and the event enum and without parentheses and spaces: the
-- same predicate prints differently after a column's type was changed and
-- back (the index is rebuilt from it). Only those casts go: a cast that
-- changes values (to char(n), say) still tells a weaker predicate apart.
-- Internal.
CREATE FUNCTION workflow_ext.predicate_shape(predicate text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(
             regexp_replace(predicate, '::(text|character varying|workflow_ext\.event_type|event_type)(\[\])?', '', 'g'),
             '[()[:space:]]', '', 'g')
$$;

-- Whether index `idx` of `log` is the extension's creation index in all but
-- its name: unique, NULLS NOT DISTINCT, valid, on exactly (run_id,
-- correlation_id, type), with the predicate of the registered definition
-- (workflow_ext.logs.creation_index, compared by predicate_shape). Compares
-- structure, not the definition's text, so a renamed table or schema keeps
-- its index. Catalog reads only. Internal.
CREATE FUNCTION workflow_ext.is_creation_index(idx regclass, log regclass) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(bool_and(
               i.indisunique AND i.indnullsnotdistinct AND i.indisvalid AND i.indisready AND i.indislive
               AND i.indexprs IS NULL
               AND i.indkey::text = array_to_string(ARRAY(
                       SELECT a.attnum FROM unnest(ARRAY['run_id', 'correlation_id', 'type']) WITH ORDINALITY k(col, n)
                         JOIN pg_attribute a ON a.attrelid = log AND a.attname = k.col
                        ORDER BY k.n), ' ')
               AND workflow_ext.predicate_shape(pg_get_expr(i.indpred, i.indrelid))
                   = workflow_ext.predicate_shape(substring(l.creation_index FROM ' WHERE (.*)$'))), false)
      FROM pg_index i JOIN workflow_ext.logs l ON l.relation = i.indrelid
     WHERE i.indexrelid = idx AND i.indrelid = log
$$;

-- The extension's creation index of `log`, or NULL when the index of that
-- name is missing, invalid or another one (the write path then refuses a
-- duplicate creation itself, src/write/trigger.rs). Internal.
CREATE FUNCTION workflow_ext.creation_index_of(log regclass) RETURNS regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = 'workflow_events_entity_creation_unique'
       AND workflow_ext.is_creation_index(c.oid::regclass, log)
$$;

-- The columns the extension reads on `log` have the built-in types of
-- src/pg/log_shape.rs (42804) and exist (42703; seq only when not
-- `attaching`). Internal.
CREATE FUNCTION workflow_ext.check_log_columns(log regclass, attaching boolean) RETURNS void
    LANGUAGE c STABLE SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'check_log_columns_wrapper';

-- The seq attach gives an existing row of `log`: its position among its
-- run's rows by id (src/features/attach.rs). Called by attach's table
-- rewrite only; `numbering` tells one attach from the next. Internal.
CREATE FUNCTION workflow_ext.seq_in_run(log oid, run_index oid, numbering bigint, run_id text, id text)
RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'seq_in_run_wrapper';

-- Runs one of attach's statements on the table as the table's owner, with
-- SECURITY_RESTRICTED_OPERATION (src/pg/owner.rs): whatever code the owner
-- attached to the table runs with the owner's rights. Internal.
CREATE FUNCTION workflow_ext.execute_as_owner(log regclass, statement text) RETURNS bigint
    LANGUAGE c VOLATILE SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'execute_as_owner_wrapper';

-- Whether Citus distributes `rel` (pg_dist_partition: a distributed,
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

-- What a protected log may be (threat model: README, Security): a plain,
-- permanent table, neither inheriting nor inherited, not a partition,
-- without rules, without triggers but the extension's, without functions or
-- operators but PostgreSQL's (and the extension's) in its indexes,
-- constraints, defaults and statistics, without CHECK constraints (its own
-- or those of the domains it uses) that call a volatile or reserved
-- function, with the columns of
-- check_log_columns. attach checks it before it touches anything
-- (`attaching`), the DDL watcher after every DDL command on an attached
-- log, where the extension's own triggers must also be ENABLE ALWAYS
-- (`created`: triggers this very command created, which are not enabled
-- yet, as in a pg_restore). Catalog reads only. Internal.
CREATE FUNCTION workflow_ext.check_log(log regclass, attaching boolean, created oid[] DEFAULT '{}')
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

-- The creations `log` holds more than once, which the creation index cannot
-- hold: how many keys, and the first five as text. Used by attach (which
-- refuses them) and attach_dry_run. Internal.
CREATE FUNCTION workflow_ext.duplicate_creations(log regclass, OUT creations bigint, OUT first text)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format(
        'SELECT count(*), string_agg(format(''%%s of run "%%s"%%s (%%s rows)'', k.type, k.run_id, '
        '       coalesce('' for "'' || k.correlation_id || ''"'', ''''), k.n), '', '') FILTER (WHERE k.rank <= 5) '
        '  FROM (SELECT run_id::text, correlation_id::text, type::text, count(*) AS n, '
        '               row_number() OVER (ORDER BY run_id::text, correlation_id::text, type::text) AS rank '
        '          FROM %s WHERE type::text IN (''run_created'', ''step_created'', ''wait_created'', ''hook_created'') '
        '             OR (type::text = ''attr_set'' AND correlation_id IS NOT NULL) '
        '         GROUP BY 1, 2, 3 HAVING count(*) > 1) k', log)
        INTO creations, first;
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
-- attaching again only restores a creation index a migration replaced). A
-- table Citus distributes is attached on the coordinator: its rows come
-- back there (undistribute_to_attach) and it is distributed again with
-- distribute(), in this transaction.
--
-- SECURITY INVOKER: the DDL runs with the caller's rights (the caller must
-- own the table), and the registration writes workflow_ext.logs and runs,
-- which only their owner may write; so attach needs a superuser (or the
-- extension owner) and is not executable by PUBLIC (finalize.sql). Nothing
-- the table's owner chose runs with those rights: check_log refuses what
-- would (other triggers, rules, inheritance, column types), and the
-- statements that write the table run as its owner.
CREATE FUNCTION workflow_ext.attach(log regclass, accept_existing boolean DEFAULT false)
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

-- ---------------------------------------------------------------------
-- attach_concurrently: attach without stopping the table's writers
-- (docs/adopting-devkit.md, "Online attach"). The steps, each its own
-- transaction:
--   1. the extension's creation index, built concurrently by a background
--      worker (src/pg/background.rs) under a temporary name;
--   2. a short ACCESS EXCLUSIVE step (attach_concurrently_begin): the seq
--      column (a catalog change), the table's own creation index dropped
--      (its definition kept) and the extension's renamed into its place,
--      the triggers installed in their *adopting* form, the registration;
--      from here every new row is validated and numbered;
--   3. every existing run adopted (adopt_runs), in batches that commit;
--      a writer's first append to a run not adopted yet adopts it itself;
--   4. the seq indexes, built concurrently (after the numbering, whose
--      UPDATE would otherwise add an entry to each for every row);
--   5. the audit (scan), then a short ACCESS EXCLUSIVE step
--      (attach_concurrently_finish): the trigger in its final form.
-- A failed or cancelled attach undoes every step (attach_concurrently_undo).

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

-- What attach would find and do, without doing it: reads the table as
-- scan does (ACCESS SHARE, nothing stronger) and writes nothing. One row
-- per finding: `total` (runs and events), `refused` (what check_log
-- refuses: attach would stop there), one `anomaly: <code>` row per first
-- anomaly code scan reports (the runs, their events, the worst five; a
-- `missing_run_created` run is one whose events were written for a run id
-- never created: orphan events), `duplicate_creations` (what the creation
-- index cannot hold), `verdict` (whether attach succeeds as is, needs
-- accept_existing, or is refused) and `audit_seconds` (how long this read
-- took; attach's audit reads the same, then numbers the rows under ACCESS
-- EXCLUSIVE). SECURITY INVOKER and not executable by PUBLIC, like attach.
CREATE FUNCTION workflow_ext.attach_dry_run(log regclass)
RETURNS TABLE (finding text, runs bigint, events bigint, detail text)
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    anomalous bigint := 0;
    duplicates bigint;
    r record;
BEGIN
    IF log IS NULL THEN
        RAISE EXCEPTION 'log must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log) THEN
        finding := 'verdict';
        detail := 'already attached: attach would only put back a creation index a migration replaced';
        RETURN NEXT;
        RETURN;
    END IF;
    BEGIN
        PERFORM workflow_ext.check_log(log, attaching => true);
    EXCEPTION WHEN OTHERS THEN
        finding := 'refused';
        detail := format('%s: %s', SQLSTATE, SQLERRM);
        RETURN NEXT;
        finding := 'verdict';
        detail := 'attach would be refused before reading the table';
        RETURN NEXT;
        RETURN;
    END;
    EXECUTE format('SELECT count(DISTINCT run_id), count(*) FROM %s', log) INTO runs, events;
    finding := 'total';
    detail := NULL;
    RETURN NEXT;
    FOR r IN SELECT s.first_anomaly AS code, count(*) AS n, sum(s.events)::bigint AS ev,
                    string_agg(format('run "%s" (%s anomalies, first at %s)', s.run_id, s.anomalies, s.first_seq),
                               ', ' ORDER BY s.rank) FILTER (WHERE s.rank <= 5) AS worst
               FROM (SELECT sc.*, row_number() OVER (PARTITION BY sc.first_anomaly
                                                     ORDER BY sc.anomalies DESC, sc.run_id) AS rank
                       FROM workflow_ext.scan(log) sc) s
              GROUP BY s.first_anomaly ORDER BY s.first_anomaly
    LOOP
        finding := 'anomaly: ' || r.code;
        runs := r.n;
        events := r.ev;
        detail := 'worst: ' || r.worst;
        anomalous := anomalous + r.n;
        RETURN NEXT;
    END LOOP;
    SELECT d.creations, d.first INTO duplicates, detail FROM workflow_ext.duplicate_creations(log) d;
    IF duplicates > 0 THEN
        finding := 'duplicate_creations';
        runs := NULL;
        events := duplicates;
        detail := 'first: ' || detail;
        RETURN NEXT;
    END IF;
    finding := 'verdict';
    runs := NULL;
    events := NULL;
    detail := CASE
        WHEN duplicates > 0 THEN 'attach would be refused (23505): remove the duplicate creations first'
        WHEN anomalous > 0 THEN 'attach needs accept_existing => true (55000 without): the past stays as it is, '
                                'new rows are checked'
        ELSE 'attach would succeed'
    END;
    RETURN NEXT;
    finding := 'audit_seconds';
    detail := round(extract(epoch FROM clock_timestamp() - started)::numeric, 3)::text;
    RETURN NEXT;
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

-- If `log`'s creation index is no longer the extension's (a package
-- migration dropped and recreated it, as world-postgres 5.0's 0014 does, or
-- renamed another index onto its name), puts the extension's back, and
-- keeps the package's definition as the one detach restores. Its own
-- CREATE INDEX fires the DDL watcher again, which finds the index intact
-- and returns: no flag, so no session can switch the watcher off.
-- workflow_ext.events is left alone (its index is the extension's own, from
-- schema.sql). Internal.
CREATE FUNCTION workflow_ext.keep_creation_index_of(log regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    idx regclass;
BEGIN
    IF log = 'workflow_ext.events'::regclass
       OR NOT EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation = log)
       OR workflow_ext.creation_index_of(log) IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT i.indexrelid INTO idx
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = log AND c.relname = 'workflow_events_entity_creation_unique';
    IF idx IS NOT NULL THEN
        UPDATE workflow_ext.logs l SET replaced_index = pg_get_indexdef(idx) WHERE l.relation = log;
        EXECUTE format('DROP INDEX %s', idx);
    END IF;
    UPDATE workflow_ext.logs l SET creation_index = workflow_ext.create_creation_index(log)
     WHERE l.relation = log;
END
$$;

-- Event trigger (ddl_command_end): the DDL watcher. After every command
-- that could change what protects an attached log, the log is checked
-- (workflow_ext.check_log); a command that left a log unprotected fails,
-- and with it its transaction: disabling, renaming or re-enabling as
-- REPLICA/ORIGIN the extension's triggers, triggers or rules of one's own,
-- inheritance and partitions, changing the type of a column the extension
-- reads, indexes, constraints, defaults or statistics that call functions
-- of one's own. A creation index recreated or renamed onto its name by a package
-- migration is replaced by the extension's (keep_creation_index_of);
-- renaming the extension's away is refused. Dropping it is allowed (a
-- migration drops and recreates it in one transaction): meanwhile the
-- write path refuses duplicate creations itself. workflow_ext.events is
-- owned by the extension's owner and is not checked. SECURITY DEFINER: the
-- command's role may not read workflow_ext.logs.
CREATE FUNCTION workflow_ext.on_ddl_command_end() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    created oid[];
BEGIN
    IF NOT EXISTS (SELECT FROM workflow_ext.logs l WHERE l.relation <> 'workflow_ext.events'::regclass) THEN
        RETURN;
    END IF;
    -- Triggers this command created: not enabled yet (pg_restore enables
    -- each with its own ALTER TABLE, which is checked).
    SELECT coalesce(array_agg(d.objid), '{}') INTO created
      FROM pg_event_trigger_ddl_commands() d
     WHERE d.classid = 'pg_trigger'::regclass AND d.command_tag = 'CREATE TRIGGER';
    -- The extension's creation index renamed away: refused.
    FOR t IN SELECT DISTINCT i.indrelid::regclass
               FROM pg_event_trigger_ddl_commands() d
               JOIN pg_index i ON i.indexrelid = d.objid
               JOIN pg_class c ON c.oid = d.objid
               JOIN workflow_ext.logs l ON l.relation = i.indrelid
              WHERE d.classid = 'pg_class'::regclass AND d.command_tag = 'ALTER INDEX'
                AND c.relname <> 'workflow_events_entity_creation_unique'
                AND workflow_ext.is_creation_index(c.oid::regclass, i.indrelid::regclass)
                AND workflow_ext.creation_index_of(i.indrelid::regclass) IS NULL
    LOOP
        RAISE EXCEPTION 'cannot rename the creation index of "%"', t
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'workflow_events_entity_creation_unique is the name clients map to "already exists".',
                  HINT = 'The table is attached to workflow_ext; detach it first (workflow_ext.detach).';
    END LOOP;
    -- An index created or renamed onto the name: the extension's back.
    FOR t IN SELECT DISTINCT i.indrelid::regclass
               FROM pg_event_trigger_ddl_commands() d
               JOIN pg_index i ON i.indexrelid = d.objid
               JOIN pg_class c ON c.oid = d.objid
               JOIN workflow_ext.logs l ON l.relation = i.indrelid
              WHERE d.classid = 'pg_class'::regclass AND c.relname = 'workflow_events_entity_creation_unique'
    LOOP
        PERFORM workflow_ext.keep_creation_index_of(t);
    END LOOP;
    -- Every attached log (there are few): a command on another table can
    -- still touch one (CREATE TABLE … INHERITS, ATTACH PARTITION).
    FOR t IN SELECT l.relation FROM workflow_ext.logs l
              WHERE l.relation <> 'workflow_ext.events'::regclass ORDER BY l.relation
    LOOP
        PERFORM workflow_ext.check_log(t, attaching => false, created => created);
    END LOOP;
END
$$;

-- Event trigger (sql_drop): a dropped attached table leaves no registration
-- or run rows behind; dropping one of the extension's triggers from a table
-- that stays attached is refused. (DROP EXTENSION … CASCADE drops this event
-- trigger first, so it cannot refuse that.) SECURITY DEFINER for the
-- internal tables.
CREATE FUNCTION workflow_ext.on_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT d.object_identity
               FROM pg_event_trigger_dropped_objects() d
              WHERE d.object_type = 'trigger'
                AND d.address_names[3] IN ('workflow_ext_validate_insert', 'workflow_ext_append_only',
                                           'workflow_ext_no_truncate')
                AND EXISTS (SELECT FROM workflow_ext.logs l JOIN pg_class c ON c.oid = l.relation
                                                            JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = d.address_names[1] AND c.relname = d.address_names[2])
    LOOP
        RAISE EXCEPTION 'cannot drop trigger % of an attached log', t
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The table is attached to workflow_ext; detach it first (workflow_ext.detach).';
    END LOOP;
    DELETE FROM workflow_ext.runs r
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.log::oid = d.objid;
    DELETE FROM workflow_ext.logs l
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND l.relation::oid = d.objid;
END
$$;

CREATE EVENT TRIGGER workflow_ext_guard_logs ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'CREATE INDEX', 'CREATE TRIGGER', 'ALTER TRIGGER',
                 'CREATE RULE', 'ALTER RULE', 'CREATE TABLE', 'CREATE STATISTICS', 'ALTER STATISTICS',
                 'ALTER DOMAIN')
    EXECUTE FUNCTION workflow_ext.on_ddl_command_end();
CREATE EVENT TRIGGER workflow_ext_forget_dropped ON sql_drop
    EXECUTE FUNCTION workflow_ext.on_drop();
-- They fire under every session_replication_role, like the log's triggers.
ALTER EVENT TRIGGER workflow_ext_guard_logs ENABLE ALWAYS;
ALTER EVENT TRIGGER workflow_ext_forget_dropped ENABLE ALWAYS;

-- What is protected, with the options attach was given.
CREATE VIEW workflow_ext.attached_logs AS
SELECT relation AS log, accept_existing, seq_added, numbered AS rows_numbered,
       replaced_index AS replaced_index_definition, attached_at, attached_by
  FROM workflow_ext.logs;
