'use strict';
// The live console (/console/, console/ in the repository) in headless Chromium against a real
// cluster: signing in with an API key keeps it in the tab (sessionStorage, never in a URL); a
// record written with node-appwrite shows in the records, the counts and the event stream, and
// its delete event arrives live; the cluster's store nodes and their record counts; filters; a
// paused event stream holds events and shows them on resume; the page runs under its
// Content-Security-Policy with no violation. Also the gateway's static serving itself: headers,
// ETag and 304, the helper's URL with CORS. Screenshots: tests/browser/artifacts/console*.png.
const test = require('node:test');
const assert = require('node:assert/strict');
const b = require('./lib/browser.js');

const ctx = b.useBrowserCluster(test);
const { Client, Presences } = b.requireE2E('node-appwrite');

function presences() {
    const c = ctx.cluster;
    return new Presences(new Client().setEndpoint(c.endpoint).setProject(c.project).setKey(c.apiKey));
}

const text = (page, sel) => page.locator(sel).first().textContent({ timeout: 1000 }).catch(() => null);
const count = (page, sel) => page.locator(sel).count();

async function signIn(page) {
    const c = ctx.cluster;
    await page.goto(`${c.url}/console/`);
    await page.fill('#project', c.project);
    await page.fill('#key', c.apiKey);
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('body[data-ready=true]', { timeout: 5000 });
}

test('the gateway serves the console and the helper with their headers, ETag and 304', async (t) => {
    if (ctx.skip) return t.skip(ctx.skip);
    const c = ctx.cluster;
    const r = await fetch(`${c.url}/console/`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.match(await r.text(), /<title>presenced console<\/title>/);
    const csp = r.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /https?:|\*|unsafe/, 'no external origin, no wildcard, no unsafe-*');
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
    assert.equal(r.headers.get('cache-control'), 'no-cache');
    const etag = r.headers.get('etag');
    assert.match(etag, /^"[0-9a-f]{20}"$/);

    const again = await fetch(`${c.url}/console/index.html`, { headers: { 'if-none-match': `"x", W/${etag}` } });
    assert.equal(again.status, 304);
    assert.equal(again.headers.get('etag'), etag);
    assert.equal((await again.arrayBuffer()).byteLength, 0);
    for (const inm of ['"0000"', ',,, ,', 'W/', '"', 'W/"', etag.slice(0, -1), `${etag}x`, 'x'.repeat(8000)]) {
        const res = await fetch(`${c.url}/console/`, { headers: { 'if-none-match': inm } });
        assert.equal(res.status, 200, `If-None-Match: ${inm.slice(0, 40)}`);
        await res.arrayBuffer();
    }
    const star = await fetch(`${c.url}/console/`, { headers: { 'if-none-match': '*' } });
    assert.equal(star.status, 304);

    const head = await fetch(`${c.url}/console/`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), r.headers.get('content-length'));
    assert.equal(head.headers.get('etag'), etag);
    // the gateway's header cap stands in front of the assets as of every path
    const big = await fetch(`${c.url}/console/`, { headers: { 'x-filler': 'a'.repeat(20000) } });
    assert.equal(big.status, 431);

    const redirect = await fetch(`${c.url}/console`, { redirect: 'manual' });
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.get('location'), '/console/');

    const js = await fetch(`${c.url}/console/console.js`);
    assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
    const css = await fetch(`${c.url}/console/console.css`);
    assert.equal(css.headers.get('content-type'), 'text/css; charset=utf-8');

    const helper = await fetch(`${c.url}/v1/presence.js`, { headers: { origin: 'https://app.example' } });
    assert.equal(helper.status, 200);
    assert.equal(helper.headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.equal(helper.headers.get('access-control-allow-origin'), '*');
    assert.equal(helper.headers.get('cache-control'), 'public, max-age=300');
    assert.match(await helper.text(), /export /);
    const dts = await fetch(`${c.url}/v1/presence.d.ts`);
    assert.equal(dts.status, 200);
    assert.equal(dts.headers.get('content-type'), 'text/plain; charset=utf-8');

    // not an asset: Appwrite's route-not-found, and the REST API beside it is untouched
    for (const [method, path] of [['GET', '/console/nope.js'], ['POST', '/console/'], ['GET', '/v1/presence.jsx']]) {
        const res = await fetch(`${c.url}${path}`, { method });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal((await res.json()).type, 'general_route_not_found', `${method} ${path}`);
    }
    const list = await fetch(`${c.endpoint}/presences`, { headers: { 'x-appwrite-project': c.project, 'x-appwrite-key': c.apiKey } });
    assert.equal(list.status, 200);
});

test('a record written with node-appwrite: records, counts, health and its events, live', async (t) => {
    if (ctx.skip) return t.skip(ctx.skip);
    const page = await b.newPage(ctx.browser);
    await signIn(page);
    const key = ctx.cluster.apiKey;
    assert.ok(!page.url().includes(key), 'the key is not in the URL');
    assert.equal(await page.evaluate(() => JSON.parse(sessionStorage.getItem('presenced.console')).key), key);
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing kept beyond the tab');
    assert.equal(await text(page, '#total'), '0');

    const api = presences();
    await api.upsert({ presenceId: 'console-1', userId: 'alice', status: 'online', metadata: { room: 'lobby', name: 'Alice' } });
    const row = '#records tr[data-id="console-1"]';
    await page.waitForSelector(row, { timeout: 4000 });
    assert.equal(await text(page, `${row} td:nth-child(2)`), 'alice');
    assert.equal(await text(page, `${row} td:nth-child(3)`), 'online');
    assert.equal(await text(page, '#total'), '1');
    assert.equal(await text(page, '#by-status li[data-key="online"] .n'), '1');
    assert.equal(await text(page, '#by-room li[data-key="lobby"] .n'), '1');
    assert.equal(await count(page, '#events li[data-action="upsert"][data-id="console-1"]'), 1);
    assert.match(await text(page, '#roster li[data-user="alice"]'), /Alice\s*online/);

    // the store nodes and their record counts (all projects; the gauges refresh about once a second)
    await b.waitFor(async () => (await count(page, '#stores tbody tr')) === 2, 5000, 'two store nodes');
    await b.waitFor(async () => {
        const cells = await page.locator('#stores tbody tr td:nth-child(3)').allTextContents();
        return cells.reduce((a, s) => a + Number(s), 0) === 1;
    }, 5000, 'store record counts summing to 1');
    assert.deepEqual(await page.locator('#stores tbody tr td:nth-child(2)').allTextContents(), ['up', 'up']);
    assert.equal(await text(page, '#h-cluster'), 'pass');
    assert.equal(await text(page, '#h-ready'), 'ready');
    assert.equal(await text(page, '#h-reaper'), 'up');
    // rooms (issue 13) are shown exactly when the cluster reports room gauges
    const roomGauges = (await ctx.cluster.metrics()).samples.filter((s) => /room/.test(s.name) && !/_total$/.test(s.name));
    assert.equal(await page.locator('#rooms').isVisible(), roomGauges.length > 0);
    if (roomGauges.length) assert.equal(await count(page, '#rooms tbody tr'), roomGauges.length);

    // a second record and an update: per-status counts and the filters
    await api.upsert({ presenceId: 'console-2', userId: 'bob', status: 'away', metadata: { room: 'kitchen' } });
    await api.update({ presenceId: 'console-1', userId: 'alice', status: 'busy' });
    await b.waitFor(async () => (await text(page, '#total')) === '2', 4000, 'two records');
    await b.waitFor(async () => (await text(page, `${row} td:nth-child(3)`)) === 'busy', 4000, 'the update');
    assert.equal(await count(page, '#events li[data-action="update"][data-id="console-1"]'), 1);
    assert.equal(await text(page, '#by-status li[data-key="busy"] .n'), '1');
    assert.equal(await text(page, '#by-status li[data-key="away"] .n'), '1');
    assert.equal(await count(page, '#by-status li[data-key="online"]'), 0);
    await page.fill('#f-status', 'away');
    assert.deepEqual(await page.locator('#records tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.id)), ['console-2']);
    await page.fill('#f-status', '');
    await page.fill('#f-meta', 'room=lobby');
    assert.deepEqual(await page.locator('#records tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.id)), ['console-1']);
    await page.fill('#f-meta', '');
    await page.fill('#f-user', 'bo');
    assert.deepEqual(await page.locator('#records tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.id)), ['console-2']);
    await page.fill('#f-user', '');
    await b.screenshot(page, 'console', { fullPage: true });

    // paused: the delete of console-2 is held, and shown on resume
    await page.click('#events-pause');
    await api.delete({ presenceId: 'console-2' });
    await b.waitFor(async () => (await text(page, '#total')) === '1', 4000, 'the count after the delete');
    await b.waitFor(async () => /1 held/.test(await text(page, '#events-held')), 3000, 'a held event');
    assert.equal(await count(page, '#events li[data-action="delete"]'), 0, 'nothing shown while paused');
    await page.click('#events-pause');
    assert.equal(await count(page, '#events li[data-action="delete"][data-id="console-2"]'), 1);

    // the delete event of the record written first, live
    const t0 = Date.now();
    await api.delete({ presenceId: 'console-1' });
    await page.waitForSelector('#events li[data-action="delete"][data-id="console-1"]', { timeout: 4000 });
    t.diagnostic(`delete shown ${Date.now() - t0} ms after the REST delete returned`);
    assert.equal(await count(page, row), 0);
    assert.equal(await text(page, '#total'), '0');
    assert.equal(await count(page, '#roster li'), 0);
    assert.equal(await text(page, '#events li:first-child .mono'), 'presences.console-1.delete');
    assert.doesNotMatch(await text(page, '#events li:first-child'), /expired/, 'deleted by hand');
    await b.screenshot(page, 'console-after-delete', { fullPage: true });

    // a reload stays signed in (same tab); another tab (a new context) is asked to sign in
    await page.reload();
    await page.waitForSelector('body[data-ready=true]', { timeout: 5000 });
    const other = await b.newPage(ctx.browser);
    await other.goto(`${ctx.cluster.url}/console/`);
    assert.equal(await other.locator('#signin').isVisible(), true);
    assert.equal(await other.locator('#app').isVisible(), false);

    // sign out forgets the key
    await page.click('#signout');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('presenced.console')), null);
    assert.deepEqual(page.problems, [], 'no script error and no CSP violation');
    assert.deepEqual(other.problems, []);
    await page.context().close();
    await other.context().close();
});

test('a record that expires: its delete (by the reaper) is marked expired', async (t) => {
    if (ctx.skip) return t.skip(ctx.skip);
    const page = await b.newPage(ctx.browser);
    await signIn(page);
    const api = presences();
    const expiresAt = new Date(Date.now() + 3000).toISOString();
    await api.upsert({ presenceId: 'console-exp', userId: 'carol', status: 'online', expiresAt });
    await page.waitForSelector('#events li[data-action="upsert"][data-id="console-exp"]', { timeout: 4000 });
    const gone = '#events li[data-action="delete"][data-id="console-exp"]';
    await page.waitForSelector(gone, { timeout: 8000 });
    assert.match(await text(page, gone), /\(expired\)/);
    await page.context().close();
});

test('a store node that stops answering is shown down, the cluster failing, and back up after', async (t) => {
    if (ctx.skip) return t.skip(ctx.skip);
    const c = ctx.cluster;
    const page = await b.newPage(ctx.browser);
    await signIn(page);
    const state = (n) => text(page, `#stores tr[data-node="${n}"] td:nth-child(2)`);
    await b.waitFor(async () => (await state(1)) === 'up' && (await state(2)) === 'up', 5000, 'both nodes up');
    const stopped = c.kill('store', 1, 'SIGSTOP');
    assert.equal(stopped.length, 1);
    try {
        // the broker marks a node silent for 1 s down; the console asks once a second
        await b.waitFor(async () => (await state(1)) === 'down', 8000, 'node 1 down');
        assert.equal(await state(2), 'up');
        await b.waitFor(async () => /^fail/.test(await text(page, '#h-cluster')), 8000, 'the cluster failing');
        await b.screenshot(page, 'console-store-down', { fullPage: true });
    } finally {
        c.kill('store', 1, 'SIGCONT');
    }
    await b.waitFor(async () => (await state(1)) === 'up', 8000, 'node 1 up again');
    await b.waitFor(async () => (await text(page, '#h-cluster')) === 'pass', 8000, 'the cluster passing');
    await b.waitFor(() => page.locator('#banner').isHidden(), 5000, 'no banner');
    await page.context().close();
});

test('a wrong key is refused at sign-in with the server\'s message, and nothing is kept', async (t) => {
    if (ctx.skip) return t.skip(ctx.skip);
    const c = ctx.cluster;
    const page = await b.newPage(ctx.browser);
    await page.goto(`${c.url}/console/`);
    await page.fill('#project', c.project);
    await page.fill('#key', 'not-the-key');
    await page.click('#signin-form button[type=submit]');
    await b.waitFor(async () => (await text(page, '#signin-error')) || null, 4000, 'an error');
    assert.match(await text(page, '#signin-error'), /key/i);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('presenced.console')), null);
    assert.equal(await page.locator('#app').isVisible(), false);
    await page.context().close();
});
