#include "jsonw.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util.h"

#define JW_MIN_HEAP 256

/* Sticky: with cap == len every later write takes grow_slow, which refuses. */
static void fail(jsonw *w)
{
    w->oom = true;
    w->cap = w->len;
}

void jw_init(jsonw *w, char *storage, size_t cap)
{
    w->buf = cap ? storage : NULL;
    w->cap = storage ? cap : 0;
    w->len = 0;
    w->heap = false;
    w->oom = false;
    w->comma = false;
}

void jw_free(jsonw *w)
{
    if (w->heap) free(w->buf);
    w->buf = NULL;
    w->cap = w->len = 0;
    w->heap = false;
}

void jw_reset(jsonw *w)
{
    w->len = 0;
    w->oom = false;
    w->comma = false;
}

/* Makes room for n more bytes plus the NUL jw_text may add. */
static bool grow_slow(jsonw *w, size_t n)
{
    if (w->oom) return false;
    if (n > (size_t)-1 / 4 - w->len) goto oom;
    size_t want = w->len + n + 1, cap = w->cap * 2;
    if (cap < JW_MIN_HEAP) cap = JW_MIN_HEAP;
    if (cap < want) cap = want;
    char *p;
    if (w->heap) {
        p = realloc(w->buf, cap);
    } else {
        p = malloc(cap);
        if (p && w->len) memcpy(p, w->buf, w->len);
    }
    if (!p) goto oom;
    w->buf = p;
    w->cap = cap;
    w->heap = true;
    return true;
oom:
    fail(w);
    return false;
}

static inline bool grow(jsonw *w, size_t n)
{
    /* oom leaves cap == len, so a failed writer always takes the slow path */
    if (n < w->cap - w->len) return true;
    return grow_slow(w, n);
}

const char *jw_text(const jsonw *w)
{
    if (w->oom || !w->buf) return "";
    w->buf[w->len] = '\0'; /* grow() always leaves this byte */
    return w->buf;
}

char *jw_detach(jsonw *w, size_t *len)
{
    char *out = NULL;
    if (w->oom) goto done;
    if (w->heap) {
        out = w->buf;
        out[w->len] = '\0';
    } else {
        out = malloc(w->len + 1);
        if (!out) goto done;
        if (w->len) memcpy(out, w->buf, w->len);
        out[w->len] = '\0';
    }
    if (len) *len = w->len;
    w->buf = NULL;
    w->heap = false;
    w->cap = 0;
done:
    if (!out && w->heap) free(w->buf);
    if (!out) {
        w->buf = NULL;
        w->heap = false;
        w->cap = 0;
    }
    w->len = 0;
    w->comma = false;
    return out;
}

char *jw_reserve(jsonw *w, size_t n)
{
    return grow(w, n) ? w->buf + w->len : NULL;
}

void jw_put(jsonw *w, const char *s, size_t n)
{
    if (!n || !grow(w, n)) return;
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

void jw_putc(jsonw *w, char c)
{
    if (!grow(w, 1)) return;
    w->buf[w->len++] = c;
}

void jw_puts(jsonw *w, const char *s) { jw_put(w, s, strlen(s)); }

void jw_put_int(jsonw *w, long long v)
{
    char tmp[24];
    jw_put(w, tmp, util_format_ll(v, tmp));
}

/* ---------- structure ---------- */

static inline void before_value(jsonw *w)
{
    if (w->comma) jw_putc(w, ',');
    w->comma = true;
}

void jw_obj_open(jsonw *w)
{
    before_value(w);
    jw_putc(w, '{');
    w->comma = false;
}

void jw_obj_close(jsonw *w)
{
    jw_putc(w, '}');
    w->comma = true;
}

void jw_arr_open(jsonw *w)
{
    before_value(w);
    jw_putc(w, '[');
    w->comma = false;
}

void jw_arr_close(jsonw *w)
{
    jw_putc(w, ']');
    w->comma = true;
}

static inline bool special(unsigned char c);

void jw_key_plain(jsonw *w, const char *key, size_t n)
{
    char *o = jw_reserve(w, n + 4);
    if (!o) return;
    size_t i = 0;
    if (w->comma) o[i++] = ',';
    o[i++] = '"';
    memcpy(o + i, key, n);
    i += n;
    o[i++] = '"';
    o[i++] = ':';
    jw_commit(w, i);
    w->comma = false;
}

void jw_key(jsonw *w, const char *key)
{
    size_t n = strlen(key);
    char *o = jw_reserve(w, n + 4);
    if (!o) return;
    /* keys are mostly plain ASCII: copy while checking, escape otherwise */
    size_t i = 0;
    if (w->comma) o[i++] = ',';
    o[i++] = '"';
    size_t k = 0;
    while (k < n && !special((unsigned char)key[k])) {
        o[i + k] = key[k];
        k++;
    }
    if (k == n) {
        o[i + n] = '"';
        o[i + n + 1] = ':';
        jw_commit(w, i + n + 2);
    } else {
        jw_commit(w, i + k);
        jw_escaped(w, key + k, n - k);
        jw_put(w, "\":", 2);
    }
    w->comma = false;
}

/* ---------- strings ---------- */

/* Length of the valid UTF-8 sequence starting at p (a byte >= 0x80), or 0:
 * the rules of RFC 3629 (no overlong forms, no surrogates, at most
 * U+10FFFF), as jansson checks them when it parses. */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
    unsigned c = p[0], cp;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3Fu);
    }
    if (n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return n;
}

/* Bytes that end a plain run: controls, '"', '\\', and non-ASCII (checked). */
static inline bool special(unsigned char c)
{
    return (unsigned char)(c - 0x20) >= 0x60 || c == '"' || c == '\\';
}

/* True when none of the 8 bytes at p is special(): a byte < 0x20 (the
 * classic "has less than" test, exact for "any"), with the high bit, or
 * equal to '"' or '\\' ("has zero" after an xor). */
static inline bool plain8(const unsigned char *p)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    uint64_t hits = ((x - ones * 0x20) & ~x) | x | ((q - ones) & ~q) | ((b - ones) & ~b);
    return (hits & highs) == 0;
}

void jw_escaped(jsonw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        const unsigned char *run = p;
        for (;;) {
            while (end - p >= 8 && plain8(p)) p += 8;
            while (p < end && !special(*p)) p++;
            if (p < end && *p >= 0x80) {
                size_t k = utf8_seq(p, (size_t)(end - p));
                if (k) {
                    p += k;
                    continue;
                }
            }
            break;
        }
        jw_put(w, (const char *)run, (size_t)(p - run));
        if (p == end) break;
        unsigned char c = *p++;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        switch (c) {
        case '"': jw_put(w, "\\\"", 2); break;
        case '\\': jw_put(w, "\\\\", 2); break;
        case '\b': jw_put(w, "\\b", 2); break;
        case '\f': jw_put(w, "\\f", 2); break;
        case '\n': jw_put(w, "\\n", 2); break;
        case '\r': jw_put(w, "\\r", 2); break;
        case '\t': jw_put(w, "\\t", 2); break;
        default:
            if (c >= 0x80) jw_put(w, "\xEF\xBF\xBD", 3); /* invalid UTF-8: U+FFFD */
            else jw_put(w, esc, sizeof(esc));
        }
    }
}

void jw_string(jsonw *w, const char *s, size_t n)
{
    before_value(w);
    jw_putc(w, '"');
    jw_escaped(w, s, n);
    jw_putc(w, '"');
}

void jw_cstring(jsonw *w, const char *s)
{
    if (s) jw_string(w, s, strlen(s));
    else jw_null(w);
}

/* ---------- other values ---------- */

void jw_int(jsonw *w, long long v)
{
    before_value(w);
    jw_put_int(w, v);
}

void jw_real(jsonw *w, double v)
{
    if (!isfinite(v)) {
        jw_null(w);
        return;
    }
    char num[40];
    if (v >= 1e9 && v < 1e10) {
        /* Unix times: %.17g is %.7f there, less its trailing zeros (and a
         * bare point then gets a 0, as below) -- without printf */
        size_t len = util_format_fixed(v, 7, num);
        if (len == 18 && num[10] == '.') {
            while (num[len - 1] == '0' && num[len - 2] != '.') len--;
            before_value(w);
            jw_put(w, num, len);
            return;
        }
    }
    int n = snprintf(num, sizeof(num) - 3, "%.17g", v);
    if (n < 0 || (size_t)n >= sizeof(num) - 3) {
        jw_null(w);
        return;
    }
    size_t len = (size_t)n;
    for (size_t i = 0; i < len; i++)
        if (num[i] == ',') num[i] = '.'; /* a locale's decimal comma */
    char *e = memchr(num, 'e', len);
    if (!e && !memchr(num, '.', len)) {
        /* keep it a real when read back, as jansson does */
        memcpy(num + len, ".0", 2);
        len += 2;
    } else if (e) {
        /* exponent without '+' or leading zeros: 1e+300 -> 1e300, 1e-07 -> 1e-7 */
        char *start = e + 1, *digits = start;
        if (*start == '-') start++, digits++;
        if (*digits == '+') digits++;
        while (*digits == '0' && digits[1] != '\0') digits++;
        size_t keep = len - (size_t)(digits - num);
        memmove(start, digits, keep);
        len = (size_t)(start - num) + keep;
    }
    before_value(w);
    jw_put(w, num, len);
}

void jw_bool(jsonw *w, bool v)
{
    before_value(w);
    if (v) jw_put(w, "true", 4);
    else jw_put(w, "false", 5);
}

void jw_null(jsonw *w)
{
    before_value(w);
    jw_put(w, "null", 4);
}

void jw_base64(jsonw *w, const void *data, size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = data;
    before_value(w);
    if (n > ((size_t)-1 / 4 - 8) / 4 * 3) {
        fail(w);
        return;
    }
    size_t out_len = (n + 2) / 3 * 4;
    char *o = jw_reserve(w, out_len + 2);
    if (!o) return;
    char *start = o;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        o[0] = b64[v >> 18];
        o[1] = b64[(v >> 12) & 63];
        o[2] = b64[(v >> 6) & 63];
        o[3] = b64[v & 63];
        o += 4;
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0u);
        o[0] = b64[v >> 18];
        o[1] = b64[(v >> 12) & 63];
        o[2] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        o[3] = '=';
        o += 4;
    }
    *o++ = '"';
    jw_commit(w, (size_t)(o - start));
}

void jw_raw_value(jsonw *w, const char *json, size_t n)
{
    before_value(w);
    jw_put(w, json, n);
}

void jw_value(jsonw *w, const json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: {
        const char *k;
        json_t *val;
        jw_obj_open(w);
        json_object_foreach((json_t *)v, k, val) {
            jw_key(w, k);
            jw_value(w, val);
        }
        jw_obj_close(w);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        jw_arr_open(w);
        for (size_t i = 0; i < n; i++) jw_value(w, json_array_get(v, i));
        jw_arr_close(w);
        break;
    }
    case JSON_STRING: jw_string(w, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: jw_int(w, (long long)json_integer_value(v)); break;
    case JSON_REAL: jw_real(w, json_real_value(v)); break;
    case JSON_TRUE: jw_bool(w, true); break;
    case JSON_FALSE: jw_bool(w, false); break;
    case JSON_NULL: jw_null(w); break;
    }
}
