/* cancel_api — POST /api/eval/{id}/cancel[?terminate=true] for the new
 * path (DESIGN §4, §6; Redis layout in docs/worker-redis.md).
 *
 * One pipelined round reads the result record, turnout:running:<tid> and
 * turnout:schedule:ids; then, by state:
 *   finished (SUCCESS/FAILURE/REVOKED)  → 409 already_finished
 *   running, no terminate               → 409 running
 *   running, terminate                  → revoked marker + turnout:revoke + pidbox; 200
 *   retry pending                       → schedule entry removed, marker, REVOKED; 200
 *   otherwise (queued)                  → marker, REVOKED; 200
 * The marker and the broadcasts go in one Lua script; REVOKED is written
 * with the shared "write unless terminal" script (common/results.h). */
#ifndef TURNOUT_CANCEL_API_H
#define TURNOUT_CANCEL_API_H

#include <stdbool.h>
#include <stddef.h>

struct evhttp_request;
typedef struct proxy proxy;

#define CANCEL_EVAL_ID_MAX 128

/* When `path` is /api/eval/{id}/cancel: true with id and len giving the id segment
 * (borrowed, not yet validated); id and len may be NULL. */
bool cancel_api_match(const char *path, const char **id, size_t *len);

/* Parses the terminate parameter of the query (NULL = absent = false):
 * true|1 or false|0.  0, or -1 for another value. */
int cancel_api_parse_terminate(const char *query, bool *terminate) __attribute__((warn_unused_result));

/* Builds the kombu envelope of a Celery pidbox revoke for `task_id`
 * (WIRE.md §D), expiring `expires` (unix seconds).  New string (caller
 * frees), NULL on OOM. */
char *cancel_api_pidbox_revoke(const char *task_id, bool terminate, double expires);

/* Handles the request (the caller checked cancel_api_match).  Replies once. */
void cancel_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

#endif
