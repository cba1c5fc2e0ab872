/* reply — the proxy's request records and replies: every request ends in
 * exactly one reply, counted once in the request metrics, with the drain
 * count and the in-flight gauge kept right. */
#include "reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "conns.h"
#include "backend.h"
#include "pserver.h"
#include "util.h"

#define STICKY_HEADER "X-Turnout-Sticky-Key"
#define STICKY_MAX 256

/* NOT_WAITING: the work waits on no backend any more. */
void px_hold_move(proxy *p, enum route_path *held, enum route_path path)
{
    if (*held != NOT_WAITING) {
        size_t c = *held;
        metrics_add(p->m.in_flight, metrics_at(p->m.in_flight, &c), -1);
    }
    *held = path;
    if (path != NOT_WAITING) {
        size_t c = path;
        metrics_add(p->m.in_flight, metrics_at(p->m.in_flight, &c), 1);
    }
}

void px_hold_in_flight(preq *r, enum route_path path) { px_hold_move(r->p, &r->waiting_on, path); }

void px_count_reject(proxy *p, enum pm_reject why)
{
    size_t c = why;
    metrics_add(p->m.rejected, metrics_at(p->m.rejected, &c), 1);
}

void px_count_upstream_error(proxy *p, enum route_path path, enum pm_upstream why)
{
    size_t c[2] = {path, why};
    metrics_add(p->m.upstream_errors, metrics_at(p->m.upstream_errors, c), 1);
}

enum pm_upstream px_upstream_reason(enum bk_outcome o)
{
    switch (o) {
    case BK_TIMEOUT: return UP_TIMEOUT;
    case BK_UNREACHABLE: return UP_CONNECT;
    case BK_BAD_STATUS:
    case BK_NOT_FOUND:
    case BK_CONFLICT: return UP_BAD_STATUS;
    case BK_DOWN: return UP_REDIS_DOWN;
    case BK_REFUSED: return UP_REDIS_ERROR;
    case BK_FULL: return UP_QUEUE_FULL;
    default: return UP_BAD_REPLY; /* an unreadable answer, or the call could not start */
    }
}

int px_backend_failed(proxy *p, enum route_path path, const bk_result *res, const char **code)
{
    px_count_upstream_error(p, path, px_upstream_reason(res->outcome));
    return bk_http_status(p->paths[path], res, code);
}

void px_count_decision(proxy *p, enum route_path path, enum route_reason reason)
{
    size_t c[2] = {path, reason};
    metrics_add(p->m.routing_decisions, metrics_at(p->m.routing_decisions, c), 1);
}

void px_count_reply(proxy *p, enum pm_route route, enum route_path path, int status, double t0)
{
    pmetrics_request(&p->m, route, path, status, util_monotonic() - t0);
}

/* The last replies are still in their connections' output buffers when
 * pending reaches 0: give them a moment on loopback-fast links to leave. */
#define DRAIN_FLUSH_US 200000

void px_maybe_finish_drain(proxy *p)
{
    if (p->draining && p->pending == 0) {
        struct timeval flush = {0, DRAIN_FLUSH_US};
        event_base_loopexit(p->base, &flush);
    }
}

void px_req_free(preq *r)
{
    proxy *p = r->p;
    px_hold_in_flight(r, NOT_WAITING);
    submission_free(&r->sub);
    free(r);
    p->pending--;
    px_maybe_finish_drain(p);
}

void px_finish_error(preq *r, int status, const char *code, const char *msg, int retry_after)
{
    conns_reply_out(r->p->conns, r->req);
    util_reply_error(r->req, status, code, msg, retry_after);
    px_count_reply(r->p, r->route, r->path, status, r->t0);
    px_req_free(r);
}

void px_finish_json(preq *r, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (!text) {
        px_count_reject(r->p, RJ_OOM);
        px_finish_error(r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    conns_reply_out(r->p->conns, r->req);
    util_reply_json(r->req, status, text, strlen(text));
    free(text);
    px_count_reply(r->p, r->route, r->path, status, r->t0);
    px_req_free(r);
}

void px_finish_text(preq *r, int status, const char *json, size_t len)
{
    if (!json) {
        px_count_reject(r->p, RJ_OOM);
        px_finish_error(r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    conns_reply_out(r->p->conns, r->req);
    util_reply_json(r->req, status, json, len);
    px_count_reply(r->p, r->route, r->path, status, r->t0);
    px_req_free(r);
}

preq *px_req_new(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    preq *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->p = p;
    r->req = req;
    r->route = route;
    r->path = PATH_NONE;
    r->waiting_on = NOT_WAITING;
    r->t0 = t0;
    p->pending++;
    return r;
}

/* 405 with Allow and how to call it; counted (reason "method"). */
void px_reply_method_not_allowed(proxy *p, struct evhttp_request *req, enum pm_route route, double t0,
                                 const char *allow, const char *usage)
{
    px_count_reject(p, RJ_METHOD);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    px_reply_error(p, req, route, t0, 405, "method_not_allowed", usage, 0);
}

/* A reply that needs no backend. */
void px_reply_error(proxy *p, struct evhttp_request *req, enum pm_route route, double t0,
                            int status, const char *code, const char *msg, int retry_after)
{
    conns_reply_out(p->conns, req);
    util_reply_error(req, status, code, msg, retry_after);
    px_count_reply(p, route, PATH_NONE, status, t0);
}

void px_reply_json(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, int status,
                   json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (!text) {
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, route, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    conns_reply_out(p->conns, req);
    util_reply_json(req, status, text, strlen(text));
    free(text);
    px_count_reply(p, route, PATH_NONE, status, t0);
}

static bool is_json_content_type(const char *ct)
{
    if (!ct) return true; /* no body (xsite refuses a body without the header): the parse says what is missing */
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, "; ");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

void px_reply_oom(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, preq *r)
{
    px_count_reject(p, RJ_OOM);
    if (r) px_finish_error(r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    else px_reply_error(p, req, route, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
}

bool px_refuse_overload(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    if (p->pending < (size_t)p->cfg.max_in_flight) return false;
    px_count_reject(p, RJ_OVERLOAD);
    px_reply_error(p, req, route, t0, 503, "overloaded",
                   "too many requests are waiting on a backend (MAX_IN_FLIGHT); retry shortly", 1);
    return true;
}

bool px_accept_json_post(proxy *p, struct evhttp_request *req, enum pm_route route, double t0, const char *usage,
                         const char **sticky)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    size_t len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
    char msg[320];

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        px_reply_method_not_allowed(p, req, route, t0, "POST", usage);
        return false;
    }
    if (!is_json_content_type(evhttp_find_header(in, "Content-Type"))) {
        px_count_reject(p, RJ_MEDIA_TYPE);
        px_reply_error(p, req, route, t0, 415, "unsupported_media_type",
                        "send the body as JSON with the header Content-Type: application/json", 0);
        return false;
    }
    if (len > (size_t)p->cfg.max_body_bytes) {
        px_count_reject(p, RJ_TOO_LARGE);
        snprintf(msg, sizeof(msg), "the body is %zu bytes; at most %lld are accepted (MAX_BODY_BYTES)", len,
                 p->cfg.max_body_bytes);
        px_reply_error(p, req, route, t0, 413, "body_too_large", msg, 0);
        return false;
    }
    *sticky = evhttp_find_header(in, STICKY_HEADER);
    if (*sticky && (strlen(*sticky) == 0 || strlen(*sticky) > STICKY_MAX)) {
        px_count_reject(p, RJ_INVALID_FIELD);
        snprintf(msg, sizeof(msg), "header %s must be 1 to %d characters", STICKY_HEADER, STICKY_MAX);
        px_reply_error(p, req, route, t0, 422, "invalid_header", msg, 0);
        return false;
    }
    return !px_refuse_overload(p, req, route, t0);
}

