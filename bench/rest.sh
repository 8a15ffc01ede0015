#!/usr/bin/env bash
# REST throughput through the whole cluster, in one run, against the in-gateway baseline:
#   ping    GET /v1/ping: answered by the gateway itself (bare h2o handler + auth)
#   get     GET /v1/presences/{id}: gateway -> broker -> store -> back
#   upsert  PUT /v1/presences/{id}: claim cache, store write, event on the bus to every gateway
#           and the reaper
# Usage: bench/rest.sh [build/presenced] [runs=3] [seconds=10] [connections=64]
# Prints the median req/s of each and the ratio to ping. Needs wrk.
set -euo pipefail
bin=${1:-build/presenced}; runs=${2:-3}; secs=${3:-10}; conns=${4:-64}
source "$(dirname "$0")/cluster.sh"
rate() { wrk -t2 -c"$conns" -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A res
for kind in ping get upsert; do
    vals=()
    for r in $(seq "$runs"); do
        case $kind in
            ping) vals+=("$(rate "${H[@]}" "http://127.0.0.1:$port/v1/ping")") ;;
            get) vals+=("$(rate "${H[@]}" "http://127.0.0.1:$port/v1/presences/bench1")") ;;
            upsert) vals+=("$(rate -s "$lua" "http://127.0.0.1:$port/")") ;;
        esac
    done
    res[$kind]=$(printf '%s\n' "${vals[@]}" | median)
    echo "$kind: runs ${vals[*]} -> median ${res[$kind]} req/s"
done
awk -v p="${res[ping]}" -v g="${res[get]}" -v u="${res[upsert]}" \
    'BEGIN {printf "get/ping %.0f%%, upsert/ping %.0f%%\n", 100*g/p, 100*u/p}'
echo "machine: $(nproc) cores, $(uname -r), wrk -t2 -c$conns -d${secs}s on the same machine"
