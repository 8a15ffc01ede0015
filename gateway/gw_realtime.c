/*  gw_realtime — Appwrite's Realtime protocol (appwrite-protocol.md §6) on its own h2o path,
 *  /v1/realtime: opening, messages, connection-bound presences (holds and leases), and the bus
 *  events this gateway receives, checked and handed to the fan-out. Its state is the gateway's
 *  (gw->rt, an rt_t). Layers, each calling only downward (upward through callbacks):
 *    gw_realtime (this protocol) -> gw_fanout (subscription index, event -> frames)
 *                                -> gw_ws (RFC 6455 connections, output queues, slow consumers)
 *  and gw_http for the query string. A connection is an rt_conn_t: its gw_ws_conn_t first (the
 *  WebSocket layer allocates and frees it), then its fan-out part and the protocol's state.
 *
 *  Opening (§6.1). Project from ?project= (or X-Appwrite-Project), JWT from X-Appwrite-JWT
 *  (or ?jwt=). Errors during open are sent as {"type":"error",...} in the same write as the
 *  101, followed by a close frame: unknown project, bad origin → code 1008, close 1008; bad
 *  JWT → code 401, close 1008. 401 is not a valid WebSocket close code (RFC 6455 §7.4), so the
 *  close carries 1008 (policy violation), which also stops the SDK from reconnecting with a
 *  token that cannot become valid. Then `connected`, with an Account-like user object when a
 *  JWT was given. No client message is handled before the bus is live (gw_bus_join): a
 *  subscription must not miss the events that follow its response.
 *
 *  Events. Every gateway receives every EVENT of the bus. Each is checked against its store
 *  node's sequence (a restarted node publishes its last second again: those already seen are
 *  dropped), updates the holds, is dropped when it is a lease renewal (it changed nothing a
 *  client sees), is decoded once with the record codec (pd_record_read) and fanned out. Events
 *  the bus lost (a skip in a node's sequence) are asked again of their store node, and the
 *  node's newer events wait for them; when they are gone, subscribers are closed with 1012
 *  ("resync", below).
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
 *  1000 presence channels and 64 KiB of ids, channels and queries in all, messages of at most
 *  64,000 bytes (error 1009, then close 1009), 10 messages per second on average with bursts of
 *  100 (error 1013, message dropped), an idle timeout (--ws-idle-timeout, default 90 s: the SDK
 *  pings every 20 s), and the WebSocket layer's output bounds (--ws-max-queue, default 16 MiB,
 *  and --ws-stall-timeout, default 10 s without write progress). A JWT that expires while
 *  connected drops the connection to a guest: it is told (error 401), its subscriptions are
 *  re-evaluated with the guest roles, and its connection-bound presences are released. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <sodium.h>

#include "gw.h"
#include "gw_fanout.h"
#include "gw_http.h"
#include "gw_replica.h"
#include "gw_supabase.h"
#include "gw_ws.h"

#include "pd_err.h"
#include "pd_log.h"
#include "pd_map.h"
#include "pd_query.h"
#include "pd_record.h"
#include "pd_rtmsg.h"
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
#define RT_SWEEP_MS 1000           //  idle / expiry sweep period
#define RT_RATE_BURST 100          //  messages in a burst
#define RT_RATE_PER_S 10           //  sustained messages per second
#define RT_RESYNC_MS 5000          //  missing events not back by then: fall back (1012)
#define RT_RESYNC_RETRY_MS 500     //  the request is sent again this often (a link reconnecting)
#define RT_HELD_MAX (16u << 20)    //  bytes of a node's newer events held during its resync

static const char s_select_all[] = "{\"method\":\"select\",\"values\":[\"*\"]}";

typedef struct rt_conn rt_conn_t;
typedef struct rt rt_t;

/*  A project some connection used. Never freed (projects are few). */
typedef struct rt_proj {
    struct rt_proj *next;
    const pd_project_t *p; //  NULL once a reload dropped the project
    uint32_t nconns;       //  open connections of this gateway
    char id[37];
} rt_proj_t;

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
    gw_ws_conn_t ws;     //  first: the WebSocket layer allocates the struct
    gw_fo_conn_t fo;     //  its subscriptions and roles
    rt_t *rt;
    rt_proj_t *proj;
    rt_hold_t **holds;
    int64_t exp_ms;      //  token expiry (wall ms), 0 for guests
    pd_rate_t rate;      //  messages: RT_RATE_BURST, refilled at RT_RATE_PER_S
    uint8_t nholds;
    bool counted;
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

/*  A store node's event sequence, as this gateway has handled it ("resync", below). */
typedef struct {
    int64_t gen;
    int64_t seq;         //  the last event handled (or given up on)
    bool seen;
    bool resync;         //  missing events asked of the node (st_replay.h)
    bool ready;          //  resync over: its held messages wait for s_release
    int64_t want;        //  ... those up to this seq (INT64_MAX: the rest of generation gen)
    int64_t next_gen;    //  ... the generation that follows it (its SEQ starts at 1)
    int64_t deadline_ms; //  mono: given up then
    int64_t retry_ms;    //  mono: the request is sent again then
    uint64_t rid;        //  of the request in flight
    pd_msgw_t bufs[2];   //  bus messages of the node held meanwhile (bufs[hi]), as received,
    int hi;              //  and those being handled (bufs[!hi])
} rt_seq_t;

/*  The realtime state of one gateway (gw->rt). */
struct rt {
    gw_t *gw;
    gw_ws_ctx_t ws;   //  the WebSocket connections of /v1/realtime
    gw_fo_t fo;       //  their subscriptions
    size_t nconns;    //  open connections
    bool shutting_down;
    rt_proj_t *projs;
    pd_map_t holds;
    rt_op_t *ops;
    int64_t next_sweep_ms;
    pd_buf_t tmp; //  scratch: one frame's JSON
    /* store node sequences */
    rt_seq_t seqs[65];
    uint64_t bus_frames; //  bus frames received
    bool skipping;       //  quiet: bus frames are dropped unread (gw_rt_quiet)
    uint64_t replayed;   //  events dropped as already seen
    bool releasing;      //  s_release is handling held messages
    uint64_t resync_rid;
    uint64_t resync_ok, resync_failed, resync_events, resync_closed;
    /* metrics */
    uint64_t events, suppressed, messages, errors, renewals, releases, gaps, missed, opened,
        rejected;
};

static rt_conn_t *
s_conn(gw_ws_conn_t *ws)
{
    return (rt_conn_t *)ws; /* ws is the first member */
}

/* -------------------------------------------------------------------------- small helpers */

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
        p = pd_xcalloc(1, sizeof *p);
        snprintf(p->id, sizeof p->id, "%s", proj->id);
        p->next = rt->projs;
        rt->projs = p;
    }
    p->p = proj;
    return p;
}

/* -------------------------------------------------------------------------- output */

static void
s_send_buf(rt_conn_t *c, const pd_buf_t *b)
{
    gw_ws_send(&c->ws, b->data, b->len);
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
        h->release_at = pd_mono_ms() + RT_GRACE_MS;
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
s_hold_on_event(rt_t *rt, int action, const pd_record_t *r)
{
    rt_hold_t *h = s_hold_find(rt, r->project, r->id);
    if (!h)
        return;
    if (s_hold_older(h, r->created_ms, r->version))
        return;
    h->created_ms = r->created_ms;
    h->version = r->version;
    bool mine = action != PD_ACT_DELETE && pd_list_has(r->conn, pd_str(rt->gw->ident));
    if (mine)
        return;
    h->dead = true;
    if (h->refs == 0)
        s_hold_free(rt, h);
}

/* -------------------------------------------------------------------------- connections */

static void
s_conn_set_ident(rt_conn_t *c, const gw_ident_t *id)
{
    rt_t *rt = c->rt;
    if (id->kind == GW_ID_USER) {
        snprintf(c->user, sizeof c->user, "%s", id->user_id);
        c->exp_ms = id->exp * 1000;
        gw_fo_conn_roles(&rt->fo, &c->fo, id->roles.data, id->roles.len);
    } else {
        c->user[0] = 0;
        c->exp_ms = 0;
        gw_fo_conn_roles(&rt->fo, &c->fo, gw_fo_guest_roles, GW_FO_GUEST_ROLES_LEN);
    }
}

/*  gw_ws: the connection stops being open. Ends everything it takes part in: subscriptions,
 *  holds, waiting ops. */
static void
s_on_detach(gw_ws_conn_t *ws)
{
    rt_conn_t *c = s_conn(ws);
    rt_t *rt = c->rt;
    gw_fo_conn_clear(&rt->fo, &c->fo);
    s_conn_unhold_all(c);
    for (rt_op_t *op = rt->ops; op; op = op->next)
        if (op->conn == c)
            op->conn = NULL;
    if (c->counted) {
        rt->nconns--;
        c->proj->nconns--;
        c->counted = false;
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
    pd_str_t roles = {c->fo.roles, c->fo.roles_len};
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
    char(*ids)[37] = pd_xcalloc(n, sizeof *ids);
    pd_buf_t *chans = pd_xcalloc(n, sizeof *chans);
    size_t *nch = pd_xcalloc(n, sizeof *nch);
    bool *skip = pd_xcalloc(n, sizeof *skip);
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
    size_t nsubs = c->fo.nsubs, nchan = c->fo.nchan, bytes = c->fo.sub_bytes;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = i + 1; k < n && !skip[i]; k++)
            skip[i] = strcmp(ids[i], ids[k]) == 0;
        if (skip[i])
            continue;
        gw_fo_sub_t **old = gw_fo_sub_find(&c->fo, pd_str(ids[i]));
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
        pd_query_t *q = m->rows[i].query;
        m->rows[i].query = NULL;
        gw_fo_sub_add(&rt->fo, &c->fo, pd_str(ids[i]), (pd_str_t){chans[i].data, chans[i].len},
                      nch[i], q, s_row_bytes(&m->rows[i], ids[i], &chans[i]));
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
        gw_fo_sub_t **pp = gw_fo_sub_find(&c->fo, m->ids[i]);
        if (pp)
            gw_fo_sub_remove(&rt->fo, &c->fo, pp);
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
        if (c && c->ws.state == GW_WS_OPEN) {
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
        h = pd_xcalloc(1, sizeof *h);
        h->h.hash = s_hold_hash(rt, pd_str(op->proj->id), id);
        h->proj = op->proj;
        memcpy(h->id, id.ptr, id.len);
        pd_map_add(&rt->holds, &h->h);
    }
    if (h) {
        int64_t created = pd_record_body_time(body, "$createdAt");
        uint64_t version = (uint64_t)m->i[PD_F_VERSION];
        if (!s_hold_older(h, created, version)) {
            h->created_ms = created;
            h->version = version;
        }
        h->dead = false;
        h->renew_at = pd_mono_ms() + RT_RENEW_MS;
        bool held = false;
        for (uint8_t i = 0; c && i < c->nholds; i++)
            held |= c->holds[i] == h;
        if (c && c->ws.state == GW_WS_OPEN && !held && c->nholds < RT_MAX_HOLDS) {
            c->holds = pd_xrealloc(c->holds, (c->nholds + 1u) * sizeof *c->holds);
            c->holds[c->nholds++] = h;
            h->refs++;
            h->release_at = 0;
        } else if (h->refs == 0 && !h->release_at) {
            h->release_at = pd_mono_ms() + RT_GRACE_MS; /* the socket is gone already */
        }
    }
    if (c && c->ws.state == GW_WS_OPEN) {
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
    pd_str_t roles = {c->fo.roles, c->fo.roles_len};
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
    rt_op_t *op = pd_xcalloc(1, sizeof *op);
    h2o_mem_init_pool(&op->req.pool);
    gw_pending_t *p = gw_pending_new(gw, &op->req, GW_ROUTE_REALTIME, s_on_presence_reply);
    p->req = NULL; /* no HTTP response behind it: the gateway only calls on_reply (p->user) */
    p->user = op;
    op->p = p;
    op->conn = c;
    op->rt = rt;
    op->proj = c->proj;
    op->deadline_ms = pd_mono_ms() + gw->cfg->request_timeout_ms + 1000;
    op->next = rt->ops;
    if (rt->ops)
        rt->ops->prev = op;
    rt->ops = op;

    int64_t now = pd_now_ms();
    const pd_perms_t *pm = &m->perms;
    pd_record_t rec = {
        .project = pd_str(c->proj->id),
        .id = id,
        .user_id = pd_str(c->user),
        .status = m->status,
        .status_json = {m->status_json.data, m->status_json.len},
        .source = PD_STR("realtime"),
        .meta_json = m->has_meta ? (pd_str_t){m->meta_json.data, m->meta_json.len} : PD_STR("{}"),
        .perms_json = pm->json.data ? (pd_str_t){pm->json.data, pm->json.len} : PD_STR("[]"),
        .read_roles = {pm->read.data, pm->read.len},
        .update_roles = {pm->update.data, pm->update.len},
        .delete_roles = {pm->del.data, pm->del.len},
        .conn = pd_str(gw->ident),
        .expires_ms = now + RT_LEASE_MS,
    };
    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_UPSERT, p->rid);
    pd_record_write(w, &rec, PD_REC_WRITE);
    if (c->proj->p && c->proj->p->max_records)
        pd_msgw_int(w, PD_F_MAX_RECORDS, (int64_t)c->proj->p->max_records);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_HOLD);
    pd_msgw_str(w, PD_F_ROLES, c->fo.roles, c->fo.roles_len);
    pd_msgw_int(w, PD_F_NOW, now);
    gw_send_end(gw);
}

static void
s_on_message(gw_ws_conn_t *ws, int op, const char *p, size_t n)
{
    rt_conn_t *c = s_conn(ws);
    rt_t *rt = c->rt;
    rt->messages++;
    if (op == GW_WS_BINARY) {
        s_send_error(c, PD_RTMSG_EFORMAT,
                     "Binary messages are not supported: send each message as JSON text.");
        return;
    }
    if (!pd_rate_take(&c->rate, RT_RATE_PER_S, RT_RATE_BURST, pd_mono_ms())) {
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
        gw_ws_send(&c->ws, "{\"type\":\"pong\"}", 15);
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


static void
s_on_oversize(gw_ws_conn_t *ws)
{
    s_send_errorf(s_conn(ws), PD_RTMSG_ETOOBIG,
                  "Message is too big: a message may be at most %d bytes.", PD_RTMSG_MAX_BYTES);
}

/*  No message is handled before the events it may subscribe to can arrive. */
static bool
s_may_read(gw_ws_conn_t *ws)
{
    return gw_bus_live(s_conn(ws)->rt->gw);
}

/* -------------------------------------------------------------------------- opening */

static void
s_on_open(gw_ws_conn_t *ws)
{
    rt_conn_t *c = s_conn(ws);
    rt_t *rt = c->rt;
    pd_rate_init(&c->rate, RT_RATE_BURST, pd_mono_ms());
    if (rt->shutting_down || !c->proj->p) {
        gw_ws_close(ws, 1001, "Server is shutting down");
        return;
    }
    c->counted = true;
    rt->nconns++;
    c->proj->nconns++;
    rt->opened++;
    gw_bus_join(rt->gw);
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

    rt_conn_t *c = (rt_conn_t *)gw_ws_new(&rt->ws, sizeof *c);
    c->rt = rt;
    gw_fo_conn_init(&c->fo, &c->ws, "");
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
        c->fo.project = c->proj->id;
        if (id.project->max_connections && c->proj->nconns >= id.project->max_connections) {
            code = 1013;
            snprintf(msg, sizeof msg, "Too many connections: this project allows %zu per gateway.",
                     id.project->max_connections);
        } else {
            s_conn_set_ident(c, &id);
        }
    }
    gw_ident_free(&id);

    /* the first frames go out with the 101 */
    pd_buf_t *j = &rt->tmp;
    pd_buf_reset(j);
    if (code) {
        rt->rejected++;
        rt->errors++;
        s_error_json(j, code, msg);
        char *d = gw_ws_out(&c->ws, GW_WS_TEXT, j->len);
        memcpy(d, j->data, j->len);
        gw_ws_refuse(&c->ws, code >= 1000 && code < 5000 ? code : 1008, msg);
        pd_log_debug("%s: refused a realtime connection: %s", __func__, msg);
    } else {
        pd_buf_adds(j, "{\"type\":\"connected\",\"data\":{\"channels\":[],\"subscriptions\":[],"
                       "\"user\":");
        s_user_json(j, c);
        pd_buf_adds(j, "}}");
        char *d = gw_ws_out(&c->ws, GW_WS_TEXT, j->len);
        memcpy(d, j->data, j->len);
    }
    gw_metrics_count(gw, GW_ROUTE_REALTIME, 101, t0);
    gw_ws_upgrade(&c->ws, req, client_key);
    return 0;
}

/* -------------------------------------------------------------------------- bus events */

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
           pd_list_eq(ev->s[PD_F_READ_ROLES], ev->s[PD_F_PREV_READ_ROLES]) &&
           pd_str_eq(ev->s[PD_F_USER], ev->s[PD_F_PREV_USER]) &&
           pd_str_eq(s_perms_segment(ev->s[PD_F_BODY]), s_perms_segment(ev->s[PD_F_PREV_BODY]));
}

static void s_deliver(rt_t *rt, const pd_msg_t *ev);

/*  Resync. Per store node, events come in SEQ order (one PUB socket, ZeroMQ keeps the order),
 *  and GEN changes when a store node restarts (its SEQ starts again). ZeroMQ's PUB drops what a
 *  subscriber cannot take: a partition long enough for the links' heartbeats to drop the
 *  connection, a broker restarting, a full high-water mark. So a skip in SEQ (or a node's bus
 *  HELLO, every 250 ms, naming a SEQ newer than the last event seen) means events were lost on
 *  the way. The gateway then asks the node for them on its direct CURVE link to the node's
 *  front (REPLAY, st_replay.h): every event stays in the node's outbox (pd_outbox.h) until
 *  the ring wraps. Meanwhile the node's newer bus messages are held, in arrival order (at most
 *  RT_HELD_MAX bytes); the resent events are handled as they come, then the held ones, so a
 *  record's events are never handled out of order and none twice. A request unanswered is
 *  sent again every RT_RESYNC_RETRY_MS (the link to the node may be reconnecting too). A node
 *  seen with a new generation (it restarted) is asked the same way for the rest of the old one
 *  (TOTAL 0: whatever its outbox holds after the last event seen), and the new generation's
 *  sequence is then checked from 1, so a restart during an outage loses nothing either.
 *
 *  A node's sequence numbers its rooms' joins and leaves too (ROOM_EVENT, st_rooms.h): they are
 *  checked, held and asked again here like records' events, then handed to gw_supabase.c, and
 *  a gateway with Supabase connections or rooms but no Appwrite one tracks the sequence as well.
 *
 *  Fallback: when the range is gone (the ring wrapped, the node restarted, no front), or no
 *  answer came within RT_RESYNC_MS, or the held messages passed their bound, the events are
 *  lost for good: every connection with a subscription is closed with 1012 (Service Restart).
 *  The SDK reconnects and subscribes again; an app that keeps a list re-reads it, as it does
 *  after any reconnect. The node's rooms are read again instead (gw_sb_resync_node: a fresh
 *  presence_state for their channels, which clients reconcile). Both outcomes are counted
 *  (presenced_bus_resync_total{result}). */

//  Whether anybody here needs the bus's events: an Appwrite connection or hold, or a Supabase
//  connection or room.
static bool
s_needed(const rt_t *rt)
{
    return !gw_rt_idle(rt->gw) || !gw_sb_idle(rt->gw);
}

static void s_on_event(rt_t *rt, const pd_msg_t *ev);
static void s_on_hello(rt_t *rt, const pd_msg_t *m);

static void
s_resync_send(rt_t *rt, int node)
{
    rt_seq_t *st = &rt->seqs[node];
    st->retry_ms = pd_mono_ms() + RT_RESYNC_RETRY_MS;
    pd_msgw_t *w = gw_send_store(rt->gw, node, PD_MSG_REPLAY, st->rid);
    if (!w)
        return; /* no link now: tried again at retry_ms, until the deadline */
    pd_msgw_int(w, PD_F_NODE, node);
    pd_msgw_int(w, PD_F_GEN, st->gen);
    pd_msgw_int(w, PD_F_SEQ, st->seq + 1);
    pd_msgw_int(w, PD_F_TOTAL, st->want == INT64_MAX ? 0 : st->want - st->seq);
    gw_send_end(rt->gw);
}

//  Every connection with a subscription is told to reconnect: it may have missed events.
static void
s_fallback(rt_t *rt, int node)
{
    rt_seq_t *st = &rt->seqs[node];
    size_t n = 0;
    for (gw_ws_conn_t *ws = rt->ws.conns, *next; ws; ws = next) {
        next = ws->next;
        if (ws->state == GW_WS_OPEN && s_conn(ws)->fo.nsubs) {
            gw_ws_close(ws, 1012, "Events were lost: subscribe again");
            n++;
        }
    }
    rt->resync_closed += n;
    size_t rooms = gw_sb_resync_node(rt->gw, node);
    gw_replica_drop_all(rt->gw, "events of a store node were lost");
    pd_log_warn("%s: events of store %d after %lld (generation %lld) are gone: %zu subscribers "
                "told to reconnect (1012), %zu rooms read again",
                __func__, node, (long long)st->seq, (long long)st->gen, n, rooms);
}

static void
s_on_held(const pd_msg_t *m, void *arg)
{
    if (m->type == PD_MSG_HELLO)
        s_on_hello(arg, m);
    else
        s_on_event(arg, m);
}

/*  Handles the messages held for `node`, and those of any node whose resync ends meanwhile
 *  (handling one may send, and a send may read the answers of another node). A node whose
 *  held messages show a new skip starts a new resync and holds the rest again. */
static void
s_release(rt_t *rt, int node)
{
    rt->seqs[node].ready = true;
    if (rt->releasing)
        return;
    rt->releasing = true;
    for (bool again = true; again;) {
        again = false;
        for (int n = 1; n <= 64; n++) {
            rt_seq_t *st = &rt->seqs[n];
            if (!st->ready)
                continue;
            st->ready = false;
            again = true;
            pd_msgw_t *w = &st->bufs[st->hi];
            st->hi ^= 1;
            if (!w->count)
                continue;
            msgpack_zone z;
            msgpack_zone_init(&z, 4096);
            pd_msg_each(w->sb.data, w->sb.size, &z, s_on_held, rt);
            msgpack_zone_destroy(&z);
            pd_msgw_reset(w);
        }
    }
    rt->releasing = false;
}

static void
s_resync_end(rt_t *rt, int node, bool ok)
{
    rt_seq_t *st = &rt->seqs[node];
    st->resync = false;
    st->rid = 0;
    if (ok) {
        rt->resync_ok++;
    } else {
        rt->resync_failed++;
        s_fallback(rt, node);
        st->seq = st->want;
    }
    if (st->want == INT64_MAX) { /* the end of a generation: the next one's events from 1 on */
        st->gen = st->next_gen;
        st->seq = 0;
    }
    s_release(rt, node);
}

//  Holds a bus message of `node` until its resync ends.
static void
s_hold(rt_t *rt, int node, const pd_msg_t *m)
{
    rt_seq_t *st = &rt->seqs[node];
    pd_msgw_t *w = &st->bufs[st->hi];
    pd_msgw_forward(w, m, m->rid);
    if (w->sb.size > RT_HELD_MAX) {
        pd_log_warn("%s: store %d: %zu bytes of events held waiting for its resync: giving up",
                    __func__, node, w->sb.size);
        s_resync_end(rt, node, false);
    }
}

//  Events after `seq` up to `want` of `node` are missing. `held`, if any, is the message that
//  showed it (held first: an answer may come while the request is sent).
static void
s_resync_begin(rt_t *rt, int node, int64_t want, const pd_msg_t *held)
{
    rt_seq_t *st = &rt->seqs[node];
    st->resync = true;
    st->want = want;
    st->rid = ++rt->resync_rid;
    st->deadline_ms = pd_mono_ms() + RT_RESYNC_MS;
    if (held)
        s_hold(rt, node, held);
    if (!st->resync)
        return;
    /* A node without a front: nobody to ask. One whose front the routes named before (a broker
     * that restarted sends each node's route again once the node has said hello to it) is asked
     * when its link is back, until the deadline, as a link that reconnects is. */
    if (!rt->gw->stores[node].endpoint[0] && !rt->gw->stores[node].fronted) {
        s_resync_end(rt, node, false);
        return;
    }
    s_resync_send(rt, node);
}

static void
s_gap(rt_t *rt, int node, int64_t want, const char *seen)
{
    rt_seq_t *st = &rt->seqs[node];
    rt->gaps++;
    rt->missed += (uint64_t)(want - st->seq);
    pd_log_warn("gap in the events of store %d: %s, the last seen was %lld (%lld missed)", node,
                seen, (long long)st->seq, (long long)(want - st->seq));
}

/*  Tracks each store node's sequence numbers. Returns whether the event is to be handled now:
 *  not when it is already seen (a restarted store node publishes its last second of events
 *  again, pd_outbox.h, and those that reached us before it died are dropped here), nor when
 *  it is held for a resync. */
static bool
s_check_seq(rt_t *rt, const pd_msg_t *ev)
{
    int64_t node = ev->i[PD_F_NODE], seq = ev->i[PD_F_SEQ], gen = ev->i[PD_F_GEN];
    if (node < 0 || node > 64 || !pd_msg_has(ev, PD_F_SEQ))
        return true;
    rt_seq_t *st = &rt->seqs[node];
    if (st->resync) {
        s_hold(rt, (int)node, ev);
        return false;
    }
    if (st->seen && st->gen == gen && seq <= st->seq) {
        rt->replayed++;
        return false;
    }
    if (st->seen && st->gen != gen && gen < st->gen) {
        rt->replayed++; //  an older generation, after the newer one was seen
        return false;
    }
    if (st->seen && st->gen == gen && seq > st->seq + 1 && node >= 1) {
        char why[48];
        snprintf(why, sizeof why, "got seq %lld", (long long)seq);
        s_gap(rt, (int)node, seq - 1, why);
        if (s_needed(rt)) { /* (no connection, no hold, no room: nobody needs them) */
            s_resync_begin(rt, (int)node, seq - 1, ev); /* ev is held: handled after them */
            return false;
        }
    } else if (st->seen && st->gen != gen) {
        pd_log_info("%s: store %lld restarted (generation %lld)", __func__, (long long)node,
                    (long long)gen);
        if (node >= 1 && s_needed(rt)) { /* the rest of the old one, if any: asked */
            st->next_gen = gen;
            s_resync_begin(rt, (int)node, INT64_MAX, ev);
            return false;
        }
    }
    st->seen = true;
    st->gen = gen;
    st->seq = seq;
    return true;
}

//  A store node's HELLO on the bus: its generation and last SEQ, sent after its events.
static void
s_on_hello(rt_t *rt, const pd_msg_t *m)
{
    int node = (int)m->i[PD_F_NODE];
    int64_t gen = m->i[PD_F_GEN], seq = m->i[PD_F_SEQ];
    rt_seq_t *st = &rt->seqs[node];
    if (st->resync) {
        s_hold(rt, node, m);
        return;
    }
    if (!st->seen) { /* every event after it comes to us */
        st->seen = true;
        st->gen = gen;
        st->seq = seq;
        return;
    }
    if (gen > st->gen && s_needed(rt)) { /* restarted: the rest of the old generation */
        st->next_gen = gen;
        s_resync_begin(rt, node, INT64_MAX, m);
        return;
    }
    if (gen != st->gen || seq <= st->seq)
        return;
    s_gap(rt, node, seq, "its heartbeat names a newer one");
    if (s_needed(rt))
        s_resync_begin(rt, node, seq, NULL);
    else
        st->seq = seq;
}

void
gw_rt_on_hello(gw_t *gw, const pd_msg_t *m)
{
    rt_t *rt = gw->rt;
    int64_t node = m->i[PD_F_NODE];
    if (node >= 1 && node <= 64 && pd_msg_has(m, PD_F_SEQ) && pd_str_eqc(m->s[PD_F_ROLE], "store"))
        s_on_hello(rt, m);
}

//  What a store node sends back on its direct link (st_replay.h): the missing EVENTs in order,
//  then a REPLAY that says whether that was all.
void
gw_rt_on_replay(gw_t *gw, const pd_msg_t *m)
{
    rt_t *rt = gw->rt;
    int64_t node = m->i[PD_F_NODE];
    if (node < 1 || node > 64)
        return;
    rt_seq_t *st = &rt->seqs[node];
    if (!st->resync || m->i[PD_F_GEN] != st->gen)
        return; /* late (given up, or sent twice), or not what we asked for */
    if (m->type == PD_MSG_EVENT || m->type == PD_MSG_ROOM_EVENT) {
        int64_t seq = m->i[PD_F_SEQ];
        if (seq != st->seq + 1 || seq > st->want)
            return;
        st->seq = seq;
        rt->resync_events++;
        s_deliver(rt, m);
        return;
    }
    if (m->rid != st->rid)
        return;
    bool open = st->want == INT64_MAX, more = (m->i[PD_F_FLAGS] & 1) != 0;
    if (open && m->i[PD_F_ERR] == PD_ERR_OK && !more) {
        pd_log_info("store %d restarted: its generation %lld ended at seq %lld", (int)node,
                    (long long)st->gen, (long long)st->seq);
        s_resync_end(rt, (int)node, true);
    } else if (st->seq >= st->want) {
        pd_log_info("store %d resent events up to %lld: none lost", (int)node,
                    (long long)st->want);
        s_resync_end(rt, (int)node, true);
    } else if (m->i[PD_F_ERR] == PD_ERR_OK && more && m->i[PD_F_SEQ] == st->seq) {
        st->rid = ++rt->resync_rid; /* the answer was cut: the rest */
        st->deadline_ms = pd_mono_ms() + RT_RESYNC_MS;
        s_resync_send(rt, (int)node);
    } else {
        s_resync_end(rt, (int)node, false);
    }
}

static void
s_resync_tick(rt_t *rt, int64_t now)
{
    for (int n = 1; n <= 64; n++) {
        rt_seq_t *st = &rt->seqs[n];
        if (!st->resync)
            continue;
        if (now >= st->deadline_ms) {
            pd_log_warn("store %d did not resend its events within %d ms", n, RT_RESYNC_MS);
            s_resync_end(rt, n, false);
        } else if (now >= st->retry_ms) {
            s_resync_send(rt, n);
        }
    }
}

//  Forget every node's sequence (a new bus socket, or none): the next message starts afresh.
static void
s_seqs_reset(rt_t *rt)
{
    for (size_t i = 0; i < sizeof rt->seqs / sizeof *rt->seqs; i++) {
        rt_seq_t *st = &rt->seqs[i];
        st->seen = st->resync = false;
        st->rid = 0;
        pd_msgw_reset(&st->bufs[st->hi]); /* (the other is reset by whoever is handling it) */
    }
}

/*  Called for each bus frame. With no WebSocket open (of either protocol), no presence held and
 *  no room, nobody here needs the bus: the frame is dropped unread (a REST-only gateway pays
 *  the copy, not the decode).
 *  The sequence trackers forget what they saw, so that the first frame read afterwards is not
 *  a "gap". */
bool
gw_rt_quiet(gw_t *gw)
{
    rt_t *rt = gw->rt;
    (void)gw;
    rt->bus_frames++;
    if (s_needed(rt)) {
        rt->skipping = false;
        return false;
    }
    if (!rt->skipping) {
        rt->skipping = true;
        s_seqs_reset(rt);
    }
    return true;
}

bool
gw_rt_idle(const gw_t *gw)
{
    const rt_t *rt = gw->rt;
    (void)gw;
    return !rt->nconns && !rt->holds.n && gw_replica_idle(gw);
}

bool
gw_rt_seq(const gw_t *gw, int node, int64_t *gen, int64_t *seq)
{
    const rt_t *rt = gw->rt;
    if (node < 1 || node > 64)
        return false;
    const rt_seq_t *st = &rt->seqs[node];
    if (!st->seen || st->resync)
        return false;
    *gen = st->gen;
    *seq = st->seq;
    return true;
}

/*  A new SUB socket has its first frame: the sequence trackers start again, and the messages
 *  held since the connections opened are handled now. */
void
gw_rt_bus_live(gw_t *gw)
{
    rt_t *rt = gw->rt;
    s_seqs_reset(rt);
    gw_replica_drop_all(gw, "a new bus socket");
    for (gw_ws_conn_t *c = rt->ws.conns, *next; c; c = next) {
        next = c->next;
        gw_ws_resume(c);
    }
}

//  An event to hand to the subscribers: it updates the holds, then goes to the fan-out; a
//  room's goes to gw_supabase.c.
static void
s_deliver(rt_t *rt, const pd_msg_t *ev)
{
    if (ev->type == PD_MSG_ROOM_EVENT) {
        gw_sb_on_bus(rt->gw, ev);
        return;
    }
    int action = (int)ev->i[PD_F_ACTION];
    pd_record_t rn, rp;
    pd_record_read(ev, &rn);
    s_hold_on_event(rt, action, &rn);
    gw_replica_on_event(rt->gw, ev, &rn);
    rt_proj_t *proj = s_proj_find(rt, rn.project);
    if (!proj || proj->nconns == 0 || !rn.id.len)
        return;
    if (s_is_renewal(ev)) {
        rt->suppressed++;
        return;
    }
    bool prev = action != PD_ACT_DELETE && pd_record_read_prev(ev, &rn, &rp);
    if (prev)
        rp.updated_ms = pd_record_body_time(rp.json, "$updatedAt");
    gw_fo_event(&rt->fo, action, &rn, prev ? &rp : NULL);
}

static void
s_on_event(rt_t *rt, const pd_msg_t *ev)
{
    if (s_check_seq(rt, ev))
        s_deliver(rt, ev);
}

void
gw_rt_on_bus(gw_t *gw, const pd_msg_t *ev)
{
    rt_t *rt = gw->rt;
    if (ev->type == PD_MSG_EVENT)
        rt->events++;
    s_on_event(rt, ev);
}

/* -------------------------------------------------------------------------- housekeeping */

static void
s_drop_to_guest(rt_conn_t *c)
{
    s_conn_unhold_all(c);
    c->user[0] = 0;
    c->exp_ms = 0;
    gw_fo_conn_roles(&c->rt->fo, &c->fo, gw_fo_guest_roles, GW_FO_GUEST_ROLES_LEN);
    s_send_error(c, 401,
                 "The JWT of this connection has expired: it continues as a guest, and its "
                 "subscriptions now receive only what guests may read. Send a fresh token in an "
                 "`authentication` message ({\"type\":\"authentication\",\"data\":{\"jwt\":"
                 "\"...\"}}) to restore the user's access.");
}

/*  Tokens that expired while connected (the WebSocket layer sweeps the rest). */
static void
s_sweep(rt_t *rt, int64_t now)
{
    gw_ws_sweep(&rt->ws, now);
    int64_t wall = pd_now_ms();
    for (gw_ws_conn_t *ws = rt->ws.conns, *next; ws; ws = next) {
        next = ws->next;
        rt_conn_t *c = s_conn(ws);
        if (ws->state == GW_WS_OPEN && c->exp_ms && wall >= c->exp_ms)
            s_drop_to_guest(c);
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
    int64_t now = pd_mono_ms();
    s_holds_tick(gw, now);
    s_resync_tick(rt, now);
    rt_op_t *op = rt->ops;
    while (op) {
        rt_op_t *next = op->next;
        if (now >= op->deadline_ms) {
            if (op->conn && op->conn->ws.state == GW_WS_OPEN)
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

static const gw_ws_cb_t s_ws_cb = {
    .on_open = s_on_open,
    .on_message = s_on_message,
    .on_oversize = s_on_oversize,
    .may_read = s_may_read,
    .on_detach = s_on_detach,
};

void
gw_rt_init(gw_t *gw)
{
    rt_t *rt = pd_xcalloc(1, sizeof *rt);
    rt->gw = gw;
    gw->rt = rt;
    gw_ws_ctx_init(&rt->ws, &gw->ctx, &s_ws_cb);
    gw_fo_init(&rt->fo);
    pd_map_init(&rt->holds);
    pd_buf_init(&rt->tmp);
    for (size_t i = 0; i < sizeof rt->seqs / sizeof *rt->seqs; i++)
        for (int j = 0; j < 2; j++)
            pd_msgw_init(&rt->seqs[i].bufs[j]);
    rt->ws.max_message = PD_RTMSG_MAX_BYTES;
    rt->ws.max_queue = RT_QUEUE_DEFAULT;
    rt->ws.idle_ms = RT_IDLE_DEFAULT_S * 1000LL;
    rt->ws.stall_ms = (gw->cfg->ws_stall_timeout > 0 ? gw->cfg->ws_stall_timeout
                                                      : RT_STALL_DEFAULT_S) * 1000LL;
    /* --ws-max-queue / --ws-idle-timeout (or PRESENCED_WS_MAX_QUEUE / _IDLE_TIMEOUT) */
    if (gw->cfg->ws_max_queue >= 4096)
        rt->ws.max_queue = gw->cfg->ws_max_queue;
    if (gw->cfg->ws_idle_timeout > 0)
        rt->ws.idle_ms = gw->cfg->ws_idle_timeout * 1000LL;
    rt->ws.deflate = gw->cfg->ws_deflate != 0;
    gw_ws_ctx_write_delay(&rt->ws, gw->cfg->ws_write_delay);
}

void
gw_rt_shutdown(gw_t *gw)
{
    rt_t *rt = gw->rt;
    rt->shutting_down = true;
    /* Clients reconnect to another gateway and re-send their presence there; our holds are
     * not released (their lease covers the switch). The close frames are written now: the
     * loop may not turn again. */
    for (gw_ws_conn_t *c = rt->ws.conns, *next; c; c = next) {
        next = c->next;
        if (c->state == GW_WS_OPEN) {
            gw_ws_close(c, 1012, "Service restart"); /* IANA 1012: reconnect (elsewhere) */
            gw_ws_flush_now(c);
        }
    }
}

void
gw_rt_on_reload(gw_t *gw)
{
    rt_t *rt = gw->rt;
    for (rt_proj_t *p = rt->projs; p; p = p->next)
        p->p = pd_projects_find(&gw->projects, pd_str(p->id));
    for (gw_ws_conn_t *ws = rt->ws.conns, *next; ws; ws = next) {
        next = ws->next;
        rt_conn_t *c = s_conn(ws);
        if (ws->state == GW_WS_OPEN && !c->proj->p) {
            s_send_error(c, 1008, "Missing or unknown project ID");
            gw_ws_close(ws, 1008, "Missing or unknown project ID");
        }
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
    G("presenced_realtime_subscriptions", "Subscriptions of the open connections.", rt->fo.nsubs);
    G("presenced_realtime_index_buckets", "(project, channel, role) keys of the index.",
      rt->fo.buckets.n);
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
    C("presenced_realtime_event_frames_total", "Event frames queued to connections.", rt->fo.frames);
    C("presenced_realtime_conflated_total",
      "Queued event frames a newer event of the same record replaced, or a delete cancelled.",
      rt->ws.conflated);
    C("presenced_realtime_event_bytes_total", "Bytes of event frames queued to connections.",
      rt->fo.frame_bytes);
    C("presenced_realtime_deflated_total",
      "Messages compressed (permessage-deflate): each event once, however many connections get it.",
      rt->ws.deflated);
    C("presenced_realtime_deflate_in_bytes_total", "Bytes of those messages before compression.",
      rt->ws.zin);
    C("presenced_realtime_deflate_out_bytes_total", "Bytes of those messages after compression.",
      rt->ws.zout);
    C("presenced_realtime_slow_disconnects_total",
      "Connections dropped as slow consumers (no write progress for --ws-stall-timeout, or "
      "pending output over --ws-max-queue).",
      rt->ws.slow);
    C("presenced_realtime_idle_timeouts_total", "Connections closed for idleness.", rt->ws.idle);
    C("presenced_realtime_lease_renewals_total", "Lease renewals sent.", rt->renewals);
    C("presenced_realtime_releases_total", "Holds released (last socket gone, grace over).",
      rt->releases);
    C("presenced_bus_gaps_total", "Skips in a store node's event sequence.", rt->gaps);
    C("presenced_bus_missed_events_total",
      "Events missing in those skips (asked of their store node again: see resync).",
      rt->missed);
    pd_buf_addf(b,
                "# HELP presenced_bus_resync_total Skips resolved: replayed (every missing event "
                "resent by its store node's outbox) or fallback (gone: subscribers closed with "
                "1012).\n# TYPE presenced_bus_resync_total counter\n"
                "presenced_bus_resync_total{gateway=\"%d\",result=\"replayed\"} %llu\n"
                "presenced_bus_resync_total{gateway=\"%d\",result=\"fallback\"} %llu\n",
                node, (unsigned long long)rt->resync_ok, node,
                (unsigned long long)rt->resync_failed);
    C("presenced_bus_resync_events_total", "Missing events a store node resent.",
      rt->resync_events);
    C("presenced_bus_resync_closed_total",
      "WebSocket connections closed with 1012 because events they may need were gone.",
      rt->resync_closed);
#undef G
#undef C
}
