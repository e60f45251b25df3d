"""What a Prometheus scrape of workflow_ext costs on a big log :
metrics() and stuck_runs() on 10,000,000 events in 1,000,000 runs, of which
1,000 are still active (the shape of a log that has run for a while: nearly
every run finished).

The log is loaded with the validating trigger disabled (as a data-only
restore loads it) and workflow_ext.runs is filled with what the writer would
have left (state, last seq, finish time): building 10M events through the
trigger would take the better part of an hour here and measure the writer,
not the scrape. Then the triggers are put back (ENABLE ALWAYS) and each
function is timed 20 times; the medians are printed.

Run (project cluster up, release build installed: make install):
    python3 bench/metrics_cost.py [--runs 1000000] [--active 1000]
Writes nothing but its own database (wfx_metrics_cost, dropped at the end).
"""

import argparse
import os
import statistics
import sys
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from pgcluster import conninfo  # noqa: E402

DB = "wfx_metrics_cost"
# One run: 10 events (two steps, a wait).
RUN = ["run_created", "run_started", "step_created", "step_started", "step_completed",
       "step_created", "step_started", "step_completed", "wait_created", "run_completed"]
CORR = [None, None, "s1", "s1", "s1", "s2", "s2", "s2", "w1", None]
TRIGGERS = ["events_validate_insert", "events_hook_tokens", "events_append_only", "events_no_truncate"]


def timed(conn, sql, n=20):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute(sql).fetchall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--active", type=int, default=1_000)
    a = ap.parse_args()
    with psycopg.connect(**conninfo("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    try:
        with psycopg.connect(**conninfo(DB), autocommit=True) as c:
            c.execute("CREATE EXTENSION workflow_ext")
            t0 = time.perf_counter()
            c.execute("ALTER TABLE workflow_ext.events DISABLE TRIGGER USER")
            # The last run-level event of an active run is run_started: its
            # rows stop before the steps' terminals and run_completed.
            c.execute("""
                INSERT INTO workflow_ext.events (id, run_id, seq, type, correlation_id, created_at)
                SELECT 'wevt_' || lpad(r::text, 8, '0') || lpad(k::text, 2, '0'), 'run-' || r, k,
                       (%(types)s::text[])[k]::workflow_ext.event_type, (%(corrs)s::text[])[k],
                       now() - interval '1 day' + k * interval '1 second'
                  FROM generate_series(1, %(runs)s) r, generate_series(1, 10) k
                 WHERE r > %(active)s OR k <= 9""",
                      {"types": RUN, "corrs": CORR, "runs": a.runs, "active": a.active})
            c.execute("""
                INSERT INTO workflow_ext.runs (log, run_id, state, last_seq, created_at, finished_at, last_event_at)
                SELECT 'workflow_ext.events', 'run-' || r,
                       CASE WHEN r > %(active)s THEN 'completed' ELSE 'running' END,
                       CASE WHEN r > %(active)s THEN 10 ELSE 9 END,
                       now() - interval '1 day', CASE WHEN r > %(active)s THEN now() - interval '1 hour' END,
                       now() - interval '1 hour'
                  FROM generate_series(1, %(runs)s) r""", {"runs": a.runs, "active": a.active})
            for t in TRIGGERS:
                c.execute(f"ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER {t}")
            c.execute("VACUUM ANALYZE workflow_ext.events")
            c.execute("VACUUM ANALYZE workflow_ext.runs")
            load = time.perf_counter() - t0
            events = c.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0]
            size = c.execute("SELECT pg_size_pretty(pg_total_relation_size('workflow_ext.events'))").fetchone()[0]
            if a.runs <= 20_000:  # a small load: check it is what the writer would have stored
                assert c.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0] == 0
            m = timed(c, "SELECT * FROM workflow_ext.metrics('15 minutes')")
            s = timed(c, "SELECT * FROM workflow_ext.stuck_runs('15 minutes')", n=5)
            k = timed(c, "SELECT * FROM workflow_ext.counters_since_start()")
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN SELECT * FROM workflow_ext.runs r WHERE r.log = 'workflow_ext.events'::regclass "
                "AND r.finished_at IS NULL"))
            uses = "runs_active" in plan
            row = c.execute("SELECT * FROM workflow_ext.metrics('15 minutes')").fetchone()
        print(f"FIGURE: log of {events:,} events ({size}) in {a.runs:,} runs, {a.active:,} active; "
              f"loaded in {load:.0f} s")
        print(f"FIGURE: metrics('15 minutes') median {m:.2f} ms (20 calls) -> {row}; "
              f"active-runs scan uses runs_active: {uses}")
        print(f"FIGURE: stuck_runs('15 minutes') median {s:.1f} ms for {a.active:,} stuck runs (5 calls); "
              f"counters_since_start() median {k:.3f} ms")
    finally:
        with psycopg.connect(**conninfo("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
