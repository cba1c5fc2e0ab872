/* jsonr — see jsonr.h.  A recursive-descent parser over [p, end): strings
 * without escapes are handed to jansson in one piece (json_stringn_nocheck,
 * after our own UTF-8 check), escaped ones are decoded into a small buffer;
 * numbers use strtoll/strtod on a bounded copy, as jansson does. */
#include "jsonr.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util.h"

typedef struct reader {
    const char *p, *start, *end;
    char *err;
    int depth;
    char *sbuf; /* decoded escaped strings */
    size_t scap;
} reader;

static json_t *value(reader *r);

static void fail(reader *r, const char *what)
{
    if (r->err[0]) return;
    snprintf(r->err, 160, "%s at byte %zu", what, (size_t)(r->p - r->start));
}

static void ws(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) r->p++;
}


static bool sbuf_room(reader *r, size_t need)
{
    if (need <= r->scap) return true;
    size_t cap = r->scap ? r->scap : 256;
    while (cap < need) cap *= 2;
    char *b = realloc(r->sbuf, cap);
    if (!b) return false;
    r->sbuf = b;
    r->scap = cap;
    return true;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(char *o, unsigned v)
{
    if (v < 0x80) {
        o[0] = (char)v;
        return 1;
    }
    if (v < 0x800) {
        o[0] = (char)(0xc0 | (v >> 6));
        o[1] = (char)(0x80 | (v & 0x3f));
        return 2;
    }
    if (v < 0x10000) {
        o[0] = (char)(0xe0 | (v >> 12));
        o[1] = (char)(0x80 | ((v >> 6) & 0x3f));
        o[2] = (char)(0x80 | (v & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (v >> 18));
    o[1] = (char)(0x80 | ((v >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((v >> 6) & 0x3f));
    o[3] = (char)(0x80 | (v & 0x3f));
    return 4;
}

/* A string at r->p (on its opening quote).  Returns its bytes in out and len:
 * either pointing into the input (no escapes) or into r->sbuf. */
static bool string(reader *r, const char **out, size_t *len)
{
    const char *s = ++r->p, *q = s;
    /* fast scan: plain bytes up to the closing quote or an escape */
    while (q < r->end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"' || c == '\\' || c < 0x20) break;
        if (c < 0x80) {
            q++;
            continue;
        }
        size_t n = util_utf8_seq_len((const unsigned char *)q, (const unsigned char *)r->end);
        if (!n) {
            r->p = q;
            fail(r, "invalid UTF-8 in a string");
            return false;
        }
        q += n;
    }
    if (q < r->end && *q == '"') {
        *out = s;
        *len = (size_t)(q - s);
        r->p = q + 1;
        return true;
    }
    /* escapes (or an error): decode into sbuf; output never exceeds input */
    if (!sbuf_room(r, (size_t)(r->end - s) + 4)) {
        fail(r, "out of memory");
        return false;
    }
    size_t o = (size_t)(q - s);
    memcpy(r->sbuf, s, o);
    while (q < r->end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"') {
            *out = r->sbuf;
            *len = o;
            r->p = q + 1;
            return true;
        }
        if (c < 0x20) {
            r->p = q;
            fail(r, "control character in a string");
            return false;
        }
        if (c != '\\') {
            size_t n = c < 0x80 ? 1 : util_utf8_seq_len((const unsigned char *)q, (const unsigned char *)r->end);
            if (!n) {
                r->p = q;
                fail(r, "invalid UTF-8 in a string");
                return false;
            }
            memcpy(r->sbuf + o, q, n);
            o += n;
            q += n;
            continue;
        }
        if (r->end - q < 2) break;
        char e = q[1];
        q += 2;
        switch (e) {
        case '"': r->sbuf[o++] = '"'; break;
        case '\\': r->sbuf[o++] = '\\'; break;
        case '/': r->sbuf[o++] = '/'; break;
        case 'b': r->sbuf[o++] = '\b'; break;
        case 'f': r->sbuf[o++] = '\f'; break;
        case 'n': r->sbuf[o++] = '\n'; break;
        case 'r': r->sbuf[o++] = '\r'; break;
        case 't': r->sbuf[o++] = '\t'; break;
        case 'u': {
            int v = r->end - q >= 4 ? hex4(q) : -1;
            if (v < 0) {
                r->p = q - 2;
                fail(r, "invalid \\u escape");
                return false;
            }
            q += 4;
            unsigned cp = (unsigned)v;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                int lo = r->end - q >= 6 && q[0] == '\\' && q[1] == 'u' ? hex4(q + 2) : -1;
                if (lo < 0xdc00 || lo > 0xdfff) {
                    r->p = q - 6;
                    fail(r, "invalid \\u surrogate pair");
                    return false;
                }
                q += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + ((unsigned)lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                r->p = q - 6;
                fail(r, "lone \\u surrogate");
                return false;
            } else if (cp == 0) {
                r->p = q - 6;
                fail(r, "\\u0000 is not allowed");
                return false;
            }
            o += put_utf8(r->sbuf + o, cp);
            break;
        }
        default:
            r->p = q - 2;
            fail(r, "invalid escape");
            return false;
        }
    }
    r->p = r->end;
    fail(r, "unterminated string");
    return false;
}

static json_t *number(reader *r)
{
    const char *s = r->p, *q = s;
    bool real = false;
    if (q < r->end && *q == '-') q++;
    if (q < r->end && *q == '0') {
        q++;
    } else if (q < r->end && *q >= '1' && *q <= '9') {
        while (q < r->end && *q >= '0' && *q <= '9') q++;
    } else {
        fail(r, "invalid number");
        return NULL;
    }
    if (q < r->end && *q == '.') {
        real = true;
        q++;
        if (q >= r->end || *q < '0' || *q > '9') {
            r->p = q;
            fail(r, "invalid number");
            return NULL;
        }
        while (q < r->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < r->end && (*q == 'e' || *q == 'E')) {
        real = true;
        q++;
        if (q < r->end && (*q == '+' || *q == '-')) q++;
        if (q >= r->end || *q < '0' || *q > '9') {
            r->p = q;
            fail(r, "invalid number");
            return NULL;
        }
        while (q < r->end && *q >= '0' && *q <= '9') q++;
    }
    size_t n = (size_t)(q - s);
    char small[64], *copy = n < sizeof(small) ? small : malloc(n + 1);
    if (!copy) {
        fail(r, "out of memory");
        return NULL;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    json_t *v = NULL;
    errno = 0;
    if (!real) {
        long long i = strtoll(copy, NULL, 10);
        if (errno == ERANGE) fail(r, "too big integer");
        else v = json_integer((json_int_t)i);
    } else {
        double d = strtod(copy, NULL);
        if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL)) fail(r, "real number overflow");
        else v = json_real(d);
    }
    if (copy != small) free(copy);
    r->p = q;
    if (!v && !r->err[0]) fail(r, "out of memory");
    return v;
}

static bool literal(reader *r, const char *word, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0) {
        fail(r, "invalid token");
        return false;
    }
    r->p += n;
    return true;
}

static json_t *object(reader *r)
{
    json_t *o = json_object();
    if (!o) goto oom;
    r->p++; /* '{' */
    ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return o;
    }
    for (;;) {
        ws(r);
        if (r->p >= r->end || *r->p != '"') {
            fail(r, "expected a string key");
            goto err;
        }
        const char *k;
        size_t klen;
        if (!string(r, &k, &klen)) goto err;
        /* the key may live in sbuf, which the value may reuse: copy it out */
        char kstack[128], *key = klen < sizeof(kstack) ? kstack : malloc(klen + 1);
        if (!key) goto oom;
        memcpy(key, k, klen);
        key[klen] = '\0';
        ws(r);
        json_t *v = NULL;
        if (r->p >= r->end || *r->p != ':') fail(r, "expected ':'");
        else {
            r->p++;
            v = value(r);
        }
        int rc = v ? json_object_setn_new_nocheck(o, key, klen, v) : -1;
        if (key != kstack) free(key);
        if (rc != 0) {
            if (v) fail(r, "out of memory");
            goto err;
        }
        ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == '}') {
            r->p++;
            return o;
        }
        fail(r, "expected ',' or '}'");
        goto err;
    }
oom:
    fail(r, "out of memory");
err:
    json_decref(o);
    return NULL;
}

static json_t *array(reader *r)
{
    json_t *a = json_array();
    if (!a) {
        fail(r, "out of memory");
        return NULL;
    }
    r->p++; /* '[' */
    ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return a;
    }
    for (;;) {
        json_t *v = value(r);
        if (!v || json_array_append_new(a, v) != 0) {
            if (v) fail(r, "out of memory");
            json_decref(a);
            return NULL;
        }
        ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == ']') {
            r->p++;
            return a;
        }
        fail(r, "expected ',' or ']'");
        json_decref(a);
        return NULL;
    }
}

static json_t *value(reader *r)
{
    ws(r);
    if (r->p >= r->end) {
        fail(r, "unexpected end of input");
        return NULL;
    }
    switch (*r->p) {
    case '{':
    case '[': {
        if (++r->depth > JSONR_MAX_DEPTH) {
            fail(r, "maximum parsing depth reached");
            return NULL;
        }
        json_t *v = *r->p == '{' ? object(r) : array(r);
        r->depth--;
        return v;
    }
    case '"': {
        const char *s;
        size_t n;
        if (!string(r, &s, &n)) return NULL;
        json_t *v = json_stringn_nocheck(s, n);
        if (!v) fail(r, "out of memory");
        return v;
    }
    case 't': return literal(r, "true", 4) ? json_true() : NULL;
    case 'f': return literal(r, "false", 5) ? json_false() : NULL;
    case 'n': return literal(r, "null", 4) ? json_null() : NULL;
    default: return number(r);
    }
}

json_t *jsonr_loadb(const char *buf, size_t len, char err[160])
{
    reader r = {.p = buf, .start = buf, .end = buf + len, .err = err};
    err[0] = '\0';
    json_t *v = buf ? value(&r) : NULL;
    if (!buf) snprintf(err, 160, "no input");
    if (v) {
        ws(&r);
        if (r.p != r.end) {
            fail(&r, "end of file expected");
            json_decref(v);
            v = NULL;
        }
    }
    free(r.sbuf);
    return v;
}
