"""The JavaScript client (clients/js/tidings.js) and its route.

- GET/HEAD /tidings.js on the public port: the file of the repository byte
  for byte, its headers (type, ETag, Cache-Control, CORS, nosniff), 304 on
  If-None-Match, 405 for other methods, 404 with --no-client-js.
- clients/js/test/client.test.mjs: the client under `node --test` against
  the real server ($TIDINGS_BIN), with the `ws` package as its WebSocket
  (installed into clients/js/node_modules from the committed lock file by
  `npm ci` when missing).
- tests/browser/client.test.js: a page in Chromium imports /tidings.js
  cross-origin, the test kills its worker with kill -9 and publishes
  meanwhile, and the page ends with every message once, in order.
- the size: minified (esbuild, a devDependency) and gzipped, under 4 KiB.
"""
import gzip
import hashlib
import json
import subprocess

import pytest

import wsraw
from conftest import BIN, REPO
from test_browser import ensure_playwright_core, run_node_test

CLIENT_DIR = REPO / "clients" / "js"
CLIENT_JS = CLIENT_DIR / "tidings.js"
NODE_SUITE = CLIENT_DIR / "test" / "client.test.mjs"
BROWSER_SCRIPT = REPO / "tests" / "browser" / "client.test.js"
NPM_TIMEOUT = 300
NODE_MIN_TESTS = 12   # what client.test.mjs defines
BROWSER_MIN_TESTS = 2  # what client.test.js defines
SIZE_LIMIT = 4096      # bytes, minified + gzipped


def ensure_client_dev_deps():
    """clients/js/node_modules as clients/js/package-lock.json pins it
    (npm ci, only when a pinned version is missing)."""
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text())["packages"]
    for name in ("ws", "esbuild"):
        want = lock[f"node_modules/{name}"]["version"]
        try:
            have = json.loads((CLIENT_DIR / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            have = {}
        if have.get("version") != want:
            break
    else:
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"]
    try:
        r = subprocess.run(cmd, cwd=CLIENT_DIR, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} took over {NPM_TIMEOUT} s:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"


def request(port, method, headers=()):
    head = f"{method} /tidings.js HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers)
    return wsraw.http_exchange(port, (head + "\r\n").encode())


# ---- the route ----

def test_get_serves_the_file_byte_for_byte(start_server):
    srv = start_server()
    want = CLIENT_JS.read_bytes()
    r = request(srv.port, "GET", [("Origin", "https://app.example.com")])
    assert r.status == 200, r
    assert r.eof
    assert r.body == want
    assert int(r.header("content-length")) == len(want)
    assert r.header("content-type") == "application/javascript; charset=utf-8"
    assert r.header("etag") == '"' + hashlib.sha1(want).hexdigest() + '"'
    assert r.header("cache-control") == "public, max-age=300"
    # an ES module imported from a page of another origin is a CORS request
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("x-content-type-options") == "nosniff"


def test_head_and_conditional_get(start_server):
    srv = start_server()
    get = request(srv.port, "GET")
    etag = get.header("etag")
    head = request(srv.port, "HEAD")
    assert head.status == 200 and head.body == b"", head
    for h in ("content-length", "content-type", "etag", "cache-control",
              "access-control-allow-origin"):
        assert head.header(h) == get.header(h), h
    for inm in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        r = request(srv.port, "GET", [("If-None-Match", inm)])
        assert r.status == 304 and r.body == b"", (inm, r)
        assert r.header("etag") == etag
        assert r.header("cache-control") == "public, max-age=300"
        assert r.header("content-length") is None
    r = request(srv.port, "HEAD", [("If-None-Match", etag)])
    assert r.status == 304, r
    for inm in ('"other"', etag[:-2] + '"', "garbage"):
        r = request(srv.port, "GET", [("If-None-Match", inm)])
        assert r.status == 200 and r.body == CLIENT_JS.read_bytes(), (inm, r)


def test_other_methods_405(start_server):
    srv = start_server()
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        r = request(srv.port, method)
        assert r.status == 405, (method, r)
        assert r.header("allow") == "GET, HEAD"


def test_no_client_js_404(start_server):
    srv = start_server(args=["--no-client-js"])
    r = request(srv.port, "GET")
    assert r.status == 404, r
    assert b"tidings" not in r.body
    # the environment variable as every option has
    srv2 = start_server(env={"TIDINGS_NO_CLIENT_JS": "1"})
    assert request(srv2.port, "GET").status == 404


# ---- the client ----

def test_client_size_under_4k():
    ensure_client_dev_deps()
    esbuild = CLIENT_DIR / "node_modules" / ".bin" / "esbuild"
    out = subprocess.run([str(esbuild), str(CLIENT_JS), "--minify", "--format=esm"],
                         capture_output=True, check=True, timeout=60).stdout
    size = len(gzip.compress(out, 9))
    print(f"tidings.js: {CLIENT_JS.stat().st_size} bytes, minified {len(out)}, gzipped {size}")
    assert size < SIZE_LIMIT, size


def test_node_suite_against_the_real_server():
    ensure_client_dev_deps()
    run_node_test(NODE_SUITE, {"TIDINGS_BIN": BIN}, NODE_MIN_TESTS, timeout=300)


def test_chromium_page_resumes_after_kill_9(start_server):
    ensure_playwright_core()
    srv = start_server(workers=1, args=["--history-size", "1000"])
    srv.expect_worker_crash = True  # the test kills the worker
    out = run_node_test(BROWSER_SCRIPT, {
        "TIDINGS_URL": srv.url,
        "TIDINGS_MASTER_PID": str(srv.proc.pid),
        "REDIS_SOCK": srv.embedded_redis().sock,
    }, BROWSER_MIN_TESTS)
    assert "# pass 2" in out
    srv.wait_workers(1)  # the master restarted it
