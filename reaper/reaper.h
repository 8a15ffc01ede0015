/*  reaper — the role that turns record expiries into `delete` events.
 *
 *  One reaper process serves the whole cluster. It learns every record deadline from the event
 *  bus (and from a full SYNC with the store nodes when it starts, when a node restarts, and
 *  when it misses a node's event), holds them in a timing wheel, and at each deadline asks the
 *  owning store, through the broker, to delete the record if its version is still the one that
 *  was due. The store decides, deletes and publishes the `delete` event; the reaper never
 *  publishes anything itself, so a crashed or duplicated reaper cannot produce a second event. */
#ifndef REAPER_H
#define REAPER_H

#include "pd_config.h"

//  Runs the reaper role until SIGTERM or SIGINT; returns 0 then, or -1 if it cannot start
//  (logged). Reads cfg->broker_front, cfg->bus_out and cfg->verbosity.
int reaper_main(pd_config_t *cfg);

#endif
