"""Where the test suites connect: PGHOST / PGPORT / PGUSER from the
environment (scripts/test.sh sets them), else the project cluster's, which
`scripts/cluster.sh env` is the one place to know (a socket in the checkout,
or its /tmp fallback). Shared by tests/concurrency, docs, upgrade and
migrators; each finds this file from its own location."""

import functools
import os
import shlex
import subprocess

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
