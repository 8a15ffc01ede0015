/*  pd_listcache — see pd_listcache.h.
 *
 *  Two tables keyed with SipHash under a random key (pd_map): projects (generation, never
 *  freed: there are as many as the projects file names) and entries. An entry is one
 *  allocation: header, key bytes, body bytes. The key is what Appwrite's cache field is made
 *  of: [flags][roles length][roles][queries] (pd_listcache__key), compared in full on a lookup,
 *  so two callers with different roles never share an entry. Entries sit on one LRU list;
 *  a put evicts from its tail until the new entry fits in max_bytes. */
#include "pd_listcache.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_map.h"

#define ENTRY_OVERHEAD 96 //  bytes counted per entry beyond key and body (header, slot)

typedef struct lc_project {
    pd_mapent_t ent;
    uint64_t gen;              //  bumped by every purge
    size_t len;
    char id[];                 //  the project id
} lc_project_t;

typedef struct lc_entry {
    pd_mapent_t ent;
    struct lc_entry *prev, *next; //  LRU list, most recent first
    lc_project_t *project;
    uint64_t gen;              //  the project's generation when the list started
    int64_t stored_ms;         //  mono ms it was stored
    size_t klen, blen;
    char data[];               //  key bytes, then body bytes
} lc_entry_t;

struct pd_listcache {
    pd_map_t projects;         //  lc_project_t by id
    pd_map_t entries;          //  lc_entry_t by (project, key)
    lc_entry_t *head, *tail;   //  LRU list
    size_t bytes, max_bytes;   //  counted bytes of all entries, and the bound
    pd_buf_t key;              //  scratch: the key of the message at hand
    uint64_t hits, misses, stored, purges, evicted;
};

pd_listcache_t *
pd_listcache_new(size_t max_bytes)
{
    pd_listcache_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pd_map_init(&self->projects);
    pd_map_init(&self->entries);
    pd_buf_init(&self->key);
    self->max_bytes = max_bytes ? max_bytes : PD_LISTCACHE_DEFAULT_BYTES;
    return self;
}

static void
s_unlink(pd_listcache_t *self, lc_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        self->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        self->tail = e->prev;
    e->prev = e->next = NULL;
}

static void
s_push_front(pd_listcache_t *self, lc_entry_t *e)
{
    e->prev = NULL;
    e->next = self->head;
    if (self->head)
        self->head->prev = e;
    self->head = e;
    if (!self->tail)
        self->tail = e;
}

static void
s_drop(pd_listcache_t *self, lc_entry_t *e)
{
    s_unlink(self, e);
    pd_map_del(&self->entries, &e->ent);
    self->bytes -= ENTRY_OVERHEAD + e->klen + e->blen;
    free(e);
}

void
pd_listcache_destroy(pd_listcache_t **self_p)
{
    pd_listcache_t *self = *self_p;
    if (!self)
        return;
    while (self->head)
        s_drop(self, self->head);
    for (size_t i = 0; i <= self->projects.mask; i++) {
        pd_mapent_t *e = pd_map_slot(&self->projects, i);
        while (e) {
            pd_mapent_t *next = e->next;
            free(e);
            e = next;
        }
    }
    pd_map_free(&self->projects);
    pd_map_free(&self->entries);
    pd_buf_free(&self->key);
    free(self);
    *self_p = NULL;
}

static lc_project_t *
s_project(pd_listcache_t *self, pd_str_t id, bool create)
{
    uint64_t h = pd_map_hash(&self->projects, id, PD_STR(""));
    for (pd_mapent_t *e = pd_map_first(&self->projects, h); e; e = e->next) {
        lc_project_t *p = (lc_project_t *)e;
        if (e->hash == h && p->len == id.len && memcmp(p->id, id.ptr, id.len) == 0)
            return p;
    }
    if (!create)
        return NULL;
    lc_project_t *p = calloc(1, sizeof *p + id.len);
    if (!p)
        abort();
    memcpy(p->id, id.ptr, id.len);
    p->len = id.len;
    p->gen = 1; /* 0 means "not cacheable" to the callers of pd_listcache_gen */
    p->ent.hash = h;
    pd_map_add(&self->projects, &p->ent);
    return p;
}

//  The key of LIST m in self->key: what decides its result besides the project and the data.
static pd_str_t
s_key(pd_listcache_t *self, const pd_msg_t *m)
{
    pd_buf_reset(&self->key);
    int64_t fl = m->i[PD_F_FLAGS] & (PD_FL_BYPASS | PD_FL_TOTAL);
    char head[24];
    int n = snprintf(head, sizeof head, "%lld:%zu:", (long long)fl,
                     (fl & PD_FL_BYPASS) ? (size_t)0 : m->s[PD_F_ROLES].len);
    pd_buf_add(&self->key, head, (size_t)n);
    if (!(fl & PD_FL_BYPASS))
        pd_buf_add(&self->key, m->s[PD_F_ROLES].ptr, m->s[PD_F_ROLES].len);
    pd_buf_add(&self->key, m->s[PD_F_QUERIES].ptr, m->s[PD_F_QUERIES].len);
    return (pd_str_t){self->key.data, self->key.len};
}

static lc_entry_t *
s_find(pd_listcache_t *self, pd_str_t project, pd_str_t key, uint64_t *hash)
{
    *hash = pd_map_hash(&self->entries, project, key);
    for (pd_mapent_t *e = pd_map_first(&self->entries, *hash); e; e = e->next) {
        lc_entry_t *c = (lc_entry_t *)e;
        if (e->hash == *hash && c->klen == key.len && c->project->len == project.len &&
            memcmp(c->data, key.ptr, key.len) == 0 &&
            memcmp(c->project->id, project.ptr, project.len) == 0)
            return c;
    }
    return NULL;
}

static bool
s_cacheable(const pd_msg_t *m)
{
    return m->type == PD_MSG_LIST && m->i[PD_F_TTL] > 0 && m->s[PD_F_PROJECT].len;
}

bool
pd_listcache_answer(pd_listcache_t *self, const pd_msg_t *m, pd_msgw_t *w)
{
    if (!s_cacheable(m))
        return false;
    uint64_t h;
    lc_entry_t *e = s_find(self, m->s[PD_F_PROJECT], s_key(self, m), &h);
    if (e && e->gen != e->project->gen) {
        s_drop(self, e); /* purged */
        e = NULL;
    }
    int64_t ttl = m->i[PD_F_TTL] > PD_LISTCACHE_MAX_TTL ? PD_LISTCACHE_MAX_TTL : m->i[PD_F_TTL];
    if (!e || pd_mono_ms() - e->stored_ms >= ttl * 1000) {
        self->misses++;
        return false;
    }
    self->hits++;
    s_unlink(self, e);
    s_push_front(self, e);
    pd_msgw_begin(w, PD_MSG_REPLY, m->rid);
    pd_msgw_int(w, PD_F_ERR, 0);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_CACHE_HIT);
    pd_msgw_str(w, PD_F_BODY, e->data + e->klen, e->blen);
    pd_msgw_end(w);
    return true;
}

uint64_t
pd_listcache_gen(pd_listcache_t *self, const pd_msg_t *m)
{
    if (!s_cacheable(m))
        return 0;
    return s_project(self, m->s[PD_F_PROJECT], true)->gen;
}

void
pd_listcache_put(pd_listcache_t *self, const pd_msg_t *req, uint64_t gen, const char *body,
                 size_t len)
{
    if (!s_cacheable(req))
        return;
    lc_project_t *p = s_project(self, req->s[PD_F_PROJECT], true);
    if (p->gen != gen)
        return; /* purged while the list was gathered: its result may predate the purge */
    pd_str_t key = s_key(self, req);
    size_t need = ENTRY_OVERHEAD + key.len + len;
    if (need > self->max_bytes / 4)
        return; /* one entry may not take most of the cache */
    uint64_t h;
    lc_entry_t *old = s_find(self, (pd_str_t){p->id, p->len}, key, &h);
    if (old)
        s_drop(self, old);
    while (self->tail && self->bytes + need > self->max_bytes) {
        s_drop(self, self->tail);
        self->evicted++;
    }
    lc_entry_t *e = malloc(sizeof *e + key.len + len);
    if (!e)
        abort();
    memset(e, 0, sizeof *e);
    e->project = p;
    e->gen = gen;
    e->stored_ms = pd_mono_ms();
    e->klen = key.len;
    e->blen = len;
    memcpy(e->data, key.ptr, key.len);
    memcpy(e->data + key.len, body, len);
    e->ent.hash = h;
    pd_map_add(&self->entries, &e->ent);
    s_push_front(self, e);
    self->bytes += need;
    self->stored++;
}

void
pd_listcache_purge(pd_listcache_t *self, pd_str_t project)
{
    lc_project_t *p = project.len ? s_project(self, project, false) : NULL;
    if (!p)
        return; /* no list of it was ever cached, or is being gathered */
    p->gen++;
    self->purges++;
}

bool
pd_listcache_purges(const pd_msg_t *m)
{
    return m->type == PD_MSG_DELETE || m->type == PD_MSG_EXPIRE || m->type == PD_MSG_RELEASE ||
           (m->type == PD_MSG_UPDATE && (m->i[PD_F_FLAGS] & PD_FL_PURGE));
}

void
pd_listcache_on_reply(pd_listcache_t *self, const pd_msg_t *m, bool purges)
{
    if (purges && m->type == PD_MSG_REPLY && m->i[PD_F_ERR] == 0)
        pd_listcache_purge(self, m->s[PD_F_PROJECT]);
}

void
pd_listcache_metrics(const pd_listcache_t *self, pd_buf_t *b)
{
    pd_buf_addf(b,
                "# TYPE presenced_broker_list_cache_total counter\n"
                "presenced_broker_list_cache_total{result=\"hit\"} %llu\n"
                "presenced_broker_list_cache_total{result=\"miss\"} %llu\n"
                "# TYPE presenced_broker_list_cache_purges_total counter\n"
                "presenced_broker_list_cache_purges_total %llu\n"
                "# TYPE presenced_broker_list_cache_evicted_total counter\n"
                "presenced_broker_list_cache_evicted_total %llu\n"
                "# TYPE presenced_broker_list_cache_entries gauge\n"
                "presenced_broker_list_cache_entries %zu\n"
                "# TYPE presenced_broker_list_cache_bytes gauge\n"
                "presenced_broker_list_cache_bytes %zu\n",
                (unsigned long long)self->hits, (unsigned long long)self->misses,
                (unsigned long long)self->purges, (unsigned long long)self->evicted,
                self->entries.n, self->bytes);
}

/* -------------------------------------------------------------------------- self test */

//  A LIST message as the gateway sends it, decoded into m (views into w's buffer).
static void
s_test_list(pd_msgw_t *w, pd_msg_t *m, msgpack_zone *zone, const char *project,
            const char *queries, const char *roles, int64_t ttl, uint64_t rid)
{
    pd_msgw_reset(w);
    pd_msgw_begin(w, PD_MSG_LIST, rid);
    pd_msgw_str(w, PD_F_PROJECT, project, strlen(project));
    pd_msgw_str(w, PD_F_QUERIES, queries, strlen(queries) + 1);
    pd_msgw_int(w, PD_F_FLAGS, roles ? PD_FL_TOTAL : PD_FL_TOTAL | PD_FL_BYPASS);
    if (roles)
        pd_msgw_str(w, PD_F_ROLES, roles, strlen(roles) + 1);
    pd_msgw_int(w, PD_F_TTL, ttl);
    pd_msgw_end(w);
    size_t off = 0;
    int rc = pd_msg_decode(m, w->sb.data, w->sb.size, &off, zone);
    assert(rc == 0);
    (void)rc;
}

static pd_str_t
s_test_body(pd_msgw_t *out, msgpack_zone *zone)
{
    pd_msg_t r;
    size_t off = 0;
    int rc = pd_msg_decode(&r, out->sb.data, out->sb.size, &off, zone);
    assert(rc == 0 && r.type == PD_MSG_REPLY && (r.i[PD_F_FLAGS] & PD_FL_CACHE_HIT));
    (void)rc;
    return r.s[PD_F_BODY];
}

void
pd_listcache_test(bool verbose)
{
    if (verbose)
        printf(" * pd_listcache: ");
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    pd_msgw_t w, out;
    pd_msgw_init(&w);
    pd_msgw_init(&out);
    pd_msg_t m;
    pd_listcache_t *lc = pd_listcache_new(64 * 1024);

    /* miss, store, hit with the body stored */
    s_test_list(&w, &m, &zone, "p1", "{\"method\":\"limit\"}", NULL, 60, 7);
    assert(!pd_listcache_answer(lc, &m, &out));
    uint64_t g = pd_listcache_gen(lc, &m);
    pd_listcache_put(lc, &m, g, "{\"total\":1}", 11);
    assert(pd_listcache_answer(lc, &m, &out));
    pd_str_t b = s_test_body(&out, &zone);
    assert(b.len == 11 && memcmp(b.ptr, "{\"total\":1}", 11) == 0);

    /* no ttl: never cached nor answered */
    s_test_list(&w, &m, &zone, "p1", "{\"method\":\"limit\"}", NULL, 0, 8);
    pd_msgw_reset(&out);
    assert(!pd_listcache_answer(lc, &m, &out) && out.count == 0);

    /* another caller's roles, another project, other queries: other entries */
    s_test_list(&w, &m, &zone, "p1", "{\"method\":\"limit\"}", "any", 60, 9);
    assert(!pd_listcache_answer(lc, &m, &out));
    s_test_list(&w, &m, &zone, "p2", "{\"method\":\"limit\"}", NULL, 60, 9);
    assert(!pd_listcache_answer(lc, &m, &out));
    s_test_list(&w, &m, &zone, "p1", "{\"method\":\"offset\"}", NULL, 60, 9);
    assert(!pd_listcache_answer(lc, &m, &out));

    /* a purge of p1 kills its entries, not p2's; a list gathered across it is not stored */
    s_test_list(&w, &m, &zone, "p2", "q", NULL, 60, 10);
    pd_listcache_put(lc, &m, pd_listcache_gen(lc, &m), "p2", 2);
    s_test_list(&w, &m, &zone, "p1", "q", NULL, 60, 11);
    g = pd_listcache_gen(lc, &m);
    pd_listcache_purge(lc, PD_STR("p1"));
    pd_listcache_put(lc, &m, g, "old", 3);
    assert(!pd_listcache_answer(lc, &m, &out));
    pd_listcache_put(lc, &m, pd_listcache_gen(lc, &m), "new", 3);
    assert(pd_listcache_answer(lc, &m, &out));
    s_test_list(&w, &m, &zone, "p1", "{\"method\":\"limit\"}", NULL, 60, 12);
    assert(!pd_listcache_answer(lc, &m, &out)); /* stored before the purge */
    s_test_list(&w, &m, &zone, "p2", "q", NULL, 60, 13);
    pd_msgw_reset(&out);
    assert(pd_listcache_answer(lc, &m, &out));
    b = s_test_body(&out, &zone);
    assert(b.len == 2 && memcmp(b.ptr, "p2", 2) == 0);

    /* which requests purge; a reply purges only for them, only on success */
    pd_msg_t r;
    size_t off;
    const int types[] = {PD_MSG_DELETE, PD_MSG_EXPIRE, PD_MSG_RELEASE, PD_MSG_UPDATE, PD_MSG_GET};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        for (int purge = 0; purge < 2; purge++) {
            pd_msgw_reset(&w);
            pd_msgw_begin(&w, types[i], 1);
            pd_msgw_int(&w, PD_F_FLAGS, purge ? PD_FL_PURGE : 0);
            pd_msgw_end(&w);
            off = 0;
            pd_msg_decode(&r, w.sb.data, w.sb.size, &off, &zone);
            bool want = types[i] == PD_MSG_UPDATE ? purge : types[i] != PD_MSG_GET;
            assert(pd_listcache_purges(&r) == want);
        }
    }
    for (int err = 0; err < 2; err++) {
        pd_msgw_reset(&w);
        pd_msgw_begin(&w, PD_MSG_REPLY, 1);
        pd_msgw_int(&w, PD_F_ERR, err ? PD_ERR_PRESENCE_NOT_FOUND : 0);
        pd_msgw_str(&w, PD_F_PROJECT, "p2", 2);
        pd_msgw_str(&w, PD_F_BODY, "{}", 2);
        pd_msgw_end(&w);
        off = 0;
        pd_msg_decode(&r, w.sb.data, w.sb.size, &off, &zone);
        uint64_t purges = lc->purges;
        pd_listcache_on_reply(lc, &r, false);
        assert(lc->purges == purges);
        pd_listcache_on_reply(lc, &r, true);
        assert(lc->purges == purges + (err ? 0 : 1));
    }
    s_test_list(&w, &m, &zone, "p2", "q", NULL, 60, 14);
    assert(!pd_listcache_answer(lc, &m, &out));

    /* the bound: many entries stay within max_bytes, the oldest go first */
    char q[32], body[1000];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < 500; i++) {
        snprintf(q, sizeof q, "q%d", i);
        s_test_list(&w, &m, &zone, "p3", q, NULL, 60, 20);
        pd_listcache_put(lc, &m, pd_listcache_gen(lc, &m), body, sizeof body);
        assert(lc->bytes <= lc->max_bytes);
    }
    assert(lc->evicted > 0);
    s_test_list(&w, &m, &zone, "p3", "q499", NULL, 60, 21);
    assert(pd_listcache_answer(lc, &m, &out));
    s_test_list(&w, &m, &zone, "p3", "q0", NULL, 60, 22);
    assert(!pd_listcache_answer(lc, &m, &out));
    /* too big for the cache: not stored */
    char *big = calloc(1, 32 * 1024);
    s_test_list(&w, &m, &zone, "p3", "big", NULL, 60, 23);
    pd_listcache_put(lc, &m, pd_listcache_gen(lc, &m), big, 32 * 1024);
    assert(!pd_listcache_answer(lc, &m, &out));
    free(big);

    pd_buf_t mb;
    pd_buf_init(&mb);
    pd_listcache_metrics(lc, &mb);
    assert(strstr(mb.data, "presenced_broker_list_cache_total{result=\"hit\"}"));
    pd_buf_free(&mb);
    pd_listcache_destroy(&lc);
    assert(lc == NULL);
    pd_msgw_destroy(&w);
    pd_msgw_destroy(&out);
    msgpack_zone_destroy(&zone);
    if (verbose)
        printf("OK\n");
}
