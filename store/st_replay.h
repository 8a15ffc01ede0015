/*  st_replay — a store node answers a gateway that missed some of its events.
 *
 *  ZeroMQ's PUB drops what a subscriber cannot take (a partition, a full high-water mark, a
 *  broker restarting), so a gateway can see a skip in a node's event sequence (gw_realtime.c,
 *  "resync"). It then asks the node, on its direct CURVE link to the node's front, for the
 *  missing range: REPLAY with NODE, GEN, SEQ (the first missing) and TOTAL (how many). Every
 *  event is kept in the node's outbox (pd_outbox.h) until the ring wraps, so the answer is
 *  read from there:
 *
 *    the EVENT messages (and ROOM_EVENT joins and leaves, which share the sequence) of
 *    generation GEN with sequence numbers SEQ, SEQ+1, ... as they were published (their rid is
 *    their SEQ), then one REPLAY (rid: the request's) with NODE, GEN,
 *    SEQ = the last one sent (the first wanted - 1 when none), FLAGS 1 when the answer was cut
 *    at REPLAY_MAX_BYTES (ask again from SEQ + 1), and ERR UNAVAILABLE when the range is gone:
 *    its first event is no longer in the ring (overwritten, or an outbox of another process),
 *    or a hole follows what was sent. TOTAL 0 asks for the rest of generation GEN, whatever
 *    the ring holds of it (a gateway that sees a node's new generation: nothing there is not
 *    "gone", since a clean stop hides what it published before, pd_outbox_mark).
 *
 *  The ring is walked oldest first; an entry's sequence number is read from its rid without
 *  decoding it, and only the entries in the range are decoded (for their generation). */
#ifndef ST_REPLAY_H
#define ST_REPLAY_H

#include "pd_msg.h"
#include "pd_outbox.h"

#define REPLAY_MAX_BYTES (4u << 20) //  events in one answer, at most (a few more may follow)

//  Appends the answer to REPLAY request m, read from outbox, to reply.
void st_replay_answer(pd_outbox_t *outbox, const pd_msg_t *m, pd_msgw_t *reply);

#endif
