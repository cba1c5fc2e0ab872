/* lq — turnout-legacyd's in-memory task store: a FIFO of queued tasks, an
 * eval_id index, and finished results kept in completion order for pruning.
 *
 * Every task is in the index.  A queued task is also in the FIFO, a finished
 * one (completed, failed, cancelled) in the results list; a processing task
 * is in neither list.  Enqueue, take, requeue, cancel, finish, lookup and
 * prune are O(1) (prune: per task removed); only lq_position walks. */
#ifndef TURNOUT_LEGACYD_QUEUE_H
#define TURNOUT_LEGACYD_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef enum lq_status {
    LQ_QUEUED,
    LQ_PROCESSING,
    LQ_COMPLETED,
    LQ_FAILED,
    LQ_CANCELLED,
} lq_status;

/* Fields are owned by the store and read-only outside legacyd_queue.c;
 * a task pointer is valid until lq_prune or lq_free removes it. */
typedef struct lq_task {
    char *eval_id;
    char *code;              /* NULL once finished: results do not need it */
    size_t code_len;
    char *language, *engine;
    long long timeout;       /* seconds */
    json_t *priority;        /* the submitted JSON value (owned reference) */
    lq_status status;
    double queued_at, started_at, completed_at; /* wall clock; 0 = not yet */
    char *output, *error;    /* finished tasks; may be NULL; may hold NUL bytes (JSON \u0000) */
    size_t output_len, error_len;
    double duration_s;       /* the executor's run time; < 0 unknown */
    char *outcome;           /* executor's status word (e.g. "timeout"); may be NULL */
    bool has_exit_code;
    long long exit_code;
    uint64_t token;          /* changes on every take: tells a stale executor reply apart */
    unsigned attempts;       /* executor calls that ended without a verdict */

    /* private to the store */
    struct lq_task *prev, *next; /* FIFO or results list */
    struct lq_task *hnext;       /* index chain */
    uint64_t hash;
} lq_task;

typedef struct lq lq;

typedef struct lq_counts {
    size_t queued, processing, finished, total;
} lq_counts;

/* NULL when out of memory. */
lq *lq_new(void);
void lq_free(lq *q);

const char *lq_status_name(lq_status s);
bool lq_is_finished(const lq_task *t);

/* Borrowed; NULL when unknown. */
lq_task *lq_find(const lq *q, const char *eval_id);

/* Appends a new queued task (strings copied, priority referenced).  The caller
 * checked that eval_id is unknown.  NULL when out of memory. */
lq_task *lq_push(lq *q, const char *eval_id, const char *code, size_t code_len,
                 const char *language, const char *engine, long long timeout,
                 json_t *priority, double now);

/* Oldest queued task, now processing with a fresh token; NULL when empty. */
lq_task *lq_take(lq *q, double now);

/* A processing task goes back to the head of the FIFO (executor busy or
 * unreachable): it keeps its place ahead of newer tasks. */
void lq_requeue_front(lq *q, lq_task *t);

/* How a task ended.  output and error are output_len / error_len bytes
 * (they may hold NUL bytes) or NULL. */
typedef struct lq_result {
    const char *output;
    size_t output_len;
    const char *error;
    size_t error_len;
    const char *outcome;     /* the executor's status word, or NULL */
    bool has_exit_code;
    long long exit_code;
    double duration_s;       /* < 0 unknown */
} lq_result;

/* A queued or processing task becomes finished with `status` (COMPLETED,
 * FAILED or CANCELLED); the result's strings are copied.  Returns -1 when
 * out of memory, leaving the task as it was. */
int lq_finish(lq *q, lq_task *t, lq_status status, const lq_result *r, double now)
    __attribute__((warn_unused_result));

/* 1-based place in the FIFO, 0 when not queued.  Walks from both ends, so
 * it costs min(position, queued - position). */
size_t lq_position(const lq *q, const lq_task *t);

/* Forgets finished tasks completed before `cutoff`; returns how many. */
size_t lq_prune(lq *q, double cutoff);

lq_counts lq_get_counts(const lq *q);

#endif
