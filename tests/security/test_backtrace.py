"""No Rust backtrace reaches a client, whatever the server's environment.

The server of this test runs with RUST_BACKTRACE=1 (a cluster of its own:
the project cluster is started without it). An error raised inside the
extension's Rust code (here PostgreSQL's own 42501 from a read the caller
may not make, which crosses Rust frames) must reach the client as
PostgreSQL wrote it: no stack trace in DETAIL or anywhere else."""
import os
import shutil
import tempfile

import psycopg
import pytest

from lib.cluster import as_pg, bin_dir
from lib.connection import connect, server_conninfo

PORT = 54361


@pytest.fixture(scope="module")
def server():
    base = tempfile.mkdtemp(prefix="wfx_backtrace_")
    shutil.chown(base, "postgres", "postgres")
    data = os.path.join(base, "data")
    as_pg(f"{bin_dir()}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8")
    env = dict(os.environ, RUST_BACKTRACE="1", RUST_LIB_BACKTRACE="1")
    as_pg(f"{bin_dir()}/pg_ctl", "-D", data, "-l", os.path.join(base, "server.log"), "-w", "-t", "60",
          "-o", f"-p {PORT} -k {base} -c listen_addresses='' -c shared_buffers=32MB", "start", env=env)
    try:
        yield server_conninfo(base, PORT)
    finally:
        as_pg(f"{bin_dir()}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_no_backtrace_in_errors(server):
    with connect("postgres", server) as c:
        c.execute("CREATE EXTENSION workflow_ext")
        c.execute("CREATE TABLE private_log (id text, run_id text, type text, correlation_id text)")
        c.execute("DROP ROLE IF EXISTS wfx_bt_reader")
        c.execute("CREATE ROLE wfx_bt_reader LOGIN")
        c.execute("SELECT workflow_ext.grant_access('wfx_bt_reader', 'reader')")
    try:
        with connect("postgres", server, user="wfx_bt_reader") as c:
            for sql in ["SELECT * FROM workflow_ext.replay('r', 'private_log')",
                        "SELECT * FROM workflow_ext.scan('private_log')"]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute(sql)
                diag = e.value.diag
                told = " ".join(str(x) for x in (diag.message_primary, diag.message_detail,
                                                 diag.message_hint, diag.context) if x)
                assert "backtrace" not in told.lower() and ".rs:" not in told, told
    finally:
        with connect("postgres", server) as c:
            c.execute("DROP OWNED BY wfx_bt_reader")
            c.execute("DROP ROLE wfx_bt_reader")
