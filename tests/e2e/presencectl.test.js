'use strict';
// presencectl against a real cluster started with a projects file (--config):
//   key create / list / delete edit the file (secret printed once, only the hash stored) and
//   the key works after SIGHUP; jwt mints tokens the server accepts (HS256 from a flag or an
//   environment variable, EdDSA from a keygen file; teams and labels become roles); list prints
//   a table; watch prints one line per event, live, in a terminal (run in a pty with script(1))
//   and stops cleanly on Ctrl-C; rooms list prints the project's rooms from every store node,
//   largest first; rooms show prints a Supabase room's members, rooms watch its
//   joins and leaves live (supabase realtime-js clients in the room).
const test = require('node:test');
const { describe, it, before, after } = test;
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { startCluster, sleep, BIN } = require('./lib/cluster');
const { loadNodeSdk } = require('./lib/sdk');
const { api } = require('./lib/http');
const { uid, assertError } = require('./lib/check');
const { mintJwt } = require('./lib/sdk');

const CTL = process.env.PRESENCECTL_BIN || path.join(path.dirname(BIN), 'presencectl');
const P = 'ctl';
const S = {};

// Everything presencectl prints on stdout is a secret (API keys, tokens) or a public key;
// the server log is searched for all of them at the end.
const SEEN = new Set();
function ctl(args, env = {}) {
    const r = spawnSync(CTL, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30000 });
    if (r.error) throw r.error;
    if ((args[0] === 'jwt' || (args[0] === 'key' && args[1] === 'create')) && r.stdout.trim().length >= 16) SEEN.add(r.stdout.trim());
    return r;
}
function ctlOk(args, env) {
    const r = ctl(args, env);
    assert.equal(r.status, 0, `presencectl ${args.slice(0, 2).join(' ')} exited ${r.status}: ${r.stderr}`);
    return r;
}

const keyPresences = (key = S.adminKey) => {
    const N = loadNodeSdk();
    return new N.Presences(new N.Client().setEndpoint(S.cluster.endpoint).setProject(P).setKey(key));
};

const reloads = () => (S.cluster.log().match(/projects reloaded/g) || []).length;
async function sighup() {
    const n = reloads();
    process.kill(S.cluster.pid, 'SIGHUP');
    for (let i = 0; reloads() < n + S.cluster.gateways; i++) {
        if (i > 400) throw new Error('gateways did not reload after SIGHUP');
        await sleep(25);
    }
}

before(async () => {
    assert.ok(fs.existsSync(CTL), `presencectl not found at ${CTL} (build it, or set PRESENCECTL_BIN)`);
    S.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-ctl-'));
    S.cfg = path.join(S.dir, 'projects.json');
    S.edFile = path.join(S.dir, 'ed25519.key');
    S.jwtSecret = 'ctl_jwt_' + crypto.randomBytes(24).toString('hex');
    process.env.CTL_JWT_SECRET = S.jwtSecret;
    // keygen: secret key file (0600), public key on stdout
    const kg = ctlOk(['keygen', '--out', S.edFile]);
    S.edPub = kg.stdout.trim();
    assert.equal(Buffer.from(S.edPub, 'base64').length, 32, `public key: ${kg.stdout}`);
    assert.equal(fs.statSync(S.edFile).mode & 0o777, 0o600, 'the secret key file is private');
    assert.notEqual(ctl(['keygen', '--out', S.edFile]).status, 0, 'keygen never overwrites a key file');
    fs.writeFileSync(S.cfg, JSON.stringify({
        projects: [{
            id: P,
            keys: [],
            jwt: [{ alg: 'HS256', secret_env: 'CTL_JWT_SECRET' }, { alg: 'EdDSA', public_key: S.edPub }],
            origins: ['https://app.example.com'],
            default_ttl: 600,
        }],
    }, null, 2));
    S.adminKey = ctlOk(['key', 'create', '--config', S.cfg, '--project', P, '--name', 'admin',
        '--scopes', 'presences.read,presences.write,users.write']).stdout.trim();
    S.cluster = await startCluster({ label: 'presencectl', args: ['--config', S.cfg] });
}, { timeout: 60000 });

after(async () => {
    if (S.cluster) await S.cluster.stop();
    try { fs.rmSync(S.dir, { recursive: true, force: true }); } catch {}
}, { timeout: 30000 });

test.afterEach((t) => { if (t.passed === false && S.cluster) S.cluster.failed = true; });

describe('presencectl key', () => {
    it('create prints the secret once and stores only its hash; the key works after SIGHUP, not before', async () => {
        const before = fs.readFileSync(S.cfg, 'utf8');
        const r = ctlOk(['key', 'create', '--config', S.cfg, '--project', P, '--name', 'reader', '--scopes', 'presences.read', '--expire', '2099-12-31T00:00:00Z']);
        const key = r.stdout.trim();
        assert.match(key, /^pd_[0-9a-f]{48}$/, `stdout is the secret alone: ${JSON.stringify(r.stdout)}`);
        assert.match(r.stderr, /kill -HUP/, 'tells the user to reload');
        const text = fs.readFileSync(S.cfg, 'utf8');
        assert.ok(!text.includes(key), 'the secret is not in the file');
        const cfg = JSON.parse(text);
        const proj = cfg.projects.find((p) => p.id === P);
        const entry = proj.keys.find((k) => k.name === 'reader');
        assert.match(entry.hash, /^[0-9a-f]{64}$/);
        assert.deepEqual(entry.scopes, ['presences.read']);
        assert.equal(entry.expire, '2099-12-31T00:00:00.000+00:00');
        // everything else is kept, in order
        const old = JSON.parse(before).projects[0];
        assert.deepEqual(Object.keys(proj), Object.keys(old));
        assert.deepEqual(proj.jwt, old.jwt);
        assert.deepEqual(proj.origins, old.origins);
        assert.deepEqual(proj.keys.slice(0, -1), old.keys);

        assertError(await api(S.cluster, 'GET', '/v1/presences', { project: P, key }), 401, 'user_unauthorized');
        await sighup();
        for (let i = 0; i < 6; i++) { // both gateways (the kernel spreads new connections)
            const ok = await api(S.cluster, 'GET', '/v1/presences', { project: P, key });
            assert.equal(ok.status, 200, ok.text);
        }
        assertError(await api(S.cluster, 'PUT', `/v1/presences/${uid('x')}`, { project: P, key, body: { userId: uid('u'), status: 'x' } }), 401, 'general_unauthorized_scope');

        // list shows it without any secret; delete removes it, and SIGHUP makes it stop working
        const ls = ctlOk(['key', 'list', '--config', S.cfg, '--project', P]);
        assert.match(ls.stdout, /reader\s+presences\.read\s+2099-12-31/);
        assert.ok(!ls.stdout.includes(key) && !ls.stdout.includes(entry.hash), 'key list shows no secret and no full hash');
        ctlOk(['key', 'delete', '--config', S.cfg, '--project', P, '--name', 'reader']);
        await sighup();
        for (let i = 0; i < 6; i++) assertError(await api(S.cluster, 'GET', '/v1/presences', { project: P, key }), 401, 'user_unauthorized');
    });

    it('refuses mistakes and leaves the file untouched', () => {
        const before = fs.readFileSync(S.cfg, 'utf8');
        for (const [args, re] of [
            [['--project', 'nope', '--name', 'x'], /no project "nope"/],
            [['--project', P, '--name', 'admin'], /already has a key named "admin"/],
            [['--project', P, '--name', 'y', '--scopes', 'presences.read,admin'], /unknown scope "admin"/],
            [['--project', P, '--name', 'y', '--expire', 'tomorrow'], /not a date/],
            [['--project', P, '--name', 'y', '--expire', '2001-01-01T00:00:00Z'], /in the past/],
        ]) {
            const r = ctl(['key', 'create', '--config', S.cfg, ...args]);
            assert.equal(r.status, 1, `${args.join(' ')}: exit ${r.status} ${r.stderr}`);
            assert.match(r.stderr, re);
            assert.equal(r.stdout, '', 'no secret printed');
        }
        assert.equal(fs.readFileSync(S.cfg, 'utf8'), before);
        assert.deepEqual(fs.readdirSync(S.dir).sort(), ['ed25519.key', 'projects.json'], 'no temp file left behind');
        const bad = path.join(S.dir, 'broken.json');
        fs.writeFileSync(bad, '{"projects": [');
        const r = ctl(['key', 'create', '--config', bad, '--project', P, '--name', 'z']);
        assert.equal(r.status, 1);
        assert.equal(fs.readFileSync(bad, 'utf8'), '{"projects": [');
        fs.rmSync(bad);
    });
});

describe('presencectl jwt', () => {
    it('mints tokens the server accepts: --project-secret, --secret-env, --eddsa-secret-key', async () => {
        const u = uid('j');
        const toks = [
            ctlOk(['jwt', '--project-secret', S.jwtSecret, '--user', u]).stdout.trim(),
            ctlOk(['jwt', '--secret-env', 'CTL_JWT_SECRET', '--user', u, '--ttl', '120']).stdout.trim(),
            ctlOk(['jwt', '--eddsa-secret-key', S.edFile, '--user', u]).stdout.trim(),
        ];
        for (const tok of toks) {
            const id = uid('jp');
            const r = await api(S.cluster, 'PUT', `/v1/presences/${id}`, { project: P, jwt: tok, body: { status: 'via presencectl' } });
            assert.equal(r.status, 200, r.text);
            assert.equal(r.json.userId, u);
            assert.equal((await api(S.cluster, 'DELETE', `/v1/presences/${id}`, { project: P, jwt: tok })).status, 204);
        }
        const claims = JSON.parse(Buffer.from(toks[1].split('.')[1], 'base64url'));
        assert.ok(Math.abs(claims.exp - (Date.now() / 1000 + 120)) < 10, `--ttl: exp ${claims.exp}`);
        assert.equal(JSON.parse(Buffer.from(toks[2].split('.')[0], 'base64url')).alg, 'EdDSA');
        const wrong = ctlOk(['jwt', '--project-secret', 'not-the-secret', '--user', u]).stdout.trim();
        assertError(await api(S.cluster, 'GET', '/v1/presences', { project: P, jwt: wrong }), 401, 'user_jwt_invalid');
    });

    it('teams, labels and --verified become roles', async () => {
        const owner = uid('own');
        const id = uid('tp');
        await keyPresences().upsert({ presenceId: id, userId: owner, status: 'team only',
            permissions: ['read("team:crew/lead")', 'read("label:vip")', 'read("users/verified")'] });
        const tok = (...extra) => ctlOk(['jwt', '--secret-env', 'CTL_JWT_SECRET', '--user', uid('m'), ...extra]).stdout.trim();
        const get = async (t) => (await api(S.cluster, 'GET', `/v1/presences/${id}`, { project: P, jwt: t })).status;
        assert.equal(await get(tok()), 404, 'plain user');
        assert.equal(await get(tok('--teams', 'crew')), 404, 'team member without the role');
        assert.equal(await get(tok('--teams', 'other,crew/lead')), 200, 'team crew, role lead');
        assert.equal(await get(tok('--labels', 'vip')), 200, 'label vip');
        assert.equal(await get(tok('--unverified')), 404, 'unverified');
        assert.equal(await get(tok('--verified')), 200, 'verified');
        await keyPresences().delete({ presenceId: id });
    });

    it('refuses what the server would refuse, before printing anything', () => {
        for (const [args, re] of [
            [['--secret-env', 'CTL_JWT_SECRET', '--user', '_bad'], /--user/],
            [['--secret-env', 'CTL_JWT_SECRET', '--user', 'u1', '--teams', 'bad team'], /Invalid teams claim/],
            [['--secret-env', 'CTL_JWT_SECRET', '--user', 'u1', '--labels', 'not-alnum'], /Invalid labels claim/],
            [['--secret-env', 'NO_SUCH_VAR_X', '--user', 'u1'], /NO_SUCH_VAR_X is not set/],
            [['--user', 'u1'], /exactly one of/],
            [['--project-secret', 's', '--secret-env', 'CTL_JWT_SECRET', '--user', 'u1'], /exactly one of/],
        ]) {
            const r = ctl(['jwt', ...args]);
            assert.equal(r.status, 1, `${args.join(' ')}: ${r.status} ${r.stderr}`);
            assert.match(r.stderr, re);
            assert.equal(r.stdout, '');
        }
    });
});

describe('presencectl list', () => {
    it('prints a table of the records the caller may read (key or JWT, with queries)', async () => {
        const tag = uid('room');
        const recs = [];
        for (let i = 0; i < 3; i++) {
            const id = uid('l'), u = uid('lu');
            await keyPresences().upsert({ presenceId: id, userId: u, status: i === 2 ? 'away \x1b[31mred' : `online ${i}`, metadata: { room: tag },
                permissions: i === 0 ? ['read("any")'] : [`read("user:${u}")`] });
            recs.push({ id, u });
        }
        const q = JSON.stringify({ method: 'equal', attribute: 'metadata.room', values: [tag] });
        const r = ctlOk(['list', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey, '--query', q]);
        const lines = r.stdout.trimEnd().split('\n');
        assert.match(lines[0], /^ID\s+USER\s+STATUS\s+EXPIRES AT$/);
        for (const { id, u } of recs) assert.ok(lines.some((l) => l.startsWith(id) && l.includes(u)), `row for ${id}:\n${r.stdout}`);
        assert.match(r.stdout, /online 0/);
        assert.match(r.stdout, /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00/);
        assert.ok(!r.stdout.includes('\x1b'), 'control characters from a status are not printed');
        assert.match(r.stdout, /away \?\[31mred/);
        assert.match(lines.at(-1), /^3 shown, total 3$/);
        // without a scheme path: the endpoint may be given without /v1
        const r2 = ctlOk(['list', '--endpoint', S.cluster.url, '--project', P, '--key', S.adminKey, '--query', q]);
        assert.equal(r2.stdout, r.stdout);
        // a JWT user sees what it may read: the public record and its own
        const tok = ctlOk(['jwt', '--secret-env', 'CTL_JWT_SECRET', '--user', recs[1].u]).stdout.trim();
        const r3 = ctlOk(['list', '--endpoint', S.cluster.endpoint, '--project', P, '--jwt', tok, '--query', q]);
        assert.ok(r3.stdout.includes(recs[0].id) && r3.stdout.includes(recs[1].id) && !r3.stdout.includes(recs[2].id), r3.stdout);
        assert.match(r3.stdout, /2 shown, total 2/);
        for (const { id } of recs) await keyPresences().delete({ presenceId: id });
    });

    it('reports server errors with their type and exits 1', () => {
        const r = ctl(['list', '--endpoint', S.cluster.endpoint, '--project', P, '--key', 'pd_wrong']);
        assert.equal(r.status, 1);
        assert.match(r.stderr, /HTTP 401 user_unauthorized: The API key is not valid for this project\./);
        const r2 = ctl(['list', '--endpoint', S.cluster.endpoint, '--project', 'nope', '--key', S.adminKey]);
        assert.equal(r2.status, 1);
        assert.match(r2.stderr, /HTTP 404 project_not_found/);
        const r3 = ctl(['list', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey, '--query', '{"method":"nope"}']);
        assert.equal(r3.status, 1);
        assert.match(r3.stderr, /HTTP 400 general_argument_invalid: Invalid `queries` param/);
    });
});

// --- watch, in a terminal ----------------------------------------------------------------------

const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

// Runs a command in a pseudo-terminal (util-linux script(1)); Ctrl-C is a real ^C on the tty.
// script(1) runs the command through $SHELL -c (dash when SHELL is unset, as under CI); `exec`
// makes the command the pty's only process, so its exit status and title are its own.
function inPty(args) {
    const p = spawn('script', ['-qfec', 'exec ' + args.map(shq).join(' '), '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const st = { p, out: '', exited: null };
    p.stdout.on('data', (d) => { st.out += d.toString(); });
    p.stderr.on('data', (d) => { st.out += d.toString(); });
    st.exit = new Promise((resolve) => p.on('exit', (code, signal) => { st.exited = { code, signal }; resolve(st.exited); }));
    st.waitFor = async (re, ms = 10000, what = String(re)) => {
        const deadline = Date.now() + ms;
        while (!re.test(st.out)) {
            if (st.exited) throw new Error(`watch exited (${JSON.stringify(st.exited)}) before ${what}; output:\n${st.out}`);
            if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms; output:\n${st.out}`);
            await sleep(20);
        }
    };
    st.kill = () => { try { p.kill('SIGKILL'); } catch {} };
    return st;
}

describe('presencectl watch', () => {
    it('prints one line per event live (upsert, update, delete) and stops on Ctrl-C', async () => {
        const u = uid('w');
        const tok = ctlOk(['jwt', '--secret-env', 'CTL_JWT_SECRET', '--user', u, '--teams', 'watchers']).stdout.trim();
        const w = inPty([CTL, 'watch', '--endpoint', S.cluster.endpoint, '--project', P, '--jwt', tok]);
        try {
            await w.waitFor(new RegExp(`connected to project ${P} as ${u}; watching presences`), 10000, 'the connected line');
            // the token is not in watch's own process title
            const pids = spawnSync('pgrep', ['-P', String(w.p.pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
            let seen = 0;
            for (const pid of pids) {
                const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
                if (!cmd.includes('watch')) continue;
                seen++;
                assert.ok(!cmd.includes(tok), `the JWT is blanked in the process title: ${JSON.stringify(cmd)}`);
            }
            assert.ok(seen > 0, 'found the watch process');
            const id = uid('wp'), owner = uid('wo');
            const perms = ['read("team:watchers")'];
            const line = (action, status) => new RegExp(`\\d{4}-\\d\\d-\\d\\dT[\\d:.]+\\+00:00\\s+${action}\\s+${id}\\s+${owner}\\s+${status}\\r?\\n`);
            // the subscription may lag the connected line by a moment: re-send until seen
            for (let i = 0; !line('upsert', 'here').test(w.out); i++) {
                assert.ok(i < 50, `no upsert line; output:\n${w.out}`);
                await keyPresences().upsert({ presenceId: id, userId: owner, status: 'here', permissions: perms });
                await sleep(200);
            }
            await keyPresences().update({ presenceId: id, userId: owner, status: 'busy' });
            await w.waitFor(line('update', 'busy'), 5000, 'the update line');
            await keyPresences().delete({ presenceId: id });
            await w.waitFor(line('delete', 'busy'), 5000, 'the delete line');
            // a record the user may not read prints nothing
            const hidden = uid('hp');
            await keyPresences().upsert({ presenceId: hidden, userId: uid('ho'), status: 'secret', permissions: ['read("team:others")'] });
            await sleep(500);
            assert.ok(!w.out.includes(hidden), 'an unreadable record is not shown');
            await keyPresences().delete({ presenceId: hidden });

            w.p.stdin.write('\x03'); // Ctrl-C
            const ex = await Promise.race([w.exit, sleep(5000).then(() => null)]);
            assert.ok(ex, `watch did not stop on Ctrl-C; output:\n${w.out}`);
            assert.equal(ex.code, 0, `exit status after Ctrl-C; output:\n${w.out}`);
        } finally {
            w.kill();
        }
    });

    it('as a guest it shows what guests may read; a bad token is reported and exits 1', async () => {
        const w = inPty([CTL, 'watch', '--endpoint', S.cluster.endpoint, '--project', P]);
        try {
            await w.waitFor(/connected to project ctl as a guest/, 10000, 'the connected line');
            const id = uid('gp'), owner = uid('go');
            for (let i = 0; !w.out.includes(id); i++) {
                assert.ok(i < 50, `no line for a public record; output:\n${w.out}`);
                await keyPresences().upsert({ presenceId: id, userId: owner, status: `public ${i}`, permissions: ['read("any")'] });
                await sleep(200);
            }
            await keyPresences().delete({ presenceId: id });
            w.p.stdin.write('\x03');
            assert.equal((await w.exit).code, 0);
        } finally {
            w.kill();
        }
        const bad = ctl(['watch', '--endpoint', S.cluster.endpoint, '--project', P, '--jwt', 'not.a.token']);
        assert.equal(bad.status, 1, `${bad.stdout} ${bad.stderr}`);
        assert.match(bad.stderr, /401|JWT/);
        const nope = ctl(['watch', '--endpoint', S.cluster.endpoint, '--project', 'nope']);
        assert.equal(nope.status, 1);
        assert.match(nope.stderr, /1008|project/i);
    });
});

describe('presencectl rooms', () => {
    const clients = [];
    after(() => { for (const rc of clients) try { rc.disconnect(); } catch {} });
    const sbKey = (role) => mintJwt(S.jwtSecret, { iss: 'supabase', role, ref: P });
    async function member(key, meta, room = 'room_ctl') {
        const WS = require('ws');
        const { RealtimeClient } = require('@supabase/realtime-js');
        const rc = new RealtimeClient(`ws://127.0.0.1:${S.cluster.port}/realtime/v1`, { params: { apikey: sbKey('anon') }, transport: WS });
        clients.push(rc);
        const ch = rc.channel(room, { config: { presence: { key } } });
        await new Promise((resolve, reject) => ch.subscribe((st, err) => st === 'SUBSCRIBED' ? resolve() : st === 'CHANNEL_ERROR' && reject(err)));
        assert.equal(await ch.track(meta), 'ok');
        return ch;
    }
    const rows = (out) => out.split('\n').filter((l) => /^(alice|bob|carol)\s/.test(l));

    it('show prints every member (one row per connection of a key) and the count; a wrong key exits 1', async () => {
        await member('alice', { name: 'Alice', page: '/a' });
        await member('alice', { name: 'Alice', page: '/b' });   // a second device: one key, two metas
        await member('bob', { name: 'Bob' });
        let r;
        for (let i = 0; ; i++) {
            r = ctlOk(['rooms', 'show', 'room_ctl', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey]);
            if (rows(r.stdout).length === 3 || i > 50) break;
            await sleep(100);
        }
        const got = rows(r.stdout);
        assert.equal(got.length, 3, r.stdout);
        assert.match(r.stdout, /^KEY\s+PHX_REF\s+CONNECTION\s+LEASE\s+META/m);
        assert.equal(got.filter((l) => l.startsWith('alice')).length, 2, r.stdout);
        assert.ok(got.some((l) => /^alice\s.*\{"name":"Alice","page":"\/b"\}$/.test(l)), r.stdout);
        assert.ok(got.some((l) => /^bob\s.*\s\d+\.\d s\s+\{"name":"Bob"\}$/.test(l)), `a lease of seconds left: ${r.stdout}`);
        assert.match(r.stdout, /^3 members in room room_ctl$/m);
        const empty = ctlOk(['rooms', 'show', 'nobody_here', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey]);
        assert.match(empty.stdout, /^0 members in room nobody_here$/m);
        const bad = ctl(['rooms', 'show', 'room_ctl', '--endpoint', S.cluster.endpoint, '--project', P, '--key', 'wrong']);
        assert.equal(bad.status, 1);
        assert.match(bad.stderr, /HTTP 401/);
        assert.equal(ctl(['rooms', 'show', 'room_ctl', '--endpoint', S.cluster.endpoint]).status, 2, 'usage');
    });

    it('watch prints joins and leaves live, is not a member itself, and stops on Ctrl-C; a bad key exits 1', async () => {
        const w = inPty([CTL, 'rooms', 'watch', 'room_ctl', '--endpoint', S.cluster.endpoint, '--apikey', sbKey('service_role')]);
        try {
            await w.waitFor(/joined room room_ctl; watching/, 10000, 'the joined line');
            await w.waitFor(/state\s+bob\s/, 5000, 'the state on joining');
            const carol = await member('carol', { name: 'Carol' });
            await w.waitFor(/\sjoin\s+carol\s+\S+\s+\{"name":"Carol"\}/, 5000, 'carol\'s join');
            await carol.untrack();
            await w.waitFor(/\sleave\s+carol\s/, 5000, 'carol\'s leave');
            const r = ctlOk(['rooms', 'show', 'room_ctl', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey]);
            assert.equal(rows(r.stdout).length, 3, `the watcher is not a member: ${r.stdout}`);
            w.p.stdin.write('\x03');
            const ex = await Promise.race([w.exit, sleep(5000).then(() => null)]);
            assert.ok(ex, `rooms watch did not stop on Ctrl-C; output:\n${w.out}`);
            assert.equal(ex.code, 0, w.out);
        } finally {
            w.kill();
        }
        const bad = ctl(['rooms', 'watch', 'room_ctl', '--endpoint', S.cluster.endpoint, '--apikey', 'not-a-key']);
        assert.equal(bad.status, 1, `${bad.stdout} ${bad.stderr}`);
        assert.match(bad.stderr, /HTTP 40[13]/);
    });
});

describe('presencectl rooms list', () => {
    it('prints every room of the project from every store node, largest first, and follows a leave; a wrong key exits 1', async () => {
        const { shardOwner } = require('./lib/shard');
        // three rooms, on both store nodes (rooms are placed by (project, channel))
        const names = [];
        for (let i = 0; names.length < 3; i++) {
            const n = `lst-${i}`;
            const owners = names.map((x) => shardOwner(P, x, 2));
            if (names.length < 2 ? !owners.includes(shardOwner(P, n, 2)) || names.length === 0 : true) names.push(n);
        }
        assert.deepEqual(new Set(names.map((x) => shardOwner(P, x, 2))), new Set([1, 2]));
        const [big, mid, one] = names;
        const WS = require('ws');
        const { RealtimeClient } = require('@supabase/realtime-js');
        const clients = [];
        const join = async (room, key) => {
            const rc = new RealtimeClient(`ws://127.0.0.1:${S.cluster.port}/realtime/v1`, { params: { apikey: mintJwt(S.jwtSecret, { role: 'anon', ref: P }) }, transport: WS });
            clients.push(rc);
            const ch = rc.channel(room, { config: { presence: { key } } });
            await new Promise((resolve, reject) => ch.subscribe((st, err) => st === 'SUBSCRIBED' ? resolve() : st === 'CHANNEL_ERROR' && reject(err)));
            assert.equal(await ch.track({ k: key }), 'ok');
            return ch;
        };
        try {
            for (const k of ['a', 'b', 'c', 'd']) await join(big, k);
            const leaving = await join(mid, 'a');
            await join(mid, 'b');
            await join(one, 'a');
            const args = ['rooms', 'list', '--endpoint', S.cluster.endpoint, '--project', P, '--key', S.adminKey];
            const table = (out) => out.split('\n').filter((l) => /^(lst-|room_ctl)/.test(l)).map((l) => l.split(/\s+/));
            let r;
            for (let i = 0; i < 50; i++) {
                r = ctlOk(args);
                if (table(r.stdout).some((x) => x[0] === big && x[1] === '4')) break;
                await sleep(100);
            }
            assert.match(r.stdout, /^CHANNEL\s+MEMBERS$/m);
            const rows = table(r.stdout);
            const mine = rows.filter((x) => names.includes(x[0]));
            assert.deepEqual(mine, [[big, '4'], [mid, '2'], [one, '1']], r.stdout);
            const counts = rows.map((x) => Number(x[1]));
            assert.deepEqual(counts, [...counts].sort((a, b) => b - a), `largest first: ${r.stdout}`);
            const total = rows.length, sum = counts.reduce((a, b) => a + b, 0);
            assert.match(r.stdout, new RegExp(`^${total} rooms, ${sum} members in those shown$`, 'm'));
            await leaving.untrack();
            for (let i = 0; i < 50; i++) {
                r = ctlOk(args);
                if (table(r.stdout).some((x) => x[0] === mid && x[1] === '1')) break;
                await sleep(100);
            }
            assert.ok(table(r.stdout).some((x) => x[0] === mid && x[1] === '1'), `a leave lowers the count: ${r.stdout}`);
            const bad = ctl(['rooms', 'list', '--endpoint', S.cluster.endpoint, '--project', P, '--key', 'wrong']);
            assert.equal(bad.status, 1);
            assert.match(bad.stderr, /HTTP 401/);
            assert.equal(ctl(['rooms', 'list', '--endpoint', S.cluster.endpoint]).status, 2, 'usage');
            assert.equal(ctl([...args, 'extra']).status, 2, 'usage: an extra argument');
        } finally {
            for (const rc of clients) try { rc.disconnect(); } catch {}
        }
    });
});

describe('secrets stay secret', () => {
    it('no key, token or JWT secret used here appears in the server log', async () => {
        await S.cluster.stop();
        const log = S.cluster.finalLog || '';
        assert.ok(log.length > 500, 'the log was captured');
        const secrets = [...SEEN, S.jwtSecret, fs.readFileSync(S.edFile, 'utf8').trim()];
        const sigs = [...SEEN].map((x) => x.split('.')).filter((parts) => parts.length === 3).map((parts) => parts[2]);
        const found = [...secrets, ...sigs].filter((x) => x.length >= 16 && log.includes(x));
        if (found.length) S.cluster.keepLog();
        assert.equal(found.length, 0, `${found.length} of ${secrets.length} secrets found in the server log (first chars: ${found.map((x) => x.slice(0, 6))})`);
    });
});
