// Unit tests of the roster helper's reconciliation (clients/web/presence.js, createRoster):
// a list snapshot and realtime events in any order, duplicates, a delete for a record never
// seen, reconnects (a new snapshot after missed events), room scoping, one entry per user.
// Run: node --test tests/web-unit/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRoster, colorFor } from '../../clients/web/presence.js';

const T0 = Date.parse('2026-12-04T10:00:00.000+00:00');
const at = (s) => new Date(T0 + s * 1000).toISOString().replace('Z', '+00:00');

// A presence record as the server sends it; v is its version in seconds after T0.
function rec(id, userId, v, status = 'online', metadata = {}) {
    return {
        $id: id, $createdAt: at(0), $updatedAt: at(v), $permissions: ['read("users")'],
        userId, status, source: 'realtime', expiresAt: at(3600), metadata,
    };
}
const ev = (action, r) => ({
    events: [`presences.${r.$id}.${action}`, `presences.*.${action}`, `presences.${r.$id}`, 'presences.*'],
    channels: ['presences', `presences.${r.$id}`], payload: r, subscriptions: ['s'],
});
const view = (ro) => ro.list.map((e) => `${e.userId}:${e.status}`);

test('list first, then events', () => {
    const ro = createRoster();
    const m = ro.beginSnapshot();
    assert.equal(ro.applySnapshot(m, [rec('a', 'alice', 1), rec('b', 'bob', 1)]), true);
    assert.deepEqual(view(ro), ['alice:online', 'bob:online']);
    assert.equal(ro.ready, true);
    assert.equal(ro.applyEvent(ev('update', rec('a', 'alice', 2, 'busy'))), true);
    assert.equal(ro.applyEvent(ev('delete', rec('b', 'bob', 1))), true);
    assert.deepEqual(view(ro), ['alice:busy']);
    assert.equal(ro.of('alice').status, 'busy');
    assert.equal(ro.of('bob'), null);
});

test('events first, then an older list: the events win', () => {
    const ro = createRoster();
    const m = ro.beginSnapshot();                            // list requested...
    ro.applyEvent(ev('upsert', rec('a', 'alice', 5, 'busy')));  // ...an event overtakes it
    ro.applyEvent(ev('delete', rec('b', 'bob', 3)));            // bob left after the list was read
    ro.applySnapshot(m, [rec('a', 'alice', 1), rec('b', 'bob', 3)]);
    assert.deepEqual(view(ro), ['alice:busy'], 'the list neither reverts alice nor brings bob back');
});

test('an event that arrives after the list, older than it, changes nothing', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), [rec('a', 'alice', 5, 'busy')]);
    const before = ro.list;
    assert.equal(ro.applyEvent(ev('update', rec('a', 'alice', 2, 'online'))), false);
    assert.equal(ro.list, before);
    assert.deepEqual(view(ro), ['alice:busy']);
});

test('duplicate events change nothing (same list object, no change reported)', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), []);
    assert.equal(ro.applyEvent(ev('upsert', rec('a', 'alice', 1))), true);
    const before = ro.list;
    for (let i = 0; i < 3; i++) assert.equal(ro.applyEvent(ev('upsert', rec('a', 'alice', 1))), false);
    assert.equal(ro.applyEvent(ev('delete', rec('a', 'alice', 1))), true);
    assert.equal(ro.applyEvent(ev('delete', rec('a', 'alice', 1))), false, 'a second delete');
    assert.equal(ro.applyEvent(ev('upsert', rec('a', 'alice', 1))), false, 'a replayed upsert of the deleted version');
    assert.equal(before.length, 1);
    assert.deepEqual(view(ro), []);
});

test('a delete for a record never seen: no change, and an older list cannot bring it back', () => {
    const ro = createRoster();
    const m = ro.beginSnapshot();
    assert.equal(ro.applyEvent(ev('delete', rec('x', 'xena', 4))), false);
    ro.applySnapshot(m, [rec('x', 'xena', 4), rec('a', 'alice', 1)]);
    assert.deepEqual(view(ro), ['alice:online']);
    // xena comes back later: a newer version is accepted
    assert.equal(ro.applyEvent(ev('upsert', rec('x', 'xena', 9, 'back'))), true);
    assert.deepEqual(view(ro), ['alice:online', 'xena:back']);
});

test('reconnect: a new snapshot drops what left while we were away and keeps what events touched since', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), [rec('a', 'alice', 1), rec('b', 'bob', 1), rec('c', 'carol', 1)]);
    // disconnected: bob's delete and dave's arrival were missed. Reconnected: list again.
    const m = ro.beginSnapshot();
    ro.applyEvent(ev('upsert', rec('e', 'erin', 7)));        // erin arrives after the list request
    ro.applyEvent(ev('update', rec('c', 'carol', 8, 'away'))); // carol changes meanwhile
    const changed = ro.applySnapshot(m, [rec('a', 'alice', 1), rec('c', 'carol', 2), rec('d', 'dave', 6)]);
    assert.equal(changed, true);
    assert.deepEqual(view(ro), ['alice:online', 'carol:away', 'dave:online', 'erin:online']);
    // the delete of bob, sent before we reconnected, finally shows up: nothing to do
    assert.equal(ro.applyEvent(ev('delete', rec('b', 'bob', 1))), false);
});

test('reconnect with nothing missed: no change at all (no flapping)', () => {
    const ro = createRoster();
    const recs = [rec('a', 'alice', 1), rec('b', 'bob', 2)];
    ro.applySnapshot(ro.beginSnapshot(), recs);
    const before = ro.list;
    const beforeAlice = ro.of('alice');
    assert.equal(ro.applySnapshot(ro.beginSnapshot(), recs.map((r) => ({ ...r }))), false);
    assert.equal(ro.list, before);
    assert.equal(ro.of('alice'), beforeAlice, 'entries keep their identity');
});

test('one entry per user: a user whose record is replaced (new $id) is never shown twice nor dropped', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), [rec('old', 'alice', 1)]);
    ro.applyEvent(ev('upsert', rec('new', 'alice', 5, 'busy')));   // the new record's upsert first
    assert.deepEqual(view(ro), ['alice:busy']);
    ro.applyEvent(ev('delete', rec('old', 'alice', 1)));            // then the old one's delete
    assert.deepEqual(view(ro), ['alice:busy']);
});

test('room scope: a record that leaves the room leaves the roster, and does not come back from an old event', () => {
    const ro = createRoster({ match: (r) => r.metadata?.room === 'lobby' });
    ro.applySnapshot(ro.beginSnapshot(), [rec('a', 'alice', 1, 'online', { room: 'lobby' })]);
    assert.equal(ro.applyEvent(ev('upsert', rec('b', 'bob', 2, 'online', { room: 'kitchen' }))), false);
    assert.equal(ro.applyEvent(ev('update', rec('a', 'alice', 3, 'online', { room: 'kitchen' }))), true);
    assert.deepEqual(view(ro), []);
    assert.equal(ro.applyEvent(ev('update', rec('a', 'alice', 2, 'online', { room: 'lobby' }))), false, 'older than the move');
    assert.equal(ro.applyEvent(ev('update', rec('a', 'alice', 4, 'online', { room: 'lobby' }))), true, 'back in the lobby');
    assert.deepEqual(view(ro), ['alice:online']);
});

test('entries: the seed\'s shape, a stable colour, name null when unknown', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), [rec('a', 'alice', 1, 'online', { name: 'Ada', page: 'Invoice #42' }), rec('b', 'bob', 1)]);
    const a = ro.of('alice');
    assert.deepEqual(Object.keys(a).slice(0, 6), ['userId', 'status', 'metadata', 'color', 'lastSeen', 'expiresAt']);
    assert.equal(a.metadata.name, 'Ada');
    assert.equal(a.metadata.page, 'Invoice #42');
    assert.equal(a.metadata.color, a.color);
    assert.equal(a.color, colorFor('alice'));
    assert.equal(a.lastSeen, T0 + 1000);
    assert.equal(a.expiresAt, at(3600));
    assert.equal(ro.of('bob').metadata.name, null);
    assert.match(colorFor('alice'), /^hsl\(\d+, 65%, 45%\)$/);
    assert.equal(colorFor('alice'), colorFor('alice'));
    assert.notEqual(colorFor('alice'), colorFor('bob'));
    assert.deepEqual(ro.records, { alice: ro.of('alice'), bob: ro.of('bob') });
});

test('garbage is ignored', () => {
    const ro = createRoster();
    for (const bad of [null, {}, { payload: null }, { events: ['presences.x.upsert'], payload: { $id: 1 } },
        { events: ['presences.x.upsert'], payload: { $id: 'x' } }]) assert.equal(ro.applyEvent(bad), false);
    assert.equal(ro.applySnapshot(ro.beginSnapshot(), [null, 7, { $id: 'y' }]), true, 'only ready changes');
    assert.deepEqual(ro.list, []);
});

test('any order: every interleaving of a list and four events ends in the same roster', () => {
    const list = [rec('a', 'alice', 1), rec('b', 'bob', 1)];
    const evs = [ev('update', rec('a', 'alice', 3, 'busy')), ev('delete', rec('b', 'bob', 1)),
        ev('upsert', rec('c', 'carol', 2)), ev('upsert', rec('c', 'carol', 2))];
    // The list was read before all the events happened; it may arrive at any point among them.
    const perms = (xs) => (xs.length <= 1 ? [xs] : xs.flatMap((x, i) => perms([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p])));
    let n = 0;
    for (const order of perms([0, 1, 2, 3])) {
        for (let at = 0; at <= order.length; at++) {
            const ro = createRoster();
            const m = ro.beginSnapshot();
            order.forEach((k, i) => { if (i === at) ro.applySnapshot(m, list); ro.applyEvent(evs[k]); });
            if (at === order.length) ro.applySnapshot(m, list);
            // events 0 and 1 are causally after the list, 2 and 3 (duplicates) too
            assert.deepEqual(view(ro), ['alice:busy', 'carol:online'], `order ${order} list at ${at}`);
            n++;
        }
    }
    assert.equal(n, 120);
});

test('a late delete of an older version does not remove the record that replaced it under the same $id', () => {
    const ro = createRoster();
    ro.applySnapshot(ro.beginSnapshot(), []);
    ro.applyEvent(ev('upsert', rec('a', 'alice', 1)));
    ro.applyEvent(ev('upsert', rec('a', 'alice', 6, 'back')));   // recreated (new version) ...
    assert.equal(ro.applyEvent(ev('delete', rec('a', 'alice', 1))), false); // ... before the old delete arrived
    assert.deepEqual(view(ro), ['alice:back']);
});

test('rosterOf: records to entries, one per user, without an SDK', async () => {
    const { rosterOf } = await import('../../clients/web/presence.js');
    const out = rosterOf([rec('a1', 'alice', 1), rec('a2', 'alice', 4, 'busy'), rec('b', 'bob', 2, 'away', { name: 'Bob' })]);
    assert.deepEqual(out.map((e) => [e.userId, e.status, e.metadata.name]), [['alice', 'busy', null], ['bob', 'away', 'Bob']]);
});
