/* completion — how each path finishes work, measured even when no client
 * polls: turnout_evals_completed_total{path,outcome} and
 * turnout_eval_completion_seconds{path} (submit -> terminal state).
 *
 * Every routed eval is in a Redis in-flight set (turnout:inflight:new /
 * :legacy, scored by submit time).  The new path is heard at once from the
 * result records the worker publishes (PSUBSCRIBE celery-task-meta-celery-*)
 * and swept for anything missed; the legacy path is polled (GET /tasks/{id},
 * COMPLETION_POLL_BATCH per COMPLETION_POLL_S, one proxy at a time under a
 * Redis lock).  Removal from the set is the claim: an eval is counted once,
 * however many proxies hear of it.  Entries older than ROUTE_RECORD_TTL_S
 * are given up (turnout_completion_untracked_total). */
#ifndef TURNOUT_COMPLETION_H
#define TURNOUT_COMPLETION_H

typedef struct proxy proxy;
typedef struct completion completion;

#define COMPLETION_LOCK "turnout:lock:completion-poll"

/* EVAL script for a lease: KEYS[1] lock, ARGV[1] owner, ARGV[2] ms.
 * Returns 1 when the owner holds it (taken or renewed), 0 otherwise. */
extern const char completion_lock_script[];

completion *completion_new(proxy *p, char err[256]);
/* No more polling (drain). */
void completion_stop(completion *c);
void completion_free(completion *c);

#endif
