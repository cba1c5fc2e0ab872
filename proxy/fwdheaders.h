/* fwdheaders — which headers cross the proxy on the pass-through, both
 * ways (RFC 9110 §7.6):
 *
 *  - the hop-by-hop set (Connection, Keep-Alive, Proxy-Connection, TE,
 *    Trailer, Transfer-Encoding, Upgrade, Proxy-Authorization,
 *    Proxy-Authenticate) and every header a Connection header names are
 *    this hop's only and are dropped; Host, Content-Length and Expect of a
 *    request are the client library's to write;
 *  - X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto (and, with
 *    FORWARDED_HEADER, RFC 7239 Forwarded) are the proxy's: a client's own
 *    are replaced, unless TRUST_FORWARDED_HEADERS names them, when they are
 *    kept and extended (X-Forwarded-For and Forwarded get the client's
 *    address appended, in one header);
 *  - a response keeps its Content-Length unless it also had a
 *    Transfer-Encoding (RFC 9112 §6.3), so HEAD and 304 answers keep theirs.
 *
 * An accepted Upgrade (WebSocket) keeps Upgrade and sends Connection:
 * Upgrade on both legs. */
#ifndef TURNOUT_FWDHEADERS_H
#define TURNOUT_FWDHEADERS_H

#include <stdbool.h>
#include <stddef.h>

struct evhttp_request;
struct evkeyvalq;
typedef struct proxy_settings proxy_settings;

/* The request header lines ("Name: value", NULL-terminated, each and the
 * array malloc'd; fwd_free_lines) to send upstream for req, which came
 * from `peer` over TLS or not.  upgrade: the request is passed on as an
 * Upgrade.  NULL when out of memory. */
char **fwd_request_headers(const proxy_settings *cfg, struct evhttp_request *req, const char *peer, bool tls,
                           bool upgrade);
void fwd_free_lines(char **lines);

/* True when req asks for a protocol upgrade (an Upgrade header and
 * "upgrade" among its Connection options); *proto gets the Upgrade value. */
bool fwd_wants_upgrade(struct evhttp_request *req, const char **proto);

/* "GET", "POST", ... */
const char *fwd_method_name(int evhttp_cmd);

typedef struct fwd_response {
    bool content_length; /* kept the upstream's Content-Length */
    bool content_type;   /* the upstream sent a Content-Type */
} fwd_response;

/* Adds the upstream's response header lines ("Name: value") that cross to
 * the client to `out`.  upgrade: a 101 whose Upgrade header is kept. */
void fwd_response_headers(const char *const *lines, size_t n, struct evkeyvalq *out, bool upgrade,
                          fwd_response *info);

#endif
