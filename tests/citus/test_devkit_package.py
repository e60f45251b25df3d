"""The real @workflow/world-postgres (5.0.0-beta.29 and 4.3.7, from
tests/devkit's lock files) on its own event table, attached and distributed
by workflow_ext.distribute(), driven through the Citus coordinator by
tests/devkit's driver: the vercel/workflow#2039 race (8 Node processes
creating the same steps, hooks and runs at one instant) leaves one row and
one winner per entity, and every loser gets the package's
EntityConflictError: the 23505 of a worker's shard reaches the package
naming workflow_events_entity_creation_unique, which it maps by name."""
import importlib.util
import os

import pytest

from lib.cluster import ROOT

spec = importlib.util.spec_from_file_location("devkit_suite", os.path.join(ROOT, "tests", "devkit", "test_devkit.py"))
devkit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(devkit)


@pytest.fixture
def through_the_coordinator(citus, monkeypatch):
    """tests/devkit's helpers, pointed at the coordinator."""
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(citus.coordinator.port))
    monkeypatch.setenv("PGUSER", "postgres")
    return citus


@pytest.mark.parametrize("version", ["v5", "v4"])
def test_the_package_races_on_a_distributed_table(through_the_coordinator, version, tmp_path):
    f = through_the_coordinator
    workdir = str(tmp_path)
    db = f.new_database(f"wfx_citus_devkit_{version}")
    devkit.setup_schema(version, db, workdir)
    # The package's other tables stay on the coordinator, plain tables.
    c = f.coordinator
    c.sql("SELECT workflow_ext.attach('workflow.workflow_events')", db=db)
    c.sql("SELECT workflow_ext.distribute('workflow.workflow_events')", db=db)
    assert c.sql("SELECT count(*) FROM pg_dist_partition "
                 "WHERE logicalrelid = 'workflow.workflow_events'::regclass", db=db) == [(1,)]
    fig = devkit.race_once(version, db, workdir, attached=True)
    devkit.print_race(version, "distributed (Citus)", fig)
    entities = devkit.ENTITIES
    for kind, k in fig["kinds"].items():
        assert k["other"] == 0, f"{kind}: errors other than EntityConflictError: {k['other_errors']}"
        assert k["conflict"] == k["calls"] - entities, (kind, k)
        assert k["ok"] == entities and k["entities_with_one_ok"] == entities, (kind, k)
        assert k["rows"] == entities and k["duplicates"] == 0, (kind, k)
        assert k["winners"] == entities and k["entities_with_one_winner"] == entities, (kind, k)
    assert fig["hook_conflict_rows"] == 0
    assert not fig["seq_gaps"] and not fig["seq_missing"], (fig["seq_gaps"], fig["seq_missing"])
