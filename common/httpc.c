/* httpc — libcurl multi on a libevent base (the curl "hiperfifo" pattern).
 * libcurl is loaded (curldl) by the first request it carries; its
 * functions are called through the table cu.
 *
 * curl tells us which sockets to watch (sock_cb) and when to wake it up
 * (timer_cb); libevent tells curl when a socket is ready (on_socket) or the
 * timer expired (on_timer).  After each of those, finished transfers are
 * collected (collect_done) and their callbacks run.  A request is unlinked,
 * removed from the multi and marked done *before* its callback runs, so the
 * callback may start requests, cancel others, or even free the client. */
#include "httpc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "curldl.h"
#include "hpool.h"

#define DEFAULT_MAX_RESPONSE (1024u * 1024u)
#define MAX_RESPONSE_CEILING ((size_t)1 << 40)
#define MAX_CACHED_CONNECTIONS 64L
#define MAX_IDLE_EASY 32           /* easy handles kept for reuse */
#define MAX_RESPONSE_HEADERS 256   /* header lines kept per response */

struct httpc {
    struct event_base *base;
    hpool *pool;                      /* plain http:// to an IP address; NULL: curl for all */
    CURLM *multi;                     /* created with the first request curl carries */
    struct event *timer;
    struct curl_slist *plain_headers; /* just "Expect:", for requests without own headers */
    httpc_req *head;                  /* in-flight requests, for httpc_free */
    size_t in_flight;
    CURL *idle[MAX_IDLE_EASY];        /* reset easy handles, reused to save allocations */
    size_t nidle;
    int dispatch_depth;               /* > 0 while our libevent callbacks run */
    bool freeing;                     /* httpc_free started: refuse new requests */
    bool free_pending;                /* httpc_free called from a callback: finish later */
    bool global_init;
};

struct httpc_req {
    httpc *c;
    CURL *easy;                 /* curl carries it, or */
    hpool_req *native;          /* hpool does */
    httpc_req *prev, *next;
    httpc_done_cb cb;
    void *arg;
    bool done;                  /* unlinked; callback running or ran */
    bool too_big;
    bool oom;
    bool want_headers;
    const httpc_stream *stream; /* the caller's, or NULL */
    bool paused, headed;        /* streaming (curl): asked to stop; on_head ran */
    long status;                /* streaming (curl): of the last status line */
    struct event *kick;         /* streaming (curl): resumes from the loop */
    char reason[64];            /* the last status line's reason phrase */
    struct curl_slist *headers; /* owned, or c->plain_headers (borrowed) */
    size_t max_body;
    char *resp;                 /* owned; NUL-terminated when non-NULL */
    size_t resp_len, resp_cap;
    char **hdrs;                /* owned lines */
    size_t nhdrs, hdrs_cap;
    char errbuf[CURL_ERROR_SIZE];
    size_t body_len;
    char body[];                /* copy of the request body */
};

/* libcurl's functions; set by the first curl_setup, process-wide. */
static const curldl_fns *cu;

/* One per socket curl asks us to watch; attached with curl_multi_assign. */
typedef struct sock_watch {
    struct event *ev;
    int kind;
} sock_watch;

static void collect_done(httpc *c);
static void destroy(httpc *c);
static int curl_setup(httpc *c, char *err);

static void set_err(char *err, const char *msg)
{
    if (err) snprintf(err, 256, "%s", msg);
}

/* ---------- event loop glue ---------- */

static void dispatch_enter(httpc *c) { c->dispatch_depth++; }

static void dispatch_leave(httpc *c)
{
    if (--c->dispatch_depth == 0 && c->free_pending) destroy(c);
}

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    httpc *c = arg;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    dispatch_enter(c);
    /* The watch for fd may be freed inside (CURL_POLL_REMOVE): not touched after. */
    cu->multi_socket_action(c->multi, fd, flags, &running);
    collect_done(c);
    dispatch_leave(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    httpc *c = arg;
    int running;
    (void)fd;
    (void)what;
    dispatch_enter(c);
    cu->multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect_done(c);
    dispatch_leave(c);
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer; 0 means "as soon as possible"
 * and must still fire (from the loop: curl must not be re-entered here). */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    httpc *c = userp;
    (void)multi;
    if (timeout_ms < 0) return evtimer_del(c->timer) == 0 ? 0 : -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

static void watch_free(sock_watch *w)
{
    if (!w) return;
    if (w->ev) event_free(w->ev);
    free(w);
}

/* CURLMOPT_SOCKETFUNCTION: (re)arm, or stop watching, one socket. */
static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    httpc *c = userp;
    sock_watch *w = socketp;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        watch_free(w);
        cu->multi_assign(c->multi, s, NULL);
        return 0;
    }
    int kind = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST;
    if (!w) {
        w = calloc(1, sizeof(*w));
        if (!w) return -1;
        w->ev = event_new(c->base, s, (short)kind, on_socket, c);
        if (!w->ev || cu->multi_assign(c->multi, s, w) != CURLM_OK) {
            watch_free(w);
            return -1;
        }
    } else if (w->kind == kind) {
        return 0;
    } else {
        /* event_assign may only touch an event that is not pending. */
        event_del(w->ev);
        if (event_assign(w->ev, c->base, s, (short)kind, on_socket, c) != 0) return -1;
    }
    w->kind = kind;
    return event_add(w->ev, NULL) == 0 ? 0 : -1;
}

/* ---------- curl data callbacks ---------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_req *r = userp;
    size_t n = size * nmemb;
    if (r->stream) {
        /* paused: curl keeps these bytes and hands them over again once
         * httpc_resume unpauses it */
        if (r->paused) return CURL_WRITEFUNC_PAUSE;
        if (n && !r->stream->on_data(data, n, r->arg)) r->paused = true;
        return n;
    }
    if (n > r->max_body - r->resp_len) {
        r->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap * 2 : 4096;
        if (cap < r->resp_len + n + 1) cap = r->resp_len + n + 1;
        if (cap > r->max_body + 1) cap = r->max_body + 1;
        char *p = realloc(r->resp, cap);
        if (!p) {
            r->oom = true;
            return 0;
        }
        r->resp = p;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, data, n);
    r->resp_len += n;
    r->resp[r->resp_len] = '\0';
    return n;
}

static void drop_headers(httpc_req *r)
{
    for (size_t i = 0; i < r->nhdrs; i++) free(r->hdrs[i]);
    r->nhdrs = 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_req *r = userp;
    size_t n = size * nmemb, len = n;
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r')) len--;
    if (len == 0) { /* the blank line ending the header block */
        if (r->stream && !r->headed && r->status >= 200) {
            httpc_response head = {
                .error = HTTPC_OK,
                .status = r->status,
                .body = "",
                .headers = (const char *const *)r->hdrs,
                .nheaders = r->nhdrs,
                .reason = r->reason,
            };
            r->headed = true;
            if (!r->stream->on_head(&head, r->arg)) r->paused = true;
        }
        return n;
    }
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* A status line starts a new block (after a 1xx): keep only the last. */
        drop_headers(r);
        const char *sp = memchr(data, ' ', len);
        r->status = 0;
        r->reason[0] = '\0';
        if (sp && (size_t)(data + len - sp) >= 4) {
            r->status = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
            size_t rl = 0;
            for (const char *q = sp + 5; q < data + len && rl < sizeof(r->reason) - 1; q++) {
                if ((unsigned char)*q < 0x20 || *q == 0x7f) {
                    rl = 0;
                    break;
                }
                r->reason[rl++] = *q;
            }
            r->reason[rl] = '\0';
        }
        return n;
    }
    if (r->nhdrs == MAX_RESPONSE_HEADERS) {
        r->too_big = true;
        return 0;
    }
    if (r->nhdrs == r->hdrs_cap) {
        size_t cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
        char **p = realloc(r->hdrs, cap * sizeof(*p));
        if (!p) goto oom;
        r->hdrs = p;
        r->hdrs_cap = cap;
    }
    char *line = malloc(len + 1);
    if (!line) goto oom;
    memcpy(line, data, len);
    line[len] = '\0';
    r->hdrs[r->nhdrs++] = line;
    return n;
oom:
    r->oom = true;
    return 0;
}

/* ---------- requests ---------- */

static void req_free(httpc_req *r)
{
    httpc *c = r->c;
    if (r->kick) event_free(r->kick);
    if (!r->easy && !r->headers) { /* an hpool request, or one that never got a handle */
        free(r);
        return;
    }
    if (r->easy) {
        if (c->nidle < MAX_IDLE_EASY && !c->freeing) {
            cu->easy_reset(r->easy);
            c->idle[c->nidle++] = r->easy;
        } else {
            cu->easy_cleanup(r->easy);
        }
    }
    if (r->headers != c->plain_headers) cu->slist_free_all(r->headers);
    drop_headers(r);
    free(r->hdrs);
    free(r->resp);
    free(r);
}

/* Takes r out of the client and the multi; afterwards only its callback and
 * req_free may touch it. */
static void req_detach(httpc_req *r)
{
    httpc *c = r->c;
    r->done = true;
    if (r->native) hpool_cancel(r->native);
    else if (r->easy) cu->multi_remove_handle(c->multi, r->easy);
    r->native = NULL;
    if (r->prev) r->prev->next = r->next;
    else c->head = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    c->in_flight--;
}

static void req_finish(httpc_req *r, int error, const char *errmsg)
{
    httpc_response resp = {
        .error = error,
        .errmsg = error == HTTPC_OK ? NULL : errmsg,
        .body = r->resp ? r->resp : "",
        .body_len = r->resp_len,
        .headers = (const char *const *)r->hdrs,
        .nheaders = r->want_headers ? r->nhdrs : 0,
        .reason = r->reason,
        .streamed = r->headed,
    };
    if (r->easy) {
        cu->easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.status);
        cu->easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &resp.total_s);
    }
    r->cb(&resp, r->arg);
}

static void complete(httpc_req *r, CURLcode code)
{
    char msg[CURL_ERROR_SIZE + 64];
    int error;
    switch (code) {
    case CURLE_OK: error = HTTPC_OK; break;
    case CURLE_OPERATION_TIMEDOUT: error = HTTPC_ETIMEOUT; break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: error = HTTPC_ECONNECT; break;
    case CURLE_FILESIZE_EXCEEDED: error = HTTPC_ETOOBIG; break;
    default: error = r->too_big ? HTTPC_ETOOBIG : HTTPC_EOTHER; break;
    }
    if (error == HTTPC_ETOOBIG)
        snprintf(msg, sizeof(msg), "the response is larger than %zu bytes", r->max_body);
    else if (r->oom)
        snprintf(msg, sizeof(msg), "out of memory while reading the response");
    else
        snprintf(msg, sizeof(msg), "%s", r->errbuf[0] ? r->errbuf : cu->easy_strerror(code));
    req_detach(r);
    req_finish(r, error, msg);
    req_free(r);
}

/* curl's message for an easy handle dies with curl_multi_remove_handle, and
 * removing a handle (a callback cancelling another request) drops its pending
 * message too, so each message is read and acted on one at a time. */
static void collect_done(httpc *c)
{
    CURLMsg *m;
    int left;
    while (!c->freeing && (m = cu->multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        CURLcode code = m->data.result;
        char *priv = NULL;
        cu->easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        httpc_req *r = (httpc_req *)(void *)priv;
        if (r && !r->done) complete(r, code);
    }
}

static int req_setup(httpc_req *r, const httpc_opts *o, char *err)
{
    httpc *c = r->c;
    CURL *e = r->easy;
    CURLcode rc = CURLE_OK;
    const char *m = o->method;
    long connect_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : o->timeout_ms;

    if (o->headers && o->headers[0]) {
        for (const char *const *h = o->headers; *h; h++) {
            struct curl_slist *l = cu->slist_append(r->headers, *h);
            if (!l) goto oom;
            r->headers = l;
        }
        /* curl would otherwise wait up to 1 s for "100 Continue" on big bodies. */
        struct curl_slist *l = cu->slist_append(r->headers, "Expect:");
        if (!l) goto oom;
        r->headers = l;
    } else {
        r->headers = c->plain_headers;
    }

#define SET(opt, val) if (rc == CURLE_OK) rc = cu->easy_setopt(e, opt, val)
    SET(CURLOPT_URL, o->url);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_TCP_NODELAY, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    if (r->stream) {
        /* no bound on the whole transfer: a silence of timeout_ms ends it */
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, (o->timeout_ms + 999) / 1000);
    } else {
        SET(CURLOPT_TIMEOUT_MS, o->timeout_ms);
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
    }
    SET(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    SET(CURLOPT_HTTPHEADER, r->headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)r);
    if (r->want_headers || r->stream) {
        SET(CURLOPT_HEADERFUNCTION, on_header);
        SET(CURLOPT_HEADERDATA, (void *)r);
    }
    if (strcmp(m, "GET") == 0 && !r->body_len) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else {
        /* Any method with a body goes through curl's POST machinery; a POST
         * without one still sends Content-Length: 0. */
        if (r->body_len || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
            SET(CURLOPT_POSTFIELDS, (void *)r->body);
        }
        if (strcmp(m, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, m);
    }
#undef SET
    if (rc != CURLE_OK) {
        snprintf(err, 256, "cannot set up the request: %s", cu->easy_strerror(rc));
        return -1;
    }
    return 0;
oom:
    set_err(err, "out of memory");
    return -1;
}

static void link_req(httpc *c, httpc_req *r)
{
    r->next = c->head;
    if (c->head) c->head->prev = r;
    c->head = r;
    c->in_flight++;
}

/* hpool's completion: the request leaves the client before its callback,
 * which may free the client; afterwards only r itself is touched. */
static void native_done(const httpc_response *resp, void *arg)
{
    httpc_req *r = arg;
    r->native = NULL; /* hpool frees its side after this returns */
    req_detach(r);
    r->cb(resp, r->arg);
    free(r);
}

/* hpool calls the stream with its own argument (the httpc_req); these pass
 * it on to the caller's. */
static bool native_head(const httpc_response *head, void *arg)
{
    httpc_req *r = arg;
    return r->stream->on_head(head, r->arg);
}

static bool native_data(const char *data, size_t n, void *arg)
{
    httpc_req *r = arg;
    return r->stream->on_data(data, n, r->arg);
}

static const httpc_stream native_stream = {native_head, native_data};

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    httpc_req *r = arg;
    (void)fd;
    (void)what;
    if (r->done || !r->easy || r->paused) return;
    httpc *c = r->c;
    int running;
    dispatch_enter(c);
    cu->easy_pause(r->easy, CURLPAUSE_CONT); /* may hand over the bytes it kept */
    cu->multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect_done(c);
    dispatch_leave(c);
}

void httpc_resume(httpc_req *r)
{
    if (!r || r->done) return;
    if (r->native) {
        hpool_resume(r->native);
        return;
    }
    if (!r->paused || !r->easy) return;
    r->paused = false;
    if (!r->kick) r->kick = event_new(r->c->base, -1, 0, on_kick, r);
    if (r->kick) event_active(r->kick, EV_TIMEOUT, 1);
}

httpc_req *httpc_start(httpc *c, const httpc_opts *o, httpc_done_cb cb, void *arg, char err[256])
{
    httpc_req *r = NULL;
    size_t body_len = o && o->body ? o->body_len : 0;

    if (!c || !o || !o->method || !*o->method || !o->url || !cb || o->timeout_ms <= 0) {
        set_err(err, "bad options: method, url, callback and a positive timeout_ms are required");
        return NULL;
    }
    if (c->freeing) {
        set_err(err, "the HTTP client is shutting down");
        return NULL;
    }
    if (body_len > SIZE_MAX - sizeof(*r) - 1) {
        set_err(err, "request body too large");
        return NULL;
    }
    size_t max_body = o->max_response_bytes ? o->max_response_bytes : DEFAULT_MAX_RESPONSE;
    if (max_body > MAX_RESPONSE_CEILING) max_body = MAX_RESPONSE_CEILING; /* keeps cap + 1 and curl_off_t sane */
    if (c->pool) {
        bool declined = false;
        r = calloc(1, sizeof(*r) + 1);
        if (!r) goto oom;
        r->c = c;
        r->cb = cb;
        r->arg = arg;
        r->stream = o->stream;
        httpc_opts no = *o;
        if (o->stream) no.stream = &native_stream;
        r->native = hpool_start(c->pool, &no, max_body, native_done, r, &declined, err);
        if (r->native) {
            link_req(c, r);
            return r;
        }
        free(r);
        r = NULL;
        if (!declined) return NULL; /* hpool's URL, but it could not start */
    }
    if (!c->multi && curl_setup(c, err) != 0) return NULL;
    r = malloc(sizeof(*r) + body_len + 1);
    if (!r) goto oom;
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->cb = cb;
    r->arg = arg;
    r->want_headers = o->want_headers;
    r->stream = o->stream;
    r->max_body = max_body;
    r->body_len = body_len;
    if (body_len) memcpy(r->body, o->body, body_len);
    r->body[body_len] = '\0';

    r->easy = c->nidle ? c->idle[--c->nidle] : cu->easy_init();
    if (!r->easy) goto oom;
    if (req_setup(r, o, err) != 0) goto fail;
    CURLMcode mc = cu->multi_add_handle(c->multi, r->easy);
    if (mc != CURLM_OK) {
        snprintf(err, 256, "cannot start the request: %s", cu->multi_strerror(mc));
        goto fail;
    }
    link_req(c, r);
    return r;
oom:
    set_err(err, "out of memory");
fail:
    if (r) req_free(r);
    return NULL;
}

void httpc_cancel(httpc_req *r)
{
    /* done: its callback is running (the header forbids this, but a no-op is
     * safer than a double free). */
    if (!r || r->done) return;
    req_detach(r);
    req_free(r);
}

size_t httpc_in_flight(const httpc *c) { return c ? c->in_flight : 0; }

/* ---------- lifetime ---------- */

httpc *httpc_new(struct event_base *base, char err[256])
{
    httpc *c = calloc(1, sizeof(*c));
    if (!c) {
        set_err(err, "out of memory");
        return NULL;
    }
    c->base = base;
    /* curl honours these variables; hpool does not, so with one set curl
     * carries everything, as before hpool existed. */
    bool proxied = getenv("http_proxy") || getenv("all_proxy") || getenv("ALL_PROXY");
    if (!proxied && !(c->pool = hpool_new(base))) {
        set_err(err, "out of memory");
        goto err;
    }
    return c;
err:
    destroy(c);
    return NULL;
}

void httpc_use_pool(httpc *c, bool on)
{
    if (!on && c->pool && c->in_flight == 0) {
        hpool_free(c->pool);
        c->pool = NULL;
    } else if (on && !c->pool) {
        c->pool = hpool_new(c->base);
    }
}

/* curl is loaded and set up on first use: a process whose backends are all
 * plain http:// by address never maps libcurl, its TLS library or their
 * dependencies (about 6 MiB of resident pages, see curldl.h). */
static int curl_setup(httpc *c, char *err)
{
    if (!cu && !(cu = curldl_load(err))) return -1;
    if (cu->global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        set_err(err, "curl_global_init failed");
        return -1;
    }
    c->global_init = true;
    c->multi = cu->multi_init();
    c->timer = evtimer_new(c->base, on_timer, c);
    c->plain_headers = cu->slist_append(NULL, "Expect:");
    if (!c->multi || !c->timer || !c->plain_headers) {
        set_err(err, "out of memory");
        goto err;
    }
    CURLMcode mc = cu->multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    if (mc == CURLM_OK) mc = cu->multi_setopt(c->multi, CURLMOPT_SOCKETDATA, (void *)c);
    if (mc == CURLM_OK) mc = cu->multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    if (mc == CURLM_OK) mc = cu->multi_setopt(c->multi, CURLMOPT_TIMERDATA, (void *)c);
    if (mc == CURLM_OK) mc = cu->multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, MAX_CACHED_CONNECTIONS);
    if (mc != CURLM_OK) {
        snprintf(err, 256, "cannot set up curl: %s", cu->multi_strerror(mc));
        goto err;
    }
    return 0;
err:
    if (c->multi) cu->multi_cleanup(c->multi);
    if (c->timer) event_free(c->timer);
    cu->slist_free_all(c->plain_headers);
    cu->global_cleanup();
    c->multi = NULL;
    c->timer = NULL;
    c->plain_headers = NULL;
    c->global_init = false;
    return -1;
}

static void destroy(httpc *c)
{
    /* Cached connections are closed here, which calls sock_cb/timer_cb: the
     * events they use must still exist. */
    if (c->multi) cu->multi_cleanup(c->multi);
    for (size_t i = 0; i < c->nidle; i++) cu->easy_cleanup(c->idle[i]);
    if (c->timer) event_free(c->timer);
    if (c->plain_headers) cu->slist_free_all(c->plain_headers);
    if (c->global_init) cu->global_cleanup();
    hpool_free(c->pool);
    free(c);
}

void httpc_free(httpc *c)
{
    if (!c || c->freeing) return;
    c->freeing = true;
    while (c->head) {
        httpc_req *r = c->head;
        req_detach(r);
        req_finish(r, HTTPC_ECANCELLED, "the HTTP client was shut down");
        req_free(r);
    }
    if (c->dispatch_depth > 0) c->free_pending = true; /* called from a callback */
    else destroy(c);
}
