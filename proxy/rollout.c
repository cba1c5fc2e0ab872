#include "rollout.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "admin_auth.h"
#include "list_api.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"
#include "pscripts.h"

#define POLL_MS 1000
#define REASON_MAX 500
#define ACTOR_HEADER "X-Turnout-Actor"
#define ACTOR_MAX 64

struct rollout {
    proxy *p;
    rclient *sub;        /* SUBSCRIBE turnout:rollout:changed */
    struct event *timer; /* re-read every second */
    json_t *shared;      /* the shared state in force, NULL: none (environment) */
    long long version;
};


/* ---------- the state in force ---------- */

/* A shared state is used only when every field is well-formed. */
static bool valid_state(json_t *s)
{
    json_t *pct = json_object_get(s, "percentage");
    const char *mode = json_string_value(json_object_get(s, "mode"));
    return json_is_object(s) && json_is_boolean(json_object_get(s, "enabled")) && json_is_number(pct) &&
           json_number_value(pct) >= 0 && json_number_value(pct) <= 1 &&
           json_is_boolean(json_object_get(s, "force_legacy")) && mode &&
           (strcmp(mode, "sticky") == 0 || strcmp(mode, "random") == 0) &&
           json_is_integer(json_object_get(s, "version"));
}

static json_t *env_state(const proxy *p)
{
    return json_pack("{s:b, s:f, s:b, s:s}", "enabled", p->cfg.celery_enabled, "percentage",
                     p->cfg.celery_percentage, "force_legacy", p->cfg.force_legacy, "mode", p->cfg.routing_mode);
}

void rollout_apply(rollout *ro)
{
    proxy *p = ro->p;
    json_t *s = ro->shared;
    bool enabled = s ? json_is_true(json_object_get(s, "enabled")) : p->cfg.celery_enabled;
    double pct = s ? json_number_value(json_object_get(s, "percentage")) : p->cfg.celery_percentage;
    bool force = p->cfg.force_legacy || (s && json_is_true(json_object_get(s, "force_legacy")));
    const char *mode = s ? json_string_value(json_object_get(s, "mode")) : p->cfg.routing_mode;
    p->route.enabled = enabled;
    p->route.percentage = pct;
    p->route.force_legacy = force;
    p->route.sticky = strcmp(mode, "sticky") == 0;
    p->route.salt = p->cfg.rollout_salt;
    metrics_set(p->m.rollout_percentage, 0, pct);
    metrics_set(p->m.celery_enabled, 0, enabled);
    metrics_set(p->m.force_legacy, 0, force);
}

long long rollout_version(const rollout *ro) { return ro ? ro->version : 0; }

/* Takes `s` (a parsed shared state, or NULL for none). */
static void take(rollout *ro, json_t *s, const char *how)
{
    if (s && !valid_state(s)) {
        LOG_WARN("ignoring a malformed shared rollout state; fix or delete the key", "key", ROLLOUT_KEY, "via", how);
        json_decref(s);
        return;
    }
    long long v = s ? (long long)json_integer_value(json_object_get(s, "version")) : 0;
    if (v == ro->version && (s != NULL) == (ro->shared != NULL)) {
        json_decref(s);
        return;
    }
    json_decref(ro->shared);
    ro->shared = s;
    ro->version = v;
    rollout_apply(ro);
    char pct[32], ver[24];
    snprintf(pct, sizeof(pct), "%g", ro->p->route.percentage);
    snprintf(ver, sizeof(ver), "%lld", v);
    LOG_INFO("rollout state applied", "source", s ? "redis" : "env", "version", ver, "percentage", pct, "enabled",
             ro->p->route.enabled ? "true" : "false", "force_legacy", ro->p->route.force_legacy ? "true" : "false",
             "via", how);
}

static void on_notice(const char *channel, const char *payload, size_t len, void *arg)
{
    rollout *ro = arg;
    (void)channel;
    json_t *s = json_loadb(payload, len, 0, NULL);
    /* an older notice arriving late never undoes a newer state */
    if (s && json_integer_value(json_object_get(s, "version")) < ro->version) {
        json_decref(s);
        return;
    }
    take(ro, s, "notice");
}

static void on_read(struct redisReply *reply, const char *err, void *arg)
{
    rollout *ro = arg;
    (void)err;
    if (!reply) return;
    if (reply->type == REDIS_REPLY_NIL) take(ro, NULL, "read");
    else if (reply->type == REDIS_REPLY_STRING) take(ro, json_loadb(reply->str, reply->len, 0, NULL), "read");
}

static void read_now(rollout *ro)
{
    static const char *argv[] = {"GET", ROLLOUT_KEY};
    static const size_t lens[] = {3, sizeof(ROLLOUT_KEY) - 1};
    (void)!rclient_command(ro->p->broker, on_read, ro, 2, argv, lens);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    read_now(arg);
}

static void on_sub_state(rclient *rc, bool up, void *ud)
{
    (void)rc;
    if (up) read_now(ud); /* notices were lost while it was down */
}

rollout *rollout_new(proxy *p, char err[256])
{
    rollout *ro = calloc(1, sizeof(*ro));
    if (!ro) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    ro->p = p;
    rclient_opts o = {.command_timeout_ms = p->cfg.redis_timeout_ms,
                      .connect_timeout_ms = p->cfg.redis_timeout_ms,
                      .name = "rollout-sub",
                      .on_state = on_sub_state,
                      .ud = ro};
    char rerr[256];
    ro->sub = rclient_new(p->base, p->cfg.broker_url, &o, rerr);
    if (!ro->sub || rclient_subscribe(ro->sub, ROLLOUT_CHANNEL, on_notice, ro) != 0 ||
        !(ro->timer = event_new(p->base, -1, EV_PERSIST, on_tick, ro))) {
        snprintf(err, 256, "rollout: %.*s", UTF8_CUT(ro->sub ? "out of memory" : rerr, 200));
        rollout_free(ro);
        return NULL;
    }
    struct timeval every = {POLL_MS / 1000, (POLL_MS % 1000) * 1000};
    event_add(ro->timer, &every);
    rollout_apply(ro);
    return ro;
}

void rollout_free(rollout *ro)
{
    if (!ro) return;
    if (ro->timer) event_free(ro->timer);
    rclient_free(ro->sub);
    json_decref(ro->shared);
    free(ro);
}

/* ---------- the view ---------- */

static json_t *iso_or_null(json_t *t)
{
    char buf[32];
    if (!json_is_number(t)) return json_null();
    util_iso8601(json_number_value(t), buf);
    return json_string(buf);
}

static json_t *field_or_null(json_t *s, const char *key)
{
    json_t *v = json_object_get(s, key);
    return v ? json_incref(v) : json_null();
}

json_t *rollout_view(const rollout *ro)
{
    const proxy *p = ro->p;
    json_t *s = ro->shared;
    bool shared_force = s && json_is_true(json_object_get(s, "force_legacy"));
    const char *force_src = p->cfg.force_legacy ? "env" : shared_force ? "redis" : NULL;
    json_t *o = json_pack("{s:b, s:f, s:b, s:s, s:s, s:o, s:I, s:o, s:o, s:o, s:o, s:o}", "enabled", p->route.enabled,
                          "percentage", p->route.percentage, "force_legacy", p->route.force_legacy, "mode",
                          p->route.sticky ? "sticky" : "random", "source", s ? "redis" : "env",
                          "force_legacy_source", force_src ? json_string(force_src) : json_null(), "version",
                          (json_int_t)ro->version, "updated_at", iso_or_null(json_object_get(s, "updated_at")),
                          "updated_by", field_or_null(s, "updated_by"), "reason", field_or_null(s, "reason"), "shared",
                          s ? json_deep_copy(s) : json_null(), "env", env_state(p));
    return o;
}

/* ---------- writes ---------- */

typedef struct update_call {
    rollout *ro;
    rollout_cb cb;
    void *arg;
} update_call;

static void on_updated(struct redisReply *reply, const char *err, void *arg)
{
    update_call *c = arg;
    if (!reply) {
        c->cb(NULL, err ? err : "redis error", c->arg);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        c->cb(NULL, reply->str, c->arg);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
               reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[1]->type == REDIS_REPLY_STRING) {
        if (reply->element[0]->integer == 1) {
            /* in force here at once; the others hear the notice */
            take(c->ro, json_loadb(reply->element[1]->str, reply->element[1]->len, 0, NULL), "write");
            c->cb(reply->element[1]->str, NULL, c->arg);
        } else {
            c->cb(NULL, NULL, c->arg);
        }
    } else {
        c->cb(NULL, "unexpected reply from the rollout script", c->arg);
    }
    free(c);
}

int rollout_update(rollout *ro, json_t *patch, const char *by, const char *reason, long long expected,
                   rollout_cb cb, void *arg)
{
    proxy *p = ro->p;
    json_t *start = env_state(p);
    if (start) json_object_set_new(start, "version", json_integer(0));
    char *start_text = start ? json_dumps(start, JSON_COMPACT) : NULL;
    char *patch_text = json_dumps(patch, JSON_COMPACT);
    update_call *c = malloc(sizeof(*c));
    int rc = -1;
    if (start_text && patch_text && c) {
        char now[32], hist[16], exp[24] = "";
        snprintf(now, sizeof(now), "%.6f", util_now());
        snprintf(hist, sizeof(hist), "%d", ROLLOUT_HISTORY_MAX);
        if (expected >= 0) snprintf(exp, sizeof(exp), "%lld", expected);
        *c = (update_call){ro, cb, arg};
        const char *argv[] = {"2", ROLLOUT_KEY, ROLLOUT_HISTORY, start_text, patch_text,
                              now, by, reason ? reason : "", ROLLOUT_CHANNEL, hist, exp};
        size_t lens[11];
        for (int i = 0; i < 11; i++) lens[i] = strlen(argv[i]);
        rc = rclient_eval(p->broker, &pscript_rollout_update, on_updated, c, 11, argv, lens);
    }
    if (rc != 0) free(c);
    json_decref(start);
    free(start_text);
    free(patch_text);
    return rc;
}

/* ---------- the admin API ---------- */

static bool valid_actor(const char *a)
{
    size_t n = strlen(a);
    if (n < 1 || n > ACTOR_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-", a[i])) return false;
    return true;
}

void rollout_actor(proxy *p, struct evhttp_request *req, char out[128])
{
    const char *actor = evhttp_find_header(evhttp_request_get_input_headers(req), ACTOR_HEADER);
    if (actor && *actor) snprintf(out, 128, "%s (%s)", p->cfg.admin_token_label, actor);
    else snprintf(out, 128, "%s", p->cfg.admin_token_label);
}

static void reply_state(proxy *p, struct evhttp_request *req, double t0, int status)
{
    json_t *o = rollout_view(p->rollout);
    px_reply_json(p, req, RT_ADMIN, t0, status, o);
    json_decref(o);
}

static void on_put_done(const char *state, const char *err, void *arg)
{
    preq *r = arg;
    proxy *p = r->p;
    px_hold_in_flight(r, NOT_WAITING);
    if (!state) {
        char msg[320];
        snprintf(msg, sizeof(msg), "the rollout state could not be written (%.*s); retry after the Retry-After delay",
                 UTF8_CUT(err ? err : "it changed meanwhile", 200));
        px_count_upstream_error(p, PATH_NEW, err && strcmp(err, "timeout") == 0 ? UP_TIMEOUT : UP_REDIS_ERROR);
        px_finish_error(r, 503, "redis_unavailable", msg, 1);
        return;
    }
    json_t *o = rollout_view(p->rollout);
    px_finish_json(r, 200, o);
    json_decref(o);
}

static bool bad_field(proxy *p, struct evhttp_request *req, double t0, const char *msg)
{
    px_count_reject(p, RJ_INVALID_FIELD);
    px_reply_error(p, req, RT_ADMIN, t0, 422, "invalid_field", msg, 0);
    return false;
}

/* The change a PUT body asks for; NULL when it answered an error. */
static json_t *parse_put(proxy *p, struct evhttp_request *req, double t0, char reason[REASON_MAX + 1])
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    json_error_t jerr;
    char msg[320];
    json_t *doc = len ? json_loadb((const char *)evbuffer_pullup(body, -1), len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!json_is_object(doc)) {
        json_decref(doc);
        px_count_reject(p, RJ_BAD_JSON);
        px_reply_error(p, req, RT_ADMIN, t0, 400, "invalid_json",
                       "send a JSON object like {\"percentage\": 0.25, \"reason\": \"step 2\"} (fields: enabled, percentage, force_legacy, mode, reason)",
                       0);
        return NULL;
    }
    json_t *patch = json_object();
    const char *key;
    json_t *v;
    bool ok = patch != NULL;
    json_object_foreach(doc, key, v)
    {
        if (!ok) break;
        if (strcmp(key, "enabled") == 0 || strcmp(key, "force_legacy") == 0) {
            if (!json_is_boolean(v)) {
                snprintf(msg, sizeof(msg), "field '%s' must be true or false", key);
                ok = bad_field(p, req, t0, msg);
            } else {
                json_object_set(patch, key, v);
            }
        } else if (strcmp(key, "percentage") == 0) {
            double f = json_is_number(v) ? json_number_value(v) : -1;
            if (!json_is_number(v) || !(f >= 0 && f <= 1) || isnan(f))
                ok = bad_field(p, req, t0, "field 'percentage' must be a number between 0 and 1 (a fraction, 0.5 = 50%)");
            else json_object_set_new(patch, key, json_real(f));
        } else if (strcmp(key, "mode") == 0) {
            const char *m = json_string_value(v);
            if (!m || (strcmp(m, "sticky") != 0 && strcmp(m, "random") != 0))
                ok = bad_field(p, req, t0, "field 'mode' must be \"sticky\" or \"random\"");
            else json_object_set(patch, key, v);
        } else if (strcmp(key, "reason") == 0) {
            if (!json_is_string(v) || json_string_length(v) > REASON_MAX) {
                snprintf(msg, sizeof(msg), "field 'reason' must be a string of at most %d characters", REASON_MAX);
                ok = bad_field(p, req, t0, msg);
            }
        } else {
            snprintf(msg, sizeof(msg),
                     "field '%.*s' is not part of the rollout state; send enabled, percentage, force_legacy, mode and/or reason",
                     UTF8_CUT(key, 60));
            ok = bad_field(p, req, t0, msg);
        }
    }
    if (ok && json_object_size(patch) == 0)
        ok = bad_field(p, req, t0, "nothing to change: send at least one of enabled, percentage, force_legacy, mode");
    if (!ok) {
        json_decref(patch);
        json_decref(doc);
        return NULL;
    }
    json_t *rs = json_object_get(doc, "reason");
    snprintf(reason, REASON_MAX + 1, "%s", json_is_string(rs) ? json_string_value(rs) : "");
    json_decref(doc);
    return patch;
}

static void handle_put(proxy *p, struct evhttp_request *req, double t0)
{
    if (!px_admin_authorized(p, req, RT_ADMIN, t0)) return;
    const char *actor = evhttp_find_header(evhttp_request_get_input_headers(req), ACTOR_HEADER);
    if (actor && !valid_actor(actor)) {
        px_count_reject(p, RJ_INVALID_FIELD);
        px_reply_error(p, req, RT_ADMIN, t0, 422, "invalid_header",
                       "header " ACTOR_HEADER " must be 1 to 64 characters of [A-Za-z0-9_.:@-] (who made the change)", 0);
        return;
    }
    if (px_refuse_overload(p, req, RT_ADMIN, t0)) return;
    char why[REASON_MAX + 1];
    json_t *patch = parse_put(p, req, t0, why);
    if (!patch) return;
    char by[128];
    rollout_actor(p, req, by);
    preq *r = px_req_new(p, req, RT_ADMIN, t0);
    if (!r) {
        px_reply_oom(p, req, RT_ADMIN, t0, NULL);
    } else {
        px_hold_in_flight(r, PATH_NEW);
        if (rollout_update(p->rollout, patch, by, why, -1, on_put_done, r) != 0) {
            px_hold_in_flight(r, NOT_WAITING);
            px_count_upstream_error(p, PATH_NEW, UP_REDIS_DOWN);
            px_finish_error(r, 503, "redis_unavailable",
                            "Redis is unreachable, so the shared rollout state cannot change; retry after the Retry-After delay (the kill switch FORCE_LEGACY_QUEUE in a proxy's environment works without Redis)",
                            1);
        } else {
            char pct[32];
            json_t *pv = json_object_get(patch, "percentage");
            snprintf(pct, sizeof(pct), "%g", pv ? json_number_value(pv) : -1);
            LOG_INFO("rollout change requested", "by", by, "reason", why, "percentage", pv ? pct : "unchanged");
        }
    }
    json_decref(patch);
}

/* GET /admin/rollout/history?limit=N */
static void add_iso(proxy *p, json_t *entry)
{
    (void)p;
    char at[32];
    json_t *t = json_object_get(entry, "at");
    if (!json_is_number(t)) return;
    util_iso8601(json_number_value(t), at);
    json_object_set_new(entry, "at_iso", json_string(at));
}

static const list_api history_api = {ROLLOUT_HISTORY, "entries", 50, ROLLOUT_HISTORY_MAX, add_iso, NULL, NULL, NULL};

void rollout_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/admin/rollout/history") == 0) {
        list_api_get(p, req, t0, &history_api);
        return;
    }
    if (cmd == EVHTTP_REQ_GET) {
        reply_state(p, req, t0, 200);
    } else if (cmd == EVHTTP_REQ_PUT) {
        handle_put(p, req, t0);
    } else {
        px_reply_method_not_allowed(p, req, RT_ADMIN, t0, "GET, PUT", "GET /admin/rollout reads the state; PUT changes it (admin token)");
    }
}
