/* dispatch — one validated submission taken to its path: the routing rule,
 * the route record (idempotency), the new path's push or the legacy call,
 * the fallback.  Used by POST /api/eval and by each item of
 * POST /api/eval-batch. */
#ifndef TURNOUT_DISPATCH_H
#define TURNOUT_DISPATCH_H

#include "router.h"
#include "submission.h"

typedef struct proxy proxy;

typedef struct dispatch_result {
    int status;            /* 202 queued or duplicate; 502, 503, 504 */
    enum route_path path;  /* where it went (PATH_NONE: nowhere) */
    bool duplicate;
    const char *body;      /* the reply object as JSON text, borrowed during the
                              callback; NULL when it could not be written (OOM) */
    size_t body_len;
    int retry_after;       /* seconds, for 503 */
} dispatch_result;

typedef void (*dispatch_cb)(const dispatch_result *res, void *arg);

/* Takes over *sub (left zeroed).  `sticky_key` (may be NULL: the eval_id)
 * is only read during the call.  cb is called exactly once, possibly
 * before this returns. */
void dispatch_start(proxy *p, submission *sub, const char *sticky_key, dispatch_cb cb, void *arg);

#endif
