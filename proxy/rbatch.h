/* rbatch — a few Redis commands sent together (pipelined, possibly on two
 * connections) whose replies are copied and handed over at once, when the
 * last one has arrived.  Used by the DLQ and cancel handlers, which need
 * "send N commands, then decide on all N replies".
 *
 * Life cycle: rbatch_new → rbatch_add × n → rbatch_run.  The done callback
 * is called exactly once, after run, when every accepted command completed
 * (at once from rbatch_run when none was accepted).  The batch and its
 * replies stay valid until rbatch_free, which the done callback calls. */
#ifndef TURNOUT_RBATCH_H
#define TURNOUT_RBATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "rclient.h"

#define RBATCH_MAX 8

typedef struct rbatch rbatch;

/* A copy of a hiredis reply (owned by the batch). */
typedef struct rbatch_reply {
    int type;                       /* REDIS_REPLY_*; 0 when no reply arrived */
    long long integer;
    char *str;                      /* STRING, STATUS, ERROR: NUL-terminated */
    size_t len;
    size_t elements;
    struct rbatch_reply *element;   /* ARRAY */
} rbatch_reply;

typedef void (*rbatch_done_fn)(rbatch *b, void *arg);

/* NULL on out of memory. */
rbatch *rbatch_new(rbatch_done_fn done, void *arg);

/* Sends one command now (argv copied by hiredis).  Returns its slot index,
 * or -1 when it was not sent (connection down, OOM, batch full): the batch
 * then reports an error. */
int rbatch_add(rbatch *b, rclient *rc, int argc, const char **argv, const size_t *argvlen);
/* The same for a script by its SHA1 (rclient_eval): argv = numkeys, keys,
 * args. */
int rbatch_add_eval(rbatch *b, rclient *rc, rclient_script *script, int argc, const char **argv,
                    const size_t *argvlen);

/* No more commands; done fires when the sent ones have completed. */
void rbatch_run(rbatch *b);

/* The reply in slot i (borrowed), or NULL when that command failed. */
const rbatch_reply *rbatch_at(const rbatch *b, int i);

/* First transport failure ("redis not connected", "timeout", ...), or NULL
 * when every command got a reply (a Redis error reply is a reply). */
const char *rbatch_error(const rbatch *b);

/* True when the failure was a deadline (for the upstream error reason). */
bool rbatch_timed_out(const rbatch *b);

void rbatch_free(rbatch *b);

/* Reply helpers: a STRING reply's text or NULL (nil, error, other type). */
const char *rbatch_str(const rbatch_reply *r, size_t *len);
/* INTEGER reply, or a STRING holding an integer; `dflt` otherwise. */
long long rbatch_int(const rbatch_reply *r, long long dflt);
/* A Redis error reply's text, or NULL. */
const char *rbatch_redis_error(const rbatch_reply *r);

/* Proxy side: answers `r` 503 + Retry-After for a batch that failed (the
 * Redis error reply `redis_err` when there was one, else the batch's
 * transport failure) and counts turnout_upstream_errors_total{path="new"}.
 * `what` says what was being done, for the message ("reading the DLQ"). */
typedef struct preq preq;
void rbatch_finish_failure(preq *r, const rbatch *b, const char *redis_err, const char *what);

#endif
