'use strict';
// The pages of a large roster, one at a time: a cluster of STORES store nodes and 2 gateways
// (tests/e2e/lib/cluster.js) is filled with RECORDS records by wrk (bench/lib/fill.js), then
// GET /v1/presences with an API key, limit 5,000, at offsets 0, 5,000, ... up to the first
// empty page, REPS times each (after 10 not counted) over one keep-alive connection: p50, p99 and min per page, the
// server's CPU per page (the cluster's processes by role, from /proc: steadier than the latency
// on a shared VM) and the response's bytes. Not a test: nothing is asserted.
// Usage: PRESENCED_BIN=build/presenced node bench/pages.js [RECORDS=10000] [STORES=2] [REPS=100]
const path = require('node:path');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { fill } = require('./lib/fill');

const RECORDS = Number(process.argv[2] || 10000);
const STORES = Number(process.argv[3] || 2);
const REPS = Number(process.argv[4] || 100);
const LIMIT = 5000;

// CPU time (user + system, ms) of the cluster's processes so far, by role
function serverCpuMs(c) {
    const ms = {};
    for (const p of c.procs()) {
        try {
            const f = fs.readFileSync(`/proc/${p.pid}/stat`, 'utf8').split(') ')[1].split(' ');
            const role = p.role && !p.role.startsWith('-') ? p.role : 'supervisor';
            ms[role] = (ms[role] || 0) + (Number(f[11]) + Number(f[12])) * 10; // USER_HZ 100
        } catch {}
    }
    return ms;
}

function get(agent, c, p) {
    return new Promise((resolve, reject) => {
        const t0 = performance.now();
        http.get({ host: '127.0.0.1', port: c.port, path: p, agent, headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } }, (res) => {
            let n = 0;
            res.on('data', (d) => { n += d.length; });
            res.on('end', () => resolve({ ms: performance.now() - t0, bytes: n, status: res.statusCode }));
        }).on('error', reject);
    });
}

(async () => {
    const c = await startCluster({ stores: STORES, gateways: 2, label: 'bench-pages' });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-pages-'));
    try {
        await fill(c, dir, RECORDS);
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const q = (off) => `/v1/presences?queries[]=${encodeURIComponent(JSON.stringify({ method: 'limit', values: [LIMIT] }))}` +
            `&queries[]=${encodeURIComponent(JSON.stringify({ method: 'offset', values: [off] }))}`;
        for (let off = 0; off <= RECORDS; off += LIMIT) {
            const t = [];
            let bytes = 0;
            for (let i = 0; i < 10; i++) await get(agent, c, q(off)); // warm: not counted
            const cpu0 = serverCpuMs(c);
            for (let i = 0; i < REPS; i++) {
                const r = await get(agent, c, q(off));
                if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
                t.push(r.ms);
                bytes = r.bytes;
            }
            const cpu1 = serverCpuMs(c), roles = Object.keys(cpu1).filter((r) => r !== 'reaper' && r !== 'supervisor');
            const per = (r) => ((cpu1[r] - (cpu0[r] || 0)) / REPS);
            const cpu = roles.reduce((a, r) => a + per(r), 0);
            t.sort((a, b) => a - b);
            const at = (p) => t[Math.min(t.length - 1, Math.floor(t.length * p))];
            console.log(`offset ${off}: p50 ${at(0.5).toFixed(1)} ms, p99 ${at(0.99).toFixed(1)} ms, ` +
                `min ${t[0].toFixed(1)} ms, server CPU ${cpu.toFixed(1)} ms (` +
                roles.map((r) => `${r} ${per(r).toFixed(1)}`).join(', ') + `), ${bytes} bytes`);
        }
        console.log(`${RECORDS} records, ${STORES} store nodes; machine: ${os.cpus().length} x ${os.cpus()[0].model}, ${os.release()}`);
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
