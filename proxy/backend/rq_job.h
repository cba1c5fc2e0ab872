/* rq_job — RQ's job, encoded for Queue.enqueue's layout and read back in
 * the backend vocabulary.  Results come from code the proxy does not
 * control: a pickled value is read by the restricted decoder
 * (common/pickle.h), which refuses anything that would import or call. */
#ifndef TURNOUT_RQ_JOB_H
#define TURNOUT_RQ_JOB_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"

struct redisReply;

/* RQ's timestamp of wall-clock `t`: %Y-%m-%dT%H:%M:%S.%fZ. */
void rq_job_time(double t, char out[40]);

/* Job.data for the call function(eval_id, code, language, timeout=,
 * engine=, priority=), pickled (protocol RQ's default reads) or as JSON;
 * new bytes (caller frees), NULL on OOM. */
unsigned char *rq_job_data(const char *function, bool pickle, const bk_job *j, size_t *len);

/* The description RQ's get_call_string makes of that call. */
void rq_job_description(const char *function, const bk_job *j, char *out, size_t cap);

/* The job hash `h` (HGETALL), the newest entry of rq:results:<id>
 * (XREVRANGE ... COUNT 1) and the job's queue position (0-based, or not
 * an integer) as a task doc: status queued|processing|completed|failed|
 * cancelled, outcome, output, error, exit_code, duration_s, queued_at,
 * started_at, completed_at, position, queue.  New reference; NULL on OOM. */
json_t *rq_job_doc(bool pickle, const char *eval_id, const struct redisReply *h, const struct redisReply *results,
                   const struct redisReply *pos);

#endif
