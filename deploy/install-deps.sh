#!/bin/sh
# Installs, from Debian's packages, whatever the build and the test suite
# need and the machine lacks.  Run as root.  Safe to run again.
set -eu
# clang and libclang-rt-14-dev build the fuzzers; clang-format is what
# `make format-check` (the first step of `make test`) runs.
PKGS="build-essential pkg-config libuv1-dev libwslay-dev libhiredis-dev libjansson-dev
zlib1g-dev libjwt-dev liburing-dev libssl-dev libcmocka-dev redis-server redis-tools haproxy iproute2
openssl procps python3 python3-websockets python3-pytest curl chromium prometheus clang libclang-rt-14-dev
clang-format"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Node.js and npm (the browser test drives Chromium with playwright-core, and
# the benchmark runs the Node servers tidings is compared with).  Some images
# ship NodeSource's nodejs, which conflicts with Debian's npm: install
# Debian's pair only when there is no node at all.
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# The prometheus package starts a service on :9090 where systemd runs, the
# admin port tidings listens on by default; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# Debian starts a system redis-server on install where systemd runs; the
# embedded and test servers use their own sockets and ports, so it is left alone.
