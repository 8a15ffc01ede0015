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
async function runPresenced(args, timeoutMs = 8000) {
    const port = await freePort();
    const cluster = 'hd' + crypto.randomBytes(4).toString('hex');
    const p = spawn(BIN, ['--host', '127.0.0.1', '--port', String(port), '--project', 'p', '--api-key', 'k-' + cluster,
        '--jwt-secret', 's-' + cluster, '--cluster', cluster, '--gateways', '1', ...args], { detached: true });
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
    const base = tmp();
    t.after(() => fs.rmSync(base, { recursive: true, force: true }));
    const run = path.join(base, 'run');
    fs.mkdirSync(run, { mode: 0o700 });
    const cluster = 'hd' + crypto.randomBytes(4).toString('hex');
    const seg = `/dev/shm/presenced-${cluster}-store-1`;
    const planted = Buffer.alloc(1 << 20, 0x41);
    fs.writeFileSync(seg, planted, { mode: 0o666 });
    fs.chmodSync(seg, 0o666);
    t.after(() => { try { fs.rmSync(seg); } catch {} });
    const port = await freePort();
    const p = spawn(BIN, ['--host', '127.0.0.1', '--port', String(port), '--project', 'p', '--api-key', 'k-' + cluster,
        '--jwt-secret', 's-' + cluster, '--cluster', cluster, '--gateways', '1', '--run-dir', run], { detached: true });
    let log = '';
    p.stderr.on('data', (d) => { log += d; });
    p.stdout.on('data', (d) => { log += d; });
    const code = await new Promise((resolve) => {
        const tm = setTimeout(() => { try { process.kill(-p.pid, 'SIGKILL'); } catch {} resolve('running'); }, 15000);
        p.on('exit', (c) => { clearTimeout(tm); resolve(c); });
    });
    assert.notEqual(code, 'running', `the cluster kept running on a foreign segment:\n${log.slice(-2000)}`);
    assert.notEqual(code, 0);
    assert.match(log, /refusing the shared-memory segment .*store-1/);
    assert.match(log, /refused to start .* stopping the cluster/);
    assert.equal((log.match(/started store 1/g) || []).length, 1, 'the store was restarted in a loop');
    assert.ok(fs.readFileSync(seg).equals(planted), 'the foreign segment was written to');
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
    const g = await fetch(`${c.endpoint}/presences/keepme`, { headers: { 'X-Appwrite-Project': c.project, 'X-Appwrite-Key': c.apiKey } });
    assert.equal(g.status, 200);
    assert.equal((await g.json()).status, 'here');
});
