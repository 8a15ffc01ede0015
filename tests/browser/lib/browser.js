'use strict';
// The browser tests' harness: Debian's chromium driven by playwright-core (from tests/e2e's
// node_modules; no browser download: it is given the executable), a presenced cluster from
// tests/e2e/lib/cluster.js on free loopback ports, and clean-up by process id: the browser runs
// as a playwright browser server whose pid is known, killed (with its process group) on any
// exit, like the clusters. Screenshots go to tests/browser/artifacts/ (git-ignored).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createRequire } = require('node:module');

const BROWSER_DIR = path.resolve(__dirname, '..');
const E2E_DIR = path.resolve(BROWSER_DIR, '..', 'e2e');
const ARTIFACTS = path.join(BROWSER_DIR, 'artifacts');
const requireE2E = createRequire(path.join(E2E_DIR, 'package.json'));
const cluster = require(path.join(E2E_DIR, 'lib', 'cluster.js'));

// The chromium to drive: $CHROMIUM_BIN, else Debian's; null when there is none.
function chromiumPath() {
    const cands = [process.env.CHROMIUM_BIN, '/usr/bin/chromium', '/usr/bin/chromium-browser'];
    for (const c of cands) if (c && fs.existsSync(c)) return c;
    return null;
}

const live = new Set(); // pids of browser servers still running
function killAllSync() {
    for (const pid of live) {
        try { process.kill(-pid, 'SIGKILL'); } catch {}
        try { process.kill(pid, 'SIGKILL'); } catch {}
    }
    live.clear();
}
process.on('exit', killAllSync);

// Starts chromium (headless) and connects to it. Returns {browser, pid, close()}.
async function launchBrowser() {
    const exe = chromiumPath();
    if (!exe) throw new Error('chromium not found (install Debian\'s chromium, or set CHROMIUM_BIN)');
    const { chromium } = requireE2E('playwright-core');
    const server = await chromium.launchServer({
        executablePath: exe,
        headless: true,
        // root in a container has no user namespaces for chromium's sandbox
        chromiumSandbox: process.getuid && process.getuid() !== 0,
        args: ['--disable-gpu', '--disable-dev-shm-usage'],
        env: { ...process.env, HOME: fs.mkdtempSync(path.join(os.tmpdir(), 'pd-browser-')) },
    });
    const pid = server.process().pid;
    live.add(pid);
    const browser = await chromium.connect(server.wsEndpoint());
    return {
        browser,
        pid,
        async close() {
            try { await browser.close(); } catch {}
            try { await Promise.race([server.close(), cluster.sleep(5000)]); } catch {}
            try { process.kill(pid, 'SIGKILL'); } catch {} // already gone, normally
            live.delete(pid);
        },
    };
}

// A page that records what would otherwise go unseen: uncaught errors and console errors
// (a Content-Security-Policy violation is one). page.problems lists them.
async function newPage(browser, opts = {}) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...opts });
    const page = await context.newPage();
    page.problems = [];
    page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
    return page;
}

// Saves a screenshot as artifacts/<name>.png; returns its path.
async function screenshot(page, name, opts = {}) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path: file, ...opts });
    return file;
}

// node:test glue: one cluster and one browser per file, both stopped after it. A file whose
// machine has no chromium skips every test, saying why.
function useBrowserCluster(nodeTest, opts = {}) {
    const holder = { cluster: null, browser: null, skip: chromiumPath() ? false : 'chromium is not installed' };
    nodeTest.before(async () => {
        if (holder.skip) return;
        holder.cluster = await cluster.startCluster({ label: 'browser', ...opts });
        holder.b = await launchBrowser();
        holder.browser = holder.b.browser;
    }, { timeout: 60000 });
    nodeTest.afterEach((t) => { if (holder.cluster && t.passed === false) holder.cluster.failed = true; });
    nodeTest.after(async () => {
        if (holder.b) await holder.b.close();
        if (holder.cluster) await holder.cluster.stop();
    }, { timeout: 30000 });
    return holder;
}

// Polls fn until it returns a truthy value; returns it, or throws with the last value seen.
async function waitFor(fn, timeoutMs = 5000, what = 'condition') {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        last = await fn();
        if (last) return last;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
        await cluster.sleep(50);
    }
}

module.exports = {
    ...cluster, requireE2E, chromiumPath, launchBrowser, newPage, screenshot, useBrowserCluster,
    waitFor, ARTIFACTS, BROWSER_DIR,
};
