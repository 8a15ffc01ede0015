#!/usr/bin/env bash
# CPU, system calls and context switches per request, by role and thread, under wrk load.
#   bench/cpu.sh [build/presenced] [ping|get|upsert] [connections=64]
# Starts a cluster, loads it for 8 s, and counts for 5 s in the middle with
#   perf stat -e raw_syscalls:sys_enter,sched:sched_switch,task-clock --per-thread
# on every thread of the cluster, divided by the requests served. Needs wrk and perf
# (Debian: linux-perf). Compare two builds by running it for each, alternately, several times.
set -euo pipefail
bin=${1:-build/presenced}; kind=${2:-upsert}; conns=${3:-64}
source "$(dirname "$0")/cluster.sh"
case $kind in
    upsert) args=(-s "$lua" "http://127.0.0.1:$port/") ;;
    get) args=("${H[@]}" "http://127.0.0.1:$port/v1/presences/bench1") ;;
    ping) args=("${H[@]}" "http://127.0.0.1:$port/v1/ping") ;;
    *) echo "kind: ping, get or upsert" >&2; exit 2 ;;
esac
wrk -t2 -c"$conns" -d8s "${args[@]}" > "$work/wrk.txt" &
w=$!
sleep 1
pids=$(pgrep -f -- "--cluster $cluster" | grep -v "^$pid\$" | paste -sd,)
ps -o pid=,args= -p "$pids" | awk '{print $1, $3 $5}' > "$work/roles.txt"
perf stat -e raw_syscalls:sys_enter,sched:sched_switch,task-clock --per-thread -p "$pids" \
     -- sleep 5 2> "$work/stat.txt" > /dev/null
wait $w
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
echo "$kind, $conns connections: $rps req/s"
python3 - "$rps" "$work/stat.txt" "$work/roles.txt" <<'PY'
import collections, sys
rps, secs = float(sys.argv[1]), 5.0
roles = dict(l.split()[:2] for l in open(sys.argv[3]) if len(l.split()) >= 2)
def role(tid):
    try:
        tgid = next(l.split()[1] for l in open(f'/proc/{tid}/status') if l.startswith('Tgid'))
    except OSError:
        tgid = tid
    return roles.get(tgid, tgid)
rows = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
for l in open(sys.argv[2]):
    p = l.split()
    if len(p) < 3 or '-' not in p[0] or 'Reaper' in p[0]:
        continue
    name, tid = p[0].rsplit('-', 1)
    try:
        v = float(p[1].replace(',', ''))
    except ValueError:
        continue
    k = (role(tid), 'zmq-io' if name.startswith('ZMQbg') else 'main')
    col = 0 if p[2] == 'msec' else 1 if 'sys_enter' in p[2] else 2 if 'sched_switch' in p[2] else None
    if col is not None:
        rows[k][col] += v
tot = [0.0, 0.0, 0.0]
print(f"{'role':12s} {'thread':7s} {'cpu us/req':>10s} {'syscalls/req':>12s} {'switches/req':>12s}")
for k in sorted(rows):
    ms, sc, cs = rows[k]
    tot = [tot[0] + ms, tot[1] + sc, tot[2] + cs]
    print(f"{k[0]:12s} {k[1]:7s} {ms*1000/(rps*secs):10.2f} {sc/(rps*secs):12.2f} {cs/(rps*secs):12.2f}")
print(f"{'all':20s} {tot[0]*1000/(rps*secs):10.2f} {tot[1]/(rps*secs):12.2f} {tot[2]/(rps*secs):12.2f}")
PY
