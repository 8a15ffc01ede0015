/*  gw_fanout — the fan-out of presence events to one gateway's subscribers (see gw_fanout.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "gw_fanout.h"
#include "pd_cqueue.h"
#include "pd_msg.h"

const char gw_fo_guest_roles[] = "any\0guests\0";

typedef struct {
    pd_mapent_t h;
    struct gw_fo_node *head; //  registrations
    uint32_t n;
    uint32_t klen;
    char key[]; //  project NUL channel NUL role
} fo_bucket_t;

typedef struct gw_fo_node {
    struct gw_fo_node *prev, *next;
    fo_bucket_t *bucket;
    gw_fo_sub_t *sub;
} fo_node_t;

/*  The context of the event being fanned out. */
typedef struct {
    gw_fo_t *fo;
    int action;         //  PD_ACT_*
    bool prev;          //  an upsert/update with a previous state
    bool roles_changed; //  read roles differ before / after
    uint64_t rec;       //  the record's key in the connections' queues
    const pd_record_t *rn, *rp;
    pd_qrec_t qn, qp;
} fo_ev_t;

typedef struct {
    char s[80];
    uint32_t len;
    uint32_t mask; //  bit per kind (1 << GW_FO_*) this channel belongs to
} fo_chan_t;

static size_t
s_list_count(pd_str_t l)
{
    size_t n = 0;
    for (pd_str_t it = pd_list_first(l); it.ptr; it = pd_list_next(l, it))
        n++;
    return n;
}

/* -------------------------------------------------------------------------- index */

static fo_bucket_t *
s_bucket_get(gw_fo_t *fo, pd_str_t proj, pd_str_t chan, pd_str_t role, bool create)
{
    pd_buf_t *k = &fo->key;
    pd_buf_reset(k);
    pd_buf_add(k, proj.ptr, proj.len);
    pd_buf_add(k, "", 1);
    pd_buf_add(k, chan.ptr, chan.len);
    pd_buf_add(k, "", 1);
    pd_buf_add(k, role.ptr, role.len);
    uint64_t h = pd_map_hash(&fo->buckets, (pd_str_t){k->data, k->len}, PD_STR_NULL);
    for (pd_mapent_t *e = pd_map_first(&fo->buckets, h); e; e = e->next) {
        fo_bucket_t *b = (fo_bucket_t *)e;
        if (e->hash == h && b->klen == k->len && memcmp(b->key, k->data, b->klen) == 0)
            return b;
    }
    if (!create)
        return NULL;
    fo_bucket_t *b = pd_xcalloc(1, sizeof *b + k->len);
    b->h.hash = h;
    b->klen = (uint32_t)k->len;
    memcpy(b->key, k->data, k->len);
    pd_map_add(&fo->buckets, &b->h);
    return b;
}

static void
s_sub_register(gw_fo_t *fo, gw_fo_sub_t *s)
{
    gw_fo_conn_t *c = s->conn;
    pd_str_t roles = {c->roles, c->roles_len};
    size_t nroles = s_list_count(roles);
    s->nnodes = (uint32_t)(s->nchan * nroles);
    s->nodes = s->nnodes ? pd_xcalloc(s->nnodes, sizeof *s->nodes) : NULL;
    size_t i = 0;
    pd_str_t chans = {s->data + s->idlen + 1, s->chan_len}, proj = pd_str(c->project);
    for (pd_str_t ch = pd_list_first(chans); ch.ptr; ch = pd_list_next(chans, ch))
        for (pd_str_t r = pd_list_first(roles); r.ptr; r = pd_list_next(roles, r)) {
            fo_node_t *nd = &s->nodes[i++];
            fo_bucket_t *b = s_bucket_get(fo, proj, ch, r, true);
            nd->sub = s;
            nd->bucket = b;
            nd->prev = NULL;
            nd->next = b->head;
            if (b->head)
                b->head->prev = nd;
            b->head = nd;
            b->n++;
        }
}

static void
s_sub_unregister(gw_fo_t *fo, gw_fo_sub_t *s)
{
    for (uint32_t i = 0; i < s->nnodes; i++) {
        fo_node_t *nd = &s->nodes[i];
        fo_bucket_t *b = nd->bucket;
        if (nd->prev)
            nd->prev->next = nd->next;
        else
            b->head = nd->next;
        if (nd->next)
            nd->next->prev = nd->prev;
        if (--b->n == 0) {
            pd_map_del(&fo->buckets, &b->h);
            free(b);
        }
    }
    free(s->nodes);
    s->nodes = NULL;
    s->nnodes = 0;
}

gw_fo_sub_t **
gw_fo_sub_find(gw_fo_conn_t *fc, pd_str_t id)
{
    for (gw_fo_sub_t **pp = &fc->subs; *pp; pp = &(*pp)->next)
        if ((*pp)->idlen == id.len && memcmp((*pp)->data, id.ptr, id.len) == 0)
            return pp;
    return NULL;
}

void
gw_fo_sub_remove(gw_fo_t *fo, gw_fo_conn_t *fc, gw_fo_sub_t **pp)
{
    gw_fo_sub_t *s = *pp;
    *pp = s->next;
    fc->nsubs--;
    fc->nchan -= s->nchan;
    fc->sub_bytes -= s->bytes;
    fo->nsubs--;
    s_sub_unregister(fo, s);
    pd_query_destroy(&s->query);
    free(s);
}

void
gw_fo_sub_add(gw_fo_t *fo, gw_fo_conn_t *fc, pd_str_t id, pd_str_t chans, size_t nchan,
              pd_query_t *query, size_t bytes)
{
    gw_fo_sub_t **old = gw_fo_sub_find(fc, id);
    if (old)
        gw_fo_sub_remove(fo, fc, old);
    size_t idlen = id.len > 255 ? 255 : id.len;
    gw_fo_sub_t *s = pd_xcalloc(1, sizeof *s + idlen + 1 + chans.len);
    s->conn = fc;
    s->idlen = (uint8_t)idlen;
    memcpy(s->data, id.ptr, idlen);
    if (chans.len)
        memcpy(s->data + idlen + 1, chans.ptr, chans.len);
    s->chan_len = (uint16_t)chans.len;
    s->nchan = (uint16_t)nchan;
    s->bytes = (uint32_t)bytes;
    s->query = query;
    s->next = fc->subs;
    fc->subs = s;
    fc->nsubs++;
    fc->nchan += s->nchan;
    fc->sub_bytes += s->bytes;
    fo->nsubs++;
    s_sub_register(fo, s);
}

void
gw_fo_conn_init(gw_fo_conn_t *fc, gw_ws_conn_t *ws, const char *project)
{
    memset(fc, 0, sizeof *fc);
    fc->ws = ws;
    fc->project = project;
    fc->roles = (char *)gw_fo_guest_roles;
    fc->roles_len = GW_FO_GUEST_ROLES_LEN;
}

void
gw_fo_conn_roles(gw_fo_t *fo, gw_fo_conn_t *fc, const char *roles, size_t len)
{
    for (gw_fo_sub_t *s = fc->subs; s; s = s->next)
        s_sub_unregister(fo, s);
    if (fc->roles != gw_fo_guest_roles)
        free(fc->roles);
    if (roles == gw_fo_guest_roles) {
        fc->roles = (char *)gw_fo_guest_roles;
    } else {
        fc->roles = pd_xcalloc(1, len);
        memcpy(fc->roles, roles, len);
    }
    fc->roles_len = (uint32_t)len;
    for (gw_fo_sub_t *s = fc->subs; s; s = s->next)
        s_sub_register(fo, s);
}

void
gw_fo_conn_clear(gw_fo_t *fo, gw_fo_conn_t *fc)
{
    while (fc->subs)
        gw_fo_sub_remove(fo, fc, &fc->subs);
    if (fc->roles != gw_fo_guest_roles)
        free(fc->roles);
    fc->roles = (char *)gw_fo_guest_roles;
    fc->roles_len = GW_FO_GUEST_ROLES_LEN;
}

/* -------------------------------------------------------------------------- events */

static const char *
s_act_name(int act)
{
    return act == PD_ACT_UPSERT ? "upsert" : act == PD_ACT_UPDATE ? "update" : "delete";
}

static int
s_kind_action(const fo_ev_t *e, int kind)
{
    return kind == GW_FO_LOST ? PD_ACT_DELETE : kind == GW_FO_GAINED ? PD_ACT_UPSERT : e->action;
}

/*  Which frame, if any, a connection with these roles gets. */
static int
s_kind(const fo_ev_t *e, pd_str_t roles)
{
    bool can = pd_roles_intersect(e->rn->read_roles, roles);
    if (!e->prev)
        return can ? GW_FO_MAIN : GW_FO_NONE;
    bool could = e->roles_changed ? pd_roles_intersect(e->rp->read_roles, roles) : can;
    if (can && could)
        return GW_FO_MAIN;
    if (can)
        return GW_FO_GAINED;
    if (could)
        return GW_FO_LOST;
    return GW_FO_NONE;
}

static bool
s_query_ok(fo_ev_t *e, const gw_fo_sub_t *s, int kind)
{
    if (!s->query)
        return true;
    switch (kind) {
    case GW_FO_MAIN:
        return pd_query_match(s->query, &e->qn) || (e->prev && pd_query_match(s->query, &e->qp));
    case GW_FO_LOST:
        return pd_query_match(s->query, &e->qp);
    case GW_FO_GAINED:
        return pd_query_match(s->query, &e->qn);
    }
    return false;
}

static void
s_consider(fo_ev_t *e, gw_fo_sub_t *s, uint32_t mask)
{
    gw_fo_t *fo = e->fo;
    gw_fo_conn_t *c = s->conn;
    if (c->stamp != fo->stamp) {
        c->stamp = fo->stamp;
        c->kind = (uint8_t)(c->ws->state == GW_WS_OPEN
                                ? s_kind(e, (pd_str_t){c->roles, c->roles_len})
                                : GW_FO_NONE);
        c->ev_head = -1;
    }
    if (c->kind == GW_FO_NONE || !(mask & (1u << c->kind)) || s->stamp == fo->stamp)
        return;
    s->stamp = fo->stamp;
    if (!s_query_ok(e, s, c->kind))
        return;
    if (c->ev_head < 0) {
        if (fo->nm == fo->cap_m) {
            fo->cap_m = fo->cap_m ? fo->cap_m * 2 : 256;
            fo->mconns = pd_xrealloc(fo->mconns, fo->cap_m * sizeof *fo->mconns);
        }
        fo->mconns[fo->nm++] = c;
    }
    if (fo->npairs == fo->cap_pairs) {
        fo->cap_pairs = fo->cap_pairs ? fo->cap_pairs * 2 : 256;
        fo->pairs = pd_xrealloc(fo->pairs, fo->cap_pairs * sizeof *fo->pairs);
    }
    fo->pairs[fo->npairs] = (gw_fo_pair_t){s, c->ev_head};
    c->ev_head = (int32_t)fo->npairs++;
}

/*  The JSON of an event frame up to the subscription ids, once per kind per event (§6.4):
 *  events [presences.X.a, presences.*.a, presences.X, presences.*], channels [presences,
 *  presences.X, presences.a, presences.X.a], timestamp, payload. */
static gw_ws_shared_t *
s_prefix(fo_ev_t *e, int kind)
{
    gw_fo_t *fo = e->fo;
    gw_ws_shared_t *sh = &fo->pre[kind];
    if (fo->pre_ok[kind])
        return sh;
    fo->pre_ok[kind] = true;
    gw_ws_shared_reset(sh);
    pd_buf_t *b = &sh->plain;
    const char *a = s_act_name(s_kind_action(e, kind));
    pd_str_t id = e->rn->id;
    int il = (int)id.len;
    const char *ip = id.ptr ? id.ptr : "";
    int64_t t = e->action == PD_ACT_DELETE ? pd_now_ms() : e->rn->updated_ms;
    char ts[32];
    pd_time_format(t, ts);
    pd_str_t payload = kind == GW_FO_LOST ? e->rp->json : e->rn->json;
    pd_buf_addf(b,
                "{\"type\":\"event\",\"data\":{\"events\":[\"presences.%.*s.%s\","
                "\"presences.*.%s\",\"presences.%.*s\",\"presences.*\"],\"channels\":["
                "\"presences\",\"presences.%.*s\",\"presences.%s\",\"presences.%.*s.%s\"],"
                "\"timestamp\":\"%s\",\"payload\":",
                il, ip, a, a, il, ip, il, ip, a, il, ip, a, ts);
    if (payload.len)
        pd_buf_add(b, payload.ptr, payload.len);
    else
        pd_buf_adds(b, "{}");
    pd_buf_adds(b, ",\"subscriptions\":[");
    return sh;
}

static void
s_deliver(fo_ev_t *e)
{
    gw_fo_t *fo = e->fo;
    static const char suffix[] = "]}}";
    for (size_t i = 0; i < fo->nm; i++) {
        gw_fo_conn_t *c = fo->mconns[i];
        if (c->ws->state != GW_WS_OPEN)
            continue;
        gw_ws_shared_t *pre = s_prefix(e, c->kind);
        size_t n = sizeof suffix - 1, cnt = 0; /* the tail: ids and suffix */
        for (int32_t k = c->ev_head; k >= 0; k = fo->pairs[k].next, cnt++)
            n += fo->pairs[k].sub->idlen + 2u;
        n += cnt - 1;
        int act = s_kind_action(e, c->kind);
        int how = act == PD_ACT_DELETE ? PD_CQ_DELETE
                  : act == PD_ACT_UPSERT && (!e->prev || c->kind == GW_FO_GAINED) ? PD_CQ_CREATE
                                                                                 : PD_CQ_CHANGE;
        char *d = gw_ws_out_shared(c->ws, e->rec, how, pre, n);
        if (!d)
            continue;
        for (int32_t k = c->ev_head; k >= 0; k = fo->pairs[k].next) {
            const gw_fo_sub_t *s = fo->pairs[k].sub;
            *d++ = '"';
            memcpy(d, s->data, s->idlen);
            d += s->idlen;
            *d++ = '"';
            if (fo->pairs[k].next >= 0)
                *d++ = ',';
        }
        memcpy(d, suffix, sizeof suffix - 1);
        fo->frames++;
        fo->frame_bytes += pre->plain.len + n;
    }
}

static void s_chan_add(fo_chan_t *v, size_t *n, uint32_t mask, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
s_chan_add(fo_chan_t *v, size_t *n, uint32_t mask, const char *fmt, ...)
{
    char s[80];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof s)
        return;
    for (size_t i = 0; i < *n; i++)
        if (v[i].len == (uint32_t)len && memcmp(v[i].s, s, (size_t)len) == 0) {
            v[i].mask |= mask;
            return;
        }
    memcpy(v[*n].s, s, (size_t)len + 1);
    v[*n].len = (uint32_t)len;
    v[*n].mask = mask;
    (*n)++;
}

void
gw_fo_event(gw_fo_t *fo, int action, const pd_record_t *rn, const pd_record_t *rp)
{
    if (action < PD_ACT_UPSERT || action > PD_ACT_DELETE || !rn->id.len)
        return;
    fo_ev_t e;
    memset(&e, 0, sizeof e);
    e.fo = fo;
    e.action = action;
    e.rn = rn;
    e.rp = rp;
    e.prev = action != PD_ACT_DELETE && rp;
    e.roles_changed = e.prev && !pd_list_eq(rn->read_roles, rp->read_roles);
    e.rec = pd_hash2_keyed(fo->rec_key, rn->project, rn->id);
    e.rec += !e.rec; /* 0 means no record */
    pd_qrec_init(&e.qn, rn);
    pd_qrec_init(&e.qp, e.prev ? rp : rn);

    /* The channels this event can reach, each with the kinds of frame it belongs to. */
    fo_chan_t ch[8];
    size_t nch = 0;
    pd_str_t id = rn->id;
    uint32_t all = 1u << GW_FO_MAIN | 1u << GW_FO_LOST | 1u << GW_FO_GAINED;
    s_chan_add(ch, &nch, all, "presences");
    s_chan_add(ch, &nch, all, "presences.%.*s", (int)id.len, id.ptr);
    const char *a = s_act_name(action);
    s_chan_add(ch, &nch, 1u << GW_FO_MAIN, "presences.%s", a);
    s_chan_add(ch, &nch, 1u << GW_FO_MAIN, "presences.%.*s.%s", (int)id.len, id.ptr, a);
    if (e.roles_changed) {
        s_chan_add(ch, &nch, 1u << GW_FO_LOST, "presences.delete");
        s_chan_add(ch, &nch, 1u << GW_FO_LOST, "presences.%.*s.delete", (int)id.len, id.ptr);
        s_chan_add(ch, &nch, 1u << GW_FO_GAINED, "presences.upsert");
        s_chan_add(ch, &nch, 1u << GW_FO_GAINED, "presences.%.*s.upsert", (int)id.len, id.ptr);
    }

    if (++fo->stamp == 0)
        fo->stamp = 1;
    fo->npairs = fo->nm = 0;
    memset(fo->pre_ok, 0, sizeof fo->pre_ok);
    for (int pass = 0; pass < (e.roles_changed ? 2 : 1); pass++) {
        pd_str_t roles = pass ? rp->read_roles : rn->read_roles;
        for (pd_str_t role = pd_list_first(roles); role.ptr; role = pd_list_next(roles, role)) {
            if (pass && pd_list_has(rn->read_roles, role))
                continue;
            for (size_t k = 0; k < nch; k++) {
                fo_bucket_t *b =
                    s_bucket_get(fo, rn->project, (pd_str_t){ch[k].s, ch[k].len}, role, false);
                for (fo_node_t *nd = b ? b->head : NULL; nd; nd = nd->next)
                    s_consider(&e, nd->sub, ch[k].mask);
            }
        }
    }
    s_deliver(&e);
    pd_qrec_clear(&e.qn);
    pd_qrec_clear(&e.qp);
}

/* -------------------------------------------------------------------------- lifecycle */

void
gw_fo_init(gw_fo_t *fo)
{
    memset(fo, 0, sizeof *fo);
    pd_map_init(&fo->buckets);
    pd_buf_init(&fo->key);
    randombytes_buf(fo->rec_key, sizeof fo->rec_key);
    for (int k = 0; k < GW_FO__KINDS; k++)
        gw_ws_shared_init(&fo->pre[k]);
}

void
gw_fo_dispose(gw_fo_t *fo)
{
    pd_buf_free(&fo->key);
    for (int k = 0; k < GW_FO__KINDS; k++)
        gw_ws_shared_free(&fo->pre[k]);
    free(fo->pairs);
    free(fo->mconns);
}
