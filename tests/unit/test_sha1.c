/* sha1: the FIPS 180-4 example vectors, padding edges, input split at
 * every point, OpenSSL's SHA1 on random inputs, and the script names
 * rclient sends with EVALSHA. */
#include <stdlib.h>

#include <openssl/sha.h>

#include "rclient.h"
#include "sha1.h"
#include "unit.h"

static void hex(const unsigned char d[SHA1_DIGEST_LENGTH], char out[41])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA1_DIGEST_LENGTH; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[40] = '\0';
}

static const char *digest_of(const void *data, size_t n)
{
    static char out[41];
    unsigned char d[SHA1_DIGEST_LENGTH];
    sha1(data, n, d);
    hex(d, out);
    return out;
}

/* FIPS 180-4 examples (NIST's SHA1.pdf) and the long-message vector */
static void test_known_vectors(void)
{
    CHECK_STR(digest_of("abc", 3), "a9993e364706816aba3e25717850c26c9cd0d89d");
    CHECK_STR(digest_of("", 0), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    CHECK_STR(digest_of(NULL, 0), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK_STR(digest_of(two_blocks, sizeof(two_blocks) - 1), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    static const char four_blocks[] = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    CHECK_STR(digest_of(four_blocks, sizeof(four_blocks) - 1), "a49b2446a02c645bf419f995b67091253a04a259");
    CHECK_STR(digest_of("The quick brown fox jumps over the lazy dog", 43),
              "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");

    /* one million 'a', fed in uneven pieces */
    static char a[1000];
    memset(a, 'a', sizeof(a));
    sha1_ctx c;
    sha1_init(&c);
    size_t left = 1000000;
    for (size_t piece = 1; left > 0; piece = piece % 997 + 1) {
        size_t k = piece < left ? piece : left;
        sha1_update(&c, a, k);
        left -= k;
    }
    unsigned char d[SHA1_DIGEST_LENGTH];
    char h[41];
    sha1_final(&c, d);
    hex(d, h);
    CHECK_STR(h, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

/* Lengths around the padding boundaries (55, 56, 63, 64 bytes mod 64),
 * each hashed in one call and split in two at every point. */
static void test_boundaries_and_splits(void)
{
    unsigned char buf[200], want[SHA1_DIGEST_LENGTH], got[SHA1_DIGEST_LENGTH];
    for (size_t i = 0; i < sizeof(buf); i++) buf[i] = (unsigned char)(i * 7 + 3);
    int bad_one = 0, bad_split = 0;
    for (size_t n = 0; n <= sizeof(buf); n++) {
        SHA1(buf, n, want);
        sha1(buf, n, got);
        if (memcmp(want, got, sizeof(want)) != 0) bad_one++;
        for (size_t cut = 0; cut <= n; cut++) {
            sha1_ctx c;
            sha1_init(&c);
            sha1_update(&c, buf, cut);
            sha1_update(&c, buf + cut, n - cut);
            sha1_final(&c, got);
            if (memcmp(want, got, sizeof(want)) != 0) bad_split++;
        }
    }
    CHECK_EQ_INT(bad_one, 0);
    CHECK_EQ_INT(bad_split, 0);
}

static void test_random_against_openssl(void)
{
    unsigned char want[SHA1_DIGEST_LENGTH], got[SHA1_DIGEST_LENGTH];
    static unsigned char buf[70000];
    srand(12345);
    int bad = 0;
    for (int round = 0; round < 300; round++) {
        size_t n = round < 250 ? (size_t)(rand() % 300) : (size_t)(rand() % (int)sizeof(buf));
        for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)rand();
        SHA1(buf, n, want);
        sha1(buf, n, got);
        if (memcmp(want, got, sizeof(want)) != 0) {
            if (bad++ == 0) fprintf(stderr, "test_sha1: differs from OpenSSL for %zu bytes (round %d)\n", n, round);
        }
    }
    CHECK_EQ_INT(bad, 0);
}

/* the name Redis gives a script (SCRIPT LOAD "return 1" in its docs) */
static void test_script_name(void)
{
    rclient_script s;
    rclient_script_init(&s, "return 1");
    CHECK_STR(s.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}

int main(void)
{
    RUN(test_known_vectors);
    RUN(test_script_name);
    RUN(test_boundaries_and_splits);
    RUN(test_random_against_openssl);
    UNIT_END();
}
