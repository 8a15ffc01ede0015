/*  gw_fanout — the fan-out of presence events to the subscribers of one gateway: the
 *  subscription index, event -> frames, and each frame into its connection's output queue
 *  (gw_ws). It knows subscriptions, roles and queries; the Appwrite realtime protocol above it
 *  (gw_realtime.c) decides who subscribes to what and which events are shown at all.
 *
 *  Index. A subscription registers under each of its presence channels times each role of its
 *  connection, keyed by (project, channel, role). An event looks up only its own channels
 *  (presences, presences.<ID>, presences.<action>, presences.<ID>.<action>) times the record's
 *  read roles before and after the change, so its cost is the number of registrations that can
 *  match it, not the number of connections.
 *
 *  Frames (appwrite-protocol.md §6.4). For each kind of frame a subscriber may get from an
 *  event (the event itself; a `delete` for one who lost read access; an `upsert` for one who
 *  gained it) the JSON is encoded once, as a prefix (type, events, channels, timestamp,
 *  payload) and a suffix, and each connection's frame is prefix + its matching subscription ids
 *  + suffix, written straight into the connection's queue (no per-delivery allocation). A frame
 *  carries its record's key, so the queue of a client that is behind conflates it (gw_ws.h).
 *  Realtime queries: for the event itself, a record that matched before the change and not
 *  after it still matches (leave-the-set, decisions.md §3). */
#ifndef GW_FANOUT_H
#define GW_FANOUT_H

#include "gw_ws.h"
#include "pd_map.h"
#include "pd_query.h"
#include "pd_record.h"

enum { GW_FO_NONE = 0, GW_FO_MAIN = 1, GW_FO_LOST = 2, GW_FO_GAINED = 3, GW_FO__KINDS };

typedef struct gw_fo_sub gw_fo_sub_t;

/*  A subscriber as the fan-out sees it, embedded in the protocol's connection. */
typedef struct {
    gw_ws_conn_t *ws;         //  where its frames go (events only while open)
    const char *project;      //  the project its subscriptions are indexed under (caller's)
    char *roles;              //  packed role list (gw_fo_guest_roles: not owned)
    uint32_t roles_len;
    gw_fo_sub_t *subs;
    uint32_t sub_bytes;       //  of all its subscriptions (gw_fo_sub_add's bytes)
    uint16_t nsubs, nchan;    //  subscriptions; presence channels over all of them
    uint32_t stamp;           //  event scratch
    int32_t ev_head;
    uint8_t kind;
} gw_fo_conn_t;

struct gw_fo_sub {
    gw_fo_sub_t *next;        //  the connection's subscriptions
    gw_fo_conn_t *conn;
    pd_query_t *query;        //  NULL: every record
    struct gw_fo_node *nodes; //  index registrations: nchan x roles of the connection
    uint32_t nnodes;
    uint32_t stamp;           //  the event that last evaluated this subscription
    uint16_t nchan;           //  presence channels (the indexed ones)
    uint16_t chan_len;        //  bytes of the packed channel list
    uint32_t bytes;           //  counted against the protocol's bound
    uint8_t idlen;
    char data[];              //  id NUL, then the packed presence channels
};

typedef struct gw_fo_pair {
    gw_fo_sub_t *sub;
    int32_t next;
} gw_fo_pair_t;

/*  The fan-out of one gateway. */
typedef struct {
    pd_map_t buckets;         //  (project, channel, role) -> registrations
    pd_buf_t key;             //  scratch: index keys
    unsigned char rec_key[PD_HASH_KEYBYTES]; //  keys records in the connections' queues
    uint32_t stamp;           //  event scratch
    gw_fo_pair_t *pairs;
    size_t npairs, cap_pairs;
    gw_fo_conn_t **mconns;
    size_t nm, cap_m;
    gw_ws_shared_t pre[GW_FO__KINDS]; //  an event's frame up to the subscription ids, per kind
    bool pre_ok[GW_FO__KINDS];
    size_t nsubs;
    uint64_t frames, frame_bytes; //  event frames queued, and their bytes
} gw_fo_t;

extern const char gw_fo_guest_roles[]; //  "any\0guests\0"
#define GW_FO_GUEST_ROLES_LEN 11

void gw_fo_init(gw_fo_t *fo);
void gw_fo_dispose(gw_fo_t *fo);
//  A new subscriber: no subscriptions, guest roles.
void gw_fo_conn_init(gw_fo_conn_t *fc, gw_ws_conn_t *ws, const char *project);
//  Gives the connection roles (copied, or gw_fo_guest_roles) and re-indexes its subscriptions.
void gw_fo_conn_roles(gw_fo_t *fo, gw_fo_conn_t *fc, const char *roles, size_t len);
//  Removes every subscription and frees the roles.
void gw_fo_conn_clear(gw_fo_t *fo, gw_fo_conn_t *fc);
//  The link to the subscription with this id, or NULL.
gw_fo_sub_t **gw_fo_sub_find(gw_fo_conn_t *fc, pd_str_t id);
void gw_fo_sub_remove(gw_fo_t *fo, gw_fo_conn_t *fc, gw_fo_sub_t **pp);
//  Adds a subscription: id (at most 255 bytes), its nchan presence channels (packed list),
//  its query (taken; NULL: every record), and what it counts against the protocol's bound.
//  One with the same id is replaced.
void gw_fo_sub_add(gw_fo_t *fo, gw_fo_conn_t *fc, pd_str_t id, pd_str_t chans, size_t nchan,
                   pd_query_t *query, size_t bytes);
//  Fans out one event (PD_ACT_*): rn is the record after the change (before it, for a delete),
//  rp the state before an upsert or update (NULL: none, a creation). rp->updated_ms must be set.
void gw_fo_event(gw_fo_t *fo, int action, const pd_record_t *rn, const pd_record_t *rp);

#endif
