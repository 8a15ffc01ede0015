'use strict';
// The examples' tiny server: the two pages, Alpine.js and the Appwrite SDK from node_modules (no
// CDN), and /token, which plays your app's backend: it signs a presenced user token (HS256 with
// the project's --jwt-secret) for whoever asks. A real backend signs in its users first.
//
//   npm --prefix examples/web start          (npm ci first, when node_modules is missing)
//
// Settings (environment): PORT (8090), PRESENCE_ENDPOINT (http://127.0.0.1:8080/v1),
// PRESENCE_PROJECT (demo), PRESENCE_JWT_SECRET (demo-secret): the cluster of README's first command;
// PRESENCE_LOCAL_HELPER=1 serves clients/web/presence.js from this tree instead of the gateway's
// embedded copy (to work on the helper without rebuilding the server).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

const HERE = __dirname;
const REPO = path.resolve(HERE, '..', '..');
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.json': 'application/json' };

function mintJwt(secret, claims, ttlSeconds = 3600) {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ ...claims, exp: Math.floor(Date.now() / 1000) + ttlSeconds })}`;
    return `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
}

// A user id from a display name: what the server accepts (1-36 of [A-Za-z0-9._-], not starting with . - _).
const userIdFor = (name) => (String(name).toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^[-.]+|-+$/g, '') || 'guest').slice(0, 36);

// opts: {port, host, endpoint, project, jwtSecret, sdkDir (an appwrite package), alpineDir}
function start(opts = {}) {
    const o = {
        port: Number(process.env.PORT ?? 8090),
        host: '127.0.0.1',
        endpoint: process.env.PRESENCE_ENDPOINT ?? 'http://127.0.0.1:8080/v1',
        project: process.env.PRESENCE_PROJECT ?? 'demo',
        jwtSecret: process.env.PRESENCE_JWT_SECRET ?? 'demo-secret',
        sdkDir: path.join(HERE, 'node_modules', 'appwrite'),
        alpineDir: path.join(HERE, 'node_modules', 'alpinejs'),
        localHelper: process.env.PRESENCE_LOCAL_HELPER === '1',
        ...opts,
    };
    const files = {
        '/': path.join(HERE, 'index.html'),
        '/alpine.html': path.join(HERE, 'alpine.html'),
        '/vanilla.html': path.join(HERE, 'vanilla.html'),
        '/signin.js': path.join(HERE, 'signin.js'),
        '/style.css': path.join(HERE, 'style.css'),
        '/vendor/appwrite.js': path.join(o.sdkDir, 'dist', 'iife', 'sdk.js'),
        '/vendor/alpine.js': path.join(o.alpineDir, 'dist', 'module.esm.js'),
        '/presence.js': path.join(REPO, 'clients', 'web', 'presence.js'),
    };
    for (const f of ['/vendor/appwrite.js', '/vendor/alpine.js']) {
        if (!fs.existsSync(files[f])) throw new Error(`${files[f]} is missing: run npm ci in ${HERE}`);
    }

    // The helper from the gateways (/v1/presence.js) when they serve it, else our copy.
    let gatewayServes = o.localHelper ? false : null;
    async function presenceUrl() {
        if (gatewayServes === null) {
            try {
                const r = await fetch(`${o.endpoint}/presence.js`, { signal: AbortSignal.timeout(2000) });
                gatewayServes = r.ok && /createPresence/.test(await r.text());
            } catch {
                return '/presence.js'; // not up yet: ask again next time
            }
        }
        return gatewayServes ? `${o.endpoint}/presence.js` : '/presence.js';
    }

    const server = http.createServer(async (req, res) => {
        const url = new URL(req.url, 'http://x');
        const send = (code, type, body) => {
            res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
            res.end(body);
        };
        try {
            if (url.pathname === '/config.json') {
                return send(200, TYPES['.json'], JSON.stringify({ endpoint: o.endpoint, project: o.project, presenceUrl: await presenceUrl() }));
            }
            if (url.pathname === '/token') {
                const name = (url.searchParams.get('name') ?? '').slice(0, 64);
                const userId = userIdFor(url.searchParams.get('user') || name);
                return send(200, TYPES['.json'], JSON.stringify({ userId, jwt: mintJwt(o.jwtSecret, { userId, ...(name ? { name } : {}) }) }));
            }
            if (url.pathname === '/favicon.ico') return send(204, 'image/x-icon', '');
            const file = files[url.pathname];
            if (!file) return send(404, 'text/plain', 'not found\n');
            send(200, TYPES[path.extname(file)] ?? 'application/octet-stream', fs.readFileSync(file));
        } catch (e) {
            send(500, 'text/plain', `${e.message}\n`);
        }
    });
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(o.port, o.host, () => {
            const { port } = server.address();
            resolve({ server, url: `http://${o.host}:${port}`, close: () => new Promise((r) => server.close(r)) });
        });
    });
}

module.exports = { start, mintJwt, userIdFor };

if (require.main === module) {
    start().then(({ url }) => {
        console.log(`presence examples on ${url}/ (Alpine: ${url}/alpine.html, vanilla JS: ${url}/vanilla.html)`);
        console.log(`against ${process.env.PRESENCE_ENDPOINT ?? 'http://127.0.0.1:8080/v1'}; open two windows as two people`);
    }, (e) => {
        console.error(e.message);
        process.exit(1);
    });
}
