/* util_utf8_prefix, util_utf8_trim_end, util_snprintf: a cut never ends
 * inside a character, and whatever is cut stays valid UTF-8 (checked with
 * jansson, which refuses anything else). */
#include <stdlib.h>

#include <jansson.h>

#include "unit.h"
#include "util.h"

static bool valid_utf8(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static void test_prefix(void)
{
    CHECK_EQ_INT(util_utf8_prefix("abc", 10), 3);
    CHECK_EQ_INT(util_utf8_prefix("abc", 3), 3);
    CHECK_EQ_INT(util_utf8_prefix("abcd", 3), 3);
    CHECK_EQ_INT(util_utf8_prefix("", 3), 0);
    CHECK_EQ_INT(util_utf8_prefix(NULL, 3), 0);
    /* é is 2 bytes: "aé" cut at 2 bytes shows "a" */
    CHECK_EQ_INT(util_utf8_prefix("a\xC3\xA9", 2), 1);
    CHECK_EQ_INT(util_utf8_prefix("a\xC3\xA9", 3), 3);
    CHECK_EQ_INT(util_utf8_prefix("a\xC3\xA9z", 3), 3);
    /* € is 3 bytes, 𝄞 4 */
    CHECK_EQ_INT(util_utf8_prefix("\xE2\x82\xAC\xE2\x82\xAC", 4), 3);
    CHECK_EQ_INT(util_utf8_prefix("\xE2\x82\xAC\xE2\x82\xAC", 5), 3);
    CHECK_EQ_INT(util_utf8_prefix("\xE2\x82\xAC\xE2\x82\xAC", 6), 6);
    CHECK_EQ_INT(util_utf8_prefix("\xF0\x9D\x84\x9E!", 3), 0);
    CHECK_EQ_INT(util_utf8_prefix("\xF0\x9D\x84\x9E!", 4), 4);
    /* invalid input is not made worse, nor scanned without end */
    CHECK_EQ_INT(util_utf8_prefix("\x80\x80\x80\x80\x80\x80", 5), 5);
}

static void test_every_cut_of_mixed_text(void)
{
    const char *s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9D\x84\x9E" "b\xC3\xA9\xC3\xA9";
    size_t len = strlen(s);
    for (size_t max = 0; max <= len + 2; max++) {
        size_t n = util_utf8_prefix(s, max);
        CHECK(n <= max);
        CHECK(n + 3 >= (max < len ? max : len)); /* never more than one character lost */
        CHECK(valid_utf8(s, n));
        char buf[64];
        char fmt_out[64];
        snprintf(fmt_out, sizeof(fmt_out), "<%.*s>", UTF8_CUT(s, max));
        CHECK(valid_utf8(fmt_out, strlen(fmt_out)));
        if (max + 1 <= sizeof(buf)) {
            size_t w = util_snprintf(buf, max + 1, "%s", s);
            CHECK(w <= max);
            CHECK_EQ_INT(strlen(buf), w);
            CHECK(valid_utf8(buf, w));
        }
    }
}

static void test_thirty_e_acute(void)
{
    char s[61];
    for (int i = 0; i < 30; i++) memcpy(s + 2 * i, "\xC3\xA9", 2);
    s[60] = '\0';
    for (size_t max = 1; max < 60; max += 2) {
        CHECK_EQ_INT(util_utf8_prefix(s, max), max - 1);
    }
    char msg[80];
    size_t n = util_snprintf(msg, 40, "language \"%s\"", s);
    CHECK(n < 40);
    CHECK(valid_utf8(msg, n));
}

static void test_snprintf_fits(void)
{
    char buf[16];
    CHECK_EQ_INT(util_snprintf(buf, sizeof(buf), "%d-%s", 42, "ok"), 5);
    CHECK_STR(buf, "42-ok");
    CHECK_EQ_INT(util_snprintf(buf, 1, "%s", "x"), 0);
    CHECK_STR(buf, "");
}

int main(void)
{
    RUN(test_prefix);
    RUN(test_every_cut_of_mixed_text);
    RUN(test_thirty_e_acute);
    RUN(test_snprintf_fits);
    UNIT_END();
}
