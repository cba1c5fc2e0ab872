/* h1check: every request either framed one way (accepted) or refused with
 * the status RFC 9112 gives, whether the bytes come at once or one by one. */
#include <stdlib.h>
#include <string.h>

#include "h1check.h"
#include "unit.h"

static const h1_limits lim = {.max_target = 256, .max_header_bytes = 1024, .max_body = 100};

typedef struct res {
    int status;
    const char *code;
    char message[240];
    unsigned long long requests;
    bool idle;
} res;

static res run_split(const char *text, size_t len, size_t step)
{
    h1check h;
    h1check_init(&h, &lim);
    for (size_t i = 0; i < len; i += step) {
        size_t n = len - i < step ? len - i : step;
        if (h1check_feed(&h, (const unsigned char *)text + i, n) != 0) break;
    }
    res r = {h.status, h.code, "", (unsigned long long)h.requests, h1check_idle(&h)};
    memcpy(r.message, h.message, sizeof(r.message));
    return r;
}

/* The verdict at once, and the same one byte by byte and in 7-byte runs. */
static res check(const char *text, size_t len)
{
    res whole = run_split(text, len, len ? len : 1);
    res bytes = run_split(text, len, 1), sevens = run_split(text, len, 7);
    CHECK_EQ_INT(bytes.status, whole.status);
    CHECK_EQ_INT(sevens.status, whole.status);
    CHECK_EQ_INT(bytes.requests, whole.requests);
    return whole;
}

#define CHECKS(lit) check("" lit, sizeof(lit) - 1)

static void expect(const char *what, res r, int status)
{
    if (r.status != status) fprintf(stderr, "  %s: status %d (%s), expected %d\n", what, r.status, r.message, status);
    CHECK_EQ_INT(r.status, status);
}

static void test_well_framed(void)
{
    res r = CHECKS("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect("plain GET", r, 0);
    CHECK(r.idle);
    CHECK_EQ_INT(r.requests, 1);
    expect("LF only", CHECKS("GET /x?y=1 HTTP/1.1\nHost: a\n\n"), 0);
    expect("1.0 without Host", CHECKS("GET / HTTP/1.0\r\n\r\n"), 0);
    expect("body by length", CHECKS("POST /api/eval HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), 0);
    expect("same length twice", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi"), 0);
    r = CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
               "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    expect("chunked, then a pipelined GET", r, 0);
    CHECK_EQ_INT(r.requests, 2);
    CHECK(r.idle);
    expect("Transfer-Encoding in any case", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"), 0);
    expect("empty lines before", CHECKS("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    expect("tab and obs-text in a value", CHECKS("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\tc \xc3\xa9\r\n\r\n"), 0);
    expect("Expect 100-continue", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx"), 0);
    expect("absolute form", CHECKS("GET http://h:9/echo HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    res mid = CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nhal");
    expect("a body in progress", mid, 0);
    CHECK(!mid.idle);
}

static void test_length_smuggling(void)
{
    expect("two lengths", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc"), 400);
    expect("a sign", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"), 400);
    res sp = CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc");
    expect("a space inside", sp, 400);
    CHECK_CONTAINS(sp.message, "Content-Length");
    expect("a NUL", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\0\r\n\r\nabc"), 400);
    expect("a list", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"), 400);
    expect("hex", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc"), 400);
    expect("empty", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"), 400);
    expect("too large", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"), 413);
    expect("length and chunked",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400);
}

static void test_coding_smuggling(void)
{
    res r = CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n");
    expect("identity", r, 501);
    CHECK_STR(r.code, "not_implemented");
    expect("xchunked", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"), 501);
    expect("gzip, chunked", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
    expect("chunked twice",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    expect("chunked in 1.0", CHECKS("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400);
    expect("0x5", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"), 400);
    expect(" 5 ", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5 \r\nhello\r\n0\r\n\r\n"), 400);
    expect("5 then spaces", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"), 400);
    expect("data longer than its size",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"), 400);
    expect("no size", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n"), 400);
    expect("a chunk within the limit",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n60\r\n"), 0);
    expect("chunks over the limit, total",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n40\r\n"),
           413);
    expect("length in a trailer",
           CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n"), 400);
}

static void test_header_syntax(void)
{
    res r = CHECKS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n");
    expect("space before the colon", r, 400);
    CHECK_CONTAINS(r.message, "\"Transfer-Encoding\"");
    expect("space in a name", CHECKS("GET / HTTP/1.1\r\nHost: a\r\nX Foo: bar\r\n\r\n"), 400);
    expect("empty name", CHECKS("GET / HTTP/1.1\r\nHost: a\r\n: bar\r\n\r\n"), 400);
    expect("folding", CHECKS("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"), 400);
    expect("bare CR", CHECKS("GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n"), 400);
    expect("NUL in a value", CHECKS("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"), 400);
    expect("no Host", CHECKS("GET / HTTP/1.1\r\nX-A: b\r\n\r\n"), 400);
    expect("two Hosts", CHECKS("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    expect("Expect other", CHECKS("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"), 417);
    char big[1200];
    int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %01100d\r\n\r\n", 0);
    expect("headers too large", check(big, (size_t)n), 431);
}

static void test_request_line(void)
{
    expect("HTTP/1.2", CHECKS("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 400);
    expect("HTTP/2.0", CHECKS("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
    expect("lower case", CHECKS("GET / http/1.1\r\nHost: a\r\n\r\n"), 400);
    expect("HTTP/0.9", CHECKS("GET /\r\n\r\n"), 400);
    expect("two spaces", CHECKS("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    expect("space in the target", CHECKS("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    res r = CHECKS("BREW / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect("unknown method", r, 501);
    CHECK_CONTAINS(r.message, "BREW");
    expect("CONNECT", CHECKS("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"), 501);
    char longt[400];
    int n = snprintf(longt, sizeof(longt), "GET /%0300d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    expect("target too long", check(longt, (size_t)n), 414);
}

static void test_after_an_error_everything_is_refused(void)
{
    h1check h;
    h1check_init(&h, &lim);
    CHECK_EQ_INT(h1check_feed(&h, (const unsigned char *)"GET / HTTP/9", 12), 0);
    CHECK_EQ_INT(h1check_feed(&h, (const unsigned char *)"\r\n", 2), -1);
    CHECK_EQ_INT(h1check_feed(&h, (const unsigned char *)"GET / HTTP/1.1\r\n", 16), -1);
    CHECK(!h1check_idle(&h));
}

int main(void)
{
    RUN(test_well_framed);
    RUN(test_length_smuggling);
    RUN(test_coding_smuggling);
    RUN(test_header_syntax);
    RUN(test_request_line);
    RUN(test_after_an_error_everything_is_refused);
    UNIT_END();
}
