/*  fuzz_perms — libFuzzer target: bytes -> json_loadb -> pd_perms_parse -> pd_perms_check_grant.
 *  Checks on success: the JSON output parses back to sorted, unique strings, parsing it again
 *  gives the same result (aggregation is idempotent), and the grant check passes for a caller
 *  holding exactly the roles named, and always fails with the documented message otherwise. */
#include <stdio.h>
#include <stdlib.h>

#include "pd_auth.h"

//  Always on, also in NDEBUG builds.
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool
s_buf_eq(const pd_buf_t *a, const pd_buf_t *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static void
s_add_roles(pd_buf_t *all, const pd_buf_t *list)
{
    pd_str_t l = {list->data, list->len};
    for (pd_str_t r = pd_list_first(l); r.ptr; r = pd_list_next(l, r)) {
        if (pd_list_has((pd_str_t){all->data, all->len}, r))
            continue;
        pd_buf_add(all, r.ptr, r.len);
        pd_buf_add(all, "", 1);
    }
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, JSON_ALLOW_NUL, NULL);
    if (!j)
        return 0;
    pd_perms_t p, q;
    pd_perms_init(&p);
    pd_perms_init(&q);
    char err[512];
    if (pd_perms_parse(j, &p, err, sizeof err) == 0) {
        json_t *back = json_loadb(p.json.data, p.json.len, 0, NULL);
        FUZZ_CHECK(json_is_array(back));
        for (size_t i = 1; i < json_array_size(back); i++) {
            json_t *a = json_array_get(back, i - 1), *b = json_array_get(back, i);
            FUZZ_CHECK(strcmp(json_string_value(a), json_string_value(b)) < 0);
        }
        //  The limit counts the strings given, as Appwrite's does, and write() expands into two:
        //  an aggregate of more than PD_PERMS_MAX is stored but would be refused if sent back.
        if (json_array_size(back) <= PD_PERMS_MAX) {
            FUZZ_CHECK(pd_perms_parse(back, &q, err, sizeof err) == 0);
            FUZZ_CHECK(s_buf_eq(&p.json, &q.json) && s_buf_eq(&p.read, &q.read));
            FUZZ_CHECK(s_buf_eq(&p.update, &q.update) && s_buf_eq(&p.del, &q.del));
        } else {
            FUZZ_CHECK(pd_perms_parse(back, &q, err, sizeof err) == -1);
        }
        json_decref(back);

        pd_buf_t all;
        pd_buf_init(&all);
        s_add_roles(&all, &p.read);
        s_add_roles(&all, &p.update);
        s_add_roles(&all, &p.del);
        FUZZ_CHECK(pd_perms_check_grant(&p, (pd_str_t){all.data, all.len}, err, sizeof err) == 0);
        static const char guest[] = "any\0guests\0";
        int rc = pd_perms_check_grant(&p, (pd_str_t){guest, sizeof guest - 1}, err, sizeof err);
        FUZZ_CHECK(rc == 0 || strcmp(err, "Permissions must be one of: (any, guests)") == 0);
        pd_buf_free(&all);
    } else {
        FUZZ_CHECK(err[0] != 0);
        FUZZ_CHECK(p.json.len == 0 && p.read.len == 0 && p.update.len == 0 && p.del.len == 0);
    }
    pd_perms_free(&p);
    pd_perms_free(&q);
    json_decref(j);
    return 0;
}
