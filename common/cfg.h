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
    CFG_BOOL,     /* true/false/1/0/yes/no/on/off, any case -> bool     */
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
    bool live;           /* a reload (SIGHUP) takes a new value at once; else it needs a restart */
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

/* True when option o holds the same value in the settings structs a and b
 * (for reloads: which settings a new file changes). */
/* A reload: every live option of `table` moves from `fresh` into `running`
 * (the old value goes to fresh, to be freed with it); every other one
 * keeps its running value, and its name is appended to `restart`
 * (comma-separated) when fresh differs.  Returns how many were named. */
int cfg_reload_take(const cfg_option *table, size_t n, void *running, void *fresh, char *restart, size_t restart_size);

bool cfg_same(const cfg_option *o, const void *a, const void *b);

/* Frees the owned strings of a settings struct filled by cfg_load. */
void cfg_free(const cfg_option *table, size_t n, void *settings);

/* Prints "NAME  default  help" lines (for --help). */
void cfg_print_help(const cfg_option *table, size_t n, FILE *out);

/* Prints the table as a Markdown table (for the README check). */
void cfg_print_markdown(const cfg_option *table, size_t n, FILE *out);

/* The one boolean rule of every binary: true/false, 1/0, yes/no, on/off in
 * any case.  False (and *out untouched) for anything else. */
bool cfg_parse_bool(const char *v, bool *out) __attribute__((warn_unused_result));

/* Reads a KEY=VALUE env file (comments with #, optional quotes) into a
 * lookup usable with cfg_load; falls back to the process environment for
 * names the file does not set.  A name with a turnout prefix that no binary
 * knows (a typo such as FORCE_LEGACY_QUEU) is a problem of the file, named
 * with its line and the closest setting.  NULL with err filled on failure
 * (every problem, "; "-separated, cut at 256 bytes). */
typedef struct cfg_envfile cfg_envfile;
cfg_envfile *cfg_envfile_read(const char *path, char err[256]);
/* Same, with every problem appended as one line to errs; *problems counts
 * them (0 when a file is returned). */
cfg_envfile *cfg_envfile_open(const char *path, char *errs, size_t errs_size, int *problems);
const char *cfg_envfile_lookup(const char *name, void *envfile);
void cfg_envfile_free(cfg_envfile *f);

/* A binary's loader: its table plus cross-checks over one lookup, filling
 * `settings` only when clean (pconfig_load, wconfig_load, ...). */
typedef int (*cfg_loader)(void *settings, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size);

/* How every binary reads its settings, at start-up and on SIGHUP: the process
 * environment, with the KEY=value file `env_file` over it (NULL or "": no
 * file).  The file's problems and the values' problems are all appended to
 * errs; returns their count (settings untouched unless 0). */
int cfg_load_with_env_file(const char *env_file, cfg_loader load, void *settings, char *errs,
                           size_t errs_size) __attribute__((warn_unused_result));

/* ---- setting names: typos are found, not ignored ---- */

/* Every binary's setting names (common/cfg_names.c). */
typedef struct cfg_program_names {
    const char *program;
    const char *const *names;
    size_t n;
} cfg_program_names;
extern const cfg_program_names cfg_programs[];
extern const size_t cfg_nprograms;
/* Turnout-prefixed names the project uses outside the binaries ("X_*" =
 * any name starting with X_). */
extern const char *const cfg_outside_names[];
/* Settings no longer read, with what replaced them (cfg_names.c). */
typedef struct cfg_retired_name {
    const char *name, *instead;
} cfg_retired_name;
extern const cfg_retired_name cfg_retired[];
extern const size_t cfg_nretired;
extern const size_t cfg_noutside;

/* True when `name` starts (in any case) with a prefix of turnout's settings:
 * the first word and its "_" of any binary's setting (CELERY_, LEGACYD_,
 * MAX_, ...), two words for a word too common to claim alone (TIME_LIMIT_). */
bool cfg_name_has_turnout_prefix(const char *name);

/* True when `name` is a setting of any binary or an outside name. */
bool cfg_name_known(const char *name);

/* Edit distance (optimal string alignment: insert, delete, substitute, swap
 * two neighbours), ASCII case ignored. */
size_t cfg_edit_distance(const char *a, const char *b);

/* The known setting closest to `name`, or NULL when none is close enough
 * to be a likely typo of it. */
const char *cfg_suggest(const char *name);

/* When `name` has a turnout prefix but is no known name, writes
 * "NAME is not a turnout setting; did you mean BEST?" (or "...; see --help"
 * when nothing is close) into out and returns true; else false. */
bool cfg_unknown_name(const char *name, char *out, size_t out_size);

/* Compares `program`'s table with its entry in cfg_programs; a difference is
 * written into err (naming the setting) and returns -1. */
int cfg_check_names(const char *program, const cfg_option *table, size_t n, char *err, size_t err_size);

/* Writes one warning line per unknown turnout-prefixed name of the process
 * environment to `out` ("program: warning: ..."); returns their count. */
int cfg_warn_unknown_env(const char *program, FILE *out);

/* Appends one problem line (printf-style) to a NUL-terminated errs buffer. */
void cfg_append_error(char *errs, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The flags every binary shares: --help (summary + the table), --version,
 * --print-config-markdown, --check-config.  Returns -1 when the program
 * should go on (*check_only tells whether only to check), else its exit code.
 * Before going on it checks the table against cfg_programs (exit 70 when
 * they differ) and warns about unknown turnout-prefixed names in the
 * environment (cfg_warn_unknown_env, to stderr; the exit code is unchanged). */
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
