/*  gw_http — HTTP helpers shared by the REST routes (gw_rest.c) and the realtime endpoint
 *  (gw_realtime.c): the query string, split and URL-decoded one way. The splitting and decoding
 *  read only bytes, so a fuzzer drives them directly (tests/fuzz/fuzz_qs.c). */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <h2o.h>

#include "pd_util.h"

//  Decodes application/x-www-form-urlencoded text s (n bytes) into dst (room for n + 1 bytes,
//  NUL-terminated). Returns the decoded length, or -1 on a bad %-escape or a NUL byte.
long gw_http_urldecode(char *dst, const char *s, size_t n);
//  The same into pool memory: 0 with *out set, or -1.
int gw_http_urldecode_pool(h2o_mem_pool_t *pool, const char *s, size_t n, pd_str_t *out);
//  Next field of the query string at *p (up to end), raw: key, and value (PD_STR_NULL when the
//  field has no '='). Returns false at the end.
bool gw_http_qs_next(const char **p, const char *end, pd_str_t *key, pd_str_t *val);
//  The decoded value of query parameter name: 1 with *out set (pool memory), 0 when absent,
//  -1 when its encoding is bad (*out is then the raw text, which callers validate and refuse).
int gw_http_query_param(h2o_req_t *req, const char *name, pd_str_t *out);

#endif
