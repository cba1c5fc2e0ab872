#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

backend *backend_new(const backend_ops *ops, void *impl)
{
    backend *b = impl ? malloc(sizeof(*b)) : NULL;
    if (!b) {
        if (impl) ops->destroy(impl);
        return NULL;
    }
    b->ops = ops;
    b->impl = impl;
    return b;
}

void backend_free(backend *b)
{
    if (!b) return;
    b->ops->destroy(b->impl);
    free(b);
}

const char *backend_name(const backend *b) { return b->ops->name; }

bool bk_can_terminate(const backend *b) { return b->ops->can_terminate; }

bool bk_submit(backend *b, const bk_job *job, bk_cb cb, void *arg)
{
    return b->ops->submit(b->impl, job, cb, arg);
}

bool bk_get_task(backend *b, const char *eval_id, bk_cb cb, void *arg)
{
    return b->ops->get_task(b->impl, eval_id, cb, arg);
}

bool bk_cancel_task(backend *b, const char *eval_id, bool terminate, bk_cb cb, void *arg)
{
    return b->ops->cancel_task(b->impl, eval_id, terminate, cb, arg);
}

bool bk_queue_status(backend *b, bk_cb cb, void *arg) { return b->ops->queue_status(b->impl, cb, arg); }

bool bk_health(backend *b, bk_cb cb, void *arg) { return b->ops->health(b->impl, cb, arg); }

bool bk_reply_unreadable(const bk_result *r)
{
    switch (r->outcome) {
    case BK_OK: return bk_normalized_status(r->doc) == NULL;
    case BK_BAD_REPLY: return true;
    case BK_BAD_STATUS: return r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429;
    default: return false;
    }
}

const char *bk_normalized_status(json_t *task)
{
    const char *st = json_string_value(json_object_get(task, "status"));
    const char *outcome = json_string_value(json_object_get(task, "outcome"));
    if (!st) return NULL;
    if (strcmp(st, "queued") == 0) return "queued";
    if (strcmp(st, "processing") == 0 || strcmp(st, "running") == 0) return "running";
    if (strcmp(st, "completed") == 0) return "completed";
    if (strcmp(st, "cancelled") == 0) return "cancelled";
    if (strcmp(st, "retrying") == 0) return "retrying";
    if (strcmp(st, "timeout") == 0) return "timeout";
    if (strcmp(st, "failed") == 0) {
        if (outcome && (strcmp(outcome, "timeout") == 0 || strcmp(outcome, "executor_timeout") == 0)) return "timeout";
        if (outcome && strcmp(outcome, "killed") == 0) return "cancelled";
        return "failed";
    }
    return NULL;
}

int bk_http_status(const backend *b, const bk_result *r, const char **code)
{
    if (r->outcome == BK_INTERNAL) {
        *code = "out_of_memory";
        return 503;
    }
    if (b->ops->own_store) {
        *code = b->ops->error_code;
        return 503;
    }
    if (r->outcome == BK_TIMEOUT) {
        *code = b->ops->timeout_code;
        return 504;
    }
    *code = b->ops->error_code;
    return r->outcome == BK_FULL || r->outcome == BK_DOWN ? 503 : 502;
}
