'use strict';
// Shared pieces of the migrator race harness (race.js, kill.js, child.js).
//
// Connection parameters come from the environment, as for psql and the Python
// suites: PGHOST (a host name or a socket directory), PGPORT, PGUSER,
// PGPASSWORD. Nothing here knows a path of the machine it runs on.

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const pg = require('pg');

const HERE = __dirname;
// The package's "exports" hide package.json: locate it from its main entry.
const WORLD_PG_DIR = path.resolve(path.dirname(require.resolve('@workflow/world-postgres')), '..');
const GW_DIR = path.dirname(require.resolve('graphile-worker/package.json'));
const SETUP_JS = path.join(WORLD_PG_DIR, 'bin', 'setup.js');
const PRELOAD = path.join(HERE, 'preload.mjs');
const CHILD_JS = path.join(HERE, 'child.js');

const readJson = (f) => JSON.parse(fs.readFileSync(f, 'utf8'));
const GW_VERSION = readJson(path.join(GW_DIR, 'package.json')).version;
const DEVKIT_VERSION = readJson(path.join(WORLD_PG_DIR, 'package.json')).version;

// graphile-worker's numbered migrations (000001.sql …) and the DevKit's drizzle
// journal: what a complete schema holds, read from the installed packages.
const GW_MIGRATIONS = Object.keys(
  require(path.join(GW_DIR, 'dist', 'generated', 'sql')).migrations,
).length;
const DEVKIT_MIGRATIONS = readJson(
  path.join(WORLD_PG_DIR, 'src', 'drizzle', 'migrations', 'meta', '_journal.json'),
).entries.length;

const MIGRATORS = {
  // makeWorkerUtils({connectionString}).migrate(), then release()
  'gw-migrate': { ledgerName: `graphile_worker@${GW_VERSION}`, kind: 'graphile' },
  // runMigrations({connectionString})
  'gw-run': { ledgerName: `graphile_worker@${GW_VERSION}`, kind: 'graphile' },
  // node node_modules/@workflow/world-postgres/bin/setup.js (WORKFLOW_POSTGRES_URL)
  'devkit-setup': { ledgerName: `workflow_devkit@${DEVKIT_VERSION}`, kind: 'devkit' },
};

function dbUrl(dbname) {
  const host = process.env.PGHOST || 'localhost';
  const port = process.env.PGPORT || '5432';
  const user = process.env.PGUSER || 'postgres';
  const pw = process.env.PGPASSWORD ? ':' + encodeURIComponent(process.env.PGPASSWORD) : '';
  // A socket directory is written percent-encoded in the host part; both
  // node-postgres (pg-connection-string) and libpq accept that.
  return `postgresql://${encodeURIComponent(user)}${pw}@${encodeURIComponent(host)}:${port}/${encodeURIComponent(dbname)}`;
}

async function withClient(dbname, fn) {
  const c = new pg.Client({ connectionString: dbUrl(dbname) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

// withExtension: CREATE EXTENSION workflow_ext.
async function createDb(dbname, withExtension) {
  await withClient('postgres', (c) => c.query(`CREATE DATABASE "${dbname}"`));
  if (!withExtension) return;
  try {
    await withClient(dbname, (c) => c.query('CREATE EXTENSION workflow_ext'));
  } catch (e) {
    await dropDb(dbname).catch(() => {});
    throw e;
  }
}

async function dropDb(dbname) {
  await withClient('postgres', (c) => c.query(`DROP DATABASE IF EXISTS "${dbname}" WITH (FORCE)`));
}

// The schema a migrator leaves behind, read from its own bookkeeping tables.
// Returns { complete, detail }.
async function schemaState(client, kind) {
  const q = async (sql) => {
    try {
      return (await client.query(sql)).rows[0].n;
    } catch (e) {
      if (e.code === '42P01' || e.code === '3F000') return null; // not there
      throw e;
    }
  };
  const gw = await q('SELECT max(id)::int AS n FROM graphile_worker.migrations');
  if (kind === 'graphile') {
    return { complete: gw === GW_MIGRATIONS, detail: { graphile_worker_max_migration: gw } };
  }
  const dk = await q('SELECT count(*)::int AS n FROM workflow_drizzle.workflow_migrations');
  return {
    complete: gw === GW_MIGRATIONS && dk === DEVKIT_MIGRATIONS,
    detail: { graphile_worker_max_migration: gw, drizzle_migrations: dk },
  };
}

async function ledgerRows(dbname, name) {
  return withClient(dbname, async (c) =>
    (await c.query('SELECT count(*)::int AS n FROM workflow_ext.bootstraps WHERE name = $1', [name])).rows[0].n);
}

// One error as a short, stable key: SQLSTATE, constraint, first message line.
function errorKey(e) {
  if (!e) return 'unknown error';
  const msg = String(e.message || e).split('\n')[0].slice(0, 160);
  const query = e.query ? `(in: ${e.query})` : null;
  return [e.stage ? `[${e.stage}]` : null, e.code || 'no-sqlstate', e.constraint || null, msg, query]
    .filter(Boolean)
    .join(' ');
}

function serializeError(e, stage) {
  if (!e) return null;
  return {
    stage,
    code: e.code || null,
    constraint: e.constraint || null,
    message: String(e.message || e).split('\n')[0],
    query: e.query || undefined,
  };
}

// Starts a Node child with an IPC channel (for the ready/go barrier and the
// result). stdout/stderr are kept (tail) for diagnostics and the preload's
// error line.
function spawnNode(args, env, { onMessage } = {}) {
  const child = spawn(process.execPath, args, {
    cwd: HERE,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const out = { stdout: '', stderr: '' };
  const keep = (k) => (d) => {
    out[k] += d.toString();
    if (out[k].length > 20000) out[k] = out[k].slice(-20000);
  };
  child.stdout.on('data', keep('stdout'));
  child.stderr.on('data', keep('stderr'));
  if (onMessage) child.on('message', onMessage);
  child.exited = new Promise((resolve) => {
    // 'close' (not 'exit'): the pipes are drained, so the preload's line is in.
    child.on('close', (code, signal) => resolve({ code, signal, ...out }));
  });
  return child;
}

// The error line written by preload.mjs when setup.js fails.
function parsePreloadError(stderr) {
  const lines = stderr.split('\n').filter((l) => l.startsWith('@@WFX_ERROR '));
  if (!lines.length) return null;
  try {
    return JSON.parse(lines[lines.length - 1].slice('@@WFX_ERROR '.length));
  } catch {
    return null;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = {
  HERE,
  SETUP_JS,
  PRELOAD,
  CHILD_JS,
  GW_VERSION,
  DEVKIT_VERSION,
  GW_MIGRATIONS,
  DEVKIT_MIGRATIONS,
  MIGRATORS,
  dbUrl,
  withClient,
  createDb,
  dropDb,
  schemaState,
  ledgerRows,
  errorKey,
  serializeError,
  spawnNode,
  parsePreloadError,
  sleep,
};
