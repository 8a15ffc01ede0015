/*  pd_auth — see pd_auth.h. */
#include "pd_auth.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#define PD_JWT_BIN_MAX (PD_JWT_MAX_LEN / 4 * 3 + 3) //  decoded size of any one segment
#define PD_CLAIM_LIST_MAX 100                       //  entries in teams / labels
#define PD_CLAIM_ENTRY_MAX 128                      //  bytes per teams / labels entry
#define PD_KEY_MAX 36                               //  Appwrite Key / Label validator
#define PD_DIMENSION_MAX 81                         //  team role: Key(maxLength: 81)
#define PD_ECHO_MAX 200                             //  bytes of client text quoted in err
//  Longest canonical permission: delete("team:<36>/<81>") is 8 + 123 + 2 = 133 bytes.
#define PD_PERM_TEXT_MAX 136

static const char s_jwt_prefix[] = "Failed to verify JWT. ";
static const char s_key_rules[] = "Parameter must contain at most %d chars. Valid chars are a-z, "
                                  "A-Z, 0-9, period, hyphen, and underscore. Can't start with a "
                                  "special char";
static const char s_label_rules[] = "Value must be a valid string between 1 and 36 chars "
                                    "containing only alphanumeric chars";

static void
s_init(void)
{
    //  Idempotent and thread safe; -1 only when no entropy source exists at all.
    if (sodium_init() < 0)
        abort();
}

static int
s_jwt_fail(char *err, size_t errlen, const char *reason)
{
    if (err && errlen)
        snprintf(err, errlen, "%s%s", s_jwt_prefix, reason);
    return -1;
}

//  Appends len bytes as base64url without padding.
static void
s_b64_add(pd_buf_t *out, const void *bin, size_t len)
{
    size_t n = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    pd_buf_reserve(out, n);
    sodium_bin2base64(out->data + out->len, n, bin, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    out->len += n - 1; /* minus the NUL */
}

//  Decodes one base64url segment; refuses padding, stray characters and non-zero trailing
//  bits (libsodium only accepts the canonical encoding). Returns 0 and sets *out_len, or -1.
static int
s_b64_decode(const char *p, size_t len, unsigned char *bin, size_t cap, size_t *out_len)
{
    if (len == 0)
        return -1;
    return sodium_base642bin(bin, cap, p, len, NULL, out_len, NULL,
                             sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static bool
s_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

//  Appwrite's Key validator: 1..max chars of [A-Za-z0-9_.-], not starting with _ . -
static bool
s_key_valid(pd_str_t s, size_t max)
{
    if (s.len == 0 || s.len > max || s.ptr[0] == '_' || s.ptr[0] == '.' || s.ptr[0] == '-')
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!s_key_char(s.ptr[i]))
            return false;
    return true;
}

//  Appwrite's Label validator: 1..36 alphanumeric chars.
static bool
s_label_valid(pd_str_t s)
{
    if (s.len == 0 || s.len > PD_KEY_MAX)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

//  A JWT NumericDate: an integer or a real (truncated) within a sane range.
static int
s_numeric_date(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -9.0e15 && d < 9.0e15))
            return -1;
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}

//  Team claim "T" or "T/R": T a key of <= 36 chars, R a key of <= 81 chars.
static bool
s_team_claim_valid(pd_str_t s)
{
    const char *slash = memchr(s.ptr, '/', s.len);
    if (!slash)
        return s_key_valid(s, PD_KEY_MAX);
    pd_str_t team = {s.ptr, (size_t)(slash - s.ptr)};
    pd_str_t role = {slash + 1, s.len - team.len - 1};
    return s_key_valid(team, PD_KEY_MAX) && s_key_valid(role, PD_DIMENSION_MAX);
}

//  Copies a claim that must be absent, null, or an array of at most 100 valid strings into
//  a packed list. Invalid claims refuse the whole token rather than being skipped: the token
//  comes from the app's own backend, so a malformed claim is a bug worth surfacing, and
//  silently dropping a team would be hard to debug.
static int
s_claim_list(const json_t *payload, const char *name, bool teams, pd_buf_t *out)
{
    const json_t *arr = json_object_get(payload, name);
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > PD_CLAIM_LIST_MAX)
        return -1;
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v))
            return -1;
        pd_str_t s = {json_string_value(v), json_string_length(v)};
        if (s.len > PD_CLAIM_ENTRY_MAX)
            return -1;
        if (teams ? !s_team_claim_valid(s) : !s_label_valid(s))
            return -1;
        if (pd_list_has((pd_str_t){out->data, out->len}, s))
            continue;
        pd_buf_add(out, s.ptr, s.len);
        pd_buf_add(out, "", 1);
    }
    return 0;
}

//  A string claim into out (outlen bytes with the NUL); absent is "". -1 if not a short string.
static int
s_claim_str(const json_t *payload, const char *name, char *out, size_t outlen)
{
    const json_t *v = json_object_get(payload, name);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) >= outlen ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int
s_claims_parse(const json_t *payload, int64_t now_s, bool need_user, pd_jwt_claims_t *out,
               char *err, size_t errlen)
{
    const json_t *uid = json_object_get(payload, "userId");
    if (!uid || json_is_null(uid))
        uid = json_object_get(payload, "sub");
    if ((need_user || (uid && !json_is_null(uid))) &&
        (!json_is_string(uid) ||
         !pd_uid_valid((pd_str_t){json_string_value(uid), json_string_length(uid)})))
        return s_jwt_fail(err, errlen, "Token has no valid userId.");
    if (uid && json_is_string(uid))
        memcpy(out->user_id, json_string_value(uid), json_string_length(uid) + 1);
    if (s_claim_str(payload, "role", out->role, sizeof out->role) < 0)
        return s_jwt_fail(err, errlen, "Invalid role claim.");
    if (s_claim_str(payload, "ref", out->ref, sizeof out->ref) < 0)
        return s_jwt_fail(err, errlen, "Invalid ref claim.");

    const json_t *exp = json_object_get(payload, "exp");
    if (!exp || s_numeric_date(exp, &out->exp) < 0) {
        out->exp = 0;
        return s_jwt_fail(err, errlen, "Token has no valid expiry.");
    }
    if (out->exp <= now_s)
        return s_jwt_fail(err, errlen, "Token has expired.");
    const json_t *nbf = json_object_get(payload, "nbf");
    if (nbf && !json_is_null(nbf)) {
        if (s_numeric_date(nbf, &out->nbf) < 0)
            return s_jwt_fail(err, errlen, "Invalid token.");
        if (out->nbf > now_s)
            return s_jwt_fail(err, errlen, "Token not yet valid.");
    }
    const json_t *verified = json_object_get(payload, "verified");
    if (json_is_boolean(verified))
        out->verified = json_is_true(verified) ? 1 : 0;
    else if (verified && !json_is_null(verified))
        return s_jwt_fail(err, errlen, "Invalid verified claim.");
    if (s_claim_list(payload, "teams", true, &out->teams) < 0)
        return s_jwt_fail(err, errlen, "Invalid teams claim.");
    if (s_claim_list(payload, "labels", false, &out->labels) < 0)
        return s_jwt_fail(err, errlen, "Invalid labels claim.");
    return 0;
}

void
pd_jwt_claims_init(pd_jwt_claims_t *c)
{
    memset(c, 0, sizeof *c);
    c->verified = -1;
    pd_buf_init(&c->teams);
    pd_buf_init(&c->labels);
}

void
pd_jwt_claims_free(pd_jwt_claims_t *c)
{
    pd_buf_free(&c->teams);
    pd_buf_free(&c->labels);
    pd_jwt_claims_init(c);
}

static void
s_claims_reset(pd_jwt_claims_t *c)
{
    memset(c->user_id, 0, sizeof c->user_id);
    c->role[0] = c->ref[0] = 0;
    c->exp = c->nbf = 0;
    c->verified = -1;
    pd_buf_reset(&c->teams);
    pd_buf_reset(&c->labels);
}

//  Verifies a compact JWS (RFC 7515) in three steps, cheapest refusal first: shape and
//  size, then the header (alg must name a key family the project has), then the signature
//  over "header.payload" against each key of that family, and only then the payload claims,
//  so unsigned input never reaches the claims parser. Key confusion is impossible by
//  construction: a key is only ever used with its own alg, so an Ed25519 public key is never
//  an HMAC secret. JSON is parsed with duplicate keys refused (no {"alg":"none","alg":...}
//  games). Cost: two base64 decodes, two small jansson parses, one HMAC or Ed25519 verify
//  per candidate key; a few microseconds for HS256 (see pd_auth_test -v).
static int
s_verify(const pd_jwt_key_t *keys, size_t nkeys, const char *tok, size_t len, int64_t now_s,
         bool need_user, pd_jwt_claims_t *out, char *err, size_t errlen)
{
    assert(out);
    s_init();
    s_claims_reset(out);
    if (!tok || len == 0 || len > PD_JWT_MAX_LEN)
        return s_jwt_fail(err, errlen, "Invalid token.");
    const char *dot1 = memchr(tok, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - tok)))
        return s_jwt_fail(err, errlen, "Invalid token.");
    size_t hlen = (size_t)(dot1 - tok);
    size_t plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - tok);
    size_t signed_len = (size_t)(dot2 - tok);

    unsigned char bin[PD_JWT_BIN_MAX];
    size_t bin_len;
    if (s_b64_decode(tok, hlen, bin, sizeof bin, &bin_len) < 0)
        return s_jwt_fail(err, errlen, "Invalid token.");
    json_t *header = json_loadb((const char *)bin, bin_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(header)) {
        json_decref(header);
        return s_jwt_fail(err, errlen, "Invalid token.");
    }
    const json_t *algv = json_object_get(header, "alg");
    int alg = 0;
    if (json_is_string(algv) && strcmp(json_string_value(algv), "HS256") == 0 &&
        json_string_length(algv) == 5)
        alg = PD_JWT_HS256;
    else if (json_is_string(algv) && strcmp(json_string_value(algv), "EdDSA") == 0 &&
             json_string_length(algv) == 5)
        alg = PD_JWT_EDDSA;
    //  RFC 7515 4.1.11: extensions we do not understand must not be ignored.
    bool crit = json_object_get(header, "crit") != NULL;
    json_decref(header);
    if (crit)
        return s_jwt_fail(err, errlen, "Invalid token.");
    if (!alg)
        return s_jwt_fail(err, errlen, "Unsupported algorithm.");

    unsigned char sig[crypto_sign_BYTES];
    size_t sig_len;
    if (s_b64_decode(dot2 + 1, slen, sig, sizeof sig, &sig_len) < 0)
        return s_jwt_fail(err, errlen, "Invalid signature.");
    size_t want = alg == PD_JWT_HS256 ? crypto_auth_hmacsha256_BYTES : crypto_sign_BYTES;
    bool have_key = false, good = false;
    for (size_t i = 0; i < nkeys && !good; i++) {
        const pd_jwt_key_t *k = &keys[i];
        if (k->alg != alg || !k->key || k->key_len == 0)
            continue;
        if (alg == PD_JWT_EDDSA && k->key_len != crypto_sign_PUBLICKEYBYTES)
            continue;
        have_key = true;
        if (sig_len != want)
            break;
        if (alg == PD_JWT_HS256) {
            crypto_auth_hmacsha256_state st;
            unsigned char mac[crypto_auth_hmacsha256_BYTES];
            crypto_auth_hmacsha256_init(&st, k->key, k->key_len);
            crypto_auth_hmacsha256_update(&st, (const unsigned char *)tok, signed_len);
            crypto_auth_hmacsha256_final(&st, mac);
            good = sodium_memcmp(mac, sig, sizeof mac) == 0;
            sodium_memzero(&st, sizeof st);
        } else {
            good = crypto_sign_verify_detached(sig, (const unsigned char *)tok, signed_len,
                                               k->key) == 0;
        }
    }
    if (!have_key)
        return s_jwt_fail(err, errlen, "Unsupported algorithm.");
    if (!good)
        return s_jwt_fail(err, errlen, "Invalid signature.");

    if (s_b64_decode(dot1 + 1, plen, bin, sizeof bin, &bin_len) < 0)
        return s_jwt_fail(err, errlen, "Invalid token.");
    json_t *payload = json_loadb((const char *)bin, bin_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return s_jwt_fail(err, errlen, "Invalid token.");
    }
    int rc = s_claims_parse(payload, now_s, need_user, out, err, errlen);
    json_decref(payload);
    if (rc < 0)
        s_claims_reset(out);
    return rc;
}

int
pd_jwt_verify(const pd_jwt_key_t *keys, size_t nkeys, const char *tok, size_t len, int64_t now_s,
              pd_jwt_claims_t *out, char *err, size_t errlen)
{
    return s_verify(keys, nkeys, tok, len, now_s, true, out, err, errlen);
}

int
pd_jwt_verify_sb(const pd_jwt_key_t *keys, size_t nkeys, const char *tok, size_t len,
                 int64_t now_s, pd_jwt_claims_t *out, char *err, size_t errlen)
{
    return s_verify(keys, nkeys, tok, len, now_s, false, out, err, errlen);
}

int
pd_jwt_peek(const char *tok, size_t len, const char *name, char *out, size_t outlen)
{
    s_init();
    if (!tok || len == 0 || len > PD_JWT_MAX_LEN || outlen == 0)
        return -1;
    const char *dot1 = memchr(tok, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok)) : NULL;
    if (!dot2)
        return -1;
    unsigned char bin[PD_JWT_BIN_MAX];
    size_t bin_len;
    if (s_b64_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), bin, sizeof bin, &bin_len) < 0)
        return -1;
    json_t *payload = json_loadb((const char *)bin, bin_len, JSON_REJECT_DUPLICATES, NULL);
    out[0] = 0;
    int rc = json_is_object(payload) ? s_claim_str(payload, name, out, outlen) : -1;
    json_decref(payload);
    return rc == 0 && out[0] ? 0 : -1;
}

static void
s_jwt_head(const char *alg, const char *payload, size_t payload_len, pd_buf_t *out)
{
    char header[40];
    int n = snprintf(header, sizeof header, "{\"typ\":\"JWT\",\"alg\":\"%s\"}", alg);
    s_b64_add(out, header, (size_t)n);
    pd_buf_add(out, ".", 1);
    s_b64_add(out, payload, payload_len);
}

void
pd_jwt_sign_hs256(const unsigned char *key, size_t key_len, const char *payload, size_t payload_len,
                  pd_buf_t *out)
{
    s_init();
    size_t start = out->len;
    s_jwt_head("HS256", payload, payload_len, out);
    crypto_auth_hmacsha256_state st;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)out->data + start, out->len - start);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
    pd_buf_add(out, ".", 1);
    s_b64_add(out, mac, sizeof mac);
}

void
pd_jwt_sign_eddsa(const unsigned char sk[64], const char *payload, size_t payload_len,
                  pd_buf_t *out)
{
    s_init();
    size_t start = out->len;
    s_jwt_head("EdDSA", payload, payload_len, out);
    unsigned char sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const unsigned char *)out->data + start, out->len - start, sk);
    pd_buf_add(out, ".", 1);
    s_b64_add(out, sig, sizeof sig);
}

//  The domain string is the BLAKE2b key: it separates these hashes from any other use of
//  BLAKE2b on the same secrets. It is not a secret pepper.
void
pd_key_hash(const char *secret, size_t len, char out_hex[65])
{
    static const char domain[] = "presenced api key v1";
    unsigned char h[32];
    s_init();
    crypto_generichash(h, sizeof h, (const unsigned char *)secret, len,
                       (const unsigned char *)domain, sizeof domain - 1);
    sodium_bin2hex(out_hex, 65, h, sizeof h);
}

bool
pd_key_hash_eq(const char *a_hex, const char *b_hex)
{
    if (!a_hex || !b_hex || strnlen(a_hex, 65) != 64 || strnlen(b_hex, 65) != 64)
        return false;
    s_init();
    return sodium_memcmp(a_hex, b_hex, 64) == 0;
}

void
pd_key_generate(char *buf)
{
    unsigned char r[24];
    s_init();
    randombytes_buf(r, sizeof r);
    memcpy(buf, "pd_", 3);
    sodium_bin2hex(buf + 3, 49, r, sizeof r);
    sodium_memzero(r, sizeof r);
}

static void s_role_add(pd_buf_t *roles, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

//  Appends one role to a packed list unless the list already has it.
static void
s_role_add(pd_buf_t *roles, const char *fmt, ...)
{
    char role[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(role, sizeof role, fmt, ap);
    va_end(ap);
    if (n <= 0 || (size_t)n >= sizeof role)
        return;
    if (pd_list_has((pd_str_t){roles->data, roles->len}, (pd_str_t){role, (size_t)n}))
        return;
    pd_buf_add(roles, role, (size_t)n + 1);
}

void
pd_roles_guest(pd_buf_t *roles)
{
    s_role_add(roles, "any");
    s_role_add(roles, "guests");
}

void
pd_roles_user(const pd_jwt_claims_t *c, pd_buf_t *roles)
{
    s_role_add(roles, "any");
    s_role_add(roles, "users");
    s_role_add(roles, "user:%s", c->user_id);
    if (c->verified >= 0) {
        const char *dim = c->verified ? "verified" : "unverified";
        s_role_add(roles, "users/%s", dim);
        s_role_add(roles, "user:%s/%s", c->user_id, dim);
    }
    pd_str_t teams = {c->teams.data, c->teams.len};
    for (pd_str_t t = pd_list_first(teams); t.ptr; t = pd_list_next(teams, t)) {
        const char *slash = memchr(t.ptr, '/', t.len);
        int tl = (int)(slash ? (size_t)(slash - t.ptr) : t.len);
        s_role_add(roles, "team:%.*s", tl, t.ptr);
        if (slash)
            s_role_add(roles, "team:%.*s", (int)t.len, t.ptr);
    }
    pd_str_t labels = {c->labels.data, c->labels.len};
    for (pd_str_t l = pd_list_first(labels); l.ptr; l = pd_list_next(labels, l))
        s_role_add(roles, "label:%.*s", (int)l.len, l.ptr);
}

void
pd_perms_init(pd_perms_t *p)
{
    pd_buf_init(&p->json);
    pd_buf_init(&p->read);
    pd_buf_init(&p->update);
    pd_buf_init(&p->del);
}

void
pd_perms_free(pd_perms_t *p)
{
    pd_buf_free(&p->json);
    pd_buf_free(&p->read);
    pd_buf_free(&p->update);
    pd_buf_free(&p->del);
}

static void
s_perms_reset(pd_perms_t *p)
{
    pd_buf_reset(&p->json);
    pd_buf_reset(&p->read);
    pd_buf_reset(&p->update);
    pd_buf_reset(&p->del);
}

//  Client text quoted in a message: at most PD_ECHO_MAX bytes, cut on a UTF-8 boundary.
static int
s_echo_len(pd_str_t s)
{
    size_t n = s.len;
    if (n > PD_ECHO_MAX) {
        n = PD_ECHO_MAX;
        while (n > 0 && ((unsigned char)s.ptr[n] & 0xC0) == 0x80)
            n--;
    }
    return (int)n;
}

static bool
s_has_prefix(pd_str_t s, const char *pre)
{
    size_t n = strlen(pre);
    return s.len >= n && memcmp(s.ptr, pre, n) == 0;
}

static bool
s_contains(pd_str_t s, const char *needle)
{
    return memmem(s.ptr, s.len, needle, strlen(needle)) != NULL;
}

//  Validates a role (the text inside the quotes) the way Appwrite's Role::parse and
//  Roles::isValidRole do, with the same messages. Stricter than Appwrite where Appwrite is
//  lax by accident: extra ':' parts are not dropped, "any:" is refused, "0" is a valid ID.
int
pd_role_check(pd_str_t r, char *err, size_t errlen)
{
    if (pd_str_eqc(r, "*"))
        return pd_errf(err, errlen, -1, "Wildcard role \"*\" has been replaced. Use \"any\" instead.");
    const char *colon = memchr(r.ptr, ':', r.len);
    const char *slash = memchr(r.ptr, '/', r.len);
    pd_str_t name = r, id = PD_STR_NULL, dim = PD_STR_NULL;
    bool has_id = colon != NULL, has_dim = slash != NULL;
    if (has_id) {
        name.len = (size_t)(colon - r.ptr);
        pd_str_t rest = {colon + 1, r.len - name.len - 1};
        const char *s2 = memchr(rest.ptr, '/', rest.len);
        if (has_dim && !s2)
            has_dim = false; /* the slash is in the name: "users/x:y" */
        id = rest;
        if (s2) {
            id.len = (size_t)(s2 - rest.ptr);
            dim = (pd_str_t){s2 + 1, rest.len - id.len - 1};
        }
    } else if (has_dim) {
        name.len = (size_t)(slash - r.ptr);
        dim = (pd_str_t){slash + 1, r.len - name.len - 1};
    }
    if (has_dim && memchr(dim.ptr, '/', dim.len))
        return pd_errf(err, errlen, -1, "Only one dimension can be provided");
    if (has_dim && dim.len == 0)
        return pd_errf(err, errlen, -1, "Dimension must not be empty");

    static const char *const names[] = {"any",  "guests", "users", "user",
                                        "team", "member", "label"};
    //  id: 0 not allowed, 1 required; dim: 0 not allowed, 1 verified/unverified, 2 any key.
    static const int id_rule[] = {0, 0, 0, 1, 1, 1, 1};
    static const int dim_rule[] = {0, 0, 1, 1, 2, 0, 0};
    int k = -1;
    for (int i = 0; i < 7; i++)
        if (pd_str_eqc(name, names[i]))
            k = i;
    int nl = s_echo_len(name);
    if (k < 0)
        return pd_errf(err, errlen, -1,
                      "Role \"%.*s\" is not allowed. Must be one of: any, guests, users, user, "
                      "team, member, label.",
                      nl, name.ptr);
    if (!id_rule[k] && has_id)
        return pd_errf(err, errlen, -1, "Role \"%s\" can not have an ID value.", names[k]);
    if (id_rule[k] && id.len == 0)
        return pd_errf(err, errlen, -1, "Role \"%s\" must have an ID value.", names[k]);
    if (id_rule[k] && k == 6 && !s_label_valid(id))
        return pd_errf(err, errlen, -1, "Role \"label\" identifier value is invalid: %s", s_label_rules);
    if (id_rule[k] && k != 6 && !s_key_valid(id, PD_KEY_MAX)) {
        char rules[200];
        snprintf(rules, sizeof rules, s_key_rules, PD_KEY_MAX);
        return pd_errf(err, errlen, -1, "Role \"%s\" identifier value is invalid: %s", names[k], rules);
    }
    if (!dim_rule[k] && has_dim)
        return pd_errf(err, errlen, -1, "Role \"%s\" can not have a dimension value.", names[k]);
    if (dim_rule[k] == 1 && has_dim && !pd_str_eqc(dim, "verified") &&
        !pd_str_eqc(dim, "unverified"))
        return pd_errf(err, errlen, -1,
                      "Role \"%s\" dimension value is invalid. Must be one of: verified, "
                      "unverified.",
                      names[k]);
    if (dim_rule[k] == 2 && has_dim && !s_key_valid(dim, PD_DIMENSION_MAX)) {
        char rules[200];
        snprintf(rules, sizeof rules, s_key_rules, PD_DIMENSION_MAX);
        return pd_errf(err, errlen, -1, "Role \"%s\" dimension value is invalid: %s", names[k], rules);
    }
    return 0;
}

enum { S_READ, S_UPDATE, S_DELETE, S_WRITE };

//  Splits and validates one permission string into its type and role. Checks run in the
//  order of Appwrite's Permissions::isValid, so the first message matches Appwrite's.
static int
s_perm_check(pd_str_t p, int *type, pd_str_t *role, char *err, size_t errlen)
{
    static const char *const types[] = {"read", "update", "delete", "write"};
    int pl = s_echo_len(p);
    if (pd_str_eqc(p, "*"))
        return pd_errf(err, errlen, -1,
                      "Wildcard permission \"*\" has been replaced. Use \"any\" instead.");
    if (s_contains(p, "role:"))
        return pd_errf(err, errlen, -1,
                      "Permissions using the \"role:\" prefix have been replaced. Use \"users\", "
                      "\"guests\", or \"any\" instead.");
    bool allowed = false;
    for (int i = 0; i < 4; i++)
        allowed = allowed || s_has_prefix(p, types[i]);
    if (!allowed)
        return pd_errf(err, errlen, -1,
                      "Permission \"%.*s\" is not allowed. Must be one of: read, update, delete, "
                      "write.",
                      pl, p.ptr);
    const char *open = memmem(p.ptr, p.len, "(\"", 2);
    size_t tl = open ? (size_t)(open - p.ptr) : 0;
    if (!open || memmem(open + 2, p.len - tl - 2, "(\"", 2) || p.len < tl + 4 ||
        memcmp(p.ptr + p.len - 2, "\")", 2) != 0)
        return pd_errf(err, errlen, -1, "Invalid permission string format: \"%.*s\".", pl, p.ptr);
    *type = -1;
    for (int i = 0; i < 4; i++)
        if (pd_str_eqc((pd_str_t){p.ptr, tl}, types[i]))
            *type = i;
    if (*type < 0)
        return pd_errf(err, errlen, -1, "Invalid permission type: \"%.*s\".",
                      s_echo_len((pd_str_t){p.ptr, tl}), p.ptr);
    *role = (pd_str_t){open + 2, p.len - tl - 4};
    return pd_role_check(*role, err, errlen);
}

typedef struct {
    char s[PD_PERM_TEXT_MAX];
} s_perm_text_t;

static int
s_perm_text_cmp(const void *a, const void *b)
{
    return strcmp(((const s_perm_text_t *)a)->s, ((const s_perm_text_t *)b)->s);
}

//  Fills json and the three role lists from sorted, unique permission strings. Every string
//  is "type(\"role\")" with a validated role, so the role is found between the quotes.
static void
s_perms_build(const s_perm_text_t *v, size_t n, pd_perms_t *out)
{
    pd_buf_add(&out->json, "[", 1);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(v[i].s);
        if (i)
            pd_buf_add(&out->json, ",", 1);
        pd_buf_add_json_str(&out->json, v[i].s, len);
        const char *q = strchr(v[i].s, '"');
        size_t rl = len - (size_t)(q + 1 - v[i].s) - 2;
        pd_buf_t *dst = v[i].s[0] == 'r' ? &out->read : v[i].s[0] == 'u' ? &out->update : &out->del;
        if (v[i].s[0] == 'w') {
            //  Only pd_perms_default keeps a literal write: it grants update and delete.
            if (!pd_list_has((pd_str_t){out->update.data, out->update.len},
                             (pd_str_t){q + 1, rl})) {
                pd_buf_add(&out->update, q + 1, rl);
                pd_buf_add(&out->update, "", 1);
            }
        }
        if (pd_list_has((pd_str_t){dst->data, dst->len}, (pd_str_t){q + 1, rl}))
            continue;
        pd_buf_add(dst, q + 1, rl);
        pd_buf_add(dst, "", 1);
    }
    pd_buf_add(&out->json, "]", 1);
}

//  Validates every entry first, then expands write into update + delete (Appwrite's
//  Permission::aggregate), sorts the strings bytewise and drops duplicates. At most 100
//  entries in, so at most 200 strings of <= 133 bytes: the work area lives on the stack
//  (27 KiB) and the only allocations are the output buffers. Cost O(n log n), n <= 200.
int
pd_perms_parse(const json_t *arr, pd_perms_t *out, char *err, size_t errlen)
{
    s_perms_reset(out);
    if (!json_is_array(arr))
        return pd_errf(err, errlen, -1, "Permissions must be an array of strings.");
    if (json_array_size(arr) > PD_PERMS_MAX)
        return pd_errf(err, errlen, -1, "You can only provide up to %d permissions.", PD_PERMS_MAX);
    static const char *const types[] = {"read", "update", "delete"};
    s_perm_text_t v[2 * PD_PERMS_MAX];
    size_t n = 0, i;
    const json_t *e;
    json_array_foreach(arr, i, e)
    {
        if (!json_is_string(e))
            return pd_errf(err, errlen, -1, "Every permission must be of type string.");
        pd_str_t p = {json_string_value(e), json_string_length(e)};
        int type = S_READ;
        pd_str_t role = PD_STR_NULL;
        if (s_perm_check(p, &type, &role, err, errlen) < 0)
            return -1;
        assert(role.len <= PD_PERM_TEXT_MAX - 11);
        if (type == S_WRITE) {
            snprintf(v[n++].s, PD_PERM_TEXT_MAX, "update(\"%.*s\")", (int)role.len, role.ptr);
            snprintf(v[n++].s, PD_PERM_TEXT_MAX, "delete(\"%.*s\")", (int)role.len, role.ptr);
        } else {
            snprintf(v[n++].s, PD_PERM_TEXT_MAX, "%s(\"%.*s\")", types[type], (int)role.len,
                     role.ptr);
        }
    }
    qsort(v, n, sizeof *v, s_perm_text_cmp);
    size_t m = 0;
    for (i = 0; i < n; i++)
        if (m == 0 || strcmp(v[m - 1].s, v[i].s) != 0)
            v[m++] = v[i];
    s_perms_build(v, m, out);
    return 0;
}

/*  Every upsert without permissions gets these, so the common case is written straight out:
 *  the four strings sort the same for every user, a UID needs no JSON escaping, and all three
 *  role lists are just user:U. Anything else takes the general path (same bytes, slower). */
void
pd_perms_default(pd_str_t user, pd_perms_t *out)
{
    static const char *const types[] = {"delete", "read", "update", "write"};
    assert(user.len <= PD_KEY_MAX);
    s_perms_reset(out);
    if (!pd_uid_valid(user)) {
        s_perm_text_t v[4];
        for (int i = 0; i < 4; i++)
            snprintf(v[i].s, PD_PERM_TEXT_MAX, "%s(\"user:%.*s\")", types[i], (int)user.len,
                     user.ptr);
        s_perms_build(v, 4, out);
        return;
    }
    static const char *const heads[] = {"[\"delete(\\\"user:", ",\"read(\\\"user:",
                                        ",\"update(\\\"user:", ",\"write(\\\"user:"};
    static const char tail[] = "\\\")\"";
    static const size_t head_len[] = {16, 14, 16, 15}; /* strlen of heads[i] */
    pd_buf_reserve(&out->json, 4 * (sizeof tail + 16 + user.len) + 1);
    char *d = out->json.data + out->json.len;
    for (int i = 0; i < 4; i++) {
        memcpy(d, heads[i], head_len[i]);
        memcpy(d + head_len[i], user.ptr, user.len);
        d += head_len[i] + user.len;
        memcpy(d, tail, sizeof tail - 1);
        d += sizeof tail - 1;
    }
    *d++ = ']';
    out->json.len = (size_t)(d - out->json.data);
    pd_buf_t *lists[] = {&out->read, &out->update, &out->del};
    for (int i = 0; i < 3; i++) {
        pd_buf_reserve(lists[i], user.len + 6);
        d = lists[i]->data + lists[i]->len;
        memcpy(d, "user:", 5);
        memcpy(d + 5, user.ptr, user.len);
        d[5 + user.len] = 0;
        lists[i]->len += user.len + 6;
    }
}

//  Appwrite checks each permission's role against Authorization::getRoles() and lists the
//  caller's roles in the message. Cost O(roles x caller roles), both small.
int
pd_perms_check_grant(const pd_perms_t *p, pd_str_t caller_roles, char *err, size_t errlen)
{
    const pd_buf_t *lists[] = {&p->read, &p->update, &p->del};
    for (int i = 0; i < 3; i++) {
        pd_str_t l = {lists[i]->data, lists[i]->len};
        for (pd_str_t r = pd_list_first(l); r.ptr; r = pd_list_next(l, r)) {
            if (pd_list_has(caller_roles, r))
                continue;
            if (err && errlen) {
                pd_buf_t b;
                pd_buf_init(&b);
                pd_buf_adds(&b, "Permissions must be one of: (");
                bool first = true;
                for (pd_str_t c = pd_list_first(caller_roles); c.ptr;
                     c = pd_list_next(caller_roles, c)) {
                    if (!first)
                        pd_buf_add(&b, ", ", 2);
                    pd_buf_add(&b, c.ptr, c.len);
                    first = false;
                }
                pd_buf_add(&b, ")", 2); /* with the NUL */
                snprintf(err, errlen, "%s", b.data);
                pd_buf_free(&b);
            }
            return -1;
        }
    }
    return 0;
}

//  Test helpers: build a token from raw header and payload text and an arbitrary signature.
static void
s_test_tok(pd_buf_t *b, const char *header, const char *payload, const void *sig, size_t slen)
{
    pd_buf_reset(b);
    s_b64_add(b, header, strlen(header));
    pd_buf_add(b, ".", 1);
    s_b64_add(b, payload, strlen(payload));
    pd_buf_add(b, ".", 1);
    if (sig)
        s_b64_add(b, sig, slen);
    pd_buf_add(b, "", 1);
    b->len--; /* NUL-terminated for strstr, not counted */
}

static void
s_test_hmac(pd_buf_t *b, const char *header, const char *payload, const unsigned char *key,
            size_t klen)
{
    s_test_tok(b, header, payload, NULL, 0);
    unsigned char mac[32];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, klen);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)b->data, b->len - 1);
    crypto_auth_hmacsha256_final(&st, mac);
    s_b64_add(b, mac, sizeof mac);
    pd_buf_add(b, "", 1);
    b->len--;
}

static int
s_test_verify(const pd_jwt_key_t *keys, size_t n, const pd_buf_t *tok, int64_t now,
              pd_jwt_claims_t *c, const char *want_err)
{
    char err[256] = "";
    int rc = pd_jwt_verify(keys, n, tok->data, tok->len, now, c, err, sizeof err);
    if (want_err) {
        char full[256];
        snprintf(full, sizeof full, "Failed to verify JWT. %s", want_err);
        if (rc != -1 || strcmp(err, full) != 0) {
            fprintf(stderr, "want \"%s\", got rc=%d \"%s\" for %.*s\n", full, rc, err,
                    (int)tok->len, tok->data);
            PD_CHECK(false);
        }
        PD_CHECK(c->user_id[0] == 0 && c->teams.len == 0);
    } else if (rc != 0) {
        fprintf(stderr, "unexpected error \"%s\"\n", err);
        PD_CHECK(false);
    }
    return rc;
}

//  Parses a JSON text of permissions; returns rc and leaves the message in err.
static int
s_test_perms(const char *text, pd_perms_t *p, char *err, size_t errlen)
{
    json_t *j = json_loads(text, 0, NULL);
    PD_CHECK(j);
    err[0] = 0;
    int rc = pd_perms_parse(j, p, err, errlen);
    json_decref(j);
    return rc;
}

static void
s_test_perm_bad(const char *perm, const char *want)
{
    pd_perms_t p;
    pd_perms_init(&p);
    json_t *arr = json_pack("[s]", perm);
    char err[512];
    int rc = pd_perms_parse(arr, &p, err, sizeof err);
    if (rc != -1 || strcmp(err, want) != 0) {
        fprintf(stderr, "perm %s: want \"%s\", got rc=%d \"%s\"\n", perm, want, rc, err);
        PD_CHECK(false);
    }
    PD_CHECK(p.json.len == 0 && p.read.len == 0);
    json_decref(arr);
    pd_perms_free(&p);
}

static bool
s_list_eq(const pd_buf_t *b, const char *packed, size_t len)
{
    return b->len == len && memcmp(b->data, packed, len) == 0;
}
#define S_LIST_EQ(b, lit) s_list_eq((b), (lit), sizeof(lit) - 1)

void
pd_auth_test(bool verbose)
{
    s_init();
    const int64_t now = 1700000000;
    pd_buf_t tok, roles;
    pd_buf_init(&tok);
    pd_buf_init(&roles);
    pd_jwt_claims_t c;
    pd_jwt_claims_init(&c);
    char payload[PD_JWT_MAX_LEN + 512];
    char err[512];
    const unsigned char secret[] = "a shared secret of any length";
    const size_t slen = sizeof secret - 1;
    unsigned char pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    const pd_jwt_key_t hs = {PD_JWT_HS256, secret, slen};
    const pd_jwt_key_t ed = {PD_JWT_EDDSA, pk, sizeof pk};
    const pd_jwt_key_t both[] = {ed, hs};
    const char *hs_hdr = "{\"typ\":\"JWT\",\"alg\":\"HS256\"}";

    //  HS256 round trip, claims and the role set they give.
    snprintf(payload, sizeof payload,
             "{\"userId\":\"u1\",\"sessionId\":\"\",\"exp\":%" PRId64 ",\"nbf\":%" PRId64
             ",\"teams\":[\"t1/owner\",\"t2\",\"t1\"],\"labels\":[\"vip\"],\"verified\":true}",
             now + 60, now);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    PD_CHECK(memcmp(tok.data, "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.", 37) == 0);
    s_test_verify(&hs, 1, &tok, now, &c, NULL);
    PD_CHECK(strcmp(c.user_id, "u1") == 0 && c.exp == now + 60 && c.nbf == now);
    PD_CHECK(c.verified == 1);
    PD_CHECK(S_LIST_EQ(&c.teams, "t1/owner\0t2\0t1\0") && S_LIST_EQ(&c.labels, "vip\0"));
    pd_roles_user(&c, &roles);
    PD_CHECK(S_LIST_EQ(&roles, "any\0users\0user:u1\0users/verified\0user:u1/verified\0"
                              "team:t1\0team:t1/owner\0team:t2\0label:vip\0"));
    s_test_verify(both, 2, &tok, now, &c, NULL);
    pd_buf_reset(&roles);
    pd_roles_guest(&roles);
    PD_CHECK(S_LIST_EQ(&roles, "any\0guests\0"));

    //  sub instead of userId; verified false; no nbf.
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload, "{\"sub\":\"u2\",\"exp\":%" PRId64 ",\"verified\":false}",
             now + 1);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    s_test_verify(&hs, 1, &tok, now, &c, NULL);
    PD_CHECK(strcmp(c.user_id, "u2") == 0 && c.verified == 0 && c.nbf == 0);
    pd_buf_reset(&roles);
    pd_roles_user(&c, &roles);
    PD_CHECK(S_LIST_EQ(&roles, "any\0users\0user:u2\0users/unverified\0user:u2/unverified\0"));

    //  Supabase keys: an anon key has role and ref and no user (pd_jwt_verify refuses it,
    //  pd_jwt_verify_sb takes it); ref can be read unverified to choose the keys.
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload,
             "{\"iss\":\"supabase\",\"ref\":\"demo\",\"role\":\"anon\",\"exp\":%" PRId64 "}",
             now + 60);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    s_test_verify(&hs, 1, &tok, now, &c, "Token has no valid userId.");
    PD_CHECK(pd_jwt_verify_sb(&hs, 1, tok.data, tok.len, now, &c, err, sizeof err) == 0);
    PD_CHECK(c.user_id[0] == 0 && strcmp(c.role, "anon") == 0 && strcmp(c.ref, "demo") == 0);
    char ref[37];
    PD_CHECK(pd_jwt_peek(tok.data, tok.len, "ref", ref, sizeof ref) == 0 &&
             strcmp(ref, "demo") == 0);
    PD_CHECK(pd_jwt_peek(tok.data, tok.len, "sub", ref, sizeof ref) < 0);
    PD_CHECK(pd_jwt_peek("a.b", 3, "ref", ref, sizeof ref) < 0);
    //  a user token: sub and role authenticated; a role that is not a string is refused
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload,
             "{\"sub\":\"u9\",\"role\":\"authenticated\",\"exp\":%" PRId64 "}", now + 60);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    PD_CHECK(pd_jwt_verify_sb(&hs, 1, tok.data, tok.len, now, &c, err, sizeof err) == 0);
    PD_CHECK(strcmp(c.user_id, "u9") == 0 && strcmp(c.role, "authenticated") == 0);
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload, "{\"role\":7,\"exp\":%" PRId64 "}", now + 60);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    PD_CHECK(pd_jwt_verify_sb(&hs, 1, tok.data, tok.len, now, &c, err, sizeof err) < 0);
    PD_CHECK(strstr(err, "Invalid role claim."));
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload, "{\"role\":\"anon\",\"exp\":%" PRId64 "}", now - 1);
    pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
    PD_CHECK(pd_jwt_verify_sb(&hs, 1, tok.data, tok.len, now, &c, err, sizeof err) < 0);
    PD_CHECK(strstr(err, "Token has expired."));

    //  jwt.io's example: the signature checks out with its secret, but it has no exp.
    static const char jwtio[] =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9l"
        "IiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    const pd_jwt_key_t jwtio_key = {PD_JWT_HS256, (const unsigned char *)"your-256-bit-secret", 19};
    pd_buf_reset(&tok);
    pd_buf_adds(&tok, jwtio);
    s_test_verify(&jwtio_key, 1, &tok, now, &c, "Token has no valid expiry.");
    s_test_verify(&hs, 1, &tok, now, &c, "Invalid signature.");

    //  EdDSA round trip.
    pd_buf_reset(&tok);
    snprintf(payload, sizeof payload, "{\"userId\":\"u3\",\"exp\":%" PRId64 "}", now + 60);
    pd_jwt_sign_eddsa(sk, payload, strlen(payload), &tok);
    s_test_verify(&ed, 1, &tok, now, &c, NULL);
    s_test_verify(both, 2, &tok, now, &c, NULL);
    PD_CHECK(strcmp(c.user_id, "u3") == 0 && c.verified == -1);
    s_test_verify(&hs, 1, &tok, now, &c, "Unsupported algorithm.");
    unsigned char pk2[32], sk2[64];
    crypto_sign_keypair(pk2, sk2);
    const pd_jwt_key_t ed2 = {PD_JWT_EDDSA, pk2, 32};
    s_test_verify(&ed2, 1, &tok, now, &c, "Invalid signature.");
    const pd_jwt_key_t ed_bad = {PD_JWT_EDDSA, pk, 31}; /* not a public key: skipped */
    s_test_verify(&ed_bad, 1, &tok, now, &c, "Unsupported algorithm.");

    //  Key confusion: HS256 token with the Ed25519 public key as the HMAC secret.
    s_test_hmac(&tok, hs_hdr, payload, pk, sizeof pk);
    s_test_verify(&ed, 1, &tok, now, &c, "Unsupported algorithm.");
    s_test_verify(both, 2, &tok, now, &c, "Invalid signature.");
    //  ... and an EdDSA header with an HMAC signature, against both keys.
    s_test_hmac(&tok, "{\"alg\":\"EdDSA\"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Invalid signature.");
    s_test_verify(&hs, 1, &tok, now, &c, "Unsupported algorithm.");

    //  alg none, wrong case, missing, not a string, duplicated, crit.
    s_test_tok(&tok, "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL, 0);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"alg\":\"none\"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"alg\":\"hs256\"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"typ\":\"JWT\"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"alg\":[\"HS256\"]}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"alg\":\"HS256 \"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Unsupported algorithm.");
    s_test_hmac(&tok, "{\"alg\":\"HS256\",\"alg\":\"none\"}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Invalid token.");
    s_test_hmac(&tok, "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", payload, secret, slen);
    s_test_verify(both, 2, &tok, now, &c, "Invalid token.");
    s_test_hmac(&tok, "{\"alg\":\"HS256\"}", payload, secret, slen); /* minimal header is fine */
    s_test_verify(&hs, 1, &tok, now, &c, NULL);

    //  Wrong secret, truncated and tampered signatures, tampered payload.
    const pd_jwt_key_t hs_wrong = {PD_JWT_HS256, (const unsigned char *)"not it", 6};
    s_test_verify(&hs_wrong, 1, &tok, now, &c, "Invalid signature.");
    const pd_jwt_key_t hs_prefix = {PD_JWT_HS256, secret, slen - 1};
    s_test_verify(&hs_prefix, 1, &tok, now, &c, "Invalid signature.");
    const pd_jwt_key_t hs_multi[] = {hs_wrong, hs}; /* key rotation: any key may match */
    s_test_verify(hs_multi, 2, &tok, now, &c, NULL);
    pd_buf_t t2;
    pd_buf_init(&t2);
    pd_buf_add(&t2, tok.data, tok.len - 4); /* 39 chars: 29 bytes */
    s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    pd_buf_reset(&t2);
    pd_buf_add(&t2, tok.data, tok.len - 1); /* 42 chars: non-canonical trailing bits */
    s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    pd_buf_reset(&t2);
    pd_buf_add(&t2, tok.data, tok.len);
    t2.data[t2.len - 2] = t2.data[t2.len - 2] == 'A' ? 'B' : 'A';
    s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    pd_buf_reset(&t2);
    pd_buf_add(&t2, tok.data, tok.len);
    pd_buf_add(&t2, "=", 1); /* padding */
    s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    pd_buf_reset(&t2);
    pd_buf_add(&t2, tok.data, tok.len - 43); /* "header.payload." */
    s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    {
        //  Same header and signature, someone else's payload.
        char evil[128];
        snprintf(evil, sizeof evil, "{\"userId\":\"admin\",\"exp\":%" PRId64 "}", now + 60);
        const char *d1 = memchr(tok.data, '.', tok.len);
        const char *d2 = memchr(d1 + 1, '.', tok.len - (size_t)(d1 + 1 - tok.data));
        pd_buf_reset(&t2);
        pd_buf_add(&t2, tok.data, (size_t)(d1 + 1 - tok.data));
        s_b64_add(&t2, evil, strlen(evil));
        pd_buf_add(&t2, d2, tok.len - (size_t)(d2 - tok.data));
        s_test_verify(&hs, 1, &t2, now, &c, "Invalid signature.");
    }

    //  Time claims, userId, claim shapes: all signed with the right key.
    struct {
        const char *payload; //  %1$ = exp or nbf value
        int64_t t;
        const char *err;
    } claims[] = {
        {"{\"userId\":\"u1\",\"exp\":%" PRId64 "}", now, "Token has expired."},
        {"{\"userId\":\"u1\",\"exp\":%" PRId64 "}", now - 1, "Token has expired."},
        {"{\"userId\":\"u1\",\"exp\":%" PRId64 ".9}", now, "Token has expired."},
        {"{\"userId\":\"u1\",\"exp\":%" PRId64 ".5}", now + 1, NULL},
        {"{\"userId\":\"u1\",\"exp\":\"%" PRId64 "\"}", now + 9, "Token has no valid expiry."},
        {"{\"userId\":\"u1\",\"exp\":null,\"x\":%" PRId64 "}", 0, "Token has no valid expiry."},
        {"{\"userId\":\"u1\",\"exp\":1e300,\"x\":%" PRId64 "}", 0, "Token has no valid expiry."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"nbf\":%" PRId64 "}", now + 1,
         "Token not yet valid."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"nbf\":%" PRId64 "}", now, NULL},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"nbf\":\"x\",\"x\":%" PRId64 "}", 0,
         "Invalid token."},
        {"{\"exp\":9999999999,\"x\":%" PRId64 "}", 0, "Token has no valid userId."},
        {"{\"userId\":\"\",\"exp\":9999999999,\"x\":%" PRId64 "}", 0, "Token has no valid userId."},
        {"{\"userId\":\"_u\",\"exp\":9999999999,\"x\":%" PRId64 "}", 0,
         "Token has no valid userId."},
        {"{\"userId\":7,\"sub\":\"u1\",\"exp\":9999999999,\"x\":%" PRId64 "}", 0,
         "Token has no valid userId."},
        {"{\"userId\":\"0123456789012345678901234567890123456\",\"exp\":9999999999,\"x\":%" PRId64
         "}",
         0, "Token has no valid userId."},
        {"{\"userId\":null,\"sub\":\"u1\",\"exp\":9999999999,\"x\":%" PRId64 "}", 0, NULL},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"userId\":\"u2\",\"x\":%" PRId64 "}", 0,
         "Invalid token."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":\"t1\",\"x\":%" PRId64 "}", 0,
         "Invalid teams claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":[1],\"x\":%" PRId64 "}", 0,
         "Invalid teams claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":[\"t/\"],\"x\":%" PRId64 "}", 0,
         "Invalid teams claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":[\"t/a/b\"],\"x\":%" PRId64 "}", 0,
         "Invalid teams claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":[\"-t\"],\"x\":%" PRId64 "}", 0,
         "Invalid teams claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":null,\"labels\":[],\"x\":%" PRId64 "}", 0,
         NULL},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"labels\":[\"v-ip\"],\"x\":%" PRId64 "}", 0,
         "Invalid labels claim."},
        {"{\"userId\":\"u1\",\"exp\":9999999999,\"verified\":1,\"x\":%" PRId64 "}", 0,
         "Invalid verified claim."},
        {"[%" PRId64 "]", 0, "Invalid token."},
        {"{\"userId\":\"u1\",\"exp\":9999999999} %" PRId64, 0, "Invalid token."},
    };
    for (size_t i = 0; i < sizeof claims / sizeof *claims; i++) {
        snprintf(payload, sizeof payload, claims[i].payload, claims[i].t);
        s_test_hmac(&tok, hs_hdr, payload, secret, slen);
        s_test_verify(&hs, 1, &tok, now, &c, claims[i].err);
    }
    {
        //  Caps on teams: 100 entries pass, 101 do not; "T/R" with R of 81 chars passes, 82
        //  does not (the 128-byte entry cap is a backstop: T <= 36 and R <= 81 already bound
        //  an entry to 118 bytes).
        char role[83];
        memset(role, 'r', 82);
        role[82] = 0;
        for (int k = 0; k < 4; k++) {
            int n = snprintf(payload, sizeof payload,
                             "{\"userId\":\"u1\",\"exp\":9999999999,\"teams\":[");
            if (k < 2) {
                for (int i = 0; i < 100 + k; i++)
                    n += snprintf(payload + n, sizeof payload - (size_t)n, "%s\"t%03d/o\"",
                                  i ? "," : "", i);
            } else {
                n += snprintf(payload + n, sizeof payload - (size_t)n, "\"t/%s\"",
                              k == 2 ? role + 1 : role);
            }
            snprintf(payload + n, sizeof payload - (size_t)n, "]}");
            pd_buf_reset(&tok);
            pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
            PD_CHECK(tok.len <= PD_JWT_MAX_LEN);
            if (k == 0 || k == 2) {
                s_test_verify(&hs, 1, &tok, now, &c, NULL);
                pd_buf_reset(&roles);
                pd_roles_user(&c, &roles);
                PD_CHECK(pd_list_has((pd_str_t){roles.data, roles.len},
                                    k == 0 ? PD_STR("team:t099/o") : PD_STR("team:t")));
            } else {
                s_test_verify(&hs, 1, &tok, now, &c, "Invalid teams claim.");
            }
        }
    }

    //  Shape: size cap, segments, base64, JSON.
    {
        char pad[PD_JWT_MAX_LEN];
        bool saw_ok = false, saw_big = false;
        for (size_t n = 6000; n < 6200; n++) {
            memset(pad, 'p', n);
            pad[n] = 0;
            snprintf(payload, sizeof payload, "{\"userId\":\"u1\",\"exp\":9999999999,\"p\":\"%s\"}",
                     pad);
            pd_buf_reset(&tok);
            pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
            if (tok.len <= PD_JWT_MAX_LEN) {
                s_test_verify(&hs, 1, &tok, now, &c, NULL);
                saw_ok = true;
            } else {
                s_test_verify(&hs, 1, &tok, now, &c, "Invalid token.");
                saw_big = true;
            }
        }
        PD_CHECK(saw_ok && saw_big);
    }
    const char *shapes[] = {
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA",
        "eyJhbGciOiJIUzI1NiJ9+.e30.AAAA",
        "eyJhbGciOiJIUzI1Ni J9.e30.AAAA",
        "bm90IGpzb24.e30.AAAA",  /* "not json" */
        "WyJIUzI1NiJd.e30.AAAA", /* ["HS256"] */
        "eyJhbGciOiJIUzI1NiJ9.e30.AAAA.",
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        pd_buf_reset(&tok);
        pd_buf_adds(&tok, shapes[i]);
        memset(&c.user_id, 'x', 5);
        char e[128];
        PD_CHECK(pd_jwt_verify(both, 2, tok.data, tok.len, now, &c, e, sizeof e) == -1);
        PD_CHECK(strncmp(e, "Failed to verify JWT. ", 22) == 0 && c.user_id[0] == 0);
    }
    s_test_hmac(&tok, "not json", payload, secret, slen);
    s_test_verify(&hs, 1, &tok, now, &c, "Invalid token.");
    s_test_hmac(&tok, hs_hdr, "not json", secret, slen);
    s_test_verify(&hs, 1, &tok, now, &c, "Invalid token.");
    //  A bad base64 payload with a valid MAC over its text is still refused.
    pd_buf_reset(&tok);
    s_b64_add(&tok, hs_hdr, strlen(hs_hdr));
    pd_buf_adds(&tok, ".e30=");
    {
        unsigned char mac[32];
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, secret, slen);
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)tok.data, tok.len);
        crypto_auth_hmacsha256_final(&st, mac);
        pd_buf_add(&tok, ".", 1);
        s_b64_add(&tok, mac, sizeof mac);
    }
    s_test_verify(&hs, 1, &tok, now, &c, "Invalid token.");
    PD_CHECK(pd_jwt_verify(both, 2, NULL, 0, now, &c, NULL, 0) == -1); /* err optional */

    //  Cost of one verify (HS256 and EdDSA), for the record.
    if (verbose) {
        snprintf(
            payload, sizeof payload,
            "{\"userId\":\"u1\",\"sessionId\":\"\",\"exp\":9999999999,\"teams\":[\"t1/owner\"]}");
        for (int a = 0; a < 2; a++) {
            pd_buf_reset(&tok);
            if (a == 0)
                pd_jwt_sign_hs256(secret, slen, payload, strlen(payload), &tok);
            else
                pd_jwt_sign_eddsa(sk, payload, strlen(payload), &tok);
            const int iters = a == 0 ? 20000 : 2000;
            int64_t t0 = pd_mono_ms();
            for (int i = 0; i < iters; i++)
                PD_CHECK(pd_jwt_verify(both, 2, tok.data, tok.len, now, &c, err, sizeof err) == 0);
            int64_t t1 = pd_mono_ms();
            printf("   pd_jwt_verify %s: %.2f us\n", a == 0 ? "HS256" : "EdDSA",
                   (double)(t1 - t0) * 1000.0 / iters);
        }
    }

    //  Permissions: every valid form, alone.
    pd_perms_t p;
    pd_perms_init(&p);
    const char *valid[] = {
        "any",
        "guests",
        "users",
        "users/verified",
        "users/unverified",
        "user:abc",
        "user:abc/verified",
        "user:abc/unverified",
        "team:t1",
        "team:t1/owner",
        "team:t1/project-0123456789012345678901234567890123456-developer",
        "member:m1",
        "label:vip",
        "user:0123456789012345678901234567890123a5",
    };
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++) {
        char want[512], perm[256];
        snprintf(perm, sizeof perm, "read(\"%s\")", valid[i]);
        json_t *arr = json_pack("[s]", perm);
        int rc = pd_perms_parse(arr, &p, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "%s: %s\n", perm, err);
        PD_CHECK(rc == 0);
        snprintf(want, sizeof want, "[\"read(\\\"%s\\\")\"]", valid[i]);
        PD_CHECK(p.json.len == strlen(want) && memcmp(p.json.data, want, p.json.len) == 0);
        PD_CHECK(p.read.len == strlen(valid[i]) + 1 && strcmp(p.read.data, valid[i]) == 0);
        PD_CHECK(p.update.len == 0 && p.del.len == 0);
        json_decref(arr);
    }

    //  Every invalid form, with Appwrite's message.
    const char *key36 = "Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, "
                        "period, hyphen, and underscore. Can't start with a special char";
    char m1[512], m2[512], m3[512];
    snprintf(m1, sizeof m1, "Role \"user\" identifier value is invalid: %s", key36);
    snprintf(m2, sizeof m2, "Role \"team\" identifier value is invalid: %s", key36);
    snprintf(m3, sizeof m3,
             "Role \"team\" dimension value is invalid: Parameter must contain at most 81 "
             "chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't "
             "start with a special char");
    struct {
        const char *perm, *err;
    } invalid[] = {
        {"create(\"any\")", "Permission \"create(\"any\")\" is not allowed. Must be one of: "
                            "read, update, delete, write."},
        {"admin(\"any\")", "Permission \"admin(\"any\")\" is not allowed. Must be one of: read, "
                           "update, delete, write."},
        {"", "Permission \"\" is not allowed. Must be one of: read, update, delete, write."},
        {"*", "Wildcard permission \"*\" has been replaced. Use \"any\" instead."},
        {"read(\"*\")", "Wildcard role \"*\" has been replaced. Use \"any\" instead."},
        {"read(\"role:all\")", "Permissions using the \"role:\" prefix have been replaced. Use "
                               "\"users\", \"guests\", or \"any\" instead."},
        {"read(any)", "Invalid permission string format: \"read(any)\"."},
        {"read(\"any\"", "Invalid permission string format: \"read(\"any\"\"."},
        {"read(\"any\") ", "Invalid permission string format: \"read(\"any\") \"."},
        {"read(\"", "Invalid permission string format: \"read(\"\"."},
        {"read(\"a(\"b\")", "Invalid permission string format: \"read(\"a(\"b\")\"."},
        {"reads(\"any\")", "Invalid permission type: \"reads\"."},
        {"read (\"any\")", "Invalid permission type: \"read \"."},
        {"read(\"\")", "Role \"\" is not allowed. Must be one of: any, guests, users, user, "
                       "team, member, label."},
        {"read(\"all\")", "Role \"all\" is not allowed. Must be one of: any, guests, users, "
                          "user, team, member, label."},
        {"read(\"Any\")", "Role \"Any\" is not allowed. Must be one of: any, guests, users, "
                          "user, team, member, label."},
        {"read(\"any:x\")", "Role \"any\" can not have an ID value."},
        {"read(\"any:\")", "Role \"any\" can not have an ID value."},
        {"read(\"guests:x\")", "Role \"guests\" can not have an ID value."},
        {"read(\"users:x\")", "Role \"users\" can not have an ID value."},
        {"read(\"any/verified\")", "Role \"any\" can not have a dimension value."},
        {"read(\"guests/x\")", "Role \"guests\" can not have a dimension value."},
        {"read(\"users/\")", "Dimension must not be empty"},
        {"read(\"users/admin\")", "Role \"users\" dimension value is invalid. Must be one of: "
                                  "verified, unverified."},
        {"read(\"users/verified/x\")", "Only one dimension can be provided"},
        {"read(\"user\")", "Role \"user\" must have an ID value."},
        {"read(\"user:\")", "Role \"user\" must have an ID value."},
        {"read(\"user:/verified\")", "Role \"user\" must have an ID value."},
        {"read(\"user:a b\")", m1},
        {"read(\"user:_a\")", m1},
        {"read(\"user:a:b\")", m1},
        {"read(\"user:0123456789012345678901234567890123456\")", m1},
        {"read(\"user:a/admin\")", "Role \"user\" dimension value is invalid. Must be one of: "
                                   "verified, unverified."},
        {"read(\"team\")", "Role \"team\" must have an ID value."},
        {"read(\"team:t/\")", "Dimension must not be empty"},
        {"read(\"team:t/a/b\")", "Only one dimension can be provided"},
        {"read(\"team:-t\")", m2},
        {"read(\"team:t/-owner\")", m3},
        {"read(\"team:t/"
         "0123456789012345678901234567890123456789012345678901234567890123456789012345678901\")",
         m3},
        {"read(\"member\")", "Role \"member\" must have an ID value."},
        {"read(\"member:m/x\")", "Role \"member\" can not have a dimension value."},
        {"read(\"label\")", "Role \"label\" must have an ID value."},
        {"read(\"label:v-ip\")", "Role \"label\" identifier value is invalid: Value must be a "
                                 "valid string between 1 and 36 chars containing only "
                                 "alphanumeric chars"},
        {"read(\"label:vip/x\")", "Role \"label\" can not have a dimension value."},
    };
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        s_test_perm_bad(invalid[i].perm, invalid[i].err);
    PD_CHECK(s_test_perms("[\"read(\\\"any\\\")\", 1]", &p, err, sizeof err) == -1);
    PD_CHECK(strcmp(err, "Every permission must be of type string.") == 0);
    PD_CHECK(s_test_perms("[null]", &p, err, sizeof err) == -1);
    PD_CHECK(s_test_perms("{}", &p, err, sizeof err) == -1);
    PD_CHECK(strcmp(err, "Permissions must be an array of strings.") == 0);
    PD_CHECK(pd_perms_parse(NULL, &p, err, sizeof err) == -1);
    {
        //  A long bad permission is quoted, cut at 200 bytes.
        char big[1024] = "read(\"";
        memset(big + 6, 'x', 900);
        strcpy(big + 906, "\")");
        s_test_perms("[]", &p, err, sizeof err);
        json_t *arr = json_pack("[s]", big);
        PD_CHECK(pd_perms_parse(arr, &p, err, sizeof err) == -1);
        PD_CHECK(strlen(err) < 300);
        json_decref(arr);
        char small[16];
        arr = json_pack("[s]", "create(\"any\")");
        PD_CHECK(pd_perms_parse(arr, &p, small, sizeof small) == -1); /* truncated, terminated */
        PD_CHECK(strlen(small) == sizeof small - 1);
        json_decref(arr);
    }

    //  Aggregation: write -> update + delete, dedupe, bytewise sort.
    PD_CHECK(s_test_perms("[\"write(\\\"user:b\\\")\", \"read(\\\"any\\\")\", "
                         "\"update(\\\"user:b\\\")\", \"read(\\\"any\\\")\", "
                         "\"delete(\\\"team:t/owner\\\")\", \"read(\\\"Users\\\")\"]",
                         &p, err, sizeof err) == -1);
    PD_CHECK(s_test_perms("[\"write(\\\"user:b\\\")\", \"read(\\\"any\\\")\", "
                         "\"update(\\\"user:b\\\")\", \"read(\\\"any\\\")\", "
                         "\"delete(\\\"team:t/owner\\\")\", \"read(\\\"users\\\")\", "
                         "\"read(\\\"team:T\\\")\", \"update(\\\"user:a\\\")\"]",
                         &p, err, sizeof err) == 0);
    static const char agg[] = "[\"delete(\\\"team:t/owner\\\")\",\"delete(\\\"user:b\\\")\","
                              "\"read(\\\"any\\\")\",\"read(\\\"team:T\\\")\","
                              "\"read(\\\"users\\\")\",\"update(\\\"user:a\\\")\","
                              "\"update(\\\"user:b\\\")\"]";
    PD_CHECK(p.json.len == sizeof agg - 1 && memcmp(p.json.data, agg, p.json.len) == 0);
    PD_CHECK(S_LIST_EQ(&p.read, "any\0team:T\0users\0"));
    PD_CHECK(S_LIST_EQ(&p.update, "user:a\0user:b\0"));
    PD_CHECK(S_LIST_EQ(&p.del, "team:t/owner\0user:b\0"));
    json_t *back = json_loadb(p.json.data, p.json.len, 0, NULL);
    PD_CHECK(json_array_size(back) == 7);
    json_decref(back);
    PD_CHECK(s_test_perms("[]", &p, err, sizeof err) == 0);
    PD_CHECK(S_LIST_EQ(&p.json, "[]") && p.read.len == 0 && p.update.len == 0 && p.del.len == 0);

    //  At most 100 entries (before aggregation: 100 writes give 200 strings).
    for (int k = 0; k < 2; k++) {
        json_t *arr = json_array();
        for (int i = 0; i < 100 + k; i++) {
            char perm[64];
            snprintf(perm, sizeof perm, "write(\"user:u%03d\")", i);
            json_array_append_new(arr, json_string(perm));
        }
        int rc = pd_perms_parse(arr, &p, err, sizeof err);
        if (k == 0) {
            PD_CHECK(rc == 0);
            json_t *j = json_loadb(p.json.data, p.json.len, 0, NULL);
            PD_CHECK(json_array_size(j) == 200);
            PD_CHECK(strcmp(json_string_value(json_array_get(j, 0)), "delete(\"user:u000\")") == 0);
            PD_CHECK(strcmp(json_string_value(json_array_get(j, 199)), "update(\"user:u099\")") ==
                    0);
            json_decref(j);
        } else {
            PD_CHECK(rc == -1 && strcmp(err, "You can only provide up to 100 permissions.") == 0);
            PD_CHECK(p.json.len == 0);
        }
        json_decref(arr);
    }

    //  Owner default: literal, not aggregated.
    {
        //  The direct path writes what the general one (snprintf, sort, build) would.
        const char *users[] = {"U", "alice", "a.b-c_9", "x123456789012345678901234567890abcde"};
        for (size_t i = 0; i < sizeof users / sizeof *users; i++) {
            pd_perms_t q;
            pd_perms_init(&q);
            pd_str_t u = pd_str(users[i]);
            pd_perms_default(u, &p);
            s_perm_text_t v[4];
            static const char *const t[] = {"delete", "read", "update", "write"};
            for (int k = 0; k < 4; k++)
                snprintf(v[k].s, PD_PERM_TEXT_MAX, "%s(\"user:%.*s\")", t[k], (int)u.len, u.ptr);
            s_perms_build(v, 4, &q);
            const pd_buf_t *a[] = {&p.json, &p.read, &p.update, &p.del};
            const pd_buf_t *b[] = {&q.json, &q.read, &q.update, &q.del};
            for (int k = 0; k < 4; k++)
                PD_CHECK(a[k]->len == b[k]->len && memcmp(a[k]->data, b[k]->data, a[k]->len) == 0);
            pd_perms_free(&q);
        }
    }
    pd_perms_default(PD_STR("U"), &p);
    static const char def[] = "[\"delete(\\\"user:U\\\")\",\"read(\\\"user:U\\\")\","
                              "\"update(\\\"user:U\\\")\",\"write(\\\"user:U\\\")\"]";
    PD_CHECK(p.json.len == sizeof def - 1 && memcmp(p.json.data, def, p.json.len) == 0);
    PD_CHECK(S_LIST_EQ(&p.read, "user:U\0") && S_LIST_EQ(&p.update, "user:U\0") &&
            S_LIST_EQ(&p.del, "user:U\0"));

    //  Grants: a caller may only name roles it holds.
    static const char u_roles[] = "any\0users\0user:U\0users/verified\0user:U/verified\0team:T\0";
    pd_str_t ur = {u_roles, sizeof u_roles - 1};
    PD_CHECK(pd_perms_check_grant(&p, ur, err, sizeof err) == 0);
    PD_CHECK(s_test_perms("[\"read(\\\"any\\\")\", \"read(\\\"users\\\")\", "
                         "\"write(\\\"team:T\\\")\", \"update(\\\"user:U/verified\\\")\"]",
                         &p, err, sizeof err) == 0);
    PD_CHECK(pd_perms_check_grant(&p, ur, err, sizeof err) == 0);
    PD_CHECK(s_test_perms("[]", &p, err, sizeof err) == 0);
    PD_CHECK(pd_perms_check_grant(&p, ur, err, sizeof err) == 0);
    const char *refused[] = {"[\"read(\\\"user:other\\\")\"]", "[\"write(\\\"team:T/owner\\\")\"]",
                             "[\"read(\\\"any\\\")\", \"delete(\\\"guests\\\")\"]",
                             "[\"update(\\\"users/unverified\\\")\"]"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        PD_CHECK(s_test_perms(refused[i], &p, err, sizeof err) == 0);
        PD_CHECK(pd_perms_check_grant(&p, ur, err, sizeof err) == -1);
        PD_CHECK(strcmp(err, "Permissions must be one of: (any, users, user:U, users/verified, "
                            "user:U/verified, team:T)") == 0);
    }
    pd_buf_reset(&roles);
    pd_roles_guest(&roles);
    PD_CHECK(s_test_perms("[\"read(\\\"any\\\")\", \"read(\\\"guests\\\")\"]", &p, err,
                         sizeof err) == 0);
    PD_CHECK(pd_perms_check_grant(&p, (pd_str_t){roles.data, roles.len}, err, sizeof err) == 0);
    PD_CHECK(s_test_perms("[\"read(\\\"users\\\")\"]", &p, err, sizeof err) == 0);
    PD_CHECK(pd_perms_check_grant(&p, (pd_str_t){roles.data, roles.len}, err, sizeof err) == -1);
    PD_CHECK(strcmp(err, "Permissions must be one of: (any, guests)") == 0);
    pd_perms_free(&p);

    //  API keys: deterministic keyed hash, constant-time compare, fresh secrets.
    char h1[65], h2[65], h3[65], key[52], key2[52];
    pd_key_hash("pd_secret", 9, h1);
    pd_key_hash("pd_secret", 9, h2);
    pd_key_hash("pd_secreT", 9, h3);
    PD_CHECK(strlen(h1) == 64 && strcmp(h1, h2) == 0 && strcmp(h1, h3) != 0);
    PD_CHECK(pd_key_hash_eq(h1, h2) && !pd_key_hash_eq(h1, h3));
    PD_CHECK(!pd_key_hash_eq(h1, "abc") && !pd_key_hash_eq(NULL, h1));
    unsigned char raw[32];
    crypto_generichash(raw, 32, (const unsigned char *)"pd_secret", 9, NULL, 0);
    char unkeyed[65];
    sodium_bin2hex(unkeyed, sizeof unkeyed, raw, 32);
    PD_CHECK(strcmp(unkeyed, h1) != 0); /* the domain key is in use */
    pd_key_generate(key);
    pd_key_generate(key2);
    PD_CHECK(strlen(key) == 51 && memcmp(key, "pd_", 3) == 0 && strcmp(key, key2) != 0);
    for (int i = 3; i < 51; i++)
        PD_CHECK((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f'));

    pd_jwt_claims_free(&c);
    pd_buf_free(&t2);
    pd_buf_free(&tok);
    pd_buf_free(&roles);
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(sk2, sizeof sk2);
}
