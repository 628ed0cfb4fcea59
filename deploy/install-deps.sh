#!/bin/sh
# Installs, from Debian's packages, whatever the build and the test suite
# need and the machine lacks.  Run as root.  Safe to run again.
set -eu
PKGS="build-essential pkg-config libuv1-dev libwslay-dev libhiredis-dev libjansson-dev
zlib1g-dev libjwt-dev libssl-dev libcmocka-dev redis-server redis-tools haproxy iproute2
openssl procps python3 python3-websockets python3-pytest curl"
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
# Debian starts a system redis-server on install where systemd runs; the
# embedded and test servers use their own sockets and ports, so it is left alone.
