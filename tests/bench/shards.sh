#!/usr/bin/env bash
# Redis-bound publishing: one Redis, three Redis shards (--redis a,b,c) and a
# Redis Cluster of three masters (--redis-cluster), side by side.
#
#   make bench-shards   (also the last part of `make bench`)
#
# To make Redis the bottleneck on a small machine, every redis-server is
# pinned to the last CPU (taskset) and, where the cgroup v1 cpu controller is
# writable (root), limited to SHARDS_QUOTA percent of one core each (cfs
# quota): one Redis then has that much CPU, three have three times as much,
# which is what three Redis hosts give.  tidings (default workers) and the
# load generator use the rest.  Many topics (1000 subscribers on 1000
# topics), 8 publishers at maximum rate (64 unacknowledged each), 100-byte
# payloads.  Reported per mode and round: publishes/s acknowledged,
# deliveries/s, and Redis CPU per publish (the redis-servers' utime+stime
# over the window, from /proc, divided by the publishes).  Rounds
# alternate the modes.
#
# Writes docs/bench-shards.json and the table between the shards markers of
# docs/benchmarks.md (kept by report.py).  Every process runs under
# `timeout` and is killed by the EXIT trap.
#
# Environment: SHARDS_QUOTA (default 4), SHARDS_ROUNDS (3), SHARDS_DURATION
# (10 s), BENCH_OUT (docs/), BENCH_QUICK=1 (a short try).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=$ROOT/tests/bench
LOADGEN=$BENCH/loadgen
TIDINGS=$ROOT/bin/tidings
OUT=${BENCH_OUT:-$ROOT/docs}
QUOTA=${SHARDS_QUOTA:-4}
ROUNDS=${SHARDS_ROUNDS:-3}
DURATION=${SHARDS_DURATION:-10}
[[ ${BENCH_QUICK:-0} == 1 ]] && { ROUNDS=1; DURATION=3; }
PY=/usr/bin/python3
NCPU=$(nproc)
REDIS_CPU=$((NCPU - 1))
CG=/sys/fs/cgroup/cpu

T0=$(date +%s)
log() { printf '[shards %4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }

make -s -C "$ROOT" bin/tidings
make -s -C "$BENCH" loadgen
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidings-shards.XXXXXX")
PIDS=()
CGROUPS=()
cleanup() {
    local rc=$? p g
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for g in "${CGROUPS[@]}"; do rmdir "$g" 2>/dev/null || true; done
    [[ $rc -eq 0 ]] && rm -rf "$WORK" || log "failed ($rc); files in $WORK"
    exit "$rc"
}
trap cleanup EXIT

free_port() {  # a port p with p + 10000 free too (a cluster bus port)
    "$PY" - <<'EOF'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p > 55535:
        continue
    try:
        t = socket.socket(); t.bind(("127.0.0.1", p + 10000)); t.close()
    except OSError:
        continue
    print(p); break
EOF
}

limit_cpu() {  # pid name: the quota, where the cgroup can be written
    local g=$CG/tidings-bench-$2-$$
    if mkdir "$g" 2>/dev/null; then
        CGROUPS+=("$g")
        echo 100000 >"$g/cpu.cfs_period_us"
        echo $((QUOTA * 1000)) >"$g/cpu.cfs_quota_us"
        echo "$1" >"$g/cgroup.procs"
        return 0
    fi
    return 1
}

wait_ping() {
    local i
    for ((i = 0; i < 200; i++)); do
        redis-cli -p "$1" PING 2>/dev/null | grep -q PONG && return 0
        sleep 0.05  # polling for the fact (PONG), bounded
    done
    log "redis on $1 did not answer"; return 1
}

REDIS_PORTS=() REDIS_PIDS=()
start_redis() {  # n cluster(0/1)
    local i port dir
    REDIS_PORTS=() REDIS_PIDS=()
    for ((i = 0; i < $1; i++)); do
        port=$(free_port)
        dir=$WORK/redis-$port
        mkdir -p "$dir"
        local extra=()
        [[ $2 == 1 ]] && extra=(--cluster-enabled yes --cluster-config-file nodes.conf)
        timeout 600 taskset -c "$REDIS_CPU" redis-server --port "$port" --bind 127.0.0.1 \
            --save "" --appendonly no --dir "$dir" --loglevel warning "${extra[@]}" \
            >/dev/null 2>&1 &
        PIDS+=($!)
        wait_ping "$port"
        REDIS_PORTS+=("$port")
        REDIS_PIDS+=("$(pgrep -f "redis-server 127.0.0.1:$port" | head -1)")
        limit_cpu "${REDIS_PIDS[-1]}" "$port" && LIMITED=1 || LIMITED=0
    done
    if [[ $2 == 1 ]]; then
        local nodes=()
        for port in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
        timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
            >/dev/null
        for ((i = 0; i < 200; i++)); do
            redis-cli -p "${REDIS_PORTS[0]}" CLUSTER INFO | grep -q "cluster_state:ok" && break
            sleep 0.05
        done
    fi
}

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    for p in "${CGROUPS[@]}"; do rmdir "$p" 2>/dev/null || true; done
    CGROUPS=()
}

redis_ticks() {
    local p t=0
    for p in "${REDIS_PIDS[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' /proc/"$p"/stat))); done
    echo "$t"
}

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
run_mode() {  # mode round
    local mode=$1 args=()
    case $mode in
        one) start_redis 1 0; args=(--redis "redis://127.0.0.1:${REDIS_PORTS[0]}") ;;
        shards) start_redis 3 0
            args=(--redis "$(printf 'redis://127.0.0.1:%s,' "${REDIS_PORTS[@]}" | sed 's/,$//')") ;;
        cluster) start_redis 3 1
            args=(--redis-cluster "$(printf '127.0.0.1:%s,' "${REDIS_PORTS[@]}" | sed 's/,$//')") ;;
    esac
    local port admin
    port=$(free_port)
    admin=$(free_port)
    timeout 600 "$TIDINGS" --bind 127.0.0.1 --port "$port" --admin-listen "127.0.0.1:$admin" \
        --max-subscriptions 10 --rate-limit 0 "${args[@]}" >"$WORK/tidings-$mode-$2.log" 2>&1 &
    local tpid=$!
    PIDS+=("$tpid")
    local i
    for ((i = 0; i < 200; i++)); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local t1 t2 hz
    hz=$(getconf CLK_TCK)
    t1=$(redis_ticks)
    timeout $((DURATION + 120)) "$LOADGEN" --port "$port" --subs 1000 --topics 1000 --pubs 8 \
        --rate 0 --window 64 --size 100 --warmup 2 --duration "$DURATION" --json --quiet \
        >"$WORK/loadgen-$mode-$2.txt" || true
    t2=$(redis_ticks)
    local json
    json=$(tail -1 "$WORK/loadgen-$mode-$2.txt")
    "$PY" - "$mode" "$2" "$((t2 - t1))" "$hz" "$LIMITED" "$QUOTA" >>"$RESULTS" <<EOF
import json, sys
r = json.loads('''$json''')
mode, rnd, ticks, hz, limited, quota = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
pubs = r["acked_total"] or 1
print(json.dumps({"mode": mode, "round": rnd, "published_per_s": r["published_per_s"],
                  "deliveries_per_s": r["deliveries_per_s"], "lost": r["lost"],
                  "errors": r["errors"], "latency_p99_ms": r["latency_p99_ms"],
                  "redis_cpu_us_per_publish": ticks / hz * 1e6 / pubs,
                  "redis_cpu_s": ticks / hz, "quota_pct": quota if limited else None}))
EOF
    log "$mode round $2: $(tail -1 "$RESULTS")"
    stop_all
}

for ((r = 1; r <= ROUNDS; r++)); do
    for mode in one shards cluster; do run_mode "$mode" "$r"; done
done

mkdir -p "$OUT"
"$PY" - "$RESULTS" "$OUT" "$REDIS_CPU" "$BENCH" <<'EOF'
import json, statistics, sys, pathlib
rows = [json.loads(l) for l in open(sys.argv[1])]
out = pathlib.Path(sys.argv[2])
(out / "bench-shards.json").write_text(json.dumps(rows, indent=1) + "\n")
modes = [("one", "one Redis"), ("shards", "three shards (--redis a,b,c)"),
         ("cluster", "Redis Cluster, three masters")]
quota = rows[0]["quota_pct"]
limit = (f"each redis-server pinned to CPU {sys.argv[3]} and limited to {quota} % of one core"
         if quota else f"each redis-server pinned to CPU {sys.argv[3]} (no cgroup quota here)")
base = statistics.median(r["published_per_s"] for r in rows if r["mode"] == "one")
lines = ["<!-- shards:begin -->", "## Redis-bound publishing: one Redis, three shards, a Cluster", "",
         f"`make bench-shards` (tests/bench/shards.sh): 1000 subscribers on 1000 topics, 8 publishers "
         f"at maximum rate (64 in flight each), 100-byte payloads; {limit}, so that Redis is the "
         "bottleneck. Medians of the rounds (each round runs the three modes in turn); every round "
         "is in docs/bench-shards.json.", "",
         "| mode | publishes/s | vs one Redis | deliveries/s | p99 ms | Redis CPU per publish | lost |",
         "|---|---|---|---|---|---|---|"]
for key, name in modes:
    rs = [r for r in rows if r["mode"] == key]
    pps = statistics.median(r["published_per_s"] for r in rs)
    each = ", ".join(format(r["published_per_s"], ",.0f") for r in rs)
    lines.append(f"| {name} | {pps:,.0f} ({each}) "
                 f"| {pps / base:.2f}x | {statistics.median(r['deliveries_per_s'] for r in rs):,.0f} "
                 f"| {statistics.median(r['latency_p99_ms'] for r in rs):.1f} "
                 f"| {statistics.median(r['redis_cpu_us_per_publish'] for r in rs):.1f} µs "
                 f"| {sum(r['lost'] for r in rs)} |")
lines += ["<!-- shards:end -->"]
section = "\n".join(lines) + "\n"
print(section)
sys.path.insert(0, sys.argv[4])
import sections
sections.put(str(out / "benchmarks.md"), "shards", section)
EOF
