"""replay and scan stream: a backend's peak memory grows no more auditing
2,000,000 events than reading the same rows in the same order with a plain
query (issue #11, defect 1: each fetched batch used to stay allocated until
the function returned, ~400 MB for 2M events).

Peak memory is the backend's VmHWM (/proc/<pg_backend_pid()>/status; the
tests run as root on the server's machine), read on a fresh connection just
before and just after the one measured query. Every measured connection
first runs the same warm-up: JIT and parallel query off, the library loaded
and catalog caches filled on a tiny table of the same shape, and one
sequential pass over the source table, so the shared buffers a scan of it
touches are already counted in the backend's resident set before the
query, not in its growth. What is left to differ between the measured
queries is the private memory they hold their rows in.
Both sources are DevKit-shaped tables that nothing checks (no trigger):
one run of 2,000,000 events for replay (no seq column: replayed in id
order), 20,000 runs of 100 events each for scan (with a seq column)."""
import time

import pytest

from conftest import FAULTS, connect
from lib.cluster import fresh_database

EVENTS = 2_000_000
SCAN_RUNS = 20_000
SCAN_RUN_EVENTS = EVENTS // SCAN_RUNS
SLACK_MB = 32
MB = 1024  # VmHWM is in kB

DEVKIT_COLUMNS = ("id varchar PRIMARY KEY, type varchar, correlation_id varchar, "
                  "created_at timestamp DEFAULT now(), run_id varchar")

# A valid history whatever its length (README, Lifecycles): the run is
# created and started, one hook is created, and every further event is a
# hook_received on that active hook. One entity: the auditor's own state
# stays a few hundred bytes, so any growth is the rows themselves.
TYPE_AT = ("CASE {p} WHEN 1 THEN 'run_created' WHEN 2 THEN 'run_started' "
           "WHEN 3 THEN 'hook_created' ELSE 'hook_received' END")
CORR_AT = "CASE WHEN {p} <= 2 THEN NULL ELSE 'h' END"

WARM_UP = [
    "SET jit = off",
    "SET max_parallel_workers_per_gather = 0",
    "SELECT count(*) FROM workflow_ext.replay('wrun_warm', 'mem_tiny')",
    "SELECT count(*) FROM workflow_ext.scan('mem_tiny')",
    "SELECT sum(length(id)) FROM (SELECT id FROM mem_tiny ORDER BY run_id, seq, id::text COLLATE \"C\") s",
    # The measured query's sequential scan hits the same cached pages.
    "SELECT count(*) FROM {table}",
]


@pytest.fixture(scope="module")
def memdb(server):
    """One database for both measurements, its two big tables built with
    a few INSERT … SELECT generate_series (no index but the primary key,
    added after the load)."""
    with fresh_database("wfx_fault_mem", server=FAULTS.server()) as name:
        yield build(name)


def build(name):
    """memdb's tables, in database `name` (which it returns)."""
    t0 = time.time()
    with connect(name) as c:
        c.execute("SET max_parallel_maintenance_workers = 0")
        c.execute(f"CREATE TABLE mem_tiny ({DEVKIT_COLUMNS}, seq bigint)")
        c.execute("INSERT INTO mem_tiny (id, type, correlation_id, run_id, seq) "
                  "VALUES ('e1', 'run_created', NULL, 'wrun_warm', 1)")
        c.execute(f"CREATE TABLE mem_replay ({DEVKIT_COLUMNS.replace(' PRIMARY KEY', '')})")
        c.execute(f"""INSERT INTO mem_replay (id, type, correlation_id, run_id)
                      SELECT 'wevt_' || lpad(n::text, 8, '0'), {TYPE_AT.format(p='n')},
                             {CORR_AT.format(p='n')}, 'wrun_big'
                        FROM generate_series(1, {EVENTS}) n""")
        c.execute("ALTER TABLE mem_replay ADD PRIMARY KEY (id)")
        c.execute(f"CREATE TABLE mem_scan ({DEVKIT_COLUMNS.replace(' PRIMARY KEY', '')}, seq bigint)")
        c.execute(f"""INSERT INTO mem_scan (id, type, correlation_id, run_id, seq)
                      SELECT 'wevt_' || lpad(r::text, 5, '0') || lpad(p::text, 3, '0'), {TYPE_AT.format(p='p')},
                             {CORR_AT.format(p='p')}, 'wrun_' || lpad(r::text, 5, '0'), p
                        FROM generate_series(1, {SCAN_RUNS}) r, generate_series(1, {SCAN_RUN_EVENTS}) p""")
        c.execute("ALTER TABLE mem_scan ADD PRIMARY KEY (id)")
        c.execute("VACUUM (ANALYZE) mem_tiny, mem_replay, mem_scan")
        sizes = c.execute("SELECT pg_size_pretty(pg_total_relation_size('mem_replay')), "
                          "pg_size_pretty(pg_total_relation_size('mem_scan'))").fetchone()
    print(f"FIGURE: memory test tables: replay source {EVENTS:,} events in one run ({sizes[0]}), "
          f"scan source {SCAN_RUNS * SCAN_RUN_EVENTS:,} events in {SCAN_RUNS:,} runs ({sizes[1]}), "
          f"built in {time.time() - t0:.1f} s", flush=True)
    return name


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError as e:
        pytest.skip(f"cannot read the backend's /proc/{pid}/status (run as root on the server's machine): {e}")
    pytest.skip("no VmHWM in /proc/<pid>/status")


def peak_growth(db, table, sql):
    """(growth of the backend's VmHWM in kB, seconds, result) for one query
    reading `table`, on a fresh, warmed-up connection."""
    with connect(db) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        for w in WARM_UP:
            c.execute(w.format(table=table))
        before = vm_hwm_kb(pid)
        t0 = time.time()
        result = c.execute(sql).fetchone()[0]
        seconds = time.time() - t0
        after = vm_hwm_kb(pid)
    return after - before, seconds, result


def compare(db, what, table, plain_sql, audit_sql):
    plain, plain_s, plain_sum = peak_growth(db, table, plain_sql)
    audit, audit_s, anomalies = peak_growth(db, table, audit_sql)
    print(f"FIGURE: {what}: backend peak memory (VmHWM) grew {audit / MB:.1f} MB "
          f"({audit_s:.1f} s, {anomalies} anomaly rows) vs {plain / MB:.1f} MB for a plain ordered read of "
          f"the same rows ({plain_s:.1f} s); allowed: plain + {SLACK_MB} MB = {plain / MB + SLACK_MB:.1f} MB",
          flush=True)
    assert plain_sum and plain_sum > 0, "the plain read read nothing"
    assert audit <= plain + SLACK_MB * MB, (
        f"{what} does not stream: peak memory grew {audit / MB:.1f} MB, "
        f"a plain ordered read of the same rows {plain / MB:.1f} MB (allowed +{SLACK_MB} MB)")
    assert anomalies == 0, f"{what}: the generated history is valid, yet {anomalies} anomaly rows"


def test_replay_memory_is_flat(memdb):
    """replay of one 2,000,000-event run vs the same rows read in replay
    order (the DevKit's: id, bytewise) and deformed."""
    compare(memdb, f"replay of one {EVENTS:,}-event run", "mem_replay",
            """SELECT sum(length(id) + length(type) + coalesce(length(correlation_id), 0))
                 FROM (SELECT id::text AS id, type::text AS type, correlation_id::text AS correlation_id
                         FROM mem_replay WHERE run_id = 'wrun_big' ORDER BY id::text COLLATE "C") s""",
            "SELECT count(*) FROM workflow_ext.replay('wrun_big', 'mem_replay')")


def test_scan_memory_is_flat(memdb):
    """scan of 2,000,000 events over 20,000 runs vs the same rows read in
    scan order (run, seq, id) and deformed."""
    compare(memdb, f"scan of {SCAN_RUNS * SCAN_RUN_EVENTS:,} events in {SCAN_RUNS:,} runs", "mem_scan",
            """SELECT sum(length(id) + length(type) + coalesce(length(correlation_id), 0) + length(run_id) + seq)
                 FROM (SELECT id::text AS id, type::text AS type, correlation_id::text AS correlation_id,
                              run_id::text AS run_id, seq
                         FROM mem_scan ORDER BY run_id, seq, id::text COLLATE "C") s""",
            "SELECT count(*) FROM workflow_ext.scan('mem_scan')")
