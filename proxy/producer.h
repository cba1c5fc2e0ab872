/* producer — the new path's message: a submission becomes the Celery
 * protocol v2 message (kombu's envelope) that the route-record script
 * pushes onto the kombu priority list of its priority (records.c). */
#ifndef TURNOUT_PRODUCER_H
#define TURNOUT_PRODUCER_H

#include "jsonw.h"
#include "submission.h"

typedef struct producer producer;

/* Borrowed queue and task_name: they must outlive the producer. */
producer *producer_new(const char *queue, const char *task_name);
void producer_free(producer *p);

/* Builds the Redis list element for `sub`; new string, caller frees. */
char *producer_encode(const producer *p, const submission *sub, size_t *len, char err[256]);
/* The same appended to `out` (no allocation when out has room): 0, or -1
 * with err. */
int producer_encode_into(const producer *p, const submission *sub, jsonw *out, char err[256])
    __attribute__((warn_unused_result));
/* The same with another task id, eval id argument and priority (shadow
 * tasks run as their own eval, so executors never confuse the two runs). */
char *producer_encode_task(const producer *p, const submission *sub, const char *task_id, const char *eval_id,
                           int priority, size_t *len, char err[256]);

#endif
