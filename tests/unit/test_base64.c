/* util_base64_decode: RFC 4648 vectors, the rules it shares with OpenSSL's
 * EVP_DecodeBlock (which the Celery decoders used before) and, on random
 * text mixing the alphabet, '=', blanks, line ends, '-' and other bytes,
 * the same result and bytes as EVP_DecodeBlock; round trips with
 * jw_base64. */
#include <stdlib.h>

#include <openssl/evp.h>

#include "jsonw.h"
#include "unit.h"
#include "util.h"

/* decoded text with the padding removed, as the callers count it */
static const char *decode(const char *in)
{
    static unsigned char out[256];
    size_t n = strlen(in);
    long len = util_base64_decode(out, in, n);
    if (len < 0) return "(invalid)";
    for (size_t i = n; i > 0 && in[i - 1] == '=' && len > 0; i--) len--;
    out[len] = '\0';
    return (const char *)out;
}

static void test_rfc4648_vectors(void)
{
    CHECK_STR(decode(""), "");
    CHECK_STR(decode("Zg=="), "f");
    CHECK_STR(decode("Zm8="), "fo");
    CHECK_STR(decode("Zm9v"), "foo");
    CHECK_STR(decode("Zm9vYg=="), "foob");
    CHECK_STR(decode("Zm9vYmE="), "fooba");
    CHECK_STR(decode("Zm9vYmFy"), "foobar");
    unsigned char out[8];
    CHECK_EQ_INT(util_base64_decode(out, "+/+/", 4), 3);
    CHECK(out[0] == 0xfb && out[1] == 0xff && out[2] == 0xbf);
}

/* What EVP_DecodeBlock does, so what the callers saw: 3 bytes per group
 * with '=' as zero bits; blanks before, and blanks, CR, LF and '-' after
 * are skipped; anything else is an error. */
static void test_openssl_rules(void)
{
    unsigned char out[16];
    CHECK_EQ_INT(util_base64_decode(out, "Zg==", 4), 3);
    CHECK(out[0] == 'f' && out[1] == 0 && out[2] == 0);
    CHECK_EQ_INT(util_base64_decode(out, "Zm=v", 4), 3); /* '=' inside: zero bits */
    CHECK_EQ_INT(util_base64_decode(out, " \tZm9v", 6), 3);
    CHECK_EQ_INT(util_base64_decode(out, "Zm9v \t\r\n--", 10), 3);
    CHECK_EQ_INT(util_base64_decode(out, "    ", 4), 0);
    CHECK_EQ_INT(util_base64_decode(out, "Zm9", 3), -1);   /* not whole groups */
    CHECK_EQ_INT(util_base64_decode(out, "Zm9\n", 4), -1); /* only past 3 characters */
    CHECK_EQ_INT(util_base64_decode(out, "\nZm9v", 5), -1);
    CHECK_EQ_INT(util_base64_decode(out, "Zm 9v", 5), -1);
    CHECK_EQ_INT(util_base64_decode(out, "Zm9v\n", 5), 3);
    CHECK_EQ_INT(util_base64_decode(out, "Zm-v", 4), -1);
    CHECK_EQ_INT(util_base64_decode(out, "Zm9_", 4), -1);  /* the URL alphabet is not base64 */
    CHECK_EQ_INT(util_base64_decode(out, "Zm9\xc3", 4), -1);
    CHECK_EQ_INT(util_base64_decode(out, "Zm\0v", 4), -1);
}

static void test_random_against_openssl(void)
{
    static const char pick[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                               "==== \t\r\n-_.\x01\x7f\x80\xff";
    unsigned char in[64], want[64], got[64];
    srand(4242);
    int differ = 0, valid = 0, invalid = 0;
    for (int round = 0; round < 200000; round++) {
        int n = rand() % 25;
        /* mostly the alphabet, so that many texts are valid */
        for (int i = 0; i < n; i++)
            in[i] = (unsigned char)(rand() % 8 ? pick[rand() % 64] : pick[rand() % (int)(sizeof(pick) - 1)]);
        int w = EVP_DecodeBlock(want, in, n);
        long g = util_base64_decode(got, (const char *)in, (size_t)n);
        if (w != g || (w > 0 && memcmp(want, got, (size_t)w) != 0)) {
            if (differ++ < 5) fprintf(stderr, "test_base64: %.*s: OpenSSL %d, ours %ld\n", n, (const char *)in, w, g);
        }
        if (w >= 0) valid++;
        else invalid++;
    }
    CHECK_EQ_INT(differ, 0);
    CHECK(valid > 10000);
    CHECK(invalid > 10000);
}

/* encoded by jw_base64, decoded back to the same bytes */
static void test_round_trip(void)
{
    unsigned char data[100], out[200];
    srand(99);
    int bad = 0;
    for (size_t n = 0; n <= sizeof(data); n++) {
        for (size_t i = 0; i < n; i++) data[i] = (unsigned char)rand();
        jsonw w;
        jw_init(&w, NULL, 0);
        jw_base64(&w, data, n);
        const char *text = jw_text(&w) + 1; /* inside the quotes */
        size_t len = jw_len(&w) - 2;
        long got = util_base64_decode(out, text, len);
        size_t pad = (3 - n % 3) % 3;
        if (got != (long)(len / 4 * 3) || (size_t)got - pad != n || memcmp(out, data, n) != 0) bad++;
        jw_free(&w);
    }
    CHECK_EQ_INT(bad, 0);
}

int main(void)
{
    RUN(test_rfc4648_vectors);
    RUN(test_openssl_rules);
    RUN(test_random_against_openssl);
    RUN(test_round_trip);
    UNIT_END();
}
