'use strict';
// A racing process. Started by race.js (roles raw, wrapped) and kill.js
// (roles victim, survivor).
//
//   node child.js --role raw|wrapped --migrator gw-migrate|gw-run|devkit-setup [--db NAME]
//   node child.js --role victim|survivor --db NAME [--pause-at N]     (kill.js)
//
// Under race.js (an IPC channel): one round per database, on the parent's
// messages {prepare, db} -> (opens the dedicated connection) {ready} ->
// {go, at} -> (sleeps until `at`, runs) {result}; {exit} ends the process.
// Without --processes-per-round, race.js keeps its P processes for all M
// databases: every round still has P processes starting the migrator at one
// instant, each with new pools and connections, and saves P Node start-ups
// (seconds on 2 cores) per database.
// Otherwise (kill.js, by hand) it runs once on --db and reports its result.
//
// wrapped: the workflow_ext recipe. A dedicated pg.Client (never a connection
// of the migrator's pool) calls
//     SELECT workflow_ext.bootstrap_begin(name, timeout)
// true  -> this process migrates (on its own connections), then
//          SELECT workflow_ext.bootstrap_end(name) on the dedicated client;
// false -> the schema is already applied: the process only checks it.
// If the dedicated connection is lost the process stops at once (exit 70):
// its lock is gone, another process may already be migrating.

const { parseArgs } = require('node:util');
const pg = require('pg');
// graphile-worker is loaded only by the processes that run it.
const graphile = () => require('graphile-worker');
const lib = require('./lib');

const { values: args } = parseArgs({
  options: {
    role: { type: 'string', default: 'raw' },
    migrator: { type: 'string', default: 'gw-migrate' },
    db: { type: 'string' },
    'begin-timeout': { type: 'string', default: '120 seconds' },
    'pause-at': { type: 'string', default: '5' },
  },
});

const migrator = lib.MIGRATORS[args.migrator];
if (!migrator) throw new Error(`unknown migrator ${args.migrator}`);

function report(msg) {
  return new Promise((resolve) => {
    if (!process.send) {
      console.log(JSON.stringify(msg));
      return resolve();
    }
    process.send(msg, () => resolve());
  });
}

// The parent's messages, in order.
const inbox = [];
let waiter = null;
process.on('message', (m) => {
  if (waiter) {
    const w = waiter;
    waiter = null;
    w(m);
  } else inbox.push(m);
});
const nextMessage = () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => { waiter = r; }));

// A pg.Client for the victim's migration pool: it stops (for good) just
// before graphile-worker inserts migration `pauseAt` into its ledger table,
// i.e. inside that migration's transaction, after migrations 1..pauseAt-1
// have committed. kill.js then kills the process there.
function pausingClient(pauseAt, onPause) {
  return class PausingClient extends pg.Client {
    query(config, values, cb) {
      const text = typeof config === 'string' ? config : config && config.text;
      const vals = typeof config === 'object' && config ? config.values : values;
      if (
        typeof text === 'string' &&
        /insert into .*migrations \(id, breaking\)/i.test(text) &&
        vals &&
        Number(vals[0]) === pauseAt
      ) {
        onPause(this.processID);
        return new Promise(() => {}); // never returns
      }
      return super.query(config, values, cb);
    }
  };
}

async function runMigrator(name, connectionString, opts = {}) {
  if (name === 'gw-migrate') {
    const utils = await graphile().makeWorkerUtils(
      opts.pgPool ? { pgPool: opts.pgPool } : { connectionString },
    );
    try {
      await utils.migrate();
    } finally {
      await utils.release();
    }
  } else if (name === 'gw-run') {
    await graphile().runMigrations({ connectionString });
  } else if (name === 'devkit-setup') {
    // What a user runs: the package's bin/setup.js in its own process, the
    // URL in WORKFLOW_POSTGRES_URL (the preload only records its error).
    const child = lib.spawnNode(['--import', lib.PRELOAD, lib.SETUP_JS], {
      WORKFLOW_POSTGRES_URL: connectionString,
      WFX_BARRIER: '0',
    });
    const { code, signal, stderr } = await child.exited;
    if (code !== 0) {
      const e = lib.parsePreloadError(stderr) || { message: `setup.js exited ${code} ${signal || ''}` };
      throw Object.assign(new Error(e.message), e);
    }
  } else {
    throw new Error(`unknown migrator ${name}`);
  }
}

// Each role is prepare(db) -> run(): prepare does what comes before the
// start instant, run returns the result.
function raw(db) {
  return async () => {
    const t0 = Date.now();
    try {
      await runMigrator(args.migrator, lib.dbUrl(db));
      return { ok: true, ran: true, ms: Date.now() - t0 };
    } catch (e) {
      return { ok: false, ran: true, error: lib.serializeError(e, 'migrate'), ms: Date.now() - t0 };
    }
  };
}

// The dedicated connection of the recipe.
async function dedicatedClient(url) {
  const client = new pg.Client({ connectionString: url, application_name: `wfx_mig_${args.role}` });
  await client.connect();
  let ending = false;
  client.on('error', (e) => {
    if (ending) return;
    // The lock is gone with the connection: stop migrating now.
    process.stderr.write(`dedicated connection lost: ${e.code || ''} ${e.message}\n`);
    process.exit(70);
  });
  client.endQuietly = async () => {
    ending = true;
    await client.end().catch(() => {});
  };
  return client;
}

async function begin(client, name) {
  const r = await client.query('SELECT workflow_ext.bootstrap_begin($1, $2::interval) AS go', [
    name,
    args['begin-timeout'],
  ]);
  return r.rows[0].go;
}

async function end(client, name) {
  await client.query('SELECT workflow_ext.bootstrap_end($1)', [name]);
}

async function wrapped(db, opts = {}) {
  const url = lib.dbUrl(db);
  const name = migrator.ledgerName;
  const client = await dedicatedClient(url);
  return async () => {
    const t0 = Date.now();
    const out = (r) => ({ ...r, ms: Date.now() - t0, backend_pid: client.processID });
    let go;
    try {
      go = await begin(client, name);
    } catch (e) {
      await client.endQuietly();
      return out({ ok: false, ran: false, begin: null, error: lib.serializeError(e, 'bootstrap_begin') });
    }
    if (!go) {
      // Someone applied it: do not migrate, check that the schema is there.
      const state = await lib.schemaState(client, migrator.kind).catch((e) => ({ complete: false, detail: String(e) }));
      await client.endQuietly();
      if (!state.complete) {
        return out({
          ok: false, ran: false, begin: false,
          error: { stage: 'verify', code: null, message: `schema incomplete after bootstrap_begin = false: ${JSON.stringify(state.detail)}` },
        });
      }
      return out({ ok: true, ran: false, begin: false });
    }
    if (opts.onBegin) await opts.onBegin(client);
    try {
      await runMigrator(args.migrator, url, opts);
    } catch (e) {
      // No bootstrap_end: closing the connection releases the lock and
      // records nothing, so the next caller gets true and tries again.
      await client.endQuietly();
      return out({ ok: false, ran: true, begin: true, error: lib.serializeError(e, 'migrate') });
    }
    try {
      await end(client, name);
    } catch (e) {
      await client.endQuietly();
      return out({ ok: false, ran: true, begin: true, error: lib.serializeError(e, 'bootstrap_end') });
    }
    await client.endQuietly();
    return out({ ok: true, ran: true, begin: true });
  };
}

// kill.js: begins (must get true), migrates through a pool whose client
// freezes inside migration `pause-at`, reports {type: 'paused'} and waits to
// be killed.
function victim(db) {
  const pauseAt = Number(args['pause-at']);
  const Client = pausingClient(pauseAt, (migrationPid) =>
    report({ type: 'paused', migration_backend_pid: migrationPid }));
  const pgPool = new pg.Pool({ connectionString: lib.dbUrl(db), Client, max: 2 });
  return wrapped(db, {
    pgPool,
    onBegin: (client) => report({ type: 'begun', dedicated_backend_pid: client.processID }),
  });
}

const roles = {
  raw,
  wrapped: (db) => wrapped(db),
  victim,
  survivor: (db) => wrapped(db),
};

async function main() {
  const prepare = roles[args.role];
  if (!prepare) throw new Error(`unknown role ${args.role}`);
  if (args.db) {
    // One run, no barrier (kill.js, by hand).
    const run = await prepare(args.db);
    await report({ type: 'result', ...(await run()) });
    process.exit(0);
  }
  for (;;) {
    const m = await nextMessage();
    if (m.type === 'exit') break;
    if (m.type !== 'prepare') throw new Error(`unexpected message ${JSON.stringify(m)}`);
    let run;
    try {
      run = await prepare(m.db);
    } catch (e) {
      const err = lib.serializeError(e, 'prepare');
      run = async () => ({ ok: false, ran: false, error: err });
    }
    await report({ type: 'ready' });
    const go = await nextMessage();
    if (go.type !== 'go') throw new Error(`unexpected message ${JSON.stringify(go)}`);
    const wait = go.at - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const started = Date.now();
    await report({ type: 'result', started, ...(await run()) });
  }
  process.exit(0);
}

main().catch(async (e) => {
  await report({ type: 'result', ok: false, ran: false, error: lib.serializeError(e, 'harness') });
  process.exit(1);
});
