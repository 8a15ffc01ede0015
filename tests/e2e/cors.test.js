'use strict';
// The browser origin allowlist of a project (`origins` in the projects file): an allowed Origin
// is echoed on REST and connects on realtime; a foreign one is not echoed (the browser then
// refuses the response) and gets error 1008 then close 1008 on realtime. A project without an
// origin list echoes any origin (the SDK sends credentials, so '*' would not do).
const test = require('node:test');
const assert = require('node:assert/strict');
const { useCluster } = require('./lib/cluster');
const R = require('./lib/rtclient');

const CORS = 'cors-project';
const GOOD = 'https://app.example.com';
const EVIL = 'https://evil.example.net';
const holder = useCluster(test, {
    label: 'cors',
    config: { projects: [{ id: CORS, keys: [], jwt: [], origins: [GOOD] }] },
});
const C = () => holder.cluster;

async function get(project, origin, method = 'GET') {
    const headers = { 'X-Appwrite-Project': project };
    if (origin) headers.Origin = origin;
    if (method === 'OPTIONS') {
        headers['Access-Control-Request-Method'] = 'PUT';
        headers['Access-Control-Request-Headers'] = 'content-type,x-appwrite-project';
    }
    const r = await fetch(`${C().endpoint}/presences`, { method, headers });
    await r.arrayBuffer();
    return r;
}

// Opens a WebSocket with an Origin header; resolves with the frames and the close code.
function wsOpen(project, origin) {
    return new Promise((resolve) => {
        const ws = new R.WS(`ws://127.0.0.1:${C().port}/v1/realtime?project=${project}`, { headers: { Origin: origin } });
        const msgs = [];
        ws.on('message', (d) => msgs.push(JSON.parse(String(d))));
        ws.on('close', (code) => resolve({ msgs, code }));
        ws.on('unexpected-response', (req, r) => resolve({ msgs, http: r.statusCode }));
        ws.on('error', () => {});
        setTimeout(() => { ws.terminate(); resolve({ msgs, timeout: true }); }, 5000);
    });
}

test('REST: an allowed origin is echoed, a foreign one is not (requests and preflights)', async () => {
    for (const method of ['GET', 'OPTIONS']) {
        const good = await get(CORS, GOOD, method);
        assert.equal(good.headers.get('access-control-allow-origin'), GOOD, `${method} from the allowed origin`);
        const evil = await get(CORS, EVIL, method);
        assert.equal(evil.headers.get('access-control-allow-origin'), null, `${method}: a foreign origin was echoed`);
    }
    // a project without a list echoes whatever origin (the quick-start project)
    const any = await get(C().project, EVIL);
    assert.equal(any.headers.get('access-control-allow-origin'), EVIL);
});

test('realtime: a foreign origin gets error 1008 then close 1008; the allowed one connects', async () => {
    const evil = await wsOpen(CORS, EVIL);
    assert.equal(evil.http, undefined, `HTTP ${evil.http}`);
    assert.ok(!evil.timeout, 'left open');
    assert.equal(evil.msgs.length, 1, JSON.stringify(evil));
    assert.equal(evil.msgs[0].type, 'error');
    assert.equal(evil.msgs[0].data.code, 1008);
    // Appwrite's Origin validator message (it names the host; the origin as sent is accepted too)
    assert.match(evil.msgs[0].data.message, /^Invalid Origin\. Register your new client \((https:\/\/)?evil\.example\.net\) as a new Web platform on your project console dashboard$/);
    assert.equal(evil.code, 1008);
    const good = await new Promise((resolve, reject) => {
        const ws = new R.WS(`ws://127.0.0.1:${C().port}/v1/realtime?project=${CORS}`, { headers: { Origin: GOOD } });
        ws.on('message', (d) => { const m = JSON.parse(String(d)); ws.close(); resolve(m); });
        ws.on('error', reject);
    });
    assert.equal(good.type, 'connected');
});
