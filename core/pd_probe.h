/*  pd_probe — liveness of the roles without an HTTP port (and of gateways), for
 *  `presenced probe` and Kubernetes' exec probes.
 *
 *  Each role process calls pd_probe_beat from its loop: at most once a second it sets the
 *  modification time of <run dir>/<name>.alive ("store-1.alive", "broker.alive"), a file it
 *  made itself (mode 0600, O_NOFOLLOW, owned by the process's user) holding its pid. The probe
 *  reads that file: the role is alive when the pid exists and the file is younger than the
 *  allowed age, so a dead, stopped (SIGSTOP) or stuck process fails it. It needs no socket and
 *  no key, works with a read-only root filesystem (the run dir is a small emptyDir), and costs
 *  a role one clock read per loop turn and one futimens() a second. */
#ifndef PD_PROBE_H
#define PD_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_config.h"

//  Marks this process alive (see above); the first call makes the file, and it is removed at
//  exit. A run dir that is missing or a file that is not ours disables the heartbeat (logged
//  once). One heartbeat per process: the state is the process's, like pd_log's role name.
void pd_probe_beat(const pd_config_t *cfg);

//  The heartbeat file's name for cfg's role: "<role>-<node>" or "<role>".
void pd_probe_name(const pd_config_t *cfg, char *out, size_t n);

//  Checks the heartbeat of name in run_dir. Returns its age in ms (>= 0) when the process it
//  names lives and the file is younger than max_age_ms, else -1 with the reason in err.
int64_t pd_probe_check(const char *run_dir, const char *name, int64_t max_age_ms, char *err,
                       size_t errlen);

#endif
