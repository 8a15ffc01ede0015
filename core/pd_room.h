/*  pd_room — a store node's rooms: presence sets per (project, channel), as Supabase Realtime
 *  and Phoenix model presence. A member is one connection's meta in a room: the presence key
 *  it is tracked under (several connections may share a key: one key, several metas), its
 *  phx_ref (unique, made here), the connection that holds it, its meta (a JSON object's text)
 *  and a lease: the holding gateway renews it, and a member whose lease passed is removed by
 *  pd_room_expire (a gateway that died loses its members within the lease).
 *
 *  Members live in a POSIX shared-memory segment of fixed-size slots, so they survive a crash
 *  of the store process like records do. The segment holds only the slots (a slot is written
 *  while free and marked used last; it is freed by clearing that mark), and the indexes (rooms
 *  by (project, channel) with their member lists and counts, members by (room, connection))
 *  are process memory, rebuilt from the slots when a process attaches: a slot half-written by
 *  a process that died is either not used or whole. Slots beyond the highest ever used are
 *  never touched (the segment is sparse).
 *
 *  Every change is reported to a hook before the call returns (join after the slot is written,
 *  leave before it is freed): the store turns them into bus events. */
#ifndef PD_ROOM_H
#define PD_ROOM_H

#include "pd_util.h"

#define PD_ROOM_PROJECT_MAX 36
#define PD_ROOM_CHANNEL_MAX 255
#define PD_ROOM_CONN_MAX 63
#define PD_ROOM_KEY_MAX 255
#define PD_ROOM_REF_MAX 31
#define PD_ROOM_META_MAX 2048 //  bytes of a meta's JSON text (README, Supabase: limits)

//  pd_room_track's refusals.
enum { PD_ROOM_OK = 0, PD_ROOM_FULL = 1, PD_ROOM_NOSPACE = 2, PD_ROOM_TOOBIG = 3 };
//  ROOM_EVENT actions (ACTION), and the hook's.
enum { PD_ROOM_JOIN = 1, PD_ROOM_LEAVE = 2, PD_ROOM_BCAST = 3, PD_ROOM_SNAPSHOT = 4 };
//  ROOM actions (ACTION): what a gateway asks of the room's store node.
enum {
    PD_ROOM_TRACK = 1,    //  CONN's meta META_JSON under PKEY (LIMIT: members at most)
    PD_ROOM_UNTRACK = 2,  //  CONN's meta goes (untrack, leave, close)
    PD_ROOM_RENEW = 3,    //  the lease of the members of the connections in ITEMS (strings)
    PD_ROOM_SNAP = 4,     //  publish the room's members for gateway TARGET, in bus order
    PD_ROOM_SEND = 5,     //  publish a broadcast: EVENT_NAME, BODY, FLAGS, from CONN
    PD_ROOM_SHOW = 6,     //  reply BODY {"channel","count","members":[{key,phx_ref,conn,...}]}
    PD_ROOM_ROOMS = 7,    //  to every node: reply TOTAL (PROJECT's rooms here) and ITEMS
                          //  [[channel, count], ...], the PD_ROOM_LIST_MAX largest
    PD_ROOM_COUNT = 8,    //  reply TOTAL: the room's members (O(1))
};
//  ROOM_EVENT FLAGS of a broadcast.
enum { PD_ROOM_FL_BINARY = 1, PD_ROOM_FL_SELF = 2 };
#define PD_ROOM_LIST_MAX 1000  //  rooms a ROOMS answer names, at most (largest first)
#define PD_ROOM_LEASE_MS 30000 //  a member's lease; its gateway renews it every third of that

typedef struct pd_rooms pd_rooms_t;

//  A member as read from its slot: views into the segment, valid until the next change.
typedef struct {
    pd_str_t project, channel, conn, key, ref, meta;
    int64_t lease_ms;   //  wall-clock ms the member goes at unless renewed
} pd_room_member_t;

typedef void (*pd_room_hook_fn)(int action, const pd_room_member_t *m, void *arg);

//  Opens (or creates, *created) the segment name with capacity member slots. ref_prefix
//  starts every phx_ref made here (the node's, so refs are unique in the cluster; at most 8
//  bytes). Returns NULL (logged) when the segment cannot be used.
pd_rooms_t *pd_rooms_open(const char *name, uint32_t capacity, const char *ref_prefix,
                          bool *created);
void pd_rooms_close(pd_rooms_t **r);
int pd_rooms_unlink(const char *name);
void pd_rooms_set_hook(pd_rooms_t *r, pd_room_hook_fn fn, void *arg);

//  Tracks conn's meta in (project, channel) under key until lease_ms. A connection has one
//  meta per room: tracking again replaces it (a leave of the old meta, a join of the new one,
//  with a new ref, under the key it was first tracked with). A room holds at most max_members
//  (0: no limit). Returns PD_ROOM_OK or a refusal.
int pd_rooms_track(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn,
                   pd_str_t key, pd_str_t meta, int64_t lease_ms, uint32_t max_members);
//  Removes conn's meta from the room; returns 1, or 0 if it had none.
int pd_rooms_untrack(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn);
//  conn's member of the room (if it has one) gets lease_ms; returns 1, or 0. A gateway renews
//  the connections it holds by name, so a member whose untrack was lost on the way (its node
//  was down) is not kept alive by its gateway's other members: its lease runs out.
int pd_rooms_renew(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn,
                   int64_t lease_ms);
//  Removes every member whose lease is at or before now_ms (at most max); returns how many.
size_t pd_rooms_expire(pd_rooms_t *r, int64_t now_ms, size_t max);
//  Calls fn on every member of the room, oldest first.
typedef void (*pd_room_each_fn)(const pd_room_member_t *m, void *arg);
void pd_rooms_each(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_room_each_fn fn,
                   void *arg);
//  Members of one room (O(1)); members and rooms of the node.
uint32_t pd_rooms_count(pd_rooms_t *r, pd_str_t project, pd_str_t channel);
size_t pd_rooms_members(const pd_rooms_t *r);
size_t pd_rooms_rooms(const pd_rooms_t *r);
//  Every room with its member count.
typedef void (*pd_room_room_fn)(pd_str_t project, pd_str_t channel, uint32_t count, void *arg);
void pd_rooms_each_room(pd_rooms_t *r, pd_room_room_fn fn, void *arg);
//  A room in a ROOMS answer, and their order (qsort): largest first, then by channel.
typedef struct {
    pd_str_t channel;
    uint64_t count;
} pd_room_n_t;
int pd_room_n_cmp(const void *a, const void *b);

void pd_room_test(bool verbose);

#endif
