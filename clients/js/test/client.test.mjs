// tidings.js against the real server (harness.mjs): reconnects, resumes,
// tokens, the publish queue, error codes, drains, refusals, dead
// connections.  Run: TIDINGS_BIN=bin/tidings-asan node --test clients/js/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tidings } from '../tidings.js';
import { WebSocket, countingWebSocket, freePort, jwt, next, server, Server, waitFor } from './harness.mjs';

const FAST = { WebSocket, minDelay: 50, maxDelay: 400 };

function client(t, url, opts = {}) {
  const c = new Tidings(url, { ...FAST, ...opts });
  t.after(() => c.close());
  return c;
}

// subscribes and waits for the server's answer
async function subscribed(c, topic, onMessage, opts) {
  const sub = c.subscribe(topic, onMessage, opts);
  return [sub, await next(sub, 'subscribed')];
}

test('publish resolves with the offset, or undefined without history', async (t) => {
  const s = await server(t, { args: ['--history-size', '100', '--history-topics', 'h.*'] });
  const c = client(t, s.url);
  const got = [];
  const [sub] = await subscribed(c, 'h.a', (p, meta) => got.push([p, meta.offset, meta.topic]));
  assert.equal(await c.publish('h.a', { n: 1 }), 1);
  assert.equal(await c.publish('h.a', 'two'), 2);
  assert.equal(await c.publish('plain', 3), undefined);
  await waitFor('two notifications', () => got.length === 2);
  assert.deepEqual(got, [[{ n: 1 }, 1, 'h.a'], ['two', 2, 'h.a']]);
  // unsubscribed: a witness on another connection gets the next message, it does not
  const witness = client(t, s.url);
  const seen = [];
  await subscribed(witness, 'h.a', (p) => seen.push(p));
  sub.unsubscribe();
  await c.publish('h.a', 'three');
  await waitFor('the witness to get it', () => seen.includes('three'));
  assert.equal(got.length, 2);
});

test('errors carry the server code: forbidden, invalid_topic', async (t) => {
  const secret = 'test-secret-of-32-bytes-at-least!!';
  const s = await server(t, { args: ['--jwt-secret', secret] });
  const token = jwt(secret, { sub: 'u1', subscribe: ['*'], publish: ['ok.*'], exp: Math.floor(Date.now() / 1000) + 600 });
  const c = client(t, s.url, { token });
  await next(c, 'connect');
  await c.publish('ok.1', 1);
  await assert.rejects(c.publish('not.ok', 1), (e) => e.code === 'forbidden' && /Not allowed/.test(e.message));
  await assert.rejects(c.publish('bad topic', 1), { code: 'invalid_topic' });
  const sub = c.subscribe('..bad', () => {});
  const e = await next(sub, 'error');
  assert.equal(e.code, 'invalid_topic');
});

test('a refused static token is not retried; getToken is asked again and replaces an expired one', async (t) => {
  const secret = 'test-secret-of-32-bytes-at-least!!';
  const s = await server(t, { args: ['--jwt-secret', secret, '--jwt-leeway', '0'] });
  const now = Math.floor(Date.now() / 1000);
  const good = jwt(secret, { sub: 'u', subscribe: ['*'], publish: ['*'], exp: now + 600 });
  const expired = jwt(secret, { sub: 'u', subscribe: ['*'], publish: ['*'], exp: now - 60 });

  // a static token that is refused (401): one attempt, then it stops
  const WS1 = countingWebSocket();
  const bad = client(t, s.url, { token: expired, WebSocket: WS1 });
  const d = await next(bad, 'disconnect');
  assert.deepEqual([d.status, d.willRetry], [401, false]);
  await assert.rejects(bad.publish('x', 1), { code: 'closed' });
  assert.equal(WS1.opened, 1);

  // getToken: expired first, then a good one
  const asked = [];
  const c = client(t, s.url, {
    getToken: async () => {
      asked.push(asked.length ? good : expired);
      return asked.at(-1);
    },
  });
  const first = await next(c, 'disconnect');
  assert.deepEqual([first.status, first.willRetry], [401, true]);
  await next(c, 'connect');
  assert.equal(asked.length, 2);
  assert.equal(await c.publish('any', 1), undefined);
});

test('reconnects to a server restarted on the same port and resubscribes', async (t) => {
  const s = await server(t);
  const c = client(t, s.url);
  const got = [];
  const [sub] = await subscribed(c, 'news', (p) => got.push(p));
  const down = next(c, 'disconnect');
  await s.stop();
  const d = await down;
  assert.equal(d.code, 1001); // the server's drain on SIGTERM
  assert.equal(d.willRetry, true);
  const again = new Server({ port: s.port });
  t.after(() => again.stop());
  const resub = next(sub, 'subscribed');
  await again.start();
  await resub;
  const pub = client(t, s.url);
  await pub.publish('news', 'after restart');
  await waitFor('the notification', () => got.length === 1);
  assert.deepEqual(got, ['after restart']);
});

test('resumes after its worker is killed with kill -9: every message once, in order', async (t) => {
  const s = await server(t, { args: ['--history-size', '1000'] });
  const c = client(t, s.url);
  const got = [];
  const sub = c.subscribe('feed', (p, m) => got.push([p, m.offset]));
  await next(sub, 'subscribed');
  const publish = (from, to) => {
    const cmds = [];
    for (let i = from; i <= to; i++) cmds.push(`FCALL tidings_publish 1 feed ${i}`);
    s.redis(cmds);
  };
  publish(1, 10);
  await waitFor('10 live messages', () => got.length === 10);
  const [worker] = s.workerPids();
  const recovered = next(sub, 'recovered');
  const down = next(c, 'disconnect');
  process.kill(worker, 'SIGKILL');
  await down;
  publish(11, 40); // while the client is away
  const r = await recovered;
  assert.equal(r.recovered, true);
  publish(41, 50);
  await waitFor(() => `50 messages, have ${got.length}`, () => got.length >= 50);
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => [i + 1, i + 1]));
  await s.ready(); // the master restarted the worker: it must not be reported as leaking
});

test('a draining server (SIGHUP, close 1012) is left and rejoined at once', async (t) => {
  const s = await server(t, { args: ['--drain-window', '0'] });
  const c = client(t, s.url, { minDelay: 300, maxDelay: 20000 });
  const [sub] = await subscribed(c, 'reload', () => {});
  const down = next(c, 'disconnect');
  const resub = next(sub, 'subscribed');
  s.signal('SIGHUP');
  const d = await down;
  const t0 = Date.now();
  assert.deepEqual([d.code, d.willRetry], [1012, true]);
  await resub;
  // at once: within minDelay (jittered), plus the handshake
  assert.ok(Date.now() - t0 < 300 + 2000, `rejoined after ${Date.now() - t0} ms`);
});

test('a 4xx refusal that retrying will not change (404) is not retried', async (t) => {
  const s = await server(t);
  const WS1 = countingWebSocket();
  const c = client(t, s.url + 'nope', { WebSocket: WS1 });
  const d = await next(c, 'disconnect');
  assert.deepEqual([d.status, d.willRetry], [404, false]);
  await assert.rejects(c.publish('x', 1), { code: 'closed' });
  assert.equal(WS1.opened, 1);
});

test('the 1008 close after persistent rate limiting stops the client', async (t) => {
  const s = await server(t, { args: ['--rate-limit', '1', '--rate-burst', '1'] });
  const WS1 = countingWebSocket();
  const c = client(t, s.url, { WebSocket: WS1 });
  await next(c, 'connect');
  const down = next(c, 'disconnect');
  const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => c.publish('x', i)));
  const d = await down;
  assert.deepEqual([d.code, d.willRetry], [1008, false]);
  const codes = new Set(results.map((r) => r.status === 'fulfilled' ? 'ok' : r.reason.code));
  assert.ok(codes.has('rate_limited'), [...codes].join());
  for (const code of codes) assert.ok(['ok', 'rate_limited', 'disconnected', 'closed'].includes(code), code);
  assert.equal(WS1.opened, 1);
});

test('429 (connections per address) is retried with backoff', async (t) => {
  const s = await server(t, { args: ['--max-connections-per-ip', '1'] });
  const first = client(t, s.url);
  await next(first, 'connect');
  const WS1 = countingWebSocket();
  const c = client(t, s.url, { WebSocket: WS1 });
  const d = await next(c, 'disconnect');
  assert.deepEqual([d.status, d.willRetry], [429, true]);
  const up = next(c, 'connect');
  first.close();
  await up;
  assert.ok(WS1.opened >= 2);
});

test('publishes wait in a bounded queue while disconnected, or fail at once', async (t) => {
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/`;
  const nowait = client(t, url, { queueWhileDisconnected: false });
  await assert.rejects(nowait.publish('q', 1), { code: 'disconnected' });

  const c = client(t, url, { queueSize: 2 });
  const a = c.publish('q', 'a');
  const b = c.publish('q', 'b');
  await assert.rejects(c.publish('q', 'c'), { code: 'queue_full' });
  const s = new Server({ port });
  t.after(() => s.stop());
  await s.start();
  assert.deepEqual(await Promise.all([a, b]), [undefined, undefined]);

  const gone = client(t, `ws://127.0.0.1:${await freePort()}/`);
  const p = gone.publish('q', 1);
  gone.close();
  await assert.rejects(p, { code: 'closed' });
});

test('a dead connection is noticed (no pong within twice pingInterval) and replaced', async (t) => {
  const s = await server(t);
  const c = client(t, s.url, { pingInterval: 300 });
  const got = [];
  const [sub] = await subscribed(c, 'alive', (p) => got.push(p));
  const [worker] = s.workerPids();
  const down = next(c, 'disconnect');
  process.kill(worker, 'SIGSTOP');
  let resumed = false;
  try {
    const d = await down;
    assert.equal(d.code, 1006);
    assert.match(d.reason, /no answer/);
    assert.equal(d.willRetry, true);
  } finally {
    process.kill(worker, 'SIGCONT');
    resumed = true;
  }
  assert.ok(resumed);
  await next(sub, 'subscribed');
  const pub = client(t, s.url);
  await pub.publish('alive', 'again');
  await waitFor('the notification', () => got.includes('again'));
});

test('recovered:false (a new epoch) is a gap, and the page is told', async (t) => {
  const s = await server(t, { args: ['--history-size', '10'] });
  const c = client(t, s.url);
  const got = [];
  const sub = c.subscribe('g', (p) => got.push(p));
  await next(sub, 'subscribed');
  s.redis(['FCALL tidings_publish 1 g 1']);
  await waitFor('message 1', () => got.length === 1);
  const gap = next(sub, 'gap');
  const down = next(c, 'disconnect');
  s.redis(['DEL {g}:meta {g}:hist']); // history lost: a new epoch
  process.kill(s.workerPids()[0], 'SIGKILL');
  await down;
  const g = await gap;
  assert.equal(g.recovered, false);
  s.redis(['FCALL tidings_publish 1 g 2']);
  await waitFor('message 2', () => got.length === 2);
  assert.deepEqual(got, [1, 2]);
});
