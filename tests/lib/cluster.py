"""Where the suites' servers are.

The project cluster: PGHOST / PGPORT / PGUSER from the environment
(scripts/test.sh sets them), else what `scripts/cluster.sh env` says (a
socket in the checkout, or its /tmp fallback). A suite that needs a cluster
of its own (the fault, exporter and package suites: kills, crashes, a
package install) runs scripts/cluster.sh with another port and data
directory: ScriptCluster(port=…, pgdata=…). Suites that initdb by hand
(replicas, the backtrace check) use BIN and as_pg()."""

import contextlib
import functools
import os
import shlex
import subprocess
import uuid

from lib.connection import connect, server_conninfo

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLUSTER_SH = os.path.join(ROOT, "scripts", "cluster.sh")


def pg_setting(name):
    """scripts/pg.sh's value of `name` (PG_BIN, PG_CONFIG …): the one place
    that names the PostgreSQL in use (PG=NN picks the major)."""
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg.sh"), "get", name],
                          capture_output=True, text=True, check=True).stdout.strip()


@functools.cache
def bin_dir():
    """The PostgreSQL binaries of scripts/pg.sh."""
    return pg_setting("PG_BIN")


def as_pg(*args, timeout=120, check=True, env=None):
    """Runs a command as the postgres OS user (initdb and postgres refuse
    root), without RUST_BACKTRACE unless `env` says otherwise."""
    cmd = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, env=env)


class ScriptCluster:
    """A cluster run by scripts/cluster.sh: the project's (no arguments), or
    one of a suite's own on another port and data directory (and major)."""

    def __init__(self, port=None, pgdata=None, major=None):
        self.env = dict(os.environ)
        if port is not None:
            self.env["WFX_PORT"] = str(port)
        if pgdata is not None:
            self.env["WFX_PGDATA"] = str(pgdata)
        if major is not None:
            self.env["PG"] = str(major)
        self.own = port is not None or pgdata is not None
        self._settings = None

    def run(self, *args, timeout=120, check=True):
        """scripts/cluster.sh args… (start, stop [mode], env …)."""
        return subprocess.run(["bash", CLUSTER_SH, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def start(self):
        return self.run("start")

    def stop(self, *mode, timeout=120, check=True):
        return self.run("stop", *mode, timeout=timeout, check=check)

    def settings(self):
        """{PGHOST, PGPORT, PGUSER} as `scripts/cluster.sh env` says."""
        if self._settings is None:
            out = self.run("env", timeout=30).stdout
            self._settings = dict(kv.split("=", 1) for kv in shlex.split(out) if "=" in kv)
        return self._settings

    def setting(self, name):
        """PGHOST, PGPORT or PGUSER; the project cluster's may come from the
        environment (scripts/test.sh exports them)."""
        return (None if self.own else os.environ.get(name)) or self.settings()[name]

    def server(self):
        """The conninfo string of this cluster (host, port, user)."""
        return server_conninfo(self.setting("PGHOST"), self.setting("PGPORT"), self.setting("PGUSER"))

    def connect(self, dbname="postgres", **kw):
        return connect(dbname, self.server(), **kw)


PROJECT = ScriptCluster()


def setting(name):
    """The project cluster's PGHOST, PGPORT or PGUSER."""
    return PROJECT.setting(name)


@contextlib.contextmanager
def fresh_database(prefix, extension=True, *, template=None, server=None, admin=None):
    """A new database named `<prefix>_<random>` on `server` (default: the
    project cluster), with workflow_ext unless told otherwise (or copied from
    `template`, which then decides), dropped afterwards WITH (FORCE): a failed
    test may leave a session behind. `admin`: an autocommit connection to
    that server to create and drop it on (one is opened otherwise). Yields
    its name."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"

    def on_admin(sql):
        if admin is not None:
            admin.execute(sql)
        else:
            with connect("postgres", server) as a:
                a.execute(sql)

    on_admin(f'CREATE DATABASE "{dbname}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        if extension and template is None:
            with connect(dbname, server) as conn:
                conn.execute("CREATE EXTENSION workflow_ext")
        yield dbname
    finally:
        on_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
