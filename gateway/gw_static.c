/*  gw_static — serves the embedded assets (see gw_static.h). The table is small (a dozen
 *  files), so a lookup is a linear scan; only the asset paths reach it, never a REST request. */
#include "gw_static.h"

#include <string.h>

#include "gw.h"
#include "pd_err.h"

#define GW_CONSOLE "/console"

static const char s_csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                            "form-action 'none'; frame-ancestors 'none'";

//  The Content-Type of an asset, from its name.
static const char *
s_ctype(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        /* no registered type for TypeScript: declarations are shown as text */
        {".d.ts", "text/plain; charset=utf-8"},
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
    };
    size_t n = strlen(path);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t k = strlen(types[i].ext);
        if (n >= k && memcmp(path + n - k, types[i].ext, k) == 0)
            return types[i].type;
    }
    return "application/octet-stream";
}

const gw_asset_t *
gw_static_find(const char *path, size_t len)
{
    static const char index[] = GW_CONSOLE "/index.html";
    if ((len == sizeof GW_CONSOLE && memcmp(path, GW_CONSOLE "/", len) == 0)) {
        path = index;
        len = sizeof index - 1;
    }
    for (size_t i = 0; i < gw_nassets; i++)
        if (strlen(gw_assets[i].path) == len && memcmp(gw_assets[i].path, path, len) == 0)
            return &gw_assets[i];
    return NULL;
}

//  Whether an If-None-Match value names etag: a list of entity tags, weak or strong (RFC 9110
//  §13.1.2 compares them weakly), or "*".
static bool
s_etag_matches(h2o_iovec_t v, const char *etag)
{
    size_t elen = strlen(etag);
    const char *p = v.base, *end = v.base + v.len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *start = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > start && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e - start == 1 && *start == '*')
            return true;
        if (e - start > 2 && start[0] == 'W' && start[1] == '/')
            start += 2;
        if ((size_t)(e - start) == elen && memcmp(start, etag, elen) == 0)
            return true;
    }
    return false;
}

static void
s_header(h2o_req_t *req, const char *name, const char *value)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 0, NULL, value,
                          strlen(value));
}

static int
s_on_req(h2o_handler_t *handler, h2o_req_t *req)
{
    (void)handler;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    int64_t t0 = gw_now_ns();
    h2o_iovec_t path = req->path_normalized;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")),
         head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    const gw_asset_t *a = gw_static_find(path.base, path.len);
    bool bare = h2o_memis(path.base, path.len, H2O_STRLIT(GW_CONSOLE));
    if ((!a && !bare) || !(get || head)) {
        gw_respond_err(gw, req, GW_ROUTE_OTHER, PD_ERR_ROUTE_NOT_FOUND, PD_STR_NULL, t0);
        return 0;
    }
    if (bare) {
        /* the console's relative URLs need the slash; the query string (if any) is dropped */
        req->res.status = 301;
        req->res.reason = "Moved Permanently";
        s_header(req, "location", GW_CONSOLE "/");
        req->res.content_length = 0;
        gw_metrics_count(gw, GW_ROUTE_OTHER, 301, t0);
        h2o_send_inline(req, "", 0);
        return 0;
    }
    bool console = strncmp(a->path, GW_CONSOLE "/", sizeof GW_CONSOLE) == 0;
    s_header(req, "etag", a->etag);
    s_header(req, "x-content-type-options", "nosniff");
    if (console) {
        s_header(req, "cache-control", "no-cache");
        s_header(req, "content-security-policy", s_csp);
        s_header(req, "x-frame-options", "DENY");
        s_header(req, "referrer-policy", "no-referrer");
        s_header(req, "cross-origin-opener-policy", "same-origin");
    } else {
        s_header(req, "cache-control", "public, max-age=300");
        s_header(req, "access-control-allow-origin", "*");
        s_header(req, "cross-origin-resource-policy", "cross-origin");
    }
    ssize_t inm = h2o_find_header(&req->headers, H2O_TOKEN_IF_NONE_MATCH, -1);
    if (inm >= 0 && s_etag_matches(req->headers.entries[inm].value, a->etag)) {
        req->res.status = 304;
        req->res.reason = "Not Modified";
        gw_metrics_count(gw, GW_ROUTE_OTHER, 304, t0);
        h2o_send_inline(req, "", 0);
        return 0;
    }
    req->res.status = 200;
    req->res.reason = "OK";
    s_header(req, "content-type", s_ctype(a->path));
    req->res.content_length = a->len;
    gw_metrics_count(gw, GW_ROUTE_OTHER, 200, t0);
    /* the bytes are static: sent as they are, not copied into the request's pool */
    static h2o_generator_t generator = {NULL, NULL};
    h2o_start_response(req, &generator);
    h2o_iovec_t body = h2o_iovec_init(a->data, a->len);
    h2o_send(req, &body, head ? 0 : 1, H2O_SEND_STATE_FINAL);
    return 0;
}

void
gw_static_register(h2o_hostconf_t *host, int (*first)(h2o_handler_t *, h2o_req_t *))
{
    /* /console takes everything under it; each helper file is a path of its own, so every
     * other /v1 request keeps going straight to the REST handler */
    h2o_pathconf_t *pc = h2o_config_register_path(host, GW_CONSOLE, 0);
    h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = first;
    h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = s_on_req;
    for (size_t i = 0; i < gw_nassets; i++) {
        const char *p = gw_assets[i].path;
        if (strncmp(p, GW_CONSOLE "/", sizeof GW_CONSOLE) == 0)
            continue;
        pc = h2o_config_register_path(host, p, 0);
        h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = first;
        h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = s_on_req;
    }
}
