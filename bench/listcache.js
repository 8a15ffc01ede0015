'use strict';
// List latency with and without the list cache (README, "List cache"): a cluster of 3 store
// nodes and 2 gateways (tests/e2e/lib/cluster.js), ROSTER records in one room, then REQS
// sequential lists of the whole room (one page) over one keep-alive connection: ttl=0 (the
// store nodes scan and the broker merges) and ttl=60 (the broker's cache answers). Client-side
// p50/p99 in ms. Not a test: nothing is asserted beyond the answers being complete.
// Usage: PRESENCED_BIN=build/presenced node bench/listcache.js [ROSTER] [REQS]
const path = require('node:path');
const http = require('node:http');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { nodeClient, loadNodeSdk } = require(path.join(E2E, 'lib', 'sdk'));

const ROSTER = Number(process.argv[2] || 5000);
const REQS = Number(process.argv[3] || 300);

function get(agent, c, p) {
    return new Promise((resolve, reject) => {
        const t0 = process.hrtime.bigint();
        http.get({ host: '127.0.0.1', port: c.port, path: p, agent, headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } }, (res) => {
            let n = 0;
            res.on('data', (d) => { n += d.length; });
            res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, status: res.statusCode, cache: res.headers['x-appwrite-cache'], bytes: n }));
        }).on('error', reject);
    });
}

const pct = (a, p) => a[Math.min(a.length - 1, Math.floor(a.length * p))];

(async () => {
    const c = await startCluster({ label: 'bench-listcache', stores: 3, gateways: 2 });
    try {
        const { Query } = loadNodeSdk();
        const P = nodeClient(c, {}).presences;
        let next = 0;
        await Promise.all(Array.from({ length: 32 }, async () => {
            while (next < ROSTER) {
                const i = next++;
                await P.upsert({ presenceId: `m${i}`, userId: `u${i}`, status: 'online', metadata: { room: 'hall', seat: i } });
            }
        }));
        const q = encodeURIComponent(Query.equal('status', ['online']));
        const lim = encodeURIComponent(Query.limit(Math.min(ROSTER, 5000)));
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        for (const ttl of [0, 60]) {
            const p = `/v1/presences?queries[0]=${q}&queries[1]=${lim}&ttl=${ttl}`;
            for (let i = 0; i < 20; i++) await get(agent, c, p); // warm up (and store, for ttl=60)
            const lat = [];
            let bytes = 0, hits = 0;
            for (let i = 0; i < REQS; i++) {
                const r = await get(agent, c, p);
                if (r.status !== 200) throw new Error(`status ${r.status}`);
                lat.push(r.ms);
                bytes = r.bytes;
                if (r.cache === 'hit') hits++;
            }
            lat.sort((a, b) => a - b);
            console.log(`roster ${ROSTER}, ttl=${ttl}: p50 ${pct(lat, 0.5).toFixed(2)} ms, p99 ${pct(lat, 0.99).toFixed(2)} ms, ${bytes} bytes, ${hits}/${REQS} hits`);
        }
        agent.destroy();
    } finally {
        await c.stop();
    }
})().catch((e) => { console.error(e); process.exit(1); });
