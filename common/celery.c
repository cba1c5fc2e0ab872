#include "celery.h"

#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "util.h"

const int celery_priority_steps[CELERY_NSTEPS] = {0, 3, 6, 9};

/* Celery truncates argsrepr/kwargsrepr to this many characters. */
#define CELERY_REPR_MAX 1024

int celery_priority_step(int priority)
{
    if (priority < 0) priority = 0;
    if (priority > 9) priority = 9;
    int step = celery_priority_steps[0];
    for (int i = 0; i < CELERY_NSTEPS; i++)
        if (celery_priority_steps[i] <= priority) step = celery_priority_steps[i];
    return step;
}

size_t celery_queue_key(const char *queue, int priority, char *buf, size_t cap)
{
    size_t n = strlen(queue);
    int step = celery_priority_step(priority);
    size_t need = n + (step ? CELERY_SEP_LEN + 1 : 0);
    if (need + 1 > cap) return 0;
    memcpy(buf, queue, n);
    if (step) {
        memcpy(buf + n, CELERY_SEP, CELERY_SEP_LEN);
        buf[n + CELERY_SEP_LEN] = (char)('0' + step);
    }
    buf[need] = '\0';
    return need;
}

typedef struct sbuf {
    char *p;
    size_t len, cap, max;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Python's str.__repr__: single quotes unless the text has ' and no ". */
static void repr_str(sbuf *b, const char *s, size_t n)
{
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    sb_put(b, &q, 1);
    for (size_t i = 0; i < n && b->len <= b->max; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == (unsigned char)q || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; sb_put(b, esc, 2); }
        else if (c == '\n') sb_put(b, "\\n", 2);
        else if (c == '\t') sb_put(b, "\\t", 2);
        else if (c == '\r') sb_put(b, "\\r", 2);
        else if (c < 0x20 || c == 0x7f) { snprintf(esc, sizeof(esc), "\\x%02x", c); sb_put(b, esc, 4); }
        else sb_put(b, (const char *)&s[i], 1);
    }
    sb_put(b, &q, 1);
}

static void repr_value(sbuf *b, const json_t *v)
{
    char num[64];
    if (b->len > b->max) return;
    switch (json_typeof(v)) {
    case JSON_STRING: repr_str(b, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sb_put(b, num, strlen(num));
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        sb_put(b, num, strlen(num));
        break;
    case JSON_TRUE: sb_put(b, "True", 4); break;
    case JSON_FALSE: sb_put(b, "False", 5); break;
    case JSON_NULL: sb_put(b, "None", 4); break;
    case JSON_ARRAY: {
        size_t i, n = json_array_size(v);
        sb_put(b, "[", 1);
        for (i = 0; i < n; i++) {
            if (i) sb_put(b, ", ", 2);
            repr_value(b, json_array_get(v, i));
        }
        sb_put(b, "]", 1);
        break;
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *val;
        int first = 1;
        sb_put(b, "{", 1);
        json_object_foreach((json_t *)v, k, val) {
            if (!first) sb_put(b, ", ", 2);
            first = 0;
            repr_str(b, k, strlen(k));
            sb_put(b, ": ", 2);
            repr_value(b, val);
        }
        sb_put(b, "}", 1);
        break;
    }
    }
}

char *celery_repr(const json_t *v, size_t max)
{
    sbuf b = {NULL, 0, 0, max, 0};
    if (json_is_array(v)) {
        /* args are shown as a Python tuple */
        size_t n = json_array_size(v);
        sb_put(&b, "(", 1);
        for (size_t i = 0; i < n && b.len <= max; i++) {
            if (i) sb_put(&b, ", ", 2);
            repr_value(&b, json_array_get(v, i));
        }
        sb_put(&b, n == 1 ? ",)" : ")", n == 1 ? 2 : 1);
    } else {
        repr_value(&b, v);
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (b.len > max && max >= 3) {
        memcpy(b.p + max - 3, "...", 3);
        b.p[max] = '\0';
    }
    return b.p;
}

static json_t *json_str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *limit_or_null(double s)
{
    return s > 0 ? json_real(s) : json_null();
}

char *celery_encode(const celery_task *t, size_t *len, char err[256])
{
    json_t *body = NULL, *env = NULL;
    char *body_text = NULL, *b64 = NULL, *out = NULL;
    char *argsrepr = NULL, *kwargsrepr = NULL;
    char tag[37];

    if (!t->task_name || !t->task_id || !t->queue || !json_is_array(t->args) ||
        !json_is_object(t->kwargs)) {
        snprintf(err, 256, "celery message needs task name, id, queue, args array, kwargs object");
        return NULL;
    }
    body = json_pack("[OO{s:n,s:n,s:n,s:n}]", t->args, t->kwargs, "callbacks", "errbacks",
                     "chain", "chord");
    body_text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (!body_text) goto oom;
    size_t blen = strlen(body_text);
    b64 = malloc(4 * ((blen + 2) / 3) + 1);
    if (!b64) goto oom;
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body_text, (int)blen);

    argsrepr = celery_repr(t->args, CELERY_REPR_MAX);
    kwargsrepr = celery_repr(t->kwargs, CELERY_REPR_MAX);
    if (!argsrepr || !kwargsrepr) goto oom;
    util_uuid4(tag);

    env = json_pack(
        "{s:s, s:s, s:s,"
        " s:{s:s, s:s, s:s, s:n, s:o, s:o, s:n, s:n, s:i, s:[oo], s:s, s:o, s:s, s:s, s:s, s:b},"
        " s:{s:s, s:s, s:i, s:{s:s, s:s}, s:i, s:s, s:s}}",
        "body", b64, "content-encoding", "utf-8", "content-type", "application/json",
        "headers",
            "lang", "py", "task", t->task_name, "id", t->task_id, "shadow",
            "eta", json_str_or_null(t->eta), "expires", json_str_or_null(t->expires),
            "group", "group_index", "retries", t->retries,
            "timelimit", limit_or_null(t->hard_limit_s), limit_or_null(t->soft_limit_s),
            "root_id", t->root_id ? t->root_id : t->task_id,
            "parent_id", json_str_or_null(t->parent_id),
            "argsrepr", argsrepr, "kwargsrepr", kwargsrepr,
            "origin", t->origin ? t->origin : "turnout",
            "ignore_result", 0,
        "properties",
            "correlation_id", t->task_id, "reply_to", "", "delivery_mode", 2,
            "delivery_info", "exchange", "", "routing_key", t->queue,
            "priority", t->priority, "body_encoding", "base64", "delivery_tag", tag);
    if (!env) goto oom;
    out = json_dumps(env, JSON_COMPACT);
    if (!out) goto oom;
    *len = strlen(out);
    goto done;
oom:
    snprintf(err, 256, "out of memory encoding the celery message");
done:
    json_decref(body);
    json_decref(env);
    free(body_text);
    free(b64);
    free(argsrepr);
    free(kwargsrepr);
    return out;
}

/* ---------- decoding ---------- */

double celery_parse_iso8601(const char *s)
{
    struct tm tm = {0};
    int year, mon, day, hh, mm;
    double ss;
    int n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%lf%n", &year, &mon, &day, &hh, &mm, &ss, &n) != 6)
        return -1;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    double t = (double)timegm(&tm) + ss;
    const char *z = s + n;
    if (*z == 'Z' || *z == '\0') return t;
    int oh, om;
    if ((*z == '+' || *z == '-') && sscanf(z + 1, "%2d:%2d", &oh, &om) == 2) {
        double off = oh * 3600.0 + om * 60.0;
        return *z == '+' ? t - off : t + off;
    }
    return -1;
}

void celery_message_free(celery_message *m)
{
    json_decref(m->env);
    json_decref(m->body);
    memset(m, 0, sizeof(*m));
}

static const char *opt_string(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key)); /* NULL when absent or not a string */
}

int celery_decode(const char *msg, size_t len, celery_message *out, char err[256])
{
    json_error_t jerr;
    unsigned char *raw = NULL;
    memset(out, 0, sizeof(*out));
    out->env = json_loadb(msg, len, 0, &jerr);
    if (!json_is_object(out->env)) {
        snprintf(err, 256, "envelope is not a JSON object: %s", out->env ? "wrong type" : jerr.text);
        goto err;
    }
    json_t *headers = json_object_get(out->env, "headers");
    json_t *props = json_object_get(out->env, "properties");
    if (!json_is_object(headers) || !json_is_object(props)) {
        snprintf(err, 256, "envelope lacks headers or properties");
        goto err;
    }
    out->task_name = opt_string(headers, "task");
    out->task_id = opt_string(headers, "id");
    out->delivery_tag = opt_string(props, "delivery_tag");
    json_t *di = json_object_get(props, "delivery_info");
    out->exchange = opt_string(di, "exchange");
    out->routing_key = opt_string(di, "routing_key");
    if (!out->task_name || !out->task_id || !*out->task_id || !out->delivery_tag) {
        snprintf(err, 256, "envelope lacks headers.task, headers.id or properties.delivery_tag");
        goto err;
    }
    if (!out->exchange) out->exchange = "";
    json_t *retries = json_object_get(headers, "retries");
    out->retries = json_is_integer(retries) ? (int)json_integer_value(retries) : 0;
    json_t *prio = json_object_get(props, "priority");
    out->priority = json_is_integer(prio) ? (int)json_integer_value(prio) : 0;
    out->eta = opt_string(headers, "eta");
    out->expires = opt_string(headers, "expires");
    json_t *tl = json_object_get(headers, "timelimit");
    if (json_is_array(tl) && json_array_size(tl) == 2) {
        out->hard_limit_s = json_number_value(json_array_get(tl, 0));
        out->soft_limit_s = json_number_value(json_array_get(tl, 1));
    }

    const char *body = opt_string(out->env, "body");
    const char *ctype = opt_string(out->env, "content-type");
    if (!body) {
        snprintf(err, 256, "envelope has no string body");
        goto err;
    }
    if (ctype && strcmp(ctype, "application/json") != 0) {
        snprintf(err, 256, "content-type \"%.60s\" is not application/json", ctype);
        goto err;
    }
    const char *enc = opt_string(props, "body_encoding");
    const char *text = body;
    size_t tlen = strlen(body);
    if (enc && strcmp(enc, "base64") == 0) {
        size_t blen = strlen(body);
        if (blen % 4 != 0) {
            snprintf(err, 256, "body is not valid base64");
            goto err;
        }
        raw = malloc(blen / 4 * 3 + 1);
        if (!raw) {
            snprintf(err, 256, "out of memory");
            goto err;
        }
        int n = EVP_DecodeBlock(raw, (const unsigned char *)body, (int)blen);
        if (n < 0) {
            snprintf(err, 256, "body is not valid base64");
            goto err;
        }
        /* padding decodes as zeros: at most two '=' end a valid body */
        for (size_t i = blen, pads = 0; i > 0 && body[i - 1] == '=' && pads < 2; i--, pads++) n--;
        if (n < 0) n = 0;
        text = (const char *)raw;
        tlen = (size_t)n;
    }
    out->body = json_loadb(text, tlen, 0, &jerr);
    if (!json_is_array(out->body) || json_array_size(out->body) != 3) {
        snprintf(err, 256, "body must be the JSON array [args, kwargs, embed]");
        goto err;
    }
    out->args = json_array_get(out->body, 0);
    out->kwargs = json_array_get(out->body, 1);
    if (!json_is_array(out->args) || !json_is_object(out->kwargs)) {
        snprintf(err, 256, "body args must be an array and kwargs an object");
        goto err;
    }
    free(raw);
    return 0;
err:
    free(raw);
    celery_message_free(out);
    return -1;
}

char *celery_reencode(const celery_message *m, int retries, const char *eta, const char *extra_key,
                      json_t *extra_value, size_t *len)
{
    json_t *env = json_deep_copy(m->env);
    char tag[37];
    char *out = NULL;
    if (!env) return NULL;
    json_t *headers = json_object_get(env, "headers");
    json_t *props = json_object_get(env, "properties");
    util_uuid4(tag);
    if (json_object_set_new(headers, "retries", json_integer(retries)) ||
        json_object_set_new(headers, "eta", eta ? json_string(eta) : json_null()) ||
        json_object_set_new(props, "delivery_tag", json_string(tag)))
        goto done;
    if (extra_key && json_object_set(headers, extra_key, extra_value)) goto done;
    json_object_del(headers, "redelivered");
    json_object_del(json_object_get(props, "delivery_info"), "redelivered");
    out = json_dumps(env, JSON_COMPACT);
    if (out) *len = strlen(out);
done:
    json_decref(env);
    return out;
}
