/* jsafe — jansson strings from bytes that may not be UTF-8 (a Redis value,
 * a decoded query parameter, a message cut by a buffer).  json_stringn
 * refuses invalid UTF-8 by returning NULL, which the callers would take for
 * out of memory; here each invalid byte becomes U+FFFD instead, as jsonw
 * writes it, and NUL bytes are kept (JSON carries them as \u0000). */
#ifndef TURNOUT_JSAFE_H
#define TURNOUT_JSAFE_H

#include <stddef.h>

typedef struct json_t json_t;

/* A new JSON string of s[0..n) (NULL s: JSON null); NULL only when out of
 * memory. */
json_t *jsafe_stringn(const char *s, size_t n);
/* The same for a NUL-terminated s; NULL s gives JSON null. */
json_t *jsafe_string(const char *s);

#endif
