"""Fixtures for the integration tests: start the real server on a free
loopback port, wait until it is ready (every worker listens and is connected
to Redis), and on teardown stop it and check its log for sanitizer reports
and crashed workers; a redis-server of the test's own.

    def test_x(start_server):
        srv = start_server(workers=1, args=["--ping-interval", "1"])
        ... srv.url, srv.port, srv.proc, srv.log_text(), srv.worker_pids(),
            srv.metrics(), srv.wait_workers(n, exclude=...) ...

The binary is $TIDINGS_BIN (default: bin/tidings-asan of this repository).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wsraw  # noqa: E402
from helpers import POLL, Metrics, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TIDINGS_BIN") or str(REPO / "bin" / "tidings-asan")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0

# Any of these in a server log fails the test that ran the server.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
CRASH_MARKER = "killed by signal"

# Inherited variables that would change the server's options.
_KEEP_ENV = {"TIDINGS_BIN", "TIDINGS_REDIS_SERVER"}


def free_port(avoid=()):
    """A port that was free a moment ago on 127.0.0.1, none of `avoid`
    (ports chosen but not bound yet: the kernel may hand one out again)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def server_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TIDINGS_") or k in _KEEP_ENV}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env.update(extra or {})
    return env


def run_tidings(args, env=None, timeout=20):
    """Runs the binary to completion (option errors, --help) in its own
    process group.  If it is still running after `timeout` seconds (a bad
    option was accepted and a server started), it is stopped and the test
    fails."""
    proc = subprocess.Popen([BIN, *args], env=server_env(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
        _reap_group(proc.pid)
        pytest.fail(f"tidings {args} was still running after {timeout} s:\n{out}\n{err}")
    left = _reap_group(proc.pid)
    assert not left, f"tidings {args} left processes behind: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _pids_in_group(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces; zombies
        # are skipped (nothing can kill them, their parent reaps them)
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def _reap_group(pgid, grace=5.0):
    """Waits up to `grace` seconds for the processes of group `pgid` (workers
    or an embedded Redis orphaned by a killed master) to leave, then kills
    the rest by pid.  Returns the pids that had to be killed."""
    deadline = time.monotonic() + grace
    killed = []
    while True:
        left = [p for p in _pids_in_group(pgid) if p != os.getpid()]
        if not left:
            return killed
        if time.monotonic() > deadline:
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                    killed.append(p)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
        time.sleep(POLL)  # the poll interval of this wait


class Server:
    """One tidings master (and whatever it spawns) in its own process group."""

    def __init__(self, workdir, name, workers=1, args=(), env=None, port=None, port_arg=True):
        self.port = port or free_port()
        self.workers = workers
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.log_path = Path(workdir) / f"{name}.log"
        self.expect_worker_crash = False
        self.cmd = [BIN, "--bind", "127.0.0.1"]
        if port_arg:
            self.cmd += ["--port", str(self.port)]
        if workers is not None:
            self.cmd += ["--workers", str(workers)]
        self.cmd += [str(a) for a in args]
        # every server gets its own admin port (the default 9090 would
        # collide), unless the test chose one (or none) itself
        self.admin_port = None
        if not any(str(a).startswith("--admin-listen") for a in args):
            self.admin_port = free_port(avoid={self.port})
            self.cmd += ["--admin-listen", f"127.0.0.1:{self.admin_port}"]
        self.env = server_env(env)
        self.proc = None
        self._term_sent = False
        self._stopped = False

    # ---- life ----

    def start(self, wait=True):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pgid = self.proc.pid
        if wait:
            self.wait_ready()
        return self

    def readiness(self, pids=None):
        """(ready, why): ready when every worker listens and is connected
        to Redis.  The admin /readyz says so; a server without an admin
        port of ours is judged by what its workers (`pids`, by default all
        running) logged: "listening on", Redis command and subscriber
        connections up (and not lost since)."""
        if self.admin_port:
            try:
                r = self.admin_get("/readyz", timeout=1.0)
            except OSError as e:
                return False, f"admin port {self.admin_port}: {e}"
            return r.status == 200, f"/readyz {r.status}: {r.body.decode(errors='replace').strip()}"
        if pids is None:
            pids = self.worker_pids()
            want = self.workers or os.sysconf("SC_NPROCESSORS_ONLN")
            if len(pids) != want:
                return False, f"{len(pids)} of {want} workers running"
        facts = self.worker_log_facts()
        for pid in pids:
            missing = WORKER_READY - facts.get(pid, set())
            if missing:
                return False, (f"worker pid {pid} has not logged: {', '.join(sorted(missing))} "
                               "(without an admin port the log must be at level info or debug)")
        return True, "every worker logged that it listens and has Redis"

    def wait_ready(self, timeout=START_TIMEOUT):
        """Waits until every worker listens and is connected to Redis (see
        readiness); fails at once if the master exits."""
        why = ["not asked yet"]

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"tidings exited with status {self.proc.returncode} before it was "
                            f"ready:\n{self.log_text()}")
            ok, why[0] = self.readiness()
            return ok
        wait_for(lambda: f"tidings to be ready ({why[0]}):\n{self.log_text()}", ready, timeout)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self):
        """Sends SIGTERM to the master once (stop() will not send another)."""
        if self.running() and not self._term_sent:
            self._term_sent = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM (unless already sent), wait; returns the exit status.
        After `timeout` seconds: SIGKILL and fail.  A master that exits
        while processes it started still run fails too (they are killed)."""
        if self.proc is None:
            return None
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        try:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"tidings did not exit within {timeout} s of SIGTERM:\n"
                            f"{self.log_text()}")
        finally:
            killed = _reap_group(self.pgid)
        assert not killed, (f"processes {killed} outlived the master and had to be killed:\n"
                            f"{self.log_text()}")
        return self.proc.returncode

    # ---- inspection ----

    def log_text(self):
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def worker_log_facts(self):
        """{worker pid: what it has logged about itself and still holds}:
        "listening", "Redis command connection up", "Redis subscriber
        connection up" (text or JSON log lines)."""
        facts = {}
        for line in self.log_text().splitlines():
            pid, msg = _worker_line(line)
            if pid is None:
                continue
            have = facts.setdefault(pid, set())
            if msg.startswith("listening on "):
                have.add("listening")
            elif msg.startswith("shutting down"):
                have.discard("listening")
            m = _REDIS_STATE.match(msg)
            if m:
                fact = f"Redis {m.group(1)} connection up"
                if m.group(2) == "lost":
                    have.discard(fact)
                else:
                    have.add(fact)
        return facts

    def worker_pids(self):
        """Pids of the master's children that are workers (their environment
        has TIDINGS_WORKER_ID); other children such as an embedded
        redis-server are left out."""
        return sorted(self.worker_slot_of())

    def worker_slot_of(self):
        """{pid: slot number} of the running workers (during a reload, a
        slot has an old and a new one)."""
        if not self.running():
            return {}
        out = {}
        for p in _children(self.proc.pid):
            for e in _environ(p):
                if e.startswith(b"TIDINGS_WORKER_ID="):
                    out[p] = int(e.split(b"=", 1)[1])
        return out

    def worker_slots(self):
        """{slot number: pid} of the running workers."""
        return {slot: pid for pid, slot in sorted(self.worker_slot_of().items())}

    def wait_workers(self, n, timeout=START_TIMEOUT, exclude=(), ready=True):
        """Waits until n workers run, none of them in `exclude` (a worker
        just killed, the old ones of a reload) and, with `ready`, the server
        is ready with them (readiness: a replacement listens and has Redis,
        not merely exists); returns their pids."""
        why = [""]

        def check():
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) != n:
                why[0] = f"workers running: {pids}"
                return None
            if ready:
                ok, why[0] = self.readiness(pids if exclude else None)
                if not ok:
                    return None
            return pids
        return wait_for(lambda: f"{n} workers other than {sorted(exclude)}"
                        f"{', ready' if ready else ''} ({why[0]}):\n{self.log_text()}",
                        check, timeout)

    def admin_get(self, path, timeout=5.0):
        assert self.admin_port, "this server has no admin port of the test's"
        return wsraw.http_get(self.admin_port, path, timeout=timeout)

    def metrics(self):
        """The admin /metrics, checked as a scraper would (status, content
        type and length, the connection closed after it), parsed."""
        r = self.admin_get("/metrics")
        assert r.status == 200, r
        assert r.eof, "the admin listener closes after a response"
        assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8", r
        assert int(r.header("content-length")) == len(r.body), r
        return Metrics(r.body.decode("utf-8"))

    def wait_metrics(self, what, cond, timeout=5.0):
        """Scrapes /metrics until cond(the scrape) holds; returns that scrape."""
        return wait_for(what, lambda: (lambda m: m if cond(m) else None)(self.metrics()),
                        timeout)

    def embedded_redis(self):
        """redis-cli for the embedded redis-server (its socket is in the log)."""
        log = self.log_text()
        assert "on unix:" in log, f"no embedded redis-server in the log:\n{log}"
        return RedisCli(sock=log.split("on unix:")[1].split()[0])

    def check_log(self):
        log = self.log_text()
        for marker in SANITIZER_MARKERS:
            assert marker not in log, f"{marker!r} in the server log:\n{log}"
        if not self.expect_worker_crash:
            assert CRASH_MARKER not in log, f"a worker was killed:\n{log}"


WORKER_READY = {"listening", "Redis command connection up", "Redis subscriber connection up"}
_TEXT_WORKER_LINE = re.compile(r"\[(\d+)\] worker \d+: (.*)$")
_REDIS_STATE = re.compile(r"Redis (command|subscriber) connection to \S+ (up|restored|lost)\b")


def _worker_line(line):
    """(pid, message) of a worker's log line, text or JSON; (None, None)
    for other lines."""
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None, None
        if isinstance(obj, dict) and obj.get("worker") and "pid" in obj:
            return obj["pid"], obj.get("msg", "")
        return None, None
    m = _TEXT_WORKER_LINE.search(line)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


class RedisCli:
    """redis-cli against a redis-server on a port (of host, reached from
    network namespace netns when given) or a unix socket."""

    def __init__(self, port=None, sock=None, host="127.0.0.1", netns=None):
        self.port = port
        self.sock = sock
        self.host = host
        self.netns = netns

    def cli(self, *args):
        cmd = ["ip", "netns", "exec", self.netns] if self.netns else []
        cmd += ["redis-cli"] + (["-s", self.sock] if self.sock else
                                ["-h", self.host, "-p", str(self.port)])
        return subprocess.run([*cmd, *args], check=True, capture_output=True,
                              timeout=10).stdout

    def numsub(self, channel):
        """Connections subscribed to `channel`: one per tidings worker with
        local subscribers."""
        return int(self.cli("PUBSUB", "NUMSUB", channel).split()[1])


class Redis(RedisCli):
    """A real redis-server on a loopback port, killable and restartable on
    the same port."""

    def __init__(self, tmp_path, *extra):
        """extra: more redis-server options (e.g. "--appendonly", "yes");
        tmp_path holds its files: give each server of a test its own."""
        super().__init__(port=free_port())
        self.dir = tmp_path
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.proc = None

    def answers_ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.settimeout(0.5)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        """Starts redis-server; returns once it answers PING."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--loglevel", "warning", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            return self.answers_ping()
        wait_for(f"redis-server on port {self.port} to answer PING", up, timeout=10)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for srv in getattr(item, "_tidings_servers", []):
            lines = srv.log_text().splitlines()
            rep.sections.append((f"tidings log {srv.log_path.name} (last 150 lines)",
                                 "\n".join(lines[-150:])))


@pytest.fixture
def redis(tmp_path):
    """A redis-server of the test's own (see Redis), killed on teardown."""
    r = Redis(tmp_path)
    r.start()
    yield r
    r.kill()


@pytest.fixture
def start_server(request, tmp_path):
    """Factory: start_server(workers=1, args=[...], env={...}, port=None,
    port_arg=True, wait=True) -> a running Server, ready (every worker
    listens and has Redis) unless wait=False.  Every server is stopped on
    teardown and its log checked."""
    servers = []
    request.node._tidings_servers = servers

    def start(workers=1, args=(), env=None, port=None, port_arg=True, wait=True):
        srv = Server(tmp_path, f"tidings-{len(servers)}", workers=workers, args=args, env=env,
                     port=port, port_arg=port_arg)
        servers.append(srv)
        return srv.start(wait=wait)

    yield start

    errors = []
    for srv in servers:
        try:
            if not srv._stopped:
                srv.stop()
        except BaseException as e:  # keep stopping the others
            errors.append(e)
    for srv in servers:
        srv.check_log()
    if errors:
        raise errors[0]
