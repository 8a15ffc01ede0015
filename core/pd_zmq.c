/*  pd_zmq — see pd_zmq.h. */
#include "pd_zmq.h"

#include <errno.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pd_util.h"

/* -------------------------------------------------------------------------- getpid */

/*  libzmq compares getpid() with the pid it saved, to notice a fork, in every mailbox signal
 *  and wait (signaler.cpp): several times per message that crosses a socket. Since glibc 2.25
 *  getpid() is a system call each time, and a system call is the dearest thing on our hot
 *  paths (about 1 us on the 2-vCPU VMs we measure on: an upsert paid 4.4 getpid calls across
 *  the cluster, more than a quarter of its system calls). This binary defines getpid(), which
 *  the dynamic linker binds libzmq's calls to, and answers from a cache that a fork clears in
 *  the child, so libzmq's check still sees a forked child's new pid. */
static pid_t s_pid;

static void
s_pid_forget(void)
{
    __atomic_store_n(&s_pid, 0, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void
s_pid_init(void)
{
    pthread_atfork(NULL, NULL, s_pid_forget);
}

pid_t
getpid(void)
{
    pid_t pid = __atomic_load_n(&s_pid, __ATOMIC_RELAXED);
    if (!pid) {
        pid = (pid_t)syscall(SYS_getpid);
        __atomic_store_n(&s_pid, pid, __ATOMIC_RELAXED);
    }
    return pid;
}

/* -------------------------------------------------------------------------- sockets */

int
pd_zmq_drain(void *sock, int max, pd_zmq_fn *fn, void *arg, unsigned long *oversized)
{
    pd_zmsg_t m;
    int got = 0;
    while (got < max) {
        zmq_msg_init(&m.part[0]);
        if (zmq_msg_recv(&m.part[0], sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m.part[0]);
            break; //  EAGAIN: empty, and the fd is armed again
        }
        m.n = 1;
        bool big = false;
        while (zmq_msg_more(&m.part[m.n - 1])) {
            zmq_msg_t *p = &m.part[m.n < PD_ZMQ_MAXPARTS ? m.n : PD_ZMQ_MAXPARTS - 1];
            if (m.n >= PD_ZMQ_MAXPARTS) {
                big = true;
                zmq_msg_close(p); //  keep receiving into the last slot to find the end
            } else {
                m.n++;
            }
            zmq_msg_init(p);
            if (zmq_msg_recv(p, sock, ZMQ_DONTWAIT) < 0) { //  parts arrive together
                zmq_msg_close(p);
                m.n--;
                break;
            }
        }
        got++;
        if (big) {
            if (oversized)
                (*oversized)++;
        } else {
            fn(&m, arg);
        }
        for (int i = 0; i < m.n; i++)
            zmq_msg_close(&m.part[i]);
    }
    return got;
}

int
pd_zmq_send(void *sock, const void *ident, size_t ilen, const void *data, size_t len)
{
    if (ident && zmq_send(sock, ident, ilen, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0)
        return -1;
    return zmq_send(sock, data, len, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}

int
pd_zpoll_init(pd_zpoll_t *p)
{
    p->n = 0;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    return p->epfd < 0 ? -1 : 0;
}

static int
s_slot(const pd_zpoll_t *p, const void *sock)
{
    for (int i = 0; i < p->n; i++)
        if (p->sock[i] == sock)
            return i;
    return -1;
}

int
pd_zpoll_add(pd_zpoll_t *p, void *sock)
{
    int fd;
    size_t sz = sizeof fd;
    if (p->n >= PD_ZPOLL_MAX || zmq_getsockopt(sock, ZMQ_FD, &fd, &sz) < 0)
        return -1;
    /* Edge-triggered: the fd says "the mailbox got a command", and only a call into the socket
     * reads it. A loop may leave a socket unread on purpose (the broker gathering the bus for
     * a millisecond) without epoll waking it again and again. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = (uint32_t)p->n};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    p->sock[p->n] = sock;
    p->unread[p->n++] = true;
    return 0;
}

int
pd_zpoll_drain(pd_zpoll_t *p, void *sock, int max, pd_zmq_fn *fn, void *arg,
               unsigned long *oversized)
{
    int i = s_slot(p, sock);
    if (i >= 0 && !p->unread[i])
        return 0;
    int got = pd_zmq_drain(sock, max, fn, arg, oversized);
    /* empty: the last receive came after every send fn made on it, and re-armed the fd */
    if (i >= 0 && got < max)
        p->unread[i] = false;
    return got;
}

void
pd_zpoll_sent(pd_zpoll_t *p, void *sock)
{
    int i = s_slot(p, sock);
    if (i >= 0)
        p->unread[i] = true;
}

bool
pd_zpoll_pending(const pd_zpoll_t *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->unread[i])
            return true;
    return false;
}

int
pd_zpoll_wait(pd_zpoll_t *p, int64_t timeout_us)
{
    struct epoll_event ev[PD_ZPOLL_MAX];
    struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
    int n = epoll_pwait2(p->epfd, ev, PD_ZPOLL_MAX, timeout_us < 0 ? NULL : &ts, NULL);
    if (n < 0 && errno == EINTR)
        return -1;
    for (int i = 0; i < n; i++)
        if (ev[i].data.u32 < (uint32_t)p->n)
            p->unread[ev[i].data.u32] = true;
    return n < 0 ? 0 : n;
}

void
pd_zpoll_close(pd_zpoll_t *p)
{
    if (p->epfd >= 0)
        close(p->epfd);
    p->epfd = -1;
}

/* -------------------------------------------------------------------------- self test */

#include <string.h>
#include <sys/wait.h>

typedef struct {
    int calls;
    char body[32];
    int nparts;
} s_seen_t;

static void
s_test_fn(pd_zmsg_t *m, void *arg)
{
    s_seen_t *seen = arg;
    seen->calls++;
    seen->nparts = m->n;
    size_t n = pd_zmsg_size(m, m->n - 1);
    PD_CHECK(n < sizeof seen->body);
    memcpy(seen->body, pd_zmsg_data(m, m->n - 1), n);
    seen->body[n] = 0;
}

void
pd_zmq_test(bool verbose)
{
    (void)verbose;
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    PD_CHECK(zmq_bind(router, "inproc://pd-zmq-test") == 0);
    PD_CHECK(zmq_connect(dealer, "inproc://pd-zmq-test") == 0);
    pd_zpoll_t poll;
    PD_CHECK(pd_zpoll_init(&poll) == 0 && pd_zpoll_add(&poll, router) == 0);
    s_seen_t seen = {0};
    unsigned long big = 0;

    //  nothing there: empty at once, and the poll times out
    PD_CHECK(pd_zmq_drain(router, 10, s_test_fn, &seen, &big) == 0);
    PD_CHECK(pd_zpoll_wait(&poll, 1000) == 0);

    //  three messages, a budget of two: two now, one next turn, then empty
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "a", 1) == 0);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "b", 1) == 0);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "c", 1) == 0);
    PD_CHECK(pd_zpoll_wait(&poll, 2000000) > 0);
    PD_CHECK(pd_zmq_drain(router, 2, s_test_fn, &seen, &big) == 2);
    PD_CHECK(seen.calls == 2 && seen.nparts == 2 && strcmp(seen.body, "b") == 0);
    PD_CHECK(pd_zmq_drain(router, 2, s_test_fn, &seen, &big) == 1);
    PD_CHECK(strcmp(seen.body, "c") == 0);
    PD_CHECK(pd_zmq_drain(router, 2, s_test_fn, &seen, &big) == 0);

    //  drained to EAGAIN, the fd is armed: a new message wakes the poll
    PD_CHECK(pd_zpoll_wait(&poll, 0) == 0);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "d", 1) == 0);
    PD_CHECK(pd_zpoll_wait(&poll, 2000000) > 0);

    //  a message of more parts than PD_ZMQ_MAXPARTS is counted and skipped, whole
    for (int i = 0; i < 6; i++)
        PD_CHECK(zmq_send(dealer, "x", 1, i < 5 ? ZMQ_SNDMORE : 0) == 1);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "e", 1) == 0);
    int got = 0;
    for (int i = 0; i < 100 && got < 3; i++) {
        got += pd_zmq_drain(router, 10, s_test_fn, &seen, &big);
        if (got < 3)
            pd_zpoll_wait(&poll, 10000);
    }
    PD_CHECK(got == 3 && big == 1 && seen.calls == 5 && strcmp(seen.body, "e") == 0);

    //  a reply to the dealer through the router, by identity, moves the parts
    zmq_msg_t id;
    zmq_msg_init(&id);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "f", 1) == 0);
    PD_CHECK(pd_zpoll_wait(&poll, 2000000) > 0);
    PD_CHECK(zmq_msg_recv(&id, router, 0) >= 0);
    char body[8];
    PD_CHECK(zmq_recv(router, body, sizeof body, 0) == 1);
    PD_CHECK(pd_zmq_send(router, zmq_msg_data(&id), zmq_msg_size(&id), "g", 1) == 0);
    zmq_msg_close(&id);
    s_seen_t back = {0};
    for (int i = 0; i < 100 && !back.calls; i++)
        if (!pd_zmq_drain(dealer, 10, s_test_fn, &back, NULL))
            usleep(1000);
    PD_CHECK(back.calls == 1 && back.nparts == 1 && strcmp(back.body, "g") == 0);
    //  an unknown identity fails at once with ROUTER_MANDATORY
    int one = 1;
    zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    PD_CHECK(pd_zmq_send(router, "nobody", 6, "h", 1) == -1);

    //  pd_zpoll_drain reads a socket only when it may hold something
    s_seen_t z = {0};
    while (pd_zpoll_drain(&poll, router, 10, s_test_fn, &z, NULL) == 10)
        ;
    PD_CHECK(!pd_zpoll_pending(&poll));
    PD_CHECK(pd_zpoll_drain(&poll, router, 10, s_test_fn, &z, NULL) == 0);
    PD_CHECK(pd_zmq_send(dealer, NULL, 0, "i", 1) == 0);
    PD_CHECK(pd_zpoll_wait(&poll, 2000000) > 0 && pd_zpoll_pending(&poll)); //  the fd marks it
    int calls = z.calls;
    for (int i = 0; i < 100 && z.calls == calls; i++)
        if (!pd_zpoll_drain(&poll, router, 10, s_test_fn, &z, NULL))
            pd_zpoll_wait(&poll, 10000);
    PD_CHECK(z.calls == calls + 1 && strcmp(z.body, "i") == 0 && !pd_zpoll_pending(&poll));
    pd_zpoll_sent(&poll, router); //  a send: read once more before sleeping
    PD_CHECK(pd_zpoll_pending(&poll));
    PD_CHECK(pd_zpoll_drain(&poll, router, 10, s_test_fn, &z, NULL) == 0 && !pd_zpoll_pending(&poll));
    //  a budget that runs out leaves it marked
    for (int i = 0; i < 3; i++)
        PD_CHECK(pd_zmq_send(dealer, NULL, 0, "j", 1) == 0);
    int got2 = 0;
    for (int i = 0; i < 100 && got2 < 2; i++) {
        got2 += pd_zpoll_drain(&poll, router, 2 - got2, s_test_fn, &z, NULL);
        if (got2 < 2)
            pd_zpoll_wait(&poll, 10000);
    }
    PD_CHECK(got2 == 2 && pd_zpoll_pending(&poll));
    PD_CHECK(pd_zpoll_drain(&poll, router, 10, s_test_fn, &z, NULL) == 1 && !pd_zpoll_pending(&poll));
    //  getpid() is answered from the cache, and is the process's pid
    PD_CHECK(getpid() == (pid_t)syscall(SYS_getpid) && getpid() == getpid());
    pid_t child = fork(); //  and a forked child sees its own
    if (child == 0)
        _exit(getpid() == (pid_t)syscall(SYS_getpid) ? 0 : 1);
    int status = -1;
    PD_CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
             WEXITSTATUS(status) == 0);

    pd_zpoll_close(&poll);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}
