-- Runs last: triggers and privileges.

-- The events trigger is the single validator of the log (src/write/trigger.rs).
-- ENABLE ALWAYS: it also fires under session_replication_role = replica,
-- which otherwise silences ordinary triggers.
CREATE TRIGGER events_validate_insert
    BEFORE INSERT ON workflow_ext.events
    FOR EACH ROW EXECUTE FUNCTION workflow_ext.events_before_insert();
-- AFTER, so only rows the validator admitted (and an ON CONFLICT skip never)
-- take or release tokens.
CREATE TRIGGER events_hook_tokens
    AFTER INSERT ON workflow_ext.events
    FOR EACH ROW
    WHEN (NEW.type IN ('hook_created', 'hook_disposed', 'run_completed', 'run_failed', 'run_cancelled'))
    EXECUTE FUNCTION workflow_ext.events_track_hook_tokens();
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON workflow_ext.events
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON workflow_ext.events
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_ext.events_refuse_change();
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_validate_insert;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_hook_tokens;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Privileges -----------------------------------------------------------------
-- (SECURITY DEFINER and search_path choices are explained in functions.sql.)
REVOKE ALL ON FUNCTION workflow_ext.events_before_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.events_refuse_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.purge_runs(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.events_track_hook_tokens() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.rebuild_hook_tokens() FROM PUBLIC;
-- attach/detach change another table's triggers and indexes and register it
-- in the internal logs table (see attach.sql): for a superuser or the roles
-- it grants them to. The helpers are internal.
REVOKE ALL ON FUNCTION workflow_ext.attach(regclass, boolean) FROM PUBLIC;
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
REVOKE ALL ON FUNCTION workflow_ext.detach(regclass) FROM PUBLIC;
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
REVOKE ALL ON FUNCTION workflow_ext.attach_dry_run(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.duplicate_creations(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.create_creation_index(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.keep_creation_index_of(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.execute_as_owner(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.seq_in_run(oid, oid, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.check_log(regclass, boolean, oid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.check_log_columns(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.is_creation_index(regclass, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.creation_index_of(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.predicate_shape(text) FROM PUBLIC;
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
                       workflow_ext.counters_since_start(),
                       workflow_ext.counters_on_every_node() FROM PUBLIC;
-- Monitoring: pg_monitor (PostgreSQL's predefined role for monitoring
-- agents, e.g. prometheus-postgres-exporter) may call the monitoring
-- functions and list the protected logs; nothing else.
GRANT USAGE ON SCHEMA workflow_ext TO pg_monitor;
GRANT EXECUTE ON FUNCTION workflow_ext.metrics(interval), workflow_ext.stuck_runs(interval),
                          workflow_ext.counters_since_start(),
                          workflow_ext.counters_on_every_node() TO pg_monitor;
GRANT SELECT ON workflow_ext.attached_logs TO pg_monitor;
