/*  pd_wheel — a hierarchical timing wheel: O(1) insert and cancel, O(1) amortised per expiry.
 *  Used by the reaper to hold every record deadline of the cluster. Timers are intrusive: the
 *  caller embeds a pd_timer_t in its own entry, so the wheel never allocates per timer. */
#ifndef PD_WHEEL_H
#define PD_WHEEL_H

#include "pd_util.h"

typedef struct pd_timer {
    struct pd_timer *next, *prev; //  links in a wheel slot (owned by the wheel)
    int64_t deadline;             //  ms since epoch
} pd_timer_t;

typedef struct pd_wheel pd_wheel_t;
typedef void (*pd_wheel_fire_fn)(pd_timer_t *t, void *arg);

//  A wheel starting at now_ms with the given tick (1 ms for the reaper).
pd_wheel_t *pd_wheel_new(int64_t now_ms, int tick_ms);
void pd_wheel_destroy(pd_wheel_t **self_p);
//  Schedules t (not linked) at deadline; a deadline in the past fires on the next advance.
void pd_wheel_add(pd_wheel_t *self, pd_timer_t *t, int64_t deadline);
//  Unlinks t if linked; safe on an unlinked timer.
void pd_wheel_cancel(pd_wheel_t *self, pd_timer_t *t);
static inline bool
pd_timer_linked(const pd_timer_t *t)
{
    return t->prev != NULL;
}
//  Fires (unlinks, then calls fn) every timer with deadline <= now, at most max of them;
//  returns how many fired. Timers not fired because of max fire on the next call.
size_t pd_wheel_advance(pd_wheel_t *self, int64_t now, size_t max, pd_wheel_fire_fn fn, void *arg);
//  Milliseconds until the earliest deadline (0 if due), capped at cap_ms; cap_ms if empty.
int64_t pd_wheel_timeout(pd_wheel_t *self, int64_t now, int64_t cap_ms);
size_t pd_wheel_count(const pd_wheel_t *self);

void pd_wheel_test(bool verbose);

#endif
