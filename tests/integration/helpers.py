"""asyncio helpers around websockets 10.4 (legacy client API).  Every wait
has a timeout."""
import asyncio
import json

import websockets

TIMEOUT = 5.0


def ws_connect(url, **kw):
    """websockets.connect with bounded handshakes and no client pings."""
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 16 << 20)
    return websockets.connect(url, **kw)


async def recv_json(ws, timeout=TIMEOUT):
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), f"expected a text message, got {msg!r}"
    return json.loads(msg)


async def send_json(ws, obj):
    await ws.send(obj if isinstance(obj, str) else json.dumps(obj))


async def request(ws, obj, timeout=TIMEOUT):
    """Sends one message and returns the next message received."""
    await send_json(ws, obj)
    return await recv_json(ws, timeout)


async def subscribe(ws, topic, **extra):
    reply = await request(ws, {"type": "subscribe", "topic": topic, **extra})
    assert reply == {"status": "subscribed", "topic": topic, **extra}, reply
    return reply


async def expect_silence(ws, seconds=0.3):
    """Nothing arrives within `seconds`."""
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message: {msg!r}")


async def expect_close(ws, timeout=TIMEOUT):
    """Waits for the connection to close; returns the close code the server
    sent (1006 when it sent none)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def ping_pong(url, **kw):
    """A fresh connection answers a ping request with a pong."""
    async with ws_connect(url, **kw) as ws:
        reply = await request(ws, {"type": "ping"})
        assert reply == {"type": "pong"}, reply


def assert_serves(server):
    """The server still serves a new client (a JSON ping on a fresh
    connection)."""
    asyncio.run(asyncio.wait_for(ping_pong(server.url), 15))


def run(coro, timeout=60):
    """asyncio.run with an overall timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
