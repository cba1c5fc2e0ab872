#define _DEFAULT_SOURCE /* timegm */
#include "evstatus.h"

#include <stdbool.h>
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

/* ---------- the path and the program ---------- */

const char *const ev_sys_names[EV_SYS_COUNT] = {"submit",     "executor", "worker",      "rejected",
                                                "unreadable", "lost",     "path_timeout"};
const char *const ev_verdict_names[EV_VERDICT_COUNT] = {"completed", "failed", "timeout", "killed"};
const char *const ev_pathout_names[EV_PATHOUT_COUNT] = {"ok", "system_error", "path_timeout", "lost"};

static bool eq(const char *a, const char *b) { return a && strcmp(a, b) == 0; }

/* The exception a worker (turnout's or Python's) wrote with FAILURE. */
static int failure_class(const char *exc)
{
    static const char *const rejected[] = {"RequestTooLarge", "ExecutorRejected", "NotRegistered", "MalformedMessage",
                                           "InvalidTaskId", "MessageTooLarge", "ContentDisallowed", "DecodeError"};
    if (!exc) return EV_SYS_WORKER;
    if (strncmp(exc, "Executor", 8) == 0) return EV_SYS_EXECUTOR;
    for (size_t i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++)
        if (strcmp(exc, rejected[i]) == 0) return EV_SYS_REJECTED;
    return EV_SYS_WORKER;
}

static ev_class verdict_of(const char *st)
{
    if (eq(st, "completed")) return (ev_class){EV_SYS_OK, VERDICT_COMPLETED};
    if (eq(st, "failed")) return (ev_class){EV_SYS_OK, VERDICT_FAILED};
    if (eq(st, "timeout")) return (ev_class){EV_SYS_OK, VERDICT_TIMEOUT};
    if (eq(st, "killed") || eq(st, "cancelled")) return (ev_class){EV_SYS_OK, VERDICT_KILLED};
    return (ev_class){EV_SYS_EXECUTOR, EV_VERDICT_NONE}; /* "error", or a status no program gives */
}

ev_class evclass_celery(json_t *rec)
{
    const char *st = json_string_value(json_object_get(rec, "status"));
    json_t *res = json_object_get(rec, "result");
    if (eq(st, "SUCCESS")) {
        if (!json_is_object(res) || !json_is_string(json_object_get(res, "status")))
            return (ev_class){EV_SYS_OK, VERDICT_COMPLETED}; /* a plain Celery task returned */
        /* the worker ran it, but the path ended it (e.g. the executor did
         * not answer by the hard time limit) */
        if (json_is_string(json_object_get(res, "system_error"))) return (ev_class){EV_SYS_EXECUTOR, EV_VERDICT_NONE};
        return verdict_of(json_string_value(json_object_get(res, "status")));
    }
    if (eq(st, "FAILURE")) return (ev_class){failure_class(json_string_value(json_object_get(res, "exc_type"))),
                                             EV_VERDICT_NONE};
    if (eq(st, "REVOKED")) {
        json_t *m = json_object_get(res, "exc_message");
        const char *why = json_is_array(m) ? json_string_value(json_array_get(m, 0)) : json_string_value(m);
        if (eq(why, "expired")) return (ev_class){EV_SYS_PATH_TIMEOUT, EV_VERDICT_NONE};
        return (ev_class){EV_SYS_OK, VERDICT_KILLED};
    }
    return (ev_class){EV_SYS_UNREADABLE, EV_VERDICT_NONE};
}

ev_class evclass_legacy(json_t *task)
{
    const char *st = json_string_value(json_object_get(task, "status"));
    const char *outcome = json_string_value(json_object_get(task, "outcome"));
    if (eq(st, "completed")) return (ev_class){EV_SYS_OK, VERDICT_COMPLETED};
    if (eq(st, "cancelled")) return (ev_class){EV_SYS_OK, VERDICT_KILLED};
    if (eq(st, "failed")) {
        if (!outcome || eq(outcome, "failed")) return (ev_class){EV_SYS_OK, VERDICT_FAILED};
        if (eq(outcome, "executor_timeout")) return (ev_class){EV_SYS_EXECUTOR, EV_VERDICT_NONE};
        return verdict_of(outcome);
    }
    return (ev_class){EV_SYS_UNREADABLE, EV_VERDICT_NONE};
}

double evclass_run_seconds(json_t *doc, int is_celery)
{
    json_t *d = json_object_get(is_celery ? json_object_get(doc, "result") : doc, "duration_s");
    return json_is_number(d) && json_number_value(d) >= 0 ? json_number_value(d) : -1;
}

void evclass_waited(ev_class *c, double submitted_at, double done_at, double run_s, double timeout_s)
{
    if (c->sys != EV_SYS_OK || c->verdict == VERDICT_KILLED || submitted_at <= 0 || done_at <= 0 || run_s < 0 ||
        timeout_s <= 0)
        return;
    if (done_at - run_s - submitted_at > timeout_s) c->sys = EV_SYS_PATH_TIMEOUT;
}

enum ev_pathout evclass_pathout(ev_class c)
{
    switch (c.sys) {
    case EV_SYS_OK: return EV_PATH_OK;
    case EV_SYS_LOST: return EV_PATH_LOST;
    case EV_SYS_PATH_TIMEOUT: return EV_PATH_TIMEOUT;
    default: return EV_PATH_SYSTEM_ERROR;
    }
}
