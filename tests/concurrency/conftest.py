"""A fresh database with workflow_ext per test, dropped afterwards."""

import re
import uuid

import pytest

from harness import connect


@pytest.fixture
def db(request):
    """Name of a new database, e.g. wfx_conc_suspension_race_1a2b3c4d."""
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower().removeprefix("test_"))
    dbname = f"wfx_conc_{name[:40]}_{uuid.uuid4().hex[:8]}"
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        with connect(dbname) as conn:
            conn.execute("CREATE EXTENSION workflow_ext")
        yield dbname
    finally:
        with connect("postgres") as admin:
            # FORCE: a failed test may leave a session behind.
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
