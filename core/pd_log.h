/*  pd_log — one-line log records on stderr: time, role, pid, level, message.
 *  pd_fatal/pd_fatalx are for startup and unrecoverable states only (relayd's fatal/fatalx):
 *  anything a client or a peer sends is a runtime error, never fatal. Never log a secret. */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdbool.h>

//  Sets the role name shown in each line ("gateway-1"); the string is copied.
void pd_log_init(const char *role);
//  0 = warn and above, 1 = info (default), 2 = debug.
void pd_log_set_verbosity(int level);
bool pd_log_debug_on(void);

void pd_log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pd_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pd_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*  The exit status of a role that refused its data or settings (a segment that is not ours, a
 *  header that does not fit): the supervisor does not restart it (EX_CONFIG, sysexits.h). */
#define PD_EXIT_REFUSED 78

//  Logs with strerror(errno) appended, then exits 1.
void pd_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
//  Logs, then exits 1.
void pd_fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
