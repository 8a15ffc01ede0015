/*  fuzz_query — libFuzzer target for pd_query.
 *
 *  The input is split on '\n' into query strings and parsed in list mode and in realtime
 *  mode. When a parse succeeds the set is matched against a few fixed records (twice, to check
 *  that the lazily parsed metadata gives the same answer), and their sort keys are built,
 *  compared, packed, read back and compared again: the comparison must be antisymmetric,
 *  transitive, and the same on keys read back. The whole input is also tried as a msgpack key,
 *  which pd_query_key_read must accept or refuse without harm. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_query.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define NREC 4

static int
s_sign(int c)
{
    return (c > 0) - (c < 0);
}

static void
s_records(pd_record_t *r)
{
    memset(r, 0, NREC * sizeof *r);
    for (int i = 0; i < NREC; i++) {
        r[i].project = PD_STR("p");
        r[i].perms_json = PD_STR("[]");
        r[i].version = 1;
    }
    r[0].id = PD_STR("alice-1");
    r[0].user_id = PD_STR("alice");
    r[0].status = PD_STR("online");
    r[0].status_json = PD_STR("\"online\"");
    r[0].source = PD_STR("rest");
    r[0].meta_json = PD_STR("{\"room\":\"lobby\",\"n\":3,\"f\":2.5,\"ok\":true,\"nil\":null,"
                            "\"geo\":{\"tile\":\"a1\",\"z\":-7},\"tags\":[\"a\",1]}");
    r[0].created_ms = 1704067200000;
    r[0].updated_ms = 1704067260000;
    r[0].expires_ms = 1704068100000;

    r[1].id = PD_STR("bob");
    r[1].user_id = PD_STR("bob");
    r[1].status_json = PD_STR("null"); //  status null
    r[1].source = PD_STR("realtime");
    r[1].meta_json = PD_STR("{}");
    r[1].created_ms = 1704067200000; //  same $createdAt as alice: ties go to $id
    r[1].updated_ms = 1704067200000;
    r[1].expires_ms = 1706745600000;

    r[2].id = PD_STR("carol.x");
    r[2].user_id = PD_STR("carol");
    r[2].status = PD_STR("away");
    r[2].status_json = PD_STR("\"away\"");
    r[2].source = PD_STR("graphql");
    r[2].meta_json = PD_STR("{\"room\":\"hall\",\"n\":3.0,\"f\":\"2.5\",\"ok\":false,"
                            "\"geo\":{\"tile\":\"b\\u00e9\"},\"s\":\"a\\u0000b\"}");
    r[2].created_ms = -5;
    r[2].updated_ms = 0;
    r[2].expires_ms = 1;

    r[3].id = PD_STR("dan");
    r[3].user_id = PD_STR("dan");
    r[3].status = PD_STR("");
    r[3].status_json = PD_STR("\"\""); //  an empty string, not null
    r[3].source = PD_STR("rest");
    r[3].meta_json = PD_STR("not json");
    r[3].created_ms = 1704067200001;
    r[3].updated_ms = 1704067200001;
    r[3].expires_ms = 1704067200001;
}

static void
s_read_key(pd_mpr_t *r, pd_qkey_t *k)
{
    CHECK(pd_query_key_read(r, k) == 0);
}

/*  Index keys (the store's indexes, st_index.h) agree with matching: when the set is one
 *  equal() on an attribute whose values all have keys, a record matches exactly when its own
 *  key for that attribute is one of them. */
static void
s_index_keys(const pd_query_t *q, const pd_record_t *recs)
{
    static const char *attrs[] = {"status", "metadata.room", "metadata.n", "metadata.f",
                                  "metadata.ok", "metadata.nil", "metadata.geo.tile", "userId"};
    pd_buf_t keys, mine;
    pd_buf_init(&keys);
    pd_buf_init(&mine);
    for (size_t a = 0; a < sizeof attrs / sizeof *attrs; a++) {
        pd_buf_reset(&keys);
        int n = pd_query_index_keys(q, pd_str(attrs[a]), &keys);
        CHECK(n >= -1);
        if (n < 0 || pd_query_nfilters(q) != 1)
            continue;
        for (int i = 0; i < NREC; i++) {
            pd_qrec_t r;
            pd_qrec_init(&r, &recs[i]);
            bool match = pd_query_match(q, &r);
            bool has = pd_qrec_index_key(&r, pd_str(attrs[a]), &mine), found = false;
            pd_qrec_clear(&r);
            size_t off = 0, seen = 0;
            for (pd_str_t k; pd_query_index_key_next(&keys, &off, &k); seen++)
                found |= has && k.len == mine.len && memcmp(k.ptr, mine.data, k.len) == 0;
            CHECK(off == keys.len && seen == (size_t)n); //  the keys are whole
            CHECK(match == found);
        }
    }
    pd_buf_free(&keys);
    pd_buf_free(&mine);
}

/*  Ranges on an index agree with matching too: when the set is one range on an attribute, a
 *  record matches exactly when it has a key for that attribute, the key is at or after the
 *  walk's start, and the range says the key lies in it. Keys compare antisymmetrically. */
static void
s_index_ranges(const pd_query_t *q, const pd_record_t *recs)
{
    static const char *attrs[] = {"status",     "metadata.room", "metadata.n",
                                  "metadata.f", "metadata.ok",   "metadata.nil",
                                  "metadata.geo.tile", "$updatedAt", "expiresAt"};
    pd_buf_t lo, mine[NREC];
    pd_buf_init(&lo);
    for (int i = 0; i < NREC; i++)
        pd_buf_init(&mine[i]);
    for (size_t a = 0; a < sizeof attrs / sizeof *attrs; a++) {
        int f = pd_query_index_range(q, pd_str(attrs[a]), &lo);
        CHECK(f >= -1);
        bool has[NREC];
        for (int i = 0; i < NREC; i++) {
            pd_qrec_t r;
            pd_qrec_init(&r, &recs[i]);
            has[i] = pd_qrec_index_key(&r, pd_str(attrs[a]), &mine[i]);
            bool match = pd_query_match(q, &r);
            pd_qrec_clear(&r);
            if (f < 0 || pd_query_nfilters(q) != 1)
                continue;
            pd_str_t k = {mine[i].data, mine[i].len};
            bool in = has[i] && pd_query_index_key_cmp(k, (pd_str_t){lo.data, lo.len}) >= 0 &&
                      pd_query_index_range_pos(q, f, k) == 0;
            CHECK(match == in);
        }
        for (int i = 0; i < NREC; i++)
            for (int j = 0; j < NREC; j++)
                if (has[i] && has[j]) {
                    pd_str_t ki = {mine[i].data, mine[i].len}, kj = {mine[j].data, mine[j].len};
                    int c1 = pd_query_index_key_cmp(ki, kj), c2 = pd_query_index_key_cmp(kj, ki);
                    CHECK((c1 < 0) == (c2 > 0) && (c1 == 0) == (c2 == 0));
                }
    }
    pd_buf_free(&lo);
    for (int i = 0; i < NREC; i++)
        pd_buf_free(&mine[i]);
}

/*  Ordered walks (store.c, s_list_walk): when an index holds the page's first sort key, index
 *  order (or its reverse) never contradicts page order, and a sort key's index key is the
 *  record's own. */
static void
s_index_orders(const pd_query_t *q, const pd_record_t *recs, const pd_qkey_t *keys)
{
    static const char *attrs[] = {"status", "$createdAt", "$updatedAt", "expiresAt",
                                  "metadata.n", "userId"};
    pd_buf_t mine[NREC], k;
    pd_buf_init(&k);
    for (int i = 0; i < NREC; i++)
        pd_buf_init(&mine[i]);
    for (size_t a = 0; a < sizeof attrs / sizeof *attrs; a++) {
        bool desc;
        if (!pd_query_index_order(q, pd_str(attrs[a]), &desc))
            continue;
        CHECK(a < 4);
        for (int i = 0; i < NREC; i++) {
            pd_qrec_t r;
            pd_qrec_init(&r, &recs[i]);
            CHECK(pd_qrec_index_key(&r, pd_str(attrs[a]), &mine[i])); /* every record has one */
            pd_qrec_clear(&r);
            CHECK(pd_query_key_index_key(&keys[i], &k) && k.len == mine[i].len &&
                  memcmp(k.data, mine[i].data, k.len) == 0);
        }
        for (int i = 0; i < NREC; i++)
            for (int j = 0; j < NREC; j++) {
                int c = pd_query_index_key_cmp((pd_str_t){mine[i].data, mine[i].len},
                                               (pd_str_t){mine[j].data, mine[j].len});
                if (desc ? c > 0 : c < 0)
                    CHECK(pd_query_key_cmp(q, &keys[i], &keys[j]) < 0);
            }
    }
    pd_buf_free(&k);
    for (int i = 0; i < NREC; i++)
        pd_buf_free(&mine[i]);
}

static void
s_exercise(const pd_query_t *q, const pd_record_t *recs)
{
    pd_qkey_t keys[NREC], back[NREC];
    bool before;
    pd_str_t v;
    (void)pd_query_limit(q);
    (void)pd_query_offset(q);
    (void)pd_query_cursor(q, &before);
    static const char *attrs[] = {"$id", "userId", "status", "source", "expiresAt", "nope"};
    for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++)
        if (pd_query_equal_on(q, attrs[i], &v))
            CHECK(v.len == 0 || v.ptr);

    for (int i = 0; i < NREC; i++) {
        pd_qrec_t r;
        pd_qrec_init(&r, &recs[i]);
        bool m1 = pd_query_match(q, &r);
        bool m2 = pd_query_match(q, &r);
        CHECK(m1 == m2);
        pd_query_key(q, &r, &keys[i]);
        pd_qrec_clear(&r);
        //  A fresh scratch gives the same answer.
        pd_qrec_init(&r, &recs[i]);
        CHECK(pd_query_match(q, &r) == m1);
        pd_qrec_clear(&r);
        CHECK(keys[i].n >= 2 && keys[i].n <= PD_QUERY_MAX_ORDER + 2);
    }

    s_index_keys(q, recs);
    s_index_ranges(q, recs);
    s_index_orders(q, recs, keys);

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (int i = 0; i < NREC; i++)
        pd_query_key_pack(&keys[i], &pk);
    pd_mpr_t r = pd_mpr((pd_str_t){sb.data, sb.size});
    for (int i = 0; i < NREC; i++)
        s_read_key(&r, &back[i]);
    CHECK(r.p == r.end);

    for (int i = 0; i < NREC; i++) {
        CHECK(pd_query_key_cmp(q, &keys[i], &keys[i]) == 0);
        CHECK(pd_query_key_cmp(q, &keys[i], &back[i]) == 0);
        for (int j = 0; j < NREC; j++) {
            int c = s_sign(pd_query_key_cmp(q, &keys[i], &keys[j]));
            CHECK(c == -s_sign(pd_query_key_cmp(q, &keys[j], &keys[i])));
            CHECK(c == s_sign(pd_query_key_cmp(q, &back[i], &back[j])));
            //  A store node sorts by summaries first: they never contradict the keys.
            pd_qsum_t si, sj;
            pd_query_key_sum(q, &keys[i], &si);
            pd_query_key_sum(q, &back[j], &sj);
            int cs = pd_query_sum_cmp(&si, &sj);
            CHECK(cs == 0 || cs == c);
            //  Distinct records never tie: $id ends every key.
            CHECK(i == j || c != 0);
            for (int k = 0; k < NREC; k++) {
                if (c <= 0 && pd_query_key_cmp(q, &keys[j], &keys[k]) <= 0)
                    CHECK(pd_query_key_cmp(q, &keys[i], &keys[k]) <= 0);
            }
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

//  The raw input as a msgpack key: reading must refuse it (the reader unmoved) or give a key
//  equal to itself, which packs and reads back the same; a key read lies inside the input.
static void
s_raw_key(const uint8_t *data, size_t size)
{
    pd_mpr_t r = pd_mpr((pd_str_t){(const char *)data, size});
    pd_qkey_t k, k2;
    if (pd_query_key_read(&r, &k) < 0) {
        CHECK(r.p == data);
        return;
    }
    CHECK(r.p > data && r.p <= data + size);
    CHECK(pd_query_key_cmp(NULL, &k, &k) == 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pd_query_key_pack(&k, &pk);
    pd_mpr_t r2 = pd_mpr((pd_str_t){sb.data, sb.size});
    s_read_key(&r2, &k2);
    CHECK(r2.p == r2.end && pd_query_key_cmp(NULL, &k, &k2) == 0);
    msgpack_sbuffer_destroy(&sb);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pd_record_t recs[NREC];
    static bool ready;
    if (!ready) {
        s_records(recs);
        ready = true;
    }
    s_raw_key(data, size);

    //  Query strings are views into a copy, so reads past a piece are caught by ASan.
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    pd_str_t qs[PD_QUERY_MAX + 2];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < sizeof qs / sizeof *qs; i++) {
        if (i == size || buf[i] == '\n') {
            if (i > start || i < size)
                qs[n++] = (pd_str_t){buf + start, i - start};
            start = i + 1;
        }
    }
    static const int modes[] = {PD_QMODE_LIST, PD_QMODE_REALTIME};
    for (int m = 0; m < 2; m++) {
        char err[256];
        int code = -1;
        pd_query_t *q = pd_query_parse(qs, n, modes[m], &code, err, sizeof err);
        if (q) {
            CHECK(code == 0);
            s_exercise(q, recs);
            pd_query_destroy(&q);
            CHECK(q == NULL);
        } else {
            CHECK(code != 0 && strlen(err) > 0 && strlen(err) < sizeof err);
        }
    }
    free(buf);
    return 0;
}
