/*  gw_replica — rosters answered from this gateway's own copy of a project's records
 *  (gw_replica.h says what and when). */
#include "gw_replica.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_log.h"
#include "pd_map.h"
#include "pd_record.h"

enum { RP_BUILDING, RP_READY, RP_REFUSED };

/*  A record: the fields a list reads, in one allocation. */
enum { E_ID, E_USER, E_STATUS, E_STATUS_JSON, E_SOURCE, E_ROLES, E_META, E_JSON, E__N };
#define RP_MAX_IX 2 //  attributes a replica indexes, at most (the first its lists ask for)

typedef struct rp_bucket rp_bucket_t;
typedef struct {
    pd_mapent_t me;       //  by id in the project's map
    uint32_t pos;         //  its place in the project's order
    uint32_t bpos[RP_MAX_IX]; //  its place in its bucket of each index
    rp_bucket_t *b[RP_MAX_IX]; //  that bucket (NULL: no key for the attribute)
    uint32_t len[E__N];   //  each string's length (E_*)
    json_t *meta;         //  the metadata parsed, once a filter read it (meta_parsed)
    bool meta_parsed;
    int64_t created, updated, expires;
    uint64_t version;
    char data[];          //  the strings, back to back
} rp_ent_t;

//  What a parsed metadata object is counted for (jansson does not say; measured with
//  mallinfo2: 223 bytes for {}, 544 for {"room":"hall","zone":"z12"}, 1082 for 55 bytes with an
//  array in an object).
#define RP_META_BYTES(len) (224 + 16 * (size_t)(len))

/*  An index of a replica: the records by their key for one attribute (pd_qrec_index_key), so
 *  that a list with an equal() on it visits the records of its values only. Buckets are
 *  unordered (a record leaves its bucket by a swap with the last). */
struct rp_bucket {
    pd_mapent_t me;       //  by key in the index's map
    rp_ent_t **v;
    uint32_t *pos;        //  each one's place in the project's order (kept by s_sort)
    uint32_t n, cap;
    uint32_t klen;
    char key[];
};

typedef struct {
    char *attr;           //  e.g. "metadata.room" (pd_query_indexable)
    size_t attr_len;
    pd_map_t keys;        //  key -> rp_bucket_t
} rp_ix_t;

typedef struct rp_proj rp_proj_t;
struct rp_proj {
    rp_proj_t *next;
    char *project;
    size_t project_len;
    int state;            //  RP_*
    pd_map_t ids;         //  id -> rp_ent_t
    rp_ent_t **order;     //  every record ($createdAt, $id) when sorted; NULLs where deleted
    size_t n, cap, holes;
    bool sorted;
    size_t bytes;         //  the entries' and the order's
    int64_t used_ms;      //  mono ms of the last list answered (or the build)
    int64_t until_ms;     //  building: given up then; refused: tried again then
    int nnodes;           //  the store set at the build
    uint64_t rid;         //  the dumps' request id
    uint64_t waiting;     //  nodes whose dump has not come (bit n)
    bool sent;            //  the dumps were asked for
    struct { int64_t gen, seq, epoch; } node[GW_MAX_STORES + 1];
    int64_t scan_max;     //  the nodes' least --list-scan-max (0: none)
    int64_t min_expires;  //  no record expires before (a bound: exact after s_sort compacts)
    rp_ix_t ix[RP_MAX_IX]; //  indexes, built when a list first needs them
    int nix;
    pd_msgw_t held;       //  the project's events while building
};

typedef struct rp_wait rp_wait_t;
struct rp_wait {
    rp_wait_t *prev, *next; //  in the waiting lists (linked while the bus is awaited)
    gw_replicas_t *rs;
    h2o_req_t *req;
    pd_query_t *q;
    gw_replica_list_t l;
    bool linked, done, failed;
    int nnodes;
    struct { int64_t gen, seq, epoch, from, total; } mark[GW_MAX_STORES + 1];
    h2o_timeout_entry_t timer;
};

struct gw_replicas {
    gw_t *gw;
    size_t max_bytes;     //  --list-replica
    rp_proj_t *projs;
    size_t bytes;
    uint64_t rid;
    rp_wait_t *waits;     //  lists waiting for the bus
    h2o_timeout_t wait_timeout;
    const rp_ent_t **page; //  scratch: a page's records
    size_t cap_page;
    uint64_t *marks;      //  scratch: the places in the order of an index's records (bits)
    size_t cap_marks;
    uint32_t *places;     //  scratch: the same, in order
    size_t cap_places;
    pd_buf_t key;         //  scratch: a record's index key; a query's
    pd_buf_t qkeys;
    struct rp_sort { pd_qsum_t sum; const rp_ent_t *e; pd_qkey_t key; } *sorted; //  scratch
    size_t cap_sorted;
    /* metrics */
    uint64_t served, indexed, fallbacks, builds, built, dropped, waited;
};

/* -------------------------------------------------------------------------- records */

#define RP_FIELDS(r)                                                                               \
    {&(r)->id,     &(r)->user_id,    &(r)->status,    &(r)->status_json,                          \
     &(r)->source, &(r)->read_roles, &(r)->meta_json, &(r)->json}

static void
s_ent_rec(const rp_ent_t *e, pd_record_t *r)
{
    memset(r, 0, sizeof *r);
    const char *p = e->data;
    pd_str_t *f[E__N] = RP_FIELDS(r);
    for (size_t i = 0; i < E__N; i++) {
        *f[i] = (pd_str_t){p, e->len[i]};
        p += e->len[i];
    }
    r->created_ms = e->created;
    r->updated_ms = e->updated;
    r->expires_ms = e->expires;
    r->version = e->version;
}

static pd_str_t
s_ent_str(const rp_ent_t *e, int field)
{
    size_t off = 0;
    for (int i = 0; i < field; i++)
        off += e->len[i];
    return (pd_str_t){e->data + off, e->len[field]};
}

static pd_str_t
s_ent_id(const rp_ent_t *e)
{
    return s_ent_str(e, E_ID);
}

static size_t
s_ent_size(const rp_ent_t *e)
{
    size_t n = sizeof *e;
    for (size_t i = 0; i < E__N; i++)
        n += e->len[i];
    if (e->meta_parsed)
        n += RP_META_BYTES(e->len[E_META]);
    return n + 2 * sizeof(void *); //  its map link and its place in the order
}

//  The bytes of r's strings.
static size_t
s_rec_bytes(const pd_record_t *r)
{
    const pd_str_t *f[E__N] = RP_FIELDS(r);
    size_t n = 0;
    for (size_t i = 0; i < E__N; i++)
        n += f[i]->len;
    return n;
}

static void
s_ent_unparse(rp_ent_t *e)
{
    json_decref(e->meta);
    e->meta = NULL;
    e->meta_parsed = false;
}

//  Writes r into e (which has room for it), but for its map link and place.
static void
s_ent_fill(rp_ent_t *e, const pd_record_t *r)
{
    const pd_str_t *f[E__N] = RP_FIELDS(r);
    char *p = e->data;
    s_ent_unparse(e);
    for (size_t i = 0; i < E__N; i++) {
        e->len[i] = (uint32_t)f[i]->len;
        if (f[i]->len)
            memmove(p, f[i]->ptr, f[i]->len);
        p += f[i]->len;
    }
    e->created = r->created_ms;
    e->updated = r->updated_ms;
    e->expires = r->expires_ms;
    e->version = r->version;
}

static rp_ent_t *
s_ent_new(const pd_record_t *r)
{
    rp_ent_t *e = malloc(sizeof *e + s_rec_bytes(r));
    if (!e)
        abort();
    memset(e, 0, sizeof *e);
    s_ent_fill(e, r);
    return e;
}

static void
s_ent_free(rp_ent_t *e)
{
    if (e)
        s_ent_unparse(e);
    free(e);
}

//  The default order: $createdAt, then $id (pd_query_key_cmp's for two such keys).
static int
s_ent_cmp(const rp_ent_t *a, const rp_ent_t *b)
{
    if (a->created != b->created)
        return a->created < b->created ? -1 : 1;
    return pd_str_cmp(s_ent_id(a), s_ent_id(b));
}

static int
s_ent_qcmp(const void *a, const void *b)
{
    const rp_ent_t *x = *(rp_ent_t *const *)a, *y = *(rp_ent_t *const *)b;
    if (!x || !y) //  deleted ones last (the caller drops them)
        return !x - !y;
    return s_ent_cmp(x, y);
}

static rp_ent_t *
s_find(rp_proj_t *pj, pd_str_t id)
{
    uint64_t h = pd_map_hash(&pj->ids, id, PD_STR_NULL);
    for (pd_mapent_t *me = pd_map_first(&pj->ids, h); me; me = me->next) {
        rp_ent_t *e = (rp_ent_t *)me;
        if (me->hash == h && pd_str_eq(s_ent_id(e), id))
            return e;
    }
    return NULL;
}

static void s_ix_add_all(gw_replicas_t *rs, rp_proj_t *pj, rp_ent_t *e);
static void s_ix_del_all(rp_proj_t *pj, rp_ent_t *e);

static void
s_remove(gw_replicas_t *rs, rp_proj_t *pj, rp_ent_t *e)
{
    s_ix_del_all(pj, e);
    pd_map_del(&pj->ids, &e->me);
    pj->order[e->pos] = NULL;
    pj->holes++;
    size_t sz = s_ent_size(e);
    pj->bytes -= sz;
    rs->bytes -= sz;
    s_ent_free(e);
}

//  Adds or replaces the record r. A change of a record it holds is written in place when it
//  fits its allocation (a renewal, most updates): no allocation per event.
static void
s_put(gw_replicas_t *rs, rp_proj_t *pj, const pd_record_t *r)
{
    rp_ent_t *old = s_find(pj, r->id);
    if (old) {
        s_ix_del_all(pj, old);
        size_t was = s_ent_size(old);
        if (old->created != r->created_ms)
            pj->sorted = false;
        if (malloc_usable_size(old) >= sizeof *old + s_rec_bytes(r)) {
            s_ent_fill(old, r);
        } else {
            rp_ent_t *e = s_ent_new(r);
            e->me = old->me;
            e->pos = old->pos;
            pd_map_del(&pj->ids, &old->me);
            s_ent_free(old);
            pd_map_add(&pj->ids, &e->me);
            pj->order[e->pos] = old = e;
        }
        pj->bytes += s_ent_size(old) - was;
        rs->bytes += s_ent_size(old) - was;
        if (old->expires < pj->min_expires)
            pj->min_expires = old->expires;
        s_ix_add_all(rs, pj, old);
        return;
    }
    rp_ent_t *e = s_ent_new(r);
    e->me.hash = pd_map_hash(&pj->ids, r->id, PD_STR_NULL);
    if (pj->n == pj->cap) {
        pj->cap = pj->cap ? 2 * pj->cap : 1024;
        pj->order = realloc(pj->order, pj->cap * sizeof *pj->order);
        if (!pj->order)
            abort();
    }
    /* appended: still in order if it sorts after the last (a hole there: sorted again) */
    if (pj->n && (!pj->order[pj->n - 1] || s_ent_cmp(pj->order[pj->n - 1], e) > 0))
        pj->sorted = false;
    e->pos = (uint32_t)pj->n++;
    pj->order[e->pos] = e;
    pd_map_add(&pj->ids, &e->me);
    if (e->expires < pj->min_expires)
        pj->min_expires = e->expires;
    pj->bytes += s_ent_size(e);
    rs->bytes += s_ent_size(e);
    s_ix_add_all(rs, pj, e);
}

//  The order without holes, sorted.
static void
s_sort(rp_proj_t *pj)
{
    if (pj->sorted && !pj->holes)
        return;
    if (!pj->sorted)
        qsort(pj->order, pj->n, sizeof *pj->order, s_ent_qcmp);
    size_t k = 0;
    pj->min_expires = INT64_MAX;
    for (size_t i = 0; i < pj->n; i++)
        if (pj->order[i]) {
            rp_ent_t *e = pj->order[k] = pj->order[i];
            e->pos = (uint32_t)k++;
            if (e->expires < pj->min_expires)
                pj->min_expires = e->expires;
            for (int x = 0; x < RP_MAX_IX; x++)
                if (e->b[x])
                    e->b[x]->pos[e->bpos[x]] = e->pos;
        }
    pj->n = k;
    pj->holes = 0;
    pj->sorted = true;
}

/* -------------------------------------------------------------------------- indexes */

//  A record as pd_query reads it, with its metadata as parsed before (s_qrec_end keeps what a
//  query parses now, while --list-replica has room; else it is freed with the view).
static void
s_qrec_begin(rp_ent_t *e, pd_record_t *r, pd_qrec_t *qr)
{
    s_ent_rec(e, r);
    pd_qrec_init(qr, r);
    if (e->meta_parsed) {
        qr->meta = e->meta;
        qr->meta_tried = true;
    }
}

static void
s_qrec_end(gw_replicas_t *rs, rp_proj_t *pj, rp_ent_t *e, pd_qrec_t *qr)
{
    size_t mb = RP_META_BYTES(e->len[E_META]);
    if (qr->meta_tried && !e->meta_parsed && rs->bytes + mb <= rs->max_bytes) {
        e->meta = qr->meta;
        e->meta_parsed = true;
        pj->bytes += mb;
        rs->bytes += mb;
    }
    if (e->meta_parsed)
        qr->meta = NULL; /* the entry's */
    pd_qrec_clear(qr);
}

//  Puts e in its bucket of index k (none if it has no key for the attribute).
static void
s_ix_add(gw_replicas_t *rs, rp_proj_t *pj, int k, rp_ent_t *e)
{
    rp_ix_t *ix = &pj->ix[k];
    pd_record_t r;
    pd_qrec_t qr;
    s_qrec_begin(e, &r, &qr);
    bool has = pd_qrec_index_key(&qr, (pd_str_t){ix->attr, ix->attr_len}, &rs->key);
    s_qrec_end(rs, pj, e, &qr);
    e->b[k] = NULL;
    if (!has)
        return;
    pd_str_t key = {rs->key.data, rs->key.len};
    uint64_t h = pd_map_hash(&ix->keys, key, PD_STR_NULL);
    rp_bucket_t *b = NULL;
    for (pd_mapent_t *me = pd_map_first(&ix->keys, h); me && !b; me = me->next) {
        rp_bucket_t *c = (rp_bucket_t *)me;
        if (me->hash == h && c->klen == key.len && memcmp(c->key, key.ptr, key.len) == 0)
            b = c;
    }
    if (!b) {
        if (!(b = calloc(1, sizeof *b + key.len)))
            abort();
        memcpy(b->key, key.ptr, key.len);
        b->klen = (uint32_t)key.len;
        b->me.hash = h;
        pd_map_add(&ix->keys, &b->me);
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 8;
        if (!(b->v = realloc(b->v, b->cap * sizeof *b->v)) ||
            !(b->pos = realloc(b->pos, b->cap * sizeof *b->pos)))
            abort();
    }
    e->bpos[k] = b->n;
    b->pos[b->n] = e->pos;
    b->v[b->n++] = e;
    e->b[k] = b;
}

//  Takes e out of its bucket of index k (a bucket left empty is freed).
static void
s_ix_del(rp_proj_t *pj, int k, rp_ent_t *e)
{
    rp_bucket_t *b = e->b[k];
    if (!b)
        return;
    rp_ent_t *last = b->v[--b->n];
    b->v[e->bpos[k]] = last;
    b->pos[e->bpos[k]] = b->pos[b->n];
    last->bpos[k] = e->bpos[k];
    e->b[k] = NULL;
    if (!b->n) {
        pd_map_del(&pj->ix[k].keys, &b->me);
        free(b->v);
        free(b->pos);
        free(b);
    }
}

static void
s_ix_add_all(gw_replicas_t *rs, rp_proj_t *pj, rp_ent_t *e)
{
    for (int k = 0; k < pj->nix; k++)
        s_ix_add(rs, pj, k, e);
}

static void
s_ix_del_all(rp_proj_t *pj, rp_ent_t *e)
{
    for (int k = 0; k < pj->nix; k++)
        s_ix_del(pj, k, e);
}

static void
s_ix_free(rp_proj_t *pj)
{
    for (int k = 0; k < pj->nix; k++) {
        rp_ix_t *ix = &pj->ix[k];
        for (size_t i = 0; i <= ix->keys.mask; i++)
            for (pd_mapent_t *me = pd_map_slot(&ix->keys, i), *next; me; me = next) {
                next = me->next;
                free(((rp_bucket_t *)me)->v);
                free(((rp_bucket_t *)me)->pos);
                free(me);
            }
        pd_map_free(&ix->keys);
        free(ix->attr);
    }
    pj->nix = 0;
}

//  The index of attr, built now if the replica has none yet and room for one; -1 if not.
static int
s_ix_want(gw_replicas_t *rs, rp_proj_t *pj, pd_str_t attr)
{
    for (int k = 0; k < pj->nix; k++)
        if (pj->ix[k].attr_len == attr.len && memcmp(pj->ix[k].attr, attr.ptr, attr.len) == 0)
            return k;
    if (pj->nix == RP_MAX_IX)
        return -1;
    int k = pj->nix++;
    rp_ix_t *ix = &pj->ix[k];
    if (!(ix->attr = malloc(attr.len + 1)))
        abort();
    memcpy(ix->attr, attr.ptr, attr.len);
    ix->attr[attr.len] = 0;
    ix->attr_len = attr.len;
    pd_map_init(&ix->keys);
    for (size_t i = 0; i < pj->n; i++)
        if (pj->order[i])
            s_ix_add(rs, pj, k, pj->order[i]);
    return k;
}

/* -------------------------------------------------------------------------- projects */

static rp_proj_t *
s_proj_find(gw_replicas_t *rs, pd_str_t project)
{
    for (rp_proj_t *pj = rs->projs; pj; pj = pj->next)
        if (pj->project_len == project.len && memcmp(pj->project, project.ptr, project.len) == 0)
            return pj;
    return NULL;
}

static void
s_proj_clear(gw_replicas_t *rs, rp_proj_t *pj)
{
    s_ix_free(pj);
    for (size_t i = 0; i < pj->n; i++)
        s_ent_free(pj->order[i]);
    free(pj->order);
    pj->order = NULL;
    pj->n = pj->cap = pj->holes = 0;
    pd_map_free(&pj->ids);
    pd_map_init(&pj->ids);
    pd_msgw_reset(&pj->held);
    rs->bytes -= pj->bytes;
    pj->bytes = 0;
}

static void
s_proj_free(gw_replicas_t *rs, rp_proj_t *pj)
{
    s_proj_clear(rs, pj);
    pd_map_free(&pj->ids);
    pd_msgw_destroy(&pj->held);
    free(pj->project);
    free(pj);
}

static void
s_drop(gw_replicas_t *rs, rp_proj_t *pj, const char *why)
{
    for (rp_proj_t **at = &rs->projs; *at; at = &(*at)->next)
        if (*at == pj) {
            *at = pj->next;
            break;
        }
    if (pj->state != RP_REFUSED) {
        rs->dropped++;
        pd_log_info("roster replica of project %s dropped: %s", pj->project, why);
    }
    s_proj_free(rs, pj);
}

//  A failed build: no other for the project before GW_REPLICA_RETRY_MS (retry_ms: sooner).
static void
s_refuse_for(gw_replicas_t *rs, rp_proj_t *pj, const char *why, int64_t retry_ms)
{
    pd_log_info("roster replica of project %s not kept: %s", pj->project, why);
    s_proj_clear(rs, pj);
    pj->state = RP_REFUSED;
    pj->until_ms = pd_mono_ms() + retry_ms;
}

static void
s_refuse(gw_replicas_t *rs, rp_proj_t *pj, const char *why)
{
    s_refuse_for(rs, pj, why, GW_REPLICA_RETRY_MS);
}

//  Every node up and reached directly, and proven on the bus.
static bool
s_nodes_ok(gw_t *gw)
{
    if (gw->nstores < 1 || gw->nstores > 63 || !gw_bus_live(gw) || !gw->bus_proven)
        return false;
    for (int n = 1; n <= gw->nstores; n++)
        if (!gw->stores[n].sock || !gw->stores[n].up)
            return false;
    return true;
}

static void
s_dump_send(gw_replicas_t *rs, rp_proj_t *pj)
{
    gw_t *gw = rs->gw;
    if (!s_nodes_ok(gw))
        return; /* the tick asks again, until the build's deadline */
    size_t room = rs->max_bytes > rs->bytes ? rs->max_bytes - rs->bytes : 0;
    pj->sent = true;
    pj->nnodes = gw->nstores;
    pj->rid = ++rs->rid;
    pj->waiting = 0;
    for (int n = 1; n <= gw->nstores; n++) {
        pd_msgw_t *w = gw_send_store(gw, n, PD_MSG_DUMP, pj->rid);
        if (!w) {
            s_refuse_for(rs, pj, "a store node is out of reach", GW_REPLICA_AGAIN_MS);
            return;
        }
        pj->waiting |= 1ULL << n;
        pd_msgw_str(w, PD_F_PROJECT, pj->project, pj->project_len);
        pd_msgw_int(w, PD_F_LIMIT, (int64_t)(room / 256)); /* no record takes less */
        gw_send_end(gw);
    }
}

static void
s_build(gw_replicas_t *rs, pd_str_t project)
{
    rp_proj_t *pj = calloc(1, sizeof *pj);
    if (!pj || !(pj->project = malloc(project.len + 1)))
        abort();
    memcpy(pj->project, project.ptr, project.len);
    pj->project[project.len] = 0;
    pj->project_len = project.len;
    pj->state = RP_BUILDING;
    pj->sorted = true;
    pj->min_expires = INT64_MAX;
    pj->used_ms = pd_mono_ms();
    pj->until_ms = pj->used_ms + GW_REPLICA_BUILD_MS;
    pd_map_init(&pj->ids);
    pd_msgw_init(&pj->held);
    pj->next = rs->projs;
    rs->projs = pj;
    rs->builds++;
    gw_bus_join(rs->gw);
    s_dump_send(rs, pj);
}

//  Keeps the bytes within the bound: the least recently listed replicas go first.
static void
s_trim(gw_replicas_t *rs)
{
    while (rs->bytes > rs->max_bytes) {
        rp_proj_t *lru = NULL;
        for (rp_proj_t *pj = rs->projs; pj; pj = pj->next)
            if (pj->bytes && (!lru || pj->used_ms < lru->used_ms))
                lru = pj;
        if (!lru)
            return;
        s_refuse(rs, lru, "over --list-replica bytes");
    }
}

/* -------------------------------------------------------------------------- events */

static void
s_apply(gw_replicas_t *rs, rp_proj_t *pj, const pd_msg_t *ev, const pd_record_t *r)
{
    int64_t node = ev->i[PD_F_NODE];
    if (node < 1 || node > pj->nnodes) {
        s_drop(rs, pj, "a store node joined");
        return;
    }
    if (ev->i[PD_F_GEN] != pj->node[node].gen) {
        s_drop(rs, pj, "a store node restarted");
        return;
    }
    if (ev->i[PD_F_SEQ] <= pj->node[node].seq)
        return; /* in the dump already */
    if (ev->i[PD_F_ACTION] == PD_ACT_DELETE) {
        rp_ent_t *e = s_find(pj, r->id);
        if (e)
            s_remove(rs, pj, e);
    } else {
        s_put(rs, pj, r);
    }
}

static void
s_on_held(const pd_msg_t *m, void *arg)
{
    gw_replicas_t *rs = arg;
    pd_record_t r;
    pd_record_read(m, &r);
    rp_proj_t *pj = s_proj_find(rs, r.project);
    if (pj && pj->state == RP_READY)
        s_apply(rs, pj, m, &r);
}

void
gw_replica_on_event(gw_t *gw, const pd_msg_t *ev, const pd_record_t *rec)
{
    gw_replicas_t *rs = gw->replicas;
    if (!rs->projs || ev->type != PD_MSG_EVENT)
        return;
    rp_proj_t *pj = s_proj_find(rs, rec->project);
    if (!pj || !rec->id.len)
        return;
    if (pj->state == RP_BUILDING && pj->sent) {
        pd_msgw_forward(&pj->held, ev, ev->rid);
        if (pj->held.sb.size > (16u << 20))
            s_refuse(rs, pj, "too many events while it was being built");
    } else if (pj->state == RP_BUILDING) {
        return; /* the dumps, not asked for yet, will hold it */
    } else if (pj->state == RP_READY) {
        s_apply(rs, pj, ev, rec);
        if (rs->bytes > rs->max_bytes)
            s_trim(rs);
    }
}

void
gw_replica_on_dump(gw_t *gw, const pd_msg_t *m)
{
    gw_replicas_t *rs = gw->replicas;
    rp_proj_t *pj = NULL;
    for (rp_proj_t *p = rs->projs; p; p = p->next)
        if (p->state == RP_BUILDING && p->sent && p->rid == m->rid)
            pj = p;
    int64_t node = m->i[PD_F_NODE];
    if (!pj || node < 1 || node > pj->nnodes || !((pj->waiting >> node) & 1))
        return; /* late, or not ours */
    if (m->i[PD_F_ERR] != PD_ERR_OK && (m->i[PD_F_FLAGS] & PD_FL_MOVED)) {
        s_refuse_for(rs, pj, "records move between store nodes", GW_REPLICA_AGAIN_MS);
        return;
    }
    if (m->i[PD_F_ERR] != PD_ERR_OK) {
        s_refuse(rs, pj, "a store node refused its records: more than --list-replica holds");
        return;
    }
    pd_mpr_t a = pd_mpr(m->s[PD_F_ITEMS]);
    uint32_t n;
    if (m->i[PD_F_FROM] != pj->nnodes || m->i[PD_F_TOTAL] != pj->nnodes ||
        !pd_msg_has(m, PD_F_ITEMS) || !pd_mpr_array(&a, &n)) {
        s_refuse_for(rs, pj, "a store node's answer does not fit the store set",
                     GW_REPLICA_AGAIN_MS);
        return;
    }
    pj->node[node].gen = m->i[PD_F_GEN];
    pj->node[node].seq = m->i[PD_F_SEQ];
    pj->node[node].epoch = m->i[PD_F_EPOCH];
    int64_t cap = m->i[PD_F_LIMIT];
    if (cap > 0 && (!pj->scan_max || cap < pj->scan_max))
        pj->scan_max = cap;
    for (uint32_t i = 0; i < n; i++) {
        pd_record_t r;
        if (!pd_record_read_item(&a, &r)) {
            gw->malformed++;
            s_refuse(rs, pj, "a store node's answer is malformed");
            return;
        }
        s_put(rs, pj, &r);
    }
    pj->waiting &= ~(1ULL << node);
    if (pj->waiting)
        return;
    pj->state = RP_READY;
    pj->used_ms = pd_mono_ms();
    rs->built++;
    pd_msgw_t held = pj->held;
    pd_msgw_init(&pj->held);
    if (held.count) {
        msgpack_zone z;
        msgpack_zone_init(&z, 4096);
        pd_msg_each(held.sb.data, held.sb.size, &z, s_on_held, rs);
        msgpack_zone_destroy(&z);
    }
    pd_msgw_destroy(&held);
    pd_log_info("roster replica built: %zu bytes in all", rs->bytes);
    s_trim(rs);
}

void
gw_replica_drop_all(gw_t *gw, const char *why)
{
    gw_replicas_t *rs = gw->replicas;
    for (rp_proj_t *pj = rs ? rs->projs : NULL, *next; pj; pj = next) {
        next = pj->next;
        if (pj->state != RP_BUILDING || pj->sent) /* (one not asked yet starts afresh) */
            s_drop(rs, pj, why);
    }
}

bool
gw_replica_idle(const gw_t *gw)
{
    const gw_replicas_t *rs = gw->replicas;
    for (const rp_proj_t *pj = rs ? rs->projs : NULL; pj; pj = pj->next)
        if (pj->state != RP_REFUSED)
            return false;
    return true;
}

/* -------------------------------------------------------------------------- lists */

static void
s_wait_unlink(rp_wait_t *w)
{
    if (w->linked) {
        if (w->prev)
            w->prev->next = w->next;
        else
            w->rs->waits = w->next;
        if (w->next)
            w->next->prev = w->prev;
        w->linked = false;
    }
    if (h2o_timeout_is_linked(&w->timer))
        h2o_timeout_unlink(&w->timer);
}

static void
s_wait_dispose(void *ptr)
{
    rp_wait_t *w = ptr;
    s_wait_unlink(w);
    pd_query_destroy(&w->q);
}

static void
s_fallback(rp_wait_t *w)
{
    if (w->done)
        return;
    w->done = true;
    s_wait_unlink(w);
    w->rs->fallbacks++;
    w->l.fallback(w->rs->gw, w->req, w->l.arg);
}

//  Whether the replica is the one the marks describe: same nodes, generations, store set. If
//  not, why not, in why.
static bool
s_marks_fit(const rp_wait_t *w, const rp_proj_t *pj, char *why, size_t len)
{
    if (w->failed) {
        snprintf(why, len, "a store node did not say where its events stand");
        return false;
    }
    if (pj->state != RP_READY || pj->nnodes != w->nnodes) {
        snprintf(why, len, "the store set changed (%d nodes, now %d)", pj->nnodes, w->nnodes);
        return false;
    }
    for (int n = 1; n <= w->nnodes; n++) {
        if (w->mark[n].gen != pj->node[n].gen) {
            snprintf(why, len, "store node %d restarted", n);
            return false;
        }
        if (w->mark[n].epoch != pj->node[n].epoch || w->mark[n].from != pj->nnodes ||
            w->mark[n].total != pj->nnodes) {
            snprintf(why, len, "store node %d saw the store set change (%lld -> %lld nodes)", n,
                     (long long)w->mark[n].from, (long long)w->mark[n].total);
            return false;
        }
    }
    return true;
}

//  Every node's events up to its mark handled here: in the replica's dump already, or handled
//  since (gw_realtime.c checks each node's sequence).
static bool
s_caught_up(const rp_wait_t *w, const rp_proj_t *pj)
{
    for (int n = 1; n <= w->nnodes; n++) {
        int64_t gen, seq;
        if (w->mark[n].seq <= pj->node[n].seq)
            continue;
        if (!gw_rt_seq(w->rs->gw, n, &gen, &seq) || gen != w->mark[n].gen || seq < w->mark[n].seq)
            return false;
    }
    return true;
}

static int
s_sorted_cmp(const void *a, const void *b, void *arg)
{
    const struct rp_sort *x = a, *y = b;
    int c = pd_query_sum_cmp(&x->sum, &y->sum);
    return c ? c : pd_query_key_cmp(arg, &x->key, &y->key);
}

static void
s_page_push(gw_replicas_t *rs, size_t n, const rp_ent_t *e)
{
    if (n == rs->cap_page) {
        rs->cap_page = rs->cap_page ? 2 * rs->cap_page : 1024;
        rs->page = realloc(rs->page, rs->cap_page * sizeof *rs->page);
        if (!rs->page)
            abort();
    }
    rs->page[n] = e;
}

/*  The records a list visits: every one, in order, or (when the query has an equal() on an
 *  attribute the project indexes) those of the index's buckets for its values: their places
 *  marked in a bitmap, then listed in the order's order in rs->places (no sort, and no record
 *  read before its visit). Returns how many places that list holds, and sets *attr; or
 *  returns pj->n (every place) and leaves *attr null. */
static size_t
s_index_places(gw_replicas_t *rs, rp_proj_t *pj, const pd_query_t *q, pd_str_t indexes,
               pd_str_t *attr)
{
    size_t words = (pj->n + 63) / 64;
    int k = -1;
    for (pd_str_t a = pd_list_first(indexes); a.ptr && k < 0; a = pd_list_next(indexes, a)) {
        pd_buf_reset(&rs->qkeys);
        k = pd_query_index_keys(q, a, &rs->qkeys) < 0 ? -1 : s_ix_want(rs, pj, a);
        if (k >= 0)
            *attr = a;
    }
    if (k < 0)
        return pj->n;
    rs->indexed++;
    if (words > rs->cap_marks) {
        rs->cap_marks = 2 * words;
        if (!(rs->marks = realloc(rs->marks, rs->cap_marks * sizeof *rs->marks)))
            abort();
    }
    memset(rs->marks, 0, words * sizeof *rs->marks);
    size_t off = 0, n = 0;
    for (pd_str_t key; pd_query_index_key_next(&rs->qkeys, &off, &key);) {
        uint64_t h = pd_map_hash(&pj->ix[k].keys, key, PD_STR_NULL);
        for (pd_mapent_t *me = pd_map_first(&pj->ix[k].keys, h); me; me = me->next) {
            rp_bucket_t *b = (rp_bucket_t *)me;
            if (me->hash != h || b->klen != key.len || memcmp(b->key, key.ptr, key.len))
                continue;
            for (uint32_t j = 0; j < b->n; j++)
                rs->marks[b->pos[j] / 64] |= 1ULL << (b->pos[j] % 64);
        }
    }
    for (size_t wd = 0; wd < words; wd++)
        for (uint64_t bits = rs->marks[wd]; bits; bits &= bits - 1) {
            if (n == rs->cap_places) {
                rs->cap_places = rs->cap_places ? 2 * rs->cap_places : 1024;
                if (!(rs->places = realloc(rs->places, rs->cap_places * sizeof *rs->places)))
                    abort();
            }
            rs->places[n++] = (uint32_t)(wd * 64 + (size_t)__builtin_ctzll(bits));
        }
    return n;
}

#define RP_AHEAD 8 //  records read ahead: an index's are scattered (a cache miss each)

//  The list's answer, from the replica.
static void
s_serve(rp_wait_t *w, rp_proj_t *pj)
{
    gw_replicas_t *rs = w->rs;
    const pd_query_t *q = w->q;
    int64_t offset = pd_query_offset(q), limit = pd_query_limit(q), total = 0;
    size_t n = 0, len = 0, nsorted = 0;
    bool ordered = pd_query_norder(q) > 0;
    if (!ordered || pd_list_first(w->l.indexes).ptr)
        s_sort(pj); /* (a record's place is then its rank; no hole is left) */
    pd_str_t ixattr = PD_STR_NULL;
    size_t ncand = s_index_places(rs, pj, q, w->l.indexes, &ixattr);
    /* Every record to visit matches (an API key, no filter but the index's equal(), none past
     * its expiry): the page is a slice of them and the total their number, so the records
     * before the offset are not read. */
    bool all = !ordered && w->l.bypass && pd_query_nfilters(q) == (ixattr.ptr ? 1u : 0u);
    if (all && pj->min_expires <= w->l.now) { /* the bound may be stale (renewed): made exact */
        pj->min_expires = INT64_MAX;
        for (size_t i = 0; i < pj->n; i++)
            if (pj->order[i] && pj->order[i]->expires < pj->min_expires)
                pj->min_expires = pj->order[i]->expires;
    }
    all = all && pj->min_expires > w->l.now;
    if (all) {
        total = (int64_t)ncand;
        for (size_t i = (size_t)offset; i < ncand && (int64_t)n < limit; i++) {
            if (i + RP_AHEAD < ncand)
                __builtin_prefetch(pj->order[ixattr.ptr ? rs->places[i + RP_AHEAD] : i + RP_AHEAD]);
            const rp_ent_t *e = pj->order[ixattr.ptr ? rs->places[i] : i];
            s_page_push(rs, n++, e);
            len += e->len[E_JSON];
        }
        ncand = 0; /* (nothing left to visit) */
    }
    for (size_t i = 0; i < ncand; i++) {
        /* the place's slot in the order twice as far ahead, then the record it names */
        if (ixattr.ptr && i + 2 * RP_AHEAD < ncand)
            __builtin_prefetch(&pj->order[rs->places[i + 2 * RP_AHEAD]]);
        if (i + RP_AHEAD < ncand)
            __builtin_prefetch(pj->order[ixattr.ptr ? rs->places[i + RP_AHEAD] : i + RP_AHEAD]);
        rp_ent_t *e = pj->order[ixattr.ptr ? rs->places[i] : i];
        if (!e || e->expires <= w->l.now)
            continue;
        pd_record_t r;
        pd_qrec_t qr;
        s_qrec_begin(e, &r, &qr);
        if (!w->l.bypass && !pd_roles_intersect(r.read_roles, w->l.roles)) {
            s_qrec_end(rs, pj, e, &qr);
            continue;
        }
        /* a record of the index's buckets meets its equal(): not read again (no metadata
         * parsed for it) */
        bool ok = ixattr.ptr ? pd_query_match_but(q, &qr, ixattr) : pd_query_match(q, &qr);
        if (ok && ordered) {
            if (nsorted == rs->cap_sorted) {
                rs->cap_sorted = rs->cap_sorted ? 2 * rs->cap_sorted : 1024;
                rs->sorted = realloc(rs->sorted, rs->cap_sorted * sizeof *rs->sorted);
                if (!rs->sorted)
                    abort();
            }
            struct rp_sort *s = &rs->sorted[nsorted++];
            s->e = e;
            pd_query_key(q, &qr, &s->key); /* views into e: it lives through this call */
            pd_query_key_sum(q, &s->key, &s->sum);
        }
        s_qrec_end(rs, pj, e, &qr);
        if (!ok)
            continue;
        total++;
        if (!ordered && total > offset && (int64_t)n < limit) {
            s_page_push(rs, n++, e);
            len += e->len[E_JSON];
        }
        if (!ordered && (int64_t)n == limit && (!w->l.total || total >= PD_QUERY_TOTAL_CAP))
            break;
    }
    if (ordered) {
        if (nsorted)
            qsort_r(rs->sorted, nsorted, sizeof *rs->sorted, s_sorted_cmp, (void *)q);
        for (size_t i = (size_t)offset; i < nsorted && (int64_t)n < limit; i++) {
            s_page_push(rs, n++, rs->sorted[i].e);
            len += rs->sorted[i].e->len[E_JSON];
        }
    }
    if (!w->l.total)
        total = 0;
    else if (total > PD_QUERY_TOTAL_CAP)
        total = PD_QUERY_TOTAL_CAP;
    char head[PD_PAGE_HEAD_MAX];
    size_t hl = pd_page_head(head, total), blen = pd_page_len(hl, n, len);
    char *body = gw_big_alloc(rs->gw, w->req, blen), *at = body;
    memcpy(at, head, hl);
    at += hl;
    for (size_t i = 0; i < n; i++) {
        const rp_ent_t *e = rs->page[i];
        if (i)
            *at++ = ',';
        pd_str_t js = s_ent_str(e, E_JSON);
        memcpy(at, js.ptr, js.len);
        at += js.len;
    }
    memcpy(at, PD_PAGE_TAIL, sizeof PD_PAGE_TAIL - 1);
    pj->used_ms = pd_mono_ms();
    rs->served++;
    w->done = true;
    s_wait_unlink(w);
    gw_respond_pool(rs->gw, w->req, w->l.route, 200, "application/json", body, blen,
                    w->l.start_ns);
}

//  Answers the list if it can be, now; false while the bus is awaited.
static bool
s_try(rp_wait_t *w)
{
    rp_proj_t *pj = s_proj_find(w->rs, w->l.project);
    char why[128];
    if (!pj || !s_marks_fit(w, pj, why, sizeof why)) {
        if (pj && pj->state == RP_READY && !w->failed)
            s_drop(w->rs, pj, why);
        s_fallback(w);
        return true;
    }
    if (!s_caught_up(w, pj))
        return false;
    s_serve(w, pj);
    return true;
}

static void
s_wait_timeout(h2o_timeout_entry_t *entry)
{
    rp_wait_t *w = H2O_STRUCT_FROM_MEMBER(rp_wait_t, timer, entry);
    if (s_try(w))
        return;
    rp_proj_t *pj = s_proj_find(w->rs, w->l.project);
    char why[160] = "";
    for (int n = 1; n <= w->nnodes && !why[0]; n++) {
        int64_t gen = 0, seq = -1;
        bool known = gw_rt_seq(w->rs->gw, n, &gen, &seq);
        if (pj && w->mark[n].seq > pj->node[n].seq &&
            (!known || gen != w->mark[n].gen || seq < w->mark[n].seq))
            snprintf(why, sizeof why, "store node %d's events up to %lld did not come in %d ms "
                     "(%s %lld)", n, (long long)w->mark[n].seq, GW_REPLICA_WAIT_MS,
                     known ? "handled up to" : "none known, generation", (long long)seq);
    }
    if (pj)
        s_drop(w->rs, pj, why);
    s_fallback(w);
}

//  A node's mark (a DUMP with FLAGS MARK), answered as a REPLY to the list's pending request.
static void
s_on_mark(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    (void)gw;
    rp_wait_t *w = p->user;
    int64_t node = m->i[PD_F_NODE];
    if (m->i[PD_F_ERR] != PD_ERR_OK || node < 1 || node > w->nnodes) {
        w->failed = true;
    } else {
        w->mark[node].gen = m->i[PD_F_GEN];
        w->mark[node].seq = m->i[PD_F_SEQ];
        w->mark[node].epoch = m->i[PD_F_EPOCH];
        w->mark[node].from = m->i[PD_F_FROM];
        w->mark[node].total = m->i[PD_F_TOTAL];
    }
    if (p->more)
        return; /* more to come */
    p->req = NULL;
    if (s_try(w))
        return;
    w->rs->waited++;
    w->linked = true;
    w->prev = NULL;
    w->next = w->rs->waits;
    if (w->next)
        w->next->prev = w;
    w->rs->waits = w;
    h2o_timeout_link(gw->ctx.loop, &w->rs->wait_timeout, &w->timer);
}

void
gw_replica_on_bus(gw_t *gw)
{
    gw_replicas_t *rs = gw->replicas;
    for (rp_wait_t *w = rs->waits, *next; w; w = next) {
        next = w->next;
        s_try(w);
    }
}

bool
gw_replica_list(gw_t *gw, h2o_req_t *req, pd_query_t *q, const gw_replica_list_t *l)
{
    gw_replicas_t *rs = gw->replicas;
    if (!rs->max_bytes)
        return false;
    rp_proj_t *pj = s_proj_find(rs, l->project);
    int64_t now = pd_mono_ms();
    if (!pj) {
        if (pd_query_offset(q) + pd_query_limit(q) >= GW_REPLICA_MIN_PAGE)
            s_build(rs, l->project);
        return false;
    }
    if (pj->state == RP_REFUSED) {
        if (now >= pj->until_ms)
            s_drop(rs, pj, "tried again");
        return false;
    }
    if (pj->state != RP_READY) {
        if (!pj->sent)
            s_dump_send(rs, pj);
        return false;
    }
    /* metadata: a node reads that of --list-scan-max records of the project at most, else it
     * refuses the list; a replica holding no more than that answers as the nodes would */
    bool before, scan_over = pj->scan_max && (int64_t)pj->ids.n > pj->scan_max;
    if (pd_query_cursor(q, &before).ptr || (scan_over && pd_query_reads_meta(q)) ||
        !s_nodes_ok(gw) || gw->nstores != pj->nnodes)
        return false;
    rp_wait_t *w = h2o_mem_alloc_shared(&req->pool, sizeof *w, s_wait_dispose);
    memset(w, 0, sizeof *w);
    w->rs = rs;
    w->req = req;
    w->q = q;
    w->l = *l;
    w->nnodes = pj->nnodes;
    w->timer.cb = s_wait_timeout;
    gw_pending_t *p = gw_pending_new(gw, req, l->route, s_on_mark);
    p->start_ns = l->start_ns;
    p->user = w;
    p->more = (uint32_t)w->nnodes - 1;
    for (int n = 1; n <= w->nnodes; n++)
        p->nodes |= 1ULL << n;
    for (int n = 1; n <= w->nnodes; n++) {
        pd_msgw_t *m = gw_send_store(gw, n, PD_MSG_DUMP, p->rid);
        if (!m) {
            gw_fail_answer(gw, p); /* s_on_mark: failed, and the fallback once all are in */
            continue;
        }
        pd_msgw_str(m, PD_F_PROJECT, pj->project, pj->project_len);
        pd_msgw_int(m, PD_F_FLAGS, PD_FL_MARK);
        gw_send_end(gw);
    }
    return true;
}

/* -------------------------------------------------------------------------- upkeep */

void
gw_replica_tick(gw_t *gw)
{
    gw_replicas_t *rs = gw->replicas;
    int64_t now = pd_mono_ms();
    for (rp_proj_t *pj = rs->projs, *next; pj; pj = next) {
        next = pj->next;
        if (pj->state == RP_READY && now - pj->used_ms >= GW_REPLICA_IDLE_MS)
            s_drop(rs, pj, "not listed for a minute");
        else if (pj->state == RP_REFUSED && now >= pj->until_ms)
            s_drop(rs, pj, "tried again");
        else if (pj->state == RP_BUILDING && now >= pj->until_ms)
            s_refuse_for(rs, pj, "the store nodes did not answer in time", GW_REPLICA_AGAIN_MS);
        else if (pj->state == RP_BUILDING && !pj->sent)
            s_dump_send(rs, pj);
    }
}

void
gw_replica_metrics(gw_t *gw, pd_buf_t *b)
{
    gw_replicas_t *rs = gw->replicas;
    size_t n = 0, records = 0;
    for (rp_proj_t *pj = rs->projs; pj; pj = pj->next)
        if (pj->state == RP_READY) {
            n++;
            records += pj->ids.n;
        }
    pd_buf_addf(b,
                "# HELP presenced_gateway_list_replica_total Lists a roster replica took: "
                "answered from it, or sent through the broker after all (gw_replica.h)\n"
                "# TYPE presenced_gateway_list_replica_total counter\n"
                "presenced_gateway_list_replica_total{gateway=\"%d\",result=\"served\"} %llu\n"
                "presenced_gateway_list_replica_total{gateway=\"%d\",result=\"fallback\"} %llu\n"
                "# HELP presenced_gateway_list_replica_indexed_total Lists a replica answered "
                "from its index of an attribute the project indexes\n"
                "# TYPE presenced_gateway_list_replica_indexed_total counter\n"
                "presenced_gateway_list_replica_indexed_total{gateway=\"%d\"} %llu\n"
                "# HELP presenced_gateway_list_replica_waits_total Lists that waited for the "
                "bus to bring the events their marks named\n"
                "# TYPE presenced_gateway_list_replica_waits_total counter\n"
                "presenced_gateway_list_replica_waits_total{gateway=\"%d\"} %llu\n"
                "# HELP presenced_gateway_list_replica_builds_total Roster replicas asked for, "
                "built, and dropped\n"
                "# TYPE presenced_gateway_list_replica_builds_total counter\n"
                "presenced_gateway_list_replica_builds_total{gateway=\"%d\",result=\"asked\"} "
                "%llu\n"
                "presenced_gateway_list_replica_builds_total{gateway=\"%d\",result=\"built\"} "
                "%llu\n"
                "presenced_gateway_list_replica_builds_total{gateway=\"%d\",result=\"dropped\"} "
                "%llu\n"
                "# HELP presenced_gateway_list_replicas Roster replicas kept, their records and "
                "bytes\n"
                "# TYPE presenced_gateway_list_replicas gauge\n"
                "presenced_gateway_list_replicas{gateway=\"%d\",of=\"projects\"} %zu\n"
                "presenced_gateway_list_replicas{gateway=\"%d\",of=\"records\"} %zu\n"
                "presenced_gateway_list_replicas{gateway=\"%d\",of=\"bytes\"} %zu\n",
                gw->cfg->node, (unsigned long long)rs->served, gw->cfg->node,
                (unsigned long long)rs->fallbacks, gw->cfg->node,
                (unsigned long long)rs->indexed, gw->cfg->node, (unsigned long long)rs->waited,
                gw->cfg->node, (unsigned long long)rs->builds,
                gw->cfg->node, (unsigned long long)rs->built, gw->cfg->node,
                (unsigned long long)rs->dropped, gw->cfg->node, n, gw->cfg->node, records,
                gw->cfg->node, rs->bytes);
}

gw_replicas_t *
gw_replica_new(gw_t *gw)
{
    gw_replicas_t *rs = calloc(1, sizeof *rs);
    if (!rs)
        abort();
    rs->gw = gw;
    rs->max_bytes = gw->cfg->list_replica;
    pd_buf_init(&rs->key);
    pd_buf_init(&rs->qkeys);
    h2o_timeout_init(gw->ctx.loop, &rs->wait_timeout, GW_REPLICA_WAIT_MS);
    return rs;
}

void
gw_replica_destroy(gw_replicas_t **self_p)
{
    gw_replicas_t *rs = *self_p;
    if (!rs)
        return;
    while (rs->projs)
        s_drop(rs, rs->projs, "shutting down");
    free(rs->page);
    free(rs->sorted);
    free(rs->marks);
    free(rs->places);
    pd_buf_free(&rs->key);
    pd_buf_free(&rs->qkeys);
    free(rs);
    *self_p = NULL;
}
