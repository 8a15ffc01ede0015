#!/usr/bin/env bash
# Large rooms, side by side: presenced and the Centrifuge peer (../shared/peers) driven by the
# same load generator with the same flags, a fresh server per run (issue 11's benchmarks):
#   storm-N    N clients connect, subscribe and announce (a connection-bound presence for
#              presenced), 500 in flight; the time until a watcher has every join; then all
#              close at once (mass leave) and the time until it has every leave
#   fanout-R   1,000 subscribers, one publisher at R updates/s: deliveries/s, p50/p99, and
#              server CPU per delivery (perf stat task-clock on the server processes only)
#   roster-N   N members (a presence each), then 100 sequential fetches of the whole set: for
#              presenced GET /v1/presences pages of 5,000 by offset until a short page (the
#              peer load generator's `presence`), for the peer GET /presence; client p50/p99
#   sbstorm-N  the storm through Supabase Realtime's protocol (issue 13): presenced driven by
#              our own load generator (bench/storm.js: phx_join with presence + track, 500 in
#              flight, a watcher that parses every presence_state and diff; the joiners are
#              bench/stormc.c processes, the stormc built beside the presenced binary, or Node
#              `ws` clients with SBSTORM_JOINERS=node), the peer by the peer load generator's
#              storm as above; same N, same machine, same run
# Usage: bench/rooms.sh [build/presenced] [runs=3] [scenario...]
#        scenarios: storm-5000 storm-10000 fanout-100 fanout-300 fanout-1000 sbstorm-5000 roster-10000
#        (default: all but sbstorm)
#   PEERS=dir   a writable copy of ../shared/peers with loadgen and the peer built (build.sh);
#               default: build one under $TMPDIR
# Writes bench/results/rooms-<stamp>/: raw loadgen output per run, summary.md (medians and
# every run) and PNG plots (gnuplot). Traffic stays on loopback; source addresses 127.0.0.2-9.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:-build/presenced}"); runs=${2:-3}; shift 2 || shift $# || true
scenarios=${*:-storm-5000 storm-10000 fanout-100 fanout-300 fanout-1000}
peers=${PEERS:-}
if [ -z "$peers" ]; then
    peers=${TMPDIR:-/tmp}/presenced-peers
    if [ ! -x "$peers/loadgen/loadgen" ]; then
        rm -rf "$peers"; cp -r "$here/../../shared/peers" "$peers"; chmod -R u+w "$peers"
        (cd "$peers" && ./build.sh >/dev/null)
    fi
fi
loadgen=$peers/loadgen/loadgen; peer=$peers/centrifuge/centrifuge-presence
out=$here/results/rooms-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
{ echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)";
  echo "RLIMIT_NOFILE $(ulimit -n)"; echo "presenced: $bin ($(git -C "$here" rev-parse --short HEAD))"; } > "$out/env.txt"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

spid=; pids=; port=
start() { # server -> spid, pids (comma list of every server process), port
    port=$(free_port)
    if [ "$1" = presenced ]; then
        "$bin" --host 127.0.0.1 --port "$port" --project bench --api-key benchkey --jwt-secret S \
               --gateways 2 --cluster "rooms$$" --verbose 0 > "$out/server.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
        pids=$(pgrep -d, -P "$spid"),$spid
        proto=(-proto appwrite -ws "ws://127.0.0.1:$port" -http "http://127.0.0.1:$port"
               -aw-project bench -aw-key benchkey -aw-jwt-secret S)
    else
        "$peer" -addr "127.0.0.1:$port" > "$out/server.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null 2>&1 && break; sleep 0.1; done
        pids=$spid
        proto=(-proto centrifuge -ws "ws://127.0.0.1:$port/connection/websocket" -http "http://127.0.0.1:$port")
    fi
}
stop() { kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; sleep 2; }
trap 'kill -TERM $spid 2>/dev/null || true' EXIT

for sc in $scenarios; do
    for r in $(seq "$runs"); do
        for server in presenced peer; do
            start "$server"
            f=$out/$sc-$server-$r.txt
            case $sc in
                storm-*) args=(-n "${sc#storm-}" -c 500 -timeout 150s -leave-timeout 60s storm) ;;
                sbstorm-*) args=(-n "${sc#sbstorm-}" -c 500 -timeout 150s -leave-timeout 60s storm) ;;
                roster-*) args=(-n "${sc#roster-}" -c 200 -fetches 100 presence) ;;
                fanout-*) args=(-n 1000 -c 200 -settle 5s -publishers 1 -rate "${sc#fanout-}" -duration 10s -drain 15s fanout) ;;
                *) echo "unknown scenario $sc" >&2; exit 2 ;;
            esac
            perf stat -e task-clock -x, -p "$pids" -o "$f.perf" &
            ppid=$!
            if [[ $sc == sbstorm-* && $server == presenced ]]; then
                timeout 400 node "$here/storm.js" --ws "ws://127.0.0.1:$port" --project bench --jwt-secret S \
                    -n "${sc#sbstorm-}" -c 500 --pids "$pids" --joiners "${SBSTORM_JOINERS:-c}" \
                    --stormc "$(dirname "$bin")/stormc" > "$f" 2>&1 || echo "($server $sc run $r: storm.js exit $?)"
            else
                timeout 400 "$loadgen" "${proto[@]}" -pid "$pids" "${args[@]}" > "$f" 2>&1 || echo "($server $sc run $r: loadgen exit $?)"
            fi
            kill -INT "$ppid" 2>/dev/null; wait "$ppid" 2>/dev/null || true
            echo "== $sc $server run $r: $(grep '^RESULT' "$f" | cut -c1-300)"
            stop
        done
    done
done
python3 "$here/rooms_summary.py" "$out" | tee "$out/summary.md"
