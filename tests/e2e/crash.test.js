'use strict';
// Store nodes killed with SIGKILL between writes, several times: while a node is down,
// requests for its records fail fast with 503; the supervisor restarts it; every record
// written before the kill is served again unchanged (the data lives in shared memory).
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');
const { useCluster, sleep } = require('./lib/cluster');
const { nodeClient, webClient, plain, loadNodeSdk } = require('./lib/sdk');
const { api, show } = require('./lib/http');
const { assertPresence, assertError, uid } = require('./lib/check');
const { idOnNode } = require('./lib/shard');

const H = useCluster(test, { label: 'crash' });
const FAST_MS = 2000;

const snapshot = new Map(); // presenceId -> the model as last acknowledged
let written = 0;

const keyP = () => nodeClient(H.cluster, {}).presences;
const get = (id) => api(H.cluster, 'GET', `/v1/presences/${id}`, { key: true, timeoutMs: 15000 });

// Writes n new records of various shapes (key and JWT callers) and patches a few old ones.
async function writeSome(n, tag) {
    const P = keyP();
    const jobs = [];
    for (let i = 0; i < n; i++) {
        const k = written++;
        const presenceId = uid(`c${tag}`);
        if (k % 3 === 2) {
            const w = webClient(H.cluster, { sdk: k % 2 ? 'appwrite' : 'appwrite-latest', userId: uid('cw') });
            jobs.push(w.presences.upsert({ presenceId, status: `web ${k}`, metadata: { k, tag, nested: { a: [k, String(k)] } } }));
        } else {
            jobs.push(P.upsert({
                presenceId, userId: uid('ck'), status: `key ${k}`,
                metadata: k % 2 ? { k, tag, s: 'é'.repeat(k % 7) } : undefined,
                expiresAt: k % 4 === 0 ? new Date(Date.now() + (k + 1) * 3600e3).toISOString() : undefined,
                permissions: k % 5 === 0 ? ['read("any")'] : undefined,
            }));
        }
    }
    for (const r of await Promise.all(jobs)) {
        const p = plain(r);
        assertPresence(p);
        snapshot.set(p.$id, p);
    }
    // change some records that survived earlier kills
    const old = [...snapshot.values()].slice(0, 3);
    for (const rec of old) {
        await sleep(5);
        const u = plain(await P.update({ presenceId: rec.$id, userId: rec.userId, status: `patched ${tag}`, metadata: { patched: tag } }));
        assert.equal(u.$createdAt, rec.$createdAt);
        snapshot.set(u.$id, u);
    }
}

// Every acknowledged record is served unchanged.
async function verifyAll(what) {
    const ids = [...snapshot.keys()];
    const res = await Promise.all(ids.map(get));
    for (let i = 0; i < ids.length; i++) {
        const r = res[i];
        assert.equal(r.status, 200, `${what}: ${show(r)}`);
        assert.deepEqual(r.json, snapshot.get(ids[i]), `${what}: ${ids[i]} changed`);
    }
    const l = plain(await keyP().list({ queries: [loadNodeSdk().Query.limit(5000)] }));
    assert.equal(l.total, snapshot.size, `${what}: list total`);
    for (const p of l.presences) assert.deepEqual(p, snapshot.get(p.$id), `${what}: listed ${p.$id}`);
}

const checkUsers = new Set(); // users written to while a node was down
const pendingAbsent = []; // [userId, presenceId] whose upsert answered 503

// After the restart: each of those users has exactly one record, the acknowledged one, and
// an upsert that answered 503 left nothing behind.
async function checkOnePerUser() {
    const Q = loadNodeSdk().Query;
    for (const u of checkUsers) {
        const l = plain(await keyP().list({ queries: [Q.equal('userId', [u])] }));
        assert.equal(l.total, 1, `records of ${u} after the restart: ${JSON.stringify(l).slice(0, 600)}`);
        assert.deepEqual(l.presences[0], snapshot.get(l.presences[0].$id), `record of ${u}`);
    }
    checkUsers.clear();
    for (const [u, p] of pendingAbsent.splice(0)) {
        const l = plain(await keyP().list({ queries: [Q.equal('userId', [u])] }));
        assert.equal(l.total, 0, `an upsert that answered 503 was written anyway: ${JSON.stringify(l).slice(0, 400)}`);
        assertError(await get(p), 404, 'presence_not_found');
    }
}

// With the supervisor paused (SIGSTOP), a SIGKILLed store node stays down: the window in
// which a user would see the outage is held open, then the supervisor is let go.
async function killHeldDown(nodes) {
    const c = H.cluster;
    const old = nodes.map((n) => c.pids('store', n));
    for (const o of old) assert.equal(o.length, 1, `store pids ${o}`);
    process.kill(c.pid, 'SIGSTOP');
    const owned = new Map(); // node -> ids that answered 503
    try {
        for (const n of nodes) c.kill('store', n, 'SIGKILL');
        // /v1/health turns 503 (the broker noticed)
        assert.equal(await c.waitStatus(503, 5000), 503, '/v1/health while a store node is down');

        const ids = [...snapshot.keys()];
        const res = await Promise.all(ids.map(get));
        const down = [], up = [];
        for (let i = 0; i < ids.length; i++) {
            const r = res[i];
            assert.ok(r.ms < FAST_MS, `slow answer while down (${Math.round(r.ms)} ms): ${show(r)}`);
            if (r.status === 503) {
                assertError(r, 503);
                down.push(ids[i]);
            } else {
                assert.equal(r.status, 200, `while down: ${show(r)}`);
                assert.deepEqual(r.json, snapshot.get(ids[i]), 'a record of a live node changed');
                up.push(ids[i]);
            }
        }
        assert.ok(down.length > 0, `no record answered 503 with store ${nodes} down`);
        if (nodes.length === 1) assert.ok(up.length > 0, 'with one store node down, the other still serves its records');
        else assert.equal(up.length, 0, 'every store node is down');
        owned.set(nodes.join('+'), down);

        // writes to a down node's records fail fast and leave nothing behind
        const victim = snapshot.get(down[0]);
        const w = await api(H.cluster, 'PATCH', `/v1/presences/${victim.$id}`, { key: true, body: { userId: victim.userId, status: 'lost write' } });
        assert.ok(w.ms < FAST_MS, `PATCH took ${w.ms} ms`);
        assertError(w, 503);
        // a list cannot be complete: it fails fast too rather than hiding records
        const l = await api(H.cluster, 'GET', '/v1/presences', { key: true });
        assert.ok(l.ms < FAST_MS, `list took ${l.ms} ms`);
        assertError(l, 503);

        const m = await c.metrics();
        for (const n of nodes) assert.equal(m.get('presenced_store_up', { node: n }), 0, `presenced_store_up{node="${n}"} while down`);

        // One presence per user must hold while a shard is down: upserts by users who have a
        // record, under fresh presenceIds (some owned by the live node), either fail fast or
        // update that same record; and a new user's upsert is all-or-nothing.
        if (nodes.length === 1) {
            for (const id of [...down.slice(0, 3), ...up.slice(0, 3)]) {
                const rec = snapshot.get(id);
                for (let k = 0; k < 3; k++) {
                    const r = await api(H.cluster, 'PUT', `/v1/presences/${uid('fresh')}`, { key: true, body: { userId: rec.userId, status: 'while down' } });
                    assert.ok(r.ms < FAST_MS, `upsert took ${Math.round(r.ms)} ms: ${show(r)}`);
                    if (r.status === 503) { assertError(r, 503); continue; }
                    assert.equal(r.status, 200, show(r));
                    assert.equal(r.json.$id, rec.$id, `a second record for ${rec.userId}: ${show(r)}`);
                    snapshot.set(rec.$id, r.json);
                }
                checkUsers.add(rec.userId);
            }
            for (let k = 0; k < 6; k++) {
                const u = uid('newdown'), p = uid('p');
                const r = await api(H.cluster, 'PUT', `/v1/presences/${p}`, { key: true, body: { userId: u, status: 'new while down' } });
                assert.ok(r.ms < FAST_MS, `upsert took ${Math.round(r.ms)} ms: ${show(r)}`);
                if (r.status === 503) { assertError(r, 503); pendingAbsent.push([u, p]); continue; }
                assert.equal(r.status, 200, show(r));
                snapshot.set(p, r.json);
                checkUsers.add(u);
            }
        }
    } finally {
        process.kill(c.pid, 'SIGCONT');
    }
    for (let i = 0; i < nodes.length; i++) await c.waitRestarted('store', nodes[i], old[i]);
    await c.waitHealthy(20000);
    const m = await c.metrics();
    for (const n of nodes) assert.equal(m.get('presenced_store_up', { node: n }), 1);
    await checkOnePerUser();
    return owned;
}

// Plain SIGKILL with the supervisor running: while the requests race the restart, every
// answer is a fast 503 or the unchanged record; never a hang, a 404 or a 500.
async function killAndHammer(node, times = 1) {
    const c = H.cluster;
    const ids = [...snapshot.keys()];
    let seen503 = 0, seen200 = 0;
    for (let t = 0; t < times; t++) {
        const old = c.pids('store', node);
        assert.equal(old.length, 1);
        c.kill('store', node, 'SIGKILL');
        const until = Date.now() + 300;
        while (Date.now() < until) {
            const res = await Promise.all(ids.slice(0, 40).map(get));
            for (const r of res) {
                assert.ok(r.ms < FAST_MS, `slow (${Math.round(r.ms)} ms): ${show(r)}`);
                if (r.status === 503) { assertError(r, 503); seen503++; continue; }
                assert.equal(r.status, 200, show(r));
                assert.deepEqual(r.json, snapshot.get(r.json.$id));
                seen200++;
            }
        }
        await c.waitRestarted('store', node, old);
    }
    await c.waitHealthy(20000);
    return { seen503, seen200 };
}

// First, while the restart backoff is short: the moment a restarted store node connects is a race
// of its own. A request the broker routes to the node just then (its old connection gone, the new
// one not registered yet) must still be answered at once, 503 or the record, not left to the
// broker's op timeout (4.5 s). Each round reads the supervisor's restart delay from the log and
// sends a request every 2 ms across it. Its two records are deleted after.
it('requests sent while a restarted store node connects are answered at once', {
    timeout: 120000,
}, async (t) => {
    const c = H.cluster;
    const lost = (n) => [...c.log().matchAll(new RegExp(`lost store ${n} \\(signal 9\\); restarting in (\\d+) ms`, 'g'))];
    let slow = [], answers = 0;
    const rec = {};
    for (const node of [1, 2]) {
        const id = idOnNode(c.project, node, () => uid('race'), c.stores);
        rec[node] = plain(await keyP().upsert({ presenceId: id, userId: uid('race'), status: 'racing a restart' }));
    }
    for (const node of [1, 2, 1, 2, 1, 2, 1, 2]) {
        const id = rec[node].$id;
        const old = c.pids('store', node);
        const seen = lost(node).length;
        c.kill('store', node, 'SIGKILL');
        let delay;
        while (delay === undefined) { // 0: restarted at once (supervisor.c)
            const l = lost(node);
            if (l.length > seen) delay = Number(l[l.length - 1][1]);
            else await sleep(1);
        }
        await sleep(Math.max(0, delay - 10));
        const reqs = [];
        for (let k = 0; k < 30; k++) {
            reqs.push(get(id));
            await sleep(2);
        }
        for (const r of await Promise.all(reqs)) {
            answers++;
            if (r.ms >= FAST_MS) slow.push(`store ${node} (restart after ${delay} ms): ${Math.round(r.ms)} ms ${show(r)}`);
            else if (r.status === 503) assertError(r, 503);
            else assert.deepEqual(r.json, rec[node], show(r));
        }
        await c.waitRestarted('store', node, old);
        await c.waitHealthy(20000);
    }
    for (const r of Object.values(rec)) await keyP().delete({ presenceId: r.$id });
    t.diagnostic(`${answers} answers across 8 restarts, ${slow.length} slow`);
    assert.deepEqual(slow, [], 'answers that took the op timeout');
});

it('writes land on both store nodes', async () => {
    await writeSome(24, 'a');
    const m = await H.cluster.waitMetrics((x) => x.sum('presenced_store_records') === snapshot.size);
    assert.equal(m.sum('presenced_store_records'), snapshot.size, 'records per store node add up');
    assert.ok(m.get('presenced_store_records', { node: 1 }) > 0 && m.get('presenced_store_records', { node: 2 }) > 0,
        m.find('presenced_store_records').map((s) => JSON.stringify(s)).join(' '));
    await verifyAll('before any kill');
});

it('store node 1 killed: its records answer 503 fast, then come back unchanged', async () => {
    await killHeldDown([1]);
    await verifyAll('after restart of store 1');
});

it('writes after the restart, then store node 2 killed', async () => {
    await writeSome(12, 'b');
    await killHeldDown([2]);
    await verifyAll('after restart of store 2');
});

it('store node 1 killed three times in a row under load (restart backoff)', async (t) => {
    await writeSome(8, 'c');
    const { seen200, seen503 } = await killAndHammer(1, 3);
    t.diagnostic(`answers while racing the restarts: ${seen503} x 503, ${seen200} x 200`);
    assert.ok(seen200 > 0);
    await verifyAll('after three kills of store 1');
});

it('store node 2 killed with the supervisor running', async (t) => {
    await writeSome(8, 'd');
    const { seen200, seen503 } = await killAndHammer(2, 1);
    t.diagnostic(`answers while racing the restart: ${seen503} x 503, ${seen200} x 200`);
    await verifyAll('after kill of store 2');
});

it('both store nodes killed at once', async () => {
    await writeSome(8, 'e');
    await killHeldDown([1, 2]);
    await verifyAll('after restart of both store nodes');
});

it('deletes acknowledged before a kill stay deleted', async () => {
    const gone = [...snapshot.keys()].slice(-5);
    for (const id of gone) {
        await keyP().delete({ presenceId: id });
        snapshot.delete(id);
    }
    await killHeldDown([1]);
    await killHeldDown([2]);
    for (const id of gone) assertError(await get(id), 404, 'presence_not_found');
    await verifyAll('after deletes and kills');
    const m = await H.cluster.waitMetrics((x) => x.sum('presenced_store_records') === snapshot.size);
    assert.equal(m.sum('presenced_store_records'), snapshot.size, 'records per store node add up');
});

it('SIGTERM stops every child and exits 0', async () => {
    const c = H.cluster;
    assert.equal(c.procs().length, 2 + c.stores + c.gateways, JSON.stringify(c.procs().map((p) => p.args)));
    const r = await c.stop();
    assert.equal(r.forced, false, 'the cluster did not exit within 10 s of SIGTERM');
    assert.deepEqual({ code: r.code, signal: r.signal }, { code: 0, signal: null });
    assert.deepEqual(r.leftovers.map((p) => p.args), [], 'children left running');
    // without --keep-data every segment of its store nodes is gone: table, outbox and rooms
    assert.deepEqual(r.shmLeft, [], 'shared-memory segments left behind');
});
