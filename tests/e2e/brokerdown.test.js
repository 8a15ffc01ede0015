'use strict';
// A broker that stops answering (here: SIGSTOP, as a hung or partitioned process looks): after
// its heartbeat goes silent, requests that need it are answered 503 at once instead of waiting
// out --request-timeout, are not applied when it comes back, and reads answer at once; writes
// resume when it answers again.
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');

const { useCluster, sleep } = require('./lib/cluster');
const { nodeClient } = require('./lib/sdk');
const { uid } = require('./lib/check');

const H = useCluster(test, { label: 'brokerdown', args: ['--request-timeout', '20000'] });
const C = () => H.cluster;
const P = () => nodeClient(C(), {}).presences;
const PUBLIC = ['read("any")'];

it('a silent broker: 503 at once, nothing applied later, reads answer at once, writes resume', { timeout: 90000 }, async () => {
    const kept = await P().upsert({ presenceId: uid('kept'), userId: uid('u'), status: 'before', permissions: PUBLIC });
    const [broker] = C().pids('broker');
    assert.ok(broker, 'the broker runs');
    process.kill(broker, 'SIGSTOP');
    let refusedId;
    try {
        await sleep(4000); // past the 3 s of silence
        refusedId = uid('refused');
        const t0 = Date.now();
        const err = await P().upsert({ presenceId: refusedId, userId: uid('u'), status: 'no broker', permissions: PUBLIC }).then(() => null, (e) => e);
        const took = Date.now() - t0;
        assert.ok(err, 'the create needing the broker was refused');
        assert.equal(err.code, 503, err.message);
        assert.match(err.message, /broker is not answering/);
        assert.ok(took < 10000, `answered in ${took} ms, not after the 20 s request timeout`);
        // a read goes straight to the record's store node; a node may also send it back to the
        // broker (while records move, it serves only what it is sure to own): either way, an
        // answer at once
        const t1 = Date.now();
        const got = await P().get(kept.$id).then((r) => r, (e) => e);
        assert.ok(got.status === 'before' || got.code === 503, `a read: ${got.status ?? got.message}`);
        assert.ok(Date.now() - t1 < 10000, `the read answered in ${Date.now() - t1} ms`);
    } finally {
        process.kill(broker, 'SIGCONT');
    }
    const t1 = Date.now();
    for (;;) {
        try {
            await P().upsert({ presenceId: uid('after'), userId: uid('u'), status: 'back', permissions: PUBLIC });
            break;
        } catch (e) {
            if (e.code !== 503 || Date.now() - t1 > 15000) throw e;
            await sleep(100);
        }
    }
    await sleep(500);
    const gone = await P().get(refusedId).then(() => null, (e) => e);
    assert.equal(gone && gone.code, 404, 'the request answered 503 was not applied when the broker came back');
    const m = await C().metrics();
    assert.ok(m.find('presenced_gateway_broker_failfast_total').length >= 1);
});
