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
#include "daemon.h"
#include "jsonw.h"
#include "keys.h"
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

void worker_broker_error(worker *w, enum wm_broker_op op, const char *error)
{
    metrics_add(w->m.broker_errors, (size_t)op, 1);
    util_snprintf(w->last_error, sizeof(w->last_error), "%s: %s", wm_broker_op_names[op],
                  error ? error : "unknown error");
    w->last_error_at = util_now();
}

/* A take that failed: counted, and after a few in a row /healthz says so.
 * The pause before the next one grows as for an empty queue. */
static void take_failed(worker *w, const char *error)
{
    worker_broker_error(w, WB_TAKE, error);
    if (++w->take_fails == WORKER_TAKE_FAILS_UNHEALTHY)
        LOG_ERROR("takes keep failing; /healthz reports unhealthy until one succeeds", "error", error);
    else if (w->take_fails < WORKER_TAKE_FAILS_UNHEALTHY)
        LOG_WARN("take failed", "error", error);
    poll_later(w);
}

static void on_taken(redisReply *r, const char *err, void *arg)
{
    worker *w = arg;
    w->taking = false;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        take_failed(w, r && r->type == REDIS_REPLY_ERROR ? r->str : err ? err : "unexpected reply");
        return;
    }
    if (w->take_fails >= WORKER_TAKE_FAILS_UNHEALTHY) LOG_INFO("takes succeed again; healthy");
    w->take_fails = 0;
    long long code = r->element[0]->integer;
    if (code <= 0 || r->elements != 8) {
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
    if (r->element[7]->type == REDIS_REPLY_INTEGER && r->element[7]->integer > 0)
        pre.oversize_bytes = (size_t)r->element[7]->integer;
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
    size_t argc = 3 + w->nkeys + 6 + w->nexec + w->nkeys + 2;
    const char **argv = calloc(argc, sizeof(char *));
    size_t *len = calloc(argc, sizeof(size_t));
    char *nums = calloc(7 + w->nexec, 32);
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
    char *max = nums + (5 + w->nexec) * 32;
    snprintf(max, 32, "%lld", w->cfg.max_message_bytes);
    argv[k++] = max;
    for (size_t i = 0; i < k; i++)
        if (!len[i]) len[i] = strlen(argv[i]);
    /* by SHA1 (EVALSHA), the text only when Redis lacks it */
    static rclient_script take;
    if (!take.text) rclient_script_init(&take, wscript_take);
    if (rclient_eval(w->rc, &take, on_taken, w, (int)k - 2, argv + 2, len + 2) == 0) w->taking = true;
    else take_failed(w, "redis not connected");
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
    worker_claim_name(w);
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
        /* Unhealthy while takes keep failing (a Redis that became a
         * replica answers READONLY, one out of memory OOM): the worker is
         * up but does no work, which a 200 would hide. */
        bool unhealthy = w->take_fails >= WORKER_TAKE_FAILS_UNHEALTHY;
        char stack[1024];
        jsonw j;
        jw_init(&j, stack, sizeof(stack));
        jw_obj_open(&j);
        jw_lit_key(&j, "status");
        jw_cstring(&j, unhealthy ? "unhealthy" : w->draining ? "draining" : "ok");
        if (unhealthy) {
            jw_lit_key(&j, "reason");
            jw_lit_string(&j, "taking messages from the broker fails; see last_error");
        }
        jw_lit_key(&j, "redis");
        jw_cstring(&j, rclient_is_up(w->rc) ? "up" : "down");
        jw_lit_key(&j, "in_flight");
        jw_int(&j, (long long)w->in_flight);
        jw_lit_key(&j, "take_failures_in_a_row");
        jw_int(&j, (long long)w->take_fails);
        jw_lit_key(&j, "last_error");
        jw_cstring(&j, w->last_error_at > 0 ? w->last_error : NULL);
        jw_lit_key(&j, "last_error_at");
        if (w->last_error_at > 0) jw_real(&j, w->last_error_at);
        else jw_null(&j);
        jw_obj_close(&j);
        if (jw_failed(&j)) util_reply_error(req, 503, "out_of_memory", "could not build the health reply", 1);
        else util_reply_json(req, unhealthy ? 503 : 200, jw_text(&j), jw_len(&j));
        jw_free(&j);
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

/* ---------- SIGHUP: re-reading the settings ---------- */

/* The environment, then TURNOUT_ENV_FILE over it (an unknown turnout
 * name in the file is an error), at start-up and on SIGHUP alike. */
static int settings_read(worker_settings *s, char *errs, size_t size)
{
    return wconfig_read(s, getenv("TURNOUT_ENV_FILE"), errs, size);
}

/* Takes what may change live from a fresh read of the settings (the
 * table's live flag); what needs a restart (connections, queue keys,
 * listener, executors, name) is kept and named.  A file with any problem
 * changes nothing. */
static void reload(worker *w)
{
    const char *path = getenv("TURNOUT_ENV_FILE");
    if (!path || !*path) {
        LOG_WARN("SIGHUP: TURNOUT_ENV_FILE is not set, so there is nothing to re-read; settings unchanged");
        return;
    }
    worker_settings fresh = {0};
    char errs[4096] = "";
    if (settings_read(&fresh, errs, sizeof(errs)) != 0) {
        for (char *p = errs; *p; p++)
            if (*p == '\n') *p = p[1] ? ';' : '\0';
        LOG_ERROR("reload failed, keeping the old settings", "file", path, "errors", errs);
        metrics_add(w->m.reloads, 1, 1);
        return;
    }
    /* the settings marked live in wconfig_table change now; the rest are kept and named */
    char restart[512] = "";
    cfg_reload_take(wconfig_table, wconfig_count, &w->cfg, &fresh, restart, sizeof(restart));
    wconfig_free(&fresh);
    if (log_setup(w->cfg.log_level, w->cfg.log_format, NULL) != 0) LOG_WARN("bad log settings ignored");
    if (restart[0])
        LOG_WARN("reload: these settings changed but need a restart; the running values are kept", "settings",
                 restart);
    char conc[24];
    snprintf(conc, sizeof(conc), "%lld", w->cfg.concurrency);
    LOG_INFO("reloaded", "file", path, "concurrency", conc, "log_level", w->cfg.log_level);
    metrics_add(w->m.reloads, 0, 1);
    worker_pump(w); /* a larger CELERY_CONCURRENCY takes effect at once */
}

static void on_reload_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reload(arg);
}

/* A burst of SIGHUPs is one reload, a moment later, from the event loop
 * (never inside another step). */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    worker *w = arg;
    struct timeval tv = {0, 50000};
    if (w->reload_timer && !evtimer_pending(w->reload_timer, NULL)) evtimer_add(w->reload_timer, &tv);
}

/* ---------- one process per WORKER_NAME ---------- */

/* Two workers under one name share a tag set: each start-up of one puts
 * the other's running messages back.  Each worker holds
 * turnout:worker:<name>:instance with its own id (refreshed every tick);
 * one that finds another id there says so. */
static const char claim_script[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v and v ~= ARGV[1] then return v end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "return false\n";

static void on_claimed(redisReply *r, const char *err, void *arg)
{
    (void)err;
    worker *w = arg;
    if (!r) return;
    if (r->type == REDIS_REPLY_STRING) {
        if (!w->name_clash_warned)
            LOG_WARN("another turnout-worker with this WORKER_NAME is running on this Redis: give each worker its own "
                     "WORKER_NAME (two under one name put back each other's running messages); if this worker just "
                     "restarted after a crash, this clears within " WORKER_INSTANCE_TTL " s",
                     "name", w->cfg.name, "other_instance", r->str, "this_instance", w->instance_id);
        w->name_clash_warned = true;
    } else if (r->type == REDIS_REPLY_NIL) {
        if (w->name_clash_warned) LOG_INFO("this worker now holds its WORKER_NAME alone", "name", w->cfg.name);
        w->name_clash_warned = false;
    }
}

void worker_claim_name(worker *w)
{
    const char *a[6] = {"EVAL", claim_script, "1", w->instance_key, w->instance_id, WORKER_INSTANCE_TTL};
    size_t l[6];
    for (int i = 0; i < 6; i++) l[i] = strlen(a[i]);
    if (rclient_command(w->rc, on_claimed, w, 6, a, l) != 0) LOG_DEBUG("name claim skipped: redis not connected");
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
    if (w->reload_timer) event_free(w->reload_timer);
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
    snprintf(w->instance_key, sizeof(w->instance_key), "turnout:worker:%s:instance", w->cfg.name);
    util_uuid4(w->instance_id);
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
        snprintf(err, 256, "CELERY_BROKER_URL: %.*s", UTF8_CUT(rerr, 200));
        return -1;
    }
    w->res = w->rc;
    if (w->cfg.result_backend[0] && strcmp(w->cfg.result_backend, w->cfg.broker_url) != 0) {
        rclient_opts bo = {.command_timeout_ms = w->cfg.redis_timeout_ms,
                           .connect_timeout_ms = w->cfg.redis_timeout_ms, .name = "results"};
        if (!(w->res = rclient_new(base, w->cfg.result_backend, &bo, rerr))) {
            snprintf(err, 256, "CELERY_RESULT_BACKEND: %.*s", UTF8_CUT(rerr, 200));
            return -1;
        }
    }
    rclient_opts so = {.command_timeout_ms = w->cfg.redis_timeout_ms,
                       .connect_timeout_ms = w->cfg.redis_timeout_ms, .name = "pubsub"};
    if (!(w->sub = rclient_new(base, w->cfg.broker_url, &so, rerr)) || maint_subscribe(w) != 0) {
        snprintf(err, 256, "cannot set up the revoke subscription: %.*s", UTF8_CUT(rerr, 200));
        return -1;
    }
    if (!(w->hc = httpc_new(base, err))) return -1;
    w->poll_timer = evtimer_new(base, on_poll_timer, w);
    w->tick = event_new(base, -1, EV_PERSIST, on_tick, w);
    w->reload_timer = evtimer_new(base, on_reload_timer, w);
    w->http = evhttp_new(base);
    if (!w->poll_timer || !w->tick || !w->http || !w->reload_timer) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    struct timeval tv = {(time_t)TICK_S, 0};
    event_add(w->tick, &tv);
    char host[256];
    int port;
    if (cfg_split_addr(w->cfg.metrics_listen, host, sizeof(host), &port) != 0 ||
        evhttp_bind_socket(w->http, host, (ev_uint16_t)port) != 0) {
        snprintf(err, 256, "WORKER_METRICS_LISTEN=\"%.*s\": cannot listen there (in use, or not a local address)",
                 UTF8_CUT(w->cfg.metrics_listen, 100));
        return -1;
    }
    evhttp_set_gencb(w->http, on_http, w);
    evhttp_set_timeout(w->http, 30);
    maint_probe_executors(w, true);
    return 0;
}

static int read_settings(void *self, char *errs, size_t size)
{
    return settings_read(&((worker *)self)->cfg, errs, size);
}

static void log_names(const void *self, const char **level, const char **format)
{
    const worker *w = self;
    *level = w->cfg.log_level;
    *format = w->cfg.log_format;
}

static int start(void *self, struct event_base *base, char err[256])
{
    worker *w = self;
    if (worker_init(w, base, err) != 0) return 2;
    LOG_INFO("started", "name", w->cfg.name, "queues", w->cfg.queues, "executors", w->cfg.executors, "metrics",
             w->cfg.metrics_listen, "version", TURNOUT_VERSION);
    return 0;
}

static void teardown(void *self) { worker_free(self); }

int main(int argc, char **argv)
{
    static worker w; /* one per process; static keeps it off the stack */
    const daemon_prog prog = {
        .name = "turnout-worker",
        .summary = "runs evaluations from the Celery-format Redis queue on executors, with "
                   "retries, dead letters, cancellation and no lost work",
        .options = wconfig_table,
        .noptions = wconfig_count,
        .read = read_settings,
        .log_names = log_names,
        .start = start,
        .stop = on_term,
        .reload = on_hup,
        .teardown = teardown,
    };
    return daemon_main(argc, argv, &prog, &w);
}
