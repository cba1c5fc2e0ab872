#include "dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonw.h"
#include "log.h"
#include "pserver.h"
#include "records.h"
#include "shadow.h"
#include "util.h"

typedef struct dop {
    proxy *p;
    submission sub;
    route_decision dec;
    dispatch_cb cb;
    void *arg;
    enum route_path holding; /* share of turnout_in_flight_requests, or NOT_WAITING */
    char *record;            /* the route record this submission writes */
    double submitted_at;
    bool claimed;            /* legacy: the record is in Redis, ours */
} dop;

static void hold(dop *d, enum route_path path)
{
    if (d->holding != NOT_WAITING) px_in_flight_add(d->p, d->holding, -1);
    d->holding = path;
    if (path != NOT_WAITING) px_in_flight_add(d->p, path, 1);
}

static void finish_text(dop *d, int status, enum route_path path, bool duplicate, const char *body, size_t len,
                        int retry_after)
{
    hold(d, NOT_WAITING);
    dispatch_result res = {status, path, duplicate, body, body ? len : 0, retry_after};
    d->cb(&res, d->arg);
    submission_free(&d->sub);
    free(d->record);
    free(d);
}

/* Steals body. */
static void finish(dop *d, int status, enum route_path path, bool duplicate, json_t *body, int retry_after)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    finish_text(d, status, path, duplicate, text, text ? strlen(text) : 0, retry_after);
    free(text);
}

static void finish_error(dop *d, int status, enum route_path path, const char *code, const char *msg,
                         int retry_after)
{
    finish(d, status, path, false, json_pack("{s:s, s:s, s:s}", "eval_id", d->sub.eval_id, "error", code,
                                             "message", msg),
           retry_after);
}

/* The reply every accepted submission gets, written without a tree. */
static void finish_queued(dop *d, enum route_path path, long long position)
{
    px_count_decision(d->p, path, d->dec.reason);
    char stack[512];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "eval_id");
    jw_cstring(&w, d->sub.eval_id);
    jw_lit_key(&w, "status");
    jw_lit_string(&w, "queued");
    jw_lit_key(&w, "path");
    jw_cstring(&w, route_path_names[path]);
    jw_lit_key(&w, "reason");
    jw_cstring(&w, route_reason_names[d->dec.reason]);
    jw_lit_key(&w, "duplicate");
    jw_bool(&w, false);
    jw_lit_key(&w, "message");
    if (path == PATH_NEW) jw_lit_string(&w, "queued on the new Redis priority queue");
    else jw_lit_string(&w, "queued on the legacy queue");
    jw_lit_key(&w, "queue_position");
    if (position >= 0) jw_int(&w, position);
    else jw_null(&w);
    jw_obj_close(&w);
    finish_text(d, 202, path, false, jw_failed(&w) ? NULL : jw_text(&w), jw_len(&w), 0);
    jw_free(&w);
}

/* The eval id has a record already: answer with it, enqueue nothing. */
static void finish_duplicate(dop *d, const char *existing)
{
    json_t *rec = records_parse(existing, strlen(existing));
    enum route_path path = records_path(rec);
    if (path == PATH_NONE) path = PATH_LEGACY; /* a record of an older shape: say where it most likely is */
    size_t c = path;
    metrics_add(d->p->m.duplicates, metrics_at(d->p->m.duplicates, &c), 1);
    char created[32] = "";
    json_t *at = json_object_get(rec, "submitted_at");
    if (json_is_number(at)) util_iso8601(json_number_value(at), created);
    char msg[400];
    snprintf(msg, sizeof(msg), "already submitted%s%s; nothing was enqueued. Its state: GET /api/eval-status/%s",
             created[0] ? " at " : "", created, d->sub.eval_id);
    json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:s, s:o}", "eval_id", d->sub.eval_id, "status", "queued", "path",
                          route_path_names[path], "duplicate", 1, "message", msg, "created_at",
                          created[0] ? json_string(created) : json_null());
    json_t *reason = json_object_get(rec, "reason");
    if (o && json_is_string(reason)) json_object_set(o, "reason", reason);
    LOG_DEBUG("duplicate submission", "eval_id", d->sub.eval_id, "path", route_path_names[path]);
    json_decref(rec);
    finish(d, 202, path, true, o, 0);
}

/* ---------- legacy ---------- */

static void on_legacy(const legacy_result *res, void *arg)
{
    dop *d = arg;
    proxy *p = d->p;
    switch (res->outcome) {
    case LEGACY_OK:
        records_confirm_legacy(p->records, d->sub.eval_id, d->record, d->submitted_at, d->claimed);
        if (shadow_draw(p)) shadow_start(p, &d->sub); /* fire and forget: never delays this reply */
        LOG_DEBUG("submission queued", "eval_id", d->sub.eval_id, "path", "legacy");
        finish_queued(d, PATH_LEGACY, res->position);
        return;
    case LEGACY_CONFLICT:
        /* The Queue Service has this eval id and we had no record of it
         * (expired, or submitted around the proxy): it is there, so this
         * is a duplicate, and from now on the record says so. */
        records_confirm_legacy(p->records, d->sub.eval_id, d->record, d->submitted_at, d->claimed);
        finish_duplicate(d, d->record);
        return;
    case LEGACY_TIMEOUT: px_count_upstream_error(p, PATH_LEGACY, UP_TIMEOUT); break;
    case LEGACY_UNREACHABLE: px_count_upstream_error(p, PATH_LEGACY, UP_CONNECT); break;
    case LEGACY_BAD_STATUS:
    case LEGACY_NOT_FOUND: px_count_upstream_error(p, PATH_LEGACY, UP_BAD_STATUS); break;
    case LEGACY_BAD_REPLY:
    case LEGACY_INTERNAL: px_count_upstream_error(p, PATH_LEGACY, UP_BAD_REPLY); break;
    }
    if (d->claimed) records_release(p->records, d->sub.eval_id, d->record);
    px_count_decision(p, PATH_LEGACY, d->dec.reason);
    LOG_WARN("legacy path failed", "eval_id", d->sub.eval_id, "error", res->detail);
    if (res->outcome == LEGACY_TIMEOUT) finish_error(d, 504, PATH_LEGACY, "legacy_timeout", res->detail, 0);
    else finish_error(d, 502, PATH_LEGACY, "legacy_error", res->detail, 0);
}

static void call_legacy(dop *d)
{
    const submission *s = &d->sub;
    hold(d, PATH_LEGACY);
    if (!legacy_submit(d->p->legacy, s->eval_id, s->code, s->code_len, s->language, s->engine, s->timeout,
                       s->priority_name, on_legacy, d)) {
        if (d->claimed) records_release(d->p->records, d->sub.eval_id, d->record);
        px_count_reject(d->p, RJ_OOM);
        px_count_decision(d->p, PATH_NONE, d->dec.reason);
        finish_error(d, 503, PATH_NONE, "out_of_memory", "the proxy could not start the legacy call; retry shortly", 1);
    }
}

static void on_claimed(const rec_result *res, void *arg)
{
    dop *d = arg;
    hold(d, NOT_WAITING);
    if (res->outcome == REC_DUPLICATE) {
        finish_duplicate(d, res->existing);
        return;
    }
    d->claimed = res->outcome == REC_WRITTEN;
    if (!d->claimed)
        LOG_WARN("route record not claimed; the legacy call goes ahead and the record is held", "eval_id",
                 d->sub.eval_id, "error", res->err ? res->err : "redis error");
    call_legacy(d);
}

static void go_legacy(dop *d)
{
    free(d->record);
    d->record = records_build(&d->sub, PATH_LEGACY, &d->dec, d->submitted_at);
    if (!d->record) {
        px_count_reject(d->p, RJ_OOM);
        px_count_decision(d->p, PATH_NONE, d->dec.reason);
        finish_error(d, 503, PATH_NONE, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    hold(d, PATH_LEGACY);
    if (records_claim(d->p->records, d->sub.eval_id, d->record, on_claimed, d) != 0) {
        /* Redis is away: legacy does not need it; the record is held. */
        d->claimed = false;
        call_legacy(d);
    }
}

/* ---------- new ---------- */

/* The new path could not take it: legacy when allowed, else 503. */
static void new_failed(dop *d, const char *why)
{
    proxy *p = d->p;
    bool fallback = p->cfg.fallback_to_legacy && !p->draining;
    LOG_WARN("new path refused submission", "eval_id", d->sub.eval_id, "error", why, "fallback",
             fallback ? "legacy" : "none");
    if (fallback) {
        d->dec.reason = REASON_FALLBACK;
        go_legacy(d);
        return;
    }
    px_count_decision(p, PATH_NONE, d->dec.reason);
    px_count_reject(p, RJ_NO_PATH);
    char msg[320];
    snprintf(msg, sizeof(msg),
             "the new queue cannot take submissions right now (%s) and FALLBACK_TO_LEGACY is off; retry after the Retry-After delay",
             why);
    finish_error(d, 503, PATH_NONE, "no_path_available", msg, 1);
}

static void on_new(const rec_result *res, void *arg)
{
    dop *d = arg;
    hold(d, NOT_WAITING);
    switch (res->outcome) {
    case REC_WRITTEN:
        LOG_DEBUG("submission queued", "eval_id", d->sub.eval_id, "path", "new");
        finish_queued(d, PATH_NEW, res->depth);
        return;
    case REC_DUPLICATE:
        finish_duplicate(d, res->existing);
        return;
    case REC_FAILED:
        px_count_upstream_error(d->p, PATH_NEW, res->timeout ? UP_TIMEOUT : UP_REDIS_ERROR);
        new_failed(d, res->err ? res->err : "redis error");
        return;
    }
}

static void go_new(dop *d)
{
    char err[256];
    d->record = records_build(&d->sub, PATH_NEW, &d->dec, d->submitted_at);
    hold(d, PATH_NEW);
    if (!d->record) {
        snprintf(err, sizeof(err), "out of memory");
    } else if (records_submit_new(d->p->records, &d->sub, d->record, d->submitted_at, on_new, d, err) == 0) {
        return;
    }
    hold(d, NOT_WAITING);
    px_count_upstream_error(d->p, PATH_NEW, UP_REDIS_DOWN);
    new_failed(d, err);
}

void dispatch_start(proxy *p, submission *sub, const char *sticky_key, dispatch_cb cb, void *arg)
{
    dop *d = calloc(1, sizeof(*d));
    if (!d) {
        px_count_reject(p, RJ_OOM);
        static const char oom[] =
            "{\"error\":\"out_of_memory\",\"message\":\"the proxy is short of memory; retry shortly\"}";
        dispatch_result res = {503, PATH_NONE, false, oom, sizeof(oom) - 1, 1};
        cb(&res, arg);
        submission_free(sub);
        return;
    }
    d->p = p;
    d->sub = *sub;
    memset(sub, 0, sizeof(*sub));
    d->cb = cb;
    d->arg = arg;
    d->holding = NOT_WAITING;
    d->submitted_at = util_now();
    const char *key = sticky_key ? sticky_key : d->sub.eval_id;
    d->dec = route_decide(&p->route, key, strlen(key));
    if (d->dec.path == PATH_NEW) go_new(d);
    else go_legacy(d);
}
