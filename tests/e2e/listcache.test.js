'use strict';
// Appwrite's list cache (appwrite-protocol.md §1.1, list and update): GET /v1/presences?ttl=N
// answers from a cache for N seconds with X-Appwrite-Cache: hit|miss; a delete (by a client or
// by expiry) and an update with purge=true purge it; upserts and plain updates do not (a hit
// can be stale for up to ttl, as in Appwrite). The cache is the broker's, so it is one for
// every gateway: a purge through one gateway holds for the next list through any other.
// Records are written with the official SDKs (node-appwrite with an API key, the web SDK with
// a JWT); the header is read over raw HTTP, which is where a user would look at it.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const { useCluster, sleep } = require('./lib/cluster');
const { nodeClient, webClient, mintJwt, plain, loadNodeSdk } = require('./lib/sdk');
const { api, show, pinnedSockets, requestOver } = require('./lib/http');
const { assertError, assertList, uid } = require('./lib/check');

const CACHE_BYTES = 2 * 1024 * 1024;
const H = useCluster(test, { label: 'listcache', stores: 3, gateways: 2, env: { PRESENCED_LIST_CACHE: String(CACHE_BYTES) } });
const { Query, Permission, Role } = loadNodeSdk();
const keyP = () => nodeClient(H.cluster, {}).presences;
const TTL_MSG = 'Invalid `ttl` param: Value must be a valid range between 0 and 86,400';

function listPath(queries, params = {}) {
    const qs = queries.map((q, i) => `queries[${i}]=${encodeURIComponent(q)}`);
    for (const [k, v] of Object.entries(params)) if (v !== undefined) qs.push(`${k}=${encodeURIComponent(v)}`);
    return '/v1/presences' + (qs.length ? '?' + qs.join('&') : '');
}

// A list over raw HTTP (or over a socket pinned to one gateway): {status, cache, json}.
async function list(queries, { ttl, total, key = true, jwt, sock } = {}) {
    const path = listPath(queries, { ttl, total });
    const opts = jwt ? { jwt } : key ? { key } : {};
    const r = sock ? await requestOver(H.cluster, sock, 'GET', path, opts) : await api(H.cluster, 'GET', path, opts);
    const cache = sock ? r.headers['x-appwrite-cache'] : r.headers.get('x-appwrite-cache');
    assert.equal(r.status, 200, show(r));
    assertList(r.json);
    return { ...r, cache: cache ?? null };
}

async function makeRecord(fields = {}) {
    const userId = uid('u');
    const rec = await keyP().upsert({ presenceId: uid('p'), userId, status: 'online', ...fields });
    return { userId, id: rec.$id, rec };
}

describe('ttl parameter', () => {
    it('is validated as Appwrite does: Range(0, 86400), else 400 general_argument_invalid', async () => {
        for (const bad of ['-1', '86401', '100000', 'abc', '1.5', '', '1e3', '99999999999999999999999']) {
            const r = await api(H.cluster, 'GET', `/v1/presences?ttl=${encodeURIComponent(bad)}`, { key: true });
            assertError(r, 400, 'general_argument_invalid');
            assert.equal(r.json.message, TTL_MSG, `ttl=${bad}`);
        }
    });

    it('ttl=0 (the default) sends no X-Appwrite-Cache; the bounds are accepted', async () => {
        const r0 = await list([], { ttl: 0 });
        assert.equal(r0.cache, null);
        const rn = await list([]);
        assert.equal(rn.cache, null);
        const rmax = await list([Query.limit(1)], { ttl: 86400 });
        assert.ok(rmax.cache === 'miss' || rmax.cache === 'hit', `ttl=86400: ${rmax.cache}`);
    });
});

describe('hits, misses and what purges (Appwrite testUpdatePresencePurgeListCache & co)', () => {
    it('a second identical list is a hit with the same body; other queries or total are other entries', async () => {
        const a = await makeRecord({ metadata: { c: 'one' } });
        const q = [Query.equal('userId', [a.userId])];
        const l1 = await list(q, { ttl: 60 });
        assert.equal(l1.cache, 'miss');
        assert.equal(l1.json.total, 1);
        const l2 = await list(q, { ttl: 60 });
        assert.equal(l2.cache, 'hit');
        assert.equal(l2.text, l1.text);
        assert.equal((await list(q, { ttl: 60, total: false })).cache, 'miss');
        assert.equal((await list(q, { ttl: 60, total: false })).cache, 'hit');
        assert.equal((await list([...q, Query.limit(5)], { ttl: 60 })).cache, 'miss');
    });

    it('upserts and updates without purge do not purge: the hit is stale until ttl (as in Appwrite)', async () => {
        const a = await makeRecord({ permissions: [Permission.read(Role.users())] });
        const q = [Query.equal('userId', [a.userId])];
        assert.equal((await list(q, { ttl: 60 })).cache, 'miss');
        await keyP().update({ presenceId: a.id, userId: a.userId, status: 'away' });
        await keyP().upsert({ presenceId: a.id, userId: a.userId, status: 'busy', permissions: [Permission.read(Role.users())] });
        const l = await list(q, { ttl: 60 });
        assert.equal(l.cache, 'hit');
        assert.equal(l.json.presences[0].status, 'online', 'a cached list is the state it was stored with');
        // the SDKs pass ttl through: node-appwrite sees the cached state, and a user (web SDK)
        // gets an entry of its own, stale in turn after an update without purge
        assert.equal(plain(await keyP().list({ queries: q, ttl: 60 })).presences[0].status, 'online');
        const web = webClient(H.cluster, { userId: uid('v') }).presences;
        assert.equal(plain(await web.list({ queries: q, ttl: 60 })).presences[0].status, 'busy');
        await keyP().update({ presenceId: a.id, userId: a.userId, status: 'gone' });
        assert.equal(plain(await web.list({ queries: q, ttl: 60 })).presences[0].status, 'busy');
        const fresh = await list(q); // no ttl: never from the cache
        assert.equal(fresh.json.presences[0].status, 'gone');
    });

    it('update with purge=true purges (node-appwrite presences.update({purge: true}))', async () => {
        const a = await makeRecord();
        const q = [Query.equal('userId', [a.userId])];
        await list(q, { ttl: 60 });
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        const u = await keyP().update({ presenceId: a.id, userId: a.userId, status: 'cache-update-applied', purge: true });
        assert.equal(u.status, 'cache-update-applied');
        const l = await list(q, { ttl: 60 });
        assert.equal(l.cache, 'miss');
        assert.equal(l.json.presences[0].status, 'cache-update-applied');
    });

    it('an update with only purge=true purges and returns the record (testUpdatePresencePurgeOnlyListCache)', async () => {
        const a = await makeRecord();
        const q = [Query.equal('userId', [a.userId])];
        await list(q, { ttl: 60 });
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        const u = await keyP().update({ presenceId: a.id, userId: a.userId, purge: true });
        assert.equal(u.$id, a.id);
        assert.equal((await list(q, { ttl: 60 })).cache, 'miss');
    });

    it('a user (web SDK, JWT) updating with purge=true purges too; purge is a loose boolean', async () => {
        const userId = uid('w');
        const { presences } = webClient(H.cluster, { userId });
        const rec = await presences.upsert({ presenceId: uid('p'), status: 'online' });
        const q = [Query.equal('userId', [userId])];
        await list(q, { ttl: 60 });
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        await presences.update({ presenceId: rec.$id, status: 'away', purge: true });
        assert.equal((await list(q, { ttl: 60 })).cache, 'miss');
        const jwt = mintJwt(H.cluster.jwtSecret, { userId });
        for (const ok of ['1', 'true', 0, false]) {
            const r = await api(H.cluster, 'PATCH', `/v1/presences/${rec.$id}`, { jwt, body: { purge: ok } });
            assert.equal(r.status, 200, show(r));
        }
        const bad = await api(H.cluster, 'PATCH', `/v1/presences/${rec.$id}`, { jwt, body: { status: 'x', purge: 'maybe' } });
        assertError(bad, 400, 'general_argument_invalid');
        assert.equal(bad.json.message, 'Invalid `purge` param: Value must be a valid boolean');
        assert.equal((await keyP().get({ presenceId: rec.$id })).status, 'away', 'a refused update changes nothing');
    });

    it('a refused update or delete purges nothing (another user\'s record, an unknown id)', async () => {
        const a = await makeRecord({ permissions: [Permission.read(Role.users())] });
        const q = [Query.equal('userId', [a.userId])];
        await list(q, { ttl: 60 });
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        const { presences: other } = webClient(H.cluster, { userId: uid('o') });
        await assert.rejects(other.update({ presenceId: a.id, status: 'x', purge: true }), (e) => e.code === 401);
        await assert.rejects(other.delete({ presenceId: a.id }), (e) => e.code === 401);
        await assert.rejects(keyP().update({ presenceId: uid('none'), userId: uid('nobody'), purge: true }), (e) => e.code === 404);
        await assert.rejects(keyP().delete({ presenceId: uid('none') }), (e) => e.code === 404);
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
    });

    it('a delete purges (testDeletePresencePurgesListCache)', async () => {
        const a = await makeRecord();
        const q = [Query.equal('userId', [a.userId])];
        await list(q, { ttl: 60 });
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        await keyP().delete({ presenceId: a.id });
        const l = await list(q, { ttl: 60 });
        assert.equal(l.cache, 'miss');
        assert.equal(l.json.total, 0);
    });

    it('a delete purges every cached list of the project, not only those that held the record', async () => {
        const a = await makeRecord();
        const b = await makeRecord();
        const qb = [Query.equal('userId', [b.userId])];
        await list(qb, { ttl: 60 });
        assert.equal((await list(qb, { ttl: 60 })).cache, 'hit');
        await keyP().delete({ presenceId: a.id });
        assert.equal((await list(qb, { ttl: 60 })).cache, 'miss');
    });

    it('the request\'s own ttl decides: an entry older than ttl seconds is a miss', async () => {
        const a = await makeRecord();
        const q = [Query.equal('userId', [a.userId])];
        assert.equal((await list(q, { ttl: 60 })).cache, 'miss');
        await sleep(1300);
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        assert.equal((await list(q, { ttl: 1 })).cache, 'miss', 'stored 1.3 s ago: older than ttl=1');
        assert.equal((await list(q, { ttl: 1 })).cache, 'hit', 'stored again just now');
    });

    it('an expiry purges: the reaper\'s delete reaches the cache, the expired record is not served', async () => {
        const a = await makeRecord({ expiresAt: new Date(Date.now() + 1500).toISOString() });
        const q = [Query.equal('userId', [a.userId])];
        const l1 = await list(q, { ttl: 60 });
        assert.equal(l1.json.total, 1);
        assert.equal((await list(q, { ttl: 60 })).cache, 'hit');
        await sleep(1600);
        let l;
        for (let i = 0; i < 50; i++) { // the reaper deletes within a few ms of expiresAt
            l = await list(q, { ttl: 60 });
            if (l.cache === 'miss') break;
            await sleep(100);
        }
        assert.equal(l.cache, 'miss', 'the expiry did not purge the cache');
        assert.equal(l.json.total, 0);
    });

    it('the end of a connection-bound presence purges (its last socket closed, after the grace)', { timeout: 30000 }, async () => {
        const userId = uid('rt');
        const { W, client } = webClient(H.cluster, { userId });
        const rt = new W.Realtime(client);
        const q = [Query.equal('userId', [userId])];
        try {
            await rt.upsertPresence({ status: 'online', permissions: [W.Permission.read(W.Role.any())] });
            let l;
            for (let i = 0; i < 100; i++) { // the presence message is answered on the socket; poll for it
                l = await list(q);
                if (l.json.total === 1) break;
                await sleep(50);
            }
            assert.equal(l.json.total, 1, 'the connection-bound presence was not written');
            await list(q, { ttl: 600 });
            assert.equal((await list(q, { ttl: 600 })).cache, 'hit');
        } finally {
            await rt.disconnect();
        }
        // the record goes 5 s after its last socket closed (README, Realtime), with a delete
        let l;
        for (let i = 0; i < 150; i++) {
            l = await list(q, { ttl: 600 });
            if (l.cache === 'miss') break;
            assert.equal(l.json.total, 1, 'a hit is the cached state');
            await sleep(100);
        }
        assert.equal(l.cache, 'miss', 'the release did not purge the cache');
        assert.equal(l.json.total, 0);
    });
});

describe('purges under concurrent lists', () => {
    it('no list sent after a delete or a purge=true update was answered shows the state before it', { timeout: 60000 }, async () => {
        const tag = uid('race');
        const recs = [];
        for (let i = 0; i < 30; i++) recs.push((await makeRecord({ status: tag, metadata: { v: 0 } })));
        const q = [Query.equal('status', [tag]), Query.limit(100)];
        const acks = []; // {t, id, gone} or {t, id, v}: answered at t
        const seen = []; // {t0, body}
        let stop = false;
        const lister = async () => {
            while (!stop) {
                const t0 = Date.now();
                const r = await list(q, { ttl: 600 });
                seen.push({ t0, cache: r.cache, recs: new Map(r.json.presences.map((p) => [p.$id, p.metadata.v])) });
            }
        };
        const loops = [lister(), lister(), lister(), lister()];
        for (let i = 0; i < recs.length; i++) {
            const a = recs[i];
            if (i % 2) {
                await keyP().delete({ presenceId: a.id });
                acks.push({ t: Date.now(), id: a.id, gone: true });
            } else {
                await keyP().update({ presenceId: a.id, userId: a.userId, metadata: { v: 1 }, purge: true });
                acks.push({ t: Date.now(), id: a.id, v: 1 });
            }
            await sleep(15);
        }
        stop = true;
        await Promise.all(loops);
        let checked = 0;
        for (const s of seen) {
            for (const k of acks) {
                if (s.t0 <= k.t) continue; // sent before the answer: either state is right
                checked++;
                if (k.gone) assert.ok(!s.recs.has(k.id), `a ${s.cache} sent ${s.t0 - k.t} ms after the delete of ${k.id} was answered shows it`);
                else assert.equal(s.recs.get(k.id), k.v, `a ${s.cache} sent ${s.t0 - k.t} ms after the purge update of ${k.id} was answered shows the old state`);
            }
        }
        const hits = seen.filter((s) => s.cache === 'hit').length;
        assert.ok(hits > 20 && checked > 100, `the race was hardly run: ${seen.length} lists, ${hits} hits, ${checked} checks`);
    });
});

describe('one cache for the cluster, per caller', () => {
    it('a list cached through one gateway is a hit through the other; a purge through either holds for both', async () => {
        // a pinned socket carries one request (lib/http.js): a few per gateway
        const socks = await pinnedSockets(H.cluster, 4);
        const [s1, s2] = [...socks.values()];
        const g1 = () => s1.shift(), g2 = () => s2.shift();
        try {
            const a = await makeRecord();
            const q = [Query.equal('userId', [a.userId])];
            assert.equal((await list(q, { ttl: 60, sock: g1() })).cache, 'miss');
            assert.equal((await list(q, { ttl: 60, sock: g2() })).cache, 'hit');
            const d = await requestOver(H.cluster, g2(), 'PATCH', `/v1/presences/${a.id}`, { key: true, body: { userId: a.userId, purge: true } });
            assert.equal(d.status, 200, show(d));
            assert.equal((await list(q, { ttl: 60, sock: g1() })).cache, 'miss', 'purged through gateway 2, listed through gateway 1');
            assert.equal((await list(q, { ttl: 60, sock: g2() })).cache, 'hit');
            const del = await requestOver(H.cluster, g1(), 'DELETE', `/v1/presences/${a.id}`, { key: true });
            assert.equal(del.status, 204, show(del));
            const l = await list(q, { ttl: 60, sock: g2() });
            assert.equal(l.cache, 'miss', 'deleted through gateway 1, listed through gateway 2');
            assert.equal(l.json.total, 0);
        } finally {
            for (const a of socks.values()) for (const s of a) s.destroy();
        }
    });

    it('callers with other roles never share an entry (a user\'s private record stays private)', async () => {
        const alice = uid('a');
        const bob = uid('b');
        await webClient(H.cluster, { userId: alice }).presences.upsert({ presenceId: uid('p'), status: 'private' });
        const q = [Query.equal('userId', [alice])];
        const ja = mintJwt(H.cluster.jwtSecret, { userId: alice });
        const jb = mintJwt(H.cluster.jwtSecret, { userId: bob });
        const la = await list(q, { ttl: 60, jwt: ja });
        assert.equal(la.cache, 'miss');
        assert.equal(la.json.total, 1);
        assert.equal((await list(q, { ttl: 60, jwt: ja })).cache, 'hit');
        const lb = await list(q, { ttl: 60, jwt: jb });
        assert.equal(lb.cache, 'miss', 'bob must not get alice\'s entry');
        assert.equal(lb.json.total, 0);
        assert.equal(lb.json.presences.length, 0);
        const lg = await list(q, { ttl: 60, key: false });
        assert.equal(lg.cache, 'miss', 'a guest must not get alice\'s entry');
        assert.equal(lg.json.total, 0);
        const lk = await list(q, { ttl: 60 });
        assert.equal(lk.cache, 'miss', 'an API key has its own entry');
        assert.equal(lk.json.total, 1);
        // the SDK sees the same data as raw HTTP, from the cache or not
        const { presences } = webClient(H.cluster, { userId: bob });
        assert.equal((await presences.list({ queries: q })).total, 0);
    });

    it('stays within --list-cache bytes: the least recently used lists are evicted', async () => {
        const tag = uid('big');
        const meta = { pad: 'x'.repeat(8000) };
        const ids = [];
        for (let i = 0; i < 4; i++) ids.push((await makeRecord({ metadata: { ...meta, tag } })).id);
        // 4 records of ~8 KB: each distinct list of them is a ~33 KB entry; 200 of them are
        // about three times the bound
        for (let i = 0; i < 200; i++) {
            const l = await list([Query.equal('metadata.tag', [tag]), Query.offset(0), Query.limit(100 + i)], { ttl: 600 });
            assert.equal(l.json.total, 4);
        }
        const m = await H.cluster.metrics();
        const bytes = m.get('presenced_broker_list_cache_bytes');
        assert.ok(bytes > 0 && bytes <= CACHE_BYTES, `cache bytes ${bytes} vs bound ${CACHE_BYTES}`);
        assert.ok(m.get('presenced_broker_list_cache_evicted_total') > 0, 'nothing was evicted');
        // the newest is still there, the oldest is not
        const newest = [Query.equal('metadata.tag', [tag]), Query.offset(0), Query.limit(299)];
        const oldest = [Query.equal('metadata.tag', [tag]), Query.offset(0), Query.limit(100)];
        assert.equal((await list(newest, { ttl: 600 })).cache, 'hit');
        assert.equal((await list(oldest, { ttl: 600 })).cache, 'miss');
        for (const id of ids) await keyP().delete({ presenceId: id });
    });
});
