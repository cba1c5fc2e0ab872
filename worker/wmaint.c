/* wmaint — periodic maintenance (like beat with Redis locks: each job runs
 * in one instance at a time, at most once per interval across instances),
 * executor health, and revoke notifications. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "keys.h"
#include "log.h"
#include "util.h"
#include "wcore.h"
#include "wscripts.h"

#define CAPACITY_TIMEOUT_MS 2000
#define DOWN_FOR_S 5.0
#define HEARTBEAT_TTL "30"

static const double job_every_s[WJ_COUNT] = {
    [WJ_RESTORE] = 10, [WJ_SCHEDULE] = 0.5, [WJ_DLQ_PRUNE] = 60, [WJ_ORPHANS] = 10, [WJ_EXECUTORS] = 5,
};

/* Restores come at least twice per visibility timeout, so a lost message
 * waits at most about 1.5 timeouts. */
static double job_interval_s(const worker *w, enum wm_job job)
{
    double every = job_every_s[job];
    if (job == WJ_RESTORE && w->cfg.visibility_timeout_s / 2.0 < every)
        every = w->cfg.visibility_timeout_s / 2.0 < 1 ? 1 : w->cfg.visibility_timeout_s / 2.0;
    return every;
}



typedef struct job_ctx {
    worker *w;
    enum wm_job job;
} job_ctx;

static job_ctx *job_new(worker *w, enum wm_job job)
{
    job_ctx *j = malloc(sizeof(*j));
    if (j) {
        j->w = w;
        j->job = job;
    }
    return j;
}

/* ---------- executors ---------- */

typedef struct probe {
    worker *w;
    size_t i;
    bool publish; /* this instance holds the lock: share what it saw */
} probe;

static void on_capacity(const httpc_response *resp, void *arg)
{
    probe *pr = arg;
    worker *w = pr->w;
    executor *e = &w->execs[pr->i];
    json_t *doc = resp->error == HTTPC_OK && resp->status == 200 ? json_loadb(resp->body, resp->body_len, 0, NULL)
                                                                  : NULL;
    json_t *mc = json_object_get(doc, "max_concurrent");
    char val[32];
    if (json_is_integer(mc) && json_integer_value(mc) > 0) {
        if (e->capacity == 0 || e->down_until > 0)
            LOG_INFO("executor up", "executor", e->url);
        e->capacity = (int)json_integer_value(mc);
        json_t *mb = json_object_get(doc, "max_body_bytes");
        e->max_body = json_is_integer(mb) && json_integer_value(mb) > 0 ? (size_t)json_integer_value(mb) : 0;
        e->down_until = 0;
        snprintf(val, sizeof(val), "%d", e->capacity);
        if (pr->publish) {
            const char *a[4] = {"HSET", "turnout:pool:capacity", e->url, val};
            size_t l[4] = {4, 21, strlen(e->url), strlen(val)};
            rclient_send(w->rc, 4, a, l);
            const char *d[3] = {"HDEL", "turnout:pool:down", e->url};
            size_t dl[3] = {4, 17, strlen(e->url)};
            rclient_send(w->rc, 3, d, dl);
        }
    } else {
        if (e->down_until <= util_now())
            LOG_WARN("executor unhealthy; skipped until it answers GET /capacity", "executor", e->url, "error",
                     resp->errmsg ? resp->errmsg : "bad /capacity reply");
        e->down_until = util_now() + DOWN_FOR_S;
        snprintf(val, sizeof(val), "%.3f", e->down_until);
        if (pr->publish) {
            const char *a[4] = {"HSET", "turnout:pool:down", e->url, val};
            size_t l[4] = {4, 17, strlen(e->url), strlen(val)};
            rclient_send(w->rc, 4, a, l);
        }
    }
    json_decref(doc);
    free(pr);
    worker_pump(w);
}

void maint_probe_executors(worker *w, bool publish)
{
    for (size_t i = 0; i < w->nexec; i++) {
        char url[1100], err[256];
        probe *pr = malloc(sizeof(*pr));
        if (!pr) return;
        pr->w = w;
        pr->i = i;
        pr->publish = publish;
        snprintf(url, sizeof(url), "%s/capacity", w->execs[i].url);
        httpc_opts o = {.method = "GET", .url = url, .timeout_ms = CAPACITY_TIMEOUT_MS};
        if (!httpc_start(w->hc, &o, on_capacity, pr, err)) free(pr);
    }
}

/* Other instances' probes, shared through Redis. */
static void on_pool_view(redisReply *r, const char *err, void *arg)
{
    (void)err;
    worker *w = arg;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return;
    redisReply *caps = r->element[0], *down = r->element[1];
    double now = util_now();
    for (size_t i = 0; i < w->nexec; i++) {
        executor *e = &w->execs[i];
        for (size_t k = 0; caps->type == REDIS_REPLY_ARRAY && k + 1 < caps->elements; k += 2)
            if (strcmp(caps->element[k]->str, e->url) == 0) e->capacity = atoi(caps->element[k + 1]->str);
        for (size_t k = 0; down->type == REDIS_REPLY_ARRAY && k + 1 < down->elements; k += 2) {
            double until = atof(down->element[k + 1]->str);
            if (strcmp(down->element[k]->str, e->url) == 0 && until > now && until > e->down_until)
                e->down_until = until;
        }
    }
}

/* ---------- jobs ---------- */

static void on_job_done(redisReply *r, const char *err, void *arg)
{
    job_ctx *j = arg;
    worker *w = j->w;
    char n[32] = "";
    if (!r || r->type == REDIS_REPLY_ERROR) {
        wmetrics_job(&w->m, j->job, WJO_ERROR);
        LOG_WARN("maintenance job failed", "job", wm_job_names[j->job], "error", err ? err : r->str);
    } else if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
        wmetrics_job(&w->m, j->job, WJO_SKIPPED); /* another instance holds the mutex */
    } else {
        wmetrics_job(&w->m, j->job, WJO_OK);
        for (size_t i = 2; j->job == WJ_SCHEDULE && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING) task_write_revoked(w, r->element[i]->str);
        long long moved = r->type == REDIS_REPLY_INTEGER ? r->integer
                          : r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer
                                                                             : 0;
        if (moved > 0) {
            snprintf(n, sizeof(n), "%lld", moved);
            LOG_INFO("maintenance", "job", wm_job_names[j->job], "count", n);
            worker_pump(w);
        }
    }
    free(j);
}

static void run_job(worker *w, enum wm_job job)
{
    char a1[64], a2[64], a3[64], token[64];
    const char *argv[8];
    size_t len[8];
    int argc = 0;
    job_ctx *j = job_new(w, job);
    if (!j) return;
    switch (job) {
    case WJ_SCHEDULE:
        snprintf(a1, sizeof(a1), "%.6f", util_now());
        argv[0] = "EVAL", argv[1] = wscript_move_due, argv[2] = "0", argv[3] = a1, argv[4] = "500";
        argc = 5;
        break;
    case WJ_RESTORE:
        snprintf(token, sizeof(token), "%s-%llu", w->cfg.name, ++w->token_seq);
        snprintf(a2, sizeof(a2), "%d", 300000);
        snprintf(a3, sizeof(a3), "%.6f", util_now() - (double)w->cfg.visibility_timeout_s);
        argv[0] = "EVAL", argv[1] = wscript_restore_expired, argv[2] = "0", argv[3] = token, argv[4] = a2,
        argv[5] = a3;
        argc = 6;
        break;
    case WJ_DLQ_PRUNE:
        snprintf(a1, sizeof(a1), "%.6f", util_now() - (double)w->cfg.dlq_retention_days * 86400.0);
        argv[0] = "EVAL", argv[1] = wscript_dlq_prune, argv[2] = "0", argv[3] = a1, argv[4] = "1000";
        argc = 5;
        break;
    case WJ_ORPHANS:
        /* handled by on_workers_listed; the job record is reused there */
        free(j);
        return;
    case WJ_EXECUTORS:
        free(j);
        maint_probe_executors(w, true);
        wmetrics_job(&w->m, WJ_EXECUTORS, WJO_OK);
        return;
    case WJ_COUNT:
        free(j);
        return;
    }
    for (int i = 0; i < argc; i++) len[i] = strlen(argv[i]);
    if (rclient_command(w->rc, on_job_done, j, argc, argv, len) != 0) {
        wmetrics_job(&w->m, job, WJO_ERROR);
        free(j);
    }
}

/* Orphans: workers whose heartbeat expired hold tags nobody will ack;
 * put their messages back now instead of after the visibility timeout. */
static void on_heartbeat_checked(redisReply *r, const char *err, void *arg)
{
    (void)err;
    char *name = arg;
    worker *w = *(worker **)name;
    const char *wname = name + sizeof(worker *);
    char key[300], nexec[16];
    /* a name too long for the key is no worker's (names are at most 200) */
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0 &&
        (size_t)snprintf(key, sizeof(key), "turnout:worker:%s:tags", wname) < sizeof(key)) {
        snprintf(nexec, sizeof(nexec), "%zu", w->nexec);
        const char *a[5] = {"EVAL", wscript_restore_tags, "1", key, nexec};
        size_t l[5] = {4, strlen(wscript_restore_tags), 1, strlen(key), strlen(nexec)};
        job_ctx *j = job_new(w, WJ_ORPHANS);
        if (j && rclient_command(w->rc, on_job_done, j, 5, a, l) != 0) free(j);
        const char *s[3] = {"SREM", "turnout:workers", wname};
        size_t sl[3] = {4, 15, strlen(wname)};
        rclient_send(w->rc, 3, s, sl);
        LOG_WARN("worker gone; restoring its messages", "worker", wname);
    }
    free(name);
}

static void on_workers_listed(redisReply *r, const char *err, void *arg)
{
    (void)err;
    worker *w = arg;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        wmetrics_job(&w->m, WJ_ORPHANS, WJO_ERROR);
        return;
    }
    wmetrics_job(&w->m, WJ_ORPHANS, WJO_OK);
    for (size_t i = 0; i < r->elements; i++) {
        const char *wname = r->element[i]->str;
        if (!wname || strcmp(wname, w->cfg.name) == 0) continue;
        size_t n = strlen(wname);
        char key[300];
        if (n > 200) continue; /* no worker's: WORKER_NAME is at most 200 */
        char *ctx = malloc(sizeof(worker *) + n + 1);
        if (!ctx) continue;
        memcpy(ctx, &w, sizeof(worker *));
        memcpy(ctx + sizeof(worker *), wname, n + 1);
        snprintf(key, sizeof(key), "turnout:worker:%s", wname);
        const char *a[2] = {"EXISTS", key};
        size_t l[2] = {6, strlen(key)};
        if (rclient_command(w->rc, on_heartbeat_checked, ctx, 2, a, l) != 0) free(ctx);
    }
}

/* The lock doubles as the interval across instances: it expires by itself
 * after the interval, so one run per interval happens wherever it is taken. */
static void on_lock(redisReply *r, const char *err, void *arg)
{
    (void)err;
    job_ctx *j = arg;
    worker *w = j->w;
    enum wm_job job = j->job;
    free(j);
    if (!r || r->type != REDIS_REPLY_STATUS) return; /* held elsewhere: nothing to do */
    if (job == WJ_ORPHANS) {
        const char *a[2] = {"SMEMBERS", "turnout:workers"};
        size_t l[2] = {8, 15};
        if (rclient_command(w->rc, on_workers_listed, w, 2, a, l) != 0) wmetrics_job(&w->m, WJ_ORPHANS, WJO_ERROR);
        return;
    }
    run_job(w, job);
}

static void try_job(worker *w, enum wm_job job)
{
    char key[64], px[32];
    snprintf(key, sizeof(key), "turnout:lock:%s", wm_job_names[job]);
    /* a little under the interval, so the next tick of the instance that
     * ran it does not find its own lock still there */
    snprintf(px, sizeof(px), "%lld", (long long)(job_interval_s(w, job) * 900));
    job_ctx *j = job_new(w, job);
    if (!j) return;
    const char *a[6] = {"SET", key, w->cfg.name, "PX", px, "NX"};
    size_t l[6];
    for (int i = 0; i < 6; i++) l[i] = strlen(a[i]);
    if (rclient_command(w->rc, on_lock, j, 6, a, l) != 0) free(j);
}

void maint_tick(worker *w)
{
    if (!rclient_is_up(w->rc)) return;
    double now = util_monotonic();
    json_t *hbj = json_pack("{s:s, s:i, s:I, s:s}", "name", w->cfg.name, "pid", (int)getpid(), "in_flight",
                            (json_int_t)w->in_flight, "version", TURNOUT_VERSION);
    char *hb = hbj ? json_dumps(hbj, JSON_COMPACT) : NULL;
    json_decref(hbj);
    if (hb) {
        const char *a[5] = {"SET", w->heartbeat_key, hb, "EX", HEARTBEAT_TTL};
        size_t l[5] = {3, strlen(w->heartbeat_key), strlen(hb), 2, strlen(HEARTBEAT_TTL)};
        rclient_send(w->rc, 5, a, l);
        free(hb);
    }
    const char *s[3] = {"SADD", "turnout:workers", w->cfg.name};
    size_t sl[3] = {4, 15, strlen(w->cfg.name)};
    rclient_send(w->rc, 3, s, sl);
    worker_claim_name(w);
    /* two reads in one reply keep the callback simple */
    static const char pool_view[] =
        "return {redis.call('HGETALL', 'turnout:pool:capacity'), redis.call('HGETALL', 'turnout:pool:down')}";
    const char *pv[3] = {"EVAL", pool_view, "0"};
    size_t pl[3] = {4, strlen(pool_view), 1};
    if (rclient_command(w->rc, on_pool_view, w, 3, pv, pl) != 0) LOG_DEBUG("pool view skipped: redis not connected");

    task_tick_all(w);
    for (int job = 0; job < WJ_COUNT; job++) {
        if (now - w->last_job[job] < job_interval_s(w, (enum wm_job)job)) continue;
        w->last_job[job] = now;
        try_job(w, (enum wm_job)job);
    }
}

/* ---------- revokes ---------- */

static void persist_revoke(worker *w, const char *tid, bool terminate)
{
    char key[340], val[128];
    /* an id the worker would never run has no marker (and would not fit) */
    if (!celery_task_id_ok(tid, strlen(tid))) return;
    snprintf(key, sizeof(key), KEY_REVOKED_PREFIX "%s", tid);
    snprintf(val, sizeof(val), "{\"terminate\":%s,\"at\":%.3f,\"by\":\"pidbox\"}", terminate ? "true" : "false",
             util_now());
    const char *a[6] = {"SET", key, val, "EX", KEY_REVOKED_TTL_S_TEXT, "NX"};
    size_t l[6];
    for (int i = 0; i < 6; i++) l[i] = strlen(a[i]);
    rclient_send(w->rc, 6, a, l);
}

static void on_turnout_revoke(const char *channel, const char *payload, size_t len, void *arg)
{
    (void)channel;
    worker *w = arg;
    json_t *m = json_loadb(payload, len, 0, NULL);
    const char *tid = json_string_value(json_object_get(m, "task_id"));
    if (tid) task_revoke(w, tid, json_is_true(json_object_get(m, "terminate")));
    json_decref(m);
}

/* Celery's broadcast (WIRE.md §D): a kombu envelope, base64 body
 * {"method":"revoke","arguments":{"task_id": id|[ids],"terminate":..},"destination":null|[names]}. */
static void on_pidbox(const char *channel, const char *payload, size_t len, void *arg)
{
    (void)channel;
    worker *w = arg;
    json_t *env = json_loadb(payload, len, 0, NULL), *body = NULL;
    const char *b64 = json_string_value(json_object_get(env, "body"));
    unsigned char *raw = NULL;
    if (!b64) goto done;
    size_t blen = strlen(b64);
    if (blen % 4 || !(raw = malloc(blen / 4 * 3 + 1))) goto done;
    long n = util_base64_decode(raw, b64, blen);
    if (n < 0) goto done;
    for (size_t i = blen; i > 0 && b64[i - 1] == '='; i--) n--;
    if (n < 0) n = 0;
    body = json_loadb((const char *)raw, (size_t)n, 0, NULL);
    if (!body || strcmp(json_string_value(json_object_get(body, "method")) ?: "", "revoke") != 0) goto done;
    json_t *dest = json_object_get(body, "destination");
    if (json_is_array(dest)) {
        bool mine = false;
        for (size_t i = 0; i < json_array_size(dest); i++)
            mine = mine || strcmp(json_string_value(json_array_get(dest, i)) ?: "", w->cfg.name) == 0;
        if (!mine) goto done;
    }
    json_t *args = json_object_get(body, "arguments");
    bool terminate = json_is_true(json_object_get(args, "terminate"));
    json_t *ids = json_object_get(args, "task_id");
    if (json_is_string(ids)) {
        persist_revoke(w, json_string_value(ids), terminate);
        task_revoke(w, json_string_value(ids), terminate);
    }
    for (size_t i = 0; json_is_array(ids) && i < json_array_size(ids); i++) {
        const char *tid = json_string_value(json_array_get(ids, i));
        if (!tid) continue;
        persist_revoke(w, tid, terminate);
        task_revoke(w, tid, terminate);
    }
done:
    free(raw);
    json_decref(body);
    json_decref(env);
}

int maint_subscribe(worker *w)
{
    char pidbox[64];
    snprintf(pidbox, sizeof(pidbox), "/%d.celery.pidbox", rclient_db(w->rc));
    if (rclient_subscribe(w->sub, KEY_REVOKE_CHANNEL, on_turnout_revoke, w) != 0) return -1;
    return rclient_subscribe(w->sub, pidbox, on_pidbox, w);
}
