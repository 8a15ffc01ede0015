'use strict';
// One GET through keep-alive `agent` to cluster c (tests/e2e/lib/cluster.js) with its API key:
// resolves to the status code, or 0 when the request failed or took more than 10 s. The probe
// of bench/restart.js and bench/capacity.js.
const http = require('node:http');

function get(agent, c, p) {
    return new Promise((resolve) => {
        const req = http.get({ host: '127.0.0.1', port: c.port, path: p, agent, headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode));
        });
        req.setTimeout(10000, () => req.destroy());
        req.on('error', () => resolve(0));
    });
}

// One GET through keep-alive `agent` to cluster c as `project` with API key `key`: resolves to
// {ms, status, body} (ms: client-side time to the last byte). The benchmarks' timed request.
function timed(agent, c, project, key, p) {
    return new Promise((resolve, reject) => {
        const t0 = process.hrtime.bigint();
        http.get({ host: '127.0.0.1', port: c.port, path: p, agent, headers: { 'X-Appwrite-Project': project, 'X-Appwrite-Key': key } }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, status: res.statusCode, body: Buffer.concat(chunks) }));
        }).on('error', reject);
    });
}

// The p-th quantile (0..1) of sorted latencies a.
const pct = (a, p) => a[Math.min(a.length - 1, Math.floor(a.length * p))];

module.exports = { get, timed, pct };
