"""Every public function fed every kind of bad input: each call gets one of
its documented SQLSTATEs, writes nothing, and never panics (XX000) or
crashes the backend. Then replay and scan are fuzzed over random logs."""
import random
import time

import psycopg
import pytest

from conftest import conninfo

TEN_MB = '{"x": "' + "p" * (10 * 1024 * 1024) + '"}'
INJECTION = ["x'; DROP TABLE workflow_ext.events; --", 'x"; DROP TABLE x; --', "r' OR '1'='1", "$$;--", "\\x00"]
BAD_TEXT = [None, "", "x" * 256, "x" * 100_000, "ü" * 200, *INJECTION]
BAD_TYPES = [None, "", "STEP_CREATED", "step_create", "run_created ", "step_created; --", "attr_set" * 40]
BAD_JSON = ["[1, 2]", '"s"', "1", "null", "true", TEN_MB]

# function: (SQL, argument slots, valid arguments, documented SQLSTATEs)
DOCUMENTED = {"22004", "22023", "22001", "54000", "23503", "23505", "55000", "42P01", "42703", "42809",
              "42501",
              # PostgreSQL's own input errors, raised before our code runs:
              # regclass name syntax, interval/timestamp input, encoding.
              "42602", "22P02", "22007", "22008", "22021",
              # bootstrap raises the DDL's own error (here: syntax, 1/0).
              "42601", "22012"}
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
}
BAD_BY_SLOT = {
    "run": BAD_TEXT, "corr": ["", "x" * 256, *INJECTION], "text": BAD_TEXT, "type": BAD_TYPES,
    "payload": BAD_JSON, "int": [None, 0, -1, -2**31], "ddl": [None, "", "   ", "SELEC 1", "select 1/0"],
    "source": [None, "no_such_table", *INJECTION, "workflow_ext.events_pkey", "secret_events", "workflow_ext.runs"],
    "ts": ["infinity", "-infinity"], "interval": [None, "-1 day", "-1 month"],
}


def snapshot(c):
    return c.execute("""SELECT (SELECT count(*) FROM workflow_ext.events), (SELECT count(*) FROM workflow_ext.joins),
                               (SELECT count(*) FROM workflow_ext.join_members), (SELECT count(*) FROM workflow_ext.bootstraps),
                               (SELECT count(*) FROM workflow_ext.runs)""").fetchone()


def test_every_function_every_bad_input(db):
    with psycopg.connect(conninfo(db), autocommit=True) as admin:
        admin.execute("SELECT workflow_ext.append_event('r', NULL, 'run_created')")
        admin.execute("CREATE TABLE secret_events (id text, run_id text, type text, correlation_id text)")
        admin.execute("CREATE ROLE wfx_catalogue_app") if not admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'wfx_catalogue_app'").fetchone() else None
        admin.execute("REVOKE ALL ON secret_events FROM PUBLIC")
        before = snapshot(admin)
    tried, codes, wrote_on_error = 0, {}, []
    with psycopg.connect(conninfo(db), autocommit=True) as c, \
            psycopg.connect(conninfo(db), autocommit=True) as watcher:
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
    with psycopg.connect(conninfo(db), autocommit=True) as admin:
        after = snapshot(admin)
        admin.execute("DROP OWNED BY wfx_catalogue_app")
        admin.execute("DROP ROLE wfx_catalogue_app")
    print(f"FIGURE: bad-input catalogue: {tried} calls over {len(FUNCTIONS)} functions, outcomes {codes}, "
          f"{len(wrote_on_error)} failed calls that wrote anything, rows before {before} after {after}", flush=True)
    # Some "bad" values are legal in some slots (a 200-character ü run id,
    # an injection string as a join key): those calls succeed and write.
    # A call that failed must have written nothing.
    assert wrote_on_error == [], wrote_on_error


@pytest.mark.parametrize("budget_seconds", [15])
def test_replay_fuzz(db, budget_seconds):
    """Random logs, valid and corrupted, with hostile strings, into a DevKit-
    shaped table: replay and scan never panic and never crash."""
    rng = random.Random(7)
    types = ["run_created", "run_started", "run_completed", "run_failed", "run_cancelled", "step_created",
             "step_started", "step_retrying", "step_completed", "step_failed", "wait_created", "wait_completed",
             "hook_created", "hook_received", "hook_disposed", "hook_conflict", "attr_set",
             "", "STEP", "x" * 300, "ü", "step_created\n", None]
    corrs = ["s1", "s2", "w1", "h1", None, "", "x" * 400, "ü🙂", "'; DROP TABLE t; --"]
    runs = calls = 0
    deadline = time.time() + budget_seconds
    with psycopg.connect(conninfo(db), autocommit=True) as c:
        c.execute("CREATE TABLE fuzz_events (id varchar, type varchar, correlation_id varchar, "
                  "created_at timestamp DEFAULT now(), run_id varchar, seq bigint)")
        while time.time() < deadline:
            runs += 1
            run = f"f{runs}"
            rows = []
            for pos in range(rng.randrange(1, 80)):
                seq = pos + 1 if rng.random() > 0.05 else rng.choice([None, pos, pos + 5, -1])
                rows.append((f"e{runs:06d}{pos:04d}", rng.choice(types) if rng.random() > 0.3 else types[0 if pos == 0 else 5],
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
