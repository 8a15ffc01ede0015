/*  pd_keys — see pd_keys.h.
 *
 *  Keys are libsodium Curve25519 pairs (crypto_box_keypair: the curve and key format CURVE
 *  uses), kept as Z85 text (zmq_z85_encode). The ZAP handler is a czmq actor: a thread with a
 *  REP socket bound to inproc://zeromq.zap.01, which libzmq asks about every CURVE handshake
 *  on a socket with a ZAP domain. Handshakes are rare (a peer connecting), so the handler's
 *  linear lookup over a few dozen keys costs nothing that matters. */
#include "pd_keys.h"

#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "pd_log.h"
#include "pd_util.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MAX_LINES 4 //  public keys per name (current + those being rotated out)

typedef struct {
    char name[PD_KEY_NAME];
    uint8_t pub[32];
} keyent_t;

struct pd_keys_s {
    char self[PD_KEY_NAME];
    char secret[PD_KEY_Z85 + 1]; //  own secret key, Z85
    char public[PD_KEY_Z85 + 1]; //  own public key, Z85 (derived from the secret)
    keyent_t *ent;               //  every trusted public key
    size_t n;
};

struct pd_zap_s {
    const pd_keys_t *keys;
    zactor_t *actor;
    unsigned long denied; //  written by the actor thread, read atomically
    bool failed;          //  the actor could not bind the ZAP endpoint
    int64_t last_log;     //  actor: mono ms of the last refusal logged
    unsigned long unlogged; // actor: refusals since then
};

//  Key names: lower-case letters, digits and '-', 1..31 characters.
static bool
s_name_ok(const char *s, size_t len)
{
    if (len == 0 || len >= PD_KEY_NAME)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

int
pd_keys_node(const char *name, const char *prefix, int max)
{
    if (!name)
        return 0;
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0 || name[pl] != '-')
        return 0;
    const char *d = name + pl + 1;
    if (*d < '1' || *d > '9' || strlen(d) > 6)
        return 0;
    int n = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return 0;
        n = n * 10 + (*d - '0');
    }
    return n <= max ? n : 0;
}

/* -------------------------------------------------------------------------- files */

/*  Reads a key file (at most 4 KiB). A secret must be a regular file that nobody else may
 *  write and the world may not read (Kubernetes mounts Secrets as 0400 or, with fsGroup, 0440
 *  symlinks into the volume: the link is followed, the file it names is checked). */
static int
s_read(const char *path, bool secret, char *buf, size_t cap, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pd_errf(err, errlen, -1, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pd_errf(err, errlen, -1, "%s: not a regular file", path);
    }
    if (secret && (st.st_mode & (S_IWGRP | S_IRWXO))) {
        close(fd);
        return pd_errf(err, errlen, -1, "%s: mode %03o lets others read or change a secret key (chmod 600 it)", path,
                     (unsigned)(st.st_mode & 0777));
    }
    ssize_t got = read(fd, buf, cap - 1);
    close(fd);
    if (got < 0)
        return pd_errf(err, errlen, -1, "%s: %s", path, strerror(errno));
    buf[got] = 0;
    return (int)got;
}

//  Next non-empty, non-comment line of *p as a 32-byte key. Returns 1, 0 at the end, -1 bad.
static int
s_next_key(char **p, uint8_t key[32])
{
    for (;;) {
        char *s = *p;
        if (!*s)
            return 0;
        char *e = strchr(s, '\n');
        *p = e ? e + 1 : s + strlen(s);
        size_t len = e ? (size_t)(e - s) : strlen(s);
        while (len && (s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t'))
            len--;
        while (len && (*s == ' ' || *s == '\t'))
            s++, len--;
        if (!len || *s == '#')
            continue;
        if (len != PD_KEY_Z85)
            return -1;
        char z[PD_KEY_Z85 + 1];
        memcpy(z, s, PD_KEY_Z85);
        z[PD_KEY_Z85] = 0;
        return zmq_z85_decode(key, z) ? 1 : -1;
    }
}

int
pd_keys_parse(const char *text, size_t len, unsigned char keys[][32], int max)
{
    char buf[4096];
    if (len >= sizeof buf || memchr(text, 0, len))
        return -1;
    memcpy(buf, text, len);
    buf[len] = 0;
    char *p = buf;
    uint8_t key[32];
    int n = 0, got;
    while ((got = s_next_key(&p, key)) == 1) {
        if (n == max)
            return -1;
        memcpy(keys[n++], key, 32);
    }
    return got < 0 ? -1 : n;
}

//  Creates path with mode and writes text; O_EXCL unless replace (then a temp file renamed).
static int
s_write(const char *path, const char *text, mode_t mode, bool replace, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid()) >= (int)sizeof tmp)
        return pd_errf(err, errlen, -1, "%s: path too long", path);
    const char *target = replace ? tmp : path;
    int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return pd_errf(err, errlen, -1, "%s: %s", target, strerror(errno));
    size_t len = strlen(text);
    bool ok = fchmod(fd, mode) == 0 && write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    if (ok && replace && rename(tmp, path) < 0)
        ok = false;
    if (!ok) {
        int e = errno;
        unlink(target);
        return pd_errf(err, errlen, -1, "%s: %s", path, strerror(e));
    }
    return 0;
}

static int
s_path(char *dst, size_t n, const char *dir, const char *name, const char *ext)
{
    return snprintf(dst, n, "%s/%s.%s", dir, name, ext) < (int)n ? 0 : -1;
}

//  A new pair as Z85 text lines.
static void
s_pair(char pub[PD_KEY_Z85 + 2], char sec[PD_KEY_Z85 + 2])
{
    uint8_t pk[32], sk[32];
    crypto_box_keypair(pk, sk);
    zmq_z85_encode(pub, pk, 32);
    zmq_z85_encode(sec, sk, 32);
    sodium_memzero(sk, sizeof sk);
    strcat(pub, "\n");
    strcat(sec, "\n");
}

static int
s_dir(const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return pd_errf(err, errlen, -1, "%s: %s", dir, strerror(errno));
    struct stat st;
    if (lstat(dir, &st) < 0)
        return pd_errf(err, errlen, -1, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return pd_errf(err, errlen, -1, "%s: not a directory", dir);
    if (st.st_uid != geteuid() || (st.st_mode & 0077))
        return pd_errf(err, errlen, -1, "%s: must be ours with mode 0700 to hold secret keys", dir);
    return 0;
}

int
pd_keys_generate(const char *dir, int stores, int gateways, char *err, size_t errlen)
{
    if (stores < 0 || gateways < 0 || stores > 4096 || gateways > 4096)
        return pd_errf(err, errlen, -1, "store and gateway counts must be 0..4096");
    if (s_dir(dir, err, errlen) < 0)
        return -1;
    int made = 0;
    for (int i = -3; i < stores + gateways; i++) {
        char name[PD_KEY_NAME];
        if (i == -3)
            snprintf(name, sizeof name, "ctl"); /* presencectl's cluster commands (broker-front) */
        else if (i == -2)
            snprintf(name, sizeof name, "broker");
        else if (i == -1)
            snprintf(name, sizeof name, "reaper");
        else if (i < stores)
            snprintf(name, sizeof name, "store-%d", i + 1);
        else
            snprintf(name, sizeof name, "gateway-%d", i - stores + 1);
        char pubp[PATH_MAX], secp[PATH_MAX];
        if (s_path(pubp, sizeof pubp, dir, name, "pub") < 0 ||
            s_path(secp, sizeof secp, dir, name, "key") < 0)
            return pd_errf(err, errlen, -1, "%s: path too long", dir);
        struct stat st;
        bool has_pub = lstat(pubp, &st) == 0, has_sec = lstat(secp, &st) == 0;
        if (has_pub && has_sec)
            continue;
        if (has_pub != has_sec)
            return pd_errf(err, errlen, -1, "%s: one of %s.pub and %s.key is missing", dir, name, name);
        char pub[PD_KEY_Z85 + 2], sec[PD_KEY_Z85 + 2];
        s_pair(pub, sec);
        int rc = s_write(secp, sec, 0600, false, err, errlen);
        sodium_memzero(sec, sizeof sec);
        if (rc < 0 || s_write(pubp, pub, 0644, false, err, errlen) < 0)
            return -1;
        made++;
    }
    return made;
}

int
pd_keys_rotate(const char *dir, const char *name, char *err, size_t errlen)
{
    char pubp[PATH_MAX], secp[PATH_MAX], old[4096];
    if (!s_name_ok(name, strlen(name)) || s_path(pubp, sizeof pubp, dir, name, "pub") < 0 ||
        s_path(secp, sizeof secp, dir, name, "key") < 0)
        return pd_errf(err, errlen, -1, "bad key name '%s'", name);
    if (s_read(pubp, false, old, sizeof old, err, errlen) < 0)
        return -1;
    char pub[PD_KEY_Z85 + 2], sec[PD_KEY_Z85 + 2], text[sizeof old + sizeof pub];
    s_pair(pub, sec);
    snprintf(text, sizeof text, "%s%s", pub, old);
    int rc = s_write(secp, sec, 0600, true, err, errlen);
    sodium_memzero(sec, sizeof sec);
    return rc < 0 ? -1 : s_write(pubp, text, 0644, true, err, errlen);
}

int
pd_keys_retire(const char *dir, const char *name, char *err, size_t errlen)
{
    char pubp[PATH_MAX], text[4096];
    if (!s_name_ok(name, strlen(name)) || s_path(pubp, sizeof pubp, dir, name, "pub") < 0)
        return pd_errf(err, errlen, -1, "bad key name '%s'", name);
    if (s_read(pubp, false, text, sizeof text, err, errlen) < 0)
        return -1;
    unsigned char keys[MAX_LINES][32];
    if (pd_keys_parse(text, strlen(text), keys, MAX_LINES) < 1)
        return pd_errf(err, errlen, -1, "%s: no valid public key", pubp);
    char first[PD_KEY_Z85 + 2];
    zmq_z85_encode(first, keys[0], 32);
    strcat(first, "\n");
    return s_write(pubp, first, 0644, true, err, errlen);
}

/* -------------------------------------------------------------------------- the set */

pd_keys_t *
pd_keys_load(const char *dir, const char *self_name, char *err, size_t errlen)
{
    if (!dir || !dir[0]) {
        pd_errf(err, errlen, -1, "no key set: give --keys DIR (presencectl cluster-keys --out DIR "
                           "writes one)");
        return NULL;
    }
    if (!s_name_ok(self_name, strlen(self_name))) {
        pd_errf(err, errlen, -1, "bad key name '%s'", self_name);
        return NULL;
    }
    DIR *d = opendir(dir);
    if (!d) {
        pd_errf(err, errlen, -1, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    pd_keys_t *self = calloc(1, sizeof *self);
    if (!self)
        pd_fatal("calloc");
    snprintf(self->self, sizeof self->self, "%s", self_name);
    size_t cap = 0;
    struct dirent *de;
    char text[4096], path[PATH_MAX];
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".pub") != 0 ||
            !s_name_ok(de->d_name, len - 4))
            continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path ||
            s_read(path, false, text, sizeof text, err, errlen) < 0) {
            rc = -1;
            break;
        }
        unsigned char keys[MAX_LINES][32];
        int got = pd_keys_parse(text, strlen(text), keys, MAX_LINES);
        for (int k = 0; k < got; k++) {
            if (self->n == cap) {
                cap = cap ? cap * 2 : 16;
                self->ent = realloc(self->ent, cap * sizeof *self->ent);
                if (!self->ent)
                    pd_fatal("realloc");
            }
            keyent_t *e = &self->ent[self->n++];
            memcpy(e->name, de->d_name, len - 4);
            e->name[len - 4] = 0;
            memcpy(e->pub, keys[k], 32);
        }
        if (got < 0)
            rc = pd_errf(err, errlen, -1, "%s: each line must be one Z85 public key (40 characters), "
                                    "at most %d", path, MAX_LINES);
    }
    closedir(d);
    uint8_t sk[32], pk[32];
    if (rc == 0 && (s_path(path, sizeof path, dir, self_name, "key") < 0 ||
                    s_read(path, true, text, sizeof text, err, errlen) < 0))
        rc = -1;
    if (rc == 0) {
        char *p = text;
        if (s_next_key(&p, sk) != 1)
            rc = pd_errf(err, errlen, -1, "%s: not a Z85 secret key", path);
        sodium_memzero(text, sizeof text);
    }
    if (rc == 0) {
        crypto_scalarmult_base(pk, sk);
        bool listed = false;
        for (size_t i = 0; i < self->n; i++)
            listed |= strcmp(self->ent[i].name, self_name) == 0 && memcmp(self->ent[i].pub, pk, 32) == 0;
        if (!listed)
            rc = pd_errf(err, errlen, -1, "%s: its public key is not in %s/%s.pub", path, dir, self_name);
    }
    if (rc == 0) {
        zmq_z85_encode(self->secret, sk, 32);
        zmq_z85_encode(self->public, pk, 32);
    }
    sodium_memzero(sk, sizeof sk);
    if (rc < 0)
        pd_keys_destroy(&self);
    return self;
}

void
pd_keys_destroy(pd_keys_t **self_p)
{
    pd_keys_t *self = *self_p;
    if (!self)
        return;
    sodium_memzero(self->secret, sizeof self->secret);
    free(self->ent);
    free(self);
    *self_p = NULL;
}

/*  What every internal link has besides CURVE: ZMTP heartbeats (a PING a second; a peer silent
 *  for 3 s is dropped and reconnected), so a connection that outlived a network partition or a
 *  vanished host is found dead in seconds rather than after TCP's minutes of retransmissions;
 *  connects that hang give up after 2 s, and reconnects back off from 100 ms to 2 s. */
static int
s_link(void *sock)
{
    int ivl = 1000, timeout = 3000, connect = 2000, rmax = 2000;
    return zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) ||
                   zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout) ||
                   zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &timeout, sizeof timeout) ||
                   zmq_setsockopt(sock, ZMQ_CONNECT_TIMEOUT, &connect, sizeof connect) ||
                   zmq_setsockopt(sock, ZMQ_RECONNECT_IVL_MAX, &rmax, sizeof rmax)
               ? -1
               : 0;
}

//  This instance's own pair on sock, and the link options.
static int
s_own(const pd_keys_t *self, void *sock)
{
    return s_link(sock) ||
           zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, self->secret, PD_KEY_Z85 + 1) ||
                   zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, self->public, PD_KEY_Z85 + 1)
               ? -1
               : 0;
}

int
pd_keys_client(const pd_keys_t *self, void *sock, const char *server)
{
    for (size_t i = 0; i < self->n; i++) {
        if (strcmp(self->ent[i].name, server) != 0)
            continue;
        char z[PD_KEY_Z85 + 1];
        zmq_z85_encode(z, self->ent[i].pub, 32);
        return s_own(self, sock) || zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, z, sizeof z) ? -1
                                                                                         : 0;
    }
    errno = ENOENT;
    return -1;
}

const char *
pd_keys_peer(zmq_msg_t *part)
{
    return zmq_msg_gets(part, "User-Id");
}

/* -------------------------------------------------------------------------- ZAP */

//  Whether the key named name may connect to a socket of domain (the table in pd_keys.h).
static bool
s_admits(const char *domain, const char *name)
{
    bool store = pd_keys_node(name, "store", 1 << 20) > 0;
    bool gateway = pd_keys_node(name, "gateway", 1 << 20) > 0;
    bool reaper = strcmp(name, "reaper") == 0;
    if (strcmp(domain, "broker-front") == 0) /* ctl: presencectl's cluster commands */
        return gateway || reaper || strcmp(name, "ctl") == 0;
    if (strcmp(domain, "bus-out") == 0)
        return gateway || reaper;
    if (strcmp(domain, "broker-back") == 0 || strcmp(domain, "bus-in") == 0)
        return store;
    if (strcmp(domain, "store-front") == 0)
        return gateway;
    return false;
}

//  One ZAP request (RFC 27): version, request id, domain, address, identity, mechanism, key.
static void
s_zap_answer(pd_zap_t *self, zsock_t *rep)
{
    zmsg_t *req = zmsg_recv(rep);
    if (!req)
        return;
    char *version = zmsg_popstr(req), *rid = zmsg_popstr(req), *domain = zmsg_popstr(req),
         *address = zmsg_popstr(req), *identity = zmsg_popstr(req), *mech = zmsg_popstr(req);
    zframe_t *cred = zmsg_pop(req);
    const char *name = NULL;
    if (version && strcmp(version, "1.0") == 0 && mech && strcmp(mech, "CURVE") == 0 && cred &&
        zframe_size(cred) == 32 && domain) {
        for (size_t i = 0; i < self->keys->n && !name; i++)
            if (memcmp(self->keys->ent[i].pub, zframe_data(cred), 32) == 0)
                name = self->keys->ent[i].name;
        if (name && !s_admits(domain, name))
            name = NULL;
    }
    if (!name) {
        __atomic_add_fetch(&self->denied, 1, __ATOMIC_RELAXED);
        self->unlogged++;
        int64_t now = pd_mono_ms();
        if (now - self->last_log >= 1000) {
            char z[PD_KEY_Z85 + 1] = "?";
            if (cred && zframe_size(cred) == 32)
                zmq_z85_encode(z, zframe_data(cred), 32);
            pd_log_warn("refused a %s client from %s on %s (key %.8s…, %lu refused since the "
                        "last report)", mech ? mech : "?", address ? address : "?",
                        domain ? domain : "?", z, self->unlogged);
            self->last_log = now;
            self->unlogged = 0;
        }
    }
    zmsg_t *rep_msg = zmsg_new();
    zmsg_addstr(rep_msg, "1.0");
    zmsg_addstr(rep_msg, rid ? rid : "");
    zmsg_addstr(rep_msg, name ? "200" : "400");
    zmsg_addstr(rep_msg, name ? "OK" : "key not admitted");
    zmsg_addstr(rep_msg, name ? name : "");
    zmsg_addmem(rep_msg, "", 0);
    zmsg_send(&rep_msg, rep);
    zmsg_destroy(&rep_msg);
    free(version), free(rid), free(domain), free(address), free(identity), free(mech);
    zframe_destroy(&cred);
    zmsg_destroy(&req);
}

static void
s_zap_actor(zsock_t *pipe, void *arg)
{
    pd_zap_t *self = arg;
    zsock_t *rep = zsock_new(ZMQ_REP);
    /* An inproc endpoint is released a moment after its socket closes (a handler restarted
     * in the same process): try for up to a second. */
    int rc = -1;
    for (int i = 0; rep && rc < 0 && i < 100; i++)
        if ((rc = zsock_bind(rep, ZAP_ENDPOINT)) < 0)
            zclock_sleep(10);
    if (rc < 0) {
        zsock_destroy(&rep);
        self->failed = true;
        zsock_signal(pipe, 1);
        return;
    }
    zsock_signal(pipe, 0);
    zpoller_t *poller = zpoller_new(pipe, rep, NULL);
    for (;;) {
        void *which = zpoller_wait(poller, -1);
        if (which == rep) {
            s_zap_answer(self, rep);
            continue;
        }
        if (which != pipe)
            break; //  interrupted or terminated
        zmsg_t *msg = zmsg_recv(pipe);
        char *cmd = msg ? zmsg_popstr(msg) : NULL;
        bool term = !cmd || strcmp(cmd, "$TERM") == 0;
        free(cmd);
        zmsg_destroy(&msg);
        if (term)
            break;
    }
    zpoller_destroy(&poller);
    zsock_destroy(&rep);
}

pd_zap_t *
pd_zap_new(const pd_keys_t *keys)
{
    pd_zap_t *self = calloc(1, sizeof *self);
    if (!self)
        pd_fatal("calloc");
    self->keys = keys;
    self->actor = zactor_new(s_zap_actor, self);
    if (!self->actor || self->failed) { //  the actor has signalled (zactor_new waits for it)
        zactor_destroy(&self->actor);
        pd_log_warn("cannot start the ZAP handler (%s already bound in this process?)",
                    ZAP_ENDPOINT);
        free(self);
        return NULL;
    }
    return self;
}

int
pd_zap_server(const pd_zap_t *self, void *sock, const char *domain)
{
    int one = 1;
    /* ZMQ_ZAP_ENFORCE_DOMAIN (libzmq draft option 93, built into Debian's libzmq5): with it a
     * missing handler refuses every client instead of admitting all. Where the option does
     * not exist, pd_zap_new's bind is what guarantees the handler is there. */
    (void)zmq_setsockopt(sock, 93, &one, sizeof one);
    return zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
                   s_own(self->keys, sock) ||
                   zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain))
               ? -1
               : 0;
}

unsigned long
pd_zap_denied(const pd_zap_t *self)
{
    return self ? __atomic_load_n(&self->denied, __ATOMIC_RELAXED) : 0;
}

void
pd_zap_destroy(pd_zap_t **self_p)
{
    pd_zap_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy(&self->actor);
    free(self);
    *self_p = NULL;
}

/* -------------------------------------------------------------------------- self test */

//  Sends one message from a client named cname (or a stranger's key when cname is NULL) to a
//  server socket of domain; returns the User-Id the server saw, "" if nothing arrived.
static void
s_try(pd_zap_t *zap, const pd_keys_t *ckeys, const char *domain, const char *server, char *seen,
      size_t n)
{
    zsock_t *srv = zsock_new(ZMQ_ROUTER);
    PD_CHECK(srv && pd_zap_server(zap, zsock_resolve(srv), domain) == 0);
    PD_CHECK(zsock_bind(srv, "tcp://127.0.0.1:*") > 0);
    zsock_t *cli = zsock_new(ZMQ_DEALER);
    if (ckeys) {
        PD_CHECK(pd_keys_client(ckeys, zsock_resolve(cli), server) == 0);
    } else { //  a stranger: its own fresh pair, the right server key
        char pub[PD_KEY_Z85 + 2], sec[PD_KEY_Z85 + 2], z[PD_KEY_Z85 + 1];
        s_pair(pub, sec);
        pub[PD_KEY_Z85] = sec[PD_KEY_Z85] = 0;
        zmq_z85_encode(z, zap->keys->ent[0].pub, 32);
        for (size_t i = 0; i < zap->keys->n; i++)
            if (strcmp(zap->keys->ent[i].name, server) == 0)
                zmq_z85_encode(z, zap->keys->ent[i].pub, 32);
        void *s = zsock_resolve(cli);
        PD_CHECK(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, sizeof sec - 1) == 0);
        PD_CHECK(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, sizeof pub - 1) == 0);
        PD_CHECK(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, z, sizeof z) == 0);
    }
    PD_CHECK(zsock_connect(cli, "%s", zsock_endpoint(srv)) == 0);
    zsock_set_sndtimeo(cli, 0);
    zstr_send(cli, "hello");
    zsock_set_rcvtimeo(srv, 400);
    seen[0] = 0;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, zsock_resolve(srv), 0) >= 0 &&
        zmq_msg_recv(&body, zsock_resolve(srv), 0) >= 0) {
        const char *uid = pd_keys_peer(&body);
        snprintf(seen, n, "%s", uid ? uid : "(none)");
    }
    zmq_msg_close(&id);
    zmq_msg_close(&body);
    zsock_destroy(&cli);
    zsock_destroy(&srv);
}

void
pd_keys_test(bool verbose)
{
    char dir[] = "/tmp/pd-keys-test-XXXXXX", err[512], path[PATH_MAX];
    PD_CHECK(mkdtemp(dir));
    PD_CHECK(sodium_init() >= 0);
    PD_CHECK(pd_keys_generate(dir, 2, 1, err, sizeof err) == 6); //  with ctl
    PD_CHECK(pd_keys_generate(dir, 2, 2, err, sizeof err) == 1); //  adds gateway-2 only
    struct stat st;
    snprintf(path, sizeof path, "%s/store-1.key", dir);
    PD_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);

    PD_CHECK(pd_keys_node("store-12", "store", 64) == 12);
    PD_CHECK(pd_keys_node("store-0", "store", 64) == 0);
    PD_CHECK(pd_keys_node("store-65", "store", 64) == 0);
    PD_CHECK(pd_keys_node("store-1x", "store", 64) == 0);
    PD_CHECK(pd_keys_node("stores-1", "store", 64) == 0);
    PD_CHECK(pd_keys_node(NULL, "store", 64) == 0);

    pd_keys_t *broker = pd_keys_load(dir, "broker", err, sizeof err);
    PD_CHECK(broker);
    pd_keys_t *store1 = pd_keys_load(dir, "store-1", err, sizeof err);
    pd_keys_t *gw1 = pd_keys_load(dir, "gateway-1", err, sizeof err);
    PD_CHECK(store1 && gw1);
    PD_CHECK(!pd_keys_load(dir, "store-9", err, sizeof err)); //  no such secret
    PD_CHECK(!pd_keys_load("", "broker", err, sizeof err));

    /* a secret others can read is refused */
    PD_CHECK(chmod(path, 0644) == 0);
    PD_CHECK(!pd_keys_load(dir, "store-1", err, sizeof err) && strstr(err, "chmod 600"));
    PD_CHECK(chmod(path, 0600) == 0);

    /* ZAP: who may connect where */
    pd_zap_t *zap = pd_zap_new(broker);
    PD_CHECK(zap);
    char seen[64];
    s_try(zap, store1, "broker-back", "broker", seen, sizeof seen);
    PD_CHECK(strcmp(seen, "store-1") == 0);
    s_try(zap, gw1, "broker-front", "broker", seen, sizeof seen);
    PD_CHECK(strcmp(seen, "gateway-1") == 0);
    s_try(zap, gw1, "broker-back", "broker", seen, sizeof seen); //  a gateway is no store
    PD_CHECK(seen[0] == 0);
    s_try(zap, store1, "bus-out", "broker", seen, sizeof seen);
    PD_CHECK(seen[0] == 0);
    s_try(zap, NULL, "broker-front", "broker", seen, sizeof seen); //  a stranger's key
    PD_CHECK(seen[0] == 0);
    PD_CHECK(pd_zap_denied(zap) == 3);

    /* rotation: the new key and the old are both trusted until retired */
    pd_keys_t *old_gw1 = gw1;
    PD_CHECK(pd_keys_rotate(dir, "gateway-1", err, sizeof err) == 0);
    pd_keys_t *broker2 = pd_keys_load(dir, "broker", err, sizeof err);
    pd_keys_t *new_gw1 = pd_keys_load(dir, "gateway-1", err, sizeof err);
    PD_CHECK(broker2 && new_gw1 && strcmp(new_gw1->public, old_gw1->public) != 0);
    pd_zap_destroy(&zap);
    zap = pd_zap_new(broker2);
    s_try(zap, old_gw1, "broker-front", "broker", seen, sizeof seen);
    PD_CHECK(strcmp(seen, "gateway-1") == 0);
    s_try(zap, new_gw1, "broker-front", "broker", seen, sizeof seen);
    PD_CHECK(strcmp(seen, "gateway-1") == 0);
    pd_zap_destroy(&zap);
    PD_CHECK(pd_keys_retire(dir, "gateway-1", err, sizeof err) == 0);
    pd_keys_t *broker3 = pd_keys_load(dir, "broker", err, sizeof err);
    zap = pd_zap_new(broker3);
    s_try(zap, old_gw1, "broker-front", "broker", seen, sizeof seen);
    PD_CHECK(seen[0] == 0);
    s_try(zap, new_gw1, "broker-front", "broker", seen, sizeof seen);
    PD_CHECK(strcmp(seen, "gateway-1") == 0);
    pd_zap_destroy(&zap);

    pd_keys_destroy(&broker);
    pd_keys_destroy(&broker2);
    pd_keys_destroy(&broker3);
    pd_keys_destroy(&store1);
    pd_keys_destroy(&old_gw1);
    pd_keys_destroy(&new_gw1);
    PD_CHECK(!broker && !store1);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, de->d_name) > 0)
            unlink(path);
    if (d)
        closedir(d);
    rmdir(dir);
    if (verbose)
        printf("   keys: generate, load, ZAP admit/refuse, rotate and retire ok\n");
}
