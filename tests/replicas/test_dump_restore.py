"""pg_dump -Fc of a database with workflow_ext, its data and an attached
DevKit-shaped table, restored into a fresh database.

What works (the recipe these tests hold):
    CREATE DATABASE restored;
    pg_restore --section=pre-data              -d restored dump
    pg_restore --data-only --disable-triggers  -d restored dump   # as a superuser
    pg_restore --section=post-data             -d restored dump
    ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER <each of its 4 triggers>;

Why not the one-step `pg_restore --disable-triggers`: PostgreSQL applies
--disable-triggers only to a data-only restore; in a full restore it does
nothing, so the events are loaded through the (ENABLE ALWAYS) insert trigger,
which fills runs and hook_tokens itself, and then the dumped rows of runs and
hook_tokens fail to load (23505). Why the final ALTER: the data-only restore
wraps each table in DISABLE TRIGGER ALL / ENABLE TRIGGER ALL, and ENABLE
TRIGGER ALL turns the extension's ENABLE ALWAYS triggers into ordinary ones
(tgenabled 'A' → 'O'), which session_replication_role = replica silences.
"""
import os

import psycopg
import pytest

from conftest import BIN, as_pg
from workload import ENDINGS, disorder_heap, lifecycle, rows, write_runs

DEVKIT_TABLE = """CREATE SCHEMA workflow;
CREATE TABLE workflow.workflow_events (id varchar PRIMARY KEY, type varchar NOT NULL,
    correlation_id varchar, created_at timestamp DEFAULT now() NOT NULL,
    run_id varchar NOT NULL, payload jsonb)"""
DEVKIT_ROWS = [  # (id, type, correlation_id, run_id): two runs, one finished
    ("wevt_D01", "run_created", None, "drun_1"), ("wevt_D02", "run_started", None, "drun_1"),
    ("wevt_D03", "step_created", "s1", "drun_1"), ("wevt_D04", "step_started", "s1", "drun_1"),
    ("wevt_D05", "step_completed", "s1", "drun_1"), ("wevt_D06", "run_completed", None, "drun_1"),
    ("wevt_D07", "run_created", None, "drun_2"), ("wevt_D08", "run_started", None, "drun_2"),
    ("wevt_D09", "step_created", "s1", "drun_2"), ("wevt_D10", "step_started", "s1", "drun_2"),
]
BOOTSTRAP_DDL = "CREATE TABLE public.app_jobs (id bigint PRIMARY KEY, name text)"
EVENTS_TRIGGERS = ("events_validate_insert", "events_hook_tokens", "events_append_only", "events_no_truncate")
STATE = {   # what must come back identical, table by table
    "runs": "SELECT log::text, run_id, state, last_seq, created_at, finished_at FROM workflow_ext.runs ORDER BY 1, 2",
    "joins": "SELECT * FROM workflow_ext.joins ORDER BY 1, 2",
    "join_members": "SELECT * FROM workflow_ext.join_members ORDER BY 1, 2, 3",
    "hook_tokens": "SELECT * FROM workflow_ext.hook_tokens ORDER BY 1",
    "bootstraps": "SELECT name, checksum, ddl, applied_at, applied_by FROM workflow_ext.bootstraps ORDER BY 1",
    "attached_logs": "SELECT log::text, accept_existing, seq_added, rows_numbered, attached_at "
                     "FROM workflow_ext.attached_logs WHERE log <> 'workflow_ext.events'::regclass ORDER BY 1",
    "devkit": "SELECT id, run_id, seq, type, correlation_id, payload::text, created_at "
              "FROM workflow.workflow_events ORDER BY run_id, seq",
    "app_jobs": "SELECT to_regclass('public.app_jobs')::text",
    "triggers_devkit": "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'workflow.workflow_events'::regclass "
                       "AND NOT tgisinternal ORDER BY 1",
    # Index definitions by meaning: a restored index's predicate prints
    # differently (pg_restore re-parses the dumped text), as
    # workflow_ext.predicate_shape knows (the DDL watcher compares so).
    "indexes_devkit": "SELECT indexname, regexp_replace(indexdef, ' WHERE .*$', ''), "
                      "workflow_ext.predicate_shape(substring(indexdef FROM ' WHERE (.*)$')) "
                      "FROM pg_indexes WHERE schemaname = 'workflow' ORDER BY 1",
}


@pytest.fixture(scope="module")
def dumped(clusters):
    c = clusters("dump")
    c.create_db("wfx_src")
    with c.connect("wfx_src") as k:
        runs = {f"run_{i}": lifecycle(f"run_{i}", 3, ENDINGS[i % 3]) for i in range(6)}
        runs["run_open"] = lifecycle("run_open", 2, ending=None)[:-1]   # its hook still active: holds a token
        write_runs(k, runs)
        assert k.execute("SELECT count(*) FROM workflow_ext.hook_tokens").fetchone()[0] == 1
        for m in ("a", "b", "c"):
            k.execute("SELECT workflow_ext.join_arrive('run_0', 'fan_in', %s, 3)", (m,))   # fired
        k.execute("SELECT workflow_ext.join_arrive('run_open', 'pending_join', 'a', 2)")   # waiting
        assert k.execute("SELECT workflow_ext.bootstrap('app@1', %s)", (BOOTSTRAP_DDL,)).fetchone()[0]
        k.execute(DEVKIT_TABLE)
        for r in DEVKIT_ROWS:
            k.execute("INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) VALUES (%s, %s, %s, %s)", r)
        assert k.execute("SELECT workflow_ext.attach('workflow.workflow_events')").fetchone()[0] == len(DEVKIT_ROWS)
        assert k.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
    path = os.path.join(c.dir, "wfx_src.dump")
    as_pg(f"{BIN}/pg_dump", "-Fc", "-h", c.dir, "-p", str(c.port), "-U", "postgres", "-f", path, "wfx_src")
    return c, path


def restore(c, path, db, *opts):
    return as_pg(f"{BIN}/pg_restore", *opts, "-h", c.dir, "-p", str(c.port), "-U", "postgres",
                 "-d", db, path, check=False, timeout=120)


def snapshot(conn):
    return {name: conn.execute(q).fetchall() for name, q in STATE.items()}


def test_dump_and_restore(dumped):
    c, path = dumped
    c.sql("CREATE DATABASE wfx_restored")
    for opts in (["--section=pre-data"], ["--data-only", "--disable-triggers"], ["--section=post-data"]):
        r = restore(c, path, "wfx_restored", *opts)
        assert r.returncode == 0, f"pg_restore {' '.join(opts)}: {r.stderr}"

    with c.connect("wfx_src") as src, c.connect("wfx_restored") as dst:
        # The data-only step's ENABLE TRIGGER ALL left the extension's triggers
        # ENABLE (origin), no longer ENABLE ALWAYS …
        modes = dict(dst.execute("SELECT tgname, tgenabled FROM pg_trigger "
                                 "WHERE tgrelid = 'workflow_ext.events'::regclass AND NOT tgisinternal").fetchall())
        print(f"OBSERVED: after the data-only restore, workflow_ext.events triggers: {modes}")
        assert modes == {t: "O" for t in EVENTS_TRIGGERS}
        # … so under session_replication_role = replica the log is no longer append-only.
        with pytest.raises(psycopg.errors.UndefinedTable):   # rollback marker, see below
            with dst.transaction():
                dst.execute("SET LOCAL session_replication_role = replica")
                n = dst.execute("DELETE FROM workflow_ext.events WHERE run_id = 'run_0'").rowcount
                print(f"OBSERVED: with the triggers left at 'O', a DELETE under session_replication_role = replica "
                      f"removed {n} events (rolled back)")
                assert n > 0
                dst.execute("SELECT * FROM no_such_table_rollback")
        # The restore's last step: put ENABLE ALWAYS back.
        for t in EVENTS_TRIGGERS:
            dst.execute(f"ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER {t}")

        assert rows(dst) == rows(src)                     # same rows, ids and seqs
        assert snapshot(dst) == snapshot(src)             # same seqs in the DevKit table, runs, joins, tokens …
        assert dst.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
        assert dst.execute("SELECT * FROM workflow_ext.scan('workflow.workflow_events')").fetchall() == []
        assert ("workflow.workflow_events",) in dst.execute("SELECT log::text FROM workflow_ext.attached_logs").fetchall()

        # Appends continue at the next seq, in both logs.
        top = dst.execute("SELECT max(seq) FROM workflow_ext.events WHERE run_id = 'run_open'").fetchone()[0]
        assert dst.execute("SELECT seq FROM workflow_ext.append_event('run_open', 'hook_1', 'hook_disposed')").fetchone()[0] == top + 1
        assert dst.execute("SELECT seq FROM workflow_ext.append_event('run_open', NULL, 'run_completed')").fetchone()[0] == top + 2
        assert dst.execute("SELECT count(*) FROM workflow_ext.hook_tokens").fetchone()[0] == 0   # released by the terminal
        assert dst.execute("INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) "
                           "VALUES ('wevt_D11', 'step_completed', 's1', 'drun_2') RETURNING seq").fetchone()[0] == 5
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            dst.execute("INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) "
                        "VALUES ('wevt_D12', 'step_started', 's1', 'drun_2')")   # after its completion
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            dst.execute("SELECT * FROM workflow_ext.append_event('run_1', NULL, 'run_started')")  # run_1 finished
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            dst.execute("UPDATE workflow_ext.events SET payload = '{}' WHERE run_id = 'run_0'")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            dst.execute("UPDATE workflow.workflow_events SET payload = '{}' WHERE run_id = 'drun_1'")
        with pytest.raises(psycopg.errors.FeatureNotSupported):   # ENABLE ALWAYS again
            with dst.transaction():
                dst.execute("SET LOCAL session_replication_role = replica")
                dst.execute("DELETE FROM workflow_ext.events WHERE run_id = 'run_0'")
        # Fan-in and bootstrap ledger state came along.
        assert dst.execute("SELECT workflow_ext.join_arrive('run_0', 'fan_in', 'a', 3)").fetchone()[0] is False
        assert dst.execute("SELECT workflow_ext.join_arrive('run_open', 'pending_join', 'b', 2)").fetchone()[0] is True
        assert dst.execute("SELECT workflow_ext.bootstrap('app@1', %s)", (BOOTSTRAP_DDL,)).fetchone()[0] is False
        assert dst.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
        assert dst.execute("SELECT * FROM workflow_ext.scan('workflow.workflow_events')").fetchall() == []


@pytest.mark.parametrize("opts", [["--disable-triggers"], []], ids=["one-step --disable-triggers", "one-step plain"])
def test_one_step_restore_is_not_enough(dumped, opts):
    """The README's one-liner: `pg_restore --disable-triggers` of the whole
    dump. The flag only applies to data-only restores, so this is the same as
    a plain restore: the extension's triggers are live while its data loads."""
    c, path = dumped
    db = "wfx_onestep_" + ("dt" if opts else "plain")
    c.sql(f"CREATE DATABASE {db}")
    r = restore(c, path, db, *opts)
    print(f"OBSERVED: pg_restore {' '.join(opts) or '(no options)'} → exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode != 0
    assert 'COPY failed for table "runs"' in r.stderr and 'COPY failed for table "hook_tokens"' in r.stderr
    with c.connect("wfx_src") as src, c.connect(db) as dst:
        # The events themselves came in (through the trigger, in table order) …
        assert rows(dst) == rows(src)
        # … but the dumped runs rows did not: only those the trigger made for
        # workflow_ext.events; the attached table's runs rows are gone.
        logs = dst.execute("SELECT DISTINCT log::text FROM workflow_ext.runs").fetchall()
        print(f"OBSERVED: runs rows after the one-step restore, by log: {logs}")
        assert logs == [("workflow_ext.events",)]
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as err:
            dst.execute("INSERT INTO workflow.workflow_events (id, type, correlation_id, run_id) "
                        "VALUES ('wevt_D11', 'step_completed', 's1', 'drun_2')")
        print(f"OBSERVED: a legal insert into the attached table for an existing run → "
              f"{err.value.sqlstate}: {err.value.diag.message_primary} ({err.value.diag.message_detail})")


def test_one_step_restore_of_a_heap_out_of_seq_order(dumped):
    """The same one-step restore when a run's rows are out of seq order in the
    heap (after purge_runs + VACUUM): the insert trigger refuses the events'
    COPY, pg_restore goes on, and the restored log is empty. The recipe above
    (data loaded with triggers disabled) restores it whole."""
    c, _ = dumped
    c.create_db("wfx_src_disorder")
    with c.connect("wfx_src_disorder") as k:
        seqs = disorder_heap(k)
        src_rows = rows(k)
    path = os.path.join(c.dir, "wfx_src_disorder.dump")
    as_pg(f"{BIN}/pg_dump", "-Fc", "-h", c.dir, "-p", str(c.port), "-U", "postgres", "-f", path, "wfx_src_disorder")

    c.sql("CREATE DATABASE wfx_disorder_onestep")
    r = restore(c, path, "wfx_disorder_onestep", "--disable-triggers")
    print(f"OBSERVED: heap order {seqs}; pg_restore --disable-triggers → exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode != 0 and 'COPY failed for table "events"' in r.stderr
    assert c.sql("SELECT count(*) FROM workflow_ext.events", db="wfx_disorder_onestep")[0][0] == 0

    c.sql("CREATE DATABASE wfx_disorder_recipe")
    for opts in (["--section=pre-data"], ["--data-only", "--disable-triggers"], ["--section=post-data"]):
        assert restore(c, path, "wfx_disorder_recipe", *opts).returncode == 0
    with c.connect("wfx_disorder_recipe") as dst:
        for t in EVENTS_TRIGGERS:
            dst.execute(f"ALTER TABLE workflow_ext.events ENABLE ALWAYS TRIGGER {t}")
        assert rows(dst) == src_rows
        assert dst.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
        top = max(s for _, run, s, *_ in src_rows if run == "keep")
        assert dst.execute("SELECT seq FROM workflow_ext.append_event('keep', 'step_a', 'step_started')").fetchone()[0] == top + 1
