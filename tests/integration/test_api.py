"""The HTTP API under /api/ (worker/api.c), against the real server and a
real redis-server: every endpoint, every error, keep-alive, pipelining,
chunked bodies, deadlines, two hosts sharing one Redis, --api-listen,
--api-key-file and the metrics.

Requests are written by hand on raw sockets (ApiConn) so that pipelining,
split heads, chunked bodies and what the server does with the connection
afterwards are all visible.
"""
import asyncio
import json
import socket
import time

import pytest

from conftest import free_port, run_tidings
from helpers import (check_refused, expect_close, recv_json, subscribe, wait_for,
                     wait_for_async, ws_connect)
from test_auth import SECRET, make_jwt
import wsraw

KEY = "test-api-key-0123456789abcdef"
AUTH = f"Authorization: apikey {KEY}\r\n"
JSON_CT = "Content-Type: application/json\r\n"


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Reply({self.status}, {self.headers}, {self.body[:300]!r})"


class ApiConn:
    """One keep-alive connection: send raw requests, read answers one by one."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed by the server; unread: {self.buf!r}")
        self.buf += chunk

    def read(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:  # 100 Continue: no body
            return Reply(status, headers, b"")
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        if status >= 200:
            assert headers.get("content-type") == "application/json", headers
        return Reply(status, headers, body)

    def request(self, method, path, body=None, headers=AUTH + JSON_CT):
        self.send(req(method, path, body, headers))
        return self.read()

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def req(method, path, body=None, headers=AUTH + JSON_CT, version="1.1"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    head = f"{method} {path} HTTP/{version}\r\nHost: x\r\n{headers}"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def call(port, method, path, body=None, headers=AUTH + JSON_CT):
    c = ApiConn(port)
    try:
        return c.request(method, path, body, headers)
    finally:
        c.close()


def api_server(start_server, redis, *args, workers=1, key=True):
    a = ["--redis", redis.url, *args]
    if key:
        a += ["--api-key", KEY]
    return start_server(workers=workers, args=a)


def chunked(body, sizes):
    out, at = b"", 0
    for i, n in enumerate(sizes):
        part = body[at:at + n]
        at += n
        ext = ";note=x" if i == 0 else ""
        out += f"{len(part):x}{ext}\r\n".encode() + part + b"\r\n"
    rest = body[at:]
    if rest:
        out += f"{len(rest):X}\r\n".encode() + rest + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


# ---- publish ----

ODD = '{"b" :  [1, 2.50 ,"\\u00e9\\n", {"z":null , "a":true}] }'


def test_publish_forwards_the_payload_byte_for_byte(start_server, redis):
    srv = api_server(start_server, redis)
    with wsraw.RawWS.open(srv.port) as ws:
        ws.subscribe("news")
        body = '{"topic":"news", "payload" : ' + ODD + ' }'
        r = call(srv.port, "POST", "/api/publish", body)
        assert r.status == 200, r
        assert r.json() == {}  # no history: no offset
        fin, op, data = ws.recv_data()
        assert data == b'{"type":"notification","topic":"news","payload":' + ODD.encode() + b"}"


def test_publish_chunked_body_byte_for_byte(start_server, redis):
    srv = api_server(start_server, redis)
    with wsraw.RawWS.open(srv.port) as ws:
        ws.subscribe("news")
        body = ('{"topic":"news","payload":' + ODD + '}').encode()
        c = ApiConn(srv.port)
        c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{AUTH}{JSON_CT}"
               "Transfer-Encoding: chunked\r\n\r\n".encode() + chunked(body, [1, 7, 30]))
        r = c.read()
        assert r.status == 200, r
        fin, op, data = ws.recv_data()
        assert data == b'{"type":"notification","topic":"news","payload":' + ODD.encode() + b"}"
        # and the connection goes on
        assert c.request("POST", "/api/publish", {"topic": "news", "payload": 2}).status == 200
        c.close()


def test_publish_offsets_and_history(start_server, redis):
    srv = api_server(start_server, redis, "--history-size", "10", "--history-topics", "h.*")
    c = ApiConn(srv.port)
    for i in range(1, 4):
        r = c.request("POST", "/api/publish", {"topic": "h.x", "payload": {"n": i}})
        assert (r.status, r.json()) == (200, {"offset": i}), r
    r = c.request("GET", "/api/history?topic=h.x&since=1&limit=1", headers=AUTH)
    assert r.status == 200, r
    h = r.json()
    assert h["topic"] == "h.x" and h["offset"] == 3 and h["epoch"]
    assert h["messages"] == [{"offset": 2, "payload": {"n": 2}}]
    r = c.request("GET", "/api/history?topic=h%2Ex", headers=AUTH)  # percent-encoded
    assert [m["offset"] for m in r.json()["messages"]] == [1, 2, 3]
    # no history for this topic; bad numbers; bad topic; no topic
    r = c.request("GET", "/api/history?topic=other", headers=AUTH)
    assert (r.status, r.json()["code"]) == (400, "no_history"), r
    for q in ("topic=h.x&limit=0", "topic=h.x&limit=101", "topic=h.x&since=-1",
              "topic=h.x&since=x", "since=1"):
        r = c.request("GET", "/api/history?" + q, headers=AUTH)
        assert (r.status, r.json()["code"]) == (400, "invalid_format"), (q, r)
    r = c.request("GET", "/api/history?topic=a..b", headers=AUTH)
    assert (r.status, r.json()["code"]) == (400, "invalid_topic"), r
    c.close()


def test_broadcast_mixed_results_in_request_order(start_server, redis):
    srv = api_server(start_server, redis, "--history-size", "5", "--history-topics", "h.*")
    with wsraw.RawWS.open(srv.port) as ws:
        ws.subscribe("plain")
        body = {"topics": ["h.a", "bad..topic", "plain", "h.a", "*"], "payload": [1, "x"]}
        r = call(srv.port, "POST", "/api/broadcast", body)
        assert r.status == 200, r
        assert r.json() == {"results": [
            {"topic": "h.a", "offset": 1},
            {"topic": "bad..topic", "error": "Invalid topic name", "code": "invalid_topic"},
            {"topic": "plain"},
            {"topic": "h.a", "offset": 2},
            {"topic": "*", "error": "Invalid topic name", "code": "invalid_topic"},
        ]}
        assert ws.recv_json()[0] == {"type": "notification", "topic": "plain", "payload": [1, "x"]}
    for bad in ({"topics": [], "payload": 1}, {"topics": ["a"] * 1001, "payload": 1},
                {"topics": ["a", 7], "payload": 1}, {"topics": ["a"]}, {"topics": "a", "payload": 1}):
        r = call(srv.port, "POST", "/api/broadcast", bad)
        assert (r.status, r.json()["code"]) == (400, "invalid_format"), (bad, r)


# ---- errors ----

def test_errors_keep_the_connection(start_server, redis):
    srv = api_server(start_server, redis)
    c = ApiConn(srv.port)
    cases = [
        (("GET", "/api/nope", None, AUTH), 404, "not_found"),
        (("GET", "/api", None, AUTH), 404, "not_found"),
        (("GET", "/api/publish", None, AUTH), 405, "method_not_allowed"),
        (("POST", "/api/topics", "{}", AUTH + JSON_CT), 405, "method_not_allowed"),
        (("POST", "/api/publish", '{"topic":"a","payload":1}', AUTH + "Content-Type: text/plain\r\n"),
         415, "unsupported_media_type"),
        (("POST", "/api/publish", None, AUTH + JSON_CT), 411, "length_required"),
        (("POST", "/api/publish", '{"topic":"a","payload":', AUTH + JSON_CT), 400, "invalid_format"),
        (("POST", "/api/publish", '{"topic":"a","topic":"b","payload":1}', AUTH + JSON_CT),
         400, "invalid_format"),
        (("POST", "/api/publish", '{"topic":"a"}', AUTH + JSON_CT), 400, "invalid_format"),
        (("POST", "/api/publish", '[1]', AUTH + JSON_CT), 400, "invalid_format"),
        (("POST", "/api/publish", '{"topic":"a b","payload":1}', AUTH + JSON_CT), 400, "invalid_topic"),
        (("POST", "/api/publish", '{"topic":"a","payload":1}', JSON_CT), 401, "unauthorized"),
        (("POST", "/api/disconnect", '{"sub":""}', AUTH + JSON_CT), 400, "invalid_format"),
        (("POST", "/api/disconnect", '{"sub":"u","topic":"a..b"}', AUTH + JSON_CT), 400, "invalid_topic"),
    ]
    for (method, path, body, headers), status, code in cases:
        r = c.request(method, path, body, headers)
        assert (r.status, r.json().get("code")) == (status, code), (method, path, body, r)
        assert "connection" not in r.headers, r
        if status == 405:
            assert r.header("allow") == ("POST" if path == "/api/publish" else "GET"), r
        if status == 401:
            assert r.header("www-authenticate") == "apikey", r
    # a charset parameter is fine, and so is no Content-Type at all
    r = c.request("POST", "/api/publish", {"topic": "a", "payload": 1},
                  AUTH + "Content-Type: Application/JSON; charset=utf-8\r\n")
    assert r.status == 200, r
    assert c.request("POST", "/api/publish", {"topic": "a", "payload": 1}, AUTH).status == 200
    c.close()


def test_key_checks(start_server, redis):
    srv = api_server(start_server, redis, "--log-level", "debug")
    body = {"topic": "a", "payload": 1}
    for headers in ("", "Authorization: apikey wrong\r\n",
                    f"Authorization: apikey {KEY[:-1]}x\r\n",  # same length
                    f"Authorization: Bearer {KEY}\r\n", f"Authorization: apikey {KEY}x\r\n",
                    f"Authorization: apikey{KEY}\r\n"):
        r = call(srv.port, "POST", "/api/publish", body, headers + JSON_CT)
        assert r.status == 401, (headers, r)
    for scheme in ("apikey", "ApiKey", "APIKEY"):
        r = call(srv.port, "POST", "/api/publish", body, f"Authorization: {scheme}  {KEY}\r\n")
        assert r.status == 200, (scheme, r)
    assert KEY not in srv.log_text()
    assert "Authorization" not in srv.log_text()


def test_api_is_off_without_a_key(start_server, redis):
    srv = api_server(start_server, redis, key=False)
    r = wsraw.http_exchange(srv.port, req("POST", "/api/publish", {"topic": "a", "payload": 1}))
    assert r.status == 404, r


def test_413_by_content_length_keeps_the_connection(start_server, redis):
    srv = api_server(start_server, redis, "--max-message-size", "1k")
    c = ApiConn(srv.port)
    big = json.dumps({"topic": "a", "payload": "x" * 2000})
    r = c.request("POST", "/api/publish", big)
    assert (r.status, r.json()["code"]) == (413, "payload_too_large"), r
    assert "connection" not in r.headers
    # the body was skipped: the next request is read as one
    assert c.request("POST", "/api/publish", {"topic": "a", "payload": 1}).status == 200
    c.close()


def test_413_by_chunked_body_closes(start_server, redis):
    srv = api_server(start_server, redis, "--max-message-size", "1k")
    c = ApiConn(srv.port)
    big = json.dumps({"topic": "a", "payload": "x" * 2000}).encode()
    c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{AUTH}{JSON_CT}"
           "Transfer-Encoding: chunked\r\n\r\n".encode() + chunked(big, [500, 500, 500]))
    r = c.read()
    assert (r.status, r.header("connection")) == (413, "close"), r
    assert c.closed()


def test_bad_framing_closes(start_server, redis):
    srv = api_server(start_server, redis)
    for extra in ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                  "Content-Length: 5\r\nContent-Length: 6\r\n", "Content-Length: x\r\n",
                  "Transfer-Encoding: gzip\r\n"):
        c = ApiConn(srv.port)
        c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{AUTH}{JSON_CT}{extra}\r\nhello".encode())
        r = c.read()
        assert (r.status, r.header("connection")) == (400, "close"), (extra, r)
        assert c.closed()
    # a malformed chunk
    c = ApiConn(srv.port)
    c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{AUTH}{JSON_CT}"
           "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode())
    r = c.read()
    assert (r.status, r.header("connection")) == (400, "close"), r
    assert c.closed()


# ---- keep-alive, pipelining, deadlines ----

def test_pipelining_answers_in_order(start_server, redis):
    """200 publishes in one write (more than the 64 a connection may have
    waiting): every answer, in request order (the offsets count up), an
    error in the middle in its place."""
    srv = api_server(start_server, redis, "--history-size", "1000", "--history-topics", "p.*")
    c = ApiConn(srv.port)
    n = 200
    reqs = [req("POST", "/api/publish", {"topic": "p.x", "payload": i}) for i in range(n)]
    reqs.insert(n // 2, req("POST", "/api/publish", "{oops"))
    c.send(b"".join(reqs))
    offsets = []
    for _ in range(n + 1):
        r = c.read()
        if r.status == 400:
            offsets.append("err")
        else:
            assert r.status == 200, r
            offsets.append(r.json()["offset"])
    assert "err" in offsets
    assert [o for o in offsets if o != "err"] == list(range(1, n + 1))
    # mixed endpoints, pipelined with a split write
    data = (req("GET", "/api/topics", headers=AUTH) +
            req("POST", "/api/publish", {"topic": "p.x", "payload": "last"}) +
            req("GET", "/api/history?topic=p.x&since=200", headers=AUTH))
    c.send(data[:7])
    time.sleep(0.05)
    c.send(data[7:])
    assert "topics" in c.read().json()
    assert c.read().json() == {"offset": 201}
    assert c.read().json()["messages"] == [{"offset": 201, "payload": "last"}]
    c.close()


def test_connection_close_and_http10(start_server, redis):
    srv = api_server(start_server, redis)
    body = {"topic": "a", "payload": 1}
    c = ApiConn(srv.port)
    r = c.request("POST", "/api/publish", body, AUTH + "Connection: close\r\n")
    assert (r.status, r.header("connection")) == (200, "close")
    assert c.closed()
    c = ApiConn(srv.port)
    c.send(req("POST", "/api/publish", body, AUTH, version="1.0"))
    r = c.read()
    assert (r.status, r.header("connection")) == (200, "close")
    assert c.closed()
    c = ApiConn(srv.port)
    for _ in range(2):
        c.send(req("POST", "/api/publish", body, AUTH + "Connection: keep-alive\r\n", version="1.0"))
        r = c.read()
        assert (r.status, r.header("connection")) == (200, "keep-alive"), r
    c.close()


def test_expect_100_continue(start_server, redis):
    srv = api_server(start_server, redis)
    c = ApiConn(srv.port)
    body = json.dumps({"topic": "a", "payload": 1}).encode()
    c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{AUTH}Expect: 100-continue\r\n"
           f"Content-Length: {len(body)}\r\n\r\n".encode())
    assert c.read().status == 100
    c.send(body)
    assert c.read().status == 200
    # refused before the body: answered, and closed (the body may never come)
    c.send(f"POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
           f"Content-Length: {len(body)}\r\n\r\n".encode())
    r = c.read()
    assert (r.status, r.header("connection")) == (401, "close"), r
    assert c.closed()


def test_requests_must_arrive_within_the_timeout(start_server, redis):
    srv = api_server(start_server, redis, "--handshake-timeout", "1")
    body = json.dumps({"topic": "a", "payload": 1}).encode()
    whole = req("POST", "/api/publish", body)
    for part in (whole[:20], whole[:-3], b""):  # a head, a body, nothing (idle)
        c = ApiConn(srv.port)
        t0 = time.monotonic()
        if part:
            c.send(part)
        assert c.closed(timeout=5), part
        assert 0.5 < time.monotonic() - t0 < 4.5
    # a slow client that keeps answering in time is not cut
    c = ApiConn(srv.port)
    for _ in range(3):
        time.sleep(0.5)
        assert c.request("POST", "/api/publish", body).status == 200
    c.close()


def test_bus_unavailable_is_503(start_server, redis):
    srv = api_server(start_server, redis, "--history-size", "5")
    assert call(srv.port, "POST", "/api/publish", {"topic": "a", "payload": 1}).status == 200
    redis.kill()

    def refused():
        r = call(srv.port, "POST", "/api/publish", {"topic": "a", "payload": 1})
        return r if r.status == 503 else None
    r = wait_for("a 503 with Redis down", refused, timeout=10)
    assert r.json() == {"error": "Message bus unavailable, message not published",
                        "code": "bus_unavailable"}
    assert r.header("retry-after") == "1"
    r = call(srv.port, "POST", "/api/broadcast", {"topics": ["a", "b"], "payload": 1})
    assert [x.get("code") for x in r.json()["results"]] == ["bus_unavailable"] * 2
    for method, path, body in (("GET", "/api/history?topic=a", None), ("GET", "/api/topics", None),
                               ("POST", "/api/disconnect", {"sub": "u"})):
        r = call(srv.port, method, path, body)
        assert (r.status, r.json()["code"]) == (503, "bus_unavailable"), (path, r)
    redis.start()
    wait_for("publishing again", lambda: call(srv.port, "POST", "/api/publish",
                                              {"topic": "a", "payload": 1}).status == 200,
             timeout=15)


# ---- topics and disconnect, two hosts ----

def test_topics_of_the_whole_cluster(start_server, redis):
    a = api_server(start_server, redis)
    b = api_server(start_server, redis, workers=2)

    async def run():
        on_b = [await ws_connect(b.url) for _ in range(3)]
        for ws in on_b:
            await subscribe(ws, "x.b")
        on_a = await ws_connect(a.url)
        await subscribe(on_a, "y.a")
        await subscribe(on_a, "x.b")

        def listed():
            r = call(a.port, "GET", "/api/topics", headers=AUTH)
            assert r.status == 200, r
            t = r.json()["topics"]
            return t if [x["topic"] for x in t] == ["x.b", "y.a"] else None
        t = await wait_for_async("both topics listed", lambda: listed())
        assert t == [{"topic": "x.b", "subscribers_here": 1}, {"topic": "y.a", "subscribers_here": 1}]
        r = call(b.port, "GET", "/api/topics", headers=AUTH)
        assert r.json()["topics"] == [{"topic": "x.b", "subscribers_here": 3},
                                      {"topic": "y.a", "subscribers_here": 0}]
        for ws in on_b + [on_a]:
            await ws.close()

    asyncio.run(run())


def token(sub):
    return make_jwt({"sub": sub, "subscribe": ["*"], "publish": ["*"]}, SECRET)


def test_disconnect_reaches_the_other_host(start_server, redis):
    a = api_server(start_server, redis, "--jwt-secret", SECRET)
    b = api_server(start_server, redis, "--jwt-secret", SECRET)

    async def run():
        await wait_for_async("control subscriptions",
                             lambda: redis.numsub(".tidings.all") == 2)
        alice = [await ws_connect(f"{h.url}?token={token('alice')}") for h in (b, b, a)]
        bob = await ws_connect(f"{b.url}?token={token('bob')}")
        for ws in alice + [bob]:
            await subscribe(ws, "news")
        # one topic first: alice leaves news everywhere, stays connected
        r = await asyncio.to_thread(call, a.port, "POST", "/api/disconnect",
                                    {"sub": "alice", "topic": "news"})
        assert (r.status, r.json()) == (200, {"sub": "alice", "topic": "news"}), r
        for ws in alice:
            assert await recv_json(ws) == {"status": "unsubscribed", "topic": "news",
                                           "reason": "revoked"}
        # then the whole user
        r = await asyncio.to_thread(call, a.port, "POST", "/api/disconnect", {"sub": "alice"})
        assert (r.status, r.json()) == (200, {"sub": "alice"}), r
        for ws in alice:
            assert await expect_close(ws) == 4403
            assert ws.close_reason == "revoked"
        await bob.send(json.dumps({"type": "ping"}))
        assert await recv_json(bob) == {"type": "pong"}
        await bob.close()

    asyncio.run(run())


# ---- options ----

def test_api_listen_serves_the_api_apart(start_server, redis):
    port = free_port()
    srv = api_server(start_server, redis, "--api-listen", f"127.0.0.1:{port}", workers=2)
    body = {"topic": "a", "payload": 1}
    assert call(port, "POST", "/api/publish", body).status == 200
    r = wsraw.http_exchange(srv.port, req("POST", "/api/publish", body))
    assert r.status == 404, r
    # the public port still speaks WebSocket
    with wsraw.RawWS.open(srv.port) as ws:
        ws.subscribe("a")


def test_api_key_file(start_server, redis, tmp_path):
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    srv = start_server(args=["--redis", redis.url, "--api-key-file", str(f)])
    assert call(srv.port, "POST", "/api/publish", {"topic": "a", "payload": 1}).status == 200
    assert KEY not in srv.log_text()


@pytest.mark.parametrize("args", [
    ["--api-key", "short"],
    ["--api-key", ""],
    ["--api-key", KEY, "--api-key-file", "/dev/null"],
    ["--api-listen", "127.0.0.1:1"],
    ["--api-key", KEY, "--api-listen", "nonsense"],
])
def test_bad_api_options_are_refused(args):
    line = check_refused(run_tidings(["--workers", "1", "--port", str(free_port()), *args]))
    assert "short" not in line.replace("shorter", "") and KEY not in line


def test_short_key_file_is_refused(tmp_path):
    f = tmp_path / "key"
    f.write_text("tooshort\n")
    line = check_refused(run_tidings(["--workers", "1", "--port", str(free_port()),
                                      "--api-key-file", str(f)]))
    assert "tooshort" not in line


def test_metrics_count_requests(start_server, redis):
    srv = api_server(start_server, redis)
    for _ in range(3):
        call(srv.port, "POST", "/api/publish", {"topic": "a", "payload": 1})
    call(srv.port, "POST", "/api/publish", {"topic": "a", "payload": 1}, JSON_CT)
    call(srv.port, "GET", "/api/nope", headers=AUTH)
    m = srv.wait_metrics("api counters", lambda m: m.value(
        "tidings_api_requests_total", endpoint="publish", status="200") == 3)
    assert m.value("tidings_api_requests_total", endpoint="publish", status="401") == 1
    assert m.value("tidings_api_requests_total", endpoint="other", status="404") == 1
    assert m.value("tidings_api_requests_total", endpoint="topics", status="200") == 0
