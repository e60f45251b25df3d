"""Released versions' install scripts, which sql/ does not keep: each is
read from this repository's git history at a pinned commit and checked
against its pinned sha256 (the upgrade test and the package test install
old versions from them)."""

import contextlib
import hashlib
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Released install scripts, not kept in sql/: version -> (the commit of this
# repository that stores sql/workflow_ext--<version>.sql, the commit that
# added it; its sha256). Never edit a released script.
RELEASED = {
    "0.1.0": ("4e5b9c83f0c66d10f6a0c7efe4f402713b5f5c5c",
              "349a20fd3f8e47675a933d7f71e58406a312e919c5a93fbd9bfee4dc1aca1966"),
    "0.2.0": ("3e5c6d696925552675216679b20a405adf1e9f5a",
              "4ffcc3471deb94e5a420ec75fff59e57fd34a455a4e31c8b861676dba4c2bf7c"),
    "0.3.0": ("d0a7e621d82287b79646f3150e78766391c3c474",
              "8fc255041a6f874d09d8358b4a909d50e0aa306025ba9200bd353dc8663f7269"),
    "0.4.0": ("6204dca01d300a0bec2efb2dd58e52e337ad61cf",
              "f62559764c5062ee5c7877ef0e96348a5a81a523a42e96582d76b4100e74c351"),
    "0.4.1": ("1aa600f62687e3df0c3ba8cfd65eb1411a622864",
              "e01c9114a2ec4861374352a0082cf6e7491b6e8d88bc6b2b605bc54b1976f81d"),
    "0.5.0": ("3578d98ab915bb63e94aa197c0f95c47e1c6a938",
              "c9caf8b1d74c59cd88b20a3f8348e71ad70ca771c77e8ee142dd90a55cbc82f8"),
    "0.5.1": ("9267b0241a8dd23627485b4fb9f6acef618f036f",
              "84ea778ef148fdbe4d82c7f1dcf2fc9428f3d483e46c960006ac36ff2f7004fb"),
}


def released_script(version):
    """The released install script of `version`, from git history, checked
    against its pinned sha256."""
    commit, pinned = RELEASED[version]
    name = f"workflow_ext--{version}.sql"
    try:
        has = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
        got = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:sql/{name}"], capture_output=True)
    except FileNotFoundError:
        has = got = None
    if got is None or got.returncode != 0:
        why = ("git is not installed" if got is None
               else (has.stderr.decode(errors="replace").strip()
                     or f"commit {commit} is not in this repository's history") if has.returncode != 0
               else got.stderr.decode(errors="replace").strip())
        pytest.fail(f"cannot read the released install script {name} from git history "
                    f"(git show {commit[:12]}:sql/{name}: {why}). sql/ keeps only upgrade scripts; "
                    f"the upgrade test needs this repository's git history: run it in a full "
                    f"git clone, not a tarball or a shallow clone", pytrace=False)
    digest = hashlib.sha256(got.stdout).hexdigest()
    assert digest == pinned, (f"{name} at {commit[:12]} has sha256 {digest}, pinned {pinned}: "
                              f"released scripts are frozen")
    return got.stdout




@contextlib.contextmanager
def installed_released_scripts(conn, versions):
    """Each released install script of `versions` in the extension directory
    of the server `conn` is connected to (its SHAREDIR/extension, asked of
    the server), so `CREATE EXTENSION workflow_ext VERSION '<old>'` finds
    it. Writes only those files (as root, like scripts/install.sh);
    afterwards removes the ones it added and puts back any it replaced."""
    scripts = {version: released_script(version) for version in versions}
    sharedir = conn.execute("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'").fetchone()[0]
    ext = pathlib.Path(sharedir) / "extension"
    before = {}
    try:
        for version, text in scripts.items():
            path = ext / f"workflow_ext--{version}.sql"
            before[path] = path.read_bytes() if path.exists() else None
            if before[path] != text:
                path.write_bytes(text)
                path.chmod(0o644)
        yield
    finally:
        for path, old in before.items():
            if old is None:
                path.unlink(missing_ok=True)
            elif path.read_bytes() != old:
                path.write_bytes(old)
