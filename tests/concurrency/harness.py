"""Shared machinery of the concurrency suite: sessions, races and checkers.

Every race runs N threads, each with its own connection, released together
by a threading.Barrier. The checkers compare what the callers were told with
what the database stored afterwards; they know nothing about the code under
test, so the same checker runs against the extension and against a naive
check-then-insert (which it must catch, or it proves nothing).
"""

import itertools
import random
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass

import psycopg

from lib import connection
from lib.harness import call, figure  # noqa: F401  (re-exported for the tests)

# A barrier that is not passed in this long means a session is stuck: fail
# the test instead of hanging the suite (never part of a verdict).
BARRIER_TIMEOUT = 120

SERIALIZATION_FAILURE = "40001"


def connect(dbname, autocommit=True):
    """A session of this suite: lib.connection.connect, tuned for tens of
    thousands of one-statement commits. synchronous_commit = off skips the
    WAL flush wait (locking, visibility and commit order are unchanged; only
    crash durability, irrelevant here, is given up); statement_timeout is a
    hang guard far above any legitimate wait in this suite."""
    return connection.connect(dbname, autocommit=autocommit,
                              options="-c synchronous_commit=off -c statement_timeout=120s")


def run_sessions(dbname, n, work, autocommit=True):
    """Runs work(i, conn, barrier) in n threads, one connection each, and
    returns their results in session order. All connections are open before
    any thread starts, so the first barrier releases n ready sessions."""
    conns = [connect(dbname, autocommit) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT)
    results, errors = [None] * n, []

    def body(i):
        try:
            results[i] = work(i, conns[i], barrier)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            barrier.abort()  # release the others instead of deadlocking them

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in conns:
            c.close()
    if errors:
        # The first real error, not the BrokenBarrierError it caused elsewhere.
        errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
        raise errors[0]
    return results


def race_each_key(dbname, sessions, keys, make_call):
    """For every key in turn, all sessions call make_call(i, conn, key) at
    once (a barrier per key: the tightest race there is). Returns
    {key: [Outcome per session]}."""

    def work(i, conn, barrier):
        mine = []
        for key in keys:
            barrier.wait()
            mine.append(make_call(i, conn, key))
        return mine

    per_session = run_sessions(dbname, sessions, work)
    return {key: [s[k] for s in per_session] for k, key in enumerate(keys)}


# -- Idempotent creation race (tests 1, 2 and the RR race of test 3) ----------

@dataclass
class SuspensionFigures:
    sessions: int
    calls: int
    keys: int
    duplicates: int  # stored rows beyond one per key
    missing: int  # keys with no stored row
    winner_count_wrong: int  # keys without exactly one inserted=true
    calls_without_winner_id: int  # (event_id, seq) told != the stored row's
    seq_gaps: int  # positions 1..n per run not held by exactly one row
    errors: Counter  # SQLSTATE -> calls that failed for good
    retries: int  # 40001 retries (only with an isolation level)

    def line(self, what):
        extra = f", {self.retries} serialization-failure retries" if self.retries else ""
        return (
            f"{what}: {self.sessions} sessions, {self.calls} calls, {self.keys} keys, "
            f"{self.duplicates} duplicates, {self.calls_without_winner_id} calls without winner id, "
            f"{self.seq_gaps} seq gaps, {self.winner_count_wrong} keys without exactly one winner, "
            f"{self.missing} missing, {sum(self.errors.values())} errors{extra}"
        )

    @property
    def clean(self):
        return not (self.duplicates or self.missing or self.winner_count_wrong
                    or self.calls_without_winner_id or self.seq_gaps or self.errors)


def suspension_keys(runs, steps):
    """Rounds of keys: first every run's run_created (steps need their run),
    then one round per run with its step_created keys."""
    run_ids = [f"run-{r:03d}" for r in range(runs)]
    rounds = [[(run, None, "run_created") for run in run_ids]]
    rounds += [[(run, f"step-{s:03d}", "step_created") for s in range(steps)] for run in run_ids]
    return rounds


def suspension_race(dbname, append_sql, table, *, sessions, runs, steps, seed, isolation=None):
    """Every session calls every key, in its own shuffled order per round.

    append_sql takes (run_id, correlation_id, type) and returns
    (event_id, seq, inserted). table holds (run_id, correlation_id, type, id,
    seq). With isolation (an IsolationLevel) each call is its own explicit
    transaction at that level, retried on 40001 as a client must.

    Rounds are separated by a barrier so that all sessions start each run's
    keys together: every key's first callers really do collide (with one
    shuffled pass over all keys they would mostly arrive far apart)."""
    rounds = suspension_keys(runs, steps)

    def work(i, conn, barrier):
        rng = random.Random(f"{seed}/{i}")
        told, errors, retries = [], Counter(), 0
        if isolation is not None:
            conn.isolation_level = isolation
        for keys in rounds:
            order = list(keys)
            rng.shuffle(order)
            barrier.wait()
            for key in order:
                while True:
                    try:
                        if isolation is None:
                            row = conn.execute(append_sql, key).fetchone()
                        else:
                            with conn.transaction():
                                row = conn.execute(append_sql, key).fetchone()
                    except psycopg.Error as e:
                        if isolation is not None and e.sqlstate == SERIALIZATION_FAILURE:
                            retries += 1
                            continue
                        errors[e.sqlstate] += 1
                        break
                    told.append((key, row[0], row[1], row[2]))
                    break
        return told, errors, retries

    results = run_sessions(dbname, sessions, work)
    with connect(dbname) as conn:
        stored = conn.execute(
            f"SELECT run_id, correlation_id, type::text, id, seq FROM {table}"
        ).fetchall()
    return check_suspension(rounds, results, stored, sessions)


def check_suspension(rounds, results, stored, sessions):
    keys = [k for r in rounds for k in r]
    rows_by_key = defaultdict(list)
    seqs_by_run = defaultdict(list)
    for run, corr, typ, id_, seq in stored:
        rows_by_key[(run, corr, typ)].append((seq, id_))
        seqs_by_run[run].append(seq)

    duplicates = sum(max(len(rows_by_key[k]) - 1, 0) for k in keys)
    missing = sum(1 for k in keys if not rows_by_key[k])
    # The winner of a key is its stored row (the first one, if duplicated).
    winner = {k: min(rows_by_key[k]) for k in keys if rows_by_key[k]}

    inserted_true, without_winner, errors, retries, calls = Counter(), 0, Counter(), 0, 0
    for told, errs, r in results:
        errors += errs
        retries += r
        calls += len(told) + sum(errs.values())
        for key, event_id, seq, inserted in told:
            inserted_true[key] += bool(inserted)
            if winner.get(key) != (seq, event_id):
                without_winner += 1

    seq_gaps = 0
    for seqs in seqs_by_run.values():
        held = Counter(seqs)
        seq_gaps += sum(1 for n in range(1, len(seqs) + 1) if held[n] != 1)

    return SuspensionFigures(
        sessions=sessions,
        calls=calls,
        keys=len(keys),
        duplicates=duplicates,
        missing=missing,
        winner_count_wrong=sum(1 for k in keys if inserted_true[k] != 1),
        calls_without_winner_id=without_winner,
        seq_gaps=seq_gaps,
        errors=errors,
        retries=retries,
    )


# -- Seq density per run (tests 3 and 4) ---------------------------------------

def seq_gaps(conn, table="workflow_ext.events"):
    """Positions 1..n of each run not held by exactly one row."""
    return conn.execute(
        f"""SELECT count(*) FROM (
              SELECT run_id, generate_series(1, count(*)) AS n FROM {table} GROUP BY run_id) want
            WHERE (SELECT count(*) FROM {table} e
                    WHERE e.run_id = want.run_id AND e.seq = want.n) <> 1"""
    ).fetchone()[0]


# -- Fan-in barrier race (test 5) ------------------------------------------------

@dataclass
class Delivery:
    join: str
    member: str
    sent: int = 0  # global tick taken just before the call was sent
    returned: int = 0  # global tick taken just after it returned
    fired: bool = False
    sqlstate: str = None


@dataclass
class FaninFigures:
    sessions: int
    joins: int
    deliveries: int
    redeliveries: int
    fires: int
    double_fires: int  # fires beyond one per join
    racing_double_fires: int  # of which the calls overlapped the first fire's
    missing_fires: int  # joins that never fired
    early_fires: int  # fires provably not made by the last distinct member
    errors: Counter
    fired_by: dict  # join -> the firing Delivery (the first, if several)

    def line(self, what):
        return (
            f"{what}: {self.sessions} sessions, {self.joins} joins, {self.deliveries} deliveries "
            f"({self.redeliveries} redeliveries), {self.fires} fires, {self.double_fires} double fires "
            f"({self.racing_double_fires} racing), "
            f"{self.missing_fires} missing fires, {self.early_fires} provably early fires, "
            f"{sum(self.errors.values())} errors"
        )


def fanin_race(dbname, arrive, *, sessions, joins, members, seed, joins_per_round):
    """Delivers each member of each join 1-3 times, every copy by a random
    session; within a round of joins each session shuffles its deliveries.
    arrive(conn, join, member) -> bool is the barrier under test ("True: I
    dispatch the successor")."""
    rng = random.Random(seed)
    join_keys = [f"join-{j:04d}" for j in range(joins)]
    member_keys = [f"item-{m}" for m in range(1, members + 1)]
    # plan[round][session] = that session's deliveries in that round
    plan = []
    for start in range(0, joins, joins_per_round):
        per_session = [[] for _ in range(sessions)]
        for join in join_keys[start:start + joins_per_round]:
            for member in member_keys:
                for _ in range(rng.randint(1, 3)):
                    per_session[rng.randrange(sessions)].append(Delivery(join, member))
        for mine in per_session:
            rng.shuffle(mine)
        plan.append(per_session)

    # next() on itertools.count is atomic under the GIL: a global order of
    # "sent" and "returned" events across all threads.
    tick = itertools.count()

    def work(i, conn, barrier):
        for per_session in plan:
            barrier.wait()
            for d in per_session[i]:
                d.sent = next(tick)
                try:
                    d.fired = bool(arrive(conn, d.join, d.member))
                except psycopg.Error as e:
                    d.sqlstate = e.sqlstate
                d.returned = next(tick)

    run_sessions(dbname, sessions, work)
    deliveries = [d for per_session in plan for mine in per_session for d in mine]
    return check_fanin(deliveries, join_keys, member_keys, sessions)


def check_fanin(deliveries, join_keys, member_keys, sessions):
    by_join = defaultdict(list)
    for d in deliveries:
        by_join[d.join].append(d)

    double, racing, missing, early, fired_by = 0, 0, 0, 0, {}
    for join in join_keys:
        ds = by_join[join]
        fires = sorted((d for d in ds if d.fired), key=lambda d: d.sent)
        if not fires:
            missing += 1
            continue
        double += len(fires) - 1
        f = fires[0]
        # In flight together with the first fire (not a later redelivery).
        racing += sum(1 for d in fires[1:] if d.sent < f.returned)
        fired_by[join] = f
        # Happens-before proofs (sound, whatever the timing): a member whose
        # every delivery was sent after the fire returned arrived after it;
        # and if a delivery of the firing member had already returned before
        # the firing call was sent, the fire was a redelivery. Either way the
        # successor was dispatched before the last distinct member arrived.
        others = [d for d in ds if d is not f]
        arrived_after = any(
            all(d.sent > f.returned for d in others if d.member == m)
            for m in member_keys if m != f.member)
        was_redelivery = any(d.returned < f.sent for d in others if d.member == f.member)
        early += arrived_after or was_redelivery

    return FaninFigures(
        sessions=sessions,
        joins=len(join_keys),
        deliveries=len(deliveries),
        redeliveries=len(deliveries) - len(join_keys) * len(member_keys),
        fires=sum(1 for d in deliveries if d.fired),
        double_fires=double,
        racing_double_fires=racing,
        missing_fires=missing,
        early_fires=early,
        errors=Counter(d.sqlstate for d in deliveries if d.sqlstate),
        fired_by=fired_by,
    )
