#!/usr/bin/env node
'use strict';
// A migrating process dies; the next caller must take over.
//
//   node kill.js [--scenario sigkill,terminate] [--pause-at N (5)]
//
// Per scenario, on a fresh database with workflow_ext:
//   1. victim (child.js --role victim): bootstrap_begin -> true on its
//      dedicated connection, then graphile-worker makeWorkerUtils({pgPool})
//      .migrate(). Its pool's client freezes inside migration N's transaction
//      (migrations 1..N-1 committed, N begun): the victim is mid-migration.
//   2. the victim is killed:
//        sigkill    SIGKILL of the Node process (its connections just drop);
//        terminate  pg_terminate_backend(<its dedicated connection>) from
//                   another session (the process sees its lock connection
//                   die and stops, as the recipe says).
//   3. the ledger must hold no row for the name;
//   4. survivor (--role survivor): bootstrap_begin must return true, its
//      migrate() must finish the schema, bootstrap_end records one row;
//   5. latecomer: bootstrap_begin must return false and find the schema.
// Prints ONE JSON line: {scenarios: {<name>: {... figures ..., checks: {..}, ok}}, ok}.
// Connection: PGHOST, PGPORT, PGUSER, PGPASSWORD from the environment.

const { parseArgs } = require('node:util');
const lib = require('./lib');

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'sigkill,terminate' },
    'pause-at': { type: 'string', default: '5' },
    timeout: { type: 'string', default: '60' },
  },
});
const PAUSE_AT = Number(args['pause-at']);
const TIMEOUT_MS = Number(args.timeout) * 1000;
const NAME = lib.MIGRATORS['gw-migrate'].ledgerName;

function within(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

// A child.js process; messages() yields its IPC messages in order.
function start(role, db) {
  const inbox = [];
  const waiters = [];
  const child = lib.spawnNode(
    [lib.CHILD_JS, '--role', role, '--migrator', 'gw-migrate', '--db', db, '--pause-at', String(PAUSE_AT)],
    {},
    { onMessage: (m) => (waiters.length ? waiters.shift()(m) : inbox.push(m)) },
  );
  child.exited.then((x) => {
    while (waiters.length) waiters.shift()({ type: 'exited', code: x.code, signal: x.signal, stderr: x.stderr });
  });
  const next = () => (inbox.length ? Promise.resolve(inbox.shift())
    : child.exitCode !== null || child.signalCode !== null
      ? child.exited.then((x) => ({ type: 'exited', code: x.code, signal: x.signal, stderr: x.stderr }))
      : new Promise((r) => waiters.push(r)));
  return { child, next };
}

async function resultOf(role, db) {
  const p = start(role, db);
  const m = await within(p.next(), TIMEOUT_MS, `${role} result`);
  await p.child.exited;
  return m.type === 'result' ? m : { ok: false, error: { stage: 'process', message: `exited ${m.code} ${m.signal}: ${m.stderr}` } };
}

async function scenario(kind) {
  const db = `wfx_mig_kill_${kind}_${process.pid}`;
  const f = { scenario: kind, name: NAME, pause_at_migration: PAUSE_AT };
  await lib.createDb(db, true);
  let victim;
  try {
    victim = start('victim', db);
    const begun = await within(victim.next(), TIMEOUT_MS, 'victim begin');
    f.victim_begin = begun.type === 'begun' ? true : begun;
    const paused = begun.type === 'begun' ? await within(victim.next(), TIMEOUT_MS, 'victim pause') : begun;
    f.victim_paused = paused.type === 'paused';
    if (!f.victim_paused) f.victim_message = paused;

    const before = await lib.withClient(db, (c) => lib.schemaState(c, 'graphile'));
    f.migrations_committed_at_kill = before.detail.graphile_worker_max_migration;
    f.ledger_rows_before_kill = await lib.ledgerRows(db, NAME);

    const tKill = Date.now();
    if (kind === 'sigkill') {
      victim.child.kill('SIGKILL');
    } else {
      const r = await lib.withClient(db, (c) =>
        c.query('SELECT pg_terminate_backend($1) AS t', [begun.dedicated_backend_pid]));
      f.terminated = r.rows[0].t;
    }
    const x = await within(victim.child.exited, 15000, 'victim exit').catch((e) => {
      victim.child.kill('SIGKILL');
      return { code: null, signal: `still running after 15 s (${e.message}); SIGKILLed` };
    });
    f.victim_exit = x.signal || x.code; // SIGKILL, or 70 = "dedicated connection lost"
    f.ledger_rows_after_kill = await lib.ledgerRows(db, NAME);

    const survivor = await resultOf('survivor', db);
    f.survivor_ms_after_kill = Date.now() - tKill;
    f.survivor = { ok: survivor.ok, begin: survivor.begin, ran: survivor.ran, error: survivor.error || null };
    f.ledger_rows_after_survivor = await lib.ledgerRows(db, NAME);
    const after = await lib.withClient(db, (c) => lib.schemaState(c, 'graphile'));
    f.migrations_after_survivor = after.detail.graphile_worker_max_migration;

    const late = await resultOf('survivor', db);
    f.latecomer = { ok: late.ok, begin: late.begin, ran: late.ran, error: late.error || null };
    f.ledger_rows_at_end = await lib.ledgerRows(db, NAME);

    f.checks = {
      victim_began_and_paused_mid_migration:
        f.victim_begin === true && f.victim_paused
        && f.migrations_committed_at_kill === PAUSE_AT - 1 && PAUSE_AT - 1 < lib.GW_MIGRATIONS,
      victim_died: kind === 'sigkill' ? x.signal === 'SIGKILL' : x.code === 70,
      no_ledger_row_after_kill: f.ledger_rows_before_kill === 0 && f.ledger_rows_after_kill === 0,
      survivor_begin_true_and_migrated: survivor.ok === true && survivor.begin === true && survivor.ran === true,
      one_ledger_row_after_survivor: f.ledger_rows_after_survivor === 1,
      schema_complete: after.complete,
      latecomer_begin_false: late.ok === true && late.begin === false && f.ledger_rows_at_end === 1,
    };
    f.ok = Object.values(f.checks).every(Boolean);
  } catch (e) {
    f.ok = false;
    f.error = String(e && e.stack || e);
  } finally {
    if (victim && victim.child.exitCode === null && victim.child.signalCode === null) victim.child.kill('SIGKILL');
    await lib.dropDb(db);
  }
  return f;
}

async function main() {
  const t0 = Date.now();
  const out = {
    scenarios: {},
  };
  for (const kind of args.scenario.split(',')) {
    if (!['sigkill', 'terminate'].includes(kind)) throw new Error(`unknown scenario ${kind}`);
    out.scenarios[kind] = await scenario(kind);
  }
  out.ok = Object.values(out.scenarios).every((s) => s.ok);
  out.seconds = Math.round((Date.now() - t0) / 100) / 10;
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
