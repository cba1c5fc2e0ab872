#include "celery.h"

#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonr.h"
#include "sha1.h"
#include "jsonw.h"
#include "util.h"

const int celery_priority_steps[CELERY_NSTEPS] = {0, 3, 6, 9};

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

/* ---------- task ids ---------- */

bool celery_task_id_ok(const char *id, size_t len)
{
    if (!id || len < 1 || len > CELERY_TASK_ID_MAX) return false;
    const unsigned char *s = (const unsigned char *)id;
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        if (c < 0x20 || c == 0x7f) return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        /* the length of the sequence and the smallest code point it may
         * hold (no overlong forms), then its continuation bytes */
        size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!n || i + n > len) return false;
        unsigned cp = c & (0xff >> (n + 1));
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
            return false;
        i += n;
    }
    return true;
}

void celery_invalid_id(const char *id, size_t len, char out[CELERY_INVALID_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[SHA1_DIGEST_LENGTH];
    sha1(id, len, d);
    memcpy(out, "invalid-id-", 11);
    for (int i = 0; i < SHA1_DIGEST_LENGTH; i++) {
        out[11 + 2 * i] = hex[d[i] >> 4];
        out[12 + 2 * i] = hex[d[i] & 15];
    }
    out[CELERY_INVALID_ID_LEN] = '\0';
}

/* ---------- argsrepr / kwargsrepr ---------- */

/* Python's str.__repr__: single quotes unless the text has ' and no ".
 * Plain runs are copied whole; writing stops once w holds more than max. */
void celery_repr_str(jsonw *w, const char *s, size_t n, size_t max)
{
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    static const char hex[] = "0123456789abcdef";
    jw_putc(w, q);
    size_t i = 0;
    while (i < n && w->len <= max && !jw_failed(w)) {
        size_t run = i;
        /* never copy much past max: the rest would be cut anyway */
        size_t lim = n - i > max + 1 ? i + max + 1 : n;
        while (run < lim) {
            unsigned char c = (unsigned char)s[run];
            if (c == (unsigned char)q || c == '\\' || c < 0x20 || c == 0x7f) break;
            run++;
        }
        jw_put(w, s + i, run - i);
        if (run == lim) {
            i = run;
            continue;
        }
        unsigned char c = (unsigned char)s[run];
        char esc[4] = {'\\', (char)c, 0, 0};
        if (c == '\n') esc[1] = 'n';
        else if (c == '\t') esc[1] = 't';
        else if (c == '\r') esc[1] = 'r';
        if (c == (unsigned char)q || c == '\\' || c == '\n' || c == '\t' || c == '\r') {
            jw_put(w, esc, 2);
        } else {
            char x[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            jw_put(w, x, 4);
        }
        i = run + 1;
    }
    jw_putc(w, q);
}

void celery_repr_cut(jsonw *w, size_t max)
{
    if (jw_failed(w) || w->len <= max || max < 3) return;
    size_t cut = max - 3;
    /* back to the start of the character the cut would split */
    while (cut > 0 && ((unsigned char)w->buf[cut] & 0xC0) == 0x80) cut--;
    memcpy(w->buf + cut, "...", 3);
    w->len = cut + 3;
}

static void repr_value(jsonw *b, const json_t *v, size_t max)
{
    if (b->len > max) return;
    switch (json_typeof(v)) {
    case JSON_STRING: celery_repr_str(b, json_string_value(v), json_string_length(v), max); break;
    case JSON_INTEGER: jw_put_int(b, (long long)json_integer_value(v)); break;
    case JSON_REAL: {
        char num[64];
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        jw_puts(b, num);
        break;
    }
    case JSON_TRUE: jw_put(b, "True", 4); break;
    case JSON_FALSE: jw_put(b, "False", 5); break;
    case JSON_NULL: jw_put(b, "None", 4); break;
    case JSON_ARRAY: {
        size_t i, n = json_array_size(v);
        jw_putc(b, '[');
        for (i = 0; i < n; i++) {
            if (i) jw_put(b, ", ", 2);
            repr_value(b, json_array_get(v, i), max);
        }
        jw_putc(b, ']');
        break;
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *val;
        int first = 1;
        jw_putc(b, '{');
        json_object_foreach((json_t *)v, k, val) {
            if (!first) jw_put(b, ", ", 2);
            first = 0;
            celery_repr_str(b, k, strlen(k), max);
            jw_put(b, ": ", 2);
            repr_value(b, val, max);
        }
        jw_putc(b, '}');
        break;
    }
    }
}

static void repr_into(jsonw *b, const json_t *v, size_t max)
{
    if (json_is_array(v)) {
        /* args are shown as a Python tuple */
        size_t n = json_array_size(v);
        jw_putc(b, '(');
        for (size_t i = 0; i < n && b->len <= max; i++) {
            if (i) jw_put(b, ", ", 2);
            repr_value(b, json_array_get(v, i), max);
        }
        jw_put(b, n == 1 ? ",)" : ")", n == 1 ? 2 : 1);
    } else {
        repr_value(b, v, max);
    }
    celery_repr_cut(b, max);
}

char *celery_repr(const json_t *v, size_t max)
{
    jsonw b;
    jw_init(&b, NULL, 0);
    repr_into(&b, v, max);
    char *out = jw_detach(&b, NULL);
    jw_free(&b);
    return out;
}

/* ---------- encoding ---------- */

int celery_encode_into(const celery_task *t, jsonw *out, char err[256])
{
    char body_stack[2048], args_stack[512], kwargs_stack[256];
    jsonw body, ar, kr;
    char tag[37];
    int rc = -1;
    const char *argsrepr, *kwargsrepr;
    size_t argsrepr_len, kwargsrepr_len;

    jw_init(&body, body_stack, sizeof(body_stack));
    jw_init(&ar, args_stack, sizeof(args_stack));
    jw_init(&kr, kwargs_stack, sizeof(kwargs_stack));
    if (!t->task_name || !t->task_id || !t->queue ||
        (!t->body && (!json_is_array(t->args) || !json_is_object(t->kwargs)))) {
        snprintf(err, 256, "celery message needs task name, id, queue, args array, kwargs object");
        goto done;
    }

    /* the body: [args, kwargs, embed], sent base64 */
    jw_arr_open(&body);
    if (t->body) {
        jw_raw_value(&body, t->body->args_json, t->body->args_len);
        jw_raw_value(&body, t->body->kwargs_json, t->body->kwargs_len);
        argsrepr = t->body->argsrepr;
        argsrepr_len = t->body->argsrepr_len;
        kwargsrepr = t->body->kwargsrepr;
        kwargsrepr_len = t->body->kwargsrepr_len;
    } else {
        jw_value(&body, t->args);
        jw_value(&body, t->kwargs);
        repr_into(&ar, t->args, CELERY_REPR_MAX);
        repr_into(&kr, t->kwargs, CELERY_REPR_MAX);
        argsrepr = jw_text(&ar);
        argsrepr_len = jw_len(&ar);
        kwargsrepr = jw_text(&kr);
        kwargsrepr_len = jw_len(&kr);
    }
    jw_obj_open(&body);
    jw_lit_key(&body, "callbacks");
    jw_null(&body);
    jw_lit_key(&body, "errbacks");
    jw_null(&body);
    jw_lit_key(&body, "chain");
    jw_null(&body);
    jw_lit_key(&body, "chord");
    jw_null(&body);
    jw_obj_close(&body);
    jw_arr_close(&body);
    if (jw_failed(&body) || jw_failed(&ar) || jw_failed(&kr)) goto oom;
    util_uuid4(tag);

    /* the envelope, in the order kombu writes it; room reserved at once */
    if (!jw_reserve(out, (jw_len(&body) + 2) / 3 * 4 + argsrepr_len + kwargsrepr_len + strlen(t->task_id) * 3 +
                             strlen(t->task_name) + strlen(t->queue) + 700))
        goto oom;
    jw_obj_open(out);
    jw_lit_key(out, "body");
    jw_base64(out, jw_text(&body), jw_len(&body));
    jw_lit_key(out, "content-encoding");
    jw_lit_string(out, "utf-8");
    jw_lit_key(out, "content-type");
    jw_lit_string(out, "application/json");
    jw_lit_key(out, "headers");
    jw_obj_open(out);
    jw_lit_key(out, "lang");
    jw_lit_string(out, "py");
    jw_lit_key(out, "task");
    jw_cstring(out, t->task_name);
    jw_lit_key(out, "id");
    jw_cstring(out, t->task_id);
    jw_lit_key(out, "shadow");
    jw_null(out);
    jw_lit_key(out, "eta");
    jw_cstring(out, t->eta);
    jw_lit_key(out, "expires");
    jw_cstring(out, t->expires);
    jw_lit_key(out, "group");
    jw_null(out);
    jw_lit_key(out, "group_index");
    jw_null(out);
    jw_lit_key(out, "retries");
    jw_int(out, t->retries);
    jw_lit_key(out, "timelimit");
    jw_arr_open(out);
    if (t->hard_limit_s > 0) jw_real(out, t->hard_limit_s);
    else jw_null(out);
    if (t->soft_limit_s > 0) jw_real(out, t->soft_limit_s);
    else jw_null(out);
    jw_arr_close(out);
    jw_lit_key(out, "root_id");
    jw_cstring(out, t->root_id ? t->root_id : t->task_id);
    jw_lit_key(out, "parent_id");
    jw_cstring(out, t->parent_id);
    jw_lit_key(out, "argsrepr");
    jw_string(out, argsrepr, argsrepr_len);
    jw_lit_key(out, "kwargsrepr");
    jw_string(out, kwargsrepr, kwargsrepr_len);
    jw_lit_key(out, "origin");
    jw_cstring(out, t->origin ? t->origin : "turnout");
    jw_lit_key(out, "ignore_result");
    jw_bool(out, false);
    jw_obj_close(out);
    jw_lit_key(out, "properties");
    jw_obj_open(out);
    jw_lit_key(out, "correlation_id");
    jw_cstring(out, t->task_id);
    jw_lit_key(out, "reply_to");
    jw_lit_string(out, "");
    jw_lit_key(out, "delivery_mode");
    jw_int(out, 2);
    jw_lit_key(out, "delivery_info");
    jw_obj_open(out);
    jw_lit_key(out, "exchange");
    jw_lit_string(out, "");
    jw_lit_key(out, "routing_key");
    jw_cstring(out, t->queue);
    jw_obj_close(out);
    jw_lit_key(out, "priority");
    jw_int(out, t->priority);
    jw_lit_key(out, "body_encoding");
    jw_lit_string(out, "base64");
    jw_lit_key(out, "delivery_tag");
    jw_string(out, tag, 36);
    jw_obj_close(out);
    jw_obj_close(out);
    if (jw_failed(out)) goto oom;
    rc = 0;
    goto done;
oom:
    snprintf(err, 256, "out of memory encoding the celery message");
done:
    jw_free(&body);
    jw_free(&ar);
    jw_free(&kr);
    return rc;
}

char *celery_encode(const celery_task *t, size_t *len, char err[256])
{
    jsonw out;
    jw_init(&out, NULL, 0);
    char *text = NULL;
    if (celery_encode_into(t, &out, err) == 0) {
        text = jw_detach(&out, len);
        if (!text) snprintf(err, 256, "out of memory encoding the celery message");
    }
    jw_free(&out);
    return text;
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
    char jerr[160];
    unsigned char *raw = NULL;
    memset(out, 0, sizeof(*out));
    /* jsonr: what json_loadb builds, several times faster (the worker's
     * largest cost per message) */
    out->env = jsonr_loadb(msg, len, jerr);
    if (!json_is_object(out->env)) {
        snprintf(err, 256, "envelope is not a JSON object: %s", out->env ? "wrong type" : jerr);
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
        snprintf(err, 256, "content-type \"%.*s\" is not application/json", UTF8_CUT(ctype, 60));
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
        long n = util_base64_decode(raw, body, blen);
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
    out->body = jsonr_loadb(text, tlen, jerr);
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

char *celery_pidbox_revoke(const char *task_id, bool terminate, double expires)
{
    json_t *msg = json_pack("{s:s, s:{s:s, s:b, s:s}, s:n, s:n, s:n}", "method", "revoke", "arguments", "task_id",
                            task_id, "terminate", terminate, "signal", "SIGTERM", "destination", "pattern",
                            "matcher");
    char *body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!body) return NULL;
    char tag[37], stack[1024];
    util_uuid4(tag);
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "body");
    jw_base64(&w, body, strlen(body));
    jw_lit_key(&w, "content-encoding");
    jw_lit_string(&w, "utf-8");
    jw_lit_key(&w, "content-type");
    jw_lit_string(&w, "application/json");
    jw_lit_key(&w, "headers");
    jw_obj_open(&w);
    jw_lit_key(&w, "clock");
    jw_int(&w, 1);
    jw_lit_key(&w, "expires");
    jw_real(&w, expires);
    jw_obj_close(&w);
    jw_lit_key(&w, "properties");
    jw_obj_open(&w);
    jw_lit_key(&w, "delivery_mode");
    jw_int(&w, 2);
    jw_lit_key(&w, "delivery_info");
    jw_obj_open(&w);
    jw_lit_key(&w, "exchange");
    jw_lit_string(&w, "celery.pidbox");
    jw_lit_key(&w, "routing_key");
    jw_lit_string(&w, "");
    jw_obj_close(&w);
    jw_lit_key(&w, "priority");
    jw_int(&w, 0);
    jw_lit_key(&w, "body_encoding");
    jw_lit_string(&w, "base64");
    jw_lit_key(&w, "delivery_tag");
    jw_cstring(&w, tag);
    jw_obj_close(&w);
    jw_obj_close(&w);
    free(body);
    char *out = jw_failed(&w) ? NULL : jw_detach(&w, NULL);
    jw_free(&w);
    return out;
}
