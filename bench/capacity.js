'use strict';
// Capacity growth online (issue 12 item 2): a store node started with --store-capacity CAP is
// filled by wrk (bench/lib/fill.js: unique users, so each record also takes a claim) past 7/8 of
// CAP, where it doubles its capacity in place (pd_table_grow: the node stops while its status
// lists are linked again and its indexes set aside; their entries then move back between
// requests, pd_table_grow_step). Printed: the store's log lines (the stop, and the whole rehash),
// and what one keep-alive client sending GET /v1/presences/{id} back to back saw meanwhile (its
// slowest answer, and any answer that was not a 200).
// Not a test: nothing is asserted.
// Usage: PRESENCED_BIN=build/presenced node bench/capacity.js [CAP=1048576]
const path = require('node:path');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster, sleep } = require(path.join(E2E, 'lib', 'cluster'));
const { api } = require(path.join(E2E, 'lib', 'http'));
const { fill } = require('./lib/fill');
const { get } = require('./lib/get');

const CAP = Number(process.argv[2] || 1048576);

(async () => {
    const c = await startCluster({ stores: 1, gateways: 1, label: 'bench-capacity',
        args: ['--store-capacity', String(CAP), '--store-arena', String(Math.max(1 << 30, CAP * 1024))] });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-capacity-'));
    try {
        await api(c, 'PUT', '/v1/presences/probe', { key: true, body: { userId: 'probe', status: 'online' } });
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        let stop = false, slowest = 0, n = 0, slowAt = 0;
        const errors = {};
        const prober = (async () => {
            while (!stop) {
                const t0 = process.hrtime.bigint();
                const s = await get(agent, c, '/v1/presences/probe');
                const ms = Number(process.hrtime.bigint() - t0) / 1e6;
                n++;
                if (s !== 200) errors[s] = (errors[s] || 0) + 1;
                if (ms > slowest) { slowest = ms; slowAt = Date.now(); }
            }
        })();
        const target = Math.ceil(CAP * 0.9);
        const { n: filled, secs } = await fill(c, dir, target);
        await sleep(3000);
        stop = true;
        await prober;
        const grew = c.log().split('\n').filter((l) => /capacity grew|indexes rehashed/.test(l));
        console.log(`${filled} records written in ${secs.toFixed(1)} s (capacity ${CAP})`);
        for (const l of grew) console.log(l.replace(/^.*store node/, 'store node'));
        console.log(`prober: ${n} GETs, slowest ${slowest.toFixed(1)} ms, non-200: ${JSON.stringify(errors)}`);
        console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model.split(' ').slice(0, 2).join(' ')}, ${Math.round(os.totalmem() / 2 ** 30)} GiB`);
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
