/* admin_auth — the bearer token that guards admin writes (DESIGN §2
 * ADMIN_TOKEN, §4).  Tokens are compared in constant time and never logged. */
#ifndef TURNOUT_ADMIN_AUTH_H
#define TURNOUT_ADMIN_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "pmetrics.h"

struct evhttp_request;
typedef struct proxy proxy;

/* True when the request carries `Authorization: Bearer <ADMIN_TOKEN>`.
 * Otherwise replies itself (exactly once) and returns false:
 *   ADMIN_TOKEN empty           → 403 admin_disabled
 *   header missing or malformed → 401 unauthorized + WWW-Authenticate: Bearer
 *   wrong token                 → 403 forbidden */
bool px_admin_authorized(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);

/* Splits an Authorization header value "Bearer <token>" (scheme matched
 * case-insensitively, surrounding blanks ignored).  On success *token
 * points into `header` (borrowed) and *len is its length (> 0).  False when
 * the header is NULL, another scheme, or the token is empty or has blanks. */
bool admin_auth_bearer(const char *header, const char **token, size_t *len);

/* Constant-time equality: both sides are hashed with SHA-256 and the
 * digests compared with CRYPTO_memcmp, so neither the length nor the first
 * differing byte shows in the timing. */
bool admin_auth_token_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif
