/*  gw_ws — RFC 6455 framing without I/O (see gw_ws.h). */
#include <string.h>

#include <h2o.h>
#include <openssl/evp.h>

#include "gw_ws.h"

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
    f->op = b[0] & 0x0f;
    f->len = b[1] & 0x7f;
    f->hl = 2;
    if (b[0] & 0x70) {
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
