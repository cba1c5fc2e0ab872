#include "cfg.h"

#include "util.h"

#ifdef TURNOUT_VERSION
#define TURNOUT_VERSION_TEXT TURNOUT_VERSION
#else
#define TURNOUT_VERSION_TEXT "0.0.0-dev"
#endif

#include <ctype.h>
#include <strings.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


const char *cfg_getenv(const char *name, void *ud)
{
    (void)ud;
    return getenv(name);
}

typedef struct errbuf {
    char *buf;
    size_t size, len;
    int count;
} errbuf;

__attribute__((format(printf, 2, 3)))
static void add_err(errbuf *e, const char *fmt, ...)
{
    e->count++;
    if (!e->buf || e->size == 0 || e->len + 1 >= e->size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->buf + e->len, e->size - e->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        e->buf[e->len] = '\0';
        return;
    }
    if (e->len + (size_t)n >= e->size) { /* cut: never inside a character */
        e->len += util_utf8_trim_end(e->buf + e->len, e->size - 1 - e->len);
        e->buf[e->len] = '\0';
        return;
    }
    e->len += (size_t)n;
    if (e->len + 1 < e->size) {
        e->buf[e->len++] = '\n';
        e->buf[e->len] = '\0';
    }
}

bool cfg_parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = true; return true; }
        if (strcasecmp(v, no[i]) == 0) { *out = false; return true; }
    }
    return false;
}

/* True when `v` equals one of the "|"-separated words of `choices`. */
static bool in_choices(const char *choices, const char *v, size_t vlen)
{
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vlen && strncmp(p, v, n) == 0) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

int cfg_split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr) return -1;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (h[0] == '[') { /* [::1]:8080 */
        if (hl < 3 || h[hl - 1] != ']') return -1;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen) return -1;
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 1 || p > 65535) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static void describe_bounds(const cfg_option *o, char *out, size_t n)
{
    switch (o->type) {
    case CFG_BOOL: snprintf(out, n, "true/false, 1/0, yes/no or on/off (any case)"); break;
    case CFG_INT: snprintf(out, n, "an integer from %.0f to %.0f", o->min, o->max); break;
    case CFG_FRACTION:
        snprintf(out, n, "a number from %g to %g", o->min, o->max);
        break;
    case CFG_ENUM: snprintf(out, n, "one of %s", o->choices); break;
    case CFG_ADDR: snprintf(out, n, "host:port with a port from 1 to 65535"); break;
    case CFG_URL: snprintf(out, n, "a URL starting with %s://", o->choices); break;
    case CFG_LIST: snprintf(out, n, "a comma-separated list of non-empty items"); break;
    case CFG_STRING:
        if (o->max > 0) snprintf(out, n, "text of at most %.0f characters", o->max);
        else snprintf(out, n, "text");
        break;
    }
}

/* Checks one URL against the option's allowed schemes. */
static bool valid_url(const cfg_option *o, const char *v)
{
    const char *sep = strstr(v, "://");
    if (!sep || sep == v || sep[3] == '\0') return false;
    if (o->choices && !in_choices(o->choices, v, (size_t)(sep - v))) return false;
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p)) return false;
    return true;
}

static bool valid_list(const char *v)
{
    if (*v == '\0') return true; /* an empty list is allowed: "none" */
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        size_t i = 0;
        while (i < n && isspace((unsigned char)p[i])) i++;
        if (i == n) return false;
        if (!comma) return true;
        p = comma + 1;
    }
}

/* Longest part of a value an error line quotes. */
#define SHOWN_MAX 400

/* What an error line may show of a value: nothing of a token, password or
 * secret, no credentials of a URL (stderr is the log), and at most
 * SHOWN_MAX bytes, cut between characters. */
static const char *shown_value(const cfg_option *o, const char *v, char *buf, size_t n)
{
    if (strstr(o->name, "TOKEN") || strstr(o->name, "PASSWORD") || strstr(o->name, "SECRET")) {
        snprintf(buf, n, "<%zu characters, not shown>", strlen(v));
        return buf;
    }
    const char *scheme = strstr(v, "://"), *at = scheme ? strchr(scheme + 3, '@') : NULL;
    if (at && !memchr(scheme + 3, '/', (size_t)(at - scheme - 3))) {
        util_snprintf(buf, n, "%.*s<credentials>%.*s", UTF8_CUT(v, (size_t)(scheme + 3 - v)), UTF8_CUT(at, SHOWN_MAX));
        return buf;
    }
    if (strlen(v) > SHOWN_MAX) {
        util_snprintf(buf, n, "%.*s...", UTF8_CUT(v, SHOWN_MAX));
        return buf;
    }
    return v;
}

/* Parses one value into `field`; false (with the problem added) when invalid. */
static bool parse_one(const cfg_option *o, const char *v, char *field, errbuf *e, const char *origin)
{
    char bounds[160], hidden[600];
    int before = e->count;
    /* a secret's value never reaches an error line (stderr is the log) */
    const char *shown = shown_value(o, v, hidden, sizeof(hidden));
    describe_bounds(o, bounds, sizeof(bounds));
    switch (o->type) {
    case CFG_BOOL: {
        bool b;
        if (!cfg_parse_bool(v, &b)) add_err(e, "%s=\"%s\"%s: must be %s", o->name, shown, origin, bounds);
        else memcpy(field, &b, sizeof(b));
        break;
    }
    case CFG_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || (double)x < o->min || (double)x > o->max)
            add_err(e, "%s=\"%s\"%s: must be %s", o->name, shown, origin, bounds);
        else memcpy(field, &x, sizeof(x));
        break;
    }
    case CFG_FRACTION: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < o->min || x > o->max) {
            if (o->min == 0 && o->max == 1)
                add_err(e, "%s=\"%s\"%s: must be between 0 and 1 (a fraction, 0.5 = 50%%)", o->name, shown, origin);
            else
                add_err(e, "%s=\"%s\"%s: must be %s", o->name, shown, origin, bounds);
        } else {
            memcpy(field, &x, sizeof(x));
        }
        break;
    }
    case CFG_STRING:
    case CFG_ENUM:
    case CFG_ADDR:
    case CFG_URL:
    case CFG_LIST: {
        bool ok = true;
        if (o->type == CFG_STRING) ok = o->max <= 0 || strlen(v) <= (size_t)o->max;
        else if (o->type == CFG_ENUM) ok = in_choices(o->choices, v, strlen(v));
        else if (o->type == CFG_ADDR) {
            char host[256];
            int port;
            ok = cfg_split_addr(v, host, sizeof(host), &port) == 0;
        } else if (o->type == CFG_URL) ok = *v == '\0' || valid_url(o, v);
        else ok = valid_list(v);
        if (!ok) {
            add_err(e, "%s=\"%s\"%s: must be %s", o->name, shown, origin, bounds);
            break;
        }
        char *copy = strdup(v);
        if (!copy) {
            add_err(e, "out of memory while reading %s", o->name);
            break;
        }
        memcpy(field, &copy, sizeof(copy));
        break;
    }
    }
    return e->count == before;
}

int cfg_parse(const cfg_option *table, size_t n, void *out, cfg_lookup_fn lookup, void *ud, char *errs,
              size_t errs_size)
{
    errbuf e = {errs, errs_size, 0, 0};
    if (errs && errs_size) errs[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const cfg_option *o = &table[i];
        const char *v = lookup(o->name, ud);
        const char *def = o->def ? o->def : "";
        char *field = (char *)out + o->offset;
        if (parse_one(o, v ? v : def, field, &e, v ? "" : " (the default)") || !v) continue;
        /* Invalid: fall back to the default so cross-checks still see a
         * sensible value and can report their own problems too. */
        errbuf quiet = {NULL, 0, 0, 0};
        (void)parse_one(o, def, field, &quiet, "");
    }
    return e.count;
}

int cfg_load(const cfg_option *table, size_t n, void *dst, size_t dst_size,
             cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
{
    char *tmp = calloc(1, dst_size);
    if (!tmp) {
        if (errs && errs_size) snprintf(errs, errs_size, "out of memory while reading the configuration\n");
        return 1;
    }
    int count = cfg_parse(table, n, tmp, lookup, ud, errs, errs_size);
    if (count == 0) {
        cfg_free(table, n, dst);
        memcpy(dst, tmp, dst_size);
    } else {
        cfg_free(table, n, tmp);
    }
    free(tmp);
    return count;
}

void cfg_free(const cfg_option *table, size_t n, void *settings)
{
    for (size_t i = 0; i < n; i++) {
        cfg_type t = table[i].type;
        if (t == CFG_BOOL || t == CFG_INT || t == CFG_FRACTION) continue;
        char **field = (char **)((char *)settings + table[i].offset);
        free(*field);
        *field = NULL;
    }
}

static const char *type_word(cfg_type t)
{
    switch (t) {
    case CFG_BOOL: return "bool";
    case CFG_INT: return "int";
    case CFG_FRACTION: return "number";
    case CFG_STRING: return "text";
    case CFG_ENUM: return "enum";
    case CFG_ADDR: return "host:port";
    case CFG_URL: return "url";
    case CFG_LIST: return "list";
    }
    return "?";
}

void cfg_print_help(const cfg_option *table, size_t n, FILE *out)
{
    fprintf(out, "Environment variables:\n");
    for (size_t i = 0; i < n; i++) {
        const cfg_option *o = &table[i];
        char bounds[160];
        describe_bounds(o, bounds, sizeof(bounds));
        fprintf(out, "  %-24s %s (default \"%s\"; %s)\n      %s\n", o->name,
                type_word(o->type), o->def ? o->def : "", bounds, o->help);
    }
}

/* Markdown table cells cannot hold a raw "|". */
static void put_md_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|') fputc('\\', out);
        fputc(*s, out);
    }
}

void cfg_print_markdown(const cfg_option *table, size_t n, FILE *out)
{
    fprintf(out, "| variable | default | allowed | on SIGHUP | meaning |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        const cfg_option *o = &table[i];
        char bounds[160];
        describe_bounds(o, bounds, sizeof(bounds));
        fprintf(out, "| `%s` | ", o->name);
        if (o->def && *o->def) {
            fputc('`', out);
            put_md_cell(out, o->def);
            fputc('`', out);
        } else {
            fputs("(empty)", out);
        }
        fputs(" | ", out);
        put_md_cell(out, bounds);
        fputs(o->live ? " | live | " : " | restart | ", out);
        put_md_cell(out, o->help);
        fputs(" |\n", out);
    }
}

/* ---- env files (SIGHUP reload) ---- */

struct cfg_envfile {
    size_t n;
    char **names;
    char **values;
};

void cfg_envfile_free(cfg_envfile *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->names[i]);
        free(f->values[i]);
    }
    free(f->names);
    free(f->values);
    free(f);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
    return s;
}

/* Appends a file's problem: "<path> line N: <what>". */
__attribute__((format(printf, 4, 5)))
static void file_err(errbuf *e, const char *path, int lineno, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (n < 0) what[0] = '\0';
    else if ((size_t)n >= sizeof(what)) what[util_utf8_trim_end(what, sizeof(what) - 1)] = '\0';
    add_err(e, "%.*s line %d: %s", UTF8_CUT(path, 200), lineno, what);
}

/* Every problem of the file goes to e; NULL when there is any. */
static cfg_envfile *envfile_read(const char *path, errbuf *e)
{
    FILE *fp = fopen(path, "r");
    cfg_envfile *f = NULL;
    char line[8192];
    int lineno = 0, before = e->count;

    if (!fp) {
        add_err(e, "TURNOUT_ENV_FILE=\"%.*s\": cannot open it: %s", UTF8_CUT(path, 200), strerror(errno));
        return NULL;
    }
    f = calloc(1, sizeof(*f));
    if (!f) goto oom;
    while (fgets(line, sizeof(line), fp)) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        if (strncmp(s, "export ", 7) == 0) s = trim(s + 7);
        char *eq = strchr(s, '=');
        if (!eq || eq == s) {
            file_err(e, path, lineno, "expected NAME=value");
            continue;
        }
        *eq = '\0';
        char *name = trim(s), *value = trim(eq + 1);
        /* A typo of a setting would be ignored and its default used (the
         * kill switch left off): refuse the file instead. */
        char unknown[400];
        if (cfg_unknown_name(name, unknown, sizeof(unknown))) {
            file_err(e, path, lineno, "%s", unknown);
            continue;
        }
        size_t vl = strlen(value);
        if (vl >= 2 && (value[0] == '"' || value[0] == '\'') && value[vl - 1] == value[0]) {
            value[vl - 1] = '\0';
            value++;
        }
        char **nn = realloc(f->names, (f->n + 1) * sizeof(char *));
        if (!nn) goto oom;
        f->names = nn;
        char **nv = realloc(f->values, (f->n + 1) * sizeof(char *));
        if (!nv) goto oom;
        f->values = nv;
        f->names[f->n] = strdup(name);
        f->values[f->n] = strdup(value);
        f->n++;
        if (!f->names[f->n - 1] || !f->values[f->n - 1]) goto oom;
    }
    fclose(fp);
    if (e->count == before) return f;
    cfg_envfile_free(f);
    return NULL;
oom:
    add_err(e, "out of memory reading %.*s", UTF8_CUT(path, 200));
    fclose(fp);
    cfg_envfile_free(f);
    return NULL;
}

cfg_envfile *cfg_envfile_open(const char *path, char *errs, size_t errs_size, int *problems)
{
    size_t used = errs && errs_size ? strnlen(errs, errs_size) : 0;
    if (used >= errs_size) used = errs_size ? errs_size - 1 : 0;
    errbuf e = {errs, errs_size, used, 0};
    cfg_envfile *f = envfile_read(path, &e);
    *problems = e.count;
    return f;
}

cfg_envfile *cfg_envfile_read(const char *path, char err[256])
{
    char lines[2048] = "";
    errbuf e = {lines, sizeof(lines), 0, 0};
    cfg_envfile *f = envfile_read(path, &e);
    if (f) return f;
    /* one line for the log: the problems joined by "; " */
    size_t len = 0;
    err[0] = '\0';
    for (char *p = lines, *nl; *p && len < 255; p = nl + 1) {
        nl = strchr(p, '\n');
        if (!nl) nl = p + strlen(p);
        len += util_snprintf(err + len, 256 - len, "%s%.*s", len ? "; " : "", (int)(nl - p), p);
        if (!*nl) break;
    }
    return NULL;
}

const char *cfg_envfile_lookup(const char *name, void *envfile)
{
    cfg_envfile *f = envfile;
    /* Last assignment wins, as in a shell. */
    for (size_t i = f->n; i-- > 0;)
        if (strcmp(f->names[i], name) == 0) return f->values[i];
    return getenv(name);
}

void cfg_append_error(char *errs, size_t size, const char *fmt, ...)
{
    size_t used = strnlen(errs, size);
    if (used + 1 >= size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errs + used, size - used, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= size - used) /* cut: never inside a character */
        errs[used + util_utf8_trim_end(errs + used, size - 1 - used)] = '\0';
}

int cfg_cli(int argc, char **argv, const char *program, const char *summary, const cfg_option *table,
            size_t n, bool *check_only)
{
    *check_only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("%s %s — %s\n\nUsage: %s [--help | --version | --check-config | --print-config-markdown]\n"
                   "Configuration comes from the environment only.\n\n",
                   program, TURNOUT_VERSION_TEXT, summary, program);
            cfg_print_help(table, n, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("%s %s\n", program, TURNOUT_VERSION_TEXT);
            return 0;
        } else if (strcmp(argv[i], "--print-config-markdown") == 0) {
            cfg_print_markdown(table, n, stdout);
            return 0;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            *check_only = true;
        } else {
            fprintf(stderr, "%s: unknown argument \"%s\"; see --help\n", program, argv[i]);
            return 2;
        }
    }
    char err[400];
    if (cfg_check_names(program, table, n, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: internal error: %s\n", program, err);
        return 70; /* EX_SOFTWARE: a build that no test can pass */
    }
    (void)cfg_warn_unknown_env(program, stderr);
    return -1;
}

int cfg_report(const char *program, int problems, const char *errs, bool check_only)
{
    if (problems) {
        fprintf(stderr, "%s: %d configuration problem%s:\n%s", program, problems, problems == 1 ? "" : "s", errs);
        return 2;
    }
    if (check_only) {
        printf("%s: configuration OK\n", program);
        return 0;
    }
    return -1;
}

int cfg_load_with_env_file(const char *env_file, cfg_loader load, void *settings, char *errs, size_t errs_size)
{
    if (errs && errs_size) errs[0] = '\0';
    if (!env_file || !*env_file) return load(settings, cfg_getenv, NULL, errs, errs_size);
    int problems = 0;
    cfg_envfile *f = cfg_envfile_open(env_file, errs, errs_size, &problems);
    if (!f) return problems ? problems : 1;
    problems = load(settings, cfg_envfile_lookup, f, errs, errs_size);
    cfg_envfile_free(f);
    return problems;
}

/* ---- setting names ---- */

/* First words too common to claim alone: TIME_STYLE (GNU ls) is not ours,
 * so TIME_LIMIT_S gives the prefix TIME_LIMIT_ and not TIME_. */
static const char *const common_words[] = {"TIME"};

/* Length of the prefix that `name`, a setting, claims for turnout: its
 * first word and "_", or two words when the first is a common one; 0 when
 * it has no "_". */
static size_t claimed_prefix(const char *name)
{
    const char *us = strchr(name, '_');
    if (!us) return 0;
    size_t first = (size_t)(us - name);
    for (size_t i = 0; i < sizeof(common_words) / sizeof(common_words[0]); i++) {
        if (strlen(common_words[i]) == first && strncmp(name, common_words[i], first) == 0) {
            const char *us2 = strchr(us + 1, '_');
            return us2 ? (size_t)(us2 - name) + 1 : 0;
        }
    }
    return first + 1;
}

bool cfg_name_has_turnout_prefix(const char *name)
{
    for (size_t p = 0; p < cfg_nprograms; p++) {
        for (size_t i = 0; i < cfg_programs[p].n; i++) {
            const char *known = cfg_programs[p].names[i];
            size_t len = claimed_prefix(known);
            if (len && strncasecmp(name, known, len) == 0) return true;
        }
    }
    return false;
}

bool cfg_name_known(const char *name)
{
    for (size_t p = 0; p < cfg_nprograms; p++)
        for (size_t i = 0; i < cfg_programs[p].n; i++)
            if (strcmp(name, cfg_programs[p].names[i]) == 0) return true;
    for (size_t i = 0; i < cfg_noutside; i++) {
        const char *o = cfg_outside_names[i];
        size_t len = strlen(o);
        if (len && o[len - 1] == '*' ? strncmp(name, o, len - 1) == 0 : strcmp(name, o) == 0) return true;
    }
    return false;
}

/* Names longer than this get no suggestion (and cost no quadratic time). */
#define SUGGEST_MAX_LEN 64

size_t cfg_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > SUGGEST_MAX_LEN || lb > SUGGEST_MAX_LEN) return la > lb ? la : lb; /* no better bound needed */
    /* three rows of the dynamic programme: i-2, i-1, i */
    size_t rows[3][SUGGEST_MAX_LEN + 1];
    for (size_t j = 0; j <= lb; j++) rows[1][j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t *cur = rows[(i + 1) % 3], *prev = rows[i % 3], *prev2 = rows[(i + 2) % 3];
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            int ca = toupper((unsigned char)a[i - 1]), cb = toupper((unsigned char)b[j - 1]);
            size_t best = prev[j - 1] + (ca != cb);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && ca == toupper((unsigned char)b[j - 2]) && toupper((unsigned char)a[i - 2]) == cb &&
                prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
    }
    return rows[(la + 1) % 3][lb];
}

const char *cfg_suggest(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > SUGGEST_MAX_LEN) return NULL;
    /* A likely typo: a couple of keys, or up to a third of the name. */
    size_t limit = len / 3 > 2 ? len / 3 : 2, best_d = limit + 1;
    const char *best = NULL;
    for (size_t p = 0; p < cfg_nprograms; p++) {
        for (size_t i = 0; i < cfg_programs[p].n; i++) {
            const char *known = cfg_programs[p].names[i];
            size_t kl = strlen(known);
            if ((kl > len ? kl - len : len - kl) >= best_d) continue; /* cannot be closer */
            size_t d = cfg_edit_distance(name, known);
            if (d < best_d) {
                best_d = d;
                best = known;
            }
        }
    }
    return best;
}

bool cfg_unknown_name(const char *name, char *out, size_t out_size)
{
    if (cfg_name_known(name) || !cfg_name_has_turnout_prefix(name)) return false;
    /* the name is the operator's text: shown cut and without control bytes */
    char shown[104];
    size_t n = util_utf8_prefix(name, 100);
    for (size_t i = 0; i < n; i++) shown[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
    strcpy(shown + n, name[n] ? "..." : "");
    for (size_t i = 0; i < cfg_nretired; i++) {
        if (strcmp(name, cfg_retired[i].name) == 0) {
            util_snprintf(out, out_size, "%s is no longer read: %s", shown, cfg_retired[i].instead);
            return true;
        }
    }
    const char *best = cfg_suggest(name);
    if (best) util_snprintf(out, out_size, "%s is not a turnout setting; did you mean %s?", shown, best);
    else util_snprintf(out, out_size, "%s is not a turnout setting; see --help for the settings", shown);
    return true;
}

static bool in_table(const cfg_option *table, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0) return true;
    return false;
}

int cfg_check_names(const char *program, const cfg_option *table, size_t n, char *err, size_t err_size)
{
    const cfg_program_names *own = NULL;
    for (size_t p = 0; p < cfg_nprograms; p++)
        if (strcmp(cfg_programs[p].program, program) == 0) own = &cfg_programs[p];
    if (!own) {
        util_snprintf(err, err_size, "common/cfg_names.c has no list of %s's settings; add one", program);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        bool listed = false;
        for (size_t j = 0; j < own->n && !listed; j++) listed = strcmp(own->names[j], table[i].name) == 0;
        if (!listed) {
            util_snprintf(err, err_size,
                          "setting %s is missing from %s's list in common/cfg_names.c (the other binaries "
                          "would call it unknown); add it there",
                          table[i].name, program);
            return -1;
        }
    }
    for (size_t j = 0; j < own->n; j++) {
        if (!in_table(table, n, own->names[j])) {
            util_snprintf(err, err_size,
                          "common/cfg_names.c lists %s for %s, which has no such setting; remove it there",
                          own->names[j], program);
            return -1;
        }
    }
    return 0;
}

int cfg_warn_unknown_env(const char *program, FILE *out)
{
    int count = 0;
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t len = eq ? (size_t)(eq - *e) : strlen(*e);
        char name[256], msg[400];
        if (len == 0 || len >= sizeof(name)) continue;
        memcpy(name, *e, len);
        name[len] = '\0';
        if (!cfg_unknown_name(name, msg, sizeof(msg))) continue;
        fprintf(out, "%s: warning: %s\n", program, msg);
        count++;
    }
    return count;
}

static void swap_value(const cfg_option *o, void *a, void *b)
{
    char *pa = (char *)a + o->offset, *pb = (char *)b + o->offset;
    size_t size = o->type == CFG_BOOL ? sizeof(bool)
                  : o->type == CFG_INT ? sizeof(long long)
                  : o->type == CFG_FRACTION ? sizeof(double)
                  : sizeof(char *);
    char tmp[sizeof(long long) > sizeof(char *) ? sizeof(long long) : sizeof(char *)];
    memcpy(tmp, pa, size);
    memcpy(pa, pb, size);
    memcpy(pb, tmp, size);
}

int cfg_reload_take(const cfg_option *table, size_t n, void *running, void *fresh, char *restart, size_t restart_size)
{
    int named = 0;
    for (size_t i = 0; i < n; i++) {
        const cfg_option *o = &table[i];
        if (o->live) {
            swap_value(o, running, fresh);
        } else if (!cfg_same(o, running, fresh)) {
            cfg_append_error(restart, restart_size, "%s%s", restart[0] ? "," : "", o->name);
            named++;
        }
    }
    return named;
}

bool cfg_same(const cfg_option *o, const void *a, const void *b)
{
    const char *pa = (const char *)a + o->offset, *pb = (const char *)b + o->offset;
    switch (o->type) {
    case CFG_BOOL: return *(const bool *)pa == *(const bool *)pb;
    case CFG_INT: return *(const long long *)pa == *(const long long *)pb;
    case CFG_FRACTION: return *(const double *)pa == *(const double *)pb;
    default: {
        const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
        return strcmp(sa ? sa : "", sb ? sb : "") == 0;
    }
    }
}
