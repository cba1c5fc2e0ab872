#include "completion.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "canary.h"
#include "evstatus.h"
#include "jsonw.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "records.h"
#include "shadow.h"
#include "results.h"
#include "util.h"
#include "pscripts.h"

#define META_TASK_PREFIX RESULTS_KEY_PREFIX "celery-"
#define META_SHADOW_PREFIX RESULTS_KEY_PREFIX SHADOW_TASK_PREFIX
#define KIND_SHADOW PATH_NONE /* the third in-flight set: shadow runs */
/* Polls in a row on which the legacy Queue Service answered a legacy eval
 * with something unreadable (not the protocol's JSON, an unknown status,
 * an error status) before the eval is finished as failed: such a reply
 * does not get better, and the eval must not stay in flight for ever. */
#define LEGACY_BAD_POLLS_MAX 5

struct completion {
    proxy *p;
    rclient *sub;         /* PSUBSCRIBE on the result backend */
    struct event *timer;
    char owner[40];       /* this proxy's lock value */
    char cursor[3][40];   /* ZRANGEBYSCORE start per set: "-inf" or "(<score>" */
    size_t legacy_calls;  /* GET /tasks/{id} in flight */
    bool sweeping[3];     /* a page of the new or shadow set is being read */
    json_t *legacy_bad;   /* eval id -> unreadable legacy replies in a row */
};



/* by enum route_path; PATH_NONE = KIND_SHADOW */
static const char *const inflight_key[3] = {INFLIGHT_LEGACY, INFLIGHT_NEW, INFLIGHT_SHADOW};

/* ---------- counting one eval ---------- */

typedef struct count_call {
    completion *c;
    enum route_path path;
    int outcome;     /* index in pm_outcome_names, -1: given up (untracked) */
    double done_at;  /* when it ended, by the backend's clock; <= 0 unknown */
    ev_class cls;    /* the path's outcome and the program's verdict */
    double run_s;    /* the program's run time; -1 unknown */
} count_call;

/* One finished eval in the path-health and verdict counters, and in the
 * canary's window. */
static void count_class(proxy *p, enum route_path path, ev_class cls, double seconds)
{
    size_t k[2] = {path, evclass_pathout(cls)};
    metrics_add(p->m.path_outcomes, metrics_at(p->m.path_outcomes, k), 1);
    if (cls.sys >= 0) {
        k[1] = (size_t)cls.sys;
        metrics_add(p->m.system_errors, metrics_at(p->m.system_errors, k), 1);
    }
    if (cls.verdict >= 0) {
        k[1] = (size_t)cls.verdict;
        metrics_add(p->m.verdicts, metrics_at(p->m.verdicts, k), 1);
    }
    canary_record(p->canary, path, cls, seconds);
}

static void on_counted(struct redisReply *reply, const char *err, void *arg)
{
    count_call *cc = arg;
    proxy *p = cc->c->p;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_STRING) {
        size_t path = cc->path;
        if (cc->outcome < 0) {
            metrics_add(p->m.completion_untracked, metrics_at(p->m.completion_untracked, &path), 1);
            count_class(p, cc->path, (ev_class){EV_SYS_LOST, EV_VERDICT_NONE}, -1);
        } else {
            size_t c2[2] = {path, (size_t)cc->outcome};
            metrics_add(p->m.evals_completed, metrics_at(p->m.evals_completed, c2), 1);
            json_t *rec = records_parse(reply->str, reply->len);
            json_t *at = json_object_get(rec, "submitted_at"), *timeout = json_object_get(rec, "timeout");
            double d = -1;
            if (json_is_number(at)) {
                double done = cc->done_at > 0 ? cc->done_at : util_now();
                d = done - json_number_value(at);
                if (d < 0) d = 0;
                metrics_observe(p->m.eval_completion, metrics_at(p->m.eval_completion, &path), d);
                evclass_waited(&cc->cls, json_number_value(at), done, cc->run_s,
                               json_is_number(timeout) ? json_number_value(timeout) : 0);
            }
            count_class(p, cc->path, cc->cls, d);
            json_decref(rec);
        }
    }
    free(cc);
}

/* Takes the eval out of its in-flight set and, when this call did, counts
 * it.  `why` (or NULL) says why its result could not be read; the route
 * record keeps it as "error". */
static void count_why(completion *c, enum route_path path, const char *eval_id, int outcome, double done_at,
                      ev_class cls, double run_s, const char *why)
{
    char route_key[ROUTE_KEY_MAX];
    count_call *cc = malloc(sizeof(*cc));
    if (!cc) return;
    *cc = (count_call){c, path, outcome, done_at, cls, run_s};
    records_key(eval_id, route_key);
    char at[32], stack[512];
    snprintf(at, sizeof(at), "%.6f", done_at > 0 ? done_at : util_now());
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    if (why) jw_cstring(&w, why);
    const char *argv[] = {"2", inflight_key[path], route_key, eval_id,
                          outcome >= 0 ? pm_outcome_names[outcome] : "", at, jw_text(&w)};
    size_t lens[7];
    for (int i = 0; i < 6; i++) lens[i] = strlen(argv[i]);
    lens[6] = jw_len(&w);
    if (rclient_eval(c->p->broker, &pscript_count, on_counted, cc, 7, argv, lens) != 0) free(cc);
    jw_free(&w);
}

static void count(completion *c, enum route_path path, const char *eval_id, int outcome, double done_at, ev_class cls,
                  double run_s)
{
    count_why(c, path, eval_id, outcome, done_at, cls, run_s, NULL);
}

/* A Celery result record for task celery-<eval_id>: counted when terminal.
 * (Its output may hold NUL bytes: \u0000 is valid JSON.) */
static void consider_celery(completion *c, const char *eval_id, const char *text, size_t len)
{
    json_t *rec = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
    int outcome = evstatus_outcome(evstatus_from_celery(rec));
    if (outcome >= 0 && util_valid_id(eval_id, strlen(eval_id), SUB_MAX_EVAL_ID))
        count(c, PATH_NEW, eval_id, outcome, evstatus_parse_iso(json_string_value(json_object_get(rec, "date_done"))),
              evclass_celery(rec), evclass_run_seconds(rec, 1));
    json_decref(rec);
}

typedef struct shadow_call {
    completion *c;
    char eval_id[SUB_MAX_EVAL_ID + 1];
    json_t *rec;
} shadow_call;

static void on_shadow_claimed(struct redisReply *reply, const char *err, void *arg)
{
    shadow_call *sc = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        shadow_report_new(sc->c->p, sc->eval_id, sc->rec);
    json_decref(sc->rec);
    free(sc);
}

/* A shadow run's result record: when terminal, whoever takes it out of the
 * shadow set reports it for comparison. */
static void consider_shadow(completion *c, const char *eval_id, const char *text, size_t len)
{
    json_t *rec = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
    shadow_call *sc = NULL;
    if (evstatus_outcome(evstatus_from_celery(rec)) >= 0 && util_valid_id(eval_id, strlen(eval_id), SUB_MAX_EVAL_ID) &&
        (sc = malloc(sizeof(*sc)))) {
        sc->c = c;
        snprintf(sc->eval_id, sizeof(sc->eval_id), "%s", eval_id);
        sc->rec = rec;
        const char *argv[] = {"ZREM", INFLIGHT_SHADOW, eval_id};
        size_t lens[] = {4, sizeof(INFLIGHT_SHADOW) - 1, strlen(eval_id)};
        if (rclient_command(c->p->broker, on_shadow_claimed, sc, 3, argv, lens) == 0) return;
        free(sc);
    }
    json_decref(rec);
}

static void on_result_published(const char *channel, const char *payload, size_t len, void *arg)
{
    completion *c = arg;
    if (strncmp(channel, META_TASK_PREFIX, sizeof(META_TASK_PREFIX) - 1) == 0)
        consider_celery(c, channel + sizeof(META_TASK_PREFIX) - 1, payload, len);
    else if (strncmp(channel, META_SHADOW_PREFIX, sizeof(META_SHADOW_PREFIX) - 1) == 0)
        consider_shadow(c, channel + sizeof(META_SHADOW_PREFIX) - 1, payload, len);
}

/* ---------- the sweep: one page of a path's in-flight set ---------- */

typedef struct page {
    completion *c;
    enum route_path path;
    size_t n;
    char **ids;
} page;

static void page_free(page *pg)
{
    for (size_t i = 0; i < pg->n; i++) free(pg->ids[i]);
    free(pg->ids);
    free(pg);
}

static void on_results(struct redisReply *reply, const char *err, void *arg)
{
    page *pg = arg;
    (void)err;
    pg->c->sweeping[pg->path] = false;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == pg->n)
        for (size_t i = 0; i < pg->n; i++)
            if (reply->element[i]->type == REDIS_REPLY_STRING)
                (pg->path == KIND_SHADOW ? consider_shadow : consider_celery)(pg->c, pg->ids[i], reply->element[i]->str,
                                                                            reply->element[i]->len);
    page_free(pg);
}

typedef struct legacy_poll {
    completion *c;
    char eval_id[SUB_MAX_EVAL_ID + 1];
} legacy_poll;

/* A legacy eval whose reply could not be read: finished as failed (with
 * the reason) when it is too large, which will not change, or after
 * LEGACY_BAD_POLLS_MAX unreadable replies in a row. */
static void legacy_unreadable(completion *c, const char *eval_id, const bk_result *res)
{
    char why[BK_DETAIL_MAX + 160];
    json_int_t n = json_integer_value(json_object_get(c->legacy_bad, eval_id)) + 1;
    if (res->too_large) {
        util_snprintf(why, sizeof(why),
                      "the result could not be read: the legacy Queue Service's reply is larger than "
                      "LEGACY_MAX_REPLY_BYTES (%lld bytes)",
                      c->p->cfg.legacy_max_reply_bytes);
    } else if (n >= LEGACY_BAD_POLLS_MAX) {
        util_snprintf(why, sizeof(why), "the result could not be read: the legacy Queue Service answered %d times in a row: %s",
                      LEGACY_BAD_POLLS_MAX, res->detail ? res->detail : "with an unreadable reply");
    } else {
        json_object_set_new(c->legacy_bad, eval_id, json_integer(n));
        return;
    }
    json_object_del(c->legacy_bad, eval_id);
    LOG_WARN("legacy eval finished as failed: its result cannot be read", "eval_id", eval_id, "error", why);
    count_why(c, PATH_LEGACY, eval_id, evstatus_outcome("failed"), 0, (ev_class){EV_SYS_UNREADABLE, EV_VERDICT_NONE}, -1,
              why);
}

static void on_legacy_task(const bk_result *res, void *arg)
{
    legacy_poll *lp = arg;
    completion *c = lp->c;
    c->legacy_calls--;
    const char *status = res->outcome == BK_OK ? bk_normalized_status(res->doc) : NULL;
    bool unreadable = bk_reply_unreadable(res);
    if (!unreadable) json_object_del(c->legacy_bad, lp->eval_id);
    if (unreadable) {
        legacy_unreadable(c, lp->eval_id, res);
    } else if (res->outcome == BK_OK) {
        int outcome = evstatus_outcome(status);
        if (outcome >= 0) {
            count(c, PATH_LEGACY, lp->eval_id, outcome,
                  evstatus_parse_iso(json_string_value(json_object_get(res->doc, "completed_at"))),
                  evclass_legacy(res->doc), evclass_run_seconds(res->doc, 0));
            shadow_report_legacy(c->p, lp->eval_id, res->doc); /* nothing unless it has a shadow */
        }
    } else if (res->outcome == BK_NOT_FOUND) {
        /* the Queue Service forgot it (restarted, or its results expired) */
        LOG_WARN("legacy eval no longer known to the Queue Service; its completion is not measured", "eval_id",
                 lp->eval_id);
        count(c, PATH_LEGACY, lp->eval_id, -1, 0, (ev_class){EV_SYS_LOST, EV_VERDICT_NONE}, -1);
    }
    free(lp);
}

static void on_page(struct redisReply *reply, const char *err, void *arg)
{
    page *pg = arg;
    completion *c = pg->c;
    (void)err;
    bool ok = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements % 2 == 0;
    size_t n = ok ? reply->elements / 2 : 0;
    if (n && !(pg->ids = calloc(n, sizeof(char *)))) ok = false;
    for (size_t i = 0; ok && i < n; i++) {
        redisReply *id = reply->element[2 * i], *score = reply->element[2 * i + 1];
        if (id->type != REDIS_REPLY_STRING || !util_valid_id(id->str, id->len, SUB_MAX_EVAL_ID)) continue;
        if (!(pg->ids[pg->n] = strdup(id->str))) break;
        pg->n++;
        if (score->type == REDIS_REPLY_STRING) snprintf(c->cursor[pg->path], sizeof(c->cursor[0]), "(%s", score->str);
    }
    /* a short page: the next sweep starts from the oldest again */
    if (!ok || n < (size_t)c->p->cfg.completion_poll_batch) snprintf(c->cursor[pg->path], sizeof(c->cursor[0]), "-inf");
    if (!pg->n) {
        c->sweeping[pg->path] = false;
        page_free(pg);
        return;
    }
    if (pg->path == PATH_LEGACY) {
        for (size_t i = 0; i < pg->n; i++) {
            legacy_poll *lp = malloc(sizeof(*lp));
            if (!lp) break;
            lp->c = c;
            snprintf(lp->eval_id, sizeof(lp->eval_id), "%s", pg->ids[i]);
            if (bk_get_task(c->p->paths[PATH_LEGACY], lp->eval_id, on_legacy_task, lp)) c->legacy_calls++;
            else free(lp);
        }
        page_free(pg);
        return;
    }
    /* new path: read the result records of the page at once */
    const char **argv = calloc(pg->n + 1, sizeof(char *));
    size_t *lens = calloc(pg->n + 1, sizeof(size_t));
    char **keys = calloc(pg->n, sizeof(char *));
    bool sent = false;
    if (argv && lens && keys) {
        argv[0] = "MGET";
        lens[0] = 4;
        size_t i = 0;
        for (; i < pg->n; i++) {
            if (asprintf(&keys[i], "%s%s", pg->path == KIND_SHADOW ? META_SHADOW_PREFIX : META_TASK_PREFIX, pg->ids[i]) < 0) {
                keys[i] = NULL;
                break;
            }
            argv[i + 1] = keys[i];
            lens[i + 1] = strlen(keys[i]);
        }
        sent = i == pg->n && rclient_command(px_results_rc(c->p), on_results, pg, (int)pg->n + 1, argv, lens) == 0;
    }
    for (size_t i = 0; keys && i < pg->n; i++) free(keys[i]);
    free(keys);
    free(argv);
    free(lens);
    if (!sent) {
        c->sweeping[pg->path] = false;
        page_free(pg);
    }
}

static void read_page(completion *c, enum route_path path)
{
    page *pg = calloc(1, sizeof(*pg));
    if (!pg) return;
    pg->c = c;
    pg->path = path;
    char limit[24];
    snprintf(limit, sizeof(limit), "%lld", c->p->cfg.completion_poll_batch);
    const char *argv[] = {"ZRANGEBYSCORE", inflight_key[path], c->cursor[path], "+inf", "WITHSCORES", "LIMIT", "0", limit};
    size_t lens[8];
    for (int i = 0; i < 8; i++) lens[i] = strlen(argv[i]);
    if (rclient_command(c->p->broker, on_page, pg, 8, argv, lens) != 0) {
        free(pg);
        return;
    }
    c->sweeping[path] = path != PATH_LEGACY;
}

/* ---------- the timer ---------- */

typedef struct prune_call {
    completion *c;
    enum route_path path;
} prune_call;

static void on_pruned(struct redisReply *reply, const char *err, void *arg)
{
    prune_call *pc = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        size_t path = pc->path;
        proxy *p = pc->c->p;
        size_t error = 2; /* a shadow never finished: no comparison */
        if (path == KIND_SHADOW)
            metrics_add(p->m.shadow_comparisons, metrics_at(p->m.shadow_comparisons, &error), (double)reply->integer);
        else {
            metrics_add(p->m.completion_untracked, metrics_at(p->m.completion_untracked, &path), (double)reply->integer);
            size_t lost[2] = {path, EV_PATH_LOST}, cls[2] = {path, EV_SYS_LOST};
            metrics_add(p->m.path_outcomes, metrics_at(p->m.path_outcomes, lost), (double)reply->integer);
            metrics_add(p->m.system_errors, metrics_at(p->m.system_errors, cls), (double)reply->integer);
        }
        char n[24];
        snprintf(n, sizeof(n), "%lld", reply->integer);
        LOG_WARN("unfinished evals older than ROUTE_RECORD_TTL_S given up", "set", inflight_key[path], "count", n);
    }
    free(pc);
}

static void on_lock(struct redisReply *reply, const char *err, void *arg)
{
    completion *c = arg;
    (void)err;
    if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1 || !c->timer) return;
    char cutoff[40];
    snprintf(cutoff, sizeof(cutoff), "(%.6f", util_now() - (double)c->p->cfg.route_record_ttl_s);
    for (int path = PATH_LEGACY; path <= KIND_SHADOW; path++) {
        prune_call *pc = malloc(sizeof(*pc));
        if (pc) {
            *pc = (prune_call){c, path};
            const char *argv[] = {"ZREMRANGEBYSCORE", inflight_key[path], "-inf", cutoff};
            size_t lens[4];
            for (int i = 0; i < 4; i++) lens[i] = strlen(argv[i]);
            if (rclient_command(c->p->broker, on_pruned, pc, 4, argv, lens) != 0) free(pc);
        }
    }
    if (!c->sweeping[PATH_NEW]) read_page(c, PATH_NEW);
    if (!c->sweeping[KIND_SHADOW]) read_page(c, KIND_SHADOW);
    if (c->legacy_calls == 0) read_page(c, PATH_LEGACY);
}

typedef struct gauge_call {
    completion *c;
    size_t path;
} gauge_call;

static void on_card(struct redisReply *reply, const char *err, void *arg)
{
    gauge_call *g = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        metrics_set(g->c->p->m.evals_pending, metrics_at(g->c->p->m.evals_pending, &g->path), (double)reply->integer);
    free(g);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    completion *c = arg;
    proxy *p = c->p;
    records_flush(p->records);
    if (!rclient_is_up(p->broker)) return;
    for (size_t path = PATH_LEGACY; path <= PATH_NEW; path++) {
        gauge_call *g = malloc(sizeof(*g));
        if (!g) continue;
        *g = (gauge_call){c, path};
        const char *argv[] = {"ZCARD", inflight_key[path]};
        size_t lens[] = {5, strlen(inflight_key[path])};
        if (rclient_command(p->broker, on_card, g, 2, argv, lens) != 0) free(g);
    }
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", p->cfg.completion_poll_s * 3000);
    const char *argv[] = {"1", COMPLETION_LOCK, c->owner, ms};
    size_t lens[4];
    for (int i = 0; i < 4; i++) lens[i] = strlen(argv[i]);
    (void)!rclient_eval(p->broker, &pscript_lease, on_lock, c, 4, argv, lens);
}

completion *completion_new(proxy *p, char err[256])
{
    completion *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    c->p = p;
    c->legacy_bad = json_object();
    if (!c->legacy_bad) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    util_uuid4(c->owner);
    for (int i = 0; i < 3; i++) snprintf(c->cursor[i], sizeof(c->cursor[i]), "-inf");
    const char *url = p->cfg.result_backend[0] ? p->cfg.result_backend : p->cfg.broker_url;
    rclient_opts o = {.command_timeout_ms = p->cfg.redis_timeout_ms,
                      .connect_timeout_ms = p->cfg.redis_timeout_ms,
                      .name = "results-sub"};
    char rerr[256];
    c->sub = rclient_new(p->base, url, &o, rerr);
    if (!c->sub) {
        snprintf(err, 256, "CELERY_RESULT_BACKEND: %.*s", UTF8_CUT(rerr, 200));
        goto fail;
    }
    if (rclient_psubscribe(c->sub, META_TASK_PREFIX "*", on_result_published, c) != 0 ||
        rclient_psubscribe(c->sub, META_SHADOW_PREFIX "*", on_result_published, c) != 0) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    c->timer = event_new(p->base, -1, EV_PERSIST, on_tick, c);
    if (!c->timer) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    struct timeval every = {(time_t)p->cfg.completion_poll_s, 0};
    event_add(c->timer, &every);
    return c;
fail:
    completion_free(c);
    return NULL;
}

void completion_stop(completion *c)
{
    if (!c) return;
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
}

void completion_free(completion *c)
{
    if (!c) return;
    completion_stop(c);
    rclient_free(c->sub);
    json_decref(c->legacy_bad);
    free(c);
}
