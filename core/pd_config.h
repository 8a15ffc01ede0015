/*  pd_config — every setting of every role, from command-line flags and PRESENCED_* environment
 *  variables (flags win), plus the projects presenced serves. One struct, filled once at start
 *  by pd_config_parse; roles read it and never write it (the gateway swaps in a fresh project
 *  set on SIGHUP). */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include "pd_auth.h"
#include "pd_util.h"

enum { PD_SCOPE_PRESENCES_READ = 1, PD_SCOPE_PRESENCES_WRITE = 2, PD_SCOPE_USERS_WRITE = 4 };

#define PD_KEY_TAG_BYTES 16   //  crypto_shorthash_siphashx24_BYTES
#define PD_KEY_TAG_KEYBYTES 16 //  crypto_shorthash_siphashx24_KEYBYTES

/*  The largest --max-body: a record's JSON is about its body and a few hundred bytes, and a store
 *  node keeps it in one block, whose largest size class is 48 MiB (pd_table.c, layout 7). */
#define PD_MAX_BODY_MAX ((size_t)16 << 20)

typedef struct {
    char name[64];      //  label shown in logs and presencectl
    char hash[65];      //  pd_key_hash of the secret (hex); the secret itself is never kept
    uint32_t scopes;    //  PD_SCOPE_*
    int64_t expire_ms;  //  0 = never
    bool tagged;        //  tag below is set (pd_project_find_key's cache)
    unsigned char tag[PD_KEY_TAG_BYTES]; //  SipHash-128 of the secret that last matched hash
} pd_apikey_t;

typedef struct {
    char id[37];               //  project id (X-Appwrite-Project)
    pd_apikey_t *keys;         //  API keys
    size_t nkeys;
    pd_jwt_key_t *jwt_keys;    //  verification keys (key bytes owned by the project)
    size_t njwt;
    unsigned char *mint_key;   //  HS256 secret used by POST /v1/users/{id}/jwts (first HS256)
    size_t mint_key_len;
    char **origins;            //  allowed browser origins; none = any origin is echoed
    size_t norigins;
    int64_t default_ttl_ms;    //  expiresAt when omitted (15 min)
    size_t max_metadata;       //  metadata JSON bytes (16384)
    size_t max_records;        //  0 = unlimited
    size_t max_connections;    //  0 = unlimited
    json_t *supabase;          //  the projects file's "supabase" object, or NULL (gw_supabase.c)
    char *indexes;             //  indexed attributes, packed list ("status", "metadata.<path>")
    size_t indexes_len;        //  its bytes (0: none)
    unsigned char tag_key[PD_KEY_TAG_KEYBYTES]; //  random SipHash key of the key cache
} pd_project_t;

typedef struct {
    pd_project_t *v;
    size_t n;
} pd_projects_t;

typedef struct {
    /* which role; "" = embedded supervisor */
    char role[16];
    int node;                 //  store node id / gateway id (1-based)
    int verbosity;

    /* embedded supervisor */
    int stores;               //  store nodes (default 2)
    int gateways;             //  gateways (default 2)
    char run_dir[200];        //  where ipc:// sockets live (default /tmp/presenced-<port>)
    char cluster[64];         //  prefix of shared-memory names (default p<port>)
    bool keep_data;           //  do not unlink store segments on a clean shutdown

    /* gateway */
    char host[64];            //  listen address (default 0.0.0.0)
    int port;                 //  REST + WebSocket port (default 8080)
    size_t max_body;          //  request body cap (default 65536; 1..PD_MAX_BODY_MAX)
    int request_timeout_ms;   //  answer 503 after this (default 5000)
    size_t ws_max_queue;      //  bytes queued to one WebSocket before it is dropped (1 MiB)
    int ws_idle_timeout;      //  seconds without a frame before a WebSocket is closed (90)
    int ws_stall_timeout;     //  seconds a write to a WebSocket may make no progress (10)
    int ws_deflate;           //  accept permessage-deflate offers (1)
    int ws_write_delay;       //  ms WebSocket output waits to go out in one write (0)
    size_t max_connections;   //  per gateway (0: RLIMIT_NOFILE less a reserve)
    size_t max_connections_per_ip; //  per gateway and client address (0: no limit)
    size_t max_header_bytes;  //  a request's headers (16384; 431 beyond)
    int header_timeout_ms;    //  to complete a request's headers, and keep-alive idle (10000)
    int room_diff_ms;         //  a room's joins and leaves gathered into one diff, ms (25)

    /* endpoints (ZeroMQ), bind side given with '@' or as the broker's own flags */
    char broker_front[256];   //  gateways and the reaper connect here (broker ROUTER)
    char broker_back[256];    //  store nodes connect here (broker ROUTER)
    char bus_in[256];         //  publishers (stores) connect here (XSUB)
    char bus_out[256];        //  subscribers (gateways, reaper) connect here (XPUB)
    size_t claim_cache;       //  broker, gateway: claim cache entries (pd_claims.h; 0 = 1000000)
    size_t list_cache;        //  broker: bytes of cached lists (pd_listcache.h; 0 = 64 MiB)
    size_t list_replica;      //  gateway: bytes of roster replicas (gw_replica.h; 0: none)
    size_t list_scan_max;     //  store: records whose metadata one list may read (0: no limit)
    size_t move_rate;         //  broker: records and claims moved per second when resharding (0 = 50000)
    char keys_dir[256];       //  the cluster's CURVE key set (pd_keys.h); the supervisor makes one

    /* store */
    char shm_name[128];       //  shared-memory segment (default /presenced-<cluster>-store-<node>)
    char store_front[256];    //  ROUTER it binds for gateways' direct requests (none: broker only)
    char store_advertise[256]; //  what gateways connect to (default: store_front)
    size_t store_capacity;    //  records per node (default 1048576)
    size_t store_arena;       //  record bytes per node at first (default 1 GiB, sparse)
    size_t store_arena_max;   //  the arena grows online up to this (0: PD_TABLE_ARENA_MAX)
    size_t store_capacity_max; //  the capacity grows online up to this (default 16777216)
    size_t store_outbox;      //  outbox ring bytes (0: the store's default; st_replay.h)

    /* identity */
    char config_file[256];    //  projects file (JSON); see README
    char quick_project[37];   //  --project
    char quick_api_key[128];  //  --api-key (hashed at once, then wiped)
    char quick_jwt_secret[256]; //  --jwt-secret
    pd_projects_t projects;
} pd_config_t;

//  Fills cfg from argv (after the role word, if any) and the environment. Returns 0, or -1
//  with a message on stderr (and usage). Secrets given on the command line are hashed or
//  copied and then overwritten in argv so that `ps` never shows them.
int pd_config_parse(pd_config_t *cfg, int argc, char **argv);
//  Loads cfg->projects from the config file and the quick-start flags. Returns 0 or -1 (logged).
int pd_config_load_projects(pd_config_t *cfg, pd_projects_t *out);
void pd_projects_free(pd_projects_t *p);
//  Finds a project by id, or NULL.
const pd_project_t *pd_projects_find(const pd_projects_t *p, pd_str_t id);
//  Finds an API key by its secret (hash compare in constant time), or NULL. Remembers a match
//  in the key's tag (see pd_config.c), so it writes to p->keys: one thread per project set.
const pd_apikey_t *pd_project_find_key(const pd_project_t *p, pd_str_t secret);
void pd_config_usage(void);
//  Self test; aborts on failure.
void pd_config_test(bool verbose);

#endif
