// presenced console: what the cluster holds, live. Plain web platform code, served by the
// gateways themselves (gateway/gw_static.c), so it talks to its own origin only.
//
// Data. An API key cannot open Appwrite's realtime socket (it admits JWTs, and a JWT's user sees
// only the records it may read), so the console lists the project's records with the key once
// a second (every record, whoever may read it; a second per 1,000 records beyond 1,000, at most
// 5 s, and every 5 s while the tab is hidden) and turns the difference between two lists into
// the event stream: a record that appears is an upsert, one whose $updatedAt moved an update,
// one that is gone a delete. The cluster's health comes from /v1/health (the broker and every
// store node answered), /v1/health/ready (this gateway) and /metrics (store nodes, reaper).
// The key lives in sessionStorage: this tab only, never in a URL.

const STORE = 'presenced.console';
const LIST_LIMIT = 5000; // the most one list returns
const TICK_MS = 1000;
const HIDDEN_TICK_MS = 5000;
const MAX_EVENTS = 500;
const MAX_ROWS = 500;    // records drawn at once (the filters narrow the rest)

const $ = (id) => document.getElementById(id);

const state = {
    session: null,      // {project, key}
    records: null,      // Map $id -> record, from the last list
    total: 0,
    paused: false,
    held: [],           // events that arrived while paused
    events: [],         // shown, newest first
    gateways: new Map(), // gateway id -> last time its /metrics answered
    timer: 0,
    busy: false,        // a tick of this session is waiting for the gateway
    gen: 0,             // sessions started: a tick of an earlier session stops
    helper: null,       // the roster helper module (/v1/presence.js), when it loads
    roster: null,       // its createRoster(), fed with every list
};

// ------------------------------------------------------------------ the roster helper

// The console's People panel is the helper's own roster state machine (createRoster: one entry
// per user, the newest record, its colour), fed with each list as a snapshot.
async function loadHelper() {
    try {
        const m = await import(new URL('../v1/presence.js', location.href).href);
        if (typeof m.createRoster === 'function' && typeof m.colorFor === 'function') {
            state.helper = m;
            state.roster = m.createRoster();
        }
    } catch {
        state.helper = null; // a build without the helper: the console's own colours and roster
    }
}

function colorFor(userId) {
    if (state.helper) return state.helper.colorFor(userId);
    let h = 0;
    for (const ch of String(userId)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${h % 360} 65% 45%)`;
}

function rosterOf(records, mark) {
    if (state.roster) {
        state.roster.applySnapshot(mark, records);
        return state.roster.list;
    }
    const byUser = new Map();
    for (const r of records) {
        const e = byUser.get(r.userId);
        if (!e || r.$updatedAt > e.updatedAt)
            byUser.set(r.userId, { userId: r.userId, status: r.status, updatedAt: r.$updatedAt,
                                   metadata: { name: r.metadata?.name ?? null } });
    }
    return [...byUser.values()].sort((a, b) => String(a.userId).localeCompare(String(b.userId)));
}

// ------------------------------------------------------------------ HTTP

class HttpError extends Error {
    constructor(status, body) {
        super(body?.message || `HTTP ${status}`);
        this.status = status;
    }
}

async function api(path) {
    const { project, key } = state.session;
    const r = await fetch(new URL('../v1' + path, location.href), {
        headers: { 'X-Appwrite-Project': project, 'X-Appwrite-Key': key },
        cache: 'no-store',
        credentials: 'omit',
    });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new HttpError(r.status, body);
    return body;
}

async function status(path) {
    try {
        const r = await fetch(new URL(path, location.href), { cache: 'no-store', credentials: 'omit' });
        await r.arrayBuffer();
        return r.status;
    } catch {
        return 0;
    }
}

// Prometheus text -> [{name, labels, value}]
function parseMetrics(text) {
    const out = [];
    for (const line of text.split('\n')) {
        if (!line || line[0] === '#') continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
        if (!m) continue;
        const labels = {};
        for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
        out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
}

async function listRecords() {
    const q = encodeURIComponent(JSON.stringify({ method: 'limit', values: [LIST_LIMIT] }));
    const res = await api(`/presences?queries[]=${q}`);
    return { total: res.total, records: res.presences };
}

// ------------------------------------------------------------------ events from two lists

function diff(prev, next) {
    const now = new Date().toISOString();
    const out = [];
    for (const [id, r] of next) {
        const p = prev.get(id);
        if (!p) out.push({ action: 'upsert', record: r, at: now });
        else if (p.$updatedAt !== r.$updatedAt || p.status !== r.status || p.userId !== r.userId)
            out.push({ action: 'update', record: r, at: now });
    }
    for (const [id, p] of prev) {
        if (next.has(id)) continue;
        // gone at (or after) its expiresAt: the reaper's delete, most likely
        const expired = Date.parse(p.expiresAt) <= Date.now();
        out.push({ action: 'delete', record: p, at: now, note: expired ? 'expired' : '' });
    }
    return out;
}

function addEvents(evs) {
    if (!evs.length) return;
    if (state.paused) {
        state.held.push(...evs);
        $('events-held').textContent = `${state.held.length} held while paused`;
        return;
    }
    state.events = [...evs.reverse(), ...state.events].slice(0, MAX_EVENTS);
    renderEvents();
}

// ------------------------------------------------------------------ rendering

function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
}

function dot(userId) {
    const d = el('span', null, 'dot');
    d.style.background = colorFor(userId);
    return d;
}

function ago(iso) {
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!Number.isFinite(s)) return '';
    if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
    const m = Math.round(s / 60);
    return m >= 0 ? `${m}m ago` : `in ${-m}m`;
}

function metaMatches(meta, terms) {
    for (const t of terms) {
        const i = t.indexOf('=');
        const k = (i < 0 ? t : t.slice(0, i)).trim();
        if (!k) continue;
        if (!meta || !Object.prototype.hasOwnProperty.call(meta, k)) return false;
        if (i >= 0) {
            const v = meta[k], want = t.slice(i + 1).trim();
            if ((typeof v === 'string' ? v : JSON.stringify(v)) !== want) return false;
        }
    }
    return true;
}

function filtered() {
    const st = $('f-status').value.trim(), user = $('f-user').value.trim();
    const terms = $('f-meta').value.split(',').filter((t) => t.trim());
    return [...state.records.values()].filter((r) =>
        (!st || r.status === st) && (!user || String(r.userId).includes(user)) && metaMatches(r.metadata, terms));
}

function renderRecords() {
    const rows = filtered();
    const tb = $('records').tBodies[0];
    tb.replaceChildren(...rows.slice(0, MAX_ROWS).map((r) => {
        const tr = el('tr');
        tr.dataset.id = r.$id;
        const user = el('td');
        user.append(dot(r.userId), el('span', r.userId));
        tr.append(el('td', r.$id, 'mono'), user, el('td', r.status), el('td', JSON.stringify(r.metadata ?? {}), 'mono meta'),
                  el('td', r.source), el('td', ago(r.$updatedAt)), el('td', ago(r.expiresAt)));
        return tr;
    }));
    $('shown').textContent = rows.length > MAX_ROWS
        ? `${rows.length} of ${state.records.size} match; the first ${MAX_ROWS} are shown`
        : `${rows.length} of ${state.records.size} shown`;
}

function countList(ul, counts, onPick) {
    const entries = [...counts.entries()].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
    ul.replaceChildren(...entries.map(([k, n]) => {
        const li = el('li');
        li.dataset.key = k;
        const b = el('button', k, 'link');
        b.type = 'button';
        b.addEventListener('click', () => onPick(k));
        li.append(b, el('span', n, 'n'));
        return li;
    }));
    if (!entries.length) ul.replaceChildren(el('li', 'none', 'note'));
}

function renderCounts() {
    const recs = [...state.records.values()];
    const byStatus = new Map(), byRoom = new Map();
    const gk = $('group-key').value.trim();
    for (const r of recs) {
        byStatus.set(r.status, (byStatus.get(r.status) || 0) + 1);
        const v = gk && r.metadata ? r.metadata[gk] : undefined;
        if (v !== undefined && v !== null) {
            const k = typeof v === 'string' ? v : JSON.stringify(v);
            byRoom.set(k, (byRoom.get(k) || 0) + 1);
        }
    }
    $('total').textContent = String(state.total);
    $('total-note').textContent = state.total > recs.length
        ? `(the first ${recs.length} are shown below; a list counts at most 5,000)` : '';
    countList($('by-status'), byStatus, (k) => { $('f-status').value = k; renderRecords(); });
    countList($('by-room'), byRoom, (k) => { $('f-meta').value = `${gk}=${k}`; renderRecords(); });
    $('statuses').replaceChildren(...[...byStatus.keys()].map((s) => { const o = el('option'); o.value = s; return o; }));
}

function renderRoster(mark) {
    const people = rosterOf([...state.records.values()], mark);
    $('roster').replaceChildren(...people.slice(0, MAX_ROWS).map((p) => {
        const li = el('li');
        li.dataset.user = p.userId;
        const d = dot(p.userId);
        if (p.color) d.style.background = p.color; // a colour the record itself asks for
        li.append(d, el('span', p.metadata?.name || p.userId), el('span', p.status, 'status'));
        return li;
    }));
    $('roster-note').textContent = (people.length > MAX_ROWS ? `the first ${MAX_ROWS} of ${people.length}; ` : '') +
        (state.roster ? 'one entry per user: the roster helper (/v1/presence.js)' : '');
}

function renderEvents() {
    $('events').replaceChildren(...state.events.map((e) => {
        const li = el('li', null, `ev ${e.action}`);
        li.dataset.action = e.action;
        li.dataset.id = e.record.$id;
        li.append(el('time', e.at.slice(11, 23)), el('span', e.action, 'action'),
                  el('span', `presences.${e.record.$id}.${e.action}`, 'mono'), dot(e.record.userId),
                  el('span', e.record.userId), el('span', e.record.status, 'status'));
        if (e.note) li.append(el('span', `(${e.note})`, 'note'));
        return li;
    }));
}

function renderHealth(cluster, ready, metrics) {
    const word = (ok) => (ok ? 'up' : 'down');
    $('h-cluster').textContent = cluster === 200 ? 'pass' : cluster ? `fail (${cluster})` : 'no answer';
    $('h-ready').textContent = ready === 200 ? 'ready' : ready ? `not ready (${ready})` : 'no answer';
    $('h-cluster').className = $('h-ready').className = '';
    if (cluster !== 200) $('h-cluster').className = 'bad';
    if (ready !== 200) $('h-ready').className = 'bad';
    if (!metrics) { // /metrics needs the broker: no answer says as much
        $('h-broker').textContent = $('h-reaper').textContent = 'no report (/metrics failed)';
        $('h-broker').className = $('h-reaper').className = 'bad';
        $('stores').tBodies[0].replaceChildren();
        return;
    }
    const get = (name) => metrics.filter((s) => s.name === name);
    const broker = get('presenced_broker_ops_in_flight').length > 0;
    $('h-broker').textContent = broker ? 'up' : 'no report';
    $('h-broker').className = broker ? '' : 'bad';
    const reaper = get('presenced_reaper_up');
    $('h-reaper').textContent = reaper.length ? word(reaper[0].value === 1) : 'no report';
    $('h-reaper').className = reaper.length && reaper[0].value === 1 ? '' : 'bad';
    for (const s of get('presenced_gateway_connections')) state.gateways.set(s.labels.gateway, Date.now());
    const gws = [...state.gateways.entries()].filter(([, t]) => Date.now() - t < 60000).map(([g]) => g).sort();
    $('h-gateways').textContent = gws.length ? gws.join(', ') : 'no report';
    const nodes = new Map();
    for (const s of metrics) {
        if (!s.name.startsWith('presenced_store_') || s.labels.node === undefined) continue;
        const n = nodes.get(s.labels.node) || {};
        n[s.name.slice('presenced_store_'.length)] = s.value;
        nodes.set(s.labels.node, n);
    }
    const tb = $('stores').tBodies[0];
    tb.replaceChildren(...[...nodes.entries()].sort((a, b) => Number(a[0]) - Number(b[0])).map(([node, n]) => {
        const tr = el('tr');
        tr.dataset.node = node;
        const up = el('td', word(n.up === 1), n.up === 1 ? '' : 'bad');
        tr.append(el('td', node), up, el('td', n.records ?? '–', 'n'), el('td', n.claims ?? '–', 'n'));
        return tr;
    }));
    renderRooms(metrics);
}

// Rooms (issue 13: Supabase-style channel presence) appear only when the cluster reports them
// in /metrics: per room when a room gauge has a room (or channel) label, else the room gauges
// as they are (e.g. presenced_supabase_rooms, the rooms this gateway serves).
function renderRooms(metrics) {
    const gauges = metrics.filter((s) => /room/.test(s.name) && !/_total$/.test(s.name));
    $('rooms').hidden = gauges.length === 0;
    if (!gauges.length) return;
    const perRoom = gauges.filter((s) => (s.labels.room ?? s.labels.channel) !== undefined);
    const rows = perRoom.length
        ? perRoom.map((s) => [s.labels.room ?? s.labels.channel, s.value])
        : gauges.map((s) => {
            const labels = Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(', ');
            return [s.name.replace(/^presenced_/, '') + (labels ? ` (${labels})` : ''), s.value];
        });
    $('rooms-head').textContent = perRoom.length ? 'room' : 'gauge';
    $('rooms').querySelector('tbody').replaceChildren(...rows.map(([k, v]) => {
        const tr = el('tr');
        tr.append(el('td', k), el('td', v, 'n'));
        return tr;
    }));
}

// ------------------------------------------------------------------ the loop

async function tick() {
    clearTimeout(state.timer);
    if (!state.session) return;
    const gen = state.gen;
    state.busy = true;
    const started = performance.now();
    const mark = state.roster ? state.roster.beginSnapshot() : 0;
    const [list, cluster, ready, metricsText] = await Promise.all([
        listRecords().catch((e) => e),
        status('../v1/health'),
        status('../v1/health/ready'),
        fetch(new URL('../metrics', location.href), { cache: 'no-store', credentials: 'omit' })
            .then((r) => (r.ok ? r.text() : null)).catch(() => null),
    ]);
    if (gen !== state.gen) return; // signed out (or in again) meanwhile: that session ticks
    state.busy = false;
    // the health first: it matters most when the records cannot be listed
    renderHealth(cluster, ready, metricsText ? parseMetrics(metricsText) : null);
    if (list instanceof HttpError && (list.status === 401 || list.status === 404)) {
        signOut(list.message);
        return;
    }
    if (list instanceof Error) {
        $('banner').textContent = list instanceof HttpError
            ? `Listing the records failed: ${list.status} ${list.message} Retrying.`
            : `The gateway did not answer (${list.message}). Retrying.`;
        $('banner').hidden = false;
    } else {
        const next = new Map(list.records.map((r) => [r.$id, r]));
        if (state.records) addEvents(diff(state.records, next));
        state.records = next;
        state.total = list.total;
        $('banner').hidden = true;
        $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
        renderCounts();
        renderRecords();
        renderRoster(mark);
        document.body.dataset.ready = 'true';
    }
    // a big project is listed less often: about a second per 1,000 records (1.8 MB at 5,000)
    const every = Math.min(HIDDEN_TICK_MS, Math.max(TICK_MS, (state.records?.size ?? 0)));
    document.body.dataset.tickMs = String(Math.round(performance.now() - started));
    state.timer = setTimeout(tick, document.hidden ? HIDDEN_TICK_MS : every);
}

// ------------------------------------------------------------------ session

function signIn(session) {
    state.gen++;
    state.busy = false;
    state.session = session;
    state.records = null;
    state.events = [];
    state.held = [];
    state.roster?.reset();
    sessionStorage.setItem(STORE, JSON.stringify(session));
    $('signin').hidden = true;
    $('app').hidden = false;
    $('session').hidden = false;
    $('who').textContent = `project ${session.project}`;
    renderEvents();
    tick();
}

function signOut(message) {
    state.gen++;
    clearTimeout(state.timer);
    state.session = null;
    sessionStorage.removeItem(STORE);
    $('key').value = '';
    $('signin-error').textContent = message || '';
    $('signin').hidden = false;
    $('app').hidden = true;
    $('session').hidden = true;
    delete document.body.dataset.ready;
}

function setPaused(paused) {
    state.paused = paused;
    $('events-pause').textContent = paused ? 'Resume' : 'Pause';
    $('events-pause').setAttribute('aria-pressed', String(paused));
    if (!paused) {
        const held = state.held;
        state.held = [];
        $('events-held').textContent = '';
        addEvents(held);
    }
}

function init() {
    $('signin-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const project = $('project').value.trim(), key = $('key').value;
        if (project && key) signIn({ project, key });
    });
    $('signout').addEventListener('click', () => signOut());
    $('events-pause').addEventListener('click', () => setPaused(!state.paused));
    $('events-clear').addEventListener('click', () => { state.events = []; renderEvents(); });
    for (const id of ['f-status', 'f-user', 'f-meta']) $(id).addEventListener('input', () => state.records && renderRecords());
    $('group-key').addEventListener('input', () => state.records && renderCounts());
    document.addEventListener('visibilitychange', () => { if (!document.hidden && state.session && !state.busy) tick(); });
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(STORE)); } catch {}
    if (saved?.project && saved?.key) signIn(saved);
}

await loadHelper();
init();
