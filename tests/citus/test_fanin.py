"""Fan-in (join_arrive) on the distributed own log: the joins and their
members are co-located with the run rows, so an arrival locks the run and
counts the join on the run's node, through the coordinator or on a worker."""
import threading

import psycopg
import pytest

from conftest import DB
from test_hook_tokens import runs_on_both_workers

MEMBERS = 12


@pytest.fixture(scope="module")
def distributed(citus):
    citus.sql("SELECT workflow_ext.distribute()")
    return citus


def test_joins_are_co_located_with_the_runs(distributed):
    groups = dict(distributed.sql(
        "SELECT logicalrelid::text, colocationid FROM pg_dist_partition WHERE logicalrelid IN "
        "('workflow_ext.distributed_runs'::regclass, 'workflow_ext.joins'::regclass, "
        " 'workflow_ext.join_members'::regclass, 'workflow_ext.events'::regclass)"))
    assert len(groups) == 4 and len(set(groups.values())) == 1, groups


def test_racing_arrivals_fire_once(distributed):
    """MEMBERS clients over the three nodes arrive at one join of each of two
    runs (one per worker), each twice (a redelivery): exactly one arrival
    per join is told it completed the set."""
    f = distributed
    runs = runs_on_both_workers(f, "fanin_", 2)
    for r in runs:
        f.sql("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
        f.sql("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    fired, failures = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(MEMBERS)

    def member(k):
        try:
            with psycopg.connect(f.nodes[k % 3].conninfo(DB), autocommit=True) as c:
                barrier.wait(60)
                for _ in range(2):
                    for r in runs:
                        (done,) = c.execute("SELECT workflow_ext.join_arrive(%s, 'j', %s, %s)",
                                            (r, f"m{k}", MEMBERS)).fetchone()
                        if done:
                            with lock:
                                fired.append(r)
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(repr(e))

    threads = [threading.Thread(target=member, args=(k,)) for k in range(MEMBERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert sorted(fired) == sorted(runs), fired
    rows = f.sql("SELECT run_id, arrived, expected, fired_at IS NOT NULL FROM workflow_ext.joins "
                 "WHERE run_id LIKE 'fanin_%%' ORDER BY 1")
    assert rows == [(r, MEMBERS, MEMBERS, True) for r in sorted(runs)]
    # Another member after the join fired: 55000.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        f.sql("SELECT workflow_ext.join_arrive(%s, 'j', 'late', %s)", (runs[0], MEMBERS), node=f.workers[1])


def test_an_unknown_run_is_refused_on_every_node(distributed):
    for node in distributed.nodes:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            distributed.sql("SELECT workflow_ext.join_arrive('fanin_nobody', 'j', 'm', 2)", node=node)


def test_purge_removes_a_finished_runs_joins(distributed):
    f = distributed
    runs = [r for (r,) in f.sql("SELECT DISTINCT run_id FROM workflow_ext.joins WHERE run_id LIKE 'fanin_%%'")]
    assert runs
    for r in runs:
        f.sql("SELECT workflow_ext.append_event(%s, NULL, 'run_completed')", (r,))
    f.sql("SELECT workflow_ext.purge_runs('0 seconds')")
    assert f.sql("SELECT count(*) FROM workflow_ext.joins WHERE run_id LIKE 'fanin_%%'") == [(0,)]
    assert f.sql("SELECT count(*) FROM workflow_ext.join_members WHERE run_id LIKE 'fanin_%%'") == [(0,)]
    assert f.sql("SELECT count(*) FROM workflow_ext.events WHERE run_id LIKE 'fanin_%%'") == [(0,)]
