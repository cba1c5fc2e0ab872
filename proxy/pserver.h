/* pserver — the proxy object every module shares: its settings, metrics,
 * connections and the parts that hang off it.  The request records and
 * reply helpers are reply.h. */
#ifndef TURNOUT_PSERVER_H
#define TURNOUT_PSERVER_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "conns.h"
#include "httpc.h"
#include "backend.h"
#include "pconfig.h"
#include "pmetrics.h"
#include "producer.h"
#include "rclient.h"
#include "router.h"
#include "submission.h"

typedef struct proxy proxy;
struct evhttp;
struct evhttp_request;
struct evhttp_bound_socket;
struct event;
typedef struct json_t json_t;

struct proxy {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    conns *conns;   /* client connections: limit and request deadline */
    proxy_settings cfg;
    pmetrics m;
    route_state route;
    rclient *broker;
    httpc *hc;
    /* each path behind the backend interface: paths[PATH_NEW] the Celery
     * queue (celery_redis), paths[PATH_LEGACY] the legacy queue, whatever
     * it speaks (LEGACY_BACKEND) */
    backend *paths[PATH_NONE];
    producer *prod;
    size_t pending;  /* requests waiting on a backend */
    bool draining;
    struct event *drain_timer;
    struct event *depth_timer;
    SSL_CTX *tls;
    /* issue 3 (cancel, DLQ): the result backend's own connection, NULL
     * when CELERY_RESULT_BACKEND is empty or the broker URL; use
     * px_results_rc(). */
    rclient *results;
    struct records *records;       /* route records (issue 4) */
    struct completion *completion; /* per-path completion metrics (issue 4) */
    struct rollout *rollout;       /* shared rollout state (issue 5) */
    struct canary *canary;         /* automatic canary (issue 5) */
    struct stats *stats;           /* windows for /api/stats (issue 6) */
    struct event *accept_pause;    /* accepting paused: out of file descriptors */
    struct fwdauth *auth;          /* forward auth, NULL without AUTH_URL */
};

/* The connection holding celery-task-meta-* records. */
static inline rclient *px_results_rc(const proxy *p) { return p->results ? p->results : p->broker; }

#endif
