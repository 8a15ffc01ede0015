/*  fuzz_keys — the key-set file parser (pd_keys_parse, what reads every <name>.pub) on arbitrary
 *  bytes: it returns at most max keys or refuses, never crashes, and every key it returns is
 *  one whose Z85 text stands in the input. */
#include <assert.h>
#include <string.h>

#include "pd_keys.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char keys[4][32];
    int n = pd_keys_parse((const char *)data, size, keys, 4);
    assert(n >= -1 && n <= 4);
    for (int i = 0; i < n; i++) {
        char z[PD_KEY_Z85 + 1];
        assert(zmq_z85_encode(z, keys[i], 32));
        assert(memmem(data, size, z, PD_KEY_Z85) != NULL);
    }
    return 0;
}
