/*  gw_replica — rosters answered from this gateway's own copy of a project's records.
 *
 *  A large roster read through the store nodes costs every node a visit of each of its records,
 *  the broker a merge and the gateway a fetch, for each page (README, Rosters). A gateway that
 *  is asked for large pages of a project keeps a replica of that project's records instead: the
 *  fields a list filters, orders and serves by (pd_record_pack_item), kept up to date by the
 *  bus's events, and answers the project's lists itself.
 *
 *  Building (a list of offset + limit >= GW_REPLICA_MIN_PAGE, while no replica is kept):
 *  the gateway takes the bus (gw_bus_join) and, once every store node has proven on it that it
 *  sends this gateway its events (gw->bus_proven), asks each node on its direct link for a DUMP
 *  of the project: its records and its sequence number SEQ when it answered. Events of the
 *  project that come meanwhile are held; when every node has answered, the dumps are loaded and
 *  the held events applied, each node's after its SEQ only. From then on, every event of the
 *  project (its node's sequence checked by gw_realtime.c, resent if missed) is applied as it
 *  comes: per node, events come in order, and a record lives on one node while the store set
 *  is settled.
 *
 *  Serving, read-your-writes: a write acknowledged to anybody before a list began must be in
 *  the list's answer, though its event may still be on its way. So each list first asks every
 *  node where its events stand (DUMP with FLAGS MARK: GEN, SEQ, EPOCH, the store set), and is
 *  answered from the replica once this gateway has handled every node's events up to that SEQ
 *  (within GW_REPLICA_WAIT_MS; the bus batches events for at most a millisecond or two). It is
 *  sent through the broker instead, as any list, when the replica cannot answer it exactly:
 *  a cursor (the broker probes it), a filter on metadata in a project of more records than a
 *  node's --list-scan-max (the node would refuse it), a node that restarted (GEN), a store set
 *  that changed or is changing (records move between nodes without events: EPOCH, FROM,
 *  TOTAL), a node out of reach, or events that did not come in time. Any of those but the
 *  query's shape also drops the replica. Events lost for good (gw_realtime.c's fallback) drop
 *  every replica.
 *
 *  What a replica answers is what the nodes would: the same filters (pd_query_match; a record's
 *  metadata is parsed once, by the first list that filters on it, and kept), the same order
 *  ($createdAt then $id unless ordered, pd_query_key_cmp), records past their expiry left out
 *  at the list's clock, the caller's read permission, a total capped at 5,000. An equal() on an
 *  attribute the project indexes is answered from the replica's own index of it (buckets of
 *  places, visited in order); when every record visited matches (an API key, no other filter,
 *  nothing expired), the page is a slice and the records before the offset are not read.
 *
 *  Bounds: --list-replica bytes for all replicas (0: none); a project with more records than
 *  that holds is refused by the nodes (DUMP LIMIT) and not tried again for GW_REPLICA_RETRY_MS
 *  (GW_REPLICA_AGAIN_MS after a passing cause: records moving, a node out of reach);
 *  a replica not listed for GW_REPLICA_IDLE_MS is dropped, and the least recently listed go
 *  first when the bytes pass the bound. */
#ifndef GW_REPLICA_H
#define GW_REPLICA_H

#include "gw.h"
#include "pd_query.h"

#define GW_REPLICA_MIN_PAGE 1000    //  a list of offset + limit this large builds a replica
#define GW_REPLICA_WAIT_MS 100      //  a list waits this long for the nodes' events, at most
#define GW_REPLICA_IDLE_MS 60000    //  a replica not listed this long is dropped
#define GW_REPLICA_RETRY_MS 30000   //  after a build that failed, none for the project
#define GW_REPLICA_BUILD_MS 5000    //  a build not done in this long is given up
#define GW_REPLICA_AGAIN_MS 1000    //  after one that failed for a passing cause (records move, a
                                    //  node restarts), none for this long

typedef struct gw_replicas gw_replicas_t;

/*  A list the replica may answer. The strings live as long as req (its pool). fallback sends
 *  the list through the broker, as if the replica did not exist; it is called at most once,
 *  and may be called before gw_replica_list returns. */
typedef struct {
    pd_str_t project;
    pd_str_t roles;     //  the caller's, packed (absent with bypass)
    pd_str_t indexes;   //  the attributes the project indexes, packed (st_index.h)
    bool bypass;        //  an API key: every record readable
    bool total;         //  count the matches (else total is 0)
    int64_t now;        //  the list's clock (ms): records expired by then are left out
    int route;
    int64_t start_ns;
    void (*fallback)(gw_t *gw, h2o_req_t *req, void *arg);
    void *arg;
} gw_replica_list_t;

gw_replicas_t *gw_replica_new(gw_t *gw);
void gw_replica_destroy(gw_replicas_t **self_p);

/*  Takes the list if the project's replica may answer it (then true: q is the replica's, and
 *  the answer or the fallback comes later); false if it goes through the broker (q is still
 *  the caller's). A large list of a project without a replica starts building one. */
bool gw_replica_list(gw_t *gw, h2o_req_t *req, pd_query_t *q, const gw_replica_list_t *l);

//  A bus event, after its node's sequence was checked (gw_realtime.c).
void gw_replica_on_event(gw_t *gw, const pd_msg_t *ev, const pd_record_t *rec);
//  A node's answer to a DUMP (not a mark: those answer a list's pending request).
void gw_replica_on_dump(gw_t *gw, const pd_msg_t *m);
//  The bus's messages of this turn were handled: lists waiting for them are answered.
void gw_replica_on_bus(gw_t *gw);
//  Events were lost, or the bus's socket is new: every replica is dropped.
void gw_replica_drop_all(gw_t *gw, const char *why);
//  No replica kept or being built: the bus is not needed for them.
bool gw_replica_idle(const gw_t *gw);
void gw_replica_tick(gw_t *gw);
void gw_replica_metrics(gw_t *gw, pd_buf_t *b);

#endif
