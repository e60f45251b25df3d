"""workflow_ext.distribute() on a real Citus cluster (a coordinator and two
workers, conftest.py): the own log distributed by run_id with its run rows
co-located, every per-run guarantee kept on the worker that holds the run,
whether a client goes through the coordinator or straight to a worker."""
import threading
import time

import psycopg
import pytest

from conftest import DB


def run_ids(prefix, n):
    return [f"{prefix}{i:03d}" for i in range(n)]


@pytest.fixture(scope="module")
def distributed(citus):
    citus.sql("SELECT workflow_ext.distribute()")
    return citus


def test_distribute_places_the_log_and_its_run_rows_together(distributed):
    rows = distributed.sql(
        "SELECT logicalrelid::text, partmethod, colocationid FROM pg_dist_partition "
        "WHERE logicalrelid IN ('workflow_ext.events'::regclass, 'workflow_ext.distributed_runs'::regclass) "
        "ORDER BY 1")
    assert [r[:2] for r in rows] == [("workflow_ext.distributed_runs", "h"), ("workflow_ext.events", "h")]
    assert rows[0][2] == rows[1][2], "the log and the run table must be co-located"
    # Shards on both workers.
    nodes = distributed.sql(
        "SELECT DISTINCT nodeport FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid) "
        "WHERE logicalrelid = 'workflow_ext.events'::regclass")
    assert sorted(p for (p,) in nodes) == sorted(w.port for w in distributed.workers)
    # Again: nothing to do.
    distributed.sql("SELECT workflow_ext.distribute()")


def test_appends_through_the_coordinator_and_on_workers(distributed):
    """Creation, a step's lifecycle and a late event, by function, INSERT and
    COPY, through the coordinator and directly on a worker."""
    for node in distributed.nodes:
        run = f"plain_{node.name}"
        with distributed.connect(node) as c:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))
            again = c.execute(
                "SELECT * FROM workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,)).fetchone()
            assert again[1:] == (1, False)
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))
            c.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                      "VALUES (%s, 's1', 'step_created')", (run,))
            with c.cursor().copy("COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN") as cp:
                cp.write_row((run, "s1", "step_started"))
                cp.write_row((run, "s1", "step_completed"))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_completed')", (run,))
            # A late event, three ways: refused each time with 55000, nothing
            # written. (Citus re-raises a shard's COPY error without its
            # SQLSTATE, as XX000 (multi_copy.c, ReportCopyError); the error
            # hook gives it back from the DETAIL.)
            for late in (
                lambda: c.execute("SELECT workflow_ext.append_event(%s, 's4', 'step_created')", (run,)),
                lambda: c.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
                                  "VALUES (%s, 's2', 'step_created')", (run,)),
                lambda: copy_rows(c, [(run, "s3", "step_created")]),
            ):
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                    late()
                assert e.value.diag.message_primary.endswith("the run is already completed")
                assert e.value.diag.message_detail == "anomaly: event_after_run_terminal; run state: completed"
            seqs = c.execute("SELECT seq, type::text FROM workflow_ext.events WHERE run_id = %s ORDER BY seq",
                             (run,)).fetchall()
            assert seqs == [(1, "run_created"), (2, "run_started"), (3, "step_created"), (4, "step_started"),
                            (5, "step_completed"), (6, "run_completed")], node.name


def copy_rows(c, rows):
    with c.cursor().copy("COPY workflow_ext.events (run_id, correlation_id, type) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def test_duplicate_creation_names_the_creation_index(distributed):
    """23505 on a duplicate step creation, with the index's name, through the
    coordinator and on a worker: the DevKit maps conflicts by that name."""
    distributed.sql("SELECT workflow_ext.append_suspension_event('dup', NULL, 'run_created')")
    distributed.sql("SELECT workflow_ext.append_event('dup', NULL, 'run_started')")
    distributed.sql("INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('dup', 's', 'step_created')")
    for node in distributed.nodes:
        with distributed.connect(node) as c, pytest.raises(psycopg.errors.UniqueViolation) as e:
            c.execute("INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('dup', 's', 'step_created')")
        assert e.value.diag.constraint_name == "workflow_events_entity_creation_unique", node.name
        assert e.value.diag.message_primary == (
            'duplicate key value violates unique constraint "workflow_events_entity_creation_unique"')
        # By COPY too (Citus passes it on as XX000, without the name).
        with distributed.connect(node) as c, pytest.raises(psycopg.errors.UniqueViolation) as e:
            copy_rows(c, [("dup", "s", "step_created")])
        assert e.value.diag.constraint_name == "workflow_events_entity_creation_unique", node.name


def test_racing_clients_through_coordinator_and_workers(distributed):
    """16 clients, spread over the coordinator and both workers, race every
    step creation of 20 runs and then their completions: one row per key,
    every racer told the winner's id, seqs dense, steps in lifecycle order."""
    runs = run_ids("race", 20)
    with distributed.connect() as c:
        for r in runs:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    steps = [f"step{i}" for i in range(5)]
    answers, failures = {}, []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def racer(k):
        node = distributed.nodes[k % 3]
        try:
            with psycopg.connect(node.conninfo(DB), autocommit=True) as c:
                barrier.wait()
                for r in runs:
                    for s in steps:
                        eid, seq, _ = c.execute(
                            "SELECT * FROM workflow_ext.append_suspension_event(%s, %s, 'step_created')",
                            (r, s)).fetchone()
                        with lock:
                            answers.setdefault((r, s), set()).add((eid, seq))
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(repr(e))

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert all(len(v) == 1 for v in answers.values()), "a racer was told another creation"
    rows = distributed.sql(
        "SELECT run_id, count(*), count(DISTINCT correlation_id) FILTER (WHERE type = 'step_created'), "
        "       count(*) FILTER (WHERE type = 'step_created'), min(seq), max(seq) "
        "FROM workflow_ext.events WHERE run_id LIKE 'race%%' GROUP BY run_id ORDER BY run_id")
    assert len(rows) == 20
    for run_id, n, distinct_steps, step_rows, lo, hi in rows:
        assert (distinct_steps, step_rows) == (5, 5), run_id
        assert (lo, hi) == (1, n), f"{run_id}: seqs not dense"
    stored = dict(((r, s), (eid, seq)) for r, s, eid, seq in distributed.sql(
        "SELECT run_id, correlation_id, id, seq FROM workflow_ext.events "
        "WHERE run_id LIKE 'race%%' AND type = 'step_created'"))
    assert {k: next(iter(v)) for k, v in answers.items()} == stored


def shard_of(f, log, run_id):
    """(shard name, the worker holding it) of `run_id` in distributed `log`."""
    shard, port = f.sql(
        "SELECT shard_name(%s::regclass, s.shardid, false), p.nodeport FROM pg_dist_shard_placement p "
        "JOIN pg_dist_shard s USING (shardid) "
        "WHERE s.shardid = get_shard_id_for_distribution_column(%s::regclass, %s::text)", (log, log, run_id))[0]
    return shard, next(w for w in f.workers if w.port == port)


def test_scan_and_replay_read_the_shards(distributed):
    """The audit of a distributed log reads every shard: the own log (an
    anomaly planted past the trigger on one shard) and a DevKit-shaped
    distributed table that is not attached, 40 runs, every 4th broken."""
    f = distributed
    f.sql("SELECT workflow_ext.append_suspension_event('planted', NULL, 'run_created')")
    f.sql("SELECT workflow_ext.append_event('planted', NULL, 'run_started')")
    shard, worker = shard_of(f, "workflow_ext.events", "planted")
    with f.connect(worker) as c:
        c.execute("SET citus.enable_manual_changes_to_shards = on")
        trigger = "events_validate_insert_" + shard.rsplit("_", 1)[1]   # Citus's name on the shard
        c.execute(f"ALTER TABLE {shard} DISABLE TRIGGER {trigger}")
        c.execute(f"INSERT INTO {shard} (id, run_id, seq, type, correlation_id) "
                  "VALUES ('wevt_planted', 'planted', 3, 'step_completed', 'ghost')")
        c.execute(f"ALTER TABLE {shard} ENABLE ALWAYS TRIGGER {trigger}")
    found = f.sql("SELECT run_id, first_seq, first_anomaly FROM workflow_ext.scan() WHERE run_id = 'planted'")
    assert found == [("planted", 3, "missing_creation")]
    assert f.sql("SELECT seq, anomaly FROM workflow_ext.replay('planted')") == [(3, "missing_creation")]
    # Every run of the own log is audited: the clean ones have no row, and
    # the number of runs scan read equals the log's.
    assert f.sql("SELECT count(*) FROM workflow_ext.scan()") == [(1,)]

    f.sql("CREATE TABLE devlog (id varchar PRIMARY KEY, run_id varchar NOT NULL, type varchar NOT NULL, "
          "correlation_id varchar, created_at timestamp NOT NULL DEFAULT now(), payload jsonb)")
    f.sql("ALTER TABLE devlog DROP CONSTRAINT devlog_pkey, ADD PRIMARY KEY (run_id, id)")
    f.sql("SELECT create_distributed_table('devlog', 'run_id')")
    with f.connect() as c:
        for r in range(40):
            run = f"wrun_{r:02d}"
            c.execute("INSERT INTO devlog (id, run_id, type, correlation_id) VALUES "
                      "(%s, %s, 'run_created', NULL), (%s, %s, 'run_started', NULL)",
                      (f"wevt_{r:02d}a", run, f"wevt_{r:02d}b", run))
            if r % 4 == 0:   # a step that completes without being created
                c.execute("INSERT INTO devlog (id, run_id, type, correlation_id) VALUES (%s, %s, 'step_completed', 's')",
                          (f"wevt_{r:02d}c", run))
    found = f.sql("SELECT run_id, events, first_anomaly FROM workflow_ext.scan('devlog')")
    assert found == [(f"wrun_{r:02d}", 3, "missing_creation") for r in range(0, 40, 4)]
    assert f.sql("SELECT anomaly FROM workflow_ext.replay('wrun_08', 'devlog')") == [("missing_creation",)]
    assert f.sql("SELECT count(*) FROM workflow_ext.replay('wrun_09', 'devlog')") == [(0,)]


def test_racing_batches(distributed):
    """append_suspension_events raced by 12 clients over the three nodes, each
    batch overlapping the others' keys (new and stored ones in one call): one
    row per key, every caller told the stored creation, seqs dense."""
    f = distributed
    runs = run_ids("batch", 6)
    with f.connect() as c:
        for r in runs:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))
    answers, failures = {}, []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def racer(k):
        try:
            with psycopg.connect(f.nodes[k % 3].conninfo(DB), autocommit=True) as c:
                barrier.wait()
                for r in runs:
                    for b in range(4):
                        steps = [f"s{(b * 3 + k + j) % 16}" for j in range(5)]
                        for corr, eid, seq, _ in c.execute(
                                "SELECT * FROM workflow_ext.append_suspension_events(%s, %s, %s)",
                                (r, steps, ["step_created"] * 5)).fetchall():
                            with lock:
                                answers.setdefault((r, corr), set()).add((eid, seq))
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(repr(e))

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert all(len(v) == 1 for v in answers.values()), "a caller was told another creation"
    stored = {(r, s): (eid, seq) for r, s, eid, seq in f.sql(
        "SELECT run_id, correlation_id, id, seq FROM workflow_ext.events "
        "WHERE run_id LIKE 'batch%%' AND type = 'step_created'")}
    assert {k: next(iter(v)) for k, v in answers.items()} == stored
    for run_id, n, lo, hi in f.sql("SELECT run_id, count(*), min(seq), max(seq) FROM workflow_ext.events "
                                   "WHERE run_id LIKE 'batch%%' GROUP BY run_id"):
        assert (lo, hi) == (1, n), run_id


def test_metrics_and_stuck_runs_see_distributed_runs(distributed):
    """Through the coordinator and on a worker: metrics() counts the active
    runs of the distributed log (their rows are on the workers) and
    stuck_runs() lists them with their last event, read from the shard."""
    f = distributed
    with f.connect() as c:
        c.execute("SELECT workflow_ext.append_suspension_event('mon_pending', NULL, 'run_created')")
        c.execute("SELECT workflow_ext.append_suspension_event('mon_running', NULL, 'run_created')")
        c.execute("SELECT workflow_ext.append_event('mon_running', NULL, 'run_started')")
        c.execute("SELECT workflow_ext.append_suspension_event('mon_running', 'st', 'step_created')")
    expected = f.sql(
        "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'running') "
        "FROM workflow_ext.distributed_runs WHERE finished_at IS NULL")[0]
    assert expected[0] >= 1 and expected[1] >= 2
    for node in (f.coordinator, f.workers[0]):
        got = f.sql("SELECT runs_pending, runs_running FROM workflow_ext.metrics() "
                    "WHERE log = 'workflow_ext.events'", node=node)
        assert got == [expected], node.name
        stuck = dict((r, (s, t, a)) for r, s, t, a in f.sql(
            "SELECT run_id, state, last_event_type, active_entities FROM workflow_ext.stuck_runs('0 seconds') "
            "WHERE run_id LIKE 'mon_%%'", node=node))
        assert stuck == {"mon_pending": ("pending", "run_created", []),
                         "mon_running": ("running", "step_created", ["step st (pending)"])}, node.name
    # The rows inserted into the log's shards on every node: at least every
    # event stored (an insert that failed later counts too), once the
    # nodes' statistics are flushed (within a second or so).
    stored = f.sql("SELECT count(*) FROM workflow_ext.events")[0][0]
    for _ in range(50):
        (inserted,) = f.sql("SELECT events_inserted FROM workflow_ext.metrics() WHERE log = 'workflow_ext.events'")[0]
        if inserted >= stored:
            break
        time.sleep(0.2)
    assert stored > 0 and inserted >= stored, (inserted, stored)
    assert f.sql("SELECT n_tup_ins FROM pg_stat_all_tables WHERE relid = 'workflow_ext.events'::regclass") == [(0,)]


def test_counters_on_every_node(distributed):
    """counters_on_every_node() from the coordinator: every node's
    counters_since_start(), as each node reads them. An append through the
    coordinator is validated, and counted, on the worker that holds its
    run: 20 runs created through the coordinator add 20 on the workers,
    some on each, none on the coordinator (which holds no shard)."""
    f = distributed

    def on_every_node():
        return {(node, counter): value for node, counter, value in
                f.sql("SELECT node, counter, value FROM workflow_ext.counters_on_every_node()")}

    def name(node):
        return f"127.0.0.1:{node.port}"

    before = on_every_node()
    assert {n for n, _ in before} == {name(n) for n in f.nodes}
    with f.connect() as c:
        for i in range(20):
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_created')", (f"ctr-{i}",))
    after = on_every_node()
    added = {name(n): after.get((name(n), "appended"), 0) - before.get((name(n), "appended"), 0)
             for n in f.nodes}
    assert added[name(f.coordinator)] == 0, added
    assert all(added[name(w)] > 0 for w in f.workers), added
    assert sum(added.values()) == 20, added
    for node in f.nodes:
        own = dict(f.sql("SELECT counter, value FROM workflow_ext.counters_since_start()", node=node))
        assert own == {c: v for (n, c), v in after.items() if n == name(node)}, node.name


def test_purge_runs_purges_every_node(distributed):
    """purge_runs() through the coordinator removes the finished runs of the
    distributed log on every worker, whole (events and run rows), and
    nothing else; a later append to a live run goes on at its next seq."""
    f = distributed
    with f.connect() as c:
        for i in range(12):
            run = f"purge{i:02d}"
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))
            if i % 2 == 0:
                c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_completed')", (run,))
    on_workers = f.sql("SELECT count(DISTINCT p.nodeport) FROM unnest(%s::text[]) r "
                       "JOIN pg_dist_shard_placement p ON p.shardid = "
                       "get_shard_id_for_distribution_column('workflow_ext.events', r)",
                       ([f"purge{i:02d}" for i in range(0, 12, 2)],))[0][0]
    assert on_workers == 2, "the finished runs should be on both workers"
    finished_elsewhere = f.sql("SELECT count(*) FROM workflow_ext.distributed_runs "
                               "WHERE finished_at IS NOT NULL AND run_id NOT LIKE 'purge%%'")[0][0]
    purged = f.sql("SELECT workflow_ext.purge_runs('0 seconds')")[0][0]
    assert purged == 6 + finished_elsewhere
    left = f.sql("SELECT run_id, count(*) FROM workflow_ext.events WHERE run_id LIKE 'purge%%' "
                 "GROUP BY run_id ORDER BY run_id")
    assert left == [(f"purge{i:02d}", 2) for i in range(1, 12, 2)]
    assert f.sql("SELECT count(*) FROM workflow_ext.distributed_runs WHERE run_id LIKE 'purge%%'") == [(6,)]
    assert f.sql("SELECT seq FROM workflow_ext.append_event('purge01', NULL, 'run_completed')") == [(3,)]



def remote_commands(c, query, params):
    """The commands Citus sends to workers for `query` (citus.log_remote_commands)."""
    c.execute("SET citus.log_remote_commands = on")
    c.execute("SET client_min_messages = log")
    sent = []
    c.add_notice_handler(lambda d: sent.append(d.message_primary))
    try:
        c.execute(query, params)
    finally:
        c.execute("RESET client_min_messages")
        c.execute("RESET citus.log_remote_commands")
    return [m for m in sent if m and m.startswith("issuing ")]


def test_an_append_through_the_coordinator_is_one_statement_on_the_runs_node(distributed):
    """Through the coordinator, append_event and append_suspension_event of a
    new key each send the run's node one statement on the log's shard (the
    INSERT alone); a redelivered key two (the INSERT, which skips it, and
    the read-back). Never Citus's multi-step plan of the lookup-and-insert
    WITH, nor an answer from the coordinator's own heap (see
    test_attached.py: a purged run's leftovers)."""
    with distributed.connect() as c:
        c.execute("SELECT workflow_ext.append_suspension_event('onestmt', NULL, 'run_created')")
        for query, statements in (
                ("SELECT * FROM workflow_ext.append_event(%s, NULL, 'run_started')", 1),
                ("SELECT * FROM workflow_ext.append_suspension_event(%s, 's1', 'step_created')", 1),
                ("SELECT * FROM workflow_ext.append_suspension_event(%s, 's1', 'step_created')", 2)):
            sent = remote_commands(c, query, ("onestmt",))
            on_shard = [m for m in sent if "workflow_ext.events_" in m]
            assert len(on_shard) == statements, (query, sent)
            assert not [m for m in sent if "intermediate" in m or "FROM STDIN" in m], sent
    assert distributed.sql("SELECT seq, type::text FROM workflow_ext.events WHERE run_id = 'onestmt' ORDER BY seq") == [
        (1, "run_created"), (2, "run_started"), (3, "step_created")]
