/*  pd_listcache — Appwrite's list cache (`GET /v1/presences?ttl=N`, appwrite-protocol.md §1.1),
 *  held by the broker. Every list passes through the broker, and so does every change that
 *  purges the cache (a delete by anyone: a client, the reaper's expiry, the release of a
 *  connection-bound presence; an update with `purge=true`), so one cache there is as coherent as
 *  Appwrite's shared Redis cache and a purge reaches every gateway at once: no gateway holds
 *  list state, and none needs the bus for it.
 *
 *  An entry is the PresenceList body of one list, keyed like Appwrite's (the caller's roles, or
 *  an API key's bypass; the exact query strings; total or not) within a project. A lookup hits
 *  when the entry is younger than the request's own ttl (Appwrite's cache load(key, ttl)). A
 *  purge is O(1): it bumps the project's generation, and entries of an older generation are
 *  dead (dropped when found, or evicted). A list records the generation when it starts and its
 *  result is stored only if no purge came in between, so a list gathered before a delete can
 *  never be stored after it. The cache is bounded in bytes (keys, bodies and entry overhead);
 *  the least recently used entries go first. One thread. */
#ifndef PD_LISTCACHE_H
#define PD_LISTCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_msg.h"
#include "pd_util.h"

#define PD_LISTCACHE_DEFAULT_BYTES (64u << 20)
#define PD_LISTCACHE_MAX_TTL 86400 //  seconds, Appwrite's Range(0, 86400)

typedef struct pd_listcache pd_listcache_t;

//  A cache of at most max_bytes (0: the default). libsodium must be initialised.
pd_listcache_t *pd_listcache_new(size_t max_bytes);
void pd_listcache_destroy(pd_listcache_t **self_p);

/*  The broker's hooks; each takes the message as it passes. */
//  LIST with TTL > 0: if a live entry answers it, writes the REPLY (BODY, FLAGS
//  PD_FL_CACHE_HIT) for m->rid into w and returns true.
bool pd_listcache_answer(pd_listcache_t *self, const pd_msg_t *m, pd_msgw_t *w);
//  The generation of m's project now: keep it with a LIST until its result is stored.
uint64_t pd_listcache_gen(pd_listcache_t *self, const pd_msg_t *m);
//  Stores the result of LIST req (no-op unless TTL > 0), unless its project was purged since
//  gen. body is copied.
void pd_listcache_put(pd_listcache_t *self, const pd_msg_t *req, uint64_t gen, const char *body,
                      size_t len);
//  True if request m purges its project's lists once it succeeds: DELETE, EXPIRE, RELEASE, and
//  UPDATE with PD_FL_PURGE. Keep it with the request until its reply.
bool pd_listcache_purges(const pd_msg_t *m);
//  The store node's reply to a request for which pd_listcache_purges said true (purges): a
//  success that names its project (a RELEASE that kept the record names none) purges it. A
//  list that starts after this reply reaches the node after the change.
void pd_listcache_on_reply(pd_listcache_t *self, const pd_msg_t *m, bool purges);

//  Purges every entry of project.
void pd_listcache_purge(pd_listcache_t *self, pd_str_t project);
//  Prometheus lines (hits, misses, purges, evictions, entries, bytes).
void pd_listcache_metrics(const pd_listcache_t *self, pd_buf_t *b);

void pd_listcache_test(bool verbose);

#endif
