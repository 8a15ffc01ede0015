/*  st_index — a store node's secondary indexes on attributes a project declares ("indexes" in
 *  the projects file: "status", "$createdAt", "$updatedAt", "expiresAt", "metadata.<path>"),
 *  for equal() and range lists, O(1) counts, and pages in an indexed order that stop early.
 *
 *  The store does not read the projects file: a gateway names the project's indexed
 *  attributes in every LIST (INDEXES). The first list that names an attribute of a project
 *  this node does not index yet builds the index with one scan of the node's records; from
 *  then on every change keeps it (st_index_change, called from the table's hook for puts,
 *  imports and deletes, before the change is visible). Indexes live in process memory: a
 *  restarted node builds each again on its first use. An index a project stops declaring is
 *  kept (and kept up to date) until the node restarts.
 *
 *  An index maps a value's key (pd_query_index_keys: equal values, equal keys) to the set of
 *  records holding it, with its size: an equal() on an indexed attribute visits only its
 *  records, and counts them without a visit. The sets are also kept in value order (a
 *  red-black tree, libbsd's sys/tree.h): a range (lessThan, greaterThan, between, startsWith
 *  and the rest, pd_query_index_range) visits the sets from its first value to its last, and
 *  counts them by their sizes. Records whose value is absent, an object or an array are in no
 *  set (no equal() or range matches them). A change is O(1) expected, O(log values) when a value
 *  gains its first record or loses its last; a set is an array with swap-remove, a record knows
 *  its slot in it. */
#ifndef ST_INDEX_H
#define ST_INDEX_H

#include "pd_query.h"
#include "pd_record.h"
#include "pd_table.h"

#define ST_INDEX_MAX 256 //  indexes per node (project x attribute), at most

typedef struct st_index st_index_t;
typedef struct st_idx st_idx_t;

st_index_t *st_index_new(void);
void st_index_destroy(st_index_t **self_p);

//  The index of (project, attr), built from table's records if new. NULL if attr cannot be
//  indexed or ST_INDEX_MAX indexes exist.
st_idx_t *st_index_want(st_index_t *self, pd_table_t *table, pd_str_t project, pd_str_t attr);
//  Keeps every index of the record's project: rec is the record as it will be stored (NULL:
//  prev is deleted), prev the one it replaces (NULL on create).
void st_index_change(st_index_t *self, const pd_record_t *rec, const pd_record_t *prev);

//  Records whose value has key (one of the keys pd_query_index_keys writes, without its length).
size_t st_idx_count(const st_idx_t *ix, pd_str_t key);
//  Visits their ids, each with the record's slot in the table (pd_table_get_slot: the slot
//  still holds the record); fn returns non-zero to stop. fn must not change the table.
typedef int (*st_idx_visit_fn)(pd_str_t id, uint32_t slot, void *arg);
void st_idx_each(const st_idx_t *ix, pd_str_t key, st_idx_visit_fn fn, void *arg);

/*  The records whose value lies in the range of q's filter number `filter` on this index
 *  (pd_query_index_range: lo is the key the walk starts at): the sets are walked in value order
 *  from lo until the range ends, and fn visits each record's id (NULL: none, only counted).
 *  Returns how many records the range holds (those visited, if fn stopped the walk). */
size_t st_idx_range(const st_idx_t *ix, const pd_query_t *q, int filter, pd_str_t lo,
                    st_idx_visit_fn fn, void *arg);

//  Records in the index.
size_t st_idx_size(const st_idx_t *ix);

/*  Walks the sets in value order (desc: from the last value back), from the first set at or
 *  past `from` in that direction (from.ptr NULL: from the first), fn visiting each record's id
 *  (non-zero: stop at once). After each whole set, done(arg) true stops the walk: the records
 *  visited then hold every value up to that set's. True if stopped, false at the end. */
bool st_idx_walk(const st_idx_t *ix, bool desc, pd_str_t from, st_idx_visit_fn fn,
                 bool (*done)(void *arg), void *arg);

//  Indexes, indexed records (summed over indexes) and their bytes, for metrics.
void st_index_stats(const st_index_t *self, size_t *indexes, size_t *entries, size_t *bytes);

#endif
