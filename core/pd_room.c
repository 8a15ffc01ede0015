/*  pd_room — see pd_room.h. */
#include "pd_room.h"

#include <assert.h>
#include <errno.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_map.h"

#define S_MAGIC 0x7064726f6f6d7331ULL //  "pdrooms1"
#define S_LAYOUT 1
#define S_USED 0x55534544u
#define S_NONE UINT32_MAX
#define S_HDR_BYTES 4096
#define S_DATA                                                                                     \
    (PD_ROOM_PROJECT_MAX + PD_ROOM_CHANNEL_MAX + PD_ROOM_CONN_MAX + PD_ROOM_KEY_MAX +             \
     PD_ROOM_REF_MAX + PD_ROOM_META_MAX)

enum { F_PROJECT, F_CHANNEL, F_CONN, F_KEY, F_REF, F_META, F__N };
static const uint16_t s_max[F__N] = {PD_ROOM_PROJECT_MAX, PD_ROOM_CHANNEL_MAX, PD_ROOM_CONN_MAX,
                                     PD_ROOM_KEY_MAX, PD_ROOM_REF_MAX, PD_ROOM_META_MAX};

typedef struct {
    uint32_t state;      //  S_USED: a member; written last, cleared first
    uint16_t len[F__N];  //  the fields, back to back in data
    int64_t lease_ms;
    char data[S_DATA];
} s_slot_t;

typedef struct {
    uint64_t magic;
    uint32_t layout;
    uint32_t slot_bytes;
    uint32_t capacity;
    uint32_t hwm;        //  slots [0, hwm) have been used at some time
    uint64_t next_ref;   //  phx_refs made so far
} s_hdr_t;

typedef struct room {
    pd_mapent_t e;
    uint32_t head, tail, count;
    uint16_t plen, clen;
    char project[PD_ROOM_PROJECT_MAX + 1];
    char channel[PD_ROOM_CHANNEL_MAX + 1];
} room_t;

typedef struct {
    pd_mapent_t e;       //  in members, by (channel, conn)
    room_t *room;        //  NULL: the slot is free
    uint32_t prev, next; //  the room's members
} s_node_t;

struct pd_rooms {
    int fd;
    void *map;
    size_t map_len;
    s_hdr_t *hdr;
    s_slot_t *slots;
    s_node_t *nodes;     //  one per slot
    uint32_t *free;      //  free slots below hwm
    uint32_t nfree;
    size_t nmembers;
    pd_map_t rooms;      //  room_t by (project, channel)
    pd_map_t members;    //  s_node_t by (channel, conn), project compared too
    char prefix[9];
    pd_room_hook_fn hook;
    void *hook_arg;
};

static pd_str_t
s_field(const s_slot_t *s, int f)
{
    size_t off = 0;
    for (int i = 0; i < f; i++)
        off += s->len[i];
    return (pd_str_t){s->data + off, s->len[f]};
}

static void
s_member(const s_slot_t *s, pd_room_member_t *m)
{
    m->project = s_field(s, F_PROJECT);
    m->channel = s_field(s, F_CHANNEL);
    m->conn = s_field(s, F_CONN);
    m->key = s_field(s, F_KEY);
    m->ref = s_field(s, F_REF);
    m->meta = s_field(s, F_META);
    m->lease_ms = s->lease_ms;
}

static room_t *
s_room_find(pd_rooms_t *r, pd_str_t project, pd_str_t channel, uint64_t *hash)
{
    uint64_t h = pd_map_hash(&r->rooms, project, channel);
    if (hash)
        *hash = h;
    for (pd_mapent_t *e = pd_map_first(&r->rooms, h); e; e = e->next) {
        room_t *rm = (room_t *)e;
        if (e->hash == h && pd_str_eq((pd_str_t){rm->project, rm->plen}, project) &&
            pd_str_eq((pd_str_t){rm->channel, rm->clen}, channel))
            return rm;
    }
    return NULL;
}

static room_t *
s_room_get(pd_rooms_t *r, pd_str_t project, pd_str_t channel)
{
    uint64_t h;
    room_t *rm = s_room_find(r, project, channel, &h);
    if (rm)
        return rm;
    rm = calloc(1, sizeof *rm);
    if (!rm)
        abort();
    rm->e.hash = h;
    rm->head = rm->tail = S_NONE;
    rm->plen = (uint16_t)project.len;
    rm->clen = (uint16_t)channel.len;
    memcpy(rm->project, project.ptr, project.len);
    memcpy(rm->channel, channel.ptr, channel.len);
    pd_map_add(&r->rooms, &rm->e);
    return rm;
}

static uint32_t
s_node_find(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn, uint64_t *hash)
{
    uint64_t h = pd_map_hash(&r->members, channel, conn);
    if (hash)
        *hash = h;
    for (pd_mapent_t *e = pd_map_first(&r->members, h); e; e = e->next) {
        s_node_t *n = (s_node_t *)e;
        uint32_t i = (uint32_t)(n - r->nodes);
        const s_slot_t *s = &r->slots[i];
        if (e->hash == h && pd_str_eq(s_field(s, F_CONN), conn) &&
            pd_str_eq(s_field(s, F_CHANNEL), channel) && pd_str_eq(s_field(s, F_PROJECT), project))
            return i;
    }
    return S_NONE;
}

//  Links slot i (used) into its room and the member index.
static void
s_link(pd_rooms_t *r, uint32_t i, room_t *rm, uint64_t hash)
{
    s_node_t *n = &r->nodes[i];
    n->room = rm;
    n->next = S_NONE;
    n->prev = rm->tail;
    if (rm->tail != S_NONE)
        r->nodes[rm->tail].next = i;
    else
        rm->head = i;
    rm->tail = i;
    rm->count++;
    n->e.hash = hash;
    pd_map_add(&r->members, &n->e);
    r->nmembers++;
}

//  Frees slot i: the hook sees the leave first; an empty room goes.
static void
s_remove(pd_rooms_t *r, uint32_t i)
{
    s_node_t *n = &r->nodes[i];
    room_t *rm = n->room;
    assert(rm);
    if (r->hook) {
        pd_room_member_t m;
        s_member(&r->slots[i], &m);
        r->hook(PD_ROOM_LEAVE, &m, r->hook_arg);
    }
    __atomic_store_n(&r->slots[i].state, 0, __ATOMIC_RELEASE);
    if (n->prev != S_NONE)
        r->nodes[n->prev].next = n->next;
    else
        rm->head = n->next;
    if (n->next != S_NONE)
        r->nodes[n->next].prev = n->prev;
    else
        rm->tail = n->prev;
    pd_map_del(&r->members, &n->e);
    n->room = NULL;
    r->free[r->nfree++] = i;
    r->nmembers--;
    if (--rm->count == 0) {
        pd_map_del(&r->rooms, &rm->e);
        free(rm);
    }
}

static void
s_ref(pd_rooms_t *r, char *out)
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint64_t v = ++r->hdr->next_ref;
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = digits[v % 36];
        v /= 36;
    } while (v);
    size_t pl = strlen(r->prefix);
    memcpy(out, r->prefix, pl);
    for (int k = 0; k < n; k++)
        out[pl + (size_t)k] = tmp[n - 1 - k];
    out[pl + (size_t)n] = 0;
}

//  Writes the fields into free slot i and marks it used.
static void
s_write(pd_rooms_t *r, uint32_t i, const pd_str_t *f, int64_t lease_ms)
{
    s_slot_t *s = &r->slots[i];
    size_t off = 0;
    for (int k = 0; k < F__N; k++) {
        if (f[k].len)
            memcpy(s->data + off, f[k].ptr, f[k].len);
        s->len[k] = (uint16_t)f[k].len;
        off += f[k].len;
    }
    s->lease_ms = lease_ms;
    __atomic_store_n(&s->state, S_USED, __ATOMIC_RELEASE);
}

int
pd_rooms_track(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn, pd_str_t key,
               pd_str_t meta, int64_t lease_ms, uint32_t max_members)
{
    if (project.len == 0 || project.len > PD_ROOM_PROJECT_MAX || channel.len == 0 ||
        channel.len > PD_ROOM_CHANNEL_MAX || conn.len == 0 || conn.len > PD_ROOM_CONN_MAX ||
        key.len == 0 || key.len > PD_ROOM_KEY_MAX || meta.len > PD_ROOM_META_MAX)
        return PD_ROOM_TOOBIG;
    char ref[PD_ROOM_REF_MAX + 1];
    uint64_t hash;
    uint32_t i = s_node_find(r, project, channel, conn, &hash);
    char keybuf[PD_ROOM_KEY_MAX];
    if (i != S_NONE) {
        /* an update: the old meta leaves, the new one joins under the same key */
        pd_str_t old = s_field(&r->slots[i], F_KEY);
        memcpy(keybuf, old.ptr, old.len);
        key = (pd_str_t){keybuf, old.len};
        s_remove(r, i);
    } else {
        room_t *rm = s_room_find(r, project, channel, NULL);
        if (rm && max_members && rm->count >= max_members)
            return PD_ROOM_FULL;
    }
    if (r->nfree)
        i = r->free[--r->nfree];
    else if (r->hdr->hwm < r->hdr->capacity)
        i = r->hdr->hwm++;
    else
        return PD_ROOM_NOSPACE;
    s_ref(r, ref);
    pd_str_t f[F__N] = {project, channel, conn, key, pd_str(ref), meta};
    s_write(r, i, f, lease_ms);
    s_link(r, i, s_room_get(r, project, channel), hash);
    if (r->hook) {
        pd_room_member_t m;
        s_member(&r->slots[i], &m);
        r->hook(PD_ROOM_JOIN, &m, r->hook_arg);
    }
    return PD_ROOM_OK;
}

int
pd_rooms_untrack(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn)
{
    uint32_t i = s_node_find(r, project, channel, conn, NULL);
    if (i == S_NONE)
        return 0;
    s_remove(r, i);
    return 1;
}

int
pd_rooms_renew(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_str_t conn, int64_t lease_ms)
{
    uint32_t i = s_node_find(r, project, channel, conn, NULL);
    if (i == S_NONE)
        return 0;
    r->slots[i].lease_ms = lease_ms;
    return 1;
}

size_t
pd_rooms_expire(pd_rooms_t *r, int64_t now_ms, size_t max)
{
    size_t n = 0;
    /* slots in order: a room's removal does not disturb the walk */
    for (uint32_t i = 0; i < r->hdr->hwm && n < max; i++)
        if (r->nodes[i].room && r->slots[i].lease_ms <= now_ms) {
            s_remove(r, i);
            n++;
        }
    return n;
}

void
pd_rooms_each(pd_rooms_t *r, pd_str_t project, pd_str_t channel, pd_room_each_fn fn, void *arg)
{
    room_t *rm = s_room_find(r, project, channel, NULL);
    pd_room_member_t m;
    for (uint32_t i = rm ? rm->head : S_NONE; i != S_NONE; i = r->nodes[i].next) {
        s_member(&r->slots[i], &m);
        fn(&m, arg);
    }
}

uint32_t
pd_rooms_count(pd_rooms_t *r, pd_str_t project, pd_str_t channel)
{
    room_t *rm = s_room_find(r, project, channel, NULL);
    return rm ? rm->count : 0;
}

size_t
pd_rooms_members(const pd_rooms_t *r)
{
    return r->nmembers;
}

size_t
pd_rooms_rooms(const pd_rooms_t *r)
{
    return r->rooms.n;
}

void
pd_rooms_each_room(pd_rooms_t *r, pd_room_room_fn fn, void *arg)
{
    for (size_t k = 0; k <= r->rooms.mask; k++)
        for (pd_mapent_t *e = pd_map_slot(&r->rooms, k); e; e = e->next) {
            room_t *rm = (room_t *)e;
            fn((pd_str_t){rm->project, rm->plen}, (pd_str_t){rm->channel, rm->clen}, rm->count,
               arg);
        }
}

int
pd_room_n_cmp(const void *a, const void *b)
{
    const pd_room_n_t *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return pd_str_cmp(x->channel, y->channel);
}

void
pd_rooms_set_hook(pd_rooms_t *r, pd_room_hook_fn fn, void *arg)
{
    r->hook = fn;
    r->hook_arg = arg;
}

/* -------------------------------------------------------------------------- segment */

//  A used slot whose fields fit; anything else is cleared (a slot being written by a process
//  that died is not used; anything else is damage).
static bool
s_slot_sane(const s_slot_t *s)
{
    size_t total = 0;
    for (int k = 0; k < F__N; k++) {
        if (s->len[k] > s_max[k])
            return false;
        total += s->len[k];
    }
    return total <= S_DATA && s->len[F_PROJECT] && s->len[F_CHANNEL] && s->len[F_CONN] &&
           s->len[F_KEY] && s->len[F_REF];
}

static void
s_rebuild(pd_rooms_t *r)
{
    size_t dropped = 0;
    for (uint32_t i = 0; i < r->hdr->hwm; i++) {
        s_slot_t *s = &r->slots[i];
        if (s->state != S_USED) {
            r->free[r->nfree++] = i;
            continue;
        }
        pd_str_t project = s_field(s, F_PROJECT), channel = s_field(s, F_CHANNEL);
        uint64_t hash;
        if (!s_slot_sane(s) ||
            s_node_find(r, project, channel, s_field(s, F_CONN), &hash) != S_NONE) {
            s->state = 0;
            r->free[r->nfree++] = i;
            dropped++;
            continue;
        }
        s_link(r, i, s_room_get(r, project, channel), hash);
    }
    if (dropped)
        pd_log_warn("rooms: %zu damaged or duplicate member slots dropped", dropped);
}

pd_rooms_t *
pd_rooms_open(const char *name, uint32_t capacity, const char *ref_prefix, bool *created)
{
    if (sodium_init() < 0)
        return NULL;
    bool made;
    int fd = pd_shm_open(name, &made);
    if (fd < 0)
        return NULL;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        pd_log_warn("%s: %s is in use by another process", __func__, name);
        close(fd);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        pd_log_warn("%s: fstat %s: %s", __func__, name, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!made && st.st_size > 0) {
        s_hdr_t h;
        if ((size_t)st.st_size < S_HDR_BYTES || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h ||
            (h.magic == 0 && h.layout == 0)) {
            made = true; /* its creator died before writing the header */
        } else if (h.magic != S_MAGIC || h.layout != S_LAYOUT || h.slot_bytes != sizeof(s_slot_t) ||
                   h.capacity == 0 || h.hwm > h.capacity ||
                   (uint64_t)st.st_size !=
                       S_HDR_BYTES + (uint64_t)h.capacity * sizeof(s_slot_t)) {
            pd_log_warn("%s: %s is not a presenced rooms segment of layout %d, or has a bad size; "
                        "move it away to start empty",
                        __func__, name, S_LAYOUT);
            close(fd);
            return NULL;
        } else {
            capacity = h.capacity; /* the segment's own size wins */
        }
    } else {
        made = true;
    }
    if (capacity == 0)
        capacity = 1;
    size_t len = S_HDR_BYTES + (size_t)capacity * sizeof(s_slot_t);
    if (made && (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)len) < 0)) {
        pd_log_warn("%s: ftruncate %s: %s", __func__, name, strerror(errno));
        close(fd);
        return NULL;
    }
    void *map = pd_shm_map(fd, len);
    if (map == MAP_FAILED) {
        pd_log_warn("%s: mmap %s: %s", __func__, name, strerror(errno));
        close(fd);
        return NULL;
    }
    pd_rooms_t *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->fd = fd;
    r->map = map;
    r->map_len = len;
    r->hdr = map;
    r->slots = (s_slot_t *)((char *)map + S_HDR_BYTES);
    if (made) {
        r->hdr->slot_bytes = sizeof(s_slot_t);
        r->hdr->capacity = capacity;
        r->hdr->hwm = 0;
        r->hdr->next_ref = 0;
        r->hdr->layout = S_LAYOUT;
        __atomic_store_n(&r->hdr->magic, S_MAGIC, __ATOMIC_RELEASE);
    }
    r->nodes = calloc(capacity, sizeof *r->nodes);
    r->free = malloc((size_t)capacity * sizeof *r->free);
    if (!r->nodes || !r->free)
        abort();
    pd_map_init(&r->rooms);
    pd_map_init(&r->members);
    snprintf(r->prefix, sizeof r->prefix, "%s", ref_prefix ? ref_prefix : "");
    if (!made)
        s_rebuild(r);
    if (created)
        *created = made;
    return r;
}

void
pd_rooms_close(pd_rooms_t **rp)
{
    pd_rooms_t *r = *rp;
    if (!r)
        return;
    for (size_t k = 0; k <= r->rooms.mask; k++) {
        pd_mapent_t *e = pd_map_slot(&r->rooms, k);
        while (e) {
            pd_mapent_t *next = e->next;
            free(e);
            e = next;
        }
    }
    pd_map_free(&r->rooms);
    pd_map_free(&r->members);
    munmap(r->map, r->map_len);
    close(r->fd);
    free(r->nodes);
    free(r->free);
    free(r);
    *rp = NULL;
}

int
pd_rooms_unlink(const char *name)
{
    return pd_shm_unlink(name);
}

/* -------------------------------------------------------------------------- self test */

typedef struct {
    int joins, leaves;
    char last_ref[PD_ROOM_REF_MAX + 1];
    char last_key[64];
} t_log_t;

static void
t_hook(int action, const pd_room_member_t *m, void *arg)
{
    t_log_t *l = arg;
    if (action == PD_ROOM_JOIN)
        l->joins++;
    else
        l->leaves++;
    snprintf(l->last_ref, sizeof l->last_ref, "%.*s", (int)m->ref.len, m->ref.ptr);
    snprintf(l->last_key, sizeof l->last_key, "%.*s", (int)m->key.len, m->key.ptr);
}

static void
t_count(const pd_room_member_t *m, void *arg)
{
    (void)m;
    (*(int *)arg)++;
}

void
pd_room_test(bool verbose)
{
    (void)verbose;
    char name[64];
    snprintf(name, sizeof name, "/presenced-test-rooms-%d", (int)getpid());
    pd_rooms_unlink(name);
    bool created;
    pd_rooms_t *r = pd_rooms_open(name, 8, "n1-", &created);
    PD_CHECK(r && created);
    t_log_t log = {0};
    pd_rooms_set_hook(r, t_hook, &log);
    pd_str_t p = PD_STR("demo"), room = PD_STR("room_01");
    /* one key from two connections: one key, two metas */
    PD_CHECK(pd_rooms_track(r, p, room, PD_STR("gw1/1"), PD_STR("u1"), PD_STR("{\"a\":1}"), 1000,
                            0) == PD_ROOM_OK);
    char ref1[32];
    snprintf(ref1, sizeof ref1, "%s", log.last_ref);
    PD_CHECK(strncmp(ref1, "n1-", 3) == 0);
    PD_CHECK(pd_rooms_track(r, p, room, PD_STR("gw2/1"), PD_STR("u1"), PD_STR("{}"), 1000, 0) ==
             PD_ROOM_OK);
    PD_CHECK(strcmp(log.last_ref, ref1) != 0);
    PD_CHECK(pd_rooms_count(r, p, room) == 2 && pd_rooms_rooms(r) == 1 && log.joins == 2);
    /* an update: leave of the old meta, join of the new, same key, new ref */
    PD_CHECK(pd_rooms_track(r, p, room, PD_STR("gw1/1"), PD_STR("other"), PD_STR("{\"a\":2}"),
                            1000, 0) == PD_ROOM_OK);
    PD_CHECK(log.joins == 3 && log.leaves == 1 && strcmp(log.last_key, "u1") == 0);
    PD_CHECK(pd_rooms_count(r, p, room) == 2);
    /* limits */
    PD_CHECK(pd_rooms_track(r, p, room, PD_STR("gw1/2"), PD_STR("u2"), PD_STR("{}"), 1000, 2) ==
             PD_ROOM_FULL);
    char big[PD_ROOM_META_MAX + 2];
    memset(big, ' ', sizeof big);
    PD_CHECK(pd_rooms_track(r, p, room, PD_STR("gw1/2"), PD_STR("u2"),
                            (pd_str_t){big, sizeof big}, 1000, 0) == PD_ROOM_TOOBIG);
    /* another room, another project: separate */
    PD_CHECK(pd_rooms_track(r, PD_STR("other"), room, PD_STR("gw1/1"), PD_STR("u1"), PD_STR("{}"),
                            5000, 0) == PD_ROOM_OK);
    PD_CHECK(pd_rooms_count(r, p, room) == 2 && pd_rooms_rooms(r) == 2);
    /* renew gw1's members, expire the rest */
    PD_CHECK(pd_rooms_renew(r, p, room, PD_STR("gw1/1"), 3000) == 1);
    PD_CHECK(pd_rooms_renew(r, p, room, PD_STR("gw1/9"), 3000) == 0);
    PD_CHECK(pd_rooms_expire(r, 2000, 100) == 1); /* gw2's */
    PD_CHECK(pd_rooms_count(r, p, room) == 1 && pd_rooms_members(r) == 2);
    /* re-attach: the members are there, indexes rebuilt, refs keep counting */
    pd_rooms_close(&r);
    r = pd_rooms_open(name, 8, "n1-", &created);
    PD_CHECK(r && !created && pd_rooms_members(r) == 2 && pd_rooms_rooms(r) == 2);
    int n = 0;
    pd_rooms_each(r, p, room, t_count, &n);
    PD_CHECK(n == 1);
    pd_rooms_set_hook(r, t_hook, &log);
    PD_CHECK(pd_rooms_untrack(r, p, room, PD_STR("gw1/1")) == 1);
    PD_CHECK(pd_rooms_untrack(r, p, room, PD_STR("gw1/1")) == 0);
    PD_CHECK(pd_rooms_rooms(r) == 1);
    /* capacity: 8 slots */
    int ok = 0;
    for (int i = 0; i < 10; i++) {
        char c[16];
        snprintf(c, sizeof c, "gw3/%d", i);
        if (pd_rooms_track(r, p, room, pd_str(c), PD_STR("k"), PD_STR("{}"), 9000, 0) ==
            PD_ROOM_OK)
            ok++;
    }
    PD_CHECK(ok == 7);
    /* a torn slot (marked used, fields out of range) is dropped on attach */
    uint32_t torn = 0;
    while (!r->nodes[torn].room)
        torn++;
    r->slots[torn].len[F_META] = 60000;
    pd_rooms_close(&r);
    r = pd_rooms_open(name, 8, "n1-", &created);
    PD_CHECK(r && pd_rooms_members(r) == 7);
    pd_rooms_close(&r);
    pd_rooms_unlink(name);
}
