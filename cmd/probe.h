/*  probe — the `presenced probe` subcommand (liveness of a role, see probe.c and pd_probe.h). */
#ifndef PD_CMD_PROBE_H
#define PD_CMD_PROBE_H

//  argv[1] is "probe". Returns the exit code: 0 alive, 1 not, 2 bad usage.
int probe_main(int argc, char **argv);

#endif
