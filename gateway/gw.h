/*  gw — what the files of the gateway share (gateway.c: loop, broker link, requests in flight,
 *  metrics; gw_rest.c: the REST routes; gw_realtime.c: WebSockets and fan-out). Not used
 *  outside gateway/. */
#ifndef GW_H
#define GW_H

#include <czmq.h>
#include <h2o.h>
#include <jansson.h>

#include "pd_auth.h"
#include "pd_claims.h"
#include "pd_config.h"
#include "pd_keys.h"
#include "pd_msg.h"

/*  Routes, for metrics. */
#define GW_ROUTES(X)                                                                               \
    X(PING, "ping") X(HEALTH, "health") X(METRICS, "metrics") X(LIST, "list") X(GET, "get")        \
    X(COUNT, "count")                                                                              \
    X(UPSERT, "upsert") X(UPDATE, "update") X(DELETE, "delete") X(JWT, "jwt")                      \
    X(REALTIME, "realtime") X(OPTIONS, "options") X(OTHER, "other")
enum {
#define GW_R(name, str) GW_ROUTE_##name,
    GW_ROUTES(GW_R)
#undef GW_R
        GW_ROUTE__COUNT
};

#define GW_STATUS_SLOTS 16
#define GW_LAT_BUCKETS 14

typedef struct gw gw_t;
typedef struct gw_pending gw_pending_t;

/*  What to do with the broker's reply to a request. */
typedef void (*gw_reply_fn)(gw_t *gw, gw_pending_t *p, const pd_msg_t *reply);

/*  A request waiting for the broker or a store node: lives in the h2o request's pool (freed
 *  with it). */
struct gw_pending {
    gw_t *gw;
    h2o_req_t *req;            //  NULL once answered (or the client went away)
    uint64_t rid;              //  key in the pending table
    int route;                 //  GW_ROUTE_*
    int type;                  //  PD_MSG_* sent
    int node;                  //  store node it went to directly (0: the broker)
    pd_str_t saved;            //  direct: the message as sent (pool), to send again via the broker
    pd_str_t path_id;          //  direct: the presence id the caller named (pool)
    gw_reply_fn on_reply;      //  what to do with the reply (each of them, with more)
    uint32_t more;             //  answers still expected after the next one (several nodes)
    uint64_t nodes;            //  store nodes it went to directly, several (bit n)
    h2o_timeout_entry_t timer; //  request timeout
    int64_t start_ns;          //  for the latency histogram
    void *user;                //  route-specific (realtime: the connection)
};

/*  A caller's identity for one request or connection. */
typedef struct {
    const pd_project_t *project;
    int kind;                  //  GW_ID_GUEST, GW_ID_USER, GW_ID_KEY
    const pd_apikey_t *key;
    char user_id[37];
    int64_t exp;               //  token expiry (s), users only
    pd_buf_t roles;            //  packed role list (not for keys)
} gw_ident_t;

enum { GW_ID_GUEST = 0, GW_ID_USER = 1, GW_ID_KEY = 2 };

#define GW_MAX_STORES 64
#define GW_BIG_KEEP 4          //  large page buffers kept for reuse (gateway.c, gw_big_alloc)
#define GW_BIG_MAX (8u << 20)  //  and their largest size
#define GW_BROKER_SILENT_MS 3000 //  no ROUTE from the broker this long: requests fail fast (503)

/*  An accepted connection, as the limits see it (gateway.c, "connections"). */
typedef struct gw_conn {
    h2o_socket_t *sock;
    struct gw *gw;
    struct gw_conn *prev, *next;
    uint32_t ip_slot;          //  its address's entry in the per-address table (+1; 0: none)
} gw_conn_t;

/*  Open connections per client address: open addressing, SipHash under a random key. */
typedef struct {
    struct gw_ipent {
        uint8_t addr[16];
        uint32_t count;        //  0: free (or a tombstone when tomb)
        bool tomb;
    } *v;
    uint32_t mask;             //  slots - 1 (a power of two)
    uint32_t used;             //  live + tombstones
    unsigned char key[PD_HASH_KEYBYTES];
} gw_iptab_t;

enum { GW_REFUSE_CAP, GW_REFUSE_PER_IP, GW_REFUSE_HEADERS };

enum { GW_BUS_OFF, GW_BUS_JOINING, GW_BUS_LIVE };

/*  A store node's front, as the broker's ROUTE messages describe it. */
typedef struct {
    zsock_t *sock;             //  DEALER to the front (NULL: no route)
    h2o_socket_t *io;          //  its ZMQ_FD in the evloop
    char endpoint[256];
    int64_t gen;               //  the node's boot generation
    bool up;                   //  the broker hears from it
    pd_msgw_t out;             //  requests to it this loop turn
    bool unread;               //  sent on, or its fd fired, since it last came up empty
    bool fd_short;             //  its link waits for descriptors (gateway.c, s_fds_spare)
    bool fronted;              //  a route gave it an endpoint once: one missing now is a broker
                               //  that restarted and has not heard from the node yet
    struct gw *gw;
} gw_store_t;

struct gw {
    pd_config_t *cfg;
    pd_projects_t projects;
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    zsock_t *dealer;           //  to the broker front
    pd_keys_t *keys;           //  the cluster's key set: every ZeroMQ socket is a CURVE client
    h2o_socket_t *dealer_io;   //  ZMQ_FD of dealer in the evloop
    zsock_t *sub;              //  the bus (NULL while no WebSocket client needs it)
    h2o_socket_t *sub_io;
    int bus_state;             //  GW_BUS_*
    int64_t bus_join_ms;       //  when the SUB socket was opened
    uint64_t bus_seen;         //  store nodes heard on the EVENT topic since (bit n-1)
    bool bus_proven;           //  live because every node was heard (not after a wait)
    int64_t bus_quiet_ms;      //  since when no client needs the bus (0: one does)
    uint64_t bus_joins;
    uint64_t bus_join_failures; //  joins that failed (out of descriptors) and were retried
    int64_t bus_retry_ms;      //  mono ms before which no join is tried again
    /* connections (gateway.c, "connections") */
    gw_conn_t *conns;          //  every accepted connection
    size_t nconns;
    size_t max_conns;          //  --max-connections, within RLIMIT_NOFILE less a reserve
    bool accept_paused;        //  the listener is not read: at the cap, or out of descriptors
    bool fds_short;            //  an internal socket waits for descriptors (before clients)
    h2o_timeout_entry_t accept_entry; //  resumes accepting after EMFILE
    gw_iptab_t iptab;          //  connections per client address (--max-connections-per-ip)
    void *h2o_reqread;         //  h2o's HTTP/1 request reader (a connection reading a request)
    uint64_t conn_refused[3];  //  GW_REFUSE_*
    uint64_t accept_pauses;
    pd_msgw_t out;             //  requests to the broker this loop turn
    pd_msgw_t keep;            //  scratch: what of a batch still goes to a silent broker
    uint64_t broker_failfast;  //  batches whose requests were answered 503 (broker silent)
    gw_store_t stores[GW_MAX_STORES + 1]; //  1-based, as the broker routes them
    int nstores;
    int64_t route_ms;          //  mono ms of the broker's last ROUTE (GET /v1/health/ready)
    pd_msgw_t *cur;            //  the batch the open message goes into
    gw_pending_t *cur_keep;    //  whose message being written is kept in its saved (NULL: none)
    size_t cur_start;          //  the message's offset in cur
    pd_claims_t *claims;       //  (project, user) -> presence id, learned from replies
    uint64_t direct, rerouted;  //  requests sent straight to a node; sent again via the broker
    uint64_t plans, plans_again; //  large lists' pages fetched here (gw_rest.c); listed again
    struct { void *buf; size_t cap; } big[GW_BIG_KEEP]; //  kept for the next page (gw_big_alloc)
    size_t nbig;
    bool flush_linked;
    h2o_timeout_entry_t flush_entry;
    h2o_timeout_t req_timeout;
    h2o_timeout_t tick_timeout; //  1 s housekeeping
    h2o_timeout_entry_t tick_entry;
    bool dealer_unread;         //  the dealer was sent on, or fired, since it came up empty
    bool draining;              //  re-entrancy guard for s_drain
    gw_pending_t **slots;       //  pending table: rid low bits index it
    uint32_t *free_slots;
    size_t nslots, cap_slots, nfree;
    uint32_t rid_gen;
    size_t in_flight;
    msgpack_zone zone;
    msgpack_zone rzone;        //  for requests sent again (inside the handling of a batch)
    int64_t gen;
    char ident[48];
    /* metrics */
    uint64_t requests[GW_ROUTE__COUNT][GW_STATUS_SLOTS];
    uint64_t lat[GW_ROUTE__COUNT][GW_LAT_BUCKETS + 1];
    double lat_sum[GW_ROUTE__COUNT];
    unsigned long malformed;
    uint64_t timeouts;
    void *rt;                   //  realtime state (gw_realtime.c)
    struct gw_replicas *replicas; //  rosters kept here (gw_replica.h)
};

/* gateway.c */
//  Starts a request to the broker: returns the message writer positioned inside a new message
//  (caller adds fields, then gw_send_end). p is allocated in req's pool.
gw_pending_t *gw_pending_new(gw_t *gw, h2o_req_t *req, int route, gw_reply_fn fn);
pd_msgw_t *gw_send_begin(gw_t *gw, int type, uint64_t rid);
//  The same, straight to store node `node` (gw_direct_node): the request must need no claim or
//  list, and a direct UPSERT must carry PD_FL_CLAIMED. path_id is the id the caller named: if
//  the node cannot be reached, or a direct UPSERT is refused (the claim was stale), the request
//  goes to the broker with that id.
pd_msgw_t *gw_send_direct(gw_t *gw, gw_pending_t *p, int node, int type, pd_str_t path_id);
//  A message of this gateway's own (no pending request) straight to store node `node`, or NULL
//  when there is no link to it. Not sent again via the broker: the caller times it out.
pd_msgw_t *gw_send_store(gw_t *gw, int node, int type, uint64_t rid);
//  To the broker, a copy of m under p's rid without the fields whose bit is in skip (the
//  message stays open: add them, then gw_send_end).
pd_msgw_t *gw_send_copy(gw_t *gw, gw_pending_t *p, const pd_msg_t *m, uint64_t skip);
//  Keeps the message being written in p->saved (the request's pool) once it ends.
void gw_send_keep(gw_t *gw, gw_pending_t *p);
void gw_send_end(gw_t *gw);
//  Answers p, sent to several nodes (p->nodes), with UNAVAILABLE in place of one answer that will
//  not come: its handler decides what to do.
void gw_fail_answer(gw_t *gw, gw_pending_t *p);
//  n bytes that live as long as req, from the buffers kept for large pages (no fresh mapping
//  to fault in for each page); returned to them, or freed, when req ends.
void *gw_big_alloc(gw_t *gw, h2o_req_t *req, size_t n);
//  True if this gateway reaches every store node of several directly (a list's plan can be
//  fetched: gw_rest.c, "lists").
bool gw_direct_all(gw_t *gw);
//  Subscribes to the bus if this gateway is not (a WebSocket client needs it); gw_bus_live
//  says when its events flow.
void gw_bus_join(gw_t *gw);
bool gw_bus_live(const gw_t *gw);
//  The store node to send a request on (project, id) to directly, or 0 (the broker) when the
//  node's front is unknown or the broker says it is down.
int gw_direct_node(gw_t *gw, pd_str_t project, pd_str_t id);
//  The presence id of user's record as last seen in a reply (may be stale), or NULL.
const char *gw_claim_get(gw_t *gw, pd_str_t project, pd_str_t user);
//  Records the outcome of a request in the metrics.
void gw_metrics_count(gw_t *gw, int route, int status, int64_t start_ns);
void gw_metrics_render(gw_t *gw, pd_buf_t *b);
int64_t gw_now_ns(void);

/* gw_rest.c */
int gw_rest_on_req(h2o_handler_t *self, h2o_req_t *req);
//  The value of request header `name` (lower case), or PD_STR_NULL.
pd_str_t gw_header(h2o_req_t *req, const char *name);
//  Sends a JSON (or text) response with CORS headers. body is copied.
//  Called before any response: a connection left polled while its request waited
//  (gateway.c, "waiting connections") goes back to the state h2o expects.
void gw_conn_answer(h2o_req_t *req);
void gw_respond(gw_t *gw, h2o_req_t *req, int route, int status, const char *ctype,
                const char *body, size_t len, int64_t start_ns);
//  The same with a body that lives as long as req (its pool, gw_big_alloc): not copied.
void gw_respond_pool(gw_t *gw, h2o_req_t *req, int route, int status, const char *ctype,
                     char *body, size_t len, int64_t start_ns);
void gw_respond_err(gw_t *gw, h2o_req_t *req, int route, int code, pd_str_t msg,
                    int64_t start_ns);
//  Resolves the caller: project from project_id, then key or JWT. Returns PD_ERR_OK or an
//  error code with a message in err.
int gw_ident_resolve(gw_t *gw, gw_ident_t *id, pd_str_t project_id, pd_str_t key,
                     pd_str_t jwt, char *err, size_t errlen);
void gw_ident_free(gw_ident_t *id);

/* gw_realtime.c */
void gw_rt_init(gw_t *gw);
int gw_rt_on_req(h2o_handler_t *self, h2o_req_t *req); //  the /v1/realtime path
//  A bus EVENT, or a ROOM_EVENT: checked against its node's sequence (a room's then goes to
//  gw_sb_on_bus).
void gw_rt_on_bus(gw_t *gw, const pd_msg_t *ev);
bool gw_rt_quiet(gw_t *gw); //  no connection, no hold, no room: bus frames may be skipped
bool gw_rt_idle(const gw_t *gw); //  the same, without counting a frame
void gw_rt_bus_live(gw_t *gw); //  the bus is live: handle the messages held meanwhile
//  A store node's HELLO on the bus (its last SEQ), and what a node resends (st_replay.h).
void gw_rt_on_hello(gw_t *gw, const pd_msg_t *m);
void gw_rt_on_replay(gw_t *gw, const pd_msg_t *m);
//  The last event of store node `node` handled here, and its generation; false while none is
//  known or a resync holds its events.
bool gw_rt_seq(const gw_t *gw, int node, int64_t *gen, int64_t *seq);
void gw_rt_tick(gw_t *gw);
void gw_rt_metrics(gw_t *gw, pd_buf_t *b);
void gw_rt_shutdown(gw_t *gw);
//  Projects were reloaded (SIGHUP): re-resolve every connection's project pointer.
void gw_rt_on_reload(gw_t *gw);

#endif
