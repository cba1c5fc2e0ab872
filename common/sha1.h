/* sha1 — SHA-1 (FIPS 180-4, section 6.1), for the names Redis gives Lua
 * scripts (EVALSHA).  Not for anything that needs collision resistance. */
#ifndef TURNOUT_SHA1_H
#define TURNOUT_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define SHA1_DIGEST_LENGTH 20

typedef struct sha1_ctx {
    uint32_t h[5];
    uint64_t total;          /* bytes hashed so far */
    unsigned char block[64]; /* a partial block waiting for more input */
    size_t used;
} sha1_ctx;

void sha1_init(sha1_ctx *c);
void sha1_update(sha1_ctx *c, const void *data, size_t n);
/* Writes the digest; c must be initialised again before reuse. */
void sha1_final(sha1_ctx *c, unsigned char out[SHA1_DIGEST_LENGTH]);

/* The digest of data[0..n) in one call. */
void sha1(const void *data, size_t n, unsigned char out[SHA1_DIGEST_LENGTH]);

#endif
