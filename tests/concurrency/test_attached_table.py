"""The same races against a table put under the extension with attach: a
DevKit-shaped workflow.workflow_events (varchar columns, client-minted ids,
the package's own creation index, which attach replaces).

(a) The suspension race of test_suspension_race, written the way
    world-postgres writes a creation: a plain INSERT with a client id; a loser
    gets 23505 on workflow_events_entity_creation_unique (the package's
    EntityConflictError) and reads the stored row. 0 duplicates, every caller
    told the winner's id, dense seqs.
(b) The same harness on the same table *without* attach (the package's index
    covers no run_created, nothing numbers or orders the log): caught.
(c) test_run_serialization's racing starts and terminals of one step, as
    plain INSERTs into the attached table: one winner, one terminal, dense.
"""

import harness
from test_run_serialization import SESSIONS, race_transition, seed_steps

DEVKIT = """
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
    id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
    created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
    payload jsonb, payload_cbor bytea, spec_version integer);
CREATE INDEX ON workflow.workflow_events (run_id);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
    (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');

-- A creation as world-postgres makes one: INSERT with a client-minted id; a
-- 23505 on the creation index is the package's EntityConflictError, after
-- which the caller reads the stored creation.
CREATE FUNCTION devkit_create(p_run text, p_corr text, p_type text)
RETURNS TABLE (event_id text, seq bigint, inserted boolean) LANGUAGE plpgsql AS $$
DECLARE
    new_id text := workflow_ext.new_event_id();
    constraint_name text;
BEGIN
    BEGIN
        INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id, spec_version)
        VALUES (new_id, p_type, p_corr, p_run, 3);
        RETURN QUERY SELECT new_id, %(seq)s, true;
        RETURN;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS constraint_name = CONSTRAINT_NAME;
        IF constraint_name <> 'workflow_events_entity_creation_unique' THEN
            RAISE;
        END IF;
    END;
    RETURN QUERY SELECT e.id::text, %(stored_seq)s, false FROM workflow.workflow_events e
     WHERE e.run_id = p_run AND e.correlation_id IS NOT DISTINCT FROM p_corr AND e.type = p_type
     ORDER BY e.id LIMIT 1;
END $$;
"""

CREATE = "SELECT event_id, seq, inserted FROM devkit_create(%s, %s, %s)"
INSERT = ("INSERT INTO workflow.workflow_events (id, run_id, correlation_id, type) "
          "VALUES (workflow_ext.new_event_id(), %s, %s, %s) RETURNING id, seq")


def make_devkit(db, attached):
    with harness.connect(db) as conn:
        if attached:
            conn.execute(DEVKIT % {
                "seq": "(SELECT e.seq FROM workflow.workflow_events e WHERE e.id = new_id)",
                "stored_seq": "e.seq"})
            conn.execute("SELECT workflow_ext.attach('workflow.workflow_events')")
        else:
            # No seq column to report: the checker then counts every
            # position of every run as missing.
            conn.execute(DEVKIT % {"seq": "NULL::bigint", "stored_seq": "NULL::bigint"})


def test_attached_devkit_table_suspension_race(db):
    make_devkit(db, attached=True)
    f = harness.suspension_race(
        db, CREATE, "workflow.workflow_events", sessions=16, runs=20, steps=40, seed="attached"
    )
    harness.figure(f.line("suspension race, attached DevKit table"))
    assert f.calls >= 10_000 and f.keys >= 800
    assert f.clean, f"the race broke a guarantee: {f.line('suspension race, attached DevKit table')}; errors {dict(f.errors)}"


def test_unattached_devkit_table_is_caught(db):
    make_devkit(db, attached=False)
    f = harness.suspension_race(
        db, CREATE, "(SELECT *, NULL::bigint AS seq FROM workflow.workflow_events) t",
        sessions=16, runs=20, steps=40, seed="attached"
    )
    harness.figure(f.line("suspension race, the same table without attach (must be caught)"))
    assert f.errors == {}, f"calls failed: {dict(f.errors)}"
    # run_created is outside the package's index: racing creators all store one.
    assert f.duplicates > 0
    assert f.winner_count_wrong > 0
    assert not f.clean


def test_attached_table_admits_one_start_and_one_terminal(db):
    make_devkit(db, attached=True)
    table = "workflow.workflow_events"
    steps = [f"step-{s:03d}" for s in range(100)]
    seed_steps(db, INSERT, steps, started=False)
    winners, stored, refusals, gaps = race_transition(db, INSERT, table, steps, lambda i: "step_started")
    harness.figure(f"attached table, racing starts: {sum(winners.values())} winners for {len(steps)} steps, "
                   f"refusals {dict(refusals)}, seq gaps {gaps}")
    assert all(n == 1 for n in winners.values()) and len(winners) == len(steps)
    assert all(stored[s] == 1 for s in steps)
    assert set(refusals) == {("55000", "anomaly: illegal_transition")}
    assert gaps == 0

    winners, stored, refusals, gaps = race_transition(
        db, INSERT, table, steps, lambda i: "step_completed" if i % 2 else "step_failed")
    harness.figure(f"attached table, racing terminals: {sum(winners.values())} winners for {len(steps)} steps, "
                   f"refusals {dict(refusals)}, seq gaps {gaps}")
    assert all(n == 1 for n in winners.values())
    assert all(stored[s] == 1 for s in steps)
    assert set(refusals) == {("55000", "anomaly: event_after_terminal")}
    assert gaps == 0
    assert SESSIONS * len(steps) - len(steps) == sum(refusals.values())
