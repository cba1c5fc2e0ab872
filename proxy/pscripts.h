/* pscripts — every Lua script the proxy sends, in one place, each one
 * atomic step in Redis, sent by its SHA1 (rclient_eval: the text goes over
 * the wire only when Redis answers NOSCRIPT).  The scripts that act on a
 * submission (submit_new, claim) first check a deadline in Redis's own
 * clock (rclient_deadline), so one that arrives after the proxy gave up on
 * it does nothing.  Who calls each is named in brackets; the key names are
 * in keys.h and the callers' headers. */
#ifndef TURNOUT_PSCRIPTS_H
#define TURNOUT_PSCRIPTS_H

#include "rclient.h"

/* submit_new (celery_redis): the new path's submission in one step: the route
 * record, the message on its priority list and the in-flight entry.
 * KEYS: route key, queue list, in-flight zset, then every priority list of
 * the queue.  ARGV: record, TTL, message, eval id, submitted_at, deadline,
 * depth ceiling (0: none).  {1, depth} queued; {0, record} when the eval id
 * already had one; {2, 0} past the deadline; {3, depth} the queue is full. */
extern rclient_script pscript_submit_new;

/* claim (records): the legacy path's route record, before the legacy call.
 * KEYS: route key.  ARGV: record, TTL, deadline.  {1, ''} claimed (also
 * when the record there is this very one: an earlier attempt whose reply
 * was lost), {0, record} taken, {2, 0} past the deadline. */
extern rclient_script pscript_claim;

/* release (records): KEYS: route key.  ARGV: record.  Deletes the claim if it is still ours. */
extern rclient_script pscript_release;

/* replace (records): KEYS: route key, legacy in-flight zset.  ARGV: the claim, its
 * replacement, eval id, submitted_at.  Replaces the claim (keeping its TTL)
 * if it is still this one, and tracks the eval for completion. */
extern rclient_script pscript_replace;

/* flush (records): KEYS: route key, legacy in-flight zset.  ARGV: record, TTL, eval id,
 * submitted_at.  Writes a held record unless one is there (another proxy,
 * or a claim that did reach Redis); tracks it when the record is this one. */
extern rclient_script pscript_flush;

/* count (completion): KEYS: in-flight zset, route key.  ARGV: eval id, outcome ('' = given
 * up), end time, and '' or why the result could not be read (a JSON
 * string).  When this call took the eval out of the set: the record (''
 * when it expired), which from now on also carries the outcome, the end
 * time and that reason as "error" (so status and cancel still know after
 * the result expired); nil otherwise. */
extern rclient_script pscript_count;

/* lease (completion and canary): KEYS: lock.  ARGV: owner, ms.  1 when this owner holds it now. */
extern rclient_script pscript_lease;

/* canary_cas (canary): KEYS: state, history.  ARGV: expected version, new state, history entry
 * ('' = none), history length.  1 when written, 0 when the version moved. */
extern rclient_script pscript_canary_cas;

/* rollout_update (rollout): KEYS: state, history.  ARGV: start state (when Redis holds none), patch,
 * now, by, reason, channel, history length, expected version ('' = any).
 * {1, new state} or {0, current state} when the version moved. */
extern rclient_script pscript_rollout_update;

/* shadow_start (shadow): KEYS: shadow hash, queue list, in-flight set.  ARGV: message, eval id,
 * now, TTL.  Nothing when this eval already has a shadow. */
extern rclient_script pscript_shadow_start;

/* shadow_report (shadow): KEYS: shadow hash.  ARGV: side, verdict JSON.  nil: no shadow (or
 * compared already); 0: waiting for the other side; {legacy, new} when
 * this report completed the pair (the hash is gone then). */
extern rclient_script pscript_shadow_report;

/* revoke (cancel_api): KEYS: revoked marker, schedule zset, schedule ids hash.
 * ARGV: task id, marker JSON, turnout:revoke payload ("" = none), pidbox
 * channel, pidbox envelope.  Removes a pending retry (its schedule entry),
 * sets the marker the worker checks before and after dispatch, and
 * broadcasts to turnout and Python workers.  Returns 1 when a schedule
 * entry was removed. */
extern rclient_script pscript_revoke;

/* dlq_delete (dlq_api): KEYS: entry, index, classes.  ARGV: task id.  1 = removed, 0 = unknown. */
extern rclient_script pscript_dlq_delete;

/* dlq_retry (dlq_api): KEYS: entry, index, classes, queue list, revoked marker[, result key].
 * ARGV: task id, the entry as read, the envelope to push.
 * 1 = re-published, 0 = no such entry, -1 = the entry changed since read.
 * The result key goes first (a FAILURE must not block the re-run), the
 * revoked marker too (an operator's explicit re-run wins over an old cancel). */
extern rclient_script pscript_dlq_retry;

#endif
