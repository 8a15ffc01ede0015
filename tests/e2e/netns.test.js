'use strict';
// Multi-host: every role in its own network namespace with its own address, over tcp:// with
// CURVE, like pods on separate hosts (lib/netns.js has the topology), driven by the official
// SDKs through the gateways' addresses. A store host is cut off the network and plugged back, a
// gateway host and the broker host die, and a host with no keys attacks every internal port.
// Needs root (namespaces, veth pairs, a bridge); skipped with the reason otherwise.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const R = require('./lib/rtclient');
R.installRecordingWebSocket(); // before the SDK is loaded: it takes globalThis.WebSocket
const { sleep, BIN } = require('./lib/cluster');
const { NetnsCluster, unavailable, shardOwner, PORTS, CTL, ATTACK } = require('./lib/netns');
const { webClient, nodeClient, plain, loadNodeSdk } = require('./lib/sdk');
const { api, show } = require('./lib/http');
const { uid, assertPresence, assertError } = require('./lib/check');

const WHY = unavailable();
if (WHY) process.stderr.write(`# netns.test.js: skipped: ${WHY}\n`);

let N = null;
const FAST_MS = 2000;         // "503 at once": well under the gateways' 5 s request timeout
const realtimes = [];         // every SDK Realtime, disconnected after each test
// A gateway's bus subscription is re-established on its own schedule after the broker restarts
// or the gateway's link to it comes back; what the stores published before that is asked again
// of their outboxes (gw_realtime.c, "resync"): the subscriber gets it on the same WebSocket.

test.before(async () => {
    if (!WHY) N = await new NetnsCluster({ label: 'netns' }).start();
}, { timeout: 60000 });
test.afterEach(async (t) => {
    for (const rt of realtimes.splice(0)) { try { await rt.disconnect(); } catch {} }
    if (N && t.passed === false) N.failed = true;
});
test.after(async () => { if (N) await N.stop(); }, { timeout: 30000 });

// node:test: skip (with the reason) where namespaces are not available
function nsTest(name, opts, fn) {
    test(name, opts, async (t) => {
        if (WHY) return t.skip(WHY);
        await N.waitHealthy(30000); // each test starts from a whole cluster, whatever the last one left
        return fn(t);
    });
}

const G = (n) => N.gateway(n);
const keyP = (n) => nodeClient(G(n), {}).presences;
const get = (n, id) => api(G(n), 'GET', `/v1/presences/${id}`, { key: true, timeoutMs: 15000 });
const PUBLIC = ['read("any")'];

// An id (or user id) that lives on store node `node`.
function idOn(node, prefix) {
    for (;;) {
        const id = uid(prefix);
        if (shardOwner(N.project, id) === node) return id;
    }
}

// Upserts a record whose id and user both live on `node` (so the write needs only that node).
async function writeOn(node, n, status, metadata) {
    const presenceId = idOn(node, 'p'), userId = idOn(node, 'u');
    const p = plain(await keyP(n).upsert({ presenceId, userId, status, metadata, permissions: PUBLIC }));
    assertPresence(p, { $id: presenceId, userId, status });
    return p;
}

// Every record of snapshot answers 200 through gateway n, unchanged.
async function assertAllServed(snapshot, n, what) {
    for (const [id, rec] of snapshot) {
        const r = await get(n, id);
        assert.equal(r.status, 200, `${what}: ${show(r)}`);
        assert.deepEqual(r.json, rec, `${what}: ${id} changed`);
    }
}

// A web SDK Realtime on gateway n (a guest, or userId with a JWT).
function sdkRealtime(n, userId) {
    const { W, client } = webClient(G(n), { userId });
    const rt = new W.Realtime(client);
    realtimes.push(rt);
    return { W, rt };
}

// Waits until the TCP connection from host `from` to store `to` (a request sent as the link
// went down) has just retransmitted, when its next retransmission is due within 4 s: the link
// then comes back at the start of a backoff gap: a gateway that kept that connection would
// wait seconds for its next retransmission (each request a 5 s timeout while /v1/health says
// 200), so the test sees whether the gateway dropped the dead link (ZMTP heartbeats) and
// reconnected.
async function retransmitted(t, from, to) {
    const r = await N.exec(from, 'ss', ['-tnoH', 'state', 'established', 'dst', `${N.addr(to)}:${PORTS.store}`]);
    // "timer:(on,636ms,2)"; iproute2 prints seconds as "6.096ms" (or "6.096sec"), minutes as "1min…"
    const m = /timer:\(on,(\d+)(\.\d+)?(ms|sec)?,(\d+)\)/.exec(r.stdout);
    t.diagnostic(`${from} -> ${to} at the heal: ${r.stdout.trim() || 'no connection'}`);
    if (!m) return;
    const ms = m[2] || m[3] === 'sec' ? Number(m[1] + (m[2] || '')) * 1000 : Number(m[1]);
    if (ms < 4000) await sleep(ms + 150);
}

// Writes a marker (write() -> the record) every 300 ms until the collector gets its event:
// the subscriber's path over the bus works again. since/what: the moment it counts from.
async function subscriberLive(t, col, write, since, what) {
    const t0 = Date.now();
    for (;;) {
        const m = await write();
        if (await col.waitFor((e) => e.payload.$id === m.$id, 300).then(() => true, () => false)) break;
        if (Date.now() - t0 > 15000) assert.fail('the subscriber got no event for 15 s');
    }
    t.diagnostic(`the subscriber got events again ${Date.now() - since} ms after ${what}`);
}

// No event twice: one upsert event per record written once, at most one for anything else.
function assertOnce(col, snap) {
    for (const [id, evs] of eventsById(col)) {
        if (snap.has(id)) assert.deepEqual(evs, [`presences.${id}.upsert`], `events of ${id}`);
        else assert.ok(evs.length <= 1, `events of ${id} (a write that answered 503): ${evs}`);
    }
}

// Runs `presenced probe` for role name in its namespace until it exits with want (0: alive).
async function probeUntil(name, want, timeoutMs) {
    const [role, node] = name.split('-');
    const args = ['probe', '--role', role, ...(node ? ['--node', node] : []), '--run-dir', N.hostDir(name)];
    const t0 = Date.now();
    for (;;) {
        const r = await N.exec(name, BIN, args);
        if ((r.status === 0) === (want === 0)) return r;
        if (Date.now() - t0 > timeoutMs) assert.fail(`presenced probe of ${name} still exits ${r.status} after ${timeoutMs} ms: ${r.stdout}${r.stderr}`);
        await sleep(250);
    }
}

// Per record id, the events (first event name) a collector got.
function eventsById(col) {
    const m = new Map();
    for (const e of col.got) {
        const id = e.payload && e.payload.$id;
        if (!m.has(id)) m.set(id, []);
        m.get(id).push(e.events[0]);
    }
    return m;
}

nsTest('the topology: each role in its own network namespace, reached through the bridge', {}, async () => {
    const ps = new Map([...N.procs].map(([name, p]) => [name, p.pid]));
    assert.deepEqual([...ps.keys()].sort(), ['broker', 'gateway-1', 'gateway-2', 'reaper', 'store-1', 'store-2']);
    const self = fs.readlinkSync('/proc/self/ns/net');
    const seen = new Set([self]);
    for (const [name, pid] of ps) {
        const ns = fs.readlinkSync(`/proc/${pid}/ns/net`);
        assert.ok(!seen.has(ns), `${name} shares a network namespace`);
        seen.add(ns);
        assert.match(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'), new RegExp(`^${BIN.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\0${name.split('-')[0]}\0`));
    }
    // the gateways answer on their own addresses (the host reaches them through the bridge)
    for (const n of [1, 2]) assert.equal(await N.health(n), 200);
    // and each host's liveness probe (`presenced probe`, as Kubernetes runs it) says alive
    for (const name of ps.keys()) await probeUntil(name, 0, 10000);
});

nsTest('a store host cut off the network: its records answer 503 at once, the rest keeps working, and it is back at once, intact', { timeout: 90000 }, async (t) => {
    const snap = { 1: new Map(), 2: new Map() };
    for (const node of [1, 2]) {
        for (let i = 0; i < 8; i++) {
            const p = await writeOn(node, 1 + (i % 2), `before ${i}`, { node, i });
            snap[node].set(p.$id, p);
        }
    }
    const [first1] = snap[1].keys();
    N.link('store-1', false);
    const cut = Date.now();
    try {
        // the broker marks a silent node down within about a second; until then a request may wait
        let r;
        do {
            r = await get(1, first1);
            if (Date.now() - cut > 10000) assert.fail(`store-1's records still answer ${show(r)} 10 s after the cut`);
        } while (r.status !== 503);
        t.diagnostic(`store-1 answered 503 ${Date.now() - cut} ms after the cut`);
        let slowest = 0;
        // from now on: 503 at once, through both gateways, for every record of store-1
        for (const id of snap[1].keys()) {
            for (const n of [1, 2]) {
                const res = await get(n, id);
                assertError(res, 503);
                assert.ok(res.ms < FAST_MS, `GET ${id} via gateway-${n} took ${Math.round(res.ms)} ms while store-1 is away`);
                slowest = Math.max(slowest, res.ms);
            }
        }
        t.diagnostic(`slowest 503 while away: ${Math.round(slowest)} ms`);
        const t0 = Date.now();
        const err = await keyP(1).upsert({ presenceId: idOn(1, 'p'), userId: idOn(1, 'u'), status: 'x' }).then(() => null, (e) => e);
        assert.equal(err && err.code, 503, `a write for store-1 while it is away: ${err && err.message}`);
        assert.ok(Date.now() - t0 < FAST_MS, `the write took ${Date.now() - t0} ms`);
        // store-2: reads, updates and new records, through both gateways
        await assertAllServed(snap[2], 1, 'store-2 while store-1 is away (gateway-1)');
        await assertAllServed(snap[2], 2, 'store-2 while store-1 is away (gateway-2)');
        for (const [id, rec] of [...snap[2]].slice(0, 3)) {
            const u = plain(await keyP(2).update({ presenceId: id, userId: rec.userId, status: 'during the cut', metadata: { during: true } }));
            assertPresence(u, { $id: id, userId: rec.userId, status: 'during the cut', metadata: { during: true } });
            snap[2].set(id, u);
        }
        for (let i = 0; i < 3; i++) {
            const p = await writeOn(2, 1 + (i % 2), `during ${i}`, { i });
            snap[2].set(p.$id, p);
        }
        await assertAllServed(snap[2], 1, 'store-2 after writes during the cut');
        // a real outage: longer than the request timeout, so TCP's retransmissions back off
        while (Date.now() - cut < 7000) await sleep(100);
        const late = await get(2, first1);
        assertError(late, 503);
        assert.ok(late.ms < FAST_MS, `GET after 7 s away took ${Math.round(late.ms)} ms`);
        await retransmitted(t, 'gateway-1', 'store-1');
    } finally {
        N.link('store-1', true);
    }
    // back: the broker sees store-1 again (its heartbeats resume) and /v1/health is 200
    const up = Date.now();
    await N.waitHealthy(30000);
    t.diagnostic(`/v1/health 200 again ${Date.now() - up} ms after the link came back`);
    // every record as it was, through both gateways, at once: no link is left waiting out
    // TCP's retransmission backoff (a request that takes the 5 s timeout fails here)
    for (const n of [1, 2]) {
        for (const [id, rec] of [...snap[1], ...snap[2]]) {
            let r;
            for (;;) {
                r = await get(n, id);
                assert.ok(r.ms < FAST_MS, `GET ${id} via gateway-${n} took ${Math.round(r.ms)} ms after store-1 came back: ${show(r)}`);
                if (r.status === 200) break;
                assert.ok(Date.now() - up < 5000, `${id} via gateway-${n} still answers ${show(r)} 5 s after the link came back`);
                await sleep(100);
            }
            assert.deepEqual(r.json, rec, `${id} via gateway-${n} after store-1 came back`);
        }
    }
    t.diagnostic(`every record served through both gateways ${Date.now() - up} ms after the link came back`);
    const Q = loadNodeSdk().Query;
    const listed = plain(await keyP(1).list({ queries: [Q.limit(5000)] }));
    const byId = new Map(listed.presences.map((p) => [p.$id, p]));
    for (const [id, rec] of [...snap[1], ...snap[2]]) assert.deepEqual(byId.get(id), rec, `listed ${id}`);
    // new writes to store-1 work again
    await writeOn(1, 2, 'after', { after: true });
    for (const n of [1, 2]) assert.equal(await N.health(n), 200);
});

nsTest('the broker host killed and restarted: writes resume, no record lost, no event twice', { timeout: 90000 }, async (t) => {
    const { W, rt } = sdkRealtime(2);
    const col = R.collector();
    await R.sdkSubscribe(rt, W.Channel.presences(), col.cb);
    const snap = new Map();
    const write = async (tag, i) => {
        const p = plain(await keyP(1).upsert({ presenceId: uid('b'), userId: uid('bu'), status: `${tag} ${i}`, permissions: PUBLIC }));
        snap.set(p.$id, p);
        return p;
    };
    for (let i = 0; i < 10; i++) await write('before', i);
    await R.until(() => [...snap.keys()].every((id) => col.got.some((e) => e.payload.$id === id)), 10000, 'the events of the first writes');
    // killed right after those writes: their events have only just passed through it
    await N.kill('broker', 'SIGKILL');
    // while it is away a create fails (the broker owns claims): the outage is real
    const tDown = Date.now();
    const down = await keyP(1).upsert({ presenceId: uid('b'), userId: uid('bu'), status: 'no broker', permissions: PUBLIC }).then(() => null, (e) => e);
    assert.equal(down && down.code, 503, `a create without a broker: ${down && down.message}`);
    t.diagnostic(`a create without a broker answered 503 in ${Date.now() - tDown} ms`);
    N.startRole('broker');
    const t0 = Date.now();
    let attempts = 0;
    for (;;) {
        attempts++;
        try {
            await write('resumed', attempts);
            break;
        } catch (e) {
            if (e.code !== 503 || Date.now() - t0 > 20000) throw new Error(`writes did not resume after the broker restart (${attempts} tries): ${e.code} ${e.message}`);
            await sleep(100);
        }
    }
    t.diagnostic(`writes resumed ${Date.now() - t0} ms after the broker restarted (${attempts} tries)`);
    // the first write back proves one store node registered again; the other may take another
    // heartbeat (250 ms), during which its records answer 503 as documented: wait for both
    await N.waitHealthy(10000);
    for (let i = 0; i < 10; i++) await write('after', i);
    await subscriberLive(t, col, () => write('marker', 0), t0, 'the broker restarted');
    await sleep(2000); // a late or repeated event would arrive in this window
    await t.test('every acknowledged write reaches the subscriber', () => {
        assert.deepEqual([...snap.keys()].filter((id) => !col.got.some((e) => e.payload.$id === id)), [],
            `writes acknowledged after the restart with no event at the subscriber (of ${snap.size})`);
    });
    assertOnce(col, snap);
    for (const n of [1, 2]) await assertAllServed(snap, n, `after the broker restart (gateway-${n})`);
    await N.waitHealthy(10000);
});

nsTest('a gateway cut off from the broker and back: its subscribers stay connected, get events again, none twice', { timeout: 90000 }, async (t) => {
    const { W, rt } = sdkRealtime(2);
    const col = R.collector();
    await R.sdkSubscribe(rt, W.Channel.presences(), col.cb);
    const socket = rt.socket;
    const snap = new Map();
    const write = async (tag) => {
        const p = plain(await keyP(1).upsert({ presenceId: uid('r'), userId: uid('ru'), status: tag, permissions: PUBLIC }));
        snap.set(p.$id, p);
        return p;
    };
    const first = await write('before');
    await col.waitFor((e) => e.payload.$id === first.$id, 5000, 'the first event');
    // gateway-2 loses its route to the broker (its clients still reach it) for longer than
    // the internal links' heartbeat timeout; writes go on through gateway-1 meanwhile
    N.route('gateway-2', 'broker', false);
    try {
        await sleep(4000);
        for (let i = 0; i < 5; i++) await write(`meanwhile ${i}`);
    } finally {
        N.route('gateway-2', 'broker', true);
    }
    const healed = Date.now();
    await subscriberLive(t, col, () => write('marker'), healed, 'the route came back');
    await sleep(2000);
    assert.equal(rt.socket, socket, 'the SDK had to reconnect: the gateway dropped its WebSocket');
    await t.test('the subscriber gets the events written while its gateway was cut off', () => {
        assert.deepEqual([...snap.keys()].filter((id) => !col.got.some((e) => e.payload.$id === id)), [],
            'writes with no event at the subscriber');
    });
    assertOnce(col, snap);
    await N.waitHealthy(15000);
});

nsTest('the broker host cut off the network and back: writes resume at once, nothing lost', { timeout: 90000 }, async (t) => {
    const snap = new Map();
    const write = async (tag) => {
        const p = plain(await keyP(1).upsert({ presenceId: uid('c'), userId: uid('cu'), status: tag, permissions: PUBLIC }));
        snap.set(p.$id, p);
    };
    for (let i = 0; i < 5; i++) await write(`before ${i}`);
    N.link('broker', false);
    const cut = Date.now();
    try {
        // a write as the link goes: it cannot reach the broker (its claim is the broker's)
        const down = await keyP(1).upsert({ presenceId: uid('c'), userId: uid('cu'), status: 'cut', permissions: PUBLIC }).then(() => null, (e) => e);
        assert.equal(down && down.code, 503, `a create while the broker is cut off: ${down && down.message}`);
        while (Date.now() - cut < 8000) await sleep(100);
    } finally {
        N.link('broker', true);
    }
    const healed = Date.now();
    let resumed;
    for (let i = 0; resumed === undefined; i++) {
        try {
            await write(`after ${i}`);
            resumed = Date.now() - healed;
        } catch (e) {
            if (e.code !== 503 || Date.now() - healed > 15000) throw new Error(`writes did not resume within 15 s of the broker's link coming back: ${e.code} ${e.message}`);
            await sleep(100);
        }
    }
    t.diagnostic(`writes resumed ${resumed} ms after the broker's link came back`);
    // at once, not after TCP's next retransmission on a link that should have been dropped
    assert.ok(resumed < 3000, `writes resumed ${resumed} ms after the broker's link came back`);
    await N.waitHealthy(30000);
    for (const n of [1, 2]) await assertAllServed(snap, n, `after the broker's link came back (gateway-${n})`);
});

nsTest('an attacker host without keys gets nothing from any internal port and cannot register as a role', { timeout: 90000 }, async (t) => {
    assert.ok(fs.existsSync(ATTACK), `${ATTACK} is missing (tests/CMakeLists.txt builds it)`);
    // the attacker knows the public keys (they are public), never a secret one
    const pubs = path.join(N.runDir, 'attacker-pubs');
    fs.mkdirSync(pubs);
    for (const f of fs.readdirSync(N.keys).filter((x) => x.endsWith('.pub'))) fs.copyFileSync(path.join(N.keys, f), path.join(pubs, f));
    const attack = async (mode, ep, auth, { server = 'broker', node, ms = 2000 } = {}) => {
        const args = [mode, ep, '--auth', auth, '--ms', String(ms), '--project', N.project];
        if (auth === 'stranger') args.push('--server-pub', path.join(pubs, `${server}.pub`));
        if (node) args.push('--node', String(node));
        const r = await N.exec('attacker', 'env', [`PD_ATTACK_SERVER=${server}`, ATTACK, ...args], ms + 15000);
        assert.equal(r.status, 0, `pd_attack ${args.join(' ')}: ${r.stderr}`);
        return { ...JSON.parse(r.stdout.trim().split('\n').pop()), ep, auth: auth.replace(/^.*:/, '') };
    };
    const key = (name) => `${N.keys}:${name}`; // controls only: a genuine key where it is allowed
    const B = (port) => N.tcp('broker', port);

    // records of store-1 that must keep answering, and a subscriber with traffic on the bus
    const keep = new Map();
    for (let i = 0; i < 5; i++) { const p = await writeOn(1, 1, `keep ${i}`, { secret: 'card 4111' }); keep.set(p.$id, p); }
    const sub = await R.RawClient.open(`ws://${N.addr('gateway-1')}:${PORTS.http}/v1/realtime?project=${N.project}`);
    await sub.next((m) => m.type === 'connected', 5000, 'connected');
    await R.rawSubscribe(sub, [{ subscriptionId: 's', channels: ['presences'] }]);
    let writing = true, writes = 0;
    const writer = (async () => {
        while (writing) {
            await keyP(2).upsert({ presenceId: `busy${writes % 10}`, userId: `busyu${writes % 10}`, status: `s${writes}`, permissions: PUBLIC });
            writes++;
            await sleep(30);
        }
    })();
    const refused = async () => {
        const m = /^presenced_broker_refused_peers_total (\d+)/m.exec(await N.metrics(1));
        assert.ok(m, 'presenced_broker_refused_peers_total in /metrics');
        return Number(m[1]);
    };
    const refusedBefore = await refused();

    // a real `presenced store --node 1` and `presenced reaper` on the attacker host, with key
    // pairs of their own (and the cluster's real public keys, so they pin the real broker)
    const evil = path.join(N.runDir, 'evil-keys');
    require('node:child_process').execFileSync(CTL, ['cluster-keys', '--out', evil, '--stores', '2', '--gateways', '2'], { stdio: 'pipe' });
    fs.copyFileSync(path.join(pubs, 'broker.pub'), path.join(evil, 'broker.pub'));
    const common = ['--verbose', '1', '--keys', evil, '--cluster', `${N.cluster}evil`, '--run-dir', N.hostDir('attacker')];
    const impostors = [
        N.spawn('attacker', 'evil-store', BIN, ['store', '--node', '1', ...common, '--broker-back', B(PORTS.back), '--bus-in', B(PORTS.busIn),
            '--shm', `/presenced-${N.cluster}-evil-store-1`, '--store-front', `tcp://*:${PORTS.store}`,
            '--store-advertise', N.tcp('attacker', PORTS.store), '--store-capacity', '1024', '--store-arena', String(1 << 20)]),
        N.spawn('attacker', 'evil-reaper', BIN, ['reaper', ...common, '--broker-front', B(PORTS.front), '--bus-out', B(PORTS.busOut)]),
    ];
    let results, control;
    try {
        const runs = Promise.all([
            attack('listen', B(PORTS.busOut), 'none'),
            attack('listen', B(PORTS.busOut), 'stranger'),
            attack('list', B(PORTS.front), 'none'),
            attack('list', B(PORTS.front), 'stranger'),
            attack('list', B(PORTS.back), 'stranger'),
            attack('publish', B(PORTS.busIn), 'none'),
            attack('publish', B(PORTS.busIn), 'stranger'),
            attack('store', B(PORTS.back), 'none', { node: 1 }),
            attack('store', B(PORTS.back), 'stranger', { node: 1 }),
            attack('reaper', B(PORTS.front), 'none'),
            attack('reaper', B(PORTS.front), 'stranger'),
            ...[1, 2].flatMap((n) => [
                attack('list', N.tcp(`store-${n}`, PORTS.store), 'none', { server: `store-${n}` }),
                attack('list', N.tcp(`store-${n}`, PORTS.store), 'stranger', { server: `store-${n}` }),
            ]),
        ]);
        // the same tool from the same host with genuine keys sees traffic: the attacks above get
        // nothing because they are refused, not because nothing flows or the network is broken
        const controls = Promise.all([
            attack('listen', B(PORTS.busOut), key('gateway-2')),
            attack('list', B(PORTS.front), key('gateway-1')),
        ]);
        // meanwhile the cluster stays healthy and store-1 keeps answering with its own records
        const t0 = Date.now();
        while (Date.now() - t0 < 4000) {
            for (const n of [1, 2]) assert.equal(await N.health(n), 200, `/v1/health of gateway-${n} during the attack`);
            for (const [id, rec] of keep) {
                const r = await get(2, id);
                assert.equal(r.status, 200, `store-1's ${id} during the attack: ${show(r)}`);
                assert.deepEqual(r.json, rec);
            }
            await sleep(100);
        }
        results = await runs;
        control = await controls;
        for (const p of impostors) assert.equal(p.exited, null, `${p.name} gave up early: ${N.log(p.name).slice(-1500)}`);
    } finally {
        writing = false;
        await writer;
        for (const p of impostors) if (!p.exited) p.proc.kill('SIGKILL');
    }
    t.diagnostic(`controls: ${JSON.stringify(control)}`);
    for (const r of results) assert.equal(r.received, 0, `the attacker got something: ${JSON.stringify(r)}`);
    assert.ok(writes > 20, `the bus carried traffic during the attack (${writes} writes)`);
    for (const c of control) assert.ok(c.received > 0, `control with a genuine key got nothing: ${JSON.stringify(c)}`);
    // no forged event on the subscriber, which did get the real ones
    assert.ok(sub.events((m) => m.data.payload.$id.startsWith('busy')).length > 0, 'the subscriber saw the real writes');
    assert.deepEqual(sub.events((m) => /forged|mallory/.test(JSON.stringify(m))), [], 'a forged event reached a WebSocket');
    sub.close();
    // the broker refused them at the handshake (ZAP), and the impostor roles never got in
    assert.ok(await refused() > refusedBefore, 'presenced_broker_refused_peers_total did not grow');
    const m = await N.metrics(2);
    assert.match(m, /^presenced_reaper_up 1$/m);
    assert.match(m, /^presenced_store_up\{node="1"\} 1$/m);
    await assertAllServed(keep, 1, 'store-1 after the attack');
});

nsTest('a gateway host killed: its connection-bound presences end within the lease, with events on the surviving gateway', { timeout: 90000 }, async (t) => {
    const watch = sdkRealtime(2);
    const col = R.collector();
    await R.sdkSubscribe(watch.rt, watch.W.Channel.presences(), col.cb);
    const ua = uid('ga'), us = uid('gs');
    const idA = uid('pa'), idS = uid('ps');
    const A = sdkRealtime(1, ua); // held through gateway-1, the victim
    const S = sdkRealtime(2, us); // held through gateway-2, the survivor
    for (const [{ W, rt }, id] of [[A, idA], [S, idS]]) {
        await rt.upsertPresence({ presenceId: id, status: 'here', permissions: [W.Permission.read(W.Role.any())] });
        const resp = await R.sdkFrame(rt, (m) => m.type === 'response' && m.data.to === 'presence', 5000);
        assertPresence(resp.data.presence, { $id: id, source: 'realtime', status: 'here' });
    }
    for (const id of [idA, idS]) await col.waitFor((e) => e.events[0] === `presences.${id}.upsert`, 5000, `the upsert of ${id} on gateway-2`);
    const t0 = Date.now();
    await N.kill('gateway-1', 'SIGKILL');
    await A.rt.disconnect(); // its browser is gone with the host: no reconnect elsewhere
    await probeUntil('gateway-1', 1, 8000); // its liveness probe fails: Kubernetes would restart it
    const del = await col.waitFor((e) => e.events[0] === `presences.${idA}.delete`, 45000, `the delete of ${idA}`);
    const ms = Date.now() - t0;
    t.diagnostic(`the dead gateway's presence was deleted ${ms} ms after the kill`);
    assert.ok(ms <= 40000, `deleted ${ms} ms after the kill (lease 30 s)`);
    assert.equal(del.payload.$id, idA);
    assert.equal(del.payload.source, 'realtime');
    assert.equal(col.count((e) => e.events[0] === `presences.${idA}.delete`), 1, 'one delete event');
    assert.equal(col.count((e) => e.payload.$id === idS && e.events[0] !== `presences.${idS}.upsert`), 0, 'the survivor\'s presence had no other event');
    assertError(await get(2, idA), 404);
    const s = await get(2, idS);
    assert.equal(s.status, 200, show(s));
    assert.equal(s.json.source, 'realtime');
    // the host comes back
    N.startRole('gateway-1');
    await N.waitHealthy(20000);
    await probeUntil('gateway-1', 0, 10000);
});

nsTest('cleanup removes every namespace, link and process of a topology', { timeout: 60000 }, async () => {
    const c = new NetnsCluster({ label: 'netns-cleanup' });
    await c.start();
    const children = [...c.children];
    assert.equal(children.length, 6);
    assert.ok(c.leftovers().length >= 8, `namespaces and links exist: ${c.leftovers()}`);
    await c.stop();
    assert.deepEqual(c.leftovers(), [], 'namespaces or links left');
    const exited = (ch) => ch.exitCode !== null || ch.signalCode !== null;
    await Promise.race([Promise.all(children.map((ch) => exited(ch) || new Promise((r) => ch.once('exit', r)))), sleep(5000)]);
    for (const ch of children) assert.ok(exited(ch), `pid ${ch.pid} (${ch.spawnargs.slice(3, 5).join(' ')}) still runs`);
    assert.deepEqual(fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`presenced-${c.cluster}-`)), []);
});
