-- A PL/pgSQL implementation of append_suspension_event with the same
-- semantics (validation, idempotent return of the stored event, per-run row
-- lock, dense seq, no creation on a finished run), on its own tables, to
-- measure what the Rust implementation buys. Benchmark only: not installed.
CREATE TABLE pl_runs (run_id text PRIMARY KEY, state text NOT NULL, last_seq bigint NOT NULL)
  WITH (fillfactor = 80);
CREATE TABLE pl_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
INSERT INTO pl_runs SELECT 'run-' || i, 'running', 2 FROM generate_series(1, 1000) i;
INSERT INTO pl_events (id, run_id, seq, type)
SELECT workflow_ext.new_event_id(), 'run-' || i, s, t::workflow_ext.event_type
  FROM generate_series(1, 1000) i, (VALUES (1, 'run_created'), (2, 'run_started')) v(s, t);

CREATE FUNCTION plpgsql_append_suspension_event(p_run text, p_corr text, p_type text, p_payload jsonb DEFAULT NULL)
RETURNS TABLE (event_id text, seq bigint, inserted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp, public AS $$
DECLARE
  v_state text; v_seq bigint; v_id text; v_kind text := split_part(p_type, '_', 1);
BEGIN
  IF p_run IS NULL THEN RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'run_id must not be NULL'; END IF;
  IF p_run = '' THEN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'run_id must not be empty'; END IF;
  IF octet_length(p_run) > 255 OR octet_length(p_corr) > 255 THEN
    RAISE EXCEPTION USING ERRCODE = '22001', MESSAGE = 'identifier too long';
  END IF;
  IF p_type IS NULL OR p_type NOT IN ('run_created', 'step_created', 'wait_created', 'hook_created') THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'not a suspension event type';
  END IF;
  IF (p_type = 'run_created') <> (p_corr IS NULL) THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'correlation id rule';
  END IF;
  IF p_payload IS NOT NULL AND jsonb_typeof(p_payload) <> 'object' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'payload must be a JSON object';
  END IF;
  -- Fast path: a committed creation is final.
  SELECT e.id, e.seq INTO v_id, v_seq FROM public.pl_events e
   WHERE e.run_id = p_run AND e.correlation_id IS NOT DISTINCT FROM p_corr
     AND e.type = p_type::workflow_ext.event_type;
  IF FOUND THEN RETURN QUERY SELECT v_id, v_seq, false; RETURN; END IF;

  IF p_type = 'run_created' THEN
    INSERT INTO public.pl_runs VALUES (p_run, 'pending', 1) ON CONFLICT DO NOTHING;
    IF FOUND THEN
      v_id := workflow_ext.new_event_id();
      INSERT INTO public.pl_events (id, run_id, seq, type, payload) VALUES (v_id, p_run, 1, 'run_created', p_payload);
      RETURN QUERY SELECT v_id, 1::bigint, true; RETURN;
    END IF;
  END IF;

  UPDATE public.pl_runs r SET last_seq = r.last_seq + 1 WHERE r.run_id = p_run
  RETURNING r.state, r.last_seq INTO v_state, v_seq;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '23503', MESSAGE = format('%s refused: run "%s" has no run_created event', p_type, p_run);
  END IF;
  -- Entity state from its last event, read after the lock.
  PERFORM 1 FROM public.pl_events e
   WHERE e.run_id = p_run AND e.correlation_id = p_corr AND split_part(e.type::text, '_', 1) = v_kind LIMIT 1;
  IF FOUND OR p_type = 'run_created' THEN
    UPDATE public.pl_runs r SET last_seq = r.last_seq - 1 WHERE r.run_id = p_run;
    SELECT e.id, e.seq INTO v_id, v_seq FROM public.pl_events e
     WHERE e.run_id = p_run AND e.correlation_id IS NOT DISTINCT FROM p_corr
       AND e.type = p_type::workflow_ext.event_type;
    RETURN QUERY SELECT v_id, v_seq, false; RETURN;
  END IF;
  IF v_state IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('%s refused: the run is already %s', p_type, v_state);
  END IF;
  v_id := workflow_ext.new_event_id();
  INSERT INTO public.pl_events (id, run_id, seq, type, correlation_id, payload)
  VALUES (v_id, p_run, v_seq, p_type::workflow_ext.event_type, p_corr, p_payload);
  RETURN QUERY SELECT v_id, v_seq, true;
END $$;
