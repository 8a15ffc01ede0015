/*  store — see store.h.
 *
 *  One thread, one loop: drain the DEALER (batches from the broker) and the front ROUTER
 *  (batches straight from gateways), apply each request to the table, append replies to one
 *  batch per sender and events to another, flush, repeat. Writes are applied in arrival order,
 *  so the per-node event sequence (SEQ) is the order of changes.
 *
 *  The front serves the requests that need no other node (gateway.c, "direct requests"): GET,
 *  UPDATE that keeps the owner, and UPSERT of a user's existing record, marked CLAIMED so that
 *  a stale guess is answered PRESENCE_NOT_FOUND instead of creating a record no claim covers;
 *  and FETCH, the JSON of a large list's page that the broker planned (broker.c, two rounds),
 *  refused while the store set changes.
 *  Everything else goes through the broker, which owns claims, lists and membership.
 *  Every EVENT carries the record after the change (before it, for a delete) and, for updates,
 *  the previous state: gateways need both to tell a subscriber that a record left its set.
 *
 *  Expired records are invisible to reads from the instant expiresAt passes (checked on every
 *  read against the request's clock); the reaper deletes them and that delete is the event.
 *
 *  Events outlive a crash of this process: each is written to the outbox in shared memory
 *  (pd_outbox.h) before its change is visible in the table, and a restarted node settles the
 *  one that may be pending and publishes its last second of events again once the broker has
 *  subscribed to its XPUB. Its rooms' joins and leaves (st_rooms.h) share the sequence and the
 *  outbox.
 *
 *  Moves (resharding; the ownership rules and the protocol are in broker.c, "resharding"). The
 *  broker tells this node the store set (SHARDS: FROM nodes -> TOTAL nodes). While records
 *  move, a request for a record this node gives away (its owner among FROM nodes is this node,
 *  among TOTAL another) is answered here only while the record is here and not on its way
 *  (frozen): otherwise the reply is MOVED, and the broker asks the new owner. A direct request
 *  from a gateway is served only for a record this node owns and holds; anything else (a
 *  record moving here, a gateway with an old route table) is MOVED, and the gateway sends it
 *  through the broker. MOVE_OUT freezes and sends a batch of records and claims; MOVE_DROP
 *  forgets those the new owner took; MOVE_IN takes one (its version kept). None of them makes
 *  an event: to subscribers a move is not a change. The reaper, which keys deadlines by
 *  (node, slot), is told of each deadline that came or went (DEADLINE, s_deadline_moved). */
#include "store.h"

#include <czmq.h>
#include <malloc.h>
#include <signal.h>

#include "pd_err.h"
#include "pd_keys.h"
#include "pd_log.h"
#include "pd_probe.h"
#include "pd_zmq.h"
#include "pd_msg.h"
#include "pd_outbox.h"
#include "pd_query.h"
#include "pd_record.h"
#include "pd_table.h"
#include "st_index.h"
#include "st_projects.h"
#include "st_rooms.h"
#include "st_replay.h"

#define SYNC_PAGE_ITEMS 1000
#define SYNC_QUEUE 8          //  SYNC requests waiting, at most
/*  Scans over every slot that run while the node serves (the count after a restart, a SYNC
 *  answer) take a slice per loop turn: chunks of SCAN_CHUNK slots until SCAN_TURN_US have
 *  passed. Bounded by time, not by slots: right after a restart each slot's block is faulted in
 *  (10 to 70 us a page on some hosts), and a request must not wait behind 50,000 of them. */
#define SCAN_CHUNK 2048
#define SCAN_TURN_US 4000
#define OUTBOX_BYTES (64u << 20) //  recent events kept in shared memory (--store-outbox; st_replay.h)
#define REPLAY_MS 1000           //  after a restart, events this recent are published again
#define FRAME_MAX (256u << 10)   //  a bus frame is cut after this many bytes (s_topic)
#define HOLD_MAX (64u << 20)     //  events held while the broker has not subscribed yet
#define EVENTS_KEEP (4u << 20)   //  an events buffer larger than this is freed once sent
#define PUB_WINDOW_US 1000       //  at most one event frame per this, while events flow
#define MOVE_SCAN_SLOTS 65536    //  slots (or claim entries) a MOVE_OUT looks at, at most

//  A SYNC being answered (see "sync").
typedef struct {
    uint64_t rid;       //  the SYNC's request id
    int64_t seq, dseq;  //  the node's sequence numbers when its scan began
    size_t n;           //  items in the page being built
    msgpack_sbuffer sb; //  the page's items
    msgpack_packer pk;
} sync_ctx_t;

typedef struct {
    pd_config_t *cfg;
    pd_table_t *table;
    zsock_t *dealer;      //  to the broker (which knows it by its key, store-<node>)
    pd_keys_t *keys;      //  the cluster's key set
    pd_zap_t *zap;        //  admits gateways on the front (when there is one)
    zsock_t *front;       //  ROUTER for gateways' direct requests (NULL: not configured)
    pd_msgw_t *reply;     //  where replies of the batch being handled go: out or front_out
    pd_msgw_t front_out;  //  replies to the gateway whose batch is being handled
    zsock_t *pub;         //  to the bus (XPUB: it sees the broker subscribe)
    bool bus_ready;       //  the broker has subscribed: events can go out
    bool events_wanted;   //  someone (a gateway) subscribes to the EVENT topic
    pd_outbox_t *outbox;  //  recent events, in shared memory (pd_outbox.h)
    size_t hold_max;      //  bytes of events held before the bus is ready (HOLD_MAX + replay)
    int put_action;       //  the event of the pd_table_put in progress (0: none)
    pd_zpoll_t poll;
    pd_msgw_t out;        //  replies this turn
    pd_msgw_t events;     //  events this turn (and after a restart, the replay first): runs
                          //  of one bus topic, each a frame of up to about FRAME_MAX bytes
    size_t *runs;         //  where each run starts in events (its topic byte)
    size_t nruns, cap_runs;
    msgpack_zone zone;
    int node;
    int64_t gen;          //  boot generation (ms)
    uint64_t seq;         //  last event sequence number
    uint64_t dseq;        //  last sequence number of the deadline topic
    int64_t pub_last;     //  mono us of the last event frame sent
    uint64_t malformed;
    pd_buf_t scratch;
    st_projects_t *projects; //  records and statuses per project (st_projects.h; s_count_step)
    st_rooms_t *rooms;    //  rooms: presence sets per channel (st_rooms.h)
    st_index_t *index;    //  indexes projects declare: lists, counts, ordered pages (st_index.h)
    pd_buf_t ikeys;       //  scratch: a list's index keys
    sync_ctx_t sync;      //  the SYNC being answered, a slice per loop turn
    uint64_t syncs[SYNC_QUEUE]; //  request ids of the SYNCs to answer, oldest first
    size_t nsyncs;
    bool sync_started;    //  syncs[0]'s scan has begun
    uint64_t sync_pos;    //  its next slot
    struct cand *cands;   //  a list's matches, kept between lists (no allocation per list)
    struct sent *sorted;  //  the same, ordered
    size_t cap_cands;
    uint64_t sh_epoch;    //  changes of the store set seen (a DUMP's EPOCH: gw_replica.h)
    int sh_from, sh_to;   //  the store set (SHARDS): records move from sh_from nodes to sh_to;
                          //  0 until the broker has said (direct requests are refused until then)
    zhash_t *frozen;      //  records and claims sent by MOVE_OUT, not yet dropped (s_move_key)
    uint64_t scan_pos;    //  MOVE_OUT: next slot to look at
    uint64_t claim_pos;   //  MOVE_OUT: next claim entry, once the slots are done
    bool scan_claims;     //  MOVE_OUT is past the slots, on the claims
    size_t pass_found;    //  MOVE_OUT: records and claims found to move in this pass
    bool silent;          //  a change that is a move: no event
    char mkey[256];       //  s_move_key's result
    int64_t grow_after;   //  mono ms: no capacity growth before this (after one that failed)
    int64_t regrow_ms;    //  mono ms a growth's rehash began, while it runs (s_capacity_step)
} store_t;

static volatile sig_atomic_t s_stop;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static bool
s_can(const pd_msg_t *m, pd_str_t roles)
{
    return (m->i[PD_F_FLAGS] & PD_FL_BYPASS) || pd_roles_intersect(roles, m->s[PD_F_ROLES]);
}

static void
s_reply_err(store_t *self, const pd_msg_t *m, int err, const char *msg)
{
    pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(self->reply, PD_F_ERR, err);
    if (msg)
        pd_msgw_str(self->reply, PD_F_MESSAGE, msg, strlen(msg));
    pd_msgw_end(self->reply);
}

static void
s_reply_rec(store_t *self, const pd_msg_t *m, const pd_record_t *rec, const pd_record_t *prev)
{
    pd_msgw_t *w = self->reply;
    pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_s(w, PD_F_PROJECT, rec->project);
    pd_msgw_s(w, PD_F_ID, rec->id);
    pd_msgw_s(w, PD_F_USER, rec->user_id);
    pd_msgw_int(w, PD_F_VERSION, (int64_t)rec->version);
    pd_msgw_int(w, PD_F_EXPIRES, rec->expires_ms);
    if (m->type != PD_MSG_DELETE && m->type != PD_MSG_EXPIRE && m->type != PD_MSG_RELEASE)
        pd_msgw_s(w, PD_F_BODY, rec->json);
    if (prev)
        pd_msgw_s(w, PD_F_PREV_USER, prev->user_id);
    pd_msgw_end(w);
}

/*  Publishes a change. rec is the record after the change (before it, for a delete); prev is
 *  the state before an upsert/update, or NULL. */
/*  Starts a message of bus topic `topic` in the events of this turn: a new run (a frame of its
 *  own) when the topic changes, so that events keep their order on every subscriber, and when
 *  the run has passed FRAME_MAX. The I/O thread encrypts a frame whole, and whatever this node
 *  sends after it (replies included) waits: a restart's replay of 8 MB in one frame held the
 *  new process's first replies back 36 ms. */
static void
s_topic(store_t *self, char topic)
{
    pd_msgw_t *w = &self->events;
    if (self->nruns) {
        size_t at = self->runs[self->nruns - 1];
        if (w->sb.data[at] == topic && w->sb.size - at < FRAME_MAX)
            return;
    }
    if (self->nruns == self->cap_runs) {
        self->cap_runs = self->cap_runs ? self->cap_runs * 2 : 16;
        self->runs = realloc(self->runs, self->cap_runs * sizeof *self->runs);
        if (!self->runs)
            pd_fatal("realloc");
    }
    self->runs[self->nruns++] = w->sb.size;
    pd_msgw_append(w, &topic, 1, 0);
}

static void
s_events_reset(store_t *self)
{
    if (self->events.sb.alloc > EVENTS_KEEP) { /* a replay's, or a burst's: not kept */
        pd_msgw_destroy(&self->events);
        pd_msgw_init(&self->events);
    } else {
        pd_msgw_reset(&self->events);
    }
    self->nruns = 0;
}

/*  The reaper needs an event only if it creates, removes or brings closer a deadline: a
 *  change that keeps or pushes back one goes on the EVENT topic alone (pd_msg.h). */
static bool
s_for_reaper(int action, const pd_record_t *rec, const pd_record_t *prev)
{
    return action == PD_ACT_DELETE || !prev || rec->expires_ms < prev->expires_ms;
}

//  This node's heartbeat on the bus, in topic `topic`: its generation and last sequence numbers.
static void
s_bus_hello(store_t *self, char topic)
{
    pd_msgw_t *w = &self->events;
    s_topic(self, topic);
    pd_msgw_begin(w, PD_MSG_HELLO, 0);
    pd_msgw_str(w, PD_F_ROLE, "store", 5);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_int(w, PD_F_SEQ, (int64_t)self->seq);
    pd_msgw_int(w, PD_F_DSEQ, (int64_t)self->dseq);
    pd_msgw_end(w);
}

static void
s_event(store_t *self, int action, const pd_record_t *rec, const pd_record_t *prev)
{
    pd_msgw_t *w = &self->events;
    bool deadline = s_for_reaper(action, rec, prev);
    if (!deadline && !self->events_wanted && self->bus_ready)
        return; /* nobody would get it: not made, not kept (a gateway joining is answered with a
                 * HELLO, and serves no subscriber before that). Until the broker's XSUB has
                 * subscribed (bus_ready) we cannot know: a node started by a scale is sent
                 * writes ~300 ms before its bus link is up, and their events must be in the
                 * outbox for the gateways' resync (reshard.test.js's subscriber missed them). */
    s_topic(self, deadline ? PD_BUS_DEADLINE : PD_BUS_EVENT);
    size_t start = w->sb.size;
    pd_msgw_begin(w, PD_MSG_EVENT, ++self->seq);
    pd_msgw_int(w, PD_F_ACTION, action);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_SEQ, (int64_t)self->seq);
    if (deadline) {
        pd_msgw_int(w, PD_F_DSEQ, (int64_t)++self->dseq);
        pd_msgw_int(w, PD_F_SLOT, rec->slot); //  the reaper's key for the record's deadline
    }
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_record_write(w, rec, PD_REC_EVENT);
    if (prev)
        pd_record_write_prev(w, prev);
    pd_msgw_end(w);
    /* pending in the outbox before the change is visible; committed right after it */
    if (pd_outbox_put(self->outbox, w->sb.data + start, w->sb.size - start, pd_now_ms()) < 0)
        pd_log_debug("%s: event of %zu bytes not kept in the outbox", __func__, w->sb.size - start);
}

/*  A deadline that came here or left with a moved record (MOVE_IN, MOVE_DROP), for the reaper
 *  alone: subscribers see no event for a move, but the reaper keys deadlines by (node, slot),
 *  and the slot changed. Numbered in the DEADLINE topic's sequence (DSEQ), not kept in the
 *  outbox: a restart is a new generation, which the reaper answers with a SYNC. */
static void
s_deadline_moved(store_t *self, int action, const pd_record_t *rec)
{
    pd_msgw_t *w = &self->events;
    s_topic(self, PD_BUS_DEADLINE);
    pd_msgw_begin(w, PD_MSG_DEADLINE, 0);
    pd_msgw_int(w, PD_F_ACTION, action);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_int(w, PD_F_DSEQ, (int64_t)++self->dseq);
    pd_msgw_int(w, PD_F_SLOT, rec->slot);
    pd_msgw_int(w, PD_F_VERSION, (int64_t)rec->version);
    if (action != PD_ACT_DELETE)
        pd_msgw_int(w, PD_F_EXPIRES, rec->expires_ms);
    pd_msgw_end(w);
}

//  The table's hook: the event of a change, made before the change is visible. A delete
//  (rec NULL) always has one; a write has the action s_put set, or none.
static void
s_on_change(const pd_record_t *rec, const pd_record_t *prev, void *arg)
{
    store_t *self = arg;
    st_index_change(self->index, rec, prev);
    st_projects_change(self->projects, rec, prev);
    if (self->silent)
        return;
    if (!rec)
        s_event(self, PD_ACT_DELETE, prev, NULL);
    else if (self->put_action)
        s_event(self, self->put_action, rec, prev);
}

/*  Records per project on this node: reported in HELLO so that the broker can enforce a
 *  project's record limit across the cluster; with them each project's statuses, for its lists
 *  (st_projects.h, s_list_by_status). After a restart they are counted again by a scan of the
 *  slots, a slice per loop turn (SCAN_TURN_US), while the node serves (a million records take
 *  100 ms and more: the node does not wait for them). Meanwhile HELLO carries no counts (the
 *  broker keeps the last ones it had) and lists walk every record. True while the count goes
 *  on. */
static bool
s_count_step(store_t *self)
{
    if (!st_projects_counting(self->projects))
        return false;
    int64_t until = pd_mono_us() + SCAN_TURN_US;
    while (st_projects_recount_step(self->projects, self->table, SCAN_CHUNK))
        if (pd_mono_us() >= until)
            return true;
    size_t projects, statuses;
    st_projects_stats(self->projects, &projects, &statuses);
    pd_log_info("counted %zu records in %zu projects (%zu statuses)", pd_table_count(self->table),
                projects, statuses);
    return false;
}

static int64_t
s_now(const pd_msg_t *m)
{
    return m->i[PD_F_NOW] ? m->i[PD_F_NOW] : pd_now_ms();
}

static void
s_put(store_t *self, const pd_msg_t *m, const pd_record_t *rec, int action)
{
    pd_record_t stored, prev;
    memset(&prev, 0, sizeof prev);
    self->put_action = action; //  the event is made by s_on_change, inside pd_table_put
    int rc = pd_table_put(self->table, rec, &stored, &prev);
    self->put_action = 0;
    if (rc != 0) {
        s_reply_err(self, m, rc, NULL);
        return;
    }
    pd_outbox_commit(self->outbox);
    s_reply_rec(self, m, &stored, prev.id.len > 0 ? &prev : NULL);
}

static void
s_on_upsert(store_t *self, const pd_msg_t *m)
{
    int64_t now = s_now(m);
    pd_record_t old, rec;
    bool exists = pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &old) == 0;
    if (exists && old.expires_ms <= now)
        exists = false; /* an expired record is gone, whatever the reaper is doing */
    if (exists && !pd_str_eq(old.user_id, m->s[PD_F_USER])) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "Presence with the requested ID '%.*s' already exists. Try again with a "
                 "different ID or use ID.unique() to generate a unique ID.",
                 (int)m->s[PD_F_ID].len, m->s[PD_F_ID].ptr);
        s_reply_err(self, m, PD_ERR_PRESENCE_EXISTS, msg);
        return;
    }
    if (!exists && (m->i[PD_F_FLAGS] & PD_FL_CLAIMED)) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL); /* stale claim: broker retries */
        return;
    }
    if (exists && !s_can(m, old.update_roles)) {
        s_reply_err(self, m, PD_ERR_USER_UNAUTHORIZED, NULL);
        return;
    }
    pd_record_read(m, &rec);
    /* A connection-bound presence is held by every gateway whose sockets set it (CONN is the
     * packed list of holders); a REST upsert makes it a plain record again. */
    pd_buf_reset(&self->scratch);
    if (m->i[PD_F_FLAGS] & PD_FL_HOLD) {
        if (exists && old.source.len && pd_str_eqc(old.source, "realtime"))
            pd_buf_add(&self->scratch, old.conn.ptr, old.conn.len);
        if (!pd_list_has((pd_str_t){self->scratch.data, self->scratch.len}, m->s[PD_F_CONN])) {
            pd_buf_add(&self->scratch, m->s[PD_F_CONN].ptr, m->s[PD_F_CONN].len);
            pd_buf_add(&self->scratch, "", 1);
        }
        rec.conn = (pd_str_t){self->scratch.data, self->scratch.len};
    } else {
        rec.conn = PD_STR_NULL;
    }
    rec.created_ms = exists ? old.created_ms : now;
    rec.updated_ms = now;
    s_put(self, m, &rec, PD_ACT_UPSERT);
}

static void
s_on_update(store_t *self, const pd_msg_t *m)
{
    int64_t now = s_now(m);
    pd_record_t old, rec;
    if (pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &old) != 0 ||
        old.expires_ms <= now || !s_can(m, old.read_roles)) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    if (!s_can(m, old.update_roles)) {
        s_reply_err(self, m, PD_ERR_USER_UNAUTHORIZED, NULL);
        return;
    }
    int64_t fl = m->i[PD_F_FLAGS];
    if ((fl & PD_FL_HOLD) && !pd_list_has(old.conn, m->s[PD_F_CONN])) {
        /* a lease renewal from a gateway that no longer holds this record (a REST upsert
         * replaced it): leave the record alone */
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    if (!(fl & (PD_FL_HAS_STATUS | PD_FL_HAS_META | PD_FL_HAS_PERMS | PD_FL_HAS_EXPIRES |
                PD_FL_HAS_USER))) {
        s_reply_rec(self, m, &old, NULL);
        return;
    }
    rec = old;
    if (fl & PD_FL_HAS_STATUS) {
        rec.status = m->s[PD_F_STATUS];
        rec.status_json = m->s[PD_F_STATUS_JSON];
    }
    if (fl & PD_FL_HAS_META)
        rec.meta_json = m->s[PD_F_META_JSON];
    if (fl & PD_FL_HAS_EXPIRES)
        rec.expires_ms = m->i[PD_F_EXPIRES];
    bool reassigned = (fl & PD_FL_HAS_USER) && !pd_str_eq(m->s[PD_F_USER], old.user_id);
    if (fl & PD_FL_HAS_USER)
        rec.user_id = m->s[PD_F_USER];
    /* Explicit permissions, or the new owner's defaults (sent by the gateway) on reassign. */
    if ((fl & PD_FL_HAS_PERMS) || (reassigned && pd_msg_has(m, PD_F_PERMS_JSON))) {
        rec.perms_json = m->s[PD_F_PERMS_JSON];
        rec.read_roles = m->s[PD_F_READ_ROLES];
        rec.update_roles = m->s[PD_F_UPDATE_ROLES];
        rec.delete_roles = m->s[PD_F_DELETE_ROLES];
    }
    rec.updated_ms = now;
    s_put(self, m, &rec, PD_ACT_UPDATE);
}

/*  Deletes the record m names, answers, and publishes the delete event (DELETE, EXPIRE, and
 *  RELEASE of the last holder). */
static void
s_remove(store_t *self, const pd_msg_t *m, pd_str_t project, pd_str_t id)
{
    pd_record_t prev; //  the event is made by s_on_change, inside pd_table_delete
    if (pd_table_delete(self->table, project, id, &prev) != 0) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    pd_outbox_commit(self->outbox);
    s_reply_rec(self, m, &prev, NULL);
}

static bool s_frozen(store_t *self, char kind, pd_str_t project, pd_str_t key);
static bool s_moving_out(store_t *self, pd_str_t project, pd_str_t key);

/*  EXPIRE: the reaper names a record by its slot here (or, from an older reaper, by its key)
 *  and the version whose deadline it holds. The record is deleted only if that version is
 *  still the one here and it is due on this node's clock; otherwise the answer tells the reaper
 *  what the slot holds now, whichever record that is, and it follows. A record on its way to
 *  another node (frozen by a move) is answered UNAVAILABLE, without MOVED (the broker cannot
 *  resend a slot to another node): the reaper tries again, and after the drop the slot is free
 *  here while the new owner has reported the deadline under its own slot (DEADLINE). */
static void
s_on_expire(store_t *self, const pd_msg_t *m)
{
    pd_record_t old;
    bool by_slot = pd_msg_has(m, PD_F_SLOT);
    int rc = by_slot ? (m->i[PD_F_SLOT] < 0 || m->i[PD_F_SLOT] > UINT32_MAX
                            ? -1
                            : pd_table_get_slot(self->table, (uint32_t)m->i[PD_F_SLOT], &old))
                     : pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &old);
    if (rc != 0) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    if ((uint64_t)m->i[PD_F_VERSION] != old.version || old.expires_ms > pd_now_ms()) {
        /* refreshed, replaced, or not due on this node's clock: tell the reaper what is current */
        pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
        pd_msgw_int(self->reply, PD_F_ERR, PD_ERR_CONFLICT);
        pd_msgw_int(self->reply, PD_F_VERSION, (int64_t)old.version);
        pd_msgw_int(self->reply, PD_F_EXPIRES, old.expires_ms);
        pd_msgw_end(self->reply);
        return;
    }
    if (by_slot && s_moving_out(self, old.project, old.id) &&
        s_frozen(self, 'r', old.project, old.id)) {
        s_reply_err(self, m, PD_ERR_UNAVAILABLE, "the record is moving to another node");
        return;
    }
    s_remove(self, m, old.project, old.id);
}

static void
s_on_delete(store_t *self, const pd_msg_t *m)
{
    pd_record_t old;
    if (pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &old) != 0 ||
        !s_can(m, old.read_roles)) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    if (!s_can(m, old.delete_roles)) {
        s_reply_err(self, m, PD_ERR_USER_UNAUTHORIZED, NULL);
        return;
    }
    s_remove(self, m, m->s[PD_F_PROJECT], m->s[PD_F_ID]);
}

/*  A gateway no longer holds a connection-bound record (its last socket closed, and the grace
 *  period passed). The record is deleted when no holder is left. */
static void
s_on_release(store_t *self, const pd_msg_t *m)
{
    pd_record_t old;
    if (pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &old) != 0 ||
        !pd_list_has(old.conn, m->s[PD_F_CONN])) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    pd_buf_reset(&self->scratch);
    for (pd_str_t it = pd_list_first(old.conn); it.ptr; it = pd_list_next(old.conn, it)) {
        if (pd_str_eq(it, m->s[PD_F_CONN]))
            continue;
        pd_buf_add(&self->scratch, it.ptr, it.len);
        pd_buf_add(&self->scratch, "", 1);
    }
    if (self->scratch.len) { /* other gateways still hold it */
        pd_record_t rec = old;
        rec.conn = (pd_str_t){self->scratch.data, self->scratch.len};
        pd_record_t stored; //  no event: subscribers do not see who holds a presence
        if (pd_table_put(self->table, &rec, &stored, NULL) != 0) {
            s_reply_err(self, m, PD_ERR_STORE_FULL, NULL);
            return;
        }
        s_reply_err(self, m, PD_ERR_OK, NULL);
        return;
    }
    s_remove(self, m, m->s[PD_F_PROJECT], m->s[PD_F_ID]);
}

static void
s_on_get(store_t *self, const pd_msg_t *m)
{
    pd_record_t rec;
    if (pd_table_get(self->table, m->s[PD_F_PROJECT], m->s[PD_F_ID], &rec) != 0 ||
        rec.expires_ms <= s_now(m) || !s_can(m, rec.read_roles)) {
        s_reply_err(self, m, PD_ERR_PRESENCE_NOT_FOUND, NULL);
        return;
    }
    s_reply_rec(self, m, &rec, NULL);
}

static void
s_on_claim(store_t *self, const pd_msg_t *m)
{
    char id[37];
    bool fresh = false;
    int rc;
    if (m->type == PD_MSG_CLAIM) {
        rc = pd_table_claim(self->table, m->s[PD_F_PROJECT], m->s[PD_F_USER], m->s[PD_F_ID], id,
                            &fresh);
    } else {
        rc = pd_table_reclaim(self->table, m->s[PD_F_PROJECT], m->s[PD_F_USER],
                              m->s[PD_F_EXPECT], m->s[PD_F_ID], id);
        fresh = rc == 0 && pd_str_eqc(m->s[PD_F_ID], id);
    }
    if (rc != 0) {
        s_reply_err(self, m, rc, NULL);
        return;
    }
    pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(self->reply, PD_F_ERR, PD_ERR_OK);
    pd_msgw_str(self->reply, PD_F_ID, id, strlen(id));
    pd_msgw_int(self->reply, PD_F_FLAGS, fresh ? PD_FL_FRESH : 0);
    pd_msgw_end(self->reply);
}

/* -------------------------------------------------------------------------- moves */

//  The name of a record ('r') or a claim ('c') in the frozen set.
static const char *
s_move_key(store_t *self, char kind, pd_str_t project, pd_str_t key)
{
    snprintf(self->mkey, sizeof self->mkey, "%c%.*s\x1f%.*s", kind, (int)project.len,
             project.ptr ? project.ptr : "", (int)key.len, key.ptr ? key.ptr : "");
    return self->mkey;
}

static bool
s_frozen(store_t *self, char kind, pd_str_t project, pd_str_t key)
{
    return zhash_size(self->frozen) && zhash_lookup(self->frozen, s_move_key(self, kind, project, key));
}

//  Whether this node gives (project, key) away in the move under way.
static bool
s_moving_out(store_t *self, pd_str_t project, pd_str_t key)
{
    return self->sh_from && self->sh_from != self->sh_to &&
           pd_shard_owner(project, key, self->sh_from) == self->node &&
           pd_shard_owner(project, key, self->sh_to) != self->node;
}

static void
s_reply_moved(store_t *self, const pd_msg_t *m)
{
    pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(self->reply, PD_F_ERR, PD_ERR_UNAVAILABLE);
    pd_msgw_int(self->reply, PD_F_FLAGS, PD_FL_MOVED);
    pd_msgw_end(self->reply);
}

/*  A request from the broker for a record (or claim) this node gives away, and no longer has
 *  (or has frozen, on its way): answered MOVED, so the broker asks the new owner. Returns true
 *  when it answered. */
static bool
s_refuse_moved(store_t *self, const pd_msg_t *m)
{
    if (!self->sh_from || self->sh_from == self->sh_to)
        return false;
    pd_str_t project = m->s[PD_F_PROJECT];
    bool here;
    switch (m->type) {
    case PD_MSG_CLAIM:
    case PD_MSG_RECLAIM: {
        pd_str_t user = m->s[PD_F_USER];
        if (!s_moving_out(self, project, user))
            return false;
        char id[37];
        here = !s_frozen(self, 'c', project, user) &&
               pd_table_claim_get(self->table, project, user, id) == 0;
        break;
    }
    case PD_MSG_EXPIRE:
        if (pd_msg_has(m, PD_F_SLOT))
            return false; /* by slot: s_on_expire checks the record it finds there */
        /* fall through */
    case PD_MSG_GET:
    case PD_MSG_UPSERT:
    case PD_MSG_UPDATE:
    case PD_MSG_DELETE:
    case PD_MSG_RELEASE: {
        pd_str_t id = m->s[PD_F_ID];
        if (!s_moving_out(self, project, id))
            return false;
        pd_record_t rec;
        here = !s_frozen(self, 'r', project, id) &&
               pd_table_get(self->table, project, id, &rec) == 0;
        break;
    }
    default:
        return false;
    }
    if (!here)
        s_reply_moved(self, m);
    return !here;
}

/*  A gateway's direct request: served only for a record this node owns and holds. Anything
 *  else is answered MOVED and the gateway asks the broker: a record moving here (the broker
 *  asks its old owner first, which holds it until it is dropped there), one that left, or a
 *  gateway whose route table is older than the store set. Until the broker has told this node
 *  the store set, every direct request is refused. */
static bool
s_direct_ok(store_t *self, const pd_msg_t *m)
{
    if (!self->sh_to)
        return false;
    pd_str_t project = m->s[PD_F_PROJECT], id = m->s[PD_F_ID];
    if (self->sh_from == self->sh_to) /* settled: one hash, as the gateway's */
        return pd_shard_owner(project, id, self->sh_to) == self->node;
    if (pd_shard_owner(project, id, self->sh_from) != self->node)
        return false;
    if (pd_shard_owner(project, id, self->sh_to) == self->node)
        return true;
    pd_record_t rec;
    return !s_frozen(self, 'r', project, id) && pd_table_get(self->table, project, id, &rec) == 0;
}

typedef struct {
    store_t *self;
    uint64_t rid;
    size_t n, limit;
} move_ctx_t;

static void
s_move_send_record(store_t *self, uint64_t rid, const pd_record_t *rec)
{
    pd_msgw_begin(self->reply, PD_MSG_MOVE_IN, rid);
    pd_record_write(self->reply, rec, PD_REC_WRITE | PD_REC_STAMPS);
    pd_msgw_end(self->reply);
}

static void
s_move_send_claim(store_t *self, uint64_t rid, pd_str_t project, pd_str_t user, pd_str_t id)
{
    pd_msgw_begin(self->reply, PD_MSG_MOVE_IN, rid);
    pd_msgw_s(self->reply, PD_F_PROJECT, project);
    pd_msgw_s(self->reply, PD_F_USER, user);
    pd_msgw_s(self->reply, PD_F_ID, id);
    pd_msgw_int(self->reply, PD_F_FLAGS, PD_FL_CLAIMED);
    pd_msgw_end(self->reply);
}

static int
s_move_visit(const pd_record_t *rec, void *arg)
{
    move_ctx_t *c = arg;
    store_t *self = c->self;
    if (pd_shard_owner(rec->project, rec->id, self->sh_to) == self->node)
        return 0;
    const char *k = s_move_key(self, 'r', rec->project, rec->id);
    if (zhash_lookup(self->frozen, k))
        return 0;
    zhash_insert(self->frozen, k, self);
    s_move_send_record(self, c->rid, rec);
    self->pass_found++;
    return ++c->n >= c->limit;
}

static int
s_move_visit_claim(pd_str_t project, pd_str_t user, pd_str_t id, void *arg)
{
    move_ctx_t *c = arg;
    store_t *self = c->self;
    if (pd_shard_owner(project, user, self->sh_to) == self->node)
        return 0;
    const char *k = s_move_key(self, 'c', project, user);
    if (zhash_lookup(self->frozen, k))
        return 0;
    zhash_insert(self->frozen, k, self);
    s_move_send_claim(self, c->rid, project, user, id);
    self->pass_found++;
    return ++c->n >= c->limit;
}

/*  MOVE_OUT: sends (as MOVE_IN messages, then a REPLY with TOTAL) what is frozen already (a
 *  batch whose drop never came: sent again, the new owner keeps the newer copy), then up to
 *  LIMIT more records and claims that belong elsewhere now, frozen from here on. The scan goes
 *  on where the last one stopped; a whole pass over the slots and claims that finds nothing
 *  to move (and nothing frozen) answers LAST: this node has given away all it must. */
static void s_on_shards(store_t *self, const pd_msg_t *m);

static void
s_on_move_out(store_t *self, const pd_msg_t *m)
{
    if (m->i[PD_F_FROM] != self->sh_from || m->i[PD_F_TOTAL] != self->sh_to)
        s_on_shards(self, m); /* the set the batch is for (SHARDS normally came first) */
    move_ctx_t c = {.self = self, .rid = m->rid, .limit = 256};
    if (m->i[PD_F_LIMIT] > 0 && m->i[PD_F_LIMIT] <= 5000)
        c.limit = (size_t)m->i[PD_F_LIMIT];
    for (void *v = zhash_first(self->frozen); v; v = zhash_next(self->frozen)) {
        const char *k = zhash_cursor(self->frozen);
        const char *sep = strchr(k + 1, '\x1f');
        if (!sep)
            continue;
        pd_str_t project = {k + 1, (size_t)(sep - k - 1)}, key = pd_str(sep + 1);
        char id[37];
        pd_record_t rec;
        if (k[0] == 'c' && pd_table_claim_get(self->table, project, key, id) == 0)
            s_move_send_claim(self, c.rid, project, key, pd_str(id));
        else if (k[0] == 'r' && pd_table_get(self->table, project, key, &rec) == 0)
            s_move_send_record(self, c.rid, &rec);
        c.n++;
    }
    bool last = false;
    if (self->sh_from && self->sh_from != self->sh_to) {
        if (!self->scan_claims && c.n < c.limit &&
            pd_table_scan(self->table, &self->scan_pos, MOVE_SCAN_SLOTS, s_move_visit, &c))
            self->scan_claims = true;
        if (self->scan_claims && c.n < c.limit &&
            pd_table_scan_claims(self->table, &self->claim_pos, MOVE_SCAN_SLOTS,
                                 s_move_visit_claim, &c)) {
            if (!self->pass_found && !zhash_size(self->frozen)) {
                last = true;
            } else { /* another pass: the last one must find nothing */
                self->scan_pos = self->claim_pos = 0;
                self->scan_claims = false;
                self->pass_found = 0;
            }
        }
    } else {
        last = !zhash_size(self->frozen);
    }
    pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(self->reply, PD_F_ERR, PD_ERR_OK);
    pd_msgw_int(self->reply, PD_F_TOTAL, (int64_t)c.n);
    pd_msgw_int(self->reply, PD_F_FLAGS, last ? PD_FL_LAST : 0);
    pd_msgw_end(self->reply);
}

//  MOVE_IN: a record (its version kept) or a claim from its old owner. No event.
static void
s_on_move_in(store_t *self, const pd_msg_t *m)
{
    pd_str_t project = m->s[PD_F_PROJECT];
    bool claim = (m->i[PD_F_FLAGS] & PD_FL_CLAIMED) != 0;
    int rc;
    if (claim) {
        char id[37];
        bool fresh;
        rc = pd_table_claim(self->table, project, m->s[PD_F_USER], m->s[PD_F_ID], id, &fresh);
    } else {
        pd_record_t rec, cur;
        pd_record_read(m, &rec);
        bool taken = false;
        rc = rec.version ? 0 : PD_ERR_ARGUMENT_INVALID;
        self->silent = true;
        if (rc == 0)
            rc = pd_table_import(self->table, &rec, &taken);
        self->silent = false;
        if (taken && pd_table_get(self->table, project, rec.id, &cur) == 0)
            s_deadline_moved(self, PD_ACT_UPSERT, &cur);
    }
    pd_msgw_begin(self->reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(self->reply, PD_F_ERR, rc);
    pd_msgw_s(self->reply, PD_F_PROJECT, project);
    pd_msgw_s(self->reply, PD_F_ID, m->s[PD_F_ID]);
    if (claim) {
        pd_msgw_s(self->reply, PD_F_USER, m->s[PD_F_USER]);
        pd_msgw_int(self->reply, PD_F_FLAGS, PD_FL_CLAIMED);
    }
    pd_msgw_end(self->reply);
}

//  MOVE_DROP: the new owner has these; forget them here, without an event.
static void
s_on_move_drop(store_t *self, const pd_msg_t *m)
{
    const msgpack_object *items = m->o[PD_F_ITEMS];
    if (!items || items->type != MSGPACK_OBJECT_ARRAY) {
        self->malformed++;
        return;
    }
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        if (it->type != MSGPACK_OBJECT_ARRAY || it->via.array.size != 3 ||
            it->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
            it->via.array.ptr[1].type != MSGPACK_OBJECT_STR ||
            it->via.array.ptr[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            self->malformed++;
            continue;
        }
        pd_str_t project = {it->via.array.ptr[0].via.str.ptr, it->via.array.ptr[0].via.str.size};
        pd_str_t key = {it->via.array.ptr[1].via.str.ptr, it->via.array.ptr[1].via.str.size};
        bool claim = it->via.array.ptr[2].via.u64 != 0;
        const char *k = s_move_key(self, claim ? 'c' : 'r', project, key);
        if (!zhash_lookup(self->frozen, k))
            continue; /* not sent from here (or dropped already) */
        zhash_delete(self->frozen, k);
        if (claim) {
            char id[37];
            if (pd_table_claim_get(self->table, project, key, id) == 0)
                pd_table_unclaim(self->table, project, key, pd_str(id));
            continue;
        }
        pd_record_t prev;
        self->silent = true;
        if (pd_table_delete(self->table, project, key, &prev) == 0)
            s_deadline_moved(self, PD_ACT_DELETE, &prev);
        self->silent = false;
    }
}

//  SHARDS: the store set, from the broker (at first contact, and at every change).
static void
s_on_shards(store_t *self, const pd_msg_t *m)
{
    int from = (int)m->i[PD_F_FROM], to = (int)m->i[PD_F_TOTAL];
    if (from < 1 || to < 1 || from > 1024 || to > 1024) {
        self->malformed++;
        return;
    }
    if (from != self->sh_from || to != self->sh_to) {
        self->sh_epoch++;
        self->scan_pos = self->claim_pos = 0;
        self->scan_claims = false;
        self->pass_found = 0;
        if (from == to) {
            if (zhash_size(self->frozen)) { /* the broker gave the move up: they stay here */
                zhash_destroy(&self->frozen);
                self->frozen = zhash_new();
            }
        }
        pd_log_info("store set: %d -> %d nodes%s", from, to, from == to ? " (settled)" : "");
    }
    self->sh_from = from;
    self->sh_to = to;
}

/* -------------------------------------------------------------------------- list */

typedef struct cand cand_t;

typedef struct {
    store_t *self;
    const pd_msg_t *m;
    pd_query_t *q;
    int64_t now;
    bool has_cursor, before;
    pd_qkey_t cursor;
    size_t n;          //  matches kept in self->cands
    int64_t total;
    bool count_only;   //  COUNT: total only, no page
    bool capped;       //  a status chain or a scan: metadata reads count against the cap
    size_t examined;   //  records whose metadata a filter read
    bool over;         //  examined passed the node's --list-scan-max: refused
    size_t want;       //  an ordered walk (s_list_walk): matches that complete the page
} list_ctx_t;

struct cand {
    pd_str_t json; //  a view into the segment (no write happens while a list is answered)
    pd_qkey_t key;
    uint32_t slot; //  the record's slot: a FETCH of the page reads it without a hash probe
};

/*  What the sort moves: a match's key summed up (pd_qsum_t, made while the record is at hand)
 *  and its place in cands. 32 bytes where a cand is over 400, and most comparisons end on the
 *  summaries, without reading the strings the keys point into. */
struct sent {
    pd_qsum_t sum;
    uint32_t i;
};

typedef struct {
    const pd_query_t *q;
    const cand_t *cands;
    int dir; //  -1 for cursorBefore: nearest the cursor first
} sort_ctx_t;

static int
s_sent_cmp(const void *a, const void *b, void *arg)
{
    const sort_ctx_t *s = arg;
    const struct sent *x = a, *y = b;
    int c = pd_query_sum_cmp(&x->sum, &y->sum);
    if (!c)
        c = pd_query_key_cmp(s->q, &s->cands[x->i].key, &s->cands[y->i].key);
    return s->dir * c;
}

static int
s_list_visit(const pd_record_t *rec, void *arg)
{
    list_ctx_t *c = arg;
    if (!pd_str_eq(rec->project, c->m->s[PD_F_PROJECT]) || rec->expires_ms <= c->now ||
        !s_can(c->m, rec->read_roles))
        return 0;
    pd_qrec_t qr;
    pd_qrec_init(&qr, rec);
    bool ok = pd_query_match(c->q, &qr);
    size_t max = c->self->cfg->list_scan_max;
    if (qr.meta_tried && c->capped && max && ++c->examined > max) {
        pd_qrec_clear(&qr);
        c->over = true;
        return 1;
    }
    if (ok)
        c->total++;
    if (ok && !c->count_only) {
        store_t *self = c->self;
        if (c->n == self->cap_cands) {
            self->cap_cands = self->cap_cands ? self->cap_cands * 2 : 1024;
            self->cands = realloc(self->cands, self->cap_cands * sizeof *self->cands);
            self->sorted = realloc(self->sorted, self->cap_cands * sizeof *self->sorted);
            if (!self->cands || !self->sorted)
                abort();
        }
        cand_t *k = &self->cands[c->n]; /* kept only if past the cursor */
        pd_query_key(c->q, &qr, &k->key);
        if (c->has_cursor) {
            int cmp = pd_query_key_cmp(c->q, &k->key, &c->cursor);
            ok = c->before ? cmp < 0 : cmp > 0;
        }
        if (ok) {
            k->json = rec->json;
            k->slot = rec->slot;
            pd_query_key_sum(c->q, &k->key, &self->sorted[c->n].sum);
            self->sorted[c->n].i = (uint32_t)c->n;
            c->n++;
        }
    }
    pd_qrec_clear(&qr);
    return 0;
}

/*  The record (project, id) read at a slot it was known to hold (no hash probe): -1 if the slot
 *  holds another record now, or none. A slot holds its record as long as the record lives. */
static int
s_get_at(store_t *self, pd_str_t project, pd_str_t id, uint32_t slot, pd_record_t *rec)
{
    if (pd_table_get_slot(self->table, slot, rec) < 0 || !pd_str_eq(rec->project, project) ||
        !pd_str_eq(rec->id, id))
        return -1;
    return 0;
}

//  A record an index names, read at its slot; looked up by key if the slot holds another.
static int
s_list_visit_id(pd_str_t id, uint32_t slot, void *arg)
{
    list_ctx_t *c = arg;
    pd_str_t project = c->m->s[PD_F_PROJECT];
    pd_record_t rec;
    if (s_get_at(c->self, project, id, slot, &rec) == 0 ||
        pd_table_get(c->self->table, project, id, &rec) == 0)
        return s_list_visit(&rec, c);
    return 0;
}

/*  A count that an index answers by its sets' sizes, without a visit: the index's filter is the
 *  only one, the caller sees every record (an API key), and none has expired unreaped. */
static bool
s_counted(const list_ctx_t *c)
{
    return c->count_only && pd_query_nfilters(c->q) == 1 &&
           (c->m->i[PD_F_FLAGS] & PD_FL_BYPASS) &&
           pd_table_next_expiry(c->self->table) > c->now;
}

static bool
s_walk_done(void *arg)
{
    const list_ctx_t *c = arg;
    return c->over || c->n >= c->want;
}

static bool
s_count_done(void *arg)
{
    const list_ctx_t *c = arg;
    return c->over || c->total >= PD_QUERY_TOTAL_CAP;
}

static int
s_count_visit_id(pd_str_t id, uint32_t slot, void *arg)
{
    return s_list_visit_id(id, slot, arg) || s_count_done(arg);
}

/*  A page in an order an index holds (pd_query_index_order: the project indexes the first sort
 *  key, "status" or a date; with no order, "$createdAt"): the node visits its records in that
 *  order, from the cursor's value when there is one, and stops once a whole set of equal values
 *  completes offset + limit matches past the cursor; those are sorted as any matches are (the
 *  ties of the last set need it). A page of 25 then costs about 25 visits, not a visit and a sort
 *  of every record. The total, when asked for, comes from the walk if it saw every record; else
 *  from the index's size (an API key, no filter, nothing expired unreaped), or from a second walk
 *  that counts matches only and stops at PD_QUERY_TOTAL_CAP (the broker caps the sum there). */
static bool
s_list_walk(store_t *self, list_ctx_t *c)
{
    const pd_msg_t *m = c->m;
    pd_str_t l = m->s[PD_F_INDEXES], v;
    bool desc = false;
    /* a total would be counted over the whole index: the status chain visits fewer */
    if ((m->i[PD_F_FLAGS] & PD_FL_TOTAL) && pd_query_equal_on(c->q, "status", &v))
        return false;
    pd_str_t a = pd_list_first(l);
    while (a.ptr && !pd_query_index_order(c->q, a, &desc))
        a = pd_list_next(l, a);
    st_idx_t *ix = a.ptr ? st_index_want(self->index, self->table, m->s[PD_F_PROJECT], a) : NULL;
    if (!ix)
        return false;
    pd_str_t from = PD_STR_NULL;
    if (c->has_cursor) {
        if (!pd_query_key_index_key(&c->cursor, &self->ikeys))
            return false;
        from = (pd_str_t){self->ikeys.data, self->ikeys.len};
    }
    c->want = (size_t)(pd_query_offset(c->q) + pd_query_limit(c->q));
    c->capped = true;
    bool stopped = st_idx_walk(ix, desc != c->before, from, s_list_visit_id, s_walk_done, c);
    if (c->over || !(m->i[PD_F_FLAGS] & PD_FL_TOTAL) || (!stopped && !from.ptr))
        return true;
    if (!pd_query_nfilters(c->q) && (m->i[PD_F_FLAGS] & PD_FL_BYPASS) &&
        pd_table_next_expiry(self->table) > c->now) {
        c->total = (int64_t)st_idx_size(ix);
        return true;
    }
    list_ctx_t t = {.self = self, .m = m, .q = c->q, .now = c->now, .count_only = true,
                    .capped = true, .examined = c->examined};
    st_idx_walk(ix, false, PD_STR_NULL, s_count_visit_id, s_count_done, &t);
    c->total = t.total;
    c->over = t.over;
    return true;
}

/*  A list that nothing narrows, walked over the project's records alone: the chain of each
 *  status the project holds (st_projects.h), which together hold each of its records once and
 *  other projects' records only where a hash bucket is shared. Not taken while the statuses are
 *  counted again after a restart, nor for a project holding half the node's records or more
 *  (then the walk of every slot, in order, costs less). Each chain must hold the records the
 *  project's statuses say: if one does not, the statuses are counted again and the caller walks
 *  every record (false, c reset). */
typedef struct {
    store_t *self;
    list_ctx_t *c;
    int64_t seen; //  records of the chain being walked
    bool off;     //  a chain held another number of records than its status's count
} by_status_t;

static int
s_status_visit(const pd_record_t *rec, void *arg)
{
    by_status_t *b = arg;
    b->seen++;
    return s_list_visit(rec, b->c);
}

static int
s_status_walk(pd_str_t status, int64_t n, void *arg)
{
    by_status_t *b = arg;
    b->seen = 0;
    pd_table_foreach_status(b->self->table, b->c->m->s[PD_F_PROJECT], status, s_status_visit, b);
    if (b->c->over)
        return 1;
    b->off = b->seen != n;
    return b->off;
}

static bool
s_list_by_status(store_t *self, list_ctx_t *c)
{
    pd_str_t project = c->m->s[PD_F_PROJECT];
    if (!st_projects_exact(self->projects, self->table) ||
        2 * (uint64_t)st_projects_count(self->projects, project) >= pd_table_count(self->table))
        return false;
    by_status_t b = {.self = self, .c = c};
    st_projects_each_status(self->projects, project, s_status_walk, &b);
    if (!b.off)
        return true;
    pd_log_warn("%s: project %.*s: a status chain does not hold the records counted; counting "
                "again", __func__, (int)project.len, project.ptr);
    st_projects_recount(self->projects);
    c->n = 0;
    c->total = 0;
    c->examined = 0;
    return false;
}

/*  Visits the records a list may match, from the narrowest source the queries allow: one
 *  record ($id, userId), the sets of an indexed attribute's equal() or range (st_index.h;
 *  counted without a visit when that filter is the only one, s_counted), an index of the page's
 *  order up to the page's end (s_list_walk), the status chain, the chains of the project's
 *  statuses (s_list_by_status), or every record. On a range and the last four, filters may read
 *  the metadata of at most --list-scan-max records of the project (c->over beyond): a guest must
 *  not make a node parse every record in a loop. */
static void
s_list_candidates(store_t *self, list_ctx_t *c)
{
    const pd_msg_t *m = c->m;
    pd_str_t project = m->s[PD_F_PROJECT], v;
    pd_record_t rec;
    if (pd_query_equal_on(c->q, "$id", &v)) {
        if (pd_table_get(self->table, project, v, &rec) == 0)
            s_list_visit(&rec, c);
        return;
    }
    if (pd_query_equal_on(c->q, "userId", &v)) {
        if (pd_table_get_by_user(self->table, project, v, &rec) == 0)
            s_list_visit(&rec, c);
        return;
    }
    pd_str_t l = m->s[PD_F_INDEXES];
    for (pd_str_t a = pd_list_first(l); a.ptr; a = pd_list_next(l, a)) {
        pd_buf_reset(&self->ikeys);
        int nk = pd_query_index_keys(c->q, a, &self->ikeys);
        st_idx_t *ix = nk < 0 ? NULL : st_index_want(self->index, self->table, project, a);
        if (!ix)
            continue;
        bool counted = s_counted(c);
        size_t off = 0;
        for (pd_str_t key; pd_query_index_key_next(&self->ikeys, &off, &key);)
            if (counted)
                c->total += (int64_t)st_idx_count(ix, key);
            else
                st_idx_each(ix, key, s_list_visit_id, c);
        return;
    }
    /* A range: its records, walked from its first value. Each is matched again, which reads its
     * metadata: a range as wide as the project counts against the cap as a scan would. */
    for (pd_str_t a = pd_list_first(l); a.ptr; a = pd_list_next(l, a)) {
        int f = pd_query_index_range(c->q, a, &self->ikeys);
        st_idx_t *ix = f < 0 ? NULL : st_index_want(self->index, self->table, project, a);
        if (!ix)
            continue;
        pd_str_t lo = {self->ikeys.data, self->ikeys.len};
        if (s_counted(c))
            c->total += (int64_t)st_idx_range(ix, c->q, f, lo, NULL, NULL);
        else {
            c->capped = true;
            st_idx_range(ix, c->q, f, lo, s_list_visit_id, c);
        }
        return;
    }
    if (!c->count_only && s_list_walk(self, c))
        return;
    c->capped = true;
    if (pd_query_equal_on(c->q, "status", &v))
        pd_table_foreach_status(self->table, project, v, s_list_visit, c);
    else if (!s_list_by_status(self, c))
        pd_table_foreach(self->table, s_list_visit, c);
}

/*  Answers one node's part of a list: filters this node's records, orders the matches and
 *  returns the first offset+limit (the broker merges the nodes' pages). The records it visits
 *  are chosen by s_list_candidates. */
static void
s_on_list(store_t *self, const pd_msg_t *m)
{
    char err[256];
    int code;
    pd_query_t *q = pd_query_parse_packed(m->s[PD_F_QUERIES], PD_QMODE_LIST | PD_QMODE_DEEP, &code,
                                          err, sizeof err); /* the gateway checked the offset */
    if (!q) {
        s_reply_err(self, m, code, err);
        return;
    }
    list_ctx_t c = {.self = self, .m = m, .q = q, .now = s_now(m)};
    pd_msgw_t *w = self->reply;
    if (m->i[PD_F_FLAGS] & PD_FL_CURSOR_PROBE) {
        bool before;
        pd_str_t cur = pd_query_cursor(q, &before);
        pd_record_t rec;
        if (s_moving_out(self, m->s[PD_F_PROJECT], cur) &&
            (s_frozen(self, 'r', m->s[PD_F_PROJECT], cur) ||
             pd_table_get(self->table, m->s[PD_F_PROJECT], cur, &rec) != 0)) {
            s_reply_moved(self, m); /* the broker asks the new owner */
            pd_query_destroy(&q);
            return;
        }
        if (pd_table_get(self->table, m->s[PD_F_PROJECT], cur, &rec) != 0 ||
            rec.expires_ms <= c.now || !s_can(m, rec.read_roles)) {
            snprintf(err, sizeof err, "Presence '%.*s' for the 'cursor' value not found.",
                     (int)cur.len, cur.ptr);
            s_reply_err(self, m, PD_ERR_CURSOR_NOT_FOUND, err);
            pd_query_destroy(&q);
            return;
        }
        pd_qrec_t qr;
        pd_qrec_init(&qr, &rec);
        pd_qkey_t key;
        pd_query_key(q, &qr, &key);
        pd_msgw_begin(w, PD_MSG_LIST_PAGE, m->rid);
        pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, 1);
        msgpack_pack_array(&w->pk, 2);
        msgpack_pack_str_with_body(&w->pk, rec.json.ptr, rec.json.len);
        pd_query_key_pack(&key, &w->pk);
        pd_msgw_end(w);
        pd_qrec_clear(&qr);
        pd_query_destroy(&q);
        return;
    }
    if (pd_msg_has(m, PD_F_CURSOR_KEYS)) { /* the cursor's item: [json, key] */
        pd_mpr_t ck = pd_mpr(m->s[PD_F_CURSOR_KEYS]);
        uint32_t n;
        if (!pd_mpr_array(&ck, &n) || n != 2 || !pd_mpr_skip(&ck) ||
            pd_query_key_read(&ck, &c.cursor) < 0) {
            s_reply_err(self, m, PD_ERR_SERVER_ERROR, NULL);
            pd_query_destroy(&q);
            return;
        }
        c.has_cursor = true;
        pd_query_cursor(q, &c.before);
    }
    c.count_only = (m->i[PD_F_FLAGS] & PD_FL_COUNT) != 0;
    s_list_candidates(self, &c);
    if (c.over) {
        snprintf(err, sizeof err,
                 "Invalid query: the filters read the metadata of more than %zu records on a "
                 "store node. Add an equal() on an attribute the project indexes, or on "
                 "$id, userId or status.",
                 self->cfg->list_scan_max);
        s_reply_err(self, m, PD_ERR_QUERY_INVALID, err);
        pd_query_destroy(&q);
        return;
    }
    if (c.count_only) {
        pd_msgw_begin(w, PD_MSG_LIST_PAGE, m->rid);
        pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
        pd_msgw_int(w, PD_F_TOTAL, c.total);
        pd_msgw_end(w);
        pd_query_destroy(&q);
        return;
    }
    size_t k = (size_t)(pd_query_offset(q) + pd_query_limit(q));
    sort_ctx_t sc = {q, self->cands, c.before ? -1 : 1};
    if (c.n)
        qsort_r(self->sorted, c.n, sizeof *self->sorted, s_sent_cmp, &sc);
    size_t n = c.n < k ? c.n : k;
    bool keys = (m->i[PD_F_FLAGS] & PD_FL_KEYS) != 0; /* the JSON is FETCHed for the page */
    bool slots = keys && (m->i[PD_F_FLAGS] & PD_FL_SLOTS); /* and by slot (a newer broker) */
    pd_msgw_begin(w, PD_MSG_LIST_PAGE, m->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_int(w, PD_F_TOTAL, (m->i[PD_F_FLAGS] & PD_FL_TOTAL) ? c.total : 0);
    pd_msgw_raw(w, PD_F_ITEMS);
    msgpack_pack_array(&w->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) { /* [json, key]; with keys only ["", key(, slot)] */
        const cand_t *k = &self->cands[self->sorted[i].i];
        msgpack_pack_array(&w->pk, slots ? 3 : 2);
        if (keys)
            msgpack_pack_str_with_body(&w->pk, "", 0);
        else
            msgpack_pack_str_with_body(&w->pk, k->json.ptr, k->json.len);
        pd_query_key_pack(&k->key, &w->pk);
        if (slots)
            msgpack_pack_uint32(&w->pk, k->slot);
    }
    pd_msgw_end(w);
    pd_query_destroy(&q);
}

//  A FETCH item's slot, or UINT32_MAX: an id alone, or not an item (no slot holds UINT32_MAX,
//  and pd_table_prefetch ignores it)
static uint32_t
s_fetch_slot(const msgpack_object *it)
{
    return it->type == MSGPACK_OBJECT_ARRAY && it->via.array.size == 2 &&
                   it->via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                   it->via.array.ptr[1].via.u64 < UINT32_MAX
               ? (uint32_t)it->via.array.ptr[1].via.u64
               : UINT32_MAX;
}
#define FETCH_AHEAD 6 //  items between a block's read-ahead and its read (twice that: the slot's)

/*  A FETCH item: an id, or [id, slot] (the slot the first round gave): the slot is read
 *  without a hash probe, and holds the record only while it holds that id in that project. */
static int
s_fetch_get(store_t *self, pd_str_t project, const msgpack_object *it, pd_record_t *rec)
{
    if (it->type == MSGPACK_OBJECT_STR)
        return pd_table_get(self->table, project, (pd_str_t){it->via.str.ptr, it->via.str.size},
                            rec);
    uint32_t slot = s_fetch_slot(it);
    if (slot == UINT32_MAX || it->via.array.ptr[0].type != MSGPACK_OBJECT_STR)
        return -1;
    const msgpack_object *id = &it->via.array.ptr[0];
    return s_get_at(self, project, (pd_str_t){id->via.str.ptr, id->via.str.size}, slot, rec);
}

/*  The second round of a large list (broker.c, s_list_fetch): the JSON of the records the
 *  merged page took from this node, in the order asked, each checked again as the list checked
 *  it (not expired at the list's clock, readable by the caller); nil for one that is not (it
 *  was deleted or changed meanwhile: the broker then lists again, JSON and all). */
static void
s_on_fetch(store_t *self, const pd_msg_t *m)
{
    const msgpack_object *ids = m->o[PD_F_ITEMS];
    uint32_t n = ids && ids->type == MSGPACK_OBJECT_ARRAY ? ids->via.array.size : 0;
    int64_t now = s_now(m);
    pd_msgw_t *w = self->reply;
    pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
    pd_msgw_int(w, PD_F_ERR, PD_ERR_OK);
    pd_msgw_int(w, PD_F_NODE, self->node); /* a gateway fetches from several at once */
    pd_msgw_raw(w, PD_F_ITEMS);
    msgpack_pack_array(&w->pk, n);
    for (uint32_t i = 0; i < n; i++) {
        /* the page's slots are scattered: each is read ahead, then its block */
        if (i + 2 * FETCH_AHEAD < n)
            pd_table_prefetch(self->table, s_fetch_slot(&ids->via.array.ptr[i + 2 * FETCH_AHEAD]),
                              0);
        if (i + FETCH_AHEAD < n)
            pd_table_prefetch(self->table, s_fetch_slot(&ids->via.array.ptr[i + FETCH_AHEAD]), 1);
        const msgpack_object *it = &ids->via.array.ptr[i];
        pd_record_t rec;
        if (s_fetch_get(self, m->s[PD_F_PROJECT], it, &rec) == 0 && rec.expires_ms > now &&
            s_can(m, rec.read_roles))
            msgpack_pack_str_with_body(&w->pk, rec.json.ptr, rec.json.len);
        else
            msgpack_pack_nil(&w->pk);
    }
    pd_msgw_end(w);
}

/* -------------------------------------------------------------------------- dump */

typedef struct {
    store_t *self;
    pd_str_t project;
    msgpack_packer pk;
    int64_t n, limit;
} dump_ctx_t;

static int
s_dump_visit(const pd_record_t *rec, void *arg)
{
    dump_ctx_t *d = arg;
    if (!pd_str_eq(rec->project, d->project))
        return 0;
    if (++d->n > d->limit)
        return 1;
    pd_record_pack_item(rec, &d->pk);
    return 0;
}

static int
s_dump_status(pd_str_t status, int64_t n, void *arg)
{
    (void)n;
    dump_ctx_t *d = arg;
    pd_table_foreach_status(d->self->table, d->project, status, s_dump_visit, d);
    return d->n > d->limit;
}

/*  DUMP (a gateway's roster replica, gw_replica.h): where this node's events stand (GEN, SEQ:
 *  every change up to SEQ is in what follows, none after it), and, unless FLAGS MARK, every
 *  record of PROJECT, at most LIMIT of them. Refused while records move between nodes (they
 *  come and go without events). EPOCH and FROM/TOTAL let the gateway see a move it missed. */
static void
s_on_dump(store_t *self, const pd_msg_t *m)
{
    pd_msgw_t *w = self->reply;
    bool mark = (m->i[PD_F_FLAGS] & PD_FL_MARK) != 0;
    dump_ctx_t d = {.self = self, .project = m->s[PD_F_PROJECT], .limit = m->i[PD_F_LIMIT]};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&d.pk, &sb, msgpack_sbuffer_write);
    int err = PD_ERR_OK;
    bool moving = !self->sh_to || self->sh_from != self->sh_to;
    if (moving)
        err = PD_ERR_UNAVAILABLE;
    else if (!mark && st_projects_exact(self->projects, self->table) &&
             2 * (uint64_t)st_projects_count(self->projects, d.project) <
                 pd_table_count(self->table))
        st_projects_each_status(self->projects, d.project, s_dump_status, &d);
    else if (!mark)
        pd_table_foreach(self->table, s_dump_visit, &d);
    if (d.n > d.limit)
        err = PD_ERR_UNAVAILABLE; /* more than the gateway keeps */
    pd_msgw_begin(w, mark ? PD_MSG_REPLY : PD_MSG_DUMP, m->rid); /* a mark: a list waits */
    pd_msgw_int(w, PD_F_ERR, err);
    if (moving)
        pd_msgw_int(w, PD_F_FLAGS, PD_FL_MOVED); /* asked again once the set has settled */
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_int(w, PD_F_SEQ, (int64_t)self->seq);
    pd_msgw_int(w, PD_F_EPOCH, (int64_t)self->sh_epoch);
    pd_msgw_int(w, PD_F_LIMIT, (int64_t)self->cfg->list_scan_max); /* a replica's meta lists */
    pd_msgw_int(w, PD_F_FROM, self->sh_from);
    pd_msgw_int(w, PD_F_TOTAL, self->sh_to);
    if (!mark && err == PD_ERR_OK) {
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, (uint32_t)d.n);
        msgpack_sbuffer_write(&w->sb, sb.data, sb.size);
    }
    pd_msgw_end(w);
    msgpack_sbuffer_destroy(&sb);
}

/* -------------------------------------------------------------------------- sync */

/*  SYNC (the reaper asks for every deadline of the node) is answered a slice at a time: at
 *  most SCAN_TURN_US per loop turn, in pages of SYNC_PAGE_ITEMS, so that a node
 *  holding a million records keeps serving while it answers (the reaper asks as soon as it sees
 *  a new generation, i.e. right after a restart). Requests queue (SYNC_QUEUE) and are answered
 *  in turn. A record changed while the scan runs is reported as it is when the scan reaches
 *  it, or not at all if the scan has passed it: its event is on the DEADLINE topic after the
 *  scan began, and every page says where that topic stood then (DSEQ), which is what the
 *  reaper needs to know it has missed nothing. */
static void
s_sync_flush(store_t *self, bool last)
{
    sync_ctx_t *c = &self->sync;
    pd_msgw_t *w = &self->out;
    pd_msgw_begin(w, PD_MSG_SYNC_PAGE, c->rid);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_int(w, PD_F_SEQ, c->seq);
    pd_msgw_int(w, PD_F_DSEQ, c->dseq);
    pd_msgw_int(w, PD_F_FLAGS, last ? PD_FL_LAST : 0);
    pd_msgw_raw(w, PD_F_ITEMS);
    msgpack_pack_array(&w->pk, (uint32_t)c->n);
    msgpack_sbuffer_write(&w->sb, c->sb.data, c->sb.size);
    pd_msgw_end(w);
    msgpack_sbuffer_clear(&c->sb);
    c->n = 0;
}

static int
s_sync_visit(const pd_record_t *rec, void *arg)
{
    store_t *self = arg;
    sync_ctx_t *c = &self->sync;
    msgpack_pack_array(&c->pk, 5);
    msgpack_pack_str_with_body(&c->pk, rec->project.ptr, rec->project.len);
    msgpack_pack_str_with_body(&c->pk, rec->id.ptr, rec->id.len);
    msgpack_pack_uint64(&c->pk, rec->version);
    msgpack_pack_int64(&c->pk, rec->expires_ms);
    msgpack_pack_uint32(&c->pk, rec->slot);
    if (++c->n == SYNC_PAGE_ITEMS)
        s_sync_flush(self, false);
    return 0;
}

static void
s_on_sync(store_t *self, const pd_msg_t *m)
{
    if (self->nsyncs == SYNC_QUEUE) { /* the reaper asks again after its timeout */
        s_reply_err(self, m, PD_ERR_UNAVAILABLE, "too many syncs queued");
        return;
    }
    self->syncs[self->nsyncs++] = m->rid;
}

//  One slice of the oldest queued SYNC; true while some remain.
static bool
s_sync_step(store_t *self)
{
    if (!self->nsyncs)
        return false;
    sync_ctx_t *c = &self->sync;
    if (!self->sync_started) {
        self->sync_started = true;
        self->sync_pos = 0;
        c->rid = self->syncs[0];
        c->seq = (int64_t)self->seq;
        c->dseq = (int64_t)self->dseq;
        c->n = 0;
        msgpack_sbuffer_clear(&c->sb);
    }
    int64_t until = pd_mono_us() + SCAN_TURN_US;
    while (!pd_table_scan(self->table, &self->sync_pos, SCAN_CHUNK, s_sync_visit, self))
        if (pd_mono_us() >= until)
            return true;
    s_sync_flush(self, true);
    self->sync_started = false;
    memmove(self->syncs, self->syncs + 1, --self->nsyncs * sizeof *self->syncs);
    return self->nsyncs > 0;
}

/* -------------------------------------------------------------------------- rooms */

/*  A join or leave (pd_room's hook): an event in the node's sequence, kept in the outbox like a
 *  record's (a gateway that missed it asks for it again, st_replay.h), made only when a gateway
 *  may want it (s_event's rule). It is committed at once: a process that dies between the
 *  room's change and its event leaves no trace of the event, and the gateways read the node's
 *  rooms again when its next generation says hello (gw_supabase.c). */
static void
s_room_event(int action, const pd_room_member_t *m, void *arg)
{
    store_t *self = arg;
    if (!self->events_wanted && self->bus_ready)
        return;
    pd_msgw_t *w = &self->events;
    s_topic(self, PD_BUS_EVENT);
    size_t start = w->sb.size;
    pd_msgw_begin(w, PD_MSG_ROOM_EVENT, ++self->seq);
    pd_msgw_int(w, PD_F_ACTION, action);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_SEQ, (int64_t)self->seq);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_s(w, PD_F_PROJECT, m->project);
    pd_msgw_s(w, PD_F_ID, m->channel);
    pd_msgw_s(w, PD_F_CONN, m->conn);
    pd_msgw_s(w, PD_F_PKEY, m->key);
    pd_msgw_s(w, PD_F_REF, m->ref);
    if (action == PD_ROOM_JOIN) /* a leave is named by its ref */
        pd_msgw_s(w, PD_F_META_JSON, m->meta);
    pd_msgw_end(w);
    if (pd_outbox_put(self->outbox, w->sb.data + start, w->sb.size - start, pd_now_ms()) < 0)
        pd_log_debug("%s: event of %zu bytes not kept in the outbox", __func__, w->sb.size - start);
    pd_outbox_commit(self->outbox);
}

//  Moves the snapshots and broadcasts st_rooms made into this turn's events, on the EVENT
//  topic (only gateways take them; dropped while none subscribes: nobody asked).
static void
s_room_events(store_t *self)
{
    pd_msgw_t *ev = st_rooms_events(self->rooms);
    if (ev->count && self->events_wanted) {
        s_topic(self, PD_BUS_EVENT);
        pd_msgw_append(&self->events, ev->sb.data, ev->sb.size, ev->count);
    }
    pd_msgw_reset(ev);
}

static void
s_on_room(store_t *self, const pd_msg_t *m)
{
    st_rooms_on_msg(self->rooms, m, self->reply, self->gen, self->seq);
    s_room_events(self);
}

/* -------------------------------------------------------------------------- capacity */

/*  The table's capacity (slots and claim entries, with their hash indexes) grows by half when
 *  records or claims reach 7/8 of it, up to --store-capacity-max. By half rather than double:
 *  the indexes are the part of the capacity that takes memory before records come (3/2 entries
 *  a record of capacity, pd_table.h), so a node just past a growth keeps 2.6 entries of each
 *  index a record, not 3.4. Between two loop turns, when no view into the table is held. It
 *  blocks this node while the indexes are set aside and cleared (pd_table_grow, in place), and
 *  their entries then move back GROW_STEP at a time, one slice per loop turn between requests
 *  (pd_table_grow_step); or, for a segment of an older layout, for a copy into a new segment,
 *  once. One that fails (no room in /dev/shm) is tried again 10 s later; meanwhile writes of new
 *  records past the capacity are refused (503), as before. True while a rehash is under way (the loop does not sleep). */
#define GROW_AT(cap) ((cap) - (cap) / 8)
#define GROW_RETRY_MS 10000
#define GROW_STEP 16384 //  entries of each index moved back per loop turn (about 2 ms)
static bool
s_capacity_step(store_t *self)
{
    if (self->regrow_ms) {
        if (!pd_table_grow_step(self->table, GROW_STEP))
            return true;
        pd_log_info("store node %d: indexes rehashed in %lld ms, between requests", self->node,
                    (long long)(pd_mono_ms() - self->regrow_ms));
        self->regrow_ms = 0;
    }
    size_t cap = pd_table_capacity(self->table), max = self->cfg->store_capacity_max;
    size_t used = pd_table_count(self->table);
    if (pd_table_claims(self->table) > used)
        used = pd_table_claims(self->table);
    if (used < GROW_AT(cap) || cap >= max || pd_mono_ms() < self->grow_after)
        return false;
    size_t want = cap + cap / 2 < max ? cap + cap / 2 : max;
    int64_t t0 = pd_mono_ms();
    if (pd_table_grow(self->table, want) < 0) {
        pd_log_warn("store node %d: capacity %zu is %zu used; it could not grow to %zu (see "
                    "above): trying again in %d s", self->node, cap, used, want,
                    GROW_RETRY_MS / 1000);
        self->grow_after = pd_mono_ms() + GROW_RETRY_MS;
        return false;
    }
    pd_log_info("store node %d: capacity grew from %zu to %zu records in %lld ms (the indexes' "
                "entries move back between requests)", self->node, cap, want,
                (long long)(pd_mono_ms() - t0));
    if (pd_table_grow_step(self->table, 0))
        return false; /* grown by a copy: nothing left to move */
    self->regrow_ms = pd_mono_ms();
    return true;
}

/* -------------------------------------------------------------------------- loop */

static void
s_dispatch(const pd_msg_t *m, void *arg)
{
    store_t *self = arg;
    if (self->reply == &self->out && s_refuse_moved(self, m))
        return;
    switch (m->type) {
    case PD_MSG_GET: s_on_get(self, m); break;
    case PD_MSG_UPSERT: s_on_upsert(self, m); break;
    case PD_MSG_UPDATE: s_on_update(self, m); break;
    case PD_MSG_DELETE: s_on_delete(self, m); break;
    case PD_MSG_EXPIRE: s_on_expire(self, m); break;
    case PD_MSG_LIST: s_on_list(self, m); break;
    case PD_MSG_FETCH: s_on_fetch(self, m); break;
    case PD_MSG_SYNC: s_on_sync(self, m); break;
    case PD_MSG_RELEASE: s_on_release(self, m); break;
    case PD_MSG_ROOM: s_on_room(self, m); break;
    case PD_MSG_CLAIM:
    case PD_MSG_RECLAIM: s_on_claim(self, m); break;
    case PD_MSG_UNCLAIM:
        pd_table_unclaim(self->table, m->s[PD_F_PROJECT], m->s[PD_F_USER], m->s[PD_F_ID]);
        break;
    case PD_MSG_SHARDS: s_on_shards(self, m); break;
    case PD_MSG_MOVE_OUT: s_on_move_out(self, m); break;
    case PD_MSG_MOVE_IN: s_on_move_in(self, m); break;
    case PD_MSG_MOVE_DROP: s_on_move_drop(self, m); break;
    default:
        self->malformed++;
    }
}

//  Sends this turn's replies, and the events if the bus window has passed (or force): while
//  events flow they leave at most once per PUB_WINDOW_US, in one frame, so the broker and its
//  I/O thread wake once per window rather than once per loop turn of this node; after a quiet
//  window an event leaves at once. Returns whether anything was sent.
static bool
s_flush(store_t *self, bool force)
{
    bool sent = false;
    if (self->out.count) {
        if (pd_zmq_send(zsock_resolve(self->dealer), NULL, 0, self->out.sb.data,
                        self->out.sb.size) < 0)
            pd_log_warn("%s: reply batch dropped", __func__);
        pd_msgw_reset(&self->out);
        pd_zpoll_sent(&self->poll, zsock_resolve(self->dealer));
        sent = true;
    }
    int64_t now = pd_mono_us();
    if (self->events.count && self->bus_ready &&
        (force || now >= self->pub_last + PUB_WINDOW_US || self->events.sb.size > (1 << 20))) {
        for (size_t i = 0; i < self->nruns; i++) {
            size_t end = i + 1 < self->nruns ? self->runs[i + 1] : self->events.sb.size;
            pd_zmq_send(zsock_resolve(self->pub), NULL, 0, self->events.sb.data + self->runs[i],
                        end - self->runs[i]);
        }
        s_events_reset(self);
        pd_zpoll_sent(&self->poll, zsock_resolve(self->pub));
        self->pub_last = now;
        sent = true;
    } else if (self->events.sb.size > self->hold_max) {
        pd_log_warn("%s: the bus is not connected; %u events dropped", __func__,
                    self->events.count);
        s_events_reset(self);
    }
    return sent;
}

/*  The broker's XSUB subscribes when it connects (and again when it restarts): from then on
 *  events reach the bus. A restarted node first publishes again what its predecessor may not
 *  have (subscribers drop what they already have by node, generation and sequence number).
 *  The XPUB is verbose: it shows every subscription the broker passes on. One that takes the
 *  EVENT topic (a gateway joining the bus) is answered at once with a HELLO on that topic: the
 *  gateway is live on the bus when it has one from every store node (gateway.c, "the bus"). */
static void
s_on_subscribe(pd_zmsg_t *zm, void *arg)
{
    store_t *self = arg;
    size_t n = pd_zmsg_size(zm, 0);
    const char *d = pd_zmsg_data(zm, 0);
    if (n < 1 || d[0] > 1)
        return;
    bool events = n == 1 || d[1] == PD_BUS_EVENT;
    /* The broker's XSUB counts subscriptions per topic: it passes an unsubscription on only
     * when the last subscriber of the topic has left, so the last word on it is the state. */
    if (events)
        self->events_wanted = d[0] == 1;
    if (d[0] != 1)
        return;
    bool first = !self->bus_ready;
    self->bus_ready = true;
    if (events) /* after what this turn holds */
        s_bus_hello(self, PD_BUS_EVENT);
    if (events || first) /* at once: the held events (a restart's replay first) and the HELLO */
        s_flush(self, true);
}

/*  A replayed event goes on the DEADLINE topic, which every subscriber takes (the reaper sorts
 *  out what it has seen, as gateways do). */
static void
s_replay_add(const void *data, size_t len, void *arg)
{
    store_t *self = arg;
    s_topic(self, PD_BUS_DEADLINE);
    pd_msgw_append(&self->events, data, len, 1);
}

static void
s_replay_size(const void *data, size_t len, void *arg)
{
    (void)data;
    *(size_t *)arg += len;
}

//  Whether the change an outbox event describes is in the table: a write if the record has
//  that version and creation time, a delete if that record is gone.
static bool
s_event_happened(const void *data, size_t len, void *arg)
{
    store_t *self = arg;
    pd_msg_t m;
    size_t off = 0;
    bool happened = false;
    if (pd_msg_decode(&m, data, len, &off, &self->zone) == 0 && m.type == PD_MSG_EVENT) {
        pd_record_t cur;
        bool there = pd_table_get(self->table, m.s[PD_F_PROJECT], m.s[PD_F_ID], &cur) == 0 &&
                     cur.version == (uint64_t)m.i[PD_F_VERSION] &&
                     cur.created_ms == m.i[PD_F_CREATED];
        happened = m.i[PD_F_ACTION] == PD_ACT_DELETE ? !there : there;
    }
    msgpack_zone_clear(&self->zone);
    return happened;
}

/*  After a restart: settle the event a dead predecessor left pending (kept if its change is in
 *  the table, dropped if not), then hold the events of its last REPLAY_MS, to be published
 *  again first when the bus is ready. A new table starts with an empty outbox. */
static void
s_outbox_open(store_t *self, bool created)
{
    char name[sizeof self->cfg->shm_name + 8];
    snprintf(name, sizeof name, "%s-outbox", self->cfg->shm_name);
    if (created)
        pd_outbox_unlink(name);
    size_t ring = self->cfg->store_outbox ? self->cfg->store_outbox : OUTBOX_BYTES;
    self->outbox = pd_outbox_open(name, ring);
    if (!self->outbox)
    {
        pd_log_warn("cannot use the shared-memory segment %s (see above)", name);
        exit(PD_EXIT_REFUSED);
    }
    int settled = pd_outbox_settle(self->outbox, s_event_happened, self);
    if (settled >= 0)
        pd_log_info("the previous process died during a change: its event is %s",
                    settled ? "published" : "dropped (the change did not happen)");
    int64_t last = pd_outbox_last_time(self->outbox);
    if (last == INT64_MIN)
        return;
    /* sized first (a walk of pages the check has just read), so that the copy fills one fresh
     * buffer, in huge pages where the host has them (pd_buf_reserve): grown by doubling, the
     * 8 MB replay of a busy node took 45-55 ms, of which 1-8 ms are left */
    int64_t since = last > INT64_MIN + REPLAY_MS ? last - REPLAY_MS : INT64_MIN;
    size_t bytes = 0;
    pd_outbox_each(self->outbox, since, s_replay_size, &bytes);
    pd_msgw_reserve(&self->events, bytes + bytes / FRAME_MAX + 1); /* and topic bytes */
    pd_outbox_each(self->outbox, since, s_replay_add, self);
    self->hold_max += self->events.sb.size;
    pd_log_info("holding the events of the last %d ms before the restart to publish again "
                "(%u events, %zu bytes in %zu frames)",
                REPLAY_MS, self->events.count, self->events.sb.size, self->nruns);
}

static void
s_on_batch(pd_zmsg_t *zm, void *arg)
{
    store_t *self = arg;
    if (pd_msg_each(pd_zmsg_data(zm, 0), pd_zmsg_size(zm, 0), &self->zone, s_dispatch, self) < 0) {
        self->malformed++;
        pd_log_warn("%s: malformed batch from the broker dropped", __func__);
    }
    if (self->out.sb.size > (1 << 20) || self->events.sb.size > (1 << 20))
        s_flush(self, false);
}

/*  [gateway id][batch] on the front: answered at once, in one frame to that gateway. */
static void
s_on_front_msg(const pd_msg_t *m, void *arg)
{
    store_t *self = arg;
    if (m->type == PD_MSG_REPLAY) { /* a gateway missed some of our events (st_replay.h) */
        st_replay_answer(self->outbox, m, self->reply);
        return;
    }
    if (m->type == PD_MSG_DUMP) { /* a gateway's roster replica (gw_replica.h) */
        s_on_dump(self, m);
        return;
    }
    if (m->type == PD_MSG_FETCH) { /* a gateway's fetch of a list's plan (broker.c) */
        if (self->sh_from != self->sh_to) /* records move: the gateway lists via the broker */
            s_reply_moved(self, m);
        else
            s_on_fetch(self, m);
        return;
    }
    int64_t fl = m->i[PD_F_FLAGS];
    bool ok = m->type == PD_MSG_GET ||
              (m->type == PD_MSG_UPSERT && (fl & PD_FL_CLAIMED) && !(fl & PD_FL_HOLD)) ||
              (m->type == PD_MSG_UPDATE && !(fl & PD_FL_HAS_USER));
    if (!ok) { /* needs the broker (claims): a gateway never sends it here */
        self->malformed++;
        s_reply_err(self, m, PD_ERR_SERVER_ERROR, "not a direct request");
        return;
    }
    if (!s_direct_ok(self, m)) {
        s_reply_moved(self, m);
        return;
    }
    s_dispatch(m, self);
}

static void
s_on_front_frame(pd_zmsg_t *zm, void *arg)
{
    store_t *self = arg;
    if (zm->n != 2 || pd_zmsg_size(zm, 0) == 0) {
        self->malformed++;
        return;
    }
    self->reply = &self->front_out;
    if (pd_msg_each(pd_zmsg_data(zm, 1), pd_zmsg_size(zm, 1), &self->zone, s_on_front_msg, self) < 0)
        self->malformed++;
    self->reply = &self->out;
    if (self->front_out.count)
        pd_zmq_send(zsock_resolve(self->front), pd_zmsg_data(zm, 0), pd_zmsg_size(zm, 0),
                    self->front_out.sb.data, self->front_out.sb.size);
    pd_msgw_reset(&self->front_out);
}

//  A project's entry in HELLO's COUNTS: "<project>\0<records>\0".
static void
s_hello_count(pd_str_t project, int64_t n, void *arg)
{
    pd_buf_add(arg, project.ptr, project.len);
    pd_buf_addf(arg, "%c%lld%c", 0, (long long)n, 0);
}

static void
s_hello(store_t *self)
{
    pd_msgw_t *w = &self->out;
    pd_msgw_begin(w, PD_MSG_HELLO, 0);
    pd_msgw_str(w, PD_F_ROLE, "store", 5);
    pd_msgw_int(w, PD_F_NODE, self->node);
    pd_msgw_int(w, PD_F_GEN, self->gen);
    pd_msgw_int(w, PD_F_TOTAL, (int64_t)pd_table_count(self->table));
    pd_msgw_int(w, PD_F_CLAIMS, (int64_t)pd_table_claims(self->table));
    pd_msgw_int(w, PD_F_CAPACITY, (int64_t)pd_table_capacity(self->table));
    pd_msgw_int(w, PD_F_SEQ, (int64_t)self->seq);
    if (self->front) {
        const char *ep = self->cfg->store_advertise[0] ? self->cfg->store_advertise
                                                       : self->cfg->store_front;
        pd_msgw_str(w, PD_F_ENDPOINT, ep, strlen(ep));
    }
    pd_buf_reset(&self->scratch);
    st_projects_each(self->projects, s_hello_count, &self->scratch);
    /* while they are counted again, the broker keeps the last ones */
    if (!st_projects_counting(self->projects))
        pd_msgw_str(w, PD_F_COUNTS, self->scratch.data ? self->scratch.data : "",
                    self->scratch.len);
    pd_msgw_end(w);
}

int
store_main(pd_config_t *cfg)
{
    zsys_handler_set(NULL);
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    if (cfg->node < 1)
        pd_fatalx("store needs --node <n> (1-based)");
    if (!cfg->broker_back[0] || !cfg->bus_in[0])
        pd_fatalx("store needs --broker-back and --bus-in");
    /* A large list's reply (a page of 5,000 records is about 1.8 MB) is copied into a ZeroMQ
     * message, and CURVE's encoder in the I/O thread allocates two more blocks of its size
     * (libzmq's curve_mechanism_base_t::encode). With glibc's defaults the I/O thread's heap is
     * trimmed after each and faulted in again page by page for the next reply: about 10 us a
     * fault on our VMs, a third of the node's CPU for such a page. The node keeps freed memory
     * for reuse instead, up to 32 MB beyond what is in use; its records are in the segment, not
     * in the heap, so this is all the heap it keeps. */
    mallopt(M_MMAP_THRESHOLD, 16 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    static store_t s;
    store_t *self = &s;
    self->cfg = cfg;
    self->node = cfg->node;
    self->gen = pd_now_ms();
    bool created;
    self->table = pd_table_open(cfg->shm_name,
                                (pd_table_size_t){cfg->store_capacity, cfg->store_arena,
                                                 cfg->store_arena_max ? cfg->store_arena_max
                                                                      : PD_TABLE_ARENA_MAX,
                                                 cfg->store_capacity_max},
                                &created);
    if (!self->table) {
        pd_log_warn("cannot use the shared-memory segment %s (see above)", cfg->shm_name);
        exit(PD_EXIT_REFUSED);
    }
    pd_log_info("%s %s: %zu records", created ? "created" : "re-attached", cfg->shm_name,
                pd_table_count(self->table));
    msgpack_zone_init(&self->zone, 8192);
    pd_msgw_init(&self->events); /* before the outbox: a restart's replay is held there */
    self->hold_max = HOLD_MAX;
    s_outbox_open(self, created);
    pd_table_set_hook(self->table, s_on_change, self);
    self->rooms = st_rooms_open(cfg, created, s_room_event, self);
    self->index = st_index_new();
    pd_buf_init(&self->ikeys);
    msgpack_sbuffer_init(&self->sync.sb);
    msgpack_packer_init(&self->sync.pk, &self->sync.sb, msgpack_sbuffer_write);
    self->projects = st_projects_new();
    if (pd_table_count(self->table)) /* a scan, a slice per loop turn (s_count_step) */
        st_projects_recount(self->projects);
    self->frozen = zhash_new();
    pd_msgw_init(&self->out);
    pd_msgw_init(&self->front_out);
    self->reply = &self->out;

    /* Every socket is CURVE (pd_keys.h): the broker knows this node by its key store-<n>, and
     * the front admits gateways only. */
    char kname[32], err[512];
    snprintf(kname, sizeof kname, "store-%d", self->node);
    if (!(self->keys = pd_keys_load(cfg->keys_dir, kname, err, sizeof err)))
        pd_fatalx("%s", err);
    self->dealer = zsock_new(ZMQ_DEALER);
    if (pd_keys_client(self->keys, zsock_resolve(self->dealer), "broker") < 0)
        pd_fatalx("no public key for the broker in %s", cfg->keys_dir);
    zsock_set_rcvtimeo(self->dealer, 0);
    zsock_set_sndtimeo(self->dealer, 0);
    zsock_set_sndhwm(self->dealer, 100000);
    zsock_set_rcvhwm(self->dealer, 100000);
    if (zsock_connect(self->dealer, "%s", cfg->broker_back) < 0)
        pd_fatalx("cannot connect to %s", cfg->broker_back);
    self->pub = zsock_new(ZMQ_XPUB);
    pd_keys_client(self->keys, zsock_resolve(self->pub), "broker");
    zsock_set_xpub_verbose(self->pub, 1);
    zsock_set_sndhwm(self->pub, 1000000);
    zsock_set_rcvtimeo(self->pub, 0);
    if (zsock_connect(self->pub, "%s", cfg->bus_in) < 0)
        pd_fatalx("cannot connect to %s", cfg->bus_in);
    if (cfg->store_front[0]) {
        const char *ep = cfg->store_advertise[0] ? cfg->store_advertise : cfg->store_front;
        if (strstr(ep, "://*") || strstr(ep, "://0.0.0.0"))
            pd_fatalx("--store-front %s binds every address: give --store-advertise, the "
                      "endpoint gateways reach this node at", cfg->store_front);
        if (!(self->zap = pd_zap_new(self->keys)))
            pd_fatalx("cannot start the ZAP handler");
        self->front = zsock_new(ZMQ_ROUTER);
        if (pd_zap_server(self->zap, zsock_resolve(self->front), "store-front") < 0)
            pd_fatal("CURVE on %s", cfg->store_front);
        zsock_set_rcvtimeo(self->front, 0);
        zsock_set_sndtimeo(self->front, 0);
        zsock_set_sndhwm(self->front, 100000);
        zsock_set_rcvhwm(self->front, 100000);
        if (zsock_bind(self->front, "%s", cfg->store_front) < 0)
            pd_fatalx("cannot bind %s", cfg->store_front);
    }
    if (pd_zpoll_init(&self->poll) < 0 || pd_zpoll_add(&self->poll, zsock_resolve(self->dealer)) ||
        pd_zpoll_add(&self->poll, zsock_resolve(self->pub)) ||
        (self->front && pd_zpoll_add(&self->poll, zsock_resolve(self->front))))
        pd_fatal("epoll");

    /* Each turn: take the broker's batches (up to a budget), apply them, send the replies and
     * events as one frame each. Sleep only after a turn that received and sent nothing (a send
     * may consume the dealer's wake-up signal: pd_zmq.h). */
    int64_t last_hello = 0;
    bool idle = true;
    while (!s_stop) {
        pd_probe_beat(cfg); /* liveness: `presenced probe --role store` */
        if (idle) {
            int64_t wait = 100 * 1000;
            if (self->events.count && self->bus_ready) /* held events leave when the window ends */
                wait = self->pub_last + PUB_WINDOW_US - pd_mono_us();
            pd_zpoll_wait(&self->poll, wait > 0 ? wait : 0);
        } else { /* busy (a SYNC answer, the count): still learn which sockets have input */
            pd_zpoll_wait(&self->poll, 0);
        }
        int got = pd_zpoll_drain(&self->poll, zsock_resolve(self->pub), 100, s_on_subscribe, self,
                                 NULL);
        got += pd_zpoll_drain(&self->poll, zsock_resolve(self->dealer), 1000, s_on_batch, self,
                              NULL);
        if (self->front) /* replies go out inside the drain, before its last receive */
            got += pd_zpoll_drain(&self->poll, zsock_resolve(self->front), 1000,
                                  s_on_front_frame, self, NULL);
        int64_t now = pd_mono_ms();
        if (now - last_hello >= 250) {
            s_hello(self);
            /* the same heartbeat on the bus: subscribers learn this node's generation and last
             * sequence number even when it has nothing to publish */
            if (self->bus_ready)
                s_bus_hello(self, PD_BUS_DEADLINE);
            last_hello = now;
            st_rooms_tick(self->rooms, pd_now_ms());
            s_room_events(self);
        }
        bool syncing = s_sync_step(self); /* a slice of a SYNC answer, if one is asked */
        syncing |= s_count_step(self);    /* a slice of the count after a restart */
        idle = !s_flush(self, false) && !got && !syncing;
        idle &= !s_capacity_step(self); /* between turns: no view into the table is held */
    }
    s_flush(self, true);
    pd_log_info("store node %d stopping", self->node);
    pd_zpoll_close(&self->poll);
    zsock_destroy(&self->dealer);
    zsock_destroy(&self->front);
    /* A clean stop: let the last events leave (up to a second), then mark the outbox so that
     * the next start does not publish them again. */
    zsock_set_linger(self->pub, 1000);
    zsock_destroy(&self->pub);
    pd_zap_destroy(&self->zap);
    pd_keys_destroy(&self->keys);
    if (self->bus_ready && !self->events.count)
        pd_outbox_mark(self->outbox);
    pd_outbox_close(&self->outbox);
    free(self->runs);
    pd_table_close(&self->table);
    st_rooms_close(&self->rooms);
    st_index_destroy(&self->index);
    st_projects_destroy(&self->projects);
    free(self->cands);
    free(self->sorted);
    msgpack_sbuffer_destroy(&self->sync.sb);
    pd_buf_free(&self->ikeys);
    zhash_destroy(&self->frozen);
    return 0;
}
