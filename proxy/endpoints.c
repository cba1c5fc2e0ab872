#include "endpoints.h"

#include <stdio.h>
#include <string.h>

/* How well the '*' pattern (its '*' at `star`) fits path[n]: -1 not at
 * all, else its number of literal characters. */
static long long score(const char *pattern, const char *star, const char *path, size_t n)
{
    size_t pre = (size_t)(star - pattern), suf = strlen(star + 1);
    if (n < pre + suf + 1) return -1; /* '*' stands for at least one character */
    if (strncmp(path, pattern, pre) != 0 || strcmp(path + n - suf, star + 1) != 0) return -1;
    return (long long)(pre + suf);
}

const endpoint *endpoints_match(const endpoint *table, size_t n, const char *path)
{
    /* A path equal to a pattern is that pattern's, even a '*' one (no
     * other pattern can weigh more for it), so the common case is one pass
     * of strcmp, with the busiest endpoint first in the table. */
    for (size_t i = 0; i < n; i++)
        if (strcmp(table[i].pattern, path) == 0) return &table[i];
    const endpoint *best = NULL;
    long long best_score = -1;
    size_t len = strlen(path);
    for (size_t i = 0; i < n; i++) {
        const char *star = strchr(table[i].pattern, '*');
        long long s = star ? score(table[i].pattern, star, path, len) : -1;
        if (s > best_score) {
            best = &table[i];
            best_score = s;
        }
    }
    return best;
}

/* Could one path match both '*' patterns a and b? */
static bool overlap(const char *a, const char *b)
{
    const char *sa = strchr(a, '*'), *sb = strchr(b, '*');
    size_t pa = (size_t)(sa - a), pb = (size_t)(sb - b);
    size_t p = pa < pb ? pa : pb;
    if (strncmp(a, b, p) != 0) return false; /* the prefixes disagree */
    const char *xa = sa + 1, *xb = sb + 1;
    size_t la = strlen(xa), lb = strlen(xb), l = la < lb ? la : lb;
    return strcmp(xa + la - l, xb + lb - l) == 0; /* the suffixes agree where both have one */
}

int endpoints_check(const endpoint *table, size_t n, char err[256])
{
    for (size_t i = 0; i < n; i++) {
        const char *a = table[i].pattern;
        const char *star = a ? strchr(a, '*') : NULL;
        if (!a || !*a || a[0] != '/' || (star && strchr(star + 1, '*')) || !table[i].handler) {
            snprintf(err, 256, "endpoint %zu: pattern \"%s\" must start with '/', hold at most one '*' and have "
                     "a handler", i, a ? a : "(null)");
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            const char *b = table[j].pattern;
            if (strcmp(a, b) == 0) {
                snprintf(err, 256, "endpoint \"%s\" is in the table twice", a);
                return -1;
            }
            if (star && strchr(b, '*') && strlen(a) == strlen(b) && overlap(a, b)) {
                snprintf(err, 256, "endpoints \"%s\" and \"%s\" can match one path with the same weight", b, a);
                return -1;
            }
        }
    }
    return 0;
}
