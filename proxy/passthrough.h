/* passthrough — any other path, to UPSTREAM_API_URL (passthrough.c). */
#ifndef TURNOUT_PASSTHROUGH_H
#define TURNOUT_PASSTHROUGH_H

struct evhttp_request;
typedef struct proxy proxy;

void passthrough_handle(proxy *p, struct evhttp_request *req, double t0);

#endif
