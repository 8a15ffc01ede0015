'use strict';
// Raw HTTP against the cluster, for what the SDKs cannot send (bad input, exact bytes, headers)
// and for pinning requests to a chosen gateway process.
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const { sleep } = require('./cluster');

// One request. opts: body (object -> JSON), rawBody (string/Buffer), headers, key (true = the
// cluster's key, or a string), jwt, project (null = no header), timeoutMs.
async function api(cluster, method, path, opts = {}) {
    const headers = { accept: 'application/json', ...(opts.headers || {}) };
    const project = opts.project === undefined ? cluster.project : opts.project;
    if (project !== null) headers['X-Appwrite-Project'] = project;
    if (opts.key) headers['X-Appwrite-Key'] = opts.key === true ? cluster.apiKey : opts.key;
    if (opts.jwt) headers['X-Appwrite-JWT'] = opts.jwt;
    let body;
    if (opts.rawBody !== undefined) body = opts.rawBody;
    else if (opts.body !== undefined) body = JSON.stringify(opts.body);
    if (body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
    const url = path.startsWith('http') ? path : cluster.url + path;
    const t0 = performance.now();
    const r = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(opts.timeoutMs ?? 10000) });
    const text = await r.text();
    const ms = performance.now() - t0;
    let json;
    try { json = JSON.parse(text); } catch {}
    return { status: r.status, headers: r.headers, text, json, ms, method, path };
}

// Short description of a request/response for assertion messages.
const show = (r) => `${r.method} ${r.path} -> ${r.status} ${String(r.text).slice(0, 300)}`;

// --- which gateway process holds a client connection -------------------------------------

function hexPort(s) { return parseInt(s.split(':')[1], 16); }

// server-side sockets on `port`: remote (client) port -> inode
function serverInodes(port) {
    const map = new Map();
    for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
        let text;
        try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
        for (const line of text.split('\n').slice(1)) {
            const c = line.trim().split(/\s+/);
            if (c.length < 10) continue;
            if (hexPort(c[1]) === port) map.set(hexPort(c[2]), c[9]);
        }
    }
    return map;
}

function socketInodes(pid) {
    const set = new Set();
    let fds = [];
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { return set; }
    for (const fd of fds) {
        try {
            const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
            if (m) set.add(m[1]);
        } catch {}
    }
    return set;
}

function connect(port) {
    return new Promise((resolve, reject) => {
        const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
        s.once('error', reject);
    });
}

// Opens connections until each gateway process holds `perGateway` of them.
// Returns Map(gatewayPid -> [net.Socket]). Throws if the kernel never spreads them.
async function pinnedSockets(cluster, perGateway, maxTries = 60 * perGateway) {
    const gws = cluster.pids('gateway');
    if (gws.length < 2) throw new Error(`expected >= 2 gateway processes, found ${gws.length}`);
    const out = new Map(gws.map((p) => [p, []]));
    const full = () => [...out.values()].every((a) => a.length >= perGateway);
    for (let i = 0; i < maxTries && !full(); i++) {
        const s = await connect(cluster.port);
        let owner;
        for (let k = 0; k < 100 && !owner; k++) { // the gateway accepts within a few ms
            const inode = serverInodes(cluster.port).get(s.localPort);
            if (inode) for (const pid of gws) if (socketInodes(pid).has(inode)) { owner = pid; break; }
            if (!owner) await sleep(5);
        }
        if (owner && out.get(owner).length < perGateway) out.get(owner).push(s);
        else s.destroy();
    }
    if (!full()) {
        for (const a of out.values()) for (const s of a) s.destroy();
        const counts = [...out.entries()].map(([p, a]) => `${p}:${a.length}`).join(' ');
        throw new Error(`connections were not spread over both gateways after ${maxTries} tries (${counts})`);
    }
    return out;
}

// One HTTP/1.1 request over an already connected socket.
function requestOver(cluster, socket, method, path, opts = {}) {
    return new Promise((resolve, reject) => {
        const headers = { accept: 'application/json', 'X-Appwrite-Project': cluster.project, ...(opts.headers || {}) };
        if (opts.key) headers['X-Appwrite-Key'] = opts.key === true ? cluster.apiKey : opts.key;
        if (opts.jwt) headers['X-Appwrite-JWT'] = opts.jwt;
        let body;
        if (opts.body !== undefined) {
            body = Buffer.from(JSON.stringify(opts.body));
            headers['content-type'] = 'application/json';
            headers['content-length'] = body.length;
        }
        const req = http.request({ host: '127.0.0.1', port: cluster.port, method, path, headers, createConnection: () => socket });
        req.setTimeout(opts.timeoutMs ?? 10000, () => req.destroy(new Error(`timeout: ${method} ${path}`)));
        req.on('error', reject);
        req.on('response', (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => {
                const text = Buffer.concat(chunks).toString('utf8');
                let json;
                try { json = JSON.parse(text); } catch {}
                resolve({ status: res.statusCode, headers: res.headers, text, json, method, path });
            });
            res.on('error', reject);
        });
        req.end(body);
    });
}

module.exports = { api, show, pinnedSockets, requestOver, serverInodes, socketInodes };
