/* cancel_api — POST /api/eval/{id}/cancel[?terminate=true], on whichever
 * path the eval went (its route record says; an unrouted one is looked for
 * on each path in turn), through the backend interface:
 *   get_task, then by its state:
 *   finished                       → 409 already_finished
 *   running, no terminate          → 409 running
 *   running, terminate             → cancel_task(terminate) where the path can stop it; 200
 *   queued, or a retry pending     → cancel_task; 200
 * A cancel refused because the eval moved on in between is answered with
 * its state then. */
#ifndef TURNOUT_CANCEL_API_H
#define TURNOUT_CANCEL_API_H

#include <stdbool.h>
#include <stddef.h>

struct evhttp_request;
typedef struct proxy proxy;

#define CANCEL_EVAL_ID_MAX 128

/* When `path` is /api/eval/{id}/cancel: true with id and len giving the id segment
 * (borrowed, not yet validated); id and len may be NULL. */
bool cancel_api_match(const char *path, const char **id, size_t *len);

/* Parses the terminate parameter of the query (NULL = absent = false):
 * true|1 or false|0.  0, or -1 for another value. */
int cancel_api_parse_terminate(const char *query, bool *terminate) __attribute__((warn_unused_result));

/* Handles the request (the caller checked cancel_api_match).  Replies once. */
void cancel_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

#endif
