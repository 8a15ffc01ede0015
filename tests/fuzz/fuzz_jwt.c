/*  fuzz_jwt — libFuzzer target for pd_jwt_verify.
 *  The first byte picks a mode; the rest is the input:
 *    0     the rest is a token, verified against an HS256 and an EdDSA key;
 *    1, 2  the rest is a payload, signed with the HS256 or the EdDSA key and verified, so the
 *          claims parser is reached (random tokens never get past the signature);
 *    3     the rest is a payload signed HS256 with the Ed25519 public key as the HMAC secret
 *          (key confusion): it must never verify.
 *  Whatever verifies must hold a valid userId and an unexpired exp, and give a role set. */
#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#include "pd_auth.h"

//  Always on, also in NDEBUG builds.
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_NOW 1700000000

static const unsigned char s_secret[] = "fuzz shared secret";
static unsigned char s_pk[32], s_sk[64];
static pd_jwt_key_t s_keys[2];

static void
s_setup(void)
{
    static bool done;
    if (done)
        return;
    if (sodium_init() < 0)
        abort();
    unsigned char seed[32] = {1, 2, 3, 4, 5, 6, 7, 8};
    crypto_sign_seed_keypair(s_pk, s_sk, seed);
    s_keys[0] = (pd_jwt_key_t){PD_JWT_HS256, s_secret, sizeof s_secret - 1};
    s_keys[1] = (pd_jwt_key_t){PD_JWT_EDDSA, s_pk, sizeof s_pk};
    done = true;
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    s_setup();
    if (size < 1)
        return 0;
    int mode = data[0] & 3;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;

    pd_buf_t tok, roles;
    pd_buf_init(&tok);
    pd_buf_init(&roles);
    if (mode == 0)
        pd_buf_add(&tok, rest, n);
    else if (mode == 1)
        pd_jwt_sign_hs256(s_secret, sizeof s_secret - 1, rest, n, &tok);
    else if (mode == 2)
        pd_jwt_sign_eddsa(s_sk, rest, n, &tok);
    else
        pd_jwt_sign_hs256(s_pk, sizeof s_pk, rest, n, &tok);

    pd_jwt_claims_t c;
    pd_jwt_claims_init(&c);
    char err[128];
    int rc = pd_jwt_verify(s_keys, 2, tok.data, tok.len, FUZZ_NOW, &c, err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(mode != 3);
        FUZZ_CHECK(pd_uid_valid(pd_str(c.user_id)));
        FUZZ_CHECK(c.exp > FUZZ_NOW && c.nbf <= FUZZ_NOW);
        FUZZ_CHECK(c.verified >= -1 && c.verified <= 1);
        FUZZ_CHECK(c.teams.len == 0 || c.teams.data[c.teams.len - 1] == 0);
        FUZZ_CHECK(c.labels.len == 0 || c.labels.data[c.labels.len - 1] == 0);
        pd_roles_user(&c, &roles);
        FUZZ_CHECK(pd_list_has((pd_str_t){roles.data, roles.len}, PD_STR("users")));
    } else {
        FUZZ_CHECK(strncmp(err, "Failed to verify JWT. ", 22) == 0);
        FUZZ_CHECK(c.user_id[0] == 0 && c.teams.len == 0 && c.labels.len == 0);
    }
    pd_jwt_claims_free(&c);
    pd_buf_free(&roles);
    pd_buf_free(&tok);
    return 0;
}
