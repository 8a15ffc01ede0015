'use strict';
// Realtime limits, each with its documented answer (README "Realtime", gw_realtime.c): the
// message rate (error 1013, message dropped, connection kept), held presences (one record per
// user), 1,000 presence channels per connection in all, 100 queries per subscription, and a
// project's limits.connections (error 1013 at open, then close).
const test = require('node:test');
const assert = require('node:assert/strict');
const { useCluster, startCluster } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const R = require('./lib/rtclient');

// one gateway: a connection and /metrics then reach the same process
const holder = useCluster(test, { label: 'rtlimits', gateways: 1 });
const C = () => holder.cluster;
const errorsOf = (c, code) => c.msgs.filter((m) => m.type === 'error' && m.data.code === code);

test('message rate: a burst over 100 messages gets error 1013 per message dropped; the connection stays', async () => {
    const c = await R.rawConnect(C());
    for (let i = 0; i < 160; i++) c.send({ type: 'ping' });
    await R.until(() => c.msgs.filter((m) => m.type === 'pong' || m.type === 'error').length >= 160, 10000, '160 answers');
    const pongs = c.msgs.filter((m) => m.type === 'pong').length;
    const limited = errorsOf(c, 1013);
    assert.ok(pongs >= 100 && pongs < 120, `${pongs} pongs: the burst is 100 (plus what refills meanwhile)`);
    assert.equal(pongs + limited.length, 160);
    assert.equal(limited[0].data.message, 'Too many messages.');
    assert.equal(c.closeInfo, undefined, 'the connection was closed');
    c.close();
});

test('held presences: one record per user, so a connection never holds more than one per signed-in user', async () => {
    // A connection may hold at most 16 presences (RT_MAX_HOLDS, a defensive bound), but
    // Appwrite's model gives a user one record per project and a connection one user at a time:
    // a second presenceId from the same user lands on the user's one record, which stays held.
    const u = 'lim-holder';
    const c = await R.rawConnect(C(), { jwt: mintJwt(C().jwtSecret, { userId: u }) });
    const perm = ['read("any")', `write("user:${u}")`];
    const first = await c.request({ type: 'presence', data: { status: 'here', presenceId: 'held-a', permissions: perm } });
    assert.equal(first.type, 'response', JSON.stringify(first));
    for (let i = 0; i < 20; i++) {
        const r = await c.request({ type: 'presence', data: { status: `s${i}`, presenceId: `held-${i}`, permissions: perm } });
        assert.equal(r.type, 'response', JSON.stringify(r));
        assert.equal(r.data.presence.$id, 'held-a', 'a second record for the same user');
        assert.equal(r.data.presence.status, `s${i}`);
    }
    const m = await C().waitMetrics((x) => x.sum('presenced_realtime_held_presences') >= 1, 2000);
    assert.equal(m.sum('presenced_realtime_held_presences'), 1, 'the connection holds one presence');
    c.close();
});

test('held presences: a connection that came to hold 16 records is refused a 17th with error 1003; it stays open', async () => {
    // One record per user, so a connection reaches 16 holds only when its user's record is
    // deleted (here by an API key) and it sets a new one, 16 times over.
    const u = 'lim-holder16';
    const c = await R.rawConnect(C(), { jwt: mintJwt(C().jwtSecret, { userId: u }) });
    const del = (id) => fetch(`${C().endpoint}/presences/${id}`, {
        method: 'DELETE', headers: { 'X-Appwrite-Project': C().project, 'X-Appwrite-Key': C().apiKey },
    });
    for (let i = 0; i < 16; i++) {
        const r = await c.request({ type: 'presence', data: { status: 'here', presenceId: `cap-${i}` } });
        assert.equal(r.type, 'response', JSON.stringify(r));
        assert.equal(r.data.presence.$id, `cap-${i}`);
        assert.equal((await del(`cap-${i}`)).status, 204);
    }
    const over = await c.request({ type: 'presence', data: { status: 'here', presenceId: 'cap-16' } });
    assert.equal(over.type, 'error', JSON.stringify(over));
    assert.equal(over.data.code, 1003);
    assert.equal(over.data.message, 'Too many presences: one connection may hold at most 16.');
    const get = await fetch(`${C().endpoint}/presences/cap-16`, { headers: { 'X-Appwrite-Project': C().project, 'X-Appwrite-Key': C().apiKey } });
    assert.equal(get.status, 404, 'the refused presence was written');
    const pong = await c.request({ type: 'ping' });
    assert.equal(pong.type, 'pong');
    assert.equal(c.closeInfo, undefined, 'the connection was closed');
    c.close();
});

test('1,000 presence channels per connection in all; one more is refused with error 1003', async () => {
    const c = await R.rawConnect(C());
    const rows = Array.from({ length: 10 }, (_, s) => ({
        subscriptionId: `s${s}`, channels: Array.from({ length: 100 }, (_, i) => `presences.c${s}-${i}`), queries: [],
    }));
    const ok = await c.request({ type: 'subscribe', data: rows });
    assert.equal(ok.type, 'response', JSON.stringify(ok).slice(0, 300));
    const over = await c.request({ type: 'subscribe', data: [{ subscriptionId: 'one-more', channels: ['presences.extra'], queries: [] }] });
    assert.equal(over.type, 'error');
    assert.equal(over.data.code, 1003);
    assert.match(over.data.message, /^Too many channels: a connection may subscribe to at most 1000 presence channels in all \(this message would make 1001\)\.$/);
    c.close();
});

test('100 queries per subscription; 101 are refused with error 1003', async () => {
    const c = await R.rawConnect(C());
    const q = (i) => JSON.stringify({ method: 'notEqual', attribute: 'status', values: [`s${i}`] });
    const ok = await c.request({ type: 'subscribe', data: [{ subscriptionId: 'q100', channels: ['presences'], queries: Array.from({ length: 100 }, (_, i) => q(i)) }] });
    assert.equal(ok.type, 'response', JSON.stringify(ok).slice(0, 300));
    const over = await c.request({ type: 'subscribe', data: [{ subscriptionId: 'q101', channels: ['presences'], queries: Array.from({ length: 101 }, (_, i) => q(i)) }] });
    assert.equal(over.type, 'error');
    assert.equal(over.data.code, 1003);
    assert.match(over.data.message, /100/);
    c.close();
});

test("a project's limits.connections: the connection over it gets error 1013, then close", async (t) => {
    const c = await startCluster({
        label: 'rtlimits-conns', gateways: 1,
        config: { projects: [{ id: 'capped', keys: [], jwt: [], limits: { connections: 2 } }] },
    });
    t.after(() => c.stop());
    const a = await R.rawConnect(c, { project: 'capped' });
    const b = await R.rawConnect(c, { project: 'capped' });
    assert.equal(a.hello.type, 'connected');
    assert.equal(b.hello.type, 'connected');
    const third = await R.rawConnect(c, { project: 'capped' });
    assert.equal(third.hello.type, 'error');
    assert.equal(third.hello.data.code, 1013);
    assert.equal(third.hello.data.message, 'Too many connections: this project allows 2 per gateway.');
    const closed = await third.closed;
    assert.equal(closed.code, 1013);
    // a slot frees when one leaves
    a.close();
    await a.closed;
    await R.until(async () => {
        const d = await R.rawConnect(c, { project: 'capped' });
        d.close();
        return d.hello.type === 'connected';
    }, 5000, 'a connection once a slot freed');
    b.close();
});
