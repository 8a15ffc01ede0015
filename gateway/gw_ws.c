/*  gw_ws — RFC 6455 framing without I/O (see gw_ws.h). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <h2o.h>
#include <h2o/http1.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "gw_ws.h"
#include "pd_log.h"

size_t
gw_ws_header(unsigned char *h, int op, size_t n)
{
    h[0] = (unsigned char)(0x80 | op);
    if (n < 126) {
        h[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

void
gw_ws_frame_into(pd_buf_t *out, int op, const char *p, size_t n)
{
    unsigned char h[GW_WS_HEADER_MAX];
    size_t hl = gw_ws_header(h, op, n);
    pd_buf_add(out, h, hl);
    pd_buf_add(out, p, n);
}

int
gw_ws_parse(const unsigned char *b, size_t avail, gw_ws_frame_t *f, const char **why)
{
    if (avail < 2)
        return 0;
    f->fin = (b[0] & 0x80) != 0;
    f->rsv1 = (b[0] & 0x40) != 0;
    f->op = b[0] & 0x0f;
    f->len = b[1] & 0x7f;
    f->hl = 2;
    if ((b[0] & 0x30) || (f->rsv1 && (f->op == GW_WS_CONT || (f->op & 0x8)))) {
        *why = "Reserved bits set";
        return -1;
    }
    if (!(b[1] & 0x80)) {
        *why = "Client frames must be masked";
        return -1;
    }
    if (f->len == 126) {
        if (avail < 4)
            return 0;
        f->len = (uint64_t)b[2] << 8 | b[3];
        f->hl = 4;
    } else if (f->len == 127) {
        if (avail < 10)
            return 0;
        f->len = 0;
        for (int i = 0; i < 8; i++)
            f->len = f->len << 8 | b[2 + i];
        f->hl = 10;
    }
    if (f->op & 0x8) {
        if (!f->fin || f->len > 125 || f->op > GW_WS_PONG) {
            *why = "Bad control frame";
            return -1;
        }
    } else if (f->op > GW_WS_BINARY) {
        *why = "Unknown opcode";
        return -1;
    }
    if (avail < f->hl + 4)
        return 0;
    f->mask = b + f->hl;
    f->hl += 4;
    return 1;
}

void
gw_ws_unmask(unsigned char *p, uint64_t n, const unsigned char mask[4])
{
    for (uint64_t i = 0; i < n; i++)
        p[i] ^= mask[i & 3];
}

int
gw_ws_close_code(const unsigned char *p, uint64_t n)
{
    int code = n >= 2 ? (p[0] << 8 | p[1]) : 1000;
    if (code < 1000 || code == 1004 || code == 1005 || code == 1006 || code == 1015 ||
        (code > 1011 && code < 3000) || code > 4999)
        code = 1002;
    return code;
}

size_t
gw_ws_close_payload(char *p, int code, const char *reason)
{
    size_t rl = strlen(reason);
    if (rl > 123)
        rl = 123;
    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    for (size_t i = 0; i < rl; i++) /* ASCII only: a cut UTF-8 sequence would be invalid */
        p[2 + i] = (unsigned char)reason[i] < 0x80 ? reason[i] : '?';
    return rl + 2;
}

void
gw_ws_accept_key(const char *client_key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char src[24 + sizeof guid - 1], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    memcpy(src, client_key, 24);
    memcpy(src + 24, guid, sizeof guid - 1);
    EVP_Digest(src, sizeof src, md, &mdlen, EVP_sha1(), NULL);
    h2o_base64_encode(out, md, 20, 0);
    out[28] = 0;
}

/*  One offer: "permessage-deflate" then ";"-separated parameters. */
static bool
s_offer_ok(const char *v, size_t n)
{
    const char *p = v, *end = v + n;
    unsigned seen = 0;
    for (int k = 0; p <= end; k++) {
        const char *e = memchr(p, ';', (size_t)(end - p));
        if (!e)
            e = end;
        const char *a = p, *z = e;
        while (a < z && (*a == ' ' || *a == '\t'))
            a++;
        while (z > a && (z[-1] == ' ' || z[-1] == '\t'))
            z--;
        const char *eq = memchr(a, '=', (size_t)(z - a));
        const char *ne = eq ? eq : z, *va = eq ? eq + 1 : z, *vz = z;
        while (ne > a && (ne[-1] == ' ' || ne[-1] == '\t'))
            ne--;
        while (va < vz && (*va == ' ' || *va == '\t'))
            va++;
        if (vz - va >= 2 && *va == '"' && vz[-1] == '"')
            va++, vz--;
        size_t nl = (size_t)(ne - a), vl = (size_t)(vz - va);
        if (k == 0) {
            if (nl != 18 || strncasecmp(a, "permessage-deflate", 18) != 0 || eq)
                return false;
        } else {
            static const char *const names[] = {"server_no_context_takeover",
                                                "client_no_context_takeover",
                                                "server_max_window_bits", "client_max_window_bits"};
            int which = -1;
            for (int i = 0; i < 4; i++)
                if (nl == strlen(names[i]) && strncasecmp(a, names[i], nl) == 0)
                    which = i;
            if (which < 0 || (seen & (1u << which)))
                return false;
            seen |= 1u << which;
            int bits = 0;
            for (size_t i = 0; i < vl && i < 3; i++)
                bits = va[i] >= '0' && va[i] <= '9' ? bits * 10 + (va[i] - '0') : 99;
            if (which < 2 && eq)
                return false; /* takes no value */
            if (which == 2 && (!eq || vl > 2 || bits != 15))
                return false; /* we compress with a 32 KiB window */
            if (which == 3 && eq && (vl > 2 || bits < 8 || bits > 15))
                return false;
        }
        p = e + 1;
    }
    return true;
}

bool
gw_ws_deflate_offer(const char *v, size_t n)
{
    const char *p = v, *end = v + n;
    while (p <= end) {
        const char *e = memchr(p, ',', (size_t)(end - p));
        if (!e)
            e = end;
        if (s_offer_ok(p, (size_t)(e - p)))
            return true;
        p = e + 1;
    }
    return false;
}

/* ------------------------------------------------------------------------------ connections */

static void s_write(gw_ws_conn_t *c);

static void
s_link_flush(gw_ws_ctx_t *x)
{
    if (!x->flush_linked) {
        x->flush_linked = true;
        h2o_timeout_link(x->h2o->loop, x->delayed ? &x->delay : &x->h2o->zero_timeout,
                         &x->flush_entry);
    }
}

static void
s_schedule(gw_ws_conn_t *c)
{
    if (c->in_flush || c->state == GW_WS_DEAD || c->state == GW_WS_UPGRADING)
        return;
    c->in_flush = true;
    c->flush_next = c->ctx->flush_head;
    c->ctx->flush_head = c;
    s_link_flush(c->ctx);
}

static void
s_detach(gw_ws_conn_t *c)
{
    if (c->detached)
        return;
    c->detached = true;
    if (c->ctx->cb->on_detach)
        c->ctx->cb->on_detach(c);
}

static void
s_free_fields(gw_ws_conn_t *c)
{
    pd_cqueue_free(&c->q);
    free(c->wbuf);
    free(c->frag);
    c->wbuf = c->frag = NULL;
    c->wlen = c->frag_len = 0;
}

void
gw_ws_kill(gw_ws_conn_t *c, const char *why)
{
    gw_ws_ctx_t *x = c->ctx;
    if (c->state == GW_WS_DEAD)
        return;
    pd_log_debug("%s: connection closed (%s)", __func__, why);
    s_detach(c);
    if (c->sock) {
        h2o_socket_close(c->sock);
        c->sock = NULL;
    }
    s_free_fields(c);
    if (c->prev)
        c->prev->next = c->next;
    else if (x->conns == c)
        x->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->state = GW_WS_DEAD;
    c->dead_next = x->dead;
    x->dead = c;
    s_link_flush(x);
}

/* ------------------------------------------------------------------------------ compression */

static z_stream *
s_zd(gw_ws_ctx_t *x)
{
    if (!x->zd) {
        z_stream *z = calloc(1, sizeof *z);
        if (!z || deflateInit2(z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            abort();
        x->zd = z;
    }
    return x->zd;
}

/*  Deflates n bytes at p into out (appended) as one message with no context, ending in a sync
 *  flush: the last four bytes are then 00 00 ff ff (RFC 7692 §7.2.1 has the sender drop them). */
static void
s_deflate(gw_ws_ctx_t *x, const char *p, size_t n, pd_buf_t *out)
{
    z_stream *z = s_zd(x);
    deflateReset(z);
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    do {
        size_t room = deflateBound(z, (uLong)n) + 16;
        pd_buf_reserve(out, room);
        z->next_out = (Bytef *)out->data + out->len;
        z->avail_out = (uInt)room;
        int rc = deflate(z, Z_SYNC_FLUSH);
        out->len += room - z->avail_out;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            abort();
    } while (z->avail_out == 0 || z->avail_in);
    x->deflated++;
    x->zin += n;
}

/*  Inflates a compressed message (n bytes at p, the 00 00 ff ff put back) into x->zbuf, at most
 *  max bytes. Returns 0, 1 when it is longer than max, -1 when it is not valid deflate data. */
static int
s_inflate(gw_ws_ctx_t *x, const char *p, size_t n, size_t max)
{
    if (!x->zi) {
        z_stream *z = calloc(1, sizeof *z);
        if (!z || inflateInit2(z, -15) != Z_OK)
            abort();
        x->zi = z;
    }
    z_stream *z = x->zi;
    inflateReset(z);
    static const unsigned char tail[4] = {0, 0, 0xff, 0xff};
    pd_buf_reset(&x->zbuf);
    pd_buf_reserve(&x->zbuf, max + 1);
    z->next_out = (Bytef *)x->zbuf.data;
    z->avail_out = (uInt)(max + 1);
    for (int part = 0; part < 2; part++) {
        z->next_in = part ? (Bytef *)tail : (Bytef *)p;
        z->avail_in = part ? 4 : (uInt)n;
        while (z->avail_in) {
            int rc = inflate(z, Z_SYNC_FLUSH);
            if (z->avail_out == 0)
                return 1;
            if (rc == Z_STREAM_END) { /* BFINAL set (RFC 7692 §7.2.3.4): the message ends */
                x->zbuf.len = max + 1 - z->avail_out;
                return 0;
            }
            if (rc != Z_OK)
                return rc == Z_BUF_ERROR && !z->avail_in ? 0 : -1;
        }
    }
    x->zbuf.len = max + 1 - z->avail_out;
    return 0;
}

static char *
s_out(gw_ws_conn_t *c, uint64_t rec, int how, int op, bool rsv1, size_t n)
{
    gw_ws_ctx_t *x = c->ctx;
    if (c->state == GW_WS_DEAD)
        return NULL;
    size_t need = n + GW_WS_HEADER_MAX, queued = pd_cqueue_bytes(&c->q);
    if (queued + c->wlen + need > x->max_queue) {
        x->slow++;
        pd_log_info("%s: disconnecting a slow consumer (%zu bytes pending, over --ws-max-queue)",
                    __func__, queued + c->wlen);
        gw_ws_kill(c, "slow consumer");
        return NULL;
    }
    unsigned char h[GW_WS_HEADER_MAX];
    size_t hl = gw_ws_header(h, op, n);
    if (rsv1)
        h[0] |= 0x40;
    uint64_t before = c->q.conflated;
    char *p = rec && c->wbuf ? pd_cqueue_push_record(&c->q, rec, how, hl + n)
                             : pd_cqueue_push(&c->q, hl + n);
    x->conflated += c->q.conflated - before;
    if (!p)
        return NULL;
    memcpy(p, h, hl);
    s_schedule(c);
    return p + hl;
}

char *
gw_ws_out_record(gw_ws_conn_t *c, uint64_t rec, int how, int op, size_t n)
{
    return s_out(c, rec, how, op, false, n);
}

char *
gw_ws_out(gw_ws_conn_t *c, int op, size_t n)
{
    return s_out(c, 0, 0, op, false, n);
}

void
gw_ws_send(gw_ws_conn_t *c, const char *p, size_t n)
{
    if (c->state != GW_WS_OPEN)
        return;
    gw_ws_ctx_t *x = c->ctx;
    if (c->deflate && n >= x->deflate_min) {
        pd_buf_reset(&x->zbuf);
        s_deflate(x, p, n, &x->zbuf);
        size_t zl = x->zbuf.len - 4;
        x->zout += zl;
        char *d = s_out(c, 0, 0, GW_WS_TEXT, true, zl);
        if (d)
            memcpy(d, x->zbuf.data, zl);
        return;
    }
    char *d = gw_ws_out(c, GW_WS_TEXT, n);
    if (d)
        memcpy(d, p, n);
}

void
gw_ws_shared_init(gw_ws_shared_t *sh)
{
    pd_buf_init(&sh->plain);
    pd_buf_init(&sh->z);
    sh->z_ok = false;
}

void
gw_ws_shared_reset(gw_ws_shared_t *sh)
{
    pd_buf_reset(&sh->plain);
    sh->z_ok = false;
}

void
gw_ws_shared_free(gw_ws_shared_t *sh)
{
    pd_buf_free(&sh->plain);
    pd_buf_free(&sh->z);
}

/*  Compressed, the frame is sh->z (the beginning, ending in a sync flush: byte aligned), then
 *  the tail as a stored block (BFINAL 0, BTYPE 00: a header byte, LEN, NLEN, the bytes), then
 *  the header byte of the empty stored block whose LEN and NLEN (00 00 ff ff) the receiver
 *  puts back (RFC 7692 §7.2.2). */
char *
gw_ws_out_shared(gw_ws_conn_t *c, uint64_t rec, int how, gw_ws_shared_t *sh, size_t tail)
{
    gw_ws_ctx_t *x = c->ctx;
    if (!c->deflate || sh->plain.len + tail < x->deflate_min || tail > 65535) {
        char *d = s_out(c, rec, how, GW_WS_TEXT, false, sh->plain.len + tail);
        if (!d)
            return NULL;
        memcpy(d, sh->plain.data, sh->plain.len);
        return d + sh->plain.len;
    }
    if (!sh->z_ok) {
        pd_buf_reset(&sh->z);
        s_deflate(x, sh->plain.data, sh->plain.len, &sh->z);
        x->zout += sh->z.len;
        sh->z_ok = true;
    }
    char *d = s_out(c, rec, how, GW_WS_TEXT, true, sh->z.len + 5 + tail + 1);
    if (!d)
        return NULL;
    memcpy(d, sh->z.data, sh->z.len);
    d += sh->z.len;
    d[0] = 0;
    d[1] = (char)(tail & 0xff);
    d[2] = (char)(tail >> 8);
    d[3] = (char)(~tail & 0xff);
    d[4] = (char)((~tail >> 8) & 0xff);
    d[5 + tail] = 0;
    return d + 5;
}

/*  A close frame after what is queued; once written, a half-close. */
static void
s_close_frame(gw_ws_conn_t *c, int code, const char *reason)
{
    char pl[125];
    size_t n = gw_ws_close_payload(pl, code, reason);
    char *d = gw_ws_out(c, GW_WS_CLOSE, n);
    if (!d)
        return; /* dropped */
    memcpy(d, pl, n);
    c->state = GW_WS_CLOSING;
    c->close_at_ms = pd_mono_ms() + GW_WS_CLOSE_WAIT_MS;
}

void
gw_ws_close(gw_ws_conn_t *c, int code, const char *reason)
{
    if (c->state != GW_WS_OPEN)
        return;
    s_detach(c);
    if (c->state == GW_WS_OPEN)
        s_close_frame(c, code, reason);
}

void
gw_ws_refuse(gw_ws_conn_t *c, int code, const char *reason)
{
    if (c->state != GW_WS_UPGRADING)
        return;
    char pl[125];
    size_t n = gw_ws_close_payload(pl, code, reason);
    char *d = gw_ws_out(c, GW_WS_CLOSE, n);
    if (d)
        memcpy(d, pl, n);
    c->refused = true;
}

static void
s_close_done(gw_ws_conn_t *c)
{
    if (c->state != GW_WS_CLOSING || c->wbuf || pd_cqueue_bytes(&c->q) || !c->sock)
        return;
    if (c->peer_closed) {
        gw_ws_kill(c, "closed");
        return;
    }
    if (!c->shut) {
        c->shut = true;
        shutdown(h2o_socket_get_fd(c->sock), SHUT_WR);
    }
}

static void
s_on_written(h2o_socket_t *sock, const char *err)
{
    gw_ws_conn_t *c = sock->data;
    free(c->wbuf);
    c->wbuf = NULL;
    c->wlen = 0;
    c->write_ms = 0;
    if (err) {
        gw_ws_kill(c, "write error");
        return;
    }
    if (pd_cqueue_bytes(&c->q))
        s_write(c);
    else
        s_close_done(c);
}

static void
s_write(gw_ws_conn_t *c)
{
    if (!c->sock || c->wbuf || c->state == GW_WS_DEAD || c->state == GW_WS_UPGRADING)
        return;
    if (!pd_cqueue_bytes(&c->q)) {
        s_close_done(c);
        return;
    }
    size_t len;
    c->wbuf = pd_cqueue_take(&c->q, &len);
    c->wlen = (uint32_t)len;
    c->write_ms = pd_mono_ms();
    h2o_iovec_t v = h2o_iovec_init(c->wbuf, c->wlen);
    h2o_socket_write(c->sock, &v, 1, s_on_written);
}

void
gw_ws_flush_now(gw_ws_conn_t *c)
{
    s_write(c);
}

static void
s_on_flush(h2o_timeout_entry_t *entry)
{
    gw_ws_ctx_t *x = H2O_STRUCT_FROM_MEMBER(gw_ws_ctx_t, flush_entry, entry);
    x->flush_linked = false;
    gw_ws_conn_t *c;
    while ((c = x->flush_head) != NULL) {
        x->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->in_flush = false;
        if (c->state != GW_WS_DEAD)
            s_write(c);
    }
    while ((c = x->dead) != NULL) {
        x->dead = c->dead_next;
        free(c);
    }
}

/* ------------------------------------------------------------------------------ frames in */

/*  Frees h2o's input buffer when it is empty: an idle connection then holds none. */
static void
s_input_release(h2o_socket_t *sock)
{
    if (sock->input->bytes != NULL && sock->input->size == 0) {
        h2o_buffer_prototype_t *proto = sock->input->_prototype;
        h2o_buffer_dispose(&sock->input);
        h2o_buffer_init(&sock->input, proto);
    }
}

static void
s_message(gw_ws_conn_t *c, int op, bool z, const char *p, size_t n)
{
    gw_ws_ctx_t *x = c->ctx;
    if (z) {
        int rc = s_inflate(x, p, n, x->max_message);
        if (rc > 0) {
            if (x->cb->on_oversize)
                x->cb->on_oversize(c);
            gw_ws_close(c, 1009, "Message too big");
            return;
        }
        if (rc < 0) {
            gw_ws_close(c, 1007, "Invalid compressed data");
            return;
        }
        p = x->zbuf.data;
        n = x->zbuf.len;
    }
    x->cb->on_message(c, op, p, n);
}

/*  Parses the complete frames in the input buffer (RFC 6455 §5): client frames must be
 *  masked; control frames are short and unfragmented; a message (all its fragments) is at
 *  most max_message bytes, which is checked from the header, before its payload is read. */
static void
s_consume(gw_ws_conn_t *c)
{
    gw_ws_ctx_t *x = c->ctx;
    while (c->state == GW_WS_OPEN) {
        h2o_buffer_t *in = c->sock->input;
        unsigned char *b = (unsigned char *)in->bytes;
        size_t avail = in->size;
        gw_ws_frame_t f;
        const char *why = NULL;
        int rc = gw_ws_parse(b, avail, &f, &why);
        if (rc < 0) {
            gw_ws_close(c, 1002, why);
            break;
        }
        if (rc == 0)
            break;
        int op = f.op;
        uint64_t len = f.len;
        if (f.rsv1 && !c->deflate) {
            gw_ws_close(c, 1002, "Reserved bits set");
            break;
        }
        if (!(op & 0x8)) {
            if ((op == GW_WS_CONT) != (c->frag_op != 0)) {
                gw_ws_close(c, 1002, op ? "Expected a continuation frame"
                                        : "Continuation frame without a message");
                break;
            }
            if (len > x->max_message || (op == GW_WS_CONT && c->frag_len + len > x->max_message)) {
                if (x->cb->on_oversize)
                    x->cb->on_oversize(c);
                gw_ws_close(c, 1009, "Message too big");
                break;
            }
        }
        if (avail < f.hl + len)
            break;
        unsigned char *pl = b + f.hl;
        gw_ws_unmask(pl, len, f.mask);
        size_t flen = f.hl + (size_t)len;
        switch (op) {
        case GW_WS_CLOSE: /* answer with the same code, then close when written */
            c->peer_closed = true;
            gw_ws_close(c, gw_ws_close_code(pl, len), "");
            break;
        case GW_WS_PING: {
            char *d = gw_ws_out(c, GW_WS_PONG, (size_t)len);
            if (d)
                memcpy(d, pl, (size_t)len);
            break;
        }
        case GW_WS_PONG:
            break;
        case GW_WS_CONT: {
            char *nf = realloc(c->frag, c->frag_len + (size_t)len + 1);
            if (!nf)
                abort();
            c->frag = nf;
            memcpy(c->frag + c->frag_len, pl, (size_t)len);
            c->frag_len += (uint32_t)len;
            if (f.fin) {
                char *msg = c->frag;
                uint32_t mlen = c->frag_len;
                int mop = c->frag_op;
                bool z = c->frag_z;
                c->frag = NULL;
                c->frag_len = 0;
                c->frag_op = 0;
                c->frag_z = false;
                s_message(c, mop, z, msg, mlen);
                free(msg);
            }
            break;
        }
        default: /* text, binary */
            if (f.fin) {
                s_message(c, op, f.rsv1, (const char *)pl, (size_t)len);
            } else {
                c->frag_z = f.rsv1;
                c->frag = malloc((size_t)len + 1);
                if (!c->frag)
                    abort();
                memcpy(c->frag, pl, (size_t)len);
                c->frag_len = (uint32_t)len;
                c->frag_op = (uint8_t)op;
            }
        }
        if (c->state == GW_WS_DEAD)
            return;
        h2o_buffer_consume(&c->sock->input, flen);
    }
    if (c->state == GW_WS_CLOSING && c->sock)
        h2o_buffer_consume(&c->sock->input, c->sock->input->size);
}

static void
s_on_read(h2o_socket_t *sock, const char *err)
{
    gw_ws_conn_t *c = sock->data;
    gw_ws_ctx_t *x = c->ctx;
    if (err) {
        gw_ws_kill(c, err);
        return;
    }
    c->last_rx_ms = pd_mono_ms();
    if (c->state == GW_WS_OPEN && x->cb->may_read && !x->cb->may_read(c)) {
        if (!c->held) {
            c->held = true;
            h2o_socket_read_stop(sock);
        }
        return;
    }
    if (c->state == GW_WS_OPEN)
        s_consume(c);
    else if (c->sock)
        h2o_buffer_consume(&sock->input, sock->input->size); /* closing: discard */
    if (c->state != GW_WS_DEAD && c->sock)
        s_input_release(c->sock);
}

void
gw_ws_resume(gw_ws_conn_t *c)
{
    if (!c->held || !c->sock || c->state == GW_WS_DEAD)
        return;
    c->held = false;
    h2o_socket_read_start(c->sock, s_on_read);
    s_on_read(c->sock, NULL);
}

/* ------------------------------------------------------------------------------ opening */

static void
s_on_upgraded(void *data, h2o_socket_t *sock, size_t reqsize)
{
    gw_ws_conn_t *c = data;
    gw_ws_ctx_t *x = c->ctx;
    free(c->wbuf); /* the frames written with the 101 */
    c->wbuf = NULL;
    c->wlen = 0;
    if (!sock) {
        s_detach(c);
        s_free_fields(c);
        free(c);
        return;
    }
    c->sock = sock;
    sock->data = c;
    h2o_buffer_consume(&sock->input, reqsize);
    int64_t now = pd_mono_ms();
    c->last_rx_ms = now;
    c->next = x->conns;
    if (x->conns)
        x->conns->prev = c;
    x->conns = c;
    h2o_socket_read_start(sock, s_on_read);
    if (c->refused) { /* an error was sent with the 101, and a close frame */
        s_detach(c);
        c->state = GW_WS_CLOSING;
        c->close_at_ms = now + GW_WS_CLOSE_WAIT_MS;
        s_close_done(c);
        return;
    }
    c->state = GW_WS_OPEN;
    if (x->cb->on_open)
        x->cb->on_open(c);
    if (c->state == GW_WS_DEAD)
        return;
    if (sock->input->size)
        s_on_read(sock, NULL);
    else
        s_input_release(sock);
}

gw_ws_conn_t *
gw_ws_new(gw_ws_ctx_t *x, size_t size)
{
    gw_ws_conn_t *c = calloc(1, size < sizeof *c ? sizeof *c : size);
    if (!c)
        abort();
    c->ctx = x;
    c->state = GW_WS_UPGRADING;
    pd_cqueue_init(&c->q);
    return c;
}

void
gw_ws_upgrade(gw_ws_conn_t *c, h2o_req_t *req, const char *client_key)
{
    char accept[29];
    gw_ws_accept_key(client_key, accept);
    req->res.status = 101;
    req->res.reason = "Switching Protocols";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_UPGRADE, NULL, H2O_STRLIT("websocket"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("sec-websocket-accept"), 0,
                          NULL, accept, 28);
    if (c->ctx->deflate) {
        for (ssize_t i = -1; (i = h2o_find_header_by_str(&req->headers,
                                                         H2O_STRLIT("sec-websocket-extensions"),
                                                         i)) != -1;) {
            const h2o_iovec_t *v = &req->headers.entries[i].value;
            if (gw_ws_deflate_offer(v->base, v->len)) {
                c->deflate = true;
                break;
            }
        }
    }
    if (c->deflate)
        h2o_add_header_by_str(&req->pool, &req->res.headers,
                              H2O_STRLIT("sec-websocket-extensions"), 0, NULL,
                              H2O_STRLIT("permessage-deflate; server_no_context_takeover; "
                                         "client_no_context_takeover"));
    /* the frames queued so far go out with the 101, in one write */
    size_t len = 0;
    char *hello = pd_cqueue_take(&c->q, &len);
    c->wbuf = hello; /* freed when the upgrade completes (as the write in flight) */
    c->wlen = (uint32_t)len;
    h2o_iovec_t buf = h2o_iovec_init(hello ? hello : "", len);
    h2o_http1_upgrade(req, &buf, 1, s_on_upgraded, c);
}

/* ------------------------------------------------------------------------------ housekeeping */

void
gw_ws_sweep(gw_ws_ctx_t *x, int64_t now)
{
    gw_ws_conn_t *c = x->conns;
    while (c) {
        gw_ws_conn_t *next = c->next;
        if (c->wbuf && c->write_ms && now - c->write_ms >= x->stall_ms) {
            x->slow++;
            pd_log_info("disconnecting a slow consumer: no write progress for %lld ms (%zu bytes "
                        "pending)",
                        (long long)(now - c->write_ms), pd_cqueue_bytes(&c->q) + c->wlen);
            gw_ws_kill(c, "slow consumer");
        } else if (c->state == GW_WS_CLOSING) {
            if (now >= c->close_at_ms)
                gw_ws_kill(c, "close timeout");
        } else if (c->state == GW_WS_OPEN && now - c->last_rx_ms >= x->idle_ms) {
            x->idle++;
            gw_ws_close(c, 1000, "Idle timeout");
        }
        c = next;
    }
}

void
gw_ws_ctx_init(gw_ws_ctx_t *x, h2o_context_t *h2o, const gw_ws_cb_t *cb)
{
    memset(x, 0, sizeof *x);
    x->h2o = h2o;
    x->cb = cb;
    x->flush_entry.cb = s_on_flush;
    x->max_queue = 16 << 20;
    x->max_message = 65536;
    x->stall_ms = 10000;
    x->idle_ms = 90000;
    x->deflate = true;
    x->deflate_min = 128;
    pd_buf_init(&x->zbuf);
}

void
gw_ws_ctx_write_delay(gw_ws_ctx_t *x, int ms)
{
    if (ms <= 0 || x->delayed)
        return;
    h2o_timeout_init(x->h2o->loop, &x->delay, (uint64_t)ms);
    x->delayed = true;
}

void
gw_ws_ctx_dispose(gw_ws_ctx_t *x)
{
    if (x->zd) {
        deflateEnd(x->zd);
        free(x->zd);
    }
    if (x->zi) {
        inflateEnd(x->zi);
        free(x->zi);
    }
    x->zd = x->zi = NULL;
    pd_buf_free(&x->zbuf);
}
