/* evstatus — one vocabulary for an evaluation's state on either path:
 * queued, running, retrying, completed, failed, timeout, cancelled.
 * Pure functions, so the unit tests pin the mapping. */
#ifndef TURNOUT_EVSTATUS_H
#define TURNOUT_EVSTATUS_H

typedef struct json_t json_t;

/* A Celery result record (celery-task-meta-*) in the API's words; NULL
 * when it says nothing yet (PENDING, unknown state). */
const char *evstatus_from_celery(json_t *rec);

/* Index of a terminal status in pm_outcome_names (completed, failed,
 * timeout, cancelled), -1 for a state that is not terminal. */
int evstatus_outcome(const char *status);

/* Seconds since the epoch of an ISO-8601 UTC time ("2026-11-22T08:42:30.022342",
 * optionally with Z or +00:00); -1 when it is not one. */
double evstatus_parse_iso(const char *text);

/* ---------- why a finished eval ended: the path, and the program ----------
 *
 * Two independent answers (README "The canary judge").  The path's: did it
 * take, run and answer the eval (ok), or not, and why (a system error of a
 * class).  The program's: what the submitted code did (its verdict), when
 * it ran at all.  A program that exits non-zero is a verdict, not an
 * error of the path. */
enum ev_sys {
    EV_SYS_OK = -1,
    EV_SYS_SUBMIT,       /* the path could not take the submission (5xx, fallback) */
    EV_SYS_EXECUTOR,     /* the executor failed: unreachable, errors, past its hard limit */
    EV_SYS_WORKER,       /* the worker failed it for another reason (dead-lettered, crashed) */
    EV_SYS_REJECTED,     /* taken, then refused as unrunnable (too large, malformed, unknown task) */
    EV_SYS_UNREADABLE,   /* its result could not be read */
    EV_SYS_LOST,         /* it never reported an end: the backend forgot it */
    EV_SYS_PATH_TIMEOUT, /* it waited longer than its own timeout before it ran, or expired queued */
    EV_SYS_COUNT
};
enum ev_verdict { EV_VERDICT_NONE = -1, VERDICT_COMPLETED, VERDICT_FAILED, VERDICT_TIMEOUT, VERDICT_KILLED, EV_VERDICT_COUNT };
/* the path outcome of a finished eval: ok, system_error, path_timeout, lost */
enum ev_pathout { EV_PATH_OK, EV_PATH_SYSTEM_ERROR, EV_PATH_TIMEOUT, EV_PATH_LOST, EV_PATHOUT_COUNT };

extern const char *const ev_sys_names[EV_SYS_COUNT];
extern const char *const ev_verdict_names[EV_VERDICT_COUNT];
extern const char *const ev_pathout_names[EV_PATHOUT_COUNT];

typedef struct ev_class {
    int sys;     /* enum ev_sys */
    int verdict; /* enum ev_verdict */
} ev_class;

/* A terminal Celery result record (celery-task-meta-*), classified. */
ev_class evclass_celery(json_t *rec);
/* A terminal task of the legacy Queue Service protocol, classified. */
ev_class evclass_legacy(json_t *task);
/* The program's run time a result reports (seconds; -1 when it does not). */
double evclass_run_seconds(json_t *doc, int is_celery);
/* An eval that ran, but only after waiting (submitted -> started, i.e.
 * done - run time - submitted) longer than its own timeout, was made to
 * wait by the path: a path timeout, whatever its verdict.  Unknown times
 * (<= 0, run < 0) change nothing. */
void evclass_waited(ev_class *c, double submitted_at, double done_at, double run_s, double timeout_s);
enum ev_pathout evclass_pathout(ev_class c);

#endif
