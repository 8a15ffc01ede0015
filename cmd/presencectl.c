/*  presencectl — the operator's and developer's tool for presenced.
 *
 *      presencectl key create --config FILE --project P --name N [--scopes a,b] [--expire DATE]
 *      presencectl key list   --config FILE [--project P]
 *      presencectl key delete --config FILE --project P --name N
 *      presencectl keygen     --out FILE
 *      presencectl cluster-keys --out DIR [--stores N] [--gateways M]
 *                             [--rotate NAME | --retire NAME]
 *      presencectl cluster scale --stores N (--run-dir DIR | --keys DIR --broker ENDPOINT)
 *                             [--wait] [--timeout S]
 *      presencectl jwt        (--project-secret S | --secret-env VAR | --eddsa-secret-key FILE)
 *                             --user U [--teams t1,t2/owner] [--labels vip]
 * [--verified|--unverified]
 *                             [--ttl 3600]
 *      presencectl list       --endpoint URL --project P (--key K | --jwt T) [--query Q]...
 *      presencectl watch      --endpoint URL --project P [--jwt T] [--channel C]... [--query Q]...
 *
 *  `key` edits the projects file the server reads (--config / PRESENCED_CONFIG): a new key's
 *  secret is printed once and only its hash (pd_key_hash) is written; the rest of the file is
 *  kept as it was (jansson keeps key order); the new file replaces the old one atomically
 *  (temp file in the same directory, fsync, rename) under a lock on the directory, so the
 *  server never reads half a file and two presencectl runs do not lose each other's edits.
 *  `cluster-keys` writes the CURVE key set of a cluster's internal traffic (pd_keys.h): one
 *  pair per role instance, secrets mode 0600; existing pairs are kept, so running it again
 *  with a larger --gateways adds keys. --rotate NAME makes a new pair for NAME and keeps the
 *  old public key trusted beside it; --retire NAME drops the old one (README, "Security").
 *  `jwt` signs a development token exactly as an app's backend would and checks it with the
 *  server's own verifier (pd_jwt_verify) before printing it, so a token it prints is one the
 *  server accepts. `list` and `watch` talk to the REST and realtime API like any other client.
 *
 *  Libraries. HTTP is libcurl (libcurl4-openssl-dev). Debian bookworm's libcurl is 7.88, built
 *  without its (then experimental) WebSocket support: `curl --version` lists no ws/wss and
 *  curl_ws_send/curl_ws_recv are not usable, so `watch` uses wslay's client mode (already a
 *  dependency of the server) for the framing, over a connection libcurl opens with
 *  CURLOPT_CONNECT_ONLY: libcurl still does the URL parsing, name resolution, proxying and TLS
 *  (wss:// works), and curl_easy_send/recv carry the bytes. What is written by hand is only the
 *  RFC 6455 opening handshake: one GET with Upgrade headers, and a check of the 101 status and
 *  of Sec-WebSocket-Accept (SHA-1 from OpenSSL, base64 from libsodium). Options are parsed with
 *  getopt_long.
 *
 *  Secrets: a secret given as an argument (--project-secret, --key, --jwt) is copied and then
 *  overwritten in argv so that `ps` does not show it; --secret-env reads it from the
 *  environment instead. Text that comes from the server (statuses, ids) is printed with control
 *  characters replaced, so a record cannot inject terminal escape sequences. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <sodium.h>
#include <wslay/wslay.h>

#include "pd_auth.h"
#include "pd_config.h"
#include "pd_err.h"
#include "pd_keys.h"
#include "pd_msg.h"
#include "pd_util.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HEARTBEAT_MS 20000 //  the web SDK pings every 20 s; the server expects it
#define MAX_QUERIES 100

static const char *s_prog = "presencectl";

static void s_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
s_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", s_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void
s_usage(void)
{
    fprintf(stderr,
            "usage:\n"
            "  presencectl key create --config FILE --project P --name N [--scopes a,b] "
            "[--expire DATE]\n"
            "  presencectl key list   --config FILE [--project P]\n"
            "  presencectl key delete --config FILE --project P --name N\n"
            "  presencectl keygen     --out FILE\n"
            "  presencectl cluster-keys --out DIR [--stores N] [--gateways M] "
            "[--rotate NAME | --retire NAME]\n"
            "  presencectl cluster scale --stores N (--run-dir DIR | --keys DIR --broker EP) "
            "[--wait] [--timeout S]\n"
            "  presencectl jwt        (--project-secret S | --secret-env VAR | "
            "--eddsa-secret-key FILE)\n"
            "                         --user U [--teams t1,t2/owner] [--labels vip] "
            "[--verified|--unverified] [--ttl 3600]\n"
            "  presencectl list       --endpoint URL --project P (--key K | --jwt T) "
            "[--query JSON]...\n"
            "  presencectl watch      --endpoint URL --project P [--jwt T] [--channel C]... "
            "[--query JSON]...\n"
            "  presencectl rooms list          --endpoint URL --project P --key K\n"
            "  presencectl rooms show CHANNEL  --endpoint URL --project P --key K\n"
            "  presencectl rooms watch CHANNEL --endpoint URL --apikey SUPABASE_KEY [--token T]\n"
            "Scopes: presences.read, presences.write, users.write. URL is the API endpoint,\n"
            "e.g. http://127.0.0.1:8080/v1 (as given to the SDKs).\n");
}

//  Copies an argument that is a secret, then blanks it in argv (what `ps` shows).
static char *
s_take_secret(char *arg)
{
    char *copy = strdup(arg);
    if (!copy)
        s_die("out of memory");
    sodium_memzero(arg, strlen(arg));
    return copy;
}

static void
s_free_secret(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}

//  Prints server-supplied text with control characters (terminal escapes) replaced by '?'.
static void
s_print_safe(FILE *f, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        fputc(c < 0x20 || c == 0x7f ? '?' : c, f);
    }
}

//  Display width in columns of UTF-8 text, roughly: one per code point.
static size_t
s_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80;
    return w;
}

static void
s_cell(const char *s, size_t width, bool last)
{
    s_print_safe(stdout, s, strlen(s));
    if (!last)
        for (size_t w = s_width(s); w < width + 2; w++)
            fputc(' ', stdout);
}

/* -------------------------------------------------------------------------- projects file */

typedef struct {
    char path[PATH_MAX]; //  the real file (symlinks resolved)
    int dir_fd;          //  its directory, locked for the read-modify-write
    json_t *root;
} cfg_file_t;

static void
s_cfg_open(cfg_file_t *cf, const char *path)
{
    memset(cf, 0, sizeof *cf);
    if (!realpath(path, cf->path))
        s_die("%s: %s", path, strerror(errno));
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", cf->path);
    cf->dir_fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cf->dir_fd < 0 || flock(cf->dir_fd, LOCK_EX) < 0)
        s_die("%s: cannot lock its directory: %s", path, strerror(errno));
    json_error_t je;
    cf->root = json_load_file(cf->path, JSON_REJECT_DUPLICATES, &je);
    if (!cf->root)
        s_die("%s:%d: %s", path, je.line, je.text);
    if (!json_is_array(json_object_get(cf->root, "projects")))
        s_die("%s: needs a \"projects\" array", path);
}

static void
s_cfg_close(cfg_file_t *cf)
{
    json_decref(cf->root);
    close(cf->dir_fd); /* releases the lock */
}

static json_t *
s_cfg_project(cfg_file_t *cf, const char *id)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(cf->root, "projects"), i, p)
    {
        const char *pid = json_string_value(json_object_get(p, "id"));
        if (pid && strcmp(pid, id) == 0)
            return p;
    }
    return NULL;
}

//  Replaces the file atomically: a temp file beside it with the same mode, fsync, rename,
//  fsync of the directory.
static void
s_cfg_write(cfg_file_t *cf)
{
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", cf->path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        s_die("%s: %s", tmp, strerror(errno));
    struct stat st;
    if (stat(cf->path, &st) == 0)
        (void)fchmod(fd, st.st_mode & 07777);
    FILE *f = fdopen(fd, "w");
    bool ok = f && json_dumpf(cf->root, f, JSON_INDENT(2)) == 0 && fputc('\n', f) != EOF &&
              fflush(f) == 0 && fsync(fd) == 0;
    if (f)
        ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, cf->path) < 0) {
        int e = errno;
        unlink(tmp);
        s_die("cannot write %s: %s", cf->path, strerror(e));
    }
    (void)fsync(cf->dir_fd);
}

static uint32_t
s_scope_bit(const char *s, size_t len)
{
    static const struct {
        const char *name;
        uint32_t bit;
    } scopes[] = {{"presences.read", PD_SCOPE_PRESENCES_READ},
                  {"presences.write", PD_SCOPE_PRESENCES_WRITE},
                  {"users.write", PD_SCOPE_USERS_WRITE}};
    for (size_t i = 0; i < sizeof scopes / sizeof *scopes; i++)
        if (strlen(scopes[i].name) == len && memcmp(scopes[i].name, s, len) == 0)
            return scopes[i].bit;
    return 0;
}

//  Splits "a,b,c" into a JSON array of strings (empty items dropped).
static json_t *
s_split_list(const char *csv)
{
    json_t *arr = json_array();
    const char *p = csv;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ')) {
            p++;
            len--;
        }
        while (len && p[len - 1] == ' ')
            len--;
        if (len)
            json_array_append_new(arr, json_stringn(p, len));
        if (!comma)
            break;
        p = comma + 1;
    }
    return arr;
}

static int
cmd_key(int argc, char **argv)
{
    if (argc < 2) {
        s_usage();
        return 2;
    }
    const char *action = argv[1];
    bool create = strcmp(action, "create") == 0, del = strcmp(action, "delete") == 0,
         list = strcmp(action, "list") == 0;
    if (!create && !del && !list) {
        s_usage();
        return 2;
    }
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"project", required_argument, NULL, 'p'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"scopes", required_argument, NULL, 's'},
                                         {"expire", required_argument, NULL, 'e'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *config = getenv("PRESENCED_CONFIG"), *project = NULL, *name = NULL,
               *scopes = "presences.read,presences.write", *expire = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'p':
            project = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 's':
            scopes = optarg;
            break;
        case 'e':
            expire = optarg;
            break;
        default:
            s_usage();
            return 2;
        }
    }
    if (!config || !*config)
        s_die("key %s needs --config FILE (or PRESENCED_CONFIG)", action);
    if (!list && (!project || !name))
        s_die("key %s needs --project and --name", action);

    cfg_file_t cf;
    s_cfg_open(&cf, config);
    if (list) {
        printf("%-20s %-20s %-44s %-29s %s\n", "PROJECT", "NAME", "SCOPES", "EXPIRE", "SECRET");
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(cf.root, "projects"), i, p)
        {
            const char *pid = json_string_value(json_object_get(p, "id"));
            if (!pid || (project && strcmp(pid, project) != 0))
                continue;
            size_t j;
            json_t *k;
            json_array_foreach(json_object_get(p, "keys"), j, k)
            {
                pd_buf_t sc;
                pd_buf_init(&sc);
                json_t *arr = json_object_get(k, "scopes"), *e;
                size_t m;
                json_array_foreach(arr, m, e)
                {
                    pd_buf_addf(&sc, "%s%s", m ? "," : "",
                                json_string_value(e) ? json_string_value(e) : "?");
                }
                if (!json_is_array(arr))
                    pd_buf_adds(&sc, "presences.read,presences.write");
                pd_buf_add(&sc, "", 1);
                const char *kn = json_string_value(json_object_get(k, "name"));
                const char *ex = json_string_value(json_object_get(k, "expire"));
                const char *hash = json_string_value(json_object_get(k, "hash"));
                const char *env = json_string_value(json_object_get(k, "secret_env"));
                char where[80];
                if (hash)
                    snprintf(where, sizeof where, "hash %.12s...", hash);
                else
                    snprintf(where, sizeof where, "env %s", env ? env : "?");
                printf("%-20s %-20s %-44s %-29s %s\n", pid, kn ? kn : "key", sc.data,
                       ex ? ex : "never", where);
                pd_buf_free(&sc);
            }
        }
        s_cfg_close(&cf);
        return 0;
    }

    json_t *proj = s_cfg_project(&cf, project);
    if (!proj)
        s_die("%s: no project \"%s\"", config, project);
    json_t *keys = json_object_get(proj, "keys");
    if (!keys) {
        keys = json_array();
        json_object_set_new(proj, "keys", keys);
    }
    if (!json_is_array(keys))
        s_die("%s: project %s: \"keys\" is not an array", config, project);
    size_t i, found = SIZE_MAX;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        const char *kn = json_string_value(json_object_get(k, "name"));
        if (kn && strcmp(kn, name) == 0)
            found = i;
    }

    if (del) {
        if (found == SIZE_MAX)
            s_die("project %s has no key named \"%s\"", project, name);
        json_array_remove(keys, found);
        s_cfg_write(&cf);
        s_cfg_close(&cf);
        fprintf(
            stderr,
            "Deleted key \"%s\" of project %s from %s.\n"
            "Reload the server so that it stops accepting it:\n"
            "  kill -HUP \"$(pgrep -o -x presenced)\"   (the supervisor: the oldest presenced)\n",
            name, project, config);
        return 0;
    }

    if (found != SIZE_MAX)
        s_die("project %s already has a key named \"%s\" (delete it first, or pick another "
              "name)",
              project, name);
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= sizeof((pd_apikey_t *)0)->name)
        s_die("--name must be 1..%zu characters", sizeof((pd_apikey_t *)0)->name - 1);
    for (size_t j = 0; j < nlen; j++)
        if ((unsigned char)name[j] < 0x20 || name[j] == 0x7f)
            s_die("--name must not contain control characters");
    json_t *sc = s_split_list(scopes), *e;
    if (json_array_size(sc) == 0)
        s_die("--scopes needs at least one of presences.read, presences.write, users.write");
    json_array_foreach(sc, i, e)
    {
        if (!s_scope_bit(json_string_value(e), json_string_length(e)))
            s_die("unknown scope \"%s\" (known: presences.read, presences.write, users.write)",
                  json_string_value(e));
    }
    json_t *entry = json_object();
    json_object_set_new(entry, "name", json_string(name));
    char secret[52], hash[65];
    pd_key_generate(secret);
    pd_key_hash(secret, strlen(secret), hash);
    json_object_set_new(entry, "hash", json_string(hash));
    json_object_set_new(entry, "scopes", sc);
    if (expire) {
        int64_t ms;
        if (pd_time_parse(expire, strlen(expire), &ms) < 0)
            s_die("--expire: not a date (use e.g. 2027-01-01T00:00:00Z)");
        if (ms <= pd_now_ms())
            s_die("--expire is in the past");
        char buf[32];
        pd_time_format(ms, buf);
        json_object_set_new(entry, "expire", json_string(buf));
    }
    json_array_append_new(keys, entry);
    s_cfg_write(&cf);
    s_cfg_close(&cf);

    //  The secret, once, alone on stdout (KEY=$(presencectl key create ...)); the rest on stderr.
    printf("%s\n", secret);
    fflush(stdout);
    sodium_memzero(secret, sizeof secret);
    fprintf(stderr,
            "Added key \"%s\" to project %s in %s (only its hash is stored).\n"
            "The secret above is shown once: keep it now. Send it as the X-Appwrite-Key header\n"
            "(node-appwrite: client.setKey). Reload the server to use it:\n"
            "  kill -HUP \"$(pgrep -o -x presenced)\"   (the supervisor: the oldest presenced)\n",
            name, project, config);
    return 0;
}

/* -------------------------------------------------------------------------- keygen, jwt */

//  Reads an Ed25519 secret key file: 32 bytes (seed) or 64 bytes (libsodium's seed || public
//  key), as raw bytes, hex, or base64 (standard or URL-safe, padded or not).
static void
s_read_eddsa_key(const char *path, unsigned char sk[64])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        s_die("%s: %s", path, strerror(errno));
    unsigned char raw[512];
    size_t n = fread(raw, 1, sizeof raw, f);
    fclose(f);
    unsigned char bin[64];
    size_t blen = 0;
    bool ok = false;
    if (n == 32 || n == 64) { /* raw bytes, unless it is text that decodes */
        memcpy(bin, raw, n);
        blen = n;
        ok = true;
    }
    size_t tlen = n;
    while (tlen && (raw[tlen - 1] == '\n' || raw[tlen - 1] == '\r' || raw[tlen - 1] == ' '))
        tlen--;
    const char *txt = (const char *)raw;
    unsigned char dec[64];
    size_t dlen;
    if ((tlen == 64 || tlen == 128) &&
        sodium_hex2bin(dec, sizeof dec, txt, tlen, NULL, &dlen, NULL) == 0 && dlen * 2 == tlen) {
        memcpy(bin, dec, dlen);
        blen = dlen;
        ok = true;
    } else {
        static const int variants[] = {
            sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
            sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
        for (size_t v = 0; v < 4; v++) {
            if (sodium_base642bin(dec, sizeof dec, txt, tlen, NULL, &dlen, NULL, variants[v]) ==
                    0 &&
                (dlen == 32 || dlen == 64)) {
                memcpy(bin, dec, dlen);
                blen = dlen;
                ok = true;
                break;
            }
        }
    }
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(dec, sizeof dec);
    if (!ok)
        s_die("%s: not an Ed25519 secret key (32 or 64 bytes: raw, hex or base64)", path);
    unsigned char pk[32];
    if (blen == 32) {
        crypto_sign_seed_keypair(pk, sk, bin);
    } else {
        memcpy(sk, bin, 64);
        crypto_sign_ed25519_sk_to_pk(pk, sk);
        unsigned char pk2[32], sk2[64];
        crypto_sign_seed_keypair(pk2, sk2, sk); /* the first 32 bytes are the seed */
        bool same = sodium_memcmp(pk, pk2, 32) == 0;
        sodium_memzero(sk2, sizeof sk2);
        if (!same)
            s_die("%s: the 64-byte key's public half does not match its seed", path);
    }
    sodium_memzero(bin, sizeof bin);
}

static int
cmd_cluster_keys(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"stores", required_argument, NULL, 's'},
                                         {"gateways", required_argument, NULL, 'g'},
                                         {"rotate", required_argument, NULL, 'r'},
                                         {"retire", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *out = NULL, *rotate = NULL, *retire = NULL;
    int stores = 2, gateways = 2, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 's')
            stores = atoi(optarg);
        else if (c == 'g')
            gateways = atoi(optarg);
        else if (c == 'r')
            rotate = optarg;
        else if (c == 't')
            retire = optarg;
        else {
            s_usage();
            return 2;
        }
    }
    if (!out)
        s_die("cluster-keys needs --out DIR (created with mode 0700 if missing)");
    if (stores < 1 || stores > 64 || gateways < 1 || gateways > 4096)
        s_die("--stores must be 1..64 and --gateways 1..4096");
    char err[512];
    if (rotate || retire) {
        const char *name = rotate ? rotate : retire;
        if ((rotate ? pd_keys_rotate : pd_keys_retire)(out, name, err, sizeof err) < 0)
            s_die("%s", err);
        if (rotate)
            fprintf(stderr, "New key pair for %s in %s; its old public key stays trusted (the "
                            "second line of %s.pub) until --retire %s.\n", name, out, name, name);
        else
            fprintf(stderr, "%s: only its current public key is trusted now (%s/%s.pub).\n",
                    name, out, name);
        return 0;
    }
    int made = pd_keys_generate(out, stores, gateways, err, sizeof err);
    if (made < 0)
        s_die("%s", err);
    fprintf(stderr,
            "%d key pair(s) written to %s (broker, reaper, store-1..%d, gateway-1..%d; "
            "existing pairs kept).\n"
            "Give every role --keys %s (or PRESENCED_KEYS); each loads its own <name>.key "
            "and every *.pub.\n",
            made, out, stores, gateways, out);
    return 0;
}

/*  `cluster scale`: sends SCALE to the broker over its front socket, as the `ctl` key (CURVE;
 *  only that key may send it), and prints the store set the broker reports (JSON). --wait polls
 *  until the records have moved (the set is settled). In the embedded cluster, --run-dir DIR
 *  finds both the key set (DIR/keys) and the broker (ipc://DIR/broker-front.ipc). */
static json_t *
s_scale_ask(void *sock, int64_t stores, int timeout_ms)
{
    static uint64_t rid;
    pd_msgw_t w;
    pd_msgw_init(&w);
    pd_msgw_begin(&w, PD_MSG_SCALE, ++rid);
    pd_msgw_int(&w, PD_F_TOTAL, stores);
    pd_msgw_end(&w);
    if (zmq_send(sock, w.sb.data, w.sb.size, 0) < 0)
        s_die("cannot send to the broker: %s", zmq_strerror(errno));
    pd_msgw_destroy(&w);
    char buf[65536];
    int64_t until = pd_mono_ms() + timeout_ms;
    for (;;) {
        int left = (int)(until - pd_mono_ms());
        if (left <= 0)
            s_die("no answer from the broker in %d ms (is the ctl key in its key set?)",
                  timeout_ms);
        zmq_setsockopt(sock, ZMQ_RCVTIMEO, &left, sizeof left);
        int n = zmq_recv(sock, buf, sizeof buf, 0);
        if (n < 0)
            continue;
        if ((size_t)n > sizeof buf)
            s_die("answer too large");
        msgpack_zone zone;
        msgpack_zone_init(&zone, 1024);
        pd_msg_t m;
        size_t off = 0;
        if (pd_msg_decode(&m, buf, (size_t)n, &off, &zone) != 0 || m.type != PD_MSG_REPLY ||
            m.rid != rid) {
            msgpack_zone_destroy(&zone);
            continue;
        }
        if (m.i[PD_F_ERR] != PD_ERR_OK)
            s_die("the broker refused: %s (%.*s)", pd_err_type((int)m.i[PD_F_ERR]),
                  (int)m.s[PD_F_MESSAGE].len, m.s[PD_F_MESSAGE].ptr ? m.s[PD_F_MESSAGE].ptr : "");
        json_t *j = json_loadb(m.s[PD_F_BODY].ptr, m.s[PD_F_BODY].len, 0, NULL);
        msgpack_zone_destroy(&zone);
        if (!j)
            s_die("the broker's answer is not JSON");
        return j;
    }
}

static int
cmd_cluster(int argc, char **argv)
{
    static const struct option opts[] = {{"stores", required_argument, NULL, 's'},
                                         {"keys", required_argument, NULL, 'k'},
                                         {"broker", required_argument, NULL, 'b'},
                                         {"run-dir", required_argument, NULL, 'r'},
                                         {"wait", no_argument, NULL, 'w'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    if (argc < 2 || strcmp(argv[1], "scale") != 0) {
        s_usage();
        return 2;
    }
    argc--, argv++;
    char keys[PATH_MAX] = "", broker[PATH_MAX + 32] = "";
    long stores = -1, timeout_s = 600;
    bool wait = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's')
            stores = strtol(optarg, NULL, 10);
        else if (c == 'k')
            snprintf(keys, sizeof keys, "%s", optarg);
        else if (c == 'b')
            snprintf(broker, sizeof broker, "%s", optarg);
        else if (c == 'r') {
            if (!keys[0])
                snprintf(keys, sizeof keys, "%s/keys", optarg);
            if (!broker[0])
                snprintf(broker, sizeof broker, "ipc://%s/broker-front.ipc", optarg);
        } else if (c == 'w')
            wait = true;
        else if (c == 't')
            timeout_s = strtol(optarg, NULL, 10);
        else {
            s_usage();
            return 2;
        }
    }
    if (!keys[0] && getenv("PRESENCED_KEYS"))
        snprintf(keys, sizeof keys, "%s", getenv("PRESENCED_KEYS"));
    if (stores < 0 || stores > 63 || !keys[0] || !broker[0])
        s_die("cluster scale needs --stores N (1..63; 0 reports), and --run-dir DIR (embedded) "
              "or --keys DIR and --broker ENDPOINT");
    char err[512];
    pd_keys_t *k = pd_keys_load(keys, "ctl", err, sizeof err);
    if (!k)
        s_die("%s (presencectl cluster-keys --out DIR adds the ctl key)", err);
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    if (!sock || pd_keys_client(k, sock, "broker") < 0 || zmq_connect(sock, broker) < 0)
        s_die("cannot connect to the broker at %s", broker);
    json_t *j = s_scale_ask(sock, stores, 5000);
    int64_t until = pd_mono_ms() + timeout_s * 1000;
    while (wait && !json_is_true(json_object_get(j, "settled"))) {
        if (pd_mono_ms() > until)
            s_die("the store set did not settle in %ld s", timeout_s);
        usleep(200 * 1000);
        json_decref(j);
        j = s_scale_ask(sock, 0, 5000);
    }
    char *text = json_dumps(j, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    json_decref(j);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    pd_keys_destroy(&k);
    return 0;
}

static int
cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'}, {NULL, 0, NULL, 0}};
    const char *out = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else {
            s_usage();
            return 2;
        }
    }
    if (!out)
        s_die("keygen needs --out FILE (where the secret key is written, mode 0600)");
    unsigned char pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, sk, 32, sodium_base64_VARIANT_ORIGINAL);
    int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        s_die("%s: %s", out, strerror(errno));
    size_t len = strlen(b64);
    b64[len] = '\n';
    bool ok = write(fd, b64, len + 1) == (ssize_t)(len + 1) && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    sodium_memzero(b64, sizeof b64);
    sodium_memzero(sk, sizeof sk);
    if (!ok)
        s_die("cannot write %s", out);
    sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_ORIGINAL);
    printf("%s\n", b64);
    fprintf(stderr,
            "Wrote the Ed25519 secret key (seed, base64) to %s; keep it on your backend.\n"
            "The public key above goes into the projects file:\n"
            "  \"jwt\": [ {\"alg\": \"EdDSA\", \"public_key\": \"%s\"} ]\n"
            "Sign tokens with it: presencectl jwt --eddsa-secret-key %s --user U\n",
            out, b64, out);
    return 0;
}

static int
cmd_jwt(int argc, char **argv)
{
    static const struct option opts[] = {{"project-secret", required_argument, NULL, 's'},
                                         {"secret-env", required_argument, NULL, 'E'},
                                         {"eddsa-secret-key", required_argument, NULL, 'k'},
                                         {"user", required_argument, NULL, 'u'},
                                         {"teams", required_argument, NULL, 't'},
                                         {"labels", required_argument, NULL, 'l'},
                                         {"verified", no_argument, NULL, 'v'},
                                         {"unverified", no_argument, NULL, 'V'},
                                         {"ttl", required_argument, NULL, 'T'},
                                         {NULL, 0, NULL, 0}};
    char *secret = NULL;
    const char *secret_env = NULL, *keyfile = NULL, *user = NULL, *teams = NULL, *labels = NULL;
    int verified = -1, sources = 0;
    long long ttl = 3600;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            s_free_secret(secret);
            secret = s_take_secret(optarg);
            sources++;
            break;
        case 'E':
            secret_env = optarg;
            sources++;
            break;
        case 'k':
            keyfile = optarg;
            sources++;
            break;
        case 'u':
            user = optarg;
            break;
        case 't':
            teams = optarg;
            break;
        case 'l':
            labels = optarg;
            break;
        case 'v':
            verified = 1;
            break;
        case 'V':
            verified = 0;
            break;
        case 'T': {
            char *end;
            errno = 0;
            ttl = strtoll(optarg, &end, 10);
            if (errno || *end || ttl < 1 || ttl > 10LL * 365 * 86400)
                s_die("--ttl needs a number of seconds (1..315360000)");
            break;
        }
        default:
            s_usage();
            return 2;
        }
    }
    if (sources != 1)
        s_die("jwt needs exactly one of --project-secret, --secret-env, --eddsa-secret-key");
    if (!user || !pd_uid_valid(pd_str(user)))
        s_die("jwt needs --user: 1..36 chars of a-z A-Z 0-9 . - _, not starting with . - _");
    if (secret_env) {
        const char *v = getenv(secret_env);
        if (!v || !*v)
            s_die("environment variable %s is not set", secret_env);
        secret = strdup(v);
    }

    json_t *claims = json_object();
    json_object_set_new(claims, "userId", json_string(user));
    json_object_set_new(claims, "exp", json_integer(pd_now_ms() / 1000 + ttl));
    if (teams)
        json_object_set_new(claims, "teams", s_split_list(teams));
    if (labels)
        json_object_set_new(claims, "labels", s_split_list(labels));
    if (verified >= 0)
        json_object_set_new(claims, "verified", json_boolean(verified));
    char *payload = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);

    pd_buf_t tok;
    pd_buf_init(&tok);
    pd_jwt_key_t key;
    unsigned char sk[64], pk[32];
    if (keyfile) {
        s_read_eddsa_key(keyfile, sk);
        crypto_sign_ed25519_sk_to_pk(pk, sk);
        pd_jwt_sign_eddsa(sk, payload, strlen(payload), &tok);
        sodium_memzero(sk, sizeof sk);
        key = (pd_jwt_key_t){PD_JWT_EDDSA, pk, sizeof pk};
    } else {
        pd_jwt_sign_hs256((const unsigned char *)secret, strlen(secret), payload, strlen(payload),
                          &tok);
        key = (pd_jwt_key_t){PD_JWT_HS256, (const unsigned char *)secret, strlen(secret)};
    }
    free(payload);
    //  The server's own verifier: a token printed here is one the server accepts.
    pd_jwt_claims_t cl;
    pd_jwt_claims_init(&cl);
    char err[256];
    int rc = pd_jwt_verify(&key, 1, tok.data, tok.len, pd_now_ms() / 1000, &cl, err, sizeof err);
    pd_jwt_claims_free(&cl);
    s_free_secret(secret);
    if (rc < 0) {
        pd_buf_free(&tok);
        s_die("the server would refuse this token: %s (team entries are TEAM or TEAM/ROLE of "
              "a-z A-Z 0-9 . - _; labels are 1..36 alphanumeric chars)",
              err);
    }
    printf("%.*s\n", (int)tok.len, tok.data);
    sodium_memzero(tok.data, tok.len);
    pd_buf_free(&tok);
    return 0;
}

/* -------------------------------------------------------------------------- HTTP client */

typedef struct {
    const char *endpoint; //  ends with /v1 (added when missing)
    const char *project;
    char *key; //  X-Appwrite-Key (secret)
    char *jwt; //  X-Appwrite-JWT (secret)
    const char *queries[MAX_QUERIES];
    size_t nqueries;
    const char *channels[MAX_QUERIES];
    size_t nchannels;
} client_opts_t;

static int
s_client_opts(int argc, char **argv, client_opts_t *o, bool watch)
{
    static const struct option opts[] = {{"endpoint", required_argument, NULL, 'e'},
                                         {"project", required_argument, NULL, 'p'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"jwt", required_argument, NULL, 'j'},
                                         {"query", required_argument, NULL, 'q'},
                                         {"channel", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof *o);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'e':
            o->endpoint = optarg;
            break;
        case 'p':
            o->project = optarg;
            break;
        case 'k':
            s_free_secret(o->key);
            o->key = s_take_secret(optarg);
            break;
        case 'j':
            s_free_secret(o->jwt);
            o->jwt = s_take_secret(optarg);
            break;
        case 'q':
            if (o->nqueries == MAX_QUERIES)
                s_die("at most %d --query", MAX_QUERIES);
            o->queries[o->nqueries++] = optarg;
            break;
        case 'c':
            if (!watch || o->nchannels == MAX_QUERIES)
                s_die("--channel is for watch (at most %d)", MAX_QUERIES);
            o->channels[o->nchannels++] = optarg;
            break;
        default:
            s_usage();
            return -1;
        }
    }
    if (!o->endpoint || !o->project) {
        s_usage();
        return -1;
    }
    if (watch && o->key)
        s_die("watch connects as a user (--jwt) or as a guest; API keys are for REST");
    if (!watch && !o->key && !o->jwt)
        s_die("list needs --key or --jwt");
    if (o->key && o->jwt)
        s_die("give --key or --jwt, not both");
    return 0;
}

//  "<endpoint>/<tail>", with /v1 inserted when the endpoint lacks it.
static void
s_api_url(pd_buf_t *b, const char *endpoint, const char *tail)
{
    size_t n = strlen(endpoint);
    while (n && endpoint[n - 1] == '/')
        n--;
    pd_buf_add(b, endpoint, n);
    if (n < 3 || memcmp(endpoint + n - 3, "/v1", 3) != 0)
        pd_buf_adds(b, "/v1");
    pd_buf_adds(b, tail);
}

static size_t
s_curl_sink(char *ptr, size_t size, size_t nmemb, void *ud)
{
    pd_buf_add(ud, ptr, size * nmemb);
    return size * nmemb;
}

/*  GET <endpoint>/<tail> with the project and the caller's credential (--key or --jwt); returns
 *  the parsed answer of a 200, or prints the server's error (its message, in Appwrite's error
 *  shape) and returns NULL. Secrets are wiped from the headers once sent. */
static json_t *
s_get_json(client_opts_t *o, CURL *h, pd_buf_t *url)
{
    pd_buf_t body, hv;
    pd_buf_init(&body);
    pd_buf_init(&hv);
    struct curl_slist *hdrs = NULL;
    pd_buf_addf(&hv, "X-Appwrite-Project: %s", o->project);
    pd_buf_add(&hv, "", 1);
    hdrs = curl_slist_append(hdrs, hv.data);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    pd_buf_reset(&hv);
    if (o->key)
        pd_buf_addf(&hv, "X-Appwrite-Key: %s", o->key);
    else
        pd_buf_addf(&hv, "X-Appwrite-JWT: %s", o->jwt);
    pd_buf_add(&hv, "", 1);
    hdrs = curl_slist_append(hdrs, hv.data);
    sodium_memzero(hv.data, hv.len);
    pd_buf_free(&hv);
    curl_easy_setopt(h, CURLOPT_URL, url->data);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "presencectl");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, s_curl_sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    for (struct curl_slist *sl = hdrs; sl; sl = sl->next)
        sodium_memzero(sl->data, strlen(sl->data));
    curl_slist_free_all(hdrs);
    s_free_secret(o->key);
    s_free_secret(o->jwt);
    o->key = o->jwt = NULL;
    if (rc != CURLE_OK)
        s_die("GET %s: %s", url->data, cerr[0] ? cerr : curl_easy_strerror(rc));
    json_t *root = json_loadb(body.data ? body.data : "", body.len, 0, NULL);
    if (status != 200) {
        const char *msg = json_string_value(json_object_get(root, "message"));
        const char *type = json_string_value(json_object_get(root, "type"));
        fprintf(stderr, "%s: HTTP %ld %s: ", s_prog, status, type ? type : "");
        if (msg)
            s_print_safe(stderr, msg, strlen(msg));
        else
            s_print_safe(stderr, body.data ? body.data : "", body.len > 300 ? 300 : body.len);
        fputc('\n', stderr);
        json_decref(root);
        root = NULL;
    } else if (!root) {
        s_die("unexpected answer: %.200s", body.data ? body.data : "");
    }
    pd_buf_free(&body);
    return root;
}

static int
cmd_list(int argc, char **argv)
{
    client_opts_t o;
    if (s_client_opts(argc, argv, &o, false) < 0)
        return 2;
    CURL *h = curl_easy_init();
    if (!h)
        s_die("curl_easy_init failed");
    pd_buf_t url;
    pd_buf_init(&url);
    s_api_url(&url, o.endpoint, "/presences");
    for (size_t i = 0; i < o.nqueries; i++) {
        char *q = curl_easy_escape(h, o.queries[i], 0);
        pd_buf_addf(&url, "%squeries%%5B%%5D=%s", i ? "&" : "?", q);
        curl_free(q);
    }
    pd_buf_add(&url, "", 1);
    json_t *root = s_get_json(&o, h, &url);
    curl_easy_cleanup(h);
    pd_buf_free(&url);
    if (!root)
        return 1;
    json_t *arr = json_object_get(root, "presences");
    if (!json_is_array(arr))
        s_die("unexpected answer: no presences");

    //  Column widths from the data, then the rows.
    static const char *heads[] = {"ID", "USER", "STATUS", "EXPIRES AT"};
    static const char *fields[] = {"$id", "userId", "status", "expiresAt"};
    size_t w[4];
    for (int k = 0; k < 4; k++)
        w[k] = strlen(heads[k]);
    size_t i;
    json_t *p;
    json_array_foreach(arr, i, p)
    {
        for (int k = 0; k < 4; k++) {
            const char *v = json_string_value(json_object_get(p, fields[k]));
            if (v && s_width(v) > w[k])
                w[k] = s_width(v) > 60 ? 60 : s_width(v);
        }
    }
    for (int k = 0; k < 4; k++)
        s_cell(heads[k], w[k], k == 3);
    fputc('\n', stdout);
    json_array_foreach(arr, i, p)
    {
        for (int k = 0; k < 4; k++) {
            const char *v = json_string_value(json_object_get(p, fields[k]));
            s_cell(v ? v : "", w[k], k == 3);
        }
        fputc('\n', stdout);
    }
    json_t *total = json_object_get(root, "total");
    printf("%zu shown, total %" JSON_INTEGER_FORMAT "\n", json_array_size(arr),
           json_is_integer(total) ? json_integer_value(total) : (json_int_t)json_array_size(arr));
    json_decref(root);
    return 0;
}

/* -------------------------------------------------------------------------- watch (realtime) */

typedef struct {
    CURL *h;
    curl_socket_t fd;
    pd_buf_t pre; //  bytes read past the handshake, fed to wslay first
    size_t pre_off;
    bool eof;    //  the peer closed the TCP connection
    bool closed; //  a close frame arrived
    int close_code;
    bool fatal; //  an error that ends the watch
    client_opts_t *o;
    const char *room; //  rooms watch: the channel (Supabase Realtime's protocol), else NULL
    const char *token; //  rooms watch: a user token for phx_join's access_token, or NULL
    unsigned ref;      //  rooms watch: the last Phoenix ref sent
} ws_t;

static volatile sig_atomic_t s_interrupted;

static void
s_on_sigint(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

static int
s_wait_fd(curl_socket_t fd, short ev, int ms)
{
    struct pollfd pfd = {fd, ev, 0};
    return poll(&pfd, 1, ms);
}

static void
s_send_all(ws_t *ws, const char *p, size_t len)
{
    while (len) {
        size_t n = 0;
        CURLcode rc = curl_easy_send(ws->h, p, len, &n);
        if (rc == CURLE_AGAIN) {
            s_wait_fd(ws->fd, POLLOUT, 1000);
            continue;
        }
        if (rc != CURLE_OK)
            s_die("send: %s", curl_easy_strerror(rc));
        p += n;
        len -= n;
    }
}

static ssize_t
s_ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    ws_t *ws = ud;
    if (ws->pre_off < ws->pre.len) {
        size_t n = ws->pre.len - ws->pre_off;
        if (n > len)
            n = len;
        memcpy(buf, ws->pre.data + ws->pre_off, n);
        ws->pre_off += n;
        return (ssize_t)n;
    }
    size_t n = 0;
    CURLcode rc = curl_easy_recv(ws->h, buf, len, &n);
    if (rc == CURLE_AGAIN) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (rc != CURLE_OK || n == 0) {
        ws->eof = true;
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)n;
}

static ssize_t
s_ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    ws_t *ws = ud;
    size_t n = 0;
    CURLcode rc = curl_easy_send(ws->h, data, len, &n);
    if (rc == CURLE_AGAIN) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (rc != CURLE_OK) {
        ws->eof = true;
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)n;
}

static int
s_ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ctx;
    (void)ud;
    randombytes_buf(buf, len);
    return 0;
}

static void
s_ws_queue(wslay_event_context_ptr ctx, const char *text)
{
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, strlen(text)};
    wslay_event_queue_msg(ctx, &m);
}

static void
s_subscribe(wslay_event_context_ptr ctx, client_opts_t *o)
{
    json_t *chans = json_array(), *qs = json_array();
    if (o->nchannels == 0)
        json_array_append_new(chans, json_string("presences"));
    for (size_t i = 0; i < o->nchannels; i++)
        json_array_append_new(chans, json_string(o->channels[i]));
    for (size_t i = 0; i < o->nqueries; i++)
        json_array_append_new(qs, json_string(o->queries[i]));
    char sid[40];
    unsigned char r[8];
    randombytes_buf(r, sizeof r);
    memcpy(sid, "ctl", 3);
    sodium_bin2hex(sid + 3, sizeof sid - 3, r, sizeof r);
    json_t *msg = json_pack("{s:s, s:[{s:s, s:o, s:o}]}", "type", "subscribe", "data",
                            "subscriptionId", sid, "channels", chans, "queries", qs);
    char *text = json_dumps(msg, JSON_COMPACT);
    s_ws_queue(ctx, text);
    free(text);
    json_decref(msg);
}

static const char *
s_jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static void
s_on_text(wslay_event_context_ptr ctx, ws_t *ws, const char *text, size_t len)
{
    json_t *m = json_loadb(text, len, 0, NULL);
    const char *type = s_jstr(m, "type");
    json_t *data = json_object_get(m, "data");
    if (strcmp(type, "connected") == 0) {
        json_t *user = json_object_get(data, "user");
        const char *uid = s_jstr(user, "$id");
        fprintf(stderr, "connected to project %s as %s; watching ", ws->o->project,
                json_is_object(user) && *uid ? uid : "a guest");
        for (size_t i = 0; i < (ws->o->nchannels ? ws->o->nchannels : 1); i++)
            fprintf(stderr, "%s%s", i ? ", " : "",
                    ws->o->nchannels ? ws->o->channels[i] : "presences");
        fprintf(stderr, " (Ctrl-C to stop)\n");
        s_subscribe(ctx, ws->o);
    } else if (strcmp(type, "event") == 0) {
        //  events[0] is "presences.<id>.<action>"
        const char *ev = json_string_value(json_array_get(json_object_get(data, "events"), 0));
        const char *action = ev ? strrchr(ev, '.') : NULL;
        json_t *p = json_object_get(data, "payload");
        const char *cols[] = {s_jstr(data, "timestamp"), action ? action + 1 : "?",
                              s_jstr(p, "$id"), s_jstr(p, "userId"), s_jstr(p, "status")};
        static const size_t widths[] = {29, 6, 20, 20, 0};
        for (int k = 0; k < 5; k++)
            s_cell(cols[k], widths[k], k == 4);
        fputc('\n', stdout);
        fflush(stdout);
    } else if (strcmp(type, "error") == 0) {
        json_int_t code = json_integer_value(json_object_get(data, "code"));
        const char *msg = s_jstr(data, "message");
        fprintf(stderr, "%s: server error %" JSON_INTEGER_FORMAT ": ", s_prog, code);
        s_print_safe(stderr, msg, strlen(msg));
        fputc('\n', stderr);
        //  1008 closes the connection (the server sends the close); 1003 means the subscription
        //  was refused, so there is nothing to watch; 401 after `connected` means the token
        //  expired and the connection goes on as a guest, which watch reports and survives.
        if (code == 1003)
            ws->fatal = true;
    } else if (strcmp(type, "response") == 0) {
        const char *to = s_jstr(data, "to");
        json_t *ok = json_object_get(data, "success");
        if (strcmp(to, "subscribe") == 0 && json_is_false(ok)) {
            fprintf(stderr, "%s: subscribe refused\n", s_prog);
            ws->fatal = true;
        }
    }
    json_decref(m);
}

/*  rooms watch: Supabase Realtime's protocol (Phoenix, vsn 2.0.0: [join_ref, ref, topic, event,
 *  payload]). The watcher joins with presence on and never tracks, so it is not a member. */
static void
s_phx_join(wslay_event_context_ptr ctx, ws_t *ws)
{
    char key[32];
    unsigned char r[6];
    randombytes_buf(r, sizeof r);
    memcpy(key, "presencectl-", 12);
    sodium_bin2hex(key + 12, sizeof key - 12, r, sizeof r);
    char topic[300];
    snprintf(topic, sizeof topic, "realtime:%s", ws->room);
    json_t *payload = json_pack("{s:{s:{s:s, s:b}, s:{s:b}}}", "config", "presence", "key", key,
                                "enabled", 1, "broadcast", "self", 0);
    if (ws->token)
        json_object_set_new(payload, "access_token", json_string(ws->token));
    json_t *msg = json_pack("[s, s, s, s, o]", "1", "1", topic, "phx_join", payload);
    char *text = json_dumps(msg, JSON_COMPACT);
    s_ws_queue(ctx, text);
    sodium_memzero(text, strlen(text));
    free(text);
    json_decref(msg);
    ws->ref = 1;
}

static void
s_phx_heartbeat(wslay_event_context_ptr ctx, ws_t *ws)
{
    char text[64];
    snprintf(text, sizeof text, "[null,\"%u\",\"phoenix\",\"heartbeat\",{}]", ++ws->ref);
    s_ws_queue(ctx, text);
}

//  One line per member change: time, join|leave, key, phx_ref, meta (compact JSON).
static void
s_phx_print(const char *what, const json_t *members)
{
    const char *key;
    json_t *v;
    char ts[32];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
    json_object_foreach((json_t *)members, key, v) {
        size_t i;
        json_t *meta;
        json_array_foreach(json_object_get(v, "metas"), i, meta) {
            json_t *rest = json_deep_copy(meta);
            json_object_del(rest, "phx_ref");
            json_object_del(rest, "phx_ref_prev");
            char *m = json_dumps(rest, JSON_COMPACT);
            const char *cols[] = {ts, what, key, s_jstr(meta, "phx_ref"), m ? m : "{}"};
            static const size_t widths[] = {24, 5, 24, 12, 0};
            for (int k = 0; k < 5; k++)
                s_cell(cols[k], widths[k], k == 4);
            fputc('\n', stdout);
            free(m);
            json_decref(rest);
        }
    }
    fflush(stdout);
}

static void
s_on_phx_text(ws_t *ws, const char *text, size_t len)
{
    json_t *m = json_loadb(text, len, 0, NULL);
    const char *ref = json_string_value(json_array_get(m, 1));
    const char *event = json_string_value(json_array_get(m, 3));
    json_t *payload = json_array_get(m, 4);
    if (!event) {
        json_decref(m);
        return;
    }
    if (strcmp(event, "phx_reply") == 0 && ref && strcmp(ref, "1") == 0) {
        if (strcmp(s_jstr(payload, "status"), "ok") == 0) {
            fprintf(stderr, "joined room %s; watching its joins and leaves (Ctrl-C to stop)\n",
                    ws->room);
        } else {
            const char *why = s_jstr(json_object_get(payload, "response"), "reason");
            fprintf(stderr, "%s: join refused: ", s_prog);
            s_print_safe(stderr, why, strlen(why));
            fputc('\n', stderr);
            ws->fatal = true;
        }
    } else if (strcmp(event, "presence_state") == 0) {
        s_phx_print("state", payload);
    } else if (strcmp(event, "presence_diff") == 0) {
        s_phx_print("leave", json_object_get(payload, "leaves"));
        s_phx_print("join", json_object_get(payload, "joins"));
    } else if (strcmp(event, "phx_error") == 0 || strcmp(event, "phx_close") == 0 ||
               strcmp(event, "system") == 0) {
        const char *msg = s_jstr(payload, "message");
        if (!*msg)
            msg = s_jstr(payload, "reason");
        fprintf(stderr, "%s: %s: ", s_prog, event);
        s_print_safe(stderr, msg, strlen(msg));
        fputc('\n', stderr);
        if (strcmp(event, "system") != 0 || strcmp(s_jstr(payload, "status"), "error") == 0)
            ws->fatal = true;
    }
    json_decref(m);
}

static void
s_ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    ws_t *ws = ud;
    if (arg->opcode == WSLAY_TEXT_FRAME && ws->room) {
        s_on_phx_text(ws, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_TEXT_FRAME) {
        s_on_text(ctx, ws, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        ws->closed = true;
        ws->close_code = arg->status_code;
    }
}

//  The RFC 6455 opening handshake over the connected socket. Leaves any bytes that follow the
//  101 response in ws->pre.
static void
s_handshake(ws_t *ws, const char *host_hdr, const char *target)
{
    unsigned char nonce[16];
    randombytes_buf(nonce, sizeof nonce);
    char key[sodium_base64_ENCODED_LEN(16, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(key, sizeof key, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
    pd_buf_t req;
    pd_buf_init(&req);
    pd_buf_addf(&req,
                "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                "User-Agent: presencectl\r\n\r\n",
                target, host_hdr, key);
    s_send_all(ws, req.data, req.len);
    sodium_memzero(req.data, req.len); /* the target may carry the jwt */
    pd_buf_free(&req);

    //  Read up to the end of the headers.
    pd_buf_t *in = &ws->pre;
    char *end = NULL;
    int64_t deadline = pd_mono_ms() + 10000;
    while (!end) {
        if (in->len > 16384)
            s_die("handshake: response headers too long");
        if (pd_mono_ms() > deadline)
            s_die("handshake: no answer from the server");
        char buf[4096];
        size_t n = 0;
        CURLcode rc = curl_easy_recv(ws->h, buf, sizeof buf, &n);
        if (rc == CURLE_AGAIN) {
            s_wait_fd(ws->fd, POLLIN, 1000);
            continue;
        }
        if (rc != CURLE_OK || n == 0)
            s_die("handshake: the server closed the connection");
        pd_buf_add(in, buf, n);
        pd_buf_reserve(in, 1);
        in->data[in->len] = 0;
        end = strstr(in->data, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - in->data) + 4;
    int status = 0;
    if (sscanf(in->data, "HTTP/1.%*d %d", &status) != 1)
        s_die("handshake: not an HTTP answer");
    if (status != 101) {
        //  An Appwrite error body may follow; show its message.
        const char *body = in->data + head_len;
        json_t *j = json_loadb(body, in->len - head_len, 0, NULL);
        const char *msg = s_jstr(j, "message");
        fprintf(stderr, "%s: %s answered HTTP %d", s_prog, ws->o->endpoint, status);
        if (*msg) {
            fputs(": ", stderr);
            s_print_safe(stderr, msg, strlen(msg));
        }
        fputc('\n', stderr);
        json_decref(j);
        exit(1);
    }
    //  Sec-WebSocket-Accept = base64(SHA-1(key + GUID))
    unsigned char sha[SHA_DIGEST_LENGTH];
    pd_buf_t k2;
    pd_buf_init(&k2);
    pd_buf_addf(&k2, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)k2.data, k2.len, sha);
    pd_buf_free(&k2);
    char want[sodium_base64_ENCODED_LEN(SHA_DIGEST_LENGTH, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(want, sizeof want, sha, sizeof sha, sodium_base64_VARIANT_ORIGINAL);
    bool accepted = false;
    for (char *line = strstr(in->data, "\r\n"); line && line < end;
         line = strstr(line + 2, "\r\n")) {
        const char *name = line + 2;
        if (strncasecmp(name, "sec-websocket-accept:", 21) == 0) {
            const char *v = name + 21;
            while (*v == ' ' || *v == '\t')
                v++;
            accepted = strncmp(v, want, strlen(want)) == 0;
        }
    }
    if (!accepted)
        s_die("handshake: the server's Sec-WebSocket-Accept is missing or wrong");
    ws->pre_off = head_len;
}

/*  A WebSocket session until Ctrl-C or the server ends it: Appwrite's realtime (watch), or
 *  with room set Supabase Realtime's protocol on one channel (rooms watch, apikey its key). */
static int
s_watch(client_opts_t *o, const char *room, char *apikey, const char *token)
{
    pd_buf_t url;
    pd_buf_init(&url);
    s_api_url(&url, o->endpoint, "");
    pd_buf_add(&url, "", 1);

    //  Parse the endpoint with libcurl's URL API; ws(s):// is accepted as http(s)://.
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    if (curl_url_set(u, CURLUPART_URL, url.data, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        s_die("--endpoint %s is not a URL", o->endpoint);
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    if (strcmp(scheme, "ws") == 0)
        curl_url_set(u, CURLUPART_SCHEME, "http", 0);
    else if (strcmp(scheme, "wss") == 0)
        curl_url_set(u, CURLUPART_SCHEME, "https", 0);
    else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        s_die("--endpoint must be http(s):// or ws(s)://");
    char *conn_url = NULL;
    curl_url_get(u, CURLUPART_URL, &conn_url, 0);

    CURL *h = curl_easy_init();
    pd_buf_t target, hosthdr;
    pd_buf_init(&target);
    pd_buf_init(&hosthdr);
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        plen--;
    char *pe = curl_easy_escape(h, o->project ? o->project : "", 0);
    if (room) { /* /realtime/v1/websocket at the root: the endpoint's path without its /v1 */
        if (plen >= 3 && memcmp(path + plen - 3, "/v1", 3) == 0)
            plen -= 3;
        char *ke = curl_easy_escape(h, apikey, 0);
        pd_buf_addf(&target, "%.*s/realtime/v1/websocket?vsn=2.0.0&apikey=%s", (int)plen, path, ke);
        sodium_memzero(ke, strlen(ke));
        curl_free(ke);
    } else {
        pd_buf_addf(&target, "%.*s/realtime?project=%s", (int)plen, path, pe);
    }
    curl_free(pe);
    if (o->jwt && !room) {
        char *je = curl_easy_escape(h, o->jwt, 0);
        pd_buf_addf(&target, "&jwt=%s", je);
        sodium_memzero(je, strlen(je));
        curl_free(je);
    }
    pd_buf_add(&target, "", 1);
    pd_buf_addf(&hosthdr, "%s%s%s", host, port ? ":" : "", port ? port : "");
    pd_buf_add(&hosthdr, "", 1);

    curl_easy_setopt(h, CURLOPT_URL, conn_url);
    curl_easy_setopt(h, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK)
        s_die("connect %s: %s", o->endpoint, cerr[0] ? cerr : curl_easy_strerror(rc));
    ws_t ws;
    memset(&ws, 0, sizeof ws);
    ws.h = h;
    ws.o = o;
    ws.room = room;
    ws.token = token;
    pd_buf_init(&ws.pre);
    if (curl_easy_getinfo(h, CURLINFO_ACTIVESOCKET, &ws.fd) != CURLE_OK || ws.fd == CURL_SOCKET_BAD)
        s_die("connect %s: no socket", o->endpoint);

    s_handshake(&ws, hosthdr.data, target.data);
    sodium_memzero(target.data, target.len);
    s_free_secret(o->jwt);
    o->jwt = NULL;
    s_free_secret(apikey);

    struct wslay_event_callbacks cbs = {s_ws_recv, s_ws_send, s_ws_genmask, NULL,
                                        NULL,      NULL,      s_ws_on_msg};
    wslay_event_context_ptr ctx;
    if (wslay_event_context_client_init(&ctx, &cbs, &ws) != 0)
        s_die("wslay_event_context_client_init failed");
    wslay_event_config_set_max_recv_msg_length(ctx, 1 << 20);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (room)
        s_phx_join(ctx, &ws);
    int64_t next_ping = pd_mono_ms() + HEARTBEAT_MS, close_deadline = 0;
    int exit_code = 0;
    for (;;) {
        if (s_interrupted && !close_deadline) {
            wslay_event_queue_close(ctx, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
            close_deadline = pd_mono_ms() + 2000;
        }
        if (pd_mono_ms() >= next_ping && !close_deadline) {
            if (room)
                s_phx_heartbeat(ctx, &ws);
            else
                s_ws_queue(ctx, "{\"type\":\"ping\"}");
            next_ping = pd_mono_ms() + HEARTBEAT_MS;
        }
        if (wslay_event_want_write(ctx) && wslay_event_send(ctx) != 0)
            ws.eof = true;
        if (ws.pre_off < ws.pre.len || s_wait_fd(ws.fd, POLLIN, 200) > 0) {
            if (wslay_event_recv(ctx) != 0)
                ws.eof = true;
        }
        if (wslay_event_want_write(ctx) && wslay_event_send(ctx) != 0)
            ws.eof = true;
        if (ws.fatal && !close_deadline) {
            exit_code = 1;
            wslay_event_queue_close(ctx, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
            close_deadline = pd_mono_ms() + 2000;
        }
        if (ws.eof || (close_deadline && (ws.closed || pd_mono_ms() > close_deadline)))
            break;
        if (ws.closed && !close_deadline) { /* the server closed first */
            wslay_event_send(ctx);
            break;
        }
    }
    if (!s_interrupted && !ws.fatal) {
        fprintf(stderr, "%s: the server closed the connection", s_prog);
        if (ws.closed)
            fprintf(stderr, " (close code %d)", ws.close_code);
        fputc('\n', stderr);
        exit_code = 1;
    }
    wslay_event_context_free(ctx);
    curl_easy_cleanup(h);
    curl_free(conn_url);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    pd_buf_free(&ws.pre);
    pd_buf_free(&target);
    pd_buf_free(&hosthdr);
    pd_buf_free(&url);
    return exit_code;
}

static int
cmd_watch(int argc, char **argv)
{
    client_opts_t o;
    if (s_client_opts(argc, argv, &o, true) < 0)
        return 2;
    return s_watch(&o, NULL, NULL, NULL);
}

//  rooms list: the answer of GET /v1/rooms as a table, largest first.
static int
s_rooms_list(json_t *root)
{
    json_t *rooms = json_object_get(root, "rooms");
    if (!json_is_array(rooms))
        s_die("unexpected answer: no rooms");
    size_t w = 7, i;
    json_t *r;
    json_array_foreach(rooms, i, r) {
        size_t n = s_width(s_jstr(r, "channel"));
        if (n > w)
            w = n > 60 ? 60 : n;
    }
    s_cell("CHANNEL", w, false);
    s_cell("MEMBERS", 7, true);
    fputc('\n', stdout);
    json_int_t members = 0;
    json_array_foreach(rooms, i, r) {
        char count[32];
        json_int_t n = json_integer_value(json_object_get(r, "count"));
        members += n;
        snprintf(count, sizeof count, "%" JSON_INTEGER_FORMAT, n);
        s_cell(s_jstr(r, "channel"), w, false);
        s_cell(count, 7, true);
        fputc('\n', stdout);
    }
    json_int_t total = json_integer_value(json_object_get(root, "total"));
    printf("%" JSON_INTEGER_FORMAT " room%s", total, total == 1 ? "" : "s");
    if ((size_t)total > json_array_size(rooms))
        printf(" (the %zu largest shown)", json_array_size(rooms));
    printf(", %" JSON_INTEGER_FORMAT " member%s in those shown\n", members, members == 1 ? "" : "s");
    json_decref(root);
    return 0;
}

/*  presencectl rooms list --endpoint URL --project P --key K: the project's rooms with their
 *  member counts, largest first (GET /v1/rooms); rooms show CHANNEL --endpoint URL --project P
 *  --key K: a room's members (GET /v1/rooms/{channel}); rooms watch CHANNEL --endpoint URL --apikey K [--token T]: its joins and
 *  leaves as they happen (Supabase Realtime's protocol; K is the project's Supabase key). */
static int
cmd_rooms(int argc, char **argv)
{
    bool list = argc >= 2 && strcmp(argv[1], "list") == 0;
    if (!list && (argc < 3 || (strcmp(argv[1], "show") != 0 && strcmp(argv[1], "watch") != 0))) {
        s_usage();
        return 2;
    }
    bool watch = !list && strcmp(argv[1], "watch") == 0;
    int skip = list ? 1 : 2; /* the options follow the subcommand, or the channel */
    const char *room = list ? "" : argv[2];
    if (!list && (!*room || strlen(room) > 255))
        s_die("a channel is 1 to 255 bytes");
    static const struct option opts[] = {{"endpoint", required_argument, NULL, 'e'},
                                         {"project", required_argument, NULL, 'p'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"apikey", required_argument, NULL, 'a'},
                                         {"token", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    client_opts_t o;
    memset(&o, 0, sizeof o);
    char *apikey = NULL, *token = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc - skip, argv + skip, "", opts, NULL)) != -1) {
        switch (c) {
        case 'e': o.endpoint = optarg; break;
        case 'p': o.project = optarg; break;
        case 'k': s_free_secret(o.key); o.key = s_take_secret(optarg); break;
        case 'a': s_free_secret(apikey); apikey = s_take_secret(optarg); break;
        case 't': s_free_secret(token); token = s_take_secret(optarg); break;
        default: s_usage(); return 2;
        }
    }
    if (!o.endpoint || (watch ? !apikey || o.key : !o.project || !o.key) || optind < argc - skip) {
        s_usage();
        return 2;
    }
    if (watch) {
        int rc = s_watch(&o, room, apikey, token);
        s_free_secret(token);
        return rc;
    }
    CURL *h = curl_easy_init();
    if (!h)
        s_die("curl_easy_init failed");
    pd_buf_t url;
    pd_buf_init(&url);
    char *ce = curl_easy_escape(h, room, 0);
    pd_buf_addf(&url, "/rooms%s%s", list ? "" : "/", list ? "" : ce);
    curl_free(ce);
    pd_buf_add(&url, "", 1);
    pd_buf_t full;
    pd_buf_init(&full);
    s_api_url(&full, o.endpoint, url.data);
    pd_buf_add(&full, "", 1);
    pd_buf_free(&url);
    json_t *root = s_get_json(&o, h, &full);
    curl_easy_cleanup(h);
    pd_buf_free(&full);
    if (!root)
        return 1;
    if (list)
        return s_rooms_list(root);
    json_t *members = json_object_get(root, "members");
    if (!json_is_array(members))
        s_die("unexpected answer: no members");
    static const char *heads[] = {"KEY", "PHX_REF", "CONNECTION", "LEASE", "META"};
    size_t w[5] = {3, 7, 10, 5, 4};
    size_t i;
    json_t *mb;
    json_array_foreach(members, i, mb) {
        const char *v[3] = {s_jstr(mb, "key"), s_jstr(mb, "phx_ref"), s_jstr(mb, "conn")};
        for (int k = 0; k < 3; k++)
            if (s_width(v[k]) > w[k])
                w[k] = s_width(v[k]) > 40 ? 40 : s_width(v[k]);
    }
    w[3] = 7;
    for (int k = 0; k < 5; k++)
        s_cell(heads[k], w[k], k == 4);
    fputc('\n', stdout);
    json_array_foreach(members, i, mb) {
        char lease[32];
        //  lease_ms is when the member's lease runs out (ms since the epoch): shown as what is left
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t left = (int64_t)json_integer_value(json_object_get(mb, "lease_ms")) -
                       ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
        snprintf(lease, sizeof lease, "%.1f s", (double)(left > 0 ? left : 0) / 1000.0);
        char *meta = json_dumps(json_object_get(mb, "meta"), JSON_COMPACT | JSON_ENCODE_ANY);
        const char *cols[] = {s_jstr(mb, "key"), s_jstr(mb, "phx_ref"), s_jstr(mb, "conn"), lease,
                              meta ? meta : "{}"};
        for (int k = 0; k < 5; k++)
            s_cell(cols[k], w[k], k == 4);
        fputc('\n', stdout);
        free(meta);
    }
    json_int_t count = json_integer_value(json_object_get(root, "count"));
    printf("%" JSON_INTEGER_FORMAT " member%s in room %s\n", count, count == 1 ? "" : "s",
           room);
    json_decref(root);
    return 0;
}

int
main(int argc, char **argv)
{
    if (sodium_init() < 0)
        s_die("libsodium failed to initialise");
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        s_usage();
        return argc < 2 ? 2 : 0;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const char *cmd = argv[1];
    int rc;
    if (strcmp(cmd, "key") == 0)
        rc = cmd_key(argc - 1, argv + 1);
    else if (strcmp(cmd, "keygen") == 0)
        rc = cmd_keygen(argc - 1, argv + 1);
    else if (strcmp(cmd, "cluster-keys") == 0)
        rc = cmd_cluster_keys(argc - 1, argv + 1);
    else if (strcmp(cmd, "cluster") == 0)
        rc = cmd_cluster(argc - 1, argv + 1);
    else if (strcmp(cmd, "jwt") == 0)
        rc = cmd_jwt(argc - 1, argv + 1);
    else if (strcmp(cmd, "list") == 0)
        rc = cmd_list(argc - 1, argv + 1);
    else if (strcmp(cmd, "watch") == 0)
        rc = cmd_watch(argc - 1, argv + 1);
    else if (strcmp(cmd, "rooms") == 0)
        rc = cmd_rooms(argc - 1, argv + 1);
    else {
        fprintf(stderr, "%s: unknown command %s\n", s_prog, cmd);
        s_usage();
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
