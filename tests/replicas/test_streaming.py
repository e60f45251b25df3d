"""A physical (streaming) standby of a primary with workflow_ext: the audit
functions are read-only and work on a hot standby while the primary appends;
the standby's log equals the primary's once it caught up; appending there is
refused as a read-only transaction (25006)."""
import random
import time

import psycopg
import pytest

from conftest import BIN, as_pg, wait_until
from workload import Writer, lifecycle, rows, write_runs, ENDINGS

DB = "wfx_stream"


@pytest.fixture(scope="module")
def pair(clusters):
    primary = clusters("primary", wal_level="replica", max_wal_senders=5, hot_standby="on",
                       wal_keep_size="256MB")
    primary.create_db(DB)
    with primary.connect(DB) as c:   # history the base backup carries
        write_runs(c, {f"seed_{i}": lifecycle(f"seed_{i}", 3, ENDINGS[i % 3]) for i in range(4)})
    standby = clusters("standby", init=False)
    as_pg(f"{BIN}/pg_basebackup", "-h", primary.dir, "-p", str(primary.port), "-U", "postgres",
          "-D", standby.data, "-R", "-X", "stream", "-c", "fast", timeout=120)
    standby.configure(hot_standby="on", wal_level="replica", max_wal_senders=5)
    standby.start()
    wait_until("the standby to stream", lambda: primary.sql(
        "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"), 60)
    return primary, standby


def caught_up(primary, standby, timeout=60):
    target = primary.sql("SELECT pg_current_wal_flush_lsn()")[0][0]
    wait_until(f"standby replay to reach {target}", lambda: standby.sql(
        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0], timeout)


def test_streaming_standby_audits(pair):
    primary, standby = pair
    caught_up(primary, standby)
    assert standby.sql("SELECT pg_is_in_recovery()", db=DB)[0][0]

    runs = {f"live_{i:02d}": lifecycle(f"live_{i:02d}", 40, ENDINGS[i % 3]) for i in range(16)}
    writer = Writer(lambda: primary.connect(DB), runs, timeout=120)
    audits = replays = 0
    seen_max = 0
    with standby.connect(DB) as s:
        writer.start()
        deadline = time.monotonic() + 150
        while writer.is_alive() and time.monotonic() < deadline:
            found = s.execute("SELECT * FROM workflow_ext.scan()").fetchall()
            assert found == [], f"scan on the standby reported anomalies: {found}"
            audits += 1
            for run in random.sample(sorted(runs), 3):
                found = s.execute("SELECT * FROM workflow_ext.replay(%s)", (run,)).fetchall()
                assert found == [], f"replay({run}) on the standby: {found}"
                replays += 1
            seen_max = max(seen_max, s.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0])
            time.sleep(0.05)
        writer.join(timeout=max(1, deadline - time.monotonic()))
    assert not writer.is_alive(), "the writer did not finish in time"
    assert writer.error is None, f"writer failed: {writer.error!r}"
    assert audits >= 3, "too few audits overlapped the writer"

    caught_up(primary, standby)
    with primary.connect(DB) as p, standby.connect(DB) as s:
        expected = rows(p)
        assert rows(s) == expected
        assert s.execute("SELECT * FROM workflow_ext.scan()").fetchall() == []
        for run in runs:
            assert s.execute("SELECT * FROM workflow_ext.replay(%s)", (run,)).fetchall() == []
        # The standby's derived state came along with the WAL.
        assert s.execute("SELECT log::text, run_id, state, last_seq FROM workflow_ext.runs ORDER BY 1, 2").fetchall() \
            == p.execute("SELECT log::text, run_id, state, last_seq FROM workflow_ext.runs ORDER BY 1, 2").fetchall()

        # Scan throughput on the standby (measured, not asserted): best of 3.
        total = len(expected)
        best = min(_timed(s, "SELECT count(*) FROM workflow_ext.scan()") for _ in range(3))

        # Writing on the standby: a read-only transaction (25006).
        for q in ("SELECT * FROM workflow_ext.append_event('live_00', NULL, 'run_started')",
                  "INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('new_run', NULL, 'run_created')"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                s.execute(q)
        assert rows(s) == expected

    print(f"FIGURE: streaming standby: {writer.count} events appended live ({writer.seconds:.1f} s, "
          f"{writer.count / writer.seconds:.0f} events/s on the primary), {total} events replicated in all; "
          f"{audits} scans and {replays} replays on the standby during the writes (max {seen_max} events seen)")
    print(f"FIGURE: scan() on the standby: {total} events in {best * 1000:.1f} ms = {total / best:,.0f} events/s")


def _timed(conn, q):
    t0 = time.perf_counter()
    conn.execute(q).fetchall()
    return time.perf_counter() - t0


STANDBY_WRITES = [
    ("append_event", "SELECT * FROM workflow_ext.append_event('live_00', NULL, 'run_started')"),
    ("INSERT", "INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('new_run', NULL, 'run_created')"),
    ("append_suspension_event", "SELECT * FROM workflow_ext.append_suspension_event('new_run', NULL, 'run_created')"),
    ("append_suspension_events", "SELECT * FROM workflow_ext.append_suspension_events('new_run', ARRAY[NULL], ARRAY['run_created'])"),
    ("join_arrive", "SELECT workflow_ext.join_arrive('live_00', 'j', 'm', 2)"),
    ("purge_runs", "SELECT workflow_ext.purge_runs('0 s')"),
    ("bootstrap", "SELECT workflow_ext.bootstrap('x@1', 'SELECT 1')"),
    ("rebuild_hook_tokens", "SELECT workflow_ext.rebuild_hook_tokens()"),
]


@pytest.mark.parametrize("label,query", STANDBY_WRITES, ids=[w[0] for w in STANDBY_WRITES])
def test_standby_refuses_writes_as_read_only(pair, label, query):
    """Every writing function on a hot standby fails like a plain INSERT:
    25006 read_only_sql_transaction (the functions that write through SPI
    check first: they used to fail later with XX000 "cannot assign
    TransactionIds during recovery"), and nothing is written."""
    primary, standby = pair
    with standby.connect(DB) as s:
        before = s.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0]
        with pytest.raises(psycopg.Error) as err:
            s.execute(query)
        print(f"OBSERVED: {label} on the standby -> {err.value.sqlstate}: {err.value.diag.message_primary}")
        assert s.execute("SELECT count(*) FROM workflow_ext.events").fetchone()[0] == before
    assert err.value.sqlstate == "25006", (label, err.value.sqlstate, err.value.diag.message_primary)
