#!/usr/bin/env python3
"""Summary of a bench/rooms.sh run: medians (and every run) per scenario and server, server CPU
per delivery from perf stat, and gnuplot PNGs. Usage: rooms_summary.py RESULTS_DIR"""
import glob, json, os, re, statistics, subprocess, sys

d = sys.argv[1]
rows = {}  # (scenario, server) -> list of dicts
for f in sorted(glob.glob(os.path.join(d, '*-*-*.txt'))):
    m = re.match(r'(.+)-(presenced|peer)-(\d+)\.txt$', os.path.basename(f))
    if not m:
        continue
    res = None
    for line in open(f, errors='replace'):
        if line.startswith('RESULT '):
            res = json.loads(line[7:])
    if res is None:
        res = {}
    try:  # perf stat -x, : "msec,,task-clock,..."
        for line in open(f + '.perf'):
            p = line.split(',')
            if len(p) > 2 and p[2] == 'task-clock' and p[0] not in ('', '<not counted>'):
                res['server_cpu_s'] = float(p[0]) / 1000
    except OSError:
        pass
    if res.get('delivered') and res.get('server_cpu_s'):
        res['cpu_us_per_delivery'] = 1e6 * res['server_cpu_s'] / res['delivered']
    rows.setdefault((m.group(1), m.group(2)), []).append(res)

def med(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None

cols = {
    'storm': ['all_joins_delivered_s', 'joins_seen', 'all_leaves_delivered_s', 'leaves_seen',
              'watcher_dropped', 'server_closed_conns', 'server_cpu_s'],
    'sbstorm': ['all_joins_delivered_s', 'joins_seen', 'all_leaves_delivered_s', 'leaves_seen',
                'watcher_dropped', 'server_closed_conns', 'server_cpu_s'],
    'roster': ['p50_ms', 'p99_ms', 'members', 'response_bytes', 'server_cpu_s'],
    'fanout': ['delivered_per_s', 'delivered_pct', 'p50_ms', 'p99_ms', 'server_cpu_pct',
               'cpu_us_per_delivery', 'server_closed_conns'],
}
print('| scenario | server | ' + ' | '.join(['metric: median (runs)']) + ' |')
print('|---|---|---|')
plot = {}
for (sc, server), rs in sorted(rows.items()):
    kind = sc.split('-')[0]
    parts = []
    for c in cols.get(kind, []):
        vals = [r.get(c) for r in rs]
        m = med(vals)
        if m is None:
            continue
        fmt = lambda v: ('%.3g' % v) if isinstance(v, float) else str(v)
        parts.append('%s **%s** (%s)' % (c, fmt(m), ' / '.join(fmt(v) for v in vals if v is not None)))
        plot[(sc, server, c)] = m
    print('| %s | %s | %s |' % (sc, server, '; '.join(parts)))

def gnuplot(name, title, ylabel, series):
    if not any(a is not None or b is not None for _, a, b in series):
        return
    data = os.path.join(d, name + '.dat')
    with open(data, 'w') as fh:
        fh.write('label presenced peer\n')
        for label, a, b in series:
            fh.write('%s %s %s\n' % (label, a if a is not None else '?', b if b is not None else '?'))
    script = ('set terminal png size 800,450; set output "%s"; set title "%s"; set ylabel "%s";'
              'set style data histograms; set style fill solid 0.8; set key top left;'
              'set datafile missing "?";'
              'plot "%s" using 2:xtic(1) title "presenced", "" using 3 title "Centrifuge peer"'
              % (os.path.join(d, name + '.png'), title, ylabel, data))
    try:
        subprocess.run(['gnuplot', '-e', script], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print('(no plot %s: %s)' % (name, e), file=sys.stderr)

storms = sorted({sc for sc, _ in rows if sc.startswith('storm')}, key=lambda s: int(s.split('-')[1]))
fans = sorted({sc for sc, _ in rows if sc.startswith('fanout')}, key=lambda s: int(s.split('-')[1]))
gnuplot('storm', 'Join storm and mass leave: seconds until the watcher has all', 'seconds',
        [(sc + '-joins', plot.get((sc, 'presenced', 'all_joins_delivered_s')), plot.get((sc, 'peer', 'all_joins_delivered_s'))) for sc in storms] +
        [(sc + '-leaves', plot.get((sc, 'presenced', 'all_leaves_delivered_s')), plot.get((sc, 'peer', 'all_leaves_delivered_s'))) for sc in storms])
gnuplot('fanout_p99', 'Fan-out 1,000 subscribers: p99 latency', 'ms',
        [(sc, plot.get((sc, 'presenced', 'p99_ms')), plot.get((sc, 'peer', 'p99_ms'))) for sc in fans])
gnuplot('fanout_cpu', 'Fan-out 1,000 subscribers: server CPU per delivery', 'microseconds',
        [(sc, plot.get((sc, 'presenced', 'cpu_us_per_delivery')), plot.get((sc, 'peer', 'cpu_us_per_delivery'))) for sc in fans])
