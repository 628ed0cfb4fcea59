#!/usr/bin/env bash
# System calls per delivery, before and after: tidings as it was at
# BENCH_BEFORE (built in a temporary git worktree), tidings as it is
# (bin/tidings) and uWebSockets.js, side by side:
#
#   make bench-syscalls   (also the last part of `make bench`)
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
# the window.  Calls are counted as entries into the kernel: one io_uring_enter
# is one call however many sends it submits (perf also counts the
# io_uring_enter entries alone, syscalls:sys_enter_io_uring_enter, when the
# kernel has that tracepoint).  tidings is counted in two groups: master +
# workers, and its embedded redis-server; uWS is its node process (all threads).
#
# Scenarios: the loads of run.sh, so that every scenario of docs/benchmarks.md
# has its calls per delivery:
#   fanout      scenario 1: 1,000 subscribers of 1 topic, maximum rate (window 32)
#   many        scenario 2: 10,000 subscribers over 1,000 topics, 2 publishers, maximum rate
#   latency     scenario 3: 1,000 subscribers of 1 topic, 20 publishes/s
#   latency100  scenario 3: 100 subscribers of 1 topic, 200 publishes/s
#   fanout_e2e  scenario 11: fanout with loadgen --e2e
#   many_e2e    scenario 11: many with loadgen --e2e
# The three servers run side by side; each scenario measures them in turn
# (before, after, uWS).
#
# Writes docs/syscalls.json and the section between <!-- syscalls:begin -->
# and <!-- syscalls:end --> of docs/benchmarks.md (report.py keeps it).
# Environment:
#   BENCH_BEFORE=REV     the "before" tidings (default 8e70e71, the commit issue 15
#                        started from; "none": no before column).  Built with
#                        make -j2 bin/tidings in a git worktree under the work
#                        directory, removed at exit.
#   SYSCALLS_PLACEMENT   split (the default), shared, or both
#   SYSCALLS_TOOL        perf or strace (default: perf if it works)
#   SYSCALLS_DURATION    seconds of each loadgen window (default 6)
#   BENCH_OUT, BENCH_QUICK=1, BENCH_TIME_LIMIT (watchdog, default 900 s)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/docs}
QUICK=${BENCH_QUICK:-0}
TIME_LIMIT=${BENCH_TIME_LIMIT:-900}
PORT_RANGE=${BENCH_PORTS:-18900-18999}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
DUR=${SYSCALLS_DURATION:-6}
[[ $QUICK == 1 ]] && DUR=3
BEFORE=${BENCH_BEFORE:-8e70e71}
[[ $BEFORE == none ]] && BEFORE=
PLACEMENTS=${SYSCALLS_PLACEMENT:-split}
[[ $PLACEMENTS == both ]] && PLACEMENTS="shared split"

T_START=$(date +%s)
log() { printf '[syscalls %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
bench_prereqs
bench_init tidings-syscalls

SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
apt_install() {  # PACKAGE: bounded, like bench_prereqs installs gnuplot
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q "$1" >/dev/null; then
        $SUDO timeout 300 apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q "$1" >/dev/null
    fi
}
perf_works() { command -v perf >/dev/null && timeout 10 perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; }
TOOL=${SYSCALLS_TOOL:-}
if [[ -z $TOOL ]]; then
    # Debian's perf is the linux-perf package (not in deploy/install-deps.sh)
    if ! command -v perf >/dev/null; then
        log "installing linux-perf"
        apt_install linux-perf || log "could not install linux-perf"
    fi
    if perf_works; then TOOL=perf; else TOOL=strace; fi
fi
if [[ $TOOL == strace ]] && ! command -v strace >/dev/null; then
    log "installing strace"
    apt_install strace
fi
EVENTS=raw_syscalls:sys_enter
if [[ $TOOL == perf ]] &&
    timeout 10 perf stat -e syscalls:sys_enter_io_uring_enter -- true >/dev/null 2>&1; then
    EVENTS+=,syscalls:sys_enter_io_uring_enter
fi

# ------------------------------------------------------------------ before
# tidings as it was at BENCH_BEFORE, built in a temporary git worktree
BEFORE_DIR=$WORK/before
BEFORE_DESC=
bench_at_exit() {
    if [[ -d $BEFORE_DIR ]]; then
        git -C "$ROOT" worktree remove --force "$BEFORE_DIR" >/dev/null 2>&1 || true
        git -C "$ROOT" worktree prune >/dev/null 2>&1 || true
    fi
}
if [[ -n $BEFORE ]]; then
    if ! git -C "$ROOT" rev-parse -q --verify "$BEFORE^{commit}" >/dev/null; then
        log "BENCH_BEFORE=$BEFORE: no such commit in this clone (shallow?); measuring without it"
        BEFORE=
    else
        BEFORE_DESC=$(git -C "$ROOT" log -1 --format='%h %cs' "$BEFORE")
        log "building the before tidings ($BEFORE_DESC) in $BEFORE_DIR"
        git -C "$ROOT" worktree add -q --detach "$BEFORE_DIR" "$BEFORE"
        if ! timeout 900 make -C "$BEFORE_DIR" -j2 bin/tidings >"$WORK/before-build.log" 2>&1; then
            log "building $BEFORE failed; measuring without it:"
            tail -n 15 "$WORK/before-build.log" >&2 || true
            BEFORE=
        fi
    fi
fi
AFTER_DESC="$(git -C "$ROOT" log -1 --format='%h %cs' HEAD)"
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || AFTER_DESC+=" + uncommitted changes"
SERVERS=(after uws)
if [[ -n $BEFORE ]]; then
    SERVERS=(before after uws)
    tidings_args "$BEFORE_DIR/bin/tidings"
    TID_BEFORE=("${TID_ARGS[@]}")
fi
log "counting with $TOOL ($EVENTS); placement(s) $PLACEMENTS; servers ${SERVERS[*]}; work dir $WORK"
RUNS=$((6 * ${#SERVERS[@]} * $(wc -w <<<"$PLACEMENTS")))
log "estimated time: ~$(((RUNS * (DUR + 4) + 30 + 59) / 60)) min for $RUNS runs (plus the build above)"

# count_syscalls SECONDS OUTFILE PIDS(comma-separated): writes "TOTAL IO_URING_ENTER"
# (either may be empty: not counted)
count_syscalls() {
    local secs=$1 out=$2 pidlist=$3
    if [[ $TOOL == perf ]]; then
        timeout -k 2 $((${secs%.*} + 10)) perf stat -x, -e "$EVENTS" -p "$pidlist" -- sleep "$secs" \
            2>"$out.raw" >/dev/null || true
        awk -F, '$3 == "raw_syscalls:sys_enter" { t = $1 } $3 == "syscalls:sys_enter_io_uring_enter" { u = $1 }
                 END { print t, u }' "$out.raw" >"$out"
    else
        local args=() p
        for p in ${pidlist//,/ }; do args+=(-p "$p"); done
        timeout -s INT -k 3 "$secs" strace -c -f "${args[@]}" -o "$out.raw" >/dev/null 2>&1 || true
        awk '$NF == "total" { t = $4 } $NF == "io_uring_enter" { u = $4 } END { print t, (u == "" ? 0 : u) }' \
            "$out.raw" >"$out"
    fi
}

# measure SCEN SERVER INSTANCE -- loadgen options: one run with the counts
measure() {
    local scen=$1 server=$2 inst=$3; shift 4
    local base=$WORK/$scen-$server-$PLACEMENT rc=0 i groups=() names=() g
    if ! running "$inst"; then log "$scen/$server: server not running"; return 0; fi
    local spid=${SPID[$inst]}
    if [[ $server != uws ]]; then
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
counts, uring = {}, {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    f = v.split()
    counts[k] = int(f[0]) if f and f[0].isdigit() else None
    uring[k] = int(f[1]) if len(f) > 1 and f[1].isdigit() else None
print(json.dumps({"scenario": os.environ["SCEN"], "server": os.environ["SRV"], "placement": os.environ["PLACE"],
                  "tool": os.environ["TOOL"], "seconds": float(os.environ["SECS"]), "loadgen_exit": int(os.environ["RC"]),
                  "syscalls": counts, "io_uring_enter": uring, "result": res}))
EOF
    log "$scen/$server/$PLACEMENT: ${counts[*]} (calls, io_uring_enter) in ${secs} s (loadgen exit $rc)"
}

# the loads of run.sh's scenarios 1, 2, 3 and 11, with this script's duration
WIN=(--rate 0 --window 32)
FANOUT=(--subs 1000 --topics 1 --pubs 1 "${WIN[@]}" --size 64 --warmup 1 --duration "$DUR" --grace 3)
MANY=(--subs 10000 --topics 1000 --pubs 2 "${WIN[@]}" --size 64 --connect-rate 5000 --warmup 1
      --duration "$DUR" --grace 3)
LATENCY=(--subs 1000 --topics 1 --pubs 1 --rate 20 --size 64 --warmup 1 --duration "$DUR" --grace 3)
LATENCY100=(--subs 100 --topics 1 --pubs 1 --rate 200 --size 64 --warmup 1 --duration "$DUR" --grace 3)

for pl in $PLACEMENTS; do
    set_placement "$pl"
    for s in "${SERVERS[@]}"; do
        case $s in
            before) start_server s_before tidings "${TID_BEFORE[@]}" || true ;;
            after) start_server s_after tidings "${TID[@]}" || true ;;
            uws) start_server s_uws node "${NODE_UWS[@]}" || true ;;
        esac
    done
    for scen in fanout many latency latency100 fanout_e2e many_e2e; do
        for s in "${SERVERS[@]}"; do
            case $scen in
                fanout) measure fanout "$s" "s_$s" -- "${FANOUT[@]}" ;;
                many) measure many "$s" "s_$s" -- "${MANY[@]}" ;;
                latency) measure latency "$s" "s_$s" -- "${LATENCY[@]}" ;;
                latency100) measure latency100 "$s" "s_$s" -- "${LATENCY100[@]}" ;;
                fanout_e2e) measure fanout_e2e "$s" "s_$s" -- "${FANOUT[@]}" --e2e ;;
                many_e2e) measure many_e2e "$s" "s_$s" -- "${MANY[@]}" --e2e ;;
            esac
        done
    done
    for s in "${SERVERS[@]}"; do stop_server "s_$s"; done
done

mkdir -p "$OUT"
"$PY" "$BENCH/syscalls.py" --results "$RESULTS" --out "$OUT" --quick "$QUICK" --events "$EVENTS" \
    --before "${BEFORE:+$BEFORE_DESC}" --after "$AFTER_DESC" --elapsed "$(($(date +%s) - T_START))"
log "done in $(($(date +%s) - T_START)) s: $OUT/syscalls.json and the syscalls section of $OUT/benchmarks.md"
