'use strict';
// The start barrier of a racing process. The parent (race.js) starts every
// process of a round, waits until each has loaded its code and opened what it
// opens before the race, and then sends them all one start time: each sleeps
// until that instant, so the migrators start together instead of in the
// order the 2 cores happened to finish loading Node.

async function barrier() {
  if (!process.send) return null; // not started by race.js: no barrier
  process.send({ type: 'ready' });
  const msg = await new Promise((resolve) => {
    const on = (m) => {
      if (m && m.type === 'go') {
        process.off('message', on);
        resolve(m);
      }
    };
    process.on('message', on);
  });
  const wait = msg.at - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  return msg;
}

module.exports = { barrier };
