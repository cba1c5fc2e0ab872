/* httpc against a real evhttp server on 127.0.0.1 (port 0, read back), on
 * the same event base.  Every test runs the loop under a watchdog. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "curldl.h"
#include "httpc.h"
#include "unit.h"
#include "util.h"

#define WATCHDOG_S 10

static bool curl_only; /* this pass runs every request through libcurl */

static struct event_base *base;
static struct evhttp *server;
static struct event *watchdog;
static httpc *hc;
static int port;
static bool watchdog_fired;
static char url[128];

/* ---------- the server ---------- */

static unsigned short peer_ports[16];
static size_t npeer_ports;

static void on_echo(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *x = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Req");
    const char *expect = evhttp_find_header(evhttp_request_get_input_headers(req), "Expect");
    char *peer;
    ev_uint16_t pp;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &pp);
    if (npeer_ports < 16) peer_ports[npeer_ports++] = pp;
    evhttp_add_header(out, "X-Echo-Method", evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST"
                                            : evhttp_request_get_command(req) == EVHTTP_REQ_GET ? "GET"
                                                                                                 : "OTHER");
    if (x) evhttp_add_header(out, "X-Echo-Req", x);
    if (expect) evhttp_add_header(out, "X-Echo-Expect", expect);
    evbuffer_add_buffer(evhttp_request_get_output_buffer(req), in);
    evhttp_send_reply(req, 201, "Created", NULL);
}

static void on_hang(struct evhttp_request *req, void *arg)
{
    (void)req; /* never answered; evhttp_free releases it */
    (void)arg;
}

static void on_big(struct evhttp_request *req, void *arg)
{
    (void)arg;
    static char buf[5000];
    memset(buf, 'x', sizeof(buf));
    evbuffer_add(evhttp_request_get_output_buffer(req), buf, sizeof(buf));
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_big_chunked(struct evhttp_request *req, void *arg)
{
    (void)arg;
    static char buf[5000];
    memset(buf, 'y', sizeof(buf));
    struct evbuffer *b = evbuffer_new();
    evhttp_send_reply_start(req, 200, "OK");
    evbuffer_add(b, buf, sizeof(buf));
    evhttp_send_reply_chunk(req, b);
    evhttp_send_reply_end(req);
    evbuffer_free(b);
}

static int server_start(void)
{
    server = evhttp_new(base);
    if (!server) return -1;
    evhttp_set_cb(server, "/echo", on_echo, NULL);
    evhttp_set_cb(server, "/hang", on_hang, NULL);
    evhttp_set_cb(server, "/big", on_big, NULL);
    evhttp_set_cb(server, "/bigchunked", on_big_chunked, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(server, "127.0.0.1", 0);
    if (!bs) return -1;
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl) != 0) return -1;
    port = ntohs(sa.sin_port);
    return 0;
}

/* A port nothing listens on: bound, then closed. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int p = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sl) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        p = ntohs(sa.sin_port);
    if (fd >= 0) close(fd);
    return p;
}

/* ---------- helpers ---------- */

typedef struct result {
    int calls;
    int error;
    long status;
    char body[8192];
    size_t body_len;
    char method[16], echo_req[64], echo_expect[64];
    size_t nheaders;
    bool saw_status_line, saw_blank;
    double at;
} result;

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    watchdog_fired = true;
    event_base_loopbreak(base);
}

static void loop_until(const int *done, int target)
{
    struct timeval tv = {WATCHDOG_S, 0};
    watchdog_fired = false;
    evtimer_add(watchdog, &tv);
    while (*done < target && !watchdog_fired) event_base_loop(base, EVLOOP_ONCE);
    evtimer_del(watchdog);
    CHECK(!watchdog_fired);
}

static const char *header_value(const httpc_response *resp, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < resp->nheaders; i++)
        if (strncasecmp(resp->headers[i], name, n) == 0 && resp->headers[i][n] == ':') {
            const char *v = resp->headers[i] + n + 1;
            while (*v == ' ') v++;
            return v;
        }
    return NULL;
}

static int finished;
static bool expect_refusal; /* httpc_start is meant to fail: stay quiet */

static void record(const httpc_response *resp, void *arg)
{
    result *r = arg;
    r->calls++;
    r->error = resp->error;
    r->status = resp->status;
    r->at = util_monotonic();
    r->body_len = resp->body_len < sizeof(r->body) - 1 ? resp->body_len : sizeof(r->body) - 1;
    memcpy(r->body, resp->body, r->body_len);
    r->body[r->body_len] = '\0';
    r->nheaders = resp->nheaders;
    const char *v;
    if ((v = header_value(resp, "X-Echo-Method"))) snprintf(r->method, sizeof(r->method), "%s", v);
    if ((v = header_value(resp, "X-Echo-Req"))) snprintf(r->echo_req, sizeof(r->echo_req), "%s", v);
    if ((v = header_value(resp, "X-Echo-Expect"))) snprintf(r->echo_expect, sizeof(r->echo_expect), "%s", v);
    for (size_t i = 0; i < resp->nheaders; i++) {
        if (strncmp(resp->headers[i], "HTTP/", 5) == 0) r->saw_status_line = true;
        if (resp->headers[i][0] == '\0') r->saw_blank = true;
    }
    finished++;
}

static httpc_req *start(const char *path, const char *method, const char *body, long timeout_ms,
                        size_t cap, bool want_headers, httpc_done_cb cb, void *arg)
{
    static const char *const headers[] = {"X-Req: abc", "Content-Type: text/plain", NULL};
    char u[256], err[256] = "";
    snprintf(u, sizeof(u), "%s%s", url, path);
    httpc_opts o = {
        .method = method,
        .url = u,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .headers = headers,
        .timeout_ms = timeout_ms,
        .max_response_bytes = cap,
        .want_headers = want_headers,
    };
    httpc_req *r = httpc_start(hc, &o, cb, arg, err);
    if (!r && !expect_refusal) fprintf(stderr, "httpc_start: %s\n", err);
    return r;
}

/* ---------- tests ---------- */

static void test_get(void)
{
    result r = {0};
    finished = 0;
    CHECK(start("/echo", "GET", NULL, 5000, 0, true, record, &r) != NULL);
    CHECK_EQ_INT(httpc_in_flight(hc), 1);
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.error, HTTPC_OK);
    CHECK_EQ_INT(r.status, 201);
    CHECK_STR(r.method, "GET");
    CHECK_STR(r.echo_req, "abc");
    CHECK_EQ_INT(r.body_len, 0);
    CHECK(!r.saw_status_line);
    CHECK(!r.saw_blank);
    CHECK(r.nheaders >= 3);
    CHECK_EQ_INT(httpc_in_flight(hc), 0);
}

static void test_post_copies_body(void)
{
    result r = {0};
    char body[2048];
    /* Big enough that curl would ask for 100-continue unless told not to. */
    memset(body, 'b', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    memcpy(body, "hello", 5);
    finished = 0;
    CHECK(start("/echo", "POST", body, 5000, 0, true, record, &r) != NULL);
    memset(body, 'Z', sizeof(body) - 1); /* the caller's buffer dies */
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.error, HTTPC_OK);
    CHECK_EQ_INT(r.status, 201);
    CHECK_STR(r.method, "POST");
    CHECK_EQ_INT(r.body_len, sizeof(body) - 1);
    CHECK(strncmp(r.body, "hellobbb", 8) == 0);
    CHECK_STR(r.echo_expect, "");
}

static void test_no_headers_unless_asked(void)
{
    result r = {0};
    finished = 0;
    CHECK(start("/echo", "POST", "x", 5000, 0, false, record, &r) != NULL);
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.error, HTTPC_OK);
    CHECK_STR(r.body, "x");
    CHECK_EQ_INT(r.nheaders, 0);
}

static void test_keepalive(void)
{
    result r[4] = {{0}};
    npeer_ports = 0;
    for (int i = 0; i < 4; i++) {
        finished = 0;
        CHECK(start("/echo", "GET", NULL, 5000, 0, false, record, &r[i]) != NULL);
        loop_until(&finished, 1);
        CHECK_EQ_INT(r[i].error, HTTPC_OK);
    }
    CHECK_EQ_INT(npeer_ports, 4);
    for (size_t i = 1; i < npeer_ports; i++) CHECK_EQ_INT(peer_ports[i], peer_ports[0]);
}

static void test_timeout(void)
{
    result r = {0};
    finished = 0;
    double t0 = util_monotonic();
    CHECK(start("/hang", "GET", NULL, 300, 0, false, record, &r) != NULL);
    loop_until(&finished, 1);
    double took = r.at - t0;
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.error, HTTPC_ETIMEOUT);
    CHECK(took >= 0.25 && took < 2.0);
}

static void test_refused(void)
{
    result r = {0};
    char u[128], err[256];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/x", closed_port());
    httpc_opts o = {.method = "GET", .url = u, .timeout_ms = 2000};
    finished = 0;
    CHECK(httpc_start(hc, &o, record, &r, err) != NULL);
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.error, HTTPC_ECONNECT);
    CHECK_EQ_INT(r.status, 0);
}

static void test_too_big(void)
{
    result a = {0}, b = {0}, ok = {0};
    finished = 0;
    CHECK(start("/big", "GET", NULL, 5000, 1000, false, record, &a) != NULL);
    CHECK(start("/bigchunked", "GET", NULL, 5000, 1000, false, record, &b) != NULL);
    CHECK(start("/big", "GET", NULL, 5000, 5000, false, record, &ok) != NULL); /* exactly at the cap */
    loop_until(&finished, 3);
    CHECK_EQ_INT(a.error, HTTPC_ETOOBIG);
    CHECK_EQ_INT(b.error, HTTPC_ETOOBIG);
    CHECK_EQ_INT(ok.error, HTTPC_OK);
    CHECK_EQ_INT(ok.body_len, 5000);
}

static void test_bad_options(void)
{
    char err[256] = "";
    httpc_opts o = {.method = "GET", .url = url, .timeout_ms = 0};
    CHECK(httpc_start(hc, &o, record, NULL, err) == NULL);
    CHECK(err[0] != '\0');
}

static void test_cancel(void)
{
    result cancelled = {0}, other = {0};
    finished = 0;
    httpc_req *req = start("/echo", "GET", NULL, 5000, 0, false, record, &cancelled);
    CHECK(req != NULL);
    httpc_cancel(req);
    CHECK_EQ_INT(httpc_in_flight(hc), 0);
    CHECK(start("/echo", "GET", NULL, 5000, 0, false, record, &other) != NULL);
    loop_until(&finished, 1);
    CHECK_EQ_INT(cancelled.calls, 0);
    CHECK_EQ_INT(other.calls, 1);
}

/* A callback that starts a new request and cancels another in-flight one. */
static httpc_req *victim;
static result chained, victim_result;

static void start_next(const httpc_response *resp, void *arg)
{
    record(resp, arg);
    httpc_cancel(victim);
    CHECK(start("/echo", "POST", "second", 5000, 0, false, record, &chained) != NULL);
}

static void test_callback_reenters(void)
{
    result first = {0};
    memset(&chained, 0, sizeof(chained));
    memset(&victim_result, 0, sizeof(victim_result));
    finished = 0;
    CHECK(start("/echo", "GET", NULL, 5000, 0, false, start_next, &first) != NULL);
    victim = start("/hang", "GET", NULL, 5000, 0, false, record, &victim_result);
    CHECK(victim != NULL);
    loop_until(&finished, 2);
    CHECK_EQ_INT(first.calls, 1);
    CHECK_EQ_INT(chained.calls, 1);
    CHECK_STR(chained.body, "second");
    CHECK_EQ_INT(victim_result.calls, 0);
    CHECK_EQ_INT(httpc_in_flight(hc), 0);
}

/* Two requests that may finish in the same batch: whichever callback runs
 * first cancels the other, whose completion message may already be pending
 * inside curl.  Exactly one callback must run, and nothing touch freed memory. */
static httpc_req *pair[2];
static result pair_result[2];

static void cancel_partner(const httpc_response *resp, void *arg)
{
    result *r = arg;
    record(resp, arg);
    int me = r == &pair_result[0] ? 0 : 1;
    httpc_cancel(pair[1 - me]);
    pair[0] = pair[1] = NULL;
}

static void test_callback_cancels_finished_partner(void)
{
    memset(pair_result, 0, sizeof(pair_result));
    finished = 0;
    pair[0] = start("/echo", "GET", NULL, 5000, 0, false, cancel_partner, &pair_result[0]);
    pair[1] = start("/echo", "GET", NULL, 5000, 0, false, cancel_partner, &pair_result[1]);
    CHECK(pair[0] && pair[1]);
    loop_until(&finished, 1);
    struct timeval tv = {0, 200000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    CHECK_EQ_INT(pair_result[0].calls + pair_result[1].calls, 1);
    CHECK_EQ_INT(httpc_in_flight(hc), 0);
}

/* Runs last: frees the client with requests in flight. */
static int restart_refused;

static void try_restart(const httpc_response *resp, void *arg)
{
    record(resp, arg);
    expect_refusal = true;
    if (start("/echo", "GET", NULL, 5000, 0, false, record, arg) == NULL) restart_refused++;
    expect_refusal = false;
}

static void test_free_in_flight(void)
{
    result r[3] = {{0}};
    finished = 0;
    restart_refused = 0;
    for (int i = 0; i < 3; i++)
        CHECK(start("/hang", "GET", NULL, 5000, 0, false, i == 0 ? try_restart : record, &r[i]) != NULL);
    /* Let the requests reach the server first. */
    struct timeval tv = {0, 100000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    CHECK_EQ_INT(httpc_in_flight(hc), 3);
    httpc_free(hc);
    hc = NULL;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(r[i].calls, 1);
        CHECK_EQ_INT(r[i].error, HTTPC_ECANCELLED);
    }
    CHECK_EQ_INT(restart_refused, 1);
}

/* httpc_free from inside a done callback: the client goes away once the
 * dispatch unwinds, and the other request still completes once. */
static httpc *hc2;

static void free_from_callback(const httpc_response *resp, void *arg)
{
    record(resp, arg);
    httpc_free(hc2);
}

static void test_free_from_callback(void)
{
    result a = {0}, b = {0};
    char err[256], u1[160], u2[160];
    snprintf(u1, sizeof(u1), "%s/echo", url);
    snprintf(u2, sizeof(u2), "%s/hang", url);
    hc2 = httpc_new(base, err);
    CHECK(hc2 != NULL);
    if (!hc2) return;
    if (curl_only) httpc_use_pool(hc2, false);
    httpc_opts o1 = {.method = "GET", .url = u1, .timeout_ms = 5000};
    httpc_opts o2 = {.method = "GET", .url = u2, .timeout_ms = 5000};
    finished = 0;
    CHECK(httpc_start(hc2, &o1, free_from_callback, &a, err) != NULL);
    CHECK(httpc_start(hc2, &o2, record, &b, err) != NULL);
    loop_until(&finished, 2);
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_INT(a.error, HTTPC_OK);
    CHECK_EQ_INT(b.calls, 1);
    CHECK_EQ_INT(b.error, HTTPC_ECANCELLED);
}

/* libcurl is mapped into this process (the test binary does not link it). */
static bool curl_mapped(void)
{
    void *h = dlopen(CURLDL_SONAME, RTLD_NOW | RTLD_NOLOAD);
    if (h) dlclose(h); /* only drops the reference NOLOAD took */
    return h != NULL;
}

/* libcurl cannot be loaded (its package missing): a request that needs it
 * fails to start and says which library and package; nothing is kept, so
 * once the library is there the next request works.  Runs before anything
 * else has loaded libcurl. */
static void test_curl_missing(void)
{
    static const char missing[] = "libcurl-absent-for-test.so.4";
    char err[256] = "", u[160];
    result r = {0};
    if (curl_mapped()) { /* a proxy variable made the hpool pass use curl */
        fprintf(stderr, "test_httpc: note: libcurl already loaded; its load failure not tested\n");
        return;
    }
    httpc *c = httpc_new(base, err);
    CHECK(c != NULL);
    if (!c) return;
    curldl_set_soname(missing);
    /* https:// needs curl even with the pool on */
    snprintf(u, sizeof(u), "https://127.0.0.1:%d/echo", port);
    httpc_opts o = {.method = "GET", .url = u, .timeout_ms = 5000};
    err[0] = '\0';
    CHECK(httpc_start(c, &o, record, &r, err) == NULL);
    CHECK_CONTAINS(err, missing);
    CHECK_CONTAINS(err, "Debian package libcurl4");
    CHECK_EQ_INT(httpc_in_flight(c), 0);
    /* plain http:// to an address still goes (hpool), without libcurl */
    snprintf(u, sizeof(u), "%s/echo", url);
    o.url = u;
    finished = 0;
    CHECK(httpc_start(c, &o, record, &r, err) != NULL);
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.error, HTTPC_OK);
    CHECK_EQ_INT(r.status, 201);
    /* with curl forced, the same request fails to start */
    httpc_use_pool(c, false);
    err[0] = '\0';
    CHECK(httpc_start(c, &o, record, &r, err) == NULL);
    CHECK_CONTAINS(err, "libcurl");
    CHECK(!curl_mapped());
    /* the library back: the next request loads it and completes */
    curldl_set_soname(NULL);
    memset(&r, 0, sizeof(r));
    finished = 0;
    CHECK(httpc_start(c, &o, record, &r, err) != NULL);
    loop_until(&finished, 1);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.error, HTTPC_OK);
    CHECK_EQ_INT(r.status, 201);
    CHECK(curl_mapped());
    httpc_free(c);
}

/* Every test runs twice: hpool carries 127.0.0.1, then libcurl does. */
int main(void)
{
    char err[256] = "";
    base = event_base_new();
    if (!base || server_start() != 0) {
        fprintf(stderr, "cannot start the test server\n");
        return 1;
    }
    watchdog = evtimer_new(base, on_watchdog, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    /* The hpool pass first: it must never load libcurl. */
    bool pooled = !getenv("http_proxy") && !getenv("all_proxy") && !getenv("ALL_PROXY");
    for (int pass = 0; pass < 2; pass++) {
        curl_only = pass == 1;
        if (curl_only) {
            unit_current = "hpool pass";
            if (pooled) CHECK(!curl_mapped());
            RUN(test_curl_missing);
        }
        hc = httpc_new(base, err);
        if (!hc || !watchdog) {
            fprintf(stderr, "httpc_new: %s\n", err);
            return 1;
        }
        if (curl_only) httpc_use_pool(hc, false);
        RUN(test_get);
        RUN(test_post_copies_body);
        RUN(test_no_headers_unless_asked);
        RUN(test_keepalive);
        RUN(test_timeout);
        RUN(test_refused);
        RUN(test_too_big);
        RUN(test_bad_options);
        RUN(test_cancel);
        RUN(test_callback_reenters);
        RUN(test_callback_cancels_finished_partner);
        RUN(test_free_from_callback);
        RUN(test_free_in_flight);
    }
    evhttp_free(server);
    event_free(watchdog);
    event_base_free(base);
    UNIT_END();
}
