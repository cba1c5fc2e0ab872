/* submit_api — POST /api/eval (submit_api.c). */
#ifndef TURNOUT_SUBMIT_API_H
#define TURNOUT_SUBMIT_API_H

struct evhttp_request;
typedef struct proxy proxy;

void submit_api_handle(proxy *p, struct evhttp_request *req, double t0);

#endif
