/*  pd_phx — Phoenix channel framing as Supabase Realtime clients speak it (realtime-js): the
 *  message [join_ref, ref, topic, event, payload] in both serializers, and the join config.
 *
 *    vsn 1.0.0  a text frame holding a JSON object {"join_ref","ref","topic","event","payload"}
 *    vsn 2.0.0  a text frame holding a JSON array [join_ref, ref, topic, event, payload], or a
 *               binary frame: realtime-js's user broadcast push (kind 3, client to server) and
 *               user broadcast (kind 4, server to client):
 *                 kind 3: u8 kind, u8 join_ref_len, u8 ref_len, u8 topic_len, u8 event_len,
 *                         u8 meta_len, u8 encoding, join_ref, ref, topic, event, meta, payload
 *                 kind 4: u8 kind, u8 topic_len, u8 event_len, u8 meta_len, u8 encoding,
 *                         topic, event, meta, payload
 *               encoding 0: the payload is bytes; 1: it is JSON text. meta is "" or a JSON
 *               object.
 *
 *  Pure functions over jansson: no I/O, no global state, so a fuzzer drives the decoder
 *  (tests/fuzz/fuzz_phx1.c, fuzz_phx2.c). Every client is untrusted: a bad frame is an error
 *  with a message, never a crash. */
#ifndef PD_PHX_H
#define PD_PHX_H

#include <jansson.h>

#include "pd_util.h"

enum { PD_PHX_V1 = 1, PD_PHX_V2 = 2 };

#define PD_PHX_MAX_FIELD 255   //  bytes of join_ref, ref, topic and event (realtime-js's u8)
#define PD_PHX_MAX_KEY 255     //  bytes of a presence key
enum { PD_PHX_KIND_PUSH = 3, PD_PHX_KIND_BCAST = 4 };
enum { PD_PHX_ENC_BINARY = 0, PD_PHX_ENC_JSON = 1 };

//  A decoded client message. Strings are views: into root's strings (text frames) or into the
//  frame (binary), so keep both alive while using them. A NULL ptr is JSON null.
typedef struct {
    json_t *root;              //  owned: the parsed text frame (NULL for a binary frame)
    pd_str_t join_ref, ref, topic, event;
    json_t *payload;           //  borrowed from root: a JSON object (text frames)
    bool binary;               //  a user broadcast push (vsn 2 binary, kind 3)
    pd_str_t bevent;           //  its user event
    pd_str_t bmeta;            //  its metadata JSON object text, or empty
    int bencoding;             //  PD_PHX_ENC_*
    pd_str_t bpayload;         //  its payload bytes (JSON text when bencoding is JSON)
} pd_phx_msg_t;

//  Decodes one frame (binary: a binary WebSocket frame). Returns 0 with m filled (free it
//  with pd_phx_msg_free), or -1 with a message in err. A binary frame is only vsn 2's.
int pd_phx_decode(pd_phx_msg_t *m, int vsn, bool binary, const char *p, size_t n, char *err,
                  size_t errlen);
void pd_phx_msg_free(pd_phx_msg_t *m);

//  Appends one message; payload is JSON text (an object). A NULL ptr in a ref is null.
void pd_phx_encode(pd_buf_t *out, int vsn, pd_str_t join_ref, pd_str_t ref, pd_str_t topic,
                   pd_str_t event, const char *payload, size_t len);
//  Appends a phx_reply: payload {"status": status, "response": response (JSON text)}.
void pd_phx_reply(pd_buf_t *out, int vsn, pd_str_t join_ref, pd_str_t ref, pd_str_t topic,
                  const char *status, const char *response, size_t len);
//  Appends a binary user broadcast (kind 4). topic, event and meta are at most 255 bytes
//  (callers check); returns -1 (nothing appended) if one is longer.
int pd_phx_encode_bcast(pd_buf_t *out, pd_str_t topic, pd_str_t event, pd_str_t meta,
                        int encoding, const char *payload, size_t len);

//  What a phx_join asks for (its payload's config and access_token). Views into the payload.
typedef struct {
    bool presence_enabled;
    pd_str_t presence_key;     //  empty: the server picks one per connection
    bool bcast_self, bcast_ack;
    bool private_;
    bool postgres;             //  it asks for postgres_changes (not served)
    pd_str_t access_token;     //  empty: none
} pd_phx_join_t;

//  Parses a phx_join payload. Returns 0, or -1 with a message in err (a field of the wrong
//  type, a presence key longer than PD_PHX_MAX_KEY).
int pd_phx_join_parse(const json_t *payload, pd_phx_join_t *j, char *err, size_t errlen);

void pd_phx_test(bool verbose);

#endif
