/* celery — the Celery protocol v2 message as kombu's Redis transport stores
 * it (shared/WIRE.md §A, §B), and the priority list names. */
#ifndef TURNOUT_CELERY_H
#define TURNOUT_CELERY_H

#include <stddef.h>

typedef struct json_t json_t;

/* kombu's default priority_steps and the list-name separator (0x06 0x16). */
#define CELERY_SEP "\x06\x16"
#define CELERY_SEP_LEN 2
#define CELERY_NSTEPS 4
extern const int celery_priority_steps[CELERY_NSTEPS]; /* 0, 3, 6, 9 */

typedef struct celery_task {
    const char *task_name;  /* headers.task */
    const char *task_id;    /* headers.id, correlation_id, root_id default */
    const char *queue;      /* routing_key */
    int priority;           /* 0..9, lower first (kombu on Redis) */
    json_t *args;           /* array, borrowed */
    json_t *kwargs;         /* object, borrowed */
    int retries;
    const char *eta;        /* ISO-8601 or NULL */
    const char *expires;    /* ISO-8601 or NULL */
    double hard_limit_s;    /* 0 = null */
    double soft_limit_s;    /* 0 = null */
    const char *origin;     /* "<name>@<host>" */
    const char *root_id;    /* NULL = task_id */
    const char *parent_id;  /* NULL = null */
} celery_task;

/* The step a 0..9 priority maps to (bisect over the steps), clamping. */
int celery_priority_step(int priority);

/* Writes the Redis list name of `queue` at `priority` into buf (binary:
 * bare name for step 0, else name SEP step).  Returns the length, or 0 when
 * it does not fit. */
size_t celery_queue_key(const char *queue, int priority, char *buf, size_t cap);

/* Encodes the envelope (one Redis list element).  Returns a new string the
 * caller frees with free(), length in *len; NULL with err on failure. */
char *celery_encode(const celery_task *t, size_t *len, char err[256]);

/* Python-style repr of a JSON value for argsrepr/kwargsrepr, truncated to
 * `max` bytes with "...".  New string, caller frees; NULL on OOM. */
char *celery_repr(const json_t *v, size_t max);

#endif
