"""A workload for the Citus suite: writer threads appending step lifecycles
to shared runs of the distributed own log, through the nodes they are given,
recording every append the database acknowledged. `check()` then proves
that each acknowledged append is stored once, where it was told, and that
every run's seqs are dense and its run row agrees."""
import random
import threading
import time

import psycopg

from conftest import DB


class Load:
    def __init__(self, formation, runs, nodes=None, writers=8, prefix="load"):
        self.f = formation
        self.nodes = nodes or [formation.coordinator]
        self.runs = [f"{prefix}{i:03d}" for i in range(runs)]
        self.writers = writers
        self.acked = []          # (run_id, correlation_id, type, event_id, seq)
        self.failures = []       # repr of every error a writer saw
        self.calls = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = []
        with formation.connect() as c:
            for r in self.runs:
                c.execute("SELECT workflow_ext.append_suspension_event(%s, NULL, 'run_created')", (r,))
                c.execute("SELECT workflow_ext.append_event(%s, NULL, 'run_started')", (r,))

    def _writer(self, k):
        rng = random.Random(k)
        node = self.nodes[k % len(self.nodes)]
        step = 0
        with psycopg.connect(node.conninfo(DB), autocommit=True) as c:
            while not self.stop.is_set():
                run = rng.choice(self.runs)
                corr = f"w{k}s{step}"
                step += 1
                for sql, typ in (
                    ("SELECT * FROM workflow_ext.append_suspension_event(%s, %s, 'step_created')", "step_created"),
                    ("SELECT * FROM workflow_ext.append_event(%s, %s, 'step_started')", "step_started"),
                    ("SELECT * FROM workflow_ext.append_event(%s, %s, 'step_completed', '{\"ok\": 1}')",
                     "step_completed"),
                ):
                    try:
                        row = c.execute(sql, (run, corr)).fetchone()
                    except psycopg.Error as e:
                        with self.lock:
                            self.failures.append(f"{type(e).__name__}: {e}".splitlines()[0])
                        break
                    with self.lock:
                        self.calls += 1
                        self.acked.append((run, corr, typ, row[0], row[1]))

    def start(self):
        self.threads = [threading.Thread(target=self._writer, args=(k,), daemon=True)
                        for k in range(self.writers)]
        for t in self.threads:
            t.start()
        return self

    def wait_for(self, calls, timeout=60):
        deadline = time.monotonic() + timeout
        while self.calls < calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.calls >= calls, f"only {self.calls} appends in {timeout}s"

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def check(self):
        """Every acknowledged append stored once, with the seq and id it was
        told; each run dense 1..n; its run row's last_seq = n."""
        stored = {}
        for run_id, corr, typ, eid, seq in self.f.sql(
                "SELECT run_id, correlation_id, type::text, id, seq FROM workflow_ext.events "
                "WHERE run_id = ANY(%s)", (self.runs,)):
            key = (run_id, corr, typ)
            assert key not in stored, f"stored twice: {key}"
            stored[key] = (eid, seq)
        for run_id, corr, typ, eid, seq in self.acked:
            assert stored.get((run_id, corr, typ)) == (eid, seq), f"acknowledged, not stored as told: {run_id} {corr} {typ}"
        dense = self.f.sql(
            "SELECT e.run_id, count(*), min(e.seq), max(e.seq), r.last_seq FROM workflow_ext.events e "
            "LEFT JOIN workflow_ext.distributed_runs r ON r.run_id = e.run_id AND r.log = 'workflow_ext.events' "
            "WHERE e.run_id = ANY(%s) GROUP BY e.run_id, r.last_seq", (self.runs,))
        assert len(dense) == len(self.runs)
        for run_id, n, lo, hi, last in dense:
            assert (lo, hi, last) == (1, n, n), f"{run_id}: {n} rows, seqs {lo}..{hi}, run row {last}"
