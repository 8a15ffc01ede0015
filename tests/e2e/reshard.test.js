'use strict';
// Online resharding (broker.c, "resharding"): store nodes added and removed while the cluster
// serves. One cluster starts with 2 store nodes; `presencectl cluster scale --stores 3 --wait`
// and then `--stores 2 --wait` move the records (and claims, and the reaper's deadlines follow)
// while node-appwrite writers upsert continuously, readers GET continuously, and a web SDK
// Realtime subscriber watches every event. Checked: every record readable throughout (a 503 is
// counted and allowed only for a bounded moment; none is expected), every acknowledged write
// there at the end, no realtime event made by a move (each event is one write: no duplicate
// state, no delete), the third node really took records and was stopped after it drained,
// one presence per user afterwards, and expiry of records that moved.
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { execFile } = require('node:child_process');

const { useCluster, startCluster, sleep, BIN } = require('./lib/cluster');
const { webClient, nodeClient, plain } = require('./lib/sdk');
const { shardOwner } = require('./lib/shard');

const realtimes = [];
test.after(async () => {
    for (const r of realtimes.splice(0)) { try { await r.disconnect(); } catch {} }
});
// --move-rate 3000: a move of ~1,000 records takes about a third of a second, so writes, reads
// and lists certainly race it (at the default rate it is over in tens of ms).
const H = useCluster(test, { label: 'reshard', stores: 2, gateways: 2, args: ['--move-rate', '3000'] });
const C = () => H.cluster;

const CTL = path.join(path.dirname(BIN), 'presencectl');
const READ_ANY = ['read("any")'];
const N = 3000;         // long-lived records, written and read throughout
const SHORT = 30;       // records that expire after the moves
const pid = (i) => `rs-${i}`;
const user = (i) => `rs-user-${i}`;

function ctl(args, timeoutMs = 180000, cluster = C()) {
    return new Promise((resolve, reject) => {
        execFile(CTL, ['cluster', 'scale', '--run-dir', cluster.runDir, ...args], { timeout: timeoutMs },
            (err, stdout, stderr) => (err ? reject(new Error(`presencectl ${args.join(' ')}: ${err.message}\n${stderr}`))
                : resolve(JSON.parse(stdout))));
    });
}

const status = (e) => e.code ?? e.response?.code;

it('2 -> 3 -> 2 store nodes under continuous writes, reads and a realtime subscriber', { timeout: 300000 }, async (t) => {
    const P = nodeClient(C(), {}).presences;
    const expires = new Date(Date.now() + 30 * 60e3).toISOString();

    // the subscriber: every event, by (id, metadata.v)
    const { W, client } = webClient(C(), { userId: 'rs-watcher' });
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    const events = [];
    await rt.subscribe('presences', (e) => events.push(e));
    await sleep(300);

    for (let i = 0; i < N; i += 20)
        await Promise.all([...Array(20).keys()].map((k) => P.upsert({ presenceId: pid(i + k),
            userId: user(i + k), status: 'online', metadata: { v: 0 }, permissions: READ_ANY, expiresAt: expires })));
    const shortExp = Date.now() + 25000;
    for (let i = 0; i < SHORT; i++)
        await P.upsert({ presenceId: `rs-short-${i}`, userId: `rs-short-user-${i}`, status: 'brief',
            permissions: READ_ANY, expiresAt: new Date(shortExp).toISOString() });

    // continuous writers and readers
    const acked = new Map();  // id -> last acknowledged v
    for (let i = 0; i < N; i++) acked.set(pid(i), 0);
    const counts = { writes: 0, reads: 0, lists: 0, paged: 0, w503: 0, r503: 0, other: [], at503: [], totals: [], pages: [] };
    let running = true, v = 0;
    const writer = async (k) => {
        while (running) {
            const i = (v * 7 + k) % N, mine = ++v, t0 = new Date().toISOString();
            try {
                await P.upsert({ presenceId: pid(i), userId: user(i), status: 'online', metadata: { v: mine },
                    permissions: READ_ANY, expiresAt: expires });
                if (mine > acked.get(pid(i))) acked.set(pid(i), mine);
                counts.writes++;
            } catch (e) {
                if (status(e) === 503) counts.w503++, counts.at503.push(`${t0}..${new Date().toISOString()} upsert ${pid(i)}`);
                else counts.other.push(`upsert ${pid(i)}: ${status(e)} ${e.message}`);
            }
        }
    };
    const reader = async (k) => {
        let j = k;
        while (running) {
            const i = (j += 13) % N, t0 = new Date().toISOString();
            try {
                const r = await P.get({ presenceId: pid(i) });
                assert.equal(r.$id, pid(i));
                counts.reads++;
            } catch (e) {
                if (status(e) === 503) counts.r503++, counts.at503.push(`${t0}..${new Date().toISOString()} get ${pid(i)}`);
                else counts.other.push(`get ${pid(i)}: ${status(e)} ${e.message}`);
            }
        }
    };
    // a list counts every record once, also while it moves (lists and move batches never overlap)
    const { Query } = nodeClient(C(), {}).N;
    const lister = async () => {
        while (running) {
            try {
                const l = await P.list({ queries: [Query.equal('status', ['online']), Query.limit(1)] });
                if (l.total !== N) counts.totals.push(l.total);
                counts.lists++;
            } catch (e) {
                if (status(e) === 503) counts.r503++, counts.at503.push(`list ${new Date().toISOString()}`);
                else counts.other.push(`list: ${status(e)} ${e.message}`);
            }
        }
    };
    // large pages (two rounds: the broker plans the page, a gateway fetches its records from the
    // nodes) hold every record once too: a node refuses a gateway's fetch while records move,
    // and the page is listed again through the broker
    const pager = async () => {
        while (running) {
            try {
                const a = await P.list({ queries: [Query.equal('status', ['online']), Query.limit(2000)] });
                const b = await P.list({ queries: [Query.equal('status', ['online']), Query.limit(2000), Query.offset(2000)] });
                const ids = new Set([...a.presences, ...b.presences].map((p) => p.$id));
                if (ids.size !== N || a.presences.length + b.presences.length !== N)
                    counts.pages.push(`${a.presences.length} + ${b.presences.length} records, ${ids.size} distinct`);
                counts.paged++;
            } catch (e) {
                if (status(e) === 503) counts.r503++, counts.at503.push(`pages ${new Date().toISOString()}`);
                else counts.other.push(`pages: ${status(e)} ${e.message}`);
            }
        }
    };
    const loops = [writer(1), writer(2), writer(3), reader(0), reader(5), lister(), pager()];

    await sleep(500);
    const up = await ctl(['--stores', '3', '--wait']);
    assert.equal(up.from, 3);
    assert.equal(up.settled, true);
    // each node's record, claim and capacity figures (the capacity: --store-capacity, 1,048,576)
    for (const n of up.nodes) assert.ok(n.records >= 0 && n.claims >= 0 && n.capacity === 1048576, JSON.stringify(n));
    const onThree = [...Array(N).keys()].filter((i) => shardOwner(C().project, pid(i), 3) === 3).length;
    const m3 = await C().waitMetrics((m) => m.get('presenced_store_records', { node: 3 }) >= onThree, 5000);
    assert.ok(m3.get('presenced_store_records', { node: 3 }) >= onThree,
        `node 3 holds its share: ${m3.get('presenced_store_records', { node: 3 })} of ${onThree} expected`);
    assert.ok(m3.get('presenced_store_moved_total') >= onThree, 'moved_total counts the move');
    await sleep(1000);
    const down = await ctl(['--stores', '2', '--wait']);
    assert.equal(down.from, 2);
    assert.equal(down.settled, true);
    await sleep(1000);
    running = false;
    await Promise.all(loops);

    // node 3 drained and was stopped by the supervisor
    for (let t = 0; C().pids('store', 3).length && t < 100; t++) await sleep(50);
    assert.deepEqual(C().pids('store', 3), [], 'store 3 stopped after it drained');

    t.diagnostic(`writes ${counts.writes}, reads ${counts.reads}, 503s ${counts.w503}+${counts.r503}; ` +
        `node 3 took ${m3.get('presenced_store_records', { node: 3 })} records; events ${events.length}; ` +
        `503 at ${counts.at503.join(', ')}`);
    assert.deepEqual(counts.other, [], 'no error other than 503 during the moves');
    assert.deepEqual(counts.totals, [], 'every list counted each record once');
    assert.deepEqual(counts.pages, [], 'every pair of large pages held each record once');
    assert.ok(counts.paged > 0, 'large pages were listed');
    const mEnd = await C().metrics();
    t.diagnostic(`large pages: ${counts.paged} pairs, fetched by the gateways ` +
        `${await C().gatewaySum('presenced_gateway_list_plans_total', { result: 'fetched' })}, listed again ` +
        `${await C().gatewaySum('presenced_gateway_list_plans_total', { result: 'listed_again' })}`);
    t.diagnostic(`lists ${counts.lists}; requests sent on to a new owner after MOVED: ` +
        `${mEnd.get('presenced_store_moved_routed_total')}; direct requests rerouted (one gateway): ` +
        `${mEnd.sum('presenced_gateway_direct_total', { result: 'rerouted' })}`);
    assert.ok(mEnd.get('presenced_store_moved_routed_total') > 0, 'requests raced the moves (MOVED, sent on)');
    assert.ok(counts.writes > 100 && counts.reads > 100, `work was done: ${JSON.stringify(counts)}`);
    // a 503 is allowed only for a bounded moment; the move itself makes none
    assert.ok(counts.w503 + counts.r503 <= 2, `503s: ${JSON.stringify(counts)}`);

    // every record there, at its last acknowledged write (or a later one still in flight)
    for (let i = 0; i < N; i++) {
        const r = plain(await P.get({ presenceId: pid(i) }));
        assert.ok(r.metadata.v >= acked.get(pid(i)), `${pid(i)}: v ${r.metadata.v} < acked ${acked.get(pid(i))}`);
        assert.equal(r.userId, user(i));
    }

    // the subscriber: one event per write, none for a move
    await sleep(500);
    const seen = new Set();
    for (const e of events) {
        const id = e.payload.$id;
        if (id.startsWith('rs-short-')) continue;
        assert.ok(!e.events[0].endsWith('.delete'), `no delete for a move: ${e.events[0]}`);
        const key = `${id}/${e.payload.metadata.v}`;
        assert.ok(!seen.has(key), `one event per write (a move made one?): ${key} twice`);
        seen.add(key);
    }
    // the newest state reaches the subscriber: its last acknowledged write's event, or a later
    // one's (a connection that is behind is sent a record's newest state: conflation)
    const newest = new Map();
    for (const key of seen) {
        const [id, v] = [key.slice(0, key.lastIndexOf('/')), Number(key.slice(key.lastIndexOf('/') + 1))];
        if (!(newest.get(id) >= v)) newest.set(id, v);
    }
    // (a node started by a scale is sent writes before its bus link is up: their events are kept
    // in its outbox for the gateways' resync; they were once dropped, about 1 run in 3)
    await t.test('the subscriber has the event of every record\'s last acknowledged write, or of a later one', () => {
        for (const [id, av] of acked)
            assert.ok(newest.get(id) >= av, `the event of ${id}'s last acknowledged write (v ${av}) or a later one (newest seen: v ${newest.get(id)})`);
    });

    // one presence per user still holds: an upsert under another id updates the user's record
    for (let i = 0; i < N; i += 10) {
        const r = plain(await P.upsert({ presenceId: `rs-other-${i}`, userId: user(i), status: 'moved',
            permissions: READ_ANY, expiresAt: expires }));
        assert.equal(r.$id, pid(i), `user ${user(i)} keeps one presence`);
    }
    const l = plain(await P.list({ queries: ['{"method":"equal","attribute":"status","values":["moved"]}'] }));
    assert.equal(l.total, N / 10);

    // expiry: the short-lived records moved with their deadlines; each is deleted once
    const delay = shortExp + 4000 - Date.now();
    if (delay > 0) await sleep(delay);
    for (let i = 0; i < SHORT; i++) {
        const id = `rs-short-${i}`;
        await assert.rejects(P.get({ presenceId: id }), (e) => status(e) === 404, id);
        const dels = events.filter((e) => e.events[0] === `presences.${id}.delete`).length;
        assert.equal(dels, 1, `${id}: one delete event`);
    }
});

// The command's refusals: one change at a time (409 while records move), a size out of range,
// and the key: only `ctl` may change the store set (a gateway's key, even under ctl's name, is
// refused; the broker names a peer by the key it holds, not by a file name).
it('cluster scale refusals: a change under way, a bad size, a key other than ctl', { timeout: 120000 }, async () => {
    const first = await ctl(['--stores', '3']);
    assert.equal(first.settled, false);
    await assert.rejects(ctl(['--stores', '4']), /conflict|under way/);
    await assert.rejects(ctl(['--stores', '64']), /1\.\.63/);
    const done = await ctl(['--stores', '3', '--wait']);
    assert.equal(done.settled, true);
    assert.equal(done.from, 3);
    const fake = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-rs-keys-'));
    try {
        fs.chmodSync(fake, 0o700);
        const real = path.join(C().runDir, 'keys');
        fs.copyFileSync(path.join(real, 'broker.pub'), path.join(fake, 'broker.pub'));
        fs.copyFileSync(path.join(real, 'gateway-1.pub'), path.join(fake, 'ctl.pub'));
        fs.copyFileSync(path.join(real, 'gateway-1.key'), path.join(fake, 'ctl.key'));
        fs.chmodSync(path.join(fake, 'ctl.key'), 0o600);
        const ep = `ipc://${C().runDir}/broker-front.ipc`;
        await assert.rejects(new Promise((resolve, reject) => execFile(CTL,
            ['cluster', 'scale', '--stores', '2', '--keys', fake, '--broker', ep], { timeout: 20000 },
            (err, out, stderr) => (err ? reject(new Error(stderr)) : resolve(out)))), /forbidden/);
    } finally {
        fs.rmSync(fake, { recursive: true, force: true });
    }
    const back = await ctl(['--stores', '2', '--wait']);
    assert.equal(back.from, 2);
    assert.equal(back.settled, true);
});

// The failure paths (broker.c, "failures"): an old owner SIGKILLed in the middle of a move (it
// loses the batch it had frozen: the broker abandons the batch and sends it again), then the
// broker SIGKILLed (the restarted one reads the store set from the run directory and goes on).
// Writers keep writing; afterwards every acknowledged write is there, one presence per user
// holds, and the move has finished. A 503 is allowed while a killed process is away.
it('a store node and the broker killed in the middle of a move: nothing lost, the move finishes', { timeout: 300000 }, async (t) => {
    const c = await startCluster({ label: 'reshard-kill', stores: 2, gateways: 1, args: ['--move-rate', '400'] });
    try {
        const P = nodeClient(c, {}).presences;
        const expires = new Date(Date.now() + 30 * 60e3).toISOString();
        const M = 1500;
        for (let i = 0; i < M; i += 20)
            await Promise.all([...Array(20).keys()].map((k) => P.upsert({ presenceId: pid(i + k),
                userId: user(i + k), status: 'online', metadata: { v: 0 }, permissions: READ_ANY, expiresAt: expires })));
        const acked = new Map();
        for (let i = 0; i < M; i++) acked.set(pid(i), 0);
        const counts = { writes: 0, e503: 0, other: [] };
        let running = true, v = 0;
        const writer = async (k) => {
            while (running) {
                const i = (v * 11 + k) % M, mine = ++v;
                try {
                    await P.upsert({ presenceId: pid(i), userId: user(i), status: 'online', metadata: { v: mine },
                        permissions: READ_ANY, expiresAt: expires });
                    if (mine > acked.get(pid(i))) acked.set(pid(i), mine);
                    counts.writes++;
                } catch (e) {
                    if (status(e) === 503) counts.e503++;
                    else counts.other.push(`upsert ${pid(i)}: ${status(e)} ${e.message}`);
                    await sleep(20);
                }
            }
        };
        const loops = [writer(1), writer(2), writer(3)];
        const started = await ctl(['--stores', '3'], 20000, c);
        assert.equal(started.settled, false);
        await sleep(1000);
        const store1 = c.kill('store', 1);
        await c.waitRestarted('store', 1, store1);
        await sleep(800);
        const broker = c.kill('broker');
        await c.waitRestarted('broker', undefined, broker);
        let done;
        for (let tries = 0; !done && tries < 20; tries++) {
            try { done = await ctl(['--stores', '3', '--wait'], 120000, c); } catch (e) { await sleep(250); }
        }
        assert.ok(done && done.settled && done.from === 3, `the move finished: ${JSON.stringify(done)}`);
        await sleep(500);
        running = false;
        await Promise.all(loops);
        t.diagnostic(`writes ${counts.writes}, 503s ${counts.e503}; ${JSON.stringify(done)}`);
        assert.deepEqual(counts.other, [], 'no error other than 503');
        let onThree = 0;
        for (let i = 0; i < M; i++) {
            const r = plain(await P.get({ presenceId: pid(i) }));
            assert.ok(r.metadata.v >= acked.get(pid(i)), `${pid(i)}: v ${r.metadata.v} < acked ${acked.get(pid(i))}`);
            if (shardOwner(c.project, pid(i), 3) === 3) onThree++;
        }
        const m = await c.waitMetrics((x) => x.get('presenced_store_records', { node: 3 }) === onThree, 5000);
        assert.equal(m.get('presenced_store_records', { node: 3 }), onThree, 'store 3 holds exactly its share');
        assert.equal(m.sum('presenced_store_records'), M, 'every record once');
        for (let i = 0; i < M; i += 25) {
            const r = plain(await P.upsert({ presenceId: `rs-again-${i}`, userId: user(i), status: 'again', permissions: READ_ANY }));
            assert.equal(r.$id, pid(i), `user ${user(i)} keeps one presence`);
        }
    } finally {
        await c.stop();
    }
});
