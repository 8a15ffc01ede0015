/*  pd_msg — see pd_msg.h and pd_msg.def. */
#include "pd_msg.h"

#include <assert.h>
#include <stdio.h>

enum { T_STR = 1, T_INT = 2, T_RAW = 3 };
#define STR T_STR
#define INT T_INT
#define RAW T_RAW

static const unsigned char s_field_type[PD_F__COUNT] = {
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

static bool
s_known_type(int type)
{
    return pd_msg_name(type)[0] != '?';
}

/*  msgpack-c allocates an array's or map's elements for the count the header claims before it
 *  reads them, so five bytes claiming 2^32 elements make it ask for 96 GiB. This walk checks one
 *  object without allocating: every container must fit in the bytes left (each element takes at
 *  least one byte) and every length must lie inside the buffer. Only then is msgpack_unpack
 *  called, so what it allocates is bounded by a small multiple of the frame size. */
static bool
s_sane(const unsigned char *p, size_t len)
{
    size_t need = 1, i = 0;
    while (need) {
        if (i >= len)
            return false;
        unsigned b = p[i++];
        need--;
        size_t skip = 0, n = 0, per = 0, lenbytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            continue;
        } else if (b >= 0x80 && b <= 0x8f) {
            n = b & 0x0f, per = 2;
        } else if (b >= 0x90 && b <= 0x9f) {
            n = b & 0x0f, per = 1;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xc7: lenbytes = 1; skip = 1; break;
            case 0xc8: lenbytes = 2; skip = 1; break;
            case 0xc9: lenbytes = 4; skip = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xdd: case 0xde: case 0xdf: {
                size_t nb = (b == 0xdc || b == 0xde) ? 2 : 4;
                if (len - i < nb)
                    return false;
                for (size_t k = 0; k < nb; k++)
                    n = (n << 8) | p[i + k];
                i += nb;
                per = (b >= 0xde) ? 2 : 1;
                break;
            }
            default:
                return false; /* 0xc1: never used */
            }
        }
        if (lenbytes) {
            if (len - i < lenbytes)
                return false;
            size_t l = 0;
            for (size_t k = 0; k < lenbytes; k++)
                l = (l << 8) | p[i + k];
            i += lenbytes;
            skip += l;
        }
        if (skip) {
            if (len - i < skip)
                return false;
            i += skip;
        }
        if (per) {
            if (n > (len - i) / per + 1 || n * per > len)
                return false;
            need += n * per;
            if (need > len - i + 1)
                return false;
        }
    }
    return true;
}

int
pd_msg_decode(pd_msg_t *m, const char *buf, size_t len, size_t *off, msgpack_zone *zone)
{
    if (*off >= len)
        return 1;
    size_t start = *off;
    if (!s_sane((const unsigned char *)buf + start, len - start))
        return -1;
    msgpack_object obj;
    msgpack_unpack_return r = msgpack_unpack(buf, len, off, zone, &obj);
    if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_EXTRA_BYTES)
        return -1;
    /* [version, type, rid, {fields}] */
    if (obj.type != MSGPACK_OBJECT_ARRAY || obj.via.array.size != 4)
        return -1;
    const msgpack_object *a = obj.via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[0].via.u64 != PD_PROTO_VERSION)
        return -1;
    if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > 255 ||
        !s_known_type((int)a[1].via.u64))
        return -1;
    if (a[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[3].type != MSGPACK_OBJECT_MAP)
        return -1;
    /* The rid must sit at its fixed offset so that pd_msgw_forward can patch it. */
    if (*off - start < 12 || (unsigned char)buf[start + 3] != 0xcf)
        return -1;
    m->type = (int)a[1].via.u64;
    m->rid = a[2].via.u64;
    m->present = 0;
    memset(m->s, 0, sizeof m->s); /* absent fields read as empty */
    memset(m->i, 0, sizeof m->i);
    memset(m->o, 0, sizeof m->o);
    m->raw = buf + start;
    m->raw_len = *off - start;
    const msgpack_object_map *map = &a[3].via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (k->type != MSGPACK_OBJECT_POSITIVE_INTEGER || k->via.u64 >= PD_F__COUNT)
            continue; /* unknown field from a newer peer: ignore */
        int f = (int)k->via.u64;
        switch (s_field_type[f]) {
        case 1:
            if (v->type != MSGPACK_OBJECT_STR && v->type != MSGPACK_OBJECT_BIN)
                return -1;
            m->s[f].ptr = v->via.str.ptr;
            m->s[f].len = v->via.str.size;
            break;
        case 2:
            if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                if (v->via.u64 > INT64_MAX)
                    return -1;
                m->i[f] = (int64_t)v->via.u64;
            } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                m->i[f] = v->via.i64;
            } else {
                return -1;
            }
            break;
        case 3:
            m->o[f] = v;
            break;
        default:
            continue;
        }
        m->present |= 1ULL << f;
    }
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
    msgpack_zone_clear(zone);
    return r < 0 ? -1 : n;
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
    unsigned char hdr[17];
    hdr[0] = 0x94;                  /* fixarray of 4 */
    hdr[1] = PD_PROTO_VERSION;      /* positive fixint */
    hdr[2] = (unsigned char)type;   /* positive fixint (< 128) */
    hdr[3] = 0xcf;                  /* uint64, always 9 bytes */
    for (int i = 0; i < 8; i++)
        hdr[4 + i] = (unsigned char)(rid >> (56 - 8 * i));
    hdr[12] = 0xdf;                 /* map32; count patched in pd_msgw_end */
    memset(hdr + 13, 0, 4);
    w->map_pos = w->sb.size + 12;
    w->nfields = 0;
    msgpack_sbuffer_write(&w->sb, (const char *)hdr, sizeof hdr);
}

void
pd_msgw_str(pd_msgw_t *w, int field, const char *p, size_t n)
{
    msgpack_pack_uint8(&w->pk, (uint8_t)field);
    msgpack_pack_str_with_body(&w->pk, p, n);
    w->nfields++;
}

void
pd_msgw_int(pd_msgw_t *w, int field, int64_t v)
{
    msgpack_pack_uint8(&w->pk, (uint8_t)field);
    msgpack_pack_int64(&w->pk, v);
    w->nfields++;
}

void
pd_msgw_raw(pd_msgw_t *w, int field)
{
    msgpack_pack_uint8(&w->pk, (uint8_t)field);
    w->nfields++;
}

void
pd_msgw_end(pd_msgw_t *w)
{
    unsigned char *p = (unsigned char *)w->sb.data + w->map_pos + 1;
    p[0] = (unsigned char)(w->nfields >> 24);
    p[1] = (unsigned char)(w->nfields >> 16);
    p[2] = (unsigned char)(w->nfields >> 8);
    p[3] = (unsigned char)w->nfields;
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
        case 1:
            pd_msgw_s(w, f, m->s[f]);
            break;
        case 2:
            pd_msgw_int(w, f, m->i[f]);
            break;
        case 3:
            pd_msgw_raw(w, f);
            msgpack_pack_object(&w->pk, *m->o[f]);
            break;
        }
    }
}

void
pd_msgw_forward(pd_msgw_t *w, const pd_msg_t *m, uint64_t rid)
{
    size_t at = w->sb.size;
    msgpack_sbuffer_write(&w->sb, m->raw, m->raw_len);
    unsigned char *p = (unsigned char *)w->sb.data + at + 4;
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(rid >> (56 - 8 * i));
    w->count++;
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
    msgpack_zone_destroy(&zone);
    pd_msgw_destroy(&w);
    pd_msgw_destroy(&w2);
}
