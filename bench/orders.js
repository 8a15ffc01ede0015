'use strict';
// Pages in an indexed order against the same pages sorted (README, "Indexes and counts"): a
// cluster of 3 store nodes and 2 gateways (tests/e2e/lib/cluster.js) with two projects holding
// the same N records, "indexed" declaring $createdAt and $updatedAt as indexes and "plain"
// declaring none. Each store node of "indexed" walks its records in the page's order and stops
// after offset + limit; "plain" visits and sorts all of them. Then REQS sequential requests of
// each kind over one keep-alive connection, alternating the projects; client-side p50/p99.
// Not a test: nothing is asserted beyond both projects' pages having the same size and total
// (tests/e2e/lists.test.js checks the pages against a model).
// Usage: PRESENCED_BIN=build/presenced node bench/orders.js [N] [REQS]
const path = require('node:path');
const http = require('node:http');
const crypto = require('node:crypto');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { nodeClient, loadNodeSdk } = require(path.join(E2E, 'lib', 'sdk'));
const { timed, pct } = require('./lib/get');

const N = Number(process.argv[2] || 50000);
const REQS = Number(process.argv[3] || 200);
const KEY = 'bk_' + crypto.randomBytes(16).toString('hex');
const PROJECTS = ['indexed', 'plain'];

const get = (agent, c, project, p) => timed(agent, c, project, KEY, p);

(async () => {
    const project = (id, indexes) => ({ id, keys: [{ name: 'k', secret_env: 'BENCH_KEY' }], jwt: [], indexes });
    const c = await startCluster({
        label: 'bench-orders', stores: 3, gateways: 2, args: ['--list-scan-max', '0'],
        env: { BENCH_KEY: KEY },
        config: { projects: [project('indexed', ['$createdAt', '$updatedAt']), project('plain', [])] },
    });
    try {
        const { Query: Q } = loadNodeSdk();
        const t0 = Date.now();
        for (const id of PROJECTS) {
            const P = nodeClient(c, { key: KEY, project: id }).presences;
            let next = 0;
            await Promise.all(Array.from({ length: 32 }, async () => {
                while (next < N) {
                    const i = next++;
                    await P.upsert({ presenceId: `m${i}`, userId: `u${i}`, status: i % 10 ? 'online' : 'away', metadata: { seat: i } });
                }
            }));
        }
        console.log(`${N} records in each of 2 projects written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const qs = (...q) => q.map((x, i) => `queries[${i}]=${encodeURIComponent(x)}`).join('&');
        const mid = `m${Math.floor(N / 2)}`;
        const cases = [
            ['default order, 25, total', `/v1/presences?${qs(Q.limit(25))}`],
            ['orderDesc($updatedAt), 25, total', `/v1/presences?${qs(Q.orderDesc('$updatedAt'), Q.limit(25))}`],
            ['orderDesc($updatedAt), 25, total=false', `/v1/presences?${qs(Q.orderDesc('$updatedAt'), Q.limit(25))}&total=false`],
            ['orderDesc($updatedAt), 25, cursorAfter halfway', `/v1/presences?${qs(Q.orderDesc('$updatedAt'), Q.cursorAfter(mid), Q.limit(25))}&total=false`],
            ['equal(status, away), orderDesc($updatedAt), 25, total', `/v1/presences?${qs(Q.equal('status', ['away']), Q.orderDesc('$updatedAt'), Q.limit(25))}`],
            ['default order, 1,000, total=false', `/v1/presences?${qs(Q.limit(1000))}&total=false`],
        ];
        for (const [name, p] of cases) {
            const lat = { indexed: [], plain: [] };
            const body = {};
            for (let i = 0; i < 10; i++) for (const id of PROJECTS) await get(agent, c, id, p);
            for (let i = 0; i < REQS; i++) {
                for (const id of PROJECTS) {
                    const r = await get(agent, c, id, p);
                    if (r.status !== 200) throw new Error(`${name} (${id}): status ${r.status} ${r.body.slice(0, 200)}`);
                    lat[id].push(r.ms);
                    const j = JSON.parse(r.body);
                    body[id] = JSON.stringify([j.total, j.presences.length]); // the records differ in their dates
                }
                if (body.indexed !== body.plain) throw new Error(`${name}: totals or sizes differ: ${body.indexed} ${body.plain}`);
            }
            const fmt = (a) => (a.sort((x, y) => x - y), `p50 ${pct(a, 0.5).toFixed(2)} ms, p99 ${pct(a, 0.99).toFixed(2)} ms`);
            console.log(`${name}, ${N} records: indexed ${fmt(lat.indexed)}; sorted ${fmt(lat.plain)}`);
        }
        agent.destroy();
    } finally {
        await c.stop();
    }
})().catch((e) => { console.error(e); process.exit(1); });
