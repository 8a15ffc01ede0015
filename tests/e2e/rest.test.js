'use strict';
// The Presences REST API through a real cluster (2 gateways, broker, 2 store nodes, reaper),
// driven with the official SDKs: appwrite (web) 27.0.0 and the newest release under Node, and
// node-appwrite. Raw HTTP only where a user would look at the bytes (key order, 204 body).
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const { useCluster, sleep, parseMetrics } = require('./lib/cluster');
const { webClient, nodeClient, mintJwt, plain, loadWebSdk, loadNodeSdk } = require('./lib/sdk');
const { api, show, pinnedSockets, requestOver } = require('./lib/http');
const {
    PRESENCE_KEYS, LIST_KEYS, ownerPermissions, assertPresence, assertList, assertNear, rejectsWith, assertError, uid, assertDate,
} = require('./lib/check');

const H = useCluster(test, { label: 'rest' });
const MIN15 = 15 * 60 * 1000;

// --- adapters: the same user story through each SDK ----------------------------------------

function webAdapter(sdk) {
    const userId = uid('w');
    const { W, presences } = webClient(H.cluster, { sdk, userId });
    return {
        name: `appwrite web ${W.version} (JWT)`, userId, Query: W.Query, Permission: W.Permission, Role: W.Role, ID: W.ID,
        upsert: (presenceId, f = {}) => presences.upsert({ presenceId, ...f }),
        get: (presenceId) => presences.get({ presenceId }),
        list: (queries, total) => presences.list({ queries, total }),
        update: (presenceId, f = {}) => presences.update({ presenceId, ...f }),
        delete: (presenceId) => presences.delete({ presenceId }),
    };
}

function nodeKeyAdapter() {
    const userId = uid('n');
    const N = loadNodeSdk();
    const { presences } = nodeClient(H.cluster, {});
    return {
        name: `node-appwrite ${N.version} (API key)`, userId, Query: N.Query, Permission: N.Permission, Role: N.Role, ID: N.ID,
        upsert: (presenceId, f = {}) => presences.upsert({ presenceId, userId, ...f }),
        get: (presenceId) => presences.get({ presenceId }),
        list: (queries, total) => presences.list({ queries, total }),
        update: (presenceId, f = {}) => presences.update({ presenceId, userId, ...f }),
        delete: (presenceId) => presences.delete({ presenceId }),
    };
}

// Reads a record with the API key (bypasses permissions) through node-appwrite.
const keyGet = (id) => nodeClient(H.cluster, {}).presences.get({ presenceId: id });
const keyList = (queries, total) => nodeClient(H.cluster, {}).presences.list({ queries, total });
const keyP = () => nodeClient(H.cluster, {}).presences;

// --- the main user story, once per SDK -------------------------------------------------------

function mainFlow(makeAdapter, label) {
    describe(`main flow: ${label}`, () => {
        let a, pid, created;
        test.before(() => { a = makeAdapter(); });

        it('upsert creates a record with the Appwrite model', async () => {
            pid = uid('p');
            const t0 = Date.now();
            const meta = { room: 'lobby', n: 1, nested: { deep: [1, 'two', { three: true }] }, empty: {} };
            created = plain(await a.upsert(pid, { status: 'online', metadata: meta }));
            assertPresence(created, {
                $id: pid, userId: a.userId, status: 'online', source: 'rest', metadata: meta,
                $permissions: ownerPermissions(a.userId),
            });
            assert.equal(created.$createdAt, created.$updatedAt, 'a new record has $createdAt == $updatedAt');
            assertNear(created.$createdAt, t0, 5000, '$createdAt is now');
            assertNear(created.expiresAt, t0 + MIN15, 15000, 'default expiresAt is now + 15 min');
        });

        it('get returns the same record', async () => {
            const g = plain(await a.get(pid));
            assert.deepEqual(g, created);
        });

        it('upsert again updates in place: same $id, $createdAt kept, $updatedAt moves, fields replaced', async () => {
            await sleep(20);
            const exp = new Date(Date.now() + 3600e3);
            exp.setUTCMilliseconds(123);
            const perms = [a.Permission.read(a.Role.any()), a.Permission.write(a.Role.user(a.userId))];
            const u = plain(await a.upsert(pid, { status: 'away', metadata: { room: 'kitchen' }, expiresAt: exp.toISOString(), permissions: perms }));
            assertPresence(u, {
                $id: pid, userId: a.userId, status: 'away', source: 'rest', metadata: { room: 'kitchen' },
                $createdAt: created.$createdAt,
                $permissions: [`delete("user:${a.userId}")`, 'read("any")', `update("user:${a.userId}")`],
            });
            assert.equal(Date.parse(u.expiresAt), exp.getTime(), `expiresAt ${u.expiresAt} != ${exp.toISOString()}`);
            assert.ok(Date.parse(u.$updatedAt) > Date.parse(created.$updatedAt), `$updatedAt did not move: ${u.$updatedAt}`);
            assert.deepEqual(plain(await a.get(pid)), u);
            created = u;
        });

        it('one presence per user: an upsert under another presenceId updates the same record', async () => {
            await sleep(20);
            const other = uid('p');
            const u = plain(await a.upsert(other, { status: 'busy', metadata: { room: 'kitchen' } }));
            assertPresence(u, { $id: pid, userId: a.userId, status: 'busy', $createdAt: created.$createdAt });
            assert.ok(Date.parse(u.$updatedAt) > Date.parse(created.$updatedAt));
            await rejectsWith(a.get(other), 404, 'presence_not_found', `get(${other})`);
            const l = plain(await a.list([a.Query.equal('userId', [a.userId])]));
            assertList(l);
            assert.equal(l.total, 1, JSON.stringify(l));
            assert.equal(l.presences.length, 1);
            assert.deepEqual(l.presences[0], u);
            created = u;
        });

        it('upsert without metadata clears it to {} (and resets expiry and permissions)', async () => {
            const t0 = Date.now();
            const u = plain(await a.upsert(pid, { status: 'back' }));
            assertPresence(u, {
                $id: pid, status: 'back', metadata: {}, $createdAt: created.$createdAt,
                $permissions: ownerPermissions(a.userId),
            });
            assertNear(u.expiresAt, t0 + MIN15, 15000, 'expiresAt reset to now + 15 min');
            assert.deepEqual(plain(await a.get(pid)), u);
            created = u;
        });

        it('update changes only the fields sent', async () => {
            await sleep(20);
            const u1 = plain(await a.update(pid, { status: 'in a call' }));
            assertPresence(u1);
            assert.ok(Date.parse(u1.$updatedAt) > Date.parse(created.$updatedAt), '$updatedAt moves on update');
            assert.deepEqual({ ...u1, $updatedAt: null }, { ...created, status: 'in a call', $updatedAt: null });

            await sleep(20);
            const u2 = plain(await a.update(pid, { metadata: { room: 'attic', seat: 4 } }));
            assert.deepEqual({ ...u2, $updatedAt: null }, { ...u1, metadata: { room: 'attic', seat: 4 }, $updatedAt: null });
            assert.ok(Date.parse(u2.$updatedAt) > Date.parse(u1.$updatedAt));

            await sleep(20);
            const exp = new Date(Date.now() + 2 * 3600e3);
            const u3 = plain(await a.update(pid, { expiresAt: exp.toISOString() }));
            assert.equal(Date.parse(u3.expiresAt), exp.getTime());
            assert.deepEqual({ ...u3, $updatedAt: null, expiresAt: null }, { ...u2, $updatedAt: null, expiresAt: null });
            assert.deepEqual(plain(await a.get(pid)), u3);
            created = u3;
        });

        it('list finds the record with Query.equal on userId and on status', async () => {
            const st = uid('status-');
            created = plain(await a.update(pid, { status: st }));
            const byUser = plain(await a.list([a.Query.equal('userId', [a.userId])]));
            assertList(byUser);
            assert.equal(byUser.total, 1);
            assert.deepEqual(byUser.presences, [created]);
            const byStatus = plain(await a.list([a.Query.equal('status', [st])]));
            assertList(byStatus);
            assert.equal(byStatus.total, 1);
            assert.deepEqual(byStatus.presences, [created]);
            const none = plain(await a.list([a.Query.equal('status', [uid('nobody-has-')])]));
            assert.deepEqual(none, { total: 0, presences: [] });
        });

        it('delete, then get is 404 presence_not_found', async () => {
            await a.delete(pid);
            await rejectsWith(a.get(pid), 404, 'presence_not_found', 'get after delete');
            const l = plain(await a.list([a.Query.equal('userId', [a.userId])]));
            assert.deepEqual(l, { total: 0, presences: [] });
            await rejectsWith(a.delete(pid), 404, 'presence_not_found', 'second delete');
            await rejectsWith(a.update(pid, { status: 'ghost' }), 404, 'presence_not_found', 'update after delete');
        });

        it('after a delete the user can create a new record', async () => {
            const p2 = uid('p');
            const n = plain(await a.upsert(p2, { status: 'again' }));
            assertPresence(n, { $id: p2, userId: a.userId, status: 'again', metadata: {} });
            assert.ok(Date.parse(n.$createdAt) > Date.parse(created.$createdAt));
            await a.delete(p2);
        });
    });
}

mainFlow(() => webAdapter('appwrite'), `appwrite web ${loadWebSdk('appwrite').version}`);
mainFlow(() => webAdapter('appwrite-latest'), `appwrite web ${loadWebSdk('appwrite-latest').version} (latest)`);
mainFlow(() => nodeKeyAdapter(), `node-appwrite ${loadNodeSdk().version} (API key)`);

// --- wire format -----------------------------------------------------------------------------

describe('wire format', () => {
    it('Presence and PresenceList: exact key order, date format, content type', async () => {
        const u = uid('raw'), p = uid('p');
        const put = await api(H.cluster, 'PUT', `/v1/presences/${p}`, { key: true, body: { userId: u, status: 'here', metadata: {} } });
        assert.equal(put.status, 200, show(put));
        assert.match(put.headers.get('content-type'), /^application\/json/);
        assert.deepEqual(Object.keys(put.json), PRESENCE_KEYS, put.text);
        assert.ok(put.text.includes('"metadata":{}'), `empty metadata must be {} on the wire: ${put.text}`);
        for (const k of ['$createdAt', '$updatedAt', 'expiresAt']) assertDate(put.json[k], k);
        const get = await api(H.cluster, 'GET', `/v1/presences/${p}`, { key: true });
        assert.equal(get.status, 200, show(get));
        assert.deepEqual(Object.keys(get.json), PRESENCE_KEYS);
        assert.deepEqual(get.json, put.json);
        const q = encodeURIComponent(JSON.stringify({ method: 'equal', attribute: 'userId', values: [u] }));
        const list = await api(H.cluster, 'GET', `/v1/presences?queries%5B0%5D=${q}`, { key: true });
        assert.equal(list.status, 200, show(list));
        assert.deepEqual(Object.keys(list.json), LIST_KEYS, list.text);
        assert.deepEqual(list.json, { total: 1, presences: [put.json] });
        const del = await api(H.cluster, 'DELETE', `/v1/presences/${p}`, { key: true, body: {} });
        assert.equal(del.status, 204, show(del));
        assert.equal(del.text, '', 'DELETE answers with an empty body');
        const gone = await api(H.cluster, 'GET', `/v1/presences/${p}`, { key: true });
        assertError(gone, 404, 'presence_not_found');
    });

    it('expiresAt accepts the DB format and offsets; output is UTC with +00:00', async () => {
        const u = uid('tz'), p = uid('p');
        const t = new Date(Date.now() + 2 * 86400e3);
        t.setUTCMilliseconds(250);
        const db = t.toISOString().replace('T', ' ').replace('Z', ''); // 2026-05-25 10:00:00.250 (UTC)
        const r1 = await api(H.cluster, 'PUT', `/v1/presences/${p}`, { key: true, body: { userId: u, status: 's', expiresAt: db } });
        assert.equal(r1.status, 200, show(r1));
        assert.equal(r1.json.expiresAt, t.toISOString().replace('Z', '+00:00'));
        // the same instant written with a +02:00 offset
        const local = new Date(t.getTime() + 2 * 3600e3).toISOString().replace('Z', '+02:00');
        const r2 = await api(H.cluster, 'PUT', `/v1/presences/${p}`, { key: true, body: { userId: u, status: 's', expiresAt: local } });
        assert.equal(r2.status, 200, show(r2));
        assert.equal(r2.json.expiresAt, t.toISOString().replace('Z', '+00:00'));
        await api(H.cluster, 'DELETE', `/v1/presences/${p}`, { key: true, body: {} });
    });
});

// --- one presence per user ----------------------------------------------------------------

describe('one presence per user', () => {
    it("another user's presenceId is refused with 409 presence_already_exists (key and JWT)", async () => {
        const owner = uid('own'), intruder = uid('int'), p = uid('p');
        const { presences: keyP } = nodeClient(H.cluster, {});
        const rec = plain(await keyP.upsert({ presenceId: p, userId: owner, status: 'mine', metadata: { a: 1 } }));
        await rejectsWith(keyP.upsert({ presenceId: p, userId: intruder, status: 'yours now' }), 409, 'presence_already_exists', 'key upsert');
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk, userId: intruder });
            await rejectsWith(w.presences.upsert({ presenceId: p, status: 'yours now' }), 409, 'presence_already_exists', `web ${sdk} upsert`);
        }
        assert.deepEqual(plain(await keyGet(p)), rec, 'the owner record is unchanged');
        const l = plain(await keyList([loadNodeSdk().Query.equal('userId', [intruder])]));
        assert.deepEqual(l, { total: 0, presences: [] }, 'nothing was written for the intruder');
        await keyP.delete({ presenceId: p });
    });

    // Concurrent upserts for one user, under distinct presenceIds, arriving on both gateway
    // processes at once: exactly one record survives and every response names it.
    const PER_GW = 10;
    ['API key', 'JWT', 'API key', 'JWT', 'API key'].forEach((how, round) => {
        it(`concurrent upserts through both gateways, round ${round + 1} (${how}, ${2 * PER_GW} presenceIds): exactly one record`, async () => {
            const user = uid('race');
            const socks = await pinnedSockets(H.cluster, PER_GW);
            const jwt = mintJwt(H.cluster.jwtSecret, { userId: user });
            const ids = [];
            const reqs = [];
            let i = 0;
            for (const [gw, list] of socks) {
                for (const s of list) {
                    const id = `${user}-${i++}`;
                    ids.push(id);
                    const body = how === 'JWT' ? { status: `from ${gw}`, metadata: { i } } : { userId: user, status: `from ${gw}`, metadata: { i } };
                    reqs.push(requestOver(H.cluster, s, 'PUT', `/v1/presences/${id}`, how === 'JWT' ? { jwt, body } : { key: true, body }));
                }
            }
            const res = await Promise.all(reqs);
            for (const r of res) assert.equal(r.status, 200, show(r));
            const winners = new Set(res.map((r) => r.json.$id));
            assert.equal(winners.size, 1, `responses name different records: ${[...winners]}`);
            const [id] = winners;
            assert.ok(ids.includes(id));
            for (const r of res) assert.equal(r.json.userId, user);
            const l = plain(await keyList([loadNodeSdk().Query.equal('userId', [user])]));
            assert.equal(l.total, 1, `records for ${user}: ${JSON.stringify(l).slice(0, 500)}`);
            assert.equal(l.presences.length, 1);
            assert.equal(l.presences[0].$id, id);
            // none of the other presenceIds exists
            const gets = await Promise.all(ids.filter((x) => x !== id).map((x) => api(H.cluster, 'GET', `/v1/presences/${x}`, { key: true })));
            for (const g of gets) assertError(g, 404, 'presence_not_found');
            await keyP().delete({ presenceId: id });
        });
    });

    it('concurrent upserts of one presenceId by different users through both gateways: one owner wins, the rest get 409', async () => {
        const p = uid('contested');
        const socks = await pinnedSockets(H.cluster, 5);
        const reqs = [];
        let i = 0;
        const users = [];
        for (const list of socks.values()) for (const s of list) {
            const u = `${p}-u${i++}`;
            users.push(u);
            reqs.push(requestOver(H.cluster, s, 'PUT', `/v1/presences/${p}`, { key: true, body: { userId: u, status: 'mine' } }));
        }
        const res = await Promise.all(reqs);
        const ok = res.filter((r) => r.status === 200);
        for (const r of res) if (r.status !== 200) assertError(r, 409, 'presence_already_exists');
        assert.ok(ok.length >= 1, 'someone must win');
        const owners = new Set(ok.map((r) => r.json.userId));
        // a later upsert by the same owner may also succeed, but only one user owns the id
        assert.equal(owners.size, 1, `several users own ${p}: ${[...owners]}`);
        const rec = plain(await keyGet(p));
        assert.equal(rec.userId, [...owners][0]);
        for (const u of users) {
            if (u === rec.userId) continue;
            const l = plain(await keyList([loadNodeSdk().Query.equal('userId', [u])]));
            assert.equal(l.total, 0, `loser ${u} has a record`);
        }
        await keyP().delete({ presenceId: p });
    });
});

// --- list: queries, paging, order, cursor, total; sharding ---------------------------------

// --- direct requests: a gateway sends what needs no claim straight to the owning node ----------

describe('direct requests (gateway to the owning store node)', () => {
    // Each step runs on a socket pinned to one gateway process, so the gateway's own cache of
    // who owns what is what the test exercises, and its /metrics tells which path was taken.
    let A, B; // [pid, sockets] of each gateway
    test.before(async () => {
        const socks = [...(await pinnedSockets(H.cluster, 24)).entries()];
        [A, B] = socks;
    });
    test.after(() => { for (const g of [A, B]) for (const s of g?.[1] ?? []) s.destroy(); });
    const over = (g, method, path, body) => {
        const sock = g[1].shift();
        if (!sock) throw new Error('out of pinned sockets: raise the count in test.before');
        return requestOver(H.cluster, sock, method, path, { key: true, body });
    };
    const direct = async (g) => parseMetrics((await over(g, 'GET', '/metrics')).text);

    it('get, update, and a known user\'s upsert go straight to the node; the answers are the same', async () => {
        const user = uid('d'), p = uid('p');
        const m0 = await direct(A);
        const first = await over(A, 'PUT', `/v1/presences/${p}`, { userId: user, status: 'one' });
        assert.equal(first.status, 200, show(first));
        const second = await over(A, 'PUT', `/v1/presences/${p}`, { userId: user, status: 'two', metadata: { k: 1 } });
        assert.equal(second.status, 200, show(second));
        assert.equal(second.json.$id, p);
        assert.equal(second.json.$createdAt, first.json.$createdAt);
        assert.equal(second.json.status, 'two');
        assert.deepEqual(second.json.metadata, { k: 1 });
        const other = await over(A, 'PUT', `/v1/presences/${uid('p')}`, { userId: user, status: 'three' });
        assert.equal(other.status, 200, show(other));
        assert.equal(other.json.$id, p, 'an upsert under another presenceId updates the user\'s record');
        const got = await over(A, 'GET', `/v1/presences/${p}`);
        assert.equal(got.status, 200, show(got));
        assert.equal(got.json.status, 'three');
        const patched = await over(A, 'PATCH', `/v1/presences/${p}`, { status: 'four' });
        assert.equal(patched.status, 200, show(patched));
        assert.equal(patched.json.status, 'four');
        assert.deepEqual(patched.json.metadata, {}, 'the upsert without metadata cleared it');
        const m1 = await direct(A);
        const sent = m1.sum('presenced_gateway_direct_total', { result: 'sent' }) - m0.sum('presenced_gateway_direct_total', { result: 'sent' });
        const rerouted = m1.sum('presenced_gateway_direct_total', { result: 'rerouted' }) - m0.sum('presenced_gateway_direct_total', { result: 'rerouted' });
        assert.ok(sent >= 4, `expected the 2 later upserts, the get and the patch to go direct, got ${sent}`);
        assert.equal(rerouted, 0);
        await over(A, 'DELETE', `/v1/presences/${p}`);
    });

    it('a stale guess (the record was deleted through the other gateway) is resolved through the broker', async () => {
        const user = uid('d'), p = uid('p'), q = uid('q');
        for (const status of ['a', 'b']) assert.equal((await over(A, 'PUT', `/v1/presences/${p}`, { userId: user, status })).status, 200);
        assert.equal((await over(B, 'DELETE', `/v1/presences/${p}`)).status, 204);
        const m0 = await direct(A);
        const r = await over(A, 'PUT', `/v1/presences/${q}`, { userId: user, status: 'new' });
        assert.equal(r.status, 200, show(r));
        assert.equal(r.json.$id, q, 'a new record under the presenceId named, not the deleted one');
        const m1 = await direct(A);
        assert.equal(m1.sum('presenced_gateway_direct_total', { result: 'rerouted' }) - m0.sum('presenced_gateway_direct_total', { result: 'rerouted' }), 1);
        const l = plain(await keyList([loadNodeSdk().Query.equal('userId', [user])], true));
        assert.deepEqual(l.presences.map((x) => x.$id), [q]);
        assertError(await over(A, 'GET', `/v1/presences/${p}`), 404, 'presence_not_found');
        await keyP().delete({ presenceId: q });
    });

    it('a record given to another user through the other gateway is not touched by its old owner\'s upsert', async () => {
        const u = uid('d'), v = uid('v'), p = uid('p'), q = uid('q');
        for (const status of ['a', 'b']) assert.equal((await over(A, 'PUT', `/v1/presences/${p}`, { userId: u, status })).status, 200);
        const moved = await over(B, 'PATCH', `/v1/presences/${p}`, { userId: v, status: 'now v' });
        assert.equal(moved.status, 200, show(moved));
        const r = await over(A, 'PUT', `/v1/presences/${q}`, { userId: u, status: 'u again' });
        assert.equal(r.status, 200, show(r));
        assert.equal(r.json.$id, q);
        assert.equal(r.json.userId, u);
        const kept = plain(await keyGet(p));
        assert.equal(kept.userId, v);
        assert.equal(kept.status, 'now v');
        await keyP().delete({ presenceId: p });
        await keyP().delete({ presenceId: q });
    });
});

describe('list', () => {
    const N = 30;
    const group = uid('grp-');
    const recs = []; // by userId ascending
    let Q;

    test.before(async () => {
        Q = loadNodeSdk().Query;
        const P = keyP();
        // userIds ascend with i, presenceIds descend, so ordering by the wrong field shows
        const jobs = [];
        for (let i = 0; i < N; i++) {
            const userId = `${group}-u${String(i).padStart(2, '0')}`;
            const presenceId = `${group}-p${String(N - i).padStart(2, '0')}`;
            jobs.push(P.upsert({ presenceId, userId, status: group, metadata: { i } }));
        }
        for (const r of await Promise.all(jobs)) recs.push(plain(r));
        recs.sort((x, y) => (x.userId < y.userId ? -1 : 1));
    });

    const ids = (l) => l.presences.map((p) => p.userId);
    const users = (from, to) => recs.slice(from, to).map((r) => r.userId);

    it('Query.equal on status: total counts all matches, default page size is 25', async () => {
        const l = plain(await keyList([Q.equal('status', [group])]));
        assertList(l);
        assert.equal(l.total, N);
        assert.equal(l.presences.length, 25);
        for (const p of l.presences) assert.equal(p.status, group);
    });

    it('limit, offset and total', async () => {
        const l = plain(await keyList([Q.equal('status', [group]), Q.limit(5)]));
        assert.equal(l.total, N);
        assert.equal(l.presences.length, 5);
        const l2 = plain(await keyList([Q.equal('status', [group]), Q.orderAsc('userId'), Q.limit(10), Q.offset(10)]));
        assert.equal(l2.total, N);
        assert.deepEqual(ids(l2), users(10, 20));
        const l3 = plain(await keyList([Q.equal('status', [group]), Q.orderAsc('userId'), Q.limit(5), Q.offset(28)]));
        assert.deepEqual(ids(l3), users(28, 30));
        const l4 = plain(await keyList([Q.equal('status', [group]), Q.offset(N)]));
        assert.deepEqual(l4, { total: N, presences: [] });
        const l5 = plain(await keyList([Q.equal('status', [group]), Q.limit(3)], false));
        assert.equal(l5.total, 0, 'total=false gives total 0');
        assert.equal(l5.presences.length, 3);
    });

    it('orderAsc / orderDesc merge both store nodes in order', async () => {
        const asc = plain(await keyList([Q.equal('status', [group]), Q.orderAsc('userId'), Q.limit(100)]));
        assert.deepEqual(ids(asc), users(0, N));
        assert.deepEqual(asc.presences, recs);
        const desc = plain(await keyList([Q.equal('status', [group]), Q.orderDesc('userId'), Q.limit(100)]));
        assert.deepEqual(ids(desc), users(0, N).reverse());
        const byId = plain(await keyList([Q.equal('status', [group]), Q.orderAsc('$id'), Q.limit(7)]));
        assert.deepEqual(byId.presences.map((p) => p.$id), recs.map((r) => r.$id).sort().slice(0, 7));
        const byIdDesc = plain(await keyList([Q.equal('status', [group]), Q.orderDesc('$id'), Q.limit(7), Q.offset(3)]));
        assert.deepEqual(byIdDesc.presences.map((p) => p.$id), recs.map((r) => r.$id).sort().reverse().slice(3, 10));
    });

    it('cursorAfter pages through every record exactly once', async () => {
        const seen = [];
        let cursor;
        for (let page = 0; page < 10; page++) {
            const q = [Q.equal('status', [group]), Q.orderAsc('userId'), Q.limit(7)];
            if (cursor) q.push(Q.cursorAfter(cursor));
            const l = plain(await keyList(q));
            assert.equal(l.total, N, 'total ignores the cursor');
            if (!l.presences.length) break;
            seen.push(...l.presences);
            cursor = l.presences[l.presences.length - 1].$id;
        }
        assert.deepEqual(seen, recs);
        const mid = plain(await keyList([Q.equal('status', [group]), Q.orderAsc('userId'), Q.cursorAfter(recs[11].$id), Q.limit(3)]));
        assert.deepEqual(ids(mid), users(12, 15));
    });

    it('Query.equal on userId, on $id, with several values, and combined (AND)', async () => {
        const one = plain(await keyList([Q.equal('userId', [recs[5].userId])]));
        assert.deepEqual(one, { total: 1, presences: [recs[5]] });
        const byId = plain(await keyList([Q.equal('$id', [recs[9].$id])]));
        assert.deepEqual(byId, { total: 1, presences: [recs[9]] });
        const two = plain(await keyList([Q.equal('userId', [recs[1].userId, recs[2].userId]), Q.orderAsc('userId')]));
        assert.deepEqual(two, { total: 2, presences: [recs[1], recs[2]] });
        const and = plain(await keyList([Q.equal('status', [group]), Q.equal('userId', [recs[3].userId])]));
        assert.deepEqual(and, { total: 1, presences: [recs[3]] });
        const andNone = plain(await keyList([Q.equal('status', ['other']), Q.equal('userId', [recs[3].userId])]));
        assert.deepEqual(andNone, { total: 0, presences: [] });
    });

    it('the web SDKs list the same way (JWT user sees only its readable records)', async () => {
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk, userId: recs[4].userId });
            const l = plain(await w.presences.list({ queries: [w.W.Query.equal('status', [group])] }));
            assert.deepEqual(l, { total: 1, presences: [recs[4]] }, `web ${sdk}`);
        }
    });

    it('records are spread over both store nodes (/metrics)', async () => {
        const all = plain(await keyList([Q.limit(1)]));
        const m = await H.cluster.waitMetrics((x) => x.sum('presenced_store_records') === all.total);
        const n1 = m.get('presenced_store_records', { node: 1 });
        const n2 = m.get('presenced_store_records', { node: 2 });
        assert.notEqual(n1, undefined, 'presenced_store_records{node="1"} missing');
        assert.notEqual(n2, undefined, 'presenced_store_records{node="2"} missing');
        assert.ok(n1 > 0 && n2 > 0, `records per node: ${n1} / ${n2}`);
        assert.equal(n1 + n2, all.total, `store records ${n1}+${n2} vs list total ${all.total}`);
        assert.equal(m.get('presenced_store_up', { node: 1 }), 1);
        assert.equal(m.get('presenced_store_up', { node: 2 }), 1);
    });

    test.after(async () => {
        await Promise.all(recs.map((r) => keyP().delete({ presenceId: r.$id }).catch(() => {})));
    });
});

// --- identity: JWT and API key callers -------------------------------------------------------

describe('callers', () => {
    it('web SDK with setJWT: upsert without userId belongs to the token user (claim userId or sub)', async () => {
        for (const claim of ['userId', 'sub']) {
            const u = uid('jwt'), p = uid('p');
            const jwt = mintJwt(H.cluster.jwtSecret, { [claim]: u });
            const w = webClient(H.cluster, { sdk: 'appwrite', jwt });
            const r = plain(await w.presences.upsert({ presenceId: p, status: 'on' }));
            assertPresence(r, { $id: p, userId: u, $permissions: ownerPermissions(u) });
            assert.deepEqual(plain(await keyGet(p)), r);
            await keyP().delete({ presenceId: p });
        }
    });

    it('node-appwrite with a JWT: sending userId is 401 general_unauthorized_scope; get/list/delete work', async () => {
        const u = uid('nj'), p = uid('p');
        const nj = nodeClient(H.cluster, { userId: u });
        await rejectsWith(nj.presences.upsert({ presenceId: p, userId: u, status: 'x' }), 401, 'general_unauthorized_scope', 'node JWT upsert');
        assert.deepEqual(plain(await keyList([loadNodeSdk().Query.equal('userId', [u])])), { total: 0, presences: [] });
        const w = webClient(H.cluster, { sdk: 'appwrite-latest', userId: u });
        const rec = plain(await w.presences.upsert({ presenceId: p, status: 'web' }));
        await rejectsWith(nj.presences.update({ presenceId: p, userId: u, status: 'y' }), 401, 'general_unauthorized_scope', 'node JWT update');
        assert.deepEqual(plain(await nj.presences.get({ presenceId: p })), rec, 'unchanged and readable');
        const l = plain(await nj.presences.list({ queries: [loadNodeSdk().Query.equal('userId', [u])] }));
        assert.deepEqual(l, { total: 1, presences: [rec] });
        await nj.presences.delete({ presenceId: p });
        await rejectsWith(keyGet(p), 404, 'presence_not_found');
    });

    it('API key without userId is 400 general_bad_request, and nothing is written', async () => {
        const p = uid('p');
        const r = await api(H.cluster, 'PUT', `/v1/presences/${p}`, { key: true, body: { status: 'x' } });
        assertError(r, 400, 'general_bad_request');
        assertError(await api(H.cluster, 'GET', `/v1/presences/${p}`, { key: true }), 404, 'presence_not_found');
    });
});

// --- read permissions ------------------------------------------------------------------------

describe('read permissions', () => {
    let A, B, C, D, recA, recC, recD;
    test.before(async () => {
        A = webClient(H.cluster, { sdk: 'appwrite', userId: uid('pa') });
        B = webClient(H.cluster, { sdk: 'appwrite-latest', userId: uid('pb') });
        C = webClient(H.cluster, { sdk: 'appwrite', userId: uid('pc') });
        D = webClient(H.cluster, { sdk: 'appwrite', userId: uid('pd') });
        const { Permission, Role } = A.W;
        recA = plain(await A.presences.upsert({ presenceId: uid('p'), status: 'private' }));
        recC = plain(await C.presences.upsert({
            presenceId: uid('p'), status: 'public',
            permissions: [Permission.read(Role.any()), Permission.write(Role.user(C.userId))],
        }));
        recD = plain(await D.presences.upsert({ presenceId: uid('p'), status: 'members', permissions: [Permission.read(Role.users())] }));
    });

    it("a JWT user cannot get or list another user's private record", async () => {
        assert.deepEqual(recA.$permissions, ownerPermissions(A.userId));
        await rejectsWith(B.presences.get({ presenceId: recA.$id }), 404, 'presence_not_found', 'B gets A');
        const l = plain(await B.presences.list({ queries: [B.W.Query.equal('userId', [A.userId])] }));
        assert.deepEqual(l, { total: 0, presences: [] });
        const byId = plain(await B.presences.list({ queries: [B.W.Query.equal('$id', [recA.$id])] }));
        assert.deepEqual(byId, { total: 0, presences: [] });
        await rejectsWith(B.presences.update({ presenceId: recA.$id, status: 'hacked' }), 404, 'presence_not_found', 'B updates A');
        await rejectsWith(B.presences.delete({ presenceId: recA.$id }), 404, 'presence_not_found', 'B deletes A');
        assert.deepEqual(plain(await A.presences.get({ presenceId: recA.$id })), recA, 'the owner still sees it unchanged');
        assert.deepEqual(plain(await keyGet(recA.$id)), recA, 'the API key bypasses permissions');
    });

    it('a read("any") or read("users") record is visible to other users', async () => {
        assert.deepEqual(recC.$permissions, [`delete("user:${C.userId}")`, 'read("any")', `update("user:${C.userId}")`]);
        assert.deepEqual(plain(await B.presences.get({ presenceId: recC.$id })), recC);
        const l = plain(await B.presences.list({ queries: [B.W.Query.equal('userId', [C.userId])] }));
        assert.deepEqual(l, { total: 1, presences: [recC] });
        assert.deepEqual(recD.$permissions, ['read("users")']);
        assert.deepEqual(plain(await B.presences.get({ presenceId: recD.$id })), recD);
    });

    it('readable but not writable: update/delete by another user is 401 user_unauthorized', async () => {
        await rejectsWith(B.presences.update({ presenceId: recC.$id, status: 'mine' }), 401, 'user_unauthorized', 'B updates C');
        await rejectsWith(B.presences.delete({ presenceId: recC.$id }), 401, 'user_unauthorized', 'B deletes C');
        assert.deepEqual(plain(await keyGet(recC.$id)), recC);
    });

    it('a user may not grant a role it does not hold (401 user_unauthorized)', async () => {
        const { Permission, Role } = B.W;
        await rejectsWith(B.presences.upsert({ presenceId: uid('p'), status: 'x', permissions: [Permission.read(Role.user(A.userId))] }),
            401, 'user_unauthorized', 'grant read to another user');
        assert.deepEqual(plain(await keyList([loadNodeSdk().Query.equal('userId', [B.userId])])), { total: 0, presences: [] });
    });

    test.after(async () => {
        for (const r of [recA, recC, recD]) if (r) await keyP().delete({ presenceId: r.$id }).catch(() => {});
    });
});

// --- service routes --------------------------------------------------------------------------

describe('service routes', () => {
    it('ping through every SDK answers Pong!', async () => {
        for (const sdk of ['appwrite', 'appwrite-latest']) {
            const w = webClient(H.cluster, { sdk });
            assert.deepEqual(plain(await w.client.ping()), { message: 'Pong!' }, `web ${sdk}`);
        }
        const n = nodeClient(H.cluster, {});
        assert.deepEqual(plain(await n.client.ping()), { message: 'Pong!' });
    });

    it('/v1/health is 200 with every role up; /metrics counts requests by route and status', async () => {
        assert.equal(await H.cluster.health(), 200);
        const procs = H.cluster.procs();
        const roles = procs.map((p) => `${p.role}${p.node ?? ''}`).sort();
        assert.deepEqual(roles, ['broker', 'gateway1', 'gateway2', 'reaper', 'store1', 'store2'], JSON.stringify(procs.map((p) => p.args)));
        // Each gateway process is asked directly, so this holds whether /metrics aggregates
        // the cluster or reports the gateway that answers.
        const socks = await pinnedSockets(H.cluster, 3);
        for (const [gw, [s1, s2, s3]] of socks) {
            const m0 = await requestOver(H.cluster, s1, 'GET', '/metrics');
            assert.equal(m0.status, 200, `gateway ${gw}: ${show(m0)}`);
            const before = parseMetrics(m0.text);
            const miss = await requestOver(H.cluster, s2, 'GET', `/v1/presences/${uid('nope')}`, { key: true });
            assertError(miss, 404, 'presence_not_found');
            const m = parseMetrics((await requestOver(H.cluster, s3, 'GET', '/metrics')).text);
            const reqs = m.find('presenced_http_requests_total');
            assert.ok(reqs.length > 0, 'presenced_http_requests_total missing');
            for (const s of reqs) assert.ok('route' in s.labels && 'status' in s.labels, JSON.stringify(s));
            assert.ok(m.sum('presenced_http_requests_total', { status: '404' }) > before.sum('presenced_http_requests_total', { status: '404' }),
                `gateway ${gw}: the 404 was not counted:\n${m.find('presenced_http_requests_total').map((x) => JSON.stringify(x)).join('\n')}`);
            assert.ok(m.find('presenced_http_requests_total', { status: '200' }).length > 0, 'no 200 counted');
            assert.ok(m.find('presenced_store_records').length >= 2, 'presenced_store_records missing');
        }
    });
});

// --- HTTP/1.1 connections while a request waits for a store node ------------------------------

// Reads `count` HTTP/1.1 responses (each with Content-Length) from a raw socket, in order.
function readResponses(sock, count, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
        let buf = Buffer.alloc(0);
        const out = [];
        const done = (err) => {
            clearTimeout(timer);
            sock.off('data', onData);
            sock.off('close', onClose);
            err ? reject(err) : resolve(out);
        };
        const onClose = () => done(new Error(`socket closed after ${out.length} of ${count} responses`));
        const onData = (chunk) => {
            buf = Buffer.concat([buf, chunk]);
            for (;;) {
                const end = buf.indexOf('\r\n\r\n');
                if (end < 0) return;
                const head = buf.subarray(0, end).toString('latin1');
                const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
                if (buf.length < end + 4 + len) return;
                const text = buf.subarray(end + 4, end + 4 + len).toString('utf8');
                let json;
                try { json = JSON.parse(text); } catch {}
                out.push({ status: Number(head.split(' ')[1]), text, json });
                buf = buf.subarray(end + 4 + len);
                if (out.length === count) return done();
            }
        };
        const timer = setTimeout(() => done(new Error(`timeout after ${out.length} of ${count} responses`)), timeoutMs);
        sock.on('data', onData);
        sock.on('close', onClose);
    });
}

function rawRequest(method, path, body) {
    const data = body === undefined ? '' : JSON.stringify(body);
    return `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Appwrite-Project: ${H.cluster.project}\r\n` +
        `X-Appwrite-Key: ${H.cluster.apiKey}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(data)}\r\n\r\n${data}`;
}

describe('HTTP/1.1 connections while a request waits for a store node', () => {
    it('pipelined requests are answered in order, and the connection stays usable', async () => {
        const net = require('node:net');
        const sock = net.connect({ host: '127.0.0.1', port: H.cluster.port });
        await new Promise((r, j) => { sock.once('connect', r); sock.once('error', j); });
        try {
            const p = uid('pipe'), user = uid('pu');
            // one write: an upsert that waits for its node, then requests that arrive behind it
            sock.write(rawRequest('PUT', `/v1/presences/${p}`, { userId: user, status: 'first' }) +
                rawRequest('GET', `/v1/presences/${p}`) +
                rawRequest('PATCH', `/v1/presences/${p}`, { userId: user, status: 'second' }) +
                rawRequest('GET', '/v1/ping') +
                rawRequest('GET', `/v1/presences/${p}`));
            const [put, get1, patch, ping, get2] = await readResponses(sock, 5);
            assert.equal(put.status, 200, put.text);
            assert.equal(put.json.$id, p);
            assert.equal(get1.status, 200, get1.text);
            assert.equal(get1.json.status, 'first', 'the GET behind the upsert sees it');
            assert.equal(patch.status, 200, patch.text);
            assert.equal(ping.status, 200, ping.text);
            assert.equal(ping.text, 'Pong!');
            assert.equal(get2.status, 200, get2.text);
            assert.equal(get2.json.status, 'second');
            // the same connection, later, one request at a time
            for (const status of ['third', 'fourth']) {
                sock.write(rawRequest('PUT', `/v1/presences/${p}`, { userId: user, status }));
                const [r] = await readResponses(sock, 1);
                assert.equal(r.status, 200, r.text);
                assert.equal(r.json.status, status);
            }
        } finally {
            sock.destroy();
        }
    });

    it('a client that closes while its request waits leaves the gateway serving', async () => {
        const net = require('node:net');
        const pids = H.cluster.pids('gateway').join(',');
        const ids = [];
        for (let i = 0; i < 40; i++) {
            const sock = net.connect({ host: '127.0.0.1', port: H.cluster.port });
            await new Promise((r, j) => { sock.once('connect', r); sock.once('error', j); });
            const p = uid('gone');
            ids.push(p);
            sock.write(rawRequest('PUT', `/v1/presences/${p}`, { userId: uid('gu'), status: 'bye' }));
            if (i % 2) sock.end(); else sock.destroy(); // half-close and reset
        }
        await sleep(200);
        for (const p of ids) { // every write either happened whole or not at all
            const r = await api(H.cluster, 'GET', `/v1/presences/${p}`, { key: true });
            assert.ok(r.status === 200 || r.status === 404, show(r));
            if (r.status === 200) assert.equal(r.json.status, 'bye');
        }
        assert.equal(H.cluster.pids('gateway').join(','), pids, 'no gateway restarted');
        assert.equal((await api(H.cluster, 'GET', '/v1/ping', { key: true })).text, 'Pong!');
    });
});
