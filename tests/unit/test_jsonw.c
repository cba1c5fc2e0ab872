/* jsonw — the JSON writer of the submission path: the same text as
 * jansson's json_dumps(JSON_COMPACT) for every value jansson accepts, and
 * valid JSON for invalid UTF-8, which jansson refuses. */
#include <stdint.h>
#include <stdlib.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "jsonw.h"
#include "util.h"
#include "unit.h"

/* A small deterministic generator, so a failure can be replayed. */
static uint64_t rng = 0x243f6a8885a308d3ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* json_dumps of a string as jansson writes it; NULL when jansson refuses
 * the bytes (invalid UTF-8). */
static char *jansson_string(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return text;
}

/* The writer's text for one string (new, caller frees). */
static char *jw_string_text(const char *s, size_t n, size_t storage)
{
    char stack[64];
    jsonw w;
    jw_init(&w, storage ? stack : NULL, storage < sizeof(stack) ? storage : sizeof(stack));
    jw_string(&w, s, n);
    char *out = jw_detach(&w, NULL);
    jw_free(&w);
    return out;
}

static void test_structure(void)
{
    char stack[16];
    jsonw w;
    jw_init(&w, stack, sizeof(stack)); /* small: the text moves to the heap */
    jw_obj_open(&w);
    jw_lit_key(&w, "a");
    jw_arr_open(&w);
    jw_int(&w, 1);
    jw_obj_open(&w);
    jw_lit_key(&w, "b");
    jw_null(&w);
    jw_obj_close(&w);
    jw_arr_open(&w);
    jw_arr_close(&w);
    jw_bool(&w, true);
    jw_bool(&w, false);
    jw_arr_close(&w);
    jw_lit_key(&w, "c");
    jw_obj_open(&w);
    jw_obj_close(&w);
    jw_key(&w, "q\"k\n");
    jw_int(&w, -9223372036854775807LL - 1);
    jw_lit_key(&w, "r");
    jw_raw_value(&w, "[1,2]", 5);
    jw_lit_key(&w, "s");
    jw_cstring(&w, NULL);
    jw_obj_close(&w);
    CHECK(!jw_failed(&w));
    CHECK_STR(jw_text(&w),
              "{\"a\":[1,{\"b\":null},[],true,false],\"c\":{},\"q\\\"k\\n\":-9223372036854775808,\"r\":[1,2],\"s\":null}");
    size_t len = 0;
    char *text = jw_detach(&w, &len);
    CHECK_EQ_INT(len, strlen(text));
    json_t *back = json_loads(text, 0, NULL);
    CHECK(json_is_object(back) && json_object_size(back) == 5);
    json_decref(back);
    free(text);
    jw_free(&w);

    /* text that fits stays in the caller's storage; detach copies it */
    char room[64];
    jw_init(&w, room, sizeof(room));
    jw_arr_open(&w);
    jw_lit_string(&w, "x");
    jw_arr_close(&w);
    CHECK(jw_text(&w) == room);
    text = jw_detach(&w, &len);
    CHECK(text != room);
    CHECK_STR(text, "[\"x\"]");
    CHECK_EQ_INT(len, 5);
    free(text);
    jw_free(&w);

    /* reset keeps the buffer, forgets the text and the comma state */
    jw_init(&w, room, sizeof(room));
    jw_int(&w, 1);
    jw_reset(&w);
    jw_int(&w, 2);
    CHECK_STR(jw_text(&w), "2");
    jw_free(&w);
}

/* Every control character, quote, backslash, slash and DEL: the same bytes
 * as jansson. */
static void test_escapes_like_jansson(void)
{
    for (int c = 0; c < 0x80; c++) {
        char in[3] = {'a', (char)c, 'z'};
        char *mine = jw_string_text(in, 3, 0), *theirs = jansson_string(in, 3);
        CHECK_STR(mine, theirs);
        free(mine);
        free(theirs);
    }
    char *t = jw_string_text("\x01\x1f\b\f\n\r\t\"\\/\x7f", 11, 32);
    CHECK_STR(t, "\"\\u0001\\u001F\\b\\f\\n\\r\\t\\\"\\\\/\x7f\"");
    free(t);
    /* NUL inside a string (the length is given) */
    t = jw_string_text("a\0b", 3, 0);
    CHECK_STR(t, "\"a\\u0000b\"");
    free(t);
    /* long plain runs (the 8-byte scan) with one escape at each offset */
    for (size_t at = 0; at < 40; at++) {
        char in[41];
        memset(in, 'x', 40);
        in[at] = '"';
        in[40] = '\0';
        char *mine = jw_string_text(in, 40, 16), *theirs = jansson_string(in, 40);
        CHECK_STR(mine, theirs);
        free(mine);
        free(theirs);
    }
}

/* Valid UTF-8 passes through; each byte that does not start a valid
 * sequence becomes U+FFFD, so the text is still JSON. */
static void test_utf8(void)
{
    static const char *const valid[] = {
        "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xe2\x80\xa8\xe2\x80\xa9", "\xf4\x8f\xbf\xbf",
        "\xef\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac",
    };
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        char *mine = jw_string_text(valid[i], strlen(valid[i]), 0), *theirs = jansson_string(valid[i], strlen(valid[i]));
        CHECK(theirs != NULL);
        CHECK_STR(mine, theirs);
        free(mine);
        free(theirs);
    }
    static const struct {
        const char *in;
        const char *want; /* decoded */
    } bad[] = {
        {"a\x80z", "a\xef\xbf\xbdz"},                                  /* lone continuation */
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                      /* overlong NUL */
        {"\xc1\xbf", "\xef\xbf\xbd\xef\xbf\xbd"},                      /* overlong */
        {"\xe0\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},      /* overlong 3 bytes */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},      /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"\xf0\x80\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* overlong 4 bytes */
        {"x\xe2\x82", "x\xef\xbf\xbd\xef\xbf\xbd"},                     /* cut at the end */
        {"\xe2\x82x", "\xef\xbf\xbd\xef\xbf\xbdx"},                     /* cut in the middle */
        {"\xff\xfe", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf8\x88\x80\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(jansson_string(bad[i].in, strlen(bad[i].in)) == NULL); /* jansson refuses these */
        char *mine = jw_string_text(bad[i].in, strlen(bad[i].in), 0);
        json_t *back = mine ? json_loads(mine, JSON_DECODE_ANY, NULL) : NULL;
        CHECK(json_is_string(back));
        CHECK_STR(json_string_value(back), bad[i].want);
        json_decref(back);
        free(mine);
    }
}

/* Random bytes, biased toward the interesting ones: always valid JSON; when
 * jansson accepts the bytes, the same text, and it reads back to them. */
static void test_random_strings(void)
{
    static const unsigned char pool[] = {'a', 'Z', ' ', '"', '\\', '/', '\n', 0, 1, 0x1f, 0x7f, 0x80, 0xbf,
                                         0xc2, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xed, 0xa0, 0xf0, 0x9f, 0x98,
                                         0xf4, 0x90, 0xff};
    int agreed = 0;
    for (int round = 0; round < 20000; round++) {
        unsigned char in[48];
        size_t n = next_rand() % sizeof(in);
        for (size_t i = 0; i < n; i++) {
            uint64_t r = next_rand();
            in[i] = r % 3 ? (unsigned char)('a' + r % 26) : pool[(r >> 8) % sizeof(pool)];
        }
        char *mine = jw_string_text((const char *)in, n, round % 2 ? 64 : 0);
        json_error_t jerr;
        json_t *back = mine ? json_loads(mine, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr) : NULL;
        if (!json_is_string(back)) {
            CHECK(json_is_string(back)); /* report only failures: 20000 rounds */
            fprintf(stderr, "  not JSON: %s (%s)\n", mine ? mine : "(null)", jerr.text);
        }
        char *theirs = jansson_string((const char *)in, n);
        if (theirs) {
            agreed++;
            bool same = mine && strcmp(mine, theirs) == 0 && json_string_length(back) == n &&
                        memcmp(json_string_value(back), in, n) == 0;
            if (!same) CHECK_STR(mine, theirs);
        }
        free(theirs);
        json_decref(back);
        free(mine);
    }
    CHECK(agreed > 1000); /* the comparison with jansson did run */
}

/* Any tree: the same text as json_dumps, in the same key order. */
static void test_value_like_jansson(void)
{
    json_t *v = json_pack("{s:[i,I,f,f,f,b,b,n,s,[],{}], s:{s:s, s:{s:[s]}}, s:f, s:f, s:s#}", "list", 0,
                          (json_int_t)-9007199254740993LL, 0.1, -2.5, 1e300, 1, 0, "x\ty", "z", "q\"", "k",
                          "\xe2\x82\xac", "deep", "end", "when", 1795336950.25, "neg0", -0.0, "nul", "a\0b",
                          (size_t)3);
    CHECK(v != NULL);
    char *theirs = json_dumps(v, JSON_COMPACT);
    jsonw w;
    jw_init(&w, NULL, 0);
    jw_value(&w, v);
    CHECK_STR(jw_text(&w), theirs);
    jw_free(&w);
    free(theirs);
    json_decref(v);
    jw_init(&w, NULL, 0);
    jw_value(&w, NULL);
    CHECK_STR(jw_text(&w), "null");
    jw_free(&w);
}

static void check_real(double v)
{
    json_t *j = json_real(v);
    char *theirs = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    char stack[48];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_real(&w, v);
    if (!theirs || strcmp(jw_text(&w), theirs) != 0) {
        CHECK_STR(jw_text(&w), theirs);
        fprintf(stderr, "  value %.17g\n", v);
    }
    jw_free(&w);
    free(theirs);
    json_decref(j);
}

static void test_reals(void)
{
    static const double fixed[] = {0.0, -0.0, 1.0, 0.1, -2.5, 1e300, 1e-7, 1e17, 123456789012345678.0, 5e-324,
                                   1e9, 1e10, 9999999999.9999999, 1764505071.0, 1764505071.5, 1795336950.25,
                                   1764505071.0078125, 1000000000.00000005, 2147483647.9999999};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) check_real(fixed[i]);
    /* Unix times (the printf-free path), with every fraction bit pattern
     * likely: random 23-bit fractions, and exact ties at the 7th decimal */
    for (int i = 0; i < 100000; i++) {
        uint64_t r = next_rand();
        double sec = 1e9 + (double)(r % 9000000000ULL);
        check_real(sec + (double)((r >> 40) & 0x7fffff) / 8388608.0);
    }
    for (int k = 0; k < 64; k++) check_real(1764505071.0 + (double)(k * 2 + 1) * 0.00000005);
    for (int i = 0; i < 20000; i++) {
        uint64_t bits = next_rand();
        double d;
        memcpy(&d, &bits, sizeof(d));
        if (isfinite(d)) check_real(d);
    }
    /* JSON has no NaN or infinity: null, still JSON */
    jsonw w;
    jw_init(&w, NULL, 0);
    jw_arr_open(&w);
    jw_real(&w, INFINITY);
    jw_real(&w, NAN);
    jw_arr_close(&w);
    CHECK_STR(jw_text(&w), "[null,null]");
    jw_free(&w);
}

/* util_format_fixed is printf's %.*f, faster for Unix times. */
static void test_fixed(void)
{
    int differ = 0, checked = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t r = next_rand();
        double v = i % 4 == 0 ? (double)(r % 20000000000ULL) / 7.0
                   : i % 4 == 1 ? 1e9 + (double)(r % 9000000000ULL) + (double)((r >> 40) & 0x7fffff) / 8388608.0
                   : i % 4 == 2 ? 1764505071.0 + (double)(r % 1000000) * 0.0000005
                                : (double)(int64_t)r / 1e6;
        int d = (int)(r >> 60) % 8;
        char mine[32], theirs[64];
        size_t n = util_format_fixed(v, d, mine);
        snprintf(theirs, sizeof(theirs), "%.*f", d, v);
        checked++;
        if (strcmp(mine, theirs) != 0 || n != strlen(mine)) {
            if (differ++ < 5) fprintf(stderr, "  %.17g with %d decimals: %s, printf %s\n", v, d, mine, theirs);
        }
    }
    CHECK_EQ_INT(differ, 0);
    CHECK_EQ_INT(checked, 100000);
    char out[32];
    CHECK_EQ_INT(util_format_fixed(1795336950.25, 6, out), 17);
    CHECK_STR(out, "1795336950.250000");
    CHECK_EQ_INT(util_format_fixed(1764505071.0078125, 6, out), 17);
    CHECK_STR(out, "1764505071.007812"); /* an exact tie: half to even, as printf */
    CHECK_EQ_INT(util_format_fixed(1764505071.0234375, 6, out), 17);
    CHECK_STR(out, "1764505071.023438");
    CHECK_EQ_INT(util_format_ll(-9223372036854775807LL - 1, out), 20);
    CHECK_STR(out, "-9223372036854775808");
    CHECK_EQ_INT(util_format_ll(0, out), 1);
    CHECK_STR(out, "0");
}

static void test_base64(void)
{
    unsigned char data[100];
    for (size_t i = 0; i < sizeof(data); i++) data[i] = (unsigned char)next_rand();
    for (size_t n = 0; n <= sizeof(data); n++) {
        unsigned char want[200];
        int wl = EVP_EncodeBlock(want, data, (int)n);
        jsonw w;
        jw_init(&w, NULL, 0);
        jw_base64(&w, data, n);
        const char *t = jw_text(&w);
        bool ok = jw_len(&w) == (size_t)wl + 2 && t[0] == '"' && t[wl + 1] == '"' &&
                  memcmp(t + 1, want, (size_t)wl) == 0;
        if (!ok) {
            CHECK(ok);
            fprintf(stderr, "  length %zu: %s, want %s\n", n, t, want);
        }
        jw_free(&w);
    }
    jsonw w;
    jw_init(&w, NULL, 0);
    jw_arr_open(&w);
    jw_base64(&w, "ab", 2);
    jw_base64(&w, "abc", 3);
    jw_base64(&w, "", 0);
    jw_arr_close(&w);
    CHECK_STR(jw_text(&w), "[\"YWI=\",\"YWJj\",\"\"]");
    jw_free(&w);
}

/* Big values leave the storage for the heap and stay whole. */
static void test_growth(void)
{
    size_t n = 3 * 1024 * 1024;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = i % 1000 == 999 ? '\n' : (char)('a' + i % 26);
    char stack[128];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_arr_open(&w);
    jw_string(&w, big, n);
    jw_arr_close(&w);
    CHECK(!jw_failed(&w));
    json_t *back = json_loadb(jw_text(&w), jw_len(&w), 0, NULL);
    CHECK(json_array_size(back) == 1);
    json_t *s = json_array_get(back, 0);
    CHECK(json_string_length(s) == n && memcmp(json_string_value(s), big, n) == 0);
    json_decref(back);
    jw_free(&w);
    free(big);
}

int main(void)
{
    RUN(test_structure);
    RUN(test_escapes_like_jansson);
    RUN(test_utf8);
    RUN(test_random_strings);
    RUN(test_value_like_jansson);
    RUN(test_reals);
    RUN(test_fixed);
    RUN(test_base64);
    RUN(test_growth);
    UNIT_END();
}
