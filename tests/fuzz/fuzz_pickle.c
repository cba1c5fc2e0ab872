/* fuzz_pickle — any bytes through pickle_loads, the reader of RQ job
 * results (pickles written by code the proxy does not control).
 *
 * A refusal must come with a reason.  An accepted value must be one the
 * writer takes (nesting within the limit, strings valid UTF-8, reals
 * finite, keys without NUL), and what the writer makes of it must load
 * again to an equal value, as a list and, for an array, as a tuple. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "pickle.h"

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz_pickle: invariant failed: %s (line %d)\n", #cond, __LINE__);   \
            __builtin_trap();                                                                    \
        }                                                                                        \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The writer's output loads again to the same value. */
static void check_again(const json_t *v, bool tuple)
{
    size_t len = 0;
    unsigned char *p = tuple ? pickle_dumps_tuple(v, &len) : pickle_dumps(v, &len);
    CHECK(p != NULL && len >= 4);
    char err[160];
    json_t *back = pickle_loads(p, len, err);
    if (!back) fprintf(stderr, "fuzz_pickle: the writer's pickle is refused: %s\n", err);
    CHECK(back != NULL);
    CHECK(json_equal(v, back));
    json_decref(back);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    memset(err, 'x', sizeof(err));
    json_t *v = pickle_loads(data, size, err);
    CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    if (!v) {
        CHECK(err[0] != '\0');
        return 0;
    }
    CHECK(err[0] == '\0');
    check_again(v, false);
    if (json_is_array(v)) check_again(v, true);
    json_decref(v);
    return 0;
}
