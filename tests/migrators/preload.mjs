// Preloaded (`node --import ./preload.mjs …/bin/setup.js`) into the DevKit's
// own setup script, which is otherwise run exactly as a user runs it
// (`npx --package=@workflow/world-postgres bootstrap`): same file, same
// process, connection string in WORKFLOW_POSTGRES_URL.
//
// 1. Records the error setup.js prints before process.exit(1) and writes it as
//    one JSON line (`@@WFX_ERROR {...}`) to stderr, so the harness gets the
//    SQLSTATE and constraint instead of parsing util.inspect output.
// 2. With WFX_BARRIER=1 (raw races): loads the setup code first (the module
//    bin/setup.js then imports from cache) and waits on the start barrier.
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let captured = null;
const consoleError = console.error;
console.error = (...args) => {
  for (const a of args) {
    if (!captured && a && typeof a === 'object' && (a instanceof Error || 'code' in a)) {
      // drizzle wraps the driver's error (DrizzleQueryError "Failed query:
      // <sql>"): the SQLSTATE is on its cause.
      const db = a.code ? a : a.cause && a.cause.code ? a.cause : a;
      captured = {
        code: db.code ?? null,
        constraint: db.constraint ?? null,
        message: String(db.message ?? db).split('\n')[0],
        query: db === a
          ? undefined
          : (String(a.message).replace(/^Failed query:\s*/, '').split('\n').find((l) => l.trim()) || '').trim().slice(0, 100),
      };
    }
  }
  consoleError.apply(console, args);
};
process.on('exit', (code) => {
  if (code !== 0) {
    const e = captured ?? { code: null, constraint: null, message: `setup.js exited with ${code}` };
    fs.writeSync(2, `\n@@WFX_ERROR ${JSON.stringify(e)}\n`);
  }
});

if (process.env.WFX_BARRIER === '1') {
  await import('@workflow/world-postgres/cli');
  const { barrier } = require('./barrier.js');
  await barrier();
  fs.writeSync(2, `\n@@WFX_START ${Date.now()}\n`);
  if (process.connected) process.disconnect();
}
