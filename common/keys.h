/* keys — the Redis keys, channels and shared values that more than one
 * program reads or writes (the worker writes them, the proxy's status,
 * cancel, DLQ and stats handlers read them; Lua scripts on both sides name
 * them).  One definition, so the two sides cannot drift.  The README's
 * Redis section and docs/worker-redis.md document each. */
#ifndef TURNOUT_KEYS_H
#define TURNOUT_KEYS_H

/* + task id: set while an execution runs (its executor, for terminate) */
#define KEY_RUNNING_PREFIX "turnout:running:"
/* hash task id -> message of every retry waiting for its ETA */
#define KEY_SCHEDULE_IDS "turnout:schedule:ids"
/* zset of those messages by due time */
#define KEY_SCHEDULE "turnout:schedule"

/* + task id: a cancel (revoke) marker, checked before and after dispatch */
#define KEY_REVOKED_PREFIX "turnout:revoked:"
/* its lifetime: 24 h, as text for commands and scripts and as a number */
#define KEY_REVOKED_TTL_S_TEXT "86400"
#define KEY_REVOKED_TTL_S 86400
/* pub/sub channel: a cancel's notice to every turnout-worker */
#define KEY_REVOKE_CHANNEL "turnout:revoke"

/* the dead-letter queue: zset of task ids by time, one entry each, and a
 * hash exception class -> count */
#define KEY_DLQ_INDEX "turnout:dlq"
#define KEY_DLQ_ENTRY_PREFIX "turnout:dlq:entry:"
#define KEY_DLQ_CLASSES "turnout:dlq:classes"

/* kombu's Redis transport: hash delivery tag -> message taken and not yet
 * acked, and the zset of those tags by time taken */
#define KEY_UNACKED "unacked"
#define KEY_UNACKED_INDEX "unacked_index"

/* the executor pool: + executor index, a zset of the tags it runs */
#define KEY_POOL_SLOTS_PREFIX "turnout:pool:slots:"

#endif
