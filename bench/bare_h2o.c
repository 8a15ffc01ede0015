/*  bare_h2o — the baseline of bench/rest.sh: a bare h2o evloop handler, as tech-notes.md
 *  measured it (§6): every request is answered at once with a 36-byte JSON body, no routing,
 *  no authentication, no ZeroMQ. It listens the way the gateway does (SO_REUSEPORT, the same
 *  h2o configuration) in as many processes as the cluster has gateways, so the comparison is
 *  the cluster against the HTTP server it is built on, on the same cores, in the same run.
 *
 *      bare_h2o <port> [processes=2]
 *
 *  Runs until SIGTERM or SIGINT. Not part of presenced. */
#include <h2o.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static h2o_globalconf_t s_config;
static h2o_context_t s_ctx;
static h2o_accept_ctx_t s_accept_ctx;

static int
s_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    static const char body[] = "{\"message\":\"Pong!\",\"ok\":true,\"n\":1}";
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    req->res.content_length = sizeof body - 1;
    h2o_send_inline(req, body, sizeof body - 1);
    return 0;
}

static void
s_on_accept(h2o_socket_t *listener, const char *err)
{
    if (err)
        return;
    for (int i = 0; i < 64; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (!sock)
            break;
        h2o_accept(&s_accept_ctx, sock);
    }
}

static int
s_serve(int port)
{
    h2o_config_init(&s_config);
    h2o_hostconf_t *host =
        h2o_config_register_host(&s_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = s_on_req;
    h2o_context_init(&s_ctx, h2o_evloop_create(), &s_config);
    s_accept_ctx.ctx = &s_ctx;
    s_accept_ctx.hosts = s_config.hosts;

    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
        perror("bare_h2o: listen");
        return 1;
    }
    h2o_socket_t *listener = h2o_evloop_socket_create(s_ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    h2o_socket_read_start(listener, s_on_accept);
    for (;;)
        h2o_evloop_run(s_ctx.loop, INT32_MAX);
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bare_h2o <port> [processes=2]\n");
        return 2;
    }
    int port = atoi(argv[1]), n = argc > 2 ? atoi(argv[2]) : 2;
    signal(SIGPIPE, SIG_IGN);
    pid_t kids[64];
    if (n < 1 || n > 64)
        n = 2;
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            signal(SIGTERM, SIG_DFL);
            return s_serve(port);
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig;
    sigwait(&set, &sig);
    for (int i = 0; i < n; i++)
        if (kids[i] > 0)
            kill(kids[i], SIGTERM);
    while (wait(NULL) > 0)
        ;
    return 0;
}
