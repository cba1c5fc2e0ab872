/* fwdauth — forward auth (nginx auth_request, Traefik ForwardAuth, Envoy
 * ext_authz).  With AUTH_URL set, every request to an endpoint turnout
 * answers itself — except the probes /healthz, /readyz and /metrics — is
 * first checked by a GET to AUTH_URL carrying the client's Authorization
 * and Cookie headers and X-Forwarded-Method, -Uri, -For, -Host, -Proto:
 *
 *   2xx        the request goes on to its endpoint, with the auth answer's
 *              AUTH_RESPONSE_HEADERS copied into it (a client's own copies
 *              of those names are always removed first, so none can be
 *              forged); AUTH_STICKY_HEADER names the one that becomes the
 *              submission's sticky key (X-Turnout-Sticky-Key);
 *   401, 403   passed back to the client as they came: status, body,
 *              Content-Type, WWW-Authenticate, Set-Cookie, Location;
 *   otherwise  (any other status, no answer, AUTH_TIMEOUT_MS passed)
 *              503 auth_unavailable: fail closed.
 *
 * Decisions (allowed with their headers, denied with their answer; never
 * an error) are kept AUTH_CACHE_TTL_S seconds (0: not kept) in a table of
 * AUTH_CACHE_SLOTS entries keyed by the SHA-256 of the Authorization and
 * Cookie values, the method and the target (the auth server may decide on
 * them): credentials themselves are never stored.  A request with
 * neither is decided by the auth server each time.  Counted in
 * turnout_auth_requests_total{result}.  Paths passed through to
 * UPSTREAM_API_URL are not checked: the API behind does its own. */
#ifndef TURNOUT_FWDAUTH_H
#define TURNOUT_FWDAUTH_H

#include <stdbool.h>

#include "endpoints.h"

struct evhttp_request;
typedef struct proxy proxy;
typedef struct fwdauth fwdauth;

#define AUTH_CACHE_SLOTS 4096

/* NULL when AUTH_URL is empty, or out of memory (then *oom). */
fwdauth *fwdauth_new(proxy *p, bool *oom);
void fwdauth_free(fwdauth *a);

/* Does a request to `path` go through the check? */
bool fwdauth_applies(const fwdauth *a, const char *path);

/* Checks req, then runs e's handler (or answers the refusal itself). */
void fwdauth_check(fwdauth *a, struct evhttp_request *req, const endpoint *e, const char *path, double t0);

#endif
