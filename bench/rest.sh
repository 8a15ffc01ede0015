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
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cluster=bench$$
"$bin" --host 127.0.0.1 --port "$port" --project bench --api-key K --jwt-secret S \
       --cluster "$cluster" --verbose 0 > /tmp/presenced-bench-$$.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for i in $(seq 50); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 0.2; done
lua=$(mktemp --suffix .lua)
cat > "$lua" <<'LUA'
-- 5000 users, each request built once up front: wrk shares the 2 cores with the cluster, so
-- the load generator should spend as little per request as it does for ping and get.
local reqs, n, i = {}, 5000, 0
for k = 0, n - 1 do
  local u = "u" .. k
  reqs[k] = wrk.format("PUT", "/v1/presences/" .. u,
    {["X-Appwrite-Project"]="bench", ["X-Appwrite-Key"]="K", ["Content-Type"]="application/json"},
    '{"userId":"' .. u .. '","status":"online","metadata":{"room":"lobby","x":1}}')
end
request = function()
  i = (i + 1) % n
  return reqs[i]
end
LUA
H=(-H 'X-Appwrite-Project: bench' -H 'X-Appwrite-Key: K')
curl -sf -X PUT "http://127.0.0.1:$port/v1/presences/bench1" "${H[@]}" -H 'Content-Type: application/json' \
     -d '{"userId":"b1","status":"online"}' > /dev/null
wrk -t1 -c"$conns" -d3s -s "$lua" "http://127.0.0.1:$port/" > /dev/null   # warm the claims
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
rm -f "$lua"
