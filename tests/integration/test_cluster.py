"""The multi-host deployment, end to end: deploy/cluster.sh brings up two
tidings hosts, Redis (deploy/redis-pubsub.conf) and HAProxy (the top-level
haproxy.cfg) in network namespaces; clients enter through HAProxy from the
edge namespace (tests/integration/cluster_client.py run with ip netns exec).

Needs root and network namespaces.  Nothing here is skipped: without them
the tests fail and say why.  Every test gets its own cluster (namespace
prefix tid-<pid>-<n>), which is always torn down, and checked gone.
"""
import asyncio
import csv
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CRASH_MARKER, REPO, SANITIZER_MARKERS, RedisCli, server_env
from helpers import note, poll, poll_async, wait_for_async

CLUSTER_SH = REPO / "deploy" / "cluster.sh"
CLIENT = Path(__file__).resolve().with_name("cluster_client.py")
PYTHON = "/usr/bin/python3"
TIDINGS_BIN = os.environ.get("TIDINGS_BIN", str(REPO / "bin" / "tidings"))

_seq = itertools.count(1)


def sh(*args, timeout=60, env=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def netns_names():
    r = sh("ip", "netns", "list", timeout=10)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def pid_running(pid):
    """True while pid exists and is not a zombie (reaped later by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Cluster:
    def __init__(self, prefix, env):
        self.prefix = prefix
        self.env = env

    def __getattr__(self, key):
        try:
            return self.env[key.upper()]
        except KeyError:
            raise AttributeError(key) from None

    def cookie_of(self, server):
        return {self.a_server: self.a_cookie, self.b_server: self.b_cookie}[server]

    def logs(self):
        out = []
        for f in sorted(Path(self.state).glob("*.log")):
            out.append(f"---- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)


@pytest.fixture
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the cluster test must run as root: deploy/cluster.sh creates network "
                    "namespaces (not skipped on purpose; run it as root)")
    for tool in ("ip", "haproxy", "redis-server", "openssl"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found: deploy/install-deps.sh installs it")
    if not os.access(TIDINGS_BIN, os.X_OK):
        pytest.fail(f"{TIDINGS_BIN} is not executable: run make (or set TIDINGS_BIN)")
    prefix = f"tid-{os.getpid()}-{next(_seq)}"
    parent = tempfile.mkdtemp(prefix="tidc-")
    state = os.path.join(parent, "state")
    # without inherited TIDINGS_* variables, which would change the hosts' options
    env = server_env({"TIDINGS_BIN": TIDINGS_BIN, "PYTHON": PYTHON})
    c = None
    try:
        t0 = time.monotonic()
        r = sh(CLUSTER_SH, "up", prefix, state, env=env)
        if r.returncode != 0:
            pytest.fail(f"deploy/cluster.sh up failed with status {r.returncode} (root, network "
                        f"namespaces, haproxy, redis-server needed):\n{r.stdout}\n{r.stderr}")
        info = {}
        for line in Path(state, "cluster.env").read_text().splitlines():
            k, _, v = line.partition("=")
            info[k] = v
        c = Cluster(prefix, info)
        print(f"cluster {prefix} up in {time.monotonic() - t0:.1f}s")
        yield c
    finally:
        problems = []
        if c is not None:
            problems += stop_hosts(c)
            print(c.logs())  # shown by pytest when the test failed
        r = sh(CLUSTER_SH, "down", prefix, state, env=env)
        if r.returncode != 0:
            problems.append(f"cluster.sh down failed ({r.returncode}): {r.stdout}{r.stderr}")
        left = [n for n in netns_names() if n.startswith(prefix + "-")]
        if left:
            problems.append(f"namespaces left behind: {left}")
        if os.path.exists(state):
            problems.append(f"state directory left behind: {state}")
        if c is not None:
            pids = [int(c.env[k]) for k in ("A_PID", "B_PID", "REDIS_PID", "HAPROXY_PID")]
            poll(lambda: not any(map(pid_running, pids)), timeout=3)
            alive = [p for p in pids if pid_running(p)]
            if alive:
                problems.append(f"processes still running after down: {alive}")
        shutil.rmtree(parent, ignore_errors=True)
        assert not problems, "; ".join(problems)


def exit_status(c, host):
    """The exit status host's tidings left in <state>/<host>.rc ("" while
    it runs)."""
    rc = Path(c.state, f"{host}.rc")
    return rc.read_text().strip() if rc.exists() else ""


def stop_hosts(c):
    """SIGTERM to each tidings master still running: each must exit 0, and
    no log may hold a sanitizer report or a crashed worker (with
    TIDINGS_BIN=bin/tidings-asan).  Returns the problems found."""
    problems = []
    for host in ("a", "b"):
        pid = int(c.env[f"{host.upper()}_PID"])
        if pid_running(pid) and not Path(c.state, f"{host}.rc").exists():
            os.kill(pid, signal.SIGTERM)
        status = poll(lambda: exit_status(c, host), timeout=20) or "still running"
        if status != "0":
            problems.append(f"host {host}'s tidings after SIGTERM: exit status {status}")
        log = Path(c.state, f"{host}.log").read_text(errors="replace")
        for marker in SANITIZER_MARKERS + (CRASH_MARKER,):
            if marker in log:
                problems.append(f"{marker!r} in host {host}'s log")
    return problems


class Handshake:
    def __init__(self, headers):
        self.headers = [(k.lower(), v) for k, v in headers]

    def get(self, name):
        return [v for k, v in self.headers if k == name]

    @property
    def server(self):
        v = self.get("x-tidings-server")
        assert len(v) == 1, f"expected one X-Tidings-Server header: {self.headers}"
        return v[0]

    @property
    def cookie(self):
        """The TIDINGS_SRV value HAProxy set in this response, or None."""
        vals = [m.group(1) for v in self.get("set-cookie")
                for m in [re.match(r"\s*TIDINGS_SRV=([^;]*)", v)] if m]
        assert len(vals) <= 1, self.headers
        return vals[0] if vals else None


class Edge:
    """cluster_client.py running inside the edge namespace."""

    def __init__(self, c):
        self.c = c

    async def __aenter__(self):
        self.proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.c.edge_ns, PYTHON, str(CLIENT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return self

    async def __aexit__(self, *exc):
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def call(self, op, **kw):
        """One command to the client; kw["timeout"] is the command's own."""
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), kw.get("timeout", 5) + 15)
        assert line, "cluster_client.py exited (see its stderr above)"
        return json.loads(line)

    async def connect(self, name, cookie=None, tls=False):
        headers = {"Cookie": f"TIDINGS_SRV={cookie}"} if cookie else {}
        url = self.c.wss_url if tls else self.c.ws_url
        r = await self.call("connect", name=name, url=url, headers=headers,
                            cafile=self.c.ca_file)
        assert r["ok"], f"connect {name} via {url} (cookie {cookie}): {r}"
        return Handshake(r["headers"])

    async def send(self, name, msg):
        r = await self.call("send", name=name, json=msg)
        assert r["ok"], r

    async def expect(self, name, want, timeout=5):
        r = await self.call("recv", name=name, timeout=timeout)
        assert r["ok"], f"{name} waiting for {want}: {r}"
        assert r["json"] == want
        return r["json"]

    async def expect_nothing(self, name, timeout=0.3):
        r = await self.call("recv", name=name, timeout=timeout)
        assert r == {"ok": False, "error": "timeout"}, f"{name} got more: {r}"

    async def close(self, name):
        r = await self.call("close", name=name)
        assert r["ok"], r

    async def subscribe(self, name, topic):
        await self.send(name, {"type": "subscribe", "topic": topic})
        await self.expect(name, {"status": "subscribed", "topic": topic})

    async def publish(self, name, topic, payload):
        await self.send(name, {"type": "publish", "topic": topic, "payload": payload})
        await self.expect(name, {"status": "published", "topic": topic})

    async def wait_numsub(self, channel, n, timeout=5):
        """Until n tidings workers hold a Redis subscription to channel."""
        redis = RedisCli(host=self.c.redis_ip, port=6379, netns=self.c.edge_ns)
        await wait_for_async(f"{n} Redis subscribers of {channel}",
                             lambda: redis.numsub(channel) >= n, timeout)

    async def servers(self):
        """{server: (status, last check)} of the backend, from the stats page."""
        r = await self.call("http_get", url=self.c.stats_url + ";csv")
        assert r["ok"] and r["status"] == 200, r
        rows = list(csv.DictReader(io.StringIO(r["body"].lstrip("# "))))
        return {row["svname"]: (row["status"], row["check_status"]) for row in rows
                if row["pxname"] == "tidings_hosts" and row["svname"] not in ("BACKEND", "FRONTEND")}


def test_cluster_is_isolated(cluster):
    """Namespaces only: lo up everywhere, no default route, nothing routable
    out, and the root namespace has no interface, address or route into them."""
    c = cluster
    expected = {c.edge_ns: {"lo", "br0", "va", "vb", "vr"},
                c.a_ns: {"lo", "eth0"}, c.b_ns: {"lo", "eth0"}, c.redis_ns: {"lo", "eth0"}}
    for ns, links in expected.items():
        out = sh("ip", "-n", ns, "-o", "link", "show").stdout
        names = {re.match(r"\d+: ([^:@]+)", line).group(1) for line in out.splitlines()}
        assert names == links, f"{ns}: {out}"
        lo = sh("ip", "-n", ns, "-o", "link", "show", "lo").stdout
        assert re.search(r"<[^>]*\bUP\b", lo), f"lo is down in {ns}: {lo}"
        assert sh("ip", "-n", ns, "route", "show", "default").stdout.strip() == "", ns
        r = sh("ip", "-n", ns, "route", "get", "192.0.2.1")
        assert r.returncode != 0 and "unreachable" in r.stderr, f"{ns} can route out: {r.stdout}"
    net24 = c.net.rsplit(".", 1)[0] + "."
    root_addrs = sh("ip", "-o", "addr", "show").stdout
    root_routes = sh("ip", "route", "show", "table", "all").stdout
    root_links = sh("ip", "-o", "link", "show").stdout
    assert net24 not in root_addrs and net24 not in root_routes
    assert c.prefix not in root_links, f"an interface of the root namespace leads into the cluster: {root_links}"


def test_publish_on_host_b_reaches_subscriber_on_host_a(cluster):
    c = cluster

    async def run():
        async with Edge(c) as e:
            h = await e.connect("sub_a", cookie=c.a_cookie)
            assert h.server == c.a_server
            h = await e.connect("tls_a", cookie=c.a_cookie, tls=True)  # the :443 frontend
            assert h.server == c.a_server
            h = await e.connect("pub_b", cookie=c.b_cookie)
            assert h.server == c.b_server
            await e.subscribe("sub_a", "news")
            await e.subscribe("tls_a", "news")
            await e.wait_numsub("news", 1)  # host A's worker
            await e.publish("pub_b", "news", {"text": "from host B", "n": 1})
            await e.expect("sub_a", note("news", {"text": "from host B", "n": 1}))
            await e.expect("tls_a", note("news", {"text": "from host B", "n": 1}))
            await e.expect_nothing("sub_a")
            await e.expect_nothing("pub_b")

            # and the other way round
            await e.subscribe("pub_b", "back")
            await e.wait_numsub("back", 1)
            await e.publish("sub_a", "back", [1, "two", None])
            await e.expect("pub_b", note("back", [1, "two", None]))

    asyncio.run(run())


def test_sticky_cookie_brings_a_client_back_to_its_host(cluster):
    c = cluster

    async def run():
        async with Edge(c) as e:
            first = await e.connect("first")  # no cookie: balance source picks
            host = first.server
            assert host in (c.a_server, c.b_server)
            assert first.cookie == c.cookie_of(host), first.headers
            await e.close("first")
            for i in range(3):
                h = await e.connect(f"again{i}", cookie=first.cookie)
                assert h.server == host
                assert h.cookie is None  # a valid cookie is not set again
                await e.subscribe(f"again{i}", "sticky")  # a working connection
            # the cookie, not the client's address, decides: the other host's
            # cookie takes this same client there
            other = c.b_server if host == c.a_server else c.a_server
            for i in range(2):
                h = await e.connect(f"other{i}", cookie=c.cookie_of(other))
                assert h.server == other
            # without a cookie, the source hash keeps this address on its host
            h = await e.connect("nocookie")
            assert h.server == host and h.cookie == c.cookie_of(host)

    asyncio.run(run())


def test_host_a_stopping_moves_new_clients_to_host_b(cluster):
    c = cluster

    async def run():
        async with Edge(c) as e:
            assert await e.servers() == {c.a_server: ("UP", "L7OK"), c.b_server: ("UP", "L7OK")}
            h = await e.connect("on_a", cookie=c.a_cookie)
            assert h.server == c.a_server
            h = await e.connect("on_b", cookie=c.b_cookie)
            assert h.server == c.b_server

            os.kill(int(c.a_pid), signal.SIGTERM)  # host A's tidings master drains
            r = await e.call("wait_closed", name="on_a", timeout=10)
            assert r["ok"] and r["code"] == 1001, f"client on host A: {r}"

            t0 = time.monotonic()
            servers = {}

            async def a_down():
                servers.update(await e.servers())
                return servers[c.a_server][0] == "DOWN"
            await wait_for_async(lambda: f"HAProxy to see host A down: {servers}", a_down,
                                 timeout=10, interval=0.2)
            print(f"health check noticed host A down after {time.monotonic() - t0:.1f}s")
            assert servers[c.b_server] == ("UP", "L7OK")

            # even with host A's cookie, new clients land on host B, which
            # hands out its own cookie instead
            h = await e.connect("was_a", cookie=c.a_cookie)
            assert h.server == c.b_server and h.cookie == c.b_cookie, h.headers
            h = await e.connect("fresh")
            assert h.server == c.b_server and h.cookie == c.b_cookie, h.headers

            await e.subscribe("was_a", "after")
            await e.subscribe("fresh", "after")
            await e.wait_numsub("after", 1)
            await e.publish("on_b", "after", {"still": "working"})
            await e.expect("was_a", note("after", {"still": "working"}))
            await e.expect("fresh", note("after", {"still": "working"}))

        # host A's master exited, with status 0
        status = await poll_async(lambda: exit_status(c, "a"), timeout=15)
        assert status == "0", "host A's tidings did not exit 0"
        assert not pid_running(int(c.a_pid))

    asyncio.run(run())
