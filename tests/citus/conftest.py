"""A real Citus 13.2 cluster of this suite's own: a coordinator and two
workers, throwaway PostgreSQL clusters on ports 54380-54389 (loopback; Citus's
nodes talk over TCP, trust auth on 127.0.0.1), each preloading `citus`
first, then `workflow_ext`. Citus itself is built and installed by
scripts/citus.sh (scripts/setup.sh runs it); the suite fails, not skips,
when it is missing."""
import subprocess

import pytest

from lib.cluster import ROOT, as_pg, bin_dir
from lib.throwaway import throwaway_clusters

PORTS = range(54380, 54390)
DB = "wfx_citus"
SETTINGS = {
    "shared_preload_libraries": "citus,workflow_ext",
    "wal_level": "logical",
    "max_prepared_transactions": "100",
    "max_connections": "120",
    "citus.shard_count": "8",
    # One machine, 2 cores: keep the pools small and the cleanup prompt.
    "citus.max_adaptive_executor_pool_size": "4",
    "citus.defer_shard_delete_interval": "1000",
}


def server_knows(setting):
    """Whether this PostgreSQL build has `setting` (postgres --describe-config)."""
    out = as_pg(f"{bin_dir()}/postgres", "--describe-config").stdout
    return any(line.split("\t", 1)[0] == setting for line in out.splitlines())


def citus_installed():
    return subprocess.run(["bash", f"{ROOT}/scripts/citus.sh", "check"]).returncode == 0


class Formation:
    """The coordinator and its workers, with helpers to reach each."""

    def __init__(self, coordinator, workers):
        self.coordinator, self.workers = coordinator, workers

    @property
    def nodes(self):
        return [self.coordinator, *self.workers]

    def connect(self, node=None, autocommit=True):
        return (node or self.coordinator).connect(DB, autocommit=autocommit)

    def sql(self, query, params=None, node=None, timeout="300s"):
        """One statement in a fresh session, cancelled after `timeout` (a
        stalled shard move fails the test instead of hanging the suite)."""
        with self.connect(node) as c:
            c.execute(f"SET statement_timeout = '{timeout}'")
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def new_database(self, db):
        """Another database on every node, made a Citus formation of its own
        (Citus's metadata is per database), workflow_ext created."""
        for n in self.nodes:
            n.sql(f'CREATE DATABASE "{db}"')
            n.sql("CREATE EXTENSION citus", db=db)
        self.coordinator.sql("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,), db=db)
        for w in self.workers:
            self.coordinator.sql("SELECT citus_add_node('127.0.0.1', %s)", (w.port,), db=db)
        self.coordinator.sql("CREATE EXTENSION workflow_ext", db=db)
        return db

    def add_worker(self, make, name):
        w = make(name, **SETTINGS)
        w.sql(f'CREATE DATABASE "{DB}"')
        w.sql("CREATE EXTENSION citus", db=DB)
        self.sql("SELECT citus_add_node('127.0.0.1', %s)", (w.port,))
        self.workers.append(w)
        return w


@pytest.fixture(scope="module")
def citus(request):
    """A started formation, `workflow_ext` created on the coordinator (Citus
    creates it on the workers), nothing distributed yet."""
    assert citus_installed(), "Citus is not installed: run scripts/citus.sh (scripts/setup.sh does)"
    make = throwaway_clusters(request, "tests/citus", PORTS)
    # Debian's 15.20 lets logical decoding load only the plugins listed
    # here; Citus's shard moves decode through its own.
    if server_knows("output_plugin_libraries"):
        SETTINGS["output_plugin_libraries"] = "pgoutput, test_decoding, citus"
    coordinator = make("coordinator", **SETTINGS)
    workers = [make(f"worker{i}", **SETTINGS) for i in (1, 2)]
    for n in (coordinator, *workers):
        n.sql(f'CREATE DATABASE "{DB}"')
        n.sql("CREATE EXTENSION citus", db=DB)
    coordinator.sql("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (coordinator.port,), db=DB)
    for w in workers:
        coordinator.sql("SELECT citus_add_node('127.0.0.1', %s)", (w.port,), db=DB)
    coordinator.sql("CREATE EXTENSION workflow_ext", db=DB)
    f = Formation(coordinator, workers)
    f.make = make
    return f
