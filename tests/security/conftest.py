"""A fresh database with workflow_ext per test, dropped afterwards."""

import re

import pytest

from lib.cluster import fresh_database


@pytest.fixture
def db(request):
    """Name of a new database, e.g. wfx_sec_cancel_ends_the_call_1a2b3c4d."""
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower().removeprefix("test_"))
    with fresh_database(f"wfx_sec_{name[:40]}") as dbname:
        yield dbname
