#include "cfg.h"

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
    if (n < 0) return;
    e->len += (size_t)n;
    if (e->len >= e->size) e->len = e->size - 1;
    if (e->len + 1 < e->size) {
        e->buf[e->len++] = '\n';
        e->buf[e->len] = '\0';
    }
}

static bool parse_bool(const char *v, bool *out)
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
    case CFG_BOOL: snprintf(out, n, "true or false"); break;
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

/* What an error line may show of a value: nothing of a token, password or
 * secret, and no credentials of a URL (stderr is the log). */
static const char *shown_value(const cfg_option *o, const char *v, char *buf, size_t n)
{
    if (strstr(o->name, "TOKEN") || strstr(o->name, "PASSWORD") || strstr(o->name, "SECRET")) {
        snprintf(buf, n, "<%zu characters, not shown>", strlen(v));
        return buf;
    }
    const char *scheme = strstr(v, "://"), *at = scheme ? strchr(scheme + 3, '@') : NULL;
    if (at && !memchr(scheme + 3, '/', (size_t)(at - scheme - 3))) {
        snprintf(buf, n, "%.*s<credentials>%s", (int)(scheme + 3 - v), v, at);
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
        if (!parse_bool(v, &b)) add_err(e, "%s=\"%s\"%s: must be %s", o->name, shown, origin, bounds);
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
    fprintf(out, "| variable | default | allowed | meaning |\n|---|---|---|---|\n");
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
        fputs(" | ", out);
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

cfg_envfile *cfg_envfile_read(const char *path, char err[256])
{
    FILE *fp = fopen(path, "r");
    cfg_envfile *f = NULL;
    char line[8192];
    int lineno = 0;

    if (!fp) {
        snprintf(err, 256, "cannot open %s: %s", path, strerror(errno));
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
            snprintf(err, 256, "%s line %d: expected NAME=value", path, lineno);
            goto err;
        }
        *eq = '\0';
        char *name = trim(s), *value = trim(eq + 1);
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
    return f;
oom:
    snprintf(err, 256, "out of memory reading %s", path);
err:
    fclose(fp);
    cfg_envfile_free(f);
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
    vsnprintf(errs + used, size - used, fmt, ap);
    va_end(ap);
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
