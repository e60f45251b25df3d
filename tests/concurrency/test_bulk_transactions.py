"""Transactions of many appends (src/write/run_cache.rs: a run locked by a
transaction is kept in memory and its row written back before the commit),
raced by 16 sessions on the same runs.

Each session runs transactions that COPY a step lifecycle into every shared
run, try an illegal append in a savepoint (refused, rolled back to the
savepoint), and append through the functions; every eighth transaction is
rolled back whole. Afterwards every run's seqs are dense, the runs' rows
hold the last seq and state of their logs, every committed step is
complete and in order, nothing rolled back is stored, and the audit is
clean. A cache that kept what a rolled back savepoint took leaves gaps; one
that never wrote back makes the next transaction reuse seqs (a failed
append here).
"""

from collections import Counter

import psycopg

import harness

SESSIONS, TRANSACTIONS = 16, 12
RUNS = [f"bulk-{r}" for r in range(4)]
LIFECYCLE = ["step_created", "step_started", "step_completed"]


def test_bulk_transactions_on_shared_runs_keep_seqs_dense(db):
    with harness.connect(db) as conn:
        for run in RUNS:
            conn.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_created')", (run,))
            conn.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))

    def work(i, conn, barrier):
        refused, failed, committed = Counter(), [], 0
        barrier.wait()
        for t in range(TRANSACTIONS):
            rollback = t % 8 == 7
            try:
                with conn.transaction() as tx:
                    cur = conn.cursor()
                    # Every run in the same order: no deadlock between sessions.
                    with cur.copy("COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN") as cp:
                        for run in RUNS:
                            for step_type in LIFECYCLE:
                                cp.write_row((run, f"c{i}-{t}", step_type))
                    try:
                        # A legal append, then an illegal one: the savepoint
                        # takes both back.
                        with conn.transaction():
                            conn.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                                         "VALUES (%s, %s, 'step_created')", (RUNS[0], f"x{i}-{t}"))
                            conn.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                                         "VALUES (%s, %s, 'step_started')", (RUNS[0], f"c{i}-{t}"))
                    except psycopg.errors.ObjectNotInPrerequisiteState:
                        refused["started again"] += 1
                    conn.execute("SELECT workflow_ext.append_event(%s, %s, 'wait_created')", (RUNS[-1], f"w{i}-{t}"))
                    conn.execute("SELECT * FROM workflow_ext.append_suspension_event(%s, %s, 'step_created')",
                                 (RUNS[-1], f"a{i}-{t}"))
                    if rollback:
                        raise psycopg.Rollback(tx)
                    committed += 1
            except psycopg.Error as e:
                failed.append(f"{e.sqlstate}: {e}")
        return refused, failed, committed

    results = harness.run_sessions(db, SESSIONS, work)
    refused = sum((r for r, _, _ in results), Counter())
    failed = [f for _, fs, _ in results for f in fs]
    committed = sum(c for _, _, c in results)
    with harness.connect(db) as conn:
        gaps = harness.seq_gaps(conn)
        per_type = Counter(dict(conn.execute(
            "SELECT type::text, count(*) FROM workflow_ext.events GROUP BY 1").fetchall()))
        bad_order = conn.execute(
            "SELECT count(*) FROM (SELECT correlation_id, array_agg(type::text ORDER BY seq) t "
            "FROM workflow_ext.events WHERE correlation_id LIKE 'c%%' GROUP BY run_id, correlation_id) s "
            "WHERE t <> %s", (LIFECYCLE,)).fetchone()[0]
        rows_off = conn.execute(
            "SELECT count(*) FROM workflow_ext.runs r "
            "WHERE r.last_seq <> (SELECT max(seq) FROM workflow_ext.events e WHERE e.run_id = r.run_id) "
            "   OR r.state <> 'running'").fetchone()[0]
        anomalies = conn.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0]
        stored_x = conn.execute(
            "SELECT count(*) FROM workflow_ext.events WHERE correlation_id LIKE 'x%%'").fetchone()[0]
    harness.figure(
        f"bulk transactions: {SESSIONS} sessions x {TRANSACTIONS} transactions on {len(RUNS)} runs, "
        f"{committed} committed, {len(failed)} failed, {sum(refused.values())} refused in a savepoint, "
        f"{gaps} seq gaps, {rows_off} run rows off, {bad_order} steps out of order, {anomalies} anomalies")
    assert failed == []
    assert refused["started again"] == SESSIONS * TRANSACTIONS
    assert committed == SESSIONS * (TRANSACTIONS - TRANSACTIONS // 8)
    assert gaps == 0 and rows_off == 0 and bad_order == 0 and anomalies == 0
    assert per_type["step_completed"] == committed * len(RUNS)
    assert per_type["wait_created"] == committed
    assert per_type["step_created"] == committed * (len(RUNS) + 1)
    assert stored_x == 0
