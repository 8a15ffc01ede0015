'use strict';
// Expiry through a real cluster (2 gateways, broker, 2 store nodes, reaper): records vanish from
// reads at `expiresAt`, and the reaper turns every expiry into exactly one realtime `delete`
// event, promptly, in bulk, and across reaper and store-node crashes. Writes go through the
// official SDKs (node-appwrite with the API key, the web SDK with a JWT); one web SDK `Realtime`
// subscriber sees the single-record story; raw `ws` watchers (one on each gateway) count the bulk.
const test = require('node:test');
const { describe, it } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { execFile } = require('node:child_process');

const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded: it takes globalThis.WebSocket
const { useCluster, sleep } = require('./lib/cluster');
const { webClient, nodeClient, mintJwt, plain } = require('./lib/sdk');
const { api } = require('./lib/http');
const { assertPresence, assertList, assertNear, rejectsWith, assertError, uid, DATE_RE } = require('./lib/check');

// A second project whose default TTL is 2 s (the per-project setting of the projects file).
const TTL_PROJECT = 'e2e-ttl';
const TTL_SECRET = 'jwt_' + crypto.randomBytes(24).toString('hex');
const TTL_SECONDS = 2;

// Every SDK Realtime of the file, disconnected before the cluster stops (their heartbeats keep
// Node alive); hooks run in the order they are registered.
const realtimes = [];
async function disconnectAll() {
    for (const r of realtimes.splice(0)) { try { await r.disconnect(); } catch {} }
}
test.afterEach(disconnectAll);
test.after(disconnectAll);
const H = useCluster(test, {
    label: 'expiry',
    stores: 2,
    gateways: 2,
    // The watchers below take thousands of events in a burst on a loaded 2-core machine: give
    // them room (the default 1 MiB queue is for browsers), so the counts measure the server.
    args: ['--ws-max-queue', String(32 << 20)],
    config: { projects: [{ id: TTL_PROJECT, keys: [], jwt: [{ alg: 'HS256', secret: TTL_SECRET }], default_ttl: TTL_SECONDS }] },
});
const C = () => H.cluster;

const MIN = 60e3;
const DAY = 24 * 60 * MIN;
const keyP = () => nodeClient(C(), {}).presences;
const READ_ANY = ['read("any")'];
const iso = (ms) => new Date(ms).toISOString();
const sleepUntil = (ms) => sleep(Math.max(0, ms - Date.now()));
const isDel = (id) => (e) => e.events && e.events[0] === `presences.${id}.delete`;

function sdkRealtime(opts) {
    const { W, client } = webClient(C(), opts);
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    return { W, rt };
}

// An event exactly as §6.4 says (the realtime suite checks the same).
function assertDeleteEvent(e, id, payload) {
    assert.deepEqual(e.events, [`presences.${id}.delete`, 'presences.*.delete', `presences.${id}`, 'presences.*'], 'events');
    assert.deepEqual(e.channels, ['presences', `presences.${id}`, 'presences.delete', `presences.${id}.delete`], 'channels');
    assert.match(e.timestamp, DATE_RE, 'timestamp');
    if (payload) assert.deepEqual(e.payload, payload, 'payload: the record as it was before the delete');
    else assertPresence(e.payload);
}

// --- the shard owner of a record (rendezvous hashing, core/pd_util.c), to aim at one store -----

const { shardOwner: ownerOf } = require('./lib/shard');

// --- delete watchers: one raw guest socket per gateway, subscribed to presences.delete ----------
// Every delete event is kept per record id with its arrival time (taken when the frame arrives).

class DeleteWatch {
    constructor(client, gateway) {
        this.client = client;
        this.gateway = gateway;
        this.byId = new Map();
        this.total = 0;
        // a heartbeat, as the SDK sends one (the gateway closes sockets idle for 90 s)
        this.heartbeat = setInterval(() => { try { client.send({ type: 'ping' }); } catch {} }, 20000);
        this.heartbeat.unref();
        client.ws.on('message', (d) => {
            const t = Date.now();
            let m;
            try { m = JSON.parse(d.toString()); } catch { return; }
            if (m.type !== 'event' || !m.data || !Array.isArray(m.data.events)) return;
            if (!/^presences\.[^.]+\.delete$/.test(m.data.events[0])) return;
            const id = m.data.payload && m.data.payload.$id;
            let a = this.byId.get(id);
            if (!a) this.byId.set(id, (a = []));
            a.push({ t, e: m.data });
            this.total++;
        });
    }
    count(id) { const a = this.byId.get(id); return a ? a.length : 0; }
    first(id) { const a = this.byId.get(id); return a ? a[0] : undefined; }
    alive() { return !this.client.closeInfo; }
}

let watches = [];
async function openWatches() {
    const gws = C().pids('gateway');
    assert.equal(gws.length, 2, 'two gateway processes');
    for (const pid of gws) {
        const c = await R.rawConnectTo(C(), pid, {});
        await R.rawSubscribe(c, [{ subscriptionId: 'deletes', channels: ['presences.delete'] }]);
        watches.push(new DeleteWatch(c, pid));
    }
}
function closeWatches() { for (const w of watches) { clearInterval(w.heartbeat); w.client.close(); } watches = []; }

// Waits until every id has a delete on every watcher (or the deadline), then `settleMs` more for
// duplicates; returns per-watcher {missing, dups} and the arrival lateness of each first delete
// (arrival - expiresAt, ms; `exp` maps id -> expiresAt ms).
async function collectDeletes(ids, exp, deadline, settleMs = 1500) {
    for (;;) {
        const done = watches.every((w) => ids.every((id) => w.count(id) > 0));
        if (done || Date.now() > deadline) break;
        await sleep(50);
    }
    const allAt = Date.now();
    await sleep(settleMs);
    const res = watches.map((w) => {
        const missing = ids.filter((id) => w.count(id) === 0);
        const dups = ids.filter((id) => w.count(id) > 1);
        const late = ids.filter((id) => w.count(id) > 0).map((id) => w.first(id).t - exp.get(id)).sort((a, b) => a - b);
        const last = ids.reduce((m, id) => (w.count(id) ? Math.max(m, w.first(id).t) : m), 0);
        return { gateway: w.gateway, alive: w.alive(), missing, dups, late, last };
    });
    return { res, allAt };
}

function assertExactlyOnce({ res }, n, what) {
    for (const r of res) {
        assert.ok(r.alive, `${what}: the watcher on gateway ${r.gateway} was disconnected (${JSON.stringify(watches.find((w) => w.gateway === r.gateway).client.closeInfo)})`);
        assert.equal(r.missing.length, 0, `${what}: gateway ${r.gateway} got no delete event for ${r.missing.length} of ${n} records, e.g. ${r.missing.slice(0, 5)}`);
        assert.equal(r.dups.length, 0, `${what}: gateway ${r.gateway} got more than one delete event for ${r.dups.length} records, e.g. ${r.dups.slice(0, 5).map((id) => `${id} x${watches.find((w) => w.gateway === r.gateway).count(id)}`)}`);
    }
}

// Cluster.waitRestarted without blocking the event loop (it runs `ps` synchronously every 25 ms,
// which starves the watchers while thousands of events arrive).
function psAsync() {
    return new Promise((resolve, reject) => execFile('ps', ['-eo', 'pid=,ppid=,args='], (e, out) => (e ? reject(e) : resolve(out))));
}
async function pidsAsync(role, node) {
    const c = C();
    const res = [];
    for (const line of (await psAsync()).split('\n')) {
        const m = /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(line);
        if (!m || /<defunct>/.test(m[3])) continue;
        const pid = Number(m[1]), ppid = Number(m[2]), tok = m[3].split(/\s+/);
        const ci = tok.indexOf('--cluster');
        const mine = (ci >= 0 && tok[ci + 1] === c.name) || ppid === c.pid;
        if (!mine || pid === c.pid || tok[1] !== role) continue;
        const ni = tok.indexOf('--node');
        if (node !== undefined && (ni < 0 || Number(tok[ni + 1]) !== node)) continue;
        res.push(pid);
    }
    return res;
}
async function waitRestarted(role, node, oldPids, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
        const now = await pidsAsync(role, node);
        if (now.length && now.every((p) => !oldPids.includes(p))) return now;
        await sleep(20);
    }
    throw new Error(`${role} ${node ?? ''} was not restarted within ${timeoutMs} ms (old pids ${oldPids})`);
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
const stats = (sorted) => `p50 ${pct(sorted, 50)} ms, p99 ${pct(sorted, 99)} ms, max ${sorted[sorted.length - 1]} ms`;

// Runs jobs (functions returning promises) with at most `conc` in flight.
async function pool(jobs, conc) {
    let next = 0;
    const out = new Array(jobs.length);
    async function worker() {
        while (next < jobs.length) {
            const i = next++;
            out[i] = await jobs[i]();
        }
    }
    await Promise.all(Array.from({ length: Math.min(conc, jobs.length) }, worker));
    return out;
}

const WRITE_CONC = 64;
let writeRate = 300; // records/s, measured by the latest bulk write (places the next window)

// Upserts records with the API key (node-appwrite), spread user ids, readable by anyone.
// expOf(i) -> expiresAt ms. Refuses to send a record whose deadline is less than 200 ms away
// (the window would not be met: the machine is slower than the calibration said).
async function bulkUpsert(ids, expOf, tag) {
    const P = keyP();
    const t0 = Date.now();
    await pool(ids.map((id, i) => async () => {
        const e = expOf(i);
        if (e - Date.now() < 200) throw new Error(`${tag}: writing is too slow for the expiry window (record ${i} of ${ids.length} due in ${e - Date.now()} ms)`);
        const r = await P.upsert({ presenceId: id, userId: `u${id}`, status: tag, expiresAt: iso(e), permissions: READ_ANY, metadata: { i } });
        assert.equal(r.expiresAt, iso(e).replace('Z', '+00:00'));
    }), WRITE_CONC);
    const ms = Date.now() - t0;
    const rate = (ids.length / Math.max(ms, 1)) * 1000;
    if (ids.length >= 200) writeRate = rate; // the latest measure places the next window
    return { ms, rate };
}

// Measures the write rate now (the machine may be shared): 300 records that live 10 minutes.
async function calibrate() {
    const ids = Array.from({ length: 300 }, () => uid('c'));
    const far = Date.now() + 600e3;
    return bulkUpsert(ids, () => far, 'calibration');
}

// Ids, and a window start far enough ahead that n writes finish before it.
function planWindow(n, prefix) {
    const ids = Array.from({ length: n }, (_, i) => `${prefix}${i.toString(36)}${crypto.randomBytes(3).toString('hex')}`);
    const lead = Math.min(60000, Math.max(3000, Math.ceil((n / writeRate) * 1000 * 1.5) + 2000));
    return { ids, lead };
}

async function reaperMetrics() {
    const m = await C().metrics();
    const buckets = m.find('presenced_reaper_lateness_seconds_bucket');
    return {
        m,
        deadlines: m.get('presenced_reaper_deadlines'),
        expired: m.get('presenced_reaper_expired_total'),
        resyncs: m.get('presenced_reaper_resyncs_total'),
        buckets: new Map(buckets.map((b) => [b.labels.le, b.value])),
        count: m.get('presenced_reaper_lateness_seconds_count'),
    };
}

// =============================================================================================

describe('expiry', () => {
    test.before(openWatches, { timeout: 30000 });
    test.after(closeWatches);

    describe('a single record', () => {
        it('expiresAt 2 s ahead: served until then, 404 and gone from list right after, one delete event within 1 s carrying the record', async (t) => {
            const u = uid('u');
            const { W, rt } = sdkRealtime({ userId: u });
            const got = [];
            await R.sdkSubscribe(rt, W.Channel.presences(), (e) => got.push({ t: Date.now(), e: plain(e) }));
            const web = webClient(C(), { userId: u }).presences;
            const id = uid('p');
            const exp = Date.now() + 2000;
            const created = plain(await web.upsert({ presenceId: id, status: 'online', expiresAt: iso(exp), metadata: { room: 'a' } }));
            assertPresence(created, { $id: id, userId: u, expiresAt: iso(exp).replace('Z', '+00:00') });

            // still there before the instant (a check that came back after it proves nothing)
            await sleepUntil(exp - 1000);
            const [g0, l0] = await Promise.all([web.get({ presenceId: id }), keyP().list({ queries: [W.Query.equal('userId', [u])] })]);
            const back = Date.now();
            if (back < exp) {
                assert.deepEqual(plain(g0), created);
                assert.deepEqual(assertList(plain(l0)).presences.map((p) => p.$id), [id], 'listed before expiresAt');
            } else {
                t.diagnostic(`the machine is slow: the before-expiry reads came back ${back - exp} ms after expiresAt; not checked`);
            }

            // right after the instant: get (user and key) 404, update 404, list skips it
            await sleepUntil(exp + 1);
            const sent = Date.now() - exp;
            const [g1, g2, up, l2] = await Promise.allSettled([
                web.get({ presenceId: id }),
                keyP().get({ presenceId: id }),
                web.update({ presenceId: id, status: 'late' }),
                keyP().list({ queries: [W.Query.equal('userId', [u])] }),
            ]);
            for (const [r, what] of [[g1, 'web get'], [g2, 'key get'], [up, 'web update']]) {
                assert.equal(r.status, 'rejected', `${what} ${sent} ms after expiresAt: ${JSON.stringify(r.value)}`);
                assert.equal(r.reason.code, 404, `${what}: ${r.reason.message}`);
                assert.equal(r.reason.type, 'presence_not_found', what);
            }
            assert.equal(l2.status, 'fulfilled');
            const l = assertList(plain(l2.value));
            assert.equal(l.total, 0, `list ${sent} ms after expiresAt still shows ${JSON.stringify(l).slice(0, 300)}`);

            // exactly one delete, within 1 s, with the record as it was
            const until = await R.until(() => got.find((x) => isDel(id)(x.e)), 3000, `the delete event; got ${JSON.stringify(got.map((x) => x.e.events[0]))}`);
            const lateness = until.t - exp;
            t.diagnostic(`delete event ${lateness} ms after expiresAt (requests sent ${sent} ms after)`);
            assert.ok(lateness >= -5, `delete event ${-lateness} ms BEFORE expiresAt`);
            assert.ok(lateness <= 1000, `delete event ${lateness} ms after expiresAt (> 1 s)`);
            assertDeleteEvent(until.e, id, created);
            assert.ok(Date.parse(until.e.timestamp) >= exp - 5, `event timestamp ${until.e.timestamp} before expiresAt ${iso(exp)}`);
            await sleep(1000);
            assert.deepEqual(got.filter((x) => x.e.payload.$id === id).map((x) => x.e.events[0]),
                [`presences.${id}.upsert`, `presences.${id}.delete`], 'one upsert, one delete');
        });

        it('reads hide an expired record even while the reaper is stopped; the delete follows once it runs', async (t) => {
            const pids = C().pids('reaper');
            assert.equal(pids.length, 1, 'one reaper process');
            const id = uid('p');
            const u = uid('u');
            const exp = Date.now() + 1000;
            const { N, presences: P } = nodeClient(C(), {});
            await P.upsert({ presenceId: id, userId: u, status: 'x', expiresAt: iso(exp), permissions: READ_ANY });
            process.kill(pids[0], 'SIGSTOP');
            let resumed;
            try {
                await sleepUntil(exp + 300);
                await rejectsWith(P.get({ presenceId: id }), 404, 'presence_not_found', 'get');
                await rejectsWith(P.update({ presenceId: id, userId: u, status: 'y' }), 404, 'presence_not_found', 'update');
                const l = assertList(plain(await P.list({ queries: [N.Query.equal('userId', [u])] })));
                assert.equal(l.total, 0, `list skips it: ${JSON.stringify(l).slice(0, 300)}`);
                const early = watches.map((w) => w.count(id));
                t.diagnostic(`delete events while the reaper was stopped: ${early}`);
                resumed = Date.now();
            } finally {
                process.kill(pids[0], 'SIGCONT');
            }
            await R.until(() => watches.every((w) => w.count(id) > 0), 5000, 'the delete after SIGCONT');
            t.diagnostic(`delete ${watches[0].first(id).t - resumed} ms after SIGCONT`);
            await sleep(500);
            assert.deepEqual(watches.map((w) => w.count(id)), [1, 1], 'exactly one delete on each gateway');
            assert.deepEqual(C().pids('reaper'), pids, 'the reaper was not restarted');
        });
    });

    describe('refresh, manual delete', () => {
        it('a record upserted every second with a 2 s expiry is never deleted over 10 s; expires once after the last refresh', async (t) => {
            const P = keyP();
            const id = uid('p');
            const u = uid('u');
            const t0 = Date.now();
            let first, last, exp;
            for (let k = 0; k < 11; k++) {
                await sleepUntil(t0 + k * 1000);
                exp = Date.now() + 2000;
                last = plain(await P.upsert({ presenceId: id, userId: u, status: `beat ${k}`, expiresAt: iso(exp), permissions: READ_ANY }));
                if (!first) first = last;
                assert.equal(last.$createdAt, first.$createdAt, `beat ${k}: the record was recreated (it had been deleted)`);
                assert.deepEqual(watches.map((w) => w.count(id)), [0, 0], `beat ${k}: a delete event for a refreshed record`);
            }
            assert.equal(last.status, 'beat 10');
            await sleepUntil(exp - 300);
            assert.deepEqual(watches.map((w) => w.count(id)), [0, 0], 'no delete before the last expiresAt');
            await R.until(() => watches.every((w) => w.count(id) > 0), exp + 3000 - Date.now(), 'the delete after the last beat');
            const lateness = watches.map((w) => w.first(id).t - exp);
            t.diagnostic(`delete ${lateness} ms after the last expiresAt`);
            for (const ms of lateness) assert.ok(ms >= -5 && ms <= 1000, `delete ${ms} ms after expiresAt`);
            assertDeleteEvent(watches[0].first(id).e, id, last);
            await sleep(500);
            assert.deepEqual(watches.map((w) => w.count(id)), [1, 1]);
        });

        it('a record deleted by hand before expiresAt produces one delete (the manual one), none at expiresAt; the reaper deletes nothing', async () => {
            const u = uid('u');
            const web = webClient(C(), { userId: u }).presences;
            await sleep(300); // the reaper renders its metrics every 250 ms: let earlier expiries show
            const before = await reaperMetrics();
            const id = uid('p');
            const exp = Date.now() + 3000;
            const rec = plain(await web.upsert({ presenceId: id, status: 'x', expiresAt: iso(exp), permissions: READ_ANY.concat([`delete("user:${u}")`]) }));
            await R.until(async () => (await reaperMetrics()).deadlines >= before.deadlines + 1, 3000, 'the reaper to learn the deadline');
            await sleep(200);
            await web.delete({ presenceId: id });
            const tDel = Date.now();
            await R.until(() => watches.every((w) => w.count(id) > 0), 3000, 'the manual delete event');
            for (const w of watches) assert.ok(w.first(id).t < exp, 'the manual delete arrived before expiresAt');
            assertDeleteEvent(watches[0].first(id).e, id, rec);
            await sleepUntil(exp + 1500);
            assert.deepEqual(watches.map((w) => w.count(id)), [1, 1], 'no second delete after expiresAt');
            const after = await reaperMetrics();
            assert.equal(after.expired, before.expired, 'presenced_reaper_expired_total moved for a record deleted by hand');
            assert.ok(after.deadlines <= before.deadlines, `the reaper still holds the deadline (${before.deadlines} -> ${after.deadlines})`);
            assert.ok(tDel < exp);
        });

        it('deleted by hand, then written again under the same id with a later expiry: the old deadline does not delete the new record', async () => {
            const P = keyP();
            const id = uid('p');
            const u = uid('u');
            const exp1 = Date.now() + 1000;
            await P.upsert({ presenceId: id, userId: u, status: 'one', expiresAt: iso(exp1), permissions: READ_ANY });
            await P.delete({ presenceId: id });
            const exp2 = Date.now() + 2500;
            const again = plain(await P.upsert({ presenceId: id, userId: u, status: 'two', expiresAt: iso(exp2), permissions: READ_ANY }));
            await sleepUntil(exp1 + 500);
            assert.equal((await P.get({ presenceId: id })).status, 'two', 'the new record survives the old deadline');
            assert.deepEqual(watches.map((w) => w.count(id)), [1, 1], 'only the manual delete so far');
            await R.until(() => watches.every((w) => w.count(id) > 1), exp2 + 3000 - Date.now(), 'the expiry of the new record');
            for (const w of watches) {
                const ms = w.byId.get(id)[1].t - exp2;
                assert.ok(ms >= -5 && ms <= 1000, `delete ${ms} ms after the new expiresAt`);
            }
            assertDeleteEvent(watches[0].byId.get(id)[1].e, id, again);
            await sleep(500);
            assert.deepEqual(watches.map((w) => w.count(id)), [2, 2]);
        });
    });

    describe('default TTL and the 30-day cap', () => {
        it('an upsert without expiresAt gets now + 15 min (node-appwrite and web SDK)', async () => {
            const t0 = Date.now();
            const a = plain(await keyP().upsert({ presenceId: uid('p'), userId: uid('u'), status: 'x' }));
            assertNear(a.expiresAt, t0 + 15 * MIN, 5000, 'node-appwrite: expiresAt');
            const u = uid('u');
            const b = plain(await webClient(C(), { userId: u }).presences.upsert({ presenceId: uid('p'), status: 'x' }));
            assertNear(b.expiresAt, t0 + 15 * MIN, 5000, 'web: expiresAt');
        });

        it('30 days + 1 minute ahead is refused (upsert and update); 29 days and 30 days - 10 s are accepted; the past is refused', async () => {
            const P = keyP();
            const id = uid('p');
            const u = uid('u');
            await rejectsWith(P.upsert({ presenceId: id, userId: u, status: 'x', expiresAt: iso(Date.now() + 30 * DAY + MIN) }), 400, 'general_argument_invalid', 'upsert 30 d + 1 min');
            const raw = await api(C(), 'PUT', `/v1/presences/${id}`, { key: true, body: { userId: u, status: 'x', expiresAt: iso(Date.now() + 30 * DAY + MIN) } });
            assertError(raw, 400, 'general_argument_invalid');
            await rejectsWith(P.get({ presenceId: id }), 404, 'presence_not_found', 'nothing was written');
            const e29 = Date.now() + 29 * DAY;
            const ok = plain(await P.upsert({ presenceId: id, userId: u, status: 'x', expiresAt: iso(e29) }));
            assert.equal(ok.expiresAt, iso(e29).replace('Z', '+00:00'));
            await rejectsWith(P.update({ presenceId: id, userId: u, expiresAt: iso(Date.now() + 30 * DAY + MIN) }), 400, 'general_argument_invalid', 'update 30 d + 1 min');
            const e30 = Date.now() + 30 * DAY - 10e3;
            const ok2 = plain(await P.update({ presenceId: id, userId: u, expiresAt: iso(e30) }));
            assert.equal(ok2.expiresAt, iso(e30).replace('Z', '+00:00'));
            await rejectsWith(P.upsert({ presenceId: id, userId: u, status: 'x', expiresAt: iso(Date.now() - 1000) }), 400, 'general_argument_invalid', 'upsert in the past');
            assert.equal((await P.get({ presenceId: id })).expiresAt, ok2.expiresAt, 'the refused writes changed nothing');
        });

        it('the per-project default_ttl (2 s here) applies when expiresAt is omitted, also resetting an explicit one, and the record expires with one event', async (t) => {
            const u = uid('u');
            const jwt = mintJwt(TTL_SECRET, { userId: u });
            const { W, rt } = sdkRealtime({ project: TTL_PROJECT, jwt });
            const got = [];
            await R.sdkSubscribe(rt, W.Channel.presences(), (e) => got.push({ t: Date.now(), e: plain(e) }));
            const web = webClient(C(), { project: TTL_PROJECT, jwt }).presences;
            const id = uid('p');
            await web.upsert({ presenceId: id, status: 'x', expiresAt: iso(Date.now() + 3600e3) });
            const t0 = Date.now();
            const rec = plain(await web.upsert({ presenceId: id, status: 'y' })); // replace: expiresAt back to the default
            assertNear(rec.expiresAt, t0 + TTL_SECONDS * 1000, 1000, 'expiresAt = now + default_ttl');
            const exp = Date.parse(rec.expiresAt);
            const del = await R.until(() => got.find((x) => isDel(id)(x.e)), exp + 3000 - Date.now(), 'the delete event');
            t.diagnostic(`delete ${del.t - exp} ms after expiresAt`);
            assert.ok(del.t - exp >= -5 && del.t - exp <= 1000, `delete ${del.t - exp} ms after expiresAt`);
            assertDeleteEvent(del.e, id, rec);
            await rejectsWith(web.get({ presenceId: id }), 404, 'presence_not_found');
            await sleep(500);
            assert.equal(got.filter((x) => isDel(id)(x.e)).length, 1);
            // the main project keeps its 15 minutes
            const main = plain(await keyP().upsert({ presenceId: uid('p'), userId: uid('u'), status: 'x' }));
            assertNear(main.expiresAt, Date.now() + 15 * MIN, 5000, 'main project default');
        });
    });

    describe('volume', () => {
        it('metrics: the deadlines gauge and the expired counter move; the lateness histogram is there', async (t) => {
            // also measures the write rate, to place the bulk windows below
            const n = 600;
            await sleep(600); // the reaper renders its metrics every 250 ms: let earlier writes show
            const before = await reaperMetrics();
            for (const le of ['0.005', '0.05', '1', '+Inf']) assert.ok(before.buckets.has(le), `lateness bucket le="${le}" missing:\n${before.m.text}`);
            assert.equal(typeof before.resyncs, 'number', 'presenced_reaper_resyncs_total');
            const ids = Array.from({ length: n }, (_, i) => uid(`m${i}`));
            const t0 = Date.now();
            const farExp = t0 + 60e3; // far enough for any machine; the window is set after
            const half = ids.length / 2;
            // the first half expires in 4 s, the second half 10 minutes from now (stay as deadlines)
            const exp = new Map();
            ids.forEach((id, i) => exp.set(id, i < half ? farExp : t0 + 600e3));
            const w = await bulkUpsert(ids, (i) => exp.get(ids[i]), 'metrics');
            writeRate = w.rate;
            t.diagnostic(`wrote ${n} records in ${w.ms} ms (${Math.round(w.rate)}/s)`);
            const m1 = await C().waitMetrics((m) => m.get('presenced_reaper_deadlines') >= before.deadlines + n, 5000);
            assert.ok(m1.get('presenced_reaper_deadlines') >= before.deadlines + n, `deadlines ${before.deadlines} -> ${m1.get('presenced_reaper_deadlines')} after ${n} writes`);
            // move the first half's deadline to 1.5 s from now (an upsert reschedules)
            const soon = Date.now() + 1500 + Math.ceil((half / writeRate) * 1000);
            const early = ids.slice(0, half);
            for (const id of early) exp.set(id, soon);
            await bulkUpsert(early, () => soon, 'metrics');
            const r = await collectDeletes(early, exp, soon + 10000, 500);
            assertExactlyOnce(r, half, 'metrics');
            const m2 = await C().waitMetrics((m) => m.get('presenced_reaper_expired_total') >= before.expired + half, 3000);
            const expired = m2.get('presenced_reaper_expired_total');
            const deadlines = m2.get('presenced_reaper_deadlines');
            assert.ok(expired >= before.expired + half, `expired_total ${before.expired} -> ${expired} after ${half} expiries`);
            assert.ok(deadlines <= before.deadlines + n - half, `deadlines ${before.deadlines} -> ${deadlines}: the expired ones are still held`);
            assert.ok(deadlines >= before.deadlines + n - half - 5, `deadlines ${deadlines}: the 10-minute records are gone`);
            const cnt = m2.get('presenced_reaper_lateness_seconds_count');
            assert.ok(cnt >= before.count + half, `lateness count ${before.count} -> ${cnt}`);
            // the histogram: cumulative buckets, +Inf == count
            const bs = m2.find('presenced_reaper_lateness_seconds_bucket');
            for (let i = 1; i < bs.length; i++) assert.ok(bs[i].value >= bs[i - 1].value, 'cumulative buckets');
            assert.equal(bs[bs.length - 1].labels.le, '+Inf');
            assert.equal(bs[bs.length - 1].value, cnt);
            const within = (le) => m2.get('presenced_reaper_lateness_seconds_bucket', { le }) - (before.buckets.get(le) || 0);
            t.diagnostic(`reaper lateness of these ${half}: <=5 ms ${within('0.005')}, <=50 ms ${within('0.05')}, <=1 s ${within('1')}, all ${cnt - before.count}; events ${stats(r.res[0].late)}`);
            assert.equal(within('1'), cnt - before.count, 'every expiry sent within 1 s of expiresAt');
        });

        it('10,000 records expiring within one second: exactly one delete event each, on both gateways', { timeout: 180000 }, async (t) => {
            const N = 10000;
            await calibrate();
            const { ids, lead } = planWindow(N, 'v');
            const T = Date.now() + lead;
            const exp = new Map(ids.map((id, i) => [id, T + Math.floor((i * 1000) / N)]));
            const w = await bulkUpsert(ids, (i) => exp.get(ids[i]), 'bulk');
            t.diagnostic(`wrote ${N} in ${w.ms} ms (${Math.round(w.rate)}/s); window opens ${T - Date.now()} ms later`);
            const before = await reaperMetrics();
            const r = await collectDeletes(ids, exp, T + 1000 + 15000);
            t.diagnostic(`all delivered ${r.allAt - (T + 1000)} ms after the window closed; lateness ${r.res.map((x) => `gw ${x.gateway}: ${stats(x.late)}`).join('; ')}`);
            assertExactlyOnce(r, N, '10k');
            for (const x of r.res) assert.ok(x.late[0] >= -5, `a delete ${-x.late[0]} ms before expiresAt`);
            // a sample: the event carries the record, reads say 404
            const P = keyP();
            for (const id of ids.filter((_, i) => i % 1000 === 7)) {
                const e = watches[0].first(id).e;
                assert.equal(e.payload.expiresAt, iso(exp.get(id)).replace('Z', '+00:00'));
                assert.equal(e.payload.status, 'bulk');
                await rejectsWith(P.get({ presenceId: id }), 404, 'presence_not_found');
            }
            const after = await C().waitMetrics((m) => m.get('presenced_reaper_expired_total') >= before.expired + N, 3000);
            assert.ok(after.get('presenced_reaper_expired_total') >= before.expired + N, 'expired_total counts them');
        });

        it('the reaper SIGKILLed inside the expiry window of 3,000 records: restarted, resynced, exactly one delete each', { timeout: 90000 }, async (t) => {
            const N = 3000;
            await calibrate();
            const { ids, lead } = planWindow(N, 'k');
            const T = Date.now() + lead;
            const exp = new Map(ids.map((id, i) => [id, T + Math.floor((i * 1000) / N)]));
            const w = await bulkUpsert(ids, (i) => exp.get(ids[i]), 'kill');
            t.diagnostic(`wrote ${N} in ${w.ms} ms; window opens ${T - Date.now()} ms later`);
            const old = C().pids('reaper');
            assert.equal(old.length, 1);
            await sleepUntil(T + 300);
            process.kill(old[0], 'SIGKILL');
            const killedAt = Date.now();
            const seenAtKill = ids.filter((id) => watches[0].count(id) > 0).length;
            const now = await waitRestarted('reaper', undefined, old, 10000);
            const restartedAt = Date.now();
            t.diagnostic(`killed ${killedAt - T} ms into the window with ${seenAtKill}/${N} deletes seen; restarted as ${now} after ${restartedAt - killedAt} ms`);
            assert.ok(seenAtKill < N, 'the kill came before every record was deleted');
            const r = await collectDeletes(ids, exp, T + 1000 + 15000);
            const last = Math.max(...r.res.map((x) => x.last));
            const overdue = ids.filter((id) => exp.get(id) < restartedAt);
            const drained = Math.max(...watches.map((w) => Math.max(...overdue.map((id) => (w.count(id) ? w.first(id).t : Infinity))))) - restartedAt;
            t.diagnostic(`${overdue.length} records due before the restart was seen: all deleted ${drained} ms after it; last delete ${last - (T + 1000)} ms after the window closed; lateness ${stats(r.res[0].late)}`);
            assertExactlyOnce(r, N, 'reaper killed');
            assert.ok(drained <= 3000, `the expiries due while the reaper was down took ${drained} ms after its restart`);
            assert.ok(last - (T + 1000) <= 3000, `the last delete came ${last - (T + 1000)} ms after the window closed`);
            const m = await C().waitMetrics((x) => x.get('presenced_reaper_resyncs_total') >= 1, 3000);
            assert.ok(m.get('presenced_reaper_resyncs_total') >= 1, 'the new reaper resynced');
            assert.match(C().log(), /reaper\[\d+\] info: sync requested from every store node[\s\S]*reaper\[\d+\] info: sync requested from every store node/, 'two reaper starts, two syncs');
        });

        // Ids owned by store node 1 and node 2 (checked against the store record gauges).
        async function idsOn(tag, k1, k2) {
            const n1 = [], n2 = [];
            while (n1.length < k1 || n2.length < k2) {
                const id = uid(tag);
                const o = ownerOf(C().project, id, 2);
                if (o === 1 && n1.length < k1) n1.push(id);
                else if (o === 2 && n2.length < k2) n2.push(id);
            }
            return { n1, n2, ids: n1.concat(n2) };
        }

        async function restartStore1() {
            const old = await pidsAsync('store', 1);
            assert.equal(old.length, 1, 'one store node 1');
            process.kill(old[0], 'SIGKILL');
            const killedAt = Date.now();
            await waitRestarted('store', 1, old, 10000);
            const restartedAt = Date.now();
            const m = await C().waitMetrics((x) => x.get('presenced_store_up', { node: 1 }) === 1, 5000);
            assert.equal(m.get('presenced_store_up', { node: 1 }), 1, 'node 1 is up again');
            return { killedAt, restartedAt };
        }

        it('store node 1 SIGKILLed and restarted: the reaper resyncs it without waiting for traffic', async (t) => {
            const before = await reaperMetrics();
            const { killedAt: at } = await restartStore1();
            const m = await C().waitMetrics((x) => x.get('presenced_reaper_resyncs_total') > before.resyncs, 3000);
            t.diagnostic(`resyncs_total ${before.resyncs} -> ${m.get('presenced_reaper_resyncs_total')} within ${Date.now() - at} ms of the kill`);
            assert.ok(m.get('presenced_reaper_resyncs_total') > before.resyncs, `no resync within 3 s of store node 1's restart (resyncs_total stays ${before.resyncs})`);
        });

        it('store node 1 restarted before its records expire: resynced, and every record still expires with exactly one event', { timeout: 60000 }, async (t) => {
            const { ids } = await idsOn('s', 300, 100);
            const lead = Math.ceil((ids.length / writeRate) * 1000 * 1.5) + 5000; // writes, gauges, kill, restart
            const m0 = await C().metrics();
            const T = Date.now() + lead;
            const exp = new Map(ids.map((id, i) => [id, T + Math.floor((i * 1000) / ids.length)]));
            await bulkUpsert(ids, (i) => exp.get(ids[i]), 'store');
            // the ownership computed here is the cluster's
            const rec = (m, node) => m.get('presenced_store_records', { node });
            const m1 = await C().waitMetrics((m) => rec(m, 1) >= rec(m0, 1) + 300 && rec(m, 2) >= rec(m0, 2) + 100, 5000);
            assert.deepEqual([rec(m1, 1) - rec(m0, 1), rec(m1, 2) - rec(m0, 2)], [300, 100], 'records per store node');
            const before = await reaperMetrics();
            await restartStore1();
            assert.ok(Date.now() < T - 200, `the store restart took until ${Date.now() - T} ms into the window`);
            const r = await collectDeletes(ids, exp, T + 1000 + 10000);
            const m2 = await C().waitMetrics((x) => x.get('presenced_reaper_resyncs_total') > before.resyncs, 3000);
            t.diagnostic(`lateness ${stats(r.res[0].late)}; resyncs_total ${before.resyncs} -> ${m2.get('presenced_reaper_resyncs_total')}`);
            assertExactlyOnce(r, ids.length, 'store restarted');
            for (const x of r.res) assert.ok(x.late[x.late.length - 1] <= 1000, `a delete ${x.late[x.late.length - 1]} ms after expiresAt`);
            assert.ok(m2.get('presenced_reaper_resyncs_total') > before.resyncs, `the reaper never resynced the restarted node (resyncs_total stays ${before.resyncs})`);
            assert.match(C().log(), /reaper\[\d+\] info: store node 1 restarted \(generation \d+ -> \d+\): resync/);
        });

        it('store node 1 SIGKILLed inside the expiry window: no duplicates, and its records due from then on are deleted after the restart, once each', { timeout: 60000 }, async (t) => {
            const { n1, n2 } = await idsOn('w', 300, 100);
            const ids = []; // node 2's records spread over the window too
            for (let i = 0; i < 100; i++) ids.push(n1[3 * i], n1[3 * i + 1], n1[3 * i + 2], n2[i]);
            const lead = Math.ceil((ids.length / writeRate) * 1000 * 1.5) + 2000;
            const rec = (m, node) => m.get('presenced_store_records', { node });
            const m0 = await C().metrics();
            const T = Date.now() + lead;
            const exp = new Map(ids.map((id, i) => [id, T + Math.floor((i * 1000) / ids.length)]));
            await bulkUpsert(ids, (i) => exp.get(ids[i]), 'window');
            await sleepUntil(T + 300);
            const seen = n1.filter((id) => watches[0].count(id) > 0).length;
            const { killedAt, restartedAt } = await restartStore1();
            const r = await collectDeletes(ids, exp, T + 1000 + 10000);
            // Every record has exactly one delete event: those due before the kill too, even if
            // the store deleted one in its last moments (its outbox publishes it again after the
            // restart, and the gateways drop what they already had).
            const dueBefore = new Set(n1.filter((id) => exp.get(id) < killedAt));
            const overdue = n1.filter((id) => exp.get(id) >= killedAt && exp.get(id) < restartedAt);
            const firstAt = (id) => Math.max(...watches.map((w) => (w.count(id) ? w.first(id).t : Infinity)));
            const drained = Math.max(...overdue.map(firstAt)) - restartedAt;
            const late2 = n2.map((id) => firstAt(id) - exp.get(id)).sort((a, b) => a - b);
            t.diagnostic(`killed ${killedAt - T} ms into the window (${seen}/${dueBefore.size} node-1 deletes seen); restarted ${restartedAt - killedAt} ms later; the ${overdue.length} node-1 records due meanwhile deleted ${drained} ms after; node 2 lateness ${stats(late2)}`);
            for (const x of r.res) {
                assert.ok(x.alive, `the watcher on gateway ${x.gateway} was disconnected`);
                assert.deepEqual(x.dups, [], `gateway ${x.gateway}: more than one delete event`);
                const missing = x.missing.filter((id) => !dueBefore.has(id));
                assert.deepEqual(missing, [], `gateway ${x.gateway}: no delete event for records due after the kill`);
                const lost = x.missing.filter((id) => dueBefore.has(id));
                assert.deepEqual(lost.map((id) => `${id} (due ${exp.get(id) - killedAt} ms before the kill)`), [], `gateway ${x.gateway}: deleted (gone from the store) just before the kill, without a delete event`);
            }
            assert.ok(drained <= 3000, `node 1's records due while it was down took ${drained} ms after its restart`);
            assert.ok(late2[late2.length - 1] <= 1000, `node 2's records were delayed by node 1's restart: ${stats(late2)}`);
            const m1 = await C().waitMetrics((m) => rec(m, 1) === rec(m0, 1) && rec(m, 2) === rec(m0, 2), 5000);
            assert.deepEqual([rec(m1, 1), rec(m1, 2)], [rec(m0, 1), rec(m0, 2)], 'every record of the window is gone from the stores');
        });
    });
});
