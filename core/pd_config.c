/*  pd_config — see pd_config.h. */
#include "pd_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "pd_auth.h"
#include "pd_log.h"

#include <jansson.h>

enum { T_STR, T_INT, T_SIZE, T_BOOL, T_SECRET };

/*  The flag table: one row per setting. The environment variable is PRESENCED_ + the flag
 *  name upper-cased with '-' as '_' (--api-key -> PRESENCED_API_KEY). */
static const struct opt {
    const char *name;
    int type;
    size_t off;
    size_t size;
    const char *help;
} s_opts[] = {
#define O(name, type, field, help) {name, type, offsetof(pd_config_t, field), sizeof(((pd_config_t *)0)->field), help}
    O("port", T_INT, port, "REST and WebSocket port (8080)"),
    O("host", T_STR, host, "listen address (0.0.0.0)"),
    O("project", T_STR, quick_project, "project id served (quick start)"),
    O("api-key", T_SECRET, quick_api_key, "API key with every scope for --project"),
    O("jwt-secret", T_SECRET, quick_jwt_secret, "HS256 secret of --project"),
    O("config", T_STR, config_file, "projects file (JSON, see README)"),
    O("stores", T_INT, stores, "embedded: store nodes (2)"),
    O("gateways", T_INT, gateways, "embedded: gateway processes (2)"),
    O("run-dir", T_STR, run_dir, "embedded: directory for ipc sockets (/tmp/presenced-<port>)"),
    O("cluster", T_STR, cluster, "name prefix of shared-memory segments (p<port>)"),
    O("keep-data", T_BOOL, keep_data, "embedded: keep store segments on shutdown"),
    O("node", T_INT, node, "store node / gateway id (1-based; auto: host name ordinal + 1)"),
    O("broker-front", T_STR, broker_front, "broker endpoint for gateways and the reaper"),
    O("broker-back", T_STR, broker_back, "broker endpoint for store nodes"),
    O("bus-in", T_STR, bus_in, "bus endpoint publishers connect to (XSUB)"),
    O("bus-out", T_STR, bus_out, "bus endpoint subscribers connect to (XPUB)"),
    O("claim-cache", T_SIZE, claim_cache, "broker, gateway: claim cache entries (1000000)"),
    O("list-cache", T_SIZE, list_cache, "broker: bytes of cached lists, ?ttl= (67108864)"),
    O("list-replica", T_SIZE, list_replica,
      "gateway: bytes of projects' records kept to answer large rosters, 0: none (268435456)"),
    O("list-scan-max", T_SIZE, list_scan_max,
      "store: records whose metadata one list or count may read on a node, 0: no limit (100000)"),
    O("move-rate", T_SIZE, move_rate, "broker: records and claims moved per second when resharding (50000)"),
    O("keys", T_STR, keys_dir, "directory of the cluster's CURVE keys (presencectl cluster-keys)"),
    O("shm", T_STR, shm_name, "store: shared-memory segment name"),
    O("store-front", T_STR, store_front, "store: endpoint it binds for gateways' direct requests"),
    O("store-advertise", T_STR, store_advertise, "store: endpoint gateways connect to (--store-front)"),
    O("store-capacity", T_SIZE, store_capacity, "store: max records per node (1048576)"),
    O("store-arena", T_SIZE, store_arena, "store: bytes for records per node at first; grows online (1073741824)"),
    O("store-capacity-max", T_SIZE, store_capacity_max, "store: the capacity grows online (doubling, at 7/8 full) up to this many records (16777216)"),
    O("store-arena-max", T_SIZE, store_arena_max, "store: the arena grows up to this many bytes (0: 1 TiB, or what /dev/shm holds)"),
    O("store-outbox", T_SIZE, store_outbox, "store: bytes of recent events kept for restarts and resyncs (67108864)"),
    O("max-body", T_SIZE, max_body, "gateway: request body cap in bytes (65536)"),
    O("request-timeout", T_INT, request_timeout_ms, "gateway: ms before 503 (5000)"),
    O("ws-max-queue", T_SIZE, ws_max_queue, "gateway: bytes queued per WebSocket (1048576)"),
    O("ws-idle-timeout", T_INT, ws_idle_timeout, "gateway: idle WebSocket timeout, s (90)"),
    O("ws-stall-timeout", T_INT, ws_stall_timeout,
      "gateway: s a WebSocket write may make no progress before the client is dropped (10)"),
    O("ws-deflate", T_INT, ws_deflate, "gateway: permessage-deflate on WebSockets, 1 or 0 (1)"),
    O("ws-write-delay", T_INT, ws_write_delay,
      "gateway: ms WebSocket output waits to be written with what follows (0)"),
    O("max-connections", T_SIZE, max_connections,
      "gateway: connections (descriptor limit less a quarter, at most 256)"),
    O("max-connections-per-ip", T_SIZE, max_connections_per_ip,
      "gateway: connections per client address (0: no limit)"),
    O("max-header-bytes", T_SIZE, max_header_bytes, "gateway: request header bytes (16384)"),
    O("header-timeout", T_INT, header_timeout_ms, "gateway: ms to send request headers (10000)"),
    O("room-diff-window", T_INT, room_diff_ms,
      "gateway: ms a room's joins and leaves are gathered into one presence_diff (25)"),
    O("verbose", T_INT, verbosity, "0 warn, 1 info, 2 debug (1)"),
#undef O
};

void
pd_config_usage(void)
{
    fprintf(stderr, "usage: presenced [gateway|broker|store|reaper] [--flag value ...]\n"
                    "With no role, presenced starts the whole cluster on this machine.\n"
                    "presenced probe --role ROLE [--node N|auto] [--run-dir DIR]: is it alive?\n"
                    "Every flag can also be set as PRESENCED_<FLAG> (e.g. PRESENCED_API_KEY).\n\n");
    for (size_t i = 0; i < sizeof s_opts / sizeof *s_opts; i++)
        fprintf(stderr, "  --%-16s %s\n", s_opts[i].name, s_opts[i].help);
}

/*  `--node auto`: a StatefulSet pod's host name ends in its ordinal ("presenced-store-0"), so
 *  the node id is that ordinal + 1 (node ids are 1-based). */
static int
s_node_auto(int *node)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    const char *dash = strrchr(host, '-');
    char *end;
    long v = dash && dash[1] ? strtol(dash + 1, &end, 10) : -1;
    if (v < 0 || v > 1000 || !dash || !dash[1] || *end || !isdigit((unsigned char)dash[1])) {
        fprintf(stderr, "presenced: --node auto needs a host name ending in -<ordinal> (a "
                        "StatefulSet pod), not '%s'\n", host);
        return -1;
    }
    *node = (int)v + 1;
    return 0;
}

static int
s_set(pd_config_t *cfg, const struct opt *o, const char *val)
{
    char *field = (char *)cfg + o->off;
    char *end;
    switch (o->type) {
    case T_STR:
    case T_SECRET:
        if (strlen(val) >= o->size) {
            fprintf(stderr, "presenced: --%s is too long (max %zu)\n", o->name, o->size - 1);
            return -1;
        }
        memcpy(field, val, strlen(val) + 1);
        return 0;
    case T_INT: {
        if (o->off == offsetof(pd_config_t, node) && strcmp(val, "auto") == 0)
            return s_node_auto((int *)field);
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || *end || v < 0 || v > 1000000000) {
            fprintf(stderr, "presenced: --%s needs a number\n", o->name);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case T_SIZE: {
        errno = 0;
        unsigned long long v = strtoull(val, &end, 10);
        if (errno || *end) {
            fprintf(stderr, "presenced: --%s needs a number\n", o->name);
            return -1;
        }
        *(size_t *)field = (size_t)v;
        return 0;
    }
    case T_BOOL:
        *(bool *)field = !(strcmp(val, "0") == 0 || strcmp(val, "false") == 0);
        return 0;
    }
    return -1;
}

int
pd_config_parse(pd_config_t *cfg, int argc, char **argv)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->port = 8080;
    cfg->stores = 2;
    cfg->gateways = 2;
    cfg->verbosity = 1;
    cfg->max_body = 65536;
    cfg->request_timeout_ms = 5000;
    cfg->max_header_bytes = 16384;
    cfg->header_timeout_ms = 10000;
    cfg->room_diff_ms = 25;
    cfg->ws_deflate = 1;
    cfg->list_scan_max = 100000;
    cfg->list_replica = (size_t)256 << 20;
    cfg->store_capacity = 1048576;
    cfg->store_capacity_max = 16777216;
    cfg->store_arena = (size_t)1 << 30;
    snprintf(cfg->host, sizeof cfg->host, "0.0.0.0");

    int i = 1;
    if (argc > 1 && argv[1][0] != '-') {
        if (strlen(argv[1]) >= sizeof cfg->role) {
            fprintf(stderr, "presenced: unknown role %s\n", argv[1]);
            return -1;
        }
        snprintf(cfg->role, sizeof cfg->role, "%s", argv[1]);
        i = 2;
    }
    /* environment first, then flags override */
    for (size_t k = 0; k < sizeof s_opts / sizeof *s_opts; k++) {
        char env[64] = "PRESENCED_";
        size_t n = strlen(env);
        for (const char *p = s_opts[k].name; *p && n < sizeof env - 1; p++)
            env[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        env[n] = 0;
        const char *v = getenv(env);
        if (v && *v && s_set(cfg, &s_opts[k], v) < 0)
            return -1;
    }
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-v") == 0) {
            cfg->verbosity = 2;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return -1;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "presenced: unexpected argument %s\n", a);
            return -1;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const struct opt *o = NULL;
        for (size_t k = 0; k < sizeof s_opts / sizeof *s_opts; k++)
            if (strlen(s_opts[k].name) == nlen && strncmp(s_opts[k].name, a, nlen) == 0)
                o = &s_opts[k];
        if (!o) {
            fprintf(stderr, "presenced: unknown flag --%.*s\n", (int)nlen, a);
            return -1;
        }
        char *val;
        if (eq) {
            val = (char *)eq + 1;
        } else if (o->type == T_BOOL) {
            val = "1";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "presenced: --%s needs a value\n", o->name);
            return -1;
        }
        if (s_set(cfg, o, val) < 0)
            return -1;
        if (o->type == T_SECRET) /* keep secrets out of `ps` */
            sodium_memzero(val, strlen(val));
    }
    if (!cfg->cluster[0])
        snprintf(cfg->cluster, sizeof cfg->cluster, "p%d", cfg->port);
    if (!cfg->run_dir[0]) { /* the user's private runtime directory when there is one */
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        snprintf(cfg->run_dir, sizeof cfg->run_dir, "%s/presenced-%s",
                 xdg && xdg[0] == '/' ? xdg : "/tmp", cfg->cluster);
    }
    if (!cfg->shm_name[0])
        snprintf(cfg->shm_name, sizeof cfg->shm_name, "/presenced-%s-store-%d", cfg->cluster,
                 cfg->node);
    if (cfg->stores < 1 || cfg->stores > 63 || cfg->gateways < 1 || cfg->gateways > 64) {
        fprintf(stderr, "presenced: --stores must be 1..63 and --gateways 1..64\n");
        return -1;
    }
    if (cfg->max_body < 1 || cfg->max_body > PD_MAX_BODY_MAX) {
        fprintf(stderr, "presenced: --max-body must be 1..%zu bytes\n", PD_MAX_BODY_MAX);
        return -1;
    }
    return 0;
}

/*  A secret that is a template's placeholder ("change-me", "CHANGE_ME_TOO", "replace-me",
 *  "<placeholder>"): refused, so a manifest or file copied without its secrets filled in does
 *  not serve with a value the whole world knows. */
static bool
s_placeholder(const char *secret)
{
    char norm[16];
    size_t n = 0;
    for (const char *c = secret; *c && n < sizeof norm - 1; c++)
        if (isalnum((unsigned char)*c))
            norm[n++] = (char)tolower((unsigned char)*c);
    norm[n] = 0;
    return strncmp(norm, "changeme", 8) == 0 || strncmp(norm, "replaceme", 9) == 0 ||
           strncmp(norm, "placeholder", 11) == 0;
}

static void
s_project_init(pd_project_t *p, const char *id)
{
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    p->default_ttl_ms = 15 * 60 * 1000;
    p->max_metadata = 16384;
    if (sodium_init() < 0)
        abort();
    randombytes_buf(p->tag_key, sizeof p->tag_key);
}

/*  The "supabase" object of a project (README "Supabase Realtime: rooms"): publishable keys, and
 *  channel rules {pattern, join, track, broadcast} whose roles are in the grammar of
 *  permissions. A typo (an unknown key, a role that cannot match) is refused when the file
 *  loads: a rule that silently never matched would open or close channels unnoticed. */
static int
s_check_supabase(const json_t *sb, const char *id, char *err, size_t n)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)sb, k, v) {
        if (strcmp(k, "publishable_keys") != 0 && strcmp(k, "channels") != 0) {
            return pd_errf(err, n, -1, "project %s: supabase: unknown key \"%.32s\" (publishable_keys, channels)",
                     id, k);
        }
    }
    const json_t *keys = json_object_get(sb, "publishable_keys");
    size_t i;
    if (keys && !json_is_array(keys)) {
        return pd_errf(err, n, -1, "project %s: supabase.publishable_keys must be an array of strings", id);
    }
    json_array_foreach(keys, i, v) {
        if (!json_is_string(v) || json_string_length(v) < 16 || json_string_length(v) > 255 ||
            strncmp(json_string_value(v), "sb_publishable_", 15) != 0) {
            return pd_errf(err, n, -1,
                     "project %s: supabase.publishable_keys[%zu] must be a string of 16 to 255 "
                     "bytes starting with sb_publishable_",
                     id, i);
        }
    }
    const json_t *rules = json_object_get(sb, "channels");
    if (rules && !json_is_array(rules)) {
        return pd_errf(err, n, -1, "project %s: supabase.channels must be an array of rules", id);
    }
    const json_t *r;
    json_array_foreach(rules, i, r) {
        if (!json_is_object(r)) {
            return pd_errf(err, n, -1, "project %s: supabase.channels[%zu] must be an object", id, i);
        }
        const json_t *pat = json_object_get(r, "pattern");
        if (!json_is_string(pat) || json_string_length(pat) == 0 || json_string_length(pat) > 255) {
            return pd_errf(err, n, -1,
                     "project %s: supabase.channels[%zu] needs a \"pattern\": a string of 1 to "
                     "255 bytes (* matches any run of characters)",
                     id, i);
        }
        json_object_foreach((json_t *)r, k, v) {
            if (strcmp(k, "pattern") == 0)
                continue;
            if (strcmp(k, "join") != 0 && strcmp(k, "track") != 0 && strcmp(k, "broadcast") != 0) {
                return pd_errf(err, n, -1,
                         "project %s: supabase.channels[%zu] (%.64s): unknown key \"%.32s\" (pattern, "
                         "join, track, broadcast)",
                         id, i, json_string_value(pat), k);
            }
            if (!json_is_array(v)) {
                return pd_errf(err, n, -1, "project %s: supabase.channels[%zu] (%.64s): %s must be an array of roles",
                         id, i, json_string_value(pat), k);
            }
            size_t j;
            const json_t *role;
            json_array_foreach(v, j, role) {
                char why[256];
                if (!json_is_string(role) ||
                    pd_role_check(pd_str(json_string_value(role)), why, sizeof why) < 0) {
                    return pd_errf(err, n, -1, "project %s: supabase.channels[%zu] (%.64s): %s[%zu]: %.200s", id, i,
                             json_string_value(pat), k, j,
                             json_is_string(role) ? why : "a role must be a string");
                }
            }
        }
    }
    return 0;
}

#define PD_PROJECT_MAX_INDEXES 8

/*  "indexes": the attributes a project's lists and counts may find by value, and pages ordered
 *  by (st_index.h): "status", a date or "metadata.<key>[.<key>...]" (keys of A-Z a-z 0-9 _ -),
 *  at most 8, no repeats. */
static const char *const s_fixed_indexes[] = {"status", "$createdAt", "$updatedAt", "expiresAt"};

static int
s_load_indexes(const json_t *v, pd_project_t *p, char *err, size_t n)
{
    if (!json_is_array(v) || json_array_size(v) > PD_PROJECT_MAX_INDEXES)
        return pd_errf(err, n, -1, "project %s: indexes must be an array of at most %d attributes",
                       p->id, PD_PROJECT_MAX_INDEXES);
    pd_buf_t b;
    pd_buf_init(&b);
    size_t i;
    const json_t *a;
    json_array_foreach(v, i, a) {
        const char *s = json_string_value(a);
        size_t len = s ? strlen(s) : 0;
        bool ok = s && len <= 128 && json_string_length(a) == len;
        bool fixed = false; /* the attributes every record has (pd_query_indexable) */
        for (size_t k = 0; k < sizeof s_fixed_indexes / sizeof *s_fixed_indexes; k++)
            fixed = fixed || (s && strcmp(s, s_fixed_indexes[k]) == 0);
        if (ok && !fixed) {
            ok = strncmp(s, "metadata.", 9) == 0 && len > 9;
            for (size_t k = 9; ok && k < len; k++) {
                char c = s[k];
                ok = isalnum((unsigned char)c) || c == '_' || c == '-' ||
                     (c == '.' && s[k - 1] != '.' && k + 1 < len);
            }
        }
        if (!ok) {
            pd_buf_free(&b);
            return pd_errf(err, n, -1,
                           "project %s: indexes[%zu] must be \"status\", \"$createdAt\", "
                           "\"$updatedAt\", \"expiresAt\" or \"metadata.<key>\" (keys of "
                           "A-Z a-z 0-9 _ - joined by dots, 128 bytes at most)",
                           p->id, i);
        }
        if (b.len && pd_list_has((pd_str_t){b.data, b.len}, pd_str(s))) {
            pd_buf_free(&b);
            return pd_errf(err, n, -1, "project %s: indexes[%zu]: %s is listed twice", p->id, i, s);
        }
        pd_buf_add(&b, s, len + 1);
    }
    p->indexes = b.data;
    p->indexes_len = b.len;
    return 0;
}

/*  Reads one project object of the config file (format in README "Identity"). Secrets are
 *  read from the environment variable a "*_env" key names (Kubernetes secrets), or inline. */
static int
s_load_project(json_t *o, pd_project_t *p, char *err, size_t n)
{
    const char *id = json_string_value(json_object_get(o, "id"));
    if (!id || !pd_uid_valid(pd_str(id))) {
        snprintf(err, n, "a project needs an \"id\" (1-36 chars of a-z A-Z 0-9 . - _)");
        return -1;
    }
    s_project_init(p, id);
    json_t *v;
    if ((v = json_object_get(o, "default_ttl")) && json_is_integer(v)) {
        if (json_integer_value(v) < 1 || json_integer_value(v) > 30 * 86400) {
            snprintf(err, n, "project %s: default_ttl must be 1..2592000 seconds", id);
            return -1;
        }
        p->default_ttl_ms = json_integer_value(v) * 1000;
    }
    json_t *lim = json_object_get(o, "limits");
    if (lim) {
        if ((v = json_object_get(lim, "metadata_bytes")) && json_is_integer(v))
            p->max_metadata = (size_t)json_integer_value(v);
        if ((v = json_object_get(lim, "records")) && json_is_integer(v))
            p->max_records = (size_t)json_integer_value(v);
        if ((v = json_object_get(lim, "connections")) && json_is_integer(v))
            p->max_connections = (size_t)json_integer_value(v);
    }
    /* Supabase Realtime: publishable keys and channel rules, read by gw_supabase.c */
    if ((v = json_object_get(o, "supabase")) && !json_is_object(v)) {
        snprintf(err, n, "project %s: supabase must be an object", id);
        return -1;
    }
    if (v && s_check_supabase(v, id, err, n) < 0)
        return -1;
    p->supabase = json_incref(v);
    if ((v = json_object_get(o, "indexes")) && s_load_indexes(v, p, err, n) < 0)
        return -1;
    json_t *origins = json_object_get(o, "origins");
    if (json_is_array(origins) && json_array_size(origins)) {
        p->origins = calloc(json_array_size(origins), sizeof *p->origins);
        size_t i;
        json_array_foreach(origins, i, v) {
            if (json_is_string(v))
                p->origins[p->norigins++] = strdup(json_string_value(v));
        }
    }
    json_t *keys = json_object_get(o, "keys");
    if (json_is_array(keys) && json_array_size(keys)) {
        p->keys = calloc(json_array_size(keys), sizeof *p->keys);
        size_t i;
        json_array_foreach(keys, i, v) {
            pd_apikey_t *k = &p->keys[p->nkeys];
            const char *name = json_string_value(json_object_get(v, "name"));
            const char *hash = json_string_value(json_object_get(v, "hash"));
            const char *secret_env = json_string_value(json_object_get(v, "secret_env"));
            snprintf(k->name, sizeof k->name, "%s", name ? name : "key");
            if (secret_env && getenv(secret_env) && s_placeholder(getenv(secret_env))) {
                snprintf(err, n, "project %s: key %s: %s holds a placeholder, not a secret", id,
                         k->name, secret_env);
                return -1;
            }
            if (hash && strlen(hash) == 64) {
                memcpy(k->hash, hash, 65);
            } else if (secret_env && getenv(secret_env) && *getenv(secret_env)) {
                pd_key_hash(getenv(secret_env), strlen(getenv(secret_env)), k->hash);
            } else {
                snprintf(err, n, "project %s: key %s needs \"hash\" (64 hex) or \"secret_env\"",
                         id, k->name);
                return -1;
            }
            json_t *sc = json_object_get(v, "scopes"), *e;
            size_t j;
            if (!json_is_array(sc)) {
                k->scopes = PD_SCOPE_PRESENCES_READ | PD_SCOPE_PRESENCES_WRITE;
            } else {
                json_array_foreach(sc, j, e) {
                    const char *s = json_string_value(e);
                    if (s && strcmp(s, "presences.read") == 0)
                        k->scopes |= PD_SCOPE_PRESENCES_READ;
                    else if (s && strcmp(s, "presences.write") == 0)
                        k->scopes |= PD_SCOPE_PRESENCES_WRITE;
                    else if (s && strcmp(s, "users.write") == 0)
                        k->scopes |= PD_SCOPE_USERS_WRITE;
                    else {
                        snprintf(err, n, "project %s: key %s: unknown scope %s", id, k->name,
                                 s ? s : "(not a string)");
                        return -1;
                    }
                }
            }
            const char *exp = json_string_value(json_object_get(v, "expire"));
            if (exp && pd_time_parse(exp, strlen(exp), &k->expire_ms) < 0) {
                snprintf(err, n, "project %s: key %s: \"expire\" is not a date", id, k->name);
                return -1;
            }
            p->nkeys++;
        }
    }
    json_t *jwts = json_object_get(o, "jwt");
    if (json_is_array(jwts) && json_array_size(jwts)) {
        p->jwt_keys = calloc(json_array_size(jwts), sizeof *p->jwt_keys);
        size_t i;
        json_array_foreach(jwts, i, v) {
            const char *alg = json_string_value(json_object_get(v, "alg"));
            const char *secret = json_string_value(json_object_get(v, "secret"));
            const char *secret_env = json_string_value(json_object_get(v, "secret_env"));
            const char *pub = json_string_value(json_object_get(v, "public_key"));
            if (secret_env)
                secret = getenv(secret_env);
            pd_jwt_key_t *k = &p->jwt_keys[p->njwt];
            if (secret && s_placeholder(secret)) {
                snprintf(err, n, "project %s: jwt key %zu: the secret is a placeholder", id, i);
                return -1;
            }
            if (alg && strcmp(alg, "HS256") == 0 && secret && *secret) {
                size_t len = strlen(secret);
                unsigned char *b = malloc(len);
                memcpy(b, secret, len);
                *k = (pd_jwt_key_t){PD_JWT_HS256, b, len};
                if (!p->mint_key) {
                    p->mint_key = b;
                    p->mint_key_len = len;
                }
            } else if (alg && strcmp(alg, "EdDSA") == 0 && pub) {
                unsigned char *b = malloc(32);
                size_t blen = 0;
                if (sodium_base642bin(b, 32, pub, strlen(pub), NULL, &blen, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0 ||
                    blen != 32) {
                    if (strlen(pub) != 64 || sodium_hex2bin(b, 32, pub, 64, NULL, &blen, NULL) != 0 ||
                        blen != 32) {
                        free(b);
                        snprintf(err, n, "project %s: EdDSA public_key must be 32 bytes in "
                                         "base64 or hex", id);
                        return -1;
                    }
                }
                *k = (pd_jwt_key_t){PD_JWT_EDDSA, b, 32};
            } else {
                snprintf(err, n, "project %s: jwt key %zu needs alg HS256 with secret or "
                                 "secret_env (set and non-empty), or alg EdDSA with public_key",
                         id, i);
                return -1;
            }
            p->njwt++;
        }
    }
    return 0;
}

int
pd_config_load_projects(pd_config_t *cfg, pd_projects_t *out)
{
    memset(out, 0, sizeof *out);
    size_t cap = 1;
    json_t *root = NULL;
    if (cfg->config_file[0]) {
        json_error_t je;
        root = json_load_file(cfg->config_file, JSON_REJECT_DUPLICATES, &je);
        if (!root || !json_is_array(json_object_get(root, "projects"))) {
            pd_log_warn("%s: %s:%d: %s", __func__, cfg->config_file, je.line,
                        root ? "needs a \"projects\" array" : je.text);
            json_decref(root);
            return -1;
        }
        cap += json_array_size(json_object_get(root, "projects"));
    }
    out->v = calloc(cap, sizeof *out->v);
    if (!out->v)
        return -1;
    if (root) {
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(root, "projects"), i, o) {
            char err[256];
            if (s_load_project(o, &out->v[out->n], err, sizeof err) < 0) {
                out->n++;
                pd_log_warn("%s: %s: %s", __func__, cfg->config_file, err);
                json_decref(root);
                pd_projects_free(out);
                return -1;
            }
            out->n++;
        }
        json_decref(root);
    }
    if (s_placeholder(cfg->quick_api_key) || s_placeholder(cfg->quick_jwt_secret)) {
        pd_log_warn("%s: --%s (or PRESENCED_%s) is a placeholder, not a secret: make one "
                    "(presencectl key create, or 32 random bytes for a JWT secret)",
                    __func__, s_placeholder(cfg->quick_api_key) ? "api-key" : "jwt-secret",
                    s_placeholder(cfg->quick_api_key) ? "API_KEY" : "JWT_SECRET");
        pd_projects_free(out);
        return -1;
    }
    if (cfg->quick_project[0] && !pd_projects_find(out, pd_str(cfg->quick_project))) {
        if (!pd_uid_valid(pd_str(cfg->quick_project))) {
            pd_log_warn("%s: --project must be 1-36 chars of a-z, A-Z, 0-9, '.', '-', '_'",
                        __func__);
            pd_projects_free(out);
            return -1;
        }
        pd_project_t *p = &out->v[out->n++];
        s_project_init(p, cfg->quick_project);
        if (cfg->quick_api_key[0]) {
            p->keys = calloc(1, sizeof *p->keys);
            p->nkeys = 1;
            snprintf(p->keys[0].name, sizeof p->keys[0].name, "quick-start");
            pd_key_hash(cfg->quick_api_key, strlen(cfg->quick_api_key), p->keys[0].hash);
            p->keys[0].scopes =
                PD_SCOPE_PRESENCES_READ | PD_SCOPE_PRESENCES_WRITE | PD_SCOPE_USERS_WRITE;
        }
        if (cfg->quick_jwt_secret[0]) {
            size_t n = strlen(cfg->quick_jwt_secret);
            unsigned char *k = malloc(n);
            memcpy(k, cfg->quick_jwt_secret, n);
            p->jwt_keys = calloc(1, sizeof *p->jwt_keys);
            p->jwt_keys[0] = (pd_jwt_key_t){PD_JWT_HS256, k, n};
            p->njwt = 1;
            p->mint_key = k;
            p->mint_key_len = n;
        }
    }
    if (out->n == 0) {
        pd_log_warn("%s: no project configured: give --project (and --api-key, --jwt-secret) "
                    "or --config",
                    __func__);
        pd_projects_free(out);
        return -1;
    }
    return 0;
}

void
pd_projects_free(pd_projects_t *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        pd_project_t *p = &ps->v[i];
        for (size_t k = 0; k < p->njwt; k++) {
            sodium_memzero((void *)p->jwt_keys[k].key, p->jwt_keys[k].key_len);
            free((void *)p->jwt_keys[k].key);
        }
        free(p->jwt_keys);
        if (p->keys)
            sodium_memzero(p->keys, p->nkeys * sizeof *p->keys);
        free(p->keys);
        sodium_memzero(p->tag_key, sizeof p->tag_key);
        for (size_t k = 0; k < p->norigins; k++)
            free(p->origins[k]);
        free(p->origins);
        json_decref(p->supabase);
        free(p->indexes);
    }
    free(ps->v);
    memset(ps, 0, sizeof *ps);
}

const pd_project_t *
pd_projects_find(const pd_projects_t *ps, pd_str_t id)
{
    for (size_t i = 0; i < ps->n; i++)
        if (pd_str_eqc(id, ps->v[i].id))
            return &ps->v[i];
    return NULL;
}

/*  A key's stored hash is keyed BLAKE2b-256, and comparing a presented secret means hashing it
 *  (about 3,500 instructions, a fifth of a GET). So the first time a secret matches a key's hash,
 *  the key remembers a tag of that secret: SipHash-2-4 with 128-bit output (libsodium's
 *  crypto_shorthash_siphashx24) under a random key drawn when the project is loaded, and never
 *  written out. Later requests compute the tag (about 150 instructions) and compare it with every
 *  key's tag in constant time (sodium_memcmp, no early exit); only a miss pays for BLAKE2b.
 *  Safety: a key holds at most one tag, of a secret that matched its hash, so the cache is
 *  bounded by the key count and only ever maps secrets already proven. A wrong secret matches a
 *  tag only through a SipHash collision under a key it cannot learn (odds 2^-128 per try). A
 *  reload builds new projects with a new SipHash key and no tags, and the old ones are wiped. */
const pd_apikey_t *
pd_project_find_key(const pd_project_t *p, pd_str_t secret)
{
    unsigned char tag[PD_KEY_TAG_BYTES];
    crypto_shorthash_siphashx24(tag, (const unsigned char *)secret.ptr, secret.len, p->tag_key);
    const pd_apikey_t *found = NULL;
    for (size_t i = 0; i < p->nkeys; i++)
        if (sodium_memcmp(tag, p->keys[i].tag, sizeof tag) == 0 && p->keys[i].tagged)
            found = &p->keys[i];
    if (!found) {
        char h[65];
        pd_key_hash(secret.ptr, secret.len, h);
        for (size_t i = 0; i < p->nkeys; i++)
            if (pd_key_hash_eq(h, p->keys[i].hash))
                found = &p->keys[i];
        if (found) {
            pd_apikey_t *k = &p->keys[found - p->keys];
            memcpy(k->tag, tag, sizeof tag);
            k->tagged = true;
        }
    }
    sodium_memzero(tag, sizeof tag);
    return found;
}

void
pd_config_test(bool verbose)
{
    (void)verbose;
    pd_config_t *cfg = calloc(1, sizeof *cfg);
    PD_CHECK(cfg);
    snprintf(cfg->quick_project, sizeof cfg->quick_project, "p");
    snprintf(cfg->quick_api_key, sizeof cfg->quick_api_key, "secret-1");
    pd_projects_t ps, ps2;
    PD_CHECK(pd_config_load_projects(cfg, &ps) == 0 && ps.n == 1 && ps.v[0].nkeys == 1);
    const pd_project_t *p = &ps.v[0];

    //  The key cache: a wrong secret is refused before and after the right one is seen; the
    //  right one is found by hash, then by its tag, and a reload starts with no tags.
    PD_CHECK(pd_project_find_key(p, PD_STR("secret-2")) == NULL);
    PD_CHECK(!p->keys[0].tagged);
    PD_CHECK(pd_project_find_key(p, PD_STR("secret-1")) == &p->keys[0]);
    PD_CHECK(p->keys[0].tagged);
    PD_CHECK(pd_project_find_key(p, PD_STR("secret-1")) == &p->keys[0]);
    const char *wrong[] = {"secret-2", "secret-", "secret-11", "Secret-1", "", "secret-1\n"};
    for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++)
        PD_CHECK(pd_project_find_key(p, pd_str(wrong[i])) == NULL);
    PD_CHECK(pd_project_find_key(p, PD_STR("secret-1")) == &p->keys[0]);
    //  An untagged key never matches through its (zero) tag.
    PD_CHECK(pd_config_load_projects(cfg, &ps2) == 0);
    PD_CHECK(!ps2.v[0].keys[0].tagged);
    PD_CHECK(memcmp(ps2.v[0].tag_key, p->tag_key, sizeof p->tag_key) != 0);
    memset(ps2.v[0].keys[0].tag, 0, sizeof ps2.v[0].keys[0].tag);
    PD_CHECK(pd_project_find_key(&ps2.v[0], PD_STR("secret-2")) == NULL);
    PD_CHECK(!ps2.v[0].keys[0].tagged);
    //  A tag from another load (another SipHash key) does not carry over.
    memcpy(ps2.v[0].keys[0].tag, p->keys[0].tag, sizeof p->keys[0].tag);
    ps2.v[0].keys[0].tagged = true;
    PD_CHECK(pd_project_find_key(&ps2.v[0], PD_STR("secret-1")) == &ps2.v[0].keys[0]);
    PD_CHECK(memcmp(ps2.v[0].keys[0].tag, p->keys[0].tag, sizeof p->keys[0].tag) != 0);
    pd_projects_free(&ps);
    pd_projects_free(&ps2);
    PD_CHECK(ps.n == 0 && ps.v == NULL);
    //  A template's placeholder is not a secret.
    const char *placeholders[] = {"change-me", "CHANGE_ME_TOO", "replace-me", "<placeholder>"};
    for (size_t i = 0; i < sizeof placeholders / sizeof *placeholders; i++) {
        snprintf(cfg->quick_jwt_secret, sizeof cfg->quick_jwt_secret, "%s", placeholders[i]);
        PD_CHECK(pd_config_load_projects(cfg, &ps) < 0);
    }
    snprintf(cfg->quick_jwt_secret, sizeof cfg->quick_jwt_secret, "changed-it");
    PD_CHECK(pd_config_load_projects(cfg, &ps) == 0);
    pd_projects_free(&ps);
    //  --max-body is bounded: a record must fit a store's largest block.
    char big[32], *argv[] = {"presenced", "--max-body", big, NULL};
    snprintf(big, sizeof big, "%zu", PD_MAX_BODY_MAX + 1);
    PD_CHECK(pd_config_parse(cfg, 3, argv) < 0);
    snprintf(big, sizeof big, "0");
    PD_CHECK(pd_config_parse(cfg, 3, argv) < 0);
    snprintf(big, sizeof big, "%zu", PD_MAX_BODY_MAX);
    PD_CHECK(pd_config_parse(cfg, 3, argv) == 0 && cfg->max_body == PD_MAX_BODY_MAX);
    free(cfg);
}
