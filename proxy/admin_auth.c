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

int px_read_access(proxy *p, struct evhttp_request *req, enum pm_route route, double t0)
{
    const char *hdr = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    const char *got;
    size_t got_len;
    if (!hdr) return 0;
    if (!admin_auth_bearer(hdr, &got, &got_len)) {
        const char *c = hdr;
        while (*c == ' ' || *c == '\t') c++;
        if (strncasecmp(c, "Bearer", 6) != 0) return 0; /* not ours: a front proxy's Basic, say */
        px_reply_error(p, req, route, t0, 403, "forbidden",
                       "the Authorization header is malformed: send Authorization: Bearer <READ_TOKEN or ADMIN_TOKEN>, "
                       "or no Authorization header for the reply without args, kwargs and outputs", 0);
        return -1;
    }
    const char *const want[2] = {p->cfg.read_token, p->cfg.admin_token};
    bool ok = false;
    for (int i = 0; i < 2; i++) /* both compared, whichever matches: the time does not tell which */
        if (want[i] && want[i][0] && admin_auth_token_equal(got, got_len, want[i], strlen(want[i]))) ok = true;
    if (ok) return 1;
    LOG_WARN("sensitive read refused", "route", pm_route_names[route], "reason",
             (p->cfg.read_token && p->cfg.read_token[0]) || (p->cfg.admin_token && p->cfg.admin_token[0])
                 ? "wrong token" : "READ_TOKEN and ADMIN_TOKEN not set");
    px_reply_error(p, req, route, t0, 403, "forbidden",
                   "the bearer token is neither the proxy's READ_TOKEN nor its ADMIN_TOKEN: send one of them, or no "
                   "Authorization header for the reply without args, kwargs and outputs", 0);
    return -1;
}
