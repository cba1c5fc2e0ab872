/* producer — the new path: a submission becomes a Celery protocol v2 message
 * LPUSHed onto the kombu priority list of its priority (DESIGN §5). */
#ifndef TURNOUT_PRODUCER_H
#define TURNOUT_PRODUCER_H

#include "jsonw.h"
#include "rclient.h"
#include "submission.h"

typedef struct producer producer;

/* ok: the message is in Redis; depth = list length after the push.
 * Otherwise err says why (timeout, connection lost, server error text). */
typedef void (*producer_cb)(bool ok, long long depth, const char *err, void *arg);

/* Borrowed rc, queue, task_name: they must outlive the producer. */
producer *producer_new(rclient *rc, const char *queue, const char *task_name);
void producer_free(producer *p);

/* 0: accepted, cb will be called exactly once.  -1: not sent (Redis not
 * connected, out of memory), cb never called, err filled. */
int producer_submit(producer *p, const submission *sub, producer_cb cb, void *arg, char err[256])
    __attribute__((warn_unused_result));

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
