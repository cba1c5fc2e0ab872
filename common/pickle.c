/* pickle — see pickle.h.
 *
 * The writer emits protocol 2 with no memo: PROTO 2, then each value
 * (containers as EMPTY_LIST/EMPTY_DICT + MARK ... APPENDS/SETITEMS, the
 * top-level tuple as MARK ... TUPLE), then STOP.
 *
 * The reader is a stack machine over [p, end), as Python's unpickler, with
 * MARK positions kept apart from the values (an opcode never reaches below
 * the innermost MARK).  Every value it makes goes into an arena that holds
 * one reference to it until the end; the stack and the memo hold arena
 * indexes, so sharing a value (DUP, GET) costs no reference counting and
 * nothing leaks on any error path.  Per value the arena keeps its kind
 * (str, bytes, list, tuple, dict, other), its nesting height, and its size
 * as a tree (values and string bytes, shared ones counted each time they
 * appear), which the limits of pickle.h are checked against.
 *
 * A list or dict can be changed (APPEND, SETITEM ...) only until it is put
 * into another container: from then on it is sealed.  This is what makes
 * the sizes exact (a sealed value never grows, so no container's size goes
 * stale behind it) and recursive structures impossible: a container can be
 * inside a value only after it was put somewhere, i.e. sealed, so the one
 * cycle left to refuse is a container put into itself. */
#include "pickle.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonw.h"
#include "util.h"

/* ------------------------------------------------------------ opcodes */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_FLOAT = 'F', OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R',
    OP_STRING = 'S', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h', OP_INST = 'i',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e,
    OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92,
    OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98,
};

#define IMPORTS "a pickle that imports or calls"

/* Every opcode of protocols 0-5 by name; refused ones say why. */
static const struct opinfo {
    unsigned char code;
    const char *name;
    const char *refused; /* NULL: accepted */
} opinfo[] = {
    {OP_MARK, "MARK", NULL}, {OP_STOP, "STOP", NULL}, {OP_POP, "POP", NULL},
    {OP_POP_MARK, "POP_MARK", NULL}, {OP_DUP, "DUP", NULL}, {OP_FLOAT, "FLOAT", NULL},
    {OP_INT, "INT", NULL}, {OP_BININT, "BININT", NULL}, {OP_BININT1, "BININT1", NULL},
    {OP_LONG, "LONG", NULL}, {OP_BININT2, "BININT2", NULL}, {OP_NONE, "NONE", NULL},
    {OP_STRING, "STRING", NULL}, {OP_BINSTRING, "BINSTRING", NULL},
    {OP_SHORT_BINSTRING, "SHORT_BINSTRING", NULL}, {OP_UNICODE, "UNICODE", NULL},
    {OP_BINUNICODE, "BINUNICODE", NULL}, {OP_APPEND, "APPEND", NULL}, {OP_DICT, "DICT", NULL},
    {OP_EMPTY_DICT, "EMPTY_DICT", NULL}, {OP_APPENDS, "APPENDS", NULL}, {OP_GET, "GET", NULL},
    {OP_BINGET, "BINGET", NULL}, {OP_LONG_BINGET, "LONG_BINGET", NULL}, {OP_LIST, "LIST", NULL},
    {OP_EMPTY_LIST, "EMPTY_LIST", NULL}, {OP_PUT, "PUT", NULL}, {OP_BINPUT, "BINPUT", NULL},
    {OP_LONG_BINPUT, "LONG_BINPUT", NULL}, {OP_SETITEM, "SETITEM", NULL},
    {OP_TUPLE, "TUPLE", NULL}, {OP_EMPTY_TUPLE, "EMPTY_TUPLE", NULL},
    {OP_SETITEMS, "SETITEMS", NULL}, {OP_BINFLOAT, "BINFLOAT", NULL}, {OP_PROTO, "PROTO", NULL},
    {OP_TUPLE1, "TUPLE1", NULL}, {OP_TUPLE2, "TUPLE2", NULL}, {OP_TUPLE3, "TUPLE3", NULL},
    {OP_NEWTRUE, "NEWTRUE", NULL}, {OP_NEWFALSE, "NEWFALSE", NULL}, {OP_LONG1, "LONG1", NULL},
    {OP_LONG4, "LONG4", NULL}, {OP_BINBYTES, "BINBYTES", NULL},
    {OP_SHORT_BINBYTES, "SHORT_BINBYTES", NULL}, {OP_SHORT_BINUNICODE, "SHORT_BINUNICODE", NULL},
    {OP_BINUNICODE8, "BINUNICODE8", NULL}, {OP_BINBYTES8, "BINBYTES8", NULL},
    {OP_MEMOIZE, "MEMOIZE", NULL}, {OP_FRAME, "FRAME", NULL}, {OP_BYTEARRAY8, "BYTEARRAY8", NULL},
    {OP_GLOBAL, "GLOBAL", IMPORTS}, {OP_STACK_GLOBAL, "STACK_GLOBAL", IMPORTS},
    {OP_REDUCE, "REDUCE", IMPORTS}, {OP_INST, "INST", IMPORTS}, {OP_OBJ, "OBJ", IMPORTS},
    {OP_NEWOBJ, "NEWOBJ", IMPORTS}, {OP_NEWOBJ_EX, "NEWOBJ_EX", IMPORTS},
    {OP_BUILD, "BUILD", "a pickle that builds objects"},
    {OP_EXT1, "EXT1", IMPORTS " (extension registry)"},
    {OP_EXT2, "EXT2", IMPORTS " (extension registry)"},
    {OP_EXT4, "EXT4", IMPORTS " (extension registry)"},
    {OP_PERSID, "PERSID", "a persistent id refers to an object outside the pickle"},
    {OP_BINPERSID, "BINPERSID", "a persistent id refers to an object outside the pickle"},
    {OP_EMPTY_SET, "EMPTY_SET", "a set is not a plain value"},
    {OP_ADDITEMS, "ADDITEMS", "a set is not a plain value"},
    {OP_FROZENSET, "FROZENSET", "a frozenset is not a plain value"},
    {OP_NEXT_BUFFER, "NEXT_BUFFER", "out-of-band buffers are not supported"},
    {OP_READONLY_BUFFER, "READONLY_BUFFER", "out-of-band buffers are not supported"},
};

static const struct opinfo *op_lookup(unsigned char c)
{
    for (size_t i = 0; i < sizeof(opinfo) / sizeof(opinfo[0]); i++)
        if (opinfo[i].code == c) return &opinfo[i];
    return NULL;
}

/* ------------------------------------------------------------ writer */

static bool w_value(jsonw *w, const json_t *v, int depth);

static void w_bytes(jsonw *w, const unsigned char *b, size_t n) { jw_put(w, (const char *)b, n); }

static void w_op(jsonw *w, unsigned char op) { w_bytes(w, &op, 1); }

/* An opcode and the n low bytes of x, little-endian. */
static void w_op_le(jsonw *w, unsigned char op, uint64_t x, int n)
{
    unsigned char b[9] = {op};
    for (int k = 0; k < n; k++) b[1 + k] = (unsigned char)(x >> (8 * k));
    w_bytes(w, b, (size_t)n + 1);
}

static void w_int(jsonw *w, json_int_t i)
{
    uint64_t u = (uint64_t)i; /* two's complement, whatever the sign */
    if (i >= 0 && i <= 0xff) {
        w_op_le(w, OP_BININT1, u, 1);
    } else if (i >= 0 && i <= 0xffff) {
        w_op_le(w, OP_BININT2, u, 2);
    } else if (i >= INT32_MIN && i <= INT32_MAX) {
        w_op_le(w, OP_BININT, u, 4);
    } else {
        /* LONG1: the shortest two's complement, little-endian */
        int n = 8;
        while (n > 1) {
            unsigned last = (unsigned)(u >> (8 * (n - 1))) & 0xff, sign = (unsigned)(u >> (8 * (n - 2) + 7)) & 1;
            if (!((last == 0x00 && !sign) || (last == 0xff && sign))) break;
            n--;
        }
        w_op_le(w, OP_LONG1, (uint64_t)n, 1);
        unsigned char b[8];
        for (int k = 0; k < n; k++) b[k] = (unsigned char)(u >> (8 * k));
        w_bytes(w, b, (size_t)n);
    }
}

static bool valid_utf8(const unsigned char *s, size_t n);

static bool w_str(jsonw *w, const char *s, size_t n)
{
    if (n > UINT32_MAX || !valid_utf8((const unsigned char *)s, n)) return false;
    w_op_le(w, OP_BINUNICODE, n, 4);
    jw_put(w, s, n);
    return true;
}

/* The items of an array, one after the other (no MARK, no closing op). */
static bool w_items(jsonw *w, const json_t *a, int depth)
{
    size_t i;
    const json_t *x;
    json_array_foreach(a, i, x) if (!w_value(w, x, depth)) return false;
    return true;
}

static bool w_value(jsonw *w, const json_t *v, int depth)
{
    switch (json_typeof(v)) {
    case JSON_NULL: w_op(w, OP_NONE); return true;
    case JSON_TRUE: w_op(w, OP_NEWTRUE); return true;
    case JSON_FALSE: w_op(w, OP_NEWFALSE); return true;
    case JSON_INTEGER: w_int(w, json_integer_value(v)); return true;
    case JSON_REAL: {
        double d = json_real_value(v);
        if (!isfinite(d)) return false;
        uint64_t u;
        memcpy(&u, &d, sizeof(u));
        unsigned char b[9] = {OP_BINFLOAT};
        for (int k = 0; k < 8; k++) b[1 + k] = (unsigned char)(u >> (56 - 8 * k)); /* big-endian */
        w_bytes(w, b, 9);
        return true;
    }
    case JSON_STRING: return w_str(w, json_string_value(v), json_string_length(v));
    case JSON_ARRAY:
        if (depth >= PICKLE_MAX_DEPTH) return false;
        w_op(w, OP_EMPTY_LIST);
        if (json_array_size(v) == 0) return true;
        w_op(w, OP_MARK);
        if (!w_items(w, v, depth + 1)) return false;
        w_op(w, OP_APPENDS);
        return true;
    case JSON_OBJECT: {
        if (depth >= PICKLE_MAX_DEPTH) return false;
        w_op(w, OP_EMPTY_DICT);
        if (json_object_size(v) == 0) return true;
        w_op(w, OP_MARK);
        const char *k;
        size_t klen;
        const json_t *x;
        /* the foreach macro takes a non-const object; it does not change it */
        json_t *o = (json_t *)v;
        json_object_keylen_foreach(o, k, klen, x)
        {
            if (!w_str(w, k, klen) || !w_value(w, x, depth + 1)) return false;
        }
        w_op(w, OP_SETITEMS);
        return true;
    }
    }
    return false;
}

static unsigned char *dumps(const json_t *v, size_t *len, bool tuple)
{
    if (len) *len = 0;
    if (!v || (tuple && !json_is_array(v))) return NULL;
    char stack[512];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_put(&w, "\x80\x02", 2);
    bool ok;
    if (!tuple) {
        ok = w_value(&w, v, 0);
    } else if (json_array_size(v) == 0) {
        w_op(&w, OP_EMPTY_TUPLE);
        ok = true;
    } else {
        w_op(&w, OP_MARK);
        ok = w_items(&w, v, 1);
        w_op(&w, OP_TUPLE);
    }
    w_op(&w, OP_STOP);
    if (!ok) {
        jw_free(&w);
        return NULL;
    }
    return (unsigned char *)jw_detach(&w, len);
}

unsigned char *pickle_dumps(const json_t *v, size_t *len) { return dumps(v, len, false); }

unsigned char *pickle_dumps_tuple(const json_t *array, size_t *len) { return dumps(array, len, true); }

/* ------------------------------------------------------------ reader */

enum kind { K_OTHER, K_STR, K_BYTES, K_LIST, K_TUPLE, K_DICT };

typedef struct val {
    json_t *v;      /* the arena's reference */
    uint64_t bytes; /* string bytes of the tree it stands for */
    uint32_t count; /* values of that tree */
    uint8_t kind;
    uint8_t height; /* 0 for a scalar, 1 for a container of scalars */
    bool sealed;    /* put into a container: not to be changed any more */
} val;

typedef struct reader {
    const unsigned char *start, *p, *end;
    const struct opinfo *op; /* the opcode being run */
    size_t op_at;
    char *err;
    val *vals;
    size_t nvals, capvals;
    uint32_t *stack;
    size_t nstack, capstack;
    size_t marks[PICKLE_MAX_DEPTH];
    int nmarks;
    uint32_t *memo; /* arena index + 1; 0: empty */
    size_t capmemo, nmemo;
    uint64_t max_bytes;
    unsigned char *sbuf; /* decoded STRING / UNICODE text */
    size_t scap;
} reader;

__attribute__((format(printf, 2, 3))) static void fail(reader *r, const char *fmt, ...)
{
    if (r->err[0]) return;
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(r->err, 160, "%s at byte %zu", what, r->op_at);
}

static bool oom(reader *r)
{
    fail(r, "out of memory");
    return false;
}

static const char *kind_name(const val *x)
{
    switch (x->kind) {
    case K_STR: return "str";
    case K_BYTES: return "bytes";
    case K_LIST: return "list";
    case K_TUPLE: return "tuple";
    case K_DICT: return "dict";
    }
    switch (json_typeof(x->v)) {
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    default: return "None";
    }
}


static bool valid_utf8(const unsigned char *s, size_t n)
{
    const unsigned char *end = s + n;
    while (s < end) {
        size_t k = util_utf8_seq_len(s, end);
        if (!k) return false;
        s += k;
    }
    return true;
}

static size_t put_utf8(unsigned char *o, uint32_t v)
{
    if (v < 0x80) {
        o[0] = (unsigned char)v;
        return 1;
    }
    if (v < 0x800) {
        o[0] = (unsigned char)(0xc0 | (v >> 6));
        o[1] = (unsigned char)(0x80 | (v & 0x3f));
        return 2;
    }
    if (v < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (v >> 12));
        o[1] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (v & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (v >> 18));
    o[1] = (unsigned char)(0x80 | ((v >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (v & 0x3f));
    return 4;
}

static bool grow(reader *r, void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return oom(r);
    *p = q;
    *cap = c;
    return true;
}

/* ---- the stack ---- */

static size_t fence(const reader *r) { return r->nmarks ? r->marks[r->nmarks - 1] : 0; }

/* At least n values above the innermost MARK. */
static bool need(reader *r, size_t n)
{
    if (r->nstack - fence(r) >= n) return true;
    fail(r, "opcode %s: stack underflow (needs %zu value%s%s)", r->op->name, n, n == 1 ? "" : "s",
         r->nmarks ? " above the MARK" : "");
    return false;
}

static val *top(reader *r, size_t below) { return &r->vals[r->stack[r->nstack - 1 - below]]; }

static bool push(reader *r, uint32_t idx)
{
    if (r->nstack >= PICKLE_MAX_VALUES) {
        fail(r, "more than %d values on the stack", PICKLE_MAX_VALUES);
        return false;
    }
    if (!grow(r, (void **)&r->stack, &r->capstack, r->nstack + 1, sizeof(*r->stack))) return false;
    r->stack[r->nstack++] = idx;
    return true;
}

/* A new value in the arena (v may be NULL: out of memory). */
static bool new_val(reader *r, json_t *v, enum kind kind, uint64_t bytes, uint32_t *idx)
{
    if (!v) return oom(r);
    if (r->nvals >= PICKLE_MAX_VALUES) {
        json_decref(v);
        fail(r, "more than %d values made", PICKLE_MAX_VALUES);
        return false;
    }
    if (!grow(r, (void **)&r->vals, &r->capvals, r->nvals + 1, sizeof(*r->vals))) {
        json_decref(v);
        return false;
    }
    bool container = kind == K_LIST || kind == K_TUPLE || kind == K_DICT;
    r->vals[r->nvals] = (val){.v = v, .bytes = bytes, .count = 1, .kind = (uint8_t)kind,
                              .height = container ? 1 : 0};
    *idx = (uint32_t)r->nvals++;
    return true;
}

static bool push_new(reader *r, json_t *v, enum kind kind, uint64_t bytes)
{
    uint32_t idx;
    return new_val(r, v, kind, bytes, &idx) && push(r, idx);
}

static bool pop_mark(reader *r, size_t *base)
{
    if (!r->nmarks) {
        fail(r, "opcode %s without a MARK", r->op->name);
        return false;
    }
    *base = r->marks[--r->nmarks];
    return true;
}

/* ---- containers ---- */

/* Accounts for x being put into container c (x a value or a dict key),
 * then seals x.  Refuses what the limits or the sealing rule forbid. */
static bool adopt(reader *r, uint32_t ci, uint32_t xi)
{
    val *c = &r->vals[ci], *x = &r->vals[xi];
    if (c->sealed) {
        fail(r, "opcode %s changes a %s that is already inside another container (a recursive "
                "or shared-then-changed structure)", r->op->name, kind_name(c));
        return false;
    }
    if (ci == xi) {
        fail(r, "opcode %s puts a %s into itself (a recursive structure)", r->op->name, kind_name(c));
        return false;
    }
    if (x->height + 1 > PICKLE_MAX_DEPTH) {
        fail(r, "nesting deeper than %d", PICKLE_MAX_DEPTH);
        return false;
    }
    if (x->count > PICKLE_MAX_VALUES - c->count) {
        fail(r, "more than %d values", PICKLE_MAX_VALUES);
        return false;
    }
    if (x->bytes > r->max_bytes - c->bytes) {
        fail(r, "more than %llu bytes of strings (shared ones counted each time)",
             (unsigned long long)r->max_bytes);
        return false;
    }
    if (x->height + 1 > c->height) c->height = (uint8_t)(x->height + 1);
    c->count += x->count;
    c->bytes += x->bytes;
    x->sealed = true;
    return true;
}

static bool add_item(reader *r, uint32_t ci, uint32_t xi)
{
    if (!adopt(r, ci, xi)) return false;
    return json_array_append(r->vals[ci].v, r->vals[xi].v) == 0 || oom(r);
}

static bool set_item(reader *r, uint32_t di, uint32_t ki, uint32_t vi)
{
    val *d = &r->vals[di], *k = &r->vals[ki];
    if (d->kind != K_DICT) {
        fail(r, "opcode %s on a %s (only a dict takes items)", r->op->name, kind_name(d));
        return false;
    }
    if (k->kind != K_STR) {
        fail(r, "dict key is a %s (only str keys are allowed)", kind_name(k));
        return false;
    }
    /* jansson's own parser refuses these, and C-string APIs would cut them */
    if (memchr(json_string_value(k->v), '\0', json_string_length(k->v))) {
        fail(r, "dict key with a NUL byte refused");
        return false;
    }
    if (!adopt(r, di, ki) || !adopt(r, di, vi)) return false;
    return json_object_setn_nocheck(r->vals[di].v, json_string_value(k->v), json_string_length(k->v),
                                    r->vals[vi].v) == 0 ||
           oom(r);
}

/* A list or tuple of the stack values from base up, which it replaces. */
static bool make_seq(reader *r, size_t base, enum kind kind)
{
    uint32_t ci;
    if (!new_val(r, json_array(), kind, 0, &ci)) return false;
    for (size_t i = base; i < r->nstack; i++)
        if (!add_item(r, ci, r->stack[i])) return false;
    r->nstack = base;
    return push(r, ci);
}

/* ---- reading the input ---- */

static bool take(reader *r, size_t n, const unsigned char **out)
{
    if ((size_t)(r->end - r->p) < n) {
        fail(r, "opcode %s truncated: needs %zu byte%s, %zu left", r->op->name, n, n == 1 ? "" : "s",
             (size_t)(r->end - r->p));
        return false;
    }
    *out = r->p;
    r->p += n;
    return true;
}

/* The int64 whose two's complement is u. */
static json_int_t from_u64(uint64_t u)
{
    return u <= (uint64_t)INT64_MAX ? (json_int_t)u : -(json_int_t)~u - 1;
}

static uint64_t le(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* A little-endian length of n bytes, then that many bytes. */
static bool counted(reader *r, int n, const unsigned char **data, size_t *len)
{
    const unsigned char *b;
    if (!take(r, (size_t)n, &b)) return false;
    uint64_t v = le(b, n);
    if (n == 4 && (r->op->code == OP_BINSTRING) && (v & 0x80000000u)) {
        fail(r, "opcode %s: negative length", r->op->name);
        return false;
    }
    if (v > (uint64_t)(r->end - r->p)) {
        fail(r, "opcode %s: length %llu, but only %zu bytes left", r->op->name, (unsigned long long)v,
             (size_t)(r->end - r->p));
        return false;
    }
    *len = (size_t)v;
    return take(r, *len, data);
}

/* The text up to the next '\n' (which is consumed, not returned). */
static bool line(reader *r, const unsigned char **s, size_t *n)
{
    const unsigned char *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    if (!nl) {
        fail(r, "opcode %s truncated: its text has no ending newline", r->op->name);
        return false;
    }
    *s = r->p;
    *n = (size_t)(nl - r->p);
    r->p = nl + 1;
    return true;
}

static bool sbuf_room(reader *r, size_t need_bytes)
{
    return grow(r, (void **)&r->sbuf, &r->scap, need_bytes, 1);
}

/* Decimal text with an optional sign, within int64. */
static bool parse_int(reader *r, const unsigned char *s, size_t n, json_int_t *out)
{
    bool neg = false;
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    if (i == n) {
        fail(r, "opcode %s: no digits", r->op->name);
        return false;
    }
    uint64_t m = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            fail(r, "opcode %s: text is not a decimal integer", r->op->name);
            return false;
        }
        unsigned d = s[i] - '0';
        if (m > (lim - d) / 10) {
            fail(r, "opcode %s: integer out of range (beyond 64 bits)", r->op->name);
            return false;
        }
        m = m * 10 + d;
    }
    *out = neg ? from_u64(0 - m) : (json_int_t)m;
    return true;
}

static bool push_int(reader *r, json_int_t i) { return push_new(r, json_integer(i), K_OTHER, 0); }

static bool push_real(reader *r, double d)
{
    if (!isfinite(d)) {
        fail(r, "opcode %s: %s is not a JSON number", r->op->name, isnan(d) ? "NaN" : "infinity");
        return false;
    }
    return push_new(r, json_real(d), K_OTHER, 0);
}

static bool push_text(reader *r, const unsigned char *s, size_t n, enum kind kind)
{
    if (!valid_utf8(s, n)) {
        fail(r, "opcode %s: %s not valid UTF-8", r->op->name, kind == K_STR ? "text that is" : "bytes that are");
        return false;
    }
    return push_new(r, json_stringn_nocheck((const char *)s, n), kind, n);
}

static bool op_float_text(reader *r)
{
    const unsigned char *s;
    size_t n;
    if (!line(r, &s, &n)) return false;
    char t[64];
    if (n >= sizeof(t)) {
        fail(r, "opcode FLOAT: text longer than %zu bytes", sizeof(t) - 1);
        return false;
    }
    memcpy(t, s, n);
    t[n] = '\0';
    /* [+-] digits [. digits] [e [+-] digits], at least one digit before the exponent */
    size_t i = 0, digits = 0;
    if (t[i] == '+' || t[i] == '-') i++;
    const char *word = t + i;
    if (!strcmp(word, "inf") || !strcmp(word, "nan")) return push_real(r, word[0] == 'i' ? INFINITY : NAN);
    while (t[i] >= '0' && t[i] <= '9') i++, digits++;
    if (t[i] == '.')
        for (i++; t[i] >= '0' && t[i] <= '9'; i++) digits++;
    bool ok = digits > 0;
    if (ok && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (t[i] == '+' || t[i] == '-') i++;
        if (t[i] < '0' || t[i] > '9') ok = false;
        while (t[i] >= '0' && t[i] <= '9') i++;
    }
    if (!ok || i != n) {
        fail(r, "opcode FLOAT: text is not a number");
        return false;
    }
    errno = 0;
    double d = strtod(t, NULL);
    if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL)) {
        fail(r, "opcode FLOAT: out of range");
        return false;
    }
    return push_real(r, d);
}

static int hexval(unsigned char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* STRING: a quoted Python 2 str literal, with its backslash escapes. */
static bool op_string(reader *r)
{
    const unsigned char *s;
    size_t n;
    if (!line(r, &s, &n)) return false;
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"')) {
        fail(r, "opcode STRING: text is not quoted");
        return false;
    }
    s++, n -= 2;
    if (!sbuf_room(r, n + 1)) return false;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\') {
            r->sbuf[o++] = s[i++];
            continue;
        }
        if (i + 1 == n) {
            fail(r, "opcode STRING: trailing backslash");
            return false;
        }
        unsigned char e = s[i + 1];
        i += 2;
        switch (e) {
        case '\\': r->sbuf[o++] = '\\'; break;
        case '\'': r->sbuf[o++] = '\''; break;
        case '"': r->sbuf[o++] = '"'; break;
        case 'a': r->sbuf[o++] = '\a'; break;
        case 'b': r->sbuf[o++] = '\b'; break;
        case 'f': r->sbuf[o++] = '\f'; break;
        case 'n': r->sbuf[o++] = '\n'; break;
        case 'r': r->sbuf[o++] = '\r'; break;
        case 't': r->sbuf[o++] = '\t'; break;
        case 'v': r->sbuf[o++] = '\v'; break;
        case 'x': {
            int hi = i < n ? hexval(s[i]) : -1, lo = i + 1 < n ? hexval(s[i + 1]) : -1;
            if (hi < 0 || lo < 0) {
                fail(r, "opcode STRING: invalid \\x escape");
                return false;
            }
            r->sbuf[o++] = (unsigned char)(hi * 16 + lo);
            i += 2;
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                unsigned v = e - '0';
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++) v = v * 8 + (s[i++] - '0');
                r->sbuf[o++] = (unsigned char)v; /* as Python: \777 keeps the low 8 bits */
            } else {
                /* an unknown escape stays as it is, backslash included */
                r->sbuf[o++] = '\\';
                r->sbuf[o++] = e;
            }
        }
    }
    return push_text(r, r->sbuf, o, K_STR);
}

/* UNICODE: raw-unicode-escape text: bytes are Latin-1 characters, and
 * \uXXXX / \UXXXXXXXX are escapes when the backslash run before the 'u' is
 * odd (an even run is only backslashes). */
static bool op_unicode(reader *r)
{
    const unsigned char *s;
    size_t n;
    if (!line(r, &s, &n)) return false;
    if (!sbuf_room(r, 2 * n + 4)) return false; /* a Latin-1 byte takes at most 2 bytes in UTF-8 */
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\') {
            o += put_utf8(r->sbuf + o, s[i++]);
            continue;
        }
        size_t run = 0;
        while (i < n && s[i] == '\\') i++, run++;
        bool esc = (run & 1) && i < n && (s[i] == 'u' || s[i] == 'U');
        for (size_t k = 0; k < run - (esc ? 1 : 0); k++) r->sbuf[o++] = '\\';
        if (!esc) continue;
        size_t digits = s[i] == 'u' ? 4 : 8;
        i++;
        uint32_t cp = 0;
        for (size_t k = 0; k < digits; k++, i++) {
            int h = i < n ? hexval(s[i]) : -1;
            if (h < 0) {
                fail(r, "opcode UNICODE: truncated \\%c escape", digits == 4 ? 'u' : 'U');
                return false;
            }
            cp = cp * 16 + (uint32_t)h;
        }
        if (cp > 0x10ffff) {
            fail(r, "opcode UNICODE: \\U escape beyond U+10FFFF");
            return false;
        }
        if (cp >= 0xd800 && cp <= 0xdfff) {
            fail(r, "opcode UNICODE: surrogate U+%04X is not valid UTF-8", (unsigned)cp);
            return false;
        }
        o += put_utf8(r->sbuf + o, cp);
    }
    return push_text(r, r->sbuf, o, K_STR);
}

static bool op_long_bytes(reader *r, int lenbytes)
{
    const unsigned char *b;
    if (!take(r, (size_t)lenbytes, &b)) return false;
    uint64_t n = le(b, lenbytes);
    if (lenbytes == 4 && (n & 0x80000000u)) {
        fail(r, "opcode LONG4: negative length");
        return false;
    }
    if (n > 8) {
        fail(r, "opcode %s: integer of %llu bytes (at most 8, int64)", r->op->name, (unsigned long long)n);
        return false;
    }
    if (!take(r, (size_t)n, &b)) return false;
    uint64_t u = le(b, (int)n);
    if (n && n < 8 && (b[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    return push_int(r, from_u64(u));
}

/* ---- the memo ---- */

static bool memo_index(reader *r, uint64_t idx)
{
    if (idx < PICKLE_MAX_MEMO) return true;
    fail(r, "opcode %s: memo index %llu (at most %d entries)", r->op->name, (unsigned long long)idx,
         PICKLE_MAX_MEMO);
    return false;
}

static bool memo_put(reader *r, uint64_t idx)
{
    if (!need(r, 1) || !memo_index(r, idx)) return false;
    size_t old = r->capmemo;
    if (!grow(r, (void **)&r->memo, &r->capmemo, (size_t)idx + 1, sizeof(*r->memo))) return false;
    if (r->capmemo > old) memset(r->memo + old, 0, (r->capmemo - old) * sizeof(*r->memo));
    if (!r->memo[idx]) r->nmemo++;
    r->memo[idx] = r->stack[r->nstack - 1] + 1;
    return true;
}

static bool memo_get(reader *r, uint64_t idx)
{
    if (!memo_index(r, idx)) return false;
    if (idx >= r->capmemo || !r->memo[idx]) {
        fail(r, "opcode %s: memo index %llu is empty", r->op->name, (unsigned long long)idx);
        return false;
    }
    return push(r, r->memo[idx] - 1);
}

/* PUT / GET: a decimal index on a line. */
static bool text_index(reader *r, uint64_t *idx)
{
    const unsigned char *s;
    size_t n;
    if (!line(r, &s, &n)) return false;
    json_int_t v;
    if (n == 0 || s[0] == '-' || s[0] == '+' || !parse_int(r, s, n, &v)) {
        fail(r, "opcode %s: memo index is not a decimal number", r->op->name);
        return false;
    }
    *idx = (uint64_t)v;
    return true;
}

/* ---- the opcodes ---- */

static bool step(reader *r, bool *stop)
{
    r->op_at = (size_t)(r->p - r->start);
    unsigned char c = *r->p++;
    r->op = op_lookup(c);
    if (!r->op) {
        fail(r, "unknown opcode 0x%02x", c);
        return false;
    }
    if (r->op->refused) {
        char shown[8];
        if (c > 0x20 && c < 0x7f) snprintf(shown, sizeof(shown), "%c", c);
        else snprintf(shown, sizeof(shown), "0x%02x", c);
        fail(r, "opcode %s (%s) refused: %s", r->op->name, shown, r->op->refused);
        return false;
    }
    const unsigned char *b, *s;
    size_t n, base;
    switch (c) {
    case OP_PROTO:
        if (!take(r, 1, &b)) return false;
        if (b[0] > 5) {
            fail(r, "unsupported pickle protocol %u", b[0]);
            return false;
        }
        return true;
    case OP_FRAME:
        if (!take(r, 8, &b)) return false;
        if (le(b, 8) > (uint64_t)(r->end - r->p)) {
            fail(r, "opcode FRAME: frame of %llu bytes, but only %zu bytes left", (unsigned long long)le(b, 8),
                 (size_t)(r->end - r->p));
            return false;
        }
        return true;
    case OP_STOP:
        if (r->nmarks) {
            fail(r, "opcode STOP with an open MARK");
            return false;
        }
        if (r->nstack != 1) {
            fail(r, "opcode STOP with %zu values on the stack (needs exactly 1)", r->nstack);
            return false;
        }
        *stop = true;
        return true;
    case OP_MARK:
        if (r->nmarks >= PICKLE_MAX_DEPTH) {
            fail(r, "more than %d open MARKs (nesting deeper than %d)", PICKLE_MAX_DEPTH, PICKLE_MAX_DEPTH);
            return false;
        }
        r->marks[r->nmarks++] = r->nstack;
        return true;
    case OP_POP:
        /* as Python: POP right after a MARK drops the MARK */
        if (r->nmarks && r->marks[r->nmarks - 1] == r->nstack) {
            r->nmarks--;
            return true;
        }
        if (!need(r, 1)) return false;
        r->nstack--;
        return true;
    case OP_POP_MARK:
        if (!pop_mark(r, &base)) return false;
        r->nstack = base;
        return true;
    case OP_DUP: return need(r, 1) && push(r, r->stack[r->nstack - 1]);
    case OP_NONE: return push_new(r, json_null(), K_OTHER, 0);
    case OP_NEWTRUE: return push_new(r, json_true(), K_OTHER, 0);
    case OP_NEWFALSE: return push_new(r, json_false(), K_OTHER, 0);
    case OP_INT: {
        json_int_t i;
        if (!line(r, &s, &n)) return false;
        if (n == 2 && s[0] == '0' && (s[1] == '0' || s[1] == '1'))
            return push_new(r, json_boolean(s[1] == '1'), K_OTHER, 0);
        return parse_int(r, s, n, &i) && push_int(r, i);
    }
    case OP_LONG: {
        json_int_t i;
        if (!line(r, &s, &n)) return false;
        if (n && s[n - 1] == 'L') n--;
        return parse_int(r, s, n, &i) && push_int(r, i);
    }
    case OP_BININT: {
        if (!take(r, 4, &b)) return false;
        json_int_t i = (json_int_t)le(b, 4);
        return push_int(r, i >= 0x80000000LL ? i - 0x100000000LL : i); /* signed 32 bits */
    }
    case OP_BININT1: return take(r, 1, &b) && push_int(r, b[0]);
    case OP_BININT2: return take(r, 2, &b) && push_int(r, (json_int_t)le(b, 2));
    case OP_LONG1: return op_long_bytes(r, 1);
    case OP_LONG4: return op_long_bytes(r, 4);
    case OP_FLOAT: return op_float_text(r);
    case OP_BINFLOAT: {
        if (!take(r, 8, &b)) return false;
        uint64_t u = 0;
        for (int k = 0; k < 8; k++) u = (u << 8) | b[k];
        double d;
        memcpy(&d, &u, sizeof(d));
        return push_real(r, d);
    }
    case OP_STRING: return op_string(r);
    case OP_BINSTRING: return counted(r, 4, &s, &n) && push_text(r, s, n, K_STR);
    case OP_SHORT_BINSTRING: return counted(r, 1, &s, &n) && push_text(r, s, n, K_STR);
    case OP_UNICODE: return op_unicode(r);
    case OP_BINUNICODE: return counted(r, 4, &s, &n) && push_text(r, s, n, K_STR);
    case OP_SHORT_BINUNICODE: return counted(r, 1, &s, &n) && push_text(r, s, n, K_STR);
    case OP_BINUNICODE8: return counted(r, 8, &s, &n) && push_text(r, s, n, K_STR);
    case OP_BINBYTES: return counted(r, 4, &s, &n) && push_text(r, s, n, K_BYTES);
    case OP_SHORT_BINBYTES: return counted(r, 1, &s, &n) && push_text(r, s, n, K_BYTES);
    case OP_BINBYTES8:
    case OP_BYTEARRAY8: return counted(r, 8, &s, &n) && push_text(r, s, n, K_BYTES);
    case OP_EMPTY_LIST: return push_new(r, json_array(), K_LIST, 0);
    case OP_EMPTY_TUPLE: return push_new(r, json_array(), K_TUPLE, 0);
    case OP_EMPTY_DICT: return push_new(r, json_object(), K_DICT, 0);
    case OP_LIST: return pop_mark(r, &base) && make_seq(r, base, K_LIST);
    case OP_TUPLE: return pop_mark(r, &base) && make_seq(r, base, K_TUPLE);
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3: {
        size_t k = (size_t)(c - OP_TUPLE1 + 1);
        return need(r, k) && make_seq(r, r->nstack - k, K_TUPLE);
    }
    case OP_DICT: {
        if (!pop_mark(r, &base)) return false;
        if ((r->nstack - base) % 2) {
            fail(r, "opcode DICT: odd number of items");
            return false;
        }
        uint32_t di;
        if (!new_val(r, json_object(), K_DICT, 0, &di)) return false;
        for (size_t i = base; i < r->nstack; i += 2)
            if (!set_item(r, di, r->stack[i], r->stack[i + 1])) return false;
        r->nstack = base;
        return push(r, di);
    }
    case OP_APPEND: {
        if (!need(r, 2)) return false;
        val *l = top(r, 1);
        if (l->kind != K_LIST) {
            fail(r, "opcode APPEND on a %s (only a list takes items)", kind_name(l));
            return false;
        }
        if (!add_item(r, r->stack[r->nstack - 2], r->stack[r->nstack - 1])) return false;
        r->nstack--;
        return true;
    }
    case OP_APPENDS: {
        if (!pop_mark(r, &base)) return false;
        if (base == 0 || base - 1 < fence(r)) {
            fail(r, "opcode APPENDS: no list before the MARK");
            return false;
        }
        uint32_t li = r->stack[base - 1];
        if (r->vals[li].kind != K_LIST) {
            fail(r, "opcode APPENDS on a %s (only a list takes items)", kind_name(&r->vals[li]));
            return false;
        }
        for (size_t i = base; i < r->nstack; i++)
            if (!add_item(r, li, r->stack[i])) return false;
        r->nstack = base;
        return true;
    }
    case OP_SETITEM:
        if (!need(r, 3) || !set_item(r, r->stack[r->nstack - 3], r->stack[r->nstack - 2], r->stack[r->nstack - 1]))
            return false;
        r->nstack -= 2;
        return true;
    case OP_SETITEMS: {
        if (!pop_mark(r, &base)) return false;
        if (base == 0 || base - 1 < fence(r)) {
            fail(r, "opcode SETITEMS: no dict before the MARK");
            return false;
        }
        if ((r->nstack - base) % 2) {
            fail(r, "opcode SETITEMS: odd number of items");
            return false;
        }
        uint32_t di = r->stack[base - 1];
        for (size_t i = base; i < r->nstack; i += 2)
            if (!set_item(r, di, r->stack[i], r->stack[i + 1])) return false;
        r->nstack = base;
        return true;
    }
    case OP_PUT: {
        uint64_t idx;
        return text_index(r, &idx) && memo_put(r, idx);
    }
    case OP_BINPUT: return take(r, 1, &b) && memo_put(r, b[0]);
    case OP_LONG_BINPUT: return take(r, 4, &b) && memo_put(r, le(b, 4));
    case OP_MEMOIZE: return memo_put(r, r->nmemo);
    case OP_GET: {
        uint64_t idx;
        return text_index(r, &idx) && memo_get(r, idx);
    }
    case OP_BINGET: return take(r, 1, &b) && memo_get(r, b[0]);
    case OP_LONG_BINGET: return take(r, 4, &b) && memo_get(r, le(b, 4));
    }
    fail(r, "opcode %s not handled", r->op->name); /* not reached: every accepted opcode has a case */
    return false;
}

json_t *pickle_loads(const unsigned char *buf, size_t len, char err[160])
{
    err[0] = '\0';
    if (!buf || !len) {
        snprintf(err, 160, "empty input");
        return NULL;
    }
    reader r = {.start = buf, .p = buf, .end = buf + len, .err = err};
    r.max_bytes = len > PICKLE_MAX_EXPANDED_BYTES ? len : PICKLE_MAX_EXPANDED_BYTES;
    bool stop = false, ok = true;
    while (ok && !stop) {
        if (r.p == r.end) {
            r.op_at = len;
            fail(&r, "pickle ends without STOP");
            ok = false;
            break;
        }
        ok = step(&r, &stop);
    }
    if (ok && r.p != r.end) {
        r.op_at = (size_t)(r.p - r.start);
        fail(&r, "%zu byte%s after STOP", (size_t)(r.end - r.p), r.end - r.p == 1 ? "" : "s");
        ok = false;
    }
    json_t *v = ok ? json_incref(r.vals[r.stack[0]].v) : NULL;
    if (!ok && !err[0]) snprintf(err, 160, "refused");
    for (size_t i = 0; i < r.nvals; i++) json_decref(r.vals[i].v);
    free(r.vals);
    free(r.stack);
    free(r.memo);
    free(r.sbuf);
    return v;
}
