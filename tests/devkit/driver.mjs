#!/usr/bin/env node
// Drives the REAL @workflow/world-postgres package (its own World object and
// world.events.create) for tests/devkit/test_devkit.py. One driver for every
// version: the package is imported from the node_modules of the version
// directory given as the first argument (v4, v5), never from here.
//
//   node driver.mjs calls <versionDir> <dbname> <ops.json>
//       Runs the ops in order, each awaited, with one World:
//         {"op": "newRun", "name": "A"}            mint a runId (wrun_<ULID>, the
//                                                  package's own ulid dependency)
//         {"op": "create", "runId": R, "data": D}  world.events.create(R, D)
//         {"op": "list", "runId": R}               world.events.list (all pages)
//       R may be {"$run": "A"} (a minted id); in D, {"$bytes": "text"} is a
//       Uint8Array of that text (serialized data, as the runtime sends it) and
//       {"$specVersion": true} the World's own specVersion, {"$date": "now" | iso}
//       a Date.
//   node driver.mjs race <versionDir> <dbname> <plan.json> <barrierDir> <worker>
//       One racing process: builds its World, warms its pool, writes
//       <barrierDir>/ready.<worker>, waits for <barrierDir>/go (it holds the
//       start instant, ms since the epoch), then fires every call of the plan
//       ({"calls": [{"kind", "entity", "runId", "data"}]}) at once and records
//       each outcome.
//   node driver.mjs load <versionDir> <dbname> <template.json> <barrierDir> <worker>
//       One writer of the package's workload: builds its World, writes
//       <barrierDir>/ready.<worker>, then until <barrierDir>/stop exists
//       mints a run and makes the template's calls on it in order
//       ({"calls": [{"data"}]}), each awaited and timed. Reports the calls,
//       the longest one (ms) and every failure.
//
// Prints ONE JSON line on stdout. Every failure of a call is recorded, not
// thrown: {outcome: "ok" | "conflict" (EntityConflictError) | "other", name,
// message, code, constraint, detail} where code/constraint/detail are those
// of the driver error (drizzle wraps it: DrizzleQueryError, cause = pg error).
// Connection: PGHOST (host or socket directory), PGPORT, PGUSER, PGPASSWORD.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [cmd, versionArg, dbname, ...rest] = process.argv.slice(2);
if (!cmd || !versionArg || !dbname) {
  console.error('usage: driver.mjs calls|race <versionDir> <dbname> ...');
  process.exit(2);
}
const VERSION_DIR = path.resolve(versionArg);
// Resolve from the version directory's node_modules, whatever the cwd.
const requireFromVersion = createRequire(path.join(VERSION_DIR, 'package.json'));
const PKG = '@workflow/world-postgres';
// The package's "exports" hide package.json: find it from its main entry.
const pkgMain = requireFromVersion.resolve(PKG);
const pkgDir = path.resolve(path.dirname(pkgMain), '..');
const pkgVersion = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;
const worldPg = await import(pathToFileURL(pkgMain).href);
// The ulid the package itself depends on (resolved from the package's dir).
const requireFromPkg = createRequire(path.join(pkgDir, 'package.json'));
const ulidMod = await import(pathToFileURL(requireFromPkg.resolve('ulid')).href);
const ulid = ulidMod.monotonicFactory ? ulidMod.monotonicFactory() : ulidMod.ulid;

function dbUrl(name) {
  const host = process.env.PGHOST || 'localhost';
  const port = process.env.PGPORT || '5432';
  const user = process.env.PGUSER || 'postgres';
  const pw = process.env.PGPASSWORD ? ':' + encodeURIComponent(process.env.PGPASSWORD) : '';
  // A socket directory is written percent-encoded in the host part
  // (pg-connection-string accepts it).
  return `postgresql://${encodeURIComponent(user)}${pw}@${encodeURIComponent(host)}:${port}/${encodeURIComponent(name)}`;
}

function makeWorld() {
  // The package's exported factory, configured as a user would (no start():
  // no graphile-worker runner, no queue; storage only).
  return worldPg.createWorld({ connectionString: dbUrl(dbname), maxPoolSize: 4 });
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describeError(e) {
  if (!e) return { outcome: 'other', name: null, message: 'undefined error' };
  const db = e.code && typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code) ? e : e.cause && e.cause.code ? e.cause : null;
  return {
    outcome: e.name === 'EntityConflictError' ? 'conflict' : 'other',
    // drizzle's DrizzleQueryError keeps Error's name: report its class then
    name: (e.name === 'Error' && e.constructor?.name) || e.name || null,
    message: String(e.message ?? e).split('\n')[0].slice(0, 300),
    // where the SQLSTATE was found: on the error itself or on its cause
    codeOn: db === e ? 'error' : db ? 'cause' : null,
    code: db?.code ?? null,
    constraint: db?.constraint ?? null,
    detail: db?.detail ?? null,
    dbMessage: db ? String(db.message).split('\n')[0].slice(0, 300) : null,
  };
}

const runs = {};
function resolveRun(r) {
  if (r && typeof r === 'object' && '$run' in r) {
    if (!runs[r.$run]) throw new Error(`run ${r.$run} not minted`);
    return runs[r.$run];
  }
  return r;
}
function resolveData(v, world) {
  if (Array.isArray(v)) return v.map((x) => resolveData(x, world));
  if (v && typeof v === 'object') {
    if ('$bytes' in v) return new TextEncoder().encode(String(v.$bytes));
    if ('$specVersion' in v) return world.specVersion;
    if ('$date' in v) return v.$date === 'now' ? new Date() : new Date(v.$date);
    if ('$run' in v) return resolveRun(v);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolveData(x, world)]));
  }
  return v;
}

async function createOne(world, runId, data) {
  const t0 = Date.now();
  try {
    const r = await world.events.create(runId, data);
    return {
      outcome: 'ok',
      eventId: r?.event?.eventId ?? null,
      eventType: r?.event?.eventType ?? null,
      runId: r?.event?.runId ?? null,
      ms: Date.now() - t0,
    };
  } catch (e) {
    return { ...describeError(e), ms: Date.now() - t0 };
  }
}

async function listAll(world, runId) {
  const events = [];
  let cursor;
  for (let page = 0; page < 100; page++) {
    const r = await world.events.list({ runId, pagination: { limit: 100, ...(cursor ? { cursor } : {}) } });
    events.push(...r.data);
    if (!r.hasMore) break;
    cursor = r.cursor;
  }
  return events.map((e) => ({ eventId: e.eventId, eventType: e.eventType, correlationId: e.correlationId ?? null }));
}

async function cmdCalls([opsFile]) {
  const ops = JSON.parse(fs.readFileSync(opsFile, 'utf8'));
  const world = makeWorld();
  const results = [];
  try {
    for (const op of ops) {
      if (op.op === 'newRun') {
        runs[op.name] = `wrun_${ulid()}`;
        results.push({ op: 'newRun', name: op.name, runId: runs[op.name] });
      } else if (op.op === 'create') {
        const runId = resolveRun(op.runId);
        const data = resolveData(op.data, world);
        results.push({ op: 'create', runId, eventType: data.eventType, correlationId: data.correlationId ?? null, ...(await createOne(world, runId, data)) });
      } else if (op.op === 'list') {
        const runId = resolveRun(op.runId);
        try {
          results.push({ op: 'list', runId, outcome: 'ok', events: await listAll(world, runId) });
        } catch (e) {
          results.push({ op: 'list', runId, ...describeError(e) });
        }
      } else {
        throw new Error(`unknown op ${op.op}`);
      }
    }
  } finally {
    await world.close().catch(() => {});
  }
  out({ ok: true, package: PKG, version: pkgVersion, specVersion: world.specVersion, runs, results });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function cmdRace([planFile, barrierDir, worker]) {
  const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));
  const world = makeWorld();
  const records = [];
  let startedAt = null;
  try {
    // Warm up: a read through the package opens pool connections and
    // prepares its statements before the start instant.
    await Promise.all(Array.from({ length: 4 }, () => world.events.list({ runId: 'wrun_warmup', pagination: { limit: 1 } })));
    const calls = plan.calls.map((c) => ({ ...c, data: resolveData(c.data, world) }));
    fs.writeFileSync(path.join(barrierDir, `ready.${worker}`), String(process.pid));
    const goFile = path.join(barrierDir, 'go');
    const deadline = Date.now() + 120_000;
    while (!fs.existsSync(goFile)) {
      if (Date.now() > deadline) throw new Error('barrier: no go file within 120 s');
      await sleep(5);
    }
    let at = Number(fs.readFileSync(goFile, 'utf8'));
    for (let i = 0; !at && i < 100; i++) {
      await sleep(2);
      at = Number(fs.readFileSync(goFile, 'utf8'));
    }
    while (Date.now() < at) await sleep(Math.min(at - Date.now(), 20));
    startedAt = Date.now();
    const results = await Promise.all(calls.map((c) => createOne(world, c.runId, c.data)));
    calls.forEach((c, i) => records.push({ kind: c.kind, entity: c.entity, ...results[i] }));
  } finally {
    await world.close().catch(() => {});
  }
  out({ ok: true, version: pkgVersion, worker: Number(worker), pid: process.pid, startedAt, records });
}

async function cmdLoad([templateFile, barrierDir, worker]) {
  const template = JSON.parse(fs.readFileSync(templateFile, 'utf8'));
  const world = makeWorld();
  let calls = 0;
  let longest = 0;
  const failures = [];
  try {
    await Promise.all(Array.from({ length: 4 }, () => world.events.list({ runId: 'wrun_warmup', pagination: { limit: 1 } })));
    const datas = template.calls.map((c) => resolveData(c.data, world));
    fs.writeFileSync(path.join(barrierDir, `ready.${worker}`), String(process.pid));
    const stopFile = path.join(barrierDir, 'stop');
    while (!fs.existsSync(stopFile)) {
      const runId = `wrun_${ulid()}`;
      for (const template of datas) {
        // Entity ids are the package's per database (its workflow_steps
        // key): one per run.
        const data = template.correlationId ? { ...template, correlationId: `${template.correlationId}_${runId}` } : template;
        const r = await createOne(world, runId, data);
        calls += 1;
        longest = Math.max(longest, r.ms);
        if (r.outcome !== 'ok') {
          if (failures.length < 20) failures.push({ runId, eventType: data.eventType, ...r });
          break;
        }
      }
    }
  } finally {
    await world.close().catch(() => {});
  }
  out({ ok: true, version: pkgVersion, worker: Number(worker), calls, longestMs: longest, failures });
}

try {
  if (cmd === 'calls') await cmdCalls(rest);
  else if (cmd === 'load') await cmdLoad(rest);
  else if (cmd === 'race') await cmdRace(rest);
  else throw new Error(`unknown command ${cmd}`);
} catch (e) {
  out({ ok: false, error: describeError(e), stack: String(e?.stack ?? '').split('\n').slice(0, 6).join(' | ') });
  process.exitCode = 1;
}
