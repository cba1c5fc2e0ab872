/* tunnel — see tunnel.h.
 *
 * Life of a tunnel: CONNECT (our connection to the upstream, the request
 * head written), HEAD (reading the upstream's answer, bounded by
 * UPSTREAM_TIMEOUT_MS), then OPEN (101: bytes both ways) or RELAY (any
 * other answer: its bytes to the client, then close).  Until the answer
 * the client's connection is evhttp's, and a failure is an ordinary JSON
 * error; from the answer on, its bufferevent is the tunnel's (conns stops
 * checking its bytes as HTTP) and the tunnel's end closes it. */
#include "tunnel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "conns.h"
#include "fwdheaders.h"
#include "hpool.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

#define MAX_ANSWER_HEAD 65536
#define MAX_ANSWER_LINES 256

enum tstate { T_CONNECT, T_HEAD, T_OPEN, T_RELAY };

typedef struct tunnel {
    proxy *p;
    preq *r;                       /* until the answer: the request's record */
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct bufferevent *client;    /* evhttp's, ours from the answer on */
    struct bufferevent *up;
    struct event *idle;
    enum tstate state;
    unsigned long long relay_left; /* RELAY with a Content-Length: bytes still to pass */
    bool relay_sized;
    bool closing;                  /* one side ended: the other's backlog drains, then the end */
} tunnel;

static void count(proxy *p, enum pm_tunnel what)
{
    size_t k = what;
    metrics_add(p->m.tunnels, metrics_at(p->m.tunnels, &k), 1);
}

static void gauge(proxy *p, int delta)
{
    metrics_add(p->m.tunnels_open, metrics_at(p->m.tunnels_open, NULL), delta);
}

static void tunnel_free(tunnel *t)
{
    if (t->up) bufferevent_free(t->up);
    if (t->idle) event_free(t->idle);
    free(t);
}

/* Before the answer: an error reply through evhttp, and the tunnel goes. */
static void fail_early(tunnel *t, int status, const char *code, const char *msg)
{
    preq *r = t->r;
    conns_unwatch(t->p->conns, t->req);
    count(t->p, PT_FAILED);
    px_count_upstream_error(t->p, PATH_NONE, status == 504 ? UP_TIMEOUT : UP_CONNECT);
    tunnel_free(t);
    px_hold_in_flight(r, NOT_WAITING);
    px_finish_error(r, status, code, msg, 0);
}

/* After the answer: both connections close. */
static void tunnel_end(tunnel *t)
{
    proxy *p = t->p;
    conns_unwatch(p->conns, t->req);
    if (t->state == T_OPEN) gauge(p, -1);
    struct evhttp_connection *evcon = t->evcon;
    tunnel_free(t);
    evhttp_connection_free(evcon); /* frees the request and the client's bufferevent */
}

/* The client's connection closed under us (shutdown, or it hung up while
 * the answer was awaited). */
static void on_client_gone(void *arg)
{
    tunnel *t = arg;
    proxy *p = t->p;
    if (t->r) {
        px_count_reply(p, RT_PASSTHROUGH, PATH_NONE, 499, t->r->t0);
        px_req_free(t->r);
    }
    if (t->state == T_OPEN) gauge(p, -1);
    if (!evhttp_request_get_connection(t->req)) evhttp_request_free(t->req);
    tunnel_free(t);
}

static void touch(tunnel *t)
{
    struct timeval tv = {(time_t)t->p->cfg.websocket_idle_timeout_s, 0};
    evtimer_add(t->idle, &tv);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tunnel *t = arg;
    LOG_DEBUG("closed a tunnel idle for WEBSOCKET_IDLE_TIMEOUT_S");
    tunnel_end(t);
}

/* ---------- bytes both ways ---------- */

static void start_closing(tunnel *t);

/* Moves what `from` has read to `to`, at most PASSTHROUGH_BUFFER_BYTES
 * waiting: past that `from` stops reading until `to` drained to half. */
static void pump(tunnel *t, struct bufferevent *from, struct bufferevent *to)
{
    struct evbuffer *in = bufferevent_get_input(from), *out = bufferevent_get_output(to);
    size_t n = evbuffer_get_length(in);
    if (t->state == T_RELAY && t->relay_sized && n > t->relay_left) n = (size_t)t->relay_left;
    if (n) {
        evbuffer_remove_buffer(in, out, n);
        touch(t);
    }
    if (t->state == T_RELAY) {
        evbuffer_drain(in, evbuffer_get_length(in)); /* past the answer: nothing more is passed */
        if (t->relay_sized) t->relay_left -= n;
        if (t->relay_sized && t->relay_left == 0) start_closing(t);
    }
    if (evbuffer_get_length(out) >= (size_t)t->p->cfg.passthrough_buffer_bytes) bufferevent_disable(from, EV_READ);
}

/* One side ended: what the other still has to receive goes out first
 * (a write callback at an empty backlog ends the tunnel). */
static void start_closing(tunnel *t)
{
    t->closing = true;
    bufferevent_setwatermark(t->client, EV_WRITE, 0, 0);
    if (t->up) bufferevent_setwatermark(t->up, EV_WRITE, 0, 0);
}

static void end_when_flushed(tunnel *t)
{
    if (evbuffer_get_length(bufferevent_get_output(t->client)) == 0 &&
        (!t->up || evbuffer_get_length(bufferevent_get_output(t->up)) == 0))
        tunnel_end(t);
}

static void on_client_read(struct bufferevent *bev, void *arg)
{
    tunnel *t = arg;
    if (t->state == T_OPEN && !t->closing) pump(t, bev, t->up);
    else evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

static void on_up_read_open(struct bufferevent *bev, void *arg)
{
    tunnel *t = arg;
    pump(t, bev, t->client);
    if (t->closing) end_when_flushed(t);
}

/* A side's backlog went under half the bound: read the other side again. */
static void on_written(struct bufferevent *bev, void *arg)
{
    tunnel *t = arg;
    if (t->closing) {
        end_when_flushed(t);
        return;
    }
    if (bev == t->client) bufferevent_enable(t->up, EV_READ);
    else bufferevent_enable(t->client, EV_READ);
}

static void on_side_event(struct bufferevent *bev, short what, void *arg)
{
    tunnel *t = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))) return;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        tunnel_end(t);
        return;
    }
    /* an orderly close: the other side gets what is on its way, then closes */
    bufferevent_disable(t->client, EV_READ);
    if (bev == t->up) {
        bufferevent_free(t->up);
        t->up = NULL;
    }
    start_closing(t);
    end_when_flushed(t);
}

/* ---------- the upstream's answer ---------- */

/* The client's connection becomes the tunnel's. */
static void take_client(tunnel *t)
{
    proxy *p = t->p;
    conns_tunnel(p->conns, t->req);
    conns_stop_hup_check(p->conns, t->req);
    t->client = evhttp_connection_get_bufferevent(t->evcon);
    bufferevent_setcb(t->client, on_client_read, on_written, on_side_event, t);
    bufferevent_set_timeouts(t->client, NULL, NULL);
    size_t low = (size_t)p->cfg.passthrough_buffer_bytes / 2;
    bufferevent_setwatermark(t->client, EV_WRITE, low, 0);
    bufferevent_setwatermark(t->up, EV_WRITE, low, 0);
    bufferevent_set_timeouts(t->up, NULL, NULL);
    bufferevent_setcb(t->up, on_up_read_open, on_written, on_side_event, t);
    bufferevent_enable(t->client, EV_READ | EV_WRITE);
    touch(t);
}

/* Splits the head [s, s+n) into NUL-terminated lines (in place); the
 * status in *status.  Number of header lines, or -1 when it is not
 * HTTP/1.1 a strict parser would read one way only. */
static int split_head(char *s, size_t n, int *status, char **reason, char **lines)
{
    s[n] = '\0';
    char *eol = strstr(s, "\r\n");
    if (!eol) return -1;
    *eol = '\0';
    if (strncmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ' || s[9] < '1' ||
        s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' || (s[12] && s[12] != ' '))
        return -1;
    *status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    *reason = s[12] ? s + 13 : s + 12;
    int k = 0;
    for (char *line = eol + 2; *line;) {
        char *e = strstr(line, "\r\n");
        if (e) *e = '\0';
        const char *colon = strchr(line, ':');
        if (!colon || colon == line || k == MAX_ANSWER_LINES) return -1;
        for (const char *q = line; q < colon; q++)
            if ((unsigned char)*q <= 0x20 || *q == 0x7f) return -1;
        lines[k++] = line;
        if (!e) break;
        line = e + 2;
    }
    return k;
}

static void on_up_head(struct bufferevent *bev, void *arg)
{
    tunnel *t = arg;
    proxy *p = t->p;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        if (evbuffer_get_length(in) > MAX_ANSWER_HEAD)
            fail_early(t, 502, "upstream_error", "the upstream API's answer to an Upgrade has a head over 64 KiB");
        return;
    }
    size_t hn = (size_t)end.pos + 2;
    char *head = malloc(hn + 3);
    char **lines = malloc(MAX_ANSWER_LINES * sizeof(char *));
    if (!head || !lines) {
        free(head);
        free(lines);
        fail_early(t, 503, "out_of_memory", "the proxy is short of memory; retry shortly");
        return;
    }
    evbuffer_remove(in, head, hn);
    evbuffer_drain(in, 2);
    int status = 0;
    char *reason = NULL;
    int k = split_head(head, hn, &status, &reason, lines);
    bool upgraded = status == 101;
    if (k < 0 || (upgraded && !evhttp_find_header(evhttp_request_get_input_headers(t->req), "Upgrade"))) {
        free(head);
        free(lines);
        fail_early(t, 502, "upstream_error", "the upstream API answered an Upgrade with a malformed head");
        return;
    }
    bool has_upgrade = false;
    unsigned long long cl = 0;
    bool sized = false, chunked = false;
    for (int i = 0; i < k; i++) {
        if (strncasecmp(lines[i], "upgrade:", 8) == 0) has_upgrade = true;
        if (strncasecmp(lines[i], "transfer-encoding:", 18) == 0) chunked = true;
        if (strncasecmp(lines[i], "content-length:", 15) == 0) {
            char *q = lines[i] + 15, *e = NULL;
            while (*q == ' ' || *q == '\t') q++;
            cl = strtoull(q, &e, 10);
            sized = e != q;
        }
    }
    if (upgraded && !has_upgrade) {
        free(head);
        free(lines);
        fail_early(t, 502, "upstream_error", "the upstream API switched protocols without an Upgrade header");
        return;
    }
    /* the answer's head, its hop-by-hop headers replaced by ours */
    struct evkeyvalq hq = {NULL, &hq.tqh_first}; /* an empty TAILQ */
    fwd_response info;
    fwd_response_headers((const char *const *)lines, (size_t)k, &hq, upgraded, &info);
    if (!upgraded) {
        evhttp_add_header(&hq, "Connection", "close");
        if (chunked) evhttp_add_header(&hq, "Transfer-Encoding", "chunked"); /* passed as it comes */
    }
    struct evbuffer *out = evbuffer_new();
    if (out) {
        evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, reason && reason[0] ? reason : util_reason(status));
        for (struct evkeyval *kv = hq.tqh_first; kv; kv = kv->next.tqe_next)
            evbuffer_add_printf(out, "%s: %s\r\n", kv->key, kv->value);
        evbuffer_add(out, "\r\n", 2);
    }
    evhttp_clear_headers(&hq);
    free(head);
    free(lines);
    if (!out) {
        fail_early(t, 503, "out_of_memory", "the proxy is short of memory; retry shortly");
        return;
    }
    /* the answer is the request's reply */
    count(p, upgraded ? PT_OPENED : PT_DECLINED);
    px_hold_in_flight(t->r, NOT_WAITING);
    conns_reply_out(p->conns, t->req);
    px_count_reply(p, RT_PASSTHROUGH, PATH_NONE, status, t->r->t0);
    px_req_free(t->r);
    t->r = NULL;
    take_client(t);
    bufferevent_write_buffer(t->client, out);
    evbuffer_free(out);
    if (upgraded) {
        t->state = T_OPEN;
        gauge(p, 1);
        LOG_DEBUG("tunnel open");
    } else {
        t->state = T_RELAY;
        t->relay_sized = sized && !chunked;
        t->relay_left = cl;
        bufferevent_disable(t->client, EV_READ);
        if (t->relay_sized && cl == 0) start_closing(t);
    }
    if (evbuffer_get_length(in)) on_up_read_open(t->up, t);
    else if (t->closing) end_when_flushed(t);
}

static void on_up_event_early(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    tunnel *t = arg;
    char msg[320];
    if (what & BEV_EVENT_CONNECTED) {
        t->state = T_HEAD;
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        fail_early(t, 504, "upstream_timeout",
                   "the upstream API (UPSTREAM_API_URL) did not answer the Upgrade in time (UPSTREAM_TIMEOUT_MS)");
        return;
    }
    util_snprintf(msg, sizeof(msg), "the upstream API (UPSTREAM_API_URL) %s the Upgrade request",
                  t->state == T_CONNECT ? "could not be reached for" : "closed the connection on");
    fail_early(t, 502, "upstream_error", msg);
}

void tunnel_start(proxy *p, struct evhttp_request *req, double t0, const char *uri, const char *peer)
{
    char authority[HPOOL_MAX_AUTHORITY];
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (!hpool_address(p->cfg.upstream_url, authority, &ss, &sslen)) {
        count(p, PT_FAILED);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 502, "upgrade_unsupported",
                       "Upgrade (WebSocket) requests are passed through only when UPSTREAM_API_URL is http:// to an "
                       "IP address", 0);
        return;
    }
    const char *base_path = strchr(p->cfg.upstream_url + 7, '/');
    size_t blen = base_path ? strlen(base_path) : 0;
    while (blen > 0 && base_path[blen - 1] == '/') blen--;
    tunnel *t = calloc(1, sizeof(*t));
    char **lines = fwd_request_headers(&p->cfg, req, peer, p->tls != NULL, true);
    struct evbuffer *head = evbuffer_new();
    if (t) {
        t->p = p;
        t->req = req;
        t->evcon = evhttp_request_get_connection(req);
        t->idle = evtimer_new(p->base, on_idle, t);
        t->up = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    preq *r = t && t->idle && t->up && lines && head ? px_req_new(p, req, RT_PASSTHROUGH, t0) : NULL;
    if (!r) {
        if (t) tunnel_free(t);
        fwd_free_lines(lines);
        if (head) evbuffer_free(head);
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_PASSTHROUGH, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    t->r = r;
    px_hold_in_flight(r, PATH_NONE);
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t blen_body = evbuffer_get_length(body);
    evbuffer_add_printf(head, "%s %.*s%s HTTP/1.1\r\nHost: %s\r\n",
                        fwd_method_name(evhttp_request_get_command(req)), (int)blen,
                        base_path ? base_path : "", uri, authority);
    for (char **l = lines; *l; l++) evbuffer_add_printf(head, "%s\r\n", *l);
    if (blen_body) evbuffer_add_printf(head, "Content-Length: %zu\r\n", blen_body);
    evbuffer_add(head, "\r\n", 2);
    evbuffer_add_buffer(head, body);
    fwd_free_lines(lines);

    struct timeval tv = {(time_t)(p->cfg.upstream_timeout_ms / 1000), (suseconds_t)(p->cfg.upstream_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(t->up, &tv, &tv);
    bufferevent_setcb(t->up, on_up_head, NULL, on_up_event_early, t);
    bufferevent_write_buffer(t->up, head);
    evbuffer_free(head);
    bufferevent_enable(t->up, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(t->up, (struct sockaddr *)&ss, (int)sslen) != 0) {
        fail_early(t, 502, "upstream_error", "the upstream API (UPSTREAM_API_URL) could not be reached for the Upgrade request");
        return;
    }
    conns_watch(p->conns, req, on_client_gone, t);
}
