-- workflow_ext 0.1.0 → 0.2.0 (ALTER EXTENSION workflow_ext UPDATE).
-- Keep in step with sql/schema.sql and sql/functions.sql: the upgrade test
-- compares an upgraded install with a fresh one, object by object.

-- bootstrap_begin/end record migrator runs, which have no DDL text and may
-- have no checksum.
ALTER TABLE workflow_ext.bootstraps ALTER COLUMN checksum DROP NOT NULL;
ALTER TABLE workflow_ext.bootstraps ALTER COLUMN ddl DROP NOT NULL;

CREATE FUNCTION workflow_ext.bootstrap_begin(name text, timeout interval DEFAULT NULL, checksum text DEFAULT NULL)
RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_begin_wrapper';

CREATE FUNCTION workflow_ext.bootstrap_end(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_end_wrapper';

-- Hook tokens (one active owner per token): the table, its maintenance, and
-- the trigger that keeps it (as in schema.sql, functions.sql, finalize.sql).
-- Tokens held by active hooks: one row per token, database-wide (a token
-- addresses a webhook from outside, so two active hooks holding one would
-- wake two workflows with one delivery). Derived from the log, never written
-- by clients: a hook_created whose payload carries "token" takes it (the
-- unique constraint decides between racing creators), its hook_disposed or
-- its run's terminal event releases it; rebuild_hook_tokens() recomputes it.
CREATE TABLE workflow_ext.hook_tokens (
    token          text        NOT NULL,
    run_id         text        NOT NULL,
    correlation_id text        NOT NULL,
    event_id       text        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    -- The name is the contract: a losing creator's 23505 names it.
    CONSTRAINT workflow_hook_token_unique PRIMARY KEY (token)
);
CREATE INDEX hook_tokens_run ON workflow_ext.hook_tokens (run_id, correlation_id);

SELECT pg_catalog.pg_extension_config_dump('workflow_ext.hook_tokens', '');

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

CREATE TRIGGER events_hook_tokens
    AFTER INSERT ON workflow_ext.events
    FOR EACH ROW
    WHEN (NEW.type IN ('hook_created', 'hook_disposed', 'run_completed', 'run_failed', 'run_cancelled'))
    EXECUTE FUNCTION workflow_ext.events_track_hook_tokens();
ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER events_hook_tokens;
REVOKE ALL ON FUNCTION workflow_ext.events_track_hook_tokens() FROM PUBLIC;
REVOKE ALL ON FUNCTION workflow_ext.rebuild_hook_tokens() FROM PUBLIC;
REVOKE ALL ON workflow_ext.hook_tokens FROM PUBLIC;

-- Hooks by token, for replay's check of a run's tokens against other runs.
CREATE INDEX events_hook_token
    ON workflow_ext.events ((payload ->> 'token'))
    WHERE type = 'hook_created';

-- Tokens held by hooks already in the log.
SELECT workflow_ext.rebuild_hook_tokens();

-- Batch creation: what one suspension with Promise.all over many steps needs.
-- Each element is append_suspension_event's (idempotent per key, the same
-- validation, the same race guarantees), in input order; one statement, so
-- a bad element anywhere writes nothing. PL/pgSQL only checks the arrays and
-- unnests them; the rules stay in one place. SECURITY INVOKER, like the
-- single call.
CREATE FUNCTION workflow_ext.append_suspension_events(
    run_id text, correlation_ids text[], types text[], payloads jsonb[] DEFAULT NULL
) RETURNS TABLE (correlation_id text, event_id text, seq bigint, inserted boolean)
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF correlation_ids IS NULL OR types IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN types IS NULL THEN 'types' ELSE 'correlation_ids' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_ndims(correlation_ids) > 1 OR array_ndims(types) > 1 OR array_ndims(payloads) > 1
       OR cardinality(correlation_ids) <> cardinality(types)
       OR cardinality(payloads) <> cardinality(types) THEN
        RAISE EXCEPTION 'input arrays do not match'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('correlation_ids has %s elements, types %s, payloads %s; each must be one-dimensional.',
                                  cardinality(correlation_ids), cardinality(types),
                                  coalesce(cardinality(payloads)::text, 'none')),
                  HINT = 'Pass one correlation id, one type and (if any) one payload per event.';
    END IF;
    RETURN QUERY
    SELECT u.c, a.event_id, a.seq, a.inserted
      FROM unnest(correlation_ids, types,
                  coalesce(payloads, array_fill(NULL::jsonb, ARRAY[cardinality(types)])))
           WITH ORDINALITY AS u(c, t, p, n)
     CROSS JOIN LATERAL workflow_ext.append_suspension_event(run_id, u.c, u.t, u.p) a
     ORDER BY u.n;
END
$$;
