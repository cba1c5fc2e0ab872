/* h1check — strict HTTP/1.1 request framing, checked on the raw bytes a
 * client sends, before any HTTP parser sees them.
 *
 * Two parsers that frame the same bytes differently (a front proxy and
 * this one, this one and the upstream) let a client hide a request inside
 * another: request smuggling.  h1check accepts only what RFC 9112 frames
 * one way and refuses the rest, so whatever reads the bytes after it
 * agrees on where each request ends:
 *
 *   request line   method SP request-target SP HTTP/1.1|HTTP/1.0; a method
 *                  of token characters; a target of visible characters
 *   header fields  a name of token characters immediately followed by ':'
 *                  (no whitespace before it), a value without control
 *                  characters (HTAB allowed, NUL and bare CR not), no
 *                  obsolete line folding
 *   framing        Content-Length is 1*DIGIT, repeated only with the same
 *                  value; Transfer-Encoding is exactly "chunked" (other
 *                  codings: 501), never with Content-Length, never in
 *                  HTTP/1.0; chunk sizes are 1*HEXDIG (no "0x", no
 *                  spaces before them), each chunk ends with CRLF
 *   Host           exactly one in HTTP/1.1, at most one in HTTP/1.0
 *   Expect         only 100-continue (else 417)
 *   limits         the target (414), the header section (431), the body
 *                  (413)
 *
 * Lines end with CRLF or a bare LF (what libevent accepts too); a bare CR
 * is refused.  Empty lines before a request line are skipped (RFC 9112
 * §2.2).  Requests may follow one another on a connection (pipelining):
 * the checker follows each to its end.
 *
 * Feed it every byte read, in order; it keeps a few hundred bytes of state
 * and never buffers the stream. */
#ifndef TURNOUT_H1CHECK_H
#define TURNOUT_H1CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct h1_limits {
    size_t max_target;       /* bytes of the request-target (414 above) */
    size_t max_header_bytes; /* bytes of the request line and header section (431 above) */
    uint64_t max_body;       /* bytes of a body, by Content-Length or chunks (413 above) */
    const char *body_setting; /* the setting that sets max_body, named in the 413's message (may be NULL) */
} h1_limits;

typedef struct h1check {
    const h1_limits *lim;
    /* where it is */
    uint8_t state, after_lf;
    bool trailer;            /* the header lines being read are a chunked body's trailer */
    bool upgraded;           /* stopped checking (the connection left HTTP) */
    /* the message so far */
    uint8_t http_minor;      /* 0 or 1 */
    uint8_t hosts, tes, leading_empty;
    bool has_cl;
    bool expect;
    char method[16];
    uint8_t method_len;
    char name[24];           /* the header name being read, lower case (cut: not one of ours) */
    char shown[24];          /* the same as written, for messages */
    uint8_t name_len;
    bool name_long;
    uint8_t checked;         /* which header it judges this is (0: none) */
    char value[80];          /* its value, when the name is one it checks */
    uint8_t value_len;
    bool value_long;
    char version[12];
    uint8_t version_len;
    size_t target_len, header_bytes, ext_len;
    uint64_t cl, body_left, body_total, chunk;
    uint8_t chunk_digits;
    /* the verdict: 0 while the stream is well framed */
    int status;              /* 400, 413, 414, 417, 431, 501, 505 */
    const char *code;        /* the API's error code: bad_request, ... */
    char message[240];       /* what is wrong, naming the field, and the fix */
    uint64_t requests;       /* requests whose header section ended */
} h1check;

void h1check_init(h1check *h, const h1_limits *lim);

/* Checks the next n bytes of the stream.  0 while well framed; -1 from the
 * first byte that is not (status, code and message say why; every later
 * call returns -1). */
int h1check_feed(h1check *h, const unsigned char *p, size_t n);

/* True between requests (the last one read to its end). */
bool h1check_idle(const h1check *h);

#endif
