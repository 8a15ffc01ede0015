'use strict';
// The claim caches (broker and gateways: user -> the id of the user's record, least recently
// used out, --claim-cache entries) are only caches: with room for 2 users among 40, across 2
// store nodes and 2 gateways, one presence per user still holds for every user (an upsert under
// another presenceId updates the user's record, another user's id is 409), a user whose record
// was deleted creates a new one, and /metrics shows the bound (entries <= 2), the evictions and
// that a user met again is not a miss.
const test = require('node:test');
const { it } = test;
const assert = require('node:assert/strict');
const { useCluster } = require('./lib/cluster');
const { nodeClient, plain } = require('./lib/sdk');
const { rejectsWith, uid } = require('./lib/check');

const H = useCluster(test, { label: 'claimcache', stores: 2, gateways: 2, args: ['--claim-cache', '2'] });
const C = () => H.cluster;
const P = () => nodeClient(C(), {}).presences;
const USERS = 40;

async function cache() {
    const m = await C().metrics();
    return {
        entries: m.get('presenced_broker_claim_cache_entries'),
        evicted: m.get('presenced_broker_claim_cache_evicted_total'),
        hit: m.get('presenced_broker_claim_cache_total', { result: 'hit' }),
        miss: m.get('presenced_broker_claim_cache_total', { result: 'miss' }),
    };
}

it('with room for 2 claims among 40 users, one presence per user holds for every one of them', { timeout: 60000 }, async () => {
    const tag = uid('cc');
    const user = (i) => `${tag}u${i}`;
    const rec = (i) => `${tag}r${i}`;
    const first = await cache();
    for (let i = 0; i < USERS; i++) {
        const p = plain(await P().upsert({ presenceId: rec(i), userId: user(i), status: 'first' }));
        assert.equal(p.$id, rec(i));
    }
    const filled = await cache();
    assert.ok(filled.entries <= 2, `the cache holds at most 2 claims: ${JSON.stringify(filled)}`);
    assert.ok(filled.evicted - first.evicted >= USERS - 2, `evictions: ${JSON.stringify(filled)}`);
    assert.ok(filled.miss - first.miss >= USERS, `every new user missed: ${JSON.stringify(filled)}`);

    // Every user, long evicted from the cache: an upsert under another presenceId updates the
    // user's own record (its $id kept), and no second record appears.
    for (let i = 0; i < USERS; i++) {
        const p = plain(await P().upsert({ presenceId: `${tag}other${i}`, userId: user(i), status: 'second' }));
        assert.equal(p.$id, rec(i), `user ${i}: the same record`);
        assert.equal(p.status, 'second');
        await rejectsWith(P().get({ presenceId: `${tag}other${i}` }), 404, 'presence_not_found');
    }
    // Another user's record: a user who has one updates its own instead; a user who has none
    // is refused.
    assert.equal(plain(await P().upsert({ presenceId: rec(0), userId: user(1), status: 'mine' })).$id, rec(1));
    await rejectsWith(P().upsert({ presenceId: rec(0), userId: `${tag}intruder`, status: 'theft' }), 409, 'presence_already_exists');
    const r0 = plain(await P().get({ presenceId: rec(0) }));
    assert.equal(r0.userId, user(0));
    assert.equal(r0.status, 'second');

    // The same user again and again: after the first, the claim is found in a cache (the
    // broker's: a hit; or the gateway's: the upsert goes straight to the record's node), so
    // the broker misses at most once per gateway.
    const before = await cache();
    for (let k = 0; k < 6; k++)
        await P().upsert({ presenceId: rec(5), userId: user(5), status: `again ${k}` });
    const after = await cache();
    assert.ok(after.miss - before.miss <= 2, // one per gateway at most; without a cache, 6
        `cached: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);

    // A deleted record's user (its claim maybe still cached) creates a new record.
    await P().delete({ presenceId: rec(5) });
    const fresh = plain(await P().upsert({ presenceId: `${tag}new5`, userId: user(5), status: 'new' }));
    assert.equal(fresh.$id, `${tag}new5`);
    await rejectsWith(P().get({ presenceId: rec(5) }), 404, 'presence_not_found');
    const list = plain(await P().list({ queries: [`{"method":"equal","attribute":"userId","values":["${user(5)}"]}`] }));
    assert.deepEqual(list.presences.map((p) => p.$id), [`${tag}new5`], 'one record for the user');
});
