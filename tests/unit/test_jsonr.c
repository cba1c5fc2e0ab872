/* jsonr against jansson's own parser (json_loadb, JSON_DECODE_ANY): the same
 * verdict (accept or refuse) and, when accepted, an equal tree — on
 * hand-picked cases, on Celery envelopes, and on many random and mutated
 * inputs. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <jansson.h>

#include "jsonr.h"
#include "unit.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static int disagreements;

/* Both parsers on buf; counts (and shows the first few) disagreements. */
static void same(const char *buf, size_t len)
{
    char err[160];
    json_error_t jerr;
    json_t *a = jsonr_loadb(buf, len, err);
    json_t *b = json_loadb(buf, len, JSON_DECODE_ANY, &jerr);
    bool ok = (!a && !b) || (a && b && json_equal(a, b));
    /* json_equal compares reals by value; also check the integer/real kind */
    if (ok && a && json_typeof(a) != json_typeof(b)) ok = false;
    if (!ok && ++disagreements <= 5)
        fprintf(stderr, "jsonr and jansson disagree on %zu bytes: \"%.*s\" (jsonr: %s, jansson: %s)\n", len,
                (int)(len < 80 ? len : 80), buf, a ? "accepts" : err, b ? "accepts" : jerr.text);
    if (!a) CHECK(err[0] != '\0');
    json_decref(a);
    json_decref(b);
}

static void same_s(const char *s) { same(s, strlen(s)); }

static void test_cases(void)
{
    static const char *const cases[] = {
        "{}", "[]", "{\"a\":1}", "[1,2,3]", " \t\r\n[ 1 , 2 ]\n", "\"x\"", "1", "-0", "0.5", "-1.25e+3",
        "1E2", "1e-400", "1e400", "-1e400", "9223372036854775807", "-9223372036854775808",
        "9223372036854775808", "-9223372036854775809", "01", "1.", ".5", "+1", "-", "1e", "1e+",
        "true", "false", "null", "tru", "nul", "truex", "[true,false,null]", "{\"a\":}", "{\"a\" 1}",
        "{a:1}", "{\"a\":1,}", "[1,]", "[,1]", "[1 2]", "{\"a\":1 \"b\":2}", "", "   ", "[", "{", "]",
        "\"abc", "\"a\\\"b\"", "\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u00e9\\u4e2d\"", "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83dx\"", "\"\\u0000\"", "\"\\u00\"", "\"\\x\"", "\"a\tb\"",
        "\"\xc3\xa9\"", "\"\xe2\x82\xac\"", "\"\xf0\x9f\x98\x80\"", "\"\xc3\"", "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xff\"", "\"\x7f\"", "{\"a\":1,\"a\":2}",
        "{\"\\u00e9\":[{\"x\":[[]]}]}", "[1]x", "[1] ", "{\"k\":\"v\"}garbage", "[1.5,-2,3e2,\"s\",{}]",
        "[\"\\ud800\\udc00\"]", "\"\\uDBFF\\uDFFF\"", "[0.1,0.2,1e308,2.2250738585072014e-308]",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) same_s(cases[i]);
    same("[1,\0]", 5);
    same("\"a\0b\"", 5);
    CHECK_EQ_INT(disagreements, 0);
}

static void test_depth(void)
{
    size_t n = JSONR_MAX_DEPTH + 5;
    char *buf = malloc(2 * n);
    for (size_t d = JSONR_MAX_DEPTH - 1; d <= JSONR_MAX_DEPTH + 1; d++) {
        memset(buf, '[', d);
        memset(buf + d, ']', d);
        same(buf, 2 * d);
    }
    free(buf);
    CHECK_EQ_INT(disagreements, 0);
}

static const char envelope[] =
    "{\"body\":\"W1siZXZhbF8xIiwgInByaW50KDEpIiwgInB5dGhvbiJdLCB7InRpbWVvdXQiOiAzMH0sIHsiY2FsbGJhY2tzIjogbnVs"
    "bCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d\",\"content-encoding\":\"utf-8\","
    "\"content-type\":\"application/json\",\"headers\":{\"lang\":\"py\",\"task\":\"tasks.evaluate_code\","
    "\"id\":\"celery-eval_1\",\"shadow\":null,\"eta\":null,\"expires\":null,\"group\":null,\"group_index\":null,"
    "\"retries\":0,\"timelimit\":[null,null],\"root_id\":\"celery-eval_1\",\"parent_id\":null,"
    "\"argsrepr\":\"('eval_1', 'print(1)', 'python')\",\"kwargsrepr\":\"{'timeout': 30}\","
    "\"origin\":\"gen1@host\",\"ignore_result\":false,\"turnout_first_failure_at\":1764500000.123456},"
    "\"properties\":{\"correlation_id\":\"celery-eval_1\",\"reply_to\":\"5d2e\",\"delivery_mode\":2,"
    "\"delivery_info\":{\"exchange\":\"\",\"routing_key\":\"evaluation\"},\"priority\":3,"
    "\"body_encoding\":\"base64\",\"delivery_tag\":\"6f1c3b2a-0e4d-4c5e-9a8b-7c6d5e4f3a2b\"}}";

static void test_envelope_and_mutations(void)
{
    size_t len = sizeof(envelope) - 1;
    same(envelope, len);
    char err[160];
    json_t *e = jsonr_loadb(envelope, len, err);
    CHECK(json_is_object(e));
    CHECK_STR(json_string_value(json_object_get(json_object_get(e, "headers"), "id")), "celery-eval_1");
    CHECK(json_is_real(json_object_get(json_object_get(e, "headers"), "turnout_first_failure_at")));
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(e, "properties"), "priority")), 3);
    json_decref(e);
    /* every truncation, and random single-byte changes */
    for (size_t n = 0; n < len; n++) same(envelope, n);
    char *m = malloc(len);
    static const char alphabet[] = "{}[],:\"\\ 0123456789.eE+-tfnulr\x01\x7f\xc3\xa9\xff";
    for (int i = 0; i < 20000; i++) {
        memcpy(m, envelope, len);
        int k = 1 + (int)rnd(3);
        for (int j = 0; j < k; j++) m[rnd((unsigned)len)] = alphabet[rnd(sizeof(alphabet) - 1)];
        same(m, len);
    }
    free(m);
    CHECK_EQ_INT(disagreements, 0);
}

/* Random documents written by jansson (with escapes, unicode, reals), read back. */
static json_t *random_value(int depth)
{
    switch (depth > 4 ? rnd(4) : rnd(7)) {
    case 0: return json_integer((json_int_t)rnd(2000000) - 1000000);
    case 1: return json_real((double)rnd(1000000) / (double)(1 + rnd(1000)) * (rnd(2) ? 1e-5 : 1e5));
    case 2: {
        char s[24];
        size_t n = rnd(sizeof(s));
        for (size_t i = 0; i < n; i++) s[i] = (char)(1 + rnd(126));
        return json_stringn(s, n);
    }
    case 3: return rnd(3) == 0 ? json_null() : json_boolean(rnd(2));
    case 4: return json_string("\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\"\\/\n");
    case 5: {
        json_t *a = json_array();
        for (unsigned i = rnd(5); i > 0; i--) json_array_append_new(a, random_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (unsigned i = rnd(5); i > 0; i--) {
            char k[8];
            snprintf(k, sizeof(k), "k%u", rnd(10));
            json_object_set_new(o, k, random_value(depth + 1));
        }
        return o;
    }
    }
}

static void test_random_documents(void)
{
    for (int i = 0; i < 5000; i++) {
        json_t *v = random_value(0);
        char *text = json_dumps(v, JSON_ENCODE_ANY | (rnd(2) ? JSON_COMPACT : JSON_INDENT(2)) |
                                       (rnd(2) ? JSON_ENSURE_ASCII : 0));
        if (text) {
            same_s(text);
            char err[160];
            json_t *back = jsonr_loadb(text, strlen(text), err);
            CHECK(back && json_equal(back, v));
            json_decref(back);
        }
        free(text);
        json_decref(v);
    }
    CHECK_EQ_INT(disagreements, 0);
}

static void test_error_names_the_place(void)
{
    char err[160];
    CHECK(jsonr_loadb("[1, 2, x]", 9, err) == NULL);
    CHECK_CONTAINS(err, "at byte 7");
    CHECK(jsonr_loadb("{\"a\": \"\xff\"}", 10, err) == NULL);
    CHECK_CONTAINS(err, "invalid UTF-8");
    CHECK(jsonr_loadb(NULL, 0, err) == NULL);
    /* jansson drops a NUL right after a number or literal; jsonr does not (jsonr.h) */
    CHECK(jsonr_loadb("null\0", 5, err) == NULL);
    CHECK(jsonr_loadb("1\0", 2, err) == NULL);
    CHECK(err[0] != '\0');
}

int main(void)
{
    RUN(test_cases);
    RUN(test_depth);
    RUN(test_envelope_and_mutations);
    RUN(test_random_documents);
    RUN(test_error_names_the_place);
    UNIT_END();
}
