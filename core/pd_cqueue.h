/*  pd_cqueue — a connection's output queue that conflates: presence is state, not a log.
 *
 *  Bytes waiting to be written, as frames. A frame may carry the state of one record (a key the
 *  caller derives from project and record id). A newer frame for the same record supersedes the
 *  queued one: the old one is removed and the new one goes to the end, so the order between
 *  records is kept and a record's frames are never reordered. A delete that supersedes a
 *  creation the client has not been sent yet removes both: the client never saw the record, so
 *  it is told nothing. The queue is then bounded by the records a connection can see, not by
 *  traffic. Frames handed to the writer (pd_cqueue_take) are out of reach: they were sent.
 *
 *  Removed frames leave holes that are squeezed out when the bytes are taken, or when holes are
 *  more than half the queue. The index is open addressing on the key (a keyed hash: two records
 *  with the same 64-bit key would conflate, which nobody can arrange without the hash key).
 *  Nothing is allocated per frame: buffers grow by doubling and are kept. */
#ifndef PD_CQUEUE_H
#define PD_CQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    PD_CQ_CREATE = 1, //  the record's first state (the client did not know it before)
    PD_CQ_CHANGE,     //  a later state
    PD_CQ_DELETE,     //  the record is gone (for this client)
};

typedef struct {
    uint64_t key;
    uint32_t off, len; //  the frame's bytes in buf
    bool unseen;       //  the client has not been sent this record yet
    bool dead;         //  superseded: a hole
} pd_cqent_t;

typedef struct {
    char *buf;
    size_t len, cap;
    size_t holes;       //  bytes of superseded frames in buf
    pd_cqent_t *ents;   //  record frames, in queue order
    uint32_t nents, cap_ents, live;
    uint32_t *idx;      //  key -> entry index + 1 (0: empty), mask + 1 slots
    uint32_t mask;
    uint64_t conflated; //  frames superseded or dropped
} pd_cqueue_t;

void pd_cqueue_init(pd_cqueue_t *q);
void pd_cqueue_free(pd_cqueue_t *q);
//  Room for an n-byte frame no record owns (control frames, errors, replies); returns where to
//  write it.
char *pd_cqueue_push(pd_cqueue_t *q, size_t n);
//  Room for an n-byte frame with record key's state, superseding its queued frame (how is a
//  PD_CQ_*). Returns where to write it, or NULL when nothing is to be sent (a delete of a
//  record the client was never sent).
char *pd_cqueue_push_record(pd_cqueue_t *q, uint64_t key, int how, size_t n);
//  Bytes queued, holes excluded.
static inline size_t
pd_cqueue_bytes(const pd_cqueue_t *q)
{
    return q->len - q->holes;
}
//  Hands the queued bytes (holes squeezed out) to the caller, who frees them; the queue is
//  then empty. *len is 0 (and the result NULL) when nothing is queued.
char *pd_cqueue_take(pd_cqueue_t *q, size_t *len);

void pd_cqueue_test(bool verbose);

#endif
