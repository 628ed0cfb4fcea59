#!/usr/bin/env bash
# Growth curves: how tidings and uWebSockets.js scale, side by side.
#
#   make bench-growth   (also the last part of `make bench`)
#
# Four sweeps, each point one bounded loadgen run against the servers of
# run.sh (tidings with its defaults and the bench options, the uWS.js server
# of tests/bench/servers), from tests/bench/lib.sh:
#   subs     subscribers of one topic: 10 ... 10,000
#   topics   10,000 subscribers spread over 1 ... 10,000 topics (2 publishers)
#   size     payload 64 B ... 64 KiB (65,536 B), 1,000 subscribers of one topic;
#            for this sweep both servers take messages up to 128 KiB (a 64 KiB
#            payload does not fit in a 64 KiB publish) and queue up to 3 MiB per
#            connection before they drop (a window of 32 such messages is 2 MiB):
#            tidings --max-message-size 128k --max-queued-bytes 3m, uws-server.js
#            --max-payload 131072 --max-backpressure 3145728
#   idle     server memory against idle subscribed connections 1,000 ... 19,000
#            (100 topics; a freshly started server for every point; tidings:
#            the workers' RSS, as scenario 5 of run.sh; uWS: the node process)
# The pub/sub sweeps run at maximum rate in end-to-end mode (loadgen --rate 0
# --e2e --window 32): a publisher has at most 32 messages that have not yet
# reached every subscriber of their topic, so deliveries/s is the rate at
# which the server (or the loadgen) really gets messages to everyone, and the
# latency cannot grow without bound by queueing (it is a window's worth of
# deliveries at most).  A fixed rate would measure only latency and CPU; the
# maximum is what grows or does not.  Every point also records the server's
# CPU, so CPU per delivery shows where the cost per delivery is flat.
#
# Writes docs/growth.json, docs/growth-{subs,topics,size,idle}.png and the
# section between <!-- growth:begin --> and <!-- growth:end --> of
# docs/benchmarks.md (report.py keeps it when it rewrites the file).
#
# Environment: GROWTH_PLACEMENT (split: the loadgen on CPU 0, the servers on
# the others, the default; or shared), GROWTH_DURATION (4 s a point),
# GROWTH_ONLY=subs,topics,size,idle, BENCH_OUT (docs/), BENCH_QUICK=1 (a short
# try: fewer points, 1 s each), BENCH_TIME_LIMIT (watchdog, default 900 s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/docs}
QUICK=${BENCH_QUICK:-0}
TIME_LIMIT=${BENCH_TIME_LIMIT:-900}
PORT_RANGE=${BENCH_PORTS:-18800-18899}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
DUR=${GROWTH_DURATION:-4}
ONLY=${GROWTH_ONLY:-subs,topics,size,idle}
WINDOW=32

T_START=$(date +%s)
log() { printf '[growth %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
bench_prereqs
bench_init tidings-growth
set_placement "${GROWTH_PLACEMENT:-split}"
[[ $(ulimit -n) == unlimited || $(ulimit -n) -ge 19100 ]] ||
    die "open-file limit $(ulimit -n) is too low for 19,000 connections"

SUBS_PTS=(10 100 1000 3000 10000)
TOPIC_PTS=(1 10 100 1000 10000)
SIZE_PTS=(64 512 4096 16384 32768 65536)
IDLE_PTS=(1000 5000 10000 15000 19000)
WARM=1
if [[ $QUICK == 1 ]]; then
    DUR=1 WARM=0.5
    SUBS_PTS=(10 1000) TOPIC_PTS=(1 1000) SIZE_PTS=(64 65536) IDLE_PTS=(1000 5000)
fi
want() { [[ ,$ONLY, == *,$1,* ]]; }
log "work dir $WORK; placement $PLACEMENT; $DUR s a point"

BG_BUSY=$(busy_pct 2)
log "background CPU before the run: ${BG_BUSY}% of a core"

E2E=(--rate 0 --e2e --window "$WINDOW" --warmup "$WARM" --duration "$DUR" --grace 3 --connect-rate 5000)

# sweep NAME SUBS_FOR TOPICS_FOR PUBS SIZE_FOR POINTS...: one server of each
# kind for the whole sweep, the points in turn on both (tidings first)
pubsub_sweep() {
    local name=$1 pts=("${@:2}") s n subs topics pubs size targs=() uargs=()
    log "sweep $name: ${pts[*]}"
    if [[ $name == size ]]; then    # a 64 KiB payload in a publish is over 64 KiB
        targs=(--max-message-size 128k --max-queued-bytes 3m)
        uargs=(--max-payload 131072 --max-backpressure 3145728)
    fi
    for s in tidings uws; do
        if [[ $s == tidings ]]; then start_server g_tidings tidings "${TID[@]}" "${targs[@]}" || true
        else start_server g_uws node "${NODE_UWS[@]}" "${uargs[@]}" || true; fi
        for n in "${pts[@]}"; do
            case $name in
                subs) subs=$n topics=1 pubs=1 size=64 ;;
                topics) subs=10000 topics=$n pubs=2 size=64 ;;
                size) subs=1000 topics=1 pubs=1 size=$n ;;
            esac
            lg "$name" "$s" "$n" "g_$s" tree 90 -- --subs "$subs" --topics "$topics" --pubs "$pubs" \
                --size "$size" "${E2E[@]}"
        done
        stop_server "g_$s"
    done
}

if want subs; then pubsub_sweep subs "${SUBS_PTS[@]}"; fi
if want topics; then pubsub_sweep topics "${TOPIC_PTS[@]}"; fi
if want size; then pubsub_sweep size "${SIZE_PTS[@]}"; fi

if want idle; then
    log "sweep idle: ${IDLE_PTS[*]}"
    for n in "${IDLE_PTS[@]}"; do
        start_server i_tidings tidings "${TID[@]}" || true
        lg idle tidings "$n" i_tidings workers 90 -- --idle --subs "$n" --topics 100 \
            --connect-rate 5000 --duration 2
        stop_server i_tidings
        start_server i_uws node "${NODE_UWS[@]}" || true
        lg idle uws "$n" i_uws pid 90 -- --idle --subs "$n" --topics 100 --connect-rate 5000 --duration 2
        stop_server i_uws
    done
fi

ELAPSED=$(($(date +%s) - T_START))
log "writing the report ($ELAPSED s of measurements)"
mkdir -p "$OUT"
"$PY" "$BENCH/growth.py" --results "$RESULTS" --out "$OUT" --work "$WORK" --elapsed "$ELAPSED" \
    --quick "$QUICK" --placement "$PLACEMENT" --window $WINDOW --duration "$DUR" \
    --background-cpu "$BG_BUSY" --root "$ROOT"
for chart in subs topics size idle; do
    [[ -f $WORK/growth-$chart.gp ]] || continue
    (cd "$WORK" && timeout 60 gnuplot "growth-$chart.gp") || die "gnuplot failed on $chart"
    cp "$WORK/growth-$chart.png" "$OUT/growth-$chart.png"
done
log "done in $(($(date +%s) - T_START)) s: $OUT/growth.json, $OUT/growth-*.png, the growth section of $OUT/benchmarks.md"
