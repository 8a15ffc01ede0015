/*  st_index — see st_index.h. */
#include <stdlib.h>
#include <string.h>

#include <bsd/sys/tree.h>

#include "pd_map.h"
#include "pd_query.h"
#include "st_index.h"

typedef struct member member_t;

typedef struct set {
    pd_mapent_t ent;     //  in st_idx_t.sets, by key
    RB_ENTRY(set) rb;    //  in st_idx_t.order, by value (pd_query_index_key_cmp)
    member_t **v;        //  the records holding the value
    uint32_t n, cap;
    uint32_t klen;
    char key[];          //  the value's key
} set_t;

static int
s_set_cmp(const set_t *a, const set_t *b)
{
    return pd_query_index_key_cmp((pd_str_t){a->key, a->klen}, (pd_str_t){b->key, b->klen});
}

RB_HEAD(set_tree, set);
/* RB_GENERATE_STATIC's functions carry libbsd's __unused, which libbsd leaves undefined (it
 * clashes with a struct member in Linux headers): the same, with the attribute spelled out */
RB_GENERATE_INTERNAL(set_tree, set, rb, s_set_cmp, __attribute__((__unused__)) static)

struct member {
    pd_mapent_t ent; //  in st_idx_t.members, by record id
    set_t *set;      //  the set it is in
    uint32_t pos;    //  its place in set->v
    uint32_t slot;   //  the record's slot in the table (visits read it without a hash probe)
    uint8_t idlen;
    char id[];       //  the record id (at most 36 bytes)
};

struct st_idx {
    char project[40];
    char *attr;
    pd_map_t sets;    //  key -> set_t
    struct set_tree order; //  the sets in value order, for ranges
    pd_map_t members; //  id -> member_t
    size_t bytes;     //  sets and members, allocations
    st_idx_t *next;
};

struct st_index {
    st_idx_t *list;
    size_t n;
    pd_buf_t key; //  scratch: a record's key
};

st_index_t *
st_index_new(void)
{
    st_index_t *self = calloc(1, sizeof *self);
    if (!self)
        abort();
    pd_buf_init(&self->key);
    return self;
}

static void
s_idx_free(st_idx_t *ix)
{
    for (size_t i = 0; i <= ix->members.mask; i++) {
        pd_mapent_t *e = pd_map_slot(&ix->members, i);
        while (e) {
            pd_mapent_t *next = e->next;
            free(e);
            e = next;
        }
    }
    for (size_t i = 0; i <= ix->sets.mask; i++) {
        pd_mapent_t *e = pd_map_slot(&ix->sets, i);
        while (e) {
            pd_mapent_t *next = e->next;
            free(((set_t *)e)->v);
            free(e);
            e = next;
        }
    }
    pd_map_free(&ix->members);
    pd_map_free(&ix->sets);
    free(ix->attr);
    free(ix);
}

void
st_index_destroy(st_index_t **self_p)
{
    st_index_t *self = *self_p;
    if (!self)
        return;
    for (st_idx_t *ix = self->list, *next; ix; ix = next) {
        next = ix->next;
        s_idx_free(ix);
    }
    pd_buf_free(&self->key);
    free(self);
    *self_p = NULL;
}

static set_t *
s_set_find(const st_idx_t *ix, pd_str_t key, uint64_t h)
{
    for (pd_mapent_t *e = pd_map_first(&ix->sets, h); e; e = e->next) {
        set_t *s = (set_t *)e;
        if (e->hash == h && s->klen == key.len && memcmp(s->key, key.ptr, key.len) == 0)
            return s;
    }
    return NULL;
}

static member_t *
s_member_find(const st_idx_t *ix, pd_str_t id)
{
    uint64_t h = pd_map_hash(&ix->members, id, PD_STR(""));
    for (pd_mapent_t *e = pd_map_first(&ix->members, h); e; e = e->next) {
        member_t *m = (member_t *)e;
        if (e->hash == h && m->idlen == id.len && memcmp(m->id, id.ptr, id.len) == 0)
            return m;
    }
    return NULL;
}

//  Takes m out of its set (swap-remove); frees the set once empty.
static void
s_leave(st_idx_t *ix, member_t *m)
{
    set_t *s = m->set;
    if (!s)
        return;
    member_t *last = s->v[--s->n];
    s->v[m->pos] = last;
    last->pos = m->pos;
    m->set = NULL;
    if (!s->n) {
        pd_map_del(&ix->sets, &s->ent);
        RB_REMOVE(set_tree, &ix->order, s);
        ix->bytes -= sizeof *s + s->klen + s->cap * sizeof *s->v;
        free(s->v);
        free(s);
    }
}

static void
s_join(st_idx_t *ix, member_t *m, pd_str_t key)
{
    uint64_t h = pd_map_hash(&ix->sets, key, PD_STR(""));
    set_t *s = s_set_find(ix, key, h);
    if (!s) {
        if (!(s = calloc(1, sizeof *s + key.len)))
            abort();
        memcpy(s->key, key.ptr, key.len);
        s->klen = (uint32_t)key.len;
        s->ent.hash = h;
        pd_map_add(&ix->sets, &s->ent);
        RB_INSERT(set_tree, &ix->order, s);
        ix->bytes += sizeof *s + key.len;
    }
    if (s->n == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 4;
        member_t **v = realloc(s->v, cap * sizeof *v);
        if (!v)
            abort();
        ix->bytes += (cap - s->cap) * sizeof *v;
        s->v = v;
        s->cap = cap;
    }
    m->set = s;
    m->pos = s->n;
    s->v[s->n++] = m;
}

//  Puts the record in the set of its value (or none), as it will be stored.
static void
s_index_rec(st_index_t *self, st_idx_t *ix, pd_qrec_t *qr)
{
    const pd_record_t *rec = qr->rec;
    bool has = pd_qrec_index_key(qr, pd_str(ix->attr), &self->key);
    pd_str_t key = {self->key.data, self->key.len};
    member_t *m = s_member_find(ix, rec->id);
    if (m)
        m->slot = rec->slot; //  the same while the record lives; a move gives it a new one
    if (m && m->set && has && m->set->klen == key.len && memcmp(m->set->key, key.ptr, key.len) == 0)
        return; //  unchanged: the usual update (a heartbeat, a status text)
    if (m)
        s_leave(ix, m);
    if (!has) {
        if (m) {
            pd_map_del(&ix->members, &m->ent);
            ix->bytes -= sizeof *m + m->idlen;
            free(m);
        }
        return;
    }
    if (!m) {
        if (rec->id.len > 255 || !(m = calloc(1, sizeof *m + rec->id.len)))
            abort();
        memcpy(m->id, rec->id.ptr, rec->id.len);
        m->idlen = (uint8_t)rec->id.len;
        m->slot = rec->slot;
        m->ent.hash = pd_map_hash(&ix->members, rec->id, PD_STR(""));
        pd_map_add(&ix->members, &m->ent);
        ix->bytes += sizeof *m + m->idlen;
    }
    s_join(ix, m, key);
}

static void
s_unindex(st_idx_t *ix, pd_str_t id)
{
    member_t *m = s_member_find(ix, id);
    if (!m)
        return;
    s_leave(ix, m);
    pd_map_del(&ix->members, &m->ent);
    ix->bytes -= sizeof *m + m->idlen;
    free(m);
}

void
st_index_change(st_index_t *self, const pd_record_t *rec, const pd_record_t *prev)
{
    const pd_record_t *r = rec ? rec : prev;
    if (!self->list || !r)
        return;
    pd_qrec_t qr; /* the metadata is parsed once, for all the project's indexes */
    pd_qrec_init(&qr, r);
    for (st_idx_t *ix = self->list; ix; ix = ix->next) {
        if (!pd_str_eqc(r->project, ix->project))
            continue;
        if (rec)
            s_index_rec(self, ix, &qr);
        else
            s_unindex(ix, prev->id);
    }
    pd_qrec_clear(&qr);
}

typedef struct {
    st_index_t *self;
    st_idx_t *ix;
} build_t;

static int
s_build_visit(const pd_record_t *rec, void *arg)
{
    build_t *b = arg;
    if (pd_str_eqc(rec->project, b->ix->project)) {
        pd_qrec_t qr;
        pd_qrec_init(&qr, rec);
        s_index_rec(b->self, b->ix, &qr);
        pd_qrec_clear(&qr);
    }
    return 0;
}

st_idx_t *
st_index_want(st_index_t *self, pd_table_t *table, pd_str_t project, pd_str_t attr)
{
    for (st_idx_t *ix = self->list; ix; ix = ix->next)
        if (pd_str_eqc(project, ix->project) && pd_str_eqc(attr, ix->attr))
            return ix;
    if (self->n >= ST_INDEX_MAX || project.len >= sizeof self->list->project ||
        !pd_query_indexable(attr))
        return NULL;
    st_idx_t *ix = calloc(1, sizeof *ix);
    if (!ix || !(ix->attr = strndup(attr.ptr, attr.len)))
        abort();
    memcpy(ix->project, project.ptr, project.len);
    pd_map_init(&ix->sets);
    RB_INIT(&ix->order);
    pd_map_init(&ix->members);
    ix->next = self->list;
    self->list = ix;
    self->n++;
    build_t b = {self, ix};
    pd_table_foreach(table, s_build_visit, &b);
    return ix;
}

size_t
st_idx_count(const st_idx_t *ix, pd_str_t key)
{
    const set_t *s = s_set_find(ix, key, pd_map_hash(&ix->sets, key, PD_STR("")));
    return s ? s->n : 0;
}

void
st_idx_each(const st_idx_t *ix, pd_str_t key, st_idx_visit_fn fn, void *arg)
{
    const set_t *s = s_set_find(ix, key, pd_map_hash(&ix->sets, key, PD_STR("")));
    for (uint32_t i = 0; s && i < s->n; i++)
        if (fn((pd_str_t){s->v[i]->id, s->v[i]->idlen}, s->v[i]->slot, arg))
            return;
}

//  The first set whose key is lo or after it, in value order.
static set_t *
s_lower_bound(const st_idx_t *ix, pd_str_t lo)
{
    set_t *s = RB_ROOT(&ix->order), *best = NULL;
    while (s) {
        if (pd_query_index_key_cmp((pd_str_t){s->key, s->klen}, lo) >= 0) {
            best = s;
            s = RB_LEFT(s, rb);
        } else {
            s = RB_RIGHT(s, rb);
        }
    }
    return best;
}

size_t
st_idx_range(const st_idx_t *ix, const pd_query_t *q, int filter, pd_str_t lo,
             st_idx_visit_fn fn, void *arg)
{
    size_t n = 0;
    for (set_t *s = s_lower_bound(ix, lo); s; s = RB_NEXT(set_tree, &ix->order, s)) {
        int pos = pd_query_index_range_pos(q, filter, (pd_str_t){s->key, s->klen});
        if (pos > 0)
            break;
        if (pos < 0)
            continue;
        n += s->n;
        for (uint32_t i = 0; fn && i < s->n; i++)
            if (fn((pd_str_t){s->v[i]->id, s->v[i]->idlen}, s->v[i]->slot, arg))
                return n;
    }
    return n;
}

size_t
st_idx_size(const st_idx_t *ix)
{
    return ix->members.n;
}

bool
st_idx_walk(const st_idx_t *ix, bool desc, pd_str_t from, st_idx_visit_fn fn,
            bool (*done)(void *arg), void *arg)
{
    set_t *s;
    if (!from.ptr)
        s = desc ? RB_MAX(set_tree, (struct set_tree *)&ix->order)
                 : RB_MIN(set_tree, (struct set_tree *)&ix->order);
    else if (!desc)
        s = s_lower_bound(ix, from);
    else { /* the last set at or before from */
        s = RB_ROOT(&ix->order);
        set_t *best = NULL;
        while (s) {
            if (pd_query_index_key_cmp((pd_str_t){s->key, s->klen}, from) <= 0) {
                best = s;
                s = RB_RIGHT(s, rb);
            } else {
                s = RB_LEFT(s, rb);
            }
        }
        s = best;
    }
    for (; s; s = desc ? RB_PREV(set_tree, &ix->order, s) : RB_NEXT(set_tree, &ix->order, s)) {
        for (uint32_t i = 0; i < s->n; i++)
            if (fn((pd_str_t){s->v[i]->id, s->v[i]->idlen}, s->v[i]->slot, arg))
                return true;
        if (done(arg))
            return true;
    }
    return false;
}

void
st_index_stats(const st_index_t *self, size_t *indexes, size_t *entries, size_t *bytes)
{
    *indexes = self->n;
    *entries = *bytes = 0;
    for (const st_idx_t *ix = self->list; ix; ix = ix->next) {
        *entries += ix->members.n;
        *bytes += ix->bytes + (ix->members.mask + 1 + ix->sets.mask + 1) * sizeof(void *);
    }
}
