/*  stormc — the joiners of bench/storm.js's join storm, in C (storm.js --joiners c).
 *
 *  The storm's cost on one machine is the O(N^2) bytes every joiner must read (presence_state on
 *  join, then every presence_diff): 1.4 GB for 5,000. Node's `ws` clients spend several times the
 *  server's CPU reading them, on the same cores, so the storm measured the load generator. These
 *  clients do exactly what storm.js's workers do, at the cost of the read() calls: connect from
 *  127.0.0.2-9, the WebSocket handshake, phx_join of realtime:storm with presence {key: "s-<i>"}
 *  and a user token (HS256 with the project's secret), track {user} once the join is answered
 *  ok; CONC of them in flight (from connect to join reply); then read everything the server
 *  sends, framing checked, payloads counted and skipped. The watcher stays in storm.js.
 *
 *  Usage: stormc HOST PORT PATH FROM TO CONC SECRET
 *    PATH: the WebSocket path and query (/realtime/v1/websocket?apikey=...&vsn=2.0.0).
 *  stdout, one line each: "ready FAILED [first error]" once every client joined (or failed),
 *  "dropped" for a connection the server closed before "close"; "closed BYTES FRAMES" after the
 *  stdin command "close" (every socket closed at once); the stdin command "exit" exits. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOPIC "realtime:storm"
#define RBUF (256 * 1024)

enum { C_CONNECTING, C_UPGRADING, C_JOINING, C_JOINED, C_CLOSED };

typedef struct {
    int fd, state, i;
    size_t hdr_len;      //  bytes of the 101 response read so far (C_UPGRADING)
    uint64_t skip;       //  payload bytes of the current frame still to read
    unsigned char fh[14]; //  a frame header being read
    size_t fh_len;
    bool text, want_reply; //  the current frame: text; to be looked at (joining)
    char reply[160];     //  its first bytes
    size_t reply_len;
} conn_t;

static const char *s_host, *s_path, *s_secret;
static int s_port, s_from, s_to, s_conc, s_ep;
static int s_next, s_inflight, s_done, s_failed;
static bool s_closing;
static char s_first_error[200];
static uint64_t s_bytes, s_frames;
static conn_t *s_conns;

static void
s_b64url(char *out, size_t cap, const void *in, size_t len)
{
    sodium_bin2base64(out, cap, in, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

//  A user's token: HS256 over {exp, sub, role, aud} with the project's secret.
static void
s_jwt(char *out, size_t cap, const char *sub)
{
    char head[64], body[256], payload[640], h64[128], sig64[64];
    snprintf(head, sizeof head, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
    snprintf(body, sizeof body,
             "{\"exp\":%lld,\"sub\":\"%s\",\"role\":\"authenticated\",\"aud\":\"authenticated\"}",
             (long long)time(NULL) + 7200, sub);
    s_b64url(h64, sizeof h64, head, strlen(head));
    char b64[384];
    s_b64url(b64, sizeof b64, body, strlen(body));
    snprintf(payload, sizeof payload, "%s.%s", h64, b64);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)s_secret, strlen(s_secret));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)payload, strlen(payload));
    crypto_auth_hmacsha256_final(&st, mac);
    s_b64url(sig64, sizeof sig64, mac, sizeof mac);
    snprintf(out, cap, "%s.%s", payload, sig64);
}

//  Sends one masked text frame (RFC 6455 §5.3: a client masks what it sends).
static int
s_send_text(int fd, const char *msg)
{
    size_t len = strlen(msg), h = 2;
    unsigned char buf[2048];
    if (len + 8 > sizeof buf)
        return -1;
    buf[0] = 0x81;
    if (len < 126) {
        buf[1] = 0x80 | (unsigned char)len;
    } else {
        buf[1] = 0x80 | 126;
        buf[2] = (unsigned char)(len >> 8);
        buf[3] = (unsigned char)len;
        h = 4;
    }
    unsigned char *mask = buf + h;
    randombytes_buf(mask, 4);
    for (size_t k = 0; k < len; k++)
        buf[h + 4 + k] = (unsigned char)msg[k] ^ mask[k & 3];
    size_t n = h + 4 + len;
    return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static void s_start_one(void);

static void
s_settle(conn_t *c, bool ok, const char *why)
{
    if (c->state == C_JOINED || c->state == C_CLOSED)
        return;
    s_inflight--;
    s_done++;
    if (!ok) {
        s_failed++;
        if (!s_first_error[0])
            snprintf(s_first_error, sizeof s_first_error, "%s", why);
    }
    while (s_next < s_to && s_inflight < s_conc)
        s_start_one();
    if (s_done == s_to - s_from) {
        printf("ready %d %s\n", s_failed, s_first_error);
        fflush(stdout);
    }
}

static void
s_close(conn_t *c, const char *why)
{
    if (c->state == C_CLOSED)
        return;
    if (c->state != C_JOINED)
        s_settle(c, false, why);
    else if (!s_closing) {
        printf("dropped\n");
        fflush(stdout);
    }
    c->state = C_CLOSED;
    close(c->fd);
}

static void
s_start_one(void)
{
    int i = s_next++;
    conn_t *c = &s_conns[i - s_from];
    memset(c, 0, sizeof *c);
    c->i = i;
    s_inflight++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        c->state = C_CONNECTING;
        s_settle(c, false, strerror(errno));
        c->state = C_CLOSED;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    char a[32];
    snprintf(a, sizeof a, "127.0.0.%d", 2 + i % 8);
    inet_pton(AF_INET, a, &src.sin_addr);
    bind(c->fd, (struct sockaddr *)&src, sizeof src);
    inet_pton(AF_INET, s_host, &dst.sin_addr);
    dst.sin_port = htons((uint16_t)s_port);
    c->state = C_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        s_close(c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(s_ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void
s_on_connected(conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        s_close(c, strerror(err));
        return;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     s_path, s_host, s_port);
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        s_close(c, "handshake not sent");
        return;
    }
    c->state = C_UPGRADING;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(s_ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void
s_join(conn_t *c)
{
    char key[32], tok[600], msg[1024];
    snprintf(key, sizeof key, "s-%d", c->i);
    s_jwt(tok, sizeof tok, key);
    snprintf(msg, sizeof msg,
             "[\"1\",\"1\",\"" TOPIC "\",\"phx_join\",{\"config\":{\"presence\":{\"key\":\"%s\","
             "\"enabled\":true},\"broadcast\":{\"self\":false}},\"access_token\":\"%s\"}]",
             key, tok);
    if (s_send_text(c->fd, msg) < 0)
        s_close(c, "join not sent");
    else
        c->state = C_JOINING;
}

//  A whole frame's first bytes while joining: the join's reply, then the track.
static void
s_on_frame(conn_t *c)
{
    static const char want[] = "[\"1\",\"1\",\"" TOPIC "\",\"phx_reply\"";
    if (c->state != C_JOINING || !c->text || c->reply_len < sizeof want - 1 ||
        memcmp(c->reply, want, sizeof want - 1) != 0)
        return;
    c->reply[c->reply_len] = 0;
    if (!strstr(c->reply, "\"status\":\"ok\"")) {
        s_close(c, c->reply);
        return;
    }
    char key[32], msg[256];
    snprintf(key, sizeof key, "s-%d", c->i);
    snprintf(msg, sizeof msg,
             "[\"1\",\"2\",\"" TOPIC "\",\"presence\",{\"type\":\"presence\",\"event\":\"track\","
             "\"payload\":{\"user\":\"%s\"}}]",
             key);
    if (s_send_text(c->fd, msg) < 0) {
        s_close(c, "track not sent");
        return;
    }
    s_settle(c, true, NULL);
    c->state = C_JOINED;
}

//  Walks the bytes read: frame headers parsed, payloads counted and skipped (the first bytes of
//  a text frame kept while joining).
static void
s_consume(conn_t *c, const unsigned char *p, size_t n)
{
    while (n) {
        if (c->skip) {
            size_t k = n < c->skip ? n : (size_t)c->skip;
            if (c->want_reply && c->reply_len < sizeof c->reply - 1) {
                size_t t = sizeof c->reply - 1 - c->reply_len;
                t = t < k ? t : k;
                memcpy(c->reply + c->reply_len, p, t);
                c->reply_len += t;
            }
            c->skip -= k;
            p += k;
            n -= k;
            if (!c->skip && c->want_reply)
                s_on_frame(c);
            continue;
        }
        c->fh[c->fh_len++] = *p++;
        n--;
        if (c->fh_len < 2)
            continue;
        unsigned l7 = c->fh[1] & 0x7f;
        size_t need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (c->fh[1] & 0x80 ? 4 : 0);
        if (c->fh_len < need)
            continue;
        uint64_t len = l7;
        if (l7 == 126)
            len = (uint64_t)c->fh[2] << 8 | c->fh[3];
        else if (l7 == 127)
            for (int k = 0; k < 8; k++)
                len = len << 8 | c->fh[2 + k];
        unsigned op = c->fh[0] & 0x0f;
        c->text = op == 1;
        c->want_reply = c->state == C_JOINING && c->text;
        c->reply_len = 0;
        c->fh_len = 0;
        c->skip = len;
        s_frames++;
        if (op == 8) {
            s_close(c, "closed by the server");
            return;
        }
        if (!len && c->want_reply)
            s_on_frame(c);
    }
}

static void
s_on_readable(conn_t *c, unsigned char *buf)
{
    for (;;) {
        ssize_t r = read(c->fd, buf, RBUF);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0) {
            s_close(c, r == 0 ? "closed before the join reply" : strerror(errno));
            return;
        }
        s_bytes += (uint64_t)r;
        const unsigned char *p = buf;
        size_t n = (size_t)r;
        if (c->state == C_UPGRADING) { /* the 101 response, up to its blank line */
            size_t k = 0;
            static const char end[] = "\r\n\r\n";
            while (k < n && c->hdr_len < 4) {
                c->hdr_len = p[k] == (unsigned char)end[c->hdr_len] ? c->hdr_len + 1
                             : p[k] == '\r'                          ? 1
                                                                     : 0;
                k++;
            }
            if (c->hdr_len < 4)
                continue;
            if (r < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0) {
                s_close(c, "no 101 for the upgrade");
                return;
            }
            s_join(c);
            p += k;
            n -= k;
        }
        if (c->state == C_CLOSED)
            return;
        s_consume(c, p, n);
        if (c->state == C_CLOSED)
            return;
    }
}

static bool
s_on_stdin(void)
{
    char line[64];
    ssize_t r = read(0, line, sizeof line - 1);
    if (r <= 0)
        return false;
    line[r] = 0;
    if (strstr(line, "close")) {
        s_closing = true;
        for (int k = 0; k < s_next - s_from; k++)
            if (s_conns[k].state != C_CLOSED) {
                s_conns[k].state = C_CLOSED;
                close(s_conns[k].fd);
            }
        printf("closed %llu %llu\n", (unsigned long long)s_bytes, (unsigned long long)s_frames);
        fflush(stdout);
    }
    return !strstr(line, "exit");
}

int
main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: stormc HOST PORT PATH FROM TO CONC SECRET\n");
        return 2;
    }
    s_host = argv[1];
    s_port = atoi(argv[2]);
    s_path = argv[3];
    s_from = atoi(argv[4]);
    s_to = atoi(argv[5]);
    s_conc = atoi(argv[6]);
    s_secret = argv[7];
    if (sodium_init() < 0 || s_to < s_from || s_conc < 1)
        return 2;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    s_conns = calloc((size_t)(s_to - s_from) + 1, sizeof *s_conns);
    unsigned char *buf = malloc(RBUF);
    s_ep = epoll_create1(0);
    if (!s_conns || !buf || s_ep < 0)
        return 1;
    struct epoll_event in = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(s_ep, EPOLL_CTL_ADD, 0, &in);
    s_next = s_from;
    while (s_next < s_to && s_inflight < s_conc)
        s_start_one();
    if (s_to == s_from) {
        printf("ready 0\n");
        fflush(stdout);
    }
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(s_ep, evs, 256, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (!c) {
                if (!s_on_stdin())
                    return 0;
                continue;
            }
            if (c->state == C_CLOSED)
                continue;
            if (c->state == C_CONNECTING)
                s_on_connected(c);
            else
                s_on_readable(c, buf);
        }
    }
}
