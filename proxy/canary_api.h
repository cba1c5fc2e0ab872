/* canary_api — the canary's admin endpoint: GET /admin/canary and
 * POST /admin/canary/{start,pause,resume,abort}. */
#ifndef TURNOUT_CANARY_API_H
#define TURNOUT_CANARY_API_H

typedef struct proxy proxy;
struct evhttp_request;

void canary_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

#endif
