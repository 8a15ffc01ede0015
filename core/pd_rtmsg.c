/*  pd_rtmsg — see pd_rtmsg.h.
 *
 *  The order of checks is Appwrite's (Realtime/Message/Dispatcher.php and the handlers): the
 *  JSON, then `type`, then each declared param of the handler in order (missing required
 *  param, then the param's validator), then the handler's own work (here: the realtime
 *  queries, row by row). The first failure is the answer. */
#include "pd_rtmsg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

static pd_str_t
s_jstr(const json_t *j)
{
    return (pd_str_t){json_string_value(j), json_string_length(j)};
}

static size_t
s_utf8_chars(pd_str_t s)
{
    size_t c = 0;
    for (size_t i = 0; i < s.len; i++)
        c += ((unsigned char)s.ptr[i] & 0xc0) != 0x80;
    return c;
}

const char *
pd_rtmsg_name(int type)
{
    switch (type) {
    case PD_RTMSG_PING:
        return "ping";
    case PD_RTMSG_AUTH:
        return "authentication";
    case PD_RTMSG_SUBSCRIBE:
        return "subscribe";
    case PD_RTMSG_UNSUBSCRIBE:
        return "unsubscribe";
    case PD_RTMSG_PRESENCE:
        return "presence";
    }
    return "?";
}

void
pd_rtmsg_free(pd_rtmsg_t *m)
{
    for (size_t i = 0; i < m->nrows; i++) {
        pd_query_destroy(&m->rows[i].query);
        free(m->rows[i].channels);
        free(m->rows[i].queries);
    }
    free(m->rows);
    free(m->ids);
    pd_buf_free(&m->status_json);
    pd_buf_free(&m->meta_json);
    pd_perms_free(&m->perms);
    json_decref(m->root);
    memset(m, 0, sizeof *m);
}

/*  subscribe: SubscribePayload's checks on every row first (the validator runs before the
 *  handler), then the queries of each row (Realtime::convertQueries in the handler). */
static int
s_parse_subscribe(pd_rtmsg_t *m, json_t *data, char *err, size_t errlen)
{
    if (!data)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Payload is not valid. Items is required");
    if (!json_is_array(data))
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "items: Payload is not valid.");
    size_t n = json_array_size(data);
    if (n > PD_RTMSG_MAX_ROWS)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                      "items: A subscribe message may hold at most %d subscriptions.",
                      PD_RTMSG_MAX_ROWS);
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(data, i);
        if (!json_is_object(row))
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: Each subscribe payload must be an object.");
        json_t *ch = json_object_get(row, "channels");
        if (!ch)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: channels is not present in payload.");
        if (!json_is_array(ch))
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "items: channels is not a valid array.");
        json_t *q = json_object_get(row, "queries");
        if (q && !json_is_array(q))
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "items: queries is not a valid array.");
        json_t *id = json_object_get(row, "subscriptionId");
        if (id && !(json_is_string(id) &&
                    (pd_str_eqc(s_jstr(id), "unique()") || pd_uid_valid(s_jstr(id)))))
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: subscriptionId is not a valid id.");
        if (json_array_size(ch) > PD_RTMSG_MAX_CHANNELS)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: A subscription may have at most %d channels; this one has "
                          "%zu.",
                          PD_RTMSG_MAX_CHANNELS, json_array_size(ch));
        for (size_t k = 0; k < json_array_size(ch); k++) {
            json_t *c = json_array_get(ch, k);
            if (!json_is_string(c) || json_string_length(c) == 0 ||
                json_string_length(c) > PD_RTMSG_MAX_CHANNEL_LEN)
                return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                              "items: Each channel must be a non-empty string of at most %d "
                              "bytes.",
                              PD_RTMSG_MAX_CHANNEL_LEN);
        }
        if (q && json_array_size(q) > PD_RTMSG_MAX_QUERIES)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: A subscription may have at most %d queries; this one has "
                          "%zu.",
                          PD_RTMSG_MAX_QUERIES, json_array_size(q));
        for (size_t k = 0; q && k < json_array_size(q); k++)
            if (!json_is_string(json_array_get(q, k)))
                return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                              "items: Each query must be a string (the JSON text of a Query).");
    }
    m->rows = calloc(n ? n : 1, sizeof *m->rows);
    if (!m->rows)
        abort();
    m->nrows = n;
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(data, i);
        pd_rtmsg_row_t *r = &m->rows[i];
        json_t *id = json_object_get(row, "subscriptionId");
        if (id && !pd_str_eqc(s_jstr(id), "unique()"))
            r->id = s_jstr(id);
        json_t *ch = json_object_get(row, "channels");
        r->nchannels = json_array_size(ch);
        r->channels = calloc(r->nchannels ? r->nchannels : 1, sizeof *r->channels);
        if (!r->channels)
            abort();
        for (size_t k = 0; k < r->nchannels; k++)
            r->channels[k] = s_jstr(json_array_get(ch, k));
        json_t *q = json_object_get(row, "queries");
        r->nqueries = json_array_size(q);
        r->queries = calloc(r->nqueries ? r->nqueries : 1, sizeof *r->queries);
        if (!r->queries)
            abort();
        for (size_t k = 0; k < r->nqueries; k++)
            r->queries[k] = s_jstr(json_array_get(q, k));
        if (r->nqueries) {
            int code;
            char qerr[300];
            r->query = pd_query_parse(r->queries, r->nqueries, PD_QMODE_REALTIME, &code, qerr,
                                      sizeof qerr);
            if (!r->query)
                return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "%s", qerr);
        }
    }
    return 0;
}

static int
s_parse_unsubscribe(pd_rtmsg_t *m, json_t *data, char *err, size_t errlen)
{
    if (!data)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Payload is not valid. Items is required");
    if (!json_is_array(data))
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "items: Payload is not valid.");
    size_t n = json_array_size(data);
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(data, i);
        json_t *id = json_is_object(row) ? json_object_get(row, "subscriptionId") : NULL;
        if (!json_is_string(id) || json_string_length(id) == 0)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "items: Each unsubscribe payload must include a non-empty "
                          "subscriptionId.");
    }
    if (n > PD_RTMSG_MAX_ROWS)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                      "items: An unsubscribe message may hold at most %d subscriptions.",
                      PD_RTMSG_MAX_ROWS);
    m->ids = calloc(n ? n : 1, sizeof *m->ids);
    if (!m->ids)
        abort();
    m->nids = n;
    for (size_t i = 0; i < n; i++)
        m->ids[i] = s_jstr(json_object_get(json_array_get(data, i), "subscriptionId"));
    return 0;
}

/*  authentication: Appwrite takes a session secret in data.session. presenced has no
 *  sessions; the token is a JWT, taken from data.jwt or, so that an app can reuse the SDK's
 *  session plumbing, from data.session. */
static int
s_parse_auth(pd_rtmsg_t *m, json_t *data, char *err, size_t errlen)
{
    json_t *t = json_is_object(data) ? json_object_get(data, "jwt") : NULL;
    const char *key = "jwt";
    if (!t) {
        t = json_is_object(data) ? json_object_get(data, "session") : NULL;
        key = "session";
    }
    if (!t)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Payload is not valid. Session is required");
    if (!json_is_string(t) || json_string_length(t) == 0 || json_string_length(t) > PD_JWT_MAX_LEN)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                      "%s: Value must be a valid string and at least 1 chars and no longer than "
                      "%d chars",
                      key, PD_JWT_MAX_LEN);
    m->token = s_jstr(t);
    return 0;
}

static int
s_parse_presence(pd_rtmsg_t *m, json_t *data, size_t max_metadata, char *err, size_t errlen)
{
    json_t *obj = json_is_object(data) ? data : NULL;
    json_t *v = obj ? json_object_get(obj, "status") : NULL;
    if (!v)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Payload is not valid. Status is required");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        s_utf8_chars(s_jstr(v)) > PD_RTMSG_MAX_STATUS)
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                      "status: Value must be a valid string and at least 1 chars and no longer "
                      "than %d chars",
                      PD_RTMSG_MAX_STATUS);
    m->status = s_jstr(v);
    pd_buf_add_json_str(&m->status_json, m->status.ptr, m->status.len);

    v = json_object_get(obj, "presenceId");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > 36)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "presenceId: Value must be a valid string and no longer than 36 chars");
        pd_str_t id = s_jstr(v);
        if (!pd_str_eqc(id, "unique()")) {
            if (!pd_uid_valid(id))
                return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                              "presenceId: UID must contain at most 36 chars. Valid chars are "
                              "a-z, A-Z, 0-9, and underscore. Can't start with a leading "
                              "underscore");
            m->presence_id = id;
        }
    }

    v = json_object_get(obj, "metadata");
    if (v && !json_is_null(v)) {
        json_t *o = v, *owned = NULL;
        if (json_is_string(v)) { /* as REST: a string that decodes to an object */
            owned = json_loadb(json_string_value(v), json_string_length(v), 0, NULL);
            o = owned;
        }
        if (o && json_is_array(o) && json_array_size(o) == 0) {
            pd_buf_adds(&m->meta_json, "{}");
        } else if (o && json_is_object(o)) {
            char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (!s)
                abort();
            pd_buf_adds(&m->meta_json, s);
            free(s);
        } else {
            json_decref(owned);
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "metadata: Value must be a valid object.");
        }
        json_decref(owned);
        if (m->meta_json.len > max_metadata)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "metadata: Value must be a JSON object of at most %zu bytes when "
                          "encoded.",
                          max_metadata);
        m->has_meta = true;
    }

    v = json_object_get(obj, "permissions");
    if (v && !json_is_null(v)) {
        char perr[300];
        if (!json_is_array(v))
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                          "permissions: Permissions must be an array of strings.");
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_string(json_array_get(v, i)))
                return pd_errf(err, errlen, PD_RTMSG_EFORMAT,
                              "permissions: Permissions must be an array of strings.");
        if (pd_perms_parse(v, &m->perms, perr, sizeof perr) < 0)
            return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "permissions: %s", perr);
        m->has_perms = true;
    }
    return 0;
}

int
pd_rtmsg_parse(pd_rtmsg_t *m, const char *buf, size_t len, size_t max_metadata, char *err,
               size_t errlen)
{
    memset(m, 0, sizeof *m);
    pd_buf_init(&m->status_json);
    pd_buf_init(&m->meta_json);
    pd_perms_init(&m->perms);
    if (err && errlen)
        err[0] = 0;
    if (len > PD_RTMSG_MAX_BYTES)
        return pd_errf(err, errlen, PD_RTMSG_ETOOBIG,
                      "Message is too big: a message may be at most %d bytes.", PD_RTMSG_MAX_BYTES);
    json_t *root = json_loadb(buf, len, 0, NULL);
    m->root = root;
    if (!json_is_object(root))
        return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Message format is not valid.");
    json_t *t = json_object_get(root, "type");
    pd_str_t type = json_is_string(t) ? s_jstr(t) : PD_STR("");
    json_t *data = json_object_get(root, "data");
    if (json_is_null(data))
        data = NULL; /* PHP: `null` and absent are the same */
    if (pd_str_eqc(type, "ping")) {
        m->type = PD_RTMSG_PING;
        return 0;
    }
    if (pd_str_eqc(type, "authentication")) {
        m->type = PD_RTMSG_AUTH;
        return s_parse_auth(m, data, err, errlen);
    }
    if (pd_str_eqc(type, "subscribe")) {
        m->type = PD_RTMSG_SUBSCRIBE;
        return s_parse_subscribe(m, data, err, errlen);
    }
    if (pd_str_eqc(type, "unsubscribe")) {
        m->type = PD_RTMSG_UNSUBSCRIBE;
        return s_parse_unsubscribe(m, data, err, errlen);
    }
    if (pd_str_eqc(type, "presence")) {
        m->type = PD_RTMSG_PRESENCE;
        return s_parse_presence(m, data, max_metadata, err, errlen);
    }
    return pd_errf(err, errlen, PD_RTMSG_EFORMAT, "Message type is not valid.");
}
