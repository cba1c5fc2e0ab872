/* dlq_op — one DLQ admin request waiting on Redis: the record the DLQ
 * endpoints share (dlq_api.c: list, stats, read, delete; dlq_retry.c:
 * re-publish), and its replies.  Every dlq_op_finish_* replies once and
 * frees the op. */
#ifndef TURNOUT_DLQ_OP_H
#define TURNOUT_DLQ_OP_H

#include <stddef.h>

#include <stdbool.h>

#include "celery.h"
#include "rbatch.h"
#include "reply.h"

struct evhttp_request;
typedef struct json_t json_t;

#define DLQ_TASK_ID_MAX CELERY_TASK_ID_MAX

/* Query of GET /api/dlq/list. */
typedef struct dlq_query {
    long limit;
    long offset;
    bool has_eval_id;      /* filter on one eval_id */
    char eval_id[129];
} dlq_query;
#define DLQ_KEY_MAX (DLQ_TASK_ID_MAX + 64)

typedef struct dlq_op {
    preq *r;
    char tid[DLQ_TASK_ID_MAX + 1];
    char entry_key[DLQ_KEY_MAX];
    dlq_query q;
    long long total;
    /* retry */
    char *expected;          /* the entry as read: the script checks it is unchanged */
    size_t expected_len;
    char *message;           /* the envelope to re-publish */
    size_t message_len;
    char queue_key[512];
    size_t queue_key_len;
    int step;
    json_t *eval_id;         /* string or null */
    json_t *ids;             /* list: the task ids asked for, in order */
    bool redact;             /* reads: no valid token, so no args, kwargs or message (admin_auth.h) */
} dlq_op;

/* A request record plus its op, waiting on Redis (new path); NULL after
 * replying (overload, OOM).  tid may be NULL (no entry). */
dlq_op *dlq_op_new(proxy *p, struct evhttp_request *req, double t0, const char *tid, size_t tid_len);
void dlq_op_free(dlq_op *op);
void dlq_op_finish_json(dlq_op *op, int status, json_t *body); /* steals body */
void dlq_op_finish_error(dlq_op *op, int status, const char *code, const char *msg);
void dlq_op_finish_failure(dlq_op *op, const rbatch *b, const char *redis_err, const char *what);
void dlq_op_finish_oom(dlq_op *op);
/* 404: no entry for op->tid. */
void dlq_op_not_found(dlq_op *op);
/* A batch whose completion goes to `done`; NULL after replying (OOM). */
rbatch *dlq_op_batch(dlq_op *op, rbatch_done_fn done);
/* GET of op's entry, answered to `done`. */
void dlq_op_start_get(dlq_op *op, rbatch_done_fn done);

#endif
