/* celery_redis — the new path behind the backend interface (backend.h):
 * Celery protocol v2 messages on kombu's Redis priority lists, in the
 * layout turnout-worker and Python Celery workers consume.
 *
 *   submit       the route record, the message and the in-flight entry in
 *                one script (pscript_submit_new): writes_record, so a
 *                second submission of an eval_id finds the record and
 *                enqueues nothing, and a lost reply is settled by reading
 *                the record back (dispatch.c)
 *   get_task     the result record (celery-task-meta-*), the worker's
 *                running marker and the retry schedule, in the API's words;
 *                a message still in its list is not indexed: NOT_FOUND
 *                (queued_unindexed)
 *   cancel_task  the revoke marker, the schedule entry, the broadcast to
 *                every worker and a REVOKED result, in one script
 *   queue_status the depth of each priority list, unacked, retries, DLQ
 *   health       PING
 *
 * It lives beside the route records, not in proxy/backend/, because its
 * submit writes them: the script and the record are one contract. */
#ifndef TURNOUT_CELERY_REDIS_H
#define TURNOUT_CELERY_REDIS_H

#include "backend.h"

typedef struct proxy proxy;

/* The new path of `p` (its broker, result backend and settings); NULL on
 * OOM. */
backend *celery_redis_new(proxy *p);

#endif
