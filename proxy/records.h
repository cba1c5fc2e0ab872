/* records — route records: what the proxy remembers of every evaluation it
 * routed (turnout:route:<eval_id>, JSON, with ROUTE_RECORD_TTL_S), so that
 * status, cancel and idempotency answer on whichever path the eval went,
 * from any proxy, after restarts.  docs/records.md has the design.
 *
 * The new path writes the record and pushes the message in one Lua script
 * (set-if-absent, then LPUSH): a second submission of the same eval_id sees
 * the record and enqueues nothing.  The legacy path claims the record first
 * (set-if-absent), calls the Queue Service, and releases the claim when the
 * call fails.  When Redis is away the legacy path still works; its records
 * wait in a bounded in-memory table and are written when Redis returns. */
#ifndef TURNOUT_RECORDS_H
#define TURNOUT_RECORDS_H

#include <stdbool.h>
#include <stddef.h>

#include "router.h"
#include "submission.h"

typedef struct proxy proxy;
typedef struct records records;
typedef struct json_t json_t;

#define ROUTE_PREFIX "turnout:route:"
#define INFLIGHT_NEW "turnout:inflight:new"
#define INFLIGHT_LEGACY "turnout:inflight:legacy"
#define ROUTE_KEY_MAX (sizeof(ROUTE_PREFIX) + SUB_MAX_EVAL_ID)

enum rec_outcome {
    REC_WRITTEN,   /* the record is ours (and, new path, the message is queued) */
    REC_DUPLICATE, /* a record was there: `existing` holds it, nothing was queued */
    REC_EXPIRED,   /* it reached Redis past its deadline and did nothing */
    REC_ABSENT,    /* records_lookup: no record */
    REC_FULL,      /* new path: the queue holds CELERY_QUEUE_MAX_DEPTH (`depth`); nothing done */
    REC_FAILED,    /* Redis refused or failed: `err` says why; with `lost`, it was sent
                      and no reply came, so whether it acted is not known */
};

typedef struct rec_result {
    enum rec_outcome outcome;
    long long depth;      /* new path: list length after the push */
    const char *existing; /* REC_DUPLICATE: the stored record (borrowed) */
    const char *err;      /* REC_FAILED */
    bool timeout;         /* REC_FAILED by a deadline */
    bool lost;            /* REC_FAILED: sent, no reply (timeout or connection lost) */
} rec_result;

typedef void (*rec_cb)(const rec_result *res, void *arg);

records *records_new(proxy *p);
void records_free(records *rs);

/* The record's JSON text: {eval_id, path, reason, priority, bucket,
 * submitted_at}.  New string (caller frees), NULL on OOM. */
char *records_build(const submission *sub, enum route_path path, const route_decision *dec, double submitted_at);

/* A stored record, parsed; NULL when it is not a record. */
json_t *records_parse(const char *text, size_t len);

/* The path a parsed record names: PATH_UNKNOWN for none (no record, or an
 * older shape). */
enum route_path records_path(json_t *rec);

void records_key(const char *eval_id, char key[ROUTE_KEY_MAX]);

/* Legacy path, before the Queue Service call: the record, if absent (or
 * already this very record: a retried claim).  0: cb will be called once;
 * -1: not sent (Redis away, or its clock not measured yet). */
int records_claim(records *rs, const char *eval_id, const char *record, rec_cb cb, void *arg)
    __attribute__((warn_unused_result));

/* The record as Redis holds it now (GET): REC_DUPLICATE with `existing`,
 * REC_ABSENT, or REC_FAILED.  0: cb will be called once; -1: not sent. */
int records_lookup(records *rs, const char *eval_id, rec_cb cb, void *arg) __attribute__((warn_unused_result));

/* The legacy call failed: the claim goes (only if it is still ours). */
void records_release(records *rs, const char *eval_id, const char *record);

/* The legacy call succeeded: the eval is tracked for completion.  With
 * `claimed` false (Redis was away) the record waits in memory. */
void records_confirm_legacy(records *rs, const char *eval_id, const char *record, double submitted_at,
                            bool claimed);

/* A legacy call that may have acted there although it failed (timeout,
 * connection lost after sending, unreadable 2xx): the record stays, marked
 * {"unconfirmed": true}, so that a resubmission of the eval_id goes to
 * legacy again (which refuses a second copy with 409) and never to the
 * other path.  records_mark_unconfirmed: the text with the mark set or
 * removed (new string, NULL on OOM).  records_replace_legacy replaces the
 * record `record` (if it is still there) with `replacement`, or holds the
 * replacement while Redis is away, and tracks the eval for completion. */
char *records_mark_unconfirmed(const char *record, bool unconfirmed);
bool records_is_unconfirmed(json_t *rec);
void records_replace_legacy(records *rs, const char *eval_id, const char *record, const char *replacement,
                            double submitted_at, bool claimed);

/* Writes held records now (called when Redis comes back, and by timers). */
void records_flush(records *rs);

size_t records_pending(const records *rs);

/* The record held in memory for eval_id (Redis was away when it was
 * routed), or NULL: what answers a resubmission while Redis is still away. */
const char *records_held_find(const records *rs, const char *eval_id);

/* A claim whose outcome was never learnt, given up: when Redis is back the
 * record is deleted if it is still this one (nothing ran under it). */
void records_release_later(records *rs, const char *eval_id, const char *record);

#endif
