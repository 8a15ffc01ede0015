'use strict';
// The store node that owns a record: the broker's rendezvous hashing (core/pd_util.c,
// pd_shard_owner), so a test can aim at one node (kill it, cut it off, wait for a marker on it).
const M64 = (1n << 64n) - 1n;

function hash64(bytes, seed) {
    let h = 0xcbf29ce484222325n ^ seed;
    for (const b of bytes) {
        h ^= BigInt(b);
        h = (h * 0x100000001b3n) & M64;
    }
    h ^= h >> 30n;
    h = (h * 0xbf58476d1ce4e5b9n) & M64;
    h ^= h >> 27n;
    h = (h * 0x94d049bb133111ebn) & M64;
    h ^= h >> 31n;
    return h;
}

function shardOwner(project, id, nodes = 2) {
    const h = hash64(Buffer.from(id), hash64(Buffer.from(project), 0x9e3779b97f4a7c15n));
    let best = 0n, owner = 1;
    for (let n = 1; n <= nodes; n++) {
        const b = Buffer.alloc(4);
        b.writeInt32LE(n);
        const w = hash64(b, h);
        if (w > best) { best = w; owner = n; }
    }
    return owner;
}

// A fresh id from mk() that store node `node` owns (mk is called until one fits).
function idOnNode(project, node, mk, nodes = 2) {
    for (;;) {
        const id = mk();
        if (shardOwner(project, id, nodes) === node) return id;
    }
}

// A fresh id from mk() on the same store node as `id`: a "nothing arrived" marker. The bus keeps
// each store node's events in order (and a WebSocket its frames), so once a subscriber has the
// marker's event, it has every event of `id` written before the marker was.
const sameNodeAs = (project, id, mk, nodes = 2) => idOnNode(project, shardOwner(project, id, nodes), mk, nodes);

module.exports = { shardOwner, idOnNode, sameNodeAs };
