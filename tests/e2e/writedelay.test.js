'use strict';
// --ws-write-delay: a gateway that holds WebSocket output for a few milliseconds, to write what
// follows in the same write, still delivers every event once and in order, answers messages, and
// batches: 100 updates sent one after another (each acknowledged before the next) reach a
// subscriber in far fewer reads than events (without the delay, each is its own write).
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');

const R = require('./lib/rtclient');
const { useCluster } = require('./lib/cluster');
const { nodeClient } = require('./lib/sdk');
const { uid } = require('./lib/check');

const H = useCluster(test, { label: 'writedelay', gateways: 1, args: ['--ws-write-delay', '30'] });
const C = () => H.cluster;

it('with --ws-write-delay 30, every update arrives once and in order, several per write', { timeout: 60000 }, async () => {
    const c = await R.rawConnect(C(), {});
    let reads = 0;
    c.ws._socket.on('data', () => { reads++; });
    await R.rawSubscribe(c, [{ subscriptionId: 'all', channels: ['presences'] }]);
    const pong = await c.request({ type: 'ping' });
    assert.equal(pong.type, 'pong');
    const kp = nodeClient(C(), {}).presences;
    const id = uid('d');
    const owner = uid('k');
    const N = 100;
    const reads0 = reads;
    for (let i = 0; i < N; i++)
        await kp.upsert({ presenceId: id, userId: owner, status: `s${i}`, permissions: ['read("any")'] });
    const marker = uid('m');
    await kp.upsert({ presenceId: marker, userId: uid('k'), status: 'end', permissions: ['read("any")'] });
    await c.next((m) => m.type === 'event' && m.data.payload.$id === marker, 10000, 'the marker');
    const evs = c.events((m) => m.data.payload.$id === id);
    // a keeping-up client gets every state; versions only go up
    const seen = evs.map((m) => m.data.payload.status);
    assert.equal(new Set(seen).size, seen.length, 'no event twice');
    const stamps = evs.map((m) => Date.parse(m.data.payload.$updatedAt));
    for (let k = 1; k < stamps.length; k++) assert.ok(stamps[k] >= stamps[k - 1], 'in order');
    assert.equal(seen.length, N, `every update arrived (${seen.length})`);
    assert.ok(reads - reads0 < N / 2, `${N + 1} events in ${reads - reads0} reads: output was batched`);
    c.close();
});
