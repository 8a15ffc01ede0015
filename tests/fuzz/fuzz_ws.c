/*  fuzz_ws — libFuzzer target for the RFC 6455 frame parser and the permessage-deflate offer
 *  parser (gateway/gw_ws.c).
 *
 *  The input is a stream of client bytes, consumed as gw_realtime.c consumes a connection's
 *  input: parse a header, wait for the whole frame, unmask, answer close frames with a code,
 *  reassemble fragments under the message bound. The parser must never read past the bytes it
 *  was given (ASan), must only accept what RFC 6455 allows a client to send, and every frame
 *  the server writes back must parse again (after masking) with the same opcode and length. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_ws.h"
#include "pd_rtmsg.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/*  Writes a server frame back as a client would send it (masked) and parses it again. */
static void
s_roundtrip(int op, const unsigned char *p, size_t n)
{
    static unsigned char buf[GW_WS_HEADER_MAX + 4 + 125];
    if (n > 125)
        return;
    size_t hl = gw_ws_header(buf, op, n);
    buf[1] |= 0x80;
    static const unsigned char mask[4] = {1, 2, 3, 4};
    memcpy(buf + hl, mask, 4);
    memcpy(buf + hl + 4, p, n);
    gw_ws_unmask(buf + hl + 4, n, mask);
    gw_ws_frame_t f;
    const char *why = NULL;
    CHECK(gw_ws_parse(buf, hl + 4 + n, &f, &why) == 1);
    CHECK(f.op == op && f.len == n && f.fin && f.hl == hl + 4);
    gw_ws_unmask(buf + f.hl, f.len, f.mask);
    CHECK(memcmp(buf + f.hl, p, n) == 0);
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    /* the same bytes as a Sec-WebSocket-Extensions value: must not read past them */
    char *v = malloc(size ? size : 1);
    memcpy(v, data, size);
    (void)gw_ws_deflate_offer(v, size);
    free(v);
    unsigned char *b = malloc(size ? size : 1);
    memcpy(b, data, size);
    size_t off = 0;
    int frag_op = 0;
    uint64_t frag_len = 0;
    while (off < size) {
        gw_ws_frame_t f;
        const char *why = NULL;
        int rc = gw_ws_parse(b + off, size - off, &f, &why);
        if (rc < 0) {
            CHECK(why && *why);
            break;
        }
        if (rc == 0)
            break;
        CHECK(f.hl >= 6 && f.hl <= 14 && f.hl <= size - off);
        CHECK(f.op <= GW_WS_BINARY || (f.op >= GW_WS_CLOSE && f.op <= GW_WS_PONG));
        CHECK(!f.rsv1 || f.op == GW_WS_TEXT || f.op == GW_WS_BINARY);
        if (f.op & 0x8) {
            CHECK(f.fin && f.len <= 125);
        } else {
            if ((f.op == 0) != (frag_op != 0))
                break; /* the connection is closed with 1002 */
            if (f.len > PD_RTMSG_MAX_BYTES || (f.op == 0 && frag_len + f.len > PD_RTMSG_MAX_BYTES))
                break; /* 1009 */
        }
        if (size - off - f.hl < f.len)
            break; /* the rest of the frame has not arrived */
        unsigned char *pl = b + off + f.hl;
        gw_ws_unmask(pl, f.len, f.mask);
        switch (f.op) {
        case GW_WS_CLOSE: {
            int code = gw_ws_close_code(pl, f.len);
            CHECK(code >= 1000 && code <= 4999 && code != 1005 && code != 1006);
            char cp[125];
            size_t n = gw_ws_close_payload(cp, code, (const char *)"reason");
            s_roundtrip(GW_WS_CLOSE, (const unsigned char *)cp, n);
            break;
        }
        case GW_WS_PING:
            s_roundtrip(GW_WS_PONG, pl, (size_t)f.len);
            break;
        case GW_WS_PONG:
            break;
        case GW_WS_CONT:
            frag_len += f.len;
            if (f.fin)
                frag_op = 0, frag_len = 0;
            break;
        default:
            if (!f.fin)
                frag_op = f.op, frag_len = f.len;
        }
        off += f.hl + (size_t)f.len;
    }
    free(b);
    return 0;
}
