/*  pd_attack — a hostile ZeroMQ peer for the security tests: it does what an attacker with a pod
 *  in the cluster's network would do to presenced's internal ports, and reports what it got.
 *
 *      pd_attack MODE ENDPOINT [--auth none|stranger|DIR:NAME] [--server-pub FILE] [--ms N]
 *                [--node N] [--project P]
 *
 *  MODE    listen   SUB to the bus (bus-out), subscribed to everything: counts what arrives
 *          list     DEALER to the broker's front: LIST of project P with the permission-bypass
 *                   flag, sent every 100 ms: counts replies
 *          publish  PUB to the bus's inbound side (bus-in): a forged upsert EVENT of project P
 *                   every 50 ms
 *          store    DEALER to the broker's back named "store-N", announcing a front endpoint
 *                   (HELLO) every 100 ms: counts what the broker sends it
 *          reaper   DEALER to the broker's front named "reaper", HELLO every 100 ms
 *  --auth  none: no security at all; stranger: CURVE with a fresh key pair of its own (and the
 *          server's real public key from --server-pub); DIR:NAME: CURVE with the key NAME of a
 *          real key set (a genuine key used where it is not allowed)
 *
 *  Prints one JSON line: {"mode":..., "sent":n, "received":n}. Exit 0 unless it cannot run. */
#include <czmq.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_keys.h"
#include "pd_msg.h"

static void
s_auth(void *sock, const char *auth, const char *server_pub)
{
    if (!auth || strcmp(auth, "none") == 0)
        return;
    if (strcmp(auth, "stranger") == 0) {
        uint8_t pk[32], sk[32];
        char zp[41], zs[41], server[64] = {0};
        crypto_box_keypair(pk, sk);
        zmq_z85_encode(zp, pk, 32);
        zmq_z85_encode(zs, sk, 32);
        FILE *f = server_pub ? fopen(server_pub, "r") : NULL;
        if (!f || !fgets(server, sizeof server, f)) {
            fprintf(stderr, "pd_attack: stranger needs --server-pub FILE\n");
            exit(2);
        }
        fclose(f);
        server[strcspn(server, "\r\n")] = 0;
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, zs, 41);
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, zp, 41);
        zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, strlen(server) + 1);
        return;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s", auth);
    char *name = strrchr(dir, ':');
    if (!name) {
        fprintf(stderr, "pd_attack: --auth none|stranger|DIR:NAME\n");
        exit(2);
    }
    *name++ = 0;
    char err[512];
    pd_keys_t *keys = pd_keys_load(dir, name, err, sizeof err);
    if (!keys) {
        fprintf(stderr, "pd_attack: %s\n", err);
        exit(2);
    }
    /* every internal server is the broker or a store node; pin the one the caller names */
    const char *server = getenv("PD_ATTACK_SERVER") ? getenv("PD_ATTACK_SERVER") : "broker";
    if (pd_keys_client(keys, sock, server) < 0) {
        fprintf(stderr, "pd_attack: no key for %s\n", server);
        exit(2);
    }
    pd_keys_destroy(&keys);
}

int
main(int argc, char **argv)
{
    if (argc < 3 || sodium_init() < 0) {
        fprintf(stderr, "usage: pd_attack listen|list|publish|store|reaper ENDPOINT [options]\n");
        return 2;
    }
    const char *mode = argv[1], *ep = argv[2], *auth = "none", *server_pub = NULL;
    const char *project = "e2e-project";
    int ms = 2000, node = 1;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--auth") == 0)
            auth = argv[i + 1];
        else if (strcmp(argv[i], "--server-pub") == 0)
            server_pub = argv[i + 1];
        else if (strcmp(argv[i], "--ms") == 0)
            ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--node") == 0)
            node = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--project") == 0)
            project = argv[i + 1];
    }
    zsys_handler_set(NULL);
    int type = strcmp(mode, "listen") == 0    ? ZMQ_SUB
               : strcmp(mode, "publish") == 0 ? ZMQ_PUB
                                              : ZMQ_DEALER;
    zsock_t *sock = zsock_new(type);
    void *s = zsock_resolve(sock);
    s_auth(s, auth, server_pub);
    char ident[32];
    if (strcmp(mode, "store") == 0)
        snprintf(ident, sizeof ident, "store-%d", node);
    else if (strcmp(mode, "reaper") == 0)
        snprintf(ident, sizeof ident, "reaper");
    else
        snprintf(ident, sizeof ident, "gateway-%d-1", node);
    if (type == ZMQ_DEALER)
        zsock_set_identity(sock, ident);
    if (type == ZMQ_SUB)
        zsock_set_subscribe(sock, "");
    zsock_set_sndtimeo(sock, 0);
    zsock_set_rcvtimeo(sock, 0);
    if (zsock_connect(sock, "%s", ep) < 0) {
        fprintf(stderr, "pd_attack: cannot connect to %s\n", ep);
        return 2;
    }
    pd_msgw_t w;
    pd_msgw_init(&w);
    int64_t end = zclock_mono() + ms, next = 0;
    long sent = 0, received = 0;
    while (zclock_mono() < end) {
        int64_t now = zclock_mono();
        if (type != ZMQ_SUB && now >= next) {
            pd_msgw_reset(&w);
            if (strcmp(mode, "list") == 0) {
                pd_msgw_begin(&w, PD_MSG_LIST, (uint64_t)sent + 1);
                pd_msgw_str(&w, PD_F_PROJECT, project, strlen(project));
                pd_msgw_int(&w, PD_F_FLAGS, PD_FL_BYPASS);
                pd_msgw_int(&w, PD_F_LIMIT, 5000);
                pd_msgw_end(&w);
            } else if (strcmp(mode, "publish") == 0) {
                static const char body[] =
                    "{\"$id\":\"forged\",\"userId\":\"mallory\",\"status\":\"forged\"}";
                pd_msgw_begin(&w, PD_MSG_EVENT, 0);
                pd_msgw_int(&w, PD_F_ACTION, PD_ACT_UPSERT);
                pd_msgw_int(&w, PD_F_NODE, node);
                pd_msgw_int(&w, PD_F_SEQ, sent + 1);
                pd_msgw_str(&w, PD_F_PROJECT, project, strlen(project));
                pd_msgw_str(&w, PD_F_ID, "forged", 6);
                pd_msgw_str(&w, PD_F_USER, "mallory", 7);
                pd_msgw_str(&w, PD_F_BODY, body, sizeof body - 1);
                pd_msgw_str(&w, PD_F_READ_ROLES, "any", 4);
                pd_msgw_end(&w);
            } else { /* store, reaper */
                pd_msgw_begin(&w, PD_MSG_HELLO, 0);
                pd_msgw_str(&w, PD_F_ROLE, mode, strlen(mode));
                pd_msgw_int(&w, PD_F_NODE, node);
                pd_msgw_int(&w, PD_F_GEN, 1);
                pd_msgw_str(&w, PD_F_ENDPOINT, "tcp://127.0.0.1:9", 17);
                pd_msgw_end(&w);
            }
            zmq_msg_t m;
            size_t len = w.sb.size + (type == ZMQ_PUB);
            zmq_msg_init_size(&m, len);
            char *d = zmq_msg_data(&m);
            if (type == ZMQ_PUB)
                d[0] = PD_BUS_EVENT;
            memcpy(d + (type == ZMQ_PUB), w.sb.data, w.sb.size);
            if (zmq_msg_send(&m, s, ZMQ_DONTWAIT) >= 0)
                sent++;
            else
                zmq_msg_close(&m);
            next = now + (type == ZMQ_PUB ? 50 : 100);
        }
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) > 0) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            while (zmq_msg_recv(&m, s, ZMQ_DONTWAIT) >= 0)
                received++;
            zmq_msg_close(&m);
        }
    }
    printf("{\"mode\":\"%s\",\"auth\":\"%s\",\"sent\":%ld,\"received\":%ld}\n", mode,
           strchr(auth, ':') ? strrchr(auth, ':') + 1 : auth, sent, received);
    pd_msgw_destroy(&w);
    zsock_destroy(&sock);
    return 0;
}
