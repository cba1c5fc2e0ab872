#include "xsite.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "pserver.h"
#include "reply.h"
#include "util.h"

/* ---------- the pure parts ---------- */

/* A host and port split from "name", "name:port", "[v6]" or "[v6]:port". */
typedef struct hostport {
    const char *host; /* without brackets or a final dot */
    size_t hlen;
    long port;        /* -1: none given */
} hostport;

static bool host_char(char c, bool v6)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c == '.' || c == '-' || c == '_' || (v6 && (c == ':' || c == '%'));
}

static bool split_hostport(const char *s, size_t n, hostport *out)
{
    const char *end = s + n, *h = s, *hend, *after;
    bool v6 = n > 0 && s[0] == '[';
    if (n == 0) return false;
    if (v6) {
        const char *rb = memchr(s, ']', n);
        if (!rb || rb == s + 1) return false;
        h = s + 1;
        hend = rb;
        after = rb + 1;
    } else {
        const char *colon = memchr(s, ':', n);
        hend = colon ? colon : end;
        after = hend;
    }
    out->port = -1;
    if (after < end) {
        if (*after != ':' || after + 1 == end || end - after > 6) return false;
        long port = 0;
        for (const char *c = after + 1; c < end; c++) {
            if (*c < '0' || *c > '9') return false;
            port = port * 10 + (*c - '0');
        }
        if (port < 1 || port > 65535) return false;
        out->port = port;
    }
    if (!v6 && hend > h && hend[-1] == '.') hend--; /* "example.com." is example.com */
    if (hend == h) return false;
    for (const char *c = h; c < hend; c++)
        if (!host_char(*c, v6)) return false;
    out->host = h;
    out->hlen = (size_t)(hend - h);
    return true;
}


bool xsite_host_allowed(const char *allowed, const char *host)
{
    if (!allowed || !*allowed) return true;
    hostport hp;
    if (!host || !split_hostport(host, strlen(host), &hp)) return false;
    const char *cur = allowed, *it;
    size_t il;
    while (util_list_item(&cur, &it, &il)) {
        if (il >= 2 && it[0] == '[' && it[il - 1] == ']') {
            it++;
            il -= 2;
        } else if (il > 1 && it[il - 1] == '.') {
            il--;
        }
        if (il > 1 && it[0] == '.') { /* the domain itself and every name under it */
            if (hp.hlen == il - 1 && strncasecmp(hp.host, it + 1, il - 1) == 0) return true;
            if (hp.hlen > il && strncasecmp(hp.host + hp.hlen - il, it, il) == 0) return true;
        } else if (il == hp.hlen && strncasecmp(hp.host, it, il) == 0) {
            return true;
        }
    }
    return false;
}

typedef struct origin {
    bool https;
    hostport hp;
} origin;

static bool parse_origin(const char *s, size_t n, origin *o)
{
    if (n > 8 && strncasecmp(s, "https://", 8) == 0) {
        o->https = true;
        s += 8;
        n -= 8;
    } else if (n > 7 && strncasecmp(s, "http://", 7) == 0) {
        o->https = false;
        s += 7;
        n -= 7;
    } else {
        return false; /* "null", another scheme, or no origin at all */
    }
    return split_hostport(s, n, &o->hp);
}

static long effective_port(const origin *o) { return o->hp.port >= 0 ? o->hp.port : o->https ? 443 : 80; }

static bool same_origin(const origin *a, const origin *b)
{
    return a->https == b->https && a->hp.hlen == b->hp.hlen &&
           strncasecmp(a->hp.host, b->hp.host, a->hp.hlen) == 0 && effective_port(a) == effective_port(b);
}

static bool listed(const char *allowed, const origin *o)
{
    const char *cur = allowed ? allowed : "", *it;
    size_t il;
    origin item;
    while (util_list_item(&cur, &it, &il))
        if (parse_origin(it, il, &item) && same_origin(o, &item)) return true;
    return false;
}

bool xsite_origin_listed(const char *allowed, const char *origin_value)
{
    origin o;
    return origin_value && parse_origin(origin_value, strlen(origin_value), &o) && listed(allowed, &o);
}

bool xsite_origin_allowed(const char *allowed, const char *origin_value, const char *host, bool tls)
{
    origin o, own = {.https = tls};
    if (!origin_value || !parse_origin(origin_value, strlen(origin_value), &o)) return false;
    if (host && split_hostport(host, strlen(host), &own.hp) && same_origin(&o, &own)) return true;
    return listed(allowed, &o);
}

bool xsite_is_json(const char *ct)
{
    if (!ct) return false;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, "application/json", 16) != 0) return false;
    ct += 16;
    while (*ct == ' ' || *ct == '\t') ct++;
    return *ct == '\0' || *ct == ';';
}

/* ---------- the checks ---------- */

#define SHOWN 120 /* bytes of a header value a message quotes */

bool xsite_host_ok(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    const char *allowed = p->cfg.allowed_hosts;
    if (!allowed || !*allowed) return true;
    const char *host = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    if (xsite_host_allowed(allowed, host)) return true;
    char msg[400];
    if (host)
        util_snprintf(msg, sizeof(msg),
                      "Host \"%.*s\" is not a name this proxy serves: call it by one of ALLOWED_HOSTS, or add the "
                      "name there (exact names, or .example.com for a domain and every name under it)",
                      UTF8_CUT(host, SHOWN));
    else
        snprintf(msg, sizeof(msg), "the request has no Host header; send one naming a host of ALLOWED_HOSTS");
    px_count_reject(p, RJ_HOST);
    px_reply_error(p, req, route, t0, 421, "host_not_allowed", msg, 0);
    return false;
}

bool xsite_write_ok(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_OPTIONS) return true;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *origin_value = evhttp_find_header(in, "Origin");
    const char *site = evhttp_find_header(in, "Sec-Fetch-Site");
    char msg[480];
    bool refused;
    if (origin_value) /* a browser's own statement of where the page is: checked whatever else it says */
        refused = !xsite_origin_allowed(p->cfg.allowed_origins, origin_value,
                                        evhttp_find_header(in, "Host"), p->tls != NULL);
    else /* no Origin, yet a browser's fetch metadata says another site sent it */
        refused = site && (strcasecmp(site, "cross-site") == 0 || strcasecmp(site, "same-site") == 0);
    if (refused) {
        if (origin_value)
            util_snprintf(msg, sizeof(msg),
                          "a browser page at Origin \"%.*s\" may not send this request: writes to the proxy's own "
                          "endpoints are taken only from the proxy's own origin (%s://<Host>) and from ALLOWED_ORIGINS; "
                          "add that origin there (exact scheme://host[:port]) to allow it",
                          UTF8_CUT(origin_value, SHOWN), p->tls ? "https" : "http");
        else
            snprintf(msg, sizeof(msg),
                     "a browser page on another site (Sec-Fetch-Site: %s) may not send this request; a page allowed "
                     "to must send its Origin and be listed in ALLOWED_ORIGINS",
                     strcasecmp(site, "cross-site") == 0 ? "cross-site" : "same-site");
        px_count_reject(p, RJ_CROSS_ORIGIN);
        px_reply_error(p, req, route, t0, 403, "cross_origin", msg, 0);
        return false;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) == 0) return true;
    const char *ct = evhttp_find_header(in, "Content-Type");
    if (xsite_is_json(ct)) return true;
    if (ct)
        util_snprintf(msg, sizeof(msg),
                      "Content-Type \"%.*s\": a request body sent to the proxy must be JSON; send the header "
                      "Content-Type: application/json",
                      UTF8_CUT(ct, SHOWN));
    else
        snprintf(msg, sizeof(msg),
                 "the request has a body but no Content-Type: send the header Content-Type: application/json "
                 "(e.g. curl -H 'Content-Type: application/json' -d '{...}')");
    px_count_reject(p, RJ_MEDIA_TYPE);
    px_reply_error(p, req, route, t0, 415, "unsupported_media_type", msg, 0);
    return false;
}
