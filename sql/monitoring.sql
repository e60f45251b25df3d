-- Monitoring: what an operator scrapes (metrics) and drills into
-- (stuck_runs). Both read the active runs through runs_active, so their
-- cost follows the runs not finished yet, not the size of the log; readable
-- by pg_monitor (finalize.sql). SECURITY DEFINER: they read the internal
-- runs table and the logs, which a monitoring role may not; they return
-- counts and the ids of stuck runs, never payloads.

-- The write path's counters since the server started (src/pg/counters.rs):
-- `appended` (events the validator admitted, also in transactions that rolled
-- back later), one row per anomaly code refused, and runs_completed /
-- runs_failed / runs_cancelled (runs that reached that state). No rows unless
-- workflow_ext is in shared_preload_libraries.
CREATE FUNCTION workflow_ext.counters_since_start() RETURNS TABLE (counter text, value bigint)
    LANGUAGE c VOLATILE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'counters_since_start_wrapper';

-- The active entities a run's events (in log order) leave, by the writer's
-- rules (src/pg/counters.rs): "<kind> <correlation id> (<state>)". Pure.
CREATE FUNCTION workflow_ext.active_entities_of(types text[], correlation_ids text[]) RETURNS text[]
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'active_entities_of_wrapper';

-- One row per protected log: its runs not finished yet by state, how many of
-- them had no append for longer than `idle`, the age of the oldest, and the
-- rows inserted into the log since the statistics were last reset (for a log
-- Citus distributes: into its shards, on every node).
CREATE FUNCTION workflow_ext.metrics(idle interval DEFAULT '1 hour')
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
