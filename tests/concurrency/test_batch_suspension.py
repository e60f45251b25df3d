"""append_suspension_events: 16 sessions create the same 50 steps of a run
at once, each in its own order (a suspension over Promise.all seen by every
worker during a rollout). Per key: one stored row, one caller told
inserted = true, every caller the same event id; seqs dense; nothing else.
Against a naive batch (check, then insert, per key) the same checker fails."""
import random

from harness import connect, figure, run_sessions, seq_gaps

SESSIONS = 16
ROUNDS = 20
STEPS = 50

BATCH = """SELECT correlation_id, event_id, inserted FROM workflow_ext.append_suspension_events(
             %s, %s::text[], array_fill('step_created'::text, ARRAY[%s]))"""
NAIVE_TABLE = """CREATE TABLE naive_events (id text DEFAULT md5(random()::text), run_id text,
                                            correlation_id text, type text)"""
NAIVE = """WITH want AS (SELECT unnest(%s::text[]) AS c),
                ins AS (INSERT INTO naive_events (run_id, correlation_id, type)
                        SELECT %s, w.c, 'step_created' FROM want w
                        WHERE NOT EXISTS (SELECT FROM naive_events n WHERE n.run_id = %s AND n.correlation_id = w.c)
                        RETURNING correlation_id, id)
           SELECT c, coalesce((SELECT id FROM ins WHERE ins.correlation_id = w.c),
                              (SELECT min(id) FROM naive_events n WHERE n.run_id = %s AND n.correlation_id = w.c)),
                  EXISTS (SELECT FROM ins WHERE ins.correlation_id = w.c)
             FROM want w"""


def race(db, call_batch, stored_rows):
    keys = [f"step_{k:02d}" for k in range(STEPS)]
    runs = [f"wrun_batch_{r}" for r in range(ROUNDS)]
    with connect(db) as c:
        for run in runs:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))

    def work(i, conn, barrier):
        rng = random.Random(i)
        told = []
        for run in runs:
            mine = keys[:]
            rng.shuffle(mine)
            barrier.wait()
            told.append((run, call_batch(conn, run, mine)))
        return told

    results = run_sessions(db, SESSIONS, work)
    wrong = {"not_one_row": 0, "not_one_winner": 0, "ids_differ": 0, "not_stored_id": 0}
    with connect(db) as c:
        for run in runs:
            stored = stored_rows(c, run)
            for k in keys:
                ids = stored.get(k, [])
                told = [t for session in results for (r, rows) in session if r == run for t in rows if t[0] == k]
                winners = sum(1 for t in told if t[2])
                wrong["not_one_row"] += len(ids) != 1
                wrong["not_one_winner"] += winners != 1
                wrong["ids_differ"] += len({t[1] for t in told}) != 1
                wrong["not_stored_id"] += any(t[1] not in ids for t in told)
    return wrong


def test_batch_creation_race(db):
    def call_batch(conn, run, mine):
        return [tuple(r) for r in conn.execute(BATCH, (run, mine, len(mine))).fetchall()]

    def stored(c, run):
        rows = c.execute("SELECT correlation_id, id FROM workflow_ext.events WHERE run_id = %s AND type = 'step_created'",
                         (run,)).fetchall()
        out = {}
        for k, i in rows:
            out.setdefault(k, []).append(i)
        return out

    wrong = race(db, call_batch, stored)
    with connect(db) as c:
        gaps = seq_gaps(c)
        total = c.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0]
    figure(f"batch creation race: {SESSIONS} sessions x {ROUNDS} runs x {STEPS} steps in shuffled order, "
           f"{total} rows, {wrong}, {gaps} seq gaps")
    assert wrong == {"not_one_row": 0, "not_one_winner": 0, "ids_differ": 0, "not_stored_id": 0}
    assert gaps == 0 and total == ROUNDS * (STEPS + 1)


def test_batch_checker_catches_a_naive_batch(db):
    with connect(db) as c:
        c.execute(NAIVE_TABLE)

    def call_batch(conn, run, mine):
        return [tuple(r) for r in conn.execute(NAIVE, (mine, run, run, run)).fetchall()]

    def stored(c, run):
        out = {}
        for k, i in c.execute("SELECT correlation_id, id FROM naive_events WHERE run_id = %s", (run,)).fetchall():
            out.setdefault(k, []).append(i)
        return out

    wrong = race(db, call_batch, stored)
    figure(f"naive batch race (must be caught): {SESSIONS} sessions x {ROUNDS} runs x {STEPS} steps, {wrong}")
    assert wrong["not_one_row"] > 0 and wrong["not_one_winner"] > 0


def test_batch_races_single_appends_on_the_same_runs(db):
    """Half the sessions create the steps with batches (overlapping halves of
    the keys), the others with single append_suspension_event calls, and one
    starts each step as soon as it exists, all on the same runs at once: the
    batch's one lock per run must serialize with the per-row lock of every
    other path. One row per key, one winner, dense seqs, every start after
    its creation."""
    keys = [f"step_{k:02d}" for k in range(STEPS)]
    runs = [f"wrun_mixed_{r}" for r in range(ROUNDS)]
    with connect(db) as c:
        for run in runs:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))

    def work(i, conn, barrier):
        rng = random.Random(1000 + i)
        told = []
        for run in runs:
            mine = keys[:]
            rng.shuffle(mine)
            barrier.wait()
            if i == 0:
                started = 0
                for k in mine:
                    # Start whatever exists already; a step not yet created is
                    # refused with 23503 and nothing is written.
                    try:
                        conn.execute("SELECT workflow_ext.append_event(%s, %s, 'step_started')", (run, k))
                        started += 1
                    except Exception as e:  # noqa: BLE001 - the SQLSTATE is checked
                        assert getattr(e, "sqlstate", None) == "23503", e
                told.append((run, [("started", started)]))
            elif i % 2:
                half = mine[: STEPS * 3 // 4]
                rows = conn.execute(BATCH, (run, half, len(half))).fetchall()
                told.append((run, [tuple(r) for r in rows]))
            else:
                rows = []
                for k in mine[: STEPS * 3 // 4]:
                    eid, ins = conn.execute(
                        "SELECT event_id, inserted FROM workflow_ext.append_suspension_event(%s, %s, 'step_created')",
                        (run, k)).fetchone()
                    rows.append((k, eid, ins))
                told.append((run, rows))
        return told

    results = run_sessions(db, SESSIONS, work)
    wrong = {"not_one_row": 0, "not_one_winner": 0, "ids_differ": 0, "start_before_creation": 0}
    with connect(db) as c:
        for run in runs:
            stored = {}
            for k, eid in c.execute("SELECT correlation_id, id FROM workflow_ext.events "
                                    "WHERE run_id = %s AND type = 'step_created'", (run,)).fetchall():
                stored.setdefault(k, []).append(eid)
            for k in stored:
                told = [t for s in results for (r, rows) in s if r == run for t in rows if t[0] == k]
                wrong["not_one_row"] += len(stored[k]) != 1
                wrong["not_one_winner"] += sum(1 for t in told if t[2]) != 1
                wrong["ids_differ"] += len({t[1] for t in told} | set(stored[k])) != 1
        wrong["start_before_creation"] = c.execute(
            """SELECT count(*) FROM workflow_ext.events s WHERE s.type = 'step_started' AND s.run_id LIKE 'wrun_mixed_%'
                 AND NOT EXISTS (SELECT FROM workflow_ext.events c WHERE c.run_id = s.run_id
                                   AND c.correlation_id = s.correlation_id AND c.type = 'step_created' AND c.seq < s.seq)"""
        ).fetchone()[0]
        gaps = seq_gaps(c)
        created = c.execute("SELECT count(*) FROM workflow_ext.events WHERE run_id LIKE 'wrun_mixed_%' "
                            "AND type = 'step_created'").fetchone()[0]
    figure(f"batch vs single calls vs starts on the same runs: {SESSIONS} sessions x {ROUNDS} runs, "
           f"{created} step rows, {wrong}, {gaps} seq gaps")
    assert wrong == {"not_one_row": 0, "not_one_winner": 0, "ids_differ": 0, "start_before_creation": 0}
    assert gaps == 0 and created > 0
