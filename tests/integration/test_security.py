"""Origin allowlist, connection caps and the rate limit: each refusal has
its exact status or code, and the server keeps serving everyone else."""
import asyncio
import json
import socket
import struct

import pytest
import websockets

import wsraw
from helpers import assert_serves, recv_json, request, run, ws_connect


def handshake_status(port, extra=()):
    return wsraw.handshake(port, extra).status


def test_origin_allowlist(start_server):
    srv = start_server(args=["--allowed-origins",
                             "https://app.example.com, https://*.example.org,http://localhost:3000"])
    ok = ["https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://a.example.org",
          "https://a.b.example.org", "http://localhost:3000"]
    bad = ["https://evil.com", "https://app.example.com.evil.com", "https://example.org",
           "http://app.example.com", "https://x.example.org:8443", "http://localhost:3001", "null"]
    for o in ok:
        assert handshake_status(srv.port, [("Origin", o)]) == 101, o
    for o in bad:
        assert handshake_status(srv.port, [("Origin", o)]) == 403, o
    # no Origin (a non-browser client) is allowed unless --require-origin
    assert handshake_status(srv.port) == 101
    assert_serves(srv)


def test_require_origin(start_server):
    srv = start_server(args=["--require-origin"])
    assert handshake_status(srv.port) == 403
    assert handshake_status(srv.port, [("Origin", "https://anything.example")]) == 101


def test_default_allows_every_origin_and_says_so(start_server):
    srv = start_server()
    assert handshake_status(srv.port, [("Origin", "https://whatever.example")]) == 101
    assert "every origin" in srv.log_text()


def test_max_connections_per_ip(start_server):
    srv = start_server(workers=2, args=["--max-connections-per-ip", "3"])

    async def go():
        # the first one a raw client, whose close is seen through: the
        # server closes TCP once it has let go of the connection (and of
        # its place in the count)
        first = await asyncio.to_thread(wsraw.RawWS.open, srv.port)
        held = [await ws_connect(srv.url) for _ in range(2)]
        # the cap is over all workers: the 4th is refused whichever worker takes it
        for _ in range(4):
            with pytest.raises(websockets.InvalidStatusCode) as e:
                await ws_connect(srv.url)
            assert e.value.status_code == 429
        await asyncio.to_thread(first.close_handshake)
        again = await ws_connect(srv.url)
        assert await request(again, {"type": "ping"}) == {"type": "pong"}
        for ws in held + [again]:
            await ws.close()
    run(go())


def proxy_v2(src_ip, src_port=40000, dst_ip="127.0.0.1", dst_port=80):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!HH", src_port, dst_port)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


def test_per_ip_cap_uses_the_proxy_protocol_address(start_server):
    srv = start_server(args=["--proxy-protocol", "--max-connections-per-ip", "2"])
    socks = []

    def open_as(ip):
        s = wsraw.connect(srv.port)
        s.sendall(proxy_v2(ip) + wsraw.upgrade_request())
        resp = s.recv(4096)
        socks.append(s)
        return int(resp.split(b" ")[1])

    try:
        assert open_as("203.0.113.1") == 101
        assert open_as("203.0.113.1") == 101
        assert open_as("203.0.113.1") == 429
        assert open_as("203.0.113.2") == 101  # another client behind the same proxy
    finally:
        for s in socks:
            s.close()
    # without the header the connection is refused outright
    s = wsraw.connect(srv.port)
    s.sendall(wsraw.upgrade_request())
    s.settimeout(3)
    assert s.recv(4096) == b""
    s.close()


def test_full_worker_answers_503(start_server):
    srv = start_server(workers=1, args=["--max-connections", "2"])

    async def go():
        a = await ws_connect(srv.url)
        b = await ws_connect(srv.url)
        with pytest.raises(websockets.InvalidStatusCode) as e:
            await ws_connect(srv.url)
        assert e.value.status_code == 503
        await a.close()
        # the cap counts open WebSocket connections: until the worker's gauge of them drops
        await asyncio.to_thread(srv.wait_metrics, "the worker to let go of the closed connection",
                                lambda m: m.total("tidings_connections") == 1)
        c = await ws_connect(srv.url)
        assert await request(c, {"type": "ping"}) == {"type": "pong"}
        await b.close()
        await c.close()
    run(go())


def test_flooding_client_is_limited_then_closed_1008(start_server):
    srv = start_server(args=["--rate-limit", "1", "--rate-burst", "10"])

    async def go():
        async with ws_connect(srv.url) as other:
            async with ws_connect(srv.url) as flood:
                for _ in range(10):
                    await flood.send(json.dumps({"type": "ping"}))
                for _ in range(10):
                    assert await recv_json(flood) == {"type": "pong"}
                await flood.send(json.dumps({"type": "ping"}))
                assert await recv_json(flood) == {"error": "Rate limit exceeded",
                                                  "code": "rate_limited"}
                # persistently over the limit: closed with 1008
                try:
                    for _ in range(200):
                        await flood.send(json.dumps({"type": "ping"}))
                except websockets.ConnectionClosed:
                    pass
                code = None
                try:
                    while True:
                        await asyncio.wait_for(flood.recv(), 5)
                except websockets.ConnectionClosed as e:
                    code = e.code
                assert code == 1008
            # a well-behaved client on the same worker is unaffected
            assert await request(other, {"type": "ping"}) == {"type": "pong"}
    run(go())
    assert_serves(srv)
