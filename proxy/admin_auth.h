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

/* Whether a read may show the sensitive fields (DLQ entries' args, kwargs
 * and message, shadow mismatches' outputs):
 *   1  `Authorization: Bearer <READ_TOKEN or ADMIN_TOKEN>`: show them;
 *   0  no bearer token (no Authorization, or another scheme such as a
 *      front proxy's Basic): answer with them left out, saying so;
 *  -1  a bearer token that is neither (or none is configured): it replied
 *      403 forbidden itself, never a silent redaction. */
int px_read_access(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);

/* The note a redacted reply carries (its "redacted" field). */
#define PX_REDACTED_NOTE "send Authorization: Bearer <READ_TOKEN or ADMIN_TOKEN> to see "

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
