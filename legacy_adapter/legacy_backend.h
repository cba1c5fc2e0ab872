/* legacy_backend — the legacy queue behind one interface: the proxy routes,
 * then calls these operations whatever the legacy side speaks.  Two
 * implementations: the HTTP Queue Service protocol of turnout-legacyd
 * (legacy_http_new, legacy_client.c) and RQ's own Redis layout, run by real
 * `rq worker` processes (legacy_rq_new, legacy_rq.c).  README "Writing a
 * backend" has the contract.
 *
 * Every operation either starts (true: its callback is called exactly once,
 * later, from the event loop, never from inside the call) or does not
 * (false: the callback is never called).  The result is one type,
 * legacy_result; a task's doc is in the Queue Service protocol's words
 * ({eval_id, status: queued|processing|completed|failed|cancelled, outcome,
 * output, error, exit_code, duration_s, queued_at, started_at,
 * completed_at, position}), whatever the backend, so status, cancel,
 * completion tracking, shadow comparison and the dashboard read every
 * backend alike.  The doc is borrowed: valid during the callback only. */
#ifndef TURNOUT_LEGACY_BACKEND_H
#define TURNOUT_LEGACY_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

#include "legacy_client.h"

/* One submission, borrowed for the call. */
typedef struct legacy_job {
    const char *eval_id;
    const char *code;
    size_t code_len;
    const char *language, *engine;
    int timeout;               /* seconds */
    int priority;              /* 0 (highest) .. 9 */
    const char *priority_name; /* high, default, low, p0..p9 */
} legacy_job;

typedef struct legacy_backend_ops {
    const char *name;   /* LEGACY_BACKEND's value: "http", "rq" */
    bool can_terminate; /* cancel_task can stop a running task */
    /* LEGACY_OK (position when known), LEGACY_CONFLICT when the eval_id is
     * already there, else an error outcome (maybe_done when it may have
     * been queued all the same). */
    bool (*submit)(void *impl, const legacy_job *job, legacy_cb cb, void *arg);
    /* LEGACY_OK with the task doc, or LEGACY_NOT_FOUND. */
    bool (*get_task)(void *impl, const char *eval_id, legacy_cb cb, void *arg);
    /* LEGACY_OK: cancelled (a queued task), or, with `terminate`, a running
     * one told to stop; LEGACY_CONFLICT: running (no terminate, or the
     * backend cannot stop it) or finished; LEGACY_NOT_FOUND. */
    bool (*cancel_task)(void *impl, const char *eval_id, bool terminate, legacy_cb cb, void *arg);
    /* LEGACY_OK with {queued, processing, queue_length, total_tasks}. */
    bool (*queue_status)(void *impl, legacy_cb cb, void *arg);
    /* LEGACY_OK when the backend can take work (for /readyz). */
    bool (*health)(void *impl, legacy_cb cb, void *arg);
    void (*destroy)(void *impl);
} legacy_backend_ops;

typedef struct legacy_backend {
    const legacy_backend_ops *ops;
    void *impl;
} legacy_backend;

/* A backend of ops over impl (owned); NULL on OOM (impl destroyed). */
legacy_backend *legacy_backend_new(const legacy_backend_ops *ops, void *impl);
void legacy_backend_free(legacy_backend *b);
const char *legacy_backend_name(const legacy_backend *b);
bool legacy_can_terminate(const legacy_backend *b);

bool legacy_submit(legacy_backend *b, const legacy_job *job, legacy_cb cb, void *arg);
bool legacy_get_task(legacy_backend *b, const char *eval_id, legacy_cb cb, void *arg);
bool legacy_cancel_task(legacy_backend *b, const char *eval_id, bool terminate, legacy_cb cb, void *arg);
bool legacy_queue_status(legacy_backend *b, legacy_cb cb, void *arg);
bool legacy_health(legacy_backend *b, legacy_cb cb, void *arg);

/* The HTTP Queue Service (turnout-legacyd's protocol).  Borrowed httpc and
 * base_url must outlive it.  A reply over max_reply_bytes is
 * LEGACY_BAD_REPLY with too_large set. */
legacy_backend *legacy_http_new(httpc *h, const char *base_url, long timeout_ms, size_t max_reply_bytes);

#endif
