#!/usr/bin/env node
'use strict';
// Races real schema migrators from the npm registry on fresh databases.
//
//   node race.js [--mode raw|wrapped] [--migrator gw-migrate,gw-run,devkit-setup|all]
//                [-P processes (16)] [-M databases (10)] [--processes-per-round]
//                [--round-timeout seconds (120)] [--verbose]
//
// For every migrator and every one of M fresh databases: CREATE DATABASE
// (wrapped: + CREATE EXTENSION workflow_ext), P Node processes wait on one
// start barrier (each has loaded its code and, wrapped, opened its dedicated
// connection; the parent then gives them all one start instant), each runs
// the migrator once, then DROP DATABASE … WITH (FORCE).
// Raw devkit-setup starts P new processes per database (the script exits
// when done); the other cases keep their P child.js processes across the M
// databases unless --processes-per-round (see child.js), which only saves
// Node start-up time: each round still uses new pools and connections.
//   gw-migrate    graphile-worker makeWorkerUtils({connectionString}).migrate(), release()
//   gw-run        graphile-worker runMigrations({connectionString})
//   devkit-setup  node node_modules/@workflow/world-postgres/bin/setup.js,
//                 WORKFLOW_POSTGRES_URL=<database url> (what `npx … bootstrap` runs)
// raw:     the migrator is called directly, as users do today;
// wrapped: workflow_ext.bootstrap_begin / bootstrap_end around it (child.js).
//
// Prints ONE JSON line on stdout (progress goes to stderr with --verbose).
// Connection: PGHOST, PGPORT, PGUSER, PGPASSWORD from the environment.

const { parseArgs } = require('node:util');
const lib = require('./lib');

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string', default: 'raw' },
    migrator: { type: 'string', default: 'all' },
    processes: { type: 'string', short: 'P', default: '16' },
    databases: { type: 'string', short: 'M', default: '10' },
    'round-timeout': { type: 'string', default: '120' },
    'processes-per-round': { type: 'boolean', default: false },
    verbose: { type: 'boolean', short: 'v', default: false },
  },
});

const MODE = args.mode;
if (!['raw', 'wrapped'].includes(MODE)) throw new Error('--mode raw|wrapped');
const P = Number(args.processes);
const M = Number(args.databases);
const PER_ROUND = args['processes-per-round'];
const ROUND_TIMEOUT_MS = Number(args['round-timeout']) * 1000;
const MIGRATORS = args.migrator === 'all' ? Object.keys(lib.MIGRATORS) : args.migrator.split(',');
for (const m of MIGRATORS) if (!lib.MIGRATORS[m]) throw new Error(`unknown migrator ${m}`);

// The start instant is sent this far ahead, so that every process has it
// (idle processes on a loaded 2-core machine wake up late) before it comes.
const START_AHEAD_MS = 150;

const log = (...a) => args.verbose && console.error(...a);

// A Node process with an IPC channel, read as a queue: next() resolves with
// its next message, or with {type: 'exited', …} once it is gone.
function ipcProcess(nodeArgs, env) {
  const inbox = [];
  const waiters = [];
  const push = (m) => (waiters.length ? waiters.shift()(m) : inbox.push(m));
  const child = lib.spawnNode(nodeArgs, env, { onMessage: push });
  let exit = null;
  child.exited.then((x) => {
    exit = { type: 'exited', ...x };
    while (waiters.length) waiters.shift()(exit);
  });
  return {
    child,
    next: () => (inbox.length ? Promise.resolve(inbox.shift()) : exit ? Promise.resolve(exit) : new Promise((r) => waiters.push(r))),
    send: (m) => child.connected && child.send(m),
    kill: () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'),
  };
}

const lostResult = (x) => ({
  ok: false,
  ran: false,
  error: {
    stage: 'process',
    code: null,
    message: `process exited ${x.code} ${x.signal || ''} without a result: ${x.stderr.trim().split('\n').slice(-3).join(' | ')}`,
  },
});

// child.js processes (every mode except raw devkit-setup): P of them serve
// all M rounds, or P new ones per round with --processes-per-round.
function workers(migrator) {
  return Array.from({ length: P }, () =>
    ipcProcess([lib.CHILD_JS, '--role', MODE, '--migrator', migrator], {}));
}

async function roundWithWorkers(ws, dbname) {
  for (const w of ws) w.send({ type: 'prepare', db: dbname });
  await Promise.all(ws.map((w) => w.next())); // ready (or exited)
  const at = Date.now() + START_AHEAD_MS; // one start instant for all
  for (const w of ws) w.send({ type: 'go', at });
  return Promise.all(ws.map(async (w) => {
    const m = await w.next();
    return m.type === 'result' ? m : lostResult(m);
  }));
}

// raw devkit-setup: the package's own bin/setup.js, unchanged, one process
// per call (it ends with process.exit), the barrier preloaded.
async function roundOfSetupScripts(dbname, ps) {
  for (let i = 0; i < P; i++) {
    ps.push(ipcProcess(['--import', lib.PRELOAD, lib.SETUP_JS], {
      WORKFLOW_POSTGRES_URL: lib.dbUrl(dbname),
      WFX_BARRIER: '1',
    }));
  }
  await Promise.all(ps.map((p) => p.next())); // ready (or exited)
  const at = Date.now() + START_AHEAD_MS;
  for (const p of ps) p.send({ type: 'go', at });
  return Promise.all(ps.map(async (p) => {
    const x = await p.child.exited;
    const m = /@@WFX_START (\d+)/.exec(x.stderr);
    const started = m ? Number(m[1]) : null;
    if (x.code === 0) return { ok: true, ran: true, started };
    const e = lib.parsePreloadError(x.stderr) || { code: null, message: `setup.js exited ${x.code} ${x.signal || ''}` };
    return { ok: false, ran: true, started, error: { stage: 'migrate', ...e } };
  }));
}

// Runs fn() with a hang guard: past the round timeout, the processes are
// killed (their calls then count as failed, never as a hang).
async function guarded(procs, fn) {
  const guard = setTimeout(() => procs().forEach((p) => p.kill()), ROUND_TIMEOUT_MS);
  try {
    return await fn();
  } finally {
    clearTimeout(guard);
  }
}

async function main() {
  const t0 = Date.now();
  const out = {
    mode: MODE,
    processes: P,
    databases: M,
    extension: MODE === 'wrapped' ? 'workflow_ext' : null,
    versions: { 'graphile-worker': lib.GW_VERSION, '@workflow/world-postgres': lib.DEVKIT_VERSION },
    migrators: {},
  };
  for (const migrator of MIGRATORS) {
    const name = lib.MIGRATORS[migrator].ledgerName;
    const s = {
      name,
      calls: 0,
      failed: 0,
      errors: {},
      failed_per_db: [],
      ran_per_db: [],
      ledger_rows_per_db: MODE === 'wrapped' ? [] : null,
      schema_complete_per_db: [],
      start_spread_ms_per_db: [],
      seconds: 0,
    };
    const tm = Date.now();
    const setupScripts = migrator === 'devkit-setup' && MODE === 'raw';
    let ws = null;
    try {
      for (let d = 0; d < M; d++) {
        const dbname = `wfx_mig_${migrator.replace(/-/g, '_')}_${MODE}_${process.pid}_${d}`;
        await lib.createDb(dbname, MODE === 'wrapped');
        try {
          const tr = Date.now();
          let results;
          if (setupScripts) {
            const ps = [];
            results = await guarded(() => ps, () => roundOfSetupScripts(dbname, ps));
          } else {
            if (!ws) ws = workers(migrator);
            const current = ws;
            results = await guarded(() => current, () => roundWithWorkers(current, dbname));
            if (PER_ROUND) {
              for (const w of ws) w.send({ type: 'exit' });
              ws = null;
            }
          }
          let failed = 0;
          for (const r of results) {
            s.calls++;
            if (!r.ok) {
              failed++;
              const k = lib.errorKey(r.error);
              s.errors[k] = (s.errors[k] || 0) + 1;
            }
          }
          // How far apart the processes really started (their clocks are
          // the machine's): the largest gap between two start instants.
          const starts = results.map((r) => r.started).filter((t) => typeof t === 'number');
          s.start_spread_ms_per_db.push(starts.length ? Math.max(...starts) - Math.min(...starts) : null);
          s.failed += failed;
          s.failed_per_db.push(failed);
          // raw: every process ran the migrator; wrapped: those whose
          // bootstrap_begin returned true.
          s.ran_per_db.push(MODE === 'wrapped'
            ? results.filter((r) => r.begin === true).length
            : results.filter((r) => r.ran).length);
          const state = await lib.withClient(dbname, (c) => lib.schemaState(c, lib.MIGRATORS[migrator].kind));
          s.schema_complete_per_db.push(state.complete);
          if (MODE === 'wrapped') s.ledger_rows_per_db.push(await lib.ledgerRows(dbname, name));
          log(`${dbname}: ${failed}/${P} failed, round ${Date.now() - tr} ms`);
        } finally {
          await lib.dropDb(dbname);
        }
      }
    } finally {
      if (ws) for (const w of ws) w.send({ type: 'exit' });
    }
    s.seconds = Math.round((Date.now() - tm) / 100) / 10;
    out.migrators[migrator] = s;
    log(`${migrator} ${MODE}: ${s.failed}/${s.calls} failed in ${s.seconds}s`);
  }
  out.seconds = Math.round((Date.now() - t0) / 100) / 10;
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
