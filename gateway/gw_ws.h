/*  gw_ws — RFC 6455 framing without I/O: the header of a server frame, the parser of client
 *  frame headers, unmasking, close payloads and the handshake's accept key. The realtime layer
 *  (gw_realtime.c) owns the sockets and the message state; these functions only read and write
 *  bytes, so a fuzzer drives them directly (tests/fuzz/fuzz_ws.c). */
#ifndef GW_WS_H
#define GW_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_util.h"

enum {
    GW_WS_CONT = 0x0,
    GW_WS_TEXT = 0x1,
    GW_WS_BINARY = 0x2,
    GW_WS_CLOSE = 0x8,
    GW_WS_PING = 0x9,
    GW_WS_PONG = 0xA,
};

#define GW_WS_HEADER_MAX 10 //  bytes of a server frame's header, at most

//  A client frame's header as parsed.
typedef struct {
    bool fin;
    int op;                   //  GW_WS_*
    uint64_t len;             //  payload bytes
    size_t hl;                //  header bytes, the 4-byte mask included
    const unsigned char *mask; //  the masking key (inside the parsed bytes)
} gw_ws_frame_t;

//  Writes the header of an unfragmented server frame (opcode op, n payload bytes) into h
//  (GW_WS_HEADER_MAX bytes); returns its length.
size_t gw_ws_header(unsigned char *h, int op, size_t n);
//  Appends one server frame to out.
void gw_ws_frame_into(pd_buf_t *out, int op, const char *p, size_t n);
//  Parses the header of the client frame at b (avail bytes). Returns 1 with f filled (the
//  payload may not all be there yet: the frame is complete when avail >= f->hl + f->len), 0 if
//  more bytes are needed, or -1 with *why set for a protocol error: reserved bits, an unmasked
//  frame, a fragmented or long control frame, an unknown opcode.
int gw_ws_parse(const unsigned char *b, size_t avail, gw_ws_frame_t *f, const char **why);
//  Unmasks n payload bytes in place with the frame's key.
void gw_ws_unmask(unsigned char *p, uint64_t n, const unsigned char mask[4]);
//  The code to answer a client's close frame (payload p, n bytes) with: its own code, 1000 when
//  it gave none, 1002 when its code may not be sent (RFC 6455 §7.4).
int gw_ws_close_code(const unsigned char *p, uint64_t n);
//  A close frame's payload (code, then reason cut to ASCII and 123 bytes) into p (125 bytes).
size_t gw_ws_close_payload(char *p, int code, const char *reason);
//  Sec-WebSocket-Accept for a client's 24-character key, NUL-terminated.
void gw_ws_accept_key(const char *client_key, char out[29]);

#endif
