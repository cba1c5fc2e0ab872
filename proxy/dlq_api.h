/* dlq_api — the dead-letter queue API of DESIGN §4 over the Redis layout of
 * docs/worker-redis.md (turnout:dlq index zset, turnout:dlq:entry:<tid>
 * strings, turnout:dlq:classes counts).  Reads are paged through the index
 * (ZREVRANGE + MGET), never a scan; writes (retry, delete) need the admin
 * token and run as one Lua script each, so they are atomic. */
#ifndef TURNOUT_DLQ_API_H
#define TURNOUT_DLQ_API_H

#include <stdbool.h>
#include <stddef.h>
#include "dlq_op.h"

struct evhttp_request;
typedef struct proxy proxy;

#define DLQ_LIMIT_DEFAULT 50
#define DLQ_LIMIT_MAX 500
#define DLQ_OFFSET_MAX 1000000000L

/* Parses "limit=&offset=&eval_id=" (NULL = defaults); unknown parameters
 * are ignored.  0, or -1 with msg naming the parameter and the range. */
int dlq_api_parse_query(const char *query, dlq_query *out, char msg[256])
    __attribute__((warn_unused_result));

enum dlq_target { DLQ_T_LIST, DLQ_T_STATS, DLQ_T_ENTRY, DLQ_T_RETRY, DLQ_T_BAD_ID, DLQ_T_NONE };

/* The task id rule, shared with the worker: 1..CELERY_TASK_ID_MAX bytes of
 * valid UTF-8 without control characters (C0, DEL, C1); spaces and any
 * other character allowed.  (Ids the worker refuses are dead-lettered
 * under invalid-id-<40 hex>, which the rule admits.) */
bool dlq_api_valid_task_id(const char *id, size_t len);

/* Which endpoint a path under /api/dlq names (`path` as sent, still
 * percent-encoded).  For ENTRY and RETRY, tid gets the task id, decoded
 * from its path segment (%20 a space, %2F a '/', '+' stays '+'), and
 * tid_len its length; BAD_ID: the segment is not percent-encoding of an
 * id the rule admits. */
enum dlq_target dlq_api_target(const char *path, char tid[DLQ_TASK_ID_MAX + 1], size_t *tid_len);

/* Handles every path under /api/dlq (the caller checked the prefix).
 * Replies exactly once. */
void dlq_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

/* Refreshes the turnout_dlq_size gauge (ZCARD); called by the depth timer. */
void dlq_api_poll(proxy *p);

#endif
