/*  supervisor — the embedded default: one broker, N store nodes, one reaper and M gateways as
 *  child processes of this one, wired over ipc:// endpoints in the run directory.
 *
 *  Children are started in dependency order (broker, stores, reaper, gateways). A child that
 *  dies is restarted at once, and with exponential backoff only if it dies again within 10 s
 *  of its start (100 ms doubling to 5 s; reset once it has run for 10 s): a crashed store node
 *  is serving again as soon as it has re-attached its segment. SIGTERM/SIGINT: gateways are
 *  stopped first (they stop accepting and finish the requests in flight), then the reaper, the
 *  stores and the broker; stragglers are killed after 5 s; store segments are unlinked unless
 *  --keep-data; exit 0. SIGHUP is passed to the gateways (they reload the projects). Each
 *  child's command line names its role, as `ps` shows it.
 *
 *  Store nodes follow the store set the broker saves in the run directory (store-set, "from
 *  to pending": broker.c, "resharding"): every node of either side runs. When `presencectl cluster
 *  scale` adds nodes, they are started at once (the broker moves records to them once they are
 *  up); a node that has left the set (the broker settled, so it holds nothing) is stopped a
 *  second later (gateways have the new route table by then) and its segments are removed. The
 *  embedded key set has keys for STORE_KEYS (63, the broker's most) store nodes, so a new node
 *  needs no new key and any scale the broker accepts can be started. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pd_keys.h"
#include "pd_log.h"
#include "pd_outbox.h"
#include "pd_room.h"
#include "pd_table.h"
#include "roles.h"

typedef struct {
    const char *role; //  role name
    int node;         //  node id (stores, gateways), 0 otherwise
    int stage;        //  stop order: gateways 0, reaper 1, stores 2, broker 3
    pid_t pid;        //  0 when not running
    int64_t started;  //  mono ms of the last start
    int64_t next;     //  mono ms of the next start attempt (when pid == 0)
    int backoff;      //  current restart delay, ms
    bool off;         //  a store node outside the store set: not started
    bool ran;         //  a store node that has run (its segments are removed at the end)
    int64_t stop_at;  //  mono ms to stop a store node that left the set (0: none)
} child_t;

#define STORE_KEYS 63 //  store keys in the embedded key set: the broker's most (MAX_NODES)

static void
s_store_unlink(pd_config_t *cfg, int node)
{
    char shm[160];
    snprintf(shm, sizeof shm, "/presenced-%s-store-%d", cfg->cluster, node);
    pd_table_unlink(shm);
    snprintf(shm, sizeof shm, "/presenced-%s-store-%d-outbox", cfg->cluster, node);
    pd_outbox_unlink(shm);
    snprintf(shm, sizeof shm, "/presenced-%s-store-%d-rooms", cfg->cluster, node);
    pd_rooms_unlink(shm);
}

//  Store nodes the saved store set needs (the larger side), or 0 when there is none.
static int
s_store_set(const pd_config_t *cfg)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/store-set", cfg->run_dir);
    FILE *f = fopen(path, "r");
    int from = 0, to = 0, pending = 0;
    if (f && fscanf(f, "%d %d %d", &from, &to, &pending) < 2)
        from = to = 0;
    if (f)
        fclose(f);
    int want = from > to ? from : to;
    want = pending > want ? pending : want;
    return want >= 1 && want <= STORE_KEYS ? want : 0;
}

//  Starts the store nodes the store set adds, and stops (then forgets) those it has left.
static void
s_follow_store_set(pd_config_t *cfg, child_t *cs, size_t n, int64_t now)
{
    int want = s_store_set(cfg);
    if (!want)
        return;
    for (size_t i = 0; i < n; i++) {
        child_t *c = &cs[i];
        if (strcmp(c->role, "store") != 0)
            continue;
        if (c->node <= want && c->off) {
            pd_log_info("store set: starting store %d", c->node);
            c->off = false;
            c->stop_at = 0;
            c->next = now;
            c->backoff = 0;
        } else if (c->node > want && !c->off && !c->stop_at) {
            c->stop_at = now + 1000; /* gateways take the new route table meanwhile */
        }
        if (c->stop_at && now >= c->stop_at && !c->off) {
            pd_log_info("store set: store %d has left it (drained); stopping it", c->node);
            c->off = true;
            c->stop_at = 0;
            if (c->pid > 0) {
                kill(c->pid, SIGTERM);
                waitpid(c->pid, NULL, 0);
                c->pid = 0;
            }
            s_store_unlink(cfg, c->node);
        }
    }
}

static char s_self[4096];

static void
s_endpoint(char *dst, size_t n, const char *dir, const char *name)
{
    if (!dst[0])
        snprintf(dst, n, "ipc://%s/%s.ipc", dir, name);
}

//  Removes a key set the supervisor made (its files, then the directory).
static void
s_keys_wipe(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char path[PATH_MAX];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' &&
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path)
            unlink(path);
    closedir(d);
    rmdir(dir);
}

static pid_t
s_spawn(pd_config_t *cfg, child_t *c)
{
    char node[16], port[16], stores[16], verbose[8], cap[32], arena[32], maxbody[32], tmo[16];
    char wsstall[16], wsdelay[16];
    snprintf(wsstall, sizeof wsstall, "%d", cfg->ws_stall_timeout);
    snprintf(wsdelay, sizeof wsdelay, "%d", cfg->ws_write_delay);
    char wsq[32], wsidle[16], hdr[32], hdrtmo[16], maxconn[32], perip[32];
    snprintf(hdr, sizeof hdr, "%zu", cfg->max_header_bytes);
    snprintf(hdrtmo, sizeof hdrtmo, "%d", cfg->header_timeout_ms);
    snprintf(maxconn, sizeof maxconn, "%zu", cfg->max_connections);
    snprintf(perip, sizeof perip, "%zu", cfg->max_connections_per_ip);
    snprintf(wsq, sizeof wsq, "%zu", cfg->ws_max_queue);
    snprintf(wsidle, sizeof wsidle, "%d", cfg->ws_idle_timeout);
    snprintf(node, sizeof node, "%d", c->node);
    snprintf(port, sizeof port, "%d", cfg->port);
    snprintf(stores, sizeof stores, "%d", cfg->stores);
    snprintf(verbose, sizeof verbose, "%d", cfg->verbosity);
    snprintf(cap, sizeof cap, "%zu", cfg->store_capacity);
    snprintf(arena, sizeof arena, "%zu", cfg->store_arena);
    char arena_max[32], cap_max[32];
    snprintf(arena_max, sizeof arena_max, "%zu", cfg->store_arena_max);
    snprintf(cap_max, sizeof cap_max, "%zu", cfg->store_capacity_max);
    char scanmax[32], replica[32];
    snprintf(replica, sizeof replica, "%zu", cfg->list_replica);
    snprintf(scanmax, sizeof scanmax, "%zu", cfg->list_scan_max);
    snprintf(maxbody, sizeof maxbody, "%zu", cfg->max_body);
    snprintf(tmo, sizeof tmo, "%d", cfg->request_timeout_ms);
    char shm[160], front[300];
    snprintf(shm, sizeof shm, "/presenced-%s-store-%d", cfg->cluster, c->node);
    snprintf(front, sizeof front, "ipc://%s/store-%d.ipc", cfg->run_dir, c->node);

    const char *argv[64];
    int n = 0;
    argv[n++] = "presenced";
    argv[n++] = c->role;
    if (c->node) {
        argv[n++] = "--node";
        argv[n++] = node;
    }
    argv[n++] = "--verbose";
    argv[n++] = verbose;
    argv[n++] = "--cluster";
    argv[n++] = cfg->cluster;
    argv[n++] = "--run-dir"; /* where a role's heartbeat file goes (pd_probe.h) */
    argv[n++] = cfg->run_dir;
    argv[n++] = "--keys";
    argv[n++] = cfg->keys_dir;
    char claims[32];
    snprintf(claims, sizeof claims, "%zu", cfg->claim_cache);
    if (cfg->claim_cache && (strcmp(c->role, "broker") == 0 || strcmp(c->role, "gateway") == 0)) {
        argv[n++] = "--claim-cache";
        argv[n++] = claims;
    }
    char rate[32];
    snprintf(rate, sizeof rate, "%zu", cfg->move_rate);
    if (strcmp(c->role, "broker") == 0) {
        if (cfg->move_rate) {
            argv[n++] = "--move-rate"; argv[n++] = rate;
        }
        argv[n++] = "--broker-front"; argv[n++] = cfg->broker_front;
        argv[n++] = "--broker-back"; argv[n++] = cfg->broker_back;
        argv[n++] = "--bus-in"; argv[n++] = cfg->bus_in;
        argv[n++] = "--bus-out"; argv[n++] = cfg->bus_out;
        argv[n++] = "--stores"; argv[n++] = stores;
    } else if (strcmp(c->role, "store") == 0) {
        argv[n++] = "--broker-back"; argv[n++] = cfg->broker_back;
        argv[n++] = "--bus-in"; argv[n++] = cfg->bus_in;
        argv[n++] = "--shm"; argv[n++] = shm;
        argv[n++] = "--store-front"; argv[n++] = front;
        argv[n++] = "--store-capacity"; argv[n++] = cap;
        argv[n++] = "--store-arena"; argv[n++] = arena;
        argv[n++] = "--store-arena-max"; argv[n++] = arena_max;
        argv[n++] = "--store-capacity-max"; argv[n++] = cap_max;
        argv[n++] = "--list-scan-max"; argv[n++] = scanmax;
    } else if (strcmp(c->role, "reaper") == 0) {
        argv[n++] = "--broker-front"; argv[n++] = cfg->broker_front;
        argv[n++] = "--bus-out"; argv[n++] = cfg->bus_out;
    } else {
        argv[n++] = "--host"; argv[n++] = cfg->host;
        argv[n++] = "--port"; argv[n++] = port;
        argv[n++] = "--broker-front"; argv[n++] = cfg->broker_front;
        argv[n++] = "--bus-out"; argv[n++] = cfg->bus_out;
        argv[n++] = "--max-body"; argv[n++] = maxbody;
        argv[n++] = "--request-timeout"; argv[n++] = tmo;
        argv[n++] = "--list-replica"; argv[n++] = replica;
        if (cfg->ws_max_queue) {
            argv[n++] = "--ws-max-queue"; argv[n++] = wsq;
        }
        if (cfg->ws_idle_timeout) {
            argv[n++] = "--ws-idle-timeout"; argv[n++] = wsidle;
        }
        if (cfg->ws_stall_timeout) {
            argv[n++] = "--ws-stall-timeout"; argv[n++] = wsstall;
        }
        if (!cfg->ws_deflate) {
            argv[n++] = "--ws-deflate"; argv[n++] = "0";
        }
        if (cfg->ws_write_delay > 0) {
            argv[n++] = "--ws-write-delay"; argv[n++] = wsdelay;
        }
        argv[n++] = "--max-header-bytes"; argv[n++] = hdr;
        argv[n++] = "--header-timeout"; argv[n++] = hdrtmo;
        if (cfg->max_connections) {
            argv[n++] = "--max-connections"; argv[n++] = maxconn;
        }
        if (cfg->max_connections_per_ip) {
            argv[n++] = "--max-connections-per-ip"; argv[n++] = perip;
        }
    }
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid < 0) {
        pd_log_warn("%s: fork %s: %s", __func__, c->role, strerror(errno));
        return 0;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Projects reach the gateways through the environment, never the command line. */
        if (strcmp(c->role, "gateway") == 0) {
            if (cfg->quick_project[0])
                setenv("PRESENCED_PROJECT", cfg->quick_project, 1);
            if (cfg->quick_api_key[0])
                setenv("PRESENCED_API_KEY", cfg->quick_api_key, 1);
            if (cfg->quick_jwt_secret[0])
                setenv("PRESENCED_JWT_SECRET", cfg->quick_jwt_secret, 1);
            if (cfg->config_file[0])
                setenv("PRESENCED_CONFIG", cfg->config_file, 1);
        }
        execv(s_self, (char **)argv);
        pd_fatal("exec %s", s_self);
    }
    pd_log_info("started %s%s%s (pid %d)", c->role, c->node ? " " : "", c->node ? node : "",
                (int)pid);
    return pid;
}

static void
s_stop_stage(child_t *cs, size_t n, int stage, int64_t grace_ms)
{
    for (size_t i = 0; i < n; i++)
        if (cs[i].stage == stage && cs[i].pid > 0)
            kill(cs[i].pid, SIGTERM);
    int64_t until = pd_mono_ms() + grace_ms;
    for (;;) {
        bool left = false;
        for (size_t i = 0; i < n; i++) {
            if (cs[i].stage != stage || cs[i].pid <= 0)
                continue;
            if (waitpid(cs[i].pid, NULL, WNOHANG) == cs[i].pid)
                cs[i].pid = 0;
            else
                left = true;
        }
        if (!left)
            return;
        if (pd_mono_ms() > until)
            break;
        usleep(10000);
    }
    for (size_t i = 0; i < n; i++) {
        if (cs[i].stage == stage && cs[i].pid > 0) {
            pd_log_warn("%s %d did not stop in time; killing it", cs[i].role, cs[i].node);
            kill(cs[i].pid, SIGKILL);
            waitpid(cs[i].pid, NULL, 0);
            cs[i].pid = 0;
        }
    }
}

int
supervisor_main(pd_config_t *cfg)
{
    ssize_t len = readlink("/proc/self/exe", s_self, sizeof s_self - 1);
    if (len <= 0)
        pd_fatal("readlink /proc/self/exe");
    s_self[len] = 0;

    pd_projects_t projects;
    if (pd_config_load_projects(cfg, &projects) < 0)
        return 2;
    pd_projects_free(&projects);

    /* The run directory holds the ipc:// sockets, the lock and the key set: it must be ours and
     * private, or another local user could have made it (or a symlink in it) first. */
    if (mkdir(cfg->run_dir, 0700) < 0 && errno != EEXIST)
        pd_fatal("mkdir %s", cfg->run_dir);
    struct stat st;
    int dfd = open(cfg->run_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0 || fstat(dfd, &st) < 0 || st.st_uid != geteuid() || (st.st_mode & 077))
        pd_fatalx("run directory %s refused: it must be a directory (not a symlink) owned by uid "
                  "%d with mode 0700 (%s); remove it, or give --run-dir a directory of your own",
                  cfg->run_dir, (int)geteuid(),
                  dfd < 0 ? strerror(errno) : st.st_uid != geteuid() ? "another owner" : "open mode");
    char lock[300];
    snprintf(lock, sizeof lock, "%s/supervisor.lock", cfg->run_dir);
    int lfd = openat(dfd, "supervisor.lock", O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
    close(dfd);
    if (lfd < 0 || fstat(lfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077))
        pd_fatalx("%s refused: it must be a regular file of uid %d with mode 0600, not a symlink "
                  "(%s)",
                  lock, (int)geteuid(), lfd < 0 ? strerror(errno) : "wrong owner, type or mode");
    if (flock(lfd, LOCK_EX | LOCK_NB) < 0)
        pd_fatalx("another presenced already runs with run dir %s", cfg->run_dir);
    s_endpoint(cfg->broker_front, sizeof cfg->broker_front, cfg->run_dir, "broker-front");
    s_endpoint(cfg->broker_back, sizeof cfg->broker_back, cfg->run_dir, "broker-back");
    s_endpoint(cfg->bus_in, sizeof cfg->bus_in, cfg->run_dir, "bus-in");
    s_endpoint(cfg->bus_out, sizeof cfg->bus_out, cfg->run_dir, "bus-out");
    /* Every internal socket is CURVE (pd_keys.h). Without --keys, a fresh key set is made in
     * the run directory at every start and removed at the end. */
    char keys[sizeof cfg->keys_dir];
    keys[0] = 0;
    if (!cfg->keys_dir[0]) {
        char err[512];
        snprintf(keys, sizeof keys, "%s/keys", cfg->run_dir);
        s_keys_wipe(keys);
        if (pd_keys_generate(keys, cfg->stores > STORE_KEYS ? cfg->stores : STORE_KEYS,
                             cfg->gateways, err, sizeof err) < 0)
            pd_fatalx("cannot make the cluster's keys: %s", err);
        snprintf(cfg->keys_dir, sizeof cfg->keys_dir, "%s", keys);
    }

    size_t n = 0;
    child_t cs[2 + 64 + 64];
    memset(cs, 0, sizeof cs);
    cs[n++] = (child_t){.role = "broker", .stage = 3};
    /* The store set the broker saved (kept only with --keep-data, with the segments). */
    char setp[PATH_MAX];
    snprintf(setp, sizeof setp, "%s/store-set", cfg->run_dir);
    if (!cfg->keep_data)
        unlink(setp);
    int stores = s_store_set(cfg) ? s_store_set(cfg) : cfg->stores;
    for (int i = 1; i <= 64; i++)
        cs[n++] = (child_t){.role = "store", .node = i, .stage = 2, .off = i > stores};
    cs[n++] = (child_t){.role = "reaper", .stage = 1};
    for (int i = 1; i <= cfg->gateways; i++)
        cs[n++] = (child_t){.role = "gateway", .node = i, .stage = 0};

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);

    pd_log_info("starting cluster %s on %s:%d: %d store nodes, %d gateways", cfg->cluster,
                cfg->host, cfg->port, cfg->stores, cfg->gateways);
    for (size_t i = 0; i < n; i++) {
        cs[i].backoff = 0;
        if (cs[i].off)
            continue;
        cs[i].pid = s_spawn(cfg, &cs[i]);
        cs[i].started = pd_mono_ms();
    }

    int stop_sig = 0;
    bool refused = false;
    while (!stop_sig && !refused) {
        struct timespec ts = {0, 50 * 1000000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            stop_sig = sig;
            break;
        }
        if (sig == SIGHUP) {
            pd_log_info("SIGHUP: telling the gateways to reload");
            for (size_t i = 0; i < n; i++)
                if (cs[i].stage == 0 && cs[i].pid > 0)
                    kill(cs[i].pid, SIGHUP);
        }
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (size_t i = 0; i < n; i++) {
                if (cs[i].pid != pid)
                    continue;
                int64_t now = pd_mono_ms();
                if (now - cs[i].started > 10000)
                    cs[i].backoff = 0;
                if (WIFEXITED(status) && WEXITSTATUS(status) == PD_EXIT_REFUSED) {
                    /* its data or settings were refused: starting it again would not help */
                    pd_log_warn("%s %d refused to start (see above): stopping the cluster",
                                cs[i].role, cs[i].node);
                    cs[i].pid = 0;
                    refused = true;
                    continue;
                }
                if (WIFSIGNALED(status))
                    pd_log_warn("lost %s %d (signal %d); restarting in %d ms", cs[i].role,
                                cs[i].node, WTERMSIG(status), cs[i].backoff);
                else
                    pd_log_warn("lost %s %d (exit %d); restarting in %d ms", cs[i].role,
                                cs[i].node, WEXITSTATUS(status), cs[i].backoff);
                cs[i].pid = 0;
                cs[i].next = now + cs[i].backoff;
                cs[i].backoff = cs[i].backoff == 0        ? 100
                                : cs[i].backoff * 2 > 5000 ? 5000
                                                           : cs[i].backoff * 2;
            }
        }
        int64_t now = pd_mono_ms();
        s_follow_store_set(cfg, cs, n, now);
        for (size_t i = 0; i < n && !refused; i++) {
            if (cs[i].off)
                continue;
            cs[i].ran |= cs[i].node && strcmp(cs[i].role, "store") == 0;
            if (cs[i].pid == 0 && now >= cs[i].next) {
                cs[i].pid = s_spawn(cfg, &cs[i]);
                cs[i].started = now;
                if (cs[i].pid == 0)
                    cs[i].next = now + (cs[i].backoff ? cs[i].backoff : 100);
            }
        }
    }

    if (stop_sig)
        pd_log_info("signal %d: stopping the cluster", stop_sig);
    for (int stage = 0; stage <= 3; stage++)
        s_stop_stage(cs, n, stage, stage == 0 ? 8000 : 5000);
    for (size_t i = 0; i < n; i++)
        if (strcmp(cs[i].role, "store") == 0 && (cs[i].ran || !cs[i].off) && !cfg->keep_data)
            s_store_unlink(cfg, cs[i].node);
    const char *eps[] = {cfg->broker_front, cfg->broker_back, cfg->bus_in, cfg->bus_out};
    for (size_t i = 0; i < 4; i++)
        if (strncmp(eps[i], "ipc://", 6) == 0)
            unlink(eps[i] + 6);
    if (!cfg->keep_data)
        unlink(setp);
    for (int i = 1; i <= 64; i++) {
        char front[300];
        snprintf(front, sizeof front, "%s/store-%d.ipc", cfg->run_dir, i);
        unlink(front);
    }
    if (keys[0])
        s_keys_wipe(keys);
    unlink(lock);
    close(lfd);
    rmdir(cfg->run_dir);
    pd_log_info("stopped");
    return refused ? 1 : 0;
}
