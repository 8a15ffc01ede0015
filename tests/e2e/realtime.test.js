'use strict';
// Realtime over WebSocket against a real cluster (2 gateways, broker, 2 store nodes, reaper):
// the official web SDK's Realtime class (appwrite 27.0.0, and the newest release) for the user
// stories, raw `ws` sockets and hand-made frames for bad input and for the bulk.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn } = require('node:child_process');

const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded: it takes globalThis.WebSocket
const { useCluster, sleep, freePort, parseMetrics, BIN } = require('./lib/cluster');
const { webClient, nodeClient, mintJwt } = require('./lib/sdk');
const { uid, assertPresence, DATE_RE } = require('./lib/check');
const { sameNodeAs } = require('./lib/shard');

const realtimes = R.realtimeRegistry(test); // every SDK Realtime of the file
const H = useCluster(test, { label: 'realtime' });
const C = () => H.cluster;


function sdkRealtime(userId, { sdk = 'appwrite', jwt } = {}) {
    const { W, client } = webClient(C(), { sdk, userId, jwt });
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    return { W, client, rt, userId };
}

const jwtFor = (userId, claims = {}) => mintJwt(C().jwtSecret, { userId, ...claims });
const keyPresences = () => nodeClient(C(), {}).presences;

// An event exactly as §6.4 says: events in order, the four channels, the date format.
function assertEvent(e, action, id, payload) {
    assert.deepEqual(e.events, [`presences.${id}.${action}`, `presences.*.${action}`, `presences.${id}`, 'presences.*'], 'events');
    assert.deepEqual(e.channels, ['presences', `presences.${id}`, `presences.${action}`, `presences.${id}.${action}`], 'channels');
    assert.match(e.timestamp, DATE_RE, 'timestamp');
    assert.ok(Array.isArray(e.subscriptions) && e.subscriptions.length > 0, 'subscriptions');
    if (payload) assert.deepEqual(e.payload, payload, 'payload');
    else assertPresence(e.payload);
}

const isEv = (action, id) => (e) => e.events && e.events[0] === `presences.${id}.${action}`;
const evOf = (id) => (e) => e.payload && e.payload.$id === id;

// "Nothing (more) arrived" is checked with a marker, never after a fixed wait: a record written
// after the action, on the store node that owns the record in question (lib/shard.js), readable
// by anyone. The bus keeps a store node's events in order and a connection sends its frames in
// order, so once a connection has the marker's event, it has every event of that record from
// before that it was going to get. markerFor(id) picks the marker's id (a subscription that names
// its channels must name the marker's too); marker(m, ...) writes it (an upsert with a status of
// its own each time) and waits for it at every SDK collector or raw client given, each on a
// connection under test.
const markerFor = (id) => sameNodeAs(C().project, id, () => uid('mark'), C().stores);
// markerVia(pid, m, ...) writes it through that gateway process: after what that gateway sent
// before (a release, a lease renewal), since one gateway's requests reach a store node in order.
let markers = 0;
const marker = (m, ...at) => markerVia(undefined, m, ...at);
async function markerVia(gateway, m, ...at) {
    const status = `marker ${++markers}`;
    const body = { userId: m, status, permissions: ['read("any")'] };
    if (gateway === undefined) await keyPresences().upsert({ presenceId: m, ...body });
    else {
        const r = await R.restVia(C(), gateway, 'PUT', `/v1/presences/${m}`, { key: true, body });
        assert.equal(r.status, 200, r.text);
    }
    const mine = (p) => p && p.$id === m && p.status === status;
    for (const c of at) {
        if (c.waitFor) await c.waitFor((e) => mine(e.payload), 5000, `the marker ${m} (same store node)`);
        else await R.until(() => c.events((x) => mine(x.data.payload)).length > 0, 5000, `the marker ${m} (same store node)`);
    }
}
const markerAfter = (id, ...at) => marker(markerFor(id), ...at);

async function gatewayPair(rt) {
    const mine = await R.gatewayOf(C(), rt.socket._socket.localPort);
    const other = C().pids('gateway').find((p) => p !== mine);
    assert.ok(other, 'a second gateway');
    return { mine, other };
}

// A metric of one gateway process.
async function metricOf(pid, name) {
    const r = await R.restVia(C(), pid, 'GET', '/metrics');
    return parseMetrics(r.text).sum(name);
}

// Sums a metric over the gateways (each gateway renders its own).
async function gatewayMetric(name) {
    let total = 0;
    for (const pid of C().pids('gateway')) {
        const r = await R.restVia(C(), pid, 'GET', '/metrics');
        total += parseMetrics(r.text).sum(name);
    }
    return total;
}

// --- the SDK user stories ----------------------------------------------------------------------

describe('web SDK Realtime: events across gateways', () => {
    it('Channel.presences() sees upsert, update and delete made through the other gateway, exactly as Appwrite shapes them', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const col = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presences(), col.cb);
        const { other } = await gatewayPair(rt);
        const jwt = jwtFor(u);
        const id = uid('p');

        const up = await R.restVia(C(), other, 'PUT', `/v1/presences/${id}`, { jwt, body: { status: 'online', metadata: { room: 'a', n: 1 } } });
        assert.equal(up.status, 200, up.text);
        assertEvent(await col.waitFor(isEv('upsert', id)), 'upsert', id, up.json);

        const upd = await R.restVia(C(), other, 'PATCH', `/v1/presences/${id}`, { jwt, body: { status: 'away' } });
        assert.equal(upd.status, 200, upd.text);
        assertEvent(await col.waitFor(isEv('update', id)), 'update', id, upd.json);

        const del = await R.restVia(C(), other, 'DELETE', `/v1/presences/${id}`, { jwt });
        assert.equal(del.status, 204, del.text);
        const d = await col.waitFor(isEv('delete', id));
        assertEvent(d, 'delete', id, upd.json); // the record as it was before the delete
        assert.equal(col.count(evOf(id)), 3, 'exactly three events');
        const [e0] = col.got;
        assert.deepEqual(Object.keys(e0), ['events', 'channels', 'timestamp', 'payload', 'subscriptions']);
    });

    it('the same with the newest web SDK release', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u, { sdk: 'appwrite-latest' });
        const col = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presences(), col.cb);
        const { other } = await gatewayPair(rt);
        const id = uid('p');
        const up = await R.restVia(C(), other, 'PUT', `/v1/presences/${id}`, { jwt: jwtFor(u), body: { status: 'online' } });
        assertEvent(await col.waitFor(isEv('upsert', id)), 'upsert', id, up.json);
    });

    it('subscriptions over the 64 KiB byte bound: Appwrite\'s error message reaches onError, nothing of that subscribe is taken; the connection and its earlier subscriptions keep working', async () => {
        const { W, rt } = sdkRealtime(uid('u'));
        const errors = [];
        rt.onError((e, code) => errors.push({ message: e.message, code }));
        const all = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presences(), all.cb);
        // a subscription of 100 channels of 250 bytes holds about 25 KB of the connection's 64 KiB
        const pad = (tag, i) => { const c = `presences.${tag}${i}-`; return c + 'x'.repeat(250 - c.length); };
        const channels = (tag, id) => [`presences.${id}`, ...Array.from({ length: 99 }, (_, i) => pad(tag, i))];
        const idA = uid('p'), idB = uid('p'), probe = uid('p'), idD = uid('p');
        const a = R.collector(), b = R.collector(), over = R.collector(), d = R.collector();
        await R.sdkSubscribe(rt, channels('a', idA), a.cb);
        await R.sdkSubscribe(rt, channels('b', idB), b.cb);
        const socket = rt.socket;
        const n0 = socket.__msgs.length;
        await rt.subscribe(channels('c', probe), over.cb); // about 75 KB in all
        const err = await R.sdkFrame(rt, (m) => m.type === 'error', 5000, n0, 'the error frame');
        assert.deepEqual(Object.keys(err), ['type', 'data'], JSON.stringify(err));
        assert.deepEqual(Object.keys(err.data), ['code', 'message'], JSON.stringify(err));
        assert.equal(err.data.code, 1003);
        assert.match(err.data.message, /^Subscriptions too large: a connection's subscriptions may hold at most 65536 bytes of ids, channels and queries \(this message would make \d+\)\.$/);
        await R.until(() => errors.length > 0, 5000, 'the SDK\'s onError');
        assert.deepEqual(errors, [{ message: err.data.message, code: 1003 }]);
        // the earlier subscriptions still deliver; the refused one got nothing
        const kp = keyPresences();
        for (const id of [idA, idB, probe]) await kp.upsert({ presenceId: id, userId: uid('k'), status: 'x', permissions: ['read("any")'] });
        await a.waitFor(evOf(idA));
        await b.waitFor(evOf(idB));
        const p = await all.waitFor(evOf(probe));
        assert.equal(p.subscriptions.length, 1, `the probe's event names only the presences subscription: ${JSON.stringify(p.subscriptions)}`);
        await markerAfter(probe, all);
        assert.equal(over.count(() => true), 0, 'the refused subscription got an event');
        assert.equal(a.count(evOf(idA)), 1);
        assert.equal(b.count(evOf(idB)), 1);
        // a subscription that fits is still taken, on the same connection
        await R.sdkSubscribe(rt, W.Channel.presence(idD), d.cb);
        await kp.upsert({ presenceId: idD, userId: uid('k'), status: 'd', permissions: ['read("any")'] });
        await d.waitFor(evOf(idD));
        assert.equal(rt.socket, socket, 'the SDK kept its connection');
        assert.equal(socket.readyState, 1, 'the connection is open');
        assert.ok(!socket.__msgs.some((m) => m.type === 'error' && m !== err), 'one error only');
    });

    it('Channel.presence(id) sees only that record', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const mineId = uid('p');
        const col = R.collector();
        const all = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presence(mineId), col.cb);
        await R.sdkSubscribe(rt, W.Channel.presences(), all.cb);
        const other = uid('u');
        const otherId = uid('p');
        await webClient(C(), { userId: other }).presences.upsert({ presenceId: otherId, status: 'x', permissions: ['read("any")'] });
        await webClient(C(), { userId: u }).presences.upsert({ presenceId: mineId, status: 'online' });
        const e = await col.waitFor(isEv('upsert', mineId));
        assert.deepEqual(e.channels, ['presences', `presences.${mineId}`, 'presences.upsert', `presences.${mineId}.upsert`]);
        await all.waitFor(evOf(otherId), 5000, 'the other record on presences (so the negative means something)');
        await markerAfter(otherId, all);
        assert.equal(col.count(evOf(otherId)), 0, 'no event of another record');
        // two matching subscriptions of one connection: one frame, both ids
        assert.equal(e.subscriptions.length, 2, `subscriptions ${JSON.stringify(e.subscriptions)}`);
    });

    it('presences.<ID>.delete sees only deletes; presences.upsert only upserts', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const id = uid('p');
        const dels = R.collector();
        const ups = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presence(id).delete(), dels.cb);
        await R.sdkSubscribe(rt, 'presences.upsert', ups.cb);
        const p = webClient(C(), { userId: u }).presences;
        await p.upsert({ presenceId: id, status: 'online' });
        await p.update({ presenceId: id, status: 'away' });
        await p.delete({ presenceId: id });
        const d = await dels.waitFor(isEv('delete', id));
        assertEvent(d, 'delete', id);
        await ups.waitFor(isEv('upsert', id));
        await markerAfter(id, ups);
        assert.deepEqual(dels.got.map((e) => e.events[0]), [`presences.${id}.delete`]);
        assert.deepEqual(ups.got.filter(evOf(id)).map((e) => e.events[0]), [`presences.${id}.upsert`]);
    });

    it('unsubscribe stops delivery (the connection and its other subscriptions stay)', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const id = uid('p');
        const a = R.collector();
        const b = R.collector();
        const subA = await R.sdkSubscribe(rt, W.Channel.presence(id), a.cb);
        await R.sdkSubscribe(rt, W.Channel.presences(), b.cb);
        const p = webClient(C(), { userId: u }).presences;
        await p.upsert({ presenceId: id, status: 'one' });
        const both = (await a.waitFor(isEv('upsert', id))).subscriptions;
        assert.equal(both.length, 2, `the upsert names both subscriptions: ${JSON.stringify(both)}`);
        const n0 = rt.socket.__msgs.length;
        await subA.unsubscribe();
        const resp = await R.sdkFrame(rt, (m) => m.type === 'response' && m.data.to === 'unsubscribe', 5000, n0);
        assert.deepEqual(resp.data.subscriptions.map((s) => s.removed), [true]);
        const gone = resp.data.subscriptions[0].subscriptionId;
        assert.ok(both.includes(gone));
        await p.update({ presenceId: id, status: 'two' });
        await b.waitFor(isEv('update', id));
        await markerAfter(id, b);
        assert.equal(a.count(isEv('update', id)), 0, 'the unsubscribed callback got nothing');
        // the SDK drops what comes for a subscription it has let go: what the server sent is in the frames
        const after = rt.socket.__msgs.slice(n0).filter((m) => m.type === 'event');
        assert.ok(after.length >= 2, 'the update and the marker');
        for (const m of after) assert.ok(!m.data.subscriptions.includes(gone), `an event for the removed subscription: ${JSON.stringify(m.data)}`);
    });

    it('a query subscription sees only matching events, and the change that makes a record leave the set', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const id = uid('p');
        const q = R.collector();
        const all = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presences(), q.cb, [W.Query.equal('status', ['online'])]);
        await R.sdkSubscribe(rt, W.Channel.presences(), all.cb);
        const p = webClient(C(), { userId: u }).presences;
        await p.upsert({ presenceId: id, status: 'away' });     // not in the set
        await p.update({ presenceId: id, status: 'online' });   // enters
        await p.update({ presenceId: id, status: 'busy' });     // leaves: still delivered
        await p.update({ presenceId: id, status: 'idle' });     // outside: nothing
        await all.waitFor((e) => evOf(id)(e) && e.payload.status === 'idle');
        await markerAfter(id, all);
        assert.deepEqual(q.got.filter(evOf(id)).map((e) => [e.events[0], e.payload.status]),
            [[`presences.${id}.update`, 'online'], [`presences.${id}.update`, 'busy']]);
        assert.equal(all.count(evOf(id)), 4);
    });

    it('a metadata query (metadata.room) works', async () => {
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const lobby = R.collector();
        const all = R.collector();
        await R.sdkSubscribe(rt, W.Channel.presences(), lobby.cb, [W.Query.equal('metadata.room', ['lobby']), W.Query.isNotNull('status')]);
        await R.sdkSubscribe(rt, W.Channel.presences(), all.cb);
        const a = uid('p');
        const b = uid('p');
        const u2 = uid('u');
        await webClient(C(), { userId: u }).presences.upsert({ presenceId: a, status: 'x', metadata: { room: 'lobby', seat: 3 } });
        await webClient(C(), { userId: u2 }).presences.upsert({ presenceId: b, status: 'x', metadata: { room: 'kitchen' }, permissions: ['read("any")'] });
        await lobby.waitFor(evOf(a));
        await all.waitFor(evOf(b));
        await markerAfter(b, all);
        assert.equal(lobby.count(evOf(b)), 0, 'kitchen is not the lobby');
    });

    it('a subscriber without read permission receives nothing for a record, while a permitted one does', async () => {
        const ua = uid('a');
        const ub = uid('b');
        const A = sdkRealtime(ua);
        const B = sdkRealtime(ub);
        const ca = R.collector();
        const cb = R.collector();
        await R.sdkSubscribe(A.rt, A.W.Channel.presences(), ca.cb);
        await R.sdkSubscribe(B.rt, B.W.Channel.presences(), cb.cb);
        const secret = uid('p');
        const shared = uid('p');
        await webClient(C(), { userId: ua }).presences.upsert({ presenceId: secret, status: 'hidden' }); // owner-only
        await keyPresences().upsert({ presenceId: shared, userId: uid('k'), status: 'shared', permissions: ['read("users")'] });
        await ca.waitFor(evOf(secret));
        await ca.waitFor(evOf(shared));
        await cb.waitFor(evOf(shared), 5000, 'the shared record (so the negative means something)');
        await markerAfter(secret, cb);
        assert.equal(cb.count(evOf(secret)), 0, 'B must not see A\'s owner-only record');
        // a record with no read role produces no event at all
        const none = uid('p');
        await keyPresences().upsert({ presenceId: none, userId: uid('k'), status: 'nobody', permissions: [] });
        await markerAfter(none, ca, cb);
        assert.equal(ca.count(evOf(none)), 0);
        assert.equal(cb.count(evOf(none)), 0);
    });

    it('permission changes: who loses read access gets a delete, who gains it gets an upsert', async () => {
        const ua = uid('a');
        const ub = uid('b');
        const A = sdkRealtime(ua);
        const B = sdkRealtime(ub);
        const ca = R.collector();
        const cb = R.collector();
        await R.sdkSubscribe(A.rt, A.W.Channel.presences(), ca.cb);
        await R.sdkSubscribe(B.rt, B.W.Channel.presences(), cb.cb);
        const id = uid('p');
        const kp = keyPresences();
        const first = await kp.upsert({ presenceId: id, userId: ua, status: 'one', permissions: [`read("user:${ua}")`] });
        await ca.waitFor(isEv('upsert', id));
        const second = await kp.update({ presenceId: id, userId: ua, status: 'two', permissions: [`read("user:${ub}")`] });
        const lost = await ca.waitFor(isEv('delete', id));
        assertEvent(lost, 'delete', id, JSON.parse(JSON.stringify(first)));
        const gained = await cb.waitFor(isEv('upsert', id));
        assertEvent(gained, 'upsert', id, JSON.parse(JSON.stringify(second)));
        await kp.update({ presenceId: id, userId: ua, status: 'three', permissions: ['read("users")'] });
        await ca.waitFor((e) => isEv('upsert', id)(e) && e.payload.status === 'three');
        await cb.waitFor((e) => isEv('update', id)(e) && e.payload.status === 'three');
        await markerAfter(id, ca, cb);
        assert.equal(ca.count(isEv('update', id)), 0, 'A never saw an update of a record it could not read');
        assert.equal(cb.count(evOf(id)), 2);
    });
});

// --- connection-bound presence ---------------------------------------------------------------

describe('connection-bound presence (upsertPresence)', () => {
    async function watcher() {
        const w = await R.rawConnect(C(), {});
        await R.rawSubscribe(w, [{ subscriptionId: 'w', channels: ['presences'] }]);
        return w;
    }

    it('creates a source "realtime" record that is deleted, with a delete event, after disconnect()', async () => {
        const w = await watcher();
        const u = uid('u');
        const { W, rt } = sdkRealtime(u);
        const id = uid('p');
        await rt.upsertPresence({ presenceId: id, status: 'online', metadata: { tab: 1 }, permissions: [W.Permission.read(W.Role.any())] });
        const resp = await R.sdkFrame(rt, (m) => m.type === 'response' && m.data.to === 'presence', 5000);
        assertPresence(resp.data.presence, { $id: id, userId: u, status: 'online', source: 'realtime', metadata: { tab: 1 } });
        const up = await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.upsert`);
        assert.equal(up.data.payload.source, 'realtime');
        const got = await keyPresences().get({ presenceId: id });
        assert.equal(got.source, 'realtime');
        const t0 = Date.now();
        await rt.disconnect();
        const del = await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.delete`, 15000, 'the delete event');
        const ms = Date.now() - t0;
        assert.ok(ms >= 4000, `deleted after ${ms} ms: the grace period is 5 s`);
        assert.equal(del.data.payload.$id, id);
        await assert.rejects(keyPresences().get({ presenceId: id }), (e) => e.code === 404);
        w.close();
    });

    it('two sockets of one user keep the presence until the second one closes', async () => {
        const w = await watcher();
        const u = uid('u');
        const id = uid('p');
        const A = sdkRealtime(u);
        const B = sdkRealtime(u);
        // the second socket's upsert updates the record: the user needs update permission
        const perm = [A.W.Permission.read(A.W.Role.any()), A.W.Permission.write(A.W.Role.user(u))];
        await A.rt.upsertPresence({ presenceId: id, status: 'tab A', permissions: perm });
        await R.sdkFrame(A.rt, (m) => m.type === 'response' && m.data.to === 'presence', 5000);
        await B.rt.upsertPresence({ presenceId: id, status: 'tab B', permissions: perm });
        await R.sdkFrame(B.rt, (m) => m.type === 'response' && m.data.to === 'presence', 5000);
        const gA = await R.gatewayOf(C(), A.rt.socket._socket.localPort);
        const gB = await R.gatewayOf(C(), B.rt.socket._socket.localPort);
        const released = await metricOf(gA, 'presenced_realtime_releases_total');
        await A.rt.disconnect();
        if (gA !== gB) { // tab A's gateway lets go of its hold after the grace: wait for that
            await R.until(async () => (await metricOf(gA, 'presenced_realtime_releases_total')) > released, 20000, 'the release by tab A\'s gateway');
        } else {
            await sleep(7000); // one hold for both tabs: nothing to see but the grace passing
        }
        await markerVia(gA, markerFor(id), w);
        const deletes = () => w.events((m) => m.data.events[0] === `presences.${id}.delete`).length;
        assert.equal(deletes(), 0, 'no delete while tab B is open');
        const still = await keyPresences().get({ presenceId: id });
        assert.equal(still.status, 'tab B');
        await B.rt.disconnect();
        await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.delete`, 15000, 'the delete after the last tab');
        await markerAfter(id, w);
        assert.equal(deletes(), 1, 'exactly one delete');
        w.close();
    });

    it('a presence held through two gateways: the first gateway letting go is silent; the delete comes with the last', async () => {
        const [g1, g2] = C().pids('gateway');
        const u = uid('u');
        const id = uid('p');
        const mark = markerFor(id);
        const w = await R.rawConnectTo(C(), g2, {});
        await R.rawSubscribe(w, [{ subscriptionId: 'w', channels: [`presences.${id}`, `presences.${mark}`] }]);
        const perm = ['read("any")', `write("user:${u}")`];
        const a = await R.rawConnectTo(C(), g1, { jwt: jwtFor(u) });
        const b = await R.rawConnectTo(C(), g2, { jwt: jwtFor(u) });
        for (const [c, status] of [[a, 'tab A'], [b, 'tab B']]) {
            const r = await c.request({ type: 'presence', data: { status, presenceId: id, permissions: perm } });
            assert.equal(r.type, 'response', JSON.stringify(r));
        }
        await w.next((m) => m.type === 'event' && m.data.payload.status === 'tab B', 5000, 'the second tab\'s write');
        const before = w.events((m) => m.data.payload.$id === id).length;
        const released = await metricOf(g1, 'presenced_realtime_releases_total');
        a.close();
        // the grace is over and gateway 1 has sent its release; the marker goes after it
        await R.until(async () => (await metricOf(g1, 'presenced_realtime_releases_total')) > released, 20000, 'the release by gateway 1');
        await markerVia(g1, mark, w);
        assert.deepEqual(w.events((m) => m.data.payload.$id === id).slice(before).map((m) => m.data.events[0]), [], 'no event while gateway 2 still holds it');
        assert.equal((await keyPresences().get({ presenceId: id })).status, 'tab B');
        b.close();
        await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.delete`, 15000, 'the delete after the last holder');
        await marker(mark, w);
        assert.deepEqual(w.events((m) => m.data.payload.$id === id).slice(before).map((m) => m.data.events[0]), [`presences.${id}.delete`], 'exactly one delete');
        w.close();
    });

    it('a presence message needs a user, a status, and grants only the caller\'s roles', async () => {
        const g = await R.rawConnect(C(), {});
        let r = await g.request({ type: 'presence', data: { status: 'x', presenceId: uid('p') } });
        assert.deepEqual(r.data, { code: 401, message: 'User must be authorized' });
        const c = await R.rawConnect(C(), { jwt: jwtFor(uid('u')) });
        r = await c.request({ type: 'presence', data: { presenceId: uid('p') } });
        assert.deepEqual(r.data, { code: 1003, message: 'Payload is not valid. Status is required' });
        r = await c.request({ type: 'presence', data: { status: 'x', permissions: 'read("any")' } });
        assert.deepEqual(r.data, { code: 1003, message: 'permissions: Permissions must be an array of strings.' });
        r = await c.request({ type: 'presence', data: { status: 'x', permissions: ['read("user:someoneelse")'] } });
        assert.equal(r.data.code, 401);
        assert.match(r.data.message, /^Permissions must be one of: \(/);
        r = await c.request({ type: 'presence', data: { status: 'x'.repeat(256) } });
        assert.equal(r.data.code, 1003);
        g.close();
        c.close();
    });

    it('a gateway killed with SIGKILL: its connection-bound presences are deleted, with events, within the lease', { timeout: 90000 }, async () => {
        const [g1, g2] = C().pids('gateway');
        const victim = g1;
        const survivor = g2;
        const ua = uid('k');
        const us = uid('s');
        const idA = uid('p');
        const idS = uid('p');
        const holderA = await R.rawConnectTo(C(), victim, { jwt: jwtFor(ua) });
        const holderS = await R.rawConnectTo(C(), survivor, { jwt: jwtFor(us) });
        const tS = Date.now();
        for (const [h, id] of [[holderA, idA], [holderS, idS]]) {
            const r = await h.request({ type: 'presence', data: { status: 'here', presenceId: id, permissions: ['read("any")'] } });
            assert.equal(r.type, 'response', JSON.stringify(r));
        }
        const w = await R.rawConnectTo(C(), survivor, {});
        await R.rawSubscribe(w, [{ subscriptionId: 'w', channels: ['presences'] }]);
        const t0 = Date.now();
        process.kill(victim, 'SIGKILL');
        await holderA.closed;
        const del = await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${idA}.delete`, 45000, 'the delete of the dead gateway\'s presence');
        const ms = Date.now() - t0;
        assert.ok(ms <= 40000, `deleted ${ms} ms after the kill (lease 30 s)`);
        assert.equal(del.data.payload.source, 'realtime');
        assert.equal(w.events((m) => m.data.events[0] === `presences.${idS}.delete`).length, 0, 'the live gateway\'s presence stays');
        // ... past its first lease: the live gateway renews it, and renewals are not broadcast
        while (Date.now() - tS < 40000) await sleep(250);
        await markerVia(survivor, markerFor(idS), w); // after the survivor's renewals so far
        const s = await keyPresences().get({ presenceId: idS });
        assert.equal(s.status, 'here');
        assert.ok(Date.parse(s.expiresAt) - tS > 35000, `the lease moved on (expiresAt ${s.expiresAt})`);
        assert.equal(w.events((m) => m.data.payload.$id === idS).length, 0, 'no event for lease renewals');
        holderS.close();
        w.close();
        await R.until(() => { const p = C().pids('gateway'); return p.length === 2 && !p.includes(victim); }, 20000, 'the gateway restarted');
        await C().waitHealthy(20000);
    });
});

// --- identity on the socket ------------------------------------------------------------------

describe('identity on the socket', () => {
    it('connected carries an Account-like user when a JWT is given, null for a guest', async () => {
        const u = uid('u');
        const c = await R.rawConnect(C(), { jwt: jwtFor(u, { labels: ['vip'] }) });
        assert.equal(c.hello.type, 'connected');
        const user = c.hello.data.user;
        assert.equal(user.$id, u);
        assert.equal(user.status, true);
        assert.deepEqual(user.labels, ['vip']);
        assert.equal(typeof user.name, 'string');
        assert.deepEqual(c.hello.data.channels, []);
        const g = await R.rawConnect(C(), {});
        assert.deepEqual(g.hello, { type: 'connected', data: { channels: [], subscriptions: [], user: null } });
        c.close();
        g.close();
    });

    it('errors during open are sent, then the socket is closed', async () => {
        for (const [opts, code, close, msg] of [
            [{ project: 'no-such-project' }, 1008, 1008, /^Missing or unknown project ID$/],
            [{ project: null }, 1008, 1008, /^Missing or unknown project ID$/],
            [{ jwt: 'not.a.jwt' }, 401, 1008, /JWT/],
            [{ jwt: jwtFor(uid('u'), { exp: Math.floor(Date.now() / 1000) - 10 }) }, 401, 1008, /expired/],
        ]) {
            const c = await R.RawClient.open(R.rtUrl(C(), opts));
            const e = await c.next(() => true);
            assert.equal(e.type, 'error', JSON.stringify(e));
            assert.equal(e.data.code, code);
            assert.match(e.data.message, msg);
            const cl = await c.closed;
            assert.equal(cl.code, close);
        }
        const r = await fetch(`${C().endpoint}/realtime?project=${C().project}`);
        assert.equal(r.status, 400, 'a plain GET is told to use a WebSocket');
        assert.equal((await r.json()).type, 'general_bad_request');
    });

    it('authentication with a JWT re-binds the subscriptions; a bad token is refused', async () => {
        const u = uid('u');
        const c = await R.rawConnect(C(), {});
        await R.rawSubscribe(c, [{ subscriptionId: 's', channels: ['presences'] }]);
        let r = await c.request({ type: 'authentication', data: { session: 'garbage' } });
        assert.deepEqual(r.data, { code: 1003, message: 'Session is not valid.' });
        r = await c.request({ type: 'authentication', data: { jwt: jwtFor(u) } });
        assert.equal(r.data.to, 'authentication');
        assert.equal(r.data.success, true);
        assert.equal(r.data.user.$id, u);
        const id = uid('p');
        await webClient(C(), { userId: u }).presences.upsert({ presenceId: id, status: 'owner-only' });
        await c.next((m) => m.type === 'event' && m.data.payload.$id === id);
        c.close();
    });

    it('a token that expires while connected drops the connection to a guest, and it is told', { timeout: 30000 }, async () => {
        const u = uid('u');
        const c = await R.rawConnect(C(), { jwt: jwtFor(u, { exp: Math.floor(Date.now() / 1000) + 3 }) });
        assert.equal(c.hello.data.user.$id, u);
        await R.rawSubscribe(c, [{ subscriptionId: 's', channels: ['presences'] }]);
        const mine = uid('p');
        const kp = keyPresences();
        await kp.upsert({ presenceId: mine, userId: u, status: 'before' });
        await c.next((m) => m.type === 'event' && m.data.payload.$id === mine, 5000, 'the owner-only record while authenticated');
        const err = await c.next((m) => m.type === 'error', 8000, 'the expiry notice');
        assert.equal(err.data.code, 401);
        assert.match(err.data.message, /expired/);
        await kp.update({ presenceId: mine, userId: u, status: 'after' });
        const pub = markerFor(mine); // after the update, on its store node: the update would have come first
        await kp.upsert({ presenceId: pub, userId: uid('k'), status: 'public', permissions: ['read("guests")'] });
        await c.next((m) => m.type === 'event' && m.data.payload.$id === pub, 5000, 'a guest-readable record');
        assert.equal(c.events((m) => m.data.payload.$id === mine && m.data.payload.status === 'after').length, 0, 'no owner-only event as a guest');
        c.close();
    });
});

// --- bad input -------------------------------------------------------------------------------

// A WebSocket spoken by hand, for frames the `ws` library will not send.
async function handSocket(port, project) {
    const s = net.connect({ host: '127.0.0.1', port });
    await new Promise((res, rej) => { s.once('connect', res); s.once('error', rej); });
    const key = crypto.randomBytes(16).toString('base64');
    s.write(`GET /v1/realtime?project=${project} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    let buf = Buffer.alloc(0);
    const frames = [];
    let head;
    let ended = false;
    s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (!head) {
            const i = buf.indexOf('\r\n\r\n');
            if (i < 0) return;
            head = buf.subarray(0, i).toString();
            buf = buf.subarray(i + 4);
        }
        while (buf.length >= 2) {
            let len = buf[1] & 0x7f;
            let hl = 2;
            if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); hl = 4; }
            else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); hl = 10; }
            if (buf.length < hl + len) break;
            frames.push({ op: buf[0] & 0x0f, fin: !!(buf[0] & 0x80), payload: buf.subarray(hl, hl + len) });
            buf = buf.subarray(hl + len);
        }
    });
    s.on('end', () => { ended = true; });
    s.on('close', () => { ended = true; });
    s.on('error', () => {});
    await R.until(() => frames.length > 0, 5000, 'the connected frame');
    assert.match(head, /^HTTP\/1\.1 101 /);
    const frame = (op, payload, { mask = true, fin = true } = {}) => {
        const p = Buffer.from(payload);
        const hdr = [((fin ? 0x80 : 0) | op)];
        if (p.length < 126) hdr.push((mask ? 0x80 : 0) | p.length);
        else if (p.length < 65536) hdr.push((mask ? 0x80 : 0) | 126, p.length >> 8, p.length & 0xff);
        else { hdr.push((mask ? 0x80 : 0) | 127); const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(p.length)); hdr.push(...b); }
        if (!mask) return Buffer.concat([Buffer.from(hdr), p]);
        const m = crypto.randomBytes(4);
        const body = Buffer.from(p.map((x, i) => x ^ m[i & 3]));
        return Buffer.concat([Buffer.from(hdr), m, body]);
    };
    return { s, frames, frame, get ended() { return ended; } };
}

describe('bad input, as a new user would send it', () => {
    let guards; // one healthy subscriber per gateway, checked after each case
    let pids0;
    test.before(async () => {
        pids0 = C().pids('gateway').sort();
        guards = [];
        for (const pid of pids0) {
            const g = await R.rawConnectTo(C(), pid, {});
            await R.rawSubscribe(g, [{ subscriptionId: 'guard', channels: ['presences'] }]);
            guards.push(g);
        }
    });
    test.after(() => { for (const g of guards || []) g.close(); });

    // Every gateway still delivers events to its other clients.
    async function stillServing() {
        const id = uid('alive');
        await keyPresences().upsert({ presenceId: id, userId: uid('k'), status: 'alive', permissions: ['read("any")'] });
        for (const g of guards) await g.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the guard\'s event');
        assert.deepEqual(C().pids('gateway').sort(), pids0, 'no gateway restarted');
    }

    async function expectError(c, msg, code, message) {
        const r = await c.request(msg);
        assert.equal(r.type, 'error', JSON.stringify(r));
        assert.equal(r.data.code, code, JSON.stringify(r));
        if (message instanceof RegExp) assert.match(r.data.message, message);
        else assert.equal(r.data.message, message);
        const pong = await c.request({ type: 'ping' });
        assert.equal(pong.type, 'pong', 'the connection stays open after an error');
    }

    it('garbage text, unknown type, wrong shapes: a clear 1003 error and the connection stays', async () => {
        const c = await R.rawConnect(C(), {});
        await expectError(c, 'hello there', 1003, 'Message format is not valid.');
        await expectError(c, '[1,2,3]', 1003, 'Message format is not valid.');
        await expectError(c, '{"type":"subscribe","data":[', 1003, 'Message format is not valid.');
        await expectError(c, { type: 'frobnicate', data: {} }, 1003, 'Message type is not valid.');
        await expectError(c, { data: {} }, 1003, 'Message type is not valid.');
        await expectError(c, { type: 'subscribe' }, 1003, 'Payload is not valid. Items is required');
        await expectError(c, { type: 'subscribe', data: { channels: ['presences'] } }, 1003, 'items: Payload is not valid.');
        await expectError(c, { type: 'subscribe', data: ['presences'] }, 1003, 'items: Each subscribe payload must be an object.');
        await expectError(c, { type: 'subscribe', data: [{ queries: [] }] }, 1003, 'items: channels is not present in payload.');
        await expectError(c, { type: 'subscribe', data: [{ channels: 'presences' }] }, 1003, 'items: channels is not a valid array.');
        await expectError(c, { type: 'subscribe', data: [{ channels: [42] }] }, 1003, /^items: Each channel must be a non-empty string/);
        await expectError(c, { type: 'subscribe', data: [{ channels: ['presences'], queries: 'equal' }] }, 1003, 'items: queries is not a valid array.');
        await expectError(c, { type: 'subscribe', data: [{ subscriptionId: '_bad id!', channels: ['presences'] }] }, 1003, 'items: subscriptionId is not a valid id.');
        await expectError(c, { type: 'unsubscribe', data: [{}] }, 1003, 'items: Each unsubscribe payload must include a non-empty subscriptionId.');
        c.close();
        await stillServing();
    });

    it('10,000 channels in one subscribe, too many subscriptions: refused with the limit in the message', async () => {
        const c = await R.rawConnect(C(), {});
        const channels = Array.from({ length: 10000 }, (_, i) => i.toString(36));
        const msg = JSON.stringify({ type: 'subscribe', data: [{ channels }] });
        assert.ok(msg.length < 64000, `${msg.length} bytes`);
        await expectError(c, msg, 1003, 'items: A subscription may have at most 100 channels; this one has 10000.');
        const rows = Array.from({ length: 101 }, (_, i) => ({ subscriptionId: `s${i}`, channels: ['presences'] }));
        await expectError(c, { type: 'subscribe', data: rows }, 1003, 'items: A subscribe message may hold at most 100 subscriptions.');
        await R.rawSubscribe(c, rows.slice(0, 100));
        await expectError(c, { type: 'subscribe', data: [{ subscriptionId: 'one-more', channels: ['presences'] }] }, 1003,
            /^Too many subscriptions: a connection may hold at most 100/);
        // re-sending an id replaces it: still allowed at the limit
        const r = await c.request({ type: 'subscribe', data: [{ subscriptionId: 's1', channels: ['presences.x'] }] });
        assert.equal(r.type, 'response');
        c.close();
        await stillServing();
    });

    it('an invalid query: the Appwrite message, nothing subscribed', async () => {
        const c = await R.rawConnect(C(), {});
        await expectError(c, { type: 'subscribe', data: [{ channels: ['presences'], queries: ['{"method":"limit","values":[1]}'] }] }, 1003,
            /^Invalid query: Query method 'limit' is not supported in Realtime queries\. Allowed query methods are: /);
        await expectError(c, { type: 'subscribe', data: [{ channels: ['presences'], queries: ['{not json'] }] }, 1003, /^Invalid query: /);
        await expectError(c, { type: 'subscribe', data: [{ channels: ['presences'], queries: ['{"method":"equal","attribute":"nope","values":[1]}'] }] }, 1003,
            'Invalid query: Attribute not found in schema: nope');
        c.close();
        await stillServing();
    });

    it('a frame over 64 KB: error 1009, then close 1009', async () => {
        const c = await R.rawConnect(C(), {});
        c.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(70000) }));
        const e = await c.next((m) => m.type === 'error');
        assert.equal(e.data.code, 1009);
        assert.match(e.data.message, /at most 64000 bytes/);
        assert.equal((await c.closed).code, 1009);
        // 64,000 bytes exactly is still fine
        const d = await R.rawConnect(C(), {});
        const base = JSON.stringify({ type: 'ping', pad: '' });
        const r = await d.request(JSON.stringify({ type: 'ping', pad: 'y'.repeat(64000 - base.length) }));
        assert.equal(r.type, 'pong');
        d.close();
        await stillServing();
    });

    it('a connection\'s subscriptions hold at most 64 KiB of ids, channels and queries: at the bound taken, over it refused with the limit (1003, nothing of that message subscribed), the connection kept', async () => {
        const c = await R.rawConnect(C(), {});
        const id = uid('p');
        // what a subscription is counted for: its id, each distinct presence channel and a byte,
        // the text of its queries
        const cost = (row) => row.subscriptionId.length + row.channels.reduce((n, ch) => n + Buffer.byteLength(ch) + 1, 0) + (row.queries || []).reduce((n, q) => n + Buffer.byteLength(q), 0);
        // channels of `bytes` counted bytes in all (each 12..257)
        const fill = (tag, bytes) => {
            const out = [];
            for (let i = 0; bytes > 0; i++) {
                let n = Math.min(257, bytes);
                if (bytes - n > 0 && bytes - n < 12) n = bytes - 12;
                const p = `presences.${tag}${i}-`;
                out.push(p + 'x'.repeat(n - 1 - p.length));
                bytes -= n;
            }
            return out;
        };
        const q = JSON.stringify({ method: 'equal', attribute: 'status', values: ['y'.repeat(500)] });
        const s1 = { subscriptionId: 's1', channels: [`presences.${id}`, ...fill('a', 99 * 257)] };
        const s2 = { subscriptionId: 's2', channels: fill('b', 20000), queries: [q] };
        const used = cost(s1) + cost(s2);
        const s3 = { subscriptionId: 's3', channels: fill('c', 65536 - used - 2) };
        assert.equal(used + cost(s3), 65536);
        for (const row of [s1, s2, s3]) {
            assert.ok(JSON.stringify({ type: 'subscribe', data: [row] }).length < 64000);
            await R.rawSubscribe(c, [row]);
        }
        const s4 = { subscriptionId: 's4', channels: ['presences'] };
        const r = await c.request({ type: 'subscribe', data: [s4] });
        assert.deepEqual(r, { type: 'error', data: { code: 1003, message: `Subscriptions too large: a connection's subscriptions may hold at most 65536 bytes of ids, channels and queries (this message would make ${65536 + cost(s4)}).` } });
        assert.equal((await c.request({ type: 'ping' })).type, 'pong');
        // s4 (every presence) was not taken: the event of a record names s1 only
        const kp = keyPresences();
        await kp.upsert({ presenceId: id, userId: uid('k'), status: 'one', permissions: ['read("any")'] });
        const e1 = await c.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the event on s1');
        assert.deepEqual(e1.data.subscriptions, ['s1']);
        // the bound is on what the connection holds: s3 made smaller, s4 fits
        await R.rawSubscribe(c, [{ subscriptionId: 's3', channels: fill('d', 1000) }]);
        await R.rawSubscribe(c, [s4]);
        await kp.update({ presenceId: id, userId: e1.data.payload.userId, status: 'two' });
        const e2 = await c.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the event on s1 and s4');
        assert.deepEqual([...e2.data.subscriptions].sort(), ['s1', 's4']);
        assert.equal(c.closeInfo, undefined);
        c.close();
        await stillServing();
    });

    it('binary frames: error 1003, the connection stays', async () => {
        const c = await R.rawConnect(C(), {});
        c.send(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
        const e = await c.next((m) => m.type === 'error');
        assert.deepEqual(e.data, { code: 1003, message: 'Binary messages are not supported: send each message as JSON text.' });
        assert.equal((await c.request({ type: 'ping' })).type, 'pong');
        c.close();
        await stillServing();
    });

    it('fragmented messages and control frames are understood; unmasked frames close with 1002', async () => {
        const h = await handSocket(C().port, C().project);
        const msg = JSON.stringify({ type: 'ping' });
        h.s.write(Buffer.concat([h.frame(1, msg.slice(0, 5), { fin: false }), h.frame(9, 'hi'), h.frame(0, msg.slice(5))]));
        await R.until(() => h.frames.some((f) => f.op === 10) && h.frames.some((f) => f.op === 1 && f.payload.toString() === '{"type":"pong"}'), 5000, 'pong frame and pong message');
        h.s.write(h.frame(1, msg, { mask: false }));
        await R.until(() => h.frames.some((f) => f.op === 8), 5000, 'the close frame');
        assert.equal(h.frames.find((f) => f.op === 8).payload.readUInt16BE(0), 1002);
        await R.until(() => h.ended, 5000, 'the end of the connection');
        await stillServing();
    });

    it('abrupt TCP resets mid-frame', async () => {
        for (let i = 0; i < 20; i++) {
            const h = await handSocket(C().port, C().project);
            const f = h.frame(1, JSON.stringify({ type: 'subscribe', data: [{ channels: ['presences'] }], pad: 'z'.repeat(3000) }));
            h.s.write(f.subarray(0, 1 + (i * 97) % (f.length - 1)));
            await sleep(5);
            h.s.resetAndDestroy();
        }
        await stillServing();
    });

    it('a client that stops reading is dropped by the time rule (no write progress), within the memory bound; everyone else gets every event', { timeout: 120000 }, async () => {
        const slow = await R.rawConnect(C(), {});
        await R.rawSubscribe(slow, [{ subscriptionId: 'slow', channels: ['presences'] }]);
        const gw = await R.gatewayOf(C(), slow.localPort);
        const fast = await R.rawConnectTo(C(), gw);
        await R.rawSubscribe(fast, [{ subscriptionId: 'fast', channels: ['presences'] }]);
        const before = await gatewayMetric('presenced_realtime_slow_disconnects_total');
        const rss0 = rssKb(gw);
        slow.ws._socket.pause(); // reads nothing from now on
        const id = uid('big');
        const owner = uid('k');
        const kp = keyPresences();
        // random text: the connection negotiates permessage-deflate, and a repeated letter would
        // compress to nothing and never fill the socket's buffers
        const blob = crypto.randomBytes(11250).toString('base64');
        let n = 0, peak = rss0;
        const t0 = Date.now();
        const deadline = t0 + 90000;
        while (Date.now() < deadline && (await gatewayMetric('presenced_realtime_slow_disconnects_total')) === before) {
            await Promise.all(Array.from({ length: 10 }, () => kp.upsert({ presenceId: id, userId: owner, status: `n${n++}`, metadata: { blob }, permissions: ['read("any")'] })));
            peak = Math.max(peak, rssKb(gw));
            await sleep(50); // a steady stream, not a flood: only the time rule can drop it
        }
        const took = Date.now() - t0;
        assert.ok((await gatewayMetric('presenced_realtime_slow_disconnects_total')) > before, `the slow consumer was dropped (after ${n} events)`);
        assert.ok(took >= 9000, `dropped after ${took} ms: before the 10 s stall rule could apply`);
        assert.match(C().log(), /slow consumer: no write progress for \d+ ms/);
        if (!isAsan(gw)) assert.ok(peak - rss0 < 64 * 1024, `gateway RSS grew by ${peak - rss0} kB while one client did not read`);
        slow.ws._socket.resume();
        await slow.closed;
        // the reading subscriber on the same gateway got every update, in order, and is still connected
        await fast.next((m) => m.type === 'event' && m.data.payload.$id === id && m.data.payload.status === `n${n - 1}`, 10000, 'the last update');
        const seen = new Set(fast.events((m) => m.data.payload.$id === id).map((m) => m.data.payload.status));
        for (let k = 0; k < n; k++) assert.ok(seen.has(`n${k}`), `the reading subscriber missed n${k}`);
        assert.equal(fast.closeInfo, undefined);
        fast.close();
        await stillServing();
    });
});

// --- metrics -----------------------------------------------------------------------------------

describe('metrics', () => {
    it('every gateway exports its realtime gauges and the bus gap counter', async () => {
        for (const pid of C().pids('gateway')) {
            const r = await R.restVia(C(), pid, 'GET', '/metrics');
            const m = parseMetrics(r.text);
            assert.equal(m.find('presenced_bus_gaps_total').length, 1, 'presenced_bus_gaps_total');
            assert.equal(m.sum('presenced_bus_gaps_total'), 0, 'no gap on a healthy bus');
            assert.equal(m.find('presenced_realtime_connections').length, 1);
            assert.ok(m.sum('presenced_realtime_bus_frames_total') > 0, 'the gateway reads the bus');
            // the broker's bus: events came in, went out coalesced (never more frames out than in), none dropped
            const busIn = m.get('presenced_bus_frames_total', { dir: 'in' }), busOut = m.get('presenced_bus_frames_total', { dir: 'out' });
            assert.ok(busIn > 0 && busOut > 0 && busOut <= busIn, `bus frames in ${busIn}, out ${busOut}`);
            assert.equal(m.sum('presenced_bus_dropped_total'), 0, 'no bus frame dropped');
        }
    });
});

// --- scale -------------------------------------------------------------------------------------

function rssKb(pid) {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
}

function isAsan(pid) {
    try { return /libasan/.test(fs.readFileSync(`/proc/${pid}/maps`, 'utf8')); } catch { return false; }
}

// A third gateway process of the same cluster, on its own port (so that every connection to
// it lands on it: the cluster's two gateways share one port). Returns {port, child, stop}.
async function extraGateway(node, env = {}) {
    const gwArgs = C().procs().find((p) => p.role === 'gateway').args.split(/\s+/);
    const arg = (f) => gwArgs[gwArgs.indexOf(f) + 1];
    const port = await freePort();
    const fd = fs.openSync(`${C().runDir}/gateway-${node}.log`, 'a');
    // Internal traffic is CURVE: the extra gateway runs on gateway-2's key pair (the cluster's
    // key set has pairs for its own gateways only), under its own node id.
    const keys = fs.mkdtempSync(`${C().runDir}/keys-${node}-`);
    for (const f of fs.readdirSync(arg('--keys'))) {
        const to = f.replace(/^gateway-2\./, `gateway-${node}.`);
        if (/\.pub$/.test(f) || to !== f) fs.copyFileSync(path.join(arg('--keys'), f), path.join(keys, to), fs.constants.COPYFILE_EXCL);
    }
    const child = spawn(BIN, ['gateway', '--node', String(node), '--cluster', C().name, '--host', '127.0.0.1', '--port', String(port),
        '--broker-front', arg('--broker-front'), '--bus-out', arg('--bus-out'), '--keys', keys], {
        stdio: ['ignore', fd, fd],
        env: { ...process.env, PRESENCED_PROJECT: C().project, PRESENCED_API_KEY: C().apiKey, PRESENCED_JWT_SECRET: C().jwtSecret, ...env },
    });
    fs.closeSync(fd);
    const stop = () => { try { child.kill('SIGKILL'); } catch {} };
    try {
        await R.until(async () => {
            try { return (await fetch(`http://127.0.0.1:${port}/v1/health`)).status === 200; } catch { return false; }
        }, 20000, `the extra gateway ${node}`);
    } catch (e) { stop(); throw e; }
    return { port, child, stop };
}

describe('the bus follows the WebSocket clients', () => {
    it('a gateway without WebSocket clients takes no events; the first subscriber gets every event after its subscribe is acknowledged, again after the gateway left the bus', { timeout: 60000 }, async () => {
        const g = await extraGateway(7);
        try {
            const metrics = async () => parseMetrics(await (await fetch(`http://127.0.0.1:${g.port}/metrics`)).text());
            const key = { 'X-Appwrite-Project': C().project, 'X-Appwrite-Key': C().apiKey, 'content-type': 'application/json' };
            // REST alone: served, and the gateway is not on the bus
            const id0 = uid('busrest');
            const r0 = await fetch(`http://127.0.0.1:${g.port}/v1/presences/${id0}`, { method: 'PUT', headers: key, body: JSON.stringify({ userId: uid('bu'), status: 'rest' }) });
            assert.equal(r0.status, 200, await r0.text());
            let m = await metrics();
            assert.equal(m.get('presenced_gateway_bus_subscribed'), 0, 'a REST-only gateway is not on the bus');
            assert.equal(m.get('presenced_gateway_bus_joins_total'), 0);
            for (const round of [1, 2]) {
                const c = await R.rawConnect(C(), { port: g.port });
                assert.equal(c.hello.type, 'connected');
                await R.rawSubscribe(c, [{ subscriptionId: `s${round}`, channels: ['presences'], queries: [] }]);
                // at once after the acknowledgement, a write through the other gateways
                const id = uid(`bus${round}`);
                const up = await keyPresences().upsert({ presenceId: id, userId: uid('bu'), status: `round${round}`, permissions: ['read("any")'] });
                const ev = await c.next((e) => e.type === 'event' && e.data.payload.$id === id, 5000, `the event of round ${round}`);
                assert.equal(ev.data.payload.status, `round${round}`);
                assert.equal(ev.data.payload.$updatedAt, up.$updatedAt);
                m = await metrics();
                assert.equal(m.get('presenced_gateway_bus_subscribed'), 1, 'on the bus with a client');
                assert.equal(m.get('presenced_gateway_bus_joins_total'), round);
                c.close();
                await c.closed;
                // 5 s after the last client, the gateway leaves the bus
                await R.until(async () => (await metrics()).get('presenced_gateway_bus_subscribed') === 0, 15000, 'the gateway leaving the bus');
            }
        } finally {
            g.stop();
        }
    });
});

describe('idle timeout', () => {
    it('a connection that sends nothing is closed after the idle timeout; one that pings stays', { timeout: 30000 }, async () => {
        const g = await extraGateway(8, { PRESENCED_WS_IDLE_TIMEOUT: '2' });
        try {
            const idle = await R.rawConnect(C(), { port: g.port });
            const busy = await R.rawConnect(C(), { port: g.port });
            await R.rawSubscribe(idle, [{ subscriptionId: 'i', channels: ['presences'] }]);
            const timer = setInterval(() => busy.send({ type: 'ping' }), 500);
            const t0 = Date.now();
            const cl = await idle.closed;
            clearInterval(timer);
            assert.deepEqual(cl, { code: 1000, reason: 'Idle timeout' });
            assert.ok(Date.now() - t0 >= 1000, 'not before the timeout');
            assert.ok(!busy.closeInfo, 'the pinging connection is still open');
            assert.equal((await busy.request({ type: 'ping' })).type, 'pong');
            busy.close();
        } finally {
            g.stop();
        }
    });
});

describe('scale', () => {
    it('10,000 idle subscribed connections on one gateway all receive an event', { timeout: 300000 }, async (t) => {
        const g = await extraGateway(9, { PRESENCED_WS_IDLE_TIMEOUT: '600' });
        const { port, child } = g;
        const clients = [];
        try {
            const N = 10000;
            const url = R.rtUrl(C(), { port });
            let events = 0;
            const openOne = (i) => new Promise((resolve, reject) => {
                const ws = new R.WS(url, { localAddress: `127.0.0.${2 + (i % 8)}` });
                let subscribed = false;
                ws.on('message', (d) => {
                    const s = d.toString();
                    if (!subscribed && s.startsWith('{"type":"connected"')) {
                        ws.send('{"type":"subscribe","data":[{"subscriptionId":"bulk","channels":["presences"]}]}');
                    } else if (!subscribed && s.startsWith('{"type":"response"')) {
                        subscribed = true;
                        resolve(ws);
                    } else if (s.startsWith('{"type":"event"') && s.includes('"subscriptions":["bulk"]')) {
                        events++;
                    }
                });
                ws.on('error', reject);
            });
            // warm up the allocator, then measure the cost of N more connections
            for (let i = 0; i < 100; i++) clients.push(await openOne(i));
            await sleep(500);
            const rss0 = rssKb(child.pid);
            const t0 = Date.now();
            for (let i = 100; i < N; i += 500) {
                const batch = [];
                for (let k = i; k < Math.min(N, i + 500); k++) batch.push(openOne(k));
                clients.push(...(await Promise.all(batch)));
            }
            await sleep(1000);
            const rss1 = rssKb(child.pid);
            const per = ((rss1 - rss0) * 1024) / (N - 100);
            const asan = isAsan(child.pid);
            t.diagnostic(`${N} connections subscribed in ${Date.now() - t0} ms; gateway RSS ${rss0} -> ${rss1} kB: ${per.toFixed(0)} bytes per idle subscribed connection${asan ? ' (ASan build: inflated)' : ''}`);
            if (!asan) assert.ok(per <= 8192, `${per.toFixed(0)} bytes per connection (target 8 KB)`);

            const id = uid('fan');
            const t1 = Date.now();
            await keyPresences().upsert({ presenceId: id, userId: uid('k'), status: 'to everyone', permissions: ['read("any")'] });
            await R.until(() => events >= N, 60000, `the event on all ${N} connections (have ${events})`);
            t.diagnostic(`one event reached ${N} connections in ${Date.now() - t1} ms`);
            assert.equal(events, N);
        } finally {
            for (const ws of clients) { try { ws.terminate(); } catch {} }
            g.stop();
        }
    });
});
