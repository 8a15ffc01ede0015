'use strict';
// A store node's arena grows online (issue 12, item 2): a node started with a 1 MiB arena takes
// megabytes of records without a restart (its segment file grows; the table doubles its arena
// inside the address range it mapped at open, so nothing moves), keeps them across a SIGKILL,
// and with --store-arena-max it stops growing there: a record that does not fit is refused
// (503, the store is full) and changes nothing. Its capacity (slots, claims and their indexes)
// grows online too: a node started for 1,024 records takes 3,000 without a restart, its records
// keep their slots (the reaper still expires the ones due), a SIGKILL keeps the grown segment,
// and --store-capacity-max bounds it.
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

// The count once the restarted store node answers (up to 10 s).
async function countAfterRestart(C) {
    let count;
    for (let i = 0; i < 100; i++) {
        count = await api(C(), 'GET', '/v1/presences/count', { key: true });
        if (count.status === 200) break;
        await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(count.status, 200, count.text);
    return count.json.total;
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
        assert.equal(await countAfterRestart(C), 3000);
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
        const before = fs.statSync(seg(C())).size;
        const ids = Array.from({ length: 2000 }, () => uid('m'));
        const rs = await pool(8, ids, (id) => write(C, id, 1500));
        const ok = ids.filter((_, i) => rs[i].status === 200);
        const refused = rs.filter((r) => r.status !== 200);
        assert.ok(ok.length > 300 && refused.length > 0, `${ok.length} written, ${refused.length} refused`);
        for (const r of refused) assert.equal(r.status, 503, r.text);
        const after = fs.statSync(seg(C())).size;
        assert.ok(after > before && after - before <= MiB, `the arena grew from 1 MiB to its 2 MiB and no further: ${before} -> ${after} bytes`);
        const count = await api(C(), 'GET', '/v1/presences/count', { key: true });
        assert.equal(count.json.total, ok.length, 'the refused writes left nothing');
        const gone = ids.find((_, i) => rs[i].status !== 200);
        assert.equal((await api(C(), 'GET', `/v1/presences/${gone}`, { key: true })).status, 404);
    });
});

describe('the capacity grows online', () => {
    const H = useCluster(test, { label: 'capacity', stores: 1, gateways: 1, args: ['--store-capacity', '1024', '--store-capacity-max', '4096'] });
    const C = () => H.cluster;
    const stored = async () => (await C().metrics()).sum('presenced_store_records');

    it('1,024 slots take 3,000 records without a restart; the due ones still expire; a SIGKILL keeps them; the maximum holds', { timeout: 180000 }, async () => {
        const pid = C().pids('store', 1)[0];
        const soon = new Date(Date.now() + 8000).toISOString();
        const ids = Array.from({ length: 3000 }, () => uid('k'));
        // the first 300 expire in 8 s: their deadlines are learned before the growths
        const rs = await pool(16, ids, (id) => api(C(), 'PUT', `/v1/presences/${id}`, { key: true,
            body: { userId: `u-${id}`, status: 'online', ...(ids.indexOf(id) < 300 ? { expiresAt: soon } : {}) } }));
        const bad = rs.filter((r) => r.status !== 200);
        assert.equal(bad.length, 0, bad.length ? `${bad.length} refused, first: ${bad[0].status} ${bad[0].text}` : '');
        assert.deepEqual(C().pids('store', 1), [pid], 'the store node was not restarted');
        let cap;
        for (let i = 0; i < 20 && cap !== 3456; i++) { // the next heartbeat (250 ms) reports it
            cap = (await C().metrics()).sum('presenced_store_capacity');
            if (cap !== 3456) await new Promise((r) => setTimeout(r, 100));
        }
        // grown by half at 7/8 of it, three times: 1,024 -> 1,536 -> 2,304 -> 3,456
        assert.equal(cap, 3456, 'presenced_store_capacity: grown three times from 1,024');
        assert.equal((await api(C(), 'GET', '/v1/presences/count', { key: true })).json.total, 3000);
        for (const id of [ids[0], ids[1000], ids[2999]]) {
            const r = await api(C(), 'GET', `/v1/presences/${id}`, { key: true });
            assert.equal(r.status, 200, r.text);
            assert.equal(r.json.userId, `u-${id}`);
        }
        // the reaper deletes the 300 due records (not only hidden: gone from the store)
        let n;
        for (let i = 0; i < 150; i++) {
            n = await stored();
            if (n === 2700) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(n, 2700, 'the 300 records due were deleted by the reaper');
        assert.equal((await api(C(), 'GET', `/v1/presences/${ids[0]}`, { key: true })).status, 404);

        const old = C().kill('store', 1);
        await C().waitRestarted('store', 1, old);
        assert.equal(await countAfterRestart(C), 2700, 'the grown segment was re-attached whole');
        assert.equal((await api(C(), 'GET', `/v1/presences/${ids[2999]}`, { key: true })).status, 200);

        // up to --store-capacity-max (4,096 records) and no further: new records get 503
        const more = Array.from({ length: 1600 }, () => uid('x'));
        const rs2 = await pool(16, more, (id) => api(C(), 'PUT', `/v1/presences/${id}`, { key: true, body: { userId: `u-${id}`, status: 'online' } }));
        const ok = rs2.filter((r) => r.status === 200).length;
        const refused = rs2.filter((r) => r.status !== 200);
        assert.ok(refused.length > 0 && 2700 + ok <= 4096 && 2700 + ok >= 3584, `${ok} written, ${refused.length} refused`);
        for (const r of refused) assert.equal(r.status, 503, r.text);
        assert.equal((await api(C(), 'GET', '/v1/presences/count', { key: true })).json.total, 2700 + ok);
    });
});
