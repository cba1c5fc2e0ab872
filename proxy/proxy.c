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
#include "canary_api.h"
#include "cancel_api.h"
#include "celery.h"
#include "batch_api.h"
#include "completion.h"
#include "dispatch.h"
#include "dlq_api.h"
#include "endpoints.h"
#include "health_api.h"
#include "fwdauth.h"
#include "passthrough.h"
#include "submit_api.h"
#include "records.h"
#include "rollout.h"
#include "shadow.h"
#include "stats.h"
#include "status_api.h"
#include "httpc.h"
#include "backends.h"
#include "celery_redis.h"
#include "log.h"
#include "pmetrics.h"
#include "producer.h"
#include "rclient.h"
#include "router.h"
#include "submission.h"
#include "util.h"
#include "xsite.h"

#define MAX_HEADERS_BYTES (64 * 1024)
#define MAX_TARGET_BYTES (8 * 1024)
#define EVHTTP_BODY_CEILING_EXTRA (1024 * 1024) /* evhttp's own HTML 413 starts above this */
#define DEPTH_POLL_S 2

/* ---------- the endpoints ---------- */

/* handlers that do not read the path */
#define BY_ROUTE(fn)                                                                         \
    static void fn##_ep(proxy *p, struct evhttp_request *req, const char *path, double t0) \
    {                                                                                        \
        (void)path;                                                                          \
        fn(p, req, t0);                                                                      \
    }
BY_ROUTE(submit_api_handle)
BY_ROUTE(health_api_healthz)
BY_ROUTE(health_api_readyz)
BY_ROUTE(health_api_metrics)
BY_ROUTE(batch_api_handle)
BY_ROUTE(status_api_queue)
BY_ROUTE(stats_api_handle)
BY_ROUTE(health_api_dashboard)
#undef BY_ROUTE

/* Every endpoint the proxy answers itself (endpoints.h: order does not
 * matter for the answer, only for speed: submissions first); any other
 * path goes to UPSTREAM_API_URL. */
static const endpoint endpoint_table[] = {
    {"/api/eval", RT_SUBMIT, submit_api_handle_ep},
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
    {"/healthz", RT_PROBE, health_api_healthz_ep},
    {"/readyz", RT_PROBE, health_api_readyz_ep},
    {"/metrics", RT_PROBE, health_api_metrics_ep},
    {"/dashboard", RT_PROBE, health_api_dashboard_ep},
    {"/dashboard/", RT_PROBE, health_api_dashboard_ep},
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
    /* xsite.h: the Host of every request, then browsers' writes from other origins */
    if (!xsite_host_ok(p, req, e ? e->route : RT_PASSTHROUGH, t0)) return;
    if (e && !xsite_write_ok(p, req, e->route, t0)) return;
    if (e && fwdauth_applies(p->auth, path)) {
        fwdauth_check(p->auth, req, e, path, t0); /* fwdauth.h: AUTH_URL vouches first */
    } else if (e) {
        e->handler(p, req, path, t0);
    } else if (p->cfg.upstream_url[0]) {
        passthrough_handle(p, req, t0);
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
    if (!(p->paths[PATH_LEGACY] = backends_legacy_new(&p->cfg, base, p->hc, err))) goto err;
    p->paths[PATH_NEW] = celery_redis_new(p);
    p->prod = producer_new(p->cfg.queue, p->cfg.task_name);
    p->records = records_new(p);
    if (p->records && !(p->completion = completion_new(p, err))) goto err;
    if (!(p->rollout = rollout_new(p, err))) goto err;
    if (!(p->canary = canary_new(p, err))) goto err;
    if (!(p->stats = stats_new(p))) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    bool auth_oom = false;
    p->auth = fwdauth_new(p, &auth_oom);
    if (auth_oom) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    p->depth_timer = event_new(base, -1, EV_PERSIST, on_depth_timer, p);
    p->http = evhttp_new(base);
    /* framing is checked before evhttp parses (h1check): its limits come
     * first, so a request over them gets JSON, never evhttp's own HTML */
    h1_limits limits = {.max_target = MAX_TARGET_BYTES,
                        .max_header_bytes = MAX_HEADERS_BYTES - 1024,
                        /* the handlers answer between MAX_BODY_BYTES and this (their reply
                         * names the endpoint's limit); above it no body is read at all */
                        .max_body = (uint64_t)p->cfg.max_body_bytes + EVHTTP_BODY_CEILING_EXTRA,
                        .body_setting = "MAX_BODY_BYTES + 1 MiB"};
    p->conns = conns_new(base, (size_t)p->cfg.max_client_connections, (long)p->cfg.client_request_timeout_s,
                         p->m.rejected, &limits);
    if (!p->paths[PATH_NEW] || !p->prod || !p->records || !p->depth_timer || !p->http || !p->conns) {
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
    /* a reply without a Content-Type (a pass-through answer without one)
     * is not given libevent's text/html default */
    evhttp_set_default_content_type(p->http, NULL);
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
    fwdauth_free(p->auth);
    p->auth = NULL;
    if (p->http) evhttp_free(p->http); /* closes every client connection (conns' close callbacks) */
    conns_free(p->conns);
    if (p->drain_timer) event_free(p->drain_timer);
    if (p->depth_timer) event_free(p->depth_timer);
    if (p->accept_pause) event_free(p->accept_pause);
    if (listener_owner == p) listener_owner = NULL;
    producer_free(p->prod);
    records_free(p->records);
    for (int i = 0; i < PATH_NONE; i++) backend_free(p->paths[i]);
    pmetrics_free(&p->m);
    pconfig_free(&p->cfg);
    if (p->tls) SSL_CTX_free(p->tls);
    free(p);
}
