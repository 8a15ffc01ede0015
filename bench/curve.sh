#!/usr/bin/env bash
# What CURVE costs: REST throughput (bench/rest.sh: get and upsert, with a bare h2o handler in
# the same run) and realtime fan-out (the peer load generator, ../shared/peers/loadgen,
# -proto appwrite), for two builds taking turns, so both see the same host:
#   before  a build without CURVE (e.g. commit 228f7a8, the last one before it)
#   after   this build (every internal socket CURVE)
# Usage: bench/curve.sh BEFORE_BIN AFTER_BIN [rounds=3] [seconds=8] [connections=64] [LOADGEN]
# Prints, per build, the median of each kind over the rounds and the after/before ratios.
set -euo pipefail
before=$1; after=$2; rounds=${3:-3}; secs=${4:-8}; conns=${5:-64}
loadgen=${6:-}
here=$(cd "$(dirname "$0")" && pwd)
declare -A vals
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fanout() { # bin -> "deliveries/s p99_ms"
    local bin=$1 port pid pids out
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" --host 127.0.0.1 --port "$port" --project bench --api-key benchkey --jwt-secret S \
           --cluster "cv$$" --verbose 0 > /dev/null 2>&1 &
    pid=$!
    for i in $(seq 50); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 0.2; done
    pids=$(pgrep -d, -P "$pid"),$pid
    out=$("$loadgen" -proto appwrite -ws "ws://127.0.0.1:$port" -http "http://127.0.0.1:$port" \
          -aw-project bench -aw-key benchkey -aw-jwt-secret S -pid "$pids" \
          -n 1000 -c 200 -settle 5s -publishers 1 -rate 300 -duration 10s -drain 15s fanout 2>&1 |
          grep '^RESULT' | sed 's/^RESULT //')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r.get("delivered_per_s", 0), r.get("p99_ms", 0), r.get("server_cpu_pct", 0))' "$out"
}
for r in $(seq "$rounds"); do
    for which in before after; do
        bin=${!which}
        out=$(bash "$here/rest.sh" "$bin" 1 "$secs" "$conns")
        for kind in bare get upsert; do
            v=$(echo "$out" | awk -v k="$kind:" '$1 == k {print $NF == "req/s" ? $(NF-1) : $NF}')
            vals[$which-$kind]="${vals[$which-$kind]:-} $v"
        done
        if [ -n "$loadgen" ]; then
            read -r d p c < <(fanout "$bin")
            vals[$which-fanout]="${vals[$which-fanout]:-} $d"
            vals[$which-p99]="${vals[$which-p99]:-} $p"
            vals[$which-cpu]="${vals[$which-cpu]:-} $c"
        fi
    done
done
declare -A med
for key in "${!vals[@]}"; do
    med[$key]=$(printf '%s\n' ${vals[$key]} | median)
    echo "$key: runs${vals[$key]} -> median ${med[$key]}"
done | sort
for kind in get upsert; do
    for which in before after; do
        med[$which-$kind]=$(printf '%s\n' ${vals[$which-$kind]} | median)
        med[$which-bare]=$(printf '%s\n' ${vals[$which-bare]} | median)
    done
    awk -v k="$kind" -v b="${med[before-$kind]}" -v a="${med[after-$kind]}" \
        -v bb="${med[before-bare]}" -v ab="${med[after-bare]}" 'BEGIN {
        printf "%s: before %.0f req/s (%.0f%% of bare), after %.0f req/s (%.0f%% of bare): after/before %.1f%%\n",
               k, b, 100*b/bb, a, 100*a/ab, 100*a/b }'
done
echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c$conns -d${secs}s; rounds $rounds, builds taking turns"
