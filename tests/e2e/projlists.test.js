'use strict';
// Lists of projects of very different sizes sharing 3 store nodes (about 3,000, 200 and 20
// records): a list that nothing narrows (no index declared, no equal() on $id or userId) walks
// only its project's records on each node, the status chains of the statuses the project
// holds (store/st_projects.h), unless the project holds half a node's records or more (then
// every record of the node, as before). A randomized differential test against the model of
// lists.test.js (lib/listmodel.js): filters on source, userId ranges, metadata, dates and
// status, orders, offsets, cursors and totals, and counts, mostly on the two small projects,
// while records are created, change status (by an update, or an upsert of the whole record)
// and are deleted; then a store node SIGKILLed: lists are exact as soon as the node serves
// again (it counts its records again, st_projects_recount_step) and after; then the store set
// grown to 4 nodes and shrunk back to 3 (records move in and out without events): lists are
// exact during the moves and after. (A status is never null here: REST and realtime both
// require one; tests/unit/st_projects_test.c has null ones.)
// PROJLISTS_SEED=<n> replays a run.
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { useCluster, sleep, BIN } = require('./lib/cluster');
const { nodeClient, mintJwt, webClient, plain, loadNodeSdk } = require('./lib/sdk');
const { api } = require('./lib/http');
const { shardOwner } = require('./lib/shard');
const { mulberry32, ms, matches, toQuery, readable, modelList } = require('./lib/listmodel');

const STORES = 3;
const KEY = 'pk_' + crypto.randomBytes(16).toString('hex');
const JWT = 'pj_' + crypto.randomBytes(16).toString('hex');
// size: records written at first; statuses: those its records take (some shared by projects)
const PROJECTS = {
    'pl-big': { size: 3000, statuses: ['online', 'away', 'busy'] },
    'pl-mid': { size: 200, statuses: ['online', 'busy', 'in-game', 'été'] },
    'pl-small': { size: 20, statuses: ['online', 'away', '🎮'] },
};
const project = (id) => ({ id, keys: [{ name: 'k', secret_env: 'PROJLISTS_KEY', scopes: ['presences.read', 'presences.write'] }], jwt: [{ alg: 'HS256', secret: JWT }] });
const H = useCluster(test, {
    label: 'projlists', stores: STORES, gateways: 2,
    args: ['--move-rate', '3000'], // moves last long enough for lists to race them (reshard.test.js)
    env: { PROJLISTS_KEY: KEY },
    config: { projects: Object.keys(PROJECTS).map(project) },
});
const C = () => H.cluster;
const { Query: Q, Permission, Role } = loadNodeSdk();
const keyP = (p) => nodeClient(C(), { project: p, key: KEY }).presences;

const seed = process.env.PROJLISTS_SEED ? Number(process.env.PROJLISTS_SEED) : crypto.randomInt(2 ** 31);
const rnd = mulberry32(seed);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const ROOMS = ['lobby', 'red', 'blue'];
const USERS = Array.from({ length: 6 }, (_, i) => `pu${i}`);
const models = Object.fromEntries(Object.keys(PROJECTS).map((p) => [p, new Map()])); // $id -> record
const deleted = Object.fromEntries(Object.keys(PROJECTS).map((p) => [p, []]));

async function pool(n, items, fn) {
    let next = 0;
    await Promise.all(Array.from({ length: n }, async () => {
        while (next < items.length) { const i = next++; await fn(items[i], i); }
    }));
}

// The body of an upsert: one of the project's statuses, metadata, permissions.
function fields(p, user) {
    const metadata = { room: pick(ROOMS) };
    if (rnd() < 0.7) metadata.n = int(-5, 40);
    const f = { userId: user, status: pick(PROJECTS[p].statuses), metadata, expiresAt: new Date(Date.now() + int(10, 120) * 60000).toISOString() };
    const perms = pick([undefined, [Permission.read(Role.any())], [Permission.read(Role.users())], [Permission.read(Role.user(pick(USERS)))]]);
    if (perms) f.permissions = perms;
    return f;
}

// An upsert, through the SDK (source "rest") or raw HTTP marked as GraphQL (source "graphql").
async function upsert(p, id, body) {
    if (rnd() < 0.8) return plain(await keyP(p).upsert({ presenceId: id, ...body }));
    const r = await api(C(), 'PUT', `/v1/presences/${id}`, { project: p, key: KEY, body, headers: { 'x-appwrite-source': 'graphql' } });
    assert.equal(r.status, 200, `upsert ${p}/${id}: ${r.status} ${r.text}`);
    return r.json;
}

async function randomWrite(p) {
    const model = models[p], live = [...model.values()], r = rnd();
    if (r < 0.4 || live.length < 3) { // a new record (its user new, or one with a record: then that one changes)
        const user = `${p}-w${int(0, 3 * PROJECTS[p].size)}`;
        const got = await upsert(p, 'n' + Math.floor(rnd() * 2 ** 40).toString(36), fields(p, user));
        model.set(got.$id, got);
    } else if (r < 0.6) { // the whole record again (its status too)
        const v = pick(live);
        const got = await upsert(p, v.$id, fields(p, v.userId));
        model.set(got.$id, got);
    } else if (r < 0.85) { // a status (or metadata) changed
        const v = pick(live);
        const f = { userId: v.userId, status: pick(PROJECTS[p].statuses) };
        if (rnd() < 0.3) f.metadata = { room: pick(ROOMS), n: int(-5, 40) };
        model.set(v.$id, plain(await keyP(p).update({ presenceId: v.$id, ...f })));
    } else {
        const v = pick(live);
        await keyP(p).delete({ presenceId: v.$id });
        model.delete(v.$id);
        deleted[p].push(v.$id);
    }
}

// Filters that no store node can answer from an index or a lookup: each one is a walk.
function randomFilter(p, depth = 0) {
    const recs = [...models[p].values()];
    const some = () => pick(recs);
    switch (int(0, depth < 1 ? 13 : 11)) {
    case 0: return { m: pick(['equal', 'notEqual']), attr: 'source', values: [pick(['rest', 'graphql'])] };
    case 1: return { m: pick(['greaterThan', 'lessThan', 'greaterThanEqual', 'lessThanEqual']), attr: 'userId', values: [some().userId] };
    case 2: { const [a, b] = [some().userId, some().userId].sort(); return { m: 'between', attr: 'userId', values: [a, b] }; }
    case 3: return { m: 'startsWith', attr: 'userId', values: [`${p}-${pick(['', 'w1', 'u1', 'u2', 'w'])}`] };
    case 4: return { m: 'equal', attr: 'metadata.room', values: [pick(ROOMS)] };
    case 5: return { m: pick(['lessThan', 'greaterThanEqual']), attr: 'metadata.n', values: [int(-5, 40)] };
    case 6: return { m: pick(['isNull', 'isNotNull']), attr: 'metadata.n' };
    case 7: return { m: pick(['greaterThan', 'lessThan']), attr: pick(['$createdAt', '$updatedAt']), values: [new Date(ms(some()[pick(['$createdAt', '$updatedAt'])]) + int(-1, 1)).toISOString()] };
    case 8: return { m: pick(['greaterThan', 'lessThan']), attr: 'expiresAt', values: [new Date(Date.now() + int(10, 120) * 60000).toISOString()] };
    case 9: return { m: 'startsWith', attr: '$id', values: ['n' + int(0, 35).toString(36)] };
    case 10: return { m: pick(['lessThan', 'greaterThan']), attr: 'status', values: [pick(PROJECTS[p].statuses)] };
    case 11: return { m: 'startsWith', attr: 'status', values: [pick(['o', 'a', 'é', ''])] };
    case 12: return { m: 'or', sub: [randomFilter(p, depth + 1), randomFilter(p, depth + 1)] };
    default: return { m: 'and', sub: [randomFilter(p, depth + 1), randomFilter(p, depth + 1)] };
    }
}

const ORDER_ATTRS = ['status', 'userId', '$id', 'source', 'expiresAt', '$createdAt', '$updatedAt'];
const stats = { lists: 0, counts: 0, cursors: 0, nonEmpty: 0, errors: 0 };

// One random list (or count) of project p, checked against the model: true, or false when it
// was answered 503 (a node away) and allow503.
async function checkList(p, what, allow503 = false) {
    const caller = pick([{ key: true }, { key: true }, { key: true }, { user: pick(USERS) }, {}]);
    const spec = { filters: [], order: [], offset: 0, limit: 25, cursor: null, total: rnd() < 0.85 };
    for (let k = int(0, 2); k > 0; k--) spec.filters.push(randomFilter(p));
    const recs = [...models[p].values()];
    const queries = spec.filters.map(toQuery);
    if (caller.key && rnd() < 0.15) { // a count: filters only, exact past 5,000
        const qs = queries.map((q) => 'queries[]=' + encodeURIComponent(q)).join('&');
        const r = await api(C(), 'GET', '/v1/presences/count' + (qs ? '?' + qs : ''), { project: p, key: KEY });
        if (r.status === 503 && allow503) return false;
        const want = recs.filter((x) => readable(x, caller) && spec.filters.every((f) => matches(x, f))).length;
        assert.equal(r.status, 200, `${what}: count ${JSON.stringify(queries)}: ${r.status} ${r.text}`);
        assert.equal(r.json.total, want, `${what}: count ${JSON.stringify(queries)}`);
        stats.counts++;
        return true;
    }
    for (let k = int(0, 2); k > 0; k--) spec.order.push({ attr: pick(ORDER_ATTRS), desc: rnd() < 0.5 });
    if (rnd() < 0.5) spec.limit = int(1, 60);
    if (rnd() < 0.3) spec.offset = int(0, 30);
    if (rnd() < 0.35 && recs.length) {
        spec.cursor = { id: rnd() < 0.1 && deleted[p].length ? pick(deleted[p]) : pick(recs).$id, before: rnd() < 0.5 };
        stats.cursors++;
    }
    queries.push(...spec.order.map((o) => (o.desc ? Q.orderDesc(o.attr) : Q.orderAsc(o.attr))));
    if (spec.limit !== 25) queries.push(Q.limit(spec.limit));
    if (spec.offset) queries.push(Q.offset(spec.offset));
    if (spec.cursor) queries.push(spec.cursor.before ? Q.cursorBefore(spec.cursor.id) : Q.cursorAfter(spec.cursor.id));
    const want = modelList(recs, caller, spec);
    if (!spec.total && !want.error) want.total = 0;
    const client = caller.key ? keyP(p)
        : caller.user ? nodeClient(C(), { project: p, jwt: mintJwt(JWT, { userId: caller.user }) }).presences
            : webClient(C(), { project: p }).presences;
    const where = `${what}, project ${p}, caller ${JSON.stringify(caller)}, queries ${JSON.stringify(queries)}`;
    let got;
    try {
        got = plain(await client.list(spec.total ? { queries } : { queries, total: false }));
    } catch (e) {
        if (e.code === 503 && allow503) return false;
        assert.equal(want.error, e.type, `${where}: ${e.code} ${e.type} ${e.message}`);
        stats.errors++;
        return true;
    }
    assert.equal(want.error, undefined, `${where}: expected ${want.error}, got a list`);
    assert.deepEqual(got.presences.map((x) => x.$id), want.ids, `${where}: ids`);
    assert.equal(got.total, want.total, `${where}: total`);
    for (const x of got.presences) assert.deepEqual(x, models[p].get(x.$id), `${where}: record ${x.$id}`);
    stats.lists++;
    if (want.ids.length) stats.nonEmpty++;
    return true;
}

// Mostly the small projects (their lists walk their own chains), some of the large one (it
// holds most of every node: the walk of every record).
const listProject = () => pick(['pl-small', 'pl-small', 'pl-mid', 'pl-mid', 'pl-big']);

// The store nodes' fallbacks (st_projects.h) keep lists exact when the statuses held are not
// those of the table's records: here they must never be needed.
const FALLBACK = /does not fit the counts held|a status chain does not hold the records counted/;

async function run(t, fn) {
    t.diagnostic(`seed ${seed} (PROJLISTS_SEED=${seed} replays it)`);
    try {
        await fn();
        assert.doesNotMatch(C().log(), FALLBACK, 'a store node fell back to the walk of every record');
    } catch (e) {
        e.message = `[PROJLISTS_SEED=${seed}] ${e.message}`;
        throw e;
    }
}

it('three projects of very different sizes share the store nodes', { timeout: 180000 }, async (t) => {
    await run(t, async () => {
        for (const [p, { size }] of Object.entries(PROJECTS)) {
            const got = new Array(size);
            const bodies = Array.from({ length: size }, (_, i) => fields(p, `${p}-u${i}`));
            await pool(32, bodies, async (b, i) => { got[i] = await upsert(p, `${p}-${i}`, b); });
            for (const r of got) models[p].set(r.$id, r);
        }
        for (const p of Object.keys(PROJECTS)) {
            const nodes = new Set([...models[p].keys()].map((id) => shardOwner(p, id, STORES)));
            assert.ok(nodes.size >= 2, `${p}: records on ${nodes.size} node(s)`);
            for (const s of PROJECTS[p].statuses)
                assert.ok([...models[p].values()].some((r) => r.status === s), `${p}: no record holds status ${s}`);
        }
        const m = await C().waitMetrics((x) => x.sum('presenced_store_records') === 3220);
        assert.equal(m.sum('presenced_store_records'), 3220);
    });
});

it('unindexed lists and counts of each project answer as the model does, under writes', { timeout: 240000 }, async (t) => {
    await run(t, async () => {
        for (let i = 0; i < 400; i++) {
            if (i % 20 === 0) for (let k = 0; k < 8; k++) await randomWrite(pick(['pl-small', 'pl-mid', 'pl-mid', 'pl-big']));
            await checkList(listProject(), `check ${i}`);
        }
        t.diagnostic(JSON.stringify(stats));
        assert.ok(stats.nonEmpty > stats.lists / 3, 'most lists must hold something, or the test checks little');
        assert.ok(stats.counts > 20 && stats.cursors > 40, JSON.stringify(stats));
    });
});

it('a store node SIGKILLed: lists are exact as soon as it serves again, and after', { timeout: 240000 }, async (t) => {
    await run(t, async () => {
        for (let round = 0; round < 3; round++) {
            const node = 1 + (round % STORES);
            const old = C().pids('store', node);
            assert.equal(old.length, 1);
            C().kill('store', node, 'SIGKILL');
            await C().waitRestarted('store', node, old);
            // the first list that is answered (not 503 while the node is away) must be exact
            let first = 0;
            for (const deadline = Date.now() + 20000; Date.now() < deadline;) {
                try {
                    await keyP('pl-small').list({ queries: [Q.limit(1)] });
                    break;
                } catch (e) {
                    assert.equal(e.code, 503, `while store ${node} restarts: ${e.code} ${e.type} ${e.message}`);
                    first++;
                    await sleep(5);
                }
            }
            for (let i = 0; i < 30; i++) await checkList(pick(['pl-small', 'pl-mid']), `round ${round} (node ${node}), right after: check ${i}`);
            await C().waitHealthy(20000);
            for (let i = 0; i < 100; i++) {
                if (i % 10 === 0) for (let k = 0; k < 6; k++) await randomWrite(pick(['pl-small', 'pl-mid', 'pl-big']));
                await checkList(listProject(), `round ${round} (node ${node}), after: check ${i}`);
            }
            t.diagnostic(`round ${round}: store ${node} restarted, ${first} lists answered 503 first`);
        }
        assert.match(C().log(), /counted \d+ records in \d+ projects \(\d+ statuses\)/);
        t.diagnostic(JSON.stringify(stats));
    });
});

// presencectl cluster scale (reshard.test.js): resolves to its JSON answer.
function scale(stores) {
    const ctl = path.join(path.dirname(BIN), 'presencectl');
    return new Promise((resolve, reject) => {
        execFile(ctl, ['cluster', 'scale', '--run-dir', C().runDir, '--stores', String(stores), '--wait'], { timeout: 180000 },
            (err, stdout, stderr) => (err ? reject(new Error(`presencectl: ${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout))));
    });
}

it('the store set grown to 4 nodes and shrunk back to 3: lists are exact during the moves and after', { timeout: 300000 }, async (t) => {
    await run(t, async () => {
        for (const stores of [4, 3]) {
            let done = false, during = 0, unavailable = 0;
            const moved = scale(stores).finally(() => { done = true; });
            while (!done) {
                if (await checkList(pick(['pl-small', 'pl-mid']), `to ${stores} nodes, during the moves: check ${during}`, true)) during++;
                else unavailable++;
            }
            const r = await moved;
            assert.equal(r.settled, true, JSON.stringify(r));
            for (let i = 0; i < 100; i++) {
                if (i % 10 === 0) for (let k = 0; k < 6; k++) await randomWrite(pick(['pl-small', 'pl-mid', 'pl-big']));
                await checkList(listProject(), `${stores} nodes, after the moves: check ${i}`);
            }
            t.diagnostic(`${stores} nodes: ${during} lists checked during the moves (${unavailable} answered 503)`);
        }
        t.diagnostic(JSON.stringify(stats));
    });
});
