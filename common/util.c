#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/random.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "jsonw.h"

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double util_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int util_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

void util_uuid4(char out[37])
{
    unsigned char b[16];
    if (util_random(b, sizeof(b)) != 0) {
        /* getrandom cannot fail on Linux >= 3.17 with a 16-byte request;
         * keep ids unique anyway by mixing the clock in. */
        double t = util_monotonic() * 1e9;
        memcpy(b, &t, sizeof(t));
        memcpy(b + 8, &t, sizeof(t));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

size_t util_format_ll(long long v, char out[24])
{
    char tmp[24];
    size_t i = sizeof(tmp);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    memcpy(out, tmp + i, sizeof(tmp) - i);
    out[sizeof(tmp) - i] = '\0';
    return sizeof(tmp) - i;
}

size_t util_format_fixed(double v, int decimals, char out[32])
{
    static const double pow10[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    /* For 2^29 <= v < 2^34 a double's fraction is k * 2^-23 at the finest,
     * so frac * 10^d (d <= 7) is k * 5^d * 2^(d-23) with k * 5^d < 2^40:
     * exact, and nearbyint() (round half to even, the default mode) rounds
     * the exact value as printf does.  Anything else goes to printf. */
    if (!(v >= 536870912.0 && v < 17179869184.0) || decimals < 0 || decimals > 7) {
        int n = snprintf(out, 32, "%.*f", decimals, v);
        return n < 0 ? 0 : (size_t)n > 31 ? 31 : (size_t)n;
    }
    long long sec = (long long)v;
    double scaled = nearbyint((v - (double)sec) * pow10[decimals]);
    long long frac = (long long)scaled;
    if (frac >= (long long)pow10[decimals]) {
        sec++;
        frac -= (long long)pow10[decimals];
    }
    size_t n = util_format_ll(sec, out);
    if (decimals > 0) {
        out[n++] = '.';
        for (int i = decimals - 1; i >= 0; i--) {
            out[n + (size_t)i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        n += (size_t)decimals;
        out[n] = '\0';
    }
    return n;
}

void util_iso8601(double t, char out[32])
{
    time_t sec = (time_t)t;
    long usec = (long)((t - (double)sec) * 1e6);
    struct tm tm;
    if (usec < 0) usec = 0;
    if (usec > 999999) usec = 999999;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%06ld", usec);
}

/* Bytes of the UTF-8 sequence a lead byte starts: 1 for ASCII, 2..4 for a
 * lead byte, 0 for a continuation byte or a byte that never starts one. */
static size_t utf8_lead_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

size_t util_utf8_trim_end(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    /* the last lead byte among the last four; a character shorter than
     * its lead byte promises was cut */
    for (size_t back = 1; back <= 4 && back <= len; back++) {
        unsigned char c = p[len - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t want = utf8_lead_len(c);
        return want > back ? len - back : len;
    }
    return len; /* not UTF-8 there (a run of continuation bytes): left as it is */
}

size_t util_utf8_prefix(const char *s, size_t max)
{
    if (!s) return 0;
    size_t n = strnlen(s, max);
    if (n < max || s[n] == '\0') return n; /* the whole string */
    return util_utf8_trim_end(s, n);
}

size_t util_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    if (!size) return 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    if ((size_t)n < size) return (size_t)n;
    size_t len = util_utf8_trim_end(buf, size - 1);
    buf[len] = '\0';
    return len;
}

bool util_valid_id(const char *id, size_t len, size_t max)
{
    if (len < 1 || len > max) return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '.' || c == ':' || c == '-';
        if (!ok) return false;
    }
    return true;
}

/* 0..63 for the alphabet, 0 for '=', -1 for anything else */
static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    if (ch == '=') return 0;
    return -1;
}

long util_base64_decode(unsigned char *out, const char *in, size_t n)
{
    const unsigned char *p = (const unsigned char *)in;
    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n > 3 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == '-'))
        n--;
    if (n % 4 != 0) return -1;
    long len = 0;
    for (size_t i = 0; i < n; i += 4) {
        int a = b64_value(p[i]), b = b64_value(p[i + 1]), c = b64_value(p[i + 2]), d = b64_value(p[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[len++] = (unsigned char)(v >> 16);
        out[len++] = (unsigned char)(v >> 8);
        out[len++] = (unsigned char)v;
    }
    return len;
}

const char *util_reason(int status)
{
    /* RFC 9110 §15 and the IANA registry; "" (an empty reason phrase, RFC
     * 9112 §4) for a code it does not name */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 511: return "Network Authentication Required";
    default: return "";
    }
}

/* The Date header (RFC 9110 IMF-fixdate), formatted once a second: libevent
 * would format it for every reply (gmtime and printf, ~4 % of a
 * submission).  The C locale (never changed here) gives the English names. */
const char *util_http_date(void)
{
    static char buf[40];
    static time_t at = (time_t)-1;
    time_t now = time(NULL);
    if (now != at) {
        struct tm tm;
        if (!gmtime_r(&now, &tm) || strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
            return NULL;
        at = now;
    }
    return buf;
}

void util_reply_json(struct evhttp_request *req, int status, const char *json, size_t len)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char clen[24];
    const char *date = util_http_date();
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", "application/json");
    /* a browser never reads a JSON reply as HTML or script */
    if (!evhttp_find_header(h, "X-Content-Type-Options")) evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    /* given here, evhttp does not format them itself */
    if (date && !evhttp_find_header(h, "Date")) evhttp_add_header(h, "Date", date);
    if (status >= 200 && status != 204 && status != 304) { /* those carry no body, nor its length */
        util_format_ll((long long)len, clen);
        evhttp_remove_header(h, "Content-Length");
        evhttp_add_header(h, "Content-Length", clen);
    }
    evbuffer_add(out, json, len);
    evhttp_send_reply(req, status, util_reason(status), NULL);
}

void util_reply_error(struct evhttp_request *req, int status, const char *code,
                      const char *message, int retry_after_s)
{
    /* written with jsonw, which replaces invalid UTF-8 instead of failing:
     * a message quoting odd input is still sent, and only a real shortage
     * of memory gives the out_of_memory reply */
    char stack[512];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "error");
    jw_cstring(&w, code);
    jw_lit_key(&w, "message");
    jw_cstring(&w, message ? message : "");
    jw_obj_close(&w);
    if (retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", retry_after_s);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
    }
    if (!jw_failed(&w)) {
        util_reply_json(req, status, jw_text(&w), jw_len(&w));
    } else {
        static const char oom[] = "{\"error\":\"out_of_memory\",\"message\":\"the server is out of memory; retry later\"}";
        util_reply_json(req, status, oom, sizeof(oom) - 1);
    }
    jw_free(&w);
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 when invalid. */
size_t util_utf8_seq_len(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if (c < 0xc2) return 0;
    if (c < 0xe0) n = 2, min = 0x80;
    else if (c < 0xf0) n = 3, min = 0x800;
    else if (c < 0xf5) n = 4, min = 0x10000;
    else return 0;
    if ((size_t)(end - s) < n) return 0;
    unsigned v = c & (0xff >> (n + 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    return n;
}

bool util_list_item(const char **cursor, const char **item, size_t *len)
{
    const char *c = *cursor;
    while (*c == ',' || *c == ' ' || *c == '\t') c++;
    if (!*c) return false;
    const char *e = c + strcspn(c, ",");
    *cursor = e;
    while (e > c && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *item = c;
    *len = (size_t)(e - c);
    return true;
}

bool util_list_has(const char *list, const char *name, size_t n)
{
    const char *it;
    size_t il;
    while (list && util_list_item(&list, &it, &il))
        if (il == n && strncasecmp(it, name, n) == 0) return true;
    return false;
}
