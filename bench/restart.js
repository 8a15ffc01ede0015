'use strict';
// Restart at scale (issue 12 item 3): how long a store node holding RECORDS records takes to
// serve again after SIGKILL. A cluster of one store node and 2 gateways (tests/e2e/lib/cluster.js)
// is filled by wrk (unique users, so every record also has a claim: -t2 -c64 keep-alive PUTs,
// each thread cycling over its half of the ids, stopped once /metrics counts RECORDS), then the
// store node is killed KILLS times: idle (its segment clean), and again while wrk rewrites
// records (the kill may land mid-write: a dirty segment, rebuilt on attach). After each kill
// one keep-alive client sends GET /v1/presences/{id} back to back (each answer is a fast 503
// until the node is back) and the time from the kill to the first 200 is the restart time.
// Then the same GETs go on for 1.5 s: the slowest answer while the node counts its records
// again and answers the reaper's resync. Also printed, from the log's timestamps: when the
// supervisor saw the death, when the new process had re-attached its segment, and when the
// broker saw the node up again. Two more rounds make the segment dirty on purpose, as a
// kill in the middle of a write leaves it (the kills under writes rarely land there): the node
// is stopped (SIGSTOP), its header's `dirty` word set, then it is killed. "dirty": with the undo
// journal armed (a write cut short: re-attach writes back the words it had changed, at most
// 159, then checks a sample); "dirty, no journal": with it disarmed (a write that outgrew the
// journal, or a version 2 segment): every index is rebuilt.
// Not a test: nothing is asserted.
// Usage: PRESENCED_BIN=build/presenced node bench/restart.js [RECORDS=1000000] [KILLS=5]
const path = require('node:path');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const { execFileSync } = require('node:child_process');
const E2E = path.resolve(__dirname, '..', 'tests', 'e2e');
const { startCluster, sleep } = require(path.join(E2E, 'lib', 'cluster'));
const { startWrk, fill } = require('./lib/fill');
const { get } = require('./lib/get');

const RECORDS = Number(process.argv[2] || 1000000);
const KILLS = Number(process.argv[3] || 5);

// One kill: ms from SIGKILL to the first 200, and (from the log's timestamps, ms resolution) to
// the supervisor's "lost store" line and the new process's "re-attached" line.
const DIRTY_OFFSET = 120;   // offsetof(s_header_t, dirty), core/pd_table.c (layouts 3 and 4)
const JOURNAL_OFFSET = 1536; // S_JOURNAL_OFF: {armed, n}
const JOURNAL_ARMED = 0x4c4e524a;

async function killOnce(c, agent, id, dirty, journal) {
    const old = c.pids('store', 1);
    const logBefore = c.log().length;
    if (dirty) {
        const name = /(?:created|re-attached) \/?(\S+): \d+ records/.exec(c.log())[1];
        process.kill(old[0], 'SIGSTOP');
        const fd = fs.openSync(`/dev/shm/${name}`, 'r+');
        const one = Buffer.alloc(4);
        one.writeUInt32LE(1);
        fs.writeSync(fd, one, 0, 4, DIRTY_OFFSET);
        const j = Buffer.alloc(8);
        j.writeUInt32LE(journal ? JOURNAL_ARMED : 0, 0); // n = 0: nothing to write back
        fs.writeSync(fd, j, 0, 8, JOURNAL_OFFSET);
        fs.closeSync(fd);
    }
    const wall = Date.now();
    const t0 = performance.now();
    process.kill(old[0], 'SIGKILL');
    let served = null, n503 = 0, other = 0;
    while (served === null) {
        const s = await get(agent, c, `/v1/presences/${id}`);
        if (s === 200) served = performance.now() - t0;
        else if (s === 503) n503++;
        else other++;
        if (performance.now() - t0 > 30000) throw new Error('not serving 30 s after the kill');
    }
    // then the same GETs for 1.5 s: the slowest answer while the node counts its records again
    // and answers the reaper's resync, a slice per loop turn between requests
    let slowest = 0, after = 0;
    for (const t1 = performance.now(); performance.now() - t1 < 1500; after++) {
        const a = performance.now();
        await get(agent, c, `/v1/presences/${id}`);
        slowest = Math.max(slowest, performance.now() - a);
    }
    const tail = c.log().slice(logBefore);
    const at = (re) => { const m = new RegExp(`^(\\S+) .*${re}`, 'm').exec(tail); return m ? Date.parse(m[1]) - wall : NaN; };
    const m = /re-attached \S+: (\d+) records/.exec(tail);
    const rebuilt = /rebuilding indexes \(([^)]*)\)/.exec(tail);
    const undone = /undone from its journal/.test(tail);
    return { served, slowest, after, lost: at('lost store 1'), attached: at('re-attached \\S+: \\d+ records'), up: at('store node 1 is up'), n503, other,
             count: m ? Number(m[1]) : NaN, rebuilt: rebuilt ? rebuilt[1] : '', undone };
}

(async () => {
    const c = await startCluster({ stores: 1, gateways: 2, label: 'bench-restart', args: ['--store-capacity', String(Math.max(1048576, RECORDS + 1024)), '--store-arena', String(4 * 1024 * 1024 * 1024)] });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-restart-'));
    try {
        const { n, secs, lua } = await fill(c, dir, RECORDS);
        const rss = execFileSync('ps', ['-o', 'rss=', '-p', String(c.pids('store', 1)[0])], { encoding: 'utf8' }).trim();
        console.log(`filled ${n} records in ${secs.toFixed(1)} s (store RSS ${(rss / 1024).toFixed(0)} MiB)`);
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        const id = 'r0-0';
        if (await get(agent, c, `/v1/presences/${id}`) !== 200) throw new Error(`${id} not readable`);
        for (const mode of ['idle', 'under writes', 'dirty', 'dirty, no journal']) {
            const served = [];
            for (let k = 0; k < KILLS; k++) {
                let wr = null;
                if (mode !== 'idle') { wr = startWrk(c, lua, 60); await sleep(1500); }
                const r = await killOnce(c, agent, id, mode.startsWith('dirty'), mode === 'dirty');
                if (wr) wr.kill('SIGTERM');
                served.push(r.served);
                console.log(`${mode} kill ${k + 1}: serving after ${r.served.toFixed(1)} ms (log: lost at ${r.lost} ms, re-attached at ${r.attached} ms, the broker saw it at ${r.up} ms; ` +
                    `${r.n503} x 503, ${r.other} other; re-attached ${r.count} records${r.rebuilt ? `; rebuilt: ${r.rebuilt}` : ''}${r.undone ? '; a change undone from the journal' : ''}); ` +
                    `then the slowest of ${r.after} answers in 1.5 s: ${r.slowest.toFixed(1)} ms`);
                // past the supervisor's 10 s window, so every kill is a first crash (no backoff)
                await sleep(11000);
            }
            served.sort((a, b) => a - b);
            console.log(`${mode}: median ${served[Math.floor((served.length - 1) / 2)].toFixed(1)} ms, max ${served[served.length - 1].toFixed(1)} ms over ${served.length} kills`);
        }
        // /dev/shm's huge pages decide what a restart costs in page faults (README, "Huge pages")
        const shm = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.split(' ')[1] === '/dev/shm').pop() || '';
        const huge = (/huge=(\w+)/.exec(shm) || [null, 'never'])[1];
        console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.release()}; load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}; /dev/shm huge=${huge}`);
        const tail = c.log().split('\n').filter((l) => /re-attached|rebuilding|lost store/.test(l)).slice(-4);
        console.log(tail.join('\n'));
    } finally {
        await c.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    }
})().catch((e) => { console.error(e); process.exit(1); });
