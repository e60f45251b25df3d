-- Monitoring right after attach tells the truth about runs older than the
-- attach: their clocks come from their events, and a timestamp without time
-- zone (the DevKit's created_at, written by now() in UTC sessions) is read
-- as UTC whatever the attaching or the monitoring session's TimeZone.
CREATE FUNCTION attach_aged(tz text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    s text := 'clocks_' || lower(regexp_replace(tz, '[^a-zA-Z]', '', 'g'));
BEGIN
    EXECUTE format('CREATE SCHEMA %I', s);
    EXECUTE format('CREATE TABLE %I.workflow_events (id varchar PRIMARY KEY, type varchar NOT NULL, '
                   'correlation_id varchar, created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL)', s);
    -- Written 3 h and 2 h ago (UTC wall clock), before workflow_ext.
    EXECUTE format('INSERT INTO %I.workflow_events (id, run_id, type, correlation_id, created_at) VALUES '
                   '(''e1'', ''aged'', ''run_created'', NULL, (now() AT TIME ZONE ''UTC'') - interval ''3 hours''), '
                   '(''e2'', ''aged'', ''run_started'', NULL, (now() AT TIME ZONE ''UTC'') - interval ''2 hours''), '
                   '(''d1'', ''done'', ''run_created'', NULL, (now() AT TIME ZONE ''UTC'') - interval ''5 hours''), '
                   '(''d2'', ''done'', ''run_started'', NULL, (now() AT TIME ZONE ''UTC'') - interval ''5 hours''), '
                   '(''d3'', ''done'', ''run_completed'', NULL, (now() AT TIME ZONE ''UTC'') - interval ''4 hours'')', s);
    PERFORM set_config('TimeZone', tz, true);
    PERFORM workflow_ext.attach(format('%I.workflow_events', s)::regclass);
END
$$;
BEGIN;
SELECT attach_aged('UTC'), attach_aged('Asia/Tokyo'), attach_aged('America/Los_Angeles');
COMMIT;
-- Read from three TimeZones too: idle 2 h, oldest 3 h, the finished run not active.
SET TimeZone = 'Asia/Tokyo';
SELECT log, runs_pending + runs_running AS active, runs_idle,
       oldest_active_run_seconds BETWEEN 3 * 3600 AND 3 * 3600 + 300 AS oldest_is_3h
  FROM workflow_ext.metrics('1 hour') WHERE log LIKE 'clocks_%' ORDER BY log;
SET TimeZone = 'America/Los_Angeles';
SELECT log, run_id, state, idle_for BETWEEN interval '2 hours' AND interval '2 hours 5 minutes' AS idle_2h
  FROM workflow_ext.stuck_runs('1 hour') WHERE log LIKE 'clocks_%' ORDER BY log;
SELECT count(*) AS idle_over_3h FROM workflow_ext.stuck_runs('3 hours') WHERE log LIKE 'clocks_%';
SET TimeZone = 'UTC';
SELECT log, runs_idle FROM workflow_ext.metrics('2 hours 10 minutes') WHERE log LIKE 'clocks_%' ORDER BY log;
RESET TimeZone;
