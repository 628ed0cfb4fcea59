"""Topics sharded over several independent Redis servers (--redis
URL1,URL2,...), against three real redis-servers.

The mapping is the one README documents, computed here from its formula
(Jump Consistent Hash over FNV-1a 64 of the topic name) and compared with
`tidings shard` and with where the workers really subscribe.  A shard that
dies takes only its own topics down (bus_unavailable for them, /readyz
still 200 and naming it, tidings_redis_shard_up 0); when it comes back
with its data (appendonly, appendfsync always) its topics work again and a
client resumes from the history it kept.
"""
import asyncio
import json
import subprocess

import pytest

from conftest import Redis
from helpers import (recv_json, request, resume, subscribe_many, wait_for, wait_for_async,
                     ws_connect)

MASK = (1 << 64) - 1


def fnv1a64(name):
    h = 14695981039346656037
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & MASK
    return h


def jump(key, n):
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(topic, n):
    return jump(fnv1a64(topic), n)


@pytest.fixture
def redis3(tmp_path):
    """Three redis-servers that keep their data across a restart."""
    rs = [Redis(tmp_path / f"r{i}", "--appendonly", "yes", "--appendfsync", "always")
          for i in range(3)]
    for r in rs:
        r.start()
    yield rs
    for r in rs:
        r.kill()


def urls(rs):
    return ",".join(r.url for r in rs)


def tidings_bin():
    import os
    from conftest import REPO
    return os.environ.get("TIDINGS_BIN", str(REPO / "bin" / "tidings"))


def test_shard_command_follows_the_documented_formula():
    servers = [f"redis://10.0.0.{i}:6379" for i in range(1, 5)]
    topics = [f"topic-{i}" for i in range(300)] + ["news", "chat.room1", "a", "user/42@x"]
    for n in (1, 3, 4):
        given = ",".join(servers[:n])
        out = subprocess.run([tidings_bin(), "shard", *topics[:1], "--redis", given],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        for t in topics[::25]:
            got = subprocess.run([tidings_bin(), "shard", t, "--redis", given],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
            assert got == servers[shard_of(t, n)], (t, n, got)
    # adding a fourth server moves only about a quarter of the topics, all to it
    many = [f"t{i}" for i in range(4000)]
    moved = [t for t in many if shard_of(t, 3) != shard_of(t, 4)]
    assert all(shard_of(t, 4) == 3 for t in moved)
    assert 0.2 < len(moved) / len(many) < 0.3, len(moved)
    # and the three shards share the topics evenly
    counts = [sum(1 for t in many if shard_of(t, 3) == k) for k in range(3)]
    assert min(counts) > 4000 / 3 * 0.9, counts


def test_shard_command_refuses_bad_input():
    for args, why in ((["shard"], "usage"), (["shard", "..bad", "--redis", "redis://a"], "valid"),
                      (["shard", "t"], "--redis"),
                      (["shard", "t", "--redis", "redis://a,redis://a:6379"], "twice")):
        out = subprocess.run([tidings_bin(), *args], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and why in out.stderr, (args, out.stderr)


def test_a_thousand_topics_across_three_shards_and_two_hosts(start_server, redis3):
    args = ["--redis", urls(redis3), "--max-subscriptions", "1000"]
    a = start_server(workers=2, args=args)
    b = start_server(workers=1, args=args)
    topics = [f"s.{i}" for i in range(1000)]

    async def run():
        subs = [await ws_connect(a.url, max_size=None) for _ in range(2)]
        halves = [topics[0::2], topics[1::2]]
        for ws, half in zip(subs, halves):
            await subscribe_many(ws, half)
        # every topic's channel is on its own shard, and on no other
        for k, r in enumerate(redis3):
            chans = {c.decode() for c in r.cli("PUBSUB", "CHANNELS", "s.*").split()}
            assert chans == {t for t in topics if shard_of(t, 3) == k}, k
        pub = await ws_connect(b.url)
        for i, t in enumerate(topics):
            await pub.send(json.dumps({"type": "publish", "topic": t, "payload": i}))
        acks = 0
        while acks < len(topics):
            m = await recv_json(pub)
            assert m.get("status") == "published", m
            acks += 1
        for ws, half in zip(subs, halves):
            got = {}
            while len(got) < len(half):
                m = await recv_json(ws)
                assert m["type"] == "notification", m
                assert m["topic"] not in got, m  # each once
                got[m["topic"]] = m["payload"]
            assert got == {t: topics.index(t) for t in half}
        for ws in subs + [pub]:
            await ws.close()

    asyncio.run(run())


def shard_up(srv, k):
    return [v for _, v in srv.metrics().select("tidings_redis_shard_up", shard=k)]


def test_a_shard_down_takes_only_its_topics(start_server, redis3):
    srv = start_server(workers=1, args=["--redis", urls(redis3), "--history-size", "100"])
    down = next(f"d.{i}" for i in range(100) if shard_of(f"d.{i}", 3) == 0)
    up = next(f"u.{i}" for i in range(100) if shard_of(f"u.{i}", 3) == 1)

    async def run():
        sub = await ws_connect(srv.url)
        pub = await ws_connect(srv.url)
        seen = await subscribe_many(sub, [down, up])
        assert seen[down]["offset"] == 0
        for n in (1, 2, 3):
            r = await request(pub, {"type": "publish", "topic": down, "payload": n})
            assert r == {"status": "published", "topic": down, "offset": n}
        for n in (1, 2, 3):
            m = await recv_json(sub)
            assert (m["topic"], m["payload"], m["offset"]) == (down, n, n), m
            if n == 1:
                epoch = m["epoch"]  # the first message of an epoch names it

        redis3[0].kill()
        wait_for("shard 0 down in the metrics", lambda: shard_up(srv, 0) == [0.0])
        assert shard_up(srv, 1) == [1.0] and shard_up(srv, 2) == [1.0]
        r = srv.admin_get("/readyz")
        assert r.status == 200 and b"degraded: Redis shard 0" in r.body, r.body
        assert (await request(pub, {"type": "publish", "topic": down, "payload": 4}))["code"] == \
            "bus_unavailable"
        r = await request(pub, {"type": "publish", "topic": up, "payload": "still"})
        assert r["status"] == "published", r
        m = await recv_json(sub)
        assert (m["topic"], m["payload"]) == (up, "still"), m

        redis3[0].start()  # with its append-only file: the history is there
        wait_for("shard 0 back in the metrics", lambda: shard_up(srv, 0) == [1.0])
        r = srv.admin_get("/readyz")
        assert r.status == 200 and b"degraded" not in r.body, r.body
        r = await request(pub, {"type": "publish", "topic": down, "payload": 5})
        assert r == {"status": "published", "topic": down, "offset": 4}, r
        m = await recv_json(sub)  # live again, with the next offset of the same epoch
        assert (m["topic"], m["payload"], m["offset"]) == (down, 5, 4), m
        # a client that had seen offset 1 resumes from the history the shard kept
        late = await ws_connect(srv.url)
        await resume(late, down, 1, epoch)
        got = [(await recv_json(late))["payload"] for _ in range(3)]
        assert got == [2, 3, 5]
        for ws in (sub, pub, late):
            await ws.close()

    asyncio.run(run())


def test_control_and_topic_list_span_the_shards(start_server, redis3):
    """A disconnect order goes out on one shard and reaches every worker;
    each worker hears the control channel on every shard."""
    srv = start_server(workers=2, args=["--redis", urls(redis3)])

    async def run():
        for r in redis3:
            await wait_for_async("both workers on the control channel",
                                 lambda r=r: r.numsub(".tidings.all") == 2)
        redis3[0].kill()
        wait_for("shard 0 down", lambda: shard_up(srv, 0) == [0.0, 0.0])
        # the workers still hear orders given on the shards that are up
        async with ws_connect(srv.url) as ws:
            redis3[1].cli("PUBLISH", ".tidings.all", "not json")
            redis3[2].cli("PUBLISH", ".tidings.all", "not json either")
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
        await wait_for_async("both orders heard", lambda: srv.log_text().count(": dropped") >= 4)

    asyncio.run(run())
