#!/usr/bin/env bash
# tidings benchmark harness: `make bench` (or bash tests/bench/run.sh).
#
# Runs a bounded set of scenarios with tests/bench/loadgen against three servers
# side by side -- tidings (default workers, embedded Redis), the Node.js `ws`
# server of the original example and uWebSockets.js -- all on loopback, and
# regenerates docs/benchmarks.md, docs/bench-results.json and docs/benchmarks.png.
#
# Every server runs under `timeout` (its own process group, hard time limit) and
# is stopped by pid when it is no longer needed, and by the EXIT trap on failure
# or interruption. Every loadgen run has a hard time limit too, and the whole
# script has a watchdog (BENCH_TIME_LIMIT seconds).
#
# Environment:
#   BENCH_QUICK=1        much shorter runs, to try the harness (numbers meaningless)
#   BENCH_OUT=DIR        where to write the three docs files (default: docs/)
#   BENCH_TIME_LIMIT=S   watchdog for the whole run (default 900)
#   BENCH_PORTS=LO-HI    ports to pick free ones from (default 18700-18799)
#   BENCH_ONLY=N,M       run only these scenarios (numbers as below; 4 and 7 share
#                        servers and run together) and print their summaries:
#                        the docs files are left alone
#                        (e.g. BENCH_ONLY=10: the HTTP API beside WebSocket publishes)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=$ROOT/tests/bench
SERVERS_DIR=$BENCH/servers
LOADGEN=$BENCH/loadgen
TIDINGS=$ROOT/bin/tidings
OUT=${BENCH_OUT:-$ROOT/docs}
QUICK=${BENCH_QUICK:-0}
TIME_LIMIT=${BENCH_TIME_LIMIT:-900}
PORT_RANGE=${BENCH_PORTS:-18700-18799}
PORT_LO=${PORT_RANGE%-*}
PORT_HI=${PORT_RANGE#*-}
SERVER_LIMIT=$TIME_LIMIT       # hard limit of every server process (seconds)
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

T_START=$(date +%s)
log() { printf '[bench %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
log "building bin/tidings and the loadgen"
make -s -C "$ROOT" bin/tidings
make -s -C "$BENCH" loadgen

if ! (cd "$SERVERS_DIR" && node -e "require('ws'); require('@trufflesuite/uws-js-unofficial')") >/dev/null 2>&1; then
    log "installing the npm packages in tests/bench/servers"
    (cd "$SERVERS_DIR" && timeout 300 npm install --no-audit --no-fund)
fi

if ! command -v gnuplot >/dev/null 2>&1; then
    log "installing gnuplot-nox"
    SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q gnuplot-nox >/dev/null; then
        $SUDO timeout 300 apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q gnuplot-nox >/dev/null
    fi
fi

# Up to the hard limit: 10,000 connections need more than the usual 1024.
ulimit -n "$(ulimit -Hn)"
[[ $(ulimit -n) == unlimited || $(ulimit -n) -ge 10100 ]] ||
    die "open-file limit $(ulimit -n) is too low for 10,000 connections"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidings-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

# ------------------------------------------------------------ server management
declare -A TPID=() SPID=() PORT=()   # by instance name
USED_PORTS=" "
WATCHDOG=

cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!TPID[@]}"; do stop_server "$name"; done
    if [[ -n $WATCHDOG ]]; then kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; fi
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs kept in $WORK"
    elif [[ ${BENCH_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated (time limit of ${TIME_LIMIT}s?)"; exit 143' TERM

# Watchdog: TERM this script after TIME_LIMIT seconds; the traps stop the servers.
( sleep "$TIME_LIMIT" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s; kill -TERM $$ ) &
WATCHDOG=$!

free_port() {  # sets FREE_PORT
    local p
    for ((p = PORT_LO; p <= PORT_HI; p++)); do
        [[ $USED_PORTS == *" $p "* ]] && continue
        [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] || continue
        USED_PORTS+="$p "
        FREE_PORT=$p
        return 0
    done
    die "no free port in $PORT_RANGE"
}

children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }

# utime + stime of a process, in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' /proc/"$1"/stat 2>/dev/null || echo 0; }

# the embedded redis-server among a tidings master's children
tidings_redis() {
    local c
    for c in $(children "$1"); do
        if [[ $(cat /proc/"$c"/comm 2>/dev/null) == redis-server ]]; then echo "$c"; fi
    done
    return 0
}

# start_server NAME KIND CMD... ; @PORT@ (the port to wait for) and @PORT2@ in CMD
# are replaced by free ports.
# The server runs under `timeout`, which makes its own process group.
start_server() {
    local name=$1 kind=$2; shift 2
    local port arg args=() tpid spid='' i
    free_port
    port=$FREE_PORT
    for arg in "$@"; do
        if [[ $arg == *@PORT2@* ]]; then free_port; arg=${arg//@PORT2@/$FREE_PORT}; fi
        args+=("${arg//@PORT@/$port}")
    done
    timeout -k 5 "$SERVER_LIMIT" "${args[@]}" >"$WORK/$name.log" 2>&1 </dev/null &
    tpid=$!
    TPID[$name]=$tpid PORT[$name]=$port
    for ((i = 0; i < 150; i++)); do            # up to 15 s to listen
        kill -0 "$tpid" 2>/dev/null || break
        [[ -z $spid ]] && spid=$(children "$tpid" | awk '{print $1}')
        if [[ -n $spid && -n $(ss -Hltn "( sport = :$port )" 2>/dev/null) ]]; then
            if [[ $kind == tidings ]]; then    # wait for every worker too
                local want n
                want=$(nproc)
                [[ " ${args[*]} " =~ " --workers "([0-9]+)" " && ${BASH_REMATCH[1]} -gt 0 ]] && want=${BASH_REMATCH[1]}
                n=$(tidings_workers "$spid" | wc -w)
                if [[ $n -lt $want ]]; then sleep 0.1; continue; fi
            fi
            SPID[$name]=$spid
            sleep 0.3
            log "started $name (pid $spid, port $port): ${args[*]}"
            printf '%s\t%s\n' "$name" "${args[*]}" >>"$WORK/servers.txt"
            return 0
        fi
        sleep 0.1
    done
    log "server $name did not come up; its log:"
    tail -n 20 "$WORK/$name.log" >&2 || true
    stop_server "$name"
    return 1
}

# The tidings workers: the master's children with TIDINGS_WORKER_ID in their environment.
tidings_workers() {
    local c
    for c in $(children "$1"); do
        if tr '\0' '\n' <"/proc/$c/environ" 2>/dev/null | grep -q '^TIDINGS_WORKER_ID='; then echo "$c"; fi
    done
}

stop_server() {
    local name=$1 tpid=${TPID[$1]:-} i
    [[ -n $tpid ]] || return 0
    unset "TPID[$name]"
    SPID[$name]=
    kill -TERM "$tpid" 2>/dev/null || true      # timeout passes TERM on to the server
    for ((i = 0; i < 50; i++)); do
        kill -0 "$tpid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$tpid" 2>/dev/null || true  # anything left of its process group
    wait "$tpid" 2>/dev/null || true
}

running() { [[ -n ${SPID[$1]:-} ]]; }

# ------------------------------------------------------------------ loadgen runs
# lg SCENARIO SERVER VARIANT INSTANCE PIDS_MODE LIMIT -- loadgen options...
#   PIDS_MODE: tree (server pid + descendants), workers (tidings workers only),
#   pid (the server pid alone). One JSON record per run goes to $RESULTS.
lg() {
    local scen=$1 server=$2 variant=$3 inst=$4 mode=$5 limit=$6; shift 7
    local out=$WORK/lg-$scen-$server-$variant.out rc=0 pids json
    if ! running "$inst"; then
        log "$scen/$server/$variant: skipped, server $inst is not running"
        record "$scen" "$server" "$variant" "server not running" 0 "" "$@"
        return 0
    fi
    case $mode in
        tree) pids=(--server-pids "${SPID[$inst]}" --server-tree) ;;
        pid) pids=(--server-pids "${SPID[$inst]}") ;;
        workers) pids=(--server-pids "$(tidings_workers "${SPID[$inst]}" | paste -sd,)") ;;
    esac
    local bg; bg=$(busy_pct 0.5)   # anything else running right before this run?
    local redis_t0=0
    [[ -n ${REDIS_PID:-} ]] && redis_t0=$(cpu_ticks "$REDIS_PID")
    timeout -k 3 "$limit" "$LOADGEN" --port "${PORT[$inst]}" "$@" "${pids[@]}" --json --quiet \
        >"$out" 2>"$out.err" </dev/null || rc=$?
    json=$(tail -n 1 "$out")
    [[ $json == '{'* ]] || json=
    local err=
    if [[ -z $json ]]; then
        err="loadgen exit $rc, no result"; [[ $rc -eq 124 || $rc -eq 137 ]] && err="loadgen timed out (${limit}s)"
        log "$scen/$server/$variant: $err"; tail -n 5 "$out.err" >&2 || true
    elif ! kill -0 "${TPID[$inst]}" 2>/dev/null; then
        err="server exited during the run"
        log "$scen/$server/$variant: $err"; SPID[$inst]=
    fi
    local redis_ms=
    if [[ -n ${REDIS_PID:-} ]]; then redis_ms=$(( ($(cpu_ticks "$REDIS_PID") - redis_t0) * 1000 / $(getconf CLK_TCK) )); fi
    BG=$bg REDIS_MS=$redis_ms record "$scen" "$server" "$variant" "$err" "$rc" "$json" "$@"
    [[ -n $json ]] && summary "$scen/$server/$variant" "$json"
    return 0
}

record() {
    local scen=$1 server=$2 variant=$3 err=$4 rc=$5 json=$6; shift 6
    SCEN=$scen SRV=$server VAR=$variant ERR=$err RC=$rc JSON=$json "$PY" -c '
import json, os, sys
r = {"scenario": os.environ["SCEN"], "server": os.environ["SRV"], "variant": os.environ["VAR"],
     "loadgen_args": sys.argv[1:], "exit": int(os.environ["RC"]), "error": os.environ["ERR"] or None,
     "result": json.loads(os.environ["JSON"]) if os.environ["JSON"] else None,
     "background_cpu_pct": int(os.environ["BG"]) if os.environ.get("BG") else None,
     "redis_cpu_ms": float(os.environ["REDIS_MS"]) if os.environ.get("REDIS_MS") else None}
print(json.dumps(r))' "$@" >>"$RESULTS"
}

summary() {
    JSON=$2 "$PY" -c '
import json, os, sys
r = json.loads(os.environ["JSON"])
def f(k, d=1):
    return "-" if r.get(k) is None else round(r[k], d)
if r.get("mode") == "idle":
    print("%s: held %s, rss/conn %s B, loadgen %s%%" % (sys.argv[1], r.get("held"), f("server_rss_per_conn", 0), f("cpu_pct")))
else:
    print("%s: %s deliveries/s, lost %s, p50 %s p99 %s ms, server %s%%, loadgen %s%%" % (sys.argv[1],
          f("deliveries_per_s", 0), r.get("lost"), f("latency_p50_ms", 2), f("latency_p99_ms", 2),
          f("server_cpu_pct"), f("cpu_pct")))
' "$1" | while read -r line; do log "$line"; done
}

# ------------------------------------------------------------------- scenarios
# Durations (seconds); BENCH_QUICK=1 only checks that the harness works.
if [[ $QUICK == 1 ]]; then D_FAN=2 D_MANY=2 D_LAT=2 D_LARGE=2 D_IDLE=1 D_REDIS=2 D_CPU=2 WARM=0.5; IDLE_CONNS=2000
else D_FAN=10 D_MANY=6 D_LAT=10 D_LARGE=6 D_IDLE=3 D_REDIS=10 D_CPU=6 WARM=1; IDLE_CONNS=10000; fi
D_API=$D_FAN; [[ $QUICK == 1 ]] && D_API=2
FAN_WINDOW=32   # unacknowledged publishes at --rate 0; see the notes in docs/benchmarks.md

NODE_WS=(node "$SERVERS_DIR/ws-server.js" @PORT@)
NODE_UWS=(node "$SERVERS_DIR/uws-server.js" @PORT@)
TID=("$TIDINGS" --bind 127.0.0.1 --port @PORT@ --shutdown-grace 2 --log-level warn)
# The pub/sub path is measured, not the protections: no per-connection message
# rate limit (the default of 1,000/s would answer most publishes with an error);
# the admin listener on a free port of ours rather than the fixed default.
TID_HELP=$("$TIDINGS" --help 2>&1 || true)
if [[ $TID_HELP == *--rate-limit* ]]; then TID+=(--rate-limit 0); fi
if [[ $TID_HELP == *--admin-listen* ]]; then TID+=(--admin-listen 127.0.0.1:@PORT2@); fi
API_KEY=bench-api-key-0123456789abcdef

# A fresh trio of servers for each scenario, so that none inherits the memory,
# garbage or warmed-up state of the previous one.
start_trio() {
    start_server tidings tidings "${TID[@]}" || true
    start_server uws node "${NODE_UWS[@]}" || true
    start_server ws node "${NODE_WS[@]}" || true
}
stop_trio() { stop_server tidings; stop_server uws; stop_server ws; }

log "work dir $WORK"

ONLY=${BENCH_ONLY:-}
want() { [[ -z $ONLY || ,$ONLY, == *,$1,* ]]; }

# Other processes on the machine skew every number: wait up to BENCH_QUIET_WAIT
# seconds for it to be quiet (busy < 25% of one core over 2 s), then go on anyway
# and let the report say how busy it was.
busy_pct() {  # CPU used by everything, in % of one core, over $1 seconds
    local a b
    read -ra a </proc/stat; sleep "$1"; read -ra b </proc/stat
    local ta=0 tb=0 i
    for ((i = 1; i < ${#a[@]}; i++)); do ta=$((ta + a[i])); tb=$((tb + b[i])); done
    local idle=$(((b[4] + b[5]) - (a[4] + a[5]))) total=$((tb - ta))
    echo $(((total - idle) * 100 * $(nproc) / (total > 0 ? total : 1)))
}
BG_BUSY=$(busy_pct 2)
for ((waited = 0; BG_BUSY >= 25 && waited < ${BENCH_QUIET_WAIT:-60}; waited += 7)); do
    log "the machine is busy (${BG_BUSY}% of a core used by other processes); waiting"
    sleep 5
    BG_BUSY=$(busy_pct 2)
done
log "background CPU before the run: ${BG_BUSY}% of a core"

# 1. fan-out: 1,000 subscribers of one topic, 64-byte payloads, maximum rate.
if want 1; then
log "scenario 1: fan-out"
FANOUT=(--subs 1000 --topics 1 --pubs 1 --rate 0 --window $FAN_WINDOW --size 64 --warmup $WARM
        --duration $D_FAN --grace 3)
start_trio
for s in tidings uws ws; do
    lg fanout "$s" max "$s" tree 60 -- "${FANOUT[@]}"
done
stop_trio
fi

# 2. many topics: 10,000 subscribers over 1,000 topics, maximum rate, 2 publishers.
if want 2; then
log "scenario 2: many topics"
MANY=(--subs 10000 --topics 1000 --pubs 2 --rate 0 --window $FAN_WINDOW --size 64 --connect-rate 5000
      --warmup $WARM --duration $D_MANY --grace 3)
start_trio
for s in tidings uws ws; do
    lg many "$s" max "$s" tree 90 -- "${MANY[@]}"
done
stop_trio
fi

# 3. latency at a fixed moderate rate: 1,000 subscribers, 20 messages/s.
if want 3; then
log "scenario 3: latency at 20 msg/s"
LATENCY=(--subs 1000 --topics 1 --pubs 1 --rate 20 --size 64 --warmup $WARM --duration $D_LAT --grace 3)
start_trio
for s in tidings uws ws; do
    lg latency "$s" 20rps "$s" tree 60 -- "${LATENCY[@]}"
done
stop_trio
fi

# 4. large messages: 16 KiB payloads, 100 subscribers, maximum rate, with and
#    without permessage-deflate. (The node ws server never compresses.)
if want 4 || want 7; then
log "scenario 4: 16 KiB messages"
start_trio
start_server tidings_nocomp tidings "${TID[@]}" --no-compression || true
start_server uws_comp node "${NODE_UWS[@]}" --compression || true
LARGE=(--subs 100 --topics 1 --pubs 1 --rate 0 --window 8 --size 16384 --warmup $WARM --duration $D_LARGE --grace 3)
lg large tidings plain tidings_nocomp tree 60 -- "${LARGE[@]}"
lg large uws plain uws tree 60 -- "${LARGE[@]}"
lg large ws plain ws tree 60 -- "${LARGE[@]}"
lg large tidings deflate tidings tree 60 -- "${LARGE[@]}" --deflate
lg large uws deflate uws_comp tree 60 -- "${LARGE[@]}" --deflate
stop_server uws_comp
stop_server uws
stop_server ws
fi

# 7. tidings fan-out CPU per delivered message, compression on vs off: 1,000
#    subscribers, 1 KiB payloads (above the 256-byte threshold), fixed 100 msg/s.
if want 4 || want 7; then
log "scenario 7: tidings CPU per delivery, compression on/off"
CPUFAN=(--subs 1000 --topics 1 --pubs 1 --rate 100 --size 1024 --warmup $WARM --duration $D_CPU --grace 3)
lg cpu tidings plain tidings_nocomp tree 60 -- "${CPUFAN[@]}"
lg cpu tidings deflate tidings tree 60 -- "${CPUFAN[@]}" --deflate
stop_server tidings_nocomp
stop_server tidings
fi

# 6. issue 3: latency through Redis, tidings --workers 2, 1,000 subscribers,
#    1,000 messages/s in total over 10 topics and over 1 topic.
if want 6; then
log "scenario 6: latency through Redis (tidings --workers 2)"
start_server tidings_w2 tidings "${TID[@]}" --workers 2 || true
for k in 10 1; do
    lg redis tidings "${k}topics" tidings_w2 tree 60 -- --subs 1000 --topics $k --pubs 1 --rate 1000 \
        --size 64 --warmup $WARM --duration $D_REDIS --grace 3
done
stop_server tidings_w2
fi

# 8. tidings with one worker: on this machine the loadgen needs a core of its
#    own, so the default of one worker per core oversubscribes it.
if want 8; then
log "scenario 8: tidings --workers 1"
start_server tidings_w1 tidings "${TID[@]}" --workers 1 || true
lg fanout tidings w1 tidings_w1 tree 60 -- "${FANOUT[@]}"
lg many tidings w1 tidings_w1 tree 90 -- "${MANY[@]}"
lg latency tidings w1 tidings_w1 tree 60 -- "${LATENCY[@]}"
stop_server tidings_w1
fi

# 9. history (issue 11): the same fan-out and many-topics loads with
#    --history-size 100 beside history off, and the redis-server's CPU per
#    publish (every publish is a FCALL that also XADDs to the topic's stream).
if want 9; then
log "scenario 9: history on vs off"
start_server hist_off tidings "${TID[@]}" || true
start_server hist_on tidings "${TID[@]}" --history-size 100 || true
for v in off on; do
    REDIS_PID=$(tidings_redis "${SPID[hist_$v]:-0}" | head -n 1 || true)
    lg history "$v" fanout "hist_$v" tree 60 -- "${FANOUT[@]}"
    lg history "$v" many "hist_$v" tree 90 -- "${MANY[@]}"
    lg history "$v" latency "hist_$v" tree 60 -- "${LATENCY[@]}"
    REDIS_PID=
done
stop_server hist_off
stop_server hist_on
fi

# 5. idle connections: a fresh server each; tidings: the workers' RSS only.
if want 5; then
log "scenario 5: $IDLE_CONNS idle connections"
IDLE=(--idle --subs $IDLE_CONNS --topics 100 --connect-rate 5000 --duration $D_IDLE)
start_server idle_tidings tidings "${TID[@]}" || true
lg idle tidings workers idle_tidings workers 60 -- "${IDLE[@]}"
stop_server idle_tidings
start_server idle_uws node "${NODE_UWS[@]}" || true
lg idle uws pid idle_uws pid 60 -- "${IDLE[@]}"
stop_server idle_uws
start_server idle_ws node "${NODE_WS[@]}" || true
lg idle ws pid idle_ws pid 60 -- "${IDLE[@]}"
stop_server idle_ws
fi

# 10. publishing through the HTTP API: the same load published by 4 WebSocket
#     publishers, then by 4 HTTP keep-alive connections (POST /api/publish,
#     $FAN_WINDOW requests pipelined on each), to 100 subscribers over 10 topics.
if want 10; then
log "scenario 10: HTTP API publish vs WebSocket publish"
if [[ $TID_HELP == *--api-key* ]]; then
    start_server tidings_api tidings "${TID[@]}" --api-key "$API_KEY" || true
    APIPUB=(--subs 100 --topics 10 --pubs 4 --rate 0 --window $FAN_WINDOW --size 64 --warmup $WARM
            --duration $D_API --grace 3)
    for round in 1 2; do
        lg api tidings "websocket$round" tidings_api tree 60 -- "${APIPUB[@]}"
        lg api tidings "http$round" tidings_api tree 60 -- "${APIPUB[@]}" --http-pub "$API_KEY"
    done
    stop_server tidings_api
else
    log "scenario 10: skipped, this tidings has no --api-key"
fi
fi

if [[ -n $ONLY ]]; then
    "$PY" "$BENCH/report.py" --results "$RESULTS" --api-summary
    log "BENCH_ONLY=$ONLY: done in $(($(date +%s) - T_START)) s; docs/ left alone"
    exit 0
fi

# ---------------------------------------------------------------------- report
ELAPSED=$(($(date +%s) - T_START))
log "writing the report ($ELAPSED s of benchmarks)"
mkdir -p "$OUT"
"$PY" "$BENCH/report.py" --results "$RESULTS" --out "$OUT" --work "$WORK" --elapsed "$ELAPSED" \
    --quick "$QUICK" --fan-window "$FAN_WINDOW" --root "$ROOT" --background-cpu "$BG_BUSY"
(cd "$WORK" && timeout 60 gnuplot chart.gp) || die "gnuplot failed"
cp "$WORK/benchmarks.png" "$OUT/benchmarks.png"
log "done in $(($(date +%s) - T_START)) s: $OUT/benchmarks.md, $OUT/bench-results.json, $OUT/benchmarks.png"
