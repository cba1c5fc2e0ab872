/* dlq_op — one DLQ admin request waiting on Redis (dlq_api, dlq_retry):
 * its record, its replies, and the read of one entry. */
#include "dlq_op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keys.h"
#include "pserver.h"
#include "util.h"

void dlq_op_free(dlq_op *op)
{
    free(op->expected);
    free(op->message);
    json_decref(op->eval_id);
    json_decref(op->ids);
    free(op);
}

void dlq_op_finish_json(dlq_op *op, int status, json_t *body)
{
    px_finish_json(op->r, status, body);
    json_decref(body);
    dlq_op_free(op);
}

void dlq_op_finish_error(dlq_op *op, int status, const char *code, const char *msg)
{
    px_finish_error(op->r, status, code, msg, 0);
    dlq_op_free(op);
}

void dlq_op_finish_failure(dlq_op *op, const rbatch *b, const char *redis_err, const char *what)
{
    rbatch_finish_failure(op->r, b, redis_err, what);
    dlq_op_free(op);
}

void dlq_op_finish_oom(dlq_op *op)
{
    px_count_reject(op->r->p, RJ_OOM);
    px_finish_error(op->r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    dlq_op_free(op);
}

/* A request record plus its op, waiting on Redis (new path). NULL after
 * replying (overload, OOM). */
dlq_op *dlq_op_new(proxy *p, struct evhttp_request *req, double t0, const char *tid, size_t tid_len)
{
    if (p->pending >= (size_t)p->cfg.max_in_flight) {
        px_count_reject(p, RJ_OVERLOAD);
        px_reply_error(p, req, RT_DLQ, t0, 503, "overloaded",
                       "too many requests are waiting on a backend (MAX_IN_FLIGHT); retry shortly", 1);
        return NULL;
    }
    dlq_op *op = calloc(1, sizeof(*op));
    preq *r = op ? px_req_new(p, req, RT_DLQ, t0) : NULL;
    if (!r) {
        free(op);
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_DLQ, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return NULL;
    }
    op->r = r;
    r->path = PATH_NEW;
    px_hold_in_flight(r, PATH_NEW);
    if (tid) {
        memcpy(op->tid, tid, tid_len);
        op->tid[tid_len] = '\0';
        snprintf(op->entry_key, sizeof(op->entry_key), KEY_DLQ_ENTRY_PREFIX "%s", op->tid);
    }
    return op;
}

/* Starts a batch whose completion goes to `done`; on failure replies. */
rbatch *dlq_op_batch(dlq_op *op, rbatch_done_fn done)
{
    rbatch *b = rbatch_new(done, op);
    if (!b) dlq_op_finish_oom(op);
    return b;
}

void dlq_op_not_found(dlq_op *op)
{
    char msg[400];
    util_snprintf(msg, sizeof(msg), "no dead-letter entry for task_id \"%s\"; GET /api/dlq/list shows the entries",
                  op->tid);
    dlq_op_finish_error(op, 404, "not_found", msg);
}

void dlq_op_start_get(dlq_op *op, rbatch_done_fn done)
{
    rbatch *b = dlq_op_batch(op, done);
    if (!b) return;
    const char *argv[] = {"GET", op->entry_key};
    size_t lens[] = {3, strlen(op->entry_key)};
    rbatch_add(b, op->r->p->broker, 2, argv, lens);
    rbatch_run(b);
}
