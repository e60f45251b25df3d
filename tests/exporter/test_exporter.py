"""monitoring/workflow_ext_queries.yaml under the real Debian
prometheus-postgres-exporter (0.11.1), against a PostgreSQL 15 cluster of the
test's own (scripts/cluster.sh, port 54360, a temporary directory), never the
project cluster. Everything listens on loopback; every wait is bounded.

Run: python3 -m pytest -q -s tests/exporter   (as root, like scripts/cluster.sh)
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

psycopg = pytest.importorskip("psycopg")

from lib import harness  # noqa: E402  (after the importorskip)
from lib.cluster import ROOT, ScriptCluster  # noqa: E402
from lib.connection import conninfo, connect  # noqa: E402

QUERIES = os.path.join(ROOT, "monitoring", "workflow_ext_queries.yaml")
ALERTS = os.path.join(ROOT, "monitoring", "alerts.yaml")
PORT = int(os.environ.get("WFX_EXPORTER_PG_PORT", "54360"))
DBNAME = "wfx_exporter_db"
ROLE = "wfx_exporter"
LOG = "workflow_ext.events"
ALL_COUNTERS = {"appended", "missing_run_created", "duplicate_creation", "missing_creation",
                "event_after_terminal", "event_after_run_terminal", "illegal_transition",
                "invalid_event", "runs_completed", "runs_failed", "runs_cancelled"}


def exporter_binary():
    for cand in (os.environ.get("WFX_POSTGRES_EXPORTER"), shutil.which("prometheus-postgres-exporter"),
                 "/usr/bin/prometheus-postgres-exporter", shutil.which("postgres_exporter")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def figure(name, value):
    harness.figure(f"{name} = {value}")


# --------------------------------------------------------------------------
# The cluster of this test

@pytest.fixture(scope="module")
def cluster(request):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken: another cluster runs there")
    # Directly under /tmp: postgres must traverse every parent (cluster.sh
    # falls back to another directory otherwise, which we would not remove).
    pgdata = tempfile.mkdtemp(prefix="wfx_exporter_pg_", dir="/tmp")
    own = ScriptCluster(port=PORT, pgdata=pgdata, major=15)

    def finalize():
        try:
            own.stop(timeout=90, check=False)
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)
    request.addfinalizer(finalize)

    r = own.run("start", check=False)
    assert r.returncode == 0, f"cluster.sh start failed:\n{r.stdout}\n{r.stderr}"
    host = own.setting("PGHOST")
    assert host == pgdata, f"cluster.sh chose {host}, not {pgdata}"
    server = own.server()

    def connect_as(dbname="postgres", user="postgres"):
        return connect(dbname, server, user=user, connect_timeout=10, options="-c statement_timeout=30000")

    with connect_as() as c:
        preload = c.execute("SHOW shared_preload_libraries").fetchone()[0]
        c.execute(f'CREATE DATABASE "{DBNAME}"')
        c.execute(f"CREATE ROLE {ROLE} LOGIN")
    with connect_as(DBNAME) as c:
        c.execute("CREATE EXTENSION workflow_ext")
        c.execute("SELECT workflow_ext.grant_access(%s, 'monitor')", (ROLE,))
        version = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'workflow_ext'").fetchone()[0]
    figure("extension version", version)
    figure("shared_preload_libraries", repr(preload))
    return dict(server=server, connect=connect_as, preload="workflow_ext" in preload)


# --------------------------------------------------------------------------
# Appends

class Writer:
    """Appends as the superuser on a connection that is closed afterwards, so
    its table statistics (events_inserted reads n_tup_ins) are flushed."""

    def __init__(self, cluster):
        self.conn = cluster["connect"](DBNAME)
        self.admitted = 0
        self.refused = {}

    def append(self, run_id, corr, type_):
        self.conn.execute("SELECT * FROM workflow_ext.append_event(%s, %s, %s)", (run_id, corr, type_))
        self.admitted += 1

    def refuse(self, run_id, corr, type_, code):
        with pytest.raises(psycopg.Error) as e:
            self.conn.execute("SELECT * FROM workflow_ext.append_event(%s, %s, %s)", (run_id, corr, type_))
        assert e.value.sqlstate == "55000", (e.value.sqlstate, str(e.value))
        self.refused[code] = self.refused.get(code, 0) + 1

    def close(self):
        self.conn.close()


# --------------------------------------------------------------------------
# The exporter and its text format

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


def parse_metrics(text):
    """Prometheus text exposition format -> ({(name, frozenset(labels)): value}, {name: type})."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ
            continue
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"unparsable exposition line: {line!r}"
        name, labels, value = m.groups()
        lab = {}
        if labels:
            pos = 0
            while pos < len(labels):
                lm = LABEL.match(labels, pos)
                assert lm, f"unparsable labels: {labels!r}"
                lab[lm.group(1)] = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                pos = lm.end()
        samples[(name, frozenset(lab.items()))] = float(value)
    return samples, types


def series(samples, name, **want):
    """The samples of `name` whose labels include `want`: [(labels dict, value)]."""
    return [(dict(lab), v) for (n, lab), v in samples.items()
            if n == name and all(dict(lab).get(k) == w for k, w in want.items())]


def one(samples, name, **want):
    found = series(samples, name, **want)
    assert len(found) == 1, f"{name}{want}: expected one series, got {found}"
    return found[0][1]


class Exporter:
    def __init__(self, binary, dsn, query_path, logdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.logpath = os.path.join(logdir, f"exporter_{self.port}.log")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG_EXPORTER_", "DATA_SOURCE_"))}
        env["DATA_SOURCE_NAME"] = dsn
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}",
             f"--extend.query-path={query_path}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def logtext(self):
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def wait_up(self, limit=20.0):
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"exporter exited with {self.proc.returncode}:\n{self.logtext()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last = e
            time.sleep(0.25)
        pytest.fail(f"exporter not up at {self.url} after {limit}s ({last}):\n{self.logtext()}")

    def scrape(self):
        t0 = time.monotonic()
        with urllib.request.urlopen(self.url, timeout=15) as r:
            assert r.status == 200
            body = r.read().decode()
        return body, time.monotonic() - t0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def start_exporter(request, tmp_path_factory):
    binary = exporter_binary()
    if binary is None:
        pytest.skip("prometheus-postgres-exporter is not installed (apt-get install prometheus-postgres-exporter)")
    logdir = str(tmp_path_factory.mktemp("exporter"))
    started = []

    def start(dsn, query_path=QUERIES):
        e = Exporter(binary, dsn, query_path, logdir)
        started.append(e)
        e.wait_up()
        return e

    def finalize():
        for e in started:
            e.stop()
    request.addfinalizer(finalize)
    return start


def dsn(cluster, dbname=DBNAME):
    # lib/pq key=value form; host is the cluster's unix socket directory.
    return conninfo(dbname, cluster["server"], user=ROLE, sslmode="disable", connect_timeout=10)


def check_no_errors(samples, exporter, where):
    load = series(samples, "pg_exporter_user_queries_load_error")
    ours = [(lab, v) for lab, v in load if lab.get("filename", "").endswith("workflow_ext_queries.yaml")]
    assert ours, f"no pg_exporter_user_queries_load_error for our file: {load}"
    assert all(v == 0 for _, v in ours), f"{where}: our queries file failed to load: {ours}"
    assert one(samples, "pg_up") == 1, f"{where}: pg_up != 1"
    assert one(samples, "pg_exporter_last_scrape_error") == 0, \
        f"{where}: last scrape had errors:\n{exporter.logtext()}"
    # 0.11.1 logs a failing custom query at level=info ("Error running query
    # on database ...: <namespace> pq: ..."), only the summary at level=error.
    bad = [l for l in exporter.logtext().splitlines()
           if "level=error" in l or "Error running query" in l
           or ("workflow_ext" in l and "level=warn" in l)]
    assert not bad, f"{where}: exporter logged errors:\n" + "\n".join(bad)


# --------------------------------------------------------------------------

def test_exporter_exposes_workflow_ext_series(cluster, start_exporter):
    w = Writer(cluster)
    # 3 runs pending, 2 running, 1 completed; in run r4 a step completed and
    # then a late step_started, refused as event_after_terminal.
    for r in ("r1", "r2", "r3", "r4", "r5", "r6"):
        w.append(r, None, "run_created")
    for r in ("r4", "r5", "r6"):
        w.append(r, None, "run_started")
    for r in ("r4", "r6"):
        w.append(r, "s1", "step_created")
        w.append(r, "s1", "step_started")
        w.append(r, "s1", "step_completed")
    w.append("r6", None, "run_completed")
    w.refuse("r4", "s1", "step_started", "event_after_terminal")
    w.close()
    with cluster["connect"](DBNAME) as c:
        direct = c.execute("SELECT * FROM workflow_ext.metrics('15 minutes')").fetchall()
    figure("metrics() as postgres", direct)

    e = start_exporter(dsn(cluster))
    body, took = e.scrape()
    samples, types = parse_metrics(body)
    ours = {k: v for k, v in samples.items() if k[0].startswith("workflow_ext_")}
    figure("scrape 1 seconds", f"{took:.3f}")
    figure("scrape 1 series total", len(samples))
    figure("scrape 1 workflow_ext series", len(ours))
    for (name, lab), v in sorted(ours.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        figure(f"  {name}{{{','.join(f'{k}={v2}' for k, v2 in sorted(lab))}}}", v)

    check_no_errors(samples, e, "scrape 1")

    # Names are <top-level key>_<column>; types from `usage`.
    for name, typ in [("workflow_ext_runs_pending", "gauge"), ("workflow_ext_runs_running", "gauge"),
                      ("workflow_ext_runs_idle", "gauge"), ("workflow_ext_oldest_active_run_seconds", "gauge"),
                      ("workflow_ext_events_inserted", "counter")]:
        assert types.get(name) == typ, (name, types.get(name))
        assert series(samples, name, log=LOG), f"{name}{{log={LOG}}} missing"
    assert one(samples, "workflow_ext_runs_pending", log=LOG) == 3
    assert one(samples, "workflow_ext_runs_running", log=LOG) == 2
    assert one(samples, "workflow_ext_runs_idle", log=LOG) == 0
    oldest = one(samples, "workflow_ext_oldest_active_run_seconds", log=LOG)
    assert 0 < oldest < 600, oldest
    inserted = one(samples, "workflow_ext_events_inserted", log=LOG)
    assert inserted >= w.admitted, (inserted, w.admitted)
    figure("appends admitted / refused (phase 1)", f"{w.admitted} / {sum(w.refused.values())}")

    if not cluster["preload"]:
        pytest.fail("the cluster does not preload workflow_ext (is it installed?): no counters to check")
    assert types.get("workflow_ext_counters_total") == "counter"
    counters = {lab["counter"]: v for lab, v in series(samples, "workflow_ext_counters_total")}
    assert set(counters) == ALL_COUNTERS, counters
    assert counters["appended"] >= w.admitted, (counters, w.admitted)
    assert counters["event_after_terminal"] >= 1, counters
    assert counters["runs_completed"] >= 1, counters  # the workload's completed run

    # More appends: the values follow on the next scrape.
    w2 = Writer(cluster)
    for r in ("r7", "r8", "r9"):
        w2.append(r, None, "run_created")
    w2.append("r1", None, "run_started")
    w2.refuse("r4", "s1", "step_started", "event_after_terminal")
    w2.close()

    body, took = e.scrape()
    samples2, _ = parse_metrics(body)
    figure("scrape 2 seconds", f"{took:.3f}")
    check_no_errors(samples2, e, "scrape 2")
    assert one(samples2, "workflow_ext_runs_pending", log=LOG) == 5
    assert one(samples2, "workflow_ext_runs_running", log=LOG) == 3
    inserted2 = one(samples2, "workflow_ext_events_inserted", log=LOG)
    assert inserted2 - inserted >= w2.admitted, (inserted, inserted2, w2.admitted)
    counters2 = {lab["counter"]: v for lab, v in series(samples2, "workflow_ext_counters_total")}
    assert counters2["appended"] - counters["appended"] >= w2.admitted, (counters, counters2)
    assert counters2["event_after_terminal"] - counters["event_after_terminal"] >= 1, (counters, counters2)
    figure("scrape 2 pending / running", f"{one(samples2, 'workflow_ext_runs_pending', log=LOG):g} / "
                                         f"{one(samples2, 'workflow_ext_runs_running', log=LOG):g}")
    figure("events_inserted scrape 1 -> 2 (admitted 1+2)", f"{inserted:g} -> {inserted2:g} "
                                                          f"({w.admitted}+{w2.admitted})")
    figure("appended scrape 1 -> 2", f"{counters['appended']:g} -> {counters2['appended']:g}")
    figure("event_after_terminal scrape 1 -> 2",
           f"{counters['event_after_terminal']:g} -> {counters2['event_after_terminal']:g}")

    # Several scrapes in a row: the cost of one.
    times = [e.scrape()[1] for _ in range(5)]
    figure("scrape seconds (5 more, min/max)", f"{min(times):.3f} / {max(times):.3f}")


def test_error_detection_is_not_vacuous(cluster, start_exporter):
    """The same file against a database without workflow_ext: the checks of
    the first test (last_scrape_error, the log) do see failing queries."""
    e = start_exporter(dsn(cluster, dbname="postgres"))
    samples, _ = parse_metrics(e.scrape()[0])
    assert one(samples, "pg_up") == 1
    load = [v for lab, v in series(samples, "pg_exporter_user_queries_load_error")
            if lab.get("filename", "").endswith("workflow_ext_queries.yaml")]
    assert load == [0], load  # the file loads; only its queries fail
    assert one(samples, "pg_exporter_last_scrape_error") == 1
    assert not [k for k in samples if k[0].startswith("workflow_ext_")]
    log = e.logtext()
    for ns in ("workflow_ext", "workflow_ext_counters"):
        assert re.search(rf'Error running query on database .*: {ns} pq: schema \\"workflow_ext\\" does not exist', log), log
    figure("without the extension: last_scrape_error", one(samples, "pg_exporter_last_scrape_error"))


def test_yaml_has_the_documented_shape():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(open(QUERIES))
    assert set(doc) == {"workflow_ext", "workflow_ext_counters"}
    for key, q in doc.items():
        assert set(q) <= {"query", "metrics", "master", "cache_seconds"}, q.keys()
        for m in q["metrics"]:
            (col, spec), = m.items()
            assert spec["usage"] in ("LABEL", "GAUGE", "COUNTER"), (key, col)
            assert spec["description"]
    text = open(QUERIES).read()
    assert "grant_access('<role>', 'monitor')" in text and "runs_active" in text
    assert "15 minutes" in doc["workflow_ext"]["query"]


def test_alert_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    r = subprocess.run([promtool, "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # Unit test of the two main rules on synthetic series.
    t = tmp_path / "alerts_test.yaml"
    t.write_text(f"""
rule_files: [{ALERTS}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'workflow_ext_runs_idle{{instance="db:9187",log="workflow_ext.events"}}'
        values: '0 0 1x40'
      - series: 'workflow_ext_counters_total{{instance="db:9187",counter="event_after_terminal"}}'
        values: '0x10 1+1x30'
      - series: 'workflow_ext_counters_total{{instance="db:9187",counter="appended"}}'
        values: '0+10x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: WorkflowRunsStuck
        exp_alerts: []
      - eval_time: 20m
        alertname: WorkflowRunsStuck
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "db:9187", log: workflow_ext.events}}
            exp_annotations:
              summary: "workflow_ext: 1 idle run(s) in workflow_ext.events"
              description: "1 run(s) in workflow_ext.events on db:9187 have had no append for more than 15 minutes. Drill down with SELECT * FROM workflow_ext.stuck_runs('15 minutes');"
      - eval_time: 9m
        alertname: WorkflowRefusalsRising
        exp_alerts: []
      - eval_time: 20m
        alertname: WorkflowRefusalsRising
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "db:9187", counter: event_after_terminal}}
            exp_annotations:
              summary: "workflow_ext: refused appends (event_after_terminal) on db:9187"
              description: "workflow_ext refused appends with anomaly code event_after_terminal at 0.017/s (rate over 5 minutes)."
""")
    r = subprocess.run([promtool, "test", "rules", str(t)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
