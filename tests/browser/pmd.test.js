'use strict';
/*
 * Real-browser test of tidings' permessage-deflate (RFC 7692): Debian's
 * Chromium, driven by playwright-core, talks to a running tidings server.
 *
 *   TIDINGS_URL=ws://127.0.0.1:PORT/ node --test tests/browser/pmd.test.js
 *
 * Starts no server: tests/integration/test_browser.py starts one
 * (--workers 1 --compression-threshold 256) and runs this file.
 *
 * Environment:
 *   TIDINGS_URL    the server's WebSocket URL (ws:// or http://), required
 *   EXPECT_PMD     1 (default): the server negotiates permessage-deflate;
 *                  0: it was started with --no-compression and must not
 *   PMD_THRESHOLD  the server's --compression-threshold (default 256)
 *   CHROMIUM_BIN   the browser (default /usr/bin/chromium); never downloaded
 *
 * What is checked, with two or more WebSockets opened in the page:
 *   - ws.extensions, and the 101 response header as DevTools (CDP
 *     Network.webSocketHandshakeResponseReceived) saw it;
 *   - payloads from 10 bytes to 60 KB, non-ASCII text and nested objects,
 *     published by one browser socket, reach a subscribed one exactly and
 *     in order; a 50 KB publish (which Chromium sends compressed) reaches
 *     a second browser socket;
 *   - DevTools saw the same frames the page received, and the console no
 *     error;
 *   - on the wire, from Chromium's own net-log (--log-net-log, frame
 *     headers with their RSV1 bit): a notification of fewer bytes than the
 *     threshold came uncompressed, one of at least that many compressed,
 *     and the browser's 50 KB publish went out compressed.  With
 *     EXPECT_PMD=0 no frame either way has RSV1 set.
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
const EXPECT_PMD = (process.env.EXPECT_PMD ?? '1') !== '0';
const THRESHOLD = Number(process.env.PMD_THRESHOLD ?? 256);
const PMD = 'permessage-deflate';
const STEP_TIMEOUT = 20000; // ms, for one wait inside a test

let wsBase;    // ws://host:port/
let pageUrl;   // http://host:port/ (GET / answers 200 text/plain)
let tmpDir;
let netlogPath;
let context;
let page;
let cdp;
let contextClosed = false;
const consoleErrors = [];
const pageErrors = [];
const cdpEvents = {
  created: new Map(),    // requestId -> url
  request: new Map(),    // requestId -> handshake request headers
  response: new Map(),   // requestId -> {status, headers}
  received: new Map(),   // requestId -> [{opcode, payloadData}]
  sent: new Map(),
  errors: [],
};
// tag -> {url, sent: [string], received: [string]}: filled in by the tests
// from the page's own records, checked against DevTools and the net-log.
const sockets = new Map();
// tag -> indexes of sent messages that must have gone out compressed
const mustSendCompressed = new Map();

function bytes(s) {
  return Buffer.byteLength(s, 'utf8');
}

function header(headers, name) {
  for (const [k, v] of Object.entries(headers || {})) {
    if (k.toLowerCase() === name.toLowerCase()) return v;
  }
  return undefined;
}

/** Deterministic printable text (a few quotes and backslashes included, so
 * that JSON escaping is exercised) of n characters. */
function text(n, seed) {
  let x = seed >>> 0 || 1;
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_';
  let out = '';
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    const r = x % 1000;
    out += r === 0 ? '"' : r === 1 ? '\\' : alphabet[x % alphabet.length];
  }
  return out;
}

const waitFor = (what, cond, timeout = STEP_TIMEOUT) => sharedWait(what, cond, timeout, 10);

/* ---- in the page ---- */

/** Installed in the page: window.tt, a few helpers over named WebSockets
 * that keep every message sent and received. */
function pageHelpers(stepTimeout) {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  window.tt = {
    socks: {},
    open(tag, url) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const s = { ws, url, sent: [], received: [], read: 0, closed: null, error: false };
        this.socks[tag] = s;
        ws.onmessage = (e) => s.received.push(e.data);
        ws.onerror = () => { s.error = true; reject(new Error(`WebSocket ${tag} failed`)); };
        ws.onclose = (e) => { s.closed = { code: e.code, clean: e.wasClean }; };
        ws.onopen = () => resolve({ extensions: ws.extensions, protocol: ws.protocol });
      });
    },
    send(tag, msg) {
      const s = this.socks[tag];
      const data = typeof msg === 'string' ? msg : JSON.stringify(msg);
      s.ws.send(data);
      s.sent.push(data);
    },
    /** The next n messages of socket `tag` (raw text), waiting for them. */
    async take(tag, n) {
      const s = this.socks[tag];
      const deadline = Date.now() + stepTimeout;
      while (s.received.length - s.read < n) {
        if (s.closed) throw new Error(`${tag} closed (${JSON.stringify(s.closed)}) after ` +
                                      `${s.received.length - s.read} of ${n} messages`);
        if (Date.now() > deadline) throw new Error(`${tag}: ${s.received.length - s.read} of ` +
                                                   `${n} messages after ${stepTimeout} ms`);
        await sleep(5);
      }
      const out = s.received.slice(s.read, s.read + n);
      s.read += n;
      return out;
    },
    /** Closes every socket (1000) and waits for the closing handshakes. */
    async closeAll() {
      const deadline = Date.now() + stepTimeout;
      for (const s of Object.values(this.socks)) if (!s.closed) s.ws.close(1000, 'done');
      while (Object.values(this.socks).some((s) => !s.closed)) {
        if (Date.now() > deadline) throw new Error('closing handshakes did not finish');
        await sleep(5);
      }
      return Object.fromEntries(Object.entries(this.socks).map(([k, s]) => [k, s.closed]));
    },
    record(tag) {
      const s = this.socks[tag];
      return { url: s.url, sent: s.sent, received: s.received, closed: s.closed, error: s.error };
    },
  };
}

async function open(tag) {
  const url = `${wsBase}?s=${encodeURIComponent(tag)}`;
  const r = await page.evaluate(([t, u]) => window.tt.open(t, u), [tag, url]);
  sockets.set(tag, { url });
  if (EXPECT_PMD) {
    assert.ok(r.extensions.includes(PMD), `${tag}: ws.extensions is ${JSON.stringify(r.extensions)}`);
  } else {
    assert.equal(r.extensions, '', `${tag}: ws.extensions with --no-compression`);
  }
  return r;
}

const send = (tag, msg) => page.evaluate(([t, m]) => window.tt.send(t, m), [tag, msg]);

async function take(tag, n) {
  const raw = await page.evaluate(([t, k]) => window.tt.take(t, k), [tag, n]);
  return raw.map((s) => JSON.parse(s));
}

async function subscribe(tag, topic) {
  await send(tag, { type: 'subscribe', topic });
  assert.deepEqual(await take(tag, 1), [{ status: 'subscribed', topic }]);
}

/** Publishes every payload from `pubTag` (without waiting in between), then
 * checks the replies, and that `subTag` got exactly those payloads in order. */
async function publishAndCheck(pubTag, subTag, topic, payloads) {
  for (const payload of payloads) await send(pubTag, { type: 'publish', topic, payload });
  const replies = await take(pubTag, payloads.length);
  for (const r of replies) assert.deepEqual(r, { status: 'published', topic });
  const notes = await take(subTag, payloads.length);
  assert.equal(notes.length, payloads.length);
  notes.forEach((n, i) => {
    assert.deepEqual(n, { type: 'notification', topic, payload: payloads[i] },
                     `notification ${i} (payload ${JSON.stringify(payloads[i]).slice(0, 60)}...)`);
  });
}

async function syncRecords() {
  for (const tag of sockets.keys()) {
    const rec = await page.evaluate((t) => window.tt.record(t), tag);
    sockets.set(tag, rec);
  }
}

/* ---- the browser ---- */

before(async () => {
  const u = process.env.TIDINGS_URL;
  if (!u) throw new Error('TIDINGS_URL is not set (e.g. ws://127.0.0.1:8080/); this test starts no server');
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: run deploy/install-deps.sh (Debian package chromium)`);
  }
  const url = new URL(u);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.pathname = '/';
  url.search = '';
  pageUrl = url.toString();
  wsBase = pageUrl.replace(/^http/, 'ws');

  const { chromium } = require('playwright-core');
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-browser-'));
  netlogPath = path.join(tmpDir, 'netlog.json');
  context = await chromium.launchPersistentContext(path.join(tmpDir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, `--log-net-log=${netlogPath}`],
    timeout: 60000,
  });
  page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => {
    // Chromium fetches /favicon.ico by itself, and tidings rightly answers
    // 404: that one error is not the page's.
    if (m.type() === 'error' && m.location().url !== new URL('/favicon.ico', pageUrl).href) {
      consoleErrors.push(`${m.text()} @ ${JSON.stringify(m.location())}`);
    }
  });
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack || e)));

  cdp = await context.newCDPSession(page);
  const push = (map, id, v) => { if (!map.has(id)) map.set(id, []); map.get(id).push(v); };
  cdp.on('Network.webSocketCreated', (e) => cdpEvents.created.set(e.requestId, e.url));
  cdp.on('Network.webSocketWillSendHandshakeRequest',
         (e) => cdpEvents.request.set(e.requestId, e.request.headers));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => cdpEvents.response.set(e.requestId, {
    status: e.response.status, headers: e.response.headers,
  }));
  cdp.on('Network.webSocketFrameReceived', (e) => push(cdpEvents.received, e.requestId, e.response));
  cdp.on('Network.webSocketFrameSent', (e) => push(cdpEvents.sent, e.requestId, e.response));
  cdp.on('Network.webSocketFrameError', (e) => cdpEvents.errors.push(e));
  await cdp.send('Network.enable');

  const resp = await page.goto(pageUrl);
  assert.equal(resp.status(), 200, `GET ${pageUrl}`);
  await page.evaluate(pageHelpers, STEP_TIMEOUT);
});

after(async () => {
  if (context && !contextClosed) await context.close().catch(() => {});
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});

function cdpIdFor(tag) {
  const url = sockets.get(tag).url;
  const ids = [...cdpEvents.created].filter(([, u]) => u === url).map(([id]) => id);
  assert.equal(ids.length, 1, `DevTools requestIds for ${url}: ${ids}`);
  return ids[0];
}

/* ---- the tests ---- */

test(`the handshake ${EXPECT_PMD ? 'negotiates' : 'declines'} permessage-deflate ` +
     '(ws.extensions and the 101 header seen by DevTools)', { timeout: 60000 }, async () => {
  const r = await open('handshake');
  if (EXPECT_PMD) {
    assert.match(r.extensions, /^permessage-deflate(;|$)/);
  }
  const id = cdpIdFor('handshake');
  const resp = await waitFor('the handshake response in DevTools', () => cdpEvents.response.get(id));
  assert.equal(resp.status, 101);
  const offered = header(cdpEvents.request.get(id), 'Sec-WebSocket-Extensions') || '';
  assert.ok(offered.includes(PMD), `Chromium did not offer ${PMD}: ${JSON.stringify(offered)}`);
  const ext = header(resp.headers, 'Sec-WebSocket-Extensions');
  if (EXPECT_PMD) {
    assert.ok(ext && ext.includes(PMD), `101 Sec-WebSocket-Extensions: ${JSON.stringify(ext)}`);
    assert.equal(ext, r.extensions, 'ws.extensions is the header the server sent');
  } else {
    assert.ok(!ext || !ext.includes(PMD), `101 Sec-WebSocket-Extensions: ${JSON.stringify(ext)}`);
  }
  await send('handshake', { type: 'ping' });
  assert.deepEqual(await take('handshake', 1), [{ type: 'pong' }]);
});

test('payloads around the compression threshold reach a browser subscriber exactly and in order',
     { timeout: 120000 }, async () => {
  const topic = 'pmd-sizes';
  await open('sizes-sub');
  await open('sizes-pub');
  await subscribe('sizes-sub', topic);

  // Bytes a notification adds to its payload's JSON, measured (not assumed)
  // so that notifications of exactly THRESHOLD - 1 and THRESHOLD bytes can
  // be made.
  await publishAndCheck('sizes-pub', 'sizes-sub', topic, ['probe']);
  const [, probe] = await page.evaluate(() => window.tt.record('sizes-sub').received);
  const overhead = bytes(probe) - bytes(JSON.stringify('probe'));
  const around = (n) => 'b'.repeat(n - overhead - 2); // notification of n bytes
  const payloads = [
    text(10, 1), text(200, 2), text(255, 3), text(300, 5), text(5000, 6), text(60000, 7),
    around(THRESHOLD - 1), around(THRESHOLD), around(THRESHOLD + 1), around(THRESHOLD - 2),
    'héllo wörld — 日本語 — 🚀✨ — Ωμέγα',
    'héllo wörld — 日本語 — 🚀✨ — Ωμέγα\n'.repeat(40),
    { small: { a: [1, 2.5, -3, true, false, null], s: 'ü' } },
    {
      user: { id: 42, name: 'Zoë Ñandú', tags: ['a', 'β', '🚀'] },
      items: [1, 2.5, -3, true, false, null, { deep: { deeper: [text(700, 9), { k: 'v' }] } }],
      empty: {}, none: [], quote: 'say "hi" \\ bye',
    },
    [text(400, 10), ['nested', ['array']]],
    text(10, 11), // back below the threshold after large ones
  ];
  await publishAndCheck('sizes-pub', 'sizes-sub', topic, payloads);

  await syncRecords();
  const sizes = sockets.get('sizes-sub').received.slice(1).map(bytes);
  assert.ok(sizes.some((n) => n < THRESHOLD) && sizes.some((n) => n >= THRESHOLD),
            `notifications on both sides of ${THRESHOLD} bytes: ${sizes}`);
  assert.ok(sizes.includes(THRESHOLD - 1) && sizes.includes(THRESHOLD),
            `notifications of exactly ${THRESHOLD - 1} and ${THRESHOLD} bytes: ${sizes}`);
});

test(`a 50 KB message published from the browser (${EXPECT_PMD ? '' : 'not '}compressed by Chromium) ` +
     'reaches a second browser socket',
     { timeout: 120000 }, async () => {
  const topic = 'pmd-big';
  await open('big-sub');
  await open('big-pub');
  await subscribe('big-sub', topic);
  const big = text(50 * 1024, 12);
  await publishAndCheck('big-pub', 'big-sub', topic, [big]);
  mustSendCompressed.set('big-pub', [0]);

  // and back the other way, subscriber and publisher swapped
  await subscribe('big-pub', 'pmd-big-back');
  const back = { echo: big.slice(0, 40000), n: 1 };
  await publishAndCheck('big-sub', 'big-pub', 'pmd-big-back', [back]);
  mustSendCompressed.set('big-sub', [1]); // [0] was the subscribe
  await syncRecords();
});

test('DevTools saw every handshake and every frame the page got', { timeout: 60000 }, async () => {
  await syncRecords();
  for (const [tag, rec] of sockets) {
    const id = cdpIdFor(tag);
    const resp = cdpEvents.response.get(id);
    assert.ok(resp, `${tag}: no handshake response in DevTools`);
    assert.equal(resp.status, 101, tag);
    const ext = header(resp.headers, 'Sec-WebSocket-Extensions') || '';
    assert.equal(ext.includes(PMD), EXPECT_PMD, `${tag}: 101 Sec-WebSocket-Extensions ${JSON.stringify(ext)}`);
    const got = await waitFor(`${tag}: ${rec.received.length} frames in DevTools`, () => {
      const f = (cdpEvents.received.get(id) || []).filter((x) => x.opcode === 1);
      return f.length >= rec.received.length ? f : null;
    });
    assert.deepEqual(got.map((f) => f.payloadData), rec.received, `${tag}: frames received`);
    const sent = (cdpEvents.sent.get(id) || []).filter((x) => x.opcode === 1);
    assert.deepEqual(sent.map((f) => f.payloadData), rec.sent, `${tag}: frames sent`);
  }
  assert.deepEqual(cdpEvents.errors, [], 'Network.webSocketFrameError events');
});

test('the page console logged no error', async () => {
  await syncRecords();
  for (const [tag, rec] of sockets) {
    assert.equal(rec.error, false, `${tag}: error event`);
    assert.equal(rec.closed, null, `${tag}: closed early: ${JSON.stringify(rec.closed)}`);
  }
  assert.deepEqual(pageErrors, [], 'uncaught page errors');
  assert.deepEqual(consoleErrors, [], 'console errors');
});

/* ---- the wire, as Chromium's net-log saw it ---- */

function readNetlog(file) {
  const s = fs.readFileSync(file, 'utf8');
  try {
    return JSON.parse(s);
  } catch {
    // a log left unterminated (browser killed) lacks its closing "]}"
    return JSON.parse(s.replace(/,?\s*$/, '') + ']}');
  }
}

/** tag -> {recv: [{rsv1, length}], sent: [...]}: data messages (frames
 * joined up to FIN; RSV1 is on the first) of each tagged WebSocket. */
function wireMessages(log) {
  const type = {};
  for (const [k, v] of Object.entries(log.constants.logEventTypes)) type[v] = k;
  const tagOf = new Map(); // source id -> tag
  for (const e of log.events) {
    if (type[e.type] !== 'REQUEST_ALIVE' || !e.params || !e.params.url) continue;
    const m = /^wss?:\/\/[^/]+\/\?s=([^&]+)$/.exec(e.params.url);
    if (m) {
      const tag = decodeURIComponent(m[1]);
      assert.ok(![...tagOf.values()].includes(tag), `two net-log requests for ${tag}`);
      tagOf.set(e.source.id, tag);
    }
  }
  const out = new Map();
  for (const e of log.events) {
    const t = type[e.type];
    const dir = t === 'WEBSOCKET_RECV_FRAME_HEADER' ? 'recv' : t === 'WEBSOCKET_SENT_FRAME_HEADER' ? 'sent' : null;
    if (!dir || !tagOf.has(e.source.id)) continue;
    const tag = tagOf.get(e.source.id);
    if (!out.has(tag)) out.set(tag, { recv: [], sent: [], open: { recv: null, sent: null } });
    const w = out.get(tag);
    const p = e.params;
    if (p.opcode >= 8) continue; // close, ping, pong
    if (p.opcode !== 0) {
      assert.equal(w.open[dir], null, `${tag}: new ${dir} message inside a fragmented one`);
      w.open[dir] = { rsv1: p.reserved1, opcode: p.opcode, length: 0 };
    }
    assert.ok(w.open[dir], `${tag}: ${dir} continuation frame outside a message`);
    w.open[dir].length += p.payload_length;
    if (p.final) {
      w[dir].push(w.open[dir]);
      w.open[dir] = null;
    }
  }
  return out;
}

test(EXPECT_PMD
  ? 'on the wire: notifications under the threshold uncompressed, at or over it compressed; the 50 KB publish compressed'
  : 'on the wire: no frame is compressed either way', { timeout: 60000 }, async (t) => {
  await syncRecords();
  const closed = await page.evaluate(() => window.tt.closeAll());
  for (const [tag, c] of Object.entries(closed)) assert.equal(c.code, 1000, `${tag} close code`);
  await context.close(); // writes out the net-log
  contextClosed = true;

  const wire = wireMessages(readNetlog(netlogPath));
  let compressed = 0;
  let plain = 0;
  for (const [tag, rec] of sockets) {
    const w = wire.get(tag);
    assert.ok(w, `${tag}: no frames in the net-log`);
    assert.equal(w.recv.length, rec.received.length, `${tag}: messages received on the wire`);
    assert.equal(w.sent.length, rec.sent.length, `${tag}: messages sent on the wire`);
    rec.received.forEach((data, i) => {
      const f = w.recv[i];
      const n = bytes(data);
      assert.equal(f.opcode, 1, `${tag} message ${i}: a text frame`);
      if (!f.rsv1) assert.equal(f.length, n, `${tag} message ${i}: an uncompressed frame carries the text`);
      if (!EXPECT_PMD) assert.equal(f.rsv1, false, `${tag} message ${i} (${n} bytes) came compressed`);
      if (JSON.parse(data).type !== 'notification') return;
      if (f.rsv1) compressed++; else plain++;
      if (EXPECT_PMD) {
        assert.equal(f.rsv1, n >= THRESHOLD,
                     `${tag} message ${i}: a notification of ${n} bytes came ${f.rsv1 ? '' : 'un'}compressed ` +
                     `(threshold ${THRESHOLD}, wire length ${f.length})`);
      }
    });
    w.sent.forEach((f, i) => {
      if (!EXPECT_PMD) assert.equal(f.rsv1, false, `${tag} sent message ${i} went out compressed`);
    });
    for (const i of EXPECT_PMD ? mustSendCompressed.get(tag) || [] : []) {
      const f = w.sent[i];
      assert.equal(f.rsv1, true, `${tag} sent message ${i} (${bytes(rec.sent[i])} bytes) went out uncompressed`);
      assert.ok(f.length < bytes(rec.sent[i]), `${tag} sent message ${i}: ${f.length} bytes on the wire`);
    }
  }
  if (EXPECT_PMD) {
    assert.ok(compressed >= 5 && plain >= 4, `compressed ${compressed}, uncompressed ${plain} notifications`);
  } else {
    assert.ok(plain >= 9, `${plain} notifications`);
  }
  t.diagnostic(`net-log: ${sockets.size} sockets, notifications received compressed ${compressed}, ` +
               `uncompressed ${plain}; threshold ${THRESHOLD}`);
});
