/*  pd_record — see pd_record.h. */
#include "pd_record.h"

//  Appends the n bytes at p at d; returns the byte after them.
static inline char *
s_cat(char *d, const char *p, size_t n)
{
    if (n)
        memcpy(d, p, n);
    return d + n;
}

#define S_LIT(d, lit) s_cat((d), (lit), sizeof(lit) - 1)
#define S_LEN(lit) (sizeof(lit) - 1)

/*  The Presence JSON's fixed text, in order: pd_record_render writes it, pd_record_locate
 *  counts it. */
#define S_K_ID "{\"$id\":\""
#define S_K_CREATED "\",\"$createdAt\":\""
#define S_K_UPDATED "\",\"$updatedAt\":\""
#define S_K_PERMS "\",\"$permissions\":"
#define S_K_USER ",\"userId\":\""
#define S_K_STATUS "\",\"status\":"
#define S_K_SOURCE ",\"source\":\""
#define S_K_EXPIRES "\",\"expiresAt\":\""
#define S_K_META "\",\"metadata\":"
#define S_K_END "}"

/*  Renders on every write (pd_table_put), so it makes room once and then copies: the fixed
 *  text below is 119 bytes, and each date takes at most 32 (pd_time_format writes 29 bytes and
 *  a NUL for years 0..9999, at most 32 with its NUL for the others). */
void
pd_record_render(const pd_record_t *rec, pd_buf_t *b)
{
    pd_str_t perms = rec->perms_json.len ? rec->perms_json : PD_STR("[]");
    pd_str_t status = rec->status_json.len ? rec->status_json : PD_STR("null");
    pd_str_t meta = rec->meta_json.len ? rec->meta_json : PD_STR("{}");
    pd_buf_reserve(b, 119 + 3 * 32 + rec->id.len + rec->user_id.len + perms.len + status.len +
                          rec->source.len + meta.len);
    char *d = b->data + b->len;
    d = S_LIT(d, S_K_ID);
    d = s_cat(d, rec->id.ptr, rec->id.len); /* UIDs need no escaping */
    d = S_LIT(d, S_K_CREATED);
    d += pd_time_format(rec->created_ms, d);
    d = S_LIT(d, S_K_UPDATED);
    d += pd_time_format(rec->updated_ms, d);
    d = S_LIT(d, S_K_PERMS);
    d = s_cat(d, perms.ptr, perms.len);
    d = S_LIT(d, S_K_USER);
    d = s_cat(d, rec->user_id.ptr, rec->user_id.len);
    d = S_LIT(d, S_K_STATUS);
    d = s_cat(d, status.ptr, status.len);
    d = S_LIT(d, S_K_SOURCE);
    d = s_cat(d, rec->source.ptr, rec->source.len);
    d = S_LIT(d, S_K_EXPIRES);
    d += pd_time_format(rec->expires_ms, d);
    d = S_LIT(d, S_K_META);
    d = s_cat(d, meta.ptr, meta.len);
    d = S_LIT(d, S_K_END);
    b->len = (size_t)(d - b->data);
}

//  The rendered length of a JSON part pd_record_render substitutes when empty.
static inline size_t
s_or(size_t len, const char *dflt)
{
    return len ? len : strlen(dflt);
}

bool
pd_record_locate(pd_record_t *rec)
{
    size_t id = S_LEN(S_K_ID);
    size_t perms = id + rec->id.len + S_LEN(S_K_CREATED) + pd_time_len(rec->created_ms) +
                   S_LEN(S_K_UPDATED) + pd_time_len(rec->updated_ms) + S_LEN(S_K_PERMS);
    size_t user = perms + s_or(rec->perms_json.len, "[]") + S_LEN(S_K_USER);
    size_t status = user + rec->user_id.len + S_LEN(S_K_STATUS);
    size_t source = status + s_or(rec->status_json.len, "null") + S_LEN(S_K_SOURCE);
    size_t meta = source + rec->source.len + S_LEN(S_K_EXPIRES) +
                  pd_time_len(rec->expires_ms) + S_LEN(S_K_META);
    if (meta + s_or(rec->meta_json.len, "{}") + S_LEN(S_K_END) != rec->json.len)
        return false;
    const char *j = rec->json.ptr;
    const struct {
        pd_str_t *f;
        size_t at;
    } at[] = {{&rec->id, id},           {&rec->perms_json, perms}, {&rec->user_id, user},
              {&rec->status_json, status}, {&rec->source, source},  {&rec->meta_json, meta}};
    if (!rec->status.ptr && rec->status.len + 2 != rec->status_json.len)
        return false; /* the status's view is the inside of status_json's string */
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
        if (!at[i].f->ptr)
            at[i].f->ptr = j + at[i].at;
    if (!rec->status.ptr)
        rec->status.ptr = rec->status_json.ptr + 1;
    return true;
}

bool
pd_roles_intersect(pd_str_t allowed, pd_str_t caller)
{
    for (pd_str_t a = pd_list_first(allowed); a.ptr; a = pd_list_next(allowed, a)) {
        if (pd_str_eqc(a, "any"))
            return true;
        if (pd_list_has(caller, a))
            return true;
    }
    return false;
}

void
pd_record_write(pd_msgw_t *w, const pd_record_t *rec, unsigned parts)
{
    if (parts & PD_REC_KEY) {
        pd_msgw_s(w, PD_F_PROJECT, rec->project);
        pd_msgw_s(w, PD_F_ID, rec->id);
        pd_msgw_s(w, PD_F_USER, rec->user_id);
    }
    if (parts & PD_REC_CONTENT) {
        pd_msgw_s(w, PD_F_STATUS, rec->status);
        pd_msgw_s(w, PD_F_STATUS_JSON, rec->status_json);
        pd_msgw_s(w, PD_F_SOURCE, rec->source);
        pd_msgw_s(w, PD_F_META_JSON, rec->meta_json);
        pd_msgw_s(w, PD_F_READ_ROLES, rec->read_roles);
        pd_msgw_s(w, PD_F_CONN, rec->conn);
    }
    if (parts & PD_REC_PERMS) {
        pd_msgw_s(w, PD_F_PERMS_JSON, rec->perms_json);
        pd_msgw_s(w, PD_F_UPDATE_ROLES, rec->update_roles);
        pd_msgw_s(w, PD_F_DELETE_ROLES, rec->delete_roles);
    }
    if (parts & PD_REC_EXPIRES)
        pd_msgw_int(w, PD_F_EXPIRES, rec->expires_ms);
    if (parts & PD_REC_STAMPS) {
        pd_msgw_int(w, PD_F_VERSION, (int64_t)rec->version);
        pd_msgw_int(w, PD_F_CREATED, rec->created_ms);
        pd_msgw_int(w, PD_F_UPDATED, rec->updated_ms);
    }
    if (parts & PD_REC_BODY)
        pd_msgw_s(w, PD_F_BODY, rec->json);
}

void
pd_record_write_prev(pd_msgw_t *w, const pd_record_t *prev)
{
    pd_msgw_s(w, PD_F_PREV_BODY, prev->json);
    pd_msgw_s(w, PD_F_PREV_READ_ROLES, prev->read_roles);
    pd_msgw_s(w, PD_F_PREV_STATUS, prev->status);
    pd_msgw_s(w, PD_F_PREV_META_JSON, prev->meta_json);
    pd_msgw_int(w, PD_F_PREV_EXPIRES, prev->expires_ms);
    pd_msgw_s(w, PD_F_PREV_USER, prev->user_id);
}

void
pd_record_read(const pd_msg_t *m, pd_record_t *rec)
{
    memset(rec, 0, sizeof *rec);
    rec->project = m->s[PD_F_PROJECT];
    rec->id = m->s[PD_F_ID];
    rec->user_id = m->s[PD_F_USER];
    rec->status = m->s[PD_F_STATUS];
    rec->status_json = m->s[PD_F_STATUS_JSON];
    rec->source = m->s[PD_F_SOURCE];
    rec->meta_json = m->s[PD_F_META_JSON];
    rec->read_roles = m->s[PD_F_READ_ROLES];
    rec->conn = m->s[PD_F_CONN];
    rec->perms_json = m->s[PD_F_PERMS_JSON];
    rec->update_roles = m->s[PD_F_UPDATE_ROLES];
    rec->delete_roles = m->s[PD_F_DELETE_ROLES];
    rec->expires_ms = m->i[PD_F_EXPIRES];
    rec->version = (uint64_t)m->i[PD_F_VERSION];
    rec->created_ms = m->i[PD_F_CREATED];
    rec->updated_ms = m->i[PD_F_UPDATED];
    rec->json = m->s[PD_F_BODY];
}

#define ITEM_FIELDS 12

void
pd_record_pack_item(const pd_record_t *rec, msgpack_packer *pk)
{
    const pd_str_t *s[] = {&rec->id,     &rec->user_id,    &rec->status,   &rec->status_json,
                           &rec->source, &rec->read_roles, &rec->meta_json};
    msgpack_pack_array(pk, ITEM_FIELDS);
    for (size_t i = 0; i < sizeof s / sizeof *s; i++)
        msgpack_pack_str_with_body(pk, s[i]->ptr ? s[i]->ptr : "", s[i]->len);
    msgpack_pack_int64(pk, rec->created_ms);
    msgpack_pack_int64(pk, rec->updated_ms);
    msgpack_pack_int64(pk, rec->expires_ms);
    msgpack_pack_uint64(pk, rec->version);
    msgpack_pack_str_with_body(pk, rec->json.ptr ? rec->json.ptr : "", rec->json.len);
}

bool
pd_record_read_item(pd_mpr_t *r, pd_record_t *rec)
{
    uint32_t n;
    int64_t version;
    memset(rec, 0, sizeof *rec);
    return pd_mpr_array(r, &n) && n == ITEM_FIELDS && pd_mpr_str(r, &rec->id) &&
           pd_mpr_str(r, &rec->user_id) && pd_mpr_str(r, &rec->status) &&
           pd_mpr_str(r, &rec->status_json) && pd_mpr_str(r, &rec->source) &&
           pd_mpr_str(r, &rec->read_roles) && pd_mpr_str(r, &rec->meta_json) &&
           pd_mpr_int(r, &rec->created_ms) &&
           pd_mpr_int(r, &rec->updated_ms) && pd_mpr_int(r, &rec->expires_ms) &&
           pd_mpr_int(r, &version) && (rec->version = (uint64_t)version, true) &&
           pd_mpr_str(r, &rec->json) && rec->id.len;
}

bool
pd_record_read_prev(const pd_msg_t *m, const pd_record_t *rec, pd_record_t *prev)
{
    if (!pd_msg_has(m, PD_F_PREV_BODY))
        return false;
    *prev = *rec;
    prev->user_id = m->s[PD_F_PREV_USER];
    prev->status = m->s[PD_F_PREV_STATUS];
    prev->status_json = PD_STR_NULL;
    prev->meta_json = m->s[PD_F_PREV_META_JSON];
    prev->read_roles = m->s[PD_F_PREV_READ_ROLES];
    prev->expires_ms = m->i[PD_F_PREV_EXPIRES];
    prev->updated_ms = 0;
    prev->json = m->s[PD_F_PREV_BODY];
    return true;
}

int64_t
pd_record_body_time(pd_str_t body, const char *key)
{
    char pat[24];
    int pl = snprintf(pat, sizeof pat, "\"%s\":\"", key);
    for (size_t i = 0; body.len >= (size_t)pl + 29 && i + (size_t)pl + 29 <= body.len; i++)
        if (memcmp(body.ptr + i, pat, (size_t)pl) == 0) {
            int64_t t = 0;
            if (pd_time_parse(body.ptr + i + pl, 29, &t) == 0)
                return t;
            return 0;
        }
    return 0;
}

size_t
pd_page_head(char *head, int64_t total)
{
    return (size_t)snprintf(head, PD_PAGE_HEAD_MAX, "{\"total\":%lld,\"presences\":[",
                            (long long)total);
}

size_t
pd_page_len(size_t head, size_t n, size_t json)
{
    return head + json + (n ? n - 1 : 0) + sizeof PD_PAGE_TAIL - 1;
}
