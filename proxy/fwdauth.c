/* fwdauth — see fwdauth.h.
 *
 * The cache is direct-mapped: a key's slot is its digest's first bytes
 * modulo AUTH_CACHE_SLOTS, and a newer decision takes the slot.  Bounded,
 * O(1), and a collision costs one more call to the auth server, never a
 * wrong answer (the whole digest is compared). */
#include "fwdauth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "conns.h"
#include "fwdheaders.h"
#include "httpc.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

#define MAX_COPIED 16          /* AUTH_RESPONSE_HEADERS names */
#define MAX_AUTH_BODY 65536    /* a 401/403 body passed back */
#define STICKY_HEADER "X-Turnout-Sticky-Key"

enum { AR_ALLOWED, AR_DENIED, AR_ERROR, AR_CACHED_ALLOWED, AR_CACHED_DENIED };

/* One decision: allowed with the copied header values, or a refusal. */
typedef struct decision {
    int status;                       /* 2xx, 401 or 403 */
    char *values[MAX_COPIED];         /* allowed: the auth answer's value of each copied name, or NULL */
    char *body;                       /* denied: the answer, passed back */
    size_t body_len;
    char **headers;                   /* denied: "Name: value" lines passed back, NULL-terminated */
} decision;

typedef struct slot {
    unsigned char key[SHA256_DIGEST_LENGTH];
    double expires;                   /* monotonic; 0: empty */
    decision d;
} slot;

struct fwdauth {
    proxy *p;
    char *names[MAX_COPIED];          /* AUTH_RESPONSE_HEADERS */
    size_t nnames;
    int sticky;                       /* index in names of AUTH_STICKY_HEADER, or -1 */
    slot *cache;                      /* AUTH_CACHE_SLOTS when AUTH_CACHE_TTL_S > 0 */
    double last_log;
};

/* One request waiting for the auth server. */
typedef struct check {
    fwdauth *a;
    preq *r;                          /* holds the drain while it waits */
    struct evhttp_request *req;
    const endpoint *e;
    char *path;
    httpc_req *call;
    bool keyed;
    unsigned char key[SHA256_DIGEST_LENGTH];
} check;

static void count(fwdauth *a, int result)
{
    size_t k = (size_t)result;
    metrics_add(a->p->m.auth_requests, metrics_at(a->p->m.auth_requests, &k), 1);
}

static void decision_clear(decision *d)
{
    for (size_t i = 0; i < MAX_COPIED; i++) free(d->values[i]);
    free(d->body);
    fwd_free_lines(d->headers);
    memset(d, 0, sizeof(*d));
}

fwdauth *fwdauth_new(proxy *p, bool *oom)
{
    *oom = false;
    if (!p->cfg.auth_url[0]) return NULL;
    fwdauth *a = calloc(1, sizeof(*a));
    if (!a) goto oom;
    a->p = p;
    a->sticky = -1;
    const char *cur = p->cfg.auth_response_headers, *it;
    size_t il;
    while (a->nnames < MAX_COPIED && util_list_item(&cur, &it, &il)) {
        if (!(a->names[a->nnames] = strndup(it, il))) goto oom;
        if (p->cfg.auth_sticky_header[0] && strcasecmp(a->names[a->nnames], p->cfg.auth_sticky_header) == 0)
            a->sticky = (int)a->nnames;
        a->nnames++;
    }
    if (p->cfg.auth_cache_ttl_s > 0 && !(a->cache = calloc(AUTH_CACHE_SLOTS, sizeof(slot)))) goto oom;
    return a;
oom:
    fwdauth_free(a);
    *oom = true;
    return NULL;
}

void fwdauth_free(fwdauth *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->nnames; i++) free(a->names[i]);
    if (a->cache)
        for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++) decision_clear(&a->cache[i].d);
    free(a->cache);
    free(a);
}

bool fwdauth_applies(const fwdauth *a, const char *path)
{
    /* load balancers and Prometheus keep working without credentials */
    return a && strcmp(path, "/healthz") != 0 && strcmp(path, "/readyz") != 0 && strcmp(path, "/metrics") != 0;
}

static slot *slot_of(fwdauth *a, const unsigned char key[SHA256_DIGEST_LENGTH])
{
    size_t h = 0;
    memcpy(&h, key, sizeof(h));
    return &a->cache[h % AUTH_CACHE_SLOTS];
}

/* ---------- answers ---------- */

/* Allowed: the copied headers replace whatever the client sent, then the
 * endpoint answers. */
static void proceed(fwdauth *a, struct evhttp_request *req, const endpoint *e, const char *path, double t0,
                    char *const values[MAX_COPIED])
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (size_t i = 0; i < a->nnames; i++)
        if (values[i]) evhttp_add_header(in, a->names[i], values[i]);
    if (a->sticky >= 0 && values[a->sticky]) evhttp_add_header(in, STICKY_HEADER, values[a->sticky]);
    e->handler(a->p, req, path, t0);
}

/* Denied: the auth server's answer, as it came. */
static void refuse(fwdauth *a, struct evhttp_request *req, const endpoint *e, double t0, const decision *d)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    for (char **l = d->headers; l && *l; l++) {
        const char *colon = strchr(*l, ':');
        char name[64];
        size_t n = (size_t)(colon - *l);
        if (!colon || n >= sizeof(name)) continue;
        memcpy(name, *l, n);
        name[n] = '\0';
        evhttp_add_header(out, name, colon + 2);
    }
    if (!evhttp_find_header(out, "Content-Type")) evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evbuffer_add(evhttp_request_get_output_buffer(req), d->body ? d->body : "", d->body_len);
    conns_reply_out(a->p->conns, req);
    evhttp_send_reply(req, d->status, util_reason(d->status), NULL);
    px_count_reply(a->p, e->route, PATH_NONE, d->status, t0);
}

/* The auth server's answer as a decision; false when it is none (an error). */
static bool decide(fwdauth *a, const httpc_response *resp, decision *d)
{
    memset(d, 0, sizeof(*d));
    if (resp->error != HTTPC_OK) return false;
    d->status = (int)resp->status;
    if (d->status >= 200 && d->status < 300) {
        for (size_t h = 0; h < resp->nheaders; h++) {
            const char *line = resp->headers[h];
            const char *colon = strchr(line, ':');
            if (!colon) continue;
            size_t n = (size_t)(colon - line);
            for (size_t i = 0; i < a->nnames; i++) {
                if (d->values[i] || strlen(a->names[i]) != n || strncasecmp(line, a->names[i], n) != 0) continue;
                const char *v = colon + 1;
                while (*v == ' ' || *v == '\t') v++;
                d->values[i] = strdup(v);
            }
        }
        return true;
    }
    if (d->status != 401 && d->status != 403) return false;
    static const char *const passed[] = {"content-type", "www-authenticate", "set-cookie", "location"};
    size_t k = 0;
    d->headers = calloc(resp->nheaders + 1, sizeof(char *));
    for (size_t h = 0; d->headers && h < resp->nheaders; h++) {
        const char *line = resp->headers[h];
        for (size_t i = 0; i < sizeof(passed) / sizeof(passed[0]); i++) {
            size_t n = strlen(passed[i]);
            if (strncasecmp(line, passed[i], n) != 0 || line[n] != ':') continue;
            const char *v = line + n + 1;
            while (*v == ' ' || *v == '\t') v++;
            char *copy = NULL;
            if (asprintf(&copy, "%.*s: %s", (int)n, line, v) >= 0) d->headers[k++] = copy;
        }
    }
    d->body_len = resp->body_len;
    d->body = malloc(d->body_len + 1);
    if (d->body) memcpy(d->body, resp->body, d->body_len);
    else d->body_len = 0;
    return true;
}

static void check_free(check *c)
{
    free(c->path);
    free(c);
}

static void on_client_gone(void *arg)
{
    check *c = arg;
    httpc_cancel(c->call);
    px_count_reply(c->a->p, c->e->route, PATH_NONE, 499, c->r->t0);
    px_req_free(c->r);
    if (!evhttp_request_get_connection(c->req)) evhttp_request_free(c->req);
    check_free(c);
}

static void on_auth_done(const httpc_response *resp, void *arg)
{
    check *c = arg;
    fwdauth *a = c->a;
    proxy *p = a->p;
    conns_unwatch(p->conns, c->req);
    preq *r = c->r;
    double t0 = r->t0;
    px_hold_in_flight(r, NOT_WAITING);
    decision d;
    if (!decide(a, resp, &d)) {
        decision_clear(&d);
        count(a, AR_ERROR);
        char msg[400];
        if (resp->error != HTTPC_OK)
            util_snprintf(msg, sizeof(msg), "the auth server (AUTH_URL) %s: %s; the request was not let through",
                          resp->error == HTTPC_ETIMEOUT ? "did not answer in time (AUTH_TIMEOUT_MS)" : "failed",
                          resp->errmsg ? resp->errmsg : "error");
        else
            util_snprintf(msg, sizeof(msg), "the auth server (AUTH_URL) answered %ld, neither 2xx nor 401/403; the "
                          "request was not let through", resp->status);
        double now = util_monotonic();
        if (now - a->last_log >= 10) {
            a->last_log = now;
            LOG_WARN("forward auth failed: requests are refused with 503 (fail closed)", "error", msg);
        }
        check_free(c);
        px_finish_error(r, 503, "auth_unavailable", msg, 1);
        return;
    }
    bool allowed = d.status < 300;
    count(a, allowed ? AR_ALLOWED : AR_DENIED);
    struct evhttp_request *req = c->req;
    const endpoint *e = c->e;
    char *path = c->path;
    c->path = NULL;
    px_req_free(r); /* the endpoint makes its own record */
    if (allowed) proceed(a, req, e, path, t0, d.values);
    else refuse(a, req, e, t0, &d);
    free(path);
    if (a->cache && c->keyed) {
        slot *s = slot_of(a, c->key);
        decision_clear(&s->d);
        memcpy(s->key, c->key, sizeof(s->key));
        s->d = d;
        s->expires = util_monotonic() + (double)p->cfg.auth_cache_ttl_s;
    } else {
        decision_clear(&d);
    }
    check_free(c);
}

/* ---------- the check ---------- */

static void add(char **lines, size_t *k, const char *name, const char *value)
{
    if (!value) return;
    char *s = NULL;
    if (asprintf(&s, "%s: %s", name, value) >= 0) lines[(*k)++] = s;
}

void fwdauth_check(fwdauth *a, struct evhttp_request *req, const endpoint *e, const char *path, double t0)
{
    proxy *p = a->p;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    /* what the auth server vouches for is never the client's to say */
    for (size_t i = 0; i < a->nnames; i++)
        while (evhttp_find_header(in, a->names[i])) evhttp_remove_header(in, a->names[i]);
    if (a->sticky >= 0)
        while (evhttp_find_header(in, STICKY_HEADER)) evhttp_remove_header(in, STICKY_HEADER);
    const char *authz = evhttp_find_header(in, "Authorization"), *cookie = evhttp_find_header(in, "Cookie");

    check *c = calloc(1, sizeof(*c));
    if (!c) goto oom;
    c->keyed = a->cache && (authz || cookie);
    if (c->keyed) {
        /* the key: SHA-256 of the credentials (each with its length, so no
         * two pairs meet) and of what they are used for: the auth server
         * sees the method and target and may decide on them, so an allow
         * for one endpoint never opens another */
        char *buf = NULL;
        const char *target = evhttp_request_get_uri(req);
        int n = asprintf(&buf, "%zu:%s\n%zu:%s\n%s %s", authz ? strlen(authz) : 0, authz ? authz : "",
                         cookie ? strlen(cookie) : 0, cookie ? cookie : "",
                         fwd_method_name(evhttp_request_get_command(req)), target);
        if (n < 0 || !SHA256((const unsigned char *)buf, (size_t)n, c->key)) {
            free(buf);
            goto oom;
        }
        free(buf);
        slot *s = slot_of(a, c->key);
        if (s->expires > util_monotonic() && CRYPTO_memcmp(s->key, c->key, sizeof(c->key)) == 0) {
            free(c);
            if (s->d.status < 300) {
                count(a, AR_CACHED_ALLOWED);
                proceed(a, req, e, path, t0, s->d.values);
            } else {
                count(a, AR_CACHED_DENIED);
                refuse(a, req, e, t0, &s->d);
            }
            return;
        }
    }
    c->a = a;
    c->req = req;
    c->e = e;
    c->path = strdup(path);
    c->r = c->path ? px_req_new(p, req, e->route, t0) : NULL;
    if (!c->r) goto oom;

    char *peer = NULL;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    char *lines[8] = {0};
    size_t k = 0;
    add(lines, &k, "Authorization", authz);
    add(lines, &k, "Cookie", cookie);
    add(lines, &k, "X-Forwarded-Method", fwd_method_name(evhttp_request_get_command(req)));
    add(lines, &k, "X-Forwarded-Uri", evhttp_request_get_uri(req));
    add(lines, &k, "X-Forwarded-For", peer);
    add(lines, &k, "X-Forwarded-Host", evhttp_find_header(in, "Host"));
    add(lines, &k, "X-Forwarded-Proto", p->tls ? "https" : "http");
    httpc_opts o = {
        .method = "GET",
        .url = p->cfg.auth_url,
        .headers = (const char *const *)lines,
        .timeout_ms = p->cfg.auth_timeout_ms,
        .max_response_bytes = MAX_AUTH_BODY,
        .want_headers = true,
    };
    char err[256];
    px_hold_in_flight(c->r, PATH_NONE);
    c->call = httpc_start(p->hc, &o, on_auth_done, c, err);
    for (size_t i = 0; i < k; i++) free(lines[i]);
    if (!c->call) {
        preq *r = c->r;
        check_free(c);
        count(a, AR_ERROR);
        char msg[400];
        util_snprintf(msg, sizeof(msg), "the auth call (AUTH_URL) could not start: %s", err);
        px_hold_in_flight(r, NOT_WAITING);
        px_finish_error(r, 503, "auth_unavailable", msg, 1);
        return;
    }
    conns_watch(p->conns, req, on_client_gone, c);
    return;
oom:
    if (c && c->r) {
        preq *r = c->r;
        check_free(c);
        px_count_reject(p, RJ_OOM);
        px_finish_error(r, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    if (c) check_free(c);
    px_reply_oom(p, req, e->route, t0, NULL);
}
