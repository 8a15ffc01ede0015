/*  gw_supabase — see gw_supabase.h.
 *
 *  A connection (sb_conn_t: its gw_ws_conn_t first) speaks one serializer, chosen by ?vsn=
 *  (1.0.0 JSON objects, 2.0.0 JSON arrays and binary broadcasts; pd_phx). It is admitted by
 *  its ?apikey=, a Supabase key: an HS256 JWT with role anon or service_role whose ref names
 *  the project, signed with the project's secret (pd_jwt_verify_sb). A channel is joined with
 *  phx_join on topic "realtime:<channel>"; its access_token (a user's JWT, or the key again)
 *  says who the channel acts as, and can be refreshed with access_token.
 *
 *  Rooms. A room is (project, channel), owned by the store node pd_shard_owner(project,
 *  channel) picks, which holds its members (pd_room.h) and publishes every join and leave on
 *  the bus. This gateway keeps a mirror of each room one of its connections has joined, built
 *  from a snapshot the store publishes on the bus for it (so the snapshot sits exactly in the
 *  bus's order: every event before it is in it, every event after it is applied to it), and
 *  kept by the events that follow. A channel with presence gets presence_state from the mirror
 *  (rendered once per change of the room, shared by a storm of joiners), then presence_diff:
 *  the room's joins and leaves are gathered for SB_DIFF_WINDOW_MS and sent as one diff to every
 *  presence channel of the room (rendered once; a channel that got its state during the window
 *  gets only the part after it). Broadcasts go through the room's store node too and come back
 *  on the bus to every gateway with the room. presence_state, diffs and broadcasts are one frame
 *  per serializer for every channel (no join_ref, as Phoenix's broadcasts; clients accept it):
 *  encoded once and, for clients with permessage-deflate, compressed once (s_send_shared).
 *
 *  Members are bound to their connection: untrack, leave, close and a refused token remove
 *  them; the gateway renews their lease every SB_RENEW_MS, so the members of a gateway that
 *  dies leave within PD_ROOM_LEASE_MS (the store node expires them, with events). */
#include "gw_supabase.h"

#include <h2o/websocket.h>
#include <sodium.h>

#include "gw_http.h"
#include "gw_ws.h"
#include "pd_err.h"
#include "pd_log.h"
#include "pd_map.h"
#include "pd_phx.h"
#include "pd_room.h"

#define SB_DIFF_WINDOW_MS 25       //  joins and leaves of a room are sent together this long
                                   //  (--room-diff-window, 1 to 1000)
#define SB_RENEW_MS (PD_ROOM_LEASE_MS / 3)
#define SB_SNAP_RETRY_MS 2000      //  a room's snapshot not back after this is asked again
#define SB_MAX_CHANNELS 100        //  channels per connection
#define SB_MAX_MEMBERS 10000       //  members per room
#define SB_MAX_MESSAGE (256 * 1024) //  bytes of one client frame (a broadcast's payload)
#define SB_RATE 100                //  messages per second per connection (heartbeats aside)
#define SB_RATE_BURST 200
#define SB_QUEUE_DEFAULT (16u << 20)
#define SB_IDLE_MS 90000           //  realtime-js heartbeats every 25 s
#define SB_STALL_MS 10000
#define SB_TOPIC_PREFIX "realtime:"
#define SB_METRIC_ROOMS 100        //  rooms listed with their member count in /metrics

typedef struct sb sb_t;
typedef struct sb_room sb_room_t;
typedef struct sb_conn sb_conn_t;

//  Who a connection or a channel acts as.
typedef struct {
    int kind;                  //  GW_ID_GUEST (anon), GW_ID_USER (authenticated), GW_ID_KEY
    char user[37];
    int64_t exp;               //  seconds; 0: no expiry
    uint16_t roles_len;
    char roles[448];           //  its roles, packed (pd_roles_*; cut at a whole role)
} sb_who_t;

typedef struct sb_chan {
    struct sb_chan *next_c;    //  the connection's channels
    struct sb_chan *prev_r, *next_r; //  the room's channels
    sb_conn_t *c;
    sb_room_t *room;
    sb_who_t who;
    bool presence, self_, ack, private_;
    bool tracked;              //  a meta of ours is (or is being) in the room
    bool synced;               //  presence_state sent: diffs follow
    uint32_t batch_from;       //  the room's batch entries it still needs
    char topic[PD_PHX_MAX_FIELD + 1];
    char join_ref[PD_PHX_MAX_FIELD + 1];
    char key[PD_PHX_MAX_KEY + 1];
} sb_chan_t;

struct sb_conn {
    gw_ws_conn_t ws;           //  first: gw_ws allocates the struct
    sb_t *sb;
    int vsn;
    char project_id[37];       //  looked up when needed: projects are reloaded (SIGHUP)
    sb_who_t who;              //  the apikey's
    char conn[64];             //  "<gateway ident>/<serial>": names its members in the store
    sb_chan_t *chans;
    int nchans;
    pd_rate_t rate;            //  messages it may send (SB_RATE)
    bool counted;
};

//  A member of a room's mirror: one meta, in its key's list.
typedef struct sb_meta {
    pd_mapent_t e;             //  by ref
    struct sb_key *k;
    struct sb_meta *prev, *next;
    uint32_t rlen, mlen;
    char *ref, *meta;
    char data[];
} sb_meta_t;

typedef struct sb_key {
    pd_mapent_t e;             //  by key
    sb_meta_t *head, *tail;
    struct sb_key *prev, *next;
    uint32_t klen;
    char key[];
} sb_key_t;

//  A join or leave waiting for the room's next diff: strings in the room's arena.
typedef struct {
    uint8_t action;            //  PD_ROOM_JOIN / PD_ROOM_LEAVE
    uint32_t key, klen, ref, rlen, meta, mlen;
} sb_entry_t;

enum { SB_ROOM_SNAP_WAIT = 0, SB_ROOM_LIVE = 1 };

struct sb_room {
    pd_mapent_t e;             //  by (project, channel)
    sb_t *sb;
    char project[37];
    char channel[PD_PHX_MAX_FIELD + 1];
    uint32_t plen, clen;
    int state;
    int64_t snap_ms;           //  mono ms the snapshot was asked for (asked again if lost)
    int busy;                  //  a walk over chans is under way: an empty room waits for it
    bool resync;               //  its node restarted: the snapshot asked for replaces the state
    int64_t snap_gen, snap_seq; //  the node's generation and SEQ at the snapshot: joins and
                                //  leaves up to them are in it (a resent one is dropped)
    sb_chan_t *chans;
    size_t nchans, ntracked;
    pd_map_t keys, metas;      //  the mirror
    sb_key_t *khead, *ktail;
    size_t nmembers;
    pd_buf_t state_json;       //  presence_state's payload, while valid
    bool state_valid;
    gw_ws_shared_t state_frame[3]; //  presence_state per serializer, while valid (shared frames)
    sb_entry_t *batch;         //  the diff being gathered
    uint32_t nbatch, cap_batch;
    pd_buf_t arena;
    h2o_timeout_entry_t diff_entry;
};

//  A track (or an acknowledged broadcast) waiting for the store: gw_pending_new wants an h2o
//  request's pool, so the op carries a request-shaped holder (as gw_realtime.c's ops do).
typedef struct sb_op {
    h2o_req_t req;
    sb_t *sb;
    struct sb_op *prev, *next;
    sb_conn_t *c;              //  NULL once the connection is gone
    int64_t deadline_ms;
    char topic[PD_PHX_MAX_FIELD + 1];
    char join_ref[PD_PHX_MAX_FIELD + 1];
    char ref[PD_PHX_MAX_FIELD + 1];
    bool has_ref;
    gw_pending_t *p;           //  its entry in the gateway's table (p->rid)
} sb_op_t;

struct sb {
    gw_t *gw;
    gw_ws_ctx_t ws;
    pd_map_t rooms;
    sb_op_t *ops;
    h2o_timeout_t diff_timeout;
    pd_buf_t out, tmp;         //  frames being built
    pd_buf_t diff, payload;    //  a diff or a broadcast's payload
    gw_ws_shared_t frame[3];   //  its frame per serializer, sent to every channel (shared frames)
    sb_entry_t **sortv;        //  a diff's entries being sorted by key
    size_t cap_sortv;
    uint64_t serial;
    int64_t renew_ms;
    size_t nconns, nchans;
    bool shutting_down;
    /* metrics */
    uint64_t opened, refused, messages, errors, diffs, states, bcasts_in, bcasts_out, snapshots;
    uint64_t rate_limited, resyncs;
    int64_t node_gen[GW_MAX_STORES + 1]; //  each store node's boot generation, from its HELLOs
};

static size_t s_storage_key; //  the slot of this gateway's sb_t in its h2o context's storage

static sb_t *
s_sb(gw_t *gw)
{
    return *h2o_context_get_storage(&gw->ctx, &s_storage_key, NULL);
}

static sb_conn_t *
s_conn(gw_ws_conn_t *ws)
{
    return (sb_conn_t *)ws;
}

/* -------------------------------------------------------------------------- sending */

static void
s_send_text(sb_conn_t *c, const pd_buf_t *b)
{
    gw_ws_send(&c->ws, b->data, b->len);
}

/*  A frame many channels get, identical for each (no join_ref, as Phoenix's broadcasts): encoded
 *  once, and for clients with permessage-deflate compressed once (gw_ws_shared_t), however many
 *  members a room has. A join storm's presence_state and diffs cost one compression each. */
static void
s_send_shared(sb_conn_t *c, gw_ws_shared_t *sh)
{
    if (c->ws.state == GW_WS_OPEN)
        gw_ws_out_shared(&c->ws, 0, 0, sh, 0);
}

static void
s_state_changed(sb_room_t *r)
{
    r->state_valid = false;
    for (int v = 0; v < 3; v++)
        gw_ws_shared_reset(&r->state_frame[v]);
}

static pd_str_t
s_opt(const char *s)
{
    return s && s[0] ? pd_str(s) : PD_STR_NULL;
}

//  A phx_reply to (join_ref, ref, topic) with status and response (JSON text).
static void
s_reply(sb_conn_t *c, pd_str_t join_ref, pd_str_t ref, pd_str_t topic, const char *status,
        const char *response)
{
    pd_buf_t *b = &c->sb->out;
    pd_buf_reset(b);
    pd_phx_reply(b, c->vsn, join_ref, ref, topic, status, response, strlen(response));
    s_send_text(c, b);
}

//  An error reply {"reason": reason}, as Supabase sends its refusals.
static void
s_reply_err(sb_conn_t *c, pd_str_t join_ref, pd_str_t ref, pd_str_t topic, const char *reason)
{
    sb_t *sb = c->sb;
    sb->errors++;
    pd_buf_reset(&sb->tmp);
    pd_buf_adds(&sb->tmp, "{\"reason\":");
    pd_buf_add_json_str(&sb->tmp, reason, strlen(reason));
    pd_buf_add(&sb->tmp, "}", 1);
    pd_buf_add(&sb->tmp, "", 1);
    s_reply(c, join_ref, ref, topic, "error", sb->tmp.data);
}

//  A message to a channel (event with payload), its join_ref set.
static void
s_push(sb_chan_t *ch, const char *event, const char *payload, size_t len)
{
    pd_buf_t *b = &ch->c->sb->out;
    pd_buf_reset(b);
    pd_phx_encode(b, ch->c->vsn, pd_str(ch->join_ref), PD_STR_NULL, pd_str(ch->topic),
                  pd_str(event), payload, len);
    s_send_text(ch->c, b);
}

static void s_chan_free(sb_chan_t *ch);

//  A system message then phx_close: how Supabase ends a channel whose token went bad; then the
//  channel is freed (by on_detach already, if sending dropped the connection).
static void s_chan_system_close(sb_chan_t *ch, const char *message);

static void
s_chan_end(sb_chan_t *ch, const char *message)
{
    sb_conn_t *c = ch->c;
    s_chan_system_close(ch, message);
    if (c->ws.state == GW_WS_OPEN)
        s_chan_free(ch);
}

static void
s_chan_system_close(sb_chan_t *ch, const char *message)
{
    pd_buf_t *t = &ch->c->sb->tmp;
    pd_buf_reset(t);
    pd_buf_adds(t, "{\"extension\":\"system\",\"status\":\"error\",\"message\":");
    pd_buf_add_json_str(t, message, strlen(message));
    pd_buf_adds(t, ",\"channel\":");
    const char *name = ch->topic + strlen(SB_TOPIC_PREFIX);
    pd_buf_add_json_str(t, name, strlen(name));
    pd_buf_add(t, "}", 1);
    pd_buf_t copy;
    pd_buf_init(&copy);
    pd_buf_add(&copy, t->data, t->len);
    sb_conn_t *c = ch->c;
    s_push(ch, "system", copy.data, copy.len);
    if (c->ws.state == GW_WS_OPEN) /* not dropped while sending */
        s_push(ch, "phx_close", "{}", 2);
    pd_buf_free(&copy);
}

/* -------------------------------------------------------------------------- rooms: mirror */

static sb_room_t *
s_room_find(sb_t *sb, pd_str_t project, pd_str_t channel, uint64_t *hash)
{
    uint64_t h = pd_map_hash(&sb->rooms, project, channel);
    if (hash)
        *hash = h;
    for (pd_mapent_t *e = pd_map_first(&sb->rooms, h); e; e = e->next) {
        sb_room_t *r = (sb_room_t *)e;
        if (e->hash == h && pd_str_eq((pd_str_t){r->project, r->plen}, project) &&
            pd_str_eq((pd_str_t){r->channel, r->clen}, channel))
            return r;
    }
    return NULL;
}

static sb_key_t *
s_key_find(sb_room_t *r, pd_str_t key, uint64_t *hash)
{
    uint64_t h = pd_map_hash(&r->keys, key, PD_STR_NULL);
    if (hash)
        *hash = h;
    for (pd_mapent_t *e = pd_map_first(&r->keys, h); e; e = e->next) {
        sb_key_t *k = (sb_key_t *)e;
        if (e->hash == h && pd_str_eq((pd_str_t){k->key, k->klen}, key))
            return k;
    }
    return NULL;
}

static sb_meta_t *
s_meta_find(sb_room_t *r, pd_str_t ref)
{
    uint64_t h = pd_map_hash(&r->metas, ref, PD_STR_NULL);
    for (pd_mapent_t *e = pd_map_first(&r->metas, h); e; e = e->next) {
        sb_meta_t *m = (sb_meta_t *)e;
        if (e->hash == h && pd_str_eq((pd_str_t){m->ref, m->rlen}, ref))
            return m;
    }
    return NULL;
}

static void
s_mirror_join(sb_room_t *r, pd_str_t key, pd_str_t ref, pd_str_t meta)
{
    if (s_meta_find(r, ref))
        return;
    uint64_t h;
    sb_key_t *k = s_key_find(r, key, &h);
    if (!k) {
        k = pd_xcalloc(1, sizeof *k + key.len + 1);
        memcpy(k->key, key.ptr, key.len);
        k->klen = (uint32_t)key.len;
        k->e.hash = h;
        pd_map_add(&r->keys, &k->e);
        k->prev = r->ktail;
        if (r->ktail)
            r->ktail->next = k;
        else
            r->khead = k;
        r->ktail = k;
    }
    sb_meta_t *m = pd_xcalloc(1, sizeof *m + ref.len + meta.len + 2);
    m->ref = m->data;
    memcpy(m->ref, ref.ptr, ref.len);
    m->rlen = (uint32_t)ref.len;
    m->meta = m->data + ref.len + 1;
    memcpy(m->meta, meta.ptr, meta.len);
    m->mlen = (uint32_t)meta.len;
    m->k = k;
    m->e.hash = pd_map_hash(&r->metas, ref, PD_STR_NULL);
    pd_map_add(&r->metas, &m->e);
    m->prev = k->tail;
    if (k->tail)
        k->tail->next = m;
    else
        k->head = m;
    k->tail = m;
    r->nmembers++;
    s_state_changed(r);
}

static void
s_mirror_remove(sb_room_t *r, sb_meta_t *m)
{
    sb_key_t *k = m->k;
    pd_map_del(&r->metas, &m->e);
    if (m->prev)
        m->prev->next = m->next;
    else
        k->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        k->tail = m->prev;
    free(m);
    r->nmembers--;
    s_state_changed(r);
    if (!k->head) {
        pd_map_del(&r->keys, &k->e);
        if (k->prev)
            k->prev->next = k->next;
        else
            r->khead = k->next;
        if (k->next)
            k->next->prev = k->prev;
        else
            r->ktail = k->prev;
        free(k);
    }
}

static void
s_mirror_clear(sb_room_t *r)
{
    while (r->khead)
        s_mirror_remove(r, r->khead->head);
}

//  {"phx_ref":"R", ...meta}: the meta object with its ref first.
static void
s_render_meta(pd_buf_t *b, pd_str_t ref, pd_str_t meta)
{
    pd_buf_adds(b, "{\"phx_ref\":");
    pd_buf_add_json_str(b, ref.ptr, ref.len);
    if (meta.len > 2) {
        pd_buf_add(b, ",", 1);
        pd_buf_add(b, meta.ptr + 1, meta.len - 1);
    } else {
        pd_buf_add(b, "}", 1);
    }
}

//  presence_state's payload: {key: {"metas": [...]}, ...}
static const pd_buf_t *
s_room_state(sb_room_t *r)
{
    if (r->state_valid)
        return &r->state_json;
    pd_buf_t *b = &r->state_json;
    pd_buf_reset(b);
    pd_buf_add(b, "{", 1);
    for (sb_key_t *k = r->khead; k; k = k->next) {
        if (k != r->khead)
            pd_buf_add(b, ",", 1);
        pd_buf_add_json_str(b, k->key, k->klen);
        pd_buf_adds(b, ":{\"metas\":[");
        for (sb_meta_t *m = k->head; m; m = m->next) {
            if (m != k->head)
                pd_buf_add(b, ",", 1);
            s_render_meta(b, (pd_str_t){m->ref, m->rlen}, (pd_str_t){m->meta, m->mlen});
        }
        pd_buf_adds(b, "]}");
    }
    pd_buf_add(b, "}", 1);
    r->state_valid = true;
    return b;
}

/* -------------------------------------------------------------------------- rooms: diffs */

static uint32_t
s_arena_add(sb_room_t *r, pd_str_t s)
{
    uint32_t off = (uint32_t)r->arena.len;
    pd_buf_add(&r->arena, s.ptr ? s.ptr : "", s.len);
    return off;
}

static pd_str_t
s_arena_str(const sb_room_t *r, uint32_t off, uint32_t len)
{
    return (pd_str_t){r->arena.data + off, len};
}

/*  Sending to a connection may drop it (over its output bound: gw_ws kills it, and on_detach
 *  frees its channels at once). A walk over a room's channels therefore keeps the next one
 *  before sending (a drop frees only that connection's channel of this room), and holds the
 *  room (busy) so that it is freed, if it became empty, when the walk ends (s_room_release). */
static void s_room_free(sb_room_t *r);

static bool
s_room_release(sb_room_t *r)
{
    if (--r->busy == 0 && r->nchans == 0) {
        s_room_free(r);
        return true;
    }
    return false;
}

static void
s_diff_arm(sb_room_t *r)
{
    if (!h2o_timeout_is_linked(&r->diff_entry))
        h2o_timeout_link(r->sb->gw->ctx.loop, &r->sb->diff_timeout, &r->diff_entry);
}

static void
s_batch_add(sb_room_t *r, int action, pd_str_t key, pd_str_t ref, pd_str_t meta)
{
    if (r->nbatch == r->cap_batch) {
        r->cap_batch = r->cap_batch ? r->cap_batch * 2 : 64;
        r->batch = pd_xrealloc(r->batch, r->cap_batch * sizeof *r->batch);
    }
    sb_entry_t *e = &r->batch[r->nbatch++];
    e->action = (uint8_t)action;
    e->key = s_arena_add(r, key);
    e->klen = (uint32_t)key.len;
    e->ref = s_arena_add(r, ref);
    e->rlen = (uint32_t)ref.len;
    e->meta = s_arena_add(r, meta);
    e->mlen = (uint32_t)meta.len;
    s_diff_arm(r);
}

static const sb_room_t *s_sort_room;

static int
s_entry_cmp(const void *a, const void *b)
{
    const sb_entry_t *x = *(sb_entry_t *const *)a, *y = *(sb_entry_t *const *)b;
    if (x->action != y->action)
        return x->action - y->action;
    int c = pd_str_cmp(s_arena_str(s_sort_room, x->key, x->klen),
                       s_arena_str(s_sort_room, y->key, y->klen));
    if (c)
        return c;
    return x < y ? -1 : x > y; /* stable: arrival order within a key */
}

//  {"joins":{...},"leaves":{...}} of the batch entries [from, nbatch), grouped by key.
static void
s_render_diff(sb_room_t *r, uint32_t from, pd_buf_t *b)
{
    uint32_t n = r->nbatch - from;
    sb_t *sb = r->sb;
    if (n > sb->cap_sortv) {
        sb->cap_sortv = n > 64 ? n : 64;
        sb->sortv = pd_xrealloc(sb->sortv, sb->cap_sortv * sizeof *sb->sortv);
    }
    sb_entry_t **v = sb->sortv;
    for (uint32_t i = 0; i < n; i++)
        v[i] = &r->batch[from + i];
    s_sort_room = r;
    qsort(v, n, sizeof *v, s_entry_cmp);
    pd_buf_adds(b, "{\"joins\":{");
    uint32_t i = 0;
    for (int action = PD_ROOM_JOIN; action <= PD_ROOM_LEAVE; action++) {
        if (action == PD_ROOM_LEAVE)
            pd_buf_adds(b, "},\"leaves\":{");
        bool first_key = true;
        while (i < n && v[i]->action == action) {
            pd_str_t key = s_arena_str(r, v[i]->key, v[i]->klen);
            if (!first_key)
                pd_buf_add(b, ",", 1);
            first_key = false;
            pd_buf_add_json_str(b, key.ptr, key.len);
            pd_buf_adds(b, ":{\"metas\":[");
            bool first = true;
            for (; i < n && v[i]->action == action &&
                   pd_str_eq(s_arena_str(r, v[i]->key, v[i]->klen), key);
                 i++) {
                if (!first)
                    pd_buf_add(b, ",", 1);
                first = false;
                s_render_meta(b, s_arena_str(r, v[i]->ref, v[i]->rlen),
                              s_arena_str(r, v[i]->meta, v[i]->mlen));
            }
            pd_buf_adds(b, "]}");
        }
    }
    pd_buf_adds(b, "}}");
}

//  Sends the gathered joins and leaves to every synced presence channel of the room.
static void
s_diff_flush(sb_room_t *r)
{
    sb_t *sb = r->sb;
    if (h2o_timeout_is_linked(&r->diff_entry))
        h2o_timeout_unlink(&r->diff_entry);
    if (!r->nbatch)
        return;
    /* one rendering per (start, serializer): almost every channel starts at 0 */
    pd_buf_t *diff = &sb->diff;
    gw_ws_shared_t *frame = sb->frame;
    uint32_t rendered_from = UINT32_MAX;
    char topic[sizeof SB_TOPIC_PREFIX + PD_PHX_MAX_FIELD];
    snprintf(topic, sizeof topic, SB_TOPIC_PREFIX "%.*s", (int)r->clen, r->channel);
    r->busy++;
    for (sb_chan_t *ch = r->chans, *next; ch; ch = next) {
        next = ch->next_r;
        if (!ch->presence || !ch->synced || ch->batch_from >= r->nbatch)
            continue;
        if (ch->batch_from != rendered_from) {
            pd_buf_reset(diff);
            s_render_diff(r, ch->batch_from, diff);
            for (int v = 0; v < 3; v++)
                gw_ws_shared_reset(&frame[v]);
            rendered_from = ch->batch_from;
        }
        int vsn = ch->c->vsn;
        if (!frame[vsn].plain.len)
            pd_phx_encode(&frame[vsn].plain, vsn, PD_STR_NULL, PD_STR_NULL, pd_str(topic),
                          PD_STR("presence_diff"), diff->data, diff->len);
        s_send_shared(ch->c, &frame[vsn]);
        sb->diffs++;
    }
    if (s_room_release(r))
        return;
    for (sb_chan_t *ch = r->chans; ch; ch = ch->next_r)
        ch->batch_from = 0;
    r->nbatch = 0;
    pd_buf_reset(&r->arena);
}

static void
s_on_diff_timer(h2o_timeout_entry_t *entry)
{
    sb_room_t *r = H2O_STRUCT_FROM_MEMBER(sb_room_t, diff_entry, entry);
    s_diff_flush(r);
}

//  presence_state to one channel, from the mirror; diffs follow from the batch's end.
static void
s_chan_sync(sb_chan_t *ch)
{
    sb_room_t *r = ch->room;
    const pd_buf_t *st = s_room_state(r);
    sb_conn_t *c = ch->c;
    r->sb->states++;
    gw_ws_shared_t *sh = &r->state_frame[c->vsn];
    if (!sh->plain.len) /* no join_ref: one frame for every joiner of this state */
        pd_phx_encode(&sh->plain, c->vsn, PD_STR_NULL, PD_STR_NULL, pd_str(ch->topic),
                      PD_STR("presence_state"), st->data, st->len);
    s_send_shared(c, sh);
    if (c->ws.state != GW_WS_OPEN)
        return; /* dropped while sending: ch is gone */
    ch->synced = true;
    ch->batch_from = r->nbatch;
}

/* -------------------------------------------------------------------------- rooms: life */

//  Starts a ROOM message to the room's store node (through the broker, which routes it by
//  (project, channel)); the caller adds fields and calls gw_send_end.
static pd_msgw_t *
s_room_msg(sb_t *sb, sb_room_t *r, int action, uint64_t rid)
{
    pd_msgw_t *w = gw_send_begin(sb->gw, PD_MSG_ROOM, rid);
    pd_msgw_int(w, PD_F_ACTION, action);
    pd_msgw_str(w, PD_F_PROJECT, r->project, r->plen);
    pd_msgw_str(w, PD_F_ID, r->channel, r->clen);
    return w;
}

//  Asks the room's store node for its members: the snapshot comes back on the bus, in order
//  with the room's events. A request lost on the way (its node down) is made again by the tick.
static void
s_room_snap(sb_t *sb, sb_room_t *r)
{
    pd_msgw_t *w = s_room_msg(sb, r, PD_ROOM_SNAP, 0);
    pd_msgw_str(w, PD_F_TARGET, sb->gw->ident, strlen(sb->gw->ident));
    gw_send_end(sb->gw);
    r->snap_ms = pd_mono_ms();
}

static sb_room_t *
s_room_get(sb_t *sb, pd_str_t project, pd_str_t channel)
{
    uint64_t h;
    sb_room_t *r = s_room_find(sb, project, channel, &h);
    if (r)
        return r;
    r = pd_xcalloc(1, sizeof *r);
    r->sb = sb;
    r->e.hash = h;
    memcpy(r->project, project.ptr, project.len);
    r->plen = (uint32_t)project.len;
    memcpy(r->channel, channel.ptr, channel.len);
    r->clen = (uint32_t)channel.len;
    pd_map_init(&r->keys);
    pd_map_init(&r->metas);
    pd_buf_init(&r->state_json);
    for (int v = 0; v < 3; v++)
        gw_ws_shared_init(&r->state_frame[v]);
    pd_buf_init(&r->arena);
    r->diff_entry.cb = s_on_diff_timer;
    pd_map_add(&sb->rooms, &r->e);
    s_room_snap(sb, r);
    return r;
}

static void
s_room_free(sb_room_t *r)
{
    if (h2o_timeout_is_linked(&r->diff_entry))
        h2o_timeout_unlink(&r->diff_entry);
    s_mirror_clear(r);
    pd_map_del(&r->sb->rooms, &r->e);
    pd_map_free(&r->keys);
    pd_map_free(&r->metas);
    pd_buf_free(&r->state_json);
    for (int v = 0; v < 3; v++)
        gw_ws_shared_free(&r->state_frame[v]);
    pd_buf_free(&r->arena);
    free(r->batch);
    free(r);
}

//  The channel's meta leaves the room (fire and forget: the store publishes the leave).
static void
s_chan_untrack(sb_chan_t *ch)
{
    if (!ch->tracked)
        return;
    sb_t *sb = ch->c->sb;
    pd_msgw_t *w = s_room_msg(sb, ch->room, PD_ROOM_UNTRACK, 0);
    pd_msgw_str(w, PD_F_CONN, ch->c->conn, strlen(ch->c->conn));
    gw_send_end(sb->gw);
    ch->tracked = false;
    ch->room->ntracked--;
}

//  Ends a channel: untracked, out of its room (the room goes with its last channel) and its
//  connection's list, freed.
static void
s_chan_free(sb_chan_t *ch)
{
    sb_conn_t *c = ch->c;
    sb_room_t *r = ch->room;
    s_chan_untrack(ch);
    if (ch->prev_r)
        ch->prev_r->next_r = ch->next_r;
    else
        r->chans = ch->next_r;
    if (ch->next_r)
        ch->next_r->prev_r = ch->prev_r;
    if (--r->nchans == 0 && !r->busy)
        s_room_free(r);
    for (sb_chan_t **pp = &c->chans; *pp; pp = &(*pp)->next_c)
        if (*pp == ch) {
            *pp = ch->next_c;
            break;
        }
    c->nchans--;
    c->sb->nchans--;
    free(ch);
}

static sb_chan_t *
s_chan_find(sb_conn_t *c, pd_str_t topic)
{
    for (sb_chan_t *ch = c->chans; ch; ch = ch->next_c)
        if (pd_str_eqc(topic, ch->topic))
            return ch;
    return NULL;
}

/* -------------------------------------------------------------------------- identity */

//  Keeps the roles that fit, whole.
static void
s_who_roles(sb_who_t *who, const pd_buf_t *roles)
{
    pd_str_t list = {roles->data, roles->len};
    size_t n = 0;
    for (pd_str_t it = pd_list_first(list); it.ptr; it = pd_list_next(list, it)) {
        if (n + it.len + 1 > sizeof who->roles)
            break;
        memcpy(who->roles + n, it.ptr, it.len);
        who->roles[n + it.len] = 0;
        n += it.len + 1;
    }
    who->roles_len = (uint16_t)n;
}

static void
s_who_guest(sb_who_t *who)
{
    memset(who, 0, sizeof *who);
    who->kind = GW_ID_GUEST;
    pd_buf_t roles;
    pd_buf_init(&roles);
    pd_roles_guest(&roles);
    s_who_roles(who, &roles);
    pd_buf_free(&roles);
}

//  A glob where '*' matches any run of bytes.
static bool
s_glob(const char *pat, pd_str_t s)
{
    size_t i = 0, star_i = SIZE_MAX, star_p = 0;
    const char *p = pat;
    size_t pi = 0;
    while (i < s.len) {
        if (p[pi] == '*') {
            star_p = ++pi;
            star_i = i;
        } else if (p[pi] && p[pi] == s.ptr[i]) {
            pi++;
            i++;
        } else if (star_i != SIZE_MAX) {
            pi = star_p;
            i = ++star_i;
        } else {
            return false;
        }
    }
    while (p[pi] == '*')
        pi++;
    return p[pi] == 0;
}

/*  The project's channel rules (projects file: "supabase": {"channels": [{"pattern", "join",
 *  "track", "broadcast"}]}): the first rule whose pattern matches the channel decides; an
 *  action it does not name takes join's roles, and a rule without join is open to everyone; a
 *  channel no rule matches is refused. No rules: every channel is public. The service_role
 *  key may do anything. */
static bool
s_allowed(const pd_project_t *p, const sb_who_t *who, pd_str_t channel, const char *action)
{
    if (who->kind == GW_ID_KEY)
        return true;
    const json_t *rules = p->supabase ? json_object_get(p->supabase, "channels") : NULL;
    if (!json_is_array(rules))
        return true;
    size_t i;
    const json_t *r;
    json_array_foreach(rules, i, r) {
        const char *pat = json_string_value(json_object_get(r, "pattern"));
        if (!pat || !s_glob(pat, channel))
            continue;
        const json_t *roles = json_object_get(r, action);
        if (!roles)
            roles = json_object_get(r, "join");
        if (!json_is_array(roles))
            return true;
        size_t k;
        const json_t *v;
        pd_str_t mine = {who->roles, who->roles_len};
        json_array_foreach(roles, k, v) {
            if (json_is_string(v) && pd_list_has(mine, pd_str(json_string_value(v))))
                return true;
        }
        return false;
    }
    return false;
}

//  The project of a publishable key ("supabase": {"publishable_keys": [...]}), or NULL.
static const pd_project_t *
s_publishable(gw_t *gw, pd_str_t key)
{
    for (size_t i = 0; i < gw->projects.n; i++) {
        const json_t *keys = gw->projects.v[i].supabase
                                 ? json_object_get(gw->projects.v[i].supabase, "publishable_keys")
                                 : NULL;
        size_t k;
        const json_t *v;
        json_array_foreach(keys, k, v) {
            if (json_is_string(v) && json_string_length(v) == key.len &&
                sodium_memcmp(json_string_value(v), key.ptr, key.len) == 0)
                return &gw->projects.v[i];
        }
    }
    return NULL;
}

static const pd_project_t *
s_project(sb_conn_t *c)
{
    return pd_projects_find(&c->sb->gw->projects, pd_str(c->project_id));
}

//  A Supabase token of the connection's project: an anon or service_role key, or a user's
//  token (sub, role authenticated). Returns 0 with *who, or -1 with Supabase's reason.
static int
s_verify(const pd_project_t *p, pd_str_t tok, sb_who_t *who, char *err, size_t errlen)
{
    pd_jwt_claims_t cl;
    pd_jwt_claims_init(&cl);
    char why[300];
    int rc = pd_jwt_verify_sb(p->jwt_keys, p->njwt, tok.ptr, tok.len, pd_now_ms() / 1000, &cl,
                              why, sizeof why);
    if (rc == 0) {
        memset(who, 0, sizeof *who);
        who->exp = cl.exp;
        if (strcmp(cl.role, "service_role") == 0) {
            who->kind = GW_ID_KEY;
        } else if (cl.user_id[0] && strcmp(cl.role, "anon") != 0) {
            who->kind = GW_ID_USER;
            memcpy(who->user, cl.user_id, sizeof who->user);
            pd_buf_t roles;
            pd_buf_init(&roles);
            pd_roles_user(&cl, &roles);
            s_who_roles(who, &roles);
            pd_buf_free(&roles);
        } else if (strcmp(cl.role, "anon") == 0) {
            s_who_guest(who);
        } else {
            rc = pd_errf(err, errlen, -1, "InvalidJWTToken: the token has no role this server "
                                          "knows (anon, authenticated, service_role)");
        }
        if (rc == 0 && cl.ref[0] && strcmp(cl.ref, p->id) != 0)
            rc = pd_errf(err, errlen, -1, "InvalidJWTToken: the token is for another project");
    } else {
        /* pd_auth says "Failed to verify JWT. Token has expired."; Supabase says
         * "InvalidJWTToken: Token has expired" */
        const char *dot = strstr(why, "JWT. ");
        pd_errf(err, errlen, -1, "InvalidJWTToken: %s", dot ? dot + 5 : why);
    }
    pd_jwt_claims_free(&cl);
    return rc;
}

/* -------------------------------------------------------------------------- ops */

static void
s_op_free(sb_op_t *op)
{
    sb_t *sb = op->sb;
    if (op->prev)
        op->prev->next = op->next;
    else
        sb->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    h2o_mem_clear_pool(&op->req.pool); /* releases the pending entry */
    free(op);
}

static void
s_on_store_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    (void)gw;
    sb_op_t *op = p->user;
    sb_conn_t *c = op->c;
    if (c && c->ws.state == GW_WS_OPEN) {
        pd_str_t jr = s_opt(op->join_ref), ref = op->has_ref ? pd_str(op->ref) : PD_STR_NULL;
        int err = (int)m->i[PD_F_ERR];
        if (err == PD_ERR_OK) {
            s_reply(c, jr, ref, pd_str(op->topic), "ok", "{}");
        } else {
            char reason[300];
            pd_str_t msg = m->s[PD_F_MESSAGE];
            snprintf(reason, sizeof reason, "%.*s", (int)(msg.len ? msg.len : strlen(pd_err_msg(err))),
                     msg.len ? msg.ptr : pd_err_msg(err));
            s_reply_err(c, jr, ref, pd_str(op->topic), reason);
            /* a refused track leaves nothing in the room */
            sb_chan_t *ch = s_chan_find(c, pd_str(op->topic));
            if (ch && ch->tracked) {
                ch->tracked = false;
                ch->room->ntracked--;
            }
        }
    }
    s_op_free(op);
}

static sb_op_t *
s_op_new(sb_conn_t *c, const pd_phx_msg_t *m, gw_reply_fn fn)
{
    sb_t *sb = c->sb;
    sb_op_t *op = pd_xcalloc(1, sizeof *op);
    h2o_mem_init_pool(&op->req.pool);
    gw_pending_t *p = gw_pending_new(sb->gw, &op->req, GW_ROUTE_REALTIME, fn);
    p->req = NULL; /* no HTTP response behind it: the gateway only calls on_reply (p->user) */
    p->user = op;
    op->sb = sb;
    op->p = p;
    op->c = c;
    op->deadline_ms = pd_mono_ms() + sb->gw->cfg->request_timeout_ms + 1000;
    snprintf(op->topic, sizeof op->topic, "%.*s", (int)m->topic.len, m->topic.ptr);
    snprintf(op->join_ref, sizeof op->join_ref, "%.*s", (int)m->join_ref.len,
             m->join_ref.ptr ? m->join_ref.ptr : "");
    op->has_ref = m->ref.ptr != NULL;
    snprintf(op->ref, sizeof op->ref, "%.*s", (int)m->ref.len, m->ref.ptr ? m->ref.ptr : "");
    op->next = sb->ops;
    if (sb->ops)
        sb->ops->prev = op;
    sb->ops = op;
    return op;
}

/* -------------------------------------------------------------------------- messages */

static void
s_on_join(sb_conn_t *c, const pd_phx_msg_t *m)
{
    sb_t *sb = c->sb;
    char err[400];
    pd_phx_join_t j;
    if (pd_phx_join_parse(m->payload, &j, err, sizeof err) < 0) {
        s_reply_err(c, m->join_ref, m->ref, m->topic, err);
        return;
    }
    size_t plen = strlen(SB_TOPIC_PREFIX);
    if (m->topic.len <= plen || memcmp(m->topic.ptr, SB_TOPIC_PREFIX, plen) != 0) {
        s_reply_err(c, m->join_ref, m->ref, m->topic,
                    "Topic must be realtime:<channel> (as supabase.channel(name) sends it)");
        return;
    }
    pd_str_t channel = {m->topic.ptr + plen, m->topic.len - plen};
    if (j.postgres) {
        s_reply_err(c, m->join_ref, m->ref, m->topic,
                    "postgres_changes are not supported by this server: it serves presence and "
                    "broadcast only");
        return;
    }
    const pd_project_t *proj = s_project(c);
    if (!proj) {
        s_reply_err(c, m->join_ref, m->ref, m->topic, "Unknown project: it was removed");
        return;
    }
    sb_who_t who = c->who;
    if (j.access_token.len && s_verify(proj, j.access_token, &who, err, sizeof err) < 0) {
        s_reply_err(c, m->join_ref, m->ref, m->topic, err);
        return;
    }
    if ((j.private_ && who.kind == GW_ID_GUEST) || !s_allowed(proj, &who, channel, "join")) {
        char reason[400];
        snprintf(reason, sizeof reason,
                 "Unauthorized: You do not have permissions to read from this Channel topic: "
                 "%.*s",
                 (int)channel.len, channel.ptr);
        s_reply_err(c, m->join_ref, m->ref, m->topic, reason);
        return;
    }
    sb_chan_t *old = s_chan_find(c, m->topic);
    if (old) { /* a second join of a topic replaces the first, as in Phoenix */
        s_push(old, "phx_close", "{}", 2);
        if (c->ws.state != GW_WS_OPEN)
            return; /* dropped while sending: on_detach freed its channels */
        s_chan_free(old);
    }
    if (c->nchans >= SB_MAX_CHANNELS) {
        char reason[120];
        snprintf(reason, sizeof reason, "Too many channels: at most %d per connection",
                 SB_MAX_CHANNELS);
        s_reply_err(c, m->join_ref, m->ref, m->topic, reason);
        return;
    }
    sb_chan_t *ch = pd_xcalloc(1, sizeof *ch);
    ch->c = c;
    ch->who = who;
    ch->presence = j.presence_enabled;
    ch->self_ = j.bcast_self;
    ch->ack = j.bcast_ack;
    ch->private_ = j.private_;
    snprintf(ch->topic, sizeof ch->topic, "%.*s", (int)m->topic.len, m->topic.ptr);
    snprintf(ch->join_ref, sizeof ch->join_ref, "%.*s", (int)m->join_ref.len,
             m->join_ref.ptr ? m->join_ref.ptr : "");
    if (j.presence_key.len) {
        snprintf(ch->key, sizeof ch->key, "%.*s", (int)j.presence_key.len, j.presence_key.ptr);
    } else { /* the server picks a key per channel, as Supabase does (a UUID there) */
        unsigned char rnd[16];
        randombytes_buf(rnd, sizeof rnd);
        sodium_bin2hex(ch->key, sizeof ch->key, rnd, sizeof rnd);
    }
    ch->next_c = c->chans;
    c->chans = ch;
    c->nchans++;
    sb->nchans++;
    sb_room_t *r = s_room_get(sb, pd_str(c->project_id), channel);
    ch->room = r;
    ch->next_r = r->chans;
    if (r->chans)
        r->chans->prev_r = ch;
    r->chans = ch;
    r->nchans++;
    s_reply(c, m->join_ref, m->ref, m->topic, "ok", "{\"postgres_changes\":[]}");
    if (c->ws.state == GW_WS_OPEN && ch->presence && r->state == SB_ROOM_LIVE)
        s_chan_sync(ch);
}

//  Whether the channel's identity may do action in its room (s_allowed).
static bool
s_chan_may(sb_chan_t *ch, const char *action)
{
    const pd_project_t *p = s_project(ch->c);
    return p && s_allowed(p, &ch->who, (pd_str_t){ch->room->channel, ch->room->clen}, action);
}

static void
s_on_presence(sb_conn_t *c, sb_chan_t *ch, const pd_phx_msg_t *m)
{
    sb_t *sb = c->sb;
    const json_t *ev = json_object_get(m->payload, "event");
    const char *event = json_is_string(ev) ? json_string_value(ev) : "";
    if (strcmp(event, "untrack") == 0) {
        s_chan_untrack(ch);
        s_reply(c, m->join_ref, m->ref, m->topic, "ok", "{}");
        return;
    }
    if (strcmp(event, "track") != 0) {
        s_reply_err(c, m->join_ref, m->ref, m->topic,
                    "A presence message's event must be track or untrack");
        return;
    }
    if (!s_chan_may(ch, "track")) {
        s_reply_err(c, m->join_ref, m->ref, m->topic,
                    "Unauthorized: You do not have permissions to track presence in this Channel "
                    "topic");
        return;
    }
    json_t *meta = json_object_get(m->payload, "payload");
    if (meta && !json_is_object(meta)) {
        s_reply_err(c, m->join_ref, m->ref, m->topic, "A presence payload must be a JSON object");
        return;
    }
    json_t *copy = meta ? json_copy(meta) : json_object();
    json_object_del(copy, "phx_ref"); /* the server's, not the client's */
    json_object_del(copy, "phx_ref_prev");
    char *text = json_dumps(copy, JSON_COMPACT);
    json_decref(copy);
    size_t len = text ? strlen(text) : 0;
    if (!text || len > PD_ROOM_META_MAX) {
        char reason[120];
        snprintf(reason, sizeof reason, "Presence payload too large: at most %d bytes of JSON",
                 PD_ROOM_META_MAX);
        s_reply_err(c, m->join_ref, m->ref, m->topic, reason);
        free(text);
        return;
    }
    sb_room_t *r = ch->room;
    sb_op_t *op = s_op_new(c, m, s_on_store_reply);
    pd_msgw_t *w = s_room_msg(sb, r, PD_ROOM_TRACK, op->p->rid);
    pd_msgw_str(w, PD_F_CONN, c->conn, strlen(c->conn));
    pd_msgw_str(w, PD_F_PKEY, ch->key, strlen(ch->key));
    pd_msgw_str(w, PD_F_META_JSON, text, len);
    pd_msgw_int(w, PD_F_LIMIT, SB_MAX_MEMBERS);
    gw_send_end(sb->gw);
    free(text);
    if (!ch->tracked) {
        ch->tracked = true;
        r->ntracked++;
    }
}

static void
s_on_broadcast(sb_conn_t *c, sb_chan_t *ch, const pd_phx_msg_t *m)
{
    sb_t *sb = c->sb;
    pd_str_t event, body;
    char *text = NULL;
    int flags = ch->self_ ? PD_ROOM_FL_SELF : 0;
    if (!s_chan_may(ch, "broadcast")) {
        s_reply_err(c, m->join_ref, m->ref, m->topic,
                    "Unauthorized: You do not have permissions to write to this Channel topic");
        return;
    }
    if (m->binary) {
        event = m->bevent;
        body = m->bpayload;
        if (m->bencoding == PD_PHX_ENC_BINARY)
            flags |= PD_ROOM_FL_BINARY;
    } else {
        const json_t *ev = json_object_get(m->payload, "event");
        if (!json_is_string(ev) || json_string_length(ev) == 0 ||
            json_string_length(ev) > PD_PHX_MAX_FIELD) {
            s_reply_err(c, m->join_ref, m->ref, m->topic,
                        "A broadcast needs an event: a string of 1 to 255 bytes");
            return;
        }
        event = (pd_str_t){json_string_value(ev), json_string_length(ev)};
        const json_t *pl = json_object_get(m->payload, "payload");
        text = pl ? json_dumps(pl, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
        if (!text)
            abort();
        body = pd_str(text);
    }
    uint64_t rid = ch->ack ? s_op_new(c, m, s_on_store_reply)->p->rid : 0;
    pd_msgw_t *w = s_room_msg(sb, ch->room, PD_ROOM_SEND, rid);
    pd_msgw_str(w, PD_F_CONN, c->conn, strlen(c->conn));
    pd_msgw_s(w, PD_F_EVENT_NAME, event);
    pd_msgw_s(w, PD_F_BODY, body);
    pd_msgw_int(w, PD_F_FLAGS, flags);
    gw_send_end(sb->gw);
    sb->bcasts_in++;
    free(text);
}

static void
s_on_access_token(sb_conn_t *c, sb_chan_t *ch, const pd_phx_msg_t *m)
{
    const json_t *t = json_object_get(m->payload, "access_token");
    char err[400];
    sb_who_t who;
    if (!json_is_string(t)) {
        s_reply_err(c, m->join_ref, m->ref, m->topic, "access_token must be a string");
        return;
    }
    const pd_project_t *proj = s_project(c);
    if (!proj) {
        s_chan_end(ch, "Unknown project: it was removed");
        return;
    }
    if (s_verify(proj, (pd_str_t){json_string_value(t), json_string_length(t)}, &who, err,
                 sizeof err) < 0) {
        s_chan_end(ch, err);
        return;
    }
    if ((ch->private_ && who.kind == GW_ID_GUEST) ||
        !s_allowed(proj, &who, (pd_str_t){ch->room->channel, ch->room->clen}, "join")) {
        s_chan_end(ch, "Unauthorized: You do not have permissions to read from this Channel topic");
        return;
    }
    ch->who = who;
}

static void
s_on_message(gw_ws_conn_t *ws, int op, const char *p, size_t n)
{
    sb_conn_t *c = s_conn(ws);
    sb_t *sb = c->sb;
    sb->messages++;
    pd_phx_msg_t m;
    char err[400];
    if (pd_phx_decode(&m, c->vsn, op == GW_WS_BINARY, p, n, err, sizeof err) < 0) {
        /* no topic to answer on: Phoenix's error shape on its own topic */
        sb->errors++;
        pd_buf_t *b = &sb->tmp;
        pd_buf_reset(b);
        pd_buf_adds(b, "{\"status\":\"error\",\"response\":{\"reason\":");
        pd_buf_add_json_str(b, err, strlen(err));
        pd_buf_adds(b, "}}");
        pd_buf_t *o = &sb->out;
        pd_buf_reset(o);
        pd_phx_encode(o, c->vsn, PD_STR_NULL, PD_STR_NULL, PD_STR("phoenix"), PD_STR("phx_error"),
                      b->data, b->len);
        s_send_text(c, o);
        pd_phx_msg_free(&m);
        return;
    }
    if (pd_str_eqc(m.topic, "phoenix") && pd_str_eqc(m.event, "heartbeat")) {
        s_reply(c, m.join_ref, m.ref, m.topic, "ok", "{}");
        pd_phx_msg_free(&m);
        return;
    }
    if (!pd_rate_take(&c->rate, SB_RATE, SB_RATE_BURST, pd_mono_ms())) {
        sb->rate_limited++;
        char reason[120];
        snprintf(reason, sizeof reason,
                 "Too many messages: at most %d per second per connection", SB_RATE);
        s_reply_err(c, m.join_ref, m.ref, m.topic, reason);
        pd_phx_msg_free(&m);
        return;
    }
    if (pd_str_eqc(m.event, "phx_join")) {
        s_on_join(c, &m);
        pd_phx_msg_free(&m);
        return;
    }
    sb_chan_t *ch = s_chan_find(c, m.topic);
    if (!ch) {
        s_reply_err(c, m.join_ref, m.ref, m.topic, "unmatched topic");
    } else if (pd_str_eqc(m.event, "phx_leave")) {
        s_reply(c, m.join_ref, m.ref, m.topic, "ok", "{}");
        if (c->ws.state == GW_WS_OPEN)
            s_chan_free(ch);
    } else if (pd_str_eqc(m.event, "presence")) {
        s_on_presence(c, ch, &m);
    } else if (pd_str_eqc(m.event, "broadcast")) {
        s_on_broadcast(c, ch, &m);
    } else if (pd_str_eqc(m.event, "access_token")) {
        s_on_access_token(c, ch, &m);
    } else {
        char reason[PD_PHX_MAX_FIELD + 40];
        snprintf(reason, sizeof reason, "Unknown event: %.*s", (int)m.event.len, m.event.ptr);
        s_reply_err(c, m.join_ref, m.ref, m.topic, reason);
    }
    pd_phx_msg_free(&m);
}

static void
s_on_oversize(gw_ws_conn_t *ws)
{
    sb_conn_t *c = s_conn(ws);
    char reason[120];
    snprintf(reason, sizeof reason, "Message too big: at most %d bytes", SB_MAX_MESSAGE);
    s_reply_err(c, PD_STR_NULL, PD_STR_NULL, PD_STR("phoenix"), reason);
}

/*  No message is handled before the room events it may need can arrive. */
static bool
s_may_read(gw_ws_conn_t *ws)
{
    return gw_bus_live(s_conn(ws)->sb->gw);
}

static void
s_on_open(gw_ws_conn_t *ws)
{
    sb_conn_t *c = s_conn(ws);
    sb_t *sb = c->sb;
    pd_rate_init(&c->rate, SB_RATE_BURST, pd_mono_ms());
    if (sb->shutting_down) {
        gw_ws_close(ws, 1001, "Server is shutting down");
        return;
    }
    c->counted = true;
    sb->nconns++;
    sb->opened++;
    gw_bus_join(sb->gw);
}

static void
s_on_detach(gw_ws_conn_t *ws)
{
    sb_conn_t *c = s_conn(ws);
    sb_t *sb = c->sb;
    while (c->chans)
        s_chan_free(c->chans);
    for (sb_op_t *op = sb->ops; op; op = op->next)
        if (op->c == c)
            op->c = NULL;
    if (c->counted) {
        sb->nconns--;
        c->counted = false;
    }
}

static const gw_ws_cb_t s_ws_cb = {
    .on_open = s_on_open,
    .on_message = s_on_message,
    .on_oversize = s_on_oversize,
    .may_read = s_may_read,
    .on_detach = s_on_detach,
};

/* -------------------------------------------------------------------------- the bus */

static void
s_on_snapshot(sb_t *sb, sb_room_t *r, const pd_msg_t *ev)
{
    if (!pd_str_eqc(ev->s[PD_F_TARGET], sb->gw->ident))
        return; /* another gateway's */
    if (r->state == SB_ROOM_LIVE)
        return; /* ours came already (a second request raced the first) */
    if (r->resync) {
        /* the node restarted: events may have been lost; the snapshot is the truth, and every
         * presence channel gets a fresh presence_state (clients reconcile it: Phoenix's
         * syncState), instead of the diffs gathered before it */
        r->resync = false;
        if (h2o_timeout_is_linked(&r->diff_entry))
            h2o_timeout_unlink(&r->diff_entry);
        r->nbatch = 0;
        pd_buf_reset(&r->arena);
        for (sb_chan_t *ch = r->chans; ch; ch = ch->next_r)
            ch->synced = false;
    }
    r->snap_gen = ev->i[PD_F_GEN];
    r->snap_seq = ev->i[PD_F_SNAP_SEQ];
    const msgpack_object *items = ev->o[PD_F_ITEMS];
    s_mirror_clear(r);
    if (items && items->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < items->via.array.size; i++) {
            const msgpack_object *it = &items->via.array.ptr[i];
            if (it->type != MSGPACK_OBJECT_ARRAY || it->via.array.size != 3)
                continue;
            const msgpack_object *f = it->via.array.ptr;
            if (f[0].type != MSGPACK_OBJECT_STR || f[1].type != MSGPACK_OBJECT_STR ||
                f[2].type != MSGPACK_OBJECT_STR)
                continue;
            s_mirror_join(r, (pd_str_t){f[0].via.str.ptr, f[0].via.str.size},
                          (pd_str_t){f[1].via.str.ptr, f[1].via.str.size},
                          (pd_str_t){f[2].via.str.ptr, f[2].via.str.size});
        }
    }
    r->state = SB_ROOM_LIVE;
    sb->snapshots++;
    r->busy++;
    for (sb_chan_t *ch = r->chans, *next; ch; ch = next) {
        next = ch->next_r;
        if (ch->presence && !ch->synced)
            s_chan_sync(ch);
    }
    s_room_release(r);
}

static void
s_on_bcast(sb_t *sb, sb_room_t *r, const pd_msg_t *ev)
{
    pd_str_t from = ev->s[PD_F_CONN], event = ev->s[PD_F_EVENT_NAME], body = ev->s[PD_F_BODY];
    int64_t flags = ev->i[PD_F_FLAGS];
    bool binary = flags & PD_ROOM_FL_BINARY;
    char topic[sizeof SB_TOPIC_PREFIX + PD_PHX_MAX_FIELD];
    snprintf(topic, sizeof topic, SB_TOPIC_PREFIX "%.*s", (int)r->clen, r->channel);
    pd_buf_t *payload = &sb->payload;
    gw_ws_shared_t *frame = sb->frame;
    for (int v = 0; v < 3; v++)
        gw_ws_shared_reset(&frame[v]);
    r->busy++;
    for (sb_chan_t *ch = r->chans, *next; ch; ch = next) {
        next = ch->next_r;
        if (!(flags & PD_ROOM_FL_SELF) && pd_str_eqc(from, ch->c->conn))
            continue;
        int vsn = ch->c->vsn;
        if (binary && vsn != PD_PHX_V2)
            continue; /* vsn 1.0.0 has no binary frames */
        if (!frame[vsn].plain.len) {
            if (binary) {
                if (pd_phx_encode_bcast(&frame[vsn].plain, pd_str(topic), event, PD_STR(""),
                                        PD_PHX_ENC_BINARY, body.ptr, body.len) < 0)
                    break;
            } else {
                pd_buf_reset(payload);
                pd_buf_adds(payload, "{\"type\":\"broadcast\",\"event\":");
                pd_buf_add_json_str(payload, event.ptr, event.len);
                pd_buf_adds(payload, ",\"payload\":");
                pd_buf_add(payload, body.ptr, body.len);
                pd_buf_add(payload, "}", 1);
                pd_phx_encode(&frame[vsn].plain, vsn, PD_STR_NULL, PD_STR_NULL, pd_str(topic),
                              PD_STR("broadcast"), payload->data, payload->len);
            }
        }
        if (binary) {
            char *d = gw_ws_out(&ch->c->ws, GW_WS_BINARY, frame[vsn].plain.len);
            if (d)
                memcpy(d, frame[vsn].plain.data, frame[vsn].plain.len);
        } else {
            s_send_shared(ch->c, &frame[vsn]);
        }
        sb->bcasts_out++;
    }
    s_room_release(r);
}

/*  The rooms store node `node` owns are read again: their events may have been lost (the node
 *  restarted, or the bus lost some and the node no longer had them, gw_realtime.c "resync").
 *  Each gets a snapshot, in bus order, that replaces its state; its presence channels get a
 *  fresh presence_state (clients reconcile it: Phoenix's syncState). Returns how many. */
size_t
gw_sb_resync_node(gw_t *gw, int node)
{
    sb_t *sb = s_sb(gw);
    int total = gw->nstores;
    size_t n = 0;
    for (size_t k = 0; sb && sb->rooms.n && k <= sb->rooms.mask; k++)
        for (pd_mapent_t *e = pd_map_slot(&sb->rooms, k); e; e = e->next) {
            sb_room_t *r = (sb_room_t *)e;
            if (total > 0 && pd_shard_owner((pd_str_t){r->project, r->plen},
                                            (pd_str_t){r->channel, r->clen}, total) != node)
                continue;
            r->state = SB_ROOM_SNAP_WAIT;
            r->resync = true;
            s_room_snap(sb, r);
            sb->resyncs++;
            n++;
        }
    return n;
}

/*  A store node's heartbeat on the bus: a new boot generation means it restarted. Its rooms'
 *  members survived in shared memory, but a join or leave made as it died may not have reached
 *  its outbox: the rooms it owns are read again. */
static void
s_on_hello(sb_t *sb, const pd_msg_t *ev)
{
    int64_t node = ev->i[PD_F_NODE], gen = ev->i[PD_F_GEN];
    if (node < 1 || node > GW_MAX_STORES || !gen)
        return;
    int64_t was = sb->node_gen[node];
    sb->node_gen[node] = gen;
    if (was && was != gen)
        gw_sb_resync_node(sb->gw, (int)node);
}

void
gw_sb_on_bus(gw_t *gw, const pd_msg_t *ev)
{
    sb_t *sb = s_sb(gw);
    if (!sb)
        return;
    if (ev->type == PD_MSG_HELLO) {
        s_on_hello(sb, ev);
        return;
    }
    if (!sb->rooms.n)
        return;
    sb_room_t *r = s_room_find(sb, ev->s[PD_F_PROJECT], ev->s[PD_F_ID], NULL);
    if (!r)
        return;
    int64_t action = ev->i[PD_F_ACTION];
    if (action == PD_ROOM_SNAPSHOT) {
        s_on_snapshot(sb, r, ev);
        return;
    }
    if (action == PD_ROOM_BCAST) {
        s_on_bcast(sb, r, ev);
        return;
    }
    if (r->state != SB_ROOM_LIVE)
        return; /* before our snapshot in the bus's order: it is in the snapshot */
    int64_t gen = ev->i[PD_F_GEN], seq = ev->i[PD_F_SEQ];
    if (pd_msg_has(ev, PD_F_SEQ) &&
        (gen < r->snap_gen || (gen == r->snap_gen && seq <= r->snap_seq)))
        return; /* resent after a skip, and older than the snapshot: in it already */
    pd_str_t key = ev->s[PD_F_PKEY], ref = ev->s[PD_F_REF];
    if (action == PD_ROOM_JOIN) {
        pd_str_t meta = ev->s[PD_F_META_JSON];
        if (meta.len < 2 || meta.ptr[0] != '{')
            meta = PD_STR("{}");
        s_mirror_join(r, key, ref, meta);
        s_batch_add(r, PD_ROOM_JOIN, key, ref, meta);
    } else if (action == PD_ROOM_LEAVE) {
        sb_meta_t *m = s_meta_find(r, ref);
        if (!m)
            return;
        s_batch_add(r, PD_ROOM_LEAVE, (pd_str_t){m->k->key, m->k->klen}, ref,
                    (pd_str_t){m->meta, m->mlen});
        s_mirror_remove(r, m);
    }
}

/* -------------------------------------------------------------------------- the endpoint */

static void
s_refuse_http(gw_t *gw, h2o_req_t *req, int status, const char *msg, int64_t t0)
{
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_adds(&b, "{\"message\":");
    pd_buf_add_json_str(&b, msg, strlen(msg));
    pd_buf_add(&b, "}", 1);
    gw_respond(gw, req, GW_ROUTE_REALTIME, status, "application/json", b.data, b.len, t0);
    pd_buf_free(&b);
}

int
gw_sb_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    sb_t *sb = s_sb(gw);
    int64_t t0 = gw_now_ns();
    const char *client_key = NULL;
    if (h2o_is_websocket_handshake(req, &client_key) != 0 || !client_key || req->version >= 0x200) {
        s_refuse_http(gw, req, 400,
                      "This endpoint speaks Supabase Realtime over WebSocket: connect with "
                      "supabase-js or realtime-js",
                      t0);
        return 0;
    }
    if (sb->shutting_down) {
        s_refuse_http(gw, req, 503, "This gateway is shutting down. Reconnect.", t0);
        return 0;
    }
    pd_str_t apikey = PD_STR_NULL, vsn = PD_STR_NULL;
    gw_http_query_param(req, "apikey", &apikey);
    gw_http_query_param(req, "vsn", &vsn);
    int v = PD_PHX_V1;
    if (pd_str_eqc(vsn, "2.0.0"))
        v = PD_PHX_V2;
    else if (vsn.len && !pd_str_eqc(vsn, "1.0.0")) {
        s_refuse_http(gw, req, 400, "Unsupported vsn: this server speaks 1.0.0 and 2.0.0", t0);
        return 0;
    }
    char ref[37], err[400];
    const pd_project_t *p = NULL;
    if (!apikey.len) {
        s_refuse_http(gw, req, 401, "No API key found in request: pass ?apikey=", t0);
        sb->refused++;
        return 0;
    }
    sb_who_t who;
    memset(&who, 0, sizeof who);
    bool publishable = apikey.len > 15 && memcmp(apikey.ptr, "sb_publishable_", 15) == 0;
    if (publishable && (p = s_publishable(gw, apikey)))
        s_who_guest(&who);
    else if (publishable ||
             pd_jwt_peek(apikey.ptr, apikey.len, "ref", ref, sizeof ref) < 0 ||
             !(p = pd_projects_find(&gw->projects, pd_str(ref)))) {
        s_refuse_http(gw, req, 401,
                      "Invalid API key: a publishable key or an HS256 JWT whose ref is the id "
                      "of a project of this server",
                      t0);
        sb->refused++;
        return 0;
    }
    pd_str_t origin = gw_header(req, "origin");
    bool origin_ok = !origin.len || !p->norigins;
    for (size_t k = 0; !origin_ok && k < p->norigins; k++)
        origin_ok = pd_str_eqc(origin, p->origins[k]);
    if (!origin_ok) {
        s_refuse_http(gw, req, 403, "Origin not allowed for this project", t0);
        sb->refused++;
        return 0;
    }
    if (!publishable &&
        (s_verify(p, apikey, &who, err, sizeof err) < 0 || who.kind == GW_ID_USER)) {
        s_refuse_http(gw, req, 401, who.kind == GW_ID_USER ? "Invalid API key: a user token" : err,
                      t0);
        sb->refused++;
        return 0;
    }
    sb_conn_t *c = (sb_conn_t *)gw_ws_new(&sb->ws, sizeof *c);
    c->sb = sb;
    c->vsn = v;
    snprintf(c->project_id, sizeof c->project_id, "%s", p->id);
    c->who = who;
    snprintf(c->conn, sizeof c->conn, "%s/%llu", gw->ident, (unsigned long long)++sb->serial);
    gw_ws_upgrade(&c->ws, req, client_key);
    return 0;
}

/* -------------------------------------------------------------------------- operators */

static void
s_on_show_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    h2o_req_t *req = p->req;
    if (!req)
        return;
    int err = (int)m->i[PD_F_ERR];
    if (err != PD_ERR_OK) {
        gw_respond_err(gw, req, GW_ROUTE_OTHER, err, m->s[PD_F_MESSAGE], p->start_ns);
        return;
    }
    char total[40];
    pd_str_t body = m->s[PD_F_BODY];
    if (!pd_msg_has(m, PD_F_BODY)) { /* a count */
        int n = snprintf(total, sizeof total, "{\"total\":%lld}", (long long)m->i[PD_F_TOTAL]);
        body = (pd_str_t){total, (size_t)n};
    }
    gw_respond(gw, req, GW_ROUTE_OTHER, 200, "application/json", body.ptr, body.len, p->start_ns);
}

//  GET /v1/rooms/{channel}: a room's members and their count; GET /v1/rooms/{channel}/count:
//  {"total": N}, the count alone, O(1) at the room's node (the counts extension's shape, as
//  GET /v1/presences/count); GET /v1/rooms: the project's rooms, largest first ({"total",
//  "rooms": [{channel, count}]}, at most PD_ROOM_LIST_MAX), gathered from every store node by
//  the broker. For operators: an API key of the project (X-Appwrite-Project, X-Appwrite-Key).
//  A channel whose name ends in "/count" is named with its slash encoded (%2F).
int
gw_sb_on_rooms_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    int64_t t0 = gw_now_ns();
    static const char prefix[] = "/v1/rooms/";
    size_t plen = sizeof prefix - 1;
    pd_str_t path = {req->path_normalized.base, req->path_normalized.len};
    bool list = pd_str_eqc(path, "/v1/rooms") || pd_str_eqc(path, prefix);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
        (!list && (path.len <= plen || memcmp(path.ptr, prefix, plen) != 0))) {
        gw_respond_err(gw, req, GW_ROUTE_OTHER, PD_ERR_ROUTE_NOT_FOUND, PD_STR_NULL, t0);
        return 0;
    }
    static const char suffix[] = "/count";
    size_t slen = sizeof suffix - 1;
    bool count = !list && path.len > plen + slen &&
                 memcmp(path.ptr + path.len - slen, suffix, slen) == 0;
    if (count)
        path.len -= slen;
    pd_str_t channel = PD_STR_NULL;
    if (!list &&
        (gw_http_urldecode_pool(&req->pool, path.ptr + plen, path.len - plen, &channel) < 0 ||
         channel.len == 0 || channel.len > PD_PHX_MAX_FIELD)) {
        gw_respond_err(gw, req, GW_ROUTE_OTHER, PD_ERR_ARGUMENT_INVALID,
                       PD_STR("Invalid channel: 1 to 255 bytes, URL-encoded."), t0);
        return 0;
    }
    gw_ident_t id;
    char err[300];
    int rc = gw_ident_resolve(gw, &id, gw_header(req, "x-appwrite-project"),
                              gw_header(req, "x-appwrite-key"), PD_STR_NULL, err, sizeof err);
    if (rc == PD_ERR_OK && id.kind != GW_ID_KEY)
        rc = PD_ERR_UNAUTHORIZED_SCOPE;
    if (rc != PD_ERR_OK) {
        gw_respond_err(gw, req, GW_ROUTE_OTHER, rc, err[0] ? pd_str(err) : PD_STR_NULL, t0);
        gw_ident_free(&id);
        return 0;
    }
    gw_pending_t *p = gw_pending_new(gw, req, GW_ROUTE_OTHER, s_on_show_reply);
    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_ROOM, p->rid);
    pd_msgw_int(w, PD_F_ACTION, list ? PD_ROOM_ROOMS : count ? PD_ROOM_COUNT : PD_ROOM_SHOW);
    pd_msgw_str(w, PD_F_PROJECT, id.project->id, strlen(id.project->id));
    if (!list)
        pd_msgw_s(w, PD_F_ID, channel);
    gw_send_end(gw);
    gw_ident_free(&id);
    return 0;
}

/* -------------------------------------------------------------------------- lifecycle */

void
gw_sb_init(gw_t *gw)
{
    sb_t *sb = pd_xcalloc(1, sizeof *sb);
    sb->gw = gw;
    *h2o_context_get_storage(&gw->ctx, &s_storage_key, NULL) = sb;
    gw_ws_ctx_init(&sb->ws, &gw->ctx, &s_ws_cb);
    pd_map_init(&sb->rooms);
    pd_buf_init(&sb->out);
    pd_buf_init(&sb->tmp);
    pd_buf_init(&sb->diff);
    pd_buf_init(&sb->payload);
    for (int v = 0; v < 3; v++)
        gw_ws_shared_init(&sb->frame[v]);
    int window = gw->cfg->room_diff_ms;
    h2o_timeout_init(gw->ctx.loop, &sb->diff_timeout,
                     window >= 1 && window <= 1000 ? (uint64_t)window : SB_DIFF_WINDOW_MS);
    sb->ws.max_message = SB_MAX_MESSAGE;
    sb->ws.max_queue = gw->cfg->ws_max_queue >= 4096 ? gw->cfg->ws_max_queue : SB_QUEUE_DEFAULT;
    sb->ws.idle_ms = gw->cfg->ws_idle_timeout > 0 ? gw->cfg->ws_idle_timeout * 1000LL : SB_IDLE_MS;
    sb->ws.stall_ms = gw->cfg->ws_stall_timeout > 0 ? gw->cfg->ws_stall_timeout * 1000LL
                                                    : SB_STALL_MS;
}

bool
gw_sb_idle(gw_t *gw)
{
    sb_t *sb = s_sb(gw);
    return !sb || (!sb->ws.conns && !sb->rooms.n);
}

void
gw_sb_bus_live(gw_t *gw)
{
    sb_t *sb = s_sb(gw);
    for (gw_ws_conn_t *c = sb ? sb->ws.conns : NULL, *next; c; c = next) {
        next = c->next;
        gw_ws_resume(c);
    }
}

void
gw_sb_tick(gw_t *gw)
{
    sb_t *sb = s_sb(gw);
    if (!sb)
        return;
    int64_t now = pd_mono_ms();
    gw_ws_sweep(&sb->ws, now);
    for (sb_op_t *op = sb->ops, *next; op; op = next) {
        next = op->next;
        if (now >= op->deadline_ms) {
            if (op->c && op->c->ws.state == GW_WS_OPEN)
                s_reply_err(op->c, s_opt(op->join_ref), op->has_ref ? pd_str(op->ref) : PD_STR_NULL,
                            pd_str(op->topic), pd_err_msg(PD_ERR_TIMEOUT));
            s_op_free(op);
        }
    }
    /* tokens that expired while joined: the channel is told and closed */
    int64_t now_s = pd_now_ms() / 1000;
    for (gw_ws_conn_t *ws = sb->ws.conns, *wnext; ws; ws = wnext) {
        wnext = ws->next;
        if (ws->state != GW_WS_OPEN)
            continue;
        sb_conn_t *c = s_conn(ws);
        for (sb_chan_t *ch = c->chans, *next; ch; ch = next) {
            next = ch->next_c;
            if (ch->who.exp && ch->who.exp <= now_s) {
                s_chan_end(ch, "Token has expired");
                if (ws->state != GW_WS_OPEN)
                    break; /* dropped: its channels are gone */
            }
        }
    }
    /* leases: every room with a member of ours, every third of the lease; and snapshots
     * that did not come back */
    bool renew = now - sb->renew_ms >= SB_RENEW_MS;
    if (renew)
        sb->renew_ms = now;
    for (size_t k = 0; sb->rooms.n && k <= sb->rooms.mask; k++)
        for (pd_mapent_t *e = pd_map_slot(&sb->rooms, k); e; e = e->next) {
            sb_room_t *r = (sb_room_t *)e;
            if (r->state == SB_ROOM_SNAP_WAIT && now - r->snap_ms >= SB_SNAP_RETRY_MS)
                s_room_snap(sb, r);
            if (!renew || !r->ntracked)
                continue;
            /* by name: the connections of ours that hold a member there */
            pd_msgw_t *w = s_room_msg(sb, r, PD_ROOM_RENEW, 0);
            uint32_t n = 0;
            for (sb_chan_t *ch = r->chans; ch; ch = ch->next_r)
                n += ch->tracked;
            pd_msgw_raw(w, PD_F_ITEMS);
            msgpack_pack_array(&w->pk, n);
            for (sb_chan_t *ch = r->chans; ch; ch = ch->next_r)
                if (ch->tracked)
                    msgpack_pack_str_with_body(&w->pk, ch->c->conn, strlen(ch->c->conn));
            gw_send_end(gw);
        }
}

//  A Prometheus label value: backslash, quote and newline escaped, other control bytes '?'.
static void
s_label(pd_buf_t *b, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\\' || ch == '"')
            pd_buf_addf(b, "\\%c", ch);
        else if (ch == '\n')
            pd_buf_adds(b, "\\n");
        else
            pd_buf_add(b, ch < 0x20 ? "?" : (const char *)&p[i], 1);
    }
}

//  Members of the rooms this gateway mirrors (O(1) each: the mirror's count), at most
//  SB_METRIC_ROOMS of them (the room list in the console reads these).
static void
s_room_metrics(sb_t *sb, pd_buf_t *b)
{
    pd_buf_adds(b, "# TYPE presenced_supabase_room_members gauge\n");
    size_t n = 0;
    for (size_t k = 0; sb->rooms.n && k <= sb->rooms.mask && n < SB_METRIC_ROOMS; k++)
        for (pd_mapent_t *e = pd_map_slot(&sb->rooms, k); e && n < SB_METRIC_ROOMS; e = e->next) {
            const sb_room_t *r = (const sb_room_t *)e;
            if (r->state != SB_ROOM_LIVE)
                continue;
            pd_buf_adds(b, "presenced_supabase_room_members{project=\"");
            s_label(b, r->project, r->plen);
            pd_buf_adds(b, "\",channel=\"");
            s_label(b, r->channel, r->clen);
            pd_buf_addf(b, "\"} %zu\n", r->nmembers);
            n++;
        }
}

void
gw_sb_metrics(gw_t *gw, pd_buf_t *b)
{
    sb_t *sb = s_sb(gw);
    if (!sb)
        return;
    pd_buf_addf(b,
                "# TYPE presenced_supabase_connections gauge\n"
                "presenced_supabase_connections %zu\n"
                "# TYPE presenced_supabase_channels gauge\n"
                "presenced_supabase_channels %zu\n"
                "# TYPE presenced_supabase_rooms gauge\n"
                "presenced_supabase_rooms %zu\n"
                "# TYPE presenced_supabase_connections_total counter\n"
                "presenced_supabase_connections_total{result=\"opened\"} %llu\n"
                "presenced_supabase_connections_total{result=\"refused\"} %llu\n"
                "# TYPE presenced_supabase_messages_total counter\n"
                "presenced_supabase_messages_total %llu\n"
                "# TYPE presenced_supabase_errors_total counter\n"
                "presenced_supabase_errors_total %llu\n"
                "# TYPE presenced_supabase_rate_limited_total counter\n"
                "presenced_supabase_rate_limited_total %llu\n"
                "# TYPE presenced_supabase_presence_frames_total counter\n"
                "presenced_supabase_presence_frames_total{kind=\"state\"} %llu\n"
                "presenced_supabase_presence_frames_total{kind=\"diff\"} %llu\n"
                "# TYPE presenced_supabase_broadcasts_total counter\n"
                "presenced_supabase_broadcasts_total{dir=\"in\"} %llu\n"
                "presenced_supabase_broadcasts_total{dir=\"out\"} %llu\n"
                "# TYPE presenced_supabase_snapshots_total counter\n"
                "presenced_supabase_snapshots_total %llu\n"
                "# TYPE presenced_supabase_slow_disconnects_total counter\n"
                "presenced_supabase_slow_disconnects_total %llu\n"
                "# TYPE presenced_supabase_room_resyncs_total counter\n"
                "presenced_supabase_room_resyncs_total %llu\n",
                sb->nconns, sb->nchans, sb->rooms.n, (unsigned long long)sb->opened,
                (unsigned long long)sb->refused, (unsigned long long)sb->messages,
                (unsigned long long)sb->errors, (unsigned long long)sb->rate_limited,
                (unsigned long long)sb->states, (unsigned long long)sb->diffs,
                (unsigned long long)sb->bcasts_in, (unsigned long long)sb->bcasts_out,
                (unsigned long long)sb->snapshots, (unsigned long long)sb->ws.slow,
                (unsigned long long)sb->resyncs);
    s_room_metrics(sb, b);
}

void
gw_sb_shutdown(gw_t *gw)
{
    sb_t *sb = s_sb(gw);
    if (!sb)
        return;
    sb->shutting_down = true;
    for (gw_ws_conn_t *c = sb->ws.conns, *next; c; c = next) {
        next = c->next;
        if (c->state == GW_WS_OPEN) {
            gw_ws_close(c, 1012, "Service restart"); /* reconnect (elsewhere) */
            gw_ws_flush_now(c);
        }
    }
}
