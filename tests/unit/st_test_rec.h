/*  st_test_rec — the record the store's unit tests write (st_index_test, st_projects_test): ids
 *  "r<id>" and "u<id>", the given status and metadata, source "rest", readable by anyone, one
 *  instant for every record. The strings live in the trec_t, so it must outlive the record. */
#ifndef ST_TEST_REC_H
#define ST_TEST_REC_H

#include <stdio.h>
#include <string.h>

#include "pd_record.h"
#include "pd_util.h"

typedef struct {
    char id[16], user[16], meta[64], status[8];
    pd_record_t rec;
} trec_t;

//  t->rec for (project, id); status is the raw text (empty when null), status_json its token;
//  t->meta holds the metadata JSON when the caller has written it there first.
static inline void
st_test_rec(trec_t *t, pd_str_t project, int id, pd_str_t status, pd_str_t status_json)
{
    memset(&t->rec, 0, sizeof t->rec);
    snprintf(t->id, sizeof t->id, "r%d", id);
    snprintf(t->user, sizeof t->user, "u%d", id);
    pd_record_t *r = &t->rec;
    r->project = project;
    r->id = pd_str(t->id);
    r->user_id = pd_str(t->user);
    r->status = status;
    r->status_json = status_json;
    r->source = PD_STR("rest");
    r->perms_json = PD_STR("[]");
    r->meta_json = pd_str(t->meta);
    r->read_roles = PD_STR("any");
    r->update_roles = PD_STR("any");
    r->delete_roles = PD_STR("any");
    r->conn = PD_STR("");
    r->created_ms = r->updated_ms = 1700000000000;
    r->expires_ms = 4000000000000;
}

#endif
