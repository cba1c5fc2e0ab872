/* legacy_client — the proxy's side of the legacy Queue Service protocol
 * (DESIGN §7), over the shared asynchronous HTTP client. */
#ifndef TURNOUT_LEGACY_CLIENT_H
#define TURNOUT_LEGACY_CLIENT_H

#include <stdbool.h>

#include "httpc.h"

typedef struct legacy_client legacy_client;

enum legacy_outcome {
    LEGACY_OK = 0,
    LEGACY_TIMEOUT,     /* -> 504 */
    LEGACY_UNREACHABLE, /* connect refused / reset -> 502 */
    LEGACY_BAD_STATUS,  /* legacy answered with an error status -> 502 */
    LEGACY_BAD_REPLY,   /* a 2xx that is not the protocol's JSON -> 502 */
    LEGACY_CONFLICT,    /* 409: the eval_id is already known there */
    LEGACY_INTERNAL,    /* could not even start the call (OOM) -> 503 */
};

typedef struct legacy_result {
    enum legacy_outcome outcome;
    long status;          /* legacy's HTTP status, 0 if none */
    long long position;   /* queue position reported by legacy, -1 unknown */
    const char *detail;   /* human text; borrowed, valid during the callback */
} legacy_result;

typedef void (*legacy_cb)(const legacy_result *r, void *arg);

/* Borrowed httpc and base_url must outlive the client. */
legacy_client *legacy_client_new(httpc *h, const char *base_url, long timeout_ms);
void legacy_client_free(legacy_client *lc);

/* POST /tasks.  Returns the in-flight request (cancel with httpc_cancel), or
 * NULL when it could not start (cb never called). */
httpc_req *legacy_submit(legacy_client *lc, const char *eval_id, const char *code, size_t code_len,
                         const char *language, const char *engine, int timeout,
                         const char *priority, legacy_cb cb, void *arg);

/* GET /health (for /readyz). */
httpc_req *legacy_health(legacy_client *lc, legacy_cb cb, void *arg);

#endif
