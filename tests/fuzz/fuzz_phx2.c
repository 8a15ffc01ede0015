/*  fuzz_phx2 — libFuzzer target for the vsn 2.0.0 serializer of pd_phx: JSON arrays
 *  [join_ref, ref, topic, event, payload] and realtime-js's binary user broadcast push. The
 *  first input byte chooses the frame type (odd: binary), the rest is the frame. Checks as
 *  fuzz_phx1, and for a binary push: its views lie inside the frame, its metadata is empty or
 *  an object, a JSON payload parses, and it re-encodes as a kind 4 broadcast of the exact
 *  length. */
#include <stdio.h>
#include <stdlib.h>

#include "pd_phx.h"

#define VSN PD_PHX_V2
#include "fuzz_phx.h"
