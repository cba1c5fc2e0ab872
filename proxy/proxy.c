#include "proxy.h"
#include "pserver.h"
#include "reply.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "canary.h"
#include "cancel_api.h"
#include "celery.h"
#include "batch_api.h"
#include "completion.h"
#include "dispatch.h"
#include "dlq_api.h"
#include "endpoints.h"
#include "records.h"
#include "rollout.h"
#include "shadow.h"
#include "stats.h"
#include "status_api.h"
#include "httpc.h"
#include "backends.h"
#include "log.h"
#include "pmetrics.h"
#include "producer.h"
#include "rclient.h"
#include "router.h"
#include "submission.h"
#include "util.h"

#define MAX_HEADERS_BYTES (64 * 1024)
#define EVHTTP_BODY_CEILING_EXTRA (1024 * 1024) /* evhttp's own HTML 413 starts above this */
#define DEPTH_POLL_S 2
#define PASSTHROUGH_MAX_RESPONSE (64 * 1024 * 1024)

/* ---------- POST /api/eval ---------- */

static void on_submitted(const dispatch_result *res, void *arg)
{
    preq *r = arg;
    r->path = res->path;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    if (res->path != PATH_NONE) evhttp_add_header(out, "X-Turnout-Path", route_path_names[res->path]);
    if (res->retry_after > 0) {
        char n[16];
        snprintf(n, sizeof(n), "%d", res->retry_after);
        evhttp_add_header(out, "Retry-After", n);
    }
    px_finish_text(r, res->status, res->body, res->body_len);
}

static void handle_submit(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    const char *sticky = NULL;
    if (!px_accept_json_post(p, req, RT_SUBMIT, t0, "use POST /api/eval with a JSON body", &sticky)) return;
    preq *r = px_req_new(p, req, RT_SUBMIT, t0);
    if (!r) {
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_SUBMIT, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    sub_error serr;
    const char *text = len ? (const char *)evbuffer_pullup(body, -1) : "";
    if (submission_parse(text, len, &p->cfg, &r->sub, &serr) != 0) {
        px_count_reject(p, serr.status == 400 ? RJ_BAD_JSON : RJ_INVALID_FIELD);
        px_finish_error(r, serr.status, serr.code, serr.message, 0);
        return;
    }
    dispatch_start(p, &r->sub, sticky, on_submitted, r);
}

/* ---------- /healthz, /readyz, /metrics ---------- */

static void readyz_done(preq *r)
{
    if (--r->checks_left > 0) return;
    bool ok = r->redis_ok && r->legacy_ok;
    json_t *o = json_pack("{s:s, s:s, s:s}", "status", ok ? "ready" : "not_ready", "redis",
                          r->redis_ok ? "up" : "down", "legacy", r->legacy_ok ? "up" : "down");
    if (o && !ok) {
        json_t *down = json_array();
        if (!r->redis_ok) json_array_append_new(down, json_string("redis"));
        if (!r->legacy_ok) json_array_append_new(down, json_string("legacy"));
        json_object_set_new(o, "down", down);
    }
    px_finish_json(r, ok ? 200 : 503, o);
    json_decref(o);
}

static void on_ready_redis(struct redisReply *reply, const char *err, void *arg)
{
    preq *r = arg;
    (void)err;
    r->redis_ok = reply && reply->type == REDIS_REPLY_STATUS;
    readyz_done(r);
}

static void on_ready_legacy(const legacy_result *res, void *arg)
{
    preq *r = arg;
    r->legacy_ok = res->outcome == LEGACY_OK;
    readyz_done(r);
}

static void handle_readyz(proxy *p, struct evhttp_request *req, double t0)
{
    preq *r = px_req_new(p, req, RT_PROBE, t0);
    if (!r) {
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "the proxy is short of memory", 1);
        return;
    }
    r->checks_left = 3; /* two checks + this function's own hold */
    static const char *ping[] = {"PING"};
    static const size_t pinglen[] = {4};
    if (rclient_command(p->broker, on_ready_redis, r, 1, ping, pinglen) != 0) {
        r->redis_ok = false;
        r->checks_left--;
    }
    if (!legacy_health(p->legacy, on_ready_legacy, r)) {
        r->legacy_ok = false;
        r->checks_left--;
    }
    readyz_done(r);
}

static void handle_metrics(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (metrics_render(p->m.reg, out) != 0) {
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "could not render metrics", 1);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

/* ---------- pass-through ---------- */

static const char *method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "GET";
}

/* Connection-level headers (RFC 9110 §7.6.1) and those curl/evhttp set. */
static bool hop_by_hop(const char *name)
{
    static const char *const skip[] = {"connection", "keep-alive", "proxy-connection", "te",
                                       "trailer", "transfer-encoding", "upgrade", "host",
                                       "content-length", "expect", "proxy-authorization",
                                       "proxy-authenticate"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (strcasecmp(name, skip[i]) == 0) return true;
    return false;
}

/* RFC 9110 §5.6.2 token characters: what a header name is made of. */
static bool token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A request header that cannot be forwarded as it is (a name that is not
 * a token, e.g. with a space, or a value with CR or LF): 400 naming it,
 * instead of letting the upstream call fail.  true when it answered. */
static bool refuse_bad_header(proxy *p, struct evhttp_request *req, double t0, const struct evkeyval *kv)
{
    const char *what = NULL;
    if (!kv->key[0]) what = "an empty name";
    for (const char *q = kv->key; !what && *q; q++)
        if (!token_char((unsigned char)*q)) what = "a name that is not an HTTP token";
    if (!what && strpbrk(kv->value, "\r\n")) what = "a line break in its value";
    if (!what) return false;
    char msg[320];
    util_snprintf(msg, sizeof(msg),
                  "request header \"%.*s\" has %s (names are letters, digits and !#$%%&'*+-.^_`|~); fix or drop it",
                  UTF8_CUT(kv->key, 100), what);
    px_count_reject(p, RJ_INVALID_FIELD);
    px_reply_error(p, req, RT_PASSTHROUGH, t0, 400, "invalid_header", msg, 0);
    return true;
}

static void on_passthrough_done(const httpc_response *resp, void *arg)
{
    preq *r = arg;
    proxy *p = r->p;
    px_hold_in_flight(r, NOT_WAITING);
    if (resp->error != HTTPC_OK) {
        bool timeout = resp->error == HTTPC_ETIMEOUT;
        px_count_upstream_error(p, PATH_NONE, timeout ? UP_TIMEOUT : UP_CONNECT);
        char msg[320];
        util_snprintf(msg, sizeof(msg), "the upstream API (UPSTREAM_API_URL) %s: %s",
                 timeout ? "did not answer in time" : "failed", resp->errmsg ? resp->errmsg : "error");
        px_finish_error(r, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_error", msg, 0);
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const char *line = resp->headers[i];
        const char *colon = strchr(line, ':');
        if (!colon || colon == line) continue;
        char name[256];
        size_t n = (size_t)(colon - line);
        if (n >= sizeof(name)) continue;
        memcpy(name, line, n);
        name[n] = '\0';
        if (hop_by_hop(name)) continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        evhttp_add_header(out, name, v);
    }
    evbuffer_add(evhttp_request_get_output_buffer(r->req), resp->body, resp->body_len);
    int status = (int)resp->status;
    conns_reply_out(p->conns, r->req);
    evhttp_send_reply(r->req, status, util_reason(status), NULL);
    px_count_reply(p, r->route, PATH_NONE, status, r->t0);
    px_req_free(r);
}

static void handle_passthrough(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    char msg[320];
    if (len > (size_t)p->cfg.max_body_bytes) {
        px_count_reject(p, RJ_TOO_LARGE);
        snprintf(msg, sizeof(msg), "the body is %zu bytes; at most %lld are accepted (MAX_BODY_BYTES)", len,
                 p->cfg.max_body_bytes);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 413, "body_too_large", msg, 0);
        return;
    }
    if (p->pending >= (size_t)p->cfg.max_in_flight) {
        px_count_reject(p, RJ_OVERLOAD);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "overloaded", "too many requests in flight; retry shortly", 1);
        return;
    }
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        if (refuse_bad_header(p, req, t0, kv)) return;
    const char *uri = evhttp_request_get_uri(req);
    size_t ulen = strlen(p->cfg.upstream_url);
    while (ulen > 0 && p->cfg.upstream_url[ulen - 1] == '/') ulen--;
    char *url = malloc(ulen + strlen(uri) + 2);
    /* headers: input headers minus hop-by-hop, plus X-Forwarded-For, NULL end */
    size_t nh = 0;
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) nh++;
    char **hdrs = calloc(nh + 2, sizeof(char *));
    preq *r = url && hdrs ? px_req_new(p, req, RT_PASSTHROUGH, t0) : NULL;
    size_t k = 0;
    if (!r) goto oom;
    sprintf(url, "%.*s%s%s", (int)ulen, p->cfg.upstream_url, uri[0] == '/' ? "" : "/", uri);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (hop_by_hop(kv->key)) continue;
        if (asprintf(&hdrs[k], "%s: %s", kv->key, kv->value) < 0) {
            hdrs[k] = NULL;
            goto oom_r;
        }
        k++;
    }
    char *peer = NULL;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    if (peer && asprintf(&hdrs[k], "X-Forwarded-For: %s", peer) >= 0) k++;
    else hdrs[k] = NULL;

    httpc_opts o = {
        .method = method_name(evhttp_request_get_command(req)),
        .url = url,
        .body = len ? (const char *)evbuffer_pullup(body, -1) : NULL,
        .body_len = len,
        .headers = (const char *const *)hdrs,
        .timeout_ms = p->cfg.upstream_timeout_ms,
        .max_response_bytes = PASSTHROUGH_MAX_RESPONSE,
        .want_headers = true,
    };
    char err[256];
    px_hold_in_flight(r, PATH_NONE);
    if (!httpc_start(p->hc, &o, on_passthrough_done, r, err)) {
        /* the headers were checked: what is left is memory, or a call
         * httpc would not make (say so, not "out of memory") */
        if (strcmp(err, "out of memory") == 0) goto oom_r;
        for (size_t i = 0; i < k; i++) free(hdrs[i]);
        free(hdrs);
        free(url);
        px_hold_in_flight(r, NOT_WAITING);
        px_count_upstream_error(p, PATH_NONE, UP_CONNECT);
        util_snprintf(msg, sizeof(msg), "the upstream call (UPSTREAM_API_URL) could not start: %s", err);
        px_finish_error(r, 502, "upstream_error", msg, 0);
        return;
    }
    for (size_t i = 0; i < k; i++) free(hdrs[i]);
    free(hdrs);
    free(url);
    return;
oom_r:
    px_count_reject(p, RJ_OOM);
    for (size_t i = 0; i < k; i++) free(hdrs[i]);
    free(hdrs);
    free(url);
    px_finish_error(r, 503, "out_of_memory", "the proxy could not start the upstream call; retry shortly", 1);
    return;
oom:
    free(hdrs);
    free(url);
    px_count_reject(p, RJ_OOM);
    px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
}

/* ---------- the built-in page ---------- */

extern const unsigned char dashboard_page[]; /* build/gen/dashboard_page.c */
extern const size_t dashboard_page_len;

static void handle_dashboard(proxy *p, struct evhttp_request *req, double t0)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        px_reply_method_not_allowed(p, req, RT_PROBE, t0, "GET", "use GET /dashboard");
        return;
    }
    evhttp_add_header(out, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    /* everything is in the page itself: nothing else may load */
    evhttp_add_header(out, "Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evbuffer_add_reference(evhttp_request_get_output_buffer(req), dashboard_page, dashboard_page_len, NULL, NULL);
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

/* ---------- dispatch ---------- */

/* ---------- the endpoints ---------- */

static void handle_healthz(proxy *p, struct evhttp_request *req, double t0)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    conns_reply_out(p->conns, req);
    util_reply_json(req, 200, ok, sizeof(ok) - 1);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

/* handlers that do not read the path */
#define BY_ROUTE(fn)                                                                         \
    static void fn##_ep(proxy *p, struct evhttp_request *req, const char *path, double t0) \
    {                                                                                        \
        (void)path;                                                                          \
        fn(p, req, t0);                                                                      \
    }
BY_ROUTE(handle_submit)
BY_ROUTE(handle_healthz)
BY_ROUTE(handle_readyz)
BY_ROUTE(handle_metrics)
BY_ROUTE(batch_api_handle)
BY_ROUTE(status_api_queue)
BY_ROUTE(stats_api_handle)
BY_ROUTE(handle_dashboard)
#undef BY_ROUTE

/* Every endpoint the proxy answers itself (endpoints.h: order does not
 * matter); any other path goes to UPSTREAM_API_URL. */
static const endpoint endpoint_table[] = {
    {"/api/eval", RT_SUBMIT, handle_submit_ep},
    {"/api/eval-batch", RT_BATCH, batch_api_handle_ep},
    {"/api/eval-status/*", RT_STATUS, status_api_handle},
    {"/api/eval/*", RT_STATUS, status_api_handle},
    {"/api/eval/*/cancel", RT_CANCEL, cancel_api_handle},
    {"/api/queue-status", RT_STATUS, status_api_queue_ep},
    {"/api/stats", RT_PROBE, stats_api_handle_ep},
    {"/api/dlq/", RT_DLQ, dlq_api_handle},
    {"/api/dlq/*", RT_DLQ, dlq_api_handle},
    {"/admin/rollout", RT_ADMIN, rollout_api_handle},
    {"/admin/rollout/history", RT_ADMIN, rollout_api_handle},
    {"/admin/canary", RT_ADMIN, canary_api_handle},
    {"/admin/canary/", RT_ADMIN, canary_api_handle},
    {"/admin/canary/*", RT_ADMIN, canary_api_handle},
    {"/admin/shadow/mismatches", RT_ADMIN, shadow_api_handle},
    {"/healthz", RT_PROBE, handle_healthz_ep},
    {"/readyz", RT_PROBE, handle_readyz_ep},
    {"/metrics", RT_PROBE, handle_metrics_ep},
    {"/dashboard", RT_PROBE, handle_dashboard_ep},
    {"/dashboard/", RT_PROBE, handle_dashboard_ep},
};
#define NENDPOINTS (sizeof(endpoint_table) / sizeof(endpoint_table[0]))

const endpoint *proxy_endpoints(size_t *n)
{
    *n = NENDPOINTS;
    return endpoint_table;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    proxy *p = arg;
    double t0 = util_monotonic();
    conns_request_in(p->conns, req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) path = "/";
    if (p->draining)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");

    const endpoint *e = endpoints_match(endpoint_table, NENDPOINTS, path);
    if (e) {
        e->handler(p, req, path, t0);
    } else if (p->cfg.upstream_url[0]) {
        handle_passthrough(p, req, t0);
    } else {
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 404, "not_found",
                        "no such endpoint; set UPSTREAM_API_URL to pass other paths through to the API", 0);
    }
}

/* ---------- queue depth gauge ---------- */

typedef struct depth_ctx {
    proxy *p;
    size_t step;
} depth_ctx;

static void on_depth(struct redisReply *reply, const char *err, void *arg)
{
    depth_ctx *d = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        size_t c[2] = {0, d->step};
        metrics_set(d->p->m.queue_depth, metrics_at(d->p->m.queue_depth, c), (double)reply->integer);
    }
    free(d);
}

static void on_depth_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    proxy *p = arg;
    if (!rclient_is_up(p->broker)) return;
    dlq_api_poll(p);
    for (size_t i = 0; i < CELERY_NSTEPS; i++) {
        char key[256];
        size_t n = celery_queue_key(p->cfg.queue, celery_priority_steps[i], key, sizeof(key));
        depth_ctx *d = malloc(sizeof(*d));
        if (!d || !n) {
            free(d);
            continue;
        }
        d->p = p;
        d->step = i;
        const char *argv[2] = {"LLEN", key};
        size_t lens[2] = {4, n};
        if (rclient_command(p->broker, on_depth, d, 2, argv, lens) != 0) free(d);
    }
}

/* ---------- life cycle ---------- */

static void apply_route_state(proxy *p)
{
    if (p->rollout) {
        rollout_apply(p->rollout); /* the shared state, over the environment */
        return;
    }
    p->route.force_legacy = p->cfg.force_legacy;
    p->route.enabled = p->cfg.celery_enabled;
    p->route.percentage = p->cfg.celery_percentage;
    p->route.sticky = strcmp(p->cfg.routing_mode, "sticky") == 0;
    p->route.salt = p->cfg.rollout_salt;
    metrics_set(p->m.rollout_percentage, 0, p->cfg.celery_percentage);
    metrics_set(p->m.celery_enabled, 0, p->cfg.celery_enabled);
    metrics_set(p->m.force_legacy, 0, p->cfg.force_legacy);
}

static void on_broker_state(rclient *rc, bool up, void *ud)
{
    (void)rc;
    proxy *p = ud;
    if (up) {
        on_depth_timer(-1, 0, p);
        records_flush(p->records);
    }
}

proxy *proxy_new(struct event_base *base, proxy_settings *settings, char err[256])
{
    proxy *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    p->base = base;
    p->cfg = *settings;
    memset(settings, 0, sizeof(*settings));
    if (endpoints_check(endpoint_table, NENDPOINTS, err) != 0) goto err; /* a build's mistake: never serve it */
    if (pmetrics_init(&p->m, p->cfg.queue) != 0) {
        snprintf(err, 256, "out of memory creating metrics");
        goto err;
    }
    apply_route_state(p);
    if (route_seed() != 0) {
        snprintf(err, 256, "cannot seed the random router from the kernel");
        goto err;
    }
    rclient_opts ro = {.command_timeout_ms = p->cfg.redis_timeout_ms,
                       .connect_timeout_ms = p->cfg.redis_timeout_ms,
                       .name = "broker",
                       .on_state = on_broker_state,
                       .ud = p,
                       .track_server_clock = true}; /* route record scripts carry deadlines */
    char rerr[256];
    p->broker = rclient_new(base, p->cfg.broker_url, &ro, rerr);
    if (!p->broker) {
        snprintf(err, 256, "CELERY_BROKER_URL: %.*s", UTF8_CUT(rerr, 200));
        goto err;
    }
    /* issue 3: result records on their own Redis when the backend differs */
    if (p->cfg.result_backend[0] && strcmp(p->cfg.result_backend, p->cfg.broker_url) != 0) {
        rclient_opts rr = {.command_timeout_ms = p->cfg.redis_timeout_ms,
                           .connect_timeout_ms = p->cfg.redis_timeout_ms,
                           .name = "results"};
        p->results = rclient_new(base, p->cfg.result_backend, &rr, rerr);
        if (!p->results) {
            snprintf(err, 256, "CELERY_RESULT_BACKEND: %.*s", UTF8_CUT(rerr, 200));
            goto err;
        }
    }
    p->hc = httpc_new(base, err);
    if (!p->hc) goto err;
    if (!(p->legacy = backends_legacy_new(&p->cfg, base, p->hc, err))) goto err;
    p->prod = producer_new(p->cfg.queue, p->cfg.task_name);
    p->records = records_new(p);
    if (p->records && !(p->completion = completion_new(p, err))) goto err;
    if (!(p->rollout = rollout_new(p, err))) goto err;
    if (!(p->canary = canary_new(p, err))) goto err;
    if (!(p->stats = stats_new(p))) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    p->depth_timer = event_new(base, -1, EV_PERSIST, on_depth_timer, p);
    p->http = evhttp_new(base);
    p->conns = conns_new(base, (size_t)p->cfg.max_client_connections, (long)p->cfg.client_request_timeout_s,
                         p->m.rejected);
    if (!p->legacy || !p->prod || !p->records || !p->depth_timer || !p->http || !p->conns) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    struct timeval every = {DEPTH_POLL_S, 0};
    event_add(p->depth_timer, &every);
    evhttp_set_gencb(p->http, on_request, p);
    evhttp_set_allowed_methods(p->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(p->http, MAX_HEADERS_BYTES);
    evhttp_set_max_body_size(p->http, p->cfg.max_body_bytes + EVHTTP_BODY_CEILING_EXTRA);
    evhttp_set_timeout(p->http, (int)p->cfg.client_timeout_s);
    evhttp_set_bevcb(p->http, conns_plain_bevcb, p->conns); /* TLS replaces it with tls_bevcb */
    return p;
err:
    proxy_free(p);
    return NULL;
}

/* Each accepted connection gets its own TLS session over the socket. */
static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
    proxy *p = arg;
    SSL *ssl = SSL_new(p->tls);
    if (!ssl) return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (!bev) SSL_free(ssl);
    return conns_track(p->conns, bev);
}

static int tls_setup(proxy *p, char err[256])
{
    p->tls = pconfig_tls_context(p->cfg.tls_cert, p->cfg.tls_key, err, 256);
    if (!p->tls) return -1;
    evhttp_set_bevcb(p->http, tls_bevcb, p);
    return 0;
}

/* Out of file descriptors, libevent's listener would retry accept() in a
 * busy loop; instead accepting pauses briefly (connections wait in the
 * kernel backlog), the pause is counted, and existing clients are served. */
#define ACCEPT_PAUSE_MS 100

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    proxy *p = arg;
    struct evconnlistener *l = p->bound ? evhttp_bound_socket_get_listener(p->bound) : NULL;
    if (l) evconnlistener_enable(l);
}

/* The listener's callbacks get evhttp's argument, not ours: one proxy per
 * process owns the listener. */
static proxy *listener_owner;

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)arg;
    proxy *p = listener_owner;
    if (!p) return;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) return; /* transient: libevent goes on */
    evconnlistener_disable(l);
    px_count_reject(p, RJ_FD_LIMIT);
    static double last_log;
    double now = util_monotonic();
    if (now - last_log > 10) { /* once in a while, not a flood */
        last_log = now;
        LOG_WARN("out of file descriptors: accepting paused briefly; raise the open-files limit (ulimit -n)",
                 "error", evutil_socket_error_to_string(e));
    }
    struct timeval pause = {0, ACCEPT_PAUSE_MS * 1000};
    if (p->accept_pause) evtimer_add(p->accept_pause, &pause);
}

/* Room for MAX_CLIENT_CONNECTIONS: the soft open-files limit is raised
 * toward the hard one (as redis does for maxclients); below it, accepting
 * pauses when descriptors run out (fd_limit) before the limit is reached. */
#define FD_RESERVE 256 /* backends, Redis, the listener, logs */

static void fit_open_files(const proxy *p)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)p->cfg.max_client_connections + FD_RESERVE;
    if (rl.rlim_cur >= want) return;
    rlim_t target = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want) ? want : rl.rlim_max;
    if (target > rl.rlim_cur) {
        rl.rlim_cur = target;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) target = 0;
    }
    if (target < want) {
        char have[32], need[32];
        snprintf(have, sizeof(have), "%llu", (unsigned long long)(target ? target : rl.rlim_cur));
        snprintf(need, sizeof(need), "%llu", (unsigned long long)want);
        LOG_WARN("the open-files limit is below MAX_CLIENT_CONNECTIONS + 256; raise it (ulimit -n) or lower "
                 "MAX_CLIENT_CONNECTIONS", "limit", have, "wanted", need);
    }
}

int proxy_listen(proxy *p, char err[256])
{
    fit_open_files(p);
    char host[256];
    int port;
    if (cfg_split_addr(p->cfg.listen, host, sizeof(host), &port) != 0) {
        snprintf(err, 256, "PROXY_LISTEN=\"%s\": must be host:port", p->cfg.listen);
        return -1;
    }
    if (p->cfg.tls_cert[0] && tls_setup(p, err) != 0) return -1;
    p->bound = evhttp_bind_socket_with_handle(p->http, host, (ev_uint16_t)port);
    if (!p->bound) {
        snprintf(err, 256, "PROXY_LISTEN=\"%s\": cannot listen there (in use, or not a local address)",
                 p->cfg.listen);
        return -1;
    }
    struct evconnlistener *l = evhttp_bound_socket_get_listener(p->bound);
    p->accept_pause = evtimer_new(p->base, on_accept_resume, p);
    if (l && p->accept_pause) {
        listener_owner = p;
        evconnlistener_set_error_cb(l, on_accept_error);
    }
    LOG_INFO("listening", "address", p->cfg.listen, "scheme", p->tls ? "https" : "http", "version",
             TURNOUT_VERSION);
    return 0;
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    proxy *p = arg;
    char n[32];
    snprintf(n, sizeof(n), "%zu", p->pending);
    LOG_WARN("shutdown grace over, leaving requests unanswered", "pending", n);
    event_base_loopexit(p->base, NULL);
}

void proxy_drain(proxy *p)
{
    if (p->draining) return;
    p->draining = true;
    char n[32];
    snprintf(n, sizeof(n), "%zu", p->pending);
    LOG_INFO("draining", "pending", n);
    if (p->bound) {
        evhttp_del_accept_socket(p->http, p->bound);
        p->bound = NULL;
    }
    if (p->depth_timer) event_del(p->depth_timer);
    completion_stop(p->completion);
    canary_stop(p->canary);
    p->drain_timer = evtimer_new(p->base, on_drain_deadline, p);
    struct timeval grace = {(time_t)p->cfg.shutdown_grace_s, 0};
    if (p->drain_timer) evtimer_add(p->drain_timer, &grace);
    px_maybe_finish_drain(p);
}

/* What a reload changes in a running proxy; every other setting needs a
 * restart (sockets, connections, TLS, timers sized at start-up) and a
 * changed value is named in the log and kept as it runs. */
void proxy_reload(proxy *p)
{
    if (!p->cfg.env_file[0]) {
        LOG_WARN("SIGHUP ignored: TURNOUT_ENV_FILE is not set");
        return;
    }
    /* the same read as at start-up: the environment, the file over it */
    char errs[4096] = "";
    proxy_settings fresh = {0};
    if (pconfig_read(&fresh, p->cfg.env_file, errs, sizeof(errs)) != 0) {
        for (char *c = errs; *c; c++)
            if (*c == '\n') *c = c[1] ? ';' : '\0';
        LOG_ERROR("reload failed, keeping the old settings", "file", p->cfg.env_file, "errors", errs);
        pconfig_free(&fresh);
        return;
    }
    /* the settings marked live in pconfig_table change now; the rest are kept and named */
    char restart[1024] = "";
    cfg_reload_take(pconfig_table, pconfig_count, &p->cfg, &fresh, restart, sizeof(restart));
    if (restart[0]) LOG_WARN("reload: these settings change only on restart; kept as they run", "settings", restart);
    log_setup(p->cfg.log_level, p->cfg.log_format, NULL);
    pconfig_free(&fresh);
    apply_route_state(p);
    LOG_INFO("reloaded", "file", p->cfg.env_file);
}

void proxy_free(proxy *p)
{
    if (!p) return;
    /* Backends first: their callbacks still reply into live requests. */
    p->draining = true;
    rclient_free(p->broker);
    p->broker = NULL;
    rclient_free(p->results); /* issue 3 */
    p->results = NULL;
    httpc_free(p->hc);
    p->hc = NULL;
    completion_free(p->completion); /* after the backends: their callbacks use it */
    p->completion = NULL;
    rollout_free(p->rollout);
    p->rollout = NULL;
    canary_free(p->canary);
    p->canary = NULL;
    stats_free(p->stats);
    p->stats = NULL;
    if (p->http) evhttp_free(p->http); /* closes every client connection (conns' close callbacks) */
    conns_free(p->conns);
    if (p->drain_timer) event_free(p->drain_timer);
    if (p->depth_timer) event_free(p->depth_timer);
    if (p->accept_pause) event_free(p->accept_pause);
    if (listener_owner == p) listener_owner = NULL;
    producer_free(p->prod);
    records_free(p->records);
    legacy_backend_free(p->legacy);
    pmetrics_free(&p->m);
    pconfig_free(&p->cfg);
    if (p->tls) SSL_CTX_free(p->tls);
    free(p);
}
