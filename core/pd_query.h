/*  pd_query — Appwrite queries: parse, match a record, order and page. One evaluator shared by
 *  list (store nodes filter, the broker merges) and realtime subscriptions (gateways filter).
 *
 *  Input is the SDK's JSON form: {"method":"equal","attribute":"status","values":["online"]}.
 *  Attributes: $id, userId, status, source, expiresAt, $createdAt, $updatedAt, and our
 *  extension metadata.<key>[.<key>...] (dotted path into the metadata object).
 *  Filters: equal, notEqual, lessThan, lessThanEqual, greaterThan, greaterThanEqual, isNull,
 *  isNotNull, between, startsWith, endsWith, and, or; list mode adds limit, offset,
 *  cursorAfter, cursorBefore, orderAsc, orderDesc; realtime mode allows select("*") only and
 *  no paging/order. Comparisons are type-strict like Appwrite's RuntimeQuery (a string never
 *  equals a number); datetime attributes compare as instants (values are date strings). */
#ifndef PD_QUERY_H
#define PD_QUERY_H

#include <msgpack.h>

#include "pd_msg.h"
#include "pd_record.h"

typedef struct pd_query pd_query_t;

enum { PD_QMODE_LIST = 1, PD_QMODE_REALTIME = 2 };

#define PD_QUERY_MAX 100        //  queries per request / subscription
#define PD_QUERY_MAX_VALUES 100 //  values per query
#define PD_QUERY_MAX_DEPTH 5    //  and/or nesting
#define PD_QUERY_MAX_ORDER 8    //  orderAsc/orderDesc per request
#define PD_QUERY_MAX_LIMIT 5000 //  largest page
/*  Largest offset. Appwrite takes any; here every store node must produce offset + limit rows
 *  for the broker to merge, so a deep offset is work a guest could ask for in a loop. Beyond it,
 *  page with cursorAfter (which costs the same at any depth). A project's own backend (an API
 *  key: mode | PD_QMODE_DEEP) may go to PD_QUERY_MAX_OFFSET_DEEP, so that paging a roster by
 *  offset, as Appwrite clients do, reaches past 5,000 records. */
#define PD_QUERY_MAX_OFFSET 5000
#define PD_QUERY_MAX_OFFSET_DEEP 100000
enum { PD_QMODE_DEEP = 0x100 }; //  or'ed into PD_QMODE_LIST

//  Parses n query strings. Returns a new query set (caller destroys), or NULL with a message in
//  err and the error code in *code: PD_ERR_ARGUMENT_INVALID for bad JSON or a bad shape
//  ("Invalid `queries` param: Invalid query: ..."), PD_ERR_QUERY_INVALID for an unknown
//  attribute or a method not allowed in this mode. Zero queries is valid (matches everything).
pd_query_t *pd_query_parse(const pd_str_t *qs, size_t n, int mode, int *code, char *err,
                           size_t errlen);
//  The same, from the packed list of query strings the internal protocol carries (QUERIES).
pd_query_t *pd_query_parse_packed(pd_str_t packed, int mode, int *code, char *err,
                                  size_t errlen);
void pd_query_destroy(pd_query_t **self_p);

//  Paging (list mode). limit defaults to 25, offset to 0. The cursor is PD_STR_NULL if absent;
//  *before is set for cursorBefore. Views stay valid while the query lives.
int64_t pd_query_limit(const pd_query_t *self);
int64_t pd_query_offset(const pd_query_t *self);
pd_str_t pd_query_cursor(const pd_query_t *self, bool *before);
//  If the top level holds equal(attr, [one value]) on a string attribute ("userId",
//  "status", "$id"), returns true and the value: lets a store use an index.
bool pd_query_equal_on(const pd_query_t *self, const char *attr, pd_str_t *value);
//  True if a filter (at any depth) names a metadata attribute (an order cannot).
bool pd_query_reads_meta(const pd_query_t *self);
//  Explicit orders (orderAsc, orderDesc); 0: the default order, $createdAt then $id.
size_t pd_query_norder(const pd_query_t *self);
//  Top-level filters (ANDed); 0 for none.
size_t pd_query_nfilters(const pd_query_t *self);
//  True if limit, offset, a cursor or an order was given (a count takes filters only).
bool pd_query_paged(const pd_query_t *self);

/*  Attributes an index can serve: "status", "$createdAt", "$updatedAt", "expiresAt" and
 *  "metadata.<path>" (the dates' keys are their instants, as filters compare them). */
bool pd_query_indexable(pd_str_t attr);

/*  Index keys: equal values have equal keys (an int and a double of one value too, as equal()
 *  compares them), different values different keys. Objects and arrays have none.
 *  pd_query_index_keys: if a top-level equal(attr, [values]) names attr (pd_query_indexable)
 *  and every value has a key, appends the distinct keys to out, each as a
 *  4-byte length then its bytes, and returns how many; otherwise -1. */
int pd_query_index_keys(const pd_query_t *self, pd_str_t attr, pd_buf_t *out);
//  Walks the keys pd_query_index_keys wrote: the one at *off (then past it), false at the end.
bool pd_query_index_key_next(const pd_buf_t *keys, size_t *off, pd_str_t *key);
/*  Index keys also sort by value: null, then false and true, then numbers (ints and doubles
 *  compared exactly, NaN last), then strings in byte order, which is the order comparisons use
 *  within each type. <0, 0, >0. */
int pd_query_index_key_cmp(pd_str_t a, pd_str_t b);
/*  Ranges on an index: if a top-level filter on attr (pd_query_indexable) is a
 *  comparison with one operand (lessThan, lessThanEqual, greaterThan, greaterThanEqual), a
 *  between of two operands of one type, or a startsWith, writes to lo (reset first) the key a
 *  walk of the index in key order starts at, and returns that filter's number; otherwise -1.
 *  pd_query_index_range_pos then says where a key met on the walk lies: <0 before the range
 *  (go on), 0 in it, >0 past it (stop). Every record in range still meets every filter's match:
 *  the range only narrows the records visited. */
int pd_query_index_range(const pd_query_t *self, pd_str_t attr, pd_buf_t *lo);
int pd_query_index_range_pos(const pd_query_t *self, int filter, pd_str_t key);

//  Per-record scratch for matching: metadata is parsed at most once, and only if a query needs
//  it. Init before use, clear after (frees the parsed metadata).
typedef struct {
    const pd_record_t *rec;
    void *meta;        //  parsed metadata (json_t *), NULL until needed
    bool meta_tried;   //  parse attempted
} pd_qrec_t;

void pd_qrec_init(pd_qrec_t *r, const pd_record_t *rec);
void pd_qrec_clear(pd_qrec_t *r);

//  True if the record satisfies every filter (AND at the top level). select/paging/order are
//  ignored here.
bool pd_query_match(const pd_query_t *self, pd_qrec_t *r);
//  pd_query_match without the filter pd_query_index_keys read keys from: for a record found
//  under one of those keys (an index's set), which that filter holds by construction.
bool pd_query_match_but(const pd_query_t *self, pd_qrec_t *r, pd_str_t attr);
//  The record's index key of attr (pd_query_indexable), appended to out (which is
//  reset first); false if the record has no such value or it is an object or array.
bool pd_qrec_index_key(pd_qrec_t *r, pd_str_t attr, pd_buf_t *out);

/*  Sort keys: the values a page is ordered by. The implicit last keys are $createdAt then $id
 *  (ascending), so every order is total. A key's strings are views into the record or the
 *  message it was unpacked from. */
typedef struct {
    int type;    //  0 null, 1 int (ms or integer), 2 string, 3 double
    int64_t i;
    double d;
    pd_str_t s;
} pd_qval_t;

typedef struct {
    pd_qval_t v[PD_QUERY_MAX_ORDER + 2];
    size_t n;
} pd_qkey_t;

void pd_query_key(const pd_query_t *self, pd_qrec_t *r, pd_qkey_t *out);
/*  Ordered walks. True if the page's first sort key (its first order, else $createdAt) is attr
 *  and attr's index holds every record in the order of that key ("status" and the dates, whose
 *  index keys sort as their sort keys do): records taken from the index in key order (*desc:
 *  from the last) come in page order, up to ties on that key, so a node may stop once a set of
 *  equal values completes offset + limit matches. */
bool pd_query_index_order(const pd_query_t *self, pd_str_t attr, bool *desc);
//  The index key of a sort key's first value (where a walk past a cursor starts).
bool pd_query_key_index_key(const pd_qkey_t *key, pd_buf_t *out);
#define PD_QUERY_TOTAL_CAP 5000 //  a list's total counts this many matches at most (Appwrite's)
//  <0, 0, >0 as a sorts before, with, after b under this query's order.
int pd_query_key_cmp(const pd_query_t *self, const pd_qkey_t *a, const pd_qkey_t *b);
/*  A sort key summed up for sorting many (pd_query_sum_cmp): its first two values, each as 2
 *  bits of type rank and 62 of value (a number's double, a string's first 7 bytes and length up
 *  to 7), order-preserving under this query's order (complemented for a descending one). A
 *  store node sorts thousands of keys per large page: summaries decide most comparisons without
 *  reading the strings a key points into (cache misses on record blocks). */
typedef struct {
    uint64_t w[2];
    uint8_t whole; //  bit i: w[i] holds value i whole (equal words mean equal values); bit 2: usable
} pd_qsum_t;

void pd_query_key_sum(const pd_query_t *self, const pd_qkey_t *key, pd_qsum_t *out);
//  <0 or >0 exactly as pd_query_key_cmp says for the keys summed up; 0 when it cannot tell.
int pd_query_sum_cmp(const pd_qsum_t *a, const pd_qsum_t *b);
//  Packs the key as one msgpack array; reads it back in place (views into the msgpack bytes),
//  moving r past it: 0, or -1 if the value at r is not a key (r then unchanged).
void pd_query_key_pack(const pd_qkey_t *key, msgpack_packer *pk);
int pd_query_key_read(pd_mpr_t *r, pd_qkey_t *out);

void pd_query_test(bool verbose);

#endif
