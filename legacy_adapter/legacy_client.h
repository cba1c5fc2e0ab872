/* legacy_client — the legacy side's result type, and the proxy's side of
 * the HTTP Queue Service protocol over the shared asynchronous HTTP client
 * (one implementation of legacy_backend.h). */
#ifndef TURNOUT_LEGACY_CLIENT_H
#define TURNOUT_LEGACY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "httpc.h"

typedef struct legacy_client legacy_client;
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

/* Which protocol call a reply answers: it decides what a 404 means and
 * whether the body must be a JSON object.  GET /status is read like a task
 * call (a JSON object, 404 = not found). */
enum legacy_call_kind {
    LEGACY_CALL_SUBMIT = 0, /* POST /tasks */
    LEGACY_CALL_HEALTH,     /* GET /health: any 2xx body will do */
    LEGACY_CALL_TASK,       /* GET|DELETE /tasks/{id}, GET /status */
};

#define LEGACY_DETAIL_MAX 300

/* Classifies one reply of the legacy Queue Service into *out; pure (no I/O),
 * so the fuzzer and unit tests drive it without a server.  `transfer_error`
 * and `errmsg` are the httpc_response's error and errmsg, `status` its HTTP
 * status, body[len] its body.  *doc_out receives the parsed JSON (NULL when
 * none) and is the caller's to json_decref; out->doc is the same pointer.
 * out->detail points at `detail`, into *doc_out or at static text, so both
 * must outlive every use of *out. */
void legacy_parse_reply(enum legacy_call_kind kind, int transfer_error, const char *errmsg,
                        long status, const char *body, size_t len, legacy_result *out,
                        json_t **doc_out, char detail[LEGACY_DETAIL_MAX]);

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

#endif
