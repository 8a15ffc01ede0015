/*  pd_rtmsg — one client message of the Realtime WebSocket protocol (appwrite-protocol.md
 *  §6.2), parsed and validated: a pure function from the payload of one text frame to a typed
 *  struct, or to the error the server sends back ({"type":"error","data":{code, message}}).
 *  No I/O and no state; the gateway (gw_realtime.c) calls it for every frame and
 *  tests/fuzz/fuzz_rtmsg.c feeds it anything.
 *
 *  Messages: ping; authentication {session | jwt}; subscribe [{subscriptionId?, channels,
 *  queries?}, ...]; unsubscribe [{subscriptionId}, ...]; presence {status, presenceId?,
 *  metadata?, permissions?}. Error messages are Appwrite's where Appwrite has one (dispatcher:
 *  "Message format is not valid.", "Message type is not valid.", "Payload is not valid.
 *  Status is required"; validators: "items: channels is not present in payload." ...), and
 *  ours, in the same style, for presenced's limits. Every error is code 1003 (Appwrite's
 *  realtime_message_format_invalid): none of them closes the connection. */
#ifndef PD_RTMSG_H
#define PD_RTMSG_H

#include "pd_auth.h"
#include "pd_query.h"
#include "pd_util.h"

#define PD_RTMSG_MAX_BYTES 64000     //  one message (Appwrite's setPackageMaxLength)
#define PD_RTMSG_MAX_ROWS 100        //  rows in one subscribe / unsubscribe message
#define PD_RTMSG_MAX_CHANNELS 100    //  channels of one subscription
#define PD_RTMSG_MAX_CHANNEL_LEN 256 //  bytes of one channel name
#define PD_RTMSG_MAX_QUERIES PD_QUERY_MAX
#define PD_RTMSG_MAX_STATUS 255 //  characters of a status (the REST limit)

//  Error codes (the `code` of the error message).
enum { PD_RTMSG_EFORMAT = 1003, PD_RTMSG_ETOOBIG = 1009 };

enum {
    PD_RTMSG_PING = 1,
    PD_RTMSG_AUTH = 2,
    PD_RTMSG_SUBSCRIBE = 3,
    PD_RTMSG_UNSUBSCRIBE = 4,
    PD_RTMSG_PRESENCE = 5,
};

//  One subscribe row. Views point into the message's parsed JSON.
typedef struct {
    pd_str_t id;        //  subscriptionId; PD_STR_NULL when absent or "unique()"
    pd_str_t *channels; //  as sent (not deduplicated)
    size_t nchannels;
    pd_str_t *queries; //  query texts as sent
    size_t nqueries;
    pd_query_t *query; //  parsed queries, NULL when there are none; owned by the message
                       //  (a caller that keeps it sets the field to NULL)
} pd_rtmsg_row_t;

typedef struct {
    int type;   //  PD_RTMSG_*
    void *root; //  the parsed JSON (json_t *); every view below points into it
    /* subscribe */
    pd_rtmsg_row_t *rows;
    size_t nrows;
    /* unsubscribe */
    pd_str_t *ids;
    size_t nids;
    /* authentication */
    pd_str_t token; //  data.jwt, or data.session (presenced has no sessions: a JWT)
    /* presence */
    pd_str_t status;      //  raw text
    pd_buf_t status_json; //  status as a JSON string token
    pd_str_t presence_id; //  PD_STR_NULL when absent or "unique()"
    bool has_meta;
    pd_buf_t meta_json; //  compact JSON object text (when has_meta)
    bool has_perms;
    pd_perms_t perms; //  parsed permissions (when has_perms)
} pd_rtmsg_t;

//  Parses one message. max_metadata caps the encoded metadata of a presence (the project's
//  limit). Returns 0 with *m filled, or an error code (PD_RTMSG_EFORMAT, PD_RTMSG_ETOOBIG)
//  with the message in err; *m must be freed with pd_rtmsg_free either way.
int pd_rtmsg_parse(pd_rtmsg_t *m, const char *buf, size_t len, size_t max_metadata, char *err,
                   size_t errlen);
void pd_rtmsg_free(pd_rtmsg_t *m);

//  Name of a message type ("subscribe"), for logs and the `to` of a response.
const char *pd_rtmsg_name(int type);

#endif
