/* wscripts — the worker's Lua scripts: each is one atomic step in Redis, so
 * a worker killed at any instant leaves every message in exactly one place
 * (a queue list, `unacked`, the retry schedule, or the DLQ). */
#ifndef TURNOUT_WSCRIPTS_H
#define TURNOUT_WSCRIPTS_H

/* take: claim an executor slot and pop the first non-empty list, recording
 * the message in kombu's unacked/unacked_index and in the worker's tag set.
 * KEYS: the queue lists in consumption order.
 * ARGV: now, lease_until, tagset_key, unique_token, nexec, start,
 *       cap[0..nexec), base queue name per KEY, result key prefix,
 *       max message bytes.
 * Returns {-1} no executor slot free, {0} all lists empty, or
 * {key_index (1-based), message, delivery_tag, executor_index, task_id,
 *  result, revoke marker, size}: size 0 for a whole message, else the
 * size of one over the limit, of which `message` is the head. */
extern const char wscript_take[];

/* The terminal result and the ack in one step (result backend = broker):
 * KEYS[1] result key; ARGV: record, expiry s, tag, tagset key, executor
 * slot key, running key.  The result is never written over a terminal one
 * (returns 0 then, 1 when written); the message is acked either way. */
extern const char wscript_finish[];

/* restore_tags: put back every message whose tag is in the set KEYS[1]
 * (RPUSH to the bare queue, redelivered), drop the set; ARGV[1] = nexec
 * (slots of those tags are released).  Returns the number restored. */
extern const char wscript_restore_tags[];

/* give_back: put one message back now (KEYS[1] = tag set, ARGV[1] = tag,
 * ARGV[2] = nexec), as restore_tags does for a whole set.  Returns 0/1. */
extern const char wscript_give_back[];

/* restore_expired: under unacked_mutex (ARGV[1] token, ARGV[2] px), put back
 * unacked messages taken before ARGV[3] (= now - visibility timeout).
 * Returns the number restored, or -1 when another restorer holds the mutex. */
extern const char wscript_restore_expired[];

/* move_due: move up to ARGV[2] due envelopes (score <= ARGV[1]) from
 * turnout:schedule back to their priority list, dropping revoked ones.
 * Returns {moved, dropped, revoked task ids...}: the caller stores REVOKED
 * for those (results may live in another Redis). */
extern const char wscript_move_due[];

/* dlq_prune: delete up to ARGV[2] DLQ entries older than ARGV[1]. */
extern const char wscript_dlq_prune[];

#endif
