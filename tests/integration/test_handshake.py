"""Plain HTTP answers, the WebSocket upgrade checks of RFC 6455 4.2.1, the
echo endpoint and the handshake timeout."""
import asyncio
import base64
import socket
import struct
import time

import pytest
import websockets

import wsraw
from helpers import assert_serves, expect_close, request, run, ws_connect


@pytest.fixture
def srv(start_server):
    return start_server(workers=1)


def check_closed_response(resp, status):
    """Every HTTP answer: the status, Connection: close, and the server
    closes the connection after it."""
    assert resp.status == status, resp
    assert resp.version == "HTTP/1.1", resp
    assert (resp.header("connection") or "").lower() == "close", resp
    assert resp.eof, f"the server did not close after the response: {resp}"
    if resp.header("content-length") is not None:
        assert int(resp.header("content-length")) == len(resp.body), resp


# ---- plain HTTP ----

def test_get_root(srv):
    resp = wsraw.http_get(srv.port, "/")
    check_closed_response(resp, 200)
    assert resp.header("content-type").split(";")[0].strip() == "text/plain", resp
    assert resp.body == b"WebSocket server is running"


def test_get_root_with_query(srv):
    resp = wsraw.http_get(srv.port, "/?x=1")
    check_closed_response(resp, 200)
    assert resp.body == b"WebSocket server is running"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_healthz(srv, path):
    resp = wsraw.http_get(srv.port, path)
    check_closed_response(resp, 200)
    assert resp.body == b"ok\n"


@pytest.mark.parametrize("path", ["/nope", "/echo", "/index.html", "//", "/healthz/x"])
def test_unknown_path_is_404(srv, path):
    check_closed_response(wsraw.http_get(srv.port, path), 404)


def test_keep_alive_request_still_closes(srv):
    resp = wsraw.http_get(srv.port, "/", headers=[("Connection", "keep-alive")])
    check_closed_response(resp, 200)


def test_pipelined_second_request_is_not_answered(srv):
    """Connection: close: one response, then the server closes."""
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = wsraw.http_exchange(srv.port, req)
    check_closed_response(resp, 200)
    assert resp.body == b"WebSocket server is running"


def test_request_head_over_8k_is_431(srv):
    req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    check_closed_response(wsraw.http_exchange(srv.port, req), 431)
    # many small headers adding up to more than 8 KiB
    req = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 80) for i in range(120)) + b"\r\n"
    assert len(req) > 8192
    check_closed_response(wsraw.http_exchange(srv.port, req), 431)
    assert_serves(srv)


def test_request_head_under_8k_is_fine(srv):
    req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 7000 + b"\r\n\r\n"
    check_closed_response(wsraw.http_exchange(srv.port, req), 200)


MALFORMED = [
    ("no-version", b"GARBAGE\r\n\r\n"),
    ("no-http-version", b"GET /\r\n\r\n"),
    ("extra-token", b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("http2", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("bad-protocol", b"GET / FOO/1.1\r\nHost: x\r\n\r\n"),
    ("paren-in-method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("nul-in-method", b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("header-no-colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n"),
    ("header-empty-name", b"GET / HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n"),
    ("header-space-in-name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n"),
    ("header-nul-in-name", b"GET / HTTP/1.1\r\nHost: x\r\nX\x00Y: z\r\n\r\n"),
    ("header-ctl-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"),
    ("header-cr-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"),
]


@pytest.mark.parametrize("req", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_400(srv, req):
    check_closed_response(wsraw.http_exchange(srv.port, req), 400)
    assert_serves(srv)


GARBAGE = [
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ("nul-bytes", b"\x00\x00\x00\x00"),
    ("high-bytes", b"\x80\xff\xfe"),
]


@pytest.mark.parametrize("req", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_binary_garbage_is_rejected_at_once(srv, req):
    """Bytes that cannot start a request line are answered with 400 at once,
    not after the (10 s) handshake timeout."""
    t0 = time.monotonic()
    resp = wsraw.http_exchange(srv.port, req, timeout=3)
    check_closed_response(resp, 400)
    assert time.monotonic() - t0 < 2
    assert_serves(srv)


def test_post_without_upgrade_is_405(srv):
    resp = wsraw.http_exchange(srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    check_closed_response(resp, 405)


# ---- the WebSocket upgrade ----

def upgrade(srv, **kw):
    return wsraw.http_exchange(srv.port, wsraw.upgrade_request(**kw))


def test_valid_upgrade(srv):
    key = wsraw.new_key()
    with wsraw.connect(srv.port) as s:
        s.sendall(wsraw.upgrade_request(key=key))
        data, _ = wsraw.read_head(s)
    resp = wsraw.Response(data, False)
    assert resp.status == 101, resp
    assert resp.header("upgrade").lower() == "websocket"
    assert "upgrade" in resp.header("connection").lower()
    assert resp.header("sec-websocket-accept") == wsraw.accept_for(key)


def test_upgrade_rfc_example_key(srv):
    """RFC 6455 section 1.3: dGhlIHNhbXBsZSBub25jZQ== -> s3pPLMBiTxaQ9kYGzzhZRbK+xOo="""
    with wsraw.connect(srv.port) as s:
        s.sendall(wsraw.upgrade_request(key="dGhlIHNhbXBsZSBub25jZQ=="))
        data, _ = wsraw.read_head(s)
    resp = wsraw.Response(data, False)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("extra,omit", [
    ([("Upgrade", "WebSocket")], ("upgrade",)),
    ([("Upgrade", "WEBSOCKET")], ("upgrade",)),
    ([("Connection", "keep-alive, Upgrade")], ("connection",)),
    ([("Connection", "upgrade")], ("connection",)),
    ([("Connection", "Upgrade,keep-alive")], ("connection",)),
    ([("Connection", "keep-alive ,  UPGRADE  ")], ("connection",)),
    ([("Origin", "http://example.com"), ("Sec-WebSocket-Protocol", "chat")], ()),
], ids=["Upgrade-WebSocket", "Upgrade-WEBSOCKET", "keep-alive-Upgrade", "lower-upgrade",
        "Upgrade-keep-alive", "spaces", "Origin-Protocol"])
def test_upgrade_header_variants_accepted(srv, extra, omit):
    key = wsraw.new_key()
    with wsraw.connect(srv.port) as s:
        s.sendall(wsraw.upgrade_request(key=key, extra=extra, omit=omit))
        head, rest = wsraw.read_head(s)
        resp = wsraw.Response(head, False)
        assert resp.status == 101, resp
        assert resp.header("sec-websocket-accept") == wsraw.accept_for(key)
        ws = wsraw.RawWS(s, rest)
        ws.send_text('{"type":"ping"}')
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong"}')


BAD_UPGRADES = [
    # (name, request kwargs, status)
    ("POST", dict(method="POST"), 405),
    ("PUT", dict(method="PUT"), 405),
    ("HTTP/1.0", dict(http="HTTP/1.0"), 400),
    ("no Host", dict(omit=("host",)), 400),
    ("empty Host", dict(host=""), 400),
    ("Upgrade: h2c", dict(omit=("upgrade",), extra=[("Upgrade", "h2c")]), 400),
    ("Upgrade: websockets", dict(omit=("upgrade",), extra=[("Upgrade", "websockets")]), 400),
    ("no Upgrade", dict(omit=("upgrade",)), 400),
    ("Connection: keep-alive", dict(omit=("connection",), extra=[("Connection", "keep-alive")]),
     400),
    ("Connection: upgraded", dict(omit=("connection",), extra=[("Connection", "upgraded")]), 400),
    ("no Connection", dict(omit=("connection",)), 400),
    ("no Key", dict(omit=("sec-websocket-key",)), 400),
    ("Key not base64", dict(key="!!!!!!!!!!!!!!!!!!!!!!=="), 400),
    ("Key 15 bytes", dict(key=base64.b64encode(b"x" * 15).decode()), 400),
    ("Key 17 bytes", dict(key=base64.b64encode(b"x" * 17).decode()), 400),
    ("Key 32 bytes", dict(key=base64.b64encode(b"x" * 32).decode()), 400),
    ("Key empty", dict(key=""), 400),
    ("Key unpadded", dict(key=base64.b64encode(b"y" * 16).decode().rstrip("=")), 400),
    ("two Keys", dict(extra=[("Sec-WebSocket-Key", wsraw.new_key())]), 400),
]


@pytest.mark.parametrize("name,kw,status", BAD_UPGRADES, ids=[b[0] for b in BAD_UPGRADES])
def test_bad_upgrade(srv, name, kw, status):
    resp = upgrade(srv, **kw)
    check_closed_response(resp, status)
    assert_serves(srv)


@pytest.mark.parametrize("version", ["12", "8", "14", "", "13, 8", "0013", None])
def test_bad_version_is_426(srv, version):
    kw = dict(version=version) if version is not None else dict(omit=("sec-websocket-version",))
    resp = upgrade(srv, **kw)
    check_closed_response(resp, 426)
    assert resp.header("sec-websocket-version") == "13", resp
    assert_serves(srv)


def test_upgrade_with_query_string(srv):
    with wsraw.RawWS.open(srv.port, "/?token=abc&x=1") as ws:
        ws.send_text('{"type":"ping"}')
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong"}')


def test_upgrade_on_unknown_path_is_404(srv):
    check_closed_response(upgrade(srv, path="/chat"), 404)


def test_websockets_client_rejected_on_unknown_path(srv):
    async def main():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            async with ws_connect(srv.url + "nope"):
                pass
        assert e.value.status_code == 404

    run(main())


# ---- echo endpoint ----

def test_echo_disabled_by_default(srv):
    check_closed_response(upgrade(srv, path="/echo"), 404)

    async def main():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            async with ws_connect(srv.url + "echo"):
                pass
        assert e.value.status_code == 404

    run(main())


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_endpoint(start_server, compression):
    srv = start_server(workers=1, args=["--echo-path", "/echo"])

    async def main():
        async with ws_connect(srv.url + "echo", compression=compression) as ws:
            for msg in ["hello", "", "ü € 😀", '{"type":"ping"}', "x" * 60000,
                        b"\x00\x01\xff", b"", bytes(range(256)) * 200]:
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 5)
                assert type(got) is type(msg) and got == msg
            # fragments come back as one message
            await ws.send(["frag", "mented", ""])
            assert await asyncio.wait_for(ws.recv(), 5) == "fragmented"
            await ws.send([b"ab", b"cd"])
            assert await asyncio.wait_for(ws.recv(), 5) == b"abcd"
        # `/` still speaks the pub/sub protocol
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
            await ws.send(b"bin")
            assert await expect_close(ws) == 1003

    run(main())
    # a plain GET on the echo path is not a WebSocket request
    resp = wsraw.http_get(srv.port, "/echo")
    assert resp.status in (400, 426), resp
    assert resp.eof


def test_echo_raw_frames(start_server):
    srv = start_server(workers=1, args=["--echo-path", "/ws/echo"])
    with wsraw.RawWS.open(srv.port, "/ws/echo") as ws:
        ws.send_frame(wsraw.OP_TEXT, "part1-", fin=False)
        ws.send_frame(wsraw.OP_PING, b"in between")
        ws.send_frame(wsraw.OP_CONT, "part2")
        # the pong and the echoed message, in either order
        got = sorted([ws.recv_frame(), ws.recv_frame()])
        assert got == [(True, wsraw.OP_TEXT, b"part1-part2"),
                       (True, wsraw.OP_PONG, b"in between")]
        # the echo endpoint checks UTF-8 too
        ws.send_frame(wsraw.OP_TEXT, b"\xff\xfe")
        assert ws.expect_close() == 1007
    assert_serves(srv)


# ---- handshake timeout ----

@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET / HT"],
                         ids=["silent", "partial-head", "partial-line"])
def test_handshake_timeout(start_server, sent):
    srv = start_server(workers=1, args=["--handshake-timeout", "1"])
    with wsraw.connect(srv.port) as s:
        t0 = time.monotonic()
        if sent:
            s.sendall(sent)
        data, eof = wsraw.read_until_eof(s, timeout=3.5)
        elapsed = time.monotonic() - t0
    assert eof, f"still open after {elapsed:.1f} s"
    assert 0.8 <= elapsed <= 3.0, elapsed
    # if the server says anything at all, it is a complete HTTP response
    assert data == b"" or data.startswith(b"HTTP/1.1 "), data
    assert_serves(srv)


def test_handshake_timeout_does_not_cut_websocket_sessions(start_server):
    srv = start_server(workers=1, args=["--handshake-timeout", "1"])

    async def main():
        async with ws_connect(srv.url) as ws:
            # a silent connection opened after the session is cut by the
            # handshake timeout: by then the worker has also checked the
            # session's (earlier) handshake deadline
            def silent_cut():
                with wsraw.connect(srv.port) as s:
                    return wsraw.read_until_eof(s, timeout=5)[1]
            assert await asyncio.to_thread(silent_cut), "a silent connection stayed open"
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())


def test_slow_but_complete_handshake_is_fine(start_server):
    """A head that trickles in within the timeout is served."""
    srv = start_server(workers=1, args=["--handshake-timeout", "3"])
    req = wsraw.upgrade_request()
    with wsraw.connect(srv.port) as s:
        for i in range(0, len(req), 20):
            s.sendall(req[i:i + 20])
            time.sleep(0.03)  # paces the trickle: the head must come in slowly
        head, rest = wsraw.read_head(s)
        assert head.startswith(b"HTTP/1.1 101 "), head
        ws = wsraw.RawWS(s, rest)
        ws.send_text('{"type":"ping","id":1}')
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong","id":1}')


def test_frames_right_behind_the_head(srv):
    """A client that sends its first frames in the same packet as the
    upgrade request."""
    req = wsraw.upgrade_request() + wsraw.build_frame(wsraw.OP_TEXT, '{"type":"ping","id":"a"}') \
        + wsraw.build_frame(wsraw.OP_TEXT, '{"type":"ping","id":"b"}')
    with wsraw.connect(srv.port) as s:
        s.sendall(req)
        head, rest = wsraw.read_head(s)
        assert head.startswith(b"HTTP/1.1 101 "), head
        ws = wsraw.RawWS(s, rest)
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong","id":"a"}')
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong","id":"b"}')


def test_many_connections_closed_abruptly(srv):
    """Clients that vanish at every stage of the handshake."""
    req = wsraw.upgrade_request()
    for cut in (0, 5, 30, len(req) - 1, len(req)):
        for _ in range(5):
            s = wsraw.connect(srv.port)
            s.sendall(req[:cut])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
    assert_serves(srv)
