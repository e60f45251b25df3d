"""attach_concurrently on a DevKit-shaped table while 8 writers keep writing
to it, the way world-postgres does (plain INSERTs with client ids that
sort after the existing ones, as its ULIDs do; a 23505
on workflow_events_entity_creation_unique is its EntityConflictError).

The writers continue runs that existed before the attach, start new runs and
race each other on shared step creations, before, during and after every
step of the attach. Each call is timed. Afterwards, whatever the
interleaving:
  - every row has a seq; each run's seqs are 1..n with no gap; its existing
    rows keep their replay order (by id) in front, its new rows after;
  - each run row holds the state and last seq of its events, and scan() of
    the table is clean (no duplicate creation, no illegal transition);
  - the writers got no error but 23505 on the creation index's name;
  - the longest call a writer made (its stall) is under 1 s.
The blocking attach of the same table is measured the same way for
comparison: writers wait for all of it (the naive version this replaces),
and the test checks that it stalls them far longer.

A cancelled attach (pg_cancel_backend at each step) leaves the table exactly
as it was before, writers unaffected, and the next attach succeeds.
"""

import random
import threading
import time

import psycopg
import pytest

import harness

RUNS = 4000
STEPS = 8  # existing step lifecycles per run: 2 + 3 * STEPS events
WRITERS = 8
CREATION_INDEX = "workflow_events_entity_creation_unique"

DEVKIT = """
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
    id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
    created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
    payload jsonb, payload_cbor bytea, spec_version integer);
CREATE INDEX workflow_events_run_id_index ON workflow.workflow_events (run_id);
CREATE INDEX workflow_events_correlation_id_index ON workflow.workflow_events (correlation_id);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
    (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
-- Existing history: every run created and started, STEPS steps through
-- their lifecycle, the last run of every ten left with a step in flight.
-- Ids sort in event order, as the DevKit's ULIDs do; the heap holds the
-- runs interleaved.
INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id, created_at)
SELECT 'wevt_' || lpad(r::text, 6, '0') || '_' || lpad(e.pos::text, 4, '0'), e.type, e.corr,
       'wrun_' || lpad(r::text, 6, '0'), timestamp '2026-01-01' + make_interval(secs => r * 10 + e.pos)
  FROM generate_series(1, %(runs)s) r,
       LATERAL (SELECT 1 AS pos, 'run_created' AS type, NULL AS corr
                UNION ALL SELECT 2, 'run_started', NULL
                UNION ALL SELECT 3 + 3 * (s - 1) + k, (ARRAY['step_created', 'step_started', 'step_completed'])[k + 1],
                                 'step_' || s
                            FROM generate_series(1, %(steps)s) s, generate_series(0, 2) k
                           WHERE NOT (r %% 10 = 0 AND s = %(steps)s AND k = 2)) e
 ORDER BY md5(r::text || e.pos);
ANALYZE workflow.workflow_events;
"""

INSERT = ("INSERT INTO workflow.workflow_events (id, run_id, correlation_id, type, spec_version) "
          "VALUES (%s, %s, %s, %s, 5)")


class Writers:
    """WRITERS threads writing as the package does until stopped; every
    call's latency and every error kept."""

    def __init__(self, db):
        self.db, self.stop, self.latencies, self.errors = db, threading.Event(), [], []
        self.calls = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.write, args=(i,)) for i in range(WRITERS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def write(self, i):
        rng = random.Random(i)
        conn = harness.connect(self.db)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                which = rng.random()
                if which < 0.5:
                    # A new step on an existing run.
                    run = f"wrun_{rng.randint(1, RUNS):06}"
                    events = [(run, f"w{i}_{n}", t) for t in ("step_created", "step_started", "step_completed")]
                elif which < 0.7:
                    run = f"wnew_{i}_{n}"
                    events = [(run, None, "run_created"), (run, None, "run_started")]
                else:
                    # Every writer races for the same step creations.
                    run = f"wrun_{rng.randint(1, 50):06}"
                    events = [(run, f"race_{rng.randint(1, 400)}", "step_created")]
                for k, (run_id, corr, kind) in enumerate(events):
                    started = time.monotonic()
                    try:
                        conn.execute(INSERT, (f"wevt_x{i}_{n:07}_{k}", run_id, corr, kind))
                        error = None
                    except psycopg.Error as e:
                        error = (e.sqlstate, e.diag.constraint_name, e.diag.message_primary)
                    took = time.monotonic() - started
                    with self.lock:
                        self.calls += 1
                        self.latencies.append(took)
                        if error and not (error[0] == "23505" and error[1] == CREATION_INDEX):
                            self.errors.append(error)
                    if error:
                        break
        finally:
            conn.close()


def make_table(db):
    with harness.connect(db) as conn:
        conn.execute(DEVKIT % {"runs": RUNS, "steps": STEPS})


def shape(conn):
    """What a concurrent attach may change: columns, indexes, triggers,
    the registration and run rows."""
    q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
    return {
        "columns": q("SELECT attname, atttypid::regtype::text, attnotnull FROM pg_attribute "
                     "WHERE attrelid = 'workflow.workflow_events'::regclass AND attnum > 0 AND NOT attisdropped "
                     "ORDER BY attnum"),
        # A rebuilt index prints its predicate's casts differently
        # (PostgreSQL re-parses it): compared as predicate_shape does.
        "indexes": q("SELECT c.relname, workflow_ext.predicate_shape(pg_get_indexdef(c.oid)), i.indisvalid "
                     "FROM pg_index i "
                     "JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE i.indrelid = 'workflow.workflow_events'::regclass ORDER BY 1"),
        "triggers": q("SELECT tgname FROM pg_trigger WHERE tgrelid = 'workflow.workflow_events'::regclass "
                      "AND NOT tgisinternal ORDER BY 1"),
        "logs": q("SELECT count(*) FROM workflow_ext.logs WHERE relation = 'workflow.workflow_events'::regclass"),
        "runs": q("SELECT count(*) FROM workflow_ext.runs WHERE log = 'workflow.workflow_events'::regclass"),
    }


def check_attached(db):
    """The guarantees, from what is stored."""
    with harness.connect(db) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert one("SELECT count(*) FROM workflow.workflow_events WHERE seq IS NULL") == 0, "rows left unnumbered"
        gaps = one("SELECT count(*) FROM (SELECT run_id, count(*) AS n, max(seq) AS top, count(DISTINCT seq) AS d "
                   "FROM workflow.workflow_events GROUP BY run_id) r WHERE n <> top OR d <> n")
        assert gaps == 0, f"{gaps} runs whose seqs are not 1..n"
        # Existing rows first, in id order; new rows after.
        order = one("SELECT count(*) FROM (SELECT id, seq, row_number() OVER (PARTITION BY run_id ORDER BY seq) AS n, "
                    "row_number() OVER (PARTITION BY run_id, id LIKE 'wevt\\_0%' ORDER BY id COLLATE \"C\") AS by_id, "
                    "id LIKE 'wevt\\_0%' AS old FROM workflow.workflow_events WHERE run_id LIKE 'wrun%') x "
                    "WHERE old AND n <> by_id")
        assert order == 0, f"{order} existing rows out of their replay order"
        stale = one("SELECT count(*) FROM workflow_ext.runs r JOIN (SELECT run_id::text AS run_id, max(seq) AS top, "
                    "workflow_ext.run_state(array_agg(type::text ORDER BY seq)) AS state "
                    "FROM workflow.workflow_events GROUP BY run_id) e USING (run_id) "
                    "WHERE r.log = 'workflow.workflow_events'::regclass AND (r.last_seq <> e.top OR r.state <> e.state)")
        assert stale == 0, f"{stale} run rows disagree with their events"
        runs = one("SELECT count(DISTINCT run_id) FROM workflow.workflow_events")
        rows = one("SELECT count(*) FROM workflow_ext.runs WHERE log = 'workflow.workflow_events'::regclass")
        assert rows == runs, f"{runs} runs, {rows} run rows"
        anomalies = one("SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events')")
        assert anomalies == 0, f"{anomalies} runs with anomalies"
        left = one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'workflow.workflow_events'::regclass AND tgnargs > 0")
        assert left == 0, "the trigger kept its adopting form"


def attach_under_writers(db, statement):
    """Runs `statement` while the writers write; returns its duration and
    the writers."""
    with Writers(db) as w:
        time.sleep(0.5)
        with harness.connect(db) as conn:
            conn.execute("SET client_min_messages = warning")
            started = time.monotonic()
            conn.execute(statement)
            took = time.monotonic() - started
        time.sleep(0.5)
    return took, w


def test_online_attach_under_writers(db):
    make_table(db)
    took, w = attach_under_writers(db, "CALL workflow_ext.attach_concurrently('workflow.workflow_events')")
    events = RUNS * (2 + 3 * STEPS)
    worst = max(w.latencies)
    harness.figure(f"attach_concurrently of {events} events under {WRITERS} writers: {took:.2f} s, "
                   f"{events / took:,.0f} events/s; {w.calls} writer calls, longest {worst * 1000:.0f} ms")
    assert not w.errors, f"writers got errors: {w.errors[:5]}"
    assert w.calls > 200, "the writers hardly wrote"
    assert worst < 1.0, f"a writer waited {worst:.2f} s"
    check_attached(db)


def test_blocking_attach_stops_the_writers(db):
    """The comparison: the blocking attach of the same table holds ACCESS
    EXCLUSIVE for all its work, and the writers wait for it."""
    make_table(db)
    took, w = attach_under_writers(db, "SELECT workflow_ext.attach('workflow.workflow_events')")
    worst = max(w.latencies)
    harness.figure(f"blocking attach, same table and writers: {took:.2f} s; longest writer call {worst * 1000:.0f} ms")
    assert not w.errors, f"writers got errors: {w.errors[:5]}"
    assert worst > 0.5 * took, "the blocking attach did not stop the writers: the stall measure proves nothing"
    check_attached(db)


@pytest.mark.parametrize("step", ["creation", "begin", "adopt", "audit"])
def test_cancelled_online_attach_leaves_the_table_as_it_was(db, step):
    make_table(db)
    with harness.connect(db) as conn:
        before = shape(conn)
    with Writers(db) as w, harness.connect(db) as attacher, harness.connect(db) as watcher:
        pid = attacher.execute("SELECT pg_backend_pid()").fetchone()[0]
        seen = []
        attacher.add_notice_handler(lambda d: seen.append(d.message_primary))
        result = {}

        def attach():
            try:
                attacher.execute("CALL workflow_ext.attach_concurrently('workflow.workflow_events')")
                result["ok"] = True
            except psycopg.Error as e:
                result["error"] = (e.sqlstate, e.diag.message_primary, e.diag.message_detail)

        t = threading.Thread(target=attach)
        t.start()
        deadline = time.monotonic() + 60
        marker = {"creation": "building the creation index", "begin": "installing the triggers",
                  "adopt": "numbering the existing rows", "audit": "auditing every run"}[step]
        while not any(marker in m for m in seen) and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        watcher.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join()
    assert "error" in result, f"the attach finished before the cancel at {step}: {seen[-3:]}"
    assert result["error"][0] == "57014", result["error"]
    assert "was undone" in (result["error"][2] or ""), result["error"]
    assert not w.errors, f"writers got errors: {w.errors[:5]}"
    with harness.connect(db) as conn:
        after = shape(conn)
        assert after == before, f"the cancelled attach left something behind: {before} -> {after}"
    # And the next one succeeds.
    with harness.connect(db) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CALL workflow_ext.attach_concurrently('workflow.workflow_events')")
    check_attached(db)


def test_repeatable_read_writer_older_than_the_attach_retries(db):
    """A REPEATABLE READ writer whose snapshot was taken before the attach
    installed its triggers cannot see every existing row of a run it would
    adopt: it gets 40001 (and retries), instead of numbering the run from a
    past it cannot see. A writer with a newer snapshot adopts the run: its
    row follows the run's past. The steps are driven one by one here
    (the procedure runs them in order)."""
    make_table(db)
    with harness.connect(db) as admin, harness.connect(db, autocommit=False) as old, \
            harness.connect(db, autocommit=False) as new:
        admin.execute("SET client_min_messages = warning")
        admin.execute(admin.execute("SELECT workflow_ext.attach_statement('workflow.workflow_events', 'creation', true)")
                      .fetchone()[0])
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM workflow_ext.logs").fetchone()  # its snapshot, before the triggers
        # A row the package commits after that snapshot, before the triggers:
        # part of the past, invisible to the old writer.
        admin.execute(INSERT, ("wevt_x_between", "wrun_000008", "between_step", "step_created"))
        admin.execute("SELECT workflow_ext.attach_concurrently_begin('workflow.workflow_events', false)")
        new.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        new.execute(INSERT, ("wevt_x_new", "wrun_000007", "late_step", "step_created"))
        new.commit()
        outcome = harness.call(old, INSERT, ("wevt_x_old", "wrun_000008", "late_step", "step_created"))
        old.rollback()
        assert outcome.sqlstate == "40001", outcome
        # The run is adopted whole by the next adopter (here the procedure's
        # own statement): the row the old writer could not see is numbered.
        admin.execute("SELECT workflow_ext.adopt_runs('workflow.workflow_events', ARRAY['wrun_000008'])")
        unnumbered = admin.execute("SELECT count(*) FROM workflow.workflow_events WHERE run_id = 'wrun_000008' "
                                   "AND seq IS NULL").fetchone()[0]
        assert unnumbered == 0, "the old writer adopted the run from a past it could not see"
        seqs = admin.execute("SELECT id, seq FROM workflow.workflow_events WHERE run_id = 'wrun_000007' "
                             "ORDER BY seq").fetchall()
        assert [s for _, s in seqs] == list(range(1, len(seqs) + 1)) and seqs[-1][0] == "wevt_x_new", seqs
        admin.execute("SELECT workflow_ext.detach('workflow.workflow_events')")
