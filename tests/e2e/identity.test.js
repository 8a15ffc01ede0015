'use strict';
// Identity and permissions (issue 4), through a real cluster started with a projects file
// (--config) whose secrets come from environment variables, driven with the official SDKs:
//   - the permission matrix: caller identities x permission sets x operations, expected
//     outcomes computed from Appwrite's rules (appwrite-protocol.md §4, decisions.md §6),
//     printed as a whole table when any cell differs;
//   - token attacks, each refused with the right status and type while the server keeps serving;
//   - users.createJWT (node-appwrite) -> a token the web SDK uses;
//   - key and JWT-secret rotation by SIGHUP: old refused, new accepted, connections kept;
//   - no secret used anywhere in this file appears in the cluster's log (run at --verbose 2)
//     or in a process title.
// The realtime parts need GET /v1/realtime to upgrade (probed once before the tests): a probe
// that fails fails the file, it does not skip the realtime columns.
// API key hashes are made with presencectl (the server's own keyed BLAKE2b), so build it too.
const test = require('node:test');
const { describe, it, before, after } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { startCluster, sleep, BIN } = require('./lib/cluster');
const { loadWebSdk, loadNodeSdk, installBrowserPolyfills } = require('./lib/sdk');
const { api, pinnedSockets } = require('./lib/http');
const { uid, assertError, rejectsWith, ownerPermissions } = require('./lib/check');

installBrowserPolyfills();
const WebSocket = require('ws');

const CTL = process.env.PRESENCECTL_BIN || path.join(path.dirname(BIN), 'presencectl');
const P = 'idp';        // the project under test
const OTHER = 'idp-other';
const TEAM = 'teamT';

// --- secrets: every one is remembered, and the log is searched for all of them at the end ----

const SECRETS = new Map(); // value -> what it is
function secret(what, value) {
    if (typeof value === 'string' && value.length >= 12) SECRETS.set(value, what);
    return value;
}
const rand = (n = 24) => crypto.randomBytes(n).toString('hex');
const b64url = (b) => Buffer.from(b).toString('base64url');

// Signs a JWT. claims get exp = now + 10 min unless given; opts: header, hmacKey (HS256
// secret, string or Buffer), edKey (node KeyObject: EdDSA), sig (a fixed signature).
function sign(claims, opts = {}) {
    const header = opts.header ?? { typ: 'JWT', alg: opts.edKey ? 'EdDSA' : 'HS256' };
    const body = { exp: Math.floor(Date.now() / 1000) + 600, ...claims };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(body))}`;
    let sig;
    if (opts.sig !== undefined) sig = opts.sig;
    else if (opts.edKey) sig = b64url(crypto.sign(null, Buffer.from(input), opts.edKey));
    else sig = b64url(crypto.createHmac('sha256', opts.hmacKey).update(input).digest());
    const tok = `${input}.${sig}`;
    secret('token', tok);
    if (sig.length >= 16) secret('token signature', sig);
    return tok;
}

function ctl(args, env = {}) {
    const r = spawnSync(CTL, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20000 });
    if (r.error) throw r.error;
    return r;
}

// presencectl key create -> the secret (printed once on stdout)
function createKey(cfg, project, name, scopes, expire) {
    const r = ctl(['key', 'create', '--config', cfg, '--project', project, '--name', name, '--scopes', scopes.join(','),
        ...(expire ? ['--expire', expire] : [])]);
    assert.equal(r.status, 0, `presencectl key create: ${r.stderr}`);
    return secret(`API key ${project}/${name}`, r.stdout.trim());
}

function writeJsonAtomic(file, obj) {
    const tmp = `${file}.tmp${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(obj, null, 2));
    fs.renameSync(tmp, file);
}

// --- the cluster and its identities --------------------------------------------------------

const S = {}; // shared state: cluster, config path, keys, secrets, users
let RT = false; // the gateway serves /v1/realtime

function reloadCount() {
    return (S.cluster.log().match(/projects reloaded/g) || []).length;
}

// SIGHUP to the supervisor; waits until every gateway logged its reload.
async function sighup() {
    const before = reloadCount();
    process.kill(S.cluster.pid, 'SIGHUP');
    const deadline = Date.now() + 10000;
    while (reloadCount() < before + S.cluster.gateways) {
        if (Date.now() > deadline) throw new Error(`gateways did not reload after SIGHUP:\n${S.cluster.log().slice(-3000)}`);
        await sleep(25);
    }
}

function probeRealtime(cluster, project) {
    return new Promise((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${cluster.port}/v1/realtime?project=${project}`);
        const done = (v) => { try { ws.terminate(); } catch {} resolve(v); };
        ws.on('open', () => done(true));
        ws.on('unexpected-response', () => done(false));
        ws.on('error', () => done(false));
        setTimeout(() => done(false), 5000);
    });
}

before(async () => {
    assert.ok(fs.existsSync(CTL), `presencectl not found at ${CTL} (build it, or set PRESENCECTL_BIN)`);
    S.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-identity-'));
    S.cfg = path.join(S.dir, 'projects.json');

    // Secrets that reach the server through the environment (Kubernetes-style).
    S.jwtEnvSecret = secret('JWT secret (env)', 'jwtenv_' + rand());
    S.ciKey = secret('API key ci (env)', 'pd_ci_' + rand());
    process.env.IDP_JWT_SECRET = S.jwtEnvSecret;
    process.env.IDP_CI_KEY = S.ciKey;
    // Inline HS256 secrets (the rotation pair) and the other project's secret.
    S.rotOldSecret = secret('JWT secret rot-old', 'rotold_' + rand());
    S.rotNewSecret = secret('JWT secret rot-new', 'rotnew_' + rand());
    S.otherSecret = secret('JWT secret other project', 'other_' + rand());
    // EdDSA: the app's backend keeps the private key; the server only has the public key.
    const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
    S.edPriv = privateKey;
    S.edPubRaw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
    secret('EdDSA private key', Buffer.from(privateKey.export({ format: 'jwk' }).d, 'base64url').toString('base64'));
    secret('EdDSA private key (hex)', Buffer.from(privateKey.export({ format: 'jwk' }).d, 'base64url').toString('hex'));
    const stranger = crypto.generateKeyPairSync('ed25519');
    S.edStranger = stranger.privateKey;

    writeJsonAtomic(S.cfg, {
        projects: [
            {
                id: P,
                keys: [{ name: 'ci', secret_env: 'IDP_CI_KEY', scopes: ['presences.read'] }],
                jwt: [
                    { alg: 'HS256', secret_env: 'IDP_JWT_SECRET' },
                    { alg: 'HS256', secret: S.rotOldSecret },
                    { alg: 'EdDSA', public_key: S.edPubRaw.toString('base64') },
                ],
                default_ttl: 900,
            },
            { id: OTHER, keys: [], jwt: [{ alg: 'HS256', secret: S.otherSecret }] },
        ],
    });
    S.backendKey = createKey(S.cfg, P, 'backend', ['presences.read', 'presences.write', 'users.write'], '2099-01-01T00:00:00Z');
    S.writerKey = createKey(S.cfg, P, 'writer', ['presences.write']);
    S.rotOldKey = createKey(S.cfg, P, 'rot-old', ['presences.read']);
    S.expiredKey = createKey(S.cfg, P, 'expired', ['presences.read'], '2099-01-01T00:00:00Z');
    S.otherKey = createKey(S.cfg, OTHER, 'k', ['presences.read', 'presences.write']);
    // presencectl refuses a past expiry; the file may still hold one (a key that ran out).
    const j = JSON.parse(fs.readFileSync(S.cfg, 'utf8'));
    j.projects[0].keys.find((k) => k.name === 'expired').expire = '2020-01-01T00:00:00Z';
    writeJsonAtomic(S.cfg, j);

    S.cluster = await startCluster({ label: 'identity', args: ['--config', S.cfg, '--verbose', '2'] });
    secret('quick-start API key', S.cluster.apiKey);
    secret('quick-start JWT secret', S.cluster.jwtSecret);
    S.cluster.endpointFor = () => S.cluster.endpoint;
    RT = await probeRealtime(S.cluster, P);
    // realtime is served: a probe that fails is a failure of every realtime column, not a skip
    assert.ok(RT, 'GET /v1/realtime did not upgrade: the realtime columns cannot run');
}, { timeout: 60000 });

after(async () => {
    if (S.cluster) await S.cluster.stop();
    try { fs.rmSync(S.dir, { recursive: true, force: true }); } catch {}
}, { timeout: 30000 });

test.afterEach((t) => { if (t.passed === false && S.cluster) S.cluster.failed = true; });

// --- clients ---------------------------------------------------------------------------------

const W = () => loadWebSdk('appwrite');
const N = () => loadNodeSdk();

function userToken(c) {
    return sign({ userId: c.user, teams: c.teams, labels: c.labels }, { hmacKey: S.jwtEnvSecret });
}

// web SDK (JWT user or guest) or node-appwrite (API key)
function presencesFor(c) {
    if (c.key) {
        const client = new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setKey(c.keyValue ?? S.backendKey);
        return new (N().Presences)(client);
    }
    const client = new (W().Client)().setEndpoint(S.cluster.endpoint).setProject(P);
    if (!c.guest) client.setJWT(c.jwt ?? (c.jwt = userToken(c)));
    return new (W().Presences)(client);
}
const keyPresences = () => presencesFor({ key: true });

// --- the permission matrix ---------------------------------------------------------------------

const uA = uid('ua'), uB = uid('ub'), uT = uid('ut'), uL = uid('ul');
const CALLERS = [
    { name: 'API key', key: true },
    { name: 'JWT A (owner)', user: uA },
    { name: 'JWT B', user: uB },
    { name: `JWT team ${TEAM}/owner`, user: uT, teams: [`${TEAM}/owner`] },
    { name: 'JWT label vip', user: uL, labels: ['vip'] },
    { name: 'guest', guest: true },
];

// Every record of the matrix is owned by user A (created with the API key).
const SETS = [
    { name: 'default (owner A)', perms: null },
    { name: 'read any', perms: ['read("any")'] },
    { name: 'read guests', perms: ['read("guests")'] },
    { name: 'read users', perms: ['read("users")'] },
    { name: 'read user:A', perms: [`read("user:${uA}")`] },
    { name: `read team:${TEAM}`, perms: [`read("team:${TEAM}")`] },
    { name: 'read label:vip', perms: ['read("label:vip")'] },
    { name: 'none []', perms: [] },
    { name: `read team, write team/owner`, perms: [`read("team:${TEAM}")`, `write("team:${TEAM}/owner")`] },
    { name: 'read any, update users, delete guests', perms: ['read("any")', 'update("users")', 'delete("guests")'] },
];

const OPS = ['get', 'list', 'update', 'delete', 'upsert', 'grant', 'realtime'];

function rolesOf(c) {
    if (c.key) return null;
    if (c.guest) return ['any', 'guests'];
    const r = ['any', 'users', `user:${c.user}`];
    for (const t of c.teams || []) r.push(`team:${t.split('/')[0]}`, `team:${t}`);
    for (const l of c.labels || []) r.push(`label:${l}`);
    return r;
}

function rulesOf(set) {
    if (set.perms === null) return { read: [`user:${uA}`], update: [`user:${uA}`], delete: [`user:${uA}`], named: [] };
    const r = { read: [], update: [], delete: [], named: [] };
    for (const p of set.perms) {
        const m = /^(read|update|delete|write)\("(.*)"\)$/.exec(p);
        assert.ok(m, p);
        r.named.push(m[2]);
        if (m[1] === 'write') r.update.push(m[2]), r.delete.push(m[2]);
        else r[m[1]].push(m[2]);
    }
    return r;
}

// What Appwrite's rules say (appwrite-protocol.md §4; decisions.md §6 for guests).
function expected(set, c, op) {
    const r = rulesOf(set), roles = rolesOf(c);
    const can = (list) => c.key || list.some((x) => roles.includes(x));
    const SCOPE = '401 general_unauthorized_scope', NF = '404 presence_not_found', UNAUTH = '401 user_unauthorized';
    switch (op) {
    case 'get': return can(r.read) ? 'ok' : NF;
    case 'list': return can(r.read) ? 'listed' : 'hidden';
    case 'update':
    case 'delete':
        if (c.guest) return SCOPE;
        if (!can(r.read)) return NF;
        return can(r[op]) ? 'ok' : UNAUTH;
    case 'upsert': // PUT of A's record: one presence per user, then update permission
        if (c.guest) return SCOPE;
        if (c.key) return 'ok';
        if (c.user !== uA) return '409 presence_already_exists';
        return can(r.update) ? 'ok' : UNAUTH;
    case 'grant': // the caller creates its own record with these permissions
        if (c.guest) return SCOPE;
        if (c.key) return 'ok';
        return r.named.every((x) => roles.includes(x)) ? 'ok' : UNAUTH;
    case 'realtime':
        if (c.key) return 'n/a';
        return can(r.read) ? 'event' : 'none';
    }
    throw new Error(op);
}

const outcomeOf = (e) => {
    if (e && typeof e.code === 'number' && e.code > 0) return `${e.code} ${e.type}`;
    throw e;
};

// A record of A with the set's permissions (API key).
async function makeRecord(set, status = 'matrix') {
    const id = uid('m');
    const r = await keyPresences().upsert({ presenceId: id, userId: uA, status, ...(set.perms === null ? {} : { permissions: set.perms }) });
    assert.equal(r.$id, id, 'A has no other record (one presence per user)');
    return id;
}
const keyGetStatus = async (id) => {
    try { return (await keyPresences().get({ presenceId: id })).status; } catch (e) { if (e.code === 404) return null; throw e; }
};
async function keyDelete(id) {
    try { await keyPresences().delete({ presenceId: id }); } catch (e) { if (e.code !== 404) throw e; }
}
// Deletes every record of a user (a failed test may leave one behind).
async function clearUser(u) {
    const l = await keyPresences().list({ queries: [N().Query.equal('userId', [u])] });
    for (const p of l.presences) await keyDelete(p.$id);
}

// Runs one cell; write operations also check what the store holds afterwards (a refused
// write changes nothing, an accepted one is visible).
async function runCell(set, c, op, shared) {
    const p = presencesFor(c);
    if (op === 'get' || op === 'list') {
        try {
            if (op === 'get') {
                const g = await p.get({ presenceId: shared });
                return g.$id === shared ? 'ok' : `wrong record ${g.$id}`;
            }
            const l = await p.list({ queries: [W().Query.equal('$id', [shared])] });
            if (l.total === 1 && l.presences.length === 1 && l.presences[0].$id === shared) return 'listed';
            if (l.total === 0 && l.presences.length === 0) return 'hidden';
            return `bad list total=${l.total} n=${l.presences.length}`;
        } catch (e) { return outcomeOf(e); }
    }
    if (op === 'grant') {
        const id = uid('g'), owner = c.key ? uid('gu') : c.user;
        let out;
        try {
            await p.upsert({ presenceId: id, status: 'granted', ...(c.key ? { userId: owner } : {}), ...(set.perms === null ? {} : { permissions: set.perms }) });
            out = 'ok';
        } catch (e) { out = outcomeOf(e); }
        const st = await keyGetStatus(id);
        if ((out === 'ok') !== (st === 'granted')) out += ` (store has ${st})`;
        await keyDelete(id);
        return out;
    }
    const id = await makeRecord(set);
    let out;
    try {
        if (op === 'update') await p.update({ presenceId: id, status: 'updated', ...(c.key ? { userId: uA } : {}) });
        else if (op === 'delete') await p.delete({ presenceId: id });
        else await p.upsert({ presenceId: id, status: 'upserted', ...(c.key ? { userId: uA } : {}) });
        out = 'ok';
    } catch (e) { out = outcomeOf(e); }
    const st = await keyGetStatus(id);
    const want = out !== 'ok' ? 'matrix' : { update: 'updated', upsert: 'upserted', delete: null }[op];
    if (st !== want) out += ` (store has ${st}, want ${want})`;
    await keyDelete(id);
    return out;
}

// Realtime: one web SDK connection per non-key caller, subscribed to `presences`.
async function openRealtimeClients() {
    const conns = [];
    for (const c of CALLERS.filter((x) => !x.key)) {
        const client = new (W().Client)().setEndpoint(S.cluster.endpoint).setProject(P);
        if (!c.guest) client.setJWT(c.jwt ?? (c.jwt = userToken(c)));
        const rt = new (W().Realtime)(client);
        const seen = new Map(); // presence id -> [events]
        const sub = await rt.subscribe('presences', (m) => {
            const id = m.payload && m.payload.$id;
            if (!seen.has(id)) seen.set(id, []);
            seen.get(id).push(m.events[0]);
        });
        conns.push({ c, rt, sub, seen });
    }
    // Barrier: a record everyone may read, re-sent until every connection has seen it.
    const probe = uid('probe'), probeUser = uid('pu');
    const deadline = Date.now() + 15000;
    for (let i = 0; conns.some((x) => !x.seen.has(probe)); i++) {
        if (Date.now() > deadline) throw new Error(`realtime: not every connection got the probe: ${conns.filter((x) => !x.seen.has(probe)).map((x) => x.c.name)}`);
        await keyPresences().upsert({ presenceId: probe, userId: probeUser, status: `p${i}`, permissions: ['read("any")'] }).catch(() => {});
        await sleep(300);
    }
    return conns;
}

function renderTable(rows) {
    const head = ['permissions', 'caller', ...OPS];
    const cells = [head, ...rows.map((r) => [r.set, r.caller, ...OPS.map((op) => {
        const x = r[op];
        if (!x) return '';
        return x.got === x.want ? x.got : `✗ got ${x.got} want ${x.want}`;
    })])];
    const w = head.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
    return cells.map((r) => r.map((v, i) => String(v).padEnd(w[i])).join(' | ')).join('\n');
}

describe('permission matrix (callers x permission sets x operations)', () => {
    it('every cell matches Appwrite\'s rules', async (t) => {
        const rows = [];
        let rtConns = null;
        if (RT) rtConns = await openRealtimeClients();
        try {
            for (const set of SETS) {
                // get and list share one record; every write cell gets its own (A may hold
                // only one presence at a time, so the shared one is gone before the writes)
                const shared = await makeRecord(set, 'shared');
                const setRows = CALLERS.map((c) => ({ set: set.name, caller: c.name }));
                for (const op of OPS) {
                    if (op === 'realtime') continue;
                    if (op === 'update') await keyDelete(shared);
                    for (const [i, c] of CALLERS.entries()) {
                        setRows[i][op] = { got: await runCell(set, c, op, shared), want: expected(set, c, op) };
                    }
                }
                if (rtConns) {
                    // A fresh change of A's record with these permissions; who hears of it?
                    const id = await makeRecord(set, 'rt');
                    const want = new Map(CALLERS.map((c) => [c.name, expected(set, c, 'realtime')]));
                    const deadline = Date.now() + 3000;
                    while (Date.now() < deadline && rtConns.some((x) => want.get(x.c.name) === 'event' && !x.seen.has(id))) await sleep(20);
                    await sleep(300); // time for deliveries that must not happen
                    for (const [i, c] of CALLERS.entries()) {
                        const conn = rtConns.find((x) => x.c === c);
                        setRows[i].realtime = { got: conn ? (conn.seen.has(id) ? 'event' : 'none') : 'n/a', want: want.get(c.name) };
                    }
                    await keyDelete(id);
                }
                rows.push(...setRows);
            }
        } finally {
            if (rtConns) for (const x of rtConns) await x.rt.disconnect().catch(() => {});
            for (const c of CALLERS) if (c.user) await clearUser(c.user);
        }
        const bad = rows.flatMap((r) => OPS.filter((op) => r[op] && r[op].got !== r[op].want).map((op) => `${r.set} / ${r.caller} / ${op}`));
        const table = renderTable(rows);
        if (bad.length || process.env.PRESENCED_E2E_TABLE) process.stderr.write(`\n${table}\n`);
        assert.equal(bad.length, 0, `${bad.length} cells differ from Appwrite's rules:\n${bad.join('\n')}\n\n${table}`);
    });

    it('list counts only readable records (a mix of every set, per caller)', async () => {
        const tag = uid('mix');
        const ids = [];
        await clearUser(uA);
        // one record per set, each owned by a different user (one presence per user)
        for (const [i, set] of SETS.entries()) {
            const owner = i === 0 ? uA : `${tag}o${i}`;
            const perms = set.perms === null ? undefined : set.perms;
            const id = `${tag}r${i}`;
            await keyPresences().upsert({ presenceId: id, userId: owner, status: tag, ...(perms ? { permissions: perms } : {}) });
            ids.push({ id, set });
        }
        try {
            for (const c of CALLERS) {
                const l = await presencesFor(c).list({ queries: [W().Query.equal('status', [tag]), W().Query.limit(100)] });
                const want = ids.filter((x) => expected(x.set, c, 'get') === 'ok').map((x) => x.id).sort();
                const got = l.presences.map((p) => p.$id).sort();
                assert.deepEqual(got, want, `${c.name}: listed records`);
                assert.equal(l.total, want.length, `${c.name}: total counts only readable records`);
            }
        } finally {
            for (const x of ids) await keyDelete(x.id);
        }
    });
});

// --- API keys and scopes -------------------------------------------------------------------------

describe('API keys: scopes, expiry, projects', () => {
    it('a key needs the scope of the route (ci: read only; writer: write only)', async () => {
        const ci = presencesFor({ key: true, keyValue: S.ciKey });
        const writer = presencesFor({ key: true, keyValue: S.writerKey });
        const id = uid('s'), u = uid('su');
        await rejectsWith(ci.upsert({ presenceId: id, userId: u, status: 'x' }), 401, 'general_unauthorized_scope', 'ci upsert');
        await writer.upsert({ presenceId: id, userId: u, status: 'x' });
        assert.equal((await ci.get({ presenceId: id })).userId, u, 'ci reads (secret_env key)');
        await rejectsWith(writer.get({ presenceId: id }), 401, 'general_unauthorized_scope', 'writer get');
        await rejectsWith(writer.list(), 401, 'general_unauthorized_scope', 'writer list');
        const users = new (N().Users)(new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setKey(S.ciKey));
        await rejectsWith(users.createJWT({ userId: u }), 401, 'general_unauthorized_scope', 'ci createJWT');
        await writer.delete({ presenceId: id });
        const r = await api(S.cluster, 'GET', '/v1/presences', { project: P, key: S.writerKey });
        assertError(r, 401, 'general_unauthorized_scope');
        assert.match(r.json.message, /missing scopes \(\["presences\.read"\]\)/);
    });

    it('an expired key is 401 project_key_expired; an unknown key 401 user_unauthorized', async () => {
        assertError(await api(S.cluster, 'GET', '/v1/presences', { project: P, key: S.expiredKey }), 401, 'project_key_expired');
        assertError(await api(S.cluster, 'GET', '/v1/presences', { project: P, key: 'pd_' + rand() }), 401, 'user_unauthorized');
    });

    it('projects are separate: a key or a token of another project is refused, records are not shared', async () => {
        const id = uid('o');
        const other = new (N().Presences)(new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(OTHER).setKey(S.otherKey));
        await other.upsert({ presenceId: id, userId: uid('ou'), status: 'other', permissions: ['read("any")'] });
        await rejectsWith(presencesFor({ key: true, keyValue: S.otherKey }).get({ presenceId: id }), 401, 'user_unauthorized', 'other key on idp');
        await rejectsWith(keyPresences().get({ presenceId: id }), 404, 'presence_not_found', 'idp key does not see other project');
        await rejectsWith(presencesFor({ guest: true }).get({ presenceId: id }), 404, 'presence_not_found', 'idp guest');
        const otherTok = sign({ userId: uid('x') }, { hmacKey: S.otherSecret });
        assertError(await api(S.cluster, 'GET', `/v1/presences/${id}`, { project: P, jwt: otherTok }), 401, 'user_jwt_invalid');
        const okOther = await api(S.cluster, 'GET', `/v1/presences/${id}`, { project: OTHER, jwt: otherTok });
        assert.equal(okOther.status, 200, `the token works on its own project: ${okOther.text}`);
        await other.delete({ presenceId: id });
    });
});

// --- token attacks -------------------------------------------------------------------------------

describe('token attacks', () => {
    const now = () => Math.floor(Date.now() / 1000);

    function attacks() {
        const u = uid('atk');
        const good = sign({ userId: u }, { hmacKey: S.jwtEnvSecret });
        const [gh, , gs] = good.split('.');
        const forgedPayload = b64url(JSON.stringify({ userId: 'admin', exp: now() + 600 }));
        const hsHeader = { typ: 'JWT', alg: 'HS256' };
        const pub = S.edPubRaw;
        return [
            ['alg none, no signature', sign({ userId: u }, { header: { typ: 'JWT', alg: 'none' }, sig: '' }), 'user_jwt_invalid'],
            ['alg none, signed anyway', sign({ userId: u }, { header: { typ: 'JWT', alg: 'none' }, hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['alg NONE', sign({ userId: u }, { header: { alg: 'NONE' }, sig: '' }), 'user_jwt_invalid'],
            ['HS256 signed with the EdDSA public key (raw bytes)', sign({ userId: u }, { header: hsHeader, hmacKey: pub }), 'user_jwt_invalid'],
            ['HS256 signed with the EdDSA public key (base64 text)', sign({ userId: u }, { header: hsHeader, hmacKey: pub.toString('base64') }), 'user_jwt_invalid'],
            ['HS256 signed with the EdDSA public key (hex text)', sign({ userId: u }, { header: hsHeader, hmacKey: pub.toString('hex') }), 'user_jwt_invalid'],
            ['EdDSA header, HMAC with the public key', sign({ userId: u }, { header: { typ: 'JWT', alg: 'EdDSA' }, hmacKey: pub }), 'user_jwt_invalid'],
            ['EdDSA signed by a stranger key', sign({ userId: u }, { edKey: S.edStranger }), 'user_jwt_invalid'],
            ['wrong secret', sign({ userId: u }, { hmacKey: 'wrong-' + rand() }), 'user_jwt_invalid'],
            ['secret of the other project', sign({ userId: u }, { hmacKey: S.otherSecret }), 'user_jwt_invalid'],
            ['truncated signature', good.slice(0, -5), 'user_jwt_invalid'],
            ['signature removed', `${good.split('.').slice(0, 2).join('.')}.`, 'user_jwt_invalid'],
            ['payload swapped (signature of another payload)', `${gh}.${forgedPayload}.${gs}`, 'user_jwt_invalid'],
            ['HS512 header', sign({ userId: u }, { header: { typ: 'JWT', alg: 'HS512' }, hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['expired', sign({ userId: u, exp: now() - 5 }, { hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['no exp', sign({ userId: u, exp: undefined }, { hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['nbf in the future', sign({ userId: u, nbf: now() + 3600 }, { hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['no userId', sign({ name: u }, { hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['100 KB token', sign({ userId: u, pad: 'x'.repeat(100 * 1024) }, { hmacKey: S.jwtEnvSecret }), 'user_jwt_invalid'],
            ['100 KB of garbage', 'a'.repeat(100 * 1024), 'user_jwt_invalid'],
            ['two dots only', '..', 'user_jwt_invalid'],
        ];
    }

    it('each is refused with 401 user_jwt_invalid on every route; nothing is echoed; the server keeps serving', async () => {
        const gwBefore = S.cluster.pids('gateway').sort();
        const id = uid('t');
        await keyPresences().upsert({ presenceId: id, userId: uid('tu'), status: 'x', permissions: ['read("any")'] });
        for (const [what, tok, type] of attacks()) {
            for (const [method, p, body] of [['GET', `/v1/presences/${id}`], ['GET', '/v1/presences'], ['PUT', `/v1/presences/${uid('n')}`, { status: 'x' }],
                ['PATCH', `/v1/presences/${id}`, { status: 'y' }], ['DELETE', `/v1/presences/${id}`]]) {
                const r = await api(S.cluster, method, p, { project: P, jwt: tok, body });
                // a token bigger than the header cap (16 KiB) never reaches the verifier: 431
                if (tok.length > 16384) assertError(r, 431, 'general_argument_invalid');
                else assertError(r, 401, type);
                assert.ok(!r.text.includes(tok.slice(-20)), `${what}: the error echoes the token: ${r.text}`);
            }
        }
        // the web SDK sees the same
        const W27 = W();
        const c = new W27.Client().setEndpoint(S.cluster.endpoint).setProject(P).setJWT(attacks()[0][1]);
        await rejectsWith(new W27.Presences(c).get({ presenceId: id }), 401, 'user_jwt_invalid', 'web SDK, alg none');
        // still serving, same processes, the record untouched
        assert.equal(await S.cluster.health(), 200);
        assert.deepEqual(S.cluster.pids('gateway').sort(), gwBefore, 'no gateway restarted');
        assert.equal(await keyGetStatus(id), 'x');
        const ok = await api(S.cluster, 'GET', `/v1/presences/${id}`, { project: P, jwt: sign({ userId: uid('ok') }, { hmacKey: S.jwtEnvSecret }) });
        assert.equal(ok.status, 200, ok.text);
        await keyDelete(id);
    });

    it('valid tokens of every configured key work: HS256 (env), HS256 (inline), EdDSA; sub works as userId', async () => {
        for (const [what, tok] of [
            ['HS256 env', sign({ userId: uid('v') }, { hmacKey: S.jwtEnvSecret })],
            ['HS256 inline', sign({ userId: uid('v') }, { hmacKey: S.rotOldSecret })],
            ['EdDSA', sign({ userId: uid('v') }, { edKey: S.edPriv })],
            ['sub claim', sign({ sub: uid('v') }, { hmacKey: S.jwtEnvSecret })],
        ]) {
            const r = await api(S.cluster, 'GET', '/v1/presences', { project: P, jwt: tok });
            assert.equal(r.status, 200, `${what}: ${r.text}`);
        }
    });

    it('unknown or missing project: 404 project_not_found (key, token, guest)', async () => {
        for (const opts of [{ project: 'no-such-project', key: S.backendKey }, { project: 'no-such-project', jwt: sign({ userId: uid('p') }, { hmacKey: S.jwtEnvSecret }) },
            { project: 'no-such-project' }, { project: null, key: S.backendKey }]) {
            assertError(await api(S.cluster, 'GET', '/v1/presences', opts), 404, 'project_not_found');
        }
        const c = new (W().Client)().setEndpoint(S.cluster.endpoint).setProject('no-such-project');
        await rejectsWith(new (W().Presences)(c).list(), 404, 'project_not_found', 'web SDK');
    });

    it('realtime: a bad token in the jwt parameter is refused (error 401, then close); valid tokens connect', async (t) => {
        for (const [what, tok] of attacks()) {
            const res = await new Promise((resolve) => {
                const ws = new WebSocket(`ws://127.0.0.1:${S.cluster.port}/v1/realtime?project=${P}&jwt=${encodeURIComponent(tok)}`);
                const msgs = [];
                ws.on('message', (d) => msgs.push(JSON.parse(String(d))));
                ws.on('close', (code) => resolve({ msgs, code }));
                ws.on('unexpected-response', (req, r) => resolve({ msgs, http: r.statusCode }));
                ws.on('error', () => {});
                setTimeout(() => { ws.terminate(); resolve({ msgs, timeout: true }); }, 5000);
            });
            // a token bigger than the header cap (16 KiB) is refused before the upgrade: 431
            if (tok.length > 16384) {
                assert.equal(res.http, 431, `${what}: ${JSON.stringify(res)}`);
                continue;
            }
            // the exact answer: the upgrade succeeds, the first frame is an error of code 401,
            // then the server closes with 1008 (policy violation); never connected
            assert.equal(res.http, undefined, `${what}: HTTP ${res.http} instead of the WebSocket error`);
            assert.ok(!res.timeout, `${what}: socket left open`);
            assert.equal(res.msgs.length, 1, `${what}: ${JSON.stringify(res)}`);
            assert.equal(res.msgs[0].type, 'error', `${what}: ${JSON.stringify(res)}`);
            assert.equal(res.msgs[0].data.code, 401, `${what}: ${JSON.stringify(res)}`);
            assert.match(res.msgs[0].data.message, /^Failed to verify JWT\. \S/, `${what}: ${JSON.stringify(res)}`);
            assert.equal(res.code, 1008, `${what}: closed with ${res.code}`);
        }
        assert.equal(await S.cluster.health(), 200);
    });
});

// --- users.createJWT ------------------------------------------------------------------------------

describe('users.createJWT (node-appwrite) -> web SDK', () => {
    it('mints a token the web SDK uses for REST (its records belong to that user)', async () => {
        const u = uid('cj');
        const users = new (N().Users)(new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setKey(S.backendKey));
        const { jwt } = await users.createJWT({ userId: u, duration: 600 });
        secret('createJWT token', jwt);
        assert.equal(typeof jwt, 'string');
        const claims = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url'));
        assert.equal(claims.userId, u);
        assert.ok(Math.abs(claims.exp - (Date.now() / 1000 + 600)) < 30, `exp ${claims.exp}`);
        const c = new (W().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setJWT(jwt);
        const pr = new (W().Presences)(c);
        const id = uid('cjp');
        const rec = await pr.upsert({ presenceId: id, status: 'via createJWT' });
        assert.equal(rec.userId, u);
        assert.deepEqual(rec.$permissions, ownerPermissions(u));
        assert.equal((await pr.get({ presenceId: id })).status, 'via createJWT');
        await pr.delete({ presenceId: id });
        // default duration 900; out of range refused; a JWT caller may not mint
        const d = JSON.parse(Buffer.from(secret('createJWT token', (await users.createJWT({ userId: u })).jwt).split('.')[1], 'base64url'));
        assert.ok(Math.abs(d.exp - (Date.now() / 1000 + 900)) < 30, `default exp ${d.exp}`);
        await rejectsWith(users.createJWT({ userId: u, duration: 3601 }), 400, 'general_argument_invalid', 'duration 3601');
        const asUser = new (N().Users)(new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setJWT(jwt));
        await rejectsWith(asUser.createJWT({ userId: 'someone' }), 401, 'general_unauthorized_scope', 'JWT caller mints');
    });

    it('the same token works for realtime: the web SDK receives its own changes', async (t) => {
        const u = uid('cjr');
        const users = new (N().Users)(new (N().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setKey(S.backendKey));
        const { jwt } = await users.createJWT({ userId: u });
        secret('createJWT token', jwt);
        const c = new (W().Client)().setEndpoint(S.cluster.endpoint).setProject(P).setJWT(jwt);
        const rt = new (W().Realtime)(c);
        const got = [];
        await rt.subscribe('presences', (m) => got.push(m));
        const id = uid('cjrp');
        const deadline = Date.now() + 10000;
        try {
            for (let i = 0; !got.some((m) => m.payload.$id === id); i++) {
                assert.ok(Date.now() < deadline, 'no event for the user\'s own record');
                await new (W().Presences)(c).upsert({ presenceId: id, status: `s${i}` });
                await sleep(300);
            }
            const ev = got.find((m) => m.payload.$id === id);
            assert.equal(ev.payload.userId, u);
        } finally {
            await rt.disconnect();
            await keyDelete(id);
        }
    });
});

// --- rotation by SIGHUP -----------------------------------------------------------------------------

// One HTTP/1.1 request on a kept-alive socket (node's http client would close it after one).
function keepAliveRequest(sock, method, p, headers) {
    return new Promise((resolve, reject) => {
        let buf = Buffer.alloc(0);
        const done = (err, v) => { sock.off('data', onData); sock.off('close', onClose); clearTimeout(timer); err ? reject(err) : resolve(v); };
        const onData = (d) => {
            buf = Buffer.concat([buf, d]);
            const i = buf.indexOf('\r\n\r\n');
            if (i < 0) return;
            const head = buf.subarray(0, i).toString();
            const len = Number((/\r\ncontent-length:\s*(\d+)/i.exec(head) || [0, 0])[1]);
            if (buf.length < i + 4 + len) return;
            const text = buf.subarray(i + 4, i + 4 + len).toString();
            let json;
            try { json = JSON.parse(text); } catch {}
            done(null, { status: Number(head.split(' ')[1]), head, text, json });
        };
        const onClose = () => done(new Error(`the server closed the kept-alive connection (${method} ${p})`));
        const timer = setTimeout(() => done(new Error(`timeout: ${method} ${p}`)), 10000);
        sock.on('data', onData);
        sock.once('close', onClose);
        const h = { Host: '127.0.0.1', Accept: 'application/json', ...headers };
        sock.write(`${method} ${p} HTTP/1.1\r\n${Object.entries(h).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
    });
}

describe('rotation by SIGHUP', () => {
    it('old key and old JWT secret stop working, new ones work, open connections stay up', async (t) => {
        const status = async (opts, sock) => (sock ? await keepAliveRequest(sock, 'GET', '/v1/presences', opts) : await api(S.cluster, 'GET', '/v1/presences', opts)).status;
        const oldTok = sign({ userId: uid('ro') }, { hmacKey: S.rotOldSecret });
        const newTok = sign({ userId: uid('rn') }, { hmacKey: S.rotNewSecret });
        const hdr = (o) => ({ 'X-Appwrite-Project': P, ...(o.key ? { 'X-Appwrite-Key': o.key } : {}), ...(o.jwt ? { 'X-Appwrite-JWT': o.jwt } : {}) });
        assert.equal(await status({ project: P, key: S.rotOldKey }), 200, 'old key works before');
        assert.equal(await status({ project: P, jwt: oldTok }), 200, 'old token works before');
        assert.equal(await status({ project: P, jwt: newTok }), 401, 'new token refused before');

        // Keep-alive HTTP connections on every gateway, and a realtime connection, across reloads.
        const socks = await pinnedSockets(S.cluster, 1);
        let ws = null, wsClosed = null;
        if (RT) {
            ws = await new Promise((resolve, reject) => {
                const w = new WebSocket(`ws://127.0.0.1:${S.cluster.port}/v1/realtime?project=${P}&jwt=${encodeURIComponent(sign({ userId: uid('rw') }, { hmacKey: S.jwtEnvSecret }))}`);
                w.on('message', (d) => { if (JSON.parse(String(d)).type === 'connected') resolve(w); });
                w.on('error', reject);
            });
            ws.on('close', (code) => { wsClosed = code; });
        }

        // 1. overlap: the new key and the new secret are added
        const cfg = JSON.parse(fs.readFileSync(S.cfg, 'utf8'));
        const idp = cfg.projects.find((x) => x.id === P);
        idp.jwt.push({ alg: 'HS256', secret: S.rotNewSecret });
        writeJsonAtomic(S.cfg, cfg);
        const rotNewKey = createKey(S.cfg, P, 'rot-new', ['presences.read']);
        await sighup();
        for (const [gw, [sock]] of socks) {
            assert.equal(await status(hdr({ key: S.rotOldKey }), sock), 200, `gateway ${gw}: old key during overlap`);
            assert.equal(await status(hdr({ key: rotNewKey }), sock), 200, `gateway ${gw}: new key during overlap`);
            assert.equal(await status(hdr({ jwt: oldTok }), sock), 200, `gateway ${gw}: old token during overlap`);
            assert.equal(await status(hdr({ jwt: newTok }), sock), 200, `gateway ${gw}: new token during overlap`);
        }

        // 2. the old ones are removed
        const ctlDel = ctl(['key', 'delete', '--config', S.cfg, '--project', P, '--name', 'rot-old']);
        assert.equal(ctlDel.status, 0, ctlDel.stderr);
        const cfg2 = JSON.parse(fs.readFileSync(S.cfg, 'utf8'));
        const idp2 = cfg2.projects.find((x) => x.id === P);
        idp2.jwt = idp2.jwt.filter((k) => k.secret !== S.rotOldSecret);
        writeJsonAtomic(S.cfg, cfg2);
        await sighup();
        for (const [gw, [sock]] of socks) {
            const r = await keepAliveRequest(sock, 'GET', '/v1/presences', hdr({ key: S.rotOldKey }));
            assert.equal(r.status, 401, `gateway ${gw}: old key after removal: ${r.text}`);
            assert.equal(r.json.type, 'user_unauthorized');
            const j = await keepAliveRequest(sock, 'GET', '/v1/presences', hdr({ jwt: oldTok }));
            assert.equal(j.status, 401, `gateway ${gw}: old token after removal: ${j.text}`);
            assert.equal(j.json.type, 'user_jwt_invalid');
            assert.equal(await status(hdr({ key: rotNewKey }), sock), 200, `gateway ${gw}: new key`);
            assert.equal(await status(hdr({ jwt: newTok }), sock), 200, `gateway ${gw}: new token`);
            assert.equal(await status(hdr({ key: S.backendKey }), sock), 200, `gateway ${gw}: untouched key`);
        }
        // 3. a broken file is refused and the current projects stay
        fs.writeFileSync(S.cfg + '.bak', fs.readFileSync(S.cfg));
        fs.writeFileSync(S.cfg, '{ "projects": [ {');
        const warnBefore = (S.cluster.log().match(/reload failed/g) || []).length;
        process.kill(S.cluster.pid, 'SIGHUP');
        for (let i = 0; i < 200 && (S.cluster.log().match(/reload failed/g) || []).length < warnBefore + S.cluster.gateways; i++) await sleep(25);
        assert.equal(await status({ project: P, key: rotNewKey }), 200, 'a bad file keeps the last good projects');
        fs.renameSync(S.cfg + '.bak', S.cfg);

        for (const [gw, [sock]] of socks) {
            assert.ok(!sock.destroyed, 'keep-alive connection survived the reloads');
            assert.equal(await status(hdr({ key: rotNewKey }), sock), 200, `gateway ${gw}: the kept-alive connection still serves`);
        }
        for (const [, arr] of socks) for (const s of arr) s.destroy();
        if (ws) {
            const pong = await new Promise((resolve) => {
                ws.on('message', (d) => { if (JSON.parse(String(d)).type === 'pong') resolve(true); });
                ws.send(JSON.stringify({ type: 'ping' }));
                setTimeout(() => resolve(false), 3000);
            });
            assert.equal(wsClosed, null, `the WebSocket was closed by the reload (code ${wsClosed})`);
            assert.ok(pong, 'the WebSocket still answers ping after the reloads');
            ws.close(1000);
        }
    });
});

// --- secrets stay secret ------------------------------------------------------------------------------

describe('secrets stay secret', () => {
    it('no secret appears in a process title, or anywhere in the log of the whole run', async () => {
        const titles = S.cluster.procs().map((p) => p.args).concat([fs.readFileSync(`/proc/${S.cluster.pid}/cmdline`, 'utf8')]);
        for (const [value, what] of SECRETS) {
            for (const t of titles) assert.ok(!t.includes(value), `${what} appears in a process title: ${t.slice(0, 200)}`);
        }
        await S.cluster.stop();
        const log = S.cluster.finalLog || '';
        assert.ok(log.length > 1000, 'the log was captured');
        const found = [];
        for (const [value, what] of SECRETS) if (log.includes(value)) found.push(what);
        if (found.length) S.cluster.keepLog();
        assert.deepEqual(found, [], `secrets found in the cluster log (${SECRETS.size} checked)`);
    });
});
