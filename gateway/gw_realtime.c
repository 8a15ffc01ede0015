/*  gw_realtime — the Realtime WebSocket endpoint (appwrite-protocol.md §6, its own h2o path
 *  /v1/realtime) and the fan-out of bus events to the subscribers of this gateway. Its state is
 *  the gateway's (gw->rt, an rt_t). It builds on gw_ws (RFC 6455 framing, no I/O), gw_http
 *  (query string), pd_cqueue (each connection's conflating output queue) and pd_map (the
 *  subscription index and the holds, under a random SipHash key).
 *
 *  WebSocket. h2o 2.2.5's own WebSocket layer (h2o_upgrade_to_websocket) runs wslay, which
 *  costs ~4.7 KB per connection (wslay's frame context holds a 4 KB input buffer) and writes a
 *  frame as two writes (header, then payload) one loop turn apart, one frame per turn. The
 *  gateway instead does the upgrade itself (h2o_http1_upgrade, writing the 101 and the first
 *  frames in one write) and speaks RFC 6455 directly on the socket: client frames are parsed
 *  and unmasked in h2o's input buffer (which is released whenever it is empty, so an idle
 *  connection holds no buffer at all), and server frames are appended to one output buffer
 *  per connection that is written with a single write at the end of the loop turn.
 *
 *  Opening (§6.1). Project from ?project= (or X-Appwrite-Project), JWT from X-Appwrite-JWT
 *  (or ?jwt=). Errors during open are sent as {"type":"error",...} in the same write as the
 *  101, followed by a close frame: unknown project, bad origin → code 1008, close 1008; bad
 *  JWT → code 401, close 1008. 401 is not a valid WebSocket close code (RFC 6455 §7.4), so the
 *  close carries 1008 (policy violation), which also stops the SDK from reconnecting with a
 *  token that cannot become valid. Then `connected`, with an Account-like user object when a
 *  JWT was given.
 *
 *  Fan-out. Every gateway receives every EVENT of the bus. Each event is decoded once; for
 *  each kind of frame a subscriber may get from it (the event itself; a `delete` for one who
 *  lost read access; an `upsert` for one who gained it) the JSON is encoded once, as a prefix
 *  (type, events, channels, timestamp, payload) and a suffix, and each connection's frame is
 *  prefix + its matching subscription ids + suffix. Subscriptions are found through an index
 *  keyed by (project, channel, role): a subscription registers under each of its presence
 *  channels times each role of its connection, and an event looks up only its own channels
 *  (presences, presences.<ID>, presences.<action>, presences.<ID>.<action>) times the record's
 *  read roles (before and after the change). The cost of an event is the number of
 *  (subscription, channel, role) registrations that can match it, not the number of
 *  connections. Frames for a connection are coalesced into its output queue and written once
 *  per loop turn; while a write is in flight, a record's newer frame replaces its queued one
 *  (s_out_record); the queue is bounded (--ws-max-queue, and --ws-stall-timeout without write
 *  progress) and freed when empty.
 *
 *  Connection-bound presence (`presence` message). The gateway sends the store an UPSERT
 *  with source "realtime", a lease (expiresAt = now + 30 s), FLAGS PD_FL_HOLD and CONN = this
 *  gateway's identity; the store keeps the set of holder gateways in the record. Per (project,
 *  presence id) the gateway counts its sockets holding it, renews the lease every 10 s while
 *  held (one UPDATE per record, all in the loop turn's batch), and when the last socket goes
 *  away waits a grace period of 5 s (an SDK reconnects after 1 s and re-sends its presence,
 *  so a reconnect does not flap the user offline) before sending RELEASE; the store deletes
 *  the record, with a delete event, when no gateway holds it. A gateway that dies stops
 *  renewing: the record expires within the lease, and the reaper deletes it with an event.
 *  Lease renewals change only expiresAt: they are not sent to subscribers (the store still
 *  publishes them, for the reaper). A gateway that stops (SIGTERM) does not release: its
 *  clients reconnect to another gateway, which takes over the hold, and the lease covers the
 *  rest.
 *
 *  Limits per connection: 100 subscriptions, 100 channels and 100 queries per subscription,
 *  1000 presence channels in all, messages of at most 64,000 bytes (error 1009, then close
 *  1009), 10 messages per second on average with bursts of 100 (error 1013, message dropped),
 *  an idle timeout (PRESENCED_WS_IDLE_TIMEOUT seconds, default 90: the SDK pings every 20 s),
 *  and the output bound above. A JWT that expires while connected drops the connection to a
 *  guest: it is told (error 401), its subscriptions are re-evaluated with the guest roles, and
 *  its connection-bound presences are released. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include <sodium.h>

#include "gw.h"
#include "gw_http.h"
#include "gw_ws.h"

#include "pd_err.h"
#include "pd_cqueue.h"
#include "pd_log.h"
#include "pd_map.h"
#include "pd_query.h"
#include "pd_record.h"
#include "pd_rtmsg.h"
#include <h2o/http1.h>
#include <h2o/websocket.h> /* h2o_is_websocket_handshake only */

#define RT_LEASE_MS 30000          //  expiresAt of a connection-bound presence, ahead of now
#define RT_RENEW_MS 10000          //  lease renewal period
#define RT_GRACE_MS 5000           //  last socket gone -> RELEASE after this
#define RT_MAX_SUBS 100            //  subscriptions per connection
#define RT_MAX_CONN_CHANNELS 1000  //  presence channels per connection, all subscriptions
#define RT_MAX_SUB_BYTES 65536     //  bytes of ids, channels and queries per connection
#define RT_MAX_HOLDS 16            //  presences one socket may hold
/*  Slow consumers are judged by time, not by a burst: a connection is dropped when a write to
 *  it has made no progress for RT_STALL_DEFAULT_S (--ws-stall-timeout: the client stopped
 *  reading), or when its pending output passes RT_QUEUE_DEFAULT (--ws-max-queue), a memory
 *  bound large enough for the bursts of a large room (a mass leave of 5,000 is about 3 MB of
 *  delete events per watcher) and small enough that a stalled client costs a bounded amount
 *  until the time rule drops it. */
#define RT_QUEUE_DEFAULT (16 << 20) //  output bytes a connection may have pending
#define RT_STALL_DEFAULT_S 10       //  seconds a write may make no progress
#define RT_IDLE_DEFAULT_S 90       //  no frame from the client for this long: close
#define RT_CLOSE_WAIT_MS 3000      //  after our close frame, wait this long for the peer
#define RT_SWEEP_MS 1000           //  idle / expiry sweep period
#define RT_RATE_BURST 100          //  messages in a burst
#define RT_RATE_PER_S 10           //  sustained messages per second

enum { RT_UPGRADING = 0, RT_OPEN, RT_CLOSING, RT_DEAD };
enum { K_NONE = 0, K_MAIN = 1, K_LOST = 2, K_GAINED = 3, K__COUNT };

static const char s_guest_roles[] = "any\0guests\0";
static const char s_select_all[] = "{\"method\":\"select\",\"values\":[\"*\"]}";

typedef struct rt_conn rt_conn_t;
typedef struct rt rt_t;
typedef struct rt_sub rt_sub_t;

/*  A project some connection used. Never freed (projects are few). */
typedef struct rt_proj {
    struct rt_proj *next;
    const pd_project_t *p; //  NULL once a reload dropped the project
    uint32_t nconns;       //  open connections of this gateway
    char id[37];
} rt_proj_t;

/*  Index: the subscriptions registered under one (project, channel, role). */
typedef struct {
    pd_mapent_t h;
    struct rt_node *head; //  registrations
    uint32_t n;
    uint32_t klen;
    char key[]; //  project NUL channel NUL role
} rt_bucket_t;

typedef struct rt_node {
    struct rt_node *prev, *next;
    rt_bucket_t *bucket;
    rt_sub_t *sub;
} rt_node_t;

struct rt_sub {
    rt_sub_t *next; //  the connection's subscriptions
    rt_conn_t *conn;
    pd_query_t *query; //  NULL: every record
    rt_node_t *nodes;  //  index registrations: nchan x roles of the connection
    uint32_t nnodes;
    uint32_t stamp;    //  the event that last evaluated this subscription
    uint16_t nchan;    //  presence channels (the indexed ones)
    uint16_t chan_len; //  bytes of the packed channel list
    uint32_t bytes;    //  counted against RT_MAX_SUB_BYTES (s_row_bytes)
    uint8_t idlen;
    char data[]; //  id NUL, then the packed presence channels
};

/*  A connection-bound presence this gateway holds for some of its sockets. */
typedef struct {
    pd_mapent_t h;
    rt_proj_t *proj;
    int64_t renew_at;   //  mono ms of the next lease renewal
    int64_t release_at; //  mono ms: RELEASE then (refs == 0), else 0
    int64_t created_ms; //  incarnation of the record ($createdAt) ...
    uint64_t version;   //  ... and its version, to ignore events older than our write
    uint32_t refs;      //  sockets holding it
    bool dead;          //  deleted or no longer bound to us: no renewal, no release
    char id[37];
} rt_hold_t;

struct rt_conn {
    rt_t *rt;
    h2o_socket_t *sock;     //  NULL while upgrading and once dead
    rt_conn_t *prev, *next; //  every open or closing connection
    rt_conn_t *flush_next;  //  connections with output to write at the end of the turn
    rt_conn_t *dead_next;   //  dead connections, freed at the end of the turn
    rt_proj_t *proj;
    char *roles; //  packed role list (s_guest_roles for guests: not owned)
    rt_sub_t *subs;
    rt_hold_t **holds;
    pd_cqueue_t q;       //  frames waiting for the next write (conflated per record)
    char *wbuf;          //  the write in flight
    char *frag;          //  a fragmented message being received
    char *hello;         //  upgrading: the frames sent with the 101 (freed after)
    int64_t exp_ms;      //  token expiry (wall ms), 0 for guests
    int64_t last_rx_ms;  //  mono ms of the last bytes received
    int64_t close_at_ms; //  closing: give up waiting for the peer then
    int64_t write_ms;    //  mono ms the write in flight was issued (0: none)
    int64_t rate_ms;     //  rate limiter: last refill
    uint32_t roles_len, wlen, frag_len, stamp;
    int32_t rate_tokens; //  thousandths of a message
    int32_t ev_head;     //  event scratch: first matched (sub) pair
    uint16_t nsubs, nchan;
    uint32_t sub_bytes; //  of all its subscriptions (RT_MAX_SUB_BYTES)
    uint8_t nholds, state, kind, frag_op;
    bool in_flush, shut, peer_closed, counted;
    bool bus_wait;       //  messages held unread until the bus is live (gw_bus_join)
    char user[37]; //  "" for guests
};

/*  A presence upsert waiting for the store. gw_pending_new allocates the pending entry in an
 *  h2o request's pool; a realtime message has no request, so the op carries a request-shaped
 *  holder that only provides that pool (cleared when the op ends). */
typedef struct rt_op {
    h2o_req_t req;
    rt_t *rt;
    struct rt_op *prev, *next;
    rt_conn_t *conn; //  NULL once the connection is gone
    rt_proj_t *proj;
    int64_t deadline_ms; //  mono
    gw_pending_t *p;
} rt_op_t;

typedef struct {
    rt_sub_t *sub;
    int32_t next;
} rt_pair_t;

typedef struct {
    int64_t gen;
    int64_t seq;
    bool seen;
} rt_seq_t;

typedef struct {
    char s[80];
    uint32_t len;
    uint32_t mask; //  bit per kind (1 << K_*) this channel belongs to
} rt_chan_t;

/*  The realtime state of one gateway (gw->rt). */
struct rt {
    gw_t *gw;
    rt_conn_t *conns; //  list of open and closing connections
    size_t nconns, nsubs;
    rt_conn_t *flush_head;
    rt_conn_t *dead;
    h2o_timeout_entry_t flush_entry;
    bool flush_linked;
    bool shutting_down;
    rt_proj_t *projs;
    pd_map_t buckets;
    pd_map_t holds;
    rt_op_t *ops;
    size_t max_queue;
    int64_t stall_ms;          //  a write without progress this long drops its connection
    int64_t idle_ms;
    int64_t next_sweep_ms;
    pd_buf_t key; //  scratch: index keys
    unsigned char rec_key[PD_HASH_KEYBYTES]; //  keys records in the connections' queues
    pd_buf_t tmp; //  scratch: one frame's JSON
    /* event scratch */
    uint32_t stamp;
    rt_pair_t *pairs;
    size_t npairs, cap_pairs;
    rt_conn_t **mconns;
    size_t nm, cap_m;
    pd_buf_t pre[K__COUNT];
    bool pre_ok[K__COUNT];
    /* store node sequences */
    rt_seq_t seqs[65];
    uint64_t bus_frames; //  bus frames received
    bool skipping;       //  quiet: bus frames are dropped unread (gw_rt_quiet)
    uint64_t replayed;   //  events dropped as already seen
    /* metrics */
    uint64_t conflated, frame_bytes;
    uint64_t events, suppressed, frames, messages, errors, slow, idle, renewals, releases, gaps,
        missed, opened, rejected;
};

static void s_conn_kill(rt_conn_t *c, const char *why);
static void s_conn_write(rt_conn_t *c);

/* -------------------------------------------------------------------------- small helpers */

static int64_t
s_mono(void)
{
    return pd_mono_ms();
}

static void *
s_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        abort();
    return p;
}

static void *
s_xrealloc(void *p, size_t sz)
{
    p = realloc(p, sz ? sz : 1);
    if (!p)
        abort();
    return p;
}

static size_t
s_list_count(pd_str_t l)
{
    size_t n = 0;
    for (pd_str_t it = pd_list_first(l); it.ptr; it = pd_list_next(l, it))
        n++;
    return n;
}

/*  ID.unique() as the SDKs make it: 8 hex digits of seconds, 5 of microseconds, 7 random. */
static void
s_unique_id(char out[21])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(out, 21, "%08llx%05lx%07x", (unsigned long long)ts.tv_sec & 0xffffffffULL,
             (long)(ts.tv_nsec / 1000), (unsigned)randombytes_uniform(0x10000000));
}

/* -------------------------------------------------------------------------- projects */

static rt_proj_t *
s_proj_find(rt_t *rt, pd_str_t id)
{
    for (rt_proj_t *p = rt->projs; p; p = p->next)
        if (pd_str_eqc(id, p->id))
            return p;
    return NULL;
}

static rt_proj_t *
s_proj_get(rt_t *rt, const pd_project_t *proj)
{
    rt_proj_t *p = s_proj_find(rt, pd_str(proj->id));
    if (!p) {
        p = s_xcalloc(1, sizeof *p);
        snprintf(p->id, sizeof p->id, "%s", proj->id);
        p->next = rt->projs;
        rt->projs = p;
    }
    p->p = proj;
    return p;
}

/* -------------------------------------------------------------------------- index */

static void
s_key(rt_t *rt, pd_str_t proj, pd_str_t chan, pd_str_t role)
{
    pd_buf_reset(&rt->key);
    pd_buf_add(&rt->key, proj.ptr, proj.len);
    pd_buf_add(&rt->key, "", 1);
    pd_buf_add(&rt->key, chan.ptr, chan.len);
    pd_buf_add(&rt->key, "", 1);
    pd_buf_add(&rt->key, role.ptr, role.len);
}

static rt_bucket_t *
s_bucket_get(rt_t *rt, pd_str_t proj, pd_str_t chan, pd_str_t role, bool create)
{
    s_key(rt, proj, chan, role);
    uint64_t h = pd_map_hash(&rt->buckets, (pd_str_t){rt->key.data, rt->key.len}, PD_STR_NULL);
    for (pd_mapent_t *e = pd_map_first(&rt->buckets, h); e; e = e->next) {
        rt_bucket_t *b = (rt_bucket_t *)e;
        if (e->hash == h && b->klen == rt->key.len && memcmp(b->key, rt->key.data, b->klen) == 0)
            return b;
    }
    if (!create)
        return NULL;
    rt_bucket_t *b = s_xcalloc(1, sizeof *b + rt->key.len);
    b->h.hash = h;
    b->klen = (uint32_t)rt->key.len;
    memcpy(b->key, rt->key.data, rt->key.len);
    pd_map_add(&rt->buckets, &b->h);
    return b;
}

static pd_str_t
s_sub_chans(const rt_sub_t *s)
{
    return (pd_str_t){s->data + s->idlen + 1, s->chan_len};
}

static void
s_sub_register(rt_sub_t *s)
{
    rt_t *rt = s->conn->rt;
    rt_conn_t *c = s->conn;
    pd_str_t roles = {c->roles, c->roles_len};
    size_t nroles = s_list_count(roles);
    s->nnodes = (uint32_t)(s->nchan * nroles);
    s->nodes = s->nnodes ? s_xcalloc(s->nnodes, sizeof *s->nodes) : NULL;
    size_t i = 0;
    pd_str_t chans = s_sub_chans(s), proj = pd_str(c->proj->id);
    for (pd_str_t ch = pd_list_first(chans); ch.ptr; ch = pd_list_next(chans, ch))
        for (pd_str_t r = pd_list_first(roles); r.ptr; r = pd_list_next(roles, r)) {
            rt_node_t *nd = &s->nodes[i++];
            rt_bucket_t *b = s_bucket_get(rt, proj, ch, r, true);
            nd->sub = s;
            nd->bucket = b;
            nd->prev = NULL;
            nd->next = b->head;
            if (b->head)
                b->head->prev = nd;
            b->head = nd;
            b->n++;
        }
}

static void
s_sub_unregister(rt_sub_t *s)
{
    rt_t *rt = s->conn->rt;
    for (uint32_t i = 0; i < s->nnodes; i++) {
        rt_node_t *nd = &s->nodes[i];
        rt_bucket_t *b = nd->bucket;
        if (nd->prev)
            nd->prev->next = nd->next;
        else
            b->head = nd->next;
        if (nd->next)
            nd->next->prev = nd->prev;
        if (--b->n == 0) {
            pd_map_del(&rt->buckets, &b->h);
            free(b);
        }
    }
    free(s->nodes);
    s->nodes = NULL;
    s->nnodes = 0;
}

static void
s_sub_free(rt_sub_t *s)
{
    s_sub_unregister(s);
    pd_query_destroy(&s->query);
    free(s);
}

static rt_sub_t **
s_sub_find(rt_conn_t *c, pd_str_t id)
{
    for (rt_sub_t **pp = &c->subs; *pp; pp = &(*pp)->next)
        if ((*pp)->idlen == id.len && memcmp((*pp)->data, id.ptr, id.len) == 0)
            return pp;
    return NULL;
}

static void
s_sub_remove(rt_conn_t *c, rt_sub_t **pp)
{
    rt_t *rt = c->rt;
    rt_sub_t *s = *pp;
    *pp = s->next;
    c->nsubs--;
    c->nchan -= s->nchan;
    c->sub_bytes -= s->bytes;
    rt->nsubs--;
    s_sub_free(s);
}

/* -------------------------------------------------------------------------- output */

static void
s_conn_schedule(rt_conn_t *c)
{
    rt_t *rt = c->rt;
    if (c->in_flush || c->state == RT_DEAD || c->state == RT_UPGRADING)
        return;
    c->in_flush = true;
    c->flush_next = rt->flush_head;
    rt->flush_head = c;
    if (!rt->flush_linked) {
        rt->flush_linked = true;
        h2o_timeout_link(rt->gw->ctx.loop, &rt->gw->ctx.zero_timeout, &rt->flush_entry);
    }
}

/*  Makes room for one frame of payload n; returns where to write the payload, or NULL if the
 *  connection is gone or would exceed its output bound (it is then disconnected).
 *
 *  Conflation. A frame with a record's state (rec != 0, how a PD_CQ_*) supersedes the record's
 *  queued frame while the connection is behind, that is while a write to it is in flight: its
 *  queue then holds at most one frame per record it can see, and a delete cancels a creation
 *  it was never sent (NULL: nothing to send; pd_cqueue.h). A connection that keeps up (its
 *  last write completed) gets every state: what it is sent this loop turn is written at the
 *  end of the turn, so conflating it would save no memory, only hide states from a client
 *  that can take them. */
static char *
s_out_record(rt_conn_t *c, uint64_t rec, int how, int op, size_t n)
{
    rt_t *rt = c->rt;
    if (c->state == RT_DEAD || c->state == RT_UPGRADING)
        return NULL;
    size_t need = n + GW_WS_HEADER_MAX, queued = pd_cqueue_bytes(&c->q);
    if (queued + c->wlen + need > rt->max_queue) {
        rt->slow++;
        pd_log_info("%s: disconnecting a slow consumer (%zu bytes pending, over --ws-max-queue)",
                    __func__, queued + c->wlen);
        s_conn_kill(c, "slow consumer");
        return NULL;
    }
    unsigned char h[GW_WS_HEADER_MAX];
    size_t hl = gw_ws_header(h, op, n);
    uint64_t before = c->q.conflated;
    char *p = rec && c->wbuf ? pd_cqueue_push_record(&c->q, rec, how, hl + n) : pd_cqueue_push(&c->q, hl + n);
    rt->conflated += c->q.conflated - before;
    if (!p)
        return NULL;
    memcpy(p, h, hl);
    s_conn_schedule(c);
    return p + hl;
}

static char *
s_out_frame(rt_conn_t *c, int op, size_t n)
{
    return s_out_record(c, 0, 0, op, n);
}

static void
s_send(rt_conn_t *c, const char *p, size_t n)
{
    if (c->state != RT_OPEN)
        return;
    char *d = s_out_frame(c, 1, n);
    if (d)
        memcpy(d, p, n);
}

static void
s_send_buf(rt_conn_t *c, const pd_buf_t *b)
{
    s_send(c, b->data, b->len);
}

static void
s_error_json(pd_buf_t *b, int code, const char *msg)
{
    pd_buf_addf(b, "{\"type\":\"error\",\"data\":{\"code\":%d,\"message\":", code);
    pd_buf_add_json_str(b, msg, strlen(msg));
    pd_buf_adds(b, "}}");
}

static void
s_send_error(rt_conn_t *c, int code, const char *msg)
{
    rt_t *rt = c->rt;
    rt->errors++;
    pd_buf_reset(&rt->tmp);
    s_error_json(&rt->tmp, code, msg);
    s_send_buf(c, &rt->tmp);
}

static void s_send_errorf(rt_conn_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
s_send_errorf(rt_conn_t *c, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s_send_error(c, code, msg);
}

static void s_conn_detach(rt_conn_t *c);

/*  Starts the closing handshake: no more events, a close frame after what is queued, then
 *  (once written) a half-close, and the socket is closed when the peer closes or after
 *  RT_CLOSE_WAIT_MS. */
static void
s_conn_close(rt_conn_t *c, int code, const char *reason)
{
    if (c->state != RT_OPEN)
        return;
    s_conn_detach(c);
    char pl[125];
    size_t n = gw_ws_close_payload(pl, code, reason);
    char *d = s_out_frame(c, 8, n);
    if (!d)
        return; /* killed */
    memcpy(d, pl, n);
    c->state = RT_CLOSING;
    c->close_at_ms = s_mono() + RT_CLOSE_WAIT_MS;
}

static void
s_close_done(rt_conn_t *c)
{
    if (c->state != RT_CLOSING || c->wbuf || pd_cqueue_bytes(&c->q) || !c->sock)
        return;
    if (c->peer_closed) {
        s_conn_kill(c, "closed");
        return;
    }
    if (!c->shut) {
        c->shut = true;
        shutdown(h2o_socket_get_fd(c->sock), SHUT_WR);
    }
}

static void
s_on_written(h2o_socket_t *sock, const char *err)
{
    rt_conn_t *c = sock->data;
    free(c->wbuf);
    c->wbuf = NULL;
    c->wlen = 0;
    c->write_ms = 0;
    if (err) {
        s_conn_kill(c, "write error");
        return;
    }
    if (pd_cqueue_bytes(&c->q))
        s_conn_write(c);
    else
        s_close_done(c);
}

static void
s_conn_write(rt_conn_t *c)
{
    if (!c->sock || c->wbuf || c->state == RT_DEAD || c->state == RT_UPGRADING)
        return;
    if (!pd_cqueue_bytes(&c->q)) {
        s_close_done(c);
        return;
    }
    size_t len;
    c->wbuf = pd_cqueue_take(&c->q, &len);
    c->wlen = (uint32_t)len;
    c->write_ms = s_mono();
    h2o_iovec_t v = h2o_iovec_init(c->wbuf, c->wlen);
    h2o_socket_write(c->sock, &v, 1, s_on_written);
}

static void
s_on_flush(h2o_timeout_entry_t *entry)
{
    rt_t *rt = H2O_STRUCT_FROM_MEMBER(rt_t, flush_entry, entry);
    (void)entry;
    rt->flush_linked = false;
    rt_conn_t *c;
    while ((c = rt->flush_head) != NULL) {
        rt->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->in_flush = false;
        if (c->state != RT_DEAD)
            s_conn_write(c);
    }
    while ((c = rt->dead) != NULL) {
        rt->dead = c->dead_next;
        free(c);
    }
}

/* -------------------------------------------------------------------------- holds */

static uint64_t
s_hold_hash(rt_t *rt, pd_str_t proj, pd_str_t id)
{
    return pd_map_hash(&rt->holds, proj, id);
}

static rt_hold_t *
s_hold_find(rt_t *rt, pd_str_t proj, pd_str_t id)
{
    uint64_t h = s_hold_hash(rt, proj, id);
    for (pd_mapent_t *e = pd_map_first(&rt->holds, h); e; e = e->next) {
        rt_hold_t *x = (rt_hold_t *)e;
        if (e->hash == h && pd_str_eqc(id, x->id) && pd_str_eqc(proj, x->proj->id))
            return x;
    }
    return NULL;
}

static void
s_hold_free(rt_t *rt, rt_hold_t *h)
{
    pd_map_del(&rt->holds, &h->h);
    free(h);
}

static void
s_hold_unref(rt_t *rt, rt_hold_t *h)
{
    if (h->refs && --h->refs)
        return;
    if (h->dead)
        s_hold_free(rt, h);
    else
        h->release_at = s_mono() + RT_GRACE_MS;
}

static void
s_conn_unhold_all(rt_conn_t *c)
{
    rt_t *rt = c->rt;
    for (uint8_t i = 0; i < c->nholds; i++)
        s_hold_unref(rt, c->holds[i]);
    free(c->holds);
    c->holds = NULL;
    c->nholds = 0;
}

/*  $createdAt of a Presence model JSON (the store renders it second, after $id). */
static int64_t
s_body_time(pd_str_t body, const char *key)
{
    char pat[24];
    int pl = snprintf(pat, sizeof pat, "\"%s\":\"", key);
    for (size_t i = 0; body.len >= (size_t)pl + 29 && i + (size_t)pl + 29 <= body.len; i++)
        if (memcmp(body.ptr + i, pat, (size_t)pl) == 0) {
            int64_t t = 0;
            if (pd_time_parse(body.ptr + i + pl, 29, &t) == 0)
                return t;
            return 0;
        }
    return 0;
}

/*  True if an event about a held record describes a state older than the one we hold. */
static bool
s_hold_older(const rt_hold_t *h, int64_t created, uint64_t version)
{
    return created < h->created_ms || (created == h->created_ms && version < h->version);
}

/*  Keeps the holds in step with the store: a delete, or a write that no longer names this
 *  gateway among the holders (a REST upsert made it a plain record), ends the hold without a
 *  RELEASE; our own writes advance its version. */
static void
s_hold_on_event(rt_t *rt, const pd_msg_t *ev)
{
    rt_hold_t *h = s_hold_find(rt, ev->s[PD_F_PROJECT], ev->s[PD_F_ID]);
    if (!h)
        return;
    int64_t created = ev->i[PD_F_CREATED];
    uint64_t version = (uint64_t)ev->i[PD_F_VERSION];
    if (s_hold_older(h, created, version))
        return;
    h->created_ms = created;
    h->version = version;
    bool mine = ev->i[PD_F_ACTION] != PD_ACT_DELETE &&
                pd_list_has(ev->s[PD_F_CONN], pd_str(rt->gw->ident));
    if (mine)
        return;
    h->dead = true;
    if (h->refs == 0)
        s_hold_free(rt, h);
}

/* -------------------------------------------------------------------------- connections */

static void
s_conn_set_roles(rt_conn_t *c, const char *roles, size_t len)
{
    for (rt_sub_t *s = c->subs; s; s = s->next)
        s_sub_unregister(s);
    if (c->roles != s_guest_roles)
        free(c->roles);
    if (roles == s_guest_roles) {
        c->roles = (char *)s_guest_roles;
    } else {
        c->roles = s_xcalloc(1, len);
        memcpy(c->roles, roles, len);
    }
    c->roles_len = (uint32_t)len;
    for (rt_sub_t *s = c->subs; s; s = s->next)
        s_sub_register(s);
}

static void
s_conn_set_ident(rt_conn_t *c, const gw_ident_t *id)
{
    if (id->kind == GW_ID_USER) {
        snprintf(c->user, sizeof c->user, "%s", id->user_id);
        c->exp_ms = id->exp * 1000;
        s_conn_set_roles(c, id->roles.data, id->roles.len);
    } else {
        c->user[0] = 0;
        c->exp_ms = 0;
        s_conn_set_roles(c, s_guest_roles, sizeof s_guest_roles - 1);
    }
}

/*  Ends everything a connection takes part in: subscriptions, holds, waiting ops. */
static void
s_conn_detach(rt_conn_t *c)
{
    rt_t *rt = c->rt;
    while (c->subs)
        s_sub_remove(c, &c->subs);
    s_conn_unhold_all(c);
    for (rt_op_t *op = rt->ops; op; op = op->next)
        if (op->conn == c)
            op->conn = NULL;
}

static void
s_conn_free_fields(rt_conn_t *c)
{
    if (c->roles != s_guest_roles)
        free(c->roles);
    c->roles = NULL;
    pd_cqueue_free(&c->q);
    free(c->wbuf);
    free(c->frag);
    free(c->hello);
    c->wbuf = c->frag = c->hello = NULL;
    c->wlen = c->frag_len = 0;
}

/*  Drops a connection at once (no closing handshake). The struct is freed at the end of the
 *  loop turn, so callers up the stack may still look at c->state. */
static void
s_conn_kill(rt_conn_t *c, const char *why)
{
    rt_t *rt = c->rt;
    if (c->state == RT_DEAD)
        return;
    pd_log_debug("%s: connection closed (%s)", __func__, why);
    s_conn_detach(c);
    if (c->sock) {
        h2o_socket_close(c->sock);
        c->sock = NULL;
    }
    s_conn_free_fields(c);
    if (c->prev)
        c->prev->next = c->next;
    else if (rt->conns == c)
        rt->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->counted) {
        rt->nconns--;
        c->proj->nconns--;
        c->counted = false;
    }
    c->state = RT_DEAD;
    c->dead_next = rt->dead;
    rt->dead = c;
    if (!rt->flush_linked) {
        rt->flush_linked = true;
        h2o_timeout_link(rt->gw->ctx.loop, &rt->gw->ctx.zero_timeout, &rt->flush_entry);
    }
}

/* -------------------------------------------------------------------------- JSON pieces */

static void
s_user_json(pd_buf_t *b, const rt_conn_t *c)
{
    if (!c->user[0]) {
        pd_buf_adds(b, "null");
        return;
    }
    char now[32];
    pd_time_format(pd_now_ms(), now);
    pd_str_t roles = {c->roles, c->roles_len};
    pd_buf_adds(b, "{\"$id\":");
    pd_buf_add_json_str(b, c->user, strlen(c->user));
    pd_buf_addf(b,
                ",\"$createdAt\":\"%s\",\"$updatedAt\":\"%s\",\"name\":\"\",\"registration\":"
                "\"%s\",\"status\":true,\"labels\":[",
                now, now, now);
    bool first = true;
    for (pd_str_t r = pd_list_first(roles); r.ptr; r = pd_list_next(roles, r))
        if (r.len > 6 && memcmp(r.ptr, "label:", 6) == 0) {
            if (!first)
                pd_buf_adds(b, ",");
            first = false;
            pd_buf_add_json_str(b, r.ptr + 6, r.len - 6);
        }
    pd_buf_addf(b,
                "],\"passwordUpdate\":\"\",\"email\":\"\",\"phone\":\"\",\"emailVerification\":%s,"
                "\"phoneVerification\":false,\"mfa\":false,\"prefs\":{},\"targets\":[],"
                "\"accessedAt\":\"%s\"}",
                pd_list_has(roles, PD_STR("users/verified")) ? "true" : "false", now);
}

/* -------------------------------------------------------------------------- messages */

static void
s_on_auth(rt_conn_t *c, pd_rtmsg_t *m)
{
    rt_t *rt = c->rt;
    gw_ident_t id;
    char err[300];
    int rc =
        gw_ident_resolve(rt->gw, &id, pd_str(c->proj->id), PD_STR_NULL, m->token, err, sizeof err);
    if (rc != PD_ERR_OK || id.kind != GW_ID_USER) {
        gw_ident_free(&id);
        s_send_error(c, PD_RTMSG_EFORMAT, "Session is not valid.");
        return;
    }
    if (c->user[0] && strcmp(c->user, id.user_id) != 0)
        s_conn_unhold_all(c); /* those presences belong to the previous user */
    s_conn_set_ident(c, &id);
    gw_ident_free(&id);
    pd_buf_t *b = &rt->tmp;
    pd_buf_reset(b);
    pd_buf_adds(b, "{\"type\":\"response\",\"data\":{\"to\":\"authentication\",\"success\":true,"
                   "\"user\":");
    s_user_json(b, c);
    pd_buf_adds(b, "}}");
    s_send_buf(c, b);
}

static bool
s_is_presence_channel(pd_str_t ch)
{
    return pd_str_eqc(ch, "presences") || (ch.len > 10 && memcmp(ch.ptr, "presences.", 10) == 0);
}

/*  The presence channels of a row, deduplicated, packed. Returns their number. */
static size_t
s_row_channels(const pd_rtmsg_row_t *r, pd_buf_t *out)
{
    size_t n = 0;
    pd_buf_reset(out);
    for (size_t k = 0; k < r->nchannels; k++) {
        pd_str_t ch = r->channels[k];
        if (!s_is_presence_channel(ch) || memchr(ch.ptr, 0, ch.len) ||
            pd_list_has((pd_str_t){out->data, out->len}, ch))
            continue;
        pd_buf_add(out, ch.ptr, ch.len);
        pd_buf_add(out, "", 1);
        n++;
    }
    return n;
}

/*  What a subscription is counted for against RT_MAX_SUB_BYTES: its id, its packed presence
 *  channels and the text of its queries (their parsed form is of the same order). */
static size_t
s_row_bytes(const pd_rtmsg_row_t *r, const char *id, const pd_buf_t *chans)
{
    size_t n = strlen(id) + chans->len;
    for (size_t k = 0; k < r->nqueries; k++)
        n += r->queries[k].len;
    return n;
}

static void
s_on_subscribe(rt_conn_t *c, pd_rtmsg_t *m)
{
    rt_t *rt = c->rt;
    size_t n = m->nrows;
    char(*ids)[37] = s_xcalloc(n, sizeof *ids);
    pd_buf_t *chans = s_xcalloc(n, sizeof *chans);
    size_t *nch = s_xcalloc(n, sizeof *nch);
    bool *skip = s_xcalloc(n, sizeof *skip);
    for (size_t i = 0; i < n; i++) {
        if (m->rows[i].id.ptr)
            snprintf(ids[i], sizeof ids[i], "%.*s", (int)m->rows[i].id.len, m->rows[i].id.ptr);
        else
            s_unique_id(ids[i]);
        pd_buf_init(&chans[i]);
        nch[i] = s_row_channels(&m->rows[i], &chans[i]);
    }
    /* What the connection would hold: a re-sent id replaces its subscription, and within one
     * message the last row with an id wins. */
    size_t nsubs = c->nsubs, nchan = c->nchan, bytes = c->sub_bytes;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = i + 1; k < n && !skip[i]; k++)
            skip[i] = strcmp(ids[i], ids[k]) == 0;
        if (skip[i])
            continue;
        rt_sub_t **old = s_sub_find(c, pd_str(ids[i]));
        if (old) {
            nchan -= (*old)->nchan;
            bytes -= (*old)->bytes;
        } else {
            nsubs++;
        }
        nchan += nch[i];
        bytes += s_row_bytes(&m->rows[i], ids[i], &chans[i]);
    }
    if (nsubs > RT_MAX_SUBS) {
        s_send_errorf(c, PD_RTMSG_EFORMAT,
                      "Too many subscriptions: a connection may hold at most %d (this message "
                      "would make %zu).",
                      RT_MAX_SUBS, nsubs);
        goto out;
    }
    if (bytes > RT_MAX_SUB_BYTES) {
        s_send_errorf(c, PD_RTMSG_EFORMAT,
                      "Subscriptions too large: a connection's subscriptions may hold at most %d "
                      "bytes of ids, channels and queries (this message would make %zu).",
                      RT_MAX_SUB_BYTES, bytes);
        goto out;
    }
    if (nchan > RT_MAX_CONN_CHANNELS) {
        s_send_errorf(c, PD_RTMSG_EFORMAT,
                      "Too many channels: a connection may subscribe to at most %d presence "
                      "channels in all (this message would make %zu).",
                      RT_MAX_CONN_CHANNELS, nchan);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (skip[i])
            continue;
        rt_sub_t **old = s_sub_find(c, pd_str(ids[i]));
        if (old)
            s_sub_remove(c, old);
        size_t idlen = strlen(ids[i]);
        rt_sub_t *s = s_xcalloc(1, sizeof *s + idlen + 1 + chans[i].len);
        s->conn = c;
        s->idlen = (uint8_t)idlen;
        memcpy(s->data, ids[i], idlen + 1);
        if (chans[i].len)
            memcpy(s->data + idlen + 1, chans[i].data, chans[i].len);
        s->chan_len = (uint16_t)chans[i].len;
        s->nchan = (uint16_t)nch[i];
        s->bytes = (uint32_t)s_row_bytes(&m->rows[i], ids[i], &chans[i]);
        c->sub_bytes += s->bytes;
        s->query = m->rows[i].query;
        m->rows[i].query = NULL;
        s->next = c->subs;
        c->subs = s;
        c->nsubs++;
        c->nchan += s->nchan;
        rt->nsubs++;
        s_sub_register(s);
    }
    pd_buf_t *b = &rt->tmp;
    pd_buf_reset(b);
    pd_buf_adds(b, "{\"type\":\"response\",\"data\":{\"to\":\"subscribe\",\"success\":true,"
                   "\"subscriptions\":[");
    for (size_t i = 0; i < n; i++) {
        const pd_rtmsg_row_t *r = &m->rows[i];
        pd_buf_adds(b, i ? ",{\"subscriptionId\":" : "{\"subscriptionId\":");
        pd_buf_add_json_str(b, ids[i], strlen(ids[i]));
        pd_buf_adds(b, ",\"channels\":[");
        bool first = true;
        for (size_t k = 0; k < r->nchannels; k++) {
            pd_str_t ch = r->channels[k];
            if (pd_str_eqc(ch, "account")) { /* Realtime::convertChannels */
                if (!c->user[0])
                    continue;
                pd_buf_adds(b, first ? "" : ",");
                pd_buf_addf(b, "\"account.%s\"", c->user);
            } else {
                pd_buf_adds(b, first ? "" : ",");
                pd_buf_add_json_str(b, ch.ptr, ch.len);
            }
            first = false;
        }
        pd_buf_adds(b, "],\"queries\":[");
        if (r->nqueries == 0)
            pd_buf_add_json_str(b, s_select_all, sizeof s_select_all - 1);
        for (size_t k = 0; k < r->nqueries; k++) {
            if (k)
                pd_buf_adds(b, ",");
            pd_buf_add_json_str(b, r->queries[k].ptr, r->queries[k].len);
        }
        pd_buf_adds(b, "]}");
    }
    pd_buf_adds(b, "]}}");
    s_send_buf(c, b);
out:
    for (size_t i = 0; i < n; i++)
        pd_buf_free(&chans[i]);
    free(ids);
    free(chans);
    free(nch);
    free(skip);
}

static void
s_on_unsubscribe(rt_conn_t *c, pd_rtmsg_t *m)
{
    rt_t *rt = c->rt;
    pd_buf_t *b = &rt->tmp;
    pd_buf_reset(b);
    pd_buf_adds(b, "{\"type\":\"response\",\"data\":{\"to\":\"unsubscribe\",\"success\":true,"
                   "\"subscriptions\":[");
    for (size_t i = 0; i < m->nids; i++) {
        rt_sub_t **pp = s_sub_find(c, m->ids[i]);
        if (pp)
            s_sub_remove(c, pp);
        pd_buf_adds(b, i ? ",{\"subscriptionId\":" : "{\"subscriptionId\":");
        pd_buf_add_json_str(b, m->ids[i].ptr, m->ids[i].len);
        pd_buf_adds(b, pp ? ",\"removed\":true}" : ",\"removed\":false}");
    }
    pd_buf_adds(b, "]}}");
    s_send_buf(c, b);
}

static void
s_op_free(rt_op_t *op)
{
    rt_t *rt = op->rt;
    if (op->prev)
        op->prev->next = op->next;
    else
        rt->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    h2o_mem_clear_pool(&op->req.pool); /* releases the pending entry */
    free(op);
}

static void
s_on_presence_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    rt_t *rt = gw->rt;
    (void)gw;
    rt_op_t *op = p->user;
    rt_conn_t *c = op->conn;
    int err = (int)m->i[PD_F_ERR];
    if (err != PD_ERR_OK) {
        if (c && c->state == RT_OPEN) {
            pd_str_t msg = m->s[PD_F_MESSAGE];
            if (msg.len)
                s_send_errorf(c, pd_err_http(err), "%.*s", (int)msg.len, msg.ptr);
            else
                s_send_error(c, pd_err_http(err), pd_err_msg(err));
        }
        s_op_free(op);
        return;
    }
    pd_str_t id = m->s[PD_F_ID], body = m->s[PD_F_BODY];
    rt_hold_t *h = s_hold_find(rt, pd_str(op->proj->id), id);
    if (!h && id.len <= 36) {
        h = s_xcalloc(1, sizeof *h);
        h->h.hash = s_hold_hash(rt, pd_str(op->proj->id), id);
        h->proj = op->proj;
        memcpy(h->id, id.ptr, id.len);
        pd_map_add(&rt->holds, &h->h);
    }
    if (h) {
        int64_t created = s_body_time(body, "$createdAt");
        uint64_t version = (uint64_t)m->i[PD_F_VERSION];
        if (!s_hold_older(h, created, version)) {
            h->created_ms = created;
            h->version = version;
        }
        h->dead = false;
        h->renew_at = s_mono() + RT_RENEW_MS;
        bool held = false;
        for (uint8_t i = 0; c && i < c->nholds; i++)
            held |= c->holds[i] == h;
        if (c && c->state == RT_OPEN && !held && c->nholds < RT_MAX_HOLDS) {
            c->holds = s_xrealloc(c->holds, (c->nholds + 1u) * sizeof *c->holds);
            c->holds[c->nholds++] = h;
            h->refs++;
            h->release_at = 0;
        } else if (h->refs == 0 && !h->release_at) {
            h->release_at = s_mono() + RT_GRACE_MS; /* the socket is gone already */
        }
    }
    if (c && c->state == RT_OPEN) {
        pd_buf_t *b = &rt->tmp;
        pd_buf_reset(b);
        pd_buf_adds(b, "{\"type\":\"response\",\"data\":{\"to\":\"presence\",\"presence\":");
        pd_buf_add(b, body.ptr, body.len);
        pd_buf_adds(b, "}}");
        s_send_buf(c, b);
    }
    s_op_free(op);
}

static void
s_on_presence(rt_conn_t *c, pd_rtmsg_t *m)
{
    rt_t *rt = c->rt;
    gw_t *gw = rt->gw;
    if (!c->user[0]) {
        s_send_error(c, 401, "User must be authorized");
        return;
    }
    if (!c->proj->p) {
        s_send_error(c, 1008, "Missing project context. Reconnect to the project first.");
        return;
    }
    pd_str_t roles = {c->roles, c->roles_len};
    char err[512];
    if (m->has_perms && pd_perms_check_grant(&m->perms, roles, err, sizeof err) < 0) {
        s_send_error(c, 401, err);
        return;
    }
    if (!m->has_perms)
        pd_perms_default(pd_str(c->user), &m->perms);
    if (c->nholds >= RT_MAX_HOLDS) {
        s_send_errorf(c, PD_RTMSG_EFORMAT,
                      "Too many presences: one connection may hold at most %d.", RT_MAX_HOLDS);
        return;
    }
    char gen[21];
    pd_str_t id = m->presence_id;
    if (!id.ptr) {
        s_unique_id(gen);
        id = pd_str(gen);
    }
    rt_op_t *op = s_xcalloc(1, sizeof *op);
    h2o_mem_init_pool(&op->req.pool);
    gw_pending_t *p = gw_pending_new(gw, &op->req, GW_ROUTE_REALTIME, s_on_presence_reply);
    p->req = NULL; /* no HTTP response behind it: the gateway only calls on_reply (p->user) */
    p->user = op;
    op->p = p;
    op->conn = c;
    op->rt = rt;
    op->proj = c->proj;
    op->deadline_ms = s_mono() + gw->cfg->request_timeout_ms + 1000;
    op->next = rt->ops;
    if (rt->ops)
        rt->ops->prev = op;
    rt->ops = op;

    int64_t now = pd_now_ms();
    const pd_perms_t *pm = &m->perms;
    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_UPSERT, p->rid);
    pd_msgw_str(w, PD_F_PROJECT, c->proj->id, strlen(c->proj->id));
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_str(w, PD_F_USER, c->user, strlen(c->user));
    if (c->proj->p && c->proj->p->max_records)
        pd_msgw_int(w, PD_F_MAX_RECORDS, (int64_t)c->proj->p->max_records);
    pd_msgw_s(w, PD_F_STATUS, m->status);
    pd_msgw_str(w, PD_F_STATUS_JSON, m->status_json.data, m->status_json.len);
    pd_msgw_str(w, PD_F_META_JSON, m->has_meta ? m->meta_json.data : "{}",
                m->has_meta ? m->meta_json.len : 2);
    pd_msgw_str(w, PD_F_PERMS_JSON, pm->json.data ? pm->json.data : "[]",
                pm->json.data ? pm->json.len : 2);
    pd_msgw_str(w, PD_F_READ_ROLES, pm->read.data ? pm->read.data : "", pm->read.len);
    pd_msgw_str(w, PD_F_UPDATE_ROLES, pm->update.data ? pm->update.data : "", pm->update.len);
    pd_msgw_str(w, PD_F_DELETE_ROLES, pm->del.data ? pm->del.data : "", pm->del.len);
    pd_msgw_str(w, PD_F_SOURCE, "realtime", 8);
    pd_msgw_int(w, PD_F_EXPIRES, now + RT_LEASE_MS);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_HOLD);
    pd_msgw_str(w, PD_F_CONN, gw->ident, strlen(gw->ident));
    pd_msgw_str(w, PD_F_ROLES, c->roles, c->roles_len);
    pd_msgw_int(w, PD_F_NOW, now);
    gw_send_end(gw);
}

/*  Token bucket: RT_RATE_BURST messages, refilled at RT_RATE_PER_S. */
static bool
s_rate_ok(rt_conn_t *c)
{
    int64_t now = s_mono();
    int64_t t = c->rate_tokens + (now - c->rate_ms) * RT_RATE_PER_S;
    if (t > RT_RATE_BURST * 1000)
        t = RT_RATE_BURST * 1000;
    c->rate_ms = now;
    if (t < 1000) {
        c->rate_tokens = (int32_t)t;
        return false;
    }
    c->rate_tokens = (int32_t)(t - 1000);
    return true;
}

static void
s_on_message(rt_conn_t *c, int op, const char *p, size_t n)
{
    rt_t *rt = c->rt;
    rt->messages++;
    if (op == 2) {
        s_send_error(c, PD_RTMSG_EFORMAT,
                     "Binary messages are not supported: send each message as JSON text.");
        return;
    }
    if (!s_rate_ok(c)) {
        s_send_error(c, 1013, "Too many messages.");
        return;
    }
    pd_rtmsg_t m;
    char err[512];
    size_t maxmeta = c->proj->p ? c->proj->p->max_metadata : 16384;
    int rc = pd_rtmsg_parse(&m, p, n, maxmeta, err, sizeof err);
    if (rc) {
        s_send_error(c, rc, err);
        pd_rtmsg_free(&m);
        return;
    }
    switch (m.type) {
    case PD_RTMSG_PING:
        s_send(c, "{\"type\":\"pong\"}", 15);
        break;
    case PD_RTMSG_AUTH:
        s_on_auth(c, &m);
        break;
    case PD_RTMSG_SUBSCRIBE:
        s_on_subscribe(c, &m);
        break;
    case PD_RTMSG_UNSUBSCRIBE:
        s_on_unsubscribe(c, &m);
        break;
    case PD_RTMSG_PRESENCE:
        s_on_presence(c, &m);
        break;
    }
    pd_rtmsg_free(&m);
}

/* -------------------------------------------------------------------------- frames in */

/*  Frees h2o's input buffer when it is empty: an idle connection then holds none. */
static void
s_input_release(h2o_socket_t *sock)
{
    if (sock->input->bytes != NULL && sock->input->size == 0) {
        h2o_buffer_prototype_t *proto = sock->input->_prototype;
        h2o_buffer_dispose(&sock->input);
        h2o_buffer_init(&sock->input, proto);
    }
}

static void
s_protocol_error(rt_conn_t *c, const char *why)
{
    s_conn_close(c, 1002, why);
}

/*  Parses the complete frames in the input buffer (RFC 6455 §5): client frames must be
 *  masked; control frames are short and unfragmented; a message (all its fragments) is at
 *  most PD_RTMSG_MAX_BYTES, which is checked from the header, before its payload is read. */
static void
s_ws_consume(rt_conn_t *c)
{
    while (c->state == RT_OPEN) {
        h2o_buffer_t *in = c->sock->input;
        unsigned char *b = (unsigned char *)in->bytes;
        size_t avail = in->size;
        gw_ws_frame_t f;
        const char *why = NULL;
        int rc = gw_ws_parse(b, avail, &f, &why);
        if (rc < 0) {
            s_protocol_error(c, why);
            break;
        }
        if (rc == 0)
            break;
        int op = f.op;
        bool fin = f.fin;
        uint64_t len = f.len;
        if (!(op & 0x8)) {
            if ((op == 0) != (c->frag_op != 0)) {
                s_protocol_error(c, op ? "Expected a continuation frame"
                                       : "Continuation frame without a message");
                break;
            }
            if (len > PD_RTMSG_MAX_BYTES || (op == 0 && c->frag_len + len > PD_RTMSG_MAX_BYTES)) {
                s_send_errorf(c, 1009, "Message is too big: a message may be at most %d bytes.",
                              PD_RTMSG_MAX_BYTES);
                s_conn_close(c, 1009, "Message too big");
                break;
            }
        }
        if (avail < f.hl + len)
            break;
        unsigned char *pl = b + f.hl;
        gw_ws_unmask(pl, len, f.mask);
        size_t flen = f.hl + (size_t)len;
        switch (op) {
        case 0x8: { /* close: answer with the same code, then close when written */
            int code = gw_ws_close_code(pl, len);
            c->peer_closed = true;
            s_conn_close(c, code, "");
            break;
        }
        case 0x9: {
            char *d = s_out_frame(c, 0xA, (size_t)len);
            if (d)
                memcpy(d, pl, (size_t)len);
            break;
        }
        case 0xA:
            break;
        case 0x0:
            c->frag = s_xrealloc(c->frag, c->frag_len + (size_t)len);
            memcpy(c->frag + c->frag_len, pl, (size_t)len);
            c->frag_len += (uint32_t)len;
            if (fin) {
                char *msg = c->frag;
                uint32_t mlen = c->frag_len;
                int mop = c->frag_op;
                c->frag = NULL;
                c->frag_len = 0;
                c->frag_op = 0;
                s_on_message(c, mop, msg, mlen);
                free(msg);
            }
            break;
        default: /* 1 text, 2 binary */
            if (fin) {
                s_on_message(c, op, (const char *)pl, (size_t)len);
            } else {
                c->frag = s_xcalloc(1, (size_t)len);
                memcpy(c->frag, pl, (size_t)len);
                c->frag_len = (uint32_t)len;
                c->frag_op = (uint8_t)op;
            }
        }
        if (c->state == RT_DEAD)
            return;
        h2o_buffer_consume(&c->sock->input, flen);
    }
    if (c->state == RT_CLOSING && c->sock)
        h2o_buffer_consume(&c->sock->input, c->sock->input->size);
}

static void
s_on_read(h2o_socket_t *sock, const char *err)
{
    rt_conn_t *c = sock->data;
    rt_t *rt = c->rt;
    if (err) {
        s_conn_kill(c, err);
        return;
    }
    c->last_rx_ms = s_mono();
    if (c->state == RT_OPEN && !gw_bus_live(rt->gw)) {
        /* no message is handled before the events it may subscribe to can arrive */
        if (!c->bus_wait) {
            c->bus_wait = true;
            h2o_socket_read_stop(sock);
        }
        return;
    }
    if (c->state == RT_OPEN)
        s_ws_consume(c);
    else if (c->sock)
        h2o_buffer_consume(&sock->input, sock->input->size); /* closing: discard */
    if (c->state != RT_DEAD && c->sock)
        s_input_release(c->sock);
}

/* -------------------------------------------------------------------------- opening */

static void
s_on_upgraded(void *data, h2o_socket_t *sock, size_t reqsize)
{
    rt_conn_t *c = data;
    rt_t *rt = c->rt;
    free(c->hello);
    c->hello = NULL;
    if (!sock) {
        s_conn_free_fields(c);
        free(c);
        return;
    }
    c->sock = sock;
    sock->data = c;
    h2o_buffer_consume(&sock->input, reqsize);
    int64_t now = s_mono();
    c->last_rx_ms = now;
    c->rate_ms = now;
    c->rate_tokens = RT_RATE_BURST * 1000;
    c->next = rt->conns;
    if (rt->conns)
        rt->conns->prev = c;
    rt->conns = c;
    h2o_socket_read_start(sock, s_on_read);
    if (c->state == RT_CLOSING) { /* an error was sent with the 101, and a close frame */
        c->close_at_ms = now + RT_CLOSE_WAIT_MS;
        s_close_done(c);
        return;
    }
    if (rt->shutting_down || !c->proj->p) {
        c->state = RT_OPEN;
        s_conn_close(c, 1001, "Server is shutting down");
        return;
    }
    c->state = RT_OPEN;
    c->counted = true;
    rt->nconns++;
    c->proj->nconns++;
    rt->opened++;
    gw_bus_join(rt->gw);
    if (sock->input->size)
        s_on_read(sock, NULL);
    else
        s_input_release(sock);
}

static bool
s_origin_ok(const pd_project_t *p, pd_str_t origin)
{
    if (!origin.len || !p->norigins)
        return true;
    for (size_t k = 0; k < p->norigins; k++)
        if (pd_str_eqc(origin, p->origins[k]))
            return true;
    return false;
}

int
gw_rt_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    rt_t *rt = gw->rt;
    int64_t t0 = gw_now_ns();
    const char *client_key = NULL;
    if (h2o_is_websocket_handshake(req, &client_key) != 0 || !client_key || req->version >= 0x200) {
        gw_respond_err(gw, req, GW_ROUTE_REALTIME, PD_ERR_BAD_REQUEST,
                       PD_STR("This endpoint speaks the Realtime WebSocket protocol: open it "
                              "with a WebSocket client (GET with Upgrade: websocket)."),
                       t0);
        return 0;
    }
    if (rt->shutting_down) {
        gw_respond_err(gw, req, GW_ROUTE_REALTIME, PD_ERR_UNAVAILABLE,
                       PD_STR("This gateway is shutting down. Reconnect."), t0);
        return 0;
    }
    /* a value whose encoding is bad stays raw: no project or token is spelt that way, so it
     * is refused as unknown or invalid */
    pd_str_t project = PD_STR_NULL, jwt = gw_header(req, "x-appwrite-jwt");
    gw_http_query_param(req, "project", &project);
    if (!project.len)
        project = gw_header(req, "x-appwrite-project");
    if (!jwt.len)
        gw_http_query_param(req, "jwt", &jwt);

    rt_conn_t *c = s_xcalloc(1, sizeof *c);
    c->rt = rt;
    c->roles = (char *)s_guest_roles;
    c->roles_len = sizeof s_guest_roles - 1;
    c->state = RT_UPGRADING;
    gw_ident_t id;
    char err[300];
    int code = 0;
    char msg[400];
    int rc = gw_ident_resolve(gw, &id, project, PD_STR_NULL, jwt, err, sizeof err);
    if (rc == PD_ERR_PROJECT_NOT_FOUND) {
        code = 1008;
        snprintf(msg, sizeof msg, "Missing or unknown project ID");
    } else if (rc != PD_ERR_OK) {
        code = 401;
        snprintf(msg, sizeof msg, "%s", err[0] ? err : pd_err_msg(rc));
    } else if (!s_origin_ok(id.project, gw_header(req, "origin"))) {
        code = 1008;
        pd_str_t o = gw_header(req, "origin");
        char shown[201];
        size_t k = 0;
        for (; k < o.len && k < 200; k++) /* printable ASCII only, into a JSON text frame */
            shown[k] = o.ptr[k] >= 0x20 && o.ptr[k] < 0x7f ? o.ptr[k] : '?';
        shown[k] = 0;
        snprintf(msg, sizeof msg,
                 "Invalid Origin. Register your new client (%s) as a new Web platform on your "
                 "project console dashboard",
                 shown);
    } else {
        c->proj = s_proj_get(rt, id.project);
        if (id.project->max_connections && c->proj->nconns >= id.project->max_connections) {
            code = 1013;
            snprintf(msg, sizeof msg, "Too many connections: this project allows %zu per gateway.",
                     id.project->max_connections);
        } else {
            s_conn_set_ident(c, &id);
        }
    }
    gw_ident_free(&id);

    pd_buf_t hello;
    pd_buf_init(&hello);
    pd_buf_t *j = &rt->tmp;
    pd_buf_reset(j);
    if (code) {
        rt->rejected++;
        rt->errors++;
        s_error_json(j, code, msg);
        gw_ws_frame_into(&hello, 1, j->data, j->len);
        char pl[125];
        size_t n = gw_ws_close_payload(pl, code >= 1000 && code < 5000 ? code : 1008, msg);
        gw_ws_frame_into(&hello, 8, pl, n);
        c->state = RT_CLOSING;
        c->proj = NULL;
        pd_log_debug("%s: refused a realtime connection: %s", __func__, msg);
    } else {
        pd_buf_adds(j, "{\"type\":\"connected\",\"data\":{\"channels\":[],\"subscriptions\":[],"
                       "\"user\":");
        s_user_json(j, c);
        pd_buf_adds(j, "}}");
        gw_ws_frame_into(&hello, 1, j->data, j->len);
    }
    c->hello = hello.data; /* written with the 101; freed when the upgrade completes */

    char accept[29];
    gw_ws_accept_key(client_key, accept);
    req->res.status = 101;
    req->res.reason = "Switching Protocols";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_UPGRADE, NULL, H2O_STRLIT("websocket"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("sec-websocket-accept"), 0,
                          NULL, accept, 28);
    gw_metrics_count(gw, GW_ROUTE_REALTIME, 101, t0);
    h2o_iovec_t buf = h2o_iovec_init(hello.data, hello.len);
    h2o_http1_upgrade(req, &buf, 1, s_on_upgraded, c);
    return 0;
}

/* -------------------------------------------------------------------------- fan-out */

/*  The context of the event being fanned out. */
typedef struct {
    rt_t *rt;
    const pd_msg_t *ev;
    int action;         //  PD_ACT_*
    bool prev;          //  an upsert/update with a previous state
    bool roles_changed; //  read roles differ before / after
    uint64_t rec;       //  the record's key in the connections' queues
    pd_str_t read, prev_read;
    pd_record_t rn, rp; //  record after (before, for a delete) / before the change
    pd_qrec_t qn, qp;
} rt_ev_t;

static const char *
s_act_name(int act)
{
    return act == PD_ACT_UPSERT ? "upsert" : act == PD_ACT_UPDATE ? "update" : "delete";
}

static int
s_kind_action(const rt_ev_t *e, int kind)
{
    return kind == K_LOST ? PD_ACT_DELETE : kind == K_GAINED ? PD_ACT_UPSERT : e->action;
}

/*  Which frame, if any, a connection with these roles gets. */
static int
s_kind(const rt_ev_t *e, pd_str_t roles)
{
    bool can = pd_roles_intersect(e->read, roles);
    if (!e->prev)
        return can ? K_MAIN : K_NONE;
    bool could = e->roles_changed ? pd_roles_intersect(e->prev_read, roles) : can;
    if (can && could)
        return K_MAIN;
    if (can)
        return K_GAINED;
    if (could)
        return K_LOST;
    return K_NONE;
}

/*  Realtime queries of one subscription against the kind of frame its connection gets. For
 *  the event itself, a record that matched before the change and not after it still matches
 *  (leave-the-set, decisions.md §3). */
static bool
s_query_ok(rt_ev_t *e, const rt_sub_t *s, int kind)
{
    if (!s->query)
        return true;
    switch (kind) {
    case K_MAIN:
        return pd_query_match(s->query, &e->qn) || (e->prev && pd_query_match(s->query, &e->qp));
    case K_LOST:
        return pd_query_match(s->query, &e->qp);
    case K_GAINED:
        return pd_query_match(s->query, &e->qn);
    }
    return false;
}

static void
s_consider(rt_ev_t *e, rt_sub_t *s, uint32_t mask)
{
    rt_t *rt = e->rt;
    rt_conn_t *c = s->conn;
    if (c->stamp != rt->stamp) {
        c->stamp = rt->stamp;
        c->kind =
            (uint8_t)(c->state == RT_OPEN ? s_kind(e, (pd_str_t){c->roles, c->roles_len}) : K_NONE);
        c->ev_head = -1;
    }
    if (c->kind == K_NONE || !(mask & (1u << c->kind)) || s->stamp == rt->stamp)
        return;
    s->stamp = rt->stamp;
    if (!s_query_ok(e, s, c->kind))
        return;
    if (c->ev_head < 0) {
        if (rt->nm == rt->cap_m) {
            rt->cap_m = rt->cap_m ? rt->cap_m * 2 : 256;
            rt->mconns = s_xrealloc(rt->mconns, rt->cap_m * sizeof *rt->mconns);
        }
        rt->mconns[rt->nm++] = c;
    }
    if (rt->npairs == rt->cap_pairs) {
        rt->cap_pairs = rt->cap_pairs ? rt->cap_pairs * 2 : 256;
        rt->pairs = s_xrealloc(rt->pairs, rt->cap_pairs * sizeof *rt->pairs);
    }
    rt->pairs[rt->npairs] = (rt_pair_t){s, c->ev_head};
    c->ev_head = (int32_t)rt->npairs++;
}

/*  The JSON of an event frame up to the subscription ids, once per kind per event (§6.4):
 *  events [presences.X.a, presences.*.a, presences.X, presences.*], channels [presences,
 *  presences.X, presences.a, presences.X.a], timestamp, payload. */
static pd_buf_t *
s_prefix(rt_ev_t *e, int kind)
{
    rt_t *rt = e->rt;
    pd_buf_t *b = &rt->pre[kind];
    if (rt->pre_ok[kind])
        return b;
    rt->pre_ok[kind] = true;
    pd_buf_reset(b);
    const pd_msg_t *ev = e->ev;
    const char *a = s_act_name(s_kind_action(e, kind));
    pd_str_t id = ev->s[PD_F_ID];
    int il = (int)id.len;
    const char *ip = id.ptr ? id.ptr : "";
    int64_t t = e->action == PD_ACT_DELETE ? pd_now_ms() : ev->i[PD_F_UPDATED];
    char ts[32];
    pd_time_format(t, ts);
    pd_str_t payload = kind == K_LOST ? ev->s[PD_F_PREV_BODY] : ev->s[PD_F_BODY];
    pd_buf_addf(b,
                "{\"type\":\"event\",\"data\":{\"events\":[\"presences.%.*s.%s\","
                "\"presences.*.%s\",\"presences.%.*s\",\"presences.*\"],\"channels\":["
                "\"presences\",\"presences.%.*s\",\"presences.%s\",\"presences.%.*s.%s\"],"
                "\"timestamp\":\"%s\",\"payload\":",
                il, ip, a, a, il, ip, il, ip, a, il, ip, a, ts);
    if (payload.len)
        pd_buf_add(b, payload.ptr, payload.len);
    else
        pd_buf_adds(b, "{}");
    pd_buf_adds(b, ",\"subscriptions\":[");
    return b;
}

static void
s_deliver(rt_ev_t *e)
{
    rt_t *rt = e->rt;
    static const char suffix[] = "]}}";
    for (size_t i = 0; i < rt->nm; i++) {
        rt_conn_t *c = rt->mconns[i];
        if (c->state != RT_OPEN)
            continue;
        pd_buf_t *pre = s_prefix(e, c->kind);
        size_t n = pre->len + sizeof suffix - 1, cnt = 0;
        for (int32_t k = c->ev_head; k >= 0; k = rt->pairs[k].next, cnt++)
            n += rt->pairs[k].sub->idlen + 2u;
        n += cnt - 1;
        int act = s_kind_action(e, c->kind);
        int how = act == PD_ACT_DELETE                       ? PD_CQ_DELETE
                  : act == PD_ACT_UPSERT && (!e->prev || c->kind == K_GAINED) ? PD_CQ_CREATE
                                                                 : PD_CQ_CHANGE;
        char *d = s_out_record(c, e->rec, how, 1, n);
        if (!d)
            continue;
        memcpy(d, pre->data, pre->len);
        d += pre->len;
        for (int32_t k = c->ev_head; k >= 0; k = rt->pairs[k].next) {
            const rt_sub_t *s = rt->pairs[k].sub;
            *d++ = '"';
            memcpy(d, s->data, s->idlen);
            d += s->idlen;
            *d++ = '"';
            if (rt->pairs[k].next >= 0)
                *d++ = ',';
        }
        memcpy(d, suffix, sizeof suffix - 1);
        rt->frames++;
        rt->frame_bytes += n;
    }
}

static void s_chan_add(rt_chan_t *v, size_t *n, uint32_t mask, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
s_chan_add(rt_chan_t *v, size_t *n, uint32_t mask, const char *fmt, ...)
{
    char s[80];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof s)
        return;
    for (size_t i = 0; i < *n; i++)
        if (v[i].len == (uint32_t)len && memcmp(v[i].s, s, (size_t)len) == 0) {
            v[i].mask |= mask;
            return;
        }
    memcpy(v[*n].s, s, (size_t)len + 1);
    v[*n].len = (uint32_t)len;
    v[*n].mask = mask;
    (*n)++;
}

/*  The segment of a Presence JSON from "$permissions" to "userId" (for comparing). */
static pd_str_t
s_perms_segment(pd_str_t body)
{
    static const char a[] = "\"$permissions\":", z[] = ",\"userId\":";
    const char *p = NULL, *q = NULL, *end = body.ptr + body.len;
    for (const char *s = body.ptr; s && s + sizeof a - 1 <= end; s++)
        if (memcmp(s, a, sizeof a - 1) == 0) {
            p = s;
            break;
        }
    for (const char *s = p; s && s + sizeof z - 1 <= end; s++)
        if (memcmp(s, z, sizeof z - 1) == 0) {
            q = s;
            break;
        }
    return p && q ? (pd_str_t){p, (size_t)(q - p)} : PD_STR_NULL;
}

/*  A lease renewal of a connection-bound presence: an update of a realtime record that
 *  changed nothing a client sees but expiresAt ($updatedAt moves with every write). */
static bool
s_is_renewal(const pd_msg_t *ev)
{
    return ev->i[PD_F_ACTION] == PD_ACT_UPDATE && pd_msg_has(ev, PD_F_PREV_BODY) &&
           pd_str_eqc(ev->s[PD_F_SOURCE], "realtime") &&
           pd_str_eq(ev->s[PD_F_STATUS], ev->s[PD_F_PREV_STATUS]) &&
           pd_str_eq(ev->s[PD_F_META_JSON], ev->s[PD_F_PREV_META_JSON]) &&
           pd_str_eq(ev->s[PD_F_READ_ROLES], ev->s[PD_F_PREV_READ_ROLES]) &&
           pd_str_eq(ev->s[PD_F_USER], ev->s[PD_F_PREV_USER]) &&
           pd_str_eq(s_perms_segment(ev->s[PD_F_BODY]), s_perms_segment(ev->s[PD_F_PREV_BODY]));
}

/*  Per store node, events come in SEQ order (one PUB socket, ZeroMQ keeps the order); a skip
 *  means the bus dropped events (a subscriber's high-water mark). GEN changes when a store
 *  node restarts (its SEQ starts again). */
/*  Tracks each store node's sequence numbers. Returns false for an event already seen: a
 *  restarted store node publishes its last second of events again (pd_outbox.h), and those
 *  that reached us before it died are dropped here. */
static bool
s_check_seq(rt_t *rt, const pd_msg_t *ev)
{
    int64_t node = ev->i[PD_F_NODE], seq = ev->i[PD_F_SEQ], gen = ev->i[PD_F_GEN];
    if (node < 0 || node > 64 || !pd_msg_has(ev, PD_F_SEQ))
        return true;
    rt_seq_t *st = &rt->seqs[node];
    if (st->seen && st->gen == gen && seq <= st->seq) {
        rt->replayed++;
        return false;
    }
    if (st->seen && st->gen != gen && gen < st->gen) {
        rt->replayed++; //  an older generation, after the newer one was seen
        return false;
    }
    if (st->seen && st->gen == gen && seq != st->seq + 1) {
        if (seq > st->seq + 1) {
            rt->gaps++;
            rt->missed += (uint64_t)(seq - st->seq - 1);
            pd_log_warn("%s: gap in the events of store %lld: expected seq %lld, got %lld (%lld "
                        "missed)",
                        __func__, (long long)node, (long long)(st->seq + 1), (long long)seq,
                        (long long)(seq - st->seq - 1));
        } else {
            pd_log_warn("%s: store %lld sent seq %lld after %lld", __func__, (long long)node,
                        (long long)seq, (long long)st->seq);
        }
    } else if (st->seen && st->gen != gen) {
        pd_log_info("%s: store %lld restarted (generation %lld)", __func__, (long long)node,
                    (long long)gen);
    }
    st->seen = true;
    st->gen = gen;
    st->seq = seq;
    return true;
}

/*  Called for each bus frame. With no WebSocket open and no presence held, nobody here needs
 *  the bus: the frame is dropped unread (a REST-only gateway pays the copy, not the decode).
 *  The sequence trackers forget what they saw, so that the first frame read afterwards is not
 *  a "gap". */
bool
gw_rt_quiet(gw_t *gw)
{
    rt_t *rt = gw->rt;
    (void)gw;
    rt->bus_frames++;
    if (rt->nconns || rt->holds.n) {
        rt->skipping = false;
        return false;
    }
    if (!rt->skipping) {
        rt->skipping = true;
        for (size_t i = 0; i < sizeof rt->seqs / sizeof *rt->seqs; i++)
            rt->seqs[i].seen = false;
    }
    return true;
}

bool
gw_rt_idle(const gw_t *gw)
{
    const rt_t *rt = gw->rt;
    (void)gw;
    return !rt->nconns && !rt->holds.n;
}

/*  A new SUB socket has its first frame: the sequence trackers start again, and the messages
 *  held since the connections opened are handled now. */
void
gw_rt_bus_live(gw_t *gw)
{
    rt_t *rt = gw->rt;
    (void)gw;
    for (size_t i = 0; i < sizeof rt->seqs / sizeof *rt->seqs; i++)
        rt->seqs[i].seen = false;
    for (rt_conn_t *c = rt->conns, *next; c; c = next) {
        next = c->next;
        if (!c->bus_wait)
            continue;
        c->bus_wait = false;
        if (c->sock && c->state != RT_DEAD) {
            h2o_socket_read_start(c->sock, s_on_read);
            s_on_read(c->sock, NULL);
        }
    }
}

void
gw_rt_on_bus(gw_t *gw, const pd_msg_t *ev)
{
    rt_t *rt = gw->rt;
    (void)gw;
    rt->events++;
    if (!s_check_seq(rt, ev))
        return;
    s_hold_on_event(rt, ev);
    rt_proj_t *proj = s_proj_find(rt, ev->s[PD_F_PROJECT]);
    if (!proj || proj->nconns == 0 || !ev->s[PD_F_ID].len)
        return;
    if (s_is_renewal(ev)) {
        rt->suppressed++;
        return;
    }
    rt_ev_t e;
    memset(&e, 0, sizeof e);
    e.rt = rt;
    e.ev = ev;
    e.rec = pd_hash2_keyed(rt->rec_key, ev->s[PD_F_PROJECT], ev->s[PD_F_ID]);
    e.rec += !e.rec; /* 0 means no record */
    e.action = (int)ev->i[PD_F_ACTION];
    if (e.action < PD_ACT_UPSERT || e.action > PD_ACT_DELETE)
        return;
    e.prev = e.action != PD_ACT_DELETE && pd_msg_has(ev, PD_F_PREV_BODY);
    e.read = ev->s[PD_F_READ_ROLES];
    e.prev_read = ev->s[PD_F_PREV_READ_ROLES];
    e.roles_changed = e.prev && !pd_str_eq(e.read, e.prev_read);
    pd_record_t *r = &e.rn;
    r->project = ev->s[PD_F_PROJECT];
    r->id = ev->s[PD_F_ID];
    r->user_id = ev->s[PD_F_USER];
    r->status = ev->s[PD_F_STATUS];
    r->status_json = ev->s[PD_F_STATUS_JSON];
    r->source = ev->s[PD_F_SOURCE];
    r->meta_json = ev->s[PD_F_META_JSON];
    r->read_roles = e.read;
    r->created_ms = ev->i[PD_F_CREATED];
    r->updated_ms = ev->i[PD_F_UPDATED];
    r->expires_ms = ev->i[PD_F_EXPIRES];
    r->version = (uint64_t)ev->i[PD_F_VERSION];
    r->json = ev->s[PD_F_BODY];
    if (e.prev) {
        e.rp = e.rn;
        e.rp.user_id = ev->s[PD_F_PREV_USER];
        e.rp.status = ev->s[PD_F_PREV_STATUS];
        e.rp.status_json = PD_STR_NULL;
        e.rp.meta_json = ev->s[PD_F_PREV_META_JSON];
        e.rp.read_roles = e.prev_read;
        e.rp.expires_ms = ev->i[PD_F_PREV_EXPIRES];
        e.rp.updated_ms = s_body_time(ev->s[PD_F_PREV_BODY], "$updatedAt");
        e.rp.json = ev->s[PD_F_PREV_BODY];
    }
    pd_qrec_init(&e.qn, &e.rn);
    pd_qrec_init(&e.qp, &e.rp);

    /* The channels this event can reach, each with the kinds of frame it belongs to. */
    rt_chan_t ch[8];
    size_t nch = 0;
    pd_str_t id = ev->s[PD_F_ID];
    uint32_t all = 1u << K_MAIN | 1u << K_LOST | 1u << K_GAINED;
    s_chan_add(ch, &nch, all, "presences");
    s_chan_add(ch, &nch, all, "presences.%.*s", (int)id.len, id.ptr);
    const char *a = s_act_name(e.action);
    s_chan_add(ch, &nch, 1u << K_MAIN, "presences.%s", a);
    s_chan_add(ch, &nch, 1u << K_MAIN, "presences.%.*s.%s", (int)id.len, id.ptr, a);
    if (e.roles_changed) {
        s_chan_add(ch, &nch, 1u << K_LOST, "presences.delete");
        s_chan_add(ch, &nch, 1u << K_LOST, "presences.%.*s.delete", (int)id.len, id.ptr);
        s_chan_add(ch, &nch, 1u << K_GAINED, "presences.upsert");
        s_chan_add(ch, &nch, 1u << K_GAINED, "presences.%.*s.upsert", (int)id.len, id.ptr);
    }

    if (++rt->stamp == 0)
        rt->stamp = 1;
    rt->npairs = rt->nm = 0;
    memset(rt->pre_ok, 0, sizeof rt->pre_ok);
    pd_str_t pid = ev->s[PD_F_PROJECT];
    for (int pass = 0; pass < (e.roles_changed ? 2 : 1); pass++) {
        pd_str_t roles = pass ? e.prev_read : e.read;
        for (pd_str_t role = pd_list_first(roles); role.ptr; role = pd_list_next(roles, role)) {
            if (pass && pd_list_has(e.read, role))
                continue;
            for (size_t k = 0; k < nch; k++) {
                rt_bucket_t *b = s_bucket_get(rt, pid, (pd_str_t){ch[k].s, ch[k].len}, role, false);
                for (rt_node_t *nd = b ? b->head : NULL; nd; nd = nd->next)
                    s_consider(&e, nd->sub, ch[k].mask);
            }
        }
    }
    s_deliver(&e);
    pd_qrec_clear(&e.qn);
    pd_qrec_clear(&e.qp);
}

/* -------------------------------------------------------------------------- housekeeping */

static void
s_drop_to_guest(rt_conn_t *c)
{
    s_conn_unhold_all(c);
    c->user[0] = 0;
    c->exp_ms = 0;
    s_conn_set_roles(c, s_guest_roles, sizeof s_guest_roles - 1);
    s_send_error(c, 401,
                 "The JWT of this connection has expired: it continues as a guest, and its "
                 "subscriptions now receive only what guests may read. Send a fresh token in an "
                 "`authentication` message ({\"type\":\"authentication\",\"data\":{\"jwt\":"
                 "\"...\"}}) to restore the user's access.");
}

static void
s_sweep(rt_t *rt, int64_t now)
{
    int64_t wall = pd_now_ms();
    rt_conn_t *c = rt->conns;
    while (c) {
        rt_conn_t *next = c->next;
        if (c->wbuf && c->write_ms && now - c->write_ms >= rt->stall_ms) {
            rt->slow++;
            pd_log_info("disconnecting a slow consumer: no write progress for %lld ms (%zu bytes "
                        "pending)",
                        (long long)(now - c->write_ms), pd_cqueue_bytes(&c->q) + c->wlen);
            s_conn_kill(c, "slow consumer");
        } else if (c->state == RT_CLOSING) {
            if (now >= c->close_at_ms)
                s_conn_kill(c, "close timeout");
        } else if (c->state == RT_OPEN) {
            if (now - c->last_rx_ms >= rt->idle_ms) {
                rt->idle++;
                s_conn_close(c, 1000, "Idle timeout");
            } else if (c->exp_ms && wall >= c->exp_ms) {
                s_drop_to_guest(c);
            }
        }
        c = next;
    }
}

static void
s_holds_tick(gw_t *gw, int64_t now)
{
    rt_t *rt = gw->rt;
    int64_t wall = pd_now_ms();
    for (size_t i = 0; rt->holds.mask && i <= rt->holds.mask; i++) {
        pd_mapent_t *e = rt->holds.v[i];
        while (e) {
            pd_mapent_t *next = e->next;
            rt_hold_t *h = (rt_hold_t *)e;
            if (h->refs == 0 && h->release_at && now >= h->release_at) {
                if (!h->dead) {
                    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_RELEASE, 0);
                    pd_msgw_str(w, PD_F_PROJECT, h->proj->id, strlen(h->proj->id));
                    pd_msgw_str(w, PD_F_ID, h->id, strlen(h->id));
                    pd_msgw_str(w, PD_F_CONN, gw->ident, strlen(gw->ident));
                    pd_msgw_int(w, PD_F_NOW, wall);
                    gw_send_end(gw);
                    rt->releases++;
                }
                s_hold_free(rt, h);
            } else if (!h->dead && now >= h->renew_at) {
                pd_msgw_t *w = gw_send_begin(gw, PD_MSG_UPDATE, 0);
                pd_msgw_str(w, PD_F_PROJECT, h->proj->id, strlen(h->proj->id));
                pd_msgw_str(w, PD_F_ID, h->id, strlen(h->id));
                pd_msgw_int(w, PD_F_EXPIRES, wall + RT_LEASE_MS);
                pd_msgw_int(w, PD_F_FLAGS, PD_FL_BYPASS | PD_FL_HAS_EXPIRES | PD_FL_HOLD);
                pd_msgw_str(w, PD_F_CONN, gw->ident, strlen(gw->ident));
                pd_msgw_int(w, PD_F_NOW, wall);
                gw_send_end(gw);
                h->renew_at = now + RT_RENEW_MS;
                rt->renewals++;
            }
            e = next;
        }
    }
}

void
gw_rt_tick(gw_t *gw)
{
    rt_t *rt = gw->rt;
    int64_t now = s_mono();
    s_holds_tick(gw, now);
    rt_op_t *op = rt->ops;
    while (op) {
        rt_op_t *next = op->next;
        if (now >= op->deadline_ms) {
            if (op->conn && op->conn->state == RT_OPEN)
                s_send_error(op->conn, 503, pd_err_msg(PD_ERR_TIMEOUT));
            s_op_free(op);
        }
        op = next;
    }
    if (now >= rt->next_sweep_ms) {
        rt->next_sweep_ms = now + RT_SWEEP_MS;
        s_sweep(rt, now);
    }
}

/* -------------------------------------------------------------------------- lifecycle */

void
gw_rt_init(gw_t *gw)
{
    rt_t *rt = s_xcalloc(1, sizeof *rt);
    rt->gw = gw;
    gw->rt = rt;
    rt->flush_entry.cb = s_on_flush;
    pd_map_init(&rt->buckets);
    pd_map_init(&rt->holds);
    randombytes_buf(rt->rec_key, sizeof rt->rec_key);
    pd_buf_init(&rt->key);
    pd_buf_init(&rt->tmp);
    for (int k = 0; k < K__COUNT; k++)
        pd_buf_init(&rt->pre[k]);
    rt->max_queue = RT_QUEUE_DEFAULT;
    rt->idle_ms = RT_IDLE_DEFAULT_S * 1000LL;
    rt->stall_ms = (gw->cfg->ws_stall_timeout > 0 ? gw->cfg->ws_stall_timeout
                                                   : RT_STALL_DEFAULT_S) * 1000LL;
    /* --ws-max-queue / --ws-idle-timeout (or PRESENCED_WS_MAX_QUEUE / _IDLE_TIMEOUT) */
    if (gw->cfg->ws_max_queue >= 4096)
        rt->max_queue = gw->cfg->ws_max_queue;
    if (gw->cfg->ws_idle_timeout > 0)
        rt->idle_ms = gw->cfg->ws_idle_timeout * 1000LL;
}

void
gw_rt_shutdown(gw_t *gw)
{
    rt_t *rt = gw->rt;
    (void)gw;
    rt->shutting_down = true;
    /* Clients reconnect to another gateway and re-send their presence there; our holds are
     * not released (their lease covers the switch). The close frames are written now: the
     * loop may not turn again. */
    rt_conn_t *c = rt->conns;
    while (c) {
        rt_conn_t *next = c->next;
        if (c->state == RT_OPEN) {
            s_conn_close(c, 1012, "Service restart"); /* IANA 1012: reconnect (elsewhere) */
            s_conn_write(c);
        }
        c = next;
    }
}

void
gw_rt_on_reload(gw_t *gw)
{
    rt_t *rt = gw->rt;
    for (rt_proj_t *p = rt->projs; p; p = p->next)
        p->p = pd_projects_find(&gw->projects, pd_str(p->id));
    rt_conn_t *c = rt->conns;
    while (c) {
        rt_conn_t *next = c->next;
        if (c->state == RT_OPEN && !c->proj->p) {
            s_send_error(c, 1008, "Missing or unknown project ID");
            s_conn_close(c, 1008, "Missing or unknown project ID");
        }
        c = next;
    }
}

void
gw_rt_metrics(gw_t *gw, pd_buf_t *b)
{
    rt_t *rt = gw->rt;
    int node = gw->cfg->node;
    size_t held = 0;
    for (size_t i = 0; rt->holds.mask && i <= rt->holds.mask; i++)
        for (pd_mapent_t *e = rt->holds.v[i]; e; e = e->next)
            held += !((rt_hold_t *)e)->dead;
#define G(name, help, v)                                                                           \
    pd_buf_addf(                                                                                   \
        b, "# HELP " name " " help "\n# TYPE " name " gauge\n" name "{gateway=\"%d\"} %llu\n",     \
        node, (unsigned long long)(v))
#define C(name, help, v)                                                                           \
    pd_buf_addf(                                                                                   \
        b, "# HELP " name " " help "\n# TYPE " name " counter\n" name "{gateway=\"%d\"} %llu\n",   \
        node, (unsigned long long)(v))
    G("presenced_realtime_connections", "Open WebSocket connections.", rt->nconns);
    G("presenced_realtime_subscriptions", "Subscriptions of the open connections.", rt->nsubs);
    G("presenced_realtime_index_buckets", "(project, channel, role) keys of the index.",
      rt->buckets.n);
    G("presenced_realtime_held_presences", "Connection-bound presences this gateway holds.", held);
    C("presenced_realtime_connections_total", "WebSocket connections opened.", rt->opened);
    C("presenced_realtime_rejected_total", "WebSocket connections refused at open.", rt->rejected);
    C("presenced_realtime_messages_total", "Client messages received.", rt->messages);
    C("presenced_realtime_errors_total", "Error messages sent to clients.", rt->errors);
    C("presenced_realtime_bus_frames_total", "Event batches received from the bus.",
      rt->bus_frames);
    C("presenced_realtime_bus_replayed_total",
      "Events a restarted store node published again that this gateway already had.",
      rt->replayed);
    C("presenced_realtime_bus_events_total",
      "Events decoded from the bus (none while the gateway has no connection).", rt->events);
    C("presenced_realtime_renewal_events_total", "Lease renewals not sent to subscribers.",
      rt->suppressed);
    C("presenced_realtime_event_frames_total", "Event frames queued to connections.", rt->frames);
    C("presenced_realtime_conflated_total",
      "Queued event frames a newer event of the same record replaced, or a delete cancelled.",
      rt->conflated);
    C("presenced_realtime_event_bytes_total", "Bytes of event frames queued to connections.",
      rt->frame_bytes);
    C("presenced_realtime_slow_disconnects_total",
      "Connections dropped as slow consumers (no write progress for --ws-stall-timeout, or "
      "pending output over --ws-max-queue).",
      rt->slow);
    C("presenced_realtime_idle_timeouts_total", "Connections closed for idleness.", rt->idle);
    C("presenced_realtime_lease_renewals_total", "Lease renewals sent.", rt->renewals);
    C("presenced_realtime_releases_total", "Holds released (last socket gone, grace over).",
      rt->releases);
    C("presenced_bus_gaps_total", "Skips in a store node's event sequence.", rt->gaps);
    C("presenced_bus_missed_events_total", "Events lost in those skips.", rt->missed);
#undef G
#undef C
}
