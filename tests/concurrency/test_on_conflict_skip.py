"""A row that `INSERT … ON CONFLICT` skips after the trigger numbered it
(src/write/skipped.rs).

PostgreSQL fires the BEFORE ROW trigger before it checks the arbiter
indexes, so a row with a taken `id` is accepted, given the run's next seq,
and then skipped. Without the statement-end check the run keeps a gap at
that seq (and, for a skipped run_completed, a state no event gave it).
Checked by hand on a build whose trigger notes no row: the first test's
next append after the skipped run_completed is refused (the run is
"already completed"), the second test's statements succeed with a gap, and
the third finds 133 gaps.
"""

import random

import psycopg
import pytest

import harness

EVENTS = "workflow_ext.events"


def setup_run(conn, run):
    for corr, t, payload in ((None, "run_created", None), (None, "run_started", None),
                             ("h", "hook_created", '{"token": "%s"}' % run)):
        conn.execute("SELECT workflow_ext.append_event(%s, %s, %s, %s::jsonb)", (run, corr, t, payload))


def run_row(conn, run):
    return conn.execute("SELECT state, last_seq FROM workflow_ext.runs WHERE run_id = %s",
                        (run,)).fetchone()


def seqs(conn, run):
    return [r[0] for r in conn.execute(f"SELECT seq FROM {EVENTS} WHERE run_id = %s ORDER BY seq", (run,))]


def test_skipped_row_gives_back_its_seq(db):
    """Every form of statement that can skip a row with a taken id: the
    skipped row leaves no gap, and the run's state is the log's."""
    with harness.connect(db) as conn:
        setup_run(conn, "r")
        conn.execute(f"INSERT INTO {EVENTS} (id, run_id, correlation_id, type) "
                     "VALUES ('taken', 'r', 'h', 'hook_received')")
        row = "('taken', 'r', 'h', 'hook_received')"
        cols = f"INSERT INTO {EVENTS} (id, run_id, correlation_id, type) VALUES "
        skips = [
            cols + row + " ON CONFLICT DO NOTHING",
            cols + row + " ON CONFLICT (id) DO NOTHING",
            f"WITH i AS ({cols}{row} ON CONFLICT DO NOTHING RETURNING seq) SELECT count(*) FROM i",
            "DO $$ BEGIN FOR i IN 1..3 LOOP "
            f"{cols}{row} ON CONFLICT DO NOTHING; END LOOP; END $$",
            # two rows, the later one skipped: the earlier keeps its seq
            cols + "(NULL, 'r', 'h', 'hook_received'), " + row + " ON CONFLICT DO NOTHING",
        ]
        for sql in skips:
            conn.execute(sql)
            conn.execute(cols + "(NULL, 'r', 'h', 'hook_received')")
        conn.execute(f"PREPARE p AS {cols}{row} ON CONFLICT DO NOTHING")
        for _ in range(3):
            conn.execute("EXECUTE p")
        # A skipped run_completed in a transaction that goes on appending:
        # the run is still running for the next append, and at commit.
        with conn.transaction():
            conn.execute(f"{cols}('taken', 'r', NULL, 'run_completed') ON CONFLICT DO NOTHING")
            conn.execute("SELECT workflow_ext.append_event('r', 'h', 'hook_received')")
        # The same inside a savepoint that is rolled back, then one kept.
        with conn.transaction():
            with pytest.raises(psycopg.errors.RaiseException):
                with conn.transaction():
                    conn.execute(f"{cols}('taken', 'r', NULL, 'run_completed') ON CONFLICT DO NOTHING")
                    conn.execute("DO $$ BEGIN RAISE EXCEPTION 'undo'; END $$")
            conn.execute(f"{cols}('taken', 'r', NULL, 'run_failed') ON CONFLICT DO NOTHING")
        got = seqs(conn, "r")
        assert got == list(range(1, len(got) + 1)), got
        # 3 set-up events, the first hook_received, one per skip form (the
        # two-row form stores two), the append in the transaction.
        assert len(got) == 3 + 1 + len(skips) + 1 + 1, got
        assert run_row(conn, "r") == ("running", len(got))
        conn.execute("SELECT workflow_ext.append_event('r', NULL, 'run_completed')")
        assert run_row(conn, "r") == ("completed", len(got) + 1)
        assert conn.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0] == 0


def test_unrepairable_skip_fails_and_stores_nothing(db):
    """A skipped row behind a later row of its run in the same statement,
    or a skipped run_created: the seq cannot be given back, so the statement
    fails (0A000) and stores nothing."""
    with harness.connect(db) as conn:
        setup_run(conn, "r")
        conn.execute(f"INSERT INTO {EVENTS} (id, run_id, correlation_id, type) "
                     "VALUES ('taken', 'r', 'h', 'hook_received')")
        before = seqs(conn, "r")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute(f"INSERT INTO {EVENTS} (id, run_id, correlation_id, type) VALUES "
                         "('taken', 'r', 'h', 'hook_received'), (NULL, 'r', 'h', 'hook_received') "
                         "ON CONFLICT DO NOTHING")
        assert e.value.diag.message_primary == \
            f'ON CONFLICT skipped event {len(before) + 1} of run "r" after it was numbered'
        assert "later row of the same statement" in e.value.diag.message_detail
        assert e.value.diag.message_hint.startswith("Insert a run's events one per statement")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute(f"INSERT INTO {EVENTS} (id, run_id, type) VALUES ('taken', 'new', 'run_created') "
                         "ON CONFLICT DO NOTHING")
        assert "skipped the run_created" in e.value.diag.message_detail
        assert seqs(conn, "r") == before
        assert run_row(conn, "new") is None
        assert run_row(conn, "r") == ("running", len(before))
        # Both go through once the id is free.
        conn.execute(f"INSERT INTO {EVENTS} (id, run_id, type) VALUES ('free', 'new', 'run_created') "
                     "ON CONFLICT DO NOTHING")
        assert run_row(conn, "new") == ("pending", 1)


def test_racing_ids_leave_no_gap(db):
    """8 sessions append hook_received to runs of their own with ids drawn
    from one small pool, ON CONFLICT DO NOTHING: rows skip on ids other
    sessions have committed, or are inserting and then commit (the skip
    comes after a wait). No run has a gap, and each run row holds its log's
    last seq."""
    sessions, per_session, pool = 8, 150, 400
    with harness.connect(db) as conn:
        for i in range(sessions):
            for r in range(3):
                setup_run(conn, f"s{i}-{r}")

    def work(i, conn, barrier):
        rng = random.Random(i)
        barrier.wait()
        stored = 0
        for n in range(per_session):
            run = f"s{i}-{rng.randrange(3)}"
            ids = [f"id-{rng.randrange(pool)}" for _ in range(rng.choice((1, 1, 1, 2)))]
            with conn.transaction():
                for id_ in ids:
                    stored += conn.execute(
                        f"INSERT INTO {EVENTS} (id, run_id, correlation_id, type) "
                        "VALUES (%s, %s, 'h', 'hook_received') ON CONFLICT DO NOTHING",
                        (id_, run)).rowcount
        return stored

    stored = sum(harness.run_sessions(db, sessions, work))
    with harness.connect(db) as conn:
        assert harness.seq_gaps(conn) == 0
        assert conn.execute(
            f"SELECT count(*) FROM workflow_ext.runs r WHERE last_seq <> "
            f"(SELECT max(seq) FROM {EVENTS} e WHERE e.run_id = r.run_id)").fetchone()[0] == 0
        received = conn.execute(f"SELECT count(*) FROM {EVENTS} WHERE type = 'hook_received'").fetchone()[0]
        assert received == stored
        # The pool ran out: most attempts were skips, on both sides of a race.
        assert pool // 2 < stored <= pool, stored
