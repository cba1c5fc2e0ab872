/* evlookup — where an evaluation stands now, on the path its route record
 * names, in the API's words (queued, running, retrying, completed, failed,
 * timeout, cancelled).  For replies that only need the state, not the
 * whole status document: a duplicate submission is answered with it. */
#ifndef TURNOUT_EVLOOKUP_H
#define TURNOUT_EVLOOKUP_H

typedef struct proxy proxy;
typedef struct json_t json_t;

/* status: NULL when the path could not tell (unreachable, unknown). */
typedef void (*evlookup_cb)(const char *status, void *arg);

/* A terminal outcome kept in the record answers at once (before this
 * returns); otherwise the path's backend is asked (get_task).  `record` is borrowed for the call.
 * cb is called exactly once. */
void evlookup_status(proxy *p, const char *eval_id, json_t *record, evlookup_cb cb, void *arg);

#endif
