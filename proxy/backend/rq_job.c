/* rq_job — RQ 1.13's job, encoded and read: the fields Queue.enqueue
 * writes (Job.data as zlib(serializer((function, None, args, kwargs))),
 * the description rq worker logs, RQ's timestamps) and a job hash with the
 * newest entry of its result stream in the backend vocabulary (backend.h).
 * Pure functions; legacy_rq.c is the client around them. */
#include "rq_job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <zlib.h>

#include "pickle.h"
#include "util.h"

void rq_job_time(double t, char out[40])
{
    char iso[32];
    util_iso8601(t, iso); /* 2026-11-22T08:42:30.022342 */
    snprintf(out, 40, "%sZ", iso);
}

/* zlib(serializer((function, None, args, kwargs))), as Job.data; NULL on OOM. */
unsigned char *rq_job_data(const char *function, bool pickle, const bk_job *j, size_t *len)
{
    json_t *t = json_pack("[s, n, [s, o, s], {s:i, s:s, s:i}]", function, j->eval_id,
                          json_stringn(j->code, j->code_len), j->language, "timeout", j->timeout, "engine", j->engine,
                          "priority", j->priority);
    if (!t) return NULL;
    unsigned char *raw = NULL;
    size_t raw_len = 0;
    if (pickle) {
        raw = pickle_dumps_tuple(t, &raw_len);
    } else {
        char *text = json_dumps(t, JSON_COMPACT | JSON_ENSURE_ASCII);
        raw = (unsigned char *)text;
        raw_len = text ? strlen(text) : 0;
    }
    json_decref(t);
    if (!raw) return NULL;
    uLongf cap = compressBound((uLong)raw_len);
    unsigned char *z = malloc(cap);
    if (z && compress2(z, &cap, raw, (uLong)raw_len, Z_DEFAULT_COMPRESSION) != Z_OK) {
        free(z);
        z = NULL;
    }
    free(raw);
    *len = cap;
    return z;
}

/* repr() of a Python str, cut as RQ cuts it for a description (75
 * characters, then "..."), appended to w. */
static void py_repr(char *out, size_t cap, size_t *at, const char *str, size_t len)
{
    char buf[400];
    size_t n = 0, chars = 0;
    bool dq = memchr(str, '\'', len) && !memchr(str, '"', len);
    char q = dq ? '"' : '\'';
    buf[n++] = q;
    chars++;
    for (size_t i = 0; i < len && n + 12 < sizeof(buf) && chars <= 75; i++) {
        unsigned char ch = (unsigned char)str[i];
        if (ch == '\\' || ch == (unsigned char)q) n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\%c", ch), chars += 2;
        else if (ch == '\n') n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\n"), chars += 2;
        else if (ch == '\r') n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\r"), chars += 2;
        else if (ch == '\t') n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\t"), chars += 2;
        else if (ch < 0x20 || ch == 0x7f) n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\\x%02x", ch), chars += 4;
        else {
            buf[n++] = (char)ch;
            if ((ch & 0xc0) != 0x80) chars++; /* a character starts here */
        }
    }
    if (chars <= 75) buf[n++] = q, chars++;
    buf[n] = '\0';
    /* Python counts characters: cut at the 75th, then "..." */
    size_t cut = 0, c = 0;
    while (cut < n && c < 75) {
        cut++;
        while (cut < n && ((unsigned char)buf[cut] & 0xc0) == 0x80) cut++;
        c++;
    }
    int w = snprintf(out + *at, cap - *at, "%.*s%s", (int)cut, buf, cut < n || chars > 75 ? "..." : "");
    if (w > 0) *at = *at + (size_t)w < cap ? *at + (size_t)w : cap - 1;
}

static void append(char *out, size_t cap, size_t *at, const char *text)
{
    int w = snprintf(out + *at, cap - *at, "%s", text);
    if (w > 0) *at = *at + (size_t)w < cap ? *at + (size_t)w : cap - 1;
}

/* What RQ's get_call_string makes of the call: what rq worker logs. */
void rq_job_description(const char *function, const bk_job *j, char *out, size_t cap)
{
    size_t at = 0;
    char tail[64];
    out[0] = '\0';
    append(out, cap, &at, function);
    append(out, cap, &at, "(");
    py_repr(out, cap, &at, j->eval_id, strlen(j->eval_id));
    append(out, cap, &at, ", ");
    py_repr(out, cap, &at, j->code, j->code_len);
    append(out, cap, &at, ", ");
    py_repr(out, cap, &at, j->language, strlen(j->language));
    append(out, cap, &at, ", engine=");
    py_repr(out, cap, &at, j->engine, strlen(j->engine));
    snprintf(tail, sizeof(tail), ", priority=%d, timeout=%d)", j->priority, j->timeout);
    append(out, cap, &at, tail);
}

/* A result value as the serializer wrote it (base64 of the bytes). */
static json_t *decode_value(bool pickle, const char *b64, size_t len, char why[160])
{
    unsigned char *raw = malloc(len / 4 * 3 + 3);
    long n = raw ? util_base64_decode(raw, b64, len) : -1;
    if (n < 0) {
        free(raw);
        snprintf(why, 160, "the result is not base64");
        return NULL;
    }
    for (size_t k = len; k > 0 && b64[k - 1] == '='; k--) n--; /* the padding decodes as zero bits */
    json_t *v = NULL;
    if (pickle) {
        v = pickle_loads(raw, (size_t)n, why);
    } else {
        json_error_t e;
        v = json_loadb((const char *)raw, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
        if (!v) util_snprintf(why, 160, "the result is not JSON: %s", e.text);
    }
    free(raw);
    return v;
}

/* exc_string: base64(zlib(traceback text)); the text's last line says what. */
static char *decode_exc(const char *b64, size_t len)
{
    unsigned char *raw = malloc(len / 4 * 3 + 3);
    long n = raw ? util_base64_decode(raw, b64, len) : -1;
    if (n < 0) {
        free(raw);
        return NULL;
    }
    for (size_t k = len; k > 0 && b64[k - 1] == '='; k--) n--;
    uLongf cap = 64 * 1024;
    char *text = malloc(cap + 1);
    if (text && uncompress((unsigned char *)text, &cap, raw, (uLong)n) == Z_OK) {
        text[cap] = '\0';
    } else if (text) { /* not compressed after all: the text as it is */
        size_t m = (size_t)n < 64 * 1024 ? (size_t)n : 64 * 1024;
        memcpy(text, raw, m);
        text[m] = '\0';
    }
    free(raw);
    return text;
}

static const char *field(const redisReply *h, const char *name, size_t *len)
{
    for (size_t i = 0; h && i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0 && v->type == REDIS_REPLY_STRING) {
            if (len) *len = v->len;
            return v->str;
        }
    }
    return NULL;
}

static json_t *time_or_null(const char *t)
{
    if (!t || !t[0]) return json_null();
    size_t n = strlen(t);
    return json_stringn(t, n && t[n - 1] == 'Z' ? n - 1 : n); /* the protocol's times carry no offset */
}

static double seconds_between(const char *a, const char *b)
{
    struct tm ta = {0}, tb = {0};
    double fa = 0, fb = 0;
    int n1 = sscanf(a ? a : "", "%d-%d-%dT%d:%d:%lf", &ta.tm_year, &ta.tm_mon, &ta.tm_mday, &ta.tm_hour, &ta.tm_min, &fa);
    int n2 = sscanf(b ? b : "", "%d-%d-%dT%d:%d:%lf", &tb.tm_year, &tb.tm_mon, &tb.tm_mday, &tb.tm_hour, &tb.tm_min, &fb);
    if (n1 != 6 || n2 != 6) return -1;
    ta.tm_year -= 1900, ta.tm_mon -= 1, tb.tm_year -= 1900, tb.tm_mon -= 1;
    double d = (double)(timegm(&tb) - timegm(&ta)) + fb - fa;
    return d >= 0 ? d : -1;
}

/* The job, in the Queue Service protocol's words. */
json_t *rq_job_doc(bool pickle, const char *eval_id, const redisReply *h, const redisReply *results,
                   const redisReply *pos)
{
    const char *st = field(h, "status", NULL);
    const char *started = field(h, "started_at", NULL), *ended = field(h, "ended_at", NULL);
    json_t *o = json_pack("{s:s, s:o, s:o, s:o, s:o}", "eval_id", eval_id, "queued_at",
                          time_or_null(field(h, "enqueued_at", NULL)), "started_at", time_or_null(started),
                          "completed_at", time_or_null(ended), "queue",
                          json_string(field(h, "origin", NULL) ? field(h, "origin", NULL) : ""));
    if (!o) return NULL;
    /* the newest result: [id, [k, v, ...]] */
    const redisReply *entry = results && results->type == REDIS_REPLY_ARRAY && results->elements ? results->element[0]
                                                                                                 : NULL;
    const redisReply *kv = entry && entry->type == REDIS_REPLY_ARRAY && entry->elements == 2 ? entry->element[1] : NULL;
    const char *type = field(kv, "type", NULL);
    size_t rv_len = 0, exc_len = 0;
    const char *rv = field(kv, "return_value", &rv_len), *exc = field(kv, "exc_string", &exc_len);
    if (!st) st = "";
    if (strcmp(st, "queued") == 0 || strcmp(st, "deferred") == 0 || strcmp(st, "scheduled") == 0) {
        json_object_set_new(o, "status", json_string("queued"));
        json_object_set_new(o, "position", pos && pos->type == REDIS_REPLY_INTEGER
                                               ? json_integer((json_int_t)pos->integer + 1)
                                               : json_null());
    } else if (strcmp(st, "started") == 0) {
        json_object_set_new(o, "status", json_string("processing"));
    } else if (strcmp(st, "canceled") == 0) {
        json_object_set_new(o, "status", json_string("cancelled"));
    } else if (strcmp(st, "stopped") == 0 || (type && strcmp(type, "3") == 0)) {
        json_object_set_new(o, "status", json_string("failed"));
        json_object_set_new(o, "outcome", json_string("killed"));
        json_object_set_new(o, "error", json_string("stopped: the RQ worker was told to stop the job"));
    } else if (strcmp(st, "finished") == 0) {
        char why[160] = "";
        json_t *v = rv ? decode_value(pickle, rv, rv_len, why) : json_string(""); /* None: RQ writes no value */
        const char *verdict = json_string_value(json_object_get(v, "status"));
        if (!v) {
            /* unreadable (or refused): not a verdict of the program */
            json_object_set_new(o, "status", json_string("failed"));
            json_object_set_new(o, "outcome", json_string("error"));
            char msg[300];
            util_snprintf(msg, sizeof(msg), "the job's return value could not be read: %s", why);
            json_object_set_new(o, "error", json_string(msg));
        } else if (verdict) {
            bool done = strcmp(verdict, "completed") == 0;
            json_object_set_new(o, "status", json_string(done ? "completed" : "failed"));
            json_object_set_new(o, "outcome", json_string(verdict));
            static const char *const keep[] = {"output", "error", "exit_code", "duration_s"};
            for (int i = 0; i < 4; i++) {
                json_t *x = json_object_get(v, keep[i]);
                if (x) json_object_set(o, keep[i], x);
            }
        } else {
            /* a function that returns something else: its value is the output */
            char *text = json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            json_object_set_new(o, "status", json_string("completed"));
            json_object_set_new(o, "outcome", json_string("completed"));
            json_object_set_new(o, "output", json_string(text ? text : ""));
            free(text);
        }
        json_decref(v);
    } else if (strcmp(st, "failed") == 0) {
        char *text = exc ? decode_exc(exc, exc_len) : NULL;
        json_object_set_new(o, "status", json_string("failed"));
        json_object_set_new(o, "outcome", json_string("error"));
        json_t *e = text ? json_string(text) : NULL; /* NULL too when not UTF-8 */
        json_object_set_new(o, "error", e ? e : json_string("the RQ job failed (no traceback kept)"));
        free(text);
    } else {
        json_object_set_new(o, "status", json_string(st)); /* unknown: read as unreadable */
    }
    if (json_is_null(json_object_get(o, "completed_at")) && entry && entry->type == REDIS_REPLY_ARRAY &&
        entry->elements == 2 && entry->element[0]->type == REDIS_REPLY_STRING) {
        /* no ended_at (a stopped job): the result's stream id is its time in ms */
        char stamp[40], iso[32];
        double ms = strtod(entry->element[0]->str, NULL);
        if (ms > 0) {
            util_iso8601(ms / 1000.0, iso);
            snprintf(stamp, sizeof(stamp), "%s", iso);
            json_object_set_new(o, "completed_at", json_string(stamp));
        }
    }
    if (!json_object_get(o, "duration_s")) {
        double d = seconds_between(started, ended);
        json_object_set_new(o, "duration_s", d >= 0 ? json_real(d) : json_null());
    }
    if (!json_object_get(o, "error")) json_object_set_new(o, "error", json_null());
    return o;
}
