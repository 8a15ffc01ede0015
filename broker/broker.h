/*  broker — routes requests from gateways and the reaper to the store node that owns each
 *  record, scatter-gathers lists over every store node, runs the one-presence-per-user claim
 *  protocol, tracks store membership, and hosts the PUB/SUB bus proxy.
 *  The role's only entry point is broker_main (cmd/roles.h). */
#ifndef BROKER_H
#define BROKER_H

#include "pd_config.h"

int broker_main(pd_config_t *cfg);

#endif
