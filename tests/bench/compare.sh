#!/usr/bin/env bash
# Before/after benchmark of two builds of tidings, side by side in one run:
#
#   bash tests/bench/compare.sh [BASE_REV] [ROUNDS]      (make bench-compare BASE=rev)
#
# Builds bin/tidings of BASE_REV (default HEAD~1) in a temporary git worktree
# and the working tree's own bin/tidings, then runs the same loadgen scenarios
# against each, alternating base/new ROUNDS times (default 3) so that a busy
# spell of the machine hits both, and prints the medians and the ratio
# new/base.  Servers run with their defaults (workers per core, embedded
# Redis) and --rate-limit 0; each run has a hard time limit.  Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE_REV=${1:-HEAD~1}
ROUNDS=${2:-3}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
LOADGEN=$ROOT/tests/bench/loadgen
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidings-compare.XXXXXX")
SRV_PID=

cleanup() {
    if [[ -n $SRV_PID ]]; then kill -TERM "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
    git -C "$ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '[compare] %s\n' "$*" >&2; }

log "building base ($BASE_REV) and new"
git -C "$ROOT" worktree add -q --detach "$WORK/base" "$BASE_REV"
make -s -C "$WORK/base" bin/tidings >/dev/null
make -s -C "$ROOT" bin/tidings >/dev/null
make -s -C "$ROOT/tests/bench" loadgen >/dev/null
ulimit -n "$(ulimit -Hn)"

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run_one BIN NAME SCENARIO -- loadgen args: one JSON line to $WORK/results.jsonl
run_one() {
    local bin=$1 name=$2 scen=$3; shift 4
    local port admin i
    port=$(free_port); admin=$(free_port)
    timeout -k 5 120 "$bin" --bind 127.0.0.1 --port "$port" --admin-listen "127.0.0.1:$admin" \
        --rate-limit 0 --log-level warn --shutdown-grace 2 >"$WORK/$name.log" 2>&1 &
    SRV_PID=$!
    for ((i = 0; i < 300; i++)); do   # ready: every worker listens and has Redis
        curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local json
    json=$(timeout -k 3 90 "$LOADGEN" --port "$port" "$@" --server-pids "$SRV_PID" --server-tree \
        --json --quiet 2>/dev/null | tail -n 1) || true
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=
    [[ $json == '{'* ]] || json='{}'
    printf '{"build":"%s","scenario":"%s","r":%s}\n' "$name" "$scen" "$json" >>"$WORK/results.jsonl"
}

FANOUT=(--subs 1000 --topics 1 --pubs 1 --rate 0 --window 32 --size 64 --warmup 1 --duration 8 --grace 3)
MANY=(--subs 10000 --topics 1000 --pubs 2 --rate 0 --window 32 --size 64 --connect-rate 5000 --warmup 1
      --duration 6 --grace 3)
LATENCY=(--subs 1000 --topics 1 --pubs 1 --rate 20 --size 64 --warmup 1 --duration 8 --grace 3)

for ((r = 1; r <= ROUNDS; r++)); do
    for build in base new; do
        bin=$ROOT/bin/tidings
        [[ $build == base ]] && bin=$WORK/base/bin/tidings
        log "round $r: $build"
        run_one "$bin" "$build" fanout -- "${FANOUT[@]}"
        run_one "$bin" "$build" many -- "${MANY[@]}"
        run_one "$bin" "$build" latency -- "${LATENCY[@]}"
    done
done

"$PY" - "$WORK/results.jsonl" "$BASE_REV" "$(git -C "$ROOT" describe --always --dirty)" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(build, scen, key):
    v = [r["r"].get(key) for r in rows if r["build"] == build and r["scenario"] == scen]
    v = [x for x in v if x is not None]
    return (statistics.median(v), v) if v else (None, [])
print(f"base = {sys.argv[2]}, new = {sys.argv[3]}; medians of {len(rows) // 6} alternating rounds")
print("| scenario | metric | base | new | new/base | runs (base; new) |")
print("|---|---|---|---|---|---|")
for scen, key, unit in (("fanout", "deliveries_per_s", "deliveries/s"), ("many", "deliveries_per_s", "deliveries/s"),
                        ("latency", "latency_p99_ms", "p99 ms"), ("fanout", "server_cpu_pct", "server CPU %")):
    b, bv = med("base", scen, key)
    n, nv = med("new", scen, key)
    ratio = f"{n / b:.2f}x" if b and n else "-"
    fmt = lambda x: "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.2f}")
    print(f"| {scen} | {unit} | {fmt(b)} | {fmt(n)} | {ratio} | {', '.join(map(fmt, bv))}; {', '.join(map(fmt, nv))} |")
EOF
