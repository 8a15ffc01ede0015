'use strict';
// Kubernetes (deploy/k8s): what a platform team checks in the kustomize base and the example
// overlay (rendered with kubectl; skipped with a message when there is none), then the
// manifests run: the Secrets make-secrets.sh makes, laid out the way the kubelet mounts them,
// and every role started with its container's own arguments (endpoints moved to free loopback
// ports, each role in its own run directory, like pods). Liveness (`presenced probe`, as the
// exec probes run it), readiness (/v1/health/ready), the refusals (placeholder secrets, a
// missing key), and a gateway stopped as Kubernetes stops one, against the embedded cluster.
const test = require('node:test');
const { describe, it, before, after } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn, spawnSync } = require('node:child_process');
const YAML = require('yaml');

const R = require('./lib/rtclient');
const { useCluster, sleep, freePort, BIN, REPO } = require('./lib/cluster');
const { nodeClient, webClient, mintJwt } = require('./lib/sdk');

const HAVE_KUBECTL = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0;
const NO_KUBECTL = HAVE_KUBECTL ? false
    : 'kubectl is not installed (Debian: apt-get install kubernetes-client): the manifests are not rendered or checked';
if (!HAVE_KUBECTL) process.stderr.write(`# k8s.test.js: SKIPPING the manifest checks: ${NO_KUBECTL}\n`);
const BINDIR = path.dirname(BIN);
const OVERLAY = path.join(REPO, 'deploy/k8s/overlays/example');
const ROLES = ['broker', 'store', 'reaper', 'gateway'];

function render(dir) {
    const r = spawnSync('kubectl', ['kustomize', path.join(REPO, dir)], { encoding: 'utf8' });
    assert.equal(r.status, 0, `kubectl kustomize ${dir}: ${r.stderr}`);
    return YAML.parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean);
}

// The Secrets of the example overlay's make-secrets.sh (--print), from a fresh key set and a
// projects file made from the template. Returns {secrets: {name: {file: Buffer}}, apiKey, dir}.
function makeSecrets() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-k8s-'));
    const r = spawnSync(path.join(OVERLAY, 'make-secrets.sh'), ['--print', path.join(dir, 'keys'), path.join(dir, 'projects.json')],
        { encoding: 'utf8', env: { ...process.env, PATH: `${BINDIR}:${process.env.PATH}` } });
    assert.equal(r.status, 0, `make-secrets.sh: ${r.stderr}`);
    const secrets = {};
    for (const doc of YAML.parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean)) {
        assert.equal(doc.kind, 'Secret');
        secrets[doc.metadata.name] = Object.fromEntries(Object.entries(doc.data).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
    }
    const key = /^(pd_[0-9a-f]+)$/m.exec(r.stderr);
    assert.ok(key, `the API key printed once by presencectl key create: ${r.stderr}`);
    assert.doesNotMatch(r.stdout, new RegExp(key[1]), 'the API key itself is in no Secret (only its hash)');
    return { secrets, apiKey: key[1], dir };
}

// A Secret volume as the kubelet lays it out: the files in a timestamped directory, mode 0440
// (defaultMode 288), `..data` pointing at it and one symlink per key through `..data`.
function mountSecret(secret, dir, mode) {
    const ts = path.join(dir, '..2026_12_04_00_00_00.000000001');
    fs.mkdirSync(ts, { recursive: true });
    for (const [name, buf] of Object.entries(secret)) {
        fs.writeFileSync(path.join(ts, name), buf);
        fs.chmodSync(path.join(ts, name), mode);
        fs.symlinkSync(path.join('..data', name), path.join(dir, name));
    }
    fs.symlinkSync(path.basename(ts), path.join(dir, '..data'));
    return dir;
}

const workloads = (objs) => objs.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
const compOf = (w) => w.spec.template.metadata.labels['app.kubernetes.io/component'];
const podOf = (objs, comp) => workloads(objs).find((w) => compOf(w) === comp);
const argAfter = (args, flag) => args[args.indexOf(flag) + 1];

function reviewerChecks(label, dir) {
    describe(`${label}: what a platform reviewer checks (kubectl kustomize ${dir})`, { skip: NO_KUBECTL }, () => {
        let objs, made;
        before(() => {
            objs = render(dir);
            made = makeSecrets();
        });
        after(() => { if (made) fs.rmSync(made.dir, { recursive: true, force: true }); });

        it('one workload per role; every pod a fixed non-root uid, seccomp RuntimeDefault, no service account token', () => {
            assert.deepEqual(workloads(objs).map(compOf).sort(), [...ROLES].sort());
            for (const w of workloads(objs)) {
                const spec = w.spec.template.spec;
                const sc = spec.securityContext || {};
                assert.equal(sc.runAsNonRoot, true, `${w.metadata.name}: runAsNonRoot`);
                assert.ok(Number.isInteger(sc.runAsUser) && sc.runAsUser > 0, `${w.metadata.name}: a fixed uid`);
                assert.deepEqual(sc.seccompProfile, { type: 'RuntimeDefault' }, `${w.metadata.name}: seccomp`);
                assert.equal(spec.automountServiceAccountToken, false, `${w.metadata.name}: no API token`);
                assert.equal(spec.hostNetwork || spec.hostPID || spec.hostIPC || false, false);
            }
        });

        it('every container: read-only root, no privilege escalation, ALL capabilities dropped, a liveness probe; only emptyDirs are writable', () => {
            for (const w of workloads(objs)) {
                const spec = w.spec.template.spec;
                const vols = Object.fromEntries(spec.volumes.map((v) => [v.name, v]));
                for (const c of [...spec.containers, ...(spec.initContainers || [])]) {
                    const where = `${w.metadata.name}/${c.name}`;
                    const sc = c.securityContext || {};
                    assert.equal(sc.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
                    assert.equal(sc.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation`);
                    assert.deepEqual(sc.capabilities, { drop: ['ALL'] }, `${where}: capabilities`);
                    assert.ok(!sc.privileged && !sc.runAsUser, `${where}: nothing overrides the pod's user`);
                    assert.ok(c.livenessProbe, `${where}: livenessProbe`);
                    assert.ok(c.resources && c.resources.requests && c.resources.limits && c.resources.limits.memory, `${where}: requests and a memory limit`);
                    for (const m of c.volumeMounts) {
                        const v = vols[m.name];
                        assert.ok(v, `${where}: volume ${m.name}`);
                        if (!m.readOnly) assert.ok(v.emptyDir, `${where}: ${m.mountPath} is writable, so it must be an emptyDir`);
                    }
                    // the run dir (heartbeat file) is a writable emptyDir
                    const run = argAfter(c.args, '--run-dir');
                    const rm = c.volumeMounts.find((m) => m.mountPath === run);
                    assert.ok(rm && vols[rm.name].emptyDir && !rm.readOnly, `${where}: --run-dir ${run} on an emptyDir`);
                }
            }
            const store = podOf(objs, 'store').spec.template.spec;
            const shm = store.containers[0].volumeMounts.find((m) => m.mountPath === '/dev/shm');
            assert.ok(shm, 'stores: /dev/shm is mounted');
            assert.equal(store.volumes.find((v) => v.name === shm.name).emptyDir.medium, 'Memory', 'stores: /dev/shm is a memory emptyDir');
        });

        it('probes: the exec liveness probes run `presenced probe` for their role; gateways are ready on /v1/health/ready', () => {
            for (const w of workloads(objs)) {
                const c = w.spec.template.spec.containers[0];
                for (const p of [c.livenessProbe, c.startupProbe].filter(Boolean)) {
                    if (!p.exec) continue;
                    const cmd = p.exec.command;
                    assert.deepEqual(cmd.slice(0, 4), ['presenced', 'probe', '--role', compOf(w)], `${w.metadata.name}: ${cmd}`);
                    assert.equal(argAfter(cmd, '--run-dir'), argAfter(c.args, '--run-dir'), `${w.metadata.name}: the probe looks in the role's run dir`);
                    if (w.kind === 'StatefulSet') assert.equal(argAfter(cmd, '--node'), 'auto');
                }
            }
            const gw = podOf(objs, 'gateway').spec.template.spec.containers[0];
            assert.equal(gw.readinessProbe.httpGet.path, '/v1/health/ready');
            assert.equal(gw.livenessProbe.exec.command[3], 'gateway', 'gateway liveness does not hang on the broker');
        });

        it('keys: every role mounts its own kind\'s Secret (group-readable at most) as --keys; the role runs as the owner group', () => {
            for (const w of workloads(objs)) {
                const spec = w.spec.template.spec;
                const c = spec.containers[0];
                const keysDir = argAfter(c.args, '--keys');
                assert.ok(c.args.includes('--keys') && keysDir, `${w.metadata.name}: args carry --keys`);
                const m = c.volumeMounts.find((x) => x.mountPath === keysDir);
                assert.ok(m && m.readOnly, `${w.metadata.name}: ${keysDir} mounted read-only`);
                const v = spec.volumes.find((x) => x.name === m.name);
                assert.equal(v.secret.secretName, `presenced-keys-${compOf(w)}`);
                assert.equal(v.secret.defaultMode & 0o027, 0, `${w.metadata.name}: mode ${v.secret.defaultMode.toString(8)} lets no one else read and the group not write`);
                assert.equal(spec.securityContext.fsGroup, spec.securityContext.runAsGroup ?? spec.securityContext.runAsUser, 'the files\' group is the role\'s');
            }
        });

        it('no Secret with literal values; every Secret referenced is one make-secrets.sh makes, holding what the role loads', () => {
            assert.deepEqual(objs.filter((o) => o.kind === 'Secret'), [], 'the manifests carry no Secret (no default secrets)');
            assert.doesNotMatch(JSON.stringify(objs), /change-?me|stringData/i);
            const refs = new Set();
            for (const w of workloads(objs)) {
                const spec = w.spec.template.spec;
                for (const v of spec.volumes) if (v.secret) refs.add(v.secret.secretName);
                for (const c of spec.containers) {
                    for (const e of c.env || []) assert.ok(!('value' in e) || !/key|secret|token|password/i.test(e.name), `${e.name} is a literal`);
                    for (const e of c.envFrom || []) if (e.secretRef) refs.add(e.secretRef.name);
                }
            }
            assert.deepEqual([...refs].sort(), Object.keys(made.secrets).sort());
            const pubs = Object.keys(made.secrets['presenced-keys-broker']).filter((f) => f.endsWith('.pub')).sort();
            for (const role of ROLES) {
                const s = made.secrets[`presenced-keys-${role}`];
                assert.deepEqual(Object.keys(s).filter((f) => f.endsWith('.pub')).sort(), pubs, `${role}: every public key`);
                const secretKeys = Object.keys(s).filter((f) => f.endsWith('.key'));
                assert.ok(secretKeys.length && secretKeys.every((f) => f.startsWith(role)), `${role}: only its kind's secret keys (${secretKeys})`);
            }
            assert.ok(made.secrets['presenced-projects']['projects.json']);
        });

        it('StatefulSets: stores and gateways take their node from the pod ordinal; gateways start in parallel and stop with preStop and a grace period', () => {
            for (const comp of ['store', 'gateway']) {
                const w = podOf(objs, comp);
                assert.equal(w.kind, 'StatefulSet', `${comp}: a stable ordinal per instance`);
                assert.equal(argAfter(w.spec.template.spec.containers[0].args, '--node'), 'auto');
            }
            const gw = podOf(objs, 'gateway');
            assert.equal(gw.spec.podManagementPolicy, 'Parallel');
            const pre = gw.spec.template.spec.containers[0].lifecycle.preStop.exec.command;
            const preSec = Number(pre[pre.length - 1]);
            assert.ok(preSec >= 2, `preStop waits (${pre})`);
            assert.ok(gw.spec.template.spec.terminationGracePeriodSeconds >= preSec + 5 + 5,
                'the grace period covers preStop and the gateway\'s drain (5 s)');
            for (const comp of ['broker', 'reaper']) assert.equal(podOf(objs, comp).spec.strategy.type, 'Recreate', `${comp}: never two at once`);
        });

        it('PodDisruptionBudgets for gateways and store nodes (one at a time)', () => {
            const pdbs = objs.filter((o) => o.kind === 'PodDisruptionBudget');
            for (const comp of ['gateway', 'store']) {
                const pdb = pdbs.find((p) => p.spec.selector.matchLabels['app.kubernetes.io/component'] === comp);
                assert.ok(pdb, `a PDB for ${comp}`);
                assert.equal(pdb.spec.maxUnavailable, 1);
                const labels = podOf(objs, comp).spec.template.metadata.labels;
                for (const [k, v] of Object.entries(pdb.spec.selector.matchLabels)) assert.equal(labels[k], v);
            }
        });

        it('the HPA scales the gateway StatefulSet on CPU, never beyond the gateway keys made; stores = --stores = store keys', () => {
            const hpa = objs.find((o) => o.kind === 'HorizontalPodAutoscaler');
            assert.equal(hpa.apiVersion, 'autoscaling/v2');
            assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'StatefulSet', name: podOf(objs, 'gateway').metadata.name });
            assert.equal(hpa.spec.metrics[0].resource.name, 'cpu');
            const gwKeys = Object.keys(made.secrets['presenced-keys-gateway']).filter((f) => /^gateway-\d+\.key$/.test(f)).length;
            assert.ok(hpa.spec.maxReplicas <= gwKeys, `maxReplicas ${hpa.spec.maxReplicas} <= ${gwKeys} gateway keys`);
            assert.ok(podOf(objs, 'gateway').spec.replicas <= hpa.spec.maxReplicas && hpa.spec.minReplicas >= 2);
            assert.ok(podOf(objs, 'gateway').spec.template.spec.containers[0].resources.requests.cpu, 'a CPU request to scale against');
            const stores = podOf(objs, 'store').spec.replicas;
            assert.equal(Number(argAfter(podOf(objs, 'broker').spec.template.spec.containers[0].args, '--stores')), stores);
            assert.equal(Object.keys(made.secrets['presenced-keys-store']).filter((f) => f.endsWith('.key')).length, stores);
        });

        it('NetworkPolicy: every internal port admits presenced pods only; the HTTP port anyone', () => {
            const np = objs.filter((o) => o.kind === 'NetworkPolicy');
            assert.equal(np.length, 1);
            const sel = np[0].spec.podSelector.matchLabels;
            assert.deepEqual(np[0].spec.policyTypes, ['Ingress']);
            for (const w of workloads(objs)) {
                const labels = w.spec.template.metadata.labels;
                assert.ok(Object.entries(sel).every(([k, v]) => labels[k] === v), `${w.metadata.name} is under the policy`);
                for (const p of w.spec.template.spec.containers[0].ports || []) {
                    const rules = np[0].spec.ingress.filter((r) => (r.ports || []).some((x) => x.port === p.containerPort));
                    assert.equal(rules.length, 1, `${w.metadata.name}: port ${p.containerPort} has one rule`);
                    if (p.name === 'http') {
                        assert.equal(rules[0].from, undefined, 'HTTP from anywhere');
                        continue;
                    }
                    assert.equal(rules[0].from.length, 1, `port ${p.containerPort}: from presenced pods only`);
                    const f = rules[0].from[0];
                    assert.ok(!f.namespaceSelector && !f.ipBlock, 'same namespace, no address ranges');
                    const ex = Object.fromEntries(f.podSelector.matchExpressions.map((e) => [e.key, e]));
                    assert.deepEqual(ex['app.kubernetes.io/name'].values, ['presenced']);
                    assert.deepEqual([...ex['app.kubernetes.io/component'].values].sort(), [...ROLES].sort());
                }
            }
        });

        it('every Service selects presenced pods and targets a port they name', () => {
            for (const s of objs.filter((o) => o.kind === 'Service')) {
                const w = workloads(objs).find((x) => Object.entries(s.spec.selector).every(([k, v]) => x.spec.template.metadata.labels[k] === v));
                assert.ok(w, `${s.metadata.name} selects a workload`);
                const names = (w.spec.template.spec.containers[0].ports || []).map((p) => p.name);
                for (const p of s.spec.ports) assert.ok(names.includes(p.targetPort), `${s.metadata.name}: ${p.targetPort}`);
            }
            const store = podOf(objs, 'store');
            const headless = objs.find((o) => o.kind === 'Service' && o.metadata.name === store.spec.serviceName);
            assert.equal(headless.spec.clusterIP, 'None', 'the stores\' front is a headless Service');
            assert.match(argAfter(store.spec.template.spec.containers[0].args, '--store-advertise'), new RegExp(`^tcp://\\$\\(POD_NAME\\)\\.${headless.metadata.name}:`));
        });
    });
}

reviewerChecks('base', 'deploy/k8s');
reviewerChecks('example overlay', 'deploy/k8s/overlays/example');

describe('the example overlay', { skip: NO_KUBECTL }, () => {
    it('sets the namespace (Pod Security restricted), the image and the gateway count', () => {
        const objs = render('deploy/k8s/overlays/example');
        const ns = objs.find((o) => o.kind === 'Namespace');
        assert.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'restricted');
        for (const o of objs.filter((x) => x.kind !== 'Namespace')) assert.equal(o.metadata.namespace, ns.metadata.name, `${o.kind} ${o.metadata.name}`);
        for (const w of workloads(objs)) assert.equal(w.spec.template.spec.containers[0].image, 'registry.example.com/presenced:1.0.0');
        assert.equal(podOf(objs, 'gateway').spec.replicas, 3);
        assert.equal(objs.find((o) => o.kind === 'HorizontalPodAutoscaler').spec.minReplicas, 3);
    });
});

// ------------------------------------------------------------------------------------------
// The manifests run: every role from its container's arguments, its Secret mounted as the
// kubelet does, over tcp:// on loopback.

describe('the base\'s roles, started from their manifests', { skip: NO_KUBECTL }, () => {
    const procs = new Map(); // name -> {proc, args, log}
    let objs, made, root, ports, name, gwPort, api;

    const roleDir = (n) => path.join(root, n);
    function podArgs(comp, node) {
        const c = podOf(objs, comp).spec.template.spec.containers[0];
        const inst = node ? `${comp}-${node}` : comp;
        const out = [];
        for (let i = 0; i < c.args.length; i++) {
            let a = c.args[i];
            const prev = c.args[i - 1];
            if (prev === '--node') a = String(node);
            else if (prev === '--keys') a = path.join(roleDir(inst), 'keys');
            else if (prev === '--run-dir') a = path.join(roleDir(inst), 'run');
            else if (prev === '--config') a = path.join(roleDir(inst), 'projects', path.basename(a));
            else if (prev === '--shm') a = `/presenced-${name}-${inst}`;
            else if (prev === '--port') a = String(gwPort);
            else if (/^tcp:\/\//.test(a)) {
                const m = /^tcp:\/\/(\*|presenced-broker|\$\(POD_NAME\)\.presenced-store):(\d+)$/.exec(a);
                assert.ok(m, `an endpoint this test knows: ${a}`);
                const port = m[2] === '7004' ? ports[`store-${node}`] : ports[m[2]];
                a = `tcp://127.0.0.1:${port}`;
            } else assert.ok(!a.startsWith('/') && !a.includes('$('), `an argument this test knows: ${a}`);
            out.push(a);
        }
        if (comp === 'gateway') out.push('--host', '127.0.0.1');
        return out;
    }
    function startRole(comp, node) {
        const inst = node ? `${comp}-${node}` : comp;
        const args = podArgs(comp, node);
        const logPath = path.join(root, `${inst}.log`);
        const fd = fs.openSync(logPath, 'a');
        const proc = spawn(BIN, args, { stdio: ['ignore', fd, fd], env: { PATH: process.env.PATH } });
        fs.closeSync(fd);
        const p = { proc, args, logPath, exited: null };
        p.exit = new Promise((resolve) => proc.on('exit', (code, signal) => { p.exited = { code, signal }; resolve(p.exited); }));
        procs.set(inst, p);
        return p;
    }
    function mountFor(inst, comp) {
        fs.mkdirSync(path.join(roleDir(inst), 'run'), { recursive: true, mode: 0o700 });
        mountSecret(made.secrets[`presenced-keys-${comp}`], path.join(roleDir(inst), 'keys'), 0o440);
        if (comp === 'gateway') mountSecret({ 'projects.json': made.secrets['presenced-projects']['projects.json'] }, path.join(roleDir(inst), 'projects'), 0o440);
    }
    const get = async (p, timeoutMs = 2000) => {
        try {
            const r = await fetch(`http://127.0.0.1:${gwPort}${p}`, { signal: AbortSignal.timeout(timeoutMs) });
            await r.arrayBuffer();
            return r.status;
        } catch { return 0; }
    };
    async function waitFor(fn, want, timeoutMs, what) {
        const deadline = Date.now() + timeoutMs;
        let last;
        while (Date.now() < deadline) {
            last = await fn();
            if (last === want) return last;
            await sleep(100);
        }
        assert.fail(`${what}: ${last} after ${timeoutMs} ms, wanted ${want}`);
    }
    // The container's liveness probe command, with this test's node and run dir.
    function probe(comp, node, extra = []) {
        const c = podOf(objs, comp).spec.template.spec.containers[0];
        const cmd = c.livenessProbe.exec.command.map((a, i, all) => (all[i - 1] === '--node' ? String(node)
            : all[i - 1] === '--run-dir' ? path.join(roleDir(node ? `${comp}-${node}` : comp), 'run') : a));
        assert.equal(cmd[0], 'presenced');
        return spawnSync(BIN, [...cmd.slice(1), ...extra], { encoding: 'utf8', env: { PATH: process.env.PATH } });
    }

    before(async () => {
        objs = render('deploy/k8s');
        made = makeSecrets();
        root = made.dir;
        name = 'k8s' + crypto.randomBytes(3).toString('hex');
        ports = {};
        for (const p of ['7000', '7001', '7002', '7003', 'store-1', 'store-2']) ports[p] = await freePort();
        gwPort = await freePort();
        api = { endpoint: `http://127.0.0.1:${gwPort}/v1`, project: 'demo', apiKey: made.apiKey };
        mountFor('broker', 'broker');
        mountFor('store-1', 'store');
        mountFor('store-2', 'store');
        mountFor('reaper', 'reaper');
        mountFor('gateway-1', 'gateway');
        startRole('broker');
        startRole('store', 1);
        startRole('store', 2);
        startRole('reaper');
        startRole('gateway', 1);
        try {
            await waitFor(() => get('/v1/health', 1000), 200, 20000, '/v1/health');
        } catch (e) {
            for (const [n, p] of procs) process.stderr.write(`--- ${n} ${JSON.stringify(p.exited)}:\n${fs.readFileSync(p.logPath, 'utf8').slice(-3000)}\n`);
            throw e;
        }
    }, { timeout: 60000 });

    after(async () => {
        for (const p of procs.values()) { try { p.proc.kill('SIGCONT'); p.proc.kill('SIGKILL'); } catch {} }
        await Promise.all([...procs.values()].map((p) => Promise.race([p.exit, sleep(3000)])));
        for (const f of fs.readdirSync('/dev/shm')) if (name && f.startsWith(`presenced-${name}-`)) fs.rmSync(path.join('/dev/shm', f), { force: true });
        if (root) fs.rmSync(root, { recursive: true, force: true });
    });

    it('serve REST with the API key and projects.json make-secrets.sh made, over CURVE with the mounted keys', async () => {
        assert.equal(await get('/v1/health/ready'), 200);
        const { presences } = nodeClient(api);
        const id = 'k8s' + crypto.randomBytes(4).toString('hex');
        const up = await presences.upsert({ presenceId: id, userId: 'alice', status: 'online' });
        assert.equal(up.$id, id);
        assert.equal((await presences.get({ presenceId: id })).status, 'online');
        // the JWT secret of projects.json was made fresh: it is not the template's placeholder
        const projects = JSON.parse(made.secrets['presenced-projects']['projects.json']);
        const secret = projects.projects[0].jwt[0].secret;
        assert.match(secret, /^[0-9a-f]{64}$/);
        const { presences: asUser } = webClient({ ...api, jwtSecret: secret }, { userId: 'bob' });
        assert.equal((await asUser.upsert({ presenceId: id + 'b', status: 'here' })).userId, 'bob');
        await assert.rejects(nodeClient({ ...api, apiKey: 'pd_' + '0'.repeat(48) }).presences.get({ presenceId: id }), (e) => e.code === 401);
    });

    it('liveness: each role\'s own probe command passes; a stopped store node fails it, and passes again once it runs', async () => {
        await sleep(1200); // a gateway beats from its first housekeeping tick, 250 ms in
        for (const [comp, node] of [['broker'], ['store', 1], ['store', 2], ['reaper'], ['gateway', 1]]) {
            const r = probe(comp, node);
            assert.equal(r.status, 0, `${comp} ${node ?? ''}: ${r.stderr}`);
            assert.match(r.stdout, /alive/);
        }
        assert.equal(probe('store', 3).status, 1, 'no store node 3 runs');
        const victim = procs.get('store-2').proc;
        victim.kill('SIGSTOP');
        try {
            await sleep(6500); // the probe's default allowance is 5 s
            const r = probe('store', 2);
            assert.equal(r.status, 1, r.stdout);
            assert.match(r.stderr, /store-2 .* last beat \d+ ms ago .*stopped or stuck/);
            assert.equal(probe('store', 1).status, 0, 'the other node is fine');
        } finally {
            victim.kill('SIGCONT');
        }
        await waitFor(() => probe('store', 2).status, 0, 5000, 'store 2 probe after SIGCONT');
    });

    it('readiness: /v1/health/ready is 503 while the broker is stopped or dead, 200 once it is back', async () => {
        await waitFor(() => get('/v1/health/ready'), 200, 5000, 'ready before');
        const broker = procs.get('broker').proc;
        broker.kill('SIGSTOP');
        try {
            await waitFor(() => get('/v1/health/ready'), 503, 6000, 'ready with the broker stopped');
        } finally {
            broker.kill('SIGCONT');
        }
        await waitFor(() => get('/v1/health/ready'), 200, 5000, 'ready after SIGCONT');
        broker.kill('SIGKILL');
        await procs.get('broker').exit;
        await waitFor(() => get('/v1/health/ready'), 503, 6000, 'ready with the broker dead');
        const r = probe('broker');
        assert.equal(r.status, 1);
        assert.match(r.stderr, /is gone|never beat/);
        startRole('broker');
        await waitFor(() => get('/v1/health/ready'), 200, 15000, 'ready after the broker is back');
        await waitFor(() => get('/v1/health', 1000), 200, 15000, 'the whole cluster after the broker is back');
    });

    it('a role refuses to start with the template\'s placeholder secret, or without its own key', async () => {
        const attempts = [
            ['gateway-2', () => {
                // projects.example.json as it is: "secret": "change-me"
                fs.mkdirSync(path.join(roleDir('gateway-2'), 'run'), { recursive: true });
                mountSecret(made.secrets['presenced-keys-gateway'], path.join(roleDir('gateway-2'), 'keys'), 0o440);
                mountSecret({ 'projects.json': fs.readFileSync(path.join(OVERLAY, 'projects.example.json')) }, path.join(roleDir('gateway-2'), 'projects'), 0o440);
            }, 2, /placeholder/],
            ['gateway-9', () => mountFor('gateway-9', 'gateway'), 9, /gateway-9\.key/],
        ];
        for (const [inst, prep, node, why] of attempts) {
            prep();
            const p = startRole('gateway', node);
            const ex = await Promise.race([p.exit, sleep(10000).then(() => null)]);
            assert.ok(ex && ex.code !== 0, `${inst} refused to start (${JSON.stringify(ex)})`);
            assert.match(fs.readFileSync(p.logPath, 'utf8'), why);
        }
        assert.equal(await get('/v1/health/ready'), 200, 'gateway 1 still serves');
    });
});

// ------------------------------------------------------------------------------------------
// The embedded cluster: probes against its run directory, readiness, and a gateway stopped as
// Kubernetes stops one (SIGTERM after preStop).

describe('embedded cluster: probe, readiness and a gateway stopping', () => {
    const H = useCluster(test, { label: 'k8s' });
    const C = () => H.cluster;
    const probe = (role, node, extra = []) => spawnSync(BIN, ['probe', '--role', role, ...(node ? ['--node', String(node)] : []),
        '--run-dir', C().runDir, ...extra], { encoding: 'utf8' });
    const ready = async () => {
        try {
            const r = await fetch(`${C().endpoint}/health/ready`, { signal: AbortSignal.timeout(2000) });
            return { status: r.status, body: await r.json() };
        } catch { return { status: 0 }; }
    };

    it('`presenced probe` passes for every role, fails for a stopped one and for one that is not there', async () => {
        await sleep(1200); // a gateway beats from its first housekeeping tick, 250 ms in
        for (const [role, node] of [['broker'], ['store', 1], ['store', 2], ['reaper'], ['gateway', 1], ['gateway', 2]]) {
            const r = probe(role, node);
            assert.equal(r.status, 0, `${role} ${node ?? ''}: ${r.stderr}`);
        }
        assert.equal(probe('store', 3).status, 1);
        assert.equal(probe('store').status, 2, 'a store needs --node');
        assert.equal(spawnSync(BIN, ['probe', '--role', 'nobody']).status, 2);
        const pids = C().kill('reaper', undefined, 'SIGSTOP');
        try {
            await sleep(2600);
            const r = probe('reaper', undefined, ['--max-age', '2000']);
            assert.equal(r.status, 1, r.stdout);
            assert.match(r.stderr, /reaper \(pid \d+\) last beat/);
        } finally {
            for (const p of pids) process.kill(p, 'SIGCONT');
        }
        await sleep(1500);
        assert.equal(probe('reaper', undefined, ['--max-age', '2000']).status, 0);
    });

    it('/v1/health/ready: 200 on a healthy gateway, 503 while the broker is stopped; /v1/health stays the whole cluster\'s view', async () => {
        assert.deepEqual(await ready(), { status: 200, body: { status: 'pass' } });
        const pids = C().kill('broker', undefined, 'SIGSTOP');
        try {
            const deadline = Date.now() + 6000;
            let r;
            while (Date.now() < deadline && (r = await ready()).status !== 503) await sleep(100);
            assert.deepEqual(r, { status: 503, body: { status: 'fail' } });
        } finally {
            for (const p of pids) process.kill(p, 'SIGCONT');
        }
        // ready again once the broker answers: every gateway (they share the port, so one
        // check may reach a gateway that has not heard from the broker yet): 8 in a row
        const deadline = Date.now() + 5000;
        let inRow = 0, last;
        while (Date.now() < deadline && inRow < 8) {
            last = await ready();
            inRow = last.status === 200 ? inRow + 1 : 0;
            await sleep(50);
        }
        assert.equal(inRow, 8, `ready again after the broker resumed (last: ${JSON.stringify(last)})`);
        // a store node down: the gateway can still serve the other shard (ready), the cluster
        // is not whole (/v1/health)
        const st = C().kill('store', 2, 'SIGSTOP');
        try {
            assert.equal(await C().waitStatus(503, 6000), 503, '/v1/health with a store node stopped');
            assert.equal((await ready()).status, 200, 'ready: this gateway can serve');
        } finally {
            for (const p of st) process.kill(p, 'SIGCONT');
        }
        assert.equal(await C().waitStatus(200, 8000), 200);
    });

    it('a gateway stopped as Kubernetes does (SIGTERM): its WebSockets are told to reconnect, the presence is handed over without a flap', { timeout: 90000 }, async () => {
        const [g1, g2] = C().pids('gateway');
        const user = 'u' + crypto.randomBytes(4).toString('hex');
        const id = 'p' + crypto.randomBytes(4).toString('hex');
        const jwt = mintJwt(C().jwtSecret, { userId: user });
        const perm = ['read("any")', `write("user:${user}")`];
        const w = await R.rawConnectTo(C(), g2, {});
        await R.rawSubscribe(w, [{ subscriptionId: 'w', channels: [`presences.${id}`] }]);
        const a = await R.rawConnectTo(C(), g1, { jwt });
        let r = await a.request({ type: 'presence', data: { status: 'here', presenceId: id, permissions: perm } });
        assert.equal(r.type, 'response', JSON.stringify(r));
        await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.upsert`, 5000, 'the upsert');
        const { presences } = nodeClient(C());
        const created = (await presences.get({ presenceId: id })).$createdAt;

        process.kill(g1, 'SIGTERM');
        const closed = await Promise.race([a.closed, sleep(5000).then(() => null)]);
        assert.ok(closed, 'the stopping gateway closed the WebSocket');
        assert.deepEqual(closed, { code: 1012, reason: 'Service restart' }, 'told to reconnect (1012 service restart)');
        // the SDK reconnects after 1 s and re-sends its presence, through another gateway
        const b = await R.rawConnectTo(C(), g2, { jwt });
        r = await b.request({ type: 'presence', data: { status: 'here', presenceId: id, permissions: perm } });
        assert.equal(r.type, 'response', JSON.stringify(r));
        await sleep(8000); // past the grace period (5 s) of the gateway that stopped
        const flaps = w.events((m) => m.data.payload.$id === id && /\.(delete|create)$/.test(m.data.events[0]));
        assert.deepEqual(flaps.map((m) => m.data.events[0]), [], 'no delete (nor re-create) while the user stayed');
        const still = await presences.get({ presenceId: id });
        assert.equal(still.$createdAt, created, 'the same record, never deleted');
        assert.equal(still.status, 'here');
        // the user leaves for good: the presence ends (within the lease of the stopped gateway)
        b.close();
        await w.next((m) => m.type === 'event' && m.data.events[0] === `presences.${id}.delete`, 50000, 'the delete once the user left');
        w.close();
        await C().waitRestarted('gateway', undefined, [g1]).catch(() => {});
    });
});
