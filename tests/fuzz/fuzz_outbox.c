/*  fuzz_outbox — a store's event outbox (pd_outbox.h) re-attached from a segment that anyone
 *  with the store's user may have written to. The input is a program: appends (committed or
 *  left pending), drops, marks, re-attaches (a crash: whatever was pending stays), and writes
 *  of the input's own bytes over any part of the segment, header or ring, between them.
 *
 *  Checked after every step: a walk visits only whole entries inside the ring; and the outbox
 *  keeps working whatever was written over it: right after an append and its commit, the newest
 *  entry's time is the append's, and a walk for the entries since that time ends with it. */
#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_outbox.h"

#define RING 4096

typedef struct {
    const uint8_t *ring;
    size_t size;
    uint32_t last; //  the first 4 bytes of the last entry visited (0 when shorter)
    int n;
    uint8_t sum;
} s_walk_t;

static void
s_visit(const void *data, size_t len, void *arg)
{
    s_walk_t *w = arg;
    const uint8_t *p = data;
    assert(p >= w->ring && len <= w->size && (size_t)(p - w->ring) + len <= w->size);
    for (size_t i = 0; i < len; i++) /* read whole */
        w->sum += p[i];
    w->last = 0;
    if (len >= 4)
        memcpy(&w->last, p, 4);
    w->n++;
}

static void
s_walk(pd_outbox_t *ob, int64_t since, s_walk_t *w)
{
    const void *ring;
    pd_outbox_ring(ob, &ring, &w->size);
    w->ring = ring;
    w->n = 0;
    w->last = 0;
    pd_outbox_each(ob, since, s_visit, w);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char name[64];
    if (!name[0]) {
        snprintf(name, sizeof name, "/presenced-fuzz-outbox-%d", (int)getpid());
        pd_log_set_verbosity(-1); /* "damaged; its events are forgotten" is expected */
    }
    pd_outbox_unlink(name);
    pd_outbox_t *ob = pd_outbox_open(name, RING);
    assert(ob);
    int64_t now = 1800000000000;
    uint32_t serial = 1;
    uint8_t buf[1024];
    size_t i = 0;
    while (i + 4 <= size) {
        uint8_t op = data[i] % 5, a = data[i + 1], b = data[i + 2], c = data[i + 3];
        i += 4;
        const void *pd;
        size_t pl;
        if (op == 0) { /* append; committed unless b says to leave it pending */
            if (pd_outbox_pending(ob, &pd, &pl))
                pd_outbox_commit(ob); /* the store settles before it writes */
            now += (int64_t)c * 16;
            size_t len = (size_t)a * 3; /* an entry within a quarter of the ring */
            memset(buf, 0xe7, len);
            if (len >= 4)
                memcpy(buf, &serial, 4);
            assert(pd_outbox_put(ob, buf, len, now) == 0);
            if (b & 1) {
                pd_outbox_commit(ob);
                assert(pd_outbox_last_time(ob) == now);
                s_walk_t w;
                s_walk(ob, now, &w);
                assert(w.n >= 1 && w.last == (len >= 4 ? serial : 0));
            }
            serial++;
        } else if (op == 1) {
            pd_outbox_drop(ob);
        } else if (op == 2) {
            pd_outbox_mark(ob);
        } else if (op == 3) { /* a crash and a restart */
            pd_outbox_close(&ob);
            ob = pd_outbox_open(name, RING);
            assert(ob);
        } else { /* c bytes of the input written at offset a * 256 + b of the segment */
            size_t n = c % 16 + 1, off = ((size_t)a * 256 + b) % (RING + 64);
            if (n > size - i)
                n = size - i;
            if (n > RING + 64 - off) /* inside the segment: its size is not what is tested */
                n = RING + 64 - off;
            pd_outbox_close(&ob);
            int fd = shm_open(name, O_RDWR, 0);
            assert(fd >= 0);
            assert(pwrite(fd, data + i, n, (off_t)off) == (ssize_t)n);
            close(fd);
            i += n;
            ob = pd_outbox_open(name, RING);
            assert(ob);
        }
        s_walk_t w;
        s_walk(ob, INT64_MIN, &w);
        int64_t last = pd_outbox_last_time(ob);
        if (last != INT64_MIN)
            s_walk(ob, last > INT64_MIN + 1000 ? last - 1000 : INT64_MIN, &w);
    }
    pd_outbox_close(&ob);
    pd_outbox_unlink(name);
    return 0;
}
