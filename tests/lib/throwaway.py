"""Throwaway PostgreSQL clusters of a suite's own (tests/replicas,
tests/citus): initdb'd by the `postgres` OS user into a temp dir, on
loopback and a socket there, stopped and removed at the end of each module
even when a test fails (`throwaway_clusters`).

The settings are the project's (scripts/postgresql.conf, as scripts/cluster.sh
applies them: copied into postgresql.auto.conf after initdb) plus each test's
own; shared_buffers is lowered so that several clusters fit on a small
machine."""
import os
import shutil
import socket
import tempfile
import time

from lib.cluster import ROOT, as_pg, bin_dir
from lib.connection import conninfo, connect, server_conninfo

# The binaries of scripts/pg.sh (PostgreSQL 15, Debian's, unless PG says
# otherwise): the one place that names them.
BIN = bin_dir()
STOP_TIMEOUT = 60  # seconds, every pg_ctl wait


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_until(what, predicate, timeout, interval=0.1):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Cluster:
    def __init__(self, base, name, port, suite="tests"):
        self.name, self.port, self.suite = name, port, suite
        self.dir = os.path.join(base, name)      # socket dir and log live here
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        os.mkdir(self.dir, 0o700)
        shutil.chown(self.dir, "postgres", "postgres")

    # -- life cycle ---------------------------------------------------------
    def init(self, **settings):
        as_pg(f"{BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
              "--encoding=UTF8", "--locale=C.UTF-8")
        self.configure(**settings)

    def configure(self, **settings):
        with open(os.path.join(ROOT, "scripts", "postgresql.conf")) as f:
            conf = f.read()
        conf += f"\n# {self.suite}\nshared_buffers = 32MB\nmax_connections = 40\n"
        conf += "".join(f"{k} = '{v}'\n" for k, v in settings.items())
        path = os.path.join(self.data, "postgresql.auto.conf")
        # A base backup's auto.conf carries primary_conninfo (pg_basebackup -R): keep it.
        if os.path.exists(path):
            with open(path) as f:
                keep = [l for l in f if l.startswith("primary_conninfo")]
            conf += "".join(keep)
        with open(path, "w") as f:
            f.write(conf)
        shutil.chown(path, "postgres", "postgres")

    def start(self):
        assert port_free(self.port), f"port {self.port} is in use: not starting {self.name}"
        as_pg(f"{BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", str(STOP_TIMEOUT),
              "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start",
              timeout=STOP_TIMEOUT + 10)

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            r = as_pg(f"{BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", str(STOP_TIMEOUT),
                      "stop", timeout=STOP_TIMEOUT + 10, check=False)
            if r.returncode != 0:   # last resort: immediate, still bounded
                as_pg(f"{BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30",
                      "stop", timeout=40, check=False)

    def log_tail(self, n=40):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # -- connections ----------------------------------------------------------
    def conninfo(self, db="postgres"):
        return conninfo(db, server_conninfo(self.dir, self.port))

    def connect(self, db="postgres", autocommit=True):
        return connect(db, server_conninfo(self.dir, self.port), autocommit=autocommit, connect_timeout=10)

    def sql(self, query, params=None, db="postgres"):
        with self.connect(db) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def create_db(self, db, extension=True):
        self.sql(f'CREATE DATABASE "{db}"')
        if extension:
            self.sql("CREATE EXTENSION workflow_ext", db=db)




def throwaway_clusters(request, suite, ports):
    """A factory: make(name, **settings) → a started Cluster (initdb'd), or
    make(name, init=False) → a Cluster whose data dir the test fills (base
    backup). Everything stops and is removed when the module ends (the
    last made first: standbys, subscribers, workers)."""
    base = tempfile.mkdtemp(prefix=f"wfx_{suite.split('/')[-1]}.", dir="/tmp")
    shutil.chown(base, "postgres", "postgres")
    os.chmod(base, 0o700)
    made = []
    free = iter(p for p in ports)
    used = request.config.__dict__.setdefault("_wfx_ports", set())

    def make(name, init=True, **settings):
        port = next(p for p in free if p not in used)
        used.add(port)
        c = Cluster(base, name, port, suite=suite)
        made.append(c)
        if init:
            c.init(**settings)
            c.start()
        return c

    def cleanup():
        if request.session.testsfailed:
            for c in made:
                print(f"\n--- {c.name} (port {c.port}) server.log tail ---\n{c.log_tail()}")
        for c in reversed(made):
            c.stop()
            used.discard(c.port)
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    return make
