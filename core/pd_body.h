/*  pd_body — parses and validates the JSON body of a presence write (PUT/PATCH) the way
 *  Appwrite's validators do, and encodes the record's JSON pieces once (status as a JSON token,
 *  metadata as compact object text, permissions aggregated), so no later hop parses JSON.
 *  Pure: no I/O, no clock except the `now` given. Used by the gateway; fuzzed on its own. */
#ifndef PD_BODY_H
#define PD_BODY_H

#include <jansson.h>

#include "pd_auth.h"

typedef struct {
    json_t *root;          //  the parsed body (owns the views below)
    bool has_user, has_status, has_meta, has_expires, has_perms;
    pd_str_t user;         //  userId
    pd_str_t status;       //  raw status
    pd_buf_t status_json;  //  status as a JSON string token
    pd_buf_t meta_json;    //  metadata, compact JSON object ("{}" for an empty one)
    int64_t expires;       //  expiresAt, ms
    pd_perms_t perms;      //  parsed permissions (when has_perms)
} pd_body_t;

//  Prepares b for pd_body_parse. A body is reused from request to request: parse and clear keep
//  its buffers, so a busy gateway does not allocate them per request.
void pd_body_init(pd_body_t *b);
//  Releases the parsed JSON and empties the buffers (keeping their memory).
void pd_body_clear(pd_body_t *b);
//  Parses buf into an initialised b (clearing what it held). Returns PD_ERR_OK, or an error code
//  (pd_err.h) with Appwrite's message in msg. max_meta caps the encoded metadata; expiresAt must
//  lie in (now, now + 30 days]. Call pd_body_clear when done, pd_body_free at the end.
int pd_body_parse(pd_body_t *b, const char *buf, size_t len, size_t max_meta, int64_t now,
                  char *msg, size_t n);
void pd_body_free(pd_body_t *b);

#endif
