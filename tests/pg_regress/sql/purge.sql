-- purge_runs removes whole finished runs only, with their joins.
SELECT seq FROM workflow_ext.append_suspension_event('old-done', NULL, 'run_created');
SELECT seq FROM workflow_ext.append_event('old-done', NULL, 'run_started');
SELECT seq FROM workflow_ext.append_suspension_event('old-done', 's', 'step_created');
SELECT seq FROM workflow_ext.append_event('old-done', NULL, 'run_completed');
SELECT workflow_ext.join_arrive('old-done', 'j', 'm', 1);
SELECT seq FROM workflow_ext.append_suspension_event('still-running', NULL, 'run_created');
SELECT seq FROM workflow_ext.append_event('still-running', NULL, 'run_started');
-- Nothing finished long enough ago yet.
SELECT workflow_ext.purge_runs('1 hour') AS purged;
SELECT workflow_ext.purge_runs('0') AS purged;
SELECT count(*) FILTER (WHERE run_id = 'old-done') AS done_events,
       count(*) FILTER (WHERE run_id = 'still-running') AS running_events
  FROM workflow_ext.events;
SELECT count(*) AS joins_left FROM workflow_ext.joins WHERE run_id = 'old-done';
-- The purge does not open a way around the append-only rule afterwards.
SELECT try($$DELETE FROM workflow_ext.events WHERE run_id = 'still-running'$$);
