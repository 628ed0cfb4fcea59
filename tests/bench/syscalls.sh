#!/usr/bin/env bash
# System calls per delivery, tidings vs uWebSockets.js:
#
#   make bench-syscalls
#
# For each scenario and server: the loadgen runs as usual (lib.sh's servers,
# bounded, on loopback); once its measurement window has opened (it says so
# on stderr: waited for, not slept), the server processes' system calls are
# counted for the rest of the window with
#   perf stat -e raw_syscalls:sys_enter -p PIDS     (when perf works)
#   strace -c -f -p PIDS                             (otherwise; it slows the
#                                                     server so much that writes
#                                                     batch more: far fewer calls
#                                                     per delivery, see README)
# and divided by the deliveries (and publishes) the loadgen measured over
# the window.  tidings is counted in two groups: master + workers, and its
# embedded redis-server; uWS is its node process (all threads).
#
# Scenarios (fixed rates, so both servers do the same work; the maximum-rate
# one shows what batching under load does):
#   fanout   1,000 subscribers of 1 topic, 200 publishes/s (200,000 deliveries/s)
#   many     10,000 subscribers over 1,000 topics, 2 publishers, 10,000 publishes/s
#   fanmax   1,000 subscribers of 1 topic, maximum rate, --e2e --window 32
#
# Writes docs/syscalls.json and the section between <!-- syscalls:begin -->
# and <!-- syscalls:end --> of docs/benchmarks.md (report.py keeps it).
# Environment: SYSCALLS_PLACEMENT (split, the default, or shared),
# SYSCALLS_TOOL (perf or strace; default: perf if it works), SYSCALLS_DURATION
# (8 s), BENCH_OUT, BENCH_QUICK=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/docs}
QUICK=${BENCH_QUICK:-0}
TIME_LIMIT=${BENCH_TIME_LIMIT:-600}
PORT_RANGE=${BENCH_PORTS:-18900-18999}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
DUR=${SYSCALLS_DURATION:-8}
[[ $QUICK == 1 ]] && DUR=3

T_START=$(date +%s)
log() { printf '[syscalls %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
bench_prereqs
bench_init tidings-syscalls
set_placement "${SYSCALLS_PLACEMENT:-split}"

SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
apt_install() {  # PACKAGE: bounded, like bench_prereqs installs gnuplot
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q "$1" >/dev/null; then
        $SUDO timeout 300 apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q "$1" >/dev/null
    fi
}
TOOL=${SYSCALLS_TOOL:-}
if [[ -z $TOOL ]]; then
    if command -v perf >/dev/null && timeout 10 perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
        TOOL=perf
    else
        TOOL=strace
    fi
fi
if [[ $TOOL == strace ]] && ! command -v strace >/dev/null; then
    log "installing strace"
    apt_install strace
fi
log "counting with $TOOL; placement $PLACEMENT; work dir $WORK"

# count_syscalls SECONDS OUTFILE PIDS(comma-separated): writes the count
count_syscalls() {
    local secs=$1 out=$2 pids=$3
    if [[ $TOOL == perf ]]; then
        timeout -k 2 $((${secs%.*} + 10)) perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -- sleep "$secs" \
            2>"$out.raw" >/dev/null || true
        awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$out.raw" >"$out"
    else
        local args=() p
        for p in ${pids//,/ }; do args+=(-p "$p"); done
        timeout -s INT -k 3 "$secs" strace -c -f "${args[@]}" -o "$out.raw" >/dev/null 2>&1 || true
        awk '$NF == "total" { print $4 }' "$out.raw" >"$out"
    fi
}

# measure SCEN SERVER INSTANCE -- loadgen options: one run with the counts
measure() {
    local scen=$1 server=$2 inst=$3; shift 4
    local base=$WORK/$scen-$server rc=0 i groups=() names=() g
    if ! running "$inst"; then log "$scen/$server: server not running"; return 0; fi
    local spid=${SPID[$inst]}
    if [[ $server == tidings ]]; then
        local redis; redis=$(tidings_redis "$spid" | paste -sd,)
        groups=("$spid,$(tidings_workers "$spid" | paste -sd,)" "$redis")
        names=(workers redis)
    else
        groups=("$spid") names=(node)
    fi
    "${LG_PIN[@]}" timeout -k 3 90 "$LOADGEN" --port "${PORT[$inst]}" "$@" --json \
        >"$base.out" 2>"$base.err" </dev/null &
    local lgpid=$!
    for ((i = 0; i < 600; i++)); do            # up to 60 s for setup + warm-up
        grep -q 'measuring for' "$base.err" 2>/dev/null && break
        kill -0 "$lgpid" 2>/dev/null || break
        sleep 0.1
    done
    local secs; secs=$(awk -v d="$DUR" 'BEGIN { print d - 1 }')
    local cpids=()
    for i in "${!groups[@]}"; do
        count_syscalls "$secs" "$base.${names[$i]}" "${groups[$i]}" &
        cpids+=($!)
    done
    for g in "${cpids[@]}"; do wait "$g" || true; done
    wait "$lgpid" || rc=$?
    local counts=()
    for i in "${!groups[@]}"; do counts+=("${names[$i]}=$(cat "$base.${names[$i]}" 2>/dev/null || echo)"); done
    SCEN=$scen SRV=$server SECS=$secs RC=$rc PLACE=$PLACEMENT TOOL=$TOOL "$PY" - "$base.out" "${counts[@]}" <<'EOF' >>"$RESULTS"
import json, os, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
res = json.loads(lines[-1]) if lines else None
counts = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    counts[k] = int(v) if v.strip().isdigit() else None
print(json.dumps({"scenario": os.environ["SCEN"], "server": os.environ["SRV"], "placement": os.environ["PLACE"],
                  "tool": os.environ["TOOL"], "seconds": float(os.environ["SECS"]), "loadgen_exit": int(os.environ["RC"]),
                  "syscalls": counts, "result": res}))
EOF
    log "$scen/$server: ${counts[*]} syscalls in ${secs} s (loadgen exit $rc)"
}

FANOUT=(--subs 1000 --topics 1 --pubs 1 --rate 200 --size 64 --warmup 1 --duration "$DUR" --grace 3)
MANY=(--subs 10000 --topics 1000 --pubs 2 --rate 10000 --size 64 --connect-rate 5000 --warmup 1
      --duration "$DUR" --grace 3)
FANMAX=(--subs 1000 --topics 1 --pubs 1 --rate 0 --e2e --window 32 --size 64 --warmup 1 --duration "$DUR"
        --grace 3)
for s in tidings uws; do
    if [[ $s == tidings ]]; then start_server s_tidings tidings "${TID[@]}" || true
    else start_server s_uws node "${NODE_UWS[@]}" || true; fi
    measure fanout "$s" "s_$s" -- "${FANOUT[@]}"
    measure many "$s" "s_$s" -- "${MANY[@]}"
    measure fanmax "$s" "s_$s" -- "${FANMAX[@]}"
    stop_server "s_$s"
done

mkdir -p "$OUT"
"$PY" "$BENCH/syscalls.py" --results "$RESULTS" --out "$OUT" --quick "$QUICK"
log "done in $(($(date +%s) - T_START)) s: $OUT/syscalls.json and the syscalls section of $OUT/benchmarks.md"
