/*  gw_supabase — Supabase Realtime's protocol at /realtime/v1/websocket, so that supabase-js
 *  and realtime-js connect unmodified: Phoenix channels (pd_phx) over the gateway's WebSocket
 *  layer (gw_ws), presence in rooms (a store node's presence set per (project, channel),
 *  pd_room.h) with presence_state then batched presence_diff, and broadcast within a room.
 *  State lives in the gateway's h2o context (one per gateway). */
#ifndef GW_SUPABASE_H
#define GW_SUPABASE_H

#include "gw.h"

void gw_sb_init(gw_t *gw);
int gw_sb_on_req(h2o_handler_t *self, h2o_req_t *req); //  the /realtime/v1/websocket path
int gw_sb_on_rooms_req(h2o_handler_t *self, h2o_req_t *req); //  GET /v1/rooms/{channel}
void gw_sb_on_bus(gw_t *gw, const pd_msg_t *ev);       //  a ROOM_EVENT (in sequence), or a HELLO
size_t gw_sb_resync_node(gw_t *gw, int node);          //  read node's rooms again; how many
bool gw_sb_idle(gw_t *gw);                             //  no connection: no need of the bus
void gw_sb_bus_live(gw_t *gw);                         //  the bus is live: read held messages
void gw_sb_tick(gw_t *gw);                             //  every tick (leases, tokens, sweeps)
void gw_sb_metrics(gw_t *gw, pd_buf_t *b);
void gw_sb_shutdown(gw_t *gw);

#endif
