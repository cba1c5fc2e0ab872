#include "submission.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "util.h"

__attribute__((format(printf, 5, 6)))
static int fail(sub_error *err, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    err->code = code;
    err->field = field;
    va_start(ap, fmt);
    int n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    /* a message cut by the buffer ends at a character boundary, so it stays
     * valid UTF-8 (the allowed languages, say, can be long and non-ASCII) */
    if (n >= (int)sizeof(err->message))
        err->message[util_utf8_trim_end(err->message, sizeof(err->message) - 1)] = '\0';
    return -1;
}

bool submission_valid_eval_id(const char *id, size_t len)
{
    return util_valid_id(id, len, SUB_MAX_EVAL_ID);
}

void submission_new_eval_id(char out[SUB_MAX_EVAL_ID + 1])
{
    /* "eval_YYYYMMDD_HHMMSS_" changes once a second: formatted then only */
    static time_t cached_sec = (time_t)-1;
    static char prefix[32];
    static size_t prefix_len;
    static const char hex[] = "0123456789abcdef";
    unsigned char r[4] = {0};
    time_t now = time(NULL);
    if (now != cached_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        int n = snprintf(prefix, sizeof(prefix), "eval_%04d%02d%02d_%02d%02d%02d_", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        prefix_len = n > 0 && (size_t)n < sizeof(prefix) ? (size_t)n : 0;
        cached_sec = now;
    }
    if (util_random(r, sizeof(r)) != 0) {
        /* the kernel never refuses 4 bytes; keep a usable id regardless */
        unsigned v = (unsigned)(util_monotonic() * 1e6);
        memcpy(r, &v, sizeof(r));
    }
    memcpy(out, prefix, prefix_len);
    char *o = out + prefix_len;
    for (int i = 0; i < 4; i++) {
        *o++ = hex[r[i] >> 4];
        *o++ = hex[r[i] & 15];
    }
    *o = '\0';
}

int submission_priority(const json_t *v, const char **name)
{
    static const char *const numbered[10] = {"p0", "p1", "p2", "p3", "p4",
                                             "p5", "p6", "p7", "p8", "p9"};
    if (!v || json_is_null(v) || json_is_false(v)) {
        *name = "default";
        return 3;
    }
    if (json_is_true(v)) {
        *name = "high";
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "high") == 0) { *name = "high"; return 0; }
        if (strcmp(s, "default") == 0) { *name = "default"; return 3; }
        if (strcmp(s, "low") == 0) { *name = "low"; return 6; }
        return -1;
    }
    if (json_is_integer(v)) {
        json_int_t p = json_integer_value(v);
        if (p < 0 || p > 9) return -1;
        *name = numbered[p];
        return (int)p;
    }
    return -1;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return false;
    return true;
}

int submission_from_json(json_t *obj, const proxy_settings *s, submission *out, sub_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(obj))
        return fail(err, 422, "invalid_body", NULL,
                    "the body must be a JSON object like {\"code\": \"print(1)\", \"language\": \"python\"}");

    json_t *code = json_object_get(obj, "code");
    if (!code) return fail(err, 422, "invalid_field", "code", "field 'code' is required: the source to evaluate, as a string");
    if (!json_is_string(code)) return fail(err, 422, "invalid_field", "code", "field 'code' must be a string");
    out->code = json_string_value(code);
    out->code_len = json_string_length(code);
    if (out->code_len > SUB_MAX_CODE_BYTES)
        return fail(err, 422, "invalid_field", "code",
                    "field 'code' is %zu bytes; at most %d bytes (1 MiB) are accepted", out->code_len,
                    SUB_MAX_CODE_BYTES);
    if (blank(out->code, out->code_len))
        return fail(err, 422, "invalid_field", "code", "field 'code' is empty or blank; send the source to evaluate");

    json_t *lang = json_object_get(obj, "language");
    if (!lang || json_is_null(lang)) {
        out->language = "python";
        out->language_len = 6;
    } else if (!json_is_string(lang)) {
        return fail(err, 422, "invalid_field", "language", "field 'language' must be a string, one of: %s",
                    s->allowed_languages);
    } else {
        out->language = json_string_value(lang);
        out->language_len = json_string_length(lang);
    }
    if (!pconfig_language_allowed(s, out->language, out->language_len))
        return fail(err, 422, "invalid_field", "language",
                    "field 'language' \"%.*s\" is not accepted; use one of: %s", UTF8_CUT(out->language, 40),
                    s->allowed_languages);

    json_t *engine = json_object_get(obj, "engine");
    if (!engine || json_is_null(engine)) {
        out->engine = "docker";
    } else {
        size_t n = json_is_string(engine) ? json_string_length(engine) : 0;
        const char *e = json_is_string(engine) ? json_string_value(engine) : "";
        bool ok = n >= 1 && n <= SUB_MAX_ENGINE;
        for (size_t i = 0; ok && i < n; i++)
            ok = isalnum((unsigned char)e[i]) || e[i] == '_' || e[i] == '-' || e[i] == '.';
        if (!ok)
            return fail(err, 422, "invalid_field", "engine",
                        "field 'engine' must be a name of 1 to %d characters [A-Za-z0-9_.-], e.g. \"docker\"",
                        SUB_MAX_ENGINE);
        out->engine = e;
    }

    json_t *timeout = json_object_get(obj, "timeout");
    if (!timeout || json_is_null(timeout)) {
        out->timeout = SUB_DEFAULT_TIMEOUT;
    } else {
        double t = json_is_integer(timeout) ? (double)json_integer_value(timeout)
                   : json_is_real(timeout)  ? json_real_value(timeout)
                                            : -1;
        /* the range first: converting a huge double to long long is undefined */
        if (!json_is_number(timeout) || t < SUB_MIN_TIMEOUT || t > SUB_MAX_TIMEOUT || t != (double)(long long)t)
            return fail(err, 422, "invalid_field", "timeout",
                        "field 'timeout' must be a whole number of seconds from %d to %d (default %d)",
                        SUB_MIN_TIMEOUT, SUB_MAX_TIMEOUT, SUB_DEFAULT_TIMEOUT);
        out->timeout = (int)t;
    }

    out->priority = submission_priority(json_object_get(obj, "priority"), &out->priority_name);
    if (out->priority < 0)
        return fail(err, 422, "invalid_field", "priority",
                    "field 'priority' must be true/false, \"high\", \"default\", \"low\", or an integer 0..9 (0 runs first)");

    json_t *id = json_object_get(obj, "eval_id");
    if (id && !json_is_null(id)) {
        if (!json_is_string(id) ||
            !submission_valid_eval_id(json_string_value(id), json_string_length(id)))
            return fail(err, 422, "invalid_field", "eval_id",
                        "field 'eval_id' must be 1 to %d characters of [A-Za-z0-9_.:-], or left out to get one generated",
                        SUB_MAX_EVAL_ID);
        memcpy(out->eval_id, json_string_value(id), json_string_length(id) + 1);
        out->eval_id_given = true;
    } else {
        submission_new_eval_id(out->eval_id);
    }
    out->doc = json_incref(obj);
    return 0;
}

int submission_parse(const char *body, size_t len, const proxy_settings *s, submission *out,
                     sub_error *err)
{
    json_error_t jerr;
    memset(out, 0, sizeof(*out));
    if (len == 0) return fail(err, 400, "invalid_json", NULL, "the request body is empty; send a JSON object");
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        return fail(err, 400, "invalid_json", NULL, "the body is not valid JSON: %s (line %d, column %d)",
                    jerr.text, jerr.line, jerr.column);
    int rc = submission_from_json(doc, s, out, err);
    json_decref(doc);
    return rc;
}

void submission_free(submission *sub)
{
    json_decref(sub->doc);
    sub->doc = NULL;
}
