/*  fuzz_rtmsg — libFuzzer target for pd_rtmsg_parse, the parser of client WebSocket messages.
 *  The input is one message. Checks:
 *    - an error has code 1003 or 1009 and a non-empty message; the same input gives the same
 *      answer twice (no hidden state);
 *    - a message that parses respects every limit: rows, channels (non-empty, bounded),
 *      queries (parsed whenever there are any), subscription ids valid UIDs;
 *    - a presence's status_json decodes back to the status, its metadata is one JSON object
 *      within the size limit, and its permissions survive a second parse unchanged;
 *    - the struct is freed cleanly (ASan/LSan see the rest). */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "pd_rtmsg.h"

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_MAX_META 4096

static void
s_check_ok(const pd_rtmsg_t *m)
{
    switch (m->type) {
    case PD_RTMSG_PING:
        break;
    case PD_RTMSG_AUTH:
        FUZZ_CHECK(m->token.ptr && m->token.len > 0 && m->token.len <= PD_JWT_MAX_LEN);
        break;
    case PD_RTMSG_SUBSCRIBE:
        FUZZ_CHECK(m->nrows <= PD_RTMSG_MAX_ROWS);
        for (size_t i = 0; i < m->nrows; i++) {
            const pd_rtmsg_row_t *r = &m->rows[i];
            FUZZ_CHECK(r->id.ptr == NULL || pd_uid_valid(r->id));
            FUZZ_CHECK(r->nchannels <= PD_RTMSG_MAX_CHANNELS);
            for (size_t k = 0; k < r->nchannels; k++)
                FUZZ_CHECK(r->channels[k].len > 0 &&
                           r->channels[k].len <= PD_RTMSG_MAX_CHANNEL_LEN);
            FUZZ_CHECK(r->nqueries <= PD_RTMSG_MAX_QUERIES);
            FUZZ_CHECK((r->nqueries == 0) == (r->query == NULL));
        }
        break;
    case PD_RTMSG_UNSUBSCRIBE:
        FUZZ_CHECK(m->nids <= PD_RTMSG_MAX_ROWS);
        for (size_t i = 0; i < m->nids; i++)
            FUZZ_CHECK(m->ids[i].len > 0);
        break;
    case PD_RTMSG_PRESENCE: {
        FUZZ_CHECK(m->status.len > 0);
        json_t *s = json_loadb(m->status_json.data, m->status_json.len, JSON_DECODE_ANY, NULL);
        FUZZ_CHECK(json_is_string(s) && json_string_length(s) == m->status.len &&
                   memcmp(json_string_value(s), m->status.ptr, m->status.len) == 0);
        json_decref(s);
        FUZZ_CHECK(m->presence_id.ptr == NULL || pd_uid_valid(m->presence_id));
        if (m->has_meta) {
            FUZZ_CHECK(m->meta_json.len <= FUZZ_MAX_META);
            json_t *o = json_loadb(m->meta_json.data, m->meta_json.len, 0, NULL);
            FUZZ_CHECK(json_is_object(o));
            json_decref(o);
        }
        if (m->has_perms) {
            json_t *arr = json_loadb(m->perms.json.data, m->perms.json.len, 0, NULL);
            FUZZ_CHECK(json_is_array(arr));
            pd_perms_t again;
            pd_perms_init(&again);
            char err[300];
            FUZZ_CHECK(pd_perms_parse(arr, &again, err, sizeof err) == 0);
            FUZZ_CHECK(again.json.len == m->perms.json.len &&
                       memcmp(again.json.data, m->perms.json.data, again.json.len) == 0);
            pd_perms_free(&again);
            json_decref(arr);
        }
        break;
    }
    default:
        FUZZ_CHECK(!"unknown type on success");
    }
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    pd_rtmsg_t m, m2;
    char err[512], err2[512];
    int rc = pd_rtmsg_parse(&m, (const char *)data, size, FUZZ_MAX_META, err, sizeof err);
    int rc2 = pd_rtmsg_parse(&m2, (const char *)data, size, FUZZ_MAX_META, err2, sizeof err2);
    FUZZ_CHECK(rc == rc2);
    if (rc == 0) {
        FUZZ_CHECK(m.type == m2.type);
        s_check_ok(&m);
    } else {
        FUZZ_CHECK(rc == PD_RTMSG_EFORMAT || rc == PD_RTMSG_ETOOBIG);
        FUZZ_CHECK(err[0] != 0 && strcmp(err, err2) == 0);
    }
    pd_rtmsg_free(&m);
    pd_rtmsg_free(&m2);
    return 0;
}
