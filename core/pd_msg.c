/*  pd_msg — see pd_msg.h and pd_msg.def. */
#include "pd_msg.h"

#include <assert.h>
#include <stdio.h>

enum { T_STR = 1, T_INT = 2, T_RAW = 3 };
#define STR T_STR
#define INT T_INT
#define RAW T_RAW

static const unsigned char s_field_type[PD_F__COUNT + 1] = { //  [PD_F__COUNT]: no field
#define PD_MSG(name, id, dir)
#define PD_F(name, key, type, doc) [key] = type,
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
};

#undef STR
#undef INT
#undef RAW

const char *
pd_msg_name(int type)
{
    switch (type) {
#define PD_MSG(name, id, dir)                                                                      \
    case id:                                                                                       \
        return #name;
#define PD_F(name, key, type, doc)
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
    }
    return "?";
}

/*  ------------------------------------------------------------------------------------------
 *  Decoding.
 *
 *  The decoder reads the bytes directly instead of building a msgpack_object tree: a STR field
 *  is a view of its bytes, an INT field a number, and only a RAW field (an array of list rows)
 *  is handed to msgpack_unpack, alone. Every read checks the bytes left first, because a frame
 *  comes from another process and may be anything. What it accepts is exactly what msgpack-c
 *  accepted before (valid msgpack, at most 32 containers deep; tests/fuzz/fuzz_msg.c checks
 *  the two against each other), except that the header must be in the one layout
 *  pd_msgw_begin writes: other layouts would put the rid where pd_msgw_forward cannot patch it.
 *  An EVENT of 25 fields costs a quarter of the instructions it took (bench/core_bench.c). */

#define S_MAX_DEPTH 32 //  msgpack-c's MSGPACK_EMBED_STACK_SIZE: open containers at most

static const bool s_type_known[128] = {
#define PD_MSG(name, id, dir) [id] = true,
#define PD_F(name, key, type, doc)
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
};

//  The big-endian number of n (1, 2, 4 or 8) bytes at p.
static inline uint64_t
s_be(const unsigned char *p, unsigned n)
{
    uint16_t v16;
    uint32_t v32;
    uint64_t v64;
    switch (n) {
    case 1:
        return p[0];
    case 2:
        memcpy(&v16, p, 2);
        return __builtin_bswap16(v16);
    case 4:
        memcpy(&v32, p, 4);
        return __builtin_bswap32(v32);
    default:
        memcpy(&v64, p, 8);
        return __builtin_bswap64(v64);
    }
}

/*  Validates the object at p and returns the byte after it, or NULL if it is not valid msgpack
 *  or runs past end. `open` containers enclose it already: like msgpack-c, a container that
 *  would be the 33rd open one is refused. Iterative (a stack of element counts, one per open
 *  container), so hostile nesting costs neither C stack nor memory; each element takes at
 *  least one byte, so a header claiming 2^32 elements fails when the bytes run out. */
static const unsigned char *
s_skip(const unsigned char *p, const unsigned char *end, unsigned open)
{
    uint64_t stack[S_MAX_DEPTH];
    unsigned depth = 0;
    uint64_t want = 1; //  objects left at the current level
    for (;;) {
        if (p >= end)
            return NULL;
        unsigned b = *p++;
        uint64_t n = 0, skip = 0;
        unsigned lenbytes = 0;
        bool container = false;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* a single byte */
        } else if (b <= 0x8f) {
            container = true, n = 2 * (uint64_t)(b & 0x0f);
        } else if (b <= 0x9f) {
            container = true, n = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xc7: lenbytes = 1; skip = 1; break;
            case 0xc8: lenbytes = 2; skip = 1; break;
            case 0xc9: lenbytes = 4; skip = 1; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: lenbytes = 2; container = true; break;
            case 0xdd: case 0xdf: lenbytes = 4; container = true; break;
            default:
                return NULL; /* 0xc1: never used */
            }
        }
        if (lenbytes) {
            if ((size_t)(end - p) < lenbytes)
                return NULL;
            uint64_t l = s_be(p, lenbytes);
            p += lenbytes;
            if (container)
                n = b >= 0xde ? 2 * l : l;
            else
                skip += l;
        }
        if (skip) {
            if ((uint64_t)(end - p) < skip)
                return NULL;
            p += skip;
        }
        if (container) {
            if (open + depth >= S_MAX_DEPTH)
                return NULL;
            if (n) {
                stack[depth++] = want;
                want = n;
                continue;
            }
        }
        /* One object done; a container whose last element this was is one done above. */
        while (--want == 0) {
            if (depth == 0)
                return p;
            want = stack[--depth];
        }
    }
}

//  Reads an integer at p into *v; returns the byte after it, or NULL if p holds no integer or
//  it is cut short. *big is set for a uint64 above INT64_MAX (which *v cannot hold).
static inline const unsigned char *
s_int(const unsigned char *p, const unsigned char *end, int64_t *v, bool *big)
{
    unsigned b = *p++;
    *big = false;
    if (b <= 0x7f || b >= 0xe0) {
        *v = (int8_t)b;
        return p;
    }
    if (b < 0xcc || b > 0xd3)
        return NULL;
    unsigned n = 1u << (b & 3);
    if ((size_t)(end - p) < n)
        return NULL;
    uint64_t u = s_be(p, n);
    if (b <= 0xcf) {
        *big = u > INT64_MAX;
        *v = (int64_t)u;
    } else {
        unsigned shift = 64 - 8 * n; //  sign-extend the n-byte value
        *v = (int64_t)(u << shift) >> shift;
    }
    return p + n;
}

//  Reads a str or bin at p into *s; returns the byte after it, or NULL.
static inline const unsigned char *
s_str(const unsigned char *p, const unsigned char *end, pd_str_t *s)
{
    unsigned b = *p++;
    size_t n;
    if (b >= 0xa0 && b <= 0xbf) {
        n = b & 0x1f;
    } else {
        unsigned lb;
        if (b == 0xd9 || b == 0xc4)
            lb = 1;
        else if (b == 0xda || b == 0xc5)
            lb = 2;
        else if (b == 0xdb || b == 0xc6)
            lb = 4;
        else
            return NULL;
        if ((size_t)(end - p) < lb)
            return NULL;
        n = (size_t)s_be(p, lb);
        p += lb;
    }
    if ((size_t)(end - p) < n)
        return NULL;
    s->ptr = (const char *)p;
    s->len = n;
    return p + n;
}

/*  Absent fields read as empty / 0 / NULL in the array of their type. Only those entries are
 *  cleared (straight-line stores, about a third of the struct); the entries of a field in the
 *  other two arrays are never written or read (every access in the tree matches the field's
 *  type in pd_msg.def). */
#define S_CLEAR_STR(m, k) ((m)->s[k] = (pd_str_t){NULL, 0})
#define S_CLEAR_INT(m, k) ((m)->i[k] = 0)
#define S_CLEAR_RAW(m, k) ((m)->o[k] = NULL, (m)->s[k] = (pd_str_t){NULL, 0})

static inline void
s_clear(pd_msg_t *m)
{
#define PD_MSG(name, id, dir)
#define PD_F(name, key, type, doc) S_CLEAR_##type(m, key);
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
}

/*  A key other than a positive fixint below PD_F__COUNT, at p: validated and skipped. An
 *  integer naming one of our fields in a longer form names it; any other key (a field of a newer
 *  peer) sets *f to PD_F__COUNT, which names no field, so that its value is skipped. */
__attribute__((noinline)) static const unsigned char *
s_key(const unsigned char *p, const unsigned char *end, unsigned *f)
{
    const unsigned char *next = s_skip(p, end, 2);
    int64_t v;
    bool big;
    *f = PD_F__COUNT;
    if (next && s_int(p, end, &v, &big) && !big && v >= 0 && v < PD_F__COUNT)
        *f = (unsigned)v;
    return next;
}

/*  A RAW field at p: validated, its bytes kept in *bytes, then (with a zone) unpacked alone
 *  into zone (what it allocates is bounded by its bytes, which s_skip walked). Sets *out;
 *  returns the byte after it, or NULL. Kept out of line with s_key, so that the loop over the
 *  common fields keeps its registers. */
__attribute__((noinline)) static const unsigned char *
s_raw(const char *buf, const unsigned char *p, const unsigned char *end, msgpack_zone *zone,
      const msgpack_object **out, pd_str_t *bytes)
{
    const unsigned char *q = s_skip(p, end, 2);
    if (!q)
        return NULL;
    *bytes = (pd_str_t){(const char *)p, (size_t)(q - p)};
    if (!zone)
        return q;
    size_t off = (size_t)((const char *)p - buf);
    msgpack_object obj;
    if (msgpack_unpack(buf, (size_t)((const char *)q - buf), &off, zone, &obj) !=
        MSGPACK_UNPACK_SUCCESS)
        return NULL;
    msgpack_object *o = msgpack_zone_malloc(zone, sizeof *o);
    if (!o)
        return NULL;
    *o = obj;
    *out = o;
    return q;
}

int
pd_msg_decode(pd_msg_t *m, const char *buf, size_t len, size_t *off, msgpack_zone *zone)
{
    if (*off >= len)
        return 1;
    const unsigned char *start = (const unsigned char *)buf + *off;
    const unsigned char *end = (const unsigned char *)buf + len;
    /* [version, type, rid, {fields}]: fixarray 4, fixint version, fixint type, uint64 rid at
     * its fixed offset (pd_msgw_forward patches it), then a map. */
    if (end - start < 13 || start[0] != 0x94 || start[1] != PD_PROTO_VERSION ||
        start[2] >= 0x80 || !s_type_known[start[2]] || start[3] != 0xcf)
        return -1;
    const unsigned char *p = start + 12;
    unsigned b = *p++;
    uint64_t npairs;
    if (b >= 0x80 && b <= 0x8f) {
        npairs = b & 0x0f;
    } else if (b == 0xde || b == 0xdf) {
        unsigned lb = b == 0xde ? 2 : 4;
        if ((size_t)(end - p) < lb)
            return -1;
        npairs = s_be(p, lb);
        p += lb;
    } else {
        return -1;
    }
    s_clear(m);
    m->type = start[2];
    m->rid = s_be(start + 4, 8);
    uint64_t present = 0; //  a local: stores through m->s[] might alias m->present
    /* Each pair takes at least two bytes, so a huge count fails when the bytes run out. */
    for (; npairs; npairs--) {
        if (end - p < 2)
            return -1;
        unsigned f = *p++; //  the key of every field we write: a positive fixint
        if (f >= PD_F__COUNT) {
            p = s_key(p - 1, end, &f);
            if (!p || p == end)
                return -1;
        }
        switch (s_field_type[f]) {
        case T_STR:
            p = s_str(p, end, &m->s[f]);
            if (!p)
                return -1;
            break;
        case T_INT: {
            bool big;
            p = s_int(p, end, &m->i[f], &big);
            if (!p || big)
                return -1;
            break;
        }
        case T_RAW:
            p = s_raw(buf, p, end, zone, &m->o[f], &m->s[f]);
            if (!p)
                return -1;
            break;
        default: //  key 0, or a key that names no field of ours
            p = s_skip(p, end, 2);
            if (!p)
                return -1;
            continue;
        }
        present |= 1ULL << f;
    }
    m->present = present;
    m->raw = (const char *)start;
    m->raw_len = (size_t)(p - start);
    *off = (size_t)((const char *)p - buf);
    return 0;
}

int
pd_msg_each(const void *buf, size_t len, msgpack_zone *zone, pd_msg_fn fn, void *arg)
{
    size_t off = 0;
    pd_msg_t m;
    int r, n = 0;
    while ((r = pd_msg_decode(&m, buf, len, &off, zone)) == 0) {
        fn(&m, arg);
        n++;
    }
    if (zone)
        msgpack_zone_clear(zone);
    return r < 0 ? -1 : n;
}

/*  ------------------------------------------------------------------------------------------
 *  Reading in place (pd_mpr_*): the decoder's own readers, over a cursor. */

int
pd_mpr_type(const pd_mpr_t *r)
{
    if (r->p >= r->end)
        return PD_MPR_END;
    unsigned b = *r->p;
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3))
        return PD_MPR_INT;
    if (b == 0xc0)
        return PD_MPR_NIL;
    if (b == 0xca || b == 0xcb)
        return PD_MPR_FLOAT;
    if ((b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb) || (b >= 0xc4 && b <= 0xc6))
        return PD_MPR_STR;
    if ((b >= 0x90 && b <= 0x9f) || b == 0xdc || b == 0xdd)
        return PD_MPR_ARRAY;
    return PD_MPR_OTHER;
}

bool
pd_mpr_array(pd_mpr_t *r, uint32_t *n)
{
    if (pd_mpr_type(r) != PD_MPR_ARRAY)
        return false;
    unsigned b = *r->p;
    if (b <= 0x9f) {
        *n = b & 0x0f;
        r->p++;
        return true;
    }
    unsigned lb = b == 0xdc ? 2 : 4;
    if ((size_t)(r->end - r->p) < 1 + lb)
        return false;
    *n = (uint32_t)s_be(r->p + 1, lb);
    r->p += 1 + lb;
    return true;
}

bool
pd_mpr_str(pd_mpr_t *r, pd_str_t *s)
{
    const unsigned char *q = r->p < r->end ? s_str(r->p, r->end, s) : NULL;
    if (!q)
        return false;
    r->p = q;
    return true;
}

bool
pd_mpr_int(pd_mpr_t *r, int64_t *v)
{
    bool big;
    const unsigned char *q = r->p < r->end ? s_int(r->p, r->end, v, &big) : NULL;
    if (!q || big)
        return false;
    r->p = q;
    return true;
}

bool
pd_mpr_float(pd_mpr_t *r, double *d)
{
    if (pd_mpr_type(r) != PD_MPR_FLOAT)
        return false;
    unsigned n = *r->p == 0xca ? 4 : 8;
    if ((size_t)(r->end - r->p) < 1 + n)
        return false;
    uint64_t u = s_be(r->p + 1, n);
    if (n == 4) {
        uint32_t u32 = (uint32_t)u;
        float f;
        memcpy(&f, &u32, 4);
        *d = f;
    } else {
        memcpy(d, &u, 8);
    }
    r->p += 1 + n;
    return true;
}

bool
pd_mpr_nil(pd_mpr_t *r)
{
    if (pd_mpr_type(r) != PD_MPR_NIL)
        return false;
    r->p++;
    return true;
}

bool
pd_mpr_skip(pd_mpr_t *r)
{
    const unsigned char *q = r->p < r->end ? s_skip(r->p, r->end, 0) : NULL;
    if (!q)
        return false;
    r->p = q;
    return true;
}

/*  ------------------------------------------------------------------------------------------
 *  Encoding: straight into the batch's sbuffer, one room check per field, byte for byte what
 *  msgpack_pack_uint8 (the key) and msgpack_pack_int64 / msgpack_pack_str_with_body (the
 *  value) write (pd_msg_test compares the two). RAW values still go through w->pk. */

//  Grows sb for n more bytes (pd_grow: huge pages for a large batch).
static void
s_grow(msgpack_sbuffer *sb, size_t n)
{
    sb->data = pd_grow(sb->data, &sb->alloc, sb->size + n, MSGPACK_SBUFFER_INIT_SIZE);
}

static inline unsigned char *
s_room(pd_msgw_t *w, size_t n)
{
    if (w->sb.alloc - w->sb.size < n)
        s_grow(&w->sb, n);
    return (unsigned char *)w->sb.data + w->sb.size;
}

//  Writes the low n (1, 2, 4 or 8) bytes of v big-endian at d; returns the byte after them.
static inline unsigned char *
s_put_be(unsigned char *d, uint64_t v, unsigned n)
{
    uint16_t v16;
    uint32_t v32;
    switch (n) {
    case 1:
        d[0] = (unsigned char)v;
        break;
    case 2:
        v16 = __builtin_bswap16((uint16_t)v);
        memcpy(d, &v16, 2);
        break;
    case 4:
        v32 = __builtin_bswap32((uint32_t)v);
        memcpy(d, &v32, 4);
        break;
    default:
        v = __builtin_bswap64(v);
        memcpy(d, &v, 8);
        break;
    }
    return d + n;
}

//  A field key, as msgpack_pack_uint8 writes it.
static inline unsigned char *
s_put_key(unsigned char *d, int field)
{
    uint8_t k = (uint8_t)field;
    if (k >= 0x80)
        *d++ = 0xcc;
    *d++ = k;
    return d;
}

void
pd_msgw_init(pd_msgw_t *w)
{
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
    w->nfields = 0;
    w->count = 0;
    w->map_pos = 0;
}

void
pd_msgw_destroy(pd_msgw_t *w)
{
    msgpack_sbuffer_destroy(&w->sb);
}

void
pd_msgw_reset(pd_msgw_t *w)
{
    msgpack_sbuffer_clear(&w->sb);
    w->count = 0;
}

void
pd_msgw_begin(pd_msgw_t *w, int type, uint64_t rid)
{
    unsigned char *d = s_room(w, 17);
    d[0] = 0x94;                  /* fixarray of 4 */
    d[1] = PD_PROTO_VERSION;      /* positive fixint */
    d[2] = (unsigned char)type;   /* positive fixint (< 128) */
    d[3] = 0xcf;                  /* uint64, always 9 bytes */
    s_put_be(d + 4, rid, 8);
    d[12] = 0xdf;                 /* map32; count patched in pd_msgw_end */
    memset(d + 13, 0, 4);
    w->map_pos = w->sb.size + 12;
    w->nfields = 0;
    w->sb.size += 17;
}

void
pd_msgw_str(pd_msgw_t *w, int field, const char *p, size_t n)
{
    unsigned char *d = s_room(w, 7 + n), *d0 = d;
    d = s_put_key(d, field);
    if (n < 32) {
        *d++ = (unsigned char)(0xa0 | n);
    } else if (n < 256) {
        *d++ = 0xd9;
        *d++ = (unsigned char)n;
    } else if (n < 65536) {
        *d++ = 0xda;
        d = s_put_be(d, n, 2);
    } else {
        *d++ = 0xdb;
        d = s_put_be(d, (uint32_t)n, 4);
    }
    if (n && p) /* as msgpack_sbuffer_write: no bytes from NULL */
        memcpy(d, p, n), d += n;
    w->sb.size += (size_t)(d - d0);
    w->nfields++;
}

void
pd_msgw_int(pd_msgw_t *w, int field, int64_t v)
{
    unsigned char *d = s_room(w, 11), *d0 = d;
    d = s_put_key(d, field);
    if (v >= 0 && v < 128) {
        *d++ = (unsigned char)v;
    } else if (v < 0) {
        if (v >= -32)
            *d++ = (unsigned char)(int8_t)v;
        else if (v >= -128)
            *d++ = 0xd0, d = s_put_be(d, (uint64_t)v, 1);
        else if (v >= -32768)
            *d++ = 0xd1, d = s_put_be(d, (uint64_t)v, 2);
        else if (v >= INT32_MIN)
            *d++ = 0xd2, d = s_put_be(d, (uint64_t)v, 4);
        else
            *d++ = 0xd3, d = s_put_be(d, (uint64_t)v, 8);
    } else if (v < 256) {
        *d++ = 0xcc, *d++ = (unsigned char)v;
    } else if (v < 65536) {
        *d++ = 0xcd, d = s_put_be(d, (uint64_t)v, 2);
    } else if (v <= UINT32_MAX) {
        *d++ = 0xce, d = s_put_be(d, (uint64_t)v, 4);
    } else {
        *d++ = 0xcf, d = s_put_be(d, (uint64_t)v, 8);
    }
    w->sb.size += (size_t)(d - d0);
    w->nfields++;
}

void
pd_msgw_raw(pd_msgw_t *w, int field)
{
    unsigned char *d = s_room(w, 2);
    w->sb.size += (size_t)(s_put_key(d, field) - d);
    w->nfields++;
}

void
pd_msgw_end(pd_msgw_t *w)
{
    s_put_be((unsigned char *)w->sb.data + w->map_pos + 1, w->nfields, 4);
    w->count++;
}

void
pd_msgw_copy(pd_msgw_t *w, const pd_msg_t *m, uint64_t rid, uint64_t skip)
{
    pd_msgw_begin(w, m->type, rid);
    for (int f = 1; f < PD_F__COUNT; f++) {
        if (!pd_msg_has(m, f) || ((skip >> f) & 1))
            continue;
        switch (s_field_type[f]) {
        case T_STR:
            pd_msgw_s(w, f, m->s[f]);
            break;
        case T_INT:
            pd_msgw_int(w, f, m->i[f]);
            break;
        case T_RAW: /* its bytes as they came (validated) */
            pd_msgw_raw(w, f);
            memcpy(s_room(w, m->s[f].len), m->s[f].ptr, m->s[f].len);
            w->sb.size += m->s[f].len;
            break;
        }
    }
}

void
pd_msgw_forward(pd_msgw_t *w, const pd_msg_t *m, uint64_t rid)
{
    size_t at = w->sb.size;
    memcpy(s_room(w, m->raw_len), m->raw, m->raw_len);
    w->sb.size += m->raw_len;
    s_put_be((unsigned char *)w->sb.data + at + 4, rid, 8);
    w->count++;
}

void
pd_msgw_reserve(pd_msgw_t *w, size_t n)
{
    s_room(w, n);
}

void
pd_msgw_append(pd_msgw_t *w, const void *p, size_t n, uint32_t count)
{
    if (n)
        memcpy(s_room(w, n), p, n);
    w->sb.size += n;
    w->count += count;
}

void
pd_msg_test(bool verbose)
{
    (void)verbose;
    pd_msgw_t w;
    pd_msgw_init(&w);
    pd_msgw_begin(&w, PD_MSG_UPSERT, 42);
    pd_msgw_s(&w, PD_F_PROJECT, PD_STR("demo"));
    pd_msgw_s(&w, PD_F_ID, PD_STR("alice"));
    pd_msgw_int(&w, PD_F_EXPIRES, 1700000000123);
    pd_msgw_int(&w, PD_F_VERSION, -5);
    pd_msgw_raw(&w, PD_F_ITEMS);
    msgpack_pack_array(&w.pk, 1);
    msgpack_pack_str_with_body(&w.pk, "x", 1);
    pd_msgw_end(&w);
    pd_msgw_begin(&w, PD_MSG_HELLO, 7);
    pd_msgw_end(&w);

    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    size_t off = 0;
    pd_msg_t m;
    PD_CHECK(pd_msg_decode(&m, w.sb.data, w.sb.size, &off, &zone) == 0);
    PD_CHECK(m.type == PD_MSG_UPSERT && m.rid == 42);
    PD_CHECK(pd_str_eqc(m.s[PD_F_PROJECT], "demo") && pd_str_eqc(m.s[PD_F_ID], "alice"));
    PD_CHECK(m.i[PD_F_EXPIRES] == 1700000000123 && m.i[PD_F_VERSION] == -5);
    PD_CHECK(!pd_msg_has(&m, PD_F_USER) && m.s[PD_F_USER].len == 0);
    PD_CHECK(m.o[PD_F_ITEMS] && m.o[PD_F_ITEMS]->via.array.size == 1);
    PD_CHECK(m.s[PD_F_ITEMS].len == 3 && memcmp(m.s[PD_F_ITEMS].ptr, "\x91\xa1x", 3) == 0);
    {
        /* Without a zone: the same fields, RAW ones as their bytes only. */
        pd_msg_t lz;
        size_t lo = 0;
        PD_CHECK(pd_msg_decode(&lz, w.sb.data, w.sb.size, &lo, NULL) == 0 && lo == off);
        PD_CHECK(lz.o[PD_F_ITEMS] == NULL && pd_msg_has(&lz, PD_F_ITEMS) &&
                 pd_str_eq(lz.s[PD_F_ITEMS], m.s[PD_F_ITEMS]) && lz.i[PD_F_VERSION] == -5);
        pd_mpr_t r = pd_mpr(lz.s[PD_F_ITEMS]);
        uint32_t n;
        pd_str_t x;
        PD_CHECK(pd_mpr_type(&r) == PD_MPR_ARRAY && pd_mpr_array(&r, &n) && n == 1);
        PD_CHECK(!pd_mpr_int(&r, &(int64_t){0}) && !pd_mpr_array(&r, &n)); /* r unmoved */
        PD_CHECK(pd_mpr_str(&r, &x) && pd_str_eqc(x, "x") && r.p == r.end);
        PD_CHECK(pd_mpr_type(&r) == PD_MPR_END && !pd_mpr_skip(&r) && !pd_mpr_str(&r, &x));
        /* A copy writes a RAW field's bytes as they came, decoded with a zone or not. */
        pd_msgw_t wc;
        pd_msgw_init(&wc);
        pd_msgw_copy(&wc, &lz, 9, 0);
        pd_msgw_end(&wc);
        pd_msg_t mc;
        size_t co = 0;
        PD_CHECK(pd_msg_decode(&mc, wc.sb.data, wc.sb.size, &co, &zone) == 0 && mc.rid == 9);
        PD_CHECK(mc.o[PD_F_ITEMS] && mc.o[PD_F_ITEMS]->via.array.size == 1 &&
                 pd_str_eq(mc.s[PD_F_ITEMS], m.s[PD_F_ITEMS]) &&
                 pd_str_eqc(mc.s[PD_F_ID], "alice") && mc.i[PD_F_EXPIRES] == 1700000000123);
        pd_msgw_destroy(&wc);
        /* Every reader at each type, and refusals that leave the reader where it was. */
        static const char mixed[] = "\x97\xc0\xd0\x80\xcf\xff\xff\xff\xff\xff\xff\xff\xff"
                                    "\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18\xc4\x02hi"
                                    "\x92\x01\x81\x01\x02\xc3";
        r = pd_mpr((pd_str_t){mixed, sizeof mixed - 1});
        int64_t v;
        double d;
        PD_CHECK(pd_mpr_array(&r, &n) && n == 7);
        PD_CHECK(pd_mpr_type(&r) == PD_MPR_NIL && !pd_mpr_int(&r, &v) && pd_mpr_nil(&r));
        PD_CHECK(pd_mpr_int(&r, &v) && v == -128);
        const unsigned char *at = r.p; /* a uint64 over INT64_MAX: no int64, but skipped */
        PD_CHECK(pd_mpr_type(&r) == PD_MPR_INT && !pd_mpr_int(&r, &v) && r.p == at);
        PD_CHECK(pd_mpr_skip(&r) && r.p == at + 9);
        PD_CHECK(pd_mpr_float(&r, &d) && d > 3.14159 && d < 3.1416);
        PD_CHECK(pd_mpr_type(&r) == PD_MPR_STR && pd_mpr_str(&r, &x) && pd_str_eqc(x, "hi"));
        PD_CHECK(pd_mpr_skip(&r) && pd_mpr_type(&r) == PD_MPR_OTHER && pd_mpr_skip(&r));
        PD_CHECK(r.p == r.end);
        r = pd_mpr((pd_str_t){mixed, 5}); /* cut short inside the uint64 */
        PD_CHECK(pd_mpr_array(&r, &n) && pd_mpr_nil(&r) && pd_mpr_int(&r, &v));
        PD_CHECK(!pd_mpr_int(&r, &v) && !pd_mpr_skip(&r) &&
                 r.p == (const unsigned char *)mixed + 4);
    }

    /* forward with a new rid, then decode the copy */
    pd_msgw_t w2;
    pd_msgw_init(&w2);
    pd_msgw_forward(&w2, &m, 0x0102030405060708ULL);
    pd_msg_t m2;
    size_t off2 = 0;
    PD_CHECK(pd_msg_decode(&m2, w2.sb.data, w2.sb.size, &off2, &zone) == 0);
    PD_CHECK(m2.rid == 0x0102030405060708ULL && pd_str_eqc(m2.s[PD_F_ID], "alice"));

    PD_CHECK(pd_msg_decode(&m, w.sb.data, w.sb.size, &off, &zone) == 0);
    PD_CHECK(m.type == PD_MSG_HELLO && m.rid == 7);
    PD_CHECK(pd_msg_decode(&m, w.sb.data, w.sb.size, &off, &zone) == 1);

    /* garbage, truncation, wrong version, unknown type */
    const char junk[] = "\x94\x02\x01\xcf\0\0\0\0\0\0\0\0\x80";
    off = 0;
    PD_CHECK(pd_msg_decode(&m, junk, sizeof junk - 1, &off, &zone) == -1);
    off = 0;
    PD_CHECK(pd_msg_decode(&m, w.sb.data, 10, &off, &zone) == -1);
    const char unk[] = "\x94\x01\x7f\xcf\0\0\0\0\0\0\0\0\x80";
    off = 0;
    PD_CHECK(pd_msg_decode(&m, unk, sizeof unk - 1, &off, &zone) == -1);
    /* a header claiming 2^32 elements must be refused without allocating */
    const char huge[] = "\xdd\xff\xff\xff\xff\x01";
    off = 0;
    PD_CHECK(pd_msg_decode(&m, huge, sizeof huge - 1, &off, &zone) == -1);
    const char hugemap[] = "\x94\x01\x01\xcf\0\0\0\0\0\0\0\0\xdf\x7f\xff\xff\xff";
    off = 0;
    PD_CHECK(pd_msg_decode(&m, hugemap, sizeof hugemap - 1, &off, &zone) == -1);

    /* The writer's bytes are msgpack-c's, at every length and value boundary. */
    static const int64_t ints[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295LL,
                                   4294967296LL, INT64_MAX, -1, -31, -32, -33, -127, -128, -129,
                                   -32767, -32768, -32769, INT32_MIN, (int64_t)INT32_MIN - 1,
                                   INT64_MIN, 1700000000123};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 70000};
    char *text = calloc(1, 70000);
    PD_CHECK(text);
    msgpack_sbuffer ref;
    msgpack_sbuffer_init(&ref);
    msgpack_packer rp;
    msgpack_packer_init(&rp, &ref, msgpack_sbuffer_write);
    pd_msgw_reset(&w);
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
        pd_msgw_int(&w, PD_F_EXPIRES, ints[k]);
        msgpack_pack_uint8(&rp, PD_F_EXPIRES);
        msgpack_pack_int64(&rp, ints[k]);
    }
    for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
        memset(text, 'a' + (int)k, lens[k]);
        pd_msgw_str(&w, PD_F_BODY, text, lens[k]);
        msgpack_pack_uint8(&rp, PD_F_BODY);
        msgpack_pack_str_with_body(&rp, text, lens[k]);
    }
    pd_msgw_raw(&w, 200);
    msgpack_pack_uint8(&rp, 200);
    PD_CHECK(w.sb.size == ref.size && memcmp(w.sb.data, ref.data, ref.size) == 0);

    /* ... and decode to what was written, in one message whose buffer grew on the way. */
    pd_msgw_reset(&w);
    pd_msgw_begin(&w, PD_MSG_REPLY, UINT64_MAX);
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++)
        pd_msgw_int(&w, PD_F_EXPIRES, ints[k]); //  the last one wins
    pd_msgw_str(&w, PD_F_BODY, text, 70000);
    pd_msgw_str(&w, PD_F_MESSAGE, text, 255);
    pd_msgw_end(&w);
    off = 0;
    PD_CHECK(pd_msg_decode(&m, w.sb.data, w.sb.size, &off, &zone) == 0 && off == w.sb.size);
    PD_CHECK(m.type == PD_MSG_REPLY && m.rid == UINT64_MAX && m.raw_len == w.sb.size);
    PD_CHECK(m.i[PD_F_EXPIRES] == 1700000000123 && m.s[PD_F_BODY].len == 70000 &&
             m.s[PD_F_BODY].ptr > w.sb.data && m.s[PD_F_MESSAGE].len == 255);
    PD_CHECK(m.present == (1ULL << PD_F_EXPIRES | 1ULL << PD_F_BODY | 1ULL << PD_F_MESSAGE));
    PD_CHECK(m.s[PD_F_ID].len == 0 && m.i[PD_F_VERSION] == 0 && m.o[PD_F_ITEMS] == NULL);

    /* Keys and values in other forms than ours: an integer key in a longer form names its
     * field, any other key is ignored with its value, int8 and bin are accepted. */
    static const char other[] =
        "\x94\x01\x14\xcf\0\0\0\0\0\0\0\x09\xde\0\x07"
        "\xcc\x02\xa1x"         /* ID "x", key as uint8 */
        "\xd0\x0f\xd0\xfe"      /* VERSION -2, key and value as int8 */
        "\xc4\x01\x01\x91\xa1y" /* a bin key: ignored, with its value */
        "\x7f\x81\xc0\xc0"      /* field 127 (a newer peer's): ignored */
        "\xff\x00"              /* a negative key: ignored */
        "\x13\xc4\x02{}"        /* BODY as bin */
        "\x00\x01";             /* key 0 names no field */
    off = 0;
    PD_CHECK(pd_msg_decode(&m, other, sizeof other - 1, &off, &zone) == 0);
    PD_CHECK(off == sizeof other - 1 && m.rid == 9 && pd_str_eqc(m.s[PD_F_ID], "x"));
    PD_CHECK(m.i[PD_F_VERSION] == -2 && pd_str_eqc(m.s[PD_F_BODY], "{}"));
    PD_CHECK(m.present == (1ULL << PD_F_ID | 1ULL << PD_F_VERSION | 1ULL << PD_F_BODY));

    /* Refused: a header in another layout, a value of the wrong type, a uint64 above
     * INT64_MAX, a cut string, a map shorter than its count, the byte 0xc1. */
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
#define BAD(lit) {lit, sizeof lit - 1}
        BAD("\xdc\x00\x04\xcf\0\0\0\0\0\0\0\x01\x02\xcf\0\0\0\0\0\0\0\0\x80"),
        BAD("\x94\xcc\x01\xcf\0\0\0\0\0\0\0\x02\xcf\0\0\0\0\0\0\0\0\x80"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x90"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x02\x05"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x0c\xa1x"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x0c\xcb\0\0\0\0\0\0\0\0"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x0c\xcf\x80\0\0\0\0\0\0\0"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x02\xa5" "abcd"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x82\x02\xa1x"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x7f\xc1"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\xc1\x01"),
        BAD("\x94\x01\x02\xcf\0\0\0\0\0\0\0\0\x81\x1d\xdd\xff\xff\xff\xff\x01"),
#undef BAD
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        off = 0;
        PD_CHECK(pd_msg_decode(&m, bad[k].bytes, bad[k].len, &off, &zone) == -1 && off == 0);
    }

    /* Nesting: like msgpack-c, at most 32 containers open, the message's array and map
     * included; RAW fields (ITEMS) and ignored fields alike. */
    for (int f = 0; f < 2; f++) {
        for (int depth = 28; depth <= 32; depth++) {
            pd_msgw_reset(&w);
            pd_msgw_begin(&w, PD_MSG_LIST_PAGE, 1);
            pd_msgw_raw(&w, f ? PD_F_ITEMS : 100);
            for (int k = 0; k < depth - 1; k++)
                msgpack_pack_array(&w.pk, 1);
            msgpack_pack_array(&w.pk, 0);
            pd_msgw_end(&w);
            size_t o2 = 0;
            msgpack_object obj;
            bool ref_ok = msgpack_unpack(w.sb.data, w.sb.size, &o2, &zone, &obj) ==
                          MSGPACK_UNPACK_SUCCESS;
            off = 0;
            int r = pd_msg_decode(&m, w.sb.data, w.sb.size, &off, &zone);
            PD_CHECK(ref_ok == (depth <= 30) && r == (ref_ok ? 0 : -1));
            PD_CHECK(r < 0 || (f ? m.o[PD_F_ITEMS]->via.array.size == 1 : m.present == 0));
        }
    }
    msgpack_sbuffer_destroy(&ref);
    free(text);
    msgpack_zone_destroy(&zone);
    pd_msgw_destroy(&w);
    pd_msgw_destroy(&w2);
}
