/* fuzz_config — the configuration parser: cfg_parse / cfg_load over the
 * proxy's table, pconfig_load with its cross-field checks (TLS pair, Redis
 * URLs, ALLOWED_LANGUAGES, ROLLOUT_STEPS), the KEY=value file read on
 * SIGHUP (cfg_envfile_read + cfg_envfile_lookup), and the value parsers
 * the binaries call on their own (cfg_split_addr, rclient_parse_url).
 *
 * Every input is used twice:
 *   A. split on '\n', line i is the value of pconfig_table[i] (in table
 *      order: PROXY_LISTEN, CELERY_ENABLED, ...); a line starting with a
 *      NUL byte, and every variable past the last line, is unset;
 *   B. the whole input as the TURNOUT_ENV_FILE text.
 * Error buffers are heap blocks of the exact size given, some of them tiny,
 * so a write past the end is caught, not absorbed by stack slack. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cfg.h"
#include "pconfig.h"
#include "rclient.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_config: invariant failed: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                                  \
        }                                                                                      \
    } while (0)

#define ERRS_BIG 65536

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The env file lives in one memfd for the whole run (rewritten per input),
 * so nothing touches the disk and nothing accumulates. */
static int envfd = -1;
static char envpath[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* cfg_envfile_lookup falls back to the process environment: make that
     * empty for our names so a run does not depend on the caller's shell. */
    for (size_t i = 0; i < pconfig_count; i++) unsetenv(pconfig_table[i].name);
    envfd = memfd_create("fuzz_config_env", 0);
    if (envfd < 0) {
        fprintf(stderr, "fuzz_config: memfd_create: %s\n", strerror(errno));
        abort();
    }
    snprintf(envpath, sizeof(envpath), "/proc/self/fd/%d", envfd);
    return 0;
}

typedef struct lines {
    const char *value[64]; /* by table index; NULL = unset */
} lines;

static const char *lines_lookup(const char *name, void *ud)
{
    const lines *l = ud;
    for (size_t i = 0; i < pconfig_count && i < 64; i++)
        if (strcmp(pconfig_table[i].name, name) == 0) return l->value[i];
    return NULL;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static bool in_choices(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    for (const char *p = choices; p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, v, n) == 0) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

/* cfg_parse's contract, checked field by field over any table: every field
 * holds a value its option allows (the given one or the default). */
static void check_fields(const cfg_option *table, size_t n, const void *settings)
{
    for (size_t i = 0; i < n; i++) {
        const cfg_option *o = &table[i];
        const char *field = (const char *)settings + o->offset;
        switch (o->type) {
        case CFG_BOOL: {
            unsigned char b;
            memcpy(&b, field, 1);
            CHECK(b == 0 || b == 1);
            break;
        }
        case CFG_INT: {
            long long x;
            memcpy(&x, field, sizeof(x));
            CHECK((double)x >= o->min && (double)x <= o->max);
            break;
        }
        case CFG_FRACTION: {
            double x;
            memcpy(&x, field, sizeof(x));
            CHECK(isfinite(x) && x >= o->min && x <= o->max);
            break;
        }
        default: {
            char *s;
            memcpy(&s, field, sizeof(s));
            CHECK(s != NULL);
            if (o->type == CFG_STRING && o->max > 0) CHECK(strlen(s) <= (size_t)o->max);
            if (o->type == CFG_ENUM) CHECK(in_choices(o->choices, s));
            break;
        }
        }
    }
}

static void check_strings_freed(const cfg_option *table, size_t n, const void *settings)
{
    for (size_t i = 0; i < n; i++) {
        if (table[i].type == CFG_BOOL || table[i].type == CFG_INT || table[i].type == CFG_FRACTION) continue;
        char *s;
        memcpy(&s, (const char *)settings + table[i].offset, sizeof(s));
        CHECK(s == NULL);
    }
}

/* One configuration, through every entry point that reads it. */
static void run_config(cfg_lookup_fn lookup, void *ud, size_t tiny)
{
    char *errs = malloc(ERRS_BIG);
    char *small = malloc(tiny ? tiny : 1);
    CHECK(errs && small);

    /* cfg_parse: always fills, counts every problem. */
    proxy_settings p;
    memset(&p, 0, sizeof(p));
    int n1 = cfg_parse(pconfig_table, pconfig_count, &p, lookup, ud, errs, ERRS_BIG);
    CHECK(n1 >= 0 && memchr(errs, '\0', ERRS_BIG) != NULL);
    if (strlen(errs) + 1 < ERRS_BIG) CHECK(count_lines(errs) == (size_t)n1); /* one line each */
    check_fields(pconfig_table, pconfig_count, &p);
    cfg_free(pconfig_table, pconfig_count, &p);
    check_strings_freed(pconfig_table, pconfig_count, &p);

    /* cfg_load: same verdict; fills only when clean. */
    memset(&p, 0, sizeof(p));
    int n2 = cfg_load(pconfig_table, pconfig_count, &p, sizeof(p), lookup, ud, small, tiny);
    CHECK(n2 == n1);
    if (tiny) CHECK(memchr(small, '\0', tiny) != NULL);
    if (n2 == 0) check_fields(pconfig_table, pconfig_count, &p);
    else check_strings_freed(pconfig_table, pconfig_count, &p);
    cfg_free(pconfig_table, pconfig_count, &p);

    /* pconfig_load: the table plus cross-field checks; untouched on error. */
    proxy_settings s;
    memset(&s, 0, sizeof(s));
    int n3 = pconfig_load(&s, lookup, ud, errs, ERRS_BIG);
    CHECK(n3 >= n1 && memchr(errs, '\0', ERRS_BIG) != NULL);
    if (n3 == 0) {
        check_fields(pconfig_table, pconfig_count, &s);
        CHECK((s.tls_cert[0] != '\0') == (s.tls_key[0] != '\0'));
        CHECK(s.allowed_languages[0] != '\0');
        CHECK(s.rollout_nsteps >= 0 && s.rollout_nsteps <= ROLLOUT_MAX_STEPS);
        for (int i = 0; i < s.rollout_nsteps; i++)
            CHECK(s.rollout_steps[i] > (i ? s.rollout_steps[i - 1] : 0) && s.rollout_steps[i] <= 1);
        CHECK(s.rollout_nsteps > 0 || s.rollout_steps_text[0] == '\0');
        (void)pconfig_language_allowed(&s, "python", 6);
        (void)pconfig_language_allowed(&s, s.allowed_languages, strlen(s.allowed_languages));
        pconfig_free(&s);
    } else {
        check_strings_freed(pconfig_table, pconfig_count, &s);
    }
    /* Again with a tiny buffer: the count must not depend on its size. */
    memset(&s, 0, sizeof(s));
    int n4 = pconfig_load(&s, lookup, ud, small, tiny);
    CHECK(n4 == n3);
    if (tiny) CHECK(memchr(small, '\0', tiny) != NULL);
    pconfig_free(&s);

    free(errs);
    free(small);
}

/* The per-value parsers, with exact-size heap outputs. */
static void run_value(const char *v)
{
    size_t hostlen = 16;
    char *host = malloc(hostlen);
    char *pw = malloc(32);
    char err[256];
    int port = 0, db = 0;
    CHECK(host && pw);
    if (cfg_split_addr(v, host, hostlen, &port) == 0) {
        CHECK(port >= 1 && port <= 65535);
        CHECK(strlen(host) >= 1 && strlen(host) < hostlen);
    }
    if (rclient_parse_url(v, host, hostlen, &port, &db, pw, 32, err) == 0) {
        CHECK(port >= 1 && port <= 65535);
        CHECK(db >= 0 && db <= 1000000);
        CHECK(strlen(host) < hostlen && strlen(pw) < 32);
    } else {
        CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    }
    free(host);
    free(pw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t tiny = size ? data[0] % 24 : 0; /* 0..23 bytes of error buffer */

    /* A: one value per line, in table order. */
    char *text = malloc(size + 1);
    CHECK(text);
    memcpy(text, data, size);
    text[size] = '\0';
    lines l;
    memset(&l, 0, sizeof(l));
    size_t nv = 0;
    for (char *p = text, *end = text + size; p <= end && nv < pconfig_count && nv < 64; nv++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);
        if (nl) *nl = '\0';
        /* An empty line is the empty value; one that starts with NUL is unset. */
        l.value[nv] = len > 0 && p[0] == '\0' ? NULL : p;
        run_value(p);
        if (!nl) break;
        p = nl + 1;
    }
    run_config(lines_lookup, &l, tiny);
    free(text);

    /* B: the same bytes as the SIGHUP env file. */
    if (ftruncate(envfd, 0) != 0 || (size && pwrite(envfd, data, size, 0) != (ssize_t)size)) {
        fprintf(stderr, "fuzz_config: cannot write the memfd: %s\n", strerror(errno));
        abort();
    }
    char err[256];
    err[0] = '\0';
    cfg_envfile *f = cfg_envfile_read(envpath, err);
    if (f) {
        run_config(cfg_envfile_lookup, f, tiny);
        cfg_envfile_free(f);
    } else {
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
    }
    return 0;
}
