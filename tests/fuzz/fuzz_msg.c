/*  fuzz_msg — the internal message decoder (pd_msg_decode) on arbitrary frames, as a buggy or
 *  hostile peer could send them: every message decodes or is refused, nothing crashes, and a
 *  decoded message re-encodes (pd_msgw_copy) to bytes that decode to the same fields.
 *
 *  pd_msg_decode reads the bytes itself. s_ref_decode below is the decoder it replaced (a
 *  bounds walk, then msgpack_unpack of the whole message into a tree, then the fields), kept
 *  here as the reference: the two must accept the same messages and agree on every field. The
 *  one intended difference, the header layout, is required of both. */
#include <assert.h>

#include "pd_msg.h"
#include "pd_record.h"

static const unsigned char s_type[PD_F__COUNT] = {
#define PD_MSG(name, id, dir)
#define PD_F(name, key, type, doc) [key] = #type[0],
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
};

static bool
s_known(uint64_t type)
{
    switch (type) {
#define PD_MSG(name, id, dir) case id:
#define PD_F(name, key, type, doc)
#include "pd_msg.def"
#undef PD_MSG
#undef PD_F
        return true;
    }
    return false;
}

/*  msgpack-c allocates an array's or map's elements for the count the header claims before it
 *  reads them: this walk bounds every count by the bytes left before msgpack_unpack runs. */
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
                return false;
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

static int
s_ref_decode(pd_msg_t *m, const char *buf, size_t len, size_t *off, msgpack_zone *zone)
{
    if (*off >= len)
        return 1;
    size_t start = *off;
    const unsigned char *h = (const unsigned char *)buf + start;
    if (len - start < 4 || h[0] != 0x94 || h[1] != 0x01 || h[2] >= 0x80 || h[3] != 0xcf)
        return -1; //  the header layout both require
    if (!s_sane(h, len - start))
        return -1;
    msgpack_object obj;
    msgpack_unpack_return r = msgpack_unpack(buf, len, off, zone, &obj);
    if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_EXTRA_BYTES)
        return -1;
    if (obj.type != MSGPACK_OBJECT_ARRAY || obj.via.array.size != 4)
        return -1;
    const msgpack_object *a = obj.via.array.ptr;
    if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || !s_known(a[1].via.u64) ||
        a[3].type != MSGPACK_OBJECT_MAP)
        return -1;
    memset(m, 0, sizeof *m);
    m->type = (int)a[1].via.u64;
    m->rid = a[2].via.u64;
    m->raw = buf + start;
    m->raw_len = *off - start;
    const msgpack_object_map *map = &a[3].via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (k->type != MSGPACK_OBJECT_POSITIVE_INTEGER || k->via.u64 >= PD_F__COUNT)
            continue;
        int f = (int)k->via.u64;
        switch (s_type[f]) {
        case 'S':
            if (v->type != MSGPACK_OBJECT_STR && v->type != MSGPACK_OBJECT_BIN)
                return -1;
            m->s[f].ptr = v->via.str.ptr;
            m->s[f].len = v->via.str.size;
            break;
        case 'I':
            if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
                m->i[f] = (int64_t)v->via.u64;
            else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                m->i[f] = v->via.i64;
            else
                return -1;
            break;
        case 'R':
            m->o[f] = v;
            break;
        default:
            continue;
        }
        m->present |= 1ULL << f;
    }
    return 0;
}

//  True if two objects pack to the same bytes (msgpack_object_equal has NaN != NaN).
static bool
s_obj_same(const msgpack_object *a, const msgpack_object *b)
{
    msgpack_sbuffer x, y;
    msgpack_packer px, py;
    msgpack_sbuffer_init(&x);
    msgpack_sbuffer_init(&y);
    msgpack_packer_init(&px, &x, msgpack_sbuffer_write);
    msgpack_packer_init(&py, &y, msgpack_sbuffer_write);
    msgpack_pack_object(&px, *a);
    msgpack_pack_object(&py, *b);
    bool same = x.size == y.size && (!x.size || memcmp(x.data, y.data, x.size) == 0);
    msgpack_sbuffer_destroy(&x);
    msgpack_sbuffer_destroy(&y);
    return same;
}

//  True if a and b hold the same fields, each compared in the array of its type.
static bool
s_same(const pd_msg_t *a, const pd_msg_t *b)
{
    if (a->type != b->type || a->present != b->present)
        return false;
    for (int f = 1; f < PD_F__COUNT; f++) {
        bool ok = true;
        switch (s_type[f]) {
        case 'S': ok = pd_str_eq(a->s[f], b->s[f]); break;
        case 'I': ok = a->i[f] == b->i[f]; break;
        case 'R':
            ok = !a->o[f] == !b->o[f] && (!a->o[f] || s_obj_same(a->o[f], b->o[f]));
            break;
        }
        if (!ok)
            return false;
    }
    return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static msgpack_zone zone, ref_zone;
    static bool init;
    if (!init) {
        msgpack_zone_init(&zone, 4096);
        msgpack_zone_init(&ref_zone, 4096);
        init = true;
    }
    const char *buf = (const char *)data;
    size_t off = 0, ref_off = 0;
    pd_msg_t m, ref;
    pd_msgw_t w;
    pd_msgw_init(&w);
    for (;;) {
        int r = pd_msg_decode(&m, buf, size, &off, &zone);
        int rr = s_ref_decode(&ref, buf, size, &ref_off, &ref_zone);
        assert(r == rr);
        if (r != 0)
            break;
        /* Same message, same fields, and the strings are the same views into the frame
         * (msgpack-c leaves the pointer of an empty string unspecified). */
        assert(off == ref_off && m.rid == ref.rid && m.raw == ref.raw && m.raw_len == ref.raw_len);
        assert(s_same(&m, &ref));
        for (int f = 1; f < PD_F__COUNT; f++)
            assert(s_type[f] != 'S' || !m.s[f].len || m.s[f].ptr == ref.s[f].ptr);
        /* Without a zone: the same message, RAW fields as their bytes only, which the reader
         * skips whole (validated) and a walk of their top level reads without harm. */
        pd_msg_t lz;
        size_t lz_off = (size_t)(m.raw - buf);
        assert(pd_msg_decode(&lz, buf, size, &lz_off, NULL) == 0 && lz_off == off);
        for (int f = 1; f < PD_F__COUNT; f++) {
            if (s_type[f] != 'R' || !pd_msg_has(&m, f))
                continue;
            assert(lz.o[f] == NULL && pd_str_eq(lz.s[f], m.s[f]));
            pd_mpr_t r = pd_mpr(lz.s[f]);
            assert(pd_mpr_skip(&r) && r.p == r.end);
            r = pd_mpr(lz.s[f]);
            uint32_t n;
            if (pd_mpr_array(&r, &n)) {
                assert(n == m.o[f]->via.array.size);
                for (uint32_t i = 0; i < n; i++) {
                    pd_str_t str;
                    int64_t v;
                    double d;
                    int t = pd_mpr_type(&r);
                    const msgpack_object *e = &m.o[f]->via.array.ptr[i];
                    if (t == PD_MPR_STR) {
                        assert(pd_mpr_str(&r, &str) &&
                               str.len == (e->type == MSGPACK_OBJECT_STR ? e->via.str.size
                                                                         : e->via.bin.size));
                    } else if (t == PD_MPR_INT && pd_mpr_int(&r, &v)) {
                        assert(e->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (uint64_t)v == e->via.u64
                                                                          : v == e->via.i64);
                    } else if (t == PD_MPR_FLOAT) {
                        assert(pd_mpr_float(&r, &d));
                    } else {
                        assert(pd_mpr_skip(&r));
                    }
                }
                assert(r.p == r.end);
            }
            /* A DUMP's items as a gateway reads them (gw_replica.c): each one read is a record
             * whose views lie inside the field, and the walk never passes its end. */
            r = pd_mpr(lz.s[f]);
            if (f == PD_F_ITEMS && pd_mpr_array(&r, &n))
                for (uint32_t i = 0; i < n; i++) {
                    pd_record_t rec;
                    if (!pd_record_read_item(&r, &rec))
                        break;
                    const char *lo = lz.s[f].ptr, *hi = lo + lz.s[f].len;
                    assert(rec.id.len && rec.id.ptr >= lo && rec.json.ptr + rec.json.len <= hi);
                    assert(r.p <= r.end);
                }
        }

        pd_msgw_reset(&w);
        pd_msgw_copy(&w, &m, m.rid + 1, 0);
        pd_msgw_end(&w);
        pd_msg_t c;
        size_t coff = 0;
        r = pd_msg_decode(&c, w.sb.data, w.sb.size, &coff, &zone);
        assert(r == 0 && coff == w.sb.size && c.rid == m.rid + 1 && s_same(&c, &m));
    }
    pd_msgw_destroy(&w);
    msgpack_zone_clear(&zone);
    msgpack_zone_clear(&ref_zone);
    return 0;
}
