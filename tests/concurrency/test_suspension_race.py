"""append_suspension_event under a real race: one row, one winner, one id.

16 sessions call every key (50 runs x 40 step ids, after racing each run's
run_created), each in its own shuffled order, all released together per run.
Every call must be told the one stored event; the log must hold exactly one
row per key, and each run's seqs must be exactly 1..n.
"""

import harness

SQL = "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event(%s, %s, %s)"


def test_suspension_race_one_row_one_winner_dense_seq(db):
    f = harness.suspension_race(
        db, SQL, "workflow_ext.events", sessions=16, runs=50, steps=40, seed="suspension"
    )
    harness.figure(f.line("suspension race"))
    assert f.calls >= 10_000 and f.keys >= 2_000
    assert f.clean, f"the race broke a guarantee: {f.line('suspension race')}; errors {dict(f.errors)}"
