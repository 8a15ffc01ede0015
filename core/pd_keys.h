/*  pd_keys — the cluster's CURVE key set, and who may connect to which internal socket.
 *
 *  Every internal ZeroMQ socket is CURVE (RFC 26): encrypted, and both ends authenticated.
 *  Each role instance has its own key pair, named after it: `broker`, `reaper`, `store-<n>`,
 *  `gateway-<n>`. A key set is a directory (presencectl cluster-keys writes one):
 *
 *      <name>.pub   the instance's public key, Z85 (40 characters) per line. Usually one line;
 *                   during a rotation two (every line is trusted; a client connecting to <name>
 *                   uses the first).
 *      <name>.key   its secret key, Z85, mode 0600 (refused when group- or world-writable or
 *                   world-readable).
 *
 *  A role loads its own <name>.key and every *.pub. Client sockets pin the server's public key
 *  (a gateway talks only to the real broker and the real store-<n>); server sockets run a ZAP
 *  handler (RFC 27, one thread per process, pd_zap_t) that admits a client only if its public
 *  key is in the set AND its name is allowed on that socket (the socket's ZAP domain). A
 *  server socket can only be made with a running handler (pd_zap_server), so no CURVE socket
 *  of ours ever falls back to libzmq's "no handler: admit everyone":
 *
 *      domain          admits                  socket
 *      broker-front    gateway-<n>, reaper,    broker ROUTER for requests (ctl: presencectl's
 *                      ctl                     cluster commands, SCALE only)
 *      broker-back     store-<n>               broker ROUTER for store nodes
 *      bus-in          store-<n>               broker XSUB (events in)
 *      bus-out         gateway-<n>, reaper     broker XPUB (events out)
 *      store-front     gateway-<n>             a store node's ROUTER for direct requests
 *
 *  The handler answers with the key's name as ZAP User-Id, which libzmq attaches to every
 *  message of that connection: pd_keys_peer() reads it. The broker identifies store node <n>
 *  by the User-Id "store-<n>" of what it receives, never by a name the peer chose, so only the
 *  holder of store-<n>'s secret can be node <n> or announce its endpoint.
 *
 *  pd_keys_client and pd_zap_server also give the socket the options of an internal link
 *  (ZMTP heartbeats, connect timeout, reconnect backoff: pd_keys.c, s_link), so every link
 *  between roles is set up in one place. */
#ifndef PD_KEYS_H
#define PD_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>

#define PD_KEY_Z85 40      //  Z85 text of a 32-byte key
#define PD_KEY_NAME 32     //  longest key name, with its NUL

typedef struct pd_keys_s pd_keys_t;
typedef struct pd_zap_s pd_zap_t;

/*  Writes the missing key pairs of a set into dir (created 0700 if absent): ctl, broker,
 *  reaper, store-1..stores, gateway-1..gateways. Existing pairs are kept (so a larger --gateways adds
 *  keys). Returns how many pairs were written, or -1 with a message in err. */
int pd_keys_generate(const char *dir, int stores, int gateways, char *err, size_t errlen);

/*  Writes a new pair for name (which must exist in dir): the new secret replaces <name>.key
 *  and the new public key becomes the first line of <name>.pub, the old ones kept after it,
 *  so peers that load the new .pub trust both. Returns 0, or -1 with a message in err. */
int pd_keys_rotate(const char *dir, const char *name, char *err, size_t errlen);

//  Drops every public key of name but the first from <name>.pub. Returns 0, or -1 with err.
int pd_keys_retire(const char *dir, const char *name, char *err, size_t errlen);

/*  Loads the set in dir for the instance self ("store-2"): its secret key (checked against its
 *  public key) and every public key. Returns NULL with a message in err. */
pd_keys_t *pd_keys_load(const char *dir, const char *self, char *err, size_t errlen);
void pd_keys_destroy(pd_keys_t **self_p);

//  Makes sock (before connect) a CURVE client of the instance server ("broker", "store-1"),
//  pinning its public key. Returns 0, or -1 when server has no key in the set.
int pd_keys_client(const pd_keys_t *self, void *sock, const char *server);

/*  Parses the text of a .pub file: one Z85 key (40 characters) per line, blank lines and lines
 *  starting with '#' skipped, at most max keys and 4 KiB. Returns how many keys it put in keys,
 *  or -1 when a line is not a key or there are too many. */
int pd_keys_parse(const char *text, size_t len, unsigned char keys[][32], int max);

//  The key name the ZAP handler gave the connection a received message part came over
//  ("store-1"), or NULL.
const char *pd_keys_peer(zmq_msg_t *part);
//  n if name is "<prefix>-<n>" with 1 <= n <= max, else 0.
int pd_keys_node(const char *name, const char *prefix, int max);

/*  Starts this process's ZAP handler (a thread serving inproc://zeromq.zap.01 in czmq's
 *  context) for the key set, which must outlive it. Call before binding a CURVE server socket.
 *  Returns NULL on failure (logged). */
pd_zap_t *pd_zap_new(const pd_keys_t *keys);
//  Makes sock (a libzmq socket, before bind) a CURVE server with this process's secret key,
//  whose clients the handler admits per domain (the table above). Returns 0, or -1 (errno).
int pd_zap_server(const pd_zap_t *self, void *sock, const char *domain);
//  Clients refused so far (for metrics).
unsigned long pd_zap_denied(const pd_zap_t *self);
void pd_zap_destroy(pd_zap_t **self_p);

void pd_keys_test(bool verbose);

#endif
