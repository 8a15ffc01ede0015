#!/usr/bin/env bash
# Rooms through Supabase's protocol, side by side with the Centrifuge peer (issue 13): the peer
# load generator's `storm` (../shared/peers/loadgen: a watcher joins the room; N clients connect,
# join it with presence and track, C in flight; the time until the watcher has every join;
# then all close and the time until it has every leave), with -proto supabase against presenced
# (/realtime/v1/websocket, a user token per client) and -proto centrifuge against the peer,
# the same flags, a fresh server per run.
# Usage: bench/supabase.sh [build/presenced] [runs=1] [N=5000] [C=500]
#   PEERS=dir   a copy of ../shared/peers with loadgen and the peer built (default: build one)
# Writes bench/results/supabase-<stamp>/: the raw loadgen output of every run and env.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:-build/presenced}"); runs=${2:-1}; n=${3:-5000}; conc=${4:-500}
peers=${PEERS:-}
if [ -z "$peers" ]; then
    peers=${TMPDIR:-/tmp}/presenced-peers
    if [ ! -x "$peers/loadgen/loadgen" ]; then
        rm -rf "$peers"; cp -r "$here/../../shared/peers" "$peers"; chmod -R u+w "$peers"
        (cd "$peers" && ./build.sh >/dev/null)
    fi
fi
loadgen=$peers/loadgen/loadgen; peer=$peers/centrifuge/centrifuge-presence
out=$here/results/supabase-$(date +%Y%m%d-%H%M%S); mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
{ echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)";
  echo "presenced: $bin ($(git -C "$here" rev-parse --short HEAD))"; } > "$out/env.txt"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
spid=
trap 'kill -TERM $spid 2>/dev/null || true' EXIT
for r in $(seq "$runs"); do
    for server in presenced peer; do
        port=$(free_port)
        if [ "$server" = presenced ]; then
            "$bin" --host 127.0.0.1 --port "$port" --project bench --jwt-secret S --gateways 2 \
                   --cluster "sb$$" --verbose 0 > "$out/server.log" 2>&1 &
            spid=$!
            for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
            pids=$(pgrep -d, -P "$spid"),$spid
            proto=(-proto supabase -ws "ws://127.0.0.1:$port" -aw-project bench -sb-jwt-secret S)
        else
            "$peer" -addr "127.0.0.1:$port" > "$out/server.log" 2>&1 &
            spid=$!
            for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null 2>&1 && break; sleep 0.1; done
            pids=$spid
            proto=(-proto centrifuge -ws "ws://127.0.0.1:$port/connection/websocket" -http "http://127.0.0.1:$port")
        fi
        f=$out/storm-$n-$server-$r.txt
        "$loadgen" "${proto[@]}" -pid "$pids" -n "$n" -c "$conc" -timeout 150s -leave-timeout 60s storm > "$f" 2>&1 || true
        grep '^RESULT' "$f" | sed "s/^/$server run $r: /" | cut -c1-400
        kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; sleep 2
    done
done
echo "results in $out"
