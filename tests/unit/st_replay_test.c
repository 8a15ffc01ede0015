/*  st_replay_test — the answers a store node gives to REPLAY (store/st_replay.h), read from a
 *  real outbox: the range of the generation asked for, in order; another generation's events
 *  with the same numbers left out; a range partly or wholly gone said so. */
#include <stdio.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_util.h"
#include "st_replay.h"

typedef struct {
    int64_t seqs[64];
    int n;
    int64_t last, err, flags;
    bool done;
} answer_t;

static void
s_put_event(pd_outbox_t *ob, pd_msgw_t *w, int64_t gen, int64_t seq)
{
    pd_msgw_reset(w);
    pd_msgw_begin(w, PD_MSG_EVENT, (uint64_t)seq);
    pd_msgw_int(w, PD_F_ACTION, PD_ACT_UPDATE);
    pd_msgw_int(w, PD_F_NODE, 1);
    pd_msgw_int(w, PD_F_SEQ, seq);
    pd_msgw_int(w, PD_F_GEN, gen);
    pd_msgw_str(w, PD_F_ID, "rec", 3);
    pd_msgw_end(w);
    PD_CHECK(pd_outbox_put(ob, w->sb.data, w->sb.size, 1000 + seq) == 0);
    pd_outbox_commit(ob);
}

static void
s_on_answer(const pd_msg_t *m, void *arg)
{
    answer_t *a = arg;
    PD_CHECK(!a->done); /* nothing after the REPLAY */
    if (m->type == PD_MSG_EVENT) {
        PD_CHECK(a->n < 64);
        a->seqs[a->n++] = m->i[PD_F_SEQ];
        return;
    }
    PD_CHECK(m->type == PD_MSG_REPLAY && m->rid == 77 && m->i[PD_F_NODE] == 1);
    a->last = m->i[PD_F_SEQ];
    a->err = m->i[PD_F_ERR];
    a->flags = m->i[PD_F_FLAGS];
    a->done = true;
}

static answer_t
s_ask(pd_outbox_t *ob, int64_t gen, int64_t seq, int64_t total)
{
    pd_msgw_t req, out;
    pd_msgw_init(&req);
    pd_msgw_init(&out);
    pd_msgw_begin(&req, PD_MSG_REPLAY, 77);
    pd_msgw_int(&req, PD_F_NODE, 1);
    pd_msgw_int(&req, PD_F_GEN, gen);
    pd_msgw_int(&req, PD_F_SEQ, seq);
    pd_msgw_int(&req, PD_F_TOTAL, total);
    pd_msgw_end(&req);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    pd_msg_t m;
    size_t off = 0;
    PD_CHECK(pd_msg_decode(&m, req.sb.data, req.sb.size, &off, &z) == 0);
    st_replay_answer(ob, &m, &out);
    answer_t a = {0};
    msgpack_zone z2;
    msgpack_zone_init(&z2, 1024);
    PD_CHECK(pd_msg_each(out.sb.data, out.sb.size, &z2, s_on_answer, &a) >= 0);
    PD_CHECK(a.done);
    msgpack_zone_destroy(&z);
    msgpack_zone_destroy(&z2);
    pd_msgw_destroy(&req);
    pd_msgw_destroy(&out);
    return a;
}

int
main(void)
{
    char name[64];
    snprintf(name, sizeof name, "/pd-st-replay-test-%d", (int)getpid());
    pd_outbox_unlink(name);
    pd_outbox_t *ob = pd_outbox_open(name, 1 << 20);
    PD_CHECK(ob);
    pd_msgw_t w;
    pd_msgw_init(&w);
    for (int64_t s = 1; s <= 20; s++) /* a generation, then the next (numbers start again) */
        s_put_event(ob, &w, 111, s);
    for (int64_t s = 1; s <= 5; s++)
        s_put_event(ob, &w, 222, s);

    answer_t a = s_ask(ob, 111, 5, 3); /* a range in the middle */
    PD_CHECK(a.n == 3 && a.seqs[0] == 5 && a.seqs[1] == 6 && a.seqs[2] == 7);
    PD_CHECK(a.last == 7 && a.err == PD_ERR_OK && a.flags == 0);
    a = s_ask(ob, 222, 1, 5); /* the newer generation's 1..5, not the older one's */
    PD_CHECK(a.n == 5 && a.seqs[0] == 1 && a.seqs[4] == 5 && a.err == PD_ERR_OK);
    a = s_ask(ob, 111, 18, 5); /* past the end of what was published: partly there */
    PD_CHECK(a.n == 3 && a.last == 20 && a.err == PD_ERR_UNAVAILABLE);
    a = s_ask(ob, 333, 1, 1); /* a generation never seen */
    PD_CHECK(a.n == 0 && a.last == 0 && a.err == PD_ERR_UNAVAILABLE);
    a = s_ask(ob, 111, 18, 0); /* the rest of a generation */
    PD_CHECK(a.n == 3 && a.seqs[0] == 18 && a.last == 20 && a.err == PD_ERR_OK);
    a = s_ask(ob, 111, 21, 0); /* ... of which nothing is left after 20 */
    PD_CHECK(a.n == 0 && a.last == 20 && a.err == PD_ERR_OK);
    a = s_ask(ob, 333, 1, 0); /* ... of one the ring knows nothing of: nothing to send */
    PD_CHECK(a.n == 0 && a.err == PD_ERR_OK);
    a = s_ask(ob, 111, 1, -1); /* nonsense */
    PD_CHECK(a.n == 0 && a.err == PD_ERR_UNAVAILABLE);
    a = s_ask(ob, 111, INT64_MAX, INT64_MAX);
    PD_CHECK(a.n == 0 && a.err == PD_ERR_UNAVAILABLE);
    pd_outbox_close(&ob);
    pd_outbox_unlink(name);

    /* a small ring that wrapped: the oldest are gone, the newest still answered */
    ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob);
    for (int64_t s = 1; s <= 200; s++)
        s_put_event(ob, &w, 111, s);
    a = s_ask(ob, 111, 1, 10);
    PD_CHECK(a.n == 0 && a.last == 0 && a.err == PD_ERR_UNAVAILABLE);
    a = s_ask(ob, 111, 1, 0); /* the rest of it, from a point overwritten: gone */
    PD_CHECK(a.n == 0 && a.err == PD_ERR_UNAVAILABLE);
    a = s_ask(ob, 111, 195, 6);
    PD_CHECK(a.n == 6 && a.seqs[5] == 200 && a.err == PD_ERR_OK);
    pd_outbox_close(&ob);
    pd_outbox_unlink(name);
    pd_msgw_destroy(&w);
    printf("st_replay: OK\n");
    return 0;
}
