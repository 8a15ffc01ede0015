/*  store — a store node: owns one shard of the records in a pd_table (shared memory), answers
 *  the broker's requests, and publishes every change on the bus. Entry point: store_main. */
#ifndef STORE_H
#define STORE_H

#include "pd_config.h"

int store_main(pd_config_t *cfg);

#endif
