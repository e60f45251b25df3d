"""Complete, legal run lifecycles for workflow_ext, appended through its
functions: one list of events per run, written a few events per
transaction."""
import json
import threading
import time

ENDINGS = ("run_completed", "run_failed", "run_cancelled")


def lifecycle(run, steps, ending="run_completed", token=None):
    """(correlation_id, type, payload, creation?) for one whole run: steps that
    start, retry, start again and complete (the last fails), a wait, a hook
    that receives and is disposed, then the run's terminal (None: unfinished)."""
    ev = [(None, "run_created", None, True), (None, "run_started", None, False)]
    for s in range(steps):
        c = f"step_{s:03d}"
        last = "step_failed" if s == steps - 1 and steps > 1 else "step_completed"
        ev += [(c, "step_created", {"stepName": f"s{s}"}, True), (c, "step_started", None, False),
               (c, "step_retrying", None, False), (c, "step_started", None, False),
               (c, last, {"output": s}, False)]
    ev += [("wait_1", "wait_created", None, True), ("wait_1", "wait_completed", None, False),
           ("hook_1", "hook_created", {"token": token or f"tok-{run}"}, True),
           ("hook_1", "hook_received", {"n": 1}, False), ("hook_1", "hook_disposed", None, False)]
    if ending:
        ev.append((None, ending, None, False))
    return ev


def append(cur, run, event):
    corr, typ, payload, creation = event
    p = json.dumps(payload) if payload is not None else None
    fn = "append_suspension_event" if creation else "append_event"
    return cur.execute(f"SELECT seq FROM workflow_ext.{fn}(%s, %s, %s, %s)", (run, corr, typ, p)).fetchone()[0]


def write_runs(conn, runs, per_txn=5, deadline=None):
    """Append every run's events, round-robin over the runs (so they are all in
    flight together), `per_txn` events per transaction. Returns the count."""
    queues = {run: list(events) for run, events in runs.items()}
    n = 0
    while queues:
        for run in list(queues):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("writer ran past its deadline")
            batch, queues[run] = queues[run][:per_txn], queues[run][per_txn:]
            with conn.transaction():
                for e in batch:
                    append(conn, run, e)
                    n += 1
            if not queues[run]:
                del queues[run]
    return n


class Writer(threading.Thread):
    """write_runs on its own connection, in a thread; .error holds a failure."""

    def __init__(self, connect, runs, timeout=120):
        super().__init__(daemon=True)
        self.connect, self.runs, self.timeout = connect, runs, timeout
        self.count, self.error, self.seconds = 0, None, None

    def run(self):
        t0 = time.monotonic()
        try:
            with self.connect() as conn:
                self.count = write_runs(conn, self.runs, deadline=t0 + self.timeout)
        except BaseException as e:  # reported by the test
            self.error = e
        self.seconds = time.monotonic() - t0


EVENT_COLUMNS = "id, run_id, seq, type::text, correlation_id, payload::text, created_at"


def rows(conn, table="workflow_ext.events", where=""):
    return conn.execute(f"SELECT {EVENT_COLUMNS} FROM {table} {where} ORDER BY run_id, seq").fetchall()


def disorder_heap(conn, tries=20):
    """Make run 'keep' hold a row before its predecessor in the heap of
    workflow_ext.events (what a table copy or COPY TO reads in): finished runs
    between its rows are purged and vacuumed, and its next appends reuse the
    freed space. Returns the run's seqs in heap order."""
    write_runs(conn, {"keep": lifecycle("keep", 0, ending=None)[:2]})           # seq 1, 2 at the start
    write_runs(conn, {f"old_{i}": lifecycle(f"old_{i}", 6) for i in range(8)})  # a few pages, finished
    write_runs(conn, {"keep": [("step_a", "step_created", None, True)]})        # seq 3 after them
    assert conn.execute("SELECT workflow_ext.purge_runs('0 s')").fetchone()[0] == 8
    conn.execute("VACUUM workflow_ext.events")
    seqs = []
    for k in range(tries):   # bounded: each append goes where the free space map points
        write_runs(conn, {"keep": [(f"step_{k:02d}", "step_created", None, True)]})
        seqs = [r[0] for r in conn.execute(
            "SELECT seq FROM workflow_ext.events WHERE run_id = 'keep' ORDER BY ctid").fetchall()]
        if seqs != sorted(seqs):
            return seqs
    raise AssertionError(f"could not place a row before its predecessor in the heap: {seqs}")
