"""Every public function fed every kind of bad input: each call gets one of
its documented SQLSTATEs, writes nothing, and never panics (XX000) or
crashes the backend. Then replay and scan are fuzzed over random logs.
The cases of issue #11 follow: transaction control and COPY in bootstrap
(0A000, nothing applied, no ledger row), extreme and NULL seqs in a replay
source (findings, never an error), and ids the writer refuses (invalid_event
in the audit too)."""
import random
import time

import psycopg
import pytest

from conftest import connect

TEN_MB = '{"x": "' + "p" * (10 * 1024 * 1024) + '"}'
INJECTION = ["x'; DROP TABLE workflow_ext.events; --", 'x"; DROP TABLE x; --', "r' OR '1'='1", "$$;--", "\\x00"]
BAD_TEXT = [None, "", "x" * 256, "x" * 100_000, "ü" * 200, *INJECTION]
BAD_TYPES = [None, "", "STEP_CREATED", "step_create", "run_created ", "step_created; --", "attr_set" * 40]
BAD_JSON = ["[1, 2]", '"s"', "1", "null", "true", TEN_MB]
# DDL that SPI cannot run: transaction control and COPY to or from the client.
# bootstrap refuses each with 0A000, applies nothing and writes no ledger row.
BOOTSTRAP_REFUSED = [
    ("m@v1", "BEGIN; CREATE TABLE t(a int); COMMIT;"),
    ("m@v2", "COMMIT"),
    ("m@v3", "ROLLBACK"),
    ("m@v4", "SAVEPOINT s"),
    ("m@v5", "COPY (SELECT 1) TO STDOUT"),
    ("m@v6", "COPY t FROM STDIN"),
    # The same after statements that ran: none of their work stays.
    ("m@v7", "CREATE TABLE t2(a int); COMMIT"),
    ("m@v8", "CREATE TABLE t3(a int); COPY t3 FROM STDIN"),
    ("m@v9", "CREATE TABLE t4(a int); START TRANSACTION"),
    ("m@v10", "CREATE TABLE t5(a int); ROLLBACK TO SAVEPOINT s"),
    ("m@v11", "CREATE TABLE t6(a int); RELEASE SAVEPOINT s"),
    ("m@v12", "CREATE TABLE t7(a int); END"),
]
BOOTSTRAP_REFUSED_TABLES = ["t", "t2", "t3", "t4", "t5", "t6", "t7"]

# function: (SQL, argument slots, valid arguments, documented SQLSTATEs)
DOCUMENTED = {"22004", "22023", "22001", "54000", "23503", "23505", "55000", "42P01", "42703", "42809",
              "42501",
              # PostgreSQL's own input errors, raised before our code runs:
              # regclass name syntax, interval/timestamp input, encoding.
              "42602", "22P02", "22007", "22008", "22021",
              # bootstrap raises the DDL's own error (here: syntax, 1/0).
              "42601", "22012",
              # bootstrap refuses transaction control and COPY to/from the client.
              "0A000"}
FUNCTIONS = {
    "append_suspension_event": ("SELECT * FROM workflow_ext.append_suspension_event(%s, %s, %s, %s::jsonb)",
                                ["run", "corr", "type", "payload"], ["r", "s9", "step_created", None]),
    "append_event": ("SELECT * FROM workflow_ext.append_event(%s, %s, %s, %s::jsonb)",
                     ["run", "corr", "type", "payload"], ["r", "s9", "step_created", None]),
    "join_arrive": ("SELECT workflow_ext.join_arrive(%s, %s, %s, %s)",
                    ["run", "text", "text", "int"], ["r", "j", "m", 2]),
    "bootstrap": ("SELECT workflow_ext.bootstrap(%s, %s)", ["text", "ddl"], ["b@v1", "SELECT 1"]),
    "replay": ("SELECT * FROM workflow_ext.replay(%s, %s::regclass)", ["run", "source"], ["r", "workflow_ext.events"]),
    "scan": ("SELECT * FROM workflow_ext.scan(%s::regclass, %s::timestamptz)", ["source", "ts"],
             ["workflow_ext.events", None]),
    "purge_runs": ("SELECT workflow_ext.purge_runs(%s::interval)", ["interval"], ["1 day"]),
    "bootstrap_begin": ("SELECT workflow_ext.bootstrap_begin(%s, %s::interval, %s)", ["text", "timeout", "checksum"],
                        ["bb@v1", None, None]),
    "bootstrap_end": ("SELECT workflow_ext.bootstrap_end(%s)", ["text"], ["never@v1"]),
}
BAD_BY_SLOT = {
    "run": BAD_TEXT, "corr": ["", "x" * 256, *INJECTION], "text": BAD_TEXT, "type": BAD_TYPES,
    "payload": BAD_JSON, "int": [None, 0, -1, -2**31], "ddl": [None, "", "   ", "SELEC 1", "select 1/0", *(ddl for _, ddl in BOOTSTRAP_REFUSED)],
    "source": [None, "no_such_table", *INJECTION, "workflow_ext.events_pkey", "secret_events", "workflow_ext.runs"],
    "ts": ["infinity", "-infinity"], "interval": [None, "-1 day", "-1 month"],
    "timeout": ["-1 day", "0", "-1 microsecond", "1000000 years", "x"], "checksum": ["", "x" * 256, *INJECTION],
}


def snapshot(c):
    return c.execute("""SELECT (SELECT count(*) FROM workflow_ext.events), (SELECT count(*) FROM workflow_ext.joins),
                               (SELECT count(*) FROM workflow_ext.join_members), (SELECT count(*) FROM workflow_ext.bootstraps),
                               (SELECT count(*) FROM workflow_ext.runs)""").fetchone()


def test_every_function_every_bad_input(db):
    with connect(db) as admin:
        admin.execute("SELECT workflow_ext.append_event('r', NULL, 'run_created')")
        admin.execute("CREATE TABLE secret_events (id text, run_id text, type text, correlation_id text)")
        admin.execute("CREATE ROLE wfx_catalogue_app") if not admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'wfx_catalogue_app'").fetchone() else None
        admin.execute("REVOKE ALL ON secret_events FROM PUBLIC")
        # The application role of the README's recipe: writer, reader and
        # migrator (without grants every call would stop at 42501 before any
        # bad input reached the extension's checks).
        for access in ("writer", "reader", "migrator"):
            admin.execute("SELECT workflow_ext.grant_access('wfx_catalogue_app', %s)", (access,))
        before = snapshot(admin)
    tried, codes, wrote_on_error = 0, {}, []
    with connect(db) as c, \
            connect(db) as watcher:
        c.execute("SET ROLE wfx_catalogue_app")
        for name, (sql, slots, valid) in FUNCTIONS.items():
            for i, slot in enumerate(slots):
                for bad in BAD_BY_SLOT[slot]:
                    args = list(valid)
                    args[i] = bad
                    tried += 1
                    rows_before = snapshot(watcher)
                    try:
                        c.execute(sql, args).fetchall()
                        outcome = "ok"
                    except psycopg.Error as e:
                        outcome = e.sqlstate
                        assert e.sqlstate != "XX000", f"{name}({args!r:.200}) panicked: {e}"
                        assert e.sqlstate in DOCUMENTED, f"{name} slot {slot}={bad!r:.60}: undocumented {e.sqlstate} {e}"
                        if snapshot(watcher) != rows_before:
                            wrote_on_error.append((name, slot, repr(bad)[:40]))
                    codes[outcome] = codes.get(outcome, 0) + 1
                    assert c.execute("SELECT 1").fetchone() == (1,), "backend died"
    with connect(db) as admin:
        after = snapshot(admin)
        admin.execute("DROP OWNED BY wfx_catalogue_app")
        admin.execute("DROP ROLE wfx_catalogue_app")
    print(f"FIGURE: bad-input catalogue: {tried} calls over {len(FUNCTIONS)} functions, outcomes {codes}, "
          f"{len(wrote_on_error)} failed calls that wrote anything, rows before {before} after {after}", flush=True)
    # Some "bad" values are legal in some slots (a 200-character ü run id,
    # an injection string as a join key): those calls succeed and write.
    # A call that failed must have written nothing.
    assert wrote_on_error == [], wrote_on_error


# attach / detach, as the superuser that runs them (PUBLIC may not: 42501),
# given what is no event table: documented SQLSTATEs (42P01, 42809, 42703,
# 42804, 22004, 55000 for anomalies or "not attached", 0A000 for detaching
# workflow_ext.events), never XX000, and nothing changed: no registration, no
# new column, trigger or index on the table.
ATTACH_DOCUMENTED = DOCUMENTED | {"42804", "42710"}
ATTACH_SOURCES = [None, "no_such_table", *INJECTION, "workflow_ext.events_pkey", "workflow_ext.runs",
                  "workflow_ext.attached_logs", "pg_catalog.pg_class", "bad_seq_events", "broken_events",
                  "dup_events", "workflow_ext.events"]


def test_attach_and_detach_bad_input(db):
    with connect(db) as c:
        c.execute("CREATE TABLE bad_seq_events (id text, run_id text, type text, correlation_id text, seq text)")
        c.execute("CREATE TABLE broken_events (id text, run_id text, type text, correlation_id text)")
        c.execute("INSERT INTO broken_events VALUES ('e1', 'r', 'step_started', 's')")
        c.execute("CREATE TABLE dup_events (id text, run_id text, type text, correlation_id text)")
        c.execute("INSERT INTO dup_events VALUES ('e1', 'r', 'run_created', NULL), ('e2', 'r', 'run_created', NULL)")

        def shape():
            return c.execute("""SELECT (SELECT count(*) FROM workflow_ext.logs), (SELECT count(*) FROM workflow_ext.runs),
                                       (SELECT count(*) FROM pg_attribute WHERE attname = 'seq' AND attnum > 0
                                           AND NOT attisdropped AND attrelid::regclass::text LIKE '%_events'),
                                       (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal),
                                       (SELECT count(*) FROM pg_index)""").fetchone()

        before, tried, codes = shape(), 0, {}
        calls = [("SELECT workflow_ext.attach(%s::regclass, %s)", (src, acc))
                 for src in ATTACH_SOURCES for acc in (False, None)]
        calls += [("SELECT workflow_ext.detach(%s::regclass)", (src,)) for src in ATTACH_SOURCES]
        for sql, args in calls:
            tried += 1
            try:
                c.execute(sql, args).fetchall()
                outcome = "ok"
            except psycopg.Error as e:
                outcome = e.sqlstate
                assert e.sqlstate != "XX000", f"{sql} {args!r:.100} panicked: {e}"
                assert e.sqlstate in ATTACH_DOCUMENTED, f"{sql} {args!r:.100}: undocumented {e.sqlstate} {e}"
            codes[outcome] = codes.get(outcome, 0) + 1
            assert c.execute("SELECT 1").fetchone() == (1,), "backend died"
        after = shape()
    print(f"FIGURE: attach/detach bad input: {tried} calls, outcomes {codes}, catalog before {before} after {after}",
          flush=True)
    # The only successes: attaching workflow_ext.events, which is attached
    # already (a no-op returning 0).
    assert codes.get("ok", 0) == 1
    assert after == before


@pytest.mark.parametrize("budget_seconds", [15])
def test_replay_fuzz(db, budget_seconds):
    """Random logs, valid and corrupted, with hostile strings, into a DevKit-
    shaped table: replay and scan never panic and never crash."""
    rng = random.Random(7)
    types = ["run_created", "run_started", "run_completed", "run_failed", "run_cancelled", "step_created",
             "step_started", "step_retrying", "step_completed", "step_failed", "wait_created", "wait_completed",
             "hook_created", "hook_received", "hook_disposed", "hook_conflict", "attr_set", "noop",
             "", "STEP", "x" * 300, "ü", "step_created\n", None]
    corrs = ["s1", "s2", "w1", "h1", None, "", "x" * 400, "ü🙂", "'; DROP TABLE t; --"]
    runs = calls = 0
    deadline = time.time() + budget_seconds
    with connect(db) as c:
        c.execute("CREATE TABLE fuzz_events (id varchar, type varchar, correlation_id varchar, "
                  "created_at timestamp DEFAULT now(), run_id varchar, seq bigint)")
        while time.time() < deadline:
            runs += 1
            run = f"f{runs}"
            rows = []
            for pos in range(rng.randrange(1, 80)):
                seq = pos + 1 if rng.random() > 0.05 else rng.choice(
                    [None, pos, pos + 5, -1, 0, 2**63 - 1, -2**63, -2**63 + 1, 2**62])
                event_id = f"e{runs:06d}{pos:04d}" if rng.random() > 0.03 else rng.choice(
                    ["", f"e{runs:06d}{pos:04d}" + "x" * 300])
                rows.append((event_id, rng.choice(types) if rng.random() > 0.3 else types[0 if pos == 0 else 5],
                             rng.choice(corrs), run, seq))
            with c.cursor() as cur:
                cur.executemany("INSERT INTO fuzz_events (id, type, correlation_id, run_id, seq) VALUES (%s, %s, %s, %s, %s)", rows)
            for src in ("fuzz_events",):
                calls += 1
                c.execute("SELECT count(*) FROM workflow_ext.replay(%s, %s::regclass)", (run, src)).fetchone()
        calls += 1
        flagged = c.execute("SELECT count(*) FROM workflow_ext.scan('fuzz_events')").fetchone()[0]
        assert c.execute("SELECT 1").fetchone() == (1,)
    print(f"FIGURE: replay fuzz: {runs} random runs, {calls} replay/scan calls in {budget_seconds} s, "
          f"{flagged} runs flagged by scan, 0 panics, 0 crashes", flush=True)


MAX, MIN = 2**63 - 1, -2**63
SEQ_CODES = {"seq_gap", "seq_duplicate", "invalid_event"}


def failure(e):
    return f"{e.sqlstate} {e.diag.message_primary} ({e.diag.message_detail})"


def clip(v):
    """A long id shortened for messages: its head and its size in bytes."""
    return f"{v[:12]}…({len(v.encode())} bytes)" if isinstance(v, str) and len(v) > 20 else v


def replay_findings(c, run, source):
    """{event_id: (reported seqs, anomaly codes)} of replay(run, source)."""
    found = {}
    for seq, event_id, code in c.execute(
            "SELECT seq, event_id, anomaly FROM workflow_ext.replay(%s, %s::regclass)", (run, source)):
        seqs, codes = found.setdefault(event_id, (set(), set()))
        seqs.add(seq)
        codes.add(code)
    return found


def test_bootstrap_refuses_transaction_control_and_copy(db):
    """A migration wrapped in BEGIN/COMMIT, a SAVEPOINT, a COPY to or from
    the client: SPI cannot run them. Each is refused with 0A000 (never the
    XX000 "SPI error: Transaction"), nothing of the DDL is applied, no ledger
    row is written, and the name can then be applied with a runnable DDL."""
    problems, outcomes = [], {}
    with connect(db) as c:
        for name, ddl in BOOTSTRAP_REFUSED:
            try:
                got = c.execute("SELECT workflow_ext.bootstrap(%s, %s)", (name, ddl)).fetchone()[0]
                outcomes[name] = f"returned {got}"
                problems.append(f"bootstrap({name!r}, {ddl!r}) returned {got}, expected 0A000")
            except psycopg.Error as e:
                outcomes[name] = e.sqlstate
                if e.sqlstate != "0A000":
                    problems.append(f"bootstrap({name!r}, {ddl!r}): {failure(e)}, expected 0A000")
                elif not e.diag.message_hint:
                    outcomes[name] += " (no HINT)"
            assert c.execute("SELECT 1").fetchone() == (1,), "backend died"
        left = [t for t in BOOTSTRAP_REFUSED_TABLES
                if c.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]]
        if left:
            problems.append(f"refused bootstraps applied part of their DDL: tables {left} exist")
        ledger = [r[0] for r in c.execute("SELECT name FROM workflow_ext.bootstraps WHERE name LIKE 'm@%' ORDER BY name")]
        if ledger:
            problems.append(f"refused bootstraps wrote ledger rows: {ledger}")
        # Nothing was recorded, so the name is free for a DDL that runs.
        retried = c.execute("SELECT workflow_ext.bootstrap('m@v1', 'CREATE TABLE t(a int)')").fetchone()[0]
        exists = c.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()[0]
        if not (retried and exists):
            problems.append(f"m@v1 retried with a runnable DDL: returned {retried}, table t exists: {exists}")
    print(f"FIGURE: bootstrap transaction control / COPY: {len(BOOTSTRAP_REFUSED)} DDLs, outcomes {outcomes}, "
          f"tables left {left}, ledger rows {ledger}", flush=True)
    assert problems == [], "\n".join(problems)


# run -> rows (id, type, correlation_id, seq, anomaly codes expected on the row),
# and whether the run's lifecycle codes are fixed whatever the audit does with
# the state after a row with an invalid seq (True: compare every code; False:
# compare only the seq codes, seq_gap / seq_duplicate / invalid_event).
ODD_SEQ_RUNS = {
    "a_max_twice": (True, [("x1", "run_created", None, 1, set()),
                           ("x2", "run_started", None, MAX, {"seq_gap"}),
                           ("x3", "attr_set", None, MAX, {"seq_duplicate"})]),
    "a_only_max": (True, [("y1", "run_created", None, MAX, {"seq_gap"}),
                          ("y2", "run_started", None, MAX, {"seq_duplicate"})]),
    "a_min_then_one": (False, [("n1", "run_created", None, MIN, {"invalid_event"}),
                               ("n2", "run_started", None, 1, set()),
                               ("n3", "attr_set", None, 2, set())]),
    "a_minus_one": (False, [("m1", "run_created", None, -1, {"invalid_event"}),
                            ("m2", "run_started", None, 1, set())]),
    "a_zero": (False, [("z1", "run_created", None, 0, {"invalid_event"}),
                       ("z2", "run_started", None, 1, set()),
                       ("z3", "attr_set", None, 2, set())]),
    "a_nulls": (True, [("u1", "run_created", None, 1, set()),
                       ("u2", "run_started", None, 2, set()),
                       ("u3", "attr_set", None, None, {"invalid_event"}),
                       ("u4", "attr_set", None, None, {"invalid_event"})]),
    "a_one_then_max": (True, [("o1", "run_created", None, 1, set()),
                              ("o2", "run_started", None, MAX, {"seq_gap"})]),
    "a_min_then_max": (False, [("p1", "run_created", None, MIN, {"invalid_event"}),
                               ("p2", "run_started", None, MAX, {"seq_gap"})]),
    "z_good": (True, [("g1", "run_created", None, 1, set()), ("g2", "run_started", None, 2, set()),
                      ("g3", "run_completed", None, 3, set())]),
    "z_late": (True, [("l1", "run_created", None, 1, set()), ("l2", "run_started", None, 2, set()),
                      ("l3", "step_created", "s", 3, set()), ("l4", "step_created", "s", 4, {"duplicate_creation"})]),
}


def test_extreme_and_odd_seqs_are_findings_not_errors(db):
    """A source whose seq holds i64::MAX twice, i64::MIN then 1, 0, -1, NULL:
    replay and scan never fail (no XX000 overflow, no 22000). A NULL, zero or
    negative seq is invalid_event on its row and does not move the expected
    next seq; a repeated seq is seq_duplicate; a jump is seq_gap (after
    i64::MAX nothing fits). One bad run does not stop scan from reporting
    the runs after it."""
    problems, replayed = [], {}
    with connect(db) as c:
        c.execute("CREATE TABLE odd_seq (id varchar PRIMARY KEY, type varchar, correlation_id varchar, "
                  "created_at timestamp DEFAULT now(), run_id varchar, seq bigint)")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO odd_seq (id, type, correlation_id, run_id, seq) VALUES (%s, %s, %s, %s, %s)",
                            [(i, t, corr, run, seq) for run, (_, rows) in ODD_SEQ_RUNS.items()
                             for i, t, corr, seq, _ in rows])
        for run, (exact, rows) in ODD_SEQ_RUNS.items():
            try:
                found = replay_findings(c, run, "odd_seq")
            except psycopg.Error as e:
                replayed[run] = e.sqlstate
                problems.append(f"replay({run!r}) failed: {failure(e)}")
                continue
            replayed[run] = {i: sorted(codes) for i, (_, codes) in found.items()}
            for i, _, _, _, want in rows:
                got = found.get(i, (set(), set()))[1]
                if not exact:
                    got = got & SEQ_CODES
                if got != want:
                    problems.append(f"replay({run!r}) row {i}: anomalies {sorted(got)}, expected {sorted(want)}"
                                    + ("" if exact else " (seq codes only)"))
        try:
            scanned = {r[0]: r[1:] for r in c.execute(
                "SELECT run_id, events, anomalies, first_seq, first_anomaly FROM workflow_ext.scan('odd_seq')")}
        except psycopg.Error as e:
            scanned = None
            problems.append(f"scan('odd_seq') failed: {failure(e)}")
        if scanned is not None:
            for run, (exact, rows) in ODD_SEQ_RUNS.items():
                expected = sum(len(want) for *_, want in rows)
                if expected == 0:
                    if run in scanned:
                        problems.append(f"scan listed the clean run {run}: {scanned[run]}")
                    continue
                if run not in scanned:
                    problems.append(f"scan did not list {run} ({expected} anomalies expected)")
                    continue
                events, anomalies, _, _ = scanned[run]
                if events != len(rows) or (anomalies != expected if exact else anomalies < expected):
                    problems.append(f"scan {run}: {events} events / {anomalies} anomalies, expected {len(rows)} / "
                                    f"{'' if exact else 'at least '}{expected}")
            for run, want in (("z_late", (4, 1, 4, "duplicate_creation")), ("a_max_twice", (3, 2, MAX, "seq_gap")),
                              ("a_only_max", (2, 2, MAX, "seq_gap"))):
                if run in scanned and tuple(scanned[run]) != want:
                    problems.append(f"scan {run}: {scanned[run]}, expected {want}")
        assert c.execute("SELECT 1").fetchone() == (1,), "backend died"
    print(f"FIGURE: odd seqs: replay {replayed}; scan listed "
          f"{sorted(scanned) if scanned is not None else 'nothing (failed)'}", flush=True)
    assert problems == [], "\n".join(problems)


def test_auditor_refuses_what_the_writer_refuses(db):
    """An event id or a run id the writer refuses (empty, > 255 bytes) is an
    invalid_event at its position, in replay and in scan; a NULL run id is a
    run of its own, never merged with the run whose id is ''."""
    long_id, utf8_long = "x" * 300, "\u00fc" * 125  # 300 and 250 bytes (+ prefixes below)
    problems, seen = [], {}
    with connect(db) as c:
        devkit = ("(id varchar PRIMARY KEY, type varchar, correlation_id varchar, "
                  "created_at timestamp DEFAULT now(), run_id varchar{})")
        c.execute("CREATE TABLE bad_ids " + devkit.format(""))
        c.execute("CREATE TABLE bad_ids_seq " + devkit.format(", seq bigint"))
        c.execute("CREATE TABLE bad_runs " + devkit.format(""))
        c.execute("CREATE TABLE null_runs " + devkit.format(""))
        ins = "INSERT INTO {} (id, type, correlation_id, run_id{}) VALUES (%s, %s, %s, %s{})"
        with c.cursor() as cur:
            # No seq: replayed in id order, so '' is position 1 of its run.
            cur.executemany(ins.format("bad_ids", "", ""), [
                ("", "run_created", None, "r_empty_id"),
                ("wevt_L1", "run_created", None, "r_long_id"),
                ("wevt_L2", "run_started", None, "r_long_id"),
                ("wevt_L3" + long_id, "attr_set", None, "r_long_id"),         # 307 bytes
                ("wevt_L4", "hook_created", "h", "r_long_id"),
                ("wevt_L5" + utf8_long, "hook_received", "h", "r_long_id"),   # 257 bytes, 132 characters
                ("wevt_L6" + "y" * 248, "hook_received", "h", "r_long_id"),   # 255 bytes: fine
                ("wevt_L7", "hook_disposed", "h", "r_long_id"),
            ])
            cur.executemany(ins.format("bad_ids_seq", ", seq", ", %s"), [
                ("e1", "run_created", None, "r_empty_id", 1),
                ("", "attr_set", None, "r_empty_id", 2),
                ("e3", "run_started", None, "r_empty_id", 3),
            ])
            run_rows = lambda run, prefix: [  # noqa: E731 - a clean history of three events
                (f"{prefix}1", "run_created", None, run), (f"{prefix}2", "run_started", None, run),
                (f"{prefix}3", "run_completed", None, run)]
            cur.executemany(ins.format("bad_runs", "", ""), [
                *run_rows("", "b0"), *run_rows("r" * 256, "b1"), *run_rows("\u00fc" * 128, "b2"),
                *run_rows("r" * 255, "b3"), *run_rows("ok", "b4"),
                ("b51", "run_created", None, "zz_late"), ("b52", "step_created", "s", "zz_late"),
                ("b53", "step_created", "s", "zz_late"),
            ])
            # Only '' and NULL: adjacent in scan order, the place to merge them.
            cur.executemany(ins.format("null_runs", "", ""), [
                ("n01", "run_created", None, ""), ("n02", "run_started", None, ""),
                ("n11", "run_created", None, None), ("n12", "run_started", None, None),
                ("n13", "run_completed", None, None),
            ])

        def replay_expect(run, source, want):
            try:
                got = {clip(i): (sorted(s), sorted(codes)) for i, (s, codes) in replay_findings(c, run, source).items()}
            except psycopg.Error as e:
                got = e.sqlstate
                problems.append(f"replay({clip(run)!r}, {source}) failed: {failure(e)}")
            seen[f"replay {clip(run)} {source}"] = got
            want = {clip(i): v for i, v in want.items()}
            if not isinstance(got, str) and got != want:
                problems.append(f"replay({clip(run)!r}, {source}): {got}, expected {want}")

        replay_expect("r_empty_id", "bad_ids", {"": ([1], ["invalid_event"])})
        replay_expect("r_long_id", "bad_ids", {"wevt_L3" + long_id: ([3], ["invalid_event"]),
                                               "wevt_L5" + utf8_long: ([5], ["invalid_event"])})
        replay_expect("r_empty_id", "bad_ids_seq", {"": ([2], ["invalid_event"])})
        replay_expect("r" * 255, "bad_runs", {})
        # replay cannot be asked about a run id the writer refuses: the
        # argument itself is refused, with the writer's SQLSTATE.
        for run, code in (("", "22023"), ("r" * 256, "22001"), ("\u00fc" * 128, "22001")):
            try:
                c.execute("SELECT * FROM workflow_ext.replay(%s, 'bad_runs')", (run,)).fetchall()
                problems.append(f"replay({clip(run)!r}) accepted a run id the writer refuses")
            except psycopg.Error as e:
                if e.sqlstate != code:
                    problems.append(f"replay({clip(run)!r}): {failure(e)}, expected {code}")

        def scan(source):
            try:
                return [tuple(r) for r in c.execute(
                    "SELECT run_id, events, anomalies, first_seq, first_anomaly FROM workflow_ext.scan(%s::regclass)",
                    (source,))]
            except psycopg.Error as e:
                problems.append(f"scan({source}) failed: {failure(e)}")
                return None

        got = scan("bad_runs")
        seen["scan bad_runs"] = [(clip(r[0]), *r[1:]) for r in got] if got is not None else None
        want = {"": (3, 3, 1, "invalid_event"), "r" * 256: (3, 3, 1, "invalid_event"),
                "\u00fc" * 128: (3, 3, 1, "invalid_event"), "zz_late": (3, 1, 3, "duplicate_creation")}
        if got is not None and (len(got) != len(want) or {r[0]: r[1:] for r in got} != want):
            problems.append(f"scan(bad_runs): {seen['scan bad_runs']}, expected every row of the runs '', 'r'*256 "
                            f"and 'ü'*128 an invalid_event, zz_late's duplicate, nothing else")
        got = scan("null_runs")
        seen["scan null_runs"] = got
        # Two runs, each reported on its own: '' (2 events) and NULL (3),
        # every row invalid. The NULL run's row may name it NULL (or '').
        if got is not None and sorted((r[1], r[2], r[4]) for r in got) != [(2, 2, "invalid_event"),
                                                                          (3, 3, "invalid_event")]:
            problems.append(f"scan(null_runs): {got}, expected the '' run (2 events) and the NULL run (3 events) "
                            f"reported separately, every row invalid_event")
        elif got is not None and not any(r[0] == "" and r[1] == 2 for r in got):
            problems.append(f"scan(null_runs): {got}: the '' run's row is not named ''")
        assert c.execute("SELECT 1").fetchone() == (1,), "backend died"
    print(f"FIGURE: auditor vs writer's refusals: {seen}", flush=True)
    assert problems == [], "\n".join(problems)
