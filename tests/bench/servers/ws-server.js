// The Node.js notification server tidings grew from: the `ws` library, one
// process, topics in a Map.  Same JSON protocol as tidings (docs: README).
// Usage: node ws-server.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8090);
const topics = new Map(); // topic -> Set of sockets
const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false });

function reply(ws, obj, id) {
  if (id !== undefined) obj.id = id;
  ws.send(JSON.stringify(obj));
}

wss.on('connection', (ws) => {
  ws.topics = new Set();
  ws.on('message', (data, isBinary) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return reply(ws, { error: 'Invalid message format' });
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string')
      return reply(ws, { error: 'Invalid message format' });
    const { type, topic, payload, id } = msg;
    switch (type) {
      case 'subscribe': {
        if (!topics.has(topic)) topics.set(topic, new Set());
        topics.get(topic).add(ws);
        ws.topics.add(topic);
        return reply(ws, { status: 'subscribed', topic }, id);
      }
      case 'unsubscribe': {
        const set = topics.get(topic);
        if (set) set.delete(ws);
        ws.topics.delete(topic);
        return reply(ws, { status: 'unsubscribed', topic }, id);
      }
      case 'publish': {
        const set = topics.get(topic);
        if (set) {
          const out = JSON.stringify({ type: 'notification', topic, payload });
          for (const s of set) s.send(out);
        }
        return reply(ws, { status: 'published', topic }, id);
      }
      case 'ping':
        return reply(ws, { type: 'pong' }, id);
      default:
        return reply(ws, { error: 'Unknown message type' });
    }
  });
  ws.on('close', () => {
    for (const t of ws.topics) {
      const set = topics.get(t);
      if (set) {
        set.delete(ws);
        if (set.size === 0) topics.delete(t);
      }
    }
  });
});
wss.on('listening', () => console.error(`ws-server listening on ${port}`));
process.on('SIGTERM', () => process.exit(0));
