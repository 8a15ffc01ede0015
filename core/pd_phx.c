/*  pd_phx — see pd_phx.h. */
#include "pd_phx.h"

#include <assert.h>

void
pd_phx_msg_free(pd_phx_msg_t *m)
{
    if (m->root)
        json_decref(m->root);
    memset(m, 0, sizeof *m);
}

//  A ref (join_ref, ref): a string or null. Realtime-js sends strings; null for none.
static int
s_ref(const json_t *v, const char *name, pd_str_t *out, char *err, size_t errlen)
{
    if (!v || json_is_null(v)) {
        *out = PD_STR_NULL;
        return 0;
    }
    if (!json_is_string(v))
        return pd_errf(err, errlen, -1, "%s must be a string or null", name);
    *out = (pd_str_t){json_string_value(v), json_string_length(v)};
    if (out->len > PD_PHX_MAX_FIELD)
        return pd_errf(err, errlen, -1, "%s is longer than %d bytes", name, PD_PHX_MAX_FIELD);
    return 0;
}

static int
s_name(const json_t *v, const char *name, pd_str_t *out, char *err, size_t errlen)
{
    if (!json_is_string(v))
        return pd_errf(err, errlen, -1, "%s must be a string", name);
    *out = (pd_str_t){json_string_value(v), json_string_length(v)};
    if (out->len == 0 || out->len > PD_PHX_MAX_FIELD)
        return pd_errf(err, errlen, -1, "%s must be 1 to %d bytes", name, PD_PHX_MAX_FIELD);
    return 0;
}

static int
s_decode_binary(pd_phx_msg_t *m, const unsigned char *b, size_t n, char *err, size_t errlen)
{
    if (n < 7 || b[0] != PD_PHX_KIND_PUSH)
        return pd_errf(err, errlen, -1, "binary frame is not a user broadcast push");
    size_t jl = b[1], rl = b[2], tl = b[3], el = b[4], ml = b[5];
    int enc = b[6];
    if (enc != PD_PHX_ENC_BINARY && enc != PD_PHX_ENC_JSON)
        return pd_errf(err, errlen, -1, "unknown payload encoding %d", enc);
    size_t off = 7;
    if (n - off < jl + rl + tl + el + ml)
        return pd_errf(err, errlen, -1, "binary frame shorter than its header says");
    const char *p = (const char *)b;
    m->join_ref = jl ? (pd_str_t){p + off, jl} : PD_STR_NULL;
    off += jl;
    m->ref = rl ? (pd_str_t){p + off, rl} : PD_STR_NULL;
    off += rl;
    m->topic = (pd_str_t){p + off, tl};
    off += tl;
    m->bevent = (pd_str_t){p + off, el};
    off += el;
    m->bmeta = (pd_str_t){p + off, ml};
    off += ml;
    m->bpayload = (pd_str_t){p + off, n - off};
    m->bencoding = enc;
    m->binary = true;
    m->event = PD_STR("broadcast");
    if (tl == 0 || el == 0)
        return pd_errf(err, errlen, -1, "binary frame without a topic or an event");
    if (ml) {
        json_t *o = json_loadb(m->bmeta.ptr, ml, 0, NULL);
        bool ok = json_is_object(o);
        json_decref(o);
        if (!ok)
            return pd_errf(err, errlen, -1, "binary frame metadata is not a JSON object");
    }
    if (enc == PD_PHX_ENC_JSON) {
        json_t *v = json_loadb(m->bpayload.ptr, m->bpayload.len, JSON_DECODE_ANY, NULL);
        bool ok = v != NULL;
        json_decref(v);
        if (!ok)
            return pd_errf(err, errlen, -1, "binary frame payload is not JSON");
    }
    return 0;
}

int
pd_phx_decode(pd_phx_msg_t *m, int vsn, bool binary, const char *p, size_t n, char *err,
              size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (binary) {
        if (vsn != PD_PHX_V2)
            return pd_errf(err, errlen, -1, "binary frames need vsn 2.0.0");
        return s_decode_binary(m, (const unsigned char *)p, n, err, errlen);
    }
    json_error_t jerr;
    m->root = json_loadb(p, n, 0, &jerr);
    if (!m->root)
        return pd_errf(err, errlen, -1, "malformed JSON: %s", jerr.text);
    const json_t *jr, *ref, *topic, *event, *payload;
    if (vsn == PD_PHX_V1) {
        if (!json_is_object(m->root))
            return pd_errf(err, errlen, -1, "a vsn 1.0.0 message is a JSON object");
        jr = json_object_get(m->root, "join_ref");
        ref = json_object_get(m->root, "ref");
        topic = json_object_get(m->root, "topic");
        event = json_object_get(m->root, "event");
        payload = json_object_get(m->root, "payload");
    } else {
        if (!json_is_array(m->root) || json_array_size(m->root) != 5)
            return pd_errf(err, errlen, -1,
                           "a vsn 2.0.0 message is [join_ref, ref, topic, event, payload]");
        jr = json_array_get(m->root, 0);
        ref = json_array_get(m->root, 1);
        topic = json_array_get(m->root, 2);
        event = json_array_get(m->root, 3);
        payload = json_array_get(m->root, 4);
    }
    if (s_ref(jr, "join_ref", &m->join_ref, err, errlen) < 0 ||
        s_ref(ref, "ref", &m->ref, err, errlen) < 0 ||
        s_name(topic, "topic", &m->topic, err, errlen) < 0 ||
        s_name(event, "event", &m->event, err, errlen) < 0)
        return -1;
    if (!json_is_object(payload))
        return pd_errf(err, errlen, -1, "payload must be a JSON object");
    m->payload = (json_t *)payload;
    return 0;
}

static void
s_str_or_null(pd_buf_t *out, pd_str_t s)
{
    if (s.ptr)
        pd_buf_add_json_str(out, s.ptr, s.len);
    else
        pd_buf_add(out, "null", 4);
}

void
pd_phx_encode(pd_buf_t *out, int vsn, pd_str_t join_ref, pd_str_t ref, pd_str_t topic,
              pd_str_t event, const char *payload, size_t len)
{
    if (vsn == PD_PHX_V1) {
        pd_buf_adds(out, "{\"join_ref\":");
        s_str_or_null(out, join_ref);
        pd_buf_adds(out, ",\"ref\":");
        s_str_or_null(out, ref);
        pd_buf_adds(out, ",\"topic\":");
        s_str_or_null(out, topic);
        pd_buf_adds(out, ",\"event\":");
        s_str_or_null(out, event);
        pd_buf_adds(out, ",\"payload\":");
        pd_buf_add(out, payload, len);
        pd_buf_add(out, "}", 1);
        return;
    }
    pd_buf_add(out, "[", 1);
    s_str_or_null(out, join_ref);
    pd_buf_add(out, ",", 1);
    s_str_or_null(out, ref);
    pd_buf_add(out, ",", 1);
    s_str_or_null(out, topic);
    pd_buf_add(out, ",", 1);
    s_str_or_null(out, event);
    pd_buf_add(out, ",", 1);
    pd_buf_add(out, payload, len);
    pd_buf_add(out, "]", 1);
}

void
pd_phx_reply(pd_buf_t *out, int vsn, pd_str_t join_ref, pd_str_t ref, pd_str_t topic,
             const char *status, const char *response, size_t len)
{
    /* the payload is built in place: the message's head, the payload, its tail */
    pd_buf_t tmp;
    pd_buf_init(&tmp);
    pd_buf_adds(&tmp, "{\"status\":");
    pd_buf_add_json_str(&tmp, status, strlen(status));
    pd_buf_adds(&tmp, ",\"response\":");
    pd_buf_add(&tmp, response, len);
    pd_buf_add(&tmp, "}", 1);
    pd_phx_encode(out, vsn, join_ref, ref, topic, PD_STR("phx_reply"), tmp.data, tmp.len);
    pd_buf_free(&tmp);
}

int
pd_phx_encode_bcast(pd_buf_t *out, pd_str_t topic, pd_str_t event, pd_str_t meta, int encoding,
                    const char *payload, size_t len)
{
    if (topic.len > 255 || event.len > 255 || meta.len > 255)
        return -1;
    unsigned char h[5] = {PD_PHX_KIND_BCAST, (unsigned char)topic.len, (unsigned char)event.len,
                          (unsigned char)meta.len, (unsigned char)encoding};
    pd_buf_reserve(out, sizeof h + topic.len + event.len + meta.len + len);
    pd_buf_add(out, h, sizeof h);
    pd_buf_add(out, topic.ptr, topic.len);
    pd_buf_add(out, event.ptr, event.len);
    pd_buf_add(out, meta.ptr, meta.len);
    pd_buf_add(out, payload, len);
    return 0;
}

static int
s_bool(const json_t *o, const char *name, bool *out, char *err, size_t errlen)
{
    const json_t *v = o ? json_object_get(o, name) : NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return pd_errf(err, errlen, -1, "config.%s must be a boolean", name);
    *out = json_is_true(v);
    return 0;
}

int
pd_phx_join_parse(const json_t *payload, pd_phx_join_t *j, char *err, size_t errlen)
{
    memset(j, 0, sizeof *j);
    const json_t *cfg = json_object_get(payload, "config");
    if (cfg && !json_is_null(cfg) && !json_is_object(cfg))
        return pd_errf(err, errlen, -1, "config must be an object");
    if (cfg && !json_is_object(cfg))
        cfg = NULL;
    const json_t *tok = json_object_get(payload, "access_token");
    if (tok && !json_is_null(tok)) {
        if (!json_is_string(tok))
            return pd_errf(err, errlen, -1, "access_token must be a string");
        j->access_token = (pd_str_t){json_string_value(tok), json_string_length(tok)};
    }
    if (!cfg)
        return 0;
    const json_t *pr = json_object_get(cfg, "presence");
    if (pr && !json_is_null(pr)) {
        if (!json_is_object(pr))
            return pd_errf(err, errlen, -1, "config.presence must be an object");
        const json_t *key = json_object_get(pr, "key");
        if (key && json_is_string(key)) {
            j->presence_key = (pd_str_t){json_string_value(key), json_string_length(key)};
            if (j->presence_key.len > PD_PHX_MAX_KEY)
                return pd_errf(err, errlen, -1, "config.presence.key is longer than %d bytes",
                               PD_PHX_MAX_KEY);
        } else if (key && !json_is_null(key)) {
            return pd_errf(err, errlen, -1, "config.presence.key must be a string");
        }
        if (s_bool(pr, "enabled", &j->presence_enabled, err, errlen) < 0)
            return -1;
    }
    const json_t *bc = json_object_get(cfg, "broadcast");
    if (bc && !json_is_null(bc)) {
        if (!json_is_object(bc))
            return pd_errf(err, errlen, -1, "config.broadcast must be an object");
        if (s_bool(bc, "self", &j->bcast_self, err, errlen) < 0 ||
            s_bool(bc, "ack", &j->bcast_ack, err, errlen) < 0)
            return -1;
    }
    if (s_bool(cfg, "private", &j->private_, err, errlen) < 0)
        return -1;
    const json_t *pg = json_object_get(cfg, "postgres_changes");
    if (pg && !json_is_null(pg)) {
        if (!json_is_array(pg))
            return pd_errf(err, errlen, -1, "config.postgres_changes must be an array");
        j->postgres = json_array_size(pg) > 0;
    }
    return 0;
}

/* -------------------------------------------------------------------------- self test */

static void
s_roundtrip(int vsn)
{
    pd_buf_t b;
    pd_buf_init(&b);
    pd_phx_encode(&b, vsn, PD_STR("1"), PD_STR_NULL, PD_STR("realtime:room_01"),
                  PD_STR("phx_join"), "{\"a\":\"\\u00e9\"}", 14);
    pd_phx_msg_t m;
    char err[200];
    PD_CHECK(pd_phx_decode(&m, vsn, false, b.data, b.len, err, sizeof err) == 0);
    PD_CHECK(pd_str_eqc(m.join_ref, "1") && m.ref.ptr == NULL);
    PD_CHECK(pd_str_eqc(m.topic, "realtime:room_01") && pd_str_eqc(m.event, "phx_join"));
    PD_CHECK(strcmp(json_string_value(json_object_get(m.payload, "a")), "\xc3\xa9") == 0);
    pd_phx_msg_free(&m);
    /* the other serializer refuses it, with a message */
    PD_CHECK(pd_phx_decode(&m, vsn == PD_PHX_V1 ? PD_PHX_V2 : PD_PHX_V1, false, b.data, b.len,
                           err, sizeof err) < 0 &&
             err[0]);
    pd_phx_msg_free(&m);
    pd_buf_free(&b);
}

void
pd_phx_test(bool verbose)
{
    (void)verbose;
    s_roundtrip(PD_PHX_V1);
    s_roundtrip(PD_PHX_V2);
    pd_phx_msg_t m;
    char err[200];
    /* realtime-js's heartbeat, vsn 2 */
    const char *hb = "[null,\"3\",\"phoenix\",\"heartbeat\",{}]";
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, false, hb, strlen(hb), err, sizeof err) == 0);
    PD_CHECK(pd_str_eqc(m.topic, "phoenix") && pd_str_eqc(m.ref, "3") && !m.join_ref.ptr);
    pd_phx_msg_free(&m);
    /* bad frames: each is an error with a message */
    const char *bad[] = {"", "[", "{}", "[1,2,3,4,5]", "[null,null,\"t\",\"e\",[]]",
                         "[null,null,\"\",\"e\",{}]", "[null,null,\"t\",\"e\"]", "\"x\"",
                         "[null,7,\"t\",\"e\",{}]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, false, bad[i], strlen(bad[i]), err, sizeof err) < 0);
        PD_CHECK(err[0]);
        pd_phx_msg_free(&m);
    }
    /* a binary user broadcast push as realtime-js encodes it: join_ref "1", ref "2",
     * topic "realtime:r", event "cur", no meta, JSON payload {"x":1} */
    const char push[] = "\x03\x01\x01\x0a\x03\x00\x01"
                        "12realtime:rcur{\"x\":1}";
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, true, push, sizeof push - 1, err, sizeof err) == 0);
    PD_CHECK(m.binary && pd_str_eqc(m.topic, "realtime:r") && pd_str_eqc(m.bevent, "cur"));
    PD_CHECK(pd_str_eqc(m.join_ref, "1") && pd_str_eqc(m.ref, "2") && m.bmeta.len == 0);
    PD_CHECK(m.bencoding == PD_PHX_ENC_JSON && pd_str_eqc(m.bpayload, "{\"x\":1}"));
    pd_phx_msg_free(&m);
    /* truncated, a bad kind, bad JSON payload, binary in vsn 1 */
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, true, push, 12, err, sizeof err) < 0);
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, true, "\x04\x00\x00\x00\x00\x00\x00", 7, err,
                           sizeof err) < 0);
    const char badjson[] = "\x03\x00\x00\x01\x01\x00\x01tex{";
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V2, true, badjson, sizeof badjson - 1, err, sizeof err) <
             0);
    PD_CHECK(pd_phx_decode(&m, PD_PHX_V1, true, push, sizeof push - 1, err, sizeof err) < 0);
    /* kind 4 out */
    pd_buf_t b;
    pd_buf_init(&b);
    PD_CHECK(pd_phx_encode_bcast(&b, PD_STR("realtime:r"), PD_STR("cur"), PD_STR(""),
                                 PD_PHX_ENC_BINARY, "\x00\x01", 2) == 0);
    PD_CHECK(b.len == 5 + 10 + 3 + 2 && b.data[0] == 4 && b.data[1] == 10 && b.data[4] == 0);
    pd_buf_reset(&b);
    pd_phx_reply(&b, PD_PHX_V2, PD_STR("1"), PD_STR("1"), PD_STR("realtime:r"), "ok", "{}", 2);
    PD_CHECK(b.len == strlen("[\"1\",\"1\",\"realtime:r\",\"phx_reply\",{\"status\":\"ok\","
                             "\"response\":{}}]"));
    pd_buf_free(&b);
    /* join config */
    json_t *p = json_loads("{\"config\":{\"broadcast\":{\"self\":true,\"ack\":false},"
                           "\"presence\":{\"key\":\"u1\",\"enabled\":true},"
                           "\"postgres_changes\":[],\"private\":false},\"access_token\":\"t\"}",
                           0, NULL);
    pd_phx_join_t j;
    PD_CHECK(pd_phx_join_parse(p, &j, err, sizeof err) == 0);
    PD_CHECK(j.presence_enabled && pd_str_eqc(j.presence_key, "u1") && j.bcast_self &&
             !j.bcast_ack && !j.private_ && !j.postgres && pd_str_eqc(j.access_token, "t"));
    json_decref(p);
    p = json_loads("{\"config\":{\"postgres_changes\":[{\"event\":\"*\"}]}}", 0, NULL);
    PD_CHECK(pd_phx_join_parse(p, &j, err, sizeof err) == 0 && j.postgres);
    json_decref(p);
    p = json_loads("{\"config\":{\"presence\":{\"enabled\":\"yes\"}}}", 0, NULL);
    PD_CHECK(pd_phx_join_parse(p, &j, err, sizeof err) < 0 && err[0]);
    json_decref(p);
}
