"""Throwaway PostgreSQL 15 clusters of this suite's own (ports 54350-54359,
loopback and a socket in a temp dir), run by the `postgres` OS user, stopped
and removed at the end of each module even when a test fails: lib/throwaway.py."""
import pytest

from lib.cluster import ROOT, as_pg  # noqa: F401  (re-exported for the tests)
from lib.throwaway import BIN, STOP_TIMEOUT, Cluster, port_free, throwaway_clusters, wait_until  # noqa: F401

PORTS = range(54350, 54360)


@pytest.fixture(scope="module")
def clusters(request):
    """A factory: clusters(name, **settings) → a started Cluster (initdb'd), or
    clusters(name, init=False) → a Cluster whose data dir the test fills (base
    backup)."""
    return throwaway_clusters(request, "tests/replicas", PORTS)
