/* jsonw — a small JSON writer for the fixed shapes of hot paths (the
 * Celery envelope, the route record, the submission reply), where building
 * a jansson tree and dumping it cost more than the rest of the request.
 *
 *   char stack[512];
 *   jsonw w;
 *   jw_init(&w, stack, sizeof(stack));
 *   jw_obj_open(&w);
 *   jw_key(&w, "eval_id"); jw_cstring(&w, id);
 *   jw_key(&w, "retries"); jw_int(&w, 0);
 *   jw_obj_close(&w);
 *   char *text = jw_detach(&w, &len);   // new string, or NULL on OOM
 *
 * The output is what jansson's json_dumps(JSON_COMPACT) writes for the same
 * values: strings escape '"', '\\' and every control character (\b \f \n \r
 * \t, else \u00XX with upper-case hex), pass valid UTF-8 (and 0x7f) through,
 * and replace each byte of invalid UTF-8 by U+FFFD, so the text is always
 * valid JSON.  (jansson refuses invalid UTF-8 at parse time, so strings that
 * come from a parsed body never take that branch.)  Reals are written as
 * jansson does (%.17g, always with a '.' or an exponent); non-finite reals,
 * which JSON cannot hold, as null.
 *
 * Commas are placed automatically between the values of a container and
 * between key/value pairs.  Errors (out of memory) are sticky: the calls
 * after one do nothing and jw_failed() says so.  The jw_put* calls append
 * raw bytes, for text that is not JSON (or JSON written by hand). */
#ifndef TURNOUT_JSONW_H
#define TURNOUT_JSONW_H

#include <stdbool.h>
#include <stddef.h>

typedef struct json_t json_t;

typedef struct jsonw {
    char *buf;     /* the caller's storage until it overflows, then the heap */
    size_t len, cap;
    bool heap;     /* buf was allocated here */
    bool oom;
    bool comma;    /* the next value or key in this container needs a ',' */
} jsonw;

/* storage (may be NULL, cap 0) is used first; it must outlive the writer. */
void jw_init(jsonw *w, char *storage, size_t cap);
/* Frees what the writer allocated (not the caller's storage). */
void jw_free(jsonw *w);
/* Empties the writer, keeping its buffer and the error state cleared. */
void jw_reset(jsonw *w);

static inline bool jw_failed(const jsonw *w) { return w->oom; }
/* The text so far, NUL-terminated (borrowed; valid until the next write);
 * "" after an error. */
const char *jw_text(const jsonw *w);
static inline size_t jw_len(const jsonw *w) { return w->oom ? 0 : w->len; }
/* The text as a new string the caller frees with free(); the writer is left
 * empty (jw_free still needed only if it is reused).  NULL on OOM. */
char *jw_detach(jsonw *w, size_t *len);

/* Room for n more bytes at the end: a pointer to write them through, then
 * jw_commit(w, used).  NULL on OOM. */
char *jw_reserve(jsonw *w, size_t n);
static inline void jw_commit(jsonw *w, size_t n) { if (!w->oom) w->len += n; }

/* Raw bytes (no escaping, no commas). */
void jw_put(jsonw *w, const char *s, size_t n);
void jw_putc(jsonw *w, char c);
void jw_puts(jsonw *w, const char *s);
void jw_put_int(jsonw *w, long long v);

/* Structure. */
void jw_obj_open(jsonw *w);
void jw_obj_close(jsonw *w);
void jw_arr_open(jsonw *w);
void jw_arr_close(jsonw *w);
/* An object key (escaped like any string); the next call writes its value. */
void jw_key(jsonw *w, const char *key);
/* The same for a key that needs no escaping (no control character, '"',
 * '\\' or non-ASCII byte), copied as it is: jw_lit_key(w, "eval_id"). */
void jw_key_plain(jsonw *w, const char *key, size_t n);
#define jw_lit_key(w, lit) jw_key_plain((w), "" lit, sizeof(lit) - 1)

/* Values. */
void jw_string(jsonw *w, const char *s, size_t n);
void jw_cstring(jsonw *w, const char *s); /* NULL writes null */
#define jw_lit_string(w, lit) jw_string((w), "" lit, sizeof(lit) - 1)
void jw_int(jsonw *w, long long v);
void jw_real(jsonw *w, double v);
void jw_bool(jsonw *w, bool v);
void jw_null(jsonw *w);
/* A string holding the standard base64 (RFC 4648, padded) of data[0..n). */
void jw_base64(jsonw *w, const void *data, size_t n);
/* A value already serialized as JSON, spliced in as it is. */
void jw_raw_value(jsonw *w, const char *json, size_t n);
/* Any jansson value (borrowed), written as json_dumps(JSON_COMPACT) would;
 * NULL writes null. */
void jw_value(jsonw *w, const json_t *v);

/* The body of a JSON string without the quotes: s escaped as above. */
void jw_escaped(jsonw *w, const char *s, size_t n);

#endif
