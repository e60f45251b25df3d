"""join_arrive is an exactly-once fan-in barrier (a with_items successor must be dispatched once, however many items finish together).

Seed 002: a with_items task of 5 items (concurrency 3) followed by one
successor. Items finish concurrently and their completions may be
redelivered; the successor must be dispatched exactly once, by the arrival
of the last distinct item. Here 1,000 such joins are raced by 16 sessions,
each item delivered 1-3 times by random sessions in random order (a superset
of what concurrency 3 produces: up to 5 items finish together).
"""

from collections import Counter

import harness
import pytest

RUN = "run-fanin"
ITEMS = 5
ARRIVE = "SELECT workflow_ext.join_arrive(%s, %s, %s, %s)"


@pytest.fixture(autouse=True)
def run_exists(db):
    """A join belongs to a run of workflow_ext.events: create it first."""
    with harness.connect(db) as conn:
        conn.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_created')", (RUN,))


def arrive(conn, join, member, expected=ITEMS):
    return conn.execute(ARRIVE, (RUN, join, member, expected)).fetchone()[0]


def test_every_join_fires_exactly_once_on_its_last_distinct_member(db):
    f = harness.fanin_race(db, arrive, sessions=16, joins=1000, members=ITEMS,
                           seed="fanin", joins_per_round=10)
    with harness.connect(db) as conn:
        joins = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE expected = %s AND arrived = %s AND fired_at IS NOT NULL) "
            "FROM workflow_ext.joins", (ITEMS, ITEMS)).fetchone()
        members = dict(conn.execute(
            "SELECT join_key, count(*) FROM workflow_ext.join_members GROUP BY 1").fetchall())
        stored = set(conn.execute("SELECT join_key, member_key FROM workflow_ext.join_members").fetchall())
    harness.figure(f.line("fan-in barrier") + f", {joins[1]}/{joins[0]} joins complete in the table")
    assert f.joins >= 1000 and f.redeliveries > 0
    assert f.errors == Counter()
    assert f.double_fires == 0 and f.missing_fires == 0 and f.fires == f.joins
    assert f.early_fires == 0
    assert joins == (f.joins, f.joins)
    assert all(members.get(j) == ITEMS for j in f.fired_by)
    assert all((j, d.member) in stored for j, d in f.fired_by.items())


# Seed 002's bug: each completion marks its item done (committed), then
# counts the items still not done and dispatches the successor if none are
# left. Two items finishing together both count 0; a redelivery after the
# last item counts 0 again. No lock, no "already fired" record.
NAIVE = """
CREATE TABLE naive_items (join_key text, member_key text, done boolean NOT NULL DEFAULT false,
                          PRIMARY KEY (join_key, member_key));
INSERT INTO naive_items (join_key, member_key)
SELECT format('join-%s', lpad(j::text, 4, '0')), format('item-%s', m)
  FROM generate_series(0, 999) j, generate_series(1, 5) m;
"""


def naive_arrive(conn, join, member):
    conn.execute("UPDATE naive_items SET done = true WHERE join_key = %s AND member_key = %s", (join, member))
    return conn.execute("SELECT count(*) = 0 FROM naive_items WHERE join_key = %s AND NOT done",
                        (join,)).fetchone()[0]


def test_naive_count_remaining_barrier_double_fires(db):
    with harness.connect(db) as conn:
        conn.execute(NAIVE)
    f = harness.fanin_race(db, naive_arrive, sessions=16, joins=1000, members=ITEMS,
                           seed="fanin", joins_per_round=10)
    harness.figure(f.line("naive fan-in barrier (must be caught)"))
    assert f.errors == Counter()
    assert f.double_fires > 0


def test_sixteen_distinct_members_racing_a_join_of_five(db):
    """More distinct members than expected, all at once: the lock admits
    exactly 5; the fifth fires; the other 11 are refused with 55000."""
    joins = [f"over-{j:03d}" for j in range(100)]
    outcomes = harness.race_each_key(
        db, 16, joins,
        lambda i, conn, join: harness.call(conn, ARRIVE, (RUN, join, f"item-{i}", ITEMS)))
    shapes = Counter(
        tuple(sorted(Counter(o.value[0] if o.ok else o.sqlstate for o in outs).items(), key=str))
        for outs in outcomes.values())
    with harness.connect(db) as conn:
        members = Counter(n for (n,) in conn.execute(
            "SELECT count(*) FROM workflow_ext.join_members WHERE join_key LIKE 'over-%' GROUP BY join_key"))
    harness.figure(f"over-delivered joins: 100 joins x 16 distinct members, outcome per join "
                   f"{dict(shapes)}, stored members per join {dict(members)}")
    assert shapes == {(("55000", 11), (False, 4), (True, 1)): 100}
    assert members == {ITEMS: 100}


def test_expected_mismatch_and_member_after_fire_are_refused(db):
    with harness.connect(db) as conn:
        assert [arrive(conn, "j", f"item-{m}") for m in range(1, 6)] == [False] * 4 + [True]
        sixth = harness.call(conn, ARRIVE, (RUN, "j", "item-6", ITEMS))
        mismatch_fired = harness.call(conn, ARRIVE, (RUN, "j", "item-1", 4))
        redelivery = arrive(conn, "j", "item-3")
        arrive(conn, "fresh", "a")
        mismatch_open = harness.call(conn, ARRIVE, (RUN, "fresh", "b", 4))
        state = conn.execute(
            "SELECT expected, arrived, fired_at IS NOT NULL, "
            "(SELECT count(*) FROM workflow_ext.join_members m WHERE m.join_key = j.join_key) "
            "FROM workflow_ext.joins j ORDER BY join_key").fetchall()
    harness.figure(f"fan-in errors: 6th member after fire {sixth.sqlstate}, expected mismatch "
                   f"{mismatch_fired.sqlstate} (fired join) / {mismatch_open.sqlstate} (open join), "
                   f"redelivery after fire returned {redelivery}")
    assert sixth.sqlstate == "55000"
    assert mismatch_fired.sqlstate == "22023"
    assert mismatch_open.sqlstate == "22023"
    assert redelivery is False
    # Refused calls changed nothing: "fresh" (expected 5, 1 member), "j" (5 of 5, fired).
    assert state == [(ITEMS, 1, False, 1), (ITEMS, ITEMS, True, ITEMS)]
