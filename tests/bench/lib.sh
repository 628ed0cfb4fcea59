# shellcheck shell=bash
# Shared by the benchmark scripts (run.sh, growth.sh, syscalls.sh): sourced,
# not run.  Before sourcing, the script sets ROOT, PY, TIME_LIMIT (its
# watchdog), PORT_RANGE and the functions log and die; then it calls
# bench_prereqs and bench_init NAME.
#
# Server management: start_server runs every server under `timeout` (its own
# process group, a hard time limit) and waits for facts (its port listening,
# every tidings worker started); stop_server stops it by pid; the EXIT trap
# of bench_init stops whatever is left.  Every loadgen run (lg) has a hard
# time limit too.
#
# CPU placement (set_placement): `shared` leaves everything unpinned (the
# scheduler spreads the loadgen and the servers over all cores); `split` pins
# the loadgen to CPU 0 and every server process (the tidings master, its
# workers and its embedded redis-server, which inherit the affinity; the Node
# servers) to the other CPUs, with taskset.

BENCH=$ROOT/tests/bench
SERVERS_DIR=$BENCH/servers
LOADGEN=$BENCH/loadgen
TIDINGS=$ROOT/bin/tidings
PORT_LO=${PORT_RANGE%-*}
PORT_HI=${PORT_RANGE#*-}
SERVER_LIMIT=$TIME_LIMIT       # hard limit of every server process (seconds)
PLACEMENT=shared
SRV_PIN=() LG_PIN=()

bench_prereqs() {
    log "building bin/tidings and the loadgen"
    make -s -C "$ROOT" bin/tidings
    make -s -C "$BENCH" loadgen
    tidings_args "$TIDINGS"
    TID=("${TID_ARGS[@]}")
    TID_HELP=$("$TIDINGS" --help 2>&1 || true)

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
}

declare -A TPID=() SPID=() PORT=()   # by instance name
USED_PORTS=" "
WATCHDOG=

bench_init() {  # NAME: the work directory, the EXIT trap and the watchdog
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    RESULTS=$WORK/results.jsonl
    : >"$RESULTS"
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated (time limit of ${TIME_LIMIT}s?)"; exit 143' TERM
    # Watchdog: TERM this script after TIME_LIMIT seconds; the traps stop the servers.
    ( sleep "$TIME_LIMIT" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s; kill -TERM $$ ) &
    WATCHDOG=$!
}

cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!TPID[@]}"; do stop_server "$name"; done
    # a script's own clean-up (syscalls.sh: its temporary git worktree)
    if declare -F bench_at_exit >/dev/null; then bench_at_exit || true; fi
    if [[ -n $WATCHDOG ]]; then kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; fi
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs kept in $WORK"
    elif [[ ${BENCH_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# set_placement shared|split: how the next servers and loadgen runs are pinned
set_placement() {
    PLACEMENT=$1
    local n; n=$(nproc)
    case $1 in
        shared) SRV_PIN=() LG_PIN=() ;;
        split)
            [[ $n -ge 2 ]] || die "placement split needs 2 CPUs"
            command -v taskset >/dev/null || die "placement split needs taskset (util-linux)"
            LG_PIN=(taskset -c 0) SRV_PIN=(taskset -c "1-$((n - 1))") ;;
        *) die "unknown placement $1 (shared or split)" ;;
    esac
}

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
    "${SRV_PIN[@]}" timeout -k 5 "$SERVER_LIMIT" "${args[@]}" >"$WORK/$name.log" 2>&1 </dev/null &
    tpid=$!
    TPID[$name]=$tpid PORT[$name]=$port
    for ((i = 0; i < 150; i++)); do            # up to 15 s to listen
        kill -0 "$tpid" 2>/dev/null || break
        [[ -z $spid ]] && spid=$(children "$tpid" | awk '{print $1}')
        if [[ -n $spid && -n $(ss -Hltn "( sport = :$port )" 2>/dev/null) ]]; then
            if [[ $kind == tidings ]]; then    # wait for every worker too
                local want n
                # one worker per core it may run on (nproc under the same taskset)
                want=$("${SRV_PIN[@]}" nproc)
                [[ " ${args[*]} " =~ " --workers "([0-9]+)" " && ${BASH_REMATCH[1]} -gt 0 ]] && want=${BASH_REMATCH[1]}
                n=$(tidings_workers "$spid" | wc -w)
                if [[ $n -lt $want ]]; then sleep 0.1; continue; fi
            fi
            SPID[$name]=$spid
            sleep 0.3
            log "started $name (pid $spid, port $port, placement $PLACEMENT): ${args[*]}"
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
    local out=$WORK/lg-$scen-$server-$variant-$PLACEMENT.out rc=0 pids json
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
    "${LG_PIN[@]}" timeout -k 3 "$limit" "$LOADGEN" --port "${PORT[$inst]}" "$@" "${pids[@]}" --json --quiet \
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
    [[ -n $json ]] && summary "$scen/$server/$variant/$PLACEMENT" "$json"
    return 0
}

record() {
    local scen=$1 server=$2 variant=$3 err=$4 rc=$5 json=$6; shift 6
    SCEN=$scen SRV=$server VAR=$variant ERR=$err RC=$rc JSON=$json PLACE=$PLACEMENT "$PY" -c '
import json, os, sys
r = {"scenario": os.environ["SCEN"], "server": os.environ["SRV"], "variant": os.environ["VAR"],
     "placement": os.environ["PLACE"],
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


# ---------------------------------------------------------------- server commands
NODE_WS=(node "$SERVERS_DIR/ws-server.js" @PORT@)
NODE_UWS=(node "$SERVERS_DIR/uws-server.js" @PORT@)
# tidings_args BIN: sets TID_ARGS to the bench command line of that tidings
# binary (syscalls.sh also runs an older build beside bin/tidings).
# The pub/sub path is measured, not the protections: no per-connection message
# rate limit (the default of 1,000/s would answer most publishes with an error);
# the admin listener on a free port of ours rather than the fixed default.
tidings_args() {
    local help; help=$("$1" --help 2>&1 || true)
    TID_ARGS=("$1" --bind 127.0.0.1 --port @PORT@ --shutdown-grace 2 --log-level warn)
    if [[ $help == *--rate-limit* ]]; then TID_ARGS+=(--rate-limit 0); fi
    if [[ $help == *--admin-listen* ]]; then TID_ARGS+=(--admin-listen 127.0.0.1:@PORT2@); fi
    return 0
}
# shellcheck disable=SC2034  # TID_HELP is for run.sh
TID=() TID_HELP=   # set by bench_prereqs once bin/tidings is built
# shellcheck disable=SC2034  # for run.sh
API_KEY=bench-api-key-0123456789abcdef

# A fresh trio of servers for each scenario, so that none inherits the memory,
# garbage or warmed-up state of the previous one.
start_trio() {
    start_server tidings tidings "${TID[@]}" || true
    start_server uws node "${NODE_UWS[@]}" || true
    start_server ws node "${NODE_WS[@]}" || true
}
stop_trio() { stop_server tidings; stop_server uws; stop_server ws; }

# trio_run SCENARIO VARIANT LIMIT LOADGEN-ARGS...: the three servers, one
# loadgen run each (tidings, uWS, ws), then stopped.
trio_run() {
    local scen=$1 variant=$2 limit=$3 s; shift 3
    start_trio
    for s in tidings uws ws; do
        lg "$scen" "$s" "$variant" "$s" tree "$limit" -- "$@"
    done
    stop_trio
}


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
