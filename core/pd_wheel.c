/*  pd_wheel — see pd_wheel.h.
 *
 *  Layout. Time is counted in ticks since the wheel's origin. Four levels of 256 slots cover
 *  the low 32 bits of the tick counter, 8 bits per level: level 0 holds timers due within the
 *  current run of 256 ticks, level 1 those within the current 65536 ticks, and so on; a timer
 *  whose tick differs from `cur` above bit 31 (about 49 days at 1 ms ticks) waits on the
 *  overflow list. A timer sits at the level of the highest 8-bit digit in which its tick differs
 *  from `cur`, in the slot named by that digit. That placement is a pure function of (deadline,
 *  cur), and it does not change while cur moves forward, until cur reaches the slot's first
 *  tick, when the slot is cascaded: each timer is placed again, one level down or more, or onto
 *  `due` if its tick has come. So cancel finds its slot without storing it, which keeps the
 *  timer at three words (links and deadline), and a timer is moved at most once per level.
 *
 *  Advancing. pd_wheel_advance does not walk tick by tick. A 256-bit map per level tells which
 *  slots are non-empty; the next event is the next set bit after cur's digit at the lowest level
 *  that has one (a level-0 slot fires, a higher slot cascades), or the next 2^32 boundary when
 *  only the overflow list holds timers. An idle jump of days therefore costs a handful of bit
 *  scans, and pd_wheel_timeout answers from the same maps in O(levels). For a timer above level
 *  0, the timeout is the start of its slot (a lower bound): the caller wakes, the slot cascades,
 *  and the next timeout is exact. Costs: add and cancel O(1); each timer is touched at most
 *  once per level it descends through; the overflow list is rescanned once per 2^32 ticks.
 *
 *  Deadlines are rounded up to a tick, so a timer never fires before its deadline and at most
 *  one tick after it (exact at 1 ms ticks). Timers fire in deadline order, except that a timer
 *  added already due joins the back of the due queue. A callback may add or cancel any timer;
 *  one that re-adds its own timer at or before `now` makes it fire again in the same call (the
 *  `max` budget bounds that). */
#include "pd_wheel.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define W_LEVELS 4
#define W_BITS 8
#define W_SLOTS (1 << W_BITS)
#define W_MASK ((uint64_t)W_SLOTS - 1)
#define W_WORDS (W_SLOTS / 64)
#define W_SPAN_BITS (W_LEVELS * W_BITS) //  ticks covered below the overflow list: 2^32
#define W_FAR_TICKS (1ULL << 62)        //  clamp for absurd deadlines (no overflow)

struct pd_wheel {
    int64_t origin;                     //  ms at tick 0
    int64_t tick_ms;                    //  ms per tick
    uint64_t cur;                       //  every timer whose tick is <= cur is on `due`
    size_t count;                       //  timers linked anywhere in the wheel
    uint64_t map[W_LEVELS][W_WORDS];    //  one bit per non-empty slot
    pd_timer_t slot[W_LEVELS][W_SLOTS]; //  list heads (circular, sentinel)
    pd_timer_t overflow;                //  timers beyond the top level
    pd_timer_t due;                     //  timers ready to fire, in firing order
};

static inline void
s_list_init(pd_timer_t *h)
{
    h->next = h->prev = h;
}

static inline bool
s_list_empty(const pd_timer_t *h)
{
    return h->next == h;
}

static inline void
s_list_push(pd_timer_t *h, pd_timer_t *t)
{
    t->prev = h->prev;
    t->next = h;
    h->prev->next = t;
    h->prev = t;
}

static inline void
s_list_unlink(pd_timer_t *t)
{
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

//  Moves every timer of src to the tail of dst, in order; src ends empty.
static void
s_list_splice(pd_timer_t *dst, pd_timer_t *src)
{
    if (s_list_empty(src))
        return;
    pd_timer_t *first = src->next, *last = src->prev;
    first->prev = dst->prev;
    dst->prev->next = first;
    last->next = dst;
    dst->prev = last;
    s_list_init(src);
}

static inline void
s_bit_set(uint64_t *map, unsigned i)
{
    map[i >> 6] |= 1ULL << (i & 63);
}

static inline void
s_bit_clear(uint64_t *map, unsigned i)
{
    map[i >> 6] &= ~(1ULL << (i & 63));
}

//  Index of the first set bit at or after `from` in a 256-bit map, or -1.
static int
s_bit_next(const uint64_t *map, unsigned from)
{
    if (from >= W_SLOTS)
        return -1;
    unsigned w = from >> 6;
    uint64_t bits = map[w] & (~0ULL << (from & 63));
    for (;;) {
        if (bits)
            return (int)(w * 64 + (unsigned)__builtin_ctzll(bits));
        if (++w == W_WORDS)
            return -1;
        bits = map[w];
    }
}

//  The tick of a deadline, if it lies after cur; false if the timer is due. The tick is the
//  deadline rounded up to a tick boundary, so nothing fires early.
static bool
s_tick_of(const pd_wheel_t *self, int64_t deadline, uint64_t *tick)
{
    int64_t base = self->origin + (int64_t)self->cur * self->tick_ms;
    if (deadline <= base)
        return false;
    uint64_t delta = (uint64_t)deadline - (uint64_t)base, ticks = delta;
    if (self->tick_ms != 1) //  the reaper's tick: no division on its every add and cancel
        ticks = delta / (uint64_t)self->tick_ms + (delta % (uint64_t)self->tick_ms != 0);
    *tick = self->cur + (ticks < W_FAR_TICKS ? ticks : W_FAR_TICKS);
    return true;
}

//  Where a timer at `tick` (> cur) belongs: its level, or W_LEVELS for the overflow list.
static inline int
s_level_of(uint64_t tick, uint64_t cur)
{
    uint64_t diff = tick ^ cur;
    if (diff >> W_SPAN_BITS)
        return W_LEVELS;
    return (63 - __builtin_clzll(diff)) / W_BITS;
}

static inline unsigned
s_digit(uint64_t tick, int level)
{
    return (unsigned)((tick >> (level * W_BITS)) & W_MASK);
}

//  Links t (unlinked) where it belongs relative to cur.
static void
s_place(pd_wheel_t *self, pd_timer_t *t)
{
    uint64_t tick;
    if (!s_tick_of(self, t->deadline, &tick)) {
        s_list_push(&self->due, t);
        return;
    }
    int level = s_level_of(tick, self->cur);
    if (level == W_LEVELS) {
        s_list_push(&self->overflow, t);
        return;
    }
    unsigned idx = s_digit(tick, level);
    s_list_push(&self->slot[level][idx], t);
    s_bit_set(self->map[level], idx);
}

//  Re-places every timer of list (now that cur has reached its first tick); list ends empty.
static void
s_cascade(pd_wheel_t *self, pd_timer_t *list)
{
    pd_timer_t tmp;
    s_list_init(&tmp);
    s_list_splice(&tmp, list);
    while (!s_list_empty(&tmp)) {
        pd_timer_t *t = tmp.next;
        s_list_unlink(t);
        s_place(self, t);
    }
}

//  The next tick at which something happens after cur: a level-0 slot fires, a higher slot
//  cascades, or the overflow list is rescanned. Sets *level (W_LEVELS for the overflow list)
//  and *idx. Returns false if the wheel holds nothing beyond cur.
static bool
s_next_event(const pd_wheel_t *self, uint64_t *at, int *level, unsigned *idx)
{
    for (int l = 0; l < W_LEVELS; l++) {
        int i = s_bit_next(self->map[l], s_digit(self->cur, l) + 1);
        if (i < 0)
            continue;
        uint64_t span = 1ULL << ((l + 1) * W_BITS);
        *at = (self->cur & ~(span - 1)) | ((uint64_t)i << (l * W_BITS));
        *level = l;
        *idx = (unsigned)i;
        return true;
    }
    if (s_list_empty(&self->overflow))
        return false;
    *at = ((self->cur >> W_SPAN_BITS) + 1) << W_SPAN_BITS;
    *level = W_LEVELS;
    *idx = 0;
    return true;
}

//  Moves cur to the next event if it is at or before target (and performs it), else to target.
static void
s_step(pd_wheel_t *self, uint64_t target)
{
    uint64_t at;
    int level;
    unsigned idx;
    if (!s_next_event(self, &at, &level, &idx) || at > target) {
        self->cur = target;
        return;
    }
    self->cur = at;
    if (level == W_LEVELS) {
        s_cascade(self, &self->overflow);
    } else {
        s_bit_clear(self->map[level], idx);
        if (level == 0)
            s_list_splice(&self->due, &self->slot[0][idx]); //  all at tick `at`
        else
            s_cascade(self, &self->slot[level][idx]);
    }
}

pd_wheel_t *
pd_wheel_new(int64_t now_ms, int tick_ms)
{
    pd_wheel_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->origin = now_ms;
    self->tick_ms = tick_ms > 0 ? tick_ms : 1;
    for (int l = 0; l < W_LEVELS; l++)
        for (int i = 0; i < W_SLOTS; i++)
            s_list_init(&self->slot[l][i]);
    s_list_init(&self->overflow);
    s_list_init(&self->due);
    return self;
}

void
pd_wheel_destroy(pd_wheel_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p); //  timers still linked belong to the caller; their links are now stale
    *self_p = NULL;
}

//  True if deadlines a and b both belong in the same slot of a level (not on `due` or the
//  overflow list), given cur.
static bool
s_same_slot(const pd_wheel_t *self, int64_t a, int64_t b)
{
    uint64_t ta, tb;
    if (!s_tick_of(self, a, &ta) || !s_tick_of(self, b, &tb))
        return false;
    int level = s_level_of(ta, self->cur);
    return level < W_LEVELS && s_level_of(tb, self->cur) == level &&
           s_digit(ta, level) == s_digit(tb, level);
}

/*  A linked timer moved within the slot it sits in only gets its new deadline: it is where
 *  s_place would put it, and neither its neighbours nor the slot's tail are touched. That is
 *  the reaper's common case, an upsert pushing a deadline minutes ahead by a little more (a
 *  level-2 slot spans 65 s at 1 ms ticks), and it saves the three cache misses of an unlink
 *  and a push among a million timers. Order within a slot is not kept anyway: a slot above
 *  level 0 is re-placed timer by timer when it cascades, and a level-0 slot is one tick. */
void
pd_wheel_add(pd_wheel_t *self, pd_timer_t *t, int64_t deadline)
{
    if (pd_timer_linked(t)) {
        if (s_same_slot(self, t->deadline, deadline)) {
            t->deadline = deadline;
            return;
        }
        pd_wheel_cancel(self, t);
    }
    t->deadline = deadline;
    s_place(self, t);
    self->count++;
}

void
pd_wheel_cancel(pd_wheel_t *self, pd_timer_t *t)
{
    if (!pd_timer_linked(t))
        return;
    s_list_unlink(t);
    self->count--;
    uint64_t tick;
    if (!s_tick_of(self, t->deadline, &tick))
        return; //  was on `due`
    int level = s_level_of(tick, self->cur);
    if (level == W_LEVELS)
        return;
    unsigned idx = s_digit(tick, level);
    if (s_list_empty(&self->slot[level][idx]))
        s_bit_clear(self->map[level], idx);
}

size_t
pd_wheel_advance(pd_wheel_t *self, int64_t now, size_t max, pd_wheel_fire_fn fn, void *arg)
{
    uint64_t target = self->cur;
    if (now > self->origin) {
        uint64_t t = ((uint64_t)now - (uint64_t)self->origin) / (uint64_t)self->tick_ms;
        if (t > target)
            target = t;
    }
    size_t fired = 0;
    for (;;) {
        while (fired < max && !s_list_empty(&self->due)) {
            pd_timer_t *t = self->due.next;
            s_list_unlink(t);
            self->count--;
            fired++;
            fn(t, arg);
        }
        if (fired >= max || self->cur >= target)
            break;
        s_step(self, target);
    }
    return fired;
}

int64_t
pd_wheel_timeout(pd_wheel_t *self, int64_t now, int64_t cap_ms)
{
    if (cap_ms < 0)
        cap_ms = 0;
    if (!s_list_empty(&self->due))
        return 0;
    uint64_t at;
    int level;
    unsigned idx;
    if (!s_next_event(self, &at, &level, &idx))
        return cap_ms;
    int64_t when = self->origin + (int64_t)at * self->tick_ms;
    if (when <= now)
        return 0;
    uint64_t d = (uint64_t)when - (uint64_t)now;
    return d < (uint64_t)cap_ms ? (int64_t)d : cap_ms;
}

size_t
pd_wheel_count(const pd_wheel_t *self)
{
    return self->count;
}

/*  ------------------------------------------------------------------------------------------
 *  Self test. */

//  Checks every invariant: each timer sits where s_place would put it, the maps match the
//  slots, and the count matches the lists.
static void
s_check(const pd_wheel_t *self)
{
    size_t n = 0;
    for (int l = 0; l < W_LEVELS; l++) {
        for (unsigned i = 0; i < W_SLOTS; i++) {
            const pd_timer_t *h = &self->slot[l][i];
            bool bit = (self->map[l][i >> 6] >> (i & 63)) & 1;
            PD_CHECK(bit == !s_list_empty(h));
            for (const pd_timer_t *t = h->next; t != h; t = t->next) {
                uint64_t tick;
                PD_CHECK(t->next->prev == t);
                PD_CHECK(s_tick_of(self, t->deadline, &tick));
                PD_CHECK(s_level_of(tick, self->cur) == l && s_digit(tick, l) == i);
                n++;
            }
        }
    }
    for (const pd_timer_t *t = self->overflow.next; t != &self->overflow; t = t->next) {
        uint64_t tick;
        PD_CHECK(s_tick_of(self, t->deadline, &tick) && s_level_of(tick, self->cur) == W_LEVELS);
        n++;
    }
    for (const pd_timer_t *t = self->due.next; t != &self->due; t = t->next) {
        uint64_t tick;
        PD_CHECK(!s_tick_of(self, t->deadline, &tick));
        n++;
    }
    PD_CHECK(n == self->count);
}

typedef struct {
    pd_timer_t timer;
    int id;
    int fired;        //  times fired
    int64_t fired_at; //  `now` of the advance that fired it
    bool active;      //  reference: scheduled and not yet fired or cancelled
} s_item_t;

typedef struct {
    int64_t now;
    size_t n;
    int64_t last_deadline;
    bool ordered;
} s_fire_ctx_t;

static void
s_on_fire(pd_timer_t *t, void *arg)
{
    s_fire_ctx_t *ctx = arg;
    s_item_t *it = (s_item_t *)t;
    PD_CHECK(!pd_timer_linked(t));
    PD_CHECK(it->active);
    PD_CHECK(t->deadline <= ctx->now);
    if (t->deadline < ctx->last_deadline)
        ctx->ordered = false;
    ctx->last_deadline = t->deadline;
    it->active = false;
    it->fired++;
    it->fired_at = ctx->now;
    ctx->n++;
}

static size_t
s_advance(pd_wheel_t *w, int64_t now, size_t max, bool *ordered)
{
    s_fire_ctx_t ctx = {now, 0, INT64_MIN, true};
    size_t n = pd_wheel_advance(w, now, max, s_on_fire, &ctx);
    PD_CHECK(n == ctx.n);
    if (ordered)
        *ordered = ctx.ordered;
    return n;
}

static void
s_add(pd_wheel_t *w, s_item_t *it, int64_t deadline)
{
    pd_wheel_add(w, &it->timer, deadline);
    it->active = true;
}

static uint64_t s_rng = 0x2545f4914f6cdd1dULL;

static uint64_t
s_rand(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

static int
s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double
s_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
pd_wheel_test(bool verbose)
{
    const int64_t T0 = 1700000000000; //  a realistic epoch-ms origin
    const int64_t DAY = 86400000;

    /* Insert and fire exactly at the deadline, across every level boundary. */
    {
        static const int64_t offs[] = {1, 2, 5, 255, 256, 257, 511, 65535, 65536, 65537, 70000,
                                       (1 << 24) - 1, 1 << 24, (1 << 24) + 3, 3 * DAY,
                                       49 * DAY, 50 * DAY, 60 * DAY, 400 * DAY};
        enum { N = sizeof offs / sizeof *offs };
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        PD_CHECK(w && pd_wheel_count(w) == 0);
        s_item_t it[N];
        memset(it, 0, sizeof it);
        for (int i = 0; i < N; i++)
            s_add(w, &it[i], T0 + offs[i]);
        PD_CHECK(pd_wheel_count(w) == N);
        s_check(w);
        for (int i = 0; i < N; i++) {
            /* Just before: nothing of ours fires; at the deadline: exactly this one. */
            PD_CHECK(s_advance(w, T0 + offs[i] - 1, SIZE_MAX, NULL) == 0);
            s_check(w);
            PD_CHECK(pd_wheel_timeout(w, T0 + offs[i] - 1, INT64_MAX) == 1);
            PD_CHECK(s_advance(w, T0 + offs[i], SIZE_MAX, NULL) == 1);
            PD_CHECK(it[i].fired == 1 && it[i].fired_at == T0 + offs[i]);
            s_check(w);
        }
        PD_CHECK(pd_wheel_count(w) == 0);
        PD_CHECK(pd_wheel_timeout(w, T0 + 400 * DAY, 250) == 250);
        pd_wheel_destroy(&w);
        PD_CHECK(w == NULL);
        pd_wheel_destroy(&w);
    }

    /* Cancel (in every kind of place), cancel twice, reschedule. */
    {
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        s_item_t a = {0}, b = {0}, c = {0}, d = {0}, e = {0};
        s_add(w, &a, T0 + 10);
        s_add(w, &b, T0 + 100000);
        s_add(w, &c, T0 + 90 * DAY);    //  overflow list
        s_add(w, &d, T0 - 5);           //  already due
        s_add(w, &e, T0 + 300);
        pd_wheel_cancel(w, &a.timer);
        pd_wheel_cancel(w, &a.timer);   //  unlinked: no-op
        pd_wheel_cancel(w, &c.timer);
        pd_wheel_cancel(w, &d.timer);
        PD_CHECK(!pd_timer_linked(&a.timer) && pd_wheel_count(w) == 2);
        s_check(w);
        /* Reschedule earlier and later, linked or not. */
        pd_wheel_add(w, &b.timer, T0 + 50);
        pd_wheel_add(w, &e.timer, T0 + 5000);
        PD_CHECK(pd_wheel_count(w) == 2);
        s_check(w);
        PD_CHECK(s_advance(w, T0 + 49, SIZE_MAX, NULL) == 0);
        PD_CHECK(s_advance(w, T0 + 60, SIZE_MAX, NULL) == 1 && b.fired == 1);
        /* A cascaded timer (e moved from level 1 to level 0) can still be cancelled. */
        PD_CHECK(s_advance(w, T0 + 4900, SIZE_MAX, NULL) == 0);
        s_check(w);
        pd_wheel_cancel(w, &e.timer);
        s_check(w);
        PD_CHECK(pd_wheel_count(w) == 0 && pd_wheel_timeout(w, T0 + 4900, 77) == 77);
        PD_CHECK(s_advance(w, T0 + 100 * DAY, SIZE_MAX, NULL) == 0);
        PD_CHECK(a.fired + c.fired + d.fired + e.fired == 0);
        pd_wheel_destroy(&w);
    }

    /* Rescheduling within a slot (pd_wheel_add's fast path): the timer stays among its
     * neighbours, the wheel stays exact, and each fires at its latest deadline. */
    {
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        s_item_t x[3];
        memset(x, 0, sizeof x);
        for (int i = 0; i < 3; i++)
            s_add(w, &x[i], T0 + 900000 + i); //  one level-2 slot: ticks 851968..917503
        pd_timer_t *prev = x[1].timer.prev, *next = x[1].timer.next;
        s_add(w, &x[1], T0 + 910000);
        PD_CHECK(x[1].timer.prev == prev && x[1].timer.next == next && pd_wheel_count(w) == 3);
        s_check(w);
        s_add(w, &x[0], T0 + 920000); //  the next slot: moved
        s_add(w, &x[2], T0 + 5);      //  level 0
        s_add(w, &x[2], T0 + 5);      //  the same tick again
        PD_CHECK(pd_wheel_count(w) == 3);
        s_check(w);
        PD_CHECK(s_advance(w, T0 + 5, SIZE_MAX, NULL) == 1 && x[2].fired_at == T0 + 5);
        PD_CHECK(s_advance(w, T0 + 909999, SIZE_MAX, NULL) == 0);
        s_check(w);
        PD_CHECK(s_advance(w, T0 + 910000, SIZE_MAX, NULL) == 1 && x[1].fired_at == T0 + 910000);
        PD_CHECK(s_advance(w, T0 + 919999, SIZE_MAX, NULL) == 0);
        PD_CHECK(s_advance(w, T0 + 920000, SIZE_MAX, NULL) == 1 && x[0].fired_at == T0 + 920000);
        PD_CHECK(pd_wheel_count(w) == 0);
        pd_wheel_destroy(&w);
    }

    /* Past, now and absurd deadlines. */
    {
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        s_item_t p[4];
        memset(p, 0, sizeof p);
        s_add(w, &p[0], T0 - 1000);
        s_add(w, &p[1], INT64_MIN);
        s_add(w, &p[2], T0);
        s_add(w, &p[3], INT64_MAX);
        s_check(w);
        PD_CHECK(pd_wheel_timeout(w, T0, 1000) == 0);
        PD_CHECK(s_advance(w, T0, SIZE_MAX, NULL) == 3);
        PD_CHECK(p[0].fired && p[1].fired && p[2].fired && !p[3].fired);
        PD_CHECK(s_advance(w, T0 + 1000 * DAY, SIZE_MAX, NULL) == 0);
        s_check(w);
        /* A deadline before cur (the wheel already advanced) is due at once. */
        s_add(w, &p[0], T0 + 10);
        PD_CHECK(s_advance(w, T0 + 1000 * DAY, SIZE_MAX, NULL) == 1);
        pd_wheel_cancel(w, &p[3].timer);
        PD_CHECK(pd_wheel_count(w) == 0);
        /* now before the origin: nothing moves. */
        s_add(w, &p[1], T0 + 1000 * DAY + 5);
        PD_CHECK(s_advance(w, T0 - DAY, SIZE_MAX, NULL) == 0);
        PD_CHECK(s_advance(w, T0 + 1000 * DAY + 5, SIZE_MAX, NULL) == 1);
        pd_wheel_destroy(&w);
    }

    /* Coarser ticks round up: never early, at most one tick late. */
    {
        pd_wheel_t *w = pd_wheel_new(T0, 10);
        s_item_t x = {0};
        s_add(w, &x, T0 + 15);
        PD_CHECK(s_advance(w, T0 + 15, SIZE_MAX, NULL) == 0);
        PD_CHECK(s_advance(w, T0 + 19, SIZE_MAX, NULL) == 0);
        PD_CHECK(pd_wheel_timeout(w, T0 + 19, 1000) == 1);
        PD_CHECK(s_advance(w, T0 + 20, SIZE_MAX, NULL) == 1);
        pd_wheel_destroy(&w);
    }

    /* 100k timers at one tick (a level-1 slot), drained under a budget of 1000 per call. */
    {
        enum { N = 100000 };
        s_item_t *it = calloc(N, sizeof *it);
        PD_CHECK(it);
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        double t0 = s_secs();
        for (int i = 0; i < N; i++)
            s_add(w, &it[i], T0 + 1000);
        double t1 = s_secs();
        s_check(w);
        PD_CHECK(pd_wheel_timeout(w, T0, 5000) > 0 && pd_wheel_timeout(w, T0, 5000) <= 1000);
        PD_CHECK(s_advance(w, T0 + 999, 1000, NULL) == 0);
        size_t total = 0, calls = 0;
        while (pd_wheel_count(w) > 0) {
            size_t n = s_advance(w, T0 + 1000, 1000, NULL);
            PD_CHECK(n == 1000);
            total += n;
            calls++;
            if (pd_wheel_count(w))
                PD_CHECK(pd_wheel_timeout(w, T0 + 1000, 5000) == 0);
        }
        double t2 = s_secs();
        PD_CHECK(total == N && calls == N / 1000);
        for (int i = 0; i < N; i++)
            PD_CHECK(it[i].fired == 1);
        if (verbose)
            printf("   wheel: %d adds at one tick %.1f ms, fired in %zu calls %.1f ms\n", N,
                   (t1 - t0) * 1e3, calls, (t2 - t1) * 1e3);
        pd_wheel_destroy(&w);
        free(it);
    }

    /* max budget with mixed deadlines: the earliest fire first, the rest on the next call. */
    {
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        s_item_t it[10];
        memset(it, 0, sizeof it);
        for (int i = 0; i < 10; i++)
            s_add(w, &it[i], T0 + 100 + 37 * (9 - i));
        bool ordered;
        PD_CHECK(s_advance(w, T0 + 10000, 3, &ordered) == 3 && ordered);
        PD_CHECK(it[9].fired && it[8].fired && it[7].fired && !it[6].fired);
        PD_CHECK(pd_wheel_timeout(w, T0 + 10000, 1000) == 0);
        PD_CHECK(s_advance(w, T0 + 10000, 3, NULL) == 3);
        PD_CHECK(s_advance(w, T0 + 10000, 0, NULL) == 0);
        PD_CHECK(s_advance(w, T0 + 10000, 3, NULL) == 3);
        PD_CHECK(s_advance(w, T0 + 10000, 3, NULL) == 1);
        PD_CHECK(s_advance(w, T0 + 10000, 3, NULL) == 0);
        pd_wheel_destroy(&w);
    }

    /* Sleeping for pd_wheel_timeout never oversleeps, and reaches far deadlines in a few
     * wake-ups (one per level cascaded), not one per slot. */
    {
        static const int64_t offs[] = {3, 300, 70000, 20000000, 3 * DAY, 45 * DAY, 75 * DAY};
        for (size_t k = 0; k < sizeof offs / sizeof *offs; k++) {
            pd_wheel_t *w = pd_wheel_new(T0, 1);
            s_item_t x = {0};
            s_add(w, &x, T0 + offs[k]);
            int64_t now = T0;
            int wakeups = 0;
            while (!x.fired) {
                int64_t to = pd_wheel_timeout(w, now, INT64_MAX);
                PD_CHECK(now + to <= T0 + offs[k]);
                now += to;
                s_advance(w, now, SIZE_MAX, NULL);
                wakeups++;
                PD_CHECK(wakeups < 12);
            }
            PD_CHECK(x.fired_at == T0 + offs[k]);
            pd_wheel_destroy(&w);
        }
        /* The cap applies. */
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        s_item_t x = {0};
        s_add(w, &x, T0 + 10);
        PD_CHECK(pd_wheel_timeout(w, T0, 250) == 10 && pd_wheel_timeout(w, T0, 5) == 5);
        PD_CHECK(pd_wheel_timeout(w, T0 + 10, 250) == 0 && pd_wheel_timeout(w, T0 + 11, 250) == 0);
        pd_wheel_destroy(&w);
    }

    /* Randomized: adds (past, near, far, beyond the top level), cancels, reschedules and
     * advances of every size, against a sorted reference of the active deadlines. */
    {
        enum { N = 4000, OPS = 60000 };
        s_item_t *it = calloc(N, sizeof *it);
        int64_t *ref = calloc(N, sizeof *ref);
        PD_CHECK(it && ref);
        for (int i = 0; i < N; i++)
            it[i].id = i;
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        int64_t now = T0;
        for (int op = 0; op < OPS; op++) {
            s_item_t *x = &it[s_rand() % N];
            int r = (int)(s_rand() % 100);
            if (r < 45) {
                int64_t off;
                switch (s_rand() % 6) {
                case 0: off = -(int64_t)(s_rand() % 5000); break;
                case 1: off = (int64_t)(s_rand() % 300); break;
                case 2: off = (int64_t)(s_rand() % 70000); break;
                case 3: off = (int64_t)(s_rand() % (20 * DAY)); break;
                case 4: off = (int64_t)(s_rand() % (120 * DAY)); break;
                default: off = (int64_t)(s_rand() % 2000); break;
                }
                s_add(w, x, now + off); //  a reschedule when already active
            } else if (r < 60) {
                pd_wheel_cancel(w, &x->timer);
                x->active = false;
            } else {
                int64_t step;
                switch (s_rand() % 5) {
                case 0: step = 0; break;
                case 1: step = (int64_t)(s_rand() % 10); break;
                case 2: step = (int64_t)(s_rand() % 1000); break;
                case 3: step = (int64_t)(s_rand() % 100000); break;
                default: step = (int64_t)(s_rand() % (3 * DAY)); break;
                }
                /* The reference: deadlines due by now+step, sorted. */
                size_t n = 0, nactive = 0;
                int64_t earliest = INT64_MAX;
                for (int i = 0; i < N; i++) {
                    if (!it[i].active)
                        continue;
                    nactive++;
                    if (it[i].timer.deadline < earliest)
                        earliest = it[i].timer.deadline;
                    if (it[i].timer.deadline <= now + step)
                        ref[n++] = it[i].timer.deadline;
                }
                qsort(ref, n, sizeof *ref, s_cmp_i64);
                PD_CHECK(pd_wheel_count(w) == nactive);
                int64_t to = pd_wheel_timeout(w, now, INT64_MAX);
                if (nactive)
                    PD_CHECK(earliest <= now ? to == 0 : now + to <= earliest);
                else
                    PD_CHECK(to == INT64_MAX);
                now += step;
                size_t max = s_rand() % 4 == 0 ? (size_t)(s_rand() % (n + 2)) : SIZE_MAX;
                size_t fired = s_advance(w, now, max, NULL);
                PD_CHECK(fired == (n < max ? n : max));
                if (fired < n)
                    fired += s_advance(w, now, SIZE_MAX, NULL);
                PD_CHECK(fired == n);
                for (int i = 0; i < N; i++)
                    PD_CHECK(!it[i].active || it[i].timer.deadline > now);
            }
            if (op % 5000 == 0)
                s_check(w);
        }
        s_check(w);
        if (verbose)
            printf("   wheel: %d random ops, %zu timers left, %.0f days simulated\n", OPS,
                   pd_wheel_count(w), (double)(now - T0) / (double)DAY);
        pd_wheel_destroy(&w);
        free(it);
        free(ref);
    }

    /* Fired in deadline order across levels when scheduled ahead. */
    {
        enum { N = 20000 };
        s_item_t *it = calloc(N, sizeof *it);
        PD_CHECK(it);
        pd_wheel_t *w = pd_wheel_new(T0, 1);
        for (int i = 0; i < N; i++)
            s_add(w, &it[i], T0 + 1 + (int64_t)(s_rand() % (10 * DAY)));
        bool ordered;
        PD_CHECK(s_advance(w, T0 + 10 * DAY, SIZE_MAX, &ordered) == N && ordered);
        pd_wheel_destroy(&w);
        free(it);
    }
}
