"""The suspension-race checker is not vacuous: it catches a naive
SELECT-then-INSERT-if-absent, run through the very same harness and sizes.

naive_events has the events columns but no unique key and no lock, so two
callers that both see "absent" both insert (duplicates, both told
inserted=true, each told its own id), and max(seq)+1 hands out the same seq
twice.
"""

import harness

NAIVE = """
CREATE TABLE naive_events (
    id text NOT NULL, run_id text NOT NULL, seq bigint NOT NULL,
    type workflow_ext.event_type NOT NULL, correlation_id text,
    payload jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON naive_events (run_id, correlation_id);

CREATE FUNCTION naive_append(p_run text, p_corr text, p_type text)
RETURNS TABLE (event_id text, seq bigint, inserted boolean) LANGUAGE plpgsql AS $$
DECLARE
    found_id text; found_seq bigint;
BEGIN
    SELECT e.id, e.seq INTO found_id, found_seq FROM naive_events e
     WHERE e.run_id = p_run AND e.correlation_id IS NOT DISTINCT FROM p_corr
       AND e.type = p_type::workflow_ext.event_type;
    IF FOUND THEN
        RETURN QUERY SELECT found_id, found_seq, false;
        RETURN;
    END IF;
    -- No pg_sleep between the check and the insert: the per-run barrier
    -- rounds of the harness make the natural window enough.
    found_id := workflow_ext.new_event_id();
    SELECT coalesce(max(e.seq), 0) + 1 INTO found_seq FROM naive_events e WHERE e.run_id = p_run;
    INSERT INTO naive_events (id, run_id, seq, type, correlation_id)
    VALUES (found_id, p_run, found_seq, p_type::workflow_ext.event_type, p_corr);
    RETURN QUERY SELECT found_id, found_seq, true;
END $$;
"""

SQL = "SELECT event_id, seq, inserted FROM naive_append(%s, %s, %s)"


def test_harness_catches_naive_check_then_insert(db):
    with harness.connect(db) as conn:
        conn.execute(NAIVE)
    f = harness.suspension_race(
        db, SQL, "naive_events", sessions=16, runs=50, steps=40, seed="suspension"
    )
    harness.figure(f.line("naive suspension race (must be caught)"))
    assert f.errors == {}, f"calls failed: {dict(f.errors)}"
    assert f.duplicates > 0
    assert f.calls_without_winner_id > 0
    assert f.winner_count_wrong > 0
    assert not f.clean
