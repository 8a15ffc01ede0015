'use strict';
// Supabase Realtime identity from a projects file (issue 13, item 3): a publishable key names
// its project; per-project channel rules (pattern -> roles for join, track, broadcast, in the
// role grammar of permissions) decide who may do what; refusals are phx_reply errors with
// Supabase's reasons. realtime-js unmodified.
const test = require('node:test');
const assert = require('node:assert/strict');
const WS = require('ws');
const { RealtimeClient } = require('@supabase/realtime-js');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { startCluster, freePort, BIN } = require('./lib/cluster');
const { mintJwt } = require('./lib/sdk');
const R = require('./lib/rtclient');

const SECRET = 'rules-secret-' + Date.now();
const PUB = 'sb_publishable_' + 'r'.repeat(24);
let c;
const clients = [];

test.before(async () => {
    c = await startCluster({
        gateways: 2, label: 'supabaserules',
        config: { projects: [{ id: 'rules', keys: [], jwt: [{ alg: 'HS256', secret: SECRET }],
            supabase: {
                publishable_keys: [PUB],
                channels: [
                    { pattern: 'vip-*', join: ['users'], track: ['users'], broadcast: ['label:vip'] },
                    { pattern: 'team-*', join: ['team:blue'] },
                    { pattern: 'lobby', join: ['any'], track: ['users'] },
                ],
            } }] },
    });
});
test.after(async () => {
    for (const rc of clients) try { rc.disconnect(); } catch {}
    await c.stop();
});

async function client(apikey, token) {
    const rc = new RealtimeClient(`ws://127.0.0.1:${c.port}/realtime/v1`, { params: { apikey }, transport: WS });
    if (token) await rc.setAuth(token);
    clients.push(rc);
    return rc;
}

function join(ch) {
    return new Promise((resolve) => ch.subscribe((status, err) => {
        if (status === 'SUBSCRIBED' || status === 'CHANNEL_ERROR') resolve({ status, message: err && err.message });
    }));
}

const user = (sub, extra = {}) => mintJwt(SECRET, { sub, role: 'authenticated', ...extra });

test('a publishable key names its project; an unknown one is refused before the upgrade', async () => {
    const rc = await client(PUB);
    assert.equal((await join(rc.channel('lobby'))).status, 'SUBSCRIBED');
    const status = await new Promise((resolve) => {
        const ws = new WS(`ws://127.0.0.1:${c.port}/realtime/v1/websocket?vsn=2.0.0&apikey=sb_publishable_nope`);
        ws.on('unexpected-response', (req, res) => { resolve(res.statusCode); ws.terminate(); });
        ws.on('open', () => { resolve(101); ws.close(); });
        ws.on('error', () => {});
    });
    assert.equal(status, 401);
});

test('join rules: users only, a team only, and a channel no rule names', async () => {
    const anon = await client(PUB);
    const r1 = await join(anon.channel('vip-lounge'));
    assert.equal(r1.status, 'CHANNEL_ERROR');
    assert.match(r1.message, /Unauthorized: You do not have permissions to read from this Channel topic: vip-lounge/);
    assert.equal((await join(anon.channel('nowhere'))).status, 'CHANNEL_ERROR', 'no rule: refused');

    const u = await client(PUB, user('u1'));
    assert.equal((await join(u.channel('vip-lounge'))).status, 'SUBSCRIBED');
    assert.equal((await join(u.channel('team-x'))).status, 'CHANNEL_ERROR', 'not in team blue');
    const blue = await client(PUB, user('u2', { teams: ['blue'] }));
    assert.equal((await join(blue.channel('team-x'))).status, 'SUBSCRIBED');
    // the service_role key may do anything
    const svc = await client(mintJwt(SECRET, { role: 'service_role', ref: 'rules' }));
    assert.equal((await join(svc.channel('nowhere'))).status, 'SUBSCRIBED');
});

test('track and broadcast rules: the push is refused with a reason, the channel stays joined', async () => {
    const anon = await client(PUB);
    const lobby = anon.channel('lobby');
    assert.equal((await join(lobby)).status, 'SUBSCRIBED');
    assert.equal(await lobby.track({ me: 'anon' }), 'error', 'anon may not track in lobby');

    const u = await client(PUB, user('u3'));
    const ul = u.channel('lobby');
    ul.on('presence', { event: 'sync' }, () => {});
    assert.equal((await join(ul)).status, 'SUBSCRIBED');
    assert.equal(await ul.track({ me: 'u3' }), 'ok');
    await R.until(() => (ul.presenceState()[Object.keys(ul.presenceState())[0]] || []).length === 1, 5000, 'the user tracked');

    const plain = u.channel('vip-1', { config: { broadcast: { ack: true } } });
    assert.equal((await join(plain)).status, 'SUBSCRIBED');
    assert.equal(await plain.send({ type: 'broadcast', event: 'e', payload: {} }), 'error', 'no vip label');
    const vip = await client(PUB, user('u4', { labels: ['vip'] }));
    const vc = vip.channel('vip-1', { config: { broadcast: { ack: true } } });
    assert.equal((await join(vc)).status, 'SUBSCRIBED');
    const got = [];
    plain.on('broadcast', { event: 'e' }, (m) => got.push(m.payload));
    assert.equal(await vc.send({ type: 'broadcast', event: 'e', payload: { from: 'vip' } }), 'ok');
    await R.until(() => got.length === 1, 5000, 'the vip broadcast arrives');
});

test('malformed rules are refused when the projects file loads, naming the project and the rule', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-rules-'));
    const port = await freePort();
    const project = (supabase) => ({ projects: [{ id: 'typo', keys: [], jwt: [{ alg: 'HS256', secret: SECRET }], supabase }] });
    const cases = [
        [{ channels: [{ pattern: 'vip-*', join: ['users'], brodcast: ['label:vip'] }] }, /project typo: supabase\.channels\[0\] \(vip-\*\): unknown key "brodcast"/],
        [{ channels: [{ pattern: 'lobby' }, { pattern: 'team-*', join: ['user'] }] }, /channels\[1\] \(team-\*\): join\[0\]: Role "user" must have an ID value/],
        [{ channels: [{ pattern: 'x', track: ['admins'] }] }, /channels\[0\] \(x\): track\[0\]: Role "admins" is not allowed/],
        [{ channels: [{ join: ['any'] }] }, /channels\[0\] needs a "pattern"/],
        [{ channels: [{ pattern: 'x', join: 'users' }] }, /join must be an array of roles/],
        [{ channels: { pattern: 'x' } }, /supabase\.channels must be an array/],
        [{ publishable_keys: ['anon-key'] }, /publishable_keys\[0\] must be a string .* sb_publishable_/],
        [{ chanels: [] }, /supabase: unknown key "chanels"/],
    ];
    try {
        for (const [supabase, want] of cases) {
            const file = path.join(dir, 'projects.json');
            fs.writeFileSync(file, JSON.stringify(project(supabase)));
            const r = spawnSync(BIN, ['--config', file, '--host', '127.0.0.1', '--port', String(port),
                '--cluster', `rules${process.pid}`, '--run-dir', path.join(dir, 'run')],
            { encoding: 'utf8', timeout: 15000, env: { PATH: process.env.PATH, ASAN_OPTIONS: 'detect_leaks=0' } });
            assert.equal(r.status, 2, `refused at start: ${JSON.stringify(supabase)} (signal ${r.signal}: it started)`);
            assert.match(r.stderr, want);
        }
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
});
