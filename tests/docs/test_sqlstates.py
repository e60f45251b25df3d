"""The SQLSTATE table of docs/errors.md is the one list of what a user can be
told: every SQLSTATE that src/errors.rs or a PL/pgSQL RAISE in sql/ (the
current sources, not the released scripts) can raise is in it, and the
PL/pgSQL copies of the Rust errors say what the Rust ones say."""

import pathlib
import re

import psycopg.errors

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = [p for p in sorted((ROOT / "sql").glob("*.sql")) if not p.name.startswith("workflow_ext--")]


ERRORS = ROOT / "docs" / "errors.md"


def documented_codes(text=None):
    """The SQLSTATEs in the first cell of the rows of docs/errors.md's table,
    the one whose header is `| SQLSTATE | …`."""
    lines = (ERRORS.read_text() if text is None else text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| SQLSTATE"))
    codes = set()
    for line in lines[start + 2:]:  # after the header and its |---| line
        if not line.startswith("|"):
            break  # the table ends at its first line that is not a row
        first = line.split("|")[1]
        codes |= set(re.findall(r"\b[0-9A-Z]{5}\b", first))
    return codes


# PostgreSQL names two conditions null_value_not_allowed: 22004 (what
# PL/pgSQL's name and pgrx's ERRCODE_NULL_VALUE_NOT_ALLOWED mean) and 39004
# (an external routine's), which psycopg's lookup by name returns.
AMBIGUOUS = {"NULL_VALUE_NOT_ALLOWED": "22004"}


def sqlstate(condition):
    """A condition name's SQLSTATE, from psycopg's table of PostgreSQL's."""
    # pgrx spells 40001 ERRCODE_T_R_SERIALIZATION_FAILURE (PostgreSQL's
    # class "transaction rollback"); psycopg names it without the prefix.
    name = condition.upper().removeprefix("T_R_")
    return AMBIGUOUS.get(name) or psycopg.errors.lookup(name).sqlstate


def test_every_rust_error_code_is_documented():
    codes = documented_codes()
    rust = set(re.findall(r"ERRCODE_([A-Z_]+)", (ROOT / "src" / "errors.rs").read_text())) - {"INTERNAL_ERROR"}
    assert rust, "no error codes found in src/errors.rs"
    missing = {c: sqlstate(c) for c in rust if sqlstate(c) not in codes}
    assert not missing, f"raised by src/errors.rs, not in docs/errors.md's SQLSTATE table: {missing}"


def test_every_plpgsql_raise_is_documented_and_says_what_rust_says():
    codes = documented_codes()
    raised = []
    for path in SOURCES:
        for m in re.finditer(r"RAISE EXCEPTION\s+'([^']*)'.*?ERRCODE = '([a-z_]+)'", path.read_text(), re.S):
            raised.append((path.name, m.group(1), m.group(2)))
    assert raised, "no RAISE found in sql/"
    missing = [(f, msg, cond) for f, msg, cond in raised if sqlstate(cond) not in codes]
    assert not missing, f"raised in PL/pgSQL, not in docs/errors.md's SQLSTATE table: {missing}"
    # Rust's NullArgument is "<arg> must not be null" (22004): the PL/pgSQL
    # copies say the same.
    for f, msg, cond in raised:
        if cond == "null_value_not_allowed":
            assert msg.endswith("must not be null"), (f, msg)


def test_the_table_is_read():
    """The reader finds the table, and a row taken out of it is missed (so
    the two tests above can fail)."""
    text = ERRORS.read_text()
    codes = documented_codes(text)
    assert {"22004", "23505", "55000", "42P01", "42703"} <= codes, codes
    row = next(line for line in text.splitlines() if line.startswith("| 23503 "))
    assert "23503" not in documented_codes(text.replace(row + "\n", ""))
