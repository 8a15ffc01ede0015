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
 *  Store nodes are a fixed set 1..N (--stores): ownership never moves when a node is down, so
 *  its records are answered 503 at once until it comes back. */
#include "broker.h"

#include <czmq.h>
#include <signal.h>

#include "pd_claims.h"
#include "pd_listcache.h"
#include "pd_err.h"
#include "pd_keys.h"
#include "pd_log.h"
#include "pd_probe.h"
#include "pd_msg.h"
#include "pd_query.h"
#include "pd_zmq.h"

#define MAX_NODES 64
#define MAX_PEERS 256
#define OP_TIMEOUT_MS 4500
#define NODE_DEAD_MS 1000
#define LIST_TOTAL_CAP 5000
#define TURN_BUDGET 1000   //  frames per socket per loop turn
#define BUS_WINDOW_US 1000 //  at most one bus frame per this, while events flow
#define BUS_MAX (1 << 20)  //  bytes: forward at once past this

enum { OP_FREE, OP_SIMPLE, OP_UPSERT, OP_UPDATE, OP_LIST, OP_SYNC };
enum { ST_CLAIM, ST_WRITE, ST_RECLAIM, ST_PROBE, ST_GATHER };

typedef struct {
    bool seen;          //  registered at least once
    bool up;            //  heard from within NODE_DEAD_MS
    int64_t last;       //  mono ms of the last HELLO
    int64_t gen;        //  boot generation
    int64_t records;    //  records held (from HELLO)
    int64_t claims;     //  user claims held
    pd_buf_t counts;    //  records per project (packed project, count), from HELLO
    uint8_t rid[256];   //  routing id of its connection (the last one its key spoke on)
    size_t rlen;        //  0 = never connected
    char endpoint[256]; //  its front for gateways' direct requests ("" = none), from HELLO
    pd_msgw_t out;      //  batch to send this turn
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
    uint64_t lc_gen;    //  LIST with ?ttl=: the list cache's generation at its start (0: none)
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
    int nstores;
    node_t nodes[MAX_NODES + 1];
    peer_t peers[MAX_PEERS];
    size_t npeers;
    op_t *ops;
    size_t nops, cap_ops;
    uint32_t *free_ops;
    size_t nfree;
    msgpack_zone zone;
    int cur;            //  sender of the frame being handled (peer index or node id)
    pd_claims_t *claims; // (project, user) -> presence id: cache of the store nodes' claims
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
    op->claimed[0] = 0;
    op->total = 0;
    pd_buf_reset(&op->req);
    pd_buf_reset(&op->items);
    pd_buf_reset(&op->cursor);
    return op;
}

static void
s_op_free(broker_t *self, op_t *op)
{
    pd_query_destroy(&op->query);
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

static int
s_owner(broker_t *self, pd_str_t project, pd_str_t key)
{
    return pd_shard_owner(project, key, self->nstores);
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
    pd_msgw_begin(w, PD_MSG_CLAIM, s_op_id(self, op));
    pd_msgw_s(w, PD_F_PROJECT, req->s[PD_F_PROJECT]);
    pd_msgw_s(w, PD_F_USER, user);
    pd_msgw_s(w, PD_F_ID, req->s[PD_F_ID]);
    pd_msgw_end(w);
    op->state = ST_CLAIM;
    op->node = u;
}

static void
s_send_unclaim(broker_t *self, pd_str_t project, pd_str_t user, pd_str_t id)
{
    if (!user.len)
        return;
    pd_claims_drop(self->claims, project, user);
    int u = s_owner(self, project, user);
    if (!s_node_ok(self, u))
        return; /* a stale claim is repaired by the next upsert (RECLAIM) */
    pd_msgw_t *w = &self->nodes[u].out;
    pd_msgw_begin(w, PD_MSG_UNCLAIM, 0);
    pd_msgw_s(w, PD_F_PROJECT, project);
    pd_msgw_s(w, PD_F_USER, user);
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_end(w);
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
    pd_msgw_copy(w, &req, s_op_id(self, op), (1ULL << PD_F_ID) | (1ULL << PD_F_FLAGS));
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_int(w, PD_F_FLAGS, req.i[PD_F_FLAGS] | (stale_possible ? PD_FL_CLAIMED : 0));
    pd_msgw_end(w);
    pd_listcache_on_write(self->lcache, &req);
    op->state = ST_WRITE;
    op->node = p;
}

/*  A request from a gateway or the reaper. */
static void
s_on_request(broker_t *self, int peer, const pd_msg_t *m)
{
    pd_str_t project = m->s[PD_F_PROJECT];
    pd_listcache_on_write(self->lcache, m);
    switch (m->type) {
    case PD_MSG_GET:
    case PD_MSG_DELETE:
    case PD_MSG_EXPIRE:
    case PD_MSG_RELEASE:
    case PD_MSG_UPDATE: {
        int n = s_owner(self, project, m->s[PD_F_ID]);
        if (!s_node_ok(self, n)) {
            s_reply_err(self, peer, m->rid, PD_ERR_UNAVAILABLE, NULL);
            return;
        }
        bool reassign = m->type == PD_MSG_UPDATE && (m->i[PD_F_FLAGS] & PD_FL_HAS_USER);
        op_t *op = s_op_new(self, reassign ? OP_UPDATE : OP_SIMPLE, peer, m->rid);
        if (reassign) {
            pd_buf_add(&op->req, m->raw, m->raw_len);
            s_send_claim(self, op, m, m->s[PD_F_USER]);
            return;
        }
        op->node = n;
        op->state = ST_WRITE;
        pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
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
                pd_msgw_forward(&self->nodes[p].out, m, s_op_id(self, op));
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
            pd_query_parse_packed(m->s[PD_F_QUERIES], PD_QMODE_LIST, &code, err, sizeof err);
        if (!query) {
            s_reply_err(self, peer, m->rid, code, err);
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
        op->lc_gen = pd_listcache_gen(self->lcache, m);
        pd_buf_add(&op->req, m->raw, m->raw_len);
        bool before;
        pd_str_t cursor = pd_query_cursor(query, &before);
        if (cursor.len) {
            int n = s_owner(self, project, cursor);
            pd_msgw_t *w = &self->nodes[n].out;
            pd_msgw_copy(w, m, s_op_id(self, op), 1ULL << PD_F_FLAGS);
            pd_msgw_int(w, PD_F_FLAGS, m->i[PD_F_FLAGS] | PD_FL_CURSOR_PROBE);
            pd_msgw_end(w);
            op->state = ST_PROBE;
            op->node = n;
            return;
        }
        op->state = ST_GATHER;
        for (int n = 1; n <= self->nstores; n++) {
            pd_msgw_forward(&self->nodes[n].out, m, s_op_id(self, op));
            op->waiting |= 1ULL << n;
        }
        return;
    }
    case PD_MSG_SYNC: {
        op_t *op = s_op_new(self, OP_SYNC, peer, m->rid);
        op->deadline = pd_mono_ms() + 60000;
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

/*  Merges the pages of every node: each node sent its own first offset+limit matches in
 *  order, so the global page is the offset..offset+limit slice of their union. Items are
 *  [json, key]; keys are compared with the query's order (pd_query_key_cmp). */
typedef struct {
    const pd_query_t *q;
    pd_qkey_t key;
    pd_str_t json;
} item_t;

static const pd_query_t *s_sort_query;

static int
s_item_cmp(const void *a, const void *b)
{
    return pd_query_key_cmp(s_sort_query, &((const item_t *)a)->key, &((const item_t *)b)->key);
}

static void
s_list_finish(broker_t *self, op_t *op)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    size_t cap = 64, n = 0, off = 0;
    item_t *items = malloc(cap * sizeof *items);
    msgpack_object obj;
    while (off < op->items.len &&
           msgpack_unpack(op->items.data, op->items.len, &off, &zone, &obj) >= 1) {
        if (obj.type != MSGPACK_OBJECT_ARRAY || obj.via.array.size != 2 ||
            obj.via.array.ptr[0].type != MSGPACK_OBJECT_STR)
            continue;
        if (n == cap)
            items = realloc(items, (cap *= 2) * sizeof *items);
        item_t *it = &items[n];
        it->json = (pd_str_t){obj.via.array.ptr[0].via.str.ptr, obj.via.array.ptr[0].via.str.size};
        if (pd_query_key_unpack(&obj.via.array.ptr[1], &it->key) < 0)
            continue;
        n++;
    }
    s_sort_query = op->query;
    qsort(items, n, sizeof *items, s_item_cmp);
    bool before = false;
    pd_query_cursor(op->query, &before);
    size_t offset = (size_t)pd_query_offset(op->query), limit = (size_t)pd_query_limit(op->query);
    size_t from, to;
    if (before) { /* cursorBefore: nodes returned the nearest items in reverse order */
        to = n > offset ? n - offset : 0;
        from = to > limit ? to - limit : 0;
    } else {
        from = offset < n ? offset : n;
        to = from + limit < n ? from + limit : n;
    }
    pd_buf_t b;
    pd_buf_init(&b);
    int64_t total = op->total > LIST_TOTAL_CAP ? LIST_TOTAL_CAP : op->total;
    pd_buf_addf(&b, "{\"total\":%lld,\"presences\":[", (long long)total);
    for (size_t i = from; i < to; i++) {
        if (i > from)
            pd_buf_add(&b, ",", 1);
        pd_buf_add(&b, items[i].json.ptr, items[i].json.len);
    }
    pd_buf_adds(&b, "]}");
    pd_msg_t req;
    if (op->lc_gen && s_op_request(self, op, &req) == 0)
        pd_listcache_put(self->lcache, &req, op->lc_gen, b.data, b.len);
    pd_msgw_t *w = &self->peers[op->peer].out;
    pd_msgw_begin(w, PD_MSG_REPLY, op->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_str(w, PD_F_BODY, b.data, b.len);
    pd_msgw_end(w);
    pd_buf_free(&b);
    free(items);
    msgpack_zone_destroy(&zone);
    s_op_free(self, op);
}

static void
s_list_page(broker_t *self, op_t *op, int node, const pd_msg_t *m)
{
    if (m->i[PD_F_ERR] != PD_ERR_OK) {
        s_reply_errs(self, op->peer, op->rid, (int)m->i[PD_F_ERR], m->s[PD_F_MESSAGE]);
        s_op_free(self, op);
        return;
    }
    const msgpack_object *items = m->o[PD_F_ITEMS];
    if (op->state == ST_PROBE) {
        if (!items || items->type != MSGPACK_OBJECT_ARRAY || items->via.array.size != 1) {
            s_op_fail(self, op, PD_ERR_SERVER_ERROR);
            return;
        }
        /* Phase 2: ask every node for the page after (or before) the cursor's key. */
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, items->via.array.ptr[0]);
        pd_msg_t req;
        if (s_op_request(self, op, &req) < 0) {
            msgpack_sbuffer_destroy(&sb);
            s_op_fail(self, op, PD_ERR_SERVER_ERROR);
            return;
        }
        for (int n = 1; n <= self->nstores; n++) {
            if (!s_node_ok(self, n)) {
                msgpack_sbuffer_destroy(&sb);
                s_op_fail(self, op, PD_ERR_UNAVAILABLE);
                return;
            }
        }
        for (int n = 1; n <= self->nstores; n++) {
            pd_msgw_t *w = &self->nodes[n].out;
            pd_msgw_copy(w, &req, s_op_id(self, op), 0);
            pd_msgw_raw(w, PD_F_CURSOR_KEYS);
            msgpack_sbuffer_write(&w->sb, sb.data, sb.size);
            pd_msgw_end(w);
            op->waiting |= 1ULL << n;
        }
        msgpack_sbuffer_destroy(&sb);
        op->state = ST_GATHER;
        return;
    }
    if (!((op->waiting >> node) & 1))
        return;
    op->waiting &= ~(1ULL << node);
    op->total += m->i[PD_F_TOTAL];
    if (items && items->type == MSGPACK_OBJECT_ARRAY) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        for (uint32_t i = 0; i < items->via.array.size; i++)
            msgpack_pack_object(&pk, items->via.array.ptr[i]);
        pd_buf_add(&op->items, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    if (!op->waiting)
        s_list_finish(self, op);
}

/* -------------------------------------------------------------------------- store replies */

static void
s_on_store_reply(broker_t *self, int node, const pd_msg_t *m)
{
    op_t *op = s_op_find(self, m->rid);
    if (!op)
        return; /* late reply to a timed-out op, or an UNCLAIM */
    int err = (int)m->i[PD_F_ERR];
    switch (op->kind) {
    case OP_SIMPLE: {
        pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
        pd_listcache_on_reply(self->lcache, m);
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
                if (s_op_request(self, op, &req) < 0 || !pd_str_eq(claimed, req.s[PD_F_ID])) {
                    /* The new owner already has another presence. */
                    s_op_fail(self, op, PD_ERR_PRESENCE_EXISTS);
                    return;
                }
                op->claimed[0] = 0; /* route by the path id */
            }
            s_send_write(self, op);
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
                pd_msgw_begin(w, PD_MSG_RECLAIM, s_op_id(self, op));
                pd_msgw_s(w, PD_F_PROJECT, req.s[PD_F_PROJECT]);
                pd_msgw_s(w, PD_F_USER, req.s[PD_F_USER]);
                pd_msgw_s(w, PD_F_EXPECT, pd_str(op->claimed));
                pd_msgw_s(w, PD_F_ID, req.s[PD_F_ID]);
                pd_msgw_end(w);
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
            pd_msgw_forward(&self->peers[op->peer].out, m, op->rid);
            s_op_free(self, op);
            return;
        }
    case OP_LIST:
        s_list_page(self, op, node, m);
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
             strcmp(uid, "reaper") == 0 ? "reaper" : "gateway");
    return (int)i;
}

/*  One message from a gateway or the reaper (self->cur is the sender). */
static void
s_on_front(const pd_msg_t *m, void *arg)
{
    broker_t *self = arg;
    peer_t *p = &self->peers[self->cur];
    if (m->type != PD_MSG_HELLO) {
        s_on_request(self, self->cur, m);
        return;
    }
    if (strcmp(p->role, "gateway") == 0) {
        /* The route table: where each node's front is, and whether it is up. Gateways send
         * the requests that need no claim or list straight there (gateway.c); the broker stays
         * the authority on membership, so a node it marks down is down for them too. */
        for (int n = 1; n <= self->nstores; n++) {
            node_t *nd = &self->nodes[n];
            pd_msgw_begin(&p->out, PD_MSG_ROUTE, 0);
            pd_msgw_int(&p->out, PD_F_NODE, n);
            pd_msgw_int(&p->out, PD_F_TOTAL, self->nstores);
            pd_msgw_int(&p->out, PD_F_FLAGS, nd->up ? 1 : 0);
            pd_msgw_int(&p->out, PD_F_GEN, nd->gen);
            pd_msgw_str(&p->out, PD_F_ENDPOINT, nd->endpoint, strlen(nd->endpoint));
            pd_msgw_end(&p->out);
        }
    }
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
    if (!nd->up || nd->gen != m->i[PD_F_GEN])
        pd_log_info("store node %d is up (generation %lld, %lld records)", node,
                    (long long)m->i[PD_F_GEN], (long long)m->i[PD_F_TOTAL]);
    if (nd->up && nd->gen && nd->gen != m->i[PD_F_GEN]) {
        /* It restarted faster than it could be missed: what the old process had in hand is
         * lost, so fail those ops now (503) rather than when they time out. */
        nd->up = false;
        s_sweep(self);
    }
    nd->seen = nd->up = true;
    nd->last = pd_mono_ms();
    nd->gen = m->i[PD_F_GEN];
    nd->records = m->i[PD_F_TOTAL];
    nd->claims = m->i[PD_F_CLAIMS];
    pd_str_t ep = m->s[PD_F_ENDPOINT];
    if (ep.len < sizeof nd->endpoint) {
        memcpy(nd->endpoint, ep.ptr ? ep.ptr : "", ep.len);
        nd->endpoint[ep.len] = 0;
    }
    pd_buf_reset(&nd->counts);
    pd_buf_add(&nd->counts, m->s[PD_F_COUNTS].ptr, m->s[PD_F_COUNTS].len);
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
    int node = zm->n == 2 ? pd_keys_node(pd_keys_peer(&zm->part[1]), "store", self->nstores) : 0;
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
    if (pd_msg_each(pd_zmsg_data(zm, 1), pd_zmsg_size(zm, 1), &self->zone, s_on_back, self) < 0)
        self->malformed++;
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
    for (int n = 1; n <= self->nstores; n++) {
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
        bool down = false;
        if (op->kind == OP_LIST || op->kind == OP_SYNC) {
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
    self->nstores = cfg->stores;
    for (int n = 1; n <= self->nstores; n++)
        pd_msgw_init(&self->nodes[n].out);
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
    for (int n = 1; n <= self->nstores; n++) {
        pd_msgw_destroy(&self->nodes[n].out);
        pd_buf_free(&self->nodes[n].counts);
    }
    for (size_t i = 0; i < self->npeers; i++) {
        pd_msgw_destroy(&self->peers[i].out);
        pd_buf_free(&self->peers[i].metrics);
    }
    for (size_t i = 0; i < self->nops; i++) {
        pd_query_destroy(&self->ops[i].query);
        pd_buf_free(&self->ops[i].req);
        pd_buf_free(&self->ops[i].items);
        pd_buf_free(&self->ops[i].cursor);
    }
    free(self->ops);
    free(self->free_ops);
    msgpack_zone_destroy(&self->zone);
    return 0;
}
