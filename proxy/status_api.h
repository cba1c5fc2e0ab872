/* status_api — GET /api/eval-status/{id} and GET /api/eval/{id}: one
 * normalized shape for an eval on either path (DESIGN §4), and
 * GET /api/queue-status: both paths' queues at a glance. */
#ifndef TURNOUT_STATUS_API_H
#define TURNOUT_STATUS_API_H

#include <stdbool.h>
#include <stddef.h>

typedef struct proxy proxy;
struct evhttp_request;

/* /api/eval-status/{id} or /api/eval/{id} (one path segment after). */
bool status_api_match(const char *path, const char **id, size_t *len);

void status_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);
void status_api_queue(proxy *p, struct evhttp_request *req, double t0);

#endif
