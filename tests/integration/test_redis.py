"""The Redis bus: fan-out across workers, redis-cli publishing, the prefix,
and what happens while Redis is down."""
import asyncio
import json
import os
import time

import pytest

import wsraw
from helpers import (publish_until_published, recv_json, request, subscribe, wait_for_async,
                     ws_connect)


async def wait_channel_subscribers(redis, channel, n, timeout=5):
    await wait_for_async(f"{channel} to reach {n} Redis subscribers",
                         lambda: redis.numsub(channel) >= n, timeout)


async def wait_redis_connected(srv, up):
    """Until every worker's tidings_redis_connected is 1 (up) or 0."""
    want = 1 if up else 0
    await asyncio.to_thread(
        srv.wait_metrics, f"every worker's tidings_redis_connected to be {want}",
        lambda m: set(m.per_worker("tidings_redis_connected").values()) == {want})


def test_publish_reaches_every_worker_exactly_once(start_server, redis):
    srv = start_server(workers=2, args=["--redis", redis.url])

    async def run():
        clients = [await ws_connect(srv.url) for _ in range(16)]
        for c in clients:
            await subscribe(c, "fan")
        # both workers have a subscriber: SO_REUSEPORT spread 16 clients
        await wait_channel_subscribers(redis, "fan", 2)
        await clients[0].send(json.dumps({"type": "publish", "topic": "fan", "payload": {"n": 7}}))
        got = 0
        for c in clients:
            while True:
                m = await recv_json(c)
                if m.get("type") == "notification":
                    assert m == {"type": "notification", "topic": "fan", "payload": {"n": 7}}
                    got += 1
                    break
        assert got == 16
        # exactly once: nothing else arrives
        for c in clients:
            with pytest.raises(asyncio.TimeoutError):
                m = await asyncio.wait_for(c.recv(), 0.3)
                if json.loads(m).get("status") == "published":
                    raise asyncio.TimeoutError
        for c in clients:
            await c.close()

    asyncio.run(run())


def test_redis_cli_publish_and_prefix(start_server, redis):
    srv = start_server(workers=1, args=["--redis", redis.url, "--redis-prefix", "app1:"])

    async def run():
        async with ws_connect(srv.url) as ws:
            await subscribe(ws, "news")
            await wait_channel_subscribers(redis, "app1:news", 1)
            assert redis.numsub("news") == 0
            redis.cli("PUBLISH", "app1:news", "hello world")
            assert await recv_json(ws) == {"type": "notification", "topic": "news",
                                           "payload": "hello world"}
            redis.cli("PUBLISH", "app1:news", '{"a": [1, 2]}')
            assert await recv_json(ws) == {"type": "notification", "topic": "news",
                                           "payload": {"a": [1, 2]}}
            redis.cli("PUBLISH", "app1:news", "42")
            assert await recv_json(ws) == {"type": "notification", "topic": "news", "payload": 42}
            # a message on the unprefixed channel is not ours
            redis.cli("PUBLISH", "news", "nope")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)

    asyncio.run(run())


def test_unsubscribe_releases_the_redis_channel(start_server, redis):
    srv = start_server(workers=1, args=["--redis", redis.url])

    async def run():
        a = await ws_connect(srv.url)
        b = await ws_connect(srv.url)
        await subscribe(a, "t1")
        await subscribe(b, "t1")
        await wait_channel_subscribers(redis, "t1", 1)
        assert redis.numsub("t1") == 1  # one per worker
        assert await request(a, {"type": "unsubscribe", "topic": "t1"}) == \
            {"status": "unsubscribed", "topic": "t1"}
        # the worker talks to Redis on one subscriber connection, in order:
        # once a later SUBSCRIBE has taken effect, an UNSUBSCRIBE of t1 sent
        # for a's leaving would have too
        await subscribe(a, "t1-later")
        await wait_channel_subscribers(redis, "t1-later", 1)
        assert redis.numsub("t1") == 1
        await b.close()  # the last local subscriber leaves by disconnecting
        await wait_for_async("t1 to lose its Redis subscriber", lambda: redis.numsub("t1") == 0)
        # leave and join again quickly: the channel must stay usable
        for _ in range(20):
            await subscribe(a, "t2")
            assert await request(a, {"type": "unsubscribe", "topic": "t2"}) == \
                {"status": "unsubscribed", "topic": "t2"}
        await subscribe(a, "t2")
        await wait_channel_subscribers(redis, "t2", 1)
        redis.cli("PUBLISH", "t2", "still here")
        assert await recv_json(a) == {"type": "notification", "topic": "t2", "payload": "still here"}
        await a.close()

    asyncio.run(run())


def test_redis_outage_keeps_clients_and_recovers(start_server, redis):
    srv = start_server(workers=2, args=["--redis", redis.url, "--ping-interval", "1"])

    async def run():
        clients = [await ws_connect(srv.url) for _ in range(12)]
        for c in clients:
            await subscribe(c, "live")
        await wait_channel_subscribers(redis, "live", 2)

        await asyncio.to_thread(redis.kill)
        await wait_redis_connected(srv, up=False)  # every worker noticed
        pings = [c.pings_answered for c in clients]
        # a publish during the outage is answered with an error, never dropped
        await clients[0].send(json.dumps({"type": "publish", "topic": "live", "payload": 1, "id": 9}))
        assert await recv_json(clients[0]) == {
            "error": "Message bus unavailable, message not published",
            "code": "bus_unavailable", "topic": "live", "id": 9}
        # health and readiness say so, and what is down
        for path in ("/healthz", "/readyz"):
            resp = await asyncio.to_thread(wsraw.http_get, srv.port, path)
            assert resp.status == 503 and resp.body.startswith(b"not ready: Redis"), (path, resp)
        # clients stay connected through heartbeats (ping interval 1 s):
        # a client pinged again after answering a ping of the outage has
        # been through the check that cuts clients that did not answer
        await wait_for_async("every client to answer two heartbeats of the outage",
                             lambda: all(c.pings_answered >= n + 2
                                         for c, n in zip(clients, pings)), timeout=10)
        for c in clients:
            await c.send(json.dumps({"type": "ping"}))
            assert await recv_json(c) == {"type": "pong"}

        await asyncio.to_thread(redis.start)
        # every worker re-subscribes by itself; no client reconnects
        await wait_channel_subscribers(redis, "live", 2, timeout=15)
        _, notes = await publish_until_published(clients[1], "live", "back", timeout=15)
        # the publisher is a subscriber too: its copy may come back through
        # the subscription before PUBLISH's own reply
        assert all(n["payload"] == "back" for n in notes), notes
        got = {1} if notes else set()  # clients that already have the notification
        for i, c in enumerate(clients):
            while i not in got:
                m = await recv_json(c)
                if m.get("type") == "notification":
                    assert m["payload"] == "back"
                    break
        for c in clients:
            await c.close()

    asyncio.run(run())
    assert "Redis subscriber connection" in srv.log_text()


def test_publishing_recovers_within_a_second_of_redis_returning(start_server, redis):
    """After Redis returns from an outage, publishes succeed again within
    1 s (measured from the moment the new redis-server answers PING)."""
    srv = start_server(workers=1, args=["--redis", redis.url])

    async def run():
        async with ws_connect(srv.url) as ws:
            assert await request(ws, {"type": "publish", "topic": "back", "payload": 0}) == \
                {"status": "published", "topic": "back"}
            await asyncio.to_thread(redis.kill)  # the worker's connections drop
            await wait_redis_connected(srv, up=False)
            await asyncio.sleep(2)  # the outage's length (the scenario), not a wait for a fact
            await asyncio.to_thread(redis.start)  # returns once it answers PING
            t0 = time.monotonic()
            sent, _ = await publish_until_published(ws, "back", 1, timeout=15, interval=0.01)
            return time.monotonic() - t0, sent

    elapsed, sent = asyncio.run(run())
    print(f"publishing recovered {elapsed:.3f} s after Redis answered PING ({sent} publishes)")
    assert elapsed < 1.5, f"publishing recovered only {elapsed:.2f} s after Redis came back"


def test_embedded_redis_is_started_and_stopped(start_server):
    srv = start_server(workers=2)
    log = srv.log_text()
    assert "embedded redis-server started" in log
    redis = srv.embedded_redis()
    sock = redis.sock
    assert os.path.exists(sock)

    async def run():
        a = await ws_connect(srv.url)
        await subscribe(a, "emb")
        await wait_channel_subscribers(redis, "emb", 1)
        redis.cli("PUBLISH", "emb", "via embedded")
        assert await recv_json(a) == {"type": "notification", "topic": "emb",
                                      "payload": "via embedded"}
        await a.close()

    asyncio.run(run())
    assert srv.stop() == 0
    assert not os.path.exists(sock)
    assert not os.path.exists(os.path.dirname(sock))
