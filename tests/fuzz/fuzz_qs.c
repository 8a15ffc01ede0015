/*  fuzz_qs — libFuzzer target for the query-string splitter and URL decoder (gateway/gw_http.c),
 *  which REST (?queries[]=, ?total=) and realtime (?project=, ?jwt=) both use.
 *
 *  Every field of the input is split and decoded. The decoder must stay inside its buffers
 *  (ASan), never produce a NUL byte or more bytes than it read, refuse exactly the texts with a
 *  bad %-escape or an encoded NUL, and decode what it encodes back to the same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_http.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void
s_decode(pd_str_t s)
{
    char *d = malloc(s.len + 1);
    long k = gw_http_urldecode(d, s.ptr, s.len);
    if (k >= 0) {
        CHECK((size_t)k <= s.len && d[k] == 0 && memchr(d, 0, (size_t)k) == NULL);
        /* encode every byte as %XX and decode again: the same bytes */
        char *e = malloc((size_t)k * 3 + 1), *r = malloc((size_t)k * 3 + 1);
        for (long i = 0; i < k; i++)
            snprintf(e + 3 * i, 4, "%%%02X", (unsigned char)d[i]);
        CHECK(gw_http_urldecode(r, e, (size_t)k * 3) == k && memcmp(r, d, (size_t)k) == 0);
        free(e);
        free(r);
    }
    free(d);
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char *q = malloc(size ? size : 1); /* exactly size bytes: ASan sees any overread */
    memcpy(q, data, size);
    const char *p = q, *end = q + size;
    pd_str_t k, v;
    size_t fields = 0;
    while (gw_http_qs_next(&p, end, &k, &v)) {
        CHECK(k.ptr >= q && k.ptr + k.len <= end && memchr(k.ptr, '&', k.len) == NULL);
        CHECK(!v.ptr || (v.ptr >= q && v.ptr + v.len <= end));
        s_decode(k);
        if (v.ptr)
            s_decode(v);
        CHECK(++fields <= size + 1);
    }
    CHECK(p == end);
    free(q);
    return 0;
}
