#include "celery_redis.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "celery.h"
#include "evstatus.h"
#include "jsafe.h"
#include "jsonw.h"
#include "keys.h"
#include "pscripts.h"
#include "pserver.h"
#include "rbatch.h"
#include "records.h"
#include "results.h"
#include "util.h"

#define TASK_PREFIX "celery-"
#define TID_MAX (SUB_MAX_EVAL_ID + sizeof(TASK_PREFIX))
#define KEY_MAX (TID_MAX + 64)
#define RESULT_EXPIRES_S 86400L /* the worker's RESULT_EXPIRES_S default */
#define PIDBOX_EXPIRES_S 60

/* A connection made a moment ago measures the server's clock before a
 * submission can be bounded in time (about a round trip): a submission
 * that comes in between waits for it rather than failing. */
#define CLOCK_WAIT_S 0.005
#define CLOCK_WAITS 40

typedef struct cr {
    proxy *p;
} cr;

enum prev { PREV_QUEUED, PREV_RUNNING, PREV_RETRYING };
static const char *const prev_names[] = {"queued", "running", "retrying"};

/* One operation in flight. */
typedef struct call {
    cr *c;
    bk_cb cb;
    void *arg;
    const bk_job *job; /* submit: borrowed until the callback */
    int clock_waits;
    bool terminate;
    enum prev prev;
    bool in_call;      /* the operation's own call has not returned yet */
    bool stuck;        /* finished inside the call and could not be deferred (OOM) */
    char eval_id[SUB_MAX_EVAL_ID + 1];
    char tid[TID_MAX];
    char result_key[KEY_MAX];
    /* a result to deliver on the next turn of the loop */
    bk_result res;
    json_t *doc;
    char detail[BK_DETAIL_MAX + 1];
} call;

static call *call_new(cr *c, const char *eval_id, bk_cb cb, void *arg)
{
    call *k = malloc(sizeof(*k));
    if (!k) return NULL;
    /* the buffers are written before they are read: only the rest is cleared */
    memset(k, 0, offsetof(call, eval_id));
    k->eval_id[0] = k->detail[0] = '\0';
    k->res = (bk_result){0};
    k->doc = NULL;
    k->c = c;
    k->cb = cb;
    k->arg = arg;
    k->in_call = true;
    if (eval_id) {
        snprintf(k->eval_id, sizeof(k->eval_id), "%s", eval_id);
        snprintf(k->tid, sizeof(k->tid), TASK_PREFIX "%s", k->eval_id);
        snprintf(k->result_key, sizeof(k->result_key), RESULTS_KEY_PREFIX "%s", k->tid);
    }
    return k;
}

static void call_end(call *k)
{
    k->res.doc = k->doc;
    k->res.detail = k->detail[0] ? k->detail : NULL;
    k->cb(&k->res, k->arg);
    json_decref(k->doc);
    free(k);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    call_end(arg);
}

/* Delivers once: now, or on the next turn when the operation's own call
 * has not returned (the callback is never called from inside it).  Takes
 * `doc`; copies `detail`. */
static void deliver(call *k, enum bk_outcome o, const char *detail, json_t *doc, long long position)
{
    k->res.outcome = o;
    k->res.position = position;
    if (detail) util_snprintf(k->detail, sizeof(k->detail), "%s", detail);
    json_decref(k->doc);
    k->doc = doc;
    if (k->in_call) {
        struct timeval now = {0, 0};
        if (event_base_once(k->c->p->base, -1, EV_TIMEOUT, on_later, k, &now) != 0) k->stuck = true;
        return;
    }
    call_end(k);
}

/* The end of an operation's own call: true when it started (its callback
 * comes later), false when it could not (the callback is never called). */
static bool started(call *k)
{
    k->in_call = false;
    if (!k->stuck) return true;
    json_decref(k->doc);
    free(k);
    return false;
}

/* A batch that got no usable reply, as an outcome. */
static enum bk_outcome batch_failure(const rbatch *b, int n, const char **detail)
{
    for (int i = 0; i < n; i++) {
        const char *e = rbatch_redis_error(rbatch_at(b, i));
        if (e) {
            *detail = e;
            return BK_REFUSED;
        }
    }
    *detail = rbatch_error(b) ? rbatch_error(b) : "redis not connected";
    if (rbatch_timed_out(b)) return BK_TIMEOUT;
    return BK_DOWN;
}

static bool batch_failed(const rbatch *b, int n)
{
    if (rbatch_error(b)) return true;
    for (int i = 0; i < n; i++)
        if (!rbatch_at(b, i) || rbatch_redis_error(rbatch_at(b, i))) return true;
    return false;
}

/* ---------- submit ---------- */

static void on_submitted(struct redisReply *reply, const char *err, void *arg)
{
    call *k = arg;
    if (!reply) {
        /* sent, and no reply: whether it acted is not known */
        k->res.maybe_done = true;
        deliver(k, err && strcmp(err, "timeout") == 0 ? BK_TIMEOUT : BK_UNREACHABLE, err ? err : "connection lost",
                NULL, -1);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) { /* refused before its first write: nothing done */
        deliver(k, BK_REFUSED, reply->str, NULL, -1);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
        k->res.maybe_done = true; /* it ran; what it did is not known */
        deliver(k, BK_BAD_REPLY, "unexpected reply from the route record script", NULL, -1);
        return;
    }
    redisReply *second = reply->element[1];
    long long depth = second->type == REDIS_REPLY_INTEGER ? second->integer : -1;
    char msg[200];
    switch (reply->element[0]->integer) {
    case 1: deliver(k, BK_OK, NULL, NULL, depth); return;
    case 2: deliver(k, BK_TIMEOUT, "the command reached Redis after its deadline and did nothing", NULL, -1); return;
    case 3:
        snprintf(msg, sizeof(msg), "the new queue holds %lld messages, its ceiling CELERY_QUEUE_MAX_DEPTH=%lld", depth,
                 k->c->p->cfg.queue_max_depth);
        deliver(k, BK_FULL, msg, NULL, depth);
        return;
    default: break;
    }
    if (second->type != REDIS_REPLY_STRING) {
        k->res.maybe_done = true;
        deliver(k, BK_BAD_REPLY, "unexpected reply from the route record script", NULL, -1);
        return;
    }
    /* the record is borrowed from the reply: delivered now (a reply is
     * never inside the call) */
    k->res.existing = second->str;
    deliver(k, BK_CONFLICT, "the eval_id already has a route record", NULL, -1);
}

/* 0: sent; -1: not sent (err). */
static int send_submit(call *k, char err[256])
{
    proxy *p = k->c->p;
    const bk_job *job = k->job;
    if (!rclient_is_up(p->broker)) {
        snprintf(err, 256, "redis not connected");
        return -1;
    }
    char queue_key[256], route_key[ROUTE_KEY_MAX], ttl[24], at[32];
    size_t qlen = celery_queue_key(p->cfg.queue, job->priority, queue_key, sizeof(queue_key));
    if (!qlen) {
        snprintf(err, 256, "queue name too long");
        return -1;
    }
    submission sub = {.code = job->code, .code_len = job->code_len, .language = job->language,
                      .language_len = strlen(job->language), .engine = job->engine, .timeout = job->timeout,
                      .priority = job->priority, .priority_name = job->priority_name};
    size_t id_len = strnlen(job->eval_id, sizeof(sub.eval_id) - 1);
    memcpy(sub.eval_id, job->eval_id, id_len);
    sub.eval_id[id_len] = '\0';
    /* the message is built on the stack (rclient copies it) unless it is big */
    char msg_stack[4096];
    jsonw msg;
    jw_init(&msg, msg_stack, sizeof(msg_stack));
    if (producer_encode_into(p->prod, &sub, &msg, err) != 0) {
        jw_free(&msg);
        return -1;
    }
    char deadline[24], max_depth[24], lists[CELERY_NSTEPS][256];
    size_t dl_len = rclient_deadline(p->broker, deadline);
    if (!dl_len) {
        /* just connected, its clock not sampled yet: the submission cannot
         * be bounded in time, so it is not sent at all */
        jw_free(&msg);
        snprintf(err, 256, "redis connected but its clock not measured yet");
        return -1;
    }
    records_key(job->eval_id, route_key);
    size_t ttl_len = util_format_ll(p->cfg.route_record_ttl_s, ttl);
    size_t at_len = util_format_fixed(job->submitted_at, 6, at);
    size_t md_len = util_format_ll(p->cfg.queue_max_depth, max_depth);
    const char *argv[4 + CELERY_NSTEPS + 7];
    size_t lens[4 + CELERY_NSTEPS + 7];
    int n = 0;
    argv[n] = "7";
    lens[n++] = 1;
    argv[n] = route_key;
    lens[n++] = strlen(route_key);
    argv[n] = queue_key;
    lens[n++] = qlen;
    argv[n] = INFLIGHT_NEW;
    lens[n++] = sizeof(INFLIGHT_NEW) - 1;
    for (int i = 0; i < CELERY_NSTEPS; i++) {
        argv[n] = lists[i];
        lens[n++] = celery_queue_key(p->cfg.queue, celery_priority_steps[i], lists[i], sizeof(lists[i]));
    }
    const char *args[] = {job->record, ttl, jw_text(&msg), job->eval_id, at, deadline, max_depth};
    size_t alens[] = {strlen(job->record), ttl_len, jw_len(&msg), strlen(job->eval_id), at_len, dl_len, md_len};
    for (int i = 0; i < 7; i++) {
        argv[n] = args[i];
        lens[n++] = alens[i];
    }
    int rc = rclient_eval(p->broker, &pscript_submit_new, on_submitted, k, n, argv, lens);
    if (rc != 0) snprintf(err, 256, "redis not connected");
    jw_free(&msg);
    return rc;
}

static void try_submit(call *k);

static void on_clock_wait(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    try_submit(arg);
}

static void try_submit(call *k)
{
    char err[256];
    if (send_submit(k, err) == 0) return;
    proxy *p = k->c->p;
    if (rclient_clock_pending(p->broker) && k->clock_waits < CLOCK_WAITS) {
        struct timeval tv = {0, (suseconds_t)(CLOCK_WAIT_S * 1e6)};
        k->clock_waits++;
        if (event_base_once(p->base, -1, EV_TIMEOUT, on_clock_wait, k, &tv) == 0) return;
    }
    deliver(k, BK_DOWN, err, NULL, -1);
}

static bool cr_submit(void *impl, const bk_job *job, bk_cb cb, void *arg)
{
    call *k = call_new(impl, NULL, cb, arg); /* the job names the eval */
    if (!k) return false;
    k->job = job;
    try_submit(k);
    return started(k);
}

/* ---------- looking an eval up ---------- */

/* The result record, the running marker and the retry schedule entry. */
static bool send_lookup(call *k, rbatch_done_fn done)
{
    proxy *p = k->c->p;
    rbatch *b = rbatch_new(done, k);
    if (!b) return false;
    char running_key[KEY_MAX];
    snprintf(running_key, sizeof(running_key), KEY_RUNNING_PREFIX "%s", k->tid);
    const char *a0[] = {"GET", k->result_key}, *a1[] = {"GET", running_key}, *a2[] = {"HGET", KEY_SCHEDULE_IDS, k->tid};
    size_t l0[] = {3, strlen(k->result_key)}, l1[] = {3, strlen(running_key)},
           l2[] = {4, sizeof(KEY_SCHEDULE_IDS) - 1, strlen(k->tid)};
    if (rbatch_add(b, px_results_rc(p), 2, a0, l0) == 0 && rbatch_add(b, p->broker, 2, a1, l1) == 1)
        (void)rbatch_add(b, p->broker, 3, a2, l2);
    rbatch_run(b);
    return true;
}

typedef struct looked {
    json_t *result; /* the result record, parsed (owned), or NULL */
    bool running, scheduled;
} looked;

/* Reads the look-up and frees the batch: false with the failure
 * delivered. */
static bool read_lookup(call *k, rbatch *b, looked *l)
{
    if (batch_failed(b, 3)) {
        const char *detail;
        enum bk_outcome o = batch_failure(b, 3, &detail);
        deliver(k, o, detail, NULL, -1);
        rbatch_free(b);
        return false;
    }
    size_t len;
    const char *text = rbatch_str(rbatch_at(b, 0), &len);
    /* the output may hold NUL bytes: \u0000 is valid JSON */
    l->result = text ? json_loadb(text, len, JSON_ALLOW_NUL, NULL) : NULL;
    l->running = rbatch_at(b, 1)->type == REDIS_REPLY_STRING;
    l->scheduled = rbatch_at(b, 2)->type == REDIS_REPLY_STRING;
    rbatch_free(b);
    return true;
}

/* The Celery record's fields in the backend vocabulary. */
static json_t *task_doc(const char *eval_id, const char *status, json_t *res)
{
    json_t *o = json_pack("{s:s, s:s}", "eval_id", eval_id, "status", status);
    if (!o) return NULL;
    json_t *result = json_object_get(res, "result");
    const char *st = json_string_value(json_object_get(res, "status"));
    if (evstatus_outcome(status) >= 0) json_object_set(o, "completed_at", json_object_get(res, "date_done"));
    if (st && strcmp(st, "SUCCESS") == 0 && json_is_object(result)) {
        const char *fields[] = {"output", "exit_code", "error", "duration_s", "executor"};
        for (int i = 0; i < 5; i++) {
            json_t *v = json_object_get(result, fields[i]);
            if (v) json_object_set(o, fields[i], v);
        }
    } else if (json_is_object(result) && json_is_string(json_object_get(result, "exc_type"))) {
        /* FAILURE, REVOKED, RETRY: an exception */
        json_t *m = json_object_get(result, "exc_message");
        const char *text = json_string_value(json_is_array(m) ? json_array_get(m, 0) : m);
        char *err = NULL;
        if (asprintf(&err, "%s: %s", json_string_value(json_object_get(result, "exc_type")), text ? text : "") >= 0) {
            json_object_set_new(o, "error", jsafe_string(err));
            free(err);
        }
    }
    json_t *retries = json_object_get(res, "retries");
    if (json_is_integer(retries)) json_object_set(o, "retries", retries);
    return o;
}

static void on_task(rbatch *b, void *arg)
{
    call *k = arg;
    looked l;
    if (!read_lookup(k, b, &l)) return;
    if (!l.result && !l.running && !l.scheduled) {
        deliver(k, BK_NOT_FOUND, "nothing on the new queue's records", NULL, -1);
        return;
    }
    const char *status = evstatus_from_celery(l.result);
    if (!status || strcmp(status, "queued") == 0) status = l.running ? "running" : l.scheduled ? "retrying" : "queued";
    json_t *doc = task_doc(k->eval_id, status, l.result);
    json_decref(l.result);
    if (!doc) deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
    else deliver(k, BK_OK, NULL, doc, -1);
}

static bool cr_get_task(void *impl, const char *eval_id, bk_cb cb, void *arg)
{
    call *k = call_new(impl, eval_id, cb, arg);
    if (!k) return false;
    if (!send_lookup(k, on_task)) {
        free(k);
        return false;
    }
    return started(k);
}

/* ---------- cancel ---------- */

/* The status a finished result record stands for, in the API's words. */
static const char *finished_status(json_t *rec)
{
    const char *s = evstatus_from_celery(rec);
    const char *st = json_string_value(json_object_get(rec, "status"));
    if (s && evstatus_outcome(s) >= 0) return s;
    if (st && strcmp(st, "FAILURE") == 0) return "failed";
    if (st && strcmp(st, "REVOKED") == 0) return "cancelled";
    return "completed";
}

static void deliver_finished(call *k, json_t *rec)
{
    json_t *doc = json_pack("{s:s, s:s}", "eval_id", k->eval_id, "status", finished_status(rec));
    if (!doc) deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
    else deliver(k, BK_CONFLICT, "already finished", doc, -1);
}

static void on_refetched(rbatch *b, void *arg)
{
    call *k = arg;
    if (batch_failed(b, 1)) {
        const char *detail;
        enum bk_outcome o = batch_failure(b, 1, &detail);
        deliver(k, o, detail, NULL, -1);
    } else {
        /* REVOKED was refused because a terminal record is there; it may
         * have expired in between, in which case it finished anyway */
        size_t len;
        const char *text = rbatch_str(rbatch_at(b, 0), &len);
        json_t *rec = text ? json_loadb(text, len, JSON_ALLOW_NUL, NULL) : NULL;
        deliver_finished(k, rec);
        json_decref(rec);
    }
    rbatch_free(b);
}

static void on_acted(rbatch *b, void *arg)
{
    call *k = arg;
    int n = k->prev == PREV_RUNNING ? 1 : 2;
    if (batch_failed(b, n)) {
        const char *detail;
        enum bk_outcome o = batch_failure(b, n, &detail);
        deliver(k, o, detail, NULL, -1);
        rbatch_free(b);
        return;
    }
    if (n == 2 && rbatch_int(rbatch_at(b, 1), 1) == 0) {
        /* it finished between the look-up and now: say how */
        rbatch_free(b);
        rbatch *b2 = rbatch_new(on_refetched, k);
        if (!b2) {
            deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
            return;
        }
        const char *argv[] = {"GET", k->result_key};
        size_t lens[] = {3, strlen(k->result_key)};
        rbatch_add(b2, px_results_rc(k->c->p), 2, argv, lens);
        rbatch_run(b2);
        return;
    }
    rbatch_free(b);
    const char *msg = k->prev == PREV_RUNNING    ? "termination requested"
                      : k->prev == PREV_RETRYING ? "retry chain stopped: the pending retry was removed"
                                                 : "removed: it will be skipped when taken";
    json_t *doc = json_pack("{s:s, s:s, s:s}", "eval_id", k->eval_id, "previous_status", prev_names[k->prev],
                            "cancel_note", msg);
    if (!doc) deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
    else deliver(k, BK_OK, NULL, doc, -1);
}

/* The revoke marker first (from then on no worker starts it), the
 * schedule entry and the broadcast to every worker in one script, then,
 * unless it is running, the REVOKED result (written only when no terminal
 * one is there). */
static void act(call *k)
{
    proxy *p = k->c->p;
    double now = util_now();
    char revoked_key[KEY_MAX], channel[64], expires[24];
    char *marker = NULL, *notice = NULL, *pidbox = NULL, *record = NULL;
    json_t *mj = json_pack("{s:b, s:f, s:s}", "terminate", k->terminate, "at", now, "by", "api");
    json_t *nj = k->terminate ? json_pack("{s:s, s:b}", "task_id", k->tid, "terminate", 1) : NULL;
    marker = mj ? json_dumps(mj, JSON_COMPACT) : NULL;
    notice = nj ? json_dumps(nj, JSON_COMPACT) : NULL;
    pidbox = celery_pidbox_revoke(k->tid, k->terminate, now + PIDBOX_EXPIRES_S);
    if (k->prev != PREV_RUNNING)
        record = results_record(k->tid, "REVOKED", results_exception("TaskRevokedError", "revoked", "celery.exceptions"),
                                NULL);
    rbatch *b = NULL;
    if (!marker || !pidbox || (k->terminate && !notice) || (k->prev != PREV_RUNNING && !record) ||
        !(b = rbatch_new(on_acted, k))) {
        deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
        goto done;
    }
    snprintf(revoked_key, sizeof(revoked_key), KEY_REVOKED_PREFIX "%s", k->tid);
    snprintf(channel, sizeof(channel), "/%d.celery.pidbox", rclient_db(p->broker));
    const char *argv[] = {"3", revoked_key, KEY_SCHEDULE, KEY_SCHEDULE_IDS, k->tid, marker, notice ? notice : "",
                          channel, pidbox};
    size_t lens[9];
    for (int i = 0; i < 9; i++) lens[i] = strlen(argv[i]);
    if (rbatch_add_eval(b, p->broker, &pscript_revoke, 9, argv, lens) == 0 && record) {
        const char *wargv[RESULTS_WRITE_ARGC];
        size_t wlens[RESULTS_WRITE_ARGC];
        results_write_argv(k->result_key, record, RESULT_EXPIRES_S, expires, wargv, wlens);
        rbatch_add_eval(b, px_results_rc(p), results_write_script(), RESULTS_WRITE_ARGC - 2, wargv + 2, wlens + 2);
    }
    rbatch_run(b);
done:
    json_decref(mj);
    json_decref(nj);
    free(marker);
    free(notice);
    free(pidbox);
    free(record);
}

static void on_cancel_lookup(rbatch *b, void *arg)
{
    call *k = arg;
    looked l;
    if (!read_lookup(k, b, &l)) return;
    const char *st = json_string_value(json_object_get(l.result, "status"));
    if (st && results_is_terminal(st)) {
        deliver_finished(k, l.result);
        json_decref(l.result);
        return;
    }
    bool running = l.running || (st && (strcmp(st, "STARTED") == 0 || strcmp(st, "PROGRESS") == 0));
    bool retrying = l.scheduled || (st && strcmp(st, "RETRY") == 0);
    json_decref(l.result);
    if (running && !k->terminate) {
        json_t *doc = json_pack("{s:s, s:s}", "eval_id", k->eval_id, "status", "running");
        if (!doc) deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
        else deliver(k, BK_CONFLICT, "the evaluation is running; add ?terminate=true to kill it", doc, -1);
        return;
    }
    /* not finished: a queued eval (a message in its list, nothing else
     * yet) is revoked before a worker takes it */
    k->prev = running ? PREV_RUNNING : retrying ? PREV_RETRYING : PREV_QUEUED;
    act(k);
}

static bool cr_cancel_task(void *impl, const char *eval_id, bool terminate, bk_cb cb, void *arg)
{
    call *k = call_new(impl, eval_id, cb, arg);
    if (!k) return false;
    k->terminate = terminate;
    if (!send_lookup(k, on_cancel_lookup)) {
        free(k);
        return false;
    }
    return started(k);
}

/* ---------- queue status, health ---------- */

static void on_queue(rbatch *b, void *arg)
{
    call *k = arg;
    proxy *p = k->c->p;
    if (batch_failed(b, CELERY_NSTEPS + 3)) {
        const char *detail;
        enum bk_outcome o = batch_failure(b, CELERY_NSTEPS + 3, &detail);
        rbatch_free(b);
        deliver(k, o, detail, NULL, -1);
        return;
    }
    json_t *depth = json_object();
    long long total = 0;
    for (int i = 0; i < CELERY_NSTEPS; i++) {
        char key[8];
        long long n = rbatch_int(rbatch_at(b, i), 0);
        snprintf(key, sizeof(key), "%d", celery_priority_steps[i]);
        json_object_set_new(depth, key, json_integer(n));
        total += n;
    }
    json_t *doc = json_pack("{s:s, s:o, s:I, s:I, s:I, s:I}", "queue", p->cfg.queue, "depth", depth, "queued",
                            (json_int_t)total, "unacked", (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS), 0),
                            "retry_scheduled", (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS + 1), 0), "dlq",
                            (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS + 2), 0));
    rbatch_free(b);
    if (!doc) deliver(k, BK_INTERNAL, "out of memory", NULL, -1);
    else deliver(k, BK_OK, NULL, doc, -1);
}

static bool cr_queue_status(void *impl, bk_cb cb, void *arg)
{
    call *k = call_new(impl, NULL, cb, arg);
    rbatch *b = k ? rbatch_new(on_queue, k) : NULL;
    if (!b) {
        free(k);
        return false;
    }
    proxy *p = k->c->p;
    char keys[CELERY_NSTEPS][256];
    for (int i = 0; i < CELERY_NSTEPS; i++) {
        size_t n = celery_queue_key(p->cfg.queue, celery_priority_steps[i], keys[i], sizeof(keys[i]));
        const char *argv[] = {"LLEN", keys[i]};
        size_t lens[] = {4, n};
        if (rbatch_add(b, p->broker, 2, argv, lens) < 0) break;
    }
    const char *hl[] = {"HLEN", KEY_UNACKED}, *zs[] = {"ZCARD", KEY_SCHEDULE}, *zd[] = {"ZCARD", KEY_DLQ_INDEX};
    size_t hll[] = {4, sizeof(KEY_UNACKED) - 1}, zsl[] = {5, sizeof(KEY_SCHEDULE) - 1},
           zdl[] = {5, sizeof(KEY_DLQ_INDEX) - 1};
    if (rbatch_add(b, p->broker, 2, hl, hll) >= 0 && rbatch_add(b, p->broker, 2, zs, zsl) >= 0)
        (void)rbatch_add(b, p->broker, 2, zd, zdl);
    rbatch_run(b);
    return started(k);
}

static void on_pong(struct redisReply *reply, const char *err, void *arg)
{
    call *k = arg;
    if (reply && reply->type == REDIS_REPLY_STATUS) deliver(k, BK_OK, NULL, NULL, -1);
    else deliver(k, reply ? BK_REFUSED : BK_DOWN, reply && reply->str ? reply->str : err, NULL, -1);
}

static bool cr_health(void *impl, bk_cb cb, void *arg)
{
    call *k = call_new(impl, NULL, cb, arg);
    if (!k) return false;
    static const char *ping[] = {"PING"};
    static const size_t pinglen[] = {4};
    if (rclient_command(k->c->p->broker, on_pong, k, 1, ping, pinglen) != 0)
        deliver(k, BK_DOWN, "redis not connected", NULL, -1);
    return started(k);
}

static void cr_destroy(void *impl) { free(impl); }

static const backend_ops celery_redis_ops = {
    .name = "celery_redis",
    .error_code = "redis_unavailable",
    .timeout_code = "redis_unavailable",
    .can_terminate = true,
    .writes_record = true,
    .queued_unindexed = true,
    .own_store = true,
    .submit = cr_submit,
    .get_task = cr_get_task,
    .cancel_task = cr_cancel_task,
    .queue_status = cr_queue_status,
    .health = cr_health,
    .destroy = cr_destroy,
};

backend *celery_redis_new(proxy *p)
{
    cr *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->p = p;
    return backend_new(&celery_redis_ops, c);
}
