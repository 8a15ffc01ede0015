/*  The body of fuzz_phx1 and fuzz_phx2 (one per serializer): VSN chooses the serializer. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool
s_same(pd_str_t a, pd_str_t b)
{
    return (a.ptr == NULL) == (b.ptr == NULL) && pd_str_eq(a, b);
}

static bool
s_inside(pd_str_t s, const char *p, size_t n)
{
    return s.ptr == NULL || (s.ptr >= p && s.ptr + s.len <= p + n);
}

static void
s_check_text(const pd_phx_msg_t *m)
{
    FUZZ_CHECK(m->topic.len >= 1 && m->topic.len <= PD_PHX_MAX_FIELD);
    FUZZ_CHECK(m->event.len >= 1 && m->event.len <= PD_PHX_MAX_FIELD);
    FUZZ_CHECK(m->join_ref.len <= PD_PHX_MAX_FIELD && m->ref.len <= PD_PHX_MAX_FIELD);
    FUZZ_CHECK(json_is_object(m->payload));
    /* round trip */
    char *payload = json_dumps(m->payload, JSON_COMPACT | JSON_ENCODE_ANY);
    FUZZ_CHECK(payload);
    pd_buf_t b;
    pd_buf_init(&b);
    pd_phx_encode(&b, VSN, m->join_ref, m->ref, m->topic, m->event, payload, strlen(payload));
    pd_phx_msg_t m2;
    char err[300];
    FUZZ_CHECK(pd_phx_decode(&m2, VSN, false, b.data, b.len, err, sizeof err) == 0);
    FUZZ_CHECK(s_same(m->join_ref, m2.join_ref) && s_same(m->ref, m2.ref));
    FUZZ_CHECK(pd_str_eq(m->topic, m2.topic) && pd_str_eq(m->event, m2.event));
    FUZZ_CHECK(json_equal(m->payload, m2.payload));
    pd_phx_msg_free(&m2);
    pd_buf_free(&b);
    free(payload);
    /* the join config */
    pd_phx_join_t j;
    err[0] = 0;
    if (pd_phx_join_parse(m->payload, &j, err, sizeof err) == 0)
        FUZZ_CHECK(j.presence_key.len <= PD_PHX_MAX_KEY);
    else
        FUZZ_CHECK(err[0]);
}

static void
s_check_binary(const pd_phx_msg_t *m, const char *p, size_t n)
{
    FUZZ_CHECK(s_inside(m->join_ref, p, n) && s_inside(m->ref, p, n));
    FUZZ_CHECK(s_inside(m->topic, p, n) && s_inside(m->bevent, p, n));
    FUZZ_CHECK(s_inside(m->bmeta, p, n) && s_inside(m->bpayload, p, n));
    FUZZ_CHECK(m->topic.len >= 1 && m->bevent.len >= 1);
    if (m->bmeta.len) {
        json_t *o = json_loadb(m->bmeta.ptr, m->bmeta.len, 0, NULL);
        FUZZ_CHECK(json_is_object(o));
        json_decref(o);
    }
    if (m->bencoding == PD_PHX_ENC_JSON) {
        json_t *v = json_loadb(m->bpayload.ptr, m->bpayload.len, JSON_DECODE_ANY, NULL);
        FUZZ_CHECK(v);
        json_decref(v);
    } else {
        FUZZ_CHECK(m->bencoding == PD_PHX_ENC_BINARY);
    }
    pd_buf_t b;
    pd_buf_init(&b);
    FUZZ_CHECK(pd_phx_encode_bcast(&b, m->topic, m->bevent, m->bmeta, m->bencoding,
                                   m->bpayload.ptr, m->bpayload.len) == 0);
    FUZZ_CHECK(b.len == 5 + m->topic.len + m->bevent.len + m->bmeta.len + m->bpayload.len);
    pd_buf_free(&b);
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    bool binary = false;
    if (VSN == PD_PHX_V2) {
        if (size < 1)
            return 0;
        binary = data[0] & 1;
        data++;
        size--;
    }
    const char *p = (const char *)data;
    pd_phx_msg_t m, m2;
    char err[300], err2[300];
    err[0] = err2[0] = 0;
    int rc = pd_phx_decode(&m, VSN, binary, p, size, err, sizeof err);
    int rc2 = pd_phx_decode(&m2, VSN, binary, p, size, err2, sizeof err2);
    FUZZ_CHECK(rc == rc2);
    if (rc == 0) {
        FUZZ_CHECK(m.binary == binary);
        if (binary)
            s_check_binary(&m, p, size);
        else
            s_check_text(&m);
    } else {
        FUZZ_CHECK(rc == -1 && err[0] && strcmp(err, err2) == 0);
    }
    pd_phx_msg_free(&m);
    pd_phx_msg_free(&m2);
    return 0;
}
