/*  pd_map — an intrusive hash table (chained, power-of-two sized) for tables keyed by strings
 *  that clients choose: each table hashes with SipHash under its own random key (pd_hash2_keyed),
 *  so nobody can craft keys that collide. The entries belong to the caller, who embeds a
 *  pd_mapent_t in them, computes its hash with pd_map_hash and compares keys on lookup. */
#ifndef PD_MAP_H
#define PD_MAP_H

#include "pd_util.h"

typedef struct pd_mapent {
    struct pd_mapent *next; //  the next entry in the same slot
    uint64_t hash;
} pd_mapent_t;

typedef struct {
    pd_mapent_t **v;
    size_t mask; //  slots - 1 (0 before the first insert)
    size_t n;    //  entries
    unsigned char key[PD_HASH_KEYBYTES];
} pd_map_t;

//  An empty table with a fresh random key (libsodium must be initialised).
void pd_map_init(pd_map_t *m);
//  Frees the slots, not the entries.
void pd_map_free(pd_map_t *m);
//  The table's hash of the key (a, b).
uint64_t pd_map_hash(const pd_map_t *m, pd_str_t a, pd_str_t b);
//  Adds e (e->hash set by the caller); grows the table as needed.
void pd_map_add(pd_map_t *m, pd_mapent_t *e);
//  Removes e if it is in the table.
void pd_map_del(pd_map_t *m, pd_mapent_t *e);
//  The first entry of hash's slot: walk ->next and compare ->hash and the key.
pd_mapent_t *pd_map_first(const pd_map_t *m, uint64_t hash);
//  Slot i (0..mask) for a walk over every entry; NULL when the table is empty.
static inline pd_mapent_t *
pd_map_slot(const pd_map_t *m, size_t i)
{
    return m->mask ? m->v[i] : NULL;
}

void pd_map_test(bool verbose);

#endif
