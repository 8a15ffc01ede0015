'use strict';
// permessage-deflate (RFC 7692) on /v1/realtime: negotiated when the client offers it (browsers
// and Node's `ws` do), never otherwise; events arrive intact either way; compressed client
// messages (whole and fragmented) are understood; bad compressed data, compression on a
// connection that did not negotiate it, and a compressed bomb are refused with the RFC's close
// codes, and nothing else is disturbed. One gateway, so every metric is that gateway's.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const zlib = require('node:zlib');
const crypto = require('node:crypto');

const R = require('./lib/rtclient');
const { useCluster } = require('./lib/cluster');
const { nodeClient } = require('./lib/sdk');
const { uid } = require('./lib/check');
const { wsFrame } = require('./lib/wsframe');

const WS = require(path.resolve(__dirname, 'node_modules', 'ws'));

const H = useCluster(test, { label: 'deflate', gateways: 1 });
const C = () => H.cluster;
const keyPresences = () => nodeClient(C(), {}).presences;

// A client with the `ws` library; perMessageDeflate: false offers no compression.
function open(opts = {}) {
    return new Promise((resolve, reject) => {
        const ws = new WS(R.rtUrl(C()), { perMessageDeflate: opts.deflate ?? true, headers: opts.headers });
        const c = new R.RawClient(ws);
        ws.once('upgrade', (res) => { c.extensions = res.headers['sec-websocket-extensions']; });
        ws.once('open', async () => {
            try {
                c.hello = await c.next((m) => m.type === 'connected', 5000, 'connected');
                resolve(c);
            } catch (e) { reject(e); }
        });
        ws.once('error', reject);
    });
}

// A WebSocket spoken by hand: the 101's headers, then every frame with its RSV1 bit and payload
// as sent (inflated when compressed, as a client would).
async function hand(extensions) {
    const s = net.connect({ host: '127.0.0.1', port: C().port });
    await new Promise((res, rej) => { s.once('connect', res); s.once('error', rej); });
    const key = crypto.randomBytes(16).toString('base64');
    s.write(`GET /v1/realtime?project=${C().project} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
        (extensions ? `Sec-WebSocket-Extensions: ${extensions}\r\n` : '') + '\r\n');
    let buf = Buffer.alloc(0);
    const h = { frames: [], head: null, ended: false, s };
    s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (!h.head) {
            const i = buf.indexOf('\r\n\r\n');
            if (i < 0) return;
            h.head = buf.subarray(0, i).toString();
            buf = buf.subarray(i + 4);
        }
        while (buf.length >= 2) {
            let len = buf[1] & 0x7f;
            let hl = 2;
            if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); hl = 4; }
            else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); hl = 10; }
            if (buf.length < hl + len) break;
            const rsv1 = !!(buf[0] & 0x40);
            let payload = buf.subarray(hl, hl + len);
            if (rsv1) payload = zlib.inflateRawSync(Buffer.concat([payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
            h.frames.push({ op: buf[0] & 0x0f, rsv1, payload });
            buf = buf.subarray(hl + len);
        }
    });
    s.on('close', () => { h.ended = true; });
    s.on('error', () => {});
    h.frame = wsFrame;
    h.json = () => h.frames.filter((f) => f.op === 1).map((f) => JSON.parse(f.payload.toString()));
    h.closeCode = () => { const f = h.frames.find((x) => x.op === 8); return f && f.payload.length >= 2 ? f.payload.readUInt16BE(0) : undefined; };
    await R.until(() => h.frames.length > 0, 5000, 'the connected frame');
    return h;
}

// A message compressed as RFC 7692 §7.2.1 says: deflate, sync flush, the last 4 bytes dropped.
function deflate(text) {
    const z = zlib.deflateRawSync(Buffer.from(text), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    return z.subarray(0, z.length - 4);
}

async function metric(name) {
    const v = (await C().metrics()).get(name);
    assert.notEqual(v, undefined, name);
    return v;
}

async function upsertBig(status) {
    const id = uid('z');
    const blob = 'the same words again and again, '.repeat(200); // compresses well
    await keyPresences().upsert({ presenceId: id, userId: uid('k'), status, metadata: { blob }, permissions: ['read("any")'] });
    return { id, blob };
}

describe('permessage-deflate', () => {
    it('negotiated with a client that offers it; events arrive intact, each compressed once however many connections get it', async () => {
        const a = await open();
        const b = await open();
        const plain = await open({ deflate: false });
        assert.equal(a.extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
        assert.equal(plain.extensions, undefined, 'no extension when none was offered');
        for (const c of [a, b, plain]) await R.rawSubscribe(c, [{ subscriptionId: 'all', channels: ['presences'] }]);
        const deflated0 = await metric('presenced_realtime_deflated_total');
        const in0 = await metric('presenced_realtime_deflate_in_bytes_total');
        const out0 = await metric('presenced_realtime_deflate_out_bytes_total');
        const { id, blob } = await upsertBig('compressed');
        const got = [];
        for (const c of [a, b, plain]) got.push(await c.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'the event'));
        for (const e of got) {
            assert.equal(e.data.payload.metadata.blob, blob);
            assert.deepEqual(e.data.subscriptions, ['all']);
        }
        assert.deepEqual(got[0], got[2], 'the compressed event and the plain one are the same message');
        const deflated = (await metric('presenced_realtime_deflated_total')) - deflated0;
        assert.equal(deflated, 1, 'one event, two compressing connections: compressed once');
        const zin = (await metric('presenced_realtime_deflate_in_bytes_total')) - in0;
        const zout = (await metric('presenced_realtime_deflate_out_bytes_total')) - out0;
        assert.ok(zin > blob.length && zout < zin / 4, `compressed ${zin} -> ${zout} bytes`);
        for (const c of [a, b, plain]) c.close();
    });

    it('a browser-style offer (client_max_window_bits) is accepted; offers it cannot honour are declined, and the connection works uncompressed', async () => {
        for (const [offer, accepted] of [
            ['permessage-deflate; client_max_window_bits', true],
            ['permessage-deflate; client_max_window_bits=12; server_no_context_takeover', true],
            ['permessage-deflate; server_max_window_bits=10, permessage-deflate', true], // the second offer
            ['permessage-deflate; server_max_window_bits=10', false],
            ['permessage-deflate; unknown_param', false],
            ['permessage-deflate; server_no_context_takeover; server_no_context_takeover', false],
            ['x-webkit-deflate-frame', false],
        ]) {
            const h = await hand(offer);
            assert.match(h.head, /^HTTP\/1\.1 101 /);
            const ext = /sec-websocket-extensions: ([^\r\n]*)/i.exec(h.head);
            assert.equal(!!ext, accepted, `${offer}: ${h.head}`);
            if (ext) assert.equal(ext[1], 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
            h.s.write(h.frame(1, JSON.stringify({ type: 'ping' })));
            await R.until(() => h.json().some((m) => m.type === 'pong'), 5000, `pong (${offer})`);
            h.s.destroy();
        }
    });

    it('compressed client messages, whole or fragmented, are understood; the subscription they make gets compressed events', async () => {
        const h = await hand('permessage-deflate');
        const sub = JSON.stringify({ type: 'subscribe', data: [{ subscriptionId: 'zsub', channels: ['presences'], queries: [] }] });
        h.s.write(h.frame(1, deflate(sub), { rsv1: true }));
        await R.until(() => h.json().some((m) => m.type === 'response' && m.data.to === 'subscribe'), 5000, 'the subscribe response');
        const z = deflate(JSON.stringify({ type: 'ping', pad: 'p'.repeat(3000) }));
        const cut = Math.floor(z.length / 2);
        h.s.write(Buffer.concat([h.frame(1, z.subarray(0, cut), { rsv1: true, fin: false }), h.frame(0, z.subarray(cut))]));
        await R.until(() => h.json().some((m) => m.type === 'pong'), 5000, 'the pong to a fragmented compressed ping');
        const { id, blob } = await upsertBig('to-hand');
        await R.until(() => h.json().some((m) => m.type === 'event' && m.data.payload.$id === id), 5000, 'the event');
        const f = h.frames.find((x) => x.op === 1 && x.payload.includes(id));
        assert.ok(f.rsv1, 'the event came compressed');
        const e = JSON.parse(f.payload.toString());
        assert.equal(e.data.payload.metadata.blob, blob);
        assert.deepEqual(e.data.subscriptions, ['zsub']);
        h.s.destroy();
    });

    it('bad compressed data: close 1007; RSV1 without the extension: close 1002; a message that inflates past 64,000 bytes: error 1009, close 1009', async () => {
        const a = await hand('permessage-deflate');
        a.s.write(a.frame(1, Buffer.from([0xff, 0xff, 0xff, 0x00, 0x01]), { rsv1: true }));
        await R.until(() => a.closeCode() !== undefined, 5000, 'a close frame');
        assert.equal(a.closeCode(), 1007);

        const b = await hand(null);
        b.s.write(b.frame(1, deflate('{"type":"ping"}'), { rsv1: true }));
        await R.until(() => b.closeCode() !== undefined, 5000, 'a close frame');
        assert.equal(b.closeCode(), 1002);
        assert.equal(b.json().filter((m) => m.type === 'pong').length, 0, 'the message was not taken');

        const c = await hand('permessage-deflate');
        const bomb = deflate(JSON.stringify({ type: 'ping', pad: 'x'.repeat(10_000_000) }));
        assert.ok(bomb.length < 64000, `${bomb.length} compressed bytes`);
        c.s.write(c.frame(1, bomb, { rsv1: true }));
        await R.until(() => c.closeCode() !== undefined, 5000, 'a close frame');
        assert.equal(c.closeCode(), 1009);
        const err = c.json().find((m) => m.type === 'error');
        assert.equal(err && err.data.code, 1009, JSON.stringify(c.json()));
        for (const h of [a, b, c]) h.s.destroy();

        // the gateway is fine: a new client still gets compressed events
        const d = await open();
        await R.rawSubscribe(d, [{ subscriptionId: 'after', channels: ['presences'] }]);
        const { id } = await upsertBig('after');
        await d.next((m) => m.type === 'event' && m.data.payload.$id === id, 5000, 'an event after the bad clients');
        d.close();
    });
});
