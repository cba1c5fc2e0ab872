#include "canary.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "admin_auth.h"
#include "gates.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "rollout.h"
#include "util.h"
#include "pscripts.h"

#define TICK_MS 1000
#define LEASE_MS "3000"
#define WINDOW_TTL_S "86400"

struct canary {
    proxy *p;
    struct event *timer;
    char owner[40];
    json_t *state;     /* last read; NULL: none */
    long long version;
    bool judging;      /* a verdict or transition is in flight */
};


static const char *status_of(json_t *s)
{
    const char *st = json_string_value(json_object_get(s, "status"));
    return st ? st : "idle";
}

static bool is(json_t *s, const char *status) { return strcmp(status_of(s), status) == 0; }

static double step_fraction(json_t *s, long long step)
{
    return json_number_value(json_array_get(json_object_get(s, "steps"), (size_t)step));
}

static void set_step_gauge(canary *c)
{
    long long step = json_integer_value(json_object_get(c->state, "step"));
    bool live = is(c->state, "running") || is(c->state, "paused") || is(c->state, "rolled_back");
    metrics_set(c->p->m.rollout_step, 0, live ? (double)(step + 1) : 0);
}

/* ---------- windows ---------- */

static bool window_key(canary *c, enum route_path path, char key[160])
{
    if (!c || !c->state || !is(c->state, "running") || path > PATH_NEW) return false;
    const char *win = json_string_value(json_object_get(c->state, "window"));
    if (!win) return false;
    snprintf(key, 160, CANARY_WINDOW_PREFIX "%.64s:%s", win, route_path_names[path]);
    return true;
}

static void bump(canary *c, const char *key, const char *field)
{
    const char *argv[] = {"HINCRBY", key, field, "1"};
    size_t lens[] = {7, strlen(key), strlen(field), 1};
    rclient_send(c->p->broker, 4, argv, lens);
}

static void keep(canary *c, const char *key)
{
    const char *argv[] = {"EXPIRE", key, WINDOW_TTL_S};
    size_t lens[] = {6, strlen(key), sizeof(WINDOW_TTL_S) - 1};
    rclient_send(c->p->broker, 3, argv, lens);
}

void canary_record(canary *c, enum route_path path, ev_class cls, double seconds)
{
    char key[160], field[32];
    if (!window_key(c, path, key)) return;
    bump(c, key, "n");
    if (cls.sys >= 0) {
        bump(c, key, "sys");
        snprintf(field, sizeof(field), "s:%s", ev_sys_names[cls.sys]);
        bump(c, key, field);
    }
    /* a program that ran to a verdict of its own (a cancelled one did not) */
    if (cls.verdict >= 0 && cls.verdict != VERDICT_KILLED) {
        bump(c, key, "v");
        if (cls.verdict != VERDICT_COMPLETED) bump(c, key, "pf");
        if (seconds >= 0) {
            snprintf(field, sizeof(field), "b%d", gate_bucket(seconds));
            bump(c, key, field);
        }
    }
    keep(c, key);
}

void canary_submit_error(canary *c, enum route_path path)
{
    char key[160];
    if (!window_key(c, path, key)) return;
    bump(c, key, "sub");
    bump(c, key, "s:submit");
    keep(c, key);
}

/* A window, and its system errors by class (for the explanation). */
static void read_window(const rbatch_reply *r, gate_stats *s, long long classes[EV_SYS_COUNT])
{
    memset(s, 0, sizeof(*s));
    memset(classes, 0, sizeof(long long) * EV_SYS_COUNT);
    if (!r || r->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *f = r->element[i].str;
        long long v = rbatch_int(&r->element[i + 1], 0);
        if (!f || v < 0) continue;
        if (strcmp(f, "n") == 0) s->n = v;
        else if (strcmp(f, "sys") == 0) s->sys = v;
        else if (strcmp(f, "sub") == 0) s->sub_err = v;
        else if (strcmp(f, "v") == 0) s->verdicts = v;
        else if (strcmp(f, "pf") == 0) s->prog_fail = v;
        else if (strncmp(f, "s:", 2) == 0) {
            for (int k = 0; k < EV_SYS_COUNT; k++)
                if (strcmp(f + 2, ev_sys_names[k]) == 0) classes[k] = v;
        } else if (f[0] == 'b') {
            int k = atoi(f + 1);
            if (k >= 0 && k < GATE_NBUCKETS) s->buckets[k] = v;
        }
    }
}

/* The step's fixed choices, as the state keeps them. */
static gate_ref ref_of(json_t *s)
{
    gate_ref r = GATE_REF_INIT;
    json_t *o = json_object_get(s, "ref");
    if (!json_is_object(o)) return r;
    r.source = (int)json_integer_value(json_object_get(o, "source"));
    r.bucket = (int)json_integer_value(json_object_get(o, "bucket"));
    if (r.source < 0 || r.source > 1) r.source = -1;
    if (r.bucket < -1 || r.bucket >= GATE_NBUCKETS) r.bucket = -1;
    for (int i = 0; i < 2; i++) {
        r.lat0[i] = json_integer_value(json_array_get(json_object_get(o, "lat0"), (size_t)i));
        r.above0[i] = json_integer_value(json_array_get(json_object_get(o, "above0"), (size_t)i));
    }
    return r;
}

static json_t *ref_json(const gate_ref *r)
{
    return json_pack("{s:i, s:i, s:[I,I], s:[I,I]}", "source", r->source, "bucket", r->bucket, "lat0",
                     (json_int_t)r->lat0[0], (json_int_t)r->lat0[1], "above0", (json_int_t)r->above0[0],
                     (json_int_t)r->above0[1]);
}

static json_t *side_json(const gate_check *g, int i)
{
    return json_pack("{s:I, s:I, s:f, s:f, s:f}", "events", (json_int_t)g->x[i], "trials", (json_int_t)g->n[i],
                     "ratio", g->est[i], "low", g->lo[i], "high", g->hi[i]);
}

static json_t *classes_json(const long long classes[EV_SYS_COUNT])
{
    json_t *o = json_object();
    for (int k = 0; k < EV_SYS_COUNT; k++)
        if (classes[k]) json_object_set_new(o, ev_sys_names[k], json_integer((json_int_t)classes[k]));
    return o;
}

/* The verdict, explained: per gate the estimate on each path with its
 * interval, the difference's bounds, the margins, the decision, and what
 * it needs to decide. */
static json_t *check_json(const gate_result *g, const gate_stats *fresh, const gate_stats *against,
                          const long long cls_new[EV_SYS_COUNT], const long long cls_leg[EV_SYS_COUNT])
{
    json_t *gates = json_object();
    for (int i = 0; i < GATE_COUNT; i++) {
        const gate_check *c = &g->g[i];
        json_t *needs = c->verdict == GATE_HOLD && c->need[0] >= 0
                            ? json_pack("{s:I, s:I}", "new", (json_int_t)c->need[0], "legacy", (json_int_t)c->need[1])
                            : json_null();
        json_object_set_new(gates, gate_names[i],
                            json_pack("{s:s, s:o, s:o, s:f, s:f, s:f, s:f, s:f, s:o}", "verdict",
                                      gate_verdict_names[c->verdict], "new", side_json(c, 0), "legacy",
                                      side_json(c, 1), "diff", c->diff, "diff_low", c->diff_lo, "diff_high",
                                      c->diff_hi, "margin", c->margin, "pass_margin", c->pass_margin, "needs", needs));
    }
    json_t *lat = json_object_get(gates, gate_names[GATE_LATENCY]);
    json_object_set_new(lat, "threshold_s", g->latency_threshold_s > 0 ? json_real(g->latency_threshold_s) : json_null());
    return json_pack("{s:s, s:s, s:o, s:b, s:f, s:f, s:I, s:I, s:{s:o, s:o}, s:f}", "verdict",
                     gate_verdict_names[g->overall], "why", g->why, "gates", gates, "baseline", g->baseline,
                     "alpha_fail", g->alpha_fail, "alpha_pass", g->alpha_pass, "n_new",
                     (json_int_t)(fresh->n + fresh->sub_err), "n_legacy", (json_int_t)(against->n + against->sub_err),
                     "system_errors", "new", classes_json(cls_new), "legacy", classes_json(cls_leg), "at", util_now());
}

/* ---------- transitions ---------- */

typedef struct transition {
    canary *c;
    json_t *next;    /* the state written */
    json_t *patch;   /* rollout change after the state is written, or NULL */
    char reason[600];
    char by[128];    /* who: "canary", or the admin who acted */
    preq *r;         /* an admin request waiting for the outcome, or NULL */
    char action[16]; /* the admin action, retried on a version conflict */
    int attempt;
} transition;

#define ACT_ATTEMPTS 3 /* an admin action re-read and re-tried after a version conflict */

static void act(proxy *p, preq *r, const char *action, const char *by, int attempt);

static json_t *history_entry(const char *by, const char *reason, json_t *from, json_t *to)
{
    return json_pack("{s:s, s:f, s:s, s:s, s:s, s:s, s:O?}", "kind", "canary", "at", util_now(), "by", by, "reason",
                     reason, "from", status_of(from), "to", status_of(to), "canary", to);
}

static void free_transition(transition *t)
{
    json_decref(t->next);
    json_decref(t->patch);
    free(t);
}

/* The admin who acted hears the outcome once the change is in force here:
 * a GET /admin/canary or /admin/rollout after the reply sees it. */
static void answer(transition *t, int status, const char *code, const char *msg, int retry_after)
{
    if (!t->r) return;
    px_hold_in_flight(t->r, NOT_WAITING);
    if (status == 200) {
        json_t *o = json_pack("{s:b, s:s, s:o}", "ok", 1, "message", t->reason, "canary", canary_view(t->c));
        px_finish_json(t->r, 200, o);
        json_decref(o);
    } else {
        px_finish_error(t->r, status, code, msg, retry_after);
    }
    t->r = NULL;
}

static void on_rolled(const char *state, const char *err, void *arg)
{
    transition *t = arg;
    if (!state) {
        LOG_ERROR("canary could not change the rollout percentage; it will be retried by a resume", "error",
                  err ? err : "version moved", "reason", t->reason);
        char msg[600];
        util_snprintf(msg, sizeof(msg),
                      "the canary state changed (%s) but the rollout percentage could not be set (%s); "
                      "GET /admin/rollout shows what is in force, and PUT /admin/rollout sets it",
                      t->reason, err ? err : "it changed meanwhile");
        answer(t, 503, "rollout_not_changed", msg, 1);
    } else {
        answer(t, 200, NULL, NULL, 0);
    }
    free_transition(t);
}

/* A state read for an admin action that met a version conflict. */
static void on_reread(struct redisReply *reply, const char *err, void *arg);

static void on_written(struct redisReply *reply, const char *err, void *arg)
{
    transition *t = arg;
    canary *c = t->c;
    c->judging = false;
    bool ok = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    if (ok) {
        /* in force here at once, before anyone is told */
        json_decref(c->state);
        c->state = t->next;
        t->next = NULL;
        c->version = (long long)json_integer_value(json_object_get(c->state, "version"));
        set_step_gauge(c);
        LOG_INFO("canary", "change", t->reason);
        if (t->patch && rollout_update(c->p->rollout, t->patch, t->by, t->reason, -1, on_rolled, t) == 0) return;
        if (t->patch) {
            on_rolled(NULL, "Redis is unreachable", t);
            return;
        }
        answer(t, 200, NULL, NULL, 0);
    } else if (reply && reply->type == REDIS_REPLY_INTEGER) {
        if (t->r && t->attempt + 1 < ACT_ATTEMPTS) {
            /* another proxy (or the leader's verdict) wrote first: read what
             * is there and decide the action again against it */
            static const char *argv[] = {"GET", CANARY_KEY};
            static const size_t lens[] = {3, sizeof(CANARY_KEY) - 1};
            t->attempt++;
            if (rclient_command(c->p->broker, on_reread, t, 2, argv, lens) == 0) return;
        }
        answer(t, 409, "conflict", "the canary changed meanwhile (another proxy or person); read GET /admin/canary and retry", 0);
    } else {
        answer(t, 503, "redis_unavailable",
               reply && reply->type == REDIS_REPLY_ERROR ? reply->str : err ? err : "Redis did not answer", 1);
    }
    free_transition(t);
}

static void take_state(canary *c, struct redisReply *reply);

static void on_reread(struct redisReply *reply, const char *err, void *arg)
{
    transition *t = arg;
    canary *c = t->c;
    preq *r = t->r;
    t->r = NULL;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        px_hold_in_flight(r, NOT_WAITING);
        px_finish_error(r, 503, "redis_unavailable", reply ? reply->str : err ? err : "Redis did not answer", 1);
    } else {
        take_state(c, reply);
        act(c->p, r, t->action, t->by, t->attempt);
    }
    free_transition(t);
}

/* Writes `next` (stolen) over the state of version c->version, then applies
 * `patch` (stolen, may be NULL) to the rollout.  -1 when not sent. */
static int transition_to(canary *c, json_t *next, json_t *patch, const char *by, const char *reason, preq *r,
                         const char *action, int attempt)
{
    transition *t = calloc(1, sizeof(*t));
    json_object_set_new(next, "version", json_integer(c->version + 1));
    json_object_set_new(next, "updated_at", json_real(util_now()));
    json_object_set_new(next, "updated_by", json_string(by));
    json_object_set_new(next, "reason", json_string(reason));
    json_t *h = history_entry(by, reason, c->state, next);
    char *text = json_dumps(next, JSON_COMPACT), *htext = h ? json_dumps(h, JSON_COMPACT) : NULL;
    char expected[24], hmax[16];
    snprintf(expected, sizeof(expected), "%lld", c->version);
    snprintf(hmax, sizeof(hmax), "%d", ROLLOUT_HISTORY_MAX);
    int rc = -1;
    if (t && text && htext) {
        t->c = c;
        t->next = json_incref(next);
        t->patch = patch;
        t->r = r;
        t->attempt = attempt;
        snprintf(t->action, sizeof(t->action), "%s", action ? action : "");
        util_snprintf(t->reason, sizeof(t->reason), "%s", reason);
        util_snprintf(t->by, sizeof(t->by), "%s", by);
        const char *argv[] = {"2", CANARY_KEY, ROLLOUT_HISTORY, expected, text, htext, hmax};
        size_t lens[7];
        for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
        rc = rclient_eval(c->p->broker, &pscript_canary_cas, on_written, t, 7, argv, lens);
        if (rc == 0) c->judging = true;
        else t->patch = NULL; /* freed below */
    }
    if (rc != 0) {
        if (t) {
            json_decref(t->next);
            free(t);
        }
        json_decref(patch);
    }
    json_decref(next);
    json_decref(h);
    free(text);
    free(htext);
    return rc;
}

static json_t *copy_state(canary *c) { return c->state ? json_deep_copy(c->state) : json_object(); }

static void new_window(json_t *s)
{
    json_object_del(s, "ref"); /* a new step fixes its own */
    char win[37];
    util_uuid4(win);
    json_object_set_new(s, "window", json_string(win));
    json_object_set_new(s, "step_started_at", json_real(util_now()));
}

static json_t *percentage_patch(double f)
{
    return json_pack("{s:b, s:f}", "enabled", 1, "percentage", f);
}

/* ---------- the leader's verdict ---------- */

static void count_check(canary *c, int gate, enum gate_verdict v)
{
    size_t k[2] = {(size_t)gate, v};
    metrics_add(c->p->m.gate_checks, metrics_at(c->p->m.gate_checks, k), 1);
}

static void on_window(rbatch *b, void *arg)
{
    canary *c = arg;
    proxy *p = c->p;
    c->judging = false;
    if (rbatch_error(b) || !c->state || !is(c->state, "running")) {
        rbatch_free(b);
        return;
    }
    gate_stats fresh, legacy, baseline;
    long long cls_new[EV_SYS_COUNT], cls_leg[EV_SYS_COUNT], cls_base[EV_SYS_COUNT];
    read_window(rbatch_at(b, 0), &fresh, cls_new);
    read_window(rbatch_at(b, 1), &legacy, cls_leg);
    read_window(rbatch_at(b, 2), &baseline, cls_base);
    rbatch_free(b);
    gate_cfg cfg = {.alpha = p->cfg.gate_alpha,
                    .nsteps = (int)json_array_size(json_object_get(c->state, "steps")),
                    .min_samples = p->cfg.gate_min_samples,
                    .latency_quantile = p->cfg.gate_latency_quantile};
    memcpy(cfg.margin, p->cfg.gate_margin, sizeof(cfg.margin));
    memcpy(cfg.pass_margin, p->cfg.gate_pass_margin, sizeof(cfg.pass_margin));
    /* Near 100 % the legacy path gets too little traffic to compare with:
     * the last step that had enough is the baseline. */
    bool has_base = json_is_string(json_object_get(c->state, "baseline_window"));
    gate_ref ref = ref_of(c->state), before = ref;
    gate_result g;
    gate_judge(&fresh, &legacy, has_base ? &baseline : NULL, &cfg, &ref, &g);
    bool own_legacy = ref.source == 0;
    for (int i = 0; i < GATE_COUNT; i++) count_check(c, i, g.g[i].verdict);
    json_t *check = check_json(&g, &fresh, own_legacy || !has_base ? &legacy : &baseline, cls_new,
                               own_legacy || !has_base ? cls_leg : cls_base);
    bool ref_moved = memcmp(&ref, &before, sizeof(ref)) != 0;
    long long step = json_integer_value(json_object_get(c->state, "step"));
    json_t *steps = json_object_get(c->state, "steps");
    long long nsteps = (long long)json_array_size(steps);
    double started = json_number_value(json_object_get(c->state, "step_started_at"));
    double interval = json_number_value(json_object_get(c->state, "interval_s"));
    bool elapsed = util_now() - started >= interval;
    char reason[600];
    if (g.overall == GATE_FAIL) {
        bool to_last = strcmp(p->cfg.rollout_rollback_to, "last_good") == 0;
        double back = to_last ? json_number_value(json_object_get(c->state, "last_good")) : 0;
        size_t why = 0;
        while (why + 1 < GATE_COUNT && g.g[why].verdict != GATE_FAIL) why++;
        metrics_add(p->m.rollbacks, metrics_at(p->m.rollbacks, &why), 1);
        util_snprintf(reason, sizeof(reason), "canary rolled back to %g at step %lld/%lld: %s", back, step + 1, nsteps, g.why);
        LOG_WARN("canary gate failed, rolling back", "why", g.why);
        json_t *next = copy_state(c);
        json_object_set_new(next, "status", json_string("rolled_back"));
        json_object_set_new(next, "last_check", check);
        (void)transition_to(c, next, percentage_patch(back), "canary", reason, NULL, NULL, 0);
        return;
    }
    if (g.overall == GATE_PASS && elapsed) {
        json_t *next = copy_state(c);
        json_object_set_new(next, "last_check", check);
        json_object_set_new(next, "last_good", json_real(step_fraction(c->state, step)));
        if (own_legacy) json_object_set(next, "baseline_window", json_object_get(c->state, "window"));
        if (step + 1 >= nsteps) {
            util_snprintf(reason, sizeof(reason), "canary completed: the last step (%g) passed; %s", step_fraction(c->state, step),
                     g.why);
            json_object_set_new(next, "status", json_string("completed"));
            (void)transition_to(c, next, NULL, "canary", reason, NULL, NULL, 0);
        } else {
            double f = step_fraction(c->state, step + 1);
            util_snprintf(reason, sizeof(reason), "canary step %lld/%lld passed, now %g: %s", step + 1, nsteps, f, g.why);
            json_object_set_new(next, "step", json_integer(step + 1));
            new_window(next);
            (void)transition_to(c, next, percentage_patch(f), "canary", reason, NULL, NULL, 0);
        }
        return;
    }
    /* hold, or passing within the interval: the state shows the last check
     * (and keeps what the step fixed) */
    json_t *next = copy_state(c);
    json_object_set_new(next, "last_check", check);
    if (ref_moved) json_object_set_new(next, "ref", ref_json(&ref));
    json_object_set_new(next, "version", json_integer(c->version)); /* same version: only the check changes */
    char *text = json_dumps(next, JSON_COMPACT);
    if (text) {
        char expected[24];
        snprintf(expected, sizeof(expected), "%lld", c->version);
        const char *argv[] = {"2", CANARY_KEY, ROLLOUT_HISTORY, expected, text, "", "1"};
        size_t lens[7];
        for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
        (void)!rclient_eval(p->broker, &pscript_canary_cas, rclient_noop, NULL, 7, argv, lens);
    }
    free(text);
    json_decref(next);
}

static void judge(canary *c)
{
    const char *win = json_string_value(json_object_get(c->state, "window"));
    if (!win || c->judging) return;
    rbatch *b = rbatch_new(on_window, c);
    if (!b) return;
    const char *base = json_string_value(json_object_get(c->state, "baseline_window"));
    char kn[160], kl[160], kb[160];
    snprintf(kn, sizeof(kn), CANARY_WINDOW_PREFIX "%.64s:new", win);
    snprintf(kl, sizeof(kl), CANARY_WINDOW_PREFIX "%.64s:legacy", win);
    snprintf(kb, sizeof(kb), CANARY_WINDOW_PREFIX "%.64s:legacy", base ? base : "none");
    const char *an[] = {"HGETALL", kn}, *al[] = {"HGETALL", kl}, *ab[] = {"HGETALL", kb};
    size_t ln[] = {7, strlen(kn)}, ll[] = {7, strlen(kl)}, lb[] = {7, strlen(kb)};
    c->judging = true;
    if (rbatch_add(b, c->p->broker, 2, an, ln) == 0 && rbatch_add(b, c->p->broker, 2, al, ll) == 1)
        (void)rbatch_add(b, c->p->broker, 2, ab, lb);
    rbatch_run(b);
}

static void on_lock(struct redisReply *reply, const char *err, void *arg)
{
    canary *c = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1 && c->timer && c->state &&
        is(c->state, "running"))
        judge(c);
}

/* A state read from Redis, unless it is older than the one in force here
 * (this proxy's own write is applied before the reply to it is sent). */
static void take_state(canary *c, struct redisReply *reply)
{
    if (!reply || (reply->type != REDIS_REPLY_NIL && reply->type != REDIS_REPLY_STRING)) return;
    json_t *s = reply->type == REDIS_REPLY_STRING ? json_loadb(reply->str, reply->len, 0, NULL) : NULL;
    if (reply->type == REDIS_REPLY_STRING && !json_is_object(s)) {
        json_decref(s);
        return;
    }
    long long v = s ? (long long)json_integer_value(json_object_get(s, "version")) : 0;
    if (s && v < c->version) {
        json_decref(s);
        return;
    }
    json_decref(c->state);
    c->state = s;
    c->version = v;
    set_step_gauge(c);
}

static void on_state(struct redisReply *reply, const char *err, void *arg)
{
    canary *c = arg;
    (void)err;
    take_state(c, reply);
    json_t *s = c->state;
    if (s && is(s, "running") && c->timer) {
        const char *argv[] = {"1", CANARY_LOCK, c->owner, LEASE_MS};
        size_t lens[4];
        for (int i = 0; i < 4; i++) lens[i] = strlen(argv[i]);
        (void)!rclient_eval(c->p->broker, &pscript_lease, on_lock, c, 4, argv, lens);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    canary *c = arg;
    static const char *argv[] = {"GET", CANARY_KEY};
    static const size_t lens[] = {3, sizeof(CANARY_KEY) - 1};
    (void)!rclient_command(c->p->broker, on_state, c, 2, argv, lens);
}

canary *canary_new(proxy *p, char err[256])
{
    canary *c = calloc(1, sizeof(*c));
    if (!c || !(c->timer = event_new(p->base, -1, EV_PERSIST, on_tick, c))) {
        free(c);
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    c->p = p;
    util_uuid4(c->owner);
    struct timeval every = {TICK_MS / 1000, (TICK_MS % 1000) * 1000};
    event_add(c->timer, &every);
    return c;
}

void canary_stop(canary *c)
{
    if (c && c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
}

void canary_free(canary *c)
{
    if (!c) return;
    canary_stop(c);
    json_decref(c->state);
    free(c);
}

/* ---------- the admin API ---------- */

static json_t *iso_or_null(json_t *t)
{
    char buf[32];
    if (!json_is_number(t)) return json_null();
    util_iso8601(json_number_value(t), buf);
    return json_string(buf);
}

json_t *canary_view(canary *c)
{
    proxy *p = c->p;
    json_t *s = c->state;
    json_t *steps = json_array();
    for (int i = 0; i < p->cfg.rollout_nsteps; i++) json_array_append_new(steps, json_real(p->cfg.rollout_steps[i]));
    long long step = json_integer_value(json_object_get(s, "step"));
    bool live = s && (is(s, "running") || is(s, "paused") || is(s, "rolled_back"));
    json_t *gates = json_pack("{s:f, s:I, s:f}", "alpha", p->cfg.gate_alpha, "min_samples",
                              (json_int_t)p->cfg.gate_min_samples, "latency_quantile", p->cfg.gate_latency_quantile);
    for (int i = 0; i < GATE_COUNT; i++)
        json_object_set_new(gates, gate_names[i], json_pack("{s:f, s:f}", "margin", p->cfg.gate_margin[i],
                                                            "pass_margin", p->cfg.gate_pass_margin[i]));
    json_t *o = json_pack("{s:s, s:I, s:O?, s:o, s:f, s:o, s:O?, s:O?, s:o, s:O?, s:I, s:o, s:s, s:I}",
                          "status", status_of(s), "step", (json_int_t)(live ? step + 1 : 0), "steps",
                          json_object_get(s, "steps"), "configured_steps", steps, "percentage", p->route.percentage,
                          "step_started_at", iso_or_null(json_object_get(s, "step_started_at")), "last_check",
                          json_object_get(s, "last_check"), "reason", json_object_get(s, "reason"), "updated_at",
                          iso_or_null(json_object_get(s, "updated_at")), "updated_by", json_object_get(s, "updated_by"),
                          "interval_s", (json_int_t)p->cfg.rollout_step_interval_s, "gates", gates, "rollback_to",
                          p->cfg.rollout_rollback_to, "version", (json_int_t)c->version);
    return o;
}

static void refuse(preq *r, int status, const char *code, const char *msg)
{
    px_hold_in_flight(r, NOT_WAITING);
    px_finish_error(r, status, code, msg, 0);
}

static void act(proxy *p, preq *r, const char *action, const char *by, int attempt)
{
    canary *c = p->canary;
    json_t *s = c->state;
    char reason[600];
    json_t *next = NULL, *patch = NULL;
    if (strcmp(action, "start") == 0) {
        if (p->cfg.rollout_nsteps == 0) {
            refuse(r, 409, "no_steps", "set ROLLOUT_STEPS (e.g. 0.1,0.25,0.5,0.9,1.0) to run a canary");
            return;
        }
        if (s && (is(s, "running") || is(s, "paused"))) {
            refuse(r, 409, "already_running", "a canary is already running or paused; resume or abort it first");
            return;
        }
        if (p->route.force_legacy) {
            refuse(r, 409, "kill_switch_on", "the kill switch (force_legacy) is on; lift it before starting a canary");
            return;
        }
        next = json_object();
        json_t *steps = json_array();
        for (int i = 0; i < p->cfg.rollout_nsteps; i++) json_array_append_new(steps, json_real(p->cfg.rollout_steps[i]));
        json_object_set_new(next, "steps", steps);
        json_object_set_new(next, "status", json_string("running"));
        json_object_set_new(next, "step", json_integer(0));
        json_object_set_new(next, "last_good", json_real(0));
        json_object_set_new(next, "interval_s", json_integer(p->cfg.rollout_step_interval_s));
        new_window(next);
        patch = percentage_patch(p->cfg.rollout_steps[0]);
        snprintf(reason, sizeof(reason), "canary started: step 1/%d at %g", p->cfg.rollout_nsteps, p->cfg.rollout_steps[0]);
    } else if (strcmp(action, "pause") == 0) {
        if (!s || !is(s, "running")) {
            refuse(r, 409, "not_running", "only a running canary can be paused");
            return;
        }
        next = copy_state(c);
        json_object_set_new(next, "status", json_string("paused"));
        snprintf(reason, sizeof(reason), "canary paused at step %lld", json_integer_value(json_object_get(s, "step")) + 1);
    } else if (strcmp(action, "resume") == 0) {
        if (!s || !(is(s, "paused") || is(s, "rolled_back"))) {
            refuse(r, 409, "not_paused", "only a paused or rolled-back canary can be resumed");
            return;
        }
        long long step = json_integer_value(json_object_get(s, "step"));
        next = copy_state(c);
        json_object_set_new(next, "status", json_string("running"));
        new_window(next);
        patch = percentage_patch(step_fraction(s, step)); /* after a rollback: the step that failed, judged afresh */
        snprintf(reason, sizeof(reason), "canary resumed at step %lld (%g)", step + 1, step_fraction(s, step));
    } else { /* abort */
        if (!s || !(is(s, "running") || is(s, "paused") || is(s, "rolled_back"))) {
            refuse(r, 409, "not_running", "no canary to abort");
            return;
        }
        next = copy_state(c);
        json_object_set_new(next, "status", json_string("aborted"));
        patch = percentage_patch(0);
        snprintf(reason, sizeof(reason), "canary aborted; the new path is back to 0");
    }
    if (transition_to(c, next, patch, by, reason, r, action, attempt) != 0) {
        px_hold_in_flight(r, NOT_WAITING);
        px_finish_error(r, 503, "redis_unavailable", "Redis is unreachable; the canary state is kept there. Retry shortly", 1);
    }
}

void canary_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/admin/canary") == 0) {
        if (cmd != EVHTTP_REQ_GET) {
            px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "GET", "GET /admin/canary reads; POST /admin/canary/{start,pause,resume,abort} acts");
            return;
        }
        json_t *o = canary_view(p->canary);
        px_reply_json(p, req, RT_ADMIN, t0, 200, o);
        json_decref(o);
        return;
    }
    const char *action = path + strlen("/admin/canary/");
    static const char *const actions[] = {"start", "pause", "resume", "abort"};
    bool known = false;
    for (int i = 0; i < 4; i++) known |= strcmp(action, actions[i]) == 0;
    if (!known) {
        px_reply_error(p, req, RT_ADMIN, t0, 404, "not_found",
                       "canary actions: POST /admin/canary/start, /pause, /resume, /abort", 0);
        return;
    }
    if (cmd != EVHTTP_REQ_POST) {
        px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "POST", "canary actions take POST");
        return;
    }
    if (!px_admin_authorized(p, req, RT_ADMIN, t0)) return;
    if (px_refuse_overload(p, req, RT_ADMIN, t0)) return;
    preq *r = px_req_new(p, req, RT_ADMIN, t0);
    if (!r) {
        px_reply_oom(p, req, RT_ADMIN, t0, NULL);
        return;
    }
    /* decided on the state as Redis has it now, not on this proxy's copy
     * (up to a second old when another proxy changed it) */
    transition *t = calloc(1, sizeof(*t));
    static const char *argv[] = {"GET", CANARY_KEY};
    static const size_t lens[] = {3, sizeof(CANARY_KEY) - 1};
    px_hold_in_flight(r, PATH_NEW);
    if (!t) {
        px_hold_in_flight(r, NOT_WAITING);
        px_reply_oom(p, req, RT_ADMIN, t0, r);
        return;
    }
    t->c = p->canary;
    t->r = r;
    snprintf(t->action, sizeof(t->action), "%s", action);
    rollout_actor(p, req, t->by);
    if (rclient_command(p->broker, on_reread, t, 2, argv, lens) != 0) {
        free(t);
        px_hold_in_flight(r, NOT_WAITING);
        px_finish_error(r, 503, "redis_unavailable", "Redis is unreachable; the canary state is kept there. Retry shortly", 1);
    }
}
