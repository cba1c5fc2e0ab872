#include "legacy_backend.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

legacy_backend *legacy_backend_new(const legacy_backend_ops *ops, void *impl)
{
    legacy_backend *b = impl ? malloc(sizeof(*b)) : NULL;
    if (!b) {
        if (impl) ops->destroy(impl);
        return NULL;
    }
    b->ops = ops;
    b->impl = impl;
    return b;
}

void legacy_backend_free(legacy_backend *b)
{
    if (!b) return;
    b->ops->destroy(b->impl);
    free(b);
}

const char *legacy_backend_name(const legacy_backend *b) { return b->ops->name; }

bool legacy_can_terminate(const legacy_backend *b) { return b->ops->can_terminate; }

bool legacy_submit(legacy_backend *b, const legacy_job *job, legacy_cb cb, void *arg)
{
    return b->ops->submit(b->impl, job, cb, arg);
}

bool legacy_get_task(legacy_backend *b, const char *eval_id, legacy_cb cb, void *arg)
{
    return b->ops->get_task(b->impl, eval_id, cb, arg);
}

bool legacy_cancel_task(legacy_backend *b, const char *eval_id, bool terminate, legacy_cb cb, void *arg)
{
    return b->ops->cancel_task(b->impl, eval_id, terminate, cb, arg);
}

bool legacy_queue_status(legacy_backend *b, legacy_cb cb, void *arg) { return b->ops->queue_status(b->impl, cb, arg); }

bool legacy_health(legacy_backend *b, legacy_cb cb, void *arg) { return b->ops->health(b->impl, cb, arg); }

bool legacy_reply_unreadable(const legacy_result *r)
{
    switch (r->outcome) {
    case LEGACY_OK: return legacy_normalized_status(r->doc) == NULL;
    case LEGACY_BAD_REPLY: return true;
    case LEGACY_BAD_STATUS: return r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429;
    default: return false;
    }
}

const char *legacy_normalized_status(json_t *task)
{
    const char *st = json_string_value(json_object_get(task, "status"));
    const char *outcome = json_string_value(json_object_get(task, "outcome"));
    if (!st) return NULL;
    if (strcmp(st, "queued") == 0) return "queued";
    if (strcmp(st, "processing") == 0 || strcmp(st, "running") == 0) return "running";
    if (strcmp(st, "completed") == 0) return "completed";
    if (strcmp(st, "cancelled") == 0) return "cancelled";
    if (strcmp(st, "failed") == 0) {
        if (outcome && (strcmp(outcome, "timeout") == 0 || strcmp(outcome, "executor_timeout") == 0)) return "timeout";
        if (outcome && strcmp(outcome, "killed") == 0) return "cancelled";
        return "failed";
    }
    return NULL;
}
