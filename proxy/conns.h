/* conns — the proxy's client connections: at most MAX_CLIENT_CONNECTIONS
 * open (one more is closed at once and counted, reason "max_connections"),
 * and each request must arrive whole within CLIENT_REQUEST_TIMEOUT_S of the
 * connection's start or of its previous reply (a client trickling its
 * headers or body — slowloris — is closed and counted, reason
 * "client_timeout"; an idle keep-alive connection is simply closed).
 *
 * libevent 2.1 has no hook for either (no evhttp_set_max_connections, no
 * new-connection callback), so this is built from public parts: the
 * bufferevent callback (evhttp_set_bevcb) sees every accepted connection
 * first; once evhttp has set it up, its connection object is the
 * bufferevent's callback argument, where a deferred event finds it and
 * registers a close callback (evhttp_connection_set_closecb).
 *
 * Every byte a client sends goes through h1check as it arrives, before
 * evhttp parses it: a stream that breaks HTTP/1.1 framing (smuggling
 * attempts, malformed lines, oversized heads, unsupported codings) is
 * answered with the JSON error h1check names and closed, and counted
 * (reason "bad_http"); evhttp never sees those bytes. */
#ifndef TURNOUT_CONNS_H
#define TURNOUT_CONNS_H

#include <stddef.h>

#include "h1check.h"

struct event_base;
struct bufferevent;
struct evhttp_request;
typedef struct metrics_family metrics_family;
typedef struct conns conns;

/* At most `max` connections, each given request_timeout_s for a whole
 * request; refusals counted in `rejected` (turnout_rejected_requests_total).
 * NULL when out of memory. */
conns *conns_new(struct event_base *base, size_t max, long request_timeout_s, metrics_family *rejected,
                 const h1_limits *limits);

/* Closes nothing (evhttp_free closes the connections, each through the
 * close callback, before this is called). */
void conns_free(conns *c);

/* The evhttp bufferevent callback for plain HTTP (evhttp_set_bevcb with
 * the conns as argument); TLS connections call conns_track with their own
 * bufferevent. */
struct bufferevent *conns_plain_bevcb(struct event_base *base, void *conns_arg);

/* Takes note of a bufferevent just made for an accepted connection;
 * returns it (NULL stays NULL). */
struct bufferevent *conns_track(conns *c, struct bufferevent *bev);

/* A whole request arrived on req's connection: its deadline stops. */
void conns_request_in(conns *c, struct evhttp_request *req);

/* About to reply to req: the deadline for the next request starts.  Call
 * before the reply is sent (the request may be gone after). */
void conns_reply_out(conns *c, struct evhttp_request *req);

/* Until conns_unwatch, gone(arg) is called once if req's connection
 * closes (from evhttp's close callback: the request is then either still
 * on the connection, which frees it, or detached and the caller's to free
 * with evhttp_request_free).  After HUP_CHECK_MS without a reply started,
 * a client that hangs up (EV_CLOSED on its socket) has its connection
 * closed at once, so the watcher learns it before any write; call
 * conns_stop_hup_check once the reply starts.  One watch per connection. */
void conns_watch(conns *c, struct evhttp_request *req, void (*gone)(void *arg), void *arg);
void conns_stop_hup_check(conns *c, struct evhttp_request *req);
void conns_unwatch(conns *c, struct evhttp_request *req);

/* req's connection leaves HTTP (an accepted Upgrade): its bytes are no
 * longer checked as HTTP/1.1. */
void conns_tunnel(conns *c, struct evhttp_request *req);

/* What is on its way to req's client goes out, then the connection
 * closes (with a lingering close): a response that cannot be finished.
 * The request goes with the connection. */
void conns_close_after_flush(conns *c, struct evhttp_request *req);

/* Client connections open now. */
size_t conns_open(const conns *c);

#endif
