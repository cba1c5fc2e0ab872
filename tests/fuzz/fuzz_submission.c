/* fuzz_submission — POST /api/eval bodies through submission_parse (the
 * proxy's first contact with untrusted input), with the proxy's default
 * settings, plus submission_priority and submission_valid_eval_id.
 *
 * Input: the raw request body.  Every accepted submission is checked
 * against the README's field rules, so a validation gap traps as well as a
 * memory error does. */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "pconfig.h"
#include "submission.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_submission: invariant failed: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* Every variable unset: the settings are the table's defaults, as a proxy
 * started with an empty environment has them. */
static const char *no_env(const char *name, void *ud)
{
    (void)name;
    (void)ud;
    return NULL;
}

/* Loaded once and kept for the whole run: constant, so nothing grows. */
static proxy_settings settings;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char errs[2048];
    if (pconfig_load(&settings, no_env, NULL, errs, sizeof(errs)) != 0) {
        fprintf(stderr, "fuzz_submission: the default proxy settings do not load:\n%s", errs);
        abort();
    }
    return 0;
}

/* The README's rule for eval_id, written independently of util_valid_id. */
static bool reference_valid_id(const char *s, size_t n)
{
    if (n < 1 || n > SUB_MAX_EVAL_ID) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == ':' || c == '-')) return false;
    }
    return true;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return false;
    return true;
}

/* submission_priority against the README table: true/false, "high",
 * "default", "low", 0..9; anything else is -1 and leaves the name alone. */
static void check_priority(const json_t *v)
{
    const char *name = NULL;
    int p = submission_priority(v, &name);
    if (p < 0) {
        CHECK(p == -1);
        return;
    }
    CHECK(p <= 9);
    CHECK(name != NULL);
    if (json_is_integer(v)) {
        CHECK(p == json_integer_value(v));
        CHECK(name[0] == 'p' && name[1] == (char)('0' + p) && name[2] == '\0');
    } else if (json_is_string(v)) {
        CHECK(strcmp(name, json_string_value(v)) == 0);
    } else {
        CHECK(v == NULL || json_is_boolean(v) || json_is_null(v));
    }
}

static void check_accepted(const submission *sub)
{
    CHECK(sub->doc != NULL && json_is_object(sub->doc));
    CHECK(sub->code != NULL && sub->code_len <= SUB_MAX_CODE_BYTES && !blank(sub->code, sub->code_len));
    CHECK(sub->language != NULL && pconfig_language_allowed(&settings, sub->language, sub->language_len));
    size_t el = strlen(sub->engine);
    CHECK(el >= 1 && el <= SUB_MAX_ENGINE);
    CHECK(sub->timeout >= SUB_MIN_TIMEOUT && sub->timeout <= SUB_MAX_TIMEOUT);
    CHECK(sub->priority >= 0 && sub->priority <= 9 && sub->priority_name != NULL);
    size_t il = strnlen(sub->eval_id, sizeof(sub->eval_id));
    CHECK(il < sizeof(sub->eval_id));
    CHECK(reference_valid_id(sub->eval_id, il));
    if (sub->eval_id_given) {
        const char *given = json_string_value(json_object_get(sub->doc, "eval_id"));
        CHECK(given && strcmp(given, sub->eval_id) == 0);
    } else {
        CHECK(strncmp(sub->eval_id, "eval_", 5) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    submission sub;
    sub_error err;
    memset(&err, 0, sizeof(err));

    if (submission_parse(body, size, &settings, &sub, &err) == 0) {
        check_accepted(&sub);
        check_priority(json_object_get(sub.doc, "priority"));
        submission_free(&sub);
        CHECK(sub.doc == NULL);
    } else {
        CHECK(sub.doc == NULL);
        CHECK(err.status == 400 || err.status == 415 || err.status == 422);
        CHECK(err.code != NULL);
        CHECK(memchr(err.message, '\0', sizeof(err.message)) != NULL);
    }

    /* The same text as any JSON value: submission_priority sees every kind
     * of value, not only what survives the earlier field checks. */
    json_t *any = json_loadb(body, size, JSON_DECODE_ANY, NULL);
    if (any) {
        check_priority(any);
        if (json_is_object(any)) {
            const char *k;
            json_t *v;
            json_object_foreach(any, k, v) check_priority(v);
        } else if (json_is_array(any)) {
            size_t i;
            json_t *v;
            json_array_foreach(any, i, v) check_priority(v);
        }
        json_decref(any);
    }

    /* The raw bytes as a path segment: /api/eval/{eval_id}/cancel etc. */
    CHECK(submission_valid_eval_id(body, size) == reference_valid_id(body, size));
    return 0;
}
