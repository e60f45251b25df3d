"""Races for workflow_ext.bootstrap() and CREATE EXTENSION on fresh databases.

Connections, Outcome and fresh databases come from tests/lib (used only by
test_bootstrap_race.py and test_create_extension_race.py). A race opens n sessions, each on its own
connection and thread; every session runs up to a gate, then all are released
at the same instant *inside PostgreSQL*: the gate is an advisory lock held
exclusively by a gate session, each racer blocks on a shared lock on it, and
when pg_locks shows all n waiting the gate session unlocks, which wakes them
together (a Python barrier alone would release them before their next query
even reaches the server).
"""

import contextlib
import threading
import time

from lib import connection
from lib.harness import Outcome, attempt, call, figure  # noqa: F401  (re-exported for the tests)

# Template with workflow_ext installed: a trial database is a cheap copy of it.
TEMPLATE = "wfx_boot_template"
# The gate's advisory key (bigint space). Trial databases are private and
# advisory locks are per database, so it meets nothing else.
GATE_KEY = 4242
# Never part of a verdict: turns a stuck session into a failure, not a hang.
HANG_GUARD_S = 60

# graphile-worker's install, the worked example (README, pg_regress).
GRAPHILE_DDL = """create schema if not exists graphile_worker;
create table if not exists graphile_worker.migrations(id int primary key, ts timestamptz default now() not null);
alter table graphile_worker.migrations add column if not exists breaking boolean not null default false"""


def connect(dbname):
    """Autocommit (transactions are spelled out as BEGIN/COMMIT), with the
    hang guard as statement_timeout."""
    return connection.connect(dbname, options=f"-c statement_timeout={HANG_GUARD_S}s")


@contextlib.contextmanager
def template_with_extension():
    """(Re)creates TEMPLATE with the currently installed workflow_ext."""
    with connect("postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
        # Closed before use: CREATE DATABASE refuses a template in use.
        with connect(TEMPLATE) as conn:
            conn.execute("CREATE EXTENSION workflow_ext")
        try:
            yield TEMPLATE
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


def race(dbname, n, session):
    """Runs session(conn, gate) in n threads, one connection each; session
    calls gate() where it must wait for the others and returns its value.
    Returns one Outcome per session (a psycopg error becomes its SQLSTATE)."""
    results = [None] * n
    with connect(dbname) as gate_conn:
        gate_conn.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))

        def body(i):
            def on_own_connection():
                with connect(dbname) as conn:
                    # Session-level shared lock: the racers do not block each
                    # other, and it works in or out of a transaction block.
                    gate = lambda: conn.execute("SELECT pg_advisory_lock_shared(%s)", (GATE_KEY,))
                    return session(conn, gate)

            try:
                results[i] = attempt(on_own_connection)
            except BaseException as e:  # a bug in the test itself
                results[i] = e

        threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        _await_waiters(gate_conn, n, threads)
        gate_conn.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))
        for t in threads:
            t.join(HANG_GUARD_S)
    for r in results:
        if not isinstance(r, Outcome):
            raise RuntimeError(f"session did not finish cleanly: {r!r}")
    return results


def _await_waiters(gate_conn, n, threads):
    """Returns once all n sessions are blocked on the gate (or one died
    before reaching it, which its Outcome will show)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        waiting = gate_conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = %s AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (GATE_KEY,),
        ).fetchone()[0]
        if waiting == n or not all(t.is_alive() for t in threads):
            return
        time.sleep(0.002)
    raise TimeoutError("racers never all reached the gate")


def errors_of(outcomes):
    return [o for o in outcomes if not o.ok]
