-- append_suspension_event: append once, then return the stored event.
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', NULL, 'run_created');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', NULL, 'run_created');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'step_a', 'step_created', '{"stepName": "a", "input": [1]}');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'step_a', 'step_created', '{"stepName": "a", "input": [2]}');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'wait_a', 'wait_created', '{"resumeAt": "2026-01-01T00:00:00Z"}');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'hook_a', 'hook_created', '{"token": "t1"}');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'hook_a', 'hook_created');
-- The same correlation id under another creation type is another entity.
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'step_a', 'wait_created');
-- Every call for a key returns the same event id: the stored one.
SELECT count(DISTINCT event_id) AS ids, bool_and(event_id = (
         SELECT id FROM workflow_ext.events WHERE run_id = 'run-1' AND correlation_id = 'step_a' AND type = 'step_created')) AS all_the_stored_one
  FROM generate_series(1, 5), workflow_ext.append_suspension_event('run-1', 'step_a', 'step_created');
-- The first payload is kept; duplicates write nothing.
SELECT seq, type, correlation_id, payload FROM workflow_ext.events WHERE run_id = 'run-1' ORDER BY seq;
-- Another run numbers its own events from 1.
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-2', NULL, 'run_created');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-2', 'step_a', 'step_created');
-- A creation for a run without run_created is refused: 23503.
SELECT try($$SELECT workflow_ext.append_suspension_event('run-none', 'step_a', 'step_created')$$);
SELECT count(*) FROM workflow_ext.events WHERE run_id = 'run-none';
-- Only creation types are accepted here.
SELECT try($$SELECT workflow_ext.append_suspension_event('run-1', 'step_a', 'step_started')$$);
SELECT try($$SELECT workflow_ext.append_suspension_event('run-1', NULL, 'run_started')$$);
-- A creation after the run finished is refused, even through the idempotent path.
SELECT seq FROM workflow_ext.append_event('run-2', NULL, 'run_cancelled');
SELECT try($$SELECT workflow_ext.append_suspension_event('run-2', 'step_b', 'step_created')$$);
-- ...but asking again for an entity that exists still returns it.
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-2', 'step_a', 'step_created');
-- A stored creation asked for again is answered from the creation index
-- (src/write/creation_probe.rs): the same event, and only the lock a read takes
-- (the insert statement would take RowExclusiveLock on the log).
BEGIN;
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-2', 'step_a', 'step_created');
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-2', NULL, 'run_created');
SELECT string_agg(DISTINCT mode, ', ') AS log_locks FROM pg_locks
 WHERE pid = pg_backend_pid() AND relation = 'workflow_ext.events'::regclass;
COMMIT;
-- A new key the probe found absent is inserted by the INSERT alone, which
-- does not look the creation up again: the log is scanned three times in
-- this transaction (the probe, the ON CONFLICT arbiter, the trigger's read
-- of the step's last event); the statement with its lookup scanned it four
-- (the backend's counts not yet reported, hence a difference).
BEGIN;
SELECT seq_scan + idx_scan AS scans_before FROM pg_stat_xact_all_tables
 WHERE relid = 'workflow_ext.events'::regclass \gset
SELECT seq, inserted FROM workflow_ext.append_suspension_event('run-1', 'step_new', 'step_created');
SELECT seq_scan + idx_scan - :scans_before AS scans_of_the_log FROM pg_stat_xact_all_tables
 WHERE relid = 'workflow_ext.events'::regclass;
ROLLBACK;
-- Seqs are dense per run.
SELECT run_id, count(*), min(seq), max(seq) FROM workflow_ext.events GROUP BY run_id ORDER BY run_id;
-- Batch creation: one row per input, in input order; idempotent per key
-- (a key repeated in the batch, or already stored, comes back inserted = f).
SELECT workflow_ext.append_suspension_event('batch_1', NULL, 'run_created') IS NOT NULL AS created;
SELECT correlation_id, seq, inserted
  FROM workflow_ext.append_suspension_events('batch_1',
         ARRAY['s3', 's1', 'w1', 's1', 'h1'],
         ARRAY['step_created', 'step_created', 'wait_created', 'step_created', 'hook_created'],
         ARRAY['{"stepName": "c"}', '{"stepName": "a"}', NULL, NULL, '{"token": "batch-tok"}']::jsonb[]);
SELECT correlation_id, seq, inserted
  FROM workflow_ext.append_suspension_events('batch_1', ARRAY['s1', 's9'], ARRAY['step_created', 'step_created']);
-- Same ids as the first call returned.
SELECT count(DISTINCT event_id) AS ids
  FROM workflow_ext.append_suspension_events('batch_1', ARRAY['s1', 's1', 's1'],
                                             ARRAY['step_created', 'step_created', 'step_created']);
-- A bad element anywhere writes nothing.
SELECT count(*) AS before FROM workflow_ext.events WHERE run_id = 'batch_1';
SELECT try($$SELECT * FROM workflow_ext.append_suspension_events('batch_1', ARRAY['n1', 'n2'], ARRAY['step_created', 'step_started'])$$);
SELECT try($$SELECT * FROM workflow_ext.append_suspension_events('batch_1', ARRAY['n1', 'n2'], ARRAY['step_created'])$$);
SELECT try($$SELECT * FROM workflow_ext.append_suspension_events('batch_1', ARRAY['n1'], ARRAY['step_created'], ARRAY[NULL, NULL]::jsonb[])$$);
SELECT try($$SELECT * FROM workflow_ext.append_suspension_events('batch_1', NULL, ARRAY['step_created'])$$);
SELECT try($$SELECT * FROM workflow_ext.append_suspension_events('nope', ARRAY['n1'], ARRAY['step_created'])$$);
SELECT count(*) AS after FROM workflow_ext.events WHERE run_id = 'batch_1';
-- Empty batch: nothing.
SELECT count(*) AS empty FROM workflow_ext.append_suspension_events('batch_1', '{}', '{}');
-- Dense seqs.
SELECT array_agg(seq ORDER BY seq) AS seqs FROM workflow_ext.events WHERE run_id = 'batch_1';
