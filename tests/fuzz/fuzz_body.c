/*  fuzz_body — the REST request-body parser (pd_body_parse) on arbitrary bytes: it accepts or
 *  refuses with an error code and message, never crashes, and what it accepts is well formed
 *  (metadata re-parses as a JSON object within the cap; status is a JSON string token). */
#include <assert.h>
#include <string.h>

#include "pd_body.h"
#include "pd_err.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_body_t b;
    pd_body_init(&b);
    char msg[512];
    int rc = pd_body_parse(&b, (const char *)data, size, 4096, 1700000000000, msg, sizeof msg);
    if (rc == PD_ERR_OK) {
        if (b.has_meta) {
            assert(b.meta_json.len <= 4096);
            json_t *o = json_loadb(b.meta_json.data, b.meta_json.len, 0, NULL);
            assert(o && json_is_object(o));
            json_decref(o);
        }
        if (b.has_status) {
            json_t *s = json_loadb(b.status_json.data, b.status_json.len, JSON_DECODE_ANY, NULL);
            assert(s && json_is_string(s) && json_string_length(s) == b.status.len);
            json_decref(s);
        }
    } else {
        assert(rc > PD_ERR_OK && rc < PD_ERR__COUNT && strlen(msg) > 0);
    }
    pd_body_free(&b);
    return 0;
}
