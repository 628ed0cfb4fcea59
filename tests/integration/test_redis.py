"""The Redis bus: fan-out across workers, redis-cli publishing, the prefix,
and what happens while Redis is down."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import websockets

import wsraw
from conftest import free_port


class Redis:
    """A real redis-server on a loopback port, killable and restartable on
    the same port."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args],
                              check=True, capture_output=True, timeout=10).stdout

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    r.start()
    yield r
    r.kill()


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def subscribe(ws, topic):
    await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
    assert await recv_json(ws) == {"status": "subscribed", "topic": topic}


async def wait_channel_subscribers(redis, channel, n, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        # in a thread: the event loop must keep answering the server's pings
        out = (await asyncio.to_thread(redis.cli, "PUBSUB", "NUMSUB", channel)).split()
        if int(out[1]) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{channel} never reached {n} Redis subscribers")


def test_publish_reaches_every_worker_exactly_once(start_server, redis):
    srv = start_server(workers=2, args=["--redis", redis.url])

    async def run():
        clients = [await websockets.connect(srv.url) for _ in range(16)]
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
        async with websockets.connect(srv.url) as ws:
            await subscribe(ws, "news")
            await wait_channel_subscribers(redis, "app1:news", 1)
            assert redis.cli("PUBSUB", "NUMSUB", "news").split()[1] == b"0"
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
        a = await websockets.connect(srv.url)
        b = await websockets.connect(srv.url)
        await subscribe(a, "t1")
        await subscribe(b, "t1")
        await wait_channel_subscribers(redis, "t1", 1)
        assert redis.cli("PUBSUB", "NUMSUB", "t1").split()[1] == b"1"  # one per worker
        await a.send(json.dumps({"type": "unsubscribe", "topic": "t1"}))
        assert await recv_json(a) == {"status": "unsubscribed", "topic": "t1"}
        await asyncio.sleep(0.2)
        assert redis.cli("PUBSUB", "NUMSUB", "t1").split()[1] == b"1"
        await b.close()  # the last local subscriber leaves by disconnecting
        deadline = time.time() + 5
        while redis.cli("PUBSUB", "NUMSUB", "t1").split()[1] != b"0":
            assert time.time() < deadline, "channel still subscribed"
            await asyncio.sleep(0.05)
        # leave and join again quickly: the channel must stay usable
        for _ in range(20):
            await subscribe(a, "t2")
            await a.send(json.dumps({"type": "unsubscribe", "topic": "t2"}))
            assert await recv_json(a) == {"status": "unsubscribed", "topic": "t2"}
        await subscribe(a, "t2")
        await wait_channel_subscribers(redis, "t2", 1)
        redis.cli("PUBLISH", "t2", "still here")
        assert await recv_json(a) == {"type": "notification", "topic": "t2", "payload": "still here"}
        await a.close()

    asyncio.run(run())


def test_redis_outage_keeps_clients_and_recovers(start_server, redis):
    srv = start_server(workers=2, args=["--redis", redis.url, "--ping-interval", "1"])

    async def run():
        clients = [await websockets.connect(srv.url) for _ in range(12)]
        for c in clients:
            await subscribe(c, "live")
        await wait_channel_subscribers(redis, "live", 2)

        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(0.3)
        # a publish during the outage is answered with an error, never dropped
        await clients[0].send(json.dumps({"type": "publish", "topic": "live", "payload": 1, "id": 9}))
        assert await recv_json(clients[0]) == {
            "error": "Message bus unavailable, message not published",
            "code": "bus_unavailable", "topic": "live", "id": 9}
        # health and readiness say so, and what is down
        for path in ("/healthz", "/readyz"):
            resp = await asyncio.to_thread(wsraw.http_get, srv.port, path)
            assert resp.status == 503 and resp.body.startswith(b"not ready: Redis"), (path, resp)
        # clients stay connected through heartbeats (ping interval 1 s)
        await asyncio.sleep(2.5)
        for c in clients:
            await c.send(json.dumps({"type": "ping"}))
            assert await recv_json(c) == {"type": "pong"}

        await asyncio.to_thread(redis.start)
        # every worker re-subscribes by itself; no client reconnects
        await wait_channel_subscribers(redis, "live", 2, timeout=15)
        deadline = time.time() + 15
        got = set()  # clients that already have the notification
        while True:
            await clients[1].send(json.dumps({"type": "publish", "topic": "live", "payload": "back"}))
            reply = await recv_json(clients[1])
            if reply.get("type") == "notification":
                # the publisher is a subscriber too: its copy may come back
                # through the subscription before PUBLISH's own reply
                assert reply["payload"] == "back"
                got.add(1)
                reply = await recv_json(clients[1])
            if reply.get("status") == "published":
                break
            assert reply["code"] == "bus_unavailable", reply
            assert time.time() < deadline, "publishing never recovered"
            await asyncio.sleep(0.2)
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


def test_embedded_redis_is_started_and_stopped(start_server):
    srv = start_server(workers=2)
    log = srv.log_text()
    assert "embedded redis-server started" in log
    sock = log.split("on unix:")[1].split()[0]
    assert os.path.exists(sock)

    async def run():
        a = await websockets.connect(srv.url)
        await subscribe(a, "emb")
        await asyncio.sleep(0.2)
        subprocess.run(["redis-cli", "-s", sock, "PUBLISH", "emb", "via embedded"], check=True,
                       capture_output=True, timeout=10)
        assert await recv_json(a) == {"type": "notification", "topic": "emb",
                                      "payload": "via embedded"}
        await a.close()

    asyncio.run(run())
    assert srv.stop() == 0
    assert not os.path.exists(sock)
    assert not os.path.exists(os.path.dirname(sock))
