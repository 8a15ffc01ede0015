/*  pd_err — see pd_err.h. */
#include "pd_err.h"

static const struct {
    int http;
    const char *type;
    const char *msg;
    const char *tail; //  what follows the message in the error body, written at compile time
    size_t tail_len;
} s_errs[] = {
#define PD_ERR_TAIL(http, type) \
    ",\"code\":" #http ",\"type\":\"" type "\",\"version\":\"" PD_APPWRITE_VERSION "\"}"
#define PD_ERR_ROW(name, http, type, msg) \
    {http, type, msg, PD_ERR_TAIL(http, type), sizeof PD_ERR_TAIL(http, type) - 1},
    PD_ERR_MAP(PD_ERR_ROW)
#undef PD_ERR_ROW
#undef PD_ERR_TAIL
};

static int
s_index(int code)
{
    return (code >= 0 && code < PD_ERR__COUNT) ? code : PD_ERR_SERVER_ERROR;
}

int
pd_err_http(int code)
{
    return s_errs[s_index(code)].http;
}

const char *
pd_err_type(int code)
{
    return s_errs[s_index(code)].type;
}

const char *
pd_err_msg(int code)
{
    return s_errs[s_index(code)].msg;
}

void
pd_err_render(pd_buf_t *b, int code, pd_str_t msg)
{
    int i = s_index(code);
    if (!msg.ptr || !msg.len)
        msg = pd_str(s_errs[i].msg);
    pd_buf_adds(b, "{\"message\":");
    pd_buf_add_json_str(b, msg.ptr, msg.len);
    pd_buf_add(b, s_errs[i].tail, s_errs[i].tail_len);
}
