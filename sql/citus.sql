-- Scaling out with Citus (docs/scaling-out.md, "Citus"): a log distributed
-- by run_id, its run rows co-located in workflow_ext.distributed_runs, so
-- every per-run guarantee is kept on the node that holds the run
-- (src/pg/citus.rs).

-- Distributes `log` by run_id with Citus, on the coordinator, together with
-- the run table (created distributed on first use, every log co-located with
-- it). Today: the extension's own log, while it is empty. Idempotent: a log
-- distributed by it already is left as it is.
CREATE FUNCTION workflow_ext.distribute(log regclass DEFAULT 'workflow_ext.events')
RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    runs_group integer;
    log_group integer;
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
    IF log <> 'workflow_ext.events'::regclass THEN
        RAISE EXCEPTION 'cannot distribute an attached table yet'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('%s is attached; distribute() takes the extension''s own log, workflow_ext.events.', log);
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'a log is distributed from the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator and call workflow_ext.distribute() there.';
    END IF;
    -- Writers wait while the log and its run rows move.
    LOCK TABLE workflow_ext.events, workflow_ext.distributed_runs IN ACCESS EXCLUSIVE MODE;
    SELECT p.colocationid INTO runs_group FROM pg_dist_partition p
     WHERE p.logicalrelid = 'workflow_ext.distributed_runs'::regclass;
    SELECT p.colocationid INTO log_group FROM pg_dist_partition p WHERE p.logicalrelid = log;
    IF log_group IS NOT NULL THEN
        IF log_group = runs_group THEN
            RETURN;
        END IF;
        RAISE EXCEPTION '% is distributed without its run table', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Citus distributes it, but not co-located with workflow_ext.distributed_runs.',
                  HINT = format('Undistribute it (SELECT undistribute_table(%L)), then call workflow_ext.distribute().', log::text);
    END IF;
    IF EXISTS (SELECT FROM workflow_ext.events) THEN
        RAISE EXCEPTION '% has events', log
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'distribute() takes an empty log: Citus would copy existing rows into the shards as new appends.',
                  HINT = 'Distribute the log before its first append.';
    END IF;
    -- Citus refuses triggers on a distributed table unless told; ours are
    -- the ones it may keep (they touch the co-located shards only).
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- A unique constraint of a distributed table must include the
    -- distribution column: ids are unique per run (those the extension
    -- makes are ULIDs, unique everywhere in practice).
    ALTER TABLE workflow_ext.events DROP CONSTRAINT events_id_key,
        ADD CONSTRAINT events_id_key UNIQUE (run_id, id);
    IF runs_group IS NULL THEN
        PERFORM create_distributed_table('workflow_ext.distributed_runs', 'run_id', colocate_with => 'none');
    END IF;
    PERFORM create_distributed_table(log, 'run_id', colocate_with => 'workflow_ext.distributed_runs');
    -- Its run rows, if any, were in workflow_ext.runs (an empty log has none).
    DELETE FROM workflow_ext.runs r WHERE r.log = distribute.log;
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
