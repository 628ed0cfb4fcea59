"""Helpers of the integration tests: waits for a fact (every wait has a
deadline), asyncio helpers around websockets 10.4 (legacy client API), the
Prometheus text format of the admin /metrics, and the check of a refused
command line."""
import asyncio
import json
import math
import re
import time

import websockets
import websockets.legacy.client

TIMEOUT = 5.0
POLL = 0.05  # how often a wait looks at its fact again


# ---- waiting for a fact ----

def _describe(what):
    return what() if callable(what) else what


def poll(fn, timeout, interval=POLL):
    """Calls fn until it returns something truthy or `timeout` seconds have
    passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last or time.monotonic() > deadline:
            return last
        time.sleep(interval)  # the poll interval of this wait


def wait_for(what, fn, timeout=TIMEOUT, interval=POLL):
    """Calls fn until it returns something truthy; returns that.  On
    timeout, fails naming `what` (a string, or a function giving one) and
    fn's last value."""
    last = poll(fn, timeout, interval)
    if not last:
        raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}: "
                             f"{last!r}")
    return last


async def _call(fn):
    # a plain function may block (a subprocess, an HTTP request): it runs in
    # a thread, so that the event loop keeps answering the server's pings
    if asyncio.iscoroutinefunction(fn):
        return await fn()
    value = await asyncio.to_thread(fn)
    if asyncio.iscoroutine(value):
        value.close()
        raise TypeError(f"{fn!r} returned a coroutine: pass an async def function instead")
    return value


async def poll_async(fn, timeout, interval=POLL):
    """poll() inside an event loop; fn is a coroutine function or a plain
    function (run in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        last = await _call(fn)
        if last or time.monotonic() > deadline:
            return last
        await asyncio.sleep(interval)  # the poll interval of this wait


async def wait_for_async(what, fn, timeout=TIMEOUT, interval=POLL):
    """wait_for() inside an event loop (see poll_async)."""
    last = await poll_async(fn, timeout, interval)
    if not last:
        raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}: "
                             f"{last!r}")
    return last


# ---- WebSocket clients ----

class ClientProtocol(websockets.legacy.client.WebSocketClientProtocol):
    """The client protocol of ws_connect: it also counts the pings it
    answers (pings_answered), the facts behind "the server's heartbeats
    did not cut this client"."""

    pings_answered = 0

    async def pong(self, data=b""):
        # websockets calls pong() for every ping it receives
        self.pings_answered += 1
        await super().pong(data)


def ws_connect(url, **kw):
    """websockets.connect with bounded handshakes and no client pings."""
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 16 << 20)
    kw.setdefault("create_protocol", ClientProtocol)
    return websockets.connect(url, **kw)


async def recv_json(ws, timeout=TIMEOUT):
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), f"expected a text message, got {msg!r}"
    return json.loads(msg)


async def send_json(ws, obj):
    await ws.send(obj if isinstance(obj, str) else json.dumps(obj))


async def request(ws, obj, timeout=TIMEOUT):
    """Sends one message and returns the next message received."""
    await send_json(ws, obj)
    return await recv_json(ws, timeout)


async def subscribe(ws, topic, **extra):
    reply = await request(ws, {"type": "subscribe", "topic": topic, **extra})
    assert reply == {"status": "subscribed", "topic": topic, **extra}, reply
    return reply


async def subscribe_many(ws, topics, **extra):
    """Subscribes ws to every topic, the requests pipelined; returns the
    replies by topic."""
    for t in topics:
        await send_json(ws, {"type": "subscribe", "topic": t, **extra})
    replies = {}
    while len(replies) < len(topics):
        m = await recv_json(ws)
        assert m.get("status") == "subscribed", m
        replies[m["topic"]] = m
    return replies


async def resume(ws, topic, offset, epoch):
    """Subscribes with since {offset, epoch}; asserts the history recovered
    what was missed and returns the reply (the missed messages follow)."""
    reply = await request(ws, {"type": "subscribe", "topic": topic,
                               "since": {"offset": offset, "epoch": epoch}})
    assert reply["status"] == "subscribed" and reply["recovered"] is True, reply
    return reply


def note(topic, payload):
    """The notification of a publish."""
    return {"type": "notification", "topic": topic, "payload": payload}


async def publish_until_published(ws, topic, payload, timeout=15, interval=0.2):
    """Publishes until the reply is "published" rather than the
    bus_unavailable error (each publish waits for its reply), `interval`
    seconds apart.  Returns (publishes sent, the notifications of the
    topic that came in meanwhile: the publisher may be a subscriber)."""
    deadline = time.monotonic() + timeout
    sent, notes = 0, []
    while True:
        reply = await request(ws, {"type": "publish", "topic": topic, "payload": payload})
        sent += 1
        while reply.get("type") == "notification":
            notes.append(reply)
            reply = await recv_json(ws)
        if reply.get("status") == "published":
            return sent, notes
        assert reply.get("code") == "bus_unavailable", reply
        assert time.monotonic() < deadline, f"publishing did not recover in {timeout} s"
        await asyncio.sleep(interval)  # the poll interval of this wait


async def expect_silence(ws, seconds=0.3):
    """Nothing arrives within `seconds`."""
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message: {msg!r}")


async def expect_close(ws, timeout=TIMEOUT):
    """Waits for the connection to close; returns the close code the server
    sent (1006 when it sent none)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def ping_pong(url, **kw):
    """A fresh connection answers a ping request with a pong."""
    async with ws_connect(url, **kw) as ws:
        reply = await request(ws, {"type": "ping"})
        assert reply == {"type": "pong"}, reply


def assert_serves(server):
    """The server still serves a new client (a JSON ping on a fresh
    connection)."""
    asyncio.run(asyncio.wait_for(ping_pong(server.url), 15))


def run(coro, timeout=60):
    """asyncio.run with an overall timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- the command line ----

def check_refused(r):
    """A refused command line (a CompletedProcess of run_tidings): exit
    status 2, exactly one line on stderr starting with "tidings: ", nothing
    started.  Returns that line."""
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr
    assert lines[0].startswith("tidings: "), r.stderr
    assert "started" not in r.stdout + r.stderr
    return lines[0]


# ---- the Prometheus text format (0.0.4), parsed strictly ----

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def prom_float(s):
    """A sample value: a float, +Inf, -Inf or NaN."""
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
                v = prom_float(value)
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
