"""History and resume against the real server and a real redis-server:
offsets on replies and notifications, plain and resuming subscribes
(recovered true/false), the seam between history and live messages under
load, history requests, publishing from redis-cli (PUBLISH and FCALL
tidings_publish), JWT claims, workers catching up after Redis cut their
subscriber connection, and the drain of SIGHUP (1012) and SIGTERM (1001)
spread over --drain-window.

    TIDINGS_BIN=$PWD/bin/tidings-asan /usr/bin/python3 -m pytest -q \\
        tests/integration/test_history.py

Most tests use the test-owned redis-server of test_redis.py (fixture
`redis`): they read and cut its connections with redis-cli.  Every wait
waits for a fact (a reply, a count, a log line) and has a deadline.
"""
import asyncio
import json
import re
import signal
import time
from collections import Counter

import pytest
import websockets

import wsraw
from helpers import ws_connect
from test_auth import SECRET, bearer, make_jwt, valid_for

TIMEOUT = 10.0  # one expected reply or message
LONG = 60.0  # a whole run of messages under load


# ---- a client that sorts what it receives ----

class Peer:
    """A WebSocket client whose messages a background task reads, parses
    and keeps: all of them in order (msgs), the notifications (notes) and
    everything else (replies).  Waits are on facts, with deadlines."""

    def __init__(self, ws, name=""):
        self.ws = ws
        self.name = name
        self.msgs = []
        self.notes = []
        self.replies = []
        self.first_epochs = []  # "epoch" of every notification with offset 1
        self.close_code = None
        self.close_reason = None
        self.closed_at = None  # time.monotonic() when the close was seen
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url, name="", **kw):
        return cls(await ws_connect(url, **kw), name)

    async def _read(self):
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), f"{self.name}: a binary message {raw!r}"
                m = json.loads(raw)
                self.msgs.append(m)
                if m.get("type") == "notification" and m.get("offset") == 1:
                    # the first message of an epoch names it; kept aside so
                    # that notes compare with note()
                    epoch = m.pop("epoch", None)
                    assert isinstance(epoch, str) and re.fullmatch(r"[A-Za-z0-9-]{1,32}", epoch), m
                    self.first_epochs.append(epoch)
                (self.notes if m.get("type") == "notification" else self.replies).append(m)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self._changed.set()

    async def until(self, pred, what, timeout=TIMEOUT):
        """Waits until pred() is true; fails after timeout seconds or when
        the connection closed without it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            left = deadline - loop.time()
            if self.closed_at is not None:
                raise AssertionError(f"{self.name}: closed ({self.close_code}) before {what}; "
                                     f"last messages: {self.msgs[-5:]}")
            if left <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s; "
                                     f"last messages: {self.msgs[-5:]}")
            self._changed.clear()
            try:
                # pred may also depend on things outside this connection:
                # look again now and then
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
            except asyncio.TimeoutError:
                pass

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def request(self, obj, timeout=TIMEOUT):
        """Sends obj and returns the next reply (not a notification)."""
        n = len(self.replies)
        await self.send(obj)
        await self.until(lambda: len(self.replies) > n, f"reply to {obj}", timeout)
        return self.replies[n]

    async def wait_notes(self, total, timeout=TIMEOUT):
        await self.until(lambda: len(self.notes) >= total, f"{total} notifications", timeout)

    async def wait_offset(self, offset, timeout=LONG):
        """Waits for a notification with this offset (or a later one)."""
        await self.until(lambda: self.notes and self.notes[-1].get("offset", 0) >= offset,
                         f"the notification with offset {offset}", timeout)

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self._task, TIMEOUT)


async def wait_closed(peer, timeout=TIMEOUT):
    await asyncio.wait_for(asyncio.shield(peer._task), timeout)
    return peer.close_code


async def subscribe(peer, topic, **extra):
    return await peer.request({"type": "subscribe", "topic": topic, **extra})


async def publish(peer, topic, payload, **extra):
    return await peer.request({"type": "publish", "topic": topic, "payload": payload, **extra})


def note(topic, payload, offset=None):
    n = {"type": "notification", "topic": topic, "payload": payload}
    if offset is not None:
        n["offset"] = offset
    return n


def offsets(notes):
    return [n["offset"] for n in notes]


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred, what, timeout=TIMEOUT, step=0.05):
    """Polls pred() (which may block: it runs in a thread) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await asyncio.to_thread(pred):
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


def numsub(redis, channel):
    return int(redis.cli("PUBSUB", "NUMSUB", channel).split()[1])


async def subscribers_on_every_worker(srv, redis, topic, workers, first=4, cap=64, **sub):
    """Connects clients subscribed to topic until each of the workers holds
    one (one Redis subscription per worker: NUMSUB counts workers)."""
    peers = []
    while True:
        p = await Peer.open(srv.url, f"sub{len(peers)}")
        r = await subscribe(p, topic, **sub)
        assert r["status"] == "subscribed", r
        peers.append(p)
        # a subscribe to a topic with history is answered once Redis has
        # confirmed the worker's SUBSCRIBE: NUMSUB is up to date
        if len(peers) >= first and await asyncio.to_thread(numsub, redis, topic) >= workers:
            return peers
        assert len(peers) < cap, f"{cap} clients did not reach {workers} workers"


def metric_total(srv, name):
    """The sum over workers of a counter of the admin /metrics."""
    r = wsraw.http_get(srv.admin_port, "/metrics")
    assert r.status == 200, r
    lines = r.body.decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith(name + "{") or line.startswith(name + " "))


def wait_readyz(srv, timeout=TIMEOUT):
    """Waits until the admin /readyz answers 200: every worker listens and
    has its Redis connections up and the history functions loaded (a
    subscribe to a topic with history needs them: before, it is answered
    bus_unavailable)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = wsraw.http_get(srv.admin_port, "/readyz", timeout=1.0)
            if r.status == 200:
                return srv
        except OSError as e:
            r = e
        assert time.monotonic() < deadline, f"/readyz: {r}"
        time.sleep(0.02)


def history_server(start_server, redis, *args, workers=1, size=100):
    srv = start_server(workers=workers,
                       args=["--redis", redis.url, "--history-size", str(size), *args])
    return wait_readyz(srv)


# ---- a publisher that keeps a window of publishes in flight ----

class Publisher:
    """Publishes {"seq": n} for n = 1, 2, ... to a topic as fast as the
    server answers, with up to `window` publishes in flight; keeps the
    offset each one was acknowledged with."""

    def __init__(self, peer, topic, window=16):
        self.peer = peer
        self.topic = topic
        self.window = window
        self.sent = 0
        self.stop = asyncio.Event()

    def acked(self):
        """offset -> seq of every acknowledged publish so far."""
        out = {}
        for r in self.peer.replies:
            assert r.get("status") == "published" and r.get("topic") == self.topic, r
            assert isinstance(r.get("offset"), int) and r["offset"] > 0, r
            out[r["offset"]] = r["id"]
        return out

    def top(self):
        """The highest acknowledged offset (0 before the first)."""
        return max((r.get("offset", 0) for r in self.peer.replies), default=0)

    async def run(self):
        p = self.peer
        while not self.stop.is_set():
            await p.until(lambda: self.sent - len(p.replies) < self.window, "room in the window",
                          LONG)
            self.sent += 1
            await p.send({"type": "publish", "topic": self.topic, "payload": {"seq": self.sent},
                          "id": self.sent})
        await p.until(lambda: len(p.replies) == self.sent, "the last publish replies", LONG)

    async def until_top(self, offset, timeout=LONG):
        await self.peer.until(lambda: self.top() >= offset, f"publish offset {offset}", timeout)

    def check(self):
        """Every publish was acknowledged with its own offset, 1..top (one
        publisher on a fresh topic); returns offset -> seq."""
        acked = self.acked()
        assert len(self.peer.replies) == self.sent, (len(self.peer.replies), self.sent)
        assert sorted(acked) == list(range(1, self.sent + 1)), "offsets acknowledged twice or skipped"
        assert sorted(acked.values()) == list(range(1, self.sent + 1))
        return acked


# ---- offsets ----

def test_offsets_on_replies_and_notifications_across_two_workers(start_server, redis):
    """Publishes to a topic with history are acknowledged with offsets
    1, 2, 3, and every subscriber, on either worker, gets each of them once
    with its offset."""
    srv = history_server(start_server, redis, workers=2)

    async def go():
        subs = await subscribers_on_every_worker(srv, redis, "news", 2)
        for s in subs:
            assert s.replies[0] == {"status": "subscribed", "topic": "news", "epoch": "",
                                    "offset": 0}
        pub = await Peer.open(srv.url, "pub")
        assert await publish(pub, "news", {"n": 1}) == \
            {"status": "published", "topic": "news", "offset": 1}
        assert await publish(pub, "news", "two", id="p2") == \
            {"status": "published", "topic": "news", "offset": 2, "id": "p2"}
        assert await publish(pub, "news", [3], id=3) == \
            {"status": "published", "topic": "news", "offset": 3, "id": 3}
        # a sentinel: once it is in, anything sent before it is in too
        assert (await publish(pub, "news", "end"))["offset"] == 4
        for s in subs:
            await s.wait_offset(4, TIMEOUT)
            assert s.notes == [note("news", {"n": 1}, 1), note("news", "two", 2),
                               note("news", [3], 3), note("news", "end", 4)], s.name
        assert pub.notes == []
        # the epoch the subscribers would resume with is the one in Redis
        epoch = redis.cli("HGET", "{news}:meta", "e").decode().strip()
        late = await Peer.open(srv.url, "late")
        assert await subscribe(late, "news") == \
            {"status": "subscribed", "topic": "news", "epoch": epoch, "offset": 4}
        assert epoch
        for p in subs + [pub, late]:
            await p.close()

    run(go())


def test_topics_without_history_carry_no_offset(start_server, redis):
    """Only topics matching --history-topics get offsets; the others, and
    every topic of a server without --history-size, look as before."""
    srv = history_server(start_server, redis, "--history-topics", "news.*,exact")
    plain = wait_readyz(start_server(workers=1, args=["--redis", redis.url,
                                                      "--redis-prefix", "p2:"]))

    async def go():
        a = await Peer.open(srv.url, "a")
        for topic in ("other", "exactly", "news"):
            assert await subscribe(a, topic) == {"status": "subscribed", "topic": topic}
            assert await publish(a, topic, {"t": topic}, id=1) == \
                {"status": "published", "topic": topic, "id": 1}
            await a.wait_notes(1)
            assert a.notes.pop() == note(topic, {"t": topic})
            assert await a.request({"type": "history", "topic": topic}) == \
                {"error": "This topic keeps no history", "code": "no_history", "topic": topic}
        for topic in ("news.x", "exact"):
            assert await subscribe(a, topic) == {"status": "subscribed", "topic": topic,
                                                 "epoch": "", "offset": 0}
            assert await publish(a, topic, 5) == {"status": "published", "topic": topic, "offset": 1}
            await a.wait_notes(1)
            assert a.notes.pop() == note(topic, 5, 1)

        b = await Peer.open(plain.url, "b")
        assert await subscribe(b, "news.x") == {"status": "subscribed", "topic": "news.x"}
        assert await publish(b, "news.x", 6) == {"status": "published", "topic": "news.x"}
        await b.wait_notes(1)
        assert b.notes == [note("news.x", 6)]
        assert await b.request({"type": "history", "topic": "news.x", "id": 9}) == \
            {"error": "This topic keeps no history", "code": "no_history", "topic": "news.x",
             "id": 9}
        # a since on a topic without history: subscribed as usual
        assert await subscribe(b, "other", since={"offset": 3, "epoch": "abc"}) == \
            {"status": "subscribed", "topic": "other"}
        await a.close()
        await b.close()

    run(go())


def test_plain_subscribe_answers_epoch_and_offset(start_server, redis):
    srv = history_server(start_server, redis, workers=2)

    async def go():
        a = await Peer.open(srv.url, "a")
        assert await subscribe(a, "t") == {"status": "subscribed", "topic": "t", "epoch": "",
                                           "offset": 0}
        for i in range(1, 4):
            assert (await publish(a, "t", i))["offset"] == i
        await a.wait_offset(3, TIMEOUT)
        epoch = redis.cli("HGET", "{t}:meta", "e").decode().strip()
        assert epoch
        # on both workers (four clients: most likely both)
        for i in range(4):
            b = await Peer.open(srv.url, f"b{i}")
            assert await subscribe(b, "t", id=i) == \
                {"status": "subscribed", "topic": "t", "epoch": epoch, "offset": 3, "id": i}
            await b.close()
        assert offsets(a.notes) == [1, 2, 3]
        # the epoch starts over once the history is gone
        redis.cli("DEL", "{t}:meta", "{t}:hist")
        c = await Peer.open(srv.url, "c")
        assert await subscribe(c, "t") == {"status": "subscribed", "topic": "t", "epoch": "",
                                           "offset": 0}
        assert (await publish(c, "t", "new"))["offset"] == 1
        await c.wait_offset(1, TIMEOUT)
        assert c.notes == [note("t", "new", 1)]
        new_epoch = redis.cli("HGET", "{t}:meta", "e").decode().strip()
        assert new_epoch and new_epoch != epoch
        await a.wait_notes(4)
        assert a.notes[3] == note("t", "new", 1)
        d = await Peer.open(srv.url, "d")
        assert await subscribe(d, "t") == {"status": "subscribed", "topic": "t",
                                           "epoch": new_epoch, "offset": 1}
        for p in (a, c, d):
            await p.close()

    run(go())


def test_subscribing_again_answers_epoch_and_offset(start_server, redis):
    """README: subscribing twice is fine, and the reply of a subscribe to
    a topic with history carries its epoch and offset: the second reply
    too (a client may take its position from any subscribe reply)."""
    srv = history_server(start_server, redis)

    async def go():
        a = await Peer.open(srv.url, "a")
        assert (await subscribe(a, "t2"))["offset"] == 0
        assert (await publish(a, "t2", 1))["offset"] == 1
        await a.wait_offset(1)
        epoch = (await a.request({"type": "history", "topic": "t2"}))["epoch"]
        assert await subscribe(a, "t2") == \
            {"status": "subscribed", "topic": "t2", "epoch": epoch, "offset": 1}
        await a.close()

    run(go())


# ---- resume ----

async def fill(srv, topic, n):
    """Publishes 1..n (payload {"i": k}) to topic; returns the epoch."""
    pub = await Peer.open(srv.url, "filler")
    for k in range(1, n + 1):
        r = await publish(pub, topic, {"i": k})
        assert r == {"status": "published", "topic": topic, "offset": k}, r
    r = await pub.request({"type": "history", "topic": topic, "limit": 1})
    await pub.close()
    assert r["offset"] == n and r["epoch"], r
    return r["epoch"]


def test_resume_delivers_exactly_the_missed_messages(start_server, redis):
    """recovered true: the reply, then every message after since in order,
    once, then the live ones."""
    srv = history_server(start_server, redis, workers=2)

    async def go():
        epoch = await fill(srv, "r", 10)
        resumed = {}
        for since in (4, 0, 9, 10):
            c = await Peer.open(srv.url, f"since{since}")
            r = await subscribe(c, "r", since={"offset": since, "epoch": epoch}, id="x")
            assert r == {"status": "subscribed", "topic": "r", "recovered": True,
                         "epoch": epoch, "offset": 10, "id": "x"}
            resumed[since] = c
        pub = await Peer.open(srv.url, "pub")
        assert (await publish(pub, "r", {"i": 11}))["offset"] == 11
        for since, c in resumed.items():
            await c.wait_offset(11, TIMEOUT)
            assert c.msgs[0]["status"] == "subscribed"
            assert c.notes == [note("r", {"i": k}, k) for k in range(since + 1, 12)], since
            assert len(c.msgs) == 1 + len(c.notes)
            await c.close()
        await pub.close()

    run(go())


async def assert_not_recovered(srv, topic, since, epoch, top, pub):
    """A resume that cannot be served: recovered false with the current
    epoch and offset, none of the old messages, then live ones."""
    c = await Peer.open(srv.url, f"since{since}")
    r = await subscribe(c, topic, since={"offset": since, "epoch": epoch})
    cur = await pub.request({"type": "history", "topic": topic, "limit": 1})
    assert r == {"status": "subscribed", "topic": topic, "recovered": False,
                 "epoch": cur["epoch"], "offset": top}, (since, epoch, r)
    nxt = (await publish(pub, topic, "live"))["offset"]
    await c.wait_offset(nxt, TIMEOUT)
    assert c.notes == [note(topic, "live", nxt)], f"since {since}: {c.notes}"
    await c.close()
    return nxt


def test_resume_not_recovered(start_server, redis):
    """recovered false for another epoch, for an offset trimmed away
    (--history-size 5, 20 published), and for an offset past the top."""
    srv = history_server(start_server, redis, workers=2, size=5)

    async def go():
        epoch = await fill(srv, "tr", 20)
        pub = await Peer.open(srv.url, "pub")
        top = 20
        # another epoch (well-formed, not the topic's)
        other = "zz" + epoch[2:] if not epoch.startswith("zz") else "yy" + epoch[2:]
        top = await assert_not_recovered(srv, "tr", top - 1, other, top, pub)
        # trimmed: the history holds top-4..top; since must be >= top-5
        top = await assert_not_recovered(srv, "tr", top - 6, epoch, top, pub)
        top = await assert_not_recovered(srv, "tr", 3, epoch, top, pub)
        top = await assert_not_recovered(srv, "tr", 0, epoch, top, pub)
        # past the top
        top = await assert_not_recovered(srv, "tr", top + 1, epoch, top, pub)
        top = await assert_not_recovered(srv, "tr", top + 1000, epoch, top, pub)
        # the oldest offset still recoverable: exactly the five kept
        c = await Peer.open(srv.url, "edge")
        r = await subscribe(c, "tr", since={"offset": top - 5, "epoch": epoch})
        assert r == {"status": "subscribed", "topic": "tr", "recovered": True,
                     "epoch": epoch, "offset": top}
        await c.wait_offset(top, TIMEOUT)
        assert offsets(c.notes) == list(range(top - 4, top + 1))
        await c.close()
        await pub.close()

    run(go())


def test_offsets_far_past_the_top(start_server, redis):
    """An offset is any non-negative JSON integer: one far past the top
    is past the top all the same (recovered false; no messages), not a
    bus error."""
    srv = history_server(start_server, redis)

    async def go():
        epoch = await fill(srv, "far", 3)
        pub = await Peer.open(srv.url, "pub")
        top = 3
        for since in (10 ** 15 - 1, 10 ** 15, 2 ** 53, 2 ** 63 - 1):
            top = await assert_not_recovered(srv, "far", since, epoch, top, pub)
            r = await pub.request({"type": "history", "topic": "far", "since": since})
            assert r == {"type": "history", "topic": "far", "epoch": epoch, "offset": top,
                         "messages": []}, (since, r)
        await pub.close()

    run(go())


@pytest.mark.parametrize("mode", ["resume", "plain"])
def test_subscribe_seam_under_load(start_server, redis, mode):
    """A publisher publishes as fast as it can (16 in flight) while 20
    clients subscribe, on two workers: resuming from offsets some way back
    ("resume"), or plainly ("plain").  Each ends with every offset after
    its since (resume) or after the offset of its subscribe reply (plain)
    up to the last acknowledged, in order, once, each with the payload
    acknowledged with that offset."""
    srv = history_server(start_server, redis, "--rate-limit", "0", workers=2, size=10000)
    topic = "seam"

    async def go():
        pub = Publisher(await Peer.open(srv.url, "pub"), topic)
        clients = [await Peer.open(srv.url, f"c{i}") for i in range(20)]
        task = asyncio.create_task(pub.run())
        try:
            await pub.until_top(1)
            probe = await Peer.open(srv.url, "probe")
            epoch = (await probe.request({"type": "history", "topic": topic, "limit": 1}))["epoch"]
            await probe.close()
            assert epoch
            since = []
            for i, c in enumerate(clients):
                await pub.until_top(100 + 40 * i)
                req = {"type": "subscribe", "topic": topic}
                if mode == "resume":
                    since.append(pub.top() - (5 + 13 * i % 90))
                    req["since"] = {"offset": since[-1], "epoch": epoch}
                await c.send(req)
            for i, c in enumerate(clients):
                await c.until(lambda c=c: c.replies, "the subscribe reply", TIMEOUT)
                r = c.replies[0]
                assert r["status"] == "subscribed" and r["epoch"] == epoch, (i, r)
                if mode == "resume":
                    assert r["recovered"] is True and r["offset"] >= since[i], (i, r)
                else:
                    assert "recovered" not in r, r
                    since.append(r["offset"])
            await pub.until_top(pub.top() + 300)
        finally:
            pub.stop.set()
            await asyncio.wait_for(task, LONG)
        acked = pub.check()
        last = max(acked)
        for i, c in enumerate(clients):
            await c.wait_offset(last)
            got = offsets(c.notes)
            want = list(range(since[i] + 1, last + 1))
            if got != want:
                raise AssertionError(f"client {i} ({mode}, since {since[i]}, subscribe reply "
                                     f"{c.replies[0]}): {describe_run(got, want)}")
            assert all(n["payload"] == {"seq": acked[n["offset"]]} for n in c.notes), i
            assert c.replies == [c.replies[0]], c.replies
        for c in clients + [pub.peer]:
            await c.close()

    run(go(), timeout=180)


def describe_run(got, want):
    """What differs between two runs of offsets, for a failure message."""
    dup = sorted(o for o, n in Counter(got).items() if n > 1)
    missing = sorted(set(want) - set(got))
    at = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    return (f"{len(got)} offsets, want {len(want)}; duplicates {dup[:20]} ({len(dup)}), "
            f"missing {missing[:20]} ({len(missing)}); first difference at index {at}: "
            f"got ...{got[max(0, at - 3):at + 20]}")


# ---- history requests ----

def test_history_requests_page_and_limit(start_server, redis):
    srv = history_server(start_server, redis, size=200)

    async def go():
        c = await Peer.open(srv.url, "c")
        # a topic with history that never had a message
        assert await c.request({"type": "history", "topic": "h"}) == \
            {"type": "history", "topic": "h", "epoch": "", "offset": 0, "messages": []}
        epoch = await fill(srv, "h", 250)

        def page(since, n):
            return [{"offset": k, "payload": {"i": k}} for k in range(since + 1, since + 1 + n)]

        def hist(msgs, **extra):
            return {"type": "history", "topic": "h", "epoch": epoch, "offset": 250,
                    "messages": msgs, **extra}

        # the oldest held is 51 (200 kept); default limit 100
        assert await c.request({"type": "history", "topic": "h"}) == hist(page(50, 100))
        assert await c.request({"type": "history", "topic": "h", "since": 150}) == \
            hist(page(150, 100))
        assert await c.request({"type": "history", "topic": "h", "since": 150, "limit": 100,
                                "id": "q"}) == hist(page(150, 100), id="q")
        assert await c.request({"type": "history", "topic": "h", "since": 245}) == \
            hist(page(245, 5))
        assert await c.request({"type": "history", "topic": "h", "since": 250}) == hist([])
        assert await c.request({"type": "history", "topic": "h", "since": 9999}) == hist([])
        assert await c.request({"type": "history", "topic": "h", "since": 60, "limit": 7}) == \
            hist(page(60, 7))
        assert await c.request({"type": "history", "topic": "h", "since": 10, "limit": 1}) == \
            hist(page(50, 1))
        # paging from 0 to the top, 30 at a time, gets each held message once
        got, since = [], 0
        for _ in range(20):
            r = await c.request({"type": "history", "topic": "h", "since": since, "limit": 30})
            if not r["messages"]:
                break
            assert len(r["messages"]) <= 30
            got += r["messages"]
            since = r["messages"][-1]["offset"]
        assert got == page(50, 200)
        # errors
        for bad in ({"limit": 0}, {"limit": 101}, {"limit": -1}, {"limit": "5"}, {"limit": 1.5},
                    {"since": -1}, {"since": "3"}, {"limit": None}):
            r = await c.request({"type": "history", "topic": "h", "id": 1, **bad})
            assert r.get("code") == "invalid_format" and r.get("id") == 1, (bad, r)
            assert "messages" not in r
        assert (await c.request({"type": "history"}))["code"] == "invalid_format"
        assert await c.request({"type": "ping"}) == {"type": "pong"}
        await c.close()

    run(go())


# ---- publishing from redis-cli ----

def test_redis_cli_publish_and_fcall(start_server, redis):
    srv = history_server(start_server, redis, "--redis-prefix", "app1:")

    async def go():
        c = await Peer.open(srv.url, "c")
        assert (await subscribe(c, "news"))["offset"] == 0
        assert (await publish(c, "news", 1))["offset"] == 1
        await c.wait_offset(1)
        await until(lambda: numsub(redis, "app1:news") == 1, "the Redis subscription")
        # a plain PUBLISH: live, no offset, not in the history
        redis.cli("PUBLISH", "app1:news", '{"a": [1, 2]}')
        await c.wait_notes(2)
        assert c.notes[1] == note("news", {"a": [1, 2]})
        # FCALL from outside: an offset, and a payload that is not JSON is
        # delivered as a JSON string
        out = redis.cli("FCALL", "tidings_publish", "1", "app1:news", "not json: {").split()
        assert out[0] == b"2", out
        await c.wait_notes(3)
        assert c.notes[2] == note("news", "not json: {", 2)
        out = redis.cli("FCALL", "tidings_publish", "1", "app1:news", '{"b":true}').split()
        assert out[0] == b"3", out
        await c.wait_notes(4)
        assert c.notes[3] == note("news", {"b": True}, 3)
        # our own publish goes on from there
        assert (await publish(c, "news", "four"))["offset"] == 4
        await c.wait_offset(4)
        r = await c.request({"type": "history", "topic": "news"})
        assert r["offset"] == 4 and r["messages"] == [
            {"offset": 1, "payload": 1}, {"offset": 2, "payload": "not json: {"},
            {"offset": 3, "payload": {"b": True}}, {"offset": 4, "payload": "four"}], r
        # a resume gets the FCALL messages back, the plain PUBLISH not
        d = await Peer.open(srv.url, "d")
        r = await subscribe(d, "news", since={"offset": 1, "epoch": r["epoch"]})
        assert r["recovered"] is True, r
        await d.wait_offset(4)
        assert d.notes == [note("news", "not json: {", 2), note("news", {"b": True}, 3),
                           note("news", "four", 4)]
        assert len(c.notes) == 5
        await c.close()
        await d.close()

    run(go())


# ---- JWT ----

def test_subscribe_claims_apply_to_history_and_resume(start_server, redis):
    srv = history_server(start_server, redis, "--jwt-secret", SECRET)
    token = make_jwt(valid_for(subscribe=["open.*"], publish=["*"]), SECRET)
    forbidden = {"error": "Not allowed for this topic", "code": "forbidden"}

    async def go():
        c = await Peer.open(srv.url, "c", extra_headers=bearer(token))
        assert (await publish(c, "secret", "s1"))["offset"] == 1
        assert (await publish(c, "open.x", "o1"))["offset"] == 1
        h = await c.request({"type": "history", "topic": "open.x"})
        assert h["messages"] == [{"offset": 1, "payload": "o1"}], h
        epoch = h["epoch"]
        assert await c.request({"type": "history", "topic": "secret", "id": 1}) == \
            {**forbidden, "topic": "secret", "id": 1}
        assert await c.request({"type": "history", "topic": "secret", "since": 0,
                                "limit": 5}) == {**forbidden, "topic": "secret"}
        assert await subscribe(c, "secret", since={"offset": 0, "epoch": epoch}, id=2) == \
            {**forbidden, "topic": "secret", "id": 2}
        assert await subscribe(c, "secret") == {**forbidden, "topic": "secret"}
        # nothing of "secret" comes, not even what is published next
        assert (await publish(c, "secret", "s2"))["offset"] == 2
        r = await subscribe(c, "open.x", since={"offset": 0, "epoch": epoch})
        assert r == {"status": "subscribed", "topic": "open.x", "recovered": True,
                     "epoch": epoch, "offset": 1}
        assert (await publish(c, "open.x", "o2"))["offset"] == 2
        await c.wait_offset(2)
        assert c.notes == [note("open.x", "o1", 1), note("open.x", "o2", 2)]
        await c.close()

    run(go())


# ---- workers catch up ----

def test_worker_catches_up_after_redis_cuts_its_subscription(start_server, redis):
    """CLIENT KILL TYPE pubsub while a publisher runs: the workers
    re-subscribe and fill the gap from history; subscribers that stayed
    connected get every acknowledged offset exactly once, in order."""
    srv = history_server(start_server, redis, "--rate-limit", "0", workers=2, size=10000)
    topic = "cu"

    async def go():
        subs = await subscribers_on_every_worker(srv, redis, topic, 2, first=6)
        pub = Publisher(await Peer.open(srv.url, "pub"), topic)
        task = asyncio.create_task(pub.run())
        try:
            for _ in range(3):
                await pub.until_top(pub.top() + 150)
                before = srv.log_text().count("re-subscribed")
                killed = int(await asyncio.to_thread(redis.cli, "CLIENT", "KILL", "TYPE", "pubsub"))
                assert killed >= 2, f"CLIENT KILL TYPE pubsub killed {killed} connections"
                # both workers come back and say so
                await until(lambda: srv.log_text().count("re-subscribed") >= before + 2,
                            "both workers re-subscribed", 20)
                await until(lambda: numsub(redis, topic) == 2, "two Redis subscriptions", 20)
            await pub.until_top(pub.top() + 150)
        finally:
            pub.stop.set()
            await asyncio.wait_for(task, LONG)
        acked = pub.check()
        last = max(acked)
        for s in subs:
            await s.wait_offset(last)
            count = Counter(offsets(s.notes))
            assert set(count) == set(range(1, last + 1)) and set(count.values()) == {1}, \
                f"{s.name}: {describe_run(offsets(s.notes), list(range(1, last + 1)))}"
            assert offsets(s.notes) == list(range(1, last + 1)), f"{s.name}: out of order"
            assert all(n["payload"] == {"seq": acked[n["offset"]]} for n in s.notes), s.name
        # the cuts did lose live messages (each worker gets every message
        # once when nothing is lost): the runs above were completed from
        # history
        live = await asyncio.to_thread(metric_total, srv, "tidings_bus_messages_total")
        assert live < 2 * last, f"{live} messages came live for {last} on two workers"
        for p in subs + [pub.peer]:
            await p.close()

    run(go(), timeout=180)


# ---- drain ----

async def drain_clients(srv, n):
    """n connected clients, each of which has answered a ping."""
    peers = [await Peer.open(srv.url, f"d{i}") for i in range(n)]
    for p in peers:
        assert await p.request({"type": "ping"}) == {"type": "pong"}
    return peers


def assert_drained(peers, code, reason, spread):
    codes = Counter((p.close_code, p.close_reason) for p in peers)
    assert codes == {(code, reason): len(peers)}, codes
    times = sorted(p.closed_at for p in peers)
    assert times[-1] - times[0] >= spread, \
        f"closes spread over {times[-1] - times[0]:.3f} s only: " \
        f"{[round(t - times[0], 3) for t in times]}"


def test_sighup_closes_with_1012_spread_over_the_drain_window(start_server):
    srv = wait_readyz(start_server(workers=2, args=["--drain-window", "2"]))
    old = srv.wait_workers(2)

    async def go():
        peers = await drain_clients(srv, 20)
        srv.proc.send_signal(signal.SIGHUP)
        await asyncio.gather(*(wait_closed(p, 15) for p in peers))
        assert_drained(peers, 1012, "service restart", 1.0)
        # the new workers serve
        await until(lambda: len(srv.worker_pids()) == 2 and not set(srv.worker_pids()) & set(old),
                    "two new workers", 15)
        p = await Peer.open(srv.url, "after")
        assert await p.request({"type": "ping"}) == {"type": "pong"}
        await p.close()

    run(go())
    assert srv.running()


def test_sigterm_closes_with_1001_spread_over_the_drain_window(start_server):
    srv = wait_readyz(start_server(workers=2, args=["--drain-window", "2"]))

    async def go():
        peers = await drain_clients(srv, 20)
        srv.terminate()
        await asyncio.gather(*(wait_closed(p, 15) for p in peers))
        assert_drained(peers, 1001, "server shutting down", 1.0)

    run(go())
    assert srv.stop() == 0


async def reconnect(srv, name, state, timeout=TIMEOUT):
    """Opens a connection as a client does after a close: at once, and
    again (every 20 ms, within timeout) while it is refused, as it may be
    for a moment around a reload; state["refused"] collects the errors."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await Peer.open(srv.url, name)
        except (OSError, websockets.InvalidHandshake) as e:
            state["refused"].append(repr(e))
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


def test_reload_then_resume_loses_nothing(start_server, redis):
    """What 1012 is for: clients closed by a reload reconnect at once and
    resume from their last offset while messages keep coming (published
    through a second server on the same Redis); each ends with every offset
    once."""
    args = ["--rate-limit", "0", "--drain-window", "1"]
    srv = history_server(start_server, redis, *args, workers=2, size=10000)
    other = history_server(start_server, redis, *args, workers=1, size=10000)
    topic = "rl"
    state = {"last": None, "started": 0, "closes": 0, "refused": []}

    async def follower(i, epoch):
        """Subscribes, and after each 1012 resumes on a new connection
        from the last offset it got; returns every notification seen."""
        notes, since = [], None
        for _ in range(5):
            p = await reconnect(srv, f"f{i}", state)
            extra = {} if since is None else {"since": {"offset": since, "epoch": epoch}}
            r = await subscribe(p, topic, **extra)
            for _ in range(250):  # 5 s
                if r.get("code") != "bus_unavailable":
                    break
                # a new worker whose Redis is not up yet: "retry later"
                state["refused"].append(repr(r))
                await asyncio.sleep(0.02)
                r = await subscribe(p, topic, **extra)
            assert r["status"] == "subscribed" and r["epoch"] == epoch, r
            if since is None:
                # where this follower starts: after its first message (the
                # seam of a plain subscribe is test_subscribe_seam_under_load's)
                await p.until(lambda: p.notes or p.closed_at is not None, "a first message",
                              LONG)
                first = p.notes[0]["offset"] if p.notes else r["offset"]
                since = first
                del p.notes[:1]
                state["started"] += 1
            else:
                assert r["recovered"] is True, (i, since, r)
            await p.until(lambda: p.closed_at is not None or state["last"] is not None and
                          p.notes and p.notes[-1]["offset"] >= state["last"],
                          "a close or the last message", LONG)
            notes += p.notes
            if p.notes:
                since = p.notes[-1]["offset"]
            if p.closed_at is None:
                await p.close()
                return first, notes
            assert (p.close_code, p.close_reason) == (1012, "service restart"), p.close_code
            state["closes"] += 1
        raise AssertionError(f"f{i}: closed five times")

    async def go():
        pub = Publisher(await Peer.open(other.url, "pub"), topic)
        task = asyncio.create_task(pub.run())
        try:
            await pub.until_top(1)
            probe = await Peer.open(srv.url, "probe")
            epoch = (await probe.request({"type": "history", "topic": topic, "limit": 1}))["epoch"]
            assert epoch
            followers = [asyncio.create_task(follower(i, epoch)) for i in range(10)]
            await pub.peer.until(lambda: state["started"] == 10, "every follower subscribed")
            await pub.until_top(pub.top() + 200)
            srv.proc.send_signal(signal.SIGHUP)
            assert await wait_closed(probe, 15) == 1012
            await pub.peer.until(lambda: state["closes"] >= 10, "every follower closed", 20)
            await pub.until_top(pub.top() + 200)
        finally:
            pub.stop.set()
            await asyncio.wait_for(task, LONG)
        acked = pub.check()
        state["last"] = max(acked)
        for i, f in enumerate(followers):
            first, notes = await asyncio.wait_for(f, LONG)
            got = offsets(notes)
            want = list(range(first + 1, state["last"] + 1))
            assert got == want, f"f{i}: {describe_run(got, want)}"
            assert all(n["payload"] == {"seq": acked[n["offset"]]} for n in notes)
        await pub.peer.close()
        if state["refused"]:
            print(f"reconnects refused or answered bus_unavailable around the reload: "
                  f"{state['refused']}")

    run(go(), timeout=180)
