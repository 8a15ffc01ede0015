'use strict';
// Lists across store nodes, end to end with the official SDKs (node-appwrite with an API key,
// the web SDK with users' JWTs), on a cluster of 3 store nodes and 2 gateways:
//   - more than 5,000 matching records: `total` is capped at 5,000 and paging still reaches
//     every record exactly once (cursorAfter, offset, cursorBefore), with pages of 1,000 and
//     more taking two rounds (the nodes' keys, then the page's records);
//   - cursorBefore paging across the nodes gives the cursorAfter sequence backwards; an
//     unknown, deleted or unreadable cursor is 400 general_cursor_not_found;
//   - a claim undone after a 409: the refused user can then create its own record;
//   - a randomized differential test of list (filters, orders, cursors, offsets, totals,
//     permissions, the ?ttl= cache and its purges) against a model kept in the test (seeded:
//     LISTS_SEED=<n> replays a run; the seed is printed with every failure);
//   - the broker SIGKILLed and restarted under writes: one presence per user holds, errors
//     stop within a bounded window, realtime events resume.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the web SDK is loaded: it takes globalThis.WebSocket
const { useCluster, sleep } = require('./lib/cluster');
const { nodeClient, webClient, mintJwt, plain, loadNodeSdk } = require('./lib/sdk');
const { api } = require('./lib/http');
const { shardOwner } = require('./lib/shard');
const { assertError, assertList, rejectsWith, uid } = require('./lib/check');
const { mulberry32, ms, matches, toQuery, modelList } = require('./lib/listmodel');

const STORES = 3;
const DIFF = 'diff-project';
const DIFF_KEY = 'dk_' + crypto.randomBytes(16).toString('hex');
const DIFF_JWT = 'dj_' + crypto.randomBytes(16).toString('hex');
const H = useCluster(test, {
    label: 'lists', stores: STORES, gateways: 2,
    // no roster replicas (gateway/gw_replica.h): these lists are the store nodes' and the
    // broker's, the path every list takes that a replica does not answer (replica.test.js)
    args: ['--list-replica', '0'],
    env: { LISTS_DIFF_KEY: DIFF_KEY },
    // metadata.n, status and two dates are indexed: their equal()s and ranges are answered from
    // the store nodes' indexes (st_index.h), and pages ordered by status, $createdAt (the default
    // order) or $updatedAt are walked in index order and stop early; metadata.room, metadata.flag
    // and expiresAt are not indexed (a scan, a sort)
    config: { projects: [{ id: DIFF, indexes: ['metadata.n', 'status', '$createdAt', '$updatedAt'], keys: [{ name: 'k', secret_env: 'LISTS_DIFF_KEY', scopes: ['presences.read', 'presences.write'] }], jwt: [{ alg: 'HS256', secret: DIFF_JWT }] }] },
});
const C = () => H.cluster;
const N = loadNodeSdk();
const { Query: Q, Permission, Role } = N;
const keyP = () => nodeClient(C(), {}).presences;

// Runs fn over items with at most n in flight.
async function pool(n, items, fn) {
    const out = new Array(items.length);
    let next = 0;
    await Promise.all(Array.from({ length: n }, async () => {
        while (next < items.length) {
            const i = next++;
            out[i] = await fn(items[i], i);
        }
    }));
    return out;
}

const cursorMsg = (id) => `Presence '${id}' for the 'cursor' value not found.`;

// --- more than 5,000 -----------------------------------------------------------------------

describe('more than 5,000 matching records', () => {
    const COUNT = 5150;
    const tag = uid('bulk');
    const ids = new Set();
    test.before(async () => {
        const made = await pool(48, Array.from({ length: COUNT }, (_, i) => i), (i) =>
            keyP().upsert({ presenceId: `${tag}-${i}`, userId: `${tag}-u${i}`, status: tag }));
        for (const r of made) ids.add(r.$id);
        assert.equal(ids.size, COUNT);
    }, { timeout: 120000 });

    it('total is capped at 5,000 (and 0 with total=false)', async () => {
        const l = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.limit(1)] }));
        assertList(l);
        assert.equal(l.total, 5000);
        assert.equal(l.presences.length, 1);
        const nt = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.limit(1)], total: false }));
        assert.equal(nt.total, 0);
    });

    it('cursorAfter pages of 5,000 reach every record exactly once; every page says 5,000', async () => {
        const seen = [];
        let cursor;
        for (let page = 0; page < 5; page++) {
            const q = [Q.equal('status', [tag]), Q.limit(5000)];
            if (cursor) q.push(Q.cursorAfter(cursor));
            const l = plain(await keyP().list({ queries: q }));
            assert.equal(l.total, 5000, `page ${page}`);
            if (!l.presences.length) break;
            seen.push(...l.presences.map((p) => p.$id));
            cursor = seen[seen.length - 1];
        }
        assert.equal(seen.length, COUNT);
        assert.deepEqual(new Set(seen), ids);
    });

    it('offset pages up to offset 5,000 reach every record exactly once, in one order', async () => {
        const seen = [];
        const fetched = async () => (await C().metrics()).sum('presenced_list_fetches_total', { result: 'fetched' });
        const byGateway = () => C().gatewaySum('presenced_gateway_list_plans_total', { result: 'fetched' });
        const before = await fetched(), beforeGw = await byGateway();
        let sample;
        for (let off = 0; off <= 5000; off += 1000) {
            const l = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.orderDesc('userId'), Q.offset(off), Q.limit(1000)] }));
            seen.push(...l.presences.map((p) => p.userId));
            sample ??= l.presences[500];
        }
        // pages this large are merged from the nodes' keys, then their records fetched (broker.c,
        // "large lists in two rounds"): every field as a read gives it
        assert.ok(await fetched() >= before + 6, 'the pages took two rounds');
        // and the gateway fetched each page's records from the nodes itself (gw_rest.c, "lists")
        assert.ok(await byGateway() >= beforeGw + 6, 'the gateway fetched the pages');
        assert.deepEqual(sample, plain(await keyP().get({ presenceId: sample.$id })));
        assert.equal(seen.length, COUNT);
        assert.deepEqual(seen, [...seen].sort().reverse(), 'orderDesc(userId) across pages');
        assert.equal(new Set(seen).size, COUNT);
        // beyond 5,000: an API key may page on by offset (to 100,000), a user may not
        const deep = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.orderDesc('userId'), Q.offset(5100), Q.limit(1000)] }));
        assert.deepEqual(deep.presences.map((p) => p.userId), seen.slice(5100));
        const past = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.offset(COUNT)] }));
        assert.equal(past.presences.length, 0);
        const beyond = await api(C(), 'GET', `/v1/presences?queries[0]=${encodeURIComponent(Q.offset(100001))}`, { key: true });
        assertError(beyond, 400, 'general_argument_invalid');
        const jwt = mintJwt(C().jwtSecret, { userId: uid('deep') });
        const user = await api(C(), 'GET', `/v1/presences?queries[0]=${encodeURIComponent(Q.offset(5001))}`, { jwt });
        assertError(user, 400, 'general_argument_invalid');
        assert.match(user.json.message, /between 0 and 5,000/);
    });

    it('cursorBefore pages backwards from the last record reach every record exactly once', async () => {
        const last = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.orderDesc('$createdAt'), Q.orderDesc('$id'), Q.limit(1)] })).presences[0];
        const back = [last.$id];
        let cursor = last.$id;
        for (;;) {
            const l = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.cursorBefore(cursor), Q.limit(2000)] }));
            if (!l.presences.length) break;
            back.unshift(...l.presences.map((p) => p.$id));
            cursor = l.presences[0].$id;
        }
        assert.equal(back.length, COUNT);
        assert.deepEqual(new Set(back), ids);
    });
});

// --- cursors across store nodes ------------------------------------------------------------

describe('a record deleted between a large list\'s two rounds', () => {
    const COUNT = 2000;
    const tag = uid('churn');
    test.before(async () => {
        await pool(48, Array.from({ length: COUNT }, (_, i) => i), (i) =>
            keyP().upsert({ presenceId: `${tag}-${i}`, userId: `${tag}-u${String(i).padStart(4, '0')}`, status: tag }));
    }, { timeout: 120000 });

    it('the page is listed again (gw_rest.c s_list_again): whole, unique, in order', { timeout: 60000 }, async (t) => {
        const again = async () => (await C().metrics()).sum('presenced_list_fetches_total', { result: 'listed_again' });
        const gwAgain = () => C().gatewaySum('presenced_gateway_list_plans_total', { result: 'listed_again' });
        const before = await again(), beforeGw = await gwAgain();
        let stop = false, lists = 0, churned = 0;
        // four clients delete a record of the set and create it again, one at a time each: at
        // least 1,996 records match at any instant, and a delete lands between a list's rounds
        // (the nodes' keys, then the page's records) now and then
        const churn = Promise.all([0, 1, 2, 3].map(async (w) => {
            for (let k = w; !stop; k = (k + 4) % COUNT) {
                await keyP().delete({ presenceId: `${tag}-${k}` });
                await keyP().upsert({ presenceId: `${tag}-${k}`, userId: `${tag}-u${String(k).padStart(4, '0')}`, status: tag });
                churned++;
            }
        }));
        const deadline = Date.now() + 40000;
        try {
            while (Date.now() < deadline && (await again()) === before) {
                for (let i = 0; i < 10; i++) {
                    const l = plain(await keyP().list({ queries: [Q.equal('status', [tag]), Q.orderAsc('userId'), Q.limit(1000)] }));
                    lists++;
                    const users = l.presences.map((p) => p.userId);
                    assert.equal(users.length, 1000, 'a whole page');
                    assert.equal(new Set(users).size, 1000, 'no record twice');
                    assert.deepEqual(users, [...users].sort(), 'in order');
                    assert.ok(l.presences.every((p) => p.status === tag && p.$id === `${tag}-${Number(p.userId.slice(-4))}`));
                }
            }
        } finally {
            stop = true;
            await churn;
        }
        t.diagnostic(`${lists} lists, ${churned} records deleted and created again`);
        assert.ok((await again()) > before, `a page was listed again (${lists} lists while ${churned} records were deleted and created again)`);
        // the gateway fetched the plan, found a record gone and sent the list again (FLAGS AGAIN)
        assert.ok((await gwAgain()) > beforeGw, 'the gateway listed a page again');
    });
});

describe('cursors across store nodes', () => {
    const tag = uid('cur');
    let recs;
    test.before(async () => {
        recs = [];
        for (let i = 0; i < 30; i++) { // one at a time: $createdAt ties are broken by $id anyway
            recs.push(plain(await keyP().upsert({ presenceId: `${tag}-${String(i).padStart(2, '0')}`, userId: `${tag}-u${(i * 7) % 30}`, status: `s${i % 4}` })));
        }
        const nodes = new Set(recs.map((r) => shardOwner(C().project, r.$id, STORES)));
        assert.equal(nodes.size, STORES, 'the records must span every store node');
    });

    for (const [name, order] of [['default order', []], ['orderDesc(userId)', [() => Q.orderDesc('userId')]], ['orderAsc(status), ties', [() => Q.orderAsc('status')]]]) {
        it(`cursorBefore pages give the cursorAfter sequence backwards: ${name}`, async () => {
            const base = () => [Q.equal('status', ['s0', 's1', 's2', 's3']), Q.startsWith('$id', tag), ...order.map((f) => f())];
            const all = plain(await keyP().list({ queries: [...base(), Q.limit(100)] })).presences.map((p) => p.$id);
            assert.equal(all.length, 30);
            const fwd = [];
            let cursor;
            for (;;) {
                const q = [...base(), Q.limit(7)];
                if (cursor) q.push(Q.cursorAfter(cursor));
                const l = plain(await keyP().list({ queries: q }));
                assert.equal(l.total, 30);
                if (!l.presences.length) break;
                fwd.push(...l.presences.map((p) => p.$id));
                cursor = fwd[fwd.length - 1];
            }
            assert.deepEqual(fwd, all, 'cursorAfter');
            const bwd = [all[all.length - 1]];
            cursor = all[all.length - 1];
            for (;;) {
                const l = plain(await keyP().list({ queries: [...base(), Q.limit(7), Q.cursorBefore(cursor)] }));
                assert.equal(l.total, 30);
                if (!l.presences.length) break;
                bwd.unshift(...l.presences.map((p) => p.$id));
                cursor = l.presences[0].$id;
            }
            assert.deepEqual(bwd, all, 'cursorBefore');
            // with an offset: skip the nearest ones before the cursor
            const k = 20;
            const l = plain(await keyP().list({ queries: [...base(), Q.cursorBefore(all[k]), Q.offset(3), Q.limit(5)] }));
            assert.deepEqual(l.presences.map((p) => p.$id), all.slice(k - 8, k - 3));
        });
    }

    it('an unknown or deleted cursor is 400 general_cursor_not_found (SDK and raw)', async () => {
        const ghost = uid('ghost');
        for (const mk of [Q.cursorAfter, Q.cursorBefore]) {
            const e = await rejectsWith(keyP().list({ queries: [mk(ghost)] }), 400, 'general_cursor_not_found');
            assert.equal(e.message, cursorMsg(ghost));
        }
        const gone = plain(await keyP().upsert({ presenceId: uid('gone'), userId: uid('gu'), status: 'x' }));
        await keyP().delete({ presenceId: gone.$id });
        const r = await api(C(), 'GET', `/v1/presences?queries[0]=${encodeURIComponent(Q.cursorBefore(gone.$id))}`, { key: true });
        assertError(r, 400, 'general_cursor_not_found');
        assert.equal(r.json.message, cursorMsg(gone.$id));
        const bad = await api(C(), 'GET', `/v1/presences?queries[0]=${encodeURIComponent(Q.cursorAfter('no such id!'))}`, { key: true });
        assert.equal(bad.status, 400, 'a cursor that is not a UID');
    });

    it('a cursor the caller may not read is 400 general_cursor_not_found, as if it did not exist', async () => {
        const alice = uid('a'), bob = uid('b');
        const wa = webClient(C(), { userId: alice }).presences;
        const wb = webClient(C(), { userId: bob }).presences;
        const priv = plain(await wa.upsert({ presenceId: uid('priv'), status: 'mine' }));
        await wb.upsert({ presenceId: uid('pb'), status: 'bobs', permissions: [Permission.read(Role.users())] });
        for (const mk of [Q.cursorAfter, Q.cursorBefore]) {
            const e = await rejectsWith(wb.list({ queries: [mk(priv.$id)] }), 400, 'general_cursor_not_found');
            assert.equal(e.message, cursorMsg(priv.$id));
        }
        assert.ok(plain(await wa.list({ queries: [Q.cursorAfter(priv.$id), Q.limit(1)] })), 'its owner may use it');
    });
});

// --- claims ----------------------------------------------------------------------------------

describe('a claim undone after a 409', () => {
    it('node-appwrite: the refused user can then create its own record (claims on every node)', async () => {
        for (let round = 0; round < 6; round++) { // several users: their claims land on different nodes
            const alice = uid('a'), bob = uid('b'), x = uid('x'), y = uid('y');
            const ax = plain(await keyP().upsert({ presenceId: x, userId: alice, status: 'alice' }));
            for (let i = 0; i < 2; i++) {
                const e = await rejectsWith(keyP().upsert({ presenceId: x, userId: bob, status: 'bob' }), 409, 'presence_already_exists');
                assert.match(e.message, new RegExp(`'${x}'`));
            }
            const by = plain(await keyP().upsert({ presenceId: y, userId: bob, status: 'bob' }));
            assert.equal(by.$id, y, 'bob\'s own record, under the id he asked for');
            assert.equal(by.userId, bob);
            const lb = plain(await keyP().list({ queries: [Q.equal('userId', [bob])] }));
            assert.deepEqual(lb.presences.map((p) => p.$id), [y]);
            const gx = plain(await keyP().get({ presenceId: x }));
            assert.deepEqual(gx, ax, 'alice\'s record is untouched');
            // and bob's next upsert under yet another id updates y (one presence per user)
            const again = plain(await keyP().upsert({ presenceId: uid('z'), userId: bob, status: 'bob2' }));
            assert.equal(again.$id, y);
        }
    });

    it('an update of an unknown id naming a user who has a record is 404, as in Appwrite (the row is looked up first)', async () => {
        for (let round = 0; round < 4; round++) { // ids and users on different nodes
            const a = plain(await keyP().upsert({ presenceId: uid('x'), userId: uid('a'), status: 'a' }));
            await rejectsWith(keyP().update({ presenceId: uid('none'), userId: a.userId, status: 'b' }), 404, 'presence_not_found');
            // an existing record given that user is still the 409 of one presence per user
            const b = plain(await keyP().upsert({ presenceId: uid('y'), userId: uid('b'), status: 'b' }));
            await rejectsWith(keyP().update({ presenceId: b.$id, userId: a.userId, status: 'b2' }), 409, 'presence_already_exists');
            assert.equal(plain(await keyP().get({ presenceId: a.$id })).status, 'a');
            assert.equal(plain(await keyP().get({ presenceId: b.$id })).status, 'b');
            assert.equal(plain(await keyP().get({ presenceId: b.$id })).userId, b.userId);
        }
    });

    it('web SDK (JWT users): the same', async () => {
        const carol = uid('c'), dave = uid('d'), x = uid('x'), y = uid('y');
        const wc = webClient(C(), { userId: carol }).presences;
        const wd = webClient(C(), { userId: dave }).presences;
        await wc.upsert({ presenceId: x, status: 'carol' });
        await rejectsWith(wd.upsert({ presenceId: x, status: 'dave' }), 409, 'presence_already_exists');
        const dy = plain(await wd.upsert({ presenceId: y, status: 'dave' }));
        assert.equal(dy.$id, y);
        assert.equal(dy.userId, dave);
        assert.equal(plain(await wc.get({ presenceId: x })).status, 'carol');
    });
});

// --- randomized differential test ----------------------------------------------------------

const STATUSES = ['online', 'away', 'busy', 'in-game', 'idle-x'];
const ROOMS = ['lobby', 'red', 'blue', 'green'];
const USERS = Array.from({ length: 12 }, (_, i) => `du${i}`);

describe('randomized differential test of list against a model (3 store nodes)', () => {
    const seed = process.env.LISTS_SEED ? Number(process.env.LISTS_SEED) : crypto.randomInt(2 ** 31);
    const rnd = mulberry32(seed);
    const pick = (a) => a[Math.floor(rnd() * a.length)];
    const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
    const diffKey = () => nodeClient(C(), { project: DIFF, key: DIFF_KEY }).presences;
    const model = new Map(); // $id -> record as the server returned it
    const deleted = [];
    // The list cache as Appwrite defines it: (caller, queries, total) -> the body of the list
    // that stored it, until a delete or a purge=true update (ttl=86400 here: nothing ages out)
    const cacheModel = new Map();

    function randomFields(user) {
        const metadata = { room: pick(ROOMS) };
        if (rnd() < 0.7) metadata.n = int(-5, 40);
        if (rnd() < 0.2) metadata.flag = rnd() < 0.5;
        const perms = pick([undefined, [Permission.read(Role.any())], [Permission.read(Role.users())], [Permission.read(Role.user(pick(USERS)))]]);
        const f = { userId: user, status: pick(STATUSES), metadata, expiresAt: new Date(Date.now() + int(10, 120) * 60000).toISOString() };
        if (perms) f.permissions = perms;
        return f;
    }

    function randomFilter(depth = 0) {
        const kind = int(0, depth < 1 ? 16 : 14);
        switch (kind) {
        case 10: return { m: 'equal', attr: 'metadata.n', values: [int(-5, 40), ...(rnd() < 0.3 ? [String(int(-5, 40))] : [])] };
        case 11: return { m: 'equal', attr: 'metadata.flag', values: [rnd() < 0.5] };
        case 12: return rnd() < 0.3 ? { m: 'startsWith', attr: 'status', values: [pick(['in', 'i', 'o', 'b', ''])] }
            : { m: pick(['lessThan', 'greaterThan', 'lessThanEqual', 'greaterThanEqual']), attr: 'status', values: [pick(STATUSES)] };
        case 13: return { m: 'startsWith', attr: '$id', values: ['d' + int(0, 35).toString(36)] };
        case 14: return { m: 'notEqual', attr: 'metadata.room', values: [pick(ROOMS)] };
        case 0: return { m: 'equal', attr: 'status', values: [pick(STATUSES), ...(rnd() < 0.4 ? [pick(STATUSES)] : [])] };
        case 1: return { m: 'notEqual', attr: 'status', values: [pick(STATUSES)] };
        case 2: return { m: 'equal', attr: 'metadata.room', values: [pick(ROOMS)] };
        case 3: return { m: pick(['lessThan', 'greaterThan', 'lessThanEqual', 'greaterThanEqual']), attr: 'metadata.n', values: [rnd() < 0.2 ? int(-5, 40) + 0.5 : int(-5, 40)] };
        case 4: { const a = int(-5, 40); return { m: 'between', attr: 'metadata.n', values: [a, a + int(0, 20)] }; }
        case 5: return { m: pick(['isNull', 'isNotNull']), attr: 'metadata.n' };
        case 6: return { m: 'startsWith', attr: 'userId', values: [pick(['du1', 'du', 'du2', 'x'])] };
        case 7: return { m: 'endsWith', attr: 'status', values: [pick(['e', 'y', 'x', 'ine'])] };
        case 8: return { m: 'equal', attr: 'userId', values: [pick(USERS)] };
        case 9: {
            if (rnd() < 0.5 || !model.size) return { m: pick(['greaterThan', 'lessThan']), attr: 'expiresAt', values: [new Date(Date.now() + int(10, 120) * 60000).toISOString()] };
            // an indexed date: a range around a record's own instant, ties included
            const at = (a) => new Date(ms(pick([...model.values()])[a]) + int(-1, 1)).toISOString();
            const a = pick(['$updatedAt', '$createdAt']);
            if (rnd() < 0.3) return { m: 'between', attr: a, values: [at(a), at(a)].sort() };
            return { m: pick(['lessThan', 'greaterThan', 'lessThanEqual', 'greaterThanEqual', 'equal']), attr: a, values: [at(a)] };
        }
        case 15: return { m: 'or', sub: [randomFilter(depth + 1), randomFilter(depth + 1)] };
        default: return { m: 'and', sub: [randomFilter(depth + 1), randomFilter(depth + 1)] };
        }
    }

    async function applyRandomWrite() {
        const r = rnd();
        const live = [...model.values()];
        if (r < 0.55 || live.length < 5) {
            const user = pick(USERS) + '-' + int(0, 30); // a user may exist already: then it is an update of its record
            const id = 'd' + Math.floor(rnd() * 2 ** 40).toString(36); // ids not in creation order
            const got = plain(await diffKey().upsert({ presenceId: id, ...randomFields(user) }));
            for (const [k, v] of model) if (v.userId === user && k !== got.$id) throw new Error(`seed ${seed}: user ${user} has two records`);
            model.set(got.$id, got);
        } else if (r < 0.8) {
            const victim = pick(live);
            const f = { status: pick(STATUSES) };
            if (rnd() < 0.5) f.metadata = { room: pick(ROOMS), n: int(-5, 40) };
            if (rnd() < 0.3) f.purge = true;
            const got = plain(await diffKey().update({ presenceId: victim.$id, userId: victim.userId, ...f }));
            model.set(got.$id, got);
            if (f.purge) cacheModel.clear();
        } else {
            const victim = pick(live);
            await diffKey().delete({ presenceId: victim.$id });
            model.delete(victim.$id);
            cacheModel.clear();
            deleted.push(victim.$id);
        }
    }

    // A list with ?ttl=86400 over raw HTTP (the header is not in the SDK's answer).
    async function cachedList(caller, queries, total) {
        const path = '/v1/presences?' + queries.map((q, i) => `queries[${i}]=${encodeURIComponent(q)}`).join('&') +
            '&ttl=86400' + (total ? '' : '&total=false');
        const auth = caller.key ? { key: DIFF_KEY } : caller.user ? { jwt: mintJwt(DIFF_JWT, { userId: caller.user }) } : {};
        const r = await api(C(), 'GET', path, { project: DIFF, ...auth });
        return { ...r, cache: r.headers.get('x-appwrite-cache') };
    }

    // A hit is the body the model's cache holds; a miss is the model's answer now (and is kept).
    function checkCached(r, a, want, what) {
        const ck = JSON.stringify([a.caller, a.queries, a.spec.total]);
        const held = cacheModel.get(ck);
        if (r.status !== 200) {
            assert.equal(r.json && r.json.type, want.error, `${what}: ${r.status} ${r.text}`);
            assert.equal(held, undefined, `${what}: an error where the cache holds a list`);
            return;
        }
        if (held !== undefined) {
            assert.equal(r.cache, 'hit', `${what}: the cache should hold it`);
            assert.equal(r.text, held, `${what}: a hit is the body stored`);
            return;
        }
        assert.equal(r.cache, 'miss', `${what}: nothing stored since the last purge`);
        assert.equal(want.error, undefined, `${what}: expected ${want.error}, got a list`);
        assert.deepEqual(r.json.presences.map((p) => p.$id), want.ids, `${what}: ids`);
        assert.equal(r.json.total, want.total, `${what}: total`);
        for (const p of r.json.presences) assert.deepEqual(p, model.get(p.$id), `${what}: record ${p.$id}`);
        cacheModel.set(ck, r.text);
    }

    it('list answers as the model does (seeded)', { timeout: 240000 }, async (t) => {
        t.diagnostic(`seed ${seed} (LISTS_SEED=${seed} replays it)`);
        try {
            for (let i = 0; i < 400; i++) await applyRandomWrite();
            const nodes = new Set([...model.keys()].map((id) => shardOwner(DIFF, id, STORES)));
            assert.equal(nodes.size, STORES, 'records on every node');
            const callers = [{ key: true }, { user: pick(USERS) }, { user: pick(USERS) }, {}];
            const ORDER_ATTRS = ['status', 'userId', '$id', 'expiresAt', '$createdAt', '$updatedAt'];
            let checks = 0, cursors = 0, nonEmpty = 0, hits = 0, misses = 0;
            const asked = []; // lists asked before, asked again to find them in the cache
            for (let i = 0; i < 400; i++) {
                if (i % 40 === 39) for (let k = 0; k < 10; k++) await applyRandomWrite();
                const useCache = rnd() < 0.4;
                if (useCache && asked.length && rnd() < 0.6) {
                    const a = pick(asked);
                    const r = await cachedList(a.caller, a.queries, a.spec.total);
                    const want = modelList([...model.values()], a.caller, a.spec);
                    if (!a.spec.total && !want.error) want.total = 0;
                    checkCached(r, a, want, `seed ${seed}, check ${i} (again), caller ${JSON.stringify(a.caller)}, queries ${JSON.stringify(a.queries)}`);
                    r.cache === 'hit' ? hits++ : misses++;
                    if (want.ids && want.ids.length) nonEmpty++;
                    checks++;
                    continue;
                }
                const caller = pick(callers);
                const spec = { filters: [], order: [], offset: 0, limit: 25, cursor: null, total: rnd() < 0.85 };
                for (let k = int(0, 3); k > 0; k--) spec.filters.push(randomFilter());
                for (let k = int(0, 2); k > 0; k--) spec.order.push({ attr: pick(ORDER_ATTRS), desc: rnd() < 0.5 });
                if (rnd() < 0.5) spec.limit = int(1, 60);
                else if (rnd() < 0.2) spec.limit = int(1000, 1100); // two rounds: a gateway fetches the plan
                if (rnd() < 0.3) spec.offset = int(0, 40);
                const recs = [...model.values()];
                if (rnd() < 0.4) {
                    const from = rnd() < 0.1 && deleted.length ? pick(deleted) : pick(recs).$id;
                    spec.cursor = { id: from, before: rnd() < 0.5 };
                }
                const queries = [...spec.filters.map(toQuery), ...spec.order.map((o) => (o.desc ? Q.orderDesc(o.attr) : Q.orderAsc(o.attr)))];
                if (spec.limit !== 25) queries.push(Q.limit(spec.limit));
                if (spec.offset) queries.push(Q.offset(spec.offset));
                if (spec.cursor) queries.push(spec.cursor.before ? Q.cursorBefore(spec.cursor.id) : Q.cursorAfter(spec.cursor.id));
                const want = modelList(recs, caller, spec);
                if (!spec.total && !want.error) want.total = 0;
                const client = caller.key ? diffKey()
                    : caller.user ? nodeClient(C(), { project: DIFF, jwt: mintJwt(DIFF_JWT, { userId: caller.user }) }).presences
                        : webClient(C(), { project: DIFF }).presences; // a guest
                const what = () => `seed ${seed}, check ${i}, caller ${JSON.stringify(caller)}, queries ${JSON.stringify(queries)}`;
                if (useCache) {
                    const r = await cachedList(caller, queries, spec.total);
                    checkCached(r, { caller, queries, spec }, want, what());
                    asked.push({ caller, queries, spec });
                    r.cache === 'hit' ? hits++ : misses++;
                    if (want.ids && want.ids.length) nonEmpty++;
                    checks++;
                    continue;
                }
                let got;
                try {
                    got = plain(await client.list(spec.total ? { queries } : { queries, total: false }));
                } catch (e) {
                    assert.equal(want.error, e.type, `${what()}: ${e.code} ${e.type} ${e.message}`);
                    checks++;
                    continue;
                }
                assert.equal(want.error, undefined, `${what()}: expected ${want.error}, got a list`);
                assert.deepEqual(got.presences.map((p) => p.$id), want.ids, `${what()}: ids`);
                assert.equal(got.total, want.total, `${what()}: total`);
                for (const p of got.presences) assert.deepEqual(p, model.get(p.$id), `${what()}: record ${p.$id}`);
                checks++;
                if (spec.cursor) cursors++;
                if (want.ids.length) nonEmpty++;
            }
            t.diagnostic(`${checks} lists checked (${cursors} with a cursor, ${nonEmpty} non-empty; ttl: ${hits} hits, ${misses} misses), ${model.size} records, ${deleted.length} deleted`);
            assert.ok(hits > 5 && misses > 10, 'the cache was hardly exercised');
            assert.ok(nonEmpty > checks / 3, 'most lists must hold something, or the test checks little');
        } catch (e) {
            e.message = `[LISTS_SEED=${seed}] ${e.message}`;
            throw e;
        }
    });
});

// --- broker SIGKILL under writes -------------------------------------------------------------

// How long after a broker SIGKILL requests may fail: the supervisor restarts it at once (100 ms
// backoff), store nodes and gateways reconnect and register within a heartbeat (250 ms); a
// request sent to the dead broker is answered 503 after --request-timeout (5 s). README,
// "Crashes".
const BROKER_WINDOW_MS = 8000;

describe('broker SIGKILL and restart under writes', () => {
    it('one presence per user holds, errors stop within the window, events resume', { timeout: 90000 }, async (t) => {
        const W = require('./lib/sdk').loadWebSdk();
        const { client } = webClient(C(), { userId: uid('watch') });
        const rt = new W.Realtime(client);
        const events = [];
        try {
            await R.sdkSubscribe(rt, W.Channel.presences(), (e) => events.push({ t: Date.now(), e: plain(e) }));
            const tag = uid('bk');
            const users = Array.from({ length: 12 }, (_, i) => `${tag}-u${i}`);
            const lastOk = new Map(); // user -> status of its last acknowledged write
            const errors = [];
            let stop = false, seq = 0;
            const writer = async (user) => {
                while (!stop) {
                    const status = `w${++seq}`;
                    try {
                        // a fresh presenceId each time: the claim decides which record it is
                        await keyP().upsert({ presenceId: uid('k'), userId: user, status, permissions: [Permission.read(Role.any())] });
                        lastOk.set(user, status);
                    } catch (e) {
                        errors.push({ t: Date.now(), code: e.code, type: e.type, message: String(e.message).slice(0, 120) });
                        await sleep(50);
                    }
                }
            };
            // creators: a new user each time, so every write needs the broker (its claim); a
            // failed create is retried under another presenceId until it is acknowledged
            const created = [];
            const creator = async (c) => {
                for (let k = 0; !stop; k++) {
                    const user = `${tag}-c${c}-${k}`;
                    for (;;) {
                        try {
                            await keyP().upsert({ presenceId: uid('n'), userId: user, status: 'new', permissions: [Permission.read(Role.any())] });
                            created.push(user);
                            break;
                        } catch (e) {
                            errors.push({ t: Date.now(), code: e.code, type: e.type, message: String(e.message).slice(0, 120) });
                            await sleep(50);
                        }
                    }
                }
            };
            const loops = [...users.map(writer), ...[0, 1, 2, 3].map(creator)];
            await sleep(1000);
            const old = C().pids('broker');
            assert.equal(old.length, 1);
            const killedAt = Date.now();
            C().kill('broker', undefined, 'SIGKILL');
            await C().waitRestarted('broker', undefined, old, 15000);
            const restartedAt = Date.now();
            await sleep(BROKER_WINDOW_MS + 1500);
            await sleep(1500); // every write in this stretch must succeed
            stop = true;
            await Promise.all(loops);
            const late = errors.filter((e) => e.t > killedAt + BROKER_WINDOW_MS);
            const lastErr = errors.length ? errors[errors.length - 1].t - killedAt : 0;
            const kinds = [...new Set(errors.map((e) => `${e.code} ${e.type}`))].join(', ');
            t.diagnostic(`broker back (pid) ${restartedAt - killedAt} ms after the kill; ${errors.length} failed writes (${kinds}), the last ${lastErr} ms after the kill; ${seq} updates, ${created.length} users created`);
            assert.deepEqual(late, [], `writes failed more than ${BROKER_WINDOW_MS} ms after the kill`);
            assert.ok(errors.every((e) => e.t >= killedAt), 'no write failed before the kill');
            for (const e of errors) assert.ok([503, 0, undefined].includes(e.code) || e.type === 'general_server_error', `unexpected error ${JSON.stringify(e)}`);
            // one presence per user, showing its last acknowledged write
            for (const u of users) {
                const l = plain(await keyP().list({ queries: [Q.equal('userId', [u])] }));
                assert.equal(l.total, 1, `user ${u} has ${l.total} records`);
                assert.equal(l.presences[0].status, lastOk.get(u), `user ${u}: the last acknowledged write`);
            }
            assert.ok(created.length > 20, `only ${created.length} users created`);
            await pool(16, created, async (u) => {
                const l = plain(await keyP().list({ queries: [Q.equal('userId', [u])] }));
                assert.equal(l.total, 1, `created user ${u} has ${l.total} records`);
            });
            // events resume: a write now is seen by the subscriber. A gateway that could not get
            // the events the bus lost while the broker was down closes its subscribers with 1012
            // (README, Realtime: events lost for good, subscribe again and re-read); the SDK then
            // reconnects once it has read what was queued before the close, and a write made
            // before it subscribes again is not sent to it. So a marker first: seen on the same
            // socket, or the socket replaced, and then the probe once it is subscribed again.
            const sock0 = rt.socket, marker = `${tag}-marker`;
            await keyP().upsert({ presenceId: marker, userId: marker, status: 'marker', permissions: [Permission.read(Role.any())] });
            await R.until(() => rt.socket !== sock0 || sock0.readyState > 1 || events.some((x) => x.e.payload && x.e.payload.$id === marker), 20000, 'the marker, or the subscriber closed');
            const reconnected = rt.socket !== sock0 || sock0.readyState > 1;
            if (reconnected) {
                t.diagnostic('the subscriber was closed (1012: events lost) and reconnects: the probe goes after it subscribed again');
                await R.until(() => rt.socket !== sock0 && rt.socket.readyState === 1 && rt.socket.__msgs.some((m) => m.type === 'response' && m.data && m.data.to === 'subscribe'), 20000, 'the subscriber subscribed again');
            }
            const probe = `${tag}-probe`;
            await keyP().upsert({ presenceId: probe, userId: probe, status: 'after', permissions: [Permission.read(Role.any())] });
            await R.until(() => events.some((x) => x.e.payload && x.e.payload.$id === probe), 10000, 'the event of a write after the restart');
            if (!reconnected)
                assert.ok(events.some((x) => x.t > restartedAt && x.e.payload && users.includes(x.e.payload.userId)), 'events of the writers after the restart');
        } finally {
            try { rt.disconnect && await rt.disconnect(); } catch {}
        }
    });
});
