/*  pd_msg — the internal protocol: encode and decode the messages listed in pd_msg.def.
 *
 *  Decoding is zero-copy: string fields are views into the received frame, so keep the frame
 *  alive while you use them. A malformed or unknown message makes pd_msg_decode return -1; the
 *  caller counts it and drops it. Nothing a peer sends can crash the receiver.
 *
 *  Encoding appends to a pd_msgw_t (a msgpack sbuffer that is reused, never freed per message);
 *  several messages appended back to back form one batch frame. */
#ifndef PD_MSG_H
#define PD_MSG_H

#include <msgpack.h>

#include "pd_util.h"

#define PD_PROTO_VERSION 1

typedef enum {
#define PD_MSG(name, id, dir) PD_MSG_##name = id,
#define PD_F(name, key, type, doc)
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
} pd_msg_type_t;

typedef enum {
#define PD_MSG(name, id, dir)
#define PD_F(name, key, type, doc) PD_F_##name = key,
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
    PD_F__COUNT
} pd_field_t;

//  FLAGS bits.
enum {
    PD_FL_BYPASS = 1 << 0,      //  API key: record permissions do not apply
    PD_FL_HAS_STATUS = 1 << 1,  //  UPDATE: these fields were sent
    PD_FL_HAS_META = 1 << 2,
    PD_FL_HAS_PERMS = 1 << 3,
    PD_FL_HAS_EXPIRES = 1 << 4,
    PD_FL_HAS_USER = 1 << 5,
    PD_FL_TOTAL = 1 << 6,       //  LIST: count matches
    PD_FL_FRESH = 1 << 7,       //  CLAIM reply: the claim was created by this request
    PD_FL_CURSOR_PROBE = 1 << 8, //  LIST to the cursor's owner: reply with the cursor's item
    PD_FL_CURSOR_BEFORE = 1 << 9, //  cursor is cursorBefore
    PD_FL_CLAIMED = 1 << 10,    //  UPSERT: ID came from the user's claim (may be stale)
    PD_FL_NO_EVENT = 1 << 11,   //  reserved
    PD_FL_LAST = 1 << 12,       //  SYNC_PAGE: the last page of this node
    PD_FL_HOLD = 1 << 13,       //  UPSERT from realtime: add CONN (a gateway) to the holders;
                                //  UPDATE (lease renewal): apply only if CONN still holds it
    PD_FL_PURGE = 1 << 14,      //  UPDATE: purge the project's list cache (pd_listcache.h)
    PD_FL_CACHE_HIT = 1 << 15,  //  LIST reply: answered from the list cache
    PD_FL_MOVED = 1 << 16,      //  REPLY: not this node's record (it moved, or moves): ask
                                //  the broker (pd_shards, broker.c "resharding")
    PD_FL_COUNT = 1 << 17,      //  LIST: the number of matches only (TOTAL, no items, no cap)
    PD_FL_KEYS = 1 << 18,       //  LIST: items with an empty JSON (their keys only): the broker
                                //  merges them, then FETCHes the page's records
    PD_FL_PLAN = 1 << 19,       //  LIST from a gateway: a two-round page is answered with its
                                //  plan (ITEMS [[node, id], ...]), and the gateway FETCHes the
                                //  JSON from the nodes itself; REPLY: this is that plan
    PD_FL_AGAIN = 1 << 20,      //  LIST: a plan's FETCH found a record gone: one round, JSON and all
    PD_FL_SLOTS = 1 << 21,      //  LIST with KEYS: each item also gives the record's slot (a
                                //  broker that asks merges items of 3; an older one, of 2 only)
    PD_FL_MARK = 1 << 22,       //  DUMP: no records, only where the node's events stand
};

//  EVENT actions.
enum { PD_ACT_UPSERT = 1, PD_ACT_UPDATE = 2, PD_ACT_DELETE = 3 };

/*  The bus's two topics: every bus frame starts with one of these bytes, then its messages.
 *  DEADLINE carries what the reaper needs: creates, deletes, changes that bring a deadline
 *  closer, and the store nodes' heartbeats, numbered by DSEQ per node. EVENT carries the rest
 *  (changes that keep or push back a deadline: renewals, most updates), which only WebSocket
 *  subscribers need; the reaper, subscribed to DEADLINE alone, learns such a change when the
 *  old deadline comes (the store answers its EXPIRE with the current version and deadline).
 *  Every event carries SEQ, which numbers both topics together. */
#define PD_BUS_DEADLINE 'D'
#define PD_BUS_EVENT 'E'
#define PD_BUS_BROKER_TOPIC "B" //  subscribed by the broker alone: never published

//  A decoded message. A field lives in the array of its type in pd_msg.def: m->s[f] for a STR
//  field, m->i[f] for an INT field, m->o[f] for a RAW field; there a field not present reads as
//  empty / 0 / NULL. A RAW field also has its msgpack bytes in m->s[f] (validated: read them in
//  place with pd_mpr_*), and m->o[f] is NULL when it was decoded without a zone. A field's
//  entries in the other arrays are not written (the decoder clears only the entries of each
//  field's own type), so never read them.
typedef struct {
    int type;                          //  PD_MSG_*
    uint64_t rid;                      //  request id, chosen by the sender of a request
    uint64_t present;                  //  bit (1 << field) per field present
    pd_str_t s[PD_F__COUNT];           //  STR fields (views into the frame)
    int64_t i[PD_F__COUNT];            //  INT fields
    const msgpack_object *o[PD_F__COUNT]; //  RAW fields (live until the zone is cleared)
                                          //  (their bytes: s[f])
    const char *raw;                   //  the message's own bytes in the frame
    size_t raw_len;
} pd_msg_t;

static inline bool
pd_msg_has(const pd_msg_t *m, int f)
{
    return (m->present >> f) & 1;
}

//  Decodes the message at buf[*off]; advances *off past it. zone holds the objects of RAW
//  fields (nothing else is allocated); clear it (msgpack_zone_clear) between batches. With zone
//  NULL, RAW fields are validated but not unpacked (m->o[f] NULL, their bytes in m->s[f]): for a
//  reader that takes them in place (pd_mpr_*). Returns 0, 1 at the end of the buffer, or -1 if
//  the bytes are not a valid message (the rest of the frame is then unusable; *off is left where
//  the bad message starts).
int pd_msg_decode(pd_msg_t *m, const char *buf, size_t len, size_t *off, msgpack_zone *zone);

//  Calls fn on every message of a batch frame, in order, then clears zone (which may be NULL,
//  as for pd_msg_decode). Returns the number of messages, or -1 if the frame is malformed (the
//  messages before the bad one were handled; the caller counts the frame and drops the rest).
typedef void (*pd_msg_fn)(const pd_msg_t *m, void *arg);
int pd_msg_each(const void *buf, size_t len, msgpack_zone *zone, pd_msg_fn fn, void *arg);

/*  Reading msgpack in place: the bytes of a RAW field (m->s[f]) without unpacking them into
 *  objects (a store's page of 5,000 keys is read once, as it is merged). Each call reads the
 *  value at r->p and moves r past it; it returns false and leaves r as it was when that value
 *  is not of the type asked for, or runs past r->end. A RAW field's bytes were validated when
 *  its message was decoded, so pd_mpr_skip always gets past a value of them. */
typedef struct {
    const unsigned char *p, *end;
} pd_mpr_t;

static inline pd_mpr_t
pd_mpr(pd_str_t bytes)
{
    const unsigned char *p = (const unsigned char *)bytes.ptr;
    return (pd_mpr_t){p, p + bytes.len};
}

enum { PD_MPR_END, PD_MPR_NIL, PD_MPR_INT, PD_MPR_FLOAT, PD_MPR_STR, PD_MPR_ARRAY, PD_MPR_OTHER };
//  The type of the value at r->p (PD_MPR_STR for a str or a bin), or PD_MPR_END.
int pd_mpr_type(const pd_mpr_t *r);
bool pd_mpr_array(pd_mpr_t *r, uint32_t *n); //  an array's header: its n elements follow
bool pd_mpr_str(pd_mpr_t *r, pd_str_t *s);   //  a str or bin: a view of its bytes
bool pd_mpr_int(pd_mpr_t *r, int64_t *v);    //  an integer that fits an int64
bool pd_mpr_float(pd_mpr_t *r, double *d);   //  a float 32 or 64
bool pd_mpr_nil(pd_mpr_t *r);
bool pd_mpr_skip(pd_mpr_t *r);               //  any one value, containers whole

//  Name of a message type for logs ("UPSERT"), or "?".
const char *pd_msg_name(int type);

//  Writer: a reusable buffer that batches messages.
typedef struct {
    msgpack_sbuffer sb;   //  the batch: sb.data / sb.size
    msgpack_packer pk;    //  packer onto sb
    size_t map_pos;       //  offset of the open message's map32 header
    uint32_t nfields;     //  fields written into the open message
    uint32_t count;       //  messages in the batch
} pd_msgw_t;

void pd_msgw_init(pd_msgw_t *w);
void pd_msgw_destroy(pd_msgw_t *w);
//  Empties the batch, keeping the allocation.
void pd_msgw_reset(pd_msgw_t *w);
void pd_msgw_begin(pd_msgw_t *w, int type, uint64_t rid);
void pd_msgw_str(pd_msgw_t *w, int field, const char *p, size_t n);
static inline void
pd_msgw_s(pd_msgw_t *w, int field, pd_str_t s)
{
    pd_msgw_str(w, field, s.ptr ? s.ptr : "", s.len);
}
void pd_msgw_int(pd_msgw_t *w, int field, int64_t v);
//  Starts a RAW field: the caller then packs exactly one object with w->pk.
void pd_msgw_raw(pd_msgw_t *w, int field);
void pd_msgw_end(pd_msgw_t *w);
//  Starts a copy of m with a new rid: every present field except those whose bit is set in
//  skip (1 << field). The message stays open: add overrides, then pd_msgw_end.
void pd_msgw_copy(pd_msgw_t *w, const pd_msg_t *m, uint64_t rid, uint64_t skip);
//  Appends an already encoded message (m->raw) with its rid replaced: the broker's forward.
void pd_msgw_forward(pd_msgw_t *w, const pd_msg_t *m, uint64_t rid);
//  Makes room for n more bytes (pd_grow).
void pd_msgw_reserve(pd_msgw_t *w, size_t n);
//  Appends n bytes as they are: count whole encoded messages (a copy of another batch's), or
//  bytes of a frame's own (count 0, e.g. a bus topic).
void pd_msgw_append(pd_msgw_t *w, const void *p, size_t n, uint32_t count);

void pd_msg_test(bool verbose);

#endif
