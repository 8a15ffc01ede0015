/*  st_projects — what a store node holds of each project: its records, and its distinct
 *  statuses with the records holding each.
 *
 *  The counts go in the node's HELLO: the broker enforces a project's record limit across the
 *  cluster. The statuses are for lists that nothing narrows (no equal() on $id, userId or
 *  status, no index): the table chains the records of each (project, status)
 *  (pd_table_foreach_status), and every record of a project is on the chain of exactly one of
 *  its statuses, so walking the chain of each status the project holds visits each of its
 *  records once. Without them such a list walks every slot of the node, so a small project's
 *  list costs what the largest project on the node holds.
 *
 *  Everything is kept from the table's hook (st_projects_change: creates, updates, deletes, and
 *  the moves of resharding, which the hook reports as puts and deletes), and lives in process
 *  memory. A restarted node counts again with a scan of the slots, a slice per loop turn while
 *  it serves (st_projects_recount_step); meanwhile a change counts only if the scan has passed
 *  its slot (the scan sees the others as they are when it gets there), and st_projects_exact is
 *  false. A change that does not fit what is held (a delete of a status with no records: a bug)
 *  is logged and starts the count again, rather than leave a list to miss records.
 *
 *  Statuses are clients' bytes (any byte, NUL included; empty when null, as the table's chains
 *  take them): one pd_map keyed by (project, status) under its own random key. A status leaves
 *  it with its last record, and a project with its last record: memory follows what the node
 *  holds. */
#ifndef ST_PROJECTS_H
#define ST_PROJECTS_H

#include "pd_record.h"
#include "pd_table.h"

typedef struct st_projects st_projects_t;

st_projects_t *st_projects_new(void);
void st_projects_destroy(st_projects_t **self_p);

//  A change as the table's hook reports it: rec created (prev NULL), prev deleted (rec NULL),
//  or prev replaced by rec (one record, one slot).
void st_projects_change(st_projects_t *self, const pd_record_t *rec, const pd_record_t *prev);
//  Forgets what it holds and counts again from the table's records (st_projects_recount_step).
void st_projects_recount(st_projects_t *self);
//  One slice of that count: at most max slots of table. True while it goes on.
bool st_projects_recount_step(st_projects_t *self, pd_table_t *table, size_t max);
//  Whether a count is under way (then the counts are partial).
bool st_projects_counting(const st_projects_t *self);
//  Whether the counts and statuses are those of table's records: no count under way, and the
//  records held add up to the table's.
bool st_projects_exact(const st_projects_t *self, pd_table_t *table);

//  Records of project (0 if none).
int64_t st_projects_count(const st_projects_t *self, pd_str_t project);
//  Visits project's statuses, each with its records (n > 0); fn returns non-zero to stop. fn
//  must not change the table.
typedef int (*st_projects_status_fn)(pd_str_t status, int64_t n, void *arg);
void st_projects_each_status(const st_projects_t *self, pd_str_t project,
                             st_projects_status_fn fn, void *arg);
//  Visits every project with records.
typedef void (*st_projects_fn)(pd_str_t project, int64_t n, void *arg);
void st_projects_each(const st_projects_t *self, st_projects_fn fn, void *arg);
//  Projects and (project, status) pairs held.
void st_projects_stats(const st_projects_t *self, size_t *projects, size_t *statuses);

#endif
