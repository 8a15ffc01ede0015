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

module.exports = { get };
