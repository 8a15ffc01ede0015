'use strict';
// Local hardening (issue 10): a local user who prepares the run directory, the supervisor's lock
// or a store's shared-memory segment before presenced starts does not get them adopted. Each
// attack as the issue wrote it; presenced must refuse with a clear message, exit, and touch
// nothing it does not own.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn } = require('node:child_process');
const { freePort, startCluster, BIN } = require('./lib/cluster');

// Runs the embedded cluster with args; resolves {code, log} once it exits (or kills it after
// timeoutMs and resolves with code 'running').
// opts.cluster names the cluster (default: a fresh one); opts.env replaces the environment.
async function runPresenced(args, timeoutMs = 8000, opts = {}) {
    const port = await freePort();
    const cluster = opts.cluster || newCluster();
    const p = spawn(BIN, ['--host', '127.0.0.1', '--port', String(port), '--project', 'p', '--api-key', 'k-' + cluster,
        '--jwt-secret', 's-' + cluster, '--cluster', cluster, '--gateways', '1', ...args],
    { detached: true, env: opts.env || process.env });
    let log = '';
    p.stdout.on('data', (d) => { log += d; });
    p.stderr.on('data', (d) => { log += d; });
    const code = await new Promise((resolve) => {
        const t = setTimeout(() => { try { process.kill(-p.pid, 'SIGKILL'); } catch {} resolve('running'); }, timeoutMs);
        p.on('exit', (c) => { clearTimeout(t); resolve(c); });
    });
    try { process.kill(-p.pid, 'SIGKILL'); } catch {}
    return { code, log, cluster };
}
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'pd-hard-'));
const newCluster = () => 'hd' + crypto.randomBytes(4).toString('hex');
const envWithout = (name) => Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== name));

test('the default run directory in /tmp, made first by someone else, is refused', async (t) => {
    // The attack as the issue wrote it: no --run-dir and no XDG_RUNTIME_DIR, and a local user
    // has made /tmp/presenced-<cluster> before the server starts.
    const env = envWithout('XDG_RUNTIME_DIR');
    for (const [how, prepare, why] of [
        ['world-writable', (d) => { fs.mkdirSync(d); fs.chmodSync(d, 0o777); }, /open mode/],
        ["another user's", (d) => { fs.mkdirSync(d, { mode: 0o700 }); fs.chownSync(d, 65534, 65534); }, /another owner/],
        ['a symlink', (d) => { fs.symlinkSync(fs.mkdtempSync(path.join('/tmp', 'pd-hard-target-')), d); }, /run directory .* refused/],
    ]) {
        const cluster = newCluster();
        const dir = `/tmp/presenced-${cluster}`;
        prepare(dir);
        const target = fs.lstatSync(dir).isSymbolicLink() ? fs.readlinkSync(dir) : null;
        t.after(() => { fs.rmSync(dir, { recursive: true, force: true }); if (target) fs.rmSync(target, { recursive: true, force: true }); });
        const r = await runPresenced([], 8000, { cluster, env });
        assert.notEqual(r.code, 'running', `${how}: presenced ran in ${dir}`);
        assert.notEqual(r.code, 0, how);
        assert.match(r.log, new RegExp(`run directory ${dir} refused`), how);
        assert.match(r.log, why, how);
        assert.deepEqual(fs.readdirSync(dir), [], `${how}: presenced wrote into ${dir}`);
    }
});

test('the run directory defaults to $XDG_RUNTIME_DIR/presenced-<cluster>, made private and removed at the end', async (t) => {
    const xdg = tmp();
    t.after(() => fs.rmSync(xdg, { recursive: true, force: true }));
    const cluster = newCluster();
    const dir = path.join(xdg, `presenced-${cluster}`);
    const port = await freePort();
    const p = spawn(BIN, ['--host', '127.0.0.1', '--port', String(port), '--project', 'p', '--api-key', 'k-' + cluster,
        '--jwt-secret', 's-' + cluster, '--cluster', cluster, '--gateways', '1'],
    { detached: true, env: { ...process.env, XDG_RUNTIME_DIR: xdg } });
    let log = '';
    p.stdout.on('data', (d) => { log += d; });
    p.stderr.on('data', (d) => { log += d; });
    const exited = new Promise((resolve) => p.on('exit', (c) => resolve(c)));
    t.after(() => { try { process.kill(-p.pid, 'SIGKILL'); } catch {} });
    let healthy = false;
    for (let i = 0; i < 150 && !healthy; i++) {
        await new Promise((r) => setTimeout(r, 100));
        try { healthy = (await fetch(`http://127.0.0.1:${port}/v1/health`)).status === 200; } catch {}
    }
    assert.ok(healthy, `the cluster did not get healthy:\n${log.slice(-2000)}`);
    const st = fs.lstatSync(dir);
    assert.ok(st.isDirectory() && (st.mode & 0o777) === 0o700 && st.uid === process.geteuid());
    assert.ok(fs.lstatSync(path.join(dir, 'supervisor.lock')).isFile());
    assert.equal(fs.existsSync(`/tmp/presenced-${cluster}`), false, 'the run directory went to /tmp');
    process.kill(p.pid, 'SIGTERM');
    assert.equal(await exited, 0);
    assert.equal(fs.existsSync(dir), false, 'the run directory was left behind');
});

test('a run directory that is not private is refused', async (t) => {
    const base = tmp();
    t.after(() => fs.rmSync(base, { recursive: true, force: true }));
    const open = path.join(base, 'open');
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777); // anyone could have planted sockets or links in it
    let r = await runPresenced(['--run-dir', open]);
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, 'running');
    assert.match(r.log, /run directory .* refused/);
    assert.deepEqual(fs.readdirSync(open), [], 'presenced wrote into a directory it refused');

    const theirs = path.join(base, 'theirs');
    fs.mkdirSync(theirs, { mode: 0o700 });
    fs.chownSync(theirs, 65534, 65534); // nobody's
    r = await runPresenced(['--run-dir', theirs]);
    assert.notEqual(r.code, 0);
    assert.match(r.log, /another owner/);

    const target = path.join(base, 'target');
    fs.mkdirSync(target, { mode: 0o700 });
    const link = path.join(base, 'link');
    fs.symlinkSync(target, link);
    r = await runPresenced(['--run-dir', link]);
    assert.notEqual(r.code, 0);
    assert.match(r.log, /run directory .* refused/);
    assert.deepEqual(fs.readdirSync(target), [], 'presenced followed the symlink');
});

test('a symlinked supervisor.lock is refused and nothing is created where it points', async (t) => {
    const base = tmp();
    t.after(() => fs.rmSync(base, { recursive: true, force: true }));
    const run = path.join(base, 'run');
    fs.mkdirSync(run, { mode: 0o700 });
    const victim = path.join(base, 'victim-file');
    fs.symlinkSync(victim, path.join(run, 'supervisor.lock'));
    const r = await runPresenced(['--run-dir', run]);
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, 'running');
    assert.match(r.log, /supervisor\.lock refused/);
    assert.equal(fs.existsSync(victim), false, 'the supervisor created a file where the link pointed');
});

test("a store segment pre-created by someone else (mode 0666) is not adopted; the cluster stops instead of crash-looping", async (t) => {
    // The store's segments are /dev/shm/presenced-<cluster>-store-<n> (its table) and
    // ...-store-<n>-outbox (its recent events); the cluster name comes from --cluster.
    for (const [how, suffix, mode, owner] of [
        ['a world-writable table segment', '', 0o666, null],
        ["another user's table segment", '', 0o600, 65534],
        ['a world-writable outbox segment', '-outbox', 0o666, null],
        ['a symbolic link in place of the table segment', '', 0o600, 'link'],
    ]) {
        const base = tmp();
        t.after(() => fs.rmSync(base, { recursive: true, force: true }));
        const run = path.join(base, 'run');
        fs.mkdirSync(run, { mode: 0o700 });
        const cluster = newCluster();
        const seg = `/dev/shm/presenced-${cluster}-store-1${suffix}`;
        const planted = Buffer.alloc(1 << 20, 0x41);
        const file = owner === 'link' ? path.join(base, 'victim') : seg;
        fs.writeFileSync(file, planted, { mode });
        fs.chmodSync(file, mode);
        if (owner === 'link')
            fs.symlinkSync(file, seg);
        else if (owner !== null)
            fs.chownSync(seg, owner, owner);
        t.after(() => { // the planted segment, and any the store made before it refused
            for (const f of fs.readdirSync('/dev/shm'))
                if (f.startsWith(`presenced-${cluster}-`)) try { fs.rmSync(`/dev/shm/${f}`); } catch {}
        });
        const r = await runPresenced(['--run-dir', run], 15000, { cluster });
        assert.notEqual(r.code, 'running', `${how}: the cluster kept running on it:\n${r.log.slice(-2000)}`);
        assert.notEqual(r.code, 0, how);
        assert.doesNotMatch(r.log, /Sanitizer/, how);
        assert.match(r.log, new RegExp(`refusing the shared-memory segment /presenced-${cluster}-store-1${suffix}:`), how);
        assert.match(r.log, /Remove \/dev\/shm\/presenced-/, `${how}: the message says what to do`);
        assert.match(r.log, /store 1 refused to start .* stopping the cluster/, how);
        assert.equal((r.log.match(/started store 1/g) || []).length, 1, `${how}: the store was restarted in a loop`);
        assert.ok(fs.existsSync(seg), `${how}: the foreign segment was removed`);
        assert.ok(fs.readFileSync(file).equals(planted), `${how}: the foreign segment was written to`);
        const st = fs.statSync(file);
        assert.equal(st.mode & 0o777, mode, `${how}: its mode was changed`);
    }
});

test('a private segment of ours is still re-attached across a store restart', async (t) => {
    // the hardening must not cost the crash recovery: a store killed mid-run comes back with its data
    const c = await startCluster({ label: 'hard-reattach', gateways: 1 });
    t.after(() => c.stop());
    const r = await fetch(`${c.endpoint}/presences/keepme`, { method: 'PUT', headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey, 'content-type': 'application/json' }, body: JSON.stringify({ userId: 'keepme', status: 'here' }) });
    assert.equal(r.status, 200);
    for (const n of [1, 2]) {
        const old = c.kill('store', n);
        await c.waitRestarted('store', n, old);
    }
    await c.waitHealthy(15000);
    // /v1/health can be 200 before the broker has seen the second kill: a GET may get the fast
    // 503 of a node that is down until the restarted one has re-attached and registered
    let g;
    for (let i = 0; i < 100; i++) {
        g = await fetch(`${c.endpoint}/presences/keepme`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } });
        if (g.status !== 503) break;
        await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(g.status, 200);
    assert.equal((await g.json()).status, 'here');
});
