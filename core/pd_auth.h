/*  pd_auth — who is calling and what they may do: JWT verification (HS256, EdDSA), API key
 *  hashing, role sets, and permission strings (Appwrite §4). Pure functions over libsodium and
 *  jansson; no I/O, no global state. Used by gateways (every request), presencectl (minting),
 *  and the realtime fan-out (role sets). Never logs or returns a secret. */
#ifndef PD_AUTH_H
#define PD_AUTH_H

#include <jansson.h>

#include "pd_util.h"

#define PD_JWT_MAX_LEN 8192      //  longer tokens are refused before any work
#define PD_PERMS_MAX 100         //  permission strings per record

enum { PD_JWT_HS256 = 1, PD_JWT_EDDSA = 2 };

//  A verification key of a project. HS256: key is the shared secret (any length).
//  EdDSA: key is the 32-byte Ed25519 public key.
typedef struct {
    int alg;
    const unsigned char *key;
    size_t key_len;
} pd_jwt_key_t;

//  Claims presenced uses. teams/labels are packed lists ("T/owner\0T2\0").
typedef struct {
    char user_id[37];   //  from userId, or sub
    int64_t exp;        //  seconds since epoch (0 when absent: refused)
    int64_t nbf;        //  0 when absent
    int verified;       //  -1 absent, 0 false, 1 true
    pd_buf_t teams;
    pd_buf_t labels;
    char role[32];      //  Supabase's role claim ("anon", "service_role", "authenticated"), or ""
    char ref[37];       //  Supabase's ref claim (the project id), or ""
} pd_jwt_claims_t;

void pd_jwt_claims_init(pd_jwt_claims_t *c);
void pd_jwt_claims_free(pd_jwt_claims_t *c);

//  Verifies a compact JWS against any of the keys: the header's alg must be exactly "HS256"
//  or "EdDSA" and match the key's alg; the signature is compared in constant time; exp is
//  required and must be > now_s; nbf, if present, must be <= now_s; userId (or sub) must be a
//  valid UID. Returns 0 and fills *out, or -1 with the reason in err ("Failed to verify JWT.
//  Token has expired."). Tokens longer than PD_JWT_MAX_LEN are refused.
int pd_jwt_verify(const pd_jwt_key_t *keys, size_t nkeys, const char *tok, size_t len,
                  int64_t now_s, pd_jwt_claims_t *out, char *err, size_t errlen);
//  The same for Supabase's tokens, whose user is optional: an anon or service_role key has
//  role and ref and no sub (user_id is then ""); a user token has sub and role. role and ref,
//  when present, must be strings of at most 31 and 36 bytes.
int pd_jwt_verify_sb(const pd_jwt_key_t *keys, size_t nkeys, const char *tok, size_t len,
                     int64_t now_s, pd_jwt_claims_t *out, char *err, size_t errlen);
//  The string claim `name` of a token's payload, NOT verified: only to choose whose keys to
//  verify it with (a Supabase key names its project in ref). Returns 0, or -1 if the token or
//  the claim is malformed, absent, or longer than outlen - 1.
int pd_jwt_peek(const char *tok, size_t len, const char *name, char *out, size_t outlen);
//  Signs payload (a JSON object text) with HS256: header {"typ":"JWT","alg":"HS256"}.
//  Appends the token to out.
void pd_jwt_sign_hs256(const unsigned char *key, size_t key_len, const char *payload,
                       size_t payload_len, pd_buf_t *out);
//  Signs with EdDSA (64-byte libsodium secret key). Appends the token to out.
void pd_jwt_sign_eddsa(const unsigned char sk[64], const char *payload, size_t payload_len,
                       pd_buf_t *out);

//  API keys: only a hash is stored. Keyed BLAKE2b-256 (domain "presenced api key v1"), hex.
//  API key secrets are high-entropy random strings, so a slow password hash is not needed.
void pd_key_hash(const char *secret, size_t len, char out_hex[65]);
//  Constant-time comparison of two 64-char hex hashes. Returns true if equal.
bool pd_key_hash_eq(const char *a_hex, const char *b_hex);
//  A new random secret: "pd_" + 48 hex chars. buf needs 52 bytes.
void pd_key_generate(char *buf);

//  Role sets (packed lists). Guests: any, guests. Users: any, users, user:ID, and with
//  verified known: users/verified|unverified, user:ID/verified|unverified; team:T and
//  team:T/R for each team claim "T/R"; label:L for each label.
void pd_roles_guest(pd_buf_t *roles);
void pd_roles_user(const pd_jwt_claims_t *c, pd_buf_t *roles);

//  Parsed permissions of a record.
typedef struct {
    pd_buf_t json;   //  sorted, de-duplicated JSON array text of the permission strings
    pd_buf_t read;   //  roles holding read (packed list)
    pd_buf_t update; //  roles holding update (write grants update)
    pd_buf_t del;    //  roles holding delete (write grants delete)
} pd_perms_t;

void pd_perms_init(pd_perms_t *p);
void pd_perms_free(pd_perms_t *p);
//  Parses a JSON array of permission strings like "read(\"any\")". Types read, update,
//  delete, write; "create" is refused; at most PD_PERMS_MAX; role syntax as Appwrite §4.
//  write(R) is aggregated to update(R) + delete(R); duplicates are removed; the result is
//  sorted as strings. Returns 0, or -1 with Appwrite's message in err (the caller answers
//  400 general_argument_invalid with "Invalid `permissions` param: <err>").
int pd_perms_parse(const json_t *arr, pd_perms_t *out, char *err, size_t errlen);
//  The owner default: delete/read/update/write of user:U, stored literally (not aggregated).
void pd_perms_default(pd_str_t user, pd_perms_t *out);
//  One role in Appwrite's grammar (any, guests, users, user:ID[/verified], team:T[/R],
//  member:M, label:L): 0, or -1 with Appwrite's message.
int pd_role_check(pd_str_t role, char *err, size_t errlen);

//  A non-key caller may only grant roles it holds: returns 0, or -1 with
//  "Permissions must be one of: (any, users, user:U, ...)" (401 user_unauthorized).
int pd_perms_check_grant(const pd_perms_t *p, pd_str_t caller_roles, char *err, size_t errlen);

void pd_auth_test(bool verbose);

#endif
