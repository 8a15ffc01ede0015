/*  pd_outbox — a store node's recent events, in shared memory beside its table.
 *
 *  A store node changes its table, then publishes the event. Killed in between (or while the
 *  event still sits in ZeroMQ's queue), it would come back with the change and without the
 *  event: subscribers would never hear of it. So every event is written here first, marked
 *  pending, before the table change becomes visible, and unmarked right after. On restart:
 *
 *  - a pending entry means the process died around that one change. The store checks its
 *    table: if the change is there, the entry stays; if not, it is dropped. At most one entry
 *    can be pending, because a store applies one change at a time.
 *  - the entries of the last second or so are published again. Subscribers drop the ones they
 *    already have by (node, generation, sequence number).
 *
 *  The outbox is a byte ring of entries [len, time, bytes]; the oldest entries are overwritten.
 *  Like the table, it holds offsets only and lives in a named POSIX shared-memory segment that
 *  outlives the process. One writer (the store node), no readers while it runs. */
#ifndef PD_OUTBOX_H
#define PD_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pd_outbox pd_outbox_t;

//  Opens the segment `name`, creating it with `bytes` of ring if absent, re-attaching if it is
//  an outbox (of any size). Returns NULL (with a log line) on failure.
pd_outbox_t *pd_outbox_open(const char *name, size_t bytes);
void pd_outbox_close(pd_outbox_t **self_p);
//  The ring's bytes, for checks (every entry a walk visits lies inside them: fuzz_outbox.c).
void pd_outbox_ring(const pd_outbox_t *self, const void **ring, size_t *size);
int pd_outbox_unlink(const char *name);

//  Appends one entry, pending until pd_outbox_commit. An entry larger than a quarter of the
//  ring is not kept (returns -1; the change goes ahead, as it did before outboxes).
int pd_outbox_put(pd_outbox_t *self, const void *data, size_t len, int64_t time_ms);
//  The change the pending entry describes has happened (or is visible): keep the entry.
void pd_outbox_commit(pd_outbox_t *self);
//  The change did not happen: forget the pending entry.
void pd_outbox_drop(pd_outbox_t *self);

//  The entry a dead process left pending, if any (a view, valid until the next change).
bool pd_outbox_pending(pd_outbox_t *self, const void **data, size_t *len);

//  Settles the entry a dead process left pending: happened(data, len, arg) says whether the
//  change it describes is in the table (then it is kept) or not (dropped). Returns 1 kept,
//  0 dropped, -1 when nothing was pending.
typedef bool (*pd_outbox_check_fn)(const void *data, size_t len, void *arg);
int pd_outbox_settle(pd_outbox_t *self, pd_outbox_check_fn happened, void *arg);

//  Everything written so far has left the process (a clean stop): a restart publishes none of
//  it again.
void pd_outbox_mark(pd_outbox_t *self);

//  Visits the committed entries after the mark with time_ms >= since, oldest first. In a
//  segment damaged from outside, malformed entries and what cannot be read past them are
//  skipped (pd_outbox.c, "Trust"). Cheap for a since within the last second or so: it starts
//  at a checkpoint.
typedef void (*pd_outbox_fn)(const void *data, size_t len, void *arg);
void pd_outbox_each(pd_outbox_t *self, int64_t since, pd_outbox_fn fn, void *arg);
//  Time of the newest committed entry after the mark, or INT64_MIN if there is none.
int64_t pd_outbox_last_time(pd_outbox_t *self);

void pd_outbox_test(bool verbose);

#endif
