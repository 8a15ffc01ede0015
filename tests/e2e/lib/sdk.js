'use strict';
// The official SDKs, loaded the way an app would use them, plus JWT minting the way an app's
// own backend would do it (HS256 with the project's shared secret).
const crypto = require('node:crypto');
const path = require('node:path');

const NM = path.resolve(__dirname, '..', 'node_modules');

// Web SDK under Node 20 (tech-notes.md §5): the cjs build expects a browser-ish global scope.
function installBrowserPolyfills() {
    if (!globalThis.window) globalThis.window = globalThis;
    if (!globalThis.WebSocket) globalThis.WebSocket = require('ws');
    if (!globalThis.localStorage) {
        const store = new Map();
        globalThis.localStorage = {
            getItem: (k) => (store.has(k) ? store.get(k) : null),
            setItem: (k, v) => { store.set(k, String(v)); },
            removeItem: (k) => { store.delete(k); },
        };
    }
}

const WEB_SDKS = {
    'appwrite': 'appwrite',            // 27.0.0, pinned
    'appwrite-latest': 'appwrite-latest', // the newest release (npm alias)
};

const webCache = {};
function loadWebSdk(which = 'appwrite') {
    if (!WEB_SDKS[which]) throw new Error(`unknown web SDK ${which}`);
    if (!webCache[which]) {
        installBrowserPolyfills();
        const dir = path.join(NM, WEB_SDKS[which]);
        const mod = require(path.join(dir, 'dist', 'cjs', 'sdk.js'));
        mod.version = require(path.join(dir, 'package.json')).version;
        webCache[which] = mod;
    }
    return webCache[which];
}

function loadNodeSdk() {
    const mod = require(path.join(NM, 'node-appwrite'));
    mod.version = require(path.join(NM, 'node-appwrite', 'package.json')).version;
    return mod;
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

// Mints a JWT. claims default: {userId, exp: now + 10 min}. opts.alg/opts.header change the
// header (the signature is still HMAC-SHA256 unless opts.sign is given), opts.secret the key.
function mintJwt(secret, claims, opts = {}) {
    const header = opts.header ?? { alg: opts.alg ?? 'HS256', typ: 'JWT' };
    const body = { exp: Math.floor(Date.now() / 1000) + 600, ...claims };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(body))}`;
    let sig;
    if (opts.sign) sig = opts.sign(input);
    else sig = b64url(crypto.createHmac(opts.hmac ?? 'sha256', secret).update(input).digest());
    return `${input}.${sig}`;
}

// A web SDK client for a user of the cluster (JWT minted with the cluster's secret).
function webClient(cluster, { sdk = 'appwrite', userId, jwt, project } = {}) {
    const W = loadWebSdk(sdk);
    const client = new W.Client().setEndpoint(cluster.endpoint).setProject(project ?? cluster.project);
    const token = jwt ?? (userId ? mintJwt(cluster.jwtSecret, { userId }) : undefined);
    if (token) client.setJWT(token);
    return { W, client, presences: new W.Presences(client), userId };
}

// A node-appwrite client: API key by default, or a JWT for userId.
function nodeClient(cluster, { key, userId, jwt, project } = {}) {
    const N = loadNodeSdk();
    const client = new N.Client().setEndpoint(cluster.endpoint).setProject(project ?? cluster.project);
    const token = jwt ?? (userId ? mintJwt(cluster.jwtSecret, { userId }) : undefined);
    if (token) client.setJWT(token);
    else client.setKey(key ?? cluster.apiKey);
    return { N, client, presences: new N.Presences(client), users: new N.Users(client) };
}

// A plain copy without SDK decorations (the SDKs add a non-enumerable toString).
const plain = (x) => JSON.parse(JSON.stringify(x));

module.exports = { loadWebSdk, loadNodeSdk, mintJwt, webClient, nodeClient, plain, WEB_SDKS, installBrowserPolyfills };
