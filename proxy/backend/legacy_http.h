/* legacy_http — the HTTP Queue Service protocol of turnout-legacyd, the
 * proxy's side, over the shared asynchronous HTTP client: one
 * implementation of backend.h. */
#ifndef TURNOUT_LEGACY_HTTP_H
#define TURNOUT_LEGACY_HTTP_H

#include <stddef.h>

#include "httpc.h"
#include "backend.h"

/* Which protocol call a reply answers: it decides what a 404 means and
 * whether the body must be a JSON object.  GET /status is read like a task
 * call (a JSON object, 404 = not found). */
enum legacy_call_kind {
    LEGACY_CALL_SUBMIT = 0, /* POST /tasks */
    LEGACY_CALL_HEALTH,     /* GET /health: any 2xx body will do */
    LEGACY_CALL_TASK,       /* GET|DELETE /tasks/{id}, GET /status */
};

/* Classifies one reply of the legacy Queue Service into *out; pure (no I/O),
 * so the fuzzer and unit tests drive it without a server.  `transfer_error`
 * and `errmsg` are the httpc_response's error and errmsg, `status` its HTTP
 * status, body[len] its body.  *doc_out receives the parsed JSON (NULL when
 * none) and is the caller's to json_decref; out->doc is the same pointer.
 * out->detail points at `detail`, into *doc_out or at static text, so both
 * must outlive every use of *out. */
void legacy_parse_reply(enum legacy_call_kind kind, int transfer_error, const char *errmsg,
                        long status, const char *body, size_t len, bk_result *out,
                        json_t **doc_out, char detail[BK_DETAIL_MAX]);

/* The HTTP Queue Service (turnout-legacyd's protocol).  Borrowed httpc and
 * base_url must outlive it.  A reply over max_reply_bytes is
 * BK_BAD_REPLY with too_large set. */
backend *legacy_http_new(httpc *h, const char *base_url, long timeout_ms, size_t max_reply_bytes);

#endif
