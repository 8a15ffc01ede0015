#!/usr/bin/env bash
# REST throughput through the whole cluster, against a bare h2o handler, in one run:
#   bare    build/bare_h2o (bench/bare_h2o.c): h2o answering every request at once, in as many
#           processes as the cluster has gateways; the issue's "bare h2o rate"
#   ping    GET /v1/ping: answered by the gateway itself (h2o + routing, project and key checks)
#   get     GET /v1/presences/{id}: gateway -> owning store node -> back
#   upsert  PUT /v1/presences/{id}: a known user's write at its store node, event on the bus to
#           the reaper (and to every gateway with WebSocket clients)
# Usage: bench/rest.sh [build/presenced] [runs=3] [seconds=10] [connections=64]
# The kinds take turns within each round (bare, ping, get, upsert, then again), so a change in
# the host's load during the run touches them all alike. Prints the median req/s of each and
# the ratios to bare and to ping. Needs wrk.
set -euo pipefail
bin=${1:-build/presenced}; runs=${2:-3}; secs=${3:-10}; conns=${4:-64}
bare=$(dirname "$bin")/bare_h2o
source "$(dirname "$0")/cluster.sh"
bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bare" "$bport" 2 &
bpid=$!
trap 'kill -TERM $pid $bpid 2>/dev/null; wait $pid $bpid 2>/dev/null || true; rm -rf "$work"' EXIT
for i in $(seq 50); do curl -sf "http://127.0.0.1:$bport/v1/ping" >/dev/null && break; sleep 0.1; done
rate() { wrk -t2 -c"$conns" -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A vals
kinds="bare ping get upsert"
for r in $(seq "$runs"); do
    for kind in $kinds; do
        case $kind in
            bare) v=$(rate "http://127.0.0.1:$bport/v1/ping") ;;
            ping) v=$(rate "${H[@]}" "http://127.0.0.1:$port/v1/ping") ;;
            get) v=$(rate "${H[@]}" "http://127.0.0.1:$port/v1/presences/bench1") ;;
            upsert) v=$(rate -s "$lua" "http://127.0.0.1:$port/") ;;
        esac
        vals[$kind]="${vals[$kind]:-} $v"
    done
done
declare -A res
for kind in $kinds; do
    res[$kind]=$(printf '%s\n' ${vals[$kind]} | median)
    echo "$kind: runs${vals[$kind]} -> median ${res[$kind]} req/s"
done
awk -v b="${res[bare]}" -v p="${res[ping]}" -v g="${res[get]}" -v u="${res[upsert]}" 'BEGIN {
    printf "of bare h2o: ping %.0f%%, get %.0f%%, upsert %.0f%%\n", 100*p/b, 100*g/b, 100*u/b
    printf "of ping:     get %.0f%%, upsert %.0f%%\n", 100*g/p, 100*u/p }'
echo "machine: $(nproc) cores, $(uname -r), wrk -t2 -c$conns -d${secs}s on the same machine"
