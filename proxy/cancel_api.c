#include "cancel_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "evstatus.h"
#include "keys.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "records.h"
#include "results.h"
#include "util.h"
#include "pscripts.h"

#define TASK_PREFIX "celery-"
#define RUNNING_PREFIX KEY_RUNNING_PREFIX
#define REVOKED_PREFIX KEY_REVOKED_PREFIX
#define SCHEDULE KEY_SCHEDULE
#define SCHEDULE_IDS KEY_SCHEDULE_IDS
#define REVOKE_CHANNEL KEY_REVOKE_CHANNEL
#define REVOKED_TTL_S_TEXT KEY_REVOKED_TTL_S_TEXT
#define RESULT_EXPIRES_S 86400L /* the worker's RESULT_EXPIRES_S default */
#define PIDBOX_EXPIRES_S 60
#define TID_MAX (CANCEL_EVAL_ID_MAX + sizeof(TASK_PREFIX))
#define KEY_MAX (TID_MAX + 64)

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

char *cancel_api_pidbox_revoke(const char *task_id, bool terminate, double expires)
{
    char tag[37], *body = NULL, *b64 = NULL, *out = NULL;
    json_t *env = NULL;
    json_t *msg = json_pack("{s:s, s:{s:s, s:b, s:s}, s:n, s:n, s:n}", "method", "revoke", "arguments", "task_id",
                            task_id, "terminate", terminate, "signal", "SIGTERM", "destination", "pattern",
                            "matcher");
    body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (!body) goto done;
    size_t n = strlen(body);
    b64 = malloc(4 * ((n + 2) / 3) + 1);
    if (!b64) goto done;
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body, (int)n);
    util_uuid4(tag);
    env = json_pack("{s:s, s:s, s:s, s:{s:i, s:f}, s:{s:i, s:{s:s, s:s}, s:i, s:s, s:s}}", "body", b64,
                    "content-encoding", "utf-8", "content-type", "application/json", "headers", "clock", 1,
                    "expires", expires, "properties", "delivery_mode", 2, "delivery_info", "exchange",
                    "celery.pidbox", "routing_key", "", "priority", 0, "body_encoding", "base64",
                    "delivery_tag", tag);
    if (env) out = json_dumps(env, JSON_COMPACT);
done:
    json_decref(msg);
    json_decref(env);
    free(body);
    free(b64);
    return out;
}

/* ---------- the request ---------- */

enum prev { PREV_QUEUED, PREV_RUNNING, PREV_RETRYING };
static const char *const prev_names[] = {"queued", "running", "retrying"};

typedef struct cancel_op {
    preq *r;
    bool terminate;
    bool stopping;   /* a running legacy task was asked to stop (terminate=true) */
    enum prev prev;
    char eval_id[CANCEL_EVAL_ID_MAX + 1];
    char tid[TID_MAX];
    char result_key[KEY_MAX];
    bool deleted_once; /* legacy: DELETE already tried */
    char kept_outcome[16]; /* how it ended, as its route record kept it ("" = not known) */
} cancel_op;

static void op_free(cancel_op *op) { free(op); }

static void op_finish_json(cancel_op *op, int status, json_t *body)
{
    px_finish_json(op->r, status, body);
    json_decref(body);
    op_free(op);
}

static void op_finish_oom(cancel_op *op)
{
    px_count_reject(op->r->p, RJ_OOM);
    px_finish_error(op->r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
    op_free(op);
}

static void op_finish_failure(cancel_op *op, const rbatch *b, const char *redis_err, const char *what)
{
    rbatch_finish_failure(op->r, b, redis_err, what);
    op_free(op);
}

/* The status a finished record stands for, in the API's words. */
static const char *finished_status(const char *status, json_t *rec)
{
    const char *s = evstatus_from_celery(rec);
    if (s && evstatus_outcome(s) >= 0) return s;
    if (strcmp(status, "FAILURE") == 0) return "failed";
    if (strcmp(status, "REVOKED") == 0) return "cancelled";
    return "completed";
}

static void reply_finished(cancel_op *op, const char *status, json_t *rec)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "error", "already_finished", "message", "already finished",
                          "eval_id", op->eval_id, "previous_status", finished_status(status, rec), "cancelled", 0);
    if (!o) op_finish_oom(op);
    else op_finish_json(op, 409, o);
}

/* The record's status, or NULL when there is none; *rec gets the parsed
 * record (new reference or NULL). */
static const char *record_status(const rbatch_reply *r, json_t **rec)
{
    *rec = r && r->type == REDIS_REPLY_STRING ? json_loadb(r->str, r->len, 0, NULL) : NULL;
    return json_string_value(json_object_get(*rec, "status"));
}


static void on_refetched(rbatch *b, void *arg)
{
    cancel_op *op = arg;
    json_t *rec = NULL;
    const rbatch_reply *rep = rbatch_at(b, 0);
    const char *status = record_status(rep, &rec);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        op_finish_failure(op, b, rbatch_redis_error(rep), "reading the result record");
    } else {
        /* REVOKED was refused because a terminal record is there; it may
         * have expired in between, in which case it finished anyway. */
        reply_finished(op, status ? status : "SUCCESS", rec);
    }
    json_decref(rec);
    rbatch_free(b);
}

static void on_acted(rbatch *b, void *arg)
{
    cancel_op *op = arg;
    const rbatch_reply *rev = rbatch_at(b, 0);
    const rbatch_reply *wrote = op->prev == PREV_RUNNING ? NULL : rbatch_at(b, 1);
    const char *rerr = rbatch_redis_error(rev) ? rbatch_redis_error(rev) : rbatch_redis_error(wrote);
    if (rbatch_error(b) || rerr || !rev || (op->prev != PREV_RUNNING && !wrote)) {
        op_finish_failure(op, b, rerr, "recording the cancellation");
        goto done;
    }
    if (wrote && rbatch_int(wrote, 1) == 0) {
        /* It finished between the look-up and now: say how. */
        rbatch *b2 = rbatch_new(on_refetched, op);
        if (!b2) {
            op_finish_oom(op);
            goto done;
        }
        const char *argv[] = {"GET", op->result_key};
        size_t lens[] = {3, strlen(op->result_key)};
        rbatch_add(b2, px_results_rc(op->r->p), 2, argv, lens);
        rbatch_run(b2);
        goto done;
    }
    LOG_INFO("cancelled", "eval_id", op->eval_id, "previous_status", prev_names[op->prev], "terminate",
             op->terminate ? "true" : "false");
    const char *msg = op->prev == PREV_RUNNING    ? "termination requested"
                      : op->prev == PREV_RETRYING ? "retry chain stopped: the pending retry was removed"
                                                  : "removed: it will be skipped when taken";
    json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "eval_id", op->eval_id, "previous_status", prev_names[op->prev],
                          "cancelled", 1, "message", msg);
    if (!o) op_finish_oom(op);
    else op_finish_json(op, 200, o);
done:
    rbatch_free(b);
}

static void act(cancel_op *op)
{
    proxy *p = op->r->p;
    double now = util_now();
    char revoked_key[KEY_MAX], channel[64], expires[24];
    char *marker = NULL, *notice = NULL, *pidbox = NULL, *record = NULL;
    json_t *mj = json_pack("{s:b, s:f, s:s}", "terminate", op->terminate, "at", now, "by", "api");
    json_t *nj = op->terminate ? json_pack("{s:s, s:b}", "task_id", op->tid, "terminate", 1) : NULL;
    marker = mj ? json_dumps(mj, JSON_COMPACT) : NULL;
    notice = nj ? json_dumps(nj, JSON_COMPACT) : NULL;
    pidbox = cancel_api_pidbox_revoke(op->tid, op->terminate, now + PIDBOX_EXPIRES_S);
    if (op->prev != PREV_RUNNING)
        record = results_record(op->tid, "REVOKED", results_exception("TaskRevokedError", "revoked", "celery.exceptions"),
                                NULL);
    rbatch *b = NULL;
    if (!marker || !pidbox || (op->terminate && !notice) || (op->prev != PREV_RUNNING && !record) ||
        !(b = rbatch_new(on_acted, op))) {
        op_finish_oom(op);
        goto done;
    }
    snprintf(revoked_key, sizeof(revoked_key), REVOKED_PREFIX "%s", op->tid);
    snprintf(channel, sizeof(channel), "/%d.celery.pidbox", rclient_db(p->broker));
    const char *argv[] = {"3", revoked_key, SCHEDULE, SCHEDULE_IDS,
                          op->tid, marker, notice ? notice : "", channel, pidbox};
    size_t lens[9];
    for (int i = 0; i < 9; i++) lens[i] = strlen(argv[i]);
    /* The marker first: from then on no worker starts it. */
    if (rbatch_add_eval(b, p->broker, &pscript_revoke, 9, argv, lens) == 0 && record) {
        const char *wargv[RESULTS_WRITE_ARGC];
        size_t wlens[RESULTS_WRITE_ARGC];
        results_write_argv(op->result_key, record, RESULT_EXPIRES_S, expires, wargv, wlens);
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

/* ---------- legacy path ---------- */

static void legacy_get(cancel_op *op);

static void legacy_failed(cancel_op *op, const bk_result *res)
{
    const char *code;
    int status = px_backend_failed(op->r->p, PATH_LEGACY, res, &code);
    px_finish_error(op->r, status, code, res->detail, 0);
    op_free(op);
}

static void reply_kept_outcome(cancel_op *op)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "error", "already_finished", "message", "already finished",
                          "eval_id", op->eval_id, "previous_status", op->kept_outcome, "cancelled", 0);
    if (!o) op_finish_oom(op);
    else op_finish_json(op, 409, o);
}

static void legacy_not_found(cancel_op *op)
{
    char msg[300];
    if (op->kept_outcome[0]) { /* legacy forgot it; the record kept how it ended */
        reply_kept_outcome(op);
        return;
    }
    snprintf(msg, sizeof(msg), "no evaluation \"%s\" on either path (no route record, nothing on the new queue, unknown to the legacy Queue Service)",
             op->eval_id);
    px_finish_error(op->r, 404, "not_found", msg, 0);
    op_free(op);
}

static void on_legacy_deleted(const bk_result *res, void *arg)
{
    cancel_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    if (res->outcome == BK_OK) {
        const char *prev = op->stopping ? "running" : "queued";
        LOG_INFO("cancelled", "eval_id", op->eval_id, "path", "legacy", "previous_status", prev);
        json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "eval_id", op->eval_id, "previous_status", prev, "cancelled",
                              1, "message",
                              op->stopping ? "the legacy queue's worker was told to stop it; its status turns cancelled"
                                           : "removed from the legacy queue; it will not run");
        if (!o) op_finish_oom(op);
        else op_finish_json(op, 200, o);
    } else if (res->outcome == BK_CONFLICT || res->outcome == BK_NOT_FOUND) {
        /* it started or ended in between: say what it is now */
        legacy_get(op);
    } else {
        legacy_failed(op, res);
    }
}

static void on_legacy_task(const bk_result *res, void *arg)
{
    cancel_op *op = arg;
    px_hold_in_flight(op->r, NOT_WAITING);
    if (res->outcome == BK_NOT_FOUND) {
        legacy_not_found(op);
        return;
    }
    if (res->outcome != BK_OK) {
        legacy_failed(op, res);
        return;
    }
    const char *status = bk_normalized_status(res->doc);
    if (status && strcmp(status, "queued") == 0 && !op->deleted_once) {
        op->deleted_once = true;
        px_hold_in_flight(op->r, PATH_LEGACY);
        if (!bk_cancel_task(op->r->p->paths[PATH_LEGACY], op->eval_id, false, on_legacy_deleted, op)) op_finish_oom(op);
        return;
    }
    bool can_stop = bk_can_terminate(op->r->p->paths[PATH_LEGACY]);
    if (status && strcmp(status, "running") == 0 && op->terminate && can_stop && !op->stopping) {
        op->stopping = true; /* once: a second refusal is answered as it stands */
        px_hold_in_flight(op->r, PATH_LEGACY);
        if (!bk_cancel_task(op->r->p->paths[PATH_LEGACY], op->eval_id, true, on_legacy_deleted, op)) op_finish_oom(op);
        return;
    }
    if (status && strcmp(status, "running") == 0) {
        px_finish_error(op->r, 409, "running",
                        can_stop ? "the evaluation is running on the legacy path; add ?terminate=true to stop it"
                                 : "the evaluation is running on the legacy path, and the legacy Queue Service cannot "
                                   "stop a running task (terminate=true works on the new path only); wait for its result",
                        0);
        op_free(op);
        return;
    }
    if (!status || strcmp(status, "queued") == 0) {
        /* unknown status, or queued again after a refused DELETE */
        px_finish_error(op->r, 502, "legacy_error", "the legacy Queue Service refused to cancel the task; retry", 0);
        op_free(op);
        return;
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "error", "already_finished", "message", "already finished",
                          "eval_id", op->eval_id, "previous_status", status, "cancelled", 0);
    if (!o) op_finish_oom(op);
    else op_finish_json(op, 409, o);
}

static void legacy_get(cancel_op *op)
{
    op->r->path = PATH_LEGACY;
    px_hold_in_flight(op->r, PATH_LEGACY);
    if (!bk_get_task(op->r->p->paths[PATH_LEGACY], op->eval_id, on_legacy_task, op)) op_finish_oom(op);
}

static void on_looked_up(rbatch *b, void *arg)
{
    cancel_op *op = arg;
    const rbatch_reply *res = rbatch_at(b, 0), *running = rbatch_at(b, 1), *sched = rbatch_at(b, 2),
                       *route = rbatch_at(b, 3);
    const char *rerr = NULL;
    json_t *rec = NULL;
    for (int i = 0; i < 4 && !rerr; i++) rerr = rbatch_redis_error(rbatch_at(b, i));
    if (rbatch_error(b) || rerr || !res || !running || !sched || !route) {
        op_finish_failure(op, b, rerr, "looking the evaluation up");
        goto done;
    }
    size_t rlen;
    const char *rtext = rbatch_str(route, &rlen);
    json_t *route_rec = rtext ? records_parse(rtext, rlen) : NULL;
    enum route_path path = records_path(route_rec);
    const char *kept = json_string_value(json_object_get(route_rec, "outcome"));
    if (kept && evstatus_outcome(kept) >= 0) snprintf(op->kept_outcome, sizeof(op->kept_outcome), "%s", kept);
    json_decref(route_rec);
    const char *status = record_status(res, &rec);
    if (path == PATH_NEW && !status && op->kept_outcome[0]) { /* the result expired; the record kept it */
        reply_kept_outcome(op);
        goto done;
    }
    if (path == PATH_LEGACY ||
        (path == PATH_UNKNOWN && !status && running->type != REDIS_REPLY_STRING && sched->type != REDIS_REPLY_STRING)) {
        /* routed to legacy, or not known to the new path: the legacy
         * Queue Service decides (and says 404 for an id nobody knows) */
        px_hold_in_flight(op->r, NOT_WAITING);
        legacy_get(op);
        goto done;
    }
    if (status && results_is_terminal(status)) {
        reply_finished(op, status, rec);
        goto done;
    }
    bool is_running = running->type == REDIS_REPLY_STRING ||
                      (status && (strcmp(status, "STARTED") == 0 || strcmp(status, "PROGRESS") == 0));
    bool is_retrying = sched->type == REDIS_REPLY_STRING || (status && strcmp(status, "RETRY") == 0);
    if (is_running && !op->terminate) {
        px_finish_error(op->r, 409, "running", "the evaluation is running; add ?terminate=true to kill it", 0);
        op_free(op);
        goto done;
    }
    /* New path, not finished: a queued eval (route record, nothing else
     * yet) is revoked before a worker takes it. */
    op->prev = is_running ? PREV_RUNNING : is_retrying ? PREV_RETRYING : PREV_QUEUED;
    act(op);
done:
    json_decref(rec);
    rbatch_free(b);
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
    snprintf(op->tid, sizeof(op->tid), TASK_PREFIX "%s", op->eval_id);
    snprintf(op->result_key, sizeof(op->result_key), RESULTS_KEY_PREFIX "%s", op->tid);

    rbatch *b = rbatch_new(on_looked_up, op);
    if (!b) {
        op_finish_oom(op);
        return;
    }
    char running_key[KEY_MAX];
    snprintf(running_key, sizeof(running_key), RUNNING_PREFIX "%s", op->tid);
    const char *get_res[] = {"GET", op->result_key};
    size_t get_res_len[] = {3, strlen(op->result_key)};
    const char *get_run[] = {"GET", running_key};
    size_t get_run_len[] = {3, strlen(running_key)};
    const char *get_sched[] = {"HGET", SCHEDULE_IDS, op->tid};
    size_t get_sched_len[] = {4, sizeof(SCHEDULE_IDS) - 1, strlen(op->tid)};
    char route_key[ROUTE_KEY_MAX];
    records_key(op->eval_id, route_key);
    const char *get_route[] = {"GET", route_key};
    size_t get_route_len[] = {3, strlen(route_key)};
    if (rbatch_add(b, px_results_rc(p), 2, get_res, get_res_len) == 0 &&
        rbatch_add(b, p->broker, 2, get_run, get_run_len) == 1 &&
        rbatch_add(b, p->broker, 3, get_sched, get_sched_len) == 2)
        rbatch_add(b, p->broker, 2, get_route, get_route_len);
    rbatch_run(b);
}
