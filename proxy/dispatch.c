#include "dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "canary.h"
#include "evlookup.h"
#include "jsonw.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "records.h"
#include "shadow.h"
#include "util.h"

/* Every path is a backend (backend.h); the dispatcher knows them only by
 * their properties.  A path that writes_record takes the route record and
 * the job in one step; any other gets the record claimed first, and the
 * claim is kept (confirmed), released (the call failed and did nothing)
 * or kept marked unconfirmed (it may have acted).
 *
 * A Redis command sent with no reply back (timeout, lost connection) may
 * or may not have acted.  Such a submission is settled before it goes
 * anywhere else: once the command's deadline has passed in Redis's own
 * clock (so it can no longer act), the route record is read back.  Ours:
 * it is queued there; none: it never ran and never will, so the next path
 * is safe.  When Redis does not answer within SETTLE_TIMEOUTS command
 * timeouts the client gets a 503 and nothing is sent anywhere else. */
enum settle_kind { SETTLE_NONE, SETTLE_SUBMIT, SETTLE_CLAIM };
#define SETTLE_TIMEOUTS 1
#define SETTLE_RETRY_S 0.1

/* Where a path's submissions go when it cannot take them (with
 * FALLBACK_TO_LEGACY on, and not while draining); PATH_NONE: nowhere, its
 * own error is the answer. */
static const enum route_path fallback_of[PATH_NONE] = {[PATH_LEGACY] = PATH_NONE, [PATH_NEW] = PATH_LEGACY};

typedef struct dop {
    proxy *p;
    submission sub;
    route_decision dec;
    dispatch_cb cb;
    void *arg;
    enum route_path holding; /* share of turnout_in_flight_requests, or NOT_WAITING */
    char *record;            /* the route record this submission writes */
    bk_job job;              /* what the path's backend is given (borrows sub and record) */
    double submitted_at;
    bool claimed;            /* the record was claimed in Redis, and is ours */
    enum settle_kind settling;
    double sent_at;          /* monotonic: the last route record command went out */
    double settle_until;     /* monotonic: settling gives up (0: not settling yet) */
    struct event *timer;
    char why[256];           /* why the path did not take it */
    int fail_status;         /* and the HTTP status and error code that says so */
    const char *fail_code;
    json_t *dup_record;      /* a duplicate's stored record, while its state is looked up */
    bool resending;          /* an unconfirmed record: sent to its path once more */
} dop;

static backend *path_of(const dop *d) { return d->p->paths[d->dec.path]; }
static bool writes_record(const dop *d) { return path_of(d)->ops->writes_record; }

static void hold(dop *d, enum route_path path) { px_hold_move(d->p, &d->holding, path); }

static void finish_text(dop *d, int status, enum route_path path, bool duplicate, const char *body, size_t len,
                        int retry_after)
{
    hold(d, NOT_WAITING);
    dispatch_result res = {status, path, duplicate, body, body ? len : 0, retry_after};
    d->cb(&res, d->arg);
    submission_free(&d->sub);
    free(d->record);
    json_decref(d->dup_record);
    if (d->timer) event_free(d->timer);
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

/* Written with jsonw: a message quoting odd input can never fail to be
 * written (invalid bytes become U+FFFD), only a real shortage of memory. */
static void finish_error(dop *d, int status, enum route_path path, const char *code, const char *msg,
                         int retry_after)
{
    char stack[640];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "eval_id");
    jw_cstring(&w, d->sub.eval_id);
    jw_lit_key(&w, "error");
    jw_cstring(&w, code);
    jw_lit_key(&w, "message");
    jw_cstring(&w, msg);
    jw_obj_close(&w);
    finish_text(d, status, path, false, jw_failed(&w) ? NULL : jw_text(&w), jw_len(&w), retry_after);
    jw_free(&w);
}

static void finish_oom(dop *d, const char *msg)
{
    px_count_reject(d->p, RJ_OOM);
    px_count_decision(d->p, PATH_NONE, d->dec.reason);
    finish_error(d, 503, PATH_NONE, "out_of_memory", msg, 1);
}

/* The reply every accepted submission gets, written without a tree. */
static void finish_queued(dop *d, long long position)
{
    enum route_path path = d->dec.path;
    px_count_decision(d->p, path, d->dec.reason);
    LOG_DEBUG("submission queued", "eval_id", d->sub.eval_id, "path", route_path_names[path]);
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

/* The eval id has a record already: answer with it and the eval's state
 * now (looked up on its path), enqueue nothing. */
static void on_duplicate_status(const char *status, void *arg)
{
    dop *d = arg;
    json_t *rec = d->dup_record;
    d->dup_record = NULL;
    hold(d, NOT_WAITING);
    enum route_path path = records_path(rec);
    if (path == PATH_UNKNOWN) path = PATH_LEGACY; /* a record of an older shape: say where it most likely is */
    size_t c = path;
    metrics_add(d->p->m.duplicates, metrics_at(d->p->m.duplicates, &c), 1);
    char created[32] = "";
    json_t *at = json_object_get(rec, "submitted_at");
    if (json_is_number(at)) util_iso8601(json_number_value(at), created);
    char msg[400];
    snprintf(msg, sizeof(msg), "already submitted%s%s; nothing was enqueued. Its state: GET /api/eval-status/%s",
             created[0] ? " at " : "", created, d->sub.eval_id);
    /* the state as the path reports it; as last known ("queued") when the
     * path cannot be asked right now */
    json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:s, s:o}", "eval_id", d->sub.eval_id, "status",
                          status ? status : "queued", "path", route_path_names[path], "duplicate", 1, "message", msg,
                          "created_at", created[0] ? json_string(created) : json_null());
    json_t *reason = json_object_get(rec, "reason");
    if (o && json_is_string(reason)) json_object_set(o, "reason", reason);
    LOG_DEBUG("duplicate submission", "eval_id", d->sub.eval_id, "path", route_path_names[path], "status",
              status ? status : "unknown");
    json_decref(rec);
    finish(d, 202, path, true, o, 0);
}

static void submit(dop *d);

/* `existing` is borrowed for the call. */
static void finish_duplicate(dop *d, const char *existing)
{
    json_t *rec = records_parse(existing, strlen(existing));
    enum route_path path = records_path(rec);
    if (records_is_unconfirmed(rec) && !d->resending && path != PATH_UNKNOWN) {
        /* an earlier call of this eval_id failed in a way that may have
         * queued it: its path again (which refuses a second copy), nothing
         * else */
        char *copy = strdup(existing);
        json_t *at = json_object_get(rec, "submitted_at");
        double first_at = json_is_number(at) ? json_number_value(at) : d->submitted_at;
        json_decref(rec);
        if (copy) {
            LOG_INFO("resubmission of an unconfirmed eval: sent to its path again", "eval_id", d->sub.eval_id,
                     "path", route_path_names[path]);
            free(d->record);
            d->record = copy;
            d->submitted_at = first_at;
            d->resending = true;
            d->claimed = true;
            d->dec.path = path;
            submit(d);
            return;
        }
        rec = records_parse(existing, strlen(existing));
    }
    json_decref(d->dup_record);
    d->dup_record = rec;
    if (!d->dup_record) d->dup_record = json_object();
    hold(d, path == PATH_UNKNOWN ? PATH_LEGACY : path);
    evlookup_status(d->p, d->sub.eval_id, d->dup_record, on_duplicate_status, d);
}

/* ---------- a path that does not write the record: the claim ---------- */

/* The path took it (or has it): the claim is final and tracked. */
static void confirm_claim(dop *d)
{
    if (!d->resending) {
        records_confirm_legacy(d->p->records, d->sub.eval_id, d->record, d->submitted_at, d->claimed);
        return;
    }
    char *confirmed = records_mark_unconfirmed(d->record, false);
    if (confirmed) {
        records_replace_legacy(d->p->records, d->sub.eval_id, d->record, confirmed, d->submitted_at, d->claimed);
        free(d->record);
        d->record = confirmed;
    }
}

/* A client-supplied eval_id must be checked against the route records
 * before anything runs, unless the operator chose availability. */
static bool must_check(const dop *d)
{
    return d->sub.eval_id_given && !d->p->cfg.accept_unchecked_eval_ids;
}

static void refuse_unchecked(dop *d)
{
    px_count_reject(d->p, RJ_UNCHECKED);
    px_count_decision(d->p, PATH_NONE, d->dec.reason);
    char msg[600];
    snprintf(msg, sizeof(msg),
             "Redis, which remembers where each eval_id went, cannot be asked right now, so this submission of "
             "eval_id \"%s\" cannot be told apart from a resubmission of one that already ran; nothing was "
             "queued. Retry after the Retry-After delay with the same eval_id (an operator can set "
             "ACCEPT_UNCHECKED_EVAL_IDS=true to send such submissions to legacy unchecked)",
             d->sub.eval_id);
    LOG_WARN("submission refused: its eval_id cannot be checked while Redis is away", "eval_id", d->sub.eval_id);
    finish_error(d, 503, PATH_NONE, "eval_id_unchecked", msg, 1);
}

/* The route record could not be claimed and the claim did nothing (not
 * sent, refused, or past its deadline). */
static void claim_unavailable(dop *d, const char *why)
{
    if (d->sub.eval_id_given) {
        /* a resubmission during the same outage is known here */
        const char *held = records_held_find(d->p->records, d->sub.eval_id);
        if (held) {
            char *copy = strdup(held);
            if (copy) {
                finish_duplicate(d, copy);
                free(copy);
                return;
            }
        }
    }
    if (must_check(d)) {
        refuse_unchecked(d);
        return;
    }
    if (d->sub.eval_id_given) metrics_add(d->p->m.unchecked_submissions, 0, 1);
    LOG_WARN("route record not claimed; the call goes ahead and the record is held", "eval_id", d->sub.eval_id,
             "path", route_path_names[d->dec.path], "error", why);
    d->claimed = false;
    submit(d);
}

static void settle_start(dop *d, enum settle_kind kind);

static void on_claimed(const rec_result *res, void *arg)
{
    dop *d = arg;
    hold(d, NOT_WAITING);
    switch (res->outcome) {
    case REC_DUPLICATE: finish_duplicate(d, res->existing); return;
    case REC_WRITTEN:
        d->claimed = true;
        submit(d);
        return;
    case REC_FAILED:
        if (res->lost && must_check(d)) {
            settle_start(d, SETTLE_CLAIM); /* it may have found another record */
            return;
        }
        if (res->lost) {
            /* a fresh eval_id (or availability chosen): whatever the claim
             * did, it can only have written this very record */
            if (d->sub.eval_id_given) metrics_add(d->p->m.unchecked_submissions, 0, 1);
            LOG_WARN("route record claim unanswered; the call goes ahead and the record is held", "eval_id",
                     d->sub.eval_id, "error", res->err ? res->err : "redis error");
            d->claimed = false;
            submit(d);
            return;
        }
        claim_unavailable(d, res->err ? res->err : "redis error");
        return;
    case REC_EXPIRED:
    case REC_FULL:
    case REC_ABSENT: claim_unavailable(d, res->err ? res->err : "redis error"); return;
    }
}

static void claim(dop *d)
{
    hold(d, d->dec.path);
    d->sent_at = util_monotonic();
    if (records_claim(d->p->records, d->sub.eval_id, d->record, on_claimed, d) != 0) {
        hold(d, NOT_WAITING);
        claim_unavailable(d, "redis not connected");
    }
}

/* ---------- a path, and the next one ---------- */

static void try_path(dop *d);

/* A submission the path could not take: a system error of that path,
 * whether it then fell back or not. */
static void count_submit_error(proxy *p, enum route_path path)
{
    size_t k[2] = {path, EV_SYS_SUBMIT};
    metrics_add(p->m.system_errors, metrics_at(p->m.system_errors, k), 1);
    canary_submit_error(p->canary, path);
}

/* The path did not take it and did nothing: the next path when there is
 * one and falling back is allowed; else its own error (a path with no
 * next), or 503 (a next path exists, falling back is off). */
static void path_refused(dop *d)
{
    proxy *p = d->p;
    enum route_path path = d->dec.path, next = fallback_of[path];
    bool allowed = next != PATH_NONE && p->cfg.fallback_to_legacy && !p->draining;
    count_submit_error(p, path);
    LOG_WARN("path refused submission", "eval_id", d->sub.eval_id, "path", route_path_names[path], "error", d->why,
             "fallback", allowed ? route_path_names[next] : "none");
    if (allowed) {
        d->dec.path = next;
        d->dec.reason = REASON_FALLBACK;
        d->resending = false;
        try_path(d);
        return;
    }
    if (next == PATH_NONE) {
        px_count_decision(p, path, d->dec.reason);
        finish_error(d, d->fail_status, path, d->fail_code, d->why, d->fail_status == 503 ? 1 : 0);
        return;
    }
    px_count_decision(p, PATH_NONE, d->dec.reason);
    px_count_reject(p, RJ_NO_PATH);
    char msg[400];
    util_snprintf(msg, sizeof(msg),
                  "the %s queue cannot take submissions right now (%s) and FALLBACK_TO_LEGACY is off; retry after "
                  "the Retry-After delay",
                  route_path_names[path], d->why);
    finish_error(d, 503, PATH_NONE, "no_path_available", msg, 1);
}

/* It may be queued there all the same: the claim stays, marked, so that a
 * resubmission goes to the same path again, which refuses a second copy,
 * and never to another path as well. */
static void keep_unconfirmed(dop *d, const char *detail)
{
    proxy *p = d->p;
    count_submit_error(p, d->dec.path);
    char *marked = records_mark_unconfirmed(d->record, true);
    if (!marked) {
        if (d->claimed && !d->resending) records_release(p->records, d->sub.eval_id, d->record);
        px_count_decision(p, d->dec.path, d->dec.reason);
        finish_error(d, d->fail_status, d->dec.path, d->fail_code, detail, 0);
        return;
    }
    if (!d->resending)
        records_replace_legacy(p->records, d->sub.eval_id, d->record, marked, d->submitted_at, d->claimed);
    free(marked);
    px_count_decision(p, d->dec.path, d->dec.reason);
    char msg[600];
    util_snprintf(msg, sizeof(msg),
                  "%s; it may have been queued there all the same. Resubmitting the same eval_id (\"%s\") is "
                  "safe: it goes to the %s queue again, which does not take a second copy",
                  detail, d->sub.eval_id, route_path_names[d->dec.path]);
    finish_error(d, d->fail_status, d->dec.path, d->fail_code, msg, 0);
}

static void on_submitted(const bk_result *res, void *arg)
{
    dop *d = arg;
    proxy *p = d->p;
    enum route_path path = d->dec.path;
    hold(d, NOT_WAITING);
    if (res->outcome == BK_OK) {
        if (!writes_record(d)) confirm_claim(d);
        shadow_mirror(p, path, &d->sub); /* fire and forget: never delays this reply */
        finish_queued(d, res->position);
        return;
    }
    if (res->outcome == BK_CONFLICT && writes_record(d) && res->existing) {
        finish_duplicate(d, res->existing);
        return;
    }
    if (res->outcome == BK_CONFLICT && !writes_record(d)) {
        /* The path has this eval id and we had no record of it (expired,
         * or submitted around the proxy), or only an unconfirmed one: it
         * is there, so this is a duplicate, and from now on the record
         * says so. */
        confirm_claim(d);
        d->resending = true; /* answered as it stands, never sent again */
        finish_duplicate(d, d->record);
        return;
    }
    d->fail_status = px_backend_failed(p, path, res, &d->fail_code);
    util_snprintf(d->why, sizeof(d->why), "%s", res->detail ? res->detail : "the path failed");
    LOG_WARN("path failed", "eval_id", d->sub.eval_id, "path", route_path_names[path], "error", d->why,
             "maybe_queued", res->maybe_done ? "true" : "false");
    if (res->maybe_done && writes_record(d)) {
        settle_start(d, SETTLE_SUBMIT); /* find out before going anywhere else */
        return;
    }
    if (res->maybe_done) {
        keep_unconfirmed(d, d->why);
        return;
    }
    if (d->claimed && !d->resending) records_release(p->records, d->sub.eval_id, d->record);
    d->claimed = false;
    path_refused(d);
}

/* The record is in place (or claimed, or held): the path's backend. */
static void submit(dop *d)
{
    const submission *s = &d->sub;
    hold(d, d->dec.path);
    d->job = (bk_job){s->eval_id, s->code,    s->code_len, s->language,    s->engine,
                      s->timeout, s->priority, s->priority_name, d->record, d->submitted_at};
    d->sent_at = util_monotonic();
    if (!bk_submit(path_of(d), &d->job, on_submitted, d)) {
        if (d->claimed && !d->resending) records_release(d->p->records, d->sub.eval_id, d->record);
        finish_oom(d, "the proxy could not start the path's call; retry shortly");
    }
}

static void try_path(dop *d)
{
    free(d->record);
    d->record = records_build(&d->sub, d->dec.path, &d->dec, d->submitted_at);
    d->claimed = false;
    if (!d->record) {
        finish_oom(d, "the proxy is short of memory; retry shortly");
        return;
    }
    if (writes_record(d)) submit(d);
    else claim(d);
}

/* ---------- settling a command that got no reply ---------- */

static void settle_step(dop *d);

static void on_settle_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    settle_step(arg);
}

static void settle_after(dop *d, double delay_s)
{
    if (!d->timer && !(d->timer = evtimer_new(d->p->base, on_settle_timer, d))) {
        finish_oom(d, "the proxy is short of memory; retry shortly");
        return;
    }
    hold(d, d->dec.path);
    if (delay_s < 0) delay_s = 0;
    struct timeval tv = {(time_t)delay_s, (suseconds_t)((delay_s - (double)(time_t)delay_s) * 1e6)};
    evtimer_add(d->timer, &tv);
}

static void settle_give_up(dop *d)
{
    proxy *p = d->p;
    hold(d, NOT_WAITING);
    char msg[600];
    if (d->settling == SETTLE_CLAIM) {
        /* the claim may have landed before its deadline: undone once Redis is back */
        records_release_later(p->records, d->sub.eval_id, d->record);
        refuse_unchecked(d);
        return;
    }
    size_t c = PC_UNKNOWN;
    metrics_add(p->m.outcome_checks, metrics_at(p->m.outcome_checks, &c), 1);
    px_count_reject(p, RJ_OUTCOME_UNKNOWN);
    px_count_decision(p, PATH_NONE, d->dec.reason);
    snprintf(msg, sizeof(msg),
             "Redis stopped answering while it was taking this submission, and has not answered since, so whether "
             "it was queued on the %s path is not known; it was sent nowhere else. Resubmit with the same eval_id "
             "(\"%s\") after the Retry-After delay: the reply will say where it is",
             route_path_names[d->dec.path], d->sub.eval_id);
    LOG_WARN("submission outcome unknown: Redis did not answer in time", "eval_id", d->sub.eval_id);
    finish_error(d, 503, PATH_NONE, "outcome_unknown", msg, 1);
}

static void on_settled(const rec_result *res, void *arg)
{
    dop *d = arg;
    hold(d, NOT_WAITING);
    if (res->outcome == REC_FAILED) {
        settle_after(d, util_monotonic() >= d->settle_until ? 0 : SETTLE_RETRY_S);
        return;
    }
    enum settle_kind kind = d->settling;
    d->settling = SETTLE_NONE;
    bool found = res->outcome == REC_DUPLICATE;
    bool ours = found && strcmp(res->existing, d->record) == 0;
    if (kind == SETTLE_SUBMIT) {
        size_t c = found ? PC_QUEUED : PC_NOT_QUEUED;
        metrics_add(d->p->m.outcome_checks, metrics_at(d->p->m.outcome_checks, &c), 1);
        if (ours) {
            LOG_INFO("submission's reply was lost; Redis shows it queued", "eval_id", d->sub.eval_id);
            finish_queued(d, -1);
        } else if (found) {
            finish_duplicate(d, res->existing);
        } else {
            LOG_INFO("submission's reply was lost; Redis shows it never ran there", "eval_id", d->sub.eval_id);
            path_refused(d);
        }
        return;
    }
    if (ours) {
        d->claimed = true;
        submit(d);
    } else if (found) {
        finish_duplicate(d, res->existing);
    } else {
        claim(d); /* the claim never acted: claim again */
    }
}

static void settle_step(dop *d)
{
    double now = util_monotonic();
    /* past this the unanswered command is past its deadline in Redis's clock */
    double safe = d->sent_at + (double)d->p->cfg.redis_timeout_ms / 1000.0 + 0.001;
    if (now < safe) {
        settle_after(d, safe - now);
        return;
    }
    if (now > d->settle_until) {
        settle_give_up(d);
        return;
    }
    hold(d, d->dec.path);
    if (records_lookup(d->p->records, d->sub.eval_id, on_settled, d) != 0) settle_after(d, SETTLE_RETRY_S);
}

static void settle_start(dop *d, enum settle_kind kind)
{
    d->settling = kind;
    if (!d->settle_until) {
        double timeout = (double)d->p->cfg.redis_timeout_ms / 1000.0;
        double now = util_monotonic();
        double from = d->sent_at + timeout > now ? d->sent_at + timeout : now;
        d->settle_until = from + SETTLE_TIMEOUTS * timeout;
    }
    settle_step(d);
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
    try_path(d);
}
