"""The status page of the admin listener: GET /status (one self-contained
HTML document) and /status/ws (a JSON snapshot every second).

  - Chromium (tests/browser/status.test.js, driven by playwright-core)
    opens the page while clients of this test are connected and a second
    page publishes: the numbers appear and move, every request goes to the
    admin origin, the console stays clean; the screenshot lands in
    tests/artifacts/status.png;
  - the snapshots themselves, read with a raw WebSocket: their shape and
    rhythm, agreement with /metrics, a worker restart;
  - the HTTP surface of the admin port and the page's own HTML.

Needs /usr/bin/chromium and node (deploy/install-deps.sh installs them);
playwright-core is installed as test_browser.py does.
"""
import json
import os
import re
import signal
import socket
import struct
import time

import wsraw
from conftest import REPO
from helpers import wait_for
from test_browser import ensure_playwright_core, run_node_test
from test_metrics import Wire, open_ws, wait_wire_counted
from wsraw import OP_CLOSE, OP_TEXT, RawWS

SCRIPT = REPO / "tests" / "browser" / "status.test.js"
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "status.png"
NODE_TIMEOUT = 120
MIN_TESTS = 6  # what status.test.js defines

WORKER_KEYS = {"worker": int, "pid": int, "up": bool, "redis": bool, "connections": int,
               "topics": int, "messages_in": int, "deliveries": int, "publishes": int,
               "bytes_in": int, "bytes_out": int, "slow_dropped": int, "rate_limited": int,
               "shards_up": list}


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack("!II", data[16:24])


def run_status_test(env_extra):
    return run_node_test(SCRIPT, dict(env_extra, SCREENSHOT=str(SCREENSHOT)), MIN_TESTS,
                         NODE_TIMEOUT)


def test_status_page_in_chromium(start_server):
    ensure_playwright_core()
    N, TOPIC = 3, "status-demo"
    srv = start_server(workers=2)
    redis = srv.embedded_redis()
    wire = Wire()
    clients = [open_ws(srv.port, wire) for _ in range(N)]
    try:
        for ws in clients:
            ws.subscribe(TOPIC)
        with_subs = sum(1 for v in srv.metrics().per_worker("tidings_connections").values() if v)
        wait_for("Redis subscriptions", lambda: redis.numsub(TOPIC) == with_subs)
        if SCREENSHOT.exists():
            SCREENSHOT.unlink()
        run_status_test({"ADMIN_URL": f"http://127.0.0.1:{srv.admin_port}/status",
                         "TIDINGS_URL": srv.url, "EXPECT_CONNECTIONS": str(N),
                         "EXPECT_WORKERS": "2", "TOPIC": TOPIC})
        # the subscribers here got what the browser published (no reads
        # meanwhile: the notifications waited in the socket buffers)
        m = srv.metrics()
        published = m.total("tidings_publishes_total")
        assert published > 0
        assert m.total("tidings_deliveries_total") == N * published
        for ws in clients:
            msg, _ = ws.recv_json()
            assert msg == {"type": "notification", "topic": TOPIC, "payload": {"n": 0}}, msg
    finally:
        for ws in clients:
            ws.close()
    assert SCREENSHOT.exists(), f"no screenshot at {SCREENSHOT}"
    size = SCREENSHOT.stat().st_size
    assert size > 10 * 1024, f"{SCREENSHOT} is only {size} bytes"
    w, h = png_size(SCREENSHOT)
    assert w >= 800 and h >= 400, (w, h)


# ---- the snapshots ----

def snapshot(ws, timeout=3.0):
    fin, op, payload = ws.recv_data(timeout)
    assert fin and op == OP_TEXT, (fin, op, payload[:200])
    s = json.loads(payload)
    assert set(s) == {"time", "restarts", "shards", "workers"}, s
    assert isinstance(s["time"], (int, float)) and isinstance(s["restarts"], int), s
    assert s["shards"] and all(isinstance(n, str) for n in s["shards"]), s
    for w in s["workers"]:
        assert set(w) == set(WORKER_KEYS), w
        for k, t in WORKER_KEYS.items():
            assert type(w[k]) is t, (k, w)
        assert len(w["shards_up"]) == len(s["shards"]), w
    return s


def test_status_ws_snapshots_agree_with_metrics(start_server):
    srv = start_server(workers=2)
    redis = srv.embedded_redis()
    # the gap between snapshots is taken from the kernel's receive times
    st = RawWS.open(srv.admin_port, path="/status/ws",
                    sock=wsraw.ArrivalSocket(wsraw.connect(srv.admin_port)))
    try:
        t0 = time.time()
        first = snapshot(st, timeout=0.5)  # one right away
        t1 = st.sock.arrival
        assert abs(first["time"] - t0) < 2, (first["time"], t0)
        assert first["restarts"] == 0
        assert [w["worker"] for w in first["workers"]] == [1, 2]
        slots = srv.worker_slots()
        assert {w["worker"]: w["pid"] for w in first["workers"]} == slots
        assert all(w["up"] for w in first["workers"])
        second = snapshot(st)
        gap = st.sock.arrival - t1
        assert 0.5 < gap < 1.6, f"snapshots {gap:.2f} s apart"
        assert 0.5 < second["time"] - first["time"] < 1.6

        # a workload, then a quiet snapshot that must match /metrics
        before = srv.metrics()
        wire = Wire()
        clients = [open_ws(srv.port, wire) for _ in range(4)]
        for ws in clients:
            ws.subscribe("snap")
        with_subs = sum(1 for v in srv.metrics().per_worker("tidings_connections").values() if v)
        wait_for("Redis subscriptions", lambda: redis.numsub("snap") == with_subs)
        for i in range(5):
            clients[0].send_json({"type": "publish", "topic": "snap", "payload": i})
        for ws in clients:
            notes = replies = 0
            while notes < 5 or (ws is clients[0] and replies < 5):
                msg = ws.recv_json()[0]
                notes += msg.get("type") == "notification"
                replies += msg.get("status") == "published"
        # quiet: the server has counted every byte the clients wrote and read
        wait_wire_counted(srv, wire, before.total("tidings_received_bytes_total"),
                          before.total("tidings_sent_bytes_total"))
        quiet = time.time()
        deadline = time.monotonic() + 4
        while True:  # a snapshot made since, after a tick has also set topics and redis
            s = snapshot(st)
            if s["time"] > quiet and all(w["redis"] and w["topics"] ==
                                         (1 if w["connections"] else 0) for w in s["workers"]):
                break
            assert time.monotonic() < deadline, s
        m = srv.metrics()
        for w in s["workers"]:
            n = w["worker"]
            for key, fam in [("connections", "tidings_connections"),
                             ("topics", "tidings_topics"),
                             ("messages_in", "tidings_messages_received_total"),
                             ("deliveries", "tidings_deliveries_total"),
                             ("publishes", "tidings_publishes_total"),
                             ("bytes_in", "tidings_received_bytes_total"),
                             ("bytes_out", "tidings_sent_bytes_total"),
                             ("slow_dropped", "tidings_slow_dropped_total"),
                             ("rate_limited", "tidings_rate_limited_total")]:
                assert w[key] == m.value(fam, worker=n), (key, n, w, m.select(fam))
        assert sum(w["connections"] for w in s["workers"]) == 4
        assert sum(w["deliveries"] for w in s["workers"]) == 20
        assert sum(w["publishes"] for w in s["workers"]) == 5
        assert sum(w["messages_in"] for w in s["workers"]) == 9
        for ws in clients:
            ws.close_handshake()
    finally:
        st.close()


def test_status_ws_reports_a_restart(start_server):
    srv = start_server(workers=2)
    srv.expect_worker_crash = True
    st = RawWS.open(srv.admin_port, path="/status/ws")
    try:
        s = snapshot(st, timeout=0.5)
        victim = next(w for w in s["workers"] if w["worker"] == 2)["pid"]
        assert victim == srv.worker_slots()[2]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            s = snapshot(st)
            w2 = next(w for w in s["workers"] if w["worker"] == 2)
            if s["restarts"] == 1 and w2["up"] and w2["pid"] not in (0, victim) and w2["redis"]:
                break
            assert time.monotonic() < deadline, s
        assert w2["pid"] == srv.worker_slots()[2]
        assert next(w for w in s["workers"] if w["worker"] == 1)["up"]
    finally:
        st.close()


def test_status_ws_answers_a_close_with_a_close(start_server):
    """RFC 6455 5.5.1: an endpoint that receives a Close frame (and has
    sent none) must send a Close frame in response, then the server closes
    TCP.  A page being left sends one (1001)."""
    srv = start_server(workers=1)
    st = RawWS.open(srv.admin_port, path="/status/ws")
    try:
        snapshot(st, timeout=0.5)
        st.send_frame(OP_CLOSE, wsraw.close_payload(1001))
        frames = st.wait_eof(timeout=3)
        closes = [f for f in frames if f[1] == OP_CLOSE]
        assert closes, f"the server closed TCP without a Close frame; frames seen: {frames}"
        assert closes[0][2][:2] in (wsraw.close_payload(1001), wsraw.close_payload(1000)), closes
    finally:
        st.close()
    assert srv.admin_get("/healthz").status == 200


# ---- the admin port's HTTP ----

def test_admin_http_surface_and_a_self_contained_page(start_server):
    srv = start_server(workers=1)
    page = srv.admin_get("/status")
    assert page.status == 200 and page.eof, page
    assert page.header("content-type") == "text/html; charset=utf-8", page
    assert int(page.header("content-length")) == len(page.body)
    assert page.header("cache-control") == "no-store"
    html = page.body.decode("utf-8")
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<title>tidings status</title>" in html
    assert srv.admin_get("/").body == page.body, "/ serves the status page too"
    # nothing fetched from elsewhere: no absolute URLs, no external scripts,
    # styles, fonts or images; the socket is built from location.host
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), \
        re.findall(r"(?:https?:)?//\S+", html)
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=", html, re.I)
    assert not re.search(r"@import|url\(", html, re.I)
    assert "location.host + '/status/ws'" in html
    for el in ("c-conn", "c-in", "c-out", "c-rst", "g-conn", "g-msg", "workers"):
        assert f'id="{el}"' in html, el

    assert srv.admin_get("/healthz").status == 200
    r = srv.admin_get("/status/ws")  # no upgrade
    assert r.status == 400, r
    r = wsraw.http_exchange(srv.admin_port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Length: 0\r\n\r\n")
    assert r.status == 405, r
    assert srv.admin_get("/metrics/").status == 404
    assert srv.admin_get("/favicon.ico").status == 404


def test_admin_port_drops_requests_that_never_arrive(start_server):
    """A request must arrive within 10 s (slow-loris on the admin port);
    the port keeps serving others meanwhile."""
    srv = start_server(workers=1)
    idle = socket.create_connection(("127.0.0.1", srv.admin_port))
    part = socket.create_connection(("127.0.0.1", srv.admin_port))
    part.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
    try:
        start = time.monotonic()
        assert srv.admin_get("/healthz").status == 200
        for s in (idle, part):
            s.settimeout(15)
            assert s.recv(1024) == b"", "the server answered a request that never came"
        waited = time.monotonic() - start
        assert 8 <= waited <= 14, f"closed after {waited:.1f} s, expected about 10 s"
        assert srv.admin_get("/healthz").status == 200
    finally:
        for s in (idle, part):
            s.close()
