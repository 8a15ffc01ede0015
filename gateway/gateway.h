/*  gateway — a stateless front process: REST and WebSocket clients (h2o, HTTP/1.1), identity,
 *  validation, and the realtime fan-out of bus events. Entry point: gateway_main. */
#ifndef GATEWAY_H
#define GATEWAY_H

#include "pd_config.h"

int gateway_main(pd_config_t *cfg);

#endif
