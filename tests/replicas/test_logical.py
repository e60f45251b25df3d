"""Logical replication of the log: a publication of workflow_ext.events
(publish = 'insert'), subscribed

(a) into a database WITHOUT the extension, where a plain table of the same
    name (workflow_ext.events: logical replication matches tables by schema
    and name, so the target cannot be called replica.events) takes the rows;
    the audit runs from a second database on the subscriber that has the
    extension, through a postgres_fdw foreign table (scan/replay accept any
    table, view or foreign table with the columns);
(b) into a database WITH the extension, i.e. into the extension's own
    protected table: its ENABLE ALWAYS validating trigger fires for the apply
    worker too and re-checks every row, client-supplied seq included. That
    works while the rows arrive in seq order per run, and the initial copy is
    refused when the primary's heap holds a run's rows out of seq order
    (after purge_runs + VACUUM freed space that later appends reuse).

Only the log is published: the internal tables (runs, joins, join_members,
hook_tokens, logs, bootstraps) are not needed by either subscriber (a plain
replica has no triggers; the extension's trigger derives runs and hook_tokens
on the subscriber itself).
"""
import time

import psycopg
import pytest

from conftest import wait_until
from workload import ENDINGS, Writer, disorder_heap, lifecycle, rows, write_runs

PUB = "CREATE PUBLICATION wfx_log FOR TABLE workflow_ext.events WITH (publish = 'insert')"
PLAIN_TABLE = """CREATE SCHEMA workflow_ext;
CREATE TABLE workflow_ext.events (id text, run_id text, seq bigint, type text,
                                  correlation_id text, payload jsonb, created_at timestamptz)"""


@pytest.fixture(scope="module")
def pubsub(clusters):
    pub = clusters("publisher", wal_level="logical", max_wal_senders=10, max_replication_slots=10)
    sub = clusters("subscriber", max_logical_replication_workers=6, max_worker_processes=12)
    return pub, sub


def subscribe(pub, pubdb, sub, subdb, name):
    with sub.connect(subdb) as c:
        c.execute(f"CREATE SUBSCRIPTION {name} CONNECTION '{pub.conninfo(pubdb)}' PUBLICATION wfx_log")


def synced(sub, subdb, timeout=60):
    wait_until("the initial table copy", lambda: sub.sql(
        "SELECT bool_and(srsubstate = 'r') AND count(*) > 0 FROM pg_subscription_rel", db=subdb)[0][0], timeout)


def drop_subscription(sub, subdb, name):
    with sub.connect(subdb) as c:
        c.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
        c.execute(f"DROP SUBSCRIPTION {name}")   # also drops its slot on the publisher


def caught_up(pub, pubdb, count_on_sub, timeout=60):
    """Wait until the subscriber holds as many rows as the primary has now."""
    want = pub.sql("SELECT count(*) FROM workflow_ext.events", db=pubdb)[0][0]
    wait_until(f"the subscriber to hold {want} events", lambda: count_on_sub() >= want, timeout)


def audit_db(sub, name, replica_db):
    """A database with the extension that sees the replica's plain table as
    replica.events (postgres_fdw)."""
    sub.create_db(name)
    with sub.connect(name) as c:
        c.execute("CREATE EXTENSION postgres_fdw")
        c.execute(f"CREATE SERVER replica FOREIGN DATA WRAPPER postgres_fdw "
                  f"OPTIONS (host '{sub.dir}', port '{sub.port}', dbname '{replica_db}')")
        c.execute("CREATE USER MAPPING FOR postgres SERVER replica OPTIONS (user 'postgres')")
        c.execute("CREATE SCHEMA replica")
        c.execute("IMPORT FOREIGN SCHEMA workflow_ext LIMIT TO (events) FROM SERVER replica INTO replica")


def test_logical_subscriber_stays_consistent(pubsub):
    pub, sub = pubsub
    pub.create_db("wfx_pub")
    with pub.connect("wfx_pub") as c:
        write_runs(c, {f"seed_{i}": lifecycle(f"seed_{i}", 4, ENDINGS[i % 3]) for i in range(6)})
        write_runs(c, {"open_run": lifecycle("open_run", 2, ending=None)})   # unfinished: never purged
        c.execute(PUB)
    # (a) the subscriber database has no extension: a plain table takes the log.
    sub.create_db("wfx_replica", extension=False)
    with sub.connect("wfx_replica") as c:
        c.execute(PLAIN_TABLE)
    audit_db(sub, "wfx_audit", "wfx_replica")
    subscribe(pub, "wfx_pub", sub, "wfx_replica", "wfx_sub")
    synced(sub, "wfx_replica")

    def replica_count():
        return sub.sql("SELECT count(*) FROM workflow_ext.events", db="wfx_replica")[0][0]

    runs = {f"live_{i}": lifecycle(f"live_{i}", 10, ENDINGS[i % 3]) for i in range(8)}
    writer = Writer(lambda: pub.connect("wfx_pub"), runs, timeout=90)
    audits = 0
    with sub.connect("wfx_audit") as a:
        writer.start()
        deadline = time.monotonic() + 100
        while writer.is_alive() and time.monotonic() < deadline:
            found = a.execute("SELECT * FROM workflow_ext.scan('replica.events')").fetchall()
            assert found == [], f"scan of the logical replica: {found}"
            audits += 1
            time.sleep(0.1)
        writer.join(timeout=max(1, deadline - time.monotonic()))
    assert not writer.is_alive() and writer.error is None, writer.error
    caught_up(pub, "wfx_pub", replica_count)

    with pub.connect("wfx_pub") as p, sub.connect("wfx_replica") as r, sub.connect("wfx_audit") as a:
        history = rows(p)
        assert rows(r) == history                     # same rows, ids, seqs, payloads, times
        assert a.execute("SELECT * FROM workflow_ext.scan('replica.events')").fetchall() == []
        for run in runs:
            assert a.execute("SELECT * FROM workflow_ext.replay(%s, 'replica.events')", (run,)).fetchall() == []

        # purge_runs on the primary: with publish = 'insert' the DELETEs are not
        # replicated; the subscriber keeps the whole history.
        finished = p.execute("SELECT count(*) FROM workflow_ext.runs WHERE finished_at IS NOT NULL").fetchone()[0]
        purged = p.execute("SELECT workflow_ext.purge_runs('0 s')").fetchone()[0]
        assert purged == finished == len(runs) + 6
        assert p.execute("SELECT count(DISTINCT run_id) FROM workflow_ext.events").fetchone()[0] == 1
        # A marker committed after the purge: once it is on the subscriber, so
        # is everything the purge's transaction would have sent.
        write_runs(p, {"after_purge": lifecycle("after_purge", 1)})
        wait_until("the marker run", lambda: r.execute(
            "SELECT count(*) FROM workflow_ext.events WHERE run_id = 'after_purge'").fetchone()[0] > 0, 60)
        wait_until("the whole marker run", lambda: r.execute(
            "SELECT count(*) FROM workflow_ext.events WHERE run_id = 'after_purge'").fetchone()[0]
            == len(lifecycle("after_purge", 1)), 60)
        assert rows(r, where="WHERE run_id <> 'after_purge'") == history
        assert a.execute("SELECT * FROM workflow_ext.scan('replica.events')").fetchall() == []
        kept = len(history) - p.execute(
            "SELECT count(*) FROM workflow_ext.events WHERE run_id <> 'after_purge'").fetchone()[0]
    print(f"FIGURE: logical replica (plain table): {len(history)} events copied + streamed, "
          f"{audits} scans through postgres_fdw during the writes; purge_runs removed {purged} runs "
          f"({kept} events) on the primary, all kept on the subscriber")
    drop_subscription(sub, "wfx_replica", "wfx_sub")


def test_logical_subscriber_with_the_extension(pubsub):
    """(b) The subscriber database has the extension and the subscription
    writes into its protected workflow_ext.events: the validating trigger
    re-checks the apply worker's rows and derives runs/hook_tokens locally."""
    pub, sub = pubsub
    pub.create_db("wfx_pub_b")
    with pub.connect("wfx_pub_b") as c:
        write_runs(c, {f"seed_{i}": lifecycle(f"seed_{i}", 3, ENDINGS[i % 3]) for i in range(4)})
        write_runs(c, {"open_run": lifecycle("open_run", 2, ending=None)})
        c.execute(PUB)
    sub.create_db("wfx_ext_sub")
    subscribe(pub, "wfx_pub_b", sub, "wfx_ext_sub", "wfx_sub_b")
    synced(sub, "wfx_ext_sub")

    def count():
        return sub.sql("SELECT count(*) FROM workflow_ext.events", db="wfx_ext_sub")[0][0]

    with pub.connect("wfx_pub_b") as p:
        write_runs(p, {f"live_{i}": lifecycle(f"live_{i}", 5, ENDINGS[i % 3]) for i in range(4)})
        caught_up(pub, "wfx_pub_b", count)
        with sub.connect("wfx_ext_sub") as s:
            assert rows(s) == rows(p)
            assert s.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
            # runs were derived by the subscriber's own trigger: same states and counters.
            q = "SELECT run_id, state, last_seq, finished_at IS NOT NULL FROM workflow_ext.runs ORDER BY 1"
            assert s.execute(q).fetchall() == p.execute(q).fetchall()
            q = "SELECT token, run_id, correlation_id, event_id FROM workflow_ext.hook_tokens ORDER BY 1"
            assert s.execute(q).fetchall() == p.execute(q).fetchall()

            # purge_runs on the primary: not replicated (publish = 'insert').
            before = rows(s)
            assert p.execute("SELECT workflow_ext.purge_runs('0 s')").fetchone()[0] == 8
            write_runs(p, {"after_purge": lifecycle("after_purge", 1)})
            wait_until("the marker run", lambda: s.execute(
                "SELECT count(*) FROM workflow_ext.events WHERE run_id = 'after_purge'").fetchone()[0]
                == len(lifecycle("after_purge", 1)), 60)
            assert rows(s, where="WHERE run_id <> 'after_purge'") == before
            # On such a subscriber purge_runs is the subscriber's own retention.
            assert s.execute("SELECT workflow_ext.purge_runs('0 s')").fetchone()[0] == 9

            # A local append to a replicated run takes the next seq on the
            # subscriber; the primary's next event then collides with it.
            mark = log_size(sub)
            s.execute("SELECT * FROM workflow_ext.append_event('open_run', 'step_local', 'step_created')")
            write_runs(p, {"open_run": [("step_x", "step_created", None, True)]})
            err = wait_until("the apply worker's error", lambda: log_errors(sub, mark), 30)
            assert s.execute("SELECT count(*) FROM workflow_ext.events WHERE correlation_id = 'step_x'").fetchone()[0] == 0
            print(f"OBSERVED: subscriber with the extension, a local append then the primary's next event "
                  f"of that run: {err}")
    drop_subscription(sub, "wfx_ext_sub", "wfx_sub_b")


def log_size(cluster):
    import os
    return os.path.getsize(cluster.log)


def log_errors(cluster, offset):
    """The first ERROR in the server log after `offset`, with its DETAIL/CONTEXT lines."""
    with open(cluster.log, errors="replace") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if "ERROR:" in line:
            out = [line.split("ERROR:", 1)[1].strip()]
            for more in lines[i + 1:i + 4]:
                for tag in ("DETAIL:", "CONTEXT:", "HINT:"):
                    if tag in more:
                        out.append(tag + " " + more.split(tag, 1)[1].strip())
            return " | ".join(out)
    return None


def test_logical_copy_out_of_seq_order(pubsub):
    """The initial table copy reads the primary's heap in physical order. After
    purge_runs and VACUUM, a later append can land in freed space before the
    run's earlier rows: a subscriber WITH the extension refuses that copy (its
    trigger wants the next seq), the tablesync worker retries forever; a plain
    replica (recipe a) takes the same copy and audits clean."""
    pub, sub = pubsub
    pub.create_db("wfx_pub_c")
    with pub.connect("wfx_pub_c") as p:
        seqs = disorder_heap(p)
        print(f"OBSERVED: run 'keep' in heap order has seqs {seqs}")
        p.execute(PUB)
        primary_rows = rows(p)

    # WITH the extension: the copy is refused.
    sub.create_db("wfx_ext_sub_c")
    mark = log_size(sub)
    subscribe(pub, "wfx_pub_c", sub, "wfx_ext_sub_c", "wfx_sub_c")
    err = wait_until("the table copy's error", lambda: log_errors(sub, mark), 30)
    print(f"OBSERVED: initial copy into the extension's workflow_ext.events: ERROR: {err}")
    assert sub.sql("SELECT srsubstate FROM pg_subscription_rel", db="wfx_ext_sub_c")[0][0] != "r"
    assert sub.sql("SELECT count(*) FROM workflow_ext.events", db="wfx_ext_sub_c")[0][0] == 0
    drop_subscription(sub, "wfx_ext_sub_c", "wfx_sub_c")

    # Recipe (a) on the same primary: the copy arrives and audits clean (the
    # audit orders by seq, whatever order the rows arrived in).
    sub.create_db("wfx_replica_c", extension=False)
    with sub.connect("wfx_replica_c") as c:
        c.execute(PLAIN_TABLE)
    audit_db(sub, "wfx_audit_c", "wfx_replica_c")
    subscribe(pub, "wfx_pub_c", sub, "wfx_replica_c", "wfx_sub_c2")
    synced(sub, "wfx_replica_c")
    with sub.connect("wfx_replica_c") as r, sub.connect("wfx_audit_c") as a:
        assert rows(r) == primary_rows
        assert a.execute("SELECT * FROM workflow_ext.scan('replica.events')").fetchall() == []
    drop_subscription(sub, "wfx_replica_c", "wfx_sub_c2")
