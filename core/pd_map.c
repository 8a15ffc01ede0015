/*  pd_map — intrusive chained hash table under a random SipHash key (see pd_map.h). */
#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#include "pd_map.h"

void
pd_map_init(pd_map_t *m)
{
    *m = (pd_map_t){0};
    randombytes_buf(m->key, sizeof m->key);
}

void
pd_map_free(pd_map_t *m)
{
    free(m->v);
    m->v = NULL;
    m->mask = m->n = 0;
}

uint64_t
pd_map_hash(const pd_map_t *m, pd_str_t a, pd_str_t b)
{
    return pd_hash2_keyed(m->key, a, b);
}

static void
s_grow(pd_map_t *m)
{
    size_t cap = m->mask ? (m->mask + 1) * 2 : 64;
    pd_mapent_t **v = calloc(cap, sizeof *v);
    if (!v)
        abort();
    for (size_t i = 0; m->mask && i <= m->mask; i++) {
        pd_mapent_t *e = m->v[i];
        while (e) {
            pd_mapent_t *nx = e->next;
            e->next = v[e->hash & (cap - 1)];
            v[e->hash & (cap - 1)] = e;
            e = nx;
        }
    }
    free(m->v);
    m->v = v;
    m->mask = cap - 1;
}

void
pd_map_add(pd_map_t *m, pd_mapent_t *e)
{
    if (!m->mask || m->n >= m->mask)
        s_grow(m);
    e->next = m->v[e->hash & m->mask];
    m->v[e->hash & m->mask] = e;
    m->n++;
}

void
pd_map_del(pd_map_t *m, pd_mapent_t *e)
{
    if (!m->mask)
        return;
    pd_mapent_t **pp = &m->v[e->hash & m->mask];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = e->next;
        m->n--;
    }
}

pd_mapent_t *
pd_map_first(const pd_map_t *m, uint64_t hash)
{
    return m->mask ? m->v[hash & m->mask] : NULL;
}

void
pd_map_test(bool verbose)
{
    (void)verbose;
    PD_CHECK(sodium_init() >= 0);
    pd_map_t a, b;
    pd_map_init(&a);
    pd_map_init(&b);
    PD_CHECK(pd_map_hash(&a, PD_STR("p"), PD_STR("x")) == pd_map_hash(&a, PD_STR("p"), PD_STR("x")));
    PD_CHECK(pd_map_hash(&a, PD_STR("p"), PD_STR("x")) != pd_map_hash(&b, PD_STR("p"), PD_STR("x")));
    enum { N = 1000 };
    static pd_mapent_t e[N];
    for (size_t i = 0; i < N; i++) {
        char k[16];
        int n = snprintf(k, sizeof k, "%zu", i);
        e[i].hash = pd_map_hash(&a, PD_STR("p"), (pd_str_t){k, (size_t)n});
        pd_map_add(&a, &e[i]);
    }
    PD_CHECK(a.n == N);
    for (size_t i = 0; i < N; i += 2)
        pd_map_del(&a, &e[i]);
    PD_CHECK(a.n == N / 2);
    size_t found = 0;
    for (size_t i = 0; i < N; i++)
        for (pd_mapent_t *x = pd_map_first(&a, e[i].hash); x; x = x->next)
            if (x == &e[i])
                found++;
    PD_CHECK(found == N / 2);
    pd_map_free(&a);
    pd_map_free(&b);
}
