"""Bad input at the WebSocket level: every case gets its exact close code
(or error reply), and the server goes on serving other clients."""
import asyncio
import json
import socket
import struct

import pytest

import wsraw
from helpers import assert_serves, expect_close, recv_json, request, run, subscribe, ws_connect
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, RawWS, build_frame

LIMIT = 1024


@pytest.fixture
def srv(start_server):
    return start_server(workers=1, args=["--max-message-size", "1k"])


# (name, frames, close code) -- frames are masked unless said otherwise
FRAME_CASES = [
    ("text-over-limit", [build_frame(OP_TEXT, b"a" * (LIMIT + 1))], 1009),
    ("fragments-over-limit",
     [build_frame(OP_TEXT, b"a" * 600, fin=False), build_frame(OP_CONT, b"a" * 600)], 1009),
    ("declared-1TiB", [build_frame(OP_TEXT, b"abcd", length=1 << 40)], 1009),
    ("invalid-utf8", [build_frame(OP_TEXT, b"\xff\xfe")], 1007),
    ("invalid-utf8-in-json", [build_frame(OP_TEXT, b'{"type":"ping","x":"\xc3\x28"}')], 1007),
    ("overlong-utf8", [build_frame(OP_TEXT, b"\xc0\xaf")], 1007),
    ("surrogate-utf8", [build_frame(OP_TEXT, b"\xed\xa0\x80")], 1007),
    ("truncated-utf8", [build_frame(OP_TEXT, b"abc\xe2\x82")], 1007),
    ("invalid-utf8-across-fragments",
     [build_frame(OP_TEXT, b"\xe2\x82", fin=False), build_frame(OP_CONT, b"a")], 1007),
    ("binary", [build_frame(OP_BINARY, b"\x00\x01")], 1003),
    ("binary-fragmented",
     [build_frame(OP_BINARY, b"\x00", fin=False), build_frame(OP_CONT, b"\x01")], 1003),
    ("unmasked", [build_frame(OP_TEXT, b'{"type":"ping"}', mask=False)], 1002),
    ("unmasked-after-good",
     [build_frame(OP_TEXT, b'{"type":"x"}'), build_frame(OP_TEXT, b"{}", mask=False)], 1002),
    ("reserved-opcode-3", [build_frame(0x3, b"")], 1002),
    ("reserved-opcode-B", [build_frame(0xB, b"")], 1002),
    ("rsv1-without-extension", [build_frame(OP_TEXT, b"{}", rsv=4)], 1002),
    ("rsv2", [build_frame(OP_TEXT, b"{}", rsv=2)], 1002),
    ("rsv3", [build_frame(OP_TEXT, b"{}", rsv=1)], 1002),
    ("continuation-without-start", [build_frame(OP_CONT, b"x")], 1002),
    ("text-inside-fragmented-message",
     [build_frame(OP_TEXT, b"x", fin=False), build_frame(OP_TEXT, b"y")], 1002),
    ("close-code-999", [build_frame(OP_CLOSE, wsraw.close_payload(999))], 1002),
    ("close-code-1005", [build_frame(OP_CLOSE, wsraw.close_payload(1005))], 1002),
    ("close-reason-not-utf8", [build_frame(OP_CLOSE, wsraw.close_payload(1000, b"\xff"))], 1007),
]

# error replies come before the close: the frames with a reply are checked
EXPECTED_REPLIES = {"unmasked-after-good": [{"error": "Unknown message type",
                                             "code": "unknown_type"}]}


@pytest.mark.parametrize("name,frames,code", FRAME_CASES, ids=[c[0] for c in FRAME_CASES])
def test_bad_frame(srv, name, frames, code):
    with RawWS.open(srv.port) as ws:
        for f in frames:
            ws.send_raw(f)
        for want in EXPECTED_REPLIES.get(name, []):
            fin, op, payload = ws.recv_data()
            assert op == OP_TEXT and json.loads(payload) == want
        assert ws.expect_close() == code
        ws.wait_eof(5)
    assert_serves(srv)


# Failing the connection may also be done by dropping TCP (RFC 6455 7.1.7):
# for these, a close frame with 1002 or no close frame at all is fine.
DROP_CASES = [
    ("length-msb-set", [build_frame(OP_TEXT, b"", length=1 << 63)]),
    ("fragmented-ping", [build_frame(OP_PING, b"x", fin=False)]),
    ("ping-126-bytes", [build_frame(OP_PING, b"x" * 126)]),
    ("close-126-bytes", [build_frame(OP_CLOSE, wsraw.close_payload(1000, b"r" * 124))]),
]


@pytest.mark.parametrize("frames", [c[1] for c in DROP_CASES], ids=[c[0] for c in DROP_CASES])
def test_bad_control_frame_fails_connection(srv, frames):
    with RawWS.open(srv.port) as ws:
        for f in frames:
            ws.send_raw(f)
        seen = ws.wait_eof(5)
    assert all(op == OP_CLOSE for _, op, _ in seen), seen
    for _, op, payload in seen:
        assert struct.unpack("!H", payload[:2])[0] == 1002, seen
    assert_serves(srv)


def test_valid_utf8_across_fragments_is_fine(srv):
    with RawWS.open(srv.port) as ws:
        msg = '{"type":"ping","id":"€😀"}'.encode()
        cut = msg.index(b"\xe2") + 1  # inside the euro sign
        cut2 = msg.index(b"\xf0") + 2  # inside the emoji
        ws.send_frame(OP_TEXT, msg[:cut], fin=False)
        ws.send_frame(OP_CONT, msg[cut:cut2], fin=False)
        ws.send_frame(OP_PING, b"ctl")  # control frames may come in between
        ws.send_frame(OP_CONT, msg[cut2:])
        frames = [ws.recv_frame(), ws.recv_frame()]
        assert (True, wsraw.OP_PONG, b"ctl") in frames
        text = [p for _, op, p in frames if op == OP_TEXT]
        assert [json.loads(t) for t in text] == [{"type": "pong", "id": "€😀"}]


def test_message_exactly_at_limit_raw(srv):
    head = b'{"type":"ping","id":"'
    msg = head + b"x" * (LIMIT - len(head) - 2) + b'"}'
    assert len(msg) == LIMIT
    with RawWS.open(srv.port) as ws:
        ws.send_frame(OP_TEXT, msg)
        fin, op, payload = ws.recv_data()
        assert op == OP_TEXT and json.loads(payload)["type"] == "pong"
        # and one byte more closes
        ws.send_frame(OP_TEXT, msg + b" ")
        assert ws.expect_close() == 1009


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_too_big_with_websockets_client(srv, compression):
    async def main():
        async with ws_connect(srv.url, compression=compression) as ws:
            await ws.send("x" * (LIMIT + 1))
            assert await expect_close(ws) == 1009
        async with ws_connect(srv.url, compression=compression) as ws:
            await ws.send(["y" * 512, "y" * 512, "y"])
            assert await expect_close(ws) == 1009

    run(main())
    assert_serves(srv)


def test_default_limit_is_64k(start_server):
    srv = start_server(workers=1)
    with RawWS.open(srv.port) as ws:
        ws.send_frame(OP_TEXT, b" " * (64 * 1024 + 1))
        assert ws.expect_close() == 1009
    assert_serves(srv)


def test_binary_with_websockets_client(srv):
    async def main():
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
            await ws.send(b"\x01\x02\x03")
            assert await expect_close(ws) == 1003

    run(main())
    assert_serves(srv)


def test_bad_json_keeps_the_connection(srv):
    """Protocol errors are answered, never a reason to close."""
    async def main():
        async with ws_connect(srv.url) as ws:
            for m in ["}{", "\u0000", "💥", '{"type":"ping"', "[" * 400 + "]" * 400,
                      '{"a":' * 100 + "1" + "}" * 100, "1e99999", '"\\ud800"']:
                reply = await request(ws, m)
                assert reply == {"error": "Invalid message format", "code": "invalid_format"}, m
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())
    assert_serves(srv)


def test_clean_close_is_echoed(srv):
    for payload, code in [(wsraw.close_payload(1000, b"bye"), 1000),
                          (wsraw.close_payload(4000), 4000), (b"", None)]:
        with RawWS.open(srv.port) as ws:
            ws.send_frame(OP_CLOSE, payload)
            fin, op, got = ws.recv_data()
            assert op == OP_CLOSE
            assert (struct.unpack("!H", got[:2])[0] if got else None) == code
            # nothing is answered after the close
            ws.send_frame(OP_TEXT, b'{"type":"ping"}')
            assert ws.wait_eof(5) == []
    assert_serves(srv)


@pytest.mark.parametrize("cut", [1, 2, 5, 8, 20])
def test_disconnect_in_the_middle_of_a_frame(srv, cut):
    """A client that vanishes halfway through a frame (or a fragmented
    message) must not disturb the others."""
    async def main():
        async with ws_connect(srv.url) as sub:
            await subscribe(sub, "t")
            for rst in (False, True):
                with RawWS.open(srv.port) as ws:
                    ws.subscribe("t")
                    ws.send_frame(OP_TEXT, b'{"type":"publish",', fin=False)
                    ws.send_raw(build_frame(OP_CONT, b'"topic":"t","payload":1}')[:cut])
                    if rst:
                        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                # the worker has dropped it: only `sub` is left open
                await asyncio.to_thread(srv.wait_metrics, "the vanished client to be dropped",
                                        lambda m: m.total("tidings_connections") == 1)
            assert await request(sub, {"type": "publish", "topic": "t", "payload": 2}) in (
                {"status": "published", "topic": "t"},
                {"type": "notification", "topic": "t", "payload": 2})
            await recv_json(sub)

    run(main())
    assert_serves(srv)


def test_huge_invalid_topic_reply(srv):
    """An invalid topic as long as the message limit allows: the error reply
    stays a valid JSON object with the right code."""
    async def main():
        async with ws_connect(srv.url) as ws:
            topic = "*" * 900
            reply = await request(ws, {"type": "subscribe", "topic": topic})
            assert reply["code"] == "invalid_topic" and reply["error"] == "Invalid topic name"

    run(main())
    assert_serves(srv)


def test_many_bad_clients_at_once(srv):
    """Bad clients of every kind at the same time, with a good client
    working throughout."""
    bad = [c[1] for c in FRAME_CASES] * 3

    async def main():
        async with ws_connect(srv.url) as good:
            loop = asyncio.get_running_loop()

            def one(frames):
                with RawWS.open(srv.port) as ws:
                    for f in frames:
                        ws.send_raw(f)
                    ws.wait_eof(10)

            tasks = [loop.run_in_executor(None, one, f) for f in bad]
            for i in range(20):
                assert await request(good, {"type": "ping", "id": i}) == {"type": "pong", "id": i}
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert await request(good, {"type": "ping"}) == {"type": "pong"}

    run(main())
    assert_serves(srv)
