/*  gateway — the role's loop, its links to the broker and the bus, the table of requests in
 *  flight, and the metrics. See gw.h for how the gateway's files divide the work.
 *
 *  h2o's evloop owns the thread. The broker DEALER, a DEALER per store node's front and the
 *  bus SUB are ZeroMQ sockets, each with a ZMQ_FD wrapped as an h2o socket (dup'd, DONT_READ).
 *  A socket is drained until EAGAIN when its fd fires, and again after a send on it (a send
 *  can consume the signal of a reply already queued); no other socket is asked, since each
 *  asking costs libzmq a poll() of its mailbox. Requests created while handling one loop turn are
 *  appended to one batch and sent in one frame from the zero timeout that runs at the end of
 *  the turn, so a busy gateway pays one ZeroMQ hop per turn, not per request. */
#include "gateway.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sodium.h>
#include <time.h>
#include <unistd.h>

#include "gw.h"
#include "gw_replica.h"
#include "gw_static.h"
#include "gw_supabase.h"
#include "pd_err.h"
#include "pd_log.h"
#include "pd_probe.h"
#include "pd_zmq.h"

static volatile sig_atomic_t s_stop, s_reload;

static void
s_on_signal(int sig)
{
    if (sig == SIGHUP)
        s_reload = 1;
    else
        s_stop = 1;
}

int64_t
gw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* -------------------------------------------------------------------------- metrics */

static const int s_status_codes[GW_STATUS_SLOTS] = {101, 200, 201, 204, 400, 401, 403, 404,
                                                    405, 409, 413, 429, 500, 503, 0, 0};
static const double s_lat_bounds[GW_LAT_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                                    0.25,   0.5,     1,      5};
static const char *s_route_names[] = {
#define GW_R(name, str) str,
    GW_ROUTES(GW_R)
#undef GW_R
};

void
gw_metrics_count(gw_t *gw, int route, int status, int64_t start_ns)
{
    int slot = GW_STATUS_SLOTS - 1;
    for (int i = 0; i < GW_STATUS_SLOTS - 2; i++)
        if (s_status_codes[i] == status)
            slot = i;
    gw->requests[route][slot]++;
    double secs = (double)(gw_now_ns() - start_ns) / 1e9;
    int b = 0;
    while (b < GW_LAT_BUCKETS && secs > s_lat_bounds[b])
        b++;
    gw->lat[route][b]++;
    gw->lat_sum[route] += secs;
}

void
gw_metrics_render(gw_t *gw, pd_buf_t *b)
{
    int node = gw->cfg->node;
    pd_buf_adds(b, "# HELP presenced_http_requests_total Requests by route and status.\n"
                   "# TYPE presenced_http_requests_total counter\n");
    for (int r = 0; r < GW_ROUTE__COUNT; r++)
        for (int s = 0; s < GW_STATUS_SLOTS; s++)
            if (gw->requests[r][s] && s_status_codes[s])
                pd_buf_addf(b,
                            "presenced_http_requests_total{gateway=\"%d\",route=\"%s\","
                            "status=\"%d\"} %llu\n",
                            node, s_route_names[r], s_status_codes[s],
                            (unsigned long long)gw->requests[r][s]);
            else if (gw->requests[r][s])
                pd_buf_addf(b,
                            "presenced_http_requests_total{gateway=\"%d\",route=\"%s\","
                            "status=\"other\"} %llu\n",
                            node, s_route_names[r], (unsigned long long)gw->requests[r][s]);
    pd_buf_adds(b, "# HELP presenced_http_request_duration_seconds Request latency.\n"
                   "# TYPE presenced_http_request_duration_seconds histogram\n");
    for (int r = 0; r < GW_ROUTE__COUNT; r++) {
        uint64_t cum = 0;
        for (int k = 0; k <= GW_LAT_BUCKETS; k++)
            cum += gw->lat[r][k];
        if (!cum)
            continue;
        cum = 0;
        for (int k = 0; k <= GW_LAT_BUCKETS; k++) {
            cum += gw->lat[r][k];
            if (k < GW_LAT_BUCKETS)
                pd_buf_addf(b,
                            "presenced_http_request_duration_seconds_bucket{gateway=\"%d\","
                            "route=\"%s\",le=\"%g\"} %llu\n",
                            node, s_route_names[r], s_lat_bounds[k], (unsigned long long)cum);
            else
                pd_buf_addf(b,
                            "presenced_http_request_duration_seconds_bucket{gateway=\"%d\","
                            "route=\"%s\",le=\"+Inf\"} %llu\n",
                            node, s_route_names[r], (unsigned long long)cum);
        }
        pd_buf_addf(b,
                    "presenced_http_request_duration_seconds_sum{gateway=\"%d\",route=\"%s\"} "
                    "%.6f\npresenced_http_request_duration_seconds_count{gateway=\"%d\","
                    "route=\"%s\"} %llu\n",
                    node, s_route_names[r], gw->lat_sum[r], node, s_route_names[r],
                    (unsigned long long)cum);
    }
    pd_buf_addf(b,
                "# TYPE presenced_gateway_in_flight gauge\npresenced_gateway_in_flight{gateway="
                "\"%d\"} %zu\n# TYPE presenced_gateway_timeouts_total counter\n"
                "presenced_gateway_timeouts_total{gateway=\"%d\"} %llu\n"
                "# TYPE presenced_gateway_malformed_total counter\n"
                "presenced_gateway_malformed_total{gateway=\"%d\"} %llu\n"
                "# HELP presenced_gateway_direct_total Requests sent straight to the owning "
                "store node, and those sent again via the broker (stale claim, node away).\n"
                "# TYPE presenced_gateway_direct_total counter\n"
                "presenced_gateway_direct_total{gateway=\"%d\",result=\"sent\"} %llu\n"
                "presenced_gateway_direct_total{gateway=\"%d\",result=\"rerouted\"} %llu\n"
                "# HELP presenced_gateway_list_plans_total Large lists' pages this gateway "
                "fetched from the store nodes itself, and those listed again via the broker.\n"
                "# TYPE presenced_gateway_list_plans_total counter\n"
                "presenced_gateway_list_plans_total{gateway=\"%d\",result=\"fetched\"} %llu\n"
                "presenced_gateway_list_plans_total{gateway=\"%d\",result=\"listed_again\"} %llu\n"
                "# HELP presenced_gateway_bus_subscribed Whether this gateway takes the bus's "
                "events (only while it has WebSocket clients).\n"
                "# TYPE presenced_gateway_bus_subscribed gauge\n"
                "presenced_gateway_bus_subscribed{gateway=\"%d\"} %d\n"
                "# TYPE presenced_gateway_bus_joins_total counter\n"
                "presenced_gateway_bus_joins_total{gateway=\"%d\"} %llu\n",
                node, gw->in_flight, node, (unsigned long long)gw->timeouts, node,
                (unsigned long long)gw->malformed, node, (unsigned long long)gw->direct, node,
                (unsigned long long)gw->rerouted, node, (unsigned long long)gw->plans, node,
                (unsigned long long)gw->plans_again, node, gw->bus_state == GW_BUS_LIVE, node,
                (unsigned long long)gw->bus_joins);
    pd_buf_addf(b,
                "# TYPE presenced_gateway_bus_join_failures_total counter\n"
                "presenced_gateway_bus_join_failures_total{gateway=\"%d\"} %llu\n"
                "# TYPE presenced_gateway_connections gauge\n"
                "presenced_gateway_connections{gateway=\"%d\"} %zu\n"
                "# TYPE presenced_gateway_connections_max gauge\n"
                "presenced_gateway_connections_max{gateway=\"%d\"} %zu\n"
                "# HELP presenced_gateway_connections_refused_total Connections closed by the "
                "limits: the cap, the per-address cap, request headers over the cap.\n"
                "# TYPE presenced_gateway_connections_refused_total counter\n"
                "presenced_gateway_connections_refused_total{gateway=\"%d\",reason=\"cap\"} %llu\n"
                "presenced_gateway_connections_refused_total{gateway=\"%d\",reason=\"per_ip\"} "
                "%llu\n"
                "presenced_gateway_connections_refused_total{gateway=\"%d\",reason=\"headers\"} "
                "%llu\n"
                "# HELP presenced_gateway_accept_pauses_total Times the listener was left unread "
                "(at the connection cap, or out of descriptors).\n"
                "# TYPE presenced_gateway_accept_pauses_total counter\n"
                "presenced_gateway_accept_pauses_total{gateway=\"%d\"} %llu\n",
                node, (unsigned long long)gw->bus_join_failures, node, gw->nconns, node,
                gw->max_conns, node, (unsigned long long)gw->conn_refused[GW_REFUSE_CAP], node,
                (unsigned long long)gw->conn_refused[GW_REFUSE_PER_IP], node,
                (unsigned long long)gw->conn_refused[GW_REFUSE_HEADERS], node,
                (unsigned long long)gw->accept_pauses);
    pd_buf_addf(b,
                "# HELP presenced_gateway_broker_failfast_total Batches whose requests were "
                "answered 503 at once: the broker answered no heartbeat for 3 s.\n"
                "# TYPE presenced_gateway_broker_failfast_total counter\n"
                "presenced_gateway_broker_failfast_total{gateway=\"%d\"} %llu\n",
                node, (unsigned long long)gw->broker_failfast);
    gw_rt_metrics(gw, b);
    gw_replica_metrics(gw, b);
    gw_sb_metrics(gw, b);
}

/* -------------------------------------------------------------------------- broker link */

static void s_drain(gw_t *gw);

static void s_reroute_batch(gw_t *gw, pd_msgw_t *w);

static void
s_link_flush(gw_t *gw)
{
    if (!gw->flush_linked) {
        gw->flush_linked = true;
        h2o_timeout_link(gw->ctx.loop, &gw->ctx.zero_timeout, &gw->flush_entry);
    }
}

/*  The broker has answered no heartbeat for GW_BROKER_SILENT_MS (it answers each every 250 ms;
 *  the ZMTP heartbeat calls a link dead after 3 s). 0 until it has answered once: at start,
 *  requests wait for it. */
static bool
s_broker_silent(const gw_t *gw)
{
    return gw->route_ms && pd_mono_ms() - gw->route_ms > GW_BROKER_SILENT_MS;
}

static void s_pending_release(gw_t *gw, gw_pending_t *p);
static gw_pending_t *s_pending_of(gw_t *gw, uint64_t rid);

static void
s_fail_msg(const pd_msg_t *m, void *arg)
{
    gw_t *gw = arg;
    gw_pending_t *p = m->rid ? s_pending_of(gw, m->rid) : NULL;
    if (!m->rid) { /* a heartbeat, a release, a lease renewal: still sent */
        pd_msgw_copy(&gw->keep, m, 0, 0);
        pd_msgw_end(&gw->keep);
    } else if (p && p->req) {
        h2o_req_t *req = p->req;
        s_pending_release(gw, p);
        p->req = NULL;
        gw_respond_err(gw, req, p->route, PD_ERR_UNAVAILABLE,
                       PD_STR("The cluster's broker is not answering: try again shortly."),
                       p->start_ns);
    } /* a realtime operation: its own deadline answers the client */
}

/*  Requests for a silent broker are answered 503 at once instead of waiting out
 *  --request-timeout, and are not sent: one answered 503 is never applied later, when the broker
 *  comes back. The rest of the batch (heartbeats first: they bring it back) still goes. */
static void
s_fail_broker_batch(gw_t *gw)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    pd_msgw_reset(&gw->keep);
    pd_msg_each(gw->out.sb.data, gw->out.sb.size, &z, s_fail_msg, gw);
    msgpack_zone_destroy(&z);
    gw->broker_failfast++;
    pd_msgw_reset(&gw->out); /* the writer's packer points into its own buffer: copy, not swap */
    msgpack_sbuffer_write(&gw->out.sb, gw->keep.sb.data, gw->keep.sb.size);
    gw->out.count = gw->keep.count;
}

/*  Sends this turn's batches: one frame per store node with direct requests (a node that
 *  cannot take it has them sent via the broker instead), then one to the broker. */
static void
s_flush(gw_t *gw)
{
    for (int n = 1; n <= GW_MAX_STORES; n++) {
        gw_store_t *st = &gw->stores[n];
        if (!st->out.count)
            continue;
        /* ZMQ_IMMEDIATE: no connection to the node, no queueing; the broker answers instead */
        if (!st->sock || pd_zmq_send(zsock_resolve(st->sock), NULL, 0, st->out.sb.data,
                                     st->out.sb.size) < 0)
            s_reroute_batch(gw, &st->out);
        pd_msgw_reset(&st->out);
        st->unread = st->sock != NULL;
    }
    if (gw->out.count) {
        if (s_broker_silent(gw))
            s_fail_broker_batch(gw);
        if (gw->out.count &&
            pd_zmq_send(zsock_resolve(gw->dealer), NULL, 0, gw->out.sb.data, gw->out.sb.size) < 0)
            pd_log_warn("%s: cannot reach the broker; %u requests will time out", __func__,
                        gw->out.count);
        pd_msgw_reset(&gw->out);
        gw->dealer_unread = true;
    }
    s_drain(gw);
}

static void
s_on_flush(h2o_timeout_entry_t *entry)
{
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, flush_entry, entry);
    gw->flush_linked = false;
    s_flush(gw);
}

static gw_pending_t *
s_pending_of(gw_t *gw, uint64_t rid)
{
    uint32_t idx = (uint32_t)(rid & 0xfffff);
    if (!rid || idx >= gw->nslots || !gw->slots[idx] || gw->slots[idx]->rid != rid)
        return NULL;
    return gw->slots[idx];
}

pd_msgw_t *
gw_send_begin(gw_t *gw, int type, uint64_t rid)
{
    gw_pending_t *p = s_pending_of(gw, rid);
    if (p)
        p->type = type;
    gw->cur = &gw->out;
    gw->cur_keep = NULL;
    gw->cur_start = gw->out.sb.size;
    pd_msgw_begin(&gw->out, type, rid);
    return &gw->out;
}

pd_msgw_t *
gw_send_copy(gw_t *gw, gw_pending_t *p, const pd_msg_t *m, uint64_t skip)
{
    p->type = m->type;
    gw->cur = &gw->out;
    gw->cur_keep = NULL;
    gw->cur_start = gw->out.sb.size;
    pd_msgw_copy(&gw->out, m, p->rid, skip);
    return &gw->out;
}

void
gw_send_keep(gw_t *gw, gw_pending_t *p)
{
    gw->cur_keep = p;
}

/*  Large buffers for the pages a gateway fetches (gw_rest.c, "lists"): a page of 5,000 records
 *  is about 2 MB, and memory freshly mapped for each page is faulted in page by page (about
 *  10 us a fault on our VMs, 9 ms a page). Up to GW_BIG_KEEP buffers of at most GW_BIG_MAX
 *  bytes are kept for the next page; others are freed when their request ends. */
typedef struct {
    gw_t *gw;
    void *buf;
    size_t cap;
} gw_big_t;

static void
s_big_dispose(void *ptr)
{
    gw_big_t *b = ptr;
    gw_t *gw = b->gw;
    if (b->cap <= GW_BIG_MAX && gw->nbig < GW_BIG_KEEP) {
        gw->big[gw->nbig].buf = b->buf;
        gw->big[gw->nbig++].cap = b->cap;
    } else {
        free(b->buf);
    }
}

void *
gw_big_alloc(gw_t *gw, h2o_req_t *req, size_t n)
{
    gw_big_t *b = h2o_mem_alloc_shared(&req->pool, sizeof *b, s_big_dispose);
    b->gw = gw;
    b->buf = NULL;
    for (size_t i = 0; i < gw->nbig; i++)
        if (gw->big[i].cap >= n) {
            b->buf = gw->big[i].buf;
            b->cap = gw->big[i].cap;
            gw->big[i] = gw->big[--gw->nbig];
            break;
        }
    if (!b->buf) {
        b->cap = (n + (1 << 20) - 1) & ~(size_t)((1 << 20) - 1); /* whole MiB: reusable */
        if (!(b->buf = malloc(b->cap)))
            abort();
    }
    return b->buf;
}

bool
gw_direct_all(gw_t *gw)
{
    if (gw->nstores < 2 || gw->nstores > 63)
        return false;
    for (int n = 1; n <= gw->nstores; n++)
        if (!gw->stores[n].sock || !gw->stores[n].up)
            return false;
    return true;
}

pd_msgw_t *
gw_send_direct(gw_t *gw, gw_pending_t *p, int node, int type, pd_str_t path_id)
{
    gw_store_t *st = &gw->stores[node];
    char *id = h2o_mem_alloc_pool(&p->req->pool, path_id.len + 1);
    memcpy(id, path_id.ptr, path_id.len);
    id[path_id.len] = 0;
    p->path_id = (pd_str_t){id, path_id.len};
    p->type = type;
    p->node = node;
    gw->direct++;
    gw->cur = &st->out;
    gw->cur_keep = p;
    gw->cur_start = st->out.sb.size;
    pd_msgw_begin(&st->out, type, p->rid);
    return &st->out;
}

pd_msgw_t *
gw_send_store(gw_t *gw, int node, int type, uint64_t rid)
{
    if (node < 1 || node > GW_MAX_STORES || !gw->stores[node].sock || !gw->stores[node].up)
        return NULL;
    gw_store_t *st = &gw->stores[node];
    gw->cur = &st->out;
    gw->cur_keep = NULL;
    pd_msgw_begin(&st->out, type, rid);
    return &st->out;
}

void
gw_send_end(gw_t *gw)
{
    pd_msgw_t *w = gw->cur ? gw->cur : &gw->out;
    pd_msgw_end(w);
    gw_pending_t *p = gw->cur_keep;
    if (p) { /* keep the bytes: a direct request refused, or a node unreachable, sends them via
              * the broker; a list whose plan cannot be fetched is sent again */
        size_t n = w->sb.size - gw->cur_start;
        char *copy = h2o_mem_alloc_pool(&p->req->pool, n);
        memcpy(copy, w->sb.data + gw->cur_start, n);
        p->saved = (pd_str_t){copy, n};
        gw->cur_keep = NULL;
    }
    gw->cur = &gw->out;
    if (w->sb.size > (256 << 10)) {
        s_flush(gw);
        return;
    }
    s_link_flush(gw);
}

/* -------------------------------------------------------------------------- direct requests */

/*  Through the broker a request costs four ZeroMQ hops; most need only two. The broker owns
 *  claims, lists and membership, so it answers every gateway HELLO with a ROUTE per store node
 *  (up or down, generation, the node's front endpoint), and a gateway sends the requests that
 *  involve no claim straight to the node that owns the id (pd_shard_owner, the broker's own
 *  hash): GET, UPDATE that keeps the owner, and UPSERT by a user whose record it has seen in
 *  a reply. That last one is a guess from a cache, so a direct UPSERT carries PD_FL_CLAIMED:
 *  the node updates the record only if it exists and belongs to that user, and refuses
 *  otherwise; a refusal (or a node the gateway cannot reach) sends the request as the caller
 *  wrote it through the broker, which resolves the claim. A node the broker marks down, or
 *  that restarted, fails its direct requests in flight with 503 at once, as the broker does
 *  with its own. */

static void s_pending_release(gw_t *gw, gw_pending_t *p);

const char *
gw_claim_get(gw_t *gw, pd_str_t project, pd_str_t user)
{
    return pd_claims_get(gw->claims, project, user);
}

//  What a successful reply says about who owns what.
static void
s_claim_learn(gw_t *gw, const gw_pending_t *p, const pd_msg_t *m)
{
    pd_str_t project = m->s[PD_F_PROJECT], user = m->s[PD_F_USER];
    switch (p->type) {
    case PD_MSG_UPSERT:
        pd_claims_set(gw->claims, project, user, m->s[PD_F_ID]);
        break;
    case PD_MSG_UPDATE:
        if (m->s[PD_F_PREV_USER].len && !pd_str_eq(m->s[PD_F_PREV_USER], user)) {
            pd_claims_drop(gw->claims, project, m->s[PD_F_PREV_USER]);
            pd_claims_set(gw->claims, project, user, m->s[PD_F_ID]);
        }
        break;
    case PD_MSG_DELETE:
    case PD_MSG_RELEASE:
        pd_claims_drop(gw->claims, project, user);
        break;
    }
}

int
gw_direct_node(gw_t *gw, pd_str_t project, pd_str_t id)
{
    if (!gw->nstores)
        return 0;
    int n = pd_shard_owner(project, id, gw->nstores);
    return gw->stores[n].sock && gw->stores[n].up ? n : 0;
}

/*  Sends a direct request again through the broker, as the caller wrote it. */
static void
s_reroute(gw_t *gw, gw_pending_t *p)
{
    pd_msg_t m;
    size_t off = 0;
    gw->rerouted++;
    p->node = 0;
    if (pd_msg_decode(&m, p->saved.ptr, p->saved.len, &off, &gw->rzone) != 0) {
        h2o_req_t *req = p->req;
        s_pending_release(gw, p);
        p->req = NULL;
        if (req)
            gw_respond_err(gw, req, p->route, PD_ERR_SERVER_ERROR, PD_STR_NULL, p->start_ns);
        return;
    }
    if (m.type == PD_MSG_UPSERT)
        pd_claims_drop(gw->claims, m.s[PD_F_PROJECT], m.s[PD_F_USER]);
    pd_msgw_copy(&gw->out, &m, p->rid, (1ULL << PD_F_ID) | (1ULL << PD_F_FLAGS));
    pd_msgw_s(&gw->out, PD_F_ID, p->path_id);
    pd_msgw_int(&gw->out, PD_F_FLAGS, m.i[PD_F_FLAGS] & ~(int64_t)PD_FL_CLAIMED);
    pd_msgw_end(&gw->out);
    msgpack_zone_clear(&gw->rzone);
    s_link_flush(gw);
}

static void s_on_reply(const pd_msg_t *m, void *arg);

/*  A request sent to several nodes at once (p->nodes) gets an UNAVAILABLE answer in place of
 *  one that will not come (its node is down, or the batch could not be sent): its handler
 *  decides what to do (a list's plan is listed again through the broker). */
void
gw_fail_answer(gw_t *gw, gw_pending_t *p)
{
    pd_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = PD_MSG_REPLY;
    m.rid = p->rid;
    m.i[PD_F_ERR] = PD_ERR_UNAVAILABLE;
    s_on_reply(&m, gw);
}

static void
s_reroute_msg(const pd_msg_t *m, void *arg)
{
    gw_t *gw = arg;
    gw_pending_t *p = s_pending_of(gw, m->rid);
    if (p && p->node)
        s_reroute(gw, p);
    else if (p && p->nodes)
        gw_fail_answer(gw, p);
}

//  A node's batch that could not be sent: every request in it goes via the broker.
static void
s_reroute_batch(gw_t *gw, pd_msgw_t *w)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    pd_msg_each(w->sb.data, w->sb.size, &z, s_reroute_msg, gw);
    msgpack_zone_destroy(&z);
}

//  Answers 503 to every direct request in flight on node n (it went down or restarted).
static void
s_fail_node(gw_t *gw, int n)
{
    for (size_t i = 0; i < gw->nslots; i++) {
        gw_pending_t *p = gw->slots[i];
        if (p && n < 64 && (p->nodes >> n) & 1) { /* several nodes: the handler decides */
            gw_fail_answer(gw, p);
            continue;
        }
        if (!p || p->node != n)
            continue;
        h2o_req_t *req = p->req;
        s_pending_release(gw, p);
        p->req = NULL;
        if (req)
            gw_respond_err(gw, req, p->route, PD_ERR_UNAVAILABLE, PD_STR_NULL, p->start_ns);
    }
}

static void s_on_store(h2o_socket_t *sock, const char *err);
static h2o_socket_t *s_wrap_zmq(gw_t *gw, zsock_t *zs, h2o_socket_cb cb);
static void s_accept_pause(gw_t *gw, bool retry);

/*  Descriptors for a new ZeroMQ socket: its mailbox, our dup of its ZMQ_FD, and the
 *  connections its I/O thread opens. czmq's zsock_new asserts when libzmq cannot make the
 *  socket (EMFILE), which used to take the gateway and every connection it held down at the
 *  descriptor limit. So a socket is made only when this many are free; otherwise the caller
 *  marks itself short (gw->fds_short), accepting pauses, and descriptors that connections give
 *  back go to internal sockets first (s_fds_retry). */
#define GW_ZSOCK_FDS 8

static bool
s_fds_spare(gw_t *gw)
{
    int fds[GW_ZSOCK_FDS], n = 0;
    while (n < GW_ZSOCK_FDS && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        n++;
    int err = errno;
    for (int i = 0; i < n; i++)
        close(fds[i]);
    if (n == GW_ZSOCK_FDS || (err != EMFILE && err != ENFILE)) /* (no /dev/null: cannot tell) */
        return true;
    errno = err;
    gw->fds_short = true;
    s_accept_pause(gw, true);
    return false;
}

static void
s_store_close(gw_store_t *st)
{
    st->fd_short = false;
    if (st->io) {
        h2o_socket_read_stop(st->io);
        h2o_socket_close(st->io);
        st->io = NULL;
    }
    zsock_destroy(&st->sock);
}

static void
s_store_open(gw_t *gw, gw_store_t *st)
{
    /* CURVE, pinned to store-<n>'s key: an endpoint in the route table reaches a real store
     * node or nothing. */
    char server[32];
    snprintf(server, sizeof server, "store-%d", (int)(st - gw->stores));
    if (!s_fds_spare(gw)) { /* via the broker until descriptors are back (s_fds_retry) */
        if (!st->fd_short)
            pd_log_warn("no descriptors for a link to %s (%s): its requests go via the broker",
                        server, strerror(errno));
        st->fd_short = true;
        return;
    }
    st->fd_short = false;
    st->sock = zsock_new(ZMQ_DEALER);
    if (pd_keys_client(gw->keys, zsock_resolve(st->sock), server) < 0) {
        pd_log_warn("no public key for %s; its requests go via the broker", server);
        zsock_destroy(&st->sock);
        return;
    }
    zsock_set_immediate(st->sock, 1);
    zsock_set_rcvtimeo(st->sock, 0);
    zsock_set_sndtimeo(st->sock, 0);
    zsock_set_sndhwm(st->sock, 100000);
    zsock_set_rcvhwm(st->sock, 100000);
    if (zsock_connect(st->sock, "%s", st->endpoint) < 0) {
        pd_log_warn("cannot connect to store front %s; its requests go via the broker",
                    st->endpoint);
        zsock_destroy(&st->sock);
        return;
    }
    st->gw = gw;
    if (!(st->io = s_wrap_zmq(gw, st->sock, s_on_store))) {
        zsock_destroy(&st->sock); /* its requests go via the broker */
        return;
    }
    st->io->data = st;
    st->unread = true;
}

static void s_bus_check(gw_t *gw);

static void
s_on_route(gw_t *gw, const pd_msg_t *m)
{
    int n = (int)m->i[PD_F_NODE], total = (int)m->i[PD_F_TOTAL];
    pd_str_t ep = m->s[PD_F_ENDPOINT];
    if (n < 1 || total < n || total > GW_MAX_STORES || ep.len >= sizeof gw->stores[n].endpoint) {
        gw->malformed++;
        return;
    }
    gw->nstores = total;
    gw->route_ms = pd_mono_ms();
    gw_store_t *st = &gw->stores[n];
    bool up = (m->i[PD_F_FLAGS] & 1) != 0;
    int64_t gen = m->i[PD_F_GEN];
    if ((st->up && !up) || (st->gen && gen != st->gen))
        s_fail_node(gw, n);
    /* A node the broker lost and found again may be behind a connection that outlived a
     * network partition: TCP retransmits what was in flight when the link went down with a
     * backoff of seconds, and every request sent after it waits behind that. Start afresh. */
    bool back = !st->up && up && st->gen;
    st->up = up;
    st->gen = gen;
    if (!pd_str_eqc(ep, st->endpoint) || (back && st->sock)) {
        s_fail_node(gw, n);
        s_store_close(st);
        memcpy(st->endpoint, ep.ptr ? ep.ptr : "", ep.len);
        st->endpoint[ep.len] = 0;
        st->fronted |= ep.len > 0;
        if (ep.len)
            s_store_open(gw, st);
    }
    s_bus_check(gw); /* a node marked down no longer holds a joining bus back */
}

static void
s_pending_release(gw_t *gw, gw_pending_t *p)
{
    uint32_t idx = (uint32_t)(p->rid & 0xfffff);
    if (idx < gw->nslots && gw->slots[idx] == p) {
        gw->slots[idx] = NULL;
        gw->free_slots[gw->nfree++] = idx;
        gw->in_flight--;
    }
    if (h2o_timeout_is_linked(&p->timer))
        h2o_timeout_unlink(&p->timer);
}

/* -------------------------------------------------------------------------- waiting connections */

/*  h2o stops reading a connection while its request is handled and starts again once the
 *  response is written. When the response waits for a store node, that costs two epoll_ctl
 *  calls per request: h2o takes the fd out of its epoll set at the next loop turn and puts it
 *  back after the response (about 3 us of system time per request on our test VM, the largest
 *  single system-call cost of a REST request). Instead, a connection whose request waits stays
 *  in the epoll set with reading suspended (DONT_READ, so no byte is read into the buffer the
 *  request still points into): if anything happens on it first (a pipelined request, the peer
 *  closing), it is stopped then, exactly as h2o had it, and the bytes wait in the kernel.
 *  Just before the response it is stopped too, and h2o restarts reading when the response is
 *  written, in the same loop turn: the epoll set is not touched at all. */
static void
s_on_waiting_read(h2o_socket_t *sock, const char *err)
{
    (void)err;
    h2o_socket_read_stop(sock);
    h2o_socket_dont_read(sock, 0);
}

static h2o_socket_t *
s_sock_of(h2o_req_t *req)
{
    if (!req->conn || !req->conn->callbacks->get_socket)
        return NULL; /* a realtime operation's request: no connection behind it */
    return req->conn->callbacks->get_socket(req->conn);
}

static void
s_conn_wait(h2o_req_t *req)
{
    h2o_socket_t *sock = s_sock_of(req);
    if (sock && !h2o_socket_is_reading(sock)) {
        h2o_socket_dont_read(sock, 1);
        h2o_socket_read_start(sock, s_on_waiting_read);
    }
}

void
gw_conn_answer(h2o_req_t *req)
{
    h2o_socket_t *sock = s_sock_of(req);
    if (sock && sock->_cb.read == s_on_waiting_read)
        s_on_waiting_read(sock, NULL);
}

static void
s_pending_dispose(void *ptr)
{
    gw_pending_t *p = ptr;
    s_pending_release(p->gw, p);
}

static void
s_pending_timeout(h2o_timeout_entry_t *entry)
{
    gw_pending_t *p = H2O_STRUCT_FROM_MEMBER(gw_pending_t, timer, entry);
    gw_t *gw = p->gw;
    gw->timeouts++;
    h2o_req_t *req = p->req;
    s_pending_release(gw, p);
    p->req = NULL;
    if (req)
        gw_respond_err(gw, req, p->route, PD_ERR_TIMEOUT, PD_STR_NULL, p->start_ns);
}

gw_pending_t *
gw_pending_new(gw_t *gw, h2o_req_t *req, int route, gw_reply_fn fn)
{
    gw_pending_t *p = h2o_mem_alloc_shared(&req->pool, sizeof *p, s_pending_dispose);
    memset(p, 0, sizeof *p);
    p->gw = gw;
    p->req = req;
    p->route = route;
    p->on_reply = fn;
    p->start_ns = gw_now_ns();
    uint32_t idx;
    if (gw->nfree) {
        idx = gw->free_slots[--gw->nfree];
    } else {
        if (gw->nslots == gw->cap_slots) {
            size_t cap = gw->cap_slots ? gw->cap_slots * 2 : 4096;
            if (cap > (1 << 20))
                abort(); /* a million requests in flight on one gateway */
            gw->slots = realloc(gw->slots, cap * sizeof *gw->slots);
            gw->free_slots = realloc(gw->free_slots, cap * sizeof *gw->free_slots);
            if (!gw->slots || !gw->free_slots)
                abort();
            gw->cap_slots = cap;
        }
        idx = (uint32_t)gw->nslots++;
    }
    gw->slots[idx] = p;
    p->rid = ((uint64_t)++gw->rid_gen << 20) | idx;
    gw->in_flight++;
    p->timer.cb = s_pending_timeout;
    h2o_timeout_link(gw->ctx.loop, &gw->req_timeout, &p->timer);
    s_conn_wait(req);
    return p;
}

static void
s_on_reply(const pd_msg_t *m, void *arg)
{
    gw_t *gw = arg;
    if (m->type == PD_MSG_ROUTE) {
        s_on_route(gw, m);
        return;
    }
    if (m->type == PD_MSG_EVENT || m->type == PD_MSG_ROOM_EVENT ||
        m->type == PD_MSG_REPLAY) { /* a store's resend (st_replay.h) */
        gw_rt_on_replay(gw, m);
        return;
    }
    if (m->type == PD_MSG_DUMP) { /* a store node's records, for a roster replica */
        gw_replica_on_dump(gw, m);
        return;
    }
    if (m->type != PD_MSG_REPLY)
        return;
    gw_pending_t *p = s_pending_of(gw, m->rid);
    if (!p)
        return; /* timed out already */
    if (p->more) { /* one of several answers (the handler sees more): it stays pending */
        p->on_reply(gw, p, m);
        p->more--;
        return;
    }
    bool ok = m->i[PD_F_ERR] == PD_ERR_OK;
    if (!ok && p->node && (p->type == PD_MSG_UPSERT || (m->i[PD_F_FLAGS] & PD_FL_MOVED))) {
        s_reroute(gw, p); /* the claim was stale, or the record moves: the broker resolves it */
        return;
    }
    s_pending_release(gw, p);
    if (ok)
        s_claim_learn(gw, p, m);
    if (p->req || p->user)
        p->on_reply(gw, p, m);
}

static void
s_on_reply_frame(pd_zmsg_t *zm, void *arg)
{
    gw_t *gw = arg;
    /* Without a zone: a reply's RAW fields (a list's plan, a node's FETCH answer of thousands of
     * records' JSON) are read in place where they are used (gw_rest.c), never unpacked. */
    if (pd_msg_each(pd_zmsg_data(zm, 0), pd_zmsg_size(zm, 0), NULL, s_on_reply, gw) < 0)
        gw->malformed++;
}

/*  Reads the replies of every socket that may hold some: one whose fd fired, or that was sent
 *  on (a send may have taken its wake-up signal), since it last came up empty. Each is read
 *  until EAGAIN, which re-arms its ZMQ_FD; a socket with nothing new is not asked, since every
 *  asking costs libzmq a poll() of its mailbox. Handling a reply may send (a request sent
 *  again via the broker), so this goes round until no socket is left unread. */
static void
s_drain(gw_t *gw)
{
    if (gw->draining)
        return;
    gw->draining = true;
    bool read;
    do {
        read = false;
        if (gw->dealer_unread) {
            gw->dealer_unread = false;
            pd_zmq_drain(zsock_resolve(gw->dealer), INT_MAX, s_on_reply_frame, gw,
                         &gw->malformed);
            read = true;
        }
        for (int n = 1; n <= GW_MAX_STORES; n++) { /* a node just left the set may answer */
            gw_store_t *st = &gw->stores[n];
            if (st->unread && st->sock) {
                st->unread = false;
                pd_zmq_drain(zsock_resolve(st->sock), INT_MAX, s_on_reply_frame, gw,
                             &gw->malformed);
                read = true;
            }
        }
    } while (read); /* a reply handled may have sent (a request sent again via the broker) */
    gw->draining = false;
    if (gw->out.count)
        s_link_flush(gw);
}

static void
s_on_dealer(h2o_socket_t *sock, const char *err)
{
    (void)err;
    gw_t *gw = sock->data;
    gw->dealer_unread = true;
    s_drain(gw);
}

static void
s_on_store(h2o_socket_t *sock, const char *err)
{
    (void)err;
    gw_store_t *st = sock->data;
    st->unread = true;
    s_drain(st->gw);
}

static void
s_on_event(const pd_msg_t *m, void *arg)
{
    if (m->type == PD_MSG_EVENT || m->type == PD_MSG_ROOM_EVENT) {
        gw_rt_on_bus(arg, m); /* sequence checked: a room's then goes to gw_sb_on_bus */
    } else if (m->type == PD_MSG_HELLO) {
        gw_sb_on_bus(arg, m);
        gw_rt_on_hello(arg, m);
    }
}

//  While joining: which store nodes have sent on the EVENT topic since the SUB socket opened.
static void
s_on_join_msg(const pd_msg_t *m, void *arg)
{
    gw_t *gw = arg;
    int64_t node = m->i[PD_F_NODE];
    if ((m->type == PD_MSG_HELLO || m->type == PD_MSG_EVENT) && node >= 1 && node <= 64)
        gw->bus_seen |= 1ULL << (node - 1);
}

static void
s_on_bus_frame(pd_zmsg_t *zm, void *arg)
{
    gw_t *gw = arg;
    const char *d = pd_zmsg_data(zm, 0); /* a topic byte (pd_msg.h), then the messages */
    size_t n = pd_zmsg_size(zm, 0);
    if (n < 1) {
        gw->malformed++;
        return;
    }
    if (gw->bus_state == GW_BUS_JOINING) {
        if (d[0] == PD_BUS_EVENT && pd_msg_each(d + 1, n - 1, &gw->zone, s_on_join_msg, gw) >= 0)
            s_bus_check(gw);
        if (gw->bus_state != GW_BUS_LIVE)
            return; /* no subscriber is served before the bus is live */
    }
    if (gw_rt_quiet(gw))
        return;
    if (pd_msg_each(d + 1, n - 1, &gw->zone, s_on_event, gw) < 0)
        gw->malformed++;
    gw_replica_on_bus(gw); /* lists waiting for these events */
}

static void
s_on_bus(h2o_socket_t *sock, const char *err)
{
    (void)err;
    gw_t *gw = sock->data;
    if (gw->sub)
        pd_zmq_drain(zsock_resolve(gw->sub), INT_MAX, s_on_bus_frame, gw, &gw->malformed);
}

//  NULL when the process is out of descriptors (the caller gives up the socket and retries).
static h2o_socket_t *
s_wrap_zmq(gw_t *gw, zsock_t *zs, h2o_socket_cb cb)
{
    int fd = dup(zsock_fd(zs));
    if (fd < 0) {
        pd_log_warn("dup ZMQ_FD: %s", strerror(errno));
        return NULL;
    }
    h2o_socket_t *s = h2o_evloop_socket_create(gw->ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    s->data = gw;
    h2o_socket_read_start(s, cb);
    return s;
}

/* -------------------------------------------------------------------------- the bus */

/*  Only WebSocket clients need the bus. A gateway without any (a REST-only gateway, or one
 *  whose last client left GW_BUS_LEAVE_MS ago) has no SUB socket, so the broker does not send
 *  it every event of the cluster, and when no gateway subscribes, the store nodes keep the
 *  EVENT topic to themselves (the reaper takes only DEADLINE: pd_msg.h), so a renewal costs
 *  no bus traffic at all.
 *
 *  The first WebSocket connection opens a new SUB socket (gw_bus_join). Until the bus is
 *  live, the realtime side holds the connections' messages unread (a subscribe is not
 *  acknowledged before its events can arrive). The subscription travels to the broker and on
 *  to every store node, which answers it with a HELLO on the EVENT topic: a node's HELLO on the
 *  new socket proves that the node sends it every event from then on, and the bus is live when
 *  every node the broker reports up has answered (or after GW_BUS_JOIN_WAIT_MS, if one never
 *  does). A new socket rather than unsubscribing and subscribing again, because a frame on a
 *  new socket cannot be left over from an old subscription. */
#define GW_BUS_LEAVE_MS 5000
#define GW_BUS_JOIN_WAIT_MS 2000 //  a bus that stays silent this long is taken as live
#define GW_BUS_RETRY_MS 500      //  after a failed join

void
gw_bus_join(gw_t *gw)
{
    gw->bus_quiet_ms = 0;
    if (gw->bus_state != GW_BUS_OFF)
        return;
    /* Out of descriptors (or anything else): the clients keep waiting and the tick tries again
     * (s_bus_tick); a gateway never dies for it. */
    int64_t now = pd_mono_ms();
    if (now < gw->bus_retry_ms)
        return;
    if (!s_fds_spare(gw))
        goto fail;
    gw->sub = zsock_new(ZMQ_SUB);
    if (!gw->sub || pd_keys_client(gw->keys, zsock_resolve(gw->sub), "broker") < 0 ||
        zsock_connect(gw->sub, "%s", gw->cfg->bus_out) < 0 ||
        !(gw->sub_io = s_wrap_zmq(gw, gw->sub, s_on_bus)))
        goto fail;
    zsock_set_subscribe(gw->sub, ""); /* events from the broker only: CURVE pins its key */
    zsock_set_rcvtimeo(gw->sub, 0);
    zsock_set_rcvhwm(gw->sub, 1000000);
    gw->bus_state = GW_BUS_JOINING;
    gw->bus_seen = 0;
    gw->bus_proven = false;
    gw->bus_join_ms = pd_mono_ms();
    gw->bus_joins++;
    pd_log_debug("joining the bus");
    return;
fail:
    if (gw->bus_join_failures++ % 20 == 0) /* one line in 10 s while it lasts */
        pd_log_warn("cannot join the bus at %s (%s): trying again in %d ms", gw->cfg->bus_out,
                    strerror(errno), GW_BUS_RETRY_MS);
    zsock_destroy(&gw->sub);
    gw->bus_retry_ms = now + GW_BUS_RETRY_MS;
}

bool
gw_bus_live(const gw_t *gw)
{
    return gw->bus_state == GW_BUS_LIVE;
}

static void
s_bus_live(gw_t *gw)
{
    gw->bus_state = GW_BUS_LIVE;
    pd_log_debug("the bus is live, %lld ms after joining", (long long)(pd_mono_ms() - gw->bus_join_ms));
    gw_rt_bus_live(gw);
    gw_sb_bus_live(gw);
}

//  Live once every store node the broker reports up has sent on the EVENT topic.
static void
s_bus_check(gw_t *gw)
{
    if (gw->bus_state != GW_BUS_JOINING || !gw->nstores)
        return;
    for (int n = 1; n <= gw->nstores; n++)
        if (gw->stores[n].up && !(gw->bus_seen & 1ULL << (n - 1)))
            return;
    gw->bus_proven = true;
    s_bus_live(gw);
}

static void
s_bus_leave(gw_t *gw)
{
    h2o_socket_read_stop(gw->sub_io);
    h2o_socket_close(gw->sub_io);
    gw->sub_io = NULL;
    zsock_destroy(&gw->sub);
    gw->bus_state = GW_BUS_OFF;
    gw->bus_proven = false;
    gw->bus_quiet_ms = 0;
    pd_log_debug("left the bus: no WebSocket client for %d ms", GW_BUS_LEAVE_MS);
}

static void
s_bus_tick(gw_t *gw)
{
    if (gw->bus_state == GW_BUS_OFF) {
        if (!(gw_rt_idle(gw) && gw_sb_idle(gw))) /* a join that failed: clients still wait for it */
            gw_bus_join(gw);
        return;
    }
    int64_t now = pd_mono_ms();
    s_bus_check(gw);
    if (gw->bus_state == GW_BUS_JOINING && now - gw->bus_join_ms >= GW_BUS_JOIN_WAIT_MS) {
        pd_log_warn("not every store node answered on the bus %d ms after joining it: going on",
                    GW_BUS_JOIN_WAIT_MS);
        s_bus_live(gw);
    }
    if (!(gw_rt_idle(gw) && gw_sb_idle(gw)))
        gw->bus_quiet_ms = 0;
    else if (!gw->bus_quiet_ms)
        gw->bus_quiet_ms = now;
    else if (now - gw->bus_quiet_ms >= GW_BUS_LEAVE_MS)
        s_bus_leave(gw);
}

static void
s_hello(gw_t *gw)
{
    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_HELLO, 0);
    pd_msgw_str(w, PD_F_ROLE, "gateway", 7);
    pd_msgw_int(w, PD_F_NODE, gw->cfg->node);
    pd_msgw_int(w, PD_F_GEN, gw->gen);
    gw_send_end(gw);
}

static void s_conns_tick(gw_t *gw);

static void
s_on_tick(h2o_timeout_entry_t *entry)
{
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, tick_entry, entry);
    s_hello(gw);
    pd_probe_beat(gw->cfg); /* liveness: `presenced probe --role gateway` */
    gw_rt_tick(gw);
    gw_sb_tick(gw);
    gw_replica_tick(gw);
    s_bus_tick(gw);
    s_conns_tick(gw);
    h2o_timeout_link(gw->ctx.loop, &gw->tick_timeout, &gw->tick_entry);
}

/* -------------------------------------------------------------------------- connections */

/*  Limits that hold when a client, or many, try to exhaust the gateway (README, "Limits"):
 *
 *  - Descriptors. At most max_conns connections (--max-connections; by default the process's
 *    RLIMIT_NOFILE less a quarter of it, at most GW_FD_RESERVE, kept for ZeroMQ sockets, the
 *    bus and the log). At the cap, or when accept() finds no descriptor (EMFILE, ENFILE), the
 *    listener is left unread until a connection closes or a tick (250 ms) passes: the kernel
 *    queues new clients in the backlog meanwhile, and the loop does not spin on a listener that
 *    stays readable. An internal socket that finds too few descriptors (s_fds_spare) is tried
 *    again before accepting resumes: it gets the descriptors closing connections give back.
 *  - Per address. At most --max-connections-per-ip connections from one client address
 *    (0, the default: no limit, as behind a proxy every client has the proxy's address); more
 *    are answered 429 and closed as soon as they are accepted.
 *  - Request headers. h2o 2.2 buffers a request's headers up to H2O_MAX_REQLEN (about 400 KiB)
 *    before it refuses them. Every tick (250 ms), a connection that is reading a request (its
 *    read callback is h2o's HTTP/1 request reader) with more than --max-header-bytes buffered
 *    and no end of headers within them is answered 431 and closed, so half-sent headers cost at
 *    most that cap once the tick has seen them. h2o's own request timeout (--header-timeout)
 *    closes a connection that does not complete its headers in time (slow clients).
 *
 *  Each accepted socket gets a gw_conn_t (its address slot, and the list the tick walks),
 *  freed by the socket's on_close, however the connection ends (HTTP, WebSocket, error). */
#define GW_FD_RESERVE 256

static void s_on_accept(h2o_socket_t *listener, const char *err);

static void
s_accept_pause(gw_t *gw, bool retry)
{
    if (!gw->accept_paused && gw->listener) {
        h2o_socket_read_stop(gw->listener);
        gw->accept_paused = true;
        gw->accept_pauses++;
    }
    if (retry && !h2o_timeout_is_linked(&gw->accept_entry))
        h2o_timeout_link(gw->ctx.loop, &gw->tick_timeout, &gw->accept_entry);
}

//  Gives internal sockets short of descriptors another try; true while one still is.
static bool
s_fds_retry(gw_t *gw)
{
    gw->fds_short = false;
    if (gw->bus_state == GW_BUS_OFF && !(gw_rt_idle(gw) && gw_sb_idle(gw))) {
        gw->bus_retry_ms = 0;
        gw_bus_join(gw);
    }
    for (int n = 1; n <= gw->nstores; n++)
        if (gw->stores[n].fd_short && !gw->fds_short)
            s_store_open(gw, &gw->stores[n]);
        else if (gw->stores[n].fd_short)
            gw->fds_short = true;
    return gw->fds_short;
}

static void
s_accept_resume(gw_t *gw)
{
    if (gw->fds_short && s_fds_retry(gw))
        return; /* still short: the retry timer (linked again) tries once more */
    if (gw->accept_paused && gw->listener && gw->nconns < gw->max_conns) {
        gw->accept_paused = false;
        h2o_socket_read_start(gw->listener, s_on_accept);
    }
}

static void
s_on_accept_retry(h2o_timeout_entry_t *entry)
{
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, accept_entry, entry);
    s_accept_resume(gw);
}

//  The address's 16 bytes (IPv4 as v4-mapped), or false.
static bool
s_peer_addr(h2o_socket_t *sock, uint8_t addr[16])
{
    struct sockaddr_storage ss;
    socklen_t len = h2o_socket_getpeername(sock, (struct sockaddr *)&ss);
    memset(addr, 0, 16);
    if (len && ss.ss_family == AF_INET) {
        addr[10] = addr[11] = 0xff;
        memcpy(addr + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        return true;
    }
    if (len && ss.ss_family == AF_INET6) {
        memcpy(addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        return true;
    }
    return false;
}

static void
s_iptab_grow(gw_iptab_t *t)
{
    uint32_t n = t->v ? (t->mask + 1) * 2 : 256;
    struct gw_ipent *old = t->v;
    uint32_t oldn = t->v ? t->mask + 1 : 0;
    t->v = calloc(n, sizeof *t->v);
    if (!t->v)
        pd_fatal("calloc");
    t->mask = n - 1;
    t->used = 0;
    for (uint32_t i = 0; i < oldn; i++) {
        if (!old[i].count)
            continue;
        pd_str_t a = {(const char *)old[i].addr, 16};
        uint32_t k = (uint32_t)pd_hash2_keyed(t->key, a, PD_STR_NULL) & t->mask;
        while (t->v[k].count)
            k = (k + 1) & t->mask;
        t->v[k] = old[i];
        t->used++;
    }
    free(old);
}

//  The slot of addr (+1), made if absent; 0 when the table cannot take it.
static uint32_t
s_iptab_slot(gw_iptab_t *t, const uint8_t addr[16])
{
    if (!t->v || (t->used + 1) * 4 > (t->mask + 1) * 3)
        s_iptab_grow(t);
    pd_str_t a = {(const char *)addr, 16};
    uint32_t k = (uint32_t)pd_hash2_keyed(t->key, a, PD_STR_NULL) & t->mask, tomb = UINT32_MAX;
    for (;; k = (k + 1) & t->mask) {
        struct gw_ipent *e = &t->v[k];
        if (e->count && memcmp(e->addr, addr, 16) == 0)
            return k + 1;
        if (!e->count && e->tomb && tomb == UINT32_MAX)
            tomb = k;
        if (!e->count && !e->tomb)
            break;
    }
    if (tomb != UINT32_MAX)
        k = tomb;
    else
        t->used++;
    memcpy(t->v[k].addr, addr, 16);
    t->v[k].tomb = false;
    return k + 1;
}

static void
s_conn_on_close(void *data)
{
    gw_conn_t *c = data;
    gw_t *gw = c->gw;
    if (c->ip_slot) {
        struct gw_ipent *e = &gw->iptab.v[c->ip_slot - 1];
        if (--e->count == 0)
            e->tomb = true;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        gw->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    gw->nconns--;
    free(c);
    s_accept_resume(gw);
}

#define GW_REASON_431 "Request Header Fields Too Large"

//  The body of a limit's answer (431, 429) in Appwrite's error shape; its length.
static int
s_refuse_body(int status, char body[256])
{
    static const char m431[] = "Request header fields are too large.",
                      t431[] = "general_argument_invalid",
                      m429[] = "Too many connections from this address.",
                      t429[] = "general_rate_limit_exceeded";
    return snprintf(body, 256,
                    "{\"message\":\"%s\",\"code\":%d,\"type\":\"%s\",\"version\":\"1.9.6\"}",
                    status == 431 ? m431 : m429, status, status == 431 ? t431 : t429);
}

//  Answers a connection that broke a limit (431, 429) and closes it. The request was never
//  parsed, so nothing of h2o's is writing: the bytes go straight to the socket, and shutting it
//  down makes h2o's next read see the end and close the connection its own way.
static void
s_conn_refuse(h2o_socket_t *sock, int status)
{
    char body[256], resp[512];
    int blen = s_refuse_body(status, body);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "Connection: close\r\n\r\n%s",
                     status == 431 ? "431 " GW_REASON_431 : "429 Too Many Requests", blen, body);
    int fd = h2o_socket_get_fd(sock);
    if (write(fd, resp, (size_t)n) < 0) { /* best effort: the connection ends either way */
    }
    shutdown(fd, SHUT_RDWR);
}

static void
s_on_accept(h2o_socket_t *listener, const char *err)
{
    gw_t *gw = listener->data;
    if (err)
        return;
    for (int i = 0; i < 64; i++) {
        if (gw->nconns >= gw->max_conns) {
            gw->conn_refused[GW_REFUSE_CAP]++;
            s_accept_pause(gw, false); /* resumed when a connection closes */
            return;
        }
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (!sock) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                s_accept_pause(gw, true);
            return;
        }
        gw_conn_t *c = calloc(1, sizeof *c);
        if (!c) {
            h2o_socket_close(sock);
            continue;
        }
        c->sock = sock;
        c->gw = gw;
        uint8_t addr[16];
        if (gw->cfg->max_connections_per_ip && s_peer_addr(sock, addr) &&
            (c->ip_slot = s_iptab_slot(&gw->iptab, addr))) {
            struct gw_ipent *e = &gw->iptab.v[c->ip_slot - 1];
            if (e->count >= gw->cfg->max_connections_per_ip) {
                if (!e->count)
                    e->tomb = true;
                gw->conn_refused[GW_REFUSE_PER_IP]++;
                free(c);
                s_conn_refuse(sock, 429);
                h2o_socket_close(sock);
                continue;
            }
            e->count++;
        }
        c->next = gw->conns;
        if (gw->conns)
            gw->conns->prev = c;
        gw->conns = c;
        gw->nconns++;
        sock->on_close.cb = s_conn_on_close;
        sock->on_close.data = c;
        h2o_accept(&gw->accept_ctx, sock);
        if (!gw->h2o_reqread)
            gw->h2o_reqread = (void *)sock->_cb.read; /* h2o's HTTP/1 request reader */
    }
}

/*  The header cap on a request whose headers arrived complete between two ticks: the first
 *  handler of every path. Counted as on the wire (request line, and name, ": ", value and CRLF
 *  per header). */
static int
s_on_req_limits(h2o_handler_t *handler, h2o_req_t *req)
{
    (void)handler;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    size_t n = req->method.len + req->path.len + sizeof " HTTP/1.1\r\n";
    for (size_t i = 0; i < req->headers.size; i++)
        n += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    if (n <= gw->cfg->max_header_bytes)
        return -1; /* on to the path's own handler */
    gw->conn_refused[GW_REFUSE_HEADERS]++;
    char body[256];
    int len = s_refuse_body(431, body);
    req->res.status = 431;
    req->res.reason = GW_REASON_431;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    req->res.content_length = (size_t)len;
    req->http1_is_persistent = 0;
    h2o_send_inline(req, body, (size_t)len);
    return 0;
}

/*  The header cap, once a tick (see above). O(connections): a pointer and a size per
 *  connection, every 250 ms. */
static void
s_conns_tick(gw_t *gw)
{
    size_t cap = gw->cfg->max_header_bytes;
    for (gw_conn_t *c = gw->conns; c; c = c->next) {
        h2o_socket_t *sock = c->sock;
        if ((void *)sock->_cb.read != gw->h2o_reqread || !sock->input || sock->input->size <= cap)
            continue;
        if (memmem(sock->input->bytes, cap, "\r\n\r\n", 4))
            continue; /* headers complete within the cap: a body or pipelined requests */
        gw->conn_refused[GW_REFUSE_HEADERS]++;
        s_conn_refuse(sock, 431);
    }
}

//  The connection cap: --max-connections, or what the descriptor limit leaves.
static size_t
s_max_conns(const pd_config_t *cfg)
{
    struct rlimit rl;
    size_t fit = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        fit = rl.rlim_cur - (rl.rlim_cur / 4 < GW_FD_RESERVE ? rl.rlim_cur / 4 : GW_FD_RESERVE);
    else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        fit = 1 << 20;
    if (cfg->max_connections && cfg->max_connections < fit)
        return cfg->max_connections;
    if (cfg->max_connections > fit)
        pd_log_warn("--max-connections %zu is more than the descriptor limit allows: %zu",
                    cfg->max_connections, fit);
    return fit;
}

static int
s_listen(gw_t *gw)
{
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *addr;
    socklen_t alen;
    int family;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, gw->cfg->host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)gw->cfg->port);
        addr = (struct sockaddr *)&a4;
        alen = sizeof a4;
        family = AF_INET;
    } else if (inet_pton(AF_INET6, gw->cfg->host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)gw->cfg->port);
        addr = (struct sockaddr *)&a6;
        alen = sizeof a6;
        family = AF_INET6;
    } else {
        pd_fatalx("--host %s is not an IP address", gw->cfg->host);
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (bind(fd, addr, alen) != 0 || listen(fd, 4096) != 0) {
        pd_log_warn("cannot listen on %s:%d: %s", gw->cfg->host, gw->cfg->port,
                    strerror(errno));
        close(fd);
        return -1;
    }
    gw->listener = h2o_evloop_socket_create(gw->ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    gw->listener->data = gw;
    h2o_socket_read_start(gw->listener, s_on_accept);
    return 0;
}

/* -------------------------------------------------------------------------- main */

int
gateway_main(pd_config_t *cfg)
{
    zsys_handler_set(NULL);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if (!cfg->broker_front[0] || !cfg->bus_out[0])
        pd_fatalx("gateway needs --broker-front and --bus-out");

    static gw_t g;
    gw_t *gw = &g;
    gw->cfg = cfg;
    gw->gen = pd_now_ms();
    if (pd_config_load_projects(cfg, &gw->projects) < 0)
        return 2;
    /* cfg keeps the quick-start secrets: a SIGHUP reload rebuilds that project from them. */
    pd_msgw_init(&gw->out);
    pd_msgw_init(&gw->keep);
    gw->cur = &gw->out;
    for (int n = 1; n <= GW_MAX_STORES; n++)
        pd_msgw_init(&gw->stores[n].out);
    gw->claims = pd_claims_new(cfg->claim_cache ? cfg->claim_cache : PD_CLAIMS_DEFAULT_MAX);
    msgpack_zone_init(&gw->zone, 8192);
    msgpack_zone_init(&gw->rzone, 1024);

    h2o_config_init(&gw->config);
    gw->config.max_request_entity_size = cfg->max_body * 4 + 4096;
    /* h2o's request timeout: a connection must complete a request's headers (and, kept alive,
     * start the next one) within it */
    gw->config.http1.req_timeout = (uint64_t)cfg->header_timeout_ms;
    h2o_hostconf_t *host =
        h2o_config_register_host(&gw->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    /* h2o takes the first registered path that matches: the longer one first */
    h2o_pathconf_t *rtpath = h2o_config_register_path(host, "/v1/realtime", 0);
    h2o_create_handler(rtpath, sizeof(h2o_handler_t))->on_req = s_on_req_limits;
    h2o_create_handler(rtpath, sizeof(h2o_handler_t))->on_req = gw_rt_on_req;
    h2o_pathconf_t *sbpath = h2o_config_register_path(host, "/realtime/v1/websocket", 0);
    h2o_create_handler(sbpath, sizeof(h2o_handler_t))->on_req = s_on_req_limits;
    h2o_create_handler(sbpath, sizeof(h2o_handler_t))->on_req = gw_sb_on_req; /* Supabase */
    h2o_pathconf_t *roompath = h2o_config_register_path(host, "/v1/rooms", 0);
    h2o_create_handler(roompath, sizeof(h2o_handler_t))->on_req = s_on_req_limits;
    h2o_create_handler(roompath, sizeof(h2o_handler_t))->on_req = gw_sb_on_rooms_req;
    gw_static_register(host, s_on_req_limits); /* /console/, /v1/presence.js */
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = s_on_req_limits;
    h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
    handler->on_req = gw_rest_on_req;
    h2o_context_init(&gw->ctx, h2o_evloop_create(), &gw->config);
    gw->accept_ctx.ctx = &gw->ctx;
    gw->accept_ctx.hosts = gw->config.hosts;
    gw_rt_init(gw);
    gw_sb_init(gw);
    gw->replicas = gw_replica_new(gw);

    snprintf(gw->ident, sizeof gw->ident, "gateway-%d-%d", cfg->node, (int)getpid());
    char kname[32], kerr[512];
    snprintf(kname, sizeof kname, "gateway-%d", cfg->node);
    if (!(gw->keys = pd_keys_load(cfg->keys_dir, kname, kerr, sizeof kerr)))
        pd_fatalx("%s", kerr);
    gw->dealer = zsock_new(ZMQ_DEALER);
    if (pd_keys_client(gw->keys, zsock_resolve(gw->dealer), "broker") < 0)
        pd_fatalx("no public key for the broker in %s", cfg->keys_dir);
    zsock_set_rcvtimeo(gw->dealer, 0);
    zsock_set_sndtimeo(gw->dealer, 0);
    zsock_set_sndhwm(gw->dealer, 100000);
    zsock_set_rcvhwm(gw->dealer, 100000);
    if (zsock_connect(gw->dealer, "%s", cfg->broker_front) < 0)
        pd_fatalx("cannot connect to %s", cfg->broker_front);
    gw->dealer_io = s_wrap_zmq(gw, gw->dealer, s_on_dealer);
    /* the bus: joined with the first WebSocket client (gw_bus_join) */

    gw->flush_entry.cb = s_on_flush;
    h2o_timeout_init(gw->ctx.loop, &gw->req_timeout, (uint64_t)cfg->request_timeout_ms);
    h2o_timeout_init(gw->ctx.loop, &gw->tick_timeout, 250);
    gw->tick_entry.cb = s_on_tick;
    h2o_timeout_link(gw->ctx.loop, &gw->tick_timeout, &gw->tick_entry);
    s_hello(gw);

    gw->max_conns = s_max_conns(cfg);
    gw->accept_entry.cb = s_on_accept_retry;
    randombytes_buf(gw->iptab.key, sizeof gw->iptab.key);
    if (s_listen(gw) < 0)
        return 1;
    pd_log_info("gateway %d listening on %s:%d", cfg->node, cfg->host, cfg->port);

    int64_t stop_at = 0;
    for (;;) {
        h2o_evloop_run(gw->ctx.loop, 100);
        if (s_reload) {
            s_reload = 0;
            pd_projects_t np;
            if (pd_config_load_projects(cfg, &np) == 0) {
                pd_projects_t old = gw->projects;
                gw->projects = np;
                gw_rt_on_reload(gw);
                pd_projects_free(&old);
                pd_log_info("projects reloaded (%zu)", gw->projects.n);
            } else {
                pd_log_warn("reload failed; keeping the current projects");
            }
        }
        if (s_stop && !stop_at) {
            /* Stop accepting, finish what is in flight, then leave. */
            pd_log_info("gateway %d draining %zu requests", cfg->node, gw->in_flight);
            if (gw->listener) {
                h2o_socket_read_stop(gw->listener);
                h2o_socket_close(gw->listener);
                gw->listener = NULL;
            }
            gw_rt_shutdown(gw);
            gw_sb_shutdown(gw);
            stop_at = pd_mono_ms() + 5000;
        }
        if (stop_at && (gw->in_flight == 0 || pd_mono_ms() > stop_at))
            break;
    }
    pd_log_info("gateway %d stopped", cfg->node);
    zsock_destroy(&gw->dealer);
    pd_keys_destroy(&gw->keys);
    zsock_destroy(&gw->sub);
    for (int n = 1; n <= GW_MAX_STORES; n++)
        zsock_destroy(&gw->stores[n].sock);
    pd_claims_destroy(&gw->claims);
    gw_replica_destroy(&gw->replicas);
    while (gw->nbig)
        free(gw->big[--gw->nbig].buf);
    return 0;
}
