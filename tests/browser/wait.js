'use strict';
/* wait.js - the one wait of the browser tests: poll a condition until it
 * gives something truthy (returned) or the time is up (an error that names
 * what was awaited and the last value seen). */

async function waitFor(what, cond, timeout, pollMs = 50) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, pollMs)); // the poll interval of this wait
  }
}

module.exports = { waitFor };
