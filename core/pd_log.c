/*  pd_log — see pd_log.h. */
#include "pd_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char s_role[32] = "presenced";
static int s_verbosity = 1;

void
pd_log_init(const char *role)
{
    snprintf(s_role, sizeof s_role, "%s", role);
}

void
pd_log_set_verbosity(int level)
{
    s_verbosity = level;
}

bool
pd_log_debug_on(void)
{
    return s_verbosity >= 2;
}

static void
s_vlog(const char *level, const char *fmt, va_list ap, const char *suffix)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, s_role, (int)getpid(), level);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m > 0)
        n = ((size_t)(n + m) >= sizeof line) ? (int)sizeof line - 1 : n + m;
    if (suffix)
        n += snprintf(line + n, sizeof line - (size_t)n, ": %s", suffix);
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)n);
}

#define PD_LOG_FN(name, lvl, min)                                                                  \
    void name(const char *fmt, ...)                                                                \
    {                                                                                              \
        if (s_verbosity < (min))                                                                   \
            return;                                                                                \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        s_vlog(lvl, fmt, ap, NULL);                                                                \
        va_end(ap);                                                                                \
    }
PD_LOG_FN(pd_log_debug, "debug", 2)
PD_LOG_FN(pd_log_info, "info", 1)
PD_LOG_FN(pd_log_warn, "warn", 0)

void
pd_fatal(const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    s_vlog("fatal", fmt, ap, strerror(e));
    va_end(ap);
    exit(1);
}

void
pd_fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vlog("fatal", fmt, ap, NULL);
    va_end(ap);
    exit(1);
}
