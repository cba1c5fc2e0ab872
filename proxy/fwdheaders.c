/* fwdheaders — see fwdheaders.h. */
#include "fwdheaders.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "pconfig.h"
#include "util.h"

const char *fwd_method_name(int t)
{
    switch (t) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "GET";
    }
}

/* Hop-by-hop headers (RFC 9110 §7.6.1) and those of the connection itself. */
static bool hop_by_hop(const char *name, bool request)
{
    static const char *const both[] = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                       "transfer-encoding", "upgrade", "proxy-authorization",
                                       "proxy-authenticate"};
    for (size_t i = 0; i < sizeof(both) / sizeof(both[0]); i++)
        if (strcasecmp(name, both[i]) == 0) return true;
    /* the client library writes the request's own framing and Host */
    return request && (strcasecmp(name, "host") == 0 || strcasecmp(name, "content-length") == 0 ||
                       strcasecmp(name, "expect") == 0);
}

/* Is `name` named by any Connection header of q? */
static bool connection_names(const struct evkeyvalq *q, const char *name)
{
    size_t n = strlen(name);
    for (const struct evkeyval *kv = q->tqh_first; kv; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, "connection") == 0 && util_list_has(kv->value, name, n)) return true;
    return false;
}

bool fwd_wants_upgrade(struct evhttp_request *req, const char **proto)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *up = evhttp_find_header(in, "Upgrade");
    if (!up || !*up || !connection_names(in, "upgrade")) return false;
    *proto = up;
    return true;
}

void fwd_free_lines(char **lines)
{
    if (!lines) return;
    for (char **l = lines; *l; l++) free(*l);
    free(lines);
}

/* A growing list of header lines. */
typedef struct lines {
    char **v;
    size_t n, cap;
    bool oom;
} lines;

static void add_line(lines *l, const char *name, const char *value)
{
    if (l->oom) return;
    if (l->n + 2 > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            l->oom = true;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    size_t nl = strlen(name), vl = strlen(value);
    char *s = malloc(nl + vl + 3);
    if (!s) {
        l->oom = true;
        return;
    }
    memcpy(s, name, nl);
    memcpy(s + nl, ": ", 2);
    memcpy(s + nl + 2, value, vl + 1);
    l->v[l->n++] = s;
    l->v[l->n] = NULL;
}

/* The values of every `name` header of q joined with ", " (one list, RFC
 * 9110 §5.3), or NULL when there is none.  malloc'd. */
static char *joined(const struct evkeyvalq *q, const char *name)
{
    size_t len = 0;
    int count = 0;
    for (const struct evkeyval *kv = q->tqh_first; kv; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, name) == 0 && kv->value[0]) {
            len += strlen(kv->value) + 2;
            count++;
        }
    if (!count) return NULL;
    char *s = malloc(len + 1), *w = s;
    if (!s) return NULL;
    for (const struct evkeyval *kv = q->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, name) != 0 || !kv->value[0]) continue;
        if (w != s) {
            memcpy(w, ", ", 2);
            w += 2;
        }
        size_t vl = strlen(kv->value);
        memcpy(w, kv->value, vl);
        w += vl;
    }
    *w = '\0';
    return s;
}

/* `head` + sep + `tail` (head may be NULL), malloc'd. */
static char *append(const char *head, const char *sep, const char *tail)
{
    char *s = NULL;
    if (asprintf(&s, "%s%s%s", head ? head : "", head ? sep : "", tail) < 0) return NULL;
    return s;
}

/* A Forwarded parameter value: a token, or a quoted string (RFC 7239 §4;
 * an IPv6 address is "[v6]", a host with a port is quoted). */
static void forwarded_value(char *out, size_t cap, const char *v, bool address)
{
    bool v6 = address && strchr(v, ':');
    bool token = !v6 && strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~") == strlen(v);
    if (token) {
        snprintf(out, cap, "%s", v);
        return;
    }
    size_t w = 0;
    out[w++] = '"';
    if (v6) out[w++] = '[';
    for (const char *c = v; *c && w + 4 < cap; c++) {
        if (*c == '"' || *c == '\\') out[w++] = '\\';
        out[w++] = *c;
    }
    if (v6) out[w++] = ']';
    out[w++] = '"';
    out[w] = '\0';
}

char **fwd_request_headers(const proxy_settings *cfg, struct evhttp_request *req, const char *peer, bool tls,
                           bool upgrade)
{
    const struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    unsigned trust = cfg->trust_forwarded;
    lines l = {0};
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        const char *k = kv->key;
        if (hop_by_hop(k, true) || connection_names(in, k)) continue;
        if (strcasecmp(k, "x-forwarded-for") == 0 || strcasecmp(k, "x-forwarded-host") == 0 ||
            strcasecmp(k, "x-forwarded-proto") == 0 || strcasecmp(k, "forwarded") == 0)
            continue; /* written below, once each */
        add_line(&l, k, kv->value);
    }
    if (upgrade) {
        const char *proto = evhttp_find_header(in, "Upgrade");
        add_line(&l, "Connection", "Upgrade");
        add_line(&l, "Upgrade", proto ? proto : "websocket");
    }
    const char *addr = peer && *peer ? peer : "unknown";
    const char *host = evhttp_find_header(in, "Host");
    const char *scheme = tls ? "https" : "http";

    char *xff = (trust & FWD_XFF) ? joined(in, "x-forwarded-for") : NULL;
    char *v = append(xff, ", ", addr);
    if (v) add_line(&l, "X-Forwarded-For", v);
    else l.oom = true;
    free(v);
    free(xff);

    char *xfh = (trust & FWD_XFHOST) ? joined(in, "x-forwarded-host") : NULL;
    if (xfh || host) add_line(&l, "X-Forwarded-Host", xfh ? xfh : host);
    free(xfh);

    char *xfp = (trust & FWD_XFPROTO) ? joined(in, "x-forwarded-proto") : NULL;
    add_line(&l, "X-Forwarded-Proto", xfp ? xfp : scheme);
    free(xfp);

    char *fwd = (trust & FWD_FORWARDED) ? joined(in, "forwarded") : NULL;
    if (cfg->forwarded_header) {
        char fa[128], fh[300], elem[480];
        forwarded_value(fa, sizeof(fa), addr, true);
        forwarded_value(fh, sizeof(fh), host ? host : "", false);
        snprintf(elem, sizeof(elem), "for=%s;proto=%s%s%s", fa, scheme, host ? ";host=" : "", host ? fh : "");
        char *f = append(fwd, ", ", elem);
        if (f) add_line(&l, "Forwarded", f);
        else l.oom = true;
        free(f);
    } else if (fwd) {
        add_line(&l, "Forwarded", fwd); /* trusted, passed on as it came */
    }
    free(fwd);

    if (l.oom || !l.v) {
        if (l.v) {
            l.v[l.n] = NULL;
            fwd_free_lines(l.v);
        }
        return NULL;
    }
    return l.v;
}

void fwd_response_headers(const char *const *hl, size_t n, struct evkeyvalq *out, bool upgrade,
                          fwd_response *info)
{
    info->content_length = info->content_type = false;
    /* the response's own Connection options and whether it had a
     * Transfer-Encoding, first */
    bool te = false;
    const char *conn[8];
    size_t nconn = 0;
    for (size_t i = 0; i < n; i++) {
        const char *line = hl[i];
        if (strncasecmp(line, "transfer-encoding:", 18) == 0) te = true;
        if (strncasecmp(line, "connection:", 11) == 0 && nconn < 8) conn[nconn++] = line + 11;
    }
    char name[256];
    for (size_t i = 0; i < n; i++) {
        const char *line = hl[i];
        const char *colon = strchr(line, ':');
        if (!colon || colon == line || (size_t)(colon - line) >= sizeof(name)) continue;
        size_t nl = (size_t)(colon - line);
        memcpy(name, line, nl);
        name[nl] = '\0';
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        if (strcasecmp(name, "content-length") == 0) {
            if (te) continue; /* RFC 9112 §6.3: Transfer-Encoding wins; the body is re-framed */
            info->content_length = true;
        } else if (upgrade && strcasecmp(name, "upgrade") == 0) {
            evhttp_add_header(out, name, v); /* kept: the protocol switched to (Connection names it) */
            continue;
        } else if (hop_by_hop(name, false)) {
            continue;
        }
        bool named = false;
        for (size_t k = 0; k < nconn && !named; k++) named = util_list_has(conn[k], name, nl);
        if (named) continue;
        if (strcasecmp(name, "content-type") == 0) info->content_type = true;
        evhttp_add_header(out, name, v);
    }
    if (upgrade) evhttp_add_header(out, "Connection", "Upgrade");
}
