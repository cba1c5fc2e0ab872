#include "cancel_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "evstatus.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "records.h"
#include "util.h"

/* An eval no route record names: the paths are asked in this order. */
static const enum route_path unrouted_order[] = {PATH_NEW, PATH_LEGACY};
#define UNROUTED_N (sizeof(unrouted_order) / sizeof(unrouted_order[0]))

/* ---------- pure parts ---------- */

bool cancel_api_match(const char *path, const char **id, size_t *len)
{
    static const char prefix[] = "/api/eval/", suffix[] = "/cancel";
    size_t pl = sizeof(prefix) - 1, sl = sizeof(suffix) - 1, n = strlen(path);
    if (n <= pl + sl || strncmp(path, prefix, pl) != 0 || strcmp(path + n - sl, suffix) != 0) return false;
    if (id) *id = path + pl;
    if (len) *len = n - pl - sl;
    return true;
}

int cancel_api_parse_terminate(const char *query, bool *terminate)
{
    *terminate = false;
    if (!query || !*query) return 0;
    struct evkeyvalq q = {0};
    if (evhttp_parse_query_str(query, &q) != 0) return -1;
    int rc = 0;
    const char *v = evhttp_find_header(&q, "terminate");
    if (v) {
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) *terminate = true;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0) *terminate = false;
        else rc = -1;
    }
    evhttp_clear_headers(&q);
    return rc;
}

/* ---------- the request ---------- */

typedef struct cancel_op {
    preq *r;
    bool terminate;
    bool cancelling;       /* cancel_task (queued) already asked */
    bool stopping;         /* cancel_task with terminate already asked */
    char eval_id[CANCEL_EVAL_ID_MAX + 1];
    char kept_outcome[16]; /* how it ended, as its route record kept it ("" = not known) */
    bool routed;           /* a route record names the path asked */
    enum route_path asked;
    size_t next;           /* unrouted: the next index of unrouted_order */
    bool records_down;     /* the route records could not be read */
    enum pm_upstream records_why;
} cancel_op;

static backend *path_of(const cancel_op *op) { return op->r->p->paths[op->asked]; }

static void op_finish_json(cancel_op *op, int status, json_t *body)
{
    px_finish_json(op->r, status, body);
    json_decref(body);
    free(op);
}

static void op_finish_error(cancel_op *op, int status, const char *code, const char *msg, int retry_after)
{
    px_finish_error(op->r, status, code, msg, retry_after);
    free(op);
}

static void op_finish_oom(cancel_op *op)
{
    px_count_reject(op->r->p, RJ_OOM);
    op_finish_error(op, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
}

static void reply_finished(cancel_op *op, const char *status)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "error", "already_finished", "message", "already finished",
                          "eval_id", op->eval_id, "previous_status", status, "cancelled", 0);
    if (!o) op_finish_oom(op);
    else op_finish_json(op, 409, o);
}

/* The paths could not all be asked because Redis, which holds the route
 * records, is away: 503, retry. */
static void reply_records_down(cancel_op *op)
{
    op_finish_error(op, 503, "redis_unavailable",
                    "Redis is unreachable, so where this evaluation went cannot be read and it cannot be "
                    "cancelled now; retry after the Retry-After delay",
                    1);
}

static void path_failed(cancel_op *op, const bk_result *res)
{
    const char *code;
    int status = px_backend_failed(op->r->p, op->asked, res, &code);
    op_finish_error(op, status, code, res->detail ? res->detail : "the path's queue did not answer",
                    status == 503 ? 1 : 0);
}

static enum route_path next_unrouted(cancel_op *op)
{
    while (op->next < UNROUTED_N) {
        enum route_path path = unrouted_order[op->next++];
        if (!(op->records_down && op->r->p->paths[path]->ops->own_store)) return path;
        px_count_upstream_error(op->r->p, path, op->records_why); /* its store failed, for it */
    }
    return PATH_NONE;
}

static void get(cancel_op *op, enum route_path path);
static void act_on(cancel_op *op, const char *status);

static void on_cancelled(const bk_result *res, void *arg)
{
    cancel_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    if (res->outcome == BK_OK) {
        const char *prev = json_string_value(json_object_get(res->doc, "previous_status"));
        const char *msg = json_string_value(json_object_get(res->doc, "cancel_note"));
        char dflt[160];
        if (!prev) prev = op->stopping ? "running" : "queued";
        if (!msg) {
            snprintf(dflt, sizeof(dflt),
                     op->stopping ? "the %s queue's worker was told to stop it; its status turns cancelled"
                                  : "removed from the %s queue; it will not run",
                     route_path_names[op->asked]);
            msg = dflt;
        }
        LOG_INFO("cancelled", "eval_id", op->eval_id, "path", route_path_names[op->asked], "previous_status", prev,
                 "terminate", op->terminate ? "true" : "false");
        json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "eval_id", op->eval_id, "previous_status", prev, "cancelled", 1,
                              "message", msg);
        if (!o) op_finish_oom(op);
        else op_finish_json(op, 200, o);
    } else if (res->outcome == BK_CONFLICT || res->outcome == BK_NOT_FOUND) {
        /* it started or ended in between: say what it is now */
        get(op, op->asked);
    } else {
        path_failed(op, res);
    }
}

static void cancel(cancel_op *op, bool terminate)
{
    px_hold_in_flight(op->r, op->asked);
    if (!bk_cancel_task(path_of(op), op->eval_id, terminate, on_cancelled, op)) op_finish_oom(op);
}

/* The eval's state on its path decides. */
static void act_on(cancel_op *op, const char *status)
{
    bool queued = status && (strcmp(status, "queued") == 0 || strcmp(status, "retrying") == 0);
    bool running = status && strcmp(status, "running") == 0;
    bool can_stop = bk_can_terminate(path_of(op));
    char msg[300];
    if (queued && !op->cancelling) {
        op->cancelling = true; /* once: a second refusal is answered as it stands */
        cancel(op, false);
    } else if (running && op->terminate && can_stop && !op->stopping) {
        op->stopping = true;
        cancel(op, true);
    } else if (running) {
        if (can_stop)
            snprintf(msg, sizeof(msg), "the evaluation is running on the %s path; add ?terminate=true to stop it",
                     route_path_names[op->asked]);
        else
            snprintf(msg, sizeof(msg),
                     "the evaluation is running on the %s path, and its queue cannot stop a running task "
                     "(terminate=true works where the queue can); wait for its result",
                     route_path_names[op->asked]);
        op_finish_error(op, 409, "running", msg, 0);
    } else if (!status || queued) {
        /* unknown status, or queued again after a refused cancel */
        snprintf(msg, sizeof(msg), "the %s path's queue refused to cancel the task; retry", route_path_names[op->asked]);
        op_finish_error(op, 502, path_of(op)->ops->error_code, msg, 0);
    } else {
        reply_finished(op, status);
    }
}

static void not_found(cancel_op *op)
{
    char msg[300];
    enum route_path next;
    if (op->routed && op->kept_outcome[0]) { /* the path forgot it; the record kept how it ended */
        reply_finished(op, op->kept_outcome);
    } else if (op->routed && path_of(op)->ops->queued_unindexed) {
        act_on(op, "queued"); /* routed there, nothing else yet: its message waits in the queue */
    } else if (!op->routed && (next = next_unrouted(op)) != PATH_NONE) {
        get(op, next);
    } else if (op->records_down) {
        reply_records_down(op);
    } else {
        snprintf(msg, sizeof(msg),
                 "no evaluation \"%s\" on either path (no route record, nothing on the new queue, unknown to the "
                 "legacy queue)",
                 op->eval_id);
        op_finish_error(op, 404, "not_found", msg, 0);
    }
}

static void on_task(const bk_result *res, void *arg)
{
    cancel_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    op->r->path = op->asked;
    if (res->outcome == BK_NOT_FOUND) {
        not_found(op);
        return;
    }
    if (res->outcome == BK_OK) {
        act_on(op, bk_normalized_status(res->doc));
        return;
    }
    enum route_path next = op->routed ? PATH_NONE : next_unrouted(op);
    if (next != PATH_NONE) {
        px_count_upstream_error(op->r->p, op->asked, px_upstream_reason(res->outcome));
        get(op, next);
    } else if (op->records_down && !op->routed) {
        px_count_upstream_error(op->r->p, op->asked, px_upstream_reason(res->outcome));
        reply_records_down(op);
    } else {
        path_failed(op, res);
    }
}

static void get(cancel_op *op, enum route_path path)
{
    op->asked = path;
    op->r->path = path;
    px_hold_in_flight(op->r, path);
    if (!bk_get_task(path_of(op), op->eval_id, on_task, op)) op_finish_oom(op);
}

static void on_record(const rec_result *res, void *arg)
{
    cancel_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    json_t *rec = res->outcome == REC_DUPLICATE ? records_parse(res->existing, strlen(res->existing)) : NULL;
    if (res->outcome != REC_DUPLICATE && res->outcome != REC_ABSENT) {
        op->records_down = true;
        op->records_why = res->timeout ? UP_TIMEOUT : res->lost ? UP_CONNECT : res->err ? UP_REDIS_ERROR : UP_REDIS_DOWN;
    }
    enum route_path path = records_path(rec);
    const char *kept = json_string_value(json_object_get(rec, "outcome"));
    if (kept && evstatus_outcome(kept) >= 0) snprintf(op->kept_outcome, sizeof(op->kept_outcome), "%s", kept);
    json_decref(rec);
    if (path != PATH_UNKNOWN) {
        op->routed = true;
        get(op, path);
        return;
    }
    path = next_unrouted(op);
    if (path != PATH_NONE) get(op, path);
    else reply_records_down(op);
}

void cancel_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    const char *id;
    size_t len;
    bool terminate;
    char msg[256];
    if (!cancel_api_match(path, &id, &len)) { /* the caller checked; stay total anyway */
        px_reply_error(p, req, RT_CANCEL, t0, 404, "not_found", "use POST /api/eval/{eval_id}/cancel", 0);
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        px_reply_method_not_allowed(p, req, RT_CANCEL, t0, "POST", "use POST /api/eval/{eval_id}/cancel[?terminate=true]");
        return;
    }
    if (!util_valid_id(id, len, CANCEL_EVAL_ID_MAX)) {
        px_count_reject(p, RJ_INVALID_FIELD);
        snprintf(msg, sizeof(msg), "eval_id: must be 1 to %d characters of [A-Za-z0-9_.:-]", CANCEL_EVAL_ID_MAX);
        px_reply_error(p, req, RT_CANCEL, t0, 422, "invalid_eval_id", msg, 0);
        return;
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    if (cancel_api_parse_terminate(uri ? evhttp_uri_get_query(uri) : NULL, &terminate) != 0) {
        px_count_reject(p, RJ_INVALID_FIELD);
        px_reply_error(p, req, RT_CANCEL, t0, 422, "invalid_parameter",
                       "terminate: must be true or false (terminate=true kills a running evaluation)", 0);
        return;
    }
    if (px_refuse_overload(p, req, RT_CANCEL, t0)) return;
    cancel_op *op = calloc(1, sizeof(*op));
    preq *r = op ? px_req_new(p, req, RT_CANCEL, t0) : NULL;
    if (!r) {
        free(op);
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_CANCEL, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    op->r = r;
    op->terminate = terminate;
    r->path = PATH_NEW;
    px_hold_in_flight(r, PATH_NEW);
    memcpy(op->eval_id, id, len);
    op->eval_id[len] = '\0';
    if (records_lookup(p->records, op->eval_id, on_record, op) != 0) {
        rec_result down = {REC_FAILED, 0, NULL, NULL, false, false};
        on_record(&down, op);
    }
}
