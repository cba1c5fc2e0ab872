#include "shadow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "admin_auth.h"
#include "celery.h"
#include "evstatus.h"
#include "list_api.h"
#include "log.h"
#include "pserver.h"
#include "util.h"
#include "pscripts.h"

#define SHADOW_PRIORITY 9



bool shadow_draw(const proxy *p)
{
    if (p->cfg.shadow_percentage <= 0) return false;
    if (p->cfg.shadow_percentage >= 1) return true;
    uint32_t r = 0;
    if (util_random(&r, sizeof(r)) != 0) return false;
    return (double)r / 4294967296.0 < p->cfg.shadow_percentage;
}

void shadow_mirror(proxy *p, enum route_path path, const submission *sub)
{
    if (path == PATH_LEGACY && shadow_draw(p)) shadow_start(p, sub);
}

void shadow_start(proxy *p, const submission *sub)
{
    char tid[SUB_MAX_EVAL_ID + 16], key[SUB_MAX_EVAL_ID + 32], qkey[256], now[32], ttl[24], err[256];
    if (strlen(sub->eval_id) + sizeof(SHADOW_TASK_PREFIX) - 1 > SUB_MAX_EVAL_ID) {
        /* shadow-<eval_id> must itself be a valid eval id */
        LOG_DEBUG("no shadow: the eval_id is too long to prefix", "eval_id", sub->eval_id);
        return;
    }
    snprintf(tid, sizeof(tid), SHADOW_TASK_PREFIX "%s", sub->eval_id);
    snprintf(key, sizeof(key), SHADOW_KEY_PREFIX "%s", sub->eval_id);
    size_t qlen = celery_queue_key(p->cfg.queue, SHADOW_PRIORITY, qkey, sizeof(qkey));
    size_t mlen = 0;
    char *msg = qlen ? producer_encode_task(p->prod, sub, tid, tid, SHADOW_PRIORITY, &mlen, err) : NULL;
    if (!msg || !rclient_is_up(p->broker)) {
        LOG_DEBUG("shadow not started", "eval_id", sub->eval_id, "error", msg ? "redis not connected" : err);
        free(msg);
        return;
    }
    snprintf(now, sizeof(now), "%.6f", util_now());
    snprintf(ttl, sizeof(ttl), "%lld", p->cfg.route_record_ttl_s);
    const char *argv[] = {"3", key, qkey, INFLIGHT_SHADOW, msg, sub->eval_id, now, ttl};
    size_t lens[8];
    for (int i = 0; i < 8; i++) lens[i] = strlen(argv[i]);
    lens[2] = qlen;
    lens[4] = mlen;
    (void)!rclient_eval(p->broker, &pscript_shadow_start, rclient_noop, NULL, 8, argv, lens);
    free(msg);
}

/* ---------- comparing ---------- */

/* Output with trailing whitespace cut from every line and the end. */
static char *normalise(const char *s)
{
    size_t n = s ? strlen(s) : 0, o = 0, keep = 0;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '\r') continue;
        if (ch == '\n') {
            o = keep; /* drop the blanks before the newline */
            out[o++] = '\n';
            keep = o;
            continue;
        }
        out[o++] = ch;
        if (ch != ' ' && ch != '\t') keep = o;
    }
    o = keep;
    while (o > 0 && out[o - 1] == '\n') o--;
    out[o] = '\0';
    return out;
}

static bool has_verdict(json_t *side)
{
    const char *st = json_string_value(json_object_get(side, "status"));
    return st && (strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "timeout") == 0) &&
           (json_is_integer(json_object_get(side, "exit_code")) || json_is_string(json_object_get(side, "output")));
}

const char *shadow_compare(json_t *legacy, json_t *fresh, json_t *differs)
{
    if (!has_verdict(legacy) || !has_verdict(fresh)) return "error";
    bool same = true;
    if (!json_equal(json_object_get(legacy, "status"), json_object_get(fresh, "status"))) {
        same = false;
        if (differs) json_array_append_new(differs, json_string("status"));
    }
    json_t *el = json_object_get(legacy, "exit_code"), *en = json_object_get(fresh, "exit_code");
    if (!(el ? en && json_equal(el, en) : !en || json_is_null(en))) {
        same = false;
        if (differs) json_array_append_new(differs, json_string("exit_code"));
    }
    char *a = normalise(json_string_value(json_object_get(legacy, "output")));
    char *b = normalise(json_string_value(json_object_get(fresh, "output")));
    if (!a || !b) {
        free(a);
        free(b);
        return "error";
    }
    if (strcmp(a, b) != 0) {
        same = false;
        if (differs) json_array_append_new(differs, json_string("output"));
    }
    free(a);
    free(b);
    return same ? "match" : "mismatch";
}

static void count(proxy *p, const char *result)
{
    size_t k = strcmp(result, "match") == 0 ? 0 : strcmp(result, "mismatch") == 0 ? 1 : 2;
    metrics_add(p->m.shadow_comparisons, metrics_at(p->m.shadow_comparisons, &k), 1);
}

typedef struct report_call {
    proxy *p;
    char eval_id[SUB_MAX_EVAL_ID + 1];
} report_call;

static void on_reported(struct redisReply *reply, const char *err, void *arg)
{
    report_call *rc = arg;
    proxy *p = rc->p;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING && reply->element[1]->type == REDIS_REPLY_STRING) {
        json_t *l = json_loadb(reply->element[0]->str, reply->element[0]->len, 0, NULL);
        json_t *n = json_loadb(reply->element[1]->str, reply->element[1]->len, 0, NULL);
        json_t *differs = json_array();
        const char *result = shadow_compare(l, n, differs);
        count(p, result);
        LOG_INFO("shadow compared", "eval_id", rc->eval_id, "result", result);
        if (strcmp(result, "mismatch") == 0) {
            json_t *m = json_pack("{s:s, s:f, s:O, s:O, s:O}", "eval_id", rc->eval_id, "at", util_now(), "differs",
                                  differs, "legacy", l, "new", n);
            char *text = m ? json_dumps(m, JSON_COMPACT) : NULL;
            if (text) {
                char stop[24];
                snprintf(stop, sizeof(stop), "%lld", p->cfg.shadow_mismatches_kept - 1);
                const char *a1[] = {"LPUSH", SHADOW_MISMATCHES, text}, *a2[] = {"LTRIM", SHADOW_MISMATCHES, "0", stop};
                size_t l1[] = {5, sizeof(SHADOW_MISMATCHES) - 1, strlen(text)},
                       l2[] = {5, sizeof(SHADOW_MISMATCHES) - 1, 1, strlen(stop)};
                rclient_send(p->broker, 3, a1, l1);
                rclient_send(p->broker, 4, a2, l2);
            }
            free(text);
            json_decref(m);
        }
        json_decref(differs);
        json_decref(l);
        json_decref(n);
    }
    free(rc);
}

static void report(proxy *p, const char *eval_id, const char *side, json_t *verdict)
{
    char key[SUB_MAX_EVAL_ID + 32];
    char *text = verdict ? json_dumps(verdict, JSON_COMPACT) : NULL;
    report_call *rc = text ? malloc(sizeof(*rc)) : NULL;
    if (rc) {
        rc->p = p;
        snprintf(rc->eval_id, sizeof(rc->eval_id), "%s", eval_id);
        snprintf(key, sizeof(key), SHADOW_KEY_PREFIX "%s", eval_id);
        const char *argv[] = {"1", key, side, text};
        size_t lens[4];
        for (int i = 0; i < 4; i++) lens[i] = strlen(argv[i]);
        if (rclient_eval(p->broker, &pscript_shadow_report, on_reported, rc, 4, argv, lens) != 0) free(rc);
    }
    free(text);
}

void shadow_report_legacy(proxy *p, const char *eval_id, json_t *task)
{
    const char *st = bk_normalized_status(task);
    json_t *v = json_pack("{s:s?, s:O?, s:O?}", "status", st, "output", json_object_get(task, "output"), "exit_code",
                          json_object_get(task, "exit_code"));
    report(p, eval_id, "legacy", v);
    json_decref(v);
}

void shadow_report_new(proxy *p, const char *eval_id, json_t *rec)
{
    const char *st = evstatus_from_celery(rec);
    json_t *res = json_object_get(rec, "result");
    bool ok = json_is_object(res) && strcmp(json_string_value(json_object_get(rec, "status")) ?: "", "SUCCESS") == 0;
    json_t *v = json_pack("{s:s?, s:O?, s:O?}", "status", st, "output", ok ? json_object_get(res, "output") : NULL,
                          "exit_code", ok ? json_object_get(res, "exit_code") : NULL);
    report(p, eval_id, "new", v);
    json_decref(v);
}

/* ---------- GET /admin/shadow/mismatches ---------- */

static void add_counts(proxy *p, json_t *o)
{
    size_t k[3] = {0, 1, 2};
    metrics_family *f = p->m.shadow_comparisons;
    json_object_set_new(o, "comparisons_here",
                        json_pack("{s:f, s:f, s:f}", "match", metrics_get(f, metrics_at(f, &k[0])), "mismatch",
                                  metrics_get(f, metrics_at(f, &k[1])), "error", metrics_get(f, metrics_at(f, &k[2]))));
    json_object_set_new(o, "shadow_percentage", json_real(p->cfg.shadow_percentage));
}

/* What each run printed is what the program made of its input, secrets and
 * all: shown only with READ_TOKEN or ADMIN_TOKEN; which fields differ, the
 * statuses and exit codes stay public. */
static void redact_outputs(json_t *m)
{
    static const char *const sides[] = {"legacy", "new"};
    bool gone = false;
    for (int i = 0; i < 2; i++) {
        json_t *side = json_object_get(m, sides[i]);
        if (json_is_object(side) && json_object_get(side, "output")) {
            json_object_del(side, "output");
            gone = true;
        }
    }
    if (gone) json_object_set_new(m, "output_redacted", json_true());
}

static const list_api mismatches_api = {SHADOW_MISMATCHES, "mismatches", 20, 10000, NULL, add_counts,
                                        redact_outputs, PX_REDACTED_NOTE "each run's output"};

void shadow_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    (void)path;
    list_api_get(p, req, t0, &mismatches_api);
}
