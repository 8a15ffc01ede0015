'use strict';
// Large pages under concurrency: a cluster of 2 store nodes and 2 gateways
// (tests/e2e/lib/cluster.js) is filled with RECORDS records by wrk (bench/lib/fill.js), then wrk
// asks for the first page of 5,000 (GET /v1/presences, an API key) over CONNS connections for
// SECS seconds: pages a second and latency as wrk reports them. Not a test: nothing is asserted
// beyond every answer being a 200.
// Usage: PRESENCED_BIN=build/presenced node bench/pagesload.js [RECORDS=10000] [CONNS=4] [SECS=15]
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { execFileSync } = require('node:child_process');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { fill } = require('./lib/fill');

const RECORDS = Number(process.argv[2] || 10000);
const CONNS = Number(process.argv[3] || 4);
const SECS = Number(process.argv[4] || 15);

(async () => {
    const c = await startCluster({ stores: 2, gateways: 2, label: 'bench-pagesload' });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-pagesload-'));
    try {
        await fill(c, dir, RECORDS);
        const q = `/v1/presences?queries[]=${encodeURIComponent(JSON.stringify({ method: 'limit', values: [5000] }))}`;
        const out = execFileSync('wrk', ['-t2', `-c${CONNS}`, `-d${SECS}s`, '--latency',
            '-H', `X-Appwrite-Project: ${c.project}`, '-H', `X-Appwrite-Key: ${c.apiKey}`,
            `http://127.0.0.1:${c.port}${q}`]).toString();
        if (/Non-2xx/.test(out)) throw new Error(`some answers were not 200:\n${out}`);
        console.log(out.split('\n').filter((l) => /Requests\/sec|Latency|50%|99%/.test(l)).map((l) => l.trim()).join('\n'));
        console.log(`${RECORDS} records, first page of 5,000, ${CONNS} connections, ${SECS} s; machine: ` +
            `${os.cpus().length} x ${os.cpus()[0].model}, ${os.release()}`);
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
