'use strict';
// A presenced cluster spread over network namespaces, like pods on separate hosts: every role
// runs as its own `presenced <role>` process in its own namespace with its own address, over
// tcp:// with CURVE (a key set from `presencectl cluster-keys`), and the namespaces are joined
// by veth pairs on one bridge. The test process itself is a client on the host side of the
// bridge (the SDKs connect to the gateways' addresses), and an extra namespace holds no key at
// all, for attackers.
//
//   host (root namespace)   bridge <prefix>-sw   10.213.X.1/24
//   ├─ <prefix>-br  broker      10.213.X.2   front :7000, back :7001, bus-in :7002, bus-out :7003
//   ├─ <prefix>-s1  store-1     10.213.X.3   front :7004 (bound on *, advertised at its address)
//   ├─ <prefix>-s2  store-2     10.213.X.4   front :7004
//   ├─ <prefix>-rp  reaper      10.213.X.5
//   ├─ <prefix>-g1  gateway-1   10.213.X.6   :8080
//   ├─ <prefix>-g2  gateway-2   10.213.X.7   :8080
//   └─ <prefix>-at  attacker    10.213.X.9   (no keys)
//
// Each name above is both a namespace and the host-side end of its veth pair (the end inside
// is eth0); the bridge is <prefix>-sw. <prefix> is pdt<pid in base 36>-<n>, unique per run,
// and X is a random /24 of 10.213/16 that no address or route of the host overlaps.
//
// Cleanup: stop() ends every process it started by PID (SIGTERM, then SIGKILL), kills whatever
// else still runs in the namespaces (`ip netns pids`), deletes the namespaces, the host-side
// veths and the bridge, the shared-memory segments and the run directory. The same runs
// synchronously on process exit and on SIGINT/SIGTERM/SIGHUP, and at start the harness removes
// what a run that died with SIGKILL left behind (namespaces pdt<pid>-… whose pid is gone).
const { spawn, execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { BIN, sleep } = require('./cluster');

const LOG_DIR = path.resolve(__dirname, '..', 'logs');
const CTL = path.join(path.dirname(BIN), 'presencectl');
const ATTACK = path.join(path.dirname(BIN), 'tests', 'pd_attack');

const PORTS = { front: 7000, back: 7001, busIn: 7002, busOut: 7003, store: 7004, http: 8080 };
const HOSTS = { broker: 2, 'store-1': 3, 'store-2': 4, reaper: 5, 'gateway-1': 6, 'gateway-2': 7, attacker: 9 };
const SHORT = { broker: 'br', 'store-1': 's1', 'store-2': 's2', reaper: 'rp', 'gateway-1': 'g1', 'gateway-2': 'g2', attacker: 'at' };

function ip(args, opts = {}) {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
// ip that may fail (cleanup): never throws
function ipQuiet(args) {
    spawnSync('ip', args, { stdio: 'ignore' });
}

// Why this machine cannot run the tests (a sentence), or null when it can.
function unavailable() {
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
        return 'needs root (network namespaces, veth pairs and a bridge): run the tests as root to include them';
    }
    const probe = `pdt${process.pid.toString(36)}-probe`;
    try {
        ip(['netns', 'add', probe]);
    } catch (e) {
        return `\`ip netns add\` failed (${String(e.stderr || e.message).trim().split('\n')[0]}): no network namespaces here`;
    }
    ipQuiet(['netns', 'del', probe]);
    return null;
}

const alive = (pid) => { try { process.kill(pid, 0); return true; } catch (e) { return e.code === 'EPERM'; } };

// Namespaces and links of runs whose process is gone (killed before it could clean up).
function removeStale() {
    let names = [];
    try { names = ip(['netns', 'list']).split('\n').map((l) => l.split(' ')[0]).filter(Boolean); } catch { return; }
    const dead = new Set();
    for (const n of names) {
        const m = /^pdt([0-9a-z]+)-(\d+|probe)(-|$)/.exec(n);
        if (m && !alive(parseInt(m[1], 36))) dead.add(`pdt${m[1]}-${m[2]}`);
    }
    for (const prefix of dead) {
        for (const n of names.filter((x) => x.startsWith(prefix))) killNamespace(n);
        for (const l of links(prefix)) ipQuiet(['link', 'del', l]);
        removeFiles(prefix);
    }
}

// The shared-memory segments and run directory of topology prefix.
function removeFiles(prefix) {
    const cluster = prefix.replace(/-/g, '');
    for (const [dir, start] of [['/dev/shm', `presenced-${cluster}-`], [os.tmpdir(), `pd-netns-${prefix}-`]]) {
        try {
            for (const f of fs.readdirSync(dir)) if (f.startsWith(start)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
        } catch {}
    }
}

function links(prefix) {
    try {
        return ip(['-o', 'link', 'show']).split('\n')
            .map((l) => (/^\d+:\s+([^:@\s]+)/.exec(l) || [])[1])
            .filter((n) => n && n.startsWith(prefix));
    } catch { return []; }
}

// SIGKILLs whatever runs in namespace ns, then deletes it.
function killNamespace(ns) {
    try {
        for (const p of ip(['netns', 'pids', ns]).split('\n').filter(Boolean)) {
            try { process.kill(Number(p), 'SIGKILL'); } catch {}
        }
    } catch {}
    ipQuiet(['netns', 'del', ns]);
}

// [first, last] addresses of an IPv4 CIDR as integers
function cidrRange(cidr) {
    const [a, bits = '32'] = cidr.split('/');
    const n = a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const size = 2 ** (32 - Number(bits));
    const first = n - (n % size);
    return [first, first + size - 1];
}

// A 10.213.X.0/24 that no address or route of the host overlaps.
function freeSubnet() {
    const used = [];
    for (const args of [['-4', '-o', 'addr', 'show'], ['-4', 'route', 'show', 'table', 'all']]) {
        let text = '';
        try { text = ip(args); } catch {}
        for (const m of text.matchAll(/(?:^|\s)(\d+\.\d+\.\d+\.\d+(?:\/\d+)?)/g)) {
            if (m[1] !== '0.0.0.0/0') used.push(cidrRange(m[1].includes('/') ? m[1] : `${m[1]}/32`));
        }
    }
    for (let i = 0; i < 64; i++) {
        const x = 1 + crypto.randomInt(254);
        const [lo, hi] = cidrRange(`10.213.${x}.0/24`);
        if (!used.some(([a, b]) => a <= hi && lo <= b)) return `10.213.${x}`;
    }
    throw new Error('no free /24 in 10.213.0.0/16');
}

// Whether bridged frames go through iptables' FORWARD chain (br_netfilter loaded and on).
function bridgeFiltered() {
    try { return fs.readFileSync('/proc/sys/net/bridge/bridge-nf-call-iptables', 'utf8').trim() === '1'; } catch { return false; }
}

// Every live topology of this process, torn down on any exit.
const live = new Set();
function teardownAllSync() {
    for (const n of live) n._teardownSync();
}
process.on('exit', teardownAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
        teardownAllSync();
        process.exit(128 + (os.constants.signals[sig] || 1));
    });
}

let runs = 0;

class NetnsCluster {
    constructor(opts = {}) {
        this.project = opts.project ?? 'netns-project';
        this.apiKey = opts.apiKey ?? 'key_' + crypto.randomBytes(24).toString('hex');
        this.jwtSecret = opts.jwtSecret ?? 'jwt_' + crypto.randomBytes(24).toString('hex');
        this.label = opts.label ?? 'netns';
        this.prefix = `pdt${process.pid.toString(36)}-${runs++}`;
        this.cluster = this.prefix.replace(/-/g, '');
        this.nodes = Object.keys(HOSTS); // namespaces: one per role, and the attacker
        this.procs = new Map();          // role name -> {pid, proc, exited, exitPromise}
        this.children = new Set();       // every process started, for the final kill
        this.logs = new Set();           // labels of the logs in the run directory
        this.failed = false;
    }

    ns(name) { return `${this.prefix}-${SHORT[name]}`; }
    // the host-side end of name's veth pair (on the bridge)
    veth(name) { return this.ns(name); }
    addr(name) { return `${this.subnet}.${HOSTS[name]}`; }
    tcp(name, port) { return `tcp://${this.addr(name)}:${port}`; }

    // A cluster-like view of gateway n, for the SDK helpers of lib/sdk.js.
    gateway(n) {
        const url = `http://${this.addr(`gateway-${n}`)}:${PORTS.http}`;
        return { url, endpoint: `${url}/v1`, project: this.project, apiKey: this.apiKey, jwtSecret: this.jwtSecret, port: PORTS.http };
    }

    async start() {
        removeStale();
        live.add(this);
        this.runDir = fs.mkdtempSync(path.join(os.tmpdir(), `pd-netns-${this.prefix}-`));
        this.keys = path.join(this.runDir, 'keys');
        try {
            execFileSync(CTL, ['cluster-keys', '--out', this.keys, '--stores', '2', '--gateways', '2'], { stdio: 'pipe' });
            this.subnet = freeSubnet();
            this._topology();
            this.startRole('broker');
            for (const n of [1, 2]) this.startRole(`store-${n}`);
            this.startRole('reaper');
            for (const n of [1, 2]) this.startRole(`gateway-${n}`);
            await this.waitHealthy(30000);
        } catch (e) {
            this.failed = true;
            if (bridgeFiltered()) {
                e.message += ' (bridged traffic passes through iptables here, net.bridge.bridge-nf-call-iptables=1:' +
                    ' a FORWARD policy of DROP, as Docker sets, cuts the namespaces off from each other)';
            }
            process.stderr.write(`\n--- the netns cluster did not come up: ${String(e.stderr || e.message).trim()}\n${this.logTail()}\n---\n`);
            await this.stop();
            throw e;
        }
        return this;
    }

    _topology() {
        const br = `${this.prefix}-sw`;
        ip(['link', 'add', br, 'type', 'bridge']);
        ip(['addr', 'add', `${this.subnet}.1/24`, 'dev', br]);
        ip(['link', 'set', br, 'up']);
        for (const name of this.nodes) {
            const ns = this.ns(name);
            ip(['netns', 'add', ns]);
            ip(['link', 'add', this.veth(name), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
            ip(['link', 'set', this.veth(name), 'master', br]);
            ip(['link', 'set', this.veth(name), 'up']);
            ip(['-n', ns, 'addr', 'add', `${this.addr(name)}/24`, 'dev', 'eth0']);
            ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
            ip(['-n', ns, 'link', 'set', 'lo', 'up']);
        }
    }

    // A host's own run directory (its role's heartbeat file for `presenced probe`), private.
    hostDir(name) {
        const dir = path.join(this.runDir, 'hosts', name);
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
        return dir;
    }

    // The command line of a role: what cmd/supervisor.c passes, with tcp:// endpoints.
    _args(name) {
        const [role, node] = name.split('-');
        const a = [role];
        if (node) a.push('--node', node);
        a.push('--verbose', '1', '--cluster', this.cluster, '--keys', this.keys, '--run-dir', this.hostDir(name));
        const front = this.tcp('broker', PORTS.front), busOut = this.tcp('broker', PORTS.busOut);
        if (role === 'broker') {
            a.push('--broker-front', front, '--broker-back', this.tcp('broker', PORTS.back),
                '--bus-in', this.tcp('broker', PORTS.busIn), '--bus-out', busOut, '--stores', '2');
        } else if (role === 'store') {
            a.push('--broker-back', this.tcp('broker', PORTS.back), '--bus-in', this.tcp('broker', PORTS.busIn),
                '--shm', `/presenced-${this.cluster}-store-${node}`,
                '--store-front', `tcp://*:${PORTS.store}`, '--store-advertise', this.tcp(name, PORTS.store),
                '--store-capacity', '65536', '--store-arena', String(64 << 20));
        } else if (role === 'reaper') {
            a.push('--broker-front', front, '--bus-out', busOut);
        } else {
            a.push('--host', '0.0.0.0', '--port', String(PORTS.http), '--broker-front', front, '--bus-out', busOut);
        }
        return a;
    }

    // Starts role `name` ("store-1") in its namespace; a second call starts it again.
    startRole(name) {
        const old = this.procs.get(name);
        if (old && !old.exited) throw new Error(`${name} is still running (pid ${old.pid})`);
        const env = {};
        if (name.startsWith('gateway')) { // projects through the environment, as the supervisor does
            Object.assign(env, { PRESENCED_PROJECT: this.project, PRESENCED_API_KEY: this.apiKey, PRESENCED_JWT_SECRET: this.jwtSecret });
        }
        const p = this.spawn(name, name, BIN, this._args(name), env);
        this.procs.set(name, p);
        return p;
    }

    // Starts file with args in namespace ns (a role name), logging to <label>.log in the run
    // directory: {name, pid, proc, exited, exitPromise}. The process is killed by stop().
    spawn(ns, label, file, args, env = {}) {
        const log = path.join(this.runDir, `${label}.log`);
        const fd = fs.openSync(log, 'a');
        // `ip netns exec` execs the command: the pid is the command's own
        const proc = spawn('ip', ['netns', 'exec', this.ns(ns), file, ...args],
            { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
        fs.closeSync(fd);
        const p = { name: label, pid: proc.pid, proc, exited: null };
        p.exitPromise = new Promise((resolve) => proc.on('exit', (code, signal) => { p.exited = { code, signal }; resolve(p.exited); }));
        proc.on('error', (e) => { p.exited = { error: e.message }; });
        this.children.add(proc);
        this.logs.add(label);
        return p;
    }

    // The log of a process started here.
    log(label) {
        try { return fs.readFileSync(path.join(this.runDir, `${label}.log`), 'utf8'); } catch { return ''; }
    }

    pid(name) {
        const p = this.procs.get(name);
        return p && !p.exited ? p.pid : undefined;
    }

    // Sends signal to role `name` and waits for it to exit. Returns the pid.
    async kill(name, signal = 'SIGKILL', timeoutMs = 5000) {
        const p = this.procs.get(name);
        if (!p || p.exited) throw new Error(`${name} is not running`);
        process.kill(p.pid, signal);
        const r = await Promise.race([p.exitPromise, sleep(timeoutMs).then(() => null)]);
        if (!r) throw new Error(`${name} (pid ${p.pid}) did not exit within ${timeoutMs} ms of ${signal}`);
        return p.pid;
    }

    // Cuts role name's host off the bridge (its cable pulled), or plugs it back.
    link(name, up) { ip(['link', 'set', this.veth(name), up ? 'up' : 'down']); }

    // Takes away (or gives back) host from's route to host to, every link staying up: a
    // partition between two hosts that the rest of the network does not see.
    route(from, to, up) { ip(['-n', this.ns(from), 'route', up ? 'del' : 'add', 'prohibit', `${this.addr(to)}/32`]); }

    // Runs a command in a namespace to its end: {status, stdout, stderr}.
    exec(name, file, args, timeoutMs = 30000) {
        return new Promise((resolve, reject) => {
            const proc = spawn('ip', ['netns', 'exec', this.ns(name), file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
            this.children.add(proc);
            let stdout = '', stderr = '';
            proc.stdout.on('data', (d) => { stdout += d; });
            proc.stderr.on('data', (d) => { stderr += d; });
            const timer = setTimeout(() => { try { proc.kill('SIGKILL'); } catch {} }, timeoutMs);
            proc.on('error', reject);
            proc.on('close', (status, signal) => { clearTimeout(timer); resolve({ status, signal, stdout, stderr }); });
        });
    }

    // GET /v1/health on gateway n: the status (0 when no answer).
    async health(n, timeoutMs = 2000) {
        try {
            const r = await fetch(`${this.gateway(n).endpoint}/health`, { signal: AbortSignal.timeout(timeoutMs) });
            await r.arrayBuffer();
            return r.status;
        } catch { return 0; }
    }

    async waitHealthy(timeoutMs = 20000, gateways = [1, 2]) {
        const deadline = Date.now() + timeoutMs;
        let last;
        for (;;) {
            for (const [name, p] of this.procs) if (p.exited) throw new Error(`${name} exited: ${JSON.stringify(p.exited)}`);
            last = await Promise.all(gateways.map((n) => this.health(n, 1000)));
            if (last.every((s) => s === 200)) return;
            if (Date.now() > deadline) throw new Error(`not healthy after ${timeoutMs} ms (/v1/health of gateways ${gateways}: ${last})`);
            await sleep(100);
        }
    }

    async metrics(n) {
        const r = await fetch(`${this.gateway(n).url}/metrics`, { signal: AbortSignal.timeout(5000) });
        const text = await r.text();
        if (r.status !== 200) throw new Error(`/metrics of gateway-${n} answered ${r.status}: ${text.slice(0, 200)}`);
        return text;
    }

    logTail(bytes = 3000) {
        let out = '';
        for (const label of this.logs) out += `== ${label}\n${this.log(label).slice(-bytes)}\n`;
        return out;
    }

    keepLogs() {
        try {
            fs.mkdirSync(LOG_DIR, { recursive: true });
            const dst = path.join(LOG_DIR, `${this.label}-${this.cluster}.log`);
            fs.writeFileSync(dst, this.logTail(1 << 20));
            process.stderr.write(`# presenced logs kept: ${dst}\n`);
        } catch {}
    }

    // SIGTERM every role (gateways first, like the supervisor), SIGKILL what is left, then the
    // namespaces, links, segments and run directory.
    async stop() {
        if (this.stopped) return;
        const order = ['gateway-1', 'gateway-2', 'reaper', 'store-1', 'store-2', 'broker'];
        for (const name of order) {
            const p = this.procs.get(name);
            if (p && !p.exited) { try { process.kill(p.pid, 'SIGTERM'); } catch {} }
        }
        await Promise.race([Promise.all([...this.procs.values()].map((p) => p.exitPromise)), sleep(5000)]);
        if ([...this.procs.values()].some((p) => !p.exited)) this.failed = true; // a role that ignores SIGTERM
        this._teardownSync();
    }

    _teardownSync() {
        if (this.stopped) return;
        this.stopped = true;
        // only those still running: the pid of one that exited may belong to someone else now
        for (const c of this.children) if (c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch {} }
        for (const name of this.nodes) killNamespace(this.ns(name));
        for (const l of links(this.prefix)) ipQuiet(['link', 'del', l]);
        if (this.failed || process.env.PRESENCED_E2E_KEEP_LOGS) this.keepLogs();
        removeFiles(this.prefix);
        live.delete(this);
    }

    // What is left of this topology on the machine (for the cleanup test): names of
    // namespaces and links with this prefix.
    leftovers() {
        let ns = [];
        try { ns = ip(['netns', 'list']).split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(this.prefix)); } catch {}
        return [...ns, ...links(this.prefix)];
    }
}

const { shardOwner } = require('./shard');

module.exports = { NetnsCluster, unavailable, shardOwner, PORTS, CTL, ATTACK };
