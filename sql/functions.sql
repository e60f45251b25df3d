-- The SQL surface. Rust provides the bodies (AS 'MODULE_PATHNAME', '<fn>_wrapper');
-- signatures, volatility, security and search_path are declared here, in
-- one place, next to the reason for each choice.
--
-- Every function that runs SQL is immune to the caller's search_path, so a
-- caller cannot redirect the extension's statements with look-alike tables,
-- types, functions or operators earlier on its own path. Two ways:
-- - the write path (the events trigger, append_suspension_event[s],
--   append_event) spells every name with its schema, operators included
--   (OPERATOR(pg_catalog.=), see src/pg/plans.rs), and pins nothing: a pinned
--   search_path is a GUC pushed and popped on every call, which cost a
--   quarter of an append's time (BENCHMARKS.md);
-- - every other function pins search_path to pg_catalog, then pg_temp (last,
--   explicitly, so a temporary object can never shadow anything).

-- Triggers -------------------------------------------------------------------

-- The single validator of every protected log (src/write/trigger.rs):
-- workflow_ext.events and each attached table. It writes workflow_ext.runs,
-- which clients may not touch: SECURITY DEFINER (the extension owner) is what
-- lets any role that may INSERT into a log have its row validated and
-- stamped. It runs only fixed, parameterised, fully qualified statements
-- (no search_path pin: see the top of this file).
CREATE FUNCTION workflow_ext.events_before_insert() RETURNS trigger
    LANGUAGE c SECURITY DEFINER
    AS 'MODULE_PATHNAME', 'events_before_insert_wrapper';

-- Refuses UPDATE, DELETE and TRUNCATE of the log (purge_runs excepted).
CREATE FUNCTION workflow_ext.events_refuse_change() RETURNS trigger
    LANGUAGE c SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'events_refuse_change_wrapper';

-- Takes and releases hook tokens (AFTER INSERT, for the few event types that
-- concern them; see the WHEN clause in finalize.sql). PL/pgSQL on purpose: a
-- token taken by another active hook fails the INSERT with PostgreSQL's own
-- 23505 on workflow_hook_token_unique, which reaches the client with its
-- constraint, table and schema fields (an error re-raised through Rust loses
-- them). SECURITY DEFINER: hook_tokens is internal; fixed statements only.
CREATE FUNCTION workflow_ext.events_track_hook_tokens() RETURNS trigger
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

-- Recomputes hook_tokens from the log: the token of every hook_created whose
-- hook was neither disposed nor ended with its run, first taker first (a log
-- with past double owners keeps the earliest; scan reports the rest as
-- token_conflict). Returns the number of tokens held. SECURITY DEFINER for the
-- internal table; not executable by PUBLIC (finalize.sql).
CREATE FUNCTION workflow_ext.rebuild_hook_tokens() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE workflow_ext.hook_tokens IN EXCLUSIVE MODE;
    DELETE FROM workflow_ext.hook_tokens;
    INSERT INTO workflow_ext.hook_tokens (token, run_id, correlation_id, event_id, taken_at)
    SELECT c.payload ->> 'token', c.run_id, c.correlation_id, c.id, c.created_at
      FROM workflow_ext.events c
     WHERE c.type = 'hook_created' AND jsonb_typeof(c.payload -> 'token') = 'string'
       AND NOT EXISTS (SELECT FROM workflow_ext.events e
                        WHERE e.run_id = c.run_id
                          AND ((e.type = 'hook_disposed' AND e.correlation_id = c.correlation_id)
                               OR e.type IN ('run_completed', 'run_failed', 'run_cancelled')))
     ORDER BY c.created_at, c.run_id, c.seq
    ON CONFLICT (token) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The state a run's stored events (their types, in log order) leave it in,
-- by the writer's lifecycle (src/rules/fold.rs): attach seeds runs with it.
-- Pure: IMMUTABLE, STRICT, PARALLEL SAFE; runs no SQL.
CREATE FUNCTION workflow_ext.run_state(types text[]) RETURNS text
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'run_state_wrapper';

-- Appends ----------------------------------------------------------------------

-- Idempotent creation. SECURITY INVOKER: appending needs INSERT and SELECT on
-- workflow_ext.events, so who may append is governed by the table's grants;
-- the trigger does the privileged part. Not STRICT: NULL arguments get a
-- named error (22004) instead of a silent NULL result.
CREATE FUNCTION workflow_ext.append_suspension_event(
    run_id text, correlation_id text, type text, payload jsonb DEFAULT NULL
) RETURNS TABLE (event_id text, seq bigint, inserted boolean)
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'append_suspension_event_wrapper';

-- Batch creation: what one suspension with Promise.all over many steps needs
-- (src/write/batch.rs). Each element is append_suspension_event's (idempotent per
-- key, the same validation, the same race guarantees), in input order; one
-- INSERT statement, so a bad element anywhere writes nothing, and the run is
-- locked once for the whole batch. SECURITY INVOKER, like the single call:
-- the INSERT needs the caller's own INSERT right on workflow_ext.events.
CREATE FUNCTION workflow_ext.append_suspension_events(
    run_id text, correlation_ids text[], types text[], payloads jsonb[] DEFAULT NULL
) RETURNS TABLE (correlation_id text, event_id text, seq bigint, inserted boolean)
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'append_suspension_events_wrapper';

-- Validated append of any event type; a duplicate creation fails with 23505.
-- The body is the INSERT alone: the events trigger checks everything, and an
-- error reaches the caller exactly as PostgreSQL raised it, so a duplicate's
-- 23505 keeps its constraint, table and schema fields (clients such as
-- world-postgres match on constraint_name). PL/pgSQL caches the plan.
-- SECURITY INVOKER for the same reason as above.
CREATE FUNCTION workflow_ext.checked_event_type(type text) RETURNS text
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'checked_event_type_wrapper';

CREATE FUNCTION workflow_ext.append_event(
    run_id text, correlation_id text, type text, payload jsonb DEFAULT NULL
) RETURNS TABLE (event_id text, seq bigint)
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    RETURN QUERY
    INSERT INTO workflow_ext.events AS e (run_id, correlation_id, type, payload)
    VALUES ($1, $2, workflow_ext.checked_event_type($3)::workflow_ext.event_type, $4)
    RETURNING e.id, e.seq;
END
$$;

-- A fresh wevt_<ULID>, monotonic within the session (session state, hence
-- VOLATILE and PARALLEL RESTRICTED). Runs no SQL: no search_path needed.
CREATE FUNCTION workflow_ext.new_event_id() RETURNS text
    LANGUAGE c VOLATILE PARALLEL RESTRICTED STRICT
    AS 'MODULE_PATHNAME', 'new_event_id_wrapper';

-- Fan-in -----------------------------------------------------------------------

-- Writes the internal join tables, which clients may not touch: SECURITY
-- DEFINER, fixed parameterised statements only.
CREATE FUNCTION workflow_ext.join_arrive(
    run_id text, join_key text, member_key text, expected integer
) RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'join_arrive_wrapper';

-- Retention ----------------------------------------------------------------------

-- Deletes history: SECURITY DEFINER so it may pass the append-only trigger,
-- and not executable by PUBLIC (see finalize.sql); the owner grants it to an
-- operations role.
CREATE FUNCTION workflow_ext.purge_runs(older_than interval) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'purge_runs_wrapper';

-- Bootstrap ---------------------------------------------------------------------

-- SECURITY INVOKER and no search_path pin, on purpose: the DDL runs as the
-- caller with the caller's search_path, so the function is no way around
-- privileges, and unqualified names land where the caller expects. The
-- function's own statements are fully qualified (operators included); the
-- ledger is written as its owner with SECURITY_RESTRICTED_OPERATION
-- (src/features/bootstrap.rs), so no role can forge an "already applied" row.
CREATE FUNCTION workflow_ext.bootstrap(name text, ddl text) RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_wrapper';

-- The same ledger and lock around any migrator (src/features/bootstrap.rs). SECURITY
-- INVOKER: they run no caller-supplied SQL; the ledger row is written as its
-- owner (as in bootstrap). Everything is qualified, like bootstrap. Not
-- STRICT: NULL arguments get a named error.
CREATE FUNCTION workflow_ext.bootstrap_begin(name text, timeout interval DEFAULT NULL, checksum text DEFAULT NULL)
RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_begin_wrapper';

CREATE FUNCTION workflow_ext.bootstrap_end(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_end_wrapper';

-- Replay audit ------------------------------------------------------------------

-- SECURITY INVOKER: reading a source needs the caller's own SELECT right, so
-- the audit can never show a table the caller may not read. The source is a
-- regclass (an OID), rendered back by regclass output: it cannot inject SQL.
-- enable_sort = off: the events are streamed in replay order, which an
-- index on (run_id, seq) gives as it is walked; left to itself the planner
-- often prefers a bitmap scan and a sort, which for a long run spills to
-- disk and costs a third more (BENCHMARKS.md). A source without such an
-- index is still sorted. jit = off: a sort the planner must still do (that
-- source, the hook-token check) then looks 10^10 expensive, and was
-- compiled on every call (0.6 s of JIT for a 16,000-event run's tokens).
CREATE FUNCTION workflow_ext.replay(run_id text, source regclass DEFAULT 'workflow_ext.events')
RETURNS TABLE (seq bigint, event_id text, event_type text, correlation_id text, anomaly text, detail text)
    LANGUAGE c STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp SET enable_sort = off SET jit = off
    AS 'MODULE_PATHNAME', 'replay_wrapper';

-- One row per run with anomalies, for periodic monitoring (enable_sort and
-- jit: as replay).
CREATE FUNCTION workflow_ext.scan(source regclass DEFAULT 'workflow_ext.events', since timestamptz DEFAULT NULL)
RETURNS TABLE (run_id text, events bigint, anomalies bigint, first_seq bigint, first_anomaly text, first_detail text)
    LANGUAGE c STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp SET enable_sort = off SET jit = off
    AS 'MODULE_PATHNAME', 'scan_wrapper';
