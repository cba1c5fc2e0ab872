/* turnout-worker: consumes the Celery-format queue (DESIGN §5, §6), runs
 * each evaluation on an executor, stores results the way Celery does. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>

#include "celery.h"
#include "log.h"
#include "results.h"
#include "util.h"
#include "wcore.h"
#include "wscripts.h"

#define TICK_S 1.0
#define POLL_MIN_S 0.001


bool worker_exec_usable(const worker *w, size_t i)
{
    const executor *e = &w->execs[i];
    return e->capacity > 0 && e->down_until <= util_now();
}

/* ---------- taking messages ---------- */

static void on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker_pump(arg);
}

static void poll_later(worker *w)
{
    struct timeval tv = {(time_t)w->poll_delay, (suseconds_t)((w->poll_delay - floor(w->poll_delay)) * 1e6)};
    if (!evtimer_pending(w->poll_timer, NULL)) evtimer_add(w->poll_timer, &tv);
    w->poll_delay = fmin(w->poll_delay * 2, w->cfg.poll_max_s);
}

static void on_taken(redisReply *r, const char *err, void *arg)
{
    worker *w = arg;
    w->taking = false;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        if (r && r->type == REDIS_REPLY_ERROR) LOG_ERROR("take script failed", "error", r->str);
        else if (err) LOG_DEBUG("take failed", "error", err);
        poll_later(w);
        return;
    }
    long long code = r->element[0]->integer;
    if (code <= 0 || r->elements != 7) {
        poll_later(w); /* -1: no executor slot; 0: nothing queued */
        return;
    }
    w->poll_delay = POLL_MIN_S;
    redisReply *msg = r->element[1], *tag = r->element[2], *ex = r->element[3];
    redisReply *tid = r->element[4], *res = r->element[5], *rev = r->element[6];
    task_prefetch pre = {0};
    if (tid->type == REDIS_REPLY_STRING) {
        pre.task_id = tid->str;
        pre.task_id_len = tid->len;
        pre.result_read = w->res == w->rc;
        if (res->type == REDIS_REPLY_STRING) {
            pre.result = res->str;
            pre.result_len = res->len;
        }
        if (rev->type == REDIS_REPLY_STRING) {
            pre.revoked = rev->str;
            pre.revoked_len = rev->len;
        }
    }
    w->rr = (size_t)ex->integer + 1;
    task_start(w, msg->str, msg->len, tag->str, (size_t)ex->integer, &pre);
    worker_pump(w);
}

void worker_pump(worker *w)
{
    /* A task storing its result no longer holds an execution: the next one
     * is taken meanwhile (at most as many finishing as running). */
    size_t conc = (size_t)w->cfg.concurrency;
    if (!w->ready || w->draining || w->taking || w->in_flight - w->finishing >= conc ||
        w->in_flight >= 2 * conc || !rclient_is_up(w->rc))
        return;
    /* EVAL take <nkeys> keys... now lease tagset token nexec start caps... bases... result-prefix */
    size_t argc = 3 + w->nkeys + 6 + w->nexec + w->nkeys + 1;
    const char **argv = calloc(argc, sizeof(char *));
    size_t *len = calloc(argc, sizeof(size_t));
    char *nums = calloc(6 + w->nexec, 32);
    if (!argv || !len || !nums) goto done;
    size_t k = 0;
    char nkeys[16];
    snprintf(nkeys, sizeof(nkeys), "%zu", w->nkeys);
    argv[k++] = "EVAL";
    argv[k++] = wscript_take;
    argv[k++] = nkeys;
    for (size_t i = 0; i < w->nkeys; i++) {
        len[k] = w->key_lens[i];
        argv[k++] = w->keys[i];
    }
    double now = util_now();
    snprintf(nums + 0 * 32, 32, "%.6f", now);
    snprintf(nums + 1 * 32, 32, "%.3f", now + w->cfg.hard_limit_s + WORKER_SLOT_GRACE_S);
    static int pid;
    if (!pid) pid = (int)getpid(); /* the worker never forks */
    snprintf(nums + 2 * 32, 32, "%s-%d-%llu", "t", pid, ++w->token_seq);
    snprintf(nums + 3 * 32, 32, "%zu", w->nexec);
    snprintf(nums + 4 * 32, 32, "%zu", w->rr % w->nexec);
    argv[k++] = nums;
    argv[k++] = nums + 32;
    argv[k++] = w->tagset_key;
    argv[k++] = nums + 64;
    argv[k++] = nums + 96;
    argv[k++] = nums + 128;
    /* Unhealthy executors are skipped while a healthy one exists.  When none
     * is, they are tried anyway (unknown capacity counts as 1): the calls
     * fail into the retry policy and, in the end, the dead-letter queue,
     * where operators see them, instead of work waiting unseen. */
    bool any_usable = false;
    for (size_t i = 0; i < w->nexec; i++) any_usable = any_usable || worker_exec_usable(w, i);
    for (size_t i = 0; i < w->nexec; i++) {
        char *c = nums + (5 + i) * 32;
        int cap = worker_exec_usable(w, i) ? w->execs[i].capacity
                  : any_usable             ? 0
                  : w->execs[i].capacity > 0 ? w->execs[i].capacity
                                             : 1;
        snprintf(c, 32, "%d", cap);
        argv[k++] = c;
    }
    for (size_t i = 0; i < w->nkeys; i++) argv[k++] = w->key_queue[i];
    argv[k++] = w->res == w->rc ? RESULTS_KEY_PREFIX : ""; /* another backend: read apart */
    for (size_t i = 0; i < k; i++)
        if (!len[i]) len[i] = strlen(argv[i]);
    /* by SHA1 (EVALSHA), the text only when Redis lacks it */
    static rclient_script take;
    if (!take.text) rclient_script_init(&take, wscript_take);
    if (rclient_eval(w->rc, &take, on_taken, w, (int)k - 2, argv + 2, len + 2) == 0) w->taking = true;
    else poll_later(w);
done:
    free(argv);
    free(len);
    free(nums);
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg);

void worker_task_done(worker *w)
{
    if (w->draining) {
        if (w->in_flight == 0 && !w->returning) {
            LOG_INFO("drained");
            event_base_loopexit(w->base, NULL);
        }
        return;
    }
    worker_pump(w);
}

/* ---------- start-up: restore our own unacked messages first ---------- */

static void on_own_restored(redisReply *r, const char *err, void *arg)
{
    worker *w = arg;
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        LOG_WARN("could not restore this worker's unacked messages yet; retrying", "error",
                 err ? err : (r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
        return; /* the next connect retries */
    }
    if (r->integer > 0) {
        char n[32];
        snprintf(n, sizeof(n), "%lld", r->integer);
        LOG_INFO("restored unacked messages left by a previous run", "count", n);
    }
    w->ready = true;
    worker_pump(w);
}

static void restore_own(worker *w)
{
    char nexec[16];
    snprintf(nexec, sizeof(nexec), "%zu", w->nexec);
    const char *a[5] = {"EVAL", wscript_restore_tags, "1", w->tagset_key, nexec};
    size_t l[5] = {4, strlen(wscript_restore_tags), 1, strlen(w->tagset_key), strlen(nexec)};
    if (rclient_command(w->rc, on_own_restored, w, 5, a, l) != 0)
        LOG_DEBUG("restore postponed: redis not connected");
}

static void on_broker_state(rclient *rc, bool up, void *ud)
{
    (void)rc;
    worker *w = ud;
    if (!up) return;
    if (!w->ready) restore_own(w);
    worker_pump(w);
}

/* ---------- HTTP: /metrics, /healthz ---------- */

static void on_http(struct evhttp_request *req, void *arg)
{
    worker *w = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path && strcmp(path, "/metrics") == 0) {
        struct evbuffer *out = evhttp_request_get_output_buffer(req);
        if (metrics_render(w->m.reg, out) != 0) {
            util_reply_error(req, 503, "out_of_memory", "could not render metrics", 1);
            return;
        }
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evhttp_send_reply(req, 200, "OK", NULL);
    } else if (path && strcmp(path, "/healthz") == 0) {
        char body[256];
        int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"redis\":\"%s\",\"in_flight\":%zu}",
                         w->draining ? "draining" : "ok", rclient_is_up(w->rc) ? "up" : "down", w->in_flight);
        util_reply_json(req, 200, body, (size_t)n);
    } else {
        util_reply_error(req, 404, "not_found", "the worker serves /metrics and /healthz", 0);
    }
}

/* ---------- signals ---------- */

static void on_returned(redisReply *r, const char *err, void *arg)
{
    worker *w = arg;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        char n[32];
        snprintf(n, sizeof(n), "%lld", r->integer);
        LOG_INFO("returned unfinished messages to their queues", "count", n);
        metrics_add(w->m.tasks, WO_RETURNED, (double)r->integer);
    } else {
        LOG_WARN("could not return unfinished messages; they come back on restart or after the visibility timeout",
                 "error", err ? err : "unexpected reply");
    }
    struct timeval flush = {0, 300000}; /* let the kill requests leave */
    event_base_loopexit(w->base, &flush);
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    w->returning = true;
    LOG_WARN("shutdown grace over; stopping executions and returning their messages");
    task_abandon_all(w);
    char nexec[16];
    snprintf(nexec, sizeof(nexec), "%zu", w->nexec);
    const char *a[5] = {"EVAL", wscript_restore_tags, "1", w->tagset_key, nexec};
    size_t l[5] = {4, strlen(wscript_restore_tags), 1, strlen(w->tagset_key), strlen(nexec)};
    if (rclient_command(w->rc, on_returned, w, 5, a, l) != 0) on_returned(NULL, "redis not connected", w);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    worker *w = arg;
    if (w->draining) return;
    w->draining = true;
    char n[32];
    snprintf(n, sizeof(n), "%zu", w->in_flight);
    LOG_INFO("signal received: taking no more work", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM", "in_flight", n);
    if (w->in_flight == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    w->grace_timer = evtimer_new(w->base, on_grace_over, w);
    struct timeval tv = {(time_t)w->cfg.shutdown_grace_s, 0};
    if (!w->grace_timer || evtimer_add(w->grace_timer, &tv) != 0) on_grace_over(-1, 0, w);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    maint_tick(w);
    worker_pump(w);
}

/* ---------- set-up ---------- */

static char *trimmed_copy(const char *p, size_t n)
{
    while (n && *p == ' ') p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '/')) n--;
    return strndup(p, n);
}

/* kombu's consumption order: by priority step first, then by queue. */
static int build_keys(worker *w)
{
    size_t nq = 1;
    for (const char *p = w->cfg.queues; *p; p++) nq += *p == ',';
    w->nkeys = nq * CELERY_NSTEPS;
    w->keys = calloc(w->nkeys, sizeof(char *));
    w->key_lens = calloc(w->nkeys, sizeof(size_t));
    w->key_queue = calloc(w->nkeys, sizeof(char *));
    char **queues = calloc(nq, sizeof(char *));
    int rc = -1;
    if (!w->keys || !w->key_lens || !w->key_queue || !queues) goto done;
    const char *p = w->cfg.queues;
    for (size_t q = 0; q < nq; q++) {
        size_t n = strcspn(p, ",");
        if (!(queues[q] = trimmed_copy(p, n))) goto done;
        p += n + (p[n] == ',');
    }
    size_t k = 0;
    for (int s = 0; s < CELERY_NSTEPS; s++) {
        for (size_t q = 0; q < nq; q++, k++) {
            char buf[512];
            size_t n = celery_queue_key(queues[q], celery_priority_steps[s], buf, sizeof(buf));
            if (!n || !(w->keys[k] = malloc(n + 1)) || !(w->key_queue[k] = strdup(queues[q]))) goto done;
            memcpy(w->keys[k], buf, n + 1);
            w->key_lens[k] = n;
        }
    }
    rc = 0;
done:
    for (size_t q = 0; queues && q < nq; q++) free(queues[q]);
    free(queues);
    return rc;
}

static int build_executors(worker *w)
{
    size_t n = 1;
    for (const char *p = w->cfg.executors; *p; p++) n += *p == ',';
    w->execs = calloc(n, sizeof(executor));
    w->exec_urls = calloc(n, sizeof(char *));
    if (!w->execs || !w->exec_urls) return -1;
    const char *p = w->cfg.executors;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(p, ",");
        if (!(w->execs[i].url = trimmed_copy(p, len))) return -1;
        w->exec_urls[i] = w->execs[i].url;
        p += len + (p[len] == ',');
    }
    w->nexec = n;
    return 0;
}

static void worker_free(worker *w)
{
    task_free_all(w);
    if (w->sub) rclient_free(w->sub);
    if (w->res && w->res != w->rc) rclient_free(w->res);
    if (w->rc) rclient_free(w->rc);
    if (w->hc) httpc_free(w->hc);
    if (w->http) evhttp_free(w->http);
    if (w->poll_timer) event_free(w->poll_timer);
    if (w->tick) event_free(w->tick);
    if (w->grace_timer) event_free(w->grace_timer);
    for (size_t i = 0; i < w->nkeys; i++) {
        if (w->keys) free(w->keys[i]);
        if (w->key_queue) free(w->key_queue[i]);
    }
    free(w->keys);
    free(w->key_lens);
    free(w->key_queue);
    for (size_t i = 0; i < w->nexec; i++) free(w->execs[i].url);
    free(w->execs);
    free(w->exec_urls);
    wmetrics_free(&w->m);
    wconfig_free(&w->cfg);
}

static int worker_init(worker *w, struct event_base *base, char err[256])
{
    w->base = base;
    w->poll_delay = POLL_MIN_S;
    snprintf(w->tagset_key, sizeof(w->tagset_key), "turnout:worker:%s:tags", w->cfg.name);
    snprintf(w->heartbeat_key, sizeof(w->heartbeat_key), "turnout:worker:%s", w->cfg.name);
    if (build_keys(w) != 0 || build_executors(w) != 0 || wmetrics_init(&w->m, w->exec_urls, w->nexec) != 0) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    rclient_opts ro = {.command_timeout_ms = w->cfg.redis_timeout_ms,
                       .connect_timeout_ms = w->cfg.redis_timeout_ms,
                       .name = "broker",
                       .on_state = on_broker_state,
                       .ud = w};
    char rerr[256];
    if (!(w->rc = rclient_new(base, w->cfg.broker_url, &ro, rerr))) {
        snprintf(err, 256, "CELERY_BROKER_URL: %.200s", rerr);
        return -1;
    }
    w->res = w->rc;
    if (w->cfg.result_backend[0] && strcmp(w->cfg.result_backend, w->cfg.broker_url) != 0) {
        rclient_opts bo = {.command_timeout_ms = w->cfg.redis_timeout_ms,
                           .connect_timeout_ms = w->cfg.redis_timeout_ms, .name = "results"};
        if (!(w->res = rclient_new(base, w->cfg.result_backend, &bo, rerr))) {
            snprintf(err, 256, "CELERY_RESULT_BACKEND: %.200s", rerr);
            return -1;
        }
    }
    rclient_opts so = {.command_timeout_ms = w->cfg.redis_timeout_ms,
                       .connect_timeout_ms = w->cfg.redis_timeout_ms, .name = "pubsub"};
    if (!(w->sub = rclient_new(base, w->cfg.broker_url, &so, rerr)) || maint_subscribe(w) != 0) {
        snprintf(err, 256, "cannot set up the revoke subscription: %.200s", rerr);
        return -1;
    }
    if (!(w->hc = httpc_new(base, err))) return -1;
    w->poll_timer = evtimer_new(base, on_poll_timer, w);
    w->tick = event_new(base, -1, EV_PERSIST, on_tick, w);
    w->http = evhttp_new(base);
    if (!w->poll_timer || !w->tick || !w->http) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    struct timeval tv = {(time_t)TICK_S, 0};
    event_add(w->tick, &tv);
    char host[256];
    int port;
    if (cfg_split_addr(w->cfg.metrics_listen, host, sizeof(host), &port) != 0 ||
        evhttp_bind_socket(w->http, host, (ev_uint16_t)port) != 0) {
        snprintf(err, 256, "WORKER_METRICS_LISTEN=\"%.100s\": cannot listen there (in use, or not a local address)",
                 w->cfg.metrics_listen);
        return -1;
    }
    evhttp_set_gencb(w->http, on_http, w);
    evhttp_set_timeout(w->http, 30);
    maint_probe_executors(w, true);
    return 0;
}

int main(int argc, char **argv)
{
    bool check_only;
    int exit_code = cfg_cli(argc, argv, "turnout-worker",
                            "runs evaluations from the Celery-format Redis queue on executors, with "
                            "retries, dead letters, cancellation and no lost work",
                            wconfig_table, wconfig_count, &check_only);
    if (exit_code >= 0) return exit_code;

    static worker w; /* one per process; static keeps it off the stack */
    char errs[8192] = "";
    int n = wconfig_read(&w.cfg, getenv("TURNOUT_ENV_FILE"), errs, sizeof(errs));
    exit_code = cfg_report("turnout-worker", n, errs, check_only);
    if (exit_code >= 0) {
        wconfig_free(&w.cfg);
        return exit_code;
    }
    if (log_setup(w.cfg.log_level, w.cfg.log_format, "turnout-worker") != 0) return 2;
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    char err[256];
    struct event *sigs[2] = {NULL, NULL};
    struct event_base *base = event_base_new();
    if (!base) {
        fprintf(stderr, "turnout-worker: cannot create the event loop\n");
        goto done;
    }
    if (worker_init(&w, base, err) != 0) {
        fprintf(stderr, "turnout-worker: %s\n", err);
        rc = 2;
        goto done;
    }
    sigs[0] = evsignal_new(base, SIGTERM, on_term, &w);
    sigs[1] = evsignal_new(base, SIGINT, on_term, &w);
    for (int i = 0; i < 2; i++) {
        if (!sigs[i] || evsignal_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "turnout-worker: cannot install signal handlers\n");
            goto done;
        }
    }
    LOG_INFO("started", "name", w.cfg.name, "queues", w.cfg.queues, "executors", w.cfg.executors, "metrics",
             w.cfg.metrics_listen, "version", TURNOUT_VERSION);
    event_base_dispatch(base);
    LOG_INFO("stopped");
    rc = 0;
done:
    for (int i = 0; i < 2; i++)
        if (sigs[i]) event_free(sigs[i]);
    worker_free(&w);
    if (base) event_base_free(base);
    return rc;
}
