/* xsite — what a browser on another site may not make the proxy do.
 *
 * Two checks in on_request, before any handler:
 *   - the Host a request names must be one of ALLOWED_HOSTS (empty: any),
 *     for every request, owned or passed through: a DNS-rebound name
 *     pointing at the proxy is refused (421 host_not_allowed);
 *   - a state-changing request (any method but GET, HEAD, OPTIONS) to an
 *     endpoint the proxy owns is refused when a browser sent it from
 *     another origin (403 cross_origin: its Origin is neither the proxy's
 *     own, scheme + Host, nor one of ALLOWED_ORIGINS; or Sec-Fetch-Site
 *     says cross-site or same-site without such an Origin), and its body,
 *     if any, must be declared Content-Type: application/json (415
 *     unsupported_media_type): a page can send text/plain or a form
 *     without asking, never JSON.
 * A client that sends neither Origin nor Sec-Fetch-Site (curl, SDKs) is
 * not a browser and passes.  Each refusal is counted in
 * turnout_rejected_requests_total (reason host, cross_origin, media_type).
 * The settings are read on every request, so a reload takes them at once. */
#ifndef TURNOUT_XSITE_H
#define TURNOUT_XSITE_H

#include <stdbool.h>
#include <stddef.h>

#include "pmetrics.h"

struct evhttp_request;
typedef struct proxy proxy;

/* True when the request's Host is allowed; else it answered (421). */
bool xsite_host_ok(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);

/* For an endpoint the proxy owns: true when the request may go on; else
 * it answered (403 cross_origin or 415 unsupported_media_type). */
bool xsite_write_ok(proxy *p, struct evhttp_request *req, enum pm_route route, double t0);

/* ---- the pure parts, for the unit tests ---- */

/* True when `host` (a Host header value: name or [v6], optional :port) is
 * in the comma list `allowed` (exact names, case ignored, ".example.com"
 * for it and every name under it).  An empty list allows every host; a
 * malformed Host never matches a list. */
bool xsite_host_allowed(const char *allowed, const char *host);

/* True when the Origin header value `origin` is the proxy's own origin
 * (`tls` ? https : http, and the Host header `host`, default ports
 * ignored) or one of the comma list `allowed`.  "null" never is. */
bool xsite_origin_allowed(const char *allowed, const char *origin, const char *host, bool tls);

/* True when `origin` is one of the comma list `allowed` (scheme and host
 * case ignored, default ports ignored). */
bool xsite_origin_listed(const char *allowed, const char *origin);

/* True when a Content-Type value is application/json, parameters allowed
 * ("application/json; charset=utf-8"), case ignored.  NULL is false. */
bool xsite_is_json(const char *content_type);

#endif
