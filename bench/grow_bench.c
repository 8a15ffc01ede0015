/*  grow_bench — a store table's capacity growth alone (pd_table_grow, then pd_table_grow_step
 *  until the indexes are whole), wall-clock: a table of CAP slots is filled with N records of
 *  unique users, each with a claim, and doubled once. Prints how long the node stops for the
 *  growth itself, then how many steps of GROW entries the rehash took in all and the slowest
 *  one (the store takes one step per loop turn, between requests: store.c, s_capacity_step).
 *
 *  Usage: grow_bench N CAP [GROW=16384]. Built by cmake with -DPRESENCED_BENCH=ON. */
#include "pd_log.h"
#include "pd_table.h"
#include "pd_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static double
s_ms(void)
{
    return (double)pd_mono_us() / 1000.0;
}

int
main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: grow_bench N CAP [GROW=16384]\n");
        return 2;
    }
    size_t n = strtoul(argv[1], NULL, 10), cap = strtoul(argv[2], NULL, 10);
    size_t grow = argc > 3 ? strtoul(argv[3], NULL, 10) : 16384;
    if (!n || n >= cap || !grow) {
        fprintf(stderr, "grow_bench: N must be below CAP\n");
        return 2;
    }
    pd_log_set_verbosity(0);
    char name[64];
    snprintf(name, sizeof name, "/presenced-grow-bench-%d", (int)getpid());
    bool created;
    pd_table_t *t = pd_table_open(
        name, (pd_table_size_t){cap, n * 640 + (64 << 20), (size_t)1 << 40, cap * 2}, &created);
    pd_table_unlink(name); /* gone when we exit */
    PD_CHECK(t && created);
    char id[32], user[32], out[37];
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof id, "r%zu", i);
        snprintf(user, sizeof user, "u%zu", i);
        pd_record_t r = {.project = PD_STR("p"), .id = pd_str(id), .user_id = pd_str(user),
                         .status = PD_STR("online"), .status_json = PD_STR("\"online\""),
                         .source = PD_STR("rest"), .perms_json = PD_STR("[]"),
                         .meta_json = PD_STR("{\"room\":\"lobby\"}"), .read_roles = PD_STR("any"),
                         .update_roles = PD_STR(""), .delete_roles = PD_STR(""),
                         .conn = PD_STR(""), .created_ms = 1800000000000,
                         .updated_ms = 1800000000000, .expires_ms = 1800000900000};
        pd_record_t st;
        bool fresh;
        PD_CHECK(pd_table_put(t, &r, &st, NULL) == 0);
        PD_CHECK(pd_table_claim(t, r.project, r.user_id, r.id, out, &fresh) == 0);
    }
    double a = s_ms();
    PD_CHECK(pd_table_grow(t, cap * 2) == 0);
    double b = s_ms(), worst = 0;
    int steps = 0;
    for (bool done = false; !done; steps++) {
        double s0 = s_ms();
        done = pd_table_grow_step(t, grow);
        worst = s_ms() - s0 > worst ? s_ms() - s0 : worst;
    }
    printf("%zu records, capacity %zu -> %zu: stopped %.1f ms; then %d steps of %zu in %.1f ms, "
           "the slowest %.2f ms\n",
           n, cap, cap * 2, b - a, steps, grow, s_ms() - b, worst);
    pd_table_close(&t);
    return 0;
}
