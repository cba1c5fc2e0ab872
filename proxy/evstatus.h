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

#endif
