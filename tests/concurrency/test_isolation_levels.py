"""append_suspension_event under REPEATABLE READ, SERIALIZABLE and READ
COMMITTED, with deterministic two-session interleavings.

A snapshot taken before another session's append to the same run cannot see
that append, so the extension must refuse with 40001 (the client retries)
rather than insert a duplicate or hand out a seq out of commit order. Under
READ COMMITTED the second caller waits on the run lock instead, and then
returns the first caller's event.
"""

import threading

import pytest
from psycopg import IsolationLevel

import harness

SUSPEND = "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event(%s, %s, %s)"
RUN = "run-iso"


def setup_run(conn):
    conn.execute(SUSPEND, (RUN, None, "run_created"))


def rows_for(conn, corr):
    return conn.execute(
        "SELECT id, seq FROM workflow_ext.events WHERE run_id = %s AND correlation_id = %s",
        (RUN, corr),
    ).fetchall()


def start_snapshot(conn, level):
    conn.execute(f"BEGIN ISOLATION LEVEL {level}")
    conn.execute("SELECT 1")  # the transaction's snapshot is taken here


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_snapshot_older_than_same_key_append_gets_40001(db, level):
    with harness.connect(db) as t1, harness.connect(db) as t2:
        setup_run(t1)
        start_snapshot(t1, level)
        winner = t2.execute(SUSPEND, (RUN, "step-x", "step_created")).fetchone()
        out = harness.call(t1, SUSPEND, (RUN, "step-x", "step_created"))
        t1.execute("ROLLBACK")
        assert out.sqlstate == "40001", out
        assert rows_for(t1, "step-x") == [(winner[0], winner[1])]
        # The retry, in a new transaction at the same level, sees the winner.
        start_snapshot(t1, level)
        again = t1.execute(SUSPEND, (RUN, "step-x", "step_created")).fetchone()
        t1.execute("COMMIT")
        assert again == (winner[0], winner[1], False)
        assert rows_for(t1, "step-x") == [(winner[0], winner[1])]
        assert harness.seq_gaps(t1) == 0
    harness.figure(f"{level.lower()} same key: stale snapshot got 40001, 1 row, retry returned the winner")


def test_snapshot_older_than_other_key_append_gets_40001_then_retry_succeeds(db):
    with harness.connect(db) as t1, harness.connect(db) as t2:
        setup_run(t1)
        start_snapshot(t1, "REPEATABLE READ")
        t2.execute(SUSPEND, (RUN, "step-y", "step_created"))
        out = harness.call(t1, SUSPEND, (RUN, "step-z", "step_created"))
        t1.execute("ROLLBACK")
        # Appending z after y's seq would be fine, but this snapshot cannot
        # see y's seq: refusing is the only way to keep seq = commit order.
        assert out.sqlstate == "40001", out
        assert rows_for(t1, "step-z") == []
        start_snapshot(t1, "REPEATABLE READ")
        retry = t1.execute(SUSPEND, (RUN, "step-z", "step_created")).fetchone()
        t1.execute("COMMIT")
        assert retry[1:] == (3, True)  # run_created 1, y 2, z 3
        assert rows_for(t1, "step-z") == [(retry[0], 3)]
        assert harness.seq_gaps(t1) == 0
    harness.figure("repeatable read other key: stale snapshot got 40001, retry appended seq 3, 0 seq gaps")


def test_read_committed_second_caller_waits_then_gets_first_callers_event(db):
    with harness.connect(db) as t1, harness.connect(db) as t2:
        setup_run(t1)
        t2_pid = t2.info.backend_pid
        t1.execute("BEGIN")  # READ COMMITTED, the default
        first = t1.execute(SUSPEND, (RUN, "step-x", "step_created")).fetchone()
        assert first[2] is True

        result, done = {}, threading.Event()

        def second():
            result["out"] = harness.call(t2, SUSPEND, (RUN, "step-x", "step_created"))
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        # Wait (no deadline in the verdict) until T2 is blocked on a lock held
        # by T1: then it provably cannot have returned yet.
        with harness.connect(db) as watcher:
            while True:
                blockers, waiting_on = watcher.execute(
                    "SELECT pg_blocking_pids(pid), wait_event_type || ':' || wait_event"
                    "  FROM pg_stat_activity WHERE pid = %s", (t2_pid,)
                ).fetchone()
                if t1.info.backend_pid in blockers or done.is_set():
                    break
        returned_before_commit = done.is_set()
        t1.execute("COMMIT")
        thread.join(harness.BARRIER_TIMEOUT)

        assert not returned_before_commit, result.get("out")
        out = result["out"]
        assert out.ok, out
        assert out.value == (first[0], first[1], False)
        assert rows_for(t1, "step-x") == [(first[0], first[1])]
        assert harness.seq_gaps(t1) == 0
    harness.figure(f"read committed: second caller blocked by T1 ({waiting_on}) until T1 committed, "
                   "then got T1's event id with inserted=false")


def test_repeatable_read_race_with_retries_has_no_duplicates(db):
    f = harness.suspension_race(
        db, SUSPEND, "workflow_ext.events", sessions=16, runs=20, steps=25,
        seed="rr", isolation=IsolationLevel.REPEATABLE_READ,
    )
    harness.figure(f.line("repeatable read race with 40001 retries"))
    assert f.errors == {}, f"calls failed: {dict(f.errors)}"
    assert f.clean


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_snapshot_older_than_run_created_gets_40001(db, level):
    with harness.connect(db) as t1, harness.connect(db) as t2:
        start_snapshot(t1, level)
        setup_run(t2)  # run_created commits after T1's snapshot
        out = harness.call(t1, SUSPEND, (RUN, "step-x", "step_created"))
        t1.execute("ROLLBACK")
    harness.figure(f"{level.lower()} snapshot older than run_created: step_created got "
                   f"{out.sqlstate} ({out.detail}); the contract says 40001")
    assert out.sqlstate == "40001", out
