/*  pd_table — the records of one store node, in a named POSIX shared-memory segment.
 *
 *  Used by the store role only. The segment holds everything: a header (magic, layout version,
 *  sizes, counters), a slot array, open-addressing hash indexes (by (project,id), by
 *  (project,userId), by (project,status)), the user claims of the one-presence-per-user rule,
 *  an expiry min-heap, and an arena of immutable record blobs. Every link inside the segment is
 *  an offset or a slot number, never a pointer, so any process can map it at any address.
 *
 *  Crash safety. A write builds a new blob completely, then publishes it with one atomic store
 *  (slot -> blob offset, or index entry -> slot). A reader never sees a half-written record. The
 *  secondary structures (user and status indexes, expiry heap, free lists) are derived: the
 *  header's `dirty` word is set around every mutation of them, and the mutation journals the old
 *  value of every word it changes (an undo journal in the header's page). If a process died
 *  mid-way, pd_table_open writes those values back, which leaves the segment as it was before
 *  that mutation (it did not happen: it was not acknowledged either), in O(words it touched);
 *  without a usable journal it rebuilds every derived structure from the slots. A killed and
 *  restarted store node therefore re-attaches and serves every acknowledged write with no
 *  replay.
 *
 *  Views returned by reads point into the segment and stay valid until the next mutating call
 *  (a replaced or deleted blob is freed lazily at the start of the next mutation, so the caller
 *  can still encode the previous state into an event). A role list read back may lack its last
 *  NUL (layout 8 keeps a list of one role inside the record's JSON; the record a put hands its
 *  hook is trimmed alike): compare lists with pd_list_eq, not byte for byte. */
#ifndef PD_TABLE_H
#define PD_TABLE_H

#include "pd_record.h"

typedef struct pd_table pd_table_t;

typedef struct {
    size_t capacity;    //  max records (slots); the hash indexes get 3/2 of this many entries
    size_t arena_bytes; //  bytes for record blobs, at first
    size_t arena_max;   //  the arena grows online up to this (0: it does not grow; at most
                        //  PD_TABLE_ARENA_MAX); used on re-attach too
    size_t capacity_max; //  the capacity may grow up to this (pd_table_grow): a new segment's
                         //  sections have room for it (sparse), so it grows in place
} pd_table_size_t;
#define PD_TABLE_ARENA_MAX ((size_t)1 << 40) //  an arena's largest size (the address range mapped)

//  Opens the segment `name` ("/presenced-<cluster>-store-<node>"), creating it if absent, or
//  re-attaching if it exists with a valid header (then the stored sizes are used, and only
//  size.arena_max is taken). The arena grows online when a record does not fit: the file is
//  extended inside an address range mapped at open for the largest arena, so nothing is
//  remapped and every view stays valid (doubling, up to arena_max, and only while the file
//  system has room for the record). *created is set to true when a new segment was made. Returns NULL (with a log
//  line) if the segment exists but is not ours or has another layout version.
pd_table_t *pd_table_open(const char *name, pd_table_size_t size, bool *created);
//  Unmaps; the segment stays for the next process. Nullifies *self_p.
void pd_table_close(pd_table_t **self_p);
//  Removes the segment name (data is gone once every process has unmapped it).
int pd_table_unlink(const char *name);

//  Number of live records (expired ones included until deleted).
size_t pd_table_count(pd_table_t *self);
//  Records (and claims) the segment holds room for.
size_t pd_table_capacity(pd_table_t *self);
/*  Grows the capacity to `capacity` (slots, claims, and the hash indexes with them), online,
 *  every record keeping its slot, version and bytes. Up to the capacity_max the segment was made
 *  with, in place: the hash indexes are cleared at their larger size with their entries set
 *  aside (a copy: O(capacity), no key is read; the status lists keep their buckets, in a
 *  segment of layout 5), to be moved back by pd_table_grow_step
 *  over the next calls; every operation meanwhile finds its key's entry wherever it is. Beyond
 *  it, or for a segment of an older layout, by a copy into a new segment of the current layout,
 *  with room for the larger of `capacity` and pd_table_size_t.capacity_max, that replaces this
 *  one (O(bytes held)). Blocks the caller meanwhile; the caller must hold no view into the table
 *  (call it between requests). Returns 0 (also if it is that large already), or -1 with nothing
 *  changed (no room in /dev/shm, a size beyond the largest). */
int pd_table_grow(pd_table_t *self, size_t capacity);
/*  Moves up to n set-aside entries of each hash index back after pd_table_grow (about 40 ns an
 *  entry); true once none is left (also when no growth is under way). Between requests, as
 *  pd_table_grow. A process that dies before the last one leaves a segment whose indexes the
 *  next open rebuilds; pd_table_close moves the rest first. */
bool pd_table_grow_step(pd_table_t *self, size_t n);
//  Bytes used in the arena, and the arena size.
size_t pd_table_arena_used(pd_table_t *self);
size_t pd_table_arena_size(pd_table_t *self);

//  Looks up (project, id). Returns 0 and fills *out with views, or -1 if absent.
int pd_table_get(pd_table_t *self, pd_str_t project, pd_str_t id, pd_record_t *out);
//  The record in `slot` (pd_record_t.slot of an earlier read, or of a change's hook), if any:
//  returns 0 and fills *out, or -1 for a free or out of range slot.
int pd_table_get_slot(pd_table_t *self, uint32_t slot, pd_record_t *out);
//  A read-ahead hint for a loop over many slots (a page's fetch): stage 0 brings slot `slot`
//  into cache, stage 1 the first lines of its record's block (it reads the slot: give stage 0
//  a few records earlier). Reads nothing else and changes nothing; a bad slot is ignored.
void pd_table_prefetch(pd_table_t *self, uint32_t slot, int stage);
//  Looks up the record owned by (project, userId) on this node.
int pd_table_get_by_user(pd_table_t *self, pd_str_t project, pd_str_t user, pd_record_t *out);

//  Creates or replaces the record (rec->project, rec->id) with every field of rec, which is
//  copied. rec->json is ignored: the table renders the Presence JSON itself (pd_record_render).
//  rec->version is ignored: the stored version is the old one + 1 (1 on create).
//  On success returns 0, fills *stored with views of the new record and, if there was an old
//  record and prev != NULL, *prev with views of it (valid until the next mutation).
//  Returns PD_ERR_STORE_FULL if no slot or arena space is left (nothing is changed).
int pd_table_put(pd_table_t *self, const pd_record_t *rec, pd_record_t *stored, pd_record_t *prev);
//  Called before any part of a change is visible, after every check that can fail: by
//  pd_table_put with the record exactly as it will be stored (version, JSON, slot) and the one it
//  replaces (NULL on create); by pd_table_delete with rec NULL and the record it deletes. The
//  store writes the change's event to its outbox there (pd_outbox.h).
typedef void (*pd_table_hook_fn)(const pd_record_t *rec, const pd_record_t *prev, void *arg);
void pd_table_set_hook(pd_table_t *self, pd_table_hook_fn fn, void *arg);
//  Deletes (project, id). Returns 0 and fills *prev (if not NULL) with the deleted record's
//  views (valid until the next mutation), or -1 if absent.
int pd_table_delete(pd_table_t *self, pd_str_t project, pd_str_t id, pd_record_t *prev);

//  Visits records; return non-zero from fn to stop. Visiting order is unspecified.
typedef int (*pd_table_visit_fn)(const pd_record_t *rec, void *arg);
void pd_table_foreach(pd_table_t *self, pd_table_visit_fn fn, void *arg);
/*  Resharding (store.c, "moves"). pd_table_import puts a record that another node sent, as it
 *  was there: its version and stamps are kept, so the reaper's EXPIRE {VERSION} and the
 *  gateways' ordering still hold. A copy at least as new as the one here is not taken
 *  (*taken false, returns 0): a move sent twice is applied once. Returns 0 or
 *  PD_ERR_STORE_FULL. The hook is called as for a put (the store makes no event for it). */
int pd_table_import(pd_table_t *self, const pd_record_t *rec, bool *taken);
//  Visits records from slot *pos on, at most max slots; return non-zero from fn to stop after
//  that record. *pos is where to go on. Returns true when the end of the slots was reached.
bool pd_table_scan(pd_table_t *self, uint64_t *pos, size_t max, pd_table_visit_fn fn, void *arg);
//  Only records of (project, status): uses the status index.
void pd_table_foreach_status(pd_table_t *self, pd_str_t project, pd_str_t status,
                             pd_table_visit_fn fn, void *arg);
//  Records with expires_ms <= now, earliest first, at most max of them (expiry heap).
void pd_table_foreach_expired(pd_table_t *self, int64_t now, size_t max, pd_table_visit_fn fn,
                              void *arg);
//  The earliest expires_ms held, or INT64_MAX when empty.
int64_t pd_table_next_expiry(pd_table_t *self);

/*  User claims: (project, userId) -> presenceId, the record id this user owns cluster-wide.
 *  They live on the node that owns hash(project, userId), which is usually not the node that
 *  holds the record. */
//  If the user has a claim, copies it to id_out (37 bytes) and sets *fresh = false; otherwise
//  claims `want` and sets *fresh = true. Returns 0, PD_ERR_STORE_FULL, or
//  PD_ERR_ARGUMENT_INVALID for a user or id of more than 36 bytes, or a project of more than 36
//  (64 in a segment of layout 5 or older).
int pd_table_claim(pd_table_t *self, pd_str_t project, pd_str_t user, pd_str_t want,
                   char id_out[37], bool *fresh);
//  Compare-and-set: if the claim is `expect` (or absent), sets it to `want`. Copies the claim
//  in force afterwards to id_out. Returns 0, or PD_ERR_STORE_FULL.
int pd_table_reclaim(pd_table_t *self, pd_str_t project, pd_str_t user, pd_str_t expect,
                     pd_str_t want, char id_out[37]);
//  Removes the claim if it is `expect`. Returns 0 if removed, -1 otherwise.
int pd_table_unclaim(pd_table_t *self, pd_str_t project, pd_str_t user, pd_str_t expect);
size_t pd_table_claims(pd_table_t *self);
//  Copies the claim of (project, user) to id_out (37 bytes) and returns 0, or -1 if none.
int pd_table_claim_get(pd_table_t *self, pd_str_t project, pd_str_t user, char id_out[37]);
//  Visits claims from entry *pos on, at most max entries, as pd_table_scan does records.
typedef int (*pd_table_claim_fn)(pd_str_t project, pd_str_t user, pd_str_t id, void *arg);
bool pd_table_scan_claims(pd_table_t *self, uint64_t *pos, size_t max, pd_table_claim_fn fn,
                          void *arg);

void pd_table_test(bool verbose);

#endif
