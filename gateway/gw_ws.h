/*  gw_ws — the WebSocket layer of the gateway (RFC 6455), below every realtime protocol.
 *
 *  Framing without I/O: the header of a server frame, the parser of client frame headers,
 *  unmasking, close payloads and the handshake's accept key. These read and write bytes only,
 *  so a fuzzer drives them directly (tests/fuzz/fuzz_ws.c).
 *
 *  Connections. A protocol (the Appwrite realtime endpoint, gw_realtime.c) owns a gw_ws_ctx_t
 *  with its callbacks, and embeds gw_ws_conn_t at the start of its own connection struct: the
 *  layer allocates and frees that struct (gw_ws_new's size), and reports up only through the
 *  callbacks, as h2o does. It does the upgrade itself (h2o_http1_upgrade, the 101 and the first
 *  frames in one write) and speaks RFC 6455 directly on the socket. h2o 2.2.5's own WebSocket
 *  layer runs wslay, which costs ~4.7 KB per connection (wslay's 4 KB input buffer) and writes a
 *  frame as two writes one loop turn apart. Here client frames are parsed and unmasked in h2o's
 *  input buffer (released whenever it is empty, so an idle connection holds none), and server
 *  frames go to one conflating output queue per connection (pd_cqueue) that is written with a
 *  single write at the end of the loop turn.
 *
 *  Conflation: a frame carrying a record's state (gw_ws_out_record) supersedes that record's
 *  queued frame while a write to the connection is in flight (the client is behind); a client
 *  that keeps up gets every state.
 *
 *  Slow consumers are judged by time, not by a burst: a connection is dropped when a write to it
 *  has made no progress for stall_ms (the client stopped reading), or when its pending output
 *  would pass max_queue, a memory bound for one connection. Connections that send nothing for
 *  idle_ms are closed (1000). Closing is the RFC's handshake: a close frame after what is
 *  queued, a half-close once written, and the socket closed when the peer closes or after
 *  GW_WS_CLOSE_WAIT_MS. */
#ifndef GW_WS_H
#define GW_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <h2o.h>

#include "pd_cqueue.h"
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
    bool rsv1;                //  compressed (permessage-deflate), first frame of a message only
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
//  more bytes are needed, or -1 with *why set for a protocol error: RSV2/RSV3, RSV1 on a control
//  or continuation frame, an unmasked frame, a fragmented or long control frame, an unknown
//  opcode. RSV1 on a message's first frame is reported (f->rsv1): the caller refuses it unless
//  permessage-deflate was negotiated.
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
//  True if a Sec-WebSocket-Extensions value (n bytes) has a permessage-deflate offer (RFC 7692)
//  the server can accept: parameters known, no duplicates, server_max_window_bits (if any) 15.
//  The answer is always "permessage-deflate; server_no_context_takeover;
//  client_no_context_takeover" (§7.1.1: a server may ask the latter even if not offered).
bool gw_ws_deflate_offer(const char *v, size_t n);

/* ------------------------------------------------------------------------------ connections */

/*  permessage-deflate (RFC 7692), negotiated when the client offers it (browsers and Node's
 *  `ws` do), with no context takeover either way, so a message is compressed alone and nothing
 *  is kept per connection: the context's one deflate and one inflate stream serve all. Small
 *  messages go uncompressed (allowed per message). A message many connections get (an event)
 *  is a gw_ws_shared_t: its common beginning is deflated once, ending in a sync flush (byte
 *  aligned), and each connection's frame appends its own tail (the subscription ids) as a
 *  stored block, so an event costs one compression, not one per delivery. */
typedef struct {
    pd_buf_t plain;           //  the common beginning of a message
    pd_buf_t z;               //  it deflated, ending in a sync flush (made on first need)
    bool z_ok;
} gw_ws_shared_t;

#define GW_WS_CLOSE_WAIT_MS 3000 //  after our close frame, wait this long for the peer

enum { GW_WS_UPGRADING = 0, GW_WS_OPEN, GW_WS_CLOSING, GW_WS_DEAD };

typedef struct gw_ws_ctx gw_ws_ctx_t;
typedef struct gw_ws_conn gw_ws_conn_t;

//  What a protocol is told. Every callback may close or kill the connection.
typedef struct {
    //  The upgrade is done and the connection open (not after gw_ws_refuse).
    void (*on_open)(gw_ws_conn_t *c);
    //  A whole message (GW_WS_TEXT or GW_WS_BINARY, fragments joined); p is valid during the
    //  call only.
    void (*on_message)(gw_ws_conn_t *c, int op, const char *p, size_t n);
    //  A message longer than the context's max_message was announced: the protocol may queue
    //  its error message; the layer then closes with 1009.
    void (*on_oversize)(gw_ws_conn_t *c);
    //  False: leave the input unread for now (gw_ws_resume later). NULL: always read.
    bool (*may_read)(gw_ws_conn_t *c);
    //  Called once, when the connection stops being open (closing, killed, or an upgrade that
    //  failed): the protocol undoes what the connection takes part in and frees what it owns.
    //  Frames may still be queued (a close handshake in progress).
    void (*on_detach)(gw_ws_conn_t *c);
} gw_ws_cb_t;

struct gw_ws_conn {
    gw_ws_ctx_t *ctx;
    h2o_socket_t *sock;         //  NULL while upgrading and once dead
    gw_ws_conn_t *prev, *next;  //  the context's open and closing connections
    gw_ws_conn_t *flush_next;   //  connections with output to write at the end of the turn
    gw_ws_conn_t *dead_next;    //  dead connections, freed at the end of the turn
    pd_cqueue_t q;              //  frames waiting for the next write (conflated per record)
    char *wbuf;                 //  the write in flight
    char *frag;                 //  a fragmented message being received
    int64_t last_rx_ms;         //  mono ms of the last bytes received
    int64_t close_at_ms;        //  closing: give up waiting for the peer then
    int64_t write_ms;           //  mono ms the write in flight was issued (0: none)
    uint32_t wlen, frag_len;
    uint8_t state, frag_op;     //  GW_WS_UPGRADING...
    bool in_flush, shut, peer_closed, held, detached, refused;
    bool deflate;               //  permessage-deflate negotiated
    bool frag_z;                //  the message being received is compressed
};

struct gw_ws_ctx {
    h2o_context_t *h2o;
    const gw_ws_cb_t *cb;
    gw_ws_conn_t *conns;        //  open and closing connections
    gw_ws_conn_t *flush_head, *dead;
    h2o_timeout_entry_t flush_entry;
    bool flush_linked;
    size_t max_queue;           //  output bytes a connection may have pending
    size_t max_message;         //  bytes of a client message (all its fragments)
    int64_t stall_ms;           //  a write without progress this long drops its connection
    int64_t idle_ms;            //  nothing received this long: close 1000
    h2o_timeout_t delay;        //  --ws-write-delay: output is written this long after it is queued
    bool delayed;               //  delay is set up (gw_ws_ctx_write_delay)
    uint64_t conflated;         //  queued frames superseded or cancelled
    uint64_t slow, idle;        //  connections dropped as slow consumers; closed for idleness
    bool deflate;               //  accept permessage-deflate offers (--ws-deflate)
    size_t deflate_min;         //  messages shorter than this go uncompressed
    void *zd, *zi;              //  the deflate and inflate streams (z_stream), made on first use
    pd_buf_t zbuf;              //  scratch: a message compressed or inflated
    uint64_t deflated, zin, zout; //  messages compressed; their bytes before and after
};

void gw_ws_ctx_init(gw_ws_ctx_t *x, h2o_context_t *h2o, const gw_ws_cb_t *cb);
void gw_ws_ctx_dispose(gw_ws_ctx_t *x);
//  Writes output ms after it is queued instead of at the end of the loop turn (0: at the end of
//  the turn). A connection's frames of that time go out in one write: fewer system calls per
//  delivery when events come faster than one per ms per connection, for that much latency.
void gw_ws_ctx_write_delay(gw_ws_ctx_t *x, int ms);
//  A connection for a WebSocket handshake: size bytes (at least sizeof(gw_ws_conn_t), zeroed),
//  the protocol's struct with gw_ws_conn_t first. Frames sent before gw_ws_upgrade go out with
//  the 101.
gw_ws_conn_t *gw_ws_new(gw_ws_ctx_t *x, size_t size);
//  Makes the connection close right after the 101 with a close frame (code, reason), after what
//  was queued (the protocol's error message); on_open is not called.
void gw_ws_refuse(gw_ws_conn_t *c, int code, const char *reason);
//  Answers the handshake of req (client_key: its Sec-WebSocket-Key) with 101 and the frames
//  queued so far, and takes over the socket. The connection is then the layer's.
void gw_ws_upgrade(gw_ws_conn_t *c, h2o_req_t *req, const char *client_key);
//  Room for an n-byte frame (op GW_WS_*) in the output, or NULL when the connection is not open
//  or upgrading, or went over its output bound (it is then dropped).
char *gw_ws_out(gw_ws_conn_t *c, int op, size_t n);
//  The same for a frame with record rec's state (rec != 0; how: PD_CQ_*), conflated while the
//  client is behind. NULL also when nothing is to be sent (pd_cqueue_push_record).
char *gw_ws_out_record(gw_ws_conn_t *c, uint64_t rec, int how, int op, size_t n);
//  Queues one text frame (open connections only), compressed when negotiated and worth it.
void gw_ws_send(gw_ws_conn_t *c, const char *p, size_t n);
//  A shared message: sh->plain is filled by the caller (after gw_ws_shared_reset).
void gw_ws_shared_init(gw_ws_shared_t *sh);
void gw_ws_shared_reset(gw_ws_shared_t *sh);
void gw_ws_shared_free(gw_ws_shared_t *sh);
//  Queues a text frame of sh's beginning plus a tail of `tail` bytes (at most 65535), conflated
//  as gw_ws_out_record; returns where to write the tail, or NULL (as gw_ws_out_record).
char *gw_ws_out_shared(gw_ws_conn_t *c, uint64_t rec, int how, gw_ws_shared_t *sh, size_t tail);
//  Starts the closing handshake (on_detach first). Does nothing unless open.
void gw_ws_close(gw_ws_conn_t *c, int code, const char *reason);
//  Drops a connection at once. The struct is freed at the end of the loop turn, so callers up
//  the stack may still look at c->state.
void gw_ws_kill(gw_ws_conn_t *c, const char *why);
//  Reads the connection's held input again (after may_read said false).
void gw_ws_resume(gw_ws_conn_t *c);
//  Writes what is queued now (before the loop stops).
void gw_ws_flush_now(gw_ws_conn_t *c);
//  Every second: slow consumers, close timeouts, idle connections.
void gw_ws_sweep(gw_ws_ctx_t *x, int64_t now_ms);
//  True when a write to c is in flight (the client is behind).
static inline bool
gw_ws_behind(const gw_ws_conn_t *c)
{
    return c->wbuf != NULL;
}

#endif
