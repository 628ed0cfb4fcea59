"""Options: --help, bad values, the port check, environment variables."""
import asyncio
import json
import socket

import pytest

from conftest import free_port, run_tidings
from helpers import (assert_serves, check_refused, expect_close, recv_json, request, run,
                     subscribe, ws_connect)

OPTIONS = ["--bind", "--port", "--workers", "--ping-interval", "--max-message-size",
           "--max-subscriptions", "--echo-path", "--log-level", "--shutdown-grace",
           "--handshake-timeout", "--redis", "--redis-prefix", "--proxy-protocol"]


def test_help():
    r = run_tidings(["--help"])
    assert r.returncode == 0, r
    for opt in OPTIONS:
        assert opt in r.stdout, f"{opt} missing from --help:\n{r.stdout}"
        env = "TIDINGS_" + opt[2:].upper().replace("-", "_")
        assert env in r.stdout, f"{env} missing from --help:\n{r.stdout}"
    assert r.stderr == ""


BAD_ARGS = [
    ("port-too-big", ["--port", "70000"]),
    ("port-not-a-number", ["--port", "abc"]),
    ("port-zero", ["--port", "0"]),
    ("port-negative", ["--port", "-1"]),
    ("port-trailing-garbage", ["--port", "80x"]),
    ("port-empty", ["--port", ""]),
    ("port-missing-value", ["--port"]),
    ("workers-negative", ["--workers", "-1"]),
    ("workers-not-a-number", ["--workers", "two"]),
    ("unknown-option", ["--nope"]),
    ("unknown-option-with-value", ["--nope=1"]),
    ("positional-argument", ["stray"]),
    ("single-dash", ["-p", "80"]),
    ("echo-path-without-slash", ["--echo-path", "noslash"]),
    ("echo-path-root", ["--echo-path", "/"]),
    ("ping-interval-zero", ["--ping-interval", "0"]),
    ("max-message-size-bad-suffix", ["--max-message-size", "12q"]),
    ("max-message-size-negative", ["--max-message-size", "-1k"]),
    ("max-subscriptions-zero", ["--max-subscriptions", "0"]),
    ("log-level-unknown", ["--log-level", "loud"]),
    ("shutdown-grace-negative", ["--shutdown-grace", "-5"]),
    ("handshake-timeout-zero", ["--handshake-timeout", "0"]),
    ("proxy-protocol-bad-bool", ["--proxy-protocol=maybe"]),
    ("bind-not-an-address", ["--bind", "not an address"]),
    ("redis-bad-url", ["--redis", "http://localhost"]),
]


@pytest.mark.parametrize("args", [b[1] for b in BAD_ARGS], ids=[b[0] for b in BAD_ARGS])
def test_bad_option_is_refused(args):
    # a usable port and one worker, so that an accepted bad value would
    # start a server (and fail the test by not exiting)
    base = ["--bind", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
    check_refused(run_tidings(base + args, timeout=10))


@pytest.mark.parametrize("env", [{"TIDINGS_PORT": "70000"}, {"TIDINGS_WORKERS": "-1"},
                                 {"TIDINGS_MAX_MESSAGE_SIZE": "big"},
                                 {"TIDINGS_ECHO_PATH": "echo"}],
                         ids=["port", "workers", "max-message-size", "echo-path"])
def test_bad_environment_value_is_refused(env):
    r = run_tidings(["--bind", "127.0.0.1", "--workers", "1"], env=env, timeout=10)
    line = check_refused(r)
    name = list(env)[0]
    option = "--" + name[len("TIDINGS_"):].lower().replace("_", "-")
    assert name in line or option in line, line


def test_port_in_use_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_tidings(["--bind", "127.0.0.1", "--port", str(port), "--workers", "1"],
                        timeout=10)
        line = check_refused(r)
        assert str(port) in line, line


def test_port_in_use_by_another_tidings_is_refused(start_server):
    srv = start_server(workers=1)
    r = run_tidings(["--bind", "127.0.0.1", "--port", str(srv.port), "--workers", "1"],
                    timeout=10)
    check_refused(r)
    assert_serves(srv)


def test_port_from_environment(start_server):
    port = free_port()
    srv = start_server(workers=1, env={"TIDINGS_PORT": str(port)}, port=port, port_arg=False)
    assert "--port" not in srv.cmd
    assert_serves(srv)


def test_options_from_environment_and_command_line_wins(start_server):
    srv = start_server(workers=1, env={"TIDINGS_MAX_SUBSCRIPTIONS": "2",
                                       "TIDINGS_ECHO_PATH": "/e"})
    srv2 = start_server(workers=1, env={"TIDINGS_MAX_SUBSCRIPTIONS": "2"},
                        args=["--max-subscriptions", "3"])

    async def main():
        async with ws_connect(srv.url) as ws:
            await subscribe(ws, "a")
            await subscribe(ws, "b")
            assert await request(ws, {"type": "subscribe", "topic": "c"}) == \
                {"error": "Too many subscriptions", "code": "too_many_subscriptions", "topic": "c"}
        async with ws_connect(srv.url + "e") as ws:
            await ws.send("echoed")
            assert await asyncio.wait_for(ws.recv(), 5) == "echoed"
        async with ws_connect(srv2.url) as ws:
            for t in "abc":
                await subscribe(ws, t)
            assert (await request(ws, {"type": "subscribe", "topic": "d"}))["code"] == \
                "too_many_subscriptions"

    run(main())


def test_equals_syntax_and_size_suffixes(start_server):
    srv = start_server(workers=1, args=["--max-message-size=2k", "--max-subscriptions=1"])

    async def main():
        async with ws_connect(srv.url, compression=None) as ws:
            await subscribe(ws, "a")
            assert (await request(ws, {"type": "subscribe", "topic": "b"}))["code"] == \
                "too_many_subscriptions"
            await ws.send(json.dumps({"type": "ping", "pad": "x" * 1900}))
            assert await recv_json(ws) == {"type": "pong"}
            await ws.send(" " * 2049)
            assert await expect_close(ws) == 1009

    run(main())


def test_max_message_size_megabytes(start_server):
    srv = start_server(workers=1, args=["--max-message-size", "1m"])

    async def main():
        async with ws_connect(srv.url, compression=None) as ws:
            head = '{"type":"ping","pad":"'
            msg = head + "x" * ((1 << 20) - len(head) - 2) + '"}'
            assert len(msg) == 1 << 20
            await ws.send(msg)
            assert await recv_json(ws, 15) == {"type": "pong"}
            await ws.send(msg + " ")
            assert await expect_close(ws, 15) == 1009

    run(main())
    assert_serves(srv)


def test_worker_pids_ignores_other_children(start_server):
    """With no --redis the master also runs an embedded redis-server: it
    is a child but not a worker."""
    srv = start_server(workers=2)
    pids = srv.wait_workers(2)
    with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    assert set(pids) <= set(children)


def test_log_level_warn_is_quiet(start_server):
    srv = start_server(workers=1, args=["--log-level", "warn"])
    assert_serves(srv)
    assert srv.stop() == 0
    assert " info " not in srv.log_text(), srv.log_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_admin_listen_off(start_server, log_format):
    """--admin-listen off: no admin listener.  The fixture then tells that
    every worker is ready from their log lines, in either format."""
    srv = start_server(workers=2, args=["--admin-listen", "off", "--log-format", log_format])
    assert srv.admin_port is None
    assert "admin listener" not in srv.log_text()
    assert srv.readiness()[0]
    assert_serves(srv)
