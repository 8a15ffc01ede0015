/*  st_rooms — see st_rooms.h. */
#include "st_rooms.h"

#include "pd_err.h"
#include "pd_log.h"
#include "pd_room.h"

#define ST_ROOMS_CAPACITY 65536 //  member slots per node (sparse: pages used as written)
#define ST_EXPIRE_MAX 10000     //  members a tick removes at most

struct st_rooms {
    pd_rooms_t *rooms;
    pd_msgw_t events;
    pd_buf_t show;      //  a SHOW reply's body
    pd_room_n_t *list;  //  a ROOMS answer's rooms (channels: views into the rooms index)
    size_t nlist, cap_list;
    int node;
};

typedef struct {
    st_rooms_t *r;
    pd_str_t project;
} list_ctx_t;

static void
s_list_room(pd_str_t project, pd_str_t channel, uint32_t count, void *arg)
{
    list_ctx_t *c = arg;
    st_rooms_t *r = c->r;
    if (!pd_str_eq(project, c->project) || !count)
        return;
    if (r->nlist == r->cap_list) {
        size_t cap = r->cap_list ? r->cap_list * 2 : 64;
        pd_room_n_t *v = realloc(r->list, cap * sizeof *v);
        if (!v)
            abort();
        r->list = v;
        r->cap_list = cap;
    }
    r->list[r->nlist++] = (pd_room_n_t){channel, count};
}

st_rooms_t *
st_rooms_open(const pd_config_t *cfg, bool fresh, pd_room_hook_fn on_member, void *arg)
{
    char name[sizeof cfg->shm_name + 8], prefix[12];
    snprintf(name, sizeof name, "%s-rooms", cfg->shm_name);
    snprintf(prefix, sizeof prefix, "n%d.", cfg->node);
    if (fresh)
        pd_rooms_unlink(name);
    st_rooms_t *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    bool created;
    r->rooms = pd_rooms_open(name, ST_ROOMS_CAPACITY, prefix, &created);
    if (!r->rooms) {
        pd_log_warn("cannot use the shared-memory segment %s (see above)", name);
        exit(PD_EXIT_REFUSED);
    }
    pd_log_info("%s %s: %zu members in %zu rooms", created ? "created" : "re-attached", name,
                pd_rooms_members(r->rooms), pd_rooms_rooms(r->rooms));
    r->node = cfg->node;
    pd_msgw_init(&r->events);
    pd_buf_init(&r->show);
    pd_rooms_set_hook(r->rooms, on_member, arg);
    return r;
}

void
st_rooms_close(st_rooms_t **rp)
{
    st_rooms_t *r = *rp;
    if (!r)
        return;
    pd_rooms_close(&r->rooms);
    pd_msgw_destroy(&r->events);
    pd_buf_free(&r->show);
    free(r->list);
    free(r);
    *rp = NULL;
}

static void
s_reply(pd_msgw_t *reply, const pd_msg_t *m, int err, const char *msg)
{
    pd_msgw_begin(reply, PD_MSG_REPLY, m->rid);
    pd_msgw_int(reply, PD_F_ERR, err);
    if (msg)
        pd_msgw_str(reply, PD_F_MESSAGE, msg, strlen(msg));
    pd_msgw_end(reply);
}

typedef struct {
    msgpack_packer *pk;
} snap_ctx_t;

static void
s_snap_item(const pd_room_member_t *m, void *arg)
{
    msgpack_packer *pk = ((snap_ctx_t *)arg)->pk;
    msgpack_pack_array(pk, 3);
    msgpack_pack_str_with_body(pk, m->key.ptr, m->key.len);
    msgpack_pack_str_with_body(pk, m->ref.ptr, m->ref.len);
    msgpack_pack_str_with_body(pk, m->meta.ptr, m->meta.len);
}

//  A room's members as JSON for operators (presencectl): in the order they joined.
typedef struct {
    pd_buf_t *b;
    bool first;
} show_ctx_t;

static void
s_show_item(const pd_room_member_t *m, void *arg)
{
    show_ctx_t *c = arg;
    pd_buf_adds(c->b, c->first ? "{\"key\":" : ",{\"key\":");
    c->first = false;
    pd_buf_add_json_str(c->b, m->key.ptr, m->key.len);
    pd_buf_adds(c->b, ",\"phx_ref\":");
    pd_buf_add_json_str(c->b, m->ref.ptr, m->ref.len);
    pd_buf_adds(c->b, ",\"conn\":");
    pd_buf_add_json_str(c->b, m->conn.ptr, m->conn.len);
    pd_buf_addf(c->b, ",\"lease_ms\":%lld,\"meta\":", (long long)m->lease_ms);
    if (m->meta.len)
        pd_buf_add(c->b, m->meta.ptr, m->meta.len);
    else
        pd_buf_adds(c->b, "{}");
    pd_buf_add(c->b, "}", 1);
}

void
st_rooms_on_msg(st_rooms_t *r, const pd_msg_t *m, pd_msgw_t *reply, int64_t gen, uint64_t seq)
{
    pd_str_t project = m->s[PD_F_PROJECT], channel = m->s[PD_F_ID], conn = m->s[PD_F_CONN];
    switch (m->i[PD_F_ACTION]) {
    case PD_ROOM_TRACK: {
        int64_t limit = m->i[PD_F_LIMIT];
        int rc = pd_rooms_track(r->rooms, project, channel, conn, m->s[PD_F_PKEY],
                                m->s[PD_F_META_JSON], pd_now_ms() + PD_ROOM_LEASE_MS,
                                limit > 0 && limit < UINT32_MAX ? (uint32_t)limit : 0);
        char msg[160];
        switch (rc) {
        case PD_ROOM_OK: s_reply(reply, m, PD_ERR_OK, NULL); break;
        case PD_ROOM_FULL:
            snprintf(msg, sizeof msg, "Too many presences in this channel: at most %lld.",
                     (long long)limit);
            s_reply(reply, m, PD_ERR_LIMIT_EXCEEDED, msg);
            break;
        case PD_ROOM_NOSPACE: s_reply(reply, m, PD_ERR_STORE_FULL, NULL); break;
        default: s_reply(reply, m, PD_ERR_ARGUMENT_INVALID, "Presence key or meta too large."); break;
        }
        return;
    }
    case PD_ROOM_UNTRACK:
        pd_rooms_untrack(r->rooms, project, channel, conn);
        s_reply(reply, m, PD_ERR_OK, NULL);
        return;
    case PD_ROOM_RENEW: {
        const msgpack_object *items = m->o[PD_F_ITEMS];
        int64_t lease = pd_now_ms() + PD_ROOM_LEASE_MS;
        for (uint32_t i = 0; items && items->type == MSGPACK_OBJECT_ARRAY && i < items->via.array.size;
             i++) {
            const msgpack_object *it = &items->via.array.ptr[i];
            if (it->type == MSGPACK_OBJECT_STR)
                pd_rooms_renew(r->rooms, project, channel,
                               (pd_str_t){it->via.str.ptr, it->via.str.size}, lease);
        }
        s_reply(reply, m, PD_ERR_OK, NULL);
        return;
    }
    case PD_ROOM_SNAP: {
        pd_msgw_t *w = &r->events;
        pd_msgw_begin(w, PD_MSG_ROOM_EVENT, 0);
        pd_msgw_int(w, PD_F_ACTION, PD_ROOM_SNAPSHOT);
        pd_msgw_int(w, PD_F_NODE, r->node);
        pd_msgw_int(w, PD_F_GEN, gen);
        pd_msgw_int(w, PD_F_SNAP_SEQ, (int64_t)seq);
        pd_msgw_s(w, PD_F_PROJECT, project);
        pd_msgw_s(w, PD_F_ID, channel);
        pd_msgw_s(w, PD_F_TARGET, m->s[PD_F_TARGET]);
        pd_msgw_raw(w, PD_F_ITEMS);
        msgpack_pack_array(&w->pk, pd_rooms_count(r->rooms, project, channel));
        snap_ctx_t c = {&w->pk};
        pd_rooms_each(r->rooms, project, channel, s_snap_item, &c);
        pd_msgw_end(w);
        s_reply(reply, m, PD_ERR_OK, NULL);
        return;
    }
    case PD_ROOM_SEND: {
        pd_msgw_t *w = &r->events;
        pd_msgw_begin(w, PD_MSG_ROOM_EVENT, 0);
        pd_msgw_int(w, PD_F_ACTION, PD_ROOM_BCAST);
        pd_msgw_int(w, PD_F_NODE, r->node);
        pd_msgw_s(w, PD_F_PROJECT, project);
        pd_msgw_s(w, PD_F_ID, channel);
        pd_msgw_s(w, PD_F_CONN, conn);
        pd_msgw_s(w, PD_F_EVENT_NAME, m->s[PD_F_EVENT_NAME]);
        pd_msgw_s(w, PD_F_BODY, m->s[PD_F_BODY]);
        pd_msgw_int(w, PD_F_FLAGS, m->i[PD_F_FLAGS]);
        pd_msgw_end(w);
        s_reply(reply, m, PD_ERR_OK, NULL);
        return;
    }
    case PD_ROOM_ROOMS: {
        list_ctx_t lc = {r, project};
        r->nlist = 0;
        pd_rooms_each_room(r->rooms, s_list_room, &lc);
        qsort(r->list, r->nlist, sizeof *r->list, pd_room_n_cmp);
        size_t n = r->nlist < PD_ROOM_LIST_MAX ? r->nlist : PD_ROOM_LIST_MAX;
        pd_msgw_begin(reply, PD_MSG_REPLY, m->rid);
        pd_msgw_int(reply, PD_F_ERR, PD_ERR_OK);
        pd_msgw_int(reply, PD_F_TOTAL, (int64_t)r->nlist);
        pd_msgw_raw(reply, PD_F_ITEMS);
        msgpack_pack_array(&reply->pk, (uint32_t)n);
        for (size_t i = 0; i < n; i++) {
            msgpack_pack_array(&reply->pk, 2);
            msgpack_pack_str_with_body(&reply->pk, r->list[i].channel.ptr, r->list[i].channel.len);
            msgpack_pack_uint32(&reply->pk, r->list[i].count);
        }
        pd_msgw_end(reply);
        return;
    }
    case PD_ROOM_COUNT:
        pd_msgw_begin(reply, PD_MSG_REPLY, m->rid);
        pd_msgw_int(reply, PD_F_ERR, PD_ERR_OK);
        pd_msgw_int(reply, PD_F_TOTAL, pd_rooms_count(r->rooms, project, channel));
        pd_msgw_end(reply);
        return;
    case PD_ROOM_SHOW: {
        show_ctx_t c = {.b = &r->show, .first = true};
        pd_buf_reset(&r->show);
        pd_buf_adds(&r->show, "{\"channel\":");
        pd_buf_add_json_str(&r->show, channel.ptr, channel.len);
        pd_buf_addf(&r->show, ",\"count\":%u,\"members\":[",
                    pd_rooms_count(r->rooms, project, channel));
        pd_rooms_each(r->rooms, project, channel, s_show_item, &c);
        pd_buf_adds(&r->show, "]}");
        pd_msgw_begin(reply, PD_MSG_REPLY, m->rid);
        pd_msgw_int(reply, PD_F_ERR, PD_ERR_OK);
        pd_msgw_str(reply, PD_F_BODY, r->show.data, r->show.len);
        pd_msgw_end(reply);
        return;
    }
    default:
        s_reply(reply, m, PD_ERR_BAD_REQUEST, "unknown room action");
    }
}

void
st_rooms_tick(st_rooms_t *r, int64_t now_ms)
{
    size_t n = pd_rooms_expire(r->rooms, now_ms, ST_EXPIRE_MAX);
    if (n)
        pd_log_info("rooms: %zu members whose gateway stopped renewing them left", n);
}

pd_msgw_t *
st_rooms_events(st_rooms_t *r)
{
    return &r->events;
}

size_t
st_rooms_members(const st_rooms_t *r)
{
    return pd_rooms_members(r->rooms);
}

size_t
st_rooms_rooms(const st_rooms_t *r)
{
    return pd_rooms_rooms(r->rooms);
}
