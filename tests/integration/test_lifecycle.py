"""Process life: SIGTERM drains clients with 1001, a killed worker is
replaced without hurting the other worker's clients, server pings cut
clients that do not answer."""
import asyncio
import os
import signal
import time

import pytest
import websockets

import wsraw
from helpers import assert_serves, expect_close, ping_pong, request, run, wait_for_async, ws_connect
from wsraw import OP_CLOSE, OP_PING, RawWS


# ---- workers ----

def test_worker_processes(start_server):
    srv = start_server(workers=3)
    pids = srv.wait_workers(3)
    assert len(set(pids)) == 3 and srv.proc.pid not in pids
    ids = set()
    for p in pids:
        with open(f"/proc/{p}/environ", "rb") as f:
            env = f.read().split(b"\0")
        ids |= {e for e in env if e.startswith(b"TIDINGS_WORKER_ID=")}
    assert ids == {b"TIDINGS_WORKER_ID=1", b"TIDINGS_WORKER_ID=2", b"TIDINGS_WORKER_ID=3"}
    assert_serves(srv)


def test_killed_worker_is_replaced(start_server):
    srv = start_server(workers=2)
    srv.expect_worker_crash = True
    old = srv.wait_workers(2)

    async def main():
        clients = [await ws_connect(srv.url) for _ in range(20)]
        try:
            for i, c in enumerate(clients):
                assert await request(c, {"type": "ping", "id": i}) == {"type": "pong", "id": i}
            victim = old[0]
            os.kill(victim, signal.SIGKILL)
            # a new worker replaces it, and listens
            pids = await asyncio.to_thread(srv.wait_workers, 2, exclude={victim})
            assert old[1] in pids
            # the killed worker's clients lost their connection, the others
            # still answer
            alive = closed = 0
            for i, c in enumerate(clients):
                try:
                    reply = await request(c, {"type": "ping", "id": i}, timeout=3)
                except websockets.ConnectionClosed:
                    closed += 1
                    continue
                assert reply == {"type": "pong", "id": i}
                alive += 1
            assert alive >= 1 and closed >= 1, (alive, closed)
            # new connections work
            for _ in range(10):
                await ping_pong(srv.url)
        finally:
            for c in clients:
                await c.close()

    run(main())
    log = srv.log_text()
    assert any(str(old[0]) in line and "killed by signal" in line for line in log.splitlines()), log
    assert srv.stop() == 0


def test_worker_killed_repeatedly(start_server):
    """The master keeps replacing a worker that keeps dying (with backoff)."""
    srv = start_server(workers=1)
    srv.expect_worker_crash = True
    seen = set()
    for _ in range(3):
        (pid,) = srv.wait_workers(1, exclude=seen)  # running and ready
        seen.add(pid)
        os.kill(pid, signal.SIGKILL)
    srv.wait_workers(1, exclude=seen)
    assert_serves(srv)
    assert srv.stop() == 0


# ---- shutdown ----

def test_sigterm_closes_clients_with_1001(start_server):
    srv = start_server(workers=2)

    async def main():
        clients = [await ws_connect(srv.url) for _ in range(10)]
        for c in clients:
            assert await request(c, {"type": "subscribe", "topic": "t"}) == \
                {"status": "subscribed", "topic": "t"}
        raw = await asyncio.get_running_loop().run_in_executor(None, RawWS.open, srv.port)
        try:
            srv.terminate()
            codes = await asyncio.gather(*(expect_close(c, 10) for c in clients))
            assert codes == [1001] * len(clients)
            code = await asyncio.get_running_loop().run_in_executor(None, raw.expect_close, 10)
            assert code == 1001
        finally:
            raw.close()

    run(main())
    assert srv.stop() == 0
    log = srv.log_text()
    assert "killed by signal" not in log


def test_sigterm_without_clients(start_server):
    srv = start_server(workers=2)
    t0 = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - t0 < 5


def test_sigint_drains_too(start_server):
    srv = start_server(workers=1)

    async def main():
        async with ws_connect(srv.url) as ws:
            srv.proc.send_signal(signal.SIGINT)
            assert await expect_close(ws, 10) == 1001

    run(main())
    srv.proc.wait(15)
    assert srv.proc.returncode == 0


def test_sigterm_with_a_client_that_never_answers_the_close(start_server):
    """The drain waits at most --shutdown-grace seconds."""
    srv = start_server(workers=1, args=["--shutdown-grace", "1"])
    with RawWS.open(srv.port) as ws:
        t0 = time.monotonic()
        srv.terminate()
        fin, op, payload = ws.recv_data(timeout=5)
        assert op == OP_CLOSE and payload[:2] == b"\x03\xe9"  # 1001
        # no answer: the server gives up after the grace period
        ws.wait_eof(8)
        assert srv.stop() == 0
        assert time.monotonic() - t0 < 8


def test_sigterm_during_handshakes(start_server):
    srv = start_server(workers=1)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n"  # incomplete
    before = srv.metrics().total("tidings_received_bytes_total")
    socks = [wsraw.connect(srv.port) for _ in range(5)]
    try:
        for s in socks:
            s.sendall(head)
        srv.wait_metrics("the worker to read the five incomplete heads", lambda m: m.total(
            "tidings_received_bytes_total") - before == 5 * len(head))
        t0 = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - t0 < 5
        for s in socks:
            data, eof = wsraw.read_until_eof(s, 2)
            assert eof
    finally:
        for s in socks:
            s.close()


# ---- heartbeats ----

def test_client_that_never_answers_pings_is_cut(start_server):
    srv = start_server(workers=1, args=["--ping-interval", "1"])
    with RawWS.open(srv.port) as ws:
        t0 = time.monotonic()
        frames = ws.wait_eof(6)
        elapsed = time.monotonic() - t0
    assert elapsed <= 4.0, elapsed
    ops = [op for _, op, _ in frames]
    assert OP_PING in ops, frames
    assert set(ops) <= {OP_PING, OP_CLOSE}, frames
    assert_serves(srv)


def test_client_that_answers_pings_stays(start_server):
    srv = start_server(workers=1, args=["--ping-interval", "1"])

    async def main():
        async with ws_connect(srv.url) as ws:  # websockets answers pings by itself
            # pinged again after answering: the server checked the answer
            # and kept the client; three rounds of that
            await wait_for_async("four server pings answered",
                                 lambda: ws.pings_answered >= 4, timeout=10)
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

    run(main())


def test_raw_client_answering_pings_stays(start_server):
    srv = start_server(workers=1, args=["--ping-interval", "1"])
    with RawWS.open(srv.port) as ws:
        pings = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                fin, op, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
            except wsraw.Timeout:
                break
            assert op == OP_PING, (op, payload)
            pings += 1
            ws.send_frame(wsraw.OP_PONG, payload)
        assert pings >= 2
        ws.send_text('{"type":"ping"}')
        assert ws.recv_data() == (True, wsraw.OP_TEXT, b'{"type":"pong"}')


def test_busy_client_that_ignores_pings_is_cut(start_server):
    """Sending messages is not answering pings."""
    srv = start_server(workers=1, args=["--ping-interval", "1"])
    with RawWS.open(srv.port) as ws:
        t0 = time.monotonic()
        with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
            while time.monotonic() - t0 < 6:
                ws.send_text('{"type":"ping"}')
                ws.recv_data(timeout=2, answer_pings=False)
                time.sleep(0.2)  # paces the client's traffic: busy, yet not answering pings
        assert time.monotonic() - t0 <= 4.5
    assert_serves(srv)


def test_sighup_replaces_workers_and_drains_the_old_ones(start_server):
    """README: SIGHUP starts a new set of workers, then drains the old ones
    (their clients get 1012 "service restart": reconnect and resume); the
    master keeps running."""
    srv = start_server(workers=2)
    old = srv.wait_workers(2)

    async def main():
        clients = [await ws_connect(srv.url) for _ in range(6)]
        for c in clients:
            assert await request(c, {"type": "ping"}) == {"type": "pong"}
        srv.proc.send_signal(signal.SIGHUP)
        codes = await asyncio.gather(*(expect_close(c, 10) for c in clients))
        assert codes == [1012] * len(clients)
        await asyncio.to_thread(srv.wait_workers, 2, exclude=set(old))  # the new ones, ready
        await wait_for_async(f"the old workers {old} to leave",
                             lambda: not set(srv.worker_pids()) & set(old), timeout=10)
        for _ in range(5):
            await ping_pong(srv.url)

    run(main())
    assert srv.running()
    assert srv.stop() == 0
