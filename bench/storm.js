'use strict';
// Join storm through Supabase Realtime's protocol (issue 13's benchmark): the scenario of the peer
// load generator's `storm` (../shared/peers/README.md), driven by a load generator of our own.
//
//   1. A watcher joins channel `storm` with presence (key "watcher").
//   2. N clients connect to /realtime/v1/websocket (vsn 2.0.0, a user token each), phx_join the
//      channel with presence {key: "s-<i>", enabled: true} and track {user}; C of them in flight
//      (a client is in flight from its connect until its join reply, then it sends its track),
//      spread over W worker processes and the source addresses 127.0.0.2-9.
//   3. The time from the first connect until the watcher has all N keys (presence_state and
//      presence_diff joins, parsed in full); then every client's socket is closed at once and the
//      time until the watcher has all N leaves.
//
// The clients get what a real client gets (presence_state on join, then every diff), and read it
// off the socket; they do not JSON.parse it: a storm of N is O(N^2) bytes to the clients, which on
// one machine would make the load generator, not the server, what is measured (the peer load
// generator parses every joiner's presence_state: about 70% of the machine's CPU in a 5,000 storm).
// Server CPU is read from /proc/<pid>/stat of --pids (the server's processes).
//
// Usage: node bench/storm.js --ws ws://127.0.0.1:PORT --project P --jwt-secret S
//        [-n 5000] [-c 500] [--workers 4] [--pids 1,2,3] [--timeout 150] [--leave-timeout 60]
//        [--deflate 0]           1: the clients offer permessage-deflate, as browsers do
//        [--joiner-presence 1]   0: the clients join with presence off (they still track; only
//                                the watcher gets state and diffs): a diagnostic that takes the
//                                protocol's O(N^2) bytes out, to see the server's join path alone
//        [--joiners node]        c: the clients are bench/stormc.c processes (--stormc PATH,
//                                default build/stormc): the same clients, doing the same, at
//                                the cost of their read() calls instead of Node's (the watcher
//                                stays here); without deflate or the presence-off diagnostic
// Prints progress lines and a final `RESULT {json}` line.
const path = require('node:path');
const fs = require('node:fs');
const crypto = require('node:crypto');
const { fork, spawn } = require('node:child_process');
const WS = require(path.resolve(__dirname, '..', 'tests', 'e2e', 'node_modules', 'ws'));

const TOPIC = 'realtime:storm';

function args(argv) {
    const o = { n: 5000, c: 500, workers: 4, timeout: 150, 'leave-timeout': 60, pids: '', project: 'bench', 'joiner-presence': 1, deflate: 0, joiners: 'node', stormc: path.resolve(__dirname, '..', 'build', 'stormc') };
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i].replace(/^--?/, '');
        if (k === 'worker') { o.worker = true; continue; }
        o[k] = argv[++i];
    }
    for (const k of ['n', 'c', 'workers', 'timeout', 'leave-timeout', 'joiner-presence', 'deflate']) o[k] = Number(o[k]);
    return o;
}

const b64url = (s) => Buffer.from(s).toString('base64url');
function jwt(secret, claims) {
    const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 7200, ...claims }))}`;
    return `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
}

function url(o) {
    const apikey = jwt(o['jwt-secret'], { iss: 'supabase', role: 'anon', ref: o.project });
    return `${o.ws}/realtime/v1/websocket?apikey=${encodeURIComponent(apikey)}&vsn=2.0.0`;
}

const joinMsg = (o, key) => JSON.stringify(['1', '1', TOPIC, 'phx_join', {
    config: { presence: { key, enabled: key === 'watcher' || o['joiner-presence'] !== 0 }, broadcast: { self: false } },
    access_token: jwt(o['jwt-secret'], { sub: key, role: 'authenticated', aud: 'authenticated' }),
}]);
const trackMsg = (key) => JSON.stringify(['1', '2', TOPIC, 'presence', { type: 'presence', event: 'track', payload: { user: key } }]);

/* ---------------------------------------------------------------------------- worker */

// Clients [from, to) with `conc` in flight; reports to the parent: joined counts, failures, closes.
function worker(o) {
    const conns = [];
    let closing = false, closedByServer = 0, failed = 0, bytes = 0, frames = 0, firstError = null;
    const srcs = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);
    const u = url(o);
    process.on('message', (m) => {
        if (m.cmd === 'start') start(m.from, m.to, m.conc);
        if (m.cmd === 'close') {
            closing = true;
            for (const ws of conns) ws.terminate();
            process.send({ ev: 'closed', bytes, frames });
        }
        if (m.cmd === 'exit') process.exit(0);
    });
    function start(from, to, conc) {
        let next = from, inflight = 0, done = 0;
        const one = () => {
            const i = next++;
            const key = `s-${i}`;
            inflight++;
            const ws = new WS(u, { localAddress: srcs[i % srcs.length], perMessageDeflate: o.deflate === 1, skipUTF8Validation: true });
            conns.push(ws);
            let joined = false;
            const settle = (ok, why) => {
                if (joined) return;
                joined = true;
                inflight--;
                done++;
                if (!ok) { failed++; firstError ??= why; }
                if (next < to) one();
                if (done === to - from) process.send({ ev: 'ready', failed, firstError });
            };
            ws.on('open', () => ws.send(joinMsg(o, key)));
            ws.on('message', (data) => {
                frames++;
                bytes += data.length;
                if (joined) return; // what follows is read, not parsed (see the top)
                const s = data.toString('latin1', 0, Math.min(data.length, 200));
                if (s.startsWith('["1","1","realtime:storm","phx_reply"')) {
                    if (s.includes('"status":"ok"')) { ws.send(trackMsg(key)); settle(true); }
                    else settle(false, s);
                }
            });
            ws.on('error', (e) => settle(false, String(e.message || e)));
            ws.on('close', () => {
                if (!closing) { closedByServer++; process.send({ ev: 'dropped', key }); }
                settle(false, 'closed before the join reply');
            });
        };
        while (next < to && inflight < conc) one();
        // Phoenix heartbeats, as realtime-js sends them (every 25 s)
        setInterval(() => {
            for (const ws of conns) if (ws.readyState === WS.OPEN) ws.send('[null,"hb","phoenix","heartbeat",{}]');
        }, 25000).unref();
    }
}

/* ---------------------------------------------------------------------------- main */

function cpuTicks(pids) {
    let t = 0;
    for (const p of pids) {
        try {
            const f = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
            const v = f.slice(f.lastIndexOf(')') + 2).split(' ');
            t += Number(v[11]) + Number(v[12]); // utime, stime (fields 14, 15)
        } catch { /* gone */ }
    }
    return t;
}

function rssKiB(pids) {
    let t = 0;
    for (const p of pids) {
        try { t += Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))[1]); } catch { /* gone */ }
    }
    return t;
}

async function main(o) {
    const N = o.n;
    const pids = o.pids ? String(o.pids).split(',').filter(Boolean).map(Number) : [];
    const res = { scenario: 'storm', proto: 'supabase (bench/storm.js)', clients: N, concurrency: o.c, workers: o.workers, joiners: o.joiners, joiner_presence: o['joiner-presence'] !== 0, deflate: o.deflate === 1 };
    if (o.joiners === 'c' && (o.deflate === 1 || o['joiner-presence'] === 0)) throw new Error('--joiners c: no --deflate 1, no --joiner-presence 0');
    const log = (s) => console.log(`${new Date().toISOString()} ${s}`);

    // The watcher: presence_state and every presence_diff, parsed in full.
    const members = new Set();
    let joinsAt = 0, leavesAt = 0, t0 = 0, t1 = 0, leaves = 0, watcherUp = true;
    const seen = new Set();
    const watcher = new WS(url(o), { localAddress: '127.0.0.2', perMessageDeflate: o.deflate === 1 });
    const apply = (joins, gone) => {
        for (const k of Object.keys(joins || {})) {
            if (!k.startsWith('s-') || seen.has(k)) continue;
            seen.add(k);
            members.add(k);
            if (seen.size === N) joinsAt = Date.now();
        }
        for (const k of Object.keys(gone || {})) {
            if (!members.delete(k)) continue;
            if (++leaves === N) leavesAt = Date.now();
        }
    };
    await new Promise((resolve, reject) => {
        watcher.on('open', () => watcher.send(joinMsg(o, 'watcher')));
        watcher.on('message', (data) => {
            const m = JSON.parse(data);
            if (m[3] === 'phx_reply' && m[1] === '1') m[4].status === 'ok' ? resolve() : reject(new Error(JSON.stringify(m[4])));
            else if (m[3] === 'presence_state') apply(m[4], null);
            else if (m[3] === 'presence_diff') apply(m[4].joins, m[4].leaves);
        });
        watcher.on('error', reject);
        watcher.on('close', () => { watcherUp = false; });
    });
    const hb = setInterval(() => watcher.readyState === WS.OPEN && watcher.send('[null,"hb","phoenix","heartbeat",{}]'), 25000);
    await new Promise((r) => setTimeout(r, 200));

    // The storm.
    const W = Math.max(1, Math.min(o.workers, N));
    const kids = [];
    let ready = 0, failed = 0, dropped = 0, firstError = null, bytes = 0, frames = 0, closed = 0;
    const cpu0 = cpuTicks(pids);
    t0 = Date.now();
    let readyAt = 0;
    const onMsg = (m) => {
        if (m.ev === 'ready') { failed += m.failed; firstError ??= m.firstError; if (++ready === W) readyAt = Date.now(); }
        if (m.ev === 'dropped') dropped++;
        if (m.ev === 'closed') { bytes += m.bytes; frames += m.frames; closed++; }
    };
    for (let w = 0; w < W; w++) {
        const from = Math.floor((N * w) / W), to = Math.floor((N * (w + 1)) / W);
        const conc = Math.max(1, Math.round((o.c * (to - from)) / N));
        if (o.joiners === 'c') { // stdout lines "ready F [error]", "dropped", "closed B F"; stdin commands
            const u = new URL(url(o));
            const k = spawn(o.stormc, [u.hostname, u.port, u.pathname + u.search, from, to, conc, o['jwt-secret']], { stdio: ['pipe', 'pipe', 'inherit'] });
            let buf = '';
            k.stdout.on('data', (d) => {
                buf += d;
                for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) {
                    const [ev, a, ...rest] = buf.slice(0, i).split(' ');
                    if (ev === 'ready') onMsg({ ev, failed: Number(a), firstError: rest.join(' ') || null });
                    else if (ev === 'closed') onMsg({ ev, bytes: Number(a), frames: Number(rest[0]) });
                    else onMsg({ ev });
                }
            });
            k.send = (m) => k.stdin.write(`${m.cmd}\n`);
            kids.push(k);
            continue;
        }
        const k = fork(__filename, ['--worker', ...process.argv.slice(2)], { stdio: 'inherit' });
        k.on('message', onMsg);
        k.send({ cmd: 'start', from, to, conc });
        kids.push(k);
    }
    const wait = async (cond, secs) => {
        const end = Date.now() + secs * 1000;
        while (!cond() && Date.now() < end && watcherUp) await new Promise((r) => setTimeout(r, 5));
        return cond();
    };
    await wait(() => joinsAt, o.timeout);
    const cpu1 = cpuTicks(pids);
    await wait(() => ready === W, 30);
    const joinS = joinsAt ? (joinsAt - t0) / 1000 : -1;
    log(`${ready === W ? 'every client joined and tracked' : `${ready}/${W} workers done`} ${readyAt ? ((readyAt - t0) / 1000).toFixed(2) : '?'} s after the storm began (${failed} failed${firstError ? `, first: ${firstError}` : ''})`);
    log(joinsAt ? `the watcher had all ${N} joins ${joinS.toFixed(2)} s after the storm began (${Math.round(N / joinS)} joins/s)`
        : `${watcherUp ? 'TIMEOUT' : 'WATCHER DROPPED'}: the watcher saw ${seen.size} of ${N} joins`);
    const rss = rssKiB(pids);

    // Everyone leaves at once.
    t1 = Date.now();
    for (const k of kids) k.send({ cmd: 'close' });
    await wait(() => leavesAt, o['leave-timeout']);
    const leaveS = leavesAt ? (leavesAt - t1) / 1000 : -1;
    const cpu2 = cpuTicks(pids);
    log(leavesAt ? `the watcher had all ${N} leaves ${leaveS.toFixed(2)} s after the clients closed`
        : `the watcher saw ${leaves} of ${N} leaves`);
    await wait(() => closed === W, 10);
    for (const k of kids) k.send({ cmd: 'exit' });
    clearInterval(hb);
    watcher.terminate();

    const hz = 100; // USER_HZ
    Object.assign(res, {
        failed, server_closed_conns: dropped, first_error: firstError ?? undefined,
        connect_join_all_s: readyAt ? +((readyAt - t0) / 1000).toFixed(2) : -1,
        joins_seen: seen.size, all_joins_delivered_s: +joinS.toFixed(2),
        leaves_seen: leaves, all_leaves_delivered_s: +leaveS.toFixed(2),
        client_bytes_received: bytes, client_frames_received: frames,
        server_rss_kib: pids.length ? rss : undefined,
        server_cpu_s_joins: pids.length ? +((cpu1 - cpu0) / hz).toFixed(2) : undefined,
        server_cpu_s: pids.length ? +((cpu2 - cpu0) / hz).toFixed(2) : undefined,
        watcher_dropped: !watcherUp || undefined,
    });
    console.log(`RESULT ${JSON.stringify(res)}`);
    process.exit(0);
}

const o = args(process.argv.slice(2));
if (o.worker) worker(o);
else main(o).catch((e) => { console.error(e); process.exit(1); });
