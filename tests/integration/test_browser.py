"""A real browser against the real server: Debian's Chromium (which offers
permessage-deflate by default), driven by playwright-core from npm, runs
tests/browser/pmd.test.js (node's test runner) against a tidings started
here.  That script checks the negotiation (ws.extensions, the 101 header as
DevTools saw it), that payloads on both sides of --compression-threshold
travel exactly and in order both ways, and, from Chromium's net-log, which
frames went compressed.

Needs /usr/bin/chromium and node/npm (deploy/install-deps.sh installs them);
playwright-core is installed into tests/browser/node_modules from the
committed package-lock.json when missing.  Never downloads a browser.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

BROWSER_DIR = REPO / "tests" / "browser"
SCRIPT = BROWSER_DIR / "pmd.test.js"
CHROMIUM = "/usr/bin/chromium"
THRESHOLD = 256
NPM_TIMEOUT = 300
NODE_TIMEOUT = 240
MIN_TESTS = 6  # what pmd.test.js defines; fewer run means something was lost


def _need(path_or_cmd, what):
    found = os.path.exists(path_or_cmd) if os.path.isabs(path_or_cmd) else shutil.which(path_or_cmd)
    if not found:
        pytest.fail(f"{path_or_cmd} ({what}) is missing: run deploy/install-deps.sh as root",
                    pytrace=False)


def _installed_version():
    try:
        return json.loads((BROWSER_DIR / "node_modules" / "playwright-core" /
                           "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _locked_version():
    lock = BROWSER_DIR / "package-lock.json"
    if not lock.exists():
        return None
    return json.loads(lock.read_text())["packages"]["node_modules/playwright-core"]["version"]


def ensure_playwright_core():
    """Fails (not skips) without Chromium or node; installs playwright-core
    into tests/browser/node_modules as pinned (npm ci from the lock file;
    npm install while there is none) unless that version is there.  Called
    from the tests, not a fixture, so that a missing browser fails the test
    rather than erroring its setup."""
    _need(CHROMIUM, "Debian package chromium")
    _need("node", "Node.js")
    have, want = _installed_version(), _locked_version()
    if have is None or (want is not None and have != want):
        _need("npm", "npm")
        cmd = ["npm", "ci" if want else "install", "--no-audit", "--no-fund", "--prefer-offline"]
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
        try:
            r = subprocess.run(cmd, cwd=BROWSER_DIR, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} took over {NPM_TIMEOUT} s:\n{e.stdout}\n{e.stderr}")
        assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        assert _installed_version(), f"{' '.join(cmd)} did not install playwright-core:\n{r.stdout}"
    return _installed_version()


def run_node_test(script, env_extra, min_tests, timeout=NODE_TIMEOUT):
    """Runs a `node --test` script of tests/browser with Chromium at hand
    and env_extra in its environment; fails (with its output) unless it
    exits 0 having run at least min_tests tests and failed none."""
    env = dict(os.environ, CHROMIUM_BIN=CHROMIUM, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
               **env_extra)
    env.pop("NODE_OPTIONS", None)
    cmd = ["node", "--test", str(Path(script).relative_to(REPO))]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # node and the browser it started
        out, _ = proc.communicate(timeout=10)
        pytest.fail(f"{' '.join(cmd)} still ran after {timeout} s:\n{out}")
    print(f"$ {' '.join(f'{k}={v}' for k, v in env_extra.items())} {' '.join(cmd)}  "
          f"# {time.monotonic() - t0:.1f} s, exit {proc.returncode}\n{out}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out}"
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail) (\d+)$", out, re.M)}
    assert counts.get("fail") == 0 and counts.get("tests", 0) >= min_tests \
        and counts.get("pass") == counts.get("tests"), f"unexpected summary {counts}:\n{out}"
    return out


def run_browser_test(url, expect_pmd):
    return run_node_test(SCRIPT, {"TIDINGS_URL": url, "EXPECT_PMD": "1" if expect_pmd else "0",
                                  "PMD_THRESHOLD": str(THRESHOLD)}, MIN_TESTS)


def test_chromium_negotiates_permessage_deflate(start_server):
    ensure_playwright_core()
    srv = start_server(workers=1, args=["--compression-threshold", str(THRESHOLD)])
    out = run_browser_test(srv.url, expect_pmd=True)
    assert "notifications received compressed" in out


def test_chromium_without_compression(start_server):
    ensure_playwright_core()
    srv = start_server(workers=1, args=["--compression-threshold", str(THRESHOLD),
                                        "--no-compression"])
    run_browser_test(srv.url, expect_pmd=False)
