"""The Redis function library "tidings" (redis/history.lua) against a real
redis-server: offsets, the PUBLISH envelope, epochs across deletion, expiry
and restarts, exact trimming, history reads, replicas, prefixes and the
baked-in defaults.

The library text is what the server loads: bin/unit/test_history_lib
--print renders it with redis/history_lib.c from the embedded template.
Everything here is self-contained (its own redis-server and RESP client).

    /usr/bin/python3 -m pytest -q tests/integration/test_history_redis.py
"""
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Redis

REPO = Path(__file__).resolve().parents[2]
LIBTOOL = REPO / "bin" / "unit" / "test_history_lib"
ENVELOPE_TAG = b"\0tdg1:"


def wait_for(what, cond, timeout=10.0):
    """Polls cond() until it is true; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- a minimal RESP2 client: binary-safe, which redis-cli is not ----

class RespError(Exception):
    pass


class Resp:
    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, int):
                a = str(a).encode()
            elif isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise AssertionError(f"bad RESP line {line!r}")

    def call(self, *args):
        self.send(*args)
        r = self.read()
        if isinstance(r, RespError):
            raise r
        return r


class RedisServer(Redis):
    """conftest's Redis (killable with SIGKILL, a crash, and started again on
    the same port and directory) with a binary-safe connection of its own,
    which redis-cli is not."""

    def __init__(self, tmp_path, *extra):
        super().__init__(tmp_path, *[str(a) for a in extra])
        self.conn = None

    def start(self):
        super().start()  # once it answers PONG (not -LOADING)
        self.conn = Resp(self.port)

    def kill(self):
        if self.conn:
            self.conn.close()
            self.conn = None
        super().kill()

    def restart(self):
        self.kill()
        self.start()

    def call(self, *args):
        return self.conn.call(*args)

    def client(self):
        return Resp(self.port)


@pytest.fixture(scope="module")
def library():
    """library(prefix, maxlen, ttl) -> the text the server would load."""
    subprocess.run(["make", "-s", "-C", str(REPO), "bin/unit/test_history_lib"],
                   check=True, capture_output=True, timeout=300)
    cache = {}

    def gen(prefix="", maxlen=1000, ttl=3600):
        key = (prefix, maxlen, ttl)
        if key not in cache:
            cache[key] = subprocess.run(
                [str(LIBTOOL), "--print", prefix, str(maxlen), str(ttl)],
                check=True, capture_output=True, timeout=30).stdout
        return cache[key]

    return gen


@pytest.fixture
def redis(tmp_path):
    r = RedisServer(tmp_path)
    r.start()
    yield r
    r.kill()


def load(r, text):
    assert r.call("FUNCTION", "LOAD", "REPLACE", text) == b"tidings"


def publish(r, chan, payload, *limits):
    o, e = r.call("FCALL", "tidings_publish", 1, chan, payload, *limits)
    return o, e


def history(r, chan, since=0, limit=1000, ro=True):
    reply = r.call("FCALL_RO" if ro else "FCALL", "tidings_history", 1, chan, since, limit)
    epoch, top, first, rest = reply[0], reply[1], reply[2], reply[3:]
    msgs = [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]
    return epoch, top, first, msgs


def envelope(offset, epoch, payload):
    return ENVELOPE_TAG + b"%d:%s:%s" % (offset, epoch, payload)


def subscriber(r, *channels):
    c = r.client()
    c.send("SUBSCRIBE", *channels)
    for ch in channels:
        assert c.read() == [b"subscribe", ch.encode(), channels.index(ch) + 1]
    return c


def next_message(c):
    kind, chan, data = c.read()
    assert kind == b"message"
    return chan, data


# ---------------------------------------------------------------------------

def test_offsets_count_up_from_one(redis, library):
    load(redis, library())
    got = [publish(redis, "news", f"m{i}") for i in range(1, 4)]
    assert [o for o, _ in got] == [1, 2, 3]
    epoch = got[0][1]
    assert all(e == epoch for _, e in got), "the epoch is stable across publishes"
    assert 0 < len(epoch) <= 32 and b":" not in epoch
    assert redis.call("HGETALL", "{news}:meta") == [b"e", epoch, b"o", b"3"]
    assert history(redis, "news") == (epoch, 3, 1, [(1, b"m1"), (2, b"m2"), (3, b"m3")])
    # the stream's ids are the offsets
    assert [e[0] for e in redis.call("XRANGE", "{news}:hist", "-", "+")] == [b"1-0", b"2-0", b"3-0"]
    # topics are independent
    o, e = publish(redis, "other", "x")
    assert o == 1 and e != epoch


def test_envelope_is_byte_exact(redis, library):
    load(redis, library())
    sub = subscriber(redis, "bin")
    payloads = [
        b"hello",
        b"",
        b":",
        b"a:b::c:",
        b"\0",
        b"\0tdg1:9:fake:\0\r\n$5\r\n",
        bytes(range(256)) * 240,  # 60 KiB, every byte value
        os.urandom(60 * 1024),
    ]
    sent = []
    for p in payloads:
        o, e = publish(redis, "bin", p)
        sent.append((o, e, p))
        chan, data = next_message(sub)
        assert chan == b"bin"
        assert data == envelope(o, e, p)
    sub.close()
    epoch, top, first, msgs = history(redis, "bin")
    assert (top, first) == (len(payloads), 1)
    assert msgs == [(o, p) for o, _, p in sent]


def test_epoch_changes_after_del(redis, library):
    load(redis, library())
    _, e1 = publish(redis, "t", "a")
    publish(redis, "t", "b")
    assert redis.call("DEL", "{t}:meta", "{t}:hist") == 2
    assert history(redis, "t") == (b"", 0, 0, [])
    o, e2 = publish(redis, "t", "c")
    assert (o, e2 != e1) == (1, True)
    # the meta alone gone: the stream left behind is stale and goes too
    publish(redis, "t", "d")
    assert redis.call("DEL", "{t}:meta") == 1
    assert history(redis, "t") == (b"", 0, 0, [])
    o, e3 = publish(redis, "t", "e")
    assert o == 1 and e3 not in (e1, e2)
    assert history(redis, "t") == (e3, 1, 1, [(1, b"e")])


def test_epoch_changes_after_expiry(redis, library):
    load(redis, library())
    _, e1 = publish(redis, "x", "a", 100, 1)
    assert 0 < redis.call("PTTL", "{x}:meta") <= 1000
    assert 0 < redis.call("PTTL", "{x}:hist") <= 1000
    wait_for("the history to expire",
             lambda: redis.call("EXISTS", "{x}:meta", "{x}:hist") == 0, timeout=10)
    assert history(redis, "x") == (b"", 0, 0, [])
    o, e2 = publish(redis, "x", "b", 100, 1)
    assert o == 1 and e2 != e1


def test_each_publish_renews_the_ttl(redis, library):
    load(redis, library())
    publish(redis, "r", "a", 10, 100)
    redis.call("EXPIRE", "{r}:meta", 5)
    redis.call("EXPIRE", "{r}:hist", 5)
    publish(redis, "r", "b", 10, 100)
    assert 95 <= redis.call("TTL", "{r}:meta") <= 100
    assert 95 <= redis.call("TTL", "{r}:hist") <= 100


def test_epoch_changes_after_restart_without_persistence(redis, library):
    load(redis, library())
    for i in range(3):
        _, e1 = publish(redis, "news", f"m{i}")
    redis.restart()  # SIGKILL, no RDB, no AOF: everything is gone
    load(redis, library())
    assert history(redis, "news") == (b"", 0, 0, [])
    o, e2 = publish(redis, "news", "after")
    assert o == 1 and e2 != e1


def test_epoch_survives_restart_with_aof(tmp_path, library):
    r = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    r.start()
    try:
        load(r, library())
        for i in range(1, 4):
            _, e1 = publish(r, "news", f"m{i}")
        r.restart()  # SIGKILL right after the replies: fsync'ed before them
        # the library itself is in the AOF too, and the server reloads it anyway
        assert history(r, "news") == (e1, 3, 1, [(1, b"m1"), (2, b"m2"), (3, b"m3")])
        load(r, library())
        o, e2 = publish(r, "news", "m4")
        assert (o, e2) == (4, e1)
        assert r.call("TTL", "{news}:meta") > 0
    finally:
        r.kill()


def test_maxlen_trims_exactly(redis, library):
    load(redis, library())
    for n in range(1, 13):
        o, epoch = publish(redis, "w", f"m{n}", 5, 100)
        assert o == n
        assert redis.call("XLEN", "{w}:hist") == min(n, 5)
        _, top, first, msgs = history(redis, "w")
        assert (top, first) == (n, max(1, n - 5 + 1))
        assert [m[0] for m in msgs] == list(range(max(1, n - 4), n + 1))
    # a smaller maxlen trims at the next publish
    publish(redis, "w", "m13", 2, 100)
    assert history(redis, "w") == (epoch, 13, 12, [(12, b"m12"), (13, b"m13")])
    # a larger one keeps growing from there
    publish(redis, "w", "m14", 1000, 100)
    assert redis.call("XLEN", "{w}:hist") == 3


def test_history_since_and_limit(redis, library):
    load(redis, library())
    for n in range(1, 11):
        _, epoch = publish(redis, "h", f"m{n}")
    for since in range(0, 13):
        e, top, first, msgs = history(redis, "h", since, 1000)
        assert (e, top, first) == (epoch, 10, 1)
        assert msgs == [(n, b"m%d" % n) for n in range(since + 1, 11)]
    # limit: the oldest ones first
    assert history(redis, "h", 3, 2)[3] == [(4, b"m4"), (5, b"m5")]
    assert history(redis, "h", 0, 1)[3] == [(1, b"m1")]
    assert history(redis, "h", 9, 5)[3] == [(10, b"m10")]
    assert history(redis, "h", 0, 0) == (epoch, 10, 1, [])
    assert history(redis, "h", 10**14, 5) == (epoch, 10, 1, [])
    # since older than what is held: from the oldest held; the caller sees
    # the gap in first_offset_still_held > since + 1
    for _ in range(5):
        publish(redis, "g", "x", 3, 100)
    assert history(redis, "g", 1, 10)[2:] == (3, [(3, b"x"), (4, b"x"), (5, b"x")])
    # nothing there
    assert history(redis, "nope", 0, 10) == (b"", 0, 0, [])
    # FCALL works as well as FCALL_RO
    assert history(redis, "h", 8, 10, ro=False)[3] == [(9, b"m9"), (10, b"m10")]


def test_bad_arguments(redis, library):
    load(redis, library())
    bad = [
        ("FCALL", "tidings_publish", 0, "p"),
        ("FCALL", "tidings_publish", 2, "a", "b", "p"),
        ("FCALL", "tidings_publish", 1, "t"),
        ("FCALL", "tidings_publish", 1, "t", "p", 10),
        ("FCALL", "tidings_publish", 1, "t", "p", 0, 10),
        ("FCALL", "tidings_publish", 1, "t", "p", 10, 0),
        ("FCALL", "tidings_publish", 1, "t", "p", -1, 10),
        ("FCALL", "tidings_publish", 1, "t", "p", "1e3", 10),
        ("FCALL", "tidings_publish", 1, "t", "p", 10, "1.5"),
        ("FCALL", "tidings_publish", 1, "t", "p", 10, 10, "x"),
        ("FCALL", "tidings_publish", 1, "", "p"),
        ("FCALL_RO", "tidings_history", 1, "t", 0),
        ("FCALL_RO", "tidings_history", 1, "t", -1, 10),
        ("FCALL_RO", "tidings_history", 1, "t", 0, "ten"),
        ("FCALL_RO", "tidings_history", 0, 0, 10),
        ("FCALL_RO", "tidings_publish", 1, "t", "p"),  # a write function
    ]
    for args in bad:
        with pytest.raises(RespError):
            redis.call(*args)
    assert redis.call("DBSIZE") == 0


def test_inconsistent_stream_starts_a_new_epoch(redis, library):
    load(redis, library())
    for _ in range(3):
        _, e1 = publish(redis, "c", "old")
    # a hand edit: the meta's offset behind the stream's last id
    redis.call("HSET", "{c}:meta", "o", 1)
    o, e2 = publish(redis, "c", "new")
    assert o == 1 and e2 != e1
    assert history(redis, "c") == (e2, 1, 1, [(1, b"new")])


def test_history_reads_on_a_replica(tmp_path, library):
    # no 5 s wait for more replicas before the first full sync
    primary = RedisServer(tmp_path / "p", "--repl-diskless-sync-delay", 0)
    replica = None  # each RedisServer makes its own directory
    primary.start()
    try:
        load(primary, library())
        for n in range(1, 4):
            _, epoch = publish(primary, "rep", f"m{n}")
        replica = RedisServer(tmp_path / "r", "--replicaof", "127.0.0.1", primary.port)
        replica.start()
        want = (epoch, 3, 1, [(1, b"m1"), (2, b"m2"), (3, b"m3")])

        def synced():
            try:
                return history(replica, "rep", 0, 100) == want
            except RespError:  # the library is not there yet
                return False
        wait_for("the replica to sync", synced)
        with pytest.raises(RespError, match="READONLY"):
            publish(replica, "rep", "no")
    finally:
        if replica:
            replica.kill()
        primary.kill()


def test_loading_again_replaces(redis, library):
    load(redis, library(maxlen=3, ttl=50))
    load(redis, library(maxlen=3, ttl=50))
    for _ in range(4):
        _, epoch = publish(redis, "l", "a")
    assert redis.call("XLEN", "{l}:hist") == 3
    # new defaults; the history and its epoch stay
    load(redis, library(maxlen=5, ttl=70))
    for _ in range(4):
        o, e = publish(redis, "l", "b")
    assert (o, e) == (8, epoch)
    assert redis.call("XLEN", "{l}:hist") == 5
    assert 60 < redis.call("TTL", "{l}:meta") <= 70
    libs = redis.call("FUNCTION", "LIST")
    assert len(libs) == 1
    lib = dict(zip(libs[0][::2], libs[0][1::2]))
    assert lib[b"library_name"] == b"tidings" and lib[b"engine"] == b"LUA"
    funcs = {}
    for f in lib[b"functions"]:
        f = dict(zip(f[::2], f[1::2]))
        funcs[f[b"name"]] = f[b"flags"]
    assert funcs == {b"tidings_publish": [], b"tidings_history": [b"no-writes"],
                     b"tidings_info": [b"no-writes"]}
    # without REPLACE a second load is refused: the server always replaces
    with pytest.raises(RespError, match="already exists"):
        redis.call("FUNCTION", "LOAD", library())


def test_prefix(redis, library):
    load(redis, library(prefix="pre:"))
    sub = subscriber(redis, "news", "pre:news")
    o, e = publish(redis, "pre:news", "hello")
    assert redis.call("KEYS", "*") in ([b"{pre:news}:meta", b"{pre:news}:hist"],
                                       [b"{pre:news}:hist", b"{pre:news}:meta"])
    assert history(redis, "pre:news") == (e, 1, 1, [(1, b"hello")])
    assert history(redis, "news") == (b"", 0, 0, [])
    # the envelope went to pre:news and nothing to news: the marker published
    # after it on news is the next message there
    redis.call("PUBLISH", "news", "marker")
    assert next_message(sub) == (b"pre:news", envelope(o, e, b"hello"))
    assert next_message(sub) == (b"news", b"marker")
    sub.close()
    info = redis.call("FCALL_RO", "tidings_info", 0)
    assert info == [b"version", 1, b"prefix", b"pre:", b"maxlen", 1000, b"ttl", 3600]


def test_hostile_prefix_loads_verbatim(redis, library):
    for prefix in ['a"b\\c', "]] --[[", "x') redis.call('FLUSHALL') --", "{t}", "__TTL__"]:
        load(redis, library(prefix=prefix, maxlen=7, ttl=9))
        info = redis.call("FCALL_RO", "tidings_info", 0)
        assert info == [b"version", 1, b"prefix", prefix.encode(), b"maxlen", 7, b"ttl", 9]
        publish(redis, "k", "v")
    assert redis.call("XLEN", "{k}:hist") == 5


def test_redis_cli_with_baked_defaults(redis, library):
    load(redis, library(maxlen=3, ttl=50))

    def cli(*args):
        return subprocess.run(["redis-cli", "-p", str(redis.port), *args], check=True,
                              capture_output=True, timeout=10, text=True).stdout.split("\n")

    for n in range(1, 6):
        out = cli("FCALL", "tidings_publish", "1", "news", f"hello {n}")
        assert out[0] == str(n) and out[1]
    epoch = out[1].encode()
    assert redis.call("XLEN", "{news}:hist") == 3
    assert 40 < redis.call("TTL", "{news}:hist") <= 50
    assert history(redis, "news") == (epoch, 5, 3, [(3, b"hello 3"), (4, b"hello 4"),
                                                    (5, b"hello 5")])
    out = cli("FCALL_RO", "tidings_history", "1", "news", "4", "10")
    assert out[:5] == [out[0], "5", "3", "5", "hello 5"]


def test_least_privilege_acl_user(redis, library):
    """What docs/history.md tells an ACL user of prefix app1: to allow."""
    base = ["on", ">pw", "resetchannels", "&app1:*", "resetkeys", "~app1:*", "~{app1:*",
            "-@all", "+fcall", "+fcall_ro", "+function|load", "+hget", "+hmget", "+hset",
            "+hincrby", "+del", "+xadd", "+xrange", "+expire", "+publish", "+time"]
    redis.call("ACL", "SETUSER", "app", *base)
    redis.call("ACL", "SETUSER", "appinfo", *base, "+info")
    run_id = [ln for ln in redis.call("INFO", "server").split(b"\r\n")
              if ln.startswith(b"run_id:")][0][7:]
    for user, server_part in (("app", None), ("appinfo", run_id[:12])):
        c = redis.client()
        c.call("AUTH", user, "pw")
        load(c, library(prefix="app1:"))
        o, e = publish(c, "app1:" + user, "hi")
        assert o == 1
        parts = e.split(b"-")
        assert len(parts) == 3 and all(p and p.isalnum() and p == p.lower() for p in parts)
        if server_part:
            assert parts[2] == server_part
        assert history(c, "app1:" + user) == (e, 1, 1, [(1, b"hi")])
        with pytest.raises(RespError, match="NOPERM"):
            publish(c, "app2:news", "no")
        c.close()
