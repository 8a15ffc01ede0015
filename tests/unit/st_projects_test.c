/*  st_projects_test — a store node's per-project records and statuses (store/st_projects.h)
 *  against a model, on a real table whose hook feeds them: after every step of a random run of
 *  creates, updates (of the status, or of other fields) and deletes, and of imports and silent
 *  deletes as moves make them, across projects of very different sizes and statuses that
 *  include null, the empty string, a NUL byte and a long one, each project's count and set of
 *  statuses (with their records) equal the model's, and nothing is left of a status or a
 *  project without records. Walking the table's chain of each status of a project visits each
 *  of its records once and no other. A count started again mid-run (as after a restart) while
 *  changes go on agrees once done; so does one that a change which does not fit starts. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "pd_table.h"
#include "pd_util.h"
#include "st_projects.h"
#include "st_test_rec.h"

#define NPROJ 4
#define NIDS 400
#define NSTATUS 7

static const char *s_projects[NPROJ] = {"big", "mid", "small", "tiny"};
static const int s_ids[NPROJ] = {NIDS, 120, 30, 6}; //  ids each project draws from

static char s_long[300];
//  Status i: 0 is null; the others are raw bytes (one holds a NUL, one is long).
static pd_str_t
s_status(int i)
{
    switch (i) {
    case 0: return PD_STR_NULL;
    case 1: return PD_STR("");
    case 2: return PD_STR("online");
    case 3: return PD_STR("away");
    case 4: return (pd_str_t){"a\0b", 3};
    case 5: return PD_STR("a");
    default: return (pd_str_t){s_long, sizeof s_long};
    }
}

typedef struct {
    bool live;
    int status;
    uint64_t version;
} mrec_t;

static mrec_t s_model[NPROJ][NIDS];

typedef struct {
    st_projects_t *a, *b; //  b: a second one, counting again from the table (or NULL)
} hook_t;

static void
s_hook(const pd_record_t *rec, const pd_record_t *prev, void *arg)
{
    hook_t *h = arg;
    st_projects_change(h->a, rec, prev);
    if (h->b)
        st_projects_change(h->b, rec, prev);
}

static void
s_rec(trec_t *t, int p, int id, int status, int meta)
{
    snprintf(t->meta, sizeof t->meta, "{\"n\":%d}", meta);
    st_test_rec(t, pd_str(s_projects[p]), id, s_status(status),
                status ? PD_STR("\"s\"") : PD_STR("null"));
}

//  The model's records of project p holding status i (null and "" are one: both empty).
static int64_t
s_model_n(int p, int i)
{
    int64_t n = 0;
    for (int id = 0; id < s_ids[p]; id++)
        if (s_model[p][id].live && pd_str_eq(s_status(s_model[p][id].status), s_status(i)))
            n++;
    return n;
}

typedef struct {
    int p;
    size_t seen;
    bool found[NSTATUS];
} seen_t;

static int
s_check_status(pd_str_t status, int64_t n, void *arg)
{
    seen_t *s = arg;
    int i = 1;
    while (i < NSTATUS && !pd_str_eq(status, s_status(i)))
        i++;
    PD_CHECK(i < NSTATUS && !s->found[i]); //  a status of the model, once
    s->found[i] = true;
    PD_CHECK(n > 0 && n == s_model_n(s->p, i));
    s->seen++;
    return 0;
}

typedef struct {
    int p;
    size_t n;
} walk_t;

static int
s_walk_visit(const pd_record_t *rec, void *arg)
{
    walk_t *w = arg;
    PD_CHECK(pd_str_eqc(rec->project, s_projects[w->p]));
    int id = 0;
    for (size_t i = 1; i < rec->id.len; i++)
        id = id * 10 + (rec->id.ptr[i] - '0');
    PD_CHECK(id >= 0 && id < s_ids[w->p] && s_model[w->p][id].live);
    PD_CHECK(pd_str_eq(rec->status, s_status(s_model[w->p][id].status)));
    w->n++;
    return 0;
}

typedef struct {
    pd_table_t *t;
    int p;
    size_t n;
} chains_t;

static int
s_walk_status(pd_str_t status, int64_t n, void *arg)
{
    chains_t *c = arg;
    walk_t w = {c->p, 0};
    pd_table_foreach_status(c->t, pd_str(s_projects[c->p]), status, s_walk_visit, &w);
    PD_CHECK((int64_t)w.n == n);
    c->n += w.n;
    return 0;
}

static void
s_count_project(pd_str_t project, int64_t n, void *arg)
{
    int p = 0;
    while (p < NPROJ && !pd_str_eqc(project, s_projects[p]))
        p++;
    PD_CHECK(p < NPROJ && n > 0);
    ((int64_t *)arg)[p] += n;
}

//  x holds what the model holds; with the table, each project's chains hold its records.
static void
s_check(st_projects_t *x, pd_table_t *t, bool chains)
{
    PD_CHECK(st_projects_exact(x, t));
    size_t projects = 0, statuses = 0, nproj, nst;
    int64_t counted[NPROJ] = {0};
    st_projects_each(x, s_count_project, counted);
    for (int p = 0; p < NPROJ; p++) {
        int64_t n = 0;
        for (int id = 0; id < s_ids[p]; id++)
            n += s_model[p][id].live;
        PD_CHECK(st_projects_count(x, pd_str(s_projects[p])) == n && counted[p] == n);
        projects += n > 0;
        seen_t s = {.p = p};
        st_projects_each_status(x, pd_str(s_projects[p]), s_check_status, &s);
        for (int i = 1; i < NSTATUS; i++) /* every status of the model was seen */
            PD_CHECK(s.found[i] == (s_model_n(p, i) > 0));
        statuses += s.seen;
        if (chains) {
            chains_t c = {t, p, 0};
            st_projects_each_status(x, pd_str(s_projects[p]), s_walk_status, &c);
            PD_CHECK((int64_t)c.n == n);
        }
    }
    st_projects_stats(x, &nproj, &nst);
    PD_CHECK(nproj == projects && nst == statuses);
}

static uint64_t s_r = 88172645463325252ull;
static uint64_t
s_rand(void)
{
    s_r ^= s_r << 13, s_r ^= s_r >> 7, s_r ^= s_r << 17;
    return s_r;
}

//  One random change, made on the table and in the model.
static void
s_step(pd_table_t *t)
{
    uint64_t r = s_rand();
    int p = (int)(r % 10), kind = (int)((r >> 8) % 20), status = (int)((r >> 16) % NSTATUS);
    p = p < 5 ? 0 : p < 8 ? 1 : p < 9 ? 2 : 3; //  projects of very different sizes
    int id = (int)((r >> 24) % (uint64_t)s_ids[p]);
    mrec_t *m = &s_model[p][id];
    trec_t tr;
    pd_record_t st;
    if (kind < 9 || (kind < 12 && m->live)) { /* create or update; some keep the status */
        if (kind >= 9)
            status = m->status;
        s_rec(&tr, p, id, status, (int)(r >> 40));
        PD_CHECK(pd_table_put(t, &tr.rec, &st, NULL) == 0);
        m->live = true;
        m->status = status;
        m->version = st.version;
    } else if (kind < 14) { /* a move in: a newer copy, or one not taken */
        s_rec(&tr, p, id, status, (int)(r >> 40));
        tr.rec.version = m->live && (r >> 48) % 2 ? m->version : m->version + 1;
        bool taken;
        PD_CHECK(pd_table_import(t, &tr.rec, &taken) == 0);
        PD_CHECK(taken == (!m->live || tr.rec.version > m->version));
        if (taken) {
            m->live = true;
            m->status = status;
            m->version = tr.rec.version;
        }
    } else { /* a delete (or a move's drop), of a record held or not */
        char rid[16];
        snprintf(rid, sizeof rid, "r%d", id);
        PD_CHECK((pd_table_delete(t, pd_str(s_projects[p]), pd_str(rid), NULL) == 0) == m->live);
        m->live = false;
    }
}

int
main(void)
{
    PD_CHECK(sodium_init() >= 0);
    memset(s_long, 'z', sizeof s_long);
    char name[64];
    snprintf(name, sizeof name, "/pd-st-projects-test-%d", (int)getpid());
    bool created;
    pd_table_t *t = pd_table_open(name, (pd_table_size_t){4096, 4 << 20, 0, 0}, &created);
    PD_CHECK(t && created);
    hook_t h = {st_projects_new(), NULL};
    pd_table_set_hook(t, s_hook, &h);
    PD_CHECK(st_projects_exact(h.a, t) && !st_projects_counting(h.a));
    s_check(h.a, t, true);
    for (int step = 0; step < 20000; step++) {
        s_step(t);
        s_check(h.a, t, step % 50 == 0);
        if (step == 6000 || step == 12000) { /* counted again while changes go on */
            h.b = st_projects_new();
            st_projects_recount(h.b);
            PD_CHECK(!st_projects_exact(h.b, t));
        }
        if (h.b && !st_projects_recount_step(h.b, t, 7)) {
            s_check(h.b, t, true);
            st_projects_destroy(&h.a);
            h.a = h.b;
            h.b = NULL;
        }
        if (step == 15000) { /* a change that does not fit: counted again, then exact */
            pd_record_t ghost;
            trec_t tr;
            s_rec(&tr, 3, 0, 6, 0);
            ghost = tr.rec;
            ghost.project = PD_STR("nowhere");
            st_projects_change(h.a, NULL, &ghost);
            PD_CHECK(st_projects_counting(h.a) && !st_projects_exact(h.a, t));
            while (st_projects_recount_step(h.a, t, 100))
                s_step(t);
            s_check(h.a, t, true);
        }
    }
    /* everything deleted: nothing left of any project or status */
    for (int p = 0; p < NPROJ; p++)
        for (int id = 0; id < s_ids[p]; id++) {
            char rid[16];
            snprintf(rid, sizeof rid, "r%d", id);
            pd_table_delete(t, pd_str(s_projects[p]), pd_str(rid), NULL);
            s_model[p][id].live = false;
        }
    s_check(h.a, t, true);
    size_t nproj, nst;
    st_projects_stats(h.a, &nproj, &nst);
    PD_CHECK(nproj == 0 && nst == 0 && pd_table_count(t) == 0);
    st_projects_destroy(&h.a);
    pd_table_close(&t);
    pd_table_unlink(name);
    printf("st_projects: ok\n");
    return 0;
}
