'use strict';
// What a small project's unindexed list costs on store nodes shared with a large project
// (README, "Indexes and counts"): a cluster of 2 store nodes and 2 gateways
// (tests/e2e/lib/cluster.js), the cluster's own project filled with N records by wrk
// (bench/lib/fill.js) and a project "small" with M records, neither declaring an index. A list
// with no equal() on $id, userId or status walks, on each node, the status chains of its
// project's statuses (st_projects.h) when the project holds under half the node's records, and
// every record of the node otherwise (so the large project's lists are the reference). Then REQS
// sequential requests of each kind over one keep-alive connection; client-side p50/p99.
// Not a test: nothing is asserted beyond the totals (tests/e2e/projlists.test.js checks lists
// against a model).
// Usage: PRESENCED_BIN=build/presenced node bench/projscan.js [N] [M] [REQS]
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const crypto = require('node:crypto');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { nodeClient, loadNodeSdk } = require(path.join(E2E, 'lib', 'sdk'));
const { fill, records } = require('./lib/fill');
const { timed, pct } = require('./lib/get');

const N = Number(process.argv[2] || 100000);
const M = Number(process.argv[3] || 1000);
const REQS = Number(process.argv[4] || 200);
const KEY = 'bk_' + crypto.randomBytes(16).toString('hex');

(async () => {
    const c = await startCluster({
        label: 'bench-projscan', stores: 2, gateways: 2,
        env: { BENCH_KEY: KEY },
        config: { projects: [{ id: 'small', keys: [{ name: 'k', secret_env: 'BENCH_KEY' }], jwt: [] }] },
    });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-projscan-'));
    try {
        const { Query: Q } = loadNodeSdk();
        const P = nodeClient(c, { key: KEY, project: 'small' }).presences;
        let next = 0;
        await Promise.all(Array.from({ length: 16 }, async () => {
            while (next < M) {
                const i = next++;
                await P.upsert({ presenceId: `s${i}`, userId: `su${i}`, status: i % 10 ? 'online' : 'away', metadata: { seat: i } });
            }
        }));
        const f = await fill(c, dir, N + M);
        const held = await records(c);
        console.log(`${M} records in "small", ${held - M} in "${c.project}" (wrk: ${f.secs.toFixed(1)} s)`);
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const qs = (...q) => q.map((x, i) => `queries[${i}]=${encodeURIComponent(x)}`).join('&');
        const source = Q.equal('source', ['rest']);
        const cases = [
            ['small', KEY, `equal(source), 25, total`, `/v1/presences?${qs(source, Q.limit(25))}`, M],
            ['small', KEY, `count, equal(source)`, `/v1/presences/count?${qs(source)}`, M],
            [c.project, c.apiKey, `equal(source), 25, total`, `/v1/presences?${qs(source, Q.limit(25))}`, Math.min(held - M, 5000)],
        ];
        for (const [project, key, name, p, total] of cases) {
            const lat = [];
            for (let i = 0; i < 10; i++) await timed(agent, c, project, key, p);
            for (let i = 0; i < REQS; i++) {
                const r = await timed(agent, c, project, key, p);
                if (r.status !== 200) throw new Error(`${project} ${name}: status ${r.status} ${String(r.body).slice(0, 200)}`);
                if (JSON.parse(r.body).total !== total) throw new Error(`${project} ${name}: total ${JSON.parse(r.body).total}, not ${total}`);
                lat.push(r.ms);
            }
            lat.sort((x, y) => x - y);
            console.log(`${project}: ${name}: p50 ${pct(lat, 0.5).toFixed(2)} ms, p99 ${pct(lat, 0.99).toFixed(2)} ms`);
        }
        agent.destroy();
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
