'use strict';
// The internal ports under attack (issue 10, tried again as written): a hostile ZeroMQ peer
// (tests/tools/pd_attack.c) with no credentials, with a CURVE key pair of its own, or with a
// genuine key of the cluster used where that key is not allowed, against the embedded cluster's
// broker front and back, bus in and out, and a store node's front. Each case also runs the same
// peer with the key that IS allowed there, to show that the harness sees traffic when there is
// some: what the attacker gets is nothing because it is refused, not because nothing flowed.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { useCluster, sleep, BIN } = require('./lib/cluster');
const { api } = require('./lib/http');
const R = require('./lib/rtclient');

const TOOL = path.join(path.dirname(BIN), 'tests', 'pd_attack');
const holder = useCluster(test, { label: 'attack' });
const C = () => holder.cluster;
const ep = (name) => `ipc://${C().runDir}/${name}.ipc`;
const keys = () => path.join(C().runDir, 'keys');

// Runs the attacker; resolves to its JSON report.
function attack(mode, endpoint, auth, { ms = 1500, server, node } = {}) {
    const args = [mode, endpoint, '--auth', auth, '--ms', String(ms), '--project', C().project];
    if (auth === 'stranger') args.push('--server-pub', path.join(keys(), `${server || 'broker'}.pub`));
    if (node) args.push('--node', String(node));
    const env = { ...process.env, PD_ATTACK_SERVER: server || 'broker' };
    return new Promise((resolve, reject) => {
        execFile(TOOL, args, { env, timeout: ms + 10000 }, (err, stdout, stderr) => {
            if (err) return reject(new Error(`pd_attack ${args.join(' ')}: ${err.message} ${stderr}`));
            resolve(JSON.parse(stdout.trim().split('\n').pop()));
        });
    });
}
const key = (name) => `${keys()}:${name}`;

// Upserts records with public read permission until stop() (events keep flowing on the bus).
function writer(prefix) {
    let on = true, n = 0;
    const done = (async () => {
        while (on) {
            const r = await api(C(), 'PUT', `/v1/presences/${prefix}${n % 20}`, {
                key: true, body: { userId: `${prefix}u${n % 20}`, status: `s${n}`, permissions: ['read("any")'] },
            });
            assert.equal(r.status, 200, r.text);
            n++;
            await sleep(20);
        }
    })();
    return { stop: async () => { on = false; await done; return n; } };
}

test('the attack tool is built', () => {
    assert.ok(fs.existsSync(TOOL), `${TOOL} is missing (built by tests/CMakeLists.txt)`);
});

test('bus-out: no credentials, a stranger key or a store key get no event; a gateway key does', async () => {
    const sub = await R.rawConnect(C()); // a WebSocket subscriber makes a gateway join the bus
    await R.rawSubscribe(sub, [{ subscriptionId: 's1', channels: ['presences'], queries: [] }]);
    const w = writer('bo');
    try {
        const [none, stranger, store, control] = await Promise.all([
            attack('listen', ep('bus-out'), 'none'),
            attack('listen', ep('bus-out'), 'stranger'),
            attack('listen', ep('bus-out'), key('store-1')),
            attack('listen', ep('bus-out'), key('gateway-2')),
        ]);
        assert.equal(none.received, 0, 'a peer with no credentials received bus frames');
        assert.equal(stranger.received, 0, 'a peer with its own key pair received bus frames');
        assert.equal(store.received, 0, 'a store key is not allowed to subscribe');
        assert.ok(control.received > 0, `the control (a gateway key) saw nothing: ${JSON.stringify(control)}`);
    } finally {
        await w.stop();
        sub.close();
    }
});

test('broker front: a LIST with the permission-bypass flag gets nothing without a gateway key', async () => {
    for (let i = 0; i < 5; i++) {
        const r = await api(C(), 'PUT', `/v1/presences/secret${i}`, { key: true, body: { userId: `secret${i}`, status: 'private', metadata: { card: '4111' } } });
        assert.equal(r.status, 200, r.text);
    }
    const [none, stranger, store, reaperKeyOnBack, control] = await Promise.all([
        attack('list', ep('broker-front'), 'none'),
        attack('list', ep('broker-front'), 'stranger'),
        attack('list', ep('broker-front'), key('store-2')),
        attack('list', ep('broker-back'), key('reaper')),
        attack('list', ep('broker-front'), key('gateway-1')),
    ]);
    assert.equal(none.received, 0);
    assert.equal(stranger.received, 0);
    assert.equal(store.received, 0, 'a store key is not allowed on the broker front');
    assert.equal(reaperKeyOnBack.received, 0, 'the reaper key is not allowed on the broker back');
    assert.ok(control.received > 0, `the control (a gateway key) got no reply: ${JSON.stringify(control)}`);
});

test('bus-in: a forged event reaches no WebSocket', async () => {
    const sub = await R.rawConnect(C());
    await R.rawSubscribe(sub, [{ subscriptionId: 's1', channels: ['presences'], queries: [] }]);
    await Promise.all([
        attack('publish', ep('bus-in'), 'none'),
        attack('publish', ep('bus-in'), 'stranger'),
        attack('publish', ep('bus-in'), key('gateway-1')),
        attack('publish', ep('bus-in'), key('reaper')),
    ]);
    // a real write after the forgeries: its event proves the subscriber's pipeline is live
    const r = await api(C(), 'PUT', '/v1/presences/marker-bi', { key: true, body: { userId: 'marker-bi', status: 'real', permissions: ['read("any")'] } });
    assert.equal(r.status, 200, r.text);
    await sub.next((m) => m.type === 'event' && m.data.payload && m.data.payload.$id === 'marker-bi', 5000, 'the real event');
    const forged = sub.events((m) => JSON.stringify(m).includes('forged') || JSON.stringify(m).includes('mallory'));
    assert.deepEqual(forged, [], 'a forged event reached a WebSocket');
    sub.close();
});

test('broker back and front: nobody becomes store 1 or the reaper by naming itself', async () => {
    const ids = [];
    for (let i = 0; i < 20; i++) {
        const r = await api(C(), 'PUT', `/v1/presences/keep${i}`, { key: true, body: { userId: `keep${i}`, status: 'here' } });
        assert.equal(r.status, 200, r.text);
        ids.push(`keep${i}`);
    }
    const before = await C().metrics();
    const refusedBefore = before.sum('presenced_broker_refused_peers_total');
    const attacks = Promise.all([
        attack('store', ep('broker-back'), 'none', { ms: 3000, node: 1 }),
        attack('store', ep('broker-back'), 'stranger', { ms: 3000, node: 1 }),
        attack('store', ep('broker-back'), key('gateway-1'), { ms: 3000, node: 1 }),
        attack('reaper', ep('broker-front'), 'none', { ms: 3000 }),
        attack('reaper', ep('broker-front'), 'stranger', { ms: 3000 }),
        attack('reaper', ep('broker-front'), key('store-1'), { ms: 3000 }),
    ]);
    // while they try: health stays 200 and every record (both store nodes) answers
    const t0 = Date.now();
    while (Date.now() - t0 < 2500) {
        assert.equal(await C().health(), 200, '/v1/health failed during the takeover attempts');
        for (const id of ids) {
            const r = await api(C(), 'GET', `/v1/presences/${id}`, { key: true });
            assert.equal(r.status, 200, `${id}: ${r.text}`);
        }
        await sleep(100);
    }
    const results = await attacks;
    for (const res of results) assert.equal(res.received, 0, `the broker answered an impostor: ${JSON.stringify(res)}`);
    const after = await C().metrics();
    assert.equal(after.get('presenced_reaper_up'), 1);
    for (const n of [1, 2]) assert.equal(after.get('presenced_store_up', { node: n }), 1);
    assert.ok(after.sum('presenced_broker_refused_peers_total') > refusedBefore,
        'the broker did not count the refused peers');
    // the records are still served by the real nodes after the attempts
    for (const id of ids) assert.equal((await api(C(), 'GET', `/v1/presences/${id}`, { key: true })).status, 200);
});

test("store front: only gateways' keys are admitted", async () => {
    const res = await Promise.all([
        attack('list', ep('store-1'), 'none', { server: 'store-1' }),
        attack('list', ep('store-1'), 'stranger', { server: 'store-1' }),
        attack('list', ep('store-1'), key('reaper'), { server: 'store-1' }),
        attack('list', ep('store-1'), key('store-2'), { server: 'store-1' }),
    ]);
    for (const r of res) assert.equal(r.received, 0, JSON.stringify(r));
    // the store node logged the refusals (once a second at most, with a count)
    await sleep(200);
    assert.match(C().log(), /refused a CURVE client .* on store-front/);
});
