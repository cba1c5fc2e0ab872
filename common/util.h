/* util — small helpers shared by every binary: clocks, ids, JSON replies. */
#ifndef TURNOUT_UTIL_H
#define TURNOUT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evhttp_request;
struct evbuffer;

#ifndef TURNOUT_VERSION
#define TURNOUT_VERSION "0.0.0-dev"
#endif

double util_now(void);       /* wall clock, seconds since the epoch */
double util_monotonic(void); /* monotonic seconds */

/* Fills buf[n] from the kernel's random source (getrandom); -1 on failure. */
int util_random(void *buf, size_t n) __attribute__((warn_unused_result));

/* uuid4 text, 36 characters + NUL. */
void util_uuid4(char out[37]);

/* Decimal text of v (as "%lld"); returns the length. */
size_t util_format_ll(long long v, char out[24]);

/* v with `decimals` digits after the point, exactly as snprintf("%.*f")
 * writes it (round half to even on the exact value); Unix times with up to
 * 7 decimals, written on every request, without printf.  Returns the
 * length (text longer than 31 bytes is cut). */
size_t util_format_fixed(double v, int decimals, char out[32]);

/* ISO-8601 UTC with microseconds, no offset: 2026-11-22T08:42:30.022342 */
void util_iso8601(double t, char out[32]);

/* Sends {"error": code, "message": message} with `status`; adds Retry-After
 * when retry_after_s > 0.  Ends the request (exactly one reply). */
void util_reply_error(struct evhttp_request *req, int status, const char *code,
                      const char *message, int retry_after_s);

/* Now as an HTTP Date header value ("Sun, 06 Nov 1994 08:49:37 GMT"),
 * borrowed until the next call; NULL if the clock cannot be formatted. */
const char *util_http_date(void);

/* Sends a JSON body (already serialized) with `status`; ends the request. */
void util_reply_json(struct evhttp_request *req, int status, const char *json,
                     size_t len);

/* UTF-8-safe quoting.  Every message that quotes input (a field, a task
 * name, a header) cuts it at a character boundary, never inside one: a cut
 * character is invalid UTF-8, which JSON cannot carry and jansson refuses.
 *
 * util_utf8_prefix: how many bytes of the NUL-terminated s to show when at
 * most max may be shown — strnlen(s, max) backed up to the start of a
 * character cut by the limit.  For printf, UTF8_CUT gives the precision and
 * the string of a "%.*s":  snprintf(m, n, "task \"%.*s\"", UTF8_CUT(name, 100)).
 * Reads at most max + 1 bytes of s. */
size_t util_utf8_prefix(const char *s, size_t max);
#define UTF8_CUT(s, max) (int)util_utf8_prefix((s), (max)), (s)
/* len with an incomplete character at the end of s[0..len) removed. */
size_t util_utf8_trim_end(const char *s, size_t len);
/* Length (1..4) of the valid UTF-8 sequence at s, before end; 0 when it is
 * not one (overlong, a surrogate, beyond U+10FFFF, cut short). */
size_t util_utf8_seq_len(const unsigned char *s, const unsigned char *end);
/* snprintf that, when the text does not fit, ends it at a character
 * boundary.  Returns the length written (not the length wanted). */
size_t util_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* 1..max characters of [A-Za-z0-9_.:-] (eval ids, task ids). */
bool util_valid_id(const char *id, size_t len, size_t max);

/* Decodes standard base64 (RFC 4648 alphabet) in[0..n) into out, which must
 * hold n / 4 * 3 bytes, by the rules of OpenSSL's EVP_DecodeBlock (which the
 * Celery decoders used before): spaces and tabs before the text and, while
 * more than 3 characters remain, spaces, tabs, CR, LF and '-' after it are
 * ignored; what remains must be whole groups of 4 characters of the
 * alphabet or '='.  Each group gives 3 bytes and '=' decodes as zero bits,
 * so the caller subtracts the padding.  Returns the number of bytes
 * written (3 per group), or -1 when the text is not base64. */
long util_base64_decode(unsigned char *out, const char *in, size_t n)
    __attribute__((warn_unused_result));

/* Standard reason phrase for an HTTP status. */
const char *util_reason(int status);

/* The next item of a comma-separated list at *cursor (advanced past
 * it), blanks around it cut: *item, *len.  false at the end of the list. */
bool util_list_item(const char **cursor, const char **item, size_t *len);
/* Is name[0..n) an item of the list, compared case-insensitively? */
bool util_list_has(const char *list, const char *name, size_t n);

#endif
