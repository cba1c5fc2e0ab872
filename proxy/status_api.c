#include "status_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "celery.h"
#include "evstatus.h"
#include "jsafe.h"
#include "keys.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "records.h"
#include "results.h"
#include "util.h"

#define RUNNING_PREFIX KEY_RUNNING_PREFIX
#define SCHEDULE_IDS KEY_SCHEDULE_IDS
#define SCHEDULE KEY_SCHEDULE
#define DLQ_INDEX KEY_DLQ_INDEX
#define KEY_MAX (SUB_MAX_EVAL_ID + 96)

bool status_api_match(const char *path, const char **id, size_t *len)
{
    static const char *const prefixes[] = {"/api/eval-status/", "/api/eval/"};
    for (int i = 0; i < 2; i++) {
        size_t pl = strlen(prefixes[i]);
        if (strncmp(path, prefixes[i], pl) != 0 || !path[pl]) continue;
        const char *rest = path + pl;
        /* /api/eval/{id}/cancel belongs to the cancel handler */
        size_t n = strlen(rest);
        if (i == 1 && n >= 7 && strcmp(rest + n - 7, "/cancel") == 0) return false;
        if (id) *id = rest;
        if (len) *len = strlen(rest);
        return true;
    }
    return false;
}

/* ---------- GET /api/eval-status/{id} ---------- */

typedef struct status_op {
    preq *r;
    char eval_id[SUB_MAX_EVAL_ID + 1];
    json_t *record; /* route record, or NULL */
    bool redis_down;
} status_op;

static void op_free(status_op *op)
{
    json_decref(op->record);
    free(op);
}

static void op_reply(status_op *op, int status, json_t *o)
{
    /* the only reals are durations, rounded to microseconds: 15 significant
     * digits write them as they are (0.011113, not 0.011113000000000001) */
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(o);
    if (!text) {
        px_count_reject(op->r->p, RJ_OOM);
        px_finish_error(op->r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    } else {
        px_finish_text(op->r, status, text, strlen(text));
        free(text);
    }
    op_free(op);
}

/* "error" is a non-empty string, or null when there is none (both paths). */
static void set_error(json_t *o, json_t *v)
{
    if (json_is_string(v) && json_string_length(v) > 0) json_object_set(o, "error", v);
    else json_object_set_new(o, "error", json_null());
}

/* A duration in seconds, rounded to microseconds; left out when not a number. */
static void set_seconds(json_t *o, const char *key, json_t *v)
{
    if (json_is_number(v)) json_object_set_new(o, key, json_real(round(json_number_value(v) * 1e6) / 1e6));
}

static void op_error(status_op *op, int status, const char *code, const char *msg, int retry_after)
{
    px_finish_error(op->r, status, code, msg, retry_after);
    op_free(op);
}

static json_t *iso_or_null(double t)
{
    char buf[32];
    if (t <= 0) return json_null();
    util_iso8601(t, buf);
    return json_string(buf);
}

/* The common shape; fields a path cannot fill stay null. */
static json_t *shape(const status_op *op, const char *status, const char *path)
{
    json_t *at = json_object_get(op->record, "submitted_at");
    int terminal = evstatus_outcome(status) >= 0;
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:n, s:n, s:n, s:n, s:o}", "eval_id", op->eval_id, "status", status,
                          "path", path, "created_at", iso_or_null(json_is_number(at) ? json_number_value(at) : 0),
                          "completed_at", "output", "error", "exit_code", "success",
                          terminal ? json_boolean(strcmp(status, "completed") == 0) : json_null());
    json_t *done = json_object_get(op->record, "completed_at");
    if (o && terminal && json_is_number(done)) json_object_set_new(o, "completed_at", iso_or_null(json_number_value(done)));
    if (o) {
        json_t *prio = json_object_get(op->record, "priority");
        json_object_set_new(o, "priority", json_is_integer(prio) ? json_integer(json_integer_value(prio)) : json_null());
        json_object_set_new(o, "routed", json_boolean(op->record != NULL));
    }
    return o;
}

static void reply_legacy(status_op *op, json_t *task)
{
    const char *status = bk_normalized_status(task);
    if (!status) {
        px_count_upstream_error(op->r->p, PATH_LEGACY, UP_BAD_REPLY);
        op_error(op, 502, "legacy_error", "the legacy Queue Service answered with a status turnout does not know", 0);
        return;
    }
    json_t *o = shape(op, status, "legacy");
    if (o) {
        if (!op->record) json_object_set(o, "created_at", json_object_get(task, "queued_at"));
        const char *fields[] = {"completed_at", "output", "exit_code"};
        for (int i = 0; i < 3; i++) {
            json_t *v = json_object_get(task, fields[i]);
            if (v) json_object_set(o, fields[i], v);
        }
        set_error(o, json_object_get(task, "error"));
        set_seconds(o, "duration_s", json_object_get(task, "duration_s"));
        json_t *pos = json_object_get(task, "position");
        json_object_set(o, "queue_position", json_is_integer(pos) ? pos : json_null());
    }
    op_reply(op, 200, o);
}

static void on_legacy_task(const bk_result *res, void *arg)
{
    status_op *op = arg;
    proxy *p = op->r->p;
    char msg[400];
    px_hold_in_flight(op->r, NOT_WAITING);
    const char *kept = json_string_value(json_object_get(op->record, "outcome"));
    if (bk_reply_unreadable(res) && (kept || res->too_large)) {
        /* The result cannot be read: completion tracking finished the eval
         * as failed (the record says why), or will, as a reply too large
         * never gets smaller.  The status says so instead of a 502. */
        op->r->path = PATH_LEGACY;
        px_count_upstream_error(p, PATH_LEGACY, UP_BAD_REPLY);
        json_t *o = shape(op, kept ? kept : "failed", "legacy");
        if (o) {
            json_t *why = json_object_get(op->record, "error");
            if (!json_is_string(why)) {
                snprintf(msg, sizeof(msg),
                         "the result could not be read: the legacy Queue Service's reply is larger than "
                         "LEGACY_MAX_REPLY_BYTES (%lld bytes)",
                         p->cfg.legacy_max_reply_bytes);
                json_object_set_new(o, "error", json_string(msg));
            } else {
                set_error(o, why);
            }
            json_object_set_new(o, "success", json_false());
            json_object_set_new(o, "queue_position", json_null());
        }
        op_reply(op, 200, o);
        return;
    }
    switch (res->outcome) {
    case BK_OK:
        op->r->path = PATH_LEGACY;
        reply_legacy(op, res->doc);
        return;
    case BK_NOT_FOUND:
        if (kept) {
            /* legacy forgot it; the record kept how it ended */
            op->r->path = PATH_LEGACY;
            json_t *o = shape(op, kept, "legacy");
            if (o) {
                set_error(o, json_object_get(op->record, "error"));
                json_object_set_new(o, "queue_position", json_null());
            }
            op_reply(op, 200, o);
        } else if (op->record) {
            op->r->path = PATH_LEGACY;
            snprintf(msg, sizeof(msg),
                     "eval_id \"%s\" was routed to the legacy path, but the legacy Queue Service no longer knows it (its results expire)",
                     op->eval_id);
            op_error(op, 404, "not_found", msg, 0);
        } else if (op->redis_down) {
            op_error(op, 503, "redis_unavailable",
                     "Redis is unreachable, so the new path cannot be asked, and the legacy Queue Service does not know this eval_id; retry after the Retry-After delay",
                     1);
        } else {
            snprintf(msg, sizeof(msg), "no evaluation \"%s\" on either path (no route record, no result, unknown to the legacy Queue Service)",
                     op->eval_id);
            op_error(op, 404, "not_found", msg, 0);
        }
        return;
    default: {
        const char *code;
        int st = px_backend_failed(p, PATH_LEGACY, res, &code);
        op_error(op, st, code, res->detail, 0);
        return;
    }
    }
}

static void ask_legacy(status_op *op)
{
    px_hold_in_flight(op->r, PATH_LEGACY);
    if (!bk_get_task(op->r->p->paths[PATH_LEGACY], op->eval_id, on_legacy_task, op)) {
        px_count_reject(op->r->p, RJ_OOM);
        op_error(op, 503, "out_of_memory", "the proxy could not start the legacy call; retry shortly", 1);
    }
}

/* The Celery record's fields in the common shape. */
static void fill_from_celery(json_t *o, json_t *res, const char *status)
{
    json_t *result = json_object_get(res, "result");
    const char *st = json_string_value(json_object_get(res, "status"));
    if (evstatus_outcome(status) >= 0) json_object_set(o, "completed_at", json_object_get(res, "date_done"));
    if (st && strcmp(st, "SUCCESS") == 0 && json_is_object(result)) {
        const char *fields[] = {"output", "exit_code"};
        for (int i = 0; i < 2; i++) {
            json_t *v = json_object_get(result, fields[i]);
            if (v) json_object_set(o, fields[i], v);
        }
        set_error(o, json_object_get(result, "error"));
        set_seconds(o, "duration_s", json_object_get(result, "duration_s"));
        json_t *v = json_object_get(result, "executor");
        if (v) json_object_set(o, "executor", v);
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
}

static void on_looked_up(rbatch *b, void *arg)
{
    status_op *op = arg;
    proxy *p = op->r->p;
    px_hold_in_flight(op->r, NOT_WAITING);
    const rbatch_reply *rec = rbatch_at(b, 0), *res = rbatch_at(b, 1), *running = rbatch_at(b, 2),
                       *sched = rbatch_at(b, 3);
    const char *rerr = NULL;
    for (int i = 0; i < 4 && !rerr; i++) rerr = rbatch_redis_error(rbatch_at(b, i));
    if (rbatch_error(b) || rerr || !rec || !res || !running || !sched) {
        /* Redis cannot answer: the legacy path still can */
        px_count_upstream_error(p, PATH_NEW, rbatch_timed_out(b) ? UP_TIMEOUT : rerr ? UP_REDIS_ERROR : UP_REDIS_DOWN);
        op->redis_down = true;
        rbatch_free(b);
        ask_legacy(op);
        return;
    }
    size_t len;
    const char *text = rbatch_str(rec, &len);
    op->record = text ? records_parse(text, len) : NULL;
    enum route_path path = records_path(op->record);
    text = rbatch_str(res, &len);
    /* the output may hold NUL bytes: \u0000 is valid JSON */
    json_t *result = text ? json_loadb(text, len, JSON_ALLOW_NUL, NULL) : NULL;
    bool is_running = running->type == REDIS_REPLY_STRING, is_sched = sched->type == REDIS_REPLY_STRING;
    if (path == PATH_LEGACY || (path == PATH_UNKNOWN && !result && !is_running && !is_sched)) {
        json_decref(result);
        rbatch_free(b);
        ask_legacy(op);
        return;
    }
    op->r->path = PATH_NEW;
    const char *status = evstatus_from_celery(result);
    const char *kept = json_string_value(json_object_get(op->record, "outcome"));
    if (!result && kept && evstatus_outcome(kept) >= 0) status = kept; /* the result expired; the record kept it */
    if (!status || strcmp(status, "queued") == 0) status = is_running ? "running" : is_sched ? "retrying" : "queued";
    json_t *o = shape(op, status, "new");
    if (o) {
        fill_from_celery(o, result, status);
        json_object_set_new(o, "queue_position", json_null());
    }
    json_decref(result);
    rbatch_free(b);
    op_reply(op, 200, o);
}

void status_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    const char *id;
    size_t len;
    char msg[200];
    if (!status_api_match(path, &id, &len)) { /* the caller checked; stay total anyway */
        px_reply_error(p, req, RT_STATUS, t0, 404, "not_found", "use GET /api/eval-status/{eval_id}", 0);
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        px_reply_method_not_allowed(p, req, RT_STATUS, t0, "GET", "use GET /api/eval-status/{eval_id} (cancel: POST /api/eval/{eval_id}/cancel)");
        return;
    }
    if (!util_valid_id(id, len, SUB_MAX_EVAL_ID)) {
        px_count_reject(p, RJ_INVALID_FIELD);
        snprintf(msg, sizeof(msg), "eval_id: must be 1 to %d characters of [A-Za-z0-9_.:-]", SUB_MAX_EVAL_ID);
        px_reply_error(p, req, RT_STATUS, t0, 422, "invalid_eval_id", msg, 0);
        return;
    }
    if (px_refuse_overload(p, req, RT_STATUS, t0)) return;
    status_op *op = calloc(1, sizeof(*op));
    preq *r = op ? px_req_new(p, req, RT_STATUS, t0) : NULL;
    rbatch *b = r ? rbatch_new(on_looked_up, op) : NULL;
    if (!b) {
        free(op);
        px_reply_oom(p, req, RT_STATUS, t0, r);
        return;
    }
    op->r = r;
    memcpy(op->eval_id, id, len);
    op->eval_id[len] = '\0';
    char route_key[ROUTE_KEY_MAX], result_key[KEY_MAX], running_key[KEY_MAX], tid[SUB_MAX_EVAL_ID + 8];
    records_key(op->eval_id, route_key);
    snprintf(tid, sizeof(tid), "celery-%s", op->eval_id);
    snprintf(result_key, sizeof(result_key), RESULTS_KEY_PREFIX "%s", tid);
    snprintf(running_key, sizeof(running_key), RUNNING_PREFIX "%s", tid);
    const char *a0[] = {"GET", route_key}, *a1[] = {"GET", result_key}, *a2[] = {"GET", running_key},
               *a3[] = {"HGET", SCHEDULE_IDS, tid};
    size_t l0[] = {3, strlen(route_key)}, l1[] = {3, strlen(result_key)}, l2[] = {3, strlen(running_key)},
           l3[] = {4, sizeof(SCHEDULE_IDS) - 1, strlen(tid)};
    px_hold_in_flight(r, PATH_NEW);
    if (rbatch_add(b, p->broker, 2, a0, l0) == 0 && rbatch_add(b, px_results_rc(p), 2, a1, l1) == 1 &&
        rbatch_add(b, p->broker, 2, a2, l2) == 2)
        (void)rbatch_add(b, p->broker, 3, a3, l3);
    rbatch_run(b);
}

/* ---------- GET /api/queue-status ---------- */

typedef struct queue_op {
    preq *r;
    int waiting;
    json_t *legacy;
    json_t *fresh;
} queue_op;

static void queue_done(queue_op *q)
{
    if (--q->waiting > 0) return;
    bool legacy_ok = json_object_get(q->legacy, "error") == NULL;
    bool new_ok = json_object_get(q->fresh, "error") == NULL;
    json_t *o = json_pack("{s:O, s:O}", "legacy", q->legacy, "new", q->fresh);
    px_hold_in_flight(q->r, NOT_WAITING);
    if (!o) {
        px_count_reject(q->r->p, RJ_OOM);
        px_finish_error(q->r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    } else {
        if (!legacy_ok && !new_ok) evhttp_add_header(evhttp_request_get_output_headers(q->r->req), "Retry-After", "1");
        px_finish_json(q->r, legacy_ok || new_ok ? 200 : 503, o);
    }
    json_decref(o);
    json_decref(q->legacy);
    json_decref(q->fresh);
    free(q);
}

static void on_queue_legacy(const bk_result *res, void *arg)
{
    queue_op *q = arg;
    if (res->outcome == BK_OK) {
        q->legacy = json_deep_copy(res->doc);
    } else {
        const char *code;
        (void)px_backend_failed(q->r->p, PATH_LEGACY, res, &code);
        q->legacy = json_pack("{s:s, s:s}", "error", code, "message",
                              res->detail ? res->detail : "the legacy queue did not answer");
    }
    queue_done(q);
}

static void on_queue_new(rbatch *b, void *arg)
{
    queue_op *q = arg;
    proxy *p = q->r->p;
    const char *rerr = NULL;
    for (int i = 0; i < CELERY_NSTEPS + 3 && !rerr; i++) rerr = rbatch_redis_error(rbatch_at(b, i));
    if (rbatch_error(b) || rerr) {
        px_count_upstream_error(p, PATH_NEW, rbatch_timed_out(b) ? UP_TIMEOUT : rerr ? UP_REDIS_ERROR : UP_REDIS_DOWN);
        q->fresh = json_pack("{s:s, s:o}", "error", "redis_unavailable", "message",
                             jsafe_string(rerr ? rerr : "Redis did not answer; the new queue's depth is unknown"));
    } else {
        json_t *depth = json_object();
        long long total = 0;
        for (int i = 0; i < CELERY_NSTEPS; i++) {
            char k[8];
            long long n = rbatch_int(rbatch_at(b, i), 0);
            snprintf(k, sizeof(k), "%d", celery_priority_steps[i]);
            json_object_set_new(depth, k, json_integer(n));
            total += n;
        }
        q->fresh = json_pack("{s:s, s:o, s:I, s:I, s:I, s:I}", "queue", p->cfg.queue, "depth", depth, "queued",
                             (json_int_t)total, "unacked", (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS), 0),
                             "retry_scheduled", (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS + 1), 0), "dlq",
                             (json_int_t)rbatch_int(rbatch_at(b, CELERY_NSTEPS + 2), 0));
    }
    rbatch_free(b);
    queue_done(q);
}

void status_api_queue(proxy *p, struct evhttp_request *req, double t0)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        px_reply_method_not_allowed(p, req, RT_STATUS, t0, "GET", "use GET /api/queue-status");
        return;
    }
    queue_op *q = calloc(1, sizeof(*q));
    preq *r = q ? px_req_new(p, req, RT_STATUS, t0) : NULL;
    rbatch *b = r ? rbatch_new(on_queue_new, q) : NULL;
    if (!b) {
        free(q);
        px_reply_oom(p, req, RT_STATUS, t0, r);
        return;
    }
    q->r = r;
    q->waiting = 3; /* legacy, new, this function */
    px_hold_in_flight(r, PATH_NONE);
    if (!bk_queue_status(p->paths[PATH_LEGACY], on_queue_legacy, q)) {
        q->legacy = json_pack("{s:s, s:s}", "error", "out_of_memory", "message", "the legacy call could not start");
        q->waiting--;
    }
    char keys[CELERY_NSTEPS][256];
    for (int i = 0; i < CELERY_NSTEPS; i++) {
        size_t n = celery_queue_key(p->cfg.queue, celery_priority_steps[i], keys[i], sizeof(keys[i]));
        const char *argv[] = {"LLEN", keys[i]};
        size_t lens[] = {4, n};
        if (rbatch_add(b, p->broker, 2, argv, lens) < 0) break;
    }
    const char *hl[] = {"HLEN", KEY_UNACKED}, *zs[] = {"ZCARD", SCHEDULE}, *zd[] = {"ZCARD", DLQ_INDEX};
    size_t hll[] = {4, 7}, zsl[] = {5, sizeof(SCHEDULE) - 1}, zdl[] = {5, sizeof(DLQ_INDEX) - 1};
    if (rbatch_add(b, p->broker, 2, hl, hll) >= 0 && rbatch_add(b, p->broker, 2, zs, zsl) >= 0)
        (void)rbatch_add(b, p->broker, 2, zd, zdl);
    rbatch_run(b);
    queue_done(q);
}
