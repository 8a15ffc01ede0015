/*  pd_probe — see pd_probe.h. */
#include "pd_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_util.h"

#define BEAT_MS 1000

static struct {
    int fd;            //  the heartbeat file, open (0: not yet, -1: disabled)
    int64_t next_ms;   //  mono ms of the next beat
    char path[300];    //  for the unlink at exit
} s_beat;

void
pd_probe_name(const pd_config_t *cfg, char *out, size_t n)
{
    if (cfg->node)
        snprintf(out, n, "%s-%d", cfg->role, cfg->node);
    else
        snprintf(out, n, "%s", cfg->role);
}

static void
s_unlink_at_exit(void)
{
    if (s_beat.fd > 0)
        unlink(s_beat.path);
}

static int
s_open(const pd_config_t *cfg)
{
    char name[48];
    pd_probe_name(cfg, name, sizeof name);
    if (snprintf(s_beat.path, sizeof s_beat.path, "%s/%s.alive", cfg->run_dir, name) >=
        (int)sizeof s_beat.path)
        return -1;
    int fd = open(s_beat.path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 022)) {
        pd_log_info("no heartbeat file %s (%s): `presenced probe` will fail for this process",
                    s_beat.path, fd < 0 ? strerror(errno) : "not a private file of ours");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char pid[24];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        close(fd);
        return -1;
    }
    atexit(s_unlink_at_exit);
    return fd;
}

void
pd_probe_beat(const pd_config_t *cfg)
{
    int64_t now = pd_mono_ms();
    if (now < s_beat.next_ms || s_beat.fd < 0)
        return;
    s_beat.next_ms = now + BEAT_MS;
    if (s_beat.fd == 0)
        s_beat.fd = s_open(cfg);
    if (s_beat.fd > 0)
        futimens(s_beat.fd, NULL);
}

int64_t
pd_probe_check(const char *run_dir, const char *name, int64_t max_age_ms, char *err,
               size_t errlen)
{
    char path[300], buf[32];
    if (snprintf(path, sizeof path, "%s/%s.alive", run_dir, name) >= (int)sizeof path)
        return pd_errf(err, errlen, -1, "run dir name too long");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return pd_errf(err, errlen, -1, "%s: %s (%s never beat, or stopped)", path,
                       strerror(errno), name);
    struct stat st;
    ssize_t got = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid())
        got = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    if (got <= 0)
        return pd_errf(err, errlen, -1, "%s: not a heartbeat file of this user", path);
    buf[got] = 0;
    char *end;
    long pid = strtol(buf, &end, 10);
    if (pid <= 0 || *end != '\n')
        return pd_errf(err, errlen, -1, "%s: no pid in it", path);
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
        return pd_errf(err, errlen, -1, "%s: process %ld is gone", name, pid);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t age = ((int64_t)now.tv_sec - st.st_mtim.tv_sec) * 1000 +
                  ((int64_t)now.tv_nsec - st.st_mtim.tv_nsec) / 1000000;
    if (age < 0)
        age = 0;
    if (age > max_age_ms)
        return pd_errf(err, errlen, -1,
                      "%s (pid %ld) last beat %lld ms ago (more than %lld): stopped or stuck",
                      name, pid, (long long)age, (long long)max_age_ms);
    return age;
}
