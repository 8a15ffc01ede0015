/*  gw_realtime — WebSocket connections and the realtime fan-out (being built: issue 3). */
#include "gw.h"
#include "pd_err.h"

void gw_rt_init(gw_t *gw) { (void)gw; }
int
gw_rt_on_req(gw_t *gw, h2o_req_t *req)
{
    gw_respond_err(gw, req, GW_ROUTE_REALTIME, PD_ERR_ROUTE_NOT_FOUND, PD_STR_NULL, gw_now_ns());
    return 0;
}
void gw_rt_on_bus(gw_t *gw, const pd_msg_t *ev) { (void)gw; (void)ev; }
void gw_rt_tick(gw_t *gw) { (void)gw; }
void gw_rt_metrics(gw_t *gw, pd_buf_t *b) { (void)gw; (void)b; }
void gw_rt_shutdown(gw_t *gw) { (void)gw; }
void gw_rt_on_reload(gw_t *gw) { (void)gw; }
