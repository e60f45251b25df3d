"""Real migrators from the npm registry, raced on fresh databases (issue #13).

Drives race.js and kill.js (Node; the packages are pinned in package-lock.json,
installed with `npm ci` in this directory):

  graphile-worker 0.16.6      makeWorkerUtils(...).migrate()  (gw-migrate)
                              runMigrations(...)              (gw-run)
  @workflow/world-postgres    bin/setup.js, the DevKit's setup (devkit-setup)
  4.3.7

raw      each of P processes per fresh database calls the migrator directly,
         as users do today: the figures show how often that fails; the test
         asserts only that the harness saw failures at all (it can fail).
wrapped  the workflow_ext recipe: bootstrap_begin on a dedicated connection,
         the migrator only if it returned true, bootstrap_end. Asserted: no
         failed call, exactly one migrating process and one ledger row per
         database, a complete schema.
kill     a process that began is killed mid-migration (SIGKILL of the client;
         pg_terminate_backend of its dedicated connection): the next caller
         must get true, finish the migration, and the ledger must hold one row.

Sizes: WFX_MIG_PROCESSES (default 16) processes x WFX_MIG_DATABASES (default 10)
fresh databases per migrator and mode. Connection: PGHOST / PGPORT / PGUSER
from the environment (scripts/test.sh sets them), else the project cluster's
(`scripts/cluster.sh env`): tests/lib/cluster.py.
"""

import functools
import json
import os
import shutil
import subprocess

import pytest

from lib.cluster import setting
from lib.connection import connect
from lib.harness import figure

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PROCESSES = int(os.environ.get("WFX_MIG_PROCESSES", "16"))
DATABASES = int(os.environ.get("WFX_MIG_DATABASES", "10"))
MIGRATORS = ("gw-migrate", "gw-run", "devkit-setup")
# Hang guards for one race.js / kill.js run (never part of a verdict).
RACE_TIMEOUT_S = 600
KILL_TIMEOUT_S = 300


def node_env():
    env = dict(os.environ)
    for k in ("PGHOST", "PGPORT", "PGUSER"):
        env[k] = setting(k)
    return env


def run_node(script, *args, timeout):
    """Runs a harness script; returns its one JSON line."""
    cmd = ["node", script, *args]
    p = subprocess.run(cmd, cwd=HERE, env=node_env(), capture_output=True, text=True,
                       timeout=timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n"
                             f"stdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return json.loads(lines[-1])


@pytest.fixture(scope="session", autouse=True)
def node_modules():
    if shutil.which("node") is None:
        pytest.fail("node is not installed (Node 18+ is needed for tests/migrators)")
    for pkg in ("graphile-worker", "@workflow/world-postgres", "pg"):
        if not os.path.isdir(os.path.join(HERE, "node_modules", pkg)):
            pytest.fail(f"{pkg} missing: run `npm ci` in tests/migrators "
                        "(the versions are pinned in its package-lock.json)")


@functools.cache
def race(mode, migrator):
    return run_node("race.js", "--mode", mode, "--migrator", migrator,
                    "-P", str(PROCESSES), "-M", str(DATABASES),
                    timeout=RACE_TIMEOUT_S)["migrators"][migrator]


def summary(s):
    errors = "; ".join(f"{n} x {k}" for k, n in sorted(s["errors"].items(), key=lambda kv: -kv[1]))
    return errors or "none"


@pytest.fixture(scope="session")
def extension_has_bootstrap_begin():
    """The wrapped and kill runs need workflow_ext with bootstrap_begin/end:
    say so plainly instead of 16 x 10 identical errors."""
    db = f"wfx_mig_probe_{os.getpid()}"
    with connect("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        with connect(db) as conn:
            conn.execute("CREATE EXTENSION workflow_ext")
            found = conn.execute(
                "SELECT to_regprocedure('workflow_ext.bootstrap_begin(text,interval,text)') IS NOT NULL"
                "   AND to_regprocedure('workflow_ext.bootstrap_end(text)') IS NOT NULL").fetchone()[0]
    finally:
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    assert found, "the installed workflow_ext has no bootstrap_begin(text, interval, text) / bootstrap_end(text)"


@pytest.mark.parametrize("migrator", MIGRATORS)
def test_raw(migrator):
    """Direct calls, as users make them today: figures only (see below)."""
    s = race("raw", migrator)
    failed_dbs = sum(1 for n in s["failed_per_db"] if n)
    figure(f"raw {migrator} ({s['name']}): {s['failed']}/{s['calls']} calls failed "
           f"({PROCESSES} processes x {DATABASES} fresh databases; databases with a failure: "
           f"{failed_dbs}/{DATABASES}; schema complete afterwards: "
           f"{sum(s['schema_complete_per_db'])}/{DATABASES}; {s['seconds']} s); errors: {summary(s)}")
    assert s["calls"] == PROCESSES * DATABASES
    assert s["ran_per_db"] == [PROCESSES] * DATABASES


def test_raw_harness_can_fail():
    """The harness must be able to see the failure it exists to prevent:
    summed over the raw runs, at least one call failed. (A migrator whose raw
    runs never fail is reported in its FIGURE line, not hidden.)"""
    per = {m: race("raw", m)["failed"] for m in MIGRATORS}
    never = [m for m, n in per.items() if n == 0]
    figure(f"raw failures per migrator: {per}"
           + (f"; never failed raw in this run: {', '.join(never)}" if never else ""))
    assert sum(per.values()) > 0, f"no raw call failed in {per}: the harness shows nothing"


@pytest.mark.parametrize("migrator", MIGRATORS)
def test_wrapped(migrator, extension_has_bootstrap_begin):
    s = race("wrapped", migrator)
    figure(f"wrapped {migrator} ({s['name']}): {s['failed']}/{s['calls']} calls failed; "
           f"migrating processes per database {s['ran_per_db']}; ledger rows per database "
           f"{s['ledger_rows_per_db']}; {s['seconds']} s; errors: {summary(s)}")
    assert s["calls"] == PROCESSES * DATABASES
    assert s["failed"] == 0, s["errors"]
    assert s["ran_per_db"] == [1] * DATABASES
    assert s["ledger_rows_per_db"] == [1] * DATABASES
    assert all(s["schema_complete_per_db"])


@pytest.mark.parametrize("scenario", ("sigkill", "terminate"))
def test_killed_mid_migration(scenario, extension_has_bootstrap_begin):
    out = run_node("kill.js", "--scenario", scenario, timeout=KILL_TIMEOUT_S)
    f = out["scenarios"][scenario]
    survivor = f.get("survivor") or {}
    latecomer = f.get("latecomer") or {}
    figure(f"kill {scenario}: victim began, killed after {f.get('migrations_committed_at_kill')} "
           f"committed migrations (exit {f.get('victim_exit')}); ledger rows after the kill "
           f"{f.get('ledger_rows_after_kill')}; survivor bootstrap_begin={survivor.get('begin')} "
           f"ok={survivor.get('ok')} ({f.get('survivor_ms_after_kill')} ms after the kill); ledger rows "
           f"{f.get('ledger_rows_after_survivor')}; migrations {f.get('migrations_after_survivor')}; "
           f"latecomer bootstrap_begin={latecomer.get('begin')}")
    assert "error" not in f, f["error"]
    failed = [k for k, v in f["checks"].items() if not v]
    assert not failed, f"failed checks {failed}: {json.dumps(f)}"


def test_no_database_left_behind():
    with connect("postgres") as admin:
        left = [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'wfx\\_mig\\_%'")]
    assert not left, left
