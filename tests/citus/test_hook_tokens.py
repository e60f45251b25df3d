"""One owner per hook token across the workers of a distributed own log: the
one rule of workflow_ext that crosses runs, so the one that crosses nodes.

distribute() distributes workflow_ext.hook_tokens by token; the trigger on a
log's shard writes a token's row into the token's shard, wherever that is,
committed with the event. The checks read the log (the hook_created events
stored), never hook_tokens alone, and the same race is run against the naive
placement (hook_tokens left node-local on each worker, as before): there it
finds two owners."""
import threading

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import DB

RACERS = 12
TOKENS = 30
TOKEN_CONSTRAINT = "workflow_hook_token_unique"


def worker_of(f, run_id, db=DB):
    (port,) = f.coordinator.sql(
        "SELECT p.nodeport FROM pg_dist_shard_placement p "
        "WHERE p.shardid = get_shard_id_for_distribution_column('workflow_ext.events', %s::text)",
        (run_id,), db=db)[0]
    return port


def runs_on_both_workers(f, prefix, n, db=DB):
    """`n` run ids whose shards alternate between the two workers."""
    by_worker = {w.port: [] for w in f.workers}
    i = 0
    while min(len(v) for v in by_worker.values()) < n // 2 + 1:
        r = f"{prefix}{i:03d}"
        by_worker[worker_of(f, r, db)].append(r)
        i += 1
    a, b = by_worker.values()
    return [x for pair in zip(a, b) for x in pair][:n]


def race(f, db, prefix):
    """RACERS sessions, spread over the coordinator and both workers, each
    with its own run (the runs on both workers), race hook_created for the
    same token, TOKENS times. Returns {token: [winning runs]} as the callers
    were told, the losers' errors, and the other failures."""
    runs = runs_on_both_workers(f, prefix, RACERS, db)
    with f.coordinator.connect(db) as c:
        for r in runs:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    winners, losers, failures = {}, [], []
    lock = threading.Lock()
    barrier = threading.Barrier(RACERS)

    def racer(k):
        node, run = f.nodes[k % 3], runs[k]
        try:
            with psycopg.connect(node.conninfo(db), autocommit=True) as c:
                for t in range(TOKENS):
                    token = f"{prefix}tok{t}"
                    barrier.wait(120)
                    try:
                        if k % 2:
                            c.execute("SELECT workflow_ext.append_event(%s, %s, 'hook_created', %s)",
                                      (run, f"h{t}", Jsonb({"token": token})))
                        else:
                            c.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload) "
                                      "VALUES (%s, %s, 'hook_created', %s)", (run, f"h{t}", Jsonb({"token": token})))
                        with lock:
                            winners.setdefault(token, []).append(run)
                    except psycopg.errors.UniqueViolation as e:
                        with lock:
                            losers.append((e.diag.constraint_name, e.diag.message_primary))
        except Exception as e:  # noqa: BLE001 (reported by the caller)
            failures.append(repr(e))
            barrier.abort()

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    stored = {}
    for run_id, token in f.coordinator.sql(
            "SELECT run_id, payload ->> 'token' FROM workflow_ext.events "
            "WHERE type = 'hook_created' AND run_id LIKE %s", (prefix + "%",), db=db):
        stored.setdefault(token, []).append(run_id)
    return winners, stored, losers, failures


@pytest.fixture(scope="module")
def distributed(citus):
    citus.sql("SELECT workflow_ext.distribute()")
    return citus


def test_tokens_are_distributed_by_token(distributed):
    rows = distributed.sql(
        "SELECT partmethod, column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition "
        "WHERE logicalrelid = 'workflow_ext.hook_tokens'::regclass")
    assert rows == [("h", "token")]
    # The constraint name src/pg/citus.rs gives back to clients is the table's.
    assert distributed.sql(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'workflow_ext.hook_tokens'::regclass "
        "AND contype = 'p'") == [(TOKEN_CONSTRAINT,)]


def test_racing_creators_across_workers_give_one_owner(distributed):
    winners, stored, losers, failures = race(distributed, DB, "tokrace_")
    assert not failures, failures[:3]
    assert sorted(stored) == sorted(f"tokrace_tok{t}" for t in range(TOKENS))
    assert all(len(v) == 1 for v in stored.values()), {k: v for k, v in stored.items() if len(v) > 1}
    assert winners == stored, "a caller was told it won, but the log disagrees"
    assert len(losers) == TOKENS * (RACERS - 1)
    assert set(losers) == {(TOKEN_CONSTRAINT,
                            f'duplicate key value violates unique constraint "{TOKEN_CONSTRAINT}"')}
    held = dict(distributed.sql(
        "SELECT token, run_id FROM workflow_ext.hook_tokens WHERE token LIKE 'tokrace_%%'"))
    assert held == {k: v[0] for k, v in stored.items()}


def test_a_token_released_on_one_worker_is_taken_on_the_other(distributed):
    """hook_disposed and a run's terminal event release the token, whichever
    node the client and the run are on."""
    f = distributed
    a, b = runs_on_both_workers(f, "tokrel_", 2)
    assert worker_of(f, a) != worker_of(f, b)
    for r in (a, b):
        f.sql("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
        f.sql("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    f.sql("SELECT workflow_ext.append_event(%s, 'h1', 'hook_created', '{\"token\": \"tokrel\"}')", (a,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        f.sql("SELECT workflow_ext.append_event(%s, 'h1', 'hook_created', '{\"token\": \"tokrel\"}')", (b,),
              node=f.workers[1])
    # Disposed, on a worker: b takes it, through the coordinator.
    f.sql("SELECT workflow_ext.append_event(%s, 'h1', 'hook_disposed')", (a,), node=f.workers[0])
    f.sql("SELECT workflow_ext.append_event(%s, 'h2', 'hook_created', '{\"token\": \"tokrel\"}')", (b,))
    assert f.sql("SELECT run_id FROM workflow_ext.hook_tokens WHERE token = 'tokrel'") == [(b,)]
    # b's run ends: the token is free again, and a's disposal left b's row alone.
    f.sql("SELECT workflow_ext.append_event(%s, NULL, 'run_completed')", (b,))
    assert f.sql("SELECT count(*) FROM workflow_ext.hook_tokens WHERE token = 'tokrel'") == [(0,)]
    f.sql("SELECT workflow_ext.append_event(%s, 'h3', 'hook_created', '{\"token\": \"tokrel\"}')", (a,))
    assert f.sql("SELECT run_id FROM workflow_ext.hook_tokens WHERE token = 'tokrel'") == [(a,)]


def test_a_two_phase_commit_of_a_token_is_refused(distributed):
    """A transaction through the coordinator that writes to both workers is
    committed by Citus in two phases; a token written there from a worker
    could not be prepared with it, so it is refused, whole: no event and no
    token stored."""
    f = distributed
    a, b = runs_on_both_workers(f, "tok2pc_", 2)
    for r in (a, b):
        f.sql("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
        f.sql("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    with f.connect(autocommit=False) as c:
        c.execute("SELECT workflow_ext.append_event(%s, 'h1', 'hook_created', '{\"token\": \"tok2pc\"}')", (a,))
        c.execute("SELECT workflow_ext.append_event(%s, NULL, 'attr_set')", (b,))
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.commit()
    assert "hook token" in e.value.diag.message_primary
    assert f.sql("SELECT count(*) FROM workflow_ext.events WHERE run_id IN (%s, %s) AND seq > 2", (a, b)) == [(0,)]
    assert f.sql("SELECT count(*) FROM workflow_ext.hook_tokens WHERE token = 'tok2pc'") == [(0,)]
    assert f.sql("SELECT count(*) FROM pg_prepared_xacts", node=f.workers[0]) == [(0,)]
    # One worker, one phase: the same hook is taken.
    f.sql("SELECT workflow_ext.append_event(%s, 'h1', 'hook_created', '{\"token\": \"tok2pc\"}')", (a,))
    assert f.sql("SELECT run_id FROM workflow_ext.hook_tokens WHERE token = 'tok2pc'") == [(a,)]


def test_the_race_catches_node_local_tokens(citus):
    """The same race where each worker keeps its own hook_tokens (the
    placement before tokens were distributed): two owners per token."""
    db = citus.new_database("wfx_naive_tokens")
    # distribute() without its step that distributes hook_tokens (and the
    # fan-in tables, unused here; Citus
    # undistributes no table of an extension).
    citus.coordinator.sql("CREATE OR REPLACE FUNCTION workflow_ext.distribute_own_log_tables(log regclass) "
                          "RETURNS void LANGUAGE sql AS 'SELECT'", db=db)
    citus.coordinator.sql("SELECT workflow_ext.distribute()", db=db)
    assert citus.coordinator.sql("SELECT count(*) FROM pg_dist_partition "
                                 "WHERE logicalrelid = 'workflow_ext.hook_tokens'::regclass", db=db) == [(0,)]
    winners, stored, losers, failures = race(citus, db, "naive_")
    assert not failures, failures[:3]
    doubled = [k for k, v in stored.items() if len(v) > 1]
    assert doubled, "the race did not catch node-local tokens"


def test_rebuild_hook_tokens_recomputes_them_across_nodes(distributed):
    """rebuild_hook_tokens() on the coordinator: the same rows, from the log."""
    f = distributed
    before = f.sql("SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens ORDER BY token")
    assert before, "nothing to rebuild: run after the races"
    f.sql("DELETE FROM workflow_ext.hook_tokens WHERE token LIKE 'tokrace_%%'")
    (n,) = f.sql("SELECT workflow_ext.rebuild_hook_tokens()")[0]
    assert n == len(before)
    assert f.sql("SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens ORDER BY token") == before
