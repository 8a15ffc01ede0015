/*  pd_outbox — see pd_outbox.h.
 *
 *  Layout: a 64-byte header, then `size` bytes of ring. Offsets in the header are logical
 *  (they only grow); an entry starts at logical offset l, physical l % size, and never straddles
 *  the end: when it does not fit, a wrap mark (or fewer than 16 bytes of slack) sends it to the
 *  start. The oldest entries are evicted (tail moves) before their bytes are overwritten.
 *
 *  Checkpoints. A restart reads only the newest events (the last second, to publish again, and
 *  the newest entry's time), but a ring of 64 MiB is 16,384 pages, and where each page of a
 *  segment costs a fault of 6 to 70 us to map into the new process (paravirtualised hosts),
 *  walking all of it took 130 ms. So the header keeps two checkpoints (the words that were
 *  spare before: a ring written by an older release simply has none): the first entry whose
 *  time reached the newer checkpoint's + S_CP_MS becomes the newer one, and the newer one
 *  the older. No entry before a checkpoint is newer than it (times are the writer's clock, in
 *  order), so a walk for the entries since T starts at the newest checkpoint older than T, and
 *  a walk for the newest entry at the newer checkpoint: about 2 x S_CP_MS of events.
 *
 *  Trust. A re-attach checks the header (every offset a multiple of 8, in range), and the
 *  entries from the older checkpoint to head (the whole ring only when that chain is broken, or
 *  there is no checkpoint): the ones a restart reads. That chain's first entry is `trusted`.
 *  Older entries are checked one by one as a walk reaches them (s_at), and a walk through them
 *  must land exactly on `trusted`; where it does not, it goes on from `trusted`, and the
 *  eviction drops what lies before it. Checkpoints and the mark must lie on the checked chain
 *  (a stray mark is moved back: more is published again, never less). Nothing is ever read
 *  outside the ring. tests/fuzz/fuzz_outbox.c writes over every part of a segment. */
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
#define S_CP_MS 1000                      //  time between checkpoints, at least

typedef struct {
    uint64_t magic;
    uint64_t size;    //  ring bytes, a multiple of 8
    uint64_t head;    //  where the next entry goes
    uint64_t tail;    //  the oldest entry
    uint64_t pending; //  offset + 1 of the pending entry, 0 when none
    uint64_t mark;    //  entries before this have been published (pd_outbox_mark)
    uint64_t cp[2];   //  checkpoints, newest first: offset + 1 of an entry, 0 when none
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
    uint64_t trusted; //  entries from here on were checked at open, or written since
};

#define S_END UINT64_MAX       //  s_at: no entry before head
#define S_BAD (UINT64_MAX - 1) //  s_at: a malformed entry, or one off the checked chain

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

//  True if a well-formed entry starts at l (a real start, past s_start), wholly before head.
static bool
s_ok(pd_outbox_t *self, uint64_t l)
{
    const s_hdr_t *h = self->hdr;
    if (l >= h->head || l % h->size + sizeof(s_ent_t) > h->size)
        return false;
    const s_ent_t *e = s_ent(self, l);
    return e->mark == S_ENT && l % h->size + s_span(e->len) <= h->size &&
           l + s_span(e->len) <= h->head;
}

//  Checkpoint i's entry (its logical offset), or UINT64_MAX when it has none, or its entry was
//  evicted, dropped or is not an entry.
static uint64_t
s_cp(pd_outbox_t *self, int i)
{
    uint64_t c = self->hdr->cp[i];
    if (!c || c - 1 < self->hdr->tail || (c - 1) % 8 || !s_ok(self, c - 1))
        return UINT64_MAX;
    return c - 1;
}

/*  The entry at l (an entry's start, or the end of the one before it: slack and a wrap mark at
 *  the end of the ring are skipped): where it really starts, S_END when no entry starts before
 *  head, S_BAD when it is malformed. Entries older than `trusted` were not checked at open (a
 *  segment damaged from outside may hold anything there), so a walk from one of them must land
 *  exactly on `trusted`: one that would step over it is S_BAD too. */
static uint64_t
s_at(pd_outbox_t *self, uint64_t l)
{
    uint64_t s = s_start(self, l), t = self->trusted;
    if (l < t && s > t)
        return S_BAD;
    if (s >= self->hdr->head)
        return S_END;
    if (!s_ok(self, s) || (s < t && s + s_span(s_ent(self, s)->len) > t))
        return S_BAD;
    return s;
}

/*  Whether the entries from l on are well formed and end exactly at head; hit[i] tells whether
 *  one of them starts at want[i] (want[2], the mark, may also be where one ends). */
#define S_WANT 4 //  the checkpoints, the mark, the pending entry
static bool
s_chain_ok(pd_outbox_t *self, uint64_t l, const uint64_t want[S_WANT], bool hit[S_WANT])
{
    for (int i = 0; i < S_WANT; i++)
        hit[i] = false;
    for (;;) {
        hit[2] |= l == want[2];
        uint64_t s = s_at(self, l);
        if (s == S_END)
            return true;
        if (s == S_BAD)
            return false;
        for (int i = 0; i < S_WANT; i++)
            hit[i] |= s == want[i];
        l = s + s_span(s_ent(self, s)->len);
    }
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
        h->mark > S_MAX_OFFSET || (h->head | h->tail) % 8 || (h->pending && (h->pending - 1) % 8))
        return false; /* every offset this file writes is a multiple of 8 (s_span) */
    if (h->mark % 8) /* nowhere an entry starts: publish more again, never less */
        h->mark = h->tail;
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
    /* The entries a restart reads, from the older checkpoint on, well formed (the older ones
     * are checked as walks reach them, s_at); the whole ring when no checkpoint leads to head.
     * A checkpoint that is not an entry of the checked chain is forgotten. */
    self->trusted = 0;
    uint64_t want[S_WANT] = {s_cp(self, 0), s_cp(self, 1), h->mark,
                             h->pending ? h->pending - 1 : UINT64_MAX};
    uint64_t from = h->tail;
    bool hit[S_WANT];
    int i = 1;
    for (; i >= 0; i--)
        if (want[i] != UINT64_MAX && s_chain_ok(self, want[i], want, hit) &&
            (!h->pending || hit[3])) {
            from = want[i];
            break;
        }
    /* the pending entry must be one of the chain's: pd_outbox_drop moves head back to it */
    if (i < 0 && (!s_chain_ok(self, h->tail, want, hit) || (h->pending && !hit[3])))
        return false;
    for (int k = 0; k < 2; k++)
        if (!hit[k])
            h->cp[k] = 0;
    /* a mark that is not where an entry of the chain starts or ends publishes more again (the
     * subscribers drop what they have), never less */
    if (h->mark > h->head || (h->mark > from && h->mark < h->head && !hit[2]))
        h->mark = from;
    self->trusted = from;
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
    void *map = pd_shm_map(fd, self->map_len);
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
pd_outbox_ring(const pd_outbox_t *self, const void **ring, size_t *size)
{
    *ring = self->ring;
    *size = self->hdr->size;
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
    while (tail < h->head && end - tail > h->size) {
        uint64_t e = s_at(self, tail);
        if (e == S_END)
            tail = h->head;
        else if (e == S_BAD) /* unchecked and malformed: what is older than the checked part goes */
            tail = self->trusted > tail ? self->trusted : h->head;
        else
            tail = e + s_span(s_ent(self, e)->len);
    }
    if (end - tail > h->size)
        tail = end - h->size; //  only slack was left between tail and head
    __atomic_store_n(&h->tail, tail < at ? tail : at, __ATOMIC_RELEASE);
    /* checkpoints (the top of this file): until head moves past this entry, a checkpoint at
     * it is not valid (s_ok), so a crash in between leaves none that points at garbage */
    uint64_t c = s_cp(self, 0);
    if (c == UINT64_MAX)
        h->cp[0] = at + 1;
    else if (s_ent(self, c)->time_ms <= time_ms - S_CP_MS) {
        h->cp[1] = h->cp[0];
        h->cp[0] = at + 1;
    }
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
    if (h->mark > h->head) /* a mark taken with the entry pending */
        h->mark = h->head;
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

/*  Where a walk for the entries with time_ms >= since starts: the newest checkpoint older than
 *  since (every entry before it is no newer than it), else the tail; never before the mark. */
static uint64_t
s_from(pd_outbox_t *self, int64_t since)
{
    s_hdr_t *h = self->hdr;
    uint64_t l = h->tail;
    for (int i = 0; i < 2; i++) {
        uint64_t c = s_cp(self, i);
        if (c != UINT64_MAX && s_ent(self, c)->time_ms < since) {
            l = c;
            break;
        }
    }
    if (h->mark > l) /* the mark is where head was: an entry's start or end */
        l = h->mark < h->head ? h->mark : h->head;
    return l;
}

//  Visits the committed entries from l on with time_ms >= since, oldest first, up to head or
//  a malformed entry (one older than `trusted`: then on from `trusted`). Returns the number
//  visited.
static uint64_t
s_each_from(pd_outbox_t *self, uint64_t l, int64_t since, pd_outbox_fn fn, void *arg)
{
    s_hdr_t *h = self->hdr;
    uint64_t n = 0;
    for (;;) {
        uint64_t at = s_at(self, l);
        if (at == S_BAD && l < self->trusted) { /* an unchecked older entry: on from the checked */
            l = self->trusted;
            continue;
        }
        if (at >= S_BAD)
            break;
        l = at;
        s_ent_t *e = s_ent(self, l);
        if (l + 1 != h->pending && l >= h->mark && e->time_ms >= since) {
            fn(e + 1, e->len, arg);
            n++;
        }
        l += s_span(e->len);
    }
    return n;
}

void
pd_outbox_each(pd_outbox_t *self, int64_t since, pd_outbox_fn fn, void *arg)
{
    s_each_from(self, s_from(self, since), since, fn, arg);
}

static void
s_last(const void *data, size_t len, void *arg)
{
    (void)len;
    *(const void **)arg = data;
}

int64_t
pd_outbox_last_time(pd_outbox_t *self)
{
    /* from the newer checkpoint; from the older one or the tail only when nothing after it
     * counts (the newest entries are pending, or before the mark) */
    uint64_t from[3] = {s_cp(self, 0), s_cp(self, 1), self->hdr->tail};
    for (int i = 0; i < 3; i++) {
        if (from[i] == UINT64_MAX)
            continue;
        const void *last = NULL;
        uint64_t l = from[i] > self->hdr->mark ? from[i] : self->hdr->mark;
        if (s_each_from(self, l, INT64_MIN, s_last, &last))
            return ((const s_ent_t *)last - 1)->time_ms;
    }
    return INT64_MIN;
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

static void
s_count(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    (*(int *)arg)++;
}

//  The values (first int of each entry) a walk visits, into a fixed array.
typedef struct {
    int n;
    int v[4096];
} s_list_t;

static void
s_list(const void *data, size_t len, void *arg)
{
    s_list_t *l = arg;
    PD_CHECK(len >= sizeof(int) && l->n < 4096);
    memcpy(&l->v[l->n++], data, sizeof(int));
}

static uint32_t
s_rand(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*rng >> 33);
}

//  The checkpoints against a walk of the whole ring: random entries (sizes, gaps of time
//  between them, drops, marks, re-attaches), and after each step the entries since a few
//  times near the newest, and the newest entry's time, as a walk from the tail finds them.
static void
s_test_checkpoints(const char *name)
{
    pd_outbox_unlink(name);
    pd_outbox_t *ob = pd_outbox_open(name, 64 * 1024);
    PD_CHECK(ob);
    uint8_t buf[2048];
    memset(buf, 0x5a, sizeof buf);
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    int64_t now = 1000000;
    int used = 0; /* steps where a checkpoint shortened the walk */
    for (int i = 0; i < 20000; i++) {
        uint32_t r = s_rand(&rng);
        now += r % 16 == 0 ? (int64_t)s_rand(&rng) % 3000 : (int64_t)s_rand(&rng) % 4;
        memcpy(buf, &i, sizeof i);
        PD_CHECK(pd_outbox_put(ob, buf, sizeof i + s_rand(&rng) % 1500, now) == 0);
        if (r % 50 == 1)
            pd_outbox_drop(ob);
        else
            pd_outbox_commit(ob);
        if (r % 500 == 2)
            pd_outbox_mark(ob);
        if (r % 300 == 3) {
            pd_outbox_close(&ob);
            ob = pd_outbox_open(name, 64 * 1024);
            PD_CHECK(ob);
        }
        const void *last = NULL;
        int64_t want = INT64_MIN;
        if (s_each_from(ob, ob->hdr->tail, INT64_MIN, s_last, &last))
            want = ((const s_ent_t *)last - 1)->time_ms;
        PD_CHECK(pd_outbox_last_time(ob) == want);
        for (int k = 0; k < 3 && want != INT64_MIN; k++) {
            int64_t since = want - (int64_t)(s_rand(&rng) % 2500);
            static s_list_t a, b;
            a.n = b.n = 0;
            pd_outbox_each(ob, since, s_list, &a);
            s_each_from(ob, ob->hdr->tail, since, s_list, &b);
            PD_CHECK(a.n == b.n && memcmp(a.v, b.v, sizeof(int) * (size_t)a.n) == 0);
            used += s_from(ob, since) > ob->hdr->tail;
        }
    }
    PD_CHECK(used > 10000); /* the checkpoints were there to use, most of the time */
    pd_outbox_close(&ob);
    pd_outbox_unlink(name);
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
    pd_outbox_each(ob, 0, s_count, &n);
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
        pd_outbox_each(ob, 0, s_count, &n);
        /* 6, 7: the malformed entry is the only checkpoint's, so the whole ring is checked */
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
    s_test_checkpoints(name);
}
