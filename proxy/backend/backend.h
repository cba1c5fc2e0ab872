/* backend — a path behind one interface: the proxy routes, then calls
 * these operations whatever the path speaks.  Three implementations: the
 * new path, Celery messages on kombu's Redis lists (celery_redis_new,
 * proxy/celery_redis.c: it writes the proxy's route record in the same
 * script, so it lives beside the records), and two legacy queues: the HTTP
 * Queue Service protocol of turnout-legacyd (legacy_http_new,
 * legacy_http.c) and RQ's own Redis layout, run by real `rq worker`
 * processes (legacy_rq_new, legacy_rq.c).  README "Writing a backend" has
 * the contract.
 *
 * Every operation either starts (true: its callback is called exactly once,
 * later, from the event loop, never from inside the call) or does not
 * (false: the callback is never called).  The result is one type,
 * bk_result; a task's doc is in the Queue Service protocol's words
 * ({eval_id, status: queued|processing|completed|failed|cancelled (or the
 * API's own words: running, retrying, timeout), outcome,
 * output, error, exit_code, duration_s, queued_at, started_at,
 * completed_at, position}), whatever the backend, so status, cancel,
 * completion tracking, shadow comparison and the dashboard read every
 * backend alike.  The doc is borrowed: valid during the callback only. */
#ifndef TURNOUT_LEGACY_BACKEND_H
#define TURNOUT_LEGACY_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

typedef struct json_t json_t;

enum bk_outcome {
    BK_OK = 0,
    BK_TIMEOUT,     /* -> 504 */
    BK_UNREACHABLE, /* connect refused / reset -> 502 */
    BK_BAD_STATUS,  /* legacy answered with an error status -> 502 */
    BK_BAD_REPLY,   /* a 2xx that is not the protocol's JSON -> 502 */
    BK_CONFLICT,    /* 409: the eval_id is already known there (submit), or the task
                           is running / finished (cancel: doc's "error" says which) */
    BK_NOT_FOUND,   /* 404: no such task (task calls only) */
    BK_INTERNAL,        /* could not even start the call (OOM) -> 503 */
    BK_DOWN,            /* the backend's connection is down: nothing was sent */
    BK_REFUSED,         /* its store answered the command with an error: nothing done */
    BK_FULL,            /* the queue is at its ceiling: nothing done (`detail` says which) */
};

typedef struct bk_result {
    enum bk_outcome outcome;
    long status;          /* legacy's HTTP status, 0 if none */
    long long position;   /* queue position reported by legacy, -1 unknown */
    const char *detail;   /* human text; borrowed, valid during the callback */
    json_t *doc;          /* the reply's JSON when it had one; borrowed, valid during the callback */
    bool too_large;       /* BK_BAD_REPLY because the reply is over the client's max_reply_bytes:
                             it will not get smaller, asking again gives the same */
    bool maybe_done;      /* a failed call that may still have acted there (its request went out: a
                             timeout, a connection lost after sending, an unreadable 2xx) */
    const char *existing; /* submit, BK_CONFLICT of a backend that writes_record: the route record
                             stored under the eval_id (borrowed, valid during the callback) */
} bk_result;

typedef void (*bk_cb)(const bk_result *r, void *arg);

/* The longest detail text a backend gives (a result's `detail`). */
#define BK_DETAIL_MAX 300

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
bool bk_reply_unreadable(const bk_result *r);

/* A task's legacy status in the API's words (queued, running, completed,
 * failed, timeout, cancelled); NULL when the doc has no known status. */
const char *bk_normalized_status(json_t *task);


/* One submission, borrowed until the callback has been called (or submit
 * returned false). */
typedef struct bk_job {
    const char *eval_id;
    const char *code;
    size_t code_len;
    const char *language, *engine;
    int timeout;               /* seconds */
    int priority;              /* 0 (highest) .. 9 */
    const char *priority_name; /* high, default, low, p0..p9 */
    const char *record;        /* the route record (for a backend that writes_record) */
    double submitted_at;       /* wall clock, seconds */
} bk_job;

typedef struct backend_ops {
    const char *name;   /* "celery_redis", or LEGACY_BACKEND's value: "http", "rq" */
    bool can_terminate; /* cancel_task can stop a running task */
    /* submit writes the route record with the job, atomically: a CONFLICT
     * carries the stored record (`existing`), and a submit that may have
     * acted (maybe_done) is settled by reading the record back.  Without
     * it the proxy claims the record before submit and keeps it marked
     * unconfirmed when the outcome is unknown. */
    bool writes_record;
    /* A queued job cannot be looked up (a Redis list is not indexed):
     * get_task answers NOT_FOUND for it, and a route record of this path
     * with nothing found means "queued". */
    bool queued_unindexed;
    /* The proxy's own store: its failures are the proxy's (503 with
     * Retry-After, error code `error_code`), not a gateway's (502, 504
     * with `timeout_code`). */
    bool own_store;
    const char *error_code;   /* the API's error code for its failures */
    const char *timeout_code; /* and for its timeouts */
    /* BK_OK (position when known), BK_CONFLICT when the eval_id is
     * already there, else an error outcome (maybe_done when it may have
     * been queued all the same). */
    bool (*submit)(void *impl, const bk_job *job, bk_cb cb, void *arg);
    /* BK_OK with the task doc, or BK_NOT_FOUND. */
    bool (*get_task)(void *impl, const char *eval_id, bk_cb cb, void *arg);
    /* BK_OK: cancelled (a queued task), or, with `terminate`, a running
     * one told to stop; BK_CONFLICT: running (no terminate, or the
     * backend cannot stop it) or finished; BK_NOT_FOUND. */
    bool (*cancel_task)(void *impl, const char *eval_id, bool terminate, bk_cb cb, void *arg);
    /* BK_OK with {queued, processing, queue_length, total_tasks}. */
    bool (*queue_status)(void *impl, bk_cb cb, void *arg);
    /* BK_OK when the backend can take work (for /readyz). */
    bool (*health)(void *impl, bk_cb cb, void *arg);
    void (*destroy)(void *impl);
} backend_ops;

typedef struct backend {
    const backend_ops *ops;
    void *impl;
} backend;

/* A backend of ops over impl (owned); NULL on OOM (impl destroyed). */
backend *backend_new(const backend_ops *ops, void *impl);
void backend_free(backend *b);
const char *backend_name(const backend *b);
bool bk_can_terminate(const backend *b);

bool bk_submit(backend *b, const bk_job *job, bk_cb cb, void *arg);
bool bk_get_task(backend *b, const char *eval_id, bk_cb cb, void *arg);
bool bk_cancel_task(backend *b, const char *eval_id, bool terminate, bk_cb cb, void *arg);
bool bk_queue_status(backend *b, bk_cb cb, void *arg);
bool bk_health(backend *b, bk_cb cb, void *arg);

/* What a failed result means for a client, in one place: the HTTP status
 * (502, 503, 504) and the API's error code, for a backend `b`. */
int bk_http_status(const backend *b, const bk_result *r, const char **code);

#endif
