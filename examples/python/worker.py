#!/usr/bin/env python3
"""A workflow worker in Python (psycopg 3) that leaves the hard guarantees to
workflow_ext: one creation per step, legal transitions, a dense seq, one
fan-in fire. `python3 worker.py` narrates one run; `python3 worker.py --check`
asserts every figure and exits 1 if any is off.
Connection: PGHOST / PGPORT / PGUSER; any of them unset is taken from the
project cluster (`bash scripts/cluster.sh env` of this checkout).
Needs only psycopg 3: pip install "psycopg[binary]==3.2.13"
"""

import os
import random
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg.types.json import Jsonb

CHECK = "--check" in sys.argv
WORKERS = 16  # connections racing on one run, one thread each
STEPS = 50  # step correlation ids every worker tries to create
ITEMS = 12  # members of the fan-in
failures = []  # every check that did not hold; any -> exit 1
APP_DDL = """create schema if not exists example_app;
  create table if not exists example_app.jobs (id bigint primary key, run_id text not null)"""
SUSPEND = "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event(%s, %s, %s)"
APPEND = "SELECT event_id, seq FROM workflow_ext.append_event(%s, %s, %s, %s)"


_cluster = {}


def setting(name):
    """PGHOST/PGPORT/PGUSER from the environment; when unset, where the
    project cluster listens, as the checkout's scripts/cluster.sh env says
    (asked once)."""
    if os.environ.get(name):
        return os.environ[name]
    if not _cluster:
        here = os.path.dirname(os.path.abspath(__file__))
        script = os.path.normpath(os.path.join(here, "..", "..", "scripts", "cluster.sh"))
        try:
            out = subprocess.run(["bash", script, "env"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"{name} is not set and {script} env failed ({e}): set PGHOST, PGPORT, PGUSER")
        _cluster.update(kv.split("=", 1) for kv in shlex.split(out) if "=" in kv)
    return _cluster[name]


def connect(dbname):
    # autocommit: every call is its own READ COMMITTED transaction.
    return psycopg.connect(host=setting("PGHOST"), port=int(setting("PGPORT")),
                           user=setting("PGUSER"), dbname=dbname, autocommit=True)


def classify(err):
    """The error map, decided by SQLSTATE (never by message text). Copy this one."""
    code, diag = err.sqlstate, err.diag
    if code == "23505":  # duplicate creation; the index name tells it from other unique violations
        if diag.constraint_name == "workflow_events_entity_creation_unique":
            return ("already_exists", None)
        return ("other", f"23505 on {diag.constraint_name}")
    if code == "55000":  # DETAIL is "anomaly: <code>; run state: <state>"
        m = re.match(r"anomaly: ([a-z_]+)", diag.message_detail or "")
        return ("illegal_transition", m and m.group(1))
    if code == "23503":
        return ("missing_run_or_entity", None)
    if code in ("22004", "22023", "22001"):
        return ("bad_input", None)
    if code in ("40001", "40P01"):
        return ("retry", None)  # rerun the whole transaction
    return ("other", f"{code}: {diag.message_primary}")


def in_transaction(conn, isolation, fn, attempts=5):
    """Runs fn(attempt) in a transaction, rerunning it on a 'retry' error. Only
    REPEATABLE READ / SERIALIZABLE need it: under READ COMMITTED (used everywhere
    else here) an append waits for the run's lock, then reads what is committed."""
    for attempt in range(1, attempts + 1):
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        try:
            result = fn(attempt)
            conn.execute("COMMIT")
            return result, attempt
        except psycopg.Error as err:
            conn.execute("ROLLBACK")
            if classify(err)[0] != "retry" or attempt == attempts:
                raise


def figure(label, value, ok, story):
    if not ok:
        failures.append(f"{label}: {value}")
    print(f"FIGURE: {label}: {value}{'' if ok else '  <-- FAILED'}" if CHECK else f"  {story}", flush=True)


def expect(what, got, want):
    if got != want:
        failures.append(f"{what}: expected {want}, got {got}")
    return got == want


def all_at_once(conns, work):
    """work(w, conn) on every connection in its own thread, released together."""
    gate = threading.Barrier(len(conns), timeout=60)

    def body(w):
        gate.wait()
        return work(w, conns[w])
    with ThreadPoolExecutor(len(conns)) as pool:
        return list(pool.map(body, range(len(conns))))


def main():
    started = time.monotonic()
    db = f"wfx_example_py_{secrets.token_hex(4)}"  # a database of its own, dropped at the end
    admin = connect("postgres")
    admin.execute(f"CREATE DATABASE {db}")
    conns = []
    try:
        with connect(db) as setup:
            setup.execute("CREATE EXTENSION workflow_ext")
        conns = [connect(db) for _ in range(WORKERS)]
        c0 = conns[0]
        if not CHECK:
            print(f"workflow_ext from psycopg 3: {WORKERS} workers on database {db}")
        pids = len({c.info.backend_pid for c in conns})  # one server session per worker
        figure("connections", pids, pids == WORKERS >= 16, f"{pids} worker connections open.")

        # 1. Start-up: every worker bootstraps the app schema at the same moment.
        applied = all_at_once(conns, lambda w, c: c.execute(
            "SELECT workflow_ext.bootstrap(%s, %s)", ("example_app@v1", APP_DDL)).fetchone()[0])
        table = c0.execute("SELECT to_regclass('example_app.jobs') IS NOT NULL").fetchone()[0]
        figure("bootstrap calls / applied", f"{WORKERS} / {sum(applied)}", sum(applied) == 1 and table,
               f"Bootstrap: {WORKERS} workers at once, {sum(applied)} applied the DDL, the others got false.")

        # 2. A run, created and started.
        run = f"wrun_py_{secrets.token_hex(6)}"
        c0.execute(SUSPEND, (run, None, "run_created"))
        c0.execute(APPEND, (run, None, "run_started", None))

        # 3. Every worker creates every step, each in its own order. One call
        #    per key and no retry loop: a loser waits for the winner's commit
        #    and gets the winner's row back with inserted = false.
        steps = [f"step_{i}" for i in range(STEPS)]

        def create_steps(w, c):
            return [(s, *c.execute(SUSPEND, (run, s, "step_created")).fetchone())
                    for s in random.sample(steps, len(steps))]
        results = all_at_once(conns, create_steps)
        calls = [r for rows in results for r in rows]
        created = c0.execute("SELECT correlation_id, id FROM workflow_ext.events "
                             "WHERE run_id = %s AND type = 'step_created'", (run,)).fetchall()
        rows, stored = len(created), dict(created)  # rows > len(stored) would be duplicates
        winners = Counter(s for s, _id, _seq, inserted in calls if inserted)
        not_one_winner = sum(1 for s in steps if winners[s] != 1)
        no_winner_id = sum(1 for s, event_id, _seq, _ins in calls if event_id != stored.get(s))
        won = len({w for w, out in enumerate(results) for r in out if r[3]})  # 1 would mean nothing raced
        figure("suspension calls", f"{len(calls)} ({WORKERS} connections x {STEPS} keys, {won} connections won keys)",
               len(calls) == WORKERS * STEPS and won > 1,
               f"Suspension race: {len(calls)} calls of append_suspension_event; {won} connections won some keys.")
        figure("duplicates", rows - len(stored), rows == STEPS == len(stored), f"{rows} rows stored for {STEPS} steps.")
        figure("keys without exactly one inserted=true", not_one_winner, not_one_winner == 0,
               "Each step had exactly one caller told inserted = true.")
        figure("callers without the winner's id", no_winner_id, no_winner_id == 0, "Every caller got the stored id.")

        # 4. Step lifecycles, split across workers (worker w owns steps w, w+16, …).
        #    Every move here is legal, so any error is unexpected and aborts the run.
        def lifecycle(w, c):
            for i in range(w, STEPS, WORKERS):
                c.execute(APPEND, (run, f"step_{i}", "step_started", None))
                c.execute(APPEND, (run, f"step_{i}", "step_completed", Jsonb({"output": i})))
            return 2 * len(range(w, STEPS, WORKERS))
        appended = sum(all_at_once(conns, lifecycle))
        figure("lifecycle appends", appended, appended == 2 * STEPS,
               f"Each step started and completed on its owner's connection: {appended} appends.")

        #    The error map, one refused call per SQLSTATE the worker handles.
        missing, bad = ("missing_run_or_entity", None), ("bad_input", None)
        cases = [
            ("23505 duplicate creation", (run, "step_0", "step_created", None), ("already_exists", None)),
            ("55000 start after completion", (run, "step_0", "step_started", None),
             ("illegal_transition", "event_after_terminal")),
            ("23503 unknown run", (f"{run}_missing", None, "run_started", None), missing),
            ("23503 unknown step", (run, "step_never_created", "step_started", None), missing),
            ("22004 step event without correlation id", (run, None, "step_started", None), bad),
            ("22023 unknown event type", (run, "step_0", "step_exploded", None), bad),
            ("22001 run id over 255 bytes", ("r" * 300, None, "run_started", None), bad),
        ]
        mapped = 0
        for what, params, want in cases:
            try:
                c0.execute(APPEND, params)
                failures.append(f"{what}: accepted")
            except psycopg.Error as err:
                got = classify(err)
                mapped += expect(what, got, want)
                if not CHECK:
                    print(f"  {what} -> {got[0]}{f' ({got[1]})' if got[1] else ''}: {err.diag.message_primary}")

        #    40001: a REPEATABLE READ snapshot taken before another worker
        #    appended to the run. The first attempt is made stale on purpose.
        a, b = conns[0], conns[1]

        def create_wait(attempt):
            a.execute("SELECT 1")  # the snapshot is taken here
            if attempt == 1:
                b.execute(SUSPEND, (run, "wait_1", "wait_created"))
            return a.execute(SUSPEND, (run, "wait_1", "wait_created")).fetchone()
        (_id, _seq, inserted), attempt = in_transaction(a, "REPEATABLE READ", create_wait)
        mapped += expect("40001 retry (attempt, inserted)", (attempt, inserted), (2, False))
        if not CHECK:
            print(f"  40001 stale REPEATABLE READ snapshot -> retry: attempt {attempt} got the wait")
        a.execute(APPEND, (run, "wait_1", "wait_completed", None))
        figure("errors mapped", f"{mapped}/{len(cases) + 1}", mapped == len(cases) + 1,
               f"{mapped} of {len(cases) + 1} refusals mapped to the right handling by SQLSTATE.")

        # 5. Fan-in: items finish on different connections, some delivered two
        #    or three times; exactly one arrival dispatches the successor.
        deliveries = [f"item_{i}" for i in range(ITEMS) for _ in range(1 + i % 3)]
        random.shuffle(deliveries)

        def arrive(w, c):
            fired = []
            for item in deliveries[w::WORKERS]:
                if c.execute("SELECT workflow_ext.join_arrive(%s, %s, %s, %s)",
                             (run, "after_items", item, ITEMS)).fetchone()[0]:
                    fired.append(item)
                    c.execute(APPEND, (run, None, "run_completed", None))  # the successor: complete the run
            return fired
        fires = [item for f in all_at_once(conns, arrive) for item in f]
        figure("fan-in deliveries / fires", f"{len(deliveries)} / {len(fires)}", len(fires) == 1,
               f"Fan-in: {len(deliveries)} deliveries of {ITEMS} items, the successor dispatched {len(fires)} time(s).")
        figure("double fires", max(0, len(fires) - 1), len(fires) <= 1, "No double fire.")

        # 6. The audit: a dense seq and a clean replay of the whole run.
        events, seqs, lo, hi, anomalies = c0.execute(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), (SELECT count(*) FROM workflow_ext.replay(%s))"
            " FROM workflow_ext.events WHERE run_id = %s", (run, run)).fetchone()
        figure("seq gaps", hi - seqs, hi == seqs == events and lo == 1, f"Log: {events} events, seqs {lo}..{hi}.")
        figure("replay anomalies", anomalies, anomalies == 0, f"replay(run) found {anomalies} anomalies.")
        secs = time.monotonic() - started
        figure("elapsed seconds", f"{secs:.1f}", secs < 60, f"Done in {secs:.1f} s.")
    finally:
        for c in conns:
            c.close()
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
    if failures:
        print(f"FAILED ({len(failures)}):\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    if not CHECK:
        print("One creation per step, legal transitions only, one successor, a clean log.")


if __name__ == "__main__":
    main()
