"""permessage-deflate (RFC 7692): negotiation, shared compression of
broadcasts above the threshold, bounded inflation of what clients send."""
import json
import time
import zlib

import wsraw
from helpers import assert_serves, recv_json, request, run, subscribe, ws_connect

PMD_RESPONSE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def raw_frame(raw, timeout=5.0):
    """(rsv1, opcode, payload) of the next non-control frame."""
    while True:
        raw._fill(2, time.monotonic() + timeout)
        rsv1 = bool(raw.buf[0] & 0x40)
        fin, op, payload = raw.recv_frame(timeout)
        if op in (wsraw.OP_PING, wsraw.OP_PONG):
            continue
        return rsv1, op, payload


def inflate(payload, wbits=15):
    d = zlib.decompressobj(-wbits)
    return d.decompress(payload + b"\x00\x00\xff\xff")


def deflate(data, wbits=15):
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def publish_and_collect(url, sizes):
    async def go():
        async with ws_connect(url) as comp, ws_connect(url, compression=None) as plain, \
                ws_connect(url) as pub:
            assert comp.response_headers["Sec-WebSocket-Extensions"] == PMD_RESPONSE
            assert "Sec-WebSocket-Extensions" not in plain.response_headers
            for c in (comp, plain):
                await subscribe(c, "z")
            for n in sizes:
                reply = await request(pub, {"type": "publish", "topic": "z", "payload": "x" * n})
                assert reply == {"status": "published", "topic": "z"}
            for c in (comp, plain):
                got = [len((await recv_json(c))["payload"]) for _ in sizes]
                assert got == list(sizes)
    run(go())


def test_python_clients_with_and_without_compression(start_server):
    srv = start_server(args=["--compression-threshold", "300"])
    # notification JSON is 45 bytes + payload: cross the threshold both ways
    publish_and_collect(srv.url, [10, 254, 255, 256, 5000, 60000, 1])


def test_broadcast_is_compressed_only_above_threshold(start_server):
    srv = start_server(args=["--compression-threshold", "300"])
    with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions",
                                            "permessage-deflate; client_max_window_bits")]) as raw:
        raw.send_text(json.dumps({"type": "subscribe", "topic": "t"}))
        assert json.loads(raw_frame(raw)[2]) == {"status": "subscribed", "topic": "t"}

        async def pub():
            async with ws_connect(srv.url) as p:
                for payload in ("small", "y" * 4000):
                    await request(p, {"type": "publish", "topic": "t", "payload": payload})
        run(pub())
        rsv1, op, body = raw_frame(raw)
        assert (rsv1, op) == (False, wsraw.OP_TEXT)
        assert json.loads(body)["payload"] == "small"
        rsv1, op, body = raw_frame(raw)
        assert (rsv1, op) == (True, wsraw.OP_TEXT)
        assert len(body) < 200  # 4000 repeated bytes compress well
        assert json.loads(inflate(body)) == {"type": "notification", "topic": "t",
                                             "payload": "y" * 4000}


def test_server_max_window_bits_is_honoured(start_server):
    srv = start_server(args=["--compression-threshold", "0"])
    ext = "permessage-deflate; server_max_window_bits=10"
    with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions", ext)]) as raw:
        raw.send_text(json.dumps({"type": "subscribe", "topic": "w"}))
        raw_frame(raw)
        data = json.dumps({"type": "publish", "topic": "w", "payload": "abc" * 3000})
        # a compressed publish from the client, too
        raw.send_frame(wsraw.OP_TEXT, deflate(data.encode()), rsv=4)
        frames = [raw_frame(raw), raw_frame(raw)]
        notes = [inflate(b, 10) if r else b for r, _, b in frames]
        assert any(json.loads(n).get("payload") == "abc" * 3000 for n in notes)
        assert any(r for r, _, _ in frames)


def test_deflate_bomb_is_closed_with_1009(start_server):
    srv = start_server(args=["--max-message-size", "64k"])
    bomb = deflate(b"[" + b" " * (8 << 20) + b"]")
    assert len(bomb) < 64 * 1024
    with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]) as raw:
        raw.send_frame(wsraw.OP_TEXT, bomb, rsv=4)
        assert raw.expect_close() == 1009
    assert_serves(srv)


def test_corrupt_compressed_message_is_closed_with_1007(start_server):
    srv = start_server()
    with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]) as raw:
        raw.send_frame(wsraw.OP_TEXT, b"\xff\xff\xff\xff garbage", rsv=4)
        assert raw.expect_close() == 1007
    assert_serves(srv)


def test_no_compression_option(start_server):
    srv = start_server(args=["--no-compression"])

    async def go():
        async with ws_connect(srv.url) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            await subscribe(ws, "n")
    run(go())
    # RSV1 without a negotiated extension is a protocol error
    with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]) as raw:
        raw.send_frame(wsraw.OP_TEXT, deflate(b'{"type":"ping"}'), rsv=4)
        assert raw.expect_close() == 1002
    assert_serves(srv)


def test_unacceptable_offers_are_declined(start_server):
    srv = start_server()
    for ext in ("permessage-deflate; server_max_window_bits=8",
                "permessage-deflate; nonsense",
                "x-webkit-deflate-frame"):
        with wsraw.RawWS.open(srv.port, extra=[("Sec-WebSocket-Extensions", ext)]) as raw:
            raw.send_text(json.dumps({"type": "ping"}))
            rsv1, op, body = raw_frame(raw)
            assert not rsv1 and json.loads(body) == {"type": "pong"}
