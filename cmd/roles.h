/*  roles — the entry point of every role. Each role runs in its own process, reads its settings
 *  from cfg, and returns the process exit code. */
#ifndef PD_ROLES_H
#define PD_ROLES_H

#include "pd_config.h"

int gateway_main(pd_config_t *cfg);
int broker_main(pd_config_t *cfg);
int store_main(pd_config_t *cfg);
int reaper_main(pd_config_t *cfg);
//  The embedded default: starts and supervises one of each role (N stores, M gateways).
int supervisor_main(pd_config_t *cfg);

#endif
