"""workflow_ext.bootstrap() against many app instances starting at once.

Seed 001: graphile-worker's install (`create schema if not exists ...`) run by
several processes at the same instant fails on pg_namespace_nspname_index.
Each trial here is a fresh database (copied from a template with the
extension), SESSIONS already-used sessions (see warm_up) that first look the
schema up inside their transaction (so their catalog cache holds "not
found"), then are released together by the gate in bootstrap_harness.race().
"""

import itertools
import threading
import time
from collections import Counter

import psycopg
import pytest

from bootstrap_harness import (
    GRAPHILE_DDL,
    call,
    connect,
    errors_of,
    figure,
    race,
    template_with_extension,
)
from lib.cluster import fresh_database

SESSIONS = 16
NAME = "graphile_worker@v1"
BOOTSTRAP = "SELECT workflow_ext.bootstrap(%s, %s)"
# The bootstrap's documented lock class (README): pg_advisory_xact_lock(1464227906, hashtext(name)).
BOOTSTRAP_LOCK_CLASS = 1464227906
# A plain application lock, for the "advisory lock but no catalog refresh" variant.
APP_LOCK_KEY = 777


@pytest.fixture(scope="module")
def boot_template():
    with template_with_extension() as name:
        yield name


def warm_up(conn):
    """Makes the session a used, pooled connection: one that has run DDL
    before. A backend's first DDL builds its event-trigger cache, locking
    pg_event_trigger, and that lock processes pending catalog invalidations,
    hiding a stale cache; with brand-new connections the plain-advisory-lock
    variant below never fails (measured: 0 errors in 30 trials x 16 sessions);
    after this no-op DDL it fails in every waiter."""
    conn.execute("SET client_min_messages = warning")
    conn.execute("DROP TABLE IF EXISTS wfx_no_such_table")


def look_up_schema(conn):
    """Caches "not found" for the schema and table in this backend, as an app
    that checks before installing would."""
    conn.execute("SELECT to_regnamespace('graphile_worker'), to_regclass('graphile_worker.migrations')")


def graphile_installed(conn):
    """(schema, table, column `breaking`) exist."""
    return conn.execute(
        "SELECT to_regnamespace('graphile_worker') IS NOT NULL,"
        "       to_regclass('graphile_worker.migrations') IS NOT NULL,"
        "       EXISTS (SELECT FROM pg_attribute"
        "               WHERE attrelid = to_regclass('graphile_worker.migrations')"
        "                 AND attname = 'breaking' AND NOT attisdropped)"
    ).fetchone()


def ledger_rows(conn, name):
    return conn.execute("SELECT count(*) FROM workflow_ext.bootstraps WHERE name = %s", (name,)).fetchone()[0]


def run_trials(template, trials, session):
    """Races session in a fresh database per trial; returns per trial the
    outcomes, graphile_installed() and the ledger row count afterwards."""
    results = []
    with connect("postgres") as admin:
        for _ in range(trials):
            with fresh_database("wfx_boot", template=template, admin=admin) as db:
                outcomes = race(db, SESSIONS, session)
                with connect(db) as conn:
                    results.append((outcomes, graphile_installed(conn), ledger_rows(conn, NAME)))
    return results


def error_summary(results):
    return dict(Counter(str(e) for outcomes, _, _ in results for e in errors_of(outcomes)))


# --- (a) the function ---------------------------------------------------------


def looks_up_then_bootstraps(conn, gate):
    warm_up(conn)
    conn.execute("BEGIN")
    look_up_schema(conn)
    gate()
    applied = conn.execute(BOOTSTRAP, (NAME, GRAPHILE_DDL)).fetchone()[0]
    conn.execute("COMMIT")
    return applied


def test_bootstrap_applies_once_per_fresh_database_despite_stale_cache(boot_template):
    trials = 100
    started = time.monotonic()
    results = run_trials(boot_template, trials, looks_up_then_bootstraps)
    errors = sum(len(errors_of(o)) for o, _, _ in results)
    trues = Counter(sum(x.value is True for x in o) for o, _, _ in results)
    ledger = Counter(rows for _, _, rows in results)
    installed = sum(all(state) for _, state, _ in results)
    figure(
        f"bootstrap race: sessions={SESSIONS} trials={trials} errors={errors} "
        f"trues_per_db={dict(trues)} ledger_rows_per_db={dict(ledger)} "
        f"installed={installed}/{trials} error_kinds={error_summary(results)} "
        f"elapsed={time.monotonic() - started:.1f}s"
    )
    assert errors == 0, error_summary(results)
    assert trues == {1: trials}  # exactly one caller applied it, in every database
    assert installed == trials  # schema, table and column `breaking`
    assert ledger == {1: trials}


def test_bootstrap_survives_processes_running_the_raw_ddl_alongside(boot_template):
    """Half the sessions run the raw DDL (a process not using the function):
    they may create the schema under a bootstrap caller's feet, which is the
    clash the function retries after refreshing its catalog cache. The raw
    sessions' own failures are expected (the race this suite exists for) and only counted."""
    trials = 20
    started = time.monotonic()
    boot_errors, raw_errors, trues = 0, 0, Counter()
    with connect("postgres") as admin:
        for _ in range(trials):
            with fresh_database("wfx_boot", template=boot_template, admin=admin) as db:
                seat = itertools.count()  # next() is atomic under the GIL

                def session(conn, gate):
                    if next(seat) % 2:
                        return looks_up_then_bootstraps(conn, gate)
                    try:
                        looks_up_then_runs_raw_ddl(conn, gate)
                    except psycopg.Error:
                        return "raw failed"
                    return "raw ok"

                outcomes = race(db, SESSIONS, session)
                with connect(db) as conn:
                    state, rows = graphile_installed(conn), ledger_rows(conn, NAME)
            boot_errors += len(errors_of(outcomes))
            raw_errors += sum(o.value == "raw failed" for o in outcomes)
            trues[sum(o.value is True for o in outcomes)] += 1
            assert all(state) and rows == 1
    figure(
        f"bootstrap vs raw ddl: sessions={SESSIONS} (half each) trials={trials} bootstrap_errors={boot_errors} "
        f"raw_ddl_errors={raw_errors} trues_per_db={dict(trues)} elapsed={time.monotonic() - started:.1f}s"
    )
    assert boot_errors == 0
    assert trues == {1: trials}


# --- (b) the same harness without the function: it must fail --------------------


def looks_up_then_runs_raw_ddl(conn, gate):
    warm_up(conn)
    conn.execute("BEGIN")
    look_up_schema(conn)
    gate()
    conn.execute(GRAPHILE_DDL)
    conn.execute("COMMIT")


def looks_up_then_runs_ddl_under_plain_advisory_lock(conn, gate):
    """Serialized, but the advisory lock does not process catalog
    invalidations: the cached "not found" survives the wait."""
    warm_up(conn)
    conn.execute("BEGIN")
    look_up_schema(conn)
    gate()
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APP_LOCK_KEY,))
    conn.execute(GRAPHILE_DDL)
    conn.execute("COMMIT")


def runs_ddl_under_plain_advisory_lock_without_looking_up(conn, gate):
    """Control: the same lock with nothing cached before the wait."""
    warm_up(conn)
    conn.execute("BEGIN")
    gate()
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APP_LOCK_KEY,))
    conn.execute(GRAPHILE_DDL)
    conn.execute("COMMIT")


def test_harness_reproduces_the_failure_without_bootstrap(boot_template):
    """Proves test (a) can fail: the same race with the raw DDL hits the
    catalog unique indexes."""
    trials = 30
    counts = {}
    for variant, session in [
        ("raw_ddl", looks_up_then_runs_raw_ddl),
        ("advisory_lock_after_lookup", looks_up_then_runs_ddl_under_plain_advisory_lock),
        ("advisory_lock_no_lookup", runs_ddl_under_plain_advisory_lock_without_looking_up),
    ]:
        results = run_trials(boot_template, trials, session)
        errors = sum(len(errors_of(o)) for o, _, _ in results)
        failing_trials = sum(bool(errors_of(o)) for o, _, _ in results)
        counts[variant] = errors
        figure(
            f"without bootstrap, {variant}: sessions={SESSIONS} trials={trials} errors={errors} "
            f"trials_with_errors={failing_trials} error_kinds={error_summary(results)}"
        )
    assert counts["raw_ddl"] > 0
    # Stale cache: every waiter that looked the schema up before the lock
    # still thinks it is missing and tries to create it.
    assert counts["advisory_lock_after_lookup"] > 0
    # Nothing cached before the wait: the plain lock is enough.
    assert counts["advisory_lock_no_lookup"] == 0


# --- (c) lock_timeout -----------------------------------------------------------


def test_lock_timeout_names_the_bootstrap_and_writes_nothing(boot_template):
    slow = "select pg_sleep(3)"
    with connect("postgres") as admin, fresh_database("wfx_boot", template=boot_template, admin=admin) as db:
        with connect(db) as a, connect(db) as b:
            a.execute("BEGIN")
            a_now = a.execute("SELECT now()").fetchone()[0]
            a_result = {}
            holder = threading.Thread(target=lambda: a_result.update(v=call(a, BOOTSTRAP, ("slow@v1", slow))))
            holder.start()
            # Wait until A holds the bootstrap's lock (it then sleeps 3 s in the DDL).
            while not b.execute(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND granted"
                " AND locktype = 'advisory' AND classid = %s AND objsubid = 2)",
                (a.info.backend_pid, BOOTSTRAP_LOCK_CLASS),
            ).fetchone()[0]:
                time.sleep(0.01)

            b.execute("SET lock_timeout = '200ms'")
            t0 = time.monotonic()
            refused = call(b, BOOTSTRAP, ("slow@v1", slow))
            waited = time.monotonic() - t0
            holder.join()
            a.execute("COMMIT")

            # B's retry after A committed: already applied.
            retried = call(b, BOOTSTRAP, ("slow@v1", slow))
            rows = b.execute(
                "SELECT count(*), bool_and(applied_at = %s) FROM workflow_ext.bootstraps WHERE name = 'slow@v1'",
                (a_now,),
            ).fetchone()
    figure(
        f"lock_timeout: refused=[{refused}] waited={waited:.2f}s a={a_result['v'].value[0]} "
        f"retry_after_commit={retried.value[0]} ledger_rows={rows[0]} row_is_a={rows[1]}"
    )
    assert refused.sqlstate == "55P03"
    assert 'bootstrap "slow@v1"' in refused.message and "lock_timeout" in refused.detail
    # B gave up after its lock_timeout: it never ran the 3 s DDL ...
    assert waited < 1.5
    # ... and the only ledger row is A's (applied_at is A's transaction time).
    assert a_result["v"].value == (True,)
    assert rows == (1, True)
    assert retried.ok and retried.value == (False,)


# --- (d) a failing DDL under concurrency ------------------------------------------


def test_failing_ddl_fails_for_every_caller_and_leaves_nothing(boot_template):
    def bootstraps(name, ddl):
        def session(conn, gate):
            gate()
            return conn.execute(BOOTSTRAP, (name, ddl)).fetchone()[0]

        return session

    with connect("postgres") as admin, fresh_database("wfx_boot", template=boot_template, admin=admin) as db:
        failed = race(db, SESSIONS, bootstraps("bad@v1", "create table t(a int); select 1/0"))
        with connect(db) as conn:
            table_after_failure = conn.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()[0]
            rows_after_failure = ledger_rows(conn, "bad@v1")
        fixed = race(db, SESSIONS, bootstraps("bad@v2", "create table t(a int); select 1"))
        with connect(db) as conn:
            table_after_fix = conn.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()[0]
            rows_after_fix = ledger_rows(conn, "bad@v2")
    failed_kinds = Counter(o.sqlstate for o in failed)
    fixed_values = Counter(o.value if o.ok else o.sqlstate for o in fixed)
    figure(
        f"failing ddl: sessions={SESSIONS} outcomes={dict(failed_kinds)} table_left={table_after_failure} "
        f"ledger_rows={rows_after_failure}; fixed ddl under bad@v2: outcomes={dict(fixed_values)} "
        f"table={table_after_fix} ledger_rows={rows_after_fix}"
    )
    assert failed_kinds == {"22012": SESSIONS}  # every caller sees the DDL's own error
    assert not table_after_failure and rows_after_failure == 0
    assert fixed_values == {True: 1, False: SESSIONS - 1}
    assert table_after_fix and rows_after_fix == 1
