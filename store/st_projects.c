/*  st_projects — see st_projects.h. */
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_map.h"
#include "st_projects.h"

typedef struct proj proj_t;

typedef struct status {
    pd_mapent_t ent;            //  in st_projects.statuses, by (project, status)
    proj_t *p;                  //  its project
    struct status *prev, *next; //  p's statuses
    int64_t n;                  //  records holding it
    uint32_t len;
    char s[];                   //  the raw status (empty when null)
} status_t;

struct proj {
    pd_mapent_t ent;    //  in st_projects.projects, by name
    int64_t n;          //  records
    status_t *statuses; //  the statuses they hold
    uint32_t len;
    char name[];
};

struct st_projects {
    pd_map_t projects; //  name -> proj_t
    pd_map_t statuses; //  (project, status) -> status_t
    proj_t *last;      //  the project changed last: writes (and a count) come in runs of one
    int64_t total;     //  records, every project
    bool counting;     //  a count is under way (st_projects_recount)
    uint64_t pos;      //  its next slot
    bool lost;         //  a change did not fit what is held: count again
};

st_projects_t *
st_projects_new(void)
{
    st_projects_t *self = calloc(1, sizeof *self);
    if (!self)
        abort();
    pd_map_init(&self->projects);
    pd_map_init(&self->statuses);
    return self;
}

//  Frees every entry; the maps stay usable (and keep their keys).
static void
s_clear(st_projects_t *self)
{
    pd_map_t *maps[2] = {&self->statuses, &self->projects};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i <= maps[k]->mask; i++) {
            pd_mapent_t *e = pd_map_slot(maps[k], i);
            while (e) {
                pd_mapent_t *next = e->next;
                free(e);
                e = next;
            }
        }
        pd_map_free(maps[k]);
    }
    self->last = NULL;
    self->total = 0;
}

void
st_projects_destroy(st_projects_t **self_p)
{
    st_projects_t *self = *self_p;
    if (!self)
        return;
    s_clear(self);
    free(self);
    *self_p = NULL;
}

static proj_t *
s_find(const st_projects_t *self, pd_str_t project, uint64_t h)
{
    for (pd_mapent_t *e = pd_map_first(&self->projects, h); e; e = e->next) {
        proj_t *p = (proj_t *)e;
        if (e->hash == h && pd_str_eq((pd_str_t){p->name, p->len}, project))
            return p;
    }
    return NULL;
}

//  The project's entry, made if absent and make.
static proj_t *
s_project(st_projects_t *self, pd_str_t project, bool make)
{
    proj_t *p = self->last;
    if (p && pd_str_eq((pd_str_t){p->name, p->len}, project))
        return p;
    uint64_t h = pd_map_hash(&self->projects, project, PD_STR(""));
    if (!(p = s_find(self, project, h)) && make) {
        if (!(p = calloc(1, sizeof *p + project.len)))
            abort();
        if (project.len)
            memcpy(p->name, project.ptr, project.len);
        p->len = (uint32_t)project.len;
        p->ent.hash = h;
        pd_map_add(&self->projects, &p->ent);
    }
    if (p)
        self->last = p;
    return p;
}

//  delta records of p now hold status: its entry is made at the first, freed after the last.
static void
s_status_add(st_projects_t *self, proj_t *p, pd_str_t status, int64_t delta)
{
    uint64_t h = pd_map_hash(&self->statuses, (pd_str_t){p->name, p->len}, status);
    status_t *st = NULL;
    for (pd_mapent_t *e = pd_map_first(&self->statuses, h); e && !st; e = e->next) {
        status_t *x = (status_t *)e;
        if (e->hash == h && x->p == p && pd_str_eq((pd_str_t){x->s, x->len}, status))
            st = x;
    }
    if (!st) {
        if (delta < 0) {
            self->lost = true;
            return;
        }
        if (!(st = calloc(1, sizeof *st + status.len)))
            abort();
        if (status.len)
            memcpy(st->s, status.ptr, status.len);
        st->len = (uint32_t)status.len;
        st->p = p;
        st->ent.hash = h;
        pd_map_add(&self->statuses, &st->ent);
        st->next = p->statuses;
        if (p->statuses)
            p->statuses->prev = st;
        p->statuses = st;
    }
    st->n += delta;
    if (st->n > 0)
        return;
    if (st->n < 0)
        self->lost = true;
    pd_map_del(&self->statuses, &st->ent);
    if (st->prev)
        st->prev->next = st->next;
    else
        p->statuses = st->next;
    if (st->next)
        st->next->prev = st->prev;
    free(st);
}

//  A record came (delta 1) or left (-1).
static void
s_add(st_projects_t *self, const pd_record_t *rec, int64_t delta)
{
    proj_t *p = s_project(self, rec->project, delta > 0);
    if (!p) {
        self->lost = true;
        return;
    }
    s_status_add(self, p, rec->status, delta);
    p->n += delta;
    self->total += delta;
    if (p->n > 0)
        return;
    if (p->n < 0 || p->statuses) { /* a bug: everything is counted again at once */
        self->lost = true;
        return;
    }
    pd_map_del(&self->projects, &p->ent);
    if (self->last == p)
        self->last = NULL;
    free(p);
}

void
st_projects_change(st_projects_t *self, const pd_record_t *rec, const pd_record_t *prev)
{
    const pd_record_t *r = rec ? rec : prev;
    if (self->counting && r->slot >= self->pos)
        return; /* the count has not been there yet: it will see the record as it is then */
    if (rec && prev) {
        if (pd_str_eq(rec->status, prev->status))
            return; /* the usual update: a heartbeat, metadata */
        proj_t *p = s_project(self, rec->project, false);
        if (p) {
            s_status_add(self, p, prev->status, -1);
            s_status_add(self, p, rec->status, 1);
        } else {
            self->lost = true;
        }
    } else {
        s_add(self, r, rec ? 1 : -1);
    }
    if (self->lost) {
        pd_log_warn("%s: a change of a record of project '%.*s' does not fit the counts held: "
                    "counting again", __func__, (int)r->project.len,
                    r->project.ptr ? r->project.ptr : "");
        st_projects_recount(self);
    }
}

void
st_projects_recount(st_projects_t *self)
{
    s_clear(self);
    self->counting = true;
    self->pos = 0;
    self->lost = false;
}

static int
s_count_visit(const pd_record_t *rec, void *arg)
{
    s_add(arg, rec, 1);
    return 0;
}

bool
st_projects_recount_step(st_projects_t *self, pd_table_t *table, size_t max)
{
    if (!self->counting)
        return false;
    if (!pd_table_scan(table, &self->pos, max, s_count_visit, self))
        return true;
    self->counting = false;
    return false;
}

bool
st_projects_counting(const st_projects_t *self)
{
    return self->counting;
}

bool
st_projects_exact(const st_projects_t *self, pd_table_t *table)
{
    return !self->counting && self->total == (int64_t)pd_table_count(table);
}

int64_t
st_projects_count(const st_projects_t *self, pd_str_t project)
{
    proj_t *p = s_find(self, project, pd_map_hash(&self->projects, project, PD_STR("")));
    return p ? p->n : 0;
}

void
st_projects_each_status(const st_projects_t *self, pd_str_t project, st_projects_status_fn fn,
                        void *arg)
{
    proj_t *p = s_find(self, project, pd_map_hash(&self->projects, project, PD_STR("")));
    for (status_t *st = p ? p->statuses : NULL; st; st = st->next)
        if (fn((pd_str_t){st->s, st->len}, st->n, arg))
            return;
}

void
st_projects_each(const st_projects_t *self, st_projects_fn fn, void *arg)
{
    for (size_t i = 0; i <= self->projects.mask; i++)
        for (pd_mapent_t *e = pd_map_slot(&self->projects, i); e; e = e->next)
            fn((pd_str_t){((proj_t *)e)->name, ((proj_t *)e)->len}, ((proj_t *)e)->n, arg);
}

void
st_projects_stats(const st_projects_t *self, size_t *projects, size_t *statuses)
{
    *projects = self->projects.n;
    *statuses = self->statuses.n;
}
