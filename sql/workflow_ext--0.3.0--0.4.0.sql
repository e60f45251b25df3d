-- workflow_ext 0.3.0 -> 0.4.0 (ALTER EXTENSION workflow_ext UPDATE).
--
-- append_suspension_events is written in Rust (src/batch.rs): one INSERT for
-- the whole batch, the run locked once for it. Same signature, results and
-- errors; CREATE OR REPLACE keeps its privileges.
CREATE OR REPLACE FUNCTION workflow_ext.append_suspension_events(
    run_id text, correlation_ids text[], types text[], payloads jsonb[] DEFAULT NULL
) RETURNS TABLE (correlation_id text, event_id text, seq bigint, inserted boolean)
    LANGUAGE c VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'append_suspension_events_wrapper';
