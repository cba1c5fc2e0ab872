#include "canary.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "canary_evidence.h"
#include "gates.h"
#include "log.h"
#include "pserver.h"
#include "rbatch.h"
#include "rollout.h"
#include "util.h"
#include "pscripts.h"

#define TICK_MS 1000
#define LEASE_MS "3000"

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

void canary_record(canary *c, enum route_path path, ev_class cls, double seconds)
{
    if (c) canary_window_count(c->p->broker, c->state, path, cls, seconds);
}

void canary_submit_error(canary *c, enum route_path path)
{
    if (c) canary_window_submit_error(c->p->broker, c->state, path);
}

/* ---------- transitions ---------- */

typedef struct transition {
    canary *c;
    json_t *next;    /* the state written */
    json_t *patch;   /* rollout change after the state is written, or NULL */
    char reason[600];
    char by[128];    /* who: "canary", or the admin who acted */
    canary_done_fn done; /* an admin action waiting for the outcome, or NULL */
    void *done_arg;
    char action[16]; /* the admin action, retried on a version conflict */
    int attempt;
} transition;

#define ACT_ATTEMPTS 3 /* an admin action re-read and re-tried after a version conflict */

static void act(canary *c, canary_done_fn done, void *arg, const char *action, const char *by, int attempt);

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
    if (!t->done) return;
    t->done(status, code, status == 200 ? t->reason : msg, retry_after, t->done_arg);
    t->done = NULL;
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
        if (t->done && t->attempt + 1 < ACT_ATTEMPTS) {
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
    canary_done_fn done = t->done;
    t->done = NULL;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        done(503, "redis_unavailable", reply ? reply->str : err ? err : "Redis did not answer", 1, t->done_arg);
    } else {
        take_state(c, reply);
        act(c, done, t->done_arg, t->action, t->by, t->attempt);
    }
    free_transition(t);
}

/* Writes `next` (stolen) over the state of version c->version, then applies
 * `patch` (stolen, may be NULL) to the rollout.  -1 when not sent. */
static int transition_to(canary *c, json_t *next, json_t *patch, const char *by, const char *reason,
                         canary_done_fn done, void *done_arg, const char *action, int attempt)
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
        t->done = done;
        t->done_arg = done_arg;
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
    canary_read_window(rbatch_at(b, 0), &fresh, cls_new);
    canary_read_window(rbatch_at(b, 1), &legacy, cls_leg);
    canary_read_window(rbatch_at(b, 2), &baseline, cls_base);
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
    gate_ref ref = canary_ref_of(c->state), before = ref;
    gate_result g;
    gate_judge(&fresh, &legacy, has_base ? &baseline : NULL, &cfg, &ref, &g);
    bool own_legacy = ref.source == 0;
    for (int i = 0; i < GATE_COUNT; i++) count_check(c, i, g.g[i].verdict);
    json_t *check = canary_check_json(&g, &fresh, own_legacy || !has_base ? &legacy : &baseline, cls_new,
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
        (void)transition_to(c, next, percentage_patch(back), "canary", reason, NULL, NULL, NULL, 0);
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
            (void)transition_to(c, next, NULL, "canary", reason, NULL, NULL, NULL, 0);
        } else {
            double f = step_fraction(c->state, step + 1);
            util_snprintf(reason, sizeof(reason), "canary step %lld/%lld passed, now %g: %s", step + 1, nsteps, f, g.why);
            json_object_set_new(next, "step", json_integer(step + 1));
            new_window(next);
            (void)transition_to(c, next, percentage_patch(f), "canary", reason, NULL, NULL, NULL, 0);
        }
        return;
    }
    /* hold, or passing within the interval: the state shows the last check
     * (and keeps what the step fixed) */
    json_t *next = copy_state(c);
    json_object_set_new(next, "last_check", check);
    if (ref_moved) json_object_set_new(next, "ref", canary_ref_json(&ref));
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

/* ---------- what it shows, what an admin does ---------- */

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

/* An admin action decided on the state just read. */
static void act(canary *c, canary_done_fn done, void *arg, const char *action, const char *by, int attempt)
{
    proxy *p = c->p;
    json_t *s = c->state;
    char reason[600];
    json_t *next = NULL, *patch = NULL;
    if (strcmp(action, "start") == 0) {
        if (p->cfg.rollout_nsteps == 0) {
            done(409, "no_steps", "set ROLLOUT_STEPS (e.g. 0.1,0.25,0.5,0.9,1.0) to run a canary", 0, arg);
            return;
        }
        if (s && (is(s, "running") || is(s, "paused"))) {
            done(409, "already_running", "a canary is already running or paused; resume or abort it first", 0, arg);
            return;
        }
        if (p->route.force_legacy) {
            done(409, "kill_switch_on", "the kill switch (force_legacy) is on; lift it before starting a canary", 0, arg);
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
            done(409, "not_running", "only a running canary can be paused", 0, arg);
            return;
        }
        next = copy_state(c);
        json_object_set_new(next, "status", json_string("paused"));
        snprintf(reason, sizeof(reason), "canary paused at step %lld", json_integer_value(json_object_get(s, "step")) + 1);
    } else if (strcmp(action, "resume") == 0) {
        if (!s || !(is(s, "paused") || is(s, "rolled_back"))) {
            done(409, "not_paused", "only a paused or rolled-back canary can be resumed", 0, arg);
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
            done(409, "not_running", "no canary to abort", 0, arg);
            return;
        }
        next = copy_state(c);
        json_object_set_new(next, "status", json_string("aborted"));
        patch = percentage_patch(0);
        snprintf(reason, sizeof(reason), "canary aborted; the new path is back to 0");
    }
    if (transition_to(c, next, patch, by, reason, done, arg, action, attempt) != 0)
        done(503, "redis_unavailable", "Redis is unreachable; the canary state is kept there. Retry shortly", 1, arg);
}

int canary_act(canary *c, const char *action, const char *by, canary_done_fn done, void *arg)
{
    /* decided on the state as Redis has it now, not on this proxy's copy
     * (up to a second old when another proxy changed it) */
    static const char *argv[] = {"GET", CANARY_KEY};
    static const size_t lens[] = {3, sizeof(CANARY_KEY) - 1};
    transition *t = calloc(1, sizeof(*t));
    if (!t) return -1;
    t->c = c;
    t->done = done;
    t->done_arg = arg;
    snprintf(t->action, sizeof(t->action), "%s", action);
    util_snprintf(t->by, sizeof(t->by), "%s", by);
    if (rclient_command(c->p->broker, on_reread, t, 2, argv, lens) != 0) {
        free(t);
        return -1;
    }
    return 0;
}
