-- Many appends to a run in one transaction give exactly what one append
-- per transaction gives: the same rows, the same seqs, the same errors, the
-- same run rows (src/write/run_cache.rs keeps a locked run's state in
-- memory until the commit). One script of legal and illegal events, with
-- successes rolled back by a savepoint (undo), is played three ways:
--   single:  one transaction per event (a procedure that commits each);
--   loop:    all in one transaction, each event in a subtransaction (try);
--   mixed:   the same, through append_event (in the same transaction).
CREATE TABLE script (n int PRIMARY KEY, run text, corr text, type text, undo boolean DEFAULT false);
INSERT INTO script (n, run, corr, type, undo) VALUES
  (1,  'r1', NULL, 'run_created',    false),
  (2,  'r1', NULL, 'run_started',    false),
  (3,  'r1', 's1', 'step_created',   false),
  (4,  'r1', 's1', 'step_started',   false),
  (5,  'r2', 's1', 'step_created',   false),  -- no run yet
  (6,  'r2', NULL, 'run_created',    false),
  (7,  'r1', 's1', 'step_completed', false),
  (8,  'r1', 's1', 'step_started',   false),  -- step already completed
  (9,  'r1', 's1', 'step_created',   false),  -- duplicate creation
  (10, 'r1', 's9', 'step_created',   true),   -- rolled back
  (11, 'r1', 's9', 'step_started',   false),  -- so s9 does not exist
  (12, 'r2', NULL, 'run_created',    false),  -- duplicate run
  (13, 'r1', 'w1', 'wait_created',   false),
  (14, 'r2', NULL, 'run_started',    true),   -- rolled back: r2 stays pending
  (15, 'r2', NULL, 'run_failed',     false),
  (16, 'r1', 'w1', 'wait_completed', false),
  (17, 'r1', 'w1', 'wait_completed', false),  -- wait already completed
  (18, 'r1', NULL, 'run_completed',  false),
  (19, 'r1', 's2', 'step_created',   false),  -- run finished
  (20, 'r2', NULL, 'run_started',    false),  -- run failed
  (21, 'r3', NULL, 'run_created',    false),
  (22, 'r3', 's1', 'step_created',   false),
  (23, 'r3', NULL, 'run_cancelled',  true),   -- rolled back
  (24, 'r3', 's1', 'step_started',   false),
  (25, 'r3', NULL, 'run_cancelled',  false),
  (26, 'r3', 's1', 'step_completed', false);  -- run cancelled
CREATE TABLE outcome (way text, n int, said text, PRIMARY KEY (way, n));
CREATE FUNCTION insert_of(way text, s script) RETURNS text LANGUAGE sql AS $$
  SELECT format('INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES (%L, %L, %L)',
                way || '-' || s.run, s.corr, s.type) $$;
CREATE FUNCTION append_of(way text, s script) RETURNS text LANGUAGE sql AS $$
  SELECT format('SELECT workflow_ext.append_event(%L, %L, %L)', way || '-' || s.run, s.corr, s.type) $$;
CREATE PROCEDURE play_single() LANGUAGE plpgsql AS $$
DECLARE s script;
BEGIN
  FOR s IN SELECT * FROM script ORDER BY n LOOP
    INSERT INTO outcome VALUES ('single', s.n, try(insert_of('single', s), undo => s.undo));
    COMMIT;
  END LOOP;
END $$;
CALL play_single();
DO $$
DECLARE s script; way text;
BEGIN
  FOREACH way IN ARRAY ARRAY['loop', 'mixed'] LOOP
    FOR s IN SELECT * FROM script ORDER BY n LOOP
      INSERT INTO outcome VALUES (way, s.n, try(CASE way WHEN 'loop' THEN insert_of(way, s) ELSE append_of(way, s) END,
                                                undo => s.undo));
    END LOOP;
  END LOOP;
END $$;
-- What each event was told, one append per transaction:
SELECT n, said FROM outcome WHERE way = 'single' ORDER BY n;
-- The same in one transaction, by INSERT and through append_event (nothing
-- listed: no difference but the run names):
SELECT o.way, o.n, o.said, s.said AS single_said
  FROM outcome o JOIN outcome s ON s.way = 'single' AND s.n = o.n
 WHERE o.way <> 'single'
   AND replace(o.said, '"' || o.way || '-', '"') IS DISTINCT FROM replace(s.said, '"single-', '"');
-- The logs and run rows each way left (nothing listed: the same rows and
-- seqs, the same run states and last seqs).
CREATE VIEW stored AS
  SELECT split_part(run_id, '-', 1) AS way, split_part(run_id, '-', 2) AS run, seq, type::text, correlation_id
    FROM workflow_ext.events WHERE run_id ~ '^(single|loop|mixed)-';
CREATE VIEW run_rows AS
  SELECT split_part(run_id, '-', 1) AS way, split_part(run_id, '-', 2) AS run, state, last_seq,
         finished_at IS NOT NULL AS finished
    FROM workflow_ext.runs WHERE run_id ~ '^(single|loop|mixed)-';
SELECT run, seq, type, correlation_id FROM stored WHERE way = 'single' ORDER BY run, seq;
SELECT run, state, last_seq, finished FROM run_rows WHERE way = 'single' ORDER BY run;
(SELECT w.way, run, seq, type, correlation_id FROM stored, (VALUES ('loop'), ('mixed')) w(way) WHERE stored.way = 'single'
 EXCEPT SELECT way, run, seq, type, correlation_id FROM stored)
UNION ALL
(SELECT way, run, seq, type, correlation_id FROM stored WHERE way <> 'single'
 EXCEPT SELECT w.way, run, seq, type, correlation_id FROM stored, (VALUES ('loop'), ('mixed')) w(way) WHERE stored.way = 'single');
(SELECT w.way, run, state, last_seq, finished FROM run_rows, (VALUES ('loop'), ('mixed')) w(way) WHERE run_rows.way = 'single'
 EXCEPT SELECT way, run, state, last_seq, finished FROM run_rows)
UNION ALL
(SELECT way, run, state, last_seq, finished FROM run_rows WHERE way <> 'single'
 EXCEPT SELECT w.way, run, state, last_seq, finished FROM run_rows, (VALUES ('loop'), ('mixed')) w(way) WHERE run_rows.way = 'single');

-- COPY of many runs in one transaction, and an INSERT … SELECT.
BEGIN;
COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN WITH (FORMAT csv);
copy-1,,run_created
copy-2,,run_created
copy-1,,run_started
copy-1,a,step_created
copy-2,a,wait_created
copy-1,a,step_started
copy-2,a,wait_completed
copy-1,a,step_completed
copy-1,,run_completed
\.
INSERT INTO workflow_ext.events (run_id, correlation_id, type)
  SELECT 'copy-2', 's' || i, 'step_created' FROM generate_series(1, 5) i;
SAVEPOINT before_bad;
-- A bad row anywhere fails the whole COPY, and the savepoint takes back
-- what its good rows had taken.
COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN WITH (FORMAT csv);
copy-2,s1,step_started
copy-2,s2,step_started
copy-1,b,step_created
\.
ROLLBACK TO SAVEPOINT before_bad;
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('copy-2', 's1', 'step_started');
COMMIT;
SELECT run_id, seq, type, correlation_id FROM workflow_ext.events WHERE run_id LIKE 'copy-%' ORDER BY run_id, seq;
SELECT run_id, state, last_seq, finished_at IS NOT NULL AS finished FROM workflow_ext.runs
 WHERE run_id LIKE 'copy-%' ORDER BY run_id;
-- The next transaction goes on from the run rows the commit wrote.
SELECT seq FROM workflow_ext.append_event('copy-2', 's2', 'step_started');
SELECT count(*) AS anomalies FROM workflow_ext.scan() WHERE run_id ~ '^(single|loop|mixed|copy)-';

-- PREPARE TRANSACTION writes the run rows back too: the prepared
-- transaction's appends are the run row's once it commits.
BEGIN;
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('copy-2', 's3', 'step_started');
INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('copy-2', 's3', 'step_completed');
PREPARE TRANSACTION 'wfx_bulk';
COMMIT PREPARED 'wfx_bulk';
SELECT state, last_seq FROM workflow_ext.runs WHERE run_id = 'copy-2';
SELECT seq FROM workflow_ext.append_event('copy-2', 's4', 'step_started');

-- A run finished in this transaction is purged as finished: purge_runs
-- writes the run rows back first.
BEGIN;
SELECT workflow_ext.append_event('purge-1', NULL, 'run_created') IS NOT NULL AS appended;
SELECT workflow_ext.append_event('purge-1', NULL, 'run_started') IS NOT NULL AS appended;
SELECT workflow_ext.append_event('purge-1', NULL, 'run_completed') IS NOT NULL AS appended;
SELECT workflow_ext.purge_runs('0 seconds') >= 1 AS purged;
SELECT count(*) FROM workflow_ext.events WHERE run_id = 'purge-1';
COMMIT;
SELECT count(*) FROM workflow_ext.runs WHERE run_id = 'purge-1';

DROP VIEW stored, run_rows;
DROP PROCEDURE play_single();
DROP FUNCTION insert_of(text, script), append_of(text, script);
DROP TABLE script, outcome;
