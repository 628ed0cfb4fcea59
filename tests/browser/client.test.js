'use strict';
/*
 * The JavaScript client in a real browser: Debian's Chromium, driven by
 * playwright-core, opens a page of one origin (http://localhost:PORT/) that
 * imports the client from the server under another origin
 * (http://127.0.0.1:PORT/tidings.js, a CORS module request), subscribes to a
 * topic with history, and keeps every message it gets.  This script then
 * kills the page's worker with kill -9, publishes meanwhile, and checks that
 * the page ends with every message exactly once, in order.
 *
 *   TIDINGS_URL=ws://127.0.0.1:PORT/ TIDINGS_MASTER_PID=PID REDIS_SOCK=/path \
 *     node --test tests/browser/client.test.js
 *
 * Starts no server: tests/integration/test_js_client.py starts one (one
 * worker, --history-size) and runs this file.
 *
 * Environment:
 *   TIDINGS_URL         the public WebSocket URL on 127.0.0.1, required
 *   TIDINGS_MASTER_PID  the master: its child with TIDINGS_WORKER_ID is the worker killed
 *   REDIS_SOCK          the embedded redis-server's socket: messages are
 *                       published with redis-cli FCALL tidings_publish
 *   CHROMIUM_BIN        the browser (default /usr/bin/chromium); never downloaded
 */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { waitFor: sharedWait } = require('./wait');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TOPIC = 'browser.feed';
const STEP_TIMEOUT = 20000;
const BEFORE = 5;   // messages before the kill (the page learns the epoch)
const MEANWHILE = 30; // published while the page's worker is dead
const AFTER = 10;   // live after it came back

let context;
let page;
let serverBase; // http://127.0.0.1:PORT
const consoleErrors = [];
const pageErrors = [];

const waitFor = (what, cond, timeout = STEP_TIMEOUT) => sharedWait(what, cond, timeout);

function workerPid() {
  const m = process.env.TIDINGS_MASTER_PID;
  const kids = fs.readFileSync(`/proc/${m}/task/${m}/children`, 'utf8').split(/\s+/).filter(Boolean);
  return kids.map(Number).filter((k) => {
    try {
      return fs.readFileSync(`/proc/${k}/environ`, 'latin1').includes('TIDINGS_WORKER_ID=');
    } catch {
      return false;
    }
  });
}

function publish(from, to) {
  const lines = [];
  for (let i = from; i <= to; i++) lines.push(`FCALL tidings_publish 1 ${TOPIC} ${i}`);
  const r = spawnSync('redis-cli', ['-s', process.env.REDIS_SOCK], { input: lines.join('\n') + '\n', encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

const state = () => page.evaluate(() => window.tt);

before(async () => {
  const u = process.env.TIDINGS_URL;
  if (!u || !process.env.TIDINGS_MASTER_PID || !process.env.REDIS_SOCK) {
    throw new Error('TIDINGS_URL, TIDINGS_MASTER_PID and REDIS_SOCK must be set; this test starts no server');
  }
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run deploy/install-deps.sh`);
  serverBase = new URL(u).origin.replace(/^ws/, 'http');
  const { chromium } = require('playwright-core');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-client-'));
  context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60000,
  });
  page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' && !/favicon\.ico/.test(m.location().url) &&
        !/WebSocket connection to .* failed/.test(m.text())) { // the kill, as the browser saw it
      consoleErrors.push(`${m.text()} @ ${JSON.stringify(m.location())}`);
    }
  });
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack || e)));
});

after(async () => {
  if (context) await context.close();
});

test('a page of another origin imports /tidings.js from the server (CORS)', async () => {
  // the page's origin is localhost, the module's 127.0.0.1: a cross-origin module load
  const pageUrl = serverBase.replace('127.0.0.1', 'localhost') + '/';
  await page.goto(pageUrl);
  const res = await page.evaluate(async (base) => {
    try {
      const m = await import(base + '/tidings.js');
      window.Tidings = m.Tidings;
      return typeof m.Tidings;
    } catch (e) {
      return 'import failed: ' + e;
    }
  }, serverBase);
  assert.equal(res, 'function');
});

test('kill -9 of the page\'s worker while messages are published: each arrives once, in order', async () => {
  await page.evaluate(([wsUrl, topic]) => {
    const tt = window.tt = { got: [], events: [] };
    const t = new window.Tidings(wsUrl, { minDelay: 100, maxDelay: 1000 });
    t.on('connect', () => tt.events.push('connect'));
    t.on('disconnect', (d) => tt.events.push('disconnect:' + d.code + ':' + d.willRetry));
    const sub = t.subscribe(topic, (p, meta) => tt.got.push([p, meta.offset]), { recover: true });
    for (const e of ['subscribed', 'recovered', 'gap']) sub.on(e, () => tt.events.push(e));
  }, [process.env.TIDINGS_URL, TOPIC]);
  await waitFor('subscribed', async () => (await state()).events.includes('subscribed'));

  publish(1, BEFORE);
  await waitFor(`${BEFORE} live messages`, async () => (await state()).got.length === BEFORE);

  const pids = workerPid();
  assert.equal(pids.length, 1, `one worker, got ${pids}`);
  process.kill(pids[0], 'SIGKILL');
  await waitFor('the page to see the disconnect', async () =>
    (await state()).events.some((e) => e.startsWith('disconnect:')));
  publish(BEFORE + 1, BEFORE + MEANWHILE);

  await waitFor('the page to resume', async () => (await state()).events.includes('recovered'));
  publish(BEFORE + MEANWHILE + 1, BEFORE + MEANWHILE + AFTER);
  const total = BEFORE + MEANWHILE + AFTER;
  const s = await waitFor(`${total} messages`, async () => {
    const st = await state();
    return st.got.length >= total && st;
  });
  assert.deepEqual(s.got, Array.from({ length: total }, (_, i) => [i + 1, i + 1]));
  assert.ok(!s.events.includes('gap'), JSON.stringify(s.events));
  assert.ok(s.events.filter((e) => e === 'connect').length >= 2, JSON.stringify(s.events));
  assert.match(s.events.find((e) => e.startsWith('disconnect:')), /:true$/);
  // nothing arrives twice, even a little later
  await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
  assert.equal((await state()).got.length, total);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});
