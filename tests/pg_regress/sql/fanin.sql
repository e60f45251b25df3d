-- join_arrive: true exactly once, for the arrival that completes the set.
-- A join belongs to a run of workflow_ext.events.
SELECT try($$SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-1', 3)$$);
SELECT seq FROM workflow_ext.append_event('fan-run', NULL, 'run_created');
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-1', 3) AS a1;
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-1', 3) AS a1_again;
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-2', 3) AS a2;
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-3', 3) AS a3_fires;
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-3', 3) AS a3_redelivered;
SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-2', 3) AS a2_redelivered;
-- A new member after the join fired, or another expected count, is an error.
SELECT try($$SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-4', 3)$$);
SELECT try($$SELECT workflow_ext.join_arrive('fan-run', 'validate', 'item-1', 4)$$);
-- Joins are independent of each other; a one-member join fires at once.
SELECT workflow_ext.join_arrive('fan-run', 'other', 'only', 1) AS single_fires;
SELECT run_id, join_key, expected, arrived, fired_at IS NOT NULL AS fired
  FROM workflow_ext.joins ORDER BY join_key;
