"""Where the test suites connect: PGHOST / PGPORT / PGUSER from the
environment (scripts/test.sh sets them), else the project cluster's, which
`scripts/cluster.sh env` is the one place to know (a socket in the checkout,
or its /tmp fallback). Shared by tests/concurrency, docs, upgrade and
migrators; each finds this file from its own location."""

import contextlib
import functools
import os
import shlex
import subprocess
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@functools.cache
def project_cluster():
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "cluster.sh"), "env"],
                         capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in shlex.split(out) if "=" in kv)


def setting(name):
    """PGHOST, PGPORT or PGUSER."""
    return os.environ.get(name) or project_cluster()[name]


def conninfo(dbname):
    """psycopg.connect keyword arguments for `dbname` on the project cluster."""
    return dict(host=setting("PGHOST"), port=int(setting("PGPORT")), user=setting("PGUSER"), dbname=dbname)


@contextlib.contextmanager
def fresh_database(prefix, extension=True):
    """A new database named `<prefix>_<random>`, with workflow_ext unless told
    otherwise, dropped afterwards (WITH (FORCE): a failed test may leave a
    session behind). Yields its name."""
    import psycopg

    def admin():
        return psycopg.connect(**conninfo("postgres"), autocommit=True)

    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin() as a:
        a.execute(f'CREATE DATABASE "{dbname}"')
    try:
        if extension:
            with psycopg.connect(**conninfo(dbname), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION workflow_ext")
        yield dbname
    finally:
        with admin() as a:
            a.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
