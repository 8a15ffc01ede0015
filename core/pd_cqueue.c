/*  pd_cqueue — conflating output queue (see pd_cqueue.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_cqueue.h"
#include "pd_util.h"

void
pd_cqueue_init(pd_cqueue_t *q)
{
    *q = (pd_cqueue_t){0};
}

void
pd_cqueue_free(pd_cqueue_t *q)
{
    free(q->buf);
    free(q->ents);
    free(q->idx);
    *q = (pd_cqueue_t){0};
}

static void *
s_grow(void *p, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : first;
    while (c < need)
        c *= 2;
    p = realloc(p, c * elem);
    if (!p)
        abort();
    *cap = c;
    return p;
}

static uint32_t *
s_slot(pd_cqueue_t *q, uint64_t key)
{
    uint32_t i = (uint32_t)(key ^ key >> 32) & q->mask;
    while (q->idx[i] && q->ents[q->idx[i] - 1].key != key)
        i = (i + 1) & q->mask;
    return &q->idx[i];
}

/*  Squeezes the holes out of buf and the dead entries out of ents, and rebuilds the index
 *  (sized for twice the live entries). */
static void
s_compact(pd_cqueue_t *q)
{
    size_t src = 0, dst = 0;
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->nents; i++) {
        pd_cqent_t e = q->ents[i];
        if (!e.dead) {
            q->ents[n++] = e;
            continue;
        }
        memmove(q->buf + dst, q->buf + src, e.off - src);
        dst += e.off - src;
        src = (size_t)e.off + e.len;
        for (uint32_t k = i + 1; k < q->nents && !q->ents[k].dead; k++)
            q->ents[k].off -= (uint32_t)(src - dst);
    }
    if (q->buf) /* NULL before the first frame */
        memmove(q->buf + dst, q->buf + src, q->len - src);
    q->len = dst + (q->len - src);
    q->holes = 0;
    q->nents = n;
    uint32_t slots = 16;
    while (slots < 2 * n + 2)
        slots *= 2;
    if (slots - 1 != q->mask) {
        free(q->idx);
        q->idx = NULL;
        q->mask = slots - 1;
        q->idx = malloc(slots * sizeof *q->idx);
        if (!q->idx)
            abort();
    }
    memset(q->idx, 0, (q->mask + 1) * sizeof *q->idx);
    for (uint32_t i = 0; i < n; i++)
        *s_slot(q, q->ents[i].key) = i + 1;
}

char *
pd_cqueue_push(pd_cqueue_t *q, size_t n)
{
    q->buf = s_grow(q->buf, &q->cap, q->len + n, 1, 256);
    char *p = q->buf + q->len;
    q->len += n;
    return p;
}

char *
pd_cqueue_push_record(pd_cqueue_t *q, uint64_t key, int how, size_t n)
{
    if (!q->idx || 2 * (q->nents + 1) > q->mask + 1 || q->holes > q->len / 2)
        s_compact(q);
    uint32_t *slot = s_slot(q, key);
    bool unseen = how == PD_CQ_CREATE;
    if (*slot) {
        pd_cqent_t *old = &q->ents[*slot - 1];
        old->dead = true;
        q->holes += old->len;
        q->live--;
        q->conflated++;
        unseen = old->unseen;
        if (how == PD_CQ_DELETE && old->unseen) {
            /* the entry stays in the index as dead until the next compaction: a later
             * frame for this record starts afresh */
            old->key = key;
            q->conflated++;
            *slot = 0;
            /* open addressing: re-insert the entries after this slot */
            uint32_t i = (uint32_t)(slot - q->idx);
            for (uint32_t j = (i + 1) & q->mask; q->idx[j]; j = (j + 1) & q->mask) {
                uint32_t v = q->idx[j];
                q->idx[j] = 0;
                *s_slot(q, q->ents[v - 1].key) = v;
            }
            return NULL;
        }
    }
    size_t off = q->len;
    char *p = pd_cqueue_push(q, n);
    size_t cap_ents = q->cap_ents;
    q->ents = s_grow(q->ents, &cap_ents, (size_t)q->nents + 1, sizeof *q->ents, 16);
    q->cap_ents = (uint32_t)cap_ents;
    q->ents[q->nents] = (pd_cqent_t){key, (uint32_t)off, (uint32_t)n, unseen, false};
    *s_slot(q, key) = ++q->nents;
    q->live++;
    return p;
}

char *
pd_cqueue_take(pd_cqueue_t *q, size_t *len)
{
    if (q->holes)
        s_compact(q);
    char *b = q->len ? q->buf : NULL;
    *len = q->len;
    if (b) {
        q->buf = NULL;
        q->len = q->cap = 0;
    }
    q->nents = q->live = 0;
    if (q->idx)
        memset(q->idx, 0, (q->mask + 1) * sizeof *q->idx);
    return b;
}

/* -------------------------------------------------------------------------- self test */

static void
s_put(pd_cqueue_t *q, uint64_t key, int how, const char *text)
{
    size_t n = strlen(text);
    char *p = key ? pd_cqueue_push_record(q, key, how, n) : pd_cqueue_push(q, n);
    if (p)
        memcpy(p, text, n);
}

static bool
s_take_is(pd_cqueue_t *q, const char *want)
{
    size_t n;
    char *b = pd_cqueue_take(q, &n);
    bool ok = n == strlen(want) && (n == 0 || memcmp(b, want, n) == 0);
    free(b);
    return ok;
}

void
pd_cqueue_test(bool verbose)
{
    (void)verbose;
    pd_cqueue_t q;
    pd_cqueue_init(&q);
    /* supersede: the newest state of a record, at the end; other records keep their order */
    s_put(&q, 1, PD_CQ_CHANGE, "[a1]");
    s_put(&q, 2, PD_CQ_CHANGE, "[b1]");
    s_put(&q, 0, 0, "<pong>");
    s_put(&q, 1, PD_CQ_CHANGE, "[a2]");
    s_put(&q, 3, PD_CQ_CHANGE, "[c1]");
    s_put(&q, 1, PD_CQ_CHANGE, "[a3]");
    PD_CHECK(pd_cqueue_bytes(&q) == strlen("[b1]<pong>[c1][a3]"));
    PD_CHECK(s_take_is(&q, "[b1]<pong>[c1][a3]"));
    /* delete after a creation not yet sent: nothing; the other records are untouched */
    s_put(&q, 4, PD_CQ_CREATE, "[d+]");
    s_put(&q, 5, PD_CQ_CREATE, "[e+]");
    s_put(&q, 4, PD_CQ_CHANGE, "[d~]");
    s_put(&q, 4, PD_CQ_DELETE, "[d-]");
    PD_CHECK(s_take_is(&q, "[e+]"));
    /* delete after a creation that was sent: the delete */
    s_put(&q, 6, PD_CQ_CREATE, "[f+]");
    PD_CHECK(s_take_is(&q, "[f+]"));
    s_put(&q, 6, PD_CQ_CHANGE, "[f~]");
    s_put(&q, 6, PD_CQ_DELETE, "[f-]");
    PD_CHECK(s_take_is(&q, "[f-]"));
    /* delete after an unsent change of a record the client knows: the delete */
    s_put(&q, 7, PD_CQ_CHANGE, "[g~]");
    s_put(&q, 7, PD_CQ_DELETE, "[g-]");
    /* a record recreated after its unsent creation and delete cancelled out */
    s_put(&q, 8, PD_CQ_CREATE, "[h+]");
    s_put(&q, 8, PD_CQ_DELETE, "[h-]");
    s_put(&q, 8, PD_CQ_CREATE, "[H+]");
    PD_CHECK(s_take_is(&q, "[g-][H+]"));
    /* bounded by records, not traffic: 10,000 updates of 100 records */
    for (int i = 0; i < 10000; i++) {
        char t[16];
        snprintf(t, sizeof t, "[%03d]", i % 100);
        s_put(&q, 100 + (uint64_t)(i % 100), PD_CQ_CHANGE, t);
        PD_CHECK(q.len <= 2 * 100 * 5 + 5 && q.live <= 100);
    }
    PD_CHECK(pd_cqueue_bytes(&q) == 100 * 5);
    size_t n;
    char *b = pd_cqueue_take(&q, &n);
    PD_CHECK(n == 500 && memcmp(b, "[000][001]", 10) == 0 && memcmp(b + 495, "[099]", 5) == 0);
    free(b);
    /* many records at once (a mass leave): the index grows, every delete stays once */
    for (uint64_t k = 1; k <= 5000; k++)
        s_put(&q, k, PD_CQ_DELETE, "-");
    for (uint64_t k = 1; k <= 5000; k++)
        s_put(&q, k, PD_CQ_DELETE, "-");
    PD_CHECK(pd_cqueue_bytes(&q) == 5000 && q.live == 5000);
    b = pd_cqueue_take(&q, &n);
    PD_CHECK(n == 5000);
    free(b);
    pd_cqueue_free(&q);
}
