"""A cluster of the fault tests' own (port 54317): they kill backends and
crash the server, which must never touch the cluster other suites use."""
import os

import pytest

from lib.cluster import ROOT, ScriptCluster, fresh_database

FAULTS = ScriptCluster(port=54317, pgdata=os.path.join(ROOT, ".pgcluster-faults"))


def connect(dbname, **kw):
    """lib.connection.connect on the fault suite's cluster."""
    return FAULTS.connect(dbname, **kw)


@pytest.fixture(scope="session")
def server():
    FAULTS.start()
    yield FAULTS
    FAULTS.stop("fast")


@pytest.fixture
def db(server):
    with fresh_database("wfx_fault", server=FAULTS.server()) as name:
        with connect(name) as c:
            c.execute("CREATE EXTENSION amcheck")
        yield name
