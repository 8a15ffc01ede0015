// Unit tests of createPresence against a fake SDK (a scripted Realtime and Presences): what it
// sends, one list + one subscription, the list again after a reconnect with nobody flapping,
// automatic away, clear and stop. The real SDK and server are exercised by
// tests/browser/helper.test.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPresence } from '../../clients/web/presence.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const at = (s) => new Date(Date.parse('2026-12-04T10:00:00.000Z') + s * 1000).toISOString().replace('Z', '+00:00');
const rec = (id, userId, v, status = 'online', metadata = {}) => ({
    $id: id, $createdAt: at(0), $updatedAt: at(v), userId, status, expiresAt: at(60), metadata,
});

// A fake server: the records a list returns, and the sockets of a fake Realtime.
function fakeSdk() {
    const server = { records: new Map(), lists: [], deletes: [], sent: [], subs: [], rts: [], down: false, listFails: 0 };
    class Socket extends EventTarget {
        constructor() { super(); this.readyState = 1; }
        ack() { this.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify({ type: 'response', data: { to: 'subscribe', success: true } }) })); }
    }
    class Realtime {
        constructor(client) { this.client = client; this.opens = []; this.errs = []; this.pendingPresence = undefined; server.rts.push(this); }
        onOpen(f) { this.opens.push(f); }
        onError(f) { this.errs.push(f); }
        onClose() {}
        // a (re)connect: open, then the server answers the SDK's re-sent subscribe
        reconnect() {
            this.socket = new Socket();
            this.opens.forEach((f) => f());
            setTimeout(() => this.socket.ack(), 5);
        }
        async subscribe(channel, cb, queries) {
            server.subs.push({ channel, queries });
            this.cb = cb;
            if (server.down) throw new Error('WebSocket error'); // the SDK keeps it and retries
            if (!this.socket) this.reconnect();
            else setTimeout(() => this.socket.ack(), 5);
            return { unsubscribe: async () => { this.cb = null; } };
        }
        async upsertPresence(p) { this.pendingPresence = p; server.sent.push(p); }
        async disconnect() { this.socket = null; this.closed = true; }
        emit(action, r) { this.cb?.({ events: [`presences.${r.$id}.${action}`], channels: ['presences'], payload: r, subscriptions: ['s'] }); }
    }
    class Presences {
        async list({ queries }) {
            server.lists.push(queries);
            if (server.listFails > 0) { server.listFails--; throw new Error('Server Error'); }
            return { total: 0, presences: [...server.records.values()] }; }
        async delete({ presenceId }) { server.deletes.push(presenceId); server.records.delete(presenceId); return {}; }
    }
    return { server, sdk: { Realtime, Presences } };
}

const client = { config: { project: 'p', jwt: 'x.' + Buffer.from(JSON.stringify({ userId: 'alice', name: 'Ada' })).toString('base64url') + '.y' } };

test('start: publishes a connection-bound presence, one subscription, one list; who we are comes from the JWT', async (t) => {
    const { server, sdk } = fakeSdk();
    server.records.set('b', rec('b', 'bob', 1, 'online', { room: 'lobby' }));
    server.records.set('k', rec('k', 'kim', 1, 'online', { room: 'kitchen' })); // a server that ignored the query
    const p = createPresence(client, { sdk, room: 'lobby', heartbeatMs: 50 });
    t.after(() => p.stop());
    await p.start();
    assert.equal(p.ready, true);
    assert.equal(p.me, 'online');
    assert.equal(p.userId, 'alice');
    assert.deepEqual(server.sent[0].metadata, { name: 'Ada', room: 'lobby' });
    assert.deepEqual(server.sent[0].permissions, ['read("users")', 'update("user:alice")', 'delete("user:alice")']);
    assert.equal(server.subs.length, 1);
    assert.equal(server.subs[0].channel, 'presences');
    assert.deepEqual(server.subs[0].queries.map((s) => JSON.parse(s)), [{ method: 'equal', attribute: 'metadata.room', values: ['lobby'] }]);
    assert.equal(server.lists.length, 1);
    assert.deepEqual(JSON.parse(server.lists[0][0]), { method: 'equal', attribute: 'metadata.room', values: ['lobby'] });
    assert.deepEqual(p.list.map((e) => e.userId), ['bob']);
    await sleep(130);
    assert.ok(server.sent.length >= 3, `heartbeats re-send the presence (${server.sent.length} sends)`);
    await p.stop();
    const n = server.sent.length;
    await sleep(120);
    assert.equal(server.sent.length, n, 'no heartbeat after stop');
});

test('reconnect: the list is read again; who stayed never flaps, who left while we were away goes', async (t) => {
    const { server, sdk } = fakeSdk();
    server.records.set('a', rec('a', 'alice', 1));
    server.records.set('b', rec('b', 'bob', 1));
    server.records.set('c', rec('c', 'carol', 1));
    const p = createPresence(client, { sdk });
    t.after(() => p.stop());
    const seen = [];
    p.onChange(() => seen.push(p.list.map((e) => e.userId).join(',')));
    await p.start();
    assert.deepEqual(p.list.map((e) => e.userId), ['alice', 'bob', 'carol']);
    seen.length = 0;
    const rt = server.rts[0];
    // the socket drops; while it is down carol leaves and dave arrives (their events are lost)
    server.records.delete('c');
    server.records.set('d', rec('d', 'dave', 2));
    rt.reconnect();
    // the SDK re-sends our presence: its upsert event comes back (a duplicate of what we have)
    rt.emit('upsert', rec('a', 'alice', 1));
    await sleep(50);
    assert.equal(server.lists.length, 2, 'one list per (re)subscription');
    assert.deepEqual(p.list.map((e) => e.userId), ['alice', 'bob', 'dave']);
    assert.ok(seen.every((s) => s.includes('alice') && s.includes('bob')), `nobody who stayed flapped: ${JSON.stringify(seen)}`);
    assert.equal(new Set(p.list.map((e) => e.userId)).size, p.list.length, 'no duplicates');
    await p.stop();
});

test('auto away: hidden turns away, shown turns back to the last status set', async () => {
    const { server, sdk } = fakeSdk();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    const p = createPresence(client, { sdk, document: doc });
    await p.start();
    p.set('busy', { page: 'Invoice #42' });
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(p.me, 'away');
    assert.equal(server.sent.at(-1).status, 'away');
    assert.deepEqual(server.sent.at(-1).metadata, { name: 'Ada', page: 'Invoice #42' }, 'details kept while away');
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(p.me, 'busy');
    assert.equal(server.sent.at(-1).status, 'busy');
    await p.stop();
    const q = createPresence(client, { sdk, document: doc, auto: false });
    await q.start();
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(q.me, 'online', 'auto: false ignores visibility');
    await q.stop();
});

test('clear deletes our record and keeps watching; stop closes the socket it opened', async () => {
    const { server, sdk } = fakeSdk();
    const p = createPresence(client, { sdk });
    await p.start();
    const rt = server.rts[0];
    const mine = rec('m1', 'alice', 3);
    server.records.set('m1', mine);
    rt.emit('upsert', mine);
    rt.emit('upsert', rec('b', 'bob', 3));
    assert.deepEqual(p.list.map((e) => e.userId), ['alice', 'bob']);
    await p.clear();
    assert.deepEqual(server.deletes, ['m1']);
    assert.equal(rt.pendingPresence, undefined, 'the SDK will not re-send it after a reconnect');
    assert.equal(p.me, null);
    assert.deepEqual(p.list.map((e) => e.userId), ['bob']);
    rt.emit('delete', mine); // the server's delete event: nothing more to do
    rt.emit('update', rec('b', 'bob', 4, 'away'));
    assert.equal(p.of('bob').status, 'away', 'still watching');
    await p.stop();
    assert.equal(rt.closed, true);
    assert.equal(p.ready, false);
    assert.deepEqual(p.list, []);
});

test('errors are reported in error, not thrown', async () => {
    const p = createPresence(client, { sdk: {} });
    await p.start();
    assert.match(p.error, /Appwrite SDK was not found/);
    const q = createPresence({ config: { project: 'p' } }, { sdk: fakeSdk().sdk });
    await q.start();
    assert.match(q.error, /cannot tell who is signed in/);
});

test('a server down at start: error says so, and the first connection lists and clears it', async (t) => {
    const { server, sdk } = fakeSdk();
    server.down = true;
    server.records.set('b', rec('b', 'bob', 1));
    const p = createPresence(client, { sdk });
    t.after(() => p.stop());
    await p.start();
    assert.equal(p.error, 'WebSocket error');
    assert.equal(p.ready, false);
    assert.equal(server.lists.length, 0);
    server.down = false;
    server.rts[0].reconnect(); // the SDK's retry succeeds
    await sleep(50);
    assert.equal(server.lists.length, 1);
    assert.equal(p.ready, true);
    assert.equal(p.error, null);
    assert.deepEqual(p.list.map((e) => e.userId), ['bob']);
});

test('a list that fails is tried again (1 s later), and the roster loads', async (t) => {
    const { server, sdk } = fakeSdk();
    server.listFails = 1;
    server.records.set('b', rec('b', 'bob', 1));
    const p = createPresence(client, { sdk });
    t.after(() => p.stop());
    await p.start();
    assert.equal(p.error, 'Server Error');
    assert.equal(p.ready, false);
    await sleep(1200);
    assert.equal(server.lists.length, 2);
    assert.equal(p.ready, true);
    assert.equal(p.error, null);
});

test('a room given to start() scopes the roster as one given to createPresence() does', async (t) => {
    const { server, sdk } = fakeSdk();
    server.records.set('b', rec('b', 'bob', 1, 'online', { room: 'lobby' }));
    server.records.set('k', rec('k', 'kim', 1, 'online', { room: 'kitchen' }));
    const p = createPresence(client, { sdk });
    t.after(() => p.stop());
    await p.start({ room: 'kitchen' });
    assert.deepEqual(JSON.parse(server.subs[0].queries[0]), { method: 'equal', attribute: 'metadata.room', values: ['kitchen'] });
    assert.deepEqual(p.list.map((e) => e.userId), ['kim']);
    assert.equal(server.sent[0].metadata.room, 'kitchen');
});
