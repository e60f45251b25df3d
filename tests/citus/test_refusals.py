"""What distribute() refuses, and an append to a log Citus distributes
without the extension's run table: each with its SQLSTATE, nothing changed."""
import psycopg
import pytest


def test_refusals(citus):
    f = citus
    # On a worker: the coordinator distributes.
    with f.connect(f.workers[0]) as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.execute("SELECT workflow_ext.distribute()")
    assert e.value.diag.message_primary == "a log is distributed from the Citus coordinator"
    # A table that is not a protected log.
    f.sql("CREATE TABLE plain (id text, run_id text, type text, correlation_id text)")
    with f.connect() as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        c.execute("SELECT workflow_ext.distribute('plain')")
    assert f.sql("SELECT count(*) FROM pg_dist_partition") == [(0,)]


def test_a_log_distributed_by_hand_refuses_appends(citus):
    """Distributed without distributed_runs co-located, a run's row would not
    move with its events: every append is refused (55000), nothing written,
    and distribute() says how to recover."""
    f = citus
    with f.connect() as c:
        c.execute("SET citus.enable_unsafe_triggers = on")
        c.execute("ALTER TABLE workflow_ext.events DROP CONSTRAINT events_id_key, "
                  "ADD CONSTRAINT events_id_key UNIQUE (run_id, id)")
        c.execute("SELECT create_distributed_table('workflow_ext.events', 'run_id', colocate_with => 'none')")
    for node in f.nodes:
        with f.connect(node) as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            c.execute("SELECT workflow_ext.append_suspension_event('byhand', NULL, 'run_created')")
        assert e.value.diag.message_primary == "log workflow_ext.events is distributed without its run table"
    with f.connect() as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.execute("SELECT workflow_ext.distribute()")
    # The own log cannot be undistributed (it belongs to the extension).
    assert e.value.diag.message_hint.startswith("Citus undistributes no table of an extension")
    assert f.sql("SELECT count(*) FROM workflow_ext.events WHERE run_id = 'byhand'") == [(0,)]


def test_a_table_citus_distributes_is_not_attached_concurrently(citus):
    """attach_concurrently of a table distributed by hand: 0A000 with the way
    round (attach, which brings the rows to the coordinator; before, XX000
    from deep inside it), nothing changed."""
    with citus.connect() as c:
        c.execute("CREATE TABLE by_hand (id text, run_id text NOT NULL, type text NOT NULL, "
                  "correlation_id text, payload jsonb, created_at timestamptz DEFAULT now(), PRIMARY KEY (run_id, id))")
        c.execute("SELECT create_distributed_table('by_hand', 'run_id')")
        c.execute("INSERT INTO by_hand (id, run_id, type) VALUES ('e1', 'r1', 'run_created')")
    with citus.connect() as c, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        c.execute("CALL workflow_ext.attach_concurrently('by_hand')")
    assert e.value.diag.message_primary == 'cannot attach "public.by_hand" concurrently: Citus distributes it'
    assert "workflow_ext.attach('public.by_hand')" in e.value.diag.message_hint
    assert citus.sql("SELECT count(*) FROM workflow_ext.logs WHERE relation::text = 'by_hand'") == [(0,)]
    assert citus.sql("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'by_hand'::regclass") == [(1,)]


def test_only_a_table_distributed_by_run_id_is_attached_so(citus):
    """attach takes a table Citus distributes by run_id (test_attached); a
    reference table or one distributed by another column is not turned
    into that unasked: 0A000 naming what it is, nothing changed."""
    cols = ("(id text, run_id text NOT NULL, type text NOT NULL, correlation_id text, "
            "payload jsonb, created_at timestamptz DEFAULT now(), PRIMARY KEY (run_id, id))")
    with citus.connect() as c:
        c.execute(f"CREATE TABLE as_reference {cols}")
        c.execute("SELECT create_reference_table('as_reference')")
        c.execute(f"CREATE TABLE by_id {cols}")
        c.execute("SELECT create_distributed_table('by_id', 'id')")
    for table, what in (("as_reference", "a reference table"), ("by_id", "distributed by id")):
        with citus.connect() as c, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(f"SELECT workflow_ext.attach('{table}')")
        assert e.value.diag.message_primary == f'cannot attach "public.{table}": Citus does not distribute it by run_id'
        assert e.value.diag.message_detail == f"It is {what}; a protected log is distributed by run_id."
        assert citus.sql("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = %s::regclass", (table,)) == [(1,)]
    assert citus.sql("SELECT count(*) FROM workflow_ext.logs WHERE relation::text IN ('as_reference', 'by_id')") == [(0,)]


def test_distribute_checks_the_log_again(citus):
    """Citus copies a log's events as the caller of distribute() or
    undistribute(), a superuser, evaluating the log's CHECK constraints: a
    log that holds one attach would refuse (here added behind the DDL
    watcher's back, as an older version let through) is refused (55000)
    before anything moves."""
    with citus.connect() as c:
        c.execute("CREATE TABLE checked_log (id text, run_id text NOT NULL, type text NOT NULL, "
                  "correlation_id text, payload jsonb, created_at timestamptz DEFAULT now(), PRIMARY KEY (run_id, id))")
        c.execute("SELECT workflow_ext.attach('checked_log')")
        c.execute("INSERT INTO checked_log (id, run_id, type) VALUES ('e1', 'r1', 'run_created')")
        c.execute("ALTER EVENT TRIGGER workflow_ext_guard_logs DISABLE")
        c.execute("ALTER TABLE checked_log ADD CONSTRAINT reserved "
                  "CHECK (pg_catalog.lo_import('/etc/hostname', 434343) > 0) NOT VALID")
        c.execute("ALTER EVENT TRIGGER workflow_ext_guard_logs ENABLE ALWAYS")
    with citus.connect() as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.execute("SELECT workflow_ext.distribute('checked_log')")
    assert "its CHECK constraints" in e.value.diag.message_primary
    assert citus.sql("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'checked_log'::regclass") == [(0,)]
    for node in citus.nodes:
        assert citus.sql("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 434343", node=node) == [(0,)]
