'use strict';
// Indexes and counts (issue 12, item 5), end to end on 3 store nodes and 2 gateways, with
// node-appwrite for lists and raw HTTP for our extension GET /v1/presences/count:
//   - the count agrees with the list's total for many query sets (indexed equal() with one and
//     several values, indexed plus unindexed filters, unindexed metadata, status, userId, $id,
//     no filter), for an API key and for a user's JWT (only what the user may read);
//   - more than 5,000 matches: the count is exact where the list's total stops at 5,000;
//   - updates that move a record to another value, deletes and expiry change the count;
//   - a store node killed with SIGKILL rebuilds its indexes: the counts are the same after;
//   - a count with limit/offset/cursor/order, or a bad query, is a 400 in Appwrite's shape;
//   - the cost cap: a list whose filters read more records' metadata than --list-scan-max on a
//     node is a 400 saying so, and the same filters beside an indexed equal() are answered;
//   - a projects file with bad "indexes" stops the start (status 2) with a message.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { useCluster, freePort, sleep, BIN } = require('./lib/cluster');
const { nodeClient, mintJwt, plain, loadNodeSdk } = require('./lib/sdk');
const { api } = require('./lib/http');
const { assertError, uid } = require('./lib/check');

const PROJECT = 'counts';
const KEY = 'ck_' + crypto.randomBytes(16).toString('hex');
const SECRET = 'cj_' + crypto.randomBytes(16).toString('hex');
const SCAN_MAX = 400;
const H = useCluster(test, {
    label: 'counts', stores: 3, gateways: 2,
    args: ['--list-scan-max', String(SCAN_MAX)],
    env: { COUNTS_KEY: KEY },
    config: { projects: [{ id: PROJECT,
        keys: [{ name: 'k', secret_env: 'COUNTS_KEY', scopes: ['presences.read', 'presences.write'] }],
        jwt: [{ alg: 'HS256', secret: SECRET }],
        indexes: ['metadata.room', 'status', 'metadata.game.zone'] }] },
});
const C = () => H.cluster;
const { Query: Q, Permission, Role } = loadNodeSdk();
const keyP = () => nodeClient(C(), { key: KEY, project: PROJECT }).presences;

async function pool(n, items, fn) {
    let next = 0;
    await Promise.all(Array.from({ length: n }, async () => {
        while (next < items.length) { const i = next++; await fn(items[i], i); }
    }));
}

// GET /v1/presences/count with these queries (strings from the SDK's Query helpers).
async function count(queries, opts = { key: KEY }) {
    const qs = queries.map((q) => 'queries[]=' + encodeURIComponent(q)).join('&');
    return api(C(), 'GET', '/v1/presences/count' + (qs ? '?' + qs : ''), { project: PROJECT, ...opts });
}
async function countOk(queries, opts) {
    const r = await count(queries, opts);
    assert.equal(r.status, 200, `${queries.join(' ')} -> ${r.status} ${r.text}`);
    assert.deepEqual(Object.keys(r.json), ['total']);
    return r.json.total;
}
async function listTotal(queries, opts = { key: KEY }) {
    const qs = [...queries, Q.limit(1)].map((q) => 'queries[]=' + encodeURIComponent(q)).join('&');
    const r = await api(C(), 'GET', '/v1/presences?' + qs, { project: PROJECT, ...opts });
    assert.equal(r.status, 200, `${queries.join(' ')} -> ${r.status} ${r.text}`);
    return r.json.total;
}

const ROOMS = ['lobby', 'red', 'blue', 7, 7.5, true];
const tag = uid('c');
const recs = new Map(); // id -> {userId, status, room, zone}

describe('counts agree with lists', () => {
    it('setup: 240 records over 3 nodes, in 6 rooms of every JSON type, 2 zones, 3 statuses', async () => {
        const items = Array.from({ length: 240 }, (_, i) => i);
        await pool(16, items, async (i) => {
            const id = `${tag}_${i}`, userId = `${tag}u${i}`;
            const room = ROOMS[i % ROOMS.length], zone = i % 4 === 0 ? 'north' : 'south';
            const status = ['online', 'away', 'busy'][i % 3];
            const metadata = { room, n: i, game: { zone }, tag };
            if (i % 10 === 9) delete metadata.room; // no room at all
            await keyP().upsert({ presenceId: id, userId, status, metadata,
                permissions: i % 2 ? [Permission.read(Role.any())] : [Permission.read(Role.user(userId))] });
            recs.set(id, { userId, status, room: metadata.room, zone });
        });
    });

    const sets = () => [
        ['indexed equal, one value', [Q.equal('metadata.room', ['lobby'])]],
        ['indexed equal, an integer', [Q.equal('metadata.room', [7])]],
        ['indexed equal, a double equal to an integer matches it', [Q.equal('metadata.room', [7.0])]],
        ['indexed equal, a boolean', [Q.equal('metadata.room', [true])]],
        ['indexed equal, several values (one repeated)', [Q.equal('metadata.room', ['red', 'blue', 'red', 7.5])]],
        ['indexed nested path', [Q.equal('metadata.game.zone', ['north'])]],
        ['two indexed filters', [Q.equal('metadata.room', ['lobby', 'red']), Q.equal('status', ['online'])]],
        ['indexed and unindexed filters', [Q.equal('metadata.room', ['blue']), Q.greaterThan('metadata.n', 100)]],
        ['unindexed metadata only', [Q.equal('metadata.tag', [tag]), Q.lessThan('metadata.n', 50)]],
        ['status', [Q.equal('status', ['away'])]],
        ['userId', [Q.equal('userId', [`${tag}u5`])]],
        ['$id', [Q.equal('$id', [`${tag}_6`])]],
        ['an absent value', [Q.equal('metadata.room', ['nowhere'])]],
        ['isNull on the indexed path', [Q.isNull('metadata.room')]],
        ['indexed range on strings', [Q.greaterThan('metadata.room', 'blue')]],
        ['indexed range on numbers (an int and a double)', [Q.between('metadata.room', 7, 7.5)]],
        ['indexed range, open below', [Q.lessThan('metadata.room', 7.25)]],
        ['indexed range on a boolean', [Q.lessThanEqual('metadata.room', true)]],
        ['indexed startsWith', [Q.startsWith('metadata.room', 'r')]],
        ['indexed range and an indexed equal', [Q.greaterThanEqual('metadata.room', 'lobby'), Q.equal('status', ['online'])]],
        ['indexed range on status', [Q.lessThan('status', 'busy')]],
        ['indexed range with an unindexed filter', [Q.between('metadata.room', 'a', 'm'), Q.greaterThan('metadata.n', 100)]],
        ['no filter', []],
    ];

    it('with an API key: every query set, count == list total == the records written', async () => {
        for (const [name, qs] of sets()) {
            const c = await countOk(qs), l = await listTotal(qs);
            assert.equal(c, l, `${name}: count ${c}, list total ${l}`);
        }
        const inRoom = (v) => [...recs.values()].filter((r) => r.room === v).length;
        assert.equal(await countOk([Q.equal('metadata.room', ['lobby'])]), inRoom('lobby'));
        assert.equal(await countOk([Q.equal('metadata.room', [7, 7.0])]), inRoom(7));
        assert.ok(inRoom(7) < 40, 'every 10th record has no room');
        assert.equal(await countOk([Q.equal('metadata.game.zone', ['north'])]), 60);
        assert.equal(await countOk([Q.equal('metadata.tag', [tag])]), 240);
        // ranges: by value, within the operand's type (a string never compares with a number)
        assert.equal(await countOk([Q.greaterThan('metadata.room', 'blue')]), inRoom('lobby') + inRoom('red'));
        assert.equal(await countOk([Q.between('metadata.room', 7, 7.5)]), inRoom(7) + inRoom(7.5));
        assert.equal(await countOk([Q.lessThan('metadata.room', 7.25)]), inRoom(7));
        assert.equal(await countOk([Q.startsWith('metadata.room', 'r')]), inRoom('red'));
        assert.equal(await countOk([Q.lessThanEqual('metadata.room', true)]), inRoom(true));
    });

    it('with a user JWT: counts only what the user may read, as the list does', async () => {
        const jwt = mintJwt(SECRET, { userId: `${tag}u0` });
        for (const [name, qs] of sets()) {
            const c = await countOk(qs, { jwt }), l = await listTotal(qs, { jwt });
            assert.equal(c, l, `${name}: count ${c}, list total ${l}`);
        }
        // lobby holds i % 6 == 0, all even, so all private: u0 sees only its own
        assert.equal(await countOk([Q.equal('metadata.room', ['lobby'])], { jwt }), 1 + 0);
        const pub = [...recs.entries()].filter(([id, r]) => r.room === 'red' && Number(id.split('_').pop()) % 2 === 1).length;
        assert.equal(await countOk([Q.equal('metadata.room', ['red'])], { jwt }), pub);
    });

    it('an update to another value, a delete and an expiry change the counts', async () => {
        const room = (v) => countOk([Q.equal('metadata.room', [v])]);
        const [lobby0, red0] = [await room('lobby'), await room('red')];
        await keyP().update({ presenceId: `${tag}_0`, userId: `${tag}u0`, metadata: { room: 'red', n: 0, game: { zone: 'north' }, tag } });
        assert.equal(await room('lobby'), lobby0 - 1);
        assert.equal(await room('red'), red0 + 1);
        await keyP().delete({ presenceId: `${tag}_1` }); // a red one
        assert.equal(await room('red'), red0);
        const soon = new Date(Date.now() + 1500).toISOString();
        await keyP().upsert({ presenceId: `${tag}_x`, userId: `${tag}ux`, status: 'brief', metadata: { room: 'red' }, expiresAt: soon });
        assert.equal(await room('red'), red0 + 1);
        const until = Date.now() + 10000;
        while (await room('red') !== red0 && Date.now() < until) await sleep(100);
        assert.equal(await room('red'), red0, 'the expired record left the count');
        assert.equal(await listTotal([Q.equal('metadata.room', ['red'])]), red0);
    });

    it('a store node killed with SIGKILL rebuilds its indexes: the counts are unchanged', async () => {
        const before = [];
        for (const [, qs] of sets()) before.push(await countOk(qs));
        for (const node of [1, 2, 3]) {
            const old = C().pids('store', node);
            C().kill('store', node, 'SIGKILL');
            await C().waitRestarted('store', node, old);
        }
        await C().waitHealthy(20000);
        const until = Date.now() + 10000; // the broker hears of every node within 250 ms
        while ((await count([])).status !== 200 && Date.now() < until) await sleep(100);
        const after = [];
        for (const [, qs] of sets()) after.push(await countOk(qs));
        assert.deepEqual(after, before);
        // and the rebuilt indexes follow changes
        await keyP().update({ presenceId: `${tag}_2`, userId: `${tag}u2`, metadata: { room: 'lobby', n: 2, game: { zone: 'south' }, tag } });
        assert.equal(await countOk([Q.equal('metadata.room', ['lobby'])]), await listTotal([Q.equal('metadata.room', ['lobby'])]));
    });
});

describe('bad counts and the cost cap', () => {
    it('a count with paging or order, or a bad query, is a 400', async () => {
        for (const q of [Q.limit(5), Q.offset(1), Q.cursorAfter(`${tag}_3`), Q.orderAsc('$createdAt')]) {
            const r = await count([Q.equal('status', ['online']), q]);
            assertError(r, 400, 'general_query_invalid');
            assert.match(r.json.message, /a count takes filters only/);
        }
        assertError(await count(['{"method":"equal","attribute":"nope","values":[1]}']), 400, 'general_query_invalid');
        assertError(await count(['{oops']), 400, 'general_argument_invalid');
        assertError(await count([], { key: 'wrong' }), 401);
    });

    it('a list that reads the metadata of more than --list-scan-max records of a node is refused; an indexed equal() narrows it', async () => {
        const big = uid('big');
        await pool(16, Array.from({ length: 1500 }, (_, i) => i), async (i) => {
            await keyP().upsert({ presenceId: `${big}_${i}`, userId: `${big}u${i}`, status: 'big', metadata: { room: i < 30 ? 'small' : 'hall', big } });
        });
        const unindexed = [Q.equal('metadata.big', [big])];
        let r = await api(C(), 'GET', '/v1/presences?queries[]=' + encodeURIComponent(unindexed[0]), { project: PROJECT, key: KEY });
        assertError(r, 400, 'general_query_invalid');
        assert.match(r.json.message, new RegExp(`metadata of more than ${SCAN_MAX} records`));
        assertError(await count(unindexed), 400, 'general_query_invalid');
        await assert.rejects(keyP().list({ queries: unindexed }), (e) => e.code === 400 && e.type === 'general_query_invalid');
        // beside an indexed equal(), only the 30 records of that value are read
        const narrowed = [Q.equal('metadata.room', ['small']), Q.equal('metadata.big', [big])];
        assert.equal(plain(await keyP().list({ queries: narrowed })).total, 30);
        assert.equal(await countOk(narrowed), 30);
        // a range on the index narrows it too (startsWith: only 'small' begins with "sm"); a range
        // as wide as the project reads every record's metadata, and is capped like a scan
        const ranged = [Q.startsWith('metadata.room', 'sm'), Q.equal('metadata.big', [big])];
        assert.equal(plain(await keyP().list({ queries: ranged })).total, 30);
        assert.equal(await countOk(ranged), 30);
        assertError(await count([Q.greaterThan('metadata.room', ''), Q.equal('metadata.big', [big])]), 400, 'general_query_invalid');
        // filters that read no metadata are not capped
        assert.ok(await countOk([Q.isNotNull('userId')]) >= 1500);
    });

    it('more than 5,000 matches: the count is exact, the list total stops at 5,000', async () => {
        const many = uid('many');
        await pool(24, Array.from({ length: 5300 }, (_, i) => i), async (i) => {
            await keyP().upsert({ presenceId: `${many}_${i}`, userId: `${many}u${i}`, status: many, metadata: { room: many } });
        });
        assert.equal(await countOk([Q.equal('metadata.room', [many])]), 5300);
        assert.equal(await countOk([Q.equal('status', [many])]), 5300);
        assert.equal(await listTotal([Q.equal('metadata.room', [many])]), 5000);
    });
});

describe('the projects file', () => {
    it('bad "indexes" stop the start with status 2 and a message naming the project', async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-counts-'));
        const port = await freePort();
        const cases = [
            ['metadata.room', /indexes must be an array/],
            [[1], /indexes\[0\] must be "status", "\$createdAt", "\$updatedAt", "expiresAt" or "metadata.<key>"/],
            [['$createdat'], /indexes\[0\] must be/],
            [['userId'], /indexes\[0\] must be/],
            [['metadata.'], /indexes\[0\] must be/],
            [['metadata.a..b'], /indexes\[0\] must be/],
            [['metadata.a b'], /indexes\[0\] must be/],
            [['status', 'status'], /indexes\[1\]: status is listed twice/],
            [Array.from({ length: 9 }, (_, i) => `metadata.k${i}`), /at most 8/],
        ];
        try {
            for (const [indexes, want] of cases) {
                const file = path.join(dir, 'projects.json');
                fs.writeFileSync(file, JSON.stringify({ projects: [{ id: 'badix', keys: [], jwt: [{ alg: 'HS256', secret: SECRET }], indexes }] }));
                const r = spawnSync(BIN, ['--config', file, '--host', '127.0.0.1', '--port', String(port),
                    '--cluster', `badix${process.pid}`, '--run-dir', path.join(dir, 'run')],
                { encoding: 'utf8', timeout: 15000, env: { PATH: process.env.PATH, ASAN_OPTIONS: 'detect_leaks=0' } });
                assert.equal(r.status, 2, `refused at start: ${JSON.stringify(indexes)} (signal ${r.signal}: it started)`);
                assert.match(r.stderr, /project badix/);
                assert.match(r.stderr, want);
            }
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
