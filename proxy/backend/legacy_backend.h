/* legacy_backend — the legacy queue behind one interface: the proxy routes,
 * then calls these operations whatever the legacy side speaks.  Two
 * implementations: the HTTP Queue Service protocol of turnout-legacyd
 * (legacy_http_new, legacy_http.c) and RQ's own Redis layout, run by real
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

typedef struct json_t json_t;

enum legacy_outcome {
    LEGACY_OK = 0,
    LEGACY_TIMEOUT,     /* -> 504 */
    LEGACY_UNREACHABLE, /* connect refused / reset -> 502 */
    LEGACY_BAD_STATUS,  /* legacy answered with an error status -> 502 */
    LEGACY_BAD_REPLY,   /* a 2xx that is not the protocol's JSON -> 502 */
    LEGACY_CONFLICT,    /* 409: the eval_id is already known there (submit), or the task
                           is running / finished (cancel: doc's "error" says which) */
    LEGACY_NOT_FOUND,   /* 404: no such task (task calls only) */
    LEGACY_INTERNAL,    /* could not even start the call (OOM) -> 503 */
};

typedef struct legacy_result {
    enum legacy_outcome outcome;
    long status;          /* legacy's HTTP status, 0 if none */
    long long position;   /* queue position reported by legacy, -1 unknown */
    const char *detail;   /* human text; borrowed, valid during the callback */
    json_t *doc;          /* the reply's JSON when it had one; borrowed, valid during the callback */
    bool too_large;       /* LEGACY_BAD_REPLY because the reply is over the client's max_reply_bytes:
                             it will not get smaller, asking again gives the same */
    bool maybe_done;      /* a failed call that may still have acted there (its request went out: a
                             timeout, a connection lost after sending, an unreadable 2xx) */
} legacy_result;

typedef void (*legacy_cb)(const legacy_result *r, void *arg);

/* The longest detail text a backend gives (a result's `detail`). */
#define LEGACY_DETAIL_MAX 300

/* The default and the bounds of a reply's size (LEGACY_MAX_REPLY_BYTES):
 * a task's reply carries its whole output, which the executor caps at
 * EXECUTOR_OUTPUT_LIMIT (1 MiB by default) and JSON escaping can make up to
 * six times longer (\u0000 for each NUL byte). */
#define LEGACY_MAX_REPLY_DEFAULT (8LL * 1024 * 1024)
#define LEGACY_MAX_REPLY_MIN (64LL * 1024)
#define LEGACY_MAX_REPLY_MAX (1024LL * 1024 * 1024)

/* A task call answered with something a retry is not expected to fix: a
 * 2xx that is not the protocol's JSON object, one whose status turnout does
 * not know, a reply over max_reply_bytes, or a 4xx other than 404, 408 and
 * 429.  (Timeouts, connection errors and 5xx are the service being away.) */
bool legacy_reply_unreadable(const legacy_result *r);

/* A task's legacy status in the API's words (queued, running, completed,
 * failed, timeout, cancelled); NULL when the doc has no known status. */
const char *legacy_normalized_status(json_t *task);


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

#endif
