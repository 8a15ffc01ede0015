'use strict';
// Memory per record, by component (issue 12 item 2): a cluster of one store node, one gateway,
// the broker and the reaper (tests/e2e/lib/cluster.js) is filled by wrk with RECORDS records of
// unique users (bench/lib/fill.js: each record has a claim, a deadline and a cache entry in the
// broker), and the memory of every part is read before and after from /proc/<pid>/smaps_rollup
// (anonymous memory: what the process itself holds) and from the store node's shared-memory
// segments in /dev/shm (blocks actually allocated: the table, the outbox, the rooms). Prints
// bytes per record for each, and the records' own encoded size (their Presence JSON, on average)
// to compare the store's overhead with. Not a test: nothing is asserted.
// Usage: PRESENCED_BIN=build/presenced node bench/memory.js [RECORDS=1000000]
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster } = require(path.join(E2E, 'lib', 'cluster'));
const { api } = require(path.join(E2E, 'lib', 'http'));
const { fill } = require('./lib/fill');

const RECORDS = Number(process.argv[2] || 1000000);

// {rss, anon, shmem} in bytes (smaps_rollup: Rss, Pss_Anon, Pss_Shmem).
function procMem(pid) {
    const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const kb = (k) => { const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(t); return m ? Number(m[1]) * 1024 : 0; };
    return { rss: kb('Rss'), anon: kb('Pss_Anon'), shmem: kb('Pss_Shmem') };
}

// Bytes allocated to a /dev/shm file (0 if absent).
function shmBytes(name) {
    try { return fs.statSync(`/dev/shm/${name}`).blocks * 512; } catch { return 0; }
}

function snapshot(c) {
    const seg = `presenced-${c.name}-store-1`;
    return {
        store: procMem(c.pids('store', 1)[0]).anon,
        table: shmBytes(seg), outbox: shmBytes(`${seg}-outbox`), rooms: shmBytes(`${seg}-rooms`),
        reaper: procMem(c.pids('reaper')[0]).anon,
        broker: procMem(c.pids('broker')[0]).anon,
        gateway: procMem(c.pids('gateway', 1)[0]).anon,
    };
}

(async () => {
    // The node starts with the default capacity (1,048,576 records) and arena (1 GiB) and grows
    // both online as the records come (--store-capacity-max 16,777,216 by default).
    const c = await startCluster({ stores: 1, gateways: 1, label: 'bench-memory',
        args: RECORDS > 14680064 ? ['--store-capacity-max', String(2 * RECORDS)] : [] });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-memory-'));
    try {
        const before = snapshot(c);
        const { n, secs } = await fill(c, dir, RECORDS);
        await new Promise((r) => setTimeout(r, 2000)); // the reaper and broker settle
        const after = snapshot(c);
        // The records' encoded size varies with their ids' and metadata's digits ("r0-7" to
        // "r1-449999"): the mean over 400 records spread evenly over the ids written.
        const one = Buffer.byteLength((await api(c, 'GET', '/v1/presences/r0-0', { key: true })).text);
        let sum = 0, got = 0;
        for (let k = 0; k < 400; k++) {
            const r = await api(c, 'GET', `/v1/presences/r${k % 2}-${Math.floor((k >> 1) * n / 400)}`, { key: true });
            if (r.status === 200) { sum += Buffer.byteLength(r.text); got++; }
        }
        const json = sum / got;
        console.log(`${n} records written in ${secs.toFixed(1)} s; a record's Presence JSON: ${json.toFixed(1)} bytes on average (${got} sampled; r0-0's: ${one})`);
        console.log('| component | MiB before | MiB after | bytes per record |');
        console.log('|---|---|---|---|');
        const rows = [
            ['store: table segment (slots, indexes, heap, claims, arena)', 'table'],
            ['store: outbox segment (recent events, a fixed ring)', 'outbox'],
            ['store: rooms segment', 'rooms'],
            ['store process (heap: counts, buffers)', 'store'],
            ['reaper (one deadline per record)', 'reaper'],
            ['broker (claim cache, one entry per user)', 'broker'],
            ['gateway', 'gateway'],
        ];
        for (const [label, k] of rows) {
            const b = before[k], a = after[k];
            console.log(`| ${label} | ${(b / 2 ** 20).toFixed(1)} | ${(a / 2 ** 20).toFixed(1)} | ${((a - b) / n).toFixed(1)} |`);
        }
        const table = (after.table - before.table) / n;
        console.log(`store table bytes per record beyond the record's JSON: ${(table - json).toFixed(1)}`);
        for (const l of c.log().split('\n').filter((x) => /capacity grew|arena grew/.test(x)))
            console.log(l.replace(/^\S+ store-1\[\d+\] info: /, ''));
        console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.release()}`);
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
