#include "status_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "evstatus.h"
#include "pserver.h"
#include "reply.h"
#include "records.h"
#include "util.h"

/* An eval no route record names (submitted around the proxy, or its
 * record expired): the paths are asked in this order. */
static const enum route_path unrouted_order[] = {PATH_NEW, PATH_LEGACY};
#define UNROUTED_N (sizeof(unrouted_order) / sizeof(unrouted_order[0]))

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
    json_t *record;        /* route record, or NULL */
    enum route_path asked; /* the path being asked */
    size_t next;           /* unrouted: the next index of unrouted_order */
    bool unasked;          /* a path (or the route records) could not be asked */
    bool records_down;     /* the route records could not be read */
    enum pm_upstream records_why;
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

/* The backend's task doc in the common shape. */
static void reply_task(status_op *op, json_t *task)
{
    enum route_path path = op->asked;
    const char *status = bk_normalized_status(task);
    if (!status) {
        const char *code = op->r->p->paths[path]->ops->error_code;
        px_count_upstream_error(op->r->p, path, UP_BAD_REPLY);
        op_error(op, 502, code, "the path's queue answered with a status turnout does not know", 0);
        return;
    }
    json_t *o = shape(op, status, route_path_names[path]);
    if (o) {
        if (!op->record) {
            json_t *queued_at = json_object_get(task, "queued_at");
            if (queued_at) json_object_set(o, "created_at", queued_at);
        }
        const char *fields[] = {"completed_at", "output", "exit_code", "executor", "retries"};
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
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

/* The record kept how it ended (the path forgot it, or its result cannot
 * be read): the common shape from the record. */
static void reply_kept(status_op *op, const char *kept, json_t *error)
{
    json_t *o = shape(op, kept, route_path_names[op->asked]);
    if (o) {
        set_error(o, error);
        json_object_set_new(o, "success", json_boolean(strcmp(kept, "completed") == 0));
        json_object_set_new(o, "queue_position", json_null());
    }
    op_reply(op, 200, o);
}

static void ask(status_op *op, enum route_path path);

/* The next path to ask of an unrouted eval, or PATH_NONE.  When the route
 * records could not be read, a path on the proxy's own store is skipped:
 * that store has just failed to answer. */
static enum route_path next_unrouted(status_op *op)
{
    while (op->next < UNROUTED_N) {
        enum route_path path = unrouted_order[op->next++];
        if (!(op->records_down && op->r->p->paths[path]->ops->own_store)) return path;
        px_count_upstream_error(op->r->p, path, op->records_why); /* its store failed, for it */
    }
    return PATH_NONE;
}

/* Not known to the path asked. */
static void not_found(status_op *op)
{
    char msg[400];
    enum route_path next;
    backend *b = op->r->p->paths[op->asked];
    const char *kept = json_string_value(json_object_get(op->record, "outcome"));
    if (op->record && kept) {
        reply_kept(op, kept, json_object_get(op->record, "error"));
    } else if (op->record && b->ops->queued_unindexed) {
        /* routed there, nothing else yet: its message waits in the queue */
        json_t *o = shape(op, "queued", route_path_names[op->asked]);
        if (o) json_object_set_new(o, "queue_position", json_null());
        op_reply(op, 200, o);
    } else if (op->record) {
        snprintf(msg, sizeof(msg),
                 "eval_id \"%s\" was routed to the %s path, but its queue no longer knows it (its results expire)",
                 op->eval_id, route_path_names[op->asked]);
        op_error(op, 404, "not_found", msg, 0);
    } else if ((next = next_unrouted(op)) != PATH_NONE) {
        ask(op, next);
    } else if (op->unasked) {
        op_error(op, 503, "redis_unavailable",
                 "Redis is unreachable, so the new path cannot be asked, and the legacy queue does not know this "
                 "eval_id; retry after the Retry-After delay",
                 1);
    } else {
        snprintf(msg, sizeof(msg),
                 "no evaluation \"%s\" on either path (no route record, no result, unknown to the legacy queue)",
                 op->eval_id);
        op_error(op, 404, "not_found", msg, 0);
    }
}

static void on_task(const bk_result *res, void *arg)
{
    status_op *op = arg;
    proxy *p = op->r->p;
    char msg[400];
    px_hold_in_flight(op->r, NOT_WAITING);
    op->r->path = op->asked;
    const char *kept = json_string_value(json_object_get(op->record, "outcome"));
    if (bk_reply_unreadable(res) && (kept || res->too_large)) {
        /* The result cannot be read: completion tracking finished the eval
         * as failed (the record says why), or will, as a reply too large
         * never gets smaller.  The status says so instead of a 502. */
        px_count_upstream_error(p, op->asked, UP_BAD_REPLY);
        json_t *why = json_object_get(op->record, "error");
        if (json_is_string(why)) {
            reply_kept(op, kept ? kept : "failed", why);
            return;
        }
        snprintf(msg, sizeof(msg),
                 "the result could not be read: the legacy queue's reply is larger than LEGACY_MAX_REPLY_BYTES (%lld "
                 "bytes)",
                 p->cfg.legacy_max_reply_bytes);
        json_t *text = json_string(msg);
        reply_kept(op, kept ? kept : "failed", text);
        json_decref(text);
        return;
    }
    if (res->outcome == BK_OK) {
        reply_task(op, res->doc);
        return;
    }
    if (res->outcome == BK_NOT_FOUND) {
        not_found(op);
        return;
    }
    enum route_path next = op->record ? PATH_NONE : next_unrouted(op);
    if (next != PATH_NONE) {
        /* this path cannot be asked now; another one may know the eval */
        px_count_upstream_error(p, op->asked, px_upstream_reason(res->outcome));
        op->unasked = true;
        ask(op, next);
        return;
    }
    const char *code;
    int st = px_backend_failed(p, op->asked, res, &code);
    op_error(op, st, code, res->detail ? res->detail : "the path's queue did not answer", st == 503 ? 1 : 0);
}

static void ask(status_op *op, enum route_path path)
{
    op->asked = path;
    px_hold_in_flight(op->r, path);
    if (!bk_get_task(op->r->p->paths[path], op->eval_id, on_task, op)) {
        px_count_reject(op->r->p, RJ_OOM);
        op_error(op, 503, "out_of_memory", "the proxy could not start the path's call; retry shortly", 1);
    }
}

static void on_record(const rec_result *res, void *arg)
{
    status_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    if (res->outcome == REC_DUPLICATE) op->record = records_parse(res->existing, strlen(res->existing));
    else if (res->outcome != REC_ABSENT) {
        op->unasked = op->records_down = true;
        op->records_why = res->timeout ? UP_TIMEOUT : res->lost ? UP_CONNECT : res->err ? UP_REDIS_ERROR : UP_REDIS_DOWN;
    }
    enum route_path path = records_path(op->record);
    if (path != PATH_UNKNOWN) {
        ask(op, path);
        return;
    }
    json_decref(op->record); /* a record of an older shape says nothing */
    op->record = NULL;
    path = next_unrouted(op);
    if (path == PATH_NONE) not_found(op);
    else ask(op, path);
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
    if (!r) {
        free(op);
        px_reply_oom(p, req, RT_STATUS, t0, r);
        return;
    }
    op->r = r;
    memcpy(op->eval_id, id, len);
    op->eval_id[len] = '\0';
    px_hold_in_flight(r, PATH_NEW);
    if (records_lookup(p->records, op->eval_id, on_record, op) != 0) {
        rec_result down = {REC_FAILED, 0, NULL, NULL, false, false};
        on_record(&down, op);
    }
}

/* ---------- GET /api/queue-status ---------- */

typedef struct queue_op {
    preq *r;
    int waiting;
    json_t *paths[PATH_NONE]; /* each path's doc, or {error, message} */
} queue_op;

typedef struct queue_ask {
    queue_op *q;
    enum route_path path;
} queue_ask;

static void queue_done(queue_op *q)
{
    if (--q->waiting > 0) return;
    bool any_ok = false;
    json_t *o = json_object();
    for (int i = 0; i < PATH_NONE; i++) {
        if (json_object_get(q->paths[i], "error") == NULL) any_ok = true;
        if (o && json_object_set(o, route_path_names[i], q->paths[i]) != 0) {
            json_decref(o);
            o = NULL;
        }
    }
    px_hold_in_flight(q->r, NOT_WAITING);
    if (!o) {
        px_count_reject(q->r->p, RJ_OOM);
        px_finish_error(q->r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    } else {
        if (!any_ok) evhttp_add_header(evhttp_request_get_output_headers(q->r->req), "Retry-After", "1");
        px_finish_json(q->r, any_ok ? 200 : 503, o);
    }
    json_decref(o);
    for (int i = 0; i < PATH_NONE; i++) json_decref(q->paths[i]);
    free(q);
}

static void on_queue(const bk_result *res, void *arg)
{
    queue_ask *a = arg;
    queue_op *q = a->q;
    if (res->outcome == BK_OK) {
        q->paths[a->path] = json_deep_copy(res->doc);
    } else {
        const char *code;
        (void)px_backend_failed(q->r->p, a->path, res, &code);
        q->paths[a->path] = json_pack("{s:s, s:s}", "error", code, "message",
                                      res->detail ? res->detail : "the queue did not answer");
    }
    free(a);
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
    if (!r) {
        free(q);
        px_reply_oom(p, req, RT_STATUS, t0, r);
        return;
    }
    q->r = r;
    q->waiting = PATH_NONE + 1; /* each path, and this function */
    px_hold_in_flight(r, PATH_NONE);
    for (int i = 0; i < PATH_NONE; i++) {
        queue_ask *a = malloc(sizeof(*a));
        if (a) *a = (queue_ask){q, (enum route_path)i};
        if (!a || !bk_queue_status(p->paths[i], on_queue, a)) {
            free(a);
            q->paths[i] = json_pack("{s:s, s:s}", "error", "out_of_memory", "message", "the call could not start");
            q->waiting--;
        }
    }
    queue_done(q);
}
