'use strict';
// The roster helper (clients/web/presence.js) in headless Chromium, through the example pages
// (examples/web: the seed's Alpine markup, and the vanilla page), against a real cluster: the
// official web SDK 28 (examples/web/node_modules) and 27 (tests/e2e/node_modules) as the pages
// load them, the helper as the gateways serve it (/v1/presence.js), Alpine.js served locally.
//
// Checked: two pages as two users see each other in $presence.list within a second; set('busy',
// {page}) shows on the other page; a hidden page turns away and shown turns online; a dropped
// socket and a SIGKILL of every gateway make nobody flap or appear twice, and what was missed is
// caught up; Appear offline removes at once; a page in another room sees neither and is seen by
// neither; a closed page leaves the other's list within the grace period (5 s) plus a second; no
// page logs an error (but WebSocket errors while the gateways are down). Screenshots:
// tests/browser/artifacts/.
//
// Run: PRESENCED_BIN=$PWD/build/presenced node --test tests/browser/helper.test.js
// (needs Debian's chromium, npm ci in tests/e2e and in examples/web). PRESENCE_LOCAL_HELPER=1:
// the pages load clients/web/presence.js from this tree, not the binary's embedded copy.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const B = require('./lib/browser.js');

const REPO = path.resolve(__dirname, '..', '..');
const EXAMPLES = path.join(REPO, 'examples', 'web');
const SDK27 = path.join(REPO, 'tests', 'e2e', 'node_modules', 'appwrite');
const GRACE_MS = 5000; // the connection-bound presence's grace period (README, Realtime)

const H = B.useBrowserCluster(test, { gateways: 2 });
const servers = [];
const pages = {};

test.after(async () => {
    for (const s of servers) await s.close();
});

function exampleServer(sdkDir) {
    const { start } = require(path.join(EXAMPLES, 'server.js'));
    const c = H.cluster;
    return start({ port: 0, endpoint: c.endpoint, project: c.project, jwtSecret: c.jwtSecret, ...(sdkDir ? { sdkDir } : {}) })
        .then((s) => { servers.push(s); return s; });
}

// What $presence holds on an Alpine page (read through Alpine itself).
const magic = (page, expr) => page.evaluate((e) => window.Alpine.evaluate(document.querySelector('[x-data]'), e), expr);
const rosterOf = (page) => magic(page, '$presence.list.map((p) => ({ userId: p.userId, status: p.status, name: p.metadata.name, page: p.metadata.page ?? null, color: p.color }))');
const usersOf = async (page) => (await rosterOf(page)).map((p) => p.userId).sort();
// What the page shows (the seed's template, rendered by Alpine).
const shownOf = (page) => page.$$eval('.roster .row', (rows) => rows.map((r) => r.innerText.replace(/\s+/g, ' ').trim()));

async function openAlpine(server, name, room) {
    const page = await B.newPage(H.browser);
    await page.goto(`${server.url}/alpine.html?name=${encodeURIComponent(name)}&room=${room}`);
    await page.waitForFunction(() => window.Alpine && document.querySelector('[x-data]')?._x_dataStack);
    return page;
}

async function goOnline(page) {
    await page.click('text=Go online');
    await B.waitFor(() => magic(page, '$presence.ready'), 5000, '$presence.ready');
}

// A visibility change as the browser makes it when the tab is hidden or shown. Headless Chromium
// keeps every page visible (tried: another tab brought to front, the window minimised through
// CDP Browser.setWindowBounds: visibilityState stays "visible", no event), so the page's
// visibilityState is set and visibilitychange dispatched: what the helper listens to.
async function setHidden(page, hidden) {
    await page.evaluate((h) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
        document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
}

test('the gateways serve the helper at /v1/presence.js, and the pages load it from there', { timeout: 20000 }, async (t) => {
    if (H.skip) return t.skip(H.skip);
    const r = await fetch(`${H.cluster.endpoint}/presence.js`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /javascript/);
    assert.equal(await r.text(), fs.readFileSync(path.join(REPO, 'clients', 'web', 'presence.js'), 'utf8'), 'the embedded copy is this tree\'s');
    const s = await exampleServer();
    const cfg = await (await fetch(`${s.url}/config.json`)).json();
    if (process.env.PRESENCE_LOCAL_HELPER === '1') assert.equal(cfg.presenceUrl, '/presence.js');
    else assert.equal(cfg.presenceUrl, `${H.cluster.endpoint}/presence.js`);
});

test('two pages as two users (SDK 28 and SDK 27) see each other in $presence.list within a second', { timeout: 30000 }, async (t) => {
    if (H.skip) return t.skip(H.skip);
    const s28 = servers[0] ?? await exampleServer();
    const s27 = await exampleServer(SDK27);
    pages.ada = await openAlpine(s28, 'Ada', 'lobby');
    pages.bob = await openAlpine(s27, 'Bob', 'lobby');
    assert.equal(await magic(pages.ada, '$presence.ready'), false, 'not before start()');
    await goOnline(pages.ada);
    assert.deepEqual(await usersOf(pages.ada), ['ada']);
    assert.equal(await magic(pages.ada, '$presence.me'), 'online');
    const t0 = Date.now();
    await goOnline(pages.bob);
    await B.waitFor(async () => (await usersOf(pages.ada)).includes('bob'), 1000, 'Ada\'s page to list Bob');
    const ms = Date.now() - t0;
    assert.deepEqual(await usersOf(pages.bob), ['ada', 'bob']);
    const ada = await rosterOf(pages.ada);
    const bob = ada.find((p) => p.userId === 'bob');
    assert.equal(bob.name, 'Bob', 'metadata.name from the token\'s name claim');
    assert.equal(bob.status, 'online');
    assert.match(bob.color, /^hsl\(/);
    assert.deepEqual((await rosterOf(pages.bob)).find((p) => p.userId === 'bob').color, bob.color, 'the same colour on both pages');
    assert.deepEqual(await shownOf(pages.ada), ['Ada Online', 'Bob Online']);
    assert.match(await pages.ada.innerText('body'), /You're online as online/);
    t.diagnostic(`Bob listed on Ada's page ${ms} ms after his click on "Go online"`);
});

test('set(\'busy\', {page: \'Invoice #42\'}) shows on the other page', { timeout: 20000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous test');
    await magic(pages.bob, "$presence.set('busy', { page: 'Invoice #42' })");
    assert.equal(await magic(pages.bob, '$presence.me'), 'busy');
    await B.waitFor(async () => (await rosterOf(pages.ada)).find((p) => p.userId === 'bob' && p.status === 'busy'), 3000, 'Bob busy on Ada\'s page');
    const bob = (await rosterOf(pages.ada)).find((p) => p.userId === 'bob');
    assert.equal(bob.page, 'Invoice #42');
    assert.equal(bob.name, 'Bob', 'the name is kept');
    await B.waitFor(async () => (await shownOf(pages.ada)).includes('Bob Busy Invoice #42'), 2000, 'the row rendered');
    // the seed's Editing button: a name and a page in one click
    await pages.ada.click('text=Editing');
    await B.waitFor(async () => (await rosterOf(pages.bob)).find((p) => p.userId === 'ada' && p.status === 'editing' && p.page === 'Invoice #42'), 3000, 'Ada editing on Bob\'s page');
    await B.screenshot(pages.ada, 'helper-alpine-lobby', { clip: { x: 300, y: 16, width: 680, height: 360 } });
});

test('a hidden page turns away; shown again it turns back to its status', { timeout: 20000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    const status = async (who) => (await rosterOf(pages.ada)).find((p) => p.userId === who)?.status;
    await setHidden(pages.bob, true);
    assert.equal(await magic(pages.bob, '$presence.me'), 'away');
    await B.waitFor(async () => (await status('bob')) === 'away', 3000, 'Bob away on Ada\'s page');
    await setHidden(pages.bob, false);
    await B.waitFor(async () => (await status('bob')) === 'busy', 3000, 'Bob back to busy (his last status)');
    await magic(pages.bob, "$presence.set('online')");
    await setHidden(pages.bob, true);
    await B.waitFor(async () => (await status('bob')) === 'away', 3000, 'Bob away again');
    await setHidden(pages.bob, false);
    await B.waitFor(async () => (await status('bob')) === 'online', 3000, 'Bob online on Ada\'s page');
    assert.equal(await magic(pages.bob, '$presence.me'), 'online');
});

// Every roster a page's $presence has shown since now, as "user:status" lists.
const recordChanges = (page) => page.evaluate(() => {
    window.rosters = [];
    const ctl = window.Alpine.evaluate(document.querySelector('[x-data]'), '$presence.controller');
    ctl.onChange((p) => window.rosters.push(p.list.map((e) => `${e.userId}:${e.status}`)));
});
const changesOf = (page) => page.evaluate(() => window.rosters);

test('an SDK reconnect: nobody flaps or doubles, and a change missed while down is caught up', { timeout: 30000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    await recordChanges(pages.ada);
    await recordChanges(pages.bob);
    // Bob's socket drops (not a close he asked for): the SDK reconnects after 1 s and re-sends
    // his presence, within the grace period
    await magic(pages.bob, '$presence.controller._run.rt.socket.close(4000)');
    await magic(pages.ada, "$presence.set('online', { page: 'Reports' })"); // Bob misses this event
    await B.waitFor(async () => (await rosterOf(pages.bob)).find((p) => p.userId === 'ada' && p.page === 'Reports'), 8000, 'Bob\'s page to catch up after the reconnect');
    await B.sleep(1000);
    const ada = await changesOf(pages.ada);
    const bob = await changesOf(pages.bob);
    for (const [who, log] of [['ada', ada], ['bob', bob]]) {
        for (const r of log) {
            assert.deepEqual(r.map((x) => x.split(':')[0]).sort(), ['ada', 'bob'], `${who}'s page showed ${JSON.stringify(r)}: ${JSON.stringify(log)}`);
        }
    }
    assert.ok(bob.some((r) => r.includes('ada:online')), 'Bob\'s page did get the change');
    assert.deepEqual(await magic(pages.bob, '$presence.error'), null);
    t.diagnostic(`roster changes during the reconnect: Ada's page ${ada.length}, Bob's page ${bob.length}`);
});

test('every gateway killed (SIGKILL) and restarted: both pages reconnect, and nobody flaps or doubles', { timeout: 40000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    await recordChanges(pages.ada);
    await recordChanges(pages.bob);
    const before = { ada: pages.ada.problems.length, bob: pages.bob.problems.length };
    const old = H.cluster.kill('gateway');
    assert.equal(old.length, 2);
    await H.cluster.waitRestarted('gateway', undefined, old);
    // the SDKs reconnect (1 s, then again until a gateway answers) and re-send the presences
    await B.sleep(2500);
    await magic(pages.ada, "$presence.set('online', { page: 'After the restart' })");
    await B.waitFor(async () => (await rosterOf(pages.bob)).find((p) => p.userId === 'ada' && p.page === 'After the restart'), 10000, 'Bob\'s page live again');
    await magic(pages.bob, "$presence.set('online', { page: 'Back' })");
    await B.waitFor(async () => (await rosterOf(pages.ada)).find((p) => p.userId === 'bob' && p.page === 'Back'), 5000, 'Ada\'s page live again');
    for (const who of ['ada', 'bob']) {
        const log = await changesOf(pages[who]);
        for (const r of log) assert.deepEqual(r.map((x) => x.split(':')[0]).sort(), ['ada', 'bob'], `${who}'s page showed ${JSON.stringify(r)}: ${JSON.stringify(log)}`);
        // the browser and the SDK report the dropped socket and failed reconnects as console errors
        const fresh = pages[who].problems.splice(before[who]);
        assert.deepEqual(fresh.filter((m) => !/WebSocket/.test(m)), [], `${who}: only WebSocket errors while the gateways were down`);
        t.diagnostic(`${who}'s page: ${log.length} roster changes, ${fresh.length} WebSocket errors logged`);
    }
});

test('Appear offline removes you from the others at once and keeps you watching; set() comes back', { timeout: 20000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    const t0 = Date.now();
    await pages.bob.click('text=Appear offline');
    await B.waitFor(async () => !(await usersOf(pages.ada)).includes('bob'), 2000, 'Bob gone from Ada\'s page (no grace: deleted)');
    const ms = Date.now() - t0;
    assert.equal(await magic(pages.bob, '$presence.me'), null);
    assert.deepEqual(await usersOf(pages.bob), ['ada'], 'Bob still sees Ada');
    await magic(pages.ada, "$presence.set('busy', { page: 'Reports' })");
    await B.waitFor(async () => (await rosterOf(pages.bob)).find((p) => p.userId === 'ada' && p.status === 'busy'), 3000, 'Ada\'s change on Bob\'s page');
    await setHidden(pages.bob, true);  // hidden while offline: stays offline
    await setHidden(pages.bob, false);
    await B.sleep(300);
    assert.deepEqual(await usersOf(pages.ada), ['ada']);
    await pages.bob.click('button:text-is("Online")');
    await B.waitFor(async () => (await rosterOf(pages.ada)).find((p) => p.userId === 'bob' && p.status === 'online'), 3000, 'Bob back on Ada\'s page');
    assert.equal(await magic(pages.bob, '$presence.me'), 'online');
    t.diagnostic(`Bob left Ada's list ${ms} ms after "Appear offline"`);
});

test('a reload that goes online again within the grace period: the others never see it leave', { timeout: 30000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    await recordChanges(pages.ada);
    const problems = pages.bob.problems.length;
    await pages.bob.reload();
    await pages.bob.waitForFunction(() => window.Alpine && document.querySelector('[x-data]')?._x_dataStack);
    await goOnline(pages.bob);
    assert.deepEqual(await usersOf(pages.bob), ['ada', 'bob']);
    await B.sleep(GRACE_MS + 1500); // the old page's socket is long past its grace period
    const log = await changesOf(pages.ada);
    assert.ok(log.length >= 1, 'Ada\'s page saw Bob\'s new upsert');
    for (const r of log) assert.deepEqual(r.map((x) => x.split(':')[0]).sort(), ['ada', 'bob'], `Ada's page showed ${JSON.stringify(r)}: ${JSON.stringify(log)}`);
    assert.deepEqual(await usersOf(pages.ada), ['ada', 'bob']);
    // a reload closes the old page's socket: the SDK may report it
    pages.bob.problems.splice(problems).filter((m) => !/WebSocket/.test(m)).forEach((m) => pages.bob.problems.push(m));
});

test('a page in another room sees neither of them, and neither sees it', { timeout: 20000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    pages.cat = await openAlpine(servers[0], 'Cat', 'kitchen');
    await goOnline(pages.cat);
    assert.deepEqual(await usersOf(pages.cat), ['cat']);
    // changes in the lobby after Cat arrived: events flow, none of them reach the kitchen
    await magic(pages.ada, "$presence.set('online', { page: 'Dashboard' })");
    await B.waitFor(async () => (await rosterOf(pages.bob)).find((p) => p.userId === 'ada' && p.page === 'Dashboard'), 3000, 'the lobby\'s change on Bob\'s page');
    await magic(pages.cat, "$presence.set('cooking')");
    // the vanilla page in the kitchen sees Cat cooking: the kitchen's own events do flow
    const v = await B.newPage(H.browser);
    pages.dan = v;
    await v.goto(`${servers[0].url}/vanilla.html?name=Dan&room=kitchen`);
    await B.waitFor(() => v.evaluate(() => window.presence?.ready), 5000, 'the vanilla page ready');
    await B.waitFor(async () => (await v.$$eval('#roster .row', (rs) => rs.map((r) => r.dataset.user + ':' + r.innerText.replace(/\s+/g, ' ').trim()))).join('|') === 'cat:Cat Cooking|dan:Dan Online', 3000, 'the vanilla roster');
    await B.waitFor(async () => (await usersOf(pages.cat)).join() === 'cat,dan', 3000, 'Dan on Cat\'s page');
    assert.deepEqual(await usersOf(pages.cat), ['cat', 'dan']);
    assert.deepEqual(await usersOf(pages.ada), ['ada', 'bob']);
    assert.deepEqual(await usersOf(pages.bob), ['ada', 'bob']);
    await B.screenshot(v, 'helper-vanilla-kitchen');
});

test('closing a page removes it from the other\'s list within the grace period plus a second', { timeout: 30000 }, async (t) => {
    if (H.skip || !pages.bob) return t.skip(H.skip || 'needs the previous tests');
    const problems = Object.entries(pages).flatMap(([who, p]) => p.problems.map((m) => `${who}: ${m}`));
    assert.deepEqual(problems, [], 'no page logged an error');
    const t0 = Date.now();
    await pages.bob.context().close();
    await B.waitFor(async () => !(await usersOf(pages.ada)).includes('bob'), GRACE_MS + 1000, 'Bob gone from Ada\'s page');
    const ms = Date.now() - t0;
    assert.ok(ms >= GRACE_MS - 1000, `gone after ${ms} ms: the grace period keeps a reload from flapping`);
    assert.deepEqual(await shownOf(pages.ada), ['Ada Online Dashboard']);
    t.diagnostic(`Bob left Ada's list ${ms} ms after his page closed (grace ${GRACE_MS} ms)`);
    await B.screenshot(pages.ada, 'helper-alpine-after-close');
    for (const p of Object.values(pages)) await p.context().close().catch(() => {});
});
