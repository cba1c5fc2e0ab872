/* passthrough — every path the proxy does not answer itself goes to
 * UPSTREAM_API_URL (headers as fwdheaders.h says), and the response comes
 * back as it arrives: its head as soon as the upstream sends it, its body
 * piece by piece.  At most PASSTHROUGH_BUFFER_BYTES wait for a client that
 * reads slower than the upstream sends; past that the upstream is not read
 * (TCP pushes back on it) until the client has taken them.  A client that
 * goes away cancels the upstream call; an upstream that fails mid-body
 * cuts the client's response (its connection closes, so the client sees
 * it incomplete).  Upgrade requests go to tunnel.c. */
#include "passthrough.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <strings.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http_struct.h> /* the request's HTTP version */

#include "conns.h"
#include "fwdheaders.h"
#include "httpc.h"
#include "pmetrics.h"
#include "tunnel.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"


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

/* One streamed pass-through exchange. */
typedef struct pt {
    preq *r;             /* NULL once the client went away */
    struct evhttp_request *req;
    proxy *p;
    httpc_req *up;
    struct evbuffer *piece;
    struct event *reap;  /* client gone inside a callback: cancel from the loop */
    int status;
    bool head_sent, paused, in_cb, gone;
} pt;

static void pt_free(pt *s)
{
    if (s->piece) evbuffer_free(s->piece);
    if (s->reap) event_free(s->reap);
    free(s);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pt *s = arg;
    httpc_cancel(s->up);
    pt_free(s);
}

/* The client's connection closed (conns_watch): the upstream call is
 * cancelled and the record counted as 499 (nginx's "client closed
 * request"). */
static void on_client_gone(void *arg)
{
    pt *s = arg;
    proxy *p = s->p;
    metrics_add(p->m.passthrough_aborted, metrics_at(p->m.passthrough_aborted, (size_t[]){PS_CLIENT}), 1);
    px_count_reply(p, s->r->route, PATH_NONE, 499, s->r->t0);
    px_req_free(s->r);
    s->r = NULL;
    s->gone = true;
    /* a request taken off its failed connection is ours to free; one still
     * on it goes with the connection */
    if (!evhttp_request_get_connection(s->req)) evhttp_request_free(s->req);
    s->req = NULL;
    if (!s->in_cb) {
        on_reap(-1, 0, s);
        return;
    }
    if (!s->reap) s->reap = event_new(p->base, -1, 0, on_reap, s);
    if (s->reap) event_active(s->reap, EV_TIMEOUT, 1);
}

/* Bytes still waiting to go out to the client. */
static size_t client_backlog(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* evhttp wrote everything it held for the client: read the upstream again. */
static void on_client_drained(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    pt *s = arg;
    if (s->gone || !s->paused) return;
    s->paused = false;
    httpc_resume(s->up);
}

static bool on_up_head(const httpc_response *head, void *arg)
{
    pt *s = arg;
    if (s->gone) return false;
    s->in_cb = true;
    struct evhttp_request *req = s->req;
    proxy *p = s->p;
    conns_stop_hup_check(p->conns, req); /* from now on a write finds a client that left */
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    fwd_response info;
    fwd_response_headers(head->headers, head->nheaders, out, false, &info);
    /* no Content-Type: none is made up, and the browser is told not to
     * guess one (the dashboard shares this origin) */
    if (!info.content_type && !evhttp_find_header(out, "X-Content-Type-Options"))
        evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    /* an HTTP/1.0 client learns where a body without a length ends by the close */
    if (!info.content_length && (req->major < 1 || (req->major == 1 && req->minor < 1)))
        evhttp_add_header(out, "Connection", "close");
    s->status = (int)head->status;
    s->head_sent = true;
    const char *reason = head->reason && head->reason[0] ? head->reason : util_reason(s->status);
    evhttp_send_reply_start(req, s->status, reason);
    s->in_cb = false;
    return !s->gone;
}

static bool on_up_data(const char *data, size_t n, void *arg)
{
    pt *s = arg;
    if (s->gone) return false;
    s->in_cb = true;
    evbuffer_add(s->piece, data, n);
    evhttp_send_reply_chunk_with_cb(s->req, s->piece, on_client_drained, s);
    evbuffer_drain(s->piece, evbuffer_get_length(s->piece)); /* a request off its connection keeps none */
    bool more = !s->gone;
    if (more && client_backlog(s->req) >= (size_t)s->p->cfg.passthrough_buffer_bytes) {
        s->paused = true;
        more = false;
    }
    s->in_cb = false;
    return more;
}

static void on_up_done(const httpc_response *resp, void *arg)
{
    pt *s = arg;
    if (s->gone) { /* counted when the client left */
        pt_free(s);
        return;
    }
    preq *r = s->r;
    proxy *p = s->p;
    struct evhttp_request *req = s->req;
    conns_unwatch(p->conns, req);
    px_hold_in_flight(r, NOT_WAITING);
    if (!resp->streamed) {
        bool timeout = resp->error == HTTPC_ETIMEOUT;
        px_count_upstream_error(p, PATH_NONE, timeout ? UP_TIMEOUT : UP_CONNECT);
        char msg[320];
        util_snprintf(msg, sizeof(msg), "the upstream API (UPSTREAM_API_URL) %s: %s",
                      timeout ? "did not answer in time" : "failed",
                      resp->error == HTTPC_OK ? "no response" : resp->errmsg ? resp->errmsg : "error");
        pt_free(s);
        px_finish_error(r, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_error", msg, 0);
        return;
    }
    int status = s->status;
    pt_free(s);
    px_count_reply(p, r->route, PATH_NONE, status, r->t0);
    px_req_free(r);
    if (resp->error == HTTPC_OK) {
        conns_reply_out(p->conns, req);
        evhttp_send_reply_end(req);
        return;
    }
    /* cut mid-body: closing is the only way left to tell the client */
    px_count_upstream_error(p, PATH_NONE, resp->error == HTTPC_ETIMEOUT ? UP_TIMEOUT : UP_BAD_REPLY);
    metrics_add(p->m.passthrough_aborted, metrics_at(p->m.passthrough_aborted, (size_t[]){PS_UPSTREAM}), 1);
    LOG_INFO("a pass-through response was cut: the upstream failed mid-body", "error",
             resp->errmsg ? resp->errmsg : "error");
    if (evhttp_request_get_connection(req)) conns_close_after_flush(p->conns, req);
    else evhttp_request_free(req);
}

static const httpc_stream pt_stream = {on_up_head, on_up_data};

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
    char *peer = NULL;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    const char *proto = NULL;
    if (fwd_wants_upgrade(req, &proto)) {
        tunnel_start(p, req, t0, uri, peer);
        free(origin_form);
        return;
    }
    size_t ulen = strlen(p->cfg.upstream_url);
    while (ulen > 0 && p->cfg.upstream_url[ulen - 1] == '/') ulen--;
    char *url = malloc(ulen + strlen(uri) + 2);
    char **hdrs = fwd_request_headers(&p->cfg, req, peer, p->tls != NULL, false);
    pt *s = calloc(1, sizeof(*s));
    if (s) s->piece = evbuffer_new();
    preq *r = url && hdrs && s && s->piece ? px_req_new(p, req, RT_PASSTHROUGH, t0) : NULL;
    if (!r) {
        free(origin_form);
        free(url);
        fwd_free_lines(hdrs);
        if (s) pt_free(s);
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    sprintf(url, "%.*s%s%s", (int)ulen, p->cfg.upstream_url, uri[0] == '/' ? "" : "/", uri);
    free(origin_form);
    s->r = r;
    s->req = req;
    s->p = p;
    httpc_opts o = {
        .method = fwd_method_name(evhttp_request_get_command(req)),
        .url = url,
        .body = len ? (const char *)evbuffer_pullup(body, -1) : NULL,
        .body_len = len,
        .headers = (const char *const *)hdrs,
        .timeout_ms = p->cfg.upstream_timeout_ms,
        .want_headers = true,
        .stream = &pt_stream,
    };
    char err[256];
    px_hold_in_flight(r, PATH_NONE);
    s->up = httpc_start(p->hc, &o, on_up_done, s, err);
    fwd_free_lines(hdrs);
    free(url);
    if (!s->up) {
        pt_free(s);
        px_hold_in_flight(r, NOT_WAITING);
        if (strcmp(err, "out of memory") == 0) {
            px_count_reject(p, RJ_OOM);
            px_finish_error(r, 503, "out_of_memory", "the proxy could not start the upstream call; retry shortly", 1);
            return;
        }
        /* the headers were checked: what is left is a call httpc would not make */
        px_count_upstream_error(p, PATH_NONE, UP_CONNECT);
        util_snprintf(msg, sizeof(msg), "the upstream call (UPSTREAM_API_URL) could not start: %s", err);
        px_finish_error(r, 502, "upstream_error", msg, 0);
        return;
    }
    conns_watch(p->conns, req, on_client_gone, s);
}
