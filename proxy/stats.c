#include "stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "canary.h"
#include "evstatus.h"
#include "jsafe.h"
#include "celery.h"
#include "keys.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "rollout.h"
#include "shadow.h"
#include "util.h"

#define MAXB 24 /* histogram counts kept per snapshot (buckets + Inf) */
#define DLQ_INDEX KEY_DLQ_INDEX
#define DLQ_ENTRY_PREFIX KEY_DLQ_ENTRY_PREFIX
#define DLQ_NEWEST 5
#define HISTORY_SHOWN 10

typedef struct path_snap {
    double req, req5xx;          /* submit requests answered */
    double req_h[MAXB];          /* submit request latency, non-cumulative */
    double comp_h[MAXB];         /* completion latency */
    double outcomes[4];          /* completed, failed, timeout, cancelled */
    double pathout[EV_PATHOUT_COUNT]; /* finished evals by the path's outcome */
    double sys[EV_SYS_COUNT];    /* system errors by class */
    double verdicts[EV_VERDICT_COUNT]; /* program verdicts */
} path_snap;

typedef struct snap {
    double t;
    path_snap path[2]; /* legacy, new */
} snap;

struct stats {
    proxy *p;
    struct event *timer;
    snap ring[STATS_POINTS];
    size_t head, count; /* head: the next slot */
};

/* This proxy's counters now. */
static void fill(proxy *p, snap *sn)
{
    memset(sn, 0, sizeof(*sn));
    sn->t = util_now();
    for (size_t path = 0; path < 2; path++) {
        path_snap *ps = &sn->path[path];
        for (size_t code = 0; code < PM_NCODES; code++) {
            size_t c3[3] = {RT_SUBMIT, path, code};
            double v = metrics_get(p->m.requests, metrics_at(p->m.requests, c3));
            ps->req += v;
            if (pm_code_names[code][0] == '5') ps->req5xx += v;
        }
        const double *bounds, *h;
        size_t nb;
        size_t c2[2] = {RT_SUBMIT, path};
        h = metrics_hist_counts(p->m.request_duration, metrics_at(p->m.request_duration, c2), &bounds, &nb);
        for (size_t b = 0; h && b <= nb && b < MAXB; b++) ps->req_h[b] = h[b];
        h = metrics_hist_counts(p->m.eval_completion, metrics_at(p->m.eval_completion, &path), &bounds, &nb);
        for (size_t b = 0; h && b <= nb && b < MAXB; b++) ps->comp_h[b] = h[b];
        for (size_t o = 0; o < 4; o++) {
            size_t c[2] = {path, o};
            ps->outcomes[o] = metrics_get(p->m.evals_completed, metrics_at(p->m.evals_completed, c));
        }
        for (size_t o = 0; o < EV_PATHOUT_COUNT; o++) {
            size_t c[2] = {path, o};
            ps->pathout[o] = metrics_get(p->m.path_outcomes, metrics_at(p->m.path_outcomes, c));
        }
        for (size_t o = 0; o < EV_SYS_COUNT; o++) {
            size_t c[2] = {path, o};
            ps->sys[o] = metrics_get(p->m.system_errors, metrics_at(p->m.system_errors, c));
        }
        for (size_t o = 0; o < EV_VERDICT_COUNT; o++) {
            size_t c[2] = {path, o};
            ps->verdicts[o] = metrics_get(p->m.verdicts, metrics_at(p->m.verdicts, c));
        }
    }
}

/* One point of the ring, every STATS_STEP_S: the windows below count on
 * that spacing, so nothing else adds to it. */
static void take(stats *s)
{
    fill(s->p, &s->ring[s->head]);
    s->head = (s->head + 1) % STATS_POINTS;
    if (s->count < STATS_POINTS) s->count++;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    take(arg);
}

stats *stats_new(proxy *p)
{
    stats *s = calloc(1, sizeof(*s));
    if (!s || !(s->timer = event_new(p->base, -1, EV_PERSIST, on_tick, s))) {
        free(s);
        return NULL;
    }
    s->p = p;
    take(s);
    struct timeval every = {STATS_STEP_S, 0};
    event_add(s->timer, &every);
    return s;
}

void stats_free(stats *s)
{
    if (!s) return;
    if (s->timer) event_free(s->timer);
    free(s);
}

/* The snapshot `back` steps before the newest (clamped to the oldest). */
static const snap *at(const stats *s, size_t back)
{
    if (back >= s->count) back = s->count - 1;
    return &s->ring[(s->head + STATS_POINTS - 1 - back) % STATS_POINTS];
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static double quantile(const double *hi, const double *lo, const double *bounds, size_t nb, double q)
{
    double d[MAXB];
    for (size_t b = 0; b <= nb && b < MAXB; b++) d[b] = hi[b] - lo[b];
    return metrics_quantile_of(bounds, nb, d, q);
}

/* Rates and quantiles of one path between two snapshots. */
static json_t *window(const stats *s, size_t path, const snap *lo, const snap *hi)
{
    proxy *p = s->p;
    const path_snap *a = &lo->path[path], *b = &hi->path[path];
    double dt = hi->t - lo->t;
    double req = b->req - a->req, err = b->req5xx - a->req5xx;
    double done = 0, failed = b->outcomes[1] - a->outcomes[1] + b->outcomes[2] - a->outcomes[2];
    for (int o = 0; o < 4; o++) done += b->outcomes[o] - a->outcomes[o];
    /* the path's health apart from the programs' verdicts */
    double given = b->sys[EV_SYS_SUBMIT] - a->sys[EV_SYS_SUBMIT], sys = 0, ran = 0, prog_failed = 0;
    for (int o = 0; o < EV_PATHOUT_COUNT; o++) given += b->pathout[o] - a->pathout[o];
    for (int o = 0; o < EV_SYS_COUNT; o++) sys += b->sys[o] - a->sys[o];
    for (int o = 0; o < EV_VERDICT_COUNT; o++)
        if (o != VERDICT_KILLED) ran += b->verdicts[o] - a->verdicts[o];
    prog_failed = b->verdicts[VERDICT_FAILED] - a->verdicts[VERDICT_FAILED] + b->verdicts[VERDICT_TIMEOUT] -
                  a->verdicts[VERDICT_TIMEOUT];
    const double *rb, *cb;
    size_t rn = 0, cn = 0;
    size_t c2[2] = {RT_SUBMIT, path};
    (void)metrics_hist_counts(p->m.request_duration, metrics_at(p->m.request_duration, c2), &rb, &rn);
    (void)metrics_hist_counts(p->m.eval_completion, metrics_at(p->m.eval_completion, &path), &cb, &cn);
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "system_error_ratio",
                     num_or_null(given > 0 ? sys / given : NAN), "program_failure_ratio",
                     num_or_null(ran > 0 ? prog_failed / ran : NAN), "request_rate",
                     num_or_null(dt > 0 ? req / dt : NAN), "error_ratio", num_or_null(req > 0 ? err / req : NAN), "p50",
                     num_or_null(quantile(b->req_h, a->req_h, rb, rn, 0.5)), "p95",
                     num_or_null(quantile(b->req_h, a->req_h, rb, rn, 0.95)), "p99",
                     num_or_null(quantile(b->req_h, a->req_h, rb, rn, 0.99)), "completion_rate",
                     num_or_null(dt > 0 ? done / dt : NAN), "completion_error_ratio",
                     num_or_null(done > 0 ? failed / done : NAN), "completion_p50",
                     num_or_null(quantile(b->comp_h, a->comp_h, cb, cn, 0.5)), "completion_p95",
                     num_or_null(quantile(b->comp_h, a->comp_h, cb, cn, 0.95)), "completion_p99",
                     num_or_null(quantile(b->comp_h, a->comp_h, cb, cn, 0.99)));
}

static json_t *local_part(stats *s)
{
    proxy *p = s->p;
    snap fresh; /* up to this request, not to the last tick; not kept in the ring */
    fill(p, &fresh);
    const snap *now = &fresh;
    json_t *paths = json_object();
    for (size_t path = 0; path < 2; path++) {
        /* the last minute for rates and request latency, 5 minutes for completions */
        json_t *w = window(s, path, at(s, 60 / STATS_STEP_S - 1), now);
        json_t *wc = window(s, path, at(s, 300 / STATS_STEP_S - 1), now);
        json_t *totals = json_object();
        for (int o = 0; o < 4; o++)
            json_object_set_new(totals, pm_outcome_names[o], json_real(now->path[path].outcomes[o]));
        size_t c = path;
        json_object_set_new(w, "completed", totals);
        json_t *sys = json_object(), *verdicts = json_object(), *pathout = json_object();
        for (int o = 0; o < EV_SYS_COUNT; o++) json_object_set_new(sys, ev_sys_names[o], json_real(now->path[path].sys[o]));
        for (int o = 0; o < EV_VERDICT_COUNT; o++)
            json_object_set_new(verdicts, ev_verdict_names[o], json_real(now->path[path].verdicts[o]));
        for (int o = 0; o < EV_PATHOUT_COUNT; o++)
            json_object_set_new(pathout, ev_pathout_names[o], json_real(now->path[path].pathout[o]));
        json_object_set_new(w, "system_errors", sys);
        json_object_set_new(w, "verdicts", verdicts);
        json_object_set_new(w, "path_outcomes", pathout);
        json_object_set_new(w, "unfinished", json_real(metrics_get(p->m.evals_pending, metrics_at(p->m.evals_pending, &c))));
        json_object_set_new(w, "requests_total", json_real(now->path[path].req));
        const char *keys[] = {"completion_rate", "completion_error_ratio", "completion_p50", "completion_p95",
                              "completion_p99", "system_error_ratio", "program_failure_ratio"};
        for (int i = 0; i < 7; i++) json_object_set(w, keys[i], json_object_get(wc, keys[i]));
        json_decref(wc);
        json_object_set_new(paths, route_path_names[path], w);
    }
    /* the charts: one point per snapshot, each over the 10 s before it,
     * and a last one up to now */
    json_t *series = json_array();
    for (size_t back = s->count + 1; back-- > 0;) {
        const snap *hi = back ? at(s, back - 1) : now, *lo = at(s, back + 10 / STATS_STEP_S - 1);
        if (hi == lo || hi->t <= lo->t) continue;
        json_t *pt = json_pack("{s:f}", "t", hi->t);
        for (size_t path = 0; path < 2; path++) {
            json_t *w = window(s, path, lo, hi);
            json_t *slim = json_pack("{s:O, s:O, s:O, s:O}", "rps", json_object_get(w, "request_rate"), "err",
                                     json_object_get(w, "error_ratio"), "p99", json_object_get(w, "p99"), "cp99",
                                     json_object_get(w, "completion_p99"));
            json_object_set_new(pt, route_path_names[path], slim);
            json_decref(w);
        }
        json_array_append_new(series, pt);
    }
    json_t *depth = json_object();
    for (size_t i = 0; i < CELERY_NSTEPS; i++) {
        char k[8];
        size_t c[2] = {0, i};
        snprintf(k, sizeof(k), "%d", celery_priority_steps[i]);
        json_object_set_new(depth, k, json_real(metrics_get(p->m.queue_depth, metrics_at(p->m.queue_depth, c))));
    }
    size_t k3[3] = {0, 1, 2};
    metrics_family *sh = p->m.shadow_comparisons;
    return json_pack("{s:f, s:i, s:o, s:o, s:{s:o, s:f}, s:o, s:o, s:{s:f, s:f, s:f, s:f}}", "at", util_now(), "step_s",
                     STATS_STEP_S, "paths", paths, "series", series, "queue", "depth", depth, "dlq_size",
                     metrics_get(p->m.dlq_size, 0), "rollout", rollout_view(p->rollout), "canary",
                     canary_view(p->canary), "shadow", "match", metrics_get(sh, metrics_at(sh, &k3[0])), "mismatch",
                     metrics_get(sh, metrics_at(sh, &k3[1])), "error", metrics_get(sh, metrics_at(sh, &k3[2])),
                     "percentage", p->cfg.shadow_percentage);
}

/* ---------- the shared part, from Redis ---------- */

typedef struct stats_op {
    preq *r;
    json_t *out;
    json_t *dlq_ids; /* the task ids of the newest dead letters, as asked */
} stats_op;

static void finish(stats_op *op)
{
    px_hold_in_flight(op->r, NOT_WAITING);
    px_finish_json(op->r, 200, op->out);
    json_decref(op->out);
    json_decref(op->dlq_ids);
    free(op);
}

static json_t *parse_list(const rbatch_reply *r)
{
    json_t *a = json_array();
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        json_t *j = r->element[i].str ? json_loadb(r->element[i].str, r->element[i].len, JSON_ALLOW_NUL, NULL) : NULL;
        if (j) json_array_append_new(a, j);
    }
    return a;
}

static void on_entries(rbatch *b, void *arg)
{
    stats_op *op = arg;
    const rbatch_reply *r = rbatch_at(b, 0);
    /* only what the page shows of each dead letter; one in the index whose
     * entry does not parse is still shown, by its task id (the index's) */
    json_t *slim = json_array();
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const rbatch_reply *el = &r->element[i];
        if (el->type != REDIS_REPLY_STRING) continue; /* deleted or retried since the index was read */
        json_t *e = json_loadb(el->str, el->len, JSON_ALLOW_NUL, NULL);
        json_t *x = json_object();
        json_object_set(x, "task_id", json_array_get(op->dlq_ids, i));
        const char *keep[] = {"eval_id", "exception_class", "exception_message", "retries", "last_failure_at"};
        for (int k = 0; json_is_object(e) && k < 5; k++) {
            json_t *v = json_object_get(e, keep[k]);
            if (v) json_object_set(x, keep[k], v);
        }
        if (!json_is_object(e)) json_object_set_new(x, "malformed_entry", json_true());
        json_decref(e);
        json_array_append_new(slim, x);
    }
    json_object_set_new(json_object_get(op->out, "queue"), "dlq_newest", slim);
    rbatch_free(b);
    finish(op);
}

static void on_shared(rbatch *b, void *arg)
{
    stats_op *op = arg;
    proxy *p = op->r->p;
    if (rbatch_error(b)) {
        json_object_set_new(op->out, "redis", json_string("down"));
        rbatch_free(b);
        finish(op);
        return;
    }
    json_object_set_new(op->out, "redis", json_string("up"));
    json_object_set_new(op->out, "history", parse_list(rbatch_at(b, 1)));
    json_object_set_new(json_object_get(op->out, "shadow"), "mismatches_kept",
                        json_integer(rbatch_int(rbatch_at(b, 2), 0)));
    const rbatch_reply *ids = rbatch_at(b, 0);
    size_t n = ids && ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
    if (n > DLQ_NEWEST) n = DLQ_NEWEST;
    rbatch *b2 = n ? rbatch_new(on_entries, op) : NULL;
    if (!b2) {
        json_object_set_new(json_object_get(op->out, "queue"), "dlq_newest", json_array());
        rbatch_free(b);
        finish(op);
        return;
    }
    /* keys as the index holds the ids, byte for byte and whole */
    char keys[DLQ_NEWEST][sizeof(DLQ_ENTRY_PREFIX) + CELERY_TASK_ID_MAX];
    const char *argv[DLQ_NEWEST + 1] = {"MGET"};
    size_t lens[DLQ_NEWEST + 1] = {4};
    size_t plen = sizeof(DLQ_ENTRY_PREFIX) - 1, k = 0;
    op->dlq_ids = json_array();
    for (size_t i = 0; i < n; i++) {
        const rbatch_reply *id = &ids->element[i];
        if (id->type != REDIS_REPLY_STRING || id->len > CELERY_TASK_ID_MAX) continue; /* no API could address it */
        memcpy(keys[k], DLQ_ENTRY_PREFIX, plen);
        memcpy(keys[k] + plen, id->str, id->len);
        argv[k + 1] = keys[k];
        lens[k + 1] = plen + id->len;
        json_array_append_new(op->dlq_ids, jsafe_stringn(id->str, id->len));
        k++;
    }
    n = k;
    if (n) (void)rbatch_add(b2, p->broker, (int)n + 1, argv, lens);
    rbatch_free(b);
    rbatch_run(b2);
}

void stats_api_handle(proxy *p, struct evhttp_request *req, double t0)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        px_reply_method_not_allowed(p, req, RT_PROBE, t0, "GET", "use GET /api/stats");
        return;
    }
    stats_op *op = calloc(1, sizeof(*op));
    preq *r = op ? px_req_new(p, req, RT_PROBE, t0) : NULL;
    rbatch *b = r ? rbatch_new(on_shared, op) : NULL;
    if (op) op->out = p->stats ? local_part(p->stats) : NULL;
    if (!b || !op->out) {
        if (op) json_decref(op->out);
        free(op);
        if (b) rbatch_free(b);
        px_reply_oom(p, req, RT_PROBE, t0, r);
        return;
    }
    op->r = r;
    char hist_stop[8];
    snprintf(hist_stop, sizeof(hist_stop), "%d", HISTORY_SHOWN - 1);
    char dlq_stop[8];
    snprintf(dlq_stop, sizeof(dlq_stop), "%d", DLQ_NEWEST - 1);
    const char *a0[] = {"ZREVRANGE", DLQ_INDEX, "0", dlq_stop}, *a1[] = {"LRANGE", ROLLOUT_HISTORY, "0", hist_stop},
               *a2[] = {"LLEN", SHADOW_MISMATCHES};
    size_t l0[] = {9, sizeof(DLQ_INDEX) - 1, 1, strlen(dlq_stop)},
           l1[] = {6, sizeof(ROLLOUT_HISTORY) - 1, 1, strlen(hist_stop)}, l2[] = {4, sizeof(SHADOW_MISMATCHES) - 1};
    px_hold_in_flight(r, PATH_NONE);
    if (rbatch_add(b, p->broker, 4, a0, l0) == 0 && rbatch_add(b, p->broker, 4, a1, l1) == 1)
        (void)rbatch_add(b, p->broker, 2, a2, l2);
    rbatch_run(b);
}
