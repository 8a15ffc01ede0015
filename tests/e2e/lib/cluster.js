'use strict';
// Starts a real presenced cluster (supervisor + broker + store nodes + gateways + reaper as
// separate processes) on a free loopback port, and gives the tests handles on it: process ids
// per role, signals, health, metrics, and a clean stop. Every cluster gets its own run-dir and
// cluster name, so several clusters (and other people's servers) can share the machine.
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');

const E2E_DIR = path.resolve(__dirname, '..');
const REPO = path.resolve(E2E_DIR, '..', '..');
const BIN = process.env.PRESENCED_BIN || path.join(REPO, 'build', 'presenced');
const LOG_DIR = path.join(E2E_DIR, 'logs');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.unref();
        s.on('error', reject);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

// Every live cluster of this process, so that an exit for any reason (a failed assertion, an
// exception, Ctrl-C, the test runner's SIGTERM) kills their whole process groups.
const live = new Set();
function killAllSync() {
    for (const c of live) c._killGroupSync();
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
        killAllSync();
        process.exit(128 + (os.constants.signals[sig] || 1));
    });
}

// Prometheus text format -> [{name, labels, value}]
function parseMetrics(text) {
    const samples = [];
    for (const line of text.split('\n')) {
        if (!line || line.startsWith('#')) continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$/.exec(line);
        if (!m) continue;
        const labels = {};
        if (m[3]) {
            const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
            let l;
            while ((l = re.exec(m[3]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
        }
        samples.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return {
        text,
        samples,
        // all samples of a metric whose labels include `match`
        find(name, match = {}) {
            return samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === String(v)));
        },
        // the single value of a metric with these labels (undefined when absent)
        get(name, match = {}) {
            const f = this.find(name, match);
            return f.length ? f[0].value : undefined;
        },
        sum(name, match = {}) {
            return this.find(name, match).reduce((a, s) => a + s.value, 0);
        },
    };
}

class Cluster {
    constructor(opts) {
        this.stores = opts.stores ?? 2;
        this.gateways = opts.gateways ?? 2;
        this.project = opts.project ?? 'e2e-project';
        this.apiKey = opts.apiKey ?? 'key_' + crypto.randomBytes(24).toString('hex');
        this.jwtSecret = opts.jwtSecret ?? 'jwt_' + crypto.randomBytes(24).toString('hex');
        this.label = opts.label ?? 'cluster';
        this.extraArgs = opts.args ?? [];
        this.configJson = opts.config;
        this.env = opts.env ? { ...process.env, ...opts.env } : process.env;
        this.name = 'e2e' + process.pid.toString(36) + crypto.randomBytes(3).toString('hex');
        this.failed = false;
        this.exited = null; // {code, signal} once the supervisor is gone
    }

    get url() { return `http://127.0.0.1:${this.port}`; }
    get endpoint() { return `${this.url}/v1`; }

    async start() {
        if (!fs.existsSync(BIN)) throw new Error(`presenced binary not found at ${BIN} (build it, or set PRESENCED_BIN)`);
        this.port = await freePort();
        this.runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-e2e-'));
        if (this.configJson) { // a projects file (--config), written into the run-dir
            const cfg = path.join(this.runDir, 'projects.json');
            fs.writeFileSync(cfg, JSON.stringify(this.configJson, null, 2));
            this.extraArgs = [...this.extraArgs, '--config', cfg];
        }
        this.logPath = path.join(this.runDir, 'server.log');
        const fd = fs.openSync(this.logPath, 'a');
        this.args = [
            '--host', '127.0.0.1', '--port', String(this.port),
            '--project', this.project, '--api-key', this.apiKey, '--jwt-secret', this.jwtSecret,
            '--stores', String(this.stores), '--gateways', String(this.gateways),
            '--run-dir', this.runDir, '--cluster', this.name,
            ...this.extraArgs,
        ];
        this.proc = spawn(BIN, this.args, { detached: true, stdio: ['ignore', fd, fd], env: this.env });
        fs.closeSync(fd);
        this.pid = this.proc.pid;
        live.add(this);
        this.exitPromise = new Promise((resolve) => {
            this.proc.on('exit', (code, signal) => {
                this.exited = { code, signal };
                resolve(this.exited);
            });
        });
        this.proc.on('error', (e) => { this.spawnError = e; });
        try {
            await this.waitHealthy(20000);
        } catch (e) {
            this.failed = true;
            process.stderr.write(`\n--- presenced failed to become healthy; ${this.logPath}:\n${this.log().slice(-8000)}\n---\n`);
            await this.stop();
            throw e;
        }
        return this;
    }

    log() {
        try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
    }

    // GET /v1/health -> status code (0 when no answer)
    async health(timeoutMs = 2000) {
        try {
            const r = await fetch(`${this.endpoint}/health`, { signal: AbortSignal.timeout(timeoutMs) });
            await r.arrayBuffer();
            return r.status;
        } catch {
            return 0;
        }
    }

    async waitHealthy(timeoutMs = 20000) {
        const deadline = Date.now() + timeoutMs;
        let last = 0;
        while (Date.now() < deadline) {
            if (this.spawnError) throw this.spawnError;
            if (this.exited) throw new Error(`presenced exited early: ${JSON.stringify(this.exited)}`);
            last = await this.health(1000);
            if (last === 200) return;
            await sleep(100);
        }
        throw new Error(`cluster not healthy after ${timeoutMs} ms (last /v1/health status: ${last})`);
    }

    async waitStatus(want, timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        let last;
        while (Date.now() < deadline) {
            last = await this.health(1000);
            if (last === want) return last;
            await sleep(50);
        }
        return last;
    }

    // Processes of this cluster: [{pid, ppid, args, role, node}]
    procs() {
        const out = execFileSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' });
        const res = [];
        for (const line of out.split('\n')) {
            const m = /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(line);
            if (!m) continue;
            const pid = Number(m[1]), ppid = Number(m[2]), args = m[3];
            const tok = args.split(/\s+/);
            const ci = tok.indexOf('--cluster');
            const mine = (ci >= 0 && tok[ci + 1] === this.name) || (ppid === this.pid && pid !== this.pid);
            if (!mine || pid === this.pid) continue;
            if (/<defunct>/.test(args)) continue;
            const ni = tok.indexOf('--node');
            res.push({ pid, ppid, args, role: tok[1], node: ni >= 0 ? Number(tok[ni + 1]) : undefined });
        }
        return res;
    }

    // pids of a role (and node, for store/gateway)
    pids(role, node) {
        return this.procs().filter((p) => p.role === role && (node === undefined || p.node === node)).map((p) => p.pid);
    }

    // Sends signal to every process of role/node; returns the pids signalled.
    kill(role, node, signal = 'SIGKILL') {
        const pids = this.pids(role, node);
        for (const pid of pids) {
            try { process.kill(pid, signal); } catch {}
        }
        return pids;
    }

    // Waits until role/node runs under a pid that is not in `oldPids`.
    async waitRestarted(role, node, oldPids, timeoutMs = 15000) {
        const deadline = Date.now() + timeoutMs;
        while (Date.now() < deadline) {
            const now = this.pids(role, node);
            if (now.length && now.every((p) => !oldPids.includes(p))) return now;
            await sleep(25);
        }
        throw new Error(`${role} ${node ?? ''} was not restarted within ${timeoutMs} ms (old pids ${oldPids})`);
    }

    async metrics() {
        const r = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(5000) });
        const text = await r.text();
        if (r.status !== 200) throw new Error(`/metrics answered ${r.status}: ${text.slice(0, 200)}`);
        return parseMetrics(text);
    }

    // The sum over every gateway of a per-gateway counter (label `gateway`): the gateways share
    // the port, and each one's /metrics has its own counters only, so /metrics is asked on new
    // connections until every gateway has answered (the latest value of each is summed).
    async gatewaySum(name, match = {}) {
        const latest = new Map();
        for (let i = 0; i < 200 && latest.size < this.gateways; i++) {
            const text = await new Promise((resolve, reject) => {
                const req = require('node:http').get(`${this.url}/metrics`, { agent: false }, (r) => {
                    let b = '';
                    r.setEncoding('utf8');
                    r.on('data', (d) => { b += d; });
                    r.on('end', () => resolve(b));
                });
                req.on('error', reject);
                req.setTimeout(5000, () => req.destroy(new Error('/metrics timed out')));
            });
            const here = new Map(); // this gateway's samples, summed
            for (const smp of parseMetrics(text).find(name, match))
                if (smp.labels.gateway !== undefined)
                    here.set(smp.labels.gateway, (here.get(smp.labels.gateway) ?? 0) + smp.value);
            for (const [g, v] of here) latest.set(g, v);
        }
        if (latest.size < this.gateways) throw new Error(`${name}: heard ${latest.size} of ${this.gateways} gateways`);
        return [...latest.values()].reduce((a, v) => a + v, 0);
    }

    // Polls /metrics until pred(metrics) is true (gauges such as the store record counts are
    // refreshed periodically, not on every write). Returns the last metrics either way.
    async waitMetrics(pred, timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        let m;
        for (;;) {
            m = await this.metrics();
            if (pred(m) || Date.now() > deadline) return m;
            await sleep(100);
        }
    }

    _killGroupSync() {
        if (!this.pid) return;
        try { process.kill(-this.pid, 'SIGCONT'); } catch {}
        try { process.kill(-this.pid, 'SIGKILL'); } catch {}
        // children that left the group (should not happen) are found by cluster name
        try { for (const p of this.procs()) { try { process.kill(p.pid, 'SIGKILL'); } catch {} } } catch {}
        this._removeShm();
        if (!this.stopped && this.runDir) { // interrupted: keep the log, drop the run-dir
            this.stopped = true;
            this.keepLog();
            try { fs.rmSync(this.runDir, { recursive: true, force: true }); } catch {}
        }
    }

    _removeShm() {
        try {
            for (const f of fs.readdirSync('/dev/shm')) {
                if (f.startsWith(`presenced-${this.name}-`)) fs.rmSync(path.join('/dev/shm', f), { force: true });
            }
        } catch {}
    }

    // SIGTERM, wait, SIGKILL fallback. Returns {code, signal, leftovers, forced, shmLeft: the
    // cluster's /dev/shm segments still there when it had stopped (then removed)}.
    async stop(timeoutMs = 10000) {
        if (!this.pid || this.stopped) return this.stopResult;
        this.stopped = true;
        let forced = false;
        if (!this.exited) {
            try { process.kill(this.pid, 'SIGCONT'); } catch {}
            try { process.kill(this.pid, 'SIGTERM'); } catch {}
            const t = await Promise.race([this.exitPromise, sleep(timeoutMs).then(() => null)]);
            if (!t) {
                forced = true;
                try { process.kill(-this.pid, 'SIGKILL'); } catch {}
                await Promise.race([this.exitPromise, sleep(3000)]);
            }
        }
        // anything of this cluster still alive after the supervisor is gone
        let leftovers = [];
        for (let i = 0; i < 20; i++) {
            leftovers = this.procs();
            if (!leftovers.length) break;
            await sleep(100);
        }
        for (const p of leftovers) { try { process.kill(p.pid, 'SIGKILL'); } catch {} }
        try { process.kill(-this.pid, 'SIGKILL'); } catch {}
        live.delete(this);
        this.finalLog = this.log();
        if (this.failed || process.env.PRESENCED_E2E_KEEP_LOGS) this.keepLog();
        try { fs.rmSync(this.runDir, { recursive: true, force: true }); } catch {}
        let shmLeft = [];
        try { shmLeft = fs.readdirSync('/dev/shm').filter((f) => f.startsWith(`presenced-${this.name}-`)); } catch {}
        this._removeShm();
        this.stopResult = { ...(this.exited || {}), leftovers, forced, shmLeft };
        return this.stopResult;
    }

    keepLog() {
        try {
            fs.mkdirSync(LOG_DIR, { recursive: true });
            const dst = path.join(LOG_DIR, `${this.label}-${this.name}.log`);
            if (fs.existsSync(this.logPath)) fs.copyFileSync(this.logPath, dst);
            else fs.writeFileSync(dst, this.finalLog || '');
            process.stderr.write(`# presenced log kept: ${dst}\n`);
        } catch {}
    }
}

async function startCluster(opts = {}) {
    const c = new Cluster(opts);
    await c.start();
    return c;
}

// node:test glue: one cluster per file, its log kept when any test of the file fails.
function useCluster(nodeTest, opts = {}) {
    const holder = { cluster: null };
    nodeTest.before(async () => { holder.cluster = await startCluster(opts); }, { timeout: 40000 });
    nodeTest.afterEach((t) => {
        const c = holder.cluster;
        if (!c || t.passed !== false) return;
        if (c.stopped && !c.failed) c.keepLog(); // failed after an explicit stop()
        c.failed = true;
    });
    nodeTest.after(async () => { if (holder.cluster) await holder.cluster.stop(); }, { timeout: 30000 });
    return holder;
}

module.exports = { Cluster, startCluster, useCluster, parseMetrics, freePort, sleep, BIN, REPO };
