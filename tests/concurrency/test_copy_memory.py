"""A COPY keeps what it decided of each entity in memory for its next rows
(src/pg/row_origin.rs, src/write/run_cache.rs) instead of reading it back
from the log. It must decide exactly what one INSERT per transaction
decides, which reads the log every time.

Random scripts of mostly legal lifecycles, with wrong events mixed in, are
played two ways: one INSERT per transaction (stopping at the first
refusal), and one COPY of the whole script. Either both store everything,
with the same seqs and run rows, or the COPY fails with the SQLSTATE and
message of the first row the INSERTs refused and stores nothing; the COPY
of the rows before it then stores what the INSERTs stored.

Then the statements that must not use the memory: a row that an
`INSERT … ON CONFLICT DO NOTHING` skips after the trigger accepted it, and
rows a trigger on another table inserts while a COPY into that table runs.
A memory kept by any statement, or by any COPY in progress, would take
the skipped row for stored; both tests fail then (checked by hand).
"""

import random

import psycopg

import harness

LIFECYCLES = {
    "step": [["step_created", "step_started", "step_completed"],
             ["step_created", "step_started", "step_failed"],
             ["step_created", "step_started", "step_retrying", "step_started", "step_completed"]],
    "wait": [["wait_created", "wait_completed"], ["wait_created"]],
    "hook": [["hook_created", "hook_received", "hook_received", "hook_disposed"], ["hook_created"]],
}
EVERY_TYPE = sorted({t for ls in LIFECYCLES.values() for l in ls for t in l}
                    | {"run_created", "run_started", "run_completed", "run_failed", "run_cancelled", "attr_set"})
SCRIPTS, RUNS, ENTITIES, WRONG = 400, 3, 4, 0.03


def merge(rng, queues):
    """The queues' items interleaved at random, each queue in its order."""
    queues, out = [list(q) for q in queues if q], []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def script(rng):
    """(run, correlation id or None, type) rows: RUNS interleaved runs of
    ENTITIES entities each, a wrong row now and then."""
    runs = []
    for r in range(RUNS):
        run = f"r{r}"
        entities = []
        for e in range(ENTITIES):
            kind = rng.choice(sorted(LIFECYCLES))
            entities.append([(run, f"{kind}{e}", t) for t in rng.choice(LIFECYCLES[kind])])
        end = [(run, None, rng.choice(["run_completed", "run_failed", "run_cancelled"]))] if rng.random() < 0.5 else []
        runs.append([(run, None, "run_created"), (run, None, "run_started")] + merge(rng, entities) + end)
    rows = []
    for row in merge(rng, runs):
        if rng.random() < WRONG:
            row = (row[0], rng.choice([None, "step0", "wait1", "hook2", "x"]), rng.choice(EVERY_TYPE))
        rows.append(row)
    return rows


def named(prefix, rows):
    return [(f"{prefix}-{run}", corr, t) for run, corr, t in rows]


def stored(conn, prefix):
    events = conn.execute(
        "SELECT substr(run_id, length(%s) + 2), seq, type::text, correlation_id FROM workflow_ext.events "
        "WHERE run_id LIKE %s || '-%%' ORDER BY 1, 2", (prefix, prefix)).fetchall()
    runs = conn.execute(
        "SELECT substr(run_id, length(%s) + 2), state, last_seq, finished_at IS NOT NULL FROM workflow_ext.runs "
        "WHERE run_id LIKE %s || '-%%' ORDER BY 1", (prefix, prefix)).fetchall()
    return events, runs


def insert_each(conn, rows):
    """One INSERT per transaction; the first refusal: (its index, SQLSTATE,
    message), or None."""
    for i, row in enumerate(rows):
        try:
            conn.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES (%s, %s, %s)", row)
        except psycopg.Error as e:
            return i, e.sqlstate, e.diag.message_primary
    return None


def copy_all(conn, rows):
    """One COPY of every row; its error (SQLSTATE, message), or None."""
    try:
        with conn.transaction():
            with conn.cursor().copy(
                    "COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
    except psycopg.Error as e:
        return e.sqlstate, e.diag.message_primary
    return None


def test_copy_decides_what_one_insert_per_transaction_decides(db):
    rng = random.Random(20261207)
    refusals = accepted = 0
    with harness.connect(db) as conn:
        for k in range(SCRIPTS):
            rows = script(rng)
            single, copied = f"i{k}", f"c{k}"
            first = insert_each(conn, named(single, rows))
            error = copy_all(conn, named(copied, rows))
            if first is None:
                assert error is None, (k, error)
                accepted += len(rows)
                # In two COPYs: the second one's runs and entities were
                # stored before it began.
                halves = f"h{k}"
                cut = len(rows) // 2
                assert copy_all(conn, named(halves, rows[:cut])) is None, k
                assert copy_all(conn, named(halves, rows[cut:])) is None, k
                assert stored(conn, halves) == stored(conn, single), k
            else:
                i, code, message = first
                assert error == (code, message.replace(f'"{single}-', f'"{copied}-')), (k, i, rows[i], first, error)
                assert stored(conn, copied) == ([], []), k
                assert copy_all(conn, named(copied, rows[:i])) is None, k
                refusals += 1
                accepted += i
            assert stored(conn, copied) == stored(conn, single), k
        anomalies = conn.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0]
    assert anomalies == 0
    # The scripts did try both sides: refusals, and long accepted runs.
    assert refusals > SCRIPTS // 4 and accepted > SCRIPTS * 10, (refusals, accepted)


def test_copy_memory_is_not_kept_by_other_statements(db):
    """A step_started that ON CONFLICT skips (its id is taken): after a COPY,
    by a plain INSERT … ON CONFLICT; and inside a COPY into another table,
    by that table's trigger. The step is still pending for the next
    step_started, which is accepted, as the log says."""
    with harness.connect(db) as conn:
        conn.execute("CREATE TABLE feed (run_id text, correlation_id text, type text, id text)")
        conn.execute("""
            CREATE FUNCTION feed_log() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO workflow_ext.events (id, run_id, correlation_id, type)
              VALUES (coalesce(NEW.id, workflow_ext.new_event_id()), NEW.run_id, NEW.correlation_id,
                      NEW.type::workflow_ext.event_type)
              ON CONFLICT DO NOTHING;
              RETURN NULL;
            END $$""")
        conn.execute("CREATE TRIGGER feed BEFORE INSERT ON feed FOR EACH ROW EXECUTE FUNCTION feed_log()")
        for way in ("after", "inside"):
            run = f"{way}-r"
            with conn.transaction():
                cur = conn.cursor()
                with cur.copy("COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN") as cp:
                    for corr, t in ((None, "run_created"), (None, "run_started"), ("s", "step_created")):
                        cp.write_row((run, corr, t))
                taken = conn.execute("SELECT id FROM workflow_ext.events WHERE run_id = %s AND seq = 1",
                                     (run,)).fetchone()[0]
                if way == "after":
                    skipped = conn.execute(
                        "INSERT INTO workflow_ext.events (id, run_id, correlation_id, type) "
                        "VALUES (%s, %s, 's', 'step_started') ON CONFLICT DO NOTHING", (taken, run)).rowcount
                    assert skipped == 0
                    conn.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                                 "VALUES (%s, 's', 'step_started')", (run,))
                else:
                    with cur.copy("COPY feed (run_id, correlation_id, type, id) FROM STDIN") as cp:
                        cp.write_row((run, "s", "step_started", taken))
                        cp.write_row((run, "s", "step_started", None))
        events = conn.execute(
            "SELECT split_part(run_id, '-', 1), type::text, seq FROM workflow_ext.events "
            "WHERE correlation_id = 's' ORDER BY 1, seq").fetchall()
    # The skipped row gave its seq back (src/write/skipped.rs).
    assert events == [("after", "step_created", 3), ("after", "step_started", 4),
                      ("inside", "step_created", 3), ("inside", "step_started", 4)], events
