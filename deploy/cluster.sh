#!/bin/bash
# deploy/cluster.sh - a two-host tidings cluster on one machine, for trying
# out and testing the multi-host setup (haproxy.cfg, deploy/redis-pubsub.conf).
#
#   deploy/cluster.sh up     [PREFIX [STATE_DIR]]
#   deploy/cluster.sh status [PREFIX [STATE_DIR]]
#   deploy/cluster.sh down   [PREFIX [STATE_DIR]]
#
# Four network namespaces, all named PREFIX-*:
#
#   PREFIX-edge   bridge br0 (NET.1), HAProxy with the top-level haproxy.cfg
#                 (ws:// on :80, wss:// on :443 with a self-signed
#                 certificate, stats on 127.0.0.1:8404); run clients here:
#                 ip netns exec PREFIX-edge ...
#   PREFIX-a      host A: tidings --proxy-protocol --workers 1   (NET.11:8080)
#   PREFIX-b      host B: tidings --proxy-protocol --workers 1   (NET.12:8080)
#   PREFIX-redis  redis-server with deploy/redis-pubsub.conf     (NET.20:6379)
#
# Each host namespace is joined to br0 by a veth pair created inside the
# namespaces; the root namespace gets no interface, address or route, and no
# namespace has a default route, so nothing can leave or enter from outside.
# NET is one 10.x.y.0/24 derived from PREFIX (or TIDINGS_CLUSTER_NET=10.x.y);
# its addresses exist only inside the namespaces.
#
# Environment:
#   TIDINGS_CLUSTER_PREFIX  namespace name prefix (default tid-cluster); give
#                           every concurrent cluster its own, e.g. tid-$$
#   TIDINGS_CLUSTER_STATE   state directory: pids, logs, certificate, the
#                           HAProxy admin socket, cluster.env (default
#                           /tmp/PREFIX.cluster)
#   TIDINGS_CLUSTER_NET     first three octets of the /24, e.g. 10.77.3
#   TIDINGS_BIN             the tidings binary (default REPO/bin/tidings)
#   PYTHON                  python3 used for readiness probes (default python3)
#   TIDINGS_*               other tidings options (TIDINGS_SHUTDOWN_GRACE, ...)
#                           reach both hosts
#
# "up" waits until HAProxy reports both hosts UP by a passing health check,
# then writes STATE_DIR/cluster.env (KEY=value lines: namespaces, addresses,
# URLs, server names and cookie values, pids).  If anything fails it prints
# the logs and tears everything down.  "down" stops every process inside the
# namespaces, deletes them and the state directory; it is idempotent.
# Needs root, iproute2, haproxy, redis-server, openssl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMD=${1:-}
PREFIX=${2:-${TIDINGS_CLUSTER_PREFIX:-tid-cluster}}
STATE=${3:-${TIDINGS_CLUSTER_STATE:-${TMPDIR:-/tmp}/$PREFIX.cluster}}
BIN=${TIDINGS_BIN:-$ROOT/bin/tidings}
PY=${PYTHON:-python3}
HAPROXY_CFG=$ROOT/haproxy.cfg
REDIS_CONF=$ROOT/deploy/redis-pubsub.conf

EDGE=$PREFIX-edge
NS_A=$PREFIX-a
NS_B=$PREFIX-b
NS_R=$PREFIX-redis
ALL_NS=("$EDGE" "$NS_A" "$NS_B" "$NS_R")
TIDINGS_PORT=8080
REDIS_PORT=6379
STATS=127.0.0.1:8404

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 up|down|status [PREFIX [STATE_DIR]]" >&2
  exit 2
}

[[ $PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] ||
  die "bad prefix '$PREFIX': letters, digits, '_', '.', '-' (at most 41)"

if [[ -n ${TIDINGS_CLUSTER_NET:-} ]]; then
  NET=$TIDINGS_CLUSTER_NET
  if ! [[ $NET =~ ^10\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$ ]]; then
    die "TIDINGS_CLUSTER_NET must look like 10.x.y (the first three octets of a /24)"
  fi
else
  h=$(printf '%s' "$PREFIX" | cksum | cut -d' ' -f1)
  NET=10.$((100 + h % 100)).$(((h / 100) % 256))
fi
EDGE_IP=$NET.1
A_IP=$NET.11
B_IP=$NET.12
R_IP=$NET.20

ns_exists() { [[ -e /run/netns/$1 ]]; }

# The processes inside a namespace, this script excepted.
ns_pids() {
  local p
  for p in $(ip netns pids "$1" 2>/dev/null || true); do
    [[ $p == "$$" || $p == "$BASHPID" ]] || printf '%s ' "$p"
  done
}

# ---------------------------------------------------------------- probes

# probe NS HOST PORT HEX-PAYLOAD EXPECTED-PREFIX: connects from inside NS,
# sends the payload, succeeds when the answer starts with the expected text.
probe() {
  ip netns exec "$1" "$PY" - "$2" "$3" "$4" "$5" 2>/dev/null <<'EOF'
import socket, sys
host, port, data, want = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4].encode()
try:
    with socket.create_connection((host, port), 1) as s:
        s.settimeout(1)
        s.sendall(data)
        got = b""
        while len(got) < len(want):
            b = s.recv(4096)
            if not b:
                break
            got += b
    sys.exit(0 if got.startswith(want) else 1)
except OSError:
    sys.exit(1)
EOF
}

hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }

# A PROXY v2 header (command LOCAL, no addresses), then GET /readyz.
PROXY_LOCAL=0d0a0d0a000d0a515549540a20000000
HEALTHZ=$PROXY_LOCAL$(hex $'GET /readyz HTTP/1.1\r\nHost: cluster\r\n\r\n')
PING=$(hex $'PING\r\n')

# haproxy_servers: "name status check_status" for each server of the
# backend, from the stats page (inside the edge namespace).
haproxy_servers() {
  ip netns exec "$EDGE" "$PY" - "http://$STATS/stats;csv" 2>/dev/null <<'EOF'
import csv, io, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()
rows = list(csv.reader(io.StringIO(text.lstrip("# "))))
head = rows[0]
for r in rows[1:]:
    d = dict(zip(head, r))
    if d.get("pxname") == "tidings_hosts" and d.get("svname") not in ("BACKEND", "FRONTEND"):
        print(d["svname"], d["status"], d.get("check_status", ""))
EOF
}

# ---------------------------------------------------------------- processes

# launch NAME NS CMD...: runs CMD inside NS in a session of its own, stdio
# to STATE/NAME.log; STATE/NAME.pid gets its pid and STATE/NAME.rc its exit
# status once it exits (written by a small sh wrapper, STATE/NAME.wrapper).
launch() {
  local name=$1 ns=$2
  shift 2
  # shellcheck disable=SC2016 # expanded by the inner sh
  ip netns exec "$ns" setsid sh -c '
    state=$1 name=$2
    shift 2
    echo $$ >"$state/$name.wrapper"
    "$@" </dev/null >>"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
    wait $!
    echo $? >"$state/$name.rc"
  ' launch "$STATE" "$name" "$@" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 100); do
    [[ -s $STATE/$name.pid ]] && return 0
    sleep 0.02
  done
  die "$name did not start"
}

alive() {
  local f=$STATE/$1.pid
  [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && [[ ! -e $STATE/$1.rc ]]
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; every started
# process must stay alive meanwhile.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs)) n
  while ! "$@"; do
    for n in redis a b haproxy; do
      if [[ -e $STATE/$n.pid ]] && ! alive "$n"; then
        die "$n exited (status $(cat "$STATE/$n.rc" 2>/dev/null || echo '?')) while waiting for $what"
      fi
    done
    ((SECONDS < end)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.1
  done
}

both_up() {
  local out
  out=$(haproxy_servers) || return 1
  [[ $(grep -c ' UP L7OK$' <<<"$out") -ge 2 ]]
}

# server_field N FIELD: the name or cookie of the haproxy.cfg server whose
# address is TIDINGS_LB_SERVERN.
server_field() {
  awk -v var="TIDINGS_LB_SERVER$1" -v want="$2" '
    $1 == "server" && index($3, "${" var "-") {
      if (want == "name") { print $2; exit }
      for (i = 4; i < NF; i++) if ($i == "cookie") { print $(i + 1); exit }
    }' "$HAPROXY_CFG"
}

# ---------------------------------------------------------------- commands

# signal_ns SIGNAL SKIP: sends SIGNAL to every process inside our namespaces
# whose pid is not in the space-separated list SKIP; fails when there was none.
signal_ns() {
  local ns p
  local -a pids=()
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    for p in $(ns_pids "$ns"); do
      [[ " $2 " == *" $p "* ]] || pids+=("$p")
    done
  done
  ((${#pids[@]})) || return 1
  kill "-$1" "${pids[@]}" 2>/dev/null || true
}

cmd_down() {
  local ns found=0 wrappers=""
  if [[ -d $STATE ]]; then
    found=1
    wrappers=$(cat "$STATE"/*.wrapper 2>/dev/null | tr '\n' ' ' || true)
  fi
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then found=1; fi
  done
  # Everything running inside our namespaces was started by this script (or
  # is a client run there): stop exactly those processes.  The wrappers are
  # spared SIGTERM so that they collect their child's exit status and leave.
  if signal_ns TERM "$wrappers"; then
    for _ in $(seq 50); do
      signal_ns 0 "" || break
      sleep 0.1
    done
    signal_ns KILL "" || true
  fi
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then
      ip netns del "$ns"
    fi
  done
  rm -rf -- "$STATE"
  if ((found)); then echo "cluster $PREFIX: down"; else echo "cluster $PREFIX: nothing to stop"; fi
}

cmd_status() {
  local ns n rc=0
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then echo "namespace $ns: present"; else echo "namespace $ns: absent"; rc=1; fi
  done
  for n in redis a b haproxy; do
    if alive "$n"; then
      echo "$n: running (pid $(cat "$STATE/$n.pid"))"
    elif [[ -e $STATE/$n.rc ]]; then
      echo "$n: exited with status $(cat "$STATE/$n.rc")"
      rc=1
    else
      echo "$n: not running"
      rc=1
    fi
  done
  if ns_exists "$EDGE"; then
    echo "haproxy servers (name status last-check):"
    haproxy_servers | sed 's/^/  /' || { echo "  stats page not answering"; rc=1; }
  fi
  [[ -f $STATE/cluster.env ]] && echo "details: $STATE/cluster.env"
  return $rc
}

show_logs() {
  local f
  for f in "$STATE"/*.log; do
    [[ -e $f ]] || continue
    echo "---- $f (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
}

cmd_up() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces)"
  local t ns n dev ip pair
  for t in ip haproxy redis-server openssl setsid "$PY"; do
    command -v "$t" >/dev/null || die "$t not found; deploy/install-deps.sh installs what is missing"
  done
  [[ -x $BIN ]] || die "$BIN is not executable: run make (or set TIDINGS_BIN)"
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" && die "namespace $ns exists already: run '$0 down $PREFIX' first"
  done
  [[ -e $STATE ]] && die "state directory $STATE exists already: run '$0 down $PREFIX' first"
  # the HAProxy admin socket goes there: a unix socket path has at most 107 bytes
  ((${#STATE} <= 90)) || die "state directory path too long (over 90 bytes): $STATE"
  mkdir -p "$(dirname "$STATE")"
  mkdir -m 700 "$STATE"

  # From here on a failure tears everything down again.
  trap 'rc=$?; if ((rc)); then show_logs; cmd_down >&2 || true; fi' EXIT

  for ns in "${ALL_NS[@]}"; do
    if ! ip netns add "$ns" 2>"$STATE/netns.err"; then
      echo "cluster.sh: cannot create network namespace $ns: 'ip netns add' failed: $(cat "$STATE/netns.err")" >&2
      die "network namespaces are refused here (kernel or container without CAP_SYS_ADMIN/CAP_NET_ADMIN); this cluster cannot run on this machine"
    fi
    ip -n "$ns" link set lo up
    # IPv4 only: no IPv6 link-local addresses or router solicitations on the links
    # shellcheck disable=SC2016 # expanded by the inner sh
    ip netns exec "$ns" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do [ -w "$f" ] && echo 1 >"$f"; done; true' 2>/dev/null || true
  done

  # The bridge lives in the edge namespace; each host gets a veth pair
  # created there, whose other end moves straight into the host namespace.
  ip -n "$EDGE" link add br0 type bridge
  ip -n "$EDGE" addr add "$EDGE_IP/24" dev br0
  ip -n "$EDGE" link set br0 up
  for pair in "va:$NS_A:$A_IP" "vb:$NS_B:$B_IP" "vr:$NS_R:$R_IP"; do
    IFS=: read -r dev ns ip <<<"$pair"
    ip -n "$EDGE" link add "$dev" type veth peer name eth0 netns "$ns"
    ip -n "$EDGE" link set "$dev" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  for ns in "${ALL_NS[@]}"; do
    [[ -z $(ip -n "$ns" route show default) ]] || die "unexpected default route in $ns"
  done

  # Self-signed certificate for the :443 frontend.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=tidings.test" -addext "subjectAltName=DNS:tidings.test,IP:$EDGE_IP" \
    -keyout "$STATE/tls.key" -out "$STATE/tls.crt" >"$STATE/openssl.log" 2>&1 ||
    die "openssl could not make a certificate: $(cat "$STATE/openssl.log")"
  cat "$STATE/tls.crt" "$STATE/tls.key" >"$STATE/tidings.pem"
  chmod 600 "$STATE/tidings.pem" "$STATE/tls.key"

  launch redis "$NS_R" redis-server "$REDIS_CONF" --bind "$R_IP" --port "$REDIS_PORT" \
    --protected-mode no --dir "$STATE" --daemonize no --pidfile "" --logfile "" --unixsocket ""
  wait_for "redis-server on $R_IP:$REDIS_PORT" 10 probe "$EDGE" "$R_IP" "$REDIS_PORT" "$PING" "+PONG"

  for n in a b; do
    ns=$NS_A ip=$A_IP
    [[ $n == b ]] && ns=$NS_B ip=$B_IP
    launch "$n" "$ns" "$BIN" --proxy-protocol --bind 0.0.0.0 --port "$TIDINGS_PORT" \
      --workers 1 --redis "redis://$R_IP:$REDIS_PORT"
  done
  for n in a b; do
    ip=$A_IP
    [[ $n == b ]] && ip=$B_IP
    wait_for "host $n ($ip:$TIDINGS_PORT/readyz)" 15 probe "$EDGE" "$ip" "$TIDINGS_PORT" "$HEALTHZ" "HTTP/1.1 200"
  done

  local -a lbenv=(TIDINGS_LB_SERVER1="$A_IP:$TIDINGS_PORT" TIDINGS_LB_SERVER2="$B_IP:$TIDINGS_PORT"
    TIDINGS_LB_CERT="$STATE/tidings.pem" TIDINGS_LB_LOG=stdout
    TIDINGS_LB_ADMIN_SOCK="$STATE/haproxy.sock" TIDINGS_LB_MAXCONN=4096)
  env "${lbenv[@]}" haproxy -c -q -f "$HAPROXY_CFG" >"$STATE/haproxy-check.log" 2>&1 ||
    die "haproxy -c rejects $HAPROXY_CFG: $(cat "$STATE/haproxy-check.log")"
  launch haproxy "$EDGE" env "${lbenv[@]}" haproxy -db -f "$HAPROXY_CFG"
  wait_for "HAProxy to see both hosts pass a health check" 15 both_up

  cat >"$STATE/cluster.env" <<EOF
PREFIX=$PREFIX
STATE=$STATE
EDGE_NS=$EDGE
A_NS=$NS_A
B_NS=$NS_B
REDIS_NS=$NS_R
NET=$NET.0/24
EDGE_IP=$EDGE_IP
A_IP=$A_IP
B_IP=$B_IP
REDIS_IP=$R_IP
WS_URL=ws://$EDGE_IP/
WSS_URL=wss://$EDGE_IP/
STATS_URL=http://$STATS/stats
ADMIN_SOCK=$STATE/haproxy.sock
CA_FILE=$STATE/tls.crt
A_SERVER=$(server_field 1 name)
A_COOKIE=$(server_field 1 cookie)
B_SERVER=$(server_field 2 name)
B_COOKIE=$(server_field 2 cookie)
A_PID=$(cat "$STATE/a.pid")
B_PID=$(cat "$STATE/b.pid")
REDIS_PID=$(cat "$STATE/redis.pid")
HAPROXY_PID=$(cat "$STATE/haproxy.pid")
EOF
  trap - EXIT
  echo "cluster $PREFIX up: ws://$EDGE_IP/ and wss://$EDGE_IP/ inside namespace $EDGE"
  echo "  run clients with: ip netns exec $EDGE ..."
  echo "  host A $A_IP:$TIDINGS_PORT, host B $B_IP:$TIDINGS_PORT, redis $R_IP:$REDIS_PORT"
  echo "  state: $STATE (cluster.env, logs)"
}

case $CMD in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
