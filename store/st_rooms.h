/*  st_rooms — a store node's rooms (pd_room.h) behind the ROOM message: track, untrack, lease
 *  renewal, snapshots and broadcasts. Joins and leaves go to the caller's hook, which makes
 *  them into sequenced ROOM_EVENTs (store.c, like a record's events: in the outbox, asked again
 *  by a gateway that missed them); snapshots and broadcasts are ROOM_EVENTs without a sequence
 *  number, made here for st_rooms_events. A snapshot names the node's generation and its last
 *  SEQ when it was made (SNAP_SEQ): every join and leave up to it is in it. The rooms live in
 *  their own shared-memory segment, <shm>-rooms, beside the node's table. */
#ifndef ST_ROOMS_H
#define ST_ROOMS_H

#include "pd_config.h"
#include "pd_msg.h"
#include "pd_room.h"

typedef struct st_rooms st_rooms_t;

//  Opens the node's rooms (fresh: start empty, as the table did); every join and leave is
//  reported to on_member (pd_room.h's hook). Exits like the table when the segment cannot be
//  used.
st_rooms_t *st_rooms_open(const pd_config_t *cfg, bool fresh, pd_room_hook_fn on_member,
                          void *arg);
void st_rooms_close(st_rooms_t **r);
//  One ROOM message: the reply goes to reply, snapshots and broadcasts to st_rooms_events
//  (a snapshot carries gen and seq, the node's generation and last sequence number).
void st_rooms_on_msg(st_rooms_t *r, const pd_msg_t *m, pd_msgw_t *reply, int64_t gen,
                     uint64_t seq);
//  Members whose lease passed leave (every tick of the node).
void st_rooms_tick(st_rooms_t *r, int64_t now_ms);
//  The snapshots and broadcasts made since the caller last reset this writer.
pd_msgw_t *st_rooms_events(st_rooms_t *r);
//  Members and rooms held, for the node's HELLO.
size_t st_rooms_members(const st_rooms_t *r);
size_t st_rooms_rooms(const st_rooms_t *r);

#endif
