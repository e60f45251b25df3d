"""The Citus examples of docs/scaling-out.md (its ```sql-citus blocks, which
the docs suite cannot run without Citus) executed on a real formation, with
their claims checked by the docs suite's own reader (tests/docs)."""
import importlib.util
import os

from lib.cluster import ROOT

spec = importlib.util.spec_from_file_location(
    "docs_sql", os.path.join(ROOT, "tests", "docs", "test_readme_sql.py"))
docs_sql = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_sql)

PAGE = "docs/scaling-out.md"


def citus_blocks():
    text = open(os.path.join(ROOT, PAGE)).read()
    statements = []
    for m in docs_sql.FENCE.finditer(text):
        if m.group(1) == "sql-citus":
            first = text.count("\n", 0, m.start(2)) + 1
            for st in docs_sql.split_statements(m.group(2), first):
                st.doc = PAGE
                statements.append(st)
    return statements


def test_the_pages_citus_examples_hold(citus):
    statements = citus_blocks()
    assert statements, f"no ```sql-citus block in {PAGE}"
    ids = docs_sql.EventIds()
    bad = []
    with citus.connect() as conn:
        for st in statements:
            bad += docs_sql.check_statement(conn, st, ids)
    assert not bad, "\n".join(bad)
