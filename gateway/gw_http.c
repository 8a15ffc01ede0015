/*  gw_http — HTTP helpers shared by REST and realtime (see gw_http.h). */
#include "gw_http.h"

static int
s_hex(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

long
gw_http_urldecode(char *dst, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 1 < n ? s_hex(s[i + 1]) : -1, lo = i + 2 < n ? s_hex(s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == 0)
            return -1;
        dst[k++] = c;
    }
    dst[k] = 0;
    return (long)k;
}

int
gw_http_urldecode_pool(h2o_mem_pool_t *pool, const char *s, size_t n, pd_str_t *out)
{
    char *d = h2o_mem_alloc_pool(pool, n + 1);
    long k = gw_http_urldecode(d, s, n);
    if (k < 0)
        return -1;
    *out = (pd_str_t){d, (size_t)k};
    return 0;
}

bool
gw_http_qs_next(const char **p, const char *end, pd_str_t *key, pd_str_t *val)
{
    const char *s = *p;
    if (s >= end)
        return false;
    const char *amp = memchr(s, '&', (size_t)(end - s));
    if (!amp)
        amp = end;
    const char *eq = memchr(s, '=', (size_t)(amp - s));
    *key = (pd_str_t){s, (size_t)((eq ? eq : amp) - s)};
    *val = eq ? (pd_str_t){eq + 1, (size_t)(amp - eq - 1)} : PD_STR_NULL;
    *p = amp < end ? amp + 1 : end;
    return true;
}

int
gw_http_query_param(h2o_req_t *req, const char *name, pd_str_t *out)
{
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    pd_str_t k, v;
    while (gw_http_qs_next(&p, end, &k, &v)) {
        if (!v.ptr || !pd_str_eqc(k, name))
            continue;
        if (gw_http_urldecode_pool(&req->pool, v.ptr, v.len, out) < 0) {
            *out = v;
            return -1;
        }
        return 1;
    }
    return 0;
}
