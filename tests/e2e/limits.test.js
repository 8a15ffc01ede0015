'use strict';
// Per-project limits from the projects file: records (cluster-wide, checked by the broker on
// every new record) and metadata bytes. Limits apply to one project and not to its neighbour.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { startCluster, sleep } = require('./lib/cluster');
const { api } = require('./lib/http');

const show = (r) => `${r.method} ${r.path} -> ${r.status} ${String(r.text).slice(0, 300)}`;

test('per-project limits: records and metadata bytes', { timeout: 90000 }, async () => {
    const key = 'lim-' + crypto.randomBytes(16).toString('hex');
    const config = { projects: [
        { id: 'small', keys: [{ name: 'k', secret_env: 'PD_E2E_LIMIT_KEY' }],
          limits: { records: 3, metadata_bytes: 64 } },
        { id: 'big', keys: [{ name: 'k', secret_env: 'PD_E2E_LIMIT_KEY' }] },
    ] };
    const c = await startCluster({ label: 'limits', config, env: { PD_E2E_LIMIT_KEY: key } });
    try {
        const put = (project, id, user, extra = {}) =>
            api(c, 'PUT', `/v1/presences/${id}`, { key, project, body: { userId: user, status: 'online', ...extra } });
        // Three users fill the project (spread over both store nodes by their ids).
        for (let i = 0; i < 3; i++) {
            const r = await put('small', `p${i}`, `u${i}`);
            assert.equal(r.status, 200, show(r));
        }
        await sleep(700); // the broker learns counts from the store nodes' heartbeats (250 ms)
        const over = await put('small', 'p3', 'u3');
        assert.equal(over.status, 403, show(over));
        assert.equal(over.json.type, 'presence_limit_exceeded');
        assert.match(over.json.message, /limit of 3 presence records/);
        // Nothing was written, and the refused user did not keep a claim.
        assert.equal((await api(c, 'GET', '/v1/presences/p3', { key, project: 'small' })).status, 404);
        const list = await api(c, 'GET', '/v1/presences', { key, project: 'small' });
        assert.equal(list.json.total, 3, show(list));
        // Users who already have a record may still update it.
        const again = await put('small', 'p0', 'u0', { status: 'away' });
        assert.equal(again.status, 200, show(again));
        assert.equal(again.json.status, 'away');
        // Another project is not limited.
        for (let i = 0; i < 5; i++) assert.equal((await put('big', `b${i}`, `u${i}`)).status, 200);
        // A delete makes room again.
        assert.equal((await api(c, 'DELETE', '/v1/presences/p1', { key, project: 'small', body: {} })).status, 204);
        await sleep(700);
        const now = await put('small', 'p3', 'u3');
        assert.equal(now.status, 200, show(now));
        assert.equal(now.json.$id, 'p3');
        // Every store node and the broker killed: the restarted nodes count their records again
        // while they serve, and the new broker learns the counts from them: still full.
        const olds = { store1: c.pids('store', 1), store2: c.pids('store', 2), broker: c.pids('broker') };
        c.kill('broker', undefined, 'SIGKILL');
        c.kill('store', 1, 'SIGKILL');
        c.kill('store', 2, 'SIGKILL');
        await c.waitRestarted('broker', undefined, olds.broker);
        await c.waitRestarted('store', 1, olds.store1);
        await c.waitRestarted('store', 2, olds.store2);
        await c.waitHealthy(20000);
        await sleep(1000);
        const full = await put('small', 'p4', 'u4');
        assert.equal(full.status, 403, `after the restarts: ${show(full)}`);
        assert.equal(full.json.type, 'presence_limit_exceeded');
        assert.equal((await put('big', 'b5', 'u5')).status, 200);
        assert.match(c.log(), /counted \d+ records in \d+ projects/);
        // metadata_bytes: 64 bytes of encoded JSON.
        const fat = await put('small', 'p0', 'u0', { metadata: { blob: 'x'.repeat(80) } });
        assert.equal(fat.status, 400, show(fat));
        assert.equal(fat.json.type, 'general_argument_invalid');
        const thin = await put('small', 'p0', 'u0', { metadata: { a: 1 } });
        assert.equal(thin.status, 200, show(thin));
        assert.deepEqual(thin.json.metadata, { a: 1 });
    } catch (e) {
        c.failed = true;
        throw e;
    } finally {
        await c.stop();
    }
});
