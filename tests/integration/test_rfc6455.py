"""RFC 6455 to the letter, with a raw-frame client (issue 10, point 9):

 - control frames are answered in the order they arrive: a pong goes out
   before the reply to (or the echo of) a message that completed after the
   ping, also when everything arrives in one TCP segment (section 5.5);
 - every protocol error on an established connection is answered with a
   Close frame (1002, or 1007 for text that is not UTF-8) before the TCP
   connection is closed (sections 5.5, 7.1.7, 7.4, 8.1);
 - the echo endpoint compresses its echoes like notifications when the
   client negotiated permessage-deflate (RFC 7692).
"""
import json
import socket
import struct
import time
import zlib

import pytest

from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS,
                   build_frame, close_payload)

ECHO = "/echo"
THRESHOLD = 300
PMD = [("Sec-WebSocket-Extensions", "permessage-deflate")]


@pytest.fixture
def srv(start_server):
    return start_server(workers=1, args=["--echo-path", ECHO,
                                         "--compression-threshold", str(THRESHOLD)])


# ---- raw-frame helpers ----

def recv_frame_full(ws, timeout=5.0):
    """(fin, rsv, opcode, payload) of the next frame, whatever it is."""
    ws._fill(2, time.monotonic() + timeout)
    rsv = (ws.buf[0] >> 4) & 7
    fin, op, payload = ws.recv_frame(timeout)
    return fin, rsv, op, payload


def recv_frames(ws, n, timeout=5.0):
    """The next n frames as (opcode, payload)."""
    return [ws.recv_frame(timeout)[1:] for _ in range(n)]


def inflate(payload):
    d = zlib.decompressobj(-15)
    return d.decompress(payload + b"\x00\x00\xff\xff")


def deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def send_in_pieces(ws, data, cuts, pause=0.15):
    """Sends data in separate TCP segments cut at the given offsets, with a
    pause between them so that the server reads each on its own."""
    ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    last = 0
    for cut in list(cuts) + [len(data)]:
        ws.send_raw(data[last:cut])
        last = cut
        time.sleep(pause)


def expect_failure(ws, code):
    """The server sends a Close frame with `code` (and nothing but that),
    then closes TCP."""
    seen = ws.wait_eof(5)
    closes = [(op, p) for _, op, p in seen if op == OP_CLOSE]
    assert closes, f"the TCP connection was closed without a Close frame: {seen}"
    assert [op for _, op, _ in seen] == [OP_CLOSE], seen
    payload = closes[0][1]
    assert len(payload) >= 2 and struct.unpack("!H", payload[:2])[0] == code, seen
    return payload


# ---- a) control frames are answered in order ----

@pytest.mark.parametrize("path", ["/", ECHO])
def test_pong_before_reply_to_message_completed_in_same_segment(srv, path):
    msg = b'{"type":"ping"}'
    with RawWS.open(srv.port, path=path) as ws:
        ws.send_raw(build_frame(OP_TEXT, msg[:6], fin=False) + build_frame(OP_PING, b"p1") +
                    build_frame(OP_CONT, msg[6:]))
        frames = recv_frames(ws, 2)
        assert frames[0] == (OP_PONG, b"p1"), frames
        assert frames[1][0] == OP_TEXT, frames
        want = msg if path == ECHO else {"type": "pong"}
        assert (frames[1][1] if path == ECHO else json.loads(frames[1][1])) == want


@pytest.mark.parametrize("path", ["/", ECHO])
def test_two_pings_around_a_fragment(srv, path):
    msg = b'{"type":"ping","id":"two pings"}'
    with RawWS.open(srv.port, path=path) as ws:
        ws.send_raw(build_frame(OP_TEXT, msg[:5], fin=False) + build_frame(OP_PING, b"a") +
                    build_frame(OP_CONT, msg[5:12], fin=False) + build_frame(OP_PING, b"b") +
                    build_frame(OP_CONT, msg[12:]))
        frames = recv_frames(ws, 3)
        assert frames[:2] == [(OP_PONG, b"a"), (OP_PONG, b"b")], frames
        assert frames[2][0] == OP_TEXT
        if path == ECHO:
            assert frames[2][1] == msg
        else:
            assert json.loads(frames[2][1]) == {"type": "pong", "id": "two pings"}


@pytest.mark.parametrize("path", ["/", ECHO])
def test_ping_then_whole_messages_in_one_segment(srv, path):
    """Ping, message, ping, message: answers in exactly that order."""
    m1, m2 = b'{"type":"ping","id":1}', b'{"type":"ping","id":2}'
    with RawWS.open(srv.port, path=path) as ws:
        ws.send_raw(build_frame(OP_PING, b"x") + build_frame(OP_TEXT, m1) +
                    build_frame(OP_PING, b"y") + build_frame(OP_TEXT, m2))
        frames = recv_frames(ws, 4)
        assert [op for op, _ in frames] == [OP_PONG, OP_TEXT, OP_PONG, OP_TEXT], frames
        assert frames[0][1] == b"x" and frames[2][1] == b"y"
        if path == ECHO:
            assert [frames[1][1], frames[3][1]] == [m1, m2]
        else:
            assert [json.loads(frames[1][1]), json.loads(frames[3][1])] == [
                {"type": "pong", "id": 1}, {"type": "pong", "id": 2}]


def test_pong_before_binary_echo(srv):
    with RawWS.open(srv.port, path=ECHO) as ws:
        ws.send_raw(build_frame(OP_BINARY, b"\x00\x01", fin=False) +
                    build_frame(OP_PING, b"") + build_frame(OP_CONT, b"\x02"))
        assert recv_frames(ws, 2) == [(OP_PONG, b""), (OP_BINARY, b"\x00\x01\x02")]


def test_pong_before_close_echo(srv):
    """A ping and a close in one segment: the pong, then the close."""
    with RawWS.open(srv.port, path=ECHO) as ws:
        ws.send_raw(build_frame(OP_TEXT, b"a") + build_frame(OP_PING, b"p") +
                    build_frame(OP_CLOSE, close_payload(1000, b"bye")))
        frames = ws.wait_eof(5)
        assert [(op, p) for _, op, p in frames] == [
            (OP_TEXT, b"a"), (OP_PONG, b"p"), (OP_CLOSE, close_payload(1000, b"bye"))]
