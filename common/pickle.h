/* pickle — Python pickles of plain values, for the RQ ("Redis Queue" 1.13)
 * legacy backend, whose default serializer is pickle.
 *
 * The writer turns a jansson value into a protocol 2 pickle that Python 3
 * loads to the same plain value (the job data the proxy enqueues).
 *
 * The reader takes pickles written by code the proxy does not control (job
 * results) and accepts only plain values: None, bool, int (int64), float
 * (finite), str, bytes and bytearray (as strings, when valid UTF-8), list,
 * tuple and dict with str keys.  Every opcode that imports, calls or builds
 * an object is refused, and so is everything it does not know; the input is
 * never trusted to be well formed and every limit below is checked.
 *
 *   char err[160];
 *   json_t *v = pickle_loads(buf, len, err);   // NULL: err says why
 *
 * What it refuses on purpose although Python would load it:
 *   - a container changed after it was put into another one (Python's own
 *     pickler never writes that for plain values: every container is
 *     complete before anything refers to it, except in a recursive
 *     structure, which is refused anyway);
 *   - STOP with an open MARK or with more than one value on the stack
 *     (Python ignores the rest);
 *   - INT, LONG, PUT and GET text other than decimal digits (with a sign
 *     for the numbers); FLOAT text longer than 63 bytes;
 *   - LONG1/LONG4 wider than 8 bytes, even when the value would fit;
 *   - memo indexes of PICKLE_MAX_MEMO and above;
 *   - dict keys with a NUL byte (jansson's parser refuses them too, and a
 *     C-string API would see a shorter key).
 * A Python 2 str (STRING, BINSTRING, SHORT_BINSTRING) is a str, as Python 3
 * loads it: it may be a dict key.
 * Python 3 writes bytes in protocols 0-2 and bytearray in 0-4 as a call
 * (_codecs.encode, builtins.bytearray): those pickles are refused too. */
#ifndef TURNOUT_PICKLE_H
#define TURNOUT_PICKLE_H

#include <stddef.h>

typedef struct json_t json_t;

/* Nesting: a list, tuple or dict of scalars is depth 1. */
#define PICKLE_MAX_DEPTH 64
/* Memo indexes 0 .. PICKLE_MAX_MEMO - 1. */
#define PICKLE_MAX_MEMO 100000
/* Values in the decoded tree (a shared value counted each time it appears,
 * dict keys included); also the most values made or on the stack. */
#define PICKLE_MAX_VALUES 1000000
/* String bytes in the decoded tree, shared strings counted each time they
 * appear, unless the input itself is longer. */
#define PICKLE_MAX_EXPANDED_BYTES (64u << 20)

/* Encodes a jansson value as a pickle (protocol 2) that Python 3 loads to
 * the same plain value: object -> dict (str keys), array -> list, string ->
 * str, integer -> int, real -> float, true/false -> bool, null -> None.
 * Returns a malloc'd buffer and its length, or NULL: out of memory, nesting
 * deeper than PICKLE_MAX_DEPTH, a non-finite real or a string that is not
 * valid UTF-8 (both possible only for values made with jansson's _nocheck
 * calls or by changing a value in place). */
unsigned char *pickle_dumps(const json_t *v, size_t *len);

/* The same, but the top-level value (which must be an array) is written as
 * a tuple, not a list (RQ's job data is the tuple (func_name, instance,
 * args, kwargs)).  Nested arrays stay lists. */
unsigned char *pickle_dumps_tuple(const json_t *array, size_t *len);

/* Decodes a pickle (protocols 0-5, as Python 3.11 writes plain values)
 * into a new value: dict -> object, list and tuple -> array, str ->
 * string, bytes/bytearray -> string when valid UTF-8, int -> integer,
 * float -> real, bool -> true/false, None -> null.  Reads buf[0..len)
 * only; the pickle must end with its STOP at buf[len - 1].  NULL with err
 * filled (what, and at which byte) when it is refused. */
json_t *pickle_loads(const unsigned char *buf, size_t len, char err[160]);

#endif
