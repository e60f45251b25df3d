"""distribute() of an attached table: a DevKit-shaped table (the package's
columns, varchar run_id, primary key on id), attached while empty, then
distributed: co-located with the varchar run table, its primary key led by
run_id, every guarantee held through the coordinator and on workers, a
duplicate creation's 23505 naming the creation index. A log that has events
is refused (Citus would copy them into the shards as new appends)."""
import threading

import psycopg
import pytest

from conftest import DB

DEVKIT = """
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
    id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
    created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
    payload jsonb, spec_version integer);
CREATE INDEX workflow_events_run_id_index ON workflow.workflow_events (run_id);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
    (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
"""


def insert(c, run, typ, corr=None, eid=None):
    return c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                     "VALUES (%s, %s, %s, %s) RETURNING seq", (eid, run, typ, corr)).fetchone()[0]


def test_a_log_with_events_is_refused(citus):
    f = citus
    f.sql("SELECT workflow_ext.append_suspension_event('early', NULL, 'run_created')")
    with f.connect() as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.execute("SELECT workflow_ext.distribute()")
    assert e.value.diag.message_primary == "workflow_ext.events has events"
    assert f.sql("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'workflow_ext.events'::regclass") == [(0,)]


def test_attached_devkit_table(citus):
    f = citus
    with f.connect() as c:
        c.execute(DEVKIT)
        c.execute("SELECT workflow_ext.attach('workflow.workflow_events')")
    f.sql("SELECT workflow_ext.distribute('workflow.workflow_events')")
    assert f.sql("SELECT logicalrelid::text FROM pg_dist_partition WHERE colocationid = "
                 "(SELECT colocationid FROM pg_dist_partition "
                 " WHERE logicalrelid = 'workflow.workflow_events'::regclass) ORDER BY 1") == [
        ("workflow.workflow_events",), ("workflow_ext.distributed_runs_varchar",)]
    assert f.sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                 "WHERE conrelid = 'workflow.workflow_events'::regclass AND contype = 'p'") == [
        ("PRIMARY KEY (run_id, id)",)]
    with f.connect() as c:
        for r in range(10):
            run = f"wrun_{r:02d}"
            for p, (typ, corr) in enumerate((("run_created", None), ("run_started", None),
                                              ("step_created", "s1"), ("step_started", "s1"))):
                assert insert(c, run, typ, corr, f"wevt_{r:02d}_{p}") == p + 1
    assert f.sql("SELECT count(*), min(last_seq), max(last_seq) FROM workflow_ext.distributed_runs_varchar "
                 "WHERE log = 'workflow.workflow_events'") == [(10, 4, 4)]
    # Through the coordinator and on each worker.
    for node, run in ((f.coordinator, "wrun_00"), (f.workers[0], "wrun_01"), (f.workers[1], "wrun_02")):
        with f.connect(node) as c:
            assert insert(c, run, "step_completed", "s1", f"wevt_new_{run}") == 5
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                insert(c, run, "step_started", "s1", f"wevt_late_{run}")
            with pytest.raises(psycopg.errors.UniqueViolation) as e:
                insert(c, run, "step_created", "s1", f"wevt_dup_{run}")
            assert e.value.diag.constraint_name == "workflow_events_entity_creation_unique", node.name
    # 12 racers over the nodes on new steps of every run: one row per key,
    # dense seqs.
    failures, barrier = [], threading.Barrier(12)

    def racer(k):
        try:
            with psycopg.connect(f.nodes[k % 3].conninfo(DB), autocommit=True) as c:
                barrier.wait()
                for r in range(10):
                    for s in range(3):
                        try:
                            insert(c, f"wrun_{r:02d}", "step_created", f"n{s}", f"wevt_r{k}_{r}_{s}")
                        except psycopg.errors.UniqueViolation as e:
                            assert e.diag.constraint_name == "workflow_events_entity_creation_unique"
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(repr(e))

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    for run_id, n, lo, hi, steps in f.sql(
            "SELECT run_id, count(*), min(seq), max(seq), count(*) FILTER (WHERE correlation_id LIKE 'n%%') "
            "FROM workflow.workflow_events GROUP BY run_id"):
        assert (lo, hi) == (1, n), run_id
        assert steps == 3, run_id
    assert f.sql("SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events')") == [(0,)]
    with f.connect() as c, pytest.raises(psycopg.errors.FeatureNotSupported):
        c.execute("SELECT workflow_ext.detach('workflow.workflow_events')")
