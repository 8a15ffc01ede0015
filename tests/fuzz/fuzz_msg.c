/*  fuzz_msg — the internal message decoder (pd_msg_decode) on arbitrary frames, as a buggy or
 *  hostile peer could send them: every message decodes or is refused, nothing crashes, and a
 *  decoded message re-encodes (pd_msgw_copy) to bytes that decode to the same fields. */
#include <assert.h>

#include "pd_msg.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static msgpack_zone zone;
    static bool init;
    if (!init) {
        msgpack_zone_init(&zone, 4096);
        init = true;
    }
    size_t off = 0;
    pd_msg_t m;
    pd_msgw_t w;
    pd_msgw_init(&w);
    while (pd_msg_decode(&m, (const char *)data, size, &off, &zone) == 0) {
        pd_msgw_reset(&w);
        pd_msgw_copy(&w, &m, m.rid + 1, 0);
        pd_msgw_end(&w);
        pd_msg_t c;
        size_t coff = 0;
        int r = pd_msg_decode(&c, w.sb.data, w.sb.size, &coff, &zone);
        assert(r == 0 && c.type == m.type && c.rid == m.rid + 1 && c.present == m.present);
        for (int f = 1; f < PD_F__COUNT; f++)
            assert(!pd_msg_has(&m, f) ||
                   (pd_str_eq(m.s[f], c.s[f]) && m.i[f] == c.i[f]));
    }
    pd_msgw_destroy(&w);
    msgpack_zone_clear(&zone);
    return 0;
}
