/*  pd_outbox — see pd_outbox.h.
 *
 *  Layout: a 64-byte header, then `size` bytes of ring. Offsets in the header are logical
 *  (they only grow); an entry starts at logical offset l, physical l % size, and never straddles
 *  the end: when it does not fit, a wrap mark (or fewer than 16 bytes of slack) sends it to the
 *  start. The oldest entries are evicted (tail moves) before their bytes are overwritten. */
#include "pd_outbox.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_util.h"

#define S_MAGIC 0x3158424f44505044ULL //  "DPPDOBX1"
#define S_ENT 0x45544e45u
#define S_WRAP 0x50415257u
#define S_MIN_RING 4096
#define S_MAX_RING ((uint64_t)1 << 30)
#define S_MAX_OFFSET ((uint64_t)1 << 62) //  logical offsets: far from wrapping around

typedef struct {
    uint64_t magic;
    uint64_t size;    //  ring bytes, a multiple of 8
    uint64_t head;    //  where the next entry goes
    uint64_t tail;    //  the oldest entry
    uint64_t pending; //  offset + 1 of the pending entry, 0 when none
    uint64_t mark;    //  entries before this have been published (pd_outbox_mark)
    uint64_t spare[2];
} s_hdr_t;

typedef struct {
    uint32_t len;
    uint32_t mark; //  S_ENT or S_WRAP
    int64_t time_ms;
} s_ent_t;

struct pd_outbox {
    s_hdr_t *hdr;
    uint8_t *ring;
    size_t map_len;
};

static inline uint64_t
s_span(uint64_t len)
{
    return sizeof(s_ent_t) + ((len + 7) & ~(uint64_t)7);
}

static inline s_ent_t *
s_ent(pd_outbox_t *self, uint64_t l)
{
    return (s_ent_t *)(self->ring + l % self->hdr->size);
}

//  The logical offset where an entry that starts at or after l really starts (past the slack
//  or wrap mark at the end of the ring), given that one is there.
static uint64_t
s_start(pd_outbox_t *self, uint64_t l)
{
    uint64_t size = self->hdr->size, room = size - l % size;
    if (room < sizeof(s_ent_t) || s_ent(self, l)->mark == S_WRAP)
        return l + room;
    return l;
}

static uint64_t
s_next(pd_outbox_t *self, uint64_t l)
{
    l = s_start(self, l);
    return l + s_span(s_ent(self, l)->len);
}

static void
s_reset(s_hdr_t *h, uint64_t size)
{
    memset(h, 0, sizeof *h);
    h->size = size;
    __atomic_store_n(&h->magic, S_MAGIC, __ATOMIC_RELEASE);
}

//  After a crash: a sane header, and head past the pending entry (the process may have died
//  between marking it pending and moving head).
static bool
s_check(pd_outbox_t *self)
{
    s_hdr_t *h = self->hdr;
    if (h->tail > h->head || h->head - h->tail > h->size || h->head > S_MAX_OFFSET ||
        h->mark > S_MAX_OFFSET)
        return false;
    if (h->pending) {
        uint64_t l = h->pending - 1;
        if (l < h->tail || l > h->head + h->size / 2 || l % h->size + sizeof(s_ent_t) > h->size)
            return false;
        s_ent_t *e = s_ent(self, l);
        if (e->mark != S_ENT || l % h->size + s_span(e->len) > h->size)
            return false;
        if (h->head < l + s_span(e->len))
            h->head = l + s_span(e->len);
        if (h->head - h->tail > h->size)
            return false;
    }
    for (uint64_t l = h->tail; l < h->head;) { //  every entry well formed
        uint64_t s = s_start(self, l);
        if (s >= h->head)
            break;
        s_ent_t *e = s_ent(self, s);
        if (e->mark != S_ENT || s % h->size + s_span(e->len) > h->size)
            return false;
        l = s + s_span(e->len);
    }
    return true;
}

pd_outbox_t *
pd_outbox_open(const char *name, size_t bytes)
{
    uint64_t size = ((uint64_t)bytes + 7) & ~(uint64_t)7;
    if (size < S_MIN_RING)
        size = S_MIN_RING;
    bool fresh;
    int fd = pd_shm_open(name, &fresh);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto fail;
    if ((uint64_t)st.st_size < sizeof(s_hdr_t)) {
        if (ftruncate(fd, (off_t)(sizeof(s_hdr_t) + size)) < 0)
            goto fail;
        fresh = true;
    } else {
        /* Re-attach: a ring of a size pd_outbox_open makes, or the segment is refused (only
         * someone else's hand, not a crash, makes another size). */
        size = (uint64_t)st.st_size - sizeof(s_hdr_t);
        if (size < S_MIN_RING || size > S_MAX_RING || size % 8) {
            pd_log_warn("%s: %s refused: %lld bytes is not the size of an outbox; move it away "
                        "to start empty",
                        __func__, name, (long long)st.st_size);
            close(fd);
            return NULL;
        }
    }
    pd_outbox_t *self = calloc(1, sizeof *self);
    assert(self);
    self->map_len = sizeof(s_hdr_t) + size;
    void *map = mmap(NULL, self->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        pd_log_warn("%s: mmap %s: %s", __func__, name, strerror(errno));
        free(self);
        return NULL;
    }
    self->hdr = map;
    self->ring = (uint8_t *)map + sizeof(s_hdr_t);
    if (fresh || self->hdr->magic != S_MAGIC || self->hdr->size != size) {
        s_reset(self->hdr, size);
    } else if (!s_check(self)) {
        pd_log_warn("%s: %s was damaged; its events are forgotten", __func__, name);
        s_reset(self->hdr, size);
    }
    return self;
fail:
    pd_log_warn("%s: %s: %s", __func__, name, strerror(errno));
    close(fd);
    return NULL;
}

void
pd_outbox_close(pd_outbox_t **self_p)
{
    pd_outbox_t *self = *self_p;
    if (!self)
        return;
    munmap(self->hdr, self->map_len);
    free(self);
    *self_p = NULL;
}

int
pd_outbox_unlink(const char *name)
{
    return pd_shm_unlink(name);
}

int
pd_outbox_put(pd_outbox_t *self, const void *data, size_t len, int64_t time_ms)
{
    s_hdr_t *h = self->hdr;
    uint64_t need = s_span(len);
    if (need > h->size / 4)
        return -1;
    uint64_t at = h->head, room = h->size - at % h->size;
    if (room < need)
        at += room;
    uint64_t end = at + need;
    uint64_t tail = h->tail;
    while (tail < h->head && end - tail > h->size)
        tail = s_next(self, tail);
    if (end - tail > h->size)
        tail = end - h->size; //  only slack was left between tail and head
    __atomic_store_n(&h->tail, tail < at ? tail : at, __ATOMIC_RELEASE);
    if (at != h->head && room >= sizeof(s_ent_t))
        s_ent(self, h->head)->mark = S_WRAP;
    s_ent_t *e = s_ent(self, at);
    e->len = (uint32_t)len;
    e->mark = S_ENT;
    e->time_ms = time_ms;
    memcpy(e + 1, data, len);
    __atomic_store_n(&h->pending, at + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&h->head, end, __ATOMIC_RELEASE);
    return 0;
}

void
pd_outbox_mark(pd_outbox_t *self)
{
    __atomic_store_n(&self->hdr->mark, self->hdr->head, __ATOMIC_RELEASE);
}

void
pd_outbox_commit(pd_outbox_t *self)
{
    __atomic_store_n(&self->hdr->pending, 0, __ATOMIC_RELEASE);
}

void
pd_outbox_drop(pd_outbox_t *self)
{
    s_hdr_t *h = self->hdr;
    if (!h->pending)
        return;
    __atomic_store_n(&h->head, h->pending - 1, __ATOMIC_RELEASE);
    if (h->tail > h->head)
        h->tail = h->head;
    __atomic_store_n(&h->pending, 0, __ATOMIC_RELEASE);
}

bool
pd_outbox_pending(pd_outbox_t *self, const void **data, size_t *len)
{
    if (!self->hdr->pending)
        return false;
    s_ent_t *e = s_ent(self, self->hdr->pending - 1);
    *data = e + 1;
    *len = e->len;
    return true;
}

int
pd_outbox_settle(pd_outbox_t *self, pd_outbox_check_fn happened, void *arg)
{
    const void *data;
    size_t len;
    if (!pd_outbox_pending(self, &data, &len))
        return -1;
    bool keep = happened(data, len, arg);
    if (keep)
        pd_outbox_commit(self);
    else
        pd_outbox_drop(self);
    return keep;
}

void
pd_outbox_each(pd_outbox_t *self, int64_t since, pd_outbox_fn fn, void *arg)
{
    s_hdr_t *h = self->hdr;
    for (uint64_t l = h->tail; l < h->head;) {
        l = s_start(self, l);
        if (l >= h->head)
            break;
        s_ent_t *e = s_ent(self, l);
        if (l + 1 != h->pending && l >= h->mark && e->time_ms >= since)
            fn(e + 1, e->len, arg);
        l += s_span(e->len);
    }
}

static void
s_last(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    (*(int *)arg)++;
}

int64_t
pd_outbox_last_time(pd_outbox_t *self)
{
    s_hdr_t *h = self->hdr;
    int64_t last = INT64_MIN;
    for (uint64_t l = h->tail; l < h->head;) {
        l = s_start(self, l);
        if (l >= h->head)
            break;
        s_ent_t *e = s_ent(self, l);
        if (l + 1 != h->pending && l >= h->mark)
            last = e->time_ms;
        l += s_span(e->len);
    }
    return last;
}

/* -------------------------------------------------------------------------- self test */

typedef struct {
    int n;
    int first, last;
} s_seen_t;

static void
s_collect(const void *data, size_t len, void *arg)
{
    s_seen_t *s = arg;
    int v;
    PD_CHECK(len >= sizeof v);
    memcpy(&v, data, sizeof v);
    if (!s->n)
        s->first = v;
    else
        PD_CHECK(v == s->last + 1); //  oldest first, nothing skipped in between
    s->last = v;
    s->n++;
}

void
pd_outbox_test(bool verbose)
{
    (void)verbose;
    const char *name = "/presenced-selftest-outbox";
    pd_outbox_unlink(name);
    pd_outbox_t *ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob);
    const void *pd;
    size_t pl;
    PD_CHECK(!pd_outbox_pending(ob, &pd, &pl));
    PD_CHECK(pd_outbox_last_time(ob) == INT64_MIN);

    //  entries of varying sizes, far more than fit: the ring keeps the newest, in order
    uint8_t buf[700];
    memset(buf, 0xab, sizeof buf);
    for (int i = 0; i < 1000; i++) {
        memcpy(buf, &i, sizeof i);
        PD_CHECK(pd_outbox_put(ob, buf, sizeof i + (size_t)(i * 37) % 600, 1000 + i) == 0);
        PD_CHECK(pd_outbox_pending(ob, &pd, &pl) && memcmp(pd, &i, sizeof i) == 0);
        pd_outbox_commit(ob);
        s_seen_t seen = {0};
        pd_outbox_each(ob, 0, s_collect, &seen);
        PD_CHECK(seen.n > 0 && seen.last == i);
    }
    PD_CHECK(pd_outbox_put(ob, buf, 2000, 0) == -1); //  more than a quarter of the ring
    PD_CHECK(pd_outbox_last_time(ob) == 1999);
    s_seen_t seen = {0};
    pd_outbox_each(ob, 1990, s_collect, &seen);
    PD_CHECK(seen.n == 10 && seen.first == 990 && seen.last == 999);

    //  a pending entry survives a "crash" (close without commit) and can be dropped...
    int v = 1000;
    memcpy(buf, &v, sizeof v);
    PD_CHECK(pd_outbox_put(ob, buf, 100, 2000) == 0);
    pd_outbox_close(&ob);
    ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob && pd_outbox_pending(ob, &pd, &pl) && pl == 100 && memcmp(pd, &v, sizeof v) == 0);
    memset(&seen, 0, sizeof seen);
    pd_outbox_each(ob, 0, s_collect, &seen);
    PD_CHECK(seen.last == 999); //  not visited while pending
    pd_outbox_drop(ob);
    PD_CHECK(!pd_outbox_pending(ob, &pd, &pl) && pd_outbox_last_time(ob) == 1999);
    //  ... or kept
    PD_CHECK(pd_outbox_put(ob, buf, 100, 2001) == 0);
    pd_outbox_close(&ob);
    ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob && pd_outbox_pending(ob, &pd, &pl));
    pd_outbox_commit(ob);
    memset(&seen, 0, sizeof seen);
    pd_outbox_each(ob, 0, s_collect, &seen);
    PD_CHECK(seen.last == 1000 && pd_outbox_last_time(ob) == 2001);

    //  a process that died after marking pending but before moving head
    v = 1001;
    memcpy(buf, &v, sizeof v);
    uint64_t head = ob->hdr->head;
    PD_CHECK(pd_outbox_put(ob, buf, 64, 2002) == 0);
    ob->hdr->head = head;
    pd_outbox_close(&ob);
    ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob && pd_outbox_pending(ob, &pd, &pl) && pl == 64 && memcmp(pd, &v, sizeof v) == 0);
    pd_outbox_commit(ob);
    memset(&seen, 0, sizeof seen);
    pd_outbox_each(ob, 0, s_collect, &seen);
    PD_CHECK(seen.last == 1001);

    //  after a clean stop's mark, nothing is published again; later entries are
    pd_outbox_mark(ob);
    PD_CHECK(pd_outbox_last_time(ob) == INT64_MIN);
    memset(&seen, 0, sizeof seen);
    pd_outbox_each(ob, 0, s_collect, &seen);
    PD_CHECK(seen.n == 0);
    v = 1002;
    memcpy(buf, &v, sizeof v);
    PD_CHECK(pd_outbox_put(ob, buf, 32, 2003) == 0);
    pd_outbox_commit(ob);
    pd_outbox_close(&ob);
    ob = pd_outbox_open(name, 4096);
    memset(&seen, 0, sizeof seen);
    pd_outbox_each(ob, 0, s_collect, &seen);
    PD_CHECK(seen.n == 1 && seen.last == 1002 && pd_outbox_last_time(ob) == 2003);

    //  garbage in the header: reset, not a crash (the warnings below are expected)
    pd_log_set_verbosity(-1);
    ob->hdr->tail = ob->hdr->head + 8;
    pd_outbox_close(&ob);
    ob = pd_outbox_open(name, 4096);
    PD_CHECK(ob && pd_outbox_last_time(ob) == INT64_MIN);
    int n = 0;
    pd_outbox_each(ob, 0, s_last, &n);
    PD_CHECK(n == 0);

    //  each ring position out of range in turn (the others sane): its entries are forgotten,
    //  and the ring works on; nothing is read outside it
    const uint64_t big = (uint64_t)1 << 63;
    for (int k = 0; k < 9; k++) {
        v = 2000 + k;
        memcpy(buf, &v, sizeof v);
        PD_CHECK(pd_outbox_put(ob, buf, 40, 3000) == 0);
        pd_outbox_commit(ob);
        s_hdr_t *h = ob->hdr;
        switch (k) {
        case 0: h->head = h->tail + h->size + 8; break;              //  more than a ring
        case 1: h->tail = h->head + 1; break;                        //  tail past head
        case 2: h->head = UINT64_MAX - 8; h->tail = h->head - 96; break; //  about to wrap
        case 3: h->pending = h->head + h->size; break;               //  pending past head
        case 4: h->pending = h->tail; h->tail += 8; break;           //  pending before tail
        case 5: h->pending = h->size - 4 + 1; h->tail = 0; break;    //  entry over the end
        case 6: s_ent(ob, h->tail)->len = UINT32_MAX; break;         //  entry longer than ring
        case 7: s_ent(ob, h->tail)->mark = 0; break;                 //  not an entry
        case 8: h->mark = big; break;                                //  mark beyond any offset
        }
        pd_outbox_close(&ob);
        ob = pd_outbox_open(name, 4096);
        PD_CHECK(ob && !pd_outbox_pending(ob, &pd, &pl));
        n = 0;
        pd_outbox_each(ob, 0, s_last, &n);
        PD_CHECK(n == 0 && pd_outbox_last_time(ob) == INT64_MIN);
        PD_CHECK(pd_outbox_put(ob, buf, 40, 3001) == 0);
        pd_outbox_commit(ob);
        PD_CHECK(pd_outbox_last_time(ob) == 3001);
    }
    pd_outbox_close(&ob);
    pd_outbox_unlink(name);

    //  a segment of a size no outbox has (truncated, shorter than a ring, unaligned) is refused
    static const off_t sizes[] = {sizeof(s_hdr_t), sizeof(s_hdr_t) + 100, sizeof(s_hdr_t) + 4100};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        PD_CHECK(fd >= 0 && ftruncate(fd, sizes[k]) == 0);
        close(fd);
        PD_CHECK(pd_outbox_open(name, 4096) == NULL);
        PD_CHECK(pd_outbox_unlink(name) == 0);
    }
    pd_log_set_verbosity(1);
}
