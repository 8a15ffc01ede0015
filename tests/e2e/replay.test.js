'use strict';
// Events lost on the bus are asked again of their store node (gw_realtime.c, "resync"; the
// store's side is st_replay.h). A gateway process is stopped (SIGSTOP) for longer than the
// internal links' heartbeat timeout (3 s): the broker drops its bus connection, and ZeroMQ's
// PUB drops everything published meanwhile for it. Writes go on through the other gateway.
// When the stopped gateway runs again, it sees the skip in each store node's sequence, asks
// the node for the missing events over its direct link, and delivers them, then what came
// after: its subscriber (the official web SDK) gets every event exactly once, in order per
// record, on the same WebSocket; megabytes of them come in several answers. With an outbox too
// small to hold what was missed, the range is gone: the subscriber is closed with 1012, and the
// SDK reconnects.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');

const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded: it takes globalThis.WebSocket
const { useCluster, sleep, parseMetrics } = require('./lib/cluster');
const { webClient } = require('./lib/sdk');
const { pinnedSockets, requestOver } = require('./lib/http');
const { uid } = require('./lib/check');

const PUBLIC = ['read("any")'];
const STOP_MS = 5000; // past the links' 3 s heartbeat timeout (pd_keys.c)
const realtimes = R.realtimeRegistry(test);
const sockets = [];
test.afterEach(() => { for (const s of sockets.splice(0)) s.destroy(); });

// An SDK subscriber on the presences channel, the gateway process that holds its socket, and
// a connection to another one to write through (opened now: a new connection may land on the
// stopped one).
async function setup(C) {
    const { W, client } = webClient(C());
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    const col = R.collector();
    await R.sdkSubscribe(rt, W.Channel.presences(), col.cb);
    const sub = await R.gatewayOf(C(), rt.socket._socket.localPort);
    const pid = C().pids('gateway').find((p) => p !== sub);
    assert.ok(pid, 'a second gateway');
    const pins = await pinnedSockets(C(), 1);
    for (const a of pins.values()) sockets.push(...a);
    const other = { cluster: C(), socket: pins.get(pid)[0] };
    // A subscriber on the other gateway too: store nodes make no update event that no gateway
    // subscribes to (store.c, s_event), and the stopped one leaves the bus.
    const watcher = await R.rawConnectTo(C(), pid);
    await R.rawSubscribe(watcher, [{ subscriptionId: 'all', channels: ['presences'], queries: [] }]);
    sockets.push({ destroy: () => watcher.terminate() });
    return { rt, col, sub, other };
}

async function put(C, other, id, status) {
    const body = { userId: `u${id}`, status, permissions: PUBLIC };
    if (other.pad) body.metadata = { pad: 'x'.repeat(other.pad) };
    const r = await requestOver(other.cluster, other.socket, 'PUT', `/v1/presences/${id}`, { key: true, headers: { connection: 'keep-alive' }, body });
    assert.equal(r.status, 200, r.text);
}

async function metricsOf(C, gw) {
    const r = await R.restVia(C(), gw, 'GET', '/metrics');
    assert.equal(r.status, 200);
    const m = parseMetrics(r.text);
    const v = (name, labels = {}) => m.find(name, labels).reduce((a, s) => a + s.value, 0);
    return v;
}

// Writes while `sub` is stopped: new records (one create each) and updates of `ids` numbered
// in order (status "n <k>"). Returns what was written.
async function writeWhileStopped(C, sub, other, ids, n) {
    const created = [];
    const last = new Map();
    process.kill(sub, 'SIGSTOP');
    try {
        const t0 = Date.now();
        let k = 1;
        while (Date.now() - t0 < STOP_MS || k <= n) {
            const id = uid('new');
            await put(C, other, id, 'created');
            created.push(id);
            for (const r of ids) {
                await put(C, other, r, `n ${k}`);
                last.set(r, k);
            }
            k++;
            if (k > n) await sleep(200);
        }
    } finally {
        process.kill(sub, 'SIGCONT');
    }
    return { created, last };
}

// Per record: the numbered statuses arrive in increasing order, none twice (a queued frame may
// be replaced by a newer one of its record: gw_ws's conflation), and the last one written is
// there.
function assertOrder(col, ids, last) {
    for (const id of ids) {
        const ks = col.got.filter((e) => e.payload.$id === id && /^n \d+$/.test(e.payload.status)).map((e) => Number(e.payload.status.slice(2)));
        for (let i = 1; i < ks.length; i++) assert.ok(ks[i] > ks[i - 1], `${id}: events out of order or twice: ${ks.join(',')}`);
        assert.equal(ks[ks.length - 1], last.get(id), `${id}: the last update's event`);
    }
}

// The first records' events, then `n` rounds written while `sub` is stopped; waits for every
// event of them and checks each create arrived once and the updates in order.
async function stopAndCheck(t, C, { col, sub, other }, ids, n) {
    for (const id of ids) await put(C, other, id, 'n 0');
    await R.until(() => ids.every((id) => col.got.some((e) => e.payload.$id === id)), 10000, 'the first events');
    const { created, last } = await writeWhileStopped(C, sub, other, ids, n);
    t.diagnostic(`${created.length} records created and ${created.length * ids.length} updates while gateway ${sub} was stopped`);
    await R.until(() => created.every((id) => col.got.some((e) => e.payload.$id === id)) &&
        ids.every((id) => col.got.some((e) => e.payload.$id === id && e.payload.status === `n ${last.get(id)}`)), 20000,
    'the events written while the gateway was stopped').catch((e) => {
        t.diagnostic(`missing creates: ${created.filter((id) => !col.got.some((x) => x.payload.$id === id)).length} of ${created.length}; got ${col.got.length}`);
        throw e;
    });
    await sleep(1000); // a repeated event would arrive in this window
    for (const id of created) assert.equal(col.count((e) => e.payload.$id === id), 1, `${id}: one create event`);
    assertOrder(col, ids, last);
}

describe('resync from the outbox', () => {
    const H = useCluster(test, { label: 'replay', stores: 2, gateways: 2 });
    const C = () => H.cluster;

    it('a gateway cut off the bus for 5 s: its subscriber gets every event exactly once, in order, on the same socket', { timeout: 90000 }, async (t) => {
        const { rt, col, sub, other } = await setup(C);
        const socket = rt.socket;
        const ids = [uid('rec'), uid('rec'), uid('rec'), uid('rec')];
        const before = await metricsOf(C, sub);
        await stopAndCheck(t, C, { col, sub, other }, ids, 10);
        assert.equal(rt.socket, socket, 'the SDK did not have to reconnect');
        const m = await metricsOf(C, sub);
        const gaps = m('presenced_bus_gaps_total') - before('presenced_bus_gaps_total');
        const replayed = m('presenced_bus_resync_total', { result: 'replayed' }) - before('presenced_bus_resync_total', { result: 'replayed' });
        const resent = m('presenced_bus_resync_events_total') - before('presenced_bus_resync_events_total');
        t.diagnostic(`gaps ${gaps}, replayed ${replayed}, events resent ${resent}`);
        assert.ok(gaps >= 1, 'the stop made a gap (else this test shows nothing)');
        assert.ok(replayed >= 1 && resent >= 1, 'the missing events came from the store nodes');
        assert.equal(m('presenced_bus_resync_total', { result: 'fallback' }), 0);
    });
});

describe('resync: a store node restarted meanwhile', () => {
    const H = useCluster(test, { label: 'replayrestart', stores: 1, gateways: 2 });
    const C = () => H.cluster;

    it('a store node killed and restarted while the gateway is cut off: the rest of its old generation is resent', { timeout: 90000 }, async (t) => {
        const { rt, col, sub, other } = await setup(C);
        const socket = rt.socket;
        const first = uid('rec');
        await put(C, other, first, 'n 0');
        await col.waitFor((e) => e.payload.$id === first, 10000, 'the first event');
        const acked = [];
        const tryPut = async (id) => {
            const r = await requestOver(other.cluster, other.socket, 'PUT', `/v1/presences/${id}`, { key: true, headers: { connection: 'keep-alive' }, body: { userId: `u${id}`, status: 'created', permissions: PUBLIC } });
            if (r.status === 200) acked.push(id);
            else assert.equal(r.status, 503, r.text);
        };
        process.kill(sub, 'SIGSTOP');
        try {
            const t0 = Date.now();
            // past the links' heartbeat timeout: what the old process publishes now is lost
            while (Date.now() - t0 < 4000) { await tryPut(uid('old')); await sleep(5); }
            const old = C().kill('store', 1);
            await C().waitRestarted('store', 1, old);
            while (Date.now() - t0 < STOP_MS + 1000) { await tryPut(uid('new')); await sleep(20); }
        } finally {
            process.kill(sub, 'SIGCONT');
        }
        const last = uid('last');
        for (let i = 0; i < 100 && !acked.includes(last); i++) { await tryPut(last); if (!acked.includes(last)) await sleep(100); }
        t.diagnostic(`${acked.length} creates acknowledged around the restart`);
        await R.until(() => acked.every((id) => col.got.some((e) => e.payload.$id === id)), 15000,
            'the events of every acknowledged create').catch((e) => {
            t.diagnostic(`missing: ${acked.filter((id) => !col.got.some((x) => x.payload.$id === id)).join(' ')}`);
            throw e;
        });
        await sleep(1000);
        for (const id of acked) assert.equal(col.count((e) => e.payload.$id === id), 1, `${id}: one create event`);
        assert.equal(rt.socket, socket, 'the SDK did not have to reconnect');
        const m = await metricsOf(C, sub);
        t.diagnostic(`resyncs ${m('presenced_bus_resync_total', { result: 'replayed' })}, events resent ${m('presenced_bus_resync_events_total')}`);
        assert.equal(m('presenced_bus_resync_total', { result: 'fallback' }), 0);
        assert.ok(m('presenced_bus_resync_events_total') >= 1, 'the old generation\'s last events came from the outbox (else this test shows nothing)');
    });
});

describe('resync: megabytes missed', () => {
    const H = useCluster(test, { label: 'replaybig', stores: 1, gateways: 2 });
    const C = () => H.cluster;

    it('events of 24 KB for 5 s: resent in several answers (4 MiB each), every one once, in order', { timeout: 90000 }, async (t) => {
        const { rt, col, sub, other } = await setup(C);
        const socket = rt.socket;
        const ids = [uid('rec'), uid('rec')];
        other.pad = 12000;
        await stopAndCheck(t, C, { col, sub, other }, ids, 60);
        assert.equal(rt.socket, socket, 'the SDK did not have to reconnect');
        const m = await metricsOf(C, sub);
        const resent = m('presenced_bus_resync_events_total');
        t.diagnostic(`${resent} events resent (about ${Math.round(resent * 24 / 1024)} MiB)`);
        assert.ok(resent * 24000 > 4 << 20, 'more than one answer\'s worth was resent (else this test shows nothing)');
        assert.equal(m('presenced_bus_resync_total', { result: 'fallback' }), 0);
    });
});

describe('resync: the range is gone', () => {
    // an outbox of 1 MiB: a few dozen events of 24 KB (record and previous state), while the
    // stop misses megabytes of them (more than the socket buffers hold)
    const H = useCluster(test, { label: 'replaygone', stores: 1, gateways: 2, env: { PRESENCED_STORE_OUTBOX: String(1 << 20) } });
    const C = () => H.cluster;

    it('the missed events were overwritten in the outbox: the subscriber is closed with 1012, the SDK reconnects', { timeout: 90000 }, async (t) => {
        const { rt, col, sub, other } = await setup(C);
        const socket = rt.socket;
        const closes = [];
        socket.addEventListener('close', (e) => closes.push(e.code));
        const ids = [uid('rec'), uid('rec')];
        other.pad = 12000;
        for (const id of ids) await put(C, other, id, 'n 0');
        await R.until(() => ids.every((id) => col.got.some((e) => e.payload.$id === id)), 10000, 'the first events');
        const { created } = await writeWhileStopped(C, sub, other, ids, 60);
        t.diagnostic(`${created.length} records created and ${created.length * ids.length} updates while gateway ${sub} was stopped`);
        await R.until(() => closes.length > 0, 15000, 'the subscriber closed');
        assert.deepEqual(closes, [1012]);
        const m = await metricsOf(C, sub);
        assert.ok(m('presenced_bus_resync_total', { result: 'fallback' }) >= 1, 'counted as a fallback');
        assert.ok(m('presenced_bus_resync_closed_total') >= 1, 'the closed subscriber counted');
        // the SDK reconnects (after 1 s) and subscribes again: new events reach it
        await R.until(() => rt.socket !== socket && rt.socket.readyState === 1, 15000, 'the SDK reconnected');
        await sleep(1500);
        const id = uid('after');
        await put(C, other, id, 'after');
        await col.waitFor((e) => e.payload.$id === id, 10000, 'an event after the reconnect');
    });
});
