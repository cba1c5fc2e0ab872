/* canary_evidence — what the canary judges by: the step windows every
 * proxy counts into (turnout:canary:w:<window>:<path>, a hash of n, sys,
 * sub, v, pf, s:<class>, b<latency bucket>), read back as gate_stats, and
 * the verdict explained as JSON (the state's last_check). */
#include "canary_evidence.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "util.h"

#define WINDOW_TTL_S "86400"


static bool window_key(json_t *state, enum route_path path, char key[160])
{
    const char *status = json_string_value(json_object_get(state, "status"));
    if (!status || strcmp(status, "running") != 0 || path > PATH_NEW) return false;
    const char *win = json_string_value(json_object_get(state, "window"));
    if (!win) return false;
    snprintf(key, 160, CANARY_WINDOW_PREFIX "%.64s:%s", win, route_path_names[path]);
    return true;
}

static void bump(rclient *rc, const char *key, const char *field)
{
    const char *argv[] = {"HINCRBY", key, field, "1"};
    size_t lens[] = {7, strlen(key), strlen(field), 1};
    rclient_send(rc, 4, argv, lens);
}

static void keep(rclient *rc, const char *key)
{
    const char *argv[] = {"EXPIRE", key, WINDOW_TTL_S};
    size_t lens[] = {6, strlen(key), sizeof(WINDOW_TTL_S) - 1};
    rclient_send(rc, 3, argv, lens);
}

void canary_window_count(rclient *c, json_t *state, enum route_path path, ev_class cls, double seconds)
{
    char key[160], field[32];
    if (!window_key(state, path, key)) return;
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

void canary_window_submit_error(rclient *c, json_t *state, enum route_path path)
{
    char key[160];
    if (!window_key(state, path, key)) return;
    bump(c, key, "sub");
    bump(c, key, "s:submit");
    keep(c, key);
}

/* A window, and its system errors by class (for the explanation). */
void canary_read_window(const rbatch_reply *r, gate_stats *s, long long classes[EV_SYS_COUNT])
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
gate_ref canary_ref_of(json_t *s)
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

json_t *canary_ref_json(const gate_ref *r)
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
json_t *canary_check_json(const gate_result *g, const gate_stats *fresh, const gate_stats *against,
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

