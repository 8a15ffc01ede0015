'use strict';
// Realtime clients for the tests: raw `ws` sockets (for what the SDK cannot send, and for the
// bulk), the web SDK's Realtime class with a recording WebSocket underneath (so a test can
// wait for the server's `response` frames), event collectors, and the gateway process that
// holds a given client socket.
const net = require('node:net');
const crypto = require('node:crypto');
const path = require('node:path');
const { sleep } = require('./cluster');
const { serverInodes, socketInodes } = require('./http');

const WS = require(path.resolve(__dirname, '..', 'node_modules', 'ws'));

// Every WebSocket the SDK opens records the frames it receives (parsed JSON) in __msgs.
class RecordingWebSocket extends WS {
    constructor(...args) {
        super(...args);
        this.__msgs = [];
        this.on('message', (d) => {
            try { this.__msgs.push(JSON.parse(d.toString())); } catch { this.__msgs.push({ raw: d.toString() }); }
        });
    }
}

function installRecordingWebSocket() {
    globalThis.WebSocket = RecordingWebSocket;
}

// Polls until fn() returns a truthy value; returns it, or throws after timeoutMs.
async function until(fn, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(10);
    }
}

// A raw WebSocket client: every frame received is kept; next(pred) waits for the first frame
// after the read cursor that matches.
class RawClient {
    constructor(ws) {
        this.ws = ws;
        this.msgs = [];
        this.cursor = 0;
        this.closed = new Promise((resolve) => {
            ws.on('close', (code, reason) => { this.closeInfo = { code, reason: reason.toString() }; resolve(this.closeInfo); });
        });
        ws.on('message', (d, isBinary) => {
            let m;
            try { m = JSON.parse(d.toString()); } catch { m = { raw: d.toString(), isBinary }; }
            this.msgs.push(m);
        });
        ws.on('error', (e) => { this.error = e; });
    }

    static open(url, opts = {}) {
        return new Promise((resolve, reject) => {
            const ws = new WS(url, { headers: opts.headers, localAddress: opts.localAddress, createConnection: opts.createConnection, handshakeTimeout: opts.timeoutMs ?? 10000 });
            const c = new RawClient(ws);
            ws.once('open', () => resolve(c));
            ws.once('error', reject);
            ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode} instead of 101`)));
        });
    }

    send(x) { this.ws.send(typeof x === 'string' || Buffer.isBuffer(x) ? x : JSON.stringify(x)); }

    get localPort() { return this.ws._socket && this.ws._socket.localPort; }

    async next(pred = () => true, timeoutMs = 5000, what = 'a frame') {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            while (this.cursor < this.msgs.length) {
                const m = this.msgs[this.cursor++];
                if (pred(m)) return m;
            }
            if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.msgs.slice(-5)).slice(0, 1500)}`);
            if (this.closeInfo && this.cursor >= this.msgs.length) throw new Error(`socket closed (${JSON.stringify(this.closeInfo)}) while waiting for ${what}`);
            await sleep(5);
        }
    }

    // The next frame of a type (and `to`, for responses).
    expect(type, to, timeoutMs = 5000) {
        return this.next((m) => m.type === type && (to === undefined || (m.data && m.data.to === to)), timeoutMs, `${type}${to ? '/' + to : ''}`);
    }

    // Sends and waits for the answer: a response to `type`, or an error.
    async request(msg, timeoutMs = 5000) {
        this.send(msg);
        return this.next((m) => m.type === 'error' || m.type === 'pong' || (m.type === 'response' && m.data && m.data.to === msg.type), timeoutMs, `the answer to ${msg.type}`);
    }

    events(pred = () => true) { return this.msgs.filter((m) => m.type === 'event' && pred(m)); }

    close(code = 1000) { try { this.ws.close(code); } catch {} }
    terminate() { try { this.ws.terminate(); } catch {} }
}

function rtUrl(cluster, { project, jwt, port } = {}) {
    const q = [];
    const p = project === undefined ? cluster.project : project;
    if (p !== null) q.push(`project=${encodeURIComponent(p)}`);
    if (jwt) q.push(`jwt=${encodeURIComponent(jwt)}`);
    return `ws://127.0.0.1:${port ?? cluster.port}/v1/realtime${q.length ? '?' + q.join('&') : ''}`;
}

// Opens a raw client and waits for `connected` (or the error frame of a refused open).
async function rawConnect(cluster, opts = {}) {
    const c = await RawClient.open(rtUrl(cluster, opts), opts);
    c.hello = await c.next((m) => m.type === 'connected' || m.type === 'error', 5000, 'connected');
    return c;
}

// Subscribes a raw client; returns the response frame.
async function rawSubscribe(c, rows) {
    const r = await c.request({ type: 'subscribe', data: rows });
    if (r.type !== 'response') throw new Error(`subscribe failed: ${JSON.stringify(r)}`);
    return r;
}

// The gateway process (pid) that holds the server side of a client connection.
async function gatewayOf(cluster, localPort, port = cluster.port) {
    const gws = cluster.pids('gateway');
    for (let k = 0; k < 200; k++) {
        const inode = serverInodes(port).get(localPort);
        if (inode) for (const pid of gws) if (socketInodes(pid).has(inode)) return pid;
        await sleep(5);
    }
    throw new Error(`no gateway holds the connection from port ${localPort}`);
}

// A raw client on a chosen gateway process: connects until the kernel hands it there.
async function rawConnectTo(cluster, pid, opts = {}, maxTries = 200) {
    for (let i = 0; i < maxTries; i++) {
        const c = await rawConnect(cluster, opts);
        if ((await gatewayOf(cluster, c.localPort)) === pid) return c;
        c.terminate();
    }
    throw new Error(`could not get a connection on gateway ${pid}`);
}

// One REST request over a fresh connection to a chosen gateway process.
async function restVia(cluster, pid, method, pathname, opts = {}) {
    const http = require('node:http');
    for (let i = 0; i < 200; i++) {
        const s = await new Promise((resolve, reject) => {
            const sock = net.connect({ host: '127.0.0.1', port: cluster.port }, () => resolve(sock));
            sock.once('error', reject);
        });
        if ((await gatewayOf(cluster, s.localPort)) !== pid) { s.destroy(); continue; }
        return await new Promise((resolve, reject) => {
            const headers = { accept: 'application/json', 'X-Appwrite-Project': cluster.project };
            if (opts.key) headers['X-Appwrite-Key'] = cluster.apiKey;
            if (opts.jwt) headers['X-Appwrite-JWT'] = opts.jwt;
            let body;
            if (opts.body !== undefined) {
                body = Buffer.from(JSON.stringify(opts.body));
                headers['content-type'] = 'application/json';
                headers['content-length'] = body.length;
            }
            const req = http.request({ host: '127.0.0.1', port: cluster.port, method, path: pathname, headers, createConnection: () => s });
            req.setTimeout(10000, () => req.destroy(new Error(`timeout: ${method} ${pathname}`)));
            req.on('error', reject);
            req.on('response', (res) => {
                const chunks = [];
                res.on('data', (c) => chunks.push(c));
                res.on('end', () => {
                    const text = Buffer.concat(chunks).toString('utf8');
                    let json;
                    try { json = JSON.parse(text); } catch {}
                    s.destroy();
                    resolve({ status: res.statusCode, text, json });
                });
            });
            req.end(body);
        });
    }
    throw new Error(`could not reach gateway ${pid}`);
}

// Collects what an SDK subscription callback receives.
function collector() {
    const got = [];
    const cb = (e) => got.push(JSON.parse(JSON.stringify(e)));
    return {
        cb,
        got,
        async waitFor(pred, timeoutMs = 5000, what = 'an event') {
            return until(() => got.find(pred), timeoutMs, `${what}; got ${JSON.stringify(got.map((e) => e.events[0]))}`);
        },
        count(pred) { return got.filter(pred).length; },
        clear() { got.length = 0; },
    };
}

// Waits until the SDK realtime socket has received a frame matching pred (after index `from`).
async function sdkFrame(rt, pred, timeoutMs = 5000, from = 0, what = 'a frame') {
    return until(() => rt.socket && rt.socket.__msgs && rt.socket.__msgs.slice(from).find(pred), timeoutMs, what);
}

// SDK subscribe that returns once the server has answered the subscribe message.
async function sdkSubscribe(rt, channels, cb, queries) {
    const before = rt.socket && rt.socket.__msgs ? rt.socket.__msgs.length : 0;
    const sock0 = rt.socket;
    const sub = await rt.subscribe(channels, cb, queries);
    const from = rt.socket === sock0 ? before : 0;
    await sdkFrame(rt, (m) => m.type === 'response' && m.data.to === 'subscribe', 5000, from, 'the subscribe response');
    return sub;
}

const randomId = (p = 'x') => p + crypto.randomBytes(6).toString('hex');

// The SDK Realtime instances of a test file (push them on the array returned), disconnected
// after each test and at the end: their heartbeats keep Node alive. Call it before useCluster,
// so that they go before the cluster stops (hooks run in the order they are registered).
function realtimeRegistry(nodeTest) {
    const list = [];
    const disconnectAll = async () => {
        for (const r of list.splice(0)) { try { await r.disconnect(); } catch {} }
    };
    nodeTest.afterEach(disconnectAll);
    nodeTest.after(disconnectAll);
    return list;
}

module.exports = {
    RawClient, RecordingWebSocket, installRecordingWebSocket, rtUrl, rawConnect, rawSubscribe, gatewayOf, rawConnectTo, restVia,
    collector, sdkFrame, sdkSubscribe, until, randomId, WS, realtimeRegistry,
};
