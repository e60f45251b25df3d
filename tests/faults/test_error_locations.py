"""Errors report where they were raised (PostgreSQL's LOCATION: file, line,
function), not the line of the raise helper: errors raised at different
places of the code carry different locations, none inside src/errors.rs,
each naming the Rust function that raised it."""
import psycopg
import pytest

from conftest import connect

# (SQL that fails, SQLSTATE, the function expected in LOCATION)
CASES = [
    ("SELECT workflow_ext.append_suspension_event(NULL, 's', 'step_created')", "22004",
     "workflow_ext::write::append::append_suspension_event"),
    ("SELECT workflow_ext.append_suspension_event('r', 's', 'step_completed')", "22023",
     "workflow_ext::write::append::append_suspension_event"),
    ("SELECT workflow_ext.append_event('nope', 's', 'step_started')", "23503",
     "workflow_ext::write::trigger::events_before_insert"),
    ("SELECT workflow_ext.join_arrive('r', 'j', 'm', 0)", "22023", "workflow_ext::features::fanin::join_arrive"),
    ("SELECT workflow_ext.purge_runs('-1 day')", "22023", "workflow_ext::features::retention::purge_runs"),
    ("SELECT workflow_ext.bootstrap_end('never')", "55000", "workflow_ext::features::bootstrap::bootstrap_end"),
    ("SELECT * FROM workflow_ext.replay('r', 'pg_class_oid_index')", "42809", "workflow_ext::audit::replay::replay"),
    ("UPDATE workflow_ext.events SET payload = NULL", "0A000",
     "workflow_ext::features::retention::events_refuse_change"),
]


def test_each_error_reports_its_own_site(db):
    seen = {}
    with connect(db) as c:
        for sql, state, function in CASES:
            with pytest.raises(psycopg.Error) as err:
                c.execute(sql)
            d = err.value.diag
            assert d.sqlstate == state, (sql, d.sqlstate, d.message_primary)
            assert d.source_function == function, (sql, d.source_function)
            # PostgreSQL keeps the file's base name only.
            assert d.source_file and d.source_file.endswith(".rs"), (sql, d.source_file)
            assert d.source_file != "errors.rs", (sql, d.source_file)
            seen[(d.source_file, d.source_line)] = sql
    # Every case was raised from a different line.
    assert len(seen) == len(CASES), seen
