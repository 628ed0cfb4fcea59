// The real server for the client's tests: tidings ($TIDINGS_BIN, by
// default bin/tidings-asan of this repository) with its embedded
// redis-server, on free loopback ports, in a process group of its own that
// is killed whatever happens.  Every wait waits for a fact (the admin
// /readyz, a process list, an event) and has a deadline; none sleeps a
// fixed time.
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..');
export const BIN = process.env.TIDINGS_BIN || path.join(REPO, 'bin', 'tidings-asan');
export { WebSocket };
const SANITIZER = ['AddressSanitizer', 'LeakSanitizer', 'runtime error:'];
const started = new Set();

// every process group still alive when this test process leaves is killed
process.on('exit', () => {
  for (const s of started) s.kill();
});

export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

export async function waitFor(what, fn, timeout = 15000, every = 25) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, every)); // the poll interval of this wait
  }
}

// The next `event` of emitter (a Tidings or a Subscription), or an error
// after timeout ms.
export function next(emitter, event, timeout = 15000, pred = () => true) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`no ${event} within ${timeout} ms`));
    }, timeout);
    function fn(arg) {
      if (!pred(arg)) return;
      clearTimeout(t);
      emitter.off(event, fn);
      resolve(arg);
    }
    emitter.on(event, fn);
  });
}

function get(port, p, timeout = 2000) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
  });
}

export class Server {
  constructor({ workers = 1, args = [], port } = {}) {
    this.workers = workers;
    this.args = args;
    this.port = port;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-js-'));
    this.logPath = path.join(this.dir, 'tidings.log');
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  async start() {
    this.port ||= await freePort();
    this.admin = await freePort();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TIDINGS_')));
    env.ASAN_OPTIONS ||= 'detect_leaks=1';
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(BIN, ['--bind', '127.0.0.1', '--port', String(this.port), '--workers', String(this.workers),
      '--admin-listen', `127.0.0.1:${this.admin}`, ...this.args], { env, stdio: ['ignore', log, log], detached: true });
    fs.closeSync(log);
    this.exited = once(this.proc, 'exit');
    started.add(this);
    await this.ready();
    return this;
  }

  async ready() {
    await waitFor(() => `tidings ready on ${this.port}:\n${this.log()}`, async () => {
      if (this.proc.exitCode !== null) throw new Error(`tidings exited ${this.proc.exitCode}:\n${this.log()}`);
      return (await get(this.admin, '/readyz')) === 200;
    });
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  // pids of the master's children that are workers (TIDINGS_WORKER_ID in
  // their environment), not the embedded redis-server
  workerPids() {
    const pid = this.proc.pid;
    let kids = [];
    try {
      kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
    } catch {}
    return kids.filter((k) => {
      try {
        return fs.readFileSync(`/proc/${k}/environ`, 'latin1').includes('TIDINGS_WORKER_ID=');
      } catch {
        return false;
      }
    });
  }

  // redis-cli against the embedded redis-server; lines are sent on stdin,
  // one command each
  redis(lines) {
    const sock = /on unix:(\S+)/.exec(this.log())?.[1];
    if (!sock) throw new Error(`no embedded redis in the log:\n${this.log()}`);
    const r = spawnSync('redis-cli', ['-s', sock], { input: lines.join('\n') + '\n', encoding: 'utf8', timeout: 20000 });
    if (r.status !== 0) throw new Error(`redis-cli: ${r.status} ${r.stderr}`);
    return r.stdout;
  }

  signal(sig) {
    process.kill(this.proc.pid, sig);
  }

  // SIGTERM, wait for the exit; then checks the log for sanitizer reports
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.kill(), 15000);
      await this.exited;
      clearTimeout(t);
    }
    this.kill(); // whatever of the group is left
    started.delete(this);
    const log = this.log();
    for (const m of SANITIZER) if (log.includes(m)) throw new Error(`${m} in the server log:\n${log}`);
  }

  kill() {
    try {
      process.kill(-this.proc.pid, 'SIGKILL');
    } catch {}
  }
}

// Starts a server for one test and stops it (and checks its log) after,
// even when the test failed.  t: the node:test context.
export async function server(t, opts) {
  const s = new Server(opts);
  t.after(() => s.stop());
  return s.start();
}

// An HS256 JWT as the server's --jwt-secret checks it.
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + createHmac('sha256', secret).update(head).digest('base64url');
}

// A WebSocket constructor that counts the connections it opens.
export function countingWebSocket() {
  class Counted extends WebSocket {
    constructor(...a) {
      super(...a);
      Counted.opened++;
    }
  }
  Counted.opened = 0;
  return Counted;
}
