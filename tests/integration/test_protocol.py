"""The JSON pub/sub protocol on `/`: replies, notifications, errors, limits.
One worker, so that a publish reaches every subscriber."""
import asyncio
import json

import pytest

from helpers import (assert_serves, expect_silence, note, recv_json, request, run, send_json,
                     subscribe, ws_connect)

NOTE = "notification"


async def recv_n(ws, n):
    return [await recv_json(ws) for _ in range(n)]


def unordered_equal(got, want):
    """Same messages, any order (a publisher that is also a subscriber may
    see the notification before or after its "published" reply)."""
    key = lambda m: json.dumps(m, sort_keys=True)  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key), got


# ---- subscribe / unsubscribe ----

def test_subscribe_reply_and_idempotent(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "subscribe", "topic": "news"}) == \
                {"status": "subscribed", "topic": "news"}
            assert await request(ws, {"type": "subscribe", "topic": "news"}) == \
                {"status": "subscribed", "topic": "news"}
            # subscribed once: one publish gives one notification
            other = await ws_connect(srv.url)
            assert await request(other, {"type": "publish", "topic": "news", "payload": 1}) == \
                {"status": "published", "topic": "news"}
            assert await recv_json(ws) == note("news", 1)
            await expect_silence(ws)
            await other.close()

    run(main())


def test_reply_is_compact_with_keys_in_order(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            await send_json(ws, {"type": "subscribe", "topic": "t"})
            assert await asyncio.wait_for(ws.recv(), 5) == '{"status":"subscribed","topic":"t"}'
            await send_json(ws, {"type": "ping"})
            assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"pong"}'

    run(main())


def test_unsubscribe(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws, ws_connect(srv.url) as pub:
            await subscribe(ws, "a")
            assert await request(ws, {"type": "unsubscribe", "topic": "a"}) == \
                {"status": "unsubscribed", "topic": "a"}
            # no longer delivered
            assert await request(pub, {"type": "publish", "topic": "a", "payload": "x"}) == \
                {"status": "published", "topic": "a"}
            await expect_silence(ws, 0.5)
            # a second unsubscribe, and one for a topic never subscribed
            for topic in ("a", "never"):
                assert await request(ws, {"type": "unsubscribe", "topic": topic}) == \
                    {"error": "Not subscribed to this topic", "code": "not_subscribed",
                     "topic": topic}

    run(main())


def test_id_is_echoed(start_server):
    srv = start_server(workers=1)
    ids = [1, 0, -7, 2.5, "abc", "", None, True, False, [1, "x", None], {"a": {"b": [1, 2]}}]

    async def main():
        async with ws_connect(srv.url) as ws:
            for i in ids:
                assert await request(ws, {"type": "ping", "id": i}) == {"type": "pong", "id": i}
                assert await request(ws, {"type": "subscribe", "topic": "t", "id": i}) == \
                    {"status": "subscribed", "topic": "t", "id": i}
                assert await request(ws, {"type": "unsubscribe", "topic": "t", "id": i}) == \
                    {"status": "unsubscribed", "topic": "t", "id": i}
                assert await request(ws, {"type": "publish", "topic": "t", "payload": 0,
                                          "id": i}) == \
                    {"status": "published", "topic": "t", "id": i}
                # errors carry the id too
                assert await request(ws, {"type": "nope", "id": i}) == \
                    {"error": "Unknown message type", "code": "unknown_type", "id": i}
                assert await request(ws, {"type": "unsubscribe", "topic": "zz", "id": i}) == \
                    {"error": "Not subscribed to this topic", "code": "not_subscribed",
                     "topic": "zz", "id": i}
                assert await request(ws, {"type": "subscribe", "topic": "a b", "id": i}) == \
                    {"error": "Invalid topic name", "code": "invalid_topic", "topic": "a b",
                     "id": i}

    run(main())


def test_ping(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
            # extra members are ignored
            assert await request(ws, {"type": "ping", "topic": "x", "payload": [1]}) == \
                {"type": "pong"}
            # WebSocket-level ping: answered with a pong frame
            pong = await ws.ping(b"hello")
            await asyncio.wait_for(pong, 5)

    run(main())


# ---- publish ----

PAYLOADS = [
    {"text": "hello"},
    [1, 2, 3],
    "a string",
    "",
    42,
    -1.5e10,
    0,
    None,
    True,
    False,
    {"nested": {"deep": [1, {"x": [None, "y", {"z": 3.25}]}]}, "list": []},
    "unicode: ü € 😀 \u2028 \"quoted\" \\ back",
    {"": {}},
]


def test_publish_reaches_all_subscribers(start_server):
    srv = start_server(workers=1)

    async def main():
        subs = [await ws_connect(srv.url) for _ in range(3)]
        bystander = await ws_connect(srv.url)
        pub = await ws_connect(srv.url)
        try:
            for s in subs:
                await subscribe(s, "room/1")
            await subscribe(bystander, "room/2")
            for p in PAYLOADS:
                assert await request(pub, {"type": "publish", "topic": "room/1", "payload": p}) \
                    == {"status": "published", "topic": "room/1"}
                for s in subs:
                    assert await recv_json(s) == note("room/1", p)
            # the publisher was not subscribed, the bystander is on another topic
            await expect_silence(pub)
            await expect_silence(bystander, 0.1)
        finally:
            for c in subs + [bystander, pub]:
                await c.close()

    run(main())


def test_publisher_subscribed_gets_its_own_notification(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            await subscribe(ws, "echo")
            await send_json(ws, {"type": "publish", "topic": "echo", "payload": {"me": 1},
                                 "id": "p1"})
            unordered_equal(await recv_n(ws, 2),
                            [{"status": "published", "topic": "echo", "id": "p1"},
                             note("echo", {"me": 1})])
            await expect_silence(ws)

    run(main())


def test_payload_bytes_are_forwarded_unchanged(start_server):
    """The payload is forwarded as sent (whitespace, number spelling, key
    order) rather than re-encoded."""
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as sub, ws_connect(srv.url) as pub:
            await subscribe(sub, "raw")
            payload = '{ "b" : 1.50 , "a" : [ 1 ,2 ] , "s": "\\u00fc" }'
            await send_json(pub, '{"type":"publish","topic":"raw","payload":' + payload + '}')
            assert await recv_json(pub) == {"status": "published", "topic": "raw"}
            text = await asyncio.wait_for(sub.recv(), 5)
            assert json.loads(text) == note("raw", {"b": 1.5, "a": [1, 2], "s": "ü"})
            assert payload in text

    run(main())


def test_payload_member_lookup_edge_cases(start_server):
    """The payload is found among the top-level members only, also when
    "payload" appears nested, inside strings, or spelled with escapes."""
    srv = start_server(workers=1)
    cases = [
        ('{"type":"publish","x":{"payload":1},"topic":"t","payload":2}', 2),
        ('{"payload":[3,{"payload":4}],"type":"publish","topic":"t"}', [3, {"payload": 4}]),
        ('{"type":"publish","topic":"t","note":"\\"payload\\":9,","payload":5}', 5),
        ('{"type":"publish","topic":"t","pay\\u006coad":{"k":"v"}}', {"k": "v"}),
        ('{"type":"publish","topic":"t","payload":"}{\\"]["}', '}{"]['),
        ('{"type":"publish","topic":"t","payload":{"a":"}"},"z":1}', {"a": "}"}),
        ('\t{ "type" : "publish" ,\n "topic" : "t" , "payload" : -0.5e-3 }\r\n', -0.0005),
    ]

    async def main():
        async with ws_connect(srv.url) as sub, ws_connect(srv.url) as pub:
            await subscribe(sub, "t")
            for msg, payload in cases:
                assert await request(pub, msg) == {"status": "published", "topic": "t"}, msg
                assert await recv_json(sub) == note("t", payload), msg

    run(main())


def test_large_id_is_echoed(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for big in ["i" * 5000, {"list": list(range(2000))}]:
                assert await request(ws, {"type": "ping", "id": big}) == {"type": "pong", "id": big}
                assert await request(ws, {"type": "subscribe", "topic": "t", "id": big}) == \
                    {"status": "subscribed", "topic": "t", "id": big}
                assert await request(ws, {"type": "subscribe", "topic": "*", "id": big}) == \
                    {"error": "Invalid topic name", "code": "invalid_topic", "topic": "*",
                     "id": big}

    run(main())


def test_publish_without_subscribers_and_without_payload(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "publish", "topic": "empty", "payload": 1}) == \
                {"status": "published", "topic": "empty"}
            # missing payload: invalid_format; the README says errors carry the
            # request's (valid) topic and id
            assert await request(ws, {"type": "publish", "topic": "empty"}) == \
                {"error": "Invalid message format", "code": "invalid_format", "topic": "empty"}
            assert await request(ws, {"type": "publish", "topic": "empty", "id": 3}) == \
                {"error": "Invalid message format", "code": "invalid_format", "topic": "empty",
                 "id": 3}

    run(main())


def test_disconnected_subscriber_is_forgotten(start_server):
    srv = start_server(workers=1)

    async def main():
        gone = await ws_connect(srv.url)
        await subscribe(gone, "t")
        await gone.close()
        async with ws_connect(srv.url) as ws:
            await subscribe(ws, "t")
            for i in range(5):
                await send_json(ws, {"type": "publish", "topic": "t", "payload": i})
            got = await recv_n(ws, 10)
            assert [m for m in got if m.get("type") == NOTE] == [note("t", i) for i in range(5)]

    run(main())


def test_pipelined_requests_are_answered_in_order(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for i in range(50):
                await send_json(ws, {"type": "ping", "id": i})
            for i in range(50):
                assert await recv_json(ws) == {"type": "pong", "id": i}

    run(main())


@pytest.mark.parametrize("args", [(), ("--no-io-uring",)], ids=["io_uring", "writev"])
def test_many_topics_fan_out(start_server, args):
    """Both ways of writing to clients: a flush's sends batched through
    io_uring (the default), and one writev per connection."""
    srv = start_server(workers=1, args=args)

    async def main():
        clients = [await ws_connect(srv.url) for _ in range(10)]
        try:
            for i, c in enumerate(clients):
                await subscribe(c, "all")
                await subscribe(c, f"only-{i % 2}")
            pub = clients[0]
            await send_json(pub, {"type": "publish", "topic": "only-1", "payload": "odd"})
            assert await recv_json(pub) == {"status": "published", "topic": "only-1"}
            for i, c in enumerate(clients):
                if i % 2:
                    assert await recv_json(c) == note("only-1", "odd")
            await send_json(clients[1], {"type": "publish", "topic": "all", "payload": [0]})
            for i, c in enumerate(clients):
                want = [note("all", [0])]
                if i == 1:
                    want.append({"status": "published", "topic": "all"})
                unordered_equal(await recv_n(c, len(want)), want)
            for c in clients:
                await expect_silence(c, 0.05)
        finally:
            for c in clients:
                await c.close()

    run(main())


# ---- fragmented and large messages ----

@pytest.mark.parametrize("compression", [None, "deflate"])
def test_fragmented_message_is_reassembled(start_server, compression):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url, compression=compression) as ws:
            await ws.send(['{"type":"subscr', 'ibe","topic":', '"frag"', ',"id":1}'])
            assert await recv_json(ws) == {"status": "subscribed", "topic": "frag", "id": 1}
            msg = json.dumps({"type": "publish", "topic": "frag", "payload": "x" * 5000})
            await ws.send([msg[i:i + 700] for i in range(0, len(msg), 700)])
            unordered_equal(await recv_n(ws, 2), [{"status": "published", "topic": "frag"},
                                                  note("frag", "x" * 5000)])

    run(main())


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_message_at_the_size_limit_is_accepted(start_server, compression):
    srv = start_server(workers=1, args=["--max-message-size", "1k"])

    async def main():
        async with ws_connect(srv.url, compression=compression) as ws:
            await subscribe(ws, "big")
            head = '{"type":"publish","topic":"big","payload":"'
            body = "y" * (1024 - len(head) - 2)
            msg = head + body + '"}'
            assert len(msg.encode()) == 1024
            await ws.send(msg)
            unordered_equal(await recv_n(ws, 2), [{"status": "published", "topic": "big"},
                                                  note("big", body)])

    run(main())


def test_default_size_limit_allows_64k(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url, compression=None) as ws:
            await subscribe(ws, "big")
            head = '{"type":"publish","topic":"big","payload":"'
            body = "z" * (64 * 1024 - len(head) - 2)
            await ws.send(head + body + '"}')
            unordered_equal(await recv_n(ws, 2), [{"status": "published", "topic": "big"},
                                                  note("big", body)])

    run(main())


# ---- errors ----

INVALID_FORMAT = {"error": "Invalid message format", "code": "invalid_format"}

BAD_FORMAT_MESSAGES = [
    "not json",
    "{",
    '{"type":"ping"} trailing',
    "",
    "[]",
    '["type","ping"]',
    '"ping"',
    "42",
    "null",
    "true",
    "{}",
    '{"topic":"t"}',
    '{"type":5}',
    '{"type":null}',
    '{"type":["ping"]}',
    '{"type":{"a":1}}',
    '{"type":"subscribe"}',
    '{"type":"subscribe","topic":5}',
    '{"type":"subscribe","topic":null}',
    '{"type":"unsubscribe","topic":["t"]}',
    '{"type":"publish","topic":{},"payload":1}',
    '{"type":"publish","payload":1}',
    '{"type":"ping","type":"ping"}',
    '{"type":"subscribe","topic":"a","topic":"b"}',
    '{"type":"publish","topic":"t","payload":1,"payload":2}',
]


def test_invalid_format(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for m in BAD_FORMAT_MESSAGES:
                assert await request(ws, m) == INVALID_FORMAT, m
            # the connection is still usable
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())
    assert_serves(srv)


def test_unknown_type(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for t in ("hello", "", "PING", "Subscribe", "notification", "pong", "publish ",
                      "ping\u0000", "subscribe\u0000x"):
                assert await request(ws, {"type": t, "topic": "t"}) == \
                    {"error": "Unknown message type", "code": "unknown_type"}, t
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())


INVALID_TOPICS = ["", "x" * 129, "a b", "a*", ".a", "a..b", "ü", "a\tb", "a\nb", "#", "a?b",
                  "a\u0000b", "..", "."]


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
def test_invalid_topic(start_server, kind):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for t in INVALID_TOPICS:
                msg = {"type": kind, "topic": t}
                if kind == "publish":
                    msg["payload"] = 1
                assert await request(ws, msg) == \
                    {"error": "Invalid topic name", "code": "invalid_topic", "topic": t}, t
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())
    assert_serves(srv)


VALID_TOPICS = ["a", "x" * 128, "A-Z_a-z.0-9", "a.b.c", "a.", "a:b/c@d", "user@host/path",
                "-", "_", "0", "/", "@", ":", "a/./b"]


def test_valid_topics(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws, ws_connect(srv.url) as pub:
            for t in VALID_TOPICS:
                await subscribe(ws, t)
                assert await request(pub, {"type": "publish", "topic": t, "payload": t}) == \
                    {"status": "published", "topic": t}
                assert await recv_json(ws) == note(t, t)
                assert await request(ws, {"type": "unsubscribe", "topic": t}) == \
                    {"status": "unsubscribed", "topic": t}

    run(main())


def test_too_many_subscriptions(start_server):
    srv = start_server(workers=1, args=["--max-subscriptions", "3"])

    async def main():
        async with ws_connect(srv.url) as ws:
            for t in ("t1", "t2", "t3"):
                await subscribe(ws, t)
            too_many = {"error": "Too many subscriptions", "code": "too_many_subscriptions",
                        "topic": "t4"}
            assert await request(ws, {"type": "subscribe", "topic": "t4"}) == too_many
            assert await request(ws, {"type": "subscribe", "topic": "t4", "id": 9}) == \
                {**too_many, "id": 9}
            # subscribing again to one already held is fine
            await subscribe(ws, "t2")
            # the refused topic is not subscribed
            assert await request(ws, {"type": "unsubscribe", "topic": "t4"}) == \
                {"error": "Not subscribed to this topic", "code": "not_subscribed", "topic": "t4"}
            # freeing one makes room for one
            assert await request(ws, {"type": "unsubscribe", "topic": "t1"}) == \
                {"status": "unsubscribed", "topic": "t1"}
            await subscribe(ws, "t4")
            assert await request(ws, {"type": "subscribe", "topic": "t5"}) == \
                {**too_many, "topic": "t5"}
        # the limit is per connection
        async with ws_connect(srv.url) as ws2:
            for t in ("t1", "t2", "t3"):
                await subscribe(ws2, t)

    run(main())


def test_default_max_subscriptions_is_100(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            for i in range(100):
                await send_json(ws, {"type": "subscribe", "topic": f"s{i}"})
            for i in range(100):
                assert await recv_json(ws) == {"status": "subscribed", "topic": f"s{i}"}
            assert await request(ws, {"type": "subscribe", "topic": "s100"}) == \
                {"error": "Too many subscriptions", "code": "too_many_subscriptions",
                 "topic": "s100"}

    run(main())


@pytest.mark.parametrize("topic", ["ü" * 70, "ü" * 80, "a" + "é" * 100, "€" * 60],
                         ids=["140-bytes-non-ascii", "160-bytes-non-ascii",
                              "201-bytes-non-ascii", "180-bytes-euro"])
def test_invalid_topic_is_echoed_when_not_ascii(start_server, topic):
    """The invalid_topic error carries the request's topic, also when the
    topic is a few dozen non-ASCII characters (well inside any message
    limit).  Over 200 bytes the server may shorten it (as it does for
    ASCII), but the member must be there."""
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            reply = await request(ws, {"type": "subscribe", "topic": topic, "id": 1})
            want = {"error": "Invalid topic name", "code": "invalid_topic", "topic": topic, "id": 1}
            if len(topic.encode()) <= 200:
                assert reply == want
            else:
                assert "topic" in reply, reply
                assert topic.startswith(reply["topic"]) and len(reply["topic"]) >= 64, reply
                assert reply == {**want, "topic": reply["topic"]}

    run(main())


def test_invalid_topic_very_long_ascii(start_server):
    """A long invalid topic: the server may shorten the echo (it keeps the
    first 200 bytes), but the reply keeps its topic member."""
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            topic = "x" * 1000
            reply = await request(ws, {"type": "subscribe", "topic": topic})
            assert reply["code"] == "invalid_topic" and reply["error"] == "Invalid topic name"
            assert topic.startswith(reply["topic"]) and len(reply["topic"]) >= 129, reply

    run(main())
