/* reply — the request record and the reply helpers every route handler
 * uses, keeping the request metrics, the drain count and the in-flight
 * gauge right.  Every request ends in exactly one reply: either px_reply_*
 * (synchronous) or px_finish_* on a px_req_new() record. */
#ifndef TURNOUT_REPLY_H
#define TURNOUT_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"
#include "pmetrics.h"
#include "router.h"
#include "submission.h"

struct evhttp_request;
typedef struct proxy proxy;
typedef struct json_t json_t;
typedef struct bk_result bk_result;

/* One request that waits on a backend.  Completed by finish() exactly once. */
typedef struct preq {
    proxy *p;
    struct evhttp_request *req;
    enum pm_route route;
    enum route_path path;       /* label for requests_total */
    enum route_path waiting_on; /* in_flight gauge currently held, or NOT_WAITING */
    double t0;
    submission sub;
    route_decision dec;
} preq;

/* waiting_on value when the request waits on no backend */
#define NOT_WAITING PATH_COUNT

/* A request that will be answered later; counts toward the drain. NULL on OOM. */
preq *px_req_new(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);
/* Answer and free the record (the body is not stolen). */
void px_finish_json(preq *r, int status, json_t *body);
/* The same with the body already serialized (NULL: 503 out_of_memory). */
void px_finish_text(preq *r, int status, const char *json, size_t len);
void px_finish_error(preq *r, int status, const char *code, const char *msg, int retry_after);
/* Answer at once, no record. */
void px_reply_error(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, int status,
                    const char *code, const char *msg, int retry_after);
void px_reply_json(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, int status,
                   json_t *body);
/* The one way turnout_in_flight_requests moves: a share held on *held
 * (NOT_WAITING: none) goes to `path`.  px_hold_in_flight is it for a
 * request record; work not tied to one record (a dispatch) keeps its own
 * `held`. */
void px_hold_move(proxy *p, enum route_path *held, enum route_path path);
void px_hold_in_flight(preq *r, enum route_path path);
void px_count_reject(proxy *p, enum pm_reject why);
/* 503 out_of_memory + Retry-After, through `r` when there is one. */
void px_reply_oom(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, preq *r);
/* 405 with an Allow header (`allow`, e.g. "GET") and `usage` as the
 * message; counted as rejected reason "method". */
void px_reply_method_not_allowed(proxy *p, struct evhttp_request *req, enum pm_route route, double t0,
                                 const char *allow, const char *usage);
/* 503 "overloaded" + Retry-After when MAX_IN_FLIGHT requests wait on a
 * backend: true when it answered. */
bool px_refuse_overload(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);
/* The checks every JSON POST endpoint makes before reading the body:
 * method (405 with `usage`), Content-Type (415), MAX_BODY_BYTES (413), the
 * X-Turnout-Sticky-Key header (422; *sticky gets it or NULL), overload
 * (503).  false when it answered. */
bool px_accept_json_post(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, const char *usage,
                         const char **sticky);
void px_count_decision(proxy *p, enum route_path path, enum route_reason reason);
void px_count_upstream_error(proxy *p, enum route_path path, enum pm_upstream why);
/* The one mapping of a failed backend call, whatever the path: the
 * turnout_upstream_errors_total reason of an outcome, and
 * px_backend_failed, which counts it for `path` and gives the HTTP status
 * and the error code to answer with (bk_http_status). */
enum pm_upstream px_upstream_reason(enum bk_outcome o);
int px_backend_failed(proxy *p, enum route_path path, const bk_result *res, const char **code);

/* Frees a record whose reply the caller sent itself (pass-through: after
 * evhttp_send_reply and px_count_reply). */
void px_req_free(preq *r);
/* The request's line in turnout_requests_total and its duration. */
void px_count_reply(proxy *p, enum pm_route route, enum route_path path, int status, double t0);
/* Leaves the loop (after a moment for the last replies to flush) once
 * draining and no request waits any more. */
void px_maybe_finish_drain(proxy *p);

#endif
