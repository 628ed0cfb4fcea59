"""Fixtures for the integration tests: start the real server on a free
loopback port, wait until it answers, and on teardown stop it and check its
log for sanitizer reports and crashed workers.

    def test_x(start_server):
        srv = start_server(workers=1, args=["--ping-interval", "1"])
        ... srv.url, srv.port, srv.proc, srv.log_text(), srv.worker_pids() ...

The binary is $TIDINGS_BIN (default: bin/tidings-asan of this repository).
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wsraw  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TIDINGS_BIN") or str(REPO / "bin" / "tidings-asan")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0

# Any of these in a server log fails the test that ran the server.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
CRASH_MARKER = "killed by signal"

# Inherited variables that would change the server's options.
_KEEP_ENV = {"TIDINGS_BIN", "TIDINGS_REDIS_SERVER"}


def free_port():
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        time.sleep(0.05)


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
        # every server gets its own admin port (the default 9090 would collide)
        self.admin_port = None
        if not any(str(a).startswith("--admin-listen") for a in args):
            self.admin_port = free_port()
            self.cmd += ["--admin-listen", f"127.0.0.1:{self.admin_port}"]
        self.env = server_env(env)
        self.proc = None
        self._term_sent = False
        self._stopped = False

    # ---- life ----

    def start(self, wait=True, wait_healthy=True):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pgid = self.proc.pid
        if wait:
            self.wait_ready(healthy=wait_healthy)
        return self

    def _probe(self, path):
        try:
            return wsraw.http_get(self.port, path, timeout=1.0).status
        except OSError:
            return None

    def wait_ready(self, timeout=START_TIMEOUT, healthy=True):
        """Waits for 200 on GET /; with healthy, also for GET /healthz to
        answer 200 several times in a row (so that, with some luck, every
        worker's message bus is up)."""
        deadline = time.monotonic() + timeout
        while self._probe("/") != 200:
            if self.proc.poll() is not None:
                pytest.fail(f"tidings exited with status {self.proc.returncode} before "
                            f"answering:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"tidings did not answer GET / within {timeout} s:\n{self.log_text()}")
            time.sleep(0.02)
        if not healthy:
            return
        need = max(3, 2 * (self.workers or 1))
        ok = 0
        while ok < need:
            ok = ok + 1 if self._probe("/healthz") == 200 else 0
            if time.monotonic() > deadline:
                pytest.fail(f"GET /healthz did not answer 200 within {timeout} s:\n"
                            f"{self.log_text()}")
            if ok == 0:
                time.sleep(0.02)

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

    def worker_pids(self):
        """Pids of the master's children that are workers (their environment
        has TIDINGS_WORKER_ID); other children such as an embedded
        redis-server are left out."""
        if not self.running():
            return []
        return sorted(p for p in _children(self.proc.pid)
                      if any(e.startswith(b"TIDINGS_WORKER_ID=") for e in _environ(p)))

    def wait_workers(self, n, timeout=5.0, exclude=()):
        """Waits until n workers run (none of them in `exclude`); returns
        their pids."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) == n:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} workers, have {pids}:\n{self.log_text()}")
            time.sleep(0.05)

    def check_log(self):
        log = self.log_text()
        for marker in SANITIZER_MARKERS:
            assert marker not in log, f"{marker!r} in the server log:\n{log}"
        if not self.expect_worker_crash:
            assert CRASH_MARKER not in log, f"a worker was killed:\n{log}"


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
def start_server(request, tmp_path):
    """Factory: start_server(workers=1, args=[...], env={...}, port=None,
    port_arg=True, wait=True, wait_healthy=True) -> a running Server.
    Every server is stopped on teardown and its log checked."""
    servers = []
    request.node._tidings_servers = servers

    def start(workers=1, args=(), env=None, port=None, port_arg=True, wait=True,
              wait_healthy=True):
        srv = Server(tmp_path, f"tidings-{len(servers)}", workers=workers, args=args, env=env,
                     port=port, port_arg=port_arg)
        servers.append(srv)
        return srv.start(wait=wait, wait_healthy=wait_healthy)

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
