"""distribute() of an attached table: a DevKit-shaped table (the package's
columns, varchar run_id, primary key on id), attached while empty, then
distributed: co-located with the varchar run table, its primary key led by
run_id, every guarantee held through the coordinator and on workers, a
duplicate creation's 23505 naming the creation index; and logs that have
events, own or attached, distributed with them."""
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


def events_of(f, log, db=DB):
    return f.coordinator.sql(f"SELECT run_id::text, seq, id::text, type::text, correlation_id::text FROM {log} "
                             "ORDER BY run_id, seq", db=db)


def test_the_own_log_is_distributed_with_its_events(citus):
    """distribute() of the own log after appends: the events, their run rows,
    a hook's token and a join move with it; appends go on at the next seq
    and the rules hold for the runs as they were."""
    f = citus
    db = f.new_database("wfx_distribute_with_events")
    with f.coordinator.connect(db) as c:
        for r in ("done", "busy", "hooked", "joined"):
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
        c.execute("SELECT workflow_ext.append_event('done', NULL, 'run_completed')")
        c.execute("SELECT workflow_ext.append_suspension_event('busy', 's1', 'step_created')")
        c.execute("SELECT workflow_ext.append_event('hooked', 'h1', 'hook_created', '{\"token\": \"tk\"}')")
        assert c.execute("SELECT workflow_ext.join_arrive('joined', 'j', 'm1', 2)").fetchone() == (False,)
    before = events_of(f, "workflow_ext.events", db)
    with f.coordinator.connect(db) as c:
        c.execute("BEGIN")
        c.execute("SELECT workflow_ext.distribute()")
        # The copy's pass-through ends with the copy.
        assert c.execute("SELECT current_setting('workflow_ext.distributing', true)").fetchone() == ("",)
        c.execute("COMMIT")
    assert events_of(f, "workflow_ext.events", db) == before
    # Citus leaves the copied rows in the coordinator's own table, invisible;
    # its way to remove them is a TRUNCATE, which the append-only guard refuses.
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        f.coordinator.sql("SELECT truncate_local_data_after_distributing_table('workflow_ext.events')", db=db)
    assert events_of(f, "workflow_ext.events", db) == before
    assert f.coordinator.sql("SELECT run_id, state, last_seq FROM workflow_ext.distributed_runs ORDER BY 1", db=db) == [
        ("busy", "running", 3), ("done", "completed", 3), ("hooked", "running", 3), ("joined", "running", 2)]
    assert f.coordinator.sql("SELECT count(*) FROM workflow_ext.runs", db=db) == [(0,)]
    for node in f.nodes:
        with node.connect(db) as c:
            assert c.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone() == (0,), node.name
    with f.coordinator.connect(db) as c:
        assert c.execute("SELECT seq FROM workflow_ext.append_event('busy', 's1', 'step_started')").fetchone() == (4,)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("SELECT workflow_ext.append_event('done', 's9', 'step_created')")
        c.execute("SELECT workflow_ext.append_suspension_event('other', NULL, 'run_created')")
        c.execute("SELECT workflow_ext.append_event('other', NULL, 'run_started')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("SELECT workflow_ext.append_event('other', 'h1', 'hook_created', '{\"token\": \"tk\"}')")
        assert c.execute("SELECT workflow_ext.join_arrive('joined', 'j', 'm2', 2)").fetchone() == (True,)
    # The pass-through is a superuser's: a writer who sets it is checked as ever.
    with f.coordinator.connect(db) as c:
        c.execute("CREATE ROLE wfx_writer LOGIN")
        c.execute("SELECT workflow_ext.grant_access('wfx_writer', 'writer')")
    for node in f.workers:
        with psycopg.connect(node.conninfo(db), user="wfx_writer", autocommit=True) as c:
            c.execute("SET workflow_ext.distributing = 'workflow_ext.events'")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                c.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                          "VALUES ('done', 's8', 'step_created')")


def test_an_attached_table_is_distributed_with_its_events(citus):
    """A DevKit-shaped table attached with a history, then distributed: the
    events and their run rows move, the varchar run table takes the rows,
    writes go on at the next seq on every node."""
    f = citus
    db = f.new_database("wfx_distribute_attached_with_events")
    with f.coordinator.connect(db) as c:
        c.execute(DEVKIT)
        for r in range(6):
            for p, (typ, corr) in enumerate((("run_created", None), ("run_started", None), ("step_created", "s1"))):
                c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                          "VALUES (%s, %s, %s, %s)", (f"wevt_{r}_{p}", f"wrun_{r}", typ, corr))
        c.execute("SELECT workflow_ext.attach('workflow.workflow_events')")
    before = events_of(f, "workflow.workflow_events", db)
    f.coordinator.sql("SELECT workflow_ext.distribute('workflow.workflow_events')", db=db)
    assert events_of(f, "workflow.workflow_events", db) == before
    assert f.coordinator.sql("SELECT count(*), min(last_seq), max(last_seq) FROM workflow_ext.distributed_runs_varchar",
                             db=db) == [(6, 3, 3)]
    for node, run in ((f.coordinator, "wrun_0"), (f.workers[0], "wrun_1"), (f.workers[1], "wrun_2")):
        with node.connect(db) as c:
            assert c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                             "VALUES (%s, %s, 'step_started', 's1') RETURNING seq", (f"wevt_n_{run}", run)).fetchone() == (4,)
            with pytest.raises(psycopg.errors.UniqueViolation):
                c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                          "VALUES (%s, %s, 'step_created', 's1')", (f"wevt_d_{run}", run))
            assert c.execute("SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events')").fetchone() == (0,)


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


DISTRIBUTED_BY_HAND = """
CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (
    id varchar, type varchar NOT NULL, correlation_id varchar,
    created_at timestamp DEFAULT now() NOT NULL, run_id varchar NOT NULL,
    payload jsonb, spec_version integer, PRIMARY KEY (run_id, id));
CREATE INDEX workflow_events_run_id_index ON workflow.workflow_events (run_id);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON workflow.workflow_events
    (run_id, correlation_id, type) WHERE type IN ('step_created', 'hook_created', 'wait_created');
SELECT create_distributed_table('workflow.workflow_events', 'run_id');
"""


def history(c, runs):
    """Three events per run, a step open; the last run completed."""
    for r in range(runs):
        steps = (("run_created", None), ("run_started", None), ("step_created", "s1"))
        if r == runs - 1:
            steps = (("run_created", None), ("run_started", None), ("run_completed", None))
        for p, (typ, corr) in enumerate(steps):
            c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                      "VALUES (%s, %s, %s, %s)", (f"wevt_{r}_{p}", f"wrun_{r}", typ, corr))


def test_a_table_distributed_first_is_attached_and_undistributed(citus):
    """A DevKit-shaped table the user distributed before adopting the
    extension, with a history in its shards: attach audits and numbers it on
    the coordinator and distributes it again (co-located with its run rows);
    every rule holds on every node. undistribute() then brings it back whole:
    its registration and run rows follow it to the new local table, where the
    rules hold as before. Citus's undistribute_table alone loses both."""
    f = citus
    db = f.new_database("wfx_attach_distributed")
    with f.coordinator.connect(db) as c:
        c.execute(DISTRIBUTED_BY_HAND)
        history(c, 6)
    # The dry run reads it where it is.
    dry = dict((k, (r, e, d)) for k, r, e, d in f.coordinator.sql(
        "SELECT * FROM workflow_ext.attach_dry_run('workflow.workflow_events')", db=db))
    assert dry["total"][:2] == (6, 18), dry
    assert dry["verdict"][2] == "attach would succeed", dry
    assert f.coordinator.sql("SELECT workflow_ext.attach('workflow.workflow_events')", db=db) == [(18,)]
    assert f.coordinator.sql(
        "SELECT logicalrelid::text FROM pg_dist_partition WHERE colocationid = "
        "(SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'workflow.workflow_events'::regclass) "
        "ORDER BY 1", db=db) == [("workflow.workflow_events",), ("workflow_ext.distributed_runs_varchar",)]
    assert f.coordinator.sql("SELECT log::text, rows_numbered FROM workflow_ext.attached_logs "
                             "WHERE log::text <> 'workflow_ext.events'", db=db) == [("workflow.workflow_events", 18)]
    events = events_of(f, "workflow.workflow_events", db)
    assert [(r, s, i) for r, s, i, _, _ in events] == [
        (f"wrun_{r}", p + 1, f"wevt_{r}_{p}") for r in range(6) for p in range(3)]
    runs = f.coordinator.sql("SELECT run_id::text, state, last_seq, created_at, finished_at, last_event_at "
                             "FROM workflow_ext.distributed_runs_varchar ORDER BY 1", db=db)
    assert [(r, s, n) for r, s, n, *_ in runs] == [(f"wrun_{r}", "running", 3) for r in range(5)] + [
        ("wrun_5", "completed", 3)]
    assert f.coordinator.sql("SELECT count(*) FROM workflow_ext.runs", db=db) == [(0,)]
    for node, run in ((f.coordinator, "wrun_0"), (f.workers[0], "wrun_1"), (f.workers[1], "wrun_2")):
        with node.connect(db) as c:
            assert insert(c, run, "step_started", "s1", f"wevt_n_{run}") == 4
            with pytest.raises(psycopg.errors.UniqueViolation) as e:
                insert(c, run, "step_created", "s1", f"wevt_d_{run}")
            assert e.value.diag.constraint_name == "workflow_events_entity_creation_unique", node.name
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                insert(c, "wrun_5", "step_created", "s9", f"wevt_l_{run}")
            assert c.execute("SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events')").fetchone() == (0,)
    with f.coordinator.connect(db) as c, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        c.execute("SELECT workflow_ext.detach('workflow.workflow_events')")
    assert e.value.diag.message_hint == "Undistribute it first: SELECT workflow_ext.undistribute('workflow.workflow_events')."

    # The undo.
    before = events_of(f, "workflow.workflow_events", db)
    runs = f.coordinator.sql("SELECT run_id::text, state, last_seq, created_at, finished_at, last_event_at "
                             "FROM workflow_ext.distributed_runs_varchar ORDER BY 1", db=db)
    f.coordinator.sql("SELECT workflow_ext.undistribute('workflow.workflow_events')", db=db)
    assert f.coordinator.sql("SELECT count(*) FROM pg_dist_partition "
                             "WHERE logicalrelid = 'workflow.workflow_events'::regclass", db=db) == [(0,)]
    assert events_of(f, "workflow.workflow_events", db) == before
    assert f.coordinator.sql("SELECT run_id, state, last_seq, created_at, finished_at, last_event_at "
                             "FROM workflow_ext.runs WHERE log = 'workflow.workflow_events'::regclass ORDER BY 1",
                             db=db) == runs
    assert f.coordinator.sql("SELECT count(*) FROM workflow_ext.distributed_runs_varchar", db=db) == [(0,)]
    assert f.coordinator.sql("SELECT log::text, rows_numbered FROM workflow_ext.attached_logs "
                             "WHERE log::text <> 'workflow_ext.events'", db=db) == [("workflow.workflow_events", 18)]
    # A second call has nothing to do.
    f.coordinator.sql("SELECT workflow_ext.undistribute('workflow.workflow_events')", db=db)
    with f.coordinator.connect(db) as c:
        assert insert(c, "wrun_0", "step_completed", "s1", "wevt_local_0") == 5
        with pytest.raises(psycopg.errors.UniqueViolation) as e:
            insert(c, "wrun_3", "step_created", "s1", "wevt_local_d")
        assert e.value.diag.constraint_name == "workflow_events_entity_creation_unique"
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            insert(c, "wrun_5", "step_created", "s9", "wevt_local_l")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("DELETE FROM workflow.workflow_events WHERE run_id = 'wrun_0'")
        assert c.execute("SELECT count(*) FROM workflow_ext.scan('workflow.workflow_events')").fetchone() == (0,)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("SELECT workflow_ext.undistribute()")
        assert e.value.diag.message_primary == "cannot undistribute workflow_ext.events"

    # Citus's own undistribute_table, after distributing it again: the
    # registration goes with the dropped table and the run rows stay behind,
    # so the next legal event of a run is refused.
    f.coordinator.sql("SELECT workflow_ext.distribute('workflow.workflow_events')", db=db)
    with f.coordinator.connect(db) as c:
        assert insert(c, "wrun_1", "step_completed", "s1", "wevt_again_1") == 5
    f.coordinator.sql("SELECT undistribute_table('workflow.workflow_events')", db=db)
    assert f.coordinator.sql("SELECT count(*) FROM workflow_ext.attached_logs "
                             "WHERE log::text <> 'workflow_ext.events'", db=db) == [(0,)]
    with f.coordinator.connect(db) as c, pytest.raises(psycopg.errors.ForeignKeyViolation) as e:
        insert(c, "wrun_2", "step_completed", "s1", "wevt_naive_2")
    assert e.value.diag.message_primary == 'step_completed refused: run "wrun_2" has no run_created event'


def test_attach_of_a_distributed_table_with_anomalies_changes_nothing(citus):
    """The audit refuses a distributed table's past as any table's (55000):
    the attach is rolled back whole, the table distributed as it was."""
    f = citus
    db = f.new_database("wfx_attach_distributed_refused")
    with f.coordinator.connect(db) as c:
        c.execute(DISTRIBUTED_BY_HAND)
        history(c, 3)
        # An event after the run's end.
        c.execute("INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) "
                  "VALUES ('wevt_2_9', 'wrun_2', 'step_created', 's1')")
    before = f.coordinator.sql("SELECT run_id::text, id::text, type::text FROM workflow.workflow_events ORDER BY 1, 2",
                               db=db)
    dry = dict((k, d) for k, _, _, d in f.coordinator.sql(
        "SELECT * FROM workflow_ext.attach_dry_run('workflow.workflow_events')", db=db))
    assert dry["verdict"].startswith("attach needs accept_existing"), dry
    with f.coordinator.connect(db) as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        c.execute("SELECT workflow_ext.attach('workflow.workflow_events')")
    assert f.coordinator.sql("SELECT count(*) FROM pg_dist_partition "
                             "WHERE logicalrelid = 'workflow.workflow_events'::regclass", db=db) == [(1,)]
    assert f.coordinator.sql("SELECT run_id::text, id::text, type::text FROM workflow.workflow_events ORDER BY 1, 2",
                             db=db) == before
    assert f.coordinator.sql("SELECT count(*) FROM workflow_ext.logs", db=db) == [(1,)]
    assert f.coordinator.sql("SELECT count(*) FROM information_schema.columns "
                             "WHERE table_schema = 'workflow' AND column_name = 'seq'", db=db) == [(0,)]


def test_a_redelivery_reads_the_shards_not_what_citus_left_behind(citus):
    """Citus leaves the rows it distributed in the coordinator's own table
    (invisible to SQL). append_suspension_event's direct probe of the
    creation index read them: after purge_runs removed a finished run from
    its shard, a redelivered creation of that run was answered from the
    leftovers (inserted = false, a row that no longer exists) instead of
    being refused as an append to a run that does not exist (23503)."""
    f = citus
    db = f.new_database("wfx_probe_after_distribute")
    with f.coordinator.connect(db) as c:
        for r in ("gone", "kept"):
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
            c.execute("SELECT workflow_ext.append_suspension_event(%s, 'g1', 'step_created')", (r,))
        c.execute("SELECT workflow_ext.append_event('gone', NULL, 'run_completed')")
        kept = c.execute("SELECT event_id, seq FROM workflow_ext.append_suspension_event('kept', 'g1', 'step_created')"
                         ).fetchone()
    f.coordinator.sql("SELECT workflow_ext.distribute()", db=db)
    assert f.coordinator.sql("SELECT workflow_ext.purge_runs('0 seconds')", db=db) == [(1,)]
    with f.coordinator.connect(db) as c:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute("SELECT * FROM workflow_ext.append_suspension_event('gone', 'g1', 'step_created')")
        assert c.execute("SELECT event_id, seq, inserted FROM "
                         "workflow_ext.append_suspension_event('kept', 'g1', 'step_created')").fetchone() == (*kept, False)
        assert c.execute("SELECT seq, inserted FROM "
                         "workflow_ext.append_suspension_event('kept', 'g2', 'step_created')").fetchone() == (4, True)
