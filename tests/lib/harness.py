"""Run something and return what the caller was told: its value, or its
error's SQLSTATE, message and DETAIL. The one Outcome of every suite."""

from dataclasses import dataclass

import psycopg


@dataclass
class Outcome:
    """One call: its value on success (call(): the statement's first row),
    its SQLSTATE, message, DETAIL and the constraint it names on failure."""

    value: object = None
    sqlstate: str = None
    message: str = None
    detail: str = None
    constraint: str = None

    @property
    def ok(self):
        return self.sqlstate is None

    def __str__(self):
        return "ok" if self.ok else f"{self.sqlstate} {self.message}"

    @classmethod
    def of_error(cls, e):
        d = e.diag
        return cls(sqlstate=e.sqlstate, message=d.message_primary, detail=d.message_detail,
                   constraint=d.constraint_name)


def attempt(fn, *args, **kw):
    """fn(*args, **kw)'s return value, or the psycopg error it raised, as an
    Outcome (any other exception propagates)."""
    try:
        return Outcome(value=fn(*args, **kw))
    except psycopg.Error as e:
        return Outcome.of_error(e)


def call(conn, sql, params=None):
    """One statement: its first row (None if it returns none), or its error,
    as an Outcome."""
    def first_row():
        cur = conn.execute(sql, params)
        return cur.fetchone() if cur.description else None
    return attempt(first_row)


def figure(text):
    """A number a suite reports (scripts/test.sh runs pytest with -s)."""
    print(f"FIGURE: {text}", flush=True)
