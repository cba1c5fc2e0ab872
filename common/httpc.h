/* httpc — asynchronous HTTP client on a libevent base, no blocking calls.
 * Plain http:// to an IP address goes through hpool (keep-alive pool, one
 * send() per request, see hpool.h); everything else — https, host names,
 * or any request while http_proxy / all_proxy is set — through libcurl
 * multi (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION), which is set up
 * on first use.
 *
 * Every started request completes exactly once through its callback: on a
 * response, on an error, on its timeout, or when the client is freed
 * (error HTTPC_ECANCELLED) — unless the caller cancelled it first with
 * httpc_cancel(), after which the callback is never called. */
#ifndef TURNOUT_HTTPC_H
#define TURNOUT_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;

typedef struct httpc httpc;         /* one per event base */
typedef struct httpc_req httpc_req; /* one in-flight request */

enum httpc_error {
    HTTPC_OK = 0,      /* a response was received (any status) */
    HTTPC_ETIMEOUT,    /* no complete response within timeout_ms */
    HTTPC_ECONNECT,    /* could not connect / resolve / refused */
    HTTPC_ETOOBIG,     /* response body over max_response_bytes */
    HTTPC_ECANCELLED,  /* client freed while the request was in flight */
    HTTPC_EOTHER,      /* any other transfer error */
};

typedef struct httpc_response {
    int error;                  /* enum httpc_error */
    const char *errmsg;         /* human text for error != OK; borrowed */
    long status;                /* HTTP status; 0 when no response */
    const char *body;           /* borrowed, NUL-terminated; valid during callback */
    size_t body_len;
    const char *const *headers; /* "Name: value" lines, borrowed; only if want_headers */
    size_t nheaders;
    double total_s;             /* wall time of the transfer */
    const char *reason;         /* the status line's reason phrase, borrowed ("" when none) */
    bool streamed;              /* a streamed request whose head was already delivered */
} httpc_response;

typedef void (*httpc_done_cb)(const httpc_response *resp, void *arg);

/* Streaming (httpc_opts.stream): the body is handed over as it arrives
 * instead of being collected, so a response of any size passes in bounded
 * memory.  on_head gets the final response head (status, reason, headers;
 * no body) once, then on_data each piece of the body; either returns false
 * to stop reading from the server until httpc_resume.  The done callback
 * then ends the exchange: error HTTPC_OK when the body is complete, or the
 * error that cut it (resp->streamed says whether on_head ran).  Neither
 * callback may cancel the request; max_response_bytes does not apply, and
 * timeout_ms bounds the wait for the head and each silence of the server
 * while reading (not the whole transfer). */
typedef struct httpc_stream {
    bool (*on_head)(const httpc_response *head, void *arg);
    bool (*on_data)(const char *data, size_t n, void *arg);
} httpc_stream;

typedef struct httpc_opts {
    const char *method;               /* "GET", "POST", "PUT", "DELETE", ... */
    const char *url;
    const char *body;                 /* may be NULL; copied by httpc_start */
    size_t body_len;
    const char *const *headers;       /* "Name: value", NULL-terminated; copied */
    long timeout_ms;                  /* whole transfer; required (> 0) */
    long connect_timeout_ms;          /* 0 = timeout_ms */
    size_t max_response_bytes;        /* 0 = 1 MiB */
    bool want_headers;                /* collect response headers */
    const httpc_stream *stream;       /* NULL: collect the body; else see httpc_stream */
} httpc_opts;

/* New client on `base`.  NULL with err filled on failure. */
httpc *httpc_new(struct event_base *base, char err[256]);

/* Completes every in-flight request with HTTPC_ECANCELLED, then frees. */
void httpc_free(httpc *c);

/* Starts a request.  Returns NULL (and the callback is never called) when it
 * cannot be started (out of memory, bad options), with err filled. */
httpc_req *httpc_start(httpc *c, const httpc_opts *opts, httpc_done_cb cb,
                       void *arg, char err[256]);

/* Aborts an in-flight request; its callback will not be called.  Must not be
 * called from inside that request's own callback. */
void httpc_cancel(httpc_req *r);

size_t httpc_in_flight(const httpc *c);

/* A streamed request paused by its on_head/on_data returning false reads
 * from the server again; the next callbacks run from the event loop, never
 * from inside this call. */
void httpc_resume(httpc_req *r);

/* Tests: with on = false, libcurl carries every request from now on
 * (only while nothing is in flight); on = true brings hpool back. */
void httpc_use_pool(httpc *c, bool on);

#endif
