-- workflow_ext 0.3.0 -> 0.4.0 (ALTER EXTENSION workflow_ext UPDATE).
--
-- 1. append_suspension_events is written in Rust (src/batch.rs): one INSERT
--    for the whole batch, the run locked once for it. Same signature,
--    results and errors; CREATE OR REPLACE keeps its privileges.
-- 2. The write path no longer pins search_path (its statements qualify every
--    name instead; sql/functions.sql says why).
-- 3. replay and scan stream in index order (enable_sort = off).
CREATE OR REPLACE FUNCTION workflow_ext.append_suspension_events(
    run_id text, correlation_ids text[], types text[], payloads jsonb[] DEFAULT NULL
) RETURNS TABLE (correlation_id text, event_id text, seq bigint, inserted boolean)
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'append_suspension_events_wrapper';

ALTER FUNCTION workflow_ext.events_before_insert() RESET search_path;
ALTER FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb) RESET search_path;
ALTER FUNCTION workflow_ext.append_event(text, text, text, jsonb) RESET search_path;

ALTER FUNCTION workflow_ext.replay(text, regclass) SET enable_sort = off;
ALTER FUNCTION workflow_ext.scan(regclass, timestamptz) SET enable_sort = off;
