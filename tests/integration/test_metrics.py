"""The master's admin listener as a monitoring system sees it: /metrics
(Prometheus text format, parsed here by hand and then by a real
Prometheus), /healthz and /readyz.

  - a scripted workload on two workers (N clients subscribe, one publishes
    K messages, a refused handshake, a 404) gives exact counts, per worker
    and summed, down to the bytes on the wire, which every client here
    counts itself (raw sockets, no compression);
  - a worker killed with SIGKILL: the restart is counted, totals survive,
    /readyz says 503 until the replacement is up and on Redis;
  - Redis going away: /readyz 503, tidings_redis_connected 0, a publish
    counted as an error, reconnections counted;
  - Debian's prometheus scrapes the admin port every second and its HTTP
    API returns the workload's numbers.

Needs redis-server/redis-cli and, for the last test, /usr/bin/prometheus
(deploy/install-deps.sh installs them).
"""
import datetime
import json
import math
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import wsraw
from conftest import free_port
from helpers import prom_float, wait_for
from wsraw import RawWS

PROMETHEUS = "/usr/bin/prometheus"

# every family the admin listener must expose, with its type
FAMILIES = {
    "tidings_connections": "gauge",
    "tidings_connections_total": "counter",
    "tidings_handshakes_rejected_total": "counter",
    "tidings_messages_received_total": "counter",
    "tidings_publishes_total": "counter",
    "tidings_publish_errors_total": "counter",
    "tidings_bus_messages_total": "counter",
    "tidings_deliveries_total": "counter",
    "tidings_sent_bytes_total": "counter",
    "tidings_received_bytes_total": "counter",
    "tidings_notification_bytes_total": "counter",
    "tidings_slow_dropped_total": "counter",
    "tidings_slow_disconnects_total": "counter",
    "tidings_rate_limited_total": "counter",
    "tidings_redis_reconnects_total": "counter",
    "tidings_redis_connected": "gauge",
    "tidings_topics": "gauge",
    "tidings_worker_up": "gauge",
    "tidings_worker_restarts_total": "counter",
    "tidings_delivery_latency_seconds": "histogram",
}
PER_WORKER = [n for n, t in FAMILIES.items()
              if t != "histogram" and n not in ("tidings_handshakes_rejected_total",
                                                 "tidings_worker_restarts_total")]
REASONS = ["bad_request", "too_large", "timeout", "proxy", "origin", "auth", "per_ip", "full",
           "shutdown"]


# ---- reading the exposition ----

def check_histogram(m, name="tidings_delivery_latency_seconds"):
    """Buckets cumulative, ending at +Inf == _count; returns _count."""
    buckets = sorted(((prom_float(d["le"]), v) for d, v in m.select(name + "_bucket")),
                     key=lambda b: b[0])
    assert len(buckets) >= 2 and buckets[-1][0] == math.inf, buckets
    assert all(d.keys() == {"le"} for d, _ in m.select(name + "_bucket"))
    les = [b[0] for b in buckets]
    assert len(set(les)) == len(les), les
    counts = [b[1] for b in buckets]
    assert counts == sorted(counts), f"buckets are not cumulative: {buckets}"
    count = m.value(name + "_count")
    assert counts[-1] == count, f"+Inf bucket {counts[-1]} != _count {count}"
    s = m.value(name + "_sum")
    assert s >= 0 and (count > 0 or s == 0), (s, count)
    return count


# ---- clients that count every byte they put on or take off the wire ----

class Wire:
    def __init__(self):
        self.sent = 0
        self.received = 0


class CountingSocket:
    def __init__(self, sock, wire):
        self._s = sock
        self._wire = wire

    def sendall(self, data):
        self._s.sendall(data)
        self._wire.sent += len(data)

    def recv(self, n):
        data = self._s.recv(n)
        self._wire.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._s, name)


def open_ws(port, wire, timeout=5.0):
    """A RawWS whose socket counts its bytes (the handshake included); it
    offers no extension, so nothing is compressed."""
    ws = RawWS.open(port, timeout=timeout, sock=CountingSocket(wsraw.connect(port, timeout), wire))
    assert ws.response.header("sec-websocket-extensions") is None, ws.response
    return ws


def exchange(port, request, wire, timeout=5.0):
    """Sends a raw request on a counting socket, reads until EOF."""
    r = wsraw.http_exchange(port, request, timeout,
                            sock=CountingSocket(wsraw.connect(port, timeout), wire))
    assert r.eof, f"the server did not close after {r.raw[:200]!r}"
    return r


def wait_wire_counted(srv, wire, b_in=0, b_out=0, timeout=2):
    """Until the server's byte counters (less b_in and b_out, what they
    held before) are every byte the clients on `wire` wrote and read;
    returns that scrape."""
    return srv.wait_metrics("the byte counters to settle", lambda m: (
        m.total("tidings_received_bytes_total") - b_in == wire.sent and
        m.total("tidings_sent_bytes_total") - b_out == wire.received), timeout)


# ---- a: exact counts ----

def test_exposition_format_and_families(start_server):
    srv = start_server(workers=2)
    m = srv.metrics()
    for fam, typ in FAMILIES.items():
        assert m.types.get(fam) == typ, f"{fam}: # TYPE {m.types.get(fam)}, want {typ}"
        assert m.helps.get(fam), f"{fam} has no # HELP"
    for fam in PER_WORKER:
        assert sorted(m.per_worker(fam)) == [1, 2], f"{fam}: {m.select(fam)}"
    assert sorted(d["reason"] for d, _ in m.select("tidings_handshakes_rejected_total")) == \
        sorted(REASONS)
    assert m.value("tidings_worker_restarts_total") == 0
    # a fresh server: every counter at zero (the byte counters are left
    # out: a probe of the public port would count there)
    for fam, typ in FAMILIES.items():
        if typ == "counter" and fam not in ("tidings_sent_bytes_total",
                                            "tidings_received_bytes_total"):
            assert m.total(fam) == 0, f"{fam}: {m.select(fam)}"
    assert m.per_worker("tidings_worker_up") == {1: 1, 2: 1}
    assert m.total("tidings_connections") == 0
    assert check_histogram(m) == 0


def test_exact_counts_after_a_scripted_workload(start_server):
    N, K, TOPIC = 6, 10, "metrics-exact"
    srv = start_server(workers=2)
    redis = srv.embedded_redis()
    before = srv.metrics()
    b_in = before.total("tidings_received_bytes_total")
    b_out = before.total("tidings_sent_bytes_total")
    wire = Wire()
    notif_bytes = 0

    clients = []
    try:
        for _ in range(N):
            ws = open_ws(srv.port, wire)
            clients.append(ws)
            ws.subscribe(TOPIC)
        m = srv.metrics()
        conns = m.per_worker("tidings_connections")
        assert sum(conns.values()) == N, m.select("tidings_connections")
        assert m.per_worker("tidings_connections_total") == conns
        with_subs = sum(1 for v in conns.values() if v > 0)
        # the subscription reply does not wait for Redis: wait until every
        # worker with subscribers is a subscriber of the channel
        wait_for(f"{with_subs} Redis subscribers of {TOPIC}",
                 lambda: redis.numsub(TOPIC) == with_subs)
        wait_for("tidings_topics per worker (updated every second)",
                 lambda: srv.metrics().per_worker("tidings_topics") ==
                 {w: int(v > 0) for w, v in conns.items()}, timeout=3)

        pub = clients[0]
        for i in range(K):
            pub.send_json({"type": "publish", "topic": TOPIC, "payload": {"i": i, "n": "x" * i}})
        replies = 0
        for idx, ws in enumerate(clients):
            got = []
            # the publisher gets its K replies, interleaved with the K notifications
            while len(got) < K or (ws is pub and replies < K):
                msg, raw = ws.recv_json()
                if msg == {"status": "published", "topic": TOPIC}:
                    assert ws is pub, msg
                    replies += 1
                    continue
                assert msg.get("type") == "notification" and msg["topic"] == TOPIC, msg
                got.append(msg["payload"]["i"])
                notif_bytes += len(raw)
            assert got == list(range(K)), f"client {idx}: {got}"
        assert replies == K

        # a refused handshake (version 8: 426) and a 404, on counting sockets
        r = exchange(srv.port, wsraw.upgrade_request(version="8"), wire)
        assert r.status == 426 and r.header("sec-websocket-version") == "13", r
        r = exchange(srv.port, b"GET /no-such-page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", wire)
        assert r.status == 404, r
        assert srv.admin_get("/no-such-page").status == 404

        m = srv.wait_metrics("the latency histogram to catch up with the deliveries",
                             lambda m: m.total("tidings_delivery_latency_seconds_count") == N * K)
        assert m.per_worker("tidings_connections") == conns, "connections moved"
        assert m.total("tidings_connections") == N
        assert m.total("tidings_connections_total") == N
        assert m.total("tidings_messages_received_total") == N + K
        assert m.total("tidings_publishes_total") == K
        assert m.total("tidings_publish_errors_total") == 0
        assert m.total("tidings_deliveries_total") == N * K
        assert m.total("tidings_bus_messages_total") == K * with_subs
        assert m.total("tidings_notification_bytes_total") == notif_bytes
        for w, c in conns.items():
            assert m.value("tidings_deliveries_total", worker=w) == K * c, (w, conns)
            assert m.value("tidings_bus_messages_total", worker=w) == (K if c else 0), (w, conns)
            assert m.value("tidings_connections_total", worker=w) == c
        pubs = m.per_worker("tidings_publishes_total")
        assert sorted(pubs.values()) == [0, K], pubs
        pub_worker = next(w for w, v in pubs.items() if v == K)
        for w, c in conns.items():
            assert m.value("tidings_messages_received_total", worker=w) == \
                c + (K if w == pub_worker else 0), (w, conns, pub_worker)
        for reason in REASONS:
            want = 1 if reason == "bad_request" else 0
            assert m.value("tidings_handshakes_rejected_total", reason=reason) == want, reason
        for fam in ("tidings_slow_dropped_total", "tidings_slow_disconnects_total",
                    "tidings_rate_limited_total", "tidings_redis_reconnects_total"):
            assert m.total(fam) == 0, fam
        assert check_histogram(m) == m.total("tidings_deliveries_total")
    finally:
        for ws in clients:
            try:
                ws.close_handshake()
            except (AssertionError, OSError, EOFError):
                ws.close()

    m = srv.wait_metrics("tidings_connections to fall to 0",
                         lambda m: m.total("tidings_connections") == 0)
    assert m.per_worker("tidings_connections") == {1: 0, 2: 0}
    assert m.total("tidings_connections_total") == N
    # every byte the clients wrote and read, as the server counted it
    m = wait_wire_counted(srv, wire, b_in, b_out)
    assert m.total("tidings_messages_received_total") == N + K, "close frames are not messages"


def test_slow_subscriber_drops_are_counted(start_server):
    """A subscriber that stops reading (drop policy): skipped notifications
    are counted in tidings_slow_dropped_total and reported in the next one's
    "missed"; that notification is a delivery like any other, so it counts
    in the latency histogram and in tidings_notification_bytes_total."""
    COUNT, SIZE, TOPIC = 200, 30000, "slow-metrics"
    srv = start_server(workers=1, args=["--max-queued-bytes", "8192"])
    redis = srv.embedded_redis()
    slow = RawWS.open(srv.port, sock=wsraw.connect(srv.port, rcvbuf=4096))
    wire = Wire()
    pub = open_ws(srv.port, wire)
    try:
        slow.subscribe(TOPIC)
        wait_for("the Redis subscription", lambda: redis.numsub(TOPIC) == 1)

        def publish(i):
            pub.send_json({"type": "publish", "topic": TOPIC, "payload": f"{i:05d}" + "x" * SIZE})
        for i in range(COUNT):
            publish(i)
        for _ in range(COUNT):
            assert pub.recv_json()[0] == {"status": "published", "topic": TOPIC}
        # every message came back from Redis (and was queued or skipped)
        # before the slow one reads again
        m = srv.wait_metrics("the bus messages",
                             lambda m: m.total("tidings_bus_messages_total") == COUNT)
        assert m.total("tidings_slow_dropped_total") > 0
        # How many fit in the kernel's buffers depends on how Redis's
        # messages were batched (a second one in the same turn is skipped):
        # more, one at a time, until one is skipped.  Then the buffers are
        # full, and, the slow one not reading, whatever follows is skipped.
        sent = COUNT
        while True:
            dropped = m.total("tidings_slow_dropped_total")
            publish(sent)
            assert pub.recv_json()[0] == {"status": "published", "topic": TOPIC}
            sent += 1
            # queued to the slow one (the only subscriber) or skipped
            m = srv.wait_metrics(f"publish {sent} at the slow subscriber", lambda m: m.total(
                "tidings_deliveries_total") + m.total("tidings_slow_dropped_total") == sent)
            if m.total("tidings_slow_dropped_total") > dropped:
                break
            assert sent < COUNT + 300, "the slow subscriber's buffers never filled"
        # read what was queued (a notification queued after a drop says how
        # many it follows), then one more notification carries the rest
        queued = m.total("tidings_deliveries_total")
        got = raw_bytes = missed = 0
        seqs = []
        while got < queued:
            fin, op, payload = slow.recv_data(timeout=5)
            msg = json.loads(payload)
            assert msg["type"] == "notification", str(msg)[:200]
            seq = int(msg["payload"][:5])
            assert msg.get("missed", 0) == seq - (seqs[-1] + 1 if seqs else 0), str(msg)[:200]
            seqs.append(seq)
            missed += msg.get("missed", 0)
            got += 1
            raw_bytes += len(payload)
        assert seqs and seqs[-1] < sent - 1, "nothing was dropped at the end"
        pub.send_json({"type": "publish", "topic": TOPIC, "payload": "last"})
        assert pub.recv_json()[0] == {"status": "published", "topic": TOPIC}
        fin, op, payload = slow.recv_data(timeout=5)
        last = json.loads(payload)
        assert last["payload"] == "last" and last["missed"] == sent - 1 - seqs[-1], last
        missed += last["missed"]
        raw_bytes += len(payload)
        assert got + missed == sent, (got, missed)

        m = srv.wait_metrics("the counters",
                             lambda m: m.total("tidings_deliveries_total") == got + 1)
        assert m.total("tidings_slow_dropped_total") == missed
        assert m.total("tidings_slow_disconnects_total") == 0
        assert m.total("tidings_bus_messages_total") == sent + 1
        # a pong behind the last notification on the same connection: the
        # worker has finished writing that notification (and timed it)
        slow.send_json({"type": "ping"})
        assert slow.recv_json()[0] == {"type": "pong"}
        m = srv.metrics()
        problems = []
        count = check_histogram(m)
        if count != m.total("tidings_deliveries_total"):
            problems.append(f"latency histogram _count {count} != tidings_deliveries_total "
                            f"{m.total('tidings_deliveries_total')} (the notification that "
                            "carried \"missed\" was not timed)")
        nb = m.total("tidings_notification_bytes_total")
        if nb != raw_bytes:
            problems.append(f"tidings_notification_bytes_total {nb:.0f} != {raw_bytes} bytes of "
                            f"notifications received ({raw_bytes - nb:+.0f})")
        assert not problems, "; ".join(problems)
    finally:
        slow.close()
        pub.close()


# ---- b: a killed worker, /readyz ----

def test_killed_worker_restart_is_counted_and_totals_survive(start_server):
    srv = start_server(workers=2)
    srv.expect_worker_crash = True
    wait_for("/readyz 200", lambda: srv.admin_get("/readyz").status == 200, timeout=3)
    r = srv.admin_get("/readyz")
    assert r.body == b"ready\n", r
    wire = Wire()
    clients = [open_ws(srv.port, wire) for _ in range(8)]
    for ws in clients:
        ws.send_json({"type": "ping"})
        assert ws.recv_json()[0] == {"type": "pong"}
    before = srv.metrics()
    conns = before.per_worker("tidings_connections")
    assert before.per_worker("tidings_connections_total") == conns
    assert before.total("tidings_messages_received_total") == 8
    slot = max(conns, key=lambda w: conns[w])  # the worker with more clients dies
    slots = srv.worker_slots()
    victim = slots[slot]

    os.kill(victim, signal.SIGKILL)
    # The first restart is immediate and the new worker reaches Redis within
    # milliseconds, so /readyz may never be caught at 503: when it is, the
    # reason must name the slot.  Watched until the replacement is ready.
    not_ready = []

    def replaced():
        pids = srv.worker_pids()  # first: a 200 after a new pid is the new worker's
        r = srv.admin_get("/readyz")
        if r.status == 503:
            not_ready.append(r)
        return r.status == 200 and victim not in pids and len(pids) == 2
    wait_for("the replacement worker to be ready", replaced, timeout=10, interval=0.005)
    for r in not_ready:
        assert r.body in (f"worker {slot} is not running\n".encode(),
                          f"worker {slot} is not listening yet\n".encode(),
                          f"worker {slot} is not connected to Redis\n".encode()), r
    assert srv.admin_get("/healthz").status == 200, "the other worker still runs"
    wait_for("/readyz 200 again", lambda: srv.admin_get("/readyz").status == 200, timeout=5)
    new = srv.worker_slots()
    assert set(new) == {1, 2} and new[slot] != victim and new[3 - slot] == slots[3 - slot], new

    # the dead worker's clients are gone, the others are not
    dead = alive = 0
    for ws in clients:
        try:
            ws.send_json({"type": "ping"})
            assert ws.recv_json(timeout=3)[0] == {"type": "pong"}
            alive += 1
        except (EOFError, ConnectionResetError, BrokenPipeError):
            dead += 1
    assert dead == conns[slot] and alive == 8 - conns[slot], (dead, alive, conns)

    m = srv.metrics()
    assert m.value("tidings_worker_restarts_total") == 1
    assert m.per_worker("tidings_worker_up") == {1: 1, 2: 1}
    assert m.per_worker("tidings_connections") == {slot: 0, 3 - slot: conns[3 - slot]}
    # totals survive their worker
    assert m.per_worker("tidings_connections_total") == conns
    assert m.value("tidings_messages_received_total", worker=slot) == \
        before.value("tidings_messages_received_total", worker=slot)
    assert m.total("tidings_messages_received_total") == 8 + alive

    # the replacement adds to the same row: open clients until one lands on it
    extra = []
    for _ in range(40):
        extra.append(open_ws(srv.port, wire))
        if srv.metrics().value("tidings_connections", worker=slot) > 0:
            break
    m = srv.metrics()
    landed = m.value("tidings_connections", worker=slot)
    assert landed >= 1, f"40 new connections, none on worker {slot}"
    assert m.value("tidings_connections_total", worker=slot) == conns[slot] + landed
    assert m.total("tidings_connections_total") == 8 + len(extra)
    assert m.value("tidings_worker_restarts_total") == 1
    for ws in clients + extra:
        ws.close()
    log = srv.log_text()
    assert f"worker {slot} (pid {victim}) was killed by signal 9" in log, log


def test_reloads_keep_totals_and_live_gauges(start_server):
    """SIGHUP twice in quick succession: the third generation of a slot
    lands on the same shared-memory row as the first, which is still
    draining.  A reload is not a restart, totals carry on, and the live
    gauges (and per-address counts) of the new worker must not be wiped
    when the old one finally exits."""
    srv = start_server(workers=1, args=["--shutdown-grace", "1",
                                        "--max-connections-per-ip", "10"])
    wire = Wire()
    old = [open_ws(srv.port, wire) for _ in range(2)]
    for ws in old:
        ws.send_json({"type": "ping"})
        assert ws.recv_json()[0] == {"type": "pong"}
    [gen1] = srv.worker_pids()
    os.kill(srv.proc.pid, signal.SIGHUP)
    [gen2] = srv.wait_workers(1, exclude={gen1})  # up and ready, gen1 not yet told to stop
    os.kill(srv.proc.pid, signal.SIGHUP)
    [gen3] = wait_for("generation 3", lambda: [p for p in srv.worker_pids()
                                               if p not in (gen1, gen2)])
    # 0.5 s later both old generations are told to stop: generation 2 (no
    # clients) leaves at once, generation 1 drains its two for a second
    wait_for("generation 2 to leave", lambda: gen2 not in srv.worker_pids(), timeout=5)
    assert gen1 in srv.worker_pids(), "generation 1 should still be draining"
    new = [open_ws(srv.port, wire) for _ in range(3)]  # all on generation 3
    for ws in new:
        ws.subscribe("reload")
    wait_for("generation 1 to leave", lambda: srv.worker_pids() == [gen3], timeout=5)
    # the master logs a worker's exit in the callback that clears its row:
    # every scrape answered after the line has seen that
    wait_for("generation 1's exit in the log", lambda: f"(pid {gen1}) exited" in srv.log_text())
    # and a tick of generation 3 since, for the gauges it refreshes itself
    m = srv.wait_metrics("generation 3's topics and Redis gauges", lambda m: (
        m.total("tidings_topics") == 1 and m.total("tidings_redis_connected") == 1))
    problems = []
    for name, want in [("tidings_worker_restarts_total", 0),
                       ("tidings_connections_total", 5),
                       ("tidings_messages_received_total", 5),
                       ("tidings_connections", 3),
                       ("tidings_topics", 1),
                       ("tidings_redis_connected", 1)]:
        if m.total(name) != want:
            problems.append(f"{name} {m.total(name):.0f}, want {want}")
    for ws in new:
        ws.close_handshake()
    # the per-address count of generation 3 went back to 0, not below
    try:
        open_ws(srv.port, wire).close_handshake()
    except AssertionError as e:
        per_ip = srv.metrics().value("tidings_handshakes_rejected_total", reason="per_ip")
        problems.append(f"a new connection after the others closed: {e} (per_ip rejections: "
                        f"{per_ip:.0f})")
    for ws in old:
        ws.close()
    assert not problems, "; ".join(problems)


def test_readyz_soon_after_the_workers_reach_redis(start_server):
    """/readyz (and tidings_redis_connected) must not lag the workers'
    Redis connections by a second: a load balancer would hold traffic back
    from a ready server, and, on every SIGHUP reload, pull a serving one."""
    srv = start_server(workers=2, wait=False)  # the test watches the start itself
    pids = srv.wait_workers(2, ready=False)
    wait_for("every worker's Redis connections up in the log",
             lambda: all({"Redis command connection up", "Redis subscriber connection up"} <=
                         srv.worker_log_facts().get(pid, set()) for pid in pids))
    t0 = time.monotonic()
    r = wait_for("/readyz 200", lambda: (lambda x: x if x.status == 200 else None)(
        srv.admin_get("/readyz")), timeout=3, interval=0.01)
    late = time.monotonic() - t0
    assert late < 0.25, (f"/readyz answered 200 only {late:.2f} s after every worker's Redis "
                         "connections were up")
    assert r.body == b"ready\n"


def test_readyz_follows_redis(start_server, redis):
    srv = start_server(workers=1, args=["--redis", redis.url])
    wait_for("/readyz 200", lambda: srv.admin_get("/readyz").status == 200, timeout=3)
    assert srv.metrics().value("tidings_redis_connected", worker=1) == 1
    wire = Wire()
    ws = open_ws(srv.port, wire)

    redis.kill()
    r = wait_for("/readyz 503", lambda: (lambda x: x if x.status == 503 else None)(
        srv.admin_get("/readyz")), timeout=3)
    assert r.body == b"worker 1 is not connected to Redis\n", r
    assert srv.admin_get("/healthz").status == 200, "the worker runs"
    m = srv.metrics()
    assert m.value("tidings_redis_connected", worker=1) == 0
    assert m.value("tidings_worker_up", worker=1) == 1
    ws.send_json({"type": "publish", "topic": "t", "payload": 1})
    msg, _ = ws.recv_json()
    assert msg.get("code") == "bus_unavailable", msg
    m = srv.metrics()
    assert m.total("tidings_publish_errors_total") == 1
    assert m.total("tidings_publishes_total") == 0

    redis.start()
    wait_for("/readyz 200 after Redis is back",
             lambda: srv.admin_get("/readyz").status == 200, timeout=10)
    ws.send_json({"type": "publish", "topic": "t", "payload": 2})
    msg, _ = ws.recv_json()
    assert msg == {"status": "published", "topic": "t"}, msg
    m = srv.metrics()
    assert m.value("tidings_redis_connected", worker=1) == 1
    assert m.total("tidings_publishes_total") == 1
    assert m.total("tidings_publish_errors_total") == 1
    # the worker's two connections (commands, subscriber) came back
    assert m.total("tidings_redis_reconnects_total") == 2, m.select(
        "tidings_redis_reconnects_total")
    ws.close_handshake()


# ---- c: a real Prometheus ----

class Prometheus:
    def __init__(self, tmp_path, target_port):
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: tidings\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.log_path = self.dir / "prometheus.log"
        self.proc = None

    def start(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.dir)
        def ready():
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                            timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(lambda: f"prometheus to be ready:\n{self.log()}", ready, timeout=20,
                 interval=0.1)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, q):
        """The value of an instant query returning one sample."""
        data = self.api("query", query=q)
        assert data["resultType"] == "vector" and len(data["result"]) == 1, (q, data)
        return float(data["result"][0]["value"][1])

    def target(self):
        """The one scrape target; None until discovery has found it."""
        targets = self.api("targets")["activeTargets"]
        assert len(targets) <= 1, targets
        return targets[0] if targets else None


def test_prometheus_scrapes_the_workload(start_server, tmp_path):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} is missing: run deploy/install-deps.sh as root "
                    "(Debian package prometheus)", pytrace=False)
    SUBS, PUBS, TOPIC = 5, 20, "prom"
    srv = start_server(workers=2)
    redis = srv.embedded_redis()
    prom = Prometheus(tmp_path, srv.admin_port)
    wire = Wire()
    clients = []
    try:
        prom.start()
        for _ in range(SUBS):
            ws = open_ws(srv.port, wire)
            clients.append(ws)
            ws.subscribe(TOPIC)
        with_subs = sum(1 for v in srv.metrics().per_worker("tidings_connections").values() if v)
        wait_for("Redis subscriptions", lambda: redis.numsub(TOPIC) == with_subs)
        for i in range(PUBS):
            clients[0].send_json({"type": "publish", "topic": TOPIC, "payload": i})
        for ws in clients:
            n = 0
            while n < PUBS:
                msg, _ = ws.recv_json()
                n += msg.get("type") == "notification"
        wait_for("tidings to count every delivery", lambda: srv.metrics().total(
            "tidings_delivery_latency_seconds_count") == SUBS * PUBS)
        done = time.time()

        # two scrapes after the workload
        scrapes = set()

        def two_scrapes():
            t = prom.target()
            if t is None:
                return False
            assert t["health"] in ("up", "unknown"), t
            ts = t["lastScrape"]
            # RFC 3339 with nanoseconds; compare as text after the date
            if t["health"] == "up" and _rfc3339(ts) > done:
                scrapes.add(ts)
            return len(scrapes) >= 2
        wait_for("two scrapes after the workload", two_scrapes, timeout=10, interval=0.2)
        t = prom.target()
        assert t["health"] == "up" and t["lastError"] == "", t
        assert t["labels"]["instance"] == f"127.0.0.1:{srv.admin_port}", t

        assert prom.query('up{job="tidings"}') == 1
        assert prom.query("sum(tidings_deliveries_total)") == SUBS * PUBS
        assert prom.query("sum(tidings_publishes_total)") == PUBS
        assert prom.query("sum(tidings_connections)") == SUBS
        assert prom.query("sum(tidings_connections_total)") == SUBS
        assert prom.query("sum(tidings_messages_received_total)") == SUBS + PUBS
        assert prom.query("sum(tidings_bus_messages_total)") == PUBS * with_subs
        assert prom.query("sum(tidings_worker_up)") == 2
        assert prom.query("tidings_worker_restarts_total") == 0
        assert prom.query('tidings_handshakes_rejected_total{reason="bad_request"}') == 0
        assert prom.query("sum(tidings_delivery_latency_seconds_count)") == SUBS * PUBS
        q = prom.query("histogram_quantile(0.5, sum by (le) (tidings_delivery_latency_seconds_bucket))")
        assert 0 < q <= 1, q
        # the series Prometheus stored are the families the endpoint declares
        names = set(prom.api("label/__name__/values"))
        for fam, typ in FAMILIES.items():
            if typ == "histogram":
                assert {fam + "_bucket", fam + "_sum", fam + "_count"} <= names, fam
            else:
                assert fam in names, fam
        meta = prom.api("metadata", metric="tidings_deliveries_total")
        assert meta["tidings_deliveries_total"][0]["type"] == "counter", meta
    except BaseException:
        print(f"prometheus log:\n{prom.log()}")
        raise
    finally:
        prom.stop()
        for ws in clients:
            ws.close()
    assert prom.proc is None or prom.proc.returncode is not None


def _rfc3339(ts):
    """Seconds since the epoch of Prometheus' lastScrape (nanosecond
    precision, Z or an offset)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", ts)
    assert m, ts
    base = datetime.datetime.fromisoformat(m.group(1) + (
        "+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0" + m.group(2)) if m.group(2) else 0.0)
