'use strict';
// Supabase Realtime, bad input as a new user would send it (issue 13): malformed frames in both
// serializers, unknown events and topics, oversize metas, a flood of track messages, a client
// that never reads. Each gets a clear error reply (Phoenix's shape: phx_reply with status error
// and a reason, or phx_error on topic phoenix for a frame with no topic to answer on) or a close;
// the connection keeps working where that makes sense, and other clients are unaffected.
const test = require('node:test');
const assert = require('node:assert/strict');
const WS = require('ws');
const { RealtimeClient } = require('@supabase/realtime-js');
const { startCluster, sleep } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const R = require('./lib/rtclient');

let c, anon;

test.before(async () => {
    c = await startCluster({ gateways: 2, label: 'supabasebad', args: ['--ws-stall-timeout', '3'] });
    anon = mintJwt(c.jwtSecret, { role: 'anon', ref: c.project });
});
test.after(() => c.stop());

// A raw WebSocket client of the Phoenix protocol: frames as sent, messages as received.
async function raw(vsn = '2.0.0') {
    const ws = new WS(`ws://127.0.0.1:${c.port}/realtime/v1/websocket?apikey=${anon}&vsn=${vsn}`);
    ws.msgs = [];
    ws.on('message', (d, binary) => ws.msgs.push(binary ? d : JSON.parse(d.toString())));
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    // as objects whatever the serializer
    ws.frames = () => ws.msgs.filter((m) => !Buffer.isBuffer(m)).map((m) => (Array.isArray(m)
        ? { join_ref: m[0], ref: m[1], topic: m[2], event: m[3], payload: m[4] } : m));
    ws.push = (join_ref, ref, topic, event, payload) => ws.send(JSON.stringify(vsn === '2.0.0'
        ? [join_ref, ref, topic, event, payload] : { join_ref, ref, topic, event, payload }));
    ws.reply = (ref, timeoutMs = 5000) => R.until(() => ws.frames().find((m) => m.event === 'phx_reply' && m.ref === ref), timeoutMs, `reply ${ref}`);
    return ws;
}

const join = (ws, topic, ref, key) => ws.push(ref, ref, topic, 'phx_join', {
    config: { presence: { key: key ?? '', enabled: true }, broadcast: { self: false, ack: true }, postgres_changes: [], private: false },
});

async function heartbeatOk(ws, ref) {
    ws.push(null, ref, 'phoenix', 'heartbeat', {});
    const r = await ws.reply(ref);
    assert.equal(r.payload.status, 'ok');
}

for (const vsn of ['1.0.0', '2.0.0']) {
    test(`malformed frames get phx_error with a reason; the connection keeps working (vsn ${vsn})`, async () => {
        const ws = await raw(vsn);
        const bad = ['not json', '', '[', '"a string"', '{"topic":1}', '[1,2,3]', 'null',
            vsn === '2.0.0' ? '{"topic":"t","event":"e","payload":{}}' : '["1","1","t","e",{}]',
            vsn === '2.0.0' ? '[null,null,"t","e",[]]' : '{"topic":"t","event":"e","payload":7}'];
        for (const f of bad) ws.send(f);
        ws.send(Buffer.from([3, 200, 0, 0, 0, 0, 1])); // a binary push whose header lies
        ws.send(Buffer.from([9, 9, 9]));
        await R.until(() => ws.frames().filter((m) => m.event === 'phx_error').length === bad.length + 2, 5000, 'an error per bad frame');
        for (const m of ws.frames().filter((m) => m.event === 'phx_error')) {
            assert.equal(m.topic, 'phoenix');
            assert.equal(m.payload.status, 'error');
            assert.ok(m.payload.response.reason.length > 5, m.payload.response.reason);
        }
        await heartbeatOk(ws, 'hb');
        ws.close();
    });
}

test('unknown topics, events and presence actions, refused joins: phx_reply errors with a reason', async () => {
    const ws = await raw();
    ws.push('1', '1', 'realtime:never-joined', 'broadcast', { type: 'broadcast', event: 'x', payload: {} });
    assert.match((await ws.reply('1')).payload.response.reason, /unmatched topic/);
    join(ws, 'realtime:r1', '2');
    assert.equal((await ws.reply('2')).payload.status, 'ok');
    ws.push('2', '3', 'realtime:r1', 'frobnicate', {});
    assert.match((await ws.reply('3')).payload.response.reason, /Unknown event: frobnicate/);
    ws.push('2', '4', 'realtime:r1', 'presence', { type: 'presence', event: 'dance', payload: {} });
    assert.match((await ws.reply('4')).payload.response.reason, /track or untrack/);
    ws.push('2', '5', 'realtime:r1', 'presence', { type: 'presence', event: 'track', payload: [1, 2] });
    assert.match((await ws.reply('5')).payload.response.reason, /JSON object/);
    ws.push('2', '6', 'realtime:r1', 'broadcast', { type: 'broadcast', payload: {} });
    assert.match((await ws.reply('6')).payload.response.reason, /needs an event/);
    ws.push('7', '7', 'no-prefix', 'phx_join', {});
    assert.match((await ws.reply('7')).payload.response.reason, /realtime:<channel>/);
    ws.push('8', '8', 'realtime:r2', 'phx_join', { config: { presence: 'yes' } });
    assert.match((await ws.reply('8')).payload.response.reason, /config.presence must be an object/);
    ws.push('9', '9', 'realtime:r2', 'phx_join', { access_token: 'not.a.token' });
    assert.match((await ws.reply('9')).payload.response.reason, /InvalidJWTToken/);
    await heartbeatOk(ws, 'hb');
    ws.close();
});

test('an oversize meta is refused and nothing of it reaches the room', async () => {
    const w = await raw(), ws = await raw();
    join(w, 'realtime:big', 'j');
    join(ws, 'realtime:big', 'j', 'big-one');
    await w.reply('j');
    await ws.reply('j');
    ws.push('j', 't1', 'realtime:big', 'presence', { type: 'presence', event: 'track', payload: { blob: 'x'.repeat(3000) } });
    const r = await ws.reply('t1');
    assert.equal(r.payload.status, 'error');
    assert.match(r.payload.response.reason, /Presence payload too large: at most 2048 bytes/);
    ws.push('j', 't2', 'realtime:big', 'presence', { type: 'presence', event: 'track', payload: { small: true } });
    assert.equal((await ws.reply('t2')).payload.status, 'ok');
    await R.until(() => w.frames().some((m) => m.event === 'presence_diff' && m.payload.joins['big-one']), 5000, 'the small meta');
    assert.ok(!w.frames().some((m) => JSON.stringify(m).includes('xxxxxxxxxx')), 'nothing of the big meta');
    w.close(); ws.close();
});

test('a flood of track messages: over the rate the pushes get errors, the room ends with one meta, others unaffected', async () => {
    const flood = await raw(), other = await raw();
    join(flood, 'realtime:flood', 'j', 'flooder');
    join(other, 'realtime:flood', 'j', 'calm');
    await flood.reply('j');
    await other.reply('j');
    const N = 1000;
    for (let i = 0; i < N; i++)
        flood.push('j', `t${i}`, 'realtime:flood', 'presence', { type: 'presence', event: 'track', payload: { i } });
    await R.until(() => flood.frames().filter((m) => m.event === 'phx_reply' && m.ref.startsWith('t')).length === N, 20000, 'a reply to every track');
    const replies = flood.frames().filter((m) => m.event === 'phx_reply' && m.ref.startsWith('t'));
    const limited = replies.filter((m) => m.payload.status === 'error');
    assert.ok(limited.length > 0 && limited.length < N, `${limited.length} of ${N} refused`);
    assert.match(limited[0].payload.response.reason, /Too many messages: at most 100 per second/);
    // the other client is served at once, and sees the flooder as one key with one meta
    other.push('j', 'c1', 'realtime:flood', 'presence', { type: 'presence', event: 'track', payload: { calm: true } });
    assert.equal((await other.reply('c1')).payload.status, 'ok');
    await heartbeatOk(other, 'hb');
    const rc = new RealtimeClient(`ws://127.0.0.1:${c.port}/realtime/v1`, { params: { apikey: anon }, transport: WS });
    const ch = rc.channel('flood');
    ch.on('presence', { event: 'sync' }, () => {});
    await new Promise((resolve) => ch.subscribe((s) => s === 'SUBSCRIBED' && resolve()));
    await R.until(() => (ch.presenceState().flooder || []).length === 1 && (ch.presenceState().calm || []).length === 1, 5000, 'one meta each');
    rc.disconnect(); flood.close(); other.close();
});

test('a client that never reads is dropped as a slow consumer; readers in its room get every broadcast', async () => {
    const [g] = c.pids('gateway', 1);
    // the slow client on gateway 1, its socket paused after the join
    let slow;
    for (let i = 0; i < 100; i++) {
        const ws = await raw();
        if ((await R.gatewayOf(c, ws._socket.localPort)) === g) { slow = ws; break; }
        ws.terminate();
    }
    assert.ok(slow, 'a client on gateway 1');
    join(slow, 'realtime:slow', 'j');
    await slow.reply('j');
    slow._socket.pause();
    const reader = await raw(), sender = await raw();
    join(reader, 'realtime:slow', 'j');
    join(sender, 'realtime:slow', 'j');
    await reader.reply('j');
    await sender.reply('j');
    // more than the kernel buffers of a loopback connection hold (tcp_rmem may reach 32 MiB)
    // (and incompressible: the gateway may deflate frames)
    const blob = require('node:crypto').randomBytes(135 * 1024).toString('base64');
    let acked = 0;
    for (let round = 0; round < 5; round++) {
        for (let i = 0; i < 50; i++)
            sender.push('j', `b${round}-${i}`, 'realtime:slow', 'broadcast', { type: 'broadcast', event: 'blob', payload: { blob, round, i } });
        await R.until(() => sender.frames().filter((m) => m.event === 'phx_reply' && m.ref.startsWith(`b${round}-`)).length === 50, 20000, 'acks');
        acked = sender.frames().filter((m) => m.event === 'phx_reply' && m.ref.startsWith('b') && m.payload.status === 'ok').length;
        await sleep(300);
    }
    assert.equal(acked, 250, `${acked} broadcasts acknowledged`);
    await R.until(() => reader.frames().filter((m) => m.event === 'broadcast').length === acked, 10000, 'the reader gets every broadcast');
    const m = await R.until(async () => {
        const r = await R.restVia(c, g, 'GET', '/metrics');
        const v = /presenced_supabase_slow_disconnects_total (\d+)/.exec(r.text);
        return v && Number(v[1]) >= 1 ? v[1] : null;
    }, 20000, 'the slow client dropped');
    assert.ok(Number(m) >= 1);
    await heartbeatOk(reader, 'hb');
    slow.terminate(); reader.close(); sender.close();
});
