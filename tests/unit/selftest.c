/*  presenced-selftest — runs the self test of one core module, or all of them.
 *  Usage: presenced-selftest [-v] [module]   (ctest runs one module per test) */
#include <stdio.h>
#include <string.h>

#include "pd_auth.h"
#include "pd_claims.h"
#include "pd_config.h"
#include "pd_cqueue.h"
#include "pd_keys.h"
#include "pd_listcache.h"
#include "pd_map.h"
#include "pd_msg.h"
#include "pd_outbox.h"
#include "pd_phx.h"
#include "pd_query.h"
#include "pd_room.h"
#include "pd_table.h"
#include "pd_util.h"
#include "pd_wheel.h"
#include "pd_zmq.h"

static const struct {
    const char *name;
    void (*fn)(bool verbose);
} s_tests[] = {
    {"util", pd_util_test},
    {"msg", pd_msg_test},
    {"table", pd_table_test},
    {"query", pd_query_test},
    {"auth", pd_auth_test},
    {"wheel", pd_wheel_test},
    {"zmq", pd_zmq_test},
    {"outbox", pd_outbox_test},
    {"config", pd_config_test},
    {"keys", pd_keys_test},
    {"claims", pd_claims_test},
    {"map", pd_map_test},
    {"listcache", pd_listcache_test},
    {"cqueue", pd_cqueue_test},
    {"phx", pd_phx_test},
    {"room", pd_room_test},
};

int
main(int argc, char **argv)
{
    bool verbose = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = true;
        else
            only = argv[i];
    }
    int ran = 0;
    for (size_t i = 0; i < sizeof s_tests / sizeof *s_tests; i++) {
        if (only && strcmp(only, s_tests[i].name) != 0)
            continue;
        printf(" * %s\n", s_tests[i].name);
        fflush(stdout);
        s_tests[i].fn(verbose);
        ran++;
    }
    if (!ran) {
        fprintf(stderr, "no such test: %s\n", only ? only : "");
        return 1;
    }
    printf("selftest: %d module(s) passed\n", ran);
    return 0;
}
