"""workflow_ext.attach() on the Workflow DevKit's own event table, driven by the
REAL npm package @workflow/world-postgres (its World, world.events.create),
for 4.3.7 (tests/devkit/v4) and 5.0.0-beta.29 (tests/devkit/v5), and for the
race also 4.1.1 (tests/devkit/v411: the naive writer of the vercel/workflow#2039 report, no
creation index at all).

Every database is fresh (tests/lib's fresh_database: CREATE EXTENSION
workflow_ext), its schema made by the package's own bin/setup.js (drizzle
migrations + graphile-worker's), then workflow_ext.attach(
'workflow.workflow_events'). driver.mjs (one driver, the version directory as
an argument) makes the World and runs the calls; raw SQL is used only to read
the table back, to desynchronise the package's own entity tables the way a
half-written run does, and for raw inserts in the package's exact insert shape.

Sizes: WFX_DEVKIT_PROCESSES (default 8) racing Node processes,
WFX_DEVKIT_ENTITIES (default 20) entities of each kind. Connection: PGHOST /
PGPORT / PGUSER from the environment, else the project cluster's.
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

import psycopg
import pytest

from lib.cluster import fresh_database, setting
from lib.connection import connect
from lib.harness import attempt, figure

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "driver.mjs")
PKG = "@workflow/world-postgres"
VERSIONS = {"v4": "4.3.7", "v5": "5.0.0-beta.29", "v411": "4.1.1"}
# The versions the tests run on (test 5 is 5.x only).
MAIN_VERSIONS = ["v4", "v5", "v411"]
# Versions without the package's entity-creation index: they store duplicate
# creations under racing processes (vercel/workflow#2039), and do not map a 23505 to
# EntityConflictError.
NAIVE_VERSIONS = {"v411"}
PROCESSES = int(os.environ.get("WFX_DEVKIT_PROCESSES", "8"))
ENTITIES = int(os.environ.get("WFX_DEVKIT_ENTITIES", "20"))
# Hang guard for one node invocation (never part of a verdict).
NODE_TIMEOUT_S = 300
EVENTS = "workflow.workflow_events"
INDEX = "workflow_events_entity_creation_unique"
# The package's own event insert (drizzle), as in the reference doc.
PACKAGE_INSERT = ('insert into "workflow"."workflow_events" ("id","type","correlation_id","created_at",'
                  '"run_id","payload","payload_cbor","spec_version") values '
                  '(%s,%s,%s,default,%s,default,%s,%s) returning "created_at"')


def node_env(**extra):
    env = dict(os.environ)
    for k in ("PGHOST", "PGPORT", "PGUSER"):
        env[k] = setting(k)
    env.update(extra)
    return env


def db_url(dbname):
    from urllib.parse import quote
    return (f"postgresql://{quote(setting('PGUSER'), safe='')}@{quote(setting('PGHOST'), safe='')}"
            f":{setting('PGPORT')}/{quote(dbname, safe='')}")


@pytest.fixture(scope="session")
def workdir():
    # Node runs here, not in the checkout: setup.js loads a .env from its cwd.
    d = tempfile.mkdtemp(prefix="wfx_devkit_")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def node_installed():
    if shutil.which("node") is None:
        pytest.fail("node is not installed (Node 18.19+ is needed for tests/devkit)")


@pytest.fixture(params=MAIN_VERSIONS)
def version(request):
    """The version directory (v4, v5, v411); fails if its node_modules are missing."""
    vdir = request.param
    pkg_json = os.path.join(HERE, vdir, "node_modules", *PKG.split("/"), "package.json")
    if not os.path.isfile(pkg_json):
        pytest.fail(f"{PKG} is not installed in tests/devkit/{vdir}: run `npm ci` in tests/devkit/{vdir} "
                    "(the versions are pinned in its package-lock.json)")
    with open(pkg_json) as f:
        found = json.load(f)["version"]
    if found != VERSIONS[vdir]:
        pytest.fail(f"tests/devkit/{vdir} has {PKG} {found}, not {VERSIONS[vdir]}: run `npm ci` in tests/devkit/{vdir}")
    return vdir


def last_json(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def run_node(args, workdir, env=None, timeout=NODE_TIMEOUT_S):
    p = subprocess.run(["node", *args], cwd=workdir, env=env or node_env(), capture_output=True, text=True,
                       timeout=timeout)
    return p


def setup_schema(version, dbname, workdir):
    """The package's own setup, run as a user runs it (`npx … bootstrap`):
    bin/setup.js with the database URL in WORKFLOW_POSTGRES_URL."""
    setup_js = os.path.join(HERE, version, "node_modules", *PKG.split("/"), "bin", "setup.js")
    p = run_node([setup_js], workdir, env=node_env(WORKFLOW_POSTGRES_URL=db_url(dbname)))
    assert p.returncode == 0, f"{setup_js} exited {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}"


def calls(version, dbname, ops, workdir):
    """driver.mjs calls: the ops in order through one World; returns its JSON."""
    path = os.path.join(workdir, f"ops_{uuid.uuid4().hex[:8]}.json")
    with open(path, "w") as f:
        json.dump(ops, f)
    p = run_node([DRIVER, "calls", os.path.join(HERE, version), dbname, path], workdir)
    out = last_json(p.stdout)
    if p.returncode != 0 or not out or not out.get("ok"):
        raise AssertionError(f"driver.mjs calls exited {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return out


# --- event data, in the shapes the package requires (dist/storage.js and
# @workflow/world's event schemas); serialized data as Uint8Array, as the
# runtime sends it from spec version 2 on.

def B(text):
    return {"$bytes": text}


def ev(version, event_type, correlation_id=None, **event_data):
    data = {"eventType": event_type, "specVersion": {"$specVersion": True}}
    if correlation_id is not None:
        data["correlationId"] = correlation_id
    defaults = {
        "run_created": lambda: {"deploymentId": "dpl_devkit", "workflowName": "devkit-workflow", "input": B("input")},
        "run_completed": lambda: {"output": B("output")},
        "step_created": lambda: {"stepName": "devkit-step", "input": B("step-input")},
        # 4.x stores a message out of an error object; 5.x stores serialized data.
        "step_retrying": lambda: {"error": {"message": "transient"} if VERSIONS[version].startswith("4.") else B("transient")},
        "step_completed": lambda: {"result": B("result")},
        "wait_created": lambda: {"resumeAt": {"$date": "now"}},
        "hook_received": lambda: {"payload": B("payload")},
    }
    if event_type in defaults:
        data["eventData"] = {**defaults[event_type](), **event_data}
    elif event_data:
        data["eventData"] = event_data
    return data


def create(version, run, event_type, correlation_id=None, **event_data):
    return {"op": "create", "runId": {"$run": run} if not run.startswith("wrun_") else run,
            "data": ev(version, event_type, correlation_id, **event_data)}


FULL_RUN = ["run_created", "run_started", "step_created", "step_started", "step_retrying", "step_started",
            "step_completed", "wait_created", "wait_completed", "hook_created", "hook_received", "hook_disposed",
            "run_completed"]


def full_run_ops(version, name, token):
    corr = {"step": "step_1", "wait": "wait_1", "hook": "hook_1"}
    ops = [{"op": "newRun", "name": name}]
    for t in FULL_RUN:
        kind = t.split("_")[0]
        extra = {"token": token} if t == "hook_created" else {}
        ops.append(create(version, name, t, corr.get(kind), **extra))
    ops.append({"op": "list", "runId": {"$run": name}})
    return ops


def creates(out):
    return [r for r in out["results"] if r["op"] == "create"]


def assert_all_ok(out):
    bad = [r for r in creates(out) if r["outcome"] != "ok"]
    assert not bad, f"world.events.create failed: {json.dumps(bad, indent=1)}"


# --- the database side

def attach_available(conn):
    return conn.execute("SELECT to_regprocedure('workflow_ext.attach(regclass,boolean)') IS NOT NULL").fetchone()[0]


def attach(conn):
    """workflow_ext.attach on the package's table; FAILS (not skips) when the
    installed workflow_ext has no attach()."""
    if not attach_available(conn):
        pytest.fail("the installed workflow_ext has no attach(regclass, boolean): build and install "
                    "workflow_ext 0.3.0 (scripts/install.sh) before tests/devkit")
    return conn.execute(f"SELECT workflow_ext.attach('{EVENTS}'::regclass)").fetchone()[0]


def indexdef(conn):
    r = conn.execute("SELECT pg_get_indexdef(to_regclass(%s))", [f"workflow.{INDEX}"]).fetchone()
    return r[0]


# Every event type of both vocabularies (spec 3's 16, and spec 5+'s attr_set
# and noop), for probing what an index predicate covers.
ALL_EVENT_TYPES = ["run_created", "run_started", "run_completed", "run_failed", "run_cancelled",
                   "step_created", "step_started", "step_retrying", "step_completed", "step_failed",
                   "wait_created", "wait_completed", "hook_created", "hook_received", "hook_disposed",
                   "hook_conflict", "attr_set", "noop"]


def index_semantics(conn):
    """What the creation index means, not how PostgreSQL prints it: its table,
    key columns (pg_index.indkey as column names), indisunique,
    indnullsnotdistinct, and the set of (type, correlation_id IS NULL) of
    ALL_EVENT_TYPES x {NULL, non-NULL} that its predicate covers (evaluated on
    a TEMP probe table). None if there is no such index."""
    row = conn.execute(
        "SELECT i.indrelid::regclass::text, "
        "       array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) "
        "             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord), "
        "       i.indnkeyatts, i.indexprs IS NULL, i.indisunique, i.indnullsnotdistinct, "
        "       pg_get_expr(i.indpred, i.indrelid) "
        "  FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [f"workflow.{INDEX}"]).fetchone()
    if row is None:
        return None
    table, columns, nkeys, no_exprs, unique, nulls_not_distinct, pred = row
    assert no_exprs and len(columns) == nkeys, f"{INDEX} has expression or INCLUDE columns: {row}"
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS probe (type varchar, correlation_id varchar)")
        conn.execute("TRUNCATE pg_temp.probe")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pg_temp.probe VALUES (%s, %s)",
                            [(t, c) for t in ALL_EVENT_TYPES for c in (None, "corr_1")])
        covered = {(t, bool(n)) for t, n in conn.execute(
            "SELECT type, correlation_id IS NULL FROM pg_temp.probe"
            + (f" WHERE {pred}" if pred is not None else ""))}
    return {"table": table, "columns": columns, "unique": unique, "nulls_not_distinct": nulls_not_distinct,
            "covered": covered, "predicate": pred}


def has_seq(conn):
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass "
                        "AND attname = 'seq' AND NOT attisdropped)", [EVENTS]).fetchone()[0]


def triggers(conn):
    return sorted(r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [EVENTS]))


def attached_logs(conn):
    return {r[0] for r in conn.execute("SELECT log::text FROM workflow_ext.attached_logs")}


def index_names(conn):
    return sorted(r[0] for r in conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass", [EVENTS]))


def event_count(conn, run_id=None):
    if run_id is None:
        return conn.execute(f"SELECT count(*) FROM {EVENTS}").fetchone()[0]
    return conn.execute(f"SELECT count(*) FROM {EVENTS} WHERE run_id = %s", [run_id]).fetchone()[0]


def scan_rows(conn):
    return conn.execute(f"SELECT * FROM workflow_ext.scan('{EVENTS}'::regclass)").fetchall()


def seq_gaps(conn, run_ids):
    """Runs whose seqs are not exactly 1..count (commit-ordered, dense)."""
    rows = conn.execute(f"SELECT run_id, array_agg(seq ORDER BY seq) FROM {EVENTS} "
                        "WHERE run_id = ANY(%s) GROUP BY run_id", [list(run_ids)]).fetchall()
    bad = {r: s for r, s in rows if s != list(range(1, len(s) + 1))}
    missing = set(run_ids) - {r for r, _ in rows}
    return bad, missing


def raw_insert(conn, run_id, event_type, correlation_id):
    """One event in the package's exact insert shape, in its own transaction,
    as an Outcome (ok: it was stored)."""
    def insert():
        with conn.transaction():
            conn.execute(PACKAGE_INSERT, [f"wevt_raw{uuid.uuid4().hex[:21].upper()}", event_type, correlation_id,
                                          run_id, None, 5])
    return attempt(insert)


def refused(o, sqlstate, anomaly=None):
    """An Outcome that is the database's refusal (SQLSTATE, and the anomaly
    named in its DETAIL or message)."""
    if o.sqlstate != sqlstate:
        return False
    text = f"{o.message or ''} {o.detail or ''}"
    return anomaly is None or f"anomaly: {anomaly}" in text


def is_refusal(r, sqlstate, anomaly=None):
    """A world.events.create outcome that is the database's refusal."""
    if r["outcome"] == "ok" or r.get("code") != sqlstate:
        return False
    if anomaly is None:
        return True
    text = " ".join(str(r.get(k) or "") for k in ("detail", "dbMessage", "message"))
    return f"anomaly: {anomaly}" in text


@pytest.fixture
def devkit_db(version, workdir):
    """A fresh database with workflow_ext, the package's schema made by its own setup."""
    with fresh_database(f"wfx_devkit_{version}") as db:
        setup_schema(version, db, workdir)
        yield db


# --- 1 -----------------------------------------------------------------------

def test_full_run_reads_back_in_order(version, devkit_db, workdir):
    """One complete run through world.events.create on an attached table: the
    table holds it in order (seq 1..N), scan finds nothing, and the package
    reads it back itself (world.events.list)."""
    with connect(devkit_db) as conn:
        assert attach(conn) == 0
        assert EVENTS in attached_logs(conn)
        out = calls(version, devkit_db, full_run_ops(version, "A", f"tok_{uuid.uuid4().hex}"), workdir)
        assert_all_ok(out)
        run_id = out["runs"]["A"]
        rows = conn.execute(f"SELECT id, type, seq FROM {EVENTS} WHERE run_id = %s ORDER BY seq",
                            [run_id]).fetchall()
        assert [r[1] for r in rows] == FULL_RUN
        assert [r[2] for r in rows] == list(range(1, len(FULL_RUN) + 1))
        assert [r["eventId"] for r in creates(out)] == [r[0] for r in rows]
        assert scan_rows(conn) == []
        listed = [r for r in out["results"] if r["op"] == "list"][0]
        assert listed["outcome"] == "ok", listed
        assert [e["eventType"] for e in listed["events"]] == FULL_RUN
        assert [e["eventId"] for e in listed["events"]] == [r[0] for r in rows]
        figure(f"{version} full run: {len(rows)} events through world.events.create, seq 1..{len(rows)}, "
               "scan 0 rows, world.events.list read them back in the same order")


# --- 2 -----------------------------------------------------------------------

def race_once(version, dbname, workdir, attached):
    """P processes, one start instant, each creating the same entities:
    ENTITIES step_created (one pre-created run), ENTITIES hook_created (same
    run) and ENTITIES run_created (same runIds). Returns figures."""
    prep = [{"op": "newRun", "name": "R0"}, create(version, "R0", "run_created"), create(version, "R0", "run_started")]
    prep += [{"op": "newRun", "name": f"X{i}"} for i in range(ENTITIES)]
    out = calls(version, dbname, prep, workdir)
    assert_all_ok(out)
    r0 = out["runs"]["R0"]
    xs = [out["runs"][f"X{i}"] for i in range(ENTITIES)]
    tag = uuid.uuid4().hex[:8]
    plan = []
    for i in range(ENTITIES):
        plan.append({"kind": "step_created", "entity": f"step_{i}", "runId": r0,
                     "data": ev(version, "step_created", f"step_{i}")})
        plan.append({"kind": "hook_created", "entity": f"hook_{i}", "runId": r0,
                     "data": ev(version, "hook_created", f"hook_{i}", token=f"tok_{tag}_{i}")})
        plan.append({"kind": "run_created", "entity": xs[i], "runId": xs[i], "data": ev(version, "run_created")})
    barrier = tempfile.mkdtemp(prefix="barrier_", dir=workdir)
    plan_path = os.path.join(barrier, "plan.json")
    with open(plan_path, "w") as f:
        json.dump({"calls": plan}, f)

    procs = [subprocess.Popen(["node", DRIVER, "race", os.path.join(HERE, version), dbname, plan_path, barrier, str(i)],
                              cwd=workdir, env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    deadline = time.monotonic() + NODE_TIMEOUT_S
    try:
        while sum(os.path.exists(os.path.join(barrier, f"ready.{i}")) for i in range(PROCESSES)) < PROCESSES:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                o, e = dead[0].communicate()
                raise AssertionError(f"a racing process exited {dead[0].returncode} before the barrier\n{o[-2000:]}\n{e[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("racing processes not ready in time")
            time.sleep(0.02)
        # One start instant for all, a little ahead (idle processes on a
        # loaded 2-core machine wake late).
        tmp = os.path.join(barrier, "go.tmp")
        with open(tmp, "w") as f:
            f.write(str(int(time.time() * 1000) + 250))
        os.rename(tmp, os.path.join(barrier, "go"))
        outs = []
        for p in procs:
            o, e = p.communicate(timeout=max(1, deadline - time.monotonic()))
            j = last_json(o)
            if p.returncode != 0 or not j or not j.get("ok"):
                raise AssertionError(f"racing process exited {p.returncode}\nstdout: {o[-3000:]}\nstderr: {e[-3000:]}")
            outs.append(j)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    starts = [j["startedAt"] for j in outs]
    records = [r for j in outs for r in j["records"]]
    fig = {"start_spread_ms": max(starts) - min(starts), "kinds": {}}
    with connect(dbname) as conn:
        rows = dict(conn.execute(
            f"SELECT type, count(*) FROM {EVENTS} WHERE run_id = %s GROUP BY type", [r0]).fetchall())
        per_entity = {
            "step_created": dict(conn.execute(f"SELECT correlation_id, count(*) FROM {EVENTS} WHERE run_id = %s "
                                              "AND type = 'step_created' GROUP BY 1", [r0]).fetchall()),
            "hook_created": dict(conn.execute(f"SELECT correlation_id, count(*) FROM {EVENTS} WHERE run_id = %s "
                                              "AND type = 'hook_created' GROUP BY 1", [r0]).fetchall()),
            "run_created": dict(conn.execute(f"SELECT run_id, count(*) FROM {EVENTS} WHERE run_id = ANY(%s) "
                                             "AND type = 'run_created' GROUP BY 1", [xs]).fetchall()),
        }
        # A hook's creation is its hook_created or a hook_conflict (one of
        # the two per hook under attach).
        hook_creations = dict(conn.execute(f"SELECT correlation_id, count(*) FROM {EVENTS} WHERE run_id = %s "
                                           "AND type IN ('hook_created', 'hook_conflict') GROUP BY 1", [r0]).fetchall())
        fig["hook_conflict_rows"] = rows.get("hook_conflict", 0)
        # Entity rows without their creation event, compared here rather than
        # joined in SQL: tests/citus runs this on a distributed event table,
        # which Citus does not join with the package's local tables.
        step_rows = {r for (r,) in conn.execute(
            "SELECT step_id FROM workflow.workflow_steps WHERE run_id = %s", [r0]).fetchall()}
        run_rows = {r for (r,) in conn.execute(
            "SELECT id FROM workflow.workflow_runs WHERE id = ANY(%s)", [xs]).fetchall()}
        fig["orphan_steps"] = len(step_rows - set(per_entity["step_created"]))
        fig["orphan_runs"] = len(run_rows - set(per_entity["run_created"]))
        if attached:
            fig["seq_gaps"], fig["seq_missing"] = seq_gaps(conn, [r0, *xs])
    for kind, counts in per_entity.items():
        recs = [r for r in records if r["kind"] == kind]
        creations = hook_creations if kind == "hook_created" else counts
        wins, oks = {}, {}
        for r in recs:
            if r["outcome"] == "ok" and r.get("eventType") == kind:
                wins[r["entity"]] = wins.get(r["entity"], 0) + 1
            if r["outcome"] == "ok":
                oks[r["entity"]] = oks.get(r["entity"], 0) + 1
        # ok answers that stored another event instead (4.1.1's hook_conflict
        # for a token it found taken)
        ok_as = {}
        for r in recs:
            if r["outcome"] == "ok" and r.get("eventType") != kind:
                ok_as[r.get("eventType")] = ok_as.get(r.get("eventType"), 0) + 1
        # the creation index's own refusal, surfaced raw (a version that does
        # not map 23505 to EntityConflictError)
        def is_raw_23505(r):
            return r["outcome"] == "other" and r.get("code") == "23505" and r.get("constraint") == INDEX
        raw_23505 = sum(is_raw_23505(r) for r in recs)
        # the database's refusal of an event for a hook that already has its
        # creation (4.1.1: hook_conflict for a live hook, or anything after a
        # hook_conflict)
        def is_hook_refusal(r):
            return (kind == "hook_created" and r["outcome"] == "other" and r.get("code") == "55000"
                    and any(f"anomaly: {a}" in str(r.get("detail") or "")
                            for a in ("illegal_transition", "event_after_terminal")))
        refused_55000 = sum(is_hook_refusal(r) for r in recs)
        others = {}
        for r in recs:
            if r["outcome"] == "other":
                k = (f"{r.get('name')} 23505 {INDEX}" if is_raw_23505(r) else
                     f"{r.get('name')} {r.get('code') or 'no-sqlstate'} {r.get('constraint') or ''} "
                     f"{r.get('dbMessage') or r.get('message')}{' / ' + r['detail'] if r.get('detail') else ''}".strip())
                others[k] = others.get(k, 0) + 1
        fig["kinds"][kind] = {
            "calls": len(recs),
            "entities": ENTITIES,
            "rows": sum(counts.values()),
            "entities_with_rows": len(counts),
            "duplicates": sum(n - 1 for n in counts.values()),
            "ok": sum(r["outcome"] == "ok" for r in recs),
            "conflict": sum(r["outcome"] == "conflict" for r in recs),
            "other": sum(r["outcome"] == "other" for r in recs),
            "raw_23505": raw_23505,
            "refused_55000": refused_55000,
            "unexpected": sum(r["outcome"] == "other" for r in recs) - raw_23505 - refused_55000,
            "winners": sum(wins.values()),
            "entities_with_one_winner": sum(1 for n in wins.values() if n == 1),
            "entities_with_one_ok": sum(1 for n in oks.values() if n == 1),
            "creation_rows": sum(creations.values()),
            "entities_with_creation": len(creations),
            "creation_duplicates": sum(n - 1 for n in creations.values()),
            "ok_as": ok_as,
            "other_errors": others,
        }
    return fig


def print_race(version, mode, fig):
    for kind, k in fig["kinds"].items():
        figure(f"{version} {mode} {kind}: {k['rows']} rows for {k['entities']} entities ({k['duplicates']} duplicates); "
               f"{k['calls']} calls from {PROCESSES} processes: {k['ok']} ok"
               + (f" ({k['winners']} as {kind}, " + ", ".join(f"{n} as {t}" for t, n in k["ok_as"].items()) + ")"
                  if k["ok_as"] else "")
               + f", {k['conflict']} EntityConflictError, {k['other']} other"
               + (f" ({k['raw_23505']} raw 23505 on {INDEX})" if k["raw_23505"] else "")
               + (f" ({k['refused_55000']} 55000 refusals of an event for a hook already created)"
                  if k["refused_55000"] else "")
               + (f"; {k['creation_rows']} creation rows (hook_created + hook_conflict) for {k['entities_with_creation']} "
                  f"hooks ({k['creation_duplicates']} duplicates)" if kind == "hook_created" else "")
               + (f" [{'; '.join(f'{n} x {m}' for m, n in k['other_errors'].items())}]" if k["other_errors"] else ""))
    figure(f"{version} {mode}: hook_conflict rows {fig['hook_conflict_rows']}, orphan step rows {fig['orphan_steps']}, "
           f"orphan run rows {fig['orphan_runs']}, start spread {fig['start_spread_ms']} ms")


def test_race_with_and_without_attach(version, workdir):
    """The vercel/workflow#2039 race. Without attach: figures only, except for 4.1.1 (no
    creation index), where the harness must catch its duplicates. With attach:
    exactly one row and one winner per entity, seqs dense per run, every loser
    an EntityConflictError or (4.1.1, which does not map it) the creation
    index's raw 23505, nothing else."""
    naive = version in NAIVE_VERSIONS
    with fresh_database(f"wfx_devkit_{version}_raw") as db:
        setup_schema(version, db, workdir)
        raw = race_once(version, db, workdir, attached=False)
        print_race(version, "without attach", raw)
    with fresh_database(f"wfx_devkit_{version}_att") as db:
        setup_schema(version, db, workdir)
        with connect(db) as conn:
            attach(conn)
        fig = race_once(version, db, workdir, attached=True)
        print_race(version, "with attach", fig)
    if naive:
        # The harness catches the naive writer: duplicate creations stored.
        caught = {kind: raw["kinds"][kind]["duplicates"] for kind in ("step_created", "run_created")}
        assert any(raw["kinds"][kind]["rows"] > raw["kinds"][kind]["entities"] for kind in caught), (
            f"{version} without attach stored no duplicate step_created / run_created: the race did not "
            f"race ({caught}; start spread {raw['start_spread_ms']} ms)")
    for kind, k in fig["kinds"].items():
        losers = k["calls"] - ENTITIES
        if naive:
            figure(f"{version} with attach {kind} losers: {k['conflict']} EntityConflictError, {k['raw_23505']} raw "
                   f"23505 on {INDEX} (4.1.1 does not map 23505 to EntityConflictError)"
                   + (f", {k['refused_55000']} 55000 (an event for a hook already created)" if kind == "hook_created" else "")
                   + f", {k['unexpected']} else"
                   + (f"; winners: {k['winners']} {kind}"
                      + "".join(f", {n} {t}" for t, n in k["ok_as"].items()) if kind == "hook_created" else ""))
            assert k["unexpected"] == 0, f"{kind}: errors other than EntityConflictError / 23505: {k['other_errors']}"
            assert k["conflict"] + k["raw_23505"] + k["refused_55000"] == losers, (kind, k)
        else:
            assert k["other"] == 0, f"{kind}: errors other than EntityConflictError: {k['other_errors']}"
            assert k["conflict"] == losers, (kind, k)
        assert k["ok"] == ENTITIES and k["entities_with_one_ok"] == ENTITIES, (kind, k)
        assert k["duplicates"] == 0 and k["creation_duplicates"] == 0, (kind, k)
        assert k["creation_rows"] == ENTITIES and k["entities_with_creation"] == ENTITIES, (kind, k)
        if naive and kind == "hook_created":
            # 4.1.1 writes a hook's row before its event, outside a
            # transaction, and answers a token it finds taken with a
            # hook_conflict event: a racer can see the winner's hook row and
            # store hook_conflict first. One creation per hook still, either
            # event; each stored hook_conflict is one caller's ok answer.
            assert set(k["ok_as"]) <= {"hook_conflict"}, (kind, k)
            assert k["ok_as"].get("hook_conflict", 0) == fig["hook_conflict_rows"], (kind, k, fig["hook_conflict_rows"])
            assert k["rows"] == k["winners"], (kind, k)
        else:
            assert not k["ok_as"], f"{kind}: calls answered ok with another event stored: {k['ok_as']}"
            assert k["rows"] == ENTITIES and k["entities_with_rows"] == ENTITIES, (kind, k)
            assert k["winners"] == ENTITIES and k["entities_with_one_winner"] == ENTITIES, (kind, k)
    if not naive:
        assert fig["hook_conflict_rows"] == 0
    assert not fig["seq_gaps"] and not fig["seq_missing"], (fig["seq_gaps"], fig["seq_missing"])


# --- 3 -----------------------------------------------------------------------

def test_refused_transitions_store_nothing(version, devkit_db, workdir):
    """Late events are refused by the database itself, even where the package's
    own entity tables have been desynchronised, and nothing is stored."""
    with connect(devkit_db) as conn:
        attach(conn)
        out = calls(version, devkit_db, [
            {"op": "newRun", "name": "A"},
            create(version, "A", "run_created"), create(version, "A", "run_started"),
            create(version, "A", "step_created", "s1"), create(version, "A", "step_started", "s1"),
            create(version, "A", "step_completed", "s1"),
            {"op": "newRun", "name": "B"},
            create(version, "B", "run_created"), create(version, "B", "run_started"),
        ], workdir)
        assert_all_ok(out)
        run_id, run_b = out["runs"]["A"], out["runs"]["B"]
        total = event_count(conn)
        before = event_count(conn, run_id)

        # A late step_started for the completed step: the package refuses it
        # itself (its steps-table guard) ...
        late = creates(calls(version, devkit_db, [create(version, run_id, "step_started", "s1")], workdir))[0]
        figure(f"{version} late step_started, package tables in sync: {late['outcome']} {late.get('name')}: {late.get('message')}")
        assert late["outcome"] != "ok", late
        assert event_count(conn, run_id) == before

        # ... and with the package's step row desynchronised (a half-written
        # run: the row says running), only the database stands in the way.
        conn.execute("UPDATE workflow.workflow_steps SET status = 'running' WHERE run_id = %s AND step_id = 's1'", [run_id])
        late = creates(calls(version, devkit_db, [create(version, run_id, "step_started", "s1")], workdir))[0]
        figure(f"{version} late step_started, step row desynchronised: {late['outcome']} {late.get('name')} "
               f"code={late.get('code')} (on {late.get('codeOn')}) detail={late.get('detail')!r}")
        assert is_refusal(late, "55000", "event_after_terminal"), late
        assert event_count(conn, run_id) == before
        # The same late event as a raw insert in the package's exact shape.
        e = raw_insert(conn, run_id, "step_started", "s1")
        assert refused(e, "55000", "event_after_terminal"), (e, e.detail)
        # An event for a step that was never created (in a live run).
        e = raw_insert(conn, run_b, "step_started", "never_created")
        assert refused(e, "23503"), (e, e.detail)
        assert event_count(conn) == total

        # A step_created after run_completed.
        out = calls(version, devkit_db, [create(version, run_id, "run_completed"),
                                         create(version, run_id, "step_created", "s2")], workdir)
        done, late = creates(out)
        assert done["outcome"] == "ok", done
        after_completed = event_count(conn, run_id)
        assert after_completed == before + 1
        figure(f"{version} step_created after run_completed, package tables in sync: {late['outcome']} "
               f"{late.get('name')}: {late.get('message')}")
        assert late["outcome"] != "ok", late
        assert event_count(conn, run_id) == after_completed
        conn.execute("UPDATE workflow.workflow_runs SET status = 'running' WHERE id = %s", [run_id])
        late = creates(calls(version, devkit_db, [create(version, run_id, "step_created", "s3")], workdir))[0]
        figure(f"{version} step_created after run_completed, run row desynchronised: {late['outcome']} {late.get('name')} "
               f"code={late.get('code')} (on {late.get('codeOn')}) detail={late.get('detail')!r}")
        assert is_refusal(late, "55000", "event_after_run_terminal"), late
        assert event_count(conn, run_id) == after_completed
        orphan = conn.execute("SELECT count(*) FROM workflow.workflow_steps WHERE run_id = %s AND step_id = 's3'",
                              [run_id]).fetchone()[0]
        figure(f"{version} the refused step_created left {orphan} workflow_steps row(s) behind "
               "(0 where the package writes the step row and its event in one transaction)")
        e = raw_insert(conn, run_id, "step_created", "s4")
        assert refused(e, "55000", "event_after_run_terminal"), (e, e.detail)
        assert event_count(conn, run_id) == after_completed

        # The stored events themselves cannot be changed.
        for stmt in (f"UPDATE {EVENTS} SET correlation_id = 'x' WHERE run_id = %s",
                     f"DELETE FROM {EVENTS} WHERE run_id = %s", f"TRUNCATE {EVENTS}"):
            with pytest.raises(psycopg.Error) as exc:
                with conn.transaction():
                    conn.execute(stmt, [run_id] if "%s" in stmt else None)
            assert exc.value.sqlstate == "0A000", (stmt, exc.value)
        assert event_count(conn, run_id) == after_completed
        assert event_count(conn) == total + 1
        assert scan_rows(conn) == []


# --- 4 -----------------------------------------------------------------------

def test_detach_restores_the_package(version, devkit_db, workdir):
    """attach, events, detach: the package's index, columns and triggers are as
    its migrations made them, and the package works as before (4.1.1, which
    has no creation index: none afterwards, and it stores a duplicate
    step_created again, as it does on its own)."""
    naive = version in NAIVE_VERSIONS
    with connect(devkit_db) as conn:
        index_before = indexdef(conn)
        semantics_before = index_semantics(conn)
        if naive:
            assert semantics_before is None, f"{version} made a {INDEX}: {index_before}"
        else:
            assert semantics_before is not None, f"the package made no {INDEX}"
        triggers_before = triggers(conn)
        indexes_before = index_names(conn)
        attach(conn)
        assert indexdef(conn) != index_before and has_seq(conn)
        # The probe can tell indexes apart: the extension's covers run_created.
        semantics_attached = index_semantics(conn)
        assert ("run_created", True) in semantics_attached["covered"], semantics_attached
        if semantics_before is not None:
            assert ("run_created", True) not in semantics_before["covered"], semantics_before
        out = calls(version, devkit_db, full_run_ops(version, "A", f"tok_{uuid.uuid4().hex}"), workdir)
        assert_all_ok(out)
        conn.execute(f"SELECT workflow_ext.detach('{EVENTS}'::regclass)")
        restored = indexdef(conn)
        semantics_after = index_semantics(conn)
        if naive:
            assert semantics_after is None, f"{INDEX} after detach, none before attach: {restored}"
            figure(f"{version} detach: no {INDEX} after detach, as before attach")
        else:
            # Compared by meaning, not text: detach executes the
            # pg_get_indexdef text printed before attach, and PostgreSQL
            # prints the re-created index with different but equivalent casts
            # ((ARRAY[...])::text[] vs ARRAY[(...)::text, ...]); that is
            # accepted behaviour.
            assert semantics_after is not None, f"no {INDEX} after detach (before attach: {index_before})"
            for key in ("table", "columns", "unique", "nulls_not_distinct", "covered"):
                assert semantics_after[key] == semantics_before[key], (
                    f"{INDEX} {key} after detach: {semantics_after[key]!r}, before attach: {semantics_before[key]!r}\n"
                    f"  definition after detach: {restored}\n  before attach: {index_before}")
            figure(f"{version} detach: {INDEX} on {semantics_after['table']} ({', '.join(semantics_after['columns'])}), "
                   f"unique={semantics_after['unique']}, nulls not distinct={semantics_after['nulls_not_distinct']}, "
                   f"predicate covers {len(semantics_after['covered'])} of {2 * len(ALL_EVENT_TYPES)} probe rows "
                   f"({', '.join(sorted({t for t, _ in semantics_after['covered']}))}) as before attach; "
                   f"text {'identical' if restored == index_before else 'differs'}")
        assert not has_seq(conn)
        assert triggers(conn) == triggers_before
        # nothing but the extension's own log, which is always protected
        assert attached_logs(conn) <= {"workflow_ext.events"}
        assert index_names(conn) == indexes_before

        # A new run, with a duplicate step_created while the run is live (not
        # after run_completed, where the package refuses it for the run's
        # state instead).
        out = calls(version, devkit_db, [
            {"op": "newRun", "name": "B"},
            create(version, "B", "run_created"), create(version, "B", "run_started"),
            create(version, "B", "step_created", "s1"), create(version, "B", "step_started", "s1"),
            create(version, "B", "step_completed", "s1"),
            create(version, "B", "step_created", "s1"),
            create(version, "B", "run_completed"),
            {"op": "list", "runId": {"$run": "B"}},
        ], workdir)
        results = creates(out)
        dup = results[5]
        assert all(r["outcome"] == "ok" for i, r in enumerate(results) if i != 5), json.dumps(results, indent=1)
        expected = ["run_created", "run_started", "step_created", "step_started", "step_completed", "run_completed"]
        if naive:
            # the package's own behaviour again: 4.1.1 stores it (vercel/workflow#2039)
            assert dup["outcome"] == "ok", dup
            expected.insert(5, "step_created")
        else:
            # the package's own dedup answer again
            assert dup["outcome"] == "conflict", dup
        listed = [r for r in out["results"] if r["op"] == "list"][0]
        assert [e["eventType"] for e in listed["events"]] == expected
        # and the table is the package's again: its migrations delete rows
        with conn.transaction():
            n = conn.execute(f"DELETE FROM {EVENTS} WHERE run_id = %s", [out["runs"]["B"]]).rowcount
            assert n == len(expected)
            raise psycopg.Rollback()
        figure(f"{version} detach: index, columns and triggers as before attach; a new run through "
               f"world.events.create works, and a duplicate step_created gets the package's own answer: "
               + (f"{dup['outcome']} {dup.get('name')}: {dup.get('message')}" if dup["outcome"] != "ok"
                  else "stored (the package's own vercel/workflow#2039 behaviour)"))


# --- 5 -----------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v5"], indirect=True)  # 0014 exists in 5.x only
def test_package_migration_recreating_the_index(version, devkit_db, workdir):
    """5.x's migration 0014 drops and recreates workflow_events_entity_creation_unique:
    on an attached table the index must still cover run_created afterwards."""
    mig_dir = os.path.join(HERE, version, "node_modules", *PKG.split("/"), "src", "drizzle", "migrations")
    [mig] = [f for f in os.listdir(mig_dir) if f.startswith("0014_") and f.endswith(".sql")]
    with open(os.path.join(mig_dir, mig)) as f:
        migration = f.read()
    with connect(devkit_db) as conn:
        attach(conn)
        out = calls(version, devkit_db, [{"op": "newRun", "name": "A"}, create(version, "A", "run_created"),
                                         create(version, "A", "run_started")], workdir)
        assert_all_ok(out)
        run_id = out["runs"]["A"]
        attached_def = indexdef(conn)
        e = raw_insert(conn, run_id, "run_created", None)
        assert e.sqlstate == "23505" and e.constraint == INDEX, e
        # as drizzle's migrator runs it: in one transaction
        with conn.transaction():
            conn.execute(migration)
        after = indexdef(conn)
        figure(f"{version} after re-running {mig}: index {'unchanged' if after == attached_def else 'changed'}: {after}")
        e = raw_insert(conn, run_id, "run_created", None)
        assert e.sqlstate == "23505" and e.constraint == INDEX, (
            f"a duplicate run_created after {mig}: {e!r}; index now: {after}")
        assert "run_created" in after
        assert event_count(conn, run_id) == 2
        out = calls(version, devkit_db, [create(version, run_id, "step_created", "s1"),
                                         create(version, run_id, "step_created", "s1")], workdir)
        ok, dup = creates(out)
        assert ok["outcome"] == "ok" and dup["outcome"] == "conflict", (ok, dup)


# --- uninstall and package upgrades (issue 24) --------------------------------

@pytest.mark.parametrize("version", ["v4", "v5"], indirect=True)
def test_drop_extension_leaves_the_package_writing(version, devkit_db, workdir):
    """DROP EXTENSION while the package's table is attached: a plain DROP is
    refused (2BP01, the triggers depend on the extension); CASCADE drops the
    triggers with the extension, and the package goes on writing (seq is not
    NOT NULL, so its inserts, which do not name seq, still work)."""
    with connect(devkit_db) as conn:
        attach(conn)
        out = calls(version, devkit_db, [{"op": "newRun", "name": "A"}, create(version, "A", "run_created"),
                                         create(version, "A", "run_started")], workdir)
        assert_all_ok(out)
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            conn.execute("DROP EXTENSION workflow_ext")
        assert triggers(conn), "a refused DROP EXTENSION removed the triggers"
        conn.execute("DROP EXTENSION workflow_ext CASCADE")
        assert triggers(conn) == []
    out = calls(version, devkit_db, [create(version, out["runs"]["A"], "step_created", "s1"),
                                     {"op": "newRun", "name": "B"}, create(version, "B", "run_created"),
                                     create(version, "B", "run_started")], workdir)
    assert_all_ok(out)
    with connect(devkit_db) as conn:
        assert event_count(conn, out["runs"]["B"]) == 2
        assert event_count(conn) == 5
    figure(f"{version} DROP EXTENSION: plain refused (2BP01); CASCADE: the package wrote 3 more events")


@pytest.mark.parametrize("version", ["v4"], indirect=True)
def test_detach_after_package_upgrade_restores_the_new_index(version, devkit_db, workdir):
    """attach on 4.3.7, then 5.0's migrations 0011-0014 (as drizzle runs them:
    one transaction; 0014 drops and recreates the creation index with
    attr_set), then detach: the index put back is 5.0's, not 4.3.7's."""
    mig_dir = os.path.join(HERE, "v5", "node_modules", *PKG.split("/"), "src", "drizzle", "migrations")
    files = sorted(f for f in os.listdir(mig_dir)
                   if f.endswith(".sql") and f[:4] in ("0011", "0012", "0013", "0014"))
    assert [f[:4] for f in files] == ["0011", "0012", "0013", "0014"], files
    with connect(devkit_db) as conn:
        before = index_semantics(conn)
        assert ("attr_set", False) not in before["covered"], before
        attach(conn)
        with conn.transaction():
            for f in files:
                with open(os.path.join(mig_dir, f)) as sql:
                    conn.execute(sql.read())
        assert "run_created" in indexdef(conn), "the extension's creation index was not kept"
        conn.execute(f"SELECT workflow_ext.detach('{EVENTS}'::regclass)")
        after = index_semantics(conn)
    assert ("attr_set", False) in after["covered"], f"detach restored 4.3.7's index: {after['predicate']}"
    assert ("run_created", True) not in after["covered"] and not after["nulls_not_distinct"], after
    figure(f"{version} + 5.0 migrations 0011-0014, detach: the package's 5.0 index is back: {after['predicate']}")


# --- online attach under the package's own writers -----------------------------

# Existing events for the online attach (WFX_DEVKIT_ONLINE_EVENTS): runs of 26
# events each (created, started, 8 steps through their lifecycle).
ONLINE_EVENTS = int(os.environ.get("WFX_DEVKIT_ONLINE_EVENTS", "2000000"))
ONLINE_STEPS = 8

# The history, in the package's row shape: ids that sort before every id
# the package mints now (older ULIDs do), old timestamps.
ONLINE_HISTORY = """
INSERT INTO workflow.workflow_events (id, type, correlation_id, created_at, run_id, spec_version)
SELECT 'wevt_00' || lpad(r::text, 8, '0') || lpad(e.pos::text, 3, '0'), e.type, e.corr,
       timestamp '2026-01-01' + make_interval(secs => r + e.pos), 'wrun_00' || lpad(r::text, 8, '0'), 2
  FROM generate_series(1, %(runs)s) r,
       LATERAL (SELECT 1 AS pos, 'run_created' AS type, NULL AS corr
                UNION ALL SELECT 2, 'run_started', NULL
                UNION ALL SELECT 3 + 3 * (s - 1) + k, (ARRAY['step_created', 'step_started', 'step_completed'])[k + 1],
                                 'step_' || s
                            FROM generate_series(1, %(steps)s) s, generate_series(0, 2) k) e
"""


def load_writers(version, dbname, workdir, barrier):
    """PROCESSES Node processes writing the package's workload (driver.mjs
    load) until <barrier>/stop exists; returns once all are writing."""
    template = [{"data": ev(version, t, c)} for t, c in
                [("run_created", None), ("run_started", None), ("step_created", "s1"), ("step_started", "s1"),
                 ("step_completed", "s1"), ("run_completed", None)]]
    path = os.path.join(barrier, "template.json")
    with open(path, "w") as f:
        json.dump({"calls": template}, f)
    procs = [subprocess.Popen(["node", DRIVER, "load", os.path.join(HERE, version), dbname, path, barrier, str(i)],
                              cwd=workdir, env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    deadline = time.monotonic() + NODE_TIMEOUT_S
    while sum(os.path.exists(os.path.join(barrier, f"ready.{i}")) for i in range(PROCESSES)) < PROCESSES:
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            o, e = (dead[0].communicate() if dead else ("", "not ready in time"))
            raise AssertionError(f"a writer did not start\n{o[-2000:]}\n{e[-2000:]}")
        time.sleep(0.05)
    return procs


def stop_writers(procs, barrier):
    open(os.path.join(barrier, "stop"), "w").close()
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=NODE_TIMEOUT_S)
        j = last_json(o)
        if p.returncode != 0 or not j or not j.get("ok"):
            raise AssertionError(f"a writer exited {p.returncode}\nstdout: {o[-3000:]}\nstderr: {e[-3000:]}")
        outs.append(j)
    return outs


@pytest.mark.parametrize("version", ["v4"], indirect=True)
def test_online_attach_under_the_package(version, devkit_db, workdir):
    """attach_concurrently of a DevKit table of ONLINE_EVENTS existing events
    while PROCESSES Node processes run the package's workload through its
    World: no error reaches the package, no call of it waits 1 s, and the
    table ends attached with every run dense and its past in replay order."""
    runs = ONLINE_EVENTS // (2 + 3 * ONLINE_STEPS)
    with connect(devkit_db) as conn:
        conn.execute(ONLINE_HISTORY % {"runs": runs, "steps": ONLINE_STEPS})
        conn.execute(f"ANALYZE {EVENTS}")
        existing = event_count(conn)
    barrier = tempfile.mkdtemp(prefix="online_", dir=workdir)
    procs = load_writers(version, devkit_db, workdir, barrier)
    try:
        time.sleep(2)
        with connect(devkit_db) as conn:
            conn.execute("SET client_min_messages = warning")
            started = time.monotonic()
            conn.execute(f"CALL workflow_ext.attach_concurrently('{EVENTS}')")
            took = time.monotonic() - started
        time.sleep(2)
    finally:
        outs = stop_writers(procs, barrier)
    failures = [f for o in outs for f in o["failures"]]
    longest = max(o["longestMs"] for o in outs)
    writes = sum(o["calls"] for o in outs)
    figure(f"{version} attach_concurrently of {existing:,} package events under {PROCESSES} package writers: "
           f"{took:.1f} s, {existing / took:,.0f} events/s; {writes:,} world.events.create calls, "
           f"longest {longest} ms, {len(failures)} failed")
    assert not failures, f"the package saw errors: {json.dumps(failures[:5], indent=1)}"
    assert longest < 1000, f"a package call waited {longest} ms"
    with connect(devkit_db) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert EVENTS in attached_logs(conn)
        assert one(f"SELECT count(*) FROM {EVENTS} WHERE seq IS NULL") == 0
        assert one(f"SELECT count(*) FROM (SELECT run_id, count(*) AS n, max(seq) AS top FROM {EVENTS} "
                   "GROUP BY run_id) r WHERE n <> top") == 0, "runs whose seqs are not 1..n"
        assert one(f"SELECT count(*) FROM (SELECT seq, row_number() OVER (PARTITION BY run_id ORDER BY id COLLATE \"C\") AS n "
                   f"FROM {EVENTS} WHERE run_id LIKE 'wrun\\_00%') x WHERE seq <> n") == 0, "the past out of replay order"
        assert one(f"SELECT count(*) FROM workflow_ext.scan('{EVENTS}'::regclass)") == 0
        assert one(f"SELECT count(*) FROM {EVENTS}") >= existing + writes - len(failures)


def table_shape(conn):
    """What an attach may change on the package's table: columns, indexes
    (predicates compared as predicate_shape does: a rebuilt index prints its
    casts differently), triggers, registration, run rows."""
    q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
    return {
        "columns": q(f"SELECT attname, atttypid::regtype::text, attnotnull FROM pg_attribute "
                     f"WHERE attrelid = '{EVENTS}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"),
        "indexes": q(f"SELECT c.relname, workflow_ext.predicate_shape(pg_get_indexdef(c.oid)), i.indisvalid "
                     f"FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     f"WHERE i.indrelid = '{EVENTS}'::regclass ORDER BY 1"),
        "triggers": q(f"SELECT tgname FROM pg_trigger WHERE tgrelid = '{EVENTS}'::regclass AND NOT tgisinternal"),
        "logs": q(f"SELECT count(*) FROM workflow_ext.logs WHERE relation = '{EVENTS}'::regclass"),
        "runs": q(f"SELECT count(*) FROM workflow_ext.runs WHERE log = '{EVENTS}'::regclass"),
    }


@pytest.mark.parametrize("version", ["v5"], indirect=True)
def test_cancelled_online_attach_under_the_package(version, devkit_db, workdir):
    """attach_concurrently cancelled while it numbers the existing rows, with
    the package writing: the package sees no error, and the table is left as
    it was (its own creation index rebuilt under its name)."""
    runs = max(1, ONLINE_EVENTS // 10 // (2 + 3 * ONLINE_STEPS))
    with connect(devkit_db) as conn:
        conn.execute(ONLINE_HISTORY % {"runs": runs, "steps": ONLINE_STEPS})
        conn.execute(f"ANALYZE {EVENTS}")
        before = table_shape(conn)
    barrier = tempfile.mkdtemp(prefix="cancel_", dir=workdir)
    procs = load_writers(version, devkit_db, workdir, barrier)
    result = {}
    try:
        with connect(devkit_db) as attacher, connect(devkit_db) as watcher:
            pid = attacher.execute("SELECT pg_backend_pid()").fetchone()[0]
            seen = []
            attacher.add_notice_handler(lambda d: seen.append(d.message_primary))

            def run():
                try:
                    attacher.execute(f"CALL workflow_ext.attach_concurrently('{EVENTS}')")
                except psycopg.Error as e:
                    result["error"] = (e.sqlstate, e.diag.message_detail)

            t = threading.Thread(target=run)
            t.start()
            deadline = time.monotonic() + NODE_TIMEOUT_S
            while not any("numbering the existing rows" in m for m in seen) and t.is_alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)
            watcher.execute("SELECT pg_cancel_backend(%s)", (pid,))
            t.join()
    finally:
        outs = stop_writers(procs, barrier)
    failures = [f for o in outs for f in o["failures"]]
    assert "error" in result, "the attach finished before the cancel"
    assert result["error"][0] == "57014" and "was undone" in (result["error"][1] or ""), result
    assert not failures, f"the package saw errors: {json.dumps(failures[:5], indent=1)}"
    with connect(devkit_db) as conn:
        after = table_shape(conn)
    assert after == before, f"the cancelled attach left something behind: {before} -> {after}"
    figure(f"{version} attach_concurrently cancelled while numbering, {sum(o['calls'] for o in outs):,} package calls "
           f"meanwhile, longest {max(o['longestMs'] for o in outs)} ms: the table is as it was")
