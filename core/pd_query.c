/*  pd_query — see pd_query.h.
 *
 *  A query set is parsed once into a small tree of nodes. Every string in the tree (attribute
 *  paths, string values, the cursor) is a view into the jansson documents the set keeps, so
 *  matching allocates nothing except a record's metadata, which is parsed lazily, at most once
 *  per pd_qrec_t, and only when a node names metadata.<path>.
 *
 *  Error messages copy what Appwrite's validators say, wrapped the way Appwrite wraps them:
 *  list mode prefixes "Invalid `queries` param: " (Utopia's param error), and a JSON or shape
 *  error reads "Invalid query: Invalid query: Syntax error" because utopia-php/database's
 *  Queries validator wraps the message of Query::parse, which already starts that way. */
#include "pd_query.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "pd_err.h"

//  Nodes in one query set, nested ones included: bounds parse and match cost (each node may
//  carry PD_QUERY_MAX_VALUES values).
#define S_MAX_NODES (4 * PD_QUERY_MAX)

enum {
    M_EQUAL = 1,
    M_NOT_EQUAL,
    M_LT,
    M_LTE,
    M_GT,
    M_GTE,
    M_IS_NULL,
    M_IS_NOT_NULL,
    M_BETWEEN,
    M_STARTS_WITH,
    M_ENDS_WITH,
    M_AND,
    M_OR,
    M_LIMIT,
    M_OFFSET,
    M_CURSOR_AFTER,
    M_CURSOR_BEFORE,
    M_ORDER_ASC,
    M_ORDER_DESC,
    M_SELECT,
    M_OTHER //  known to Appwrite's parser, served by neither mode here
};

//  Method flags: a filter (may sit inside and/or), allowed in list mode, in realtime mode.
enum { F_FILTER = 1, F_LIST = 2, F_RT = 4 };

static const struct {
    const char *name;
    int method;
    int flags;
} s_methods[] = {
    {"equal", M_EQUAL, F_FILTER | F_LIST | F_RT},
    {"notEqual", M_NOT_EQUAL, F_FILTER | F_LIST | F_RT},
    {"lessThan", M_LT, F_FILTER | F_LIST | F_RT},
    {"lessThanEqual", M_LTE, F_FILTER | F_LIST | F_RT},
    {"greaterThan", M_GT, F_FILTER | F_LIST | F_RT},
    {"greaterThanEqual", M_GTE, F_FILTER | F_LIST | F_RT},
    {"isNull", M_IS_NULL, F_FILTER | F_LIST | F_RT},
    {"isNotNull", M_IS_NOT_NULL, F_FILTER | F_LIST | F_RT},
    {"between", M_BETWEEN, F_FILTER | F_LIST},
    {"startsWith", M_STARTS_WITH, F_FILTER | F_LIST},
    {"endsWith", M_ENDS_WITH, F_FILTER | F_LIST},
    {"and", M_AND, F_FILTER | F_LIST | F_RT},
    {"or", M_OR, F_FILTER | F_LIST | F_RT},
    {"limit", M_LIMIT, F_LIST},
    {"offset", M_OFFSET, F_LIST},
    {"cursorAfter", M_CURSOR_AFTER, F_LIST},
    {"cursorBefore", M_CURSOR_BEFORE, F_LIST},
    {"orderAsc", M_ORDER_ASC, F_LIST},
    {"orderDesc", M_ORDER_DESC, F_LIST},
    {"select", M_SELECT, F_RT},
    {"notBetween", M_OTHER, 0},
    {"notStartsWith", M_OTHER, 0},
    {"notEndsWith", M_OTHER, 0},
    {"contains", M_OTHER, 0},
    {"containsAny", M_OTHER, 0},
    {"containsAll", M_OTHER, 0},
    {"notContains", M_OTHER, 0},
    {"search", M_OTHER, 0},
    {"notSearch", M_OTHER, 0},
    {"regex", M_OTHER, 0},
    {"exists", M_OTHER, 0},
    {"notExists", M_OTHER, 0},
    {"orderRandom", M_OTHER, 0},
    {"elemMatch", M_OTHER, 0},
    {"crosses", M_OTHER, 0},
    {"notCrosses", M_OTHER, 0},
    {"distanceEqual", M_OTHER, 0},
    {"distanceNotEqual", M_OTHER, 0},
    {"distanceGreaterThan", M_OTHER, 0},
    {"distanceLessThan", M_OTHER, 0},
    {"intersects", M_OTHER, 0},
    {"notIntersects", M_OTHER, 0},
    {"overlaps", M_OTHER, 0},
    {"notOverlaps", M_OTHER, 0},
    {"touches", M_OTHER, 0},
    {"notTouches", M_OTHER, 0},
    {"vectorDot", M_OTHER, 0},
    {"vectorCosine", M_OTHER, 0},
    {"vectorEuclidean", M_OTHER, 0},
};

//  As RuntimeQuery::ALLOWED_QUERIES lists them.
#define S_RT_ALLOWED                                                                               \
    "equal, notEqual, lessThan, lessThanEqual, greaterThan, greaterThanEqual, isNull, "            \
    "isNotNull, and, or, select"

enum { A_ID = 1, A_USER, A_STATUS, A_SOURCE, A_EXPIRES, A_CREATED, A_UPDATED, A_META };

//  A value while matching: a record's attribute or a query's operand.
enum { V_NULL, V_BOOL, V_INT, V_REAL, V_STR, V_JSON };
typedef struct {
    int type;        //  V_*
    bool b;          //  V_BOOL
    int64_t i;       //  V_INT (datetimes too, in ms)
    double d;        //  V_REAL
    pd_str_t s;      //  V_STR
    const json_t *j; //  V_JSON: an array or object, compared with json_equal
} val_t;

typedef struct node node_t;
struct node {
    int method;    //  M_*
    int attr;      //  A_*
    pd_str_t path; //  A_META: the dotted path after "metadata."
    val_t *vals;   //  operands
    size_t nv;     //  number of operands
    node_t *kids;  //  and/or: sub-queries
    size_t nkids;  //  number of sub-queries
};

typedef struct {
    int attr;      //  A_*
    pd_str_t path; //  A_META path
    bool desc;     //  orderDesc
} order_t;

struct pd_query {
    int mode;                          //  PD_QMODE_*
    json_t **roots;                    //  parsed query strings; every view points into them
    size_t nroots;                     //  number of roots
    node_t *filters;                   //  top-level filters, ANDed
    size_t nfilters;                   //  number of filters
    order_t order[PD_QUERY_MAX_ORDER]; //  explicit order, before ($createdAt, $id)
    size_t norder;                     //  number of explicit orders
    int64_t limit;                     //  page size, 25 unless limit()
    int64_t offset;                    //  rows to skip
    pd_str_t cursor;                   //  cursorAfter/cursorBefore value, or PD_STR_NULL
    bool before;                       //  cursor is cursorBefore
    bool has_limit;                    //  limit() seen
    bool has_offset;                   //  offset() seen
    int64_t max_offset;                //  PD_QUERY_MAX_OFFSET, or _DEEP (an API key's)
    bool match_all;                    //  realtime select("*"): every record matches
};

typedef struct {
    pd_query_t *self; //  the set being built
    int code;         //  error code, once s_fail ran
    char *err;        //  caller's message buffer, may be NULL
    size_t errlen;    //  its size
    size_t nodes;     //  nodes parsed so far
} parse_t;

static void *
s_alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort();
    return p;
}

static int s_fail(parse_t *p, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int
s_fail(parse_t *p, int code, const char *fmt, ...)
{
    p->code = code;
    if (!p->err || !p->errlen)
        return -1;
    size_t off = 0;
    if (p->self->mode == PD_QMODE_LIST) {
        int k = snprintf(p->err, p->errlen, "Invalid `queries` param: ");
        off = k < 0 ? 0 : (size_t)k < p->errlen ? (size_t)k : p->errlen - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + off, p->errlen - off, fmt, ap);
    va_end(ap);
    return -1;
}

//  PHP's gettype() of what json_decode(…, true) makes of j.
static const char *
s_gettype(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "double";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "NULL";
    default:
        return "array";
    }
}

//  Appwrite's messages capitalise the method: "NotEqual queries require ...".
static const char *
s_ucfirst(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s", name);
    if (buf[0] >= 'a' && buf[0] <= 'z')
        buf[0] = (char)(buf[0] - 'a' + 'A');
    return buf;
}

static pd_str_t
s_jstr(const json_t *j)
{
    return (pd_str_t){json_string_value(j), json_string_length(j)};
}

//  Resolves an attribute name. metadata.<path> needs a path with no empty segment.
static int
s_attr(pd_str_t a, int *attr, pd_str_t *path)
{
    static const struct {
        const char *name;
        int attr;
    } names[] = {{"$id", A_ID},
                 {"userId", A_USER},
                 {"status", A_STATUS},
                 {"source", A_SOURCE},
                 {"expiresAt", A_EXPIRES},
                 {"$createdAt", A_CREATED},
                 {"$updatedAt", A_UPDATED}};
    *path = PD_STR_NULL;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (pd_str_eqc(a, names[i].name)) {
            *attr = names[i].attr;
            return 0;
        }
    }
    if (a.len <= 9 || memcmp(a.ptr, "metadata.", 9) != 0)
        return -1;
    pd_str_t p = {a.ptr + 9, a.len - 9};
    if (p.ptr[0] == '.' || p.ptr[p.len - 1] == '.' || memmem(p.ptr, p.len, "..", 2))
        return -1;
    if (memchr(p.ptr, '\0', p.len))
        return -1;
    *attr = A_META;
    *path = p;
    return 0;
}

static bool
s_attr_is_date(int attr)
{
    return attr == A_EXPIRES || attr == A_CREATED || attr == A_UPDATED;
}

static void
s_val_from_json(const json_t *j, val_t *v)
{
    memset(v, 0, sizeof *v);
    switch (json_typeof(j)) {
    case JSON_STRING:
        v->type = V_STR;
        v->s = s_jstr(j);
        break;
    case JSON_INTEGER:
        v->type = V_INT;
        v->i = json_integer_value(j);
        break;
    case JSON_REAL:
        v->type = V_REAL;
        v->d = json_real_value(j);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->type = V_BOOL;
        v->b = json_is_true(j);
        break;
    case JSON_NULL:
        v->type = V_NULL;
        break;
    default:
        v->type = V_JSON;
        v->j = j;
        break;
    }
}

//  Reads an integer operand of limit/offset: 0, 1 if not a number, 2 if not an integer.
static int
s_int_operand(const json_t *j, int64_t *out)
{
    if (json_is_integer(j)) {
        *out = json_integer_value(j);
        return 0;
    }
    if (!json_is_real(j))
        return 1;
    double d = json_real_value(j);
    if (!(d >= -9.2e18 && d <= 9.2e18) || (double)(int64_t)d != d)
        return 2;
    *out = (int64_t)d;
    return 0;
}

static void
s_node_free(node_t *node)
{
    for (size_t i = 0; i < node->nkids; i++)
        s_node_free(&node->kids[i]);
    free(node->kids);
    free(node->vals);
    memset(node, 0, sizeof *node);
}

static int s_parse_node(parse_t *p, const json_t *j, int depth, const char *parent, node_t *node);

static int
s_parse_logical(parse_t *p, node_t *node, const char *mname, const json_t *values, int depth)
{
    char uc[32];
    s_ucfirst(mname, uc, sizeof uc);
    if (depth > PD_QUERY_MAX_DEPTH)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: %s queries can be nested at most %d levels deep", uc,
                      PD_QUERY_MAX_DEPTH);
    size_t n = json_array_size(values);
    if (n > PD_QUERY_MAX_VALUES)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: %s queries can hold at most %d queries", uc,
                      PD_QUERY_MAX_VALUES);
    node->kids = s_alloc(n, sizeof *node->kids);
    node->nkids = n;
    for (size_t i = 0; i < n; i++)
        if (s_parse_node(p, json_array_get(values, i), depth + 1, uc, &node->kids[i]) < 0)
            return -1;
    if (n < 2)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: %s queries require at least two queries", uc);
    return 0;
}

static int
s_parse_filter(parse_t *p, node_t *node, const char *mname, pd_str_t attr, const json_t *values)
{
    char uc[32];
    size_t n = json_array_size(values);
    s_ucfirst(mname, uc, sizeof uc);
    switch (node->method) {
    case M_EQUAL:
    case M_NOT_EQUAL:
        if (n == 0)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: %s queries require at least one value.", uc);
        break;
    case M_BETWEEN:
        if (n != 2)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: %s queries require exactly two values.", uc);
        break;
    case M_IS_NULL:
    case M_IS_NOT_NULL:
        break;
    default:
        if (n != 1)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: %s queries require exactly one value.", uc);
        break;
    }
    if (s_attr(attr, &node->attr, &node->path) < 0)
        return s_fail(p, PD_ERR_QUERY_INVALID, "Invalid query: Attribute not found in schema: %.*s",
                      (int)attr.len, attr.ptr);
    if (n > PD_QUERY_MAX_VALUES)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Query on attribute has greater than %d values: %.*s",
                      PD_QUERY_MAX_VALUES, (int)attr.len, attr.ptr);
    if (node->method == M_IS_NULL || node->method == M_IS_NOT_NULL)
        return 0; //  operands, if any, are ignored as Appwrite does
    bool date = s_attr_is_date(node->attr);
    if (date && (node->method == M_STARTS_WITH || node->method == M_ENDS_WITH))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Cannot query %s on attribute \"%.*s\" because it is not a "
                      "string.",
                      mname, (int)attr.len, attr.ptr);
    //  Top-level strings take string operands in list mode (Appwrite's Text validator). In
    //  realtime mode Appwrite does not check them: a number simply never equals a string.
    bool need_str = node->attr != A_META && !date && p->self->mode == PD_QMODE_LIST;
    node->vals = s_alloc(n, sizeof *node->vals);
    node->nv = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(values, i);
        val_t *v = &node->vals[i];
        s_val_from_json(j, v);
        if (date) {
            int64_t ms;
            if (v->type != V_STR || pd_time_parse(v->s.ptr, v->s.len, &ms) < 0)
                goto out_bad_value;
            v->type = V_INT;
            v->i = ms;
        } else if (need_str && v->type != V_STR) {
            goto out_bad_value;
        }
    }
    return 0;
out_bad_value:
    return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                  "Invalid query: Query value is invalid for attribute \"%.*s\"", (int)attr.len,
                  attr.ptr);
}

//  limit, offset, cursor*, order*, select: set the query set's paging and order.
static int
s_parse_paging(parse_t *p, int method, pd_str_t attr, const json_t *values)
{
    pd_query_t *self = p->self;
    size_t n = json_array_size(values);
    const json_t *v0 = json_array_get(values, 0);
    int64_t x = 0;
    int r;
    switch (method) {
    case M_LIMIT:
        if (self->has_limit)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Only one limit query is allowed");
        r = n == 1 ? s_int_operand(v0, &x) : 1;
        if (r == 1)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Invalid limit: Value must be a valid number");
        if (r == 2 || x < 1 || x > PD_QUERY_MAX_LIMIT)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Invalid limit: Value must be a valid range between 1 "
                          "and %d,%03d",
                          PD_QUERY_MAX_LIMIT / 1000, PD_QUERY_MAX_LIMIT % 1000);
        self->limit = x;
        self->has_limit = true;
        return 0;
    case M_OFFSET:
        if (self->has_offset)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Only one offset query is allowed");
        r = n == 1 ? s_int_operand(v0, &x) : 1;
        if (r == 1)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Invalid offset: Value must be a valid number");
        if (r == 2 || x < 0 || x > self->max_offset)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Invalid offset: Value must be a valid range between 0 "
                          "and %d,%03d",
                          (int)(self->max_offset / 1000), (int)(self->max_offset % 1000));
        self->offset = x;
        self->has_offset = true;
        return 0;
    case M_CURSOR_AFTER:
    case M_CURSOR_BEFORE:
        if (self->cursor.ptr)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Only one cursor query is allowed");
        if (n != 1 || !json_is_string(v0) || !pd_uid_valid(s_jstr(v0)))
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: Invalid cursor: UID must contain at most 36 chars. Valid "
                          "chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start "
                          "with a special char");
        self->cursor = s_jstr(v0);
        self->before = method == M_CURSOR_BEFORE;
        return 0;
    case M_ORDER_ASC:
    case M_ORDER_DESC: {
        if (self->norder >= PD_QUERY_MAX_ORDER)
            return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                          "Invalid query: At most %d order queries are allowed",
                          PD_QUERY_MAX_ORDER);
        order_t *o = &self->order[self->norder];
        //  An empty attribute orders by insertion in Appwrite ($sequence): $createdAt here.
        if (attr.len == 0) {
            o->attr = A_CREATED;
            o->path = PD_STR_NULL;
        } else if (s_attr(attr, &o->attr, &o->path) < 0) {
            return s_fail(p, PD_ERR_QUERY_INVALID,
                          "Invalid query: Attribute not found in schema: %.*s", (int)attr.len,
                          attr.ptr);
        } else if (o->attr == A_META) {
            //  A key's strings must be views into the record, and a metadata string lives
            //  only in the parsed metadata, which pd_qrec_clear frees.
            return s_fail(p, PD_ERR_QUERY_INVALID,
                          "Invalid query: Cannot order by a metadata attribute: %.*s",
                          (int)attr.len, attr.ptr);
        }
        o->desc = method == M_ORDER_DESC;
        self->norder++;
        return 0;
    }
    case M_SELECT:
        if (n != 1 || !json_is_string(v0) || !pd_str_eqc(s_jstr(v0), "*"))
            return s_fail(p, PD_ERR_QUERY_INVALID,
                          "Invalid query: Only select(\"*\") is allowed in Realtime queries. "
                          "select(\"*\") means \"listen to all events\".");
        self->match_all = true;
        return 0;
    }
    return s_fail(p, PD_ERR_SERVER_ERROR, "Invalid query: unhandled method");
}

static const json_t *
s_member(const json_t *j, const char *key)
{
    const json_t *m = json_is_object(j) ? json_object_get(j, key) : NULL;
    return json_is_null(m) ? NULL : m; //  PHP's `??` treats null as missing
}

/*  Parses one query object into node, checking it the way Appwrite does, in Appwrite's order:
 *  the JSON shape first (Query::parseQuery), then whether this mode serves the method
 *  (Queries validator, or Realtime::convertQueries), then the method's own rules (Filter,
 *  Limit, Offset, Cursor, Order validators). parent is the capitalised name of the enclosing
 *  and/or, or NULL at the top. depth counts and/or levels, so the recursion, like the JSON it
 *  walks, is at most PD_QUERY_MAX_DEPTH deep. Paging queries write into the set directly;
 *  filters fill node (the caller frees it, whether this succeeds or fails). */
static int
s_parse_node(parse_t *p, const json_t *j, int depth, const char *parent, node_t *node)
{
    if (++p->nodes > S_MAX_NODES)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: At most %d queries are allowed, nested ones included",
                      S_MAX_NODES);
    if (!json_is_object(j) && !json_is_array(j))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Invalid query. Must be an array, got %s", s_gettype(j));
    const json_t *jm = s_member(j, "method");
    const json_t *ja = s_member(j, "attribute");
    const json_t *jv = s_member(j, "values");
    if (jm && !json_is_string(jm))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Invalid query method. Must be a string, got %s",
                      s_gettype(jm));
    pd_str_t m = jm ? s_jstr(jm) : PD_STR("");
    size_t k = 0;
    while (k < sizeof s_methods / sizeof *s_methods && !pd_str_eqc(m, s_methods[k].name))
        k++;
    if (k == sizeof s_methods / sizeof *s_methods)
        return s_fail(p, PD_ERR_ARGUMENT_INVALID, "Invalid query: Invalid query method: %.*s",
                      (int)m.len, m.ptr);
    if (ja && !json_is_string(ja))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Invalid query attribute. Must be a string, got %s",
                      s_gettype(ja));
    if (jv && !json_is_array(jv))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: Invalid query values. Must be an array, got %s",
                      json_is_object(jv) ? "object" : s_gettype(jv));
    const char *mname = s_methods[k].name;
    int flags = s_methods[k].flags;
    if (p->self->mode == PD_QMODE_REALTIME && !(flags & F_RT))
        return s_fail(p, PD_ERR_QUERY_INVALID,
                      "Invalid query: Query method '%s' is not supported in Realtime queries. "
                      "Allowed query methods are: " S_RT_ALLOWED,
                      mname);
    if (p->self->mode == PD_QMODE_LIST && !(flags & F_LIST))
        return s_fail(p, PD_ERR_QUERY_INVALID, "Invalid query method: %s", mname);
    if (parent && !(flags & F_FILTER))
        return s_fail(p, PD_ERR_ARGUMENT_INVALID,
                      "Invalid query: %s queries can only contain filter queries", parent);
    pd_str_t attr = ja ? s_jstr(ja) : PD_STR("");
    node->method = s_methods[k].method;
    if (node->method == M_AND || node->method == M_OR)
        return s_parse_logical(p, node, mname, jv, depth);
    if (flags & F_FILTER)
        return s_parse_filter(p, node, mname, attr, jv);
    return s_parse_paging(p, node->method, attr, jv);
}

pd_query_t *
pd_query_parse(const pd_str_t *qs, size_t n, int mode, int *code, char *err, size_t errlen)
{
    int64_t max_offset = mode & PD_QMODE_DEEP ? PD_QUERY_MAX_OFFSET_DEEP : PD_QUERY_MAX_OFFSET;
    mode &= ~PD_QMODE_DEEP;
    assert(mode == PD_QMODE_LIST || mode == PD_QMODE_REALTIME);
    assert(qs || n == 0);
    pd_query_t *self = s_alloc(1, sizeof *self);
    self->mode = mode;
    self->max_offset = max_offset;
    self->limit = 25;
    parse_t p = {self, PD_ERR_OK, err, errlen, 0};
    if (err && errlen)
        err[0] = '\0';
    if (n > PD_QUERY_MAX) {
        s_fail(&p, PD_ERR_ARGUMENT_INVALID, "Invalid queries");
        goto out_fail;
    }
    self->roots = s_alloc(n, sizeof *self->roots);
    self->filters = s_alloc(n, sizeof *self->filters);
    for (size_t i = 0; i < n; i++) {
        json_error_t jerr;
        json_t *root = NULL;
        if (qs[i].ptr)
            root = json_loadb(qs[i].ptr, qs[i].len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!root) {
            s_fail(&p, PD_ERR_ARGUMENT_INVALID, "Invalid query: Invalid query: Syntax error");
            goto out_fail;
        }
        self->roots[self->nroots++] = root;
        node_t *node = &self->filters[self->nfilters];
        if (s_parse_node(&p, root, 1, NULL, node) < 0) {
            s_node_free(node);
            goto out_fail;
        }
        if (node->method >= M_EQUAL && node->method <= M_OR)
            self->nfilters++; //  a filter; paging and select wrote into self instead
        else
            s_node_free(node);
    }
    if (code)
        *code = PD_ERR_OK;
    return self;
out_fail:
    if (code)
        *code = p.code;
    pd_query_destroy(&self);
    return NULL;
}

pd_query_t *
pd_query_parse_packed(pd_str_t packed, int mode, int *code, char *err, size_t errlen)
{
    pd_str_t qs[PD_QUERY_MAX];
    size_t nq = 0;
    for (pd_str_t q = pd_list_first(packed); q.ptr; q = pd_list_next(packed, q)) {
        if (nq == PD_QUERY_MAX) {
            *code = PD_ERR_ARGUMENT_INVALID;
            snprintf(err, errlen, "Invalid `queries` param: Value must be an array of no more "
                                  "than %d items", PD_QUERY_MAX);
            return NULL;
        }
        qs[nq++] = q;
    }
    return pd_query_parse(qs, nq, mode, code, err, errlen);
}

void
pd_query_destroy(pd_query_t **self_p)
{
    assert(self_p);
    pd_query_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->nfilters; i++)
        s_node_free(&self->filters[i]);
    free(self->filters);
    for (size_t i = 0; i < self->nroots; i++)
        json_decref(self->roots[i]);
    free(self->roots);
    free(self);
    *self_p = NULL;
}

int64_t
pd_query_limit(const pd_query_t *self)
{
    return self->limit;
}

int64_t
pd_query_offset(const pd_query_t *self)
{
    return self->offset;
}

pd_str_t
pd_query_cursor(const pd_query_t *self, bool *before)
{
    if (before)
        *before = self->before;
    return self->cursor;
}

bool
pd_query_equal_on(const pd_query_t *self, const char *attr, pd_str_t *value)
{
    int a;
    pd_str_t path;
    if (self->match_all || s_attr(pd_str(attr), &a, &path) < 0)
        return false;
    if (a != A_ID && a != A_USER && a != A_STATUS && a != A_SOURCE)
        return false;
    for (size_t i = 0; i < self->nfilters; i++) {
        const node_t *f = &self->filters[i];
        if (f->method == M_EQUAL && f->attr == a && f->nv == 1 && f->vals[0].type == V_STR) {
            *value = f->vals[0].s;
            return true;
        }
    }
    return false;
}

void
pd_qrec_init(pd_qrec_t *r, const pd_record_t *rec)
{
    r->rec = rec;
    r->meta = NULL;
    r->meta_tried = false;
}

void
pd_qrec_clear(pd_qrec_t *r)
{
    json_decref((json_t *)r->meta);
    r->meta = NULL;
    r->meta_tried = false;
}

//  Walks a dotted path into the record's metadata, parsing it on first use. NULL if absent
//  (or if the metadata is not a JSON object).
static const json_t *
s_meta_get(pd_qrec_t *r, pd_str_t path)
{
    if (!r->meta_tried) {
        r->meta_tried = true;
        pd_str_t mj = r->rec->meta_json;
        json_t *m = mj.ptr && mj.len ? json_loadb(mj.ptr, mj.len, JSON_ALLOW_NUL, NULL) : NULL;
        if (m && !json_is_object(m)) {
            json_decref(m);
            m = NULL;
        }
        r->meta = m;
    }
    const json_t *j = r->meta;
    const char *p = path.ptr, *end = path.ptr + path.len;
    while (j) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t len = dot ? (size_t)(dot - p) : (size_t)(end - p);
        if (!json_is_object(j))
            return NULL;
        j = json_object_getn(j, p, len);
        if (!dot)
            break;
        p = dot + 1;
    }
    return j;
}

static bool
s_status_null(const pd_record_t *rec)
{
    return rec->status.len == 0 &&
           (rec->status_json.len == 0 || pd_str_eqc(rec->status_json, "null"));
}

static bool
s_str_val(val_t *v, pd_str_t s)
{
    v->type = V_STR;
    v->s = s;
    return true;
}

static bool
s_int_val(val_t *v, int64_t i)
{
    v->type = V_INT;
    v->i = i;
    return true;
}

//  The record's value of attr; false if absent (only a metadata path can be).
static bool
s_rec_val(pd_qrec_t *r, int attr, pd_str_t path, val_t *v)
{
    const pd_record_t *rec = r->rec;
    memset(v, 0, sizeof *v);
    switch (attr) {
    case A_ID:
        return s_str_val(v, rec->id);
    case A_USER:
        return s_str_val(v, rec->user_id);
    case A_STATUS:
        return s_status_null(rec) || s_str_val(v, rec->status);
    case A_SOURCE:
        return s_str_val(v, rec->source);
    case A_EXPIRES:
        return s_int_val(v, rec->expires_ms);
    case A_CREATED:
        return s_int_val(v, rec->created_ms);
    case A_UPDATED:
        return s_int_val(v, rec->updated_ms);
    case A_META: {
        const json_t *j = s_meta_get(r, path);
        if (!j)
            return false;
        s_val_from_json(j, v);
        return true;
    }
    }
    return false;
}

/*  Compares an integer with a double exactly (no rounding of large integers through double):
 *  the double's integral part is compared as an integer, then its fraction breaks the tie.
 *  NaN sorts after every number. */
static int
s_cmp_int_dbl(int64_t i, double d)
{
    if (isnan(d) || d >= 9223372036854775808.0)
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    int64_t t = (int64_t)d; //  truncates toward zero; exact in this range
    if (i != t)
        return i < t ? -1 : 1;
    double frac = d - (double)t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

static int
s_cmp_dbl(double a, double b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) - isnan(b);
    return a < b ? -1 : a > b ? 1 : 0;
}

static bool
s_is_num(const val_t *v)
{
    return v->type == V_INT || v->type == V_REAL;
}

static int
s_cmp_num(const val_t *a, const val_t *b)
{
    if (a->type == V_INT && b->type == V_INT)
        return a->i < b->i ? -1 : a->i > b->i;
    if (a->type == V_INT)
        return s_cmp_int_dbl(a->i, b->d);
    if (b->type == V_INT)
        return -s_cmp_int_dbl(b->i, a->d);
    return s_cmp_dbl(a->d, b->d);
}

//  PHP's === with one exception: an int equals a double of the same value.
static bool
s_eq(const val_t *a, const val_t *b)
{
    if (s_is_num(a) && s_is_num(b))
        return s_cmp_num(a, b) == 0;
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case V_NULL:
        return true;
    case V_BOOL:
        return a->b == b->b;
    case V_STR:
        return pd_str_eq(a->s, b->s);
    case V_JSON:
        return json_equal(a->j, b->j);
    }
    return false;
}

//  Orders two values of comparable types (numbers, strings, booleans); false otherwise, so
//  "1" < 2 and null < 1 never match, unlike PHP's loose comparison.
static bool
s_order(const val_t *a, const val_t *b, int *c)
{
    if (s_is_num(a) && s_is_num(b)) {
        *c = s_cmp_num(a, b);
        return true;
    }
    if (a->type != b->type)
        return false;
    if (a->type == V_STR) {
        *c = pd_str_cmp(a->s, b->s);
        return true;
    }
    if (a->type == V_BOOL) {
        *c = (int)a->b - (int)b->b;
        return true;
    }
    return false;
}

static bool
s_affix(const val_t *x, const val_t *v, bool suffix)
{
    if (x->type != V_STR || v->type != V_STR || v->s.len > x->s.len)
        return false;
    const char *at = x->s.ptr + (suffix ? x->s.len - v->s.len : 0);
    return v->s.len == 0 || memcmp(at, v->s.ptr, v->s.len) == 0;
}

/*  Evaluates one node against a record, as Appwrite's RuntimeQuery::filter does: a referenced
 *  metadata key that is absent means no match, for notEqual too; isNull holds for an absent
 *  or null value; equal and notEqual test every operand (any / none); comparisons hold if any
 *  operand satisfies them. Types are strict, so a comparison across types is false. */
static bool
s_match_node(const node_t *node, pd_qrec_t *r)
{
    if (node->method == M_AND || node->method == M_OR) {
        bool any = node->method == M_OR;
        for (size_t i = 0; i < node->nkids; i++)
            if (s_match_node(&node->kids[i], r) == any)
                return any;
        return !any;
    }
    val_t x;
    bool present = s_rec_val(r, node->attr, node->path, &x);
    if (node->method == M_IS_NULL)
        return !present || x.type == V_NULL;
    if (node->method == M_IS_NOT_NULL)
        return present && x.type != V_NULL;
    if (!present)
        return false;
    int c, c2;
    switch (node->method) {
    case M_EQUAL:
    case M_NOT_EQUAL: {
        bool hit = false;
        for (size_t i = 0; i < node->nv && !hit; i++)
            hit = s_eq(&x, &node->vals[i]);
        return node->method == M_EQUAL ? hit : !hit;
    }
    case M_LT:
    case M_LTE:
    case M_GT:
    case M_GTE:
        for (size_t i = 0; i < node->nv; i++) {
            if (!s_order(&x, &node->vals[i], &c))
                continue;
            if ((node->method == M_LT && c < 0) || (node->method == M_LTE && c <= 0) ||
                (node->method == M_GT && c > 0) || (node->method == M_GTE && c >= 0))
                return true;
        }
        return false;
    case M_BETWEEN:
        return node->nv == 2 && s_order(&x, &node->vals[0], &c) && c >= 0 &&
               s_order(&x, &node->vals[1], &c2) && c2 <= 0;
    case M_STARTS_WITH:
    case M_ENDS_WITH:
        return node->nv == 1 && s_affix(&x, &node->vals[0], node->method == M_ENDS_WITH);
    }
    return false;
}

bool
pd_query_match(const pd_query_t *self, pd_qrec_t *r)
{
    if (self->match_all)
        return true;
    for (size_t i = 0; i < self->nfilters; i++)
        if (!s_match_node(&self->filters[i], r))
            return false;
    return true;
}

size_t
pd_query_nfilters(const pd_query_t *self)
{
    return self->match_all ? 0 : self->nfilters;
}

static bool
s_node_reads_meta(const node_t *n)
{
    if (n->attr == A_META)
        return true;
    for (size_t i = 0; i < n->nkids; i++)
        if (s_node_reads_meta(&n->kids[i]))
            return true;
    return false;
}

bool
pd_query_reads_meta(const pd_query_t *self)
{
    for (size_t i = 0; i < self->norder; i++)
        if (self->order[i].attr == A_META)
            return true;
    for (size_t i = 0; !self->match_all && i < self->nfilters; i++)
        if (s_node_reads_meta(&self->filters[i]))
            return true;
    return false;
}

size_t
pd_query_norder(const pd_query_t *self)
{
    return self->norder;
}

bool
pd_query_paged(const pd_query_t *self)
{
    return self->has_limit || self->has_offset || self->cursor.ptr || self->norder;
}

//  Appends v's index key to out; false for an object or array (no key).
static bool
s_val_key(const val_t *v, pd_buf_t *out)
{
    char tmp[32];
    switch (v->type) {
    case V_NULL:
        pd_buf_add(out, "n", 1);
        return true;
    case V_BOOL:
        pd_buf_add(out, v->b ? "b1" : "b0", 2);
        return true;
    case V_INT:
        pd_buf_add(out, tmp, (size_t)snprintf(tmp, sizeof tmp, "i%lld", (long long)v->i));
        return true;
    case V_REAL:
        /* An integral double equals the int of its value: the same key. */
        if (v->d == v->d && v->d >= -9223372036854775808.0 && v->d < 9223372036854775808.0 &&
            (double)(int64_t)v->d == v->d) {
            pd_buf_add(out, tmp, (size_t)snprintf(tmp, sizeof tmp, "i%lld", (long long)(int64_t)v->d));
            return true;
        }
        tmp[0] = 'd';
        memcpy(tmp + 1, &v->d, sizeof v->d);
        pd_buf_add(out, tmp, 1 + sizeof v->d);
        return true;
    case V_STR:
        pd_buf_add(out, "s", 1);
        pd_buf_add(out, v->s.ptr, v->s.len);
        return true;
    }
    return false;
}

//  Attributes an index can serve: status, the dates, metadata paths.
static bool
s_attr_indexable(int a)
{
    return a == A_STATUS || a == A_META || s_attr_is_date(a);
}

bool
pd_query_indexable(pd_str_t attr)
{
    int a;
    pd_str_t path;
    return s_attr(attr, &a, &path) == 0 && s_attr_indexable(a);
}

/*  The next top-level filter from *i on attr, an attribute an index can serve; NULL when none
 *  is left, or when attr cannot be indexed. */
static const node_t *
s_index_filter(const pd_query_t *self, pd_str_t attr, size_t *i)
{
    int a;
    pd_str_t path;
    if (self->match_all || s_attr(attr, &a, &path) < 0 || !s_attr_indexable(a))
        return NULL;
    for (; *i < self->nfilters; (*i)++) {
        const node_t *f = &self->filters[*i];
        if (f->attr == a && (a != A_META || pd_str_eq(f->path, path)))
            return f;
    }
    return NULL;
}

//  The filter whose values pd_query_index_keys reads: the first top-level equal() on attr.
static const node_t *
s_index_equal(const pd_query_t *self, pd_str_t attr)
{
    const node_t *f;
    for (size_t i = 0; (f = s_index_filter(self, attr, &i)); i++)
        if (f->method == M_EQUAL && f->nv)
            return f;
    return NULL;
}

int
pd_query_index_keys(const pd_query_t *self, pd_str_t attr, pd_buf_t *out)
{
    const node_t *f = s_index_equal(self, attr);
    if (!f)
        return -1;
    size_t mark = out->len;
    int n = 0;
    for (size_t k = 0; k < f->nv; k++) {
        size_t at = out->len;
        uint32_t len = 0;
        pd_buf_add(out, &len, sizeof len);
        if (!s_val_key(&f->vals[k], out)) {
            out->len = mark;
            return -1;
        }
        len = (uint32_t)(out->len - at - sizeof len);
        memcpy(out->data + at, &len, sizeof len);
        /* drop a value given twice: its records would be visited twice */
        bool dup = false;
        pd_buf_t before = {out->data + mark, at - mark, 0};
        size_t p = 0;
        for (pd_str_t k; !dup && pd_query_index_key_next(&before, &p, &k);)
            dup = k.len == len && memcmp(k.ptr, out->data + at + sizeof len, len) == 0;
        if (dup)
            out->len = at;
        else
            n++;
    }
    return n;
}

bool
pd_query_match_but(const pd_query_t *self, pd_qrec_t *r, pd_str_t attr)
{
    if (self->match_all)
        return true;
    const node_t *skip = s_index_equal(self, attr);
    for (size_t i = 0; i < self->nfilters; i++)
        if (&self->filters[i] != skip && !s_match_node(&self->filters[i], r))
            return false;
    return true;
}

bool
pd_query_index_key_next(const pd_buf_t *keys, size_t *off, pd_str_t *key)
{
    uint32_t len;
    if (*off + sizeof len > keys->len)
        return false;
    memcpy(&len, keys->data + *off, sizeof len);
    if (len > keys->len - *off - sizeof len)
        return false;
    *key = (pd_str_t){keys->data + *off + sizeof len, len};
    *off += sizeof len + len;
    return true;
}

//  The value an index key stands for (s_val_key, read back); its type's rank in key order.
static int
s_key_val(pd_str_t k, val_t *v)
{
    memset(v, 0, sizeof *v);
    if (!k.len)
        return -1;
    switch (k.ptr[0]) {
    case 'n':
        v->type = V_NULL;
        return 0;
    case 'b':
        v->type = V_BOOL;
        v->b = k.len > 1 && k.ptr[1] == '1';
        return 1;
    case 'i': {
        char tmp[32];
        size_t n = k.len - 1 < sizeof tmp - 1 ? k.len - 1 : sizeof tmp - 1;
        memcpy(tmp, k.ptr + 1, n);
        tmp[n] = 0;
        v->type = V_INT;
        v->i = strtoll(tmp, NULL, 10);
        return 2;
    }
    case 'd':
        v->type = V_REAL;
        if (k.len == 1 + sizeof v->d)
            memcpy(&v->d, k.ptr + 1, sizeof v->d);
        return 2;
    case 's':
        v->type = V_STR;
        v->s = (pd_str_t){k.ptr + 1, k.len - 1};
        return 3;
    }
    return -1;
}

int
pd_query_index_key_cmp(pd_str_t a, pd_str_t b)
{
    val_t va, vb;
    int ra = s_key_val(a, &va), rb = s_key_val(b, &vb), c = 0;
    if (ra != rb)
        return ra < rb ? -1 : 1;
    if (!s_order(&va, &vb, &c)) /* nulls (or two malformed keys): by their bytes */
        return pd_str_cmp(a, b);
    return c;
}

//  A range's operand: its rank in key order, or -1 if the index cannot narrow by it.
static int
s_range_rank(const val_t *v)
{
    return v->type == V_BOOL ? 1 : s_is_num(v) ? 2 : v->type == V_STR ? 3 : -1;
}

int
pd_query_index_range(const pd_query_t *self, pd_str_t attr, pd_buf_t *lo)
{
    const node_t *f;
    for (size_t i = 0; (f = s_index_filter(self, attr, &i)); i++) {
        pd_buf_reset(lo);
        int rank = f->nv ? s_range_rank(&f->vals[0]) : -1;
        switch (f->method) {
        case M_GT:
        case M_GTE:
            if (f->nv != 1 || rank < 0 || !s_val_key(&f->vals[0], lo))
                continue;
            return (int)i;
        case M_LT:
        case M_LTE: /* from the first value of the operand's type */
            if (f->nv != 1 || rank < 0)
                continue;
            if (rank == 1)
                pd_buf_add(lo, "b0", 2);
            else if (rank == 3)
                pd_buf_add(lo, "s", 1);
            else {
                val_t min = {.type = V_REAL, .d = -INFINITY};
                s_val_key(&min, lo);
            }
            return (int)i;
        case M_BETWEEN:
            if (f->nv != 2 || rank < 0 || s_range_rank(&f->vals[1]) != rank ||
                !s_val_key(&f->vals[0], lo))
                continue;
            return (int)i;
        case M_STARTS_WITH:
            if (f->nv != 1 || rank != 3 || !s_val_key(&f->vals[0], lo))
                continue;
            return (int)i;
        }
    }
    return -1;
}

int
pd_query_index_range_pos(const pd_query_t *self, int filter, pd_str_t key)
{
    if (filter < 0 || (size_t)filter >= self->nfilters)
        return 1;
    const node_t *f = &self->filters[filter];
    val_t v;
    int rank = s_key_val(key, &v), want = s_range_rank(&f->vals[0]), c = 0, c2 = 0;
    if (rank != want)
        return rank < want ? -1 : 1;
    switch (f->method) {
    case M_GT:
        return s_order(&v, &f->vals[0], &c) && c > 0 ? 0 : -1;
    case M_GTE:
        return s_order(&v, &f->vals[0], &c) && c >= 0 ? 0 : -1;
    case M_LT:
        return s_order(&v, &f->vals[0], &c) && c < 0 ? 0 : 1;
    case M_LTE:
        return s_order(&v, &f->vals[0], &c) && c <= 0 ? 0 : 1;
    case M_BETWEEN:
        if (!s_order(&v, &f->vals[0], &c) || c < 0)
            return -1;
        return s_order(&v, &f->vals[1], &c2) && c2 <= 0 ? 0 : 1;
    case M_STARTS_WITH:
        if (s_affix(&v, &f->vals[0], false))
            return 0;
        return pd_str_cmp(v.s, f->vals[0].s) < 0 ? -1 : 1;
    }
    return 1;
}

bool
pd_qrec_index_key(pd_qrec_t *r, pd_str_t attr, pd_buf_t *out)
{
    int a;
    pd_str_t path;
    val_t v;
    pd_buf_reset(out);
    if (s_attr(attr, &a, &path) < 0 || !s_attr_indexable(a) || !s_rec_val(r, a, path, &v))
        return false;
    return s_val_key(&v, out);
}

bool
pd_query_index_order(const pd_query_t *self, pd_str_t attr, bool *desc)
{
    int a;
    pd_str_t path;
    if (self->match_all || s_attr(attr, &a, &path) < 0 ||
        (a != A_STATUS && !s_attr_is_date(a))) /* every record has a value: none is left out */
        return false;
    int first = self->norder ? self->order[0].attr : A_CREATED;
    *desc = self->norder && self->order[0].desc;
    return first == a;
}

bool
pd_query_key_index_key(const pd_qkey_t *key, pd_buf_t *out)
{
    pd_buf_reset(out);
    if (!key->n)
        return false;
    const pd_qval_t *q = &key->v[0];
    val_t v = {.type = q->type == 1 ? V_INT : q->type == 2 ? V_STR : q->type == 3 ? V_REAL : V_NULL,
               .i = q->i, .d = q->d, .s = q->s};
    return s_val_key(&v, out);
}

static pd_qval_t
s_qval(int type)
{
    return (pd_qval_t){type, 0, 0, PD_STR_NULL};
}

void
pd_query_key(const pd_query_t *self, pd_qrec_t *r, pd_qkey_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < self->norder; i++) {
        pd_qval_t *q = &out->v[n++];
        val_t v;
        *q = s_qval(0);
        s_rec_val(r, self->order[i].attr, self->order[i].path, &v); //  never metadata
        if (v.type == V_INT) {
            q->type = 1;
            q->i = v.i;
        } else if (v.type == V_STR) {
            q->type = 2;
            q->s = v.s;
        }
    }
    out->v[n] = s_qval(1);
    out->v[n++].i = r->rec->created_ms;
    out->v[n] = s_qval(2);
    out->v[n++].s = r->rec->id;
    out->n = n;
}

/*  The total order of sort-key values: null first, then numbers (ints and doubles compared
 *  exactly with each other, NaN after every other number), then strings in byte order; an
 *  unknown type tag (a caller's bug) sorts last, by tag. It depends only on (type, value), and
 *  pack/unpack keep both, which is what lets the broker merge pages from several store nodes:
 *  an unpacked key compares exactly as the record's own key does. */
static int
s_qval_cmp(const pd_qval_t *a, const pd_qval_t *b)
{
    static const int rank[] = {0, 1, 2, 1};
    int ra = a->type >= 0 && a->type <= 3 ? rank[a->type] : 3 + a->type;
    int rb = b->type >= 0 && b->type <= 3 ? rank[b->type] : 3 + b->type;
    if (ra != rb)
        return ra < rb ? -1 : 1;
    if (ra == 1) {
        val_t x = {.type = a->type == 1 ? V_INT : V_REAL, .i = a->i, .d = a->d};
        val_t y = {.type = b->type == 1 ? V_INT : V_REAL, .i = b->i, .d = b->d};
        return s_cmp_num(&x, &y);
    }
    if (ra == 2)
        return pd_str_cmp(a->s, b->s);
    return 0;
}

int
pd_query_key_cmp(const pd_query_t *self, const pd_qkey_t *a, const pd_qkey_t *b)
{
    size_t n = a->n < b->n ? a->n : b->n;
    size_t norder = self ? self->norder : 0;
    for (size_t i = 0; i < n; i++) {
        int c = s_qval_cmp(&a->v[i], &b->v[i]);
        if (c)
            return i < norder && self->order[i].desc ? -c : c;
    }
    return a->n < b->n ? -1 : a->n > b->n;
}

/*  One value's word for pd_qsum_t: the rank of s_qval_cmp (null, number, string, other) in the
 *  top 2 bits, then 62 bits that never decrease as the value grows within its rank. Numbers:
 *  the double's bits made unsigned-ordered (negative ones complemented, NaN made the one
 *  positive NaN and -0 made +0, as s_cmp_num ranks them), less their 2 lowest bits; an int
 *  rounds to its double, so ints and doubles interleave as they compare. Whole when nothing was
 *  dropped: an int of at most 53 bits, a double whose 2 dropped bits are 0. Strings: the first
 *  7 bytes (zeros past the end), then the length up to 7; whole up to 7 bytes. */
static uint64_t
s_qval_word(const pd_qval_t *v, bool *whole)
{
    *whole = false;
    if (v->type == 0) {
        *whole = true;
        return 0;
    }
    if (v->type == 1 || v->type == 3) {
        double d = v->type == 1 ? (double)v->i : v->d;
        if (isnan(d))
            d = NAN;
        if (d == 0)
            d = 0.0;
        uint64_t b;
        memcpy(&b, &d, sizeof b);
        b = (b >> 63) ? ~b : b | (1ULL << 63);
        *whole = (b & 3) == 0 && (v->type == 3 || (v->i > -(1LL << 53) && v->i < (1LL << 53)));
        return (1ULL << 62) | (b >> 2);
    }
    if (v->type == 2) {
        uint64_t x = 0;
        size_t n = v->s.len < 7 ? v->s.len : 7;
        for (size_t i = 0; i < n; i++)
            x |= (uint64_t)(unsigned char)v->s.ptr[i] << (8 * (6 - i) + 6);
        *whole = v->s.len <= 7;
        return (2ULL << 62) | x | n;
    }
    return 3ULL << 62; /* an unknown tag: s_qval_cmp ranks it last, the summary cannot tell */
}

void
pd_query_key_sum(const pd_query_t *self, const pd_qkey_t *key, pd_qsum_t *out)
{
    *out = (pd_qsum_t){{0, 0}, 0};
    if (key->n < 2)
        return; /* not usable: a key this short is no record's */
    out->whole = 4;
    for (size_t i = 0; i < 2; i++) {
        bool whole;
        out->w[i] = s_qval_word(&key->v[i], &whole);
        if (self && i < self->norder && self->order[i].desc)
            out->w[i] = ~out->w[i];
        out->whole |= (uint8_t)(whole << i);
    }
}

int
pd_query_sum_cmp(const pd_qsum_t *a, const pd_qsum_t *b)
{
    if (!(a->whole & b->whole & 4))
        return 0;
    if (a->w[0] != b->w[0])
        return a->w[0] < b->w[0] ? -1 : 1;
    if (!(a->whole & b->whole & 1) || a->w[1] == b->w[1])
        return 0; /* first values maybe unequal, or second ones maybe equal */
    return a->w[1] < b->w[1] ? -1 : 1;
}

void
pd_query_key_pack(const pd_qkey_t *key, msgpack_packer *pk)
{
    msgpack_pack_array(pk, key->n);
    for (size_t i = 0; i < key->n; i++) {
        const pd_qval_t *v = &key->v[i];
        switch (v->type) {
        case 1:
            msgpack_pack_int64(pk, v->i);
            break;
        case 2:
            msgpack_pack_str_with_body(pk, v->s.len ? v->s.ptr : "", v->s.len);
            break;
        case 3:
            msgpack_pack_double(pk, v->d);
            break;
        default:
            msgpack_pack_nil(pk);
            break;
        }
    }
}

int
pd_query_key_read(pd_mpr_t *r, pd_qkey_t *out)
{
    pd_mpr_t at = *r;
    uint32_t n;
    out->n = 0;
    if (!pd_mpr_array(&at, &n) || n > PD_QUERY_MAX_ORDER + 2)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        pd_qval_t *v = &out->v[i];
        *v = s_qval(0);
        bool ok;
        switch (pd_mpr_type(&at)) {
        case PD_MPR_NIL:
            ok = pd_mpr_nil(&at);
            break;
        case PD_MPR_INT:
            v->type = 1;
            ok = pd_mpr_int(&at, &v->i); /* not a uint64 above INT64_MAX */
            break;
        case PD_MPR_FLOAT:
            v->type = 3;
            ok = pd_mpr_float(&at, &v->d);
            break;
        case PD_MPR_STR:
            v->type = 2;
            ok = pd_mpr_str(&at, &v->s);
            break;
        default:
            ok = false;
        }
        if (!ok)
            return -1;
    }
    out->n = n;
    *r = at;
    return 0;
}

//  --------------------------------------------------------------------------------------------
//  Self test

//  Parses the '\n'-separated queries of text. Returns the set, or NULL with code and err set.
static pd_query_t *
s_t_parse(int mode, const char *text, int *code, char *err, size_t errlen)
{
    pd_str_t qs[PD_QUERY_MAX + 8];
    size_t n = 0;
    for (const char *p = text; *p && n < sizeof qs / sizeof *qs;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        qs[n++] = (pd_str_t){p, len};
        p += len + (nl ? 1 : 0);
    }
    return pd_query_parse(qs, n, mode, code, err, errlen);
}

static bool
s_t_match(const pd_record_t *rec, int mode, const char *text)
{
    char err[512];
    int code = -1;
    pd_query_t *q = s_t_parse(mode, text, &code, err, sizeof err);
    if (!q) {
        fprintf(stderr, "unexpected parse error %d for %s: %s\n", code, text, err);
        PD_CHECK(false);
    }
    PD_CHECK(code == PD_ERR_OK);
    pd_qrec_t r;
    pd_qrec_init(&r, rec);
    bool ok = pd_query_match(q, &r);
    pd_qrec_clear(&r);
    pd_query_destroy(&q);
    PD_CHECK(q == NULL);
    return ok;
}

//  Both modes must agree (for queries valid in both).
static bool
s_t_both(const pd_record_t *rec, const char *text)
{
    bool a = s_t_match(rec, PD_QMODE_LIST, text);
    bool b = s_t_match(rec, PD_QMODE_REALTIME, text);
    PD_CHECK(a == b);
    return a;
}

static void
s_t_err(int mode, const char *text, int want_code, const char *want)
{
    char err[512];
    int code = -1;
    pd_query_t *q = s_t_parse(mode, text, &code, err, sizeof err);
    if (q || code != want_code || strcmp(err, want) != 0) {
        fprintf(stderr, "query %s\n  got  %d %s\n  want %d %s\n", text, code, q ? "(parsed)" : err,
                want_code, want);
        PD_CHECK(false);
    }
}

#define LP "Invalid `queries` param: "

//  levels of alternating and/or, each holding a leaf and the next level. Returns b->data.
static const char *
s_t_nest(pd_buf_t *b, int levels)
{
    const char *leaf = "{\"method\":\"isNotNull\",\"attribute\":\"status\"}";
    pd_buf_reset(b);
    for (int lv = 0; lv < levels; lv++)
        pd_buf_addf(b, "{\"method\":\"%s\",\"values\":[%s,", lv % 2 ? "or" : "and", leaf);
    pd_buf_adds(b, leaf);
    for (int lv = 0; lv < levels; lv++)
        pd_buf_adds(b, "]}");
    pd_buf_add(b, "", 1);
    return b->data;
}

static void
s_t_key(const pd_query_t *q, const pd_record_t *rec, pd_qkey_t *k)
{
    pd_qrec_t r;
    pd_qrec_init(&r, rec);
    pd_query_key(q, &r, k);
    pd_qrec_clear(&r);
}

//  cmp(a, b) must equal cmp(read(pack(a)), read(pack(b))), and be antisymmetric.
static int
s_t_cmp_roundtrip(const pd_query_t *q, const pd_qkey_t *a, const pd_qkey_t *b)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pd_query_key_pack(a, &pk);
    pd_query_key_pack(b, &pk);
    pd_mpr_t rd = pd_mpr((pd_str_t){sb.data, sb.size});
    pd_qkey_t ka, kb;
    PD_CHECK(pd_query_key_read(&rd, &ka) == 0);
    PD_CHECK(pd_query_key_read(&rd, &kb) == 0 && rd.p == rd.end);
    int c = pd_query_key_cmp(q, a, b);
    int cu = pd_query_key_cmp(q, &ka, &kb);
    PD_CHECK((c > 0) - (c < 0) == (cu > 0) - (cu < 0));
    pd_qsum_t sa, sb2;
    pd_query_key_sum(q, &ka, &sa); /* summaries never contradict the keys */
    pd_query_key_sum(q, &kb, &sb2);
    int cs = pd_query_sum_cmp(&sa, &sb2);
    PD_CHECK(cs == 0 || cs == (c > 0) - (c < 0));
    int r = pd_query_key_cmp(q, b, a);
    PD_CHECK((c > 0) - (c < 0) == -((r > 0) - (r < 0)));
    PD_CHECK(pd_query_key_cmp(q, a, a) == 0);
    PD_CHECK(pd_query_key_cmp(q, &ka, a) == 0);
    msgpack_sbuffer_destroy(&sb);
    return c;
}

void
pd_query_test(bool verbose)
{
    if (verbose)
        printf("   query: ");

    //  2024-01-01T00:00:00.000Z = 1704067200000
    pd_record_t rec = {
        .project = PD_STR("p1"),
        .id = PD_STR("pres1"),
        .user_id = PD_STR("user1"),
        .status = PD_STR("online"),
        .source = PD_STR("rest"),
        .status_json = PD_STR("\"online\""),
        .perms_json = PD_STR("[\"read(\\\"any\\\")\"]"),
        .meta_json = PD_STR("{\"room\":\"lobby\",\"n\":3,\"f\":2.5,\"ok\":true,\"no\":false,"
                            "\"nil\":null,\"s1\":\"1\",\"geo\":{\"x\":10,\"tile\":\"a1\","
                            "\"deep\":{\"k\":\"v\"}},\"tags\":[\"a\",\"b\"],\"big\":1e300}"),
        .created_ms = 1704067200000,
        .updated_ms = 1704067260000,
        .expires_ms = 1704068100000,
        .version = 1,
    };

    //  equal / notEqual on strings, many values, strict typing.
    PD_CHECK(
        s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"online\"]}"));
    PD_CHECK(
        !s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"away\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"userId\",\"values\":[\"x\","
                          "\"user1\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"$id\",\"values\":[\"pres1\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"source\",\"values\":[\"rest\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"notEqual\",\"attribute\":\"status\",\"values\":"
                           "[\"online\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"notEqual\",\"attribute\":\"status\",\"values\":"
                          "[\"away\",\"busy\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"notEqual\",\"attribute\":\"status\",\"values\":"
                           "[\"away\",\"online\"]}"));
    //  Realtime accepts a number on a string attribute, and it never equals the string.
    PD_CHECK(!s_t_match(&rec, PD_QMODE_REALTIME,
                      "{\"method\":\"equal\",\"attribute\":\"userId\",\"values\":[1]}"));
    //  Strict types on metadata: "1" is not 1, 3 equals 3.0, true is not 1.
    PD_CHECK(
        s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.s1\",\"values\":[\"1\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.s1\",\"values\":[1]}"));
    PD_CHECK(
        !s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.n\",\"values\":[\"3\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.n\",\"values\":[3.0]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.f\",\"values\":[2.5]}"));
    PD_CHECK(
        s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.ok\",\"values\":[true]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.ok\",\"values\":[1]}"));
    PD_CHECK(
        s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.no\",\"values\":[false]}"));
    PD_CHECK(
        s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.nil\",\"values\":[null]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.nil\",\"values\":[0]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.tags\",\"values\":"
                          "[[\"a\",\"b\"]]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.tags\",\"values\":"
                           "[[\"b\",\"a\"]]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"notEqual\",\"attribute\":\"metadata.n\",\"values\":[4]}"));
    //  Nested paths; absent keys never match, even notEqual; isNull holds for absent or null.
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":"
                          "[\"lobby\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.geo.tile\",\"values\":"
                          "[\"a1\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.geo.deep.k\",\"values\":"
                          "[\"v\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.geo.tile.x\","
                           "\"values\":[\"a1\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"metadata.gone\",\"values\":"
                           "[\"x\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"notEqual\",\"attribute\":\"metadata.gone\",\"values\":"
                           "[\"x\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.gone\","
                           "\"values\":[1]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"isNull\",\"attribute\":\"metadata.gone\"}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"isNull\",\"attribute\":\"metadata.nil\"}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"isNull\",\"attribute\":\"metadata.room\"}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"isNotNull\",\"attribute\":\"metadata.room\"}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"isNotNull\",\"attribute\":\"metadata.nil\"}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"isNotNull\",\"attribute\":\"metadata.gone\"}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"isNotNull\",\"attribute\":\"metadata.geo\"}"));
    //  Comparisons: numbers, strings, mixed int/double; across types never.
    PD_CHECK(s_t_both(&rec, "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[4]}"));
    PD_CHECK(
        !s_t_both(&rec, "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[3]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"lessThanEqual\",\"attribute\":\"metadata.n\",\"values\":"
                          "[3]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"lessThanEqual\",\"attribute\":\"metadata.n\","
                           "\"values\":[2.99]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.f\",\"values\":"
                          "[2]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.f\",\"values\":"
                           "[3]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThanEqual\",\"attribute\":\"metadata.f\","
                          "\"values\":[2.5]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"greaterThanEqual\",\"attribute\":\"metadata.f\","
                           "\"values\":[2.51]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.big\",\"values\":"
                          "[9223372036854775807]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"lessThan\",\"attribute\":\"metadata.s1\",\"values\":"
                           "[5]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.nil\","
                           "\"values\":[-1]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"status\",\"values\":"
                          "[\"busy\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"lessThan\",\"attribute\":\"status\",\"values\":"
                           "[\"busy\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"metadata.ok\",\"values\":"
                          "[false]}"));
    //  Datetimes compare as instants, whatever the zone or precision of the operand.
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"$createdAt\",\"values\":"
                          "[\"2024-01-01T00:00:00.000+00:00\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"$createdAt\",\"values\":"
                          "[\"2024-01-01T01:00:00+01:00\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"$updatedAt\",\"values\":"
                          "[\"2024-01-01T00:00:59.999Z\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"greaterThan\",\"attribute\":\"$updatedAt\",\"values\":"
                           "[\"2024-01-01T00:01:00Z\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"lessThanEqual\",\"attribute\":\"expiresAt\",\"values\":"
                          "[\"2024-01-01 00:15:00\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"lessThan\",\"attribute\":\"expiresAt\",\"values\":"
                           "[\"2024-01-01T00:15:00Z\"]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"isNotNull\",\"attribute\":\"expiresAt\"}"));
    //  between (inclusive), startsWith, endsWith: list mode only.
    int L = PD_QMODE_LIST;
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":"
                     "[3,4]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":"
                     "[1.5,3]}"));
    PD_CHECK(!s_t_match(&rec, L,
                      "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":"
                      "[4,9]}"));
    PD_CHECK(!s_t_match(&rec, L,
                      "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":"
                      "[\"1\",\"9\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"between\",\"attribute\":\"$createdAt\",\"values\":"
                     "[\"2023-12-31\",\"2024-01-01T00:00:00Z\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"between\",\"attribute\":\"status\",\"values\":"
                     "[\"a\",\"p\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"startsWith\",\"attribute\":\"status\",\"values\":"
                     "[\"onl\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"startsWith\",\"attribute\":\"status\",\"values\":"
                     "[\"\"]}"));
    PD_CHECK(!s_t_match(&rec, L,
                      "{\"method\":\"startsWith\",\"attribute\":\"status\",\"values\":"
                      "[\"line\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"endsWith\",\"attribute\":\"status\",\"values\":"
                     "[\"line\"]}"));
    PD_CHECK(!s_t_match(&rec, L,
                      "{\"method\":\"endsWith\",\"attribute\":\"status\",\"values\":"
                      "[\"online!\"]}"));
    PD_CHECK(s_t_match(&rec, L,
                     "{\"method\":\"startsWith\",\"attribute\":\"metadata.geo.tile\","
                     "\"values\":[\"a\"]}"));
    PD_CHECK(!s_t_match(&rec, L,
                      "{\"method\":\"endsWith\",\"attribute\":\"metadata.n\",\"values\":"
                      "[\"3\"]}"));
    //  Several queries are ANDed; and/or nest.
    PD_CHECK(s_t_both(&rec,
                    "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"online\"]}\n"
                    "{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":"
                    "[\"lobby\"]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":"
                           "[\"online\"]}\n{\"method\":\"equal\",\"attribute\":\"metadata.room\","
                           "\"values\":[\"hall\"]}"));
    const char *or_q = "{\"method\":\"or\",\"values\":["
                       "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"away\"]},"
                       "{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":"
                       "[\"lobby\"]}]}";
    PD_CHECK(s_t_both(&rec, or_q));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"or\",\"values\":["
                           "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"away\"]},"
                           "{\"method\":\"isNull\",\"attribute\":\"metadata.room\"}]}"));
    PD_CHECK(s_t_both(&rec, "{\"method\":\"and\",\"values\":["
                          "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"online\"]},"
                          "{\"method\":\"or\",\"values\":["
                          "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[0]},"
                          "{\"method\":\"equal\",\"attribute\":\"metadata.ok\",\"values\":[true]}"
                          "]}]}"));
    PD_CHECK(!s_t_both(&rec,
                     "{\"method\":\"and\",\"values\":["
                     "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"online\"]},"
                     "{\"method\":\"isNotNull\",\"attribute\":\"metadata.gone\"}]}"));
    //  Zero queries match; realtime select("*") matches everything, whatever else is there.
    PD_CHECK(s_t_match(&rec, L, ""));
    {
        int code;
        pd_query_t *q = pd_query_parse(NULL, 0, PD_QMODE_REALTIME, &code, NULL, 0);
        PD_CHECK(q && code == PD_ERR_OK);
        pd_qrec_t r;
        pd_qrec_init(&r, &rec);
        PD_CHECK(pd_query_match(q, &r));
        PD_CHECK(!r.meta_tried); //  nothing touched metadata
        pd_qrec_clear(&r);
        pd_query_destroy(&q);
        pd_query_destroy(&q); //  idempotent
    }
    PD_CHECK(s_t_match(&rec, PD_QMODE_REALTIME,
                     "{\"method\":\"select\",\"values\":[\"*\"]}\n"
                     "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"away\"]}"));
    //  A null status: isNull, and never equal to a string.
    pd_record_t nul = rec;
    nul.status = PD_STR("");
    nul.status_json = PD_STR("null");
    nul.meta_json = PD_STR("{}");
    PD_CHECK(s_t_both(&nul, "{\"method\":\"isNull\",\"attribute\":\"status\"}"));
    PD_CHECK(!s_t_both(&nul, "{\"method\":\"isNotNull\",\"attribute\":\"status\"}"));
    PD_CHECK(!s_t_both(&nul, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"\"]}"));
    PD_CHECK(s_t_match(&nul, PD_QMODE_REALTIME,
                     "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[null]}"));
    PD_CHECK(!s_t_both(&rec, "{\"method\":\"isNull\",\"attribute\":\"status\"}"));
    PD_CHECK(s_t_both(&nul, "{\"method\":\"isNull\",\"attribute\":\"metadata.room\"}"));
    nul.status_json = PD_STR("\"\""); //  an empty string is not null
    PD_CHECK(!s_t_both(&nul, "{\"method\":\"isNull\",\"attribute\":\"status\"}"));
    //  Bad metadata JSON reads as {}.
    nul.meta_json = PD_STR("{oops");
    PD_CHECK(s_t_both(&nul, "{\"method\":\"isNull\",\"attribute\":\"metadata.room\"}"));

    //  Paging accessors and the index hint.
    {
        int code;
        char err[256];
        pd_query_t *q = s_t_parse(
            L,
            "{\"method\":\"limit\",\"values\":[10]}\n{\"method\":\"offset\",\"values\":[5]}\n"
            "{\"method\":\"cursorBefore\",\"values\":[\"abc\"]}\n"
            "{\"method\":\"equal\",\"attribute\":\"userId\",\"values\":[\"user1\"]}\n"
            "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"a\",\"b\"]}",
            &code, err, sizeof err);
        PD_CHECK(q);
        bool before = false;
        PD_CHECK(pd_query_limit(q) == 10 && pd_query_offset(q) == 5);
        PD_CHECK(pd_str_eqc(pd_query_cursor(q, &before), "abc") && before);
        pd_str_t v;
        PD_CHECK(pd_query_equal_on(q, "userId", &v) && pd_str_eqc(v, "user1"));
        PD_CHECK(!pd_query_equal_on(q, "status", &v)); //  two values
        PD_CHECK(!pd_query_equal_on(q, "$id", &v));
        PD_CHECK(!pd_query_equal_on(q, "expiresAt", &v));
        pd_query_destroy(&q);
        q = s_t_parse(L, "", &code, err, sizeof err);
        PD_CHECK(q && pd_query_limit(q) == 25 && pd_query_offset(q) == 0);
        PD_CHECK(pd_query_cursor(q, &before).ptr == NULL && !before);
        pd_query_destroy(&q);
        q = s_t_parse(L, "{\"method\":\"limit\",\"values\":[5000.0]}", &code, err, sizeof err);
        PD_CHECK(q && pd_query_limit(q) == 5000);
        pd_query_destroy(&q);
        q = s_t_parse(L, "{\"method\":\"cursorAfter\",\"values\":[\"x.y-z\"]}", &code, err,
                      sizeof err);
        PD_CHECK(q && pd_str_eqc(pd_query_cursor(q, &before), "x.y-z") && !before);
        pd_query_destroy(&q);
    }

    //  Errors: shapes (argument invalid), schema and mode (query invalid), exact messages.
    int R = PD_QMODE_REALTIME, A = PD_ERR_ARGUMENT_INVALID, Q = PD_ERR_QUERY_INVALID;
    s_t_err(L, "{oops", A, LP "Invalid query: Invalid query: Syntax error");
    s_t_err(R, "{oops", A, "Invalid query: Invalid query: Syntax error");
    s_t_err(L, "\"equal\"", A, LP "Invalid query: Invalid query. Must be an array, got string");
    s_t_err(L, "7", A, LP "Invalid query: Invalid query. Must be an array, got integer");
    s_t_err(L, "[1,2]", A, LP "Invalid query: Invalid query method: ");
    s_t_err(L, "{}", A, LP "Invalid query: Invalid query method: ");
    s_t_err(L, "{\"method\":5}", A,
            LP "Invalid query: Invalid query method. Must be a string, got integer");
    s_t_err(L, "{\"method\":\"frobnicate\"}", A,
            LP "Invalid query: Invalid query method: frobnicate");
    s_t_err(R, "{\"method\":\"frobnicate\"}", A, "Invalid query: Invalid query method: frobnicate");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":1,\"values\":[1]}", A,
            LP "Invalid query: Invalid query attribute. Must be a string, got integer");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":\"online\"}", A,
            LP "Invalid query: Invalid query values. Must be an array, got string");
    s_t_err(L, "{\"method\":\"select\",\"values\":[\"*\"]}", Q, LP "Invalid query method: select");
    s_t_err(L, "{\"method\":\"contains\",\"attribute\":\"status\",\"values\":[\"x\"]}", Q,
            LP "Invalid query method: contains");
    s_t_err(R, "{\"method\":\"limit\",\"values\":[1]}", Q,
            "Invalid query: Query method 'limit' is not supported in Realtime queries. Allowed "
            "query methods are: " S_RT_ALLOWED);
    s_t_err(R, "{\"method\":\"startsWith\",\"attribute\":\"status\",\"values\":[\"o\"]}", Q,
            "Invalid query: Query method 'startsWith' is not supported in Realtime queries. "
            "Allowed query methods are: " S_RT_ALLOWED);
    s_t_err(R,
            "{\"method\":\"or\",\"values\":[{\"method\":\"orderAsc\",\"attribute\":\"status\"},"
            "{\"method\":\"isNull\",\"attribute\":\"status\"}]}",
            Q,
            "Invalid query: Query method 'orderAsc' is not supported in Realtime queries. "
            "Allowed query methods are: " S_RT_ALLOWED);
    s_t_err(R, "{\"method\":\"select\",\"values\":[\"status\"]}", Q,
            "Invalid query: Only select(\"*\") is allowed in Realtime queries. select(\"*\") "
            "means \"listen to all events\".");
    s_t_err(R, "{\"method\":\"select\",\"values\":[\"*\",\"status\"]}", Q,
            "Invalid query: Only select(\"*\") is allowed in Realtime queries. select(\"*\") "
            "means \"listen to all events\".");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"metadata\",\"values\":[{}]}", Q,
            LP "Invalid query: Attribute not found in schema: metadata");
    s_t_err(R, "{\"method\":\"equal\",\"attribute\":\"metadata\",\"values\":[{}]}", Q,
            "Invalid query: Attribute not found in schema: metadata");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"$permissions\",\"values\":[\"x\"]}", Q,
            LP "Invalid query: Attribute not found in schema: $permissions");
    s_t_err(L, "{\"method\":\"isNull\",\"attribute\":\"nope\"}", Q,
            LP "Invalid query: Attribute not found in schema: nope");
    s_t_err(L, "{\"method\":\"isNull\",\"attribute\":\"metadata.a..b\"}", Q,
            LP "Invalid query: Attribute not found in schema: metadata.a..b");
    s_t_err(L, "{\"method\":\"isNull\",\"attribute\":\"metadata.\"}", Q,
            LP "Invalid query: Attribute not found in schema: metadata.");
    s_t_err(L, "{\"method\":\"isNull\"}", Q, LP "Invalid query: Attribute not found in schema: ");
    s_t_err(L, "{\"method\":\"orderAsc\",\"attribute\":\"$permissions\"}", Q,
            LP "Invalid query: Attribute not found in schema: $permissions");
    s_t_err(L, "{\"method\":\"orderDesc\",\"attribute\":\"metadata.score\"}", Q,
            LP "Invalid query: Cannot order by a metadata attribute: metadata.score");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"status\"}", A,
            LP "Invalid query: Equal queries require at least one value.");
    s_t_err(R, "{\"method\":\"notEqual\",\"attribute\":\"status\",\"values\":[]}", A,
            "Invalid query: NotEqual queries require at least one value.");
    s_t_err(L, "{\"method\":\"lessThan\",\"attribute\":\"status\",\"values\":[\"a\",\"b\"]}", A,
            LP "Invalid query: LessThan queries require exactly one value.");
    s_t_err(R, "{\"method\":\"greaterThanEqual\",\"attribute\":\"status\"}", A,
            "Invalid query: GreaterThanEqual queries require exactly one value.");
    s_t_err(L, "{\"method\":\"startsWith\",\"attribute\":\"status\",\"values\":[]}", A,
            LP "Invalid query: StartsWith queries require exactly one value.");
    s_t_err(L, "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":[1]}", A,
            LP "Invalid query: Between queries require exactly two values.");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[1]}", A,
            LP "Invalid query: Query value is invalid for attribute \"status\"");
    s_t_err(L, "{\"method\":\"equal\",\"attribute\":\"userId\",\"values\":[null]}", A,
            LP "Invalid query: Query value is invalid for attribute \"userId\"");
    s_t_err(L, "{\"method\":\"greaterThan\",\"attribute\":\"$createdAt\",\"values\":[\"soon\"]}", A,
            LP "Invalid query: Query value is invalid for attribute \"$createdAt\"");
    s_t_err(R, "{\"method\":\"lessThan\",\"attribute\":\"expiresAt\",\"values\":[1704067200000]}",
            A, "Invalid query: Query value is invalid for attribute \"expiresAt\"");
    s_t_err(L, "{\"method\":\"startsWith\",\"attribute\":\"expiresAt\",\"values\":[\"2024\"]}", A,
            LP "Invalid query: Cannot query startsWith on attribute \"expiresAt\" because it is "
               "not a string.");
    s_t_err(L, "{\"method\":\"and\",\"values\":[{\"method\":\"isNull\",\"attribute\":\"status\"}]}",
            A, LP "Invalid query: And queries require at least two queries");
    s_t_err(R, "{\"method\":\"or\",\"values\":[]}", A,
            "Invalid query: Or queries require at least two queries");
    s_t_err(L,
            "{\"method\":\"or\",\"values\":[{\"method\":\"limit\",\"values\":[1]},"
            "{\"method\":\"isNull\",\"attribute\":\"status\"}]}",
            A, LP "Invalid query: Or queries can only contain filter queries");
    s_t_err(R,
            "{\"method\":\"and\",\"values\":[{\"method\":\"select\",\"values\":[\"*\"]},"
            "{\"method\":\"isNull\",\"attribute\":\"status\"}]}",
            A, "Invalid query: And queries can only contain filter queries");
    s_t_err(L, "{\"method\":\"and\",\"values\":[\"x\",\"y\"]}", A,
            LP "Invalid query: Invalid query. Must be an array, got string");
    {
        //  Five levels of and/or are fine; six are not.
        pd_buf_t b;
        pd_buf_init(&b);
        s_t_err(L, s_t_nest(&b, 6), A,
                LP "Invalid query: Or queries can be nested at most 5 levels deep");
        PD_CHECK(s_t_both(&rec, s_t_nest(&b, 5)));
        pd_buf_free(&b);
    }
    {
        //  An empty string is not JSON.
        pd_str_t empty = PD_STR("");
        char err[256];
        int code;
        PD_CHECK(!pd_query_parse(&empty, 1, L, &code, err, sizeof err));
        PD_CHECK(code == A && strcmp(err, LP "Invalid query: Invalid query: Syntax error") == 0);
    }
    s_t_err(L, "{\"method\":\"limit\",\"values\":[0]}", A,
            LP "Invalid query: Invalid limit: Value must be a valid range between 1 and 5,000");
    s_t_err(L, "{\"method\":\"limit\",\"values\":[5001]}", A,
            LP "Invalid query: Invalid limit: Value must be a valid range between 1 and 5,000");
    s_t_err(L, "{\"method\":\"limit\",\"values\":[2.5]}", A,
            LP "Invalid query: Invalid limit: Value must be a valid range between 1 and 5,000");
    s_t_err(L, "{\"method\":\"limit\",\"values\":[\"ten\"]}", A,
            LP "Invalid query: Invalid limit: Value must be a valid number");
    s_t_err(L, "{\"method\":\"limit\"}", A,
            LP "Invalid query: Invalid limit: Value must be a valid number");
    s_t_err(L, "{\"method\":\"offset\",\"values\":[-1]}", A,
            LP "Invalid query: Invalid offset: Value must be a valid range between 0 and 5,000");
    s_t_err(L, "{\"method\":\"offset\",\"values\":[5001]}", A,
            LP "Invalid query: Invalid offset: Value must be a valid range between 0 and 5,000");
    /* an API key's (PD_QMODE_DEEP): offsets to 100,000 */
    {
        pd_str_t one = PD_STR("{\"method\":\"offset\",\"values\":[100000]}");
        int code;
        char err[256];
        pd_query_t *q = pd_query_parse(&one, 1, L | PD_QMODE_DEEP, &code, err, sizeof err);
        PD_CHECK(q && pd_query_offset(q) == 100000);
        pd_query_destroy(&q);
    }
    s_t_err(L | PD_QMODE_DEEP, "{\"method\":\"offset\",\"values\":[100001]}", A,
            LP "Invalid query: Invalid offset: Value must be a valid range between 0 and 100,000");
    s_t_err(L, "{\"method\":\"limit\",\"values\":[1]}\n{\"method\":\"limit\",\"values\":[2]}", A,
            LP "Invalid query: Only one limit query is allowed");
    s_t_err(L, "{\"method\":\"offset\",\"values\":[1]}\n{\"method\":\"offset\",\"values\":[2]}", A,
            LP "Invalid query: Only one offset query is allowed");
    s_t_err(L,
            "{\"method\":\"cursorAfter\",\"values\":[\"a\"]}\n"
            "{\"method\":\"cursorBefore\",\"values\":[\"b\"]}",
            A, LP "Invalid query: Only one cursor query is allowed");
    s_t_err(L, "{\"method\":\"cursorAfter\",\"values\":[\"_bad\"]}", A,
            LP "Invalid query: Invalid cursor: UID must contain at most 36 chars. Valid chars are "
               "a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char");
    s_t_err(L, "{\"method\":\"cursorAfter\",\"values\":[42]}", A,
            LP "Invalid query: Invalid cursor: UID must contain at most 36 chars. Valid chars are "
               "a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char");
    {
        pd_buf_t b;
        pd_buf_init(&b);
        pd_buf_adds(&b, "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[");
        for (int i = 0; i < PD_QUERY_MAX_VALUES + 1; i++)
            pd_buf_addf(&b, "%s\"v%d\"", i ? "," : "", i);
        pd_buf_add(&b, "]}", 3);
        s_t_err(L, b.data, A,
                LP "Invalid query: Query on attribute has greater than 100 values: status");
        pd_buf_reset(&b);
        for (int i = 0; i < PD_QUERY_MAX + 1; i++)
            pd_buf_addf(&b, "%s{\"method\":\"isNull\",\"attribute\":\"status\"}", i ? "\n" : "");
        pd_buf_add(&b, "", 1);
        s_t_err(L, b.data, A, LP "Invalid queries");
        pd_buf_reset(&b);
        for (int i = 0; i < PD_QUERY_MAX_ORDER + 1; i++)
            pd_buf_addf(&b, "%s{\"method\":\"orderAsc\",\"attribute\":\"status\"}", i ? "\n" : "");
        pd_buf_add(&b, "", 1);
        s_t_err(L, b.data, A, LP "Invalid query: At most 8 order queries are allowed");
        pd_buf_free(&b);
    }
    {
        //  Messages are truncated to the buffer, never overflow it; err may be NULL.
        char small[8];
        int code;
        const char *bad = "{oops";
        pd_str_t q1 = pd_str(bad);
        PD_CHECK(!pd_query_parse(&q1, 1, L, &code, small, sizeof small));
        PD_CHECK(code == A && strlen(small) == 7);
        PD_CHECK(!pd_query_parse(&q1, 1, R, NULL, NULL, 0));
    }

    //  Sort keys: order asc/desc, several orders, ties broken by $createdAt then $id.
    pd_record_t ra = rec, rb = rec, rc = rec, rd = rec;
    ra.id = PD_STR("a"), ra.status = PD_STR("away"), ra.created_ms = 100, ra.updated_ms = 10;
    rb.id = PD_STR("b"), rb.status = PD_STR("online"), rb.created_ms = 100, rb.updated_ms = 20;
    rc.id = PD_STR("c"), rc.status = PD_STR("online"), rc.created_ms = 50, rc.updated_ms = 5;
    rc.source = PD_STR("graphql");
    rd.id = PD_STR("d"), rd.status = PD_STR(""), rd.status_json = PD_STR("null"), rd.created_ms = 1;
    rd.source = PD_STR("realtime"), rd.updated_ms = 30;
    {
        int code;
        char err[256];
        pd_qkey_t ka, kb, kc, kd;
        //  No order: ($createdAt, $id) ascending.
        pd_query_t *q = s_t_parse(L, "", &code, err, sizeof err);
        s_t_key(q, &ra, &ka), s_t_key(q, &rb, &kb), s_t_key(q, &rc, &kc), s_t_key(q, &rd, &kd);
        PD_CHECK(ka.n == 2 && ka.v[0].type == 1 && ka.v[1].type == 2);
        PD_CHECK(s_t_cmp_roundtrip(q, &kd, &kc) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &kc, &ka) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &ka, &kb) < 0); //  same $createdAt: by $id
        pd_query_destroy(&q);
        //  status ascending: null first, then by value, ties by $createdAt.
        q = s_t_parse(L, "{\"method\":\"orderAsc\",\"attribute\":\"status\"}", &code, err,
                      sizeof err);
        s_t_key(q, &ra, &ka), s_t_key(q, &rb, &kb), s_t_key(q, &rc, &kc), s_t_key(q, &rd, &kd);
        PD_CHECK(ka.n == 3 && kd.v[0].type == 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &kd, &ka) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &ka, &kc) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &kc, &kb) < 0);
        pd_query_destroy(&q);
        //  status descending: null last; the implicit tail stays ascending.
        q = s_t_parse(L, "{\"method\":\"orderDesc\",\"attribute\":\"status\"}", &code, err,
                      sizeof err);
        s_t_key(q, &ra, &ka), s_t_key(q, &rb, &kb), s_t_key(q, &rc, &kc), s_t_key(q, &rd, &kd);
        PD_CHECK(s_t_cmp_roundtrip(q, &kc, &kb) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &kb, &ka) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &ka, &kd) < 0);
        pd_query_destroy(&q);
        //  Two orders: source ascending, then $updatedAt descending.
        q = s_t_parse(L,
                      "{\"method\":\"orderAsc\",\"attribute\":\"source\"}\n"
                      "{\"method\":\"orderDesc\",\"attribute\":\"$updatedAt\"}",
                      &code, err, sizeof err);
        PD_CHECK(q);
        s_t_key(q, &ra, &ka), s_t_key(q, &rb, &kb), s_t_key(q, &rc, &kc), s_t_key(q, &rd, &kd);
        PD_CHECK(ka.n == 4 && ka.v[0].type == 2 && ka.v[1].type == 1);
        PD_CHECK(s_t_cmp_roundtrip(q, &kc, &kd) < 0); //  graphql < realtime
        PD_CHECK(s_t_cmp_roundtrip(q, &kd, &kb) < 0); //  realtime < rest
        PD_CHECK(s_t_cmp_roundtrip(q, &kb, &ka) < 0); //  both rest: updated 20 before 10
        pd_query_destroy(&q);
        //  Datetime and an empty attribute (insertion order) descending.
        q = s_t_parse(L, "{\"method\":\"orderDesc\",\"attribute\":\"\"}", &code, err, sizeof err);
        s_t_key(q, &ra, &ka), s_t_key(q, &rb, &kb), s_t_key(q, &rc, &kc);
        PD_CHECK(s_t_cmp_roundtrip(q, &ka, &kc) < 0);
        PD_CHECK(s_t_cmp_roundtrip(q, &ka, &kb) < 0); //  tie: $id ascending
        pd_query_destroy(&q);
        //  Mixed int/double, large magnitudes, NaN and negative zero stay a total order.
        pd_qkey_t x = {.n = 1}, y = {.n = 1};
        x.v[0] = (pd_qval_t){1, INT64_MAX, 0, PD_STR_NULL};
        y.v[0] = (pd_qval_t){3, 0, 9223372036854775808.0, PD_STR_NULL};
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) < 0);
        x.v[0] = (pd_qval_t){1, 3, 0, PD_STR_NULL};
        y.v[0] = (pd_qval_t){3, 0, 3.0, PD_STR_NULL};
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) == 0);
        y.v[0].d = 3.0000001;
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) < 0);
        y.v[0].d = -2.5;
        x.v[0].i = -2;
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) > 0);
        y.v[0].d = NAN;
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) < 0);
        x.v[0] = (pd_qval_t){3, 0, NAN, PD_STR_NULL};
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) == 0);
        x.v[0].d = -0.0, y.v[0].d = 0.0;
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) == 0);
        x.v[0] = (pd_qval_t){2, 0, 0, PD_STR("")};
        y.v[0] = (pd_qval_t){2, 0, 0, PD_STR_NULL};
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) == 0);
        y.v[0] = (pd_qval_t){2, 0, 0, {"a\0b", 3}};
        x.v[0] = (pd_qval_t){2, 0, 0, {"a\0", 2}};
        PD_CHECK(s_t_cmp_roundtrip(NULL, &x, &y) < 0);
        //  Reading rejects what a key cannot hold, and leaves the reader where it was.
        static const struct {
            const char *b;
            size_t n;
        } bad[] = {
            {"\x91\xc3", 2},                                 //  [true]
            {"\x91\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 10}, //  [UINT64_MAX]
            {"\xa1x", 2},                                     //  not an array
            {"\x92\x01", 2},                                 //  cut short
            {"\x91\xcb\x00", 3},                             //  a double cut short
            {"\x9b\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01", 12}, //  11 values
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            pd_mpr_t r = pd_mpr((pd_str_t){bad[i].b, bad[i].n});
            PD_CHECK(pd_query_key_read(&r, &x) == -1 && r.p == (const unsigned char *)bad[i].b);
        }
        pd_mpr_t r = pd_mpr(PD_STR("\x93\xc0\xca\x3f\x80\x00\x00\xa2hi"));
        PD_CHECK(pd_query_key_read(&r, &x) == 0 && r.p == r.end && x.n == 3 &&
                 x.v[0].type == 0 && x.v[1].type == 3 && x.v[1].d == 1.0 && x.v[2].type == 2 &&
                 pd_str_eqc(x.v[2].s, "hi")); //  [nil, float32 1.0, "hi"]
    }
    //  Sort-key summaries (pd_qsum_t) never contradict the keys: every pair of two-value keys
    //  drawn from edge values (ints past 2^53, doubles next to them, NaN, -0, strings around 7
    //  bytes with NULs, unknown tags), under ascending and descending orders; and they decide
    //  most pairs, or they would save nothing.
    {
        static const pd_qval_t vals[] = {
            {0, 0, 0, {NULL, 0}},
            {1, INT64_MIN, 0, {NULL, 0}},
            {1, -(1LL << 53) - 1, 0, {NULL, 0}},
            {1, -3, 0, {NULL, 0}},
            {1, 0, 0, {NULL, 0}},
            {1, 3, 0, {NULL, 0}},
            {1, 1764979200000, 0, {NULL, 0}},
            {1, 1764979200001, 0, {NULL, 0}},
            {1, (1LL << 53) + 1, 0, {NULL, 0}},
            {1, (1LL << 53) + 3, 0, {NULL, 0}},
            {1, INT64_MAX, 0, {NULL, 0}},
            {3, 0, -2.5, {NULL, 0}},
            {3, 0, -0.0, {NULL, 0}},
            {3, 0, 0.0, {NULL, 0}},
            {3, 0, 3.0, {NULL, 0}},
            {3, 0, 3.0000001, {NULL, 0}},
            {3, 0, 9007199254740992.0, {NULL, 0}},
            {3, 0, 9007199254740996.0, {NULL, 0}},
            {3, 0, 9223372036854775808.0, {NULL, 0}},
            {3, 0, NAN, {NULL, 0}},
            {3, 0, -NAN, {NULL, 0}},
            {2, 0, 0, {"", 0}},
            {2, 0, 0, {"a", 1}},
            {2, 0, 0, {"a\0", 2}},
            {2, 0, 0, {"a\0b", 3}},
            {2, 0, 0, {"abcdef", 6}},
            {2, 0, 0, {"abcdef\0", 7}},
            {2, 0, 0, {"abcdefg", 7}},
            {2, 0, 0, {"abcdefgA", 8}},
            {2, 0, 0, {"abcdefgZ", 8}},
            {2, 0, 0, {"abcdefgAA", 9}},
            {2, 0, 0, {"\xff\xff", 2}},
            {5, 0, 0, {NULL, 0}},
            {7, 0, 0, {NULL, 0}},
        };
        enum { NV = sizeof vals / sizeof *vals };
        static const char *orders[] = {
            "",
            "{\"method\":\"orderDesc\",\"attribute\":\"status\"}",
            ("{\"method\":\"orderAsc\",\"attribute\":\"source\"}\n"
             "{\"method\":\"orderDesc\",\"attribute\":\"$updatedAt\"}"),
        };
        for (size_t o = 0; o < sizeof orders / sizeof *orders; o++) {
            int code;
            char err[256];
            pd_query_t *q = s_t_parse(PD_QMODE_LIST, orders[o], &code, err, sizeof err);
            PD_CHECK(q);
            size_t decided = 0, pairs = 0;
            for (int a = 0; a < NV * NV; a++) {
                pd_qkey_t ka = {.v = {vals[a / NV], vals[a % NV], {2, 0, 0, PD_STR("id")}}, .n = 3};
                pd_qsum_t sa;
                pd_query_key_sum(q, &ka, &sa);
                for (int b = 0; b < NV * NV; b++) {
                    pd_qkey_t kb = {.v = {vals[b / NV], vals[b % NV], {2, 0, 0, PD_STR("id")}},
                                    .n = 3};
                    pd_qsum_t sb;
                    pd_query_key_sum(q, &kb, &sb);
                    int c = pd_query_key_cmp(q, &ka, &kb), cs = pd_query_sum_cmp(&sa, &sb);
                    PD_CHECK(cs == 0 || cs == (c > 0) - (c < 0));
                    decided += cs != 0;
                    pairs++;
                }
            }
            PD_CHECK(decided * 10 > pairs * 8);
            if (verbose)
                printf("summaries decided %zu of %zu pairs (orders %zu)\n", decided, pairs, o);
            pd_query_destroy(&q);
        }
        pd_qkey_t one = {.v = {{1, 5, 0, {NULL, 0}}}, .n = 1}, two = one;
        two.v[1] = (pd_qval_t){2, 0, 0, PD_STR("x")};
        two.n = 2;
        pd_qsum_t s1, s2;
        pd_query_key_sum(NULL, &one, &s1), pd_query_key_sum(NULL, &two, &s2);
        PD_CHECK(pd_query_sum_cmp(&s1, &s2) == 0 && pd_query_sum_cmp(&s2, &s2) == 0);
    }
    //  Index keys in value order, and ranges walked over them (st_index.h): for each range, the
    //  values a walk from its start takes (position 0 until the first past it) are exactly the
    //  values whose record the filter matches.
    {
        static const char *vals[] = {"null", "false", "true", "-3", "-2.5", "0", "1", "1.0",
                                     "2", "3.5", "1e300", "-1e300", "\"\"", "\"a\"", "\"ab\"",
                                     "\"a\\u0000\"", "\"b\"", "\"ba\"", "9007199254740993"};
        enum { NV = sizeof vals / sizeof *vals };
        char metas[NV][64];
        pd_buf_t keys[NV];
        int order[NV];
        for (int i = 0; i < NV; i++) {
            snprintf(metas[i], sizeof metas[i], "{\"n\":%s}", vals[i]);
            pd_record_t r = rec;
            r.meta_json = pd_str(metas[i]);
            pd_qrec_t qr;
            pd_qrec_init(&qr, &r);
            pd_buf_init(&keys[i]);
            PD_CHECK(pd_qrec_index_key(&qr, PD_STR("metadata.n"), &keys[i]));
            pd_qrec_clear(&qr);
            order[i] = i;
        }
        //  insertion sort by key; equal values (1 and 1.0) have equal keys
        for (int i = 1; i < NV; i++)
            for (int j = i; j > 0; j--) {
                pd_str_t a = {keys[order[j - 1]].data, keys[order[j - 1]].len};
                pd_str_t b = {keys[order[j]].data, keys[order[j]].len};
                if (pd_query_index_key_cmp(a, b) <= 0)
                    break;
                int t = order[j];
                order[j] = order[j - 1];
                order[j - 1] = t;
            }
        PD_CHECK(strcmp(vals[order[0]], "null") == 0 && strcmp(vals[order[1]], "false") == 0 &&
                 strcmp(vals[order[3]], "-1e300") == 0 && strcmp(vals[order[NV - 1]], "\"ba\"") == 0);
        PD_CHECK(pd_query_index_key_cmp((pd_str_t){keys[6].data, keys[6].len},
                                        (pd_str_t){keys[7].data, keys[7].len}) == 0);
        static const char *ranges[] = {
            "{\"method\":\"greaterThan\",\"attribute\":\"metadata.n\",\"values\":[1]}",
            "{\"method\":\"greaterThanEqual\",\"attribute\":\"metadata.n\",\"values\":[1.0]}",
            "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[2]}",
            "{\"method\":\"lessThanEqual\",\"attribute\":\"metadata.n\",\"values\":[-2.5]}",
            "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":[-3,2]}",
            "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":[2,-3]}",
            "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":[\"a\",\"b\"]}",
            "{\"method\":\"startsWith\",\"attribute\":\"metadata.n\",\"values\":[\"a\"]}",
            "{\"method\":\"startsWith\",\"attribute\":\"metadata.n\",\"values\":[\"\"]}",
            "{\"method\":\"greaterThan\",\"attribute\":\"metadata.n\",\"values\":[\"a\"]}",
            "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[true]}",
            "{\"method\":\"greaterThan\",\"attribute\":\"metadata.n\",\"values\":[false]}",
            "{\"method\":\"greaterThan\",\"attribute\":\"metadata.n\",\"values\":[9007199254740992]}",
            "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[-1e308]}",
        };
        pd_buf_t lo;
        pd_buf_init(&lo);
        for (size_t k = 0; k < sizeof ranges / sizeof *ranges; k++) {
            int code;
            char err[256];
            pd_query_t *q = s_t_parse(PD_QMODE_LIST, ranges[k], &code, err, sizeof err);
            PD_CHECK(q);
            int f = pd_query_index_range(q, PD_STR("metadata.n"), &lo);
            PD_CHECK(f == 0);
            PD_CHECK(pd_query_index_range(q, PD_STR("metadata.m"), &lo) == -1);
            f = pd_query_index_range(q, PD_STR("metadata.n"), &lo);
            bool walked[NV] = {false};
            for (int i = 0; i < NV; i++) {
                pd_str_t key = {keys[order[i]].data, keys[order[i]].len};
                if (pd_query_index_key_cmp(key, (pd_str_t){lo.data, lo.len}) < 0)
                    continue;
                int pos = pd_query_index_range_pos(q, f, key);
                if (pos > 0)
                    break;
                walked[order[i]] = pos == 0;
            }
            for (int i = 0; i < NV; i++) {
                pd_record_t r = rec;
                r.meta_json = pd_str(metas[i]);
                pd_qrec_t qr;
                pd_qrec_init(&qr, &r);
                bool match = pd_query_match(q, &qr);
                pd_qrec_clear(&qr);
                if (match != walked[i])
                    fprintf(stderr, "range %s, value %s: match %d, walked %d\n", ranges[k],
                            vals[i], match, walked[i]);
                PD_CHECK(match == walked[i]);
            }
            pd_query_destroy(&q);
        }
        //  what an index cannot narrow: several operands, a null, an attribute not indexable
        static const char *none[] = {
            "{\"method\":\"greaterThan\",\"attribute\":\"metadata.n\",\"values\":[1,2]}",
            "{\"method\":\"lessThan\",\"attribute\":\"metadata.n\",\"values\":[null]}",
            "{\"method\":\"between\",\"attribute\":\"metadata.n\",\"values\":[1,\"b\"]}",
            "{\"method\":\"endsWith\",\"attribute\":\"metadata.n\",\"values\":[\"a\"]}",
        };
        for (size_t k = 0; k < sizeof none / sizeof *none; k++) {
            int code;
            char err[256];
            pd_query_t *q = s_t_parse(PD_QMODE_LIST, none[k], &code, err, sizeof err);
            if (!q) /* not even a valid query: nothing to narrow */
                continue;
            PD_CHECK(pd_query_index_range(q, PD_STR("metadata.n"), &lo) == -1);
            pd_query_destroy(&q);
        }
        pd_buf_free(&lo);
        for (int i = 0; i < NV; i++)
            pd_buf_free(&keys[i]);
    }
    {   /* ordered walks: the first sort key names the index; a cursor's key is found in it */
        static const struct {
            const char *q, *attr;
            bool ok, desc;
        } cases[] = {
            {"{\"method\":\"limit\",\"values\":[5]}", "$createdAt", true, false},
            {"{\"method\":\"orderDesc\",\"attribute\":\"$updatedAt\"}", "$updatedAt", true, true},
            {"{\"method\":\"orderDesc\",\"attribute\":\"$updatedAt\"}", "$createdAt", false, false},
            {"{\"method\":\"orderAsc\",\"attribute\":\"status\"}", "status", true, false},
            {"{\"method\":\"orderAsc\",\"attribute\":\"\"}", "$createdAt", true, false},
            {"{\"method\":\"orderAsc\",\"attribute\":\"userId\"}", "userId", false, false},
            {"{\"method\":\"limit\",\"values\":[5]}", "metadata.n", false, false},
        };
        pd_buf_t k;
        pd_buf_init(&k);
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int code;
            char err[256];
            pd_query_t *q = s_t_parse(PD_QMODE_LIST, cases[i].q, &code, err, sizeof err);
            PD_CHECK(q);
            bool desc = !cases[i].desc;
            PD_CHECK(pd_query_index_order(q, pd_str(cases[i].attr), &desc) == cases[i].ok);
            PD_CHECK(!cases[i].ok || desc == cases[i].desc);
            pd_query_destroy(&q);
        }
        pd_record_t r2 = rec;
        pd_query_t *q = s_t_parse(PD_QMODE_LIST, cases[3].q, &(int){0}, NULL, 0);
        for (int st = 0; st < 2; st++) { /* status "online", then null: the key is the index's */
            if (st)
                r2.status = PD_STR(""), r2.status_json = PD_STR("null");
            pd_qrec_t qr;
            pd_qrec_init(&qr, &r2);
            pd_qkey_t key;
            pd_query_key(q, &qr, &key);
            pd_buf_t want;
            pd_buf_init(&want);
            PD_CHECK(pd_qrec_index_key(&qr, PD_STR("status"), &want));
            PD_CHECK(pd_query_key_index_key(&key, &k) && k.len == want.len &&
                     memcmp(k.data, want.data, k.len) == 0);
            pd_buf_free(&want);
            pd_qrec_clear(&qr);
        }
        pd_query_destroy(&q);
        pd_buf_free(&k);
    }
    /*  A record as a roster replica keeps it (pd_record_pack_item): read back, it matches as
     *  the record does (gw_replica.h), and any cut of its bytes is refused. */
    {
        pd_record_t full = rec;
        full.read_roles = PD_STR("any\0user:u1\0");
        full.meta_json = PD_STR("{\"room\":\"lobby\"}");
        full.json = PD_STR("{\"$id\":\"pres1\"}");
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pd_record_pack_item(&full, &pk);
        pd_mpr_t r = pd_mpr((pd_str_t){sb.data, sb.size});
        pd_record_t back;
        PD_CHECK(pd_record_read_item(&r, &back) && r.p == r.end);
        PD_CHECK(pd_str_eq(back.id, full.id) && pd_str_eq(back.user_id, full.user_id) &&
                 pd_str_eq(back.status, full.status) &&
                 pd_str_eq(back.status_json, full.status_json) &&
                 pd_str_eq(back.source, full.source) &&
                 pd_str_eq(back.read_roles, full.read_roles) && pd_str_eq(back.json, full.json) &&
                 pd_str_eq(back.meta_json, full.meta_json) &&
                 back.created_ms == full.created_ms && back.updated_ms == full.updated_ms &&
                 back.expires_ms == full.expires_ms && back.version == full.version);
        static const char *const qs[] = {
            "{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"online\"]}",
            "{\"method\":\"isNull\",\"attribute\":\"status\"}",
            "{\"method\":\"startsWith\",\"attribute\":\"userId\",\"values\":[\"user\"]}",
            "{\"method\":\"greaterThan\",\"attribute\":\"$updatedAt\",\"values\":"
            "[\"2024-01-01T00:00:30.000Z\"]}",
            "{\"method\":\"lessThan\",\"attribute\":\"expiresAt\",\"values\":"
            "[\"2024-01-01T00:00:30.000Z\"]}",
            "{\"method\":\"equal\",\"attribute\":\"source\",\"values\":[\"rest\"]}",
            "{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":[\"lobby\"]}",
        };
        for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
            PD_CHECK(s_t_match(&full, PD_QMODE_LIST, qs[i]) ==
                     s_t_match(&back, PD_QMODE_LIST, qs[i]));
        for (size_t cut = 0; cut < sb.size; cut++) {
            pd_mpr_t t = pd_mpr((pd_str_t){sb.data, cut});
            pd_record_t x;
            PD_CHECK(!pd_record_read_item(&t, &x));
        }
        msgpack_sbuffer_destroy(&sb);
        //  what a replica may answer: no metadata in a filter (at any depth) or an order
        int code;
        char err[256];
        const char *meta[] = {
            "{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":[\"a\"]}",
            "{\"method\":\"or\",\"values\":[{\"method\":\"equal\",\"attribute\":\"status\","
            "\"values\":[\"a\"]},{\"method\":\"isNull\",\"attribute\":\"metadata.n\"}]}",
            "{\"method\":\"and\",\"values\":[{\"method\":\"equal\",\"attribute\":\"status\","
            "\"values\":[\"a\"]},{\"method\":\"or\",\"values\":[{\"method\":\"isNull\","
            "\"attribute\":\"status\"},{\"method\":\"equal\",\"attribute\":\"metadata.x.y\","
            "\"values\":[1]}]}]}",
        };
        for (size_t i = 0; i < 3; i++) {
            pd_query_t *q = s_t_parse(PD_QMODE_LIST, meta[i], &code, err, sizeof err);
            PD_CHECK(q && pd_query_reads_meta(q));
            pd_query_destroy(&q);
        }
        pd_query_t *q = s_t_parse(PD_QMODE_LIST,
                                  "{\"method\":\"orderDesc\",\"attribute\":\"status\"}", &code,
                                  err, sizeof err);
        PD_CHECK(q && !pd_query_reads_meta(q) && pd_query_norder(q) == 1);
        pd_query_destroy(&q);
        //  an index's set meets its equal(): pd_query_match_but leaves that one filter out
        pd_str_t two[] = {
            PD_STR("{\"method\":\"equal\",\"attribute\":\"metadata.room\",\"values\":[\"x\"]}"),
            PD_STR("{\"method\":\"equal\",\"attribute\":\"userId\",\"values\":[\"user1\"]}"),
        };
        q = pd_query_parse(two, 2, PD_QMODE_LIST, &code, err, sizeof err);
        pd_qrec_t qr;
        pd_qrec_init(&qr, &full);
        PD_CHECK(q && pd_query_match_but(q, &qr, PD_STR("metadata.room")));
        PD_CHECK(!qr.meta_tried); /* the metadata was not read */
        PD_CHECK(!pd_query_match(q, &qr));
        PD_CHECK(!pd_query_match_but(q, &qr, PD_STR("status"))); /* no equal() on it: all */
        pd_qrec_clear(&qr);
        pd_query_destroy(&q);
    }
    if (verbose)
        printf("OK\n");
}
