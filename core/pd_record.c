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
    d = S_LIT(d, "{\"$id\":\"");
    d = s_cat(d, rec->id.ptr, rec->id.len); /* UIDs need no escaping */
    d = S_LIT(d, "\",\"$createdAt\":\"");
    d += pd_time_format(rec->created_ms, d);
    d = S_LIT(d, "\",\"$updatedAt\":\"");
    d += pd_time_format(rec->updated_ms, d);
    d = S_LIT(d, "\",\"$permissions\":");
    d = s_cat(d, perms.ptr, perms.len);
    d = S_LIT(d, ",\"userId\":\"");
    d = s_cat(d, rec->user_id.ptr, rec->user_id.len);
    d = S_LIT(d, "\",\"status\":");
    d = s_cat(d, status.ptr, status.len);
    d = S_LIT(d, ",\"source\":\"");
    d = s_cat(d, rec->source.ptr, rec->source.len);
    d = S_LIT(d, "\",\"expiresAt\":\"");
    d += pd_time_format(rec->expires_ms, d);
    d = S_LIT(d, "\",\"metadata\":");
    d = s_cat(d, meta.ptr, meta.len);
    d = S_LIT(d, "}");
    b->len = (size_t)(d - b->data);
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
