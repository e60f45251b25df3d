"""A cluster of the fault tests' own (port 54317): they kill backends and
crash the server, which must never touch the cluster other suites use."""
import os
import subprocess
import uuid

import psycopg
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, WFX_PORT="54317", WFX_PGDATA=os.path.join(ROOT, ".pgcluster-faults"))


def cluster(*args):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "cluster.sh"), *args],
                          env=ENV, capture_output=True, text=True, check=True).stdout


def conninfo(db):
    env = dict(line.split("=", 1) for line in cluster("env").replace("export ", "").split())
    return f"host={env['PGHOST']} port={env['PGPORT']} user=postgres dbname={db}"


@pytest.fixture(scope="session")
def server():
    cluster("start")
    yield cluster
    cluster("stop", "fast")


@pytest.fixture
def db(server):
    name = f"wfx_fault_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(conninfo(name), autocommit=True) as c:
        c.execute("CREATE EXTENSION workflow_ext")
        c.execute("CREATE EXTENSION amcheck")
    yield name
    with psycopg.connect(conninfo("postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
