/* hpool against a scripted HTTP server on 127.0.0.1 (port 0, read back) on
 * the same event base: the server reads each request whole and answers with
 * the bytes a test gives it — split into pieces, with interim responses,
 * chunked, close-delimited, malformed — so every branch of the response
 * parser and of connection reuse is driven by real sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "hpool.h"
#include "unit.h"
#include "util.h"

#define WATCHDOG_S 10

static struct event_base *base;
static struct event *watchdog;
static hpool *pool;
static int lfd, port;
static struct event *listen_ev;
static char url[128];

/* ---------- the scripted server ---------- */

typedef struct step {
    const char *resp;   /* bytes to send; NULL: close without answering */
    size_t piece;       /* send in pieces of this many bytes, 20 ms apart (0: at once) */
    bool close;         /* close the connection after the answer */
} step;

static step script[8];
static size_t nscript, next_step; /* requests answered so far pick script[next_step++] */
static int accepts;
static char last_request[4096];

typedef struct sconn {
    struct sconn *prev, *next; /* open connections, freed at the end */
    int fd;
    struct event *rev, *tev;
    char in[8192];
    size_t in_len;
    const step *st;
    size_t sent;
} sconn;

static sconn *sconns;

static void sconn_close(sconn *s)
{
    if (s->prev) s->prev->next = s->next;
    else sconns = s->next;
    if (s->next) s->next->prev = s->prev;
    event_free(s->rev);
    event_free(s->tev);
    close(s->fd);
    free(s);
}

static void send_piece(evutil_socket_t fd, short what, void *arg)
{
    sconn *s = arg;
    (void)fd;
    (void)what;
    size_t len = strlen(s->st->resp);
    size_t n = s->st->piece ? s->st->piece : len;
    if (n > len - s->sent) n = len - s->sent;
    if (send(s->fd, s->st->resp + s->sent, n, MSG_NOSIGNAL) > 0) s->sent += n;
    if (s->sent < len) {
        struct timeval tv = {0, 20000};
        evtimer_add(s->tev, &tv);
        return;
    }
    if (s->st->close) sconn_close(s);
    else s->st = NULL;
}

/* One whole request (head + Content-Length body) in s->in: answer it. */
static void on_sread(evutil_socket_t fd, short what, void *arg)
{
    sconn *s = arg;
    (void)what;
    ssize_t n = recv(fd, s->in + s->in_len, sizeof(s->in) - 1 - s->in_len, 0);
    if (n <= 0) {
        sconn_close(s);
        return;
    }
    s->in_len += (size_t)n;
    s->in[s->in_len] = '\0';
    char *end = strstr(s->in, "\r\n\r\n");
    if (!end) return;
    size_t body = 0;
    const char *cl = strstr(s->in, "Content-Length: ");
    if (cl && cl < end) body = strtoul(cl + 16, NULL, 10);
    size_t whole = (size_t)(end + 4 - s->in) + body;
    if (s->in_len < whole) return;
    memcpy(last_request, s->in, whole < sizeof(last_request) - 1 ? whole : sizeof(last_request) - 1);
    last_request[whole < sizeof(last_request) - 1 ? whole : sizeof(last_request) - 1] = '\0';
    memmove(s->in, s->in + whole, s->in_len - whole);
    s->in_len -= whole;
    const step *st = next_step < nscript ? &script[next_step++] : NULL;
    if (!st || !st->resp) {
        sconn_close(s);
        return;
    }
    s->st = st;
    s->sent = 0;
    send_piece(-1, 0, s);
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;
    sconn *s = calloc(1, sizeof(*s));
    s->fd = c;
    s->rev = event_new(base, c, EV_READ | EV_PERSIST, on_sread, s);
    s->tev = evtimer_new(base, send_piece, s);
    event_add(s->rev, NULL);
    s->next = sconns;
    if (sconns) sconns->prev = s;
    sconns = s;
    accepts++;
}

static int server_start(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    port = ntohs(sa.sin_port);
    listen_ev = event_new(base, lfd, EV_READ | EV_PERSIST, on_accept, NULL);
    return listen_ev && event_add(listen_ev, NULL) == 0 ? 0 : -1;
}

/* ---------- the client side ---------- */

typedef struct result {
    int calls, error;
    long status;
    char body[2048];
    size_t body_len, nheaders;
    char headers[8][128];
    char errmsg[256];
} result;

static int finished;
static bool watchdog_fired;

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    watchdog_fired = true;
    event_base_loopbreak(base);
}

static void record(const httpc_response *resp, void *arg)
{
    result *r = arg;
    r->calls++;
    r->error = resp->error;
    r->status = resp->status;
    r->body_len = resp->body_len;
    size_t n = resp->body_len < sizeof(r->body) - 1 ? resp->body_len : sizeof(r->body) - 1;
    memcpy(r->body, resp->body, n);
    r->body[n] = '\0';
    r->nheaders = resp->nheaders;
    for (size_t i = 0; i < resp->nheaders && i < 8; i++)
        snprintf(r->headers[i], sizeof(r->headers[i]), "%s", resp->headers[i]);
    snprintf(r->errmsg, sizeof(r->errmsg), "%s", resp->errmsg ? resp->errmsg : "");
    finished++;
}

static void loop_until(int n)
{
    struct timeval tv = {WATCHDOG_S, 0};
    watchdog_fired = false;
    evtimer_add(watchdog, &tv);
    while (finished < n && !watchdog_fired) event_base_loop(base, EVLOOP_ONCE);
    evtimer_del(watchdog);
    CHECK(!watchdog_fired);
}

/* Lets the loop run for ms (connections closing, servers reading). */
static void spin(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static hpool_req *go(const char *method, const char *path, const char *body, long timeout_ms, size_t cap,
                     result *r)
{
    static const char *const headers[] = {"X-Req: abc", "Expect:", NULL};
    char u[256], err[256] = "";
    snprintf(u, sizeof(u), "%s%s", url, path);
    httpc_opts o = {.method = method, .url = u, .body = body, .body_len = body ? strlen(body) : 0,
                    .headers = headers, .timeout_ms = timeout_ms, .want_headers = true};
    hpool_req *q = hpool_start(pool, &o, cap ? cap : 1 << 20, record, r, NULL, err);
    if (!q) fprintf(stderr, "hpool_start: %s\n", err);
    return q;
}

/* Fresh pool and script for each test. */
static void setup(const step *steps, size_t n)
{
    hpool_free(pool);
    pool = hpool_new(base);
    spin(20); /* the server sees the old pool's connections close */
    memcpy(script, steps, n * sizeof(*steps));
    nscript = n;
    next_step = 0;
    accepts = 0;
    finished = 0;
    last_request[0] = '\0';
}

/* ---------- tests ---------- */

static void test_handles(void)
{
    CHECK(hpool_handles("http://127.0.0.1:8080/x"));
    CHECK(hpool_handles("http://127.0.0.1"));
    CHECK(hpool_handles("http://[::1]:9/a?b=c"));
    CHECK(hpool_handles("HTTP://10.0.0.1:80"));
    CHECK(!hpool_handles("https://127.0.0.1/"));
    CHECK(!hpool_handles("http://localhost:8080/"));
    CHECK(!hpool_handles("http://legacy.internal/"));
    CHECK(!hpool_handles("http://u:p@127.0.0.1/"));
    CHECK(!hpool_handles("http://127.0.0.1/a b"));
    CHECK(!hpool_handles("http://127.0.0.1/a\r\nX: y"));
    CHECK(!hpool_handles("http://127.0.0.1:0/"));
    CHECK(!hpool_handles("http://127.0.0.1:65536/"));
    CHECK(!hpool_handles("http://127.0.0.1:/"));
    CHECK(!hpool_handles("http://[::1/"));
    CHECK(!hpool_handles(NULL));
    /* hpool_start says which refusals are "not mine" (the caller goes to curl) */
    char err[256];
    bool declined = false;
    static const char *const bad[] = {"X-Bad\r\nInjected: 1", NULL};
    httpc_opts o = {.method = "GET", .url = "http://localhost:1/", .timeout_ms = 1000};
    hpool *lp = hpool_new(base);
    CHECK(hpool_start(lp, &o, 1024, record, NULL, &declined, err) == NULL);
    CHECK(declined);
    declined = false;
    o.url = "http://127.0.0.1:1/";
    o.headers = bad;
    CHECK(hpool_start(lp, &o, 1024, record, NULL, &declined, err) == NULL);
    CHECK(!declined);
    CHECK_CONTAINS(err, "bad request header");
    CHECK_EQ_INT(hpool_connections(lp), 0);
    hpool_free(lp);
}

static void test_request_bytes_and_reuse(void)
{
    const step s[] = {{"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok", 0, false},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, false}};
    setup(s, 2);
    result a = {0}, b = {0};
    CHECK(go("POST", "/submit?x=1", "{\"a\":1}", 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK_EQ_INT(a.error, HTTPC_OK);
    CHECK_EQ_INT(a.status, 201);
    CHECK_STR(a.body, "ok");
    CHECK_EQ_INT(a.nheaders, 2);
    CHECK_STR(a.headers[0], "Content-Length: 2");
    CHECK_STR(a.headers[1], "X-A: 1");
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", port);
    CHECK(strncmp(last_request, "POST /submit?x=1 HTTP/1.1\r\n", 27) == 0);
    CHECK_CONTAINS(last_request, host);
    CHECK_CONTAINS(last_request, "\r\nX-Req: abc\r\n");
    CHECK_CONTAINS(last_request, "\r\nContent-Length: 7\r\n\r\n{\"a\":1}");
    CHECK(strstr(last_request, "Expect") == NULL); /* "Name:" removes a header */
    CHECK(go("GET", "", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK_EQ_INT(b.status, 200);
    CHECK(strncmp(last_request, "GET / HTTP/1.1\r\n", 16) == 0);
    CHECK(strstr(last_request, "Content-Length") == NULL);
    CHECK_EQ_INT(accepts, 1); /* the second went over the kept connection */
    CHECK_EQ_INT(hpool_connections(pool), 1);
}

static void test_chunked_in_pieces(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5;ext=1\r\nhello\r\n19\r\n, world, in several piece\r\n1\r\ns\r\n0\r\nX-Trailer: t\r\n\r\n",
                       7, false},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain", 3, false}};
    setup(s, 2);
    result a = {0}, b = {0};
    CHECK(go("GET", "/c", NULL, 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK_EQ_INT(a.error, HTTPC_OK);
    CHECK_STR(a.body, "hello, world, in several pieces");
    CHECK(go("GET", "/c", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK_STR(b.body, "again");
    CHECK_EQ_INT(accepts, 1);
}

static void test_close_delimited_and_interim(void)
{
    const step s[] = {{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-B: 2\r\n\r\nuntil the end", 5, true},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 0, false}};
    setup(s, 2);
    result a = {0}, b = {0};
    CHECK(go("GET", "/", NULL, 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK_EQ_INT(a.error, HTTPC_OK);
    CHECK_EQ_INT(a.status, 200);
    CHECK_STR(a.body, "until the end");
    CHECK_EQ_INT(a.nheaders, 1); /* the interim block's headers are not kept */
    CHECK_STR(a.headers[0], "X-B: 2");
    CHECK(go("GET", "/", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK_STR(b.body, "z");
    CHECK_EQ_INT(accepts, 2); /* a close-delimited body ends its connection */
}

static void test_no_body_responses(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, false},
                      {"HTTP/1.1 204 No Content\r\n\r\n", 0, false},
                      {"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", 0, false}};
    setup(s, 3);
    result a = {0}, b = {0}, c = {0};
    CHECK(go("HEAD", "/", NULL, 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK(go("DELETE", "/x", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK(go("GET", "/x", NULL, 5000, 0, &c) != NULL);
    loop_until(3);
    CHECK_EQ_INT(a.status, 200);
    CHECK_EQ_INT(a.body_len, 0);
    CHECK_EQ_INT(b.status, 204);
    CHECK_EQ_INT(c.status, 304);
    CHECK_EQ_INT(c.body_len, 0);
    CHECK_EQ_INT(accepts, 1);
}

static void test_connection_close_is_honoured(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na", 0, false},
                      {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", 0, false},
                      {"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nc", 0, false},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd", 0, false}};
    setup(s, 4);
    result r[4] = {{0}};
    for (int i = 0; i < 4; i++) {
        CHECK(go("GET", "/", NULL, 5000, 0, &r[i]) != NULL);
        loop_until(i + 1);
        CHECK_EQ_INT(r[i].error, HTTPC_OK);
    }
    CHECK_STR(r[3].body, "d");
    CHECK_EQ_INT(accepts, 3); /* close, 1.0 without keep-alive: new ones; 1.0 keep-alive: kept */
}

/* The server drops a kept connection as the next request arrives: a GET is
 * sent again on a new connection, a POST is not (it may have been acted on). */
static void test_stale_connection(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 0, false},
                      {NULL, 0, false},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2", 0, false},
                      {NULL, 0, false}};
    setup(s, 4);
    result a = {0}, b = {0}, c = {0};
    CHECK(go("GET", "/", NULL, 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK(go("GET", "/", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK_EQ_INT(b.calls, 1);
    CHECK_EQ_INT(b.error, HTTPC_OK);
    CHECK_STR(b.body, "2");
    CHECK_EQ_INT(accepts, 2);
    CHECK(go("POST", "/", "x", 5000, 0, &c) != NULL);
    loop_until(3);
    CHECK_EQ_INT(c.error, HTTPC_EOTHER);
    CHECK_CONTAINS(c.errmsg, "closed the connection without a response");
    CHECK_EQ_INT(accepts, 2);
}

static void test_bad_responses(void)
{
    static char big[HPOOL_MAX_HEADER_BYTES + 200];
    memcpy(big, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
    memset(big + 24, 'a', sizeof(big) - 30);
    big[sizeof(big) - 1] = '\0';
    const step s[] = {{"ICY 200 OK\r\n\r\n", 0, true},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", 0, true},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 0, true},
                      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, true},
                      {"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", 0, true},
                      {big, 0, true},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 0, true},
                      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n", 0, true}};
    setup(s, 8);
    int want[8] = {HTTPC_EOTHER, HTTPC_EOTHER, HTTPC_EOTHER, HTTPC_EOTHER,
                   HTTPC_EOTHER, HTTPC_ETOOBIG, HTTPC_ETOOBIG, HTTPC_ETOOBIG};
    for (int i = 0; i < 8; i++) {
        result r = {0};
        CHECK(go("GET", "/", NULL, 5000, 50, &r) != NULL);
        loop_until(i + 1);
        CHECK_EQ_INT(r.calls, 1);
        CHECK_EQ_INT(r.error, want[i]);
        CHECK_EQ_INT(r.status, 0);
        CHECK(r.errmsg[0] != '\0');
    }
    CHECK_EQ_INT(hpool_connections(pool), 0); /* none of those is reused */
}

static void test_extra_bytes_end_the_connection(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n", 0, false},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 0, false}};
    setup(s, 2);
    result a = {0}, b = {0};
    CHECK(go("GET", "/", NULL, 5000, 0, &a) != NULL);
    loop_until(1);
    CHECK_STR(a.body, "a");
    CHECK(go("GET", "/", NULL, 5000, 0, &b) != NULL);
    loop_until(2);
    CHECK_STR(b.body, "b");
    CHECK_EQ_INT(accepts, 2);
}

static void test_timeout_refused_cancel(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 0, false}, /* never completes */
                      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ncd", 0, false}};
    setup(s, 2);
    result a = {0};
    double t0 = util_monotonic();
    CHECK(go("GET", "/", NULL, 200, 0, &a) != NULL);
    loop_until(1);
    double took = util_monotonic() - t0;
    CHECK_EQ_INT(a.error, HTTPC_ETIMEOUT);
    CHECK(took >= 0.19 && took < 2.0);
    CHECK_EQ_INT(hpool_connections(pool), 0);

    /* refused: a port nobody listens on (bound, never listening) */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    char u[64], err[256];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    result b = {0};
    httpc_opts o = {.method = "GET", .url = u, .timeout_ms = 5000};
    CHECK(hpool_start(pool, &o, 1024, record, &b, NULL, err) != NULL);
    CHECK_EQ_INT(b.calls, 0); /* never from inside hpool_start */
    loop_until(2);
    close(fd);
    CHECK_EQ_INT(b.error, HTTPC_ECONNECT);
    CHECK_CONTAINS(b.errmsg, "cannot connect");

    /* cancel: the callback never runs, the connection is closed */
    result c = {0};
    hpool_req *q = go("GET", "/", NULL, 5000, 0, &c);
    CHECK(q != NULL);
    spin(30);
    hpool_cancel(q);
    spin(50);
    CHECK_EQ_INT(c.calls, 0);
    CHECK_EQ_INT(hpool_connections(pool), 0);
}

/* The pool freed from inside a callback, with another request in flight. */
static void free_pool(const httpc_response *resp, void *arg)
{
    record(resp, arg);
    hpool_free(pool);
    pool = NULL;
}

static void test_free_from_callback(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 0, false}, /* never completes */
                      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 0, false}};
    setup(s, 2);
    char u[160], err[256];
    snprintf(u, sizeof(u), "%s/", url);
    httpc_opts o = {.method = "GET", .url = u, .timeout_ms = 5000};
    result a = {0}, b = {0};
    CHECK(hpool_start(pool, &o, 1024, record, &b, NULL, err) != NULL);
    spin(30); /* b takes the first answer, which never ends */
    CHECK(hpool_start(pool, &o, 1024, free_pool, &a, NULL, err) != NULL);
    spin(50);
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_INT(a.error, HTTPC_OK);
    CHECK(pool == NULL);
    CHECK_EQ_INT(b.calls, 0); /* dropped with the pool, without a callback */
}

/* ---------- streaming ---------- */

typedef struct sink {
    result done;
    int heads;
    long head_status;
    char reason[64];
    char data[4096];
    size_t len, pieces;
    size_t pause_after;   /* pause once this many bytes arrived (0: never) */
    bool paused;
} sink;

static bool sink_head(const httpc_response *h, void *arg)
{
    sink *k = arg;
    k->heads++;
    k->head_status = h->status;
    snprintf(k->reason, sizeof(k->reason), "%s", h->reason ? h->reason : "(null)");
    return true;
}

static bool sink_data(const char *d, size_t n, void *arg)
{
    sink *k = arg;
    if (k->len + n < sizeof(k->data)) memcpy(k->data + k->len, d, n);
    k->len += n;
    k->pieces++;
    if (k->pause_after && k->len >= k->pause_after && !k->paused) {
        k->paused = true;
        return false;
    }
    return true;
}

static void sink_done(const httpc_response *resp, void *arg)
{
    sink *k = arg;
    record(resp, &k->done);
    k->done.body_len = resp->streamed; /* reused: did the head come first */
}

static const httpc_stream sink_stream = {sink_head, sink_data};

static hpool_req *go_stream(const char *method, sink *k, long timeout_ms)
{
    char u[256], err[256] = "";
    snprintf(u, sizeof(u), "%s/s", url);
    httpc_opts o = {.method = method, .url = u, .timeout_ms = timeout_ms, .want_headers = true,
                    .stream = &sink_stream};
    hpool_req *q = hpool_start(pool, &o, 8, sink_done, k, NULL, err); /* 8: a limit streaming ignores */
    if (!q) fprintf(stderr, "hpool_start: %s\n", err);
    return q;
}

static void test_stream_pieces_reason_no_limit(void)
{
    const step s[] = {{"HTTP/1.1 201 Made It\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n", 9, false},
                      {"HTTP/1.1 299\r\nContent-Length: 12\r\n\r\nsized answer", 0, false}};
    setup(s, 2);
    sink a = {0}, b = {0};
    CHECK(go_stream("GET", &a, 5000) != NULL);
    loop_until(1);
    CHECK_EQ_INT(a.done.error, HTTPC_OK);
    CHECK_EQ_INT(a.heads, 1);
    CHECK_EQ_INT(a.head_status, 201);
    CHECK_STR(a.reason, "Made It");
    CHECK_EQ_INT(a.len, 12);
    CHECK(memcmp(a.data, "hello, world", 12) == 0);
    CHECK(a.pieces >= 2); /* as it came, not collected */
    CHECK_EQ_INT(a.done.body_len, 1);
    CHECK(go_stream("GET", &b, 5000) != NULL); /* the same connection, kept alive */
    loop_until(2);
    CHECK_EQ_INT(b.done.error, HTTPC_OK);
    CHECK_STR(b.reason, "");
    CHECK_EQ_INT(b.len, 12);
    CHECK_EQ_INT(accepts, 1);
}

static hpool_req *paused_req;

static void on_resume_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sink *k = arg;
    k->pause_after = 0;
    hpool_resume(paused_req);
}

static void test_stream_pause_resume(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n0123456789abcdefghijKLMNOPQRST", 10, false}};
    setup(s, 1);
    sink a = {.pause_after = 5};
    paused_req = go_stream("GET", &a, 300);
    CHECK(paused_req != NULL);
    /* paused for longer than the timeout: a paused stream's clock is stopped */
    spin(600);
    CHECK_EQ_INT(finished, 0);
    CHECK(a.paused);
    CHECK(a.len < 30);
    struct event *t = evtimer_new(base, on_resume_timer, &a);
    struct timeval now = {0, 1000};
    evtimer_add(t, &now);
    loop_until(1);
    event_free(t);
    CHECK_EQ_INT(a.done.error, HTTPC_OK);
    CHECK_EQ_INT(a.len, 30);
    CHECK(memcmp(a.data, "0123456789abcdefghijKLMNOPQRST", 30) == 0);
}

static void test_stream_cut_and_silence(void)
{
    const step s[] = {{"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", 0, true},
                      {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nthen silence", 0, false}};
    setup(s, 2);
    sink a = {0}, b = {0};
    CHECK(go_stream("GET", &a, 5000) != NULL);
    loop_until(1);
    CHECK_EQ_INT(a.done.error, HTTPC_EOTHER);
    CHECK_EQ_INT(a.done.body_len, 1); /* after the head: the caller must cut its own reply */
    CHECK_EQ_INT(a.len, 9);
    CHECK(go_stream("GET", &b, 200) != NULL);
    loop_until(2);
    CHECK_EQ_INT(b.done.error, HTTPC_ETIMEOUT);
    CHECK_EQ_INT(b.heads, 1);
}

int main(void)
{
    base = event_base_new();
    if (!base || server_start() != 0) {
        fprintf(stderr, "cannot start the test server\n");
        return 1;
    }
    watchdog = evtimer_new(base, on_watchdog, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    RUN(test_handles);
    RUN(test_request_bytes_and_reuse);
    RUN(test_chunked_in_pieces);
    RUN(test_close_delimited_and_interim);
    RUN(test_no_body_responses);
    RUN(test_connection_close_is_honoured);
    RUN(test_stale_connection);
    RUN(test_bad_responses);
    RUN(test_extra_bytes_end_the_connection);
    RUN(test_timeout_refused_cancel);
    RUN(test_free_from_callback);
    RUN(test_stream_pieces_reason_no_limit);
    RUN(test_stream_pause_resume);
    RUN(test_stream_cut_and_silence);
    hpool_free(pool);
    while (sconns) sconn_close(sconns);
    event_free(listen_ev);
    close(lfd);
    event_free(watchdog);
    event_base_free(base);
    UNIT_END();
}
