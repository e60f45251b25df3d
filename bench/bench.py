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
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

BIN = "/usr/lib/postgresql/15/bin"
DB = "wfx_bench"
HERE = os.path.dirname(os.path.abspath(__file__))


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


def pgbench(script, clients, seconds, variables=None):
    """Runs one pgbench round; returns (tps, mean latency ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    args = [f"{BIN}/pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(seconds), "-f", path]
    for k, v in (variables or {}).items():
        args += ["-D", f"{k}={v}"]
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


def side_by_side(a, b, clients, seconds, rounds, variables=None):
    """Alternates A and B; returns (median tps A, median tps B)."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(pgbench(a, clients, seconds, variables)[0])
        tb.append(pgbench(b, clients, seconds, variables)[0])
    return statistics.median(ta), statistics.median(tb)


def a_new_key_script():
    return ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\n"
            "SELECT * FROM workflow_ext.append_suspension_event('run-' || :r, 'wal_' || :k, 'step_created');\n")


def raw_new_key_script():
    return ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\n"
            "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) "
            "VALUES (workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), 'step_created', 'wal_' || :k);\n")


def wal_per_call(script, calls):
    """WAL bytes written per call, each call its own transaction (1 client).
    Includes full-page images after checkpoints, on both sides alike."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    before = psql("SELECT pg_current_wal_insert_lsn()")
    subprocess.run([f"{BIN}/pgbench", "-n", "-M", "prepared", "-c", "1", "-t", str(calls), "-f", path, DB],
                   capture_output=True, check=True)
    after = psql("SELECT pg_current_wal_insert_lsn()")
    os.unlink(path)
    return float(psql(f"SELECT pg_wal_lsn_diff('{after}', '{before}')")) / calls


def timed(sql, repeat):
    """Median wall time (s) of a statement run in one psql session, repeated."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        psql(sql)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    opt = ap.parse_args()
    smoke = opt.smoke
    secs = 1 if smoke else 8
    rounds = 1 if smoke else 3
    sizes = [1000, 2000] if smoke else [1000, 10000, 51200]
    scan_events = 20000 if smoke else 1_000_000

    psql(f"DROP DATABASE IF EXISTS {DB}", db="postgres")
    psql(f"CREATE DATABASE {DB}", db="postgres")
    psql_file(os.path.join(HERE, "setup.sql"))
    psql_file(os.path.join(HERE, "plpgsql.sql"))
    rows = []  # (workload, A, B, A value, B value, ratio, unit)

    def row(name, a_name, b_name, a, b, unit="tps"):
        ratio = a / b if b else float("nan")
        rows.append((name, a_name, b_name, a, b, ratio, unit))
        print(f"{name:58s} {a_name}={a:,.1f} {b_name}={b:,.1f} {unit}  ratio={ratio:.2f}", flush=True)

    # 1. New keys: append_suspension_event vs a raw INSERT … ON CONFLICT DO NOTHING
    #    into a table of the same shape and indexes (no trigger, no seq care).
    for clients in (1, 4):
        for runs, label in ((1000, "many runs"), (1, "one run")):
            v = {"runs": runs}
            a = ("\\set r random(1, :runs)\n\\set k random(1, 1000000000000)\n"
                 "SELECT * FROM workflow_ext.append_suspension_event('run-' || :r, 'step_' || :k, 'step_created');\n")
            b = ("\\set r random(1, :runs)\n\\set k random(1, 1000000000000)\n"
                 "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) "
                 "VALUES (workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), 'step_created', 'step_' || :k) "
                 "ON CONFLICT (run_id, correlation_id, type) WHERE type IN "
                 "('run_created','step_created','wait_created','hook_created') DO NOTHING;\n")
            ta, tb = side_by_side(a, b, clients, secs, rounds, v)
            row(f"new key, {clients} client(s), {label}", "append_suspension", "raw_insert", ta, tb)

    # 2. Duplicate path: the key exists. vs an indexed SELECT of that row.
    a = ("\\set k random(1, 1000)\n"
         "SELECT * FROM workflow_ext.append_suspension_event('dup-run', 'step_' || :k, 'step_created');\n")
    b = ("\\set k random(1, 1000)\n"
         "SELECT id, seq FROM workflow_ext.events WHERE run_id = 'dup-run' AND correlation_id = 'step_' || :k "
         "AND type = 'step_created';\n")
    for clients in (1, 4):
        ta, tb = side_by_side(a, b, clients, secs, rounds)
        row(f"existing key, {clients} client(s)", "append_suspension", "indexed_select", ta, tb)

    # 3. A step lifecycle (created, started, completed) through append_event vs
    #    raw inserts of the same three events.
    a = ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\nBEGIN;\n"
         "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_created');\n"
         "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_started');\n"
         "SELECT * FROM workflow_ext.append_event('run-' || :r, 'life_' || :k, 'step_completed');\nCOMMIT;\n")
    b = ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\nBEGIN;\n"
         + "".join(
             "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) VALUES "
             f"(workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), '{t}', 'life_' || :k);\n"
             for t in ("step_created", "step_started", "step_completed"))
         + "COMMIT;\n")
    for clients in (1, 4):
        ta, tb = side_by_side(a, b, clients, secs, rounds)
        row(f"step lifecycle (3 events), {clients} client(s)", "append_event", "raw_insert", ta, tb)

    # 4. The client-side way (what world-postgres does): INSERT … ON CONFLICT
    #    DO NOTHING, then read the winner back in a second round trip.
    a = ("\\set r random(1, 1000)\n\\set k random(1, 2000)\n"
         "SELECT * FROM workflow_ext.append_suspension_event('run-' || :r, 'cs_' || :k, 'step_created');\n")
    b = ("\\set r random(1, 1000)\n\\set k random(1, 2000)\n"
         "INSERT INTO raw_events (id, run_id, seq, type, correlation_id) VALUES "
         "(workflow_ext.new_event_id(), 'run-' || :r, nextval('raw_seq'), 'step_created', 'cs_' || :k) "
         "ON CONFLICT (run_id, correlation_id, type) WHERE type IN "
         "('run_created','step_created','wait_created','hook_created') DO NOTHING RETURNING id;\n"
         "SELECT id, seq FROM raw_events WHERE run_id = 'run-' || :r AND correlation_id = 'cs_' || :k "
         "AND type = 'step_created';\n")
    for clients in (1, 4):
        ta, tb = side_by_side(a, b, clients, secs, rounds)
        row(f"client-side insert+read vs one call, {clients} client(s)", "append_suspension", "client_side", ta, tb)

    # 5. PL/pgSQL with the same semantics (bench/plpgsql.sql, not installed).
    a = ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\n"
         "SELECT * FROM workflow_ext.append_suspension_event('run-' || :r, 'pl_' || :k, 'step_created');\n")
    b = ("\\set r random(1, 1000)\n\\set k random(1, 1000000000000)\n"
         "SELECT * FROM plpgsql_append_suspension_event('run-' || :r, 'pl_' || :k, 'step_created');\n")
    for clients in (1, 4):
        ta, tb = side_by_side(a, b, clients, secs, rounds)
        row(f"new key vs PL/pgSQL version, {clients} client(s)", "append_suspension", "plpgsql", ta, tb)

    # 6. Replay vs the plain ordered read of the same rows, per run length.
    for n in sizes:
        psql(f"SELECT make_run('replay-{n}', {n})")
    for n in sizes:
        a = f"SELECT count(*) FROM workflow_ext.replay('replay-{n}');\n"
        b = (f"SELECT seq, id, type, correlation_id FROM workflow_ext.events "
             f"WHERE run_id = 'replay-{n}' ORDER BY seq;\n")
        ta, tb = side_by_side(a, b, 1, secs, rounds)
        row(f"replay {n:,} events (runs/s)", "replay", "ordered_select", ta, tb, "runs/s")
        rows.append((f"replay {n:,} events: events/s", "replay", "", ta * n, 0, float("nan"), "events/s"))

    # 7. The database-wide scan.
    runs = scan_events // 100
    psql(f"SELECT make_run('scan-' || i, 100) FROM generate_series(1, {runs}) i")
    total = int(psql("SELECT count(*) FROM workflow_ext.events"))
    t = timed("SELECT count(*) FROM workflow_ext.scan()", 1 if smoke else 3)
    rows.append((f"scan of {total:,} events", "scan", "", total / t, 0, float("nan"), "events/s"))
    print(f"scan: {total:,} events in {t:.2f} s = {total / t:,.0f} events/s", flush=True)

    # 8. Space and WAL per event.
    per_event = psql("SELECT pg_total_relation_size('workflow_ext.events') / count(*) FROM workflow_ext.events")
    raw_per_event = psql("SELECT pg_total_relation_size('raw_events') / count(*) FROM raw_events")
    rows.append(("table+index bytes per event", "events", "raw_events", float(per_event), float(raw_per_event),
                 float(per_event) / float(raw_per_event), "bytes"))
    n = 200 if smoke else 5000
    wal_a = wal_per_call(a_new_key_script(), n)
    wal_b = wal_per_call(raw_new_key_script(), n)
    rows.append(("WAL bytes per call, new key, own transaction", "append_suspension", "raw_insert",
                 wal_a, wal_b, wal_a / wal_b, "bytes"))
    print(f"bytes per event (table+indexes): {per_event} vs raw {raw_per_event}; "
          f"WAL per call: {wal_a:.0f} vs raw {wal_b:.0f}", flush=True)

    if opt.out:
        write_markdown(opt.out, rows, smoke, secs, rounds)


def write_markdown(path, rows, smoke, secs, rounds):
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench{'-smoke' if smoke else ''}` (bench/bench.py) on "
        f"{time.strftime('%Y-%m-%d')}: {machine()}.",
        f"Cluster settings: `scripts/postgresql.conf` (fsync on, synchronous_commit on). "
        f"pgbench `-M prepared`, {secs} s per round, {rounds} alternating round(s) per side; "
        "figures are medians, ratios are A / B of the same run.",
        "",
        "| workload | A | B | A | B | A / B |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, an, bn, a, b, ratio, unit in rows:
        if bn:
            lines.append(f"| {name} | {an} | {bn} | {a:,.1f} {unit} | {b:,.1f} {unit} | **{ratio:.2f}** |")
        else:
            lines.append(f"| {name} | {an} | | {a:,.0f} {unit} | | |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
