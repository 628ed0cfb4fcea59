"""Control messages between workers, through the real Redis.

Every worker subscribes to "<prefix>.tidings.all" (orders for all workers of
all hosts; no topic can start with '.') and to its own inbox channel.  An
order is plain JSON on that channel, so these tests give it straight to
Redis, as the HTTP API does (worker/control.h has the messages):
{"op":"disconnect","sub":S} closes every connection of JWT subject S on
every worker of every host with 4403 "revoked"; with "topic" it
unsubscribes them from that topic instead.
"""
import asyncio
import json

from helpers import expect_close, recv_json, request, subscribe, wait_for_async, ws_connect
from test_auth import SECRET, make_jwt

CLAIMS = {"subscribe": ["*"], "publish": ["*"]}


def token(sub):
    return make_jwt({"sub": sub, **CLAIMS}, SECRET)


async def wait_control_subscribers(redis, channel, n):
    def subscribed():
        return redis.numsub(channel) == n
    await wait_for_async(f"{n} workers subscribed to {channel}", subscribed)


def test_disconnect_order_reaches_every_worker_of_every_host(start_server, redis):
    args = ["--redis", redis.url, "--jwt-secret", SECRET, "--redis-prefix", "app:"]
    hosts = [start_server(workers=2, args=args), start_server(workers=1, args=args)]

    async def run():
        await wait_control_subscribers(redis, "app:.tidings.all", 3)
        alice = [await ws_connect(f"{h.url}?token={token('alice')}") for h in hosts for _ in range(6)]
        bob = await ws_connect(f"{hosts[0].url}?token={token('bob')}")
        alice2 = await ws_connect(f"{hosts[1].url}?token={token('alice2')}")
        redis.cli("PUBLISH", "app:.tidings.all", json.dumps({"op": "disconnect", "sub": "alice"}))
        for ws in alice:
            assert await expect_close(ws) == 4403
            assert ws.close_reason == "revoked"
        for ws in (bob, alice2):
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
            await ws.close()

    asyncio.run(run())


def test_disconnect_from_one_topic_unsubscribes_everywhere(start_server, redis):
    args = ["--redis", redis.url, "--jwt-secret", SECRET]
    hosts = [start_server(workers=1, args=args), start_server(workers=1, args=args)]

    async def run():
        await wait_control_subscribers(redis, ".tidings.all", 2)
        a = [await ws_connect(f"{h.url}?token={token('alice')}") for h in hosts]
        for ws in a:
            await subscribe(ws, "news")
            await subscribe(ws, "sport")
        redis.cli("PUBLISH", ".tidings.all",
                  json.dumps({"op": "disconnect", "sub": "alice", "topic": "news"}))
        for ws in a:
            assert await recv_json(ws) == {"status": "unsubscribed", "topic": "news",
                                           "reason": "revoked"}
        pub = await ws_connect(f"{hosts[0].url}?token={token('bob')}")
        for topic in ("news", "sport"):
            await pub.send(json.dumps({"type": "publish", "topic": topic, "payload": topic}))
        for ws in a:  # the next notification is sport's: news no longer reaches alice
            assert await recv_json(ws) == {"type": "notification", "topic": "sport",
                                           "payload": "sport"}
        for ws in a + [pub]:
            await ws.close()

    asyncio.run(run())


def test_control_channels_are_not_topics(start_server, redis):
    """A garbage order is dropped (logged), and nobody can subscribe to the
    control channel as a topic."""
    srv = start_server(workers=1, args=["--redis", redis.url])

    async def run():
        await wait_control_subscribers(redis, ".tidings.all", 1)
        for bad in ("not json", "[]", '{"op":"nope"}', '{"op":"disconnect","sub":7}'):
            redis.cli("PUBLISH", ".tidings.all", bad)
        async with ws_connect(srv.url) as ws:
            reply = await request(ws, {"type": "subscribe", "topic": ".tidings.all"})
            assert reply["code"] == "invalid_topic"
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
        await wait_for_async("the dropped orders logged",
                             lambda: srv.log_text().count(": dropped") >= 4)

    asyncio.run(run())
