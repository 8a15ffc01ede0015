'use strict';
// Fills a cluster (tests/e2e/lib/cluster.js) with unique users' records using wrk: -t2 -c64
// keep-alive PUTs, each thread cycling over its half of the ids ("r<thread>-<i>", user "ur..."),
// until /metrics counts `n` records. Used by bench/restart.js and bench/memory.js.
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const E2E = path.resolve(__dirname, '..', '..', 'tests', 'e2e');
const { sleep } = require(path.join(E2E, 'lib', 'cluster'));

// The wrk script (written into dir) that upserts perThread ids per thread.
function wrkScript(c, dir, perThread) {
    const lua = path.join(dir, 'fill.lua');
    fs.writeFileSync(lua, `
local threads, n = {}, 0
function setup(thread) thread:set("tid", n); n = n + 1 end
local i = 0
request = function()
  local id = "r" .. tid .. "-" .. i
  i = (i + 1) % ${perThread}
  return wrk.format("PUT", "/v1/presences/" .. id,
    {["X-Appwrite-Project"]="${c.project}", ["X-Appwrite-Key"]="${c.apiKey}", ["Content-Type"]="application/json"},
    '{"userId":"u' .. id .. '","status":"online","metadata":{"room":"lobby","n":' .. i .. '}}')
end
`);
    return lua;
}

const startWrk = (c, lua, secs) => spawn('wrk', ['-t2', '-c64', `-d${secs}s`, '-s', lua, `${c.url}/`], { stdio: 'ignore' });

async function records(c) {
    try { return (await c.metrics()).sum('presenced_store_records'); } catch { return -1; }
}

// Fills c with n records; returns {n, secs, lua} (lua: the script, for more writes later).
async function fill(c, dir, n) {
    const lua = wrkScript(c, dir, Math.ceil(n / 2));
    const t0 = Date.now();
    const w = startWrk(c, lua, 3600);
    while (await records(c) < n) await sleep(500);
    w.kill('SIGTERM');
    await sleep(300);
    return { n: await records(c), secs: (Date.now() - t0) / 1000, lua };
}

module.exports = { wrkScript, startWrk, records, fill };
