/*  reaper — see reaper.h.
 *
 *  State. One deadline per record, keyed by where the record lives: (store node, slot), the
 *  slot being the record's place in its node's table (pd_table.h), which the store names in
 *  every deadline it reports. Each node has a directory of fixed-size chunks of entries indexed
 *  by slot (slots are dense from 0, so this is an array, with no hash and no key stored), and
 *  an entry's (node, slot) also names it in the request id of an EXPIRE
 *  (slot | node << 32 | send count << 48), so a REPLY finds its entry directly and a late reply
 *  to an older send is recognised and ignored. Each entry embeds one pd_timer_t, scheduled in a
 *  1 ms timing wheel:
 *
 *    WAIT  timer at expiresAt, or at a retry after UNAVAILABLE / TIMEOUT (250 ms, doubling)
 *          or CONFLICT; firing sends EXPIRE {NODE, SLOT, VERSION, FLAGS: BYPASS} -> SENT.
 *    SENT  EXPIRE in flight; timer at +1 s (doubling while unanswered), firing sends it again
 *          with a fresh rid (the request or its reply was lost).
 *    DONE  the store answered OK; we wait for its delete EVENT, which removes the entry. The
 *          retry timer stays armed: if the event never comes, the retry is answered NOT_FOUND.
 *
 *  NOT_FOUND (the slot is free) ends the entry. CONFLICT means the slot's record is not the
 *  version we hold, or that the store's clock says it is not due yet; the reply carries the
 *  VERSION and EXPIRES of whatever record the slot holds now, and the entry follows them (the
 *  same record renewed, or another one that took the slot). Without them we try up to 6 times
 *  over about 8 s, then let go. The store deletes only if the version still matches and the
 *  record has expired, so the map is a cache of deadlines, not the truth: an entry held in
 *  error costs an EXPIRE answered NOT_FOUND or CONFLICT, never a second event, and a deadline
 *  held too early costs the same. That is the merge rule: of two reports for one slot whose
 *  order we cannot know (sync pages and live events travel different paths), the one with the
 *  earlier deadline is kept; the store's answer then corrects it.
 *
 *  Learning. The reaper subscribes to the bus's DEADLINE topic only (pd_msg.h): creates,
 *  deletes, changes that bring a deadline closer, and the deadlines that came or went with a
 *  moved record (DEADLINE: a record that moves between nodes changes slot; subscribers see no
 *  event for it). A renewal (a change that keeps or pushes back a deadline) is learned lazily:
 *  at the old deadline the EXPIRE is answered CONFLICT with the current VERSION and EXPIRES,
 *  and the entry follows them. So the reaper does not decode (nor does the broker send it) the
 *  events of the commonest write, a presence renewed. Each store node numbers its DEADLINE
 *  topic from 1 per boot (GEN, DSEQ); a new GEN or a skipped DSEQ means we may have missed
 *  deadlines, and we ask that node for a SYNC (at most once a second per node). At start we
 *  ask every node at once, 200 ms after connecting so that the SUB socket is subscribed before
 *  the stores take their snapshot (an event published between the snapshot and the
 *  subscription would otherwise be lost without a gap to show it).
 *
 *  Cost: 56 bytes per deadline (the entry; chunks are 4,096 entries and stay allocated once a
 *  node's slots have reached them), O(1) per event, page item and expiry. */
#include "reaper.h"

#include <czmq.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "pd_err.h"
#include "pd_keys.h"
#include "pd_log.h"
#include "pd_probe.h"
#include "pd_msg.h"
#include "pd_wheel.h"
#include "pd_zmq.h"

enum {
    REAPER_HELLO_MS = 250,         //  HELLO (and metrics) period; also the longest poll sleep
    REAPER_RETRY_MS = 1000,        //  EXPIRE not answered: send again (doubling, up to 8x)
    REAPER_BACKOFF_MS = 250,       //  store UNAVAILABLE / TIMEOUT: again (doubling, up to 8x)
    REAPER_CONFLICT_TRIES = 6,     //  EXPIREs answered CONFLICT before we let the entry go
    REAPER_EXPIRE_BUDGET = 5000,   //  EXPIREs sent per loop turn (one frame)
    REAPER_FRAME_BUDGET = 32,      //  frames read per socket per loop turn
    REAPER_WINDOW = 20000,         //  EXPIREs awaiting an answer before we hold back
    REAPER_SYNC_DELAY_MS = 200,    //  first SYNC after start
    REAPER_SYNC_TIMEOUT_MS = 5000, //  a sync with no page for this long is asked again
    REAPER_SYNC_GAP_MS = 1000,     //  at most one SYNC {NODE} per node per second
    REAPER_MAX_NODES = 1024,       //  store node ids 1..1023
    REAPER_SLOT_MAX = 1u << 30,    //  a store node's slots (pd_table's largest capacity)
    REAPER_BUS_HWM = 100000,       //  frames the SUB socket may queue before it drops
};

#define REAPER_CHUNK_BITS 12
#define REAPER_CHUNK (1u << REAPER_CHUNK_BITS)
#define REAPER_SYNC_RID (1ULL << 63) //  request ids of SYNCs; EXPIRE rids have this bit clear
#define REAPER_SENDS_MASK 0x7fffu     //  an EXPIRE rid's send count: bits 48..62

enum { E_FREE, E_WAIT, E_SENT, E_DONE };

typedef struct {
    pd_timer_t timer;              //  deadline or retry (first member: the wheel hands it back)
    int64_t version;               //  record version the deadline belongs to
    int64_t expires;               //  expiresAt, ms since epoch
    uint32_t slot;                 //  the record's slot in its node (with node: the key)
    uint16_t node;                 //  owning store node
    uint16_t sends;                //  EXPIREs sent, ever (kept across reuse: stale rids stay stale)
    uint8_t state;                 //  E_* (E_FREE: no deadline in this slot)
    uint8_t attempts;              //  EXPIREs sent for this version (saturates)
    uint8_t silent;                //  of which unanswered in a row (saturates)
} entry_t;
_Static_assert(sizeof(entry_t) <= 56, "a deadline's entry is 56 bytes");

typedef struct {
    bool known;                    //  seen on the bus or in a sync page
    bool have_gen;                 //  gen is known
    bool have_seq;                 //  seq holds a baseline
    bool synced;                   //  a sync completed since the last gap or restart
    bool want_sync;                //  a SYNC {NODE} is to be sent (rate limited)
    int64_t gen;                   //  store boot generation
    entry_t **dir;                 //  the node's entries by slot, in chunks of REAPER_CHUNK
    uint32_t ndir;                 //  chunk pointers in dir
    int64_t seq;                   //  last SEQ seen
    int64_t first_seq;             //  first SEQ seen on the bus in this generation (0 = none)
    uint64_t sync_rid;             //  the SYNC whose pages complete this node's sync (0 = none)
    int64_t sync_sent;             //  mono ms that SYNC was sent
    int64_t sync_seen;             //  mono ms of its last page
    size_t sync_items;             //  items received in the current sync
} node_t;

//  Lateness histogram bounds, seconds.
static const double s_late_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
#define REAPER_LATE_N (sizeof s_late_le / sizeof *s_late_le)

typedef struct {
    pd_config_t *cfg;              //  borrowed
    zsock_t *broker;               //  DEALER to the broker's front ROUTER
    zsock_t *bus;                  //  SUB on the event bus
    pd_keys_t *keys;               //  the cluster's key set: both sockets are CURVE clients
    pd_zpoll_t poll;               //  both sockets' ZMQ_FDs
    pd_wheel_t *wheel;             //  every entry's timer
    msgpack_zone zone;             //  RAW fields of the frame being decoded
    pd_msgw_t out;                 //  this turn's batch to the broker
    pd_buf_t text;                 //  metrics text (reused)
    int64_t boot_ms;               //  our GEN
    int64_t now;                   //  wall ms at the top of this turn
    int64_t mono;                  //  mono ms at the top of this turn
    bool busy;                     //  a budget ran out: poll without sleeping

    size_t count;                  //  live entries
    size_t chunks;                 //  chunks allocated, all nodes
    size_t inflight;               //  entries in E_SENT
    int64_t last_progress;         //  mono ms of the last reply, or when the window had room

    node_t nodes[REAPER_MAX_NODES];
    int max_node;                  //  highest node id seen
    bool all_pending;              //  SYNC (all nodes) to be sent at all_next
    int64_t all_next;
    uint64_t all_rid;              //  the last SYNC (all nodes)
    int64_t all_sent;
    bool all_paged;                //  a page answered all_rid
    uint64_t sync_seq;             //  for SYNC rids
    int64_t next_hello;            //  mono ms
    int64_t last_warn;             //  mono ms of the last rate-limited warning

    uint64_t expired;              //  EXPIREs answered OK
    uint64_t resyncs;              //  SYNCs sent
    uint64_t gaps;                 //  SEQ gaps seen
    uint64_t malformed;            //  frames, messages and items dropped
    uint64_t retries;              //  EXPIREs sent again
    uint64_t send_failures;        //  batches the DEALER refused
    uint64_t late[REAPER_LATE_N + 1]; //  lateness per bucket (last: above 1 s)
    double late_sum;               //  seconds
} reaper_t;

static volatile sig_atomic_t s_terminated;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_terminated = 1;
}

static void
s_oom(void)
{
    pd_fatalx("reaper: out of memory");
}

/*  ------------------------------------------------------------------------------------------
 *  Entries: per node, a directory of chunks indexed by slot. */

//  The entry of (node n, slot), live or not; NULL if its chunk does not exist and make is false.
static entry_t *
s_entry(reaper_t *self, node_t *n, uint32_t slot, bool make)
{
    uint32_t c = slot >> REAPER_CHUNK_BITS;
    if (c >= n->ndir) {
        if (!make)
            return NULL;
        uint32_t cap = n->ndir ? n->ndir : 16;
        while (cap <= c)
            cap *= 2;
        entry_t **d = realloc(n->dir, cap * sizeof *d);
        if (!d)
            s_oom();
        memset(d + n->ndir, 0, (cap - n->ndir) * sizeof *d);
        n->dir = d;
        n->ndir = cap;
    }
    if (!n->dir[c]) {
        if (!make)
            return NULL;
        if (!(n->dir[c] = calloc(REAPER_CHUNK, sizeof(entry_t))))
            s_oom();
        self->chunks++;
    }
    return &n->dir[c][slot & (REAPER_CHUNK - 1)];
}

//  The live entry of (node n, slot), or NULL.
static entry_t *
s_find(reaper_t *self, node_t *n, uint32_t slot)
{
    entry_t *e = s_entry(self, n, slot, false);
    return e && e->state != E_FREE ? e : NULL;
}

static void
s_remove(reaper_t *self, entry_t *e)
{
    pd_wheel_cancel(self->wheel, &e->timer);
    if (e->state == E_SENT)
        self->inflight--;
    e->state = E_FREE;
    self->count--;
}

//  (Re)schedules e for expiry at `expires` as version `version`.
static void
s_schedule(reaper_t *self, entry_t *e, int64_t version, int64_t expires)
{
    if (e->state == E_SENT)
        self->inflight--;
    e->state = E_WAIT;
    e->attempts = e->silent = 0;
    e->version = version;
    e->expires = expires;
    pd_wheel_add(self->wheel, &e->timer, expires);
}

/*  The record in (node, slot) at `version` expires at `expires` (a create or a change that
 *  brings a deadline closer, a moved record's deadline, or a sync item; expires <= 0: no
 *  deadline). Whether this report is newer than the entry's cannot always be known (sync pages
 *  and events interleave, and a slot is reused by other records), so the earlier deadline
 *  wins: the store's answer to that EXPIRE corrects an entry held too early (CONFLICT, with
 *  what the slot holds). An entry DONE (deleted at our request, its event not seen yet) gives
 *  way to any other version: a new record in the slot. */
static void
s_learn(reaper_t *self, int node, node_t *n, uint32_t slot, int64_t version, int64_t expires)
{
    entry_t *e = s_find(self, n, slot);
    if (expires <= 0) {
        if (e && version >= e->version)
            s_remove(self, e);
        return;
    }
    if (e) {
        bool take = e->state == E_DONE ? version != e->version
                                       : expires < e->expires ||
                                             (expires == e->expires && version > e->version);
        if (take)
            s_schedule(self, e, version, expires);
        return;
    }
    e = s_entry(self, n, slot, true);
    e->timer.next = e->timer.prev = NULL;
    e->node = (uint16_t)node;
    e->slot = slot;
    e->state = E_FREE;
    self->count++;
    s_schedule(self, e, version, expires);
}

/*  ------------------------------------------------------------------------------------------
 *  Output: one batch frame to the broker per turn. */

static void
s_warn_limited(reaper_t *self, const char *what, const char *detail)
{
    if (self->mono - self->last_warn < 1000 && self->last_warn)
        return;
    self->last_warn = self->mono;
    pd_log_warn("%s: %s (malformed so far: %llu)", what, detail,
                (unsigned long long)self->malformed);
}

static void
s_send_sync(reaper_t *self, int node)
{
    uint64_t rid = REAPER_SYNC_RID | ++self->sync_seq;
    pd_msgw_begin(&self->out, PD_MSG_SYNC, rid);
    if (node)
        pd_msgw_int(&self->out, PD_F_NODE, node);
    pd_msgw_end(&self->out);
    self->resyncs++;
    if (node) {
        node_t *n = &self->nodes[node];
        n->sync_rid = rid;
        n->sync_sent = self->mono;
        n->sync_seen = 0;
        n->sync_items = 0;
        n->want_sync = false;
        pd_log_info("sync requested from store node %d", node);
    } else {
        self->all_rid = rid;
        self->all_sent = self->mono;
        self->all_paged = false;
        self->all_pending = false;
        /* Every known node that is not in sync waits for this one. */
        for (int i = 1; i <= self->max_node; i++) {
            node_t *n = &self->nodes[i];
            if (n->known && !n->synced) {
                n->sync_rid = rid;
                n->sync_sent = self->mono;
                n->sync_seen = 0;
                n->sync_items = 0;
                n->want_sync = false;
            }
        }
        pd_log_info("sync requested from every store node");
    }
}

static void
s_observe_lateness(reaper_t *self, int64_t ms)
{
    double s = ms > 0 ? (double)ms / 1000.0 : 0;
    size_t i = 0;
    while (i < REAPER_LATE_N && s > s_late_le[i])
        i++;
    self->late[i]++;
    self->late_sum += s;
}

//  base after the first try, doubled per further try up to 8x, so that a store that is down
//  or slow is not answered with a storm of retries.
static int64_t
s_backoff(unsigned tries, int64_t base)
{
    unsigned k = tries > 1 ? tries - 1u : 0u;
    return base << (k < 3 ? k : 3);
}

//  Wheel callback: a deadline or a retry is due. Appends an EXPIRE to this turn's batch.
static void
s_on_due(pd_timer_t *t, void *arg)
{
    reaper_t *self = arg;
    entry_t *e = (entry_t *)t;
    if (e->attempts == 0)
        s_observe_lateness(self, self->now - e->expires);
    else
        self->retries++;
    if (e->attempts < UINT8_MAX)
        e->attempts++;
    if (e->silent < UINT8_MAX)
        e->silent++;
    if (e->state != E_SENT)
        self->inflight++;
    e->state = E_SENT;
    e->sends++;
    uint64_t rid = (uint64_t)(e->sends & REAPER_SENDS_MASK) << 48 | (uint64_t)e->node << 32 | e->slot;
    pd_msgw_begin(&self->out, PD_MSG_EXPIRE, rid);
    pd_msgw_int(&self->out, PD_F_NODE, e->node);
    pd_msgw_int(&self->out, PD_F_SLOT, e->slot);
    pd_msgw_int(&self->out, PD_F_VERSION, e->version);
    pd_msgw_int(&self->out, PD_F_FLAGS, PD_FL_BYPASS); //  the store checks no permissions
    pd_msgw_end(&self->out);
    pd_wheel_add(self->wheel, &e->timer, self->now + s_backoff(e->silent, REAPER_RETRY_MS));
}

static void
s_metrics(reaper_t *self)
{
    pd_buf_t *b = &self->text;
    pd_buf_reset(b);
    pd_buf_adds(b, "# HELP presenced_reaper_deadlines Record deadlines held by the reaper.\n"
                   "# TYPE presenced_reaper_deadlines gauge\n");
    pd_buf_addf(b, "presenced_reaper_deadlines %zu\n", self->count);
    pd_buf_adds(b, "# HELP presenced_reaper_inflight EXPIRE requests awaiting an answer.\n"
                   "# TYPE presenced_reaper_inflight gauge\n");
    pd_buf_addf(b, "presenced_reaper_inflight %zu\n", self->inflight);
    const struct {
        const char *name, *help;
        uint64_t v;
    } counters[] = {
        {"expired", "Records the stores deleted at the reaper's request.", self->expired},
        {"resyncs", "SYNC requests sent to store nodes.", self->resyncs},
        {"gaps", "Gaps seen in a store node's event sequence.", self->gaps},
        {"retries", "EXPIRE requests sent again.", self->retries},
        {"malformed", "Frames, messages or items dropped as malformed.", self->malformed},
        {"send_failures", "Batches the broker socket refused.", self->send_failures},
    };
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++) {
        const char *n = counters[i].name;
        pd_buf_addf(b, "# HELP presenced_reaper_%s_total %s\n", n, counters[i].help);
        pd_buf_addf(b, "# TYPE presenced_reaper_%s_total counter\n", n);
        pd_buf_addf(b, "presenced_reaper_%s_total %llu\n", n, (unsigned long long)counters[i].v);
    }
    pd_buf_adds(b, "# HELP presenced_reaper_lateness_seconds Delete request sent minus expiresAt.\n"
                   "# TYPE presenced_reaper_lateness_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < REAPER_LATE_N; i++) {
        cum += self->late[i];
        pd_buf_addf(b, "presenced_reaper_lateness_seconds_bucket{le=\"%g\"} %llu\n", s_late_le[i],
                    (unsigned long long)cum);
    }
    cum += self->late[REAPER_LATE_N];
    pd_buf_addf(b, "presenced_reaper_lateness_seconds_bucket{le=\"+Inf\"} %llu\n"
                   "presenced_reaper_lateness_seconds_sum %.3f\n"
                   "presenced_reaper_lateness_seconds_count %llu\n",
                (unsigned long long)cum, self->late_sum, (unsigned long long)cum);
}

static void
s_send_hello(reaper_t *self)
{
    s_metrics(self);
    pd_msgw_begin(&self->out, PD_MSG_HELLO, 0);
    pd_msgw_s(&self->out, PD_F_ROLE, PD_STR("reaper"));
    pd_msgw_int(&self->out, PD_F_GEN, self->boot_ms);
    pd_msgw_int(&self->out, PD_F_TOTAL, (int64_t)self->count);
    pd_msgw_str(&self->out, PD_F_BODY, self->text.data, self->text.len);
    pd_msgw_end(&self->out);
}

/*  ------------------------------------------------------------------------------------------
 *  Input. */

//  The node table slot for a NODE field, or NULL if out of range.
static node_t *
s_node(reaper_t *self, int64_t id)
{
    if (id < 1 || id >= REAPER_MAX_NODES)
        return NULL;
    node_t *n = &self->nodes[id];
    if (!n->known) {
        n->known = true;
        if (id > self->max_node)
            self->max_node = (int)id;
    }
    return n;
}

static void
s_want_sync(node_t *n)
{
    n->synced = false;
    n->want_sync = true;
    n->sync_rid = 0; //  pages of an older sync still teach us deadlines, but do not complete it
}

//  A store node reported generation gen: a new one means it restarted (its SEQ starts again at
//  1, and its versions may too). Returns false for a report from an older generation.
static bool
s_track_gen(node_t *n, int id, int64_t gen)
{
    if (!n->have_gen) {
        n->have_gen = true;
        n->gen = gen;
        return true;
    }
    if (gen == n->gen)
        return true;
    if (gen < n->gen)
        return false;
    pd_log_info("store node %d restarted (generation %lld -> %lld): resync", id,
                (long long)n->gen, (long long)gen);
    n->gen = gen;
    n->have_seq = false;
    n->first_seq = 0;
    s_want_sync(n);
    return true;
}

//  Sequence bookkeeping for one EVENT from node `id`. Returns false if the event is stale.
static bool
s_track_seq(reaper_t *self, node_t *n, int id, int64_t gen, int64_t seq)
{
    if (!s_track_gen(n, id, gen))
        return false;
    if (!n->have_seq) {
        n->have_seq = true;
        n->seq = seq;
        n->first_seq = seq;
        return true;
    }
    if (seq <= n->seq)
        return false; //  published again by a restarted node (pd_outbox.h): already seen
    if (seq != n->seq + 1) {
        self->gaps++;
        pd_log_warn("store node %d: event %lld after %lld (gap): resync", id, (long long)seq,
                    (long long)n->seq);
        s_want_sync(n);
    }
    n->seq = seq;
    return true;
}

//  The SLOT field of a bus message, checked.
static bool
s_slot_of(const pd_msg_t *m, uint32_t *slot)
{
    if (!pd_msg_has(m, PD_F_SLOT) || m->i[PD_F_SLOT] < 0 || m->i[PD_F_SLOT] >= REAPER_SLOT_MAX)
        return false;
    *slot = (uint32_t)m->i[PD_F_SLOT];
    return true;
}

/*  A record's event on the DEADLINE topic (it carries SLOT), or a deadline that came or went
 *  with a moved record (DEADLINE). Deletes remove the entry: bus events of one node arrive in
 *  the order they were made, so a record that takes the slot later is reported after this. */
static void
s_on_event(reaper_t *self, const pd_msg_t *m)
{
    const uint64_t need = 1ULL << PD_F_ACTION | 1ULL << PD_F_NODE | 1ULL << PD_F_GEN;
    if ((m->present & need) != need) {
        self->malformed++;
        s_warn_limited(self, "bus", "EVENT without a required field");
        return;
    }
    int64_t action = m->i[PD_F_ACTION];
    node_t *n = s_node(self, m->i[PD_F_NODE]);
    if (!n || action < PD_ACT_UPSERT || action > PD_ACT_DELETE) {
        self->malformed++;
        s_warn_limited(self, "bus", "EVENT with a bad NODE or ACTION");
        return;
    }
    int node = (int)m->i[PD_F_NODE];
    /* An event without DSEQ is of the EVENT topic, published again after a restart (a
     * restarted node publishes its last second on the DEADLINE topic): nothing to count. */
    if (pd_msg_has(m, PD_F_DSEQ) ? !s_track_seq(self, n, node, m->i[PD_F_GEN], m->i[PD_F_DSEQ])
                                 : !s_track_gen(n, node, m->i[PD_F_GEN]))
        return; //  from a generation the node has left behind
    uint32_t slot;
    if (!s_slot_of(m, &slot)) {
        if (!pd_msg_has(m, PD_F_DSEQ))
            return; //  an EVENT topic event: no deadline news
        self->malformed++;
        s_warn_limited(self, "bus", "deadline without a SLOT (a store older than this reaper?)");
        return;
    }
    if (action == PD_ACT_DELETE) {
        entry_t *e = s_find(self, n, slot);
        if (e) {
            if (e->state == E_SENT)
                self->expired++; //  deleted at our request; the reply, when it comes, is stale
            s_remove(self, e);
        }
        return;
    }
    if (!pd_msg_has(m, PD_F_VERSION)) {
        self->malformed++;
        s_warn_limited(self, "bus", "EVENT without VERSION");
        return;
    }
    if (!pd_msg_has(m, PD_F_EXPIRES)) {
        /* A change that did not touch expiresAt: keep the deadline, follow the version. */
        entry_t *e = s_find(self, n, slot);
        if (e && e->state != E_DONE && m->i[PD_F_VERSION] > e->version)
            s_schedule(self, e, m->i[PD_F_VERSION], e->expires);
        return;
    }
    s_learn(self, node, n, slot, m->i[PD_F_VERSION], m->i[PD_F_EXPIRES]);
}

static bool
s_obj_int(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        *out = (int64_t)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = o->via.i64;
    else
        return false;
    return true;
}

static void
s_on_sync_page(reaper_t *self, const pd_msg_t *m)
{
    node_t *n = pd_msg_has(m, PD_F_NODE) ? s_node(self, m->i[PD_F_NODE]) : NULL;
    const msgpack_object *items = m->o[PD_F_ITEMS];
    if (!n || (items && items->type != MSGPACK_OBJECT_ARRAY)) {
        self->malformed++;
        s_warn_limited(self, "broker", "SYNC_PAGE without NODE or with bad ITEMS");
        return;
    }
    int node = (int)m->i[PD_F_NODE];
    /* Pages may say which generation they come from, and where the node's event sequence
     * stood when the snapshot began (our baseline if we have none). */
    if (pd_msg_has(m, PD_F_GEN)) {
        uint64_t awaited = n->sync_rid;
        if (!s_track_gen(n, node, m->i[PD_F_GEN]))
            return; //  a page from before the node restarted
        if (awaited && m->rid == awaited && !n->sync_rid) {
            n->sync_rid = awaited; //  the restart is news to us, not to this sync: it stands
            n->want_sync = false;
        }
        if (pd_msg_has(m, PD_F_DSEQ) && !n->have_seq) {
            n->have_seq = true;
            n->seq = m->i[PD_F_DSEQ];
        }
        /* Events published after the snapshot but before our subscription took hold. */
        if (pd_msg_has(m, PD_F_DSEQ) && m->rid == n->sync_rid && n->sync_rid && n->first_seq &&
            m->i[PD_F_DSEQ] + 1 < n->first_seq) {
            self->gaps++;
            pd_log_warn("store node %d: events %lld..%lld missed before the sync: resync", node,
                        (long long)m->i[PD_F_DSEQ] + 1, (long long)n->first_seq - 1);
            s_want_sync(n);
        }
    }
    if (self->all_rid && m->rid == self->all_rid) {
        self->all_paged = true;
        if (!n->sync_rid && !n->synced) {
            n->sync_rid = m->rid;
            n->sync_sent = self->all_sent;
            n->sync_items = 0;
        }
    }
    size_t bad = 0, count = items ? items->via.array.size : 0;
    for (size_t i = 0; i < count; i++) {
        /* [project, id, version, expires, slot]: the key is for older reapers */
        const msgpack_object *it = &items->via.array.ptr[i];
        int64_t version, expires, slot;
        if (it->type != MSGPACK_OBJECT_ARRAY || it->via.array.size < 5 ||
            !s_obj_int(&it->via.array.ptr[2], &version) ||
            !s_obj_int(&it->via.array.ptr[3], &expires) ||
            !s_obj_int(&it->via.array.ptr[4], &slot) || slot < 0 || slot >= REAPER_SLOT_MAX) {
            bad++;
            continue;
        }
        s_learn(self, node, n, (uint32_t)slot, version, expires);
    }
    if (bad) {
        self->malformed += bad;
        s_warn_limited(self, "broker", "SYNC_PAGE with malformed items");
    }
    if (m->rid != n->sync_rid || !n->sync_rid)
        return; //  a page of a superseded sync: its items are still good
    n->sync_seen = self->mono;
    n->sync_items += count;
    if (m->i[PD_F_FLAGS] & PD_FL_LAST) {
        n->synced = true;
        n->sync_rid = 0;
        pd_log_info("store node %d synced: %zu deadlines, %zu held in all", node, n->sync_items,
                    self->count);
    }
}

static void
s_on_reply(reaper_t *self, const pd_msg_t *m)
{
    int64_t err = m->i[PD_F_ERR];
    if (m->rid & REAPER_SYNC_RID) {
        if (err == PD_ERR_OK)
            return;
        /* The broker could not reach a store (or any store). */
        node_t *n = pd_msg_has(m, PD_F_NODE) ? s_node(self, m->i[PD_F_NODE]) : NULL;
        for (int i = 1; !n && i <= self->max_node; i++)
            if (self->nodes[i].sync_rid == m->rid && m->rid != self->all_rid)
                n = &self->nodes[i];
        if (n) {
            if (n->sync_rid == m->rid || m->rid == self->all_rid) {
                s_want_sync(n);
                n->sync_sent = self->mono; //  retry in REAPER_SYNC_GAP_MS
            }
        } else if (m->rid == self->all_rid && !self->all_pending) {
            self->all_pending = true;
            self->all_next = self->mono + REAPER_SYNC_GAP_MS;
        }
        pd_log_info("sync refused (%s): retrying", pd_err_type((int)err));
        return;
    }
    uint32_t slot = (uint32_t)m->rid;
    int node = (int)((m->rid >> 32) & 0xffff);
    uint32_t sends = (uint32_t)(m->rid >> 48) & REAPER_SENDS_MASK;
    if (node < 1 || node >= REAPER_MAX_NODES || !self->nodes[node].known)
        return;
    entry_t *e = s_find(self, &self->nodes[node], slot);
    if (!e || e->state != E_SENT || (e->sends & REAPER_SENDS_MASK) != sends)
        return; //  a reply to an older send, or for a record since rescheduled or removed
    self->inflight--;
    self->last_progress = self->mono;
    e->silent = 0;
    switch (err) {
    case PD_ERR_OK:
        self->expired++;
        e->state = E_DONE; //  the retry timer stays: it catches a lost delete event
        break;
    case PD_ERR_PRESENCE_NOT_FOUND:
        e->state = E_DONE;
        s_remove(self, e);
        break;
    case PD_ERR_CONFLICT:
        /* The record changed under us, or the store's clock says it is not due yet. If the
         * reply tells how the record stands, follow it. If not, try a few more times, backing
         * off (up to about 8 s of clock skew): a new version arrives on the bus meanwhile and
         * reschedules us, making the pending reply stale. Then let go. */
        e->state = E_WAIT;
        if (pd_msg_has(m, PD_F_VERSION) && pd_msg_has(m, PD_F_EXPIRES) &&
            m->i[PD_F_EXPIRES] > 0 &&
            (m->i[PD_F_VERSION] != e->version || m->i[PD_F_EXPIRES] != e->expires))
            s_schedule(self, e, m->i[PD_F_VERSION], m->i[PD_F_EXPIRES]);
        else if (e->attempts < REAPER_CONFLICT_TRIES)
            pd_wheel_add(self->wheel, &e->timer,
                         self->now + s_backoff(e->attempts, REAPER_BACKOFF_MS));
        else
            s_remove(self, e);
        break;
    case PD_ERR_UNAVAILABLE:
    case PD_ERR_TIMEOUT:
        e->state = E_WAIT;
        pd_wheel_add(self->wheel, &e->timer,
                     self->now + s_backoff(e->attempts, REAPER_BACKOFF_MS));
        break;
    default:
        e->state = E_WAIT;
        pd_wheel_add(self->wheel, &e->timer, self->now + s_backoff(e->attempts, REAPER_RETRY_MS));
        s_warn_limited(self, "broker", pd_err_type((int)err));
        break;
    }
}

typedef void (*s_handler_fn)(reaper_t *self, const pd_msg_t *m);

//  Decodes a batch frame and hands each message to fn. A bad message ends the frame.
static void
s_dispatch(reaper_t *self, const char *buf, size_t len, const char *from, s_handler_fn fn)
{
    pd_msg_t m;
    size_t off = 0;
    int rc;
    while ((rc = pd_msg_decode(&m, buf, len, &off, &self->zone)) == 0)
        fn(self, &m);
    if (rc < 0) {
        self->malformed++;
        s_warn_limited(self, from, "undecodable frame");
    }
    msgpack_zone_clear(&self->zone);
}

/*  A store node's bus heartbeat (every 250 ms): its generation and last sequence number. A new
 *  generation means it restarted (resync it now, not at its next event), and a sequence ahead
 *  of the last event we saw means we missed events at the tail (resync too). */
static void
s_on_store_hello(reaper_t *self, const pd_msg_t *m)
{
    node_t *n = s_node(self, m->i[PD_F_NODE]);
    if (!n || !pd_msg_has(m, PD_F_GEN) || !pd_msg_has(m, PD_F_DSEQ))
        return;
    int id = (int)m->i[PD_F_NODE];
    if (!s_track_gen(n, id, m->i[PD_F_GEN]))
        return;
    if (n->have_seq && m->i[PD_F_DSEQ] > n->seq) {
        self->gaps++;
        pd_log_warn("store node %d: at event %lld, we saw %lld (gap): resync", id,
                    (long long)m->i[PD_F_DSEQ], (long long)n->seq);
        n->seq = m->i[PD_F_DSEQ];
        s_want_sync(n);
    }
}

static void
s_on_bus_msg(reaper_t *self, const pd_msg_t *m)
{
    if (m->type == PD_MSG_EVENT || m->type == PD_MSG_DEADLINE) {
        s_on_event(self, m);
        return;
    }
    if (m->type == PD_MSG_HELLO) { /* a store node's heartbeat, or the broker's answer to a
                                       * subscription (nothing to do) */
        if (pd_str_eqc(m->s[PD_F_ROLE], "store"))
            s_on_store_hello(self, m);
        return;
    }
    self->malformed++;
    s_warn_limited(self, "bus", "unexpected message type");
}

static void
s_on_broker_msg(reaper_t *self, const pd_msg_t *m)
{
    switch (m->type) {
    case PD_MSG_REPLY:
        s_on_reply(self, m);
        break;
    case PD_MSG_SYNC_PAGE:
        s_on_sync_page(self, m);
        break;
    default:
        self->malformed++;
        s_warn_limited(self, "broker", "unexpected message type");
        break;
    }
}

/*  ------------------------------------------------------------------------------------------
 *  The loop stages. */

static void
s_on_bus_frame(pd_zmsg_t *zm, void *arg)
{
    zmq_msg_t *f = &zm->part[zm->n - 1]; /* a topic byte (pd_msg.h), then the messages */
    if (zmq_msg_size(f) >= 1)
        s_dispatch(arg, (const char *)zmq_msg_data(f) + 1, zmq_msg_size(f) - 1, "bus",
                   s_on_bus_msg);
}

static void
s_on_broker_frame(pd_zmsg_t *zm, void *arg)
{
    zmq_msg_t *f = &zm->part[zm->n - 1];
    s_dispatch(arg, zmq_msg_data(f), zmq_msg_size(f), "broker", s_on_broker_msg);
}

//  Reads up to REAPER_FRAME_BUDGET frames of events; more waiting keeps the loop busy.
static void
reaper_recv_bus(reaper_t *self)
{
    if (pd_zpoll_drain(&self->poll, zsock_resolve(self->bus), REAPER_FRAME_BUDGET,
                       s_on_bus_frame, self, &self->malformed) == REAPER_FRAME_BUDGET)
        self->busy = true;
}

//  Reads up to REAPER_FRAME_BUDGET frames of replies and sync pages.
static void
reaper_recv_broker(reaper_t *self)
{
    if (pd_zpoll_drain(&self->poll, zsock_resolve(self->broker), REAPER_FRAME_BUDGET,
                       s_on_broker_frame, self, &self->malformed) == REAPER_FRAME_BUDGET)
        self->busy = true;
}

/*  Send EXPIRE for the deadlines that are due. This is the reaper's one expensive step, and
 *  like Redis' activeExpireCycle it is bounded so that a burst cannot starve the rest of the
 *  loop: at most REAPER_EXPIRE_BUDGET (5000) timers fire per turn, all into one batch frame
 *  (about 400 KB), which the broker splits by owning store. If more are due, the loop turns
 *  again at once, after reading the bus and the broker, so replies and delete events keep
 *  flowing while a million deadlines of the same second drain (200 turns; the stores, not the
 *  reaper, set the pace). To keep the stores' queues short, and to keep a slow store from being
 *  buried in retries of requests it simply has not reached yet, we stop firing while
 *  REAPER_WINDOW (20000) EXPIREs await an answer: at 20 ms round trips that still allows 1M
 *  per second. If no answer at all comes for a second (broker restarting, replies lost), one
 *  budget's worth fires per second, so that the retries, which are timers in the same wheel,
 *  probe for the way back; each entry's own retries back off from 1 s to 8 s. Firing order is
 *  deadline order, so under load the most overdue records go first. Lateness is recorded at
 *  the first send of each version. */
static void
reaper_expire_due(reaper_t *self)
{
    size_t max = REAPER_EXPIRE_BUDGET;
    if (self->inflight < REAPER_WINDOW) {
        self->last_progress = self->mono;
        if (REAPER_WINDOW - self->inflight < max)
            max = REAPER_WINDOW - self->inflight;
    } else if (self->mono - self->last_progress < REAPER_RETRY_MS) {
        return; //  full: wait for answers
    } else {
        self->last_progress = self->mono; //  stalled: one probe batch, then wait again
    }
    size_t n = pd_wheel_advance(self->wheel, self->now, max, s_on_due, self);
    if (n == max && pd_wheel_timeout(self->wheel, self->now, 1) == 0)
        self->busy = true;
}

//  HELLO every 250 ms; SYNC requests and their retries.
static void
reaper_housekeep(reaper_t *self)
{
    if (self->all_pending && self->mono >= self->all_next)
        s_send_sync(self, 0);
    if (self->all_rid && !self->all_paged &&
        self->mono - self->all_sent > REAPER_SYNC_TIMEOUT_MS) {
        pd_log_warn("no store answered the sync: asking again");
        s_send_sync(self, 0);
    }
    bool all_open = self->all_rid && self->mono - self->all_sent < REAPER_SYNC_TIMEOUT_MS;
    for (int i = 1; i <= self->max_node; i++) {
        node_t *n = &self->nodes[i];
        if (!n->known)
            continue;
        if (n->sync_rid) {
            int64_t last = n->sync_seen > n->sync_sent ? n->sync_seen : n->sync_sent;
            if (self->mono - last > REAPER_SYNC_TIMEOUT_MS) {
                pd_log_warn("store node %d: sync stalled: asking again", i);
                s_want_sync(n);
            }
        } else if (!n->synced && !n->want_sync && !(all_open || self->all_pending)) {
            s_want_sync(n); //  a node the start-up sync did not reach
        }
        if (n->want_sync && !self->all_pending && self->mono - n->sync_sent >= REAPER_SYNC_GAP_MS)
            s_send_sync(self, i);
    }
    if (self->mono >= self->next_hello) {
        s_send_hello(self);
        self->next_hello = self->mono + REAPER_HELLO_MS;
    }
}

//  Sends this turn's batch, if any. A refused batch (no broker, queue full) is dropped: its
//  EXPIREs are retried by their timers, its SYNCs by their timeouts, HELLO by the next one.
static void
reaper_flush(reaper_t *self)
{
    if (!self->out.count)
        return;
    /* a send may consume the socket's wake-up: read it once more before sleeping */
    pd_zpoll_sent(&self->poll, zsock_resolve(self->broker));
    self->busy = true;
    if (zmq_send(zsock_resolve(self->broker), self->out.sb.data, self->out.sb.size,
                 ZMQ_DONTWAIT) < 0) {
        self->send_failures++;
        if (self->mono - self->last_warn >= 1000) {
            self->last_warn = self->mono;
            pd_log_warn("broker socket refused a batch of %u messages: %s", self->out.count,
                        zmq_strerror(errno));
        }
    }
    pd_msgw_reset(&self->out);
}

//  How long the loop may sleep: until the next deadline or housekeeping, whichever is first.
static int
reaper_timeout(reaper_t *self)
{
    if (self->busy)
        return 0;
    int64_t cap = self->next_hello - self->mono;
    if (self->all_pending && self->all_next - self->mono < cap)
        cap = self->all_next - self->mono;
    if (cap < 0)
        cap = 0;
    if (self->inflight >= REAPER_WINDOW) {
        int64_t open = self->last_progress + REAPER_RETRY_MS - self->mono;
        return (int)(open < cap ? (open > 0 ? open : 0) : cap);
    }
    return (int)pd_wheel_timeout(self->wheel, pd_now_ms(), cap);
}

/*  ------------------------------------------------------------------------------------------
 *  Life cycle. */

static void
reaper_destroy(reaper_t **self_p)
{
    reaper_t *self = *self_p;
    if (!self)
        return;
    pd_zpoll_close(&self->poll);
    zsock_destroy(&self->broker);
    zsock_destroy(&self->bus);
    pd_keys_destroy(&self->keys);
    pd_wheel_destroy(&self->wheel);
    for (int i = 1; i < REAPER_MAX_NODES; i++) {
        for (uint32_t c = 0; c < self->nodes[i].ndir; c++)
            free(self->nodes[i].dir[c]);
        free(self->nodes[i].dir);
    }
    msgpack_zone_destroy(&self->zone);
    pd_msgw_destroy(&self->out);
    pd_buf_free(&self->text);
    free(self);
    *self_p = NULL;
}

static reaper_t *
reaper_new(pd_config_t *cfg)
{
    reaper_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->poll.epfd = -1;
    self->boot_ms = pd_now_ms();
    self->mono = pd_mono_ms();
    msgpack_zone_init(&self->zone, 8192);
    pd_msgw_init(&self->out);
    pd_buf_init(&self->text);
    self->wheel = pd_wheel_new(self->boot_ms, 1);
    self->broker = zsock_new(ZMQ_DEALER);
    self->bus = zsock_new(ZMQ_SUB);
    if (!self->wheel || !self->broker || !self->bus) {
        pd_log_warn("reaper: cannot create sockets");
        reaper_destroy(&self);
        return NULL;
    }
    char err[512];
    if (!(self->keys = pd_keys_load(cfg->keys_dir, "reaper", err, sizeof err)) ||
        pd_keys_client(self->keys, zsock_resolve(self->broker), "broker") < 0 ||
        pd_keys_client(self->keys, zsock_resolve(self->bus), "broker") < 0) {
        pd_log_warn("reaper: %s", self->keys ? "no public key for the broker" : err);
        reaper_destroy(&self);
        return NULL;
    }
    zsock_set_sndtimeo(self->broker, 0);
    zsock_set_rcvtimeo(self->broker, 0);
    zsock_set_rcvhwm(self->bus, REAPER_BUS_HWM);
    char deadline[2] = {PD_BUS_DEADLINE, 0};
    zsock_set_subscribe(self->bus, deadline);
    if (!cfg->broker_front[0] || !cfg->bus_out[0] ||
        zsock_attach(self->broker, cfg->broker_front, false) ||
        zsock_attach(self->bus, cfg->bus_out, false)) {
        pd_log_warn("reaper: cannot connect to broker '%s' or bus '%s'", cfg->broker_front,
                    cfg->bus_out);
        reaper_destroy(&self);
        return NULL;
    }
    if (pd_zpoll_init(&self->poll) < 0 || pd_zpoll_add(&self->poll, zsock_resolve(self->bus)) ||
        pd_zpoll_add(&self->poll, zsock_resolve(self->broker))) {
        reaper_destroy(&self);
        return NULL;
    }
    self->all_pending = true;
    self->all_next = self->mono + REAPER_SYNC_DELAY_MS;
    self->next_hello = self->mono;
    return self;
}

/*  The reaper's loop, top to bottom: sleep until a socket is readable, a deadline is due or
 *  housekeeping is due; read the bus (events: learn deadlines), read the broker (replies and
 *  sync pages); fire due deadlines into EXPIREs; HELLO and sync bookkeeping; send everything
 *  produced in this turn as one frame. Each stage has a budget; when one runs out the next
 *  turn does not sleep. */
int
reaper_main(pd_config_t *cfg)
{
    pd_log_init("reaper");
    pd_log_set_verbosity(cfg->verbosity);
    zsys_handler_set(NULL); //  before czmq creates its context: our own handler below
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal; //  no SA_RESTART: the poll returns at once
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    reaper_t *self = reaper_new(cfg);
    if (!self)
        return -1;
    pd_log_info("reaper up: broker %s, bus %s", cfg->broker_front, cfg->bus_out);
    while (!s_terminated) {
        pd_probe_beat(cfg); /* liveness: `presenced probe --role reaper` */
        self->mono = pd_mono_ms();
        pd_zpoll_wait(&self->poll, (int64_t)reaper_timeout(self) * 1000);
        if (s_terminated)
            break;
        self->busy = false;
        self->now = pd_now_ms();
        self->mono = pd_mono_ms();
        reaper_recv_bus(self);
        reaper_recv_broker(self);
        reaper_expire_due(self);
        reaper_housekeep(self);
        reaper_flush(self);
    }
    pd_log_info("reaper stopping: %zu deadlines held, %llu expired", self->count,
                (unsigned long long)self->expired);
    reaper_destroy(&self);
    return 0;
}
