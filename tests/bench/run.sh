#!/usr/bin/env bash
# tidings benchmark harness: `make bench` (or bash tests/bench/run.sh).
#
# Runs a bounded set of scenarios with tests/bench/loadgen against three servers
# side by side -- tidings (default workers, embedded Redis), the Node.js `ws`
# server of the original example and uWebSockets.js -- all on loopback, and
# regenerates docs/benchmarks.md, docs/bench-results.json, docs/benchmarks.png
# and the performance tables of README.md (between its bench markers).
#
# Every server runs under `timeout` (its own process group, hard time limit) and
# is stopped by pid when it is no longer needed, and by the EXIT trap on failure
# or interruption. Every loadgen run has a hard time limit too, and the whole
# script has a watchdog (BENCH_TIME_LIMIT seconds).
#
# Environment:
#   BENCH_QUICK=1        much shorter runs, to try the harness (numbers meaningless)
#   BENCH_OUT=DIR        where to write the three docs files (default: docs/); the
#                        README's performance tables then go to DIR/README.md (a
#                        copy of README.md) instead of README.md
#   BENCH_README=FILE    the README whose marked tables (<!-- bench:summary:begin -->
#                        ..., <!-- bench:redis:begin --> ...) are rewritten
#   BENCH_PLACEMENT=P    shared (nothing pinned: today's numbers), split (the loadgen
#                        pinned to CPU 0, every server process to the other CPUs,
#                        with taskset) or both (default: every scenario twice,
#                        shared first); results and the report carry the placement
#   BENCH_TIME_LIMIT=S   watchdog for the whole run (default 1200, 2100 with both)
#   BENCH_LAT_ROUNDS=N   rounds of scenario 3 (default 3; every run is reported)
#   BENCH_PORTS=LO-HI    ports to pick free ones from (default 18500-18799)
#   BENCH_ONLY=N,M       run only these scenarios (numbers as below; 4 and 7 share
#                        servers and run together) and print their summaries:
#                        the docs files are left alone
#                        (e.g. BENCH_ONLY=3: every latency run, both loads;
#                        BENCH_ONLY=10: the HTTP API beside WebSocket publishes;
#                        BENCH_ONLY=11: the end-to-end window beside the ack window)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/docs}
QUICK=${BENCH_QUICK:-0}
PLACEMENTS=${BENCH_PLACEMENT:-both}
[[ $PLACEMENTS == both ]] && PLACEMENTS="shared split"
TIME_LIMIT=${BENCH_TIME_LIMIT:-$([[ $PLACEMENTS == *" "* ]] && echo 2100 || echo 1200)}
PORT_RANGE=${BENCH_PORTS:-18500-18799}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

T_START=$(date +%s)
log() { printf '[bench %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
bench_prereqs
bench_init tidings-bench

# ------------------------------------------------------------------- scenarios
# Durations (seconds); BENCH_QUICK=1 only checks that the harness works.
if [[ $QUICK == 1 ]]; then D_FAN=2 D_MANY=2 D_LAT=2 D_LARGE=2 D_IDLE=1 D_REDIS=2 D_CPU=2 WARM=0.5; IDLE_CONNS=2000
else D_FAN=10 D_MANY=6 D_LAT=10 D_LARGE=6 D_IDLE=3 D_REDIS=10 D_CPU=6 WARM=1; IDLE_CONNS=10000; fi
D_API=$D_FAN; [[ $QUICK == 1 ]] && D_API=2
D_E2E=6; [[ $QUICK == 1 ]] && D_E2E=2
FAN_WINDOW=32   # unacknowledged publishes at --rate 0; see the notes in docs/benchmarks.md
# the loads of scenarios 1, 2 and 3, which 8, 9 and 11 repeat
FANOUT=(--subs 1000 --topics 1 --pubs 1 --rate 0 --window "$FAN_WINDOW" --size 64 --warmup "$WARM"
        --duration "$D_FAN" --grace 3)
MANY=(--subs 10000 --topics 1000 --pubs 2 --rate 0 --window "$FAN_WINDOW" --size 64 --connect-rate 5000
      --warmup "$WARM" --duration "$D_MANY" --grace 3)
LATENCY=(--subs 1000 --topics 1 --pubs 1 --rate 20 --size 64 --warmup "$WARM" --duration "$D_LAT" --grace 3)
LATENCY100=(--subs 100 --topics 1 --pubs 1 --rate 200 --size 64 --warmup "$WARM" --duration "$D_LAT" --grace 3)
LAT_ROUNDS=${BENCH_LAT_ROUNDS:-3}   # scenario 3: runs per server and load, every one reported


log "work dir $WORK"

ONLY=${BENCH_ONLY:-}
want() { [[ -z $ONLY || ,$ONLY, == *,$1,* ]]; }

# The time estimate printed at the start (and quoted in the Makefile and the
# READMEs): a loadgen run takes its warm-up and duration plus ~1 s (setup,
# closing, bookkeeping), ~5 s with 10,000 connections; a server start and stop
# ~1.5 s; everything once per placement.
estimate_s() {
    awk -v W="$WARM" -v F="$D_FAN" -v M="$D_MANY" -v L="$D_LAT" -v G="$D_LARGE" -v I="$D_IDLE" \
        -v R="$D_REDIS" -v C="$D_CPU" -v A="$D_API" -v E="$D_E2E" -v N="$LAT_ROUNDS" -v only=",$ONLY," \
        -v np="$(wc -w <<<"$PLACEMENTS")" '
    function want(n) { return only == ",," || index(only, "," n ",") > 0 }
    function run(d, o) { return W + d + o }
    BEGIN {
        s = 0; o = 1; big = 5; srv = 1.5
        if (want(1)) s += 3 * run(F, o) + 3 * srv
        if (want(2)) s += 3 * run(M, big) + 3 * srv
        if (want(3)) s += 6 * N * run(L, o) + 3 * srv
        if (want(4) || want(7)) s += 5 * run(G, o) + 2 * run(C, o) + 5 * srv
        if (want(6)) s += 2 * run(R, o) + srv
        if (want(8)) s += run(F, o) + run(M, big) + run(L, o) + srv
        if (want(9)) s += 2 * (run(F, o) + run(M, big) + run(L, o)) + 2 * srv
        if (want(5)) s += 3 * (I + 4) + 3 * srv
        if (want(10)) s += 4 * run(A, o) + srv
        if (want(11)) s += 2 * (2 * run(E, o) + 2 * run(E, big)) + 2 * srv
        print int(s * np + 10)
    }'
}
EST=$(estimate_s)
log "estimated time: ~$(((EST + 59) / 60)) min ($EST s) for ${ONLY:+scenarios $ONLY, }placement(s) $PLACEMENTS"
[[ $EST -lt $TIME_LIMIT ]] || log "warning: the estimate exceeds the watchdog (BENCH_TIME_LIMIT=$TIME_LIMIT s)"

# Other processes on the machine skew every number: wait up to BENCH_QUIET_WAIT
# seconds for it to be quiet (busy < 25% of one core over 2 s), then go on anyway
# and let the report say how busy it was.
BG_BUSY=$(busy_pct 2)
for ((waited = 0; BG_BUSY >= 25 && waited < ${BENCH_QUIET_WAIT:-60}; waited += 7)); do
    log "the machine is busy (${BG_BUSY}% of a core used by other processes); waiting"
    sleep 5
    BG_BUSY=$(busy_pct 2)
done
log "background CPU before the run: ${BG_BUSY}% of a core"

for pl in $PLACEMENTS; do
    set_placement "$pl"
    log "placement $pl${LG_PIN[*]:+: loadgen ${LG_PIN[*]}, servers ${SRV_PIN[*]}}"

    # 1. fan-out: 1,000 subscribers of one topic, 64-byte payloads, maximum rate.
    if want 1; then
    log "scenario 1: fan-out"
    trio_run fanout max 60 "${FANOUT[@]}"
    fi

    # 2. many topics: 10,000 subscribers over 1,000 topics, maximum rate, 2 publishers.
    if want 2; then
    log "scenario 2: many topics"
    trio_run many max 90 "${MANY[@]}"
    fi

    # 3. tail latency at fixed moderate rates (issue 15): 1,000 subscribers at
    #    20 messages/s and 100 subscribers at 200 messages/s, one topic, 64 B.
    #    $LAT_ROUNDS rounds on one trio, the servers interleaved (tidings, uWS,
    #    ws, tidings, ...) so that a busy spell of the machine does not hit one
    #    server only; every run is reported (variants 20rps.N and 200rps.N).
    if want 3; then
    log "scenario 3: latency at 20 msg/s to 1,000 subs and 200 msg/s to 100 subs, $LAT_ROUNDS rounds"
    start_trio
    for ((round = 1; round <= LAT_ROUNDS; round++)); do
        for s in tidings uws ws; do
            lg latency "$s" "20rps.$round" "$s" tree 60 -- "${LATENCY[@]}"
        done
        for s in tidings uws ws; do
            lg latency "$s" "200rps.$round" "$s" tree 60 -- "${LATENCY100[@]}"
        done
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
    LARGE=(--subs 100 --topics 1 --pubs 1 --rate 0 --window 8 --size 16384 --warmup "$WARM" --duration "$D_LARGE" --grace 3)
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
    CPUFAN=(--subs 1000 --topics 1 --pubs 1 --rate 100 --size 1024 --warmup "$WARM" --duration "$D_CPU" --grace 3)
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
    IDLE=(--idle --subs "$IDLE_CONNS" --topics 100 --connect-rate 5000 --duration "$D_IDLE")
    # a few connections first, not counted: one-time costs are not per connection
    warm() { timeout -k 3 30 "$LOADGEN" --port "${PORT[$1]}" --idle --subs 50 --topics 100 --duration 0.5 \
             --quiet >/dev/null 2>&1 </dev/null || true; }
    start_server idle_tidings tidings "${TID[@]}" || true
    warm idle_tidings
    lg idle tidings workers idle_tidings workers 60 -- "${IDLE[@]}"
    stop_server idle_tidings
    start_server idle_uws node "${NODE_UWS[@]}" || true
    warm idle_uws
    lg idle uws pid idle_uws pid 60 -- "${IDLE[@]}"
    stop_server idle_uws
    start_server idle_ws node "${NODE_WS[@]}" || true
    warm idle_ws
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
        APIPUB=(--subs 100 --topics 10 --pubs 4 --rate 0 --window "$FAN_WINDOW" --size 64 --warmup "$WARM"
                --duration "$D_API" --grace 3)
        for round in 1 2; do
            lg api tidings "websocket$round" tidings_api tree 60 -- "${APIPUB[@]}"
            lg api tidings "http$round" tidings_api tree 60 -- "${APIPUB[@]}" --http-pub "$API_KEY"
        done
        stop_server tidings_api
    else
        log "scenario 10: skipped, this tidings has no --api-key"
    fi
    fi

    # 11. end-to-end window (issue 15): the fan-out and many-topics loads with the
    #     publisher's window closing when every subscriber has the message
    #     (loadgen --e2e) beside the usual acknowledgement window, on the same
    #     server instance, tidings and uWS.
    if want 11; then
    log "scenario 11: end-to-end window vs acknowledgement window"
    start_server tidings tidings "${TID[@]}" || true
    start_server uws node "${NODE_UWS[@]}" || true
    for s in tidings uws; do
        lg e2e "$s" fanout_ack "$s" tree 60 -- "${FANOUT[@]}" --duration $D_E2E
        lg e2e "$s" fanout_e2e "$s" tree 60 -- "${FANOUT[@]}" --duration $D_E2E --e2e
        lg e2e "$s" many_ack "$s" tree 90 -- "${MANY[@]}" --duration $D_E2E
        lg e2e "$s" many_e2e "$s" tree 90 -- "${MANY[@]}" --duration $D_E2E --e2e
    done
    stop_server tidings
    stop_server uws
    fi
done

if [[ -n $ONLY ]]; then
    if want 3; then "$PY" "$BENCH/report.py" --results "$RESULTS" --latency-summary; fi
    if want 10; then "$PY" "$BENCH/report.py" --results "$RESULTS" --api-summary; fi
    if want 11; then "$PY" "$BENCH/report.py" --results "$RESULTS" --e2e-summary; fi
    log "BENCH_ONLY=$ONLY: done in $(($(date +%s) - T_START)) s; docs/ left alone"
    exit 0
fi

# ---------------------------------------------------------------------- report
ELAPSED=$(($(date +%s) - T_START))
log "writing the report ($ELAPSED s of benchmarks)"
mkdir -p "$OUT"
# The README's performance tables (its marked blocks) come from this run too:
# the repository's README.md, or with BENCH_OUT a copy of it there.
if [[ -n ${BENCH_README:-} ]]; then README=$BENCH_README
elif [[ -n ${BENCH_OUT:-} ]]; then README=$OUT/README.md; [[ -f $README ]] || cp "$ROOT/README.md" "$README"
else README=$ROOT/README.md; fi
"$PY" "$BENCH/report.py" --results "$RESULTS" --out "$OUT" --work "$WORK" --elapsed "$ELAPSED" \
    --quick "$QUICK" --fan-window "$FAN_WINDOW" --root "$ROOT" --background-cpu "$BG_BUSY" --readme "$README"
(cd "$WORK" && timeout 60 gnuplot chart.gp) || die "gnuplot failed"
cp "$WORK/benchmarks.png" "$OUT/benchmarks.png"
log "done in $(($(date +%s) - T_START)) s: $OUT/benchmarks.md, $OUT/bench-results.json, $OUT/benchmarks.png, the tables of $README"
