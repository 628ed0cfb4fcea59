#!/bin/bash
# deploy/redis-local.sh - try tidings over several Redis servers on one
# machine: three independent shards, or a Redis Cluster of three masters
# with a replica each, all on 127.0.0.1.
#
#   deploy/redis-local.sh shards  up|down [DIR]
#   deploy/redis-local.sh cluster up|down [DIR]
#
# "up" starts the redis-servers (ports 7101-7103 for shards, 7201-7206 for
# the cluster; BASE_PORT=N moves them), waits until they answer (and, for
# the cluster, until it is ok and every replica in sync), and prints the
# tidings option that uses them, e.g.
#   bin/tidings --redis redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103
#   bin/tidings --redis-cluster 127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
# "down" stops them.  DIR (default /tmp/tidings-redis-MODE) holds their
# files and pids.  The settings are those of deploy/redis-pubsub.conf and
# deploy/redis-cluster.conf, minus what only a real host needs (bind, dir).
set -euo pipefail

mode=${1:-}
action=${2:-}
dir=${3:-/tmp/tidings-redis-$mode}
case $mode in
    shards) n=3; base=${BASE_PORT:-7101} ;;
    cluster) n=6; base=${BASE_PORT:-7201} ;;
    *) echo "usage: $0 shards|cluster up|down [DIR]" >&2; exit 2 ;;
esac

answers() { redis-cli -p "$1" PING 2>/dev/null | grep -q PONG; }

wait_for() {  # what, command...: up to 30 s
    local what=$1 i
    shift
    for ((i = 0; i < 300; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    echo "$0: timed out waiting for $what" >&2
    return 1
}

cluster_ok() { redis-cli -p "$base" CLUSTER INFO 2>/dev/null | grep -q "cluster_state:ok"; }

replicas_in_sync() {
    local p synced=0
    for ((p = base; p < base + n; p++)); do
        redis-cli -p "$p" INFO replication | grep -q "master_link_status:up" && synced=$((synced + 1))
    done
    [[ $synced -eq $((n / 2)) ]]
}

case $action in
    up)
        mkdir -p "$dir"
        for ((p = base; p < base + n; p++)); do
            mkdir -p "$dir/$p"
            args=(--port "$p" --bind 127.0.0.1 --dir "$dir/$p" --daemonize yes
                  --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log"
                  --save "" --appendonly yes --appendfsync always
                  --client-output-buffer-limit "pubsub 256mb 64mb 30")
            [[ $mode == cluster ]] && args+=(--cluster-enabled yes --cluster-config-file nodes.conf
                                             --cluster-node-timeout 5000
                                             --cluster-require-full-coverage no)
            redis-server "${args[@]}"
        done
        for ((p = base; p < base + n; p++)); do wait_for "redis on $p" answers "$p"; done
        if [[ $mode == cluster ]]; then
            nodes=()
            for ((p = base; p < base + n; p++)); do nodes+=("127.0.0.1:$p"); done
            redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
            wait_for "the cluster" cluster_ok
            wait_for "the replicas" replicas_in_sync
            echo "bin/tidings --redis-cluster 127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
        else
            urls=()
            for ((p = base; p < base + n; p++)); do urls+=("redis://127.0.0.1:$p"); done
            (IFS=,; echo "bin/tidings --redis ${urls[*]}")
        fi
        ;;
    down)
        for ((p = base; p < base + n; p++)); do
            [[ -f $dir/$p/redis.pid ]] && kill "$(cat "$dir/$p/redis.pid")" 2>/dev/null || true
        done
        for ((p = base; p < base + n; p++)); do
            wait_for "redis on $p to stop" bash -c "! redis-cli -p $p PING >/dev/null 2>&1" || true
        done
        rm -rf "$dir"
        ;;
    *) echo "usage: $0 shards|cluster up|down [DIR]" >&2; exit 2 ;;
esac
