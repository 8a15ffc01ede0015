'use strict';
// Mass leave (issue 11): 5,000 connection-bound presences on one gateway end at once, by their
// clients closing and by their gateway being SIGKILLed; a watcher on another gateway, the
// official web SDK, stays connected and receives every one of the 5,000 deletes exactly once.
// Before the slow-consumer rule was judged by time, the burst of deletes overflowed the
// watcher's 1 MiB queue and the gateway disconnected it (3 runs in 4 lost most of the leaves).
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded
const { startCluster, freePort, sleep, BIN } = require('./lib/cluster');
const { webClient, mintJwt } = require('./lib/sdk');

const N = 5000;

// A second gateway of the cluster on its own port, on a key pair of the cluster's set (internal
// traffic is CURVE): what is connected to it is on it, whatever the kernel's SO_REUSEPORT does.
async function extraGateway(c, node) {
    const args = c.procs().find((p) => p.role === 'gateway').args.split(/\s+/);
    const arg = (f) => args[args.indexOf(f) + 1];
    const port = await freePort();
    const keys = fs.mkdtempSync(`${c.runDir}/keys-${node}-`);
    for (const f of fs.readdirSync(arg('--keys'))) {
        const to = f.replace(/^gateway-1\./, `gateway-${node}.`);
        if (/\.pub$/.test(f) || to !== f) fs.copyFileSync(path.join(arg('--keys'), f), path.join(keys, to), fs.constants.COPYFILE_EXCL);
    }
    const fd = fs.openSync(`${c.runDir}/gateway-${node}.log`, 'a');
    const child = spawn(BIN, ['gateway', '--node', String(node), '--cluster', c.name, '--host', '127.0.0.1', '--port', String(port),
        '--broker-front', arg('--broker-front'), '--bus-out', arg('--bus-out'), '--keys', keys, '--run-dir', c.runDir], {
        stdio: ['ignore', fd, fd],
        env: { ...process.env, PRESENCED_PROJECT: c.project, PRESENCED_API_KEY: c.apiKey, PRESENCED_JWT_SECRET: c.jwtSecret },
    });
    fs.closeSync(fd);
    await R.until(async () => {
        try { return (await fetch(`http://127.0.0.1:${port}/v1/health`)).status === 200; } catch { return false; }
    }, 20000, 'the extra gateway');
    return { port, child, stop: () => { try { child.kill('SIGKILL'); } catch {} } };
}

// The watcher: the official web SDK on the extra gateway, counting deletes per presence id.
async function watcher(c, port) {
    const { W, client } = webClient(c, {});
    client.setEndpoint(`http://127.0.0.1:${port}/v1`);
    const rt = new W.Realtime(client);
    const deletes = new Map();
    await R.sdkSubscribe(rt, W.Channel.presences(), (e) => {
        if (e.events[0].endsWith('.delete')) deletes.set(e.payload.$id, (deletes.get(e.payload.$id) || 0) + 1);
    });
    const sock = rt.socket;
    let closed = null;
    sock.on('close', (code) => { closed = code; });
    return { rt, deletes, sock, closed: () => closed };
}

// n connection-bound presences through raw WebSockets on the cluster's own port.
async function holders(c, prefix, n) {
    const clients = [];
    const one = async (i) => {
        const u = `${prefix}${i}`;
        const h = await R.rawConnect(c, { jwt: mintJwt(c.jwtSecret, { userId: u }) });
        const r = await h.request({ type: 'presence', data: { status: 'in-room', presenceId: u, permissions: ['read("any")', `write("user:${u}")`] } }, 60000);
        assert.equal(r.type, 'response', `${u}: ${JSON.stringify(r)}`);
        return h;
    };
    for (let i = 0; i < n; i += 250) clients.push(...(await Promise.all(Array.from({ length: Math.min(250, n - i) }, (_, k) => one(i + k)))));
    return clients;
}

async function massLeave(t, how) {
    const c = await startCluster({ label: `massleave-${how}`, gateways: 1 });
    const extra = await extraGateway(c, 7);
    t.after(async () => { extra.stop(); await c.stop(); });
    const w = await watcher(c, extra.port);
    t.after(() => w.rt.disconnect()); // else the SDK keeps reconnecting, and the file never ends
    const prefix = `ml${how[0]}`;
    const t0 = Date.now();
    const clients = await holders(c, prefix, N);
    t.diagnostic(`${N} connection-bound presences in ${Date.now() - t0} ms`);
    const t1 = Date.now();
    if (how === 'close') for (const h of clients) h.terminate();
    else c.kill('gateway', 1, 'SIGKILL');
    await R.until(() => w.deletes.size >= N, 120000, `${N} deletes at the watcher (have ${w.deletes.size})`);
    t.diagnostic(`every delete at the watcher ${Date.now() - t1} ms after the ${how}`);
    await sleep(1000); // anything twice would arrive by now
    for (let i = 0; i < N; i++) assert.equal(w.deletes.get(`${prefix}${i}`), 1, `${prefix}${i}: ${w.deletes.get(`${prefix}${i}`) || 0} deletes`);
    assert.equal(w.deletes.size, N);
    assert.equal(w.closed(), null, `the watcher was disconnected (close ${w.closed()})`);
    assert.equal(w.rt.socket, w.sock, 'the SDK had to reconnect');
    const m0 = parseInt(/presenced_realtime_slow_disconnects_total\{[^}]*\} (\d+)/.exec(await (await fetch(`http://127.0.0.1:${extra.port}/metrics`)).text())[1], 10);
    assert.equal(m0, 0, 'the watcher\'s gateway dropped a slow consumer');
}

test(`${N} connection-bound presences close at once: a watcher on another gateway gets every delete exactly once`, { timeout: 300000 }, (t) => massLeave(t, 'close'));

test(`their gateway is SIGKILLed: the presences end within the lease, every delete exactly once at the watcher`, { timeout: 300000 }, (t) => massLeave(t, 'kill'));
