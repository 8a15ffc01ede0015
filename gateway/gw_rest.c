/*  gw_rest — the REST API: routes, identity, validation, and responses in Appwrite's shapes.
 *
 *  Order of checks, as Appwrite's server does them: project, then credentials (a bad JWT is
 *  401 user_jwt_invalid), then scope, then parameters (400 general_argument_invalid), then the
 *  action's own rules (userId rules, permissions a client may grant). A request that fails a
 *  check changes nothing: it never reaches the broker. The body is parsed once with jansson;
 *  the JSON pieces a record is made of (status, metadata, permissions) are encoded here, once,
 *  so store nodes never parse JSON on the write path. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>

#include <sodium.h>

#include "gw.h"
#include "gw_http.h"
#include "pd_err.h"
#include "pd_log.h"
#include "pd_body.h"
#include "gw_replica.h"
#include "pd_listcache.h"
#include "pd_query.h"

#define GW_READY_MS 2000 //  broker silent this long: not ready (it answers every 250 ms)

static const char s_cors_allow_headers[] =
    "Accept, Origin, Cookie, Set-Cookie, Content-Type, Content-Range, X-Appwrite-Project, "
    "X-Appwrite-Key, X-Appwrite-Dev-Key, X-Appwrite-Locale, X-Appwrite-Mode, X-Appwrite-JWT, "
    "X-Appwrite-Response-Format, X-Appwrite-Session, X-Appwrite-Timeout, X-Appwrite-ID, "
    "X-Appwrite-Source, X-SDK-Version, X-SDK-Name, X-SDK-Language, X-SDK-Platform, "
    "X-SDK-GraphQL, X-SDK-Profile, Range, Cache-Control, Expires, Pragma, X-Fallback-Cookies, "
    "X-Requested-With, X-Forwarded-For, X-Forwarded-User-Agent";

pd_str_t
gw_header(h2o_req_t *req, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    if (i < 0)
        return PD_STR_NULL;
    h2o_iovec_t v = req->headers.entries[i].value;
    return (pd_str_t){v.base, v.len};
}

/*  Echoes the Origin when the project allows it (a project without an origin list allows any
 *  origin: the SDK sends credentials, so '*' would be refused by browsers). */
static void
s_cors(gw_t *gw, h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("origin"), -1);
    if (i < 0)
        return;
    h2o_iovec_t origin = req->headers.entries[i].value;
    const pd_project_t *p = pd_projects_find(&gw->projects, gw_header(req, "x-appwrite-project"));
    if (p && p->norigins) {
        bool ok = false;
        for (size_t k = 0; k < p->norigins; k++)
            ok |= strlen(p->origins[k]) == origin.len &&
                  memcmp(p->origins[k], origin.base, origin.len) == 0;
        if (!ok)
            return;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN, NULL,
                   origin.base, origin.len);
    h2o_add_header_by_str(&req->pool, &req->res.headers,
                          H2O_STRLIT("access-control-allow-credentials"), 0, NULL,
                          H2O_STRLIT("true"));
    h2o_add_header_by_str(&req->pool, &req->res.headers,
                          H2O_STRLIT("access-control-expose-headers"), 0, NULL,
                          H2O_STRLIT("X-Appwrite-Session, X-Fallback-Cookies"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_VARY, NULL, H2O_STRLIT("Origin"));
}

static const char *
s_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void
s_respond_head(gw_t *gw, h2o_req_t *req, int route, int status, const char *ctype, size_t len,
               int64_t start_ns)
{
    req->res.status = status;
    req->res.reason = s_reason(status);
    s_cors(gw, req);
    if (ctype)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype,
                       strlen(ctype));
    req->res.content_length = len;
    gw_metrics_count(gw, route, status, start_ns);
    gw_conn_answer(req);
}

void
gw_respond(gw_t *gw, h2o_req_t *req, int route, int status, const char *ctype, const char *body,
           size_t len, int64_t start_ns)
{
    s_respond_head(gw, req, route, status, ctype, len, start_ns);
    h2o_send_inline(req, body, len);
}

void
gw_respond_pool(gw_t *gw, h2o_req_t *req, int route, int status, const char *ctype, char *body,
                size_t len, int64_t start_ns)
{
    static h2o_generator_t generator = {NULL, NULL};
    s_respond_head(gw, req, route, status, ctype, len, start_ns);
    h2o_iovec_t buf = h2o_iovec_init(body, len);
    h2o_start_response(req, &generator);
    if (h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD")))
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    else
        h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

void
gw_respond_err(gw_t *gw, h2o_req_t *req, int route, int code, pd_str_t msg, int64_t start_ns)
{
    pd_buf_t b;
    pd_buf_init(&b);
    pd_err_render(&b, code, msg);
    gw_respond(gw, req, route, pd_err_http(code), "application/json", b.data, b.len, start_ns);
    pd_buf_free(&b);
}

static void
s_errf(gw_t *gw, h2o_req_t *req, int route, int code, int64_t t0, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void
s_errf(gw_t *gw, h2o_req_t *req, int route, int code, int64_t t0, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gw_respond_err(gw, req, route, code, pd_str(msg), t0);
}

/* -------------------------------------------------------------------------- identity */

int
gw_ident_resolve(gw_t *gw, gw_ident_t *id, pd_str_t project_id, pd_str_t key, pd_str_t jwt,
                 char *err, size_t errlen)
{
    memset(id, 0, sizeof *id);
    pd_buf_init(&id->roles);
    err[0] = 0;
    id->project = project_id.len ? pd_projects_find(&gw->projects, project_id) : NULL;
    if (!id->project)
        return PD_ERR_PROJECT_NOT_FOUND;
    if (key.len) {
        id->key = pd_project_find_key(id->project, key);
        if (!id->key)
            return PD_ERR_KEY_INVALID;
        if (id->key->expire_ms && id->key->expire_ms <= pd_now_ms())
            return PD_ERR_KEY_EXPIRED;
        id->kind = GW_ID_KEY;
        return PD_ERR_OK;
    }
    if (jwt.len) {
        pd_jwt_claims_t c;
        pd_jwt_claims_init(&c);
        if (pd_jwt_verify(id->project->jwt_keys, id->project->njwt, jwt.ptr, jwt.len,
                          pd_now_ms() / 1000, &c, err, errlen) < 0) {
            pd_jwt_claims_free(&c);
            return PD_ERR_JWT_INVALID;
        }
        id->kind = GW_ID_USER;
        memcpy(id->user_id, c.user_id, sizeof id->user_id);
        id->exp = c.exp;
        pd_roles_user(&c, &id->roles);
        pd_jwt_claims_free(&c);
        return PD_ERR_OK;
    }
    id->kind = GW_ID_GUEST;
    pd_roles_guest(&id->roles);
    return PD_ERR_OK;
}

void
gw_ident_free(gw_ident_t *id)
{
    pd_buf_free(&id->roles);
}

/*  Appwrite's missing-scope error. Guests read what any/guests may read (decisions.md §6). */
static int
s_check_scope(gw_ident_t *id, uint32_t scope, char *msg, size_t n)
{
    const char *sname = scope == PD_SCOPE_PRESENCES_READ    ? "presences.read"
                        : scope == PD_SCOPE_PRESENCES_WRITE ? "presences.write"
                                                            : "users.write";
    if (id->kind == GW_ID_KEY) {
        if (id->key->scopes & scope)
            return 0;
        snprintf(msg, n, "app.%s@service.localhost (role: applications) missing scopes ([\"%s\"])",
                 id->project->id, sname);
        return -1;
    }
    if (id->kind == GW_ID_USER && scope != PD_SCOPE_USERS_WRITE)
        return 0;
    if (id->kind == GW_ID_GUEST && scope == PD_SCOPE_PRESENCES_READ)
        return 0;
    snprintf(msg, n, "User (role: %s) missing scopes ([\"%s\"])",
             id->kind == GW_ID_GUEST ? "guests" : "users", sname);
    return -1;
}

/* -------------------------------------------------------------------------- replies */

static void
s_on_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    h2o_req_t *req = p->req;
    p->req = NULL;
    int err = (int)m->i[PD_F_ERR];
    if (err != PD_ERR_OK) {
        gw_respond_err(gw, req, p->route, err, m->s[PD_F_MESSAGE], p->start_ns);
        return;
    }
    if (p->route == GW_ROUTE_DELETE) {
        gw_respond(gw, req, p->route, 204, NULL, "", 0, p->start_ns);
        return;
    }
    pd_str_t body = m->s[PD_F_BODY];
    gw_respond(gw, req, p->route, 200, "application/json", body.ptr, body.len, p->start_ns);
}

/*  A list sent with ?ttl=: Appwrite's X-Appwrite-Cache says whether the broker's list cache
 *  answered it (pd_listcache.h). */
static void
s_on_cached_list_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    if (m->i[PD_F_ERR] == PD_ERR_OK) {
        bool hit = (m->i[PD_F_FLAGS] & PD_FL_CACHE_HIT) != 0;
        h2o_add_header_by_str(&p->req->pool, &p->req->res.headers, H2O_STRLIT("x-appwrite-cache"),
                              0, NULL, hit ? "hit" : "miss", hit ? 3 : 4);
    }
    s_on_reply(gw, p, m);
}

static void
s_on_status_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    h2o_req_t *req = p->req;
    p->req = NULL;
    bool ok = m->i[PD_F_ERR] == PD_ERR_OK;
    if (p->route == GW_ROUTE_HEALTH) {
        const char *b = ok ? "{\"status\":\"pass\"}" : "{\"status\":\"fail\"}";
        gw_respond(gw, req, p->route, ok ? 200 : 503, "application/json", b, strlen(b),
                   p->start_ns);
        return;
    }
    pd_buf_t b;
    pd_buf_init(&b);
    gw_metrics_render(gw, &b);
    pd_buf_add(&b, m->s[PD_F_BODY].ptr, m->s[PD_F_BODY].len);
    gw_respond(gw, req, p->route, 200, "text/plain; version=0.0.4", b.data, b.len, p->start_ns);
    pd_buf_free(&b);
}

static void
s_put_perms(pd_msgw_t *w, const pd_perms_t *p)
{
    pd_msgw_str(w, PD_F_PERMS_JSON, p->json.data ? p->json.data : "[]", p->json.data ? p->json.len : 2);
    pd_msgw_str(w, PD_F_READ_ROLES, p->read.data ? p->read.data : "", p->read.len);
    pd_msgw_str(w, PD_F_UPDATE_ROLES, p->update.data ? p->update.data : "", p->update.len);
    pd_msgw_str(w, PD_F_DELETE_ROLES, p->del.data ? p->del.data : "", p->del.len);
}

static void
s_put_caller(pd_msgw_t *w, const gw_ident_t *id, int64_t extra_flags)
{
    if (id->kind == GW_ID_KEY) {
        pd_msgw_int(w, PD_F_FLAGS, PD_FL_BYPASS | extra_flags);
    } else {
        pd_msgw_int(w, PD_F_FLAGS, extra_flags);
        pd_msgw_str(w, PD_F_ROLES, id->roles.data ? id->roles.data : "", id->roles.len);
    }
    pd_msgw_int(w, PD_F_NOW, pd_now_ms());
}

/* -------------------------------------------------------------------------- routes */

static void
s_write(gw_t *gw, h2o_req_t *req, gw_ident_t *id, pd_str_t pid, bool upsert, int64_t t0)
{
    int route = upsert ? GW_ROUTE_UPSERT : GW_ROUTE_UPDATE;
    char msg[512];
    static pd_body_t body; /* one per gateway process: its buffers are reused */
    static bool body_ready;
    if (!body_ready) {
        pd_body_init(&body);
        body_ready = true;
    }
    pd_body_t *bp = &body;
    int rc;
    if (req->entity.len > gw->cfg->max_body) {
        snprintf(msg, sizeof msg, "Request body is larger than %zu bytes.", gw->cfg->max_body);
        rc = PD_ERR_PAYLOAD_TOO_LARGE;
    } else {
        rc = pd_body_parse(bp, req->entity.base, req->entity.len, id->project->max_metadata,
                           pd_now_ms(), msg, sizeof msg);
    }
    if (rc != PD_ERR_OK) {
        gw_respond_err(gw, req, route, rc, pd_str(msg), t0);
        goto out;
    }
    if (upsert && !bp->has_status) {
        gw_respond_err(gw, req, route, PD_ERR_ARGUMENT_INVALID,
                       PD_STR("Param \"status\" is not optional."), t0);
        goto out;
    }
    /* Who owns the record (appwrite-protocol.md §1.1). */
    if (bp->has_user && id->kind != GW_ID_KEY) {
        gw_respond_err(gw, req, route, PD_ERR_UNAUTHORIZED_SCOPE,
                       PD_STR("userId is not allowed for non-API key and non-privileged users"),
                       t0);
        goto out;
    }
    if (upsert && !bp->has_user && id->kind == GW_ID_KEY) {
        gw_respond_err(gw, req, route, PD_ERR_BAD_REQUEST,
                       PD_STR("userId is required for API key authentication"), t0);
        goto out;
    }
    pd_str_t owner = bp->has_user ? bp->user : pd_str(id->user_id);
    if (bp->has_perms && id->kind != GW_ID_KEY &&
        pd_perms_check_grant(&bp->perms, (pd_str_t){id->roles.data, id->roles.len}, msg,
                             sizeof msg) < 0) {
        gw_respond_err(gw, req, route, PD_ERR_USER_UNAUTHORIZED, pd_str(msg), t0);
        goto out;
    }
    /* purge (update only): Appwrite's Boolean(loose); the broker purges the list cache, so the
     * request goes through it */
    bool purge = false;
    json_t *pv = upsert || !bp->root ? NULL : json_object_get(bp->root, "purge");
    if (pv && !json_is_null(pv)) {
        const char *ps = json_is_string(pv) ? json_string_value(pv) : NULL;
        if (json_is_boolean(pv))
            purge = json_is_true(pv);
        else if (json_is_integer(pv) && (uint64_t)json_integer_value(pv) <= 1)
            purge = json_integer_value(pv) == 1;
        else if (ps && (!strcmp(ps, "true") || !strcmp(ps, "1") || !strcmp(ps, "false") ||
                        !strcmp(ps, "0")))
            purge = !strcmp(ps, "true") || !strcmp(ps, "1");
        else {
            gw_respond_err(gw, req, route, PD_ERR_ARGUMENT_INVALID,
                           PD_STR("Invalid `purge` param: Value must be a valid boolean"), t0);
            goto out;
        }
    }
    bool perms_set = bp->has_perms;
    if (!perms_set && (upsert || bp->has_user)) {
        pd_perms_default(owner, &bp->perms);
        perms_set = true;
    }
    gw_pending_t *p = gw_pending_new(gw, req, route, s_on_reply);
    /* Straight to the owning node when no claim is involved (gateway.c, direct requests):
     * an update that keeps the owner, or an upsert of the record the user is known to own. */
    pd_str_t project = pd_str(id->project->id), target = pid;
    int node = 0;
    if (upsert) {
        const char *known = gw_claim_get(gw, project, owner);
        if (known) {
            target = pd_str(known);
            node = gw_direct_node(gw, project, target);
        }
    } else if (!bp->has_user && !purge) {
        node = gw_direct_node(gw, project, pid);
    }
    int type = upsert ? PD_MSG_UPSERT : PD_MSG_UPDATE;
    pd_msgw_t *w = node ? gw_send_direct(gw, p, node, type, pid) : gw_send_begin(gw, type, p->rid);
    pd_msgw_s(w, PD_F_PROJECT, project);
    pd_msgw_s(w, PD_F_ID, node ? target : pid);
    if (upsert || bp->has_user)
        pd_msgw_s(w, PD_F_USER, owner);
    if (bp->has_status) {
        pd_msgw_s(w, PD_F_STATUS, bp->status);
        pd_msgw_str(w, PD_F_STATUS_JSON, bp->status_json.data, bp->status_json.len);
    }
    if (upsert || bp->has_meta)
        pd_msgw_str(w, PD_F_META_JSON, bp->has_meta ? bp->meta_json.data : "{}",
                    bp->has_meta ? bp->meta_json.len : 2);
    if (upsert || bp->has_expires)
        pd_msgw_int(w, PD_F_EXPIRES,
                    bp->has_expires ? bp->expires : pd_now_ms() + id->project->default_ttl_ms);
    if (perms_set)
        s_put_perms(w, &bp->perms);
    if (upsert && id->project->max_records)
        pd_msgw_int(w, PD_F_MAX_RECORDS, (int64_t)id->project->max_records);
    if (upsert) {
        pd_str_t src = gw_header(req, "x-appwrite-source");
        pd_msgw_s(w, PD_F_SOURCE, pd_str_eqc(src, "graphql") ? PD_STR("graphql") : PD_STR("rest"));
    }
    int64_t fl = 0;
    if (!upsert)
        fl = (bp->has_status ? PD_FL_HAS_STATUS : 0) | (bp->has_meta ? PD_FL_HAS_META : 0) |
             (bp->has_perms ? PD_FL_HAS_PERMS : 0) | (bp->has_expires ? PD_FL_HAS_EXPIRES : 0) |
             (bp->has_user ? PD_FL_HAS_USER : 0) | (purge ? PD_FL_PURGE : 0);
    else if (node)
        fl = PD_FL_CLAIMED; /* the node may only update the user's existing record */
    s_put_caller(w, id, fl);
    gw_send_end(gw);
out:
    pd_body_clear(bp);
}

static void
s_simple(gw_t *gw, h2o_req_t *req, gw_ident_t *id, pd_str_t pid, int type, int route)
{
    gw_pending_t *p = gw_pending_new(gw, req, route, s_on_reply);
    pd_str_t project = pd_str(id->project->id);
    int node = type == PD_MSG_GET ? gw_direct_node(gw, project, pid) : 0;
    pd_msgw_t *w = node ? gw_send_direct(gw, p, node, type, pid) : gw_send_begin(gw, type, p->rid);
    pd_msgw_s(w, PD_F_PROJECT, project);
    pd_msgw_s(w, PD_F_ID, pid);
    s_put_caller(w, id, 0);
    gw_send_end(gw);
}

/*  `ttl`: Appwrite's Range(0, 86400) on an integer (an optional sign, then digits). Returns the
 *  seconds, or -1. */
static int64_t
s_ttl_param(pd_str_t v)
{
    size_t i = 0;
    bool neg = false;
    if (v.len && (v.ptr[0] == '+' || v.ptr[0] == '-'))
        neg = v.ptr[i++] == '-';
    if (i == v.len)
        return -1;
    int64_t n = 0;
    for (; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9' || n > PD_LISTCACHE_MAX_TTL)
            return -1;
        n = n * 10 + (v.ptr[i] - '0');
    }
    if (n > PD_LISTCACHE_MAX_TTL || (neg && n))
        return -1;
    return n;
}

/* -------------------------------------------------------------------------- lists */

/*  A large list's page over several store nodes is planned by the broker from the nodes' sort
 *  keys (broker.c, "two rounds"). A gateway that reaches every node directly asks for the plan
 *  (FLAGS PLAN) rather than the page: [node, FETCH item] per item in the page's order (an id,
 *  or [id, slot] so that the node reads the record without a hash probe), and TOTAL. It
 *  then sends one FETCH per node over its own links, under one pending request that takes the
 *  nodes' answers as they come, and writes the page itself: each record's JSON, as the node
 *  keeps it, is copied once into the response. A nil (the record was deleted, expired, hidden
 *  or moved since the plan), a node's refusal (records move) or a node out of reach sends the
 *  list again through the broker in one round (FLAGS AGAIN). */
typedef struct {
    uint32_t n;          //  items in the page
    uint8_t *node;       //  each item's node
    pd_str_t *json;      //  each item's JSON (req's pool), as the answers come
    uint64_t waiting;    //  nodes yet to answer (bit n)
    int64_t total;
    size_t len;          //  the JSON's bytes, summed
    bool failed;         //  a nil, a refusal or a malformed answer: list again
} gw_plan_t;

static void s_on_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m);

//  The plan could not be fetched: the list, as sent, goes to the broker again in one round.
static void
s_list_again(gw_t *gw, gw_pending_t *p, h2o_req_t *req)
{
    pd_msg_t lm;
    size_t off = 0;
    gw_pending_t *again = gw_pending_new(gw, req, p->route, s_on_reply);
    again->start_ns = p->start_ns;
    if (pd_msg_decode(&lm, p->saved.ptr, p->saved.len, &off, &gw->rzone) != 0) {
        again->req = NULL;
        gw_respond_err(gw, req, p->route, PD_ERR_SERVER_ERROR, PD_STR_NULL, p->start_ns);
        return;
    }
    pd_msgw_t *w = gw_send_copy(gw, again, &lm, 1ULL << PD_F_FLAGS);
    pd_msgw_int(w, PD_F_FLAGS, (lm.i[PD_F_FLAGS] & ~(int64_t)PD_FL_PLAN) | PD_FL_AGAIN);
    gw_send_end(gw);
    msgpack_zone_clear(&gw->rzone);
}

//  One node's FETCH answer: its items' JSON in the order asked; the page once all are in.
static void
s_on_fetch_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    gw_plan_t *pl = p->user;
    h2o_req_t *req = p->req;
    int64_t nd = m->i[PD_F_NODE];
    pd_mpr_t a = pd_mpr(m->s[PD_F_ITEMS]); /* read in place: the replies come without a zone */
    uint32_t na;
    if (m->i[PD_F_ERR] != PD_ERR_OK || nd < 1 || nd > 63 || !((pl->waiting >> nd) & 1) ||
        !pd_msg_has(m, PD_F_ITEMS) || !pd_mpr_array(&a, &na)) {
        pl->failed = true;
    } else {
        pl->waiting &= ~(1ULL << nd);
        /* the strings are views into the frame, which is reused: one copy of the message */
        char *copy = gw_big_alloc(gw, req, m->raw_len);
        memcpy(copy, m->raw, m->raw_len);
        uint32_t j = 0;
        for (uint32_t i = 0; i < pl->n && !pl->failed; i++) {
            if (pl->node[i] != nd)
                continue;
            pd_str_t js;
            if (j++ >= na || !pd_mpr_str(&a, &js)) {
                pl->failed = true; /* deleted, expired or hidden since the plan */
                break;
            }
            pl->json[i] = (pd_str_t){copy + (js.ptr - m->raw), js.len};
            pl->len += js.len;
        }
        if (j != na)
            pl->failed = true;
    }
    if (p->more) /* more answers to come */
        return;
    p->req = NULL;
    if (pl->failed || pl->waiting) {
        gw->plans_again++;
        s_list_again(gw, p, req);
        return;
    }
    gw->plans++;
    char head[PD_PAGE_HEAD_MAX];
    size_t hl = pd_page_head(head, pl->total), len = pd_page_len(hl, pl->n, pl->len);
    char *body = gw_big_alloc(gw, req, len), *at = body;
    memcpy(at, head, hl);
    at += hl;
    for (uint32_t i = 0; i < pl->n; i++) {
        if (i)
            *at++ = ',';
        memcpy(at, pl->json[i].ptr, pl->json[i].len);
        at += pl->json[i].len;
    }
    memcpy(at, PD_PAGE_TAIL, sizeof PD_PAGE_TAIL - 1);
    gw_respond_pool(gw, req, p->route, 200, "application/json", body, len, p->start_ns);
}

/*  A list's answer: the page, an error, or (FLAGS PLAN) the plan of a page to fetch. */
static void
s_on_list_reply(gw_t *gw, gw_pending_t *p, const pd_msg_t *m)
{
    if (m->i[PD_F_ERR] != PD_ERR_OK || !(m->i[PD_F_FLAGS] & PD_FL_PLAN)) {
        s_on_reply(gw, p, m);
        return;
    }
    h2o_req_t *req = p->req;
    p->req = NULL;
    pd_mpr_t a = pd_mpr(m->s[PD_F_ITEMS]); /* read in place: the replies come without a zone */
    uint32_t n = 0;
    if (!pd_msg_has(m, PD_F_ITEMS) || !pd_mpr_array(&a, &n))
        n = 0;
    gw_plan_t *pl = h2o_mem_alloc_pool(&req->pool, sizeof *pl);
    *pl = (gw_plan_t){.n = n, .total = m->i[PD_F_TOTAL]};
    pl->node = h2o_mem_alloc_pool(&req->pool, n ? n : 1);
    pl->json = h2o_mem_alloc_pool(&req->pool, (n ? n : 1) * sizeof *pl->json);
    /* each item's FETCH item, its bytes as the broker wrote them: an id, or [id, slot] */
    pd_str_t *fi = h2o_mem_alloc_pool(&req->pool, (n ? n : 1) * sizeof *fi);
    uint32_t per[64] = {0};
    for (uint32_t i = 0; i < n; i++) {
        uint32_t two;
        int64_t nd, slot;
        pd_str_t id;
        bool ok = pd_mpr_array(&a, &two) && two == 2 && pd_mpr_int(&a, &nd) && nd >= 1 &&
                  nd <= 63;
        const unsigned char *at = a.p;
        if (ok && pd_mpr_type(&a) == PD_MPR_ARRAY)
            ok = pd_mpr_array(&a, &two) && two == 2 && pd_mpr_str(&a, &id) &&
                 pd_mpr_int(&a, &slot) && slot >= 0;
        else
            ok = ok && pd_mpr_str(&a, &id);
        if (!ok) {
            pl->failed = true;
            break;
        }
        fi[i] = (pd_str_t){(const char *)at, (size_t)(a.p - at)};
        pl->node[i] = (uint8_t)nd;
        per[nd]++;
        pl->waiting |= 1ULL << nd;
    }
    for (int nd = 1; nd < 64 && !pl->failed; nd++)
        if (per[nd] && (nd > gw->nstores || !gw->stores[nd].sock || !gw->stores[nd].up))
            pl->failed = true; /* no link to it now */
    if (pl->failed || !n) {
        gw->plans_again++;
        s_list_again(gw, p, req);
        return;
    }
    pd_msg_t lm;
    size_t off = 0;
    if (pd_msg_decode(&lm, p->saved.ptr, p->saved.len, &off, &gw->rzone) != 0) {
        gw_respond_err(gw, req, p->route, PD_ERR_SERVER_ERROR, PD_STR_NULL, p->start_ns);
        return;
    }
    gw_pending_t *f = gw_pending_new(gw, req, p->route, s_on_fetch_reply);
    f->start_ns = p->start_ns;
    f->saved = p->saved;
    f->user = pl;
    f->nodes = pl->waiting;
    f->more = (uint32_t)__builtin_popcountll(pl->waiting) - 1;
    for (int nd = 1; nd < 64; nd++) {
        if (!per[nd])
            continue;
        pd_msgw_t *w = gw_send_store(gw, nd, PD_MSG_FETCH, f->rid);
        if (!w) { /* the link went away while the others were sent */
            gw_fail_answer(gw, f);
            continue;
        }
        pd_msgw_s(w, PD_F_PROJECT, lm.s[PD_F_PROJECT]);
        if (pd_msg_has(&lm, PD_F_ROLES))
            pd_msgw_s(w, PD_F_ROLES, lm.s[PD_F_ROLES]);
        pd_msgw_int(w, PD_F_FLAGS, lm.i[PD_F_FLAGS] & PD_FL_BYPASS);
        pd_msgw_int(w, PD_F_NOW, lm.i[PD_F_NOW]);
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, per[nd]);
        for (uint32_t i = 0; i < n; i++)
            if (pl->node[i] == nd)
                msgpack_sbuffer_write(&w->sb, fi[i].ptr, fi[i].len);
        gw_send_end(gw);
    }
    msgpack_zone_clear(&gw->rzone);
}

/*  A list as s_list read it (the request's pool): what its LIST message says. */
typedef struct {
    pd_str_t project, queries, indexes, roles; //  queries: packed
    int route;
    int64_t t0, ttl, now;
    bool count, total, key;
} list_args_t;

static pd_str_t
s_pool_str(h2o_req_t *req, pd_str_t s)
{
    char *p = h2o_mem_alloc_pool(&req->pool, s.len + 1);
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = 0;
    return (pd_str_t){p, s.len};
}

//  The list, to the broker: a page it plans is fetched here (above), unless the list cache may
//  keep it. Also what a roster replica falls back to (gw_replica.h).
static void
s_list_send(gw_t *gw, h2o_req_t *req, void *arg)
{
    const list_args_t *a = arg;
    bool plan = !a->ttl && !a->count && gw_direct_all(gw);
    gw_pending_t *p = gw_pending_new(gw, req, a->route,
                                     a->ttl ? s_on_cached_list_reply
                                            : plan ? s_on_list_reply : s_on_reply);
    p->start_ns = a->t0;
    pd_msgw_t *w = gw_send_begin(gw, PD_MSG_LIST, p->rid);
    if (plan)
        gw_send_keep(gw, p);
    if (a->ttl)
        pd_msgw_int(w, PD_F_TTL, a->ttl);
    pd_msgw_s(w, PD_F_PROJECT, a->project);
    pd_msgw_s(w, PD_F_QUERIES, a->queries);
    if (a->indexes.len)
        pd_msgw_s(w, PD_F_INDEXES, a->indexes);
    int64_t fl = (a->count ? PD_FL_COUNT | PD_FL_TOTAL : a->total ? PD_FL_TOTAL : 0) |
                 (plan ? PD_FL_PLAN : 0);
    if (a->key) {
        pd_msgw_int(w, PD_F_FLAGS, PD_FL_BYPASS | fl);
    } else {
        pd_msgw_int(w, PD_F_FLAGS, fl);
        pd_msgw_s(w, PD_F_ROLES, a->roles);
    }
    pd_msgw_int(w, PD_F_NOW, a->now);
    gw_send_end(gw);
}

/*  GET /v1/presences (route LIST) and our extension GET /v1/presences/count (route COUNT):
 *  a count takes filters only (no limit, offset, cursor or order, no ttl) and answers
 *  {"total": N}, exact (no 5,000 cap); the store nodes count an equal() on an attribute the
 *  project indexes without visiting its records (st_index.h). */
static void
s_list(gw_t *gw, h2o_req_t *req, gw_ident_t *id, int64_t t0, int route)
{
    pd_str_t qs[PD_QUERY_MAX];
    size_t nq = 0;
    bool total = true;
    int64_t ttl = 0;
    bool count = route == GW_ROUTE_COUNT;
    if (req->query_at != SIZE_MAX) {
        const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            if (!amp)
                amp = end;
            const char *eq = memchr(p, '=', (size_t)(amp - p));
            pd_str_t key, val = PD_STR("");
            if (gw_http_urldecode_pool(&req->pool, p, (size_t)((eq ? eq : amp) - p), &key) < 0 ||
                (eq && gw_http_urldecode_pool(&req->pool, eq + 1, (size_t)(amp - eq - 1), &val) < 0)) {
                gw_respond_err(gw, req, route, PD_ERR_ARGUMENT_INVALID,
                               PD_STR("Invalid query string encoding."), t0);
                return;
            }
            if (key.len >= 7 && memcmp(key.ptr, "queries", 7) == 0 &&
                (key.len == 7 || key.ptr[7] == '[')) {
                if (nq == PD_QUERY_MAX) {
                    s_errf(gw, req, route, PD_ERR_ARGUMENT_INVALID, t0,
                           "Invalid `queries` param: Value must be an array of no more than "
                           "%d items",
                           PD_QUERY_MAX);
                    return;
                }
                qs[nq++] = val;
            } else if (pd_str_eqc(key, "ttl") && !count) {
                if ((ttl = s_ttl_param(val)) < 0) {
                    s_errf(gw, req, route, PD_ERR_ARGUMENT_INVALID, t0,
                           "Invalid `ttl` param: Value must be a valid range between 0 and %s",
                           "86,400");
                    return;
                }
            } else if (pd_str_eqc(key, "total")) {
                if (pd_str_eqc(val, "false") || pd_str_eqc(val, "0"))
                    total = false;
                else if (!pd_str_eqc(val, "true") && !pd_str_eqc(val, "1")) {
                    gw_respond_err(gw, req, route, PD_ERR_ARGUMENT_INVALID,
                                   PD_STR("Invalid `total` param: Value must be a valid boolean"),
                                   t0);
                    return;
                }
            }
            p = amp + 1;
        }
    }
    char err[300];
    int code;
    pd_query_t *q = pd_query_parse(qs, nq, PD_QMODE_LIST | (id->kind == GW_ID_KEY ? PD_QMODE_DEEP : 0),
                                   &code, err, sizeof err);
    if (!q) {
        gw_respond_err(gw, req, route, code, pd_str(err), t0);
        return;
    }
    bool paged = pd_query_paged(q);
    if (count && paged) {
        pd_query_destroy(&q);
        gw_respond_err(gw, req, route, PD_ERR_QUERY_INVALID,
                       PD_STR("Invalid query: a count takes filters only (no limit, offset, "
                              "cursorAfter, cursorBefore, orderAsc or orderDesc)."),
                       t0);
        return;
    }
    list_args_t *a = h2o_mem_alloc_pool(&req->pool, sizeof *a);
    *a = (list_args_t){.route = route, .t0 = t0, .ttl = ttl, .count = count, .total = total,
                       .key = id->kind == GW_ID_KEY, .now = pd_now_ms()};
    a->project = s_pool_str(req, pd_str(id->project->id));
    a->indexes = s_pool_str(req, (pd_str_t){id->project->indexes, id->project->indexes_len});
    a->roles = s_pool_str(req, (pd_str_t){id->roles.data, id->roles.len});
    size_t plen = 0;
    for (size_t i = 0; i < nq; i++)
        plen += qs[i].len + 1;
    char *packed = h2o_mem_alloc_pool(&req->pool, plen ? plen : 1);
    a->queries = (pd_str_t){packed, plen};
    for (size_t i = 0; i < nq; i++) {
        memcpy(packed, qs[i].ptr, qs[i].len);
        packed[qs[i].len] = 0;
        packed += qs[i].len + 1;
    }
    if (!ttl && !count) { /* a roster this gateway keeps answers it (gw_replica.h) */
        gw_replica_list_t l = {.project = a->project, .roles = a->roles, .indexes = a->indexes,
                               .bypass = a->key,
                               .total = total, .now = a->now, .route = route, .start_ns = t0,
                               .fallback = s_list_send, .arg = a};
        if (gw_replica_list(gw, req, q, &l))
            return;
    }
    pd_query_destroy(&q);
    s_list_send(gw, req, a);
}

static void
s_mint_jwt(gw_t *gw, h2o_req_t *req, gw_ident_t *id, pd_str_t user, int64_t t0)
{
    if (!pd_uid_valid(user)) {
        gw_respond_err(gw, req, GW_ROUTE_JWT, PD_ERR_ARGUMENT_INVALID,
                       PD_STR("Invalid `userId` param: UID must contain at most 36 chars. Valid "
                              "chars are a-z, A-Z, 0-9, and underscore. Can't start with a "
                              "leading underscore"),
                       t0);
        return;
    }
    int64_t duration = 900;
    if (req->entity.len) {
        json_t *root = json_loadb(req->entity.base, req->entity.len, 0, NULL);
        json_t *d = root ? json_object_get(root, "duration") : NULL;
        if (!root || !json_is_object(root) || (d && !json_is_null(d) && !json_is_integer(d)) ||
            (json_is_integer(d) && (json_integer_value(d) < 0 || json_integer_value(d) > 3600))) {
            json_decref(root);
            gw_respond_err(gw, req, GW_ROUTE_JWT, PD_ERR_ARGUMENT_INVALID,
                           PD_STR("Invalid `duration` param: Value must be a valid range "
                                  "between 0 and 3,600"),
                           t0);
            return;
        }
        if (json_is_integer(d))
            duration = json_integer_value(d);
        json_decref(root);
    }
    if (!id->project->mint_key) {
        gw_respond_err(gw, req, GW_ROUTE_JWT, PD_ERR_BAD_REQUEST,
                       PD_STR("This project has no HS256 secret to sign tokens with."), t0);
        return;
    }
    char payload[160];
    int n = snprintf(payload, sizeof payload, "{\"userId\":\"%.*s\",\"sessionId\":\"\",\"exp\":%lld}",
                     (int)user.len, user.ptr, (long long)(pd_now_ms() / 1000 + duration));
    pd_buf_t tok, body;
    pd_buf_init(&tok);
    pd_buf_init(&body);
    pd_jwt_sign_hs256(id->project->mint_key, id->project->mint_key_len, payload, (size_t)n, &tok);
    pd_buf_adds(&body, "{\"jwt\":");
    pd_buf_add_json_str(&body, tok.data, tok.len);
    pd_buf_adds(&body, "}");
    gw_respond(gw, req, GW_ROUTE_JWT, 201, "application/json", body.data, body.len, t0);
    sodium_memzero(tok.data, tok.len);
    pd_buf_free(&tok);
    pd_buf_free(&body);
}

static bool
s_method(h2o_req_t *req, const char *m)
{
    return req->method.len == strlen(m) && memcmp(req->method.base, m, req->method.len) == 0;
}

int
gw_rest_on_req(h2o_handler_t *handler, h2o_req_t *req)
{
    (void)handler;
    gw_t *gw = H2O_STRUCT_FROM_MEMBER(gw_t, ctx, req->conn->ctx);
    int64_t t0 = gw_now_ns();
    pd_str_t path = {req->path_normalized.base, req->path_normalized.len};
    while (path.len > 1 && path.ptr[path.len - 1] == '/')
        path.len--;

    if (s_method(req, "OPTIONS")) {
        h2o_add_header_by_str(&req->pool, &req->res.headers,
                              H2O_STRLIT("access-control-allow-methods"), 0, NULL,
                              H2O_STRLIT("GET, POST, PUT, PATCH, DELETE"));
        h2o_add_header_by_str(&req->pool, &req->res.headers,
                              H2O_STRLIT("access-control-allow-headers"), 0, NULL,
                              s_cors_allow_headers, sizeof s_cors_allow_headers - 1);
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-max-age"),
                              0, NULL, H2O_STRLIT("86400"));
        gw_respond(gw, req, GW_ROUTE_OPTIONS, 204, NULL, "", 0, t0);
        return 0;
    }
    if (pd_str_eqc(path, "/v1/health") && s_method(req, "GET")) {
        gw_pending_t *p = gw_pending_new(gw, req, GW_ROUTE_HEALTH, s_on_status_reply);
        gw_send_begin(gw, PD_MSG_STATUS, p->rid);
        gw_send_end(gw);
        return 0;
    }
    if (pd_str_eqc(path, "/v1/health/ready") && s_method(req, "GET")) {
        /* Readiness: this gateway can serve, that is the broker answered its heartbeat (every
         * 250 ms) lately. /v1/health is the whole cluster's view. */
        bool ready = gw->route_ms && pd_mono_ms() - gw->route_ms < GW_READY_MS;
        const char *b = ready ? "{\"status\":\"pass\"}" : "{\"status\":\"fail\"}";
        gw_respond(gw, req, GW_ROUTE_HEALTH, ready ? 200 : 503, "application/json", b,
                   strlen(b), t0);
        return 0;
    }
    if (pd_str_eqc(path, "/metrics") && s_method(req, "GET")) {
        gw_pending_t *p = gw_pending_new(gw, req, GW_ROUTE_METRICS, s_on_status_reply);
        gw_send_begin(gw, PD_MSG_STATUS, p->rid);
        gw_send_end(gw);
        return 0;
    }

    /* Everything below belongs to a project. */
    int route = GW_ROUTE_OTHER;
    pd_str_t pid = PD_STR_NULL, user = PD_STR_NULL;
    const char *pfx = "/v1/presences";
    const char *upfx = "/v1/users/";
    if (pd_str_eqc(path, "/v1/ping")) {
        route = s_method(req, "GET") ? GW_ROUTE_PING : GW_ROUTE_OTHER;
    } else if (pd_str_eqc(path, pfx)) {
        route = s_method(req, "GET") ? GW_ROUTE_LIST : GW_ROUTE_OTHER;
    } else if (pd_str_eqc(path, "/v1/presences/count") && s_method(req, "GET")) {
        route = GW_ROUTE_COUNT; /* our extension; it hides a GET of the presence "count" */
    } else if (path.len > strlen(pfx) + 1 && memcmp(path.ptr, pfx, strlen(pfx)) == 0 &&
               path.ptr[strlen(pfx)] == '/' &&
               !memchr(path.ptr + strlen(pfx) + 1, '/', path.len - strlen(pfx) - 1)) {
        pid = (pd_str_t){path.ptr + strlen(pfx) + 1, path.len - strlen(pfx) - 1};
        route = s_method(req, "GET")      ? GW_ROUTE_GET
                : s_method(req, "PUT")    ? GW_ROUTE_UPSERT
                : s_method(req, "PATCH")  ? GW_ROUTE_UPDATE
                : s_method(req, "DELETE") ? GW_ROUTE_DELETE
                                          : GW_ROUTE_OTHER;
    } else if (path.len > strlen(upfx) + 5 && memcmp(path.ptr, upfx, strlen(upfx)) == 0 &&
               memcmp(path.ptr + path.len - 5, "/jwts", 5) == 0 && s_method(req, "POST")) {
        user = (pd_str_t){path.ptr + strlen(upfx), path.len - strlen(upfx) - 5};
        route = memchr(user.ptr, '/', user.len) ? GW_ROUTE_OTHER : GW_ROUTE_JWT;
    }
    if (route == GW_ROUTE_OTHER) {
        gw_respond_err(gw, req, route, PD_ERR_ROUTE_NOT_FOUND, PD_STR_NULL, t0);
        return 0;
    }

    gw_ident_t id;
    char err[300];
    int rc = gw_ident_resolve(gw, &id, gw_header(req, "x-appwrite-project"),
                              gw_header(req, "x-appwrite-key"), gw_header(req, "x-appwrite-jwt"),
                              err, sizeof err);
    if (rc != PD_ERR_OK) {
        gw_respond_err(gw, req, route, rc, pd_str(err), t0);
        goto out;
    }
    if (route == GW_ROUTE_PING) {
        gw_respond(gw, req, route, 200, "text/plain", "Pong!", 5, t0);
        goto out;
    }
    uint32_t scope = route == GW_ROUTE_JWT                            ? PD_SCOPE_USERS_WRITE
                     : (route == GW_ROUTE_GET || route == GW_ROUTE_LIST ||
                        route == GW_ROUTE_COUNT)                         ? PD_SCOPE_PRESENCES_READ
                                                                         : PD_SCOPE_PRESENCES_WRITE;
    if (s_check_scope(&id, scope, err, sizeof err) < 0) {
        gw_respond_err(gw, req, route, PD_ERR_UNAUTHORIZED_SCOPE, pd_str(err), t0);
        goto out;
    }
    if (pid.ptr && !pd_uid_valid(pid)) {
        gw_respond_err(gw, req, route, PD_ERR_ARGUMENT_INVALID,
                       PD_STR("Invalid `presenceId` param: UID must contain at most 36 chars. "
                              "Valid chars are a-z, A-Z, 0-9, and underscore. Can't start with a "
                              "leading underscore"),
                       t0);
        goto out;
    }
    switch (route) {
    case GW_ROUTE_LIST:
    case GW_ROUTE_COUNT: s_list(gw, req, &id, t0, route); break;
    case GW_ROUTE_GET: s_simple(gw, req, &id, pid, PD_MSG_GET, route); break;
    case GW_ROUTE_DELETE: s_simple(gw, req, &id, pid, PD_MSG_DELETE, route); break;
    case GW_ROUTE_UPSERT: s_write(gw, req, &id, pid, true, t0); break;
    case GW_ROUTE_UPDATE: s_write(gw, req, &id, pid, false, t0); break;
    case GW_ROUTE_JWT: s_mint_jwt(gw, req, &id, user, t0); break;
    }
out:
    gw_ident_free(&id);
    return 0;
}
