'use strict';
// Counts and lists on an indexed metadata attribute against the same filter on an unindexed one,
// for an equal() and for a range (startsWith)
// (README, "Indexes and counts"): a cluster of 3 store nodes and 2 gateways
// (tests/e2e/lib/cluster.js) whose project indexes metadata.room, with --list-scan-max 0 (no
// cap, so the unindexed filter scans); ROSTER records in room "hall" and OTHERS spread over
// 100 other rooms, each record also carrying the same value unindexed (metadata.zone). Then
// REQS sequential requests of each kind over one keep-alive connection; client-side p50/p99;
// then the whole roster of room "hall" read in pages of 5,000 (the sum of its pages' times).
// Not a test: nothing is asserted beyond the answers being right.
// Usage: PRESENCED_BIN=build/presenced node bench/counts.js [ROSTER] [OTHERS] [REQS]
const path = require('node:path');
const http = require('node:http');
const crypto = require('node:crypto');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { nodeClient, loadNodeSdk } = require(path.join(E2E, 'lib', 'sdk'));
const { timed, pct } = require('./lib/get');

const ROSTER = Number(process.argv[2] || 10000);
const OTHERS = Number(process.argv[3] || 90000);
const REQS = Number(process.argv[4] || 200);
const KEY = 'bk_' + crypto.randomBytes(16).toString('hex');

const get = (agent, c, p) => timed(agent, c, 'bench', KEY, p);

(async () => {
    const c = await startCluster({
        label: 'bench-counts', stores: 3, gateways: 2, args: ['--list-scan-max', '0'],
        env: { BENCH_KEY: KEY },
        config: { projects: [{ id: 'bench', keys: [{ name: 'k', secret_env: 'BENCH_KEY' }], jwt: [], indexes: ['metadata.room'] }] },
    });
    try {
        const { Query: Q } = loadNodeSdk();
        const P = nodeClient(c, { key: KEY, project: 'bench' }).presences;
        const total = ROSTER + OTHERS;
        let next = 0;
        const t0 = Date.now();
        await Promise.all(Array.from({ length: 32 }, async () => {
            while (next < total) {
                const i = next++;
                const room = i < ROSTER ? 'hall' : `r${i % 100}`;
                await P.upsert({ presenceId: `m${i}`, userId: `u${i}`, status: 'online', metadata: { room, zone: room, seat: i } });
            }
        }));
        console.log(`${total} records written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const qs = (...q) => q.map((x, i) => `queries[${i}]=${encodeURIComponent(x)}`).join('&');
        const lim = Q.limit(Math.min(ROSTER, 5000));
        const cases = [
            ['count, indexed equal (metadata.room)', `/v1/presences/count?${qs(Q.equal('metadata.room', ['hall']))}`, ROSTER],
            ['count, unindexed equal (metadata.zone)', `/v1/presences/count?${qs(Q.equal('metadata.zone', ['hall']))}`, ROSTER],
            [`list of ${Math.min(ROSTER, 5000)}, indexed equal`, `/v1/presences?${qs(Q.equal('metadata.room', ['hall']), lim)}`, Math.min(ROSTER, 5000)],
            [`list of ${Math.min(ROSTER, 5000)}, unindexed equal`, `/v1/presences?${qs(Q.equal('metadata.zone', ['hall']), lim)}`, Math.min(ROSTER, 5000)],
            // ranges: only "hall" starts with "ha" (the others are r0..r99)
            ['count, indexed range (startsWith)', `/v1/presences/count?${qs(Q.startsWith('metadata.room', 'ha'))}`, ROSTER],
            ['count, unindexed range (startsWith)', `/v1/presences/count?${qs(Q.startsWith('metadata.zone', 'ha'))}`, ROSTER],
            [`list of ${Math.min(ROSTER, 5000)}, indexed range`, `/v1/presences?${qs(Q.startsWith('metadata.room', 'ha'), lim)}`, Math.min(ROSTER, 5000)],
            [`list of ${Math.min(ROSTER, 5000)}, unindexed range`, `/v1/presences?${qs(Q.startsWith('metadata.zone', 'ha'), lim)}`, Math.min(ROSTER, 5000)],
        ];
        for (const [name, p, want] of cases) {
            for (let i = 0; i < 10; i++) await get(agent, c, p);
            const lat = [];
            let bytes = 0;
            for (let i = 0; i < REQS; i++) {
                const r = await get(agent, c, p);
                if (r.status !== 200) throw new Error(`${name}: status ${r.status} ${r.body.slice(0, 200)}`);
                const j = JSON.parse(r.body);
                const got = p.includes('/count') ? j.total : j.presences.length;
                if (got !== want) throw new Error(`${name}: ${got}, not ${want}`);
                lat.push(r.ms);
                bytes = r.body.length;
            }
            lat.sort((a, b) => a - b);
            console.log(`${name} of ${total} records: p50 ${pct(lat, 0.5).toFixed(2)} ms, p99 ${pct(lat, 0.99).toFixed(2)} ms, ${bytes} bytes`);
        }
        // the whole filtered roster, as a client reads it: pages of 5,000 by offset up to the
        // first short page (the time of all its pages)
        for (const [name, attr] of [['indexed', 'metadata.room'], ['unindexed', 'metadata.zone']]) {
            const page = (off) => `/v1/presences?${qs(Q.equal(attr, ['hall']), Q.limit(5000), Q.offset(off))}`;
            const lat = [];
            for (let i = 0; i < 10 + REQS; i++) {
                let ms = 0, n = 0;
                for (let off = 0; ; off += 5000) {
                    const r = await get(agent, c, page(off));
                    if (r.status !== 200) throw new Error(`roster: status ${r.status}`);
                    ms += r.ms;
                    const got = JSON.parse(r.body).presences.length;
                    n += got;
                    if (got < 5000) break;
                }
                if (n !== ROSTER) throw new Error(`roster: ${n}, not ${ROSTER}`);
                if (i >= 10) lat.push(ms);
            }
            lat.sort((a, b) => a - b);
            console.log(`whole roster of ${ROSTER}, ${name} equal, pages of 5,000 of ${total} records: p50 ${pct(lat, 0.5).toFixed(2)} ms, p99 ${pct(lat, 0.99).toFixed(2)} ms`);
        }
        agent.destroy();
    } finally {
        await c.stop();
    }
})().catch((e) => { console.error(e); process.exit(1); });
