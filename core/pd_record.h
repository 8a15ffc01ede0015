/*  pd_record — a presence record as a plain value: what a store node keeps, what a write
 *  carries, what an event shows. Strings are views (into a message frame or into the store's
 *  shared memory); lists of roles are packed NUL-terminated strings ("any\0user:u1\0").
 *
 *  The JSON pieces (status_json, perms_json, meta_json) are pre-encoded by the gateway, so the
 *  store never parses JSON on a write: it concatenates the Presence model once per write
 *  (pd_record_render) and serves those bytes to every reader and every subscriber. */
#ifndef PD_RECORD_H
#define PD_RECORD_H

#include "pd_msg.h"
#include "pd_util.h"

typedef struct {
    pd_str_t project;      //  project id
    pd_str_t id;           //  $id
    pd_str_t user_id;      //  userId
    pd_str_t status;       //  status, raw text (empty when null)
    pd_str_t source;       //  "rest", "graphql" or "realtime"
    pd_str_t status_json;  //  status as a JSON token: "\"online\"" or "null"
    pd_str_t perms_json;   //  $permissions: sorted JSON array text
    pd_str_t meta_json;    //  metadata: compact JSON object text, "{}" when empty
    pd_str_t read_roles;   //  roles holding read (packed list)
    pd_str_t update_roles; //  roles holding update
    pd_str_t delete_roles; //  roles holding delete
    pd_str_t conn;         //  realtime-bound: owning "gateway/connection", else empty
    int64_t created_ms;    //  $createdAt
    int64_t updated_ms;    //  $updatedAt
    int64_t expires_ms;    //  expiresAt
    uint64_t version;      //  bumped by every write; 1 on create
    pd_str_t json;         //  the Presence model JSON (set by the store)
    uint32_t slot;         //  a record read from pd_table: its slot there (else meaningless)
} pd_record_t;

//  Appends the Presence model JSON of rec to b, keys in Appwrite's order:
//  $id, $createdAt, $updatedAt, $permissions, userId, status, source, expiresAt, metadata.
void pd_record_render(const pd_record_t *rec, pd_buf_t *b);
/*  The inverse for the parts of the JSON that are fields of rec, as pd_record_render wrote them
 *  verbatim: given rec->json and every field's length (and the dates), points those of id,
 *  user_id, perms_json, status_json, source and meta_json whose ptr is NULL into the JSON,
 *  their lengths unchanged (a store keeps them only there, pd_table.c), and status, if NULL,
 *  inside status_json's quotes. These views are not NUL-terminated. False, and nothing
 *  changed, if the lengths do not add up to the JSON's. */
bool pd_record_locate(pd_record_t *rec);
/*  A list page is {"total":N,"presences":[<json>,<json>,...]}, the records' JSON as they are kept
 *  (the broker writes one, a gateway that fetched a page writes one). pd_page_head writes what
 *  comes before the records into head (PD_PAGE_HEAD_MAX bytes) and returns its length;
 *  pd_page_len is the page's whole length for n records of json bytes in all; PD_PAGE_TAIL ends
 *  it. */
#define PD_PAGE_HEAD_MAX 64
#define PD_PAGE_TAIL "]}"
size_t pd_page_head(char *head, int64_t total);
size_t pd_page_len(size_t head, size_t n, size_t json);

/*  The record in an internal message (pd_msg.def): the one place that says which field holds
 *  what, for every message that carries a record: a write (gateway -> store: PD_REC_WRITE), an
 *  event (store -> bus -> gateways and the reaper: PD_REC_EVENT, and the state before the
 *  change with pd_record_write_prev). Reading takes every field present; strings stay views
 *  into the message. */
enum {
    PD_REC_KEY = 1 << 0,     //  project, id, userId
    PD_REC_CONTENT = 1 << 1, //  status (raw and JSON), source, metadata, read roles, conn
    PD_REC_PERMS = 1 << 2,   //  $permissions JSON, update and delete roles
    PD_REC_EXPIRES = 1 << 3, //  expiresAt
    PD_REC_STAMPS = 1 << 4,  //  version, $createdAt, $updatedAt
    PD_REC_BODY = 1 << 5,    //  the Presence model JSON
};
#define PD_REC_WRITE (PD_REC_KEY | PD_REC_CONTENT | PD_REC_PERMS | PD_REC_EXPIRES)
#define PD_REC_EVENT (PD_REC_KEY | PD_REC_CONTENT | PD_REC_EXPIRES | PD_REC_STAMPS | PD_REC_BODY)

//  Adds the parts (PD_REC_*) of rec to the open message w.
void pd_record_write(pd_msgw_t *w, const pd_record_t *rec, unsigned parts);
//  The state before a change, in an event: body, read roles, status, metadata, expiresAt, owner.
void pd_record_write_prev(pd_msgw_t *w, const pd_record_t *prev);
//  The record a message carries (absent fields empty or 0).
void pd_record_read(const pd_msg_t *m, pd_record_t *rec);
/*  The state before the change of an event whose record after it is rec (what prev left out is
 *  rec's; updated_ms is 0: read it from the body if needed). Returns false when the event has
 *  no previous state (a create, or a delete). */
bool pd_record_read_prev(const pd_msg_t *m, const pd_record_t *rec, pd_record_t *prev);

/*  A record as one item of a DUMP (gw_replica.h): the array [id, userId, status, status JSON,
 *  source, read roles, metadata JSON, $createdAt, $updatedAt, expiresAt, version, JSON], what a
 *  list needs to filter, order and serve it (no permissions JSON, no owner). pd_record_read_item
 *  reads one in place (views into the bytes), moving r past it; false if the value at r is not
 *  one (r then anywhere). */
void pd_record_pack_item(const pd_record_t *rec, msgpack_packer *pk);
bool pd_record_read_item(pd_mpr_t *r, pd_record_t *rec);

//  A time field ("$createdAt", "$updatedAt") of a Presence model JSON, in ms (0 if absent).
int64_t pd_record_body_time(pd_str_t body, const char *key);

//  True if any role of the packed list `caller` is in the packed list `allowed`.
bool pd_roles_intersect(pd_str_t allowed, pd_str_t caller);

#endif
