"""A cancel ends a long call (issue 28, item 6: bounded, interruptible work).

`stuck_runs()` hands a whole run's log to `active_entities_of`; a caller (or
a huge run) can make that call long, and a call that never checks for
interrupts ignores pg_cancel_backend and statement_timeout until it ends on
its own, holding its backend and snapshot all the while.

Each test sizes a call so that its natural duration is many times the time
allowed between the cancel and the error (calibrated on this machine, in
this build, from an uncancelled call), lets it run into its loop over the
events, cancels it, and checks that the error came within that allowance:
that is, the cancel ended the call, not the call's own end. The only bound
on time here is that one, relative to the calibration.
"""

import threading
import time

import psycopg
import pytest

from lib.connection import connect
from lib.harness import figure

# Elements of the calibration call and of the cancelled call: both one run's
# log of distinct steps, each created then started (so every step is an
# entity the call keeps and returns).
SMALL = 100_000
BIG = 3_000_000
# The cancelled call's natural duration in its loop, over the allowance.
MARGIN = 20
# Where in the loop the cancel lands: this share of the loop's duration.
LAND_AT = 0.25
# A hang guard for the helper threads, far above any legitimate wait.
GUARD_SECONDS = 600

CALL = "SELECT cardinality(workflow_ext.active_entities_of(%s::text[], %s::text[]))"
# The same arguments sent and parsed, without the call: what the call costs
# before its loop starts (and what no check in the extension could cut).
INPUT_ONLY = "SELECT cardinality(%s::text[]) + cardinality(%s::text[])"


def run_log(n):
    """Types and correlation ids of a run with (n - 2) / 2 running steps, as
    array literals: built once, they cost the client next to nothing to
    send, so the time a call takes is the server's."""
    steps = (n - 2) // 2
    types = ["run_created", "run_started"] + ["step_created", "step_started"] * steps
    corrs = ["NULL", "NULL"] + [f"step_{i:08d}" for i in range(steps) for _ in (0, 1)]
    return "{" + ",".join(types) + "}", "{" + ",".join(corrs) + "}"


def timed(conn, sql, params):
    start = time.monotonic()
    conn.execute(sql, params).fetchone()
    return time.monotonic() - start


@pytest.fixture
def calibrated(db):
    """(input seconds, loop seconds) the big call takes uncancelled, scaled
    from the best of three small calls."""
    types, corrs = run_log(SMALL)
    with connect(db) as conn:
        got = conn.execute(CALL, (types, corrs)).fetchone()[0]
        assert got == (SMALL - 2) // 2, "every step is active"
        whole = min(timed(conn, CALL, (types, corrs)) for _ in range(3))
        before = min(timed(conn, INPUT_ONLY, (types, corrs)) for _ in range(3))
    scale = BIG / SMALL
    loop = max(whole - before, 0.0) * scale
    assert loop > 0, "the calibration call measured nothing"
    return before * scale, loop


def wait_active(watcher, pid, deadline):
    """Polls until `pid` runs a statement; returns when it was seen."""
    while time.monotonic() < deadline:
        row = watcher.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "active":
            return time.monotonic()
        time.sleep(0.002)
    pytest.fail("the call never became active")


def run_in_thread(conn, sql, params):
    """Starts `sql` on `conn` in a thread; returns (thread, outcome) where
    outcome gets 'error' (the exception) and 'at' (when it was raised)."""
    outcome = {}

    def call():
        try:
            conn.execute(sql, params).fetchone()
            outcome["at"] = time.monotonic()
        except psycopg.Error as e:
            outcome["at"] = time.monotonic()
            outcome["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def test_cancel_ends_active_entities_of(db, calibrated):
    input_s, loop_s = calibrated
    allowance = loop_s / MARGIN
    types, corrs = run_log(BIG)
    with connect(db) as victim, connect(db) as watcher:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        thread, outcome = run_in_thread(victim, CALL, (types, corrs))
        active = wait_active(watcher, pid, time.monotonic() + GUARD_SECONDS)
        # Into the loop: past the arguments' input (which only the server's
        # own code runs), a quarter of the way through the events.
        time.sleep(max(0.0, input_s + LAND_AT * loop_s - (time.monotonic() - active)))
        cancelled_at = time.monotonic()
        assert watcher.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]
        thread.join(GUARD_SECONDS)
    error = outcome.get("error")
    assert isinstance(error, psycopg.errors.QueryCanceled), (
        f"expected the call to be cancelled, got {error!r}")
    took = outcome["at"] - cancelled_at
    figure(f"pg_cancel_backend ended the call in {took * 1000:.1f} ms "
           f"(allowed {allowance * 1000:.1f} ms; loop {loop_s:.2f} s, input {input_s:.2f} s)")
    assert took <= allowance, (
        f"the cancel took {took:.3f}s to end the call; allowed {allowance:.3f}s, "
        f"a {MARGIN}th of the loop's {loop_s:.3f}s: the loop does not check for interrupts")


def test_statement_timeout_ends_active_entities_of(db, calibrated):
    input_s, loop_s = calibrated
    allowance = loop_s / MARGIN
    timeout = input_s + LAND_AT * loop_s
    types, corrs = run_log(BIG)
    with connect(db) as victim, connect(db) as watcher:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        victim.execute(f"SET statement_timeout = {max(1, round(timeout * 1000))}")
        thread, outcome = run_in_thread(victim, CALL, (types, corrs))
        # The timer starts before the call is seen active: measuring from
        # then only makes the bound looser.
        active = wait_active(watcher, pid, time.monotonic() + GUARD_SECONDS)
        thread.join(GUARD_SECONDS)
    error = outcome.get("error")
    assert isinstance(error, psycopg.errors.QueryCanceled), (
        f"expected statement_timeout to cancel the call, got {error!r}")
    assert "statement timeout" in str(error)
    took = outcome["at"] - active - timeout
    figure(f"statement_timeout ended the call {took * 1000:.1f} ms after it expired "
           f"(allowed {allowance * 1000:.1f} ms; loop {loop_s:.2f} s, input {input_s:.2f} s)")
    assert took <= allowance, (
        f"the call ended {took:.3f}s after statement_timeout expired; allowed "
        f"{allowance:.3f}s, a {MARGIN}th of the loop's {loop_s:.3f}s")
