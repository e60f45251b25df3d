#!/usr/bin/env python3
"""Checks that bench/plpgsql_replay.sql's plpgsql_replay() returns exactly
what workflow_ext.replay() returns, on random histories: valid ones written
through append_event (including a few long ones with hundreds of
entities), and corrupted ones in unchecked tables (DevKit-shaped without seq,
with a seq column, a view with an int seq, and a plain copy of
workflow_ext.events without its trigger): random events, faults injected into
valid logs, seq gaps/duplicates/swaps/NULLs/bigint limits, unknown and NULL
types, missing, forbidden, empty and over-long correlation ids. Any row one function returns and
the other does not (EXCEPT ALL, both directions) is printed; so is any
difference in the errors of bad arguments or sources.

Run it against a SCRATCH database (it writes runs into workflow_ext.events,
which cannot be cleaned up, and recreates schema plr_check):

    createdb wfx_plreplay
    PGHOST=... PGPORT=... PGUSER=... python3 bench/check_plpgsql_replay.py --db wfx_plreplay

Exit status 1 when there is any difference.
"""
import argparse
import collections
import os
import random
import sys

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))

TYPES = [
    "run_created", "run_started", "run_completed", "run_failed", "run_cancelled",
    "step_created", "step_started", "step_retrying", "step_completed", "step_failed",
    "wait_created", "wait_completed",
    "hook_created", "hook_received", "hook_disposed", "hook_conflict",
    "attr_set",
]
RUN_LEVEL = {"run_created", "run_started", "run_completed", "run_failed", "run_cancelled"}
BAD_TYPES = ["step_exploded", "RUN_CREATED", "step_create", "", " run_started"]
# Plausible next events per entity kind, keyed by the last event seen.
NEXT = {
    "step": {None: ["step_created"], "step_created": ["step_started"],
             "step_started": ["step_completed", "step_failed", "step_retrying"],
             "step_retrying": ["step_started"], "step_completed": ["step_started", "step_created"],
             "step_failed": ["step_started"]},
    "wait": {None: ["wait_created"], "wait_created": ["wait_completed"], "wait_completed": ["wait_completed"]},
    "hook": {None: ["hook_created", "hook_conflict"], "hook_created": ["hook_received", "hook_disposed"],
             "hook_received": ["hook_received", "hook_disposed"], "hook_disposed": ["hook_received"],
             "hook_conflict": ["hook_received", "hook_created"]},
}
RUN_NEXT = {None: ["run_created"], "run_created": ["run_started"] * 9 + ["run_cancelled"],
            "run_started": ["attr_set", "attr_set", "run_completed", "run_failed", "run_cancelled"],
            "run_completed": ["attr_set"], "run_failed": ["run_started"], "run_cancelled": ["run_cancelled"]}


def random_history(rng):
    """Yields (type, correlation_id) pairs: mostly plausible next events,
    with corruptions. Send back whether the writer accepted the event: only
    accepted events move the generator's idea of the state."""
    n = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 80, 150, 300])
    noise = rng.choice([0.0, 0.0, 0.03, 0.1, 0.3, 1.0])
    corrs = {"step": ["s1", "s2", "s3", "a"], "wait": ["w1", "a"], "hook": ["h1", "h2", "a"]}
    last = {}
    run_last = None
    for pos in range(1, n + 1):
        if pos == 1 and rng.random() < 0.9:
            t = "run_created"
            c = None
        elif rng.random() < noise:
            t = rng.choice(TYPES + BAD_TYPES[:2] if rng.random() < 0.9 else BAD_TYPES)
            kind = t.split("_")[0]
            c = rng.choice(corrs.get(kind, ["s1", "w1", "h1"])) if t not in RUN_LEVEL and t != "attr_set" else None
        elif rng.random() < (0.3 if run_last in (None, "run_created") else 0.006):
            t = rng.choice(RUN_NEXT[run_last])
            c = None
        else:
            kind = rng.choice(["step", "step", "step", "wait", "hook"])
            if rng.random() < 0.25:  # a new entity
                corrs[kind].append(f"{kind[0]}{len(corrs[kind]) + 1}")
                c = corrs[kind][-1]
            else:
                c = rng.choice(corrs[kind][-4:] + corrs[kind][:1])
            t = rng.choice(NEXT[kind][last.get((kind, c))])
        # Correlation-id corruptions.
        r = rng.random()
        if r < 0.02:
            c = None
        elif r < 0.03:
            c = ""
        elif r < 0.04:
            c = rng.choice(["x" * 255, "x" * 256, "é" * 127 + "x", "é" * 128, "ü" * 300])
        elif r < 0.06 and c is None:
            c = rng.choice(["s1", "attr", "h1"])
        if t == "attr_set" and rng.random() < 0.5:
            c = rng.choice([None, "color", "s1"])
        if (yield (t, c)):
            if t in RUN_LEVEL:
                run_last = t
            elif t != "attr_set":
                last[(t.split("_")[0], c)] = t


def big_history(rng, n=2000):
    """Yields a long valid run: many interleaved steps, waits and hooks (so
    the entity arrays of plpgsql_replay have to grow)."""
    yield ("run_created", None)
    yield ("run_started", None)
    active = {}  # corr -> last event
    k = 0
    for _ in range(n):
        if not active or rng.random() < 0.3:
            k += 1
            kind = rng.choice(["step", "step", "wait", "hook"])
            c = f"{kind}_{k}"
            t = kind + "_created"
        else:
            c = rng.choice(list(active))
            kind, last = c.split("_")[0], active[c]
            t = {"step_created": "step_started", "step_retrying": "step_started",
                 "wait_created": "wait_completed", "hook_created": "hook_received"}.get(last)
            if t is None:
                t = rng.choice({"step": ["step_completed", "step_failed", "step_retrying"],
                                "hook": ["hook_received", "hook_disposed"]}[kind])
        active[c] = t
        if t in ("step_completed", "step_failed", "wait_completed", "hook_disposed"):
            del active[c]
        yield (t, c)
    yield (rng.choice(["run_completed", "run_failed", "run_cancelled"]), None)


def inject(rng, log):
    """A valid log with one to three faults: an extra random event, a lost
    event, two events swapped, or an event repeated."""
    log = list(log)
    pool = ["s1", "s2", "s3", "a", "w1", "h1", "h2", None]
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["insert", "insert", "delete", "swap", "repeat"])
        i = rng.randrange(len(log) + 1)
        if op == "insert":
            t = rng.choice(TYPES)
            c = None if t in RUN_LEVEL else rng.choice(pool[:-1])
            log.insert(i, (t, c))
        elif op == "delete" and len(log) > 1:
            del log[min(i, len(log) - 1)]
        elif op == "swap" and len(log) > 1:
            i = min(i, len(log) - 2)
            log[i], log[i + 1] = log[i + 1], log[i]
        elif op == "repeat":
            log.insert(i, log[rng.randrange(len(log))])
    return log


def corrupt_seqs(rng, n):
    """Seq values for n events: usually 1..n, sometimes with gaps,
    duplicates, swaps, zero/negative or NULL values."""
    seqs = list(range(1, n + 1))
    mode = rng.choice(["dense", "dense", "gap", "dup", "swap", "mixed", "null", "wild", "extreme"])
    if mode == "gap" and n > 1:
        i = rng.randrange(n)
        k = rng.randint(1, 5)
        seqs = [s + k if j >= i else s for j, s in enumerate(seqs)]
    elif mode == "dup" and n > 1:
        i = rng.randrange(1, n)
        seqs = [s - 1 if j >= i else s for j, s in enumerate(seqs)]
    elif mode == "swap" and n > 1:
        i, j = rng.randrange(n), rng.randrange(n)
        seqs[i], seqs[j] = seqs[j], seqs[i]
    elif mode == "mixed":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(n)
            seqs[i] = max(1, seqs[i] + rng.randint(-3, 3))
    elif mode == "null":
        for _ in range(rng.randint(1, 3)):
            seqs[rng.randrange(n)] = None
    elif mode == "wild":
        seqs = [rng.randint(-2, n + 3) for _ in range(n)]
    elif mode == "extreme":  # bigint limits: the Rust arithmetic wraps
        for _ in range(rng.randint(1, 2)):
            seqs[rng.randrange(n)] = rng.choice([2**63 - 1, -2**63, 2**62])
    return seqs


SETUP = """
DROP SCHEMA IF EXISTS plr_check CASCADE;
CREATE SCHEMA plr_check;
-- DevKit shape: no seq, replayed in id order.
CREATE TABLE plr_check.devkit (
  id varchar PRIMARY KEY, type varchar NOT NULL, correlation_id varchar,
  created_at timestamp NOT NULL DEFAULT now(), run_id varchar NOT NULL, payload jsonb);
-- With a seq column, nothing checked (NULL type and seq allowed).
CREATE TABLE plr_check.seqd (id text, run_id text, seq bigint, type text, correlation_id text,
  created_at timestamptz DEFAULT now());
-- A view with an int seq.
CREATE VIEW plr_check.seqv AS
  SELECT id, run_id, CASE WHEN seq BETWEEN -2147483648 AND 2147483647 THEN seq::int END AS seq,
         type, correlation_id
    FROM plr_check.seqd;
-- A plain copy of workflow_ext.events (enum type, NOT NULL seq), without the trigger.
CREATE TABLE plr_check.evcopy (LIKE workflow_ext.events INCLUDING DEFAULTS);
"""

DIFF = """
SELECT 'only workflow_ext.replay' AS side, r.run_id, x.*
  FROM (SELECT DISTINCT run_id::text AS run_id FROM {src} WHERE run_id LIKE 'plrchk-%') r,
  LATERAL (SELECT * FROM workflow_ext.replay(r.run_id, '{src}')
           EXCEPT ALL SELECT * FROM public.plpgsql_replay(r.run_id, '{src}')) x
UNION ALL
SELECT 'only plpgsql_replay', r.run_id, x.*
  FROM (SELECT DISTINCT run_id::text AS run_id FROM {src} WHERE run_id LIKE 'plrchk-%') r,
  LATERAL (SELECT * FROM public.plpgsql_replay(r.run_id, '{src}')
           EXCEPT ALL SELECT * FROM workflow_ext.replay(r.run_id, '{src}')) x
"""

STATS = """
SELECT x.anomaly, count(*)
  FROM (SELECT DISTINCT run_id::text AS run_id FROM {src} WHERE run_id LIKE 'plrchk-%') r,
  LATERAL workflow_ext.replay(r.run_id, '{src}') x GROUP BY 1 ORDER BY 1
"""

ERROR_CASES = [
    ("NULL::text", "'workflow_ext.events'"),
    ("''", "'workflow_ext.events'"),
    ("repeat('x', 256)", "'workflow_ext.events'"),
    ("repeat('é', 128)", "'workflow_ext.events'"),
    ("repeat('x', 255)", "'workflow_ext.events'"),
    ("'r'", "NULL::regclass"),
    ("'r'", "'plr_check.not_events'"),
    ("'r'", "'plr_check.no_columns'"),
    ("'r'", "'workflow_ext.events_pkey'"),
    ("'r'", "4000000000::oid::regclass"),
    ("'r'", "'plr_check.seqv'"),
]


def call(conn, fn, run_expr, src_expr):
    try:
        with conn.transaction():
            rows = conn.execute(f"SELECT * FROM {fn}({run_expr}, {src_expr})").fetchall()
        return ("ok", len(rows))
    except psycopg.Error as e:
        return (e.sqlstate, e.diag.message_primary)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=os.environ.get("PGDATABASE", "wfx_plreplay"))
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20240601)
    opt = ap.parse_args()
    rng = random.Random(opt.seed)

    conn = psycopg.connect(dbname=opt.db, autocommit=True)
    conn.execute("SET client_min_messages = warning")
    conn.execute("CREATE EXTENSION IF NOT EXISTS workflow_ext")
    with open(os.path.join(HERE, "plpgsql_replay.sql")) as f:
        conn.execute(f.read())
    conn.execute(SETUP)
    conn.execute("CREATE TABLE plr_check.not_events (id text, run_id text)")
    conn.execute("CREATE TABLE plr_check.no_columns ()")
    # Runs already in workflow_ext.events from an earlier check get new names.
    tag = conn.execute("SELECT count(DISTINCT run_id) FROM workflow_ext.events "
                       "WHERE run_id LIKE 'plrchk-%'").fetchone()[0]

    accepted = refused = 0
    with conn.transaction():
        for run_no in range(opt.runs):
            run = f"plrchk-{tag + run_no:05d}"
            # Through the writer: workflow_ext.events gets the accepted subset.
            gen = big_history(rng) if run_no % 100 == 99 else random_history(rng)
            hist, kept = [], []
            ev = next(gen)
            while True:
                t, c = ev
                hist.append(ev)
                try:
                    with conn.transaction():
                        conn.execute("SELECT workflow_ext.append_event(%s, %s, %s)", (run, c, t))
                    accepted += 1
                    kept.append(ev)
                    ok = True
                except psycopg.Error:
                    refused += 1
                    ok = False
                try:
                    ev = gen.send(ok)
                except StopIteration:
                    break
            # Verbatim into the unchecked tables: either the whole random
            # history, or the writer's valid log with a few injected faults.
            if rng.random() < 0.5 and kept:
                hist = inject(rng, kept)
            seqs = corrupt_seqs(rng, len(hist)) if rng.random() < 0.7 else list(range(1, len(hist) + 1))
            ids = [f"wevt_{tag + run_no:05d}_{pos:04d}" for pos in range(1, len(hist) + 1)]
            if rng.random() < 0.2:
                rng.shuffle(ids)  # the DevKit replays in id order
            for pos, ((t, c), s, i) in enumerate(zip(hist, seqs, ids), start=1):
                dk_type = t if rng.random() > 0.02 else ""
                conn.execute("INSERT INTO plr_check.devkit (id, type, correlation_id, run_id) "
                             "VALUES (%s, %s, %s, %s)", (i, dk_type, c, run))
                sd_type = None if rng.random() < 0.01 else t
                conn.execute("INSERT INTO plr_check.seqd (id, run_id, seq, type, correlation_id) "
                             "VALUES (%s, %s, %s, %s, %s)", (i, run, s, sd_type, c))
                if t in TYPES:
                    conn.execute("INSERT INTO plr_check.evcopy (id, run_id, seq, type, correlation_id) "
                                 "VALUES (%s, %s, %s, %s::workflow_ext.event_type, %s)",
                                 (i, run, s if s is not None else pos, t, c))

    diffs = 0
    total_rows = 0
    coverage = collections.Counter()
    for src in ["workflow_ext.events", "plr_check.devkit", "plr_check.seqd", "plr_check.seqv",
                "plr_check.evcopy"]:
        rows = conn.execute(DIFF.format(src=src)).fetchall()
        for r in rows[:20]:
            print(src, r)
        diffs += len(rows)
        stats = conn.execute(STATS.format(src=src)).fetchall()
        n = sum(c for _, c in stats)
        total_rows += n
        for code, c in stats:
            coverage[code] += c
        runs = conn.execute(f"SELECT count(DISTINCT run_id) FROM {src} WHERE run_id LIKE 'plrchk-%'").fetchone()[0]
        print(f"{src:22s} runs={runs:4d} anomaly rows={n:5d} differing rows={len(rows)}")

    for run_expr, src_expr in ERROR_CASES:
        a = call(conn, "workflow_ext.replay", run_expr, src_expr)
        b = call(conn, "public.plpgsql_replay", run_expr, src_expr)
        if a != b:
            diffs += 1
        print(f"{'DIFFERENT' if a != b else 'same'}: replay({run_expr}, {src_expr}): rust={a} plpgsql={b}")

    print(f"events appended: {accepted} accepted, {refused} refused by the writer")
    print("anomaly codes seen:", dict(sorted(coverage.items())))
    print(f"histories: {opt.runs} x 5 sources; anomaly rows compared: {total_rows}; "
          f"error cases: {len(ERROR_CASES)}; differences: {diffs}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
