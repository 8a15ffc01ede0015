/*  pd_record — see pd_record.h. */
#include "pd_record.h"

void
pd_record_render(const pd_record_t *rec, pd_buf_t *b)
{
    char t[32];
    pd_buf_reserve(b, 160 + rec->id.len + rec->user_id.len + rec->status_json.len +
                          rec->perms_json.len + rec->meta_json.len);
    pd_buf_adds(b, "{\"$id\":\"");
    pd_buf_add(b, rec->id.ptr, rec->id.len); /* UIDs need no escaping */
    pd_buf_adds(b, "\",\"$createdAt\":\"");
    pd_buf_add(b, t, pd_time_format(rec->created_ms, t));
    pd_buf_adds(b, "\",\"$updatedAt\":\"");
    pd_buf_add(b, t, pd_time_format(rec->updated_ms, t));
    pd_buf_adds(b, "\",\"$permissions\":");
    if (rec->perms_json.len)
        pd_buf_add(b, rec->perms_json.ptr, rec->perms_json.len);
    else
        pd_buf_adds(b, "[]");
    pd_buf_adds(b, ",\"userId\":\"");
    pd_buf_add(b, rec->user_id.ptr, rec->user_id.len);
    pd_buf_adds(b, "\",\"status\":");
    if (rec->status_json.len)
        pd_buf_add(b, rec->status_json.ptr, rec->status_json.len);
    else
        pd_buf_adds(b, "null");
    pd_buf_adds(b, ",\"source\":\"");
    pd_buf_add(b, rec->source.ptr, rec->source.len);
    pd_buf_adds(b, "\",\"expiresAt\":\"");
    pd_buf_add(b, t, pd_time_format(rec->expires_ms, t));
    pd_buf_adds(b, "\",\"metadata\":");
    if (rec->meta_json.len)
        pd_buf_add(b, rec->meta_json.ptr, rec->meta_json.len);
    else
        pd_buf_adds(b, "{}");
    pd_buf_adds(b, "}");
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
