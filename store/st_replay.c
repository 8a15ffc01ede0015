/*  st_replay — see st_replay.h. */
#include "st_replay.h"

#include <string.h>

#include "pd_err.h"

typedef struct {
    int64_t gen, from, to; //  wanted: generation and sequence numbers from..to
    int64_t last;          //  the last one appended (from - 1: none)
    bool hole;             //  an entry in the range after a skip: stop there
    bool cut;              //  REPLAY_MAX_BYTES reached
    size_t bytes;
    pd_msgw_t *out;
    msgpack_zone zone;
} s_walk_t;

//  An outbox entry's sequence number, from its rid (pd_msgw_begin's fixed header), or -1 if
//  it is neither an EVENT nor a ROOM_EVENT (a room's join or leave).
static int64_t
s_seq_of(const unsigned char *d, size_t len)
{
    if (len < 13 || d[0] != 0x94 || (d[2] != PD_MSG_EVENT && d[2] != PD_MSG_ROOM_EVENT) ||
        d[3] != 0xcf)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | d[4 + i];
    return v > INT64_MAX ? -1 : (int64_t)v;
}

static void
s_visit(const void *data, size_t len, void *arg)
{
    s_walk_t *w = arg;
    int64_t seq = s_seq_of(data, len);
    if (seq < w->from || seq > w->to || w->hole || w->cut)
        return;
    pd_msg_t m;
    size_t off = 0;
    bool ours = pd_msg_decode(&m, data, len, &off, &w->zone) == 0 && m.i[PD_F_GEN] == w->gen &&
                m.i[PD_F_SEQ] == seq;
    msgpack_zone_clear(&w->zone);
    if (!ours || seq <= w->last)
        return; /* another generation's (its numbers start again), or a copy */
    if (seq != w->last + 1) {
        w->hole = true;
        return;
    }
    msgpack_sbuffer_write(&w->out->sb, data, len);
    w->out->count++;
    w->last = seq;
    w->bytes += len;
    w->cut = w->bytes >= REPLAY_MAX_BYTES && seq < w->to;
}

void
st_replay_answer(pd_outbox_t *outbox, const pd_msg_t *m, pd_msgw_t *reply)
{
    s_walk_t w = {.gen = m->i[PD_F_GEN], .from = m->i[PD_F_SEQ], .out = reply};
    int64_t total = m->i[PD_F_TOTAL];
    bool open = total == 0; /* to the end of the generation */
    bool ok = w.from >= 1 && total >= 0 && total <= INT64_MAX - w.from;
    w.to = !ok ? 0 : open ? INT64_MAX : w.from + total - 1;
    w.last = w.from - 1;
    if (ok) {
        msgpack_zone_init(&w.zone, 4096);
        pd_outbox_each(outbox, INT64_MIN, s_visit, &w);
        msgpack_zone_destroy(&w.zone);
    }
    bool gone = !ok || w.hole || (!open && w.last < w.to && !w.cut);
    pd_msgw_begin(reply, PD_MSG_REPLAY, m->rid);
    pd_msgw_int(reply, PD_F_NODE, m->i[PD_F_NODE]);
    pd_msgw_int(reply, PD_F_GEN, w.gen);
    pd_msgw_int(reply, PD_F_SEQ, w.last);
    pd_msgw_int(reply, PD_F_FLAGS, w.cut ? 1 : 0);
    pd_msgw_int(reply, PD_F_ERR, gone ? PD_ERR_UNAVAILABLE : PD_ERR_OK);
    pd_msgw_end(reply);
}
