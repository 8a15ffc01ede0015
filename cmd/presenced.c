/*  presenced — one binary, one role per process (relayd's procs[] table).
 *
 *    presenced                    the whole cluster on this machine (supervisor + children)
 *    presenced gateway|broker|store|reaper [flags]   one role, as a Kubernetes pod runs it
 *    presenced probe --role ROLE [--node N] [flags]  is that role's process alive (probe.c)
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "pd_log.h"
#include "probe.h"
#include "roles.h"

static const struct {
    const char *name;
    int (*main)(pd_config_t *cfg);
} s_roles[] = {
    {"gateway", gateway_main},
    {"broker", broker_main},
    {"store", store_main},
    {"reaper", reaper_main},
};

int
main(int argc, char **argv)
{
    static pd_config_t cfg;
    if (sodium_init() < 0) {
        fprintf(stderr, "presenced: libsodium failed to initialise\n");
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "probe") == 0)
        return probe_main(argc, argv);
    if (pd_config_parse(&cfg, argc, argv) < 0) {
        pd_config_usage();
        return 2;
    }
    pd_log_set_verbosity(cfg.verbosity);
    if (!cfg.role[0]) {
        pd_log_init("supervisor");
        return supervisor_main(&cfg);
    }
    for (size_t i = 0; i < sizeof s_roles / sizeof *s_roles; i++) {
        if (strcmp(cfg.role, s_roles[i].name) != 0)
            continue;
        char name[32];
        if (cfg.node)
            snprintf(name, sizeof name, "%s-%d", cfg.role, cfg.node);
        else
            snprintf(name, sizeof name, "%s", cfg.role);
        pd_log_init(name);
        if (strcmp(cfg.role, "gateway") != 0)
            signal(SIGHUP, SIG_IGN); /* only gateways reload; `pkill -HUP presenced` is safe */
        return s_roles[i].main(&cfg);
    }
    fprintf(stderr, "presenced: unknown role '%s' (gateway, broker, store, reaper)\n", cfg.role);
    return 2;
}
