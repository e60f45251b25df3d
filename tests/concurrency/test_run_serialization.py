"""append_event checks the lifecycle under the run's row lock, so racing
transitions of one entity are decided one at a time.

(a) 16 sessions start the same pending step: one succeeds, 15 get 55000
    (illegal_transition: the step is running by then). A naive
    check-then-insert without the lock lets several starts through.
(b) 16 sessions finish the same running step, half with step_completed, half
    with step_failed: exactly one terminal event is stored.
(c) 16 sessions drive their own steps of one run concurrently: no transition
    is lost, the run's seqs are dense, each step's events are in order.
"""

from collections import Counter

import harness

APPEND = "SELECT event_id, seq FROM workflow_ext.append_event(%s, %s, %s)"
RUN = "run-serial"
SESSIONS, STEPS = 16, 200


def seed_steps(db, table_sql_append, steps, started):
    with harness.connect(db) as conn:
        conn.execute(table_sql_append, (RUN, None, "run_created"))
        conn.execute(table_sql_append, (RUN, None, "run_started"))
        for s in steps:
            conn.execute(table_sql_append, (RUN, s, "step_created"))
            if started:
                conn.execute(table_sql_append, (RUN, s, "step_started"))


def race_transition(db, append_sql, table, steps, event_for_session):
    """Races event_for_session(i) on every step (a barrier per step); returns
    (calls, multiple winners, stored events of the raced types per step,
    refusal codes)."""
    outcomes = harness.race_each_key(
        db, SESSIONS, steps,
        lambda i, conn, step: harness.call(conn, append_sql, (RUN, step, event_for_session(i))),
    )
    raced = sorted({event_for_session(i) for i in range(SESSIONS)})
    with harness.connect(db) as conn:
        stored = Counter(dict(conn.execute(
            f"SELECT correlation_id, count(*) FROM {table} "
            "WHERE run_id = %s AND type::text = ANY(%s) GROUP BY correlation_id",
            (RUN, raced),
        ).fetchall()))
        gaps = harness.seq_gaps(conn, table)
    winners = Counter({s: sum(o.ok for o in outs) for s, outs in outcomes.items()})
    refusals = Counter(
        (o.sqlstate, (o.detail or "").split(";")[0]) for outs in outcomes.values() for o in outs if not o.ok
    )
    return winners, stored, refusals, gaps


def test_racing_starts_of_one_step_admit_exactly_one(db):
    steps = [f"step-{s:03d}" for s in range(STEPS)]
    seed_steps(db, APPEND, steps, started=False)
    winners, stored, refusals, gaps = race_transition(
        db, APPEND, "workflow_ext.events", steps, lambda i: "step_started")
    double = sum(max(n - 1, 0) for n in winners.values())
    harness.figure(
        f"step_started race: {SESSIONS} sessions x {STEPS} steps = {SESSIONS * STEPS} calls, "
        f"{sum(winners.values())} successes, {double} double starts, "
        f"{sum(1 for s in steps if stored[s] != 1)} steps without exactly one stored start, "
        f"refusals {dict(refusals)}, {gaps} seq gaps")
    assert all(winners[s] == 1 for s in steps)
    assert all(stored[s] == 1 for s in steps)
    assert refusals == {("55000", "anomaly: illegal_transition"): (SESSIONS - 1) * STEPS}
    assert gaps == 0


def test_racing_completed_and_failed_store_exactly_one_terminal_event(db):
    steps = [f"step-{s:03d}" for s in range(STEPS)]
    seed_steps(db, APPEND, steps, started=True)
    winners, stored, refusals, gaps = race_transition(
        db, APPEND, "workflow_ext.events", steps,
        lambda i: "step_completed" if i % 2 else "step_failed")
    with harness.connect(db) as conn:
        kinds = dict(conn.execute(
            "SELECT type::text, count(*) FROM workflow_ext.events "
            "WHERE type IN ('step_completed', 'step_failed') GROUP BY 1").fetchall())
    harness.figure(
        f"step_completed vs step_failed race: {SESSIONS} sessions x {STEPS} steps, "
        f"{sum(winners.values())} successes, terminal events stored {kinds}, "
        f"{sum(1 for s in steps if stored[s] != 1)} steps without exactly one terminal event, "
        f"refusals {dict(refusals)}, {gaps} seq gaps")
    assert all(winners[s] == 1 for s in steps)
    assert all(stored[s] == 1 for s in steps)
    assert refusals == {("55000", "anomaly: event_after_terminal"): (SESSIONS - 1) * STEPS}
    assert gaps == 0


def test_concurrent_lifecycles_on_one_run_lose_no_transition(db):
    per_session = 50
    lifecycle = ["step_created", "step_started", "step_completed"]
    with harness.connect(db) as conn:
        conn.execute(APPEND, (RUN, None, "run_created"))
        conn.execute(APPEND, (RUN, None, "run_started"))

    def work(i, conn, barrier):
        barrier.wait()
        return [harness.call(conn, APPEND, (RUN, f"s{i:02d}-{k:02d}", t))
                for k in range(per_session) for t in lifecycle]

    outcomes = [o for mine in harness.run_sessions(db, SESSIONS, work) for o in mine]
    with harness.connect(db) as conn:
        orders = conn.execute(
            "SELECT correlation_id, array_agg(type::text ORDER BY seq) FROM workflow_ext.events "
            "WHERE run_id = %s AND correlation_id IS NOT NULL GROUP BY 1", (RUN,)).fetchall()
        total = conn.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0]
        gaps = harness.seq_gaps(conn)
    failed = Counter(o.sqlstate for o in outcomes if not o.ok)
    bad_order = sum(1 for _, types in orders if types != lifecycle)
    harness.figure(
        f"concurrent lifecycles on one run: {SESSIONS} sessions, {len(outcomes)} calls, "
        f"{sum(failed.values())} failed, {len(orders)} steps, {bad_order} steps not in lifecycle order, "
        f"{total} events, {gaps} seq gaps")
    assert failed == {}
    assert len(orders) == SESSIONS * per_session and bad_order == 0
    assert total == 2 + SESSIONS * per_session * len(lifecycle)
    assert gaps == 0


# The naive comparison: "is the step pending?" read without any lock, then
# the insert. Same race, same checker.
NAIVE = """
CREATE TABLE naive_events (
    id text NOT NULL, run_id text NOT NULL, seq bigint NOT NULL,
    type workflow_ext.event_type NOT NULL, correlation_id text,
    payload jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON naive_events (run_id, correlation_id, seq);

CREATE FUNCTION naive_append_event(p_run text, p_corr text, p_type text)
RETURNS TABLE (event_id text, seq bigint) LANGUAGE plpgsql AS $$
DECLARE
    last_type text; new_id text := workflow_ext.new_event_id(); new_seq bigint;
BEGIN
    IF p_type = 'step_started' THEN
        SELECT e.type::text INTO last_type FROM naive_events e
         WHERE e.run_id = p_run AND e.correlation_id = p_corr ORDER BY e.seq DESC LIMIT 1;
        IF last_type IS DISTINCT FROM 'step_created' THEN
            RAISE EXCEPTION 'step % is not pending', p_corr
                USING ERRCODE = '55000', DETAIL = 'anomaly: illegal_transition';
        END IF;
    END IF;
    SELECT coalesce(max(e.seq), 0) + 1 INTO new_seq FROM naive_events e WHERE e.run_id = p_run;
    INSERT INTO naive_events (id, run_id, seq, type, correlation_id)
    VALUES (new_id, p_run, new_seq, p_type::workflow_ext.event_type, p_corr);
    RETURN QUERY SELECT new_id, new_seq;
END $$;
"""


def test_naive_unlocked_start_check_lets_double_starts_through(db):
    with harness.connect(db) as conn:
        conn.execute(NAIVE)
    naive = "SELECT event_id, seq FROM naive_append_event(%s, %s, %s)"
    steps = [f"step-{s:03d}" for s in range(STEPS)]
    seed_steps(db, naive, steps, started=False)
    winners, stored, refusals, gaps = race_transition(
        db, naive, "naive_events", steps, lambda i: "step_started")
    double = sum(max(n - 1, 0) for n in winners.values())
    harness.figure(
        f"naive step_started race (must be caught): {SESSIONS} sessions x {STEPS} steps, "
        f"{sum(winners.values())} successes, {double} double starts, "
        f"{sum(1 for s in steps if stored[s] > 1)} steps started more than once, {gaps} seq gaps")
    assert double > 0
    assert any(stored[s] > 1 for s in steps)
