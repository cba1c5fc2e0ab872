/* conns — see conns.h.
 *
 * Each connection in use has an entry, found from its evhttp_connection
 * through a small hash table, with its deadline timer (one of libevent's
 * "common timeouts": one duration, an O(1) queue) and a count of the bytes
 * read since its last reply, so an expiring deadline can tell a slow client
 * (bytes came, the request did not) from an idle keep-alive connection.
 * Accepted bufferevents wait in `fresh`, each with a reference held, until
 * the deferred `adopt` event runs in the same loop turn, after evhttp has
 * finished setting the connection up. */
#include "conns.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

#include "h1check.h"
#include "jsonw.h"
#include "log.h"
#include "pmetrics.h"
#include "util.h"

#define MAX_BUCKETS ((size_t)1 << 16)
#define LOG_EVERY_S 10.0

typedef struct centry {
    struct centry *next; /* bucket chain */
    conns *c;
    struct evhttp_connection *evcon;
    struct event *deadline;
    struct evbuffer_cb_entry *watch; /* on the input buffer: counts bytes read */
    size_t bytes;                    /* read since the last reply (or the start) */
    bool busy;                       /* a whole request is being answered */
    bool refused;                    /* the stream broke HTTP framing: answered, closing */
    struct event *closer;            /* closes it once the refusal is written */
    void (*gone)(void *);            /* conns_watch: told when the connection closes */
    void *gone_arg;
    struct event *hup_arm;           /* conns_watch: starts the hang-up check */
    struct event *hup;               /* EV_CLOSED on the socket: the client hung up */
    bool tunnel;                     /* conns_tunnel: bytes are not HTTP any more */
    h1check check;                   /* the framing of every byte read */
} centry;

struct conns {
    metrics_family *rejected; /* turnout_rejected_requests_total */
    struct event_base *base;
    size_t max, open;
    const struct timeval *timeout; /* common timeout of CLIENT_REQUEST_TIMEOUT_S */
    const struct timeval *hup_after; /* common timeout of HUP_CHECK_MS */
    h1_limits limits;
    centry **buckets;
    size_t nbuckets;
    struct bufferevent **fresh; /* accepted, not adopted yet; a reference each */
    size_t nfresh, fresh_cap;
    struct event *adopt;
    double last_limit_log, last_timeout_log;
};

static void count_reject(conns *c, enum pm_reject why)
{
    size_t k = why;
    metrics_add(c->rejected, metrics_at(c->rejected, &k), 1);
}

static size_t slot(const conns *c, const void *evcon)
{
    uint64_t h = (uint64_t)(uintptr_t)evcon * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32) & (c->nbuckets - 1);
}

static centry *find(const conns *c, const struct evhttp_connection *evcon)
{
    if (!evcon) return NULL;
    for (centry *e = c->buckets[slot(c, evcon)]; e; e = e->next)
        if (e->evcon == evcon) return e;
    return NULL;
}

static void unlink_entry(conns *c, centry *e)
{
    for (centry **pp = &c->buckets[slot(c, e->evcon)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            return;
        }
    }
}

static bool rate_ok(double *last)
{
    double now = util_monotonic();
    if (now - *last < LOG_EVERY_S) return false;
    *last = now;
    return true;
}

/* ---------- per connection ---------- */

static void on_close_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    centry *e = arg;
    evhttp_connection_free(e->evcon); /* on_closed frees e */
}

/* Lingering close, as nginx does: once the refusal is out, the sending
 * side is shut and what the client still sends is read and dropped until
 * it closes or LINGER_S passes — closing with unread bytes would make the
 * kernel reset the connection, and the client could lose the refusal. */
#define LINGER_S 2

static void on_refusal_event(struct bufferevent *bev, short what, void *arg);

static void on_linger_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* The refusal is out (or the client went away): linger, then close. */
static void on_refusal_written(struct bufferevent *bev, void *arg)
{
    centry *e = arg;
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd < 0 || shutdown(fd, SHUT_WR) != 0) {
        event_active(e->closer, EV_TIMEOUT, 1);
        return;
    }
    bufferevent_setcb(bev, on_linger_read, NULL, on_refusal_event, e);
    bufferevent_enable(bev, EV_READ);
    struct timeval linger = {LINGER_S, 0};
    evtimer_add(e->closer, &linger);
}

static void on_refusal_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    event_active(((centry *)arg)->closer, EV_TIMEOUT, 1);
}

/* The bytes broke HTTP framing: nothing more is read or parsed; the client
 * gets the JSON error and the connection closes.  evhttp never sees the
 * bytes (this runs as they arrive, before its parser). */
static void refuse(centry *e, struct bufferevent *bev)
{
    conns *c = e->c;
    e->refused = true;
    count_reject(c, e->check.status == 413 ? RJ_TOO_LARGE : RJ_BAD_HTTP);
    LOG_INFO("refused a request that breaks HTTP framing", "code", e->check.code,
             "error", e->check.message);
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (!e->closer) e->closer = evtimer_new(c->base, on_close_now, e);
    if (e->busy || !e->closer) {
        /* a reply is being made on this connection: it closes after it */
        bufferevent_disable(bev, EV_READ);
        return;
    }
    char body[512], head[256];
    jsonw w;
    jw_init(&w, body, sizeof(body));
    jw_obj_open(&w);
    jw_lit_key(&w, "error");
    jw_cstring(&w, e->check.code);
    jw_lit_key(&w, "message");
    jw_cstring(&w, e->check.message);
    jw_obj_close(&w);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                     e->check.status, util_reason(e->check.status), jw_len(&w));
    bufferevent_setcb(bev, NULL, on_refusal_written, on_refusal_event, e);
    bufferevent_disable(bev, EV_READ);
    bufferevent_enable(bev, EV_WRITE);
    if (n < 0 || bufferevent_write(bev, head, (size_t)n) != 0 || bufferevent_write(bev, jw_text(&w), jw_len(&w)) != 0)
        event_active(e->closer, EV_TIMEOUT, 1);
    jw_free(&w);
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    centry *e = arg;
    e->bytes += info->n_added;
    if (!info->n_added || e->refused || e->tunnel) return;
    /* the bytes just added are the buffer's last n_added */
    size_t len = evbuffer_get_length(buf);
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(buf, &at, len - info->n_added, EVBUFFER_PTR_SET) != 0) return;
    struct evbuffer_iovec v[8];
    size_t left = info->n_added;
    while (left > 0) {
        int k = evbuffer_peek(buf, (ev_ssize_t)left, &at, v, 8);
        if (k <= 0) return;
        for (int i = 0; i < k && i < 8 && left > 0; i++) {
            size_t take = v[i].iov_len < left ? v[i].iov_len : left;
            if (h1check_feed(&e->check, v[i].iov_base, take) != 0) {
                refuse(e, evhttp_connection_get_bufferevent(e->evcon));
                return;
            }
            left -= take;
            if (evbuffer_ptr_set(buf, &at, take, EVBUFFER_PTR_ADD) != 0) return;
        }
    }
}

static void on_closed(struct evhttp_connection *evcon, void *arg)
{
    centry *e = arg;
    conns *c = e->c;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    if (bev && e->watch) evbuffer_remove_cb_entry(bufferevent_get_input(bev), e->watch);
    unlink_entry(c, e);
    c->open--;
    event_free(e->deadline); /* may be running: event_free is safe from its own callback */
    if (e->closer) event_free(e->closer);
    if (e->hup_arm) event_free(e->hup_arm);
    if (e->hup) event_free(e->hup);
    void (*gone)(void *) = e->gone;
    void *gone_arg = e->gone_arg;
    free(e);
    if (gone) gone(gone_arg);
}

/* ---------- a client that hangs up while its reply is awaited ---------- */

static void on_hup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    centry *e = arg;
    evhttp_connection_free(e->evcon); /* on_closed tells the watcher */
}

static void on_hup_arm(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    centry *e = arg;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(e->evcon);
    evutil_socket_t sock = bev ? bufferevent_getfd(bev) : -1;
    if (!e->gone || sock < 0) return;
    if (!e->hup) e->hup = event_new(e->c->base, sock, EV_CLOSED, on_hup, e);
    if (e->hup) event_add(e->hup, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    centry *e = arg;
    conns *c = e->c;
    (void)fd;
    (void)what;
    if (e->busy || e->refused || e->tunnel) return; /* answering; refused and lingering; a tunnel's own */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(e->evcon);
    if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
        evtimer_add(e->deadline, c->timeout); /* the last reply is still going out */
        return;
    }
    if (e->bytes > 0) {
        count_reject(c, RJ_CLIENT_TIMEOUT);
        if (rate_ok(&c->last_timeout_log))
            LOG_INFO("closed a connection whose request did not arrive in time (counted as "
                     "rejected reason=client_timeout; CLIENT_REQUEST_TIMEOUT_S)");
    }
    evhttp_connection_free(e->evcon); /* on_closed frees e */
}

static void adopt_one(conns *c, struct evhttp_connection *evcon, struct bufferevent *bev)
{
    if (c->open >= c->max) {
        count_reject(c, RJ_MAX_CONNECTIONS);
        if (rate_ok(&c->last_limit_log))
            LOG_WARN("connection limit reached: new connections are closed at once (counted as rejected "
                     "reason=max_connections; MAX_CLIENT_CONNECTIONS)");
        evhttp_connection_free(evcon);
        return;
    }
    centry *e = calloc(1, sizeof(*e));
    if (!e) return; /* out of memory: this one goes without limit and deadline */
    e->c = c;
    e->evcon = evcon;
    h1check_init(&e->check, &c->limits);
    e->deadline = evtimer_new(c->base, on_deadline, e);
    e->watch = evbuffer_add_cb(bufferevent_get_input(bev), on_input, e);
    if (!e->deadline || !e->watch) {
        if (e->watch) evbuffer_remove_cb_entry(bufferevent_get_input(bev), e->watch);
        if (e->deadline) event_free(e->deadline);
        free(e);
        return;
    }
    size_t s = slot(c, evcon);
    e->next = c->buckets[s];
    c->buckets[s] = e;
    c->open++;
    evhttp_connection_set_closecb(evcon, on_closed, e);
    evtimer_add(e->deadline, c->timeout);
}

/* Runs in the loop turn that accepted the connections, after evhttp set
 * each up: its connection object is then the bufferevent's callback
 * argument (and a bufferevent evhttp already gave up has none). */
static void on_adopt(evutil_socket_t fd, short what, void *arg)
{
    conns *c = arg;
    (void)fd;
    (void)what;
    size_t n = c->nfresh;
    c->nfresh = 0;
    for (size_t i = 0; i < n; i++) {
        struct bufferevent *bev = c->fresh[i];
        void *cbarg = NULL;
        bufferevent_getcb(bev, NULL, NULL, NULL, &cbarg);
        struct evhttp_connection *evcon = cbarg;
        if (evcon && evhttp_connection_get_bufferevent(evcon) == bev) adopt_one(c, evcon, bev);
        bufferevent_decref(bev);
    }
}

struct bufferevent *conns_track(conns *c, struct bufferevent *bev)
{
    if (!bev || !c) return bev;
    if (c->nfresh == c->fresh_cap) {
        size_t cap = c->fresh_cap ? c->fresh_cap * 2 : 16;
        struct bufferevent **f = realloc(c->fresh, cap * sizeof(*f));
        if (!f) return bev; /* untracked: no limit and deadline for this one */
        c->fresh = f;
        c->fresh_cap = cap;
    }
    bufferevent_incref(bev);
    c->fresh[c->nfresh++] = bev;
    if (c->nfresh == 1) event_active(c->adopt, EV_TIMEOUT, 1);
    return bev;
}

struct bufferevent *conns_plain_bevcb(struct event_base *base, void *conns_arg)
{
    return conns_track(conns_arg, bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE));
}

void conns_request_in(conns *c, struct evhttp_request *req)
{
    const char *conn = evhttp_find_header(evhttp_request_get_input_headers(req), "Connection");
    if (conn && strcasecmp(conn, "close") != 0 && strcasecmp(conn, "keep-alive") != 0 &&
        util_list_has(conn, "close", 5)) /* evhttp honours only a value of exactly "close" */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (!e) return;
    e->busy = true;
    evtimer_del(e->deadline);
}

void conns_reply_out(conns *c, struct evhttp_request *req)
{
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (!e) return;
    if (e->refused) {
        /* what came after this request broke framing: close once this
         * reply is out */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        return;
    }
    e->busy = false;
    e->bytes = 0;
    evtimer_add(e->deadline, c->timeout);
}

/* How long a watched request waits before its socket is watched for a
 * hang-up: a quick reply never pays the two epoll_ctl calls. */
#define HUP_CHECK_MS 100

void conns_watch(conns *c, struct evhttp_request *req, void (*gone)(void *arg), void *arg)
{
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (!e) return;
    e->gone = gone;
    e->gone_arg = arg;
    if (!gone || !c->hup_after || !(event_base_get_features(c->base) & EV_FEATURE_EARLY_CLOSE)) return;
    if (!e->hup_arm) e->hup_arm = evtimer_new(c->base, on_hup_arm, e);
    if (e->hup_arm) evtimer_add(e->hup_arm, c->hup_after);
}

void conns_stop_hup_check(conns *c, struct evhttp_request *req)
{
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (!e) return;
    if (e->hup_arm) evtimer_del(e->hup_arm);
    if (e->hup) event_del(e->hup);
}

void conns_unwatch(conns *c, struct evhttp_request *req)
{
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (!e) return;
    conns_stop_hup_check(c, req);
    e->gone = NULL;
    e->gone_arg = NULL;
}

void conns_tunnel(conns *c, struct evhttp_request *req)
{
    centry *e = c ? find(c, evhttp_request_get_connection(req)) : NULL;
    if (e) e->tunnel = true;
}

void conns_close_after_flush(conns *c, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    centry *e = c ? find(c, evcon) : NULL;
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    if (e && !e->closer) e->closer = evtimer_new(c->base, on_close_now, e);
    if (!e || !bev || !e->closer) {
        if (evcon) evhttp_connection_free(evcon);
        return;
    }
    conns_unwatch(c, req);
    e->refused = true; /* nothing more is read as HTTP */
    bufferevent_setcb(bev, NULL, on_refusal_written, on_refusal_event, e);
    bufferevent_disable(bev, EV_READ);
    bufferevent_enable(bev, EV_WRITE);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) on_refusal_written(bev, e);
}

size_t conns_open(const conns *c) { return c ? c->open : 0; }

conns *conns_new(struct event_base *base, size_t max, long request_timeout_s, metrics_family *rejected,
                 const h1_limits *limits)
{
    conns *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->limits = *limits;
    c->rejected = rejected;
    c->base = base;
    c->max = max;
    c->nbuckets = 256;
    while (c->nbuckets < c->max && c->nbuckets < MAX_BUCKETS) c->nbuckets *= 2;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    struct timeval tv = {(time_t)request_timeout_s, 0};
    c->timeout = event_base_init_common_timeout(base, &tv);
    struct timeval hup = {0, HUP_CHECK_MS * 1000};
    c->hup_after = event_base_init_common_timeout(base, &hup);
    c->adopt = event_new(base, -1, 0, on_adopt, c);
    if (!c->buckets || !c->timeout || !c->adopt) {
        conns_free(c);
        return NULL;
    }
    return c;
}

void conns_free(conns *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->nfresh; i++) bufferevent_decref(c->fresh[i]);
    /* entries left (evhttp_free not called first): drop them without their connections */
    for (size_t i = 0; c->buckets && i < c->nbuckets; i++) {
        for (centry *e = c->buckets[i], *n; e; e = n) {
            n = e->next;
            struct bufferevent *bev = evhttp_connection_get_bufferevent(e->evcon);
            if (bev && e->watch) evbuffer_remove_cb_entry(bufferevent_get_input(bev), e->watch);
            evhttp_connection_set_closecb(e->evcon, NULL, NULL);
            event_free(e->deadline);
            if (e->closer) event_free(e->closer);
            if (e->hup_arm) event_free(e->hup_arm);
            if (e->hup) event_free(e->hup);
            free(e);
        }
    }
    if (c->adopt) event_free(c->adopt);
    free(c->fresh);
    free(c->buckets);
    free(c);
}
