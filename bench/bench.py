#!/usr/bin/env python3
"""Side-by-side benchmarks of workflow_ext (run by `make bench`).

Every comparison is A vs B measured in the same run, alternating A, B, A, B …
so that drift of a shared machine falls on both sides; the figure reported is
the ratio of the two medians. Absolute numbers are printed too, but only the
ratios mean anything across machines.

Usage: bench/bench.py [--smoke] [--out BENCHMARKS.md]
  --smoke  tiny sizes and 1-second rounds: checks the scripts still work (CI).

Needs a running cluster with the extension installed (make bench does both)
and PGHOST/PGPORT/PGUSER in the environment.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from netdelay import DelayProxy
import plots

DB = "wfx_bench"
HERE = os.path.dirname(os.path.abspath(__file__))
# psql and pgbench of the PostgreSQL under test: scripts/pg.sh names it (PG=…).
BIN = subprocess.run(["bash", os.path.join(HERE, "..", "scripts", "pg.sh"), "get", "PG_BIN"],
                     capture_output=True, text=True, check=True).stdout.strip()


def psql(sql, db=DB, quiet=True):
    out = subprocess.run(
        [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"psql failed: {sql[:200]}\n{out.stderr}")
    return out.stdout.strip()


def psql_file(path, db=DB):
    out = subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"psql -f {path} failed:\n{out.stderr}")


def pgbench(script, clients, seconds, variables=None, via=None):
    """Runs one pgbench round; returns (tps, mean latency ms). `via`: (host,
    port) to connect through instead of the environment's socket."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    args = [f"{BIN}/pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(seconds), "-f", path]
    for k, v in (variables or {}).items():
        args += ["-D", f"{k}={v}"]
    if via:
        args += ["-h", via[0], "-p", str(via[1])]
    out = subprocess.run(args + [DB], capture_output=True, text=True)
    os.unlink(path)
    if out.returncode != 0 or "tps = " not in out.stdout:
        sys.exit(f"pgbench failed:\n{script}\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if failed and int(failed.group(1)) > 0:
        sys.exit(f"pgbench had failed transactions:\n{script}\n{out.stdout}")
    return tps, lat


def alternate(scripts, clients, seconds, rounds, variables=None, via=None):
    """Runs the scripts in turn, `rounds` times; returns each one's median tps."""
    tps = [[] for _ in scripts]
    for _ in range(rounds):
        for i, script in enumerate(scripts):
            tps[i].append(pgbench(script, clients, seconds, variables, via)[0])
    return tuple(statistics.median(t) for t in tps)


def side_by_side(a, b, clients, seconds, rounds, variables=None, via=None):
    """Alternates A and B; returns (median tps A, median tps B)."""
    return alternate([a, b], clients, seconds, rounds, variables, via)


# The pgbench scripts. `prefix` keeps each workload's keys apart; `runs` and
# `keys` are the ranges the run and the key are drawn from.
CREATION_CONFLICT = ("ON CONFLICT (run_id, correlation_id, type) WHERE type IN "
                     "('run_created','step_created','wait_created','hook_created') DO NOTHING")
KEYS = 1000000000000


def draw(runs, keys):
    return f"\\set r random(1, {runs})\n\\set k random(1, {keys})\n"


def suspension_script(prefix, runs=1000, keys=KEYS, function="workflow_ext.append_suspension_event"):
    """One new-key (or, with few keys, mostly existing-key) creation call."""
    return draw(runs, keys) + f"SELECT * FROM {function}('run-' || :r, '{prefix}_' || :k, 'step_created');\n"


def raw_insert_sql(prefix, on_conflict=True):
    """The raw limit: one INSERT into raw_events, a sequence for seq."""
    return ("INSERT INTO raw_events (id, run_id, seq, type, correlation_id) "
            f"VALUES (workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), 'step_created', '{prefix}_' || :k)"
            + (f" {CREATION_CONFLICT}" if on_conflict else ""))


def wal_per_call(script, calls):
    """WAL per call, each call its own transaction (1 client), split by
    pg_waldump --stats into record bytes and full-page-image bytes. A
    CHECKPOINT first, so each side pays the page images of the pages it
    touches itself (before, they fell on whichever side followed the
    checkpointer's timer, and the figure swung by 2x). Returns
    (record bytes per call, FPI bytes per call)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    psql("CHECKPOINT")
    before = psql("SELECT pg_current_wal_insert_lsn()")
    subprocess.run([f"{BIN}/pgbench", "-n", "-M", "prepared", "-c", "1", "-t", str(calls), "-f", path, DB],
                   capture_output=True, check=True)
    after = psql("SELECT pg_current_wal_insert_lsn()")
    os.unlink(path)
    wal_dir = os.path.join(psql("SHOW data_directory"), "pg_wal")
    out = subprocess.run([f"{BIN}/pg_waldump", "-p", wal_dir, "-s", before, "-e", after, "--stats"],
                         capture_output=True, text=True)
    total = re.search(r"^Total\s+(\d+)\s+(\d+) \[[\d.]+%\]\s+(\d+) \[", out.stdout, re.M)
    # pg_waldump may also complain about the record at the end position (not
    # yet complete when it reads it) and exit 1 after printing the stats of
    # everything before it, which is all that is asked.
    if not total:
        sys.exit(f"pg_waldump failed:\n{out.stdout}\n{out.stderr}")
    return int(total.group(2)) / calls, int(total.group(3)) / calls


def timed(sql, repeat):
    """Median time (s) of a statement as psql's \\timing reports it (the
    round trip of the statement alone, not psql's start), repeated."""
    times = []
    for _ in range(repeat):
        out = subprocess.run([f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", DB,
                              "-c", "\\timing on", "-c", sql], capture_output=True, text=True)
        found = re.search(r"^Time: ([\d.]+) ms", out.stdout, re.M)
        if out.returncode != 0 or not found:
            sys.exit(f"psql failed: {sql[:200]}\n{out.stdout}\n{out.stderr}")
        times.append(float(found.group(1)) / 1000)
    return statistics.median(times)


def build_floor_trigger():
    """bench/floor_trigger.c built with the server's pg_config into a
    directory the server can read; returns the library's path."""
    pg_config = subprocess.run(["bash", os.path.join(HERE, "..", "scripts", "pg.sh"), "get", "PG_CONFIG"],
                               capture_output=True, text=True, check=True).stdout.strip()

    def config(flag):
        return subprocess.run([pg_config, flag], capture_output=True, text=True, check=True).stdout.strip()

    out_dir = tempfile.mkdtemp(prefix="wfx-bench-")
    os.chmod(out_dir, 0o755)
    lib = os.path.join(out_dir, "floor_trigger.so")
    cc = config("--cc").split()
    if not shutil.which(cc[0]):  # the compiler PostgreSQL was built with may be absent here
        cc = ["cc"]
    cmd = (cc + config("--cflags").split() + config("--cflags_sl").split()
           + ["-I" + config("--includedir-server"), "-shared", "-o", lib, os.path.join(HERE, "floor_trigger.c")])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"building bench/floor_trigger.c failed:\n{' '.join(cmd)}\n{out.stderr}")
    os.chmod(lib, 0o755)
    return lib


def machine():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = psql("SHOW server_version", db="postgres")
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, PostgreSQL {pg}"


SECTIONS = ("append", "duplicate", "lifecycle", "client_side", "plpgsql", "network", "batch", "replay", "replay_big",
            "scan", "space", "copy", "insert", "one_run")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="", help="comma-separated sections of " + ", ".join(SECTIONS))
    opt = ap.parse_args()
    smoke = opt.smoke
    only = set(filter(None, opt.only.split(",")))
    if only - set(SECTIONS):
        sys.exit(f"unknown section(s): {', '.join(sorted(only - set(SECTIONS)))}")

    def want(section):
        return not only or section in only

    # Seconds per pgbench round (WFX_BENCH_SECS / WFX_BENCH_SWEEP_SECS
    # override them; the header of BENCHMARKS.md says what was used).
    secs = 1 if smoke else int(os.environ.get("WFX_BENCH_SECS", 6))
    sweep_secs = 1 if smoke else int(os.environ.get("WFX_BENCH_SWEEP_SECS", 5))
    rounds = 1 if smoke else 3
    sizes = [1000, 2000] if smoke else [1000, 10000, 51200]
    big_run = 5000 if smoke else 1_000_000
    scan_events = 20000 if smoke else 1_000_000
    sweep_clients = (1, 4) if smoke else (1, 2, 4, 8)
    batch_sizes = (1, 10) if smoke else (1, 10, 25, 50, 100)

    psql(f"DROP DATABASE IF EXISTS {DB}", db="postgres")
    psql(f"CREATE DATABASE {DB}", db="postgres")
    psql_file(os.path.join(HERE, "setup.sql"))
    psql_file(os.path.join(HERE, "plpgsql.sql"))
    psql_file(os.path.join(HERE, "plpgsql_replay.sql"))
    rows = []  # (workload, A, B, A value, B value, ratio, unit)
    # What the plots draw (bench/plots.py), written next to BENCHMARKS.md.
    series = {"sweep": {}, "replay": [], "batch": []}

    def row(name, a_name, b_name, a, b, unit="tps"):
        ratio = a / b if b else float("nan")
        rows.append((name, a_name, b_name, a, b, ratio, unit))
        print(f"{name:58s} {a_name}={a:,.1f} {b_name}={b:,.1f} {unit}  ratio={ratio:.2f}", flush=True)

    # 1. New keys, many runs, 1..8 clients: append_suspension_event and
    #    append_event vs a raw INSERT … ON CONFLICT DO NOTHING into a table of
    #    the same shape and indexes (no trigger, no seq care), and two floors
    #    of a dense per-run seq in the same alternation:
    #    - "floor": bump a run row and insert, in one statement (what the
    #      extension's lock is, and no more);
    #    - "lock floor": lock the run row (FOR UPDATE, no new row version)
    #      and take max(seq) + 1 from the (run_id, seq) index, in one
    #      statement. Not a correct writer at more than one client (the max
    #      is read in the statement's snapshot; a collision is skipped by
    #      ON CONFLICT): it is the cheapest a row-lock design could be.
    #    - "advisory floor": the same with a transaction-scoped advisory lock
    #      on the run id's hash instead of a run row: the first
    #      direction. Also not a correct writer, and one that a COPY across
    #      100,000 runs would take 100,000 locks with (the lock table holds
    #      max_locks_per_transaction × max_connections): its cheapest.
    if want("append"):
        v = {"runs": 1000}
        scripts = {
            "append_suspension": suspension_script("step", runs=":runs"),
            "append_event": draw(":runs", KEYS)
            + "SELECT * FROM workflow_ext.append_event('run-' || :r, 'ev_' || :k, 'step_created');\n",
            "raw_insert": draw(":runs", KEYS) + raw_insert_sql("step") + ";\n",
            "floor": draw(":runs", KEYS)
            + "WITH u AS (UPDATE floor_runs SET last_seq = last_seq + 1 WHERE run_id = 'run-' || :r "
            "RETURNING last_seq) "
            "INSERT INTO floor_events (id, run_id, seq, type, correlation_id) "
            "SELECT workflow_ext.new_event_id(), 'run-' || :r, u.last_seq, 'step_created', 'step_' || :k "
            f"FROM u {CREATION_CONFLICT};\n",
            "lock_floor": draw(":runs", KEYS)
            + "WITH l AS (SELECT run_id FROM floor_runs WHERE run_id = 'run-' || :r FOR UPDATE) "
            "INSERT INTO lock_floor_events (id, run_id, seq, type, correlation_id) "
            "SELECT workflow_ext.new_event_id(), l.run_id, "
            "coalesce((SELECT max(e.seq) FROM lock_floor_events e WHERE e.run_id = l.run_id), 0) + 1, "
            "'step_created', 'step_' || :k FROM l ON CONFLICT DO NOTHING;\n",
            "advisory_floor": draw(":runs", KEYS)
            + "WITH l AS (SELECT pg_advisory_xact_lock(hashtextextended('run-' || :r, 0))) "
            "INSERT INTO adv_floor_events (id, run_id, seq, type, correlation_id) "
            "SELECT workflow_ext.new_event_id(), 'run-' || :r, "
            "coalesce((SELECT max(e.seq) FROM adv_floor_events e WHERE e.run_id = 'run-' || :r), 0) + 1, "
            "'step_created', 'step_' || :k FROM l ON CONFLICT DO NOTHING;\n",
            "fn_insert": draw(":runs", KEYS) + "SELECT * FROM fn_insert('run-' || :r, 'step_' || :k);\n",
            "fn_floor": draw(":runs", KEYS) + "SELECT * FROM fn_floor('run-' || :r, 'step_' || :k);\n",
            "fn_trig_floor": draw(":runs", KEYS) + "SELECT * FROM fn_trig_floor('run-' || :r, 'step_' || :k);\n",
        }
        names = list(scripts)
        for clients in sweep_clients:
            tps = dict(zip(names, alternate([scripts[n] for n in names], clients, sweep_secs, rounds, v)))
            series["sweep"][clients] = tps
            print(f"sweep {clients} client(s): " + ", ".join(f"{k} {v:,.1f}" for k, v in tps.items()), flush=True)
            if clients in (1, 4):
                raw = tps["raw_insert"]
                row(f"new key, {clients} client(s), many runs", "append_suspension", "raw_insert",
                    tps["append_suspension"], raw)
                row(f"step_created via append_event, {clients} client(s)", "append_event", "raw_insert",
                    tps["append_event"], raw)
                row(f"dense-seq floor, {clients} client(s)", "floor", "raw_insert", tps["floor"], raw)
                row(f"row-lock floor, {clients} client(s)", "lock_floor", "raw_insert", tps["lock_floor"], raw)
                row(f"advisory-lock floor, {clients} client(s)", "advisory_floor", "raw_insert",
                    tps["advisory_floor"], raw)
                row(f"new key vs the floor, {clients} client(s)", "append_suspension", "floor",
                    tps["append_suspension"], tps["floor"])
                row(f"raw insert in a function, {clients} client(s)", "fn_insert", "raw_insert",
                    tps["fn_insert"], raw)
                row(f"dense-seq floor in a function, {clients} client(s)", "fn_floor", "raw_insert",
                    tps["fn_floor"], raw)
                row(f"new key vs the floor in a function, {clients} client(s)", "append_suspension", "fn_floor",
                    tps["append_suspension"], tps["fn_floor"])
                row(f"trigger floor in a function vs the floor in a function, {clients} client(s)",
                    "fn_trig_floor", "fn_floor", tps["fn_trig_floor"], tps["fn_floor"])
                row(f"new key vs the trigger floor in a function, {clients} client(s)", "append_suspension",
                    "fn_trig_floor", tps["append_suspension"], tps["fn_trig_floor"])
        # Contention on one run: appends to a run are serialized by its lock.
        ta, tb = side_by_side(suspension_script("one", runs=1), draw(1, KEYS) + raw_insert_sql("one") + ";\n",
                              4, sweep_secs, rounds)
        row("new key, 4 client(s), one run", "append_suspension", "raw_insert", ta, tb)

    # 2. Duplicate path: the key exists. vs an indexed SELECT of that row.
    if want("duplicate"):
        a = ("\\set k random(1, 1000)\n"
             "SELECT * FROM workflow_ext.append_suspension_event('dup-run', 'step_' || :k, 'step_created');\n")
        b = ("\\set k random(1, 1000)\n"
             "SELECT id, seq FROM workflow_ext.events WHERE run_id = 'dup-run' AND correlation_id = 'step_' || :k "
             "AND type = 'step_created';\n")
        c = ("\\set k random(1, 1000)\n"
             "SELECT * FROM fn_select('dup-run', 'step_' || :k);\n")
        for clients in (1, 4):
            ta, tb, tc = alternate([a, b, c], clients, secs, rounds)
            row(f"existing key, {clients} client(s)", "append_suspension", "indexed_select", ta, tb)
            row(f"indexed SELECT in a function, {clients} client(s)", "fn_select", "indexed_select", tc, tb)

    # 3. A step lifecycle (created, started, completed) through append_event vs
    #    raw inserts of the same three events.
    if want("lifecycle"):
        a = (draw(1000, KEYS) + "BEGIN;\n"
             "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_created');\n"
             "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_started');\n"
             "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_completed');\nCOMMIT;\n")
        b = (draw(1000, KEYS) + "BEGIN;\n"
             + "".join(
                 "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) VALUES "
                 f"(workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), '{t}', 'life_' || :k);\n"
                 for t in ("step_created", "step_started", "step_completed"))
             + "COMMIT;\n")
        for clients in (1, 4):
            ta, tb = side_by_side(a, b, clients, secs, rounds)
            row(f"step lifecycle (3 events), {clients} client(s)", "append_event", "raw_insert", ta, tb)

    # 4. The client-side path the DevKit world runs (one transaction: the
    #    entity row with ON CONFLICT DO NOTHING, a look-up of an existing
    #    creation event, the event insert, commit): five round trips, against
    #    one call. Over the local socket here; over a delayed network in 4b.
    def client_side_script(prefix):
        return (draw(1000, KEYS) + "BEGIN;\n"
                f"INSERT INTO cs_steps (step_id, run_id, status) VALUES ('{prefix}_' || :k, 'run-' || :r, 'pending') "
                "ON CONFLICT DO NOTHING;\n"
                f"SELECT id, seq FROM raw_events WHERE run_id = 'run-' || :r AND correlation_id = '{prefix}_' || :k "
                "AND type = 'step_created';\n"
                + raw_insert_sql(prefix) + " RETURNING id;\nCOMMIT;\n")

    if want("client_side"):
        a = suspension_script("cs")
        b = client_side_script("cs")
        for clients in (1, 4):
            ta, tb = side_by_side(a, b, clients, secs, rounds)
            row(f"client-side transaction vs one call, {clients} client(s), local socket",
                "append_suspension", "client_side", ta, tb)

    # 4b. The same over a network: a TCP proxy on loopback delaying each
    #     direction by 0.25 ms (bench/netdelay.py). What it really adds is
    #     measured with SELECT 1 through it and directly.
    if want("network"):
        sock = os.path.join(os.environ["PGHOST"], f".s.PGSQL.{os.environ['PGPORT']}")
        with DelayProxy(sock, delay=0.00025) as proxy:
            via = ("127.0.0.1", proxy.port)

            def added_round_trip():
                # SELECT 1 latency through the proxy minus direct, in seconds.
                probe = 1 if smoke else 2
                direct = pgbench("SELECT 1;\n", 1, probe)[1]
                return (pgbench("SELECT 1;\n", 1, probe, via=via)[1] - direct) / 1000

            added = proxy.calibrate(added_round_trip, rounds=1 if smoke else 7) * 1000
            rows.append(("round trip added by the proxy (SELECT 1 latency, through - direct)", "proxy", "",
                         added, 0, float("nan"), "ms"))
            print(f"proxy adds {added:.3f} ms per round trip (pumps sleep {proxy.sleep * 1e6:.0f} us)", flush=True)
            a = suspension_script("net")
            b = client_side_script("net")
            for clients in (1, 8):
                ta, tb = side_by_side(a, b, clients, secs, rounds, via=via)
                row(f"client-side transaction vs one call, {clients} client(s), 0.25 ms each way",
                    "append_suspension", "client_side", ta, tb)

    # 5. PL/pgSQL with the same semantics (bench/plpgsql.sql, not installed).
    if want("plpgsql"):
        a = suspension_script("pl")
        b = suspension_script("pl", function="plpgsql_append_suspension_event")
        for clients in (1, 4):
            ta, tb = side_by_side(a, b, clients, secs, rounds)
            row(f"new key vs PL/pgSQL version, {clients} client(s)", "append_suspension", "plpgsql", ta, tb)

    # 5b. Batch creation: one suspension of n steps (a new run each time), as
    #     one append_suspension_events call vs n single calls each in its own
    #     transaction vs n single calls in one transaction.
    def suspension_scripts(steps):
        run = "'batch-' || :r || '-' || :client_id"
        head = "\\set r random(1, 1000000000)\n"
        created = f"SELECT workflow_ext.append_suspension_event({run}, NULL, 'run_created');\n"
        singles = "".join(
            f"SELECT * FROM workflow_ext.append_suspension_event({run}, 'step_{i}', 'step_created');\n"
            for i in range(1, steps + 1))
        batch = (head + "BEGIN;\n" + created
                 + f"SELECT count(*) FROM workflow_ext.append_suspension_events({run}, "
                   f"(SELECT array_agg('step_' || i) FROM generate_series(1, {steps}) i), "
                   f"array_fill('step_created'::text, ARRAY[{steps}]));\nCOMMIT;\n")
        return batch, head + created + singles, head + "BEGIN;\n" + created + singles + "COMMIT;\n"

    if want("batch"):
        steps = 50
        a, b, c = suspension_scripts(steps)
        for clients in (1, 4):
            ta, tb, tc = alternate([a, b, c], clients, secs, rounds)
            row(f"{steps}-step suspension, {clients} client(s): events/s", "batch_call", "single_calls_own_tx",
                ta * steps, tb * steps, "events/s")
            row(f"{steps}-step suspension, {clients} client(s): events/s", "batch_call", "single_calls_one_tx",
                ta * steps, tc * steps, "events/s")
        for n in batch_sizes:
            a, b, c = suspension_scripts(n)
            ta, tb, tc = alternate([a, b, c], 1, sweep_secs, max(1, rounds - 1))
            series["batch"].append({"size": n, "batch_call": ta * n, "single_calls_own_tx": tb * n,
                                    "single_calls_one_tx": tc * n})
            print(f"batch size {n}: batch {ta * n:,.0f} events/s, singles {tb * n:,.0f} (own tx), "
                  f"{tc * n:,.0f} (one tx)", flush=True)

    # 6. Replay vs the plain ordered read of the same columns, deformed in the
    #    server (summed lengths: every value is read, nothing is sent), per
    #    run length, and vs the PL/pgSQL replay (bench/plpgsql_replay.sql).
    def ordered_read(run):
        return ("SELECT sum(length(id) + coalesce(length(correlation_id), 0) + length(type::text) + seq) "
                f"FROM (SELECT id, correlation_id, type, seq FROM workflow_ext.events WHERE run_id = '{run}' "
                "ORDER BY seq) s;\n")

    if want("replay"):
        for n in sizes:
            psql(f"SELECT make_run('replay-{n}', {n})")
        for n in sizes:
            a = f"SELECT count(*) FROM workflow_ext.replay('replay-{n}');\n"
            b = ordered_read(f"replay-{n}")
            i = f"SELECT ordered_read_in_index_order('replay-{n}');\n"
            p = f"SELECT count(*) FROM plpgsql_replay('replay-{n}');\n"
            ta, tb, ti, tp = alternate([a, b, i, p], 1, secs, rounds)
            row(f"replay {n:,} events (runs/s)", "replay", "ordered_read", ta, tb, "runs/s")
            row(f"replay {n:,} events vs the read in index order (runs/s)", "replay", "ordered_read_index",
                ta, ti, "runs/s")
            row(f"replay {n:,} events vs PL/pgSQL replay (runs/s)", "replay", "plpgsql_replay", ta, tp, "runs/s")
            rows.append((f"replay {n:,} events: events/s", "replay", "", ta * n, 0, float("nan"), "events/s"))
            series["replay"].append({"events": n, "replay_s": 1 / ta, "ordered_read_s": 1 / tb,
                                     "ordered_read_index_s": 1 / ti})
    # 6b. One long run (about 1M events), timed in one session (a pgbench
    #     round would be one call), grown in transactions of 10,000 events.
    if want("replay_big"):
        psql("SELECT make_run('replay-big', 2)")
        steps, chunk = (big_run - 2) // 3 + 1, 3334
        for first in range(0, steps, chunk):
            psql(f"SELECT extend_run('replay-big', {first}, {min(chunk, steps - first)})")
        big_run = int(psql("SELECT count(*) FROM workflow_ext.events WHERE run_id = 'replay-big'"))
        psql("VACUUM ANALYZE workflow_ext.events")
        times = {"replay": [], "read": [], "index": []}
        for _ in range(rounds):
            times["replay"].append(timed("SELECT count(*) FROM workflow_ext.replay('replay-big')", 1))
            times["read"].append(timed(ordered_read("replay-big"), 1))
            times["index"].append(timed("SELECT ordered_read_in_index_order('replay-big')", 1))
        ta, tb, ti = (statistics.median(times[k]) for k in ("replay", "read", "index"))
        row(f"replay {big_run:,} events (runs/s)", "replay", "ordered_read", 1 / ta, 1 / tb, "runs/s")
        row(f"replay {big_run:,} events vs the read in index order (runs/s)", "replay", "ordered_read_index",
            1 / ta, 1 / ti, "runs/s")
        rows.append((f"replay {big_run:,} events: events/s", "replay", "", big_run / ta, 0, float("nan"), "events/s"))
        series["replay"].append({"events": big_run, "replay_s": ta, "ordered_read_s": tb, "ordered_read_index_s": ti})

    # 7. The database-wide scan.
    if want("scan"):
        runs = scan_events // 100
        psql(f"SELECT make_run('scan-' || i, 100) FROM generate_series(1, {runs}) i")
        total = int(psql("SELECT count(*) FROM workflow_ext.events"))
        t = timed("SELECT count(*) FROM workflow_ext.scan()", 1 if smoke else 3)
        rows.append((f"scan of {total:,} events", "scan", "", total / t, 0, float("nan"), "events/s"))
        print(f"scan: {total:,} events in {t:.2f} s = {total / t:,.0f} events/s", flush=True)

    if want("space"):
        # 8. Space and WAL per event.
        per_event = psql("SELECT pg_total_relation_size('workflow_ext.events') / count(*) FROM workflow_ext.events")
        raw_per_event = psql("SELECT pg_total_relation_size('raw_events') / count(*) FROM raw_events")
        rows.append(("table+index bytes per event", "events", "raw_events", float(per_event), float(raw_per_event),
                     float(per_event) / float(raw_per_event), "bytes"))
        n = 200 if smoke else 5000
        wal = {"a": [], "b": []}
        for _ in range(rounds):
            wal["a"].append(wal_per_call(suspension_script("wal"), n))
            wal["b"].append(wal_per_call(draw(1000, KEYS) + raw_insert_sql("wal", on_conflict=False) + ";\n", n))
        rec_a, fpi_a = (statistics.median(x[i] for x in wal["a"]) for i in (0, 1))
        rec_b, fpi_b = (statistics.median(x[i] for x in wal["b"]) for i in (0, 1))
        rows.append(("WAL record bytes per call, new key, own transaction", "append_suspension", "raw_insert",
                     rec_a, rec_b, rec_a / rec_b, "bytes"))
        rows.append(("WAL full-page-image bytes per call (after a CHECKPOINT)", "append_suspension", "raw_insert",
                     fpi_a, fpi_b, fpi_a / fpi_b if fpi_b else float("nan"), "bytes"))
        print(f"bytes per event (table+indexes): {per_event} vs raw {raw_per_event}; "
              f"WAL records per call: {rec_a:.0f} vs raw {rec_b:.0f}; FPI per call: {fpi_a:.0f} vs raw {fpi_b:.0f}",
              flush=True)

    # 9. COPY of many runs in one transaction (issue 17's "nothing given
    #    up"): 1,000,000 events across 100,000 runs, interleaved (event k of
    #    every run, then event k + 1), so every run's lock is held at once,
    #    which a per-run heavyweight lock could not do (the lock table holds
    #    max_locks_per_transaction × max_connections). Checked, then timed
    #    against the same COPY into tables of the same shape: without a
    #    trigger, with an empty PL/pgSQL one, and with a C one that only
    #    numbers each run's events from backend memory (bench/floor_trigger.c),
    #    the floor of any numbering trigger. Each round COPYs new runs into
    #    every table, in a rotated order; the medians are reported.
    if want("copy"):
        runs = 1000 if smoke else 100_000
        life = [("run_created", ""), ("run_started", ""), ("step_created", "s1"), ("step_started", "s1"),
                ("step_completed", "s1"), ("step_created", "s2"), ("step_started", "s2"),
                ("step_completed", "s2"), ("wait_created", "w1"), ("wait_completed", "w1")]
        n = runs * len(life)
        psql("CREATE TABLE copy_raw (LIKE workflow_ext.events INCLUDING DEFAULTS INCLUDING INDEXES); "
             "ALTER TABLE copy_raw ALTER id SET DEFAULT workflow_ext.new_event_id(), "
             "ALTER seq SET DEFAULT nextval('raw_seq')")
        # What calling a BEFORE ROW trigger costs, whatever it does: an empty
        # PL/pgSQL one. (All these tables insert row by row, CopyFrom's
        # CIM_SINGLE: a trigger forces it, and so does copy_raw's volatile id
        # default.)
        psql("CREATE TABLE copy_raw_trigger (LIKE copy_raw INCLUDING DEFAULTS INCLUDING INDEXES); "
             "CREATE FUNCTION copy_pass() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; "
             "CREATE TRIGGER pass BEFORE INSERT ON copy_raw_trigger FOR EACH ROW EXECUTE FUNCTION copy_pass()")
        psql("CREATE TABLE copy_c_floor (LIKE copy_raw INCLUDING DEFAULTS INCLUDING INDEXES); "
             f"CREATE FUNCTION copy_floor_number() RETURNS trigger LANGUAGE c AS '{build_floor_trigger()}', "
             "'floor_number'; "
             "CREATE TRIGGER number BEFORE INSERT ON copy_c_floor FOR EACH ROW EXECUTE FUNCTION copy_floor_number()")
        # The run rows alone, at their cheapest: one row per run inserted,
        # then set to its final state, each in one statement for all runs
        # (the extension writes a run's row when the COPY creates the run,
        # its lock, and its final state once, before the commit). No design
        # that keeps a row per run writes less.
        psql("CREATE TABLE copy_runs_floor (LIKE workflow_ext.runs INCLUDING ALL)")
        tables = {"events": "workflow_ext.events", "no_trigger": "copy_raw", "empty_trigger": "copy_raw_trigger",
                  "numbering_trigger": "copy_c_floor"}
        times = {k: [] for k in list(tables) + ["run_rows"]}
        copy_rounds = 1 if smoke else 3
        for rnd in range(copy_rounds):
            prefix = f"copy{rnd}-"
            with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
                for t, corr in life:
                    for i in range(1, runs + 1):
                        f.write(f"{prefix}{i},{corr},{t}\n")
                data = f.name  # read by psql's \copy, on this side
            order = list(tables)
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for key in order:
                start = time.monotonic()
                out = subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DB, "-c",
                                      f"\\copy {tables[key]} (run_id, correlation_id, type) FROM '{data}' "
                                      "WITH (FORMAT csv)"], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"COPY into {tables[key]} failed:\n{out.stderr}")
                times[key].append(time.monotonic() - start)
            os.unlink(data)
            psql("TRUNCATE copy_runs_floor")
            times["run_rows"].append(timed(
                "DO $$ BEGIN "
                "INSERT INTO copy_runs_floor (log, run_id, state, last_seq) "
                f"SELECT 'workflow_ext.events'::regclass, '{prefix}' || i, 'pending', 1 "
                f"FROM generate_series(1, {runs}) i; "
                f"UPDATE copy_runs_floor SET state = 'running', last_seq = {len(life)}, "
                "last_event_at = now(); END $$", 1))
        t = {k: statistics.median(v) for k, v in times.items()}
        # Every run complete, its seqs 1..len(life) (unique per run: dense),
        # and the audit clean; the C trigger's seqs as well.
        bad = psql("SELECT count(*) FROM (SELECT run_id FROM workflow_ext.events WHERE run_id LIKE 'copy%' "
                   f"GROUP BY run_id HAVING count(*) <> {len(life)} OR min(seq) <> 1 OR max(seq) <> {len(life)}) r")
        counted = psql("SELECT count(DISTINCT run_id) FROM workflow_ext.events WHERE run_id LIKE 'copy%'")
        anomalies = psql("SELECT count(*) FROM workflow_ext.scan() WHERE run_id LIKE 'copy%'")
        if int(bad) or int(counted) != runs * copy_rounds or int(anomalies):
            sys.exit(f"COPY of {n} events: {counted} runs, {bad} with wrong seqs, {anomalies} anomalies")
        bad_floor = psql("SELECT count(*) FROM (SELECT run_id FROM copy_c_floor GROUP BY run_id "
                         f"HAVING count(*) <> {len(life)} OR min(seq) <> 1 OR max(seq) <> {len(life)} "
                         f"OR count(DISTINCT seq) <> {len(life)}) r")
        if int(bad_floor):
            sys.exit(f"the C numbering trigger numbered {bad_floor} runs wrong")
        ev = {k: n / t[k] for k in tables}
        ev["run_rows_floor"] = n / (t["no_trigger"] + t["run_rows"])
        ev["numbering_floor"] = n / (t["numbering_trigger"] + t["run_rows"])
        for name, a, b in (
                (f"COPY of {n:,} events across {runs:,} runs, one transaction (events/s)", "events", "no_trigger"),
                ("the same COPY into the table with an empty BEFORE ROW trigger (events/s)", "empty_trigger",
                 "no_trigger"),
                ("COPY through the extension vs with an empty BEFORE ROW trigger (events/s)", "events",
                 "empty_trigger"),
                ("floor: the COPY without trigger plus the run rows in bulk, vs the COPY alone (events/s)",
                 "run_rows_floor", "no_trigger"),
                ("COPY through the extension vs that floor (events/s)", "events", "run_rows_floor"),
                ("the same COPY with a C row trigger that only numbers each run in memory (events/s)",
                 "numbering_trigger", "no_trigger"),
                ("floor of a numbering trigger: that COPY plus the run rows in bulk, vs the COPY alone (events/s)",
                 "numbering_floor", "no_trigger"),
                ("COPY through the extension vs the numbering trigger's floor (events/s)", "events",
                 "numbering_floor")):
            row(name, a, b, ev[a], ev[b], "events/s")
        print(f"copy ({copy_rounds} rounds, medians): {n:,} events in {t['events']:.1f} s through the trigger, "
              f"{t['no_trigger']:.1f} s without, {t['empty_trigger']:.1f} s with an empty one, "
              f"{t['numbering_trigger']:.1f} s through the C numbering trigger, {t['run_rows']:.2f} s for "
              f"{runs:,} run rows in bulk; {counted} runs with seqs 1..{len(life)}, scan clean", flush=True)

    # 10. A plain INSERT through the trigger (the path the DevKit's package
    #     takes on an attached table, and any client's) vs the same INSERT
    #     into raw_events, which has no trigger, at 1 and 4 clients; and the
    #     floor of any validated plain INSERT in the same alternation: a
    #     PL/pgSQL BEFORE ROW trigger that bumps the run row and stamps seq
    #     and id, nothing else (bench/setup.sql).
    if want("insert"):
        a = (draw(1000, KEYS) + "INSERT INTO workflow_ext.events (run_id, correlation_id, type) "
             "VALUES ('run-' || :r, 'ins_' || :k, 'step_created');\n")
        b = draw(1000, KEYS) + raw_insert_sql("ins", on_conflict=False) + ";\n"
        c = (draw(1000, KEYS) + "INSERT INTO trig_floor_events (run_id, correlation_id, type) "
             "VALUES ('run-' || :r, 'ins_' || :k, 'step_created');\n")
        for clients in (1, 4):
            ta, tb, tc = alternate([a, b, c], clients, secs, rounds)
            row(f"plain INSERT through the trigger, {clients} client(s)", "insert", "raw_insert", ta, tb)
            row(f"trigger floor (bump and stamp only), {clients} client(s)", "trigger_floor", "raw_insert",
                tc, tb)
            row(f"plain INSERT through the trigger vs the trigger floor, {clients} client(s)", "insert",
                "trigger_floor", ta, tc)

    # 11. n appends to one run in one transaction (a loop of append_event in
    #     one DO block), vs the same loop of raw inserts: the time per append
    #     should not grow with n (src/write/run_cache.rs).
    if want("one_run"):
        per = {}
        for n in ((500, 5000) if smoke else (1000, 10_000, 100_000)):
            run = f"one-{n}"
            psql(f"SELECT workflow_ext.append_event('{run}', NULL, 'run_created')")
            t_ext = timed(f"DO $$ BEGIN FOR i IN 1..{n} LOOP "
                          f"PERFORM workflow_ext.append_event('{run}', 's' || i, 'step_created'); END LOOP; END $$", 1)
            t_raw = timed(f"DO $$ BEGIN FOR i IN 1..{n} LOOP "
                          "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) VALUES "
                          f"(workflow_ext.new_event_id(), '{run}', nextval('raw_seq'), 'step_created', 's' || i); "
                          "END LOOP; END $$", 1)
            bad = psql(f"SELECT count(*) <> {n + 1} OR max(seq) <> {n + 1} FROM workflow_ext.events "
                       f"WHERE run_id = '{run}'")
            if bad != "f":
                sys.exit(f"one run of {n} appends: wrong count or seqs")
            per[n] = t_ext / n * 1e6
            row(f"{n:,} appends to one run, one transaction (µs per append)", "append_event", "raw_insert",
                per[n], t_raw / n * 1e6, "µs")
        small, big = min(per), max(per)
        row(f"µs per append, {big:,} vs {small:,} appends in one transaction", f"{big:,}", f"{small:,}",
            per[big], per[small], "µs")

    print("SERIES: " + json.dumps(series), flush=True)
    if opt.out:
        write_markdown(opt.out, rows, smoke, secs, sweep_secs, rounds)
    # The pictures: next to BENCHMARKS.md for a full run, in a scratch
    # directory for the smoke run (which only checks that they can be drawn).
    out_dir = os.path.dirname(os.path.abspath(opt.out)) if opt.out and not smoke else tempfile.mkdtemp()
    for path in plots.draw(series, out_dir):
        print(f"wrote {path}", flush=True)


def write_markdown(path, rows, smoke, secs, sweep_secs, rounds):
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench{'-smoke' if smoke else ''}` (bench/bench.py) on "
        f"{time.strftime('%Y-%m-%d')}: {machine()}.",
        f"Cluster settings: `scripts/postgresql.conf` (fsync on, synchronous_commit on). "
        f"pgbench `-M prepared`, {secs} s per round ({sweep_secs} s in the client and batch-size sweeps), "
        f"{rounds} alternating round(s) per side; "
        "figures are medians, ratios are A / B of the same run.",
        "",
        "| workload | A | B | A | B | A / B |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, an, bn, a, b, ratio, unit in rows:
        if bn:
            lines.append(f"| {name} | {an} | {bn} | {a:,.1f} {unit} | {b:,.1f} {unit} | **{ratio:.2f}** |")
        elif unit == "ms":
            lines.append(f"| {name} | {an} | | {a:,.3f} {unit} | | |")
        else:
            lines.append(f"| {name} | {an} | | {a:,.0f} {unit} | | |")
    # Only the generated part between the markers is replaced: the analysis
    # written around it (profile, what remains and why) survives a re-run.
    begin, end = "<!-- bench:begin (written by bench/bench.py) -->", "<!-- bench:end -->"
    generated = "\n".join([begin] + lines[2:] + [end])
    text = "\n".join(lines[:2] + [generated]) + "\n"
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if begin in old and end in old:
            text = old[:old.index(begin)] + generated + old[old.index(end) + len(end):]
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
