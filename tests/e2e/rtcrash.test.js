'use strict';
// A store node SIGKILLed while realtime subscribers (the official web SDK, one on each gateway)
// are connected. The restarted node publishes the events of its last second again (README,
// "Events survive a store crash"): each gateway drops the ones it already had
// (presenced_realtime_bus_replayed_total on its /metrics) and passes on the ones that never left
// the dead process, so every upsert, update and delete reaches each subscriber exactly once, in
// order per record. Writes go through node-appwrite with the API key; lib/shard.js says which
// store node owns a record. "Everything has arrived" is a marker record written afterwards on the
// same store node (the bus keeps a node's events in order), whose event every subscriber must see.
const test = require('node:test');
const assert = require('node:assert/strict');

const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded: it takes globalThis.WebSocket
const { useCluster, parseMetrics, sleep } = require('./lib/cluster');
const { webClient, nodeClient, loadNodeSdk, plain } = require('./lib/sdk');
const { uid } = require('./lib/check');
const { api } = require('./lib/http');
const { idOnNode } = require('./lib/shard');

const realtimes = R.realtimeRegistry(test);
const H = useCluster(test, { label: 'rtcrash' });
const C = () => H.cluster;

const ANY = ['read("any")'];
const REPLAYED = 'presenced_realtime_bus_replayed_total';
const kp = () => nodeClient(C(), {}).presences;
const onNode = (node, prefix) => idOnNode(C().project, node, () => uid(prefix), C().stores);
const key = (id, kind, status) => `${id}|${kind}|${status}`;

// The web SDK subscribed to every presence (as a user; the records are read("any")). Each event
// is counted under (record, action, status): every write of these tests has its own status, and
// a delete carries the record as it was, so one key is one change.
async function subscriber() {
    const { W, client } = webClient(C(), { userId: uid('w') });
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    const s = { rt, closes: 0, errors: [], count: new Map(), byId: new Map() };
    rt.onClose(() => { s.closes++; });
    rt.onError((e) => { s.errors.push(String(e && e.message)); });
    await R.sdkSubscribe(rt, W.Channel.presences(), (e) => {
        const kind = e.events[0].split('.').pop();
        const id = e.payload.$id;
        const k = key(id, kind, e.payload.status);
        s.count.set(k, (s.count.get(k) || 0) + 1);
        if (!s.byId.has(id)) s.byId.set(id, []);
        s.byId.get(id).push([kind, e.payload.status]);
    });
    s.socket = rt.socket;
    s.gateway = await R.gatewayOf(C(), rt.socket._socket.localPort);
    s.seen = (k) => s.count.get(k) || 0;
    s.waitFor = (k, ms, what) => R.until(() => s.seen(k) > 0, ms, what ?? `the event ${k}`);
    return s;
}

// One subscriber on each gateway (each gateway drops the replay on its own). The kernel spreads
// connections over the gateways: one that lands where there is a subscriber already is let go.
async function subscribers() {
    const out = [];
    for (let tries = 0; out.length < C().gateways; tries++) {
        assert.ok(tries < 50, `a subscriber on each of the ${C().gateways} gateways`);
        const s = await subscriber();
        if (out.some((o) => o.gateway === s.gateway)) await s.rt.disconnect();
        else out.push(s);
    }
    return out;
}

// The gateway's own metrics (each gateway renders its own).
async function gatewayMetrics(pid) {
    const r = await R.restVia(C(), pid, 'GET', '/metrics');
    assert.equal(r.status, 200, r.text);
    return parseMetrics(r.text);
}

// A marker written on store node `node` now, and its event at every subscriber: every event of
// that node from before has reached them by then. Right after a restart a write may be
// answered 503 (the node is not registered yet): the marker is then written again (the event
// is an upsert or an update of the marker).
async function drain(subs, node, ms = 15000) {
    const id = onNode(node, 'mark');
    const user = uid('mu');
    for (let tries = 0; ; tries++) {
        try {
            await kp().upsert({ presenceId: id, userId: user, status: 'marker', permissions: ANY });
            break;
        } catch (e) {
            if (e.code !== 503 || tries >= 3) throw e;
        }
    }
    for (const s of subs) await R.until(() => s.seen(key(id, 'upsert', 'marker')) + s.seen(key(id, 'update', 'marker')) > 0, ms, `the marker on store ${node} at the subscriber on gateway ${s.gateway}`);
}

// SIGKILL, and back. whileDown(), if given, runs while the node is held down (the supervisor is
// paused, so it cannot restart it) and the broker has noticed.
async function killStore(node, whileDown) {
    const old = C().pids('store', node);
    assert.equal(old.length, 1, `store ${node} pids ${old}`);
    if (whileDown) process.kill(C().pid, 'SIGSTOP');
    try {
        C().kill('store', node, 'SIGKILL');
        if (whileDown) {
            assert.equal(await C().waitStatus(503, 10000), 503, '/v1/health with a store node down');
            await whileDown();
        }
    } finally {
        if (whileDown) process.kill(C().pid, 'SIGCONT');
    }
    await C().waitRestarted('store', node, old, 30000);
    await C().waitHealthy(30000);
}

// The subscriber stayed on its one connection throughout, and was told of no error; its gateway
// dropped replayed events and saw no gap in a store node's events.
function assertSubscriberHeld(s, m0, m1) {
    const g = `gateway ${s.gateway}`;
    assert.ok(m1.sum(REPLAYED) > m0.sum(REPLAYED), `${REPLAYED} on ${g} went ${m0.sum(REPLAYED)} -> ${m1.sum(REPLAYED)}: nothing was replayed, so nothing was tested`);
    assert.equal(m1.sum('presenced_bus_gaps_total'), m0.sum('presenced_bus_gaps_total'), `${g} saw a gap in a store node's events`);
    assert.equal(s.rt.socket, s.socket, `the SDK on ${g} opened another socket`);
    assert.equal(s.closes, 0, `the subscriber's connection to ${g} closed`);
    assert.deepEqual(s.errors, [], `errors sent to the subscriber on ${g}`);
}
const metricsOf = (subs) => Promise.all(subs.map((s) => gatewayMetrics(s.gateway)));
const replayedNote = (subs, m0, m1) => subs.map((s, i) => `${m1[i].sum(REPLAYED) - m0[i].sum(REPLAYED)} on gateway ${s.gateway}`).join(', ');

test('a store node killed after its events were delivered: the replay is dropped, each change arrives once', { timeout: 120000 }, async (t) => {
    const subs = await subscribers();
    const victim = 1, other = 2;
    const P = kp();
    const gone = onNode(victim, 'gone'), kept = onNode(victim, 'kept'), fresh = onNode(victim, 'fresh');
    const elsewhere = onNode(other, 'else'), stays = onNode(other, 'stays');
    const users = {};
    for (const id of [gone, kept, fresh, elsewhere, stays]) users[id] = uid('u');
    const up = (id, status) => P.upsert({ presenceId: id, userId: users[id], status, permissions: ANY });
    const upd = (id, status) => P.update({ presenceId: id, userId: users[id], status });
    await up(gone, 'one'); await upd(gone, 'two'); await P.delete({ presenceId: gone });
    await up(kept, 'one'); await upd(kept, 'two');
    await up(fresh, 'three');
    await up(elsewhere, 'one'); await upd(elsewhere, 'two'); await P.delete({ presenceId: elsewhere });
    await up(stays, 'four');
    const expected = {
        [gone]: [['upsert', 'one'], ['update', 'two'], ['delete', 'two']],
        [kept]: [['upsert', 'one'], ['update', 'two']],
        [fresh]: [['upsert', 'three']],
        [elsewhere]: [['upsert', 'one'], ['update', 'two'], ['delete', 'two']],
        [stays]: [['upsert', 'four']],
    };
    for (const s of subs) for (const [id, evs] of Object.entries(expected)) for (const [kind, st] of evs) await s.waitFor(key(id, kind, st), 10000);
    const m0 = await metricsOf(subs);

    // the dead node's last second of events comes again. While it is down, its records answer
    // 503 and the other node's do not: lib/shard.js (which places the markers) agrees with the broker.
    await killStore(victim, async () => {
        const status = async (id) => (await api(C(), 'GET', `/v1/presences/${id}`, { key: true })).status;
        for (const id of [kept, fresh]) assert.equal(await status(id), 503, `${id} is on store ${victim} (lib/shard.js)`);
        assert.equal(await status(stays), 200, `${stays} is on store ${other} (lib/shard.js)`);
    });
    await drain(subs, victim, 30000); // published after the replay, on the same node
    await drain(subs, other);
    const m1 = await metricsOf(subs);
    t.diagnostic(`replayed events dropped: ${replayedNote(subs, m0, m1)}`);
    subs.forEach((s, i) => {
        for (const [id, evs] of Object.entries(expected)) assert.deepEqual(s.byId.get(id), evs, `the events of ${id} at the subscriber on gateway ${s.gateway}`);
        assertSubscriberHeld(s, m0[i], m1[i]);
    });
    // and the data came back with the node
    assert.equal((await P.get({ presenceId: kept })).status, 'two');
    assert.equal((await P.get({ presenceId: fresh })).status, 'three');
});

test('store nodes killed while writes to them are in flight: every acknowledged change arrives exactly once, a refused one at most once, in order per record', { timeout: 240000 }, async (t) => {
    const subs = await subscribers();
    const P = kp();
    const m0 = await metricsOf(subs);
    const attempts = []; // {id, kind, status, acked}, in the order each record's writes were made
    const ids = new Set();
    const acked = { 1: 0, 2: 0 };
    let refused = 0, slowest503 = 0, stop = false, failure;

    // One record at a time per worker: upsert, update, delete, again. A write waits for its event
    // (at every subscriber) before the next write of the record, so a record never has two events
    // queued for a subscriber (nothing for a gateway to conflate). A write refused with 503 may or may not
    // have happened: its record is left alone from then on.
    async function worker(node, w) {
        let id, user, step, n = 0, last;
        const next = () => { id = onNode(node, `r${w}x`); user = uid('ru'); step = 0; ids.add(id); };
        next();
        while (!stop) {
            const kind = ['upsert', 'update', 'delete'][step % 3];
            const status = kind === 'delete' ? last : `w${w}n${n++}`;
            const a = { id, kind, status, acked: false };
            attempts.push(a);
            const t0 = Date.now();
            try {
                if (kind === 'upsert') await P.upsert({ presenceId: id, userId: user, status, permissions: ANY });
                else if (kind === 'update') await P.update({ presenceId: id, userId: user, status });
                else await P.delete({ presenceId: id });
            } catch (e) {
                if (e.code !== 503) throw new Error(`${kind} of ${id} on store ${node} failed with ${e.code}: ${e.message}`);
                refused++;
                slowest503 = Math.max(slowest503, Date.now() - t0);
                next();
                await sleep(20);
                continue;
            }
            a.acked = true;
            acked[node]++;
            if (kind !== 'delete') last = status;
            for (const s of subs) await s.waitFor(key(id, kind, status), 30000, `the event of an acknowledged ${kind} of ${id} (${status}) on store ${node} at the subscriber on gateway ${s.gateway}`);
            step++;
        }
    }
    const run = Promise.all([1, 1, 1, 2, 2, 2].map((node, w) => worker(node, w)));
    run.catch((e) => { failure = e; stop = true; });
    const flowing = (node, n) => R.until(() => { if (failure) throw failure; return acked[node] >= n; }, 60000, `${n} acknowledged writes on store ${node}`);

    for (const victim of [1, 2, 1]) {
        await flowing(victim, acked[victim] + 30);
        await killStore(victim); // the workers keep writing through the outage
        await flowing(victim, acked[victim] + 30);
    }
    stop = true;
    await run;
    await drain(subs, 1);
    await drain(subs, 2);
    const m1 = await metricsOf(subs);
    t.diagnostic(`${attempts.length} writes on ${ids.size} records, ${attempts.filter((a) => a.acked).length} acknowledged, ${refused} refused with 503 (the slowest after ${slowest503} ms); replayed events dropped: ${replayedNote(subs, m0, m1)}`);
    const list = plain(await P.list({ queries: [loadNodeSdk().Query.limit(5000)] }));
    const stored = new Map(list.presences.map((p) => [p.$id, p.status]));
    subs.forEach((s, i) => {
        checkSubscriber(s, attempts, ids, stored);
        assertSubscriberHeld(s, m0[i], m1[i]);
        assert.equal(m1[i].sum('presenced_realtime_conflated_total'), m0[i].sum('presenced_realtime_conflated_total'), `gateway ${s.gateway} conflated events, though no record had two queued`);
    });
});

// Every acknowledged write reached subscriber s exactly once, a refused one at most once, nothing
// else came, each record's events came in the order it was written, and what s saw last of each
// record is what is stored.
function checkSubscriber(s, attempts, ids, stored) {
    const at = `at the subscriber on gateway ${s.gateway}`;
    const known = new Set(attempts.map((a) => key(a.id, a.kind, a.status)));
    for (const a of attempts) {
        const k = key(a.id, a.kind, a.status);
        if (a.acked) assert.equal(s.seen(k), 1, `the acknowledged ${a.kind} of ${a.id} (${a.status}) arrived ${s.seen(k)} times ${at}`);
        else assert.ok(s.seen(k) <= 1, `the refused ${a.kind} of ${a.id} (${a.status}) arrived ${s.seen(k)} times ${at}`);
    }
    for (const id of ids) {
        const evs = s.byId.get(id) || [];
        for (const [kind, status] of evs) assert.ok(known.has(key(id, kind, status)), `an event of ${id} nobody wrote: ${kind} ${status} ${at}`);
        // in the order the record was written
        const order = evs.map(([kind, status]) => attempts.findIndex((a) => a.id === id && a.kind === kind && a.status === status));
        assert.deepEqual(order, [...order].sort((x, y) => x - y), `the events of ${id} out of order ${at}: ${JSON.stringify(evs)}`);
    }
    for (const id of ids) {
        const evs = s.byId.get(id) || [];
        const lastEv = evs[evs.length - 1];
        const view = !lastEv || lastEv[0] === 'delete' ? undefined : lastEv[1];
        assert.equal(stored.get(id), view, `${id}: stored ${stored.get(id)}, the last event ${at} ${JSON.stringify(lastEv)}`);
    }
}
