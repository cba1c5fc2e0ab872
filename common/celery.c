#include "celery.h"

#include <stdio.h>
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
