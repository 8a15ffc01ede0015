'use strict';
// The grace period of connection-bound presences (README "Realtime"): a client whose connection
// drops and that reconnects and sends its presence again within the grace produces no delete
// and no second creation (no flap for the people watching); one that comes back after the grace
// produces exactly one delete. "Nothing arrived" is checked with a marker record written on the
// same store node as the presence after the grace has passed: the bus keeps a node's events in
// order, so a delete, had there been one, would have reached the watcher before the marker.
const test = require('node:test');
const assert = require('node:assert/strict');
const { useCluster, sleep } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const { api } = require('./lib/http');
const { shardOwner } = require('./lib/shard');
const R = require('./lib/rtclient');

const GRACE_MS = 5000;
const holder = useCluster(test, { label: 'grace' });
const C = () => holder.cluster;

let seq = 0;
const uid = (p) => `${p}${process.pid.toString(36)}${(seq++).toString(36)}${Math.random().toString(36).slice(2, 6)}`;

// An id that the same store node owns as `id` does.
function markerFor(id) {
    const node = shardOwner(C().project, id, 2);
    for (;;) {
        const m = uid('mark');
        if (shardOwner(C().project, m, 2) === node) return m;
    }
}

async function hold(u, id) {
    const c = await R.rawConnect(C(), { jwt: mintJwt(C().jwtSecret, { userId: u }) });
    const r = await c.request({ type: 'presence', data: { status: 'here', presenceId: id, permissions: ['read("any")', `write("user:${u}")`] } });
    assert.equal(r.type, 'response', JSON.stringify(r));
    return { c, presence: r.data.presence };
}

async function watch(id, marker) {
    const w = await R.rawConnect(C());
    await R.rawSubscribe(w, [{ subscriptionId: 'w', channels: [`presences.${id}`, `presences.${marker}`] }]);
    return w;
}
const kinds = (w, id) => w.events((m) => m.data.payload.$id === id).map((m) => m.data.events[0].split('.').pop());

test('a reconnect-and-resend within the grace: no delete, no second creation, the record stays', async () => {
    const u = uid('u'), id = uid('p'), marker = markerFor(id);
    const w = await watch(id, marker);
    const first = await hold(u, id);
    await w.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the creation');
    first.c.terminate(); // the connection drops (no close frame)
    await sleep(1000);
    const again = await hold(u, id); // the SDK's reconnect-and-resend
    assert.equal(again.presence.$createdAt, first.presence.$createdAt, 'the same record, not a new one');
    await sleep(GRACE_MS + 2000); // the first connection's grace is over: its gateway has let go
    const r = await api(C(), 'PUT', `/v1/presences/${marker}`, { key: true, body: { userId: marker, status: 'marker', permissions: ['read("any")'] } });
    assert.equal(r.status, 200, r.text);
    await w.next((m) => m.type === 'event' && m.data.payload.$id === marker, 5000, 'the marker');
    const seen = kinds(w, id);
    assert.ok(!seen.includes('delete'), `a delete flapped the presence: ${seen}`);
    assert.equal(seen.filter((k) => k === 'upsert').length <= 2 && seen[0] === 'upsert', true, `events: ${seen}`);
    const got = await api(C(), 'GET', `/v1/presences/${id}`, { key: true });
    assert.equal(got.status, 200, got.text);
    assert.equal(got.json.$createdAt, first.presence.$createdAt);
    again.c.close();
    await w.next((m) => m.type === 'event' && m.data.payload.$id === id && m.data.events[0].endsWith('.delete'), GRACE_MS + 10000, 'the delete once it is really gone');
    w.close();
});

test('back after the grace: exactly one delete, then a new record', async () => {
    const u = uid('u'), id = uid('p'), marker = markerFor(id);
    const w = await watch(id, marker);
    const first = await hold(u, id);
    await w.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the creation');
    first.c.terminate();
    await w.next((m) => m.type === 'event' && m.data.payload.$id === id && m.data.events[0].endsWith('.delete'), GRACE_MS + 10000, 'the delete after the grace');
    const again = await hold(u, id);
    assert.notEqual(again.presence.$createdAt, first.presence.$createdAt, 'a new record');
    const r = await api(C(), 'PUT', `/v1/presences/${marker}`, { key: true, body: { userId: marker, status: 'marker', permissions: ['read("any")'] } });
    assert.equal(r.status, 200, r.text);
    await w.next((m) => m.type === 'event' && m.data.payload.$id === marker, 5000, 'the marker');
    const seen = kinds(w, id);
    assert.deepEqual(seen, ['upsert', 'delete', 'upsert'], `events: ${seen}`);
    again.c.close();
    w.close();
});
