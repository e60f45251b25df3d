-- workflow_ext.distribute() without Citus (tests/citus runs it on a real
-- Citus cluster): it says what is missing (0A000) and changes nothing.
\set VERBOSITY default
SELECT workflow_ext.distribute();
SELECT workflow_ext.distribute(NULL);
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = 'workflow_ext.events'::regclass AND contype IN ('u', 'p') ORDER BY 1;
-- The run table of distributed logs exists, empty, and is internal.
SELECT count(*) FROM workflow_ext.distributed_runs;
SELECT has_table_privilege('public', 'workflow_ext.distributed_runs', 'SELECT') AS public_reads;
SELECT has_function_privilege('public', 'workflow_ext.distribute(regclass)', 'EXECUTE') AS public_distributes;
-- The counters of every node of a Citus formation: without Citus, the
-- server's own are counters_since_start().
SELECT * FROM workflow_ext.counters_on_every_node();
SELECT has_function_privilege('pg_monitor', 'workflow_ext.counters_on_every_node()', 'EXECUTE') AS monitor_reads,
       has_function_privilege('public', 'workflow_ext.counters_on_every_node()', 'EXECUTE') AS public_reads;
-- Its undo, likewise: 0A000 without Citus, 22004 for NULL, internal.
SELECT workflow_ext.undistribute();
SELECT workflow_ext.undistribute(NULL);
SELECT has_function_privilege('public', 'workflow_ext.undistribute(regclass)', 'EXECUTE') AS public_undistributes;
