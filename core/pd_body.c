/*  pd_body — see pd_body.h. */
#include "pd_body.h"

#include <stdio.h>
#include <stdlib.h>

#include "pd_err.h"

#define MAX_STATUS_CHARS 255
#define MAX_TTL_MS (30LL * 24 * 3600 * 1000)


void
pd_body_free(pd_body_t *b)
{
    if (!b)
        return;
    json_decref(b->root);
    pd_buf_free(&b->status_json);
    pd_buf_free(&b->meta_json);
    pd_perms_free(&b->perms);
}

static size_t
s_utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

void
pd_body_init(pd_body_t *b)
{
    memset(b, 0, sizeof *b);
    pd_buf_init(&b->status_json);
    pd_buf_init(&b->meta_json);
    pd_perms_init(&b->perms);
}

void
pd_body_clear(pd_body_t *b)
{
    json_decref(b->root);
    b->root = NULL;
    b->has_user = b->has_status = b->has_meta = b->has_expires = b->has_perms = false;
    b->user = b->status = PD_STR_NULL;
    b->expires = 0;
    pd_buf_reset(&b->status_json);
    pd_buf_reset(&b->meta_json);
}

static int
s_dump_to_buf(const char *buf, size_t size, void *data)
{
    pd_buf_add(data, buf, size);
    return 0;
}

int
pd_body_parse(pd_body_t *b, const char *buf, size_t len, size_t max_meta, int64_t now, char *msg,
              size_t n)
{
    pd_body_clear(b);
    if (len == 0) {
        b->root = json_object();
    } else {
        json_error_t je;
        b->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
        if (!b->root || !json_is_object(b->root)) {
            snprintf(msg, n, "Invalid request body: it must be a JSON object.");
            return PD_ERR_ARGUMENT_INVALID;
        }
    }
    json_t *v;
    if ((v = json_object_get(b->root, "userId")) && !json_is_null(v)) {
        if (!json_is_string(v) ||
            !pd_uid_valid((pd_str_t){json_string_value(v), json_string_length(v)})) {
            snprintf(msg, n, "Invalid `userId` param: UID must contain at most 36 chars. Valid "
                             "chars are a-z, A-Z, 0-9, and underscore. Can't start with a "
                             "leading underscore");
            return PD_ERR_ARGUMENT_INVALID;
        }
        b->has_user = true;
        b->user = (pd_str_t){json_string_value(v), json_string_length(v)};
    }
    if ((v = json_object_get(b->root, "status")) && !json_is_null(v)) {
        size_t chars = json_is_string(v) ? s_utf8_chars(json_string_value(v), json_string_length(v)) : 0;
        if (!json_is_string(v) || chars < 1 || chars > MAX_STATUS_CHARS ||
            memchr(json_string_value(v), 0, json_string_length(v))) {
            snprintf(msg, n, "Invalid `status` param: Value must be a valid string and at "
                             "least 1 chars and no longer than 255 chars");
            return PD_ERR_ARGUMENT_INVALID;
        }
        b->has_status = true;
        b->status = (pd_str_t){json_string_value(v), json_string_length(v)};
        pd_buf_add_json_str(&b->status_json, b->status.ptr, b->status.len);
    }
    if ((v = json_object_get(b->root, "metadata")) && !json_is_null(v)) {
        json_t *obj = v, *owned = NULL;
        if (json_is_string(v)) { /* Appwrite accepts a string that decodes to an object */
            owned = json_loadb(json_string_value(v), json_string_length(v), 0, NULL);
            obj = owned;
        }
        if (obj && json_is_array(obj) && json_array_size(obj) == 0) {
            pd_buf_adds(&b->meta_json, "{}");
        } else if (obj && json_is_object(obj)) {
            /* straight into the reused buffer: json_dumps would malloc, grow and copy */
            json_dump_callback(obj, s_dump_to_buf, &b->meta_json,
                               JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
        } else {
            json_decref(owned);
            snprintf(msg, n, "Invalid `metadata` param: Value must be a valid object.");
            return PD_ERR_ARGUMENT_INVALID;
        }
        json_decref(owned);
        if (b->meta_json.len > max_meta) {
            snprintf(msg, n,
                     "Invalid `metadata` param: Value must be a JSON object of at most %zu "
                     "bytes when encoded.",
                     max_meta);
            return PD_ERR_ARGUMENT_INVALID;
        }
        b->has_meta = true;
    }
    if ((v = json_object_get(b->root, "expiresAt")) && !json_is_null(v)) {
        int64_t t = 0;
        if (!json_is_string(v) ||
            pd_time_parse(json_string_value(v), json_string_length(v), &t) < 0 || t <= now ||
            t > now + MAX_TTL_MS) {
            snprintf(msg, n, "Invalid `expiresAt` param: Value must be valid date in the future "
                             "and no more than 30 days from now.");
            return PD_ERR_ARGUMENT_INVALID;
        }
        b->has_expires = true;
        b->expires = t;
    }
    if ((v = json_object_get(b->root, "permissions")) && !json_is_null(v)) {
        char perr[300];
        if (!json_is_array(v)) {
            snprintf(msg, n, "Invalid `permissions` param: Value must be a valid array and "
                             "Permissions must be an array of strings.");
            return PD_ERR_ARGUMENT_INVALID;
        }
        if (pd_perms_parse(v, &b->perms, perr, sizeof perr) < 0) {
            snprintf(msg, n, "Invalid `permissions` param: %s", perr);
            return PD_ERR_ARGUMENT_INVALID;
        }
        b->has_perms = true;
    }
    return PD_ERR_OK;
}

