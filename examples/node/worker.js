'use strict';
// A workflow worker in Node (node-postgres) that leaves the hard guarantees to
// workflow_ext: one creation per step, legal transitions, a dense seq, one
// fan-in fire. `node worker.js` narrates one run; `node worker.js --check`
// asserts every figure and exits 1 if any is off.
// Connection: PGHOST / PGPORT / PGUSER; any of them unset is taken from the
// project cluster (`bash scripts/cluster.sh env` of this checkout).

const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { Client } = require('pg');

const CHECK = process.argv.includes('--check');
const WORKERS = 16; // connections racing on one run
const STEPS = 50;   // step correlation ids every worker tries to create
const ITEMS = 12;   // members of the fan-in
// Where the project cluster listens, as the checkout's scripts/cluster.sh env
// says (asked once, only if a PG* variable is unset).
let cluster = null;
function setting(name) {
  if (process.env[name]) return process.env[name];
  if (!cluster) {
    const script = path.join(__dirname, '..', '..', 'scripts', 'cluster.sh');
    let out;
    try {
      out = execFileSync('bash', [script, 'env'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      console.error(`${name} is not set and ${script} env failed (${err.message.trim()}): set PGHOST, PGPORT, PGUSER`);
      process.exit(1);
    }
    cluster = Object.fromEntries([...out.matchAll(/\b(PG[A-Z]+)=(\S+)/g)].map((m) => [m[1], m[2]]));
  }
  return cluster[name];
}
const conn = (database) => new Client({
  host: setting('PGHOST'),
  port: Number(setting('PGPORT')),
  user: setting('PGUSER'),
  database,
});

// The error map, decided by SQLSTATE (never by message text). Copy this one.
function classify(err) {
  switch (err.code) {
    case '23505': // duplicate creation; the index name tells it from other unique violations
      return err.constraint === 'workflow_events_entity_creation_unique'
        ? { kind: 'already_exists' } : { kind: 'other', why: `23505 on ${err.constraint}` };
    case '55000': { // DETAIL is "anomaly: <code>; run state: <state>"
      const m = /^anomaly: ([a-z_]+)/.exec(err.detail || '');
      return { kind: 'illegal_transition', anomaly: m ? m[1] : null };
    }
    case '23503': return { kind: 'missing_run_or_entity' };
    case '22004': case '22023': case '22001': return { kind: 'bad_input' };
    case '40001': case '40P01': return { kind: 'retry' }; // rerun the whole transaction
    default: return { kind: 'other', why: `${err.code}: ${err.message}` };
  }
}

// Runs fn inside a transaction at `isolation`, rerunning it on 'retry' errors.
// Only REPEATABLE READ / SERIALIZABLE callers need it: under READ COMMITTED
// (the default, used everywhere else here) a racing append waits for the
// holder of the run's lock and then reads the committed state, so it never
// sees 40001.
async function inTransaction(client, isolation, fn, attempts = 5) {
  for (let attempt = 1; ; attempt++) {
    await client.query(`BEGIN ISOLATION LEVEL ${isolation}`);
    try {
      const result = await fn(attempt);
      await client.query('COMMIT');
      return { result, attempt };
    } catch (err) {
      await client.query('ROLLBACK');
      if (classify(err).kind !== 'retry' || attempt === attempts) throw err;
    }
  }
}

const shuffled = (xs) => {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = crypto.randomInt(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};

const failures = [];
function figure(label, value, ok, story) {
  if (!ok) failures.push(`${label}: ${value}`);
  console.log(CHECK ? `FIGURE: ${label}: ${value}${ok ? '' : '  <-- FAILED'}` : `  ${story}`);
}

const APP_DDL = `create schema if not exists example_app;
  create table if not exists example_app.jobs (id bigint primary key, run_id text not null)`;
const SUSPEND = 'SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event($1, $2, $3)';
const APPEND = 'SELECT event_id, seq FROM workflow_ext.append_event($1, $2, $3, $4)';

async function main() {
  const started = Date.now();
  const db = `wfx_example_node_${crypto.randomBytes(4).toString('hex')}`;
  const admin = conn('postgres');
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const clients = [];
  try {
    const setup = conn(db);
    await setup.connect();
    await setup.query('CREATE EXTENSION workflow_ext');
    await setup.end();
    for (let w = 0; w < WORKERS; w++) { clients.push(conn(db)); await clients[w].connect(); }
    const c0 = clients[0];
    const one = async (c, sql, params) => (await c.query(sql, params)).rows[0];
    if (!CHECK) console.log(`workflow_ext from node-postgres: ${WORKERS} workers on database ${db}`);
    const pids = new Set(clients.map((c) => c.processID)).size; // one server session per worker
    figure('connections', pids, pids === WORKERS && WORKERS >= 16, `${pids} worker connections open.`);

    // 1. Start-up: every worker bootstraps the app schema at the same moment.
    const applied = await Promise.all(clients.map((c) =>
      one(c, 'SELECT workflow_ext.bootstrap($1, $2) AS applied', ['example_app@v1', APP_DDL])));
    const appliedN = applied.filter((r) => r.applied).length;
    const table = (await one(c0, "SELECT to_regclass('example_app.jobs') IS NOT NULL AS ok")).ok;
    figure('bootstrap calls / applied', `${WORKERS} / ${appliedN}`, appliedN === 1 && table,
      `Bootstrap: ${WORKERS} workers at once, ${appliedN} applied the DDL, the others got false.`);

    // 2. A run, created and started.
    const run = `wrun_node_${crypto.randomBytes(6).toString('hex')}`;
    await c0.query(SUSPEND, [run, null, 'run_created']);
    await c0.query(APPEND, [run, null, 'run_started', null]);

    // 3. Every worker creates every step, each in its own order. One call per
    //    key and no retry loop: a loser waits for the winner's commit and gets
    //    the winner's row back with inserted = false.
    const steps = Array.from({ length: STEPS }, (_, i) => `step_${i}`);
    const seen = await Promise.all(clients.map(async (c) => {
      const out = [];
      for (const step of shuffled(steps)) out.push({ step, ...await one(c, SUSPEND, [run, step, 'step_created']) });
      return out;
    }));
    const created = (await c0.query(
      "SELECT correlation_id, id FROM workflow_ext.events WHERE run_id = $1 AND type = 'step_created'", [run])).rows;
    const rows = created.length; // more rows than keys would be duplicates
    const stored = new Map(created.map((r) => [r.correlation_id, r.id]));
    const calls = seen.flat();
    const winners = new Map();
    for (const r of calls) if (r.inserted) winners.set(r.step, (winners.get(r.step) || 0) + 1);
    const notOneWinner = steps.filter((s) => winners.get(s) !== 1).length;
    const noWinnerId = calls.filter((r) => r.event_id !== stored.get(r.step)).length;
    const won = seen.filter((out) => out.some((r) => r.inserted)).length; // 1 would mean nothing raced
    figure('suspension calls', `${calls.length} (${WORKERS} connections x ${STEPS} keys, ${won} connections won keys)`,
      calls.length === WORKERS * STEPS && won > 1,
      `Suspension race: ${calls.length} calls of append_suspension_event; ${won} connections won some keys.`);
    figure('duplicates', rows - stored.size, rows === STEPS && stored.size === STEPS,
      `${rows} rows stored for ${STEPS} steps.`);
    figure('keys without exactly one inserted=true', notOneWinner, notOneWinner === 0,
      'Each step had exactly one caller told inserted = true.');
    figure("callers without the winner's id", noWinnerId, noWinnerId === 0, 'Every caller got the stored id.');

    // 4. Step lifecycles, split across workers (worker w owns steps w, w+16, …).
    //    Every move here is legal, so any error is unexpected and aborts the run.
    let appended = 0;
    await Promise.all(clients.map(async (c, w) => {
      for (let i = w; i < STEPS; i += WORKERS) {
        await c.query(APPEND, [run, `step_${i}`, 'step_started', null]);
        await c.query(APPEND, [run, `step_${i}`, 'step_completed', JSON.stringify({ output: i })]);
        appended += 2;
      }
    }));
    figure('lifecycle appends', appended, appended === 2 * STEPS,
      `Each step started and completed on its owner's connection: ${appended} appends.`);

    //    The error map, one refused call per SQLSTATE the worker handles.
    const cases = [
      ['23505 duplicate creation', [run, 'step_0', 'step_created', null], { kind: 'already_exists' }],
      ['55000 start after completion', [run, 'step_0', 'step_started', null],
        { kind: 'illegal_transition', anomaly: 'event_after_terminal' }],
      ['23503 unknown run', [`${run}_missing`, null, 'run_started', null], { kind: 'missing_run_or_entity' }],
      ['23503 unknown step', [run, 'step_never_created', 'step_started', null], { kind: 'missing_run_or_entity' }],
      ['22004 step event without correlation id', [run, null, 'step_started', null], { kind: 'bad_input' }],
      ['22023 unknown event type', [run, 'step_0', 'step_exploded', null], { kind: 'bad_input' }],
      ['22001 run id over 255 bytes', ['r'.repeat(300), null, 'run_started', null], { kind: 'bad_input' }],
    ];
    let mapped = 0;
    for (const [what, params, want] of cases) {
      try {
        await c0.query(APPEND, params);
        failures.push(`${what}: accepted`);
      } catch (err) {
        const got = classify(err);
        if (JSON.stringify(got) === JSON.stringify(want)) mapped++;
        else failures.push(`${what}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
        if (!CHECK) console.log(`  ${what} -> ${got.kind}${got.anomaly ? ` (${got.anomaly})` : ''}: ${err.message}`);
      }
    }
    //    40001: a REPEATABLE READ snapshot taken before another worker appended
    //    to the run. The first attempt is made stale on purpose; the retry wins.
    const [a, b] = clients;
    const { result: waitRow, attempt } = await inTransaction(a, 'REPEATABLE READ', async (n) => {
      await a.query('SELECT 1'); // the snapshot is taken here
      if (n === 1) await b.query(SUSPEND, [run, 'wait_1', 'wait_created']);
      return one(a, SUSPEND, [run, 'wait_1', 'wait_created']);
    });
    if (attempt === 2 && waitRow.inserted === false) mapped++;
    else failures.push(`40001 retry: attempt ${attempt}, inserted ${waitRow.inserted}`);
    if (!CHECK) console.log(`  40001 stale REPEATABLE READ snapshot -> retry: attempt ${attempt} got the wait`);
    await a.query(APPEND, [run, 'wait_1', 'wait_completed', null]);
    figure('errors mapped', `${mapped}/${cases.length + 1}`, mapped === cases.length + 1,
      `${mapped} of ${cases.length + 1} refusals mapped to the right handling by SQLSTATE.`);

    // 5. Fan-in: items finish on different connections, some delivered two or
    //    three times; exactly one arrival is told to dispatch the successor.
    //    Item i is delivered 1 + i % 3 times; redeliveries land on other connections.
    const deliveries = shuffled(Array.from({ length: ITEMS }, (_, i) => Array(1 + (i % 3)).fill(`item_${i}`)).flat());
    const fires = [];
    await Promise.all(clients.map(async (c, w) => {
      for (let k = w; k < deliveries.length; k += WORKERS) {
        const r = await one(c, 'SELECT workflow_ext.join_arrive($1, $2, $3, $4) AS fire',
          [run, 'after_items', deliveries[k], ITEMS]);
        if (r.fire) { // dispatch the successor: here, complete the run
          fires.push(deliveries[k]);
          await c.query(APPEND, [run, null, 'run_completed', null]);
        }
      }
    }));
    figure('fan-in deliveries / fires', `${deliveries.length} / ${fires.length}`, fires.length === 1,
      `Fan-in: ${deliveries.length} deliveries of ${ITEMS} items, the successor dispatched ${fires.length} time(s).`);
    figure('double fires', Math.max(0, fires.length - 1), fires.length <= 1, 'No double fire.');

    // 6. The audit: a dense seq and a clean replay of the whole run.
    const log = await one(c0, `SELECT count(*)::int AS events, count(DISTINCT seq)::int AS seqs, min(seq)::int AS lo,
      max(seq)::int AS hi, (SELECT count(*)::int FROM workflow_ext.replay($1)) AS anomalies
      FROM workflow_ext.events WHERE run_id = $1`, [run]);
    const gaps = log.hi - log.seqs;
    figure('seq gaps', gaps, gaps === 0 && log.lo === 1 && log.seqs === log.events,
      `Log: ${log.events} events, seqs ${log.lo}..${log.hi}.`);
    figure('replay anomalies', log.anomalies, log.anomalies === 0, `replay(run) found ${log.anomalies} anomalies.`);
    const secs = (Date.now() - started) / 1000;
    figure('elapsed seconds', secs.toFixed(1), secs < 60, `Done in ${secs.toFixed(1)} s.`);
  } finally {
    await Promise.allSettled(clients.map((c) => c.end()));
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch((e) => console.error('drop:', e.message));
    await admin.end();
  }
  if (failures.length) {
    console.error(`FAILED (${failures.length}):\n  ${failures.join('\n  ')}`);
    process.exitCode = 1;
  } else if (!CHECK) {
    console.log('One creation per step, legal transitions only, one successor, a clean log.');
  }
}

main().catch((err) => { console.error('error:', err); process.exitCode = 1; });
