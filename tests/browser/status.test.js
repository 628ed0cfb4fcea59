'use strict';
/*
 * Real-browser test of tidings' status page (the master's admin listener,
 * GET /status and the /status/ws snapshots): Debian's Chromium, driven by
 * playwright-core, opens the page of a running server.
 *
 *   ADMIN_URL=http://127.0.0.1:APORT/status TIDINGS_URL=ws://127.0.0.1:PORT/ \
 *   EXPECT_CONNECTIONS=3 EXPECT_WORKERS=2 TOPIC=status-demo \
 *     node --test tests/browser/status.test.js
 *
 * Starts no server: tests/integration/test_status_page.py starts one, opens
 * EXPECT_CONNECTIONS WebSocket clients subscribed to TOPIC, and runs this
 * file.
 *
 * Environment:
 *   ADMIN_URL           the status page, required
 *   TIDINGS_URL         the public WebSocket URL, required (a second page,
 *                       not the status page, publishes there)
 *   EXPECT_CONNECTIONS  WebSocket clients the caller holds open (default 0)
 *   EXPECT_WORKERS      the server's --workers (default 1)
 *   TOPIC               the topic those clients subscribed to
 *   SCREENSHOT          where the screenshot goes (default
 *                       tests/artifacts/status.png; the directory is made)
 *   CHROMIUM_BIN        the browser (default /usr/bin/chromium); never downloaded
 *
 * What is checked:
 *   - the page answers 200 text/html, opens its WebSocket and says "live";
 *   - the connections card shows EXPECT_CONNECTIONS, the table one row per
 *     worker (up, Redis connected, a pid), worker restarts 0;
 *   - while a second page publishes to TOPIC, the connections card counts
 *     the publisher, "messages in /s" and "deliveries /s" go above zero in
 *     the ratio of the subscribers, the table's per-worker rates move, the
 *     chart draws a line; afterwards the rates fall back to 0.0;
 *   - a full-page screenshot while the charts have data;
 *   - every request the status page made (documents, sockets, anything
 *     DevTools saw) went to the admin origin, none failed, and the console
 *     logged no error.
 */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { waitFor: sharedWait } = require('./wait');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const EXPECT_CONNECTIONS = Number(process.env.EXPECT_CONNECTIONS ?? 0);
const EXPECT_WORKERS = Number(process.env.EXPECT_WORKERS ?? 1);
const TOPIC = process.env.TOPIC || 'status-demo';
const SCREENSHOT = process.env.SCREENSHOT ||
  path.join(__dirname, '..', 'artifacts', 'status.png');
const STEP_TIMEOUT = 10000; // ms, for one wait inside a test
const PUBLISH_EVERY = 100;  // ms between publish bursts
const PUBLISH_BURST = 5;    // messages per burst: about 50/s

let adminUrl;
let adminOrigin; // http://host:port
let publicPage;  // http://host:port/ of the public port (GET / answers 200)
let publicWs;
let tmpDir;
let context;
let page;   // the status page
let driver; // a second page that publishes
let cdp;
const requests = [];       // every URL the status page asked for
const failedRequests = [];
const consoleErrors = [];
const favicon = [];        // Chromium's own /favicon.ico request, reported apart
const pageErrors = [];
const snapshots = [];      // [ms since epoch, payload] of every /status/ws frame, from DevTools

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const waitFor = (what, cond, timeout = STEP_TIMEOUT) => sharedWait(what, cond, timeout);

/** What the page shows: the cards and the table, as text. */
function readPage() {
  return page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent;
    const rows = [...document.querySelectorAll('#workers tbody tr')].map((tr) =>
      [...tr.children].map((td) => ({ text: td.textContent, cls: td.className })));
    const head = [...document.querySelectorAll('#workers thead th')].map((th) => th.textContent);
    return {
      state: t('state'), conn: t('c-conn'), in: t('c-in'), out: t('c-out'), restarts: t('c-rst'),
      head, rows,
    };
  });
}

function column(view, name) {
  const i = view.head.indexOf(name);
  assert.ok(i >= 0, `no column ${name} in ${JSON.stringify(view.head)}`);
  return view.rows.map((r) => r[i]);
}

/** Pixels of a canvas drawn in a colour close to rgb. */
function coloredPixels(id, rgb) {
  return page.evaluate(([cid, c]) => {
    const cv = document.getElementById(cid);
    const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 128 && Math.abs(d[i] - c[0]) < 40 && Math.abs(d[i + 1] - c[1]) < 40 &&
          Math.abs(d[i + 2] - c[2]) < 40) n++;
    }
    return n;
  }, [id, rgb]);
}

/* ---- the browser ---- */

before(async () => {
  if (!process.env.ADMIN_URL) throw new Error('ADMIN_URL is not set (e.g. http://127.0.0.1:9090/status)');
  if (!process.env.TIDINGS_URL) throw new Error('TIDINGS_URL is not set (e.g. ws://127.0.0.1:8080/)');
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: run deploy/install-deps.sh (Debian package chromium)`);
  }
  adminUrl = process.env.ADMIN_URL;
  adminOrigin = new URL(adminUrl).origin;
  const u = new URL(process.env.TIDINGS_URL);
  u.protocol = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
  u.pathname = '/';
  u.search = '';
  publicPage = u.toString();
  publicWs = publicPage.replace(/^http/, 'ws');

  const { chromium } = require('playwright-core');
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-status-'));
  context = await chromium.launchPersistentContext(path.join(tmpDir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
    timeout: 60000,
  });
  page = context.pages()[0] || await context.newPage();
  const faviconUrl = new URL('/favicon.ico', adminOrigin).href;
  page.on('request', (r) => requests.push(r.url()));
  page.on('websocket', (ws) => requests.push(ws.url()));
  page.on('requestfailed', (r) => failedRequests.push(`${r.url()}: ${r.failure() && r.failure().errorText}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const line = `${m.text()} @ ${JSON.stringify(m.location())}`;
    // Chromium asks for /favicon.ico by itself; its 404 is reported apart
    if (m.location().url === faviconUrl) favicon.push(line);
    else consoleErrors.push(line);
  });
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack || e)));
  // DevTools sees what playwright's events might not (favicon, preloads)
  cdp = await context.newCDPSession(page);
  cdp.on('Network.requestWillBeSent', (e) => requests.push(e.request.url));
  cdp.on('Network.webSocketCreated', (e) => requests.push(e.url));
  cdp.on('Network.webSocketFrameReceived', (e) => snapshots.push([Date.now(), e.response.payloadData]));
  cdp.on('Network.loadingFailed', (e) => {
    if (!e.canceled) failedRequests.push(`DevTools request ${e.requestId}: ${e.errorText}`);
  });
  await cdp.send('Network.enable');
});

after(async () => {
  if (context) await context.close().catch(() => {});
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});

/* ---- the tests ---- */

test('the status page loads and goes live', { timeout: 30000 }, async () => {
  const resp = await page.goto(adminUrl);
  assert.equal(resp.status(), 200, `GET ${adminUrl}`);
  assert.equal(resp.headers()['content-type'], 'text/html; charset=utf-8');
  assert.equal(await page.title(), 'tidings status');
  await waitFor('the page to say it is live',
                async () => (await readPage()).state === 'live, updated every second');
});

test(`the live numbers appear: ${EXPECT_CONNECTIONS} connections, ${EXPECT_WORKERS} workers up on Redis`,
     { timeout: 30000 }, async () => {
  const view = await waitFor('the cards and the table to show the server', async () => {
    const v = await readPage();
    if (v.conn !== String(EXPECT_CONNECTIONS) || v.rows.length !== EXPECT_WORKERS) return null;
    // Redis state is refreshed by each worker once a second
    if (!column(v, 'redis').every((c) => c.text === 'connected')) return null;
    return v;
  });
  assert.equal(view.restarts, '0');
  assert.equal(view.in, '0.0');
  assert.equal(view.out, '0.0');
  assert.deepEqual(column(view, 'worker').map((c) => c.text),
                   Array.from({ length: EXPECT_WORKERS }, (_, i) => String(i + 1)));
  for (const c of column(view, 'pid')) assert.match(c.text, /^[1-9]\d*$/, 'a worker pid');
  for (const c of column(view, 'state')) assert.deepEqual(c, { text: 'up', cls: 'up' });
  for (const c of column(view, 'redis')) assert.deepEqual(c, { text: 'connected', cls: 'up' });
  const perWorker = column(view, 'connections').map((c) => Number(c.text));
  assert.equal(perWorker.reduce((a, b) => a + b, 0), EXPECT_CONNECTIONS,
               `per-worker connections ${perWorker}`);
});

test('publishing moves the rates, the table and the chart; a screenshot', { timeout: 60000 }, async (t) => {
  driver = await context.newPage(); // the status page must not talk to the public port
  await driver.goto(publicPage);
  await driver.evaluate(async ([url, topic, every, burst]) => {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    window.published = 0;
    window.replies = 0;
    ws.onmessage = (e) => { if (JSON.parse(e.data).status === 'published') window.replies++; };
    window.pub = ws;
    window.timer = setInterval(() => {
      for (let i = 0; i < burst; i++) {
        ws.send(JSON.stringify({ type: 'publish', topic, payload: { n: window.published++ } }));
      }
    }, every);
  }, [publicWs, TOPIC, PUBLISH_EVERY, PUBLISH_BURST]);

  const busy = await waitFor('deliveries /s and messages in /s to rise in proportion', async () => {
    const v = await readPage();
    const rin = Number(v.in);
    const rout = Number(v.out);
    if (v.conn !== String(EXPECT_CONNECTIONS + 1) || !(rin > 0) || !(rout > 0)) return null;
    // every publish is delivered to the EXPECT_CONNECTIONS subscribers
    const ratio = rout / rin;
    if (EXPECT_CONNECTIONS && Math.abs(ratio - EXPECT_CONNECTIONS) > EXPECT_CONNECTIONS * 0.34) return null;
    return v;
  });
  const outs = column(busy, 'out /s').map((c) => Number(c.text));
  const ins = column(busy, 'in /s').map((c) => Number(c.text));
  assert.ok(outs.reduce((a, b) => a + b, 0) > 0, `table out /s: ${outs}`);
  assert.ok(ins.reduce((a, b) => a + b, 0) > 0, `table in /s: ${ins}`);
  assert.equal(column(busy, 'connections').map((c) => Number(c.text)).reduce((a, b) => a + b, 0),
               EXPECT_CONNECTIONS + 1);

  // a few seconds of history for the charts, then the picture
  await sleep(4000);
  const orange = await coloredPixels('g-msg', [0xee, 0x88, 0x33]);
  const blue = await coloredPixels('g-msg', [0x33, 0x77, 0xcc]);
  const green = await coloredPixels('g-conn', [0x22, 0xaa, 0x77]);
  assert.ok(orange > 50 && blue > 50 && green > 50,
            `chart pixels: deliveries ${orange}, messages ${blue}, connections ${green}`);
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.ok(fs.statSync(SCREENSHOT).size > 10 * 1024, 'a screenshot of more than 10 KB');

  const sent = await driver.evaluate(async () => {
    clearInterval(window.timer);
    const deadline = Date.now() + 5000;
    while (window.replies < window.published && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    window.pub.close(1000);
    return { published: window.published, replies: window.replies };
  });
  assert.equal(sent.replies, sent.published, 'every publish was answered');
  await driver.close();

  const idle = await waitFor('the rates to fall back to zero and the publisher to leave', async () => {
    const v = await readPage();
    return v.conn === String(EXPECT_CONNECTIONS) && v.in === '0.0' && v.out === '0.0' ? v : null;
  });
  assert.equal(idle.restarts, '0');
  t.diagnostic(`published ${sent.published} messages; busy page: messages in ${busy.in}/s, ` +
               `deliveries ${busy.out}/s; screenshot ${SCREENSHOT} (${fs.statSync(SCREENSHOT).size} bytes)`);
});

test('the page is self-contained: every request went to the admin origin, none failed',
     async (t) => {
  assert.ok(requests.length >= 2, `requests seen: ${JSON.stringify(requests)}`);
  const wsOrigin = adminOrigin.replace(/^http/, 'ws');
  const foreign = requests.filter((u) => {
    const o = new URL(u).origin;
    return o !== adminOrigin && o !== wsOrigin;
  });
  assert.deepEqual(foreign, [], 'requests to other origins');
  assert.ok(requests.some((u) => u === `${wsOrigin}/status/ws`), `the snapshot socket: ${requests}`);
  assert.deepEqual(failedRequests, [], 'failed requests');
  for (const f of favicon) t.diagnostic(`favicon (Chromium's own request): ${f}`);
  t.diagnostic(`${new Set(requests).size} distinct URLs: ${[...new Set(requests)].join(' ')}`);
});

test('the page got one snapshot a second, and drew one point per snapshot', async (t) => {
  assert.ok(snapshots.length >= 3, `${snapshots.length} snapshots`);
  const span = (snapshots[snapshots.length - 1][0] - snapshots[0][0]) / 1000;
  const times = snapshots.map(([, p]) => JSON.parse(p).time);
  const gaps = times.slice(1).map((x, i) => x - times[i]);
  t.diagnostic(`${snapshots.length} snapshots over ${span.toFixed(1)} s; server time gaps ` +
               `${gaps.map((g) => g.toFixed(2)).join(' ')}`);
  // one on connecting, then one a second from then on: counted against the
  // server's own clock (the browser's arrival times bunch up when the page
  // is busy loading, which made this fail about once in five runs)
  const serverSpan = times[times.length - 1] - times[0];
  assert.ok(snapshots.length <= serverSpan + 1.5,
            `${snapshots.length} snapshots in ${serverSpan.toFixed(1)} s of server time`);
  for (const g of gaps) assert.ok(g > 0.45 && g < 1.6, `snapshot times ${times}`);
  // the page's chart history (a script-level binding of the page; if it is
  // renamed, say so rather than fail)
  const points = await page.evaluate(
    () => (typeof hist === 'object' && hist.conn ? hist.conn.length : null)); // eslint-disable-line no-undef
  if (points === null) t.diagnostic('the page has no hist.conn any more: chart history not checked');
  else assert.equal(points, Math.min(120, snapshots.length), 'points in the connections chart');
});

test('the console logged no error and the page threw none', async () => {
  assert.deepEqual(pageErrors, [], 'uncaught page errors');
  assert.deepEqual(consoleErrors, [], 'console errors');
});
