"""One owner per hook token, enforced in the database (issue #14).

A `hook_created` whose payload has a string `token` takes that token; the
hook's `hook_disposed` or its run's terminal event releases it; at any
instant at most one active hook holds a token, database-wide, whatever the
write path. The loser of a race is told 23505, nothing is written for it,
and it records the DevKit outcome, `hook_conflict`.

(1) Race: 16 sessions, each in its own run, race `hook_created` for the same
    token, 500 tokens (a barrier per token), the three write paths mixed
    across sessions (append_suspension_event, append_event, plain INSERT).
(2) The same race and checker against a naive check-then-insert (a plain
    table, SELECT "is it taken?" then INSERT in one transaction): caught.
(3) Release race: the owner releases (hook_disposed, run_completed,
    run_failed, run_cancelled) while 15 sessions keep trying to take the
    token: exactly one of them gets it, never before the release was sent;
    the naive variant, raced the same way, hands it to several.
(4) Release and redelivery, one step at a time: dispose and each run
    terminal free the token; a redelivered hook_created returns the stored
    event (the owner's hook_created, a loser's hook_conflict), inserted false.
(5) rebuild_hook_tokens() rebuilds the live table exactly from the log.

The checker knows nothing about the code under test: it compares what each
caller was told (with a global tick before each call was sent and after it
returned) with the hooks stored in the log, read back through its own model
of the contract (a hook holds its token from hook_created until its
hook_disposed or its run's terminal event). workflow_ext.hook_tokens is
compared with that model, never used to judge it.
"""

import itertools
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

import harness

SESSIONS = 16
RACE_TOKENS = 500
RELEASE_TOKENS = 128

UNIQUE_VIOLATION = "23505"
TOKEN_CONSTRAINT = ("workflow_hook_token_unique", "hook_tokens", "workflow_ext")
TERMINAL = ("run_completed", "run_failed", "run_cancelled")
RELEASES = ("hook_disposed",) + TERMINAL

ASP = "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event(%s, %s, %s, %s)"
AE = "SELECT event_id, seq FROM workflow_ext.append_event(%s, %s, %s, %s)"
INSERT = ("INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload) "
          "VALUES (%s, %s, %s, %s) RETURNING id, seq")


# -- What a caller is told --------------------------------------------------------

@dataclass
class Told:
    event_id: str = None
    inserted: bool = None  # append_suspension_event only
    sqlstate: str = None
    constraint: tuple = None  # (constraint_name, table_name, schema_name)

    @property
    def ok(self):
        return self.sqlstate is None


def told(fn):
    try:
        return fn()
    except psycopg.Error as e:
        d = e.diag
        return Told(sqlstate=e.sqlstate, constraint=(d.constraint_name, d.table_name, d.schema_name))


@dataclass
class Attempt:
    session: int
    path: str
    run: str
    corr: str
    token: str
    sent: int = 0
    returned: int = 0
    told: Told = None
    conflict: Told = None  # the hook_conflict recorded after a 23505

    @property
    def took(self):
        # append_suspension_event's inserted=false on a key never written
        # before would be a stored event the caller did not write: not a take.
        return self.told.ok and self.told.inserted is not False


@dataclass
class Release:
    run: str
    corr: str
    how: str
    sent: int = 0
    returned: int = 0
    told: Told = None


# -- The two variants: the extension and a naive check-then-insert ----------------

def payload(token, **extra):
    return Jsonb({"token": token, **extra})


class Extension:
    name = "workflow_ext"
    paths = ("append_suspension_event", "append_event", "insert")
    # Where the contract names the constraint of a token clash.
    constraint = {"append_event": TOKEN_CONSTRAINT, "insert": TOKEN_CONSTRAINT}

    def setup(self, conn):
        pass

    def start_run(self, conn, run, started=True):
        conn.execute(ASP, (run, None, "run_created", None))
        if started:
            conn.execute(AE, (run, None, "run_started", None))

    def take(self, conn, path, run, corr, token):
        args = (run, corr, "hook_created", payload(token))
        if path == "append_suspension_event":
            def fn():
                event_id, _, inserted = conn.execute(ASP, args).fetchone()
                return Told(event_id=event_id, inserted=inserted)
        else:
            def fn():
                return Told(event_id=conn.execute(AE if path == "append_event" else INSERT, args).fetchone()[0])
        return told(fn)

    def record_conflict(self, conn, run, corr, token):
        return told(lambda: Told(event_id=conn.execute(
            "SELECT * FROM workflow_ext.append_event(%s, %s, 'hook_conflict', %s)",
            (run, corr, payload(token))).fetchone()[0]))

    def release(self, conn, how, run, corr):
        return told(lambda: Told(event_id=conn.execute(
            AE, (run, corr if how == "hook_disposed" else None, how, None)).fetchone()[0]))

    def stored(self, conn):
        return hooks_from_log(conn)

    def token_table(self, conn):
        table = defaultdict(list)
        for token, run, corr in conn.execute(
                "SELECT token, run_id, correlation_id FROM workflow_ext.hook_tokens"):
            table[token].append((run, corr))
        return table


NAIVE = """
CREATE TABLE naive_hooks (token text, run_id text, corr text, active bool);
CREATE INDEX ON naive_hooks (token);
CREATE TABLE naive_conflicts (token text, run_id text, corr text);
"""


class Naive:
    """Check-then-insert on a plain table without a unique index: "is the
    token held by an active hook?" then INSERT if not, in one transaction.
    A loser is told the same 23505 the client would map to a conflict."""

    name = "naive"
    paths = ("check-then-insert",)
    constraint = {}

    def setup(self, conn):
        conn.execute(NAIVE)

    def start_run(self, conn, run, started=True):
        pass

    def take(self, conn, path, run, corr, token):
        def fn():
            with conn.transaction():
                if conn.execute("SELECT 1 FROM naive_hooks WHERE token = %s AND active",
                                (token,)).fetchone():
                    return Told(sqlstate=UNIQUE_VIOLATION)
                conn.execute("INSERT INTO naive_hooks VALUES (%s, %s, %s, true)", (token, run, corr))
                return Told(event_id=f"{run}/{corr}")
        return told(fn)

    def record_conflict(self, conn, run, corr, token):
        return self._write(conn, "INSERT INTO naive_conflicts VALUES (%s, %s, %s)", (token, run, corr))

    def release(self, conn, how, run, corr):
        if how == "hook_disposed":
            return self._write(conn, "UPDATE naive_hooks SET active = false WHERE run_id = %s AND corr = %s",
                               (run, corr))
        return self._write(conn, "UPDATE naive_hooks SET active = false WHERE run_id = %s", (run,))

    @staticmethod
    def _write(conn, sql, args):
        def fn():
            conn.execute(sql, args)
            return Told(event_id="naive")
        return told(fn)

    def stored(self, conn):
        return {(run, corr): (token, "active" if active else "released", None)
                for token, run, corr, active in conn.execute("SELECT * FROM naive_hooks")} | {
                (run, corr): (token, "conflict", None)
                for token, run, corr in conn.execute("SELECT * FROM naive_conflicts")}

    def token_table(self, conn):
        return None  # the naive has no separate table of owners


# -- The checker's model of the contract, read from the log -------------------------

def hooks_from_log(conn):
    """{(run, corr): (token, 'active' | 'released' | 'conflict', creation event id)}
    for every hook in the log: a hook_created holds payload->>'token' until
    its hook_disposed or its run's terminal event; hook_conflict holds
    nothing. Hooks whose payload has no token are left out."""
    terminal, disposed, hooks = set(), set(), {}
    for run, corr, typ, token, event_id in conn.execute(
            "SELECT run_id, correlation_id, type::text, payload->>'token', id "
            "FROM workflow_ext.events ORDER BY run_id, seq"):
        if typ in TERMINAL:
            terminal.add(run)
        elif typ == "hook_disposed":
            disposed.add((run, corr))
        elif typ in ("hook_created", "hook_conflict") and token is not None:
            hooks[(run, corr)] = (token, "conflict" if typ == "hook_conflict" else "active", event_id)
    return {k: (token, "released" if state == "active" and (k in disposed or k[0] in terminal) else state, eid)
            for k, (token, state, eid) in hooks.items()}


def active_by_token(stored):
    active = defaultdict(list)
    for key, (token, state, _) in stored.items():
        if state == "active":
            active[token].append(key)
    return active


@dataclass
class TokenFigures:
    what: str
    sessions: int
    tokens: int
    takes: Counter  # path -> attempts
    successes: int
    not_one_success: int  # tokens without exactly one caller told it took the token
    multi_owner: int  # tokens held by more than one stored active hook
    no_owner: int  # tokens held by no stored active hook
    told_not_held: int  # callers told they took the token whose hook does not hold it
    written_for_loser: int  # stored hooks with the token whose caller was never told success
    prior_not_released: int  # release race: the first owner still holds the token
    releases_failed: Counter
    overlapping_holds: int  # tokens with two provably simultaneous holders
    refusals: Counter  # SQLSTATE -> failed takes
    wrong_constraint: int  # 23505s not naming the token constraint where the contract says it does
    asp_constraints: Counter  # what append_suspension_event's 23505 named (reported only)
    conflicts_recorded: int
    conflicts_failed: Counter
    loser_rows_wrong: int  # losers whose hook is not exactly their hook_conflict
    token_table_wrong: int  # tokens where the live table differs from the log (None: no table)

    def line(self):
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(self.refusals.items())) or "none"
        table = "no token table" if self.token_table_wrong is None else \
            f"{self.token_table_wrong} tokens where hook_tokens differs from the log"
        return (
            f"{self.what}: {self.sessions} sessions, {self.tokens} tokens, {sum(self.takes.values())} takes "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.takes.items()))}), {self.successes} told success, "
            f"{self.not_one_success} tokens without exactly one success, {self.multi_owner} tokens with >1 owner "
            f"stored, {self.no_owner} without owner, {self.told_not_held} told success but not holding, "
            f"{self.written_for_loser} written for a loser, {self.overlapping_holds} provably overlapping holds, "
            f"{self.prior_not_released} first owners not released ({sum(self.releases_failed.values())} releases "
            f"failed), refusals: {refusals}, {self.wrong_constraint} with a wrong constraint "
            f"(append_suspension_event named {dict(self.asp_constraints)}), {self.conflicts_recorded} hook_conflict "
            f"recorded ({sum(self.conflicts_failed.values())} failed), {self.loser_rows_wrong} losers with "
            f"other rows, {table}"
        )

    @property
    def clean(self):
        return not (self.not_one_success or self.multi_owner or self.no_owner or self.told_not_held
                    or self.written_for_loser or self.prior_not_released or self.releases_failed
                    or self.overlapping_holds or set(self.refusals) - {UNIQUE_VIOLATION}
                    or self.wrong_constraint or self.conflicts_failed or self.loser_rows_wrong
                    or self.token_table_wrong)


def check_tokens(what, variant, sessions, tokens, attempts, prior, stored, table):
    """attempts: every take; prior: {token: (owner key, Release)} for tokens
    that had an owner before the race (release race), else {}."""
    by_token = defaultdict(list)
    for a in attempts:
        by_token[a.token].append(a)
    active = active_by_token(stored)
    with_token = defaultdict(set)  # token -> stored hooks (active or released) that took it
    for key, (token, state, _) in stored.items():
        if state != "conflict":
            with_token[token].add(key)

    f = TokenFigures(what=what, sessions=sessions, tokens=len(tokens), takes=Counter(a.path for a in attempts),
                     successes=sum(a.took for a in attempts), not_one_success=0, multi_owner=0, no_owner=0,
                     told_not_held=0, written_for_loser=0, prior_not_released=0,
                     releases_failed=Counter(), overlapping_holds=0, refusals=Counter(), wrong_constraint=0,
                     asp_constraints=Counter(), conflicts_recorded=0, conflicts_failed=Counter(),
                     loser_rows_wrong=0, token_table_wrong=None)
    for t in tokens:
        ats = by_token[t]
        won = [a for a in ats if a.took]
        f.not_one_success += len(won) != 1
        f.multi_owner += len(active[t]) > 1
        f.no_owner += not active[t]
        f.told_not_held += sum(1 for a in won if (a.run, a.corr) not in active[t])
        told_keys = {(a.run, a.corr) for a in won}
        # Definite holds: from the moment a take returned success until the
        # holder's release was sent. Two that overlap held the token together.
        holds = [(a.returned, float("inf")) for a in won]
        if t in prior:
            owner, rel = prior[t]
            told_keys.add(owner)
            if not rel.told.ok:
                f.releases_failed[rel.told.sqlstate] += 1
            if owner in active[t]:
                f.prior_not_released += 1
            holds.append((float("-inf"), rel.sent))
        f.written_for_loser += len(with_token[t] - told_keys)
        f.overlapping_holds += any(max(a[0], b[0]) < min(a[1], b[1])
                                   for a, b in itertools.combinations(holds, 2))
        for a in ats:
            if a.took:
                continue
            f.refusals[a.told.sqlstate or "answered inserted=false"] += 1
            if a.told.sqlstate == UNIQUE_VIOLATION:
                if a.path in variant.constraint and a.told.constraint != variant.constraint[a.path]:
                    f.wrong_constraint += 1
                if a.path == "append_suspension_event":
                    f.asp_constraints[a.told.constraint[0]] += 1
            if a.conflict is not None:
                if a.conflict.ok:
                    f.conflicts_recorded += 1
                else:
                    f.conflicts_failed[a.conflict.sqlstate] += 1
                hook = stored.get((a.run, a.corr))
                f.loser_rows_wrong += hook is None or hook[:2] != (t, "conflict")
    if table is not None:
        f.token_table_wrong = sum(1 for t in set(table) | set(active) if sorted(table[t]) != sorted(active[t]))
    return f


# -- The races ------------------------------------------------------------------------

def session_run(variant, i):
    return f"run-{variant.name}-{i:02d}"


def token_race(db, variant, *, sessions=SESSIONS, tokens=RACE_TOKENS):
    """Every session takes every token in its own run (correlation id
    hook_<token>), all released together per token; each loser told 23505
    records hook_conflict."""
    tokens = [f"tok-{k:04d}" for k in range(tokens)]
    tick = itertools.count()
    with harness.connect(db) as conn:
        variant.setup(conn)

    def work(i, conn, barrier):
        run, path = session_run(variant, i), variant.paths[i % len(variant.paths)]
        variant.start_run(conn, run)
        mine = []
        for t in tokens:
            a = Attempt(i, path, run, f"hook_{t}", t)
            barrier.wait()
            a.sent = next(tick)
            a.told = variant.take(conn, path, run, a.corr, t)
            a.returned = next(tick)
            if a.told.sqlstate == UNIQUE_VIOLATION:
                a.conflict = variant.record_conflict(conn, run, a.corr, t)
            mine.append(a)
        return mine

    attempts = [a for mine in harness.run_sessions(db, sessions, work) for a in mine]
    with harness.connect(db) as conn:
        stored, table = variant.stored(conn), variant.token_table(conn)
    return check_tokens(f"{variant.name} token race", variant, sessions, tokens, attempts, {}, stored, table)


MAX_TRIES = 100_000  # a hang guard: a taker never gets this far in a sound variant


def release_race(db, variant, *, sessions=SESSIONS, tokens=RELEASE_TOKENS):
    """Each token is held by a hook in a run of its own (own-<token>). Per
    token, all sessions are released together: one releases it (by
    hook_disposed, run_completed, run_failed or run_cancelled of a pending
    run, in turn), the others try to take it in their own runs and retry on
    23505 until they took it or a refusal came for a call sent after the
    release had returned (the token was free then: somebody else took it).
    So exactly one taker must get each token, never while the owner held it."""
    tokens = [f"rel-{k:04d}" for k in range(tokens)]
    how = {t: RELEASES[k % len(RELEASES)] for k, t in enumerate(tokens)}
    owner = {t: (f"own-{variant.name}-{t}", f"hook_{t}") for t in tokens}
    with harness.connect(db) as conn:
        variant.setup(conn)
        for t in tokens:
            run, corr = owner[t]
            variant.start_run(conn, run, started=how[t] != "run_cancelled")
            first = variant.take(conn, variant.paths[0], run, corr, t)
            assert first.ok and first.inserted is not False, f"setup take of {t}: {first}"
    tick = itertools.count()
    releases = {t: Release(*owner[t], how[t]) for t in tokens}
    released_at = {}

    def work(i, conn, barrier):
        run, path = session_run(variant, i), variant.paths[i % len(variant.paths)]
        variant.start_run(conn, run)
        mine = []
        for k, t in enumerate(tokens):
            barrier.wait()
            if k % sessions == i:
                rel = releases[t]
                rel.sent = next(tick)
                rel.told = variant.release(conn, rel.how, rel.run, rel.corr)
                rel.returned = released_at[t] = next(tick)
                continue
            for _ in range(MAX_TRIES):
                a = Attempt(i, path, run, f"hook_{t}", t)
                a.sent = next(tick)
                a.told = variant.take(conn, path, run, a.corr, t)
                a.returned = next(tick)
                mine.append(a)
                if a.told.sqlstate != UNIQUE_VIOLATION or released_at.get(t, a.sent) < a.sent:
                    break
            if a.told.sqlstate == UNIQUE_VIOLATION:
                a.conflict = variant.record_conflict(conn, run, a.corr, t)
        return mine

    attempts = [a for mine in harness.run_sessions(db, sessions, work) for a in mine]
    with harness.connect(db) as conn:
        stored, table = variant.stored(conn), variant.token_table(conn)
    prior = {t: (owner[t], releases[t]) for t in tokens}
    return check_tokens(f"{variant.name} release race", variant, sessions, tokens, attempts, prior, stored, table)


def assert_clean(f, expect_refusals):
    assert f.successes == f.tokens and f.not_one_success == 0
    assert f.multi_owner == 0 and f.no_owner == 0
    assert f.told_not_held == 0 and f.written_for_loser == 0
    assert f.overlapping_holds == 0
    assert f.prior_not_released == 0 and f.releases_failed == Counter()
    assert set(f.refusals) == {UNIQUE_VIOLATION} and f.refusals[UNIQUE_VIOLATION] >= expect_refusals
    assert f.wrong_constraint == 0
    assert f.conflicts_failed == Counter() and f.conflicts_recorded >= expect_refusals
    assert f.loser_rows_wrong == 0
    assert f.token_table_wrong == 0
    assert f.clean


def test_token_race_one_owner_per_token_on_every_write_path(db):
    f = token_race(db, Extension())
    harness.figure(f.line())
    assert f.tokens >= 500 and f.sessions >= 16 and len(f.takes) == 3
    assert_clean(f, expect_refusals=(f.sessions - 1) * f.tokens)
    assert f.refusals[UNIQUE_VIOLATION] == (f.sessions - 1) * f.tokens
    with harness.connect(db) as conn:
        # Exactly one hook_created per token, whoever counts it.
        per_token = Counter(dict(conn.execute(
            "SELECT payload->>'token', count(*) FROM workflow_ext.events "
            "WHERE type = 'hook_created' GROUP BY 1").fetchall()))
        gaps = harness.seq_gaps(conn)
    assert len(per_token) == f.tokens and set(per_token.values()) == {1}
    assert gaps == 0


def test_token_race_catches_naive_check_then_insert(db):
    f = token_race(db, Naive())
    harness.figure(f.line() + " (must be caught)")
    assert f.multi_owner > 0  # more than one owner stored for some tokens
    assert f.not_one_success > 0 and f.overlapping_holds > 0
    assert not f.clean


def test_release_race_hands_each_token_to_exactly_one_taker(db):
    f = release_race(db, Extension())
    harness.figure(f.line())
    assert f.tokens >= 128 and len(f.takes) == 3
    assert_clean(f, expect_refusals=(f.sessions - 2) * f.tokens)
    with harness.connect(db) as conn:
        assert harness.seq_gaps(conn) == 0


def test_release_race_catches_naive_check_then_insert(db):
    f = release_race(db, Naive())
    harness.figure(f.line() + " (must be caught)")
    assert f.multi_owner > 0 and f.not_one_success > 0
    assert not f.clean


# -- Release and redelivery, one step at a time -----------------------------------

def asp(conn, run, corr, typ, body=None):
    return conn.execute(ASP, (run, corr, typ, body)).fetchone()


def ae(conn, run, corr, typ, body=None):
    return conn.execute(AE, (run, corr, typ, body)).fetchone()


def insert(conn, run, corr, typ, body=None):
    return conn.execute(INSERT, (run, corr, typ, body)).fetchone()


def refused(fn, *args):
    try:
        fn(*args)
    except psycopg.Error as e:
        return e
    raise AssertionError(f"{fn.__name__}{args[1:]} was accepted")


def assert_token_refused(fn, conn, run, corr, token):
    """The take is refused with 23505 (naming the token constraint where the
    contract says so) and nothing is written for it."""
    before = conn.execute("SELECT count(*) FROM workflow_ext.events WHERE run_id = %s", (run,)).fetchone()[0]
    e = refused(fn, conn, run, corr, "hook_created", payload(token))
    assert e.sqlstate == UNIQUE_VIOLATION, f"{fn.__name__} {run}/{corr}: {e.sqlstate} {e}"
    if fn is not asp:
        assert (e.diag.constraint_name, e.diag.table_name, e.diag.schema_name) == TOKEN_CONSTRAINT
    after = conn.execute("SELECT count(*) FROM workflow_ext.events WHERE run_id = %s", (run,)).fetchone()[0]
    assert after == before, f"{after - before} events written for the refused take"


def owners(conn):
    return {t: (run, corr) for t, (run, corr, _) in live_tokens(conn).items()}


def live_tokens(conn):
    return {t: (run, corr, eid) for t, run, corr, eid in conn.execute(
        "SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens")}


def tokens_from_log(conn):
    return {token: (run, corr, eid) for (run, corr), (token, state, eid) in hooks_from_log(conn).items()
            if state == "active"}


def event_type(conn, event_id):
    return conn.execute("SELECT type::text FROM workflow_ext.events WHERE id = %s", (event_id,)).fetchone()[0]


def test_release_and_redelivery(db):
    with harness.connect(db) as conn:
        for run in "ABCDEFGHIJK":
            Extension().start_run(conn, run, started=run != "H")

        # Taken: every write path of another run is refused, and so is a
        # second hook of the owner's own run (one holder database-wide).
        a = asp(conn, "A", "hook_x", "hook_created", payload("x"))
        assert a[2] is True
        for fn in (asp, ae, insert):
            assert_token_refused(fn, conn, "B", "hook_x", "x")
        assert_token_refused(asp, conn, "A", "hook_x2", "x")
        assert owners(conn) == {"x": ("A", "hook_x")}

        # The loser records the DevKit outcome; hook_conflict takes no token,
        # not even one that is held.
        conflict = ae(conn, "B", "hook_x", "hook_conflict", payload("x"))
        assert owners(conn) == {"x": ("A", "hook_x")}

        # Redeliveries answer the stored event and write nothing.
        assert asp(conn, "A", "hook_x", "hook_created", payload("x")) == (a[0], a[1], False)
        assert event_type(conn, a[0]) == "hook_created"
        b = asp(conn, "B", "hook_x", "hook_created", payload("x"))
        assert (b[0], b[2]) == (conflict[0], False)
        assert event_type(conn, b[0]) == "hook_conflict"

        # hook_received does not release; hook_disposed does.
        ae(conn, "A", "hook_x", "hook_received", Jsonb({"n": 1}))
        assert_token_refused(ae, conn, "C", "hook_x", "x")
        ae(conn, "A", "hook_x", "hook_disposed")
        assert owners(conn) == {}

        # After the release, redeliveries still answer the stored events and
        # take nothing: the loser's is its hook_conflict, the owner's its
        # disposed hook_created.
        b = asp(conn, "B", "hook_x", "hook_created", payload("x"))
        assert (b[0], b[2]) == (conflict[0], False)
        assert asp(conn, "A", "hook_x", "hook_created", payload("x")) == (a[0], a[1], False)
        assert owners(conn) == {}

        # Another run takes the free token (the corr refused before: nothing
        # was written for it); the first owner's redelivery then is still
        # answered with its own event, not a 23505.
        c = ae(conn, "C", "hook_x", "hook_created", payload("x"))
        assert owners(conn) == {"x": ("C", "hook_x")}
        assert asp(conn, "A", "hook_x", "hook_created", payload("x")) == (a[0], a[1], False)
        assert owners(conn) == {"x": ("C", "hook_x")}
        assert live_tokens(conn)["x"][2] == c[0]

        # The run's terminal releases every active hook's token of that run:
        # run_completed (D), run_failed (E), run_cancelled of a pending run (H).
        for run, tokens, terminal, taker in (("D", ["d1", "d2", "d3"], "run_completed", "F"),
                                             ("E", ["e1"], "run_failed", "G"),
                                             ("H", ["h1", "h2"], "run_cancelled", "I")):
            for fn, t in zip((asp, ae, insert), tokens):
                fn(conn, run, f"hook_{t}", "hook_created", payload(t))
            for t in tokens:
                assert_token_refused(asp, conn, taker, f"hook_{t}", t)
            ae(conn, run, None, terminal)
            assert not set(tokens) & set(owners(conn)), f"{terminal} left tokens held"
            for fn, t in zip((insert, asp, ae), tokens):
                fn(conn, taker, f"hook_{t}", "hook_created", payload(t))
            assert all(owners(conn)[t] == (taker, f"hook_{t}") for t in tokens)

        # A hook_conflict carrying a free token takes nothing either.
        ae(conn, "J", "hook_free", "hook_conflict", payload("free"))
        assert "free" not in owners(conn)
        asp(conn, "K", "hook_free", "hook_created", payload("free"))
        assert owners(conn)["free"] == ("K", "hook_free")

        # Hooks without a (string) token take nothing and never clash.
        for run in ("J", "K"):
            ae(conn, run, "hook_plain", "hook_created", Jsonb({"url": "https://example.test/h"}))
            asp(conn, run, "hook_null", "hook_created", Jsonb({"token": None}))
            insert(conn, run, "hook_none", "hook_created", None)

        live, derived = live_tokens(conn), tokens_from_log(conn)
        harness.figure(f"hook token release and redelivery: {len(live)} tokens held at the end, "
                       f"live table {'equals' if live == derived else 'DIFFERS from'} the log, "
                       f"{harness.seq_gaps(conn)} seq gaps")
        assert live == derived
        assert set(live) == {"x", "d1", "d2", "d3", "e1", "h1", "h2", "free"}
        assert harness.seq_gaps(conn) == 0


# -- rebuild_hook_tokens -----------------------------------------------------------

def snapshot(conn):
    return conn.execute("SELECT token, run_id, correlation_id, event_id, taken_at "
                        "FROM workflow_ext.hook_tokens ORDER BY token").fetchall()


def test_rebuild_hook_tokens_restores_the_live_table(db):
    runs, per_run = 40, 5
    with harness.connect(db) as conn:
        for r in range(runs):
            Extension().start_run(conn, f"run-{r:02d}")
        # Takes on every path; then disposes, run terminals, conflicts and
        # re-takes by other runs.
        paths = (asp, ae, insert)
        for r in range(runs):
            for k in range(per_run):
                t = f"t-{r:02d}-{k}"
                paths[(r + k) % 3](conn, f"run-{r:02d}", f"hook_{t}", "hook_created", payload(t))
        for r in range(0, runs, 4):
            ae(conn, f"run-{r:02d}", f"hook_t-{r:02d}-0", "hook_disposed")
        for r in range(1, runs, 8):
            ae(conn, f"run-{r:02d}", None, TERMINAL[r % 3])
        for r in range(0, runs, 4):  # the disposed tokens are taken again by the next run
            t = f"t-{r:02d}-0"
            asp(conn, f"run-{r + 2:02d}", f"hook_{t}", "hook_created", payload(t))
        for r in range(3, runs, 8):  # losers record their conflict
            t = f"t-{r - 1:02d}-1"
            assert_token_refused(ae, conn, f"run-{r:02d}", f"hook_{t}", t)
            ae(conn, f"run-{r:02d}", f"hook_{t}", "hook_conflict", payload(t))

        before = snapshot(conn)
        derived = tokens_from_log(conn)
        assert {t: (run, corr, eid) for t, run, corr, eid, _ in before} == derived
        assert 0 < len(before) < runs * per_run

        n = conn.execute("SELECT workflow_ext.rebuild_hook_tokens()").fetchone()[0]
        same = snapshot(conn)
        conn.execute("DELETE FROM workflow_ext.hook_tokens")  # as superuser
        assert snapshot(conn) == []
        n_empty = conn.execute("SELECT workflow_ext.rebuild_hook_tokens()").fetchone()[0]
        from_empty = snapshot(conn)
        conn.execute("DELETE FROM workflow_ext.hook_tokens WHERE token LIKE %s", ("t-1%",))
        n_half = conn.execute("SELECT workflow_ext.rebuild_hook_tokens()").fetchone()[0]
        from_half = snapshot(conn)

        def key(rows):  # compared in Python's order, whatever the database's collation
            return sorted(r[:4] for r in rows)

        taken_at_kept = before == same == from_empty == from_half
        harness.figure(f"rebuild_hook_tokens: {len(before)} tokens live, rebuilt {n} / {n_empty} from empty / "
                       f"{n_half} from half, (token, run, hook, event) "
                       f"{'equal' if key(before) == key(same) == key(from_empty) == key(from_half) else 'DIFFER'}, "
                       f"taken_at {'kept' if taken_at_kept else 'changed'}")
        assert n == n_empty == n_half == len(before)
        assert key(same) == key(before)
        assert key(from_empty) == key(before)
        assert key(from_half) == key(before)

        # Enforcement holds after the rebuild.
        held = before[0]
        assert_token_refused(insert, conn, "run-39", "hook_after_rebuild", held[0])

        # PUBLIC may not touch the table, but takes a token through the
        # ordinary write paths like anyone.
        role = f"wfx_tok_{uuid.uuid4().hex[:8]}"
        conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        conn.execute("SELECT workflow_ext.grant_access(%s, 'writer')", (role,))
        try:
            conn.execute(f'SET ROLE "{role}"')
            e = refused(lambda c, *a: c.execute("DELETE FROM workflow_ext.hook_tokens"), conn)
            assert e.sqlstate == "42501", e
            ae(conn, "run-39", "hook_by_app_role", "hook_created", payload("app-role"))
            assert_token_refused(insert, conn, "run-38", "hook_by_app_role", "app-role")
            conn.execute("RESET ROLE")
            assert owners(conn)["app-role"] == ("run-39", "hook_by_app_role")
            assert key(snapshot(conn)) == sorted(key(before) + [("app-role", "run-39", "hook_by_app_role",
                                                                 live_tokens(conn)["app-role"][2])])
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
