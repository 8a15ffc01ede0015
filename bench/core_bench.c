/*  core_bench — the per-upsert hot paths of the core modules, one at a time, for counting
 *  instructions under callgrind (deterministic, unlike wall-clock time on a shared machine):
 *
 *      decode-upsert  pd_msg_each of a gateway's UPSERT request (one message per frame)
 *      decode-event   pd_msg_each of a store's EVENT for an upsert of an existing record
 *      encode-event   pd_msgw_* of that EVENT, as the store writes it
 *      put            pd_table_put of an existing record (5000 records, default capacity)
 *      get-put        the store's upsert: pd_table_get, then pd_table_put
 *      reaper         the reaper's bus path: decode + learn + reschedule, 8 events per frame
 *                     (each brings its record's deadline a second closer, as the DEADLINE
 *                     topic's changes do)
 *
 *  Usage: core_bench MODE [iterations]. Each mode's measured loop is the function bench_run,
 *  so that the set-up is left out:
 *
 *      valgrind --tool=callgrind --toggle-collect=bench_run --callgrind-out-file=/dev/null \
 *          build/core_bench put 20000
 *
 *  and divide the instructions ("Collected") by the iterations. Built by cmake with
 *  -DPRESENCED_BENCH=ON. The reaper mode includes reaper.c to reach its static handlers. */
#include "../reaper/reaper.c"

#include "pd_table.h"

#include <unistd.h>

enum { RECORDS = 5000, BATCH = 8 };

static const char s_meta[] = "{\"room\":\"lobby\",\"x\":1}";
static const char s_perms[] =
    "[\"read(\\\"user:u1\\\")\",\"update(\\\"user:u1\\\")\",\"delete(\\\"user:u1\\\")\"]";
static const char s_roles[] = "user:u1";
static const char s_body[] =
    "{\"$id\":\"u1234\",\"$createdAt\":\"2026-11-23T18:42:54.586+00:00\",\"$updatedAt\":"
    "\"2026-11-23T18:42:54.586+00:00\",\"$permissions\":[\"read(\\\"user:u1234\\\")\",\"update("
    "\\\"user:u1234\\\")\",\"delete(\\\"user:u1234\\\")\"],\"userId\":\"u1234\",\"status\":"
    "\"online\",\"source\":\"rest\",\"expiresAt\":\"2026-11-23T18:57:54.586+00:00\",\"metadata\":"
    "{\"room\":\"lobby\",\"x\":1}}";

static char s_ids[RECORDS][16]; //  "u<k>": presence and user id of record k

//  An UPSERT as gateway/gw_rest.c builds it for an API key.
static void
s_upsert(pd_msgw_t *w, uint64_t rid, int k)
{
    pd_str_t id = pd_str(s_ids[k]);
    pd_msgw_begin(w, PD_MSG_UPSERT, rid);
    pd_msgw_str(w, PD_F_PROJECT, "bench", 5);
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_s(w, PD_F_USER, id);
    pd_msgw_str(w, PD_F_STATUS, "online", 6);
    pd_msgw_str(w, PD_F_STATUS_JSON, "\"online\"", 8);
    pd_msgw_str(w, PD_F_META_JSON, s_meta, sizeof s_meta - 1);
    pd_msgw_int(w, PD_F_EXPIRES, 1800000900000 + k);
    pd_msgw_str(w, PD_F_PERMS_JSON, s_perms, sizeof s_perms - 1);
    pd_msgw_str(w, PD_F_READ_ROLES, s_roles, sizeof s_roles);
    pd_msgw_str(w, PD_F_UPDATE_ROLES, s_roles, sizeof s_roles);
    pd_msgw_str(w, PD_F_DELETE_ROLES, s_roles, sizeof s_roles);
    pd_msgw_str(w, PD_F_SOURCE, "rest", 4);
    pd_msgw_int(w, PD_F_FLAGS, PD_FL_BYPASS);
    pd_msgw_int(w, PD_F_NOW, 1800000000000 + k);
    pd_msgw_end(w);
}

//  An EVENT as store/store.c publishes it for an upsert that replaced a record.
static void
s_event(pd_msgw_t *w, int64_t seq, int k, int64_t version, int64_t expires)
{
    pd_str_t id = pd_str(s_ids[k]), body = PD_STR(s_body);
    pd_msgw_begin(w, PD_MSG_EVENT, (uint64_t)seq);
    pd_msgw_int(w, PD_F_ACTION, PD_ACT_UPSERT);
    pd_msgw_int(w, PD_F_NODE, 1);
    pd_msgw_int(w, PD_F_SEQ, seq);
    pd_msgw_int(w, PD_F_DSEQ, seq); /* as if on the DEADLINE topic: the reaper's work */
    pd_msgw_int(w, PD_F_SLOT, k);
    pd_msgw_int(w, PD_F_GEN, 1800000000000);
    pd_msgw_str(w, PD_F_PROJECT, "bench", 5);
    pd_msgw_s(w, PD_F_ID, id);
    pd_msgw_s(w, PD_F_USER, id);
    pd_msgw_str(w, PD_F_STATUS, "online", 6);
    pd_msgw_str(w, PD_F_STATUS_JSON, "\"online\"", 8);
    pd_msgw_str(w, PD_F_SOURCE, "rest", 4);
    pd_msgw_str(w, PD_F_META_JSON, s_meta, sizeof s_meta - 1);
    pd_msgw_str(w, PD_F_READ_ROLES, s_roles, sizeof s_roles);
    pd_msgw_str(w, PD_F_CONN, "", 0);
    pd_msgw_int(w, PD_F_VERSION, version);
    pd_msgw_int(w, PD_F_EXPIRES, expires);
    pd_msgw_int(w, PD_F_CREATED, 1800000000000);
    pd_msgw_int(w, PD_F_UPDATED, expires - 900000);
    pd_msgw_s(w, PD_F_BODY, body);
    pd_msgw_s(w, PD_F_PREV_BODY, body);
    pd_msgw_str(w, PD_F_PREV_READ_ROLES, s_roles, sizeof s_roles);
    pd_msgw_str(w, PD_F_PREV_STATUS, "online", 6);
    pd_msgw_str(w, PD_F_PREV_META_JSON, s_meta, sizeof s_meta - 1);
    pd_msgw_int(w, PD_F_PREV_EXPIRES, expires - 1000);
    pd_msgw_s(w, PD_F_PREV_USER, id);
    pd_msgw_end(w);
}

typedef struct {
    const char *mode;
    long n;
    pd_msgw_t w;          //  decode: the one message; reaper: every frame back to back
    size_t *frame_off;    //  reaper: frame i is w.sb.data[frame_off[i], frame_off[i + 1])
    msgpack_zone zone;
    pd_table_t *table;
    pd_record_t *recs;    //  put: one record per key
    reaper_t *reaper;
    uint64_t sink;
} bench_t;

static void
s_touch(const pd_msg_t *m, void *arg)
{
    ((bench_t *)arg)->sink += m->s[PD_F_ID].len + (uint64_t)m->i[PD_F_EXPIRES];
}

//  The measured loop of every mode.
__attribute__((noinline)) static void
bench_run(bench_t *b)
{
    if (strncmp(b->mode, "decode", 6) == 0) {
        for (long i = 0; i < b->n; i++)
            pd_msg_each(b->w.sb.data, b->w.sb.size, &b->zone, s_touch, b);
    } else if (strcmp(b->mode, "encode-event") == 0) {
        for (long i = 0; i < b->n; i++) {
            pd_msgw_reset(&b->w);
            s_event(&b->w, i + 1, (int)(i % RECORDS), i + 2, 1800000900000 + i);
        }
    } else if (strcmp(b->mode, "put") == 0 || strcmp(b->mode, "get-put") == 0) {
        bool get = b->mode[0] == 'g';
        pd_record_t st, pv, old;
        for (long i = 0; i < b->n; i++) {
            pd_record_t *r = &b->recs[(i * 7919) % RECORDS];
            if (get && pd_table_get(b->table, r->project, r->id, &old) != 0)
                abort();
            r->expires_ms += 1000;
            r->updated_ms += 1000;
            if (pd_table_put(b->table, r, &st, &pv) != 0)
                abort();
            b->sink += st.version;
        }
    } else {
        for (long i = 0; i < b->n / BATCH; i++) {
            s_dispatch(b->reaper, b->w.sb.data + b->frame_off[i],
                       b->frame_off[i + 1] - b->frame_off[i], "bus", s_on_bus_msg);
        }
    }
}

static void
s_setup_table(bench_t *b)
{
    char name[64];
    snprintf(name, sizeof name, "/presenced-bench-%d", (int)getpid());
    pd_table_unlink(name);
    b->table = pd_table_open(name, (pd_table_size_t){1048576, (size_t)1 << 30, 0, 0}, NULL);
    pd_table_unlink(name); //  gone when we exit
    PD_CHECK(b->table);
    b->recs = calloc(RECORDS, sizeof *b->recs);
    PD_CHECK(b->recs);
    for (int k = 0; k < RECORDS; k++) {
        pd_record_t *r = &b->recs[k];
        r->project = PD_STR("bench");
        r->id = r->user_id = pd_str(s_ids[k]);
        r->status = PD_STR("online");
        r->status_json = PD_STR("\"online\"");
        r->source = PD_STR("rest");
        r->perms_json = PD_STR(s_perms);
        r->meta_json = PD_STR(s_meta);
        r->read_roles = r->update_roles = r->delete_roles = (pd_str_t){s_roles, sizeof s_roles};
        r->created_ms = r->updated_ms = 1800000000000;
        r->expires_ms = 1800000900000 + k;
        pd_record_t st;
        PD_CHECK(pd_table_put(b->table, r, &st, NULL) == 0);
    }
}

static void
s_setup_reaper(bench_t *b)
{
    reaper_t *self = calloc(1, sizeof *self);
    PD_CHECK(self);
    self->boot_ms = self->now = 1800000000000;
    msgpack_zone_init(&self->zone, 8192);
    pd_msgw_init(&self->out);
    self->wheel = pd_wheel_new(self->now, 1);
    b->reaper = self;
    /* Learn every record once (outside the measured loop), then n changes that bring each
     * deadline a second closer, in frames of BATCH events as the broker coalesces them. */
    int64_t seq = 0;
    for (int k = 0; k < RECORDS; k++) {
        pd_msgw_reset(&b->w);
        s_event(&b->w, ++seq, k, 1, 1800000900000 + k);
        s_dispatch(self, b->w.sb.data, b->w.sb.size, "bus", s_on_bus_msg);
    }
    PD_CHECK(self->count == RECORDS);
    pd_msgw_reset(&b->w);
    long frames = b->n / BATCH;
    b->frame_off = calloc((size_t)frames + 1, sizeof *b->frame_off);
    PD_CHECK(b->frame_off);
    for (long i = 0; i < frames * BATCH; i++) {
        if (i % BATCH == 0)
            b->frame_off[i / BATCH] = b->w.sb.size;
        int k = (int)((i * 7919) % RECORDS);
        int64_t round = i / RECORDS + 1;
        s_event(&b->w, ++seq, k, 1 + round, 1800000900000 + k - 1000 * round);
    }
    b->frame_off[frames] = b->w.sb.size;
}

int
main(int argc, char **argv)
{
    static const char *modes[] = {"decode-upsert", "decode-event", "encode-event", "put",
                                  "get-put", "reaper"};
    bench_t b = {.mode = argc > 1 ? argv[1] : "", .n = argc > 2 ? atol(argv[2]) : 10000};
    bool known = false;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        known |= strcmp(b.mode, modes[i]) == 0;
    if (!known || b.n < 1) {
        fprintf(stderr, "usage: core_bench decode-upsert|decode-event|encode-event|put|get-put|"
                        "reaper [iterations]\n");
        return 2;
    }
    pd_log_set_verbosity(0);
    for (int k = 0; k < RECORDS; k++)
        snprintf(s_ids[k], sizeof s_ids[k], "u%d", k);
    pd_msgw_init(&b.w);
    msgpack_zone_init(&b.zone, 8192);
    if (strcmp(b.mode, "decode-upsert") == 0)
        s_upsert(&b.w, 42, 1234);
    else if (strcmp(b.mode, "decode-event") == 0)
        s_event(&b.w, 77, 1234, 3, 1800000900000);
    else if (b.mode[0] == 'p' || b.mode[0] == 'g')
        s_setup_table(&b);
    else if (b.mode[0] == 'r')
        s_setup_reaper(&b);
    bench_run(&b);
    if (b.reaper) {
        PD_CHECK(b.reaper->count == RECORDS && b.reaper->malformed == 0 && b.reaper->gaps == 0);
        PD_CHECK(pd_wheel_count(b.reaper->wheel) == RECORDS);
    }
    printf("%s: %ld iterations (%llu)\n", b.mode, b.n, (unsigned long long)b.sink);
    return 0;
}
