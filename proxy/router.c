#include "router.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "util.h"

const char *const route_path_names[PATH_COUNT] = {"legacy", "new", "none"};
const char *const route_reason_names[REASON_COUNT] = {"forced", "disabled", "percentage", "fallback"};

/* SHA-256 through one fetched algorithm and one reused context: the
 * one-shot SHA256() fetches the algorithm and allocates a context on every
 * call, which cost more than the hash itself.  One thread, so static. */
static void sha256(const unsigned char *data, size_t n, unsigned char md[SHA256_DIGEST_LENGTH])
{
    static EVP_MD *alg;
    static EVP_MD_CTX *ctx;
    if (!alg) alg = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!ctx) ctx = EVP_MD_CTX_new();
    if (!alg || !ctx || !EVP_DigestInit_ex2(ctx, alg, NULL) || !EVP_DigestUpdate(ctx, data, n) ||
        !EVP_DigestFinal_ex(ctx, md, NULL))
        SHA256(data, n, md);
}

int route_bucket(const char *salt, const char *key, size_t keylen)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char stackbuf[1024], *buf = stackbuf;
    size_t saltlen = strlen(salt), n = saltlen + 1 + keylen;
    /* Salt and key are bounded by config and header limits, so the heap is
     * the rare case; if even that fails, hash the key alone (still stable). */
    if (n > sizeof(stackbuf) && !(buf = malloc(n))) {
        sha256((const unsigned char *)key, keylen, md);
    } else {
        memcpy(buf, salt, saltlen);
        buf[saltlen] = ':';
        memcpy(buf + saltlen + 1, key, keylen);
        sha256((const unsigned char *)buf, n, md);
        if (buf != stackbuf) free(buf);
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | md[i];
    return (int)(v % ROUTE_BUCKETS);
}

/* xoshiro-style generators need a seed; splitmix64 is small and good enough
 * for traffic splitting (not for secrets). */
static uint64_t rng_state;

int route_seed(void)
{
    return util_random(&rng_state, sizeof(rng_state));
}

static uint64_t splitmix64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

route_decision route_decide(const route_state *st, const char *key, size_t keylen)
{
    route_decision d = {PATH_LEGACY, REASON_FORCED, -1};
    if (st->force_legacy) return d;
    if (!st->enabled) {
        d.reason = REASON_DISABLED;
        return d;
    }
    int threshold = (int)lround(st->percentage * ROUTE_BUCKETS);
    d.reason = REASON_PERCENTAGE;
    /* 2^64 mod 10000 leaves a bias below 1e-15: irrelevant for a split. */
    d.bucket = st->sticky ? route_bucket(st->salt, key, keylen) : (int)(splitmix64() % ROUTE_BUCKETS);
    d.path = d.bucket < threshold ? PATH_NEW : PATH_LEGACY;
    return d;
}
