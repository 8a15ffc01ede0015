# Sourced by the benchmarks: starts an embedded cluster on a free loopback port with project
# "bench" (API key K), writes the upsert script for wrk, and warms the claims of its users.
# Needs: bin, conns. Sets: port, pid, work, lua, H (the auth headers), cluster; stops the
# cluster and removes work on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cluster=bench$$
work=$(mktemp -d)
"$bin" --host 127.0.0.1 --port "$port" --project bench --api-key K --jwt-secret S \
       --cluster "$cluster" --verbose 0 > "$work/cluster.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for i in $(seq 50); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 0.2; done
lua=$work/upsert.lua
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
