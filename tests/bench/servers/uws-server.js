// The speed reference: uWebSockets.js with the same JSON protocol, using its
// native pub/sub (topic trees inside uWS).  One process, one thread.
// Usage: node uws-server.js PORT [--compression] [--max-payload BYTES] [--max-backpressure BYTES]
// (--max-payload: the largest incoming message, default 64 KiB;
// --max-backpressure: bytes queued per connection before sends are dropped,
// default 1 MiB; growth.sh's payload sweep raises both, so that a 64 KiB
// payload fits in a publish and a window of 32 of them in a queue)
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');

const port = Number(process.argv[2] || 8091);
const compression = process.argv.includes('--compression') ? uWS.SHARED_COMPRESSOR : uWS.DISABLED;
function opt(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}
const maxPayloadLength = opt('--max-payload', 64 * 1024);
const maxBackpressure = opt('--max-backpressure', 1024 * 1024);
const dec = new TextDecoder();

function reply(ws, obj, id) {
  if (id !== undefined) obj.id = id;
  ws.send(JSON.stringify(obj), false);
}

const app = uWS.App().ws('/*', {
  compression,
  maxPayloadLength,
  maxBackpressure,
  idleTimeout: 120,
  message: (ws, data, isBinary) => {
    let msg;
    try {
      msg = JSON.parse(dec.decode(data));
    } catch (e) {
      return reply(ws, { error: 'Invalid message format' });
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string')
      return reply(ws, { error: 'Invalid message format' });
    const { type, topic, payload, id } = msg;
    switch (type) {
      case 'subscribe':
        ws.subscribe(topic);
        return reply(ws, { status: 'subscribed', topic }, id);
      case 'unsubscribe':
        ws.unsubscribe(topic);
        return reply(ws, { status: 'unsubscribed', topic }, id);
      case 'publish':
        app.publish(topic, JSON.stringify({ type: 'notification', topic, payload }), false, true);
        return reply(ws, { status: 'published', topic }, id);
      case 'ping':
        return reply(ws, { type: 'pong' }, id);
      default:
        return reply(ws, { error: 'Unknown message type' });
    }
  },
});
app.listen('127.0.0.1', port, (ok) => {
  if (!ok) {
    console.error(`uws-server: cannot listen on ${port}`);
    process.exit(1);
  }
  console.error(`uws-server listening on ${port}`);
});
process.on('SIGTERM', () => process.exit(0));
