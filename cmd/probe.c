/*  probe — `presenced probe --role broker|store|reaper|gateway [--node N|auto] [--max-age MS]
 *  [role flags]`: exit 0 when that role's process on this host (or pod) is alive and its loop
 *  turns, 1 when not (why on stderr), 2 on bad usage. It reads the role's heartbeat file in the
 *  run directory (pd_probe.h); every other flag means what it means to the role (--run-dir,
 *  --cluster, --port decide the run directory; PRESENCED_* variables too), so a Kubernetes
 *  exec probe runs it with the container's own settings. No socket, no key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_config.h"
#include "pd_probe.h"
#include "probe.h"

#define PROBE_MAX_AGE_MS 5000 //  five missed beats

int
probe_main(int argc, char **argv)
{
    const char *role = NULL;
    long max_age = PROBE_MAX_AGE_MS;
    char *args[64];
    int n = 0;
    args[n++] = argv[0];
    args[n++] = NULL; /* the role, below */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        if (strncmp(a, "--role=", 7) == 0 || strncmp(a, "--max-age=", 10) == 0)
            v = strchr(a, '=') + 1;
        else if ((strcmp(a, "--role") == 0 || strcmp(a, "--max-age") == 0) && i + 1 < argc)
            v = argv[++i];
        if (v && strncmp(a, "--role", 6) == 0) {
            role = v;
        } else if (v) {
            char *end;
            max_age = strtol(v, &end, 10);
            if (*end || max_age < 1) {
                fprintf(stderr, "presenced probe: --max-age needs milliseconds\n");
                return 2;
            }
        } else if (n < (int)(sizeof args / sizeof *args) - 1) {
            args[n++] = argv[i];
        }
    }
    if (!role || !(strcmp(role, "broker") == 0 || strcmp(role, "store") == 0 ||
                   strcmp(role, "reaper") == 0 || strcmp(role, "gateway") == 0)) {
        fprintf(stderr, "usage: presenced probe --role broker|store|reaper|gateway "
                        "[--node N|auto] [--max-age MS (%d)] [--run-dir DIR | role flags]\n",
                PROBE_MAX_AGE_MS);
        return 2;
    }
    args[1] = (char *)role;
    args[n] = NULL;
    static pd_config_t cfg;
    if (pd_config_parse(&cfg, n, args) < 0)
        return 2;
    if (!cfg.node && (strcmp(role, "store") == 0 || strcmp(role, "gateway") == 0)) {
        fprintf(stderr, "presenced probe: a %s needs --node N (or auto)\n", role);
        return 2;
    }
    char name[48], err[512];
    pd_probe_name(&cfg, name, sizeof name);
    int64_t age = pd_probe_check(cfg.run_dir, name, max_age, err, sizeof err);
    if (age < 0) {
        fprintf(stderr, "presenced probe: %s\n", err);
        return 1;
    }
    printf("%s alive (last beat %lld ms ago)\n", name, (long long)age);
    return 0;
}
