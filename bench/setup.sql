-- Benchmark database set-up (bench/bench.py). Not part of the extension.
CREATE EXTENSION workflow_ext;

-- The raw limit: a table of the same shape and indexes as workflow_ext.events,
-- without the trigger (no lifecycle check, no dense seq: a sequence instead).
CREATE TABLE raw_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE SEQUENCE raw_seq;

-- The floor of a dense per-run seq: the same table again, and a run row
-- bumped in the same statement as the insert (no validation, no trigger, no
-- idempotent read-back). What any implementation of the guarantee pays.
CREATE TABLE floor_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE floor_runs (run_id text PRIMARY KEY, last_seq bigint NOT NULL) WITH (fillfactor = 80);
INSERT INTO floor_runs SELECT 'run-' || i, 2 FROM generate_series(1, 1000) i;
-- The row-lock floor: the run row locked FOR UPDATE, seq = max(seq) + 1.
CREATE TABLE lock_floor_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
-- The advisory-lock floor: a transaction-scoped advisory lock on the run's
-- hash, seq = max(seq) + 1 (no run row at all).
CREATE TABLE adv_floor_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);

-- The floor of a validated plain INSERT: what any write path that checks a
-- client's own INSERT pays at least, a BEFORE ROW trigger (the one hook
-- PostgreSQL gives every route into a table) that bumps the run row and
-- stamps seq and id, and nothing else (no lifecycle, no entity read).
CREATE TABLE trig_floor_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE trig_floor_runs (run_id text PRIMARY KEY, last_seq bigint NOT NULL) WITH (fillfactor = 80);
INSERT INTO trig_floor_runs SELECT 'run-' || i, 2 FROM generate_series(1, 1000) i;
CREATE FUNCTION trig_floor_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE trig_floor_runs SET last_seq = last_seq + 1 WHERE run_id = NEW.run_id
    RETURNING last_seq INTO NEW.seq;
  NEW.id := coalesce(NEW.id, workflow_ext.new_event_id());
  RETURN NEW;
END $$;
CREATE TRIGGER trig_floor_seq BEFORE INSERT ON trig_floor_events FOR EACH ROW EXECUTE FUNCTION trig_floor_seq();

-- The same two inserts as the raw limit and the dense-seq floor, each inside
-- a PL/pgSQL function of append_suspension_event's result shape: what a
-- function call adds to them. fn_floor is the floor of any one-call append
-- that keeps a dense per-run seq (no validation, no read-back), fn_select
-- that of any one-call answer for an existing key.
CREATE TABLE fn_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE fn_floor_events (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE FUNCTION fn_insert(p_run text, p_corr text) RETURNS TABLE (event_id text, seq bigint, inserted boolean)
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY INSERT INTO fn_events AS e (id, run_id, seq, type, correlation_id)
    VALUES (workflow_ext.new_event_id(), p_run, nextval('raw_seq'), 'step_created', p_corr)
    ON CONFLICT (run_id, correlation_id, type)
       WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created') DO NOTHING
    RETURNING e.id, e.seq, true;
END $$;
CREATE FUNCTION fn_floor(p_run text, p_corr text) RETURNS TABLE (event_id text, seq bigint, inserted boolean)
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY WITH u AS (UPDATE floor_runs r SET last_seq = r.last_seq + 1 WHERE r.run_id = p_run RETURNING r.last_seq)
    INSERT INTO fn_floor_events AS e (id, run_id, seq, type, correlation_id)
    SELECT workflow_ext.new_event_id(), p_run, u.last_seq, 'step_created', p_corr FROM u
    ON CONFLICT (run_id, correlation_id, type)
       WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created') DO NOTHING
    RETURNING e.id, e.seq, true;
END $$;
-- The trigger floor (trig_floor_events above) in the same function: the
-- floor of a one-call append whose table also validates every other route
-- into it, so the function's insert fires the table's row trigger.
CREATE FUNCTION fn_trig_floor(p_run text, p_corr text) RETURNS TABLE (event_id text, seq bigint, inserted boolean)
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY INSERT INTO trig_floor_events AS e (run_id, type, correlation_id)
    VALUES (p_run, 'step_created', p_corr)
    ON CONFLICT (run_id, correlation_id, type)
       WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created') DO NOTHING
    RETURNING e.id, e.seq, true;
END $$;
CREATE FUNCTION fn_select(p_run text, p_corr text) RETURNS TABLE (event_id text, seq bigint, inserted boolean)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN QUERY SELECT e.id, e.seq, false FROM workflow_ext.events e
    WHERE e.run_id = p_run AND e.correlation_id = p_corr AND e.type = 'step_created';
END $$;

-- The DevKit world's entity table for the client-side path (workflow_steps:
-- primary key step_id).
CREATE TABLE cs_steps (step_id text PRIMARY KEY, run_id text NOT NULL, status text NOT NULL,
                       created_at timestamptz NOT NULL DEFAULT now());

-- Runs for the append workloads, and a run whose 1,000 steps exist already.
SELECT count(*) FROM (SELECT workflow_ext.append_event('run-' || i, NULL, 'run_created'),
                             workflow_ext.append_event('run-' || i, NULL, 'run_started')
                        FROM generate_series(1, 1000) i) x;
SELECT count(*) FROM workflow_ext.append_event('dup-run', NULL, 'run_created');
INSERT INTO workflow_ext.events (run_id, correlation_id, type)
SELECT 'dup-run', 'step_' || i, 'step_created' FROM generate_series(1, 1000) i ORDER BY i;

-- A run of exactly n events: created, started, then step lifecycles
-- (created, started, completed), through the validating trigger.
CREATE FUNCTION make_run(r text, n int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO workflow_ext.events (run_id, correlation_id, type)
  SELECT r, c, t::workflow_ext.event_type FROM (
    SELECT 1 AS o, NULL AS c, 'run_created' AS t
    UNION ALL SELECT 2, NULL, 'run_started'
    UNION ALL SELECT 3 + i, 'step_' || (i / 3), (ARRAY['step_created', 'step_started', 'step_completed'])[i % 3 + 1]
      FROM generate_series(0, n - 3) i
  ) s ORDER BY o;
$$;


-- Appends `steps` more step lifecycles to run r, from step number `first`.
-- bench.py grows its 1M-event run with it, in transactions of 10,000
-- events: within one transaction every append to a run adds a version of
-- its run row that nobody can prune before commit, so one transaction of n
-- appends to one run costs O(n^2) (BENCHMARKS.md).
CREATE FUNCTION extend_run(r text, first int, steps int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO workflow_ext.events (run_id, correlation_id, type)
  SELECT r, 'step_' || (first + i / 3), ((ARRAY['step_created', 'step_started', 'step_completed'])[i % 3 + 1])::workflow_ext.event_type
    FROM generate_series(0, 3 * steps - 1) i ORDER BY i;
$$;

-- The plain ordered read of one run's replay columns (id, correlation_id,
-- type, seq in seq order), every value deformed in the server (summed
-- lengths, nothing sent): replay's limit. As PostgreSQL plans it (often a
-- bitmap scan and a sort) in bench.py's script; here forced onto the
-- primary key's order, which is what replay itself walks.
CREATE FUNCTION ordered_read_in_index_order(r text) RETURNS numeric
LANGUAGE sql STABLE SET enable_sort = off AS $$
  SELECT sum(length(id) + coalesce(length(correlation_id), 0) + length(type::text) + seq)
    FROM (SELECT id, correlation_id, type, seq FROM workflow_ext.events WHERE run_id = r ORDER BY seq) s
$$;
