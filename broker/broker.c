/*  broker — see broker.h.
 *
 *  Sockets: `front` ROUTER (gateways, reaper), `back` ROUTER (store nodes, ROUTER_MANDATORY so
 *  a missing node fails at once), and the bus: XSUB (bus_in, stores publish) forwarded to XPUB
 *  (bus_out, gateways and the reaper subscribe) in the same loop. All four are CURVE servers
 *  (pd_keys.h): the ZAP handler admits gateways and the reaper on front and bus_out, store nodes
 *  on back and bus_in, and names each connection by its key. A peer's role and a store node's
 *  number come from that name (the ZAP User-Id on every message), never from what the peer
 *  says or a routing id it picks: only the holder of store-<n>'s secret is node <n>.
 *
 *  Every frame is a batch of pd_msg messages. The loop drains both ROUTERs, handles each
 *  message, and appends what it sends to one output batch per destination; the batches are
 *  flushed once per loop turn. Under load one frame carries hundreds of requests, so the cost
 *  of a ZeroMQ hop is paid per batch, not per request. Single-record requests are forwarded
 *  byte for byte with only the rid rewritten (pd_msgw_forward).
 *
 *  An op is one request in flight: it remembers who asked (peer, rid) and, for the multi-step
 *  requests, where it is:
 *    UPSERT   CLAIM at owner(project,user) -> UPSERT at owner(project,claimed id)
 *             [-> RECLAIM when the claim was stale -> UPSERT again]  [-> UNCLAIM on 409]
 *    UPDATE   (with userId) CLAIM for the new owner -> UPDATE -> UNCLAIM for the old owner
 *    DELETE / EXPIRE   -> UNCLAIM of the owner once deleted
 *    LIST     [probe the cursor's owner] -> LIST at every node -> merge pages
 *    SYNC     -> every node (or one), pages streamed back to the reaper
 *  Ownership never moves when a node is down (the data lives in its shared memory), so its
 *  records are answered 503 at once until it comes back. It moves when the operator changes
 *  the store set (below).
 *
 *  Resharding. A record belongs to pd_shard_owner(project, id, N) among store nodes 1..N (a
 *  claim to pd_shard_owner(project, userId, N)): rendezvous hashing, so going from N to M
 *  nodes moves only what the added nodes take or the removed nodes held. The store set is a
 *  pair (FROM, TO): settled when equal; `presencectl cluster scale --stores M` (SCALE, from
 *  the `ctl` key only) sets TO = M and the broker moves records until FROM = TO:
 *
 *    ownership  A key whose owner among FROM nodes (its old owner) and among TO nodes (its new
 *               owner) differ is moving. Its old owner holds it until it is dropped there; from
 *               then on its new owner does. Every node learns (FROM, TO) from SHARDS, sent
 *               before anything else on the node's connection (at first contact, and at every
 *               change), so a node never acts on a set older than the broker's messages to it.
 *    routing    The broker sends every request for a key to its old owner. The old owner
 *               serves it if it holds the key and has not frozen it; otherwise it answers MOVED
 *               and the broker sends the same bytes to the new owner (op->sent). A create of a
 *               moving key is thereby made at its new owner, never behind the move's back.
 *    the move   One batch at a time, from one old owner at a time (the lowest still giving):
 *               MOVE_OUT -> the old owner freezes up to MOVE_BATCH records and claims that TO
 *               places elsewhere and sends each as MOVE_IN; the broker forwards each to its new
 *               owner, which takes it with its version (a copy no newer than its own is
 *               ignored, so a batch sent twice is applied once) and acknowledges it; then
 *               MOVE_DROP tells the old owner to forget what was acknowledged. A request for a
 *               frozen key is answered MOVED by the old owner after the MOVE_IN it sent (one
 *               connection, in order), and the broker forwards both in that order, so the new
 *               owner always has the record before the request: a record is served by exactly
 *               one node at any instant, and a write racing its move is applied once, where
 *               the record is. Subscribers see no event for a move. The reaper keys
 *               deadlines by (node, slot), and its EXPIRE goes to that node as it is
 *               (s_expire_at): the new owner reports each deadline it took, under its slot,
 *               and the old owner each it dropped (DEADLINE, on the bus's DEADLINE topic); a
 *               frozen record is not expired by its old owner (UNAVAILABLE: the reaper tries
 *               again), and the version is kept, so it is deleted once, where it is. The rate
 *               is bounded (--move-rate, items per second): at most MOVE_BATCH items per batch,
 *               one batch in flight, a pause between batches.
 *    lists      A list (and a reaper's SYNC) is not sent while a batch is in flight, and a
 *               batch does not start while one is out (new lists wait for it, parked, so
 *               batches are not starved): each node answers a list either before or after a
 *               whole batch, so a moving record is counted once.
 *    direct     Gateways route direct requests by FROM (ROUTE's TOTAL), and a node serves a
 *               direct request only for a key it owns and holds (store.c); anything else is
 *               MOVED and the gateway sends it through the broker.
 *    the end    An old owner whose whole pass over its records and claims finds nothing to
 *               move answers LAST; when every one has, FROM = TO (settled), the set is saved,
 *               SHARDS tells every node, and ROUTE gives gateways the new set. A removed node
 *               then holds nothing (drained) and may be stopped: the embedded supervisor stops
 *               it once the saved set no longer counts it.
 *    failures   A batch whose old owner or a new owner goes down, or that takes longer than
 *               OP_TIMEOUT_MS, is abandoned: what was acknowledged is dropped, what was not
 *               stays frozen and is sent again by the next MOVE_OUT (a restarted old owner has
 *               lost its frozen set, serves its records again, and sends them again). A store
 *               node restarted mid-move reads the set from SHARDS again; a restarted broker
 *               reads it from the run directory (store-set) and goes on. Known gap: a new owner
 *               that dies after taking a record but before acknowledging it keeps a copy the
 *               old owner still serves; if the record is deleted before the next batch sends it
 *               again, that copy shows up when the move ends. And a broker killed within the
 *               loop turn between receiving a batch and forwarding it leaves that batch frozen
 *               at its old owner and not at the new one: until the next broker sends it again,
 *               a request for one of those records finds it missing at the new owner. */
#include "broker.h"

#include <czmq.h>
#include <signal.h>
#include <errno.h>
#include <limits.h>

#include "pd_claims.h"
#include "pd_listcache.h"
#include "pd_err.h"
#include "pd_keys.h"
#include "pd_log.h"
#include "pd_probe.h"
#include "pd_msg.h"
#include "pd_query.h"
#include "pd_room.h"
#include "pd_zmq.h"

#define MAX_NODES 63 //  node n is bit n of a uint64_t mask (op->waiting, mv.done)
#define MAX_PEERS 256
#define OP_TIMEOUT_MS 4500
#define NODE_DEAD_MS 1000
#define TURN_BUDGET 1000   //  frames per socket per loop turn
#define BUS_WINDOW_US 1000 //  at most one bus frame per this, while events flow
#define BUS_MAX (1 << 20)  //  bytes: forward at once past this
#define MOVE_BATCH 256     //  records and claims per move batch, at most
#define MOVE_RATE 50000    //  records and claims moved per second, at most (--move-rate)

enum { OP_FREE, OP_SIMPLE, OP_UPSERT, OP_UPDATE, OP_LIST, OP_SYNC, OP_MOVE, OP_ROOMS };
enum { ST_CLAIM, ST_WRITE, ST_RECLAIM, ST_PROBE, ST_GATHER, ST_LOOKUP, ST_FETCH };

typedef struct {
    bool seen;          //  registered at least once
    bool up;            //  heard from within NODE_DEAD_MS
    int64_t last;       //  mono ms of the last HELLO
    int64_t gen;        //  boot generation
    int64_t records;    //  records held (from HELLO)
    int64_t claims;     //  user claims held
    int64_t capacity;   //  records (and claims) its table has room for now
    pd_buf_t counts;    //  records per project (packed project, count), from HELLO
    uint8_t rid[256];   //  routing id of its connection (the last one its key spoke on)
    size_t rlen;        //  0 = never connected
    char endpoint[256]; //  its front for gateways' direct requests ("" = none), from HELLO
    pd_msgw_t out;      //  batch to send this turn
    int64_t sh_gen;     //  the generation SHARDS was last sent to (0: never)
    int sh_from, sh_to; //  the store set it was told
} node_t;

typedef struct {
    uint8_t ident[256]; //  ZeroMQ routing id (at most 255 bytes)
    size_t ilen;
    char role[16];      //  "gateway", "reaper", or "" before HELLO
    int64_t last;       //  mono ms of the last message
    pd_buf_t metrics;   //  reaper: its Prometheus text
    pd_msgw_t out;      //  batch to send this turn
} peer_t;

typedef struct {
    int kind;           //  OP_*
    int state;          //  ST_*
    uint32_t gen;       //  bumped on reuse: a late reply to an old op is ignored
    int peer;           //  who asked
    uint64_t rid;       //  their rid
    int node;           //  the node a single-step reply is expected from
    uint64_t waiting;   //  LIST/SYNC: bit per node still to answer
    int64_t deadline;   //  mono ms
    int retries;        //  RECLAIM rounds
    bool fresh;         //  the claim was created by this op
    pd_buf_t req;       //  the original request, re-decoded for later steps
    char claimed[40];   //  the id from the claim
    pd_buf_t items;     //  LIST: collected [json, key] items, msgpack
    int64_t total;      //  LIST: summed totals
    pd_buf_t cursor;    //  LIST: the cursor's item (msgpack)
    pd_query_t *query;  //  LIST: parsed queries (order, limit, offset)
    bool count;         //  LIST with FLAGS COUNT: answer {"total": N}, summed, uncapped
    bool keys;          //  LIST: nodes send keys only, the page's JSON is fetched (s_list_fetch)
    bool plan;          //  LIST with FLAGS PLAN: a fetched page is the asking gateway's to fetch
    pd_buf_t fent;      //  LIST, ST_FETCH: the page, fent_t per item, in the list's order
    pd_buf_t fetched;   //  LIST, ST_FETCH: each node's FETCH answer, [node u32][len u32][msg]
    uint64_t lc_gen;    //  LIST with ?ttl=: the list cache's generation at its start (0: none);
                        //  a delete or purge=true update: 1, purge it on success (pd_listcache.h)
    pd_buf_t sent;      //  while records move: the last message sent to a store (for MOVED)
    int64_t pending;    //  MOVE: MOVE_IN sent to new owners, not yet acknowledged
    uint32_t acked;     //  MOVE: items acknowledged (packed in items)
    bool replied, last; //  MOVE: the old owner has answered (LAST: it has nothing left)
} op_t;

typedef struct {
    pd_config_t *cfg;
    zsock_t *front, *back;
    zsock_t *xsub, *xpub;   //  the bus: stores publish into xsub, xpub fans out
    pd_zpoll_t poll;
    pd_keys_t *keys;        //  the cluster's key set
    pd_zap_t *zap;          //  admits peers per socket (pd_keys.h)
    bool sent;              //  a socket was sent on since it was last drained
    pd_buf_t bus;           //  event batches received, not yet forwarded
    int64_t bus_last;       //  mono us of the last forward
    int nstores;        //  store nodes in play: max(nfrom, nto)
    int nfrom, nto;     //  the store set: records move from nfrom nodes to nto (equal: settled)
    struct {
        uint64_t batch;     //  the MOVE op in flight (0: none)
        bool wanted;        //  a batch waits for lists to finish (new lists park)
        int64_t next;       //  mono ms: no batch before
        uint64_t done;      //  bit per old owner that has nothing left to give
        uint64_t moved;     //  records and claims moved in this change
        int64_t started;    //  mono ms the change started (or this broker resumed it)
        bool resumed;       //  started by an earlier broker process (restarted mid-change)
        char waiting[96];   //  why no batch runs ("" = none)
        int pending;        //  a larger set asked for, started once all its nodes are up
    } mv;
    int move_batch;     //  items per move batch (--move-rate: at most MOVE_BATCH)
    int move_gap_ms;    //  ms between move batches (--move-rate)
    size_t lists;       //  LIST and SYNC ops in flight
    pd_buf_t parked;    //  LIST/SYNC requests waiting for a batch: [peer u32][len u32][bytes]
    node_t nodes[MAX_NODES + 1];
    peer_t peers[MAX_PEERS];
    size_t npeers;
    op_t *ops;
    size_t nops, cap_ops;
    uint32_t *free_ops;
    size_t nfree;
    msgpack_zone zone;
    int cur;            //  sender of the frame being handled (peer index or node id)
    pd_str_t page[PD_QUERY_MAX_LIMIT]; //  a list's page while it is written (s_list_finish)
    pd_claims_t *claims; // (project, user) -> presence id: cache of the store nodes' claims
    uint64_t moved_routed; //  requests sent again to a key's new owner after MOVED
    uint64_t list_fetches, list_refetched; //  two-round lists, and those listed again
    uint64_t move_refused; //  MOVE_IN a new owner could not take (full)
    pd_msgw_t shards;   //  scratch for SHARDS
    pd_listcache_t *lcache; // ?ttl= list results, purged by deletes (pd_listcache.h)
    uint64_t malformed, unroutable, claim_hits, claim_misses;
    unsigned long oversized, bus_dropped;
    uint64_t bus_in, bus_out;   //  event frames from stores, coalesced frames to subscribers
} broker_t;

static volatile sig_atomic_t s_stop;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* -------------------------------------------------------------------------- ops */

static uint64_t
s_op_id(broker_t *self, op_t *op)
{
    return ((uint64_t)op->gen << 32) | (uint64_t)(op - self->ops);
}

static op_t *
s_op_new(broker_t *self, int kind, int peer, uint64_t rid)
{
    uint32_t idx;
    if (self->nfree) {
        idx = self->free_ops[--self->nfree];
    } else {
        if (self->nops == self->cap_ops) {
            size_t cap = self->cap_ops ? self->cap_ops * 2 : 1024;
            op_t *ops = realloc(self->ops, cap * sizeof *ops);
            uint32_t *fr = realloc(self->free_ops, cap * sizeof *fr);
            if (!ops || !fr)
                abort();
            memset(ops + self->cap_ops, 0, (cap - self->cap_ops) * sizeof *ops);
            self->ops = ops;
            self->free_ops = fr;
            self->cap_ops = cap;
        }
        idx = (uint32_t)self->nops++;
    }
    op_t *op = &self->ops[idx];
    op->kind = kind;
    op->state = 0;
    op->gen++;
    op->peer = peer;
    op->rid = rid;
    op->node = 0;
    op->waiting = 0;
    op->deadline = pd_mono_ms() + OP_TIMEOUT_MS;
    op->retries = 0;
    op->fresh = false;
    op->count = op->keys = op->plan = false;
    op->claimed[0] = 0;
    op->total = 0;
    op->pending = 0;
    op->acked = 0;
    op->replied = op->last = false;
    if (kind == OP_LIST || kind == OP_SYNC)
        self->lists++;
    pd_buf_reset(&op->sent);
    pd_buf_reset(&op->req);
    pd_buf_reset(&op->items);
    pd_buf_reset(&op->cursor);
    pd_buf_reset(&op->fent);
    pd_buf_reset(&op->fetched);
    return op;
}

static void
s_op_free(broker_t *self, op_t *op)
{
    pd_query_destroy(&op->query);
    if (op->kind == OP_LIST || op->kind == OP_SYNC)
        self->lists--;
    op->kind = OP_FREE;
    op->gen++;
    self->free_ops[self->nfree++] = (uint32_t)(op - self->ops);
}

static op_t *
s_op_find(broker_t *self, uint64_t id)
{
    uint32_t idx = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (idx >= self->nops)
        return NULL;
    op_t *op = &self->ops[idx];
    return (op->kind != OP_FREE && op->gen == gen) ? op : NULL;
}

/* -------------------------------------------------------------------------- replies */

static void
s_reply_errs(broker_t *self, int peer, uint64_t rid, int err, pd_str_t msg)
{
    pd_msgw_t *w = &self->peers[peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, rid);
    pd_msgw_int(w, PD_F_ERR, err);
    if (msg.len)
        pd_msgw_s(w, PD_F_MESSAGE, msg);
    pd_msgw_end(w);
}

static void
s_reply_err(broker_t *self, int peer, uint64_t rid, int err, const char *msg)
{
    s_reply_errs(self, peer, rid, err, msg ? pd_str(msg) : PD_STR_NULL);
}

static void
s_op_fail(broker_t *self, op_t *op, int err)
{
    s_reply_err(self, op->peer, op->rid, err, NULL);
    s_op_free(self, op);
}

static void s_list_start(broker_t *self, op_t *op, const pd_msg_t *m, bool keys);

/*  Re-decodes the request saved in op->req (zone: the broker's, cleared per frame). */
static int
s_op_request(broker_t *self, op_t *op, pd_msg_t *m)
{
    size_t off = 0;
    return pd_msg_decode(m, op->req.data, op->req.len, &off, &self->zone);
}

static bool
s_node_ok(broker_t *self, int n)
{
    return n >= 1 && n <= self->nstores && self->nodes[n].up;
}

//  Where a request for key goes first: its owner among the FROM nodes (see "resharding").
static int
s_owner(broker_t *self, pd_str_t project, pd_str_t key)
{
    return pd_shard_owner(project, key, self->nfrom);
}

static bool
s_moving(broker_t *self)
{
    return self->nfrom != self->nto;
}

//  While records move, every message sent to a store for an op is kept (op->sent) from mark,
//  the offset where it starts in w: a MOVED answer sends the same bytes to the new owner.
static void
s_sent(broker_t *self, op_t *op, pd_msgw_t *w, size_t mark)
{
    if (!s_moving(self))
        return;
    pd_buf_reset(&op->sent);
    pd_buf_add(&op->sent, w->sb.data + mark, w->sb.size - mark);
}

//  Appends an encoded message to a node's batch.
static void
s_append(broker_t *self, int node, const char *bytes, size_t len)
{
    pd_msgw_append(&self->nodes[node].out, bytes, len, 1);
}

static void s_op_fail(broker_t *self, op_t *op, int err);

/*  A store answered MOVED: the key is (now) its new owner's. Sends the op's last message there
 *  unchanged (same op id), or fails the op if there is nowhere else to go. */
static void
s_resend_moved(broker_t *self, op_t *op, int node)
{
    pd_msg_t m;
    size_t off = 0;
    if (!op->sent.len || pd_msg_decode(&m, op->sent.data, op->sent.len, &off, &self->zone) < 0) {
        s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        return;
    }
    pd_str_t key = m.s[PD_F_ID];
    bool before;
    if (m.type == PD_MSG_CLAIM || m.type == PD_MSG_RECLAIM)
        key = m.s[PD_F_USER];
    else if (m.type == PD_MSG_LIST && op->query)
        key = pd_query_cursor(op->query, &before);
    int to = pd_shard_owner(m.s[PD_F_PROJECT], key, self->nto);
    if (to == node || !(to >= 1 && to <= self->nstores && self->nodes[to].up)) {
        s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        return;
    }
    s_append(self, to, op->sent.data, op->sent.len);
    op->node = to;
    self->moved_routed++;
}

/* -------------------------------------------------------------------------- claim cache */

/*  Every change to a user's claim goes through this broker (CLAIM, RECLAIM, UNCLAIM), so it can
 *  cache the claims it has seen (pd_claims: bounded, least recently used out) and send an upsert
 *  of a known user straight to the record's node: one store hop instead of two. The cache only
 *  ever names an id the claim node holds or held; if that record is gone the store answers
 *  "stale" and the RECLAIM path repairs both. It starts empty after a broker restart. */

/*  Records of a project across the cluster, as of the nodes' last HELLO (at most 250 ms old):
 *  a project's record limit can be overshot by the creates of that window. */
static int64_t
s_project_records(broker_t *self, pd_str_t project)
{
    int64_t sum = 0;
    for (int n = 1; n <= self->nstores; n++) {
        pd_str_t l = {self->nodes[n].counts.data, self->nodes[n].counts.len};
        for (pd_str_t p = pd_list_first(l); p.ptr; p = pd_list_next(l, p)) {
            pd_str_t c = pd_list_next(l, p);
            if (!c.ptr)
                break;
            if (pd_str_eq(p, project))
                sum += strtoll(c.ptr, NULL, 10);
            p = c;
        }
    }
    return sum;
}

/* -------------------------------------------------------------------------- steps */

static void
s_send_claim(broker_t *self, op_t *op, const pd_msg_t *req, pd_str_t user)
{
    int u = s_owner(self, req->s[PD_F_PROJECT], user);
    if (!s_node_ok(self, u)) {
        s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        return;
    }
    pd_msgw_t *w = &self->nodes[u].out;
    size_t mark = w->sb.size;
    pd_msgw_begin(w, PD_MSG_CLAIM, s_op_id(self, op));
    pd_msgw_s(w, PD_F_PROJECT, req->s[PD_F_PROJECT]);
    pd_msgw_s(w, PD_F_USER, user);
    pd_msgw_s(w, PD_F_ID, req->s[PD_F_ID]);
    pd_msgw_end(w);
    s_sent(self, op, w, mark);
    op->state = ST_CLAIM;
    op->node = u;
}

static void
s_send_unclaim(broker_t *self, pd_str_t project, pd_str_t user, pd_str_t id)
{
    if (!user.len)
        return;
    pd_claims_drop(self->claims, project, user);
    /* while claims move, to both owners: it only ever removes a claim that names id */
    int owners[2] = {s_owner(self, project, user), pd_shard_owner(project, user, self->nto)};
    for (int i = 0; i < 2; i++) {
        int u = owners[i];
        if (!s_node_ok(self, u) || (i == 1 && u == owners[0]))
            continue; /* a stale claim is repaired by the next upsert (RECLAIM) */
        pd_msgw_t *w = &self->nodes[u].out;
        pd_msgw_begin(w, PD_MSG_UNCLAIM, 0);
        pd_msgw_s(w, PD_F_PROJECT, project);
        pd_msgw_s(w, PD_F_USER, user);
        pd_msgw_s(w, PD_F_ID, id);
        pd_msgw_end(w);
    }
}

/*  Sends the saved write (UPSERT/UPDATE) to the owner of the claimed id. */
static void
s_send_write(broker_t *self, op_t *op)
{
    pd_msg_t req;
    if (s_op_request(self, op, &req) < 0) {
        s_op_fail(self, op, PD_ERR_SERVER_ERROR);
        return;
    }
    pd_str_t id = op->claimed[0] ? pd_str(op->claimed) : req.s[PD_F_ID];
    int p = s_owner(self, req.s[PD_F_PROJECT], id);
    if (!s_node_ok(self, p)) {
        s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        return;
    }
    pd_msgw_t *w = &self->nodes[p].out;
    bool stale_possible = op->claimed[0] && !pd_str_eq(id, req.s[PD_F_ID]);
    size_t mark = w->sb.size;
    pd_msgw_copy(w, &req, s_op_id(self, op), (1ULL << PD_F_ID) | (1ULL << PD_F_FLAGS));
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_int(w, PD_F_FLAGS, req.i[PD_F_FLAGS] | (stale_possible ? PD_FL_CLAIMED : 0));
    pd_msgw_end(w);
    s_sent(self, op, w, mark);
    op->state = ST_WRITE;
    op->node = p;
}

/*  An update that gives the record a user who already has another presence: Appwrite looks the
 *  row up first, so the answer is 404 if the path id names no record, and 409 only if it does.
 *  Asks the record's owner whether it exists (BYPASS: whoever may read it); s_on_store_reply
 *  answers from the reply. The claim was not this op's (it names another id): nothing to undo. */
static void
s_send_lookup(broker_t *self, op_t *op, const pd_msg_t *req)
{
    int p = s_owner(self, req->s[PD_F_PROJECT], req->s[PD_F_ID]);
    if (!s_node_ok(self, p)) {
        s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        return;
    }
    pd_msgw_t *w = &self->nodes[p].out;
    size_t mark = w->sb.size;
    pd_msgw_begin(w, PD_MSG_GET, s_op_id(self, op));
    pd_msgw_s(w, PD_F_PROJECT, req->s[PD_F_PROJECT]);
    pd_msgw_s(w, PD_F_ID, req->s[PD_F_ID]);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_BYPASS);
    if (pd_msg_has(req, PD_F_NOW))
        pd_msgw_int(w, PD_F_NOW, req->i[PD_F_NOW]);
    pd_msgw_end(w);
    s_sent(self, op, w, mark);
    op->state = ST_LOOKUP;
    op->node = p;
}

static bool s_park(broker_t *self, int peer, const pd_msg_t *m);

/*  A request from a gateway or the reaper. */
static void s_rooms_gather(broker_t *self, int peer, const pd_msg_t *m);

/*  The reaper's EXPIRE names a record by (NODE, SLOT): sent to that node as it is, whatever the
 *  store set (a slot is not a key: it is never sent to another node; a record that moves away
 *  is reported under its new node and slot). A node outside the store set holds nothing. */
static void
s_expire_at(broker_t *self, int peer, const pd_msg_t *m)
{
    int64_t n = m->i[PD_F_NODE];
    if (n < 1 || n > MAX_NODES) {
        s_reply_err(self, peer, m->rid, PD_ERR_ARGUMENT_INVALID, "EXPIRE: NODE out of range");
        return;
    }
    if (n > self->nstores) {
        s_reply_err(self, peer, m->rid, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    if (!s_node_ok(self, (int)n)) {
        s_reply_err(self, peer, m->rid, PD_ERR_UNAVAILABLE, NULL);
        return;
    }
    op_t *op = s_op_new(self, OP_SIMPLE, peer, m->rid);
    op->lc_gen = pd_listcache_purges(m);
    op->node = (int)n;
    op->state = ST_WRITE;
    pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
}

static void
s_on_request(broker_t *self, int peer, const pd_msg_t *m)
{
    pd_str_t project = m->s[PD_F_PROJECT];
    if (m->type == PD_MSG_EXPIRE && pd_msg_has(m, PD_F_SLOT)) {
        s_expire_at(self, peer, m);
        return;
    }
    switch (m->type) {
    case PD_MSG_GET:
    case PD_MSG_DELETE:
    case PD_MSG_EXPIRE:
    case PD_MSG_RELEASE:
    case PD_MSG_ROOM: /* a room is owned by (project, channel): ID is the channel */
    case PD_MSG_UPDATE: {
        if (m->type == PD_MSG_ROOM && m->i[PD_F_ACTION] == PD_ROOM_ROOMS) {
            s_rooms_gather(self, peer, m); /* every node's rooms */
            return;
        }
        int n = s_owner(self, project, m->s[PD_F_ID]);
        if (!s_node_ok(self, n)) {
            s_reply_err(self, peer, m->rid, PD_ERR_UNAVAILABLE, NULL);
            return;
        }
        bool reassign = m->type == PD_MSG_UPDATE && (m->i[PD_F_FLAGS] & PD_FL_HAS_USER);
        op_t *op = s_op_new(self, reassign ? OP_UPDATE : OP_SIMPLE, peer, m->rid);
        op->lc_gen = pd_listcache_purges(m);
        if (reassign) {
            pd_buf_add(&op->req, m->raw, m->raw_len);
            s_send_claim(self, op, m, m->s[PD_F_USER]);
            return;
        }
        op->node = n;
        op->state = ST_WRITE;
        size_t mark = self->nodes[n].out.sb.size;
        pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
        s_sent(self, op, &self->nodes[n].out, mark);
        return;
    }
    case PD_MSG_UPSERT: {
        op_t *op = s_op_new(self, OP_UPSERT, peer, m->rid);
        pd_buf_add(&op->req, m->raw, m->raw_len);
        const char *known = pd_claims_get(self->claims, project, m->s[PD_F_USER]);
        if (known) {
            self->claim_hits++;
            snprintf(op->claimed, sizeof op->claimed, "%s", known);
            int p = s_owner(self, project, m->s[PD_F_ID]);
            if (pd_str_eqc(m->s[PD_F_ID], known) && s_node_ok(self, p)) {
                /* the steady state: the user's record is the one named; forward the bytes */
                op->state = ST_WRITE;
                op->node = p;
                size_t mark = self->nodes[p].out.sb.size;
                pd_msgw_forward(&self->nodes[p].out, m, s_op_id(self, op));
                s_sent(self, op, &self->nodes[p].out, mark);
                return;
            }
            s_send_write(self, op);
            return;
        }
        self->claim_misses++;
        s_send_claim(self, op, m, m->s[PD_F_USER]);
        return;
    }
    case PD_MSG_LIST: {
        if (pd_listcache_answer(self->lcache, m, &self->peers[peer].out))
            return;
        char err[256];
        int code;
        pd_query_t *query =
            pd_query_parse_packed(m->s[PD_F_QUERIES], PD_QMODE_LIST | PD_QMODE_DEEP, &code, err,
                                  sizeof err); /* the gateway checked the offset */
        if (!query) {
            s_reply_err(self, peer, m->rid, code, err);
            return;
        }
        if (s_park(self, peer, m)) { /* a move batch is in flight: after it */
            pd_query_destroy(&query);
            return;
        }
        for (int n = 1; n <= self->nstores; n++) {
            if (!s_node_ok(self, n)) {
                pd_query_destroy(&query);
                s_reply_err(self, peer, m->rid, PD_ERR_UNAVAILABLE, NULL);
                return;
            }
        }
        op_t *op = s_op_new(self, OP_LIST, peer, m->rid);
        op->query = query;
        op->count = (m->i[PD_F_FLAGS] & PD_FL_COUNT) != 0;
        op->lc_gen = pd_listcache_gen(self->lcache, m);
        op->plan = (m->i[PD_F_FLAGS] & PD_FL_PLAN) && !op->lc_gen;
        pd_buf_add(&op->req, m->raw, m->raw_len);
        bool again = (m->i[PD_F_FLAGS] & PD_FL_AGAIN) != 0;
        if (again) /* a gateway's fetch of a plan found a record gone */
            self->list_refetched++;
        s_list_start(self, op, m, !again);
        return;
    }
    case PD_MSG_SYNC: {
        if (s_park(self, peer, m))
            return;
        op_t *op = s_op_new(self, OP_SYNC, peer, m->rid);
        op->deadline = pd_mono_ms() + 60000;
        if (m->i[PD_F_NODE] > self->nstores && m->i[PD_F_NODE] <= MAX_NODES) {
            /* a node that has left the store set holds nothing: an empty last page */
            pd_msgw_t *w = &self->peers[peer].out;
            pd_msgw_begin(w, PD_MSG_SYNC_PAGE, m->rid);
            pd_msgw_int(w, PD_F_NODE, m->i[PD_F_NODE]);
            pd_msgw_int(w, PD_F_FLAGS, PD_FL_LAST);
            pd_msgw_raw(w, PD_F_ITEMS);
            msgpack_pack_array(&w->pk, 0);
            pd_msgw_end(w);
            s_op_free(self, op);
            return;
        }
        for (int n = 1; n <= self->nstores; n++) {
            if (m->i[PD_F_NODE] && m->i[PD_F_NODE] != n)
                continue;
            if (!s_node_ok(self, n)) {
                /* tell the reaper, which resyncs this node when it is back */
                pd_msgw_t *w = &self->peers[peer].out;
                pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
                pd_msgw_int(w, PD_F_ERR, PD_ERR_UNAVAILABLE);
                pd_msgw_int(w, PD_F_NODE, n);
                pd_msgw_end(w);
                continue;
            }
            pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
            op->waiting |= 1ULL << n;
        }
        if (!op->waiting)
            s_op_free(self, op);
        return;
    }
    case PD_MSG_STATUS: {
        pd_buf_t b;
        pd_buf_init(&b);
        bool healthy = true;
        int64_t now = pd_mono_ms();
        pd_buf_adds(&b, "# TYPE presenced_store_up gauge\n");
        for (int n = 1; n <= self->nstores; n++) {
            pd_buf_addf(&b, "presenced_store_up{node=\"%d\"} %d\n", n, self->nodes[n].up);
            healthy &= self->nodes[n].up;
        }
        pd_buf_adds(&b, "# TYPE presenced_store_records gauge\n");
        for (int n = 1; n <= self->nstores; n++)
            pd_buf_addf(&b, "presenced_store_records{node=\"%d\"} %lld\n", n,
                        (long long)self->nodes[n].records);
        pd_buf_adds(&b, "# TYPE presenced_store_claims gauge\n");
        for (int n = 1; n <= self->nstores; n++)
            pd_buf_addf(&b, "presenced_store_claims{node=\"%d\"} %lld\n", n,
                        (long long)self->nodes[n].claims);
        pd_buf_adds(&b, "# TYPE presenced_store_capacity gauge\n");
        for (int n = 1; n <= self->nstores; n++)
            pd_buf_addf(&b, "presenced_store_capacity{node=\"%d\"} %lld\n", n,
                        (long long)self->nodes[n].capacity);
        pd_buf_addf(&b, "# TYPE presenced_store_set gauge\n"
                        "presenced_store_set{side=\"from\"} %d\n"
                        "presenced_store_set{side=\"to\"} %d\n"
                        "# TYPE presenced_store_moved_total counter\n"
                        "presenced_store_moved_total %llu\n"
                        "# TYPE presenced_store_moved_routed_total counter\n"
                        "presenced_store_moved_routed_total %llu\n"
                        "# HELP presenced_list_fetches_total Large lists answered in two rounds "
                        "(keys, then the page's records), and those listed again in one\n"
                        "# TYPE presenced_list_fetches_total counter\n"
                        "presenced_list_fetches_total{result=\"fetched\"} %llu\n"
                        "presenced_list_fetches_total{result=\"listed_again\"} %llu\n",
                    self->nfrom, self->nto, (unsigned long long)self->mv.moved,
                    (unsigned long long)self->moved_routed,
                    (unsigned long long)self->list_fetches,
                    (unsigned long long)self->list_refetched);
        bool reaper = false;
        for (size_t i = 0; i < self->npeers; i++) {
            peer_t *p = &self->peers[i];
            if (strcmp(p->role, "reaper") == 0 && now - p->last < NODE_DEAD_MS) {
                reaper = true;
                pd_buf_add(&b, p->metrics.data, p->metrics.len);
            }
        }
        healthy &= reaper;
        pd_buf_addf(&b, "# TYPE presenced_reaper_up gauge\npresenced_reaper_up %d\n", reaper);
        pd_listcache_metrics(self->lcache, &b);
        pd_buf_addf(&b, "# TYPE presenced_broker_malformed_total counter\n"
                        "presenced_broker_malformed_total %llu\n"
                        "# TYPE presenced_broker_ops_in_flight gauge\n"
                        "presenced_broker_ops_in_flight %zu\n"
                        "# TYPE presenced_broker_claim_cache_total counter\n"
                        "presenced_broker_claim_cache_total{result=\"hit\"} %llu\n"
                        "presenced_broker_claim_cache_total{result=\"miss\"} %llu\n"
                        "# TYPE presenced_broker_claim_cache_entries gauge\n"
                        "presenced_broker_claim_cache_entries %zu\n"
                        "# TYPE presenced_broker_claim_cache_evicted_total counter\n"
                        "presenced_broker_claim_cache_evicted_total %lu\n"
                        "# TYPE presenced_bus_frames_total counter\n"
                        "presenced_bus_frames_total{dir=\"in\"} %llu\n"
                        "presenced_bus_frames_total{dir=\"out\"} %llu\n"
                        "# TYPE presenced_bus_dropped_total counter\n"
                        "presenced_bus_dropped_total %lu\n"
                        "# TYPE presenced_broker_refused_peers_total counter\n"
                        "presenced_broker_refused_peers_total %lu\n",
                    (unsigned long long)(self->malformed + self->oversized),
                    self->nops - self->nfree, (unsigned long long)self->claim_hits,
                    (unsigned long long)self->claim_misses, pd_claims_count(self->claims),
                    pd_claims_evicted(self->claims), (unsigned long long)self->bus_in,
                    (unsigned long long)self->bus_out, self->bus_dropped,
                    pd_zap_denied(self->zap));
        pd_msgw_t *w = &self->peers[peer].out;
        pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
        pd_msgw_int(w, PD_F_ERR, healthy ? PD_ERR_OK : PD_ERR_UNAVAILABLE);
        pd_msgw_str(w, PD_F_BODY, b.data, b.len);
        pd_msgw_end(w);
        pd_buf_free(&b);
        return;
    }
    default:
        self->malformed++;
        return;
    }
}

/* -------------------------------------------------------------------------- list merge */

/*  Large lists in two rounds. A node sends its first offset+limit matches, and the broker keeps
 *  `limit` of all the nodes' offset+limit: with the records' JSON in every item, a page of 5,000
 *  at offset 5,000 over 3 nodes moves up to 30,000 records' JSON to use 5,000 of them, and the
 *  empty page after the last moves them all for nothing. So when offset+limit is at least
 *  LIST_KEYS_MIN and the store set has several nodes, nodes send their items' keys only (FLAGS
 *  KEYS: an empty JSON, and the record's slot), the merge picks the page from the keys, and
 *  FETCH asks each node for the JSON of its records in the page (one message per node, [id,
 *  slot] in the page's order: the node reads each slot without a hash probe, and checks that it
 *  still holds that id). A
 *  record gone or no longer readable by then (a nil in the answer) makes the broker list again
 *  in one round, JSON and all. Records do not move meanwhile: a move batch waits for the lists
 *  in flight.
 *
 *  A gateway that reaches every store node directly asks for the plan instead (FLAGS PLAN): the
 *  broker answers with the page's [node, [id, slot]] items and TOTAL, and the gateway FETCHes
 *  the JSON from the nodes over its own links (gw_rest.c, "lists"), so the page's JSON crosses one
 *  encrypted hop instead of two and never passes through the broker. Records may move between
 *  the plan and the fetch: a node refuses a gateway's FETCH while the store set changes, and
 *  answers nil for a record no longer there, and the gateway then lists again through the
 *  broker in one round (FLAGS AGAIN, counted as listed again). */
#define LIST_KEYS_MIN 1000

typedef struct {
    uint32_t node;
    uint32_t slot; //  where the node keeps it (FETCH reads it without a hash probe); NO_SLOT
    pd_str_t id;   //  a view into op->items
} fent_t;
#define NO_SLOT UINT32_MAX

//  A FETCH item: [id, slot] when the node gave the slot, else the id.
static void
s_fent_pack(msgpack_packer *pk, const fent_t *fe)
{
    if (fe->slot != NO_SLOT) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_str_with_body(pk, fe->id.ptr, fe->id.len);
        msgpack_pack_uint32(pk, fe->slot);
    } else {
        msgpack_pack_str_with_body(pk, fe->id.ptr, fe->id.len);
    }
}

/*  Sends a list to the store nodes: to the cursor's owner first when there is a cursor (phase 1,
 *  s_list_page asks every node for what follows it), else to every node. keys: may use the
 *  two-round form. */
static void
s_list_start(broker_t *self, op_t *op, const pd_msg_t *m, bool keys)
{
    op->keys = keys && !op->count && self->nstores > 1 &&
               pd_query_offset(op->query) + pd_query_limit(op->query) >= LIST_KEYS_MIN;
    bool before;
    pd_str_t cursor = pd_query_cursor(op->query, &before);
    if (cursor.len) {
        int n = s_owner(self, m->s[PD_F_PROJECT], cursor);
        pd_msgw_t *w = &self->nodes[n].out;
        size_t mark = w->sb.size;
        pd_msgw_copy(w, m, s_op_id(self, op), 1ULL << PD_F_FLAGS);
        pd_msgw_int(w, PD_F_FLAGS, m->i[PD_F_FLAGS] | PD_FL_CURSOR_PROBE);
        pd_msgw_end(w);
        s_sent(self, op, w, mark);
        op->state = ST_PROBE;
        op->node = n;
        return;
    }
    op->state = ST_GATHER;
    for (int n = 1; n <= self->nstores; n++) {
        pd_msgw_t *w = &self->nodes[n].out;
        if (op->keys) {
            pd_msgw_copy(w, m, s_op_id(self, op), 1ULL << PD_F_FLAGS);
            pd_msgw_int(w, PD_F_FLAGS, m->i[PD_F_FLAGS] | PD_FL_KEYS | PD_FL_SLOTS);
            pd_msgw_end(w);
        } else {
            pd_msgw_forward(w, m, s_op_id(self, op));
        }
        op->waiting |= 1ULL << n;
    }
}

/*  Gathers (a list's pages, a rooms list): every node's answer is kept in op->items as it came,
 *  [node u32][length u32][message], and TOTAL summed; true once the last node has answered. An
 *  error answers the asker at once and frees op (false). */
//  Keeps node's answer m in b as it came: [node u32][length u32][message].
static void
s_keep(pd_buf_t *b, int node, const pd_msg_t *m)
{
    uint32_t hdr[2] = {(uint32_t)node, (uint32_t)m->raw_len};
    pd_buf_add(b, hdr, sizeof hdr);
    pd_buf_add(b, m->raw, m->raw_len);
}

static bool
s_gather_page(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    if (m->i[PD_F_ERR] != PD_ERR_OK) {
        s_reply_errs(self, op->peer, op->rid, (int)m->i[PD_F_ERR], m->s[PD_F_MESSAGE]);
        s_op_free(self, op);
        return false;
    }
    if (!((op->waiting >> node) & 1))
        return false;
    op->waiting &= ~(1ULL << node);
    op->total += m->i[PD_F_TOTAL];
    s_keep(&op->items, node, m);
    return !op->waiting;
}

/*  The items of the next answer kept in b (s_keep), from *off: a reader at its ITEMS array's
 *  first element, their number and its node; false when none is left. Read in place
 *  (pd_mpr_*), never unpacked into objects: a node's page of 5,000 keys is read once, as it is
 *  merged. */
typedef struct {
    pd_mpr_t r; //  at the next item
    uint32_t left;
    int node;
} kept_t;

static bool
s_kept_next(const pd_buf_t *b, size_t *off, kept_t *k)
{
    while (*off + 8 <= b->len) {
        uint32_t hdr[2];
        memcpy(hdr, b->data + *off, 8);
        *off += 8;
        pd_msg_t pm;
        size_t poff = 0;
        if (hdr[1] > b->len - *off || pd_msg_decode(&pm, b->data + *off, hdr[1], &poff, NULL) < 0)
            return false;
        *off += hdr[1];
        k->r = pd_mpr(pm.s[PD_F_ITEMS]);
        k->node = (int)hdr[0];
        if (pd_msg_has(&pm, PD_F_ITEMS) && pd_mpr_array(&k->r, &k->left))
            return true;
    }
    return false;
}

//  The next item of k, a reader over it alone; false when none is left.
static bool
s_kept_item(kept_t *k, pd_mpr_t *item)
{
    if (!k->left)
        return false;
    *item = k->r;
    if (!pd_mpr_skip(&k->r)) /* validated when the answer came: only a bug gets here */
        return false;
    item->end = k->r.p;
    k->left--;
    return true;
}

/*  A node's page while the pages are merged: its items (sorted by the node in the list's
 *  order, nearest the cursor first for cursorBefore) and the one at the head: its JSON (empty
 *  with keys only), its key and its slot (NO_SLOT if the node gave none). */
typedef struct {
    kept_t k;
    pd_str_t json;
    pd_qkey_t key;
    uint32_t slot;
} head_t;

//  Moves h to its next well-formed item, [json, key] or ["", key, slot]; false when none is left.
static bool
s_head_next(head_t *h)
{
    pd_mpr_t it;
    while (s_kept_item(&h->k, &it)) {
        uint32_t n;
        int64_t slot;
        if (!pd_mpr_array(&it, &n) || (n != 2 && n != 3) || !pd_mpr_str(&it, &h->json) ||
            pd_query_key_read(&it, &h->key) < 0)
            continue;
        h->slot = n == 3 && pd_mpr_int(&it, &slot) && slot >= 0 && slot < NO_SLOT
                      ? (uint32_t)slot
                      : NO_SLOT;
        return true;
    }
    return false;
}

//  Answers op's asker with BODY (a JSON document) and frees op.
static void
s_op_answer(broker_t *self, op_t *op, const char *body, size_t len)
{
    pd_msgw_t *w = &self->peers[op->peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, op->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_str(w, PD_F_BODY, body, len);
    pd_msgw_end(w);
    s_op_free(self, op);
}

/*  Answers op's asker with the list page in self->page (n records' JSON, len bytes in all) and
 *  frees op; a list with ?ttl= is kept in the list cache. */
static void
s_list_reply(broker_t *self, op_t *op, size_t n, size_t len)
{
    pd_str_t *page = self->page;
    int64_t total = op->total > PD_QUERY_TOTAL_CAP ? PD_QUERY_TOTAL_CAP : op->total;
    char head[PD_PAGE_HEAD_MAX];
    size_t hl = pd_page_head(head, total);
    len = pd_page_len(hl, n, len);
    pd_msgw_t *w = &self->peers[op->peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, op->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_raw(w, PD_F_BODY);
    msgpack_pack_str(&w->pk, (uint32_t)len);
    size_t at = w->sb.size; /* where the body starts: the list cache keeps a copy */
    msgpack_pack_str_body(&w->pk, head, hl);
    for (size_t i = 0; i < n; i++) {
        if (i)
            msgpack_pack_str_body(&w->pk, ",", 1);
        msgpack_pack_str_body(&w->pk, page[i].ptr, page[i].len);
    }
    msgpack_pack_str_body(&w->pk, PD_PAGE_TAIL, sizeof PD_PAGE_TAIL - 1);
    pd_msgw_end(w);
    pd_msg_t req;
    if (op->lc_gen && s_op_request(self, op, &req) == 0)
        pd_listcache_put(self->lcache, &req, op->lc_gen, w->sb.data + at, len);
    s_op_free(self, op);
}

//  A two-round list could not be completed from its fetches: it is listed again in one round.
static void
s_list_again(broker_t *self, op_t *op)
{
    pd_msg_t req;
    if (s_op_request(self, op, &req) < 0) {
        s_op_fail(self, op, PD_ERR_SERVER_ERROR);
        return;
    }
    for (int n = 1; n <= self->nstores; n++)
        if (!s_node_ok(self, n)) {
            s_op_fail(self, op, PD_ERR_UNAVAILABLE);
            return;
        }
    op->waiting = 0;
    op->total = 0;
    pd_buf_reset(&op->items);
    pd_buf_reset(&op->fent);
    pd_buf_reset(&op->fetched);
    self->list_refetched++;
    s_list_start(self, op, &req, false);
}

//  A gateway's two-round page: its plan, [node, FETCH item] per item in the page's order
//  (s_fent_pack), and TOTAL.
static void
s_list_plan(broker_t *self, op_t *op)
{
    const fent_t *fe = (const fent_t *)op->fent.data;
    size_t n = op->fent.len / sizeof *fe;
    pd_msgw_t *w = &self->peers[op->peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, op->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_PLAN);
    pd_msgw_int(w, PD_F_TOTAL, op->total > PD_QUERY_TOTAL_CAP ? PD_QUERY_TOTAL_CAP : op->total);
    pd_msgw_raw(w, PD_F_ITEMS);
    msgpack_pack_array(&w->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) { /* [node, id or [id, slot]] */
        msgpack_pack_array(&w->pk, 2);
        msgpack_pack_uint32(&w->pk, fe[i].node);
        s_fent_pack(&w->pk, &fe[i]);
    }
    pd_msgw_end(w);
    self->list_fetches++;
    s_op_free(self, op);
}

//  The second round: FETCH to each node the JSON of its records in the page (op->fent).
static void
s_list_fetch(broker_t *self, op_t *op)
{
    pd_msg_t req;
    if (s_op_request(self, op, &req) < 0) {
        s_op_fail(self, op, PD_ERR_SERVER_ERROR);
        return;
    }
    const fent_t *fe = (const fent_t *)op->fent.data;
    size_t n = op->fent.len / sizeof *fe;
    uint32_t per[MAX_NODES + 1] = {0};
    for (size_t i = 0; i < n; i++)
        per[fe[i].node]++;
    for (int nd = 1; nd <= MAX_NODES; nd++) {
        if (!per[nd])
            continue;
        if (!s_node_ok(self, nd)) {
            s_op_fail(self, op, PD_ERR_UNAVAILABLE);
            return;
        }
    }
    for (int nd = 1; nd <= MAX_NODES; nd++) {
        if (!per[nd])
            continue;
        pd_msgw_t *w = &self->nodes[nd].out;
        pd_msgw_begin(w, PD_MSG_FETCH, s_op_id(self, op));
        pd_msgw_s(w, PD_F_PROJECT, req.s[PD_F_PROJECT]);
        if (pd_msg_has(&req, PD_F_ROLES))
            pd_msgw_s(w, PD_F_ROLES, req.s[PD_F_ROLES]);
        pd_msgw_int(w, PD_F_FLAGS, req.i[PD_F_FLAGS] & PD_FL_BYPASS);
        if (req.i[PD_F_NOW])
            pd_msgw_int(w, PD_F_NOW, req.i[PD_F_NOW]);
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, per[nd]);
        for (size_t i = 0; i < n; i++)
            if (fe[i].node == (uint32_t)nd)
                s_fent_pack(&w->pk, &fe[i]);
        pd_msgw_end(w);
        op->waiting |= 1ULL << nd;
    }
    op->state = ST_FETCH;
    self->list_fetches++;
}

//  A node's FETCH answer; once every node has answered, the page is written in its order.
static void
s_list_fetched(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    if (node < 1 || node > MAX_NODES || !((op->waiting >> node) & 1))
        return;
    if (m->type != PD_MSG_REPLY || m->i[PD_F_ERR] != PD_ERR_OK) {
        s_list_again(self, op);
        return;
    }
    op->waiting &= ~(1ULL << node);
    s_keep(&op->fetched, node, m);
    if (op->waiting)
        return;
    kept_t got[MAX_NODES + 1] = {0}, k;
    size_t off = 0;
    while (s_kept_next(&op->fetched, &off, &k))
        if (k.node >= 1 && k.node <= MAX_NODES)
            got[k.node] = k;
    const fent_t *fe = (const fent_t *)op->fent.data;
    size_t n = op->fent.len / sizeof *fe, len = 0;
    for (size_t i = 0; i < n; i++) { /* each node's JSON come in the order they were asked */
        pd_mpr_t it;
        if (!s_kept_item(&got[fe[i].node], &it) || !pd_mpr_str(&it, &self->page[i])) {
            s_list_again(self, op); /* deleted, expired or hidden since the first round */
            return;
        }
        len += self->page[i].len;
    }
    s_list_reply(self, op, n, len);
}

/*  Merges the pages of every node: each node sent its own first offset+limit matches in
 *  order, so the global page is the offset..offset+limit slice of their union. The pages are
 *  kept as they came (s_list_page) and merged as they are: a k-way merge walks the heads
 *  (nodes <= 63: a linear pick), skips `offset` items and takes `limit`, and their JSON is
 *  written once, straight into the reply (or, with keys only, fetched: s_list_fetch). Nothing
 *  is decoded beyond the keys of the heads. cursorBefore pages come nearest first: the merge
 *  runs in that order and the items taken are written back to front. */
static void
s_list_finish(broker_t *self, op_t *op)
{
    if (op->count) {
        char body[48];
        int len = snprintf(body, sizeof body, "{\"total\":%lld}", (long long)op->total);
        s_op_answer(self, op, body, (size_t)len);
        return;
    }
    head_t heads[MAX_NODES + 1];
    size_t nh = 0, off = 0;
    while (nh <= MAX_NODES && s_kept_next(&op->items, &off, &heads[nh].k))
        if (s_head_next(&heads[nh]))
            nh++;
    bool before = false;
    pd_query_cursor(op->query, &before);
    int dir = before ? -1 : 1;
    size_t skip = (size_t)pd_query_offset(op->query), limit = (size_t)pd_query_limit(op->query);
    pd_str_t *page = self->page;
    size_t n = 0, len = 0;
    if (limit > PD_QUERY_MAX_LIMIT)
        limit = PD_QUERY_MAX_LIMIT;
    pd_buf_reset(&op->fent);
    while (nh && n < limit) {
        size_t best = 0;
        for (size_t h = 1; h < nh; h++)
            if (dir * pd_query_key_cmp(op->query, &heads[h].key, &heads[best].key) < 0)
                best = h;
        head_t *h = &heads[best];
        if (skip) {
            skip--;
        } else if (op->keys) { /* the last key is the record's $id */
            fent_t fe = {(uint32_t)h->k.node, h->slot,
                         h->key.n ? h->key.v[h->key.n - 1].s : PD_STR_NULL};
            pd_buf_add(&op->fent, &fe, sizeof fe);
            n++;
        } else {
            page[n++] = h->json;
            len += h->json.len;
        }
        if (!s_head_next(h))
            heads[best] = heads[--nh];
    }
    if (before) { /* in the list's order: the nearest to the cursor last */
        fent_t *fe = (fent_t *)op->fent.data;
        for (size_t i = 0; i < n / 2; i++) {
            if (op->keys) {
                fent_t t = fe[i];
                fe[i] = fe[n - 1 - i];
                fe[n - 1 - i] = t;
            } else {
                pd_str_t t = page[i];
                page[i] = page[n - 1 - i];
                page[n - 1 - i] = t;
            }
        }
    }
    if (op->keys && n && op->plan)
        s_list_plan(self, op);
    else if (op->keys && n)
        s_list_fetch(self, op);
    else
        s_list_reply(self, op, n, len);
}

static void
s_list_page(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    if (op->state == ST_FETCH) {
        s_list_fetched(self, op, node, m);
        return;
    }
    if (m->i[PD_F_ERR] != PD_ERR_OK) {
        s_reply_errs(self, op->peer, op->rid, (int)m->i[PD_F_ERR], m->s[PD_F_MESSAGE]);
        s_op_free(self, op);
        return;
    }
    if (op->state == ST_PROBE) {
        pd_mpr_t items = pd_mpr(m->s[PD_F_ITEMS]);
        uint32_t ni;
        if (!pd_mpr_array(&items, &ni) || ni != 1) {
            s_op_fail(self, op, PD_ERR_SERVER_ERROR);
            return;
        }
        /* Phase 2: ask every node for the page after (or before) the cursor's key: the
         * cursor's item, [json, key], as the owner sent it (the array's one element). */
        const unsigned char *item = items.p;
        size_t item_len = (size_t)(items.end - items.p);
        pd_msg_t req;
        if (s_op_request(self, op, &req) < 0) {
            s_op_fail(self, op, PD_ERR_SERVER_ERROR);
            return;
        }
        for (int n = 1; n <= self->nstores; n++) {
            if (!s_node_ok(self, n)) {
                s_op_fail(self, op, PD_ERR_UNAVAILABLE);
                return;
            }
        }
        for (int n = 1; n <= self->nstores; n++) {
            pd_msgw_t *w = &self->nodes[n].out;
            pd_msgw_copy(w, &req, s_op_id(self, op), 1ULL << PD_F_FLAGS);
            pd_msgw_int(w, PD_F_FLAGS,
                        req.i[PD_F_FLAGS] | (op->keys ? PD_FL_KEYS | PD_FL_SLOTS : 0));
            pd_msgw_raw(w, PD_F_CURSOR_KEYS);
            msgpack_sbuffer_write(&w->sb, (const char *)item, item_len);
            pd_msgw_end(w);
            op->waiting |= 1ULL << n;
        }
        op->state = ST_GATHER;
        return;
    }
    if (s_gather_page(self, op, node, m)) /* the pages as they came: merged in s_list_finish */
        s_list_finish(self, op);
}

/* -------------------------------------------------------------------------- rooms list */

/*  presencectl rooms list (GET /v1/rooms): a project's rooms are spread over every store node
 *  (by channel), so ROOM ROOMS goes to each; their [channel, count] items are collected in
 *  op->items and the answer lists the PD_ROOM_LIST_MAX largest rooms of all, with the total
 *  number of rooms. */
static void
s_rooms_gather(broker_t *self, int peer, const pd_msg_t *m)
{
    for (int n = 1; n <= self->nstores; n++) {
        if (!s_node_ok(self, n)) {
            s_reply_err(self, peer, m->rid, PD_ERR_UNAVAILABLE, NULL);
            return;
        }
    }
    op_t *op = s_op_new(self, OP_ROOMS, peer, m->rid);
    for (int n = 1; n <= self->nstores; n++) {
        pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
        op->waiting |= 1ULL << n;
    }
}

static void
s_rooms_finish(broker_t *self, op_t *op)
{
    size_t n = 0, cap = 0, off = 0;
    pd_room_n_t *v = NULL;
    kept_t k;
    pd_mpr_t it;
    while (s_kept_next(&op->items, &off, &k)) {
        while (s_kept_item(&k, &it)) { /* [channel, count] */
            uint32_t two;
            pd_str_t channel;
            int64_t count;
            if (!pd_mpr_array(&it, &two) || two != 2 || !pd_mpr_str(&it, &channel) ||
                !pd_mpr_int(&it, &count) || count < 0)
                continue;
            if (n == cap && !(v = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof *v)))
                abort();
            v[n++] = (pd_room_n_t){channel, (uint64_t)count};
        }
    }
    if (n)
        qsort(v, n, sizeof *v, pd_room_n_cmp);
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_addf(&b, "{\"total\":%lld,\"rooms\":[", (long long)op->total);
    for (size_t i = 0; i < n && i < PD_ROOM_LIST_MAX; i++) {
        pd_buf_adds(&b, i ? ",{\"channel\":" : "{\"channel\":");
        pd_buf_add_json_str(&b, v[i].channel.ptr, v[i].channel.len);
        pd_buf_addf(&b, ",\"count\":%llu}", (unsigned long long)v[i].count);
    }
    pd_buf_adds(&b, "]}");
    s_op_answer(self, op, b.data, b.len);
    pd_buf_free(&b);
    free(v);
}

static void
s_rooms_page(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    if (s_gather_page(self, op, node, m))
        s_rooms_finish(self, op);
}

/* -------------------------------------------------------------------------- resharding */

//  The store set survives a broker restart in the run directory ("from to pending": pending is
//  a larger set asked for whose new nodes are not all up yet, 0 if none).
static void
s_set_save(broker_t *self)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    if (!self->cfg->run_dir[0] ||
        snprintf(path, sizeof path, "%s/store-set", self->cfg->run_dir) >= (int)sizeof path)
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d %d %d\n", self->nfrom, self->nto, self->mv.pending) < 0 || fclose(f) != 0 ||
        rename(tmp, path) < 0)
        pd_log_warn("cannot save the store set in %s: %s", path, strerror(errno));
}

static void
s_set_load(broker_t *self)
{
    char path[PATH_MAX];
    self->nfrom = self->nto = self->cfg->stores;
    if (!self->cfg->run_dir[0] ||
        snprintf(path, sizeof path, "%s/store-set", self->cfg->run_dir) >= (int)sizeof path)
        return;
    FILE *f = fopen(path, "r");
    int from, to, pending = 0;
    if (f && fscanf(f, "%d %d %d", &from, &to, &pending) >= 2 && from >= 1 && to >= 1 &&
        from <= MAX_NODES && to <= MAX_NODES && pending >= 0 && pending <= MAX_NODES) {
        self->nfrom = from;
        self->nto = to;
        self->mv.pending = pending;
        if (from != to) { /* a change under way when the last broker stopped: it goes on */
            self->mv.started = pd_mono_ms();
            self->mv.resumed = true;
        }
        pd_log_info("store set from %s: %d -> %d nodes%s", path, from, to,
                    pending ? " (more asked for, not all up yet)" : "");
    }
    if (f)
        fclose(f);
}

static int
s_buf_write(void *data, const char *buf, size_t len)
{
    pd_buf_add(data, buf, len);
    return 0;
}

//  The end of a move batch: the old owner forgets what new owners acknowledged (unless it is
//  down: a restarted old owner has lost its frozen set and serves those records again, so they
//  are sent again rather than dropped); what was not acknowledged stays frozen there and is sent
//  again by the next batch.
static void
s_move_finish(broker_t *self, op_t *op, bool abandoned)
{
    int src = op->node;
    if (op->acked && s_node_ok(self, src)) {
        pd_msgw_t *w = &self->nodes[src].out;
        pd_msgw_begin(w, PD_MSG_MOVE_DROP, 0);
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, op->acked);
        msgpack_sbuffer_write(&w->sb, op->items.data, op->items.len);
        pd_msgw_end(w);
        self->mv.moved += op->acked;
    }
    if (!abandoned && op->last)
        self->mv.done |= 1ULL << src;
    if (abandoned)
        pd_log_warn("move batch from store node %d abandoned (%u of its items taken); retrying",
                    src, op->acked);
    self->mv.batch = 0;
    self->mv.next = pd_mono_ms() + (abandoned ? 500 : self->move_gap_ms);
    s_op_free(self, op);
}

//  What the old owner sends for a batch (MOVE_IN per item, then its REPLY) and the new owners'
//  acknowledgements.
static void
s_move_reply(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    bool claim = (m->i[PD_F_FLAGS] & PD_FL_CLAIMED) != 0;
    pd_str_t project = m->s[PD_F_PROJECT], key = claim ? m->s[PD_F_USER] : m->s[PD_F_ID];
    if (m->type == PD_MSG_MOVE_IN) {
        int to = pd_shard_owner(project, key, self->nto);
        if (node != op->node || op->replied || to == node || !s_node_ok(self, to))
            return; /* it stays frozen at the old owner and goes with the next batch */
        pd_msgw_forward(&self->nodes[to].out, m, s_op_id(self, op));
        op->pending++;
        op->waiting |= 1ULL << to;
        return;
    }
    if (m->type != PD_MSG_REPLY)
        return;
    if (node == op->node && !pd_msg_has(m, PD_F_PROJECT)) { /* the old owner's answer */
        op->replied = true;
        op->last = (m->i[PD_F_FLAGS] & PD_FL_LAST) != 0 && m->i[PD_F_TOTAL] == 0;
    } else if (op->pending > 0) { /* a new owner took an item (or could not) */
        op->pending--;
        if (m->i[PD_F_ERR] == PD_ERR_OK) {
            msgpack_packer pk;
            msgpack_packer_init(&pk, &op->items, s_buf_write);
            msgpack_pack_array(&pk, 3);
            msgpack_pack_str_with_body(&pk, project.ptr, project.len);
            msgpack_pack_str_with_body(&pk, key.ptr, key.len);
            msgpack_pack_uint8(&pk, claim ? 1 : 0);
            op->acked++;
        } else {
            self->move_refused++;
        }
    }
    if (op->replied && op->pending == 0)
        s_move_finish(self, op, false);
}

//  Settles the store set once every old owner has given all it must.
static void
s_settle(broker_t *self)
{
    pd_log_info("store set settled: %d store nodes (%llu records and claims moved in %lld ms%s)",
                self->nto, (unsigned long long)self->mv.moved,
                (long long)(pd_mono_ms() - self->mv.started),
                self->mv.resumed ? " since this broker resumed the change" : "");
    self->mv.resumed = false;
    self->nfrom = self->nstores = self->nto;
    self->mv.done = 0;
    self->mv.wanted = false;
    self->mv.waiting[0] = 0;
    s_set_save(self);
}

static void s_on_request(broker_t *self, int peer, const pd_msg_t *m);

//  LIST and SYNC wait while a move batch is in flight or wants to start (see "resharding").
static bool
s_park(broker_t *self, int peer, const pd_msg_t *m)
{
    if (!s_moving(self) || (!self->mv.batch && !self->mv.wanted))
        return false;
    uint32_t hdr[2] = {(uint32_t)peer, (uint32_t)m->raw_len};
    pd_buf_add(&self->parked, hdr, sizeof hdr);
    pd_buf_add(&self->parked, m->raw, m->raw_len);
    return true;
}

//  Handles the parked requests (from the loop, outside any frame: it clears the zone).
static void
s_unpark(broker_t *self)
{
    pd_buf_t b = self->parked;
    pd_buf_init(&self->parked);
    for (size_t off = 0; off + 8 <= b.len;) {
        uint32_t hdr[2];
        memcpy(hdr, b.data + off, sizeof hdr);
        off += sizeof hdr;
        if (hdr[1] > b.len - off)
            break;
        pd_msg_t m;
        size_t o = 0;
        if (hdr[0] < self->npeers && pd_msg_decode(&m, b.data + off, hdr[1], &o, &self->zone) == 0)
            s_on_request(self, (int)hdr[0], &m);
        off += hdr[1];
    }
    pd_buf_free(&b);
    msgpack_zone_clear(&self->zone);
}

/*  Once per loop turn while the store set moves: starts the next batch when none is in flight,
 *  MOVE_GAP_MS have passed, every node of the set is up, and no list is out; settles when
 *  every old owner has answered LAST. */
static void
s_move_tick(broker_t *self)
{
    if (self->mv.batch)
        return;
    if (self->parked.len) {
        self->mv.wanted = false;
        s_unpark(self);
    }
    int64_t now = pd_mono_ms();
    if (self->mv.pending) { /* nothing changes before the new nodes are up: no request waits */
        for (int n = self->nstores + 1; n <= self->mv.pending; n++) {
            if (!self->nodes[n].up) {
                snprintf(self->mv.waiting, sizeof self->mv.waiting, "store node %d is not up", n);
                return;
            }
        }
        self->nto = self->nstores = self->mv.pending;
        self->mv.pending = 0;
        self->mv.waiting[0] = 0;
        self->mv.started = now;
        self->mv.resumed = false;
        self->mv.next = now + 1; /* the first batch after SHARDS has gone out (s_flush) */
        s_set_save(self); /* a broker restarted from here on goes on moving */
        pd_log_info("store set: moving from %d to %d store nodes", self->nfrom, self->nto);
        return;
    }
    if (!s_moving(self))
        return;
    if (now < self->mv.next)
        return;
    for (int n = 1; n <= self->nstores; n++) {
        if (!self->nodes[n].up) {
            snprintf(self->mv.waiting, sizeof self->mv.waiting, "store node %d is not up", n);
            self->mv.next = now + 50;
            return;
        }
    }
    if (self->lists) {
        self->mv.wanted = true;
        return;
    }
    int src = 0;
    for (int n = 1; n <= self->nfrom && !src; n++)
        if (!((self->mv.done >> n) & 1))
            src = n;
    if (!src) {
        s_settle(self);
        return;
    }
    self->mv.waiting[0] = 0;
    op_t *op = s_op_new(self, OP_MOVE, 0, 0);
    op->node = src;
    pd_msgw_t *w = &self->nodes[src].out;
    pd_msgw_begin(w, PD_MSG_MOVE_OUT, s_op_id(self, op));
    pd_msgw_int(w, PD_F_FROM, self->nfrom);
    pd_msgw_int(w, PD_F_TOTAL, self->nto);
    pd_msgw_int(w, PD_F_LIMIT, self->move_batch);
    pd_msgw_end(w);
    self->mv.batch = s_op_id(self, op);
}

//  The store set as JSON, for presencectl.
static void
s_set_json(broker_t *self, pd_buf_t *b)
{
    pd_buf_addf(b, "{\"from\":%d,\"to\":%d,\"settled\":%s,\"moved\":%llu,\"waiting\":\"%s\","
                   "\"nodes\":[",
                self->nfrom, self->mv.pending ? self->mv.pending : self->nto,
                s_moving(self) || self->mv.pending ? "false" : "true",
                (unsigned long long)self->mv.moved, self->mv.waiting);
    for (int n = 1; n <= self->nstores; n++)
        pd_buf_addf(b, "%s{\"node\":%d,\"up\":%s,\"records\":%lld,\"claims\":%lld,\"capacity\":%lld,"
                       "\"done\":%s}", n > 1 ? "," : "",
                    n, self->nodes[n].up ? "true" : "false", (long long)self->nodes[n].records,
                    (long long)self->nodes[n].claims, (long long)self->nodes[n].capacity,
                    ((self->mv.done >> n) & 1) ? "true" : "false");
    pd_buf_adds(b, "]}");
}

//  SCALE from presencectl (the ctl key): TOTAL store nodes from now on (0: report only).
static void
s_on_scale(broker_t *self, int peer, const pd_msg_t *m)
{
    int64_t want = m->i[PD_F_TOTAL];
    char msg[160];
    if (want < 0 || want > MAX_NODES) {
        snprintf(msg, sizeof msg, "store nodes must be 1..%d", MAX_NODES);
        s_reply_err(self, peer, m->rid, PD_ERR_ARGUMENT_INVALID, msg);
        return;
    }
    int to = self->mv.pending ? self->mv.pending : self->nto;
    if (want && want != to) {
        if (s_moving(self) || self->mv.pending) {
            snprintf(msg, sizeof msg, "a move from %d to %d store nodes is under way",
                     self->nfrom, to);
            s_reply_err(self, peer, m->rid, PD_ERR_CONFLICT, msg);
            return;
        }
        memset(&self->mv, 0, sizeof self->mv);
        self->mv.started = pd_mono_ms();
        self->mv.resumed = false;
        self->mv.next = self->mv.started + 1; /* the first batch after SHARDS (s_flush) */
        if (want > self->nfrom) { /* started by s_move_tick once the new nodes are up */
            self->mv.pending = (int)want;
            pd_log_info("store set: %d store nodes asked for; waiting for the new ones",
                        (int)want);
        } else {
            self->nto = (int)want;
            pd_log_info("store set: moving from %d to %d store nodes", self->nfrom, self->nto);
        }
        s_set_save(self);
    }
    pd_buf_t b;
    pd_buf_init(&b);
    s_set_json(self, &b);
    pd_msgw_t *w = &self->peers[peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_str(w, PD_F_BODY, b.data, b.len);
    pd_msgw_end(w);
    pd_buf_free(&b);
}

/*  SHARDS to every node that has not been told the current set, in a frame of its own. Order
 *  matters: a new connection (a node that started or restarted) is told before its first
 *  batch (fresh = true, before the batches), since a node that does not know it gives a key
 *  away would create it; a node told a change of the set is told after the batch of this turn
 *  (fresh = false, after them), whose requests were routed by the set it knows. */
static void
s_send_shards(broker_t *self, bool fresh)
{
    for (int n = 1; n <= MAX_NODES; n++) {
        node_t *nd = &self->nodes[n];
        if (!nd->rlen || !nd->gen || (fresh && nd->sh_gen == nd->gen) ||
            (nd->sh_gen == nd->gen && nd->sh_from == self->nfrom && nd->sh_to == self->nto))
            continue;
        pd_msgw_t *w = &self->shards;
        pd_msgw_reset(w);
        pd_msgw_begin(w, PD_MSG_SHARDS, 0);
        pd_msgw_int(w, PD_F_FROM, self->nfrom);
        pd_msgw_int(w, PD_F_TOTAL, self->nto);
        pd_msgw_end(w);
        if (pd_zmq_send(zsock_resolve(self->back), nd->rid, nd->rlen, w->sb.data, w->sb.size) == 0) {
            nd->sh_gen = nd->gen;
            nd->sh_from = self->nfrom;
            nd->sh_to = self->nto;
        }
        self->sent = true;
        pd_zpoll_sent(&self->poll, zsock_resolve(self->back));
    }
}

/* -------------------------------------------------------------------------- store replies */

static void
s_on_store_reply(broker_t *self, int node, const pd_msg_t *m)
{
    op_t *op = s_op_find(self, m->rid);
    if (!op)
        return; /* late reply to a timed-out op, or an UNCLAIM */
    if (op->kind == OP_MOVE) {
        s_move_reply(self, op, node, m);
        return;
    }
    if (m->type == PD_MSG_REPLY && (m->i[PD_F_FLAGS] & PD_FL_MOVED)) {
        s_resend_moved(self, op, node); /* resharding: the key is its new owner's */
        return;
    }
    int err = (int)m->i[PD_F_ERR];
    switch (op->kind) {
    case OP_SIMPLE: {
        pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
        pd_listcache_on_reply(self->lcache, m, op->lc_gen);
        if (err == PD_ERR_OK && m->s[PD_F_USER].len &&
            !pd_msg_has(m, PD_F_BODY) /* DELETE and EXPIRE replies carry no body */)
            s_send_unclaim(self, m->s[PD_F_PROJECT], m->s[PD_F_USER], m->s[PD_F_ID]);
        s_op_free(self, op);
        return;
    }
    case OP_UPSERT:
    case OP_UPDATE:
        if (op->state == ST_CLAIM || op->state == ST_RECLAIM) {
            if (err != PD_ERR_OK) {
                s_op_fail(self, op, err);
                return;
            }
            pd_str_t claimed = m->s[PD_F_ID];
            if (claimed.len == 0 || claimed.len > 36) {
                s_op_fail(self, op, PD_ERR_SERVER_ERROR);
                return;
            }
            memcpy(op->claimed, claimed.ptr, claimed.len);
            op->claimed[claimed.len] = 0;
            op->fresh = (m->i[PD_F_FLAGS] & PD_FL_FRESH) != 0;
            if (op->fresh && op->kind == OP_UPSERT) {
                /* a new claim means a new record: check the project's record limit */
                pd_msg_t req;
                if (s_op_request(self, op, &req) == 0 && req.i[PD_F_MAX_RECORDS] > 0 &&
                    s_project_records(self, req.s[PD_F_PROJECT]) >= req.i[PD_F_MAX_RECORDS]) {
                    char msg[160];
                    snprintf(msg, sizeof msg,
                             "This project has reached its limit of %lld presence records.",
                             (long long)req.i[PD_F_MAX_RECORDS]);
                    s_send_unclaim(self, req.s[PD_F_PROJECT], req.s[PD_F_USER],
                                   pd_str(op->claimed));
                    s_reply_err(self, op->peer, op->rid, PD_ERR_LIMIT_EXCEEDED, msg);
                    s_op_free(self, op);
                    return;
                }
            }
            {
                pd_msg_t req;
                if (s_op_request(self, op, &req) == 0)
                    pd_claims_set(self->claims, req.s[PD_F_PROJECT], req.s[PD_F_USER],
                                  pd_str(op->claimed));
            }
            if (op->kind == OP_UPDATE) {
                pd_msg_t req;
                if (s_op_request(self, op, &req) < 0) {
                    s_op_fail(self, op, PD_ERR_SERVER_ERROR);
                    return;
                }
                if (!pd_str_eq(claimed, req.s[PD_F_ID])) {
                    /* The new owner already has another presence: 409, if the record exists. */
                    s_send_lookup(self, op, &req);
                    return;
                }
                op->claimed[0] = 0; /* route by the path id */
            }
            s_send_write(self, op);
            return;
        }
        if (op->state == ST_LOOKUP) { /* see s_send_lookup */
            s_op_fail(self, op, err == PD_ERR_OK ? PD_ERR_PRESENCE_EXISTS : err);
            return;
        }
        /* ST_WRITE: the store answered the write. */
        if (err == PD_ERR_OK && op->kind == OP_UPSERT) { /* the common case: pass it on */
            pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
            s_op_free(self, op);
            return;
        }
        {
            pd_msg_t req;
            if (s_op_request(self, op, &req) < 0) {
                s_op_fail(self, op, PD_ERR_SERVER_ERROR);
                return;
            }
            if (op->kind == OP_UPSERT && err == PD_ERR_PRESENCE_NOT_FOUND && op->retries < 3) {
                /* The claim named a record that no longer exists: move it to the path id. */
                op->retries++;
                int u = s_owner(self, req.s[PD_F_PROJECT], req.s[PD_F_USER]);
                if (!s_node_ok(self, u)) {
                    s_op_fail(self, op, PD_ERR_UNAVAILABLE);
                    return;
                }
                pd_msgw_t *w = &self->nodes[u].out;
                size_t mark = w->sb.size;
                pd_msgw_begin(w, PD_MSG_RECLAIM, s_op_id(self, op));
                pd_msgw_s(w, PD_F_PROJECT, req.s[PD_F_PROJECT]);
                pd_msgw_s(w, PD_F_USER, req.s[PD_F_USER]);
                pd_msgw_s(w, PD_F_EXPECT, pd_str(op->claimed));
                pd_msgw_s(w, PD_F_ID, req.s[PD_F_ID]);
                pd_msgw_end(w);
                s_sent(self, op, w, mark);
                op->state = ST_RECLAIM;
                op->node = u;
                return;
            }
            if (err != PD_ERR_OK && op->kind == OP_UPSERT)
                pd_claims_drop(self->claims, req.s[PD_F_PROJECT], req.s[PD_F_USER]);
            if (err != PD_ERR_OK && op->fresh) /* undo a claim this op made */
                s_send_unclaim(self, req.s[PD_F_PROJECT], req.s[PD_F_USER],
                               op->kind == OP_UPSERT ? pd_str(op->claimed) : req.s[PD_F_ID]);
            if (err == PD_ERR_OK && op->kind == OP_UPDATE && m->s[PD_F_PREV_USER].len &&
                !pd_str_eq(m->s[PD_F_PREV_USER], req.s[PD_F_USER]))
                s_send_unclaim(self, req.s[PD_F_PROJECT], m->s[PD_F_PREV_USER], req.s[PD_F_ID]);
            pd_listcache_on_reply(self->lcache, m, op->lc_gen);
            pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
            s_op_free(self, op);
            return;
        }
    case OP_LIST:
        s_list_page(self, op, node, m);
        return;
    case OP_ROOMS:
        s_rooms_page(self, op, node, m);
        return;
    case OP_SYNC:
        pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
        if (m->type != PD_MSG_SYNC_PAGE || (m->i[PD_F_FLAGS] & PD_FL_LAST)) {
            op->waiting &= ~(1ULL << node);
            if (!op->waiting)
                s_op_free(self, op);
        }
        return;
    }
}

/* -------------------------------------------------------------------------- sockets */

/*  The peer slot of a connection; a new one takes its role from the name of the key it
 *  authenticated with (uid: "reaper" or "gateway-<n>", the only ones ZAP admits on front). */
static int
s_peer(broker_t *self, const void *ident, size_t ilen, const char *uid)
{
    for (size_t i = 0; i < self->npeers; i++)
        if (self->peers[i].ilen == ilen && memcmp(self->peers[i].ident, ident, ilen) == 0)
            return (int)i;
    size_t i = self->npeers;
    if (i == MAX_PEERS) { /* reuse the longest silent peer */
        i = 0;
        for (size_t k = 1; k < self->npeers; k++)
            if (self->peers[k].last < self->peers[i].last)
                i = k;
        pd_msgw_reset(&self->peers[i].out);
    } else {
        self->npeers++;
        pd_msgw_init(&self->peers[i].out);
        pd_buf_init(&self->peers[i].metrics);
    }
    memcpy(self->peers[i].ident, ident, ilen);
    self->peers[i].ilen = ilen;
    snprintf(self->peers[i].role, sizeof self->peers[i].role, "%s",
             strcmp(uid, "reaper") == 0 ? "reaper" : strcmp(uid, "ctl") == 0 ? "ctl" : "gateway");
    return (int)i;
}

/*  The route table, to gateway p: where each node's front is, and whether it is up. Gateways
 *  send the requests that need no claim or list straight there (gateway.c); the broker stays
 *  the authority on membership, so a node it marks down is down for them too. Sent as the
 *  answer to every gateway HELLO, and to every gateway at once when a node comes up or back
 *  with a new generation (a restarted node: gateways fail what they sent the old process, 503,
 *  and send to the new one, without waiting up to a heartbeat for it). */
static void
s_routes(broker_t *self, peer_t *p)
{
    for (int n = 1; n <= self->nfrom; n++) { /* while records move: the old set */
        node_t *nd = &self->nodes[n];
        pd_msgw_begin(&p->out, PD_MSG_ROUTE, 0);
        pd_msgw_int(&p->out, PD_F_NODE, n);
        pd_msgw_int(&p->out, PD_F_TOTAL, self->nfrom);
        pd_msgw_int(&p->out, PD_F_FLAGS, nd->up ? 1 : 0);
        pd_msgw_int(&p->out, PD_F_GEN, nd->gen);
        pd_msgw_str(&p->out, PD_F_ENDPOINT, nd->endpoint, strlen(nd->endpoint));
        pd_msgw_end(&p->out);
    }
}

/*  One message from a gateway or the reaper (self->cur is the sender). */
static void
s_on_front(const pd_msg_t *m, void *arg)
{
    broker_t *self = arg;
    peer_t *p = &self->peers[self->cur];
    if ((m->type == PD_MSG_SCALE) != (strcmp(p->role, "ctl") == 0)) {
        self->malformed++; /* SCALE only from presencectl's key, which sends nothing else */
        if (m->type == PD_MSG_SCALE || m->rid)
            s_reply_err(self, self->cur, m->rid, PD_ERR_FORBIDDEN, NULL);
        return;
    }
    if (m->type == PD_MSG_SCALE) {
        s_on_scale(self, self->cur, m);
        return;
    }
    if (m->type != PD_MSG_HELLO) {
        s_on_request(self, self->cur, m);
        return;
    }
    if (strcmp(p->role, "gateway") == 0)
        s_routes(self, p);
    if (pd_msg_has(m, PD_F_BODY)) {
        pd_buf_reset(&p->metrics);
        pd_buf_add(&p->metrics, m->s[PD_F_BODY].ptr, m->s[PD_F_BODY].len);
    }
}

static void s_sweep(broker_t *self);

/*  One message from a store node (self->cur is the node). */
static void
s_on_back(const pd_msg_t *m, void *arg)
{
    broker_t *self = arg;
    int node = self->cur;
    if (m->type != PD_MSG_HELLO) {
        s_on_store_reply(self, node, m);
        return;
    }
    node_t *nd = &self->nodes[node];
    bool news = !nd->up || nd->gen != m->i[PD_F_GEN];
    if (news)
        pd_log_info("store node %d is up (generation %lld, %lld records)", node,
                    (long long)m->i[PD_F_GEN], (long long)m->i[PD_F_TOTAL]);
    if (nd->gen && nd->gen != m->i[PD_F_GEN]) {
        /* It restarted faster than it could be missed (or a send to the old process failed
         * and marked it down just before this HELLO, before a sweep): what the old process
         * had in hand is lost, so fail those ops now (503) rather than when they time out. */
        nd->up = false;
        s_sweep(self);
    }
    nd->seen = nd->up = true;
    nd->last = pd_mono_ms();
    nd->gen = m->i[PD_F_GEN];
    nd->records = m->i[PD_F_TOTAL];
    nd->claims = m->i[PD_F_CLAIMS];
    nd->capacity = m->i[PD_F_CAPACITY];
    pd_str_t ep = m->s[PD_F_ENDPOINT];
    if (ep.len < sizeof nd->endpoint) {
        memcpy(nd->endpoint, ep.ptr ? ep.ptr : "", ep.len);
        nd->endpoint[ep.len] = 0;
    }
    if (pd_msg_has(m, PD_F_COUNTS)) { /* absent while a restarted node counts again */
        pd_buf_reset(&nd->counts);
        pd_buf_add(&nd->counts, m->s[PD_F_COUNTS].ptr, m->s[PD_F_COUNTS].len);
    }
    for (size_t i = 0; news && i < self->npeers; i++)
        if (strcmp(self->peers[i].role, "gateway") == 0)
            s_routes(self, &self->peers[i]);
}

/*  [peer id][batch] from a gateway or the reaper. */
static void
s_on_front_frame(pd_zmsg_t *zm, void *arg)
{
    broker_t *self = arg;
    size_t ilen = pd_zmsg_size(zm, 0);
    const char *uid = zm->n == 2 ? pd_keys_peer(&zm->part[1]) : NULL;
    if (zm->n != 2 || ilen == 0 || ilen > 255 || !uid) {
        self->malformed++;
        return;
    }
    self->cur = s_peer(self, pd_zmsg_data(zm, 0), ilen, uid);
    self->peers[self->cur].last = pd_mono_ms();
    if (pd_msg_each(pd_zmsg_data(zm, 1), pd_zmsg_size(zm, 1), &self->zone, s_on_front, self) < 0)
        self->malformed++;
}

/*  [routing id][batch] from a store node: which node is the name of its key ("store-<n>").
 *  The node is reached through the connection it last spoke on, so a store node that
 *  restarts is found again by its first message, and nobody else can stand in for it. */
static void
s_on_back_frame(pd_zmsg_t *zm, void *arg)
{
    broker_t *self = arg;
    int node = zm->n == 2 ? pd_keys_node(pd_keys_peer(&zm->part[1]), "store", MAX_NODES) : 0;
    size_t ilen = pd_zmsg_size(zm, 0);
    if (node < 1 || ilen == 0 || ilen > sizeof self->nodes[node].rid) {
        self->malformed++;
        return;
    }
    node_t *nd = &self->nodes[node];
    if (nd->rlen != ilen || memcmp(nd->rid, pd_zmsg_data(zm, 0), ilen) != 0) {
        memcpy(nd->rid, pd_zmsg_data(zm, 0), ilen);
        nd->rlen = ilen;
    }
    self->cur = node;
    /* Without a zone: the store nodes' RAW fields (a page's items) are read in place when
     * they are used (s_kept_next), never unpacked on arrival. */
    if (pd_msg_each(pd_zmsg_data(zm, 1), pd_zmsg_size(zm, 1), NULL, s_on_back, self) < 0)
        self->malformed++;
    msgpack_zone_clear(&self->zone); /* what s_op_request decoded meanwhile */
}

/*  The bus proxy, in the loop (no thread). Every subscriber (each gateway, the reaper) pays a
 *  ZeroMQ hop and a wake-up per frame it receives, so the broker coalesces: event batches from
 *  all store nodes are concatenated (a batch is a sequence of messages, so two batches side by
 *  side are one batch) and forwarded at most once per BUS_WINDOW_US while events flow, one frame
 *  per run of one topic (pd_msg.h: XPUB sends DEADLINE frames to the reaper and gateways,
 *  EVENT frames to gateways only). After a quiet millisecond an event goes out at once, so
 *  light traffic sees no added delay. The broker looks at nothing but the topic byte:
 *  subscribers check what they receive. */
static int64_t s_bus_flush(broker_t *self, bool force);

static void
s_on_bus_frame(pd_zmsg_t *zm, void *arg)
{
    broker_t *self = arg;
    self->bus_in++;
    const char *d = pd_zmsg_data(zm, 0);
    size_t n = pd_zmsg_size(zm, 0);
    if (zm->n != 1 || n < 2)
        return;
    /* frames of one topic are joined (the topic byte once); another topic starts a frame of
     * its own, so every subscriber gets the events in the order the node made them */
    if (self->bus.len && self->bus.data[0] != d[0])
        s_bus_flush(self, true);
    if (self->bus.len)
        pd_buf_add(&self->bus, d + 1, n - 1);
    else
        pd_buf_add(&self->bus, d, n);
}

//  Forwards the coalesced events if the window has passed (or force). Returns microseconds
//  until it must be called again, or -1 if nothing waits.
static int64_t
s_bus_flush(broker_t *self, bool force)
{
    if (!self->bus.len)
        return -1;
    int64_t now = pd_mono_us();
    int64_t due = self->bus_last + BUS_WINDOW_US;
    if (!force && now < due && self->bus.len < BUS_MAX)
        return due - now;
    if (zmq_send(zsock_resolve(self->xpub), self->bus.data, self->bus.len, ZMQ_DONTWAIT) < 0)
        self->bus_dropped++;
    else
        self->bus_out++;
    self->sent = true;
    pd_zpoll_sent(&self->poll, zsock_resolve(self->xpub));
    self->bus_last = now;
    pd_buf_reset(&self->bus);
    return -1;
}

/*  Subscriptions and unsubscriptions from gateways and the reaper, passed on to the store
 *  nodes (through xsub, which counts them per topic), so that a node sends a topic only while
 *  someone subscribes to it: with no WebSocket client anywhere, the EVENT topic (pd_msg.h)
 *  stays in the store nodes. */
static void
s_on_sub_frame(pd_zmsg_t *zm, void *arg)
{
    broker_t *self = arg;
    size_t n = pd_zmsg_size(zm, 0);
    const uint8_t *d = pd_zmsg_data(zm, 0);
    if (zm->n != 1 || n < 1 || d[0] > 1)
        return;
    zmq_send(zsock_resolve(self->xsub), d, n, ZMQ_DONTWAIT);
    self->sent = true;
    pd_zpoll_sent(&self->poll, zsock_resolve(self->xsub));
}

/*  Sends every non-empty batch. A send to a vanished store fails at once (ROUTER_MANDATORY):
 *  the node is marked down and its ops fail in s_sweep. */
static void
s_flush(broker_t *self)
{
    s_send_shards(self, true);
    for (int n = 1; n <= MAX_NODES; n++) { /* a node that just left the set has its last batch */
        node_t *nd = &self->nodes[n];
        if (!nd->out.count)
            continue;
        self->sent = true;
        if (!nd->rlen || pd_zmq_send(zsock_resolve(self->back), nd->rid, nd->rlen,
                                     nd->out.sb.data, nd->out.sb.size) < 0) {
            if (nd->up)
                pd_log_warn("store node %d is unreachable", n);
            nd->up = false;
            self->unroutable++;
        }
        pd_msgw_reset(&nd->out);
        pd_zpoll_sent(&self->poll, zsock_resolve(self->back));
    }
    s_send_shards(self, false);
    for (size_t i = 0; i < self->npeers; i++) {
        peer_t *p = &self->peers[i];
        if (!p->out.count)
            continue;
        self->sent = true;
        pd_zmq_send(zsock_resolve(self->front), p->ident, p->ilen, p->out.sb.data,
                    p->out.sb.size);
        pd_msgw_reset(&p->out);
        pd_zpoll_sent(&self->poll, zsock_resolve(self->front));
    }
}

/*  Marks silent nodes down and fails the ops that wait on a down node or ran out of time. */
static void
s_sweep(broker_t *self)
{
    int64_t now = pd_mono_ms();
    for (int n = 1; n <= self->nstores; n++) {
        node_t *nd = &self->nodes[n];
        if (nd->up && now - nd->last > NODE_DEAD_MS) {
            pd_log_warn("store node %d stopped answering; its records answer 503", n);
            nd->up = false;
        }
    }
    for (size_t i = 0; i < self->nops; i++) {
        op_t *op = &self->ops[i];
        if (op->kind == OP_FREE)
            continue;
        if (op->kind == OP_MOVE) {
            bool lost = !self->nodes[op->node].up || now > op->deadline;
            for (int n = 1; n <= MAX_NODES; n++)
                lost |= ((op->waiting >> n) & 1) && !self->nodes[n].up;
            if (lost)
                s_move_finish(self, op, true);
            continue;
        }
        bool down = false;
        if (op->kind == OP_LIST || op->kind == OP_SYNC || op->kind == OP_ROOMS) {
            for (int n = 1; n <= self->nstores; n++)
                if (((op->waiting >> n) & 1) && !self->nodes[n].up)
                    down = true;
            if (op->state == ST_PROBE && !self->nodes[op->node].up)
                down = true;
        } else if (op->node && !self->nodes[op->node].up) {
            down = true;
        }
        if (down)
            s_op_fail(self, op, PD_ERR_UNAVAILABLE);
        else if (now > op->deadline)
            s_op_fail(self, op, PD_ERR_TIMEOUT);
    }
}

//  A socket of the broker's: never blocks, queues up to hwm messages each way, CURVE server for
//  the peers ZAP admits on domain, bound to ep.
static zsock_t *
s_bind(broker_t *self, int type, const char *ep, int hwm, const char *domain)
{
    zsock_t *sock = zsock_new(type);
    if (!sock || pd_zap_server(self->zap, zsock_resolve(sock), domain) < 0)
        pd_fatalx("cannot create a socket for %s", ep);
    zsock_set_sndhwm(sock, hwm);
    zsock_set_rcvhwm(sock, hwm);
    zsock_set_sndtimeo(sock, 0);
    zsock_set_rcvtimeo(sock, 0);
    if (zsock_bind(sock, "%s", ep) < 0)
        pd_fatalx("cannot bind %s", ep);
    return sock;
}

int
broker_main(pd_config_t *cfg)
{
    zsys_handler_set(NULL);
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (!cfg->broker_front[0] || !cfg->broker_back[0] || !cfg->bus_in[0] || !cfg->bus_out[0])
        pd_fatalx("broker needs --broker-front, --broker-back, --bus-in and --bus-out");
    static broker_t b;
    broker_t *self = &b;
    self->cfg = cfg;
    if (cfg->stores < 1 || cfg->stores > MAX_NODES)
        pd_fatalx("--stores must be 1..%d", MAX_NODES);
    s_set_load(self);
    size_t rate = cfg->move_rate ? cfg->move_rate : MOVE_RATE;
    self->move_batch = rate >= 20 * MOVE_BATCH ? MOVE_BATCH : rate >= 20 ? (int)(rate / 20) : 1;
    self->move_gap_ms = (int)((size_t)self->move_batch * 1000 / rate);
    self->nstores = self->nfrom > self->nto ? self->nfrom : self->nto;
    for (int n = 1; n <= MAX_NODES; n++)
        pd_msgw_init(&self->nodes[n].out);
    pd_msgw_init(&self->shards);
    char err[512];
    if (!(self->keys = pd_keys_load(cfg->keys_dir, "broker", err, sizeof err)))
        pd_fatalx("%s", err);
    if (!(self->zap = pd_zap_new(self->keys)))
        pd_fatalx("cannot start the ZAP handler");
    msgpack_zone_init(&self->zone, 8192);
    self->claims = pd_claims_new(cfg->claim_cache ? cfg->claim_cache : PD_CLAIMS_DEFAULT_MAX);
    self->lcache = pd_listcache_new(cfg->list_cache);

    self->front = s_bind(self, ZMQ_ROUTER, cfg->broker_front, 100000, "broker-front");
    self->back = s_bind(self, ZMQ_ROUTER, cfg->broker_back, 100000, "broker-back");
    zsock_set_router_mandatory(self->back, 1);
    /* The bus. HWM of a million so that a burst of a million deletes is queued, not dropped
     * (a drop shows up as a gap and a resync). Subscriptions travel up: xpub passes every
     * subscribe and unsubscribe (VERBOSER), and s_on_sub_frame hands each to xsub, which sends
     * them on to the store nodes, whose PUB sockets then send only the topics someone wants.
     * xsub also subscribes to a topic nobody publishes, so that a store node knows when the
     * broker is there (it holds its events until then). */
    self->xsub = s_bind(self, ZMQ_XSUB, cfg->bus_in, 1000000, "bus-in");
    self->xpub = s_bind(self, ZMQ_XPUB, cfg->bus_out, 1000000, "bus-out");
    zsock_set_xpub_verboser(self->xpub, 1);
    zmq_send(zsock_resolve(self->xsub), "\x01" PD_BUS_BROKER_TOPIC, 2, 0);

    if (pd_zpoll_init(&self->poll) < 0 || pd_zpoll_add(&self->poll, zsock_resolve(self->front)) ||
        pd_zpoll_add(&self->poll, zsock_resolve(self->back)) ||
        pd_zpoll_add(&self->poll, zsock_resolve(self->xsub)) ||
        pd_zpoll_add(&self->poll, zsock_resolve(self->xpub)))
        pd_fatal("epoll");
    pd_log_info("broker up: front %s, back %s, bus %s -> %s, %d store nodes", cfg->broker_front,
                cfg->broker_back, cfg->bus_in, cfg->bus_out, self->nstores);

    /* Each turn: drain every socket that may hold something (up to a budget), handle what
     * came, send this turn's batches; sweep timeouts every 50 ms. Sleep only after a turn that
     * received and sent nothing: a send may consume a socket's wake-up signal, so the turn
     * after one reads that socket again before the loop sleeps (pd_zmq.h). */
    int64_t last_sweep = 0;
    while (!s_stop) {
        pd_probe_beat(cfg); /* liveness: `presenced probe --role broker` */
        self->sent = false;
        int got = pd_zpoll_drain(&self->poll, zsock_resolve(self->front), TURN_BUDGET,
                                 s_on_front_frame, self, &self->oversized);
        got += pd_zpoll_drain(&self->poll, zsock_resolve(self->back), TURN_BUDGET,
                              s_on_back_frame, self, &self->oversized);
        /* While a bus window is open, the store nodes' frames wait in the socket: they are
         * read once, when it closes, so a busy bus wakes this loop once a millisecond, not once
         * per store batch. */
        if (!self->bus.len || pd_mono_us() >= self->bus_last + BUS_WINDOW_US)
            got += pd_zpoll_drain(&self->poll, zsock_resolve(self->xsub), TURN_BUDGET,
                                  s_on_bus_frame, self, NULL);
        got += pd_zpoll_drain(&self->poll, zsock_resolve(self->xpub), TURN_BUDGET,
                              s_on_sub_frame, self, NULL);
        s_move_tick(self); /* resharding: the next move batch, parked lists */
        s_flush(self);
        int64_t bus_wait = s_bus_flush(self, false);
        int64_t now = pd_mono_ms();
        if (now - last_sweep >= 50) {
            s_sweep(self);
            s_flush(self);
            last_sweep = now;
        }
        if (got || self->sent)
            continue;
        int64_t wait = (last_sweep + 50 - now) * 1000;
        if (bus_wait >= 0 && bus_wait < wait)
            wait = bus_wait;
        pd_zpoll_wait(&self->poll, wait > 0 ? wait : 0);
    }
    s_bus_flush(self, true);
    pd_log_info("broker stopping");
    pd_zpoll_close(&self->poll);
    pd_buf_free(&self->bus);
    zsock_destroy(&self->xsub);
    zsock_destroy(&self->xpub);
    zsock_destroy(&self->front);
    zsock_destroy(&self->back);
    pd_zap_destroy(&self->zap);
    pd_keys_destroy(&self->keys);
    pd_claims_destroy(&self->claims);
    pd_listcache_destroy(&self->lcache);
    for (int n = 1; n <= MAX_NODES; n++) {
        pd_msgw_destroy(&self->nodes[n].out);
        pd_buf_free(&self->nodes[n].counts);
    }
    pd_msgw_destroy(&self->shards);
    pd_buf_free(&self->parked);
    for (size_t i = 0; i < self->npeers; i++) {
        pd_msgw_destroy(&self->peers[i].out);
        pd_buf_free(&self->peers[i].metrics);
    }
    for (size_t i = 0; i < self->nops; i++) {
        pd_query_destroy(&self->ops[i].query);
        pd_buf_free(&self->ops[i].req);
        pd_buf_free(&self->ops[i].items);
        pd_buf_free(&self->ops[i].cursor);
        pd_buf_free(&self->ops[i].sent);
        pd_buf_free(&self->ops[i].fent);
        pd_buf_free(&self->ops[i].fetched);
    }
    free(self->ops);
    free(self->free_ops);
    msgpack_zone_destroy(&self->zone);
    return 0;
}
