'use strict';
// Rooms' joins and leaves lost on the bus (issue 13): they share their store node's event
// sequence and outbox with records' events (st_rooms.h, store.c s_room_event), so a gateway
// that missed some asks the node for them (gw_realtime.c, "resync") and its Supabase clients
// end with the room's true state, on the same socket. A gateway process is stopped (SIGSTOP)
// past the internal links' 3 s heartbeat timeout, so the broker drops its bus connection and
// ZeroMQ's PUB drops what is published meanwhile; members join, update, untrack and close
// through the other gateway. The observer (realtime-js, unmodified) on the stopped gateway must
// then hold exactly the members the store node holds (GET /v1/rooms/{channel}), phx_ref for
// phx_ref (realtime-js calls it presence_ref). When the outbox no longer holds what was missed, the rooms are read again (a
// snapshot, then a fresh presence_state): still the true state, still the same socket.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const { useCluster, sleep, parseMetrics } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const R = require('./lib/rtclient');
const { sbClient, sbWatch, sbSubscribe } = require('./lib/sbclient');

// The broker drops a silent peer's link within 4 s (pd_keys.c: a PING a second, 3 s without an
// answer): what is published after that is lost to the stopped gateway.
const DROPPED_MS = 4500;
const clients = [];
test.afterEach(() => { for (const rc of clients.splice(0)) try { rc.disconnect(); } catch {} });

async function metricsOf(C, gw) {
    const r = await R.restVia(C(), gw, 'GET', '/metrics');
    assert.equal(r.status, 200);
    const m = parseMetrics(r.text);
    return (name, labels = {}) => m.find(name, labels).reduce((a, s) => a + s.value, 0);
}

// The room as its store node holds it: key -> sorted phx_refs.
async function serverRoom(C, room) {
    const r = await fetch(`${C().url}/v1/rooms/${room}`, { headers: { 'X-Appwrite-Project': C().project, 'X-Appwrite-Key': C().apiKey } });
    if (r.status === 503) return undefined; // a gateway just back on the bus: not serving yet
    assert.equal(r.status, 200);
    const out = {};
    for (const m of (await r.json()).members) (out[m.key] ||= []).push(m.phx_ref);
    for (const k of Object.keys(out)) out[k].sort();
    return out;
}

// A channel's presenceState in the same shape.
function clientRoom(ch) {
    const out = {};
    for (const [k, metas] of Object.entries(ch.presenceState())) out[k] = metas.map((m) => m.presence_ref).sort();
    return out;
}

const same = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

// An observer with presence in `room` on one gateway (heartbeats every 30 s: the stop must not
// make realtime-js reconnect), the other gateway's pid, and an anon key.
async function setup(C, room) {
    const anon = mintJwt(C().jwtSecret, { role: 'anon', ref: C().project });
    const [b, a] = C().pids('gateway');
    const obs = await sbClient(C(), anon, b, { heartbeatIntervalMs: 30000, into: clients });
    const ch = obs.channel(room, { config: { presence: { key: 'observer' } } });
    const ev = sbWatch(ch);
    await sbSubscribe(ch);
    await R.until(() => ev.some((e) => e.t === 'sync'), 10000, 'the observer\'s first sync');
    const socket = obs.socketAdapter.socket.conn;
    return { anon, a, b, obs, ch, ev, socket };
}

// A member of `room` through gateway a: joined, and tracked when meta is given (a connection
// made while the other gateway is stopped could land on it: members are connected before).
async function member(C, s, room, key, meta) {
    const rc = await sbClient(C(), s.anon, s.a, { into: clients });
    const ch = rc.channel(room, { config: { presence: { key } } });
    await sbSubscribe(ch);
    if (meta) assert.equal(await ch.track(meta), 'ok');
    return { rc, ch };
}

async function converged(t, C, s, room, what) {
    let want;
    await R.until(async () => { want = await serverRoom(C, room); return want && same(clientRoom(s.ch), want); }, 20000, what).catch((e) => {
        t.diagnostic(`server ${JSON.stringify(want)}\nclient ${JSON.stringify(clientRoom(s.ch))}`);
        throw e;
    });
    return want;
}

describe('rooms: joins and leaves resent from the outbox', () => {
    const H = useCluster(test, { label: 'roomreplay', stores: 2, gateways: 2 });
    const C = () => H.cluster;

    it('a gateway cut off the bus for 5 s: its realtime-js observer ends with the room\'s members, phx_ref for phx_ref, on the same socket', { timeout: 120000 }, async (t) => {
        const room = 'replay_room';
        const s = await setup(C, room);
        const early = [];
        for (let i = 0; i < 4; i++) early.push(await member(C, s, room, `early${i}`, { i }));
        await converged(t, C, s, room, 'the early members at the observer');
        const late = [];
        for (let i = 0; i < 6; i++) late.push(await member(C, s, room, `late${i}`));
        const before = await metricsOf(C, s.b);
        process.kill(s.b, 'SIGSTOP');
        try {
            const t0 = Date.now();
            await sleep(DROPPED_MS); // past the heartbeat timeout: what is published now is lost to it
            for (let i = 0; i < 6; i++) assert.equal(await late[i].ch.track({ i }), 'ok');
            assert.equal(await early[0].ch.untrack(), 'ok');
            assert.equal(await early[1].ch.track({ i: 1, moved: true }), 'ok'); // a new meta: leave + join
            early[2].rc.disconnect();
            assert.equal(await late[0].ch.untrack(), 'ok');
            while (Date.now() - t0 < DROPPED_MS + 1500) await sleep(100);
        } finally {
            process.kill(s.b, 'SIGCONT');
        }
        const want = await converged(t, C, s, room, 'the observer holds the store node\'s members');
        assert.deepEqual(Object.keys(want).sort(), ['early1', 'early3', 'late1', 'late2', 'late3', 'late4', 'late5']);
        await sleep(1000); // a late or repeated diff would land in this window
        assert.ok(same(clientRoom(s.ch), await serverRoom(C, room)), 'still the same after a second');
        assert.equal(s.obs.socketAdapter.socket.conn, s.socket, 'realtime-js did not reconnect');
        const m = await metricsOf(C, s.b);
        const d = (name, labels) => m(name, labels) - before(name, labels);
        t.diagnostic(`gaps ${d('presenced_bus_gaps_total')}, events resent ${d('presenced_bus_resync_events_total')}, rooms read again ${d('presenced_supabase_room_resyncs_total')}`);
        assert.ok(d('presenced_bus_gaps_total') >= 1, 'the stop made a gap (else this test shows nothing)');
        assert.ok(d('presenced_bus_resync_events_total') >= 1, 'the missing joins and leaves came from the store node');
        assert.equal(d('presenced_supabase_room_resyncs_total'), 0, 'resent, not read again');
        assert.equal(d('presenced_bus_resync_total', { result: 'fallback' }), 0);
    });
});

describe('rooms: the missed range is gone from the outbox', () => {
    // an outbox of 1 MiB, while the stop misses megabytes of 1.9 KB metas
    const H = useCluster(test, { label: 'roomreplaygone', stores: 1, gateways: 2, env: { PRESENCED_STORE_OUTBOX: String(1 << 20) } });
    const C = () => H.cluster;

    it('the room is read again: the observer gets a fresh state, the true one, on the same socket', { timeout: 120000 }, async (t) => {
        const room = 'gone_room';
        const s = await setup(C, room);
        const ms = [];
        for (let i = 0; i < 5; i++) ms.push(await member(C, s, room, `m${i}`, { n: 0 }));
        await converged(t, C, s, room, 'the members at the observer');
        const before = await metricsOf(C, s.b);
        const pad = 'x'.repeat(1900);
        let tracks = 0;
        process.kill(s.b, 'SIGSTOP');
        try {
            const t0 = Date.now();
            await sleep(DROPPED_MS); // the link is dropped first: every track after it is lost to it
            await Promise.all(ms.map(async (m) => {
                for (let n = 1; Date.now() - t0 < DROPPED_MS + 3500; n++) {
                    assert.equal(await m.ch.track({ n, pad }), 'ok');
                    tracks++;
                    await sleep(12); // under the 100 messages per second per connection
                }
            }));
        } finally {
            process.kill(s.b, 'SIGCONT');
        }
        t.diagnostic(`${tracks} tracks (a leave and a join each) while gateway ${s.b} was stopped`);
        assert.ok(tracks * 1900 > 3 << 19, 'more than the outbox holds was missed (else this test shows nothing)');
        await converged(t, C, s, room, 'the observer holds the store node\'s members');
        const last = s.ch.presenceState().m0[0];
        assert.equal(last.pad, pad);
        assert.equal(s.obs.socketAdapter.socket.conn, s.socket, 'realtime-js did not reconnect');
        const m = await metricsOf(C, s.b);
        const d = (name, labels) => m(name, labels) - before(name, labels);
        t.diagnostic(`gaps ${d('presenced_bus_gaps_total')}, fallbacks ${d('presenced_bus_resync_total', { result: 'fallback' })}, rooms read again ${d('presenced_supabase_room_resyncs_total')}`);
        assert.ok(d('presenced_bus_resync_total', { result: 'fallback' }) >= 1, 'the range was gone');
        assert.ok(d('presenced_supabase_room_resyncs_total') >= 1, 'the room was read again');
    });
});
