/*  pd_claims — a bounded cache of user claims: (project, userId) -> the id of the presence that
 *  user holds. The broker and the gateways both keep one (the broker to send a known user's
 *  upsert straight to its record's node, the gateways to send it straight to the store node),
 *  learned from what passes through them; it only ever names an id the claim node holds or
 *  held, and a stale entry is repaired by the store's refusal (see broker.c, gateway.c).
 *
 *  Keys are chosen by clients, so the table hashes with SipHash under a random key per cache
 *  (no crafted collisions). It holds at most `max` entries and evicts the least recently used;
 *  entries live in one array that grows by doubling up to max, so set, get and drop allocate
 *  nothing in the steady state. One thread per cache. */
#ifndef PD_CLAIMS_H
#define PD_CLAIMS_H

#include <stdbool.h>
#include <stddef.h>

#include "pd_util.h"

#define PD_CLAIMS_DEFAULT_MAX 1000000

typedef struct pd_claims_s pd_claims_t;

//  A cache of at most max entries (>= 1).
pd_claims_t *pd_claims_new(size_t max);
void pd_claims_destroy(pd_claims_t **self_p);

//  The id user's claim names, or NULL; the string is valid until the next set or drop. A hit
//  makes the entry the most recently used.
const char *pd_claims_get(pd_claims_t *self, pd_str_t project, pd_str_t user);
//  Remembers that user's claim names id (ids and names of at most 36 bytes; longer ones are
//  ignored). Evicts the least recently used entry when full.
void pd_claims_set(pd_claims_t *self, pd_str_t project, pd_str_t user, pd_str_t id);
void pd_claims_drop(pd_claims_t *self, pd_str_t project, pd_str_t user);
size_t pd_claims_count(const pd_claims_t *self);
//  Entries evicted to stay within max, so far.
unsigned long pd_claims_evicted(const pd_claims_t *self);

void pd_claims_test(bool verbose);

#endif
