// tidings.js: the client of the tidings WebSocket pub/sub server.
// One ES module, no dependencies; browsers and Node.js 20+ (pass the `ws`
// package as options.WebSocket where there is no global WebSocket).
// It reconnects for ever with backoff and jitter, resubscribes, and resumes
// topics with history from the last offset it received.  API and
// guarantees: README.md beside this file.

const DRAIN = [1001, 1012]; // the server is going away or restarting: come back at once

function fail(code, text) {
  const e = new Error(text || code);
  e.code = code;
  return e;
}

class Emitter {
  #h = {};
  on(event, fn) {
    (this.#h[event] ||= new Set()).add(fn);
    return this;
  }
  off(event, fn) {
    this.#h[event]?.delete(fn);
    return this;
  }
  has(event) {
    return this.#h[event]?.size > 0;
  }
  emit(event, arg) {
    for (const fn of this.#h[event] || []) {
      try {
        fn(arg);
      } catch (e) {
        setTimeout(() => { throw e; }); // a listener's bug must not break the client
      }
    }
  }
}

/** One subscribe() call: events subscribed, recovered, gap, error. */
class Subscription extends Emitter {
  constructor(t, topic, fn, recover) {
    super();
    this.topic = topic;
    this.fn = fn;
    this.recover = recover;
    this.t = t;
  }
  unsubscribe() {
    this.t._drop(this);
  }
}

export class Tidings extends Emitter {
  #url;
  #o;
  #ws = null;       // the current socket, open or opening
  #open = false;
  #closed = false;
  #attempt = 0;     // failed attempts since the last connection that worked
  #timer;           // the pending reconnect
  #tick;            // the liveness check of the current socket
  #last = 0;        // when the current socket last received anything (or was started)
  #pinged = false;
  #worked = false;  // the current socket received something: the server took us
  #id = 0;
  #pending = new Map(); // id -> { pub, done(reply) }
  #queue = [];      // publishes waiting for a connection
  #topics = new Map(); // topic -> { subs, epoch, offset, live }

  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#o = {
      minDelay: 500, maxDelay: 20000, pingInterval: 25000, queueSize: 100,
      queueWhileDisconnected: true, WebSocket: globalThis.WebSocket, ...options,
    };
    if (!this.#o.WebSocket) throw new TypeError('no WebSocket here: pass options.WebSocket (e.g. the ws package)');
    this.#connect();
  }

  get connected() {
    return this.#open;
  }

  subscribe(topic, onMessage, { recover = true } = {}) {
    const sub = new Subscription(this, topic, onMessage, recover);
    if (this.#closed) return sub;
    let r = this.#topics.get(topic);
    if (!r) {
      this.#topics.set(topic, r = { topic, subs: new Set([sub]), recover });
      this.#sub(r);
    } else {
      r.subs.add(sub);
      r.recover ||= recover;
      // already subscribed on this connection: tell the newcomer once the caller holds it
      if (r.live) queueMicrotask(() => r.subs.has(sub) && sub.emit('subscribed', { topic, epoch: r.epoch, offset: r.offset }));
    }
    return sub;
  }

  publish(topic, payload) {
    return new Promise((resolve, reject) => {
      const p = { topic, payload, resolve, reject };
      if (this.#closed) reject(fail('closed'));
      else if (this.#open) this.#publish(p);
      else if (!this.#o.queueWhileDisconnected) reject(fail('disconnected'));
      else if (this.#queue.length >= this.#o.queueSize) reject(fail('queue_full'));
      else this.#queue.push(p);
    });
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    const was = this.#open;
    this.#abandon(1000, 'closed');
    for (const p of this.#queue.splice(0)) p.reject(fail('closed'));
    if (was) this.emit('disconnect', { code: 1000, reason: 'closed', willRetry: false });
  }

  // ---- connection ----

  async #connect() {
    if (this.#closed) return;
    let token = this.#o.token;
    if (this.#o.getToken) {
      try {
        token = await this.#o.getToken();
      } catch (e) {
        this.emit('error', e);
        return this.#retry();
      }
      if (this.#closed) return;
    }
    let ws;
    try {
      // the token travels as a subprotocol: browsers cannot set headers, and a
      // query parameter would end up in access logs
      ws = new this.#o.WebSocket(this.#url, token ? ['tidings.jwt', 'tidings.jwt.' + token] : undefined);
    } catch (e) {
      this.emit('error', e);
      return this.#retry();
    }
    this.#ws = ws;
    this.#last = Date.now();
    this.#pinged = false;
    this.#worked = false;
    let status = 0; // the HTTP status of a refused handshake, where it can be seen (ws)
    ws.onopen = () => {
      this.#open = true;
      for (const r of this.#topics.values()) this.#sub(r);
      for (const p of this.#queue.splice(0)) this.#publish(p);
      this.emit('connect');
    };
    ws.onmessage = (e) => this.#receive(e.data);
    ws.onerror = (e) => {
      const m = /server response: (\d+)/.exec(e?.message || e?.error?.message);
      if (m) status = +m[1];
    };
    ws.onclose = (e) => this.#lost(e.code, e.reason, status);
    const every = this.#o.pingInterval;
    this.#tick = setInterval(() => {
      const idle = Date.now() - this.#last;
      // dead: nothing at all (no pong, no open) within twice the interval
      if (idle >= 2 * every) this.#lost(1006, 'no answer within ' + 2 * every + ' ms', 0, true);
      else if (idle >= every && this.#open && !this.#pinged) {
        this.#pinged = true;
        this.#send({ type: 'ping' });
      }
    }, every / 4);
  }

  // Forgets the current socket: its events no longer reach us; in-flight
  // publishes fail (the server may or may not have published them, and
  // sending them again could publish twice).
  #abandon(code, reason, dead) {
    const ws = this.#ws;
    clearInterval(this.#tick);
    this.#ws = null;
    this.#open = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {}; // ws (Node) throws an error event that nobody listens to
      try {
        if (dead && ws.terminate) ws.terminate(); // ws: no closing handshake with a dead peer
        else ws.close(code, reason);
      } catch {}
    }
    for (const [id, q] of this.#pending) {
      this.#pending.delete(id);
      q.pub?.reject(fail(this.#closed ? 'closed' : 'disconnected'));
    }
    for (const r of this.#topics.values()) r.live = false;
  }

  #lost(code, reason, status, dead) {
    const was = this.#open;
    if (this.#worked) this.#attempt = 0; // that connection worked: start the backoff afresh
    this.#abandon(dead ? 4000 : 1000, reason, dead);
    if (this.#closed) return;
    // refusals that retrying will not change: a bad token (1008, 401, 403,
    // 44xx closes: only a new token from getToken helps) and other 4xx
    const auth = code === 1008 || (code >= 4400 && code < 4500) || status === 401 || status === 403;
    const final = auth ? !this.#o.getToken : status >= 400 && status < 500 && status !== 408 && status !== 429;
    this.emit('disconnect', { code, reason, status: status || undefined, willRetry: !final, wasConnected: was });
    if (final) return this.close();
    this.#retry(DRAIN.includes(code));
  }

  // Full jitter: a random delay up to min(maxDelay, minDelay * 2^attempt),
  // at least a tenth of minDelay; after a drain close, up to minDelay.
  #retry(drain) {
    const { minDelay, maxDelay } = this.#o;
    const cap = drain ? minDelay : Math.min(maxDelay, minDelay * 2 ** this.#attempt++);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), Math.max(minDelay / 10, Math.random() * cap));
  }

  #send(msg) {
    try {
      this.#ws.send(JSON.stringify(msg));
    } catch (e) {
      this.emit('error', e);
    }
  }

  #request(msg, done, pub) {
    msg.id = ++this.#id;
    this.#pending.set(msg.id, { done, pub });
    this.#send(msg);
  }

  // ---- messages ----

  #receive(data) {
    this.#last = Date.now();
    this.#pinged = false;
    this.#worked = true;
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    if (m.type === 'notification') return this.#deliver(m);
    if (m.type === 'pong') return;
    let q = m.id !== undefined && this.#pending.get(m.id);
    if (!q && m.code === 'rate_limited') {
      // the server did not read the message, so the error has no id: it
      // belongs to the oldest request still waiting (a publish when any)
      const all = [...this.#pending];
      const e = all.find(([, x]) => x.pub) || all[0];
      if (e) m.id = e[0], q = e[1];
    }
    if (!q) return m.error && this.emit('error', fail(m.code, m.error));
    this.#pending.delete(m.id);
    q.done(m);
  }

  #publish(p) {
    this.#request({ type: 'publish', topic: p.topic, payload: p.payload }, (m) => {
      if (m.status === 'published') p.resolve(m.offset);
      else p.reject(fail(m.code, m.error));
    }, p);
  }

  #sub(r) {
    if (!this.#open) return;
    const msg = { type: 'subscribe', topic: r.topic };
    if (r.recover && r.epoch !== undefined) msg.since = { offset: r.offset, epoch: r.epoch };
    this.#request(msg, (m) => {
      if (this.#topics.get(r.topic) !== r) return; // unsubscribed meanwhile
      if (m.status !== 'subscribed') {
        const e = fail(m.code, m.error);
        if (m.code === 'bus_unavailable' || m.code === 'rate_limited') {
          // the server could not do it now: ask again a little later
          return setTimeout(() => this.#topics.get(r.topic) === r && !r.live && this.#sub(r), this.#o.minDelay);
        }
        this.#topics.delete(r.topic);
        for (const s of r.subs) s.has('error') ? s.emit('error', e) : this.emit('error', e);
        return;
      }
      r.live = true;
      if (m.epoch !== undefined) {
        // a resume keeps its offset: the missed messages follow the reply
        if (!m.recovered) r.offset = m.offset;
        r.epoch = m.epoch;
      }
      for (const s of r.subs) {
        if (m.recovered === false) s.emit('gap', m);
        else if (m.recovered) s.emit('recovered', m);
        s.emit('subscribed', m);
      }
    });
  }

  #deliver(m) {
    const r = this.#topics.get(m.topic);
    if (!r || !r.live) return;
    const meta = { topic: m.topic, offset: m.offset };
    if (m.missed) meta.missed = m.missed;
    if (m.offset !== undefined) {
      if (m.epoch !== undefined && m.epoch !== r.epoch) {
        r.epoch = m.epoch; // a new epoch starts at offset 1
        r.offset = 0;
      }
      if (m.offset <= r.offset) return; // seen already: the seam of a resume
      if (m.offset > r.offset + 1 && r.epoch !== undefined) {
        for (const s of r.subs) s.emit('gap', { topic: m.topic, offset: m.offset, missed: m.offset - r.offset - 1 });
      }
      r.offset = m.offset;
    }
    for (const s of r.subs) s.fn?.(m.payload, meta);
  }

  _drop(sub) {
    const r = this.#topics.get(sub.topic);
    if (!r || !r.subs.delete(sub) || r.subs.size) return;
    this.#topics.delete(sub.topic);
    // also when its subscribe is still unanswered: the server answers in order
    if (this.#open) this.#request({ type: 'unsubscribe', topic: sub.topic }, () => {});
  }
}

export default Tidings;
