/*  pd_zmq — the hot-path edge of ZeroMQ, shared by every role.
 *
 *  czmq creates and configures our sockets; each message goes to libzmq directly, because the
 *  convenient calls cost system calls we pay per message otherwise:
 *
 *  - zmq_getsockopt(ZMQ_EVENTS) (czmq's zsock_events, and zmq_poll before and after it sleeps,
 *    for every socket) reads the socket's command mailbox: a poll() every time (and a getpid(),
 *    which this module answers from a cache: pd_zmq.c).
 *    A non-blocking receive looks at the mailbox at most once a millisecond while messages
 *    flow, and once more when it comes up empty. So a socket is drained by receiving until
 *    EAGAIN, never by asking EVENTS first; that final EAGAIN also re-arms the socket's ZMQ_FD.
 *  - A send also reads the mailbox now and then and may consume the signal on ZMQ_FD. A socket
 *    sent on after its last EAGAIN must be drained again before the loop sleeps on its fd.
 *  - Messages arrive in zmq_msg_t parts (no czmq frame allocations); parts can be forwarded
 *    with zmq_msg_send without a copy. Sends go from our reusable batch buffers with one copy.
 *  - pd_zpoll_t sleeps on several sockets' ZMQ_FDs with one epoll set (edge-triggered), in
 *    place of zmq_poll. A socket left unread wakes the loop once, not on every turn. */
#ifndef PD_ZMQ_H
#define PD_ZMQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define PD_ZMQ_MAXPARTS 4

//  One received message: its first parts (a ROUTER's peer identity, then the body).
typedef struct {
    zmq_msg_t part[PD_ZMQ_MAXPARTS];
    int n;
} pd_zmsg_t;

static inline const void *
pd_zmsg_data(pd_zmsg_t *m, int i)
{
    return zmq_msg_data(&m->part[i]);
}

static inline size_t
pd_zmsg_size(pd_zmsg_t *m, int i)
{
    return zmq_msg_size(&m->part[i]);
}

//  Called for each message; it may zmq_msg_send (move) any of the parts.
typedef void (pd_zmq_fn)(pd_zmsg_t *m, void *arg);

/*  Receives up to max messages from sock without blocking and hands each to fn. Returns how
 *  many were received; fewer than max means the socket came up empty and its ZMQ_FD is armed.
 *  Messages of more than PD_ZMQ_MAXPARTS parts are discarded and counted in *oversized (which
 *  may be NULL). */
int pd_zmq_drain(void *sock, int max, pd_zmq_fn *fn, void *arg, unsigned long *oversized);

//  Sends [ident][data] (ident may be NULL for a one-part message) without blocking. Returns 0,
//  or -1 with errno (EAGAIN at the high-water mark, EHOSTUNREACH for an unknown ROUTER peer).
int pd_zmq_send(void *sock, const void *ident, size_t ilen, const void *data, size_t len);

/*  One epoll set over the ZMQ_FDs of a role's sockets, and for each whether it may hold
 *  something: its fd fired, or it was sent on (pd_zpoll_sent), since it last came up empty.
 *  pd_zpoll_drain reads only such a socket, so a loop turn asks libzmq (a poll() each time)
 *  only about the sockets that can have news. */
#define PD_ZPOLL_MAX 8

typedef struct {
    int epfd;
    int n;
    void *sock[PD_ZPOLL_MAX];
    bool unread[PD_ZPOLL_MAX];
} pd_zpoll_t;

int pd_zpoll_init(pd_zpoll_t *p);
//  Watches sock (a libzmq socket); it starts unread. Returns 0, or -1.
int pd_zpoll_add(pd_zpoll_t *p, void *sock);
//  pd_zmq_drain of sock if it may hold something; it is read again next time unless it came
//  up empty. Returns how many messages were received.
int pd_zpoll_drain(pd_zpoll_t *p, void *sock, int max, pd_zmq_fn *fn, void *arg,
                   unsigned long *oversized);
//  Says sock was sent on: it is read at least once more before the loop sleeps on it.
void pd_zpoll_sent(pd_zpoll_t *p, void *sock);
//  Whether any socket may hold something (the loop should not sleep).
bool pd_zpoll_pending(const pd_zpoll_t *p);
//  Sleeps until a socket may have something, or timeout_us microseconds (-1: no limit), and
//  marks the sockets whose fd fired. Returns > 0 if an fd fired, 0 on timeout, -1 when a
//  signal interrupted it.
int pd_zpoll_wait(pd_zpoll_t *p, int64_t timeout_us);
void pd_zpoll_close(pd_zpoll_t *p);

void pd_zmq_test(bool verbose);

#endif
