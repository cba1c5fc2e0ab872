/* keys — turnout's own Redis keys that more than one program reads or
 * writes (the worker writes them, the proxy's status, cancel and DLQ
 * handlers read them).  One definition, so the two sides cannot drift.
 * The README's Redis section documents each. */
#ifndef TURNOUT_KEYS_H
#define TURNOUT_KEYS_H

/* + task id: set while an execution runs (its executor, for terminate) */
#define KEY_RUNNING_PREFIX "turnout:running:"
/* hash task id -> message of every retry waiting for its ETA */
#define KEY_SCHEDULE_IDS "turnout:schedule:ids"
/* zset of those messages by due time */
#define KEY_SCHEDULE "turnout:schedule"

#endif
