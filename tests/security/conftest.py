"""A fresh database with workflow_ext per test, dropped afterwards."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pgcluster import fresh_database  # noqa: E402  (tests/pgcluster.py)


@pytest.fixture
def db(request):
    """Name of a new database, e.g. wfx_sec_cancel_ends_the_call_1a2b3c4d."""
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower().removeprefix("test_"))
    with fresh_database(f"wfx_sec_{name[:40]}") as dbname:
        yield dbname
