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
