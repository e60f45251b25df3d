"""Shard moves, splits and rebalancing of a distributed own log while writers
append through the coordinator: the run rows move with the runs' events
(co-located), Citus's own replication of the moved rows is not taken for new
appends, and nothing is lost, doubled or refused; appends to a moved run go
on at its next seq."""
import os
import signal
import subprocess
import time

import pytest

from load import Load


@pytest.fixture(scope="module")
def distributed(citus):
    citus.sql("SELECT workflow_ext.distribute()")
    return citus


def placements(f):
    """{shardid: nodeport} of the log's shards."""
    return dict(f.sql(
        "SELECT shardid, nodeport FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid) "
        "WHERE logicalrelid = 'workflow_ext.events'::regclass"))


def busiest_shard(f, runs):
    """The shard holding most of `runs`, and its node."""
    shard = f.sql("SELECT get_shard_id_for_distribution_column('workflow_ext.events', r), count(*) "
                  "FROM unnest(%s::text[]) r GROUP BY 1 ORDER BY 2 DESC LIMIT 1", (runs,))[0][0]
    return shard, placements(f)[shard]


@pytest.mark.parametrize("mode", ["force_logical", "block_writes"])
def test_shard_move_under_load(distributed, mode):
    f = distributed
    load = Load(f, runs=24, prefix=f"move_{mode}_").start()
    try:
        load.wait_for(200)
        shard, source = busiest_shard(f, load.runs)
        target = next(w.port for w in f.workers if w.port != source)
        f.sql("SELECT citus_move_shard_placement(%s, '127.0.0.1', %s, '127.0.0.1', %s, shard_transfer_mode => %s)",
              (shard, source, target, mode))
        assert placements(f)[shard] == target
        before = load.calls
        load.wait_for(before + 200)   # appends to the moved runs go on
    finally:
        load.finish()
    assert not load.failures, load.failures[:5]
    load.check()


def test_rebalance_after_adding_a_node(distributed):
    f = distributed
    load = Load(f, runs=24, prefix="rebalance_").start()
    try:
        load.wait_for(200)
        f.add_worker(f.make, "worker3")
        f.sql("SELECT rebalance_table_shards(shard_transfer_mode => 'force_logical')")
        assert f.workers[-1].port in placements(f).values(), "nothing moved to the new node"
        before = load.calls
        load.wait_for(before + 200)
    finally:
        load.finish()
    assert not load.failures, load.failures[:5]
    load.check()


def test_shard_split_under_load(distributed):
    """A split blocking writes (the appends wait, none fails). A non-blocking
    split ('auto', 'force_logical') stalls on Citus 13.2.2: its split
    decoder replicates the run table's updates without their replica
    identity (docs/scaling-out.md)."""
    f = distributed
    load = Load(f, runs=24, prefix="split_").start()
    try:
        load.wait_for(200)
        shard, node = busiest_shard(f, load.runs)
        lo, hi = f.sql("SELECT shardminvalue::bigint, shardmaxvalue::bigint FROM pg_dist_shard WHERE shardid = %s",
                       (shard,))[0]
        node_id = f.sql("SELECT nodeid FROM pg_dist_node WHERE nodeport = %s", (node,))[0][0]
        f.sql("SELECT citus_split_shard_by_split_points(%s, ARRAY[%s], ARRAY[%s, %s], 'block_writes')",
              (shard, str((lo + hi) // 2), node_id, node_id))
        assert shard not in placements(f)
        before = load.calls
        load.wait_for(before + 200)
    finally:
        load.finish()
    assert not load.failures, load.failures[:5]
    load.check()


def test_a_worker_killed_mid_load_loses_no_acknowledged_append(distributed):
    """A worker killed (SIGKILL to the postmaster and every process of it, as
    a crash of its machine would) while 8 writers append through the
    coordinator, then restarted (crash recovery): appends to its runs fail meanwhile (the
    writers are told), and every append that was acknowledged is stored once,
    with the seq it was told; seqs stay dense (Citus's 2PC recovery settles
    the transactions that were prepared when it died)."""
    f = distributed
    victim = f.workers[0]
    load = Load(f, runs=24, prefix="kill_").start()
    try:
        load.wait_for(200)
        with open(os.path.join(victim.data, "postmaster.pid")) as pid_file:
            postmaster = int(pid_file.readline())
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        victim.start()
        # Wait until the coordinator reaches it again, then let writers go on.
        deadline = time.monotonic() + 60
        while True:
            try:
                f.sql("SELECT count(*) FROM workflow_ext.events WHERE run_id = ANY(%s)", (load.runs,))
                break
            except Exception:  # noqa: BLE001 (retried until the deadline)
                assert time.monotonic() < deadline, "the worker did not come back"
                time.sleep(0.5)
        before = load.calls
        load.wait_for(before + 200)
    finally:
        load.finish()
    assert load.failures, "no append failed: the worker was not killed under load"
    f.sql("SELECT recover_prepared_transactions()")
    load.check()
