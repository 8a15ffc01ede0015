'use strict';
// Crash safety under load (issue 12, item 6). Four node-appwrite clients keep upserting,
// updating and deleting their own records on a cluster of 3 store nodes while store nodes are
// SIGKILLed 20 times at random moments. The test keeps a model of what was acknowledged:
//
// - Every record belongs to one lane (a sequential chain of requests of one client), so the
//   writes of an id are ordered. Each write has a number n, and everything it sets (status,
//   metadata with a padding whose length follows n) follows from n alone: a record read back
//   names the write it came from, and a record whose fields do not all belong to one write
//   is half-written.
// - An id's log holds its writes since its state was last known: the acknowledged ones (with
//   the JSON the server answered) and the "unknown" ones (the request failed or timed out: it
//   may or may not have been applied). A read sent while the last acknowledged write was entry
//   i, and answered after entry j was sent, may see any entry from i to j (later ones are in
//   flight or unknown) and nothing older. An acknowledged entry must be seen exactly as the
//   server answered it; a 404 only where that entry is a delete.
// - After an unknown outcome a lane leaves the id alone for longer than the gateways' request
//   timeout, then reads it, checks it against the log the same way and takes what it finds as
//   the new known state (the unknown writes after the one it shows are then known not to have
//   landed, and may not appear later). An update or delete of an id known to exist that answers 404, or a
//   create answered 409, means an acknowledged write was lost.
//
// After each restart (the broker saw the new generation, /v1/health is 200) every id is read
// and checked; at the end the writers stop, every unknown is resolved, and a list of the
// project must show exactly the records the model holds.
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');
const { useCluster, sleep } = require('./lib/cluster');
const { nodeClient, plain, loadNodeSdk } = require('./lib/sdk');
const { api, show } = require('./lib/http');
const { uid } = require('./lib/check');

const STORES = 3;
const KILLS = 20;
const CLIENTS = 4;
const LANES = 4;          // per client
const IDS_PER_LANE = 10;
const QUARANTINE_MS = 6000; // > --request-timeout (5000): an unknown write cannot land later

const H = useCluster(test, { label: 'crashload', stores: STORES, gateways: 2 });

const rnd = (n) => Math.floor(Math.random() * n);
let nextN = 1;

// What write n sets. Padding of varying length: replaces move records between block sizes.
const payload = (rec, n) => ({
    status: `v${n}`,
    metadata: { n, lane: rec.lane, pad: 'abcdefghij'.repeat(n % 90), tail: `end-${n}` },
});

// rec: { id, userId, lane, log: [{ n, present, json?, outcome: 'ok'|'unknown'|'pending' }],
//        ack: index of the last acknowledged entry, busyUntil }
const recs = [];
const violations = [];
const stats = { ok: 0, unknown: 0, codes: {}, reads: 0, resolved: 0 };

function fail(msg) {
    if (violations.length < 50) violations.push(msg);
}

// Does the answer r (GET) fit entry e of rec?
function fits(rec, e, r) {
    if (!e.present) return r.status === 404;
    if (r.status !== 200) return false;
    if (e.outcome === 'ok') {
        try { assert.deepEqual(r.json, e.json); return true; } catch { return false; }
    }
    const want = payload(rec, e.n);
    const j = r.json;
    try {
        assert.equal(j.$id, rec.id);
        assert.equal(j.userId, rec.userId);
        assert.equal(j.status, want.status);
        assert.deepEqual(j.metadata, want.metadata);
        return true;
    } catch { return false; }
}

// A read r sent when rec.ack was `from` and answered when the log had `to` entries: the entry it
// shows (index), or -1 (a violation, described in rec's terms).
function match(rec, from, to, r, what) {
    for (let i = to - 1; i >= from; i--) if (!rec.log[i].dead && fits(rec, rec.log[i], r)) return i;
    const seen = r.status === 200 ? `status ${r.json && r.json.status}, metadata.n ${r.json && r.json.metadata && r.json.metadata.n}` : `${r.status}`;
    const older = rec.log.slice(0, from).findIndex((e) => fits(rec, e, r));
    const allowed = rec.log.slice(from, to).filter((e) => !e.dead).map((e) => `${e.present ? 'v' + e.n : 'deleted(' + e.n + ')'}:${e.outcome}`).join(', ');
    fail(`${what}: ${rec.id} read ${seen}; allowed [${allowed}]${older >= 0 ? ` (an older write, superseded by an acknowledged one: entry ${older})` : ''}: ${show(r).slice(0, 400)}`);
    return -1;
}

const get = (c, id) => api(c, 'GET', `/v1/presences/${id}`, { key: true, timeoutMs: 15000 });

// Reads rec until it is served (a 503 while its node is down), checks it against the log and
// makes what it finds the known state.
async function resolve(c, rec, what) {
    for (let k = 0; ; k++) {
        const from = rec.ack;
        let r;
        try { r = await get(c, rec.id); } catch (e) { r = { status: 0, text: String(e), method: 'GET', path: rec.id }; }
        if (r.status === 503 || r.status === 0) {
            if (k > 200) { fail(`${what}: ${rec.id} still unreadable: ${show(r)}`); return; }
            await sleep(100);
            continue;
        }
        const to = rec.log.length;
        let i = match(rec, from, to, r, what);
        if (i < 0) { // reported; go on from what is there
            rec.log.push({ n: r.json?.metadata?.n ?? 0, present: r.status === 200, outcome: 'ok' });
            i = rec.log.length - 1;
        }
        // What it shows is known now, as if acknowledged; the unknown writes after it never
        // landed (and cannot any more: quarantined past the request timeout).
        const e = rec.log[i];
        e.outcome = 'ok';
        e.json = r.status === 200 ? r.json : undefined;
        for (let j = i + 1; j < to; j++) if (rec.log[j].outcome === 'unknown') rec.log[j].dead = true;
        rec.ack = i;
        stats.resolved++;
        return;
    }
}

// One write to rec by client P: a create when it is absent, else an update, a replace or a delete.
async function writeOnce(P, rec) {
    const last = rec.log[rec.ack];
    const n = nextN++;
    const roll = rnd(100);
    const kind = !last.present ? 'create' : roll < 45 ? 'update' : roll < 80 ? 'upsert' : 'delete';
    const e = { n, present: kind !== 'delete', outcome: 'pending' };
    rec.log.push(e);
    const p = payload(rec, n);
    try {
        let res;
        if (kind === 'update') res = await P.update({ presenceId: rec.id, userId: rec.userId, ...p });
        else if (kind === 'delete') res = await P.delete({ presenceId: rec.id });
        else res = await P.upsert({ presenceId: rec.id, userId: rec.userId, ...p });
        if (kind !== 'delete') {
            const j = plain(res);
            if (j.status !== p.status || j.metadata?.n !== n) fail(`${kind} ${rec.id} v${n} answered ${JSON.stringify(j).slice(0, 300)}`);
            e.json = j;
        }
        e.outcome = 'ok';
        rec.ack = rec.log.indexOf(e);
        stats.ok++;
    } catch (err) {
        const code = err.code ?? 0;
        stats.codes[code] = (stats.codes[code] || 0) + 1;
        if (code === 404 || code === 409) // the model knows the record exists (or is its user's only one)
            fail(`${kind} ${rec.id} v${n} of a record known as ${last.present ? 'v' + last.n : 'absent'}: ${code} ${err.type} ${err.message}`);
        else if (code !== 503 && code !== 0 && code !== undefined)
            fail(`${kind} ${rec.id} v${n}: unexpected ${code} ${err.type} ${err.message}`);
        e.outcome = 'unknown';
        stats.unknown++;
        rec.busyUntil = Date.now() + QUARANTINE_MS;
    }
}

async function lane(c, P, mine, stop) {
    while (!stop.now) {
        const rec = mine[rnd(mine.length)];
        if (rec.busy || Date.now() < rec.busyUntil) { await sleep(5); continue; }
        rec.busy = true;
        try {
            if (rec.busyUntil) {
                rec.busyUntil = 0;
                await resolve(c, rec, 'lane, after an unknown write');
            } else {
                await writeOnce(P, rec);
            }
        } finally {
            rec.busy = false;
        }
        await sleep(rnd(3));
    }
}

// Every id read and checked against its log (the writers keep going meanwhile).
async function verifyAll(c, what) {
    const todo = recs.slice();
    let unreadable = [];
    for (let round = 0; todo.length && round < 60; round++) {
        unreadable = [];
        await Promise.all(todo.splice(0).map(async (rec) => {
            const from = rec.ack;
            let r;
            try { r = await get(c, rec.id); } catch (e) { r = { status: 0, text: String(e), method: 'GET', path: rec.id }; }
            stats.reads++;
            if (r.status === 503 || r.status === 0) { unreadable.push(rec); return; }
            match(rec, from, rec.log.length, r, what);
        }));
        if (unreadable.length) { todo.push(...unreadable); await sleep(100); }
    }
    for (const rec of unreadable) fail(`${what}: ${rec.id} still 503 six seconds after the restart`);
}

// Waits for the broker's "store node n is up" line after log offset `off` (the new process).
async function waitUp(c, n, off, timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    const re = new RegExp(`store node ${n} is up \\(generation`);
    while (Date.now() < deadline) {
        if (re.test(c.log().slice(off))) return;
        await sleep(20);
    }
    throw new Error(`store node ${n} was not back within ${timeoutMs} ms of its SIGKILL`);
}

it('20 SIGKILLs of store nodes under continuous writes: every acknowledged write survives, nothing half-written', { timeout: 240000 }, async (t) => {
    const c = H.cluster;
    const clients = [];
    for (let k = 0; k < CLIENTS; k++) clients.push(nodeClient(c, {}).presences);
    const lanes = [];
    for (let k = 0; k < CLIENTS * LANES; k++) {
        const mine = [];
        for (let i = 0; i < IDS_PER_LANE; i++) {
            const rec = { id: uid(`cl${k}`), userId: uid(`clu${k}`), lane: k, log: [{ n: 0, present: false, outcome: 'ok' }], ack: 0, busyUntil: 0 };
            mine.push(rec);
            recs.push(rec);
        }
        lanes.push(mine);
    }
    const stop = { now: false };
    const running = lanes.map((mine, k) => lane(c, clients[k % CLIENTS], mine, stop));
    const t0 = Date.now();
    const downMs = [];
    try {
        await sleep(1500);
        for (let k = 0; k < KILLS; k++) {
            await sleep(200 + rnd(1800));
            const node = 1 + rnd(STORES);
            const old = c.pids('store', node);
            assert.equal(old.length, 1, `store ${node} pids ${old}`);
            const off = c.log().length;
            const tk = Date.now();
            process.kill(old[0], 'SIGKILL');
            await waitUp(c, node, off);
            const up = Date.now() - tk;
            await c.waitHealthy(20000);
            downMs.push({ ms: Date.now() - tk, up, kill: k + 1, node });
            await verifyAll(c, `after kill ${k + 1} (store ${node})`);
            assert.deepEqual(violations, [], `after kill ${k + 1} of store ${node}`);
        }
    } finally {
        stop.now = true;
        await Promise.all(running);
    }
    // Quiet now: every unknown settles, then the records are exactly the model's.
    await sleep(QUARANTINE_MS);
    for (const rec of recs) await resolve(c, rec, 'at the end');
    await verifyAll(c, 'at the end');
    const N = loadNodeSdk();
    const l = plain(await nodeClient(c, {}).presences.list({ queries: [N.Query.limit(5000)] }));
    const listed = new Map(l.presences.map((p) => [p.$id, p]));
    const present = recs.filter((r) => r.log[r.ack].present);
    for (const rec of recs) {
        const e = rec.log[rec.ack];
        if (!e.present) { if (listed.has(rec.id)) fail(`listed after its delete: ${rec.id}`); continue; }
        if (!listed.has(rec.id)) fail(`missing from the list: ${rec.id} (v${e.n})`);
        else if (!fits(rec, e, { status: 200, json: listed.get(rec.id) })) fail(`listed differently: ${rec.id}: ${JSON.stringify(listed.get(rec.id)).slice(0, 300)} vs ${JSON.stringify(e.json).slice(0, 300)}`);
    }
    assert.equal(l.total, present.length, 'list total against the model');
    const m = await c.waitMetrics((x) => x.sum('presenced_store_records') === present.length);
    assert.equal(m.sum('presenced_store_records'), present.length, 'store record counts against the model');
    downMs.sort((a, b) => a.ms - b.ms);
    const slow = downMs[downMs.length - 1];
    t.diagnostic(`${KILLS} kills in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${stats.ok} writes acknowledged, ${stats.unknown} unknown ` +
        `(${JSON.stringify(stats.codes)}), ${stats.reads} checked reads, ${stats.resolved} unknowns resolved; ` +
        `kill to healthy: median ${downMs[downMs.length >> 1].ms} ms, max ${slow.ms} ms (kill ${slow.kill}, store ${slow.node}, up again after ${slow.up} ms); ` +
        `${present.length} records at the end; ${(c.log().match(/rebuilding indexes/g) || []).length} re-attaches found a segment to rebuild`);
    assert.deepEqual(violations, []);
    assert.ok(stats.ok > 500, `too few acknowledged writes to mean anything: ${stats.ok}`);
});
