'use strict';
// Supabase Realtime (issue 13): @supabase/realtime-js and @supabase/supabase-js, unmodified, on
// /realtime/v1/websocket of a cluster with two gateways. Clients are placed on a chosen gateway
// (by the kernel's SO_REUSEPORT: a client is reconnected until it lands there), so "across
// gateways" is what is tested, not what happened. Presence: track, update, untrack, disconnect,
// a key from two connections, a late joiner's presence_state, a gateway SIGKILLed (its members
// leave within the 30 s lease); broadcast: self false/true, ack, binary; refusals: a private
// channel for anon, an expired token, postgres_changes; vsn 1.0.0 and 2.0.0 both.
const test = require('node:test');
const assert = require('node:assert/strict');
const WS = require('ws');
const { createClient } = require('@supabase/supabase-js');
const { startCluster, sleep } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const R = require('./lib/rtclient');
const { sbClient, sbWatch, sbSubscribe } = require('./lib/sbclient');

let c, anon, gws;
const clients = [];

test.before(async () => {
    c = await startCluster({ gateways: 2, label: 'supabase', args: ['--ws-stall-timeout', '3'] });
    anon = mintJwt(c.jwtSecret, { role: 'anon', ref: c.project, iss: 'supabase' });
    gws = c.pids('gateway');
    assert.equal(gws.length, 2);
});
test.after(async () => {
    for (const rc of clients) try { rc.disconnect(); } catch {}
    await c.stop();
});

const client = (pid, opts = {}) => sbClient(c, opts.apikey ?? anon, pid, { ...opts, into: clients });
const watch = sbWatch;
const subscribe = sbSubscribe;

// The status and error a refused join ends with.
function subscribeRefused(ch) {
    return new Promise((resolve) => {
        ch.subscribe((status, err) => { if (status !== 'SUBSCRIBED') resolve({ status, message: err && err.message }); });
    });
}

const keys = (ch) => Object.keys(ch.presenceState()).sort();
const metasOf = (ch, key) => ch.presenceState()[key] || [];

for (const vsn of ['1.0.0', '2.0.0']) {
    test(`two clients on two gateways see each other's track, update, untrack and disconnect (vsn ${vsn})`, async () => {
        const room = `room_01_${vsn}`;
        const a = await client(gws[0], { vsn }), b = await client(gws[1], { vsn });
        const ca = a.channel(room, { config: { presence: { key: 'alice' } } });
        const cb = b.channel(room, { config: { presence: { key: 'bob' } } });
        const ea = watch(ca), eb = watch(cb);
        await subscribe(ca);
        await subscribe(cb);
        assert.equal(await ca.track({ name: 'Alice', typing: false }), 'ok');
        await R.until(() => metasOf(cb, 'alice').length === 1, 5000, 'bob sees alice');
        assert.equal(metasOf(cb, 'alice')[0].name, 'Alice');
        assert.ok(metasOf(cb, 'alice')[0].presence_ref, 'a meta carries its presence_ref');
        assert.ok(eb.some((e) => e.t === 'join' && e.key === 'alice'), 'bob got a join');
        assert.ok(eb.some((e) => e.t === 'sync'), 'bob got a sync');
        // (each gateway sends its own diff: alice's may come a moment after bob's)
        await R.until(() => ea.some((e) => e.t === 'join' && e.key === 'alice'), 5000, 'alice sees her own join');
        assert.equal(await cb.track({ name: 'Bob' }), 'ok');
        await R.until(() => keys(ca).join() === 'alice,bob', 5000, 'alice sees bob');

        // an update: the same key, one meta, the new payload
        const oldRef = metasOf(cb, 'alice')[0].presence_ref;
        assert.equal(await ca.track({ name: 'Alice', typing: true }), 'ok');
        await R.until(() => metasOf(cb, 'alice').length === 1 && metasOf(cb, 'alice')[0].typing === true, 5000, 'the update');
        assert.notEqual(metasOf(cb, 'alice')[0].presence_ref, oldRef);

        // untrack: a leave
        assert.equal(await ca.untrack(), 'ok');
        await R.until(() => keys(cb).join() === 'bob', 5000, 'the untrack');
        assert.ok(eb.some((e) => e.t === 'leave' && e.key === 'alice'));

        // a disconnect: a leave
        assert.equal(await ca.track({ name: 'Alice' }), 'ok');
        await R.until(() => keys(cb).join() === 'alice,bob', 5000, 'alice again');
        const leaves = eb.filter((e) => e.t === 'leave').length;
        a.disconnect();
        await R.until(() => keys(cb).join() === 'bob', 5000, 'the disconnect');
        assert.equal(eb.filter((e) => e.t === 'leave').length, leaves + 1);
        b.disconnect();
    });
}

test('a key tracked from two connections is one key with two metas; closing one leaves one', async () => {
    const room = 'shared_key';
    const w = await client(gws[0]);
    const cw = w.channel(room);
    watch(cw);
    await subscribe(cw);
    const c1 = await client(gws[0]), c2 = await client(gws[1]);
    const ch1 = c1.channel(room, { config: { presence: { key: 'user-123' } } });
    const ch2 = c2.channel(room, { config: { presence: { key: 'user-123' } } });
    await subscribe(ch1);
    await subscribe(ch2);
    assert.equal(await ch1.track({ device: 'laptop' }), 'ok');
    assert.equal(await ch2.track({ device: 'phone' }), 'ok');
    await R.until(() => metasOf(cw, 'user-123').length === 2, 5000, 'two metas');
    assert.deepEqual(keys(cw), ['user-123']);
    c1.disconnect();
    await R.until(() => metasOf(cw, 'user-123').length === 1, 5000, 'one meta left');
    assert.equal(metasOf(cw, 'user-123')[0].device, 'phone');
    c2.disconnect();
    await R.until(() => keys(cw).length === 0, 5000, 'the key gone');
    w.disconnect();
});

test('a late joiner gets the whole room in presence_state', async () => {
    const room = 'late';
    const members = [];
    for (let i = 0; i < 6; i++) {
        const m = await client(gws[i % 2]);
        const ch = m.channel(room, { config: { presence: { key: `m${i}` } } });
        await subscribe(ch);
        assert.equal(await ch.track({ i }), 'ok');
        members.push(m);
    }
    // operators: the room's members and count, with an API key
    const show = await fetch(`${c.url}/v1/rooms/late`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } });
    assert.equal(show.status, 200);
    const body = await show.json();
    assert.equal(body.channel, 'late');
    assert.equal(body.count, 6);
    assert.deepEqual(body.members.map((m) => m.key).sort(), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
    assert.equal(body.members.find((m) => m.key === 'm2').meta.i, 2);
    const guest = await fetch(`${c.url}/v1/rooms/late`, { headers: { 'X-Appwrite-Project': c.project } });
    assert.equal(guest.status, 401);
    // the count alone, O(1) at the room's node, in the counts extension's shape
    const count = await fetch(`${c.url}/v1/rooms/late/count`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } });
    assert.equal(count.status, 200);
    assert.deepEqual(await count.json(), { total: 6 });
    const none = await fetch(`${c.url}/v1/rooms/${encodeURIComponent('no/count')}/count`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } });
    assert.deepEqual(await none.json(), { total: 0 }, 'an empty room (its name has a slash)');
    assert.equal((await fetch(`${c.url}/v1/rooms/late/count`, { headers: { 'X-Appwrite-Project': c.project } })).status, 401);
    for (const pid of gws) {
        const late = await client(pid);
        const ch = late.channel(room);
        const ev = watch(ch);
        await subscribe(ch);
        await R.until(() => ev.some((e) => e.t === 'sync'), 5000, 'the first sync');
        const first = ev.find((e) => e.t === 'sync');
        assert.deepEqual(Object.keys(first.state).sort(), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'], `on gateway ${pid}`);
        assert.equal(first.state.m3[0].i, 3);
        // the gateway's count of the room, in /metrics
        const text = (await R.restVia(c, pid, 'GET', '/metrics')).text;
        assert.match(text, new RegExp(`presenced_supabase_room_members\\{project="${c.project}",channel="late"\\} 6\\n`));
        late.disconnect();
    }
    for (const m of members) m.disconnect();
});

test('a storm of tracks reaches a member as a handful of batched diffs, not one per join', async () => {
    const room = 'batch';
    const w = await client(gws[0]);
    const cw = w.channel(room);
    const ev = watch(cw);
    await subscribe(cw);
    const members = [];
    for (let i = 0; i < 30; i++) {
        const m = await client(gws[i % 2]);
        const ch = m.channel(room, { config: { presence: { key: `k${i}` } } });
        await subscribe(ch);
        members.push({ m, ch });
    }
    const before = ev.filter((e) => e.t === 'sync').length;
    const replies = await Promise.all(members.map(({ ch }, i) => ch.track({ i })));
    assert.ok(replies.every((r) => r === 'ok'));
    await R.until(() => keys(cw).length === 30, 5000, 'all 30 in the room');
    await sleep(200);
    const diffs = ev.filter((e) => e.t === 'sync').length - before; // one sync per presence_diff
    assert.equal(ev.filter((e) => e.t === 'join').length, 30, 'a join callback per key');
    assert.ok(diffs < 15, `${diffs} presence_diff messages for 30 joins`);
    for (const { m } of members) m.disconnect();
    await R.until(() => keys(cw).length === 0, 5000, 'all left');
    w.disconnect();
});

test('broadcast across gateways: self false and true, ack, binary payloads', async () => {
    const a = await client(gws[0]), b = await client(gws[1]);
    const got = { a: [], b: [], aSelf: [] };
    const ca = a.channel('bc', { config: { broadcast: { self: false, ack: true } } });
    const cb = b.channel('bc', { config: { broadcast: { self: false } } });
    ca.on('broadcast', { event: 'cursor' }, (m) => got.a.push(m.payload));
    cb.on('broadcast', { event: 'cursor' }, (m) => got.b.push(m.payload));
    cb.on('broadcast', { event: 'bin' }, (m) => got.b.push(m.payload));
    await subscribe(ca);
    await subscribe(cb);
    assert.equal(await ca.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, y: 2 } }), 'ok');
    await R.until(() => got.b.length === 1, 5000, 'b gets the broadcast');
    assert.deepEqual(got.b[0], { x: 1, y: 2 });
    assert.equal(await cb.send({ type: 'broadcast', event: 'cursor', payload: { x: 3 } }), 'ok');
    await R.until(() => got.a.length === 1, 5000, 'a gets b\'s');
    await sleep(300);
    assert.equal(got.a.length, 1, 'self: false: a does not get its own');
    assert.equal(got.b.length, 1, 'self: false: b does not get its own');

    // binary payload (vsn 2.0.0's binary frames both ways)
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    await ca.send({ type: 'broadcast', event: 'bin', payload: bytes.buffer });
    await R.until(() => got.b.length === 2, 5000, 'b gets the binary broadcast');
    assert.deepEqual([...new Uint8Array(got.b[1])], [...bytes]);

    // self: true
    const s = await client(gws[1]);
    const cs = s.channel('bc', { config: { broadcast: { self: true } } });
    cs.on('broadcast', { event: 'cursor' }, (m) => got.aSelf.push(m.payload));
    await subscribe(cs);
    await cs.send({ type: 'broadcast', event: 'cursor', payload: { me: true } });
    await R.until(() => got.aSelf.length === 1 && got.a.length === 2 && got.b.length === 3, 5000, 'self: true');
    a.disconnect(); b.disconnect(); s.disconnect();
});

test('refusals: a private channel for anon, an expired token, postgres_changes', async () => {
    const a = await client(undefined);
    const r1 = await subscribeRefused(a.channel('secret', { config: { private: true } }));
    assert.equal(r1.status, 'CHANNEL_ERROR');
    assert.match(r1.message, /Unauthorized: You do not have permissions to read from this Channel topic: secret/);

    const pg = a.channel('db').on('postgres_changes', { event: '*', schema: 'public', table: 't' }, () => {});
    const r2 = await subscribeRefused(pg);
    assert.equal(r2.status, 'CHANNEL_ERROR');
    assert.match(r2.message, /postgres_changes are not supported/);

    // a user's token opens the private channel
    const user = await client(undefined);
    await user.setAuth(mintJwt(c.jwtSecret, { sub: 'u-1', role: 'authenticated' }));
    await subscribe(user.channel('secret', { config: { private: true } }));

    // an expired token is refused with Supabase's reason
    const old = await client(undefined);
    await old.setAuth(mintJwt(c.jwtSecret, { sub: 'u-2', role: 'authenticated', exp: Math.floor(Date.now() / 1000) - 10 }));
    const r3 = await subscribeRefused(old.channel('open'));
    assert.equal(r3.status, 'CHANNEL_ERROR');
    assert.match(r3.message, /InvalidJWTToken: Token has expired/);
    a.disconnect(); user.disconnect(); old.disconnect();

    // the key itself: none, another project's, a bad signature: 401 before the upgrade
    for (const key of [null, mintJwt(c.jwtSecret, { role: 'anon', ref: 'other' }), mintJwt('wrong', { role: 'anon', ref: c.project })]) {
        const status = await new Promise((resolve) => {
            const ws = new WS(`ws://127.0.0.1:${c.port}/realtime/v1/websocket?vsn=2.0.0${key ? '&apikey=' + key : ''}`);
            ws.on('unexpected-response', (req, res) => { resolve(res.statusCode); ws.terminate(); });
            ws.on('open', () => { resolve(101); ws.close(); });
            ws.on('error', () => {});
        });
        assert.equal(status, 401);
    }
});

test('access_token: a refresh with a bad token, and a token that expires while joined, end the channel', async () => {
    const statuses = (ch) => { const st = []; ch.subscribe((s) => st.push(s)); return st; };
    const a = await client(undefined);
    await a.setAuth(mintJwt(c.jwtSecret, { sub: 'u-5', role: 'authenticated' }));
    const ca = a.channel('refresh');
    const sa = statuses(ca);
    await R.until(() => sa.includes('SUBSCRIBED'), 5000, 'joined');
    // a refresh with an expired token: the channel gets a system message and phx_close
    const sys = [];
    ca.on('system', {}, (m) => sys.push(m));
    await a.setAuth(mintJwt(c.jwtSecret, { sub: 'u-5', role: 'authenticated', exp: Math.floor(Date.now() / 1000) - 5 }));
    await R.until(() => sa.includes('CLOSED'), 5000, 'closed after the bad refresh');
    assert.ok(sys.some((m) => /InvalidJWTToken: Token has expired/.test(m.message)), JSON.stringify(sys));

    // a token that runs out while joined
    const b = await client(undefined);
    await b.setAuth(mintJwt(c.jwtSecret, { sub: 'u-6', role: 'authenticated', exp: Math.floor(Date.now() / 1000) + 2 }));
    const cb = b.channel('refresh');
    const sb = statuses(cb);
    await R.until(() => sb.includes('SUBSCRIBED'), 5000, 'joined');
    await R.until(() => sb.includes('CLOSED'), 6000, 'closed when the token expired');
    a.disconnect(); b.disconnect();
});

test('supabase-js createClient(url, anonKey) works as the quick start says', async () => {
    const mk = () => createClient(c.url, anon, { realtime: { transport: WS }, auth: { persistSession: false, autoRefreshToken: false } });
    const s1 = mk(), s2 = mk();
    const r1 = s1.channel('room_01'), r2 = s2.channel('room_01');
    watch(r2);
    await subscribe(r1);
    await subscribe(r2);
    assert.equal(await r1.track({ user: 'user-1', online_at: new Date().toISOString() }), 'ok');
    await R.until(() => Object.values(r2.presenceState()).some((m) => m[0].user === 'user-1'), 5000, 'supabase-js presence');
    await s1.removeAllChannels();
    await R.until(() => Object.keys(r2.presenceState()).length === 0, 5000, 'removeAllChannels leaves');
    await s2.removeAllChannels();
});

test('a room survives a crash of its store node (shared memory): members, count, late joiners', async () => {
    const { shardOwner } = require('./lib/shard');
    const room = 'survivor';
    const node = shardOwner(c.project, room, 2);
    const m = await client(gws[0]);
    const ch = m.channel(room, { config: { presence: { key: 'stayer' } } });
    await subscribe(ch);
    assert.equal(await ch.track({ n: 1 }), 'ok');
    const show = async () => (await fetch(`${c.url}/v1/rooms/${room}`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } })).json();
    await R.until(async () => (await show()).count === 1, 5000, 'the member at its node');
    const old = c.kill('store', node, 'SIGKILL');
    await c.waitRestarted('store', node, old);
    await R.until(async () => { try { return (await show()).count === 1; } catch { return false; } }, 10000, 'the member after the restart');
    const body = await show();
    assert.equal(body.members[0].key, 'stayer');
    assert.equal(body.members[0].meta.n, 1);
    // the member's gateway saw the node's new generation and read the room again
    await R.until(async () => {
        const v = /presenced_supabase_room_resyncs_total (\d+)/.exec((await R.restVia(c, gws[0], 'GET', '/metrics')).text);
        return v && Number(v[1]) >= 1;
    }, 5000, 'the room read again after the restart');
    // a late joiner on the other gateway still sees it
    const late = await client(gws[1]);
    const cl = late.channel(room);
    const ev = watch(cl);
    await subscribe(cl);
    await R.until(() => ev.some((e) => e.t === 'sync' && e.state.stayer), 5000, 'the late joiner sees the member');
    m.disconnect();
    await R.until(() => keys(cl).length === 0, 5000, 'and its leave');
    late.disconnect();
});

test('a gateway SIGKILLed: its members leave, with diffs, within the lease', async () => {
    const room = 'kill';
    const [g1] = c.pids('gateway', 1), [g2] = c.pids('gateway', 2);
    const w = await client(g2);
    const cw = w.channel(room);
    const ev = watch(cw);
    await subscribe(cw);
    const v = await client(g1);
    const cv = v.channel(room, { config: { presence: { key: 'victim' } } });
    await subscribe(cv);
    assert.equal(await cv.track({ on: 'gateway 1' }), 'ok');
    await R.until(() => keys(cw).includes('victim'), 5000, 'the victim is in');
    const t0 = Date.now();
    c.kill('gateway', 1, 'SIGKILL');
    v.disconnect(); // its client would reconnect elsewhere; what it held must go by the lease
    await R.until(() => !keys(cw).includes('victim'), 40000, 'the victim leaves');
    const took = Date.now() - t0;
    assert.ok(ev.some((e) => e.t === 'leave' && e.key === 'victim'), 'a leave (presence_diff)');
    assert.ok(took < 40000, `left after ${took} ms`);
    w.disconnect();
    await c.waitRestarted('gateway', 1, [g1]);
    gws = c.pids('gateway');
});
