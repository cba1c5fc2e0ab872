#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

int log_threshold = LOG_LVL_INFO;
static bool log_json;
static const char *log_program = "turnout";
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_setup(const char *level, const char *format, const char *program)
{
    int lvl = -1;
    for (int i = 0; i < 4; i++)
        if (level && strcmp(level, level_names[i]) == 0) lvl = i;
    if (lvl < 0) return -1;
    if (format && strcmp(format, "json") == 0) log_json = true;
    else if (format && strcmp(format, "logfmt") == 0) log_json = false;
    else return -1;
    log_threshold = lvl;
    if (program) log_program = program;
    return 0;
}

/* Appends `s` quoted for the chosen format; logfmt quotes only when needed. */
static size_t put_value(char *out, size_t pos, size_t cap, const char *s)
{
    bool quote = log_json || *s == '\0' || strpbrk(s, " =\"\\\n\t") != NULL;
    if (pos < cap && quote) out[pos++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p && pos + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') { out[pos++] = '\\'; out[pos++] = (char)*p; }
        else if (*p == '\n') { out[pos++] = '\\'; out[pos++] = 'n'; }
        else if (*p == '\t') { out[pos++] = '\\'; out[pos++] = 't'; }
        else if (*p < 0x20) pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", *p);
        else out[pos++] = (char)*p;
    }
    if (pos < cap && quote) out[pos++] = '"';
    return pos;
}

static size_t put_raw(char *out, size_t pos, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (pos + n >= cap) n = cap > pos + 1 ? cap - pos - 1 : 0;
    memcpy(out + pos, s, n);
    return pos + n;
}

void log_emit(int level, const char *msg, ...)
{
    char line[4096], ts[40];
    size_t pos = 0, cap = sizeof(line) - 2; /* room for '}' and '\n' */
    struct timeval tv;
    struct tm tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    if (level < 0 || level > 3) level = LOG_LVL_ERROR;

    va_list ap;
    va_start(ap, msg);
    if (log_json) {
        pos = put_raw(line, pos, cap, "{\"ts\":");
        pos = put_value(line, pos, cap, ts);
        pos = put_raw(line, pos, cap, ",\"level\":");
        pos = put_value(line, pos, cap, level_names[level]);
        pos = put_raw(line, pos, cap, ",\"prog\":");
        pos = put_value(line, pos, cap, log_program);
        pos = put_raw(line, pos, cap, ",\"msg\":");
        pos = put_value(line, pos, cap, msg);
    } else {
        pos = put_raw(line, pos, cap, "ts=");
        pos = put_raw(line, pos, cap, ts);
        pos = put_raw(line, pos, cap, " level=");
        pos = put_raw(line, pos, cap, level_names[level]);
        pos = put_raw(line, pos, cap, " prog=");
        pos = put_raw(line, pos, cap, log_program);
        pos = put_raw(line, pos, cap, " msg=");
        pos = put_value(line, pos, cap, msg);
    }
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        if (!v) continue;
        if (log_json) {
            pos = put_raw(line, pos, cap, ",");
            pos = put_value(line, pos, cap, k);
            pos = put_raw(line, pos, cap, ":");
        } else {
            pos = put_raw(line, pos, cap, " ");
            pos = put_raw(line, pos, cap, k);
            pos = put_raw(line, pos, cap, "=");
        }
        pos = put_value(line, pos, cap, v);
    }
    va_end(ap);
    if (pos > cap) pos = cap;
    if (log_json) line[pos++] = '}';
    line[pos++] = '\n';
    fwrite(line, 1, pos, stderr);
}
