"""ALTER EXTENSION workflow_ext UPDATE from every released version.

For each released version: take its install script from git history (the
commit pinned below), check its sha256, put it in the test server's extension
directory, install that version, fill it with events from every lifecycle, update to the
current version, then
  (a) the extension's objects equal a fresh install's, object by object
      (catalog descriptions, not pg_dump: pg_dump skips extension members);
  (b) the data is intact and scan() is clean;
  (c) appends keep working, at the next seq.
Released scripts are frozen: their sha256 is pinned here, and a test fails if
one is edited (write an upgrade script instead). sql/ keeps only the upgrade
scripts; without the repository's git history (a tarball, a shallow clone)
the test fails and says so.
"""

import contextlib
import hashlib
import pathlib
import re
import subprocess
import uuid

import pytest

from lib.cluster import fresh_database
from lib.connection import connect
from lib.released import RELEASED, installed_released_scripts, released_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
SQL = ROOT / "sql"


@pytest.fixture(scope="module")
def released_install_scripts():
    """Every released install script in the test server's extension
    directory for this module (tests/lib/released.py)."""
    with connect("postgres") as c:
        with installed_released_scripts(c, RELEASED):
            yield


def current_version():
    text = (ROOT / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


@pytest.fixture
def fresh_db():
    """make() -> the name of a new database without the extension (each test
    installs the version it needs); all dropped after the test."""
    with contextlib.ExitStack() as made:
        yield lambda: made.enter_context(fresh_database("wfx_upgrade", extension=False))


# One row per extension member: (kind, identity, description). The
# description holds what a user could observe: definitions, columns,
# defaults, constraints, triggers and their firing mode, ACLs, comments.
CATALOG = r"""
WITH members AS (
  SELECT d.classid::regclass::text AS cat, d.objid
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
  WHERE e.extname = 'workflow_ext' AND d.deptype = 'e'
)
SELECT 'relation', c.oid::regclass::text,
       concat_ws(' | ', c.relkind, c.relacl::text, c.reloptions::text,
         (SELECT string_agg(format('%s %s %s %s', a.attname, format_type(a.atttypid, a.atttypmod),
                                   a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid)), ', ' ORDER BY a.attnum)
            FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
         (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY pg_get_indexdef(i.indexrelid))
            FROM pg_index i WHERE i.indrelid = c.oid),
         (SELECT string_agg(format('%s %s', conname, pg_get_constraintdef(co.oid)), '; ' ORDER BY conname)
            FROM pg_constraint co WHERE co.conrelid = c.oid),
         (SELECT string_agg(format('%s %s', pg_get_triggerdef(t.oid), t.tgenabled), '; ' ORDER BY t.tgname)
            FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
         obj_description(c.oid, 'pg_class'))
FROM members m JOIN pg_class c ON m.cat = 'pg_class' AND c.oid = m.objid
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ', pg_get_functiondef(p.oid), p.proacl::text, obj_description(p.oid, 'pg_proc'))
FROM members m JOIN pg_proc p ON m.cat = 'pg_proc' AND p.oid = m.objid
UNION ALL
SELECT 'type', t.oid::regtype::text,
       concat_ws(' | ', t.typtype, t.typacl::text,
         (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid))
FROM members m JOIN pg_type t ON m.cat = 'pg_type' AND t.oid = m.objid
UNION ALL
SELECT 'schema', n.nspname, concat_ws(' | ', n.nspacl::text)
FROM pg_namespace n WHERE n.nspname = 'workflow_ext'
UNION ALL
SELECT 'config_dump', (SELECT string_agg(format('%s %s', x::regclass, cond), ', ' ORDER BY x::regclass::text)
                         FROM unnest(extconfig, extcondition) u(x, cond)), ''
FROM pg_extension WHERE extname = 'workflow_ext'
UNION ALL
SELECT 'other', m.cat, count(*)::text FROM members m
WHERE m.cat NOT IN ('pg_class', 'pg_proc', 'pg_type') GROUP BY m.cat
ORDER BY 1, 2
"""


def catalog(dbname):
    with connect(dbname) as c:
        return [tuple(r) for r in c.execute(CATALOG).fetchall()]


LIFECYCLES = [
    ("wrun_a", None, "run_created"),
    ("wrun_a", None, "run_started"),
    ("wrun_a", "step_1", "step_created"),
    ("wrun_a", "step_1", "step_started"),
    ("wrun_a", "step_1", "step_retrying"),
    ("wrun_a", "step_1", "step_started"),
    ("wrun_a", "step_1", "step_completed"),
    ("wrun_a", "step_2", "step_created"),
    ("wrun_a", "step_2", "step_started"),
    ("wrun_a", "step_2", "step_failed"),
    ("wrun_a", "wait_1", "wait_created"),
    ("wrun_a", "wait_1", "wait_completed"),
    ("wrun_a", "hook_1", "hook_created"),
    ("wrun_a", "hook_1", "hook_received"),
    ("wrun_a", "hook_1", "hook_disposed"),
    ("wrun_a", "hook_2", "hook_conflict"),
    ("wrun_a", None, "attr_set"),
    ("wrun_a", None, "run_completed"),
    ("wrun_b", None, "run_created"),
    ("wrun_b", None, "run_cancelled"),
    ("wrun_c", None, "run_created"),
    ("wrun_c", None, "run_started"),
    ("wrun_c", None, "run_failed"),
    ("wrun_d", None, "run_created"),
    ("wrun_d", None, "run_started"),
]


# Released upgrade scripts, the ones users' ALTER EXTENSION UPDATE runs:
# frozen too. The upgrade to the version in development (from the newest
# release to Cargo.toml's) may still change until it is released; pin it then.
RELEASED_UPGRADES = {
    "0.1.0--0.2.0": "347d54e61bf878330b2c1fb049e660d1e441a3b69d63b79b7da0e8ea7d4432dd",
    "0.2.0--0.3.0": "27783a1f20915189ac20ef5c63e099785955e8b2e5de2466314056f65a48af4b",
    "0.3.0--0.4.0": "ec32cc76141e5952964b965afb5358d4ab00b1317af6d8a24522d35166bff17b",
    "0.4.0--0.4.1": "91a60400376bdb016dbc06b2cca7525fb515db9f5ca1bbe4e213dd98507d176d",
    "0.4.1--0.5.0": "e8215659baeac33becd146ec40edd35c75234fd0615098cd8e7158d85c10ec07",
    "0.5.0--0.5.1": "3f1d2463bc3e12591e367e68cc12e1aa0ec78a7a2b8f208034262dd94b4cd425",
}


def test_released_scripts_are_frozen():
    for version in RELEASED:
        released_script(version)  # from git history, checked against its pin
    # sql/ keeps upgrade scripts only (the current install script is pgrx's).
    kept = [p.name for p in SQL.glob("workflow_ext--*.sql") if p.name.count("--") == 1]
    assert not kept, f"{kept}: released install scripts live in git history (RELEASED), not in sql/"
    for version, pinned in RELEASED_UPGRADES.items():
        path = SQL / f"workflow_ext--{version}.sql"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == pinned, f"{path.name} was edited: released scripts are frozen; add an upgrade script"
    # Every upgrade script but the one into the version in development is a
    # released one, and pinned.
    current = current_version()
    for path in SQL.glob("workflow_ext--*--*.sql"):
        step = path.name.removeprefix("workflow_ext--").removesuffix(".sql")
        assert step in RELEASED_UPGRADES or step.endswith(f"--{current}"), f"{path.name} is not pinned"


def test_every_release_has_an_upgrade_path():
    current = current_version()
    for version in RELEASED:
        assert (SQL / f"workflow_ext--{version}--{current}.sql").exists() or any(
            SQL.glob(f"workflow_ext--{version}--*.sql")
        ), f"no upgrade script from {version}"


@pytest.mark.parametrize("version", sorted(RELEASED))
def test_update_equals_fresh_install_and_keeps_data(fresh_db, released_install_scripts, version):
    current = current_version()
    old, new = fresh_db(), fresh_db()
    with connect(old) as c:
        c.execute(f"CREATE EXTENSION workflow_ext VERSION '{version}'")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'workflow_ext'").fetchone()[0] == version
        for run, corr, typ in LIFECYCLES:
            c.execute("SELECT workflow_ext.append_event(%s, %s, %s)", (run, corr, typ))
        c.execute("SELECT workflow_ext.join_arrive('wrun_d', 'j', 'm1', 2)")
        c.execute("SELECT workflow_ext.bootstrap('app@v1', 'CREATE TABLE app_t (a int)')")
        before = c.execute("SELECT run_id, seq, id, type::text, correlation_id FROM workflow_ext.events ORDER BY 1, 2").fetchall()
        c.execute("ALTER EXTENSION workflow_ext UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'workflow_ext'").fetchone()[0] == current
        # This backend appended under the old schema (the binary is the new
        # one throughout): its kept plans follow the update.
        assert c.execute("SELECT seq FROM workflow_ext.append_event('wrun_d', 's8', 'step_created')").fetchone()[0] == 3
        before.append(("wrun_d", 3, None, "step_created", "s8"))
    with connect(new) as c:
        c.execute("CREATE EXTENSION workflow_ext")

    upgraded, fresh = catalog(old), catalog(new)
    only_upgraded = sorted(set(upgraded) - set(fresh))
    only_fresh = sorted(set(fresh) - set(upgraded))
    assert not only_upgraded and not only_fresh, (
        f"upgraded {version} -> {current} differs from a fresh install:\n"
        + "\n".join(f"  upgraded: {r}" for r in only_upgraded)
        + "\n"
        + "\n".join(f"  fresh:    {r}" for r in only_fresh)
    )
    print(f"FIGURE: upgrade {version} -> {current}: {len(fresh)} catalog objects identical to a fresh install")

    with connect(old) as c:
        after = c.execute("SELECT run_id, seq, id, type::text, correlation_id FROM workflow_ext.events ORDER BY 1, 2").fetchall()
        assert [r[:2] + r[3:] for r in after] == [r[:2] + r[3:] for r in sorted(before, key=lambda r: (r[0], r[1]))]
        assert [r[2] for r in after if (r[0], r[1]) != ("wrun_d", 3)] == [
            r[2] for r in sorted(before, key=lambda r: (r[0], r[1])) if (r[0], r[1]) != ("wrun_d", 3)]
        assert c.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0] == 0
        # Appends continue at the next seq; the new functions work.
        seq = c.execute("SELECT seq FROM workflow_ext.append_event('wrun_d', 's9', 'step_created')").fetchone()[0]
        assert seq == 4
        assert c.execute("SELECT count(*), min(log::text) FROM workflow_ext.runs").fetchone() == (4, "workflow_ext.events")
        # What 0.3.0 adds works on the updated database: an attached table,
        # spec 5's vocabulary, purge of the own log only.
        c.execute("CREATE TABLE dk (id varchar PRIMARY KEY, run_id varchar NOT NULL, type varchar NOT NULL, "
                  "correlation_id varchar)")
        c.execute("INSERT INTO dk VALUES ('wevt_1', 'wrun_d', 'run_created', NULL)")
        assert c.execute("SELECT workflow_ext.attach('dk')").fetchone()[0] == 1
        assert c.execute("INSERT INTO dk VALUES ('wevt_2', 'wrun_d', 'noop', NULL) RETURNING seq").fetchone()[0] == 2
        assert c.execute("SELECT seq FROM workflow_ext.append_event('wrun_d', 'k', 'attr_set')").fetchone()[0] == 5
        assert c.execute("SELECT workflow_ext.purge_runs('0 s')").fetchone()[0] == 3  # wrun_a, b, c
        assert c.execute("SELECT count(*) FROM workflow_ext.runs WHERE log = 'dk'::regclass").fetchone()[0] == 1
        assert c.execute("SELECT workflow_ext.join_arrive('wrun_d', 'j', 'm2', 2)").fetchone()[0] is True
        assert c.execute("SELECT workflow_ext.bootstrap('app@v1', 'CREATE TABLE app_t (a int)')").fetchone()[0] is False
        assert c.execute("SELECT workflow_ext.bootstrap_begin('mig@v1')").fetchone()[0] is True
        c.execute("SELECT workflow_ext.bootstrap_end('mig@v1')")
        assert c.execute("SELECT workflow_ext.bootstrap_begin('mig@v1')").fetchone()[0] is False
        # 0.4.0's batch in Rust: one call, dense seqs after the single appends.
        rows = c.execute("SELECT correlation_id, seq, inserted FROM workflow_ext.append_suspension_events("
                         "'wrun_d', ARRAY['b1', 'b2', 'b1'], ARRAY['step_created', 'step_created', 'step_created'])").fetchall()
        assert rows == [("b1", 6, True), ("b2", 7, True), ("b1", 6, False)]
        # 0.4.1's grant_access: revoking one kind keeps what another kind the
        # role holds shares with it.
        role = f"wfx_upg_{uuid.uuid4().hex[:8]}"
        c.execute(f'CREATE ROLE "{role}"')
        try:
            c.execute("SELECT workflow_ext.grant_access(%s, 'writer')", (role,))
            c.execute("SELECT workflow_ext.grant_access(%s, 'reader')", (role,))
            c.execute("SELECT workflow_ext.grant_access(%s, 'writer', revoke => true)", (role,))
            assert c.execute(
                "SELECT has_schema_privilege(%s, 'workflow_ext', 'USAGE'), "
                "has_table_privilege(%s, 'workflow_ext.events', 'SELECT'), "
                "has_table_privilege(%s, 'workflow_ext.events', 'INSERT')", (role, role, role)).fetchone() == (
                True, True, False)
            c.execute("SELECT workflow_ext.grant_access(%s, 'reader', revoke => true)", (role,))
        finally:
            c.execute(f'DROP ROLE "{role}"')
