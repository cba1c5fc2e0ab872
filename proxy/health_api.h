/* health_api — GET /healthz, /readyz, /metrics and /dashboard (health_api.c). */
#ifndef TURNOUT_HEALTH_API_H
#define TURNOUT_HEALTH_API_H

struct evhttp_request;
typedef struct proxy proxy;

void health_api_healthz(proxy *p, struct evhttp_request *req, double t0);
void health_api_readyz(proxy *p, struct evhttp_request *req, double t0);
void health_api_metrics(proxy *p, struct evhttp_request *req, double t0);
void health_api_dashboard(proxy *p, struct evhttp_request *req, double t0);

#endif
