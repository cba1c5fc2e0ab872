#include "h1check.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

enum {
    S_START,     /* before a request line (empty lines skipped) */
    S_METHOD,
    S_TARGET,
    S_VERSION,
    S_LF,        /* a CR was read: LF must follow, then after_lf */
    S_HSTART,    /* the start of a header line (or the empty line) */
    S_HNAME,
    S_HOWS,      /* whitespace after the colon */
    S_HVALUE,
    S_BODY,      /* Content-Length bytes */
    S_CSIZE,     /* a chunk-size */
    S_CSIZE_WS,  /* whitespace after it: only ';' may follow */
    S_CEXT,      /* a chunk extension, to the end of its line */
    S_CDATA,
    S_CDATA_END, /* the CRLF after a chunk's data */
    S_FAILED,
};

/* what the LF after a CR (or a bare LF) ends */
enum { L_EMPTY, L_REQUEST_LINE, L_HEADER, L_HEADERS_END, L_CHUNK_SIZE, L_CHUNK_END };

#define MAX_LEADING_EMPTY 8
#define MAX_CHUNK_EXT 1024
#define MAX_CHUNK_DIGITS 15 /* 2^60: more than any body limit */

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};

void h1check_init(h1check *h, const h1_limits *lim)
{
    memset(h, 0, sizeof(*h));
    h->lim = lim;
    h->state = S_START;
}

bool h1check_idle(const h1check *h) { return h->state == S_START && h->status == 0; }

/* RFC 9110 §5.6.2 */
/* RFC 9110 §5.6.2 tchar, by table: 1 for a token character. */
#define T10 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
#define T26 T10, T10, 1, 1, 1, 1, 1, 1
static const unsigned char tchar_tab[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = T10, ['A'] = T26, ['a'] = T26,
};
#undef T26
#undef T10

static bool tchar(unsigned char c) { return tchar_tab[c] != 0; }

/* A byte that may stand in a header value (RFC 9110 §5.5: field-vchar, SP,
 * HTAB, obs-text): 1; controls and DEL: 0. */
#define O4 1, 1, 1, 1
#define O16 O4, O4, O4, O4
static const unsigned char vchar_tab[256] = {
    ['\t'] = 1,
    [0x20] = O16, O16, O16, O16, O16, O4, O4, O4, 1, 1, 1, /* 0x20-0x7e */
    [0x80] = O16, O16, O16, O16, O16, O16, O16, O16,
};
#undef O16
#undef O4

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

__attribute__((format(printf, 4, 0))) static int fail(h1check *h, int status, const char *code, const char *fmt,
                                                     const char *arg)
{
    h->state = S_FAILED;
    h->status = status;
    h->code = code;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* checked at each call: the format attribute */
    snprintf(h->message, sizeof(h->message), fmt, arg ? arg : "");
#pragma GCC diagnostic pop
    return -1;
}

__attribute__((format(printf, 2, 0))) static int bad(h1check *h, const char *fmt, const char *arg)
{
    return fail(h, 400, "bad_request", fmt, arg);
}

static void new_message(h1check *h)
{
    h->state = S_START;
    h->trailer = false;
    h->hosts = h->tes = h->leading_empty = 0;
    h->has_cl = h->expect = false;
    h->method_len = h->version_len = 0;
    h->target_len = h->header_bytes = 0;
    h->cl = h->body_left = h->body_total = h->chunk = 0;
    h->chunk_digits = 0;
}

static bool is(const h1check *h, const char *name) { return !h->name_long && strcmp(h->name, name) == 0; }

enum { H_OTHER, H_CL, H_TE, H_HOST, H_EXPECT };

static bool checked_name(const h1check *h) { return h->checked != H_OTHER; }

/* At the colon: the name lower-cased into h->name when it has the
 * length of one it judges, and which one. */
static uint8_t name_kind(h1check *h)
{
    size_t n = h->name_len;
    h->shown[n] = '\0';
    h->name[0] = '\0';
    if (h->name_long || (n != 4 && n != 6 && n != 14 && n != 17)) return H_OTHER;
    for (size_t k = 0; k < n; k++) {
        unsigned char ch = (unsigned char)h->shown[k];
        h->name[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    h->name[n] = '\0';
    return is(h, "content-length") ? H_CL : is(h, "transfer-encoding") ? H_TE : is(h, "host") ? H_HOST
                                        : is(h, "expect") ? H_EXPECT : H_OTHER;
}

/* A header line ended: its value (trailing whitespace trimmed) judged. */
static int header_done(h1check *h)
{
    if (h->checked == H_OTHER) return 0; /* a header it does not judge */
    while (h->value_len > 0 && (h->value[h->value_len - 1] == ' ' || h->value[h->value_len - 1] == '\t'))
        h->value_len--;
    h->value[h->value_len] = '\0';
    if (h->trailer) {
        if (h->checked != H_EXPECT)
            return bad(h, "a chunked body's trailer may not carry %s: send it in the header section", h->name);
        return 0;
    }
    if (h->checked == H_CL) {
        if (h->value_long || h->value_len == 0 || h->value_len > 18)
            return bad(h, "Content-Length must be a decimal number of at most 18 digits%s", "");
        uint64_t v = 0;
        for (uint8_t i = 0; i < h->value_len; i++) {
            unsigned char c = (unsigned char)h->value[i];
            if (c < '0' || c > '9')
                return bad(h, "Content-Length must be digits only (no sign, space, list or other character): "
                              "\"%s\"", h->value);
            v = v * 10 + (uint64_t)(c - '0');
        }
        if (h->has_cl && v != h->cl)
            return bad(h, "two Content-Length headers with different values: send one%s", "");
        h->has_cl = true;
        h->cl = v;
    } else if (h->checked == H_TE) {
        if (++h->tes > 1)
            return bad(h, "more than one Transfer-Encoding header: send one, \"chunked\"%s", "");
        if (h->value_long || h->value_len != 7 || strncasecmp(h->value, "chunked", 7) != 0)
            return fail(h, 501, "not_implemented",
                        "Transfer-Encoding \"%s\" is not supported: the only coding accepted is \"chunked\" "
                        "(send a Content-Length, or chunked alone)",
                        h->value_long ? "(long)" : h->value);
    } else if (h->checked == H_HOST) {
        if (++h->hosts > 1) return bad(h, "more than one Host header: send exactly one%s", "");
    } else {
        if (h->value_long || strcasecmp(h->value, "100-continue") != 0)
            return fail(h, 417, "expectation_failed",
                        "Expect \"%s\" cannot be met: the only expectation supported is 100-continue",
                        h->value_long ? "(long)" : h->value);
        h->expect = true;
    }
    return 0;
}

/* The empty line after the header section: the framing decided. */
static int headers_end(h1check *h)
{
    if (h->trailer) {
        new_message(h);
        return 0;
    }
    h->requests++;
    if (h->http_minor == 1 && h->hosts == 0)
        return bad(h, "an HTTP/1.1 request needs a Host header%s", "");
    if (h->tes && h->has_cl)
        return bad(h, "Content-Length and Transfer-Encoding together: send one of them%s", "");
    if (h->tes && h->http_minor == 0)
        return bad(h, "Transfer-Encoding is not allowed in HTTP/1.0: send a Content-Length%s", "");
    if (h->tes) {
        h->state = S_CSIZE;
        h->chunk = 0;
        h->chunk_digits = 0;
        return 0;
    }
    if (h->has_cl && h->cl > h->lim->max_body) {
        char n[96];
        snprintf(n, sizeof(n), "%llu bytes%s%s%s", (unsigned long long)h->lim->max_body,
                 h->lim->body_setting ? " (" : "", h->lim->body_setting ? h->lim->body_setting : "",
                 h->lim->body_setting ? ")" : "");
        return fail(h, 413, "body_too_large", "the body is larger than the %s accepted", n);
    }
    if (h->has_cl && h->cl > 0) {
        h->state = S_BODY;
        h->body_left = h->cl;
        return 0;
    }
    new_message(h);
    return 0;
}

static int request_line_done(h1check *h)
{
    h->version[h->version_len] = '\0';
    if (strcmp(h->version, "HTTP/1.1") == 0) h->http_minor = 1;
    else if (strcmp(h->version, "HTTP/1.0") == 0) h->http_minor = 0;
    else if (h->version_len == 8 && strncmp(h->version, "HTTP/", 5) == 0 && h->version[5] >= '2' &&
             h->version[5] <= '9' && h->version[6] == '.')
        return fail(h, 505, "http_version_not_supported",
                    "HTTP version \"%s\" is not supported: send HTTP/1.1 (or HTTP/1.0)", h->version);
    else return bad(h, "the request line must end with HTTP/1.1 or HTTP/1.0, not \"%s\"", h->version);
    h->state = S_HSTART;
    return 0;
}

static int chunk_size_done(h1check *h)
{
    if (h->chunk == 0) {
        h->trailer = true;
        h->header_bytes = 0;
        h->state = S_HSTART;
        return 0;
    }
    h->body_total += h->chunk;
    if (h->body_total > h->lim->max_body) {
        char n[96];
        snprintf(n, sizeof(n), "%llu bytes%s%s%s", (unsigned long long)h->lim->max_body,
                 h->lim->body_setting ? " (" : "", h->lim->body_setting ? h->lim->body_setting : "",
                 h->lim->body_setting ? ")" : "");
        return fail(h, 413, "body_too_large", "the chunked body is larger than the %s accepted", n);
    }
    h->body_left = h->chunk;
    h->state = S_CDATA;
    return 0;
}

/* The line ending (the LF) of what `what` names. */
static int line_end(h1check *h, int what)
{
    switch (what) {
    case L_EMPTY:
        h->state = S_START;
        if (++h->leading_empty > MAX_LEADING_EMPTY) return bad(h, "too many empty lines before the request line%s", "");
        return 0;
    case L_REQUEST_LINE: return request_line_done(h);
    case L_HEADER:
        h->state = S_HSTART;
        return header_done(h);
    case L_HEADERS_END: return headers_end(h);
    case L_CHUNK_SIZE: return chunk_size_done(h);
    default: /* L_CHUNK_END */
        h->state = S_CSIZE;
        h->chunk = 0;
        h->chunk_digits = 0;
        return 0;
    }
}

/* A CR or LF where a line may end: CR waits for its LF. */
static int eol(h1check *h, unsigned char c, int what)
{
    if (c == '\n') return line_end(h, what);
    h->state = S_LF;
    h->after_lf = (uint8_t)what;
    return 0;
}

static bool method_known(const h1check *h)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i]) == h->method_len && memcmp(methods[i], h->method, h->method_len) == 0) return true;
    return false;
}

int h1check_feed(h1check *h, const unsigned char *p, size_t n)
{
    if (h->status) return -1;
    if (h->upgraded) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        /* the body states take runs of bytes */
        if (h->state == S_BODY || h->state == S_CDATA) {
            size_t run = n - i < h->body_left ? n - i : (size_t)h->body_left;
            h->body_left -= run;
            i += run - 1;
            if (h->body_left == 0) {
                if (h->state == S_BODY) new_message(h);
                else h->state = S_CDATA_END;
            }
            continue;
        }
        bool in_head = h->state == S_LF ? h->after_lf >= L_REQUEST_LINE && h->after_lf <= L_HEADERS_END
                                        : h->state > S_START && h->state <= S_HVALUE;
        if (in_head && ++h->header_bytes > h->lim->max_header_bytes)
            return fail(h, 431, "headers_too_large", "the request line and headers are larger than the %s accepted",
                        h->trailer ? "trailer size" : "header size");
        switch (h->state) {
        case S_START:
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_EMPTY) != 0) return -1;
                continue;
            }
            if (!tchar(c)) return bad(h, "the request line must start with a method (GET, POST, ...)%s", "");
            h->state = S_METHOD;
            h->header_bytes = 1;
            h->method[0] = (char)c;
            h->method_len = 1;
            continue;
        case S_METHOD:
            if (c == ' ') {
                h->method[h->method_len] = '\0';
                if (!method_known(h))
                    return fail(h, 501, "not_implemented",
                                "method \"%s\" is not implemented: use GET, HEAD, POST, PUT, DELETE, OPTIONS or PATCH",
                                h->method);
                h->state = S_TARGET;
                h->target_len = 0;
                continue;
            }
            if (!tchar(c)) return bad(h, "the method must be one word of letters followed by one space%s", "");
            if ((size_t)h->method_len + 1 >= sizeof(h->method))
                return fail(h, 501, "not_implemented", "the method is not one this server implements%s", "");
            h->method[h->method_len++] = (char)c;
            continue;
        case S_TARGET:
            if (c == ' ') {
                if (h->target_len == 0) return bad(h, "one space between the method and the target%s", "");
                h->state = S_VERSION;
                h->version_len = 0;
                continue;
            }
            if (c > 0x20 && c != 0x7f) {
                /* the rest of the target in one run */
                size_t j = i + 1;
                while (j < n && p[j] > 0x20 && p[j] != 0x7f) j++;
                size_t run = j - i;
                h->header_bytes += run - 1;
                h->target_len += run;
                if (h->target_len > h->lim->max_target)
                    return fail(h, 414, "uri_too_long", "the request target is longer than the %s accepted",
                                "length");
                if (h->header_bytes > h->lim->max_header_bytes)
                    return fail(h, 431, "headers_too_large",
                                "the request line and headers are larger than the %s accepted", "header size");
                i = j - 1;
                continue;
            }
            if (c <= 0x20 || c == 0x7f)
                return bad(h, "the request target must be visible characters, then one space and the HTTP "
                              "version%s",
                           "");
            if (++h->target_len > h->lim->max_target)
                return fail(h, 414, "uri_too_long", "the request target is longer than the %s accepted",
                            "length");
            continue;
        case S_VERSION:
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_REQUEST_LINE) != 0) return -1;
                continue;
            }
            if ((size_t)h->version_len + 1 >= sizeof(h->version) || c <= 0x20 || c >= 0x7f)
                return bad(h, "the request line must end with HTTP/1.1 or HTTP/1.0%s", "");
            h->version[h->version_len++] = (char)c;
            continue;
        case S_LF:
            if (c != '\n') return bad(h, "a CR not followed by LF: lines end with CRLF%s", "");
            if (line_end(h, h->after_lf) != 0) return -1;
            continue;
        case S_HSTART:
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_HEADERS_END) != 0) return -1;
                continue;
            }
            if (c == ' ' || c == '\t')
                return bad(h, "a header line starts with whitespace (obsolete line folding): put each header "
                              "on one line%s",
                           "");
            if (!tchar(c)) {
                if (c == ':') return bad(h, "a header with an empty name%s", "");
                return bad(h, "a header name must be letters, digits and !#$%%&'*+-.^_`|~%s", "");
            }
            h->state = S_HNAME;
            h->name_len = 0;
            h->name_long = false;
            __attribute__((fallthrough)); /* the first character of the name */
        case S_HNAME:
            if (tchar(c)) {
                /* the rest of the name in one run */
                size_t j = i;
                while (j < n && tchar_tab[p[j]]) j++;
                size_t run = j - i, room = sizeof(h->name) - 1 - h->name_len;
                size_t keep = run < room ? run : room;
                if (keep < run) h->name_long = true;
                memcpy(h->shown + h->name_len, p + i, keep); /* lower-cased at the colon, if judged */
                h->name_len = (uint8_t)(h->name_len + keep);
                if ((h->header_bytes += j - i - 1) > h->lim->max_header_bytes)
                    return fail(h, 431, "headers_too_large",
                                "the request line and headers are larger than the %s accepted",
                                h->trailer ? "trailer size" : "header size");
                i = j - 1;
                continue;
            }
            if (c == ':') {
                h->checked = name_kind(h);
                h->state = S_HOWS;
                h->value_len = 0;
                h->value_long = false;
                continue;
            }
            if (c == ' ' || c == '\t') {
                h->shown[h->name_len] = '\0';
                return bad(h, "whitespace in or after the header name \"%s\": names are one token right before "
                              "the colon (\"Name: value\")",
                           h->shown);
            }
            if (!tchar(c))
                return bad(h, "a header name must be letters, digits and !#$%%&'*+-.^_`|~%s", "");
            if ((size_t)h->name_len + 1 < sizeof(h->name)) {
                h->shown[h->name_len++] = (char)c;
            } else {
                h->name_long = true;
            }
            continue;
        case S_HOWS:
            if (c == ' ' || c == '\t') continue;
            h->state = S_HVALUE;
            __attribute__((fallthrough));
        case S_HVALUE:
            if (!checked_name(h)) {
                /* a value nobody reads here: checked in one tight run to its line end */
                size_t j = i;
                while (j < n && vchar_tab[p[j]]) j++; /* CR, LF and the controls end the run */
                if (j > i) {
                    size_t run = j - i;
                    if ((h->header_bytes += run - 1) > h->lim->max_header_bytes)
                        return fail(h, 431, "headers_too_large",
                                    "the request line and headers are larger than the %s accepted",
                                    h->trailer ? "trailer size" : "header size");
                    i = j - 1;
                    continue;
                }
            }
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_HEADER) != 0) return -1;
                continue;
            }
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return bad(h, "the value of header \"%s\" holds a control character (NUL, CR, ...)",
                           h->name_long ? "(long)" : h->shown);
            }
            if (checked_name(h)) {
                if ((size_t)h->value_len + 1 < sizeof(h->value)) h->value[h->value_len++] = (char)c;
                else h->value_long = true;
            }
            continue;
        case S_CSIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (++h->chunk_digits > MAX_CHUNK_DIGITS) return bad(h, "a chunk size with too many digits%s", "");
                h->chunk = h->chunk * 16 + (uint64_t)v;
                continue;
            }
            if (h->chunk_digits == 0)
                return bad(h, "a chunk must start with its size in hexadecimal digits (no \"0x\", no spaces "
                              "before it)%s",
                           "");
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_CHUNK_SIZE) != 0) return -1;
                continue;
            }
            if (c == ' ' || c == '\t') {
                h->state = S_CSIZE_WS;
                continue;
            }
            if (c == ';') {
                h->state = S_CEXT;
                h->ext_len = 0;
                continue;
            }
            return bad(h, "a chunk size must be hexadecimal digits, optionally followed by ;extensions%s", "");
        }
        case S_CSIZE_WS:
            if (c == ' ' || c == '\t') continue;
            if (c == ';') {
                h->state = S_CEXT;
                h->ext_len = 0;
                continue;
            }
            return bad(h, "a chunk size followed by spaces and no ;extension%s", "");
        case S_CEXT:
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_CHUNK_SIZE) != 0) return -1;
                continue;
            }
            if ((c < 0x20 && c != '\t') || c == 0x7f) return bad(h, "a control character in a chunk extension%s", "");
            if (++h->ext_len > MAX_CHUNK_EXT) return bad(h, "a chunk extension longer than 1024 bytes%s", "");
            continue;
        case S_CDATA_END:
            if (c == '\r' || c == '\n') {
                if (eol(h, c, L_CHUNK_END) != 0) return -1;
                continue;
            }
            return bad(h, "a chunk's data must be followed by CRLF (more bytes than its size said)%s", "");
        default: return -1;
        }
    }
    return 0;
}
