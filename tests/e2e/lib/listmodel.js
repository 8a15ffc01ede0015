'use strict';
// The model of presenced's list that the differential tests check it against (lists.test.js,
// projlists.test.js): the records as the server returned them go in, the answer a list must
// give comes out.
const { loadNodeSdk } = require('./sdk');

const { Query: Q } = loadNodeSdk();

// A seeded random generator: a run is replayed from its seed.
function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

// The model of presenced's list: filters, the order (explicit keys, then $createdAt, $id
// ascending; null first), cursors, offset, limit, total (capped at 5,000), and who may read.
const ms = (d) => Date.parse(d);
function attrOf(rec, attr) {
    switch (attr) {
    case '$id': case 'userId': case 'status': case 'source': return rec[attr];
    case '$createdAt': case '$updatedAt': case 'expiresAt': return ms(rec[attr]);
    default: { // metadata.<key>
        const v = rec.metadata[attr.slice(9)];
        return v === undefined ? null : v;
    }
    }
}
function cmpVal(a, b) {
    const rank = (v) => (v === null ? 0 : typeof v === 'number' ? 1 : 2);
    if (rank(a) !== rank(b)) return rank(a) - rank(b);
    if (a === null) return 0;
    return a < b ? -1 : a > b ? 1 : 0;
}
function matches(rec, f) {
    const sameType = (v, x) => typeof v === typeof x && v !== null;
    const v = f.attr ? attrOf(rec, f.attr) : undefined;
    const val = (x) => (['expiresAt', '$createdAt', '$updatedAt'].includes(f.attr) ? ms(x) : x);
    switch (f.m) {
    case 'equal': return f.values.some((x) => sameType(v, val(x)) && v === val(x));
    case 'notEqual': return v !== null && !f.values.some((x) => v === val(x));
    case 'lessThan': return sameType(v, val(f.values[0])) && v < val(f.values[0]);
    case 'greaterThan': return sameType(v, val(f.values[0])) && v > val(f.values[0]);
    case 'lessThanEqual': return sameType(v, val(f.values[0])) && v <= val(f.values[0]);
    case 'greaterThanEqual': return sameType(v, val(f.values[0])) && v >= val(f.values[0]);
    case 'between': return sameType(v, val(f.values[0])) && v >= val(f.values[0]) && v <= val(f.values[1]);
    case 'startsWith': return typeof v === 'string' && v.startsWith(f.values[0]);
    case 'endsWith': return typeof v === 'string' && v.endsWith(f.values[0]);
    case 'isNull': return v === null;
    case 'isNotNull': return v !== null;
    case 'and': return f.sub.every((s) => matches(rec, s));
    case 'or': return f.sub.some((s) => matches(rec, s));
    }
    throw new Error(`model: ${f.m}`);
}
function toQuery(f) {
    switch (f.m) {
    case 'equal': return Q.equal(f.attr, f.values);
    case 'notEqual': return Q.notEqual(f.attr, f.values[0]);
    case 'lessThan': return Q.lessThan(f.attr, f.values[0]);
    case 'greaterThan': return Q.greaterThan(f.attr, f.values[0]);
    case 'lessThanEqual': return Q.lessThanEqual(f.attr, f.values[0]);
    case 'greaterThanEqual': return Q.greaterThanEqual(f.attr, f.values[0]);
    case 'between': return Q.between(f.attr, f.values[0], f.values[1]);
    case 'startsWith': return Q.startsWith(f.attr, f.values[0]);
    case 'endsWith': return Q.endsWith(f.attr, f.values[0]);
    case 'isNull': return Q.isNull(f.attr);
    case 'isNotNull': return Q.isNotNull(f.attr);
    case 'and': return Q.and(f.sub.map(toQuery));
    case 'or': return Q.or(f.sub.map(toQuery));
    }
    throw new Error(f.m);
}
function readable(rec, caller) {
    if (caller.key) return true;
    const roles = caller.user ? ['any', 'users', `user:${caller.user}`] : ['any', 'guests'];
    return rec.$permissions.some((p) => roles.some((r) => p === `read("${r}")`));
}
function modelList(recs, caller, spec) {
    const keyOf = (r) => [...spec.order.map((o) => attrOf(r, o.attr)), ms(r.$createdAt), r.$id];
    const cmp = (a, b) => {
        const ka = keyOf(a), kb = keyOf(b);
        for (let i = 0; i < ka.length; i++) {
            const c = cmpVal(ka[i], kb[i]);
            if (c) return i < spec.order.length && spec.order[i].desc ? -c : c;
        }
        return 0;
    };
    const vis = recs.filter((r) => readable(r, caller));
    const hits = vis.filter((r) => spec.filters.every((f) => matches(r, f))).sort(cmp);
    const total = Math.min(hits.length, 5000);
    if (spec.cursor) {
        const c = vis.find((r) => r.$id === spec.cursor.id);
        if (!c) return { error: 'general_cursor_not_found' };
        if (spec.cursor.before) {
            const before = hits.filter((r) => cmp(r, c) < 0);
            const to = Math.max(0, before.length - spec.offset);
            return { total, ids: before.slice(Math.max(0, to - spec.limit), to).map((r) => r.$id) };
        }
        const after = hits.filter((r) => cmp(r, c) > 0);
        return { total, ids: after.slice(spec.offset, spec.offset + spec.limit).map((r) => r.$id) };
    }
    return { total, ids: hits.slice(spec.offset, spec.offset + spec.limit).map((r) => r.$id) };
}

module.exports = { mulberry32, ms, attrOf, cmpVal, matches, toQuery, readable, modelList };
