/*  pd_claims — see pd_claims.h.
 *
 *  Entries are referred to by index + 1 (0 = none): a bucket heads a chain through `hnext`, and
 *  every live entry is on one doubly linked list from the least to the most recently used. An
 *  entry keeps its 32-bit hash, so eviction finds its bucket and a rehash needs no SipHash. */
#include "pd_claims.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "pd_log.h"

#define FIELD 36 //  longest project id, user id and presence id

typedef struct {
    uint32_t hnext;        //  next entry in its bucket
    uint32_t older, newer; //  LRU neighbours
    uint32_t hash;
    uint8_t plen, ulen;
    char key[2 * FIELD];   //  project then user, not terminated
    char id[FIELD + 1];    //  NUL-terminated
} ent_t;

struct pd_claims_s {
    ent_t *ent;
    uint32_t nent, cap, max; //  entries made, allocated, allowed
    uint32_t *bucket;
    uint32_t mask;           //  buckets - 1 (a power of two)
    uint32_t free;           //  dropped entries, chained through hnext
    uint32_t oldest, newest;
    size_t count;
    unsigned long evicted;
    unsigned char seed[crypto_shorthash_KEYBYTES];
};

#define E(i) (&self->ent[(i) - 1])

pd_claims_t *
pd_claims_new(size_t max)
{
    if (max < 1)
        max = 1;
    if (max > UINT32_MAX / 2)
        max = UINT32_MAX / 2;
    pd_claims_t *self = calloc(1, sizeof *self);
    if (!self || sodium_init() < 0)
        pd_fatal("pd_claims_new");
    self->max = (uint32_t)max;
    self->mask = 1023;
    self->bucket = calloc(self->mask + 1, sizeof *self->bucket);
    if (!self->bucket)
        pd_fatal("calloc");
    randombytes_buf(self->seed, sizeof self->seed);
    return self;
}

void
pd_claims_destroy(pd_claims_t **self_p)
{
    pd_claims_t *self = *self_p;
    if (!self)
        return;
    free(self->ent);
    free(self->bucket);
    free(self);
    *self_p = NULL;
}

static bool
s_fits(pd_str_t project, pd_str_t user)
{
    return project.len <= FIELD && user.len && user.len <= FIELD;
}

static uint32_t
s_hash(const pd_claims_t *self, pd_str_t project, pd_str_t user)
{
    unsigned char buf[2 * FIELD + 1], out[crypto_shorthash_BYTES];
    memcpy(buf, project.ptr, project.len);
    buf[project.len] = 0x1f;
    memcpy(buf + project.len + 1, user.ptr, user.len);
    crypto_shorthash(out, buf, project.len + 1 + user.len, self->seed);
    uint32_t h;
    memcpy(&h, out, sizeof h);
    return h;
}

//  The entry of (project, user) and its hash, or 0.
static uint32_t
s_find(const pd_claims_t *self, pd_str_t project, pd_str_t user, uint32_t *hash)
{
    uint32_t h = s_hash(self, project, user);
    *hash = h;
    for (uint32_t i = self->bucket[h & self->mask]; i; i = self->ent[i - 1].hnext) {
        const ent_t *e = &self->ent[i - 1];
        if (e->hash == h && e->plen == project.len && e->ulen == user.len &&
            memcmp(e->key, project.ptr, project.len) == 0 &&
            memcmp(e->key + project.len, user.ptr, user.len) == 0)
            return i;
    }
    return 0;
}

static void
s_lru_unlink(pd_claims_t *self, uint32_t i)
{
    ent_t *e = E(i);
    if (e->older)
        E(e->older)->newer = e->newer;
    else
        self->oldest = e->newer;
    if (e->newer)
        E(e->newer)->older = e->older;
    else
        self->newest = e->older;
    e->older = e->newer = 0;
}

static void
s_lru_push(pd_claims_t *self, uint32_t i)
{
    ent_t *e = E(i);
    e->older = self->newest;
    e->newer = 0;
    if (self->newest)
        E(self->newest)->newer = i;
    else
        self->oldest = i;
    self->newest = i;
}

//  Takes entry i out of its bucket and the LRU list and puts it on the free list.
static void
s_remove(pd_claims_t *self, uint32_t i)
{
    uint32_t *link = &self->bucket[E(i)->hash & self->mask];
    while (*link != i)
        link = &E(*link)->hnext;
    *link = E(i)->hnext;
    s_lru_unlink(self, i);
    E(i)->hnext = self->free;
    self->free = i;
    self->count--;
}

static void
s_rehash(pd_claims_t *self)
{
    uint32_t n = (self->mask + 1) * 2;
    uint32_t *b = calloc(n, sizeof *b);
    if (!b)
        pd_fatal("calloc");
    free(self->bucket);
    self->bucket = b;
    self->mask = n - 1;
    for (uint32_t i = self->oldest; i; i = E(i)->newer) {
        uint32_t *head = &self->bucket[E(i)->hash & self->mask];
        E(i)->hnext = *head;
        *head = i;
    }
}

//  A free entry: a dropped one, a new one, or the least recently used one evicted.
static uint32_t
s_alloc(pd_claims_t *self)
{
    if (self->free) {
        uint32_t i = self->free;
        self->free = E(i)->hnext;
        return i;
    }
    if (self->nent < self->max) {
        if (self->nent == self->cap) {
            uint32_t cap = self->cap ? self->cap * 2 : 1024;
            if (cap > self->max)
                cap = self->max;
            ent_t *ent = realloc(self->ent, (size_t)cap * sizeof *ent);
            if (!ent)
                pd_fatal("realloc");
            self->ent = ent;
            self->cap = cap;
        }
        return ++self->nent;
    }
    s_remove(self, self->oldest);
    self->evicted++;
    uint32_t i = self->free;
    self->free = E(i)->hnext;
    return i;
}

const char *
pd_claims_get(pd_claims_t *self, pd_str_t project, pd_str_t user)
{
    uint32_t h;
    uint32_t i = s_fits(project, user) ? s_find(self, project, user, &h) : 0;
    if (!i)
        return NULL;
    if (self->newest != i) {
        s_lru_unlink(self, i);
        s_lru_push(self, i);
    }
    return E(i)->id;
}

void
pd_claims_set(pd_claims_t *self, pd_str_t project, pd_str_t user, pd_str_t id)
{
    if (!s_fits(project, user) || !id.len || id.len > FIELD)
        return;
    uint32_t h;
    uint32_t i = s_find(self, project, user, &h);
    if (!i) {
        i = s_alloc(self);
        ent_t *e = E(i);
        e->hash = h;
        e->plen = (uint8_t)project.len;
        e->ulen = (uint8_t)user.len;
        memcpy(e->key, project.ptr, project.len);
        memcpy(e->key + project.len, user.ptr, user.len);
        uint32_t *head = &self->bucket[h & self->mask];
        e->hnext = *head;
        *head = i;
        s_lru_push(self, i);
        if (++self->count > (size_t)self->mask + 1)
            s_rehash(self);
    } else if (self->newest != i) {
        s_lru_unlink(self, i);
        s_lru_push(self, i);
    }
    memcpy(E(i)->id, id.ptr, id.len);
    E(i)->id[id.len] = 0;
}

void
pd_claims_drop(pd_claims_t *self, pd_str_t project, pd_str_t user)
{
    uint32_t h;
    uint32_t i = s_fits(project, user) ? s_find(self, project, user, &h) : 0;
    if (i)
        s_remove(self, i);
}

size_t
pd_claims_count(const pd_claims_t *self)
{
    return self->count;
}

unsigned long
pd_claims_evicted(const pd_claims_t *self)
{
    return self->evicted;
}

void
pd_claims_test(bool verbose)
{
    pd_claims_t *c = pd_claims_new(3000);
    char u[16], id[16];
    for (int i = 0; i < 3000; i++) {
        snprintf(u, sizeof u, "u%d", i);
        snprintf(id, sizeof id, "p%d", i);
        pd_claims_set(c, PD_STR("proj"), pd_str(u), pd_str(id));
    }
    PD_CHECK(pd_claims_count(c) == 3000 && pd_claims_evicted(c) == 0);
    PD_CHECK(strcmp(pd_claims_get(c, PD_STR("proj"), PD_STR("u7")), "p7") == 0);
    PD_CHECK(!pd_claims_get(c, PD_STR("proj2"), PD_STR("u7"))); //  projects are apart
    PD_CHECK(!pd_claims_get(c, PD_STR("pro"), PD_STR("ju7")));  //  no ambiguity at the seam
    /* full: the least recently used goes (u0; u7 was just used) */
    pd_claims_set(c, PD_STR("proj"), PD_STR("new"), PD_STR("pn"));
    PD_CHECK(pd_claims_count(c) == 3000 && pd_claims_evicted(c) == 1);
    PD_CHECK(!pd_claims_get(c, PD_STR("proj"), PD_STR("u0")));
    PD_CHECK(pd_claims_get(c, PD_STR("proj"), PD_STR("u7")));
    PD_CHECK(strcmp(pd_claims_get(c, PD_STR("proj"), PD_STR("new")), "pn") == 0);
    /* update in place, drop, reuse of the dropped entry */
    pd_claims_set(c, PD_STR("proj"), PD_STR("u7"), PD_STR("other"));
    PD_CHECK(strcmp(pd_claims_get(c, PD_STR("proj"), PD_STR("u7")), "other") == 0);
    pd_claims_drop(c, PD_STR("proj"), PD_STR("u7"));
    PD_CHECK(!pd_claims_get(c, PD_STR("proj"), PD_STR("u7")) && pd_claims_count(c) == 2999);
    pd_claims_set(c, PD_STR("proj"), PD_STR("u7"), PD_STR("back"));
    PD_CHECK(pd_claims_count(c) == 3000 && pd_claims_evicted(c) == 1);
    /* what does not fit is ignored */
    pd_claims_set(c, PD_STR("proj"), PD_STR(""), PD_STR("x"));
    pd_claims_set(c, PD_STR("proj"), PD_STR("u1"), PD_STR("0123456789012345678901234567890123456"));
    PD_CHECK(strcmp(pd_claims_get(c, PD_STR("proj"), PD_STR("u1")), "p1") == 0);
    /* every survivor is still found after the rehashes */
    int found = 0;
    for (int i = 0; i < 3000; i++) {
        snprintf(u, sizeof u, "u%d", i);
        found += pd_claims_get(c, PD_STR("proj"), pd_str(u)) != NULL;
    }
    PD_CHECK(found == 2999); //  all but u0
    pd_claims_destroy(&c);
    PD_CHECK(!c);
    c = pd_claims_new(1); //  the smallest cache still works
    pd_claims_set(c, PD_STR("a"), PD_STR("b"), PD_STR("c"));
    pd_claims_set(c, PD_STR("a"), PD_STR("d"), PD_STR("e"));
    PD_CHECK(!pd_claims_get(c, PD_STR("a"), PD_STR("b")) && pd_claims_get(c, PD_STR("a"), PD_STR("d")));
    pd_claims_destroy(&c);
    if (verbose)
        printf("   claims: set, get, LRU eviction, drop and reuse, rehash ok\n");
}
