"""Citus: the price of the guarantees on a distributed log, and the audit
spread over workers, measured on a formation of this script's own (a
coordinator and two workers on this machine, PostgreSQL 15, Citus 13.2.2
built by scripts/citus.sh; ports 54395-54399, removed at the end).

1. Appends through the coordinator: a step's lifecycle (step_created,
   step_started, step_completed) per iteration, each client on runs of its
   own, A = `workflow_ext.append_event` into the distributed own log
   (`workflow_ext.distribute()`), B = plain INSERTs, seq and id given by the
   client, into a distributed table of the same shape, indexes and
   constraints but no trigger (what Citus costs without the extension).
   Rounds of A and B alternate; events/s and the ratio A/B per client count.
2. The cost of the one cross-node rule, one owner per hook token: a hook's
   lifecycle (hook_created, hook_disposed) per iteration through the
   coordinator, A = with a token in the payload (taken in the token's shard,
   on whichever worker holds it, and released there), B = the same without
   a token. Events/s and A/B per client count.
3. `scan()` of the distributed own log, its events spread over 2 workers,
   then every shard moved to one worker: events/s each (on one machine the
   two workers share its cores).

    python3 bench/citus.py [--seconds 5] [--rounds 3] [--events 200000]

Prints the table; nothing is written to BENCHMARKS.md by this script.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "citus"))
import conftest as formation  # noqa: E402  (tests/citus: the settings, the database name)
from lib.throwaway import Cluster  # noqa: E402

PORTS = (54395, 54396, 54397)

PLAIN = """
CREATE TABLE bench_plain (
    id text NOT NULL, run_id text NOT NULL, seq bigint NOT NULL,
    type workflow_ext.event_type NOT NULL, correlation_id text, payload jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq), UNIQUE (run_id, id));
CREATE UNIQUE INDEX bench_plain_creation ON bench_plain (run_id, correlation_id, type) NULLS NOT DISTINCT
    WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created')
       OR (type = 'attr_set' AND correlation_id IS NOT NULL);
CREATE INDEX bench_plain_entity ON bench_plain (run_id, correlation_id, seq) WHERE correlation_id IS NOT NULL;
SELECT create_distributed_table('bench_plain', 'run_id', colocate_with => 'workflow_ext.events');
"""


def start():
    base = tempfile.mkdtemp(prefix="wfx_bench_citus.", dir="/tmp")
    shutil.chown(base, "postgres", "postgres")
    os.chmod(base, 0o700)
    if formation.server_knows("output_plugin_libraries"):
        formation.SETTINGS["output_plugin_libraries"] = "pgoutput, test_decoding, citus"
    nodes = []
    for name, port in zip(("coordinator", "worker1", "worker2"), PORTS):
        c = Cluster(base, name, port, suite="bench/citus.py")
        nodes.append(c)
        c.init(**formation.SETTINGS)
        c.start()
        c.sql(f'CREATE DATABASE "{formation.DB}"')
        c.sql("CREATE EXTENSION citus", db=formation.DB)
    coord = nodes[0]
    coord.sql("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (coord.port,), db=formation.DB)
    for w in nodes[1:]:
        coord.sql("SELECT citus_add_node('127.0.0.1', %s)", (w.port,), db=formation.DB)
    coord.sql("CREATE EXTENSION workflow_ext", db=formation.DB)
    coord.sql("SELECT workflow_ext.distribute()", db=formation.DB)
    with coord.connect(formation.DB) as c:
        c.execute(PLAIN)
    return base, nodes


def appends(coord, kind, clients, seconds, round_no):
    """Events/s of `clients` sessions doing step lifecycles for `seconds`."""
    done = [0] * clients
    stop = threading.Event()

    def client(k):
        run = f"{kind}_{clients}_{round_no}_{k}"
        with coord.connect(formation.DB) as c:
            seq = 0
            if kind == "ext":
                c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))
                c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))
            else:
                for t in ("run_created", "run_started"):
                    seq += 1
                    c.execute("INSERT INTO bench_plain (id, run_id, seq, type) VALUES (%s, %s, %s, %s)",
                              (f"{run}_{seq}", run, seq, t))
            step = 0
            while not stop.is_set():
                step += 1
                corr = f"s{step}"
                for t in ("step_created", "step_started", "step_completed"):
                    if kind == "ext":
                        c.execute("SELECT workflow_ext.append_event(%s, %s, %s)", (run, corr, t))
                    else:
                        seq += 1
                        c.execute("INSERT INTO bench_plain (id, run_id, seq, type, correlation_id) "
                                  "VALUES (%s, %s, %s, %s, %s)", (f"{run}_{seq}", run, seq, t, corr))
                    done[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / seconds


def hooks(coord, with_token, clients, seconds, round_no):
    """Events/s of `clients` sessions creating and disposing hooks."""
    done = [0] * clients
    stop = threading.Event()

    def client(k):
        run = f"hooks_{with_token}_{clients}_{round_no}_{k}"
        with coord.connect(formation.DB) as c:
            c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (run,))
            c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (run,))
            hook = 0
            while not stop.is_set():
                hook += 1
                corr = f"h{hook}"
                payload = f'{{"token": "{run}_{hook}"}}' if with_token else "{}"
                c.execute("SELECT workflow_ext.append_event(%s, %s, 'hook_created', %s::jsonb)", (run, corr, payload))
                c.execute("SELECT workflow_ext.append_event(%s, %s, 'hook_disposed')", (run, corr))
                done[k] += 2

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / seconds


def scan_rate(coord, events):
    t0 = time.monotonic()
    rows = coord.sql("SELECT count(*) FROM workflow_ext.scan()", db=formation.DB)
    elapsed = time.monotonic() - t0
    assert rows == [(0,)], f"the benchmark's log has anomalies: {rows}"
    return events / elapsed, elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    base, nodes = start()
    coord = nodes[0]
    try:
        print("appends through the coordinator (events/s), A = append_event into the distributed "
              "own log, B = plain INSERT into a distributed table of the same shape")
        for clients in (1, 4):
            a, b = [], []
            for r in range(args.rounds):
                a.append(appends(coord, "ext", clients, args.seconds, r))
                b.append(appends(coord, "plain", clients, args.seconds, r))
            ma, mb = sorted(a)[len(a) // 2], sorted(b)[len(b) // 2]
            print(f"  {clients} client(s): A {ma:,.0f}  B {mb:,.0f}  A/B {ma / mb:.2f}  "
                  f"(rounds A {[round(x) for x in a]}, B {[round(x) for x in b]})")

        print("hook lifecycles through the coordinator (events/s), A = with a token (held across "
              "nodes), B = without")
        for clients in (1, 4):
            a, b = [], []
            for r in range(args.rounds):
                a.append(hooks(coord, True, clients, args.seconds, r))
                b.append(hooks(coord, False, clients, args.seconds, r))
            ma, mb = sorted(a)[len(a) // 2], sorted(b)[len(b) // 2]
            print(f"  {clients} client(s): A {ma:,.0f}  B {mb:,.0f}  A/B {ma / mb:.2f}  "
                  f"(rounds A {[round(x) for x in a]}, B {[round(x) for x in b]})")

        # A log of whole runs (8 steps each), appended through the trigger.
        runs = max(1, args.events // 27)
        t0 = time.monotonic()
        with coord.connect(formation.DB) as c:
            c.execute("""
                INSERT INTO workflow_ext.events (run_id, correlation_id, type)
                SELECT format('scan_%%s', r), CASE WHEN p BETWEEN 3 AND 26 THEN format('s%%s', (p - 3) / 3) END,
                       (CASE WHEN p = 1 THEN 'run_created' WHEN p = 2 THEN 'run_started' WHEN p = 27 THEN 'run_completed'
                             ELSE (ARRAY['step_created', 'step_started', 'step_completed'])[(p - 3) %% 3 + 1] END)::workflow_ext.event_type
                  FROM generate_series(1, %s) r, generate_series(1, 27) p ORDER BY r, p""", (runs,))
        load = time.monotonic() - t0
        loaded = runs * 27
        events = coord.sql("SELECT count(*) FROM workflow_ext.events", db=formation.DB)[0][0]
        print(f"loaded {loaded:,} events by one INSERT … SELECT through the coordinator in {load:.1f} s "
              f"({loaded / load:,.0f} events/s); the log holds {events:,}")
        two, t2 = scan_rate(coord, events)
        # Every shard onto worker1.
        for (shard,) in coord.sql(
                "SELECT shardid FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid) "
                "WHERE logicalrelid = 'workflow_ext.events'::regclass AND nodeport = %s", (nodes[2].port,),
                db=formation.DB):
            coord.sql("SELECT citus_move_shard_placement(%s, '127.0.0.1', %s, '127.0.0.1', %s, "
                      "shard_transfer_mode => 'block_writes')", (shard, nodes[2].port, nodes[1].port),
                      db=formation.DB)
        one, t1 = scan_rate(coord, events)
        print(f"scan() of {events:,} events: 2 workers {two:,.0f} events/s ({t2:.2f} s), "
              f"1 worker {one:,.0f} events/s ({t1:.2f} s), 2/1 {two / one:.2f}")
    finally:
        for n in reversed(nodes):
            n.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
