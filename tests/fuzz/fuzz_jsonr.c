/* fuzz_jsonr — jsonr (the worker's fast JSON reader) against jansson's own
 * parser on any input: both must accept or both refuse, and what they
 * accept must be the same tree (type by type: an integer is not a real).
 *
 * One known difference: jansson's lexer reads one byte past a number or a
 * literal and puts it back into a NUL-terminated buffer, so a NUL byte
 * there is dropped ("null\0" and "1\0" parse); jsonr refuses them (the
 * input is not JSON).  Such an input is checked again without that byte. */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool agree(const uint8_t *data, size_t size, char err[160], json_error_t *jerr, json_t **a, json_t **b)
{
    *a = jsonr_loadb((const char *)data, size, err);
    *b = json_loadb((const char *)data, size, JSON_DECODE_ANY, jerr);
    return (*a == NULL) == (*b == NULL) && (!*a || (json_equal(*a, *b) && json_typeof(*a) == json_typeof(*b)));
}

/* jansson accepted and jsonr refused: is it the dropped NUL (see above)? */
static bool dropped_nul(const uint8_t *data, size_t size)
{
    for (size_t i = 1; i < size; i++) {
        if (data[i] != 0) continue;
        if (!isalnum(data[i - 1]) && data[i - 1] != '.') return false;
        uint8_t *copy = malloc(size);
        if (!copy) return false;
        memcpy(copy, data, i);
        memcpy(copy + i, data + i + 1, size - i - 1);
        char err[160];
        json_error_t jerr;
        json_t *a, *b;
        bool ok = agree(copy, size - 1, err, &jerr, &a, &b) && a;
        json_decref(a);
        json_decref(b);
        free(copy);
        return ok;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    json_error_t jerr;
    json_t *a, *b;
    if (!agree(data, size, err, &jerr, &a, &b) && !(!a && b && dropped_nul(data, size))) {
        fprintf(stderr, "fuzz_jsonr: jsonr %s, jansson %s\n", a ? "accepts" : err, b ? "accepts" : jerr.text);
        __builtin_trap();
    }
    if (!a && !err[0]) {
        fprintf(stderr, "fuzz_jsonr: refused without a reason\n");
        __builtin_trap();
    }
    json_decref(a);
    json_decref(b);
    return 0;
}
