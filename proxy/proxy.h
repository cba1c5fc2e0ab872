/* proxy — the turnout-proxy process: one event base, the HTTP front door,
 * both paths, metrics.  main.c owns start-up; this is the running server. */
#ifndef TURNOUT_PROXY_H
#define TURNOUT_PROXY_H

#include <stddef.h>

#include "pconfig.h"

struct event_base;
typedef struct proxy proxy;

/* Builds the server on `base` from settings (copied in: the proxy owns
 * them afterwards and the caller must not free them).  NULL + err. */
proxy *proxy_new(struct event_base *base, proxy_settings *settings, char err[256]);

/* Starts listening.  0, or -1 with err. */
int proxy_listen(proxy *p, char err[256]) __attribute__((warn_unused_result));

/* Stops accepting and exits the loop once in-flight requests are done or
 * SHUTDOWN_GRACE_S has passed. */
void proxy_drain(proxy *p);

/* Re-reads TURNOUT_ENV_FILE (SIGHUP). */
void proxy_reload(proxy *p);

void proxy_free(proxy *p);

/* The endpoint table (endpoints.h), for its checks. */
struct endpoint;
const struct endpoint *proxy_endpoints(size_t *n);

#endif
