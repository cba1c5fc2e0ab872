/* passthrough — every path the proxy does not answer itself goes to
 * UPSTREAM_API_URL, with the hop-by-hop headers removed and
 * X-Forwarded-For added. */
#include "passthrough.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <strings.h>

#include "conns.h"
#include "httpc.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

#define PASSTHROUGH_MAX_RESPONSE (64 * 1024 * 1024)

static const char *method_name(enum evhttp_cmd_type t)
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
    }
    return "GET";
}

/* Connection-level headers (RFC 9110 §7.6.1) and those curl/evhttp set. */
static bool hop_by_hop(const char *name)
{
    static const char *const skip[] = {"connection", "keep-alive", "proxy-connection", "te",
                                       "trailer", "transfer-encoding", "upgrade", "host",
                                       "content-length", "expect", "proxy-authorization",
                                       "proxy-authenticate"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (strcasecmp(name, skip[i]) == 0) return true;
    return false;
}

/* RFC 9110 §5.6.2 token characters: what a header name is made of. */
static bool token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A request header that cannot be forwarded as it is (a name that is not
 * a token, e.g. with a space, or a value with CR or LF): 400 naming it,
 * instead of letting the upstream call fail.  true when it answered. */
static bool refuse_bad_header(proxy *p, struct evhttp_request *req, double t0, const struct evkeyval *kv)
{
    const char *what = NULL;
    if (!kv->key[0]) what = "an empty name";
    for (const char *q = kv->key; !what && *q; q++)
        if (!token_char((unsigned char)*q)) what = "a name that is not an HTTP token";
    if (!what && strpbrk(kv->value, "\r\n")) what = "a line break in its value";
    if (!what) return false;
    char msg[320];
    util_snprintf(msg, sizeof(msg),
                  "request header \"%.*s\" has %s (names are letters, digits and !#$%%&'*+-.^_`|~); fix or drop it",
                  UTF8_CUT(kv->key, 100), what);
    px_count_reject(p, RJ_INVALID_FIELD);
    px_reply_error(p, req, RT_PASSTHROUGH, t0, 400, "invalid_header", msg, 0);
    return true;
}

static void on_passthrough_done(const httpc_response *resp, void *arg)
{
    preq *r = arg;
    proxy *p = r->p;
    px_hold_in_flight(r, NOT_WAITING);
    if (resp->error != HTTPC_OK) {
        bool timeout = resp->error == HTTPC_ETIMEOUT;
        px_count_upstream_error(p, PATH_NONE, timeout ? UP_TIMEOUT : UP_CONNECT);
        char msg[320];
        util_snprintf(msg, sizeof(msg), "the upstream API (UPSTREAM_API_URL) %s: %s",
                 timeout ? "did not answer in time" : "failed", resp->errmsg ? resp->errmsg : "error");
        px_finish_error(r, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_error", msg, 0);
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const char *line = resp->headers[i];
        const char *colon = strchr(line, ':');
        if (!colon || colon == line) continue;
        char name[256];
        size_t n = (size_t)(colon - line);
        if (n >= sizeof(name)) continue;
        memcpy(name, line, n);
        name[n] = '\0';
        if (hop_by_hop(name)) continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        evhttp_add_header(out, name, v);
    }
    evbuffer_add(evhttp_request_get_output_buffer(r->req), resp->body, resp->body_len);
    int status = (int)resp->status;
    conns_reply_out(p->conns, r->req);
    evhttp_send_reply(r->req, status, util_reason(status), NULL);
    px_count_reply(p, r->route, PATH_NONE, status, r->t0);
    px_req_free(r);
}

void passthrough_handle(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    char msg[320];
    if (len > (size_t)p->cfg.max_body_bytes) {
        px_count_reject(p, RJ_TOO_LARGE);
        snprintf(msg, sizeof(msg), "the body is %zu bytes; at most %lld are accepted (MAX_BODY_BYTES)", len,
                 p->cfg.max_body_bytes);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 413, "body_too_large", msg, 0);
        return;
    }
    if (p->pending >= (size_t)p->cfg.max_in_flight) {
        px_count_reject(p, RJ_OVERLOAD);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "overloaded", "too many requests in flight; retry shortly", 1);
        return;
    }
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        if (refuse_bad_header(p, req, t0, kv)) return;
    /* an absolute-form target (GET http://host/path) is forwarded as its
     * path and query, the way it was routed (RFC 9112 §3.2.2) */
    const char *uri = evhttp_request_get_uri(req);
    char *origin_form = NULL;
    if (uri[0] != '/') {
        const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
        const char *path = u ? evhttp_uri_get_path(u) : NULL, *query = u ? evhttp_uri_get_query(u) : NULL;
        if (asprintf(&origin_form, "%s%s%s", path && path[0] ? path : "/", query ? "?" : "", query ? query : "") < 0)
            origin_form = NULL;
        if (origin_form) uri = origin_form;
    }
    size_t ulen = strlen(p->cfg.upstream_url);
    while (ulen > 0 && p->cfg.upstream_url[ulen - 1] == '/') ulen--;
    char *url = malloc(ulen + strlen(uri) + 2);
    /* headers: input headers minus hop-by-hop, plus X-Forwarded-For, NULL end */
    size_t nh = 0;
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) nh++;
    char **hdrs = calloc(nh + 2, sizeof(char *));
    preq *r = url && hdrs ? px_req_new(p, req, RT_PASSTHROUGH, t0) : NULL;
    size_t k = 0;
    if (!r) goto oom;
    sprintf(url, "%.*s%s%s", (int)ulen, p->cfg.upstream_url, uri[0] == '/' ? "" : "/", uri);
    free(origin_form);
    origin_form = NULL;
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (hop_by_hop(kv->key)) continue;
        if (asprintf(&hdrs[k], "%s: %s", kv->key, kv->value) < 0) {
            hdrs[k] = NULL;
            goto oom_r;
        }
        k++;
    }
    char *peer = NULL;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    if (peer && asprintf(&hdrs[k], "X-Forwarded-For: %s", peer) >= 0) k++;
    else hdrs[k] = NULL;

    httpc_opts o = {
        .method = method_name(evhttp_request_get_command(req)),
        .url = url,
        .body = len ? (const char *)evbuffer_pullup(body, -1) : NULL,
        .body_len = len,
        .headers = (const char *const *)hdrs,
        .timeout_ms = p->cfg.upstream_timeout_ms,
        .max_response_bytes = PASSTHROUGH_MAX_RESPONSE,
        .want_headers = true,
    };
    char err[256];
    px_hold_in_flight(r, PATH_NONE);
    if (!httpc_start(p->hc, &o, on_passthrough_done, r, err)) {
        /* the headers were checked: what is left is memory, or a call
         * httpc would not make (say so, not "out of memory") */
        if (strcmp(err, "out of memory") == 0) goto oom_r;
        for (size_t i = 0; i < k; i++) free(hdrs[i]);
        free(hdrs);
        free(url);
        px_hold_in_flight(r, NOT_WAITING);
        px_count_upstream_error(p, PATH_NONE, UP_CONNECT);
        util_snprintf(msg, sizeof(msg), "the upstream call (UPSTREAM_API_URL) could not start: %s", err);
        px_finish_error(r, 502, "upstream_error", msg, 0);
        return;
    }
    for (size_t i = 0; i < k; i++) free(hdrs[i]);
    free(hdrs);
    free(url);
    return;
oom_r:
    px_count_reject(p, RJ_OOM);
    for (size_t i = 0; i < k; i++) free(hdrs[i]);
    free(hdrs);
    free(url);
    px_finish_error(r, 503, "out_of_memory", "the proxy could not start the upstream call; retry shortly", 1);
    return;
oom:
    free(origin_form);
    free(hdrs);
    free(url);
    px_count_reject(p, RJ_OOM);
    px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
}

