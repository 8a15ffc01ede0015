'use strict';
// A store node's arena grows online (issue 12, item 2): a node started with a 1 MiB arena takes
// megabytes of records without a restart (its segment file grows; the table doubles its arena
// inside the address range it mapped at open, so nothing moves), keeps them across a SIGKILL,
// and with --store-arena-max it stops growing there: a record that does not fit is refused
// (503, the store is full) and changes nothing.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { useCluster } = require('./lib/cluster');
const { api } = require('./lib/http');
const { uid } = require('./lib/check');

const MiB = 1 << 20;
const seg = (c) => `/dev/shm/presenced-${c.name}-store-1`;

async function write(C, id, pad) {
    return api(C(), 'PUT', `/v1/presences/${id}`, { key: true, body: { userId: `u-${id}`, status: 'online', metadata: { pad: 'x'.repeat(pad) } } });
}

async function pool(n, items, fn) {
    const out = [];
    let i = 0;
    await Promise.all(Array.from({ length: n }, async () => {
        while (i < items.length) { const k = i++; out[k] = await fn(items[k]); }
    }));
    return out;
}

describe('the arena grows online', () => {
    const H = useCluster(test, { label: 'arena', stores: 1, gateways: 1, args: ['--store-arena', String(MiB), '--store-capacity', '8192'] });
    const C = () => H.cluster;

    it('a 1 MiB arena takes 6 MB of records, and keeps them across a SIGKILL', { timeout: 120000 }, async () => {
        const before = fs.statSync(seg(C())).size;
        const ids = Array.from({ length: 3000 }, () => uid('a'));
        const rs = await pool(16, ids, (id) => write(C, id, 1500));
        const bad = rs.filter((r) => r.status !== 200);
        assert.equal(bad.length, 0, bad.length ? `${bad.length} refused, first: ${bad[0].status} ${bad[0].text}` : '');
        const after = fs.statSync(seg(C())).size;
        assert.ok(after >= before + 4 * MiB, `the segment grew: ${before} -> ${after} bytes`);
        const old = C().kill('store', 1);
        await C().waitRestarted('store', 1, old);
        let count;
        for (let i = 0; i < 100; i++) {
            count = await api(C(), 'GET', '/v1/presences/count', { key: true });
            if (count.status === 200) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(count.status, 200, count.text);
        assert.equal(count.json.total, 3000);
        for (const id of [ids[0], ids[1500], ids[2999]]) {
            const r = await api(C(), 'GET', `/v1/presences/${id}`, { key: true });
            assert.equal(r.status, 200, r.text);
            assert.equal(r.json.metadata.pad.length, 1500);
        }
    });
});

describe('--store-arena-max', () => {
    const H = useCluster(test, { label: 'arenamax', stores: 1, gateways: 1, args: ['--store-arena', String(MiB), '--store-arena-max', String(2 * MiB), '--store-capacity', '8192'] });
    const C = () => H.cluster;

    it('the arena stops growing there: a record that does not fit is refused and changes nothing', { timeout: 120000 }, async () => {
        const ids = Array.from({ length: 2000 }, () => uid('m'));
        const rs = await pool(8, ids, (id) => write(C, id, 1500));
        const ok = ids.filter((_, i) => rs[i].status === 200);
        const refused = rs.filter((r) => r.status !== 200);
        assert.ok(ok.length > 300 && refused.length > 0, `${ok.length} written, ${refused.length} refused`);
        for (const r of refused) assert.equal(r.status, 503, r.text);
        assert.ok(fs.statSync(seg(C())).size < 4 * MiB + 64 * MiB, 'the segment stayed near its maximum');
        const count = await api(C(), 'GET', '/v1/presences/count', { key: true });
        assert.equal(count.json.total, ok.length, 'the refused writes left nothing');
        const gone = ids.find((_, i) => rs[i].status !== 200);
        assert.equal((await api(C(), 'GET', `/v1/presences/${gone}`, { key: true })).status, 404);
    });
});
