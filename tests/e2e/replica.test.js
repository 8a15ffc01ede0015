'use strict';
// Roster replicas (gateway/gw_replica.h), end to end on a cluster of 3 store nodes and 2
// gateways, each gateway reached on a connection pinned to it:
//   - a large list builds the gateway's replica of the project; later lists are answered from
//     it (its metrics say so) and answer exactly as a model kept in the test does (filters,
//     orders, offsets, totals, permissions, metadata), while writes go on between them, in a
//     project without indexes and in one that indexes metadata.room and status (the replica's
//     own index answers their equal()s); cursors go through the broker, and answer the same;
//   - read-your-writes across gateways: a write acknowledged by one gateway is in the very next
//     list of the other (and a delete is gone from it);
//   - under continuous writes, every page is whole, unique and ordered;
//   - a record past its expiresAt is left out at once, before the reaper deletes it;
//   - a store node SIGKILLed: lists stay right, the replica is dropped and built again;
//   - the store set grown to 4 nodes and shrunk back to 3 under writes: lists stay exact during
//     the moves (records move without events: the replicas are dropped) and after them.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { useCluster, sleep, BIN } = require('./lib/cluster');
const { nodeClient, mintJwt, plain, loadNodeSdk } = require('./lib/sdk');
const { pinnedSockets, requestOver } = require('./lib/http');
const { uid } = require('./lib/check');
const { mulberry32, toQuery, modelList } = require('./lib/listmodel');

// A second project indexes metadata.room and status: its lists with an equal() on them visit the
// records of those values only, in the replica as in the store nodes (st_index.h)
const RIX = 'rix-project';
const RIX_KEY = 'rk_' + crypto.randomBytes(16).toString('hex');
const RIX_JWT = 'rj_' + crypto.randomBytes(16).toString('hex');
const H = useCluster(test, {
    label: 'replica', stores: 3, gateways: 2, env: { REPLICA_RIX_KEY: RIX_KEY },
    config: { projects: [{ id: RIX, indexes: ['metadata.room', 'status'], keys: [{ name: 'k', secret_env: 'REPLICA_RIX_KEY', scopes: ['presences.read', 'presences.write'] }], jwt: [{ alg: 'HS256', secret: RIX_JWT }] }] },
});
const C = () => H.cluster;
const { Query: Q, Permission, Role } = loadNodeSdk();
const keyP = () => nodeClient(C(), {}).presences;

const STATUSES = ['online', 'away', 'busy', 'in-game'];
const USERS = Array.from({ length: 8 }, (_, i) => `ru${i}`);

let socks; // [socket to gateway A, socket to gateway B]
const KEEP = { connection: 'keep-alive' }; // (without it, node's http asks the server to close)
const served = () => C().gatewaySum('presenced_gateway_list_replica_total', { result: 'served' });
const built = () => C().gatewaySum('presenced_gateway_list_replica_builds_total', { result: 'built' });

// The project a request names: the cluster's own (null), or RIX.
const proj = (p) => (p === RIX ? { key: RIX_KEY, jwt: RIX_JWT, headers: { ...KEEP, 'X-Appwrite-Project': RIX } }
    : { key: true, jwt: C().jwtSecret, headers: KEEP });

// A list over the socket pinned to gateway g: { status, json }.
async function listOn(g, queries, { caller = { key: true }, total = true, project = null } = {}) {
    const path = '/v1/presences?' + queries.map((q, i) => `queries[${i}]=${encodeURIComponent(q)}`).join('&') +
        (total ? '' : '&total=false');
    const P = proj(project);
    const auth = caller.key ? { key: P.key } : caller.user ? { jwt: mintJwt(P.jwt, { userId: caller.user }) } : {};
    return requestOver(C(), socks[g], 'GET', path, { ...auth, headers: P.headers });
}

async function writeOn(g, method, path, body, project = null) {
    const P = proj(project);
    const r = await requestOver(C(), socks[g], method, path, { key: P.key, body, headers: P.headers });
    assert.ok(r.status === 200 || r.status === 204, `${method} ${path}: ${r.status} ${r.text}`);
    return r.json;
}

// Waits until both gateways answer the project's lists from a replica (a large list on each
// builds it).
async function bothBuilt(project = null) {
    for (let i = 0; i < 100; i++) {
        const s0 = await served();
        for (const g of [0, 1]) await listOn(g, [Q.limit(1000)], { project });
        if ((await served()) >= s0 + 2) return;
        await sleep(50);
    }
    assert.fail('the gateways did not build their replicas');
}

describe('roster replicas', () => {
    test.before(async () => {
        const pinned = await pinnedSockets(C(), 1);
        socks = [...pinned.values()].map((a) => a[0]);
    });
    test.after(() => { for (const s of socks || []) s.destroy(); });

    for (const project of [null, RIX]) it(`lists answered from the replica are the model's answers (seeded)${project ? ', a project with indexes' : ''}`, { timeout: 180000 }, async (t) => {
        const seed = process.env.REPLICA_SEED ? Number(process.env.REPLICA_SEED) : crypto.randomInt(2 ** 31);
        const rnd = mulberry32(seed);
        const pick = (a) => a[Math.floor(rnd() * a.length)];
        const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
        t.diagnostic(`seed ${seed} (REPLICA_SEED=${seed} replays it)`);
        const tag = uid('rd');
        const model = new Map();
        const fields = (user) => {
            const f = { userId: user, status: pick(STATUSES), metadata: { room: pick(['a', 'b']), n: int(0, 9) },
                expiresAt: new Date(Date.now() + int(10, 100) * 60000).toISOString() };
            const perms = pick([undefined, [Permission.read(Role.any())], [Permission.read(Role.users())], [Permission.read(Role.user(pick(USERS)))]]);
            if (perms) f.permissions = perms;
            return f;
        };
        // writes through either gateway, by the SDK's REST calls' shapes
        const write = async () => {
            const r = rnd(), live = [...model.values()];
            const g = int(0, 1);
            if (r < 0.6 || live.length < 10) {
                const id = `${tag}-${Math.floor(rnd() * 2 ** 40).toString(36)}`;
                const user = `${tag}-${pick(USERS)}-${int(0, 40)}`;
                const got = await writeOn(g, 'PUT', `/v1/presences/${id}`, fields(user), project);
                for (const [k, v] of model) if (v.userId === got.userId && k !== got.$id) model.delete(k);
                model.set(got.$id, got);
            } else if (r < 0.85) {
                const v = pick(live);
                const got = await writeOn(g, 'PATCH', `/v1/presences/${v.$id}`, rnd() < 0.5 ? { userId: v.userId, status: pick(STATUSES) }
                    : { userId: v.userId, metadata: { room: pick(['a', 'b', 'c']), n: int(0, 9) } }, project);
                model.set(got.$id, got);
            } else {
                const v = pick(live);
                await writeOn(g, 'DELETE', `/v1/presences/${v.$id}`, undefined, project);
                model.delete(v.$id);
            }
        };
        try {
            for (let i = 0; i < 300; i++) await write();
            await bothBuilt(project);
            const before = await served();
            const ix0 = await C().gatewaySum('presenced_gateway_list_replica_indexed_total');
            const callers = [{ key: true }, { user: `${tag}-${pick(USERS)}` }, {}];
            const ORDER = ['status', 'userId', '$id', 'expiresAt', '$createdAt', '$updatedAt'];
            let checks = 0, nonEmpty = 0;
            for (let i = 0; i < 300; i++) {
                if (rnd() < 0.3) for (let k = int(1, 3); k > 0; k--) await write();
                const caller = pick(callers);
                // (the indexed project holds this test's records only: its lists may have no filter
                // but the index's equal(), whose pages an API key gets as slices of the index)
                const spec = { filters: project && rnd() < 0.4 ? [] : [{ m: 'startsWith', attr: '$id', values: [tag] }], order: [], offset: 0, limit: 25, cursor: null, total: rnd() < 0.85 };
                const f = int(0, 9);
                if (f === 0) spec.filters.push({ m: 'equal', attr: 'status', values: [pick(STATUSES)] });
                else if (f === 1) spec.filters.push({ m: 'notEqual', attr: 'status', values: [pick(STATUSES)] });
                else if (f === 2) spec.filters.push({ m: 'startsWith', attr: 'userId', values: [`${tag}-${pick(USERS)}`] });
                else if (f === 6 || f === 7) spec.filters.push({ m: 'equal', attr: 'metadata.room', values: rnd() < 0.3 ? ['a', 'c'] : [pick(['a', 'b', 'c'])] });
                else if (f === 8) spec.filters.push({ m: 'equal', attr: 'status', values: [pick(STATUSES), pick(STATUSES)] });
                else if (f === 3) spec.filters.push(pick([{ m: 'equal', attr: 'metadata.room', values: [pick(['a', 'b'])] },
                    { m: pick(['lessThan', 'greaterThanEqual']), attr: 'metadata.n', values: [int(0, 9)] }, { m: 'isNull', attr: 'metadata.x' },
                    { m: 'notEqual', attr: 'metadata.room', values: ['a'] }]));
                else if (f === 4) spec.filters.push({ m: pick(['lessThan', 'greaterThan']), attr: 'status', values: [pick(STATUSES)] });
                else if (f === 5) spec.filters.push({ m: 'or', sub: [{ m: 'equal', attr: 'status', values: [pick(STATUSES)] }, { m: 'endsWith', attr: 'userId', values: [String(int(0, 9))] }] });
                for (let k = int(0, 2); k > 0; k--) spec.order.push({ attr: pick(ORDER), desc: rnd() < 0.5 });
                if (rnd() < 0.5) spec.limit = int(1, 400);
                if (rnd() < 0.3) spec.offset = int(0, 100);
                if (rnd() < 0.1 && model.size) spec.cursor = { id: pick([...model.keys()]), before: rnd() < 0.5 }; // through the broker
                const queries = [...spec.filters.map(toQuery), ...spec.order.map((o) => (o.desc ? Q.orderDesc(o.attr) : Q.orderAsc(o.attr)))];
                if (spec.limit !== 25) queries.push(Q.limit(spec.limit));
                if (spec.offset) queries.push(Q.offset(spec.offset));
                if (spec.cursor) queries.push(spec.cursor.before ? Q.cursorBefore(spec.cursor.id) : Q.cursorAfter(spec.cursor.id));
                const want = modelList([...model.values()], caller, spec);
                if (!spec.total && !want.error) want.total = 0;
                const what = `seed ${seed}, check ${i}, caller ${JSON.stringify(caller)}, queries ${JSON.stringify(queries)}`;
                const r = await listOn(int(0, 1), queries, { caller, total: spec.total, project });
                if (want.error) {
                    assert.equal(r.json && r.json.type, want.error, `${what}: ${r.status} ${r.text}`);
                    continue;
                }
                assert.equal(r.status, 200, `${what}: ${r.text}`);
                assert.deepEqual(r.json.presences.map((p) => p.$id), want.ids, `${what}: ids`);
                assert.equal(r.json.total, want.total, `${what}: total`);
                for (const p of r.json.presences) assert.deepEqual(p, model.get(p.$id), `${what}: record ${p.$id}`);
                checks++;
                if (want.ids.length) nonEmpty++;
            }
            const n = (await served()) - before;
            t.diagnostic(`${checks} lists checked (${nonEmpty} non-empty), ${n} answered from a replica, ${model.size} records`);
            assert.ok(nonEmpty > checks / 3, 'most lists must hold something, or the test checks little');
            assert.ok(n >= 150, `most lists are answered from a replica (${n} of 300)`);
            const ix = (await C().gatewaySum('presenced_gateway_list_replica_indexed_total')) - ix0;
            t.diagnostic(`${ix} from the replica's indexes`);
            if (project) assert.ok(ix >= 40, `equal() on metadata.room and status used the index (${ix})`);
            else assert.equal(ix, 0, 'a project without indexes has none in its replica');
        } catch (e) {
            e.message = `[REPLICA_SEED=${seed}] ${e.message}`;
            throw e;
        }
    });

    it('a write acknowledged by one gateway is in the next list of the other', { timeout: 60000 }, async () => {
        const tag = uid('ryw');
        await bothBuilt();
        const before = await served();
        const q = [Q.equal('status', [tag]), Q.limit(5000)];
        for (let i = 0; i < 100; i++) {
            const [w, l] = i % 2 ? [0, 1] : [1, 0];
            const id = `${tag}-${i}`;
            await writeOn(w, 'PUT', `/v1/presences/${id}`, { userId: `${tag}-u${i}`, status: tag });
            let r = await listOn(l, q);
            assert.ok(r.json.presences.some((p) => p.$id === id), `upsert ${i} is listed by the other gateway`);
            await writeOn(w, 'PATCH', `/v1/presences/${id}`, { userId: `${tag}-u${i}`, metadata: { i } });
            r = await listOn(l, q);
            assert.deepEqual(r.json.presences.find((p) => p.$id === id).metadata, { i }, `update ${i}`);
            if (i % 4 === 3) {
                await writeOn(w, 'DELETE', `/v1/presences/${id}`);
                r = await listOn(l, q);
                assert.ok(!r.json.presences.some((p) => p.$id === id), `delete ${i} is gone from the other gateway's list`);
            }
        }
        const n = (await served()) - before;
        assert.ok(n >= 225, `the lists were answered from the replicas (${n} of 225)`);
    });

    it('under continuous writes every page is whole, unique and ordered', { timeout: 60000 }, async (t) => {
        const tag = uid('churn');
        const COUNT = 1200;
        const ids = Array.from({ length: COUNT }, (_, i) => i);
        for (let i = 0; i < COUNT; i += 50)
            await Promise.all(ids.slice(i, i + 50).map((k) => keyP().upsert({ presenceId: `${tag}-${k}`, userId: `${tag}-u${String(k).padStart(4, '0')}`, status: tag })));
        await bothBuilt();
        const before = await served();
        let stop = false, churned = 0, lists = 0;
        const churn = Promise.all([0, 1, 2, 3].map(async (w) => {
            for (let k = w; !stop; k = (k + 4) % COUNT) {
                await keyP().delete({ presenceId: `${tag}-${k}` });
                await keyP().upsert({ presenceId: `${tag}-${k}`, userId: `${tag}-u${String(k).padStart(4, '0')}`, status: tag, metadata: { k } });
                churned++;
            }
        }));
        try {
            const until = Date.now() + 6000;
            while (Date.now() < until) {
                const r = await listOn(lists % 2, [Q.equal('status', [tag]), Q.orderAsc('userId'), Q.limit(1000)]);
                lists++;
                const users = r.json.presences.map((p) => p.userId);
                assert.equal(users.length, 1000, 'a whole page');
                assert.equal(new Set(users).size, 1000, 'no record twice');
                assert.deepEqual(users, [...users].sort(), 'in order');
                assert.ok(r.json.total >= COUNT - 4 && r.json.total <= COUNT, `total ${r.json.total}`);
            }
        } finally {
            stop = true;
            await churn;
        }
        t.diagnostic(`${lists} lists while ${churned} records were deleted and created again`);
        assert.ok(churned > 50 && lists > 20, 'writes and lists overlapped');
        assert.ok((await served()) - before >= lists / 2, 'the lists were answered from the replicas');
    });

    it('a record past its expiresAt is left out at once', { timeout: 30000 }, async () => {
        // in the indexed project: an API key's equal() on status is answered as a slice of the
        // index while no record has expired, and record by record once one has
        const tag = uid('exp');
        await bothBuilt(RIX);
        const at = Date.now() + 2500;
        await writeOn(0, 'PUT', `/v1/presences/${tag}-x`, { userId: `${tag}-u`, status: tag, expiresAt: new Date(at).toISOString() }, RIX);
        await writeOn(1, 'PUT', `/v1/presences/${tag}-y`, { userId: `${tag}-v`, status: tag }, RIX);
        const q = [Q.equal('status', [tag])];
        for (const g of [0, 1]) assert.deepEqual((await listOn(g, q, { project: RIX })).json.presences.map((p) => p.$id).sort(), [`${tag}-x`, `${tag}-y`]);
        await sleep(at - Date.now() + 20);
        for (const g of [0, 1])
            for (const caller of [{ key: true }, { user: `${tag}-u` }]) {
                const r = await listOn(g, q, { project: RIX, caller });
                assert.deepEqual(r.json.presences.map((p) => p.$id), caller.key ? [`${tag}-y`] : [], `gateway ${g}, ${JSON.stringify(caller)}`);
                assert.equal(r.json.total, caller.key ? 1 : 0);
            }
    });

    it('a store node SIGKILLed: lists stay right, the replica is built again', { timeout: 60000 }, async () => {
        const tag = uid('kill');
        const want = [];
        for (let i = 0; i < 60; i++) {
            const p = await keyP().upsert({ presenceId: `${tag}-${String(i).padStart(2, '0')}`, userId: `${tag}-u${i}`, status: tag });
            want.push(p.$id);
        }
        await bothBuilt();
        const b0 = await built();
        const c = C();
        const old = c.pids('store', 2);
        c.kill('store', 2, 'SIGKILL');
        await c.waitRestarted('store', 2, old);
        const q = [Q.equal('status', [tag]), Q.orderAsc('$id'), Q.limit(100)];
        const deadline = Date.now() + 20000;
        for (let i = 0; ; i++) {
            for (const g of [0, 1]) {
                const r = await listOn(g, q);
                if (r.status === 503) continue; // the node is on its way back (README, Crashes)
                assert.equal(r.status, 200, r.text);
                assert.deepEqual(r.json.presences.map((p) => p.$id), want, `gateway ${g}, round ${i}`);
                await listOn(g, [Q.limit(1000)]); // a large list: builds again
            }
            if ((await built()) >= b0 + 2) break;
            assert.ok(Date.now() < deadline, 'the replicas were not built again');
            await sleep(100);
        }
        const s0 = await served();
        for (const g of [0, 1]) assert.deepEqual((await listOn(g, q)).json.presences.map((p) => p.$id), want);
        assert.ok((await served()) >= s0 + 2, 'answered from the new replicas');
    });

    it('the store set grown to 4 nodes and back to 3 under writes: lists stay exact', { timeout: 300000 }, async (t) => {
        const tag = uid('move');
        const model = new Map();
        for (let i = 0; i < 300; i += 50)
            await Promise.all(Array.from({ length: 50 }, (_, k) => i + k).map(async (k) => {
                const p = plain(await keyP().upsert({ presenceId: `${tag}-${String(k).padStart(3, '0')}`, userId: `${tag}-u${k}`, status: tag, metadata: { v: 0 } }));
                model.set(p.$id, p);
            }));
        await bothBuilt();
        const d0 = await C().gatewaySum('presenced_gateway_list_replica_builds_total', { result: 'dropped' });
        const q = [Q.equal('status', [tag]), Q.orderAsc('$id'), Q.limit(1000)];
        const check = async (g, what) => {
            const r = await listOn(g, q);
            if (r.status === 503) return false; // a record on its way between nodes (README)
            assert.equal(r.status, 200, `${what}: ${r.text}`);
            assert.deepEqual(r.json.presences, [...model.keys()].sort().map((id) => model.get(id)), what);
            return true;
        };
        const scale = (stores) => new Promise((resolve, reject) => {
            execFile(path.join(path.dirname(BIN), 'presencectl'), ['cluster', 'scale', '--run-dir', C().runDir, '--stores', String(stores), '--wait'],
                { timeout: 180000 }, (err, stdout, stderr) => (err ? reject(new Error(`presencectl: ${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout))));
        });
        let v = 0;
        for (const stores of [4, 3]) {
            let done = false, during = 0;
            const moved = scale(stores).finally(() => { done = true; });
            while (!done) {
                const id = `${tag}-${String(v % 300).padStart(3, '0')}`;
                const w = await keyP().update({ presenceId: id, userId: model.get(id).userId, metadata: { v: ++v } }).then(plain, (e) => e);
                if (w.$id) model.set(id, w);
                else assert.equal(w.code, 503, `update during the moves: ${w.message}`);
                if (await check(v % 2, `to ${stores} nodes, during the moves (write ${v})`)) during++;
            }
            const r = await moved;
            assert.equal(r.settled, true, JSON.stringify(r));
            // a build refused while records moved is asked again a second later (gw_replica.h)
            const s0 = await served(), until = Date.now() + 15000;
            let after = 0;
            while ((await served()) - s0 < 20) {
                assert.ok(Date.now() < until, 'replicas of the new store set answered');
                await check(after % 2, `${stores} nodes, after the moves: check ${after}`);
                after++;
                await sleep(20);
            }
            t.diagnostic(`${stores} nodes: ${during} lists checked during the moves, ${after} after them (20 from new replicas)`);
        }
        assert.ok((await C().gatewaySum('presenced_gateway_list_replica_builds_total', { result: 'dropped' })) >= d0 + 2,
            'the replicas were dropped when records moved');
    });
});
