'use strict';
// Assertions shared by the suites: the Appwrite Presence model, dates, error bodies.
const assert = require('node:assert/strict');

const DATE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$/;
const PRESENCE_KEYS = ['$id', '$createdAt', '$updatedAt', '$permissions', 'userId', 'status', 'source', 'expiresAt', 'metadata'];
const LIST_KEYS = ['total', 'presences'];
const ERROR_KEYS = ['message', 'code', 'type', 'version'];

const ownerPermissions = (u) => [`delete("user:${u}")`, `read("user:${u}")`, `update("user:${u}")`, `write("user:${u}")`];

function assertDate(v, what) {
    assert.equal(typeof v, 'string', `${what} is not a string: ${JSON.stringify(v)}`);
    assert.match(v, DATE_RE, `${what} is not in Appwrite's format (2024-01-01T00:00:00.000+00:00): ${v}`);
    assert.ok(!Number.isNaN(Date.parse(v)), `${what} does not parse: ${v}`);
}

// Checks the shape of a Presence (exact keys in Appwrite's order, types, dates), then the
// fields given in `expect`.
function assertPresence(p, expect = {}) {
    assert.ok(p && typeof p === 'object', `not a presence: ${JSON.stringify(p)}`);
    assert.deepEqual(Object.keys(p), PRESENCE_KEYS, `presence keys/order: ${JSON.stringify(p)}`);
    assert.equal(typeof p.$id, 'string');
    assertDate(p.$createdAt, '$createdAt');
    assertDate(p.$updatedAt, '$updatedAt');
    assertDate(p.expiresAt, 'expiresAt');
    assert.ok(Array.isArray(p.$permissions), '$permissions is not an array');
    assert.deepEqual([...p.$permissions].sort(), p.$permissions, '$permissions not sorted');
    assert.equal(typeof p.userId, 'string');
    assert.equal(typeof p.status, 'string');
    assert.ok(['rest', 'realtime', 'graphql'].includes(p.source), `source ${p.source}`);
    assert.ok(p.metadata && typeof p.metadata === 'object' && !Array.isArray(p.metadata), `metadata must be an object: ${JSON.stringify(p.metadata)}`);
    for (const [k, v] of Object.entries(expect)) assert.deepEqual(p[k], v, `presence.${k}`);
    return p;
}

function assertList(l) {
    assert.ok(l && typeof l === 'object', `not a list: ${JSON.stringify(l)}`);
    assert.deepEqual(Object.keys(l), LIST_KEYS, `list keys/order: ${JSON.stringify(l).slice(0, 300)}`);
    assert.equal(typeof l.total, 'number');
    assert.ok(Array.isArray(l.presences));
    for (const p of l.presences) assertPresence(p);
    return l;
}

// |a - b| <= tol ms for two date strings / numbers
function assertNear(a, b, tolMs, what) {
    const ta = typeof a === 'number' ? a : Date.parse(a);
    const tb = typeof b === 'number' ? b : Date.parse(b);
    assert.ok(Math.abs(ta - tb) <= tolMs, `${what}: ${new Date(ta).toISOString()} vs ${new Date(tb).toISOString()} (tolerance ${tolMs} ms)`);
}

// An SDK call that must fail with (code, type).
async function rejectsWith(promise, code, type, what = '') {
    let err;
    try {
        const v = await promise;
        assert.fail(`${what} expected ${code} ${type}, got success: ${JSON.stringify(v).slice(0, 300)}`);
    } catch (e) {
        if (e instanceof assert.AssertionError) throw e;
        err = e;
    }
    assert.equal(err.code, code, `${what} status: ${err.code} ${err.type} ${err.message}`);
    if (type !== undefined) assert.equal(err.type, type, `${what} type: ${err.code} ${err.type} ${err.message}`);
    return err;
}

// A raw response that must be an Appwrite error body with this status and type.
function assertError(r, code, type) {
    const desc = `${r.method} ${r.path} -> ${r.status} ${String(r.text).slice(0, 300)}`;
    assert.equal(r.status, code, `status: ${desc}`);
    assert.ok(r.json && typeof r.json === 'object', `error body is not JSON: ${desc}`);
    assert.match(String(r.headers.get ? r.headers.get('content-type') : r.headers['content-type']), /application\/json/, `content-type: ${desc}`);
    assert.deepEqual(Object.keys(r.json), ERROR_KEYS, `error body keys: ${desc}`);
    assert.equal(r.json.code, code, `body code: ${desc}`);
    assert.equal(typeof r.json.message, 'string');
    assert.ok(r.json.message.length > 0, `empty message: ${desc}`);
    assert.equal(typeof r.json.version, 'string');
    if (type !== undefined) assert.equal(r.json.type, type, `type: ${desc}`);
    else assert.ok(typeof r.json.type === 'string' && r.json.type.length > 0, `type: ${desc}`);
}

let seq = 0;
// Unique ids for this run (valid UIDs: start with a letter, [a-z0-9.-_], <= 36 chars).
function uid(prefix = 'u') {
    seq++;
    return `${prefix}${Date.now().toString(36)}${seq.toString(36)}${Math.random().toString(36).slice(2, 6)}`.slice(0, 36);
}

module.exports = { DATE_RE, PRESENCE_KEYS, LIST_KEYS, ERROR_KEYS, ownerPermissions, assertDate, assertPresence, assertList, assertNear, rejectsWith, assertError, uid };
