'use strict';
// Bad input, tried as a new user would: each gets the status and error `type` of
// appwrite-protocol.md, as an Appwrite error body, and nothing is written. Plus CORS and ping.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const http = require('node:http');
const crypto = require('node:crypto');
const { useCluster, startCluster } = require('./lib/cluster');
const { webClient, nodeClient, mintJwt, plain, loadNodeSdk } = require('./lib/sdk');
const { api, show } = require('./lib/http');
const { assertPresence, rejectsWith, assertError, uid } = require('./lib/check');

const H = useCluster(test, { label: 'badinput' });
const DAY = 86400e3;

const keyP = () => nodeClient(H.cluster, {}).presences;
const Q = () => loadNodeSdk().Query;

// Nothing exists for this user / these presenceIds (read with the API key).
async function assertNothingWritten(userId, presenceIds = []) {
    if (userId) {
        const l = plain(await keyP().list({ queries: [Q().equal('userId', [userId])] }));
        assert.deepEqual(l, { total: 0, presences: [] }, `a record was written for ${userId}`);
    }
    for (const p of presenceIds) {
        const r = await api(H.cluster, 'GET', `/v1/presences/${encodeURIComponent(p)}`, { key: true });
        assertError(r, 404, 'presence_not_found');
    }
}

const put = (p, body, opts = {}) => api(H.cluster, 'PUT', `/v1/presences/${encodeURIComponent(p)}`, { key: true, body, ...opts });

// --- project and credentials -----------------------------------------------------------------

describe('project and credentials', () => {
    it('missing X-Appwrite-Project: 404 project_not_found', async () => {
        const u = uid('np'), p = uid('p');
        assertError(await api(H.cluster, 'GET', '/v1/presences', { key: true, project: null }), 404, 'project_not_found');
        assertError(await put(p, { userId: u, status: 'x' }, { project: null }), 404, 'project_not_found');
        assertError(await api(H.cluster, 'GET', `/v1/presences/${p}`, { key: true, project: null }), 404, 'project_not_found');
        await assertNothingWritten(u, [p]);
    });

    it('unknown project: 404 project_not_found through every SDK', async () => {
        const u = uid('up'), p = uid('p');
        const n = nodeClient(H.cluster, { project: 'no-such-project' });
        await rejectsWith(n.presences.list(), 404, 'project_not_found', 'node list');
        await rejectsWith(n.presences.upsert({ presenceId: p, userId: u, status: 'x' }), 404, 'project_not_found', 'node upsert');
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk, userId: u, project: 'no-such-project' });
            await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x' }), 404, 'project_not_found', `web ${sdk} upsert`);
            await rejectsWith(w.presences.get({ presenceId: p }), 404, 'project_not_found', `web ${sdk} get`);
        }
        await assertNothingWritten(u, [p]);
    });

    it('wrong API key: 401 user_unauthorized (README "API keys and scopes")', async () => {
        const u = uid('wk'), p = uid('p');
        const n = nodeClient(H.cluster, { key: 'not-the-key-' + crypto.randomBytes(8).toString('hex') });
        for (const call of [
            () => n.presences.upsert({ presenceId: p, userId: u, status: 'x' }),
            () => n.presences.list(),
            () => n.presences.get({ presenceId: p }),
            () => n.presences.delete({ presenceId: p }),
        ]) {
            const e = await rejectsWith(call(), 401, 'user_unauthorized', 'wrong key');
            assert.equal(e.message, 'The API key is not valid for this project.');
        }
        await assertNothingWritten(u, [p]);
    });

    it('API keys without the needed scope: 401 general_unauthorized_scope (projects file)', async (t) => {
        // The quick-start --api-key has every scope; limited keys come from a projects file
        // (--config). A second, small cluster serves a project with one key per scope.
        const secret = (n) => `${n}-${crypto.randomBytes(16).toString('hex')}`;
        const keys = { full: secret('full'), read: secret('read'), write: secret('write'), users: secret('users') };
        const scopes = { full: ['presences.read', 'presences.write'], read: ['presences.read'], write: ['presences.write'], users: ['users.write'] };
        const env = {};
        const config = { projects: [{ id: 'scoped', keys: Object.keys(keys).map((k) => ({ name: k, secret_env: `PD_E2E_KEY_${k.toUpperCase()}`, scopes: scopes[k] })) }] };
        for (const k of Object.keys(keys)) env[`PD_E2E_KEY_${k.toUpperCase()}`] = keys[k];
        // a cluster that does not start is a failure, not a skip
        const c2 = await startCluster({ label: 'badinput-scopes', stores: 1, gateways: 1, config, env });
        try {
            const call = (key, method, path, body) => api(c2, method, path, { key, body, project: 'scoped' });
            const u = uid('sc'), p = uid('p');
            const denied = 'general_unauthorized_scope';
            // read-only key
            assert.equal((await call(keys.read, 'GET', '/v1/presences')).status, 200);
            assertError(await call(keys.read, 'GET', `/v1/presences/${p}`), 404, 'presence_not_found');
            assertError(await call(keys.read, 'PUT', `/v1/presences/${p}`, { userId: u, status: 'x' }), 401, denied);
            assertError(await call(keys.read, 'PATCH', `/v1/presences/${p}`, { status: 'x' }), 401, denied);
            assertError(await call(keys.read, 'DELETE', `/v1/presences/${p}`, {}), 401, denied);
            // key with neither presences scope
            for (const [m, path, body] of [['GET', '/v1/presences'], ['GET', `/v1/presences/${p}`], ['PUT', `/v1/presences/${p}`, { userId: u, status: 'x' }]]) {
                assertError(await call(keys.users, m, path, body), 401, denied);
            }
            let full = await call(keys.full, 'GET', `/v1/presences/${p}`);
            assertError(full, 404, 'presence_not_found'); // nothing was written
            // write-only key: may write, may not read
            const w = await call(keys.write, 'PUT', `/v1/presences/${p}`, { userId: u, status: 'x' });
            assert.equal(w.status, 200, show(w));
            assertError(await call(keys.write, 'GET', `/v1/presences/${p}`), 401, denied);
            assertError(await call(keys.write, 'GET', '/v1/presences'), 401, denied);
            full = await call(keys.full, 'GET', `/v1/presences/${p}`);
            assert.equal(full.status, 200, show(full));
            assert.deepEqual(full.json, w.json);
            // a key of another project
            const other = await api(H.cluster, 'GET', '/v1/presences', { key: keys.full });
            assertError(other, 401, 'user_unauthorized');
            const n = nodeClient(c2, { key: keys.read, project: 'scoped' });
            await rejectsWith(n.presences.upsert({ presenceId: uid('p'), userId: u, status: 'x' }), 401, denied, 'node-appwrite read-only key upsert');
        } catch (e) {
            c2.failed = true; // keep its log
            throw e;
        } finally {
            const r = await c2.stop();
            assert.equal(r.code, 0);
        }
    });

    it('no credentials at all (guest) cannot write: 401 general_unauthorized_scope', async () => {
        const p = uid('p');
        const w = webClient(H.cluster, { sdk: 'appwrite' }); // no JWT
        await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x' }), 401, 'general_unauthorized_scope', 'guest upsert');
        const r = await put(p, { status: 'x' }, { key: undefined });
        assertError(r, 401, 'general_unauthorized_scope');
        await assertNothingWritten(null, [p]);
    });

    const now = () => Math.floor(Date.now() / 1000);
    const badTokens = () => {
        const s = H.cluster.jwtSecret;
        const u = uid('bj');
        const good = mintJwt(s, { userId: u });
        const [h, b] = good.split('.');
        return [
            ['expired', u, mintJwt(s, { userId: u, exp: now() - 60 })],
            ['forged (wrong secret)', u, mintJwt('not-the-secret', { userId: u })],
            ['alg none, no signature', u, mintJwt(s, { userId: u }, { header: { alg: 'none', typ: 'JWT' }, sign: () => '' })],
            ['alg none, valid HS256 signature', u, mintJwt(s, { userId: u }, { header: { alg: 'none', typ: 'JWT' } })],
            ['alg None', u, mintJwt(s, { userId: u }, { header: { alg: 'None', typ: 'JWT' }, sign: () => '' })],
            ['alg hs256 (lower case)', u, mintJwt(s, { userId: u }, { alg: 'hs256' })],
            ['alg HS512 signed with the secret', u, mintJwt(s, { userId: u }, { alg: 'HS512', hmac: 'sha512' })],
            ['payload swapped under a valid signature', u, `${h}.${Buffer.from(JSON.stringify({ userId: u + 'x', exp: now() + 600 })).toString('base64url')}.${good.split('.')[2]}`],
            ['truncated signature', u, good.slice(0, -5)],
            ['two parts', u, `${h}.${b}`],
            ['garbage', u, 'not-a-jwt'],
            ['no userId or sub claim', u, mintJwt(s, { name: u })],
        ];
    };

    it('expired, forged, alg:none and malformed JWTs: 401 user_jwt_invalid (web SDK and raw)', async () => {
        for (const [what, u, jwt] of badTokens()) {
            const p = uid('p');
            for (const sdk of ['appwrite', 'appwrite-latest']) {
                const w = webClient(H.cluster, { sdk, jwt });
                await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x' }), 401, 'user_jwt_invalid', `${what}: web ${sdk} upsert`);
                await rejectsWith(w.presences.list(), 401, 'user_jwt_invalid', `${what}: web ${sdk} list`);
            }
            assertError(await api(H.cluster, 'GET', `/v1/presences/${p}`, { jwt }), 401, 'user_jwt_invalid');
            await assertNothingWritten(u, [p]);
        }
    });

    it('a valid JWT works (control for the cases above)', async () => {
        const u = uid('ok'), p = uid('p');
        const w = webClient(H.cluster, { sdk: 'appwrite', userId: u });
        const r = plain(await w.presences.upsert({ presenceId: p, status: 'ok' }));
        assertPresence(r, { $id: p, userId: u });
        await keyP().delete({ presenceId: p });
    });
});

// --- validation of PUT ---------------------------------------------------------------------

describe('upsert validation: 400 general_argument_invalid, nothing written', () => {
    const bad = 'general_argument_invalid';

    it('invalid presenceId (PUT, GET, PATCH, DELETE)', async () => {
        const u = uid('id');
        for (const id of ['unique()', '_lead', '.lead', '-lead', 'a'.repeat(37), 'has space', 'semi;colon', 'ümlaut', 'star*', 'q"uote']) {
            assertError(await put(id, { userId: u, status: 'x' }), 400, bad);
            assertError(await api(H.cluster, 'GET', `/v1/presences/${encodeURIComponent(id)}`, { key: true }), 400, bad);
            assertError(await api(H.cluster, 'PATCH', `/v1/presences/${encodeURIComponent(id)}`, { key: true, body: { status: 'y' } }), 400, bad);
            assertError(await api(H.cluster, 'DELETE', `/v1/presences/${encodeURIComponent(id)}`, { key: true, body: {} }), 400, bad);
        }
        await assertNothingWritten(u);
        // the SDKs see the same
        const w = webClient(H.cluster, { sdk: 'appwrite', userId: uid('idw') });
        await rejectsWith(w.presences.upsert({ presenceId: 'unique()', status: 'x' }), 400, bad, 'web upsert unique()');
        await rejectsWith(keyP().upsert({ presenceId: '_x', userId: u, status: 'x' }), 400, bad, 'node upsert _x');
        await assertNothingWritten(w.userId);
    });

    it('valid presenceIds with . - _ inside and 36 characters are accepted (control)', async () => {
        const u = uid('idok');
        const id = ('A1.b-c_' + crypto.randomBytes(20).toString('hex')).slice(0, 36);
        const r = await put(id, { userId: u, status: 'x' });
        assert.equal(r.status, 200, show(r));
        assert.equal(r.json.$id, id);
        await keyP().delete({ presenceId: id });
    });

    it('invalid userId (API key)', async () => {
        const p = uid('p');
        for (const userId of ['_x', 'a'.repeat(37), 'sp ace', '', 42]) {
            assertError(await put(p, { userId, status: 'x' }), 400, bad);
        }
        await assertNothingWritten(null, [p]);
    });

    it('status: 256 characters, empty, missing, not a string', async () => {
        const u = uid('st'), p = uid('p');
        for (const body of [
            { userId: u, status: 'x'.repeat(256) },
            { userId: u, status: 'é'.repeat(256) },
            { userId: u, status: '' },
            { userId: u },
            { userId: u, status: 12 },
            { userId: u, status: { a: 1 } },
            { userId: u, status: ['x'] },
        ]) assertError(await put(p, body), 400, bad);
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk, userId: u });
            await rejectsWith(w.presences.upsert({ presenceId: p, status: 'y'.repeat(256) }), 400, bad, `web ${sdk} status 256`);
        }
        await rejectsWith(keyP().upsert({ presenceId: p, userId: u, status: 'z'.repeat(256) }), 400, bad, 'node status 256');
        await assertNothingWritten(u, [p]);
    });

    it('status of 255 characters (also multi-byte) is accepted (control)', async () => {
        for (const status of ['x'.repeat(255), 'é'.repeat(255)]) {
            const u = uid('st'), p = uid('p');
            const r = await put(p, { userId: u, status });
            assert.equal(r.status, 200, show(r));
            assert.equal(r.json.status, status);
            await keyP().delete({ presenceId: p });
        }
    });

    it('metadata that is an array, a number, a boolean or a non-object string', async () => {
        const u = uid('md'), p = uid('p');
        for (const metadata of [[1, 2], ['a'], 5, true, 'just text', '[1,2]']) {
            assertError(await put(p, { userId: u, status: 'x', metadata }), 400, bad);
        }
        const w = webClient(H.cluster, { sdk: 'appwrite-latest', userId: u });
        await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x', metadata: [1, 2, 3] }), 400, bad, 'web metadata array');
        await assertNothingWritten(u, [p]);
    });

    it('metadata of 8 KiB round-trips; 60 KiB is refused under the default 16 KiB cap, nothing written', async () => {
        const u = uid('mdl'), p = uid('p');
        const meta = { blob: 'x'.repeat(8 * 1024), list: Array.from({ length: 50 }, (_, i) => ({ i, s: `v${i}` })) };
        const r = await put(p, { userId: u, status: 'x', metadata: meta });
        assert.equal(r.status, 200, show(r));
        assert.deepEqual(r.json.metadata, meta);
        await keyP().delete({ presenceId: p });
        const big = { blob: 'y'.repeat(60 * 1024) }; // body < 64 KiB, metadata over 16 KiB
        const r2 = await put(p, { userId: u, status: 'x', metadata: big });
        assertError(r2, 400);
        assert.equal(r2.json.type, 'general_argument_invalid', show(r2));
        assert.match(r2.json.message, /^Invalid `metadata` param: Value must be a JSON object of at most 16384 bytes when encoded\.$/);
        await assertNothingWritten(u, [p]);
    });

    it('expiresAt in the past, beyond 30 days, or not a date', async () => {
        const u = uid('ex'), p = uid('p');
        const iso = (ms) => new Date(ms).toISOString();
        for (const expiresAt of [iso(Date.now() - 60e3), iso(Date.now() - 365 * DAY), iso(Date.now() + 31 * DAY), iso(Date.now() + 400 * DAY),
            'not a date', 'tomorrow', '2024-13-45T99:99:99.000+00:00', 12345, true, {}]) {
            assertError(await put(p, { userId: u, status: 'x', expiresAt }), 400, bad);
        }
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk, userId: u });
            await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x', expiresAt: iso(Date.now() - 1000) }), 400, bad, `web ${sdk} past`);
            await rejectsWith(w.presences.upsert({ presenceId: p, status: 'x', expiresAt: iso(Date.now() + 32 * DAY) }), 400, bad, `web ${sdk} > 30 d`);
        }
        await assertNothingWritten(u, [p]);
    });

    it('expiresAt 29 days ahead is accepted (control)', async () => {
        const u = uid('ex'), p = uid('p');
        const t = Date.now() + 29 * DAY;
        const r = await put(p, { userId: u, status: 'x', expiresAt: new Date(t).toISOString() });
        assert.equal(r.status, 200, show(r));
        assert.equal(Date.parse(r.json.expiresAt), t);
        await keyP().delete({ presenceId: p });
    });

    it('permissions with bad syntax or a type that presences do not allow', async () => {
        const u = uid('pm'), p = uid('p');
        for (const permissions of [['create("any")'], ['*'], ['read("nobody")'], ['read(any)'], ['read("user:")'], ['role:all'], 'read("any")',
            Array.from({ length: 101 }, (_, i) => `read("user:u${i}")`)]) {
            assertError(await put(p, { userId: u, status: 'x', permissions }), 400, bad);
        }
        await assertNothingWritten(u, [p]);
    });

    it('a body that is not JSON, or not a JSON object: 400', async () => {
        const u = uid('nj'), p = uid('p');
        for (const rawBody of ['{"userId":', 'status=online', `{"userId":"${u}","status":"x"`, '[1,2]', '"text"', 'null']) {
            const r = await put(p, undefined, { rawBody });
            assertError(r, 400, 'general_argument_invalid');
            assert.equal(r.json.message, 'Invalid request body: it must be a JSON object.', show(r));
        }
        await assertNothingWritten(u, [p]);
    });

    it('a body over the 64 KiB cap: 413 (with Content-Length and chunked)', async () => {
        const u = uid('big'), p = uid('p');
        const body = JSON.stringify({ userId: u, status: 'x', metadata: { blob: 'z'.repeat(70 * 1024) } });
        const r = await put(p, undefined, { rawBody: body });
        assertError(r, 413, 'general_payload_too_large');
        // the same body, chunked, without a Content-Length
        const r2 = await new Promise((resolve, reject) => {
            const req = http.request({
                host: '127.0.0.1', port: H.cluster.port, method: 'PUT', path: `/v1/presences/${p}`,
                headers: { 'content-type': 'application/json', 'X-Appwrite-Project': H.cluster.project, 'X-Appwrite-Key': H.cluster.apiKey, 'transfer-encoding': 'chunked' },
            }, (res) => {
                let text = '';
                res.on('data', (c) => { text += c; });
                res.on('end', () => { let json; try { json = JSON.parse(text); } catch {} resolve({ status: res.statusCode, headers: res.headers, text, json, method: 'PUT', path: 'chunked' }); });
            });
            req.on('error', reject);
            for (let i = 0; i < body.length; i += 8192) req.write(body.slice(i, i + 8192));
            req.end();
        });
        assertError(r2, 413, 'general_payload_too_large');
        await assertNothingWritten(u, [p]);
    });
});

// --- validation of PATCH on an existing record ---------------------------------------------

describe('update validation leaves the record unchanged', () => {
    it('bad status / metadata / expiresAt / body on PATCH: 400, record unchanged', async () => {
        const u = uid('pt'), p = uid('p');
        const rec = plain(await keyP().upsert({ presenceId: p, userId: u, status: 'orig', metadata: { keep: true } }));
        const patch = (body, rawBody) => api(H.cluster, 'PATCH', `/v1/presences/${p}`, { key: true, body, rawBody });
        for (const body of [{ status: 'x'.repeat(256) }, { status: '' }, { metadata: [1] }, { metadata: 3 },
            { expiresAt: new Date(Date.now() - 5000).toISOString() }, { expiresAt: new Date(Date.now() + 40 * DAY).toISOString() },
            { expiresAt: 'soon' }, { permissions: ['create("any")'] }]) {
            assertError(await patch(body), 400, 'general_argument_invalid');
        }
        const r = await patch(undefined, '{"status":');
        assertError(r, 400, 'general_argument_invalid');
        assert.equal(r.json.message, 'Invalid request body: it must be a JSON object.', show(r));
        const w = webClient(H.cluster, { sdk: 'appwrite', userId: u });
        await rejectsWith(w.presences.update({ presenceId: p, status: 'q'.repeat(256) }), 400, 'general_argument_invalid', 'web update status 256');
        assert.deepEqual(plain(await keyP().get({ presenceId: p })), rec);
        await keyP().delete({ presenceId: p });
    });
});

// --- routes --------------------------------------------------------------------------------

describe('routes', () => {
    it('unknown route: 404 general_route_not_found', async () => {
        for (const path of ['/v1/nothing', '/v1/presence', '/v2/presences', '/v1/presences/a/b', '/', '/v1', '/v1/presences-x']) {
            assertError(await api(H.cluster, 'GET', path, { key: true }), 404, 'general_route_not_found');
        }
    });

    it('wrong method: 404 general_route_not_found, nothing written', async () => {
        const u = uid('wm'), p = uid('p');
        const body = { userId: u, status: 'x' };
        for (const [method, path] of [['POST', `/v1/presences/${p}`], ['POST', '/v1/presences'], ['PUT', '/v1/presences'],
            ['PATCH', '/v1/presences'], ['DELETE', '/v1/presences'], ['POST', '/v1/ping'], ['DELETE', '/v1/ping']]) {
            assertError(await api(H.cluster, method, path, { key: true, body }), 404, 'general_route_not_found');
        }
        await assertNothingWritten(u, [p]);
    });
});

// --- CORS, ping, headers the SDKs send -----------------------------------------------------

describe('browsers', () => {
    it('preflight OPTIONS: 204, exact origin echoed, credentials allowed', async () => {
        for (const origin of ['http://localhost:5173', 'https://app.example.com:8443']) {
            const reqHeaders = ['content-type', 'x-appwrite-project', 'x-appwrite-jwt', 'x-sdk-version', 'x-appwrite-response-format', 'x-fallback-cookies'];
            const r = await fetch(`${H.cluster.endpoint}/presences/${uid('p')}`, {
                method: 'OPTIONS',
                headers: { Origin: origin, 'Access-Control-Request-Method': 'PUT', 'Access-Control-Request-Headers': reqHeaders.join(',') },
            });
            const text = await r.text();
            assert.equal(r.status, 204, text);
            assert.equal(text, '');
            assert.equal(r.headers.get('access-control-allow-origin'), origin);
            assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
            const methods = (r.headers.get('access-control-allow-methods') || '').toUpperCase();
            for (const m of ['GET', 'PUT', 'PATCH', 'DELETE']) assert.ok(methods.includes(m), `allow-methods: ${methods}`);
            const allowed = (r.headers.get('access-control-allow-headers') || '').toLowerCase().split(/\s*,\s*/);
            for (const h of reqHeaders) assert.ok(allowed.includes(h) || allowed.includes('*'), `allow-headers lacks ${h}: ${allowed}`);
        }
    });

    it('responses (also errors) carry the echoed origin and credentials', async () => {
        const origin = 'http://127.0.0.1:3000';
        for (const path of ['/v1/presences', `/v1/presences/${uid('nope')}`, '/v1/nothing']) {
            const r = await api(H.cluster, 'GET', path, { key: true, headers: { Origin: origin } });
            assert.equal(r.headers.get('access-control-allow-origin'), origin, show(r));
            assert.equal(r.headers.get('access-control-allow-credentials'), 'true', show(r));
        }
    });

    it('GET /v1/ping answers Pong!; without a project it is 404 project_not_found', async () => {
        const r = await api(H.cluster, 'GET', '/v1/ping');
        assert.equal(r.status, 200, show(r));
        assert.equal(r.text, 'Pong!');
        assert.match(r.headers.get('content-type') || '', /^text\/plain/);
        assertError(await api(H.cluster, 'GET', '/v1/ping', { project: null }), 404, 'project_not_found');
        assertError(await api(H.cluster, 'GET', '/v1/ping', { project: 'no-such-project' }), 404, 'project_not_found');
    });

    it('X-Appwrite-Response-Format of any version is tolerated', async () => {
        for (const v of ['1.9.5', '2.0.0', '2.3.0', '0.1', 'garbage']) {
            const r = await api(H.cluster, 'GET', '/v1/presences', { key: true, headers: { 'X-Appwrite-Response-Format': v } });
            assert.equal(r.status, 200, `${v}: ${show(r)}`);
            assert.deepEqual(Object.keys(r.json), ['total', 'presences']);
        }
    });
});
