/*  st_rooms — a store node's rooms (pd_room.h) behind the ROOM message: track, untrack, lease
 *  renewal, snapshots and broadcasts, each change made into a ROOM_EVENT for the bus's EVENT
 *  topic (store.c publishes them in order with the node's other events). The rooms live in
 *  their own shared-memory segment, <shm>-rooms, beside the node's table. */
#ifndef ST_ROOMS_H
#define ST_ROOMS_H

#include "pd_config.h"
#include "pd_msg.h"

typedef struct st_rooms st_rooms_t;

//  Opens the node's rooms (fresh: start empty, as the table did). Exits like the table when
//  the segment cannot be used.
st_rooms_t *st_rooms_open(const pd_config_t *cfg, bool fresh);
void st_rooms_close(st_rooms_t **r);
//  One ROOM message: the reply goes to reply, events to st_rooms_events.
void st_rooms_on_msg(st_rooms_t *r, const pd_msg_t *m, pd_msgw_t *reply);
//  Members whose lease passed leave (every tick of the node).
void st_rooms_tick(st_rooms_t *r, int64_t now_ms);
//  The ROOM_EVENTs made since the caller last reset this writer.
pd_msgw_t *st_rooms_events(st_rooms_t *r);
//  Members and rooms held, for the node's HELLO.
size_t st_rooms_members(const st_rooms_t *r);
size_t st_rooms_rooms(const st_rooms_t *r);

#endif
