#include "admin_auth.h"

#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "log.h"
#include "pserver.h"
#include "reply.h"

bool admin_auth_bearer(const char *header, const char **token, size_t *len)
{
    if (!header) return false;
    while (*header == ' ' || *header == '\t') header++;
    if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t')) return false;
    const char *t = header + 6;
    while (*t == ' ' || *t == '\t') t++;
    size_t n = strlen(t);
    while (n > 0 && (t[n - 1] == ' ' || t[n - 1] == '\t' || t[n - 1] == '\r' || t[n - 1] == '\n')) n--;
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (t[i] == ' ' || t[i] == '\t') return false;
    *token = t;
    *len = n;
    return true;
}

bool admin_auth_token_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
    if (!SHA256((const unsigned char *)a, alen, da) || !SHA256((const unsigned char *)b, blen, db))
        return false;
    bool equal = CRYPTO_memcmp(da, db, sizeof(da)) == 0;
    OPENSSL_cleanse(da, sizeof(da));
    OPENSSL_cleanse(db, sizeof(db));
    return equal;
}

bool px_admin_authorized(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    const char *want = p->cfg.admin_token;
    if (!want || !want[0]) {
        LOG_WARN("admin request refused", "route", pm_route_names[route], "reason", "ADMIN_TOKEN not set");
        px_reply_error(p, req, route, t0, 403, "admin_disabled",
                       "admin writes are off until ADMIN_TOKEN is set in the proxy's environment", 0);
        return false;
    }
    const char *got;
    size_t got_len;
    const char *hdr = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!admin_auth_bearer(hdr, &got, &got_len)) {
        LOG_WARN("admin request refused", "route", pm_route_names[route], "reason",
                 hdr ? "malformed Authorization header" : "no Authorization header");
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        px_reply_error(p, req, route, t0, 401, "unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>", 0);
        return false;
    }
    if (!admin_auth_token_equal(got, got_len, want, strlen(want))) {
        LOG_WARN("admin request refused", "route", pm_route_names[route], "reason", "wrong token");
        px_reply_error(p, req, route, t0, 403, "forbidden",
                       "the bearer token is not the proxy's ADMIN_TOKEN; send the configured token", 0);
        return false;
    }
    return true;
}
