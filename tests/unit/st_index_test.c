/*  st_index_test — a store node's indexes (store/st_index.h) against the query evaluator they
 *  stand in for: after every step of a random run of creates, updates (of the indexed value and
 *  of other fields) and deletes on a real table, each index's count for a value equals the
 *  number of records pd_query_match finds for equal(attr, [value]), for values of every JSON
 *  type (an int and a double of one value are one key, as equal() compares them), for an index
 *  kept from the start and one built late from the records present. Ranges (lessThan,
 *  between, startsWith, ...) walked over an index's values in order find what a scan finds.
 *  Ordered walks (status, $updatedAt) visit every record once, in order, and stop at a set's
 *  end. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pd_query.h"
#include "pd_table.h"
#include "pd_util.h"
#include "st_index.h"
#include "st_test_rec.h"

static const char *s_vals[] = {"\"a\"", "\"b\"", "1", "1.0", "2.5", "true", "false", "null",
                               "{\"x\":1}", "[1]", "\"\"", "-0.0", "0"};
#define NVALS (sizeof s_vals / sizeof *s_vals)

static void
s_rec(trec_t *t, const char *project, int id, int val, int status)
{
    snprintf(t->status, sizeof t->status, "s%d", status);
    if (val < 0)
        snprintf(t->meta, sizeof t->meta, "{\"other\":1}");
    else
        snprintf(t->meta, sizeof t->meta, "{\"room\":%s,\"n\":%d}", s_vals[val], id);
    st_test_rec(t, pd_str(project), id, pd_str(t->status), PD_STR("\"s\""));
}

static void
s_hook(const pd_record_t *rec, const pd_record_t *prev, void *arg)
{
    st_index_change(arg, rec, prev);
}

typedef struct {
    pd_query_t *q;
    size_t n;
} match_t;

static int
s_match(const pd_record_t *rec, void *arg)
{
    match_t *m = arg;
    pd_qrec_t qr;
    pd_qrec_init(&qr, rec);
    if (pd_str_eqc(rec->project, "p1") && pd_query_match(m->q, &qr))
        m->n++;
    pd_qrec_clear(&qr);
    return 0;
}

static void
s_check(pd_table_t *t, st_idx_t *ix, const char *attr, int step)
{
    for (size_t v = 0; v < NVALS + 3; v++) {
        char qs[160];
        if (v < NVALS)
            snprintf(qs, sizeof qs, "{\"method\":\"equal\",\"attribute\":\"%s\",\"values\":[%s]}",
                     attr, s_vals[v]);
        else
            snprintf(qs, sizeof qs, "{\"method\":\"equal\",\"attribute\":\"%s\",\"values\":[\"s%zu\"]}",
                     attr, v - NVALS);
        int code;
        char err[200];
        pd_str_t one = pd_str(qs);
        pd_query_t *q = pd_query_parse(&one, 1, PD_QMODE_LIST, &code, err, sizeof err);
        if (!q)
            continue; //  a value the attribute does not take (status is a string)
        pd_buf_t keys;
        pd_buf_init(&keys);
        int nk = pd_query_index_keys(q, pd_str(attr), &keys);
        match_t m = {q, 0};
        pd_table_foreach(t, s_match, &m);
        if (nk < 0) { //  objects and arrays have no key: no index answers them
            PD_CHECK(strchr(s_vals[v < NVALS ? v : 0], '{') || strchr(s_vals[v < NVALS ? v : 0], '['));
        } else {
            size_t got = 0, off = 0;
            for (pd_str_t k; pd_query_index_key_next(&keys, &off, &k);)
                got += st_idx_count(ix, k);
            if (got != m.n)
                fprintf(stderr, "step %d: %s = %s: index %zu, scan %zu\n", step, attr,
                        v < NVALS ? s_vals[v] : "sN", got, m.n);
            PD_CHECK(got == m.n);
        }
        pd_buf_free(&keys);
        pd_query_destroy(&q);
    }
}

static int
s_count_visit(pd_str_t id, uint32_t slot, void *arg)
{
    (void)id, (void)slot;
    ++*(size_t *)arg;
    return 0;
}

/*  Ranges: the records a walk of the index's values takes (visited, and counted by the sets'
 *  sizes) are those pd_query_match finds for that range over every record. */
static void
s_check_ranges(pd_table_t *t, st_idx_t *ix, const char *attr, int step)
{
    static const char *ranges[] = {
        "greaterThan\",\"values\":[\"a\"]", "greaterThanEqual\",\"values\":[1]",
        "lessThan\",\"values\":[2.5]", "lessThanEqual\",\"values\":[true]",
        "between\",\"values\":[0,2.5]", "between\",\"values\":[\"\",\"b\"]",
        "startsWith\",\"values\":[\"\"]", "startsWith\",\"values\":[\"a\"]",
        "greaterThan\",\"values\":[false]", "lessThan\",\"values\":[-1]",
        "greaterThan\",\"values\":[\"s0\"]", "startsWith\",\"values\":[\"s\"]",
        "between\",\"values\":[\"s0\",\"s1\"]", "lessThan\",\"values\":[-0.0]",
    };
    pd_buf_t lo;
    pd_buf_init(&lo);
    for (size_t k = 0; k < sizeof ranges / sizeof *ranges; k++) {
        char qs[200];
        snprintf(qs, sizeof qs, "{\"attribute\":\"%s\",\"method\":\"%s}", attr, ranges[k]);
        int code;
        char err[200];
        pd_str_t one = pd_str(qs);
        pd_query_t *q = pd_query_parse(&one, 1, PD_QMODE_LIST, &code, err, sizeof err);
        if (!q) { //  a value the attribute does not take (status is a string)
            PD_CHECK(strcmp(attr, "status") == 0);
            continue;
        }
        int f = pd_query_index_range(q, pd_str(attr), &lo);
        PD_CHECK(f == 0);
        match_t m = {q, 0};
        pd_table_foreach(t, s_match, &m);
        size_t visited = 0;
        size_t counted = st_idx_range(ix, q, f, (pd_str_t){lo.data, lo.len}, NULL, NULL);
        st_idx_range(ix, q, f, (pd_str_t){lo.data, lo.len}, s_count_visit, &visited);
        if (counted != m.n || visited != m.n)
            fprintf(stderr, "step %d: %s: index %zu (visited %zu), scan %zu\n", step, qs, counted,
                    visited, m.n);
        PD_CHECK(counted == m.n && visited == m.n);
        pd_query_destroy(&q);
    }
    pd_buf_free(&lo);
}

typedef struct {
    pd_table_t *t;
    const char *attr;
    pd_buf_t keys;   //  each visited record's index key, as pd_query_index_key_next reads them
    size_t n, stop;  //  visited; done() once this many are
} walk_t;

static int
s_walk_visit(pd_str_t id, uint32_t slot, void *arg)
{
    walk_t *w = arg;
    pd_record_t rec, at;
    PD_CHECK(pd_table_get(w->t, PD_STR("p1"), id, &rec) == 0);
    PD_CHECK(pd_table_get_slot(w->t, slot, &at) == 0 && pd_str_eq(at.id, id)); /* its slot */
    pd_qrec_t qr;
    pd_qrec_init(&qr, &rec);
    pd_buf_t k;
    pd_buf_init(&k);
    PD_CHECK(pd_qrec_index_key(&qr, pd_str(w->attr), &k));
    uint32_t len = (uint32_t)k.len;
    pd_buf_add(&w->keys, &len, sizeof len);
    pd_buf_add(&w->keys, k.data, k.len);
    pd_buf_free(&k);
    pd_qrec_clear(&qr);
    w->n++;
    return 0;
}

static bool
s_walk_done(void *arg)
{
    walk_t *w = arg;
    return w->stop && w->n >= w->stop;
}

/*  Ordered walks (status, dates: every record is in the index): a whole walk visits every
 *  record of the project once, in key order (or its reverse), from `from` on; a walk stopped by
 *  done() stops at the end of a set: what it visited is a prefix of the whole walk, and the
 *  record after it holds another value. */
static void
s_check_walk(pd_table_t *t, st_idx_t *ix, const char *attr, size_t records)
{
    for (int desc = 0; desc < 2; desc++) {
        walk_t all = {t, attr, {0}, 0, 0};
        pd_buf_init(&all.keys);
        PD_CHECK(!st_idx_walk(ix, desc, PD_STR_NULL, s_walk_visit, s_walk_done, &all));
        PD_CHECK(all.n == records);
        size_t off = 0, i = 0;
        pd_str_t prev = PD_STR_NULL, mid = PD_STR_NULL;
        for (pd_str_t k; pd_query_index_key_next(&all.keys, &off, &k); prev = k, i++) {
            if (prev.ptr) {
                int c = pd_query_index_key_cmp(prev, k);
                PD_CHECK(desc ? c >= 0 : c <= 0);
            }
            if (i == records / 3)
                mid = k;
        }
        /* from a value met halfway: the walk starts at its set */
        if (mid.ptr) {
            walk_t from = {t, attr, {0}, 0, 0};
            pd_buf_init(&from.keys);
            st_idx_walk(ix, desc, mid, s_walk_visit, s_walk_done, &from);
            off = 0;
            pd_str_t k;
            PD_CHECK(pd_query_index_key_next(&from.keys, &off, &k));
            PD_CHECK(pd_query_index_key_cmp(k, mid) == 0);
            size_t before = 0;
            off = 0;
            for (pd_str_t a; pd_query_index_key_next(&all.keys, &off, &a);)
                before += desc ? pd_query_index_key_cmp(a, mid) > 0 : pd_query_index_key_cmp(a, mid) < 0;
            PD_CHECK(from.n == records - before);
            pd_buf_free(&from.keys);
        }
        /* stopped after 10 records: at a set's end */
        walk_t part = {t, attr, {0}, 0, 10};
        pd_buf_init(&part.keys);
        bool stopped = st_idx_walk(ix, desc, PD_STR_NULL, s_walk_visit, s_walk_done, &part);
        PD_CHECK(stopped == (part.n < records) && (part.n >= 10 || part.n == records));
        PD_CHECK(part.keys.len <= all.keys.len &&
                 (!part.keys.len || memcmp(part.keys.data, all.keys.data, part.keys.len) == 0));
        if (part.n < records) {
            off = part.keys.len;
            pd_str_t next, last = PD_STR_NULL;
            PD_CHECK(pd_query_index_key_next(&all.keys, &off, &next));
            off = 0;
            for (pd_str_t k; pd_query_index_key_next(&part.keys, &off, &k);)
                last = k;
            PD_CHECK(pd_query_index_key_cmp(last, next) != 0);
        }
        pd_buf_free(&part.keys);
        pd_buf_free(&all.keys);
    }
}

static int
s_count_p1(const pd_record_t *rec, void *arg)
{
    *(size_t *)arg += pd_str_eqc(rec->project, "p1");
    return 0;
}

int
main(void)
{
    char name[64];
    snprintf(name, sizeof name, "/pd-st-index-test-%d", (int)getpid());
    bool created;
    pd_table_t *t = pd_table_open(name, (pd_table_size_t){4096, 4 << 20, 0, 0}, &created);
    PD_CHECK(t && created);
    st_index_t *x = st_index_new();
    pd_table_set_hook(t, s_hook, x);
    st_idx_t *early = st_index_want(x, t, PD_STR("p1"), PD_STR("metadata.room"));
    st_idx_t *status = st_index_want(x, t, PD_STR("p1"), PD_STR("status"));
    st_idx_t *updated = st_index_want(x, t, PD_STR("p1"), PD_STR("$updatedAt"));
    PD_CHECK(early && status && updated);
    PD_CHECK(st_index_want(x, t, PD_STR("p1"), PD_STR("metadata.room")) == early);
    PD_CHECK(!st_index_want(x, t, PD_STR("p1"), PD_STR("userId")));
    trec_t tr;
    pd_record_t st;
    uint64_t r = 88172645463325252ull;
    st_idx_t *late = NULL;
    for (int step = 0; step < 4000; step++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int id = (int)(r % 300), kind = (int)((r >> 20) % 10);
        int val = (int)((r >> 30) % (NVALS + 1)) - 1;
        const char *project = (r >> 40) % 5 ? "p1" : "p2";
        if (kind < 7) {
            s_rec(&tr, project, id, val, (int)((r >> 50) % 3));
            tr.rec.updated_ms += (int64_t)((r >> 8) % 60); //  ties too
            PD_CHECK(pd_table_put(t, &tr.rec, &st, NULL) == 0);
        } else {
            char rid[16];
            snprintf(rid, sizeof rid, "r%d", id);
            pd_table_delete(t, pd_str(project), pd_str(rid), NULL);
        }
        if (step == 2000)
            PD_CHECK((late = st_index_want(x, t, PD_STR("p1"), PD_STR("metadata.room"))) == early);
        if (step % 97 == 0 || step == 3999) {
            s_check(t, early, "metadata.room", step);
            s_check(t, status, "status", step);
            s_check_ranges(t, early, "metadata.room", step);
            s_check_ranges(t, status, "status", step);
            size_t records = 0;
            pd_table_foreach(t, s_count_p1, &records);
            PD_CHECK(st_idx_size(status) == records && st_idx_size(updated) == records);
            s_check_walk(t, status, "status", records);
            s_check_walk(t, updated, "$updatedAt", records);
        }
    }
    /* an index built late, from the records present, agrees too */
    st_index_t *y = st_index_new();
    st_idx_t *built = st_index_want(y, t, PD_STR("p1"), PD_STR("metadata.room"));
    PD_CHECK(built);
    s_check(t, built, "metadata.room", -1);
    s_check_ranges(t, built, "metadata.room", -1);
    size_t nix, entries, bytes;
    st_index_stats(x, &nix, &entries, &bytes);
    PD_CHECK(nix == 3 && entries > 0 && bytes > entries * 16);
    st_index_destroy(&y);
    st_index_destroy(&x);
    pd_table_close(&t);
    pd_table_unlink(name);
    printf("st_index: ok\n");
    return 0;
}
