/* cfg — configuration from the environment through one declarative table.
 *
 * Each binary declares a table of cfg_option {name, type, bounds, default,
 * offset into its own settings struct, help}.  cfg_load() parses every entry
 * strictly, reports *all* problems at once, and either fills the struct or
 * leaves it untouched.  The same table prints --help and the README table. */
#ifndef TURNOUT_CFG_H
#define TURNOUT_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum {
    CFG_BOOL,     /* true/false/1/0/yes/no/on/off      -> bool          */
    CFG_INT,      /* integer in [min, max]               -> long long     */
    CFG_FRACTION, /* decimal in [min, max]               -> double        */
    CFG_STRING,   /* any text (max = max length, 0 none) -> char * (owned) */
    CFG_ENUM,     /* one of `choices` ("a|b|c")          -> char * (owned) */
    CFG_ADDR,     /* host:port, port 1..65535            -> char * (owned) */
    CFG_URL,      /* scheme://... with scheme in choices -> char * (owned) */
    CFG_LIST,     /* comma list of non-empty items       -> char * (owned) */
} cfg_type;

typedef struct cfg_option {
    const char *name;    /* environment variable */
    cfg_type type;
    const char *def;     /* default as text; NULL = empty/unset */
    double min, max;     /* bounds for INT/FRACTION; max length for STRING */
    const char *choices; /* ENUM values or URL schemes, "|" separated */
    size_t offset;       /* offsetof(settings struct, field) */
    const char *help;    /* one line: meaning, unit */
} cfg_option;

/* Looks a name up; returns NULL when unset.  Borrowed result. */
typedef const char *(*cfg_lookup_fn)(const char *name, void *ud);

const char *cfg_getenv(const char *name, void *ud); /* lookup in environ */

/* Parses every option of `table` into a fresh copy of the settings at `dst`.
 * Problems are appended, one per line, to `errs` (NUL-terminated, truncated
 * at errs_size).  Returns the number of problems; on 0 the previous string
 * fields of dst are freed and replaced, on >0 dst is left untouched. */
int cfg_load(const cfg_option *table, size_t n, void *dst, size_t dst_size,
             cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
    __attribute__((warn_unused_result));

/* Like cfg_load but always fills `out` (zeroed by the caller): an invalid
 * value is reported and replaced by its default, so cross-field checks can
 * still run and every problem is reported in one go.  Free with cfg_free. */
int cfg_parse(const cfg_option *table, size_t n, void *out, cfg_lookup_fn lookup, void *ud, char *errs,
              size_t errs_size) __attribute__((warn_unused_result));

/* Frees the owned strings of a settings struct filled by cfg_load. */
void cfg_free(const cfg_option *table, size_t n, void *settings);

/* Prints "NAME  default  help" lines (for --help). */
void cfg_print_help(const cfg_option *table, size_t n, FILE *out);

/* Prints the table as a Markdown table (for the README check). */
void cfg_print_markdown(const cfg_option *table, size_t n, FILE *out);

/* Reads a KEY=VALUE env file (comments with #, optional quotes) into a
 * lookup usable with cfg_load; falls back to the process environment for
 * names the file does not set.  NULL with err filled on failure. */
typedef struct cfg_envfile cfg_envfile;
cfg_envfile *cfg_envfile_read(const char *path, char err[256]);
const char *cfg_envfile_lookup(const char *name, void *envfile);
void cfg_envfile_free(cfg_envfile *f);

/* Appends one problem line (printf-style) to a NUL-terminated errs buffer. */
void cfg_append_error(char *errs, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The flags every binary shares: --help (summary + the table), --version,
 * --print-config-markdown, --check-config.  Returns -1 when the program
 * should go on (*check_only tells whether only to check), else its exit code. */
int cfg_cli(int argc, char **argv, const char *program, const char *summary, const cfg_option *table,
            size_t n, bool *check_only) __attribute__((warn_unused_result));

/* After loading: prints the problems (exit code 2), or for --check-config
 * "configuration OK" (exit code 0); -1 when the program should go on. */
int cfg_report(const char *program, int problems, const char *errs, bool check_only)
    __attribute__((warn_unused_result));

/* Splits "host:port" into host (copied into host[hostlen]) and port.
 * Returns 0, or -1 when malformed. */
int cfg_split_addr(const char *addr, char *host, size_t hostlen, int *port)
    __attribute__((warn_unused_result));

#endif
