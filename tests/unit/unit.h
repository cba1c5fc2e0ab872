/* unit — a tiny test harness: checks count, failures print file:line, and
 * the run ends with the line "N passed, N failed". */
#ifndef TURNOUT_UNIT_H
#define TURNOUT_UNIT_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int unit_passed, unit_failed;
static const char *unit_current = "";

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) unit_passed++;                                                       \
        else {                                                                         \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__,       \
                    unit_current, #cond);                                              \
        }                                                                              \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                             \
    do {                                                                               \
        long long a_ = (long long)(a), b_ = (long long)(b);                            \
        if (a_ == b_) unit_passed++;                                                   \
        else {                                                                         \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: %s: %s == %lld, expected %lld\n", __FILE__,        \
                    __LINE__, unit_current, #a, a_, b_);                               \
        }                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                \
    do {                                                                               \
        const char *a_ = (a), *b_ = (b);                                               \
        if (a_ && b_ && strcmp(a_, b_) == 0) unit_passed++;                            \
        else {                                                                         \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: %s: %s == \"%s\", expected \"%s\"\n", __FILE__,    \
                    __LINE__, unit_current, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
        }                                                                              \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                    \
    do {                                                                               \
        const char *h_ = (hay), *n_ = (needle);                                        \
        if (h_ && strstr(h_, n_)) unit_passed++;                                       \
        else {                                                                         \
            unit_failed++;                                                             \
            fprintf(stderr, "%s:%d: %s: \"%s\" does not contain \"%s\"\n", __FILE__,   \
                    __LINE__, unit_current, h_ ? h_ : "(null)", n_);                   \
        }                                                                              \
    } while (0)

#define RUN(test)                                                                      \
    do {                                                                               \
        unit_current = #test;                                                          \
        test();                                                                        \
    } while (0)

#define UNIT_END()                                                                     \
    do {                                                                               \
        printf("%s: %d passed, %d failed\n", __FILE__, unit_passed, unit_failed);      \
        return unit_failed ? 1 : 0;                                                    \
    } while (0)

#endif
