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
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import wsraw
from conftest import free_port
from test_redis import Redis
from wsraw import OP_CLOSE, OP_TEXT, RawWS

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


# ---- the Prometheus text format (0.0.4), parsed strictly ----

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def _float(s):
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return special[s] if s in special else float(s)


class Metrics:
    """One exposition: samples {(name, ((label, value), ...)): float},
    types {family: type}, helps {family: text}."""

    def __init__(self, text):
        assert text.endswith("\n"), "the exposition must end with a newline"
        self.text = text
        self.samples = {}
        self.types = {}
        self.helps = {}
        self.family_of = {}
        seen_families = []  # in order of first sample: a family's samples must be contiguous
        for no, line in enumerate(text.split("\n")[:-1], 1):
            where = f"line {no}: {line!r}"
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    fam = parts[2]
                    assert re.fullmatch(_NAME, fam), where
                    table = self.helps if parts[1] == "HELP" else self.types
                    assert fam not in table, f"second # {parts[1]} for {fam}: {where}"
                    assert fam not in seen_families, f"# {parts[1]} after samples of {fam}: {where}"
                    if parts[1] == "TYPE":
                        assert len(parts) == 4 and parts[3] in (
                            "counter", "gauge", "histogram", "summary", "untyped"), where
                        table[fam] = parts[3]
                    else:
                        table[fam] = parts[3] if len(parts) == 4 else ""
                continue
            m = _SAMPLE.match(line)
            assert m, f"not a sample: {where}"
            name, labels_text, value, _ts = m.groups()
            labels = []
            if labels_text:
                pos = 0
                while pos < len(labels_text):
                    lm = _LABEL.match(labels_text, pos)
                    assert lm, f"bad labels: {where}"
                    labels.append((lm.group(1), _unescape(lm.group(2))))
                    pos = lm.end()
                    if lm.group(3) != ",":
                        break
                assert pos == len(labels_text), f"bad labels: {where}"
            assert len({k for k, _ in labels}) == len(labels), f"repeated label: {where}"
            try:
                v = _float(value)
            except ValueError:
                raise AssertionError(f"bad value: {where}") from None
            fam = self._family(name)
            assert fam in self.types, f"sample without a # TYPE: {where}"
            if seen_families and seen_families[-1] != fam:
                assert fam not in seen_families, f"samples of {fam} are not together: {where}"
            if not seen_families or seen_families[-1] != fam:
                seen_families.append(fam)
            key = (name, tuple(sorted(labels)))
            assert key not in self.samples, f"duplicate sample: {where}"
            self.samples[key] = v
            self.family_of[name] = fam

    def _family(self, name):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return name

    def select(self, name, **labels):
        """[(labels dict, value)] of the samples of `name` whose labels
        include `labels`."""
        want = {k: str(v) for k, v in labels.items()}
        out = []
        for (n, lab), v in self.samples.items():
            d = dict(lab)
            if n == name and all(d.get(k) == x for k, x in want.items()):
                out.append((d, v))
        return out

    def value(self, name, **labels):
        """The value of the one sample of `name` with exactly these labels."""
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        assert key in self.samples, f"no sample {key} in:\n{self.text}"
        return self.samples[key]

    def total(self, name, **labels):
        got = self.select(name, **labels)
        assert got, f"no sample of {name} {labels} in:\n{self.text}"
        return sum(v for _, v in got)

    def per_worker(self, name):
        """{worker number: value}"""
        return {int(d["worker"]): v for d, v in self.select(name)}


def admin_get(srv, path, timeout=5.0):
    return wsraw.http_get(srv.admin_port, path, timeout=timeout)


def scrape(srv):
    r = admin_get(srv, "/metrics")
    assert r.status == 200, r
    assert r.eof, "the admin listener closes after a response"
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8", r
    assert int(r.header("content-length")) == len(r.body), r
    return Metrics(r.body.decode("utf-8"))


def wait_for(what, fn, timeout=5.0, interval=0.05):
    """Calls fn until it returns something truthy; returns it.  On timeout,
    fails with `what` and fn's last value."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {last!r}")
        time.sleep(interval)


def check_histogram(m, name="tidings_delivery_latency_seconds"):
    """Buckets cumulative, ending at +Inf == _count; returns _count."""
    buckets = sorted(((_float(d["le"]), v) for d, v in m.select(name + "_bucket")),
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
    s = CountingSocket(wsraw.connect(port, timeout), wire)
    key = wsraw.new_key()
    s.sendall(wsraw.upgrade_request(key=key))
    head, rest = wsraw.read_head(s)
    resp = wsraw.Response(head, False)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
    assert resp.header("sec-websocket-extensions") is None, resp
    return RawWS(s, rest)


def exchange(port, request, wire, timeout=5.0):
    """Sends a raw request on a counting socket, reads until EOF."""
    s = CountingSocket(wsraw.connect(port, timeout), wire)
    try:
        s.sendall(request)
        data, eof = wsraw.read_until_eof(s, timeout)
    finally:
        s.close()
    assert eof, f"the server did not close after {data[:200]!r}"
    return wsraw.Response(data, eof)


def recv_json(ws, timeout=5.0):
    fin, op, payload = ws.recv_data(timeout)
    assert fin and op == OP_TEXT, (fin, op, payload[:200])
    return json.loads(payload), payload


def send_json(ws, obj):
    ws.send_text(json.dumps(obj, separators=(",", ":")))


def subscribe(ws, topic):
    send_json(ws, {"type": "subscribe", "topic": topic})
    msg, _ = recv_json(ws)
    assert msg == {"status": "subscribed", "topic": topic}, msg


def close_ws(ws):
    """A clean close from the client: close frame, the server's answer, EOF."""
    ws.send_frame(OP_CLOSE, wsraw.close_payload(1000))
    fin, op, payload = ws.recv_data()
    assert op == OP_CLOSE and payload[:2] == wsraw.close_payload(1000), (op, payload)
    ws.wait_eof()
    ws.close()


def embedded_redis_socket(srv):
    log = srv.log_text()
    assert "on unix:" in log, f"no embedded redis-server in the log:\n{log}"
    return log.split("on unix:")[1].split()[0]


def redis_numsub(sock, channel):
    out = subprocess.run(["redis-cli", "-s", sock, "PUBSUB", "NUMSUB", channel], check=True,
                         capture_output=True, text=True, timeout=10).stdout.split()
    return int(out[1])


def worker_slots(srv):
    """{slot number: pid} of the running workers."""
    slots = {}
    for pid in srv.worker_pids():
        with open(f"/proc/{pid}/environ", "rb") as f:
            for e in f.read().split(b"\0"):
                if e.startswith(b"TIDINGS_WORKER_ID="):
                    slots[int(e.split(b"=")[1])] = pid
    return slots


# ---- a: exact counts ----

def test_exposition_format_and_families(start_server):
    srv = start_server(workers=2)
    m = scrape(srv)
    for fam, typ in FAMILIES.items():
        assert m.types.get(fam) == typ, f"{fam}: # TYPE {m.types.get(fam)}, want {typ}"
        assert m.helps.get(fam), f"{fam} has no # HELP"
    for fam in PER_WORKER:
        assert sorted(m.per_worker(fam)) == [1, 2], f"{fam}: {m.select(fam)}"
    assert sorted(d["reason"] for d, _ in m.select("tidings_handshakes_rejected_total")) == \
        sorted(REASONS)
    assert m.value("tidings_worker_restarts_total") == 0
    # a fresh server: every counter at zero (the startup probes went to the
    # public port as plain GETs: bytes only)
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
    sock = embedded_redis_socket(srv)
    before = scrape(srv)
    b_in = before.total("tidings_received_bytes_total")
    b_out = before.total("tidings_sent_bytes_total")
    wire = Wire()
    notif_bytes = 0

    clients = []
    try:
        for _ in range(N):
            ws = open_ws(srv.port, wire)
            clients.append(ws)
            subscribe(ws, TOPIC)
        m = scrape(srv)
        conns = m.per_worker("tidings_connections")
        assert sum(conns.values()) == N, m.select("tidings_connections")
        assert m.per_worker("tidings_connections_total") == conns
        with_subs = sum(1 for v in conns.values() if v > 0)
        # the subscription reply does not wait for Redis: wait until every
        # worker with subscribers is a subscriber of the channel
        wait_for(f"{with_subs} Redis subscribers of {TOPIC}",
                 lambda: redis_numsub(sock, TOPIC) == with_subs)
        wait_for("tidings_topics per worker (updated every second)",
                 lambda: scrape(srv).per_worker("tidings_topics") ==
                 {w: int(v > 0) for w, v in conns.items()}, timeout=3)

        pub = clients[0]
        for i in range(K):
            send_json(pub, {"type": "publish", "topic": TOPIC, "payload": {"i": i, "n": "x" * i}})
        replies = 0
        for idx, ws in enumerate(clients):
            got = []
            # the publisher gets its K replies, interleaved with the K notifications
            while len(got) < K or (ws is pub and replies < K):
                msg, raw = recv_json(ws)
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
        assert admin_get(srv, "/no-such-page").status == 404

        m = wait_for("the latency histogram to catch up with the deliveries",
                     lambda: (lambda x: x if x.total("tidings_delivery_latency_seconds_count")
                              == N * K else None)(scrape(srv)))
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
                close_ws(ws)
            except (AssertionError, OSError, EOFError):
                ws.close()

    m = wait_for("tidings_connections to fall to 0",
                 lambda: (lambda x: x if x.total("tidings_connections") == 0 else None)(scrape(srv)))
    assert m.per_worker("tidings_connections") == {1: 0, 2: 0}
    assert m.total("tidings_connections_total") == N
    # every byte the clients wrote and read, as the server counted it
    m = wait_for("the byte counters to settle", lambda: (lambda x: x if (
        x.total("tidings_received_bytes_total") - b_in == wire.sent and
        x.total("tidings_sent_bytes_total") - b_out == wire.received) else None)(scrape(srv)),
        timeout=2)
    assert m.total("tidings_messages_received_total") == N + K, "close frames are not messages"


def test_slow_subscriber_drops_are_counted(start_server):
    """A subscriber that stops reading (drop policy): skipped notifications
    are counted in tidings_slow_dropped_total and reported in the next one's
    "missed"; that notification is a delivery like any other, so it counts
    in the latency histogram and in tidings_notification_bytes_total."""
    COUNT, SIZE, TOPIC = 200, 30000, "slow-metrics"
    srv = start_server(workers=1, args=["--max-queued-bytes", "8192"])
    sock = embedded_redis_socket(srv)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", srv.port))
    key = wsraw.new_key()
    s.sendall(wsraw.upgrade_request(key=key))
    slow = RawWS(s, wsraw.read_head(s)[1])
    wire = Wire()
    pub = open_ws(srv.port, wire)
    try:
        subscribe(slow, TOPIC)
        wait_for("the Redis subscription", lambda: redis_numsub(sock, TOPIC) == 1)
        for i in range(COUNT):
            send_json(pub, {"type": "publish", "topic": TOPIC, "payload": f"{i:05d}" + "x" * SIZE})
        for _ in range(COUNT):
            assert recv_json(pub)[0] == {"status": "published", "topic": TOPIC}
        # every message came back from Redis (and was queued or skipped)
        # before the slow one reads again
        m = wait_for("the bus messages", lambda: (lambda x: x if x.total(
            "tidings_bus_messages_total") == COUNT else None)(scrape(srv)))
        assert m.total("tidings_slow_dropped_total") > 0
        # read what was queued (a notification queued after a drop says how
        # many it follows), then one more notification carries the rest
        got = raw_bytes = missed = 0
        seqs = []
        while True:
            try:
                fin, op, payload = slow.recv_data(timeout=1.0)
            except wsraw.Timeout:
                break
            msg = json.loads(payload)
            assert msg["type"] == "notification", str(msg)[:200]
            seq = int(msg["payload"][:5])
            assert msg.get("missed", 0) == seq - (seqs[-1] + 1 if seqs else 0), str(msg)[:200]
            seqs.append(seq)
            missed += msg.get("missed", 0)
            got += 1
            raw_bytes += len(payload)
        assert seqs and seqs[-1] < COUNT - 1, "nothing was dropped at the end"
        send_json(pub, {"type": "publish", "topic": TOPIC, "payload": "last"})
        assert recv_json(pub)[0] == {"status": "published", "topic": TOPIC}
        fin, op, payload = slow.recv_data(timeout=5)
        last = json.loads(payload)
        assert last["payload"] == "last" and last["missed"] == COUNT - 1 - seqs[-1], last
        missed += last["missed"]
        raw_bytes += len(payload)
        assert got + missed == COUNT, (got, missed)

        m = wait_for("the counters", lambda: (lambda x: x if x.total(
            "tidings_deliveries_total") == got + 1 else None)(scrape(srv)))
        assert m.total("tidings_slow_dropped_total") == missed
        assert m.total("tidings_slow_disconnects_total") == 0
        assert m.total("tidings_bus_messages_total") == COUNT + 1
        time.sleep(0.2)
        m = scrape(srv)
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
    wait_for("/readyz 200", lambda: admin_get(srv, "/readyz").status == 200, timeout=3)
    r = admin_get(srv, "/readyz")
    assert r.body == b"ready\n", r
    wire = Wire()
    clients = [open_ws(srv.port, wire) for _ in range(8)]
    for ws in clients:
        send_json(ws, {"type": "ping"})
        assert recv_json(ws)[0] == {"type": "pong"}
    before = scrape(srv)
    conns = before.per_worker("tidings_connections")
    assert before.per_worker("tidings_connections_total") == conns
    assert before.total("tidings_messages_received_total") == 8
    slot = max(conns, key=lambda w: conns[w])  # the worker with more clients dies
    slots = worker_slots(srv)
    victim = slots[slot]

    os.kill(victim, signal.SIGKILL)
    # The first restart is immediate and the new worker reaches Redis within
    # milliseconds, so /readyz may never be caught at 503: when it is, the
    # reason must name the slot.
    try:
        r = wait_for("/readyz 503", lambda: (lambda x: x if x.status == 503 else None)(
            admin_get(srv, "/readyz")), timeout=1, interval=0.005)
        assert r.body in (f"worker {slot} is not running\n".encode(),
                          f"worker {slot} is not connected to Redis\n".encode()), r
    except AssertionError as e:
        if "timed out" not in str(e):
            raise
    assert admin_get(srv, "/healthz").status == 200, "the other worker still runs"
    wait_for("/readyz 200 again", lambda: admin_get(srv, "/readyz").status == 200, timeout=5)
    new = worker_slots(srv)
    assert set(new) == {1, 2} and new[slot] != victim and new[3 - slot] == slots[3 - slot], new

    # the dead worker's clients are gone, the others are not
    dead = alive = 0
    for ws in clients:
        try:
            send_json(ws, {"type": "ping"})
            assert recv_json(ws, timeout=3)[0] == {"type": "pong"}
            alive += 1
        except (EOFError, ConnectionResetError, BrokenPipeError):
            dead += 1
    assert dead == conns[slot] and alive == 8 - conns[slot], (dead, alive, conns)

    m = scrape(srv)
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
        if scrape(srv).value("tidings_connections", worker=slot) > 0:
            break
    m = scrape(srv)
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
        send_json(ws, {"type": "ping"})
        assert recv_json(ws)[0] == {"type": "pong"}
    [gen1] = srv.worker_pids()
    os.kill(srv.proc.pid, signal.SIGHUP)
    [gen2] = wait_for("generation 2", lambda: [p for p in srv.worker_pids() if p != gen1])
    time.sleep(0.2)
    os.kill(srv.proc.pid, signal.SIGHUP)
    [gen3] = wait_for("generation 3", lambda: [p for p in srv.worker_pids()
                                               if p not in (gen1, gen2)])
    # 0.5 s later both old generations are told to stop: generation 2 (no
    # clients) leaves at once, generation 1 drains its two for a second
    wait_for("generation 2 to leave", lambda: gen2 not in srv.worker_pids(), timeout=5)
    assert gen1 in srv.worker_pids(), "generation 1 should still be draining"
    new = [open_ws(srv.port, wire) for _ in range(3)]  # all on generation 3
    for ws in new:
        subscribe(ws, "reload")
    wait_for("generation 1 to leave", lambda: srv.worker_pids() == [gen3], timeout=5)
    time.sleep(1.2)  # a tick of generation 3 for the gauges it refreshes itself
    m = scrape(srv)
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
        close_ws(ws)
    # the per-address count of generation 3 went back to 0, not below
    try:
        close_ws(open_ws(srv.port, wire))
    except AssertionError as e:
        problems.append(f"a new connection after the others closed: {e} (per_ip rejections: "
                        f"{scrape(srv).value('tidings_handshakes_rejected_total', reason='per_ip'):.0f})")
    for ws in old:
        ws.close()
    assert not problems, "; ".join(problems)


def test_readyz_soon_after_the_workers_reach_redis(start_server):
    """/readyz (and tidings_redis_connected) must not lag the workers'
    Redis connections by a second: a load balancer would hold traffic back
    from a ready server, and, on every SIGHUP reload, pull a serving one."""
    srv = start_server(workers=2)
    pids = srv.wait_workers(2)
    for pid in pids:
        for conn in ("command", "subscriber"):
            wait_for(f"worker pid {pid}: Redis {conn} connection up in the log",
                     lambda: re.search(rf"\[{pid}\] worker \d: Redis {conn} connection to \S+ up",
                                       srv.log_text()))
    t0 = time.monotonic()
    r = wait_for("/readyz 200", lambda: (lambda x: x if x.status == 200 else None)(
        admin_get(srv, "/readyz")), timeout=3, interval=0.01)
    late = time.monotonic() - t0
    assert late < 0.25, (f"/readyz answered 200 only {late:.2f} s after every worker's Redis "
                         "connections were up")
    assert r.body == b"ready\n"


def test_readyz_follows_redis(start_server, tmp_path):
    redis = Redis(tmp_path)
    redis.start()
    try:
        srv = start_server(workers=1, args=["--redis", redis.url])
        wait_for("/readyz 200", lambda: admin_get(srv, "/readyz").status == 200, timeout=3)
        assert scrape(srv).value("tidings_redis_connected", worker=1) == 1
        wire = Wire()
        ws = open_ws(srv.port, wire)

        redis.kill()
        r = wait_for("/readyz 503", lambda: (lambda x: x if x.status == 503 else None)(
            admin_get(srv, "/readyz")), timeout=3)
        assert r.body == b"worker 1 is not connected to Redis\n", r
        assert admin_get(srv, "/healthz").status == 200, "the worker runs"
        m = scrape(srv)
        assert m.value("tidings_redis_connected", worker=1) == 0
        assert m.value("tidings_worker_up", worker=1) == 1
        send_json(ws, {"type": "publish", "topic": "t", "payload": 1})
        msg, _ = recv_json(ws)
        assert msg.get("code") == "bus_unavailable", msg
        m = scrape(srv)
        assert m.total("tidings_publish_errors_total") == 1
        assert m.total("tidings_publishes_total") == 0

        redis.start()
        wait_for("/readyz 200 after Redis is back",
                 lambda: admin_get(srv, "/readyz").status == 200, timeout=10)
        send_json(ws, {"type": "publish", "topic": "t", "payload": 2})
        msg, _ = recv_json(ws)
        assert msg == {"status": "published", "topic": "t"}, msg
        m = scrape(srv)
        assert m.value("tidings_redis_connected", worker=1) == 1
        assert m.total("tidings_publishes_total") == 1
        assert m.total("tidings_publish_errors_total") == 1
        # the worker's two connections (commands, subscriber) came back
        assert m.total("tidings_redis_reconnects_total") == 2, m.select(
            "tidings_redis_reconnects_total")
        close_ws(ws)
    finally:
        redis.kill()


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
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"prometheus not ready in 20 s:\n{self.log()}"
            time.sleep(0.1)

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
    sock = embedded_redis_socket(srv)
    prom = Prometheus(tmp_path, srv.admin_port)
    wire = Wire()
    clients = []
    try:
        prom.start()
        for _ in range(SUBS):
            ws = open_ws(srv.port, wire)
            clients.append(ws)
            subscribe(ws, TOPIC)
        with_subs = sum(1 for v in scrape(srv).per_worker("tidings_connections").values() if v)
        wait_for("Redis subscriptions", lambda: redis_numsub(sock, TOPIC) == with_subs)
        for i in range(PUBS):
            send_json(clients[0], {"type": "publish", "topic": TOPIC, "payload": i})
        for ws in clients:
            n = 0
            while n < PUBS:
                msg, _ = recv_json(ws)
                n += msg.get("type") == "notification"
        wait_for("tidings to count every delivery", lambda: scrape(srv).total(
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
