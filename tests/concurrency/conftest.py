"""A fresh database with workflow_ext per test, dropped afterwards."""

import re

import pytest

from lib.cluster import fresh_database


@pytest.fixture
def db(request):
    """Name of a new database, e.g. wfx_conc_suspension_race_1a2b3c4d."""
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower().removeprefix("test_"))
    with fresh_database(f"wfx_conc_{name[:40]}") as dbname:
        yield dbname
