"""tidings on a real Redis Cluster (--redis-cluster): three masters with a
replica each, started here (rcluster.py).

Topics are carried by sharded Pub/Sub on the master of their slot
(SPUBLISH/SSUBSCRIBE); the history keys share the slot.  A master killed:
its replica is promoted, tidings re-reads the slot map, re-subscribes, and
a resuming client loses nothing the promoted replica holds.  A resharding
while publishing: every acknowledged message arrives once.
"""
import asyncio
import json
import subprocess
import time

import pytest

from helpers import (expect_close, recv_json, request, resume, subscribe_many, wait_for,
                     ws_connect)
from rcluster import RedisCluster

REROUTE_LIMIT_S = 10


@pytest.fixture
def cluster(tmp_path):
    c = RedisCluster(tmp_path).start()
    yield c
    c.stop()


async def publish_all(ws, items):
    """Publishes (topic, payload) pairs pipelined; returns the replies in order."""
    for t, p in items:
        await ws.send(json.dumps({"type": "publish", "topic": t, "payload": p}))
    return [await recv_json(ws) for _ in items]


def test_a_thousand_topics_over_the_masters_and_two_hosts(start_server, cluster):
    args = ["--redis-cluster", cluster.seeds, "--max-subscriptions", "1000"]
    a = start_server(workers=2, args=args)
    b = start_server(workers=1, args=args)
    topics = [f"c.{i}" for i in range(1000)]

    async def run():
        sub = await ws_connect(a.url, max_size=None)
        await subscribe_many(sub, topics)
        # sharded subscriptions, each on the master of its slot (and only there)
        owners = cluster.owners()
        assert len({owners[cluster.keyslot(t)] for t in topics}) == 3

        def placed():
            for r in cluster.live():
                chans = set(r.cli("PUBSUB", "SHARDCHANNELS", "c.*").decode().split())
                if chans != {t for t in topics if owners[cluster.keyslot(t)] is r}:
                    return False
            return True
        wait_for("every topic subscribed on its master", placed)
        pub = await ws_connect(b.url)
        replies = await publish_all(pub, [(t, i) for i, t in enumerate(topics)])
        assert all(r.get("status") == "published" for r in replies), replies[:3]
        got = {}
        while len(got) < len(topics):
            m = await recv_json(sub)
            assert m["type"] == "notification" and m["topic"] not in got, m
            got[m["topic"]] = m["payload"]
        assert got == {t: i for i, t in enumerate(topics)}
        await sub.close()
        await pub.close()

    asyncio.run(run())


def test_failover_reroutes_and_resume_loses_nothing(start_server, cluster):
    srv = start_server(workers=1, args=["--redis-cluster", cluster.seeds, "--history-size", "100"])
    topic = "fail.over"
    slot = cluster.keyslot(topic)

    async def run():
        sub = await ws_connect(srv.url)
        pub = await ws_connect(srv.url)
        r0 = (await subscribe_many(sub, [topic]))[topic]
        assert r0["offset"] == 0
        replies = await publish_all(pub, [(topic, n) for n in range(1, 11)])
        assert [r["offset"] for r in replies] == list(range(1, 11)), replies
        epoch = None
        for n in range(1, 11):
            m = await recv_json(sub)
            assert (m["payload"], m["offset"]) == (n, n), m
            epoch = m.get("epoch", epoch)
        # the client goes away having seen 5; then the master dies
        dead = cluster.owner(slot)
        dead.kill()
        t0 = time.monotonic()
        cluster.wait_failover(dead, slot)
        # tidings publishes again on the promoted replica within the limit
        while True:
            r = await request(pub, {"type": "publish", "topic": topic, "payload": "after"})
            if r.get("status") == "published":
                break
            assert r["code"] == "bus_unavailable", r
            assert time.monotonic() - t0 < REROUTE_LIMIT_S, "not re-routed in time"
            await asyncio.sleep(0.1)
        took = time.monotonic() - t0
        print(f"re-routed {took:.2f} s after the master was killed")
        # the live subscriber was re-subscribed on the new master
        m = await recv_json(sub, timeout=REROUTE_LIMIT_S)
        assert m["payload"] == "after" and m["offset"] == 11, m
        # a client that had seen offset 5 resumes from the promoted replica
        late = await ws_connect(srv.url)
        await resume(late, topic, 5, epoch)
        got = [(await recv_json(late))["offset"] for _ in range(6)]
        assert got == [6, 7, 8, 9, 10, 11]
        for ws in (sub, pub, late):
            await ws.close()

    asyncio.run(run())


def test_resharding_while_publishing_delivers_every_message_once(start_server, cluster):
    srv = start_server(workers=1, args=["--redis-cluster", cluster.seeds, "--history-size", "1000"])
    topic = "re.shard"
    slot = cluster.keyslot(topic)

    async def run():
        sub = await ws_connect(srv.url)
        pub = await ws_connect(srv.url)
        await subscribe_many(sub, [topic])
        src = cluster.owner(slot)
        dst = next(r for r in cluster.live() if r is not src and
                   r.cli("ROLE").split()[0] == b"master")
        ids = {r.port: r.cli("CLUSTER", "MYID").decode().strip() for r in (src, dst)}
        acked = []
        n = 0
        proc = subprocess.Popen(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{src.port}",
             "--cluster-from", ids[src.port], "--cluster-to", ids[dst.port],
             "--cluster-slots", "5461", "--cluster-yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while proc.poll() is None or n < 50:
                n += 1
                r = await request(pub, {"type": "publish", "topic": topic, "payload": n})
                if r.get("status") == "published":
                    acked.append(n)
                else:
                    assert r["code"] == "bus_unavailable", r
        finally:
            assert proc.wait(120) == 0, proc.stderr.read()
        wait_for("the slot moved", lambda: cluster.owner(slot) is dst)
        r = await request(pub, {"type": "publish", "topic": topic, "payload": "last"})
        assert r["status"] == "published", r
        got = []
        while not got or got[-1] != "last":
            got.append((await recv_json(sub, timeout=15))["payload"])
        assert got[:-1] == acked, (len(got), len(acked))
        print(f"{len(acked)} of {n} publishes acknowledged during the resharding")
        await sub.close()
        await pub.close()

    asyncio.run(run())


def test_orders_and_topic_list_reach_every_host(start_server, cluster):
    """Control messages ride classic Pub/Sub, which a cluster broadcasts:
    an order given on any node closes the subject's connections on every
    host; /api/topics lists the sharded channels of every master."""
    import http.client
    from test_auth import SECRET, make_jwt
    key = "cluster-test-api-key-0123456789"
    args = ["--redis-cluster", cluster.seeds, "--jwt-secret", SECRET, "--api-key", key]
    hosts = [start_server(workers=2, args=args), start_server(workers=1, args=args)]
    tok = make_jwt({"sub": "carol", "subscribe": ["*"], "publish": ["*"]}, SECRET)

    async def run():
        conns = [await ws_connect(f"{h.url}?token={tok}") for h in hosts for _ in range(4)]
        for i, ws in enumerate(conns):
            r = await request(ws, {"type": "subscribe", "topic": f"t.{i}"})
            assert r["status"] == "subscribed", r

        def listed():
            c = http.client.HTTPConnection("127.0.0.1", hosts[0].port, timeout=10)
            c.request("GET", "/api/topics", headers={"Authorization": f"apikey {key}"})
            body = json.loads(c.getresponse().read())
            c.close()
            return {t["topic"] for t in body["topics"]} == {f"t.{i}" for i in range(8)}
        wait_for("every topic listed", listed)
        cluster.live()[-1].cli("PUBLISH", ".tidings.all",
                               json.dumps({"op": "disconnect", "sub": "carol"}))
        for ws in conns:
            assert await expect_close(ws) == 4403

    asyncio.run(run())
