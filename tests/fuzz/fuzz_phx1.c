/*  fuzz_phx1 — libFuzzer target for the vsn 1.0.0 serializer of pd_phx (JSON objects), and the
 *  phx_join config parser. The input is one text frame. Checks:
 *    - the same input gives the same answer twice, and an error always has a message;
 *    - a decoded message respects the limits (topic and event 1..255 bytes, refs <= 255) and
 *      encodes back to a frame that decodes to the same fields (the round trip);
 *    - its payload, taken as a phx_join, parses or fails with a message; a presence key is
 *      within its limit. */
#include <stdio.h>
#include <stdlib.h>

#include "pd_phx.h"

#define VSN PD_PHX_V1
#include "fuzz_phx.h"
