/* hpool — see hpool.h.
 *
 * A connection (hconn) belongs to one origin (address + Host) and is in one
 * of three states: connecting, busy (one request on it) or idle (on its
 * origin's free list, closed after HPOOL_IDLE_TIMEOUT_MS or as soon as the
 * server closes it or sends anything).  Its read event stays armed from
 * socket() to close(), so a kept-alive request costs no epoll_ctl; the write
 * event is armed only while connecting or when send() would block.  One
 * timer per connection holds the request's deadline while busy and the idle
 * deadline while idle; it also delivers errors found inside hpool_start
 * (event_active), because callbacks never run from there.
 *
 * A request is detached from its connection, and the connection pooled or
 * closed, before the request's callback runs: the callback may start
 * requests (and get that very connection), cancel others, or free the pool
 * (deferred until the outermost event callback returns). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "hpool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "util.h"

#define MAX_IDLE_TOTAL HPOOL_MAX_IDLE_PER_ORIGIN /* the bound the fd checks rely on */
#define IN_CHUNK 4096
#define IN_MAX (HPOOL_MAX_HEADER_BYTES + IN_CHUNK)
#define MAX_CHUNK_LINE 1024
#define MAX_TRAILER_BYTES 16384
#define MAX_AUTHORITY HPOOL_MAX_AUTHORITY
#define STREAM_IN_CAP 65536 /* a streamed body is read in pieces of up to this */
#define MAX_REASON 64

typedef struct hconn hconn;

typedef struct origin {
    struct origin *next;
    char authority[MAX_AUTHORITY]; /* host[:port] as written in the URL; the Host header */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    hconn *idle; /* most recently used first */
} origin;

enum cstate { C_CONNECTING, C_BUSY, C_IDLE };
enum pstate { P_HEAD, P_BODY_LEN, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_END, P_TRAILER, P_BODY_EOF };

struct hconn {
    hpool *p;
    origin *o;
    hconn *prev, *next;     /* every connection of the pool */
    hconn *next_idle;       /* origin's free list */
    int fd;                 /* -1 when socket() failed (pending_err says why) */
    struct event *rev;      /* EV_READ | EV_PERSIST, armed for the whole life */
    struct event *wev;      /* EV_WRITE, armed while connecting or blocked on send */
    struct event *tev;      /* request deadline (busy), idle deadline (idle) */
    enum cstate state;
    hpool_req *req;         /* busy: the request on it */
    bool reused;            /* carried a request before the current one */
    int pending_err;        /* errno to report from the timer */
    char *in;               /* received, not yet consumed: in[in_off, in_len) */
    size_t in_len, in_off, in_cap;
    enum pstate ps;
    size_t trailer_bytes;
    unsigned long long remaining; /* body or chunk bytes still expected */
    bool close_after;       /* the server does not keep this connection */
};

struct hpool_req {
    hpool *p;
    hconn *c;               /* the connection carrying it (always set while in flight) */
    origin *o;
    httpc_done_cb cb;
    void *arg;
    bool idempotent, head, want_headers, retried, got_bytes;
    const httpc_stream *stream; /* NULL: the body is collected */
    bool paused;            /* streaming: on_head/on_data asked to stop reading */
    bool headed;            /* streaming: on_head ran */
    char reason[MAX_REASON];
    double t0, deadline;    /* monotonic seconds */
    long timeout_ms;
    size_t max_body;
    char *out;              /* the whole request: head + body */
    size_t out_len, out_off;
    char *body;             /* response body, NUL-terminated */
    size_t body_len, body_cap;
    char *hblock;           /* response header lines, NUL-separated; hdrs point into it */
    char **hdrs;
    size_t nhdrs;
    long status;
};

struct hpool {
    struct event_base *base;
    origin *origins;
    hconn *conns;
    size_t nconns, nidle;
    int depth;              /* > 0 while our event callbacks run */
    bool free_pending;
};

static void destroy(hpool *p);
static int send_out(hconn *c);
static hconn *conn_new(hpool *p, origin *o);

/* ---------- small helpers ---------- */

static void set_err(char *err, const char *msg)
{
    if (err) snprintf(err, 256, "%s", msg);
}

static void enter(hpool *p) { p->depth++; }

static void leave(hpool *p)
{
    if (--p->depth == 0 && p->free_pending) destroy(p);
}

static bool method_is(const char *m, const char *name) { return strcmp(m, name) == 0; }

static struct timeval ms_tv(double ms)
{
    if (ms < 1) ms = 1;
    long long v = (long long)ms;
    struct timeval tv = {(time_t)(v / 1000), (suseconds_t)((v % 1000) * 1000)};
    return tv;
}

static void arm_deadline(hconn *c, const hpool_req *r)
{
    struct timeval tv = ms_tv((r->deadline - util_monotonic()) * 1000.0);
    evtimer_add(c->tev, &tv);
}

/* ---------- URLs ---------- */

/* Splits "http://authority/path"; fills the origin's address.  False when
 * hpool does not carry this URL. */
static bool parse_url(const char *url, char authority[MAX_AUTHORITY], struct sockaddr_storage *ss,
                      socklen_t *sslen, const char **path)
{
    if (strncasecmp(url, "http://", 7) != 0) return false;
    const char *a = url + 7, *e = a;
    while (*e && *e != '/' && *e != '?' && *e != '#') e++;
    size_t alen = (size_t)(e - a);
    if (alen == 0 || alen >= MAX_AUTHORITY) return false;
    for (const char *s = url; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '#') return false;
    if (memchr(a, '@', alen)) return false; /* user info: curl's business */
    char host[MAX_AUTHORITY];
    const char *port_s = NULL;
    size_t hlen;
    if (a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb) return false;
        hlen = (size_t)(rb - a - 1);
        memcpy(host, a + 1, hlen);
        if (rb + 1 < e) {
            if (rb[1] != ':') return false;
            port_s = rb + 2;
        }
    } else {
        const char *colon = memchr(a, ':', alen);
        hlen = colon ? (size_t)(colon - a) : alen;
        memcpy(host, a, hlen);
        if (colon) port_s = colon + 1;
    }
    host[hlen] = '\0';
    long port = 80;
    if (port_s) {
        if (port_s == e) return false;
        port = 0;
        for (const char *s = port_s; s < e; s++) {
            if (*s < '0' || *s > '9') return false;
            port = port * 10 + (*s - '0');
            if (port > 65535) return false;
        }
        if (port == 0) return false;
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (a[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *sslen = sizeof(*v4);
    } else if (a[0] == '[' && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *sslen = sizeof(*v6);
    } else {
        return false; /* a host name: resolving it is curl's business */
    }
    memcpy(authority, a, alen);
    authority[alen] = '\0';
    *path = *e == '/' ? e : NULL; /* NULL: "/" (plus the query, if any) */
    if (!*path && *e == '?') *path = e;
    return true;
}

bool hpool_address(const char *url, char authority[HPOOL_MAX_AUTHORITY], struct sockaddr_storage *ss,
                   socklen_t *len)
{
    const char *path;
    return parse_url(url, authority, ss, len, &path);
}

bool hpool_handles(const char *url)
{
    char authority[MAX_AUTHORITY];
    struct sockaddr_storage ss;
    socklen_t len;
    const char *path;
    return url && parse_url(url, authority, &ss, &len, &path);
}

static origin *origin_get(hpool *p, const char *authority, const struct sockaddr_storage *ss, socklen_t len)
{
    for (origin *o = p->origins; o; o = o->next)
        if (strcmp(o->authority, authority) == 0) return o;
    origin *o = calloc(1, sizeof(*o));
    if (!o) return NULL;
    snprintf(o->authority, sizeof(o->authority), "%s", authority);
    o->addr = *ss;
    o->addrlen = len;
    o->next = p->origins;
    p->origins = o;
    return o;
}

/* ---------- requests ---------- */

static void req_free(hpool_req *r)
{
    free(r->out);
    free(r->body);
    free(r->hblock);
    free(r->hdrs);
    free(r);
}

static void reset_response(hpool_req *r)
{
    r->body_len = 0;
    if (r->body) r->body[0] = '\0';
    free(r->hblock);
    free(r->hdrs);
    r->hblock = NULL;
    r->hdrs = NULL;
    r->nhdrs = 0;
    r->status = 0;
}

/* Runs the callback and frees r.  r is already off its connection. */
static void deliver(hpool_req *r, int error, const char *msg)
{
    httpc_response resp = {
        .error = error,
        .errmsg = error == HTTPC_OK ? NULL : msg,
        .status = error == HTTPC_OK ? r->status : 0,
        .body = r->body && error == HTTPC_OK ? r->body : "",
        .body_len = error == HTTPC_OK ? r->body_len : 0,
        .headers = (const char *const *)r->hdrs,
        .nheaders = r->want_headers && error == HTTPC_OK ? r->nhdrs : 0,
        .total_s = util_monotonic() - r->t0,
        .reason = r->reason,
        .streamed = r->headed,
    };
    r->cb(&resp, r->arg);
    req_free(r);
}

static int append_body(hpool_req *r, const char *data, size_t n)
{
    if (n > r->max_body - r->body_len) return -1;
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap * 2 : 1024;
        if (cap < r->body_len + n + 1) cap = r->body_len + n + 1;
        char *b = realloc(r->body, cap);
        if (!b) return -2;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

/* ---------- connections ---------- */

static void idle_unlink(hconn *c)
{
    for (hconn **pp = &c->o->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            c->next_idle = NULL;
            c->p->nidle--;
            return;
        }
    }
}

static void conn_close(hconn *c)
{
    hpool *p = c->p;
    if (c->state == C_IDLE) idle_unlink(c);
    if (c->rev) event_free(c->rev);
    if (c->wev) event_free(c->wev);
    if (c->tev) event_free(c->tev);
    if (c->fd >= 0) close(c->fd);
    if (c->prev) c->prev->next = c->next;
    else p->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    p->nconns--;
    free(c->in);
    free(c);
}

static void conn_fail(hconn *c, int error, const char *msg)
{
    hpool_req *r = c->req;
    c->req = NULL;
    if (r) r->c = NULL;
    conn_close(c);
    if (r) deliver(r, error, msg);
}

/* Puts r on connection c and starts (or queues) its write.  0, or an errno
 * from send() that the caller reports. */
static int attach(hconn *c, hpool_req *r)
{
    c->req = r;
    r->c = c;
    c->ps = P_HEAD;
    c->close_after = false;
    c->trailer_bytes = 0;
    r->out_off = 0;
    arm_deadline(c, r);
    return c->state == C_BUSY ? send_out(c) : 0;
}

/* A fresh connection for r after a reused one failed; errors are reported
 * through the new connection's timer. */
static void retry(hconn *old, hpool_req *r)
{
    hpool *p = old->p;
    old->req = NULL;
    r->c = NULL;
    conn_close(old);
    r->retried = true;
    r->got_bytes = false;
    reset_response(r);
    hconn *c = conn_new(p, r->o);
    if (!c) {
        deliver(r, HTTPC_EOTHER, "out of memory while reconnecting");
        return;
    }
    int e = attach(c, r);
    if (e && !c->pending_err) c->pending_err = e;
    if (c->pending_err) event_active(c->tev, EV_TIMEOUT, 1);
}

/* An I/O error or an early EOF (err 0) on c. */
static void conn_io_error(hconn *c, int err)
{
    hpool_req *r = c->req;
    char msg[256];
    if (!r) {
        conn_close(c);
        return;
    }
    if (c->state == C_CONNECTING || (c->state == C_BUSY && !c->reused && err == ECONNREFUSED)) {
        snprintf(msg, sizeof(msg), "cannot connect to %s: %s", c->o->authority,
                 strerror(err ? err : ECONNREFUSED));
        conn_fail(c, HTTPC_ECONNECT, msg);
        return;
    }
    if (c->reused && !r->got_bytes && r->idempotent && !r->retried) {
        retry(c, r);
        return;
    }
    if (err)
        snprintf(msg, sizeof(msg), "the connection to %s failed: %s", c->o->authority, strerror(err));
    else
        snprintf(msg, sizeof(msg), "%s closed the connection %s", c->o->authority,
                 r->got_bytes ? "before the response ended" : "without a response");
    conn_fail(c, HTTPC_EOTHER, msg);
}

static int send_out(hconn *c)
{
    hpool_req *r = c->req;
    while (r->out_off < r->out_len) {
        ssize_t n = send(c->fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            r->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(c->wev, NULL);
            return 0;
        }
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

static void conn_to_idle(hconn *c)
{
    hpool *p = c->p;
    if (c->close_after || c->in_off != c->in_len || p->free_pending || p->nidle >= MAX_IDLE_TOTAL) {
        conn_close(c);
        return;
    }
    c->state = C_IDLE;
    c->reused = true;
    c->in_len = c->in_off = 0;
    if (c->in_cap > IN_CHUNK) { /* a big header block once: do not keep its buffer */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
    c->next_idle = c->o->idle;
    c->o->idle = c;
    p->nidle++;
    struct timeval tv = ms_tv(HPOOL_IDLE_TIMEOUT_MS);
    evtimer_add(c->tev, &tv);
}

static void complete(hconn *c)
{
    hpool_req *r = c->req;
    c->req = NULL;
    r->c = NULL;
    evtimer_del(c->tev);
    conn_to_idle(c);
    deliver(r, HTTPC_OK, NULL);
}

/* ---------- response parsing ---------- */

static bool token_in_list(const char *v, const char *tok)
{
    size_t tl = strlen(tok);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        const char *s = v;
        while (*v && *v != ',') v++;
        const char *e = v;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, tok, tl) == 0) return true;
    }
    return false;
}

/* The last coding of a Transfer-Encoding value. */
static bool last_is_chunked(const char *v)
{
    const char *last = strrchr(v, ',');
    last = last ? last + 1 : v;
    while (*last == ' ' || *last == '\t') last++;
    size_t n = strlen(last);
    while (n > 0 && (last[n - 1] == ' ' || last[n - 1] == '\t')) n--;
    return n == 7 && strncasecmp(last, "chunked", 7) == 0;
}

/* Parses the header block [s, e) (status line included, final blank line
 * excluded).  Returns 0, or -1 with msg filled. */
static int parse_head(hconn *c, char *s, char *e, char msg[256])
{
    hpool_req *r = c->req;
    /* status line */
    char *eol = memchr(s, '\n', (size_t)(e - s));
    char *line_end = eol ? eol : e;
    if (line_end > s && line_end[-1] == '\r') line_end--;
    if (line_end - s < 12 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ' ||
        s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
        (line_end - s > 12 && s[12] != ' ')) {
        snprintf(msg, 256, "%s answered with something that is not HTTP/1.x", c->o->authority);
        return -1;
    }
    bool http10 = s[7] == '0';
    r->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    /* the reason phrase, kept when it is plain text (RFC 9112 §4) */
    size_t rl = 0;
    for (const char *q = s + 13; q < line_end && rl < MAX_REASON - 1; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch < 0x20 || ch == 0x7f) {
            rl = 0;
            break;
        }
        r->reason[rl++] = (char)ch;
    }
    r->reason[rl] = '\0';

    /* header lines: copied into one block, NUL-terminated in place */
    size_t blen = eol ? (size_t)(e - (eol + 1)) : 0;
    free(r->hblock);
    free(r->hdrs);
    r->hdrs = NULL;
    r->nhdrs = 0;
    r->hblock = malloc(blen + 1);
    size_t nlines = 0;
    if (!r->hblock) goto oom;
    if (blen) memcpy(r->hblock, eol + 1, blen);
    r->hblock[blen] = '\0';
    for (size_t i = 0; i < blen; i++) /* every line, the last included, ends in '\n' */
        if (r->hblock[i] == '\n') nlines++;
    if (nlines > HPOOL_MAX_HEADERS) {
        snprintf(msg, 256, "%s sent more than %d header lines", c->o->authority, HPOOL_MAX_HEADERS);
        return -1;
    }
    r->hdrs = malloc((nlines + 1) * sizeof(char *));
    if (!r->hdrs) goto oom;

    bool chunked = false, te = false, have_cl = false, keep_alive = false;
    unsigned long long cl = 0;
    char *line = r->hblock, *end = r->hblock + blen;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        char *le = nl ? nl : end;
        char *next = nl ? nl + 1 : end;
        if (le > line && le[-1] == '\r') le--;
        *le = '\0';
        if (line[0] == ' ' || line[0] == '\t') {
            snprintf(msg, 256, "%s sent a folded header line (obsolete, refused)", c->o->authority);
            return -1;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            snprintf(msg, 256, "%s sent a malformed header line", c->o->authority);
            return -1;
        }
        for (char *q = line; q < colon; q++) {
            if ((unsigned char)*q <= 0x20 || *q == 0x7f) {
                snprintf(msg, 256, "%s sent a malformed header name", c->o->authority);
                return -1;
            }
        }
        r->hdrs[r->nhdrs++] = line;
        size_t nlen = (size_t)(colon - line);
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        char saved = *ve;
        *ve = '\0';
        if (nlen == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            unsigned long long n = 0;
            if (!*v) goto bad_cl;
            for (const char *d = v; *d; d++) {
                if (*d < '0' || *d > '9' || n > (ULLONG_MAX - 9) / 10) goto bad_cl;
                n = n * 10 + (unsigned)(*d - '0');
            }
            if (have_cl && n != cl) goto bad_cl;
            have_cl = true;
            cl = n;
        } else if (nlen == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
            te = true;
            chunked = last_is_chunked(v);
        } else if (nlen == 10 && strncasecmp(line, "Connection", 10) == 0) {
            if (token_in_list(v, "close")) c->close_after = true;
            if (token_in_list(v, "keep-alive")) keep_alive = true;
        }
        *ve = saved;
        line = next;
    }
    r->hdrs[r->nhdrs] = NULL;
    if (http10 && !keep_alive) c->close_after = true;

    if (r->status < 200) return 0; /* interim; the caller reads the next block */
    if (r->head || r->status == 204 || r->status == 304) {
        c->remaining = 0;
        c->ps = P_BODY_LEN;
    } else if (te) {
        if (have_cl || !chunked) c->close_after = true; /* RFC 9112 §6.1, §6.3 */
        c->ps = chunked ? P_CHUNK_SIZE : P_BODY_EOF;
    } else if (have_cl) {
        if (!r->stream && cl > r->max_body) {
            snprintf(msg, 256, "the response is larger than %zu bytes", r->max_body);
            return -2;
        }
        c->remaining = cl;
        c->ps = P_BODY_LEN;
    } else {
        c->close_after = true;
        c->ps = P_BODY_EOF;
    }
    return 0;
bad_cl:
    snprintf(msg, 256, "%s sent an invalid Content-Length", c->o->authority);
    return -1;
oom:
    snprintf(msg, 256, "out of memory while reading the response");
    return -1;
}

/* A piece of the body: collected, or handed to the stream (which may
 * pause).  0, -1 too big, -2 out of memory. */
static int take_body(hpool_req *r, const char *data, size_t n)
{
    if (!r->stream) return append_body(r, data, n);
    if (!r->stream->on_data(data, n, r->arg)) r->paused = true;
    return 0;
}

/* Consumes what c->in holds.  1: the response is complete; 0: more is
 * needed (or the stream paused); -1: protocol error (msg), -2: too big
 * (msg), -3: out of memory. */
static int parse(hconn *c, char msg[256])
{
    hpool_req *r = c->req;
    for (;;) {
        if (r->paused) goto more;
        char *s = c->in + c->in_off;
        size_t avail = c->in_len - c->in_off;
        switch (c->ps) {
        case P_HEAD: {
            char *end = avail >= 4 ? memmem(s, avail, "\r\n\r\n", 4) : NULL;
            if (!end) {
                if (avail > HPOOL_MAX_HEADER_BYTES) {
                    snprintf(msg, 256, "the response headers are larger than %d bytes", HPOOL_MAX_HEADER_BYTES);
                    return -2;
                }
                return 0;
            }
            int rc = parse_head(c, s, end + 2, msg);
            if (rc < 0) return rc;
            c->in_off += (size_t)(end + 4 - s);
            if (r->status < 200) {
                if (r->status == 101) {
                    snprintf(msg, 256, "%s switched protocols, which is not supported", c->o->authority);
                    return -1;
                }
                continue; /* 1xx: the real response follows */
            }
            if (r->stream) {
                httpc_response head = {
                    .error = HTTPC_OK,
                    .status = r->status,
                    .body = "",
                    .headers = (const char *const *)r->hdrs,
                    .nheaders = r->nhdrs,
                    .total_s = util_monotonic() - r->t0,
                    .reason = r->reason,
                };
                r->headed = true;
                if (!r->stream->on_head(&head, r->arg)) r->paused = true;
            }
            continue;
        }
        case P_BODY_LEN:
        case P_CHUNK_DATA: {
            size_t take = avail < c->remaining ? avail : (size_t)c->remaining;
            if (take) {
                int rc = take_body(r, s, take);
                if (rc == -1) {
                    snprintf(msg, 256, "the response is larger than %zu bytes", r->max_body);
                    return -2;
                }
                if (rc) return -3;
                c->in_off += take;
                c->remaining -= take;
            }
            if (c->remaining) goto more;
            if (c->ps == P_BODY_LEN) return 1;
            c->ps = P_CHUNK_END;
            continue;
        }
        case P_CHUNK_SIZE: {
            char *nl = memchr(s, '\n', avail);
            if (!nl) {
                if (avail > MAX_CHUNK_LINE) goto bad_chunk;
                goto more;
            }
            unsigned long long n = 0;
            char *q = s;
            int digits = 0;
            for (; q < nl; q++, digits++) {
                int d = (*q >= '0' && *q <= '9') ? *q - '0' : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                                                            : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10 : -1;
                if (d < 0) break;
                if (n > (ULLONG_MAX >> 4)) goto bad_chunk;
                n = n * 16 + (unsigned)d;
            }
            if (!digits || (q < nl && *q != ';' && *q != '\r' && *q != ' ' && *q != '\t')) goto bad_chunk;
            c->in_off += (size_t)(nl + 1 - s);
            if (n == 0) {
                c->ps = P_TRAILER;
                continue;
            }
            if (!r->stream && n > r->max_body - r->body_len) {
                snprintf(msg, 256, "the response is larger than %zu bytes", r->max_body);
                return -2;
            }
            c->remaining = n;
            c->ps = P_CHUNK_DATA;
            continue;
        }
        case P_CHUNK_END:
            if (avail < 2) goto more;
            if (s[0] != '\r' || s[1] != '\n') goto bad_chunk;
            c->in_off += 2;
            c->ps = P_CHUNK_SIZE;
            continue;
        case P_TRAILER: {
            char *nl = memchr(s, '\n', avail);
            if (!nl) {
                if (c->trailer_bytes + avail > MAX_TRAILER_BYTES) goto bad_chunk;
                goto more;
            }
            size_t ll = (size_t)(nl + 1 - s);
            c->in_off += ll;
            c->trailer_bytes += ll;
            if (c->trailer_bytes > MAX_TRAILER_BYTES) goto bad_chunk;
            if (ll == 1 || (ll == 2 && s[0] == '\r')) return 1;
            continue;
        }
        case P_BODY_EOF: {
            if (avail) {
                int rc = take_body(r, s, avail);
                if (rc == -1) {
                    snprintf(msg, 256, "the response is larger than %zu bytes", r->max_body);
                    return -2;
                }
                if (rc) return -3;
                c->in_off += avail;
            }
            goto more;
        }
        }
    }
more:
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    return 0;
bad_chunk:
    snprintf(msg, 256, "%s sent a malformed chunked body", c->o->authority);
    return -1;
}

/* ---------- events ---------- */

/* What a parse came to: the response complete, an error, a pause. */
static void settle(hconn *c, int rc, const char *msg)
{
    if (rc == 1) complete(c);
    else if (rc == -1) conn_fail(c, HTTPC_EOTHER, msg);
    else if (rc == -2) conn_fail(c, HTTPC_ETOOBIG, msg);
    else if (rc == -3) conn_fail(c, HTTPC_EOTHER, "out of memory while reading the response");
    else if (c->req && c->req->paused) {
        /* the consumer is not keeping up: stop reading (TCP then pushes
         * back on the server) and stop the clock until it resumes */
        event_del(c->rev);
        evtimer_del(c->tev);
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    hconn *c = arg;
    hpool *p = c->p;
    char msg[256];
    (void)what;
    enter(p);
    if (c->state == C_IDLE) {
        /* EOF, or bytes nobody asked for: either way the connection is done. */
        conn_close(c);
        goto out;
    }
    hpool_req *sr = c->req && c->req->stream ? c->req : NULL;
    if (sr && c->ps != P_HEAD && c->in_off < c->in_len) {
        /* bytes read before a pause come first */
        settle(c, parse(c, msg), msg);
        if (c->req != sr || sr->paused) goto out;
    }
    if (sr && c->ps != P_HEAD && c->in_cap < STREAM_IN_CAP) {
        if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
        char *b = realloc(c->in, STREAM_IN_CAP);
        if (b) {
            c->in = b;
            c->in_cap = STREAM_IN_CAP;
        }
    }
    if (c->in_cap - c->in_len < IN_CHUNK / 2) {
        if (c->in_off) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_cap - c->in_len < IN_CHUNK / 2) {
            size_t cap = c->in_cap ? c->in_cap * 2 : IN_CHUNK;
            if (cap > IN_MAX) cap = IN_MAX;
            if (cap <= c->in_len) {
                snprintf(msg, sizeof(msg), "the response headers are larger than %d bytes",
                         HPOOL_MAX_HEADER_BYTES);
                conn_fail(c, HTTPC_ETOOBIG, msg);
                goto out;
            }
            char *b = realloc(c->in, cap);
            if (!b) {
                conn_fail(c, HTTPC_EOTHER, "out of memory while reading the response");
                goto out;
            }
            c->in = b;
            c->in_cap = cap;
        }
    }
    ssize_t n = recv(fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_io_error(c, errno);
        goto out;
    }
    if (n == 0) {
        if (c->ps == P_BODY_EOF && c->req) {
            c->close_after = true;
            complete(c);
        } else {
            conn_io_error(c, 0);
        }
        goto out;
    }
    if (c->state == C_CONNECTING) c->state = C_BUSY; /* bytes: the connect succeeded */
    c->in_len += (size_t)n;
    c->req->got_bytes = true;
    if (sr) { /* streaming: the timeout is for each silence of the server */
        sr->deadline = util_monotonic() + (double)sr->timeout_ms / 1000.0;
        arm_deadline(c, sr);
    }
    settle(c, parse(c, msg), msg);
out:
    leave(p);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    hconn *c = arg;
    hpool *p = c->p;
    (void)what;
    enter(p);
    if (!c->req) goto out;
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err) {
            conn_io_error(c, err);
            goto out;
        }
        c->state = C_BUSY;
    }
    int e = send_out(c);
    if (e) conn_io_error(c, e);
out:
    leave(p);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    hconn *c = arg;
    hpool *p = c->p;
    char msg[256];
    (void)fd;
    (void)what;
    enter(p);
    if (c->pending_err) {
        int e = c->pending_err;
        c->pending_err = 0;
        conn_io_error(c, e);
    } else if (c->state == C_IDLE || !c->req) {
        conn_close(c);
    } else {
        snprintf(msg, sizeof(msg), "%s did not answer within %ld ms", c->o->authority, c->req->timeout_ms);
        conn_fail(c, HTTPC_ETIMEOUT, msg);
    }
    leave(p);
}

/* A new connection to o, connecting.  An error from socket() or connect()
 * is kept in pending_err and reported by the timer (from the loop). */
static hconn *conn_new(hpool *p, origin *o)
{
    hconn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->p = p;
    c->o = o;
    c->fd = -1;
    c->state = C_CONNECTING;
    c->tev = evtimer_new(p->base, on_timer, c);
    if (!c->tev) {
        free(c);
        return NULL;
    }
    c->next = p->conns;
    if (p->conns) p->conns->prev = c;
    p->conns = c;
    p->nconns++;

    c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->pending_err = errno;
        return c;
    }
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rev = event_new(p->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    c->wev = event_new(p->base, c->fd, EV_WRITE, on_write, c);
    if (!c->rev || !c->wev || event_add(c->rev, NULL) != 0) {
        conn_close(c);
        return NULL;
    }
    if (connect(c->fd, (struct sockaddr *)&o->addr, o->addrlen) == 0) {
        c->state = C_BUSY;
    } else if (errno == EINPROGRESS) {
        event_add(c->wev, NULL);
    } else {
        c->pending_err = errno;
    }
    return c;
}

/* ---------- API ---------- */

static bool header_ok(const char *h, const char **colon)
{
    const char *c = strchr(h, ':');
    if (!c || c == h) return false;
    for (const char *q = h; q < c; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) return false;
    for (const char *q = c + 1; *q; q++)
        if (*q == '\r' || *q == '\n') return false;
    *colon = c;
    return true;
}

static bool name_is(const char *h, const char *colon, const char *name)
{
    size_t n = strlen(name);
    return (size_t)(colon - h) == n && strncasecmp(h, name, n) == 0;
}

hpool_req *hpool_start(hpool *p, const httpc_opts *o, size_t max_body, httpc_done_cb cb, void *arg,
                       bool *declined, char err[256])
{
    char authority[MAX_AUTHORITY];
    struct sockaddr_storage ss;
    socklen_t sslen;
    const char *path;
    const char *m = o->method;
    if (!parse_url(o->url, authority, &ss, &sslen, &path)) {
        if (declined) *declined = true;
        set_err(err, "the URL is not http:// to an IP address");
        return NULL;
    }
    for (const char *q = m; *q; q++) {
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) {
            set_err(err, "bad method");
            return NULL;
        }
    }
    size_t body_len = o->body ? o->body_len : 0;
    bool own_host = false;
    size_t hdr_len = 0;
    if (o->headers) {
        for (const char *const *h = o->headers; *h; h++) {
            const char *colon;
            if (!header_ok(*h, &colon)) {
                snprintf(err, 256, "bad request header: %.*s", UTF8_CUT(*h, 60));
                return NULL;
            }
            if (name_is(*h, colon, "Host")) own_host = true;
            hdr_len += strlen(*h) + 2;
        }
    }
    bool send_len = body_len || method_is(m, "POST") || method_is(m, "PUT") || method_is(m, "PATCH");
    const char *ps = path ? path : "/";
    bool query_only = path && path[0] == '?';
    size_t cap = strlen(m) + strlen(ps) + 1 + strlen(authority) + hdr_len + body_len + 96;

    hpool_req *r = calloc(1, sizeof(*r));
    origin *org = r ? origin_get(p, authority, &ss, sslen) : NULL;
    char *out = org ? malloc(cap) : NULL;
    if (!out) {
        free(r);
        set_err(err, "out of memory");
        return NULL;
    }
    size_t n = (size_t)snprintf(out, cap, "%s %s%s HTTP/1.1\r\n", m, query_only ? "/" : "", ps);
    if (!own_host) n += (size_t)snprintf(out + n, cap - n, "Host: %s\r\n", authority);
    if (o->headers) {
        for (const char *const *h = o->headers; *h; h++) {
            const char *colon = strchr(*h, ':');
            const char *v = colon + 1;
            while (*v == ' ' || *v == '\t') v++;
            if (!*v) continue; /* "Name:" removes a header (curl's convention), e.g. "Expect:" */
            if (name_is(*h, colon, "Content-Length") || name_is(*h, colon, "Transfer-Encoding")) continue;
            size_t hl = strlen(*h);
            memcpy(out + n, *h, hl);
            memcpy(out + n + hl, "\r\n", 2);
            n += hl + 2;
        }
    }
    if (send_len) n += (size_t)snprintf(out + n, cap - n, "Content-Length: %zu\r\n", body_len);
    memcpy(out + n, "\r\n", 2);
    n += 2;
    if (body_len) memcpy(out + n, o->body, body_len);
    n += body_len;

    r->p = p;
    r->o = org;
    r->cb = cb;
    r->arg = arg;
    r->out = out;
    r->out_len = n;
    r->max_body = max_body;
    r->timeout_ms = o->timeout_ms;
    r->t0 = util_monotonic();
    r->deadline = r->t0 + (double)o->timeout_ms / 1000.0;
    r->head = method_is(m, "HEAD");
    r->want_headers = o->want_headers;
    r->stream = o->stream;
    r->idempotent = method_is(m, "GET") || r->head || method_is(m, "PUT") || method_is(m, "DELETE") ||
                    method_is(m, "OPTIONS") || method_is(m, "TRACE");

    hconn *c = org->idle;
    if (c) {
        org->idle = c->next_idle;
        c->next_idle = NULL;
        p->nidle--;
        c->state = C_BUSY;
    } else if (!(c = conn_new(p, org))) {
        req_free(r);
        set_err(err, "out of memory");
        return NULL;
    }
    int e = attach(c, r);
    if (e && !c->pending_err) c->pending_err = e;
    if (c->pending_err) event_active(c->tev, EV_TIMEOUT, 1);
    return r;
}

void hpool_cancel(hpool_req *r)
{
    if (!r) return;
    hconn *c = r->c;
    if (c) {
        c->req = NULL;
        conn_close(c); /* half an exchange: the connection cannot be reused */
    }
    req_free(r);
}

void hpool_resume(hpool_req *r)
{
    hconn *c = r ? r->c : NULL;
    if (!c || !r->paused) return;
    r->paused = false;
    r->deadline = util_monotonic() + (double)r->timeout_ms / 1000.0;
    arm_deadline(c, r);
    event_add(c->rev, NULL);
    if (c->in_off < c->in_len) event_active(c->rev, EV_READ, 1); /* bytes read before the pause */
}

size_t hpool_connections(const hpool *p) { return p ? p->nconns : 0; }

hpool *hpool_new(struct event_base *base)
{
    hpool *p = calloc(1, sizeof(*p));
    if (p) p->base = base;
    return p;
}

static void destroy(hpool *p)
{
    while (p->conns) {
        hconn *c = p->conns;
        if (c->req) {
            c->req->c = NULL;
            req_free(c->req);
            c->req = NULL;
        }
        conn_close(c);
    }
    while (p->origins) {
        origin *o = p->origins;
        p->origins = o->next;
        free(o);
    }
    free(p);
}

void hpool_free(hpool *p)
{
    if (!p) return;
    if (p->depth > 0) p->free_pending = true;
    else destroy(p);
}
