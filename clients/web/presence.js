// presence.js: a live roster ("who is here") on the official Appwrite web SDK (27.x, 28.x),
// for presenced or Appwrite's own Presences API. One ES module, no build step, no imports.
//
//   <script src=".../appwrite/dist/iife/sdk.js"></script>           (sets globalThis.Appwrite)
//   import { createPresence } from 'https://presence.example.com/v1/presence.js';
//   const p = createPresence(client, { room: 'lobby' });
//   p.onChange(() => render(p.list));
//   await p.start();                 // online now, away while the tab is hidden
//   p.set('busy', { page: 'Invoice #42' });
//
// or with Alpine.js:  Alpine.plugin(presence.configure(client)), then $presence in markup.
//
// How it works:
// - Our own presence is connection-bound (`realtime.upsertPresence`): the server deletes it a few
//   seconds (the grace period) after this tab's socket closes, so closing the tab clears it, and
//   the SDK re-sends it after each reconnect, so a reconnect does not flap us offline.
// - The roster is one list (`presences.list`, paged) plus one subscription to `presences`
//   (with the room as a `metadata.room` query when there is one): no polling. After every
//   (re)subscription the list is loaded again and reconciled with the events (createRoster):
//   events and list results may arrive in any order, duplicates change nothing, a delete for a
//   record we never saw is remembered so that an older list cannot bring it back.
// - The pure part (createRoster, rosterOf, colorFor) has no I/O and no timers: tests/web-unit/ tests it.
//
// Importing this module has no side effects.

/* ------------------------------------------------------------------------------ pure part */

// A stable colour per user: FNV-1a of the user id picks a hue.
export function colorFor(userId) {
    let h = 0x811c9dc5;
    const s = String(userId ?? '');
    for (let i = 0; i < s.length; i++) {
        h ^= s.charCodeAt(i);
        h = Math.imul(h, 0x01000193) >>> 0;
    }
    return `hsl(${h % 360}, 65%, 45%)`;
}

const version = (rec) => {
    const t = Date.parse(rec?.$updatedAt ?? '');
    return Number.isFinite(t) ? t : 0;
};

const sameRecord = (a, b) => a.$updatedAt === b.$updatedAt && a.status === b.status &&
    a.userId === b.userId && a.expiresAt === b.expiresAt &&
    JSON.stringify(a.metadata ?? null) === JSON.stringify(b.metadata ?? null);

// The roster entry shown for a record (the seed's "presence record").
function entryOf(rec) {
    const md = rec.metadata && typeof rec.metadata === 'object' && !Array.isArray(rec.metadata) ? rec.metadata : {};
    const color = typeof md.color === 'string' && md.color ? md.color : colorFor(rec.userId);
    return Object.freeze({
        userId: rec.userId,
        status: rec.status ?? null,
        metadata: Object.freeze({ ...md, name: typeof md.name === 'string' && md.name ? md.name : null, color }),
        color,
        lastSeen: version(rec) || null,
        expiresAt: rec.expiresAt ?? null,
        presenceId: rec.$id,
        createdAt: rec.$createdAt ?? null,
    });
}

const TOMBSTONES_MAX = 4096;

// The roster's state machine: records by $id, fed with realtime events and list snapshots in
// any order. Every method returns true when the visible roster changed.
//   match(record) -> bool: records that belong to this roster (e.g. the room); a record that
//   stops matching leaves the roster (presenced also sends the change that made it stop).
export function createRoster({ match = () => true } = {}) {
    let clock = 0;                 // advances with every operation
    const byId = new Map();        // $id -> {rec, ver, touched, entry}
    const tombs = new Map();       // $id -> ver of the newest delete seen (insertion order: age)
    let list = [];
    let records = Object.freeze({});
    let ready = false;

    function bury(id, ver) {
        const old = tombs.get(id);
        tombs.delete(id);
        tombs.set(id, Math.max(ver, old ?? 0));
        while (tombs.size > TOMBSTONES_MAX) tombs.delete(tombs.keys().next().value);
    }

    // Rebuild list/records: one entry per user (the newest record of that user). Returns true.
    function rebuild() {
        const byUser = new Map();
        for (const r of byId.values()) {
            const cur = byUser.get(r.rec.userId);
            if (!cur || r.ver > cur.ver || (r.ver === cur.ver && r.rec.$id > cur.rec.$id)) byUser.set(r.rec.userId, r);
        }
        const rows = [...byUser.values()].map((r) => r.entry);
        rows.sort((a, b) => (a.createdAt ?? '').localeCompare(b.createdAt ?? '') || a.userId.localeCompare(b.userId));
        list = Object.freeze(rows);
        const obj = {};
        for (const e of rows) obj[e.userId] = e;
        records = Object.freeze(obj);
        return true;
    }

    function put(rec, touched) {
        const ver = version(rec);
        const id = rec.$id;
        const dead = tombs.get(id);
        if (dead !== undefined && ver <= dead) return false;          // older than its delete
        const cur = byId.get(id);
        if (cur && ver < cur.ver) return false;                        // older than what we have
        if (!match(rec)) {                                             // left the roster's scope
            bury(id, ver);
            return cur ? byId.delete(id) : false;
        }
        if (dead !== undefined) tombs.delete(id);
        if (cur && sameRecord(cur.rec, rec)) {                         // a duplicate
            cur.touched = Math.max(cur.touched, touched);
            return false;
        }
        byId.set(id, { rec, ver, touched, entry: entryOf(rec) });
        return true;
    }

    function drop(rec) {
        const id = rec.$id;
        const ver = version(rec);
        const cur = byId.get(id);
        if (cur && cur.ver > ver) return false;   // the record came back after this delete
        bury(id, ver);
        return cur ? byId.delete(id) : false;     // false: a delete for a record we never had
    }

    const valid = (rec) => rec && typeof rec === 'object' && typeof rec.$id === 'string' && typeof rec.userId === 'string';

    return {
        get list() { return list; },
        get records() { return records; },
        get ready() { return ready; },
        of(userId) { return records[userId] ?? null; },

        // A realtime event as the SDK's subscribe callback gets it ({events, payload}), or
        // {action: 'upsert'|'update'|'delete', payload}.
        applyEvent(ev) {
            const rec = ev?.payload;
            if (!valid(rec)) return false;
            const name = ev.action ?? (Array.isArray(ev.events) ? ev.events[0] : '');
            clock++;
            const changed = /(^|\.)delete$/.test(String(name)) ? drop(rec) : put(rec, clock);
            return changed && rebuild();
        },

        // Call before the list request is sent; pass the mark to applySnapshot with the result.
        beginSnapshot() { return ++clock; },

        // A complete list result (every page), requested after beginSnapshot() returned mark.
        // A record it lacks is removed unless an event touched it after the request was sent.
        applySnapshot(mark, recs) {
            clock++;
            let changed = false;
            const seen = new Set();
            for (const rec of recs ?? []) {
                if (!valid(rec)) continue;
                seen.add(rec.$id);
                if (put(rec, mark)) changed = true;
            }
            for (const [id, r] of [...byId]) {
                if (seen.has(id) || r.touched > mark) continue;
                byId.delete(id);          // gone while we were not looking
                bury(id, r.ver);
                changed = true;
            }
            if (changed) rebuild();
            if (!ready) { ready = true; changed = true; }
            return changed;
        },

        // Drops one record locally (our own, after we deleted it), as a delete event would.
        forget(rec) { clock++; return valid(rec) && drop(rec) && rebuild(); },

        reset() {
            byId.clear();
            tombs.clear();
            ready = false;
            list = Object.freeze([]);
            records = Object.freeze({});
        },
    };
}

// Presence records (a list result) -> roster entries, one per user: what createRoster shows.
export function rosterOf(records) {
    const r = createRoster();
    r.applySnapshot(r.beginSnapshot(), records);
    return r.list;
}

/* ------------------------------------------------------------------------- the controller */

const DEFAULTS = { auto: true, status: 'online', heartbeatMs: 25000 };
const PAGE = 1000;

const q = (method, attribute, values) => JSON.stringify(attribute === undefined ? { method, values } : { method, attribute, values });

// The claims of a JWT (no verification: only to learn who we are).
function jwtClaims(token) {
    try {
        const part = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
        const bin = atob(part + '='.repeat((4 - (part.length % 4)) % 4));
        const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
        return null;
    }
}

function uniqueId() {
    const now = Date.now();
    const sec = Math.floor(now / 1000).toString(16);
    const ms = (now % 1000).toString(16).padStart(5, '0');
    let rnd = '';
    for (let i = 0; i < 7; i++) rnd += Math.floor(Math.random() * 16).toString(16);
    return sec + ms + rnd;
}

const message = (e) => (e && e.message) || String(e);

// createPresence(client, options): the roster and our own presence, for any framework.
// options: sdk (the Appwrite namespace; default globalThis.Appwrite), realtime (an existing
// Realtime to share), room, userId, name, metadata, read (roles that may see us; default
// ['users']), auto, status, heartbeatMs (defaults of start()), document (default globalThis.document).
export class Presence extends EventTarget {
    constructor(client, options = {}) {
        super();
        this._client = client;
        this._opt = { ...options };
        this._roster = createRoster({
            match: (rec) => {
                const room = this._run ? this._run.opts.room : options.room;
                return room == null || rec.metadata?.room === room;
            },
        });
        this._me = null;
        this._error = null;
        this._run = null;          // the state of one start()..stop()
        this._gen = 0;
        this._listeners = new Set();
    }

    get list() { return this._roster.list; }
    get records() { return this._roster.records; }
    get me() { return this._me; }
    get ready() { return !!this._run && this._roster.ready; }
    get error() { return this._error; }
    get userId() { return this._run?.userId ?? null; }
    of(userId) { return this._roster.of(userId); }
    all() { return this._roster.list; }

    // onChange(fn): fn(presence) after every change of list, records, me, ready or error.
    // Returns a function that removes it.
    onChange(fn) {
        this._listeners.add(fn);
        return () => this._listeners.delete(fn);
    }

    _changed() {
        for (const fn of [...this._listeners]) {
            try { fn(this); } catch (e) { console.error('presence: onChange listener:', e); }
        }
        this.dispatchEvent(new Event('change'));
    }

    _fail(e, run) {
        if (run && run !== this._run) return;
        this._error = message(e);
        this._changed();
    }

    // Begin tracking: publish our status, load the roster and keep it live. Resolves once the
    // roster is loaded (or the attempt failed: then `error` says why). Options: auto, status,
    // heartbeatMs, metadata.
    async start(opts = {}) {
        if (this._run) {
            if (opts.status !== undefined || opts.metadata !== undefined) this.set(opts.status ?? this._run.status, opts.metadata);
            return this._run.loaded;
        }
        const o = { ...DEFAULTS, ...this._opt, ...opts };
        const run = {
            gen: ++this._gen, opts: o, status: o.status, metadata: { ...(o.metadata ?? {}) },
            away: false, publishing: true, timers: [], cleanup: [], listing: null, again: false,
        };
        this._run = run;
        this._error = null;
        run.loaded = this._begin(run).catch((e) => this._fail(e, run));
        return run.loaded;
    }

    async _begin(run) {
        const o = run.opts;
        const client = o.client ?? this._client;
        const sdk = o.sdk ?? globalThis.Appwrite;
        if (!client || !client.config) throw new Error('presence: no Appwrite Client (createPresence(client, ...) or presence.configure(client))');
        if (!o.realtime && !sdk?.Realtime) throw new Error('presence: the Appwrite SDK was not found: load its iife build (sets window.Appwrite) or pass options.sdk');
        if (!sdk?.Presences) throw new Error('presence: the Appwrite SDK has no Presences service (27.x or newer needed)');
        run.presences = new sdk.Presences(client);

        // Who we are: options, the JWT's claims, or the account (Appwrite sessions).
        const claims = client.config.jwt ? jwtClaims(client.config.jwt) : null;
        run.userId = o.userId ?? claims?.userId ?? claims?.sub ?? null;
        let name = o.name ?? claims?.name ?? null;
        if (!run.userId && sdk.Account) {
            try {
                const acc = await new sdk.Account(client).get();
                run.userId = acc.$id;
                name = name ?? (acc.name || null);
            } catch { /* no account service: say so below */ }
        }
        if (!run.userId) throw new Error('presence: cannot tell who is signed in (no JWT userId, no account): pass options.userId');
        if (run !== this._run) return;
        run.metadata = { name: name || null, ...run.metadata };
        if (o.room != null) run.metadata.room = o.room;
        run.presenceId = uniqueId();
        const reads = (o.read ?? ['users']).map((r) => `read("${r}")`);
        run.permissions = [...reads, `update("user:${run.userId}")`, `delete("user:${run.userId}")`];

        run.rt = o.realtime ?? new sdk.Realtime(client);
        run.ownRt = !o.realtime;
        // The SDK's callbacks cannot be removed: they check that this run is still the current one.
        run.rt.onOpen(() => { if (run === this._run) this._opened(run); });
        run.rt.onError((err, code) => { if (run === this._run) this._fail(code ? `${message(err)} (${code})` : err, run); });

        const doc = o.document ?? globalThis.document;
        if (o.auto && doc && typeof doc.addEventListener === 'function') {
            const onVis = () => this._visibility(run, doc);
            doc.addEventListener('visibilitychange', onVis);
            run.cleanup.push(() => doc.removeEventListener('visibilitychange', onVis));
            run.away = doc.visibilityState === 'hidden';
        }

        if (run.rt.socket && run.rt.socket.readyState === 1) this._watchSocket(run, run.rt.socket);
        this._publish(run);
        run.timers.push(setInterval(() => { if (run.publishing) this._publish(run); }, o.heartbeatMs));
        const queries = o.room == null ? [] : [q('equal', 'metadata.room', [o.room])];
        const acked = this._subscribed(run);
        run.initial = true;       // until the first list: _opened leaves the listing to us
        const subscribing = run.rt.subscribe('presences', (ev) => this._event(run, ev), queries);
        run.subscribed = true;    // the SDK keeps the subscription from here on, across reconnects
        try {
            run.sub = await subscribing;
        } catch (e) {
            // the socket could not be opened: the SDK retries, and _opened lists when it is up
            run.initial = false;
            throw e;
        }
        if (run !== this._run) { run.sub.unsubscribe(); return; }
        await acked;
        try {
            await this._snapshot(run);
        } finally {
            run.initial = false;
        }
    }

    // Every open of the SDK's socket (the first and each reconnect): watch for the answer to the
    // re-sent subscription, then list again (events while we were away were missed).
    _opened(run) {
        const sock = run.rt.socket;
        if (sock) this._watchSocket(run, sock);
        if (run.subscribed && !run.initial) this._subscribed(run).then(() => this._snapshot(run));
    }

    _watchSocket(run, sock) {
        if (run.watched === sock || typeof sock.addEventListener !== 'function') return;
        run.watched = sock;
        sock.addEventListener('message', (m) => {
            if (run !== this._run || typeof m.data !== 'string' || m.data.indexOf('"subscribe"') < 0) return;
            try {
                const msg = JSON.parse(m.data);
                if (msg.type === 'response' && msg.data?.to === 'subscribe') {
                    const w = run.ackWaiters ?? [];
                    run.ackWaiters = [];
                    w.forEach((f) => f());
                }
            } catch { /* not ours */ }
        });
    }

    // Resolves when the server next answers a subscribe (at most 1.5 s: a socket we cannot
    // watch, or a server that does not answer).
    _subscribed(run) {
        return new Promise((resolve) => {
            let t = null;
            const done = () => { clearTimeout(t); resolve(); };
            t = setTimeout(done, 1500);
            (run.ackWaiters ??= []).push(done);
        });
    }

    async _snapshot(run) {
        if (run.listing) { run.again = true; return run.listing; }
        run.listing = (async () => {
            do {
                run.again = false;
                const mark = this._roster.beginSnapshot();
                const recs = [];
                const base = run.opts.room == null ? [] : [q('equal', 'metadata.room', [run.opts.room])];
                let cursor = null;
                for (;;) {
                    const queries = [...base, q('limit', undefined, [PAGE])];
                    if (cursor) queries.push(q('cursorAfter', undefined, [cursor]));
                    const page = await run.presences.list({ queries, total: false });
                    if (run !== this._run) return;
                    recs.push(...page.presences);
                    if (page.presences.length < PAGE) break;
                    cursor = page.presences[page.presences.length - 1].$id;
                }
                if (this._roster.applySnapshot(mark, recs)) this._changed();
            } while (run.again && run === this._run);
        })();
        try {
            await run.listing;
            run.retryMs = 0;
            if (this._error && run === this._run) { this._error = null; this._changed(); }
        } catch (e) {
            this._fail(e, run);
            if (run === this._run) {   // try again: 1 s, doubling up to 30 s
                run.retryMs = Math.min((run.retryMs || 500) * 2, 30000);
                clearTimeout(run.retry);
                run.retry = setTimeout(() => this._snapshot(run), run.retryMs);
            }
        } finally {
            run.listing = null;
        }
    }

    _event(run, ev) {
        if (run !== this._run) return;
        if (this._roster.applyEvent(ev)) this._changed();
        const rec = ev?.payload;
        if (rec?.userId === run.userId && typeof rec.$id === 'string') run.ownId = rec.$id;
    }

    _visibility(run, doc) {
        if (run !== this._run) return;
        const hidden = doc.visibilityState === 'hidden';
        if (hidden === run.away) return;
        run.away = hidden;
        if (run.publishing) this._publish(run);
    }

    _publish(run) {
        const status = run.away && run.opts.auto ? 'away' : run.status;
        if (this._me !== status) { this._me = status; this._changed(); }
        run.rt.upsertPresence({
            presenceId: run.ownId ?? run.presenceId,
            status,
            metadata: run.metadata,
            permissions: run.permissions,
        }).catch((e) => this._fail(e, run));
    }

    // Publish any status label, with optional details (they replace the previous details;
    // name and room are kept unless given). Starts tracking if it has not started.
    set(status, metadata) {
        if (typeof status !== 'string' || !status) { this._fail('presence: set(status): status must be a non-empty string', null); return; }
        if (!this._run) { this.start({ status, ...(metadata ? { metadata } : {}) }); return; }
        const run = this._run;
        run.status = status;
        if (metadata !== undefined) {
            const keep = { name: run.metadata.name ?? null };
            if (run.opts.room != null) keep.room = run.opts.room;
            run.metadata = { ...keep, ...(metadata ?? {}) };
            if (run.opts.room != null) run.metadata.room = run.opts.room;
        }
        run.away = false;
        run.publishing = true;
        if (run.rt) this._publish(run);
    }

    // Remove our own status but keep watching the others.
    async clear() {
        const run = this._run;
        if (!run) return;
        run.publishing = false;
        if (this._me !== null) { this._me = null; this._changed(); }
        if (!run.rt) return;
        // The SDK re-sends its last presence after a reconnect: forget it.
        if ('pendingPresence' in run.rt) run.rt.pendingPresence = undefined;
        const own = this._roster.of(run.userId);
        const id = own?.presenceId ?? run.ownId;
        if (!id) return;
        // Off our own list at once, as the others see it once the delete's event reaches them
        // (which can be before the REST call returns to us).
        const rec = { $id: id, userId: run.userId, $updatedAt: own ? new Date(own.lastSeen).toISOString() : undefined };
        if (this._roster.forget(rec)) this._changed();
        try {
            await run.presences.delete({ presenceId: id });
        } catch (e) {
            if (e?.code !== 404) this._fail(e, run);
        }
    }

    // Stop tracking: remove our status, unsubscribe, and close the socket (if it is ours).
    async stop() {
        const run = this._run;
        if (!run) return;
        await this.clear();
        this._run = null;
        clearTimeout(run.retry);
        for (const t of run.timers) clearInterval(t);
        for (const f of run.cleanup) f();
        try {
            if (run.sub) await run.sub.unsubscribe();
            if (run.ownRt && run.rt) await run.rt.disconnect();
        } catch (e) { this._error = message(e); }
        this._roster.reset();
        this._me = null;
        this._changed();
    }
}

export function createPresence(client, options = {}) {
    return new Presence(client, options);
}

/* ---------------------------------------------------------------------------- Alpine.js */

// Alpine.plugin(presence): the $presence magic. Configure it first (or pass client in start):
//   Alpine.plugin(presence.configure(client, { room: 'lobby' }))
export function presence(Alpine) {
    const state = Alpine.reactive({ list: [], records: {}, me: null, ready: false, error: null });
    let ctl = null;
    const sync = (p) => {
        state.list = p.list;
        state.records = p.records;
        state.me = p.me;
        state.ready = p.ready;
        state.error = p.error;
    };
    const controller = (opts) => {
        if (!ctl) {
            const cfg = { ...presence.options, ...(opts ?? {}) };
            ctl = createPresence(cfg.client ?? presence.client, cfg);
            ctl.onChange(sync);
        }
        return ctl;
    };
    const magic = {
        get list() { return state.list; },
        get records() { return state.records; },
        get me() { return state.me; },
        get ready() { return state.ready; },
        get error() { return state.error; },
        get controller() { return controller(); },
        start(opts) { return controller(opts).start(opts); },
        set(status, metadata) { return controller().set(status, metadata); },
        of(userId) { return state.records[userId] ?? null; },
        all() { return state.list; },
        clear() { return ctl ? ctl.clear() : undefined; },
        stop() { return ctl ? ctl.stop() : undefined; },
    };
    Alpine.magic('presence', () => magic);
}
presence.client = null;
presence.options = {};
// presence.configure(client, options) -> presence (for Alpine.plugin)
presence.configure = (client, options = {}) => {
    presence.client = client;
    presence.options = { ...options };
    return presence;
};

export default presence;
