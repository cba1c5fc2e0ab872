/* dlq_retry — POST /api/dlq/{task_id}/retry: the entry's Celery message
 * re-published on the queue and priority it came from, the entry, its
 * class count and the revoke marker removed and the result record deleted
 * in one script, checked against the entry as it was read (a task that
 * failed again meanwhile is 409). */
#include "dlq_retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "celery.h"
#include "keys.h"
#include "log.h"
#include "pscripts.h"
#include "pserver.h"
#include "results.h"
#include "util.h"

#define DLQ_INDEX KEY_DLQ_INDEX
#define DLQ_CLASSES KEY_DLQ_CLASSES
#define REVOKED_PREFIX KEY_REVOKED_PREFIX
#define TASK_PREFIX "celery-"
#define KEY_MAX DLQ_KEY_MAX

static void on_retried(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    long long v = rbatch_int(rep, -2);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "re-publishing a DLQ entry");
    } else if (v == 0) {
        dlq_op_not_found(op);
    } else if (v != 1) {
        dlq_op_finish_error(op, 409, "entry_changed",
                        "the DLQ entry changed while being retried (it failed again); GET it and retry again");
    } else {
        LOG_INFO("DLQ entry re-published", "task_id", op->tid, "priority",
                 op->step == 0 ? "0" : op->step == 3 ? "3" : op->step == 6 ? "6" : "9");
        json_t *o = json_pack("{s:s, s:O, s:b, s:i}", "task_id", op->tid, "eval_id", op->eval_id, "requeued", 1,
                              "queue_key_priority", op->step);
        if (!o) dlq_op_finish_oom(op);
        else dlq_op_finish_json(op, 202, o);
    }
    rbatch_free(b);
}

static void start_retry_script(dlq_op *op)
{
    proxy *p = op->r->p;
    char revoked[KEY_MAX], result[KEY_MAX];
    snprintf(revoked, sizeof(revoked), REVOKED_PREFIX "%s", op->tid);
    snprintf(result, sizeof(result), RESULTS_KEY_PREFIX "%s", op->tid);
    bool same_db = p->results == NULL;
    const char *argv[] = {same_db ? "6" : "5", op->entry_key, DLQ_INDEX, DLQ_CLASSES,
                          op->queue_key, revoked, result, op->tid, op->expected, op->message};
    size_t lens[] = {1, strlen(op->entry_key), sizeof(DLQ_INDEX) - 1,
                     sizeof(DLQ_CLASSES) - 1, op->queue_key_len, strlen(revoked), strlen(result),
                     strlen(op->tid), op->expected_len, op->message_len};
    int argc = 10;
    if (!same_db) { /* drop the result key from KEYS */
        for (int i = 6; i < 9; i++) {
            argv[i] = argv[i + 1];
            lens[i] = lens[i + 1];
        }
        argc = 9;
    }
    rbatch *b = dlq_op_batch(op, on_retried);
    if (!b) return;
    rbatch_add_eval(b, p->broker, &pscript_dlq_retry, argc, argv, lens);
    rbatch_run(b);
}

static void on_result_deleted(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep))
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "deleting the result record before a DLQ retry");
    else start_retry_script(op);
    rbatch_free(b);
}

/* Prepares the envelope from the entry: 0, or replies and returns -1. */
static int prepare_retry(dlq_op *op, const char *raw, size_t len)
{
    char err[256], msg[800];
    int rc = -1;
    celery_message m;
    bool decoded = false;
    json_t *e = json_loadb(raw, len, JSON_ALLOW_NUL, NULL);
    const char *text = json_string_value(json_object_get(e, "message"));
    const char *reason = json_string_value(json_object_get(e, "reason"));
    if (!text || celery_decode(text, strlen(text), &m, err) != 0) {
        util_snprintf(msg, sizeof(msg),
                      "the entry of \"%s\" holds no valid Celery message (%.*s, reason %.*s); it cannot be re-published, delete it",
                      op->tid, UTF8_CUT(text ? err : "no message field", 200), UTF8_CUT(reason ? reason : "unknown", 40));
        dlq_op_finish_error(op, 409, "not_retryable", msg);
        goto done;
    }
    decoded = true;
    const char *queue = json_string_value(json_object_get(e, "queue"));
    if (!queue || !*queue) queue = m.routing_key;
    json_t *prio = json_object_get(e, "priority");
    int priority = json_is_integer(prio) ? (int)json_integer_value(prio) : m.priority;
    op->step = celery_priority_step(priority);
    op->queue_key_len = queue ? celery_queue_key(queue, priority, op->queue_key, sizeof(op->queue_key)) : 0;
    if (op->queue_key_len == 0) {
        util_snprintf(msg, sizeof(msg), "the entry of \"%s\" names no usable queue (queue or delivery_info.routing_key)",
                      op->tid);
        dlq_op_finish_error(op, 409, "not_retryable", msg);
        goto done;
    }
    const char *eval_id = json_string_value(json_object_get(e, "eval_id"));
    if (!eval_id && strncmp(op->tid, TASK_PREFIX, sizeof(TASK_PREFIX) - 1) == 0)
        eval_id = op->tid + sizeof(TASK_PREFIX) - 1;
    op->eval_id = eval_id ? json_string(eval_id) : json_null();
    op->message = celery_reencode(&m, 0, NULL, NULL, NULL, &op->message_len);
    op->expected = malloc(len + 1);
    if (!op->eval_id || !op->message || !op->expected) {
        dlq_op_finish_oom(op);
        goto done;
    }
    memcpy(op->expected, raw, len);
    op->expected[len] = '\0';
    op->expected_len = len;
    rc = 0;
done:
    if (decoded) celery_message_free(&m);
    json_decref(e);
    return rc;
}

static void on_retry_read(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "reading a DLQ entry");
        goto done;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        dlq_op_not_found(op);
        goto done;
    }
    if (prepare_retry(op, rep->str, rep->len) != 0) goto done;
    proxy *p = op->r->p;
    if (!p->results) {
        start_retry_script(op);
        goto done;
    }
    /* The result backend is another Redis: its DEL cannot join the broker's
     * script, so it goes first; a retry failing after it leaves PENDING,
     * which is harmless. */
    rbatch *b2 = dlq_op_batch(op, on_result_deleted);
    if (!b2) goto done;
    char key[KEY_MAX];
    snprintf(key, sizeof(key), RESULTS_KEY_PREFIX "%s", op->tid);
    const char *argv[] = {"DEL", key};
    size_t lens[] = {3, strlen(key)};
    rbatch_add(b2, p->results, 2, argv, lens);
    rbatch_run(b2);
done:
    rbatch_free(b);
}

void dlq_retry_start(dlq_op *op) { dlq_op_start_get(op, on_retry_read); }
