#!/usr/bin/python3
"""Chaos test: nothing acknowledged is lost or duplicated across faults.

Starts its own redis-server (AOF, appendfsync always, in a temp dir) and two
tidings hosts (two masters, --workers 2 each) against it, with history on;
runs subscribers (spread over both hosts, some of host 1's through a TCP
proxy of this program) and publishers (on both hosts); then, one scenario
after another, injects a fault under load:

  kill9-worker   kill -9 of one worker of host 1 (its master restarts it)
  kill9-redis    kill -9 of redis-server, restarted on the same port and dir
  sighup         SIGHUP of host 2's master (new workers, the old ones drain)
  cut            the proxy cuts the server side of its subscribers'
                 connections mid-stream; each subscriber resumes 2 s later
  sigstop-redis  SIGSTOP of redis-server for 3 s, then SIGCONT

and checks, per subscriber and topic, that every acknowledged message
arrived exactly once and in order (see tests/chaos/README.md).  Prints a
table, writes it as markdown with --report, and exits 1 when any count is
wrong (2 when the run itself could not be carried out).

    /usr/bin/python3 tests/chaos/chaos.py                 # short form
    /usr/bin/python3 tests/chaos/chaos.py --long --report build/chaos.md

The binary is $TIDINGS_BIN (default: bin/tidings-asan of this repository).
Only loopback is used; every wait has a deadline; every process started
here is stopped on exit, also on failure or Ctrl-C.
"""
import argparse
import asyncio
import ctypes
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import websockets
import websockets.exceptions

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = str(REPO / "bin" / "tidings-asan")
LOOPBACK = "127.0.0.1"

# Any of these in a server log fails the run.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")

SCENARIOS = ("kill9-worker", "kill9-redis", "sighup", "cut", "sigstop-redis")

# Scenarios where the brief's self-check (--expect-loss) demands losses: a
# server without history must lose messages there, or the counting is blind.
LOSSY_WITHOUT_HISTORY = ("kill9-worker", "cut")


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """The run could not be carried out (a process did not start, a fact
    did not come true before its deadline)."""


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    # Dies with this program even if it is killed with SIGKILL (the tidings
    # workers die with their master by their own parent-death signal).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_ports(n):
    """n distinct ports that were free a moment ago."""
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def proc_stat(pid):
    """(state, ppid, pgrp) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_in_group(pgid):
    out = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st and st[0] != "Z" and st[2] == pgid:
            out.append(pid)
    return out


def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def worker_pids(master_pid):
    """The master's children that are workers: TIDINGS_WORKER_ID in their
    environment.  {pid: worker id}."""
    out = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if not st or st[0] == "Z" or st[1] != master_pid:
            continue
        for var in environ_of(pid):
            if var.startswith(b"TIDINGS_WORKER_ID="):
                out[pid] = int(var.split(b"=", 1)[1] or 0)
    return out


class Proc:
    """A process started here, in its own process group (its children, the
    tidings workers, are in that group too)."""

    def __init__(self, name, cmd, log_path, env=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path)
        self.env = env
        self.popen = None

    def start(self):
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=_child_setup)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.popen.pid, sig)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace):
        """SIGTERM, up to `grace` seconds for an exit, then SIGKILL; then
        every process left in its group is killed by pid.  Returns the exit
        status (None if it had to be killed) and the pids killed."""
        if self.popen is None:
            return None, []
        status = self.popen.poll()
        if status is None:
            try:
                os.kill(self.popen.pid, signal.SIGCONT)  # a stopped redis cannot exit
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                status = self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
                status = None
        killed = []
        deadline = time.monotonic() + 5
        while True:
            left = pids_in_group(self.popen.pid)
            if not left:
                break
            if time.monotonic() > deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
            time.sleep(0.05)
        return status, killed


async def wait_for(what, pred, timeout, interval=0.05):
    """Polls pred() (a plain or async function) until it is true; raises
    HarnessError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return r
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(interval)


async def http_status(port, path, timeout=1.0):
    """Status code of GET path on 127.0.0.1:port, or None."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


async def redis_cmd(port, *args, timeout=1.0):
    """One RESP command; the first line of the reply (b'+PONG'), or None."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
        req = f"*{len(args)}\r\n" + "".join(f"${len(str(a))}\r\n{a}\r\n" for a in args)
        writer.write(req.encode())
        return (await asyncio.wait_for(reader.readline(), timeout)).rstrip(b"\r\n")
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


class Redis:
    def __init__(self, workdir, port):
        self.port = port
        self.dir = Path(workdir) / "redis"
        self.dir.mkdir()
        self.log_path = Path(workdir) / "redis.log"
        self.proc = None
        self.starts = 0

    def start(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [exe, "--bind", LOOPBACK, "--port", self.port, "--dir", self.dir,
               "--appendonly", "yes", "--appendfsync", "always", "--save", "",
               "--daemonize", "no", "--logfile", ""]
        self.proc = Proc("redis", cmd, self.log_path).start()
        self.starts += 1
        return self

    async def wait_ready(self, timeout=20):
        async def ok():
            if not self.proc.running():
                raise HarnessError(f"redis-server exited with status {self.proc.popen.returncode}")
            return await redis_cmd(self.port, "PING") == b"+PONG"
        await wait_for("redis-server answering PING", ok, timeout)


class Host:
    """One tidings master with its workers."""

    def __init__(self, name, workdir, binary, redis_port, args, workers):
        self.name = name
        self.port, self.admin_port = free_ports(2)
        self.workers = workers
        self.url = f"ws://{LOOPBACK}:{self.port}/"
        cmd = [binary, "--bind", LOOPBACK, "--port", self.port, "--workers", workers,
               "--admin-listen", f"{LOOPBACK}:{self.admin_port}",
               "--redis", f"redis://{LOOPBACK}:{redis_port}", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = Proc(name, cmd, Path(workdir) / f"{name}.log", env)
        self.killed_workers = set()  # pids killed on purpose

    def start(self):
        self.proc.start()
        return self

    @property
    def master_pid(self):
        return self.proc.pid

    def worker_pids(self):
        return worker_pids(self.master_pid)

    async def ready(self):
        """The whole host is ready: /readyz 200 on the admin listener, and
        exactly --workers workers run (none left draining)."""
        if not self.proc.running():
            raise HarnessError(f"{self.name}: tidings exited with status "
                               f"{self.proc.popen.returncode}\n{tail(self.proc.log_text())}")
        return (len(self.worker_pids()) == self.workers
                and await http_status(self.admin_port, "/readyz") == 200)

    async def wait_ready(self, timeout=30):
        await wait_for(f"{self.name} ready (admin /readyz 200, {self.workers} workers)",
                       self.ready, timeout)


def tail(text, n=30):
    return "\n".join(text.splitlines()[-n:])


# ---------------------------------------------------------------- TCP proxy

class Proxy:
    """A TCP proxy in front of one host: clients connect to self.port and
    are relayed to the host.  cut() aborts a connection's server side and
    then its client side (RST, no close frame: an abnormal close)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.pairs = {}  # client's port -> (client writer, server writer)
        self.server = None
        self.port = None
        self.cuts = 0

    async def start(self):
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, creader, cwriter):
        peer = cwriter.get_extra_info("peername")[1]
        try:
            sreader, swriter = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.target_port), 5)
        except (OSError, asyncio.TimeoutError):
            cwriter.transport.abort()
            return
        self.pairs[peer] = (cwriter, swriter)

        async def pump(reader, writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (OSError, ConnectionError):
                pass

        tasks = [asyncio.create_task(pump(creader, swriter)),
                 asyncio.create_task(pump(sreader, cwriter))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # one side ended: pass the end on (after what was read from it)
            for w in (cwriter, swriter):
                if not w.transport.is_closing():
                    w.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.pairs.pop(peer, None)

    def cut(self, client_port):
        pair = self.pairs.get(client_port)
        if not pair:
            return False
        cwriter, swriter = pair
        swriter.transport.abort()  # the server side first
        cwriter.transport.abort()
        self.cuts += 1
        return True

    async def close(self):
        if self.server:
            self.server.close()
            for cw, sw in list(self.pairs.values()):
                cw.transport.abort()
                sw.transport.abort()
            await self.server.wait_closed()


# ---------------------------------------------------------------- clients

WS_OPTS = dict(compression=None, open_timeout=5, close_timeout=2, ping_interval=5,
               ping_timeout=15, max_size=None, max_queue=None)
CLOSED = (websockets.exceptions.ConnectionClosed, OSError, asyncio.TimeoutError,
          websockets.exceptions.InvalidHandshake, websockets.exceptions.InvalidURI)


def backoff(attempt):
    """Jittered exponential backoff: 0.1 s doubling up to 2 s, each drawn
    between half and all of it."""
    cap = min(2.0, 0.1 * (2 ** min(attempt, 5)))
    return random.uniform(cap / 2, cap)


class TopicState:
    __slots__ = ("epoch", "last", "top0", "epoch0", "deliveries", "ids", "rfalse", "announced",
                 "since_sent", "era", "refused", "sub_retries", "marks")

    def __init__(self):
        self.epoch = None        # epoch of the last reply
        self.last = None         # last offset received (or the reply's offset)
        self.top0 = None         # offset of the first subscribe reply
        self.epoch0 = None
        self.deliveries = []     # (publisher, seq, offset, era)
        self.ids = set()         # (publisher, seq) delivered
        self.rfalse = 0          # recovered:false replies
        self.announced = []      # offsets up to which a loss was announced (None: all)
        self.since_sent = False  # the pending subscribe carries "since"
        self.era = 0             # bumped by recovered:false (offsets may start over)
        self.refused = 0         # resumes refused with an error
        self.sub_retries = 0     # subscribes asked again after bus_unavailable
        self.marks = []          # (index into deliveries, event): replies, disconnects


class Subscriber:
    def __init__(self, run, idx, host, url, topics, proxied):
        self.run_ = run
        self.idx = idx
        self.name = f"s{idx}"
        self.host = host
        self.url = url
        self.topics = topics
        self.proxied = proxied
        self.state = {t: TopicState() for t in topics}
        self.ready = False           # every topic subscribed on the current connection
        self.first_ready = asyncio.Event()
        self.stopping = False
        self.ws = None
        self.local_port = None
        self.forced_delay = None     # the next reconnect waits this long (the cut scenario)
        self.disconnects = []        # (time, close code)
        self.resumes = []            # seconds from a disconnect to the last resubscribe reply
        self.problems = []           # protocol deviations seen
        self.missed = 0              # "missed" counts of slow-subscriber drops
        self.task = None

    def problem(self, text):
        if len(self.problems) < 20:
            self.problems.append(text)

    def subscribe_request(self, topic):
        st = self.state[topic]
        req = {"type": "subscribe", "topic": topic, "id": f"sub:{topic}"}
        st.since_sent = st.epoch is not None and st.last is not None
        if st.since_sent:
            req["since"] = {"offset": st.last, "epoch": st.epoch}
        return json.dumps(req)

    async def main(self):
        attempt = 0
        t_disc = None  # when the connection being resumed was lost
        while not self.stopping:
            try:
                ws = await websockets.connect(self.url, **WS_OPTS)
            except CLOSED:
                attempt += 1
                await asyncio.sleep(backoff(attempt))
                continue
            if self.stopping:
                await ws.close()
                break
            self.ws = ws
            self.local_port = ws.transport.get_extra_info("sockname")[1]
            pending = set(self.topics)
            retries = []
            try:
                for t in self.topics:
                    await ws.send(self.subscribe_request(t))
                async for raw in ws:
                    m = json.loads(raw)
                    if m.get("type") == "notification":
                        self.on_notification(m)
                    elif m.get("status") == "subscribed":
                        t = m.get("topic")
                        if t in pending:
                            self.on_subscribed(m)
                            pending.discard(t)
                            if not pending:
                                attempt = 0
                                self.ready = True
                                if t_disc is not None:
                                    self.resumes.append(time.monotonic() - t_disc)
                                    t_disc = None
                                self.first_ready.set()
                        else:
                            self.problem(f"unexpected subscribe reply {raw[:200]}")
                    elif "error" in m and str(m.get("id", "")).startswith("sub:"):
                        t = m["id"][4:]
                        if t in pending:
                            retries.append(asyncio.create_task(self.on_sub_error(ws, t, m)))
                        else:
                            self.problem(f"unexpected subscribe error {raw[:200]}")
                    else:
                        self.problem(f"unexpected message {raw[:200]}")
            except CLOSED:
                pass
            finally:
                for r in retries:
                    r.cancel()
            code = ws.close_code
            self.ws = None
            self.ready = False
            if self.stopping:
                break
            now = time.monotonic()
            if t_disc is None:
                t_disc = now
            self.disconnects.append((now, code))
            for st in self.state.values():
                st.marks.append((len(st.deliveries), f"[closed {code}]"))
            delay = self.forced_delay if self.forced_delay is not None else backoff(attempt)
            self.forced_delay = None
            attempt += 1
            await asyncio.sleep(delay)

    async def on_sub_error(self, ws, topic, m):
        """A subscribe answered with an error.  bus_unavailable (Redis away)
        and internal_error are asked again 0.5 s later, as they were.  Any
        other error to a resume is the server refusing a "since" it handed
        out itself: counted (it fails the run), and the topic is subscribed
        afresh without "since" so that the run goes on; what was missed is
        then counted as lost."""
        st = self.state[topic]
        code = m.get("code")
        self.run_.count_sub_error(code)
        if st.since_sent and code not in ("bus_unavailable", "internal_error"):
            self.run_.refused.append((self.name, topic, st.last, st.epoch, code))
            st.marks.append((len(st.deliveries), f"[resume since {st.last} epoch {st.epoch!r} refused: {code}]"))
            st.epoch = None  # the next request has no "since"
            st.refused += 1
        else:
            st.sub_retries += 1
            if st.sub_retries > 200:
                self.problem(f"subscribe to {topic} failed 200 times, last: {json.dumps(m)[:200]}")
                return
            await asyncio.sleep(0.5)
        try:
            await ws.send(self.subscribe_request(topic))
        except CLOSED:
            pass

    def on_notification(self, m):
        t = m.get("topic")
        st = self.state.get(t)
        if st is None:
            self.problem(f"notification for a topic not subscribed: {t}")
            return
        p = m.get("payload")
        if not isinstance(p, dict) or "p" not in p or "s" not in p:
            self.problem(f"notification with a foreign payload: {json.dumps(m)[:200]}")
            return
        if m.get("missed"):
            self.missed += int(m["missed"])
        off = m.get("offset")
        st.deliveries.append((p["p"], p["s"], off, st.era))
        st.ids.add((p["p"], p["s"]))
        if off is not None:
            st.last = off
        if "epoch" in m:
            # the first message of an epoch names it: a subscriber that
            # subscribed before the topic had any message learns it here
            if off != 1:
                self.problem(f"an epoch on a notification with offset {off}: {json.dumps(m)[:200]}")
            st.epoch = m["epoch"]
        self.run_.delivered += 1

    def on_subscribed(self, m):
        t = m["topic"]
        st = self.state[t]
        epoch, top = m.get("epoch"), m.get("offset")
        rec = m.get("recovered")
        st.marks.append((len(st.deliveries),
                         f"[{'resume since ' + str(st.last) if st.since_sent else 'subscribe'}: "
                         f"top {top}{'' if rec is None else ', recovered ' + str(rec).lower()}]"))
        if st.top0 is None and not st.since_sent:
            st.top0, st.epoch0 = top, epoch
        if epoch is None:
            if st.since_sent:
                self.problem(f"resume reply without epoch: {json.dumps(m)}")
            return
        if st.since_sent:
            if rec is True:
                if epoch != st.epoch:
                    self.problem(f"recovered:true with another epoch ({st.epoch} -> {epoch}) on {t}")
                if isinstance(top, int) and top < st.last:
                    self.problem(f"recovered:true with offset {top} below {st.last} on {t}")
                return  # the missed messages follow, then live ones
            if rec is False:
                st.rfalse += 1
                self.run_.rfalse_events.append((self.name, t, st.epoch, st.last, epoch, top))
                # announced lost: up to the new top in the same epoch,
                # everything when the epoch changed
                st.announced.append(top if epoch == st.epoch else None)
                if epoch != st.epoch:
                    st.era += 1
            else:
                self.problem(f"resume reply without \"recovered\": {json.dumps(m)}")
        st.epoch, st.last = epoch, top

    def start(self):
        self.task = asyncio.create_task(self.main())

    async def stop(self):
        self.stopping = True
        ws = self.ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 3)
            except (*CLOSED, asyncio.TimeoutError):
                pass
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Publisher:
    def __init__(self, run, name, host, url, rate, topics, phase):
        self.run_ = run
        self.name = name
        self.host = host
        self.url = url
        self.period = 1.0 / rate
        self.topics = topics
        self.phase = phase
        self.seq = 0
        self.inflight = {}   # seq -> topic
        self.acked = []      # (topic, offset, publisher, seq)
        self.errors = Counter()
        self.unknown = 0     # sent, connection lost before the reply
        self.running = True
        self.ws = None
        self.task = None
        self.problems = []

    async def main(self):
        attempt = 0
        while self.running:
            try:
                ws = await websockets.connect(self.url, **WS_OPTS)
            except CLOSED:
                attempt += 1
                await asyncio.sleep(backoff(attempt))
                continue
            attempt = 0
            self.ws = ws
            reader = asyncio.create_task(self.read(ws))
            next_t = time.monotonic()
            try:
                while self.running and not reader.done():
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_t += self.period
                    if time.monotonic() - next_t > 1.0:  # stalled: no burst to catch up
                        next_t = time.monotonic()
                    self.seq += 1
                    topic = self.topics[(self.seq + self.phase) % len(self.topics)]
                    self.inflight[self.seq] = topic
                    await ws.send(json.dumps({"type": "publish", "topic": topic, "id": self.seq,
                                              "payload": {"p": self.name, "s": self.seq}}))
                if not self.running:
                    # stopped: the replies still due, within a deadline
                    deadline = time.monotonic() + 10
                    while self.inflight and not reader.done() and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    await asyncio.wait_for(ws.close(), 3)
            except (*CLOSED, asyncio.TimeoutError):
                pass
            await asyncio.gather(reader, return_exceptions=True)
            self.ws = None
            self.unknown += len(self.inflight)
            self.inflight.clear()
            if self.running:
                attempt += 1
                await asyncio.sleep(backoff(attempt))

    async def read(self, ws):
        try:
            async for raw in ws:
                m = json.loads(raw)
                seq = m.get("id")
                topic = self.inflight.pop(seq, None)
                if topic is None:
                    if len(self.problems) < 20:
                        self.problems.append(f"reply to nothing in flight: {raw[:200]}")
                    continue
                if m.get("status") == "published":
                    off = m.get("offset")
                    if m.get("topic") != topic:
                        self.problems.append(f"published reply for another topic: {raw[:200]}")
                    self.acked.append((topic, off, self.name, seq))
                else:
                    self.errors[m.get("code", "?")] += 1
        except CLOSED:
            pass

    def start(self):
        self.task = asyncio.create_task(self.main())

    async def stop(self, timeout=15):
        self.running = False
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except asyncio.TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# ---------------------------------------------------------------- the run

class ScenarioRun:
    """Subscribers, publishers and counters of one scenario."""

    def __init__(self, name):
        self.name = name
        self.subs = []
        self.pubs = []
        self.delivered = 0
        self.rfalse_events = []
        self.sub_errors = Counter()
        self.refused = []  # (subscriber, topic, offset, epoch, code) of refused resumes
        self.faults = []  # what was done, for the report
        self.recovery_error = None  # the fault's recovery did not come true

    def count_sub_error(self, code):
        self.sub_errors[code] += 1


class Chaos:
    def __init__(self, opts):
        self.o = opts
        self.binary = os.environ.get("TIDINGS_BIN") or DEFAULT_BIN
        self.workdir = Path(tempfile.mkdtemp(prefix="tidings-chaos-"))
        self.redis = None
        self.hosts = []
        self.proxy = None
        self.rows = []
        self.notes = []
        self.failed = False
        self.server_args = []
        self.history = False
        self.log_marks = {}
        self.cpu = ""

    # ---- start and stop

    def server_options(self):
        help_text = subprocess.run([self.binary, "--help"], capture_output=True, text=True,
                                   timeout=30, stdin=subprocess.DEVNULL).stdout
        args = ["--shutdown-grace", "5"]
        if "--history-size" in help_text:
            self.history = self.o.history_size > 0
            args += ["--history-size", self.o.history_size]
            if "--history-ttl" in help_text:
                args += ["--history-ttl", "3600"]
            per_topic = self.o.rate * self.o.duration / self.o.topics
            if self.history and per_topic > self.o.history_size / 2:
                self.notes.append(f"about {per_topic:.0f} messages per topic and scenario against "
                                  f"--history-size {self.o.history_size}: a long outage could "
                                  f"see its messages trimmed (recovered:false)")
        else:
            self.notes.append("The server has no `--history-size`: run without history "
                              "(plain pub/sub), so losses are expected.")
        if "--drain-window" in help_text:
            args += ["--drain-window", self.o.drain_window]
        else:
            self.notes.append("The server has no `--drain-window`: SIGHUP drains with the "
                              "server's own timing.")
        self.server_args = [str(a) for a in args]

    async def start(self):
        if not os.access(self.binary, os.X_OK):
            raise HarnessError(f"{self.binary} is not executable: run make asan (or set TIDINGS_BIN)")
        self.server_options()
        log(f"binary {self.binary}; work dir {self.workdir}")
        self.redis = Redis(self.workdir, free_port())
        self.redis.start()
        await self.redis.wait_ready()
        for i in (1, 2):
            h = Host(f"host{i}", self.workdir, self.binary, self.redis.port, self.server_args,
                     self.o.workers)
            self.hosts.append(h.start())
        for h in self.hosts:
            await h.wait_ready(timeout=60)
        self.proxy = await Proxy(self.hosts[0].port).start()
        log(f"redis :{self.redis.port}, host1 :{self.hosts[0].port} (admin :{self.hosts[0].admin_port}),"
            f" host2 :{self.hosts[1].port} (admin :{self.hosts[1].admin_port}),"
            f" proxy :{self.proxy.port} -> host1; server options {' '.join(self.server_args)}")

    async def prime(self):
        """--prime: one message to every topic before the first scenario, so
        that every subscribe reply carries a real epoch (see the README)."""
        topics = [f"chaos.t{i:02d}" for i in range(self.o.topics)]
        async with websockets.connect(self.hosts[0].url, **WS_OPTS) as ws:
            for i, t in enumerate(topics):
                await ws.send(json.dumps({"type": "publish", "topic": t, "id": i,
                                          "payload": {"p": "prime", "s": i}}))
            got = 0
            while got < len(topics):
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("status") != "published":
                    raise HarnessError(f"priming the topics: {m}")
                got += 1
        log(f"primed {len(topics)} topics with one message each")

    async def stop(self):
        if self.proxy:
            await self.proxy.close()
            self.proxy = None
        for h in self.hosts:
            status, killed = await asyncio.to_thread(h.proc.stop, 20)
            if h.proc.popen is not None and status != 0:
                self.fail(f"{h.name}: the master did not exit with status 0 after SIGTERM "
                          f"(status {status}; None: it had to be killed)")
            if killed:
                self.fail(f"{h.name}: processes left after the master exited, killed: {killed}")
        if self.redis and self.redis.proc:
            await asyncio.to_thread(self.redis.proc.stop, 10)

    def kill_everything(self):
        """Last resort (an exception, Ctrl-C): every process started here."""
        procs = [h.proc for h in self.hosts] + ([self.redis.proc] if self.redis and self.redis.proc else [])
        for p in procs:
            if p.popen is None:
                continue
            # the leader by pid only while it is not reaped (its pid could be
            # reused afterwards); the rest of its group by group id
            leader = [p.popen.pid] if p.popen.poll() is None else []
            for pid in leader + pids_in_group(p.popen.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while pids_in_group(p.popen.pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def fail(self, text):
        self.failed = True
        self.notes.append(text)
        log("FAIL: " + text)

    # ---- facts

    async def settle(self):
        """Between scenarios: Redis answers, both hosts ready with their
        full set of workers (none draining)."""
        if not self.redis.proc.running():
            raise HarnessError("redis-server is not running")
        await self.redis.wait_ready()
        for h in self.hosts:
            await h.wait_ready()

    def scan_logs(self, scenario):
        """Sanitizer reports and unexpected worker deaths in what the hosts
        logged since the last scan."""
        found = []
        for h in self.hosts:
            text = h.proc.log_text()
            start = self.log_marks.get(h.name, 0)
            self.log_marks[h.name] = len(text)
            for line in text[start:].splitlines():
                if any(mk in line for mk in SANITIZER_MARKERS):
                    found.append(f"{h.name}: sanitizer: {line.strip()}")
                m = re.search(r"worker \d+ \(pid (\d+)\) was killed by signal", line)
                if m and int(m.group(1)) not in h.killed_workers:
                    found.append(f"{h.name}: {line.strip()}")
                m = re.search(r"worker \d+ \(pid \d+\) exited with status (\d+)", line)
                if m and m.group(1) != "0":
                    found.append(f"{h.name}: {line.strip()}")
        for f in found[:20]:
            self.fail(f"{scenario}: {f}")
        return found

    # ---- scenarios

    def make_clients(self, run):
        o = self.o
        topics = [f"chaos.t{i:02d}" for i in range(o.topics)]
        h1, h2 = self.hosts
        for i in range(o.subs):
            host = h1 if i % 2 == 0 else h2
            proxied = host is h1 and (i // 2) % o.proxy_every == 0
            url = f"ws://{LOOPBACK}:{self.proxy.port}/" if proxied else host.url
            mine = sorted({topics[(i + k * 7) % len(topics)] for k in range(o.topics_per_sub)})
            run.subs.append(Subscriber(run, i, host, url, mine, proxied))
        per_pub = o.rate / o.publishers
        for j in range(o.publishers):
            host = h1 if j % 2 == 0 else h2
            run.pubs.append(Publisher(run, f"{host.name}-p{j}", host, host.url, per_pub, topics, j * 5))

    async def fault_kill9_worker(self, run):
        h = self.hosts[0]
        workers = h.worker_pids()
        pid = min(workers, key=lambda p: workers[p])
        h.killed_workers.add(pid)
        os.kill(pid, signal.SIGKILL)
        run.faults.append(f"kill -9 of worker {workers[pid]} (pid {pid}) of host 1")
        log(f"  kill -9 worker {workers[pid]} (pid {pid}) of host1")
        await wait_for("the master restarted the killed worker",
                       lambda: pid not in h.worker_pids() and len(h.worker_pids()) == h.workers, 30)
        await h.wait_ready()

    async def fault_kill9_redis(self, run):
        r = self.redis
        old = r.proc.pid
        r.proc.signal(signal.SIGKILL)
        await asyncio.to_thread(r.proc.popen.wait, 10)
        log(f"  kill -9 redis-server (pid {old}); down for {self.o.redis_down:.1f} s")
        await asyncio.sleep(self.o.redis_down)  # the outage itself, a chosen length
        r.start()
        await r.wait_ready()
        run.faults.append(f"kill -9 of redis-server (pid {old}), restarted after "
                          f"{self.o.redis_down:.1f} s on the same port and dir (pid {r.proc.pid})")
        for h in self.hosts:
            await h.wait_ready()

    async def fault_sighup(self, run):
        h = self.hosts[1]
        old = set(h.worker_pids())
        os.kill(h.master_pid, signal.SIGHUP)
        run.faults.append(f"SIGHUP of host 2's master (old workers {sorted(old)})")
        log(f"  SIGHUP host2 master {h.master_pid}")
        await wait_for("host2's old workers gone, new ones up",
                       lambda: not (set(h.worker_pids()) & old) and len(h.worker_pids()) == h.workers,
                       self.o.drain_window + 40)
        await h.wait_ready()

    async def fault_cut(self, run):
        victims = [s for s in run.subs if s.proxied and s.ws is not None]
        spread = min(1.0, self.o.duration / 4)
        cut = []
        for k, s in enumerate(victims):
            await asyncio.sleep(spread / max(1, len(victims)))
            s.forced_delay = self.o.cut_pause
            if self.proxy.cut(s.local_port):
                cut.append(s)
            else:
                s.forced_delay = None
        run.faults.append(f"proxy cut the server side of {len(cut)} subscribers' connections to "
                          f"host 1 over {spread:.1f} s; each resumed {self.o.cut_pause:.0f} s later")
        log(f"  cut {len(cut)} proxied connections")
        await wait_for("every cut subscriber resumed",
                       lambda: all(len(s.disconnects) > 0 and s.ready for s in cut), 30)

    async def fault_sigstop_redis(self, run):
        r = self.redis
        r.proc.signal(signal.SIGSTOP)
        log(f"  SIGSTOP redis-server for {self.o.redis_stop:.0f} s")
        try:
            await asyncio.sleep(self.o.redis_stop)  # the stop itself, a chosen length
        finally:
            r.proc.signal(signal.SIGCONT)
        run.faults.append(f"SIGSTOP of redis-server for {self.o.redis_stop:.0f} s, then SIGCONT")
        await r.wait_ready()
        for h in self.hosts:
            await h.wait_ready()

    async def run_scenario(self, name):
        o = self.o
        log(f"== {name}")
        await self.settle()
        self.scan_logs(f"before {name}")
        run = ScenarioRun(name)
        self.make_clients(run)
        t0 = time.monotonic()
        try:
            for s in run.subs:
                s.start()
            await wait_for(f"{name}: all {len(run.subs)} subscribers subscribed",
                           lambda: all(s.first_ready.is_set() for s in run.subs), 60)
            # no disconnect so far may count against the fault
            for s in run.subs:
                s.disconnects.clear()
                s.resumes.clear()
            log(f"  {len(run.subs)} subscribers ready in {time.monotonic() - t0:.1f} s")
            t_start = time.monotonic()
            for p in run.pubs:
                p.start()
            await asyncio.sleep(max(1.0, o.duration * 0.25))  # load before the fault
            fault = getattr(self, "fault_" + name.replace("-", "_"))
            t_fault = time.monotonic()
            try:
                await fault(run)
            except HarnessError as e:
                # counted on this row; the next scenario's settle decides
                # whether the run can go on
                run.recovery_error = str(e)
                log(f"  FAULT NOT RECOVERED: {e}")
            t_recovered = time.monotonic()
            # load after the recovery: the rest of the scenario, at least 1.5 s
            await asyncio.sleep(max(1.5, o.duration - (t_recovered - t_start)))
            await asyncio.gather(*(p.stop() for p in run.pubs))
            acked = acked_by_topic(run)
            n_acked = sum(len(v) for v in acked.values())
            log(f"  fault took {t_recovered - t_fault:.1f} s; {n_acked} acknowledged; "
                f"waiting for deliveries")
            t_wait = time.monotonic()
            try:
                await wait_for("every acknowledged message delivered",
                               lambda: self.all_delivered(run, acked), o.deliver_timeout, 0.2)
                log(f"  all delivered {time.monotonic() - t_wait:.1f} s after the publishers stopped")
            except HarnessError:
                log(f"  not all delivered within {o.deliver_timeout:.0f} s")
        finally:
            await asyncio.gather(*(s.stop() for s in run.subs), return_exceptions=True)
            for p in run.pubs:
                if p.task and not p.task.done():
                    p.task.cancel()
                    await asyncio.gather(p.task, return_exceptions=True)
        row = self.check(run)
        if self.o.dump:
            self.dump(run)
        self.scan_logs(name)
        self.rows.append(row)
        log("  " + " ".join(f"{k}={v}" for k, v in row.items() if k != "notes"))
        return row

    # ---- counting

    @staticmethod
    def all_delivered(run, acked):
        for s in run.subs:
            for t in s.topics:
                if not s.state[t].ids >= acked.get(t, {}).keys():
                    return False
        return True

    def check(self, run):
        return count(run)

    def dump(self, run):
        """--dump DIR: the whole story of every subscriber-topic that lost,
        duplicated, reordered or skipped something, one file per scenario."""
        acked = acked_by_topic(run)
        lines = []
        for s in run.subs:
            for t in s.topics:
                st = s.state[t]
                want = acked.get(t, {})
                seen = Counter((p, q) for p, q, _, _ in st.deliveries)
                offs = [o for _, _, o, _ in st.deliveries if o is not None]
                if (want.keys() - seen.keys() or any(c > 1 for c in seen.values())
                        or any(b <= a or b > a + 1 for a, b in zip(offs, offs[1:]))
                        or st.refused or st.rfalse):
                    missing = sorted(o for k, o in want.items() if k not in seen and o is not None)
                    lines.append(f"{s.name} ({s.host.name}{', proxied' if s.proxied else ''}) {t}: "
                                 f"missing {ranges(missing) or '-'}\n  "
                                 f"{story(st, 0, len(st.deliveries))}\n")
        path = Path(self.o.dump) / f"{run.name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines) or "nothing lost, duplicated or reordered\n")

    def row_failed(self, row):
        return row_failed(row)


def story(st, lo, hi):
    """The offsets (or publisher#seq) a subscriber got on a topic from
    delivery lo to hi, with its subscribe replies and disconnects between
    them: what an example in the notes shows."""
    marks = {}
    for i, text in st.marks:
        marks.setdefault(i, []).append(text)
    lo, hi = max(0, lo), min(len(st.deliveries), hi)
    out = ["..."] if lo > 0 else []
    for i in range(lo, hi + 1):
        out += marks.get(i, [])
        if i < hi:
            p, q, off, _ = st.deliveries[i]
            out.append(str(off) if off is not None else f"{p}#{q}")
    if hi < len(st.deliveries):
        out.append("...")
    return " ".join(out)


def ranges(nums):
    """[3, 4, 5, 9] -> '3-5, 9'"""
    out, nums = [], sorted(nums)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def acked_by_topic(run):
    """{topic: {(publisher, seq): offset}} of the acknowledged messages."""
    out = {}
    for p in run.pubs:
        for topic, off, pub, seq in p.acked:
            out.setdefault(topic, {})[(pub, seq)] = off
    return out


def count(run):
    """The scenario's row: what every subscriber should have had, and what
    it got."""
    acked = acked_by_topic(run)
    n_acked = sum(len(v) for v in acked.values())
    notes = []
    # every acknowledged offset of a topic is unique
    reused = 0
    for t, msgs in acked.items():
        offs = Counter(o for o in msgs.values() if o is not None)
        bad = {o: c for o, c in offs.items() if c > 1}
        reused += sum(c - 1 for c in bad.values())
        if bad:
            notes.append(f"{t}: offsets acknowledged for more than one message: {sorted(bad)[:10]}")
    expected = lost = dup = disorder = gaps = announced = unacked_seen = rfalse = missed = 0
    refused = len(run.refused)
    examples = []
    hit = set()  # (subscriber, topic) that lost something
    dup_examples = []
    for s in run.subs:
        missed += s.missed
        for t in s.topics:
            st = s.state[t]
            rfalse += st.rfalse
            want = acked.get(t, {})
            expected += len(want)
            seen = Counter((p, q) for p, q, _, _ in st.deliveries)
            dup_here = sum(c - 1 for c in seen.values() if c > 1)
            dup += dup_here
            if dup_here and len(dup_examples) < 4:
                first = set()
                for i, (p, q, _, _) in enumerate(st.deliveries):
                    if (p, q) in first:
                        break
                    first.add((p, q))
                dup_examples.append(f"e.g. {s.name} ({s.host.name}{', proxied' if s.proxied else ''})"
                                    f" {t}: {dup_here} duplicated: "
                                    f"{story(st, i - 10, i + 4)}")
            unacked_seen += sum(1 for k in seen if k not in want)
            missing = [off for k, off in want.items() if k not in seen]
            if missing and None not in missing and len(examples) < 6 and not st.announced:
                first = min(missing)
                i = next((n for n, d in enumerate(st.deliveries)
                          if d[2] is not None and d[2] > first), len(st.deliveries))
                examples.append(f"e.g. {s.name} ({s.host.name}{', proxied' if s.proxied else ''}) "
                                f"{t}: missing offsets {ranges(missing)}: {story(st, i - 6, i + 4)}")
                hit.add((s.name, t))
            for k, off in want.items():
                if k in seen:
                    continue
                # a loss announced by recovered:false is not silent
                if st.announced and (off is None or any(lim is None or off <= lim
                                                        for lim in st.announced)):
                    announced += 1
                else:
                    lost += 1
                    if off is None and (s.name, t) not in hit and len(examples) < 6:
                        examples.append(f"e.g. {s.name} ({s.host.name}{', proxied' if s.proxied else ''})"
                                        f" {t}: lost {k[0]}#{k[1]} (offset {off})")
                    hit.add((s.name, t))
            # order: offsets strictly increasing within an era, each the
            # acknowledged one; each publisher's sequence increasing
            prev_off, prev_era, last_seq, bad, so_far = None, 0, {}, 0, set()
            for p, q, off, era in st.deliveries:
                if (p, q) in so_far:
                    continue  # a duplicate, counted as such
                so_far.add((p, q))
                if era != prev_era:
                    prev_off, prev_era = None, era
                if off is not None:
                    if prev_off is not None and off <= prev_off:
                        bad += 1
                    elif (p, q) in want and want[(p, q)] is not None and want[(p, q)] != off:
                        bad += 1
                    prev_off = off
                elif p in last_seq and q <= last_seq[p]:
                    bad += 1
                last_seq[p] = max(q, last_seq.get(p, q))
            disorder += bad
            if bad and len(examples) < 8:
                examples.append(f"{s.name} {t}: {bad} out of order / wrong offset")
            # gaps: offsets in (top0, last delivered] that nobody was
            # acknowledged for and that did not arrive either (a message
            # Redis took whose publisher never heard back)
            if st.top0 is not None and st.era == 0 and not st.announced and not st.refused:
                offs = {o for _, _, o, _ in st.deliveries if o is not None}
                if offs:
                    acked_offs = {o for o in want.values() if o is not None}
                    hole = [o for o in range(st.top0 + 1, max(offs) + 1)
                            if o not in offs and o not in acked_offs]
                    gaps += len(hole)
                    if hole and len(examples) < 8:
                        examples.append(f"{s.name} {t}: offsets never delivered (unacknowledged): {hole[:5]}")
            for pr in s.problems[:3]:
                if len(notes) < 30:
                    notes.append(f"{s.name}: {pr}")
    for p in run.pubs:
        for pr in p.problems[:3]:
            notes.append(f"{p.name}: {pr}")
    if reused:
        disorder += reused
    not_acked = sum(sum(p.errors.values()) + p.unknown for p in run.pubs)
    err_codes = Counter()
    for p in run.pubs:
        err_codes.update(p.errors)
    disc = [d for s in run.subs for d in s.disconnects]
    codes = Counter(str(c) for _, c in disc)
    resumes = [r for s in run.subs for r in s.resumes]
    worst = max(resumes) if resumes else None
    reconnecting = [s.name for s in run.subs if len(s.disconnects) > len(s.resumes)]
    if reconnecting:
        notes.append(f"{len(reconnecting)} subscribers had not resumed at the end: "
                     f"{', '.join(reconnecting[:10])}")
    if hit:
        notes.append(f"losses at {len(hit)} of {sum(len(s.topics) for s in run.subs)} "
                     f"subscriber-topics ({len({n for n, _ in hit})} subscribers)")
    notes += examples + dup_examples
    if unacked_seen:
        notes.append(f"{unacked_seen} deliveries of messages whose publisher got no "
                     f"acknowledgement (allowed)")
    if missed:
        notes.append(f"slow-subscriber drops reported (\"missed\"): {missed}")
    if run.sub_errors:
        notes.append(f"subscribe errors: {dict(run.sub_errors)}")
    for name, t, off, ep, code in run.refused[:3]:
        notes.append(f"resume refused: {name} {t} since offset {off} epoch {ep!r}: {code}")
    if run.recovery_error:
        notes.insert(0, f"the fault's recovery did not come true: {run.recovery_error}")
    for ev in run.rfalse_events[:5]:
        notes.append("recovered:false: {} {} had epoch {} offset {}, got epoch {} offset {}".format(*ev))
    row = {
        "scenario": run.name,
        "acked": n_acked,
        "not acked": not_acked,
        "expected": expected,
        "delivered": run.delivered,
        "lost": lost,
        "duplicated": dup,
        "disorder": disorder,
        "gaps": gaps,
        "recovered:false": rfalse,
        "refused": refused,
        "disconnects": len(disc),
        "worst resume": f"{worst:.2f} s" if worst is not None else "-",
        "notes": {"faults": run.faults, "close codes": dict(codes),
                  "publish errors": dict(err_codes), "text": notes,
                  "announced": announced, "resumes": len(resumes),
                  "reconnecting": len(reconnecting), "recovery": run.recovery_error},
    }
    return row


def row_failed(row):
    """What is wrong with a row (empty: nothing)."""
    bad = [k for k in ("lost", "duplicated", "disorder", "gaps", "recovered:false", "refused")
           if row[k]]
    if row["notes"]["recovery"]:
        bad.append("did not recover")
    if row["expected"] == 0:
        bad.append("nothing expected (no message acknowledged)")
    if row["notes"]["reconnecting"]:
        bad.append("subscribers not resumed")
    return bad


# ---------------------------------------------------------------- report

COLUMNS = ("scenario", "acked", "not acked", "expected", "delivered", "lost", "duplicated",
           "disorder", "gaps", "recovered:false", "refused", "disconnects", "worst resume")


def table_text(rows):
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w)
                                  for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in cells])


def table_markdown(rows):
    out = ["| " + " | ".join(COLUMNS) + " |",
           "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(out)


def report_markdown(ch, verdict):
    o = ch.o
    lines = [
        "# Chaos run",
        "",
        f"`tests/chaos/chaos.py` ({'long' if o.long else 'short'} form), "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, binary `{ch.binary}`"
        f"{' (' + ch.git_rev + ')' if ch.git_rev else ''}.",
        "",
        f"Redis with `--appendonly yes --appendfsync always`; two hosts, `--workers {o.workers}` each, "
        f"options `{' '.join(ch.server_args)}`; {o.subs} subscribers on {o.topics} topics "
        f"({o.topics_per_sub} each, half on each host, {len([1 for i in range(o.subs) if i % 2 == 0 and (i // 2) % o.proxy_every == 0])} "
        f"of host 1's through the proxy); {o.publishers} publishers, {o.rate:g} msg/s in all; "
        f"{o.duration:g} s per scenario.",
        "",
        table_markdown(ch.rows),
        "",
        *([f"Not run: {', '.join(s for s in o.scenario_list if s not in [r['scenario'] for r in ch.rows])} "
           f"(the run stopped before them).", ""]
          if len(ch.rows) < len(o.scenario_list) else []),
        "*acked*: publishes answered `published`; *not acked*: answered with an error or never "
        "answered (allowed, not expected anywhere); *expected*: acknowledged messages times their "
        "topic's subscribers; *lost*: expected deliveries that never came (losses announced by "
        "`recovered:false` excluded); *duplicated*: a message delivered again to the same subscriber; "
        "*disorder*: an offset not above the previous one, an offset other than the acknowledged "
        "one, or an offset acknowledged twice; *gaps*: offsets a subscriber skipped that no "
        "publisher had an acknowledgement for (a message Redis took, then never delivered); "
        "*refused*: a resume (`since`) answered with an error other than `bus_unavailable` "
        "(the subscriber then subscribes afresh, and what it missed counts as lost); "
        "*worst resume*: the longest time from a subscriber's disconnect to its last resubscribe "
        "reply (the cut scenario waits 2 s on purpose). Expected: 0 lost, duplicated, disorder, "
        "gaps, recovered:false and refused in every scenario (Redis keeps the history across its restart "
        "with appendfsync always).",
        "",
        f"Verdict: **{verdict}**",
        "",
    ]
    for r in ch.rows:
        n = r["notes"]
        lines.append(f"- **{r['scenario']}**: {'; '.join(n['faults']) or 'no fault injected'}. "
                     f"Disconnect close codes: {n['close codes'] or 'none'}; publish errors: "
                     f"{n['publish errors'] or 'none'}.")
        for t in n["text"]:
            lines.append(f"  - {t}")
    if ch.notes:
        lines += ["", "Notes:", ""] + [f"- {t}" for t in ch.notes]
    if ch.cpu:
        lines += ["", f"The harness itself used {ch.cpu}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="long form: 30 s per scenario")
    ap.add_argument("--duration", type=float, help="seconds of load per scenario "
                    "(default 4, or 30 with --long)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, in order (default: {','.join(SCENARIOS)})")
    ap.add_argument("--report", help="write the table and notes as markdown to this file")
    ap.add_argument("--subs", type=int, default=200)
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--topics-per-sub", type=int, default=3)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200, help="messages/s over all publishers")
    ap.add_argument("--workers", type=int, default=2, help="workers per host")
    ap.add_argument("--proxy-every", type=int, default=5,
                    help="every Nth of host 1's subscribers goes through the proxy")
    ap.add_argument("--history-size", type=int, default=1000)
    ap.add_argument("--drain-window", type=float, default=2)
    ap.add_argument("--cut-pause", type=float, default=2.0)
    ap.add_argument("--redis-down", type=float, default=1.0,
                    help="seconds between the kill -9 of redis-server and its restart")
    ap.add_argument("--redis-stop", type=float, default=3.0, help="seconds of SIGSTOP")
    ap.add_argument("--deliver-timeout", type=float,
                    help="seconds to wait for every acknowledged message after the "
                         "publishers stop (default 10, or 30 with --long)")
    ap.add_argument("--expect-loss", action="store_true",
                    help="self-check against a server without history: pass only if the "
                         f"{' and '.join(LOSSY_WITHOUT_HISTORY)} scenarios report losses "
                         "(lost or recovered:false)")
    ap.add_argument("--prime", action="store_true",
                    help="publish one message to every topic before the first scenario, so "
                         "that no subscriber starts on a topic without an epoch")
    ap.add_argument("--dump", metavar="DIR",
                    help="write the full delivery story of every subscriber-topic with a "
                         "problem to DIR/<scenario>.txt")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) even on success")
    ap.add_argument("--seed", type=int, help="random seed (backoff jitter)")
    o = ap.parse_args(argv)
    if o.duration is None:
        o.duration = 30.0 if o.long else 4.0
    if o.deliver_timeout is None:
        o.deliver_timeout = 30.0 if o.long else 10.0
    o.scenario_list = [s.strip() for s in o.scenarios.split(",") if s.strip()]
    for s in o.scenario_list:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if o.subs < 2 or o.topics < 1 or o.publishers < 1 or o.rate <= 0:
        ap.error("need at least 2 subscribers, 1 topic, 1 publisher and a positive rate")
    o.topics_per_sub = max(1, min(o.topics_per_sub, o.topics))
    return o


async def amain(ch):
    o = ch.o
    # the whole run is bounded too
    budget = 120 + len(o.scenario_list) * (o.duration + o.deliver_timeout + 150)
    await asyncio.wait_for(_run_all(ch), budget)


async def _run_all(ch):
    try:
        await ch.start()
        if ch.o.prime:
            await ch.prime()
        for name in ch.o.scenario_list:
            await ch.run_scenario(name)
    finally:
        await ch.stop()
        ch.scan_logs("shutdown")


def main(argv=None):
    o = parse_args(sys.argv[1:] if argv is None else argv)
    if o.seed is not None:
        random.seed(o.seed)
    t_main = time.monotonic()
    ch = Chaos(o)
    try:
        ch.git_rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        ch.git_rev = ""
    status = 0
    harness_error = None
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(amain(ch))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        harness_error = "interrupted"
    except asyncio.TimeoutError:
        harness_error = "the run exceeded its overall deadline"
    except HarnessError as e:
        harness_error = str(e)
    except Exception as e:  # noqa: BLE001 - reported, then everything is stopped
        import traceback
        traceback.print_exc()
        harness_error = f"{type(e).__name__}: {e}"
    finally:
        ch.kill_everything()
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    if harness_error:
        ch.fail(f"the run did not complete: {harness_error}")
        for h in ch.hosts:
            log(f"---- {h.name} log (tail)\n{tail(h.proc.log_text())}")
        if ch.redis:
            log(f"---- redis log (tail)\n{tail(ch.redis.proc.log_text() if ch.redis.proc else '')}")
        status = 2

    failures = []
    for r in ch.rows:
        bad = ch.row_failed(r)
        if bad:
            failures.append((r["scenario"], bad))
    if o.expect_loss:
        verdict_bad = []
        for name in LOSSY_WITHOUT_HISTORY:
            r = next((r for r in ch.rows if r["scenario"] == name), None)
            if r is None:
                verdict_bad.append(f"{name} did not run")
            elif not (r["lost"] or r["recovered:false"]):
                verdict_bad.append(f"{name} reported no loss: the counting is blind")
        ok = not verdict_bad and not ch.failed and status == 0
        verdict = ("PASS (self-check: losses were found where a server without history must "
                   "lose)" if ok else "FAIL: " + "; ".join(verdict_bad or ["see notes"]))
    else:
        ok = not failures and not ch.failed and status == 0
        verdict = "PASS" if ok else "FAIL: " + "; ".join(
            [f"{s}: {', '.join(b)}" for s, b in failures]
            + ([f"the run did not complete ({harness_error})"] if harness_error else [])
            or ["see notes"])
    if not ok and status == 0:
        status = 1

    print()
    print(table_text(ch.rows) if ch.rows else "(no scenario completed)")
    not_run = [s for s in o.scenario_list if s not in [r["scenario"] for r in ch.rows]]
    if not_run:
        print(f"not run: {', '.join(not_run)}")
    for r in ch.rows:
        n = r["notes"]
        print(f"\n{r['scenario']}: {'; '.join(n['faults'])}")
        print(f"  close codes {n['close codes']}, publish errors {n['publish errors']}")
        for t in n["text"]:
            print(f"  - {t}")
    for t in ch.notes:
        print(f"note: {t}")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    ch.cpu = (f"{ru.ru_utime + ru.ru_stime:.1f} s of CPU in {time.monotonic() - t_main:.0f} s "
              f"(one process, one event loop)")
    print(f"harness: {ch.cpu}")
    print(f"\n{verdict}")
    if o.report:
        Path(o.report).parent.mkdir(parents=True, exist_ok=True)
        Path(o.report).write_text(report_markdown(ch, verdict))
        print(f"report written to {o.report}")
    if ok and not o.keep:
        shutil.rmtree(ch.workdir, ignore_errors=True)
    else:
        print(f"logs kept in {ch.workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
