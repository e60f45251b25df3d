"""Executes the documentation: every ```sql block of README.md and of every
docs/*.md page, each page in page order in a fresh database of its own with
workflow_ext created, checking what the page's comments claim. The pages are
read as they are now: no expected output lives here, so a reworded error
message is checked against the page's new text. (The file keeps its old name;
it covers every page.)

How a page's SQL is read
------------------------
Pages
    README.md, then every docs/*.md in name order (docs() below: a new page is
    executed without being listed). Each page gets a fresh database, so a
    page's examples are true on their own, and never touch a database of the
    reader's.
Prerequisites
    A page whose examples continue another page's says so in an HTML comment
    on a line of its own, `<!-- docs-sql: after sql-api.md -->` (a path
    relative to the page): that page's blocks run first, in the same
    database, checked as well.
Blocks
    Every fenced block opened with ```sql. Other blocks (```js, ```python,
    ```rust, …) are ignored. All blocks of a page run on ONE connection, in
    autocommit mode (each statement its own transaction, as in psql), so a
    block sees what earlier blocks made: the run `wrun_01` created by the first
    append example of docs/sql-api.md is the run its later examples use.
Statements
    A block is split at top-level semicolons ('strings', "identifiers",
    $$ / $tag$ bodies and -- / /* */ comments respected) and run statement by
    statement. A block that opens a transaction (the BEGIN … COMMIT install
    recipe) thus runs as written; a transaction a block leaves open is an
    error (and is rolled back).
Claims
    The comment lines after a statement, up to the next statement (including
    a `-- …` at the end of the statement's last line), are its claims:
    `-- ERROR:  <message>`
        the statement fails with exactly that primary message; a following
        `-- DETAIL:  <text>` / `-- HINT:  <text>` is the error's detail / hint,
        exactly.
    `-- t` / `-- f`
        (alone, or followed by `:` or ` (` and prose): the statement returns
        one row with one boolean column, of that value.
    a result table (comment lines containing `|`)
        The first line is a header when its cells are the result's column
        names; otherwise it is already a row (as where a page repeats a
        row under an earlier statement's header). The rows are ALL the rows
        returned, in order, each cell compared with the value as psql prints
        it (text, surrounding spaces ignored; NULL prints as an empty cell).
        A line whose first cell is empty continues the row above (a wrapped
        cell): its non-empty cells are appended to the row's cells with one
        space. A ` -- remark` at the end of a table line is prose.
        `(N rows)` checks the row count. (A one-column result has no `|`:
        claim it with `-- t` / `-- f`, or `(N rows)`.)
    event ids
        A `wevt_…` in a claimed value (cell or message) stands for any id of
        its shape: `wevt_` and as many characters, from the ULID (Crockford
        base32) alphabet when the page's is a ULID. The same page id must
        be the same actual id wherever the page repeats it, and two
        different page ids must be two different actual ids.
    Any other comment is prose.
    Every statement without an ERROR claim must simply succeed.
CREATE EXTENSION
    The database already has workflow_ext (the page's `CREATE EXTENSION` is
    how a user installs it), so a `CREATE EXTENSION <name>` without an ERROR
    claim runs as `CREATE EXTENSION IF NOT EXISTS <name>`.
Fixtures
    FIXTURES below creates, in every page's database before its first block,
    what the pages assume exists but no block creates; each says why it is
    there.

A claim the database does not bear out fails the test, with the page and
line of every mismatch (`docs/sql-api.md:42`). test_false_claims_are_caught
proves it: it falsifies one claim of each kind in a copy of a page and
expects a failure at that line.
"""

import os
import re
from dataclasses import dataclass, field

import psycopg
import pytest

from lib import connection
from lib.cluster import fresh_database

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def docs():
    """The executed pages, as paths relative to ROOT: README.md, then every
    docs/*.md in name order."""
    pages = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    return ["README.md"] + [f"docs/{f}" for f in pages]


# What the pages assume but no block creates. Kept minimal.
FIXTURES = [
    # The replay and scan examples (docs/sql-api.md) and the attach examples
    # (docs/adopting-devkit.md) audit "an existing DevKit table",
    # workflow.workflow_events, and show run wrun_01KRPCM1 with the vercel/workflow#2039
    # anomaly: a second step_created for step_1 after it completed (created at
    # position 3, again at 6). In real life the DevKit's Postgres world makes
    # this table; here: its columns, as in tests/pg_regress/sql/replay.sql,
    # and that run's six events, ids in replay (id) order.
    """CREATE SCHEMA workflow""",
    """CREATE TABLE workflow.workflow_events (
         id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
         created_at timestamp NOT NULL DEFAULT now(), run_id varchar NOT NULL, payload jsonb)""",
    # Its index on run_id, as the package makes it (attach_concurrently reads
    # each run's rows through it).
    """CREATE INDEX workflow_events_run_id_index ON workflow.workflow_events (run_id)""",
    """INSERT INTO workflow.workflow_events (id, run_id, type, correlation_id) VALUES
         ('wevt_B01', 'wrun_01KRPCM1', 'run_created', NULL),
         ('wevt_B02', 'wrun_01KRPCM1', 'run_started', NULL),
         ('wevt_B03', 'wrun_01KRPCM1', 'step_created', 'step_1'),
         ('wevt_B04', 'wrun_01KRPCM1', 'step_started', 'step_1'),
         ('wevt_B05', 'wrun_01KRPCM1', 'step_completed', 'step_1'),
         ('wevt_B06', 'wrun_01KRPCM1', 'step_created', 'step_1')""",
]

# Never part of a verdict: a stuck statement fails instead of hanging.
STATEMENT_TIMEOUT = "60s"


# -- Connection ------------------------------------------------------------------

def connect(dbname):
    return connection.connect(dbname, options=f"-c statement_timeout={STATEMENT_TIMEOUT}")


# -- Reading a page ----------------------------------------------------------------

@dataclass
class Statement:
    sql: str
    line: int  # page line of its first character
    comments: list = field(default_factory=list)  # (page line, text after --)
    doc: str = "README.md"  # the page, relative to ROOT


@dataclass
class Block:
    line: int  # page line of the opening fence
    statements: list
    doc: str = "README.md"


FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def sql_blocks(text, doc="README.md"):
    """Every ```sql block of a markdown text, parsed into statements."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1).lower() != "sql":
            continue
        first = text.count("\n", 0, m.start(2)) + 1  # page line of the block's first line
        statements = split_statements(m.group(2), first)
        for st in statements:
            st.doc = doc
        blocks.append(Block(line=first - 1, statements=statements, doc=doc))
    return blocks


def split_statements(sql, first_line):
    """Splits a block at top-level semicolons; comments after a statement's
    semicolon, up to the next statement, become that statement's comments."""
    statements, buf, start, last = [], [], 0, None
    i, n = 0, len(sql)

    def line_at(pos):
        return first_line + sql.count("\n", 0, pos)

    def in_statement():
        return any(not part.isspace() for part in buf)

    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            if in_statement():
                buf.append(sql[i:j])  # a comment inside a statement is SQL
            elif last is not None:
                last.comments.append((line_at(i), sql[i + 2:j]))
            i = j
            continue
        if sql.startswith("/*", i):  # nested, as PostgreSQL reads them
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if in_statement():
                buf.append(sql[i:j])
            i = j
            continue
        if c in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if sql.startswith(c * 2, j):  # '' / "" escape
                        j += 2
                        continue
                    break
                j += 1
            end = j + 1
        elif c == "$" and (m := DOLLAR_TAG.match(sql, i)) and not (i and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            close = sql.find(m.group(0), m.end())
            end = n if close < 0 else close + len(m.group(0))
        elif c == ";":
            if in_statement():
                last = Statement(sql="".join(buf).strip(), line=start)
                statements.append(last)
            buf = []
            i += 1
            continue
        else:
            end = i + 1
        if not in_statement() and not c.isspace():
            start = line_at(i)
        buf.append(sql[i:end])
        i = end
    if in_statement():  # no final semicolon: still a statement
        statements.append(Statement(sql="".join(buf).strip(), line=start))
    return statements


@dataclass
class Claims:
    error: tuple = None  # (line, message)
    detail: tuple = None
    hint: tuple = None
    boolean: tuple = None  # (line, 't' or 'f')
    table: list = field(default_factory=list)  # (line, [cells])
    count: tuple = None  # (line, n)


BOOLEAN = re.compile(r"([tf])(?:[\s:(].*)?")
REMARK = re.compile(r"\s+--(?:\s.*)?$")


def claims_of(statement):
    c = Claims()
    for line, text in statement.comments:
        t = text.strip()
        if m := re.fullmatch(r"(ERROR|DETAIL|HINT):\s+(.*)", t):
            setattr(c, m.group(1).lower(), (line, m.group(2).strip()))
        elif BOOLEAN.fullmatch(t):
            c.boolean = (line, t[0])
        elif "|" in t:
            c.table.append((line, [cell.strip() for cell in REMARK.sub("", t).split("|")]))
        elif m := re.fullmatch(r"\((\d+) rows?\)", t):
            c.count = (line, int(m.group(1)))
    return c


# -- Comparing ------------------------------------------------------------------------

EVENT_ID = re.compile(r"wevt_[0-9A-Za-z]+")
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def id_pattern(readme_id):
    body = readme_id[len("wevt_"):]
    if len(body) == 26 and all(ch in ULID_ALPHABET for ch in body):
        return f"(wevt_[{ULID_ALPHABET}]{{26}})"
    return f"(wevt_[0-9A-Za-z]{{{len(body)}}})"


class EventIds:
    """A page's event ids bound to the database's: one to one, for the whole
    run of a page (its prerequisites included)."""

    def __init__(self):
        self.actual_of = {}  # page id -> (actual id, "page:line")
        self.readme_of = {}  # actual id -> (page id, "page:line")

    def mismatch(self, pairs, doc="README.md"):
        """None if every (claimed, actual, line of `doc`) matches with one
        consistent binding of ids (then kept); else why not (nothing kept)."""
        actual_of, readme_of = dict(self.actual_of), dict(self.readme_of)
        for claimed, actual, line in pairs:
            at_line = f"{doc}:{line}"
            if actual is None:  # NULL prints as an empty cell
                if claimed != "":
                    return f"{at_line}: {claimed!r} is NULL"
                continue
            ids = EVENT_ID.findall(claimed)
            literal = EVENT_ID.split(claimed)
            pattern = re.escape(literal[0]) + "".join(
                id_pattern(rid) + re.escape(rest) for rid, rest in zip(ids, literal[1:]))
            m = re.fullmatch(pattern, actual, re.S)
            if not m:
                return f"{at_line}: {claimed!r} is {actual!r}"
            for rid, aid in zip(ids, m.groups()):
                was, at = actual_of.setdefault(rid, (aid, at_line))
                if was != aid:
                    return (f"{at_line}: {rid} is {aid} here, but {was} at {at}: "
                            "the docs say they are the same id")
                was, at = readme_of.setdefault(aid, (rid, at_line))
                if was != rid:
                    return (f"{at_line}: {rid} is {aid}, which {at} calls {was}: "
                            "the docs say they are different ids")
        self.actual_of, self.readme_of = actual_of, readme_of
        return None


def expected_rows(table, colnames):
    """(header line or None, rows) of a claimed table; see the docstring."""
    header, lines = None, list(table)
    if lines and lines[0][1] == colnames:
        header = lines.pop(0)
    rows = []
    for line, cells in lines:
        if rows and cells and cells[0] == "" and len(cells) == len(rows[-1][1]):
            prev = rows[-1][1]
            rows[-1] = (rows[-1][0], [f"{p} {c}" if c else p for p, c in zip(prev, cells)])
        else:
            rows.append((line, cells))
    return header, rows


@dataclass
class Result:
    colnames: list = None
    coltypes: list = None
    rows: list = None  # text values, None for NULL
    error: psycopg.Error = None


def execute(conn, sql):
    try:
        cur = conn.execute(sql)
    except psycopg.Error as e:
        return Result(error=e)
    res = cur.pgresult
    if res is None or res.nfields == 0:
        return Result(colnames=[], coltypes=[], rows=[])
    cols = range(res.nfields)
    return Result(
        colnames=[res.fname(j).decode() for j in cols],
        coltypes=[res.ftype(j) for j in cols],
        rows=[[None if (v := res.get_value(i, j)) is None else v.decode() for j in cols]
              for i in range(res.ntuples)],
    )


BOOL_OID = 16
CREATE_EXTENSION = re.compile(r"(\s*CREATE\s+EXTENSION\s+)(?!IF\s+NOT\s+EXISTS\b)", re.I)


def check_statement(conn, st, ids):
    """Runs one statement; returns the list of its mismatches (strings)."""
    claims = claims_of(st)
    sql = st.sql if claims.error else CREATE_EXTENSION.sub(r"\1IF NOT EXISTS ", st.sql, count=1)
    r = execute(conn, sql)
    d = st.doc
    where = f"{d}:{st.line}: {st.sql.splitlines()[0][:100]}"
    bad = []

    if claims.error:
        line, message = claims.error
        if r.error is None:
            return [f"{where}\n  {d}:{line} claims ERROR:  {message}\n  but it succeeded"]
        diag = r.error.diag
        for claim, got, what in ((claims.error, diag.message_primary, "ERROR"),
                                 (claims.detail, diag.message_detail, "DETAIL"),
                                 (claims.hint, diag.message_hint, "HINT")):
            if claim and (why := ids.mismatch([(claim[1], got or "", claim[0])], d)):
                bad.append(f"{where}\n  {d}:{claim[0]} claims {what}:  {claim[1]}\n"
                           f"  the database says {what}:  {got}  (SQLSTATE {diag.sqlstate})"
                           + ("" if why.endswith(f" is {got or ''!r}") else f"\n  {why}"))
        return bad
    if r.error is not None:
        d = r.error.diag
        return [f"{where}\n  failed: {d.sqlstate} {d.message_primary}"
                + (f"\n  DETAIL:  {d.message_detail}" if d.message_detail else "")]
    if claims.detail or claims.hint:
        bad.append(f"{where}\n  {d}:{(claims.detail or claims.hint)[0]} claims an error's "
                   "DETAIL/HINT without an ERROR line")

    if claims.boolean:
        line, want = claims.boolean
        one_bool = len(r.rows) == 1 and r.coltypes == [BOOL_OID]
        if not one_bool or r.rows[0][0] != want:
            got = r.rows[0][0] if one_bool else f"{len(r.rows)} row(s) of columns {r.colnames}"
            bad.append(f"{where}\n  {d}:{line} claims {want}\n  the database returned {got}")

    if claims.table:
        header, rows = expected_rows(claims.table, r.colnames)
        if len(rows) != len(r.rows):
            why = f"{len(rows)} rows claimed, {len(r.rows)} returned"
        elif any(len(cells) != len(r.colnames) for _, cells in rows):
            why = f"{len(r.colnames)} columns returned"
        else:
            why = ids.mismatch([(c, None if a is None else a.strip(), ln)
                                for (ln, cells), actual in zip(rows, r.rows) for c, a in zip(cells, actual)], d)
        if why:
            shown = "\n".join("    " + " | ".join("" if v is None else v for v in row) for row in r.rows)
            claimed = "\n".join(f"    {d}:{ln}: " + " | ".join(cells) for ln, cells in rows)
            bad.append(f"{where}\n  {d}:{claims.table[0][0]} claims the rows (columns "
                       f"{header[1] if header else 'as returned'}):\n{claimed}\n"
                       f"  the database returned (columns {r.colnames}):\n{shown or '    (no rows)'}\n"
                       f"  {why}")

    if claims.count and claims.count[1] != len(r.rows):
        bad.append(f"{where}\n  {d}:{claims.count[0]} claims {claims.count[1]} rows, "
                   f"the database returned {len(r.rows)}")
    return bad


# On a line of its own (so a page that quotes the comment in prose, as
# docs/testing.md does, does not declare it).
PREREQUISITE = re.compile(r"^<!--\s*docs-sql:\s*after\s+(\S+?)\s*-->[ \t]*$", re.M)


def doc_text(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return f.read()


def prerequisites(doc, text, seen=()):
    """[(page, text)] of the pages `text` says it continues (`<!-- docs-sql:
    after <page> -->`), theirs first, each once."""
    out = []
    for m in PREREQUISITE.finditer(text):
        other = os.path.normpath(os.path.join(os.path.dirname(doc), m.group(1)))
        assert other not in seen and other != doc, f"{doc}: a circle of docs-sql prerequisites at {other}"
        assert os.path.isfile(os.path.join(ROOT, other)), f"{doc}: docs-sql prerequisite {other} does not exist"
        other_text = doc_text(other)
        out += [p for p in prerequisites(other, other_text, seen + (doc,)) if p not in out]
        if (other, other_text) not in out:
            out.append((other, other_text))
    return out


def run_doc(doc, text, dbname):
    """Runs the fixtures, the page's prerequisites, then every sql block of
    `text` (page `doc`), on one connection; returns (mismatches, statements
    run, blocks of `doc`)."""
    pages = prerequisites(doc, text) + [(doc, text)]
    blocks = [b for d, t in pages for b in sql_blocks(t, d)]
    mismatches, ran = [], 0
    ids = EventIds()
    roles = doc_roles(blocks)
    with connect(dbname) as conn:
        drop_roles(conn, roles)
        for sql in FIXTURES:
            conn.execute(sql)
        for block in blocks:
            for st in block.statements:
                if st.sql.lstrip().startswith("\\"):
                    mismatches.append(f"{st.doc}:{st.line}: a psql meta-command; this test runs SQL only")
                    continue
                mismatches += check_statement(conn, st, ids)
                ran += 1
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                mismatches.append(f"{block.doc}:{block.line}: the block leaves a transaction open")
                conn.execute("ROLLBACK")
        drop_roles(conn, roles)
    return mismatches, ran, [b for b in blocks if b.doc == doc]


def doc_roles(blocks):
    """Roles the blocks create: roles belong to the cluster, not to the
    test's database, so they are dropped before and after the run."""
    sql = "\n".join(st.sql for b in blocks for st in b.statements)
    return sorted(set(re.findall(r"CREATE ROLE (\w+)", sql)))


def drop_roles(conn, roles):
    """Drops roles a page made: their privileges in this database first
    (a role with grants cannot be dropped), then the roles."""
    for role in roles:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


# -- Tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc", docs())
def test_doc_sql(doc):
    text = doc_text(doc)
    with fresh_database("wfx_docs") as db:
        mismatches, ran, blocks = run_doc(doc, text, db)
    claims = sum(1 for b in blocks for st in b.statements
                 for c in [claims_of(st)] if c.error or c.boolean or c.table or c.count)
    print(f"FIGURE: {doc}: {len(blocks)} sql blocks, {ran} statements run (prerequisites included), "
          f"{claims} with a claimed result or error, {len(mismatches)} mismatches", flush=True)
    assert not mismatches, f"{doc} claims what the database does not do:\n\n" + "\n\n".join(mismatches)


def test_the_docs_have_sql():
    """The README's first example and the SQL API's examples are executed: a
    page renamed or a fence miswritten (```SQL is fine, ```sq is not) does not
    silently leave them out."""
    for doc in ("README.md", "docs/sql-api.md"):
        assert sql_blocks(doc_text(doc), doc), f"{doc} has no ```sql block"


def falsifications(text):
    """(what, page line, falsified text): one per kind of claim the page
    makes, the first of each kind (a kind the page does not use is left out)."""
    lines = text.split("\n")
    out = {}
    in_sql = False
    seen_ids = {}
    for k, line in enumerate(lines):
        fence = line.startswith("```")
        if fence:
            in_sql = not in_sql and line[3:].strip().lower() == "sql"
            continue
        if not in_sql or "--" not in line:
            continue
        pos = line.index("--")
        head, comment = line[:pos + 2], line[pos + 2:]
        t = comment.strip()

        def put(what, new_comment):
            if what not in out:
                copy = list(lines)
                copy[k] = head + new_comment
                out[what] = (what, k + 1, "\n".join(copy))

        if re.match(r"ERROR:\s", t):
            put("error message", comment.rstrip() + " (not what the database says)")
        elif re.match(r"DETAIL:\s", t):
            put("error detail", comment.rstrip() + "; and more")
        elif BOOLEAN.fullmatch(t):
            put("boolean", comment.replace(t[0], "f" if t[0] == "t" else "t", 1))
        elif "|" in t:
            for rid in EVENT_ID.findall(comment):
                if rid in seen_ids and seen_ids[rid] != k:
                    # Another id of the same shape where the page repeats one.
                    other = rid[:-1] + ("0" if rid[-1] != "0" else "1")
                    put("repeated event id", comment.replace(rid, other, 1))
                seen_ids.setdefault(rid, k)
            if m := re.search(r"\|\s*(\d+)\s*(\||$)", comment):
                n = m.group(1)
                put("table cell", comment[:m.start(1)] + str(int(n) + 1) + comment[m.end(1):])
    return list(out.values())


def test_false_claims_are_caught():
    """Each kind of claim, falsified in a copy of the first page that makes
    one, fails at its line."""
    cases = {}
    for doc in docs():
        for what, line, text in falsifications(doc_text(doc)):
            cases.setdefault(what, (doc, line, text))
    assert cases, "no page makes a claim this test could check"
    missed = []
    for what, (doc, line, text) in cases.items():
        with fresh_database("wfx_docs") as db:
            mismatches, _, _ = run_doc(doc, text, db)
        if not any(f"{doc}:{line} " in m or f"{doc}:{line}:" in m for m in mismatches):
            missed.append(f"{what} falsified at {doc}:{line}; mismatches reported: {mismatches}")
        else:
            print(f"FIGURE: falsified {what} at {doc}:{line}: caught", flush=True)
    assert not missed, "\n".join(missed)
