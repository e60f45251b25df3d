"""How fast attach() audits and numbers an existing DevKit log, phase by
phase, beside its floor: a table rewrite and the index builds done by hand,
with no audit, no numbering and no rules.

A DevKit-shaped table (@workflow/world-postgres 5.0's workflow_events: its
columns, its run_id and correlation_id indexes and its creation index) is
filled with N events of complete runs (run_created, run_started, S steps of
created/started/completed, run_completed), copied three times (one copy
attached; one rewritten by hand with a computed column, no numbering: the
floor of attach's own rewrite; one numbered by hand with an UPDATE, as attach
did before 0.5.1 and as attach_concurrently does, the floor of the online
attach; one attached with attach_concurrently, without writers: the
writers' side is tests/concurrency/test_online_attach.py and tests/devkit),
and each is timed. Run from the repository:

    python3 bench/attach_speed.py [--events 200000] [--steps 8]

on the project cluster (`make demo` starts it; scripts/cluster.sh env).
Prints one line per phase and the rates; nothing is written to BENCHMARKS.md
by this script.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from lib.cluster import fresh_database  # noqa: E402
from lib.connection import connect  # noqa: E402

DEVKIT_TABLE = """
CREATE SCHEMA workflow;
CREATE TABLE workflow.{name} (
    id varchar PRIMARY KEY,
    type varchar NOT NULL,
    correlation_id varchar,
    created_at timestamp DEFAULT now() NOT NULL,
    run_id varchar NOT NULL,
    payload_cbor bytea,
    spec_version integer);
CREATE INDEX {name}_run_id_index ON workflow.{name} (run_id);
CREATE INDEX {name}_correlation_id_index ON workflow.{name} (correlation_id);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.{name}
    (run_id, correlation_id, type)
    WHERE type IN ('step_created', 'hook_created', 'wait_created');
"""


def fill(c, name, events, steps):
    per_run = 2 + 3 * steps + 1
    runs = max(1, events // per_run)
    # One row per (run, position): ids sort in position order within a run
    # (the DevKit's ULIDs sort by time).
    c.execute(f"""
        INSERT INTO workflow.{name} (id, type, correlation_id, created_at, run_id, spec_version)
        SELECT format('wevt_%s_%s', lpad(r::text, 8, '0'), lpad(p::text, 4, '0')),
               CASE WHEN p = 1 THEN 'run_created' WHEN p = 2 THEN 'run_started'
                    WHEN p = {per_run} THEN 'run_completed'
                    ELSE (ARRAY['step_created', 'step_started', 'step_completed'])[(p - 3) % 3 + 1] END,
               CASE WHEN p > 2 AND p < {per_run} THEN format('step_%s', (p - 3) / 3) END,
               timestamp '2026-01-01' + r * interval '1 second' + p * interval '1 ms',
               format('wrun_%s', lpad(r::text, 8, '0')), 5
          FROM generate_series(1, {runs}) r, generate_series(1, {per_run}) p""")
    c.execute(f"VACUUM ANALYZE workflow.{name}")
    return runs * per_run


def timed(c, what, sql, rows):
    t = time.perf_counter()
    c.execute(sql)
    dt = time.perf_counter() - t
    print(f"  {what:<44} {dt:8.2f} s  {rows / dt:>10,.0f} events/s", flush=True)
    return dt


def index_builds(c, table, n):
    """The two indexes attach adds, built on `table` by hand; their time."""
    return (timed(c, "index (run_id, seq)",
                  f"CREATE INDEX {table}_run_seq ON workflow.{table} (run_id, seq)", n)
            + timed(c, "index (run_id, correlation_id, seq)",
                    f"CREATE INDEX {table}_entity_seq ON workflow.{table} (run_id, correlation_id, seq) "
                    "WHERE correlation_id IS NOT NULL", n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    with fresh_database("bench_attach") as db, connect(db) as c:
        c.execute(DEVKIT_TABLE.format(name="workflow_events"))
        n = fill(c, "workflow_events", a.events, a.steps)
        c.execute("CREATE TABLE workflow.floor_events (LIKE workflow.workflow_events INCLUDING ALL)")
        c.execute("INSERT INTO workflow.floor_events SELECT * FROM workflow.workflow_events")
        c.execute("CREATE TABLE workflow.rewrite_events (LIKE workflow.workflow_events INCLUDING ALL)")
        c.execute("INSERT INTO workflow.rewrite_events SELECT * FROM workflow.workflow_events")
        # Its own schema: the creation index's name is per schema.
        c.execute("CREATE SCHEMA online")
        c.execute("CREATE TABLE online.workflow_events (LIKE workflow.workflow_events INCLUDING ALL)")
        c.execute("INSERT INTO online.workflow_events SELECT * FROM workflow.workflow_events")
        c.execute("VACUUM ANALYZE workflow.floor_events, workflow.rewrite_events, online.workflow_events")
        c.execute("SET max_parallel_maintenance_workers = 0")  # same for both
        print(f"{n:,} events, {a.steps} steps per run", flush=True)

        print("attach, by phase (what attach() runs, one statement at a time):")
        log = "'workflow.workflow_events'::regclass"
        total = 0.0
        total += timed(c, "dry run: scan() (the audit)", f"SELECT count(*) FROM workflow_ext.scan({log})", n)
        total += timed(c, "duplicate_creations()", f"SELECT * FROM workflow_ext.duplicate_creations({log})", n)
        print("attach() whole:")
        whole = timed(c, "attach()", f"SELECT workflow_ext.attach({log})", n)

        print("by hand, no audit: one table rewrite that computes a column, no numbering (the floor of")
        print("attach's rewrite: every row written once, the table's indexes rebuilt in bulk):")
        rewrite = timed(c, "ADD COLUMN seq DEFAULT (volatile)",
                        "ALTER TABLE workflow.rewrite_events ADD COLUMN seq bigint "
                        "DEFAULT (pg_catalog.random() * 1000)::bigint", n)
        rewrite += index_builds(c, "rewrite_events", n)
        print("by hand, no audit: numbering by UPDATE (how attach numbered rows before 0.5.1):")
        f = 0.0
        f += timed(c, "ADD COLUMN seq + UPDATE numbering",
                   "ALTER TABLE workflow.floor_events ADD COLUMN seq bigint; "
                   "UPDATE workflow.floor_events t SET seq = o.n FROM (SELECT ctid AS row_id, row_number() OVER "
                   "(PARTITION BY run_id ORDER BY id::text COLLATE \"C\") AS n FROM workflow.floor_events) o "
                   "WHERE t.ctid = o.row_id", n)
        f += index_builds(c, "floor_events", n)
        print("attach_concurrently() whole (no writers; its NOTICEs give the steps):")
        c.execute("SET client_min_messages = warning")
        online = timed(c, "attach_concurrently()", "CALL workflow_ext.attach_concurrently('online.workflow_events')", n)
        print(f"attach() {whole:.2f} s = {n / whole:,.0f} events/s; by hand: rewrite {rewrite:.2f} s = "
              f"{n / rewrite:,.0f} events/s, UPDATE {f:.2f} s = {n / f:,.0f} events/s; "
              f"ratio attach/rewrite {whole / rewrite:.2f}; dry run {total:.2f} s; "
              f"attach_concurrently() {online:.2f} s = {n / online:,.0f} events/s, "
              f"ratio to the UPDATE by hand {f / online:.2f}")


if __name__ == "__main__":
    main()
