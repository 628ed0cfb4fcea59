"""WebSocket clients inside the cluster's edge namespace, driven line by line.

test_cluster.py runs this with
    ip netns exec <PREFIX>-edge /usr/bin/python3 cluster_client.py
and writes one JSON command per line on stdin; each command gets exactly one
JSON line on stdout: {"ok": true, ...} or {"ok": false, "error": "..."}.

  {"op": "connect", "name": N, "url": U, "headers": {...}, "cafile": F}
        -> status 101, headers [[name, value], ...] of the response
           (on refusal: ok false, status and headers of the answer)
  {"op": "send", "name": N, "json": V}        sends V as a text message
  {"op": "recv", "name": N, "timeout": S}     -> json: the next message
           (ok false with error "timeout", or "closed" with code and reason)
  {"op": "wait_closed", "name": N, "timeout": S}  -> code, reason
  {"op": "close", "name": N}
  {"op": "http_get", "url": U}                -> status, body
"""
import asyncio
import json
import ssl
import sys
import urllib.parse

import websockets
import websockets.exceptions

import wsraw  # this script's directory is on sys.path

clients = {}


def headers_list(h):
    return [[k, v] for k, v in h.raw_items()] if h is not None else []


async def op_connect(cmd):
    ctx = None
    if cmd["url"].startswith("wss:"):
        ctx = ssl.create_default_context(cafile=cmd.get("cafile"))
    try:
        ws = await websockets.connect(cmd["url"], extra_headers=cmd.get("headers") or {},
                                      ssl=ctx, open_timeout=cmd.get("timeout", 5))
    except websockets.exceptions.InvalidStatusCode as e:
        return {"ok": False, "error": f"refused: HTTP {e.status_code}", "status": e.status_code,
                "headers": headers_list(getattr(e, "headers", None))}
    clients[cmd["name"]] = ws
    return {"ok": True, "status": 101, "headers": headers_list(ws.response_headers)}


async def op_send(cmd):
    await clients[cmd["name"]].send(json.dumps(cmd["json"]))
    return {"ok": True}


def closed_reply(ws):
    return {"ok": False, "error": "closed", "code": ws.close_code, "reason": ws.close_reason}


async def op_recv(cmd):
    ws = clients[cmd["name"]]
    try:
        msg = await asyncio.wait_for(ws.recv(), cmd.get("timeout", 5))
    except asyncio.TimeoutError:
        return {"ok": False, "error": "timeout"}
    except websockets.exceptions.ConnectionClosed:
        return closed_reply(ws)
    return {"ok": True, "json": json.loads(msg)}


async def op_wait_closed(cmd):
    ws = clients[cmd["name"]]
    try:
        await asyncio.wait_for(ws.wait_closed(), cmd.get("timeout", 5))
    except asyncio.TimeoutError:
        return {"ok": False, "error": "timeout"}
    return {"ok": True, "code": ws.close_code, "reason": ws.close_reason}


async def op_close(cmd):
    ws = clients.pop(cmd["name"])
    await ws.close()
    return {"ok": True}


def op_http_get(cmd):
    u = urllib.parse.urlsplit(cmd["url"])
    path = u.path + (f"?{u.query}" if u.query else "")
    r = wsraw.http_get(u.port or 80, path, timeout=3, host=u.hostname,
                       headers=[("Connection", "close")])
    return {"ok": True, "status": r.status, "body": r.body.decode()}


async def handle(cmd):
    op = cmd.get("op")
    if op == "connect":
        return await op_connect(cmd)
    if op == "send":
        return await op_send(cmd)
    if op == "recv":
        return await op_recv(cmd)
    if op == "wait_closed":
        return await op_wait_closed(cmd)
    if op == "close":
        return await op_close(cmd)
    if op == "http_get":
        return await asyncio.to_thread(op_http_get, cmd)
    return {"ok": False, "error": f"unknown op {op!r}"}


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            reply = await handle(json.loads(line))
        except Exception as e:  # reported to the test, which decides
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for ws in list(clients.values()):
        try:
            await asyncio.wait_for(ws.close(), 2)
        except Exception:
            pass


if __name__ == "__main__":
    asyncio.run(main())
