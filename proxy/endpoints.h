/* endpoints — which handler answers a request path, from a table of
 * {pattern, route label, handler} in which order does not matter.
 *
 * A pattern is an exact path ("/api/eval") or holds one '*' that stands
 * for one or more characters of any kind ('/' too: eval ids may hold it),
 * as in "/api/eval/" + "*" (status) or "/api/eval/" + "*" + "/cancel".  An
 * exact pattern beats every '*' pattern; among '*' patterns the one with more
 * literal characters wins, so "/api/eval/x/cancel" is the cancel endpoint
 * and "/api/eval/x" the status one.  endpoints_check refuses a table in
 * which two patterns could tie.  A path no pattern matches is the
 * pass-through's.  Each handler checks the method itself, so a wrong one
 * gets a 405 naming how to call it. */
#ifndef TURNOUT_ENDPOINTS_H
#define TURNOUT_ENDPOINTS_H

#include <stdbool.h>
#include <stddef.h>

#include "pmetrics.h"

struct evhttp_request;
typedef struct proxy proxy;

typedef void (*endpoint_fn)(proxy *p, struct evhttp_request *req, const char *path, double t0);

typedef struct endpoint {
    const char *pattern;
    enum pm_route route; /* the label of its requests in turnout_requests_total */
    endpoint_fn handler;
} endpoint;

/* The entry for `path`, or NULL (pass-through). */
const endpoint *endpoints_match(const endpoint *table, size_t n, const char *path);

/* 0, or -1 with err naming the first problem: a pattern with more than one
 * '*', an empty one, two equal ones, or two '*' patterns with as many
 * literal characters that one path could match both. */
int endpoints_check(const endpoint *table, size_t n, char err[256]);

#endif
