#define _DEFAULT_SOURCE /* timegm */
#include "evstatus.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

const char *evstatus_from_celery(json_t *rec)
{
    const char *st = json_string_value(json_object_get(rec, "status"));
    if (!st) return NULL;
    if (strcmp(st, "SUCCESS") == 0) {
        /* the task returned; the evaluation's own verdict is inside */
        const char *inner = json_string_value(json_object_get(json_object_get(rec, "result"), "status"));
        if (inner && (strcmp(inner, "failed") == 0 || strcmp(inner, "timeout") == 0)) return inner;
        if (inner && (strcmp(inner, "killed") == 0 || strcmp(inner, "cancelled") == 0)) return "cancelled";
        if (inner && strcmp(inner, "error") == 0) return "failed";
        return "completed";
    }
    if (strcmp(st, "FAILURE") == 0) return "failed";
    if (strcmp(st, "REVOKED") == 0) return "cancelled";
    if (strcmp(st, "RETRY") == 0) return "retrying";
    if (strcmp(st, "STARTED") == 0 || strcmp(st, "PROGRESS") == 0) return "running";
    if (strcmp(st, "RECEIVED") == 0) return "queued";
    return NULL;
}

int evstatus_outcome(const char *status)
{
    static const char *const terminal[] = {"completed", "failed", "timeout", "cancelled"};
    for (int i = 0; status && i < 4; i++)
        if (strcmp(status, terminal[i]) == 0) return i;
    return -1;
}

double evstatus_parse_iso(const char *text)
{
    if (!text) return -1;
    int y, mo, d, h, mi, n = 0;
    double s;
    if (sscanf(text, "%4d-%2d-%2dT%2d:%2d:%lf%n", &y, &mo, &d, &h, &mi, &s, &n) != 6) return -1;
    const char *rest = text + n;
    if (*rest && strcmp(rest, "Z") != 0 && strcmp(rest, "+00:00") != 0) return -1;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s < 0 || s >= 61) return -1;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    return (double)t + s;
}
